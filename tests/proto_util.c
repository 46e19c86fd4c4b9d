/* SPDX-License-Identifier: MIT */
/* Helpers shared by the libanes_proto suites (proto_util.h). */
#include "proto_util.h"

#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void b_put(bytes *b, const void *d, size_t n)
{
	if (b->cap - b->n < n) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap - b->n < n)
			cap *= 2;
		b->p = realloc(b->p, cap);
		cr_assert_not_null(b->p);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->n, d, n);
	b->n += n;
}

void b_u8(bytes *b, uint8_t v)
{
	b_put(b, &v, 1);
}

void b_be(bytes *b, uint64_t v, unsigned n)
{
	for (unsigned i = n; i-- > 0;)
		b_u8(b, (uint8_t)(v >> (8 * i)));
}

void b_hex(bytes *b, const char *s)
{
	while (*s) {
		if (*s == ' ') {
			s++;
			continue;
		}
		unsigned v;
		cr_assert_eq(sscanf(s, "%2x", &v), 1, "bad hex in test: %s", s);
		b_u8(b, (uint8_t)v);
		s += 2;
	}
}

void b_free(bytes *b)
{
	free(b->p);
	*b = (bytes){0};
}

/* Run the validator on an exact-size heap copy, so ASan sees any overread. */
int check_exact(const uint8_t *p, size_t n)
{
	uint8_t *c = malloc(n ? n : 1);
	cr_assert_not_null(c);
	if (n)
		memcpy(c, p, n);
	int r = anes_mp_check(c, n);
	free(c);
	return r;
}

int check_hex(const char *hex)
{
	bytes b = {0};
	b_hex(&b, hex);
	int r = check_exact(b.p, b.n);
	b_free(&b);
	return r;
}

void mp_init(mp *m)
{
	msgpack_sbuffer_init(&m->sb);
	msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

void mp_free(mp *m)
{
	msgpack_sbuffer_destroy(&m->sb);
}

/* The fds open in this process (macOS: /dev/fd lists them all). */
int count_fds(void)
{
#ifdef __linux__
	DIR *d = opendir("/proc/self/fd");
#else
	DIR *d = opendir("/dev/fd");
#endif
	struct dirent *e;
	int n = 0;

	cr_assert_not_null(d);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

bool fd_is_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

/* Shared memory of size bytes to pass as an fd: a memfd on Linux, an unlinked
 * temporary file elsewhere. */
int shared_fd(size_t size)
{
	int fd = -1;
#ifdef __linux__
	cr_assert_eq(anes_memfd_create("anes-test", size, &fd), 0);
#else
	char path[] = "/tmp/anes-test-XXXXXX";
	fd = mkstemp(path);
	cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
	unlink(path);
	cr_assert_eq(fcntl(fd, F_SETFD, FD_CLOEXEC), 0);
	cr_assert_eq(ftruncate(fd, (off_t)size), 0);
#endif
	return fd;
}
