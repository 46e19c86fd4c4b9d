/* SPDX-License-Identifier: MIT */
/*
 * Events (state/event.c; docs/protocol.md, "Events"): a 64-bit timeline
 * the daemon keeps, that only grows.  Connections hold handles to it (an
 * owner handle from event.create, wait-only ones from event.import); runs
 * wait for it and raise it (run/run.c), event.wait waits for it.
 *
 * Closing: an event closes when its owner handle is gone and no run that
 * signals it is pending (`signalers` reaches 0).  A closed event keeps its
 * value; waits for higher values fail (event_closed).
 *
 * Locking rule (docs/design.md, "Events"):
 *   - ev->mu guards value, closed, signalers and the list of waiters.  It
 *     is a leaf lock: nothing else is taken while it is held, and a
 *     waiter's wake() is called after it is released.
 *   - Raising (anes_event_raise) may happen on any thread: the loop
 *     (event.signal), a lane thread (event.signal, a lane run's signals),
 *     a job worker (a run's signals).  Everything else here is the loop's:
 *     handles, the connection's table, references (refs), registering and
 *     cancelling waiters, closing, the daemon's list of events.
 *   - A thread that raises holds a reference through a handle in a table
 *     the loop does not change meanwhile (a lane owns its connection's read
 *     side) or through a run job (referenced until the job's done(), on the
 *     loop): refs need no atomics.
 *   - A waiter taken off the list is the taker's: exactly one wake() per
 *     waiter registered as pending, from whoever took it (a raise, a close,
 *     a cancel, the shutdown).
 */
#ifndef ANES_EVENT_H
#define ANES_EVENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "daemon.h"

typedef struct anes_event anes_event;
typedef struct anes_evwaiter anes_evwaiter;
typedef struct anes_evhandle anes_evhandle;   /* struct anes_evhandle in daemon.h too */

/* How a waiter ended (set before its wake()). */
enum {
	ANES_EVW_PENDING = 0,
	ANES_EVW_MET,        /* the value reached `value` */
	ANES_EVW_CLOSED,     /* the event closed below it */
	ANES_EVW_SHUTDOWN,   /* the daemon stops (anes_events_drain) */
	ANES_EVW_CANCELLED,  /* its connection closed (anes_event_cancel's caller) */
};

struct anes_evwaiter {
	anes_evwaiter *prev, *next;   /* ev->waiters, under ev->mu */
	anes_event *ev;               /* referenced by the waiter's owner (loop) */
	uint32_t id;                  /* the handle ID it was named by (messages) */
	uint64_t value;               /* waits for ev->value >= value */
	bool queued;                  /* on ev->waiters (under ev->mu) */
	uint8_t outcome;              /* ANES_EVW_*: written before wake() */
	uint64_t final;               /* the event's value when it ended */
	/* Any thread, once, after ev->mu was released; the waiter may be
	 * freed by what it starts. */
	void (*wake)(anes_evwaiter *w);
};

struct anes_event {
	pthread_mutex_t mu;
	uint64_t value;               /* under mu */
	bool closed;                  /* under mu */
	uint32_t signalers;           /* under mu: the owner handle + pending signalling runs */
	anes_evwaiter *waiters;       /* under mu */
	unsigned refs;                /* loop: handles, runs, waiters */
	anes_server *srv;
	anes_event *prev, *next;      /* loop: srv's events (anes_events_drain) */
};

/* One connection's handle (its `events` table holds a pointer to it). */
struct anes_evhandle {
	anes_event *ev;               /* referenced */
	anes_conn *conn;              /* borrowed: the table's connection */
	uint32_t id;
	bool owner;                   /* made by event.create: may raise it */
	struct anes_share_tok *tokens;   /* share.c: live tokens exported from it */
};

/* The methods (docs/protocol.md, "Events"); event.export and event.import
 * are share.c's (anes_share_event_export/import). */
void anes_m_event_create(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);
void anes_m_event_signal(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);
void anes_m_event_wait(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);
void anes_m_event_release(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);

/* Loop: a new handle on c to ev (an import: owner false), within
 * max_events_per_conn.  Answers msgid's errors itself and returns false;
 * on success returns the handle (in c's table) without answering. */
anes_evhandle *anes_event_handle_add(anes_conn *c, uint32_t msgid, anes_event *ev, bool owner);
/* Whether h may raise its event to value now: 0, or -EPERM (an imported
 * handle) / -EINVAL (value not above the current one) with msg set. */
int anes_event_signal_check(const anes_evhandle *h, uint64_t value, char *msg, size_t msg_len);
/* The value now (any thread). */
uint64_t anes_event_value(anes_event *ev);
/* Any thread: raise ev to max(value, v); wakes the waiters it meets. */
void anes_event_raise(anes_event *ev, uint64_t v);

anes_event *anes_event_ref(anes_event *ev);
/* Loop; frees at the last reference. */
void anes_event_unref(anes_event *ev);
/* Loop: a run that will signal ev was accepted (it cannot close until
 * anes_event_signaler_done). */
void anes_event_signaler_add(anes_event *ev);
void anes_event_signaler_done(anes_event *ev);

/* Loop: register w (w->ev, w->value, w->id, w->wake set; w->ev
 * referenced by the caller).  Returns ANES_EVW_MET or ANES_EVW_CLOSED
 * (w->final set; not registered, no wake()) or ANES_EVW_PENDING (wake()
 * follows, once). */
int anes_event_wait_add(anes_evwaiter *w);
/* Loop: take w off its event if it is still pending there: true (the
 * caller ends it; no wake() comes), false (a wake() is under way or done). */
bool anes_event_cancel(anes_evwaiter *w);

/* A lane thread (lanes.c): like anes_lane_request (run/run.h), for an
 * event.signal request: 1 with the reply in ctx->reply, 0 to leave the
 * frame to the loop, -ENOMEM. */
int anes_lane_event_request(anes_conn *c, const void *payload, uint32_t len, anes_wctx *ctx);

/* Loop, connection teardown: its pending event.waits end, its handles go
 * (owned events close once their signalling runs are done). */
void anes_events_conn_gone(anes_conn *c);
/* Loop: every pending waiter of every event ends with ANES_EVW_SHUTDOWN
 * (a drain with nothing left that could raise them, or the shutdown). */
void anes_events_drain(anes_server *srv);
/* Loop: whether the drain can end the waiters: every request in flight
 * is a parked run or a pending wait. */
bool anes_events_only_parked(anes_server *srv);

#endif
