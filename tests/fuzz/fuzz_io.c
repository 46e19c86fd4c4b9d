/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: arbitrary bytes and file descriptors through anes_io over a
 * real socketpair, driven the way daemon/server/conn.c drives a connection: read,
 * take every complete frame (claiming its fds), decode it, and stop at the
 * first error.  Frames taken are echoed back through anes_io_queue /
 * anes_io_flush with their fds.
 *
 * Checks: no fd is leaked on any path (received, queued, claimed, echoed,
 * rejected), anes_io_read never reports -ENOBUFS while frames are taken as
 * they complete, and the return codes are the documented ones.
 *
 * Input:
 *   byte 0      bit 0: max_frame 64 + byte (tiny), else ANES_FRAME_MAX_LOWEST;
 *               bit 1: the smallest SO_SNDBUF on the io end (echoes go out in
 *               part); bit 2: flush after each echoed frame, else once per
 *               read (several frames per sendmsg); frames still queued when
 *               the connection fails are freed by anes_io_cleanup
 *   then chunks: a control byte c, a length byte L, then L bytes (fewer at
 *   the end of the input) sent in one sendmsg with (c & 0x1f) fds attached
 *   (values over 17 wrap to 0..4; 17 overflows the receiver's 16-fd
 *   control buffer); c & 0x20: read in short pieces (recvmsg limited to
 *   (c >> 6) * 5 + 1 bytes); c & 0x40 and c & 0x80 together: queue the next
 *   echoed frame with a wrong fd count (must fail and close its fds).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "anes_proto.h"
#include "fuzz.h"
#include "../scm_fds.h"

#define FD_SCAN 512

static int count_open_fds(void)
{
	int n = 0;
	for (int fd = 0; fd < FD_SCAN; fd++)
		n += fcntl(fd, F_GETFD) != -1;
	return n;
}

/* short reads, when asked for */
static size_t read_limit;
/* flush after each echoed frame, or once all complete frames are queued */
static bool flush_each;

static ssize_t limited_recvmsg(int fd, struct msghdr *msg, int flags)
{
	if (read_limit && msg->msg_iovlen == 1 && msg->msg_iov[0].iov_len > read_limit)
		msg->msg_iov[0].iov_len = read_limit;
	return recvmsg(fd, msg, flags);
}

/* Read and close whatever the io end sent back. */
static void drain_peer(int fd)
{
	uint8_t buf[4096];
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * 64)];
	} ctl;

	for (;;) {
		struct iovec iov = { .iov_base = buf, .iov_len = sizeof buf };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
		                      .msg_controllen = sizeof ctl.buf };
		ssize_t n = anes_recvmsg_cloexec(fd, &msg, MSG_DONTWAIT);
		if (n <= 0)
			return;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
				continue;
			size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k; i++) {
				int f;
				memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
				close(f);
			}
		}
	}
}

static int flush_all(anes_io *io, int peer)
{
	for (int tries = 0; tries < 1000; tries++) {
		int r = anes_io_flush(io);
		if (r != -EAGAIN)
			return r;
		drain_peer(peer);
	}
	return -EAGAIN;
}

/* Take every complete frame, as daemon/server/conn.c does.  false: the connection failed. */
static bool process(anes_io *io, int peer, bool *bad_queue)
{
	for (;;) {
		const uint8_t *payload;
		uint32_t len;
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nfds = 0;

		int r = anes_io_next_frame(io, &payload, &len, fds, &nfds);
		if (r == 0) {
			/* send what was queued, several frames per sendmsg */
			if (anes_io_want_write(io)) {
				r = flush_all(io, peer);
				if (r < 0)
					return false;
				CHECK(!anes_io_want_write(io) && io->out_bytes == 0);
			}
			return true;
		}
		if (r < 0) {
			CHECK(r == -EMSGSIZE || r == -EPROTO);
			return false;
		}
		CHECK(r == 1 && len <= io->max_frame && nfds <= ANES_MAX_FDS_PER_FRAME);
		for (unsigned i = 0; i < nfds; i++)
			CHECK(fcntl(fds[i], F_GETFD) != -1);

		msgpack_zone zone;
		anes_msg m;
		CHECK(msgpack_zone_init(&zone, 4096));
		(void)anes_msg_decode(payload, len, &zone, &m);
		msgpack_zone_destroy(&zone);

		/* echo it back, with its fds (ownership passes to the io) */
		uint8_t *copy = malloc(ANES_FRAME_HEADER_SIZE + (size_t)len);
		CHECK(copy);
		anes_frame_header_write(copy, len, nfds);
		memcpy(copy + ANES_FRAME_HEADER_SIZE, payload, len);
		if (*bad_queue) {
			*bad_queue = false;
			/* a count that does not match the header: rejected, fds closed */
			int extra[ANES_MAX_FDS_PER_FRAME];
			unsigned n = nfds < ANES_MAX_FDS_PER_FRAME ? nfds + 1 : nfds - 1;
			for (unsigned i = 0; i < n; i++)
				extra[i] = i < nfds ? fds[i] : dup(peer);
			if (n < nfds)
				close(fds[nfds - 1]);
			CHECK(anes_io_queue(io, copy, ANES_FRAME_HEADER_SIZE + (size_t)len, extra, n) == -EINVAL);
			continue;
		}
		size_t before = io->out_bytes;
		r = anes_io_queue(io, copy, ANES_FRAME_HEADER_SIZE + (size_t)len, fds, nfds);
		CHECK(r == 0 && anes_io_want_write(io));
		CHECK(io->out_bytes == before + ANES_FRAME_HEADER_SIZE + len);
		if (flush_each) {
			r = flush_all(io, peer);
			if (r < 0)
				return false;
			CHECK(!anes_io_want_write(io) && io->out_bytes == 0);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int memfd = -1;
	int sv[2];

	if (size < 1)
		return 0;
	if (memfd < 0) {
		CHECK(anes_memfd_create("fuzz", 4096, &memfd) == 0);
		anes_os_recvmsg = limited_recvmsg;
	}
	int open_before = count_open_fds();
	CHECK(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sv) == 0);
	CHECK(fcntl(sv[0], F_SETFL, O_NONBLOCK) == 0);
	CHECK(fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0);

	if (data[0] & 2) {
		/* the smallest send buffer: echoes are sent in part, then -EAGAIN */
		int one = 1;
		CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &one, sizeof one) == 0);
	}
	flush_each = data[0] & 4;

	anes_io io;
	uint32_t max_frame = (data[0] & 1) ? 64u + data[0] : ANES_FRAME_MAX_LOWEST;
	anes_io_init(&io, sv[0], max_frame);
	size_t pos = 1;
	bool ok = true, bad_queue = false;

	while (ok && pos + 2 <= size) {
		uint8_t c = data[pos], L = data[pos + 1];
		pos += 2;
		size_t n = L < size - pos ? L : size - pos;
		unsigned nfds = c & 0x1f;
		if (nfds > 17)
			nfds %= 5;
		if (n == 0)
			nfds = 0;  /* fds need a byte to travel with */
		read_limit = (c & 0x20) ? (size_t)(c >> 6) * 5 + 1 : 0;
		if ((c & 0xc0) == 0xc0)
			bad_queue = true;

		SCM_FDS_BUF(17) ctl;
		struct iovec iov = { .iov_base = (void *)(data + pos), .iov_len = n };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		int fds[17];
		for (unsigned i = 0; i < nfds; i++)
			fds[i] = memfd;
		scm_fds_attach(&msg, ctl.buf, sizeof ctl, fds, nfds);
		pos += n;
		if (n) {
			ssize_t w = sendmsg(sv[1], &msg, MSG_NOSIGNAL);
			CHECK(w == (ssize_t)n);
		}

		/* read until the socket is empty, taking frames as they complete */
		for (;;) {
			ssize_t r = anes_io_read(&io);
			if (r == -EAGAIN)
				break;
			CHECK(r != -ENOBUFS);
			if (r <= 0) {
				CHECK(r == -EPROTO);
				ok = false;
				break;
			}
			CHECK(io.rlen <= io.rcap && io.rpos <= io.rlen);
			CHECK(io.rcap <= ANES_FRAME_HEADER_SIZE + (size_t)max_frame || io.rcap <= (64u << 10));
			CHECK(io.nfdq <= ANES_IO_MAX_QUEUED_FDS);
			if (!process(&io, sv[1], &bad_queue)) {
				ok = false;
				break;
			}
		}
	}
	/* at the end of the stream, fds that no frame claimed are an error */
	if (ok && io.rlen == io.rpos && io.nfdq) {
		const uint8_t *p;
		uint32_t l;
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nf;
		CHECK(anes_io_next_frame(&io, &p, &l, fds, &nf) == -EPROTO);
	}
	anes_io_cleanup(&io);
	close(sv[0]);
	drain_peer(sv[1]);
	close(sv[1]);
	read_limit = 0;
	CHECK(count_open_fds() == open_before);
	return 0;
}
