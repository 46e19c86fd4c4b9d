/* SPDX-License-Identifier: MIT */
/*
 * Between a connection's lifecycle (conn.c) and its lane (lanes.c):
 * private to daemon/server/.  All on the loop thread.
 */
#ifndef ANES_LANES_H
#define ANES_LANES_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "daemon.h"

/* ---- lanes.c, for conn.c ---- */

/* anes_conn_new, once c->fd is set: c's lane handle and hand-back job. */
void anes_lane_init(anes_conn *c);
/* Hand c's read side to the lane threads if the loop has nothing to do
 * for it.  True when the lane holds it (now or already). */
bool anes_lane_arm(anes_conn *c);

/* ---- conn.c, for lanes.c ---- */

/* Poll c for what it can do now (or arm its lane). */
void anes_conn_update_poll(anes_conn *c);
/* Poll c's socket for ev (UV_READABLE | UV_WRITABLE, 0: nothing): 0, or a
 * libuv error with c->events unchanged. */
int anes_conn_poll_events(anes_conn *c, int ev);
/* A read that ended the connection: 0 (end of file) or a -errno. */
void anes_conn_read_failed(anes_conn *c, ssize_t n);
/* c's frame got no input memory: stop reading it until it may try again. */
void anes_conn_input_wait(anes_conn *c);
/* Run anes_conn_run_deferred from the loop's idle callback. */
void anes_conn_schedule_deferred(anes_server *srv);
/* The read side's owner (the loop, or the lane thread holding it), after
 * reading or taking frames: start (or end) the deadline of the incomplete
 * frame buffered. */
void anes_conn_track_partial(anes_conn *c);
/* Fail c for a reason of the daemon's own, logged whatever -v says. */
void anes_conn_fail_logged(anes_conn *c, const char *why);
/* Queue data: whole frames without fds back to back (a lane's batch of
 * replies; taken in every case), charged and sent as anes_conn_queue. */
void anes_conn_queue_frames(anes_conn *c, void *data, size_t len);

#endif
