/* SPDX-License-Identifier: MIT */
/*
 * Spinning before sleeping (aneshare_set_spin, client/conn.c spin_read): a
 * blocking call polls for its reply for a while before it sleeps.
 *
 * Nothing here times anything for speed.  What is checked: the settings and
 * their bounds, the default (environment, one CPU), that every kind of wait
 * gives the same numbers with and without spinning (against a reference
 * computed here), and that the spin is bounded: a client waiting for runs
 * much longer than its spin uses a small fraction of the wall time as CPU
 * time, where a spin that ignored its bound would use all of it.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "anes_fp16.h"
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

TestSuite(spin, .fini = teardown, .timeout = 120);

#define SPIN_MAX 100000u

/* How many CPUs this thread may run on (macOS has no CPU affinity: all). */
static int cpus_allowed(void)
{
#ifdef __linux__
	cpu_set_t set;
	cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
	return CPU_COUNT(&set);
#else
	return (int)sysconf(_SC_NPROCESSORS_ONLN);
#endif
}

static void fill_nan(aneshare_surface *s, size_t bytes)
{
	uint16_t *y = aneshare_surface_data(s);
	for (size_t i = 0; i < bytes / 2; i++)
		y[i] = 0x7e00;
}

Test(spin, bounds)
{
	setup();
	aneshare_conn *c = h_connect(&D, "spin-bounds");
	cr_assert_eq(aneshare_set_spin(NULL, 10), -EINVAL);
	cr_assert_eq(aneshare_spin(NULL), 0u);
	cr_assert_eq(aneshare_set_spin(c, 250), 0);
	cr_assert_eq(aneshare_spin(c), 250u);
	cr_assert_eq(aneshare_set_spin(c, SPIN_MAX + 1), -EINVAL);
	cr_assert_eq(aneshare_spin(c), 250u, "a refused value changes nothing");
	cr_assert_eq(aneshare_set_spin(c, SPIN_MAX), 0);
	cr_assert_eq(aneshare_spin(c), SPIN_MAX);
	cr_assert_eq(aneshare_set_spin(c, 0), 0);
	cr_assert_eq(aneshare_spin(c), 0u);
	aneshare_disconnect(c);
}

/* $ANESHARE_SPIN_US when it is a number in range, else 1000; 0 on one CPU.
 * Each criterion test runs in its own process, so the environment and the
 * affinity set here stay here. */
Test(spin, default_from_environment)
{
	setup();
	if (cpus_allowed() < 2)
		cr_skip_test("this test needs a thread that may run on 2 CPUs");
	static const struct {
		const char *env;
		uint32_t want;
	} cases[] = {
		{ NULL, 1000 },   { "250", 250 },     { "0", 0 },         { "100000", 100000 },
		{ "100001", 1000 }, { "abc", 1000 },  { "-5", 1000 },     { "", 1000 },
		{ "12x", 1000 },  { "99999999999", 1000 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		if (cases[i].env)
			setenv("ANESHARE_SPIN_US", cases[i].env, 1);
		else
			unsetenv("ANESHARE_SPIN_US");
		aneshare_conn *c = h_connect(&D, "spin-env");
		cr_assert_eq(aneshare_spin(c), cases[i].want, "ANESHARE_SPIN_US=%s: spin %u, want %u",
		             cases[i].env ? cases[i].env : "(unset)", aneshare_spin(c), cases[i].want);
		aneshare_disconnect(c);
	}
}

Test(spin, none_on_one_cpu)
{
#ifndef __linux__
	cr_skip_test("needs CPU affinity (sched_setaffinity), which macOS does not have");
#else
	setup();
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(sched_getcpu() >= 0 ? sched_getcpu() : 0, &set);
	cr_assert_eq(sched_setaffinity(0, sizeof set, &set), 0);
	setenv("ANESHARE_SPIN_US", "500", 1);
	aneshare_conn *c = h_connect(&D, "spin-one-cpu");
	cr_assert_eq(aneshare_spin(c), 0u, "a thread on one CPU must not spin by default");
	/* and it still works: a real run, checked */
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in, *out;
	h_mm_pairs(c, &mm, &in, &out, 1, 7);
	h_mm_run_check(p, &mm, in, out);
	aneshare_disconnect(c);
#endif
}

/* Every kind of wait, at spins from none to the most, computes the same
 * thing as the reference: blocking runs, a chain, tickets (one in flight:
 * spins; several: sleeps) and a status among them. */
Test(spin, same_results_every_wait)
{
	setup();
	static const uint32_t spins[] = { 0, 1, 50, 1000, SPIN_MAX };
	enum { N = 6 };
	aneshare_conn *c = h_connect(&D, "spin-results");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in[N], *out[N];
	h_mm_pairs(c, &mm, in, out, N, 100);

	for (size_t s = 0; s < sizeof spins / sizeof spins[0]; s++) {
		cr_assert_eq(aneshare_set_spin(c, spins[s]), 0);
		uint64_t seed = 1000 * (s + 1);
		/* blocking, one by one */
		for (int i = 0; i < N; i++)
			h_mm_fill_run_check(p, &mm, in[i], out[i], seed + (uint64_t)i);
		/* a chain */
		aneshare_step steps[N];
		for (int i = 0; i < N; i++) {
			h_mm_fill(&mm, aneshare_surface_data(in[i]), seed + 100 + (uint64_t)i);
			fill_nan(out[i], mm.out_bytes);
			steps[i] = (aneshare_step){ p, 0, &in[i], 1, &out[i], 1 };
		}
		cr_assert_eq(aneshare_run_chain(c, steps, N), 0, "spin %u: chain: %s", spins[s],
		             aneshare_last_error(c));
		for (int i = 0; i < N; i++)
			cr_assert_leq(h_mm_error(&mm, aneshare_surface_data(in[i]), aneshare_surface_data(out[i])),
			              H_MM_TOL, "spin %u: chain step %d", spins[s], i);
		/* one ticket at a time, then N in flight */
		for (int k = 1; k <= N; k += N - 1) {
			uint32_t tk[N];
			for (int i = 0; i < k; i++) {
				h_mm_fill(&mm, aneshare_surface_data(in[i]), seed + 200 + (uint64_t)(k * N + i));
				fill_nan(out[i], mm.out_bytes);
				cr_assert_eq(aneshare_run_submit(p, 0, &in[i], 1, &out[i], 1, &tk[i]), 0);
			}
			aneshare_status *st;
			cr_assert_eq(aneshare_get_status(c, &st), 0);
			aneshare_status_free(st);
			for (int i = k - 1; i >= 0; i--)   /* waited for out of order */
				cr_assert_eq(aneshare_wait(c, tk[i]), 0, "spin %u: ticket %d of %d", spins[s], i, k);
			for (int i = 0; i < k; i++)
				cr_assert_leq(h_mm_error(&mm, aneshare_surface_data(in[i]),
				                         aneshare_surface_data(out[i])),
				              H_MM_TOL, "spin %u: ticket %d of %d", spins[s], i, k);
		}
	}
	aneshare_disconnect(c);
}

#ifdef __linux__
/* n fp16 values in [-1, 1) from seed. */
static void fill_f16(uint16_t *x, size_t n, uint64_t seed)
{
	uint64_t r = seed * 0x9E3779B97F4A7C15ull + 1;
	for (size_t i = 0; i < n; i++) {
		r ^= r << 13;
		r ^= r >> 7;
		r ^= r << 17;
		x[i] = anes_f32_to_f16((float)((double)(r >> 11) / 4503599627370496.0 - 1.0));
	}
}

static double cpu_seconds(void)
{
	struct rusage ru;
	cr_assert_eq(getrusage(RUSAGE_THREAD, &ru), 0);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
	       (double)ru.ru_stime.tv_usec * 1e-6;
}

static double wall_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Runs far longer than the spin: each wait polls for at most the spin (less
 * when the thread was switched out meanwhile), and after a spin that got
 * nothing the next waits sleep straight away.  A spin that ended only with
 * its reply would cost this thread all of the wall time (checked: with the
 * time limit and the gap check of anes_spin_again taken out, this test
 * fails with 115 ms of CPU in 119 ms; it passes with 5-12 ms). */
#endif

Test(spin, bounded_when_replies_are_slow)
{
#ifndef __linux__
	cr_skip_test("needs CPU affinity (sched_setaffinity), which macOS does not have");
#else
	if (cpus_allowed() < 2)
		cr_skip_test("this test needs a thread that may run on 2 CPUs");
	enum { N = 768, RUNS = 12 };
	/* The daemon on one CPU, this thread alone on another: nothing here
	 * takes the spinning thread off its CPU, so only the bound ends a spin. */
	cpu_set_t set, mine;
	cr_assert_eq(sched_getaffinity(0, sizeof mine, &mine), 0);
	int cpus[2], n = 0;
	for (int i = 0; i < CPU_SETSIZE && n < 2; i++)
		if (CPU_ISSET(i, &mine))
			cpus[n++] = i;
	CPU_ZERO(&set);
	CPU_SET(cpus[1], &set);
	cr_assert_eq(sched_setaffinity(0, sizeof set, &set), 0);
	setup();   /* inherits cpus[1] */
	CPU_ZERO(&set);
	CPU_SET(cpus[0], &set);
	cr_assert_eq(sched_setaffinity(0, sizeof set, &set), 0);
	aneshare_conn *c = h_connect(&D, "spin-slow");
	char *mil = h_square_mm_mil(N, "main");
	aneshare_program *p;
	cr_assert_eq(aneshare_program_compile(c, mil, NULL, 0, &p, NULL), 0, "%s", aneshare_last_error(c));
	free(mil);
	size_t bytes = (size_t)N * N * 2;
	aneshare_surface *x = h_surface(c, bytes), *y = h_surface(c, bytes), *z = h_surface(c, bytes);
	uint16_t *xd = aneshare_surface_data(x), *yd = aneshare_surface_data(y), *zd = aneshare_surface_data(z);
	fill_f16(xd, (size_t)N * N, 1);
	fill_f16(yd, (size_t)N * N, 2);
	aneshare_surface *ins[2] = { x, y };
	/* the spin: a tenth of a run, as timed here (sleeping) */
	cr_assert_eq(aneshare_set_spin(c, 0), 0);
	double w0 = wall_seconds();
	cr_assert_eq(aneshare_run(p, 0, ins, 2, &z, 1), 0, "%s", aneshare_last_error(c));
	double one = wall_seconds() - w0;
	if (one < 1e-3)
		cr_skip_test("a run of %.2f ms is too short to tell a bounded spin", one * 1e3);
	uint32_t spin_us = (uint32_t)(one * 1e6 / 10);
	cr_assert_eq(aneshare_set_spin(c, spin_us), 0);

	w0 = wall_seconds();
	double c0 = cpu_seconds();
	for (int i = 0; i < RUNS; i++)
		cr_assert_eq(aneshare_run(p, 0, ins, 2, &z, 1), 0, "%s", aneshare_last_error(c));
	double wall = wall_seconds() - w0, cpu = cpu_seconds() - c0;
	/* At most every wait spins in full (it does not: the penalty), plus
	 * a little per call for packing and reading. */
	double bound = RUNS * (spin_us * 1e-6 + 0.5e-3);
	cr_assert_leq(cpu, bound, "%d waits in %.1f ms with a spin of %u us used %.1f ms of CPU (bound %.1f ms)",
	              RUNS, wall * 1e3, spin_us, cpu * 1e3, bound * 1e3);
	cr_assert_leq(cpu, 0.5 * wall, "the client used %.1f ms of CPU in %.1f ms", cpu * 1e3, wall * 1e3);

	/* and the result is right: spot-check against an fp32 reference */
	for (int k = 0; k < 64; k++) {
		int r = (k * 37) % N, col = (k * 91) % N;
		double ref = 0;
		for (int j = 0; j < N; j++)
			ref += (double)anes_f16_to_f32(xd[r * N + j]) * (double)anes_f16_to_f32(yd[j * N + col]);
		double got = anes_f16_to_f32(zd[r * N + col]);
		cr_assert_leq(fabs(got - ref), 0.02 * sqrt((double)N) + 0.01 * fabs(ref),
		              "z[%d][%d] = %g, want %g", r, col, got, ref);
	}
	aneshare_disconnect(c);
#endif
}
