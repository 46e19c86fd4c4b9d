/* SPDX-License-Identifier: MIT */
/*
 * Lanes (daemon/server/conn.c, docs/design.md "Lanes"): a connection with
 * nothing for the event loop to do is read by the worker threads, which run
 * short `run` requests at once and hand everything else back to the loop.
 *
 * What a client may see of it is nothing but the time (protocol.md) and
 * status.lane_runs.  So every test checks the results numerically against a
 * reference computed here, the counters exactly where the daemon is quiet,
 * and, after faults, that the daemon is back at its baseline (status and
 * the daemon's fd count).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "anes_clock.h"
#include "anes_proto.h"
#include "anes_spin.h"
#include "aneshare.h"
#include "daemon_harness.h"

static h_daemon D;

/* Every daemon of this suite: a lane runs whatever it gets, and keeps a
 * pipelining client for up to a second, unless a test says otherwise (its
 * args come after, and win).  What these tests look at is the lanes, not
 * the moving average or the slice, which a loaded machine can push over
 * the defaults (1 ms, 5 ms) now and then. */
static void lanes_start(const char *const *args)
{
	const char *all[32] = { "--lane-run-max-us", "1000000", "--sched-slice-us", "1000000" };
	size_t n = 4;
	for (size_t i = 0; args && args[i] && n < 31; i++)
		all[n++] = args[i];
	all[n] = NULL;
	h_daemon_start_args(&D, all);
}

static void teardown(void)
{
	h_daemon_kill(&D);   /* only if the test did not stop it */
}

TestSuite(lanes, .fini = teardown, .timeout = 60);

#define E_SHUTTING_DOWN (-(ANESHARE_EBASE + 17))
#define SQ_N 16   /* the small matmul: a few microseconds a run */

/* ---- programs ----------------------------------------------------------------- */

/* y = x + x on [1, 1, n, n]; fail_me is the same, made to fail by
 * --fault-inject run_fail=fail_me. */
static char *dbl_mil(unsigned n)
{
	char *s = NULL;
	int r = asprintf(&s,
	                 "program(1.3)\n{\n"
	                 "    func main<ios18>(tensor<fp16, [1, 1, %u, %u]> x) {\n"
	                 "        tensor<fp16, [1, 1, %u, %u]> y = add(x = x, y = x)[name = string(\"y\")];\n"
	                 "    } -> (y);\n"
	                 "    func fail_me<ios18>(tensor<fp16, [1, 1, %u, %u]> x) {\n"
	                 "        tensor<fp16, [1, 1, %u, %u]> y = add(x = x, y = x)[name = string(\"y\")];\n"
	                 "    } -> (y);\n}\n",
	                 n, n, n, n, n, n, n, n);
	if (r < 0)
		abort();
	return s;
}

/* Values in [-scale, scale] from seed, as fp16. */
static void fill_f16(uint16_t *x, size_t n, uint64_t seed, float scale)
{
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 7;
	for (size_t i = 0; i < n; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		float f = (float)((double)(s >> 11) / (double)(1ull << 53) * 2.0 - 1.0) * scale;
		aneshare_f32_to_f16(&x[i], &f, 1);
	}
}

/* Max |z - x @ y| / max |x @ y| (fp32 reference from the fp16 inputs); NaN
 * anywhere in z counts as infinitely wrong. */
static double mm_err(unsigned n, const uint16_t *x, const uint16_t *y, const uint16_t *z)
{
	float xf[SQ_N * SQ_N * 16], yf[SQ_N * SQ_N * 16], zf[SQ_N * SQ_N * 16];
	if ((size_t)n * n > sizeof xf / sizeof xf[0])
		abort();
	aneshare_f16_to_f32(xf, x, (size_t)n * n);
	aneshare_f16_to_f32(yf, y, (size_t)n * n);
	aneshare_f16_to_f32(zf, z, (size_t)n * n);
	double max_ref = 0, max_err = 0;
	for (unsigned i = 0; i < n; i++)
		for (unsigned j = 0; j < n; j++) {
			double acc = 0;
			for (unsigned k = 0; k < n; k++)
				acc += (double)xf[i * n + k] * (double)yf[k * n + j];
			double e = fabs((double)zf[i * n + j] - acc);
			if (!(e <= max_err))
				max_err = isnan(e) ? INFINITY : e;
			max_ref = fmax(max_ref, fabs(acc));
		}
	return max_ref > 0 ? max_err / max_ref : max_err;
}

/* ---- the checked small matmul on a library connection ------------------------- */

typedef struct sq {
	aneshare_conn *c;
	aneshare_program *p;
	aneshare_surface *x, *y, *z;
	unsigned n;
} sq;

/* Non-asserting (children use it): 0 or a negative code. */
static int sq_open(aneshare_conn *c, unsigned n, const char *fn_name, sq *s)
{
	memset(s, 0, sizeof *s);
	s->c = c;
	s->n = n;
	char *mil = h_square_mm_mil(n, fn_name);
	int r = aneshare_program_compile(c, mil, NULL, 0, &s->p, NULL);
	free(mil);
	if (r < 0)
		return r;
	size_t bytes = (size_t)n * n * 2;
	if ((r = aneshare_surface_create(c, bytes, &s->x)) < 0 ||
	    (r = aneshare_surface_create(c, bytes, &s->y)) < 0 ||
	    (r = aneshare_surface_create(c, bytes, &s->z)) < 0)
		return r;
	return 0;
}

static void sq_fill(sq *s, uint64_t seed)
{
	size_t n = (size_t)s->n * s->n;
	fill_f16(aneshare_surface_data(s->x), n, seed, 1.0f);
	fill_f16(aneshare_surface_data(s->y), n, seed + 0x5555, 1.0f);
	memset(aneshare_surface_data(s->z), 0xff, n * 2);   /* NaNs: the run must overwrite them */
}

static int sq_run(sq *s)
{
	aneshare_surface *in[2] = { s->x, s->y };
	return aneshare_run(s->p, 0, in, 2, &s->z, 1);
}

static double sq_err(const sq *s)
{
	return mm_err(s->n, aneshare_surface_data(s->x), aneshare_surface_data(s->y),
	              aneshare_surface_data(s->z));
}

/* Fill from seed, run, check against the reference (asserting). */
static void sq_check(sq *s, uint64_t seed)
{
	sq_fill(s, seed);
	int r = sq_run(s);
	cr_assert_eq(r, 0, "run (seed %llu): %s: %s", (unsigned long long)seed,
	             aneshare_strerror(r), aneshare_last_error(s->c));
	double e = sq_err(s);
	cr_assert_leq(e, H_MM_TOL, "run (seed %llu): relative error %g", (unsigned long long)seed, e);
}

static void sq_close(sq *s)
{
	aneshare_surface_release(s->x);
	aneshare_surface_release(s->y);
	aneshare_surface_release(s->z);
	aneshare_program_release(s->p);
}

/* ---- status ----------------------------------------------------------------------- */

typedef struct counts {
	uint64_t runs, lane_runs;
	uint32_t clients, surfaces, programs;
} counts;

static counts get_counts(aneshare_conn *c)
{
	aneshare_status *st = h_status(c);
	counts k = { st->runs, st->lane_runs, st->clients, st->surfaces, st->programs };
	aneshare_status_free(st);
	return k;
}

/* Status once it counts at least want_runs (bounded): for the checks whose
 * point is that no run is lost or counted twice.  That a status right after
 * a reply counts it at once is status_after_a_handed_back_run's business. */
static counts settled_counts(aneshare_conn *c, uint64_t want_runs)
{
	int64_t deadline = tu_now_ms() + 2000 * h_slow();
	for (;;) {
		counts k = get_counts(c);
		if (k.runs >= want_runs || tu_now_ms() > deadline)
			return k;
		tu_pause_ms(2);
	}
}


/* ---- raw connections (the harness's h_rconn: one receive buffer each) ----------------- */

static void pack_key(msgpack_packer *pk, const char *k)
{
	msgpack_pack_str(pk, strlen(k));
	msgpack_pack_str_body(pk, k, strlen(k));
}

/* The small matmul on a raw connection: surfaces are memfds of our own
 * (surface.import), so the data is checked here as well. */
typedef struct rsq {
	h_rconn rc;
	uint32_t prog, sid[3];
	uint16_t *map[3];
	size_t bytes;
	uint32_t next_msgid;
	msgpack_sbuffer run_params;   /* {program, inputs: [x, y], outputs: [z]} */
} rsq;

static void rsq_open(rsq *s, const char *fn_name)
{
	memset(s, 0, sizeof *s);
	h_rconn_open(&s->rc, D.sock);
	s->next_msgid = 100;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	char *mil = h_square_mm_mil(SQ_N, fn_name);
	msgpack_pack_map(&pk, 1);
	pack_key(&pk, "mil");
	pack_key(&pk, mil);
	free(mil);
	uint64_t v = 0;
	int r = h_rconn_call(&s->rc, s->next_msgid++, "program.compile", sb.data, sb.size, NULL, 0, "id", &v);
	cr_assert_eq(r, 0, "raw program.compile: error %d", r);
	s->prog = (uint32_t)v;
	msgpack_sbuffer_destroy(&sb);

	s->bytes = (size_t)SQ_N * SQ_N * 2;
	for (int i = 0; i < 3; i++) {
		int mfd;
		cr_assert_eq(anes_memfd_create("lane-test", s->bytes, &mfd), 0);
		s->map[i] = mmap(NULL, s->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
		cr_assert_neq(s->map[i], MAP_FAILED);
		r = h_rconn_call(&s->rc, s->next_msgid++, "surface.import", NULL, 0, &mfd, 1, "id", &v);
		close(mfd);
		cr_assert_eq(r, 0, "raw surface.import: error %d", r);
		s->sid[i] = (uint32_t)v;
	}

	msgpack_sbuffer_init(&s->run_params);
	msgpack_packer_init(&pk, &s->run_params, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 3);
	pack_key(&pk, "program");
	msgpack_pack_uint32(&pk, s->prog);
	pack_key(&pk, "inputs");
	msgpack_pack_array(&pk, 2);
	msgpack_pack_uint32(&pk, s->sid[0]);
	msgpack_pack_uint32(&pk, s->sid[1]);
	pack_key(&pk, "outputs");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_uint32(&pk, s->sid[2]);
}

static void rsq_fill(rsq *s, uint64_t seed)
{
	fill_f16(s->map[0], (size_t)SQ_N * SQ_N, seed, 1.0f);
	fill_f16(s->map[1], (size_t)SQ_N * SQ_N, seed + 0x5555, 1.0f);
	memset(s->map[2], 0xff, s->bytes);
}

static double rsq_err(const rsq *s)
{
	return mm_err(SQ_N, s->map[0], s->map[1], s->map[2]);
}

/* One run, waited for and checked. */
static void rsq_check(rsq *s, uint64_t seed)
{
	rsq_fill(s, seed);
	uint32_t id = s->next_msgid++;
	int r = h_rconn_call(&s->rc, id, "run", s->run_params.data, s->run_params.size, NULL, 0, NULL, NULL);
	cr_assert_eq(r, 0, "raw run %u: error %d", id, r);
	double e = rsq_err(s);
	cr_assert_leq(e, H_MM_TOL, "raw run %u: relative error %g", id, e);
}

/* Append a run request frame to sb. */
static void rsq_frame(rsq *s, msgpack_sbuffer *sb, uint32_t msgid)
{
	h_raw_frame(sb, msgid, "run", s->run_params.data, s->run_params.size, 0);
}

static void rsq_close(rsq *s)
{
	for (int i = 0; i < 3; i++)
		if (s->map[i])
			munmap(s->map[i], s->bytes);
	msgpack_sbuffer_destroy(&s->run_params);
	h_rconn_close(&s->rc);
}

/* status on the raw connection itself (so the daemon has delivered the
 * completions of every reply this connection saw: conn.c, sync_direct). */
typedef struct rstat {
	uint32_t msgid;
	bool got;
	counts k;
} rstat;

static void rstat_cb(const anes_msg *m, void *ud)
{
	rstat *r = ud;
	if (m->type != ANES_MSG_RESPONSE || m->msgid != r->msgid || !m->result)
		return;
	r->got = true;
	uint32_t v;
	(void)anes_mp_u64(m->result, "runs", UINT64_MAX, &r->k.runs);
	(void)anes_mp_u64(m->result, "lane_runs", UINT64_MAX, &r->k.lane_runs);
	if (anes_mp_u32(m->result, "clients", &v) == 0)
		r->k.clients = v;
	if (anes_mp_u32(m->result, "surfaces", &v) == 0)
		r->k.surfaces = v;
}

static counts rsq_counts(rsq *s)
{
	rstat r = { .msgid = s->next_msgid++ };
	cr_assert_eq(h_raw_request(s->rc.fd, r.msgid, "status", NULL, 0, NULL, 0), 0);
	while (!r.got)
		cr_assert_eq(h_rconn_next(&s->rc, 5000, rstat_cb, &r), 1, "no status");
	return r.k;
}

/* ---- forked children ------------------------------------------------------------------ */


static void ready(int fd)
{
	char b = 1;
	(void)!write(fd, &b, 1);
	close(fd);
}

/* ======================================================================================= */
/* 1. Sequential blocking runs                                                              */
/* ======================================================================================= */

#define SEQ_RUNS 200

/* Start a daemon with args, do SEQ_RUNS checked runs (inputs from seeds
 * 1..SEQ_RUNS) on one connection; the outputs (malloc'd, SEQ_RUNS x bytes)
 * and the counters (status from a second connection); stops the daemon. */
static uint16_t *seq_case(const char *const *args, counts *ret)
{
	lanes_start(args);
	aneshare_conn *c = h_connect(&D, "sequential");
	aneshare_conn *obs = h_connect(&D, "observer");
	sq s;
	cr_assert_eq(sq_open(c, SQ_N, "main", &s), 0, "%s", aneshare_last_error(c));
	counts k0 = get_counts(obs);
	cr_assert_eq(k0.runs, 0);
	cr_assert_eq(k0.lane_runs, 0);
	size_t bytes = (size_t)SQ_N * SQ_N * 2;
	uint16_t *outs = malloc(SEQ_RUNS * bytes);
	cr_assert_not_null(outs);
	for (int i = 0; i < SEQ_RUNS; i++) {
		sq_check(&s, (uint64_t)i + 1);
		memcpy(outs + (size_t)i * SQ_N * SQ_N, aneshare_surface_data(s.z), bytes);
	}
	/* Asked on c: status on another connection may not count yet a run
	 * whose reply a worker sent itself (not a lane run: those count before
	 * the reply goes); settled: see status_after_a_handed_back_run. */
	*ret = settled_counts(c, SEQ_RUNS);
	sq_close(&s);
	aneshare_disconnect(obs);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
	return outs;
}

Test(lanes, sequential_runs_use_lanes_and_match_no_lanes)
{
	counts on, off;
	uint16_t *a = seq_case(NULL, &on);
	cr_expect_eq(on.runs, SEQ_RUNS);
	/* The first run goes through the loop (its time is not known yet). */
	cr_expect_geq(on.lane_runs, SEQ_RUNS - 2, "only %llu of %d runs on lanes",
	              (unsigned long long)on.lane_runs, SEQ_RUNS);
	cr_expect_leq(on.lane_runs, on.runs);

	const char *no_lanes[] = { "--no-lanes", NULL };
	uint16_t *b = seq_case(no_lanes, &off);
	cr_expect_eq(off.runs, SEQ_RUNS);
	cr_expect_eq(off.lane_runs, 0);
	/* The same backend on the same inputs: the same bits. */
	size_t bytes = (size_t)SQ_N * SQ_N * 2;
	for (int i = 0; i < SEQ_RUNS; i++)
		cr_assert_eq(memcmp(a + (size_t)i * SQ_N * SQ_N, b + (size_t)i * SQ_N * SQ_N, bytes), 0,
		             "run %d: lanes and --no-lanes disagree", i);
	free(a);
	free(b);
}

/* A program of 1x1 convs (the transformer block's projections) runs on lanes:
 * its run arena is a few hundred KiB, and the program-memory bound
 * (daemon/state/progmem.c) must not take each conv's im2col tile at the
 * 16 MiB cap, which put the block over the lanes' 4 MiB arena rule. */
Test(lanes, a_transformer_block_runs_on_lanes)
{
	enum { RUNS = 20, BYTES = 64 * 32 * 2 };
	FILE *fp = fopen(ANES_SOURCE_DIR "/examples/transformer_block.mil", "rb");
	cr_assert_not_null(fp, "%s/examples/transformer_block.mil: %s", ANES_SOURCE_DIR, strerror(errno));
	char *mil = malloc(1 << 20);
	cr_assert_not_null(mil);
	size_t len = fread(mil, 1, (1 << 20) - 1, fp);
	fclose(fp);
	mil[len] = 0;

	lanes_start(NULL);
	aneshare_conn *c = h_connect(&D, "block");
	aneshare_program *p;
	aneshare_surface *x, *y;
	cr_assert_eq(aneshare_program_compile(c, mil, NULL, 0, &p, NULL), 0, "%s", aneshare_last_error(c));
	free(mil);
	cr_assert_eq(aneshare_surface_create(c, BYTES, &x), 0);
	cr_assert_eq(aneshare_surface_create(c, BYTES, &y), 0);
	fill_f16(aneshare_surface_data(x), BYTES / 2, 7, 1.0f);
	static uint8_t first[BYTES];
	for (int i = 0; i < RUNS; i++) {
		memset(aneshare_surface_data(y), 0xff, BYTES);   /* NaNs: each run must overwrite them */
		int r = aneshare_run(p, 0, &x, 1, &y, 1);
		cr_assert_eq(r, 0, "run %d: %s: %s", i, aneshare_strerror(r), aneshare_last_error(c));
		if (i == 0)
			memcpy(first, aneshare_surface_data(y), BYTES);   /* on the loop: its time is not known yet */
		else
			cr_assert_eq(memcmp(first, aneshare_surface_data(y), BYTES), 0,
			             "run %d (on a lane or not) differs from the first", i);
	}
	counts k = settled_counts(c, RUNS);
	cr_expect_eq(k.runs, RUNS);
	cr_expect_geq(k.lane_runs, RUNS - 2, "only %llu of %d runs of the block on lanes",
	              (unsigned long long)k.lane_runs, RUNS);
	aneshare_surface_release(x);
	aneshare_surface_release(y);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

Test(lanes, lane_run_max_us_limits_what_runs_on_lanes)
{
	counts k;
	const char *zero[] = { "--lane-run-max-us", "0", NULL };
	free(seq_case(zero, &k));
	cr_expect_eq(k.runs, SEQ_RUNS);
	cr_expect_eq(k.lane_runs, 0, "%llu runs on lanes with --lane-run-max-us 0",
	              (unsigned long long)k.lane_runs);

	/* A 64 x 64 matmul takes far more than 1 us: never on a lane; with a
	 * generous limit the same program is. */
	for (int generous = 0; generous <= 1; generous++) {
		const char *args[] = { "--lane-run-max-us", generous ? "1000000" : "1", NULL };
		lanes_start(args);
		aneshare_conn *c = h_connect(&D, "big");
		sq s;
		cr_assert_eq(sq_open(c, 64, "main", &s), 0, "%s", aneshare_last_error(c));
		for (int i = 0; i < 20; i++)
			sq_check(&s, (uint64_t)i + 500);
		sq_close(&s);
		k = get_counts(c);
		cr_expect_eq(k.runs, 20);
		if (generous)
			cr_expect_geq(k.lane_runs, 18, "%llu", (unsigned long long)k.lane_runs);
		else
			cr_expect_eq(k.lane_runs, 0, "%llu", (unsigned long long)k.lane_runs);
		aneshare_disconnect(c);
		h_daemon_stop(&D);
	}
}

/* ======================================================================================= */
/* 2. Chained runs                                                                          */
/* ======================================================================================= */

#define CHAIN_STEPS 4
#define CHAIN_ROUNDS 40

typedef struct chain_fx {
	aneshare_conn *c, *obs;
	aneshare_program *mm, *dbl;
	aneshare_surface *s[CHAIN_STEPS + 1], *w;
	aneshare_surface *mm_in[CHAIN_STEPS][2], *dbl_in[CHAIN_STEPS][1];
	aneshare_step steps[CHAIN_STEPS];
} chain_fx;

static void chain_open(chain_fx *f, const char *const *args)
{
	lanes_start(args);
	f->c = h_connect(&D, "chain");
	f->obs = h_connect(&D, "observer");
	char *mil = h_square_mm_mil(SQ_N, "main");
	cr_assert_eq(aneshare_program_compile(f->c, mil, NULL, 0, &f->mm, NULL), 0);
	free(mil);
	mil = dbl_mil(SQ_N);
	cr_assert_eq(aneshare_program_compile(f->c, mil, NULL, 0, &f->dbl, NULL), 0, "%s",
	             aneshare_last_error(f->c));
	free(mil);
	size_t bytes = (size_t)SQ_N * SQ_N * 2;
	for (int i = 0; i <= CHAIN_STEPS; i++)
		f->s[i] = h_surface(f->c, bytes);
	f->w = h_surface(f->c, bytes);
	/* s0 @ w -> s1, s1 + s1 -> s2, s2 @ w -> s3, s3 + s3 -> s4 */
	for (int i = 0; i < CHAIN_STEPS; i++) {
		if (i % 2 == 0) {
			f->mm_in[i][0] = f->s[i];
			f->mm_in[i][1] = f->w;
			f->steps[i] = (aneshare_step){ f->mm, 0, f->mm_in[i], 2, &f->s[i + 1], 1 };
		} else {
			f->dbl_in[i][0] = f->s[i];
			f->steps[i] = (aneshare_step){ f->dbl, 0, f->dbl_in[i], 1, &f->s[i + 1], 1 };
		}
	}
}

static void chain_fill(chain_fx *f, uint64_t seed)
{
	size_t n = (size_t)SQ_N * SQ_N;
	fill_f16(aneshare_surface_data(f->s[0]), n, seed, 1.0f);
	fill_f16(aneshare_surface_data(f->w), n, seed + 77, 0.25f);
	for (int i = 1; i <= CHAIN_STEPS; i++)
		memset(aneshare_surface_data(f->s[i]), 0xff, n * 2);
}

/* Every step's output against the reference computed from its (fp16)
 * input; steps >= upto must have left their NaNs. */
static void chain_verify(chain_fx *f, int upto)
{
	size_t n = (size_t)SQ_N * SQ_N;
	for (int i = 0; i < CHAIN_STEPS; i++) {
		const uint16_t *in = aneshare_surface_data(f->s[i]);
		const uint16_t *out = aneshare_surface_data(f->s[i + 1]);
		if (i >= upto) {
			for (size_t k = 0; k < n; k++)
				cr_assert_eq(out[k], 0xffff, "step %d ran (element %zu written)", i, k);
			continue;
		}
		if (i % 2 == 0) {
			double e = mm_err(SQ_N, in, aneshare_surface_data(f->w), out);
			cr_assert_leq(e, H_MM_TOL, "step %d: relative error %g", i, e);
		} else {
			float a[SQ_N * SQ_N], b[SQ_N * SQ_N];
			aneshare_f16_to_f32(a, in, n);
			aneshare_f16_to_f32(b, out, n);
			for (size_t k = 0; k < n; k++)   /* x + x is exact in fp16 here */
				cr_assert_eq(b[k], 2.0f * a[k], "step %d element %zu: %g != 2 * %g", i, k,
				             (double)b[k], (double)a[k]);
		}
	}
}

static void chain_close(chain_fx *f)
{
	aneshare_disconnect(f->obs);
	aneshare_disconnect(f->c);
	h_daemon_stop(&D);
}

/* CHAIN_ROUNDS checked chains; the final outputs of every round
 * (malloc'd) and the counters. */
static uint16_t *chain_case(const char *const *args, counts *ret)
{
	chain_fx f;
	chain_open(&f, args);
	size_t n = (size_t)SQ_N * SQ_N;
	uint16_t *outs = malloc(CHAIN_ROUNDS * n * 2);
	cr_assert_not_null(outs);
	for (int r = 0; r < CHAIN_ROUNDS; r++) {
		chain_fill(&f, (uint64_t)r + 1000);
		int rc = aneshare_run_chain(f.c, f.steps, CHAIN_STEPS);
		cr_assert_eq(rc, 0, "chain %d: %s: %s", r, aneshare_strerror(rc),
		             aneshare_last_error(f.c));
		chain_verify(&f, CHAIN_STEPS);
		memcpy(outs + (size_t)r * n, aneshare_surface_data(f.s[CHAIN_STEPS]), n * 2);
	}
	*ret = get_counts(f.c);   /* as in seq_case */
	chain_close(&f);
	return outs;
}

Test(lanes, chains_match_no_lanes)
{
	counts on, off;
	uint16_t *a = chain_case(NULL, &on);
	cr_expect_eq(on.runs, CHAIN_ROUNDS * CHAIN_STEPS, "every step counts as a run");
	cr_expect_geq(on.lane_runs, (CHAIN_ROUNDS - 2) * CHAIN_STEPS, "%llu",
	              (unsigned long long)on.lane_runs);
	const char *no_lanes[] = { "--no-lanes", NULL };
	uint16_t *b = chain_case(no_lanes, &off);
	cr_expect_eq(off.runs, CHAIN_ROUNDS * CHAIN_STEPS);
	cr_expect_eq(off.lane_runs, 0);
	size_t n = (size_t)SQ_N * SQ_N;
	for (int r = 0; r < CHAIN_ROUNDS; r++)
		cr_assert_eq(memcmp(a + (size_t)r * n, b + (size_t)r * n, n * 2), 0,
		             "chain %d: lanes and --no-lanes disagree", r);
	free(a);
	free(b);
}

/* A step that fails on a lane: the error names it, the steps before it
 * wrote their outputs, the ones after did not run; the same without lanes. */
Test(lanes, chain_failing_step_on_a_lane)
{
	for (int lanes = 1; lanes >= 0; lanes--) {
		const char *args[] = { "--fault-inject", "run_fail=fail_me", lanes ? NULL : "--no-lanes",
		                       NULL };
		chain_fx f;
		chain_open(&f, args);
		for (int r = 0; r < 3; r++) {   /* the programs' run times become known */
			chain_fill(&f, (uint64_t)r);
			cr_assert_eq(aneshare_run_chain(f.c, f.steps, CHAIN_STEPS), 0);
		}
		/* (status on the chains' own connection: one on another connection
		 * may not count yet a run whose reply a worker sent itself) */
		counts k0 = get_counts(f.c);
		/* step 3 is dbl's fail_me */
		f.steps[3].function = 1;
		cr_assert_str_eq(aneshare_program_function_name(f.dbl, 1), "fail_me");
		for (int r = 0; r < 5; r++) {
			chain_fill(&f, (uint64_t)r + 40);
			int rc = aneshare_run_chain(f.c, f.steps, CHAIN_STEPS);
			cr_assert_eq(rc, -ANESHARE_ERUN_FAILED, "lanes=%d: %s", lanes, aneshare_strerror(rc));
			cr_assert_eq(aneshare_last_failed_step(f.c), 3);
			cr_expect(strstr(aneshare_last_error(f.c), "step 3: "), "%s", aneshare_last_error(f.c));
			chain_verify(&f, 3);
			/* fail_me wrote nothing either */
			const uint16_t *o = aneshare_surface_data(f.s[4]);
			cr_assert_eq(o[0], 0xffff);
		}
		/* And a refused chain (no such surface in step 1) runs nothing. */
		f.steps[3].function = 0;
		aneshare_surface *keep = f.dbl_in[1][0];
		aneshare_surface *tiny = h_surface(f.c, 2);
		f.dbl_in[1][0] = tiny;
		chain_fill(&f, 99);
		int rc = aneshare_run_chain(f.c, f.steps, CHAIN_STEPS);
		cr_assert_eq(rc, -ANESHARE_ESIZE_MISMATCH, "%s", aneshare_strerror(rc));
		cr_assert_eq(aneshare_last_failed_step(f.c), 1);
		chain_verify(&f, 0);
		f.dbl_in[1][0] = keep;
		aneshare_surface_release(tiny);

		counts k1 = get_counts(f.c);
		cr_expect_eq(k1.runs - k0.runs, 5 * 4, "lanes=%d: %llu runs (the failed step counts)",
		             lanes, (unsigned long long)(k1.runs - k0.runs));
		if (lanes)
			cr_expect_eq(k1.lane_runs - k0.lane_runs, 5 * 4, "%llu",
			             (unsigned long long)(k1.lane_runs - k0.lane_runs));
		else
			cr_expect_eq(k1.lane_runs, 0);
		/* the connection is fine afterwards */
		chain_fill(&f, 123);
		cr_assert_eq(aneshare_run_chain(f.c, f.steps, CHAIN_STEPS), 0);
		chain_verify(&f, CHAIN_STEPS);
		chain_close(&f);
	}
}

/* ======================================================================================= */
/* 3. Other requests between lane runs                                                      */
/* ======================================================================================= */

Test(lanes, other_requests_between_lane_runs)
{
	lanes_start(NULL);
	aneshare_conn *c = h_connect(&D, "mixer");
	aneshare_conn *obs = h_connect(&D, "observer");
	sq s;
	cr_assert_eq(sq_open(c, SQ_N, "main", &s), 0);
	uint64_t seed = 1;
	for (int i = 0; i < 5; i++)
		sq_check(&s, seed++);
	counts k = get_counts(c);
	cr_assert_eq(k.runs, 5);
	cr_assert_geq(k.lane_runs, 3, "the lane is not in use");
	uint64_t runs = 5;

	for (int round = 0; round < 3; round++) {
		/* status on the same connection */
		k = get_counts(c);
		cr_assert_eq(k.runs, runs);
		cr_assert_eq(k.surfaces, 3);
		cr_assert_eq(k.programs, 1);
		sq_check(&s, seed++), runs++;

		/* surface.create, used at once */
		aneshare_surface *z2 = h_surface(c, (size_t)SQ_N * SQ_N * 2);
		cr_assert_eq(get_counts(c).surfaces, 4);
		sq_check(&s, seed++), runs++;

		/* a new program (a compile in flight), its first runs, then the
		 * same again (cached) */
		sq s2;
		char name[32];
		snprintf(name, sizeof name, "other%d", round);
		cr_assert_eq(sq_open(c, SQ_N, name, &s2), 0, "%s", aneshare_last_error(c));
		sq_fill(&s2, seed);
		cr_assert_eq(sq_run(&s2), 0);
		cr_assert_leq(sq_err(&s2), H_MM_TOL);
		runs++;
		char *mil = h_square_mm_mil(SQ_N, name);
		aneshare_program *again;
		bool cached = false;
		cr_assert_eq(aneshare_program_compile(c, mil, NULL, 0, &again, &cached), 0);
		free(mil);
		cr_assert(cached, "the second compile of %s was not cached", name);
		cr_assert_str_eq(aneshare_program_key(again), aneshare_program_key(s2.p));
		k = get_counts(c);
		cr_assert_eq(k.programs, 2);
		cr_assert_eq(k.surfaces, 4 + 3);
		cr_assert_eq(k.runs, runs);
		/* run the cached handle into z2 */
		aneshare_surface *in2[2] = { s2.x, s2.y };
		memset(aneshare_surface_data(z2), 0xff, (size_t)SQ_N * SQ_N * 2);
		cr_assert_eq(aneshare_run(again, 0, in2, 2, &z2, 1), 0);
		runs++;
		cr_assert_leq(mm_err(SQ_N, aneshare_surface_data(s2.x), aneshare_surface_data(s2.y),
		                     aneshare_surface_data(z2)), H_MM_TOL);
		sq_check(&s, seed++), runs++;

		/* releases */
		cr_assert_eq(aneshare_program_release(again), 0);
		sq_close(&s2);
		cr_assert_eq(aneshare_surface_release(z2), 0);
		sq_check(&s, seed++), runs++;
		k = get_counts(c);
		cr_assert_eq(k.surfaces, 3);
		cr_assert_eq(k.programs, 1);

		/* surface.import: a frame with an fd on the lane */
		int mfd;
		cr_assert_eq(anes_memfd_create("lane-import", (size_t)SQ_N * SQ_N * 2, &mfd), 0);
		aneshare_surface *imp;
		int r = aneshare_surface_import(c, mfd, &imp);
		cr_assert_eq(r, 0, "import: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
		close(mfd);
		cr_assert_eq(get_counts(c).surfaces, 4);
		/* the imported surface as the output */
		sq_fill(&s, seed++);
		aneshare_surface *in[2] = { s.x, s.y };
		memset(aneshare_surface_data(imp), 0xff, (size_t)SQ_N * SQ_N * 2);
		cr_assert_eq(aneshare_run(s.p, 0, in, 2, &imp, 1), 0, "%s", aneshare_last_error(c));
		runs++;
		cr_assert_leq(mm_err(SQ_N, aneshare_surface_data(s.x), aneshare_surface_data(s.y),
		                     aneshare_surface_data(imp)), H_MM_TOL);
		cr_assert_eq(aneshare_surface_release(imp), 0);

		/* a run the daemon refuses, answered on the lane */
		aneshare_surface *tiny = h_surface(c, 2);
		r = aneshare_run(s.p, 0, in, 2, &tiny, 1);
		cr_assert_eq(r, -ANESHARE_ESIZE_MISMATCH, "%s", aneshare_strerror(r));
		aneshare_surface_release(tiny);
		sq_check(&s, seed++), runs++;
	}
	k = get_counts(c);
	cr_expect_eq(k.runs, runs);
	cr_expect_eq(k.surfaces, 3);
	cr_expect_eq(k.programs, 1);
	/* the programs' first runs and one after each compile may have gone
	 * through the loop; nearly all the rest ran on the lane */
	cr_expect_geq(k.lane_runs, runs - 2 * 3 - 2, "%llu of %llu", (unsigned long long)k.lane_runs,
	              (unsigned long long)runs);
	sq_close(&s);
	aneshare_disconnect(c);
	h_wait_counts(obs, 0, 0);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* ======================================================================================= */
/* 4. Pipelined bursts                                                                      */
/* ======================================================================================= */

#define BURST 48
#define BURST_ROUNDS 10

Test(lanes, pipelined_bursts)
{
	lanes_start(NULL);
	aneshare_conn *c = h_connect(&D, "burster");
	aneshare_conn *obs = h_connect(&D, "observer");
	char *mil = h_square_mm_mil(SQ_N, "main");
	aneshare_program *p;
	cr_assert_eq(aneshare_program_compile(c, mil, NULL, 0, &p, NULL), 0);
	free(mil);
	size_t bytes = (size_t)SQ_N * SQ_N * 2;
	aneshare_surface *x[BURST], *y, *z[BURST];
	y = h_surface(c, bytes);
	for (int i = 0; i < BURST; i++) {
		x[i] = h_surface(c, bytes);
		z[i] = h_surface(c, bytes);
	}
	uint64_t runs = 0;
	for (int round = 0; round < BURST_ROUNDS; round++) {
		/* sequential runs in between: the lane is armed when the burst comes */
		for (int i = 0; i < 3; i++) {
			aneshare_surface *in[2] = { x[0], y };
			fill_f16(aneshare_surface_data(x[0]), (size_t)SQ_N * SQ_N, 9000 + (uint64_t)i, 1.0f);
			fill_f16(aneshare_surface_data(y), (size_t)SQ_N * SQ_N, 42, 1.0f);
			memset(aneshare_surface_data(z[0]), 0xff, bytes);
			cr_assert_eq(aneshare_run(p, 0, in, 2, &z[0], 1), 0);
			cr_assert_leq(mm_err(SQ_N, aneshare_surface_data(x[0]), aneshare_surface_data(y),
			                     aneshare_surface_data(z[0])), H_MM_TOL);
			runs++;
		}
		fill_f16(aneshare_surface_data(y), (size_t)SQ_N * SQ_N, (uint64_t)round, 1.0f);
		uint32_t t[BURST];
		for (int i = 0; i < BURST; i++) {
			fill_f16(aneshare_surface_data(x[i]), (size_t)SQ_N * SQ_N,
			         (uint64_t)(round * BURST + i), 1.0f);
			memset(aneshare_surface_data(z[i]), 0xff, bytes);
			aneshare_surface *in[2] = { x[i], y };
			int r = aneshare_run_submit(p, 0, in, 2, &z[i], 1, &t[i]);
			cr_assert_eq(r, 0, "submit %d: %s", i, aneshare_strerror(r));
		}
		/* in a varying order */
		for (int k = 0; k < BURST; k++) {
			int i = (k * 7 + round) % BURST;
			int r = aneshare_wait(c, t[i]);
			cr_assert_eq(r, 0, "round %d run %d: %s: %s", round, i, aneshare_strerror(r),
			             aneshare_last_error(c));
		}
		for (int i = 0; i < BURST; i++) {
			double e = mm_err(SQ_N, aneshare_surface_data(x[i]), aneshare_surface_data(y),
			                  aneshare_surface_data(z[i]));
			cr_assert_leq(e, H_MM_TOL, "round %d run %d: relative error %g", round, i, e);
		}
		runs += BURST;
		/* on the connection that saw the replies */
		counts k = settled_counts(c, runs);
		cr_assert_eq(k.runs, runs, "round %d: %llu runs counted, %llu answered", round,
		             (unsigned long long)k.runs, (unsigned long long)runs);
	}
	counts k = get_counts(obs);
	cr_expect_gt(k.lane_runs, 0);
	for (int i = 0; i < BURST; i++) {
		aneshare_surface_release(x[i]);
		aneshare_surface_release(z[i]);
	}
	aneshare_surface_release(y);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	h_wait_counts(obs, 0, 0);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

typedef struct tally {
	uint8_t *seen;   /* by msgid - base */
	uint32_t base, n;
	unsigned answered, errors, stray;
} tally;

static void tally_cb(const anes_msg *m, void *ud)
{
	tally *t = ud;
	if (m->type != ANES_MSG_RESPONSE || m->msgid < t->base || m->msgid - t->base >= t->n) {
		t->stray++;
		return;
	}
	t->seen[m->msgid - t->base]++;
	t->answered++;
	if (m->error)
		t->errors++;
}

/* Several frames in one write on an armed lane: the loop takes them. */
Test(lanes, several_frames_in_one_write)
{
	lanes_start(NULL);
	aneshare_conn *obs = h_connect(&D, "observer");
	rsq s;
	rsq_open(&s, "main");
	for (int i = 0; i < 4; i++)
		rsq_check(&s, (uint64_t)i);
	cr_assert_geq(get_counts(obs).lane_runs, 2);
	for (int round = 0; round < 20; round++) {
		unsigned n = 2 + (unsigned)round % 7;
		rsq_fill(&s, (uint64_t)round + 50);
		msgpack_sbuffer sb;
		msgpack_sbuffer_init(&sb);
		uint32_t first = s.next_msgid;
		for (unsigned i = 0; i < n; i++)
			rsq_frame(&s, &sb, s.next_msgid++);
		/* and a status in the same write */
		h_raw_frame(&sb, s.next_msgid++, "status", NULL, 0, 0);
		cr_assert_eq(h_raw_send(s.rc.fd, sb.data, sb.size, NULL, 0), 0);
		msgpack_sbuffer_destroy(&sb);
		/* answered in any order, each once */
		uint8_t seen[16] = { 0 };
		tally t = { .seen = seen, .base = first, .n = s.next_msgid - first };
		while (t.answered < t.n)
			cr_assert_eq(h_rconn_next(&s.rc, 5000, tally_cb, &t), 1, "round %d: %u of %u answered",
			             round, t.answered, t.n);
		for (uint32_t i = 0; i < t.n; i++)
			cr_assert_eq(seen[i], 1, "msgid %u answered %u times", first + i, seen[i]);
		cr_assert_eq(t.errors, 0);
		cr_assert_eq(t.stray, 0);
		cr_assert_leq(rsq_err(&s), H_MM_TOL);
		rsq_check(&s, (uint64_t)round + 5000);
	}
	counts k = rsq_counts(&s);
	unsigned expect = 4;
	for (int round = 0; round < 20; round++)
		expect += 2 + (unsigned)round % 7 + 1;
	cr_expect_eq(k.runs, expect);
	rsq_close(&s);
	h_wait_counts(obs, 0, 0);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* ======================================================================================= */
/* 5. Replies the socket does not take                                                      */
/* ======================================================================================= */

/* More replies than the daemon's socket can hold (the send buffer of a
 * Unix socket, net.core.wmem_default, counts at least each byte once; a
 * reply is more than 30 bytes), however the daemon batches them, and fewer
 * than it keeps for a client that does not read (max_unsent_bytes, 4 MiB). */
static unsigned unread_runs(void)
{
	long wmem = 262144;
	FILE *f = fopen("/proc/sys/net/core/wmem_default", "r");
	if (f) {
		if (fscanf(f, "%ld", &wmem) != 1)
			wmem = 262144;
		fclose(f);
	}
	long n = 2 * wmem / 30;
	return n < 3000 ? 3000 : n > 60000 ? 60000 : (unsigned)n;
}

/* A client that sends many runs and reads no reply until it has sent them
 * all (in writes of up to 64 KiB, as they come): the lane answers until the
 * socket takes no more, then hands the connection back to the loop, which
 * keeps the rest of the replies until the client reads; each run is
 * answered once. */
Test(lanes, unread_replies_hand_the_lane_back)
{
	const unsigned UNREAD_RUNS = unread_runs();
	lanes_start(NULL);
	aneshare_conn *obs = h_connect(&D, "observer");
	rsq s;
	rsq_open(&s, "main");
	for (int i = 0; i < 4; i++)
		rsq_check(&s, (uint64_t)i);
	counts k0 = rsq_counts(&s);
	cr_assert_geq(k0.lane_runs, 2, "the lane is not in use");

	for (int round = 0; round < 2; round++) {
		rsq_fill(&s, 777 + (uint64_t)round);
		tally t = { .base = s.next_msgid, .n = UNREAD_RUNS };
		t.seen = calloc(UNREAD_RUNS, 1);
		cr_assert_not_null(t.seen);
		msgpack_sbuffer sb;
		msgpack_sbuffer_init(&sb);
		for (unsigned i = 0; i < UNREAD_RUNS; i++) {
			rsq_frame(&s, &sb, s.next_msgid++);
			if (sb.size >= 65536 || i + 1 == UNREAD_RUNS) {
				int r = h_raw_send(s.rc.fd, sb.data, sb.size, NULL, 0);
				cr_assert_eq(r, 0, "round %d: sending runs up to %u: %s", round, i, strerror(-r));
				msgpack_sbuffer_clear(&sb);
			}
		}
		msgpack_sbuffer_destroy(&sb);
		while (t.answered < UNREAD_RUNS) {
			int r = h_rconn_next(&s.rc, 10000, tally_cb, &t);
			cr_assert_eq(r, 1, "round %d: %u of %u answered, then %s", round, t.answered,
			             UNREAD_RUNS, r == 0 ? "the connection closed" : "nothing");
		}
		for (unsigned i = 0; i < UNREAD_RUNS; i++)
			cr_assert_eq(t.seen[i], 1, "msgid %u answered %u times", t.base + i, t.seen[i]);
		cr_assert_eq(t.errors, 0);
		cr_assert_eq(t.stray, 0);
		free(t.seen);
		cr_assert_leq(rsq_err(&s), H_MM_TOL);

		counts k = rsq_counts(&s);
		cr_assert_eq(k.runs - k0.runs, UNREAD_RUNS);
		uint64_t on_lane = k.lane_runs - k0.lane_runs;
		/* Some ran on the lane until the socket was full; the rest went
		 * through the loop once the lane had handed the socket back. */
		cr_expect_gt(on_lane, 0, "round %d: no run on the lane", round);
		cr_expect_lt(on_lane, UNREAD_RUNS, "round %d: the socket never filled up", round);
		cr_log_info("round %d: %llu of %u runs on the lane", round, (unsigned long long)on_lane,
		            UNREAD_RUNS);
		cr_expect_eq(k.clients, 2);
		aneshare_status *st = h_status(obs);
		cr_expect_eq(st->runs, k.runs);
		aneshare_status_free(st);

		/* Everything read: the lane takes the connection again. */
		k0 = rsq_counts(&s);
		for (int i = 0; i < 20; i++)
			rsq_check(&s, (uint64_t)i + 31);
		k = rsq_counts(&s);
		cr_assert_eq(k.runs - k0.runs, 20);
		cr_expect_geq(k.lane_runs - k0.lane_runs, 19, "%llu",
		              (unsigned long long)(k.lane_runs - k0.lane_runs));
		k0 = k;
	}
	uint64_t dropped = 1;
	cr_assert_eq(h_rconn_call(&s.rc, s.next_msgid++, "status", NULL, 0, NULL, 0, "dropped", &dropped), 0);
	cr_expect_eq(dropped, 0, "the daemon dropped %llu clients", (unsigned long long)dropped);
	rsq_close(&s);
	h_wait_counts(obs, 0, 0);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* ======================================================================================= */
/* 6. Faults                                                                                */
/* ======================================================================================= */

enum fault {
	F_BAD_HEADER,      /* reserved bytes not zero */
	F_MALFORMED,       /* a payload that is not msgpack */
	F_OVERSIZED,       /* a header announcing more than max_frame */
	F_RANDOM,          /* random bytes */
	F_EOF_MID_FRAME,   /* half a frame, then end of file */
	F_CLOSE_MID_FRAME, /* half a frame, then close */
	F_N
};

static const char *const fault_name[F_N] = { "bad header", "malformed payload", "oversized frame",
	                                     "random bytes", "EOF mid-frame", "close mid-frame" };

Test(lanes, garbage_on_an_armed_lane)
{
	lanes_start(NULL);
	int fds;
	aneshare_conn *obs = h_observe(&D, &fds);
	aneshare_conn *gc = h_connect(&D, "good");
	sq good;
	cr_assert_eq(sq_open(gc, SQ_N, "main", &good), 0);
	uint64_t seed = 1;

	for (int round = 0; round < 3; round++)
		for (int f = 0; f < F_N; f++) {
			rsq s;
			rsq_open(&s, "main");
			counts k0 = get_counts(obs);
			for (int i = 0; i < 4; i++)
				rsq_check(&s, (uint64_t)i);
			counts k1 = get_counts(obs);
			cr_assert_geq(k1.lane_runs - k0.lane_runs, 3, "%s: the lane is not in use",
			              fault_name[f]);
			tu_pause_ms(1);   /* the worker has armed it again by now */

			uint8_t buf[64];
			size_t len = sizeof buf;
			memset(buf, 0, sizeof buf);
			switch (f) {
			case F_BAD_HEADER:
				anes_frame_header_write(buf, 8, 0);
				buf[6] = 1;
				memset(buf + 8, 0x90, 8);
				len = 16;
				break;
			case F_MALFORMED:
				anes_frame_header_write(buf, 8, 0);
				memset(buf + 8, 0xc1, 8);   /* never used in msgpack */
				len = 16;
				break;
			case F_OVERSIZED:
				anes_frame_header_write(buf, 0xfffffff0u, 0);
				len = 8;
				break;
			case F_RANDOM:
				fill_f16((uint16_t *)buf, sizeof buf / 2, (uint64_t)round + 3, 1.0f);
				buf[0] = 0x7f;   /* a length over max_frame either way */
				break;
			default: {
				msgpack_sbuffer sb;
				msgpack_sbuffer_init(&sb);
				rsq_frame(&s, &sb, 9999);
				cr_assert_gt(sb.size, 12);
				len = sb.size / 2;
				memcpy(buf, sb.data, len);
				msgpack_sbuffer_destroy(&sb);
				break;
			}
			}
			cr_assert_eq(h_raw_send(s.rc.fd, buf, len, NULL, 0), 0);
			if (f == F_CLOSE_MID_FRAME) {
				rsq_close(&s);
			} else {
				if (f == F_EOF_MID_FRAME)
					cr_assert_eq(shutdown(s.rc.fd, SHUT_WR), 0);
				/* The daemon closes it: with a protocol error notification
				 * for what it could not parse, without one at end of file. */
				h_reply res = { .msgid = UINT32_MAX };
				int r;
				int64_t deadline = tu_now_ms() + 10000 * h_slow();
				while ((r = h_rconn_next(&s.rc, 10000, h_reply_cb, &res)) == 1)
					cr_assert_lt(tu_now_ms(), deadline);
				cr_assert_eq(r, 0, "%s: the daemon did not close the connection",
				             fault_name[f]);
				if (f == F_EOF_MID_FRAME)
					cr_expect_eq(res.notifications, 0, "%s", fault_name[f]);
				else if (f != F_RANDOM)
					cr_expect_eq(res.notifications, 1, "%s: %u error notifications",
					             fault_name[f], res.notifications);
				rsq_close(&s);
			}
			h_wait_clients(obs, 2);
			h_wait_counts(obs, 3, 1);
			sq_check(&good, seed++);
		}
	sq_close(&good);
	aneshare_disconnect(gc);
	h_back_to_baseline(&D, obs, fds);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* Requests the lane hands back that are not errors: the connection stays. */
Test(lanes, handed_back_requests_keep_the_connection)
{
	lanes_start(NULL);
	aneshare_conn *obs = h_connect(&D, "observer");
	rsq s;
	rsq_open(&s, "main");
	for (int i = 0; i < 4; i++)
		rsq_check(&s, (uint64_t)i);
	uint64_t runs = 4;

	for (int round = 0; round < 5; round++) {
		/* an unknown method */
		cr_assert_eq(h_rconn_call(&s.rc, s.next_msgid++, "no.such.method", NULL, 0, NULL, 0, NULL, NULL),
		             ANES_WERR_UNKNOWN_METHOD);
		rsq_check(&s, (uint64_t)round + 100), runs++;
		/* a notification: ignored */
		msgpack_sbuffer sb;
		msgpack_packer pk;
		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		char hdr[ANES_FRAME_HEADER_SIZE] = { 0 };
		msgpack_sbuffer_write(&sb, hdr, sizeof hdr);
		msgpack_pack_array(&pk, 3);
		msgpack_pack_uint32(&pk, 2);
		pack_key(&pk, "hint");
		msgpack_pack_map(&pk, 0);
		anes_frame_header_write((uint8_t *)sb.data, (uint32_t)(sb.size - sizeof hdr), 0);
		cr_assert_eq(h_raw_send(s.rc.fd, sb.data, sb.size, NULL, 0), 0);
		msgpack_sbuffer_destroy(&sb);
		rsq_check(&s, (uint64_t)round + 200), runs++;
		/* a run with an fd where none belongs */
		int mfd;
		cr_assert_eq(anes_memfd_create("stray", 64, &mfd), 0);
		msgpack_sbuffer_init(&sb);
		rsq_frame(&s, &sb, s.next_msgid);
		/* announce the fd in the header */
		anes_frame_header_write((uint8_t *)sb.data, (uint32_t)(sb.size - ANES_FRAME_HEADER_SIZE), 1);
		cr_assert_eq(h_raw_send(s.rc.fd, sb.data, sb.size, &mfd, 1), 0);
		close(mfd);
		msgpack_sbuffer_destroy(&sb);
		h_reply res = { .msgid = s.next_msgid++ };
		cr_assert_eq(h_rconn_wait(&s.rc, &res), ANES_WERR_BAD_FD);
		rsq_check(&s, (uint64_t)round + 300), runs++;
		/* a run naming no such surface, answered on the lane */
		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		msgpack_pack_map(&pk, 3);
		pack_key(&pk, "program");
		msgpack_pack_uint32(&pk, s.prog);
		pack_key(&pk, "inputs");
		msgpack_pack_array(&pk, 2);
		msgpack_pack_uint32(&pk, s.sid[0]);
		msgpack_pack_uint32(&pk, 424242);
		pack_key(&pk, "outputs");
		msgpack_pack_array(&pk, 1);
		msgpack_pack_uint32(&pk, s.sid[2]);
		cr_assert_eq(h_rconn_call(&s.rc, s.next_msgid++, "run", sb.data, sb.size, NULL, 0, NULL, NULL),
		             ANES_WERR_NO_SUCH_SURFACE);
		msgpack_sbuffer_destroy(&sb);
		rsq_check(&s, (uint64_t)round + 400), runs++;
	}
	counts k = rsq_counts(&s);
	cr_expect_eq(k.runs, runs);
	cr_expect_eq(k.clients, 2);
	cr_expect_eq(k.surfaces, 3);
	rsq_close(&s);
	h_wait_counts(obs, 0, 0);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

#define KILL_ROUNDS 30

/* Runs in a tight loop, each checked; ready after the first few. */
static int child_runner(void *arg, int ready_fd)
{
	const char *sock = arg;
	aneshare_conn *c;
	if (aneshare_connect(sock, "doomed", &c) < 0)
		return 2;
	sq s;
	if (sq_open(c, SQ_N, "main", &s) < 0)
		return 3;
	for (uint64_t i = 0;; i++) {
		sq_fill(&s, i);
		if (sq_run(&s) != 0)
			return 4;
		if (!(sq_err(&s) <= H_MM_TOL))
			return 5;
		if (i == 5)
			ready(ready_fd);
	}
}

Test(lanes, clients_killed_during_lane_runs)
{
	lanes_start(NULL);
	int fds;
	aneshare_conn *obs = h_observe(&D, &fds);
	aneshare_conn *gc = h_connect(&D, "bystander");
	sq good;
	cr_assert_eq(sq_open(gc, SQ_N, "main", &good), 0);
	uint64_t seed = 1;
	counts k0 = get_counts(obs);

	for (int i = 0; i < KILL_ROUNDS; i++) {
		pid_t pid = h_spawn(child_runner, D.sock);
		tu_pause_ms(i % 5);
		cr_assert_eq(kill(pid, SIGKILL), 0);
		int st;
		cr_assert_eq(waitpid(pid, &st, 0), pid);
		cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
		          "round %d: the child ended by itself (status 0x%x)", i, st);
		sq_check(&good, seed++);
	}
	counts k = get_counts(obs);
	cr_expect_gt(k.lane_runs - k0.lane_runs, (uint64_t)KILL_ROUNDS * 4,
	             "the children's runs did not use lanes");
	h_wait_clients(obs, 2);
	h_wait_counts(obs, 3, 1);
	for (int i = 0; i < 20; i++)
		sq_check(&good, seed++);
	sq_close(&good);
	aneshare_disconnect(gc);
	h_back_to_baseline(&D, obs, fds);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* ======================================================================================= */
/* 7. SIGTERM during lane runs                                                              */
/* ======================================================================================= */

#define TERM_CLIENTS 4

/* Sequential runs until the daemon closes the connection.  Exit status: 0
 * if every run was answered ok (and right) or shutting_down, and nothing
 * succeeded after a shutting_down; otherwise what went wrong. */
static int child_until_closed(void *arg, int ready_fd)
{
	const char *sock = arg;
	aneshare_conn *c;
	if (aneshare_connect(sock, "terminated", &c) < 0)
		return 2;
	aneshare_set_reconnect(c, false);
	sq s;
	if (sq_open(c, SQ_N, "main", &s) < 0)
		return 3;
	int64_t deadline = tu_now_ms() + 30000 * h_slow();
	bool refused = false;
	for (uint64_t i = 0;; i++) {
		sq_fill(&s, i);
		int r = sq_run(&s);
		if (r == 0) {
			if (refused)
				return 9;   /* done after the daemon said it was shutting down */
			if (!(sq_err(&s) <= H_MM_TOL))
				return 5;
		} else if (r == E_SHUTTING_DOWN) {
			refused = true;
		} else if (r == -ECONNRESET) {
			break;   /* closed: the request was not read */
		} else {
			return 6;
		}
		if (i == 20)
			ready(ready_fd);
		if (tu_now_ms() > deadline)
			return 7;
	}
	aneshare_disconnect(c);
	return 0;
}

/* The grace period is an hour: a daemon that waited for it instead of
 * draining its lanes would not stop, and the suite's timeout fails it. */
Test(lanes, sigterm_during_lane_runs)
{
	const char *args[] = { "--shutdown-timeout", "3600", NULL };
	lanes_start(args);
	pid_t pid[TERM_CLIENTS];
	for (int i = 0; i < TERM_CLIENTS; i++)
		pid[i] = h_spawn(child_until_closed, D.sock);
	aneshare_conn *obs = h_connect(&D, "observer");
	counts k0 = get_counts(obs);
	/* lanes busy: 200 runs on them (a bounded poll) */
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	counts k;
	for (;;) {
		k = get_counts(obs);
		if (k.lane_runs >= k0.lane_runs + 200)
			break;
		cr_assert_lt(tu_now_ms(), deadline, "only %llu lane runs",
		             (unsigned long long)(k.lane_runs - k0.lane_runs));
		tu_pause_ms(5);
	}
	cr_assert_eq(k.clients, TERM_CLIENTS + 1);
	aneshare_disconnect(obs);

	cr_assert_eq(kill(D.pid, SIGTERM), 0);
	for (int i = 0; i < TERM_CLIENTS; i++) {
		int st;
		cr_assert_eq(waitpid(pid[i], &st, 0), pid[i]);
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client %d: status 0x%x", i, st);
	}
	h_daemon_wait(&D);   /* exit status 0 */
}

/* ======================================================================================= */
/* 8. status right after a lane run                                                         */
/* ======================================================================================= */

Test(lanes, status_counts_the_lane_run_just_answered)
{
	lanes_start(NULL);
	aneshare_conn *c = h_connect(&D, "counter");
	aneshare_conn *obs = h_connect(&D, "observer");
	sq s;
	cr_assert_eq(sq_open(c, SQ_N, "main", &s), 0);
	for (int i = 0; i < 3; i++)
		sq_check(&s, (uint64_t)i);
	counts base = get_counts(c);
	cr_assert_eq(base.runs, 3);
	for (int i = 1; i <= 100; i++) {
		sq_check(&s, (uint64_t)i + 10);
		/* on the same connection (which hands the lane back) and on another */
		counts k = get_counts(i % 2 ? c : obs);
		cr_assert_eq(k.runs, base.runs + (uint64_t)i, "after run %d", i);
		cr_assert_eq(k.lane_runs, base.lane_runs + (uint64_t)i, "after run %d", i);
	}
	/* and a chain of 3 */
	aneshare_surface *in[2] = { s.x, s.y };
	aneshare_step st[3];
	for (int i = 0; i < 3; i++)
		st[i] = (aneshare_step){ s.p, 0, in, 2, &s.z, 1 };
	cr_assert_eq(aneshare_run_chain(c, st, 3), 0);
	counts k = get_counts(c);
	cr_assert_eq(k.runs, base.runs + 103);
	cr_assert_eq(k.lane_runs, base.lane_runs + 103);
	sq_close(&s);
	aneshare_disconnect(obs);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* A run the lane hands back (--lane-run-max-us 0: every run goes to the
 * loop and the job queue, and its worker sends the reply itself), then
 * status on the same connection, which the lane hands back as well: the
 * status must count the run whose reply the client has seen (conn.c,
 * sync_direct).  See the report: lane_back calls conn_process from inside
 * the pool's deliver(), whose nested anes_pool_collect cannot deliver the
 * run's completion if the outer deliver already took it off the done list. */
#define HANDBACK_ROUNDS 5000

/* Runs, each followed by status on the same connection; the status replies
 * that did not count the run just answered. */
static unsigned handback_case(const char *const *args, unsigned *ret_first)
{
	lanes_start(args);
	aneshare_conn *c = h_connect(&D, "handback");
	sq s;
	cr_assert_eq(sq_open(c, SQ_N, "main", &s), 0);
	sq_fill(&s, 1);
	unsigned missed = 0;
	*ret_first = 0;
	for (unsigned i = 1; i <= HANDBACK_ROUNDS; i++) {
		cr_assert_eq(sq_run(&s), 0);
		counts k = get_counts(c);
		cr_assert_eq(k.lane_runs, 0);
		if (k.runs != i) {
			cr_assert_lt(k.runs, i, "more runs than done");
			if (!missed++)
				*ret_first = i;
		}
	}
	cr_assert_leq(sq_err(&s), H_MM_TOL);
	sq_close(&s);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
	return missed;
}

Test(lanes, status_after_a_handed_back_run)
{
	unsigned first;
	/* Without lanes the loop reads both requests itself: always right. */
	const char *no_lanes[] = { "--no-lanes", NULL };
	unsigned missed = handback_case(no_lanes, &first);
	cr_expect_eq(missed, 0, "--no-lanes: %u of %d status replies did not count the run just "
	             "answered (first: run %u)", missed, HANDBACK_ROUNDS, first);
	const char *args[] = { "--lane-run-max-us", "0", NULL };
	missed = handback_case(args, &first);
	cr_expect_eq(missed, 0, "lanes: %u of %d status replies did not count the run just "
	             "answered (first: run %u)", missed, HANDBACK_ROUNDS, first);
}

/* ======================================================================================= */
/* 9. the lane spin (conn.c, lane_spin): the thread that answered reads the socket a while  */
/* ======================================================================================= */

/* The lane spin's rules run on a fake clock (h_fake_clock, proto/anes_clock.h)
 * that these tests drive: with step 0 time stands still, so a spin ends only
 * when its client's next request comes (a hit) or the lane is wanted back;
 * with a step below ANES_SPIN_GAP_NS each poll costs that much time, so a
 * spin ends at its bound after bound / step polls and never on a gap.  The
 * counters are then exact, however loaded the machine. */
/* Far below ANES_SPIN_GAP_NS: a poll does not look like a gap even when
 * other threads read the clock a few times between two polls. */
#define FAKE_STEP_NS 5000u

typedef struct spin_counts {
	uint64_t spins, hits, gaps, skips;
} spin_counts;

static spin_counts get_spin_counts(aneshare_conn *c)
{
	aneshare_status *st = h_status(c);
	spin_counts k = { st->lane_spins, st->lane_spin_hits, st->lane_spin_gaps, st->lane_spin_skips };
	aneshare_status_free(st);
	return k;
}

/* Time moves (step FAKE_STEP_NS) until a spin that started at or before
 * now has reached its bound of bound_us: the poll that read the clock at
 * the bound has been made (bounded wait); then time stands still again. */
static void spin_runs_out(anes_test_clock *k, uint32_t bound_us)
{
	uint64_t until = atomic_load(&k->now_ns) + (uint64_t)bound_us * 1000u + FAKE_STEP_NS;
	atomic_store(&k->step_ns, FAKE_STEP_NS);
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	while (atomic_load(&k->now_ns) < until) {
		cr_assert_lt(tu_now_ms(), deadline, "the spin made no poll for 10 s");
		tu_pause_ms(1);
	}
	atomic_store(&k->step_ns, 0);
}

/* The penalty rules of proto/anes_spin.h for one client's answers, on a
 * local anes_spin: whether the next answer spins (it then ends as got
 * says); the number of skips so far in *skips. */
static bool model_answer(anes_spin *m, bool got, uint64_t *skips)
{
	anes_spin_run run;
	int r = anes_spin_start(m, 1000, &run);
	if (r == -EAGAIN) {
		(*skips)++;
		return false;
	}
	run.gap = false;
	anes_spin_end(m, &run, got);
	return true;
}

/* One checked run on s; if its answer spun (status on obs says so), time
 * moves until that spin has run out at bound_us.  Whether it spun. */
static bool run_and_let_the_spin_run_out(sq *s, uint64_t seed, aneshare_conn *obs, anes_test_clock *k,
                                         uint32_t bound_us)
{
	uint64_t spins = get_spin_counts(obs).spins;
	sq_check(s, seed);
	if (get_spin_counts(obs).spins == spins)   /* counted before the reply went */
		return false;
	spin_runs_out(k, bound_us);
	return true;
}

/* status.lane_spins, lane_spin_hits, lane_spin_gaps and lane_spin_skips
 * say what the lane spin did: back-to-back runs are each caught by the
 * spin of the answer before; after spins that ran out at their bound, the
 * penalty makes answers skip the spin (1, 2, 4 ... of them); a spin that
 * has run out leaves the daemon idle (the clock, which only polls read,
 * stands still); with the spin off nothing is counted. */
Test(lanes, spin_counters_say_what_the_spin_did)
{
	anes_test_clock *clk = h_fake_clock();
	for (int off = 0; off < 2; off++) {
		/* A slice longer than the spin's bound: a spin is cut to the
		 * slice (a_lane_thread_does_not_spin_past_its_slice). */
		const char *args[] = { "--lane-spin-us", off ? "0" : "20000", "--sched-slice-us", "1000000",
		                       NULL };
		lanes_start(args);
		aneshare_conn *obs = h_connect(&D, "observer");
		aneshare_conn *c = h_connect(&D, "spin-counts");
		sq s;
		cr_assert_eq(sq_open(c, SQ_N, "main", &s), 0);
		sq_check(&s, 1);   /* the program's first run, in the loop: its time is known after it */
		spin_counts k0 = get_spin_counts(obs);
		for (int i = 0; i < 40; i++)
			sq_check(&s, 100 + (uint64_t)i);
		spin_counts k1 = get_spin_counts(obs);
		if (off) {
			for (int i = 0; i < 8; i++)
				sq_check(&s, 200 + (uint64_t)i);
			spin_counts k2 = get_spin_counts(obs);
			cr_assert(k2.spins == 0 && k2.hits == 0 && k2.skips == 0 && k2.gaps == 0,
			          "spin off: %llu spins, %llu hits, %llu skips", (unsigned long long)k2.spins,
			          (unsigned long long)k2.hits, (unsigned long long)k2.skips);
		} else {
			/* Every answer spun; each spin but the last (still
			 * polling: time stands still) got the next run. */
			cr_assert_eq(k1.spins - k0.spins, 40);
			cr_assert_eq(k1.hits - k0.hits, 39);
			cr_assert_eq(k1.gaps - k0.gaps, 0);
			cr_assert_eq(k1.skips - k0.skips, 0);
			spin_runs_out(clk, 20000);   /* the last one runs out: a miss */
			/* Then each run comes after its answer's spin ran out: the
			 * model of the rules says which answers skip it. */
			anes_spin m = { 0 };
			uint64_t want_skips = 0, want_spins = 0;
			(void)model_answer(&m, true, &want_skips);   /* the back-to-back ones */
			(void)model_answer(&m, false, &want_skips);  /* the last of them */
			for (int i = 0; i < 8; i++) {
				want_spins += model_answer(&m, false, &want_skips);
				run_and_let_the_spin_run_out(&s, 200 + (uint64_t)i, obs, clk, 20000);
			}
			spin_counts k2 = get_spin_counts(obs);
			cr_assert_eq(want_skips, 5, "the model: spin, skip 1, spin, skip 2, spin, skip 2 of 4");
			cr_assert_eq(k2.spins - k1.spins, want_spins, "%llu spins",
			             (unsigned long long)(k2.spins - k1.spins));
			cr_assert_eq(k2.skips - k1.skips, want_skips, "%llu skips",
			             (unsigned long long)(k2.skips - k1.skips));
			cr_assert_eq(k2.hits, k1.hits, "a spin got a run that came after its bound");
			cr_assert_eq(k2.gaps, k1.gaps);
			/* No thread polls any more: nothing reads the clock. */
			atomic_store(&clk->step_ns, 1);
			uint64_t t0 = atomic_load(&clk->now_ns);
			tu_pause_ms(100);
			cr_assert_eq(atomic_load(&clk->now_ns), t0, "the idle daemon read the clock %llu times",
			             (unsigned long long)(atomic_load(&clk->now_ns) - t0));
			atomic_store(&clk->step_ns, 0);
		}
		sq_check(&s, 999);   /* and it still answers */
		sq_close(&s);
		aneshare_disconnect(c);
		aneshare_disconnect(obs);
		h_daemon_stop(&D);
	}
}

/* run_and_let_the_spin_run_out for a daemon with one lane thread, where
 * status on obs cannot be had while that thread spins (obs is armed on the
 * lanes too): time moves from the answer on, so a spin runs out by itself;
 * status then says whether the answer spun, and the spin has run out by
 * the time the clock passed its bound. */
static bool run_one_lane_thread(sq *s, uint64_t seed, aneshare_conn *obs, anes_test_clock *k,
                                uint32_t bound_us)
{
	uint64_t spins = get_spin_counts(obs).spins;
	sq_check(s, seed);   /* time stands still: a spin is still polling */
	uint64_t until = atomic_load(&k->now_ns) + (uint64_t)bound_us * 1000u + FAKE_STEP_NS;
	atomic_store(&k->step_ns, FAKE_STEP_NS);
	bool spun = get_spin_counts(obs).spins > spins;
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	while (spun && atomic_load(&k->now_ns) < until) {
		cr_assert_lt(tu_now_ms(), deadline, "the spin made no poll for 10 s");
		tu_pause_ms(1);
	}
	atomic_store(&k->step_ns, 0);
	return spun;
}

/* The spin's history is each client's own, not its lane thread's: with one
 * lane thread serving two clients, one that sends pairs of runs (its first
 * answer's spin gets the second run, the second's runs out) and one that
 * sends single runs (every spin runs out, so it soon skips them), the
 * pairs' first spins get their runs every round, and the answers that skip
 * the spin are the ones the rules of anes_spin.h say for each client on its
 * own.  A history per thread sees misses in a row in every round (the
 * pair's second, then the singles') and skips the pairs' spins too. */
Test(lanes, spin_history_is_each_clients_own)
{
	anes_test_clock *clk = h_fake_clock();
	const char *args[] = { "--lane-threads", "1", "--lane-spin-us", "1000", NULL };
	lanes_start(args);
	aneshare_conn *obs = h_connect(&D, "observer");
	aneshare_conn *ca = h_connect(&D, "pairs"), *cb = h_connect(&D, "singles");
	sq a, b;
	cr_assert_eq(sq_open(ca, SQ_N, "main", &a), 0);
	cr_assert_eq(sq_open(cb, SQ_N, "main", &b), 0);
	/* The first runs: the program's (the same for both) first goes
	 * through the loop, its time is known after it; b's may spin. */
	anes_spin ma = { 0 }, mb = { 0 };
	uint64_t want_skips = 0, want_hits = 0;
	if (run_one_lane_thread(&a, 1, obs, clk, 1000))
		(void)model_answer(&ma, false, &want_skips);
	if (run_one_lane_thread(&b, 2, obs, clk, 1000))
		(void)model_answer(&mb, false, &want_skips);
	spin_counts k0 = get_spin_counts(obs);
	want_skips = 0;
	enum { ROUNDS = 12 };
	for (int round = 0; round < ROUNDS; round++) {
		/* time stands still: the first answer's spin gets the second run */
		want_hits += model_answer(&ma, true, &want_skips);
		sq_check(&a, 100 + 2 * (uint64_t)round);
		sq_check(&a, 101 + 2 * (uint64_t)round);
		(void)model_answer(&ma, false, &want_skips);
		spin_runs_out(clk, 1000);   /* the second's spin */
		for (int i = 0; i < 3; i++) {
			bool model_spins = model_answer(&mb, false, &want_skips);
			bool spun = run_one_lane_thread(&b, 200 + 3 * (uint64_t)round + (uint64_t)i, obs, clk, 1000);
			cr_assert_eq(spun, model_spins, "round %d single %d: the answer %s, the rules say it %s",
			             round, i, spun ? "spun" : "skipped the spin", model_spins ? "spins" : "skips");
		}
	}
	spin_counts k1 = get_spin_counts(obs);
	cr_assert_eq(want_hits, ROUNDS, "the model: the pairs never skip");
	cr_assert_eq(k1.hits - k0.hits, want_hits, "the pairs' first spins got %llu runs in %d rounds",
	             (unsigned long long)(k1.hits - k0.hits), ROUNDS);
	cr_assert_eq(k1.skips - k0.skips, want_skips, "%llu answers skipped the spin, the rules say %llu",
	             (unsigned long long)(k1.skips - k0.skips), (unsigned long long)want_skips);
	cr_assert_eq(k1.gaps - k0.gaps, 0);
	sq_close(&a);
	sq_close(&b);
	aneshare_disconnect(ca);
	aneshare_disconnect(cb);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* A client that gets its answer and hangs up at once: the lane thread that
 * is polling its socket (time stands still: the spin does not end by
 * itself) sees the end of the stream and hands the connection back;
 * nothing is left behind. */
Test(lanes, client_gone_while_its_lane_spins)
{
	h_fake_clock();
	const char *args[] = { "--lane-spin-us", "200000", NULL };
	lanes_start(args);
	int fds;
	aneshare_conn *obs = h_observe(&D, &fds);
	counts k0 = get_counts(obs);
	for (int i = 0; i < 20; i++) {
		aneshare_conn *c = h_connect(&D, "spin-gone");
		sq s;
		cr_assert_eq(sq_open(c, SQ_N, "main", &s), 0);
		sq_check(&s, 700 + (uint64_t)i);
		sq_check(&s, 800 + (uint64_t)i);
		aneshare_disconnect(c);   /* right after the answer */
	}
	h_back_to_baseline(&D, obs, fds);
	counts k = get_counts(obs);
	cr_expect_eq(k.runs - k0.runs, 40);
	cr_expect_geq(k.lane_runs - k0.lane_runs, 20, "only %llu of 40 runs on lanes",
	              (unsigned long long)(k.lane_runs - k0.lane_runs));
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* SIGTERM while a lane thread polls a client's socket, on a clock that
 * stands still (the spin never reaches its bound): the spin sees the drain
 * and hands the lane back, and the daemon stops cleanly (without the drain
 * check in lane_spin it never stops, and the suite's timeout fails it). */
Test(lanes, sigterm_while_a_lane_spins)
{
	h_fake_clock();
	const char *args[] = { "--lane-spin-us", "1000000", NULL };
	lanes_start(args);
	aneshare_conn *obs = h_connect(&D, "observer");
	aneshare_conn *c = h_connect(&D, "spin-term");
	sq s;
	cr_assert_eq(sq_open(c, SQ_N, "main", &s), 0);
	uint64_t spins = get_spin_counts(obs).spins;
	for (int i = 0; i < 5; i++)
		sq_check(&s, 900 + (uint64_t)i);
	spin_counts k = get_spin_counts(obs);
	cr_assert_eq(k.spins - spins, 4, "the 2nd to 5th answers spun (the first run is in the loop)");
	cr_assert_eq(k.hits, 3);
	aneshare_disconnect(obs);
	/* the last answer's lane is spinning now, and would for ever */
	cr_assert_eq(kill(D.pid, SIGTERM), 0);
	h_daemon_wait(&D);   /* exit status 0 */
	sq_close(&s);
	aneshare_disconnect(c);
}

/* ======================================================================================= */
/* Lanes keep to the scheduler's slice (docs/protocol.md, "Scheduling")                     */
/* ======================================================================================= */

/* A daemon's clock step longer than the slice: every check of the slice
 * after the one that took the lane finds it over. */
#define SLICE_US "100"
#define PAST_SLICE_NS 200000u

static uint64_t slice_ends(aneshare_conn *c)
{
	aneshare_status *st = h_status(c);
	uint64_t n = st->lane_slice_ends;
	aneshare_status_free(st);
	return n;
}

/* A client that pipelines: PIPE runs in one write, read by the lane thread
 * in one read.  With the daemon's clock standing still the slice never ends,
 * and the lane thread does all of them; with each read of the clock a
 * slice later, it does the first, then hands the rest to the loop, which
 * queues them for the workers (the fair queue): the other clients' ready
 * sockets wait for the lane thread no longer than a slice. */
Test(lanes, a_pipelining_client_keeps_a_lane_thread_for_one_slice)
{
	enum { PIPE = 32 };
	anes_test_clock *clk = h_fake_clock();
	for (int moving = 0; moving < 2; moving++) {
		const char *args[] = { "--lane-threads", "1", "--lane-spin-us", "0",
		                       "--sched-slice-us", SLICE_US, NULL };
		atomic_store(&clk->step_ns, 0);
		lanes_start(args);
		aneshare_conn *obs = h_connect(&D, "observer");
		rsq s;
		rsq_open(&s, "main");
		for (int i = 0; i < 4; i++)
			rsq_check(&s, (uint64_t)i);   /* the program's run time is known */
		counts before = rsq_counts(&s);
		uint64_t ends = slice_ends(obs);

		atomic_store(&clk->step_ns, moving ? PAST_SLICE_NS : 0);
		rsq_fill(&s, 77);
		msgpack_sbuffer sb;
		msgpack_sbuffer_init(&sb);
		uint32_t first = s.next_msgid;
		for (unsigned i = 0; i < PIPE; i++)
			rsq_frame(&s, &sb, s.next_msgid++);
		cr_assert_eq(h_raw_send(s.rc.fd, sb.data, sb.size, NULL, 0), 0);
		msgpack_sbuffer_destroy(&sb);
		uint8_t seen[PIPE] = { 0 };
		tally t = { .seen = seen, .base = first, .n = PIPE };
		while (t.answered < t.n)
			cr_assert_eq(h_rconn_next(&s.rc, 5000, tally_cb, &t), 1, "%u of %u answered",
			             t.answered, t.n);
		atomic_store(&clk->step_ns, 0);
		cr_assert_eq(t.errors, 0);
		cr_assert_leq(rsq_err(&s), H_MM_TOL);

		counts after = rsq_counts(&s);
		cr_assert_eq(after.runs - before.runs, PIPE);
		cr_assert_eq(after.lane_runs - before.lane_runs, moving ? 1u : (unsigned)PIPE,
		             "clock %s: %llu of the pipeline's runs on the lane", moving ? "moving" : "still",
		             (unsigned long long)(after.lane_runs - before.lane_runs));
		cr_assert_eq(slice_ends(obs) - ends, moving ? 1u : 0u);
		rsq_close(&s);
		h_wait_counts(obs, 0, 0);
		aneshare_disconnect(obs);
		h_daemon_stop(&D);
	}
}

/* A client whose next request follows its answer at once: the lane thread
 * polls its socket for it (the lane spin) only within its slice; past it,
 * the lane is armed again, behind other clients' ready sockets.  With each
 * read of the clock a slice later, no answer spins and each ends a slice;
 * with a slice of 10 s the same answers spin and none ends one. */
Test(lanes, a_lane_thread_does_not_spin_past_its_slice)
{
	anes_test_clock *clk = h_fake_clock();
	for (int long_slice = 0; long_slice < 2; long_slice++) {
		const char *args[] = { "--lane-threads", "1", "--lane-spin-us", "1000000",
		                       "--sched-slice-us", long_slice ? "10000000" : SLICE_US, NULL };
		atomic_store(&clk->step_ns, PAST_SLICE_NS);
		lanes_start(args);
		aneshare_conn *obs = h_connect(&D, "observer");
		aneshare_conn *c = h_connect(&D, "ping-pong");
		sq s;
		cr_assert_eq(sq_open(c, SQ_N, "main", &s), 0);
		sq_check(&s, 1);   /* the first run is the loop's: its run time is unknown */
		counts before = get_counts(obs);
		spin_counts sp = get_spin_counts(obs);
		uint64_t ends = slice_ends(obs);
		for (int i = 0; i < 8; i++)
			sq_check(&s, 10 + (uint64_t)i);
		counts after = settled_counts(obs, before.runs + 8);
		uint64_t lane = after.lane_runs - before.lane_runs;
		cr_assert_geq(lane, 4u, "the runs went to the lane (%llu)", (unsigned long long)lane);
		uint64_t spins = get_spin_counts(obs).spins - sp.spins;
		if (long_slice) {
			cr_assert_geq(spins, lane, "every lane answer spun");
			cr_assert_eq(slice_ends(obs) - ends, 0u);
		} else {
			cr_assert_eq(spins, 0u, "no answer spun past its slice");
			cr_assert_eq(slice_ends(obs) - ends, lane, "each lane answer ended a slice");
		}
		sq_close(&s);
		aneshare_disconnect(c);
		h_wait_counts(obs, 0, 0);
		aneshare_disconnect(obs);
		atomic_store(&clk->step_ns, 0);
		h_daemon_stop(&D);
	}
}
