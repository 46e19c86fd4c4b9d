/* SPDX-License-Identifier: MIT */
/* The injectable clock (anes_clock.h). */
#include <time.h>

#include "anes_clock.h"

uint64_t anes_clock_monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t (*anes_clock_ns)(void) = anes_clock_monotonic_ns;
