/* SPDX-License-Identifier: MIT */
/*
 * Spin, then sleep: the polling policy shared by libaneshare's blocking
 * waits (client/conn.c, spin_read) and the daemon's lane threads
 * (daemon/server/lanes.c, lane_spin); docs/design.md, "The spin".
 *
 * A waiter whose bytes are likely to come soon polls first, for at most a
 * bound, with these rules:
 *  - after each poll that found nothing, anything else runnable on this CPU
 *    goes first (sched_yield), then the clock is read (anes_clock_ns, which
 *    tests replace: proto/anes_clock.h);
 *  - two polls ANES_SPIN_GAP_NS or more apart are a gap (the thread was off
 *    its CPU); the spin fails when the gaps add up to more than half the
 *    time it has lasted (the CPU is wanted), and when nothing came within
 *    the bound;
 *  - after two spins in a row that failed at the bound, the next 1, 2, 4
 *    ... ANES_SPIN_PENALTY_MAX waits do not spin; a spin that got its bytes
 *    halves that number and restarts the count of failures; a spin that
 *    ended on a gap counts neither way (the CPU was wanted: that says
 *    nothing about when replies come).
 * So a waiter whose bytes come late soon stops spinning except for an
 * occasional probe, and one on a busy CPU polls about once per wait.
 * tests/test_spin_rules.c checks each rule on a fake clock.
 */
#ifndef ANES_SPIN_H
#define ANES_SPIN_H

#include <stdbool.h>
#include <stdint.h>

#define ANES_SPIN_GAP_NS 30000u       /* two polls this far apart: maybe switched out */
#define ANES_SPIN_PENALTY_MAX 64u

/* One waiter's history (zero-initialised). */
typedef struct anes_spin {
	uint32_t penalty;   /* waits that do not spin after the next failed spin */
	uint32_t skip;      /* waits left that do not spin */
	uint32_t misses;    /* spins in a row that failed */
} anes_spin;

/* One spin in progress. */
typedef struct anes_spin_run {
	uint64_t start_ns, last_ns, limit_ns;
	uint64_t gap_ns;    /* time between polls ANES_SPIN_GAP_NS or more apart */
	bool gap;           /* anes_spin_again ended it on a gap, not at the bound */
} anes_spin_run;

/* Whether this wait spins (for at most spin_us).  1: it does, *run is set
 * up; 0: it does not, spin_us is 0; -EAGAIN: it does not because of the
 * penalty, and one skip is used up. */
int anes_spin_start(anes_spin *s, uint32_t spin_us, anes_spin_run *run);

/* After a poll that found nothing: let others run, then whether to poll
 * again (false: the spin failed, sleep). */
bool anes_spin_again(anes_spin_run *run);

/* The spin is over: got is whether it found what it waited for. */
void anes_spin_end(anes_spin *s, const anes_spin_run *run, bool got);

#endif
