/* SPDX-License-Identifier: MIT */
/*
 * Chained runs, the async client API and the size of run frames, against a
 * real daemon (tests/daemon_harness.c).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "anes_fp16.h"
#include "anes_proto.h"
#include "daemon_harness.h"

/* y = x + x, and a second function that --fault-inject makes fail. */
static const char *mil_double =
	"program(1.3)\n{\n"
	"    func main<ios18>(tensor<fp16, [1, 1, 1, 8]> x) {\n"
	"        tensor<fp16, [1, 1, 1, 8]> y = add(x = x, y = x)[name = string(\"y\")];\n"
	"    } -> (y);\n"
	"    func fail_me<ios18>(tensor<fp16, [1, 1, 1, 8]> x) {\n"
	"        tensor<fp16, [1, 1, 1, 8]> y = add(x = x, y = x)[name = string(\"y\")];\n"
	"    } -> (y);\n}\n";

#define N 6

typedef struct chain_fixture {
	h_daemon d;
	aneshare_conn *c;
	aneshare_program *p;
	aneshare_surface *s[N + 1];   /* s[i] -> step i -> s[i + 1] */
	aneshare_step steps[N];
} chain_fixture;

static void setup(chain_fixture *f)
{
	const char *args[] = { "--fault-inject", "run_fail=fail_me", NULL };
	h_daemon_start_args(&f->d, args);
	f->c = h_connect(&f->d, "test-chain");
	cr_assert_eq(aneshare_program_compile(f->c, mil_double, NULL, 0, &f->p, NULL), 0, "%s",
	             aneshare_last_error(f->c));
	for (int i = 0; i <= N; i++)
		cr_assert_eq(aneshare_surface_create(f->c, 16, &f->s[i]), 0);
	uint16_t *x = aneshare_surface_data(f->s[0]);
	for (int k = 0; k < 8; k++)
		x[k] = anes_f32_to_f16((float)(k + 1) * 0.25f);
	for (int i = 0; i < N; i++)
		f->steps[i] = (aneshare_step){ f->p, 0, &f->s[i], 1, &f->s[i + 1], 1 };
}

static void teardown(chain_fixture *f)
{
	aneshare_disconnect(f->c);
	h_daemon_stop(&f->d);
}

/* s[i] holds the input times 2^i for i <= upto, zeros after. */
static void check_outputs(chain_fixture *f, int upto)
{
	for (int i = 1; i <= N; i++) {
		const uint16_t *y = aneshare_surface_data(f->s[i]);
		for (int k = 0; k < 8; k++) {
			float want = i <= upto ? (float)(k + 1) * 0.25f * (float)(1 << i) : 0.0f;
			cr_assert_float_eq(anes_f16_to_f32(y[k]), want, 1e-3, "surface %d elem %d", i, k);
		}
	}
}

Test(chain, each_step_consumes_the_previous_output)
{
	chain_fixture f;
	setup(&f);
	cr_assert_eq(aneshare_run_chain(f.c, f.steps, N), 0, "%s", aneshare_last_error(f.c));
	cr_assert_eq(aneshare_last_failed_step(f.c), -1);
	check_outputs(&f, N);
	aneshare_status *st = h_status(f.c);
	cr_assert_eq(st->runs, N, "every step counts as a run");
	aneshare_status_free(st);
	teardown(&f);
}

Test(chain, error_in_the_middle_names_the_step_and_keeps_earlier_outputs)
{
	chain_fixture f;
	setup(&f);
	f.steps[3].function = 1;   /* fail_me: the daemon fails it on purpose */
	int r = aneshare_run_chain(f.c, f.steps, N);
	cr_assert_eq(r, -ANESHARE_ERUN_FAILED, "%d %s", r, aneshare_last_error(f.c));
	cr_assert_eq(aneshare_last_failed_step(f.c), 3);
	cr_assert(strstr(aneshare_last_error(f.c), "step 3"), "%s", aneshare_last_error(f.c));
	check_outputs(&f, 3);   /* steps 0..2 wrote theirs, nothing after */

	/* A step the daemon refuses up front: nothing runs at all. */
	memset(aneshare_surface_data(f.s[1]), 0, 16);
	f.steps[3].function = 0;
	aneshare_surface *small;
	cr_assert_eq(aneshare_surface_create(f.c, 8, &small), 0);
	f.steps[4].outputs = &small;
	r = aneshare_run_chain(f.c, f.steps, N);
	cr_assert_eq(r, -ANESHARE_ESIZE_MISMATCH, "%d %s", r, aneshare_last_error(f.c));
	cr_assert_eq(aneshare_last_failed_step(f.c), 4);
	const uint16_t *y = aneshare_surface_data(f.s[1]);
	cr_assert_eq(y[0], 0, "a refused chain runs no step");

	/* The connection is fine afterwards. */
	f.steps[4].outputs = &f.s[5];
	cr_assert_eq(aneshare_run_chain(f.c, f.steps, N), 0);
	check_outputs(&f, N);
	aneshare_surface_release(small);
	teardown(&f);
}

/* On a raw connection after hello: compile mil (request 2: program 1) and
 * create n surfaces of size bytes (requests 3 ...: surfaces 1 ... n). */
static void raw_program_and_surfaces(h_rconn *rc, const char *mil, uint32_t n, uint64_t size)
{
	cr_assert_eq(h_rconn_call_kstr(rc, 2, "program.compile", "mil", mil), 0);
	for (uint32_t id = 3; id < 3 + n; id++)
		cr_assert_eq(h_rconn_call_kv(rc, id, "surface.create", "size", size, NULL, 0), 0);
}

/* aneshare_last_run_us is the daemon's own time for the steps: more than 0
 * for 16 dynamic matmuls, no more than the call took, kept across a
 * failure, and set by each kind of wait. */
Test(chain, last_run_us_is_the_daemons_time_for_the_steps)
{
	h_daemon d;
	h_daemon_start(&d);
	aneshare_conn *c = h_connect(&d, "test-elapsed");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	enum { L = 16 };
	aneshare_surface *in[L], *out[L];
	aneshare_step st[L];
	h_mm_pairs(c, &mm, in, out, L, 1);
	for (int i = 0; i < L; i++)
		st[i] = (aneshare_step){ p, 0, &in[i], 1, &out[i], 1 };
	cr_assert_eq(aneshare_last_run_us(c), 0);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	cr_assert_eq(aneshare_run_chain(c, st, L), 0, "%s", aneshare_last_error(c));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	uint64_t wall_us = (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000u +
	                   (uint64_t)(t1.tv_nsec - t0.tv_nsec) / 1000u;
	uint64_t us = aneshare_last_run_us(c);
	cr_assert(us > 0 && us <= wall_us, "daemon %llu us, call %llu us", (unsigned long long)us,
	          (unsigned long long)wall_us);
	/* A failure leaves it. */
	aneshare_surface *small = h_surface(c, 16);
	aneshare_step bad = { p, 0, &small, 1, &out[0], 1 };
	cr_assert_lt(aneshare_run_chain(c, &bad, 1), 0);
	cr_assert_eq(aneshare_last_run_us(c), us);
	/* A single blocking run and a waited-for ticket set it; 16 matmuls
	 * take longer than one. */
	for (int kind = 0; kind < 2; kind++) {
		uint64_t one = 0;
		for (int tries = 0; tries < 20 && one == 0; tries++) {
			if (kind == 0) {
				cr_assert_eq(aneshare_run(p, 0, &in[0], 1, &out[0], 1), 0);
			} else {
				uint32_t t;
				cr_assert_eq(aneshare_run_submit(p, 0, &in[0], 1, &out[0], 1, &t), 0);
				cr_assert_eq(aneshare_wait(c, t), 0);
			}
			one = aneshare_last_run_us(c);
		}
		cr_assert_gt(one, 0, "kind %d", kind);
	}
	cr_assert_eq(aneshare_last_run_us(NULL), 0);
	aneshare_disconnect(c);
	h_daemon_stop(&d);
}

/* ---- a run's encodings --------------------------------------------------- */

/* Hand-made msgpack. */
typedef struct wbuf {
	uint8_t b[1024];
	size_t n;
} wbuf;

static void w_u8(wbuf *w, uint8_t v)
{
	cr_assert_lt(w->n, sizeof w->b);
	w->b[w->n++] = v;
}

static void w_str(wbuf *w, const char *s)
{
	size_t n = strlen(s);
	cr_assert_lt(n, 32);
	w_u8(w, (uint8_t)(0xa0 | n));
	for (size_t i = 0; i < n; i++)
		w_u8(w, (uint8_t)s[i]);
}

/* A u32 as a positive fixint, or (odd) as a uint64 with leading zeros. */
static void w_uint(wbuf *w, uint32_t v, bool odd)
{
	cr_assert_lt(v, 128);
	if (odd) {
		w_u8(w, 0xcf);
		for (int i = 0; i < 7; i++)
			w_u8(w, 0);
	}
	w_u8(w, (uint8_t)v);
}

typedef struct wstep {
	uint32_t program;
	const char *function;   /* NULL: none */
	uint32_t in[2], n_in;
	uint32_t out;
} wstep;

/* One step: as libaneshare packs it, or odd (keys in reverse order, an
 * extra key, IDs as uint64s), which the one-pass reader leaves to the
 * decoder. */
static void w_step(wbuf *w, const wstep *st, bool odd)
{
	w_u8(w, (uint8_t)(0x80 | ((st->function ? 4 : 3) + odd)));
	for (int k = 0; k < 5; k++) {
		int key = odd ? 4 - k : k;
		if (key == 0) {
			w_str(w, "program");
			w_uint(w, st->program, odd);
		} else if (key == 1 && st->function) {
			w_str(w, "function");
			w_str(w, st->function);
		} else if (key == 2) {
			w_str(w, "inputs");
			w_u8(w, (uint8_t)(0x90 | st->n_in));
			for (uint32_t i = 0; i < st->n_in; i++)
				w_uint(w, st->in[i], odd);
		} else if (key == 3) {
			w_str(w, "outputs");
			w_u8(w, 0x91);
			w_uint(w, st->out, odd);
		} else if (key == 4 && odd) {
			w_str(w, "note");
			w_u8(w, 0xc0);
		}
	}
}

/* [0, msgid, "run", params] with n steps (0: a single run of steps[0]). */
static void w_run(wbuf *w, uint32_t msgid, const wstep *steps, uint32_t n, bool odd)
{
	w->n = 0;
	w_u8(w, 0x94);
	w_u8(w, 0x00);
	if (msgid < 128) {
		w_uint(w, msgid, false);
	} else {
		cr_assert_lt(msgid, 65536);
		w_u8(w, 0xcd);
		w_u8(w, (uint8_t)(msgid >> 8));
		w_u8(w, (uint8_t)msgid);
	}
	w_str(w, "run");
	if (n) {
		w_u8(w, 0x81);
		w_str(w, "steps");
		w_u8(w, (uint8_t)(0x90 | n));
	}
	for (uint32_t i = 0; i < (n ? n : 1); i++)
		w_step(w, &steps[i], odd);
}

/* Wait for the next frame: its payload, valid until the next read; returns
 * how many fds came with it (closed). */
static unsigned wait_frame(h_rconn *rc, const uint8_t **ret_payload, uint32_t *ret_len)
{
	unsigned nfds = 0;
	cr_assert_eq(h_rconn_frame(rc, 10000, ret_payload, ret_len, &nfds), 1, "no frame");
	return nfds;
}

/* Wait for the next frame, a response: its payload (valid until the next
 * read) and length, its msgid, and whether it is a success. */
static const uint8_t *wait_response(h_rconn *rc, uint32_t *ret_len, uint32_t *ret_msgid,
                                    bool *ret_ok)
{
	const uint8_t *payload;
	cr_assert_eq(wait_frame(rc, &payload, ret_len), 0);
	msgpack_zone z;
	msgpack_zone_init(&z, 1024);
	anes_msg m;
	cr_assert_eq(anes_msg_decode(payload, *ret_len, &z, &m), 0);
	cr_assert_eq(m.type, ANES_MSG_RESPONSE);
	*ret_msgid = m.msgid;
	*ret_ok = m.error == NULL;
	msgpack_zone_destroy(&z);
	return payload;
}

/* Send a payload as one frame; the response payload (malloc'd) and its
 * length; *ret_ok whether it is a success. */
static uint8_t *raw_call(h_rconn *rc, const wbuf *w, size_t *ret_len, bool *ret_ok)
{
	uint8_t frame[ANES_FRAME_HEADER_SIZE + sizeof w->b];
	anes_frame_header_write(frame, (uint32_t)w->n, 0);
	memcpy(frame + ANES_FRAME_HEADER_SIZE, w->b, w->n);
	cr_assert_eq(h_raw_send(rc->fd, frame, ANES_FRAME_HEADER_SIZE + w->n, NULL, 0), 0);
	uint32_t len, msgid;
	const uint8_t *payload = wait_response(rc, &len, &msgid, ret_ok);
	uint8_t *copy = malloc(len);
	memcpy(copy, payload, len);
	*ret_len = len;
	return copy;
}

static uint64_t lane_runs_of(aneshare_conn *c)
{
	aneshare_status *st = h_status(c);
	uint64_t n = st->lane_runs;
	aneshare_status_free(st);
	return n;
}

/* A daemon started with args, a library connection to it (for status) and
 * a raw one with program 1 (mil_double: "main", "fail_me") and surfaces
 * 1 to 3 of 16 bytes. */
typedef struct raw_fixture {
	h_daemon d;
	aneshare_conn *c;
	h_rconn rc;
} raw_fixture;

static void raw_fixture_open(raw_fixture *f, const char *const *args, const char *name)
{
	h_daemon_start_args(&f->d, args);
	f->c = h_connect(&f->d, name);
	h_rconn_open(&f->rc, f->d.sock);
	raw_program_and_surfaces(&f->rc, mil_double, 3, 16);
}

static void raw_fixture_close(raw_fixture *f)
{
	h_rconn_close(&f->rc);
	aneshare_disconnect(f->c);
	h_daemon_stop(&f->d);
}

/* On a raw_fixture: surfaces 1 -> 2 -> 3 -> 2. */
static const wstep good_steps[3] = { { 1, "main", { 1 }, 1, 2 }, { 1, NULL, { 2 }, 1, 3 },
	                             { 1, "main", { 3 }, 1, 2 } };

/* The daemon reads every run with one decoder (anes_run_wire_parse): the
 * same request in the form libaneshare sends and in another (keys in
 * another order, an extra key, wide integers) gets the same answer, error
 * for error, step for step, and both run on a lane. */
Test(chain, every_encoding_gets_the_same_answer)
{
	/* A generous lane bound: a run measured slow on a loaded machine must
	 * not send the chain to the loop instead of the lane under test. */
	const char *args[] = { "--fault-inject", "run_fail=fail_me", "--lane-run-max-us", "1000000",
	                       NULL };
	raw_fixture f;
	raw_fixture_open(&f, args, "test-encodings");
	h_rconn *rc = &f.rc;
	aneshare_conn *c = f.c;
	const wstep *good = good_steps;
	struct {
		const char *what;
		wstep steps[3];
		uint32_t n;   /* 0: a single run */
		bool ok;
	} cases[] = {
		{ "a chain", { good[0], good[1], good[2] }, 3, true },
		{ "a single run", { good[0] }, 0, true },
		{ "no surface 99 at step 1", { good[0], { 1, "main", { 99 }, 1, 3 }, good[2] }, 3, false },
		{ "no function at step 2", { good[0], good[1], { 1, "nope", { 3 }, 1, 2 } }, 3, false },
		{ "no program 5 at step 0", { { 5, "main", { 1 }, 1, 2 }, good[1], good[2] }, 3, false },
		{ "two inputs at step 1", { good[0], { 1, "main", { 2, 1 }, 2, 3 }, good[2] }, 3, false },
		{ "a failing run at step 1", { good[0], { 1, "fail_me", { 2 }, 1, 3 }, good[2] }, 3, false },
		{ "a single run, no surface 99", { { 1, "main", { 99 }, 1, 2 } }, 0, false },
	};
	wbuf w;
	size_t len[2];
	bool ok[2];
	/* Runs go to lanes once the program's run time is known. */
	w_run(&w, 9, good, 3, false);
	free(raw_call(rc, &w, &len[0], &ok[0]));
	cr_assert(ok[0]);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		uint8_t *reply[2];
		for (int odd = 0; odd < 2; odd++) {
			w_run(&w, 10 + (uint32_t)i, cases[i].steps, cases[i].n, odd);
			anes_run_wire *rw = malloc(sizeof *rw);
			msgpack_zone z;
			cr_assert(msgpack_zone_init(&z, 1024));
			cr_assert_eq(anes_run_wire_parse(w.b, w.n, rw, &z), 1, "%s", cases[i].what);
			msgpack_zone_destroy(&z);
			free(rw);
			uint64_t lane_runs = lane_runs_of(c);
			reply[odd] = raw_call(rc, &w, &len[odd], &ok[odd]);
			cr_assert_eq(ok[odd], cases[i].ok, "%s (odd %d)", cases[i].what, odd);
			if (cases[i].ok)
				cr_assert_eq(lane_runs_of(c), lane_runs + (cases[i].n ? cases[i].n : 1),
				             "%s (odd %d) did not run on a lane", cases[i].what, odd);
		}
		/* Errors byte for byte; a success has its own elapsed_us. */
		if (!cases[i].ok)
			cr_assert(len[0] == len[1] && memcmp(reply[0], reply[1], len[0]) == 0,
			          "%s: the two forms got different answers", cases[i].what);
		free(reply[0]);
		free(reply[1]);
	}
	raw_fixture_close(&f);
}

/* A response's error code (0: a success) and failed_step (-1: none). */
static int reply_code(const uint8_t *p, size_t len, int *ret_step)
{
	msgpack_zone z;
	msgpack_zone_init(&z, 1024);
	anes_msg m;
	cr_assert_eq(anes_msg_decode(p, len, &z, &m), 0);
	int code = 0;
	uint32_t step;
	*ret_step = -1;
	if (m.error) {
		const char *msg;
		uint32_t mlen;
		cr_assert_eq(anes_msg_error(&m, &code, &msg, &mlen), 0);
		if (anes_mp_u32(m.error, "failed_step", &step) == 0)
			*ret_step = (int)step;
	}
	msgpack_zone_destroy(&z);
	return code;
}

/* "function" means the same on every path (docs/protocol.md, "run"): ""
 * names no function (no_such_function), no "function" is the first one.
 * Before a program's first run (which goes to the loop: its run time is
 * unknown) and after (later runs go to a lane when lanes are on), single
 * and in chains, with lanes and with --no-lanes (everything on the loop):
 * the same answers, byte for byte. */
Test(chain, function_means_the_same_on_every_path)
{
	enum { NCASES = 6 };
	uint8_t *ref[NCASES] = { 0 };
	size_t ref_len[NCASES] = { 0 };
	for (int lanes = 1; lanes >= 0; lanes--) {
		const char *no_lanes[] = { "--no-lanes", NULL };
		const char *on_lanes_args[] = { "--lane-run-max-us", "1000000", NULL };
		raw_fixture f;
		raw_fixture_open(&f, lanes ? on_lanes_args : no_lanes, "test-function");
		const wstep empty = { 1, "", { 1 }, 1, 2 }, none = { 1, NULL, { 1 }, 1, 2 },
		            main_fn = { 1, "main", { 2 }, 1, 3 };
		struct {
			const char *what;
			wstep steps[2];
			uint32_t n;       /* 0: a single run */
			int code, step;   /* the error expected (0: success), its failed_step */
		} cases[NCASES] = {
			{ "\"\" on the first run", { empty }, 0, ANES_WERR_NO_SUCH_FUNCTION, -1 },
			{ "none on the first run", { none }, 0, 0, -1 },
			{ "\"\" on a later run", { empty }, 0, ANES_WERR_NO_SUCH_FUNCTION, -1 },
			{ "a chain with none and \"main\"", { none, main_fn }, 2, 0, -1 },
			{ "a chain with \"\" at step 1", { main_fn, empty }, 2, ANES_WERR_NO_SUCH_FUNCTION, 1 },
			{ "none on a later run", { none }, 0, 0, -1 },
		};
		uint64_t lane_runs = lane_runs_of(f.c);
		for (int i = 0; i < NCASES; i++) {
			wbuf w;
			size_t len;
			bool ok;
			int step;
			w_run(&w, 20 + (uint32_t)i, cases[i].steps, cases[i].n, false);
			uint8_t *reply = raw_call(&f.rc, &w, &len, &ok);
			cr_assert_eq(reply_code(reply, len, &step), cases[i].code, "%s (lanes %d)",
			             cases[i].what, lanes);
			cr_assert_eq(step, cases[i].step, "%s (lanes %d)", cases[i].what, lanes);
			if (!ok && lanes) {
				ref[i] = reply;
				ref_len[i] = len;
			} else if (!ok) {
				cr_assert(len == ref_len[i] && memcmp(reply, ref[i], len) == 0,
				          "%s: another answer without lanes", cases[i].what);
				free(reply);
			} else {
				free(reply);
			}
		}
		/* With lanes, the later runs ran on one (and the errors were the
		 * lane's answers); without, none did. */
		uint64_t on_lanes = lane_runs_of(f.c) - lane_runs;
		if (lanes)
			cr_assert_geq(on_lanes, 2u, "the later runs went to a lane");
		else
			cr_assert_eq(on_lanes, 0u);
		/* Before and after the program's first run, the same error (but
		 * for the msgid, a fixint at byte 2). */
		if (lanes)
			cr_assert(ref_len[0] == ref_len[2] && memcmp(ref[0] + 3, ref[2] + 3, ref_len[0] - 3) == 0,
			          "\"\" before and after the first run got different answers");
		raw_fixture_close(&f);
	}
	for (int i = 0; i < NCASES; i++)
		free(ref[i]);
}

/* Frames appended to one buffer, to go in one write. */
typedef struct wbatch {
	uint8_t b[49152];
	size_t n;
} wbatch;

static void batch_add(wbatch *bt, const wbuf *w)
{
	cr_assert_leq(bt->n + ANES_FRAME_HEADER_SIZE + w->n, sizeof bt->b);
	anes_frame_header_write(bt->b + bt->n, (uint32_t)w->n, 0);
	memcpy(bt->b + bt->n + ANES_FRAME_HEADER_SIZE, w->b, w->n);
	bt->n += ANES_FRAME_HEADER_SIZE + w->n;
}

/* Read n responses: each msgid in [first, first + n) exactly once, and
 * whether each is a success (ok[msgid - first]). */
static void read_responses(h_rconn *rc, uint32_t first, uint32_t n, bool *ok)
{
	static bool seen[1024];
	memset(seen, 0, sizeof seen);
	cr_assert_leq(n, 1024);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t len, msgid;
		bool good;
		(void)wait_response(rc, &len, &msgid, &good);
		cr_assert(msgid >= first && msgid < first + n, "msgid %u", msgid);
		cr_assert(!seen[msgid - first], "msgid %u answered twice", msgid);
		seen[msgid - first] = true;
		ok[msgid - first] = good;
	}
}

/* A client that pipelines: requests that reach the daemon together are
 * answered by the lane thread that read them, one after the other (the
 * loop used to spread them over the workers, at two thread hand-offs
 * each), each answered once, an error among them its own, and a request
 * that is not a run handing the rest back to the loop in order. */
Test(chain, a_pipeline_read_at_once_runs_on_the_lane)
{
	/* A lane thread keeps a pipeline for at most --lane-run-max-us and the
	 * slice: both 1 s here, more than 600 runs take on a loaded machine. */
	const char *args[] = { "--fault-inject", "run_fail=fail_me", "--lane-run-max-us", "1000000",
		               "--sched-slice-us", "1000000", NULL };
	raw_fixture f;
	raw_fixture_open(&f, args, "test-pipeline");
	h_rconn *rc = &f.rc;
	const wstep bad = { 1, "main", { 99 }, 1, 2 };
	wbuf w;
	size_t len;
	bool ok1;
	w_run(&w, 9, good_steps, 3, false);   /* the program's first run: its time is known after it */
	free(raw_call(rc, &w, &len, &ok1));
	cr_assert(ok1);

	/* 24 runs in one write: single runs, a 3-step chain (12), a run of a
	 * surface that does not exist (7), a run that fails (18). */
	enum { NPIPE = 24 };
	static wbatch bt;
	bt.n = 0;
	for (uint32_t i = 0; i < NPIPE; i++) {
		const wstep failing = { 1, "fail_me", { 1 }, 1, 2 };
		if (i == 12)
			w_run(&w, 40 + i, good_steps, 3, false);
		else
			w_run(&w, 40 + i, i == 7 ? &bad : i == 18 ? &failing : &good_steps[0], 0, false);
		batch_add(&bt, &w);
	}
	uint64_t lane0 = lane_runs_of(f.c);
	cr_assert_eq(h_raw_send(rc->fd, bt.b, bt.n, NULL, 0), 0);
	bool ok[64];
	read_responses(rc, 40, NPIPE, ok);
	for (uint32_t i = 0; i < NPIPE; i++)
		cr_assert_eq(ok[i], i != 7 && i != 18, "request %u", 40 + i);
	/* 21 single runs and 3 steps ran, and on the lane (a failing run is
	 * counted too: it ran); not one went to a worker. */
	uint64_t lane1 = lane_runs_of(f.c);
	cr_assert_geq(lane1 - lane0, 24, "only %llu of the pipeline's runs on the lane",
	              (unsigned long long)(lane1 - lane0));

	/* 5 runs, a status request, 5 runs: the loop answers the status
	 * request and the runs after it, all once. */
	bt.n = 0;
	for (uint32_t i = 0; i < 11; i++) {
		if (i == 5) {
			w.n = 0;
			const uint8_t st[] = { 0x94, 0x00, (uint8_t)(70 + i), 0xa6, 's', 't', 'a', 't', 'u', 's', 0x80 };
			memcpy(w.b, st, sizeof st);
			w.n = sizeof st;
		} else {
			w_run(&w, 70 + i, good_steps, 0, false);
		}
		batch_add(&bt, &w);
	}
	cr_assert_eq(h_raw_send(rc->fd, bt.b, bt.n, NULL, 0), 0);
	read_responses(rc, 70, 11, ok);
	for (uint32_t i = 0; i < 11; i++)
		cr_assert(ok[i], "request %u", 70 + i);

	/* 600 runs, about 20 KiB of replies: more than one batch (4 KiB). */
	bt.n = 0;
	for (uint32_t i = 0; i < 600; i++) {
		w_run(&w, 1000 + i, good_steps, 0, false);
		batch_add(&bt, &w);
	}
	lane0 = lane_runs_of(f.c);
	cr_assert_eq(h_raw_send(rc->fd, bt.b, bt.n, NULL, 0), 0);
	static bool ok600[600];
	read_responses(rc, 1000, 600, ok600);
	for (uint32_t i = 0; i < 600; i++)
		cr_assert(ok600[i], "request %u", 1000 + i);
	cr_assert_geq(lane_runs_of(f.c) - lane0, 600);
	/* The connection is in step afterwards. */
	w_run(&w, 99, good_steps, 0, false);
	free(raw_call(rc, &w, &len, &ok1));
	cr_assert(ok1);

	raw_fixture_close(&f);
}

Test(chain, limits)
{
	chain_fixture f;
	setup(&f);
	cr_assert_eq(aneshare_run_chain(f.c, f.steps, 0), -EINVAL);
	aneshare_step *many = calloc(ANESHARE_MAX_STEPS + 1, sizeof *many);
	for (int i = 0; i <= ANESHARE_MAX_STEPS; i++)
		many[i] = (aneshare_step){ f.p, 0, &f.s[0], 1, &f.s[1], 1 };
	cr_assert_eq(aneshare_run_chain(f.c, many, ANESHARE_MAX_STEPS + 1), -EINVAL);
	cr_assert_eq(aneshare_run_chain(f.c, many, ANESHARE_MAX_STEPS), 0, "%s",
	             aneshare_last_error(f.c));

	/* The daemon's own limit, past the library's check: a raw request. */
	int fd = h_raw_open(f.d.sock);
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	msgpack_pack_str(&pk, 5);
	msgpack_pack_str_body(&pk, "steps", 5);
	msgpack_pack_array(&pk, ANESHARE_MAX_STEPS + 1);
	for (int i = 0; i <= ANESHARE_MAX_STEPS; i++)
		msgpack_pack_map(&pk, 0);
	cr_assert_eq(h_raw_request(fd, 2, "run", sb.data, sb.size, NULL, 0), 0);
	cr_assert_eq(h_raw_response(fd, 2, 5000), ANES_WERR_INVALID_PARAMS);
	msgpack_sbuffer_clear(&sb);
	msgpack_pack_map(&pk, 1);
	msgpack_pack_str(&pk, 5);
	msgpack_pack_str_body(&pk, "steps", 5);
	msgpack_pack_array(&pk, 0);
	cr_assert_eq(h_raw_request(fd, 3, "run", sb.data, sb.size, NULL, 0), 0);
	cr_assert_eq(h_raw_response(fd, 3, 5000), ANES_WERR_INVALID_PARAMS);
	msgpack_sbuffer_destroy(&sb);
	close(fd);
	free(many);
	teardown(&f);
}

/* ---- async ------------------------------------------------------------------------ */

typedef struct done_log {
	int n;
	int rc[64];
	int failed_step[64];
} done_log;

static void on_done(aneshare_conn *c, const aneshare_result *res, void *ud)
{
	done_log *log = ud;
	(void)c;
	log->rc[log->n] = res->rc;
	log->failed_step[log->n] = res->failed_step;
	log->n++;
}

static void loop_until(aneshare_conn *c, done_log *log, int n)
{
	while (log->n < n) {
		struct pollfd pfd = { .fd = aneshare_fd(c), .events = 0 };
		int ev = aneshare_events(c);
		cr_assert_geq(pfd.fd, 0);
		if (ev & ANESHARE_EV_READ)
			pfd.events |= POLLIN;
		if (ev & ANESHARE_EV_WRITE)
			pfd.events |= POLLOUT;
		cr_assert_eq(poll(&pfd, 1, 10000 * h_slow()), 1, "no progress");
		cr_assert_geq(aneshare_dispatch(c), 0, "%s", aneshare_last_error(c));
	}
}

Test(async, runs_and_chains_complete_through_dispatch)
{
	chain_fixture f;
	setup(&f);
	done_log log = { 0 };
	for (int i = 0; i < 20; i++)
		cr_assert_eq(aneshare_run_async(f.p, 0, &f.s[0], 1, &f.s[1], 1, on_done, &log), 0);
	cr_assert_eq(aneshare_run_chain_async(f.c, f.steps, N, on_done, &log), 0);
	cr_assert_eq(aneshare_async_outstanding(f.c), 21);
	loop_until(f.c, &log, 21);
	for (int i = 0; i < 21; i++)
		cr_assert_eq(log.rc[i], 0);
	cr_assert_eq(aneshare_async_outstanding(f.c), 0);
	cr_assert_eq(aneshare_events(f.c), ANESHARE_EV_READ);
	check_outputs(&f, N);

	/* A failing step, mixed with a blocking call made meanwhile. */
	log.n = 0;
	f.steps[2].function = 1;
	cr_assert_eq(aneshare_run_chain_async(f.c, f.steps, N, on_done, &log), 0);
	aneshare_status *st = h_status(f.c);   /* may read the chain's response */
	aneshare_status_free(st);
	cr_assert_geq(aneshare_dispatch(f.c), 0);
	loop_until(f.c, &log, 1);
	cr_assert_eq(log.rc[0], -ANESHARE_ERUN_FAILED);
	cr_assert_eq(log.failed_step[0], 2);
	teardown(&f);
}

Test(async, disconnect_completes_calls_with_a_retryable_error)
{
	chain_fixture f;
	setup(&f);
	done_log log = { 0 };
	cr_assert_eq(aneshare_run_chain_async(f.c, f.steps, N, on_done, &log), 0);
	loop_until(f.c, &log, 1);
	log.n = 0;
	for (int i = 0; i < 4; i++)
		cr_assert_eq(aneshare_run_async(f.p, 0, &f.s[0], 1, &f.s[1], 1, on_done, &log), 0);
	h_daemon_crash(&f.d);
	/* The responses may or may not have been sent before the crash. */
	while (log.n < 4) {
		int r = aneshare_dispatch(f.c);
		if (r < 0) {
			cr_assert_eq(r, -ANESHARE_EDISCONNECTED);
			cr_assert_eq(aneshare_fd(f.c), -1);
			break;
		}
		struct pollfd pfd = { .fd = aneshare_fd(f.c), .events = POLLIN };
		poll(&pfd, 1, 1000);
	}
	cr_assert_eq(log.n, 4);
	for (int i = 0; i < 4; i++)
		cr_assert(log.rc[i] == 0 || aneshare_error_is_retryable(log.rc[i]), "%d", log.rc[i]);
	cr_assert_eq(aneshare_async_outstanding(f.c), 0);
	/* The next call reconnects. */
	h_daemon_restart(&f.d, true);
	log.n = 0;
	cr_assert_eq(aneshare_run_async(f.p, 0, &f.s[0], 1, &f.s[1], 1, on_done, &log), 0, "%s",
	             aneshare_last_error(f.c));
	loop_until(f.c, &log, 1);
	cr_assert_eq(log.rc[0], 0);
	teardown(&f);
}

Test(async, disconnect_cancels_outstanding_calls)
{
	chain_fixture f;
	setup(&f);
	done_log log = { 0 };
	for (int i = 0; i < 3; i++)
		cr_assert_eq(aneshare_run_async(f.p, 0, &f.s[0], 1, &f.s[1], 1, on_done, &log), 0);
	aneshare_disconnect(f.c);
	cr_assert_eq(log.n, 3);
	for (int i = 0; i < 3; i++)
		cr_assert(log.rc[i] == 0 || log.rc[i] == -ECANCELED);
	h_daemon_stop(&f.d);
}

/* ---- frame sizes ----------------------------------------------------------------- */

static const char *mil_big =
	"program(1.3)\n{\n"
	"    func main<ios18>(tensor<fp16, [1, 1, 2048, 4096]> x) {\n"
	"        tensor<fp16, [1, 1, 2048, 4096]> y = identity(x = x)[name = string(\"y\")];\n"
	"    } -> (y);\n}\n";

/* Read one frame from a blocking socket: its payload length. */
static uint32_t read_frame(h_rconn *rc, uint32_t *ret_msgid)
{
	const uint8_t *payload;
	uint32_t len;
	(void)wait_frame(rc, &payload, &len);
	msgpack_zone z;
	msgpack_zone_init(&z, 1024);
	anes_msg m;
	cr_assert_eq(anes_msg_decode(payload, len, &z, &m), 0);
	cr_assert_eq(m.type, ANES_MSG_RESPONSE);
	cr_assert_null(m.error, "the request failed");
	*ret_msgid = m.msgid;
	msgpack_zone_destroy(&z);
	return len;
}

/* Whatever the tensor size, a run request and its reply are small: the
 * data stays in the surfaces.  Checked on the wire, with the bytes a
 * client library sends (16 MiB in, 16 MiB out), and for a 256-step chain's
 * reply. */
Test(frames, run_request_and_reply_stay_under_256_bytes)
{
	h_daemon d;
	h_daemon_start(&d);
	aneshare_conn *c = h_connect(&d, "test-frames");
	aneshare_program *p;
	cr_assert_eq(aneshare_program_compile(c, mil_big, NULL, 0, &p, NULL), 0, "%s",
	             aneshare_last_error(c));
	aneshare_surface *in, *out;
	cr_assert_eq(aneshare_surface_create(c, 16u << 20, &in), 0);
	cr_assert_eq(aneshare_surface_create(c, 16u << 20, &out), 0);

	/* Build the request exactly as the library does (program.c, async.c). */
	h_rconn rc;
	h_rconn_open(&rc, d.sock);
	/* The raw connection needs its own program and surfaces. */
	raw_program_and_surfaces(&rc, mil_big, 2, 16u << 20);
	/* program 1, surfaces 1 and 2 on this connection; a large msgid and
	 * the IDs the library would use */
	anes_frame f;
	anes_frame_init(&f);
	anes_pack_request(&f.pk, UINT32_MAX - 1, "run", 4);
	anes_pack_str(&f.pk, "program");
	msgpack_pack_uint32(&f.pk, 1);
	anes_pack_str(&f.pk, "function");
	anes_pack_str(&f.pk, "main");
	anes_pack_str(&f.pk, "inputs");
	msgpack_pack_array(&f.pk, 1);
	msgpack_pack_uint32(&f.pk, 1);
	anes_pack_str(&f.pk, "outputs");
	msgpack_pack_array(&f.pk, 1);
	msgpack_pack_uint32(&f.pk, 2);
	void *data;
	size_t len;
	cr_assert_eq(anes_frame_finish(&f, 0, ANES_FRAME_MAX_DEFAULT, &data, &len), 0);
	cr_assert_lt(len, 256, "run request frame is %zu bytes", len);
	cr_assert_eq(h_raw_send(rc.fd, data, len, NULL, 0), 0);
	free(data);
	uint32_t msgid = 0;
	uint32_t rlen = read_frame(&rc, &msgid);
	cr_assert_eq(msgid, UINT32_MAX - 1);
	cr_assert_lt(rlen + ANES_FRAME_HEADER_SIZE, 256, "run reply frame is %u bytes", rlen);

	/* A chain's reply too (its request grows with the steps, not the data). */
	anes_frame_init(&f);
	anes_pack_request(&f.pk, 7, "run", 1);
	anes_pack_str(&f.pk, "steps");
	msgpack_pack_array(&f.pk, 2);
	for (int i = 0; i < 2; i++) {
		msgpack_pack_map(&f.pk, 3);
		anes_pack_str(&f.pk, "program");
		msgpack_pack_uint32(&f.pk, 1);
		anes_pack_str(&f.pk, "inputs");
		msgpack_pack_array(&f.pk, 1);
		msgpack_pack_uint32(&f.pk, 1);
		anes_pack_str(&f.pk, "outputs");
		msgpack_pack_array(&f.pk, 1);
		msgpack_pack_uint32(&f.pk, 2);
	}
	cr_assert_eq(anes_frame_finish(&f, 0, ANES_FRAME_MAX_DEFAULT, &data, &len), 0);
	cr_assert_lt(len, 256, "2-step chain request frame is %zu bytes", len);
	cr_assert_eq(h_raw_send(rc.fd, data, len, NULL, 0), 0);
	free(data);
	rlen = read_frame(&rc, &msgid);
	cr_assert_eq(msgid, 7);
	cr_assert_lt(rlen + ANES_FRAME_HEADER_SIZE, 256, "chain reply frame is %u bytes", rlen);
	h_rconn_close(&rc);

	/* And through the library, for good measure: the run works. */
	cr_assert_eq(aneshare_run(p, 0, &in, 1, &out, 1), 0, "%s", aneshare_last_error(c));
	aneshare_surface_release(in);
	aneshare_surface_release(out);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	h_daemon_stop(&d);
}
