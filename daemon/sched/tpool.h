/* SPDX-License-Identifier: MIT */
/*
 * A pool of threads that take tasks in the fair scheduler's order
 * (jobsched.h) and measure the device time each one takes.  Generic: it
 * knows nothing of libuv, the server or the wire.  Two users:
 *   - the daemon's job pool (worker.c): a task's end() puts the job on the
 *     list the loop delivers;
 *   - the device worker process (devworker.c): a task answers the daemon
 *     itself, end() frees it.
 *
 * Interface:
 *   anes_tpool_new      start n threads
 *   anes_tpool_submit   queue a task (any thread)
 *   anes_tpool_set_class  a flow's scheduling class, under the pool's lock
 *   anes_tpool_stop     queued tasks end unrun, running ones finish, join
 *   anes_tpool_free     after stop
 */
#ifndef ANES_TPOOL_H
#define ANES_TPOOL_H

#include <stdbool.h>
#include <stdint.h>

#include "jobsched.h"

typedef struct anes_tpool anes_tpool;
typedef struct anes_task anes_task;

struct anes_task {
	/* Set by the submitter: the client's flow, the estimated device time,
	 * compile or run.  Zero: the pool's own flow (first in, first out), a
	 * run of unknown cost. */
	anes_sitem si;
	/* On a pool thread: the work.  Its time is charged to si.flow. */
	void (*run)(anes_task *t);
	/* Exactly once per submit: on the pool thread right after run()
	 * (ran = true), or for a task that never runs (ran = false) on the
	 * thread of anes_tpool_submit (the pool is stopped) or of
	 * anes_tpool_stop (it was queued).  Never with the pool's lock held;
	 * may free t. */
	void (*end)(anes_task *t, bool ran);
};

/* n_threads >= 1 threads; slice_ns: the scheduler's slice (jobsched.h).
 * 0, -EINVAL, -ENOMEM, or the -errno of pthread_create (no thread left
 * running).  *ret is owned by the caller: anes_tpool_stop, then
 * anes_tpool_free. */
int anes_tpool_new(unsigned n_threads, uint64_t slice_ns, anes_tpool **ret);
/* t (borrowed until its end()) is queued; after anes_tpool_stop it ends
 * at once, unrun. */
void anes_tpool_submit(anes_tpool *p, anes_task *t);
/* The scheduling class of flow f from now on. */
void anes_tpool_set_class(anes_tpool *p, anes_sflow *f, anes_sclass sc);
/* Queued tasks end unrun (on this thread), running ones finish, the
 * threads are joined.  Idempotent. */
void anes_tpool_stop(anes_tpool *p);
/* After anes_tpool_stop.  NULL is a no-op. */
void anes_tpool_free(anes_tpool *p);

#endif
