/* SPDX-License-Identifier: MIT */
/*
 * A run from bytes to reply (docs/design.md, "Life of a request"): the one
 * decoder of run requests (anes_run_wire_parse), the resolution of what a
 * run names against the connection's tables, the one step executor, the
 * one map from return codes to wire errors, and the replies.  A run that
 * arrives on the loop becomes a job of the fair scheduler; one that a lane
 * thread reads runs there when it is short (daemon/server/lanes.c).
 */
#ifndef ANES_RUN_H
#define ANES_RUN_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon.h"

/* Loop: take the frame (payload[0..len), nfds fds with it, which the
 * caller closes) if it is a request for "run": answer it, or submit it as
 * a job whose done() answers, or fail the connection for a malformed one.
 * Returns true when it was a run request (handled), false when the frame
 * is for the general decoder (anes_msg_decode, anes_dispatch_request). */
bool anes_run_request(anes_conn *c, const void *payload, uint32_t len, unsigned nfds);

/* On a lane thread: if the payload (one whole frame's, no fds) is a run
 * request a lane does (well formed, after hello, short: its programs' recent
 * runs took at most --lane-run-max-us in all), do it -- or find what is
 * wrong with it -- and leave the reply in ctx->reply (sealed), then return
 * 1; return 0 to leave the frame to the loop (nothing done), -ENOMEM when
 * not even an error reply fits.  It takes no references: while the lane
 * holds the read side, nothing can change the connection's tables (see
 * anes_conn), and what they refer to stays. */
int anes_lane_request(anes_conn *c, const void *payload, uint32_t len, anes_wctx *ctx);

/* Server teardown: free the run jobs kept for reuse and the loop's
 * decoder workspace. */
void anes_run_jobs_free(anes_server *srv);

#endif
