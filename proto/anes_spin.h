/* SPDX-License-Identifier: MIT */
/*
 * Spin, then sleep: the polling policy shared by libaneshare's blocking
 * waits (client/conn.c, spin_read) and the daemon's lane threads
 * (daemon/conn.c, lane_spin).  docs/performance.md, "Waiting for the reply".
 *
 * A thread that sleeps on an otherwise idle CPU takes long to wake (tens of
 * microseconds on a VM whose idle vCPUs halt), and on a VM the host may run
 * other guests on that CPU meanwhile and leave its caches cold.  When the
 * awaited bytes are likely to come soon, the waiter polls first, for at
 * most a bound, with these rules:
 *  - after each poll that found nothing, anything else runnable on this CPU
 *    goes first (sched_yield);
 *  - the spin fails when two polls are ANES_SPIN_GAP_NS or more apart (a
 *    gap: the thread was off its CPU, because another thread here wanted
 *    it or the hypervisor ran something else) and the gaps so far add up
 *    to more than half the time the spin has lasted: the CPU is wanted.
 *    A gap in a spin that has run for longer than twice the gap lets it go
 *    on: a thread that wakes for a moment beside the spinner (a timer, a
 *    napping helper) used to end its spin at each wake-up, and the reply
 *    then met a sleeping thread (tests/test_proto.c, spin_rules; a probe
 *    client with a thread napping 200 us at a time on its vCPU, four
 *    rounds of 15 s: the worst 200-chain window's time outside the
 *    daemon's steps 22-30 us against 83-84 us; the bench, which has no
 *    such thread, unchanged).  (Counting only switches to other
 *    threads, from the thread's involuntary context switch count, was
 *    tried: on the shared VM of docs/performance.md the one-core round
 *    trip got worse, 1.17-1.19 against 1.10-1.11 of the ping-pong in five
 *    interleaved pairs, and the chain no better);
 *  - it fails when nothing came within the bound;
 *  - after two spins in a row that failed at the bound the next 1, 2, 4
 *    ... ANES_SPIN_PENALTY_MAX waits do not spin, and a spin that got
 *    something halves that number.  A spin that ended on a gap does not
 *    count: it says the CPU was wanted, not that replies come late, and it
 *    ended as soon as the thread ran again.  One failure after a success costs nothing either: a
 *    client that sends bursts fails the spin once at the end of each, and
 *    a penalty then would skip the spin at the start of the next burst,
 *    where it pays.  Measured in interleaved bench pairs (docs/performance.md),
 *    the lane answers that skipped the spin per chain section: about 250
 *    with a penalty after every failure, 13-145 after two in a row, 8-26
 *    with gaps not counting; the chain's time outside the daemon's steps
 *    across cores went down with each (last step: 18-64 µs -> 19-43 µs).
 * So a waiter whose bytes come late soon stops spinning except for an
 * occasional probe, and one on a busy CPU polls once per wait.
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
