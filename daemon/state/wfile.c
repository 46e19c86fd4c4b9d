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
 *     used, mapped read-only like a sealed memfd.  A file that shrinks meanwhile gives a
 *     short read, which fails the compile (-EIO); the key is checked against
 *     the copy (program.c), so a file changed between hashing and copying
 *     fails it too.
 *
 * The size is taken once, at open, from fstat; nothing later trusts the
 * file's current size.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "anes_proto.h"   /* anes_rofile_* */
#include "daemon.h"

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

int anes_wfile_read(const anes_wfile *w, uint64_t off, void *buf, size_t len)
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

/* Copy the file into a read-only file of the daemon's own (anes_rofile_*),
 * in chunks through a small buffer: the pages are written with pwrite, not
 * through a mapping, so they count in this process's RSS only if it touches
 * them later (with a device worker it never does). */
static int copy_to_rofile(anes_wfile *w, int *ret_fd)
{
	enum { CHUNK = 1 << 20 };
	int fd = -1;
	int r = anes_rofile_create("aneshare-weights", w->size, &fd);
	if (r < 0)
		return r;
	uint8_t *buf = malloc(CHUNK);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	for (uint64_t off = 0; off < w->size && r == 0; off += CHUNK) {
		size_t k = w->size - off < CHUNK ? (size_t)(w->size - off) : CHUNK;
		r = anes_wfile_read(w, off, buf, k);
		if (r == 0)
			r = anes_rofile_write(fd, off, buf, k);
	}
	free(buf);
	if (r == 0)
		r = anes_rofile_seal(fd);
	if (r < 0) {
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

int anes_wfile_load(anes_wfile *w)
{
	if (w->data || w->size == 0) {
		w->data = w->data ? w->data : "";
		return 0;
	}
	int fd = w->fd;
	if (!w->sealed) {
		int r = copy_to_rofile(w, &fd);
		if (r < 0)
			return r == -ENOSPC ? -ENOMEM : r;
	}
	void *p = mmap(NULL, (size_t)w->size, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		int r = -errno;
		if (fd != w->fd)
			close(fd);
		return r == -ENOMEM ? r : -ENOMEM;
	}
	if (fd != w->fd) {
		/* from now on the file is the daemon's copy */
		close(w->fd);
		w->fd = fd;
		w->copied = true;
	}
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
