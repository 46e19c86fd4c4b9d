/* SPDX-License-Identifier: MIT */
/*
 * The one clock of the daemon's and the library's time rules (spin, lanes,
 * input deadlines): a monotonic nanosecond count behind a function pointer
 * that tests replace with a fake, as they replace anes_os_sendmsg.
 */
#ifndef ANES_CLOCK_H
#define ANES_CLOCK_H

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

#endif
