/* SPDX-License-Identifier: MIT */
/*
 * The device worker's private protocol without a daemon (docs/worker.md):
 * the message codec's fds (up to ANES_WMSG_MAX_FDS, more or a full fd table
 * refused with the stream still in step, nothing leaked), and the worker
 * itself (anes_devworker_serve on a thread, CPU backend, over a socketpair)
 * fed COMPILE messages whose weight files are wrong in every way the
 * payload can say, then a right one whose runs compute the right numbers;
 * RUNs it cannot do (unknown programs, functions, surfaces, offsets, cut
 * payloads) refused in step; an unknown message ending it; and the pure
 * rules of which send failures leave the stream in step and which compile
 * results count against the budget.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "anes_fp16.h"
#include "anes_proto.h"
#include "backend.h"
#include "devworker.h"
#include "linear_blob.h"

TestSuite(worker_wire, .timeout = 60);

static int fd_count(void)
{
	int n = 0;
	for (int fd = 0; fd < 1024; fd++)
		n += fcntl(fd, F_GETFD) >= 0;
	return n;
}

static void pair(int sv[2])
{
	cr_assert_eq(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sv), 0);
}

/* a sealed read-only file (name) of the n bytes at b */
static int sealed(const char *name, const void *b, size_t n)
{
	int fd = -1;
	cr_assert_eq(anes_rofile_create(name, n, &fd), 0);
	cr_assert_eq(anes_rofile_write(fd, 0, b, n), 0);
	cr_assert_eq(anes_rofile_seal(fd), 0);
	return fd;
}

/* a read-only file of n bytes of value v */
static int rofile(size_t n, uint8_t v)
{
	uint8_t *b = malloc(n ? n : 1);
	memset(b, v, n);
	int fd = sealed("t", b, n);
	free(b);
	return fd;
}

Test(worker_wire, fds_up_to_the_limit_arrive_cloexec)
{
	int base = fd_count(), sv[2];
	pair(sv);
	int fds[ANES_WMSG_MAX_FDS + 1];
	for (int i = 0; i <= ANES_WMSG_MAX_FDS; i++)
		fds[i] = rofile(16 + (size_t)i, (uint8_t)i);
	uint32_t v = 42;
	struct iovec iov = { &v, 4 };
	cr_assert_eq(anes_wmsg_send_fds(sv[0], 7, 9, &iov, 1, fds, ANES_WMSG_MAX_FDS + 1), -EINVAL);
	cr_assert_eq(anes_wmsg_send_fds(sv[0], 7, 9, &iov, 1, fds, ANES_WMSG_MAX_FDS), 0);
	anes_wmsg_hdr h;
	void *payload = NULL;
	int got[ANES_WMSG_MAX_FDS];
	unsigned n = 99;
	cr_assert_eq(anes_wmsg_recv_fds(sv[1], &h, &payload, got, &n), 0);
	cr_assert_eq(h.type, 7);
	cr_assert_eq(h.id, 9);
	cr_assert_eq(h.len, 4);
	cr_assert_eq(*(uint32_t *)payload, 42);
	cr_assert_eq(n, ANES_WMSG_MAX_FDS);
	for (unsigned i = 0; i < n; i++) {
		struct stat a, b;
		cr_assert_eq(fstat(fds[i], &a), 0);
		cr_assert_eq(fstat(got[i], &b), 0);
		cr_assert_eq(a.st_ino, b.st_ino, "fd %u is the file sent", i);
		cr_assert(fcntl(got[i], F_GETFD) & FD_CLOEXEC, "fd %u is CLOEXEC", i);
		close(got[i]);
	}
	free(payload);
	/* the one-fd receive refuses a message with several */
	cr_assert_eq(anes_wmsg_send_fds(sv[0], 7, 10, &iov, 1, fds, 2), 0);
	int one = -1;
	cr_assert_eq(anes_wmsg_recv(sv[1], &h, &payload, &one), -EBADMSG);
	for (int i = 0; i <= ANES_WMSG_MAX_FDS; i++)
		close(fds[i]);
	close(sv[0]);
	close(sv[1]);
	cr_assert_eq(fd_count(), base, "no fd left");
}

/* A message with more fds than a message may carry (sent around the
 * codec's own check): read whole, its fds closed, and the next message
 * reads right. */
Test(worker_wire, more_fds_than_the_limit_are_refused_in_step)
{
	int base = fd_count(), sv[2];
	pair(sv);
	enum { N = ANES_WMSG_MAX_FDS + 3 };
	int fds[N];
	for (int i = 0; i < N; i++)
		fds[i] = rofile(8, 1);
	anes_wmsg_hdr hd = { .len = 4, .type = 16, .id = 5 };
	uint32_t v = 7;
	struct iovec iov[2] = { { &hd, sizeof hd }, { &v, 4 } };
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(N * sizeof(int))];
	} cm;
	memset(&cm, 0, sizeof cm);
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2, .msg_control = cm.buf,
	                     .msg_controllen = sizeof cm.buf };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(N * sizeof(int));
	memcpy(CMSG_DATA(c), fds, sizeof fds);
	cr_assert_eq(sendmsg(sv[0], &mh, 0), (ssize_t)(sizeof hd + 4));
	for (int i = 0; i < N; i++)
		close(fds[i]);
	uint32_t v2 = 8;
	struct iovec iov2 = { &v2, 4 };
	cr_assert_eq(anes_wmsg_send(sv[0], 17, 6, &iov2, 1, -1), 0);

	anes_wmsg_hdr h;
	void *payload = NULL;
	int got[ANES_WMSG_MAX_FDS];
	unsigned n = 99;
	cr_assert_eq(anes_wmsg_recv_fds(sv[1], &h, &payload, got, &n), ANES_WMSG_FDS_LOST);
	cr_assert_eq(n, 0);
	cr_assert_eq(h.id, 5);
	cr_assert_eq(*(uint32_t *)payload, 7);
	free(payload);
	cr_assert_eq(anes_wmsg_recv_fds(sv[1], &h, &payload, got, &n), 0);
	cr_assert_eq(n, 0);
	cr_assert_eq(h.id, 6);
	cr_assert_eq(*(uint32_t *)payload, 8);
	free(payload);
	close(sv[0]);
	close(sv[1]);
	cr_assert_eq(fd_count(), base, "every fd that came was closed");
}

/* The receiver's fd table is full: the message is read whole and its fds
 * are lost (none leaked); with room again, the next one arrives. */
Test(worker_wire, a_full_fd_table_loses_the_fds_not_the_stream)
{
	int base = fd_count(), sv[2];
	pair(sv);
	int fds[2] = { rofile(8, 1), rofile(8, 2) };
	uint32_t v = 1;
	struct iovec iov = { &v, 4 };
	cr_assert_eq(anes_wmsg_send_fds(sv[0], 16, 1, &iov, 1, fds, 2), 0);
	cr_assert_eq(anes_wmsg_send_fds(sv[0], 16, 2, &iov, 1, fds, 1), 0);
	close(fds[0]);
	close(fds[1]);
	struct rlimit rl, low;
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	int probe = fcntl(0, F_DUPFD_CLOEXEC, 0);
	close(probe);
	low = rl;
	low.rlim_cur = (rlim_t)probe + 1;   /* room for one: the second fd cannot come */
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
	anes_wmsg_hdr h;
	void *payload = NULL;
	int got[ANES_WMSG_MAX_FDS];
	unsigned n = 99;
	int r = anes_wmsg_recv_fds(sv[1], &h, &payload, got, &n);
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	cr_assert_eq(r, ANES_WMSG_FDS_LOST);
	cr_assert_eq(n, 0);
	cr_assert_eq(h.id, 1);
	free(payload);
	cr_assert_eq(anes_wmsg_recv_fds(sv[1], &h, &payload, got, &n), 0);
	cr_assert_eq(h.id, 2);
	cr_assert_eq(n, 1);
	close(got[0]);
	free(payload);
	close(sv[0]);
	close(sv[1]);
	cr_assert_eq(fd_count(), base, "no fd left");
}

/* ---- the worker on a thread ---------------------------------------------------------- */

enum { IN = 32, OUT = 16 };

static const char *mil_text(void)
{
	static char t[1024];
	return lb_mil(t, sizeof t, IN, OUT);
}

static float wval(int o, int i, float seed)
{
	return (float)((o * 5 + i * 3) % 11 - 5) / 8.0f + seed;
}

/* the blob of W[o][i] = wval */
static uint8_t *make_blob(size_t *ret_len)
{
	uint8_t *b = lb_blob(OUT, IN, wval, 0.0f, ret_len);
	cr_assert_not_null(b);
	return b;
}

/* The output surface sout holds y = W x (fp16, W of wval). */
static void check_wx(int sout, const uint16_t *x)
{
	uint16_t y[OUT];
	cr_assert_eq(pread(sout, y, sizeof y, 0), (ssize_t)sizeof y);
	for (int o = 0; o < OUT; o++) {
		double ref = 0;
		for (int i = 0; i < IN; i++)
			ref += (double)anes_f16_to_f32_soft(anes_f32_to_f16_soft(wval(o, i, 0.0f))) * anes_f16_to_f32_soft(x[i]);
		double got = anes_f16_to_f32_soft(y[o]);
		cr_assert(fabs(got - ref) <= 2e-3 * fmax(1.0, fabs(ref)), "y[%d] = %g, want %g", o, got, ref);
	}
}

typedef struct served {
	int fd;
	anes_backend *b;
	int status;
	pthread_t t;
} served;

static void *serve_main(void *arg)
{
	served *s = arg;
	s->status = anes_devworker_serve(s->fd, s->b, 1, NULL);
	return NULL;
}

/* Start the worker; *ret_fd is the daemon's end (after HELLO). */
static void serve(served *s, int *ret_fd)
{
	int sv[2];
	pair(sv);
	cr_assert_eq(anes_cpu_backend_new(1, &s->b), 0);
	s->fd = sv[1];
	cr_assert_eq(pthread_create(&s->t, NULL, serve_main, s), 0);
	anes_wmsg_hdr h;
	void *payload = NULL;
	int mfd = -1;
	cr_assert_eq(anes_wmsg_recv(sv[0], &h, &payload, &mfd), 0);
	cr_assert_eq(h.type, ANES_WM_HELLO);
	free(payload);
	*ret_fd = sv[0];
}

static void serve_end(served *s, int fd)
{
	close(fd);
	pthread_join(s->t, NULL);
	cr_assert_eq(s->status, 0);
	close(s->fd);
	s->b->ops->destroy(s->b);
}

/* The reply (of type, to message id) to a COMPILE or RUN: its rc, its error
 * text in err, the fd that came with it in *ret_mfd (-1: none). */
static int reply_of(int fd, uint32_t type, uint64_t id, int *ret_mfd, char *err, size_t errlen)
{
	anes_wmsg_hdr h;
	void *payload = NULL;
	int mfd = -1;
	cr_assert_eq(anes_wmsg_recv(fd, &h, &payload, &mfd), 0);
	cr_assert_eq(h.type, type);
	cr_assert_eq(h.id, id);
	cr_assert_geq(h.len, 8);
	int32_t rc;
	uint32_t el;
	memcpy(&rc, payload, 4);
	memcpy(&el, (char *)payload + 4, 4);
	cr_assert_leq(el, h.len - 8);
	snprintf(err, errlen, "%.*s", (int)el, (char *)payload + 8);
	free(payload);
	*ret_mfd = mfd;
	return rc;
}

/* One COMPILE with a weight at {fd_index, off, len} and n_fds said in the
 * payload (fds attached: nfds of them); the reply's rc, and its error text. */
static int compile(int fd, uint64_t id, uint32_t fd_index, uint64_t off, uint64_t len, uint32_t n_fds_said,
                   const int *fds, unsigned nfds, char *err, size_t errlen)
{
	const char *mil = mil_text(), *path = "@model_path/weights/weight.bin";
	uint32_t ml = (uint32_t)strlen(mil), n = 1, pl = (uint32_t)strlen(path) + 1;
	uint8_t head[12], w[24];
	memcpy(head, &ml, 4);
	memcpy(head + 4, &n, 4);
	memcpy(head + 8, &n_fds_said, 4);
	memcpy(w, &pl, 4);
	memcpy(w + 4, &fd_index, 4);
	memcpy(w + 8, &off, 8);
	memcpy(w + 16, &len, 8);
	struct iovec v[4] = { { head, 12 }, { (void *)mil, ml }, { w, 24 }, { (void *)path, pl } };
	cr_assert_eq(anes_wmsg_send_fds(fd, ANES_WM_COMPILE, id, v, 4, fds, nfds), 0);
	int mfd;
	return reply_of(fd, ANES_WM_COMPILED, id, &mfd, err, errlen);
}

Test(worker_wire, the_worker_refuses_weight_files_it_cannot_trust)
{
	int base = fd_count();
	served s;
	int fd;
	serve(&s, &fd);
	size_t len;
	uint8_t *blob = make_blob(&len);
	int good = sealed("w", blob, len);
	char err[256];

	/* the payload says one file, none came */
	cr_assert_eq(compile(fd, 1, 0, 0, len, 1, NULL, 0, err, sizeof err), -EBADMSG);
	/* a file index past the files */
	cr_assert_eq(compile(fd, 2, 1, 0, len, 1, &good, 1, err, sizeof err), -EBADMSG);
	/* a place past the end of the file */
	cr_assert_eq(compile(fd, 3, 0, 64, len, 1, &good, 1, err, sizeof err), -EBADMSG);
	cr_assert_eq(compile(fd, 4, 0, UINT64_MAX - 8, 16, 1, &good, 1, err, sizeof err), -EBADMSG);
#ifdef __linux__
	/* a file that could shrink under the mapping (SIGBUS): not sealed */
	char path[] = "/tmp/aneshare-wire-XXXXXX";
	int plain = mkstemp(path);
	cr_assert_geq(plain, 0);
	unlink(path);
	cr_assert_eq(write(plain, blob, len), (ssize_t)len);
	cr_assert_eq(compile(fd, 5, 0, 0, len, 1, &plain, 1, err, sizeof err), -EBADMSG);
	cr_assert(strstr(err, "not sealed"), "%s", err);
	close(plain);
	/* a memfd sealed against shrinking only: it could still be written */
	int half = -1;
	cr_assert_eq(anes_memfd_create("half", len, &half), 0);
	cr_assert_eq(compile(fd, 6, 0, 0, len, 1, &half, 1, err, sizeof err), -EBADMSG);
	close(half);
#endif
	/* right: compiled, and its runs compute y = W x */
	cr_assert_eq(compile(fd, 7, 0, 0, len, 1, &good, 1, err, sizeof err), 0, "%s", err);
	close(good);   /* the worker maps it; the fd is not needed */
	int sin = -1, sout = -1;
	cr_assert_eq(anes_memfd_create("in", IN * 2, &sin), 0);
	cr_assert_eq(anes_memfd_create("out", OUT * 2, &sout), 0);
	uint16_t x[IN];
	for (int i = 0; i < IN; i++)
		x[i] = anes_f32_to_f16_soft((float)(i % 7) / 4.0f - 0.5f);
	cr_assert_eq(pwrite(sin, x, sizeof x, 0), (ssize_t)sizeof x);
	uint64_t sz = IN * 2;
	struct iovec v = { &sz, 8 };
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_SURFACE_ADD, 100, &v, 1, sin), 0);
	sz = OUT * 2;
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_SURFACE_ADD, 101, &v, 1, sout), 0);
	uint64_t body[2 + 4] = { 7, 0, 100, 0, 101, 0 };
	uint32_t fn_n[2] = { 0, 2 };
	memcpy(&body[1], fn_n, 8);
	struct iovec rv = { body, sizeof body };
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_RUN, 8, &rv, 1, -1), 0);
	anes_wmsg_hdr h;
	void *payload = NULL;
	int mfd = -1;
	cr_assert_eq(anes_wmsg_recv(fd, &h, &payload, &mfd), 0);
	cr_assert_eq(h.type, ANES_WM_RAN);
	int32_t rc;
	memcpy(&rc, payload, 4);
	cr_assert_eq(rc, 0);
	free(payload);
	check_wx(sout, x);
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_PROGRAM_FREE, 7, NULL, 0, -1), 0);
	close(sin);
	close(sout);
	serve_end(&s, fd);
	free(blob);
	cr_assert_eq(fd_count(), base, "no fd left in the worker or here");
}

/* A RUN of payload body (len bytes) as message id: the RAN reply's rc and
 * its error text. */
static int run_rc(int fd, uint64_t id, const void *body, size_t len, char *err, size_t errlen)
{
	struct iovec rv = { (void *)body, len };
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_RUN, id, &rv, 1, -1), 0);
	int mfd;
	int rc = reply_of(fd, ANES_WM_RAN, id, &mfd, err, errlen);
	cr_assert_eq(mfd, -1);
	return rc;
}

/* RUN's payload: program, function and count, then (key, offset) per tensor. */
static size_t run_body(uint64_t *body, uint64_t prog, uint32_t fn, uint32_t n, const uint64_t *kv)
{
	body[0] = prog;
	uint32_t fn_n[2] = { fn, n };
	memcpy(&body[1], fn_n, 8);
	for (uint32_t i = 0; i < 2 * n; i++)
		body[2 + i] = kv[i];
	return (2 + 2 * (size_t)n) * 8;
}

static void add_surface(int fd, uint64_t key, uint64_t size, int sfd)
{
	struct iovec v = { &size, 8 };
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_SURFACE_ADD, key, &v, 1, sfd), 0);
}

/* Every run the worker cannot do is refused with the reason, in step, and
 * changes nothing: programs it has not, functions and tensor counts the
 * program has not, surfaces never shared (added without their memory, of
 * no size, dropped) or too small for the tensor at its offset, a payload
 * cut short; a compile whose payload is cut short.  Then the right run
 * still computes y = W x, and no fd is left. */
Test(worker_wire, the_worker_refuses_runs_it_cannot_do)
{
	int base = fd_count();
	served s;
	int fd;
	serve(&s, &fd);
	size_t len;
	uint8_t *blob = make_blob(&len);
	int wf = sealed("w", blob, len);
	char err[256];
	cr_assert_eq(compile(fd, 7, 0, 0, len, 1, &wf, 1, err, sizeof err), 0, "%s", err);
	close(wf);

	/* a compile whose payload ends inside its header */
	uint32_t ml = 100;
	struct iovec cv = { &ml, 4 };
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_COMPILE, 8, &cv, 1, -1), 0);
	anes_wmsg_hdr h;
	void *payload = NULL;
	int mfd = -1;
	cr_assert_eq(anes_wmsg_recv(fd, &h, &payload, &mfd), 0);
	cr_assert_eq(h.type, ANES_WM_COMPILED);
	int32_t crc;
	memcpy(&crc, payload, 4);
	free(payload);
	cr_assert_eq(crc, -EBADMSG);

	int sin = -1, sout = -1, small = -1;
	cr_assert_eq(anes_memfd_create("in", IN * 2, &sin), 0);
	cr_assert_eq(anes_memfd_create("out", OUT * 2, &sout), 0);
	cr_assert_eq(anes_memfd_create("small", 8, &small), 0);
	uint16_t x[IN];
	for (int i = 0; i < IN; i++)
		x[i] = anes_f32_to_f16_soft((float)(i % 5) / 4.0f - 0.5f);
	cr_assert_eq(pwrite(sin, x, sizeof x, 0), (ssize_t)sizeof x);
	add_surface(fd, 100, IN * 2, sin);
	add_surface(fd, 101, OUT * 2, small);   /* replaced below */
	add_surface(fd, 101, OUT * 2, sout);
	add_surface(fd, 102, 8, small);
	add_surface(fd, 103, 64, -1);            /* no memory: ignored */
	add_surface(fd, 104, 0, small);          /* no size: not mapped */
	uint32_t short_len = 4;                  /* a size field cut short: ignored */
	struct iovec sv = { &short_len, 4 };
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_SURFACE_ADD, 105, &sv, 1, small), 0);
	add_surface(fd, 106, 8, small);
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_SURFACE_DROP, 106, NULL, 0, -1), 0);
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_SURFACE_DROP, 999, NULL, 0, -1), 0);   /* never added */
	close(small);

	uint64_t body[16];
	struct {
		uint64_t prog;
		uint32_t fn, n;
		uint64_t kv[4];
		size_t cut;         /* bytes left off the end */
		int rc;
		const char *says;
	} cases[] = {
		{ 99, 0, 2, { 100, 0, 101, 0 }, 0, -EIO, "no program 99" },
		{ 7, 1, 2, { 100, 0, 101, 0 }, 0, -EBADMSG, "" },
		{ 7, 0, 1, { 100, 0 }, 0, -EBADMSG, "" },
		{ 7, 0, 2, { 100, 0, 103, 0 }, 0, -EIO, "surface key 103 was not shared" },
		{ 7, 0, 2, { 100, 0, 104, 0 }, 0, -EIO, "surface key 104 was not shared" },
		{ 7, 0, 2, { 100, 0, 105, 0 }, 0, -EIO, "surface key 105 was not shared" },
		{ 7, 0, 2, { 100, 0, 106, 0 }, 0, -EIO, "surface key 106 was not shared" },
		{ 7, 0, 2, { 100, 0, 102, 0 }, 0, -EBADMSG, "" },
		{ 7, 0, 2, { 100, 8, 101, 0 }, 0, -EBADMSG, "" },
		{ 7, 0, 2, { 100, UINT64_MAX, 101, 0 }, 0, -EBADMSG, "" },
		{ 7, 0, 2, { 100, 0, 101, 0 }, 12, -EBADMSG, "" },
		{ 7, 0, 2, { 100, 0, 101, 0 }, 4, -EBADMSG, "" },
		{ 7, 0, 2, { 100, 0, 101, 0 }, 36, -EBADMSG, "" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		size_t n = run_body(body, cases[i].prog, cases[i].fn, cases[i].n, cases[i].kv) - cases[i].cut;
		int rc = run_rc(fd, 20 + i, body, n, err, sizeof err);
		cr_assert_eq(rc, cases[i].rc, "case %zu: %d (%s)", i, rc, err);
		cr_assert(strstr(err, cases[i].says), "case %zu: '%s'", i, err);
	}
	/* still in step, nothing changed: the right run computes */
	size_t n = run_body(body, 7, 0, 2, (uint64_t[]){ 100, 0, 101, 0 });
	cr_assert_eq(run_rc(fd, 40, body, n, err, sizeof err), 0, "%s", err);
	check_wx(sout, x);
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_PROGRAM_FREE, 7, NULL, 0, -1), 0);
	cr_assert_eq(anes_wmsg_send(fd, ANES_WM_PROGRAM_FREE, 7, NULL, 0, -1), 0);   /* twice: nothing */
	n = run_body(body, 7, 0, 2, (uint64_t[]){ 100, 0, 101, 0 });
	cr_assert_eq(run_rc(fd, 41, body, n, err, sizeof err), -EIO, "a freed program is gone");
	close(sin);
	close(sout);
	serve_end(&s, fd);
	free(blob);
	cr_assert_eq(fd_count(), base, "no fd left in the worker or here");
}

/* A message of a type the worker does not know ends it (status 1): the
 * stream cannot be trusted any more. */
Test(worker_wire, an_unknown_message_ends_the_worker)
{
	int base = fd_count();
	served s;
	int fd;
	serve(&s, &fd);
	uint32_t v = 1;
	struct iovec iov = { &v, 4 };
	cr_assert_eq(anes_wmsg_send(fd, 250, 1, &iov, 1, -1), 0);
	pthread_join(s.t, NULL);
	cr_assert_eq(s.status, 1);
	close(fd);
	close(s.fd);
	s.b->ops->destroy(s.b);
	cr_assert_eq(fd_count(), base);
}

/* Which failed sends left the stream in step (nothing was written), and
 * which compile results count against a worker's budget. */
Test(worker_wire, send_failures_and_compile_results_are_classified)
{
	static const int unsent[] = { -ETOOMANYREFS, -EMFILE, -ENFILE, -ENOBUFS, -ENOMEM };
	for (size_t i = 0; i < sizeof unsent / sizeof unsent[0]; i++)
		cr_assert(anes_wmsg_unsent(unsent[i]), "%d", unsent[i]);
	cr_assert_not(anes_wmsg_unsent(-EPIPE), "part of it may have gone");
	cr_assert_not(anes_wmsg_unsent(-ECONNRESET));
	cr_assert_not(anes_wmsg_unsent(0));
	cr_assert_eq(anes_compile_counts(-EINVAL), ANES_COMPILE_NOT_COUNTED);
	cr_assert_eq(anes_compile_counts(-ENOTSUP), ANES_COMPILE_NOT_COUNTED);
	cr_assert_eq(anes_compile_counts(-EBADMSG), ANES_COMPILE_NOT_COUNTED);
	cr_assert_eq(anes_compile_counts(-EIO), ANES_COMPILE_SPENT);
	cr_assert_eq(anes_compile_counts(0), ANES_COMPILE_COUNTED);
	cr_assert_eq(anes_compile_counts(-ENOMEM), ANES_COMPILE_COUNTED);
}
