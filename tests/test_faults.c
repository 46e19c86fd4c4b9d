/* SPDX-License-Identifier: MIT */
/*
 * Faults (docs/reliability.md, "Faults"): clients that die at the worst
 * moments, a run that fails, and SIGTERM with work in flight.  Each test
 * proves the daemon came back to where it was: status shows no surfaces or
 * programs and the daemon's fd count (/proc/PID/fd) is back at its baseline.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "anes_proto.h"
#include "aneshare.h"
#include "daemon_harness.h"

static h_daemon D;

static void teardown(void)
{
	h_daemon_kill(&D);
}

TestSuite(faults, .fini = teardown, .timeout = 60);

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- programs ------------------------------------------------------------------ */

typedef struct slow {
	aneshare_program *p;
	aneshare_surface *x, *y, *z;
} slow;

/* Non-asserting (children use it too): 0 or a negative code. */
static int slow_setup(aneshare_conn *c, unsigned n, slow *ret)
{
	char *mil = h_square_mm_mil(n, "main");
	int r = aneshare_program_compile(c, mil, NULL, 0, &ret->p, NULL);
	free(mil);
	if (r < 0)
		return r;
	size_t bytes = (size_t)n * n * 2;
	if ((r = aneshare_surface_create(c, bytes, &ret->x)) < 0 ||
	    (r = aneshare_surface_create(c, bytes, &ret->y)) < 0 ||
	    (r = aneshare_surface_create(c, bytes, &ret->z)) < 0)
		return r;
	/* Small values: the product stays finite in fp16. */
	uint16_t *x = aneshare_surface_data(ret->x), *y = aneshare_surface_data(ret->y);
	for (size_t i = 0; i < (size_t)n * n; i++) {
		float f = (float)((i * 7919) % 17) / 64.0f;
		aneshare_f32_to_f16(&x[i], &f, 1);
		aneshare_f32_to_f16(&y[i], &f, 1);
	}
	return 0;
}

static int slow_submit(slow *s, uint32_t *ret_ticket)
{
	aneshare_surface *in[2] = { s->x, s->y };
	return aneshare_run_submit(s->p, 0, in, 2, &s->z, 1, ret_ticket);
}

/* A size whose run takes some 20-40 ms here (bounded search). */
static unsigned slow_size(aneshare_conn *c, int64_t *ret_ms)
{
	unsigned n = 128;
	for (;;) {
		slow s;
		cr_assert_eq(slow_setup(c, n, &s), 0, "slow program: %s", aneshare_last_error(c));
		/* The fastest of 4: a load spike during one must not pass for
		 * the size's run time (the runs would then all finish at once). */
		int64_t dt = INT64_MAX;
		for (int i = 0; i < 4; i++) {
			int64_t t0 = now_ms();
			uint32_t t;
			cr_assert_eq(slow_submit(&s, &t), 0);
			cr_assert_eq(aneshare_wait(c, t), 0);
			int64_t d = now_ms() - t0;
			dt = d < dt ? d : dt;
		}
		aneshare_surface_release(s.x);
		aneshare_surface_release(s.y);
		aneshare_surface_release(s.z);
		aneshare_program_release(s.p);
		if (dt >= 20 || n >= 1024) {
			*ret_ms = dt > 0 ? dt : 1;
			return n;
		}
		n *= 2;
	}
}

/* ---- the checked matmul ----------------------------------------------------------- */

typedef struct mm_client {
	aneshare_conn *c;
	aneshare_program *p;
	aneshare_surface *in, *out;
	h_mm mm;
	uint64_t seed;
} mm_client;

static void mm_init(mm_client *m, const char *name)
{
	m->c = h_connect(&D, name);
	char *mil = h_read_source("examples/dynamic_matmul.mil");
	int r = aneshare_program_compile(m->c, mil, NULL, 0, &m->p, NULL);
	free(mil);
	cr_assert_eq(r, 0, "%s", aneshare_last_error(m->c));
	cr_assert(h_mm_from_program(m->p, &m->mm));
	cr_assert_eq(aneshare_surface_create(m->c, m->mm.in_bytes, &m->in), 0);
	cr_assert_eq(aneshare_surface_create(m->c, m->mm.out_bytes, &m->out), 0);
}

static void mm_check(mm_client *m)
{
	h_mm_fill(&m->mm, aneshare_surface_data(m->in), ++m->seed);
	memset(aneshare_surface_data(m->out), 0xff, m->mm.out_bytes);
	int r = aneshare_run(m->p, 0, &m->in, 1, &m->out, 1);
	cr_assert_eq(r, 0, "run: %s: %s", aneshare_strerror(r), aneshare_last_error(m->c));
	double err = h_mm_error(&m->mm, aneshare_surface_data(m->in), aneshare_surface_data(m->out));
	cr_assert_leq(err, H_MM_TOL, "relative error %g", err);
}

static void mm_fini(mm_client *m)
{
	aneshare_surface_release(m->in);
	aneshare_surface_release(m->out);
	aneshare_program_release(m->p);
	aneshare_disconnect(m->c);
}

/* ---- the baseline ----------------------------------------------------------------- */


/* ---- children ---------------------------------------------------------------------- */


static void kill_child(pid_t pid)
{
	cr_assert_eq(kill(pid, SIGKILL), 0);
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "status 0x%x", st);
}

static void ready(int fd)
{
	char b = 1;
	(void)!write(fd, &b, 1);
}

static void hang(void)
{
	for (;;)
		pause();
}

typedef struct slow_args {
	const char *sock;
	unsigned n;       /* matrix size */
	unsigned runs;    /* to leave in flight */
	bool compile;     /* also leave a compile in flight */
} slow_args;

/* Compile, create surfaces, pipeline runs (and a compile) without waiting,
 * say ready, and wait to be killed. */
static int child_in_flight(void *arg, int ready_fd)
{
	slow_args *a = arg;
	aneshare_conn *c;
	if (aneshare_connect(a->sock, "doomed", &c) < 0)
		return 2;
	slow s;
	if (slow_setup(c, a->n, &s) < 0)
		return 3;
	uint32_t t;
	for (unsigned i = 0; i < a->runs; i++)
		if (slow_submit(&s, &t) < 0)
			return 4;
	if (a->compile) {
		/* A new program whose compile is still running when we die: send
		 * the request by hand (the library would wait for the answer). */
		int fd = h_raw_connect(a->sock);
		if (fd < 0)
			return 5;
		/* hello without waiting, then compile. */
		h_raw_send_hello(fd, 1);
		char *mil = h_square_mm_mil(a->n, "other");
		h_raw_request_kstr(fd, 2, "program.compile", "mil", mil);
		free(mil);
	}
	ready(ready_fd);
	hang();
	return 0;
}

Test(faults, client_killed_mid_request)
{
	h_daemon_start(&D);
	int fds;
	aneshare_conn *obs = h_observe(&D, &fds);
	int64_t ms;
	unsigned n = slow_size(obs, &ms);
	h_wait_counts(obs, 0, 0);

	/* Runs queued on the workers, and a compile, when it dies. */
	slow_args a = { D.sock, n, 32, true };
	pid_t pid = h_spawn(child_in_flight, &a);
	aneshare_status *st = h_status(obs);
	cr_expect_geq(st->surfaces, 3);
	aneshare_status_free(st);
	kill_child(pid);
	h_back_to_baseline(&D, obs, fds);

	/* And everyone else is fine. */
	mm_client m;
	mm_init(&m, "after");
	mm_check(&m);
	mm_fini(&m);
	h_back_to_baseline(&D, obs, fds);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* ---- mid-frame ------------------------------------------------------------------------- */

typedef struct half_args {
	const char *sock;
	bool with_fd;
} half_args;

/* Write half of a frame (with a memfd attached to its first byte when
 * with_fd), say ready, wait to be killed. */
static int child_half_frame(void *arg, int ready_fd)
{
	half_args *a = arg;
	int fd = h_raw_connect(a->sock);
	if (fd < 0)
		return 2;
	/* hello, answered, so that the half frame is a real request's. */
	if (h_raw_send_hello(fd, 1) < 0 || h_raw_response(fd, 1, 5000) != 0)
		return 3;

	uint8_t frame[ANES_FRAME_HEADER_SIZE + 1000];
	memset(frame, 0x90, sizeof frame);   /* fixarray(0)s: never a valid payload anyway */
	anes_frame_header_write(frame, 1000, a->with_fd ? 1 : 0);
	int mfd = -1;
	if (a->with_fd) {
		if (anes_memfd_create("half", 4096, &mfd) < 0)
			return 4;
	}
	if (h_raw_send(fd, frame, ANES_FRAME_HEADER_SIZE + 500, &mfd, a->with_fd ? 1 : 0) < 0)
		return 5;
	if (mfd >= 0)
		close(mfd);
	ready(ready_fd);
	hang();
	return 0;
}

Test(faults, client_killed_mid_frame)
{
	h_daemon_start(&D);
	int fds;
	aneshare_conn *obs = h_observe(&D, &fds);
	for (int with_fd = 0; with_fd <= 1; with_fd++) {
		half_args a = { D.sock, with_fd };
		pid_t pid = h_spawn(child_half_frame, &a);
		/* A half frame stalls nobody: the daemon answers meanwhile. */
		h_wait_clients(obs, 2);
		mm_client m;
		mm_init(&m, "meanwhile");
		mm_check(&m);
		mm_fini(&m);
		kill_child(pid);
		h_back_to_baseline(&D, obs, fds);
	}
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* ---- surfaces in use ------------------------------------------------------------------ */

Test(faults, client_killed_holding_surfaces_in_use)
{
	h_daemon_start(&D);
	int fds;
	aneshare_conn *obs = h_observe(&D, &fds);
	int64_t ms;
	unsigned n = slow_size(obs, &ms);
	h_wait_counts(obs, 0, 0);

	/* The child's surfaces are the inputs and outputs of its queued runs;
	 * meanwhile another client keeps running on its own surfaces. */
	slow_args a = { D.sock, n, 48, false };
	pid_t pid = h_spawn(child_in_flight, &a);
	mm_client m;
	mm_init(&m, "bystander");
	kill_child(pid);
	/* The runs that still hold the dead client's surfaces finish (or are
	 * dropped); until then its surfaces stay mapped in the daemon. */
	aneshare_status *st = h_status(obs);
	uint64_t runs_before = st->runs;
	aneshare_status_free(st);
	for (int i = 0; i < 10; i++)
		mm_check(&m);
	mm_fini(&m);
	h_back_to_baseline(&D, obs, fds);
	st = h_status(obs);
	cr_expect_geq(st->runs, runs_before + 10);
	aneshare_status_free(st);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* ---- disconnect before the response ------------------------------------------------------ */

Test(faults, disconnect_before_response)
{
	h_daemon_start(&D);
	int fds;
	aneshare_conn *obs = h_observe(&D, &fds);
	int64_t ms;
	unsigned n = slow_size(obs, &ms);

	/* Runs: submitted, then the connection is closed with them in flight. */
	aneshare_conn *c = h_connect(&D, "leaver");
	slow s;
	cr_assert_eq(slow_setup(c, n, &s), 0);
	uint32_t t;
	for (int i = 0; i < 16; i++)
		cr_assert_eq(slow_submit(&s, &t), 0);
	aneshare_disconnect(c);
	h_back_to_baseline(&D, obs, fds);

	/* A compile and a status, each sent raw and closed at once. */
	static const char *const methods[] = { "program.compile", "status" };
	for (int i = 0; i < 2; i++) {
		int fd = h_raw_connect(D.sock);
		cr_assert_geq(fd, 0);
		h_raw_hello(fd);
		char *mil = h_square_mm_mil(n, "fresh");
		cr_assert_eq(h_raw_request_kstr(fd, 2, methods[i], i == 0 ? "mil" : NULL, mil), 0);
		free(mil);
		close(fd);
		h_back_to_baseline(&D, obs, fds);
	}
	mm_client m;
	mm_init(&m, "after");
	mm_check(&m);
	mm_fini(&m);
	h_back_to_baseline(&D, obs, fds);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* ---- a run that fails --------------------------------------------------------------------- */

Test(faults, failing_run_errs_only_its_client)
{
	/* The daemon's test hook (--fault-inject run_fail=NAME) makes every run
	 * of a function named fail_me fail, whatever the backend; the real case
	 * the CPU backend has is gather_out_of_range_fails_only_that_run. */
	const char *args[] = { "--fault-inject", "run_fail=fail_me", NULL };
	h_daemon_start_args(&D, args);
	int fds;
	aneshare_conn *obs = h_observe(&D, &fds);

	aneshare_conn *bad = h_connect(&D, "failing");
	char *mil = h_square_mm_mil(16, "fail_me");
	aneshare_program *p;
	cr_assert_eq(aneshare_program_compile(bad, mil, NULL, 0, &p, NULL), 0);
	free(mil);
	aneshare_surface *x, *y, *z;
	cr_assert_eq(aneshare_surface_create(bad, 512, &x), 0);
	cr_assert_eq(aneshare_surface_create(bad, 512, &y), 0);
	cr_assert_eq(aneshare_surface_create(bad, 512, &z), 0);
	aneshare_surface *in[2] = { x, y };

	mm_client good;
	mm_init(&good, "good");
	/* Interleaved: failures for one, right answers for the other. */
	for (int i = 0; i < 5; i++) {
		uint32_t t[4];
		for (int k = 0; k < 4; k++)
			cr_assert_eq(aneshare_run_submit(p, 0, in, 2, &z, 1, &t[k]), 0);
		mm_check(&good);
		for (int k = 0; k < 4; k++) {
			int r = aneshare_wait(bad, t[k]);
			cr_assert_eq(r, -ANESHARE_ERUN_FAILED, "%s", aneshare_strerror(r));
			cr_expect(strstr(aneshare_last_error(bad), "injected"), "%s", aneshare_last_error(bad));
		}
	}
	/* The failing client's connection is still good for anything else. */
	aneshare_status_free(h_status(bad));
	aneshare_surface_release(x);
	aneshare_surface_release(y);
	aneshare_surface_release(z);
	aneshare_program_release(p);
	aneshare_disconnect(bad);
	mm_fini(&good);
	h_back_to_baseline(&D, obs, fds);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* The real case: gather checks its run-time indices. */
static const char gather_mil[] =
	"program(1.3)\n{\n"
	"    func main<ios18>(tensor<fp16, [8, 4]> x, tensor<int32, [2]> idx) {\n"
	"        tensor<fp16, [2, 4]> y = gather(x = x, indices = idx, axis = int32(0))[name = string(\"y\")];\n"
	"    } -> (y);\n}\n";

Test(faults, gather_out_of_range_fails_only_that_run)
{
	h_daemon_start(&D);
	int fds;
	aneshare_conn *obs = h_observe(&D, &fds);
	aneshare_conn *c = h_connect(&D, "gatherer");
	aneshare_program *p;
	int r = aneshare_program_compile(c, gather_mil, NULL, 0, &p, NULL);
	cr_assert_eq(r, 0, "gather: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	aneshare_surface *x, *idx, *y;
	cr_assert_eq(aneshare_surface_create(c, 8 * 4 * 2, &x), 0);
	cr_assert_eq(aneshare_surface_create(c, 2 * 4, &idx), 0);
	cr_assert_eq(aneshare_surface_create(c, 2 * 4 * 2, &y), 0);
	uint16_t *xv = aneshare_surface_data(x);
	for (int i = 0; i < 32; i++) {
		float f = (float)i;
		aneshare_f32_to_f16(&xv[i], &f, 1);
	}
	int32_t *iv = aneshare_surface_data(idx);
	aneshare_surface *in[2] = { x, idx };
	mm_client good;
	mm_init(&good, "good");
	for (int round = 0; round < 3; round++) {
		/* In range: rows 5 and 2. */
		iv[0] = 5;
		iv[1] = 2;
		cr_assert_eq(aneshare_run(p, 0, in, 2, &y, 1), 0, "%s", aneshare_last_error(c));
		float out[8];
		aneshare_f16_to_f32(out, aneshare_surface_data(y), 8);
		cr_expect_eq(out[0], 20.0f);
		cr_expect_eq(out[4], 8.0f);
		/* Out of range: that run fails, with the op's message. */
		iv[1] = 99;
		r = aneshare_run(p, 0, in, 2, &y, 1);
		cr_assert_eq(r, -ANESHARE_ERUN_FAILED, "%s", aneshare_strerror(r));
		cr_expect(strstr(aneshare_last_error(c), "out of range"), "%s", aneshare_last_error(c));
		mm_check(&good);
	}
	mm_fini(&good);
	aneshare_surface_release(x);
	aneshare_surface_release(idx);
	aneshare_surface_release(y);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	h_back_to_baseline(&D, obs, fds);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* ---- SIGTERM -------------------------------------------------------------------------------- */

#define E_SHUTTING_DOWN (-(ANESHARE_EBASE + 17))

/* Submit runs on a fresh connection, SIGTERM (once or twice), and collect
 * the answers: every run either finished or failed with shutting_down. */
static void sigterm_case(const char *const *args, unsigned work_ms_wanted, int signals,
                         unsigned *ret_ok, unsigned *ret_failed)
{
	h_daemon_start_args(&D, args);
	aneshare_conn *c = h_connect(&D, "busy");
	int64_t ms;
	unsigned n = slow_size(c, &ms);
	slow s;
	cr_assert_eq(slow_setup(c, n, &s), 0);
	unsigned max = aneshare_server(c)->max_inflight;
	unsigned runs = (unsigned)(work_ms_wanted / (unsigned)ms) * 2;   /* two workers */
	if (runs > max)
		runs = max;
	if (runs < 8)
		runs = 8;
	uint32_t *t = calloc(runs, sizeof *t);
	for (unsigned i = 0; i < runs; i++)
		cr_assert_eq(slow_submit(&s, &t[i]), 0);
	/* The daemon reads a connection's requests in order, so once this is
	 * answered every run above has been read: none can be lost unread when
	 * the daemon closes the connection (which protocol.md allows). */
	aneshare_status *seen = NULL;
	cr_assert_eq(aneshare_get_status(c, &seen), 0);
	aneshare_status_free(seen);

	cr_assert_eq(kill(D.pid, SIGTERM), 0);
	/* Once the daemon acts on it, the socket is gone: nobody new gets in. */
	int64_t deadline = now_ms() + 10000 * h_slow();
	aneshare_conn *late = NULL;
	while (aneshare_connect(D.sock, "late", &late) == 0) {
		aneshare_disconnect(late);
		late = NULL;
		cr_assert(now_ms() < deadline, "the daemon still accepts after SIGTERM");
	}
	/* (Only now: two signals sent at once can merge into one.) */
	if (signals > 1)
		cr_assert_eq(kill(D.pid, SIGTERM), 0);

	unsigned ok = 0, failed = 0;
	for (unsigned i = 0; i < runs; i++) {
		int r = aneshare_wait(c, t[i]);
		if (r == 0) {
			ok++;
		} else {
			cr_assert_eq(r, E_SHUTTING_DOWN, "run %u: %s (%s)", i, aneshare_strerror(r),
			             aneshare_last_error(c));
			cr_expect(strstr(aneshare_last_error(c), "shutting down"), "%s", aneshare_last_error(c));
			failed++;
		}
	}
	free(t);
	h_daemon_wait(&D);   /* exit status 0 */
	aneshare_disconnect(c);
	*ret_ok = ok;
	*ret_failed = failed;
}

Test(faults, sigterm_finishes_runs_in_flight)
{
	unsigned ok, failed;
	sigterm_case(NULL, 1500, 1, &ok, &failed);
	cr_expect_eq(failed, 0, "%u runs failed although they had 10 s to finish", failed);
	cr_expect_gt(ok, 0);
}

Test(faults, sigterm_timeout_fails_the_rest)
{
	/* More work queued than the 1 s grace period allows. */
	const char *args[] = { "--shutdown-timeout", "1", "--max-inflight", "512", NULL };
	unsigned ok, failed;
	sigterm_case(args, 6000, 1, &ok, &failed);
	cr_expect_gt(failed, 0, "nothing failed (%u finished)", ok);
	cr_expect_gt(ok, 0, "nothing finished in the grace period");
}

Test(faults, second_sigterm_stops_at_once)
{
	const char *args[] = { "--max-inflight", "512", NULL };
	unsigned ok, failed;
	int64_t t0 = now_ms();
	sigterm_case(args, 6000, 2, &ok, &failed);
	cr_expect_gt(failed, 0, "nothing failed (%u finished)", ok);
	cr_expect_lt(now_ms() - t0, 6000 * h_slow(), "the second SIGTERM did not cut the wait short");
}

Test(faults, sigterm_idle_and_new_requests)
{
	/* An idle client is disconnected at once; a client with runs in flight
	 * gets shutting_down for what it sends after the signal. */
	h_daemon_start(&D);
	aneshare_conn *idle = h_connect(&D, "idle");
	aneshare_conn *c = h_connect(&D, "busy");
	int64_t ms;
	unsigned n = slow_size(c, &ms);
	slow s;
	cr_assert_eq(slow_setup(c, n, &s), 0);
	unsigned runs = (unsigned)(3000 / ms) * 2;
	unsigned max = aneshare_server(c)->max_inflight;
	runs = runs > max ? max : runs < 8 ? 8 : runs;
	uint32_t *t = calloc(runs, sizeof *t);
	for (unsigned i = 0; i < runs; i++)
		cr_assert_eq(slow_submit(&s, &t[i]), 0);
	cr_assert_eq(kill(D.pid, SIGTERM), 0);
	int64_t deadline = now_ms() + 10000 * h_slow();
	aneshare_conn *late = NULL;
	while (aneshare_connect(D.sock, "late", &late) == 0) {
		aneshare_disconnect(late);
		cr_assert(now_ms() < deadline);
	}
	aneshare_status *st = NULL;
	int r = aneshare_get_status(c, &st);
	cr_expect(r == E_SHUTTING_DOWN, "status after SIGTERM: %s", aneshare_strerror(r));
	if (r == 0)
		aneshare_status_free(st);
	r = aneshare_get_status(idle, &st);
	cr_expect(r < 0, "the idle client was not disconnected");
	if (r == 0)
		aneshare_status_free(st);
	for (unsigned i = 0; i < runs; i++) {
		r = aneshare_wait(c, t[i]);
		cr_expect(r == 0 || r == E_SHUTTING_DOWN, "%s", aneshare_strerror(r));
	}
	free(t);
	h_daemon_wait(&D);
	aneshare_disconnect(c);
	aneshare_disconnect(idle);
}

/* ---- pipelined runs while other clients vanish ----------------------------------------- */

/* Workers send run replies themselves when nothing is queued before them
 * (docs/performance.md): many short runs in flight from several clients,
 * while other clients die or hang up with their replies on the way.  Every
 * surviving client gets every answer, and the daemon ends at its baseline. */

#define STRESS_ROUNDS 400
#define STRESS_DEPTH 8

static int child_pipeliner(void *arg, int ready_fd)
{
	const char *sock = arg;
	aneshare_conn *c;
	if (aneshare_connect(sock, "pipeliner", &c) < 0)
		return 2;
	slow s;
	if (slow_setup(c, 16, &s) < 0)
		return 3;
	ready(ready_fd);
	close(ready_fd);
	for (unsigned round = 0; round < STRESS_ROUNDS; round++) {
		uint32_t t[STRESS_DEPTH];
		for (unsigned i = 0; i < STRESS_DEPTH; i++)
			if (slow_submit(&s, &t[i]) < 0)
				return 4;
		/* in a varying order */
		for (unsigned i = 0; i < STRESS_DEPTH; i++)
			if (aneshare_wait(c, t[(i * 3 + round) % STRESS_DEPTH]) != 0)
				return 5;
	}
	aneshare_surface_release(s.x);
	aneshare_surface_release(s.y);
	aneshare_surface_release(s.z);
	aneshare_program_release(s.p);
	aneshare_disconnect(c);
	return 0;
}

/* Pipeline runs and leave: by _exit with the replies unread, or killed. */
static int child_leaver(void *arg, int ready_fd)
{
	const char *sock = arg;
	aneshare_conn *c;
	if (aneshare_connect(sock, "leaver", &c) < 0)
		return 2;
	slow s;
	if (slow_setup(c, 16, &s) < 0)
		return 3;
	uint32_t t;
	for (unsigned i = 0; i < 24; i++)
		if (slow_submit(&s, &t) < 0)
			return 4;
	ready(ready_fd);
	_exit(0);
}

Test(faults, pipelined_runs_while_clients_vanish)
{
	h_daemon_start(&D);
	int fds;
	aneshare_conn *obs = h_observe(&D, &fds);

	enum { N_PIPE = 4, N_LEAVE = 40 };
	pid_t pipe_pid[N_PIPE];
	for (int i = 0; i < N_PIPE; i++)
		pipe_pid[i] = h_spawn(child_pipeliner, D.sock);
	for (int i = 0; i < N_LEAVE; i++) {
		pid_t pid = h_spawn(child_leaver, D.sock);
		int st;
		if (i % 2) {
			/* gone already or going: kill it if it is still there */
			(void)kill(pid, SIGKILL);
			cr_assert_eq(waitpid(pid, &st, 0), pid);
		} else {
			cr_assert_eq(waitpid(pid, &st, 0), pid);
			cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "leaver status 0x%x", st);
		}
	}
	for (int i = 0; i < N_PIPE; i++) {
		int st;
		cr_assert_eq(waitpid(pipe_pid[i], &st, 0), pipe_pid[i]);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "pipeliner %d status 0x%x", i, st);
	}
	h_back_to_baseline(&D, obs, fds);
	aneshare_status *st = h_status(obs);
	cr_expect_geq(st->runs, (uint64_t)N_PIPE * STRESS_ROUNDS * STRESS_DEPTH);
	aneshare_status_free(st);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}
