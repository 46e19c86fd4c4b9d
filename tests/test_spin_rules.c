/* SPDX-License-Identifier: MIT */
/* The spin's rules (proto/anes_spin.c) on a fake clock, and the fake clock
 * of another process (proto/anes_clock.h). */
#include "anes_clock.h"
#include "anes_proto.h"
#include "anes_spin.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* The spin reads a fake clock (anes_clock_ns): every read is one poll and
 * advances it by fk_step; the read numbered fk_jump_at (0: the one in
 * anes_spin_start) comes fk_jump later still, as if the thread had been off
 * its CPU that long.  Nothing here depends on the machine's time. */
static uint64_t fk_now, fk_step, fk_jump;
static long fk_reads, fk_jump_at;

static uint64_t fake_now_ns(void)
{
	if (fk_reads == fk_jump_at)
		fk_now += fk_jump;
	fk_reads++;
	uint64_t t = fk_now;
	fk_now += fk_step;
	return t;
}

static void fake_clock(uint64_t step_ns)
{
	fk_now = 5000000000u;
	fk_step = step_ns;
	fk_reads = 0;
	fk_jump_at = -1;
	fk_jump = 0;
	anes_clock_ns = fake_now_ns;
}

static void real_clock(void)
{
	anes_clock_ns = anes_clock_monotonic_ns;
}

TestSuite(spin_rules, .fini = real_clock, .timeout = 10);

/* One spin of spin_us on the fake clock that finds nothing: how many polls
 * it made after the first (anes_spin_again returned true). */
static long spin_polls(uint32_t spin_us, anes_spin_run *run)
{
	anes_spin s = { 0 };
	cr_assert_eq(anes_spin_start(&s, spin_us, run), 1);
	long polls = 0;
	while (anes_spin_again(run))
		polls++;
	return polls;
}

/* Polls 1 us apart: the spin ends at its bound, on the first poll at or
 * past it, and not on a gap. */
Test(spin_rules, ends_at_the_bound)
{
	fake_clock(1000);
	anes_spin_run run;
	cr_assert_eq(spin_polls(100, &run), 99);
	cr_assert(!run.gap);
	cr_assert_eq(run.gap_ns, 0u);
	cr_assert_eq(fk_reads, 101, "one read to start, one per poll");
	fake_clock(0);   /* time stands still: only a gap or the bound ends a spin */
	fk_jump_at = 5000;
	fk_jump = 100000;   /* then 100 us at once: a gap, the whole spin */
	cr_assert_eq(spin_polls(1000, &run), 4999);
	cr_assert(run.gap);
}

/* A thread held off its polls for 60 us, 1 ms into a 3 ms spin: the spin
 * goes on to its bound (the CPU was taken for a moment, not wanted for
 * long; a thread waking now and then beside a client used to end its spin
 * each time). */
Test(spin_rules, a_short_gap_does_not_end_the_spin)
{
	fake_clock(1000);
	fk_jump_at = 1000;
	fk_jump = 60000;
	anes_spin_run run;
	long polls = spin_polls(3000, &run);
	cr_assert(!run.gap, "a 60 us gap ended a 3 ms spin after %ld polls", polls);
	cr_assert_eq(run.gap_ns, 61000u, "the gap: 60 us held plus the poll's own 1 us");
	cr_assert_eq(polls, 3000 - 60 - 1, "the spin lasted to its bound");
}

/* Held for 8 ms, 1 ms into a 10 ms spin: the CPU was wanted more than the
 * spin had it, and the spin ends on a gap, right there, not at its bound. */
Test(spin_rules, a_long_gap_ends_the_spin)
{
	fake_clock(1000);
	fk_jump_at = 1000;
	fk_jump = 8000000;
	anes_spin_run run;
	long polls = spin_polls(10000, &run);
	cr_assert(run.gap);
	cr_assert_eq(polls, 999, "it ended on the poll after the gap");
	cr_assert_eq(run.gap_ns, 8001000u);
}

/* A gap is two polls ANES_SPIN_GAP_NS or more apart; one less is not. */
Test(spin_rules, the_gap_threshold)
{
	anes_spin_run run;
	fake_clock(ANES_SPIN_GAP_NS - 1);
	spin_polls(1000, &run);
	cr_assert(!run.gap);
	cr_assert_eq(run.gap_ns, 0u);
	fake_clock(ANES_SPIN_GAP_NS);   /* every poll a gap: the first ends it */
	cr_assert_eq(spin_polls(1000, &run), 0);
	cr_assert(run.gap);
	cr_assert_eq(run.gap_ns, ANES_SPIN_GAP_NS);
}

/* Gaps that each are small add up: 100 polls 1 us apart, then 40 us gaps
 * with 20 polls between them.  After k gaps the spin has lasted
 * 80 + 61 k us, 41 k of them in gaps (each with its poll's own 1 us); it
 * ends on the gap that makes them more than half: k = 4 (164 of 324 us). */
Test(spin_rules, gaps_add_up)
{
	fake_clock(1000);
	anes_spin s = { 0 };
	anes_spin_run run;
	cr_assert_eq(anes_spin_start(&s, 10000, &run), 1);
	int gaps = 0;
	bool more = true;
	for (long i = 1; more; i++) {
		if (i > 100 && (i - 100) % 21 == 1) {
			fk_now += 40000;
			gaps++;
		}
		more = anes_spin_again(&run);
		cr_assert(i < 1000, "the spin never ended");
	}
	cr_assert(run.gap);
	cr_assert_eq(gaps, 4);
	cr_assert_eq(run.gap_ns, 4u * 41000u);
}

/* The fake clock of another process (anes_test_clock): each read returns
 * now and adds the step. */
Test(spin_rules, test_clock_reads)
{
	anes_test_clock k;
	atomic_init(&k.now_ns, 7);
	atomic_init(&k.step_ns, 0);
	cr_assert_eq(anes_test_clock_read(&k), 7u);
	cr_assert_eq(anes_test_clock_read(&k), 7u, "step 0: time stands still");
	atomic_store(&k.step_ns, 5);
	cr_assert_eq(anes_test_clock_read(&k), 7u);
	cr_assert_eq(anes_test_clock_read(&k), 12u);
	cr_assert_eq(atomic_load(&k.now_ns), 17u);
}

/* Ends at the bound, or a hit, or a gap, by hand. */
static void spin_once(anes_spin *s, bool got, bool gap)
{
	anes_spin_run run;
	cr_assert_eq(anes_spin_start(s, 100, &run), 1);
	run.gap = gap;
	anes_spin_end(s, &run, got);
}

/* Two failures at the bound in a row start the penalty (1, then 2, 4 ...
 * skipped waits); a gap does not count; a hit halves it. */
Test(spin_rules, penalty)
{
	anes_spin s = { 0 };
	anes_spin_run run;
	spin_once(&s, false, false);   /* one miss after hits: nothing */
	cr_assert_eq(s.skip, 0);
	spin_once(&s, false, true);    /* a gap: not a miss */
	cr_assert_eq(s.skip, 0);
	spin_once(&s, false, false);   /* the second miss in a row */
	cr_assert_eq(s.skip, 1);
	cr_assert_eq(anes_spin_start(&s, 100, &run), -EAGAIN);
	spin_once(&s, false, false);
	cr_assert_eq(s.skip, 2);
	cr_assert_eq(anes_spin_start(&s, 100, &run), -EAGAIN);
	cr_assert_eq(anes_spin_start(&s, 100, &run), -EAGAIN);
	spin_once(&s, true, false);    /* a hit: the penalty halves, the misses restart */
	cr_assert_eq(s.penalty, 1);
	cr_assert_eq(s.misses, 0);
	cr_assert_eq(anes_spin_start(&s, 0, &run), 0, "spin 0: no spin");
}
