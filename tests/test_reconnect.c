/* SPDX-License-Identifier: MIT */
/*
 * Daemon SIGKILL and restart: libaneshare reconnects by itself, imports its
 * surfaces and compiles its programs again, and the next calls succeed;
 * calls in flight at the crash fail with the retryable
 * ANESHARE_EDISCONNECTED (or, for idempotent calls, are sent again).
 *
 * Most tests use a real aneshared (tests/daemon_harness.c) and kill it with
 * SIGKILL.  To have requests in flight at the kill without racing, the daemon
 * is first stopped (SIGSTOP): requests then sit unread in its socket.  The
 * tests of synchronous calls in flight use a scripted fake daemon instead,
 * which hangs up on a chosen request and counts what it received.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
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
	h_daemon_kill(&D);   /* only if the test did not stop it */
}

TestSuite(reconnect, .timeout = 60);

/* ---- helpers ------------------------------------------------------------------ */

static void stop_daemon_process(const h_daemon *d)
{
	cr_assert_eq(kill(d->pid, SIGSTOP), 0);
}

/* ---- restart with everything restored ----------------------------------------------- */

Test(reconnect, restart_restores_surfaces_and_programs, .init = setup, .fini = teardown)
{
	int fds0 = h_count_fds();
	aneshare_conn *c = h_connect(&D, "test-restart");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	char key[65];
	snprintf(key, sizeof key, "%s", aneshare_program_key(p));

	/* Two surfaces from the daemon and one memfd of ours. */
	aneshare_surface *in = h_surface(c, mm.in_bytes), *out = h_surface(c, mm.out_bytes);
#ifdef __linux__
	int mfd = memfd_create("test-import", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	cr_assert_geq(mfd, 0);
	cr_assert_eq(ftruncate(mfd, (off_t)mm.in_bytes), 0);
	cr_assert_eq(fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
#else
	int mfd = -1;
	cr_skip_test("imports a memfd, which is Linux's");
#endif
	aneshare_surface *imp = NULL;
	cr_assert_eq(aneshare_surface_import(c, mfd, &imp), 0, "%s", aneshare_last_error(c));
	close(mfd);
	cr_assert_eq(h_count_fds(), fds0 + 1 + 3, "one socket, one fd per surface");

	h_mm_fill(&mm, aneshare_surface_data(in), 11);
	h_mm_fill(&mm, aneshare_surface_data(imp), 12);
	h_mm_run_check(p, &mm, in, out);
	uint32_t old_in_id = aneshare_surface_id(in);
	cr_assert_neq(old_in_id, 0);
	cr_assert_eq(aneshare_reconnect_count(c), 0);

	/* Keep copies of what the surfaces hold: it must survive the crash. */
	void *in_copy = malloc(mm.in_bytes), *imp_copy = malloc(mm.in_bytes);
	cr_assert(in_copy && imp_copy);
	memcpy(in_copy, aneshare_surface_data(in), mm.in_bytes);
	memcpy(imp_copy, aneshare_surface_data(imp), mm.in_bytes);

	h_daemon_crash(&D);
	h_daemon_restart(&D, true);

	/* The app recreates nothing: the next run just works. */
	h_mm_run_check(p, &mm, in, out);
	cr_assert_eq(aneshare_reconnect_count(c), 1);
	cr_assert_eq(memcmp(aneshare_surface_data(in), in_copy, mm.in_bytes), 0);
	cr_assert_eq(memcmp(aneshare_surface_data(imp), imp_copy, mm.in_bytes), 0);
	cr_assert_neq(aneshare_surface_id(in), 0);
	cr_assert_str_eq(aneshare_program_key(p), key);
	h_mm_run_check(p, &mm, imp, out);   /* the imported one too */

	/* The new daemon holds exactly what this connection holds. */
	aneshare_status *st = h_status(c);
	cr_assert_eq(st->surfaces, 3);
	cr_assert_eq(st->surface_bytes, 2 * mm.in_bytes + mm.out_bytes);
	cr_assert_eq(st->programs, 1);
	cr_assert_str_eq(st->program_list[0].key, key, "the same program key after recompiling");
	cr_assert_eq(st->program_list[0].refs, 1);
	cr_assert_eq(st->compiles, 1);
	cr_assert_lt(st->uptime_ms, 60000);
	aneshare_status_free(st);
	cr_assert_eq(h_count_fds(), fds0 + 1 + 3, "no fds leaked by reconnecting");

	/* New data, and a second crash, work the same way. */
	h_mm_fill(&mm, aneshare_surface_data(in), 13);
	h_daemon_crash(&D);
	h_daemon_restart(&D, true);
	h_mm_run_check(p, &mm, in, out);
	cr_assert_eq(aneshare_reconnect_count(c), 2);

	cr_assert_eq(aneshare_surface_release(imp), 0);
	cr_assert_eq(h_count_fds(), fds0 + 1 + 2, "release closes the surface's fd");
	cr_assert_eq(aneshare_surface_release(in), 0);
	cr_assert_eq(aneshare_surface_release(out), 0);
	cr_assert_eq(aneshare_program_release(p), 0);
	h_wait_counts(c, 0, 0);
	cr_assert_eq(h_count_fds(), fds0 + 1);
	aneshare_disconnect(c);
	cr_assert_eq(h_count_fds(), fds0);
	free(in_copy);
	free(imp_copy);
	h_daemon_stop(&D);
}

/* The daemon comes back only after the call started: the library's
 * retry loop waits for it (within its timeout). */
Test(reconnect, daemon_comes_back_while_retrying, .init = setup, .fini = teardown)
{
	aneshare_conn *c = h_connect(&D, "test-late");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in = h_surface(c, mm.in_bytes), *out = h_surface(c, mm.out_bytes);
	h_mm_fill(&mm, aneshare_surface_data(in), 21);
	h_mm_run_check(p, &mm, in, out);

	h_daemon_crash(&D);
	h_daemon_restart(&D, false);   /* not answering yet: the stale socket is still there */
	cr_assert_eq(aneshare_set_reconnect_timeout(c, 10000 * (uint32_t)h_slow()), 0);
	h_mm_run_check(p, &mm, in, out);
	cr_assert_eq(aneshare_reconnect_count(c), 1);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- runs in flight ---------------------------------------------------------------- */

#define N_FLIGHT 8

Test(reconnect, runs_in_flight_fail_retryably, .init = setup, .fini = teardown)
{
	aneshare_conn *c = h_connect(&D, "test-inflight");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in[N_FLIGHT], *out[N_FLIGHT];
	uint32_t t[N_FLIGHT];
	h_mm_pairs(c, &mm, in, out, N_FLIGHT, 100);
	cr_assert_lt(N_FLIGHT, aneshare_server(c)->max_inflight);

	/* Stopped, the daemon reads nothing: every run is in flight at the kill. */
	stop_daemon_process(&D);
	for (int i = 0; i < N_FLIGHT; i++)
		cr_assert_eq(aneshare_run_submit(p, 0, &in[i], 1, &out[i], 1, &t[i]), 0);
	h_daemon_crash(&D);

	for (int i = N_FLIGHT - 1; i >= 0; i--) {   /* any order */
		int r = aneshare_wait(c, t[i]);
		cr_assert_eq(r, -ANESHARE_EDISCONNECTED, "run %d: %s", i, aneshare_strerror(r));
		cr_assert(aneshare_error_is_retryable(r));
		cr_assert(strstr(aneshare_last_error(c), "in flight"), "%s", aneshare_last_error(c));
	}
	cr_assert_eq(aneshare_wait(c, t[0]), -ENOENT, "a ticket is waited for once");
	cr_assert_str_eq(aneshare_strerror(-ANESHARE_EDISCONNECTED), "disconnected");
	cr_assert(!aneshare_error_is_retryable(-ECONNRESET));
	cr_assert(!aneshare_error_is_retryable(-ANESHARE_ERUN_FAILED));
	cr_assert(!aneshare_error_is_retryable(0));

	/* The app retries: the runs go to the new daemon, with the data kept. */
	h_daemon_restart(&D, true);
	for (int i = 0; i < N_FLIGHT; i++) {
		memset(aneshare_surface_data(out[i]), 0xff, mm.out_bytes);
		cr_assert_eq(aneshare_run_submit(p, 0, &in[i], 1, &out[i], 1, &t[i]), 0, "%s",
		             aneshare_last_error(c));
	}
	for (int i = 0; i < N_FLIGHT; i++) {
		cr_assert_eq(aneshare_wait(c, t[i]), 0, "run %d: %s", i, aneshare_last_error(c));
		double err = h_mm_error(&mm, aneshare_surface_data(in[i]), aneshare_surface_data(out[i]));
		cr_assert_leq(err, H_MM_TOL, "run %d: relative error %g", i, err);
	}
	h_wait_counts(c, 2 * N_FLIGHT, 1);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

#define N_ROLL 64
#define ROLL_DEPTH 16

/* A pipeline flowing when the daemon dies: every run either completed with
 * the right numbers or failed with EDISCONNECTED; none is lost or wrong. */
Test(reconnect, pipeline_killed_midway, .init = setup, .fini = teardown)
{
	aneshare_conn *c = h_connect(&D, "test-rolling");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in[N_ROLL], *out[N_ROLL];
	uint32_t t[N_ROLL];
	int rc[N_ROLL];
	h_mm_pairs(c, &mm, in, out, N_ROLL, 200);
	int waited = 0, ok = 0, lost = 0;
	cr_assert_eq(aneshare_set_reconnect_timeout(c, 0), 0);   /* one attempt per call */
	for (int i = 0; i < N_ROLL; i++) {
		if (i == N_ROLL / 2)
			h_daemon_crash(&D);   /* up to ROLL_DEPTH runs in flight */
		if (i - waited >= ROLL_DEPTH) {
			rc[waited] = aneshare_wait(c, t[waited]);
			waited++;
		}
		int r = aneshare_run_submit(p, 0, &in[i], 1, &out[i], 1, &t[i]);
		if (i >= N_ROLL / 2) {
			/* No daemon: submitting tries to reconnect and gives up. */
			cr_assert_eq(r, -ANESHARE_EDISCONNECTED, "%s", aneshare_strerror(r));
			rc[i] = r;
			t[i] = 0;
		} else {
			cr_assert_eq(r, 0, "%s", aneshare_last_error(c));
		}
	}
	for (; waited < N_ROLL / 2; waited++)
		rc[waited] = aneshare_wait(c, t[waited]);
	for (int i = 0; i < N_ROLL / 2; i++) {
		if (rc[i] == 0) {
			ok++;
			double err = h_mm_error(&mm, aneshare_surface_data(in[i]),
			                        aneshare_surface_data(out[i]));
			cr_assert_leq(err, H_MM_TOL, "run %d completed with relative error %g", i, err);
		} else {
			cr_assert_eq(rc[i], -ANESHARE_EDISCONNECTED, "run %d: %s", i,
			             aneshare_strerror(rc[i]));
			lost++;
		}
	}
	cr_assert_eq(ok + lost, N_ROLL / 2);
	cr_assert_geq(ok, N_ROLL / 2 - ROLL_DEPTH, "runs waited for before the kill completed");

	h_daemon_restart(&D, true);
	cr_assert_eq(aneshare_set_reconnect_timeout(c, 5000), 0);
	h_mm_run_check(p, &mm, in[0], out[0]);
	h_wait_counts(c, 2 * N_ROLL, 1);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- the daemon does not come back -------------------------------------------------- */

Test(reconnect, daemon_never_returns, .init = setup, .fini = teardown)
{
	setenv("ANESHARE_RECONNECT_TIMEOUT_MS", "300", 1);
	aneshare_conn *c = h_connect(&D, "test-gone");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in = h_surface(c, mm.in_bytes), *out = h_surface(c, mm.out_bytes);
	h_mm_fill(&mm, aneshare_surface_data(in), 31);
	h_daemon_crash(&D);

	int64_t t0 = tu_now_ms();
	aneshare_status *st = NULL;
	int r = aneshare_get_status(c, &st);
	int64_t took = tu_now_ms() - t0;
	cr_assert_eq(r, -ANESHARE_EDISCONNECTED, "%s", aneshare_strerror(r));
	cr_assert_null(st);
	cr_assert(aneshare_error_is_retryable(r));
	cr_assert_geq(took, 300, "gave up after %lld ms, before the timeout", (long long)took);
	cr_assert_lt(took, 3000, "took %lld ms for a 300 ms timeout", (long long)took);
	cr_assert(strstr(aneshare_last_error(c), "reconnecting") &&
	          strstr(aneshare_last_error(c), D.sock), "%s", aneshare_last_error(c));

	t0 = tu_now_ms();
	r = aneshare_run(p, 0, &in, 1, &out, 1);
	cr_assert_eq(r, -ANESHARE_EDISCONNECTED, "%s", aneshare_strerror(r));
	cr_assert_geq(tu_now_ms() - t0, 300);

	/* Local calls and releases still work on a broken connection. */
	aneshare_surface *extra = NULL;
	r = aneshare_surface_create(c, 64, &extra);
	cr_assert_eq(r, -ANESHARE_EDISCONNECTED);
	cr_assert_null(extra);
	cr_assert_eq(aneshare_surface_size(in), mm.in_bytes);

	/* ... and once a daemon is back, the connection recovers. */
	h_daemon_restart(&D, true);
	h_mm_run_check(p, &mm, in, out);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

Test(reconnect, release_while_broken, .init = setup, .fini = teardown)
{
	int fds0 = h_count_fds();
	aneshare_conn *c = h_connect(&D, "test-release-broken");
	cr_assert_eq(aneshare_set_reconnect_timeout(c, 0), 0);
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_program *p2 = h_compile_mm(c, &mm, NULL);
	aneshare_surface *a = h_surface(c, 4096), *b = h_surface(c, 8192);
	h_daemon_crash(&D);

	/* Releases do not reconnect: the daemon's side died with the connection. */
	cr_assert_eq(aneshare_surface_release(a), 0);
	cr_assert_eq(aneshare_program_release(p2), 0);
	cr_assert_eq(aneshare_reconnect_count(c), 0);
	/* Releasing a found the socket broken and closed it: b's memfd is left. */
	cr_assert_eq(h_count_fds(), fds0 + 1, "%d fds more than before", h_count_fds() - fds0);

	h_daemon_restart(&D, true);
	aneshare_status *st = h_status(c);   /* reconnects: only what is still held comes back */
	cr_assert_eq(st->surfaces, 1);
	cr_assert_eq(st->surface_bytes, 8192);
	cr_assert_eq(st->programs, 1);
	aneshare_status_free(st);
	cr_assert_eq(aneshare_reconnect_count(c), 1);
	cr_assert_eq(aneshare_surface_release(b), 0);
	cr_assert_eq(aneshare_program_release(p), 0);
	h_wait_counts(c, 0, 0);
	aneshare_disconnect(c);
	cr_assert_eq(h_count_fds(), fds0);
	h_daemon_stop(&D);
}

/* ---- opting out: the -ECONNRESET path ----------------------------------------------- */

Test(reconnect, opt_out_gets_econnreset, .init = setup, .fini = teardown)
{
	aneshare_conn *c = h_connect(&D, "test-optout");
	aneshare_conn *idle = h_connect(&D, "test-optout-idle");
	cr_assert_eq(aneshare_set_reconnect(c, false), 0);
	cr_assert_eq(aneshare_set_reconnect(idle, false), 0);
	cr_assert_eq(aneshare_set_reconnect(NULL, false), -EINVAL);
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in = h_surface(c, mm.in_bytes), *out = h_surface(c, mm.out_bytes);
	h_mm_fill(&mm, aneshare_surface_data(in), 41);

	/* A run in flight: the daemon's EOF is seen while reading. */
	stop_daemon_process(&D);
	uint32_t t;
	cr_assert_eq(aneshare_run_submit(p, 0, &in, 1, &out, 1, &t), 0);
	h_daemon_crash(&D);
	int r = aneshare_wait(c, t);
	cr_assert_eq(r, -ECONNRESET, "%s", aneshare_strerror(r));
	cr_assert(!aneshare_error_is_retryable(r));

	/* An idle connection: the broken pipe is seen while writing.  No error
	 * notification came: the message says the daemon closed it. */
	aneshare_status *st = NULL;
	r = aneshare_get_status(idle, &st);
	cr_assert_eq(r, -ECONNRESET, "%s", aneshare_strerror(r));
	cr_assert_null(st);
	cr_assert(strstr(aneshare_last_error(idle), "closed the connection"), "%s",
	          aneshare_last_error(idle));

	/* Final, even with a daemon back. */
	h_daemon_restart(&D, true);
	r = aneshare_run(p, 0, &in, 1, &out, 1);
	cr_assert_eq(r, -ECONNRESET, "%s", aneshare_strerror(r));
	r = aneshare_get_status(idle, &st);
	cr_assert_eq(r, -ECONNRESET);
	cr_assert_eq(aneshare_reconnect_count(c), 0);

	/* Turned back on, the next call reconnects and restores. */
	cr_assert_eq(aneshare_set_reconnect(c, true), 0);
	h_mm_run_check(p, &mm, in, out);
	cr_assert_eq(aneshare_reconnect_count(c), 1);
	aneshare_disconnect(idle);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- a fake daemon: synchronous calls in flight -------------------------------------- */

/* Serves one connection at a time with plausible answers, counts every
 * request by method, and hangs up without answering on the first
 * `hangups` requests of method `hangup_on`. */
typedef struct fake {
	char dir[128], path[192];
	int listen_fd;
	pthread_t th;
	const char *hangup_on;
	unsigned hangups;
	int hangup_code;   /* > 0: an error notification with it before hanging up */
	unsigned conns;
	unsigned n_hello, n_status, n_compile, n_info, n_create, n_import, n_release, n_run;
	unsigned failures;
	uint32_t next_id;
} fake;

static void fake_tensor(msgpack_packer *pk, const char *name)
{
	msgpack_pack_map(pk, 4);
	anes_pack_str(pk, "name");
	anes_pack_str(pk, name);
	anes_pack_str(pk, "dtype");
	anes_pack_str(pk, "fp16");
	anes_pack_str(pk, "shape");
	msgpack_pack_array(pk, 2);
	msgpack_pack_uint32(pk, 1);
	msgpack_pack_uint32(pk, 4);
	anes_pack_str(pk, "bytes");
	msgpack_pack_uint32(pk, 8);
}

#define FAKE_KEY "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* Answer one request; false to hang up. */
static bool fake_answer(fake *fk, anes_io *io, const anes_msg *m, int *fds, unsigned nfds)
{
	char method[ANES_METHOD_MAX + 1];
	memcpy(method, m->method, m->method_len);
	method[m->method_len] = '\0';
	if (fk->hangup_on && fk->hangups && !strcmp(method, fk->hangup_on)) {
		fk->hangups--;
		/* Count it: it was received, just never answered. */
		if (!strcmp(method, "status"))
			fk->n_status++;
		else if (!strcmp(method, "program.compile"))
			fk->n_compile++;
		else if (!strcmp(method, "program.info"))
			fk->n_info++;
		else if (!strcmp(method, "run"))
			fk->n_run++;
		if (fk->hangup_code > 0) {
			anes_frame f;
			anes_frame_init(&f);
			anes_pack_notify(&f.pk, "error", 3);
			anes_pack_str(&f.pk, "code");
			msgpack_pack_uint32(&f.pk, (uint32_t)fk->hangup_code);
			anes_pack_str(&f.pk, "name");
			anes_pack_str(&f.pk, anes_wire_error_name(fk->hangup_code));
			anes_pack_str(&f.pk, "message");
			anes_pack_str(&f.pk, "closed by the fake daemon");
			h_fake_send(io, &f, NULL, 0);
		}
		return false;
	}
	anes_frame f;
	anes_frame_init(&f);
	int out_fd = -1;
	if (!strcmp(method, "hello")) {
		fk->n_hello++;
		anes_pack_result(&f.pk, m->msgid, 4);
		anes_pack_str(&f.pk, "protocol");
		msgpack_pack_uint32(&f.pk, 1);
		anes_pack_str(&f.pk, "server");
		anes_pack_str(&f.pk, "fake");
		anes_pack_str(&f.pk, "version");
		anes_pack_str(&f.pk, fk->conns == 1 ? "1.0" : "2.0");
		anes_pack_str(&f.pk, "backend");
		anes_pack_str(&f.pk, "cpu");
	} else if (!strcmp(method, "status")) {
		fk->n_status++;
		anes_pack_result(&f.pk, m->msgid, 10);
		anes_pack_str(&f.pk, "version");
		anes_pack_str(&f.pk, "x");
		anes_pack_str(&f.pk, "backend");
		anes_pack_str(&f.pk, "cpu");
		const char *keys[] = { "uptime_ms", "clients", "surfaces", "surface_bytes", "runs",
		                       "compiles", "cache_hits" };
		for (size_t i = 0; i < 7; i++) {
			anes_pack_str(&f.pk, keys[i]);
			msgpack_pack_uint32(&f.pk, fk->conns);
		}
		anes_pack_str(&f.pk, "programs");
		msgpack_pack_array(&f.pk, 0);
	} else if (!strcmp(method, "program.compile")) {
		fk->n_compile++;
		anes_pack_result(&f.pk, m->msgid, 3);
		anes_pack_str(&f.pk, "id");
		msgpack_pack_uint32(&f.pk, ++fk->next_id);
		anes_pack_str(&f.pk, "key");
		anes_pack_str(&f.pk, FAKE_KEY);
		anes_pack_str(&f.pk, "cached");
		msgpack_pack_false(&f.pk);
	} else if (!strcmp(method, "program.info")) {
		fk->n_info++;
		anes_pack_result(&f.pk, m->msgid, 2);
		anes_pack_str(&f.pk, "key");
		anes_pack_str(&f.pk, FAKE_KEY);
		anes_pack_str(&f.pk, "functions");
		msgpack_pack_array(&f.pk, 1);
		msgpack_pack_map(&f.pk, 3);
		anes_pack_str(&f.pk, "name");
		anes_pack_str(&f.pk, "main");
		anes_pack_str(&f.pk, "inputs");
		msgpack_pack_array(&f.pk, 1);
		fake_tensor(&f.pk, "x");
		anes_pack_str(&f.pk, "outputs");
		msgpack_pack_array(&f.pk, 1);
		fake_tensor(&f.pk, "y");
	} else if (!strcmp(method, "surface.create") || !strcmp(method, "surface.import")) {
		uint64_t size = 0;
		if (!strcmp(method, "surface.create")) {
			fk->n_create++;
			if (anes_mp_u64(m->params, "size", UINT32_MAX, &size) < 0 ||
			    anes_memfd_create("fake", size, &out_fd) < 0)
				fk->failures++;
		} else {
			fk->n_import++;
			if (nfds != 1 || anes_memfd_check(fds[0], &size) < 0)
				fk->failures++;
		}
		anes_pack_result(&f.pk, m->msgid, 2);
		anes_pack_str(&f.pk, "id");
		msgpack_pack_uint32(&f.pk, ++fk->next_id);
		anes_pack_str(&f.pk, "size");
		msgpack_pack_uint64(&f.pk, size);
	} else if (!strcmp(method, "surface.release") || !strcmp(method, "program.release")) {
		fk->n_release++;
		anes_pack_result(&f.pk, m->msgid, 0);
	} else if (!strcmp(method, "run")) {
		fk->n_run++;
		anes_pack_result(&f.pk, m->msgid, 1);
		anes_pack_str(&f.pk, "elapsed_us");
		msgpack_pack_uint32(&f.pk, 1);
	} else {
		fk->failures++;
		anes_pack_error(&f.pk, m->msgid, 4, "unknown method");
	}
	h_fake_send(io, &f, &out_fd, out_fd >= 0 ? 1 : 0);
	return true;
}

static void *fake_main(void *arg)
{
	fake *fk = arg;
	for (;;) {
		int fd = anes_accept_cloexec(fk->listen_fd);
		if (fd < 0)
			return NULL;   /* shut down */
		fk->conns++;
		anes_io io;
		anes_io_init(&io, fd, ANES_FRAME_MAX_DEFAULT);
		bool open = true;
		while (open) {
			const uint8_t *payload;
			uint32_t len;
			int fds[ANES_MAX_FDS_PER_FRAME];
			unsigned nfds = 0;
			int r = anes_io_next_frame(&io, &payload, &len, fds, &nfds);
			if (r < 0)
				break;
			if (r == 0) {
				if (anes_io_read(&io) <= 0)
					break;
				continue;
			}
			msgpack_zone z;
			anes_msg m;
			msgpack_zone_init(&z, 1024);
			if (anes_msg_decode(payload, len, &z, &m) == 0 && m.type == ANES_MSG_REQUEST)
				open = fake_answer(fk, &io, &m, fds, nfds);
			else
				fk->failures++;
			msgpack_zone_destroy(&z);
			for (unsigned i = 0; i < nfds; i++)
				close(fds[i]);
		}
		anes_io_cleanup(&io);
		close(fd);
	}
}

static void fake_start(fake *fk, const char *hangup_on, unsigned hangups)
{
	memset(fk, 0, sizeof *fk);
	const char *tmp = getenv("TMPDIR");
	snprintf(fk->dir, sizeof fk->dir, "%s/anes-fake-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	cr_assert(mkdtemp(fk->dir));
	snprintf(fk->path, sizeof fk->path, "%s/fake.sock", fk->dir);
	fk->hangup_on = hangup_on;
	fk->hangups = hangups;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strcpy(sa.sun_path, fk->path);
	fk->listen_fd = anes_socket_cloexec(AF_UNIX, SOCK_STREAM);
	cr_assert_geq(fk->listen_fd, 0);
	cr_assert_eq(bind(fk->listen_fd, (struct sockaddr *)&sa, sizeof sa), 0);
	cr_assert_eq(listen(fk->listen_fd, 4), 0);
	cr_assert_eq(pthread_create(&fk->th, NULL, fake_main, fk), 0);
}

/* After the client disconnected: stop accepting, join, check. */
static void fake_stop(fake *fk)
{
	shutdown(fk->listen_fd, SHUT_RDWR);   /* wakes accept() */
	pthread_join(fk->th, NULL);
	close(fk->listen_fd);
	unlink(fk->path);
	rmdir(fk->dir);
	cr_assert_eq(fk->failures, 0, "the fake daemon saw something unexpected");
}

static aneshare_conn *fake_connect(fake *fk)
{
	aneshare_conn *c = NULL;
	int r = aneshare_connect(fk->path, "victim", &c);
	cr_assert_eq(r, 0, "%s", aneshare_strerror(r));
	return c;
}

Test(reconnect, status_in_flight_is_sent_again)
{
	fake fk;
	fake_start(&fk, "status", 1);
	aneshare_conn *c = fake_connect(&fk);
	const aneshare_server_info *si = aneshare_server(c);
	const char *v1 = si->server_version;
	cr_assert_str_eq(v1, "1.0");
	aneshare_status *st = NULL;
	int r = aneshare_get_status(c, &st);
	cr_assert_eq(r, 0, "%s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_eq(st->clients, 2, "answered on the second connection");
	aneshare_status_free(st);
	cr_assert_eq(aneshare_reconnect_count(c), 1);
	cr_assert_str_eq(aneshare_server(c)->server_version, "2.0", "the new daemon's info");
	cr_assert_str_eq(v1, "1.0", "old strings stay valid");
	aneshare_disconnect(c);
	fake_stop(&fk);
	cr_assert_eq(fk.n_status, 2);
	cr_assert_eq(fk.n_hello, 2);
}

Test(reconnect, idempotent_call_is_sent_again_only_once)
{
	fake fk;
	fake_start(&fk, "status", 2);
	aneshare_conn *c = fake_connect(&fk);
	aneshare_status *st = NULL;
	int r = aneshare_get_status(c, &st);
	cr_assert_eq(r, -ANESHARE_EDISCONNECTED, "%s", aneshare_strerror(r));
	cr_assert_null(st);
	cr_assert(strstr(aneshare_last_error(c), "in flight"), "%s", aneshare_last_error(c));
	/* The app retries. */
	cr_assert_eq(aneshare_get_status(c, &st), 0);
	aneshare_status_free(st);
	aneshare_disconnect(c);
	fake_stop(&fk);
	cr_assert_eq(fk.n_status, 3);
	cr_assert_eq(fk.conns, 3);
}

Test(reconnect, compile_in_flight_is_sent_again)
{
	static const char *const steps[] = { "program.compile", "program.info" };
	for (int i = 0; i < 2; i++) {
		fake fk;
		fake_start(&fk, steps[i], 1);
		aneshare_conn *c = fake_connect(&fk);
		aneshare_program *p = NULL;
		int r = aneshare_program_compile(c, "program(1.3) {}", NULL, 0, &p, NULL);
		cr_assert_eq(r, 0, "%s: %s: %s", steps[i], aneshare_strerror(r), aneshare_last_error(c));
		cr_assert_str_eq(aneshare_program_key(p), FAKE_KEY);
		cr_assert_eq(aneshare_program_input_count(p, 0), 1);
		aneshare_disconnect(c);
		fake_stop(&fk);
		cr_assert_eq(fk.n_compile, 2, "%s", steps[i]);
		cr_assert_eq(fk.n_info, i == 0 ? 1 : 2, "%s", steps[i]);
	}
}

Test(reconnect, run_in_flight_is_not_sent_again)
{
	fake fk;
	fake_start(&fk, "run", 1);
	aneshare_conn *c = fake_connect(&fk);
	aneshare_program *p = NULL;
	cr_assert_eq(aneshare_program_compile(c, "program(1.3) {}", NULL, 0, &p, NULL), 0);
	aneshare_surface *x = NULL, *y = NULL;
	cr_assert_eq(aneshare_surface_create(c, 8, &x), 0);
	cr_assert_eq(aneshare_surface_create(c, 8, &y), 0);
	memcpy(aneshare_surface_data(x), "12345678", 8);
	uint32_t x_id = aneshare_surface_id(x);

	int r = aneshare_run(p, 0, &x, 1, &y, 1);
	cr_assert_eq(r, -ANESHARE_EDISCONNECTED, "%s", aneshare_strerror(r));
	cr_assert(aneshare_error_is_retryable(r));

	/* The retry reconnects: both surfaces are imported, the program compiled. */
	r = aneshare_run(p, 0, &x, 1, &y, 1);
	cr_assert_eq(r, 0, "%s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_neq(aneshare_surface_id(x), x_id, "a new ID on the new connection");
	cr_assert_eq(memcmp(aneshare_surface_data(x), "12345678", 8), 0);
	aneshare_disconnect(c);
	fake_stop(&fk);
	cr_assert_eq(fk.n_run, 2, "each run sent once");
	cr_assert_eq(fk.n_import, 2);
	cr_assert_eq(fk.n_compile, 2);
	cr_assert_eq(fk.n_create, 2);
}

/* The daemon closes a connection with an error notification `limit` or
 * `no_memory` for its own resources or a deadline (docs/protocol.md,
 * Limits): that is not final, the library reconnects and sends the call
 * again; `protocol` stays final. */
Test(reconnect, a_daemon_side_resource_close_is_not_final)
{
	static const int codes[] = { ANES_WERR_LIMIT, ANES_WERR_NO_MEMORY, ANES_WERR_PROTOCOL };
	for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
		fake fk;
		fake_start(&fk, "status", 1);
		fk.hangup_code = codes[i];
		aneshare_conn *c = fake_connect(&fk);
		aneshare_status *st = NULL;
		int r = aneshare_get_status(c, &st);
		if (codes[i] == ANES_WERR_PROTOCOL) {
			cr_assert_eq(r, -ANESHARE_EPROTOCOL, "%s", aneshare_strerror(r));
			cr_assert_eq(aneshare_reconnect_count(c), 0);
		} else {
			cr_assert_eq(r, 0, "code %d: %s: %s", codes[i], aneshare_strerror(r),
			             aneshare_last_error(c));
			aneshare_status_free(st);
			cr_assert_eq(aneshare_reconnect_count(c), 1);
		}
		aneshare_disconnect(c);
		fake_stop(&fk);
		cr_assert_eq(fk.conns, codes[i] == ANES_WERR_PROTOCOL ? 1 : 2);
	}
}
