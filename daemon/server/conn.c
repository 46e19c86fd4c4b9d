/* SPDX-License-Identifier: MIT */
/*
 * Connections: one uv_poll_t per client socket, with anes_io doing the
 * framing and fd passing (libuv's streams cannot pass memfds).
 *
 * Lifecycle: anes_conn_fail() only stops I/O and queues the connection on
 * srv->dead; the teardown (releasing its objects, uv_close) happens in the
 * loop's idle callback, never inside the connection's own callbacks or while
 * some caller up the stack still walks a list that teardown would change.
 * The memory goes when the poll handle's close callback has run and the
 * last job or waiter referring to the connection dropped its reference.
 *
 * Output: the loop queues and sends frames (anes_io), and a worker that has
 * just finished a run sends its reply itself when nothing is queued before
 * it (anes_conn_try_send_locked: one wake-up less on the way back to the
 * client).  Both do it under send_mu.  A failed connection is marked
 * wclosed under send_mu at once, so no worker touches its fd afterwards
 * (on_closed closes it later, while jobs may still hold the connection).
 * A client that sees a reply sent by a worker must find the daemon in the
 * state the loop's completion of that job leaves (stats, surfaces held,
 * in-flight count), so before a request is handled, completions of replies
 * already sent on that connection are delivered first (sync_direct).
 *
 * Lanes (lanes.c): while a connection has nothing for the loop to do, the
 * lane threads read it; they use the lifecycle's functions below
 * (lanes.h), and hand the read side back to the loop with lane_job.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>     /* macOS: LOCAL_PEERPID */

#include "anes_clock.h"
#include "daemon.h"
#include "event.h"
#include "lanes.h"
#include "run.h"
#include "state.h"

static void on_poll(uv_poll_t *h, int status, int events);
static void track_pause(anes_conn *c, bool reading);
static bool input_charge(anes_io *io, int64_t delta);
static void input_unwait(anes_conn *c);
static void conn_process(anes_conn *c);

static void on_idle(uv_idle_t *h)
{
	anes_conn_run_deferred(h->data);
}

static void schedule_deferred(anes_server *srv)
{
	if (!srv->shut_down)
		uv_idle_start(&srv->idle, on_idle);
}

static void close_fds(int *fds, unsigned nfds)
{
	for (unsigned i = 0; i < nfds; i++) {
		if (fds[i] >= 0) {
			close(fds[i]);
			fds[i] = -1;
		}
	}
}

anes_conn *anes_conn_ref(anes_conn *c)
{
	unsigned old = atomic_fetch_add(&c->refs, 1);
	assert(old > 0);
	(void)old;
	return c;
}

void anes_conn_unref(anes_conn *c)
{
	if (!c)
		return;
	unsigned old = atomic_fetch_sub(&c->refs, 1);
	assert(old > 0);
	if (old > 1)
		return;
	assert(c->torn_down);
	pthread_mutex_destroy(&c->send_mu);
	pthread_mutex_destroy(&c->lane_mu);
	free(c);
}

/* Reading (and processing buffered frames) pauses while the client has
 * max_inflight requests on the workers or too much unread output. */
static bool can_take_requests(const anes_conn *c)
{
	const anes_limits *lim = &c->srv->lim;
	return !c->failed && !c->lane && !c->input_blocked && !c->share_paused &&
	       c->inflight < lim->max_inflight &&
	       c->io.out_bytes < lim->max_unsent_bytes && anes_tenant_jobs_room(c->tenant);
}

/* Drop a client whose unread output stays over drop_unsent_bytes: it does
 * not read its responses, and holding them costs memory. */
static void check_unsent(anes_conn *c)
{
	anes_server *srv = c->srv;
	if (c->io.out_bytes <= srv->lim.drop_unsent_bytes) {
		c->unsent_over = false;
		return;
	}
	if (c->unsent_over)
		return;
	c->unsent_over = true;
	c->unsent_since_ms = uv_now(&srv->loop);
	if (srv->lim.drop_unsent_seconds == 0) {
		anes_conn_drop_slow(c);
		return;
	}
	if (!uv_is_active((uv_handle_t *)&srv->unsent_timer)) {
		uint64_t tick = srv->lim.drop_unsent_seconds * 1000ull / 4;
		tick = tick < 50 ? 50 : tick > 1000 ? 1000 : tick;
		uv_timer_start(&srv->unsent_timer, anes_conn_on_unsent_timer, tick, tick);
	}
}

/* Fail c for a reason of the daemon's own, logged whatever -v says: a
 * client closed for it must be able to find out why. */
static void fail_logged(anes_conn *c, const char *why)
{
	if (c->failed)
		return;
	anes_log("client #%llu (%s): %s: connection closed", (unsigned long long)c->serial,
	         c->name[0] ? c->name : "unnamed", why);
	anes_conn_fail(c, NULL);
}

/* Drop c over an output limit (why: anes_tenant_limit_msg's), like a slow
 * reader: logged and counted in status.dropped. */
static void drop_over(anes_conn *c, const char *why)
{
	if (c->failed)
		return;
	c->srv->stats.dropped++;
	anes_log("dropped client #%llu (%s): %zu bytes of responses unread, and %s",
	         (unsigned long long)c->serial, c->name[0] ? c->name : "unnamed", c->io.out_bytes, why);
	anes_conn_fail(c, NULL);
}

void anes_conn_drop_slow(anes_conn *c)
{
	anes_server *srv = c->srv;
	if (c->failed)
		return;
	srv->stats.dropped++;
	anes_log("dropped client #%llu (%s): %zu bytes of responses unread for %.1f s",
	         (unsigned long long)c->serial, c->name[0] ? c->name : "unnamed", c->io.out_bytes,
	         (double)(uv_now(&srv->loop) - c->unsent_since_ms) / 1000.0);
	anes_conn_fail(c, NULL);
}

void anes_conn_on_unsent_timer(uv_timer_t *h)
{
	anes_server *srv = h->data;
	uint64_t now = uv_now(&srv->loop), limit_ms = srv->lim.drop_unsent_seconds * 1000ull;
	bool any = false;

	for (anes_conn *c = srv->conns; c; c = c->next) {
		if (c->failed || !c->unsent_over)
			continue;
		if (c->io.out_bytes <= srv->lim.drop_unsent_bytes)
			c->unsent_over = false;
		else if (now - c->unsent_since_ms >= limit_ms)
			anes_conn_drop_slow(c);   /* only schedules the teardown */
		else
			any = true;
	}
	if (!any)
		uv_timer_stop(h);
}

static void update_poll(anes_conn *c)
{
	if (c->failed)
		return;
	check_unsent(c);
	if (c->failed || c->processing)
		return;   /* processing: conn_process's caller updates it after */
	if (c->srv->draining && c->inflight == 0 && c->ev_waits == 0 && !anes_io_want_write(&c->io))
		schedule_deferred(c->srv);   /* anes_server_drain_check closes it */
	int ev = 0;
	bool reading = can_take_requests(c);
	if (reading && !anes_lane_arm(c))
		ev |= UV_READABLE;
	track_pause(c, reading || c->lane);
	if (anes_io_want_write(&c->io))
		ev |= UV_WRITABLE;
	if (ev == c->events)
		return;
	int r = ev ? uv_poll_start(&c->poll, ev, on_poll) : uv_poll_stop(&c->poll);
	if (r < 0) {
		anes_conn_fail(c, uv_strerror(r));
		return;
	}
	c->events = ev;
}

static int peer_creds(int fd, uint32_t *ret_uid, long *ret_pid)
{
#ifdef SO_PEERCRED
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	*ret_uid = (uint32_t)cred.uid;
	*ret_pid = (long)cred.pid;
#else
	uid_t uid;
	gid_t gid;
	if (getpeereid(fd, &uid, &gid) < 0)
		return -errno;
	*ret_uid = (uint32_t)uid;
	*ret_pid = -1;   /* unknown: the uid is the tenant (tenant.h) */
#ifdef LOCAL_PEERPID
	pid_t pid;
	socklen_t len = sizeof(pid);
	if (getsockopt(fd, SOL_LOCAL, LOCAL_PEERPID, &pid, &len) == 0)
		*ret_pid = (long)pid;
#endif
#endif
	return 0;
}

static bool uid_allowed(const anes_server *srv, uint32_t uid)
{
	if (uid == (uint32_t)geteuid())
		return true;
	for (size_t i = 0; i < srv->cfg.n_allow_uids; i++)
		if (srv->cfg.allow_uids[i] == uid)
			return true;
	return false;
}

/* At most one line a second: other users must not be able to flood the log. */
static void log_refusal(anes_server *srv, uint32_t uid, long pid)
{
	uint64_t now = uv_now(&srv->loop);
	if (srv->refusal_log_ms && now - srv->refusal_log_ms < 1000) {
		srv->refusals_unlogged++;
		return;
	}
	char more[64] = "";
	if (srv->refusals_unlogged)
		snprintf(more, sizeof(more), " (and %u more since the last report)", srv->refusals_unlogged);
	anes_log("refused a connection from uid %u (pid %ld): not an allowed user%s", uid, pid, more);
	srv->refusal_log_ms = now ? now : 1;
	srv->refusals_unlogged = 0;
}

int anes_conn_new(anes_server *srv, int fd)
{
	uint32_t uid = UINT32_MAX;
	long pid = -1;
	int r = peer_creds(fd, &uid, &pid);
	if (r < 0) {
		close(fd);
		anes_log("refused a connection: cannot get the peer's credentials: %s", strerror(-r));
		return r;
	}
	if (!uid_allowed(srv, uid)) {
		srv->stats.refused++;
		log_refusal(srv, uid, pid);   /* first: the peer sees the close after the log line */
		close(fd);
		return -EACCES;
	}
	if (srv->n_conns >= srv->lim.max_connections) {
		close(fd);
		if (srv->cfg.verbose)
			anes_log("refused a connection: %u clients already", srv->n_conns);
		return -EMFILE;
	}
	anes_conn *c = calloc(1, sizeof(*c));
	if (c)
		c->tenant = anes_tenant_get(&srv->tenants, uid, pid);
	if (!c || !c->tenant) {
		close(fd);
		free(c);
		return -ENOMEM;
	}
	r = uv_poll_init(&srv->loop, &c->poll, fd);
	if (r < 0) {
		close(fd);
		anes_tenant_unref(c->tenant);
		free(c);
		return r == UV_ENOMEM ? -ENOMEM : -EIO;
	}
	c->tnext = c->tenant->conns;
	if (c->tnext)
		c->tnext->tprev = c;
	c->tenant->conns = c;
	c->tenant->n_conns++;
	c->poll.data = c;
	c->srv = srv;
	c->fd = fd;
	pthread_mutex_init(&c->send_mu, NULL);
	pthread_mutex_init(&c->lane_mu, NULL);
	c->drain_cutoff = UINT64_MAX;
	anes_lane_init(c);
	atomic_init(&c->direct_unseen, 0);
	atomic_init(&c->lane_rests, 0);
	atomic_init(&c->refs, 1);
	c->serial = ++srv->next_conn_serial;
	/* Before hello only a small frame (max_hello_frame); conn_process
	 * raises it to max_frame when hello is done. */
	anes_io_init(&c->io, fd, srv->lim.max_hello_frame);
	c->io.charge = input_charge;
	c->created_ns = anes_clock_ns();
	anes_idt_init(&c->surfaces);
	anes_idt_init(&c->programs);
	anes_idt_init(&c->states);
	anes_idt_init(&c->event_ids);
	c->next = srv->conns;
	if (srv->conns)
		srv->conns->prev = c;
	srv->conns = c;
	srv->n_conns++;

	if (srv->cfg.verbose)
		anes_log("client #%llu connected (uid %u, pid %ld)", (unsigned long long)c->serial, uid,
		         pid);
	update_poll(c);
	return 0;
}

bool anes_conn_write_closed(anes_conn *c)
{
	pthread_mutex_lock(&c->send_mu);
	bool closed = c->wclosed;
	pthread_mutex_unlock(&c->send_mu);
	return closed;
}

void anes_conn_fail(anes_conn *c, const char *why)
{
	if (c->failed)
		return;
	c->failed = true;
	pthread_mutex_lock(&c->send_mu);
	c->wclosed = true;
	pthread_mutex_unlock(&c->send_mu);
	/* Nothing queued will be sent any more: its memory is the client's no
	 * longer (it goes with the connection at on_closed). */
	if (c->out_charged) {
		anes_tenant_uncharge(c->tenant, ANES_RES_OUTPUT_BYTES, c->out_charged, true);
		c->out_charged = 0;
	}
	if (c->lane) {
		pthread_mutex_lock(&c->lane_mu);
		c->lane_stop = true;
		/* Readable from now on: the worker that gets it hands it back. */
		if (c->lane_state == ANES_LANE_ARMED)
			(void)shutdown(c->fd, SHUT_RD);
		pthread_mutex_unlock(&c->lane_mu);
	}
	if (c->events)
		uv_poll_stop(&c->poll);
	c->events = 0;
	if (why && c->srv->cfg.verbose)
		anes_log("client #%llu (%s): %s", (unsigned long long)c->serial,
		         c->name[0] ? c->name : "unnamed", why);
	c->dead_next = c->srv->dead;
	c->srv->dead = c;
	schedule_deferred(c->srv);
}

void anes_conn_kick(anes_conn *c)
{
	if (c->failed || c->kick_pending)
		return;
	c->kick_pending = true;
	c->kick_next = c->srv->kicked;
	c->srv->kicked = anes_conn_ref(c);
	schedule_deferred(c->srv);
}

static void on_closed(uv_handle_t *h)
{
	anes_conn *c = h->data;
	/* wclosed since anes_conn_fail: no worker uses io or fd any more */
	pthread_mutex_lock(&c->send_mu);
	assert(c->wclosed && c->out_charged == 0);
	anes_io_cleanup(&c->io);
	close(c->fd);
	c->fd = -1;
	pthread_mutex_unlock(&c->send_mu);
	anes_tenant_unref(c->tenant);   /* jobs still out hold their own */
	c->tenant = NULL;
	anes_conn_unref(c);
}

static void teardown(anes_conn *c)
{
	anes_server *srv = c->srv;
	uint32_t n_surf = c->surfaces.n, n_prog = c->programs.n;
	uint64_t bytes = c->surface_bytes;

	assert(c->failed && !c->torn_down && !c->lane);
	c->torn_down = true;
	anes_pool_lane_remove(srv->pool, &c->lane_h);
	input_unwait(c);
	if (c->prev)
		c->prev->next = c->next;
	else
		srv->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
	srv->n_conns--;

	for (uint32_t i = 0; i < c->surfaces.n; i++)
		(void)anes_surface_drop(c->surfaces.v[i].ptr);
	anes_share_conn_gone(c);
	for (uint32_t i = 0; i < c->programs.n; i++)
		anes_centry_drop_handle(c->programs.v[i].ptr, c->tenant);
	anes_idt_cleanup(&c->surfaces);
	anes_idt_cleanup(&c->programs);
	anes_states_drop_all(c);
	anes_events_conn_gone(c);
	anes_tenant *t = c->tenant;
	if (c->tprev)
		c->tprev->tnext = c->tnext;
	else
		t->conns = c->tnext;
	if (c->tnext)
		c->tnext->tprev = c->tprev;
	c->tprev = c->tnext = NULL;
	t->n_conns--;

	if (srv->cfg.verbose)
		anes_log("client #%llu (%s) disconnected: released %u surfaces (%llu bytes), "
		         "%u program handles; %u requests in flight dropped",
		         (unsigned long long)c->serial, c->name[0] ? c->name : "unnamed", n_surf,
		         (unsigned long long)bytes, n_prog, c->inflight);
	uv_close((uv_handle_t *)&c->poll, on_closed);
}

void anes_conn_run_deferred(anes_server *srv)
{
	do {
		while (srv->kicked) {
			anes_conn *c = srv->kicked;
			srv->kicked = c->kick_next;
			c->kick_pending = false;
			if (!c->failed) {
				conn_process(c);
				update_poll(c);
			}
			anes_conn_unref(c);
		}
		anes_server_drain_check(srv);   /* may fail connections: loop */
		while (srv->dead) {
			anes_conn *c = srv->dead;
			srv->dead = c->dead_next;
			if (c->lane)
				c->teardown_deferred = true;   /* lane_back queues it again */
			else
				teardown(c);
		}
	} while (srv->kicked);
	if (!srv->shut_down)
		uv_idle_stop(&srv->idle);
	anes_server_drained(srv);
}

/* ---- output ---------------------------------------------------------------- */

/*
 * Output memory (docs/protocol.md, "Limits"): the bytes queued on a
 * connection and not yet sent are charged to its client process, its uid
 * and the daemon (ANES_RES_OUTPUT_BYTES) before they are queued, whoever
 * made the reply (the loop, a worker or a lane thread whose send fell
 * short: only the loop queues), and given back as they leave (out_settle)
 * or when the connection fails.  Over a limit, the connection holding the
 * most unsent output within it is dropped, as a client that does not read.
 */

/* Loop, send_mu held: give back what left the queue (or never entered it). */
static void out_settle(anes_conn *c)
{
	if (c->out_charged > c->io.out_bytes) {
		anes_tenant_uncharge(c->tenant, ANES_RES_OUTPUT_BYTES, c->out_charged - c->io.out_bytes,
		                     true);
		c->out_charged = c->io.out_bytes;
	}
}

/* The connection with the most unsent output within the limit that a
 * charge of n bytes to c's process refused (rc): the process's, its uid's
 * or the daemon's. */
static anes_conn *out_victim(anes_conn *c, int rc, uint64_t n)
{
	anes_tenant *t = c->tenant;
	bool uid = rc == -EDQUOT && anes_tenant_uid_over(t, ANES_RES_OUTPUT_BYTES, n);
	anes_conn *best = NULL;
	for (anes_conn *o = c->srv->conns; o; o = o->next) {
		if (o->failed || (rc == -EDQUOT && !uid && o->tenant != t) ||
		    (uid && o->tenant->user != t->user))
			continue;
		if (!best || o->io.out_bytes > best->io.out_bytes)
			best = o;
	}
	return best;
}

/* Loop: charge n bytes of output of c before they are queued.  Over a
 * limit the connection holding the most within it is dropped and the
 * charge tried again; false when c itself was dropped (or had failed). */
static bool out_reserve(anes_conn *c, uint64_t n)
{
	for (int tries = 0; tries < 2 && !c->failed; tries++) {
		int rc = anes_tenant_charge(c->tenant, ANES_RES_OUTPUT_BYTES, n, true);
		if (rc == 0) {
			c->out_charged += n;
			return true;
		}
		char why[ANES_ERRMSG_MAX];
		anes_tenant_limit_msg(c->tenant, ANES_RES_OUTPUT_BYTES, n, rc, why, sizeof(why));
		anes_conn *v = tries == 0 ? out_victim(c, rc, n) : NULL;
		drop_over(v ? v : c, why);
	}
	return false;
}

/* Loop: send what is queued, unless a worker's frame is half sent (its
 * rest comes first, from the job's done()). */
static int locked_flush(anes_conn *c)
{
	pthread_mutex_lock(&c->send_mu);
	int r = c->wblocked ? -EAGAIN : anes_io_flush(&c->io);
	out_settle(c);
	pthread_mutex_unlock(&c->send_mu);
	return r;
}

static void conn_flush(anes_conn *c)
{
	int r = locked_flush(c);
	if (r == 0 || r == -EAGAIN || r == -EINTR) {
		update_poll(c);
		return;
	}
	anes_conn_fail(c, r == -EPIPE || r == -ECONNRESET ? "connection closed by client" : strerror(-r));
}

/* anes_conn_queue; several: data is whole frames without fds back to back
 * (a lane's batch of replies), fds none. */
static void conn_queue(anes_conn *c, void *data, size_t len, int *fds, unsigned nfds, bool several)
{
	if (c->failed) {
		free(data);
		close_fds(fds, nfds);
		return;
	}
	if (c->io.out_bytes + len > c->srv->lim.drop_unsent_hard_bytes) {
		free(data);
		close_fds(fds, nfds);
		if (!c->unsent_over)
			c->unsent_since_ms = uv_now(&c->srv->loop);
		anes_conn_drop_slow(c);
		return;
	}
	if (!out_reserve(c, len)) {
		free(data);
		close_fds(fds, nfds);
		return;
	}
	pthread_mutex_lock(&c->send_mu);
	int r = several ? anes_io_queue_rest(&c->io, data, len, 0)
	                : anes_io_queue(&c->io, data, len, fds, nfds);
	out_settle(c);   /* a failed queue gives the charge back */
	pthread_mutex_unlock(&c->send_mu);
	for (unsigned i = 0; i < nfds; i++)
		fds[i] = -1;
	if (r < 0) {
		fail_logged(c, "out of memory queueing a response");
		return;
	}
	if (c->srv->out_batch) {
		if (!c->flush_pending) {
			c->flush_pending = true;
			c->flush_next = c->srv->to_flush;
			c->srv->to_flush = anes_conn_ref(c);
		}
		return;
	}
	conn_flush(c);
}

void anes_conn_queue(anes_conn *c, void *data, size_t len, int *fds, unsigned nfds)
{
	conn_queue(c, data, len, fds, nfds, false);
}

void anes_conn_batch_begin(anes_server *srv)
{
	srv->out_batch++;
}

void anes_conn_batch_end(anes_server *srv)
{
	assert(srv->out_batch > 0);
	if (--srv->out_batch > 0)
		return;
	while (srv->to_flush) {
		anes_conn *c = srv->to_flush;
		srv->to_flush = c->flush_next;
		c->flush_pending = false;
		if (!c->failed)
			conn_flush(c);
		anes_conn_unref(c);
	}
}

void anes_conn_send(anes_conn *c, anes_frame *f, uint32_t msgid, int *fds, unsigned nfds)
{
	void *data;
	size_t len;
	int r = anes_frame_finish(f, nfds, c->io.max_frame, &data, &len);
	if (r < 0) {
		anes_frame_release(f);
		close_fds(fds, nfds);
		if (r == -EMSGSIZE)
			anes_conn_reply_error(c, msgid, ANES_WERR_INTERNAL, "response exceeds max_frame");
		else
			anes_conn_reply_error(c, msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return;
	}
	anes_conn_queue(c, data, len, fds, nfds);
}

void anes_conn_reply_empty(anes_conn *c, uint32_t msgid)
{
	anes_frame f;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, msgid, 0);
	anes_conn_send(c, &f, msgid, NULL, 0);
}

void anes_conn_reply_error(anes_conn *c, uint32_t msgid, int code, const char *fmt, ...)
{
	char msg[ANES_ERRMSG_MAX];
	va_list ap;
	void *data;
	size_t len;

	if (c->failed)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	anes_frame f;
	anes_frame_init(&f);
	anes_pack_error(&f.pk, msgid, code, msg);
	int r = anes_frame_finish(&f, 0, c->io.max_frame, &data, &len);
	if (r < 0) {
		anes_frame_release(&f);
		anes_conn_fail(c, "out of memory sending an error");
		return;
	}
	anes_conn_queue(c, data, len, NULL, 0);
}

/* Send an error notification with code (best effort), then fail c; logged
 * always unless it is a protocol error (a client's bug, logged with -v). */
static void close_with_error(anes_conn *c, int code, const char *msg)
{
	void *data;
	size_t len;

	if (c->failed)
		return;
	anes_frame f;
	anes_frame_init(&f);
	anes_pack_notify(&f.pk, "error", 3);
	anes_pack_str(&f.pk, "code");
	msgpack_pack_uint32(&f.pk, (uint32_t)code);
	anes_pack_str(&f.pk, "name");
	anes_pack_str(&f.pk, anes_wire_error_name(code));
	anes_pack_str(&f.pk, "message");
	anes_pack_text(&f.pk, msg);
	if (anes_frame_finish(&f, 0, c->io.max_frame, &data, &len) == 0) {
		/* Best effort: whatever the socket takes now; the rest is
		 * dropped (and so is all of it, over an output limit). */
		if (anes_tenant_charge(c->tenant, ANES_RES_OUTPUT_BYTES, len, true) == 0) {
			c->out_charged += len;
			pthread_mutex_lock(&c->send_mu);
			if (anes_io_queue(&c->io, data, len, NULL, 0) == 0 && !c->wblocked)
				(void)anes_io_flush(&c->io);
			out_settle(c);
			pthread_mutex_unlock(&c->send_mu);
		} else {
			free(data);
		}
	} else {
		anes_frame_release(&f);
	}
	if (code != ANES_WERR_PROTOCOL) {
		fail_logged(c, msg);
		return;
	}
	char why[ANES_ERRMSG_MAX + 32];
	snprintf(why, sizeof(why), "protocol error: %s", msg);
	anes_conn_fail(c, why);
}

void anes_conn_close_with_error(anes_conn *c, int code, const char *msg)
{
	close_with_error(c, code, msg);
}

void anes_conn_protocol_error(anes_conn *c, const char *fmt, ...)
{
	char msg[ANES_ERRMSG_MAX];
	va_list ap;

	if (c->failed)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	close_with_error(c, ANES_WERR_PROTOCOL, msg);
}

size_t anes_conn_try_send_locked(anes_conn *c, const void *data, size_t len)
{
	if (c->wclosed || c->wblocked || c->io.out_head)
		return 0;
	struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
	ssize_t n = anes_io_try_send(c->fd, &iov, 1, NULL, 0);
	if (n <= 0)
		return 0;   /* full, or an error the loop finds when it sends */
	if ((size_t)n < len)
		c->wblocked = true;   /* nothing may go before the rest */
	return (size_t)n;
}

void anes_conn_direct_seen(anes_conn *c)
{
	atomic_fetch_sub(&c->direct_unseen, 1);
}

void anes_conn_queue_rest(anes_conn *c, void *data, size_t len, size_t sent)
{
	int r = 0;
	bool charged = c->failed || sent >= len || out_reserve(c, len - sent);
	pthread_mutex_lock(&c->send_mu);
	c->wblocked = false;
	if (c->wclosed || !charged) {
		free(data);
	} else {
		r = anes_io_queue_rest(&c->io, data, len, sent);
		out_settle(c);
	}
	pthread_mutex_unlock(&c->send_mu);
	if (r < 0) {
		/* the stream is out of step now */
		fail_logged(c, r == -ENOMEM ? "out of memory queueing a response"
		                            : "a response to queue was malformed");
		return;
	}
	if (c->failed)
		return;
	if (c->io.out_bytes > c->srv->lim.drop_unsent_hard_bytes) {
		if (!c->unsent_over)
			c->unsent_since_ms = uv_now(&c->srv->loop);
		anes_conn_drop_slow(c);
		return;
	}
	conn_flush(c);
}

/* Before handling a request: deliver the completions of replies that
 * workers already sent on c.  A worker holds send_mu from its send until
 * its job is on the done list, so taking send_mu once makes them visible. */
static void sync_direct(anes_conn *c)
{
	if (atomic_load(&c->direct_unseen) == 0 || !c->srv->pool)
		return;
	pthread_mutex_lock(&c->send_mu);
	pthread_mutex_unlock(&c->send_mu);
	anes_pool_collect(c->srv->pool);
}

/* ---- input limits ------------------------------------------------------------
 *
 * A frame up to ANES_IO_RBUF_MIN (64 KiB) is read into the connection's base
 * buffer.  A larger one needs the rest of its size reserved from the daemon's
 * max_input_bytes before its buffer grows (anes_io's charge hook, on the
 * thread that reads): all of it at once, so that a connection holding a
 * reservation can always finish its frame, and nothing is allocated for a
 * frame without one.  A connection refused is not read any more and waits
 * on srv->input_wait_*, oldest first; room given back resumes the first
 * waiter, and only it may take room while it waits, so that a large frame
 * is not starved by later ones.  The same reservation is charged first to
 * the connection's client process and uid (ANES_RES_INPUT_BYTES, their
 * max_client_input_bytes and max_uid_input_bytes): refused there, the
 * connection waits apart from that list (input_tenant_wait), so that a
 * process at its own limit never holds up other clients, and is resumed
 * when its process or uid gives room back.  Reservations are freed when the frame is
 * taken or the connection goes; a stalled one by the frame deadline.
 *
 * Deadlines (srv->input_timer): hello within hello_timeout_ms of the
 * connect; a frame's last byte within frame_timeout_ms of its first
 * (frame_since_ns, moved on by the time the loop did not read the
 * connection: waiting for room, max_inflight, max_unsent_bytes).  Past
 * either, the client gets an error notification `limit` and is closed.
 */

/* Under input_mu: whether n more bytes fit. */
static bool input_fits(const anes_server *srv, uint64_t n)
{
	return srv->input_used <= srv->lim.max_input_bytes &&
	       n <= srv->lim.max_input_bytes - srv->input_used;
}

/* Under input_mu: whether the first waiter's frame fits now. */
static bool input_head_fits(const anes_server *srv)
{
	const anes_conn *h = srv->input_wait_head;
	return h && input_fits(srv, h->input_need);
}

/* Whether c's process and uid have room for n more bytes of input. */
static bool input_tenant_fits(const anes_conn *c, uint64_t n)
{
	const anes_tenant *t = c->tenant;
	const anes_limits *lim = &c->srv->lim;
	uint64_t cl = anes_res_client_limit(lim, ANES_RES_INPUT_BYTES);
	uint64_t cu = anes_tenant_use(t, ANES_RES_INPUT_BYTES);
	return cu <= cl && n <= cl - cu && !anes_tenant_uid_over(t, ANES_RES_INPUT_BYTES, n);
}

/* Under input_mu: take c off the waiting list; whether the new first
 * waiter's frame fits. */
static bool input_list_remove(anes_conn *c)
{
	anes_server *srv = c->srv;
	if (!c->input_waiting)
		return false;
	bool first = srv->input_wait_head == c;
	if (c->input_prev)
		c->input_prev->input_next = c->input_next;
	else
		srv->input_wait_head = c->input_next;
	if (c->input_next)
		c->input_next->input_prev = c->input_prev;
	else
		srv->input_wait_tail = c->input_prev;
	c->input_next = c->input_prev = NULL;
	c->input_waiting = false;
	return first && input_head_fits(srv);
}

static bool input_charge(anes_io *io, int64_t delta)
{
	anes_conn *c = ANES_CONTAINER_OF(io, anes_conn, io);
	anes_server *srv = c->srv;
	anes_tenants *set = &srv->tenants;
	bool ok = true, wake = false;

	if (delta > 0 && anes_tenant_charge(c->tenant, ANES_RES_INPUT_BYTES, (uint64_t)delta, false) < 0) {
		pthread_mutex_lock(&srv->input_mu);
		c->input_need = (uint64_t)delta;
		c->input_by_tenant = true;   /* for input_wait */
		pthread_mutex_unlock(&srv->input_mu);
		return false;
	}
	if (delta < 0)
		anes_tenant_uncharge(c->tenant, ANES_RES_INPUT_BYTES, (uint64_t)-delta, false);
	pthread_mutex_lock(&srv->input_mu);
	if (delta > 0) {
		uint64_t d = (uint64_t)delta;
		c->input_by_tenant = false;
		if ((srv->input_wait_head && srv->input_wait_head != c) || !input_fits(srv, d)) {
			c->input_need = d;   /* for input_wait */
			ok = false;
		} else {
			srv->input_used += d;
			atomic_fetch_add_explicit(&set->total[ANES_RES_INPUT_BYTES], d, memory_order_relaxed);
			if (c->input_waiting) {   /* the first waiter got its room */
				srv->input_wait_head = c->input_next;
				if (c->input_next)
					c->input_next->input_prev = NULL;
				else
					srv->input_wait_tail = NULL;
				c->input_next = c->input_prev = NULL;
				c->input_waiting = false;
				wake = input_head_fits(srv);
			}
		}
	} else {
		srv->input_used -= (uint64_t)-delta;
		atomic_fetch_sub_explicit(&set->total[ANES_RES_INPUT_BYTES], (uint64_t)-delta,
		                          memory_order_relaxed);
		wake = input_head_fits(srv) || srv->input_tenant_waiters > 0;
	}
	wake = wake && srv->input_live;
	pthread_mutex_unlock(&srv->input_mu);
	if (!ok)
		anes_tenant_uncharge(c->tenant, ANES_RES_INPUT_BYTES, (uint64_t)delta, false);
	if (wake)
		uv_async_send(&srv->input_async);
	return ok;
}

/* Loop: c no longer waits for its process's or uid's room. */
static void input_tenant_unwait(anes_conn *c)
{
	anes_server *srv = c->srv;
	if (!c->input_tenant_wait)
		return;
	pthread_mutex_lock(&srv->input_mu);
	srv->input_tenant_waiters--;
	pthread_mutex_unlock(&srv->input_mu);
	c->input_tenant_wait = false;
	if (c->twait_prev)
		c->twait_prev->twait_next = c->twait_next;
	else
		srv->input_twait = c->twait_next;
	if (c->twait_next)
		c->twait_next->twait_prev = c->twait_prev;
	c->twait_prev = c->twait_next = NULL;
}

/* Loop: c's frame got no room (-EDQUOT): stop reading it until it may try
 * again. */
static void input_wait(anes_conn *c)
{
	anes_server *srv = c->srv;
	pthread_mutex_lock(&srv->input_mu);
	if (c->input_by_tenant) {
		/* Its own process or uid is at its limit: wait apart, never
		 * first in line for the daemon's room. */
		bool wake = input_list_remove(c) && srv->input_live;
		bool added = !c->input_tenant_wait;
		if (added)
			srv->input_tenant_waiters++;
		uint64_t need = c->input_need;
		pthread_mutex_unlock(&srv->input_mu);
		if (wake)
			uv_async_send(&srv->input_async);
		if (added) {
			c->input_tenant_wait = true;
			c->twait_prev = NULL;
			c->twait_next = srv->input_twait;
			if (c->twait_next)
				c->twait_next->twait_prev = c;
			srv->input_twait = c;
		}
		/* Room may have come back since it was refused: then read on. */
		c->input_blocked = !input_tenant_fits(c, need);
		if (!c->input_blocked)
			input_tenant_unwait(c);
		return;
	}
	if (!c->input_waiting) {
		c->input_waiting = true;
		c->input_prev = srv->input_wait_tail;
		c->input_next = NULL;
		if (srv->input_wait_tail)
			srv->input_wait_tail->input_next = c;
		else
			srv->input_wait_head = c;
		srv->input_wait_tail = c;
	}
	/* Room may have come back since it was refused: then read on. */
	c->input_blocked = !(srv->input_wait_head == c && input_fits(srv, c->input_need));
	pthread_mutex_unlock(&srv->input_mu);
}

/* Loop: off the waiting list (teardown). */
static void input_unwait(anes_conn *c)
{
	anes_server *srv = c->srv;
	input_tenant_unwait(c);
	pthread_mutex_lock(&srv->input_mu);
	bool wake = input_list_remove(c) && srv->input_live;
	pthread_mutex_unlock(&srv->input_mu);
	c->input_blocked = false;
	if (wake)
		uv_async_send(&srv->input_async);
}

void anes_conn_on_input_async(uv_async_t *h)
{
	anes_server *srv = h->data;
	pthread_mutex_lock(&srv->input_mu);
	anes_conn *c = input_head_fits(srv) ? srv->input_wait_head : NULL;
	pthread_mutex_unlock(&srv->input_mu);
	/* The first waiter reads again; refused again, it stays first. */
	if (c && c->input_blocked && !c->failed) {
		c->input_blocked = false;
		update_poll(c);
	}
	/* Those waiting for their process's or uid's room whose room is back
	 * (their list: the connections not waiting cost nothing here). */
	for (anes_conn *w = srv->input_twait, *next; w; w = next) {
		next = w->twait_next;
		pthread_mutex_lock(&srv->input_mu);
		uint64_t need = w->input_need;
		pthread_mutex_unlock(&srv->input_mu);
		if (w->failed || !input_tenant_fits(w, need))
			continue;
		input_tenant_unwait(w);
		w->input_blocked = false;
		update_poll(w);
	}
}

/* The read side's owner, after reading or taking frames: start (or end)
 * the deadline of the incomplete frame buffered. */
static void track_partial(anes_conn *c)
{
	anes_io_trim(&c->io);
	const uint8_t *payload;
	uint32_t len;
	unsigned nfds;
	bool partial = c->io.rlen > c->io.rpos &&
	               anes_io_peek_frame(&c->io, &payload, &len, &nfds) == 0;
	uint64_t since = atomic_load_explicit(&c->frame_since_ns, memory_order_relaxed);
	if (!partial) {
		if (since)
			atomic_store_explicit(&c->frame_since_ns, 0, memory_order_relaxed);
	} else if (!since || c->frame_off != c->rd_consumed) {
		c->frame_off = c->rd_consumed;
		uint64_t now = anes_clock_ns();
		atomic_store_explicit(&c->frame_since_ns, now ? now : 1, memory_order_relaxed);
	}
}

/* Loop, whenever what it polls may change: time it does not read c does
 * not count against c's frame deadline. */
static void track_pause(anes_conn *c, bool reading)
{
	if (!reading) {
		if (!c->paused_since_ns)
			c->paused_since_ns = anes_clock_ns() | 1;
		return;
	}
	if (!c->paused_since_ns)
		return;
	uint64_t since = atomic_load_explicit(&c->frame_since_ns, memory_order_relaxed);
	if (since)
		atomic_store_explicit(&c->frame_since_ns, since + (anes_clock_ns() - c->paused_since_ns),
		                      memory_order_relaxed);
	c->paused_since_ns = 0;
}

uint64_t anes_conn_input_tick_ms(const anes_server *srv)
{
	uint64_t t = UINT64_MAX;
	if (srv->lim.hello_timeout_ms)
		t = srv->lim.hello_timeout_ms;
	if (srv->lim.frame_timeout_ms && srv->lim.frame_timeout_ms < t)
		t = srv->lim.frame_timeout_ms;
	t /= 4;
	return t < 10 ? 10 : t > 1000 ? 1000 : t;
}

static void timed_out(anes_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void timed_out(anes_conn *c, const char *fmt, ...)
{
	char msg[ANES_ERRMSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	c->srv->stats.timed_out++;
	close_with_error(c, ANES_WERR_LIMIT, msg);
}

void anes_conn_on_input_timer(uv_timer_t *h)
{
	anes_server *srv = h->data;
	const anes_limits *lim = &srv->lim;
	uint64_t now = anes_clock_ns();

	for (anes_conn *c = srv->conns; c; c = c->next) {
		if (c->failed)
			continue;
		if (!c->hello_done && lim->hello_timeout_ms &&
		    now - c->created_ns >= (uint64_t)lim->hello_timeout_ms * 1000000u) {
			timed_out(c, "no hello within %u ms of connecting", lim->hello_timeout_ms);
			continue;
		}
		uint64_t since = atomic_load_explicit(&c->frame_since_ns, memory_order_relaxed);
		if (!since || !lim->frame_timeout_ms)
			continue;
		if (c->paused_since_ns)
			since += now - c->paused_since_ns;   /* not read now: not counted */
		if (now > since && now - since >= (uint64_t)lim->frame_timeout_ms * 1000000u)
			timed_out(c, "a frame was not complete %u ms after its first byte",
			          lim->frame_timeout_ms);
	}
}

/* ---- input ------------------------------------------------------------------ */

static void handle_frame(anes_conn *c, const uint8_t *payload, uint32_t len, int *fds,
                         unsigned nfds)
{
	msgpack_zone *zone = &c->srv->zone;   /* the loop decodes one request at a time */
	anes_msg m;

	if (anes_run_request(c, payload, len, nfds))
		return;   /* a run: run/run.c reads it in one pass */
	int r = anes_msg_decode(payload, len, zone, &m);
	if (r == -ENOMEM) {
		anes_conn_fail(c, "out of memory decoding a message");
	} else if (r < 0) {
		anes_conn_protocol_error(c, "malformed message");
	} else if (m.type == ANES_MSG_REQUEST) {
		anes_dispatch_request(c, &m, fds, nfds);
	}
	/* Notifications (and responses, the daemon sends no requests) are
	 * ignored; their fds are closed by the caller.  What the request
	 * needs later was copied out of the zone. */
	msgpack_zone_clear(zone);
}

static void conn_process(anes_conn *c)
{
	/* The lane is not armed meanwhile (update_poll): the receive buffer is
	 * trimmed below, after the last payload is done with. */
	c->processing = true;
	while (can_take_requests(c)) {
		const uint8_t *payload;
		uint32_t len;
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nfds = 0;

		int r = anes_io_next_frame(&c->io, &payload, &len, fds, &nfds);
		if (r == 0)
			break;
		if (r == -EMSGSIZE) {
			if (!c->hello_done)
				anes_conn_protocol_error(c, "a frame before hello exceeds max_hello_frame "
				                            "(%u bytes)", c->io.max_frame);
			else
				anes_conn_protocol_error(c, "frame exceeds max_frame (%u bytes)",
				                         c->io.max_frame);
			break;
		}
		if (r < 0) {
			anes_conn_protocol_error(c, "bad frame header or file descriptors");
			break;
		}
		sync_direct(c);
		if (c->failed) {
			close_fds(fds, nfds);
			break;
		}
		c->predrain_frame = c->rd_consumed < c->drain_cutoff;
		c->rd_consumed += ANES_FRAME_HEADER_SIZE + (size_t)len;
		handle_frame(c, payload, len, fds, nfds);
		c->predrain_frame = false;
		close_fds(fds, nfds);
		if (c->hello_done && c->io.max_frame != c->srv->lim.max_frame)
			c->io.max_frame = c->srv->lim.max_frame;
	}
	c->processing = false;
	if (!c->failed && !c->lane)
		track_partial(c);   /* and a large frame taken gives its memory back */
}

/* A read that ended the connection: 0 (end of file) or a -errno. */
static void read_failed(anes_conn *c, ssize_t n)
{
	if (n == 0)
		anes_conn_fail(c, "connection closed by client");
	else if (n == -EPROTO)
		anes_conn_protocol_error(c, "bad ancillary data (too many fds or not SCM_RIGHTS)");
	else if (n == -EMFILE)   /* the daemon's shortage: limit, which libaneshare retries */
		close_with_error(c, ANES_WERR_LIMIT,
		                 "the daemon ran out of file descriptors receiving this client's fds");
	else
		anes_conn_fail(c, n == -ECONNRESET ? "connection reset by client" : strerror((int)-n));
}

static void conn_read(anes_conn *c)
{
	ssize_t n = anes_io_read(&c->io);
	if (n > 0)
		c->rd_total += (uint64_t)n;
	if (n == -EAGAIN || n == -EINTR)
		return;
	if (n == -EDQUOT) {
		input_wait(c);   /* conn_process would find no whole frame */
		return;
	}
	if (n <= 0 && n != -ENOBUFS) {
		read_failed(c, n);
		return;
	}
	conn_process(c);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
	anes_conn *c = h->data;

	if (c->failed)
		return;
	if (status < 0) {
		anes_conn_fail(c, uv_strerror(status));
		return;
	}
	if (events & UV_WRITABLE) {
		conn_flush(c);
		/* Output drained: frames held back by max_unsent_bytes can go. */
		if (!c->failed && !anes_io_want_write(&c->io))
			conn_process(c);
	}
	if ((events & UV_READABLE) && can_take_requests(c))
		conn_read(c);
	update_poll(c);
}

/* ---- for the lanes (lanes.h) ---------------------------------------------------- */

void anes_conn_update_poll(anes_conn *c)
{
	update_poll(c);
}

int anes_conn_poll_events(anes_conn *c, int ev)
{
	int r = ev ? uv_poll_start(&c->poll, ev, on_poll) : uv_poll_stop(&c->poll);
	if (r == 0)
		c->events = ev;
	return r;
}

void anes_conn_read_failed(anes_conn *c, ssize_t n)
{
	read_failed(c, n);
}

void anes_conn_input_wait(anes_conn *c)
{
	input_wait(c);
}

void anes_conn_schedule_deferred(anes_server *srv)
{
	schedule_deferred(srv);
}

void anes_conn_track_partial(anes_conn *c)
{
	track_partial(c);
}

void anes_conn_fail_logged(anes_conn *c, const char *why)
{
	fail_logged(c, why);
}

void anes_conn_queue_frames(anes_conn *c, void *data, size_t len)
{
	conn_queue(c, data, len, NULL, 0, true);
}
