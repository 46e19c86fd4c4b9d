/* SPDX-License-Identifier: MIT */
/*
 * Lanes (docs/design.md, "Lanes"): while a connection has nothing for the
 * loop to do (no request buffered, no output queued, no compile pending),
 * the loop stops reading it and arms it in the lane threads' poll set
 * instead (anes_lane_arm).  The lane thread that sees it readable reads it,
 * does a short `run` request it finds there (run/run.c, anes_lane_request)
 * or an `event.signal` (state/event.c, anes_lane_event_request; the short
 * runs it makes ready run here once the reply is out, lane_send_buf),
 * arms it again and sends the reply (what the socket does not take goes to
 * the loop as a lane_rest job); a request of another kind, output waiting
 * for the loop, end-of-file or an error hands the read side back to the
 * loop (lane_back), which carries on from the same receive buffer.  A
 * request on a lane thus costs one wake-up, the lane thread's, and never
 * waits for the loop.  A lane thread serves one client for at most the
 * scheduler's slice (--sched-slice-us), so that the others' ready sockets
 * wait for it no longer.  The loop takes a lane back by setting lane_stop
 * and, if it is armed, shutting the socket's read side (anes_conn_fail
 * only: the connection is going), which makes it readable.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "anes_clock.h"
#include "daemon.h"
#include "event.h"
#include "lanes.h"
#include "run.h"

static void lane_no_work(anes_job *j)
{
	(void)j;
}

bool anes_lane_arm(anes_conn *c)
{
	anes_server *srv = c->srv;
	const uint8_t *payload;
	uint32_t len;
	unsigned nfds;

	if (c->lane)
		return true;
	if (!srv->pool || !srv->cfg.lanes || c->failed || !c->hello_done || srv->draining ||
	    c->pending_compiles > 0 || anes_io_want_write(&c->io) ||
	    anes_io_peek_frame(&c->io, &payload, &len, &nfds) != 0)
		return false;
	/* Never both: the loop's poll would read what the lane owns. */
	if ((c->events & UV_READABLE) && anes_conn_poll_events(c, c->events & ~UV_READABLE) < 0)
		return false;
	c->lane = true;
	anes_conn_ref(c);   /* the lane's, dropped in lane_back */
	pthread_mutex_lock(&c->lane_mu);
	c->lane_stop = false;
	c->lane_state = ANES_LANE_ARMED;
	int r = anes_pool_lane_arm(srv->pool, &c->lane_h);
	if (r < 0)
		c->lane_state = ANES_LANE_OFF;
	pthread_mutex_unlock(&c->lane_mu);
	if (r < 0) {
		c->lane = false;
		anes_conn_unref(c);
		return false;
	}
	return true;
}

/* Loop: the workers gave c's read side back (lane_job's done). */
static void lane_back(anes_job *j, bool cancelled)
{
	anes_conn *c = ANES_CONTAINER_OF(j, anes_conn, lane_job);
	(void)cancelled;

	assert(c->lane && c->lane_state == ANES_LANE_OFF);
	c->lane = false;
	if (c->failed) {
		if (c->teardown_deferred) {
			c->teardown_deferred = false;
			c->dead_next = c->srv->dead;
			c->srv->dead = c;
			anes_conn_schedule_deferred(c->srv);
		}
	} else if (c->lane_status == ANES_LANE_EOF) {
		anes_conn_read_failed(c, 0);
	} else if (c->lane_status == ANES_LANE_NOROOM) {
		anes_conn_input_wait(c);
		anes_conn_update_poll(c);
	} else if (c->lane_status < 0) {
		anes_conn_read_failed(c, c->lane_status);
	} else {
		/* Not here: this is a done() inside the pool's delivery, and
		 * jobs finished before it may still be in that batch: a request
		 * handled now would not see them (sync_direct).  A rest the lane
		 * thread handed over (lane_rest_done) came before this. */
		anes_conn_kick(c);
	}
	anes_conn_unref(c);
}

void anes_conn_lanes_orphan(anes_server *srv)
{
	for (anes_conn *c = srv->conns; c; c = c->next) {
		if (!c->lane)
			continue;
		/* Armed, never fired: no worker will read it any more. */
		assert(c->lane_state == ANES_LANE_ARMED);
		c->lane = false;
		c->lane_state = ANES_LANE_OFF;
		if (c->teardown_deferred) {
			c->teardown_deferred = false;
			c->dead_next = srv->dead;
			srv->dead = c;
		}
		anes_conn_unref(c);
	}
}

/* Lane thread: send data now if nothing waits before it
 * (anes_conn_try_send_locked).  Returns the bytes sent: all of them if the
 * connection is closing (nothing to send then); fewer, and the connection
 * is marked wblocked if part went, when the rest must go through the loop.
 * Errors: the loop finds them when it sends the rest. */
static size_t lane_try_send(anes_conn *c, const char *data, size_t len)
{
	pthread_mutex_lock(&c->send_mu);
	size_t sent = c->wclosed ? len : anes_conn_try_send_locked(c, data, len);
	pthread_mutex_unlock(&c->send_mu);
	return sent;
}

/* Lane thread: whether a whole frame is buffered. */
static bool lane_frame_buffered(anes_conn *c)
{
	const uint8_t *payload;
	uint32_t len;
	unsigned nfds;
	return anes_io_peek_frame(&c->io, &payload, &len, &nfds) != 0;
}

/* Lane thread: whether the loop wants the lane back, or the daemon drains. */
static bool lane_stop_wanted(anes_conn *c)
{
	pthread_mutex_lock(&c->lane_mu);
	bool stop = c->lane_stop || atomic_load(&c->srv->draining);
	pthread_mutex_unlock(&c->lane_mu);
	return stop;
}

/* Lane thread: take the buffered request if a lane handles it.  2: done,
 * its reply is in ctx->reply, to be sent; 1: no complete request yet; 0:
 * hand the read side back (the next frame is the loop's); a negative
 * errno: hand it back and fail the connection. */
static int lane_take_request(anes_conn *c, anes_wctx *ctx)
{
	const uint8_t *payload;
	uint32_t len;
	unsigned nfds;

	int r = anes_io_peek_frame(&c->io, &payload, &len, &nfds);
	if (r == 0)
		return 1;
	if (r < 0 || nfds > 0 || atomic_load(&c->srv->draining))
		return 0;   /* the loop answers it (or reports the error) */
	/* Output waiting (the client does not read its replies): the loop
	 * decides whether to take more requests (max_unsent_bytes). */
	pthread_mutex_lock(&c->send_mu);
	bool backlog = c->io.out_head || c->wblocked || atomic_load(&c->lane_rests) > 0;
	pthread_mutex_unlock(&c->send_mu);
	if (backlog)
		return 0;
	r = anes_lane_request(c, payload, len, ctx);
	if (r == 0)
		r = anes_lane_event_request(c, payload, len, ctx);
	if (r <= 0)
		return r;
	/* Done: drop the frame (no fds); the caller sends the reply. */
	int fds[ANES_MAX_FDS_PER_FRAME];
	(void)anes_io_next_frame(&c->io, &payload, &len, fds, &nfds);
	c->rd_consumed += ANES_FRAME_HEADER_SIZE + (size_t)len;
	return 2;
}

/* The part of a lane reply the socket did not take, for the loop to queue
 * (lane_rest_done).  Holds a connection reference. */
#define LANE_REST_MAX 1024   /* the size of the spare each lane thread keeps */

typedef struct lane_rest {
	anes_job job;
	anes_conn *c;
	size_t len, sent;
	char data[];
} lane_rest;

static void lane_rest_done(anes_job *j, bool cancelled)
{
	lane_rest *lr = ANES_CONTAINER_OF(j, lane_rest, job);
	anes_conn *c = lr->c;
	(void)cancelled;
	atomic_fetch_sub(&c->lane_rests, 1);
	void *data = c->failed ? NULL : malloc(lr->len);
	if (data) {
		memcpy(data, lr->data, lr->len);
		/* A batch of replies (lane_batch) is several frames. */
		if (lr->sent > 0)
			anes_conn_queue_rest(c, data, lr->len, lr->sent);
		else
			anes_conn_queue_frames(c, data, lr->len);
	} else if (!c->failed) {
		anes_conn_fail_logged(c, "out of memory queueing a response");
	}
	anes_conn_unref(c);
	free(lr);
}

/* Lane thread: make sure a rest of the reply in ctx->reply could be kept
 * without allocating (ctx->rest_spare). */
static bool lane_rest_ready(anes_wctx *ctx)
{
	if (ctx->reply.len > LANE_REST_MAX)
		return false;
	if (!ctx->rest_spare)
		ctx->rest_spare = malloc(sizeof(lane_rest) + LANE_REST_MAX);
	return ctx->rest_spare != NULL;
}

/* Lane thread: send the reply in ctx->reply; what the socket does not take
 * goes to the loop as a lane_rest job.  own_ref: c is held by a reference
 * the caller took for this (c's lane may be armed again already, so this
 * touches only the send side); else the lane is still this thread's.
 * 0, or -ENOMEM when the rest could not be kept (never after
 * lane_rest_ready): the stream is out of step, the loop must fail c. */
static int lane_send_buf(anes_conn *c, anes_wctx *ctx, const char *data, size_t len, bool own_ref)
{
	anes_pool *pool = c->srv->pool;
	size_t sent = lane_try_send(c, data, len);
	if (sent == len) {
		if (own_ref)
			anes_conn_unref(c);
		/* Runs its signals made ready (an event.signal, a run's), now
		 * that the reply is out (docs/design.md, "Events"). */
		anes_pool_run_ready(pool);
		return 0;
	}
	lane_rest *lr;
	if (len <= LANE_REST_MAX && ctx->rest_spare) {
		lr = ctx->rest_spare;
		ctx->rest_spare = NULL;
	} else if (!(lr = malloc(sizeof(*lr) + len))) {
		assert(!own_ref);
		return -ENOMEM;
	}
	memcpy(lr->data, data, len);
	lr->len = len;
	lr->sent = sent;
	lr->c = own_ref ? c : anes_conn_ref(c);
	lr->job = (anes_job){ .work = lane_no_work, .done = lane_rest_done };
	atomic_fetch_add(&c->lane_rests, 1);
	anes_pool_complete(c->srv->pool, &lr->job);
	return 0;
}

/* Lane thread: send the reply in ctx->reply (lane_send_buf). */
static int lane_send(anes_conn *c, anes_wctx *ctx, bool own_ref)
{
	return lane_send_buf(c, ctx, ctx->reply.data, ctx->reply.len, own_ref);
}

/* Replies of a pipeline kept for one send, at most this many bytes. */
#define LANE_BATCH_MAX 4096

/* Lane thread, more requests buffered: keep the reply in ctx->reply for
 * the batch (ctx->out), sending the batch first if it would not fit, or
 * the reply alone if there is no room for a batch.  0 or lane_send's
 * error. */
static int lane_batch(anes_conn *c, anes_wctx *ctx)
{
	size_t len = ctx->reply.len;
	if (ctx->out_len > 0 && ctx->out_len + len > LANE_BATCH_MAX) {
		int r = lane_send_buf(c, ctx, ctx->out, ctx->out_len, false);
		ctx->out_len = 0;
		if (r < 0)
			return r;
	}
	if (!ctx->out && len <= LANE_BATCH_MAX)
		ctx->out_cap = (ctx->out = malloc(LANE_BATCH_MAX)) ? LANE_BATCH_MAX : 0;
	if (ctx->out_len + len > ctx->out_cap)
		return lane_send(c, ctx, false);
	memcpy(ctx->out + ctx->out_len, ctx->reply.data, len);
	ctx->out_len += len;
	return 0;
}

/* Lane thread: send what lane_batch kept, with the reply in ctx->reply
 * if with_reply.  0 or lane_send's error. */
static int lane_batch_flush(anes_conn *c, anes_wctx *ctx, bool with_reply)
{
	if (ctx->out_len == 0)
		return with_reply ? lane_send(c, ctx, false) : 0;
	if (with_reply) {
		int r = lane_batch(c, ctx);   /* appended, or the batch sent and it kept */
		if (r < 0) {
			ctx->out_len = 0;
			return r;
		}
	}
	int r = ctx->out_len > 0 ? lane_send_buf(c, ctx, ctx->out, ctx->out_len, false) : 0;
	ctx->out_len = 0;
	return r;
}

/*
 * The lane spin (docs/design.md, "The spin").  A client's
 * next request often follows its reply within microseconds (a loop of runs
 * or chains), and a lane thread asleep on an idle CPU takes long to wake.
 * So the thread that answered keeps the lane (it stays BUSY, not armed: no
 * other thread is woken for it) and reads the socket for up to
 * --lane-spin-us before arming it as usual, by the rules of
 * proto/anes_spin.h (the same as the client library's).
 *
 * Lane thread, holding c's lane, its reply sent, the spin started: what
 * anes_io_read returned (> 0: more of the client's bytes are buffered),
 * -EAGAIN when nothing came, or -ECANCELED when the loop wants the lane
 * back (lane_stop, or the daemon is draining).
 */
static ssize_t lane_spin(anes_conn *c, anes_spin_run *run)
{
	ssize_t n;
	do {
		/* Under lane_mu, as every lane read (the drain mark). */
		pthread_mutex_lock(&c->lane_mu);
		if (c->lane_stop || atomic_load(&c->srv->draining)) {
			pthread_mutex_unlock(&c->lane_mu);
			return -ECANCELED;
		}
		n = anes_io_read(&c->io);
		if (n > 0)
			c->rd_total += (uint64_t)n;
		pthread_mutex_unlock(&c->lane_mu);
	} while ((n == -EAGAIN || n == -EINTR) && anes_spin_again(run));
	if (n == -EINTR)
		n = -EAGAIN;
	anes_spin_end(&c->lane_spin, run, n != -EAGAIN);
	return n;
}

/* Lane thread: c's socket is readable. */
static void lane_ready(anes_lane *l, anes_wctx *ctx)
{
	anes_conn *c = ANES_CONTAINER_OF(l, anes_conn, lane_h);
	int status = 0;
	/* When this thread took the lane: it keeps it for at most a slice. */
	uint64_t batch_start = anes_clock_ns();

	/* The read under lane_mu: the loop's drain mark (rd_total plus what
	 * the socket holds) must not fall between the two. */
	pthread_mutex_lock(&c->lane_mu);
	assert(c->lane_state == ANES_LANE_ARMED);
	c->lane_state = ANES_LANE_BUSY;
	bool stop = c->lane_stop;
	ssize_t n = -EAGAIN;
	if (ctx) {
		n = anes_io_read(&c->io);
		if (n > 0)
			c->rd_total += (uint64_t)n;
	}
	pthread_mutex_unlock(&c->lane_mu);
	if (n == -EDQUOT) {
		status = ANES_LANE_NOROOM;   /* the loop waits for room (input_wait) */
		goto back;
	}
	if (n == 0 || (n < 0 && n != -EAGAIN && n != -EINTR && n != -ENOBUFS)) {
		status = n == 0 ? ANES_LANE_EOF : (int)n;
		goto back;
	}
	/* Asked back: with what was read (requests from before a drain). */
	if (stop || !ctx)
		goto back;
	int r = lane_take_request(c, ctx);
	if (r <= 0) {
		status = r;
		goto back;
	}
	bool reply = r == 2;
	/* Keep the lane, answer, and read the socket for the next request
	 * (lane_spin); arm it as below once the spin is over. */
	anes_spin_run run;
	anes_server *srv = c->srv;
	uint64_t slice_ns = (uint64_t)srv->cfg.sched_slice_us * 1000u;
	uint64_t run_max_ns = (uint64_t)srv->cfg.lane_run_max_us * 1000u;
	assert(ctx->out_len == 0);
	while (reply) {
		/* More requests already read (a client that pipelines): answer
		 * and take the next at once, for up to --lane-run-max-us of
		 * them and at most a slice (other clients may be waiting for a
		 * lane thread); after that the loop spreads the rest over the
		 * workers, through the fair queue. */
		if (lane_frame_buffered(c)) {
			/* The replies go together when the pipeline is done (or
			 * LANE_BATCH_MAX bytes of them are waiting), in one send. */
			r = lane_batch(c, ctx);
			reply = false;
			if (r < 0) {
				ctx->out_len = 0;
				status = r;
				goto back;
			}
			uint64_t held = anes_clock_ns() - batch_start;
			if (held > run_max_ns || held >= slice_ns || lane_stop_wanted(c)) {
				if (held >= slice_ns)
					atomic_fetch_add_explicit(&srv->stats.lane_slice_ends, 1,
					                          memory_order_relaxed);
				status = lane_batch_flush(c, ctx, false);
				goto back;
			}
			r = lane_take_request(c, ctx);
			if (r <= 0) {
				int f = lane_batch_flush(c, ctx, false);
				status = r < 0 ? r : f;
				goto back;
			}
			reply = r == 2;
			continue;
		}
		if (ctx->out_len > 0) {
			/* The pipeline's last reply: with the others, now. */
			r = lane_batch_flush(c, ctx, true);
			reply = false;
			if (r < 0) {
				status = r;
				goto back;
			}
		}
		int go = anes_spin_start(&c->lane_spin, srv->cfg.lane_spin_us, &run);
		if (go <= 0) {
			if (go == -EAGAIN)
				atomic_fetch_add_explicit(&srv->stats.lane_spin_skips, 1, memory_order_relaxed);
			break;
		}
		/* No spin past the slice: the lane is armed again, behind the
		 * other clients whose sockets are ready. */
		uint64_t held = run.start_ns - batch_start;
		if (held >= slice_ns) {
			atomic_fetch_add_explicit(&srv->stats.lane_slice_ends, 1, memory_order_relaxed);
			break;
		}
		if (run.limit_ns > slice_ns - held)
			run.limit_ns = slice_ns - held;
		atomic_fetch_add_explicit(&srv->stats.lane_spins, 1, memory_order_relaxed);
		if (reply) {
			r = lane_send(c, ctx, false);
			if (r < 0) {
				status = r;
				goto back;
			}
			reply = false;
		}
		n = lane_spin(c, &run);
		if (n > 0)
			atomic_fetch_add_explicit(&srv->stats.lane_spin_hits, 1, memory_order_relaxed);
		else if (n == -EAGAIN && run.gap)
			atomic_fetch_add_explicit(&srv->stats.lane_spin_gaps, 1, memory_order_relaxed);
		if (n == -EAGAIN)
			break;
		if (n == -EDQUOT)
			status = ANES_LANE_NOROOM;
		if (n == -ECANCELED || n == -EDQUOT)
			goto back;
		if (n == 0 || (n < 0 && n != -ENOBUFS)) {
			status = n == 0 ? ANES_LANE_EOF : (int)n;
			goto back;
		}
		r = lane_take_request(c, ctx);
		if (r <= 0) {
			status = r;
			goto back;
		}
		reply = r == 2;
	}
	/* The reply goes after the lane is armed again, so that arming is
	 * not between the reply and the client's next request.  That needs a
	 * rest that cannot fail; without one, send first. */
	if (reply && !lane_rest_ready(ctx)) {
		r = lane_send(c, ctx, false);
		if (r < 0) {
			status = r;
			goto back;
		}
		reply = false;
	}

	anes_conn_track_partial(c);
	pthread_mutex_lock(&c->lane_mu);
	if (!c->lane_stop && !atomic_load(&c->srv->draining)) {
		/* Armed under lane_mu: the thread that gets it next waits here
		 * until this one has let go. */
		if (reply)
			anes_conn_ref(c);   /* lane_send's */
		c->lane_state = ANES_LANE_ARMED;
		if (anes_pool_lane_arm(c->srv->pool, &c->lane_h) == 0) {
			pthread_mutex_unlock(&c->lane_mu);
			if (reply)
				(void)lane_send(c, ctx, true);   /* cannot fail: lane_rest_ready */
			return;
		}
		c->lane_state = ANES_LANE_BUSY;
		if (reply)
			atomic_fetch_sub(&c->refs, 1);   /* not the last: the lane holds one */
	}
	pthread_mutex_unlock(&c->lane_mu);
	if (reply) {
		r = lane_send(c, ctx, false);
		if (r < 0)
			status = r;
	}
back:
	anes_conn_track_partial(c);
	pthread_mutex_lock(&c->lane_mu);
	c->lane_state = ANES_LANE_OFF;
	c->lane_status = status;
	pthread_mutex_unlock(&c->lane_mu);
	anes_pool_complete(c->srv->pool, &c->lane_job);
}

bool anes_conn_lane_recall(anes_conn *c)
{
	if (!c->lane)
		return false;
	pthread_mutex_lock(&c->lane_mu);
	c->lane_stop = true;
	/* A worker is in it, or has handed it back (on the done list). */
	bool busy = c->lane_state != ANES_LANE_ARMED;
	pthread_mutex_unlock(&c->lane_mu);
	return busy;
}

void anes_conn_drain_mark(anes_conn *c)
{
	int pending = 0;
	pthread_mutex_lock(&c->lane_mu);
	if (ioctl(c->fd, FIONREAD, &pending) < 0 || pending < 0)
		pending = 0;
	c->drain_cutoff = c->rd_total + (uint64_t)pending;
	pthread_mutex_unlock(&c->lane_mu);
}

bool anes_conn_predrain_unread(anes_conn *c)
{
	pthread_mutex_lock(&c->lane_mu);
	bool unread = c->rd_total < c->drain_cutoff;
	pthread_mutex_unlock(&c->lane_mu);
	return unread;
}

void anes_lane_init(anes_conn *c)
{
	c->lane_h.fd = c->fd;
	c->lane_h.ready = lane_ready;
	c->lane_job.work = lane_no_work;   /* non-NULL: never "cancelled" */
	c->lane_job.done = lane_back;
}
