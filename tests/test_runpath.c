/* SPDX-License-Identifier: MIT */
/*
 * The run path (docs/design.md, "Life of a request"): the one send
 * primitive every reply path and the client library use
 * (anes_io_try_send).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "anes_proto.h"
#include "daemon_harness.h"

/* ---- anes_io_try_send ------------------------------------------------------ */

static int sends;
static size_t send_cap;          /* most bytes the fake takes per call */
static unsigned fds_seen[8];     /* fds attached, per call */

static ssize_t capped_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	cr_assert(flags & MSG_DONTWAIT, "a send that could block");
	unsigned nfds = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR((struct msghdr *)msg); c;
	     c = CMSG_NXTHDR((struct msghdr *)msg, c))
		nfds += (unsigned)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
	if (sends < 8)
		fds_seen[sends] = nfds;
	sends++;
	/* Keep the ancillary data, take at most send_cap bytes. */
	struct iovec iov[8];
	size_t left = send_cap;
	size_t k = 0;
	for (size_t i = 0; i < (size_t)msg->msg_iovlen && left > 0 && k < 8; i++, k++) {
		iov[k] = msg->msg_iov[i];
		if (iov[k].iov_len > left)
			iov[k].iov_len = left;
		left -= iov[k].iov_len;
	}
	struct msghdr m = *msg;
	m.msg_iov = iov;
	m.msg_iovlen = k;
	return sendmsg(fd, &m, flags);
}

Test(send, partial_writes_carry_the_fds_once)
{
	int sp[2];
	cr_assert_eq(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sp), 0);
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	const char a[] = "0123456789", b[] = "abcdefghij";
	struct iovec iov[2] = { { (void *)a, 10 }, { (void *)b, 10 } };

	sends = 0;
	send_cap = 7;
	anes_os_sendmsg = capped_sendmsg;
	ssize_t n = anes_io_try_send(sp[0], iov, 2, &pfd[1], 1);
	cr_assert_eq(n, 7, "the first send takes what the socket takes: %zd", n);
	/* The rest, by the caller: from where the first send stopped, no fds. */
	struct iovec rest[2] = { { (void *)(a + 7), 3 }, { (void *)b, 10 } };
	send_cap = 100;
	n = anes_io_try_send(sp[0], rest, 2, NULL, 0);
	anes_os_sendmsg = sendmsg;
	cr_assert_eq(n, 13);
	cr_assert_eq(sends, 2);
	cr_assert_eq(fds_seen[0], 1u, "the fd goes with the first byte");
	cr_assert_eq(fds_seen[1], 0u, "and only then");

	/* The peer got the 20 bytes and exactly one fd, a working duplicate. */
	anes_io rx;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	size_t got = 0;
	while (got < 20) {
		ssize_t r = anes_io_read(&rx);
		cr_assert_gt(r, 0);
		got += (size_t)r;
	}
	cr_assert_eq(memcmp(rx.rbuf, "0123456789abcdefghij", 20), 0);
	cr_assert_eq(rx.nfdq, 1u);
	cr_assert_eq(write(rx.fdq[0], "x", 1), 1);
	char ch = 0;
	cr_assert_eq(read(pfd[0], &ch, 1), 1);
	cr_assert_eq(ch, 'x');
	anes_io_cleanup(&rx);
	close(pfd[0]);
	close(pfd[1]);
	close(sp[0]);
	close(sp[1]);
}

Test(send, never_blocks_and_reports_a_gone_peer)
{
	int sp[2];
	cr_assert_eq(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sp), 0);
	/* A blocking socket, filled up: the next send returns -EAGAIN at once. */
	static char buf[65536];
	struct iovec iov = { buf, sizeof buf };
	size_t total = 0;
	ssize_t n;
	while ((n = anes_io_try_send(sp[0], &iov, 1, NULL, 0)) > 0)
		total += (size_t)n;
	cr_assert_eq(n, -EAGAIN);
	cr_assert_gt(total, 0u);
	/* Too many fds: refused before any system call. */
	int fds[ANES_MAX_FDS_PER_FRAME + 1] = { 0 };
	cr_assert_eq(anes_io_try_send(sp[0], &iov, 1, fds, ANES_MAX_FDS_PER_FRAME + 1), -EINVAL);
	close(sp[1]);
	/* The peer is gone: -EPIPE, and no SIGPIPE kills the test. */
	cr_assert_eq(anes_io_try_send(sp[0], &iov, 1, NULL, 0), -EPIPE);
	close(sp[0]);
}
