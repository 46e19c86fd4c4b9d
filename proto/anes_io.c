/* SPDX-License-Identifier: MIT */
/* Connection I/O with fd passing, and the OS helpers around it. */
#include "anes_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0  /* macOS: CLOEXEC is set right after recvmsg */
#define ANES_NEED_CLOEXEC_FIXUP 1
#endif
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0      /* macOS: the socket has SO_NOSIGPIPE */
#endif

ssize_t (*anes_os_sendmsg)(int fd, const struct msghdr *msg, int flags) = sendmsg;
ssize_t (*anes_os_recvmsg)(int fd, struct msghdr *msg, int flags) = recvmsg;

struct anes_out {
	anes_out *next;
	uint8_t *data;      /* owned */
	size_t len;
	size_t off;         /* bytes already sent */
	int fds[ANES_MAX_FDS_PER_FRAME];  /* owned until sent */
	unsigned nfds;
};

#define RBUF_MIN ANES_IO_RBUF_MIN

static void close_fds(int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

void anes_io_init(anes_io *io, int fd, uint32_t max_frame)
{
	*io = (anes_io){ .fd = fd, .max_frame = max_frame };
}

/* Give back what io->charge accepted beyond want bytes. */
static void uncharge_to(anes_io *io, size_t want)
{
	if (io->charged > want) {
		if (io->charge)
			(void)io->charge(io, -(int64_t)(io->charged - want));
		io->charged = want;
	}
}

void anes_io_cleanup(anes_io *io)
{
	anes_out *o = io->out_head;

	while (o) {
		anes_out *next = o->next;
		close_fds(o->fds, o->nfds);
		free(o->data);
		free(o);
		o = next;
	}
	close_fds(io->fdq, io->nfdq);
	free(io->rbuf);
	uncharge_to(io, 0);
	*io = (anes_io){ .fd = -1, .max_frame = io->max_frame, .charge = io->charge };
}

/* Total bytes the frame at rpos needs, if its header is complete and valid;
 * otherwise the header size (a bad header is reported by next_frame). */
static size_t frame_target(const anes_io *io)
{
	uint32_t len;
	unsigned nfds;

	if (io->rlen - io->rpos < ANES_FRAME_HEADER_SIZE ||
	    anes_frame_header_parse(io->rbuf + io->rpos, io->max_frame, &len, &nfds) < 0)
		return ANES_FRAME_HEADER_SIZE;
	return (size_t)ANES_FRAME_HEADER_SIZE + len;
}

void anes_io_trim(anes_io *io)
{
	size_t have = io->rlen - io->rpos;

	if (io->rpos > 0) {
		memmove(io->rbuf, io->rbuf + io->rpos, have);
		io->rpos = 0;
		io->rlen = have;
	}
	size_t target = frame_target(io);
	/* A large frame's buffer is not kept once it has been consumed. */
	if (io->rcap > RBUF_MIN && have <= RBUF_MIN && target <= RBUF_MIN) {
		if (have == 0) {
			free(io->rbuf);
			io->rbuf = NULL;
			io->rcap = io->rlen = 0;
		} else {
			uint8_t *b = realloc(io->rbuf, RBUF_MIN);
			if (b) {
				io->rbuf = b;
				io->rcap = RBUF_MIN;
			}
		}
	}
	/* The reservation: what the frame in progress needs beyond the base
	 * buffer, or what a buffer kept larger holds. */
	size_t want = target > RBUF_MIN ? target - RBUF_MIN : 0;
	if (io->rcap > RBUF_MIN && io->rcap - RBUF_MIN > want)
		want = io->rcap - RBUF_MIN;
	uncharge_to(io, want);
}

/*
 * Make room to read into.  The buffer grows only towards what the frame in
 * progress needs, and at most doubles per read, so a peer that declares a
 * large frame and sends nothing costs nothing, and memory tracks what has
 * actually arrived.  The charge hook reserves the whole frame first.
 */
static int rbuf_reserve(anes_io *io)
{
	anes_io_trim(io);
	if (io->rlen < io->rcap)
		return 0;

	size_t target = frame_target(io);
	size_t want = target > RBUF_MIN ? target - RBUF_MIN : 0;
	if (target <= io->rcap)
		return -ENOBUFS;  /* a complete frame is waiting to be taken */
	if (io->charge && want > io->charged) {
		if (!io->charge(io, (int64_t)(want - io->charged)))
			return -EDQUOT;
		io->charged = want;
	}
	size_t cap = io->rcap ? io->rcap * 2 : RBUF_MIN;
	if (cap < RBUF_MIN)
		cap = RBUF_MIN;
	/* With the frame's memory reserved, its whole buffer at once: no
	 * copies while it grows, and pages are only touched as bytes arrive. */
	if ((cap > target || io->charge) && target > RBUF_MIN)
		cap = target;
	uint8_t *b = realloc(io->rbuf, cap);
	if (!b)
		return -ENOMEM;
	io->rbuf = b;
	io->rcap = cap;
	return 0;
}

/* Whether this process cannot open one more fd now. */
static bool out_of_fds(int fd)
{
	int probe = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (probe >= 0) {
		close(probe);
		return false;
	}
	return errno == EMFILE || errno == ENFILE;
}

ssize_t anes_io_read(anes_io *io)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * ANES_IO_MAX_QUEUED_FDS)];
	} ctl;
	struct iovec iov;
	struct msghdr msg;
	ssize_t n;
	int r = rbuf_reserve(io);

	if (r < 0)
		return r;
	iov.iov_base = io->rbuf + io->rlen;
	iov.iov_len = io->rcap - io->rlen;
	do {
		memset(&msg, 0, sizeof msg);
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		msg.msg_control = ctl.buf;
		msg.msg_controllen = sizeof ctl.buf;
		n = anes_os_recvmsg(io->fd, &msg, MSG_CMSG_CLOEXEC | io->msg_flags);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;

	/* Take every fd that arrived before judging anything, so that none leaks. */
	int got[ANES_IO_MAX_QUEUED_FDS];
	unsigned ngot = 0;
	bool bad = (msg.msg_flags & MSG_CTRUNC) != 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
			bad = true;
			continue;
		}
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
			if (ngot < ANES_IO_MAX_QUEUED_FDS)
				got[ngot++] = fd;
			else {
				close(fd);
				bad = true;
			}
		}
	}
#ifdef ANES_NEED_CLOEXEC_FIXUP
	for (unsigned i = 0; i < ngot; i++)
		fcntl(got[i], F_SETFD, FD_CLOEXEC);
#endif
	if (bad || io->nfdq + ngot > ANES_IO_MAX_QUEUED_FDS) {
		close_fds(got, ngot);
		/* Cut short because this process is out of fds (the kernel drops
		 * what it cannot install), not because the peer sent too many:
		 * not the peer's fault.  The stream is out of step either way. */
		if ((msg.msg_flags & MSG_CTRUNC) && out_of_fds(io->fd))
			return -EMFILE;
		return -EPROTO;
	}
	memcpy(io->fdq + io->nfdq, got, ngot * sizeof(int));
	io->nfdq += ngot;
	io->rlen += (size_t)n;
	return n;
}

int anes_io_peek_frame(const anes_io *io, const uint8_t **ret_payload, uint32_t *ret_len,
                       unsigned *ret_nfds)
{
	size_t have = io->rlen - io->rpos;
	uint32_t len;
	unsigned nfds;
	int r;

	if (have == 0)
		return io->nfdq ? -EPROTO : 0;  /* fds that no frame can claim */
	if (have < ANES_FRAME_HEADER_SIZE)
		return 0;
	r = anes_frame_header_parse(io->rbuf + io->rpos, io->max_frame, &len, &nfds);
	if (r < 0)
		return r;
	/* The fds of a frame arrive with its first byte. */
	if (nfds > io->nfdq)
		return -EPROTO;
	if (have - ANES_FRAME_HEADER_SIZE < len)
		return 0;
	*ret_payload = io->rbuf + io->rpos + ANES_FRAME_HEADER_SIZE;
	*ret_len = len;
	*ret_nfds = nfds;
	return 1;
}

int anes_io_next_frame(anes_io *io, const uint8_t **ret_payload, uint32_t *ret_len,
                       int ret_fds[ANES_MAX_FDS_PER_FRAME], unsigned *ret_nfds)
{
	const uint8_t *payload;
	uint32_t len;
	unsigned nfds;
	int r = anes_io_peek_frame(io, &payload, &len, &nfds);
	if (r <= 0)
		return r;

	memcpy(ret_fds, io->fdq, nfds * sizeof(int));
	io->nfdq -= nfds;
	memmove(io->fdq, io->fdq + nfds, io->nfdq * sizeof(int));
	*ret_payload = payload;
	*ret_len = len;
	*ret_nfds = nfds;
	io->rpos += ANES_FRAME_HEADER_SIZE + (size_t)len;
	return 1;
}

int anes_io_queue(anes_io *io, void *data, size_t len, const int *fds, unsigned nfds)
{
	anes_out *o;
	uint32_t plen;
	unsigned hnfds;
	int r;

	/* The header must describe exactly this buffer and these fds, or the
	 * stream (or the peer's fd queue) goes out of step. */
	r = len < ANES_FRAME_HEADER_SIZE ? -EINVAL
	    : anes_frame_header_parse(data, io->max_frame, &plen, &hnfds);
	if (r == 0 && (hnfds != nfds || plen != len - ANES_FRAME_HEADER_SIZE))
		r = -EINVAL;
	else if (r == -EPROTO)
		r = -EINVAL;
	if (r < 0) {
		close_fds((int *)fds, nfds);  /* all of them: ownership was passed */
		free(data);
		return r;
	}
	o = calloc(1, sizeof *o);
	if (!o) {
		close_fds((int *)fds, nfds);
		free(data);
		return -ENOMEM;
	}
	o->data = data;
	o->len = len;
	o->nfds = nfds;
	if (nfds)
		memcpy(o->fds, fds, nfds * sizeof(int));
	if (io->out_tail)
		io->out_tail->next = o;
	else
		io->out_head = o;
	io->out_tail = o;
	io->out_bytes += len;
	return 0;
}

int anes_io_queue_rest(anes_io *io, void *data, size_t len, size_t sent)
{
	/* Whole frames without fds, back to back (a lane's batch of replies). */
	int r = len < ANES_FRAME_HEADER_SIZE || sent >= len ? -EINVAL : 0;
	for (size_t off = 0; r == 0 && off < len;) {
		uint32_t plen;
		unsigned hnfds;
		if (len - off < ANES_FRAME_HEADER_SIZE) {
			r = -EINVAL;
			break;
		}
		r = anes_frame_header_parse((const uint8_t *)data + off, io->max_frame, &plen, &hnfds);
		if (r == 0 && (hnfds != 0 || plen > len - off - ANES_FRAME_HEADER_SIZE))
			r = -EINVAL;
		else if (r == -EPROTO)
			r = -EINVAL;
		off += ANES_FRAME_HEADER_SIZE + (size_t)plen;
	}
	if (r < 0) {
		free(data);
		return r;
	}
	anes_out *o = calloc(1, sizeof *o);
	if (!o) {
		free(data);
		return -ENOMEM;
	}
	o->data = data;
	o->len = len;
	o->off = sent;
	if (sent == 0) {
		/* Nothing of it went out: after what is queued. */
		if (io->out_tail)
			io->out_tail->next = o;
		else
			io->out_head = o;
		io->out_tail = o;
	} else {
		o->next = io->out_head;
		io->out_head = o;
		if (!io->out_tail)
			io->out_tail = o;
	}
	io->out_bytes += len - sent;
	return 0;
}

ssize_t anes_io_try_send(int fd, const struct iovec *iov, unsigned n_iov, const int *fds,
                         unsigned nfds)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * ANES_MAX_FDS_PER_FRAME)];
	} ctl;
	struct msghdr msg = { .msg_iov = (struct iovec *)iov, .msg_iovlen = n_iov };
	ssize_t n;

	if (nfds > ANES_MAX_FDS_PER_FRAME)
		return -EINVAL;
	if (nfds > 0) {
		memset(&ctl, 0, sizeof ctl);
		msg.msg_control = ctl.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	do
		n = anes_os_sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	return n == 0 ? -EPIPE : n;
}

/* Frames gathered into one send: replies and pipelined requests queued
 * in one loop iteration leave in one system call. */
#define FLUSH_MAX_IOV 64

int anes_io_flush(anes_io *io)
{
	while (io->out_head) {
		anes_out *o = io->out_head;
		struct iovec iov[FLUSH_MAX_IOV];
		unsigned k = 0;

		/* fds travel with the first byte of their frame, so a frame with
		 * fds only ever starts a batch */
		for (anes_out *q = o; q && k < FLUSH_MAX_IOV; q = q->next) {
			if (k > 0 && q->nfds > 0)
				break;
			iov[k].iov_base = q->data + q->off;
			iov[k].iov_len = q->len - q->off;
			k++;
		}
		bool with_fds = o->off == 0 && o->nfds > 0;
		ssize_t n = anes_io_try_send(io->fd, iov, k, o->fds, with_fds ? o->nfds : 0);
		if (n < 0)
			return (int)n;
		if (with_fds) {
			close_fds(o->fds, o->nfds);
			o->nfds = 0;
		}
		size_t left = (size_t)n;
		io->out_bytes -= left;
		while (left > 0) {
			o = io->out_head;
			size_t take = o->len - o->off < left ? o->len - o->off : left;
			o->off += take;
			left -= take;
			if (o->off < o->len)
				break;
			io->out_head = o->next;
			if (!io->out_head)
				io->out_tail = NULL;
			free(o->data);
			free(o);
		}
	}
	return 0;
}

int anes_write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EPIPE;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* ---- memfd ------------------------------------------------------------------ */

#if defined(__linux__)
int anes_memfd_create(const char *name, uint64_t size, int *ret_fd)
{
	int fd, r;

	if (size == 0 || size > (uint64_t)INT64_MAX)
		return -EINVAL;
	fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

int anes_memfd_check(int fd, uint64_t *ret_size)
{
	struct stat st;
	int seals = fcntl(fd, F_GET_SEALS);

	if (seals < 0)
		return errno == EINVAL ? -EBADF : -errno;  /* EINVAL: not a memfd */
	if (!(seals & F_SEAL_SHRINK))
		return -EPERM;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || st.st_size < 0)
		return -EBADF;
	*ret_size = (uint64_t)st.st_size;
	return 0;
}
#else
int anes_memfd_create(const char *name, uint64_t size, int *ret_fd)
{
	(void)name; (void)size; (void)ret_fd;
	return -ENOTSUP;
}

int anes_memfd_check(int fd, uint64_t *ret_size)
{
	(void)fd; (void)ret_size;
	return -ENOTSUP;
}
#endif

/* ---- read-only copies (anes_rofile_*) --------------------------------------------- */

#if defined(__linux__)
int anes_rofile_create(const char *name, uint64_t size, int *ret_fd)
{
	if (size > (uint64_t)INT64_MAX)
		return -EFBIG;
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

int anes_rofile_write(int fd, uint64_t off, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int anes_rofile_seal(int fd)
{
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
		return -errno;
	return 0;
}
#else
int anes_rofile_create(const char *name, uint64_t size, int *ret_fd)
{
	static _Atomic unsigned counter;
	char shm_name[32];
	int fd = -1;
	(void)name;
	if (size > (uint64_t)INT64_MAX)
		return -EFBIG;
	/* (macOS: at most 31 bytes; O_EXCL, so a name taken is tried again) */
	for (int tries = 0; fd < 0 && tries < 64; tries++) {
		snprintf(shm_name, sizeof shm_name, "/anes-%ld-%u", (long)getpid(), counter++);
		fd = shm_open(shm_name, O_RDWR | O_CREAT | O_EXCL, 0600);
		if (fd < 0 && errno != EEXIST)
			return -errno;
	}
	if (fd < 0)
		return -EEXIST;
	shm_unlink(shm_name);
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 || (size && ftruncate(fd, (off_t)size) < 0)) {
		int r = -errno;
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

int anes_rofile_write(int fd, uint64_t off, const void *buf, size_t len)
{
	if (len == 0)
		return 0;
	long pg = sysconf(_SC_PAGESIZE);
	uint64_t start = off - off % (uint64_t)(pg > 0 ? pg : 4096);
	size_t span = (size_t)(off - start) + len;
	void *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)start);
	if (m == MAP_FAILED)
		return -errno;
	memcpy((uint8_t *)m + (off - start), buf, len);
	munmap(m, span);
	return 0;
}

int anes_rofile_seal(int fd)
{
	(void)fd;
	return 0;
}
#endif
