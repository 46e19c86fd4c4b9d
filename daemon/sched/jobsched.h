/* SPDX-License-Identifier: MIT */
/*
 * The fair scheduler of device work (docs/protocol.md, "Scheduling").
 *
 * Each client process (tenant.h) has a flow: its own queues of compiles
 * and runs.  Flows share the workers by start-time fair queueing on
 * device time: a flow's finish tag grows by the device time its jobs take
 * (an estimate when a job starts, the measured time once it ends), and the
 * flow with the smallest tag, max(V, finish), goes next.  V, the virtual
 * time, is the smallest tag of the flows that had work when the last job
 * started, so a flow that was idle starts at V: it banks no credit, and it
 * goes before a flow with a backlog, whose tag is ahead of V by the jobs it
 * had.  Ties go to the flow served longest ago.  Share is device time, not request
 * count.
 *
 * Compiles go first: a flow's compiles go before its runs, and a flow with
 * a compile queued goes before every other flow while its tag is within
 * one slice of V (a client that has not had more than its share).  A client
 * that only compiles pays for its compiles in the same device time, so it
 * cannot keep the others' runs out beyond that.
 *
 * Pure data structure: no locks, no clock.  The caller (worker.c) holds its
 * mutex around every call and passes the measured times in.
 */
#ifndef ANES_JOBSCHED_H
#define ANES_JOBSCHED_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct anes_sflow anes_sflow;

/* One unit of work, embedded in the job. */
typedef struct anes_sitem {
	struct anes_sitem *next;
	anes_sflow *flow;      /* borrowed, must outlive the item; NULL: the scheduler's own */
	uint64_t cost_ns;      /* estimated device time (0: unknown) */
	bool compile;
	/* Set by anes_sched_pop: what was charged for it (scaled). */
	uint64_t charged;
} anes_sitem;

/* Scheduling classes: the share of device time goes as the weight. */
typedef enum anes_sclass {
	ANES_SCLASS_BACKGROUND,
	ANES_SCLASS_DEFAULT,
	ANES_SCLASS_INTERACTIVE,
	ANES_SCLASS_N
} anes_sclass;

struct anes_sflow {
	anes_sflow *prev, *next;        /* the scheduler's active list */
	bool active;                    /* has items queued */
	anes_sclass sclass;
	anes_sitem *runs, **runs_tail;
	anes_sitem *comps, **comps_tail;
	uint64_t finish;                /* virtual finish tag (scaled device ns) */
	_Atomic uint32_t queued;        /* items queued (read by status) */
	_Atomic uint32_t running;       /* popped, not done */
	_Atomic uint64_t device_ns;     /* measured device time of its finished items */
};

typedef struct anes_sched {
	anes_sflow *head, *tail;        /* active flows, served last at the tail */
	anes_sflow own;                 /* items without a flow */
	uint64_t vtime;                 /* V */
	uint64_t slice_ns;              /* compiles' priority bound */
	uint32_t queued;
} anes_sched;

void anes_sched_init(anes_sched *s, uint64_t slice_ns);
/* A flow's state before first use (class default). */
void anes_sflow_init(anes_sflow *f);
/* Relative weight of a class (default 2: background gets half its share,
 * interactive twice). */
unsigned anes_sclass_weight(anes_sclass c);
/* "interactive", "default", "background"; -1 if none of them. */
int anes_sclass_parse(const char *name, uint32_t len);
const char *anes_sclass_name(anes_sclass c);

void anes_sched_push(anes_sched *s, anes_sitem *it);
/* The next item to start (NULL: none queued); charges its estimate. */
anes_sitem *anes_sched_pop(anes_sched *s);
/* it (popped) finished after ns of device time: charge the difference to
 * the estimate. */
void anes_sched_done(anes_sched *s, anes_sitem *it, uint64_t ns);
/* Take out every queued item, in no particular order (shutdown): returns a
 * list linked through next. */
anes_sitem *anes_sched_drain(anes_sched *s);

static inline bool anes_sched_empty(const anes_sched *s)
{
	return s->queued == 0;
}

#endif
