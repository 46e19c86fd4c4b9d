/* SPDX-License-Identifier: MIT */
/* libanes_proto, shared memory: memfd creation and the checks on memfds
 * received from a peer. */
#include "anes_proto.h"
#include "proto_util.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- memfd ------------------------------------------------------------------ */

#ifdef __linux__
Test(memfd, create_sizes)
{
	static const uint64_t sizes[] = { 1, 4095, 4096, 65537, 16u << 20 };
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		int fd = -1;
		struct stat st;
		cr_assert_eq(anes_memfd_create("anes-size", sizes[i], &fd), 0);
		cr_assert_geq(fd, 0);
		cr_assert_eq(fstat(fd, &st), 0);
		cr_assert_eq((uint64_t)st.st_size, sizes[i]);
		int fl = fcntl(fd, F_GETFD);
		cr_assert(fl >= 0 && (fl & FD_CLOEXEC));
		int seals = fcntl(fd, F_GET_SEALS);
		cr_assert_eq(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
		             F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
		cr_assert_eq(seals & F_SEAL_WRITE, 0);
		cr_assert_eq(ftruncate(fd, (off_t)sizes[i] + 1), -1);
		cr_assert_eq(errno, EPERM);
		cr_assert_eq(ftruncate(fd, 0), -1);
		cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), -1);
		uint64_t got = 0;
		cr_assert_eq(anes_memfd_check(fd, &got), 0);
		cr_assert_eq(got, sizes[i]);
		/* zero-filled and writable */
		uint8_t *m = mmap(NULL, sizes[i], PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		cr_assert_neq(m, MAP_FAILED);
		cr_assert_eq(m[0], 0);
		cr_assert_eq(m[sizes[i] - 1], 0);
		m[sizes[i] - 1] = 1;
		munmap(m, sizes[i]);
		close(fd);
	}
	int fd = 12345;
	cr_assert_eq(anes_memfd_create("zero", 0, &fd), -EINVAL);
	cr_assert_eq(anes_memfd_create("huge", (uint64_t)INT64_MAX + 1, &fd), -EINVAL);
	cr_assert_eq(fd, 12345);
}

Test(memfd, check_rejects)
{
	uint64_t sz = SENT64;
	int fd;

	/* no sealing allowed at all */
	fd = memfd_create("unsealed", MFD_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 4096), 0);
	cr_assert_eq(anes_memfd_check(fd, &sz), -EPERM);
	cr_assert_eq(sz, SENT64);
	close(fd);

	/* sealable, but only against growing */
	fd = memfd_create("grow-only", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 4096), 0);
	cr_assert_eq(anes_memfd_check(fd, &sz), -EPERM);
	cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW), 0);
	cr_assert_eq(anes_memfd_check(fd, &sz), -EPERM);
	cr_assert_eq(sz, SENT64);
	/* shrink is what matters */
	cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	cr_assert_eq(anes_memfd_check(fd, &sz), 0);
	cr_assert_eq(sz, 4096);
	close(fd);
	sz = SENT64;

	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	cr_assert_eq(anes_memfd_check(pfd[0], &sz), -EBADF);
	cr_assert_eq(anes_memfd_check(pfd[1], &sz), -EBADF);
	close(pfd[0]);
	close(pfd[1]);

	FILE *tf = tmpfile();
	cr_assert_not_null(tf);
	cr_assert_eq(ftruncate(fileno(tf), 4096), 0);
	cr_assert_eq(anes_memfd_check(fileno(tf), &sz), -EBADF);
	fclose(tf);

	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	cr_assert_eq(anes_memfd_check(fd, &sz), -EBADF);
	close(fd);
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	close(fd);
	cr_assert_eq(anes_memfd_check(fd, &sz), -EBADF);  /* closed */
	cr_assert_eq(anes_memfd_check(-1, &sz), -EBADF);
	int s[2];
	cr_assert_eq(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, s), 0);
	cr_assert_eq(anes_memfd_check(s[0], &sz), -EBADF);
	close(s[0]);
	close(s[1]);
	cr_assert_eq(sz, SENT64);
}

#else
Test(memfd, unsupported)
{
	int fd = 12345;
	uint64_t sz = SENT64;
	cr_assert_eq(anes_memfd_create("anes-test", 4096, &fd), -ENOTSUP);
	cr_assert_eq(anes_memfd_check(0, &sz), -ENOTSUP);
	cr_assert_eq(fd, 12345);
	cr_assert_eq(sz, SENT64);
}
#endif
