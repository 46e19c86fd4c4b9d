/* SPDX-License-Identifier: MIT */
/*
 * The one clock of the daemon's and the library's time rules (spin, lanes,
 * input deadlines, the device worker's watchdog, the device time the fair
 * scheduler charges): a monotonic nanosecond count behind a function
 * pointer that tests replace with a fake, as they replace anes_os_sendmsg.
 * Measurements reported to a client (how long a run took, uptime) do not
 * read it: they report the real time whatever clock the rules see.
 *
 * A fake clock shared between processes (a test and the daemon it starts):
 * in builds with the test hooks (meson -Dtest_hooks=true, off by default),
 * anes_clock_from_env() maps the file named by
 * $ANESHARE_TEST_CLOCK, which holds one anes_test_clock, and points
 * anes_clock_ns at it.  Each read returns now_ns and then adds step_ns to
 * it: with step 0 time stands still; with a step, each read (each poll of a
 * spin) costs that much time, so a spin of B ns ends after B / step polls,
 * and never on a gap while step < ANES_SPIN_GAP_NS.
 */
#ifndef ANES_CLOCK_H
#define ANES_CLOCK_H

#include <stdatomic.h>
#include <stdint.h>

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t anes_clock_monotonic_ns(void);

/* The clock every time rule reads: anes_clock_monotonic_ns unless a test
 * set another (before starting the threads that read it). */
extern uint64_t (*anes_clock_ns)(void);

static inline uint64_t anes_clock_ms(void)
{
	return anes_clock_ns() / 1000000u;
}

/* The layout of a $ANESHARE_TEST_CLOCK file (16 bytes, native endian). */
typedef struct anes_test_clock {
	_Atomic uint64_t now_ns;    /* what the next read returns */
	_Atomic uint64_t step_ns;   /* added to now_ns by every read */
} anes_test_clock;

/* One read of a fake clock: now_ns, then now_ns += step_ns. */
uint64_t anes_test_clock_read(anes_test_clock *k);

/* Builds with the test hooks: if $ANESHARE_TEST_CLOCK names a file of at least
 * sizeof(anes_test_clock) bytes, map it (shared, for the life of the
 * process) and point anes_clock_ns at it.  1 when installed, 0 when the
 * variable is unset or empty (or the build has no test hooks), -errno when the file
 * cannot be opened or mapped, -EINVAL when it is too short. */
int anes_clock_from_env(void);

#endif
