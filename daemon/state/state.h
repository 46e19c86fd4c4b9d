/* SPDX-License-Identifier: MIT */
/*
 * States (state/state.c; docs/protocol.md, "States"): the memory a
 * function with state<...> inputs (read_state, coreml_update_state) reads
 * and writes in place, kept by the daemon between runs for the connection
 * that made it with state.create, as Core ML's MLState is kept by the app.
 *
 * A state belongs to one function of one program content (its key): it
 * fits every handle to that program.  Its memory is one shared-memory
 * surface the daemon makes for it (a memfd, or an IOSurface on macOS), so
 * that a device worker maps it as it maps a client's surfaces; the state's
 * tensors lie in it one after the other, each at a multiple of 64 bytes.
 * It is charged as a surface of its size (every surface limit, status).
 *
 * Order: runs and resets naming a state happen one at a time, in the order
 * the connection sent them.  Each job (a run, a chain, a reset) claims the
 * distinct states it names when it is admitted (loop); a job whose claims
 * are all first in their states' queues runs, the others wait outside the
 * pool until the claims before them are released (at their job's done()).
 * Claims are taken in arrival order on the loop, so no two jobs wait for
 * each other.  A lane thread runs a request only when none of its states
 * has a claim: nothing adds one while the lane holds the read side.
 *
 * Threading: everything here runs on the loop thread, except
 * anes_state_claimed, anes_state_lost and anes_state_set_lost (any thread).
 */
#ifndef ANES_STATE_H
#define ANES_STATE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "daemon.h"

typedef struct anes_state anes_state;
typedef struct anes_state_claim anes_state_claim;

/* What a job holds while it waits for its states, and for events (a
 * parked run, state/event.h), in the job's memory. */
typedef struct anes_state_wait {
	anes_job *job;          /* submitted to pool once nothing blocks it */
	anes_pool *pool;
	/* Its claims not yet first in their queues, and its event waits not
	 * met; any thread may lower it (anes_wait_unblock), the loop raises
	 * it.  A submitter that adds blockers from other threads holds one of
	 * its own while it does (it starts at 1) and lets go last. */
	_Atomic uint32_t blocked;
} anes_state_wait;

/* Any thread: one blocker of w is gone; the last submits the job (on a
 * pool or lane thread: anes_pool_ready, which may run it right there). */
void anes_wait_unblock(anes_state_wait *w);

/* One job's claim on one state: a place in the state's queue. */
struct anes_state_claim {
	anes_state *st;         /* referenced by the job */
	anes_state_claim *next; /* st's waiting claims, in arrival order */
	anes_state_wait *wait;
};

struct anes_state {
	unsigned refs;          /* the connection's table + jobs (loop) */
	anes_surface *mem;      /* owned: the memory, zero-filled at creation */
	uint8_t key[ANES_KEY_SIZE];   /* the program content it was made for ... */
	uint32_t fn;            /* ... and the function index */
	uint32_t n;             /* tensors: the function's n_states */
	uint64_t *off;          /* n offsets into mem (owned) */
	uint64_t bytes;         /* mem's size */
	atomic_bool lost;       /* a run naming it failed: its contents are unknown */
	_Atomic uint32_t claims;        /* claims taken and not released (loop writes) */
	anes_state_claim *head, *tail;  /* waiting claims (behind the first) */
};

/* The methods (docs/protocol.md, "States"): state.create {program,
 * function?} -> {id, size}; state.reset {id} -> {}; state.release {id}
 * -> {}.  Same shape as methods.c's handlers. */
void anes_m_state_create(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);
void anes_m_state_reset(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);
void anes_m_state_release(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);

anes_state *anes_state_ref(anes_state *st);
/* Accepts NULL.  The last reference frees the memory (uncharged). */
void anes_state_unref(anes_state *st);
/* Connection teardown: drop the table's references. */
void anes_states_drop_all(anes_conn *c);

/* Whether st was made for function fn of program e. */
bool anes_state_fits(const anes_state *st, const anes_centry *e, uint32_t fn);

/* Loop: claim st for the job that waits in w (one claim per distinct state
 * a job names; c[i] lives as long as the job).  Increments w->blocked when
 * the claim is not first; the caller submits the job itself when, after
 * all its claims, w->blocked is 0. */
void anes_state_enqueue(anes_state *st, anes_state_claim *c, anes_state_wait *w);
/* Loop, from the job's done(): release its n claims.  A job that was
 * waiting behind one of them and now waits for nothing is submitted to its
 * pool (a pool that is stopping ends it as cancelled: worker.c). */
void anes_state_release_claims(anes_state_claim *c, uint32_t n);
/* Any thread: whether a job holds or waits for st (a lane leaves such a
 * request to the loop). */
static inline bool anes_state_claimed(const anes_state *st)
{
	return atomic_load_explicit(&st->claims, memory_order_acquire) != 0;
}

/* The pointer to state tensor i in the daemon's mapping. */
static inline void *anes_state_ptr(const anes_state *st, uint32_t i)
{
	return (char *)st->mem->map + st->off[i];
}

#endif
