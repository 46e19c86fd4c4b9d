/* SPDX-License-Identifier: MIT */
/*
 * Spinning before sleeping (aneshare_set_spin, client/conn.c spin_read): a
 * blocking call polls for its reply for a while before it sleeps.
 *
 * Nothing here times anything for speed.  What is checked: the settings and
 * their bounds, the default (environment, one CPU), that every kind of wait
 * gives the same numbers with and without spinning (against a reference
 * computed here), and that the spin keeps its rules (proto/anes_spin.h)
 * for a client whose replies are slow: counted in reads of a fake clock
 * that only the client reads, against a fake daemon that answers by it.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "anes_clock.h"
#include "anes_spin.h"
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

/* ---- the spin's bound, on a fake clock ------------------------------------ */

/* A fake daemon on a thread that answers hello, then each status request
 * when the client's clock (h_fake_client_clock) reads release_at or later:
 * so a reply comes after the spin's bound, or at a chosen poll of it,
 * whatever the machine's load.  Its status answers count runs 1, 2, ... */
typedef struct slow_fake {
	int listen_fd;
	anes_test_clock *k;
	_Atomic uint64_t release_at;   /* 0: answer at once */
	int failures;                  /* requests it did not expect, clocks that never got there */
} slow_fake;

static void fake_pack_status(anes_frame *f, uint32_t msgid, uint64_t n)
{
	anes_pack_result(&f->pk, msgid, 10);
	anes_pack_str(&f->pk, "version");
	anes_pack_str(&f->pk, "9.9");
	anes_pack_str(&f->pk, "backend");
	anes_pack_str(&f->pk, "cpu");
	static const char *const zero[] = { "uptime_ms", "clients", "surfaces", "surface_bytes",
		                            "compiles", "cache_hits" };
	for (size_t i = 0; i < sizeof zero / sizeof zero[0]; i++) {
		anes_pack_str(&f->pk, zero[i]);
		msgpack_pack_uint64(&f->pk, 0);
	}
	anes_pack_str(&f->pk, "runs");
	msgpack_pack_uint64(&f->pk, n);
	anes_pack_str(&f->pk, "programs");
	msgpack_pack_array(&f->pk, 0);
}

static void *slow_fake_main(void *arg)
{
	slow_fake *fk = arg;
	h_rconn rc;
	if (!h_fake_accept(fk->listen_fd, &rc)) {
		fk->failures++;
		return NULL;
	}
	for (uint64_t n = 0;; n++) {
		uint32_t msgid, id;
		char method[16];
		if (!h_fake_next(&rc, 30000, &msgid, method, sizeof method, &id))
			break;   /* the client hung up */
		if (strcmp(method, n ? "status" : "hello")) {
			fk->failures++;
			break;
		}
		uint64_t at = atomic_load(&fk->release_at);
		int64_t deadline = tu_now_ms() + 10000 * h_slow();
		while (n && at && atomic_load(&fk->k->now_ns) < at) {
			if (tu_now_ms() > deadline) {
				fk->failures++;   /* the client stopped polling before the bound */
				break;
			}
			tu_pause_ms(1);
		}
		if (n) {
			anes_frame f;
			anes_frame_init(&f);
			fake_pack_status(&f, msgid, n);
			h_fake_send(&rc.io, &f, NULL, 0);
		} else {
			h_fake_hello(&rc.io, msgid);
		}
	}
	h_rconn_close(&rc);
	return NULL;
}

#define SLOW_SPIN_US 100u
#define SLOW_STEP_NS 1000u   /* a slow phase: each read of the clock is 1 us */
#define SLOW_READS (1u + SLOW_SPIN_US * 1000u / SLOW_STEP_NS)   /* a spin that runs out */
#define FAST_READS 10u       /* a fast phase: the reply comes at the 10th read, 1 ns each */

/* One status call in a phase (fast: the reply comes while the spin polls;
 * slow: only after the spin's bound).  The rules of proto/anes_spin.h, on
 * the local model m, say whether this wait spins; the client's clock says
 * whether it did, and for how many polls.  Whether it spun. */
static bool slow_call(aneshare_conn *c, slow_fake *fk, anes_spin *m, bool fast, uint64_t n)
{
	anes_spin_run run;
	bool spins = anes_spin_start(m, SLOW_SPIN_US, &run) == 1;
	atomic_store(&fk->k->step_ns, fast ? 1 : SLOW_STEP_NS);
	uint64_t t0 = atomic_load(&fk->k->now_ns);
	uint64_t reads = fast ? FAST_READS : SLOW_READS;
	uint64_t step = fast ? 1 : SLOW_STEP_NS;
	atomic_store(&fk->release_at, spins ? t0 + reads * step : 0);
	aneshare_status *st;
	cr_assert_eq(aneshare_get_status(c, &st), 0, "call %llu: %s", (unsigned long long)n,
	             aneshare_last_error(c));
	cr_assert_eq(st->runs, n, "call %llu got the answer to %llu", (unsigned long long)n,
	             (unsigned long long)st->runs);
	aneshare_status_free(st);
	uint64_t got = (atomic_load(&fk->k->now_ns) - t0) / step;
	if (!spins)
		cr_assert_eq(got, 0, "call %llu: the rules say it sleeps at once; it polled %llu times",
		             (unsigned long long)n, (unsigned long long)got);
	else if (fast)
		cr_assert(got >= FAST_READS && got < SLOW_SPIN_US * 1000u,
		          "call %llu: the spin read the clock %llu times, its reply came at the %u th",
		          (unsigned long long)n, (unsigned long long)got, FAST_READS);
	else
		cr_assert_eq(got, SLOW_READS, "call %llu: the spin read the clock %llu times, the bound "
		             "is at %u reads", (unsigned long long)n, (unsigned long long)got, SLOW_READS);
	if (spins) {
		run.gap = false;
		anes_spin_end(m, &run, fast);
	}
	return spins;
}

/* A wait whose reply comes after the spin's bound polls until the bound
 * and no longer (exactly spin / step reads of a fake clock that each read
 * moves by step), then sleeps; after two such waits in a row the next
 * 1, 2, 4, 8 waits do not poll at all; replies that come while the spin
 * polls are caught by it and halve that penalty.  The client's clock is
 * fake (h_fake_client_clock) and the fake daemon answers by it, so every
 * count is exact on a loaded machine and on one CPU. */
Test(spin, bounded_when_replies_are_slow)
{
	slow_fake fk = { .k = h_fake_client_clock() };
	char dir[] = "/tmp/anes-spin-XXXXXX", path[64];
	cr_assert(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/fake.sock", dir);
	fk.listen_fd = h_fake_listen(path);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, slow_fake_main, &fk), 0);

	aneshare_conn *c;
	cr_assert_eq(aneshare_connect(path, "spin-slow", &c), 0);   /* time stands still: a hit */
	cr_assert_eq(aneshare_set_spin(c, SLOW_SPIN_US), 0);        /* and a fresh history */
	anes_spin m = { 0 };
	uint64_t n = 0;
	static const struct {
		bool fast;
		unsigned calls, spins;   /* spins: what the rules say */
	} phases[] = {
		{ false, 12, 5 },   /* spin, spin, skip 1, spin, skip 2, spin, skip 4, spin */
		{ true, 12, 4 },    /* skip the 8 left, then 4 hits: the penalty back to 0 */
		{ false, 6, 3 },    /* spin, spin, skip 1, spin, skip 2 */
	};
	for (size_t p = 0; p < sizeof phases / sizeof phases[0]; p++) {
		unsigned spins = 0;
		for (unsigned i = 0; i < phases[p].calls; i++)
			spins += slow_call(c, &fk, &m, phases[p].fast, ++n);
		cr_assert_eq(spins, phases[p].spins, "phase %zu: %u of %u waits spun", p, spins,
		             phases[p].calls);
	}
	aneshare_disconnect(c);
	pthread_join(th, NULL);
	cr_assert_eq(fk.failures, 0, "the fake daemon saw something unexpected");
	close(fk.listen_fd);
	unlink(path);
	rmdir(dir);
}
