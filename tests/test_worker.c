/* SPDX-License-Identifier: MIT */
/*
 * The device worker (docs/worker.md) with the CPU backend: results through
 * the worker, a worker killed under pipelined runs from several client
 * processes, the compile-budget restart, a worker that cannot start, and
 * cleanup (the daemon's fds back to baseline, no zombie left behind).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>

#include "anes_proto.h"
#include "aneshare.h"
#include "daemon_harness.h"
#include "../daemon/backend/devworker.h"
#include "anes_clock.h"

static h_daemon D;

static void teardown(void)
{
	h_daemon_kill(&D);
}

TestSuite(worker, .fini = teardown, .timeout = 60);

/* ---- the worker map of status ------------------------------------------------------ */

typedef struct wstat {
	bool present;
	int64_t pid;
	uint64_t restarts, compiles, budget, recompiles, daemon_compiles, restoring;
	uint64_t workers, programs, watchdog_kills, max_workers, run_floor, compile_floor;
	char backend[16];
} wstat;

static void status_cb(const msgpack_object *res, void *ud)
{
	wstat *w = ud;
	w->daemon_compiles = h_map_u64(res, "compiles");
	for (uint32_t i = 0; i < res->via.map.size; i++) {
		const msgpack_object_kv *kv = &res->via.map.ptr[i];
		if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size != 6 ||
		    memcmp(kv->key.via.str.ptr, "worker", 6) || kv->val.type != MSGPACK_OBJECT_MAP)
			continue;
		const msgpack_object *m = &kv->val;
		w->present = true;
		w->pid = (int64_t)h_map_u64(m, "pid");
		w->restarts = h_map_u64(m, "restarts");
		w->compiles = h_map_u64(m, "compiles");
		w->budget = h_map_u64(m, "compile_budget");
		w->recompiles = h_map_u64(m, "recompiles");
		w->restoring = h_map_u64(m, "restoring");
		w->workers = h_map_u64(m, "workers");
		w->programs = h_map_u64(m, "programs");
		w->watchdog_kills = h_map_u64(m, "watchdog_kills");
		w->max_workers = h_map_u64(m, "max_workers");
		w->run_floor = h_map_u64(m, "run_deadline_floor_ms");
		w->compile_floor = h_map_u64(m, "compile_deadline_floor_ms");
		for (uint32_t j = 0; j < m->via.map.size; j++) {
			const msgpack_object_kv *b = &m->via.map.ptr[j];
			if (b->key.type == MSGPACK_OBJECT_STR && b->key.via.str.size == 7 &&
			    !memcmp(b->key.via.str.ptr, "backend", 7) && b->val.type == MSGPACK_OBJECT_STR)
				snprintf(w->backend, sizeof w->backend, "%.*s", (int)b->val.via.str.size,
				         b->val.via.str.ptr);
		}
	}
}

static wstat worker_status_now(void)
{
	wstat w = { 0 };
	int fd = h_raw_open(D.sock);
	static const uint8_t empty_map = 0x80;
	cr_assert_eq(h_raw_request(fd, 9, "status", &empty_map, 1, NULL, 0), 0);
	cr_assert_eq(h_raw_response_cb(fd, 9, 5000, status_cb, &w), 0);
	close(fd);
	return w;
}

/* The status once no program waits to be compiled again in a new worker
 * (a new worker serves at once and compiles them meanwhile; docs/worker.md). */
static wstat worker_status(void)
{
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	for (;;) {
		wstat w = worker_status_now();
		if (w.restoring == 0)
			return w;
		cr_assert(tu_now_ms() < deadline, "%llu programs still to compile again",
		          (unsigned long long)w.restoring);
		tu_pause_ms(10);
	}
}

static uint64_t map_workers(void)
{
	return worker_status().workers;
}

/* Poll status (bounded) until a worker with at least restarts restarts and
 * a pid other than not_pid runs. */
static wstat wait_worker(uint64_t restarts, int64_t not_pid)
{
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	for (;;) {
		wstat w = worker_status();
		cr_assert(w.present, "status has no worker map");
		if (w.restarts >= restarts && w.pid > 0 && w.pid != not_pid)
			return w;
		cr_assert(tu_now_ms() < deadline, "no new worker (restarts %llu, pid %lld)",
		          (unsigned long long)w.restarts, (long long)w.pid);
		tu_pause_ms(10);
	}
}

/* Exited and reaped: a zombie can still be signalled. */
static bool process_gone(int64_t pid)
{
	return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

static void wait_gone(int64_t pid)
{
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	while (!process_gone(pid)) {
		cr_assert(tu_now_ms() < deadline, "process %lld is still there (or a zombie)", (long long)pid);
		tu_pause_ms(10);
	}
}

/* ---- programs -------------------------------------------------------------------------- */

#define SQ 8

typedef struct sq {
	aneshare_program *p;
	aneshare_surface *x, *y, *z;
} sq;

static void sq_compile(aneshare_conn *c, sq *s, int k)
{
	char name[16];
	snprintf(name, sizeof name, "f%d", k);
	char *mil = h_square_mm_mil(SQ, name);
	int r = aneshare_program_compile(c, mil, NULL, 0, &s->p, NULL);
	free(mil);
	cr_assert_eq(r, 0, "compile f%d: %s", k, aneshare_last_error(c));
	cr_assert_eq(aneshare_surface_create(c, SQ * SQ * 2, &s->x), 0);
	cr_assert_eq(aneshare_surface_create(c, SQ * SQ * 2, &s->y), 0);
	cr_assert_eq(aneshare_surface_create(c, SQ * SQ * 2, &s->z), 0);
}

static void sq_release(sq *s)
{
	aneshare_program_release(s->p);
	aneshare_surface_release(s->x);
	aneshare_surface_release(s->y);
	aneshare_surface_release(s->z);
	*s = (sq){ 0 };
}

static void sq_inputs(int seed, float *xf, float *yf)
{
	for (int i = 0; i < SQ * SQ; i++) {
		xf[i] = (float)((i * 7 + seed) % 13) / 16.0f - 0.375f;
		yf[i] = (float)((i * 5 + 3 * seed) % 11) / 16.0f - 0.25f;
	}
}

/* Inputs from seed, NaNs in z. */
static void sq_fill(sq *s, int seed)
{
	float xf[SQ * SQ], yf[SQ * SQ];
	sq_inputs(seed, xf, yf);
	aneshare_f32_to_f16(aneshare_surface_data(s->x), xf, SQ * SQ);
	aneshare_f32_to_f16(aneshare_surface_data(s->y), yf, SQ * SQ);
	memset(aneshare_surface_data(s->z), 0xff, SQ * SQ * 2);
}

/* z against an fp32 reference for the inputs from seed. */
static void sq_verify(sq *s, int seed)
{
	float xf[SQ * SQ], yf[SQ * SQ], zf[SQ * SQ];
	sq_inputs(seed, xf, yf);
	aneshare_f16_to_f32(zf, aneshare_surface_data(s->z), SQ * SQ);
	for (int i = 0; i < SQ; i++)
		for (int j = 0; j < SQ; j++) {
			float ref = 0;
			for (int k = 0; k < SQ; k++)
				ref += xf[i * SQ + k] * yf[k * SQ + j];
			cr_assert(fabsf(zf[i * SQ + j] - ref) < 1e-2f, "z[%d][%d] = %g, want %g", i, j,
			          zf[i * SQ + j], ref);
		}
}

/* Run with inputs from seed and check z against an fp32 reference. */
static void sq_check(aneshare_conn *c, sq *s, int seed)
{
	sq_fill(s, seed);
	aneshare_surface *in[2] = { s->x, s->y };
	int r = aneshare_run(s->p, 0, in, 2, &s->z, 1);
	cr_assert_eq(r, 0, "run: %s", aneshare_last_error(c));
	sq_verify(s, seed);
}

static void start_worker_daemon(const char *budget)
{
	const char *args[] = { "--backend", "cpu", "--worker", "--compile-budget", budget, NULL };
	h_daemon_start_args(&D, args);
}

/* One device worker at a time: every budget restart replaces it. */
static void start_one_worker_daemon(const char *budget)
{
	const char *args[] = { "--backend", "cpu", "--worker", "--compile-budget", budget,
		               "--max-device-workers", "1", NULL };
	h_daemon_start_args(&D, args);
}

/* ---- results through the worker ------------------------------------------------------ */

Test(worker, cpu_in_worker_results_and_cleanup)
{
	start_worker_daemon("0");
	aneshare_conn *c = h_connect(&D, "worker-basic");
	wstat w = worker_status();
	cr_assert(w.present);
	cr_assert_gt(w.pid, 0);
	cr_assert_neq(w.pid, (int64_t)D.pid);
	cr_assert_str_eq(w.backend, "cpu");
	cr_assert_eq(w.restarts, 0);
	cr_assert_eq(w.budget, 0);
	h_wait_clients(c, 1);   /* the status connection is gone */
	int base = h_daemon_fds(&D);

	/* The matmul of the other suites, with its reference. */
	aneshare_program *p;
	char *mil = h_read_source("examples/dynamic_matmul.mil");
	cr_assert_eq(aneshare_program_compile(c, mil, NULL, 0, &p, NULL), 0, "%s", aneshare_last_error(c));
	free(mil);
	h_mm mm;
	cr_assert(h_mm_from_program(p, &mm));
	aneshare_surface *in, *out;
	cr_assert_eq(aneshare_surface_create(c, mm.in_bytes, &in), 0);
	cr_assert_eq(aneshare_surface_create(c, mm.out_bytes, &out), 0);
	for (uint64_t seed = 1; seed <= 5; seed++) {
		h_mm_fill(&mm, aneshare_surface_data(in), seed);
		cr_assert_eq(aneshare_run(p, 0, &in, 1, &out, 1), 0, "%s", aneshare_last_error(c));
		cr_assert_lt(h_mm_error(&mm, aneshare_surface_data(in), aneshare_surface_data(out)), H_MM_TOL);
	}
	sq s;
	sq_compile(c, &s, 0);
	sq_check(c, &s, 1);
	sq_check(c, &s, 2);
	cr_assert_eq(worker_status().compiles, 2);

	/* One fd per live surface while the worker is in use, none after. */
	h_wait_daemon_fds(&D, base + 5);   /* (after the status connection is torn down) */
	sq_release(&s);
	aneshare_surface_release(in);
	aneshare_surface_release(out);
	aneshare_program_release(p);
	h_wait_counts(c, 0, 0);
	h_wait_daemon_fds(&D, base);
	aneshare_disconnect(c);

	int64_t wpid = w.pid;
	h_daemon_stop(&D);
	wait_gone(wpid);
}

/* ---- a worker killed under load ------------------------------------------------------- */

#define PAIRS 4

typedef struct child_result {
	uint32_t ok, retryable, after_ok;
	uint64_t reconnects;
	char err[200];
} child_result;

/* A client process: pipelined runs (PAIRS tickets at a time) of the
 * matmul, each checked, until the parent's byte on ctl; then 5 more rounds
 * that must all succeed.  Reports on res_fd. */
static int client_main(int ctl, int res_fd, int ready_fd, int id)
{
	child_result res = { 0 };
	int rc = 1;
	aneshare_conn *c = NULL;
	aneshare_program *p = NULL;
	aneshare_surface *in[PAIRS], *out[PAIRS];
	h_mm mm;
	char name[32];
	snprintf(name, sizeof name, "worker-client-%d", id);
	if (aneshare_connect(D.sock, name, &c) < 0) {
		snprintf(res.err, sizeof res.err, "connect failed");
		goto out;
	}
	char path[512];
	snprintf(path, sizeof path, "%s/examples/dynamic_matmul.mil", ANES_SOURCE_DIR);
	FILE *f = fopen(path, "re");
	char mil[16384];
	size_t n = f ? fread(mil, 1, sizeof mil - 1, f) : 0;
	if (f)
		fclose(f);
	mil[n] = '\0';
	if (aneshare_program_compile(c, mil, NULL, 0, &p, NULL) < 0 || !h_mm_from_program(p, &mm)) {
		snprintf(res.err, sizeof res.err, "compile: %s", aneshare_last_error(c));
		goto out;
	}
	for (int i = 0; i < PAIRS; i++) {
		if (aneshare_surface_create(c, mm.in_bytes, &in[i]) < 0 ||
		    aneshare_surface_create(c, mm.out_bytes, &out[i]) < 0) {
			snprintf(res.err, sizeof res.err, "surface: %s", aneshare_last_error(c));
			goto out;
		}
		h_mm_fill(&mm, aneshare_surface_data(in[i]), (uint64_t)(id * 100 + i));
	}
	bool told = false, readied = false;
	int after = 0;
	int64_t deadline = tu_now_ms() + 30000;
	while (after < 5) {
		if (tu_now_ms() > deadline) {
			snprintf(res.err, sizeof res.err, "no word from the parent");
			goto out;
		}
		if (!told) {
			struct pollfd pf = { .fd = ctl, .events = POLLIN };
			if (poll(&pf, 1, 0) == 1)
				told = true;   /* every run from here on must succeed */
		}
		uint32_t t[PAIRS];
		for (int i = 0; i < PAIRS; i++) {
			memset(aneshare_surface_data(out[i]), 0, mm.out_bytes);
			if (aneshare_run_submit(p, 0, &in[i], 1, &out[i], 1, &t[i]) < 0) {
				snprintf(res.err, sizeof res.err, "submit: %s", aneshare_last_error(c));
				goto out;
			}
		}
		for (int i = 0; i < PAIRS; i++) {
			int r = aneshare_wait(c, t[i]);
			if (r == 0) {
				double e = h_mm_error(&mm, aneshare_surface_data(in[i]), aneshare_surface_data(out[i]));
				if (!(e < H_MM_TOL)) {
					snprintf(res.err, sizeof res.err, "wrong result (error %g)", e);
					goto out;
				}
				res.ok++;
				if (told)
					res.after_ok++;
			} else if (r == -ANESHARE_EWORKER_RESTARTED && !told && aneshare_error_is_retryable(r)) {
				res.retryable++;
			} else {
				snprintf(res.err, sizeof res.err, "run%s: %s (%s)", told ? " after the restart" : "",
				         aneshare_strerror(r), aneshare_last_error(c));
				goto out;
			}
		}
		if (!readied) {
			readied = true;
			if (write(ready_fd, "R", 1) != 1)
				goto out;
		}
		if (told)
			after++;
	}
	res.reconnects = aneshare_reconnect_count(c);
	rc = 0;
out:
	if (write(res_fd, &res, sizeof res) != (ssize_t)sizeof res)
		rc = 1;
	aneshare_disconnect(c);
	return rc;
}

Test(worker, kill_worker_under_pipelined_runs)
{
	enum { CLIENTS = 3 };
	start_worker_daemon("0");
	aneshare_conn *obs = h_connect(&D, "worker-observer");
	wstat w0 = worker_status();
	cr_assert_gt(w0.pid, 0);
	h_wait_clients(obs, 1);
	int base = h_daemon_fds(&D);

	pid_t kids[CLIENTS];
	int ctl[CLIENTS][2], res[CLIENTS][2], ready[2];
	cr_assert_eq(anes_pipe_cloexec(ready), 0);
	for (int k = 0; k < CLIENTS; k++) {
		cr_assert_eq(anes_pipe_cloexec(ctl[k]), 0);
		cr_assert_eq(anes_pipe_cloexec(res[k]), 0);
		kids[k] = fork();
		cr_assert_geq(kids[k], 0);
		if (kids[k] == 0) {
			tu_die_with_parent();
			_exit(client_main(ctl[k][0], res[k][1], ready[1], k));
		}
		close(ctl[k][0]);
		close(res[k][1]);
	}
	close(ready[1]);
	for (int k = 0; k < CLIENTS; k++) {
		char b;
		cr_assert_eq(read(ready[0], &b, 1), 1, "a client failed before the kill");
	}

	/* Mid-stream: every client has runs in flight all the time. */
	cr_assert_eq(kill((pid_t)w0.pid, SIGKILL), 0);
	wstat w1 = wait_worker(1, w0.pid);
	cr_assert_eq(w1.restarts, 1);
	wait_gone(w0.pid);
	for (int k = 0; k < CLIENTS; k++)
		cr_assert_eq(write(ctl[k][1], "K", 1), 1);

	uint32_t retryable = 0, ok = 0;
	for (int k = 0; k < CLIENTS; k++) {
		child_result r = { 0 };
		cr_assert_eq(read(res[k][0], &r, sizeof r), (ssize_t)sizeof r);
		int st;
		cr_assert_eq(waitpid(kids[k], &st, 0), kids[k]);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client %d: %s", k, r.err);
		cr_assert_eq(r.reconnects, 0, "client %d reconnected", k);
		cr_assert_geq(r.after_ok, 5 * PAIRS);
		retryable += r.retryable;
		ok += r.ok;
		close(ctl[k][1]);
		close(res[k][0]);
	}
	close(ready[0]);
	cr_log_info("kill: %u runs ok, %u worker_restarted", ok, retryable);

	wstat w2 = worker_status();
	cr_assert_eq(w2.pid, w1.pid);
	cr_assert_eq(w2.restarts, 1);
	h_wait_counts(obs, 0, 0);
	h_wait_clients(obs, 1);
	h_wait_daemon_fds(&D, base);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
	wait_gone(w1.pid);
}

/* ---- the compile budget ------------------------------------------------------------------ */

Test(worker, compile_budget_restart)
{
	start_one_worker_daemon("5");
	aneshare_conn *a = h_connect(&D, "budget-a"), *b = h_connect(&D, "budget-b");
	sq s[12] = { { 0 } };
	wstat w = worker_status();
	cr_assert_eq(w.budget, 5);
	int64_t pid0 = w.pid;

	for (int k = 0; k < 5; k++)
		sq_compile(a, &s[k], k);
	w = worker_status();
	cr_assert_eq(w.compiles, 5);
	cr_assert_eq(w.restarts, 0);
	for (int k = 0; k < 4; k++)
		sq_release(&s[k]);   /* keep f4 */

	/* The 6th compile: a new worker, f4 compiled again, then f5. */
	sq_compile(b, &s[5], 5);
	w = worker_status();
	cr_assert_eq(w.restarts, 1);
	cr_assert_neq(w.pid, pid0);
	cr_assert_eq(w.recompiles, 1);
	cr_assert_eq(w.compiles, 2);
	wait_gone(pid0);
	sq_check(a, &s[4], 1);
	sq_check(b, &s[5], 2);

	for (int k = 6; k < 9; k++)
		sq_compile(b, &s[k], k);     /* compiles: 5 */
	sq_release(&s[5]);
	sq_release(&s[6]);             /* alive: f4, f7, f8 */
	sq_compile(a, &s[9], 9);       /* restart 2: 3 recompiled + f9 */
	sq_compile(a, &s[10], 10);     /* 5 */
	w = worker_status();
	cr_assert_eq(w.restarts, 2);
	cr_assert_eq(w.recompiles, 1 + 3);
	cr_assert_eq(w.compiles, 5);
	sq_release(&s[9]);             /* alive: f4, f7, f8, f10 */
	sq_compile(b, &s[11], 11);     /* restart 3: 4 recompiled + f11 */
	w = worker_status();
	cr_assert_eq(w.restarts, 3);
	cr_assert_eq(w.recompiles, 1 + 3 + 4, "released programs were compiled again");
	cr_assert_eq(w.compiles, 5);
	cr_assert_eq(w.daemon_compiles, 12);

	int alive[] = { 4, 7, 8, 10, 11 };
	for (size_t i = 0; i < sizeof alive / sizeof alive[0]; i++)
		sq_check(alive[i] == 4 || alive[i] == 10 ? a : b, &s[alive[i]], (int)i + 3);
	cr_assert_eq(aneshare_reconnect_count(a), 0);
	cr_assert_eq(aneshare_reconnect_count(b), 0);
	for (size_t i = 0; i < sizeof alive / sizeof alive[0]; i++)
		sq_release(&s[alive[i]]);
	h_wait_counts(a, 0, 0);
	aneshare_disconnect(a);
	aneshare_disconnect(b);
	int64_t last = worker_status().pid;
	h_daemon_stop(&D);
	wait_gone(last);
}

/* Issue 14 item 1: with the programs in use below the budget, a compile
 * always finds room, however many compiles the worker made before. */
/* The reproducer as the issue gives it (default workers): the third
 * program goes to a second worker. */
Test(worker, budget_lockup_default_workers)
{
	start_worker_daemon("2");
	aneshare_conn *a = h_connect(&D, "lockup-a");
	sq s[4];
	for (int k = 0; k < 3; k++)
		sq_compile(a, &s[k], k);
	cr_assert_eq(worker_status().workers, 2);
	sq_release(&s[0]);
	sq_compile(a, &s[3], 3);
	for (int k = 1; k < 4; k++)
		sq_check(a, &s[k], k);
	for (int k = 1; k < 4; k++)
		sq_release(&s[k]);
	aneshare_disconnect(a);
	h_daemon_stop(&D);
}

Test(worker, budget_lockup_released_program_gives_room)
{
	start_one_worker_daemon("2");
	aneshare_conn *a = h_connect(&D, "lockup-a"), *b = h_connect(&D, "lockup-b");
	sq s[6] = { { 0 } };
	sq_compile(a, &s[0], 0);
	sq_compile(a, &s[1], 1);

	/* A third program: the two in use fill one worker's budget. */
	char *mil = h_square_mm_mil(SQ, "f2");
	int r = aneshare_program_compile(a, mil, NULL, 0, &s[2].p, NULL);
	free(mil);
	cr_assert(r == 0 || r == -ANESHARE_ELIMIT, "third compile: %s (%s)", aneshare_strerror(r),
	          aneshare_last_error(a));
	if (r == 0)
		aneshare_program_release(s[2].p);
	s[2].p = NULL;

	/* One released: the next compile restarts the worker with the one
	 * left and succeeds, and so does every later one that leaves room. */
	sq_release(&s[0]);
	sq_compile(b, &s[3], 3);
	sq_check(a, &s[1], 1);
	sq_check(b, &s[3], 2);
	sq_release(&s[3]);
	sq_compile(b, &s[4], 4);
	sq_check(b, &s[4], 3);
	sq_check(a, &s[1], 4);

	/* The holder goes away: everything compiles again. */
	sq_release(&s[1]);
	aneshare_disconnect(a);
	sq_release(&s[4]);
	for (int k = 0; k < 5; k++) {
		sq t;
		sq_compile(b, &t, 10 + k);
		sq_check(b, &t, k);
		sq_release(&t);
	}
	wstat w = worker_status();
	cr_assert_eq(w.budget, 2);
	cr_assert_geq(w.restarts, 3);
	cr_assert_eq(aneshare_reconnect_count(b), 0);
	aneshare_disconnect(b);
	int64_t last = worker_status().pid;
	h_daemon_stop(&D);
	wait_gone(last);
}

/* Issue 13 item 3: the daemon's own compile errors and cache hits are not
 * compiles; a framework failure (-EIO, injected in the worker) is, and it
 * sends the next compile to a fresh worker. */
Test(worker, budget_counts_only_real_compiles)
{
	const char *args[] = { "--backend", "cpu", "--worker", "--compile-budget", "3",
		               "--max-device-workers", "1", "--worker-fault", "compile_eio=boom", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *a = h_connect(&D, "real-a"), *b = h_connect(&D, "real-b");
	sq s0, s0b, s1;
	sq_compile(a, &s0, 0);
	int64_t pid0 = worker_status().pid;

	/* MIL errors the daemon reports itself, and unsupported programs. */
	static const char *bad[] = {
		"program(1.3)\n{\n    func main<ios18>(tensor<fp16, [2]> x) {\n        tensor<fp16, [2]> y = nosuchop(x = x)[name = string(\"y\")];\n    } -> (y);\n}\n",
		"program(1.3)\n{\n    func main<ios18>(tensor<fp16, [2]> x) {\n",
		"not mil at all",
	};
	for (int round = 0; round < 3; round++)
		for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
			aneshare_program *p = NULL;
			int r = aneshare_program_compile(b, bad[i], NULL, 0, &p, NULL);
			cr_assert(r == -ANESHARE_ECOMPILE || r == -ANESHARE_EUNSUPPORTED, "bad %zu: %s", i,
			          aneshare_strerror(r));
		}
	/* A cache hit. */
	sq_compile(b, &s0b, 0);
	wstat w = worker_status();
	cr_assert_eq(w.compiles, 1, "compiles %llu: errors or cache hits were counted",
	             (unsigned long long)w.compiles);
	cr_assert_eq(w.restarts, 0);
	cr_assert_eq(w.pid, pid0);

	/* A program that passes the daemon's checks and fails in the framework. */
	char *mil = h_square_mm_mil(SQ, "boom");
	aneshare_program *p = NULL;
	int r = aneshare_program_compile(a, mil, NULL, 0, &p, NULL);
	free(mil);
	cr_assert_lt(r, 0);
	cr_assert_neq(r, -ANESHARE_ELIMIT);
	cr_assert_not_null(strstr(aneshare_last_error(a), "injected"), "%s", aneshare_last_error(a));
	w = worker_status();
	cr_assert_eq(w.compiles, 2);
	cr_assert_eq(w.restarts, 0);

	/* The next compile: a fresh worker, with the one program in use. */
	sq_compile(b, &s1, 1);
	w = worker_status();
	cr_assert_eq(w.restarts, 1);
	cr_assert_neq(w.pid, pid0);
	cr_assert_eq(w.recompiles, 1);
	cr_assert_eq(w.compiles, 2);
	wait_gone(pid0);
	sq_check(a, &s0, 1);
	sq_check(b, &s0b, 2);
	sq_check(b, &s1, 3);
	sq_release(&s0);
	sq_release(&s0b);
	sq_release(&s1);
	aneshare_disconnect(a);
	aneshare_disconnect(b);
	int64_t last = worker_status().pid;
	h_daemon_stop(&D);
	wait_gone(last);
}

/* ---- more programs than one worker's budget ------------------------------------------------ */

/* For forked clients (no assertions): compile f<k> with its surfaces. */
static int csq_compile(aneshare_conn *c, sq *s, int k, char *err, size_t errlen)
{
	char name[16];
	snprintf(name, sizeof name, "f%d", k);
	char *mil = h_square_mm_mil(SQ, name);
	int r = aneshare_program_compile(c, mil, NULL, 0, &s->p, NULL);
	free(mil);
	if (r == 0 && (aneshare_surface_create(c, SQ * SQ * 2, &s->x) < 0 ||
	               aneshare_surface_create(c, SQ * SQ * 2, &s->y) < 0 ||
	               aneshare_surface_create(c, SQ * SQ * 2, &s->z) < 0))
		r = -ENOMEM;
	if (r < 0)
		snprintf(err, errlen, "compile f%d: %s (%s)", k, aneshare_strerror(r), aneshare_last_error(c));
	return r;
}

/* Run and compare with the fp32 reference; 0, or -1 with err set. */
static int csq_check(aneshare_conn *c, sq *s, int seed, char *err, size_t errlen)
{
	uint16_t *x = aneshare_surface_data(s->x), *y = aneshare_surface_data(s->y);
	float xf[SQ * SQ], yf[SQ * SQ], zf[SQ * SQ];
	for (int i = 0; i < SQ * SQ; i++) {
		xf[i] = (float)((i * 7 + seed) % 13) / 16.0f - 0.375f;
		yf[i] = (float)((i * 5 + 3 * seed) % 11) / 16.0f - 0.25f;
	}
	aneshare_f32_to_f16(x, xf, SQ * SQ);
	aneshare_f32_to_f16(y, yf, SQ * SQ);
	memset(aneshare_surface_data(s->z), 0xff, SQ * SQ * 2);   /* NaNs the run must overwrite */
	aneshare_surface *in[2] = { s->x, s->y };
	int r = aneshare_run(s->p, 0, in, 2, &s->z, 1);
	if (r < 0) {
		snprintf(err, errlen, "run: %s (%s)", aneshare_strerror(r), aneshare_last_error(c));
		return -1;
	}
	aneshare_f16_to_f32(zf, aneshare_surface_data(s->z), SQ * SQ);
	for (int i = 0; i < SQ; i++)
		for (int j = 0; j < SQ; j++) {
			float ref = 0;
			for (int k = 0; k < SQ; k++)
				ref += xf[i * SQ + k] * yf[k * SQ + j];
			if (!(fabsf(zf[i * SQ + j] - ref) < 1e-2f)) {
				snprintf(err, errlen, "z[%d][%d] = %g, want %g", i, j, zf[i * SQ + j], ref);
				return -1;
			}
		}
	return 0;
}

typedef struct holder {
	int first, n;          /* programs f<first> .. f<first + n - 1> */
	int churn;             /* rounds that release the last program and compile a new one */
	int stop_fd;           /* readable: finish */
	uint32_t all;          /* programs of all clients (churn) */
} holder;

/* A client process holding h->n programs, running every one of them (each
 * result checked) until told to stop; with churn, it also replaces its
 * last program each round, which makes the daemon replace workers. */
static int holder_main(void *arg, int ready_fd)
{
	holder *h = arg;
	char err[256] = "";
	sq s[16] = { { 0 } };
	aneshare_conn *c = NULL;
	int rc = 1;
	if (aneshare_connect(D.sock, "holder", &c) < 0) {
		snprintf(err, sizeof err, "connect failed");
		goto out;
	}
	for (int i = 0; i < h->n; i++)
		if (csq_compile(c, &s[i], h->first + i, err, sizeof err) < 0)
			goto out;
	if (write(ready_fd, "R", 1) != 1)
		goto out;
	int next = h->first + h->n;
	for (int round = 0;; round++) {
		struct pollfd pf = { .fd = h->stop_fd, .events = POLLIN };
		bool last = h->churn ? round >= h->churn : poll(&pf, 1, 0) == 1;
		for (int i = 0; i < h->n; i++)
			if (csq_check(c, &s[i], round + i, err, sizeof err) < 0)
				goto out;
		if (last)
			break;
		if (h->churn) {
			sq_release(&s[h->n - 1]);
			/* A released program is in use until its last run's
			 * cleanup on the daemon's loop: wait for it to go. */
			for (int tries = 0;; tries++) {
				aneshare_status *st = NULL;
				if (aneshare_get_status(c, &st) < 0 || tries > 10000) {
					snprintf(err, sizeof err, "status");
					goto out;
				}
				uint32_t np = st->programs;
				aneshare_status_free(st);
				if (np < h->all)
					break;
				tu_pause_ms(1);
			}
			if (csq_compile(c, &s[h->n - 1], next++, err, sizeof err) < 0)
				goto out;
		}
	}
	if (aneshare_reconnect_count(c) != 0) {
		snprintf(err, sizeof err, "reconnected");
		goto out;
	}
	rc = 0;
out:
	if (rc)
		fprintf(stderr, "holder f%d..: %s\n", h->first, err);
	aneshare_disconnect(c);
	return rc;
}

static void wait_child_ok(pid_t pid, const char *what)
{
	int st = 0;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s failed (status 0x%x)", what, st);
}

/* The daemon's log lines that contain what (cr_log_info). */
static void show_log(const char *what)
{
	char *text = tu_read_file(D.log);
	cr_assert_not_null(text);
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
		if (strstr(line, what))
			cr_log_info("%s", line);
	free(text);
}

/* Issue 14: budget 4, 20 programs in use by 3 client processes, at most 5
 * workers: every worker's budget is used up, and each compile of the
 * churning client makes the daemon replace a worker that holds other
 * clients' programs.  Every run of every client succeeds with the right
 * numbers throughout (a replacement compiles the programs again while the
 * old worker keeps running them). */
Test(worker, more_programs_than_one_budget)
{
	const char *args[] = { "--backend", "cpu", "--worker", "--compile-budget", "4",
		               "--max-device-workers", "5", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *obs = h_connect(&D, "observer");
	int stop[2];
	cr_assert_eq(anes_pipe_cloexec(stop), 0);
	holder hs[3] = { { 0, 7, 0, stop[0], 0 }, { 100, 7, 0, stop[0], 0 }, { 200, 6, 6, stop[0], 20 } };
	pid_t kids[3];
	for (int k = 0; k < 2; k++)
		kids[k] = h_spawn(holder_main, &hs[k]);
	wstat w = worker_status();
	cr_assert_eq(w.budget, 4);
	/* 14 programs in 4 workers of budget 4. */
	cr_assert_eq(map_workers(), 4);

	kids[2] = h_spawn(holder_main, &hs[2]);
	wait_child_ok(kids[2], "the churning client");
	cr_assert_eq(write(stop[1], "S", 1), 1);
	wait_child_ok(kids[0], "client 0");
	wait_child_ok(kids[1], "client 1");
	close(stop[0]);
	close(stop[1]);

	w = worker_status();
	cr_assert_geq(w.restarts, 6, "restarts %llu: the churn did not replace workers",
	              (unsigned long long)w.restarts);
	cr_assert_gt(w.recompiles, 6);
	show_log("started (");
	show_log("compiled again");
	h_wait_counts(obs, 0, 0);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* A client on its own thread running one program over and over, each
 * result checked, noting the longest run, until stop. */
typedef struct runner {
	aneshare_conn *c;
	sq s;
	volatile bool stop;
	int runs, bad;
	int64_t max_ms;
	char err[200];
} runner;

static void *runner_main(void *arg)
{
	runner *r = arg;
	for (int i = 0; !r->stop; i++) {
		int64_t t0 = tu_now_ms();
		if (csq_check(r->c, &r->s, i, r->err, sizeof r->err) < 0) {
			r->bad++;
			break;
		}
		int64_t d = tu_now_ms() - t0;
		if (d > r->max_ms)
			r->max_ms = d;
		r->runs++;
	}
	return NULL;
}

/* How long a restart takes with N programs (the daemon's log lines, shown
 * with --verbose; docs/worker.md), and that the programs are right after
 * it: a budget replacement of one worker holding N = 100 programs while
 * another client keeps running (its runs all succeed, and its longest run
 * is shown), then a crash of the new worker. */
Test(worker, restart_time_with_many_programs)
{
	enum { N = 100 };
	const char *args[] = { "--backend", "cpu", "--worker", "--compile-budget", "102",
		               "--max-device-workers", "1", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *a = h_connect(&D, "many");
	static sq s[N + 2];
	for (int k = 0; k < N + 1; k++)
		sq_compile(a, &s[k], k);
	runner rn = { .c = h_connect(&D, "runner") };
	sq_compile(rn.c, &rn.s, 1000);      /* 102 compiles: the budget is used up */
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, runner_main, &rn), 0);

	/* With N + 1 programs in use (N of a, the runner's), one released:
	 * room for one more in a fresh worker. */
	sq_release(&s[N]);
	h_wait_counts(a, 3 * N + 3, N + 1);
	int64_t pid0 = worker_status().pid;
	sq_compile(a, &s[N + 1], N + 1);
	wstat w = worker_status();
	cr_assert_eq(w.restarts, 1);
	cr_assert_eq(w.recompiles, N + 1);
	cr_assert_neq(w.pid, pid0);
	wait_gone(pid0);
	rn.stop = true;
	pthread_join(th, NULL);
	cr_assert_eq(rn.bad, 0, "the other client's run failed during the replacement: %s", rn.err);
	cr_log_info("replacement with %d programs: the other client ran %d times, longest run %lld ms",
	            N + 1, rn.runs, (long long)rn.max_ms);

	/* A crash of the new worker: its N + 2 programs compiled again. */
	cr_assert_eq(kill((pid_t)w.pid, SIGKILL), 0);
	wstat w2 = wait_worker(2, w.pid);
	cr_assert_eq(w2.recompiles, (N + 1) + (N + 2));
	for (int k = 0; k < N; k++)
		sq_check(a, &s[k], k);
	sq_check(a, &s[N + 1], 7);
	sq_check(rn.c, &rn.s, 8);
	show_log("started (");
	show_log("compiled again");
	for (int k = 0; k < N; k++)
		sq_release(&s[k]);
	sq_release(&s[N + 1]);
	sq_release(&rn.s);
	aneshare_disconnect(rn.c);
	aneshare_disconnect(a);
	int64_t last = worker_status().pid;
	h_daemon_stop(&D);
	wait_gone(last);
}

/* ---- the watchdog -------------------------------------------------------------------------- */

/* The deadline rules, with times as inputs (no clock). */
Test(worker, watchdog_deadline_rules)
{
	/* Runs: the floor, or 10x the recent runs, whichever is longer. */
	cr_assert_eq(anes_wd_run_ms(300, 0, 0), 300);
	cr_assert_eq(anes_wd_run_ms(300, 1000, 0), 300);
	cr_assert_eq(anes_wd_run_ms(300, 100000, 0), 1000);
	cr_assert_eq(anes_wd_run_ms(5000, 2000000, 1ull << 40), 20000, "history wins over size");
	/* A first run goes by size: 4.5 GB of weights get more than a minute. */
	cr_assert_gt(anes_wd_run_ms(300, 0, 4500000000ull), 60000);
	/* Recent: one slow run counts at once, fast ones bring it down slowly. */
	uint64_t r = anes_wd_recent_us(0, 1000);
	cr_assert_eq(r, 1000);
	r = anes_wd_recent_us(r, 500000);
	cr_assert_eq(r, 500000);
	r = anes_wd_recent_us(r, 10);
	cr_assert_eq(r, 437500);
	for (int i = 0; i < 100; i++)
		r = anes_wd_recent_us(r, 10);
	cr_assert_lt(r, 100);
	cr_assert_geq(r, 10);
	/* Compiles: the floor plus size; a model of several GB gets minutes. */
	cr_assert_eq(anes_wd_compile_ms(1000, 0, 0), 1000);
	cr_assert_eq(anes_wd_compile_ms(1000, 100, 0), 3000);
	cr_assert_eq(anes_wd_compile_ms(1000, 0, 16ull << 20), 2000);
	cr_assert_gt(anes_wd_compile_ms(30000, 20000, 4500000000ull), 600000);
	/* A killed run: the next one of that program gets ten times as long. */
	r = anes_wd_killed_us(1000, 5000000);
	cr_assert_eq(anes_wd_run_ms(5000, r, 0), 50000);
	cr_assert_eq(anes_wd_killed_us(9000000, 5000000), 9000000);
}

/* Submit one run of s on its connection (the ticket). */
static uint32_t sq_submit(sq *s)
{
	uint32_t t;
	aneshare_surface *in[2] = { s->x, s->y };
	cr_assert_eq(aneshare_run_submit(s->p, 0, in, 2, &s->z, 1, &t), 0);
	return t;
}

/* Issue 14 item 6: a worker that stops answering (SIGSTOP) is killed after
 * the deadline; the calls in flight to it from every client fail with
 * worker_restarted, and then everything works again, runs and compiles. */
Test(worker, watchdog_kills_a_stopped_worker)
{
	const char *args[] = { "--backend", "cpu", "--worker", "--run-deadline-floor-ms", "300",
		               "--compile-deadline-floor-ms", "1000", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *c[3];
	sq s[3];
	for (int k = 0; k < 3; k++) {
		c[k] = h_connect(&D, "watchdog");
		sq_compile(c[k], &s[k], k);
		sq_check(c[k], &s[k], k);
	}
	wstat w0 = worker_status();
	cr_assert_eq(w0.watchdog_kills, 0);

	/* Runs in flight to a stopped worker.  The daemon sends as many as
	 * it has threads; one still waiting for a thread when the watchdog
	 * acts goes to the new worker and succeeds. */
	cr_assert_eq(kill((pid_t)w0.pid, SIGSTOP), 0);
	uint32_t t[3];
	for (int k = 0; k < 3; k++) {
		sq_fill(&s[k], 30 + k);
		t[k] = sq_submit(&s[k]);
	}
	int restarted = 0;
	for (int k = 0; k < 3; k++) {
		int r = aneshare_wait(c[k], t[k]);
		cr_assert(r == -ANESHARE_EWORKER_RESTARTED || r == 0, "client %d: %s (%s)", k,
		          aneshare_strerror(r), aneshare_last_error(c[k]));
		if (r == 0)
			sq_verify(&s[k], 30 + k);
		else
			restarted++;
	}
	cr_assert_geq(restarted, 1);
	wstat w1 = wait_worker(1, w0.pid);
	cr_assert_eq(w1.watchdog_kills, 1);
	wait_gone(w0.pid);
	for (int k = 0; k < 3; k++)
		sq_check(c[k], &s[k], 10 + k);

	/* A compile in flight to a stopped worker. */
	cr_assert_eq(kill((pid_t)w1.pid, SIGSTOP), 0);
	char *mil = h_square_mm_mil(SQ, "late");
	aneshare_program *p = NULL;
	int r = aneshare_program_compile(c[0], mil, NULL, 0, &p, NULL);
	cr_assert_eq(r, -ANESHARE_EWORKER_RESTARTED, "%s (%s)", aneshare_strerror(r),
	             aneshare_last_error(c[0]));
	wstat w2 = wait_worker(2, w1.pid);
	cr_assert_eq(w2.watchdog_kills, 2);
	wait_gone(w1.pid);
	cr_assert_eq(aneshare_program_compile(c[0], mil, NULL, 0, &p, NULL), 0, "%s",
	             aneshare_last_error(c[0]));
	free(mil);
	aneshare_program_release(p);
	for (int k = 0; k < 3; k++) {
		sq_check(c[k], &s[k], 20 + k);
		cr_assert_eq(aneshare_reconnect_count(c[k]), 0);
	}
	char *text = tu_read_file(D.log);
	cr_assert_not_null(strstr(text, "did not answer a run within"), "%s", text);
	cr_assert_not_null(strstr(text, "did not answer a compile within"), "%s", text);
	free(text);
	for (int k = 0; k < 3; k++) {
		sq_release(&s[k]);
		aneshare_disconnect(c[k]);
	}
	int64_t last = worker_status().pid;
	h_daemon_stop(&D);
	wait_gone(last);
}

/* The watchdog's deadlines are on the daemon's clock (anes_clock_ns), which
 * a test can replace: on a fake clock that stands still, a stopped worker
 * is not killed however long it takes in real time; once the clock is moved
 * past the deadline, it is, and the run in flight gets worker_restarted. */
Test(worker, watchdog_on_the_daemons_clock)
{
	anes_test_clock *clk = h_fake_clock();
	const char *args[] = { "--backend", "cpu", "--worker", "--run-deadline-floor-ms", "1000",
		               "--lane-spin-us", "0", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *c = h_connect(&D, "clock");
	sq s;
	sq_compile(c, &s, 0);
	sq_check(c, &s, 1);
	wstat w0 = worker_status();

	cr_assert_eq(kill((pid_t)w0.pid, SIGSTOP), 0);
	sq_fill(&s, 2);
	uint32_t t = sq_submit(&s);
	/* Eight of the watchdog's checks (every 250 ms of real time). */
	tu_pause_ms(2000);
	wstat w = worker_status();
	cr_assert_eq(w.watchdog_kills, 0, "killed while the daemon's clock stood still");
	cr_assert_eq(w.pid, w0.pid);

	atomic_fetch_add(&clk->now_ns, 1000000001ull);
	int r = aneshare_wait(c, t);
	cr_assert_eq(r, -ANESHARE_EWORKER_RESTARTED, "%s (%s)", aneshare_strerror(r), aneshare_last_error(c));
	wstat w1 = wait_worker(1, w0.pid);
	cr_assert_eq(w1.watchdog_kills, 1);
	wait_gone(w0.pid);
	sq_check(c, &s, 3);
	sq_release(&s);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
	wait_gone(w1.pid);
}

/* ---- configuration, and a worker that cannot start --------------------------------------- */

Test(worker, config_file_keys)
{
	char dir[] = "/tmp/anes-wcfg-XXXXXX";
	cr_assert_not_null(mkdtemp(dir));
	char path[128];
	snprintf(path, sizeof path, "%s/aneshared.conf", dir);
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	fprintf(f, "backend = cpu\nworker = yes\ncompile_budget = 7\nmax_device_workers = 3\n"
	           "run_deadline_floor_ms = 1234\ncompile_deadline_floor_ms = 5678\n");
	fclose(f);
	const char *args[] = { "--config", path, NULL };
	h_daemon_start_args(&D, args);
	wstat w = worker_status();
	cr_assert(w.present);
	cr_assert_eq(w.budget, 7);
	cr_assert_eq(w.max_workers, 3);
	cr_assert_eq(w.run_floor, 1234);
	cr_assert_eq(w.compile_floor, 5678);
	h_daemon_stop(&D);

	/* The flags win over the file; the defaults without either. */
	const char *args1[] = { "--config", path, "--max-device-workers", "2", "--run-deadline-floor-ms",
		                "99", NULL };
	h_daemon_start_args(&D, args1);
	w = worker_status();
	cr_assert_eq(w.max_workers, 2);
	cr_assert_eq(w.run_floor, 99);
	cr_assert_eq(w.compile_floor, 5678);
	h_daemon_stop(&D);
	start_worker_daemon("0");
	w = worker_status();
	cr_assert_eq(w.max_workers, ANES_DEVICE_WORKERS_DEFAULT);
	cr_assert_eq(w.run_floor, ANES_WD_RUN_FLOOR_MS);
	cr_assert_eq(w.compile_floor, ANES_WD_COMPILE_FLOOR_MS);
	h_daemon_stop(&D);

	/* --no-worker wins over the file: no worker map. */
	const char *args2[] = { "--config", path, "--no-worker", NULL };
	h_daemon_start_args(&D, args2);
	cr_assert_not(worker_status().present);
	h_daemon_stop(&D);
	unlink(path);
	rmdir(dir);
}

/* Run $ANESHARED with args until it exits (bounded); its status, and its
 * stderr in text. */
static int run_daemon_to_exit(const char *const *args, char *text, size_t text_len)
{
	const char *exe = getenv("ANESHARED");
	cr_assert(exe && *exe);
	char dir[] = "/tmp/anes-wfail-XXXXXX";
	cr_assert_not_null(mkdtemp(dir));
	char sock[128], log[128];
	snprintf(sock, sizeof sock, "%s/s.sock", dir);
	snprintf(log, sizeof log, "%s/log", dir);
	const char *argv[32];
	int n = 0;
	argv[n++] = exe;
	argv[n++] = "--socket";
	argv[n++] = sock;
	for (int i = 0; args[i] && n < 30; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd < 0 || dup2(fd, 2) < 0)
			_exit(99);
		setenv("XDG_CONFIG_HOME", dir, 1);
		execv(exe, (char *const *)argv);
		_exit(98);
	}
	int st = 0;
	int64_t deadline = tu_now_ms() + 15000 * h_slow();
	while (waitpid(pid, &st, WNOHANG) == 0) {
		if (tu_now_ms() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			cr_assert_fail("the daemon did not exit");
		}
		tu_pause_ms(10);
	}
	FILE *f = fopen(log, "re");
	cr_assert_not_null(f);
	size_t len = fread(text, 1, text_len - 1, f);
	fclose(f);
	text[len] = '\0';
	cr_assert_neq(access(sock, F_OK), 0, "the socket was left behind");
	unlink(log);
	unlink(sock);
	char lock[160];
	snprintf(lock, sizeof lock, "%s.lock", sock);
	unlink(lock);
	rmdir(dir);
	cr_assert(WIFEXITED(st), "status 0x%x", st);
	return WEXITSTATUS(st);
}

Test(worker, worker_that_cannot_start)
{
	const char *args[] = { "--backend", "cpu", "--worker", "--worker-fault", "start_fail", NULL };
	char text[4096];
	cr_assert_eq(run_daemon_to_exit(args, text, sizeof text), 1, "log: %s", text);
	cr_assert_not_null(strstr(text, "the device worker did not start"), "log: %s", text);
	cr_assert_not_null(strstr(text, "injected start failure"), "log: %s", text);
}

/* Issue 13 item 3: in the daemon's own process the ANE's budget could never
 * be given back, so --no-worker is refused with the ane backend (before the
 * backend is probed: this holds on a machine without an ANE too). */
Test(worker, no_worker_refused_with_ane)
{
	const char *args[] = { "--backend", "ane", "--no-worker", NULL };
	char text[4096];
	cr_assert_eq(run_daemon_to_exit(args, text, sizeof text), 78, "log: %s", text);
	cr_assert_not_null(strstr(text, "--no-worker: the ane backend runs only in device workers"),
	                   "log: %s", text);

	/* The same from the configuration file. */
	char dir[] = "/tmp/anes-wcfg-XXXXXX";
	cr_assert_not_null(mkdtemp(dir));
	char path[128];
	snprintf(path, sizeof path, "%s/aneshared.conf", dir);
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	fprintf(f, "backend = ane\nworker = no\n");
	fclose(f);
	const char *args2[] = { "--config", path, NULL };
	cr_assert_eq(run_daemon_to_exit(args2, text, sizeof text), 78, "log: %s", text);
	cr_assert_not_null(strstr(text, "--no-worker"), "log: %s", text);
	unlink(path);
	rmdir(dir);
}

/* ---- names of every length up to ANES_NAME_MAX, in the daemon and the worker ------------- */

/* A program whose function, input, output and every value have a name of
 * len bytes (distinct by their first letter): y = x + x * c. */
static char *long_names_mil(size_t len)
{
	char *n[4];
	for (int i = 0; i < 4; i++) {
		n[i] = malloc(len + 1);
		memset(n[i], 'a' + i, len);
		n[i][0] = "fxyc"[i];
		n[i][len] = '\0';
	}
	char *s = NULL;
	int r = asprintf(&s,
	                 "program(1.3)\n{\n"
	                 "    func %s<ios18>(tensor<fp16, [4]> %s) {\n"
	                 "        fp16 %s = const()[name = string(\"%s\"), val = fp16(2)];\n"
	                 "        tensor<fp16, [4]> %s_m = mul(x = %s, y = %s)[name = string(\"%s_m\")];\n"
	                 "        tensor<fp16, [4]> %s = add(x = %s, y = %s_m)[name = string(\"%s\")];\n"
	                 "    } -> (%s);\n}\n",
	                 n[0], n[1], n[3], n[3], n[2], n[1], n[3], n[2], n[2], n[1], n[2], n[2], n[2]);
	if (r < 0)
		abort();
	for (int i = 0; i < 4; i++)
		free(n[i]);
	return s;
}

static void long_names_check(aneshare_conn *c)
{
	/* 1,000 bytes (the "_m" value is 1,002): compiles and runs */
	char *mil = long_names_mil(1000);
	aneshare_program *p;
	cr_assert_eq(aneshare_program_compile(c, mil, NULL, 0, &p, NULL), 0, "%s", aneshare_last_error(c));
	free(mil);
	const char *fname = aneshare_program_function_name(p, 0);
	cr_assert_eq(strlen(fname), 1000);
	cr_assert(fname[0] == 'f' && fname[999] == 'a');
	const aneshare_tensor_info *ti = aneshare_program_input(p, 0, 0), *to = aneshare_program_output(p, 0, 0);
	cr_assert_eq(strlen(ti->name), 1000);
	cr_assert(ti->name[0] == 'x' && ti->name[999] == 'b');
	cr_assert_eq(strlen(to->name), 1000);
	cr_assert(to->name[0] == 'y' && to->name[999] == 'c');
	aneshare_surface *in, *out;
	cr_assert_eq(aneshare_surface_create(c, 8, &in), 0);
	cr_assert_eq(aneshare_surface_create(c, 8, &out), 0);
	const float xs[4] = {1, -2, 0.5f, 100};
	aneshare_f32_to_f16(aneshare_surface_data(in), xs, 4);
	cr_assert_eq(aneshare_run(p, 0, &in, 1, &out, 1), 0, "%s", aneshare_last_error(c));
	float ys[4];
	aneshare_f16_to_f32(ys, aneshare_surface_data(out), 4);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(ys[i], 3 * xs[i], "y[%d] = %g, want %g", i, (double)ys[i], (double)(3 * xs[i]));
	aneshare_surface_release(in);
	aneshare_surface_release(out);
	aneshare_program_release(p);

	/* 1,025 bytes: refused at compile time, naming the cap */
	mil = long_names_mil(1025);
	cr_assert_eq(aneshare_program_compile(c, mil, NULL, 0, &p, NULL), -ANESHARE_ECOMPILE);
	cr_assert(strstr(aneshare_last_error(c), "is 1025 bytes long; names are at most 1024 bytes"), "%s",
	          aneshare_last_error(c));
	free(mil);
}

Test(worker, names_up_to_1024_bytes_in_process_and_in_the_worker)
{
	const char *args[] = { "--backend", "cpu", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *c = h_connect(&D, "long-names");
	long_names_check(c);
	aneshare_disconnect(c);
	h_daemon_stop(&D);

	start_worker_daemon("0");
	c = h_connect(&D, "long-names-worker");
	long_names_check(c);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- the parser's limits are options, and the worker gets them ------------------------- */

static void limits_check(aneshare_conn *c)
{
	/* 8 statements (2 inputs, 2 constants, 1 op... ) pass, a longer chain does not */
	char *ok = h_square_mm_mil(4, "main");
	aneshare_program *p;
	cr_assert_eq(aneshare_program_compile(c, ok, NULL, 0, &p, NULL), 0, "%s", aneshare_last_error(c));
	aneshare_program_release(p);
	free(ok);
	char big[4096];
	size_t o = (size_t)snprintf(big, sizeof big, "program(1.3)\n{\n func main<ios18>(tensor<fp16, [4]> v0) {\n");
	for (int i = 1; i <= 12; i++)
		o += (size_t)snprintf(big + o, sizeof big - o, "  tensor<fp16, [4]> v%d = relu(x = v%d);\n", i, i - 1);
	snprintf(big + o, sizeof big - o, " } -> (v12);\n}\n");
	cr_assert_eq(aneshare_program_compile(c, big, NULL, 0, &p, NULL), -ANESHARE_ECOMPILE);
	cr_assert(strstr(aneshare_last_error(c), "more than 10 statements"), "%s", aneshare_last_error(c));
}

Test(worker, mil_limits_from_the_config_file_reach_the_worker)
{
	char dir[] = "/tmp/anes-mil-limits-XXXXXX", conf[300];
	cr_assert_not_null(mkdtemp(dir));
	snprintf(conf, sizeof conf, "%s/aneshared.conf", dir);
	FILE *f = fopen(conf, "w");
	cr_assert_not_null(f);
	fprintf(f, "max_mil_statements = 10\nmax_mil_tensor_bytes = 1M\nmax_mil_value_bytes = 2M\n"
	           "max_mil_functions = 3\nmax_mil_io = 5\nmax_mil_bytes = 100000\n");
	fclose(f);

	const char *in_process[] = { "--backend", "cpu", "--config", conf, NULL };
	h_daemon_start_args(&D, in_process);
	aneshare_conn *c = h_connect(&D, "mil-limits");
	limits_check(c);
	aneshare_disconnect(c);
	h_daemon_stop(&D);

	const char *worker[] = { "--backend", "cpu", "--worker", "--config", conf, NULL };
	h_daemon_start_args(&D, worker);
	c = h_connect(&D, "mil-limits-worker");
	limits_check(c);
#ifdef __linux__
	/* the worker was started with the daemon's limits */
	wstat w = worker_status();
	char path[64], cmd[1024];
	snprintf(path, sizeof path, "/proc/%lld/cmdline", (long long)w.pid);
	FILE *cf = fopen(path, "r");
	cr_assert_not_null(cf);
	size_t n = fread(cmd, 1, sizeof cmd - 1, cf);
	fclose(cf);
	for (size_t i = 0; i < n; i++)
		if (!cmd[i])
			cmd[i] = ' ';
	cmd[n] = '\0';
	cr_assert(strstr(cmd, "--mil-limits 100000,10,1048576,2097152,3,5"), "%s", cmd);
#endif
	aneshare_disconnect(c);
	h_daemon_stop(&D);
	unlink(conf);
	rmdir(dir);
}

/* ---- a restart's recompiles hold no other client up ---------------------------------- */

/* The child: client A, whose program `held` is compiled again only when the
 * test lets it (--worker-fault compile_hold=PATH).  Commands on cmd: 'r'
 * submit 4 runs and wait for them (then answer 'y' or 'n' on res); 'q' quit. */
static void held_client(const char *sock, int cmd, int res)
{
	aneshare_conn *c;
	sq s;
	if (aneshare_connect(sock, "held-a", &c) < 0)
		_exit(10);
	char *mil = h_square_mm_mil(SQ, "held");
	int r = aneshare_program_compile(c, mil, NULL, 0, &s.p, NULL);
	free(mil);
	if (r < 0 || aneshare_surface_create(c, SQ * SQ * 2, &s.x) < 0 ||
	    aneshare_surface_create(c, SQ * SQ * 2, &s.y) < 0 || aneshare_surface_create(c, SQ * SQ * 2, &s.z) < 0)
		_exit(11);
	(void)!write(res, "c", 1);
	char ch;
	while (read(cmd, &ch, 1) == 1 && ch == 'r') {
		float xf[SQ * SQ], yf[SQ * SQ], zf[SQ * SQ];
		sq_inputs(3, xf, yf);
		aneshare_f32_to_f16(aneshare_surface_data(s.x), xf, SQ * SQ);
		aneshare_f32_to_f16(aneshare_surface_data(s.y), yf, SQ * SQ);
		memset(aneshare_surface_data(s.z), 0xff, SQ * SQ * 2);
		aneshare_surface *in[2] = { s.x, s.y };
		uint32_t t[4];
		bool ok = true;
		for (int i = 0; i < 4; i++)
			ok = ok && aneshare_run_submit(s.p, 0, in, 2, &s.z, 1, &t[i]) == 0;
		for (int i = 0; i < 4; i++)
			ok = ok && aneshare_wait(c, t[i]) == 0;
		aneshare_f16_to_f32(zf, aneshare_surface_data(s.z), SQ * SQ);
		for (int i = 0; i < SQ && ok; i++)
			for (int j = 0; j < SQ; j++) {
				float ref = 0;
				for (int k = 0; k < SQ; k++)
					ref += xf[i * SQ + k] * yf[k * SQ + j];
				ok = ok && fabsf(zf[i * SQ + j] - ref) < 1e-2f;
			}
		(void)!write(res, ok ? "y" : "n", 1);
	}
	aneshare_disconnect(c);
	_exit(0);
}

/* A process's entry in status (jobs, device_us), by pid. */
static const struct aneshare_status_process *proc_of(const aneshare_status *st, pid_t pid)
{
	for (uint32_t i = 0; i < st->n_processes; i++)
		if (st->process_list[i].pid == (uint64_t)pid)
			return &st->process_list[i];
	return NULL;
}

/* After a SIGKILL of the device worker, client A's program is compiled
 * again only when the test allows it, and A has 4 runs of it waiting: more
 * than the daemon's 2 job workers (--workers 2 --no-lanes), so before
 * restores stopped holding them nobody else could run.  Meanwhile client B
 * runs a program already restored 200 times and compiles and runs a fresh
 * one, every result checked, and status shows the order: B's runs were
 * done while A's recompile was still owed (restoring 1) and A's 4 runs still
 * queued.  Then A's recompile goes on, and A's runs are right.  The wait
 * is charged to nobody: on the daemon's fake clock, which stands still but
 * for 100 s the test adds while A's runs wait, A is charged less than those
 * 100 s (4 x 100 s if the waits were charged). */
static void restart_holds_nobody_up(bool lanes)
{
	char hold[256];
	snprintf(hold, sizeof hold, "/tmp/anes-hold-%d", (int)getpid());
	char fault[300];
	snprintf(fault, sizeof fault, "compile_hold=%s", hold);
	/* The clock stands still (no spin: --lane-spin-us 0); the watchdog's
	 * compile deadline (600 s) stays ahead of the 100 s added. */
	anes_test_clock *clk = h_fake_clock();
	const uint64_t held_ns = 100ull * 1000000000u;
	const char *args[] = { "--backend", "cpu", "--worker", "--workers", "2", "--worker-fault", fault,
		               "--compile-deadline-floor-ms", "600000", "--lane-spin-us", "0",
		               lanes ? "--lane-threads" : "--no-lanes", lanes ? "2" : NULL, NULL };
	unlink(hold);
	h_daemon_start_args(&D, args);

	int cmd[2], res[2];
	cr_assert_eq(pipe(cmd), 0);
	cr_assert_eq(pipe(res), 0);
	pid_t a = fork();
	cr_assert_geq(a, 0);
	if (a == 0) {
		close(cmd[1]);
		close(res[0]);
		held_client(D.sock, cmd[0], res[1]);
	}
	close(cmd[0]);
	close(res[1]);
	char ch;
	cr_assert_eq(read(res[0], &ch, 1), 1);
	cr_assert_eq(ch, 'c', "client A did not compile");

	/* B's program, compiled after A's: the first to be compiled again. */
	aneshare_conn *b = h_connect(&D, "runner-b");
	sq p = { 0 }, f = { 0 };
	sq_compile(b, &p, 1);
	sq_check(b, &p, 1);
	int fd = open(hold, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	close(fd);
	wstat w0 = worker_status();
	cr_assert_eq(kill((pid_t)w0.pid, SIGKILL), 0);
	/* A new worker: B's program restored, A's held. */
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	wstat w;
	for (;;) {
		w = worker_status_now();
		if (w.restarts == 1 && w.pid > 0 && w.pid != w0.pid && w.restoring == 1)
			break;
		cr_assert(tu_now_ms() < deadline, "no restart with one program held (restoring %llu)",
		          (unsigned long long)w.restoring);
		tu_pause_ms(10);
	}
	/* A's 4 runs, queued behind its recompile. */
	cr_assert_eq(write(cmd[1], "r", 1), 1);
	for (;;) {
		aneshare_status *st = h_status(b);
		const struct aneshare_status_process *pa = proc_of(st, a);
		uint64_t jobs = pa ? pa->jobs : 0;
		aneshare_status_free(st);
		if (jobs == 4)
			break;
		cr_assert(tu_now_ms() < deadline, "A's runs were not queued (%llu)", (unsigned long long)jobs);
		tu_pause_ms(10);
	}

	for (int i = 0; i < 200; i++)
		sq_check(b, &p, 100 + i);
	sq_compile(b, &f, 2);
	sq_check(b, &f, 7);
	sq_check(b, &p, 8);
	w = worker_status_now();
	cr_assert_eq(w.restoring, 1, "A's program was compiled again before B was done");
	aneshare_status *st = h_status(b);
	const struct aneshare_status_process *pa = proc_of(st, a);
	cr_assert_not_null(pa);
	cr_assert_eq(pa->jobs, 4, "A's runs did not wait for its program");
	aneshare_status_free(st);

	/* 100 s pass on the daemon's clock while A's runs wait; then A's
	 * program is compiled again: its runs complete, right. */
	atomic_fetch_add(&clk->now_ns, held_ns);
	cr_assert_eq(unlink(hold), 0);
	cr_assert_eq(read(res[0], &ch, 1), 1);
	cr_assert_eq(ch, 'y', "A's runs after the restore were wrong or failed");
	w = worker_status();
	cr_assert_eq(w.recompiles, 2);
	st = h_status(b);
	pa = proc_of(st, a);
	const struct aneshare_status_process *pb = proc_of(st, getpid());
	cr_assert(pa && pb);
	/* Each of A's 4 runs waited through the 100 s: charged, that would be
	 * 4 x 100 s; its compile and runs themselves took no time on the clock. */
	cr_expect_lt(pa->device_us, held_ns / 1000u,
	             "A was charged %llu us of device time, its runs waited 100 s x 4 for the restore",
	             (unsigned long long)pa->device_us);
	cr_log_info("A charged %llu us (its runs waited 100 s on the daemon's clock), B %llu us",
	            (unsigned long long)pa->device_us, (unsigned long long)pb->device_us);
	aneshare_status_free(st);
	cr_assert_eq(write(cmd[1], "q", 1), 1);
	int wst;
	cr_assert_eq(waitpid(a, &wst, 0), a);
	cr_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
	close(cmd[1]);
	close(res[0]);
	sq_release(&p);
	sq_release(&f);
	aneshare_disconnect(b);
	h_daemon_stop(&D);
}

Test(worker, a_restart_holds_no_other_client_up_without_lanes)
{
	restart_holds_nobody_up(false);
}

Test(worker, a_restart_holds_no_other_client_up_with_lanes)
{
	restart_holds_nobody_up(true);
}
