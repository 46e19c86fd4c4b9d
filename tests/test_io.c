/* SPDX-License-Identifier: MIT */
/* libanes_proto, connection I/O: anes_io framing over a socket, fd passing
 * and its limits, failure injection through anes_os_sendmsg/recvmsg, and
 * anes_write_all. */
#include "anes_proto.h"
#include "proto_util.h"
#include "scm_fds.h"

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

/* ---- anes_io ---------------------------------------------------------------- */

static int sp[2] = { -1, -1 };

static void pair(void)
{
	cr_assert_eq(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sp), 0);
}

static void pair_teardown(void)
{
	anes_os_sendmsg = sendmsg;
	anes_os_recvmsg = recvmsg;
	for (int i = 0; i < 2; i++)
		if (sp[i] >= 0)
			close(sp[i]);
}

TestSuite(io, .init = pair, .fini = pair_teardown);

static void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	cr_assert_geq(fl, 0);
	cr_assert_eq(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

/* A request frame [0, msgid, method, {"x": msgid * 3}] with nfds in its header. */
static void make_req(uint32_t msgid, const char *method, unsigned nfds, void **data, size_t *len)
{
	anes_frame f;
	anes_frame_init(&f);
	anes_pack_request(&f.pk, msgid, method, 1);
	anes_pack_str(&f.pk, "x");
	msgpack_pack_uint64(&f.pk, (uint64_t)msgid * 3);
	cr_assert_eq(anes_frame_finish(&f, nfds, ANES_FRAME_MAX_DEFAULT, data, len), 0);
}

static void check_req(const uint8_t *p, uint32_t len, uint32_t msgid, const char *method)
{
	msgpack_zone z;
	anes_msg m;
	uint64_t x = 0;

	cr_assert(msgpack_zone_init(&z, 256));
	cr_assert_eq(anes_msg_decode(p, len, &z, &m), 0);
	cr_assert_eq(m.type, ANES_MSG_REQUEST);
	cr_assert_eq(m.msgid, msgid);
	cr_assert(anes_msg_method_is(&m, method));
	cr_assert_eq(anes_mp_u64(m.params, "x", UINT64_MAX, &x), 0);
	cr_assert_eq(x, (uint64_t)msgid * 3);
	msgpack_zone_destroy(&z);
}

/* Next frame, reading as needed (blocking socket).  Returns next_frame's or
 * read's error, or -ECONNRESET at EOF. */
static int recv_frame(anes_io *io, const uint8_t **p, uint32_t *len, int fds[ANES_MAX_FDS_PER_FRAME],
                      unsigned *nfds)
{
	for (;;) {
		int r = anes_io_next_frame(io, p, len, fds, nfds);
		if (r != 0)
			return r;
		ssize_t n = anes_io_read(io);
		if (n <= 0)
			return n == 0 ? -ECONNRESET : (int)n;
	}
}

/* sendmsg bytes with fds (any number), bypassing anes_io. */
static void raw_send(int fd, const void *data, size_t len, const int *fds, unsigned nfds)
{
	SCM_FDS_BUF(64) ctl;
	struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	cr_assert_leq(nfds, 64);
	scm_fds_attach(&msg, ctl.buf, sizeof ctl, fds, nfds);
	cr_assert_eq(sendmsg(fd, &msg, MSG_NOSIGNAL), (ssize_t)len);
}

Test(io, several_frames_in_order)
{
	anes_io tx, rx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);

	size_t total = 0;
	for (uint32_t i = 1; i <= 5; i++) {
		void *data;
		size_t len;
		make_req(i * 1000, i % 2 ? "odd" : "even", 0, &data, &len);
		total += len;
		cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), 0);
	}
	cr_assert_eq(tx.out_bytes, total);
	cr_assert(anes_io_want_write(&tx));
	cr_assert_eq(anes_io_flush(&tx), 0);
	cr_assert_not(anes_io_want_write(&tx));
	cr_assert_eq(tx.out_bytes, 0);
	cr_assert_eq(anes_io_flush(&tx), 0);  /* empty queue */

	for (uint32_t i = 1; i <= 5; i++) {
		const uint8_t *p;
		uint32_t len;
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nfds = 99;
		cr_assert_eq(recv_frame(&rx, &p, &len, fds, &nfds), 1);
		cr_assert_eq(nfds, 0);
		check_req(p, len, i * 1000, i % 2 ? "odd" : "even");
	}
	const uint8_t *p;
	uint32_t len;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	cr_assert_eq(anes_io_next_frame(&rx, &p, &len, fds, &nfds), 0);

	/* EOF and a non-blocking empty socket */
	set_nonblock(sp[1]);
	cr_assert_eq(anes_io_read(&rx), -EAGAIN);
	close(sp[0]);
	sp[0] = -1;
	cr_assert_eq(anes_io_read(&rx), 0);
	anes_io_cleanup(&tx);
	anes_io_cleanup(&rx);
}

Test(io, byte_at_a_time)
{
	anes_io rx;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	int base = count_fds();

	for (uint32_t i = 1; i <= 3; i++) {
		void *data;
		size_t len;
		int pfd[2];
		unsigned nfds = i == 2 ? 1 : 0;
		make_req(i, "bytes", nfds, &data, &len);
		if (nfds)
			cr_assert_eq(anes_pipe_cloexec(pfd), 0);
		for (size_t k = 0; k < len; k++) {
			/* the fd travels with the first byte */
			if (k == 0 && nfds) {
				raw_send(sp[0], data, 1, &pfd[1], 1);
				close(pfd[1]);
			} else {
				cr_assert_eq(write(sp[0], (uint8_t *)data + k, 1), 1);
			}
			cr_assert_eq(anes_io_read(&rx), 1);

			const uint8_t *p;
			uint32_t plen;
			int fds[ANES_MAX_FDS_PER_FRAME] = { -1 };
			unsigned got = 99;
			int r = anes_io_next_frame(&rx, &p, &plen, fds, &got);
			if (k + 1 < len) {
				cr_assert_eq(r, 0, "frame %u byte %zu", i, k);
				continue;
			}
			cr_assert_eq(r, 1);
			cr_assert_eq(got, nfds);
			check_req(p, plen, i, "bytes");
			if (nfds) {
				/* it is the write end of our pipe */
				cr_assert_eq(write(fds[0], "z", 1), 1);
				char c = 0;
				cr_assert_eq(read(pfd[0], &c, 1), 1);
				cr_assert_eq(c, 'z');
				close(fds[0]);
				close(pfd[0]);
			}
		}
		free(data);
	}
	cr_assert_eq(rx.rlen - rx.rpos, 0);
	cr_assert_eq(rx.nfdq, 0);
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);
}

Test(io, large_frame)
{
	const size_t blen = 8u << 20;
	uint8_t *blob = malloc(blen);
	cr_assert_not_null(blob);
	for (size_t i = 0; i < blen; i++)
		blob[i] = (uint8_t)(i * 131 + (i >> 13));

	anes_frame f;
	anes_frame_init(&f);
	anes_pack_request(&f.pk, 42, "big", 1);
	anes_pack_str(&f.pk, "blob");
	msgpack_pack_bin_with_body(&f.pk, blob, blen);
	uint32_t max = (uint32_t)(f.len - ANES_FRAME_HEADER_SIZE);  /* exactly max_frame */
	void *data;
	size_t len;
	cr_assert_eq(anes_frame_finish(&f, 0, max, &data, &len), 0);

	set_nonblock(sp[0]);
	set_nonblock(sp[1]);
	anes_io tx, rx;
	anes_io_init(&tx, sp[0], max);
	anes_io_init(&rx, sp[1], max);
	cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), 0);

	const uint8_t *p = NULL;
	uint32_t plen = 0;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	bool got = false;
	size_t peak = 0;
	for (int iter = 0; !got; iter++) {
		cr_assert_lt(iter, 1000000);
		int fr = anes_io_flush(&tx);
		cr_assert(fr == 0 || fr == -EAGAIN, "flush: %d", fr);
		for (;;) {
			int r = anes_io_next_frame(&rx, &p, &plen, fds, &nfds);
			cr_assert_geq(r, 0);
			if (r == 1) {
				got = true;
				break;
			}
			ssize_t n = anes_io_read(&rx);
			if (n == -EAGAIN)
				break;
			cr_assert_gt(n, 0);
			cr_assert_leq(rx.rcap, (size_t)ANES_FRAME_HEADER_SIZE + max);
			if (rx.rcap > peak)
				peak = rx.rcap;
		}
	}
	cr_assert_eq(anes_io_flush(&tx), 0);
	cr_assert_eq(plen, max);
	cr_assert_eq(nfds, 0);
	cr_assert_leq(peak, (size_t)ANES_FRAME_HEADER_SIZE + max);

	msgpack_zone z;
	anes_msg m;
	const void *bin;
	uint32_t bn;
	cr_assert(msgpack_zone_init(&z, 256));
	cr_assert_eq(anes_msg_decode(p, plen, &z, &m), 0);
	cr_assert_eq(m.msgid, 42);
	cr_assert_eq(anes_mp_bin(m.params, "blob", UINT32_MAX, &bin, &bn), 0);
	cr_assert_eq(bn, blen);
	cr_assert(memcmp(bin, blob, blen) == 0, "8 MiB payload corrupted");
	msgpack_zone_destroy(&z);
	free(blob);
	anes_io_cleanup(&tx);
	anes_io_cleanup(&rx);
}

Test(io, oversized_header)
{
	anes_io rx;
	uint8_t junk[1000];
	uint8_t h[ANES_FRAME_HEADER_SIZE];
	const uint8_t *p;
	uint32_t len;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;

	/* a frame declared just under the limit and never sent costs little */
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	anes_frame_header_write(h, ANES_FRAME_MAX_DEFAULT, 0);
	cr_assert_eq(write(sp[0], h, sizeof h), (ssize_t)sizeof h);
	memset(junk, 0xc0, sizeof junk);
	cr_assert_eq(write(sp[0], junk, sizeof junk), (ssize_t)sizeof junk);
	set_nonblock(sp[1]);
	while (anes_io_read(&rx) > 0)
		cr_assert_eq(anes_io_next_frame(&rx, &p, &len, fds, &nfds), 0);
	cr_assert_eq(rx.rlen, sizeof h + sizeof junk);
	cr_assert_leq(rx.rcap, 64u << 10);
	anes_io_cleanup(&rx);

	/* 0xFFFFFFFF: refused from the header alone */
	close(sp[0]);
	close(sp[1]);
	pair();
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	anes_frame_header_write(h, UINT32_MAX, 0);
	cr_assert_eq(write(sp[0], h, sizeof h), (ssize_t)sizeof h);
	cr_assert_eq(anes_io_read(&rx), (ssize_t)sizeof h);
	cr_assert_eq(anes_io_next_frame(&rx, &p, &len, fds, &nfds), -EMSGSIZE);
	cr_assert_leq(rx.rcap, 64u << 10);
	anes_io_cleanup(&rx);

	/* max_frame + 1 */
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	anes_frame_header_write(h, ANES_FRAME_MAX_DEFAULT + 1, 0);
	cr_assert_eq(write(sp[0], h, sizeof h), (ssize_t)sizeof h);
	cr_assert_eq(write(sp[0], junk, 10), 10);
	cr_assert_gt(anes_io_read(&rx), 0);
	cr_assert_eq(anes_io_next_frame(&rx, &p, &len, fds, &nfds), -EMSGSIZE);
	cr_assert_leq(rx.rcap, 64u << 10);
	anes_io_cleanup(&rx);
}

Test(io, bad_headers_in_stream)
{
	static const uint8_t hdrs[][ANES_FRAME_HEADER_SIZE] = {
		{ 0, 0, 0, 1, 0, 1, 0, 0 },   /* reserved */
		{ 0, 0, 0, 1, 0, 0, 0, 1 },
		{ 0, 0, 0, 1, 5, 0, 0, 0 },   /* 5 fds */
		{ 0, 0, 0, 1, 1, 0, 0, 0 },   /* claims 1 fd, none sent */
	};
	for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
		anes_io rx;
		const uint8_t *p;
		uint32_t len = 777;
		int fds[ANES_MAX_FDS_PER_FRAME] = { -5, -5, -5, -5 };
		unsigned nfds = 777;
		anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
		cr_assert_eq(write(sp[0], hdrs[i], 8), 8);
		cr_assert_eq(write(sp[0], "\xc0", 1), 1);
		cr_assert_eq(recv_frame(&rx, &p, &len, fds, &nfds), -EPROTO, "header %zu", i);
		cr_assert_eq(len, 777);
		cr_assert_eq(nfds, 777);
		cr_assert_eq(fds[0], -5);
		anes_io_cleanup(&rx);
		close(sp[0]);
		close(sp[1]);
		pair();
	}
}

Test(io, fd_passing_memfd)
{
#ifndef __linux__
	cr_skip_test("memfds are Linux's (surfaces are IOSurfaces here: test_iosurface)");
#endif
	const size_t sz = 3 * 4096 + 5;
	int mfd = -1;
	cr_assert_eq(anes_memfd_create("anes-test", sz, &mfd), 0);
	uint8_t *a = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	cr_assert_neq(a, MAP_FAILED);

	anes_io tx, rx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	void *data;
	size_t len;
	make_req(1, "surface.import", 1, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, &mfd, 1), 0);
	make_req(2, "after", 0, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), 0);
	cr_assert_eq(anes_io_flush(&tx), 0);
	cr_assert_not(fd_is_open(mfd), "the sent fd is closed by flush");

	const uint8_t *p;
	uint32_t plen;
	int fds[ANES_MAX_FDS_PER_FRAME] = { -1, -1, -1, -1 };
	unsigned nfds = 0;
	cr_assert_eq(recv_frame(&rx, &p, &plen, fds, &nfds), 1);
	check_req(p, plen, 1, "surface.import");
	cr_assert_eq(nfds, 1);
	cr_assert_geq(fds[0], 0);
	int fl = fcntl(fds[0], F_GETFD);
	cr_assert_geq(fl, 0);
	cr_assert(fl & FD_CLOEXEC, "received fd lacks FD_CLOEXEC");
	uint64_t got_sz = 0;
	cr_assert_eq(anes_memfd_check(fds[0], &got_sz), 0);
	cr_assert_eq(got_sz, sz);

	uint8_t *b = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	cr_assert_neq(b, MAP_FAILED);
	a[0] = 0x11;
	a[sz - 1] = 0x22;
	memcpy(a + 4096, "shared", 6);
	cr_assert_eq(b[0], 0x11);
	cr_assert_eq(b[sz - 1], 0x22);
	cr_assert_eq(memcmp(b + 4096, "shared", 6), 0);
	b[100] = 0x77;
	cr_assert_eq(a[100], 0x77);
	munmap(a, sz);
	munmap(b, sz);
	close(fds[0]);

	nfds = 99;
	cr_assert_eq(recv_frame(&rx, &p, &plen, fds, &nfds), 1);
	check_req(p, plen, 2, "after");
	cr_assert_eq(nfds, 0);
	cr_assert_eq(rx.nfdq, 0);
	anes_io_cleanup(&tx);
	anes_io_cleanup(&rx);
}

Test(io, max_fds_per_frame)
{
	int base = count_fds();
	int pfd[ANES_MAX_FDS_PER_FRAME][2];
	int send[ANES_MAX_FDS_PER_FRAME];
	for (int i = 0; i < ANES_MAX_FDS_PER_FRAME; i++) {
		cr_assert_eq(anes_pipe_cloexec(pfd[i]), 0);
		send[i] = pfd[i][1];
	}
	anes_io tx, rx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	void *data;
	size_t len;
	make_req(4, "four", ANES_MAX_FDS_PER_FRAME, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, send, ANES_MAX_FDS_PER_FRAME), 0);
	cr_assert_eq(anes_io_flush(&tx), 0);

	const uint8_t *p;
	uint32_t plen;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds = 0;
	cr_assert_eq(recv_frame(&rx, &p, &plen, fds, &nfds), 1);
	cr_assert_eq(nfds, ANES_MAX_FDS_PER_FRAME);
	for (int i = 0; i < ANES_MAX_FDS_PER_FRAME; i++) {  /* in order */
		char c = (char)('a' + i), d = 0;
		cr_assert_eq(write(fds[i], &c, 1), 1);
		cr_assert_eq(read(pfd[i][0], &d, 1), 1);
		cr_assert_eq(d, c);
		close(fds[i]);
		close(pfd[i][0]);
	}
	anes_io_cleanup(&tx);
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);
}

Test(io, unclaimed_fd)
{
	int base = count_fds();
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	void *data;
	size_t len;
	make_req(1, "nofd", 0, &data, &len);
	raw_send(sp[0], data, len, &pfd[0], 1);
	free(data);
	close(pfd[0]);
	close(pfd[1]);
	cr_assert_eq(count_fds(), base);

	anes_io rx;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	cr_assert_eq(anes_io_read(&rx), (ssize_t)len);
	cr_assert_eq(count_fds(), base + 1);
	const uint8_t *p;
	uint32_t plen;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds = 99;
	cr_assert_eq(anes_io_next_frame(&rx, &p, &plen, fds, &nfds), 1);
	cr_assert_eq(nfds, 0);
	check_req(p, plen, 1, "nofd");
	cr_assert_eq(anes_io_next_frame(&rx, &p, &plen, fds, &nfds), -EPROTO);
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);
}

Test(io, too_many_fds_in_one_message)
{
	int base = count_fds();
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	int many[ANES_IO_MAX_QUEUED_FDS + 4];
	for (size_t i = 0; i < sizeof many / sizeof many[0]; i++)
		many[i] = pfd[i & 1];
	raw_send(sp[0], "x", 1, many, sizeof many / sizeof many[0]);
	close(pfd[0]);
	close(pfd[1]);

	anes_io rx;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	cr_assert_eq(anes_io_read(&rx), -EPROTO);
	cr_assert_eq(count_fds(), base, "received fds leaked");
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);

	/* exactly ANES_IO_MAX_QUEUED_FDS in one message are accepted */
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	for (size_t i = 0; i < ANES_IO_MAX_QUEUED_FDS; i++)
		many[i] = pfd[i & 1];
	raw_send(sp[0], "x", 1, many, ANES_IO_MAX_QUEUED_FDS);
	close(pfd[0]);
	close(pfd[1]);
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	cr_assert_eq(anes_io_read(&rx), 1);
	cr_assert_eq(rx.nfdq, ANES_IO_MAX_QUEUED_FDS);
	cr_assert_eq(count_fds(), base + ANES_IO_MAX_QUEUED_FDS);
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);
}

Test(io, too_many_fds_queued)
{
	int base = count_fds();
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	int ten[10];
	for (int i = 0; i < 10; i++)
		ten[i] = pfd[0];

	anes_io rx;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	raw_send(sp[0], "\0", 1, ten, 10);
	cr_assert_eq(anes_io_read(&rx), 1);
	cr_assert_eq(rx.nfdq, 10);
	raw_send(sp[0], "\0", 1, ten, 10);
	cr_assert_eq(anes_io_read(&rx), -EPROTO);
	cr_assert_eq(rx.nfdq, 10);
	close(pfd[0]);
	close(pfd[1]);
	cr_assert_eq(count_fds(), base + 10);
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);
}

Test(io, foreign_ancillary_data)
{
	int base = count_fds();
#ifdef SO_PASSCRED
	int one = 1;
	cr_assert_eq(setsockopt(sp[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one), 0);
#else
	cr_skip_test("no SO_PASSCRED, which makes the kernel add SCM_CREDENTIALS (Linux)");
#endif
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	raw_send(sp[0], "x", 1, pfd, 2);
	close(pfd[0]);
	close(pfd[1]);

	anes_io rx;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	cr_assert_eq(anes_io_read(&rx), -EPROTO);  /* SCM_CREDENTIALS */
	cr_assert_eq(count_fds(), base);
	anes_io_cleanup(&rx);
}

Test(io, queue_rejects)
{
	anes_io tx;
	int base = count_fds();
	int pfd[2];
	void *data;
	size_t len;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);

	/* nfds differs from the header: data freed, fds closed */
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	make_req(1, "m", 0, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, pfd, 2), -EINVAL);
	cr_assert_eq(count_fds(), base);

	/* more than 4 fds: all closed */
	int five[ANES_MAX_FDS_PER_FRAME + 1];
	for (int i = 0; i < ANES_MAX_FDS_PER_FRAME + 1; i++)
		five[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
	make_req(1, "m", ANES_MAX_FDS_PER_FRAME, &data, &len);
	((uint8_t *)data)[4] = ANES_MAX_FDS_PER_FRAME + 1;
	cr_assert_eq(anes_io_queue(&tx, data, len, five, ANES_MAX_FDS_PER_FRAME + 1), -EINVAL);
	cr_assert_eq(count_fds(), base, "fds leaked when nfds > ANES_MAX_FDS_PER_FRAME");

	/* too short to hold a header */
	data = malloc(4);
	memset(data, 0, 4);
	cr_assert_eq(anes_io_queue(&tx, data, 4, NULL, 0), -EINVAL);

	/* a header whose length does not match the buffer would desync the stream */
	make_req(1, "m", 0, &data, &len);
	((uint8_t *)data)[3]++;
	cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), -EINVAL);

	/* a frame larger than this connection's max_frame */
	anes_io small;
	anes_io_init(&small, sp[0], 8);
	make_req(1, "m", 0, &data, &len);
	cr_assert_eq(anes_io_queue(&small, data, len, NULL, 0), -EMSGSIZE);
	anes_io_cleanup(&small);

	cr_assert_not(anes_io_want_write(&tx));
	cr_assert_eq(tx.out_bytes, 0);
	anes_io_cleanup(&tx);
	cr_assert_eq(count_fds(), base);
}

Test(io, cleanup_closes_unsent)
{
	int base = count_fds();
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	anes_io tx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	void *data;
	size_t len;
	make_req(1, "m", 2, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, pfd, 2), 0);
	make_req(2, "m", 0, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), 0);
	cr_assert_eq(count_fds(), base + 2);
	anes_io_cleanup(&tx);
	cr_assert_eq(count_fds(), base);
	cr_assert_eq(tx.fd, -1);
	cr_assert_null(tx.out_head);
	anes_io_cleanup(&tx);  /* twice is harmless */
}

Test(io, flush_to_closed_peer)
{
	anes_io tx;
	void *data;
	size_t len;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	close(sp[1]);
	sp[1] = -1;
	make_req(1, "m", 0, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), 0);
	cr_assert_eq(anes_io_flush(&tx), -EPIPE);  /* and no SIGPIPE */
	cr_assert(anes_io_want_write(&tx));
	anes_io_cleanup(&tx);
}

/* ---- failure injection ------------------------------------------------------ */

static int send_calls;

/* EAGAIN first, then EINTR, then one byte per call. */
static ssize_t fake_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	int call = send_calls++;
	if (call == 0) {
		errno = EAGAIN;
		return -1;
	}
	if (call == 1) {
		errno = EINTR;
		return -1;
	}
	struct msghdr m = *msg;
	struct iovec iov = msg->msg_iov[0];
	if (iov.iov_len > 1)
		iov.iov_len = 1;
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	return sendmsg(fd, &m, flags);
}

Test(io, inject_sendmsg_eagain_and_short_writes)
{
	const size_t sz = 4096;
	int mfd[2];
	uint8_t *maps[2];
	for (int i = 0; i < 2; i++) {
		mfd[i] = shared_fd(sz);
		maps[i] = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, mfd[i], 0);
		cr_assert_neq(maps[i], MAP_FAILED);
		memset(maps[i], 'A' + i, sz);
	}
	int base = count_fds();

	anes_io tx, rx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	size_t total = 0;
	for (uint32_t i = 1; i <= 3; i++) {
		void *data;
		size_t len;
		unsigned nfds = i == 1 ? 1 : i == 3 ? 1 : 0;
		make_req(i, "inj", nfds, &data, &len);
		total += len;
		cr_assert_eq(anes_io_queue(&tx, data, len, nfds ? &mfd[i == 1 ? 0 : 1] : NULL, nfds), 0);
	}

	send_calls = 0;
	anes_os_sendmsg = fake_sendmsg;
	cr_assert_eq(anes_io_flush(&tx), -EAGAIN);
	cr_assert_eq(tx.out_bytes, total);
	cr_assert_eq(count_fds(), base);  /* nothing sent, nothing closed */
	cr_assert_eq(anes_io_flush(&tx), 0);
	anes_os_sendmsg = sendmsg;
	cr_assert_eq(send_calls, 2 + (int)total);
	cr_assert_eq(tx.out_bytes, 0);
	cr_assert_eq(count_fds(), base - 2, "sent fds are closed");

	for (uint32_t i = 1; i <= 3; i++) {
		const uint8_t *p;
		uint32_t plen;
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nfds = 99;
		cr_assert_eq(recv_frame(&rx, &p, &plen, fds, &nfds), 1);
		check_req(p, plen, i, "inj");
		cr_assert_eq(nfds, i == 2 ? 0u : 1u);
		if (nfds) {
			uint8_t *m = mmap(NULL, sz, PROT_READ, MAP_SHARED, fds[0], 0);
			cr_assert_neq(m, MAP_FAILED);
			cr_assert_eq(m[0], i == 1 ? 'A' : 'B');
			cr_assert_eq(m[sz - 1], i == 1 ? 'A' : 'B');
			munmap(m, sz);
			close(fds[0]);
		}
	}
	cr_assert_eq(rx.nfdq, 0);
	cr_assert_eq(rx.rlen, rx.rpos);
	for (int i = 0; i < 2; i++)
		munmap(maps[i], sz);
	anes_io_cleanup(&tx);
	anes_io_cleanup(&rx);
}

static ssize_t fake_send_epipe(int fd, const struct msghdr *msg, int flags)
{
	(void)fd, (void)msg, (void)flags;
	errno = EPIPE;
	return -1;
}

Test(io, inject_sendmsg_error_keeps_fds)
{
	int base = count_fds();
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	anes_io tx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	void *data;
	size_t len;
	make_req(1, "m", 1, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, &pfd[1], 1), 0);
	anes_os_sendmsg = fake_send_epipe;
	cr_assert_eq(anes_io_flush(&tx), -EPIPE);
	anes_os_sendmsg = sendmsg;
	cr_assert(fd_is_open(pfd[1]));
	anes_io_cleanup(&tx);
	cr_assert_not(fd_is_open(pfd[1]));
	close(pfd[0]);
	cr_assert_eq(count_fds(), base);
}

static int recv_calls;
static int recv_errno;

static ssize_t fake_recvmsg(int fd, struct msghdr *msg, int flags)
{
	if (recv_calls++ == 0) {
		errno = recv_errno;
		return -1;
	}
	return recvmsg(fd, msg, flags);
}

Test(io, inject_recvmsg_eintr)
{
	anes_io rx;
	void *data;
	size_t len;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	make_req(77, "intr", 0, &data, &len);
	cr_assert_eq(anes_write_all(sp[0], data, len), 0);
	free(data);

	recv_calls = 0;
	recv_errno = EINTR;
	anes_os_recvmsg = fake_recvmsg;
	cr_assert_eq(anes_io_read(&rx), (ssize_t)len);
	cr_assert_eq(recv_calls, 2);

	/* other errors are returned as -errno, nothing is consumed */
	recv_calls = 0;
	recv_errno = ECONNRESET;
	cr_assert_eq(anes_io_read(&rx), -ECONNRESET);
	recv_calls = 0;
	recv_errno = EAGAIN;
	cr_assert_eq(anes_io_read(&rx), -EAGAIN);
	anes_os_recvmsg = recvmsg;

	const uint8_t *p;
	uint32_t plen;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	cr_assert_eq(anes_io_next_frame(&rx, &p, &plen, fds, &nfds), 1);
	check_req(p, plen, 77, "intr");
	anes_io_cleanup(&rx);
}

/* ---- anes_write_all ------------------------------------------------------- */

Test(misc, write_all)
{
	int s[2];
	char buf[300000], got[sizeof buf];
	cr_assert_eq(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, s), 0);
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (char)(i * 7);
	/* more than the socket buffer: read it from a child */
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(s[0]);
		_exit(anes_write_all(s[1], buf, sizeof buf) == 0 ? 0 : 1);
	}
	close(s[1]);
	size_t n = 0;
	while (n < sizeof got) {
		ssize_t r = read(s[0], got + n, sizeof got - n);
		cr_assert_gt(r, 0);
		n += (size_t)r;
	}
	cr_assert_eq(memcmp(buf, got, sizeof buf), 0);
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(s[0]);
	cr_assert_eq(anes_write_all(-1, "x", 1), -EBADF);
}

Test(io, full_buffer_with_complete_frame)
{
	/* max_frame at its lowest: the first read fills the 64 KiB buffer with
	 * frame A and the start of frame B */
	const uint32_t max = ANES_FRAME_MAX_LOWEST;
	anes_io rx;
	anes_io_init(&rx, sp[1], max);
	void *a;
	size_t alen;
	make_req(1, "a", 0, &a, &alen);
	bytes b = {0};
	b_hex(&b, "94 00 02 a1 62 81 a1 78 c6");
	b_be(&b, max - 13, 4);
	for (uint32_t i = 0; i < max - 13; i++)
		b_u8(&b, (uint8_t)i);
	cr_assert_eq(b.n, max);
	uint8_t h[ANES_FRAME_HEADER_SIZE];
	anes_frame_header_write(h, (uint32_t)b.n, 0);
	cr_assert_eq(anes_write_all(sp[0], a, alen), 0);
	cr_assert_eq(anes_write_all(sp[0], h, sizeof h), 0);
	cr_assert_eq(anes_write_all(sp[0], b.p, b.n), 0);
	free(a);

	cr_assert_eq(anes_io_read(&rx), 64 << 10);
	cr_assert_eq(rx.rcap, 64u << 10);
	cr_assert_eq(anes_io_read(&rx), -ENOBUFS);

	const uint8_t *p;
	uint32_t plen;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	cr_assert_eq(anes_io_next_frame(&rx, &p, &plen, fds, &nfds), 1);
	check_req(p, plen, 1, "a");
	cr_assert_eq(recv_frame(&rx, &p, &plen, fds, &nfds), 1);
	cr_assert_eq(plen, max);
	cr_assert_eq(memcmp(p, b.p, b.n), 0);
	cr_assert_leq(rx.rcap, (size_t)ANES_FRAME_HEADER_SIZE + max);
	b_free(&b);
	anes_io_cleanup(&rx);
}
