/* SPDX-License-Identifier: MIT */
/*
 * matmul_client: the end-to-end demo of aneshare.
 *
 * Compiles examples/dynamic_matmul.mil once in the daemon, then runs it many
 * times with different weights.  The weights travel in the input surface
 * next to the activations (one fp16 input [1, IC, 1, SEQ+OC]: columns
 * [0, SEQ) are the activations act[ic][s], columns [SEQ, SEQ+OC) the
 * weights w[ic][oc]); the output [1, OC, 1, SEQ] is
 * out[oc][s] = sum_ic act[ic][s] * w[ic][oc].  Nothing but the run request
 * crosses the socket per run: both tensors live in shared memory.
 *
 *   matmul_client [--socket PATH] [--sets N] [--runs N] [FILE.mil]
 *
 * Exit status 1 if any result is off by more than 1e-2 relative to max|ref|.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L   /* clock_gettime, also when built alone with -std=c11 */
#endif
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aneshare.h"
#include "example_util.h"

#ifndef ANES_EXAMPLES_DIR
#define ANES_EXAMPLES_DIR "examples"
#endif

#define TOLERANCE 1e-2

static uint64_t rng_state;

/* Uniform in [-1, 1). */
static float rnd(void)
{
	return (float)(ex_rand01(&rng_state) * 2.0 - 1.0);
}

static void print_tensor(const char *kind, const aneshare_tensor_info *t)
{
	printf("  %-6s %s: %s [", kind, t->name, t->dtype == ANESHARE_FP16 ? "fp16" : "other");
	for (uint32_t i = 0; i < t->rank; i++)
		printf("%s%llu", i ? ", " : "", (unsigned long long)t->shape[i]);
	printf("] (%llu bytes)\n", (unsigned long long)t->bytes);
}

static int fail(aneshare_conn *c, const char *what, int r)
{
	fprintf(stderr, "matmul_client: %s: %s%s%s\n", what, aneshare_strerror(r),
	        c && *aneshare_last_error(c) ? ": " : "", c ? aneshare_last_error(c) : "");
	return 1;
}

int main(int argc, char **argv)
{
	const char *socket_path = NULL;
	const char *mil_path = ANES_EXAMPLES_DIR "/dynamic_matmul.mil";
	int sets = 4, runs = 20;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--socket") && i + 1 < argc) {
			socket_path = argv[++i];
		} else if (!strcmp(argv[i], "--sets") && i + 1 < argc) {
			sets = atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
			runs = atoi(argv[++i]);
		} else if (argv[i][0] != '-') {
			mil_path = argv[i];
		} else {
			bool help = !strcmp(argv[i], "-h") || !strcmp(argv[i], "--help");
			fprintf(help ? stdout : stderr,
			        "usage: matmul_client [--socket PATH] [--sets N] [--runs N] [FILE.mil]\n");
			return help ? 0 : 2;
		}
	}
	if (sets < 1 || runs < 1 || runs > 100000) {
		fprintf(stderr, "matmul_client: --sets and --runs must be positive\n");
		return 2;
	}

	char *mil = ex_read_text(mil_path);
	if (!mil) {
		fprintf(stderr, "matmul_client: %s: %s\n", mil_path, strerror(errno ? errno : EIO));
		return 1;
	}

	aneshare_conn *c = NULL;
	aneshare_program *p = NULL;
	aneshare_surface *in = NULL, *out = NULL;
	float *act = NULL, *w = NULL, *ref = NULL, *got = NULL;
	double *times = NULL;
	int rc = 1;

	int r = aneshare_connect(socket_path, "matmul_client", &c);
	if (r < 0) {
		fprintf(stderr, "matmul_client: cannot connect to %s: %s (is aneshared running there?)\n",
		        socket_path ? socket_path : "the daemon's default socket", aneshare_strerror(r));
		free(mil);
		return 1;
	}
	const aneshare_server_info *si = aneshare_server(c);
	printf("daemon %s, backend %s\n", si->server_version, si->backend);

	bool cached;
	r = aneshare_program_compile(c, mil, NULL, 0, &p, &cached);
	if (r < 0) {
		rc = fail(c, mil_path, r);
		goto out;
	}
	printf("program %s\ncached: %s\n", aneshare_program_key(p), cached ? "yes" : "no");
	for (uint32_t f = 0; f < aneshare_program_function_count(p); f++) {
		printf("function %s\n", aneshare_program_function_name(p, f));
		for (uint32_t i = 0; i < aneshare_program_input_count(p, f); i++)
			print_tensor("input", aneshare_program_input(p, f, i));
		for (uint32_t i = 0; i < aneshare_program_output_count(p, f); i++)
			print_tensor("output", aneshare_program_output(p, f, i));
	}

	/* The shapes come from the program: input [1, IC, 1, SEQ+OC], output [1, OC, 1, SEQ]. */
	const aneshare_tensor_info *ti = aneshare_program_input(p, 0, 0);
	const aneshare_tensor_info *to = aneshare_program_output(p, 0, 0);
	if (aneshare_program_input_count(p, 0) != 1 || aneshare_program_output_count(p, 0) != 1 ||
	    ti->dtype != ANESHARE_FP16 || to->dtype != ANESHARE_FP16 || ti->rank != 4 ||
	    to->rank != 4 || ti->shape[0] != 1 || ti->shape[2] != 1 || to->shape[0] != 1 ||
	    to->shape[2] != 1 || ti->shape[3] != to->shape[3] + to->shape[1]) {
		fprintf(stderr, "matmul_client: %s is not a dynamic matmul "
		                "(fp16 [1,IC,1,SEQ+OC] -> fp16 [1,OC,1,SEQ])\n", mil_path);
		goto out;
	}
	size_t ic = (size_t)ti->shape[1], oc = (size_t)to->shape[1], seq = (size_t)to->shape[3];
	size_t width = seq + oc;
	printf("IC %zu, OC %zu, SEQ %zu: %zu MACs per run\n", ic, oc, seq, ic * oc * seq);

	if ((r = aneshare_surface_create(c, (size_t)ti->bytes, &in)) < 0 ||
	    (r = aneshare_surface_create(c, (size_t)to->bytes, &out)) < 0) {
		rc = fail(c, "surface", r);
		goto out;
	}
	uint16_t *x = aneshare_surface_data(in);
	const uint16_t *y = aneshare_surface_data(out);
	act = malloc(ic * seq * sizeof *act);
	w = malloc(ic * oc * sizeof *w);
	ref = malloc(oc * seq * sizeof *ref);
	got = malloc(oc * seq * sizeof *got);
	times = malloc((size_t)runs * sizeof *times);
	if (!act || !w || !ref || !got || !times) {
		fprintf(stderr, "matmul_client: out of memory\n");
		goto out;
	}

	rng_state = 42;
	for (size_t i = 0; i < ic * seq; i++)
		act[i] = rnd();
	bool ok = true;
	for (int set = 0; set < sets; set++) {
		for (size_t i = 0; i < ic * oc; i++)
			w[i] = rnd();
		/* Write both into the surface as fp16 and keep the rounded values, so the
		 * reference sees exactly what the daemon sees. */
		for (size_t i = 0; i < ic; i++) {
			aneshare_f32_to_f16(x + i * width, act + i * seq, seq);
			aneshare_f32_to_f16(x + i * width + seq, w + i * oc, oc);
			aneshare_f16_to_f32(act + i * seq, x + i * width, seq);
			aneshare_f16_to_f32(w + i * oc, x + i * width + seq, oc);
		}
		double max_ref = 0;
		for (size_t o = 0; o < oc; o++)
			for (size_t s = 0; s < seq; s++) {
				double acc = 0;
				for (size_t i = 0; i < ic; i++)
					acc += (double)act[i * seq + s] * (double)w[i * oc + o];
				ref[o * seq + s] = (float)acc;
				max_ref = fmax(max_ref, fabs(acc));
			}

		memset(aneshare_surface_data(out), 0, (size_t)to->bytes);
		for (int k = 0; k < runs; k++) {
			double t0 = ex_now_us();
			r = aneshare_run(p, 0, &in, 1, &out, 1);
			times[k] = ex_now_us() - t0;
			if (r < 0) {
				rc = fail(c, "run", r);
				goto out;
			}
		}
		aneshare_f16_to_f32(got, y, oc * seq);
		double max_abs = 0;
		for (size_t i = 0; i < oc * seq; i++) {
			double e = fabs((double)got[i] - (double)ref[i]);
			if (!(e <= max_abs))   /* NaN counts as an error too */
				max_abs = isnan(e) ? INFINITY : e;
		}
		double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
		qsort(times, (size_t)runs, sizeof *times, ex_cmp_double);
		printf("weights #%d: max abs err %.3g, max rel err %.3g (max|ref| %.3g); "
		       "%d runs: min %.1f us, median %.1f us%s\n",
		       set, max_abs, rel, max_ref, runs, times[0], times[runs / 2],
		       rel > TOLERANCE ? "  FAIL" : "");
		if (rel > TOLERANCE)
			ok = false;
	}
	rc = ok ? 0 : 1;
	printf("%s\n", ok ? "OK" : "FAILED: error above tolerance");
out:
	aneshare_surface_release(in);
	aneshare_surface_release(out);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	free(mil);
	free(act);
	free(w);
	free(ref);
	free(got);
	free(times);
	return rc;
}
