/* SPDX-License-Identifier: MIT */
/*
 * What every part of the daemon uses and nothing else: logging, the
 * measuring clock, error-message sizes.  Files that need no more than this
 * (the device worker, the proxy backend, the thread pool) include this
 * header and not daemon.h.
 */
#ifndef ANES_UTIL_H
#define ANES_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "anes_clock.h"

/* Bytes of an error message a backend, a job or the device worker fills
 * (NUL included); longer ones are cut. */
#define ANES_ERRMSG_MAX 512

/* The struct of type whose member is at ptr. */
#define ANES_CONTAINER_OF(ptr, type, member) \
	((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* One line on stderr, "aneshared: " first (log.c).  One write per line, so
 * the lines of concurrent threads do not interleave. */
void anes_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* CLOCK_MONOTONIC in ns, for measurements (run times); rules that depend on
 * time read anes_clock_ns() (anes_clock.h), which tests can replace. */
static inline uint64_t anes_now_ns(void)
{
	return anes_clock_monotonic_ns();
}

/* On a job worker thread of the pool (sched/), around a wait that no
 * client caused (a device worker compiling its programs again after a
 * restart, docs/worker.md): meanwhile a spare thread takes jobs in this
 * one's place (up to 64 at once), and the time waited is not charged as
 * the job's device time (jobsched.h).  On any other thread they do
 * nothing.  Paired. */
void anes_pool_wait_begin(void);
void anes_pool_wait_end(void);

#endif
