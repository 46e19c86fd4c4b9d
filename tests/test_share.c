/* SPDX-License-Identifier: MIT */
/*
 * Surfaces shared between connections by token (issue 19, the daemon's
 * side; docs/protocol.md "Sharing surfaces"): surface.export and
 * surface.import {token} on raw connections, against a real aneshared, in
 * process and with a device worker (--worker).  The tests pass memfds
 * (Linux); the IOSurface path runs against the fake IOSurface library
 * (tests/fake_iosurface.c, -Dtest_hooks=true) at the end.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <math.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include "anes_clock.h"
#include "anes_config.h"
#include "anes_fp16.h"
#include "anes_proto.h"
#include "daemon_harness.h"

static h_daemon D;

static void fini(void)
{
	h_daemon_kill(&D);
}

/* ---- a raw client that keeps the fds responses carry ------------------------ */

#define N 4                     /* the square matmul's side */
#define TENSOR_BYTES (N * N * 2)
#define TOK_LEN 64

typedef struct rep {
	int code;                   /* 0, the wire error code, -1: closed, -2: timed out */
	char msg[256];
	int64_t failed_step;        /* -1: none */
	uint64_t id, size, expires_ms, ios_id;
	bool has_ro, read_only;
	char token[TOK_LEN + 1];
	int fd;                     /* the first fd the response carried (the caller's), or -1 */
	unsigned nfds;
} rep;

typedef void (*result_fn)(const msgpack_object *result, void *ud);

static uint32_t next_msgid = 100;

/* Wait for the response to msgid into out (fn sees a success's result). */
static void wait_rep(h_rconn *rc, uint32_t msgid, int timeout_ms, rep *out, result_fn fn, void *ud)
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
			return;
		}
		msgpack_zone zone;
		msgpack_zone_init(&zone, 1024);
		anes_msg m;
		cr_assert_eq(anes_msg_decode(p, len, &zone, &m), 0, "a response that does not decode");
		bool mine = m.type == ANES_MSG_RESPONSE && m.msgid == msgid;
		if (mine && m.error) {
			h_msg_error_of(&m, &out->code, out->msg, sizeof(out->msg), &out->failed_step);
		} else if (mine) {
			(void)anes_mp_u64(m.result, "id", UINT64_MAX, &out->id);
			(void)anes_mp_u64(m.result, "size", UINT64_MAX, &out->size);
			(void)anes_mp_u64(m.result, "expires_ms", UINT64_MAX, &out->expires_ms);
			(void)anes_mp_u64(m.result, "iosurface_id", UINT64_MAX, &out->ios_id);
			out->has_ro = anes_mp_bool(m.result, "read_only", &out->read_only) == 0;
			h_map_str(m.result, "token", out->token, sizeof(out->token));
			if (fn)
				fn(m.result, ud);
		}
		msgpack_zone_destroy(&zone);
		out->fd = h_fds_keep_first(fds, nfds, mine);
		if (mine) {
			out->nfds = nfds;
			return;
		}
	}
}

/* Send method with params (a packed map, NULL: {}) and fds; its response. */
static void call_fn(h_rconn *rc, const char *method, const msgpack_sbuffer *params, const int *fds,
                    unsigned nfds, rep *out, result_fn fn, void *ud)
{
	uint32_t id = next_msgid++;
	cr_assert_eq(h_raw_request(rc->fd, id, method, params ? params->data : NULL,
	                           params ? params->size : 0, fds, nfds), 0, "sending %s", method);
	wait_rep(rc, id, 10000, out, fn, ud);
}

static void call(h_rconn *rc, const char *method, const msgpack_sbuffer *params, rep *out)
{
	call_fn(rc, method, params, NULL, 0, out, NULL, NULL);
}

/* ---- params ---------------------------------------------------------------------- */

/* Export options: ro -1 absent; uses / ttl 0 absent, UINT64_MAX nil. */
#define NIL UINT64_MAX
static rep export_opts(h_rconn *rc, uint64_t id, int ro, uint64_t uses, uint64_t ttl)
{
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 1 + (ro >= 0) + (uses != 0) + (ttl != 0));
	h_pk_kv_u(pk, "id", id);
	if (ro >= 0) {
		h_pk_str(pk, "read_only");
		if (ro)
			msgpack_pack_true(pk);
		else
			msgpack_pack_false(pk);
	}
	if (uses) {
		h_pk_str(pk, "uses");
		if (uses == NIL)
			msgpack_pack_nil(pk);
		else
			msgpack_pack_uint64(pk, uses);
	}
	if (ttl) {
		h_pk_str(pk, "ttl_ms");
		if (ttl == NIL)
			msgpack_pack_nil(pk);
		else
			msgpack_pack_uint64(pk, ttl);
	}
	rep r;
	call(rc, "surface.export", &b.sb, &r);
	msgpack_sbuffer_destroy(&b.sb);
	return r;
}

/* A token for surface id (asserted). */
static void export_ok(h_rconn *rc, uint64_t id, bool ro, uint64_t uses, char token[TOK_LEN + 1])
{
	rep r = export_opts(rc, id, ro, uses, 0);
	cr_assert_eq(r.code, 0, "surface.export: %d %s", r.code, r.msg);
	cr_assert_eq(strlen(r.token), TOK_LEN, "token \"%s\"", r.token);
	memcpy(token, r.token, TOK_LEN + 1);
}

static rep import_token_fds(h_rconn *rc, const char *token, const int *fds, unsigned nfds)
{
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 1);
	h_pk_str(pk, "token");
	h_pk_str(pk, token);
	rep r;
	call_fn(rc, "surface.import", &b.sb, fds, nfds, &r, NULL, NULL);
	msgpack_sbuffer_destroy(&b.sb);
	return r;
}

static rep import_token(h_rconn *rc, const char *token)
{
	return import_token_fds(rc, token, NULL, 0);
}

/* surface.import of token that must succeed (asserts it, with the error). */
static rep import_ok(h_rconn *rc, const char *token)
{
	rep r = import_token(rc, token);
	cr_assert_eq(r.code, 0, "surface.import: %d %s", r.code, r.msg);
	return r;
}

/* method with params {key: v}: its reply. */
static rep call_u(h_rconn *rc, const char *method, const char *key, uint64_t v)
{
	h_pbuf b;
	h_pk_kv_u(h_pb_begin(&b, 1), key, v);
	rep r;
	call(rc, method, &b.sb, &r);
	msgpack_sbuffer_destroy(&b.sb);
	return r;
}

static rep create(h_rconn *rc, uint64_t size)
{
	rep r = call_u(rc, "surface.create", "size", size);
	cr_assert_eq(r.code, 0, "surface.create: %d %s", r.code, r.msg);
	return r;
}

/* A surface of size bytes whose fd this process does not keep (only its ID). */
static rep create_nofd(h_rconn *rc, uint64_t size)
{
	rep r = create(rc, size);
	close(r.fd);
	r.fd = -1;
	return r;
}

static int release(h_rconn *rc, uint64_t id)
{
	return call_u(rc, "surface.release", "id", id).code;
}

static void *map_rw(int fd, size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap: %s", strerror(errno));
	return p;
}

static void *map_ro(int fd, size_t size)
{
	void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap: %s", strerror(errno));
	return p;
}

/* ---- the program: z = x @ y on [1, 1, 4, 4] fp16 ------------------------------------ */

static uint32_t compile_mm(h_rconn *rc)
{
	char *mil = h_square_mm_mil(N, "main");
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 1);
	h_pk_str(pk, "mil");
	h_pk_str(pk, mil);
	rep r;
	call(rc, "program.compile", &b.sb, &r);
	msgpack_sbuffer_destroy(&b.sb);
	free(mil);
	cr_assert_eq(r.code, 0, "program.compile: %d %s", r.code, r.msg);
	return (uint32_t)r.id;
}

static void fill(uint16_t *t, unsigned seed)
{
	for (unsigned i = 0; i < N * N; i++)
		t[i] = anes_f32_to_f16((float)((i * 7 + seed * 3) % 5));
}

/* z against the float product of x and y (small integers: exact in fp16). */
static void check_mm(const uint16_t *x, const uint16_t *y, const uint16_t *z)
{
	for (unsigned r = 0; r < N; r++)
		for (unsigned c = 0; c < N; c++) {
			float ref = 0;
			for (unsigned k = 0; k < N; k++)
				ref += anes_f16_to_f32(x[r * N + k]) * anes_f16_to_f32(y[k * N + c]);
			cr_assert_eq(anes_f16_to_f32(z[r * N + c]), ref, "z[%u][%u] = %g, expected %g", r, c,
			             (double)anes_f16_to_f32(z[r * N + c]), (double)ref);
		}
}

/* run {program, inputs, outputs}: the reply. */
static rep run_ids(h_rconn *rc, uint32_t prog, const uint32_t *in, uint32_t n_in, const uint32_t *out,
                   uint32_t n_out)
{
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 3);
	h_pk_kv_u(pk, "program", prog);
	h_pk_ids(pk, "inputs", in, n_in);
	h_pk_ids(pk, "outputs", out, n_out);
	rep r;
	call(rc, "run", &b.sb, &r);
	msgpack_sbuffer_destroy(&b.sb);
	return r;
}

static rep run1(h_rconn *rc, uint32_t prog, uint64_t x, uint64_t y, uint64_t z)
{
	uint32_t in[2] = { (uint32_t)x, (uint32_t)y }, out[1] = { (uint32_t)z };
	return run_ids(rc, prog, in, 2, out, 1);
}

/* A chain of n steps: step i reads ids[3i], ids[3i+1] and writes ids[3i+2]. */
static rep chain(h_rconn *rc, uint32_t prog, const uint64_t *ids, unsigned n)
{
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 1);
	h_pk_str(pk, "steps");
	msgpack_pack_array(pk, n);
	for (unsigned i = 0; i < n; i++) {
		uint32_t in[2] = { (uint32_t)ids[3 * i], (uint32_t)ids[3 * i + 1] },
		         out[1] = { (uint32_t)ids[3 * i + 2] };
		msgpack_pack_map(pk, 3);
		h_pk_kv_u(pk, "program", prog);
		h_pk_ids(pk, "inputs", in, 2);
		h_pk_ids(pk, "outputs", out, 1);
	}
	rep r;
	call(rc, "run", &b.sb, &r);
	msgpack_sbuffer_destroy(&b.sb);
	return r;
}

/* ---- status ----------------------------------------------------------------------------- */

typedef struct holder {
	uint64_t pid;
	char name[64];
	bool read_only;
} holder;

typedef struct shared_ent {
	uint64_t key, size, tokens, holders_total;
	unsigned n_holders;
	holder holders[8];
} shared_ent;

typedef struct proc_use {
	uint64_t pid, surfaces, surface_bytes, fds;
} proc_use;

typedef struct st_info {
	uint64_t surfaces, surface_bytes, shared_total, clients;
	uint64_t total_surfaces, total_surface_bytes, total_fds;
	unsigned n_shared;
	shared_ent shared[8];
	unsigned n_procs;
	proc_use procs[16];
	bool has_shared;
} st_info;

static void read_status(const msgpack_object *res, void *ud)
{
	st_info *st = ud;
	(void)anes_mp_u64(res, "surfaces", UINT64_MAX, &st->surfaces);
	(void)anes_mp_u64(res, "surface_bytes", UINT64_MAX, &st->surface_bytes);
	(void)anes_mp_u64(res, "clients", UINT64_MAX, &st->clients);
	st->has_shared = anes_mp_u64(res, "shared_total", UINT64_MAX, &st->shared_total) == 0;
	const msgpack_object *a;
	uint32_t n;
	if (anes_mp_array(res, "shared", 1024, &a, &n) == 0) {
		st->n_shared = n < 8 ? n : 8;
		for (unsigned i = 0; i < st->n_shared; i++) {
			shared_ent *e = &st->shared[i];
			(void)anes_mp_u64(&a[i], "key", UINT64_MAX, &e->key);
			(void)anes_mp_u64(&a[i], "size", UINT64_MAX, &e->size);
			(void)anes_mp_u64(&a[i], "tokens", UINT64_MAX, &e->tokens);
			(void)anes_mp_u64(&a[i], "holders_total", UINT64_MAX, &e->holders_total);
			const msgpack_object *h;
			uint32_t nh;
			if (anes_mp_array(&a[i], "holders", 1024, &h, &nh) == 0) {
				e->n_holders = nh < 8 ? nh : 8;
				for (unsigned k = 0; k < e->n_holders; k++) {
					(void)anes_mp_u64(&h[k], "pid", UINT64_MAX, &e->holders[k].pid);
					h_map_str(&h[k], "name", e->holders[k].name, sizeof(e->holders[k].name));
					(void)anes_mp_bool(&h[k], "read_only", &e->holders[k].read_only);
				}
			}
		}
	}
	if (anes_mp_array(res, "processes", 1024, &a, &n) == 0) {
		st->n_procs = n < 16 ? n : 16;
		for (unsigned i = 0; i < st->n_procs; i++) {
			(void)anes_mp_u64(&a[i], "pid", UINT64_MAX, &st->procs[i].pid);
			(void)anes_mp_u64(&a[i], "surfaces", UINT64_MAX, &st->procs[i].surfaces);
			(void)anes_mp_u64(&a[i], "surface_bytes", UINT64_MAX, &st->procs[i].surface_bytes);
			(void)anes_mp_u64(&a[i], "fds", UINT64_MAX, &st->procs[i].fds);
		}
	}
	if (anes_mp_array(res, "totals", 64, &a, &n) == 0) {
		for (unsigned i = 0; i < n; i++) {
			char name[32];
			uint64_t used = 0;
			h_map_str(&a[i], "resource", name, sizeof(name));
			(void)anes_mp_u64(&a[i], "used", UINT64_MAX, &used);
			if (!strcmp(name, "surfaces"))
				st->total_surfaces = used;
			else if (!strcmp(name, "surface_bytes"))
				st->total_surface_bytes = used;
			else if (!strcmp(name, "fds"))
				st->total_fds = used;
		}
	}
}

static st_info status(h_rconn *rc)
{
	st_info st = { 0 };
	rep r;
	call_fn(rc, "status", NULL, NULL, 0, &r, read_status, &st);
	cr_assert_eq(r.code, 0, "status: %d %s", r.code, r.msg);
	cr_assert(st.has_shared, "status has no shared_total");
	return st;
}

static const proc_use *proc_of(const st_info *st, pid_t pid)
{
	for (unsigned i = 0; i < st->n_procs; i++)
		if (st->procs[i].pid == (uint64_t)pid)
			return &st->procs[i];
	return NULL;
}

/* Poll status (bounded) until the daemon has n clients. */
static void wait_clients(h_rconn *rc, uint64_t n)
{
	st_info st = { 0 };
	for (int i = 0; i < 1000 * h_slow(); i++) {
		st = status(rc);
		if (st.clients == n)
			return;
		tu_pause_ms(10);
	}
	cr_assert_fail("%llu clients, expected %llu", (unsigned long long)st.clients,
	               (unsigned long long)n);
}

/* The number of holders status lists for the first shared entry. */
static void count_holders(const msgpack_object *res, void *ud)
{
	uint32_t *n = ud;
	const msgpack_object *a, *h;
	uint32_t na, nh;
	if (anes_mp_array(res, "shared", 1024, &a, &na) == 0 && na > 0 &&
	    anes_mp_array(&a[0], "holders", 100000, &h, &nh) == 0)
		*n = nh;
}

/* Connect and say hello as name. */
static void open_named(h_rconn *rc, const char *name)
{
	int fd = h_raw_connect(D.sock);
	cr_assert_geq(fd, 0);
	h_rconn_adopt(rc, fd);
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 2);
	h_pk_kv_u(pk, "protocol", 1);
	h_pk_str(pk, "client");
	h_pk_str(pk, name);
	rep r;
	call(rc, "hello", &b.sb, &r);
	msgpack_sbuffer_destroy(&b.sb);
	cr_assert_eq(r.code, 0, "hello: %s", r.msg);
}

/* ---- fixtures ------------------------------------------------------------------------------ */

static void start(bool worker, const char *const *more)
{
#if !defined(__linux__)
	cr_skip_test("surfaces are memfds with fds only on Linux (the IOSurface path: "
	             "token_import_names_the_same_iosurface)");
#endif
	h_daemon_start_worker(&D, worker, more);
}

/* Two raw connections to D (hello done). */
static void open2(h_rconn *a, h_rconn *b)
{
	h_rconn_open(a, D.sock);
	h_rconn_open(b, D.sock);
}

/* Close both and stop D (its exit status checked by h_daemon_stop). */
static void stop2(h_rconn *a, h_rconn *b)
{
	h_rconn_close(a);
	h_rconn_close(b);
	h_daemon_stop(&D);
}

/* Test name in process and name_worker with a device worker: fn(worker). */
#define TEST_BOTH(name, fn)                              \
	Test(share, name, .fini = fini) { fn(false); }   \
	Test(share, name##_worker, .fini = fini) { fn(true); }

/* ---- tokens ---------------------------------------------------------------------------------- */

static void imports_exactly_uses(bool worker)
{
	start(worker, NULL);
	h_rconn a, b;
	open2(&a, &b);
	rep s = create(&a, 8192);
	cr_assert_geq(s.fd, 0);
	uint8_t *pa = map_rw(s.fd, 8192);
	close(s.fd);

	char tok[TOK_LEN + 1];
	rep e = export_opts(&a, s.id, -1, 3, 0);
	cr_assert_eq(e.code, 0, "%s", e.msg);
	cr_assert_eq(e.expires_ms, 30000, "default ttl: %llu", (unsigned long long)e.expires_ms);
	memcpy(tok, e.token, sizeof(tok));
	for (size_t i = 0; i < TOK_LEN; i++)
		cr_assert(strchr("0123456789abcdef", tok[i]), "token \"%s\"", tok);

	uint8_t *pb[3];
	for (int i = 0; i < 3; i++) {
		rep im = import_token(&b, tok);
		cr_assert_eq(im.code, 0, "import %d: %d %s", i, im.code, im.msg);
		cr_assert_eq(im.size, 8192);
		cr_assert(im.has_ro && !im.read_only);
		cr_assert_eq(im.nfds, 1, "a token import carries one fd");
		pb[i] = map_rw(im.fd, 8192);
		close(im.fd);
	}
	rep im = import_token(&b, tok);
	cr_assert_eq(im.code, ANES_WERR_NO_SUCH_SURFACE, "the 4th import of a 3-use token: %d %s",
	             im.code, im.msg);
	cr_assert_eq(im.nfds, 0);

	/* One memory: what one writes, the others read (no copy). */
	for (int i = 0; i < 8192; i++)
		pa[i] = (uint8_t)(i * 31 + 7);
	for (int k = 0; k < 3; k++)
		cr_assert_eq(memcmp(pa, pb[k], 8192), 0, "import %d sees other bytes", k);
	pb[2][100] = 0xab;
	cr_assert_eq(pa[100], 0xab);

	st_info st = status(&a);
	cr_expect_eq(st.surfaces, 1, "one memory: %llu surfaces", (unsigned long long)st.surfaces);
	cr_expect_eq(st.surface_bytes, 8192);
	cr_expect_eq(st.shared_total, 1);
	cr_assert_eq(st.n_shared, 1);
	cr_expect_eq(st.shared[0].holders_total, 4);
	cr_expect_eq(st.shared[0].tokens, 0, "the used-up token is gone");
	cr_expect_eq(st.shared[0].size, 8192);
	for (int k = 0; k < 3; k++)
		munmap(pb[k], 8192);
	munmap(pa, 8192);
	stop2(&a, &b);
}

TEST_BOTH(a_token_imports_exactly_uses_times, imports_exactly_uses)

Test(share, a_token_fails_after_its_ttl, .fini = fini)
{
	anes_test_clock *clk = h_fake_clock();
	const char *args[] = { "--lane-spin-us", "0", NULL };
	start(false, args);
	h_rconn a, b;
	open2(&a, &b);
	rep s = create_nofd(&a, 4096);
	rep e = export_opts(&a, s.id, -1, 10, 1000);
	cr_assert_eq(e.code, 0, "%s", e.msg);
	cr_assert_eq(e.expires_ms, 1000);
	rep im = import_ok(&b, e.token);
	close(im.fd);
	atomic_fetch_add(&clk->now_ns, 999000000ull);   /* 999 ms: still valid */
	im = import_ok(&b, e.token);
	close(im.fd);
	atomic_fetch_add(&clk->now_ns, 1000000ull);     /* 1000 ms: dead */
	im = import_token(&b, e.token);
	cr_assert_eq(im.code, ANES_WERR_NO_SUCH_SURFACE, "%d %s", im.code, im.msg);
	st_info st = status(&a);
	cr_expect_eq(st.n_shared, 1);
	cr_expect_eq(st.shared[0].tokens, 0, "the expired token is gone");
	stop2(&a, &b);
}

Test(share, a_token_dies_with_the_exporters_handle, .fini = fini)
{
	start(false, NULL);
	h_rconn a, b;
	open2(&a, &b);
	rep s = create_nofd(&a, 4096);
	char tok[TOK_LEN + 1];
	export_ok(&a, s.id, false, 5, tok);
	rep im = import_ok(&b, tok);
	close(im.fd);
	cr_assert_eq(release(&a, s.id), 0);
	im = import_token(&b, tok);
	cr_assert_eq(im.code, ANES_WERR_NO_SUCH_SURFACE, "after the exporter's release: %d %s", im.code,
	             im.msg);

	/* ... and with the exporter's connection. */
	h_rconn c;
	h_rconn_open(&c, D.sock);
	s = create_nofd(&c, 4096);
	export_ok(&c, s.id, false, 5, tok);
	h_rconn_close(&c);
	wait_clients(&a, 2);
	im = import_token(&b, tok);
	cr_assert_eq(im.code, ANES_WERR_NO_SUCH_SURFACE, "after the exporter's disconnect: %d %s",
	             im.code, im.msg);

	/* A re-export from an importer lives with the importer's handle. */
	s = create_nofd(&a, 4096);
	export_ok(&a, s.id, false, 1, tok);
	im = import_ok(&b, tok);
	close(im.fd);
	export_ok(&b, im.id, false, 2, tok);
	cr_assert_eq(release(&a, s.id), 0);
	rep im2 = import_token(&a, tok);
	cr_assert_eq(im2.code, 0, "the importer's token outlives the creator's handle: %s", im2.msg);
	close(im2.fd);
	cr_assert_eq(release(&b, im.id), 0);
	im2 = import_token(&a, tok);
	cr_assert_eq(im2.code, ANES_WERR_NO_SUCH_SURFACE);
	stop2(&a, &b);
}

Test(share, bad_params, .fini = fini)
{
	const char *args[] = { "--max-export-uses", "8", "--max-export-ttl-ms", "5000", NULL };
	start(false, args);
	h_rconn a;
	h_rconn_open(&a, D.sock);
	rep s = create_nofd(&a, 4096);
	cr_expect_eq(export_opts(&a, s.id, -1, 9, 0).code, ANES_WERR_INVALID_PARAMS, "uses over max");
	cr_expect_eq(export_opts(&a, s.id, -1, 8, 0).code, 0);
	cr_expect_eq(export_opts(&a, s.id, -1, NIL, NIL).code, 0, "nil: the defaults");
	rep e = export_opts(&a, s.id, -1, 0, 0);
	cr_expect_eq(e.code, 0);
	cr_expect_eq(e.expires_ms, 5000, "the default ttl is cut to the max: %llu",
	             (unsigned long long)e.expires_ms);
	cr_expect_eq(export_opts(&a, s.id, -1, 0, 5001).code, ANES_WERR_INVALID_PARAMS, "ttl over max");

	rep r = call_u(&a, "surface.export", "uses", 0);   /* no id */
	cr_expect_eq(r.code, ANES_WERR_INVALID_PARAMS);
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 2);
	h_pk_kv_u(pk, "id", s.id);
	h_pk_kv_u(pk, "uses", 0);
	call(&a, "surface.export", &b.sb, &r);
	msgpack_sbuffer_destroy(&b.sb);
	cr_expect_eq(r.code, ANES_WERR_INVALID_PARAMS, "uses 0");
	pk = h_pb_begin(&b, 2);
	h_pk_kv_u(pk, "id", s.id);
	h_pk_kv_u(pk, "read_only", 1);
	call(&a, "surface.export", &b.sb, &r);
	msgpack_sbuffer_destroy(&b.sb);
	cr_expect_eq(r.code, ANES_WERR_INVALID_PARAMS, "read_only not a bool");
	cr_expect_eq(export_opts(&a, 999, -1, 0, 0).code, ANES_WERR_NO_SUCH_SURFACE);

	/* Tokens: 64 lowercase hex digits; an fd with one is bad_fd. */
	char tok[TOK_LEN + 1];
	export_ok(&a, s.id, false, 1, tok);
	char upper[TOK_LEN + 1];
	for (int i = 0; i <= TOK_LEN; i++)
		upper[i] = tok[i] >= 'a' && tok[i] <= 'f' ? (char)(tok[i] - 32) : tok[i];
	if (strcmp(upper, tok))
		cr_expect_eq(import_token(&a, upper).code, ANES_WERR_INVALID_PARAMS);
	cr_expect_eq(import_token(&a, "abc").code, ANES_WERR_INVALID_PARAMS);
	int mfd;
	cr_assert_eq(anes_memfd_create("x", 4096, &mfd), 0);
	rep im = import_token_fds(&a, tok, &mfd, 1);
	close(mfd);
	cr_expect_eq(im.code, ANES_WERR_BAD_FD, "%d %s", im.code, im.msg);
	im = import_token(&a, tok);
	cr_expect_eq(im.code, 0, "the token is still there: %s", im.msg);
	close(im.fd);
	/* An fd with an export. */
	cr_assert_eq(anes_memfd_create("x", 4096, &mfd), 0);
	h_pk_kv_u(h_pb_begin(&b, 1), "id", s.id);
	call_fn(&a, "surface.export", &b.sb, &mfd, 1, &r, NULL, NULL);
	msgpack_sbuffer_destroy(&b.sb);
	close(mfd);
	cr_expect_eq(r.code, ANES_WERR_BAD_FD);

	h_rconn_close(&a);
	h_daemon_stop(&D);
}

static void read_limits(const msgpack_object *res, void *ud)
{
	uint64_t *v = ud;
	const msgpack_object *l = anes_mp_get(res, "limits");
	cr_assert_not_null(l);
	cr_assert_eq(anes_mp_u64(l, "max_exports_per_conn", UINT64_MAX, &v[0]), 0);
	cr_assert_eq(anes_mp_u64(l, "max_daemon_exports", UINT64_MAX, &v[1]), 0);
	cr_assert_eq(anes_mp_u64(l, "max_export_uses", UINT64_MAX, &v[2]), 0);
	cr_assert_eq(anes_mp_u64(l, "max_export_ttl_ms", UINT64_MAX, &v[3]), 0);
}

Test(share, export_limits_per_connection_and_daemon, .fini = fini)
{
	const char *args[] = { "--max-exports-per-conn", "3", "--max-daemon-exports", "5", NULL };
	start(false, args);
	h_rconn c;
	h_rconn_adopt(&c, h_raw_connect(D.sock));
	h_pbuf hb;
	h_pk_kv_u(h_pb_begin(&hb, 1), "protocol", 1);
	uint64_t v[4];
	rep h;
	call_fn(&c, "hello", &hb.sb, NULL, 0, &h, read_limits, v);
	msgpack_sbuffer_destroy(&hb.sb);
	cr_assert_eq(h.code, 0);
	cr_expect_eq(v[0], 3);
	cr_expect_eq(v[1], 5);
	cr_expect_eq(v[2], 1024);
	cr_expect_eq(v[3], 600000);

	h_rconn a, b;
	open2(&a, &b);
	rep sa = create(&a, 4096), sb = create(&b, 4096);
	close(sa.fd);
	close(sb.fd);
	char tok[3][TOK_LEN + 1], t2[TOK_LEN + 1];
	for (int i = 0; i < 3; i++)
		export_ok(&a, sa.id, false, 1, tok[i]);
	rep e = export_opts(&a, sa.id, -1, 0, 0);
	cr_expect_eq(e.code, ANES_WERR_LIMIT, "a 4th live token on one connection: %d", e.code);
	cr_expect(strstr(e.msg, "max_exports_per_conn"), "%s", e.msg);
	export_ok(&b, sb.id, false, 1, t2);
	export_ok(&b, sb.id, false, 1, t2);
	e = export_opts(&b, sb.id, -1, 0, 0);
	cr_expect_eq(e.code, ANES_WERR_LIMIT, "a 6th in the daemon: %d", e.code);
	cr_expect(strstr(e.msg, "max_daemon_exports"), "%s", e.msg);
	/* A token used up gives its place back. */
	rep im = import_token(&b, tok[0]);
	cr_assert_eq(im.code, 0);
	close(im.fd);
	export_ok(&a, sa.id, false, 1, tok[0]);
	/* So does a released handle's. */
	cr_assert_eq(release(&a, sa.id), 0);
	export_ok(&b, sb.id, false, 1, t2);
	h_rconn_close(&a);
	stop2(&b, &c);
}

/* 1000 tokens: distinct, hex digits uniform (chi-square), bits balanced. */
Test(share, tokens_look_random, .fini = fini)
{
	const char *args[] = { "--max-exports-per-conn", "1000", NULL };
	start(false, args);
	h_rconn a;
	h_rconn_open(&a, D.sock);
	rep s = create_nofd(&a, 4096);
	enum { T = 1000 };
	static char toks[T][TOK_LEN + 1];
	for (int i = 0; i < T; i++)
		export_ok(&a, s.id, false, 1, toks[i]);
	for (int i = 0; i < T; i++)
		for (int j = i + 1; j < T; j++)
			cr_assert_neq(strcmp(toks[i], toks[j]), 0, "tokens %d and %d are equal", i, j);
	/* Each of the 16 digits: 64000 / 16 = 4000 expected.  Chi-square with
	 * 15 degrees of freedom: P(> 60) < 1e-6. */
	unsigned count[16] = { 0 }, ones = 0, pos_ones[256] = { 0 };
	for (int i = 0; i < T; i++)
		for (int k = 0; k < TOK_LEN; k++) {
			char ch = toks[i][k];
			unsigned d = ch <= '9' ? (unsigned)(ch - '0') : (unsigned)(ch - 'a' + 10);
			cr_assert_lt(d, 16);
			count[d]++;
			for (int bit = 0; bit < 4; bit++) {
				unsigned one = (d >> bit) & 1;
				ones += one;
				pos_ones[k * 4 + bit] += one;
			}
		}
	double chi = 0;
	for (int d = 0; d < 16; d++)
		chi += (count[d] - 4000.0) * (count[d] - 4000.0) / 4000.0;
	cr_expect_lt(chi, 60.0, "chi-square of the hex digits %.1f", chi);
	/* 256000 bits: sd 253; 6 sd.  Each bit position: 1000 bits, sd 15.8; 6 sd. */
	cr_expect_lt(fabs((double)ones - 128000.0), 1518.0, "%u ones of 256000", ones);
	for (int p = 0; p < 256; p++)
		cr_expect_lt(fabs((double)pos_ones[p] - 500.0), 95.0, "bit %d: %u ones of 1000", p,
		             pos_ones[p]);
	h_rconn_close(&a);
	h_daemon_stop(&D);
}

/* Failed imports: 4 free, then the daemon stops reading for 100 ms, 200 ms,
 * ... (its clock, injected), and the 12th closes the connection. */
Test(share, failed_imports_slow_down_then_disconnect, .fini = fini)
{
	anes_test_clock *clk = h_fake_clock();
	const char *args[] = { "--lane-spin-us", "0", NULL };
	start(false, args);
	h_rconn a, o;
	open2(&a, &o);
	char bogus[TOK_LEN + 1];
	memset(bogus, '7', TOK_LEN);
	bogus[TOK_LEN] = '\0';
	for (int i = 1; i <= 4; i++)
		cr_assert_eq(import_token(&a, bogus).code, ANES_WERR_NO_SUCH_SURFACE);
	/* The 5th fails and earns 100 ms. */
	cr_assert_eq(import_token(&a, bogus).code, ANES_WERR_NO_SUCH_SURFACE);
	for (int k = 0; k < 7; k++) {
		uint64_t pen = 100000000ull << k;
		/* Not read: a status gets no answer while the clock stands still. */
		uint32_t id = next_msgid++;
		cr_assert_eq(h_raw_request(a.fd, id, "status", NULL, 0, NULL, 0), 0);
		rep r;
		wait_rep(&a, id, 300, &r, NULL, NULL);
		cr_assert_eq(r.code, -2, "penalty %d: answered while it should not be read (%d)", k, r.code);
		/* Others are served meanwhile. */
		(void)status(&o);
		atomic_fetch_add(&clk->now_ns, pen - 1);
		wait_rep(&a, id, 300, &r, NULL, NULL);
		cr_assert_eq(r.code, -2, "penalty %d: answered 1 ns early", k);
		atomic_fetch_add(&clk->now_ns, 1);
		wait_rep(&a, id, 10000, &r, NULL, NULL);
		cr_assert_eq(r.code, 0, "penalty %d: not answered after it ended", k);
		if (k < 6)
			cr_assert_eq(import_token(&a, bogus).code, ANES_WERR_NO_SUCH_SURFACE);
	}
	/* The 12th failure closes the connection with `limit`. */
	uint32_t id = next_msgid++;
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 1);
	h_pk_str(pk, "token");
	h_pk_str(pk, bogus);
	cr_assert_eq(h_raw_request(a.fd, id, "surface.import", b.sb.data, b.sb.size, NULL, 0), 0);
	msgpack_sbuffer_destroy(&b.sb);
	rep r;
	wait_rep(&a, id, 10000, &r, NULL, NULL);
	cr_assert_eq(r.code, ANES_WERR_NO_SUCH_SURFACE);
	cr_assert_eq(h_rconn_closed_with(&a, 10000), ANES_WERR_LIMIT);
	/* Failures are forgotten after a quiet minute. */
	h_rconn c;
	h_rconn_open(&c, D.sock);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(import_token(&c, bogus).code, ANES_WERR_NO_SUCH_SURFACE);
	atomic_fetch_add(&clk->now_ns, 60000000000ull);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(import_token(&c, bogus).code, ANES_WERR_NO_SUCH_SURFACE);
	cr_assert_eq(status(&c).clients, 2, "no penalty after the quiet minute (o and c)");
	h_rconn_close(&a);
	stop2(&c, &o);
}

/* ---- read-only -------------------------------------------------------------------------------- */

static void read_only_not_an_output(bool worker)
{
	start(worker, NULL);
	h_rconn a, b;
	open2(&a, &b);
	uint32_t pb = compile_mm(&b);
	rep x = create(&a, TENSOR_BYTES), y = create(&b, TENSOR_BYTES), z = create(&b, TENSOR_BYTES),
	    z2 = create(&b, TENSOR_BYTES);
	uint16_t *px = map_rw(x.fd, TENSOR_BYTES), *py = map_rw(y.fd, TENSOR_BYTES),
	         *pz = map_rw(z.fd, TENSOR_BYTES), *pz2 = map_rw(z2.fd, TENSOR_BYTES);
	fill(px, 1);
	fill(py, 2);
	char tok[TOK_LEN + 1];
	export_ok(&a, x.id, true, 1, tok);
	rep ix = import_ok(&b, tok);
	cr_assert(ix.has_ro && ix.read_only);
	uint16_t *pix = map_ro(ix.fd, TENSOR_BYTES);
	cr_assert_eq(memcmp(pix, px, TENSOR_BYTES), 0);

	/* As an input: fine.  As an output: invalid_params, nothing written. */
	rep r = run1(&b, pb, ix.id, y.id, z.id);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	check_mm(px, py, pz);
	uint16_t before[N * N];
	memcpy(before, px, TENSOR_BYTES);
	r = run1(&b, pb, y.id, y.id, ix.id);
	cr_assert_eq(r.code, ANES_WERR_INVALID_PARAMS, "a read-only output: %d %s", r.code, r.msg);
	cr_assert_eq(memcmp(before, px, TENSOR_BYTES), 0);

	/* In a chain whose first step reads the read-only import (another
	 * connection's memory) and whose second writes it: refused, step 1
	 * named, no step runs. */
	for (unsigned i = 0; i < N * N; i++)
		pz[i] = pz2[i] = 0x7e00;   /* NaN */
	uint64_t bad[6] = { ix.id, y.id, z.id, z.id, y.id, ix.id };
	r = chain(&b, pb, bad, 2);
	cr_assert_eq(r.code, ANES_WERR_INVALID_PARAMS, "%d %s", r.code, r.msg);
	cr_assert_eq(r.failed_step, 1);
	cr_assert_eq(pz[0], 0x7e00, "a step ran");
	/* The same chain writing its own surface: runs, mixing the holders. */
	uint64_t good[6] = { ix.id, y.id, z.id, z.id, ix.id, z2.id };
	r = chain(&b, pb, good, 2);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	check_mm(px, py, pz);
	check_mm(pz, px, pz2);

	/* A re-export of the read-only handle is read-only, asked or not. */
	export_ok(&b, ix.id, false, 1, tok);
	rep again = import_ok(&a, tok);
	cr_assert(again.has_ro && again.read_only, "a re-export of a read-only import is read-only");
	void *w = mmap(NULL, TENSOR_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, again.fd, 0);
	cr_assert_eq(w, MAP_FAILED, "mmap(PROT_WRITE) of a read-only import's fd");
	cr_assert_eq(errno, EACCES);
	close(again.fd);
	uint32_t pa = compile_mm(&a);
	r = run1(&a, pa, x.id, x.id, again.id);
	cr_assert_eq(r.code, ANES_WERR_INVALID_PARAMS);
	/* The creator's own handle still writes. */
	r = run1(&a, pa, again.id, again.id, x.id);
	cr_assert_eq(r.code, 0, "%s", r.msg);

	st_info st = status(&a);
	cr_assert_eq(st.n_shared, 1);
	unsigned ro = 0;
	for (unsigned i = 0; i < st.shared[0].n_holders; i++)
		ro += st.shared[0].holders[i].read_only;
	cr_expect_eq(st.shared[0].holders_total, 3);
	cr_expect_eq(ro, 2, "two read-only holders");
	munmap(pix, TENSOR_BYTES);
	close(ix.fd);
	stop2(&a, &b);
	(void)pz2;
	close(x.fd);
	close(y.fd);
	close(z.fd);
	close(z2.fd);
}

TEST_BOTH(a_read_only_import_is_never_a_run_output, read_only_not_an_output)

/* In a child that gives up root (uid/gid 65534): what the fd of a read-only
 * import allows.  Exit codes name the first check that failed. */
static sigjmp_buf segv_jmp;
static void on_segv(int sig)
{
	(void)sig;
	siglongjmp(segv_jmp, 1);
}

static int ro_child(int fd, int rw_fd, size_t size)
{
	if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
		return 10;
	if (geteuid() != 65534)
		return 11;
	/* setuid made the process non-dumpable, which makes /proc/self/fd
	 * root's: dumpable again, so that only the file's mode decides. */
#if defined(__linux__)
	if (prctl(PR_SET_DUMPABLE, 1) < 0)
		return 12;
#endif
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", rw_fd);
	int ok = open(path, O_RDWR | O_CLOEXEC);
	if (ok < 0)
		return 20;   /* the control: a read-write memfd reopens O_RDWR */
	close(ok);
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p != MAP_FAILED)
		return 30;
	if (errno != EACCES)
		return 31;
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	int w = open(path, O_RDWR | O_CLOEXEC);
	if (w >= 0)
		return 40;
	if (errno != EACCES)
		return 41;
	int r = open(path, O_RDONLY | O_CLOEXEC);
	if (r < 0)
		return 42;   /* reading is allowed */
	close(r);
	volatile uint8_t *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	if ((void *)m == MAP_FAILED)
		return 50;
	if (m[0] != 0x5a)
		return 51;
	struct sigaction sa = { .sa_handler = on_segv };
	sigaction(SIGSEGV, &sa, NULL);
	if (sigsetjmp(segv_jmp, 1) == 0) {
		m[0] = 1;
		return 60;   /* wrote through a PROT_READ mapping */
	}
	if (mprotect((void *)m, size, PROT_READ | PROT_WRITE) == 0)
		return 61;
	return 0;
}

Test(share, a_read_only_importer_cannot_write, .fini = fini)
{
	start(false, NULL);
	if (getuid() != 0)
		cr_skip_test("needs root to drop to uid 65534 (CI runs as root); as a user, the "
		             "file mode check would not show that another user is refused");
	h_rconn a, b;
	open2(&a, &b);
	rep s = create(&a, 4096), s2 = create(&a, 4096);
	uint8_t *p = map_rw(s.fd, 4096);
	p[0] = 0x5a;
	char tok[TOK_LEN + 1], tok2[TOK_LEN + 1];
	export_ok(&a, s.id, true, 1, tok);
	export_ok(&a, s2.id, false, 1, tok2);
	rep im = import_token(&b, tok), im2 = import_token(&b, tok2);
	cr_assert_eq(im.code, 0);
	cr_assert_eq(im2.code, 0);
	cr_assert(im.read_only && !im2.read_only);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(ro_child(im.fd, im2.fd, 4096));
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed check %d",
	          WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
	/* The creator's fd (O_RDWR) still writes, and its surface is a run output. */
	p[1] = 0x77;
	uint8_t *q = map_ro(im.fd, 4096);
	cr_assert_eq(q[1], 0x77);
	munmap(q, 4096);
	munmap(p, 4096);
	close(s.fd);
	close(s2.fd);
	close(im.fd);
	close(im2.fd);
	stop2(&a, &b);
}

/* ---- lifetimes ------------------------------------------------------------------------------- */

/* A producer process: x (filled from seed 1), exported read-only for one
 * import; the token goes to the parent through a pipe, then it waits to be
 * killed. */
typedef struct producer_arg {
	const char *sock;
	int pipe_w;
} producer_arg;

/* In a forked child (asserts nothing): the responses to hello (msgid 1) and
 * to request 2, whose fd (-1 without one) and result's u64 under key it
 * keeps.  0, or 1 if a response did not come, 2 if one is an error or does
 * not decode. */
static int child_two_responses(h_rconn *rc, const char *key, uint64_t *val, int *ret_fd)
{
	const uint8_t *p;
	uint32_t len;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	for (int k = 0; k < 2; k++) {
		if (h_rconn_frame_fds(rc, 10000, &p, &len, fds, &nfds) != 1)
			return 1;
		msgpack_zone zone;
		msgpack_zone_init(&zone, 1024);
		anes_msg m;
		if (anes_msg_decode(p, len, &zone, &m) < 0 || m.error)
			return 2;
		if (m.msgid == 2) {
			(void)anes_mp_u64(m.result, key, UINT64_MAX, val);
			*ret_fd = nfds ? fds[0] : -1;
		}
		msgpack_zone_destroy(&zone);
	}
	return 0;
}

static int producer(void *arg, int ready_fd)
{
	producer_arg *pa = arg;
	int fd = h_raw_connect(pa->sock);
	if (fd < 0 || h_raw_send_hello(fd, 1) < 0)
		return 2;
	h_rconn rc;
	h_rconn_adopt(&rc, fd);
	/* No criterion asserts here: the child reports by exit status. */
	uint32_t id = 2;
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	msgpack_packer pk;
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	h_pk_kv_u(&pk, "size", TENSOR_BYTES);
	if (h_raw_request(fd, id, "surface.create", sb.data, sb.size, NULL, 0) < 0)
		return 3;
	msgpack_sbuffer_clear(&sb);
	uint64_t sid = 0;
	int sfd = -1;
	/* hello's response, then surface.create's */
	int e = child_two_responses(&rc, "id", &sid, &sfd);
	if (e)
		return 3 + e;
	if (sfd < 0)
		return 6;
	uint16_t *x = mmap(NULL, TENSOR_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	if (x == MAP_FAILED)
		return 7;
	fill(x, 1);
	msgpack_pack_map(&pk, 2);
	h_pk_kv_u(&pk, "id", sid);
	h_pk_str(&pk, "read_only");
	msgpack_pack_true(&pk);
	if (h_raw_request(fd, 3, "surface.export", sb.data, sb.size, NULL, 0) < 0)
		return 8;
	const uint8_t *p;
	uint32_t len;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	if (h_rconn_frame_fds(&rc, 10000, &p, &len, fds, &nfds) != 1)
		return 9;
	msgpack_zone zone;
	msgpack_zone_init(&zone, 1024);
	anes_msg m;
	char tok[TOK_LEN + 1];
	if (anes_msg_decode(p, len, &zone, &m) < 0 || m.error)
		return 10;
	h_map_str(m.result, "token", tok, sizeof tok);
	if (strlen(tok) != TOK_LEN || write(pa->pipe_w, tok, TOK_LEN) != TOK_LEN)
		return 11;
	if (write(ready_fd, "r", 1) != 1)
		return 12;
	for (;;)
		pause();
}

static void exporter_killed(bool worker)
{
	start(worker, NULL);
	h_rconn obs;
	h_rconn_open(&obs, D.sock);
	st_info base = status(&obs);
	long rss0 = h_daemon_rss_kb(&D);
	int pfd[2];
	cr_assert_eq(pipe(pfd), 0);
	producer_arg pa = { D.sock, pfd[1] };
	pid_t child = h_spawn(producer, &pa);
	char tok[TOK_LEN + 1] = { 0 };
	cr_assert_eq(read(pfd[0], tok, TOK_LEN), TOK_LEN);
	close(pfd[0]);
	close(pfd[1]);

	h_rconn b;
	open_named(&b, "model-a");
	uint32_t prog = compile_mm(&b);
	rep ix = import_ok(&b, tok);
	cr_assert(ix.read_only);
	rep y = create(&b, TENSOR_BYTES), z = create(&b, TENSOR_BYTES);
	uint16_t *px = map_ro(ix.fd, TENSOR_BYTES), *py = map_rw(y.fd, TENSOR_BYTES),
	         *pz = map_rw(z.fd, TENSOR_BYTES);
	fill(py, 2);
	rep r = run1(&b, prog, ix.id, y.id, z.id);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	check_mm(px, py, pz);

	st_info st = status(&obs);
	const proc_use *me = proc_of(&st, getpid()), *pr = proc_of(&st, child);
	cr_assert(me && pr);
	cr_expect_eq(pr->surfaces, 1);
	cr_expect_eq(pr->surface_bytes, TENSOR_BYTES);
	cr_expect_eq(me->surfaces, 3, "the import is charged to its holder");
	cr_expect_eq(me->surface_bytes, 3 * TENSOR_BYTES);
	cr_expect_eq(st.surfaces, base.surfaces + 3, "the shared memory is counted once");
	cr_expect_eq(st.total_surfaces, base.total_surfaces + 3);
	cr_expect_eq(st.total_surface_bytes, base.total_surface_bytes + 3 * TENSOR_BYTES);
	cr_expect_eq(me->fds, 3, "an fd charged to each handle");
	cr_expect_eq(pr->fds, 1);
	cr_expect_eq(st.total_fds, base.total_fds + 3, "one fd per memory in the daemon's total");
	cr_assert_eq(st.n_shared, 1);
	cr_expect_eq(st.shared[0].holders_total, 2);
	cr_assert_eq(st.shared[0].n_holders, 2);
	cr_expect_eq(st.shared[0].size, TENSOR_BYTES);
	cr_expect_eq(st.shared[0].tokens, 0);
	for (unsigned i = 0; i < 2; i++) {
		const holder *h = &st.shared[0].holders[i];
		bool mine = h->pid == (uint64_t)getpid();
		cr_expect(mine || h->pid == (uint64_t)child, "holder pid %llu", (unsigned long long)h->pid);
		cr_expect_eq(h->read_only, mine, "the importer's handle is read-only, the creator's not");
		cr_expect_str_eq(h->name, mine ? "model-a" : "", "holder %u", i);
	}

	/* SIGKILL the producer mid-pipeline: the importer's handle stays. */
	kill(child, SIGKILL);
	int wst;
	cr_assert_eq(waitpid(child, &wst, 0), child);
	wait_clients(&obs, 2);
	for (unsigned i = 0; i < N * N; i++)
		pz[i] = 0x7e00;
	fill(py, 3);
	r = run1(&b, prog, ix.id, y.id, z.id);
	cr_assert_eq(r.code, 0, "after the exporter died: %s", r.msg);
	check_mm(px, py, pz);
	st = status(&obs);
	cr_expect_eq(st.surfaces, base.surfaces + 3);
	cr_expect_eq(proc_of(&st, child), NULL);
	cr_expect_eq(st.shared_total, 0, "one holder and no token: not shared any more");

	/* The last holder gone, the memory goes. */
	munmap(px, TENSOR_BYTES);
	munmap(py, TENSOR_BYTES);
	munmap(pz, TENSOR_BYTES);
	close(ix.fd);
	close(y.fd);
	close(z.fd);
	h_rconn_close(&b);
	wait_clients(&obs, 1);
	st = status(&obs);
	cr_expect_eq(st.surfaces, base.surfaces);
	cr_expect_eq(st.surface_bytes, base.surface_bytes);
	cr_expect_eq(st.total_surfaces, base.total_surfaces);
	cr_expect_eq(st.total_fds, base.total_fds);
	(void)rss0;
	h_rconn_close(&obs);
	h_daemon_stop(&D);
}

TEST_BOTH(killing_the_exporter_mid_pipeline_leaves_the_importer_working, exporter_killed)

/* Holders of 64 MiB of shared memory, all killed: status and the daemon's
 * RSS back where they were. */
typedef struct holder_arg {
	const char *sock;
	int pipe_r;     /* the token comes here */
	int touch;      /* write every page */
} holder_arg;

static int holder_proc(void *arg, int ready_fd)
{
	holder_arg *ha = arg;
	char tok[TOK_LEN + 1] = { 0 };
	if (read(ha->pipe_r, tok, TOK_LEN) != TOK_LEN)
		return 2;
	int fd = h_raw_connect(ha->sock);
	if (fd < 0 || h_raw_send_hello(fd, 1) < 0)
		return 3;
	h_rconn rc;
	h_rconn_adopt(&rc, fd);
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	msgpack_packer pk;
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	h_pk_str(&pk, "token");
	h_pk_str(&pk, tok);
	if (h_raw_request(fd, 2, "surface.import", sb.data, sb.size, NULL, 0) < 0)
		return 4;
	int mfd = -1;
	uint64_t size = 0;
	/* hello's response, then surface.import's */
	int e = child_two_responses(&rc, "size", &size, &mfd);
	if (e)
		return 4 + e;
	if (mfd < 0 || size == 0)
		return 7;
	/* The others' imports are read-only: PROT_READ. */
	uint8_t *m = mmap(NULL, size, ha->touch ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, mfd, 0);
	if (m == MAP_FAILED)
		return 8;
	if (ha->touch)
		memset(m, 0x33, size);
	if (write(ready_fd, "r", 1) != 1)
		return 9;
	for (;;)
		pause();
}

/* Mappings of the daemon's surfaces of size bytes (memfds named
 * "aneshare-surface") in /proc/PID/maps. */
static int surface_maps(pid_t pid, size_t size)
{
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	int n = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && hi - lo == size &&
		    strstr(line, "aneshare-surface"))
			n++;
	}
	fclose(f);
	return n;
}

#define DOUBLE_SIDE 1024
#define DOUBLE_BYTES (DOUBLE_SIDE * DOUBLE_SIDE * 2)

static uint32_t compile_double(h_rconn *rc)
{
	char mil[512];
	snprintf(mil, sizeof mil,
	         "program(1.3)\n{\n"
	         "    func main<ios18>(tensor<fp16, [1, 1, %d, %d]> x) {\n"
	         "        tensor<fp16, [1, 1, %d, %d]> y = add(x = x, y = x)[name = string(\"y\")];\n"
	         "    } -> (y);\n}\n", DOUBLE_SIDE, DOUBLE_SIDE, DOUBLE_SIDE, DOUBLE_SIDE);
	h_pbuf b;
	msgpack_packer *pk = h_pb_begin(&b, 1);
	h_pk_str(pk, "mil");
	h_pk_str(pk, mil);
	rep r;
	call(rc, "program.compile", &b.sb, &r);
	msgpack_sbuffer_destroy(&b.sb);
	cr_assert_eq(r.code, 0, "program.compile: %d %s", r.code, r.msg);
	return (uint32_t)r.id;
}

static rep run_double(h_rconn *rc, uint32_t prog, uint64_t x, uint64_t y)
{
	uint32_t in[1] = { (uint32_t)x }, out[1] = { (uint32_t)y };
	return run_ids(rc, prog, in, 1, out, 1);
}

static void all_holders_killed(bool worker)
{
	start(worker, NULL);
	h_rconn obs;
	h_rconn_open(&obs, D.sock);
	st_info base = status(&obs);
	enum { HOLDERS = 3 };
	const size_t size = 64u << 20;
	/* The first holder creates it here, in a child of its own. */
	int tp[HOLDERS][2];
	pid_t kids[HOLDERS];
	holder_arg ha[HOLDERS];
	for (int i = 0; i < HOLDERS; i++) {
		cr_assert_eq(pipe(tp[i]), 0);
		ha[i] = (holder_arg){ D.sock, tp[i][0], i == 0 };
	}
	h_rconn a;
	h_rconn_open(&a, D.sock);
	/* y = x + x on 2 MiB: a run that makes the daemon (in process) touch
	 * the first 2 MiB of the shared memory.  Compiled and run once first,
	 * so that the program's own memory is there before the baseline. */
	uint32_t prog = compile_double(&a);
	rep o = create(&a, DOUBLE_BYTES), w = create(&a, DOUBLE_BYTES);
	cr_assert_eq(run_double(&a, prog, w.id, o.id).code, 0);
	long rss0 = h_daemon_rss_kb(&D), shm0 = tu_proc_status_kb(D.pid, "RssShmem");
	uint16_t *po = map_rw(o.fd, DOUBLE_BYTES);
	close(o.fd);
	close(w.fd);
	rep s = create(&a, size);
	uint8_t *pa = map_rw(s.fd, size);
	memset(pa, 0x11, size);   /* the memory exists */
	for (int i = 0; i < HOLDERS; i++) {
		char tok[TOK_LEN + 1];
		export_ok(&a, s.id, i > 0, 1, tok);
		cr_assert_eq(write(tp[i][1], tok, TOK_LEN), TOK_LEN);
		kids[i] = h_spawn(holder_proc, &ha[i]);
	}
	st_info st = status(&obs);
	cr_assert_eq(st.surfaces, base.surfaces + 3, "o, w and the shared memory once");
	cr_assert_eq(st.surface_bytes, base.surface_bytes + size + 2 * DOUBLE_BYTES);
	cr_assert_eq(surface_maps(D.pid, size), 1, "the daemon maps the memory once");
	cr_assert_eq(st.n_shared, 1);
	cr_assert_eq(st.shared[0].holders_total, HOLDERS + 1);
	cr_assert_eq(pa[12345], 0x33, "the first holder wrote it");
	rep r = run_double(&a, prog, s.id, o.id);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	uint16_t want = anes_f32_to_f16(2 * anes_f16_to_f32(0x3333));
	cr_assert_eq(po[0], want, "%#x, expected %#x", po[0], want);
	cr_assert_eq(po[DOUBLE_BYTES / 2 - 1], want);
	long shm1 = tu_proc_status_kb(D.pid, "RssShmem"), rss1 = h_daemon_rss_kb(&D);
	if (!worker && shm0 >= 0)
		cr_expect_geq(shm1, shm0 + 2048, "the run touched 2 MiB of the shared memory: RssShmem "
		              "%ld KiB, %ld before", shm1, shm0);
	munmap(po, DOUBLE_BYTES);
	munmap(pa, size);
	close(s.fd);
	h_rconn_close(&a);   /* the creator goes first */
	for (int i = 0; i < HOLDERS; i++) {
		kill(kids[i], SIGKILL);
		int wst;
		waitpid(kids[i], &wst, 0);
		close(tp[i][0]);
		close(tp[i][1]);
	}
	wait_clients(&obs, 1);
	st = status(&obs);
	cr_expect_eq(st.surfaces, base.surfaces);
	cr_expect_eq(st.surface_bytes, base.surface_bytes);
	cr_expect_eq(st.total_surfaces, base.total_surfaces);
	cr_expect_eq(st.total_surface_bytes, base.total_surface_bytes);
	cr_expect_eq(st.total_fds, base.total_fds);
	cr_expect_eq(st.shared_total, 0);
	cr_expect_eq(surface_maps(D.pid, size), 0, "the daemon still maps the memory");
	/* The daemon mapped the 64 MiB (and its pages were touched): its RSS
	 * went up by them while held; now back within 16 MiB of the start. */
	/* The daemon's RSS back where it was: its shared pages (RssShmem, up
	 * by the run) exactly, the whole within 1 MiB. */
	long rss2 = h_daemon_rss_kb(&D), shm2 = tu_proc_status_kb(D.pid, "RssShmem");
	if (shm0 >= 0)
		cr_expect_leq(shm2, shm0, "RssShmem %ld KiB, %ld before (%ld while held)", shm2, shm0, shm1);
	if (rss0 > 0)
		cr_expect_leq(rss2, rss0 + 1024, "RSS %ld KiB, %ld before (%ld while held)", rss2, rss0,
		              rss1);
	h_rconn_close(&obs);
	h_daemon_stop(&D);
}

TEST_BOTH(killing_every_holder_frees_the_memory, all_holders_killed)

/* Limits: an import is charged to its holder like a surface of its own
 * (max_client_surfaces, surface bytes); the daemon's total counts the
 * memory once. */
Test(share, an_import_counts_against_the_holders_limits, .fini = fini)
{
	const char *args[] = { "--max-surfaces", "2", "--max-client-surfaces", "10",
	                       "--max-total-surface-bytes", "12K", NULL };
	start(false, args);
	h_rconn a, b;
	open2(&a, &b);
	/* The two connections are one process: 2 surfaces per connection,
	 * 12 KiB for the process. */
	rep s = create_nofd(&a, 4096);
	char tok[TOK_LEN + 1];
	export_ok(&a, s.id, false, 3, tok);
	rep i1 = import_token(&b, tok), i2 = import_token(&b, tok);
	cr_assert_eq(i1.code, 0);
	cr_assert_eq(i2.code, 0);
	close(i1.fd);
	close(i2.fd);
	rep i3 = import_token(&b, tok);
	cr_assert_eq(i3.code, ANES_WERR_LIMIT, "a 3rd surface on b: %d %s", i3.code, i3.msg);
	cr_assert_eq(release(&b, i1.id), 0);
	i3 = import_token(&b, tok);
	cr_assert_eq(i3.code, 0, "the token survived the refusal: %s", i3.msg);
	close(i3.fd);
	/* 3 handles of 4 KiB: the process is at 12 KiB, the daemon holds 4. */
	st_info st = status(&a);
	const proc_use *me = proc_of(&st, getpid());
	cr_assert_not_null(me);
	cr_expect_eq(me->surfaces, 3);
	cr_expect_eq(me->surface_bytes, 12288);
	cr_expect_eq(st.total_surface_bytes, 4096);
	cr_expect_eq(st.surface_bytes, 4096);
	export_ok(&a, s.id, false, 1, tok);
	rep i4 = import_token(&a, tok);
	cr_assert_eq(i4.code, ANES_WERR_LIMIT, "over max_total_surface_bytes: %d %s", i4.code, i4.msg);
	cr_expect(strstr(i4.msg, "max_total_surface_bytes"), "%s", i4.msg);
	stop2(&a, &b);
}

/* ---- the IOSurface path (macOS), against the fake library ------------------------------- */

static char fake_dir[128];

static void fini_ios(void)
{
	h_daemon_kill(&D);
	h_fake_iosurface_rm(fake_dir);
}

Test(share, token_import_names_the_same_iosurface, .fini = fini_ios)
{
	h_fake_iosurface_env(fake_dir, sizeof fake_dir);
	h_daemon_start(&D);
	h_rconn a, b;
	open2(&a, &b);
	rep x = create(&a, TENSOR_BYTES), y = create(&b, TENSOR_BYTES), z = create(&b, TENSOR_BYTES);
	cr_assert_eq(x.nfds, 0, "no fd with IOSurfaces");
	cr_assert_neq(x.ios_id, 0);
	char tok[TOK_LEN + 1];
	export_ok(&a, x.id, true, 1, tok);
	rep ix = import_ok(&b, tok);
	cr_assert_eq(ix.nfds, 0);
	cr_assert_eq(ix.ios_id, x.ios_id, "the same IOSurface: %llu, not %llu",
	             (unsigned long long)ix.ios_id, (unsigned long long)x.ios_id);
	cr_assert(ix.read_only);
	/* The daemon's mapping is the IOSurface's: a run reads what the
	 * creator put there.  The test process maps nothing (no
	 * IOSurfaceLookup here): the daemon fills x through a run. */
	uint32_t prog = compile_mm(&b);
	rep r = run1(&b, prog, ix.id, y.id, z.id);
	cr_assert_eq(r.code, 0, "%s", r.msg);
	r = run1(&b, prog, y.id, y.id, ix.id);
	cr_assert_eq(r.code, ANES_WERR_INVALID_PARAMS, "a read-only output, IOSurface too");
	st_info st = status(&a);
	cr_assert_eq(st.surfaces, 3, "one IOSurface, counted once");
	cr_assert_eq(st.n_shared, 1);
	/* Released by both holders, the IOSurface is freed. */
	cr_assert_eq(release(&a, x.id), 0);
	cr_assert(h_fake_iosurface_exists(fake_dir, x.ios_id), "freed while b holds it");
	cr_assert_eq(release(&b, ix.id), 0);
	for (int i = 0; i < 1000 * h_slow() && h_fake_iosurface_exists(fake_dir, x.ios_id); i++)
		tu_pause_ms(10);
	cr_assert(!h_fake_iosurface_exists(fake_dir, x.ios_id), "IOSurface %llu was not freed", (unsigned long long)x.ios_id);
	stop2(&a, &b);
}

/* status lists shared memory within an eighth of max_frame: a long list
 * of holders is cut, holders_total counts them all. */
Test(share, status_lists_holders_within_its_bound, .fini = fini)
{
	const char *args[] = { "--max-frame", "64K", NULL };
	start(false, args);
	h_rconn a, b;
	open2(&a, &b);
	rep s = create_nofd(&a, 4096);
	char tok[TOK_LEN + 1];
	export_ok(&a, s.id, false, 99, tok);
	for (int i = 0; i < 99; i++) {
		rep im = import_token(&b, tok);
		cr_assert_eq(im.code, 0, "import %d: %s", i, im.msg);
		close(im.fd);
	}
	st_info st = status(&a);
	cr_assert_eq(st.shared_total, 1);
	cr_assert_eq(st.n_shared, 1);
	cr_expect_eq(st.shared[0].holders_total, 100);
	cr_expect_eq(st.shared[0].tokens, 0);
	/* 8 KiB: (8192 - 96) / 176 = 46 holders listed. */
	uint32_t listed = 0;
	rep r;
	call_fn(&a, "status", NULL, NULL, 0, &r, count_holders, &listed);
	cr_assert_eq(r.code, 0);
	cr_expect_eq(listed, 46, "%u holders listed", listed);
	stop2(&a, &b);
}

/* A memfd the client made and imported by fd can be exported read-only:
 * the daemon makes its mode 0444, the importer gets a read-only fd, and the
 * client's own fd (open read-write) still maps for writing. */
Test(share, a_clients_own_memfd_can_be_shared_read_only, .fini = fini)
{
	start(false, NULL);
	h_rconn a, b;
	open2(&a, &b);
	int mfd;
	cr_assert_eq(anes_memfd_create("mine", 8192, &mfd), 0);
	uint8_t *p = map_rw(mfd, 8192);
	memset(p, 0x42, 8192);
	rep s;
	call_fn(&a, "surface.import", NULL, &mfd, 1, &s, NULL, NULL);
	cr_assert_eq(s.code, 0, "%s", s.msg);
	char tok[TOK_LEN + 1];
	export_ok(&a, s.id, true, 1, tok);
	struct stat st;
	cr_assert_eq(fstat(mfd, &st), 0);
	cr_expect_eq(st.st_mode & 0777, 0444, "mode %o", (unsigned)(st.st_mode & 0777));
	rep im = import_ok(&b, tok);
	cr_assert(im.read_only);
	cr_assert_eq(fcntl(im.fd, F_GETFL) & O_ACCMODE, O_RDONLY, "the importer's fd is O_RDONLY");
	void *w = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, im.fd, 0);
	cr_assert_eq(w, MAP_FAILED);
	uint8_t *q = map_ro(im.fd, 8192);
	cr_assert_eq(q[8191], 0x42);
	uint8_t *p2 = map_rw(mfd, 8192);
	p2[8191] = 0x43;
	cr_assert_eq(q[8191], 0x43, "the producer writes, the consumer sees it");
	munmap(p, 8192);
	munmap(p2, 8192);
	munmap(q, 8192);
	close(mfd);
	close(im.fd);
	stop2(&a, &b);
}
