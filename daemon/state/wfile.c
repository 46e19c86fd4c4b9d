/* SPDX-License-Identifier: MIT */
/*
 * Weight files passed by descriptor (program.compile's weight_fds,
 * docs/protocol.md "Weights by file descriptor").
 *
 * The daemon never maps memory a client can shrink: a file truncated under a
 * mapping raises SIGBUS on the next access, which would kill the daemon (or
 * its device worker) for every client.  So:
 *
 *   - a sealed memfd (Linux: F_SEAL_SHRINK, F_SEAL_GROW and F_SEAL_WRITE all
 *     set, as F_GET_SEALS reports them) cannot change any more: it is mapped
 *     read-only and used in place, no copy;
 *   - anything else (a regular file, an unsealed memfd; every fd on macOS,
 *     which has no seals) is read with pread() into a file the daemon owns
 *     (anes_rofile_*: a memfd it seals the same way; on macOS an unlinked
 *     shared memory object no other process can open), and only that copy is
 *     used, mapped read-only like a sealed memfd.  The copy is made in the
 *     pass that hashes the file (anes_wfile_stream): each chunk read is
 *     hashed and written as it is, so the key that pass computes is the key
 *     of the copy's bytes, whatever the client does to its file meanwhile.  A
 *     file that shrinks gives a short read, which fails the compile (-EIO).
 *
 * The size is taken once, at open, from fstat; nothing later trusts the
 * file's current size.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "anes_config.h"
#include "anes_proto.h"   /* anes_rofile_* */
#include "daemon.h"

/* ---- test hooks ------------------------------------------------------------------
 * In builds with -Dtest_hooks=true only (tests/test_wfiles.c):
 *   $ANESHARE_TEST_WFILE_LOG=PATH: every pass over a weight file appends a
 *     line to PATH: "read SOURCE BYTES", plus " copy" for a pass that copies;
 *     SOURCE is "file" (a file neither sealed nor copied: the client's),
 *     "sealed" (a sealed memfd) or "copy" (the daemon's copy).
 *   $ANESHARE_TEST_WFILE_HOLD=PATH: a pass that copies stops at two points,
 *     each while a file exists: PATH.start before its first read, PATH.chunk
 *     once its first chunk is read, hashed and written.  Stopping, it creates
 *     PATH.start.held (PATH.chunk.held), so that a test changes the client's
 *     file exactly there; it goes on when the test removes PATH.start
 *     (PATH.chunk), or after 60 s. */

static void hook_log(const anes_wfile *w, bool copy)
{
	const char *path = anes_test_hook_env("ANESHARE_TEST_WFILE_LOG");
	if (!path)
		return;
	char line[96];
	int n = snprintf(line, sizeof(line), "read %s %llu%s\n",
	                 w->sealed ? "sealed" : w->copied ? "copy" : "file",
	                 (unsigned long long)w->size, copy ? " copy" : "");
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	if (write(fd, line, (size_t)n) != n) {
		/* a test hook: the test sees the line missing */
	}
	close(fd);
}

static void hook_hold(const char *point)
{
	const char *base = anes_test_hook_env("ANESHARE_TEST_WFILE_HOLD");
	if (!base)
		return;
	char path[1024], held[1040];
	snprintf(path, sizeof(path), "%s.%s", base, point);
	if (access(path, F_OK) != 0)
		return;
	snprintf(held, sizeof(held), "%s.held", path);
	int fd = open(held, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd >= 0)
		close(fd);
	struct timespec ms10 = { 0, 10 * 1000 * 1000 };
	for (int i = 0; i < 6000 && access(path, F_OK) == 0; i++)
		nanosleep(&ms10, NULL);
}

int anes_wfile_open(int fd, uint64_t max_bytes, anes_wfile **ret)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EBADF;
	if (st.st_size < 0 || (uint64_t)st.st_size > max_bytes || (uint64_t)st.st_size > SIZE_MAX / 2)
		return -EFBIG;
	int mode = fcntl(fd, F_GETFL);
	if (mode < 0)
		return -errno;
	if ((mode & O_ACCMODE) == O_WRONLY)
		return -EBADF;
	anes_wfile *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (w->fd < 0) {
		int r = -errno;
		free(w);
		return r;
	}
	w->size = (uint64_t)st.st_size;
#if defined(__linux__) && defined(F_GET_SEALS)
	int seals = fcntl(fd, F_GET_SEALS);
	int need = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
	w->sealed = seals >= 0 && (seals & need) == need;
#else
	w->sealed = false;
#endif
	*ret = w;
	return 0;
}

/* len bytes at off with pread; -EIO if the file is shorter now. */
static int wfile_read(const anes_wfile *w, uint64_t off, void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = pread(w->fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;    /* shorter than at open: truncated */
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

bool anes_wfile_needs_copy(const anes_wfile *w)
{
	return !w->sealed && !w->copied && w->size > 0;
}

/* One pass in chunks through a small buffer.  The copy (a read-only file of
 * the daemon's own, anes_rofile_*) is written with pwrite, not through a
 * mapping, so its pages count in this process's RSS only if it touches them
 * later (with a device worker it never does); each chunk goes to fn and then
 * to the copy from the same buffer, read once. */
int anes_wfile_stream(anes_wfile *w, bool copy, void (*fn)(void *ud, const void *p, size_t len), void *ud)
{
	enum { CHUNK = 1 << 20 };
	int fd = -1, r = 0;

	copy = copy && anes_wfile_needs_copy(w);
	hook_log(w, copy);
	if (copy) {
		hook_hold("start");
		r = anes_rofile_create("aneshare-weights", w->size, &fd);
		if (r < 0)
			return r == -ENOSPC ? -ENOMEM : r;
	}
	size_t cap = w->size < CHUNK ? (size_t)w->size : CHUNK;
	uint8_t *buf = malloc(cap ? cap : 1);
	if (!buf)
		r = -ENOMEM;
	for (uint64_t off = 0; off < w->size && r == 0; off += CHUNK) {
		size_t k = w->size - off < CHUNK ? (size_t)(w->size - off) : CHUNK;
		r = wfile_read(w, off, buf, k);
		if (r < 0)
			break;
		fn(ud, buf, k);
		if (copy) {
			r = anes_rofile_write(fd, off, buf, k);
			if (off == 0)
				hook_hold("chunk");
		}
	}
	free(buf);
	if (copy && r == 0)
		r = anes_rofile_seal(fd);
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		return r == -ENOSPC ? -ENOMEM : r;
	}
	if (copy) {
		/* from now on the file is the daemon's copy */
		close(w->fd);
		w->fd = fd;
		w->copied = true;
	}
	return 0;
}

int anes_wfile_load(anes_wfile *w)
{
	if (w->data || w->size == 0) {
		w->data = w->data ? w->data : "";
		return 0;
	}
	if (anes_wfile_needs_copy(w))
		return -EINVAL;   /* never maps a file its client can truncate */
	void *p = mmap(NULL, (size_t)w->size, PROT_READ, MAP_SHARED, w->fd, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	w->map = p;
	w->map_len = (size_t)w->size;
	w->data = p;
	return 0;
}

void anes_wfile_free(anes_wfile *w)
{
	if (!w)
		return;
	if (w->map)
		munmap(w->map, w->map_len);
	if (w->fd >= 0)
		close(w->fd);
	free(w);
}
