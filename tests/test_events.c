/* SPDX-License-Identifier: MIT */
/*
 * Events, the daemon's side (docs/protocol.md "Events"): event.create,
 * signal, wait, export, import, release, and runs that wait and signal,
 * on raw connections against a real aneshared (in process, and with a
 * device worker).  Outputs are checked against a product computed here;
 * time is the daemon's injected clock wherever a rule depends on it.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "anes_clock.h"
#include "anes_fp16.h"
#include "anes_proto.h"
#include "daemon_harness.h"

static h_daemon D;

static void fini(void)
{
	h_daemon_kill(&D);
}

#define N 4                     /* the square matmul's side */
#define TENSOR_BYTES (N * N * 2)
#define TOK_LEN 64

/* ---- a raw client ---------------------------------------------------------------- */

typedef struct rep {
	int code;                   /* 0, the wire error code, -1: closed, -2: timed out */
	char msg[256];
	int64_t failed_step;
	uint64_t id, value, expires_ms;
	char token[TOK_LEN + 1];
	int fd;                     /* the first fd that came with it (the caller's), or -1 */
} rep;

typedef void (*result_fn)(const msgpack_object *result, void *ud);

static uint32_t next_msgid = 100;

/* Responses read while waiting for another one: kept for their turn. */
#define STASH_MAX 1024
static struct stashed {
	const h_rconn *rc;
	uint32_t msgid;
	rep r;
} stash[STASH_MAX];
static unsigned n_stash;

static bool unstash(const h_rconn *rc, bool any, uint32_t msgid, uint32_t *ret_msgid, rep *out)
{
	for (unsigned i = 0; i < n_stash; i++) {
		if (stash[i].rc != rc || (!any && stash[i].msgid != msgid))
			continue;
		*out = stash[i].r;
		if (ret_msgid)
			*ret_msgid = stash[i].msgid;
		stash[i] = stash[--n_stash];
		return true;
	}
	return false;
}

/* The next response on rc: 1 with *ret_msgid and out (fn sees a success's
 * result), or out->code -1 (closed) / -2 (timed out) and 0. */
static int read_rep(h_rconn *rc, int timeout_ms, uint32_t *ret_msgid, rep *out, result_fn fn,
                    void *ud)
{
	memset(out, 0, sizeof(*out));
	out->fd = -1;
	out->failed_step = -1;
	for (;;) {
		const uint8_t *p;
		uint32_t len;
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nfds;
		int r = h_rconn_frame_fds(rc, timeout_ms, &p, &len, fds, &nfds);
		if (r <= 0) {
			out->code = r == -ETIMEDOUT ? -2 : -1;
			return 0;
		}
		msgpack_zone zone;
		msgpack_zone_init(&zone, 1024);
		anes_msg m;
		cr_assert_eq(anes_msg_decode(p, len, &zone, &m), 0, "a response that does not decode");
		bool resp = m.type == ANES_MSG_RESPONSE;
		if (resp && m.error) {
			h_msg_error_of(&m, &out->code, out->msg, sizeof(out->msg), &out->failed_step);
		} else if (resp) {
			(void)anes_mp_u64(m.result, "id", UINT64_MAX, &out->id);
			(void)anes_mp_u64(m.result, "value", UINT64_MAX, &out->value);
			(void)anes_mp_u64(m.result, "expires_ms", UINT64_MAX, &out->expires_ms);
			h_map_str(m.result, "token", out->token, sizeof(out->token));
			if (fn)
				fn(m.result, ud);
		}
		*ret_msgid = m.msgid;
		msgpack_zone_destroy(&zone);
		out->fd = h_fds_keep_first(fds, nfds, resp);
		if (resp)
			return 1;
	}
}

/* The response to msgid into out (others read meanwhile are stashed). */
static void wait_rep(h_rconn *rc, uint32_t msgid, int timeout_ms, rep *out, result_fn fn, void *ud)
{
	if (unstash(rc, false, msgid, NULL, out))
		return;
	for (;;) {
		uint32_t got;
		if (read_rep(rc, timeout_ms, &got, out, fn, ud) == 0 || got == msgid)
			return;
		cr_assert_lt(n_stash, STASH_MAX);
		if (out->fd >= 0)
			close(out->fd);
		stash[n_stash++] = (struct stashed){ .rc = rc, .msgid = got, .r = *out };
	}
}

/* The next response, whatever its msgid (a stashed one first). */
static void wait_any(h_rconn *rc, uint32_t *ret_msgid, rep *out)
{
	if (unstash(rc, true, 0, ret_msgid, out))
		return;
	cr_assert_eq(read_rep(rc, 10000, ret_msgid, out, NULL, NULL), 1, "no response (%d)", out->code);
	if (out->fd >= 0)
		close(out->fd);
}

/* Send method with params b (NULL: {}): its msgid. */
static uint32_t send_req(h_rconn *rc, const char *method, h_pbuf *b)
{
	uint32_t id = next_msgid++;
	cr_assert_eq(h_raw_request(rc->fd, id, method, b ? b->sb.data : NULL, b ? b->sb.size : 0,
	                           NULL, 0), 0, "sending %s", method);
	if (b)
		msgpack_sbuffer_destroy(&b->sb);
	return id;
}

static rep call_fn(h_rconn *rc, const char *method, h_pbuf *b, result_fn fn, void *ud)
{
	uint32_t id = send_req(rc, method, b);
	rep r;
	wait_rep(rc, id, 10000, &r, fn, ud);
	return r;
}

static rep call(h_rconn *rc, const char *method, h_pbuf *b)
{
	return call_fn(rc, method, b, NULL, NULL);
}

static rep call_u(h_rconn *rc, const char *method, const char *key, uint64_t v)
{
	h_pbuf b;
	h_pk_kv_u(h_pb_begin(&b, 1), key, v);
	return call(rc, method, &b);
}

static rep call_uu(h_rconn *rc, const char *method, uint64_t id, uint64_t value)
{
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 2);
	h_pk_kv_u(pk, "id", id);
	h_pk_kv_u(pk, "value", value);
	return call(rc, method, &b);
}

static uint32_t send_uu(h_rconn *rc, const char *method, uint64_t id, uint64_t value)
{
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 2);
	h_pk_kv_u(pk, "id", id);
	h_pk_kv_u(pk, "value", value);
	return send_req(rc, method, &b);
}

/* ---- events ------------------------------------------------------------------------ */

static uint32_t ev_create(h_rconn *rc)
{
	rep r = call(rc, "event.create", NULL);
	cr_assert_eq(r.code, 0, "event.create: %d %s", r.code, r.msg);
	cr_assert_gt(r.id, 0);
	return (uint32_t)r.id;
}

static void ev_signal(h_rconn *rc, uint32_t id, uint64_t v)
{
	rep r = call_uu(rc, "event.signal", id, v);
	cr_assert_eq(r.code, 0, "event.signal %u %llu: %d %s", id, (unsigned long long)v, r.code, r.msg);
}

/* uses / ttl: 0 absent. */
static rep ev_export(h_rconn *rc, uint32_t id, uint64_t uses, uint64_t ttl)
{
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 1 + (uses != 0) + (ttl != 0));
	h_pk_kv_u(pk, "id", id);
	if (uses)
		h_pk_kv_u(pk, "uses", uses);
	if (ttl)
		h_pk_kv_u(pk, "ttl_ms", ttl);
	return call(rc, "event.export", &b);
}

static rep import_tok(h_rconn *rc, const char *method, const char *token)
{
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 1);
	h_pk_str(pk, "token");
	h_pk_str(pk, token);
	return call(rc, method, &b);
}

/* A wait-only handle on `to` for `from`'s event id. */
static uint32_t share_event(h_rconn *from, uint32_t id, h_rconn *to)
{
	rep t = ev_export(from, id, 0, 0);
	cr_assert_eq(t.code, 0, "event.export: %s", t.msg);
	cr_assert_eq(strlen(t.token), TOK_LEN);
	rep r = import_tok(to, "event.import", t.token);
	cr_assert_eq(r.code, 0, "event.import: %d %s", r.code, r.msg);
	return (uint32_t)r.id;
}

/* ---- the program: z = x @ y on [1, 1, 4, 4] fp16 ------------------------------------ */

static uint32_t compile_fn(h_rconn *rc, const char *fn)
{
	char *mil = h_square_mm_mil(N, fn);
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 1);
	h_pk_str(pk, "mil");
	h_pk_str(pk, mil);
	rep r = call(rc, "program.compile", &b);
	free(mil);
	cr_assert_eq(r.code, 0, "program.compile: %d %s", r.code, r.msg);
	return (uint32_t)r.id;
}

typedef struct surf {
	uint32_t id;
	uint16_t *map;
} surf;

static surf mk_surface(h_rconn *rc)
{
	rep r = call_u(rc, "surface.create", "size", TENSOR_BYTES);
	cr_assert_eq(r.code, 0, "surface.create: %s", r.msg);
	cr_assert_geq(r.fd, 0);
	void *p = mmap(NULL, TENSOR_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd, 0);
	cr_assert_neq(p, MAP_FAILED);
	close(r.fd);
	return (surf){ .id = (uint32_t)r.id, .map = p };
}

/* A handle on `to` for from's surface s (read-write), mapped. */
static surf share_surface(h_rconn *from, const surf *s, h_rconn *to)
{
	h_pbuf b;
	h_pk_kv_u(h_pb_begin(&b, 1), "id", s->id);
	rep t = call(from, "surface.export", &b);
	cr_assert_eq(t.code, 0, "surface.export: %s", t.msg);
	rep r = import_tok(to, "surface.import", t.token);
	cr_assert_eq(r.code, 0, "surface.import: %d %s", r.code, r.msg);
	void *p = mmap(NULL, TENSOR_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd, 0);
	cr_assert_neq(p, MAP_FAILED);
	close(r.fd);
	return (surf){ .id = (uint32_t)r.id, .map = p };
}

static void fill(uint16_t *t, unsigned seed)
{
	for (unsigned i = 0; i < N * N; i++)
		t[i] = anes_f32_to_f16((float)((i * 7 + seed * 3) % 5));
}

static void fill_nan(uint16_t *t)
{
	for (unsigned i = 0; i < N * N; i++)
		t[i] = 0x7e00;
}

/* ref = x @ y in float (small integers: exact in fp16). */
static void mm_ref(const uint16_t *x, const uint16_t *y, float *ref)
{
	for (unsigned r = 0; r < N; r++)
		for (unsigned c = 0; c < N; c++) {
			float s = 0;
			for (unsigned k = 0; k < N; k++)
				s += anes_f16_to_f32(x[r * N + k]) * anes_f16_to_f32(y[k * N + c]);
			ref[r * N + c] = s;
		}
}

static void check_eq(const uint16_t *z, const float *ref, const char *what)
{
	for (unsigned i = 0; i < N * N; i++)
		cr_assert_eq(anes_f16_to_f32(z[i]), ref[i], "%s: [%u] = %g, expected %g", what, i,
		             (double)anes_f16_to_f32(z[i]), (double)ref[i]);
}

static bool all_nan(const uint16_t *z)
{
	for (unsigned i = 0; i < N * N; i++)
		if (z[i] != 0x7e00)
			return false;
	return true;
}

typedef struct evref {
	uint32_t event;
	uint64_t value;
} evref;

static void pk_events(msgpack_packer *pk, const char *key, const evref *e, unsigned n)
{
	h_pk_str(pk, key);
	msgpack_pack_array(pk, n);
	for (unsigned i = 0; i < n; i++) {
		msgpack_pack_map(pk, 2);
		h_pk_kv_u(pk, "event", e[i].event);
		h_pk_kv_u(pk, "value", e[i].value);
	}
}

/* Send run {program, inputs [x, y], outputs [z], wait?, signal?}: its msgid. */
static uint32_t send_run(h_rconn *rc, uint32_t prog, uint32_t x, uint32_t y, uint32_t z,
                         const evref *wait, unsigned n_wait, const evref *sig, unsigned n_sig)
{
	uint32_t in[2] = { x, y }, out[1] = { z };
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 3 + (wait != NULL) + (sig != NULL));
	h_pk_kv_u(pk, "program", prog);
	h_pk_ids(pk, "inputs", in, 2);
	h_pk_ids(pk, "outputs", out, 1);
	if (wait)
		pk_events(pk, "wait", wait, n_wait);
	if (sig)
		pk_events(pk, "signal", sig, n_sig);
	return send_req(rc, "run", &b);
}

static rep run_ev(h_rconn *rc, uint32_t prog, uint32_t x, uint32_t y, uint32_t z,
                  const evref *wait, unsigned n_wait, const evref *sig, unsigned n_sig)
{
	uint32_t id = send_run(rc, prog, x, y, z, wait, n_wait, sig, n_sig);
	rep r;
	wait_rep(rc, id, 10000, &r, NULL, NULL);
	return r;
}

/* ---- status ------------------------------------------------------------------------ */

typedef struct st_info {
	uint64_t clients, events, surfaces, runs, event_runs;
	uint64_t my_events, my_jobs, my_queued;   /* this process's */
} st_info;

static void read_status(const msgpack_object *res, void *ud)
{
	st_info *st = ud;
	st->clients = h_map_u64(res, "clients");
	st->events = h_map_u64(res, "events");
	st->surfaces = h_map_u64(res, "surfaces");
	st->runs = h_map_u64(res, "runs");
	st->event_runs = h_map_u64(res, "event_runs");
	const msgpack_object *procs = anes_mp_get(res, "processes");
	cr_assert(procs && procs->type == MSGPACK_OBJECT_ARRAY);
	for (uint32_t i = 0; i < procs->via.array.size; i++) {
		const msgpack_object *p = &procs->via.array.ptr[i];
		if (h_map_u64(p, "pid") != (uint64_t)getpid())
			continue;
		st->my_events = h_map_u64(p, "events");
		st->my_jobs = h_map_u64(p, "jobs");
		st->my_queued = h_map_u64(p, "queued");
	}
}

static st_info status(h_rconn *rc)
{
	st_info st = { 0 };
	rep r = call_fn(rc, "status", NULL, read_status, &st);
	cr_assert_eq(r.code, 0);
	cr_assert_neq(st.events, UINT64_MAX, "status has no events");
	return st;
}

/* Poll status (bounded) until clients and events are as given. */
static st_info wait_status(h_rconn *rc, uint64_t clients, uint64_t events)
{
	st_info st;
	for (int i = 0; i < 1000 * h_slow(); i++) {
		st = status(rc);
		if (st.clients == clients && st.events == events)
			return st;
		usleep(10000);
	}
	cr_assert_fail("status: clients %llu events %llu, expected %llu and %llu",
	               (unsigned long long)st.clients, (unsigned long long)st.events,
	               (unsigned long long)clients, (unsigned long long)events);
	return st;
}

/* ---- fixtures ------------------------------------------------------------------------ */

static void start(bool worker, const char *const *more)
{
#if !defined(__linux__)
	cr_skip_test("the raw client maps memfds (Linux)");
#endif
	h_daemon_start_worker(&D, worker, more);
}

#define TEST_BOTH(name, fn)                               \
	Test(events, name, .fini = fini) { fn(false); }   \
	Test(events, name##_worker, .fini = fini) { fn(true); }

/* ---- the methods ----------------------------------------------------------------------- */

Test(events, signal_and_wait_values, .fini = fini)
{
	start(false, NULL);
	h_rconn a;
	h_rconn_open(&a, D.sock);
	uint32_t e = ev_create(&a), f = ev_create(&a);
	cr_assert_neq(e, f, "IDs are not reused");
	/* At 0: a wait for 0 is met at once, with the value then. */
	rep r = call_uu(&a, "event.wait", e, 0);
	cr_assert_eq(r.code, 0);
	cr_assert_eq(r.value, 0);
	/* Wait before the signal: answered when it comes, with the value reached. */
	uint32_t w = send_uu(&a, "event.wait", e, 3);
	ev_signal(&a, e, 2);
	ev_signal(&a, e, 5);
	wait_rep(&a, w, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	cr_assert_eq(r.value, 5);
	/* Wait after: at once. */
	r = call_uu(&a, "event.wait", e, 4);
	cr_assert_eq(r.code, 0);
	cr_assert_eq(r.value, 5);
	/* A signal must raise it: the message names the value now. */
	r = call_uu(&a, "event.signal", e, 5);
	cr_assert_eq(r.code, ANES_WERR_INVALID_PARAMS);
	cr_assert(strstr(r.msg, "5"), "%s", r.msg);
	r = call_uu(&a, "event.signal", e, 1);
	cr_assert_eq(r.code, ANES_WERR_INVALID_PARAMS);
	ev_signal(&a, e, UINT64_MAX);
	r = call_uu(&a, "event.wait", e, UINT64_MAX);
	cr_assert_eq(r.value, UINT64_MAX);
	/* The other event did not move. */
	r = call_uu(&a, "event.wait", f, 0);
	cr_assert_eq(r.value, 0);
	/* Several waits on the same value, pending together, all answered. */
	uint32_t ws[5];
	for (int i = 0; i < 5; i++)
		ws[i] = send_uu(&a, "event.wait", f, 7);
	(void)ws;
	ev_signal(&a, f, 7);
	int got = 0;
	for (int i = 0; i < 5; i++) {
		uint32_t mid;
		wait_any(&a, &mid, &r);
		if (r.code == 0 && r.value == 7)
			got++;
		if (got == 5)
			break;
	}
	cr_assert_eq(got, 5);
	/* Released: no_such_event, and IDs stay unused. */
	cr_assert_eq(call_u(&a, "event.release", "id", e).code, 0);
	cr_assert_eq(call_u(&a, "event.release", "id", e).code, ANES_WERR_NO_SUCH_EVENT);
	cr_assert_eq(call_uu(&a, "event.wait", e, 0).code, ANES_WERR_NO_SUCH_EVENT);
	cr_assert_eq(call_uu(&a, "event.signal", e, 9).code, ANES_WERR_NO_SUCH_EVENT);
	cr_assert_gt(ev_create(&a), f);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}

Test(events, imported_handle_waits_but_cannot_signal, .fini = fini)
{
	start(false, NULL);
	h_rconn a, b, c;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	h_rconn_open(&c, D.sock);
	uint32_t e = ev_create(&a);
	ev_signal(&a, e, 3);
	rep t = ev_export(&a, e, 0, 0);
	rep r = import_tok(&b, "event.import", t.token);
	cr_assert_eq(r.code, 0);
	cr_assert_eq(r.value, 3, "import gives the value now");
	uint32_t be = (uint32_t)r.id;
	r = call_uu(&b, "event.signal", be, 4);
	cr_assert_eq(r.code, ANES_WERR_INVALID_PARAMS);
	cr_assert(strstr(r.msg, "imported"), "%s", r.msg);
	/* Its own namespace: b has no surface, program or state with that ID
	 * mistaken for it, and a's ID means nothing on c. */
	cr_assert_eq(call_uu(&c, "event.wait", e, 0).code, ANES_WERR_NO_SUCH_EVENT);
	/* Any holder exports: c imports from b's handle, wait-only too. */
	uint32_t ce = share_event(&b, be, &c);
	cr_assert_eq(call_uu(&c, "event.signal", ce, 9).code, ANES_WERR_INVALID_PARAMS);
	uint32_t w = send_uu(&c, "event.wait", ce, 4);
	ev_signal(&a, e, 4);
	wait_rep(&c, w, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0);
	cr_assert_eq(r.value, 4);
	/* An importer cannot raise it through a run either. */
	uint32_t prog = compile_fn(&b, "main");
	surf x = mk_surface(&b), y = mk_surface(&b), z = mk_surface(&b);
	evref s = { be, 10 };
	r = run_ev(&b, prog, x.id, y.id, z.id, NULL, 0, &s, 1);
	cr_assert_eq(r.code, ANES_WERR_INVALID_PARAMS);
	cr_assert(strstr(r.msg, "imported"), "%s", r.msg);
	cr_assert_eq(call_uu(&a, "event.wait", e, 0).value, 4);
	h_rconn_close(&c);
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}

Test(events, typed_tokens_and_one_failure_count, .fini = fini)
{
	anes_test_clock *clk = h_fake_clock();
	const char *args[] = { "--lane-spin-us", "0", NULL };
	start(false, args);
	h_rconn a, b, o;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	h_rconn_open(&o, D.sock);
	uint32_t e = ev_create(&a);
	surf s = mk_surface(&a);
	rep et = ev_export(&a, e, 4, 0);
	h_pbuf pb;
	h_pk_kv_u(h_pb_begin(&pb, 2), "id", s.id);
	h_pk_kv_u(&pb.pk, "uses", 4);
	rep st = call(&a, "surface.export", &pb);
	cr_assert_eq(st.code, 0);
	/* Each kind is unknown to the other's import (and the token stays). */
	cr_assert_eq(import_tok(&b, "surface.import", et.token).code, ANES_WERR_NO_SUCH_SURFACE);
	cr_assert_eq(import_tok(&b, "event.import", st.token).code, ANES_WERR_NO_SUCH_EVENT);
	cr_assert_eq(import_tok(&b, "surface.import", et.token).code, ANES_WERR_NO_SUCH_SURFACE);
	cr_assert_eq(import_tok(&b, "event.import", st.token).code, ANES_WERR_NO_SUCH_EVENT);
	/* Four failures of both kinds are free; the fifth earns 100 ms. */
	char bogus[TOK_LEN + 1];
	memset(bogus, 'a', TOK_LEN);
	bogus[TOK_LEN] = '\0';
	cr_assert_eq(import_tok(&b, "event.import", bogus).code, ANES_WERR_NO_SUCH_EVENT);
	uint32_t id = send_req(&b, "status", NULL);
	rep r;
	wait_rep(&b, id, 300, &r, NULL, NULL);
	cr_assert_eq(r.code, -2, "answered while paused");
	(void)status(&o);
	atomic_fetch_add(&clk->now_ns, 100000000ull);
	wait_rep(&b, id, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0);
	/* The tokens still import as their own kind. */
	r = import_tok(&b, "event.import", et.token);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	r = import_tok(&b, "surface.import", st.token);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	close(r.fd);
	/* Malformed tokens are invalid_params and cost nothing. */
	cr_assert_eq(import_tok(&b, "event.import", "abc").code, ANES_WERR_INVALID_PARAMS);
	h_rconn_close(&o);
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}

Test(events, tokens_uses_ttl_and_revocation, .fini = fini)
{
	anes_test_clock *clk = h_fake_clock();
	start(false, NULL);
	h_rconn a, b;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	uint32_t e = ev_create(&a);
	/* uses: exactly that many imports. */
	rep t = ev_export(&a, e, 3, 0);
	cr_assert_eq(t.code, 0);
	cr_assert_eq(t.expires_ms, 30000, "default ttl");
	for (int i = 0; i < 3; i++)
		cr_assert_eq(import_tok(&b, "event.import", t.token).code, 0);
	cr_assert_eq(import_tok(&b, "event.import", t.token).code, ANES_WERR_NO_SUCH_EVENT);
	/* ttl: valid until it has passed, by the daemon's clock. */
	t = ev_export(&a, e, 5, 1000);
	cr_assert_eq(t.expires_ms, 1000);
	atomic_fetch_add(&clk->now_ns, 999000000ull);
	cr_assert_eq(import_tok(&b, "event.import", t.token).code, 0);
	atomic_fetch_add(&clk->now_ns, 1000000ull);
	cr_assert_eq(import_tok(&b, "event.import", t.token).code, ANES_WERR_NO_SUCH_EVENT);
	/* Revoked with the handle it was exported from. */
	t = ev_export(&a, e, 5, 0);
	cr_assert_eq(call_u(&a, "event.release", "id", e).code, 0);
	cr_assert_eq(import_tok(&b, "event.import", t.token).code, ANES_WERR_NO_SUCH_EVENT);
	/* A token from an imported handle dies with that handle too, and
	 * tokens count against the surface limits (max_exports_per_conn). */
	uint32_t e2 = ev_create(&a);
	uint32_t be = share_event(&a, e2, &b);
	t = ev_export(&b, be, 1, 0);
	cr_assert_eq(call_u(&b, "event.release", "id", be).code, 0);
	cr_assert_eq(import_tok(&a, "event.import", t.token).code, ANES_WERR_NO_SUCH_EVENT);
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}

/* ---- closing ----------------------------------------------------------------------------- */

static void closes_on(bool disconnect)
{
	start(false, NULL);
	h_rconn a, b;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	uint32_t e = ev_create(&a);
	uint32_t be = share_event(&a, e, &b);
	ev_signal(&a, e, 2);
	uint32_t w_low = send_uu(&b, "event.wait", be, 2);
	uint32_t w_high = send_uu(&b, "event.wait", be, 3);
	rep r;
	wait_rep(&b, w_low, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0);
	if (disconnect)
		h_rconn_close(&a);
	else
		cr_assert_eq(call_u(&a, "event.release", "id", e).code, 0);
	wait_rep(&b, w_high, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, ANES_WERR_EVENT_CLOSED, "%d %s", r.code, r.msg);
	cr_assert(strstr(r.msg, "2"), "the message names the final value: %s", r.msg);
	/* It keeps its value: waits it reached succeed, later ones fail at once. */
	r = call_uu(&b, "event.wait", be, 2);
	cr_assert_eq(r.code, 0);
	cr_assert_eq(r.value, 2);
	cr_assert_eq(call_uu(&b, "event.wait", be, 3).code, ANES_WERR_EVENT_CLOSED);
	/* The imported handle stays valid until released; the event is then freed. */
	cr_assert_eq(status(&b).events, 1);
	cr_assert_eq(call_u(&b, "event.release", "id", be).code, 0);
	wait_status(&b, 1 + !disconnect, 0);
	if (!disconnect)
		h_rconn_close(&a);
	h_rconn_close(&b);
	h_daemon_stop(&D);
}

Test(events, closes_on_owner_release, .fini = fini) { closes_on(false); }
Test(events, closes_on_owner_disconnect, .fini = fini) { closes_on(true); }

Test(events, closes_only_after_a_pending_signalling_run, .fini = fini)
{
	h_gate g;
	h_gate_make(&g);
	const char *args[] = { "--fault-inject", g.arg, NULL };
	start(false, args);
	h_gate_attach(&g);
	h_rconn a, b;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	uint32_t prog = compile_fn(&a, "main");
	surf x = mk_surface(&a), y = mk_surface(&a), z = mk_surface(&a);
	fill(x.map, 1);
	fill(y.map, 2);
	fill_nan(z.map);
	uint32_t e = ev_create(&a);
	uint32_t be = share_event(&a, e, &b);
	/* The run that signals 1 is held at the gate; the owner lets go meanwhile. */
	evref s = { e, 1 };
	uint32_t run = send_run(&a, prog, x.id, y.id, z.id, NULL, 0, &s, 1);
	uint32_t w1 = send_uu(&b, "event.wait", be, 1);
	uint32_t w2 = send_uu(&b, "event.wait", be, 2);
	cr_assert_eq(call_u(&a, "event.release", "id", e).code, 0);
	/* Not closed yet: a status round trip on b, and the waits still pend. */
	rep r;
	wait_rep(&b, w1, 200, &r, NULL, NULL);
	cr_assert_eq(r.code, -2, "the wait for 1 ended before the run: %d %s", r.code, r.msg);
	h_gate_open(&g, 1);
	wait_rep(&a, run, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	float ref[N * N];
	mm_ref(x.map, y.map, ref);
	check_eq(z.map, ref, "the signalling run");
	/* Its signal came first, then the close. */
	wait_rep(&b, w1, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0);
	cr_assert_eq(r.value, 1);
	wait_rep(&b, w2, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, ANES_WERR_EVENT_CLOSED);
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
	h_gate_free(&g);
}

/* ---- runs ----------------------------------------------------------------------------------- */

static void parked_run_runs_when_signalled(bool worker)
{
	start(worker, NULL);
	h_rconn a, b;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	uint32_t prog = compile_fn(&b, "main");
	surf x = mk_surface(&a), y = mk_surface(&b), z = mk_surface(&b);
	surf xb = share_surface(&a, &x, &b);
	uint32_t e = ev_create(&a);
	uint32_t be = share_event(&a, e, &b);
	fill(y.map, 5);
	float ref[N * N];
	for (unsigned frame = 1; frame <= 4; frame++) {
		fill_nan(z.map);
		/* b runs ahead: parked until a's frame is written and signalled. */
		evref w = { be, frame };
		uint32_t run = send_run(&b, prog, xb.id, y.id, z.id, &w, 1, NULL, 0);
		rep r;
		if (frame == 1) {
			wait_rep(&b, run, 200, &r, NULL, NULL);
			cr_assert_eq(r.code, -2, "answered before the signal");
		}
		cr_assert(all_nan(z.map), "frame %u ran before its signal", frame);
		fill(x.map, frame);
		mm_ref(x.map, y.map, ref);
		ev_signal(&a, e, frame);
		wait_rep(&b, run, 10000, &r, NULL, NULL);
		cr_assert_eq(r.code, 0, "frame %u: %d %s", frame, r.code, r.msg);
		check_eq(z.map, ref, "parked run");
	}
	/* A wait already met: it runs at once. */
	evref w = { be, 2 };
	rep r = run_ev(&b, prog, xb.id, y.id, z.id, &w, 1, NULL, 0);
	cr_assert_eq(r.code, 0);
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}
TEST_BOTH(parked_run_runs_when_signalled, parked_run_runs_when_signalled)

/* Three connections: A writes a frame and signals ea; B's run waits for ea,
 * computes x@y into its output (shared to C) and signals eb; C's run waits
 * for eb and computes B's output @ y.  Every run is sent ahead. */
static void pipeline_across_connections(bool worker)
{
	start(worker, NULL);
	h_rconn a, b, c;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	h_rconn_open(&c, D.sock);
	uint32_t pb = compile_fn(&b, "main"), pc = compile_fn(&c, "main");
	enum { FRAMES = 6 };
	surf x[FRAMES], xb[FRAMES], yb = mk_surface(&b), mid[FRAMES], midc[FRAMES],
	     yc = mk_surface(&c), out[FRAMES];
	fill(yb.map, 3);
	fill(yc.map, 4);
	for (int i = 0; i < FRAMES; i++) {
		x[i] = mk_surface(&a);
		xb[i] = share_surface(&a, &x[i], &b);
		mid[i] = mk_surface(&b);
		midc[i] = share_surface(&b, &mid[i], &c);
		out[i] = mk_surface(&c);
		fill_nan(mid[i].map);
		fill_nan(out[i].map);
	}
	uint32_t ea = ev_create(&a), eb = ev_create(&b);
	uint32_t ea_b = share_event(&a, ea, &b), eb_c = share_event(&b, eb, &c);
	uint32_t runs_b[FRAMES], runs_c[FRAMES];
	for (int i = 0; i < FRAMES; i++) {
		/* B's frames one after the other: each also waits for B's
		 * previous one (its own event), so eb counts B's frames done. */
		evref wb[2] = { { ea_b, (uint64_t)i + 1 }, { eb, (uint64_t)i } }, sb = { eb, (uint64_t)i + 1 };
		runs_b[i] = send_run(&b, pb, xb[i].id, yb.id, mid[i].id, wb, 2, &sb, 1);
		evref wc = { eb_c, (uint64_t)i + 1 };
		runs_c[i] = send_run(&c, pc, midc[i].id, yc.id, out[i].id, &wc, 1, NULL, 0);
	}
	for (int i = 0; i < FRAMES; i++) {
		fill(x[i].map, (unsigned)i + 11);
		ev_signal(&a, ea, (uint64_t)i + 1);
	}
	for (int i = 0; i < FRAMES; i++) {
		rep r;
		wait_rep(&c, runs_c[i], 10000, &r, NULL, NULL);
		cr_assert_eq(r.code, 0, "C frame %d: %s", i, r.msg);
		float m[N * N], ref[N * N];
		mm_ref(x[i].map, yb.map, m);
		uint16_t m16[N * N];
		for (int k = 0; k < N * N; k++)
			m16[k] = anes_f32_to_f16(m[k]);
		check_eq(mid[i].map, m, "B's output");
		mm_ref(m16, yc.map, ref);
		check_eq(out[i].map, ref, "C's output");
	}
	for (int i = 0; i < FRAMES; i++) {
		rep r;
		wait_rep(&b, runs_b[i], 10000, &r, NULL, NULL);
		cr_assert_eq(r.code, 0, "B frame %d: %s", i, r.msg);
	}
	h_rconn_close(&c);
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}
TEST_BOTH(pipeline_across_connections, pipeline_across_connections)

Test(events, a_chain_waits_first_and_signals_last, .fini = fini)
{
	start(false, NULL);
	h_rconn a, b;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	uint32_t prog = compile_fn(&a, "main");
	surf x = mk_surface(&a), y = mk_surface(&a), m = mk_surface(&a), z = mk_surface(&a);
	fill(x.map, 1);
	fill(y.map, 2);
	fill_nan(m.map);
	fill_nan(z.map);
	uint32_t go = ev_create(&a), done = ev_create(&a);
	uint32_t done_b = share_event(&a, done, &b);
	uint32_t wid = send_uu(&b, "event.wait", done_b, 1);
	h_pbuf pb;
	msgpack_packer *pk = h_pb_begin(&pb, 3);
	h_pk_str(pk, "steps");
	msgpack_pack_array(pk, 2);
	uint32_t ids[2][3] = { { x.id, y.id, m.id }, { m.id, y.id, z.id } };
	for (int i = 0; i < 2; i++) {
		msgpack_pack_map(pk, 3);
		h_pk_kv_u(pk, "program", prog);
		h_pk_ids(pk, "inputs", ids[i], 2);
		h_pk_ids(pk, "outputs", ids[i] + 2, 1);
	}
	evref w = { go, 1 }, s = { done, 1 };
	pk_events(pk, "wait", &w, 1);
	pk_events(pk, "signal", &s, 1);
	uint32_t run = send_req(&a, "run", &pb);
	cr_assert(all_nan(m.map) && all_nan(z.map));
	ev_signal(&a, go, 1);
	rep r;
	wait_rep(&a, run, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	wait_rep(&b, wid, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0);
	float ref1[N * N], ref2[N * N];
	mm_ref(x.map, y.map, ref1);
	check_eq(m.map, ref1, "step 0");
	mm_ref(m.map, y.map, ref2);
	check_eq(z.map, ref2, "step 1");
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}

Test(events, a_failed_run_signals_nothing, .fini = fini)
{
	const char *args[] = { "--fault-inject", "run_fail=bad", NULL };
	start(false, args);
	h_rconn a, b;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	uint32_t good = compile_fn(&a, "main"), bad = compile_fn(&a, "bad");
	surf x = mk_surface(&a), y = mk_surface(&a), z = mk_surface(&a);
	fill(x.map, 1);
	fill(y.map, 1);
	uint32_t e = ev_create(&a);
	uint32_t be = share_event(&a, e, &b);
	uint32_t wid = send_uu(&b, "event.wait", be, 1);
	evref s = { e, 1 };
	rep r = run_ev(&a, bad, x.id, y.id, z.id, NULL, 0, &s, 1);
	cr_assert_eq(r.code, ANES_WERR_RUN_FAILED, "%d %s", r.code, r.msg);
	/* Nothing was raised: its value is 0, the wait still pends. */
	cr_assert_eq(call_uu(&a, "event.wait", e, 0).value, 0);
	rep w;
	wait_rep(&b, wid, 200, &w, NULL, NULL);
	cr_assert_eq(w.code, -2);
	/* A run refused before it runs (a wrong surface) raises nothing either. */
	r = run_ev(&a, good, x.id, y.id, 999, NULL, 0, &s, 1);
	cr_assert_eq(r.code, ANES_WERR_NO_SUCH_SURFACE);
	cr_assert_eq(call_uu(&a, "event.wait", e, 0).value, 0);
	/* The owner decides: a good run raises it. */
	r = run_ev(&a, good, x.id, y.id, z.id, NULL, 0, &s, 1);
	cr_assert_eq(r.code, 0);
	wait_rep(&b, wid, 10000, &w, NULL, NULL);
	cr_assert_eq(w.code, 0);
	cr_assert_eq(w.value, 1);
	/* A run raises to max(value, its value): it never lowers it. */
	ev_signal(&a, e, 10);
	evref s2 = { e, 11 };
	r = run_ev(&a, good, x.id, y.id, z.id, NULL, 0, &s2, 1);
	cr_assert_eq(r.code, 0);
	cr_assert_eq(call_uu(&a, "event.wait", e, 0).value, 11);
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}

Test(events, event_closed_to_parked_runs_and_waits, .fini = fini)
{
	start(false, NULL);
	h_rconn a, b;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	uint32_t prog = compile_fn(&b, "main");
	surf x = mk_surface(&b), y = mk_surface(&b), z = mk_surface(&b);
	fill_nan(z.map);
	uint32_t e = ev_create(&a);
	uint32_t be = share_event(&a, e, &b);
	ev_signal(&a, e, 1);
	evref w = { be, 2 };
	uint32_t run = send_run(&b, prog, x.id, y.id, z.id, &w, 1, NULL, 0);
	uint32_t wid = send_uu(&b, "event.wait", be, 2);
	(void)status(&b);   /* both are in */
	cr_assert_eq(call_u(&a, "event.release", "id", e).code, 0);
	rep r;
	wait_rep(&b, run, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, ANES_WERR_EVENT_CLOSED, "%d %s", r.code, r.msg);
	cr_assert_eq(r.failed_step, -1);
	cr_assert(all_nan(z.map), "nothing ran");
	wait_rep(&b, wid, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, ANES_WERR_EVENT_CLOSED);
	/* Sent later: refused at once; a wait it reached still runs. */
	r = run_ev(&b, prog, x.id, y.id, z.id, &w, 1, NULL, 0);
	cr_assert_eq(r.code, ANES_WERR_EVENT_CLOSED);
	evref w1 = { be, 1 };
	r = run_ev(&b, prog, x.id, y.id, z.id, &w1, 1, NULL, 0);
	cr_assert_eq(r.code, 0);
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}

/* ---- limits --------------------------------------------------------------------------------- */

static void read_limits(const msgpack_object *res, void *ud)
{
	uint64_t *v = ud;
	const msgpack_object *lim = anes_mp_get(res, "limits");
	cr_assert(lim);
	v[0] = h_map_u64(lim, "max_events_per_conn");
	v[1] = h_map_u64(lim, "max_daemon_events");
	v[2] = h_map_u64(lim, "max_event_waits");
}

Test(events, limits_name_their_key, .fini = fini)
{
	const char *args[] = { "--max-events-per-conn", "3", "--max-daemon-events", "5",
		               "--max-event-waits", "2", NULL };
	start(false, args);
	/* hello announces them. */
	h_rconn a;
	int fd = h_raw_connect(D.sock);
	cr_assert_geq(fd, 0);
	h_rconn_adopt(&a, fd);
	uint64_t lim[3];
	h_pbuf hb;
	h_pk_kv_u(h_pb_begin(&hb, 1), "protocol", 1);
	rep r = call_fn(&a, "hello", &hb, read_limits, lim);
	cr_assert_eq(r.code, 0);
	cr_assert_eq(lim[0], 3);
	cr_assert_eq(lim[1], 5);
	cr_assert_eq(lim[2], 2);
	/* Handles per connection (creates and imports alike). */
	uint32_t e1 = ev_create(&a);
	ev_create(&a);
	rep t = ev_export(&a, e1, 0, 0);
	cr_assert_eq(import_tok(&a, "event.import", t.token).code, 0);
	r = call(&a, "event.create", NULL);
	cr_assert_eq(r.code, ANES_WERR_LIMIT);
	cr_assert(strstr(r.msg, "max_events_per_conn"), "%s", r.msg);
	t = ev_export(&a, e1, 0, 0);
	r = import_tok(&a, "event.import", t.token);
	cr_assert_eq(r.code, ANES_WERR_LIMIT);
	cr_assert(strstr(r.msg, "max_events_per_conn"), "%s", r.msg);
	/* The refused import left the token: it works once there is room. */
	cr_assert_eq(call_u(&a, "event.release", "id", 2).code, 0);
	cr_assert_eq(import_tok(&a, "event.import", t.token).code, 0);
	/* Events in the daemon: a has 1 event (3 handles), b makes 4 more. */
	h_rconn b;
	h_rconn_open(&b, D.sock);
	for (int i = 0; i < 3; i++)
		ev_create(&b);
	h_rconn c;
	h_rconn_open(&c, D.sock);
	ev_create(&c);
	cr_assert_eq(status(&c).events, 5);
	r = call(&c, "event.create", NULL);
	cr_assert_eq(r.code, ANES_WERR_LIMIT);
	cr_assert(strstr(r.msg, "max_daemon_events"), "%s", r.msg);
	/* Pending waits per connection; met ones do not count. */
	uint32_t ce = 1;
	cr_assert_eq(call_uu(&c, "event.wait", ce, 0).code, 0);
	uint32_t w1 = send_uu(&c, "event.wait", ce, 1);
	uint32_t w2 = send_uu(&c, "event.wait", ce, 1);
	r = call_uu(&c, "event.wait", ce, 1);
	cr_assert_eq(r.code, ANES_WERR_LIMIT);
	cr_assert(strstr(r.msg, "max_event_waits"), "%s", r.msg);
	ev_signal(&c, ce, 1);
	wait_rep(&c, w1, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0);
	wait_rep(&c, w2, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0);
	h_rconn_close(&c);
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}

/* ---- parked runs hold no thread --------------------------------------------------------------- */

Test(events, parked_runs_hold_no_worker, .fini = fini)
{
	h_gate g;
	h_gate_make(&g);
	const char *args[] = { "--workers", "1", "--no-lanes", "--fault-inject", g.arg,
		               "--max-inflight", "256", "--max-client-jobs", "256", NULL };
	start(false, args);
	h_gate_attach(&g);
	h_rconn a, b;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	uint32_t prog = compile_fn(&a, "main");
	surf x = mk_surface(&a), y = mk_surface(&a);
	fill(x.map, 2);
	fill(y.map, 3);
	enum { PARKED = 100 };
	uint32_t e = ev_create(&a);
	surf z[PARKED];
	uint32_t runs[PARKED];
	for (int i = 0; i < PARKED; i++) {
		z[i] = mk_surface(&a);
		fill_nan(z[i].map);
		evref w = { e, (uint64_t)i + 1 };
		runs[i] = send_run(&a, prog, x.id, y.id, z[i].id, &w, 1, NULL, 0);
	}
	/* They are jobs of a, but none is queued for a worker. */
	st_info st = status(&a);
	cr_assert_eq(st.my_jobs, PARKED, "jobs %llu", (unsigned long long)st.my_jobs);
	cr_assert_eq(st.my_queued, 0, "queued %llu", (unsigned long long)st.my_queued);
	/* The one worker is free: b's run goes through (one gate token). */
	uint32_t pb = compile_fn(&b, "main");
	surf bx = mk_surface(&b), by = mk_surface(&b), bz = mk_surface(&b);
	fill(bx.map, 4);
	fill(by.map, 5);
	uint32_t brun = send_run(&b, pb, bx.id, by.id, bz.id, NULL, 0, NULL, 0);
	h_gate_open(&g, 1);
	rep r;
	wait_rep(&b, brun, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	float ref[N * N];
	mm_ref(bx.map, by.map, ref);
	check_eq(bz.map, ref, "b's run");
	/* Release them all: each runs. */
	ev_signal(&a, e, PARKED);
	h_gate_open(&g, PARKED);
	mm_ref(x.map, y.map, ref);
	for (int i = 0; i < PARKED; i++) {
		uint32_t mid;
		wait_any(&a, &mid, &r);
		cr_assert_eq(r.code, 0, "%s", r.msg);
	}
	for (int i = 0; i < PARKED; i++)
		check_eq(z[i].map, ref, "parked run");
	(void)runs;
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
	h_gate_free(&g);
}

Test(events, disconnect_with_parked_runs_frees_everything, .fini = fini)
{
	start(false, NULL);
	h_rconn o;
	h_rconn_open(&o, D.sock);
	st_info base = wait_status(&o, 1, 0);   /* the harness's start-up probe gone */
	h_rconn a, b;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	uint32_t prog = compile_fn(&b, "main");
	uint32_t e = ev_create(&a);
	uint32_t be = share_event(&a, e, &b);
	uint32_t own = ev_create(&b);
	surf x = mk_surface(&b), y = mk_surface(&b), z = mk_surface(&b);
	for (int i = 0; i < 20; i++) {
		evref w[2] = { { be, (uint64_t)i + 1 }, { own, 1 } };
		evref s = { own, (uint64_t)i + 2 };
		(void)send_run(&b, prog, x.id, y.id, z.id, w, 2, &s, 1);
		(void)send_uu(&b, "event.wait", be, (uint64_t)i + 1);
	}
	(void)status(&b);
	cr_assert_eq(status(&o).events, base.events + 2);
	h_rconn_close(&b);
	/* b's handles and requests are gone: a's event lives on, b's is freed. */
	st_info st = wait_status(&o, base.clients + 1, base.events + 1);
	cr_assert_eq(st.surfaces, base.surfaces);
	h_rconn_close(&a);
	st = wait_status(&o, base.clients, base.events);
	cr_assert_eq(st.my_jobs, 0);
	h_rconn_close(&o);
	h_daemon_stop(&D);
}

/* ---- shutdown ---------------------------------------------------------------------------------- */

Test(events, drain_answers_parked_runs_shutting_down, .fini = fini)
{
	start(false, NULL);
	h_rconn a;
	h_rconn_open(&a, D.sock);
	uint32_t prog = compile_fn(&a, "main");
	surf x = mk_surface(&a), y = mk_surface(&a), z = mk_surface(&a);
	fill_nan(z.map);
	uint32_t e = ev_create(&a);
	evref w = { e, 1 };
	uint32_t run = send_run(&a, prog, x.id, y.id, z.id, &w, 1, NULL, 0);
	uint32_t wid = send_uu(&a, "event.wait", e, 1);
	(void)status(&a);
	kill(D.pid, SIGTERM);
	/* Nothing can raise the event any more: both end with shutting_down. */
	uint32_t got[2];
	rep r[2];
	wait_any(&a, &got[0], &r[0]);
	wait_any(&a, &got[1], &r[1]);
	cr_assert(got[0] != got[1] && (got[0] == run || got[0] == wid) &&
	          (got[1] == run || got[1] == wid));
	cr_assert_eq(r[0].code, ANES_WERR_SHUTTING_DOWN, "%s", r[0].msg);
	cr_assert_eq(r[1].code, ANES_WERR_SHUTTING_DOWN, "%s", r[1].msg);
	cr_assert(all_nan(z.map));
	cr_assert_eq(h_rconn_closed_with(&a, 10000), 0);
	h_rconn_close(&a);
	h_daemon_wait(&D);
}

/* ---- bad params ----------------------------------------------------------------------------------- */

/* method with a map of one key whose value is packed by fn: its code. */
static int bad_one(h_rconn *rc, const char *method, const char *key,
                   void (*fn)(msgpack_packer *pk), const char *other, uint64_t other_v)
{
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 1 + (other != NULL));
	h_pk_str(pk, key);
	fn(pk);
	if (other)
		h_pk_kv_u(pk, other, other_v);
	return call(rc, method, &b).code;
}

static void v_str(msgpack_packer *pk) { h_pk_str(pk, "1"); }
static void v_neg(msgpack_packer *pk) { msgpack_pack_int64(pk, -1); }
static void v_nil(msgpack_packer *pk) { msgpack_pack_nil(pk); }
static void v_big(msgpack_packer *pk) { msgpack_pack_uint64(pk, (uint64_t)UINT32_MAX + 1); }
static void v_float(msgpack_packer *pk) { msgpack_pack_double(pk, 1.0); }
static void v_arr(msgpack_packer *pk) { msgpack_pack_array(pk, 0); }

/* A run with "wait" or "signal" packed by fn: its reply. */
static rep run_raw_events(h_rconn *rc, uint32_t prog, const surf *s, const char *key,
                          void (*fn)(msgpack_packer *pk))
{
	uint32_t in[2] = { s[0].id, s[1].id }, out[1] = { s[2].id };
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 4);
	h_pk_kv_u(pk, "program", prog);
	h_pk_ids(pk, "inputs", in, 2);
	h_pk_ids(pk, "outputs", out, 1);
	h_pk_str(pk, key);
	fn(pk);
	return call(rc, "run", &b);
}

static void ev_notarray(msgpack_packer *pk) { msgpack_pack_map(pk, 0); }
static void ev_toolong(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 9);
	for (int i = 0; i < 9; i++) {
		msgpack_pack_map(pk, 2);
		h_pk_kv_u(pk, "event", (uint64_t)i + 1);
		h_pk_kv_u(pk, "value", 1);
	}
}
static void ev_notmap(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_uint32(pk, 1);
}
static void ev_noevent(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 1);
	h_pk_kv_u(pk, "value", 1);
}
static void ev_novalue(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 1);
	h_pk_kv_u(pk, "event", 1);
}
static void ev_negvalue(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 2);
	h_pk_kv_u(pk, "event", 1);
	h_pk_str(pk, "value");
	msgpack_pack_int64(pk, -3);
}
static void ev_bigevent(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 2);
	h_pk_kv_u(pk, "event", (uint64_t)UINT32_MAX + 1);
	h_pk_kv_u(pk, "value", 1);
}
static void ev_strevent(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 2);
	h_pk_str(pk, "event");
	h_pk_str(pk, "1");
	h_pk_kv_u(pk, "value", 1);
}
static void ev_dup(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	for (int i = 0; i < 2; i++) {
		msgpack_pack_map(pk, 2);
		h_pk_kv_u(pk, "event", 1);
		h_pk_kv_u(pk, "value", (uint64_t)i + 1);
	}
}
static void ev_extra_key(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 3);
	h_pk_kv_u(pk, "event", 1);
	h_pk_kv_u(pk, "value", 0);
	h_pk_kv_u(pk, "later", 7);
}
static void ev_nosuch(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 2);
	h_pk_kv_u(pk, "event", 77);
	h_pk_kv_u(pk, "value", 1);
}
static void ev_empty(msgpack_packer *pk) { msgpack_pack_array(pk, 0); }

Test(events, bad_params, .fini = fini)
{
	start(false, NULL);
	h_rconn a;
	h_rconn_open(&a, D.sock);
	uint32_t e = ev_create(&a);
	ev_signal(&a, e, 1);
	void (*bad_u32[])(msgpack_packer *) = { v_str, v_neg, v_nil, v_big, v_float, v_arr };
	void (*bad_u64[])(msgpack_packer *) = { v_str, v_neg, v_nil, v_float, v_arr };
	const char *with_value[] = { "event.signal", "event.wait" };
	for (size_t m = 0; m < 2; m++) {
		for (size_t i = 0; i < sizeof(bad_u32) / sizeof(bad_u32[0]); i++)
			cr_assert_eq(bad_one(&a, with_value[m], "id", bad_u32[i], "value", 2),
			             ANES_WERR_INVALID_PARAMS, "%s id #%zu", with_value[m], i);
		for (size_t i = 0; i < sizeof(bad_u64) / sizeof(bad_u64[0]); i++)
			cr_assert_eq(bad_one(&a, with_value[m], "value", bad_u64[i], "id", e),
			             ANES_WERR_INVALID_PARAMS, "%s value #%zu", with_value[m], i);
		/* missing keys */
		cr_assert_eq(call_u(&a, with_value[m], "id", e).code, ANES_WERR_INVALID_PARAMS);
		cr_assert_eq(call_u(&a, with_value[m], "value", 5).code, ANES_WERR_INVALID_PARAMS);
		cr_assert_eq(call_uu(&a, with_value[m], 0, 5).code, ANES_WERR_NO_SUCH_EVENT);
	}
	const char *by_id[] = { "event.release", "event.export" };
	for (size_t m = 0; m < 2; m++) {
		for (size_t i = 0; i < sizeof(bad_u32) / sizeof(bad_u32[0]); i++)
			cr_assert_eq(bad_one(&a, by_id[m], "id", bad_u32[i], NULL, 0),
			             ANES_WERR_INVALID_PARAMS, "%s id #%zu", by_id[m], i);
		cr_assert_eq(call(&a, by_id[m], NULL).code, ANES_WERR_INVALID_PARAMS);
		cr_assert_eq(call_u(&a, by_id[m], "id", 4242).code, ANES_WERR_NO_SUCH_EVENT);
	}
	/* export: uses and ttl_ms in 1..max, or nil. */
	void (*bad_opt[])(msgpack_packer *) = { v_str, v_neg, v_float, v_arr };
	const char *opt[] = { "uses", "ttl_ms" };
	for (size_t k = 0; k < 2; k++) {
		for (size_t i = 0; i < sizeof(bad_opt) / sizeof(bad_opt[0]); i++)
			cr_assert_eq(bad_one(&a, "event.export", opt[k], bad_opt[i], "id", e),
			             ANES_WERR_INVALID_PARAMS, "%s #%zu", opt[k], i);
		h_pbuf b;
		msgpack_packer *pk = h_pb_begin(&b, 2);
		h_pk_kv_u(pk, "id", e);
		h_pk_kv_u(pk, opt[k], 0);
		cr_assert_eq(call(&a, "event.export", &b).code, ANES_WERR_INVALID_PARAMS);
		pk = h_pb_begin(&b, 2);
		h_pk_kv_u(pk, "id", e);
		h_pk_kv_u(pk, opt[k], k ? 600001 : 1025);
		cr_assert_eq(call(&a, "event.export", &b).code, ANES_WERR_INVALID_PARAMS);
		cr_assert_eq(bad_one(&a, "event.export", opt[k], v_nil, "id", e), 0, "nil: default");
	}
	/* import: token a str of 64 lowercase hex digits. */
	void (*bad_tok[])(msgpack_packer *) = { v_neg, v_nil, v_float, v_arr, v_str };
	for (size_t i = 0; i < sizeof(bad_tok) / sizeof(bad_tok[0]); i++)
		cr_assert_eq(bad_one(&a, "event.import", "token", bad_tok[i], NULL, 0),
		             ANES_WERR_INVALID_PARAMS, "token #%zu", i);
	char upper[TOK_LEN + 1];
	memset(upper, 'A', TOK_LEN);
	upper[TOK_LEN] = '\0';
	cr_assert_eq(import_tok(&a, "event.import", upper).code, ANES_WERR_INVALID_PARAMS);
	cr_assert_eq(call(&a, "event.import", NULL).code, ANES_WERR_INVALID_PARAMS);
	/* fds are refused with bad_fd. */
	int fds[1] = { 0 };
	uint32_t id = next_msgid++;
	cr_assert_eq(h_raw_request(a.fd, id, "event.create", NULL, 0, fds, 1), 0);
	rep r;
	wait_rep(&a, id, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, ANES_WERR_BAD_FD);
	/* Runs: every malformed wait/signal is invalid_params, before anything. */
	uint32_t prog = compile_fn(&a, "main");
	surf s[3] = { mk_surface(&a), mk_surface(&a), mk_surface(&a) };
	void (*bad_list[])(msgpack_packer *) = { ev_notarray, ev_toolong, ev_notmap, ev_noevent,
		                                 ev_novalue, ev_negvalue, ev_bigevent, ev_strevent,
		                                 ev_dup };
	const char *lists[] = { "wait", "signal" };
	for (size_t k = 0; k < 2; k++) {
		for (size_t i = 0; i < sizeof(bad_list) / sizeof(bad_list[0]); i++) {
			r = run_raw_events(&a, prog, s, lists[k], bad_list[i]);
			cr_assert_eq(r.code, ANES_WERR_INVALID_PARAMS, "%s #%zu: %d %s", lists[k], i,
			             r.code, r.msg);
			cr_assert(strstr(r.msg, lists[k]), "%s", r.msg);
		}
		r = run_raw_events(&a, prog, s, lists[k], ev_nosuch);
		cr_assert_eq(r.code, ANES_WERR_NO_SUCH_EVENT, "%s: %s", lists[k], r.msg);
		r = run_raw_events(&a, prog, s, lists[k], ev_empty);
		cr_assert_eq(r.code, 0, "an empty list: %s", r.msg);
	}
	/* Other keys of an entry are ignored; a wait for 0 is met. */
	r = run_raw_events(&a, prog, s, "wait", ev_extra_key);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	/* A signal must raise the event (it is at 1). */
	evref low = { e, 1 };
	r = run_ev(&a, prog, s[0].id, s[1].id, s[2].id, NULL, 0, &low, 1);
	cr_assert_eq(r.code, ANES_WERR_INVALID_PARAMS);
	cr_assert(strstr(r.msg, "at 1"), "%s", r.msg);
	/* In a chain's step they are refused (they belong to the run). */
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 1);
	h_pk_str(pk, "steps");
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 4);
	uint32_t in[2] = { s[0].id, s[1].id }, out[1] = { s[2].id };
	h_pk_kv_u(pk, "program", prog);
	h_pk_ids(pk, "inputs", in, 2);
	h_pk_ids(pk, "outputs", out, 1);
	evref w = { e, 1 };
	pk_events(pk, "wait", &w, 1);
	r = call(&a, "run", &b);
	cr_assert_eq(r.code, ANES_WERR_INVALID_PARAMS);
	cr_assert_eq(r.failed_step, 0);
	/* A key twice in an entry is malformed: the connection is closed. */
	pk = h_pb_begin(&b, 4);
	h_pk_kv_u(pk, "program", prog);
	h_pk_ids(pk, "inputs", in, 2);
	h_pk_ids(pk, "outputs", out, 1);
	h_pk_str(pk, "wait");
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 3);
	h_pk_kv_u(pk, "event", e);
	h_pk_kv_u(pk, "value", 1);
	h_pk_kv_u(pk, "event", e);
	(void)send_req(&a, "run", &b);
	cr_assert_eq(h_rconn_closed_with(&a, 10000), ANES_WERR_PROTOCOL);
	h_rconn_close(&a);
	/* The daemon is unaffected. */
	h_rconn_open(&a, D.sock);
	cr_assert_eq(status(&a).events, 0);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}

/* ---- many threads ------------------------------------------------------------------------------- */

/* Several connections signal and wait at once, through runs (on lanes,
 * workers and continuations) and event.wait: every frame's output is
 * checked, and the daemon ends clean (ASan/TSan builds run this too). */
Test(events, stress_many_signals_and_waits, .fini = fini)
{
	const char *args[] = { "--max-event-waits", "1024", "--max-inflight", "1024",
		               "--max-client-jobs", "4096", NULL };
	start(false, args);
	enum { P = 3, FRAMES = 60 };
	h_rconn prod, cons[P], obs;
	h_rconn_open(&prod, D.sock);
	h_rconn_open(&obs, D.sock);
	uint32_t ep = ev_create(&prod);
	surf x = mk_surface(&prod);
	fill(x.map, 9);
	uint32_t prog[P], evc[P], ep_c[P], ec_o[P];
	surf xc[P], y[P], z[P][FRAMES];
	for (int p = 0; p < P; p++) {
		h_rconn_open(&cons[p], D.sock);
		prog[p] = compile_fn(&cons[p], "main");
		xc[p] = share_surface(&prod, &x, &cons[p]);
		y[p] = mk_surface(&cons[p]);
		fill(y[p].map, (unsigned)p + 1);
		ep_c[p] = share_event(&prod, ep, &cons[p]);
		evc[p] = ev_create(&cons[p]);
		ec_o[p] = share_event(&cons[p], evc[p], &obs);
		for (int f = 0; f < FRAMES; f++) {
			z[p][f] = mk_surface(&cons[p]);
			fill_nan(z[p][f].map);
		}
	}
	/* Everything sent ahead: each consumer's frame f waits for the
	 * producer's f+1 and signals its own f+1; the observer waits on each. */
	uint32_t ow[P][FRAMES];
	for (int f = 0; f < FRAMES; f++)
		for (int p = 0; p < P; p++) {
			evref w = { ep_c[p], (uint64_t)f + 1 }, s = { evc[p], (uint64_t)f + 1 };
			(void)send_run(&cons[p], prog[p], xc[p].id, y[p].id, z[p][f].id, &w, 1, &s, 1);
			ow[p][f] = send_uu(&obs, "event.wait", ec_o[p], (uint64_t)f + 1);
		}
	for (int f = 0; f < FRAMES; f++)
		ev_signal(&prod, ep, (uint64_t)f + 1);
	for (int p = 0; p < P; p++)
		for (int f = 0; f < FRAMES; f++) {
			uint32_t mid;
			rep r;
			wait_any(&cons[p], &mid, &r);
			cr_assert_eq(r.code, 0, "consumer %d: %s", p, r.msg);
		}
	int met = 0;
	for (int i = 0; i < P * FRAMES; i++) {
		uint32_t mid;
		rep r;
		wait_any(&obs, &mid, &r);
		cr_assert_eq(r.code, 0, "%s", r.msg);
		met++;
	}
	cr_assert_eq(met, P * FRAMES);
	(void)ow;
	float ref[N * N];
	for (int p = 0; p < P; p++) {
		mm_ref(x.map, y[p].map, ref);
		for (int f = 0; f < FRAMES; f++)
			check_eq(z[p][f].map, ref, "stress");
	}
	for (int p = 0; p < P; p++)
		h_rconn_close(&cons[p]);
	h_rconn_close(&prod);
	wait_status(&obs, 1, P);   /* the observer's imports keep the consumers' events */
	h_rconn_close(&obs);
	h_daemon_stop(&D);
}

/* The thread that raises an event (here a lane thread reading the
 * producer's event.signal) runs the short run it made ready itself:
 * status.event_runs counts those.  Whether a request is read by a lane
 * depends on when the loop armed it, so the frames repeat (bounded) until
 * one went that way; every frame's output is checked. */
Test(events, a_short_parked_run_runs_on_the_raising_thread, .fini = fini)
{
	start(false, NULL);
	h_rconn a, b;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	uint32_t prog = compile_fn(&b, "main");
	surf x = mk_surface(&b), y = mk_surface(&b), z = mk_surface(&b);
	fill(x.map, 3);
	fill(y.map, 4);
	float ref[N * N];
	mm_ref(x.map, y.map, ref);
	cr_assert_eq(run_ev(&b, prog, x.id, y.id, z.id, NULL, 0, NULL, 0).code, 0);   /* now short */
	uint32_t e = ev_create(&a);
	uint32_t be = share_event(&a, e, &b);
	uint64_t inline_runs = 0;
	for (uint64_t f = 1; f <= 500 && inline_runs == 0; f++) {
		fill_nan(z.map);
		evref w = { be, f };
		uint32_t run = send_run(&b, prog, x.id, y.id, z.id, &w, 1, NULL, 0);
		(void)status(&b);   /* parked before the signal */
		ev_signal(&a, e, f);
		rep r;
		wait_rep(&b, run, 10000, &r, NULL, NULL);
		cr_assert_eq(r.code, 0, "%s", r.msg);
		check_eq(z.map, ref, "frame");
		inline_runs = status(&a).event_runs;
	}
	cr_assert_gt(inline_runs, 0, "no parked run ran on the thread that raised its event");
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}

/* Connections with parked runs and waits close while the producer's
 * signals are being raised (on lanes, workers and continuations): every
 * waiter ends once (cancelled or met), nothing is left behind, and the
 * daemon goes on serving. */
Test(events, consumers_vanish_while_signals_fly, .fini = fini)
{
	const char *args[] = { "--max-inflight", "1024", "--max-client-jobs", "4096",
		               "--max-event-waits", "1024", NULL };
	start(false, args);
	enum { C = 4, FRAMES = 40 };
	h_rconn obs, prod, cons[C];
	h_rconn_open(&obs, D.sock);
	st_info base = wait_status(&obs, 1, 0);
	h_rconn_open(&prod, D.sock);
	uint32_t ep = ev_create(&prod);
	surf x = mk_surface(&prod);
	fill(x.map, 2);
	for (int k = 0; k < C; k++) {
		h_rconn_open(&cons[k], D.sock);
		uint32_t prog = compile_fn(&cons[k], "main");
		surf xc = share_surface(&prod, &x, &cons[k]);
		surf y = mk_surface(&cons[k]), z = mk_surface(&cons[k]);
		uint32_t e = share_event(&prod, ep, &cons[k]);
		uint32_t own = ev_create(&cons[k]);
		for (int f = 0; f < FRAMES; f++) {
			evref w = { e, (uint64_t)f + 1 }, s = { own, (uint64_t)f + 1 };
			(void)send_run(&cons[k], prog, xc.id, y.id, z.id, &w, 1, &s, 1);
			(void)send_uu(&cons[k], "event.wait", e, (uint64_t)f + 1);
		}
		(void)status(&cons[k]);   /* all in */
	}
	/* The signals pipelined; the consumers close at different points. */
	uint32_t sig[FRAMES];
	for (int f = 0; f < FRAMES; f++) {
		sig[f] = send_uu(&prod, "event.signal", ep, (uint64_t)f + 1);
		if (f % 10 == 5 && f / 10 < C)
			h_rconn_close(&cons[f / 10]);
	}
	for (int f = 0; f < FRAMES; f++) {
		rep r;
		wait_rep(&prod, sig[f], 10000, &r, NULL, NULL);
		cr_assert_eq(r.code, 0, "signal %d: %s", f + 1, r.msg);
	}
	for (int k = 0; k < C; k++)
		h_rconn_close(&cons[k]);
	h_rconn_close(&prod);
	st_info st = wait_status(&obs, base.clients, base.events);
	cr_assert_eq(st.surfaces, base.surfaces);
	for (int i = 0; i < 1000 * h_slow() && st.my_jobs != 0; i++) {
		usleep(10000);
		st = status(&obs);
	}
	cr_assert_eq(st.my_jobs, 0);
	h_rconn_close(&obs);
	h_daemon_stop(&D);
}

/* A drain keeps parked runs while a run in flight may still raise their
 * event: the producer's gated run signals after SIGTERM, and the consumer's
 * parked run then runs (it was sent before the drain). */
Test(events, drain_lets_a_run_in_flight_meet_parked_runs, .fini = fini)
{
	h_gate g;
	h_gate_make(&g);
	const char *args[] = { "--fault-inject", g.arg, NULL };
	start(false, args);
	h_gate_attach(&g);
	h_rconn a, b;
	h_rconn_open(&a, D.sock);
	h_rconn_open(&b, D.sock);
	uint32_t pa = compile_fn(&a, "main"), pb = compile_fn(&b, "main");
	surf x = mk_surface(&a), y = mk_surface(&a), z = mk_surface(&a);
	fill(x.map, 1);
	fill(y.map, 2);
	fill_nan(z.map);
	surf zb = share_surface(&a, &z, &b), yb = mk_surface(&b), out = mk_surface(&b);
	fill(yb.map, 3);
	fill_nan(out.map);
	uint32_t e = ev_create(&a);
	uint32_t be = share_event(&a, e, &b);
	evref s = { e, 1 }, w = { be, 1 };
	uint32_t run_b = send_run(&b, pb, zb.id, yb.id, out.id, &w, 1, NULL, 0);
	(void)status(&b);   /* parked */
	uint32_t run_a = send_run(&a, pa, x.id, y.id, z.id, NULL, 0, &s, 1);
	(void)status(&a);   /* at the gate */
	kill(D.pid, SIGTERM);
	rep r;
	wait_rep(&b, run_b, 300, &r, NULL, NULL);
	cr_assert_eq(r.code, -2, "the parked run was answered while a run could still meet it: %d %s",
	             r.code, r.msg);
	h_gate_open(&g, 2);
	wait_rep(&a, run_a, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	wait_rep(&b, run_b, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, 0, "%d %s", r.code, r.msg);
	float m[N * N], ref[N * N];
	mm_ref(x.map, y.map, m);
	check_eq(z.map, m, "the producer's run");
	mm_ref(z.map, yb.map, ref);
	check_eq(out.map, ref, "the parked run");
	h_rconn_close(&b);
	h_rconn_close(&a);
	h_daemon_wait(&D);
	h_gate_free(&g);
}
