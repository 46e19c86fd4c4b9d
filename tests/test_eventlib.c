/* SPDX-License-Identifier: MIT */
/*
 * Events through libaneshare (aneshare_event_*, aneshare_run_opts and the
 * _ex run calls; the daemon's side is tests/test_events.c), against a real
 * daemon: create / signal / wait / value, export and import across two
 * connections, a run parked on another connection's event whose output is
 * checked against the reference (so a run started before the signal would
 * fail), chains that wait and signal, closing, what a reconnect does to
 * events, and the argument checks the library makes before anything is
 * sent.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aneshare.h"
#include "daemon_harness.h"
#include "test_util.h"

static h_daemon D;

static void setup(void)
{
	h_daemon_start(&D);
}

static void teardown(void)
{
	h_daemon_kill(&D);
}

TestSuite(eventlib, .init = setup, .fini = teardown, .timeout = 120);

static aneshare_event *create_ok(aneshare_conn *c)
{
	aneshare_event *e = NULL;
	int r = aneshare_event_create(c, &e);
	cr_assert_eq(r, 0, "event_create: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_not_null(e);
	cr_assert_not(aneshare_event_imported(e));
	return e;
}

static uint64_t value_of(aneshare_conn *c, aneshare_event *e)
{
	uint64_t v = 0xdead;
	int r = aneshare_event_value(e, &v);
	cr_assert_eq(r, 0, "event_value: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	return v;
}

static void signal_ok(aneshare_conn *c, aneshare_event *e, uint64_t v)
{
	int r = aneshare_event_signal(e, v);
	cr_assert_eq(r, 0, "event_signal %llu: %s: %s", (unsigned long long)v, aneshare_strerror(r),
	             aneshare_last_error(c));
}

static aneshare_token export_ok(aneshare_conn *c, aneshare_event *e, uint32_t uses)
{
	aneshare_token t;
	uint64_t expires = 0;
	int r = aneshare_event_export(e, &(aneshare_export_opts){ .uses = uses }, &t, &expires);
	cr_assert_eq(r, 0, "event_export: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_eq(aneshare_token_check(t.text), 0);
	cr_assert_gt(expires, 0);
	return t;
}

static aneshare_event *import_ok(aneshare_conn *c, const aneshare_token *t)
{
	aneshare_event *e = NULL;
	int r = aneshare_event_import_token(c, t->text, &e);
	cr_assert_eq(r, 0, "event_import_token: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert(aneshare_event_imported(e));
	return e;
}

/* The daemon's runs served so far: what "nothing was sent" is checked by. */
static uint64_t runs_served(aneshare_conn *c)
{
	aneshare_status *st = h_status(c);
	uint64_t n = st->runs;
	aneshare_status_free(st);
	return n;
}

static void set_nan(aneshare_surface *s, size_t n)
{
	memset(aneshare_surface_data(s), 0xff, n);
}

static double mm_err(const h_mm *mm, aneshare_surface *in, aneshare_surface *out)
{
	return h_mm_error(mm, aneshare_surface_data(in), aneshare_surface_data(out));
}

/* ---- the calls ------------------------------------------------------------------------ */

Test(eventlib, create_signal_wait_and_value)
{
	cr_assert_str_eq(aneshare_strerror(-ANESHARE_ENO_SUCH_EVENT), "no_such_event");
	cr_assert_str_eq(aneshare_strerror(-ANESHARE_EEVENT_CLOSED), "event_closed");
	aneshare_conn *c = h_connect(&D, "events");
	aneshare_event *e = create_ok(c);
	cr_assert_eq(value_of(c, e), 0);
	signal_ok(c, e, 3);
	cr_assert_eq(value_of(c, e), 3);
	uint64_t v = 0;
	cr_assert_eq(aneshare_event_wait(e, 2, &v), 0, "%s", aneshare_last_error(c));
	cr_assert_eq(v, 3, "a wait for a value reached answers at once with the value now");
	cr_assert_eq(aneshare_event_wait(e, 3, NULL), 0, "ret_value may be NULL");
	/* the value only grows: not greater is refused, the message names the value now */
	int r = aneshare_event_signal(e, 3);
	cr_assert_eq(r, -ANESHARE_EINVALID_PARAMS, "%s", aneshare_strerror(r));
	cr_assert(strstr(aneshare_last_error(c), "3"), "%s", aneshare_last_error(c));
	cr_assert_eq(aneshare_event_signal(e, 1), -ANESHARE_EINVALID_PARAMS);
	signal_ok(c, e, UINT64_MAX);
	cr_assert_eq(value_of(c, e), UINT64_MAX);
	cr_assert_eq(aneshare_event_release(e), 0);
	cr_assert_eq(aneshare_event_release(NULL), 0);
	/* events of a connection not released are freed by disconnect (ASan: no leak) */
	(void)create_ok(c);
	aneshare_disconnect(c);
}

/* ---- two connections ---------------------------------------------------------------- */

typedef struct done_rec {
	int calls, rc;
} done_rec;

static void on_done(aneshare_conn *c, const aneshare_result *res, void *ud)
{
	(void)c;
	done_rec *d = ud;
	d->calls++;
	d->rc = res->rc;
}

typedef struct signaller {
	aneshare_conn *c;
	aneshare_event *e;
	uint64_t v;
	int rc;
} signaller;

static void *signal_thread(void *arg)
{
	signaller *s = arg;
	s->rc = aneshare_event_signal(s->e, s->v);
	return NULL;
}

Test(eventlib, an_event_is_shared_by_token_and_waited_for_on_the_other_connection)
{
	aneshare_conn *p = h_connect(&D, "owner"), *q = h_connect(&D, "waiter");
	aneshare_event *e = create_ok(p);
	signal_ok(p, e, 1);
	aneshare_token t = export_ok(p, e, 2);
	aneshare_event *qe = import_ok(q, &t);
	aneshare_event *qe2 = import_ok(q, &t);
	cr_assert_eq(value_of(q, qe), 1, "the importer sees the owner's value");

	/* a used-up token, and the wrong kind of token, are unknown tokens */
	aneshare_event *x = (aneshare_event *)(uintptr_t)0x5a5a;
	int r = aneshare_event_import_token(q, t.text, &x);
	cr_assert_eq(r, -ANESHARE_ENO_SUCH_EVENT, "%s", aneshare_strerror(r));
	cr_assert_eq((uintptr_t)x, 0x5a5a, "the out-parameter is written only on success");
	aneshare_surface *s = h_surface(p, 64);
	aneshare_token st;
	cr_assert_eq(aneshare_surface_export(s, NULL, &st, NULL), 0);
	cr_assert_eq(aneshare_event_import_token(q, st.text, &x), -ANESHARE_ENO_SUCH_EVENT);
	aneshare_token et = export_ok(p, e, 1);
	aneshare_surface *xs = NULL;
	cr_assert_eq(aneshare_surface_import_token(q, et.text, &xs), -ANESHARE_ENO_SUCH_SURFACE);

	/* an imported handle waits only: refused by the library, nothing sent */
	r = aneshare_event_signal(qe, 5);
	cr_assert_eq(r, -ANESHARE_EINVALID_PARAMS, "%s", aneshare_strerror(r));
	cr_assert(strstr(aneshare_last_error(q), "imported"), "%s", aneshare_last_error(q));
	cr_assert_eq(value_of(p, e), 1);

	/* an async wait completes when the owner signals */
	done_rec d = { 0, 1 };
	cr_assert_eq(aneshare_event_wait_async(qe, 4, on_done, &d), 0, "%s", aneshare_last_error(q));
	cr_assert_eq(aneshare_event_value(qe2, &(uint64_t){ 0 }), 0);   /* a blocking call meanwhile */
	cr_assert_eq(d.calls, 0, "not met yet: value 1 < 4");
	signal_ok(p, e, 4);
	while (d.calls == 0) {
		struct pollfd pf = { .fd = aneshare_fd(q), .events = POLLIN };
		cr_assert_geq(poll(&pf, 1, 10000), 1, "the wait's answer came");
		cr_assert_geq(aneshare_dispatch(q), 0);
	}
	cr_assert_eq(d.calls, 1);
	cr_assert_eq(d.rc, 0);

	/* a blocking wait met by another thread's signal (before or after it
	 * starts: the result is the same) */
	signaller sg = { p, e, 9, 1 };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, signal_thread, &sg), 0);
	uint64_t v = 0;
	r = aneshare_event_wait(qe2, 9, &v);
	pthread_join(th, NULL);
	cr_assert_eq(r, 0, "%s", aneshare_last_error(q));
	cr_assert_eq(sg.rc, 0);
	cr_assert_eq(v, 9);

	/* an importer may export too; its token gives a third handle */
	aneshare_token t3 = export_ok(q, qe, 1);
	aneshare_conn *o = h_connect(&D, "third");
	aneshare_event *oe = import_ok(o, &t3);
	cr_assert_eq(value_of(o, oe), 9);

	/* the owner releases: the event closes at 9 */
	cr_assert_eq(aneshare_event_release(e), 0);
	cr_assert_eq(aneshare_event_wait(qe, 9, &v), 0, "a value reached still answers");
	r = aneshare_event_wait(qe, 10, &v);
	cr_assert_eq(r, -ANESHARE_EEVENT_CLOSED, "%s", aneshare_strerror(r));
	cr_assert_eq(aneshare_event_wait(oe, 10, NULL), -ANESHARE_EEVENT_CLOSED);
	aneshare_disconnect(o);
	aneshare_disconnect(q);
	aneshare_disconnect(p);
}

/* ---- runs ------------------------------------------------------------------------------ */

Test(eventlib, a_run_parked_on_another_connections_event_runs_after_the_signal)
{
	aneshare_conn *p = h_connect(&D, "producer"), *q = h_connect(&D, "consumer");
	h_mm mm;
	aneshare_program *pq = h_compile_mm(q, &mm, NULL);
	aneshare_surface *in = h_surface(p, mm.in_bytes);
	set_nan(in, mm.in_bytes);   /* a run before the producer's write gives NaNs */
	aneshare_export_opts o = { 0 };
	aneshare_token st;
	cr_assert_eq(aneshare_surface_export(in, &o, &st, NULL), 0);
	aneshare_surface *qin = NULL;
	cr_assert_eq(aneshare_surface_import_token(q, st.text, &qin), 0);
	aneshare_surface *out = h_surface(q, mm.out_bytes);
	set_nan(out, mm.out_bytes);

	aneshare_event *written = create_ok(p);
	aneshare_token t = export_ok(p, written, 1);
	aneshare_event *qwritten = import_ok(q, &t);
	aneshare_event *done = create_ok(q);

	/* submitted ahead: parked until the producer's signal */
	aneshare_event_point w = { qwritten, 1 }, s = { done, 5 };
	aneshare_run_opts ro = { .wait = &w, .n_wait = 1, .signal = &s, .n_signal = 1 };
	uint32_t ticket;
	int r = aneshare_run_submit_ex(pq, &qin, 1, &out, 1, &ro, &ticket);
	cr_assert_eq(r, 0, "%s", aneshare_last_error(q));
	cr_assert_eq(value_of(q, done), 0, "not run yet");

	h_mm_fill(&mm, aneshare_surface_data(in), 11);
	signal_ok(p, written, 1);
	cr_assert_eq(aneshare_wait(q, ticket), 0, "%s", aneshare_last_error(q));
	double e = mm_err(&mm, in, out);
	cr_assert_leq(e, H_MM_TOL, "the run read what the producer wrote before its signal: %g", e);
	cr_assert_eq(value_of(q, done), 5, "signalled before the reply");

	/* the blocking form with a state-less function index, met already */
	h_mm_fill(&mm, aneshare_surface_data(in), 12);
	s.value = 6;
	set_nan(out, mm.out_bytes);
	cr_assert_eq(aneshare_run_ex(pq, &qin, 1, &out, 1, &ro), 0, "%s", aneshare_last_error(q));
	cr_assert_leq(mm_err(&mm, in, out), H_MM_TOL);
	cr_assert_eq(value_of(q, done), 6);

	/* the async form */
	w.value = 2;
	s.value = 7;
	done_rec d = { 0, 1 };
	cr_assert_eq(aneshare_run_async_ex(pq, &qin, 1, &out, 1, &ro, on_done, &d), 0);
	h_mm_fill(&mm, aneshare_surface_data(in), 13);
	set_nan(out, mm.out_bytes);
	signal_ok(p, written, 2);
	while (d.calls == 0) {
		struct pollfd pf = { .fd = aneshare_fd(q), .events = POLLIN };
		cr_assert_geq(poll(&pf, 1, 10000), 1);
		cr_assert_geq(aneshare_dispatch(q), 0);
	}
	cr_assert_eq(d.rc, 0);
	cr_assert_leq(mm_err(&mm, in, out), H_MM_TOL);

	/* the producer gives up: a run parked on a value never reached fails
	 * with event_closed, and nothing of it ran */
	w.value = 3;
	s.value = 8;
	set_nan(out, mm.out_bytes);
	r = aneshare_run_submit_ex(pq, &qin, 1, &out, 1, &ro, &ticket);
	cr_assert_eq(r, 0, "%s", aneshare_last_error(q));
	cr_assert_eq(aneshare_event_release(written), 0);
	r = aneshare_wait(q, ticket);
	cr_assert_eq(r, -ANESHARE_EEVENT_CLOSED, "%s: %s", aneshare_strerror(r), aneshare_last_error(q));
	cr_assert_eq(((const uint16_t *)aneshare_surface_data(out))[0], 0xffff, "the output was not written");
	cr_assert_eq(value_of(q, done), 7, "a failed run signals nothing");
	aneshare_disconnect(q);
	aneshare_disconnect(p);
}

Test(eventlib, a_chain_waits_before_its_first_step_and_signals_after_its_last)
{
	aneshare_conn *c = h_connect(&D, "chain");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in[2], *out[2];
	h_mm_pairs(c, &mm, in, out, 2, 21);
	aneshare_step steps[2] = { { p, 0, &in[0], 1, &out[0], 1 }, { p, 0, &in[1], 1, &out[1], 1 } };
	aneshare_event *go = create_ok(c), *a = create_ok(c), *b = create_ok(c);
	aneshare_event_point w = { go, 1 }, s[2] = { { a, 7 }, { b, 9 } };
	aneshare_run_opts o = { .wait = &w, .n_wait = 1, .signal = s, .n_signal = 2 };
	signal_ok(c, go, 1);
	int r = aneshare_run_chain_ex(c, steps, NULL, 2, &o);
	cr_assert_eq(r, 0, "%s", aneshare_last_error(c));
	cr_assert_leq(mm_err(&mm, in[0], out[0]), H_MM_TOL);
	cr_assert_leq(mm_err(&mm, in[1], out[1]), H_MM_TOL);
	cr_assert_eq(value_of(c, a), 7);
	cr_assert_eq(value_of(c, b), 9);

	/* a chain's function and state are its steps': refused in the options */
	o.function = 1;
	cr_assert_eq(aneshare_run_chain_ex(c, steps, NULL, 2, &o), -EINVAL);
	o.function = 0;
	/* a signal value not above the event's value now: the daemon refuses the
	 * whole chain before anything runs */
	set_nan(out[0], mm.out_bytes);
	r = aneshare_run_chain_ex(c, steps, NULL, 2, &o);
	cr_assert_eq(r, -ANESHARE_EINVALID_PARAMS, "%s", aneshare_strerror(r));
	cr_assert_eq(aneshare_last_failed_step(c), -1, "not a step's error");
	cr_assert_eq(((const uint16_t *)aneshare_surface_data(out[0]))[0], 0xffff, "nothing ran");
	aneshare_disconnect(c);
}

/* ---- the library's checks ------------------------------------------------------------ */

Test(eventlib, bad_arguments_are_refused_before_anything_is_sent)
{
	aneshare_conn *c = h_connect(&D, "checks"), *other = h_connect(&D, "other");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in, *out;
	h_mm_pairs(c, &mm, &in, &out, 1, 31);
	aneshare_event *e = create_ok(c), *f = create_ok(c), *foreign = create_ok(other);
	aneshare_token t = export_ok(c, e, 1);
	aneshare_event *imp = import_ok(c, &t);   /* a wait-only handle on the owner's own connection */
	aneshare_event *x = (aneshare_event *)(uintptr_t)0x5a5a;
	uint64_t v = 0x77;
	aneshare_token tok;

	cr_assert_eq(aneshare_event_create(NULL, &x), -EINVAL);
	cr_assert_eq(aneshare_event_create(c, NULL), -EINVAL);
	cr_assert_eq(aneshare_event_signal(NULL, 1), -EINVAL);
	cr_assert_eq(aneshare_event_wait(NULL, 1, &v), -EINVAL);
	cr_assert_eq(aneshare_event_value(NULL, &v), -EINVAL);
	cr_assert_eq(aneshare_event_value(e, NULL), -EINVAL);
	cr_assert_eq(aneshare_event_wait_async(NULL, 1, on_done, NULL), -EINVAL);
	cr_assert_eq(aneshare_event_wait_async(e, 1, NULL, NULL), -EINVAL);
	cr_assert_eq(aneshare_event_export(NULL, NULL, &tok, NULL), -EINVAL);
	cr_assert_eq(aneshare_event_export(e, NULL, NULL, NULL), -EINVAL);
	cr_assert_eq(aneshare_event_import_token(NULL, t.text, &x), -EINVAL);
	cr_assert_eq(aneshare_event_import_token(c, t.text, NULL), -EINVAL);
	cr_assert_eq(v, 0x77, "out-parameters untouched");
	cr_assert_not(aneshare_event_imported(NULL));

	/* bad token text: refused here, so the daemon counts no failed import
	 * (more than a few of those would slow the connection down and close it) */
	static const char *const bad[] = {
		NULL, "", "0123", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF",
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0",
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg",
	};
	for (int round = 0; round < 4; round++)
		for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
			int r = aneshare_event_import_token(c, bad[i], &x);
			cr_assert_eq(r, -EINVAL, "%s: %s", bad[i] ? bad[i] : "(null)", aneshare_strerror(r));
			cr_assert(strstr(aneshare_last_error(c), "64 lowercase hex"), "%s", aneshare_last_error(c));
		}
	cr_assert_eq((uintptr_t)x, 0x5a5a);
	cr_assert_eq(aneshare_reconnect_count(c), 0, "never closed for failed imports");

	/* runs: each of these fails before it is sent */
	uint64_t before = runs_served(c);
	aneshare_event_point nine[9];
	for (int i = 0; i < 9; i++)
		nine[i] = (aneshare_event_point){ i % 2 ? e : f, 0 };
	struct {
		aneshare_run_opts o;
		int want;
		const char *msg;
	} cases[] = {
		{ { .wait = nine, .n_wait = 9 }, -EINVAL, "at most 8" },
		{ { .signal = nine, .n_signal = 9 }, -EINVAL, "at most 8" },
		{ { .wait = NULL, .n_wait = 1 }, -EINVAL, "no wait array" },
		{ { .wait = (aneshare_event_point[]){ { NULL, 1 } }, .n_wait = 1 }, -EINVAL, "NULL" },
		{ { .wait = (aneshare_event_point[]){ { foreign, 1 } }, .n_wait = 1 }, -EINVAL,
		  "another connection" },
		{ { .signal = (aneshare_event_point[]){ { imp, 1 } }, .n_signal = 1 }, -ANESHARE_EINVALID_PARAMS,
		  "imported" },
		{ { .wait = (aneshare_event_point[]){ { e, 1 }, { f, 1 }, { e, 2 } }, .n_wait = 3 },
		  -ANESHARE_EINVALID_PARAMS, "twice" },
		{ { .signal = (aneshare_event_point[]){ { e, 1 }, { e, 2 } }, .n_signal = 2 },
		  -ANESHARE_EINVALID_PARAMS, "twice" },
		{ { .reserved = { 0, 0, 1, 0 } }, -EINVAL, "reserved" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		uint32_t ticket = 0xabc;
		int r = aneshare_run_ex(p, &in, 1, &out, 1, &cases[i].o);
		cr_assert_eq(r, cases[i].want, "case %zu: %s: %s", i, aneshare_strerror(r), aneshare_last_error(c));
		cr_assert(strstr(aneshare_last_error(c), cases[i].msg), "case %zu: %s", i, aneshare_last_error(c));
		cr_assert_eq(aneshare_run_submit_ex(p, &in, 1, &out, 1, &cases[i].o, &ticket), cases[i].want);
		cr_assert_eq(ticket, 0xabc);
		cr_assert_eq(aneshare_run_async_ex(p, &in, 1, &out, 1, &cases[i].o, on_done, NULL), cases[i].want);
		aneshare_step st = { p, 0, &in, 1, &out, 1 };
		cr_assert_eq(aneshare_run_chain_ex(c, &st, NULL, 1, &cases[i].o), cases[i].want, "case %zu", i);
	}
	cr_assert_eq(aneshare_run_submit_ex(p, &in, 1, &out, 1, NULL, NULL), -EINVAL);
	cr_assert_eq(aneshare_run_async_ex(p, &in, 1, &out, 1, NULL, NULL, NULL), -EINVAL);
	cr_assert_eq(aneshare_run_ex(NULL, &in, 1, &out, 1, NULL), -EINVAL);
	cr_assert_eq(aneshare_run_chain_ex(NULL, NULL, NULL, 1, NULL), -EINVAL);
	cr_assert_eq(runs_served(c), before, "no run reached the daemon");
	cr_assert_eq(aneshare_async_outstanding(c), 0);

	/* 8 entries in each list are fine (an imported handle among the waits);
	 * NULL options are a plain run */
	aneshare_event *ev8[8];
	aneshare_event_point w8[8], s8[8];
	for (int i = 0; i < 8; i++) {
		ev8[i] = create_ok(c);
		w8[i] = (aneshare_event_point){ i == 0 ? imp : i == 1 ? f : create_ok(c), 0 };
		s8[i] = (aneshare_event_point){ ev8[i], 1 };
	}
	aneshare_run_opts ok8 = { .wait = w8, .n_wait = 8, .signal = s8, .n_signal = 8 };
	cr_assert_eq(aneshare_run_ex(p, &in, 1, &out, 1, &ok8), 0, "%s", aneshare_last_error(c));
	for (int i = 0; i < 8; i++)
		cr_assert_eq(value_of(c, ev8[i]), 1);
	h_mm_run_check(p, &mm, in, out);
	cr_assert_eq(aneshare_run_ex(p, &in, 1, &out, 1, NULL), 0);
	cr_assert_eq(runs_served(c), before + 3);
	aneshare_disconnect(other);
	aneshare_disconnect(c);
}

/* ---- reconnecting -------------------------------------------------------------------- */

Test(eventlib, events_made_before_a_reconnect_are_closed)
{
	aneshare_conn *c = h_connect(&D, "restarts");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in, *out;
	h_mm_pairs(c, &mm, &in, &out, 1, 41);
	aneshare_event *e = create_ok(c), *kept = create_ok(c);
	signal_ok(c, e, 2);
	aneshare_token t = export_ok(c, e, 1);
	aneshare_event *imp = import_ok(c, &t);

	h_daemon_crash(&D);
	h_daemon_restart(&D, true);
	/* the next call reconnects; the surfaces and the program come back */
	h_mm_run_check(p, &mm, in, out);
	cr_assert_eq(aneshare_reconnect_count(c), 1);

	uint64_t v = 0x77;
	aneshare_token tok;
	cr_assert_eq(aneshare_event_signal(e, 3), -ANESHARE_EEVENT_CLOSED);
	cr_assert(strstr(aneshare_last_error(c), "restarted"), "%s", aneshare_last_error(c));
	cr_assert_eq(aneshare_event_wait(e, 1, &v), -ANESHARE_EEVENT_CLOSED);
	cr_assert_eq(aneshare_event_value(imp, &v), -ANESHARE_EEVENT_CLOSED);
	cr_assert_eq(aneshare_event_export(e, NULL, &tok, NULL), -ANESHARE_EEVENT_CLOSED);
	cr_assert_eq(aneshare_event_wait_async(imp, 1, on_done, NULL), -ANESHARE_EEVENT_CLOSED);
	cr_assert_eq(v, 0x77);
	uint64_t before = runs_served(c);
	aneshare_event_point w = { imp, 1 }, s = { kept, 1 };
	int r = aneshare_run_ex(p, &in, 1, &out, 1, &(aneshare_run_opts){ .wait = &w, .n_wait = 1 });
	cr_assert_eq(r, -ANESHARE_EEVENT_CLOSED, "%s", aneshare_strerror(r));
	r = aneshare_run_ex(p, &in, 1, &out, 1, &(aneshare_run_opts){ .signal = &s, .n_signal = 1 });
	cr_assert_eq(r, -ANESHARE_EEVENT_CLOSED, "%s", aneshare_strerror(r));
	cr_assert_eq(runs_served(c), before, "refused before it was sent");
	cr_assert_eq(aneshare_event_release(e), 0, "released locally");
	cr_assert_eq(aneshare_event_release(imp), 0);

	/* new events work on the new daemon */
	aneshare_event *n = create_ok(c);
	s.event = n;
	cr_assert_eq(aneshare_run_ex(p, &in, 1, &out, 1, &(aneshare_run_opts){ .signal = &s, .n_signal = 1 }),
	             0, "%s", aneshare_last_error(c));
	cr_assert_eq(value_of(c, n), 1);
	aneshare_disconnect(c);   /* frees `kept` */
}
