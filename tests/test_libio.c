/* SPDX-License-Identifier: MIT */
/*
 * libaneshare over a socket that takes and gives a few bytes at a time: the
 * library's I/O goes through anes_os_sendmsg / anes_os_recvmsg, which this
 * suite replaces (it links the library's objects, so it reaches the
 * hooks).  Requests written 7 bytes a call with EAGAIN between, replies
 * read 5 bytes a call with EINTR between (the surfaces' fds with the first
 * bytes of their frame): programs compile, surfaces map, runs compute the
 * right numbers, blocking and async.  A read that fails for good kills the
 * connection (final); one that fails for want of fds only breaks it (the
 * next call reconnects); a write that fails for good kills it too.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "anes_proto.h"
#include "aneshare.h"
#include "daemon_harness.h"

static h_daemon D;

static void setup(void)
{
	h_daemon_start(&D);
}

static void teardown(void)
{
	anes_os_sendmsg = sendmsg;
	anes_os_recvmsg = recvmsg;
	h_daemon_kill(&D);
}

TestSuite(libio, .init = setup, .fini = teardown, .timeout = 120);

/* ---- the hooks --------------------------------------------------------------------- */

static atomic_int send_calls, recv_calls;
static int fail_errno;          /* the next call of the failing hook fails with this, once */

/* At most 7 bytes a call; every other call EAGAIN first (the socket is
 * writable again at once: poll says so). */
static ssize_t trickle_send(int fd, const struct msghdr *msg, int flags)
{
	if (atomic_fetch_add(&send_calls, 1) % 2 == 0) {
		errno = EAGAIN;
		return -1;
	}
	struct msghdr m = *msg;
	struct iovec iov[64];
	size_t left = 7, n = 0;
	for (size_t i = 0; i < (size_t)msg->msg_iovlen && i < 64 && left; i++, n++) {
		iov[i] = msg->msg_iov[i];
		if (iov[i].iov_len > left)
			iov[i].iov_len = left;
		left -= iov[i].iov_len;
	}
	m.msg_iov = iov;
	m.msg_iovlen = n;
	return sendmsg(fd, &m, flags);
}

/* At most 5 bytes a call; every third call EINTR first. */
static ssize_t trickle_recv(int fd, struct msghdr *msg, int flags)
{
	if (atomic_fetch_add(&recv_calls, 1) % 3 == 0) {
		errno = EINTR;
		return -1;
	}
	struct iovec saved = msg->msg_iov[0], one = saved;
	size_t savedn = msg->msg_iovlen;
	if (one.iov_len > 5)
		one.iov_len = 5;
	msg->msg_iov[0] = one;
	msg->msg_iovlen = 1;
	ssize_t n = recvmsg(fd, msg, flags);
	msg->msg_iov[0] = saved;
	msg->msg_iovlen = savedn;
	return n;
}

static ssize_t failing_recv(int fd, struct msghdr *msg, int flags)
{
	if (fail_errno) {
		errno = fail_errno;
		fail_errno = 0;
		return -1;
	}
	return recvmsg(fd, msg, flags);
}

static ssize_t failing_send(int fd, const struct msghdr *msg, int flags)
{
	if (fail_errno) {
		errno = fail_errno;
		fail_errno = 0;
		return -1;
	}
	return sendmsg(fd, msg, flags);
}

/* ---- a few bytes at a time ------------------------------------------------------------ */

static void async_done(aneshare_conn *c, const aneshare_result *res, void *ud)
{
	(void)c;
	int *n = ud;
	cr_assert_eq(res->rc, 0, "async run: %s", res->message);
	(*n)++;
}

Test(libio, a_trickling_socket_loses_nothing)
{
	aneshare_conn *c = h_connect(&D, "libio");
	cr_assert_eq(aneshare_set_spin(c, 0), 0);   /* the blocking reads sleep in recvmsg */
	anes_os_sendmsg = trickle_send;
	anes_os_recvmsg = trickle_recv;
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);   /* a request of a few KiB, 7 bytes a call */
	aneshare_surface *in[2], *out[2];
	h_mm_pairs(c, &mm, in, out, 2, 11);
	for (int i = 0; i < 2; i++)
		h_mm_fill_run_check(p, &mm, in[i], out[i], 100 + (uint64_t)i);
	cr_assert_gt(atomic_load(&send_calls), 100, "the requests went a few bytes at a time");
	cr_assert_gt(atomic_load(&recv_calls), 100, "the replies came a few bytes at a time");

	/* async: what the socket does not take waits for writable */
	int done = 0;
	int r = aneshare_run_async(p, 0, &in[0], 1, &out[0], 1, async_done, &done);
	cr_assert_eq(r, 0, "%s", aneshare_last_error(c));
	cr_assert(aneshare_events(c) & ANESHARE_EV_WRITE, "the rest of the request is queued");
	for (int spins = 0; done == 0 && spins < 100000; spins++) {
		struct pollfd pf = { .fd = aneshare_fd(c),
		                     .events = (short)((aneshare_events(c) & ANESHARE_EV_WRITE) ? POLLOUT | POLLIN
		                                                                               : POLLIN) };
		cr_assert_geq(poll(&pf, 1, 10000 * h_slow()), 0);
		cr_assert_geq(aneshare_dispatch(c), 0, "%s", aneshare_last_error(c));
	}
	cr_assert_eq(done, 1);
	anes_os_sendmsg = sendmsg;
	anes_os_recvmsg = recvmsg;
	for (int i = 0; i < 2; i++) {
		aneshare_surface_release(in[i]);
		aneshare_surface_release(out[i]);
	}
	aneshare_program_release(p);
	aneshare_disconnect(c);
}

/* ---- reads and writes that fail --------------------------------------------------------- */

Test(libio, a_failed_read_is_final_unless_it_was_for_fds)
{
	aneshare_conn *c = h_connect(&D, "libio");
	cr_assert_eq(aneshare_set_spin(c, 0), 0);
	anes_os_recvmsg = failing_recv;
	aneshare_status *st = NULL;

	/* out of fds: the connection breaks, the (idempotent) status is asked
	 * again of the same daemon after a reconnect */
	fail_errno = EMFILE;
	int r = aneshare_get_status(c, &st);
	cr_assert_eq(r, 0, "%s", aneshare_last_error(c));
	aneshare_status_free(st);
	cr_assert_eq(aneshare_reconnect_count(c), 1);

	/* an I/O error: final */
	fail_errno = EIO;
	r = aneshare_get_status(c, &st);
	cr_assert_eq(r, -EIO, "%d %s", r, aneshare_last_error(c));
	cr_assert(strstr(aneshare_last_error(c), "reading from the daemon"), "%s", aneshare_last_error(c));
	cr_assert_eq(aneshare_get_status(c, &st), -EIO, "no reconnect");
	cr_assert_eq(aneshare_reconnect_count(c), 1);
	aneshare_disconnect(c);

	/* a write that fails for good: final too, nothing half-sent goes on */
	c = h_connect(&D, "libio");
	anes_os_sendmsg = failing_send;
	fail_errno = ENOBUFS;
	r = aneshare_get_status(c, &st);
	cr_assert_eq(r, -ENOBUFS, "%d %s", r, aneshare_last_error(c));
	cr_assert(strstr(aneshare_last_error(c), "writing to the daemon"), "%s", aneshare_last_error(c));
	cr_assert_eq(aneshare_get_status(c, &st), -ENOBUFS);
	aneshare_disconnect(c);
	anes_os_sendmsg = sendmsg;
	anes_os_recvmsg = recvmsg;
}
