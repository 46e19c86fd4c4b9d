/* SPDX-License-Identifier: MIT */
/* Spin, then sleep (anes_spin.h). */
#include <errno.h>
#include <sched.h>

#include "anes_clock.h"
#include "anes_spin.h"

static uint64_t now_ns(void)
{
	return anes_clock_ns();
}

int anes_spin_start(anes_spin *s, uint32_t spin_us, anes_spin_run *run)
{
	if (spin_us == 0)
		return 0;
	if (s->skip > 0) {
		s->skip--;
		return -EAGAIN;
	}
	run->start_ns = run->last_ns = now_ns();
	run->limit_ns = (uint64_t)spin_us * 1000u;
	run->gap = false;
	run->gap_ns = 0;
	return 1;
}

bool anes_spin_again(anes_spin_run *run)
{
	sched_yield();
	uint64_t t = now_ns();
	uint64_t d = t - run->last_ns;
	if (d >= ANES_SPIN_GAP_NS) {
		run->gap_ns += d;
		if (2 * run->gap_ns > t - run->start_ns) {
			run->gap = true;
			return false;
		}
	}
	if (t - run->start_ns >= run->limit_ns)
		return false;
	run->last_ns = t;
	return true;
}

void anes_spin_end(anes_spin *s, const anes_spin_run *run, bool got)
{
	if (got) {
		s->penalty /= 2;
		s->misses = 0;
		return;
	}
	if (run->gap)
		return;   /* the CPU was wanted: nothing about when replies come */
	if (++s->misses < 2)
		return;   /* one miss after hits: a pause between bursts */
	s->penalty = s->penalty == 0                        ? 1
	             : s->penalty >= ANES_SPIN_PENALTY_MAX / 2 ? ANES_SPIN_PENALTY_MAX
	                                                       : s->penalty * 2;
	s->skip = s->penalty;
}
