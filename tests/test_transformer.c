/* SPDX-License-Identifier: MIT */
/*
 * The transformer block example (examples/transformer_block.mil) through a
 * real aneshared: compile over the wire, run on shared surfaces, compare with
 * the plain-C fp32 reference (tests/transformer_ref.h) within fp16 tolerance.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "aneshare.h"
#include "daemon_harness.h"
#include "transformer_ref.h"

static h_daemon D;

static void setup(void)
{
	h_daemon_start(&D);
}

static void teardown(void)
{
	h_daemon_kill(&D);
}

TestSuite(transformer, .init = setup, .fini = teardown, .timeout = 60);

#define TB_TOL 5e-3   /* max |out - ref| / max |ref| (measured: about 1.5e-3) */

static uint64_t rng;

static double urand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) / 9007199254740992.0 * 4.0 - 2.0;
}

static aneshare_program *compile_block(aneshare_conn *c, tb_weights *w)
{
	char *mil = h_read_source("examples/transformer_block.mil");
	aneshare_program *p = NULL;
	cr_assert(tb_load(mil, w), "cannot read the weights from examples/transformer_block.mil");
	int r = aneshare_program_compile(c, mil, NULL, 0, &p, NULL);
	free(mil);
	cr_assert_eq(r, 0, "compile: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_eq(aneshare_program_function_count(p), 1);
	cr_assert_eq(aneshare_program_input_count(p, 0), 1);
	cr_assert_eq(aneshare_program_output_count(p, 0), 1);
	const aneshare_tensor_info *in = aneshare_program_input(p, 0, 0), *out = aneshare_program_output(p, 0, 0);
	cr_assert_eq(in->dtype, ANESHARE_FP16);
	cr_assert_eq(in->rank, 4);
	cr_assert(in->shape[0] == 1 && in->shape[1] == TB_D && in->shape[2] == 1 && in->shape[3] == TB_S);
	cr_assert_eq(in->bytes, TB_D * TB_S * 2);
	cr_assert_eq(out->bytes, TB_D * TB_S * 2);
	return p;
}

/* fill in, run, return max |out - ref| / max |ref| */
static double run_block(aneshare_program *p, const tb_weights *w, aneshare_surface *in, aneshare_surface *out,
                        uint64_t seed)
{
	static float x[TB_D * TB_S], ref[TB_D * TB_S];
	uint16_t *h = aneshare_surface_data(in), *o = aneshare_surface_data(out);

	rng = seed * 0x9E3779B97F4A7C15ull + 1;
	for (int i = 0; i < TB_D * TB_S; i++) {
		h[i] = anes_f32_to_f16_soft((float)urand());
		x[i] = anes_f16_to_f32_soft(h[i]);
	}
	memset(o, 0xff, TB_D * TB_S * 2);   /* NaNs: must be overwritten */
	int r = aneshare_run(p, 0, &in, 1, &out, 1);
	cr_assert_eq(r, 0, "run: %s", aneshare_strerror(r));
	tb_reference(w, x, ref);
	double mx = 0, err = 0;
	for (int i = 0; i < TB_D * TB_S; i++) {
		double g = anes_f16_to_f32_soft(o[i]);
		mx = fmax(mx, fabs(ref[i]));
		err = isnan(g) ? INFINITY : fmax(err, fabs(g - ref[i]));
	}
	cr_assert(mx > 0.5, "degenerate reference");
	return err / mx;
}

Test(transformer, block_matches_fp32_reference)
{
	static tb_weights w;
	aneshare_conn *c = h_connect(&D, "test-transformer");
	aneshare_program *p = compile_block(c, &w);
	aneshare_surface *in = h_surface(c, TB_D * TB_S * 2), *out = h_surface(c, TB_D * TB_S * 2);
	for (uint64_t seed = 1; seed <= 4; seed++) {
		double e = run_block(p, &w, in, out, seed);
		cr_assert_leq(e, TB_TOL, "relative error %g (seed %llu)", e, (unsigned long long)seed);
	}
	aneshare_surface_release(in);
	aneshare_surface_release(out);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

typedef struct worker {
	const tb_weights *w;
	uint64_t seed;
	double err;
	int rc;
} worker;

static void *client_main(void *arg)
{
	worker *wk = arg;
	aneshare_conn *c = NULL;
	aneshare_program *p = NULL;
	aneshare_surface *in = NULL, *out = NULL;
	char *mil = h_read_source("examples/transformer_block.mil");

	wk->rc = aneshare_connect(D.sock, "test-transformer-mt", &c);
	if (!wk->rc)
		wk->rc = aneshare_program_compile(c, mil, NULL, 0, &p, NULL);
	if (!wk->rc)
		wk->rc = aneshare_surface_create(c, TB_D * TB_S * 2, &in);
	if (!wk->rc)
		wk->rc = aneshare_surface_create(c, TB_D * TB_S * 2, &out);
	free(mil);
	wk->err = 0;
	for (int k = 0; !wk->rc && k < 3; k++) {
		static __thread float x[TB_D * TB_S], ref[TB_D * TB_S];
		uint16_t *h = aneshare_surface_data(in), *o = aneshare_surface_data(out);
		uint64_t s = wk->seed * 1000 + (uint64_t)k;
		for (int i = 0; i < TB_D * TB_S; i++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			h[i] = anes_f32_to_f16_soft((float)((double)(s >> 11) / 9007199254740992.0 * 4.0 - 2.0));
			x[i] = anes_f16_to_f32_soft(h[i]);
		}
		wk->rc = aneshare_run(p, 0, &in, 1, &out, 1);
		if (wk->rc)
			break;
		tb_reference(wk->w, x, ref);
		double mx = 0, err = 0;
		for (int i = 0; i < TB_D * TB_S; i++) {
			double g = anes_f16_to_f32_soft(o[i]);
			mx = fmax(mx, fabs(ref[i]));
			err = isnan(g) ? INFINITY : fmax(err, fabs(g - ref[i]));
		}
		wk->err = fmax(wk->err, err / mx);
	}
	aneshare_surface_release(in);
	aneshare_surface_release(out);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	return NULL;
}

/* several clients share the one compiled program and run at the same time */
Test(transformer, concurrent_clients)
{
	static tb_weights w;
	char *mil = h_read_source("examples/transformer_block.mil");
	cr_assert(tb_load(mil, &w));
	free(mil);
	worker wk[3];
	pthread_t th[3];
	for (int i = 0; i < 3; i++) {
		wk[i] = (worker){&w, (uint64_t)i + 1, 0, 0};
		cr_assert_eq(pthread_create(&th[i], NULL, client_main, &wk[i]), 0);
	}
	for (int i = 0; i < 3; i++) {
		pthread_join(th[i], NULL);
		cr_assert_eq(wk[i].rc, 0, "client %d: %s", i, aneshare_strerror(wk[i].rc));
		cr_assert_leq(wk[i].err, TB_TOL, "client %d: relative error %g", i, wk[i].err);
	}
	h_daemon_stop(&D);
}
