/* SPDX-License-Identifier: MIT */
/*
 * Events: event.create, event.signal, event.wait, event.release, handles,
 * waiters, closing (event.h; the locking rule is there).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"

/* ---- the event ----------------------------------------------------------------- */

anes_event *anes_event_ref(anes_event *ev)
{
	ev->refs++;
	return ev;
}

void anes_event_unref(anes_event *ev)
{
	if (!ev || --ev->refs > 0)
		return;
	anes_server *srv = ev->srv;
	if (ev->prev)
		ev->prev->next = ev->next;
	else
		srv->events = ev->next;
	if (ev->next)
		ev->next->prev = ev->prev;
	srv->stats.events--;
	pthread_mutex_destroy(&ev->mu);
	free(ev);
}

uint64_t anes_event_value(anes_event *ev)
{
	pthread_mutex_lock(&ev->mu);
	uint64_t v = ev->value;
	pthread_mutex_unlock(&ev->mu);
	return v;
}

static void unlink_waiter(anes_event *ev, anes_evwaiter *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else
		ev->waiters = w->next;
	if (w->next)
		w->next->prev = w->prev;
	w->prev = w->next = NULL;
	w->queued = false;
}

/* Under ev->mu: take the waiters that end (all of them, or those met by
 * the value now) with outcome, onto *list (through next). */
static anes_evwaiter *take_waiters(anes_event *ev, bool all, int outcome)
{
	anes_evwaiter *list = NULL;
	for (anes_evwaiter *w = ev->waiters, *next; w; w = next) {
		next = w->next;
		if (!all && w->value > ev->value)
			continue;
		unlink_waiter(ev, w);
		w->outcome = (uint8_t)(all && w->value <= ev->value ? ANES_EVW_MET : outcome);
		w->final = ev->value;
		w->next = list;
		list = w;
	}
	return list;
}

/* After ev->mu: each waiter's wake() (it may free the waiter). */
static void wake_list(anes_evwaiter *list)
{
	while (list) {
		anes_evwaiter *w = list;
		list = w->next;
		w->next = NULL;
		w->wake(w);
	}
}

void anes_event_raise(anes_event *ev, uint64_t v)
{
	pthread_mutex_lock(&ev->mu);
	if (v <= ev->value) {
		pthread_mutex_unlock(&ev->mu);
		return;
	}
	ev->value = v;
	anes_evwaiter *list = take_waiters(ev, false, ANES_EVW_MET);
	pthread_mutex_unlock(&ev->mu);
	wake_list(list);
}

void anes_event_signaler_add(anes_event *ev)
{
	pthread_mutex_lock(&ev->mu);
	ev->signalers++;
	pthread_mutex_unlock(&ev->mu);
}

void anes_event_signaler_done(anes_event *ev)
{
	anes_evwaiter *list = NULL;
	pthread_mutex_lock(&ev->mu);
	if (--ev->signalers == 0 && !ev->closed) {
		/* Nobody can raise it any more: waits above its value fail. */
		ev->closed = true;
		list = take_waiters(ev, true, ANES_EVW_CLOSED);
	}
	pthread_mutex_unlock(&ev->mu);
	wake_list(list);
}

int anes_event_wait_add(anes_evwaiter *w)
{
	anes_event *ev = w->ev;
	pthread_mutex_lock(&ev->mu);
	int r = ANES_EVW_PENDING;
	if (w->value <= ev->value)
		r = ANES_EVW_MET;
	else if (ev->closed)
		r = ANES_EVW_CLOSED;
	w->final = ev->value;
	w->outcome = (uint8_t)r;
	if (r == ANES_EVW_PENDING) {
		w->prev = NULL;
		w->next = ev->waiters;
		if (ev->waiters)
			ev->waiters->prev = w;
		ev->waiters = w;
		w->queued = true;
	}
	pthread_mutex_unlock(&ev->mu);
	return r;
}

bool anes_event_cancel(anes_evwaiter *w)
{
	anes_event *ev = w->ev;
	pthread_mutex_lock(&ev->mu);
	bool mine = w->queued;
	if (mine) {
		unlink_waiter(ev, w);
		w->outcome = ANES_EVW_CANCELLED;
		w->final = ev->value;
	}
	pthread_mutex_unlock(&ev->mu);
	return mine;
}

void anes_events_drain(anes_server *srv)
{
	for (anes_event *ev = srv->events; ev; ev = ev->next) {
		pthread_mutex_lock(&ev->mu);
		anes_evwaiter *list = take_waiters(ev, true, ANES_EVW_SHUTDOWN);
		pthread_mutex_unlock(&ev->mu);
		wake_list(list);
	}
}

bool anes_events_only_parked(anes_server *srv)
{
	uint64_t busy = 0;
	for (const anes_conn *c = srv->conns; c; c = c->next)
		busy += (uint64_t)c->inflight + c->ev_waits;
	uint32_t parked = atomic_load(&srv->ev_parked);
	return parked > 0 && busy == parked;
}

/* ---- handles ------------------------------------------------------------------------ */

static anes_evhandle *lookup(anes_conn *c, const anes_msg *m, uint32_t *ret_id)
{
	uint32_t id;
	int r = anes_mp_u32(m->params, "id", &id);
	if (r < 0) {
		anes_reply_param(c, m, "id", r);
		return NULL;
	}
	anes_evhandle *h = anes_idt_find(&c->event_ids, id);
	if (!h) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_SUCH_EVENT, "no event %u", id);
		return NULL;
	}
	if (ret_id)
		*ret_id = id;
	return h;
}

anes_evhandle *anes_event_handle_add(anes_conn *c, uint32_t msgid, anes_event *ev, bool owner)
{
	const anes_limits *lim = &c->srv->lim;
	uint32_t id;
	if (c->event_ids.n >= lim->max_events_per_conn) {
		anes_conn_reply_error(c, msgid, ANES_WERR_LIMIT,
		                      "this connection holds %u event handles (max_events_per_conn)",
		                      c->event_ids.n);
		return NULL;
	}
	if (anes_idt_peek(&c->event_ids, &id) < 0) {
		anes_conn_reply_error(c, msgid, ANES_WERR_LIMIT, "event IDs exhausted");
		return NULL;
	}
	anes_evhandle *h = calloc(1, sizeof(*h));
	if (!h || anes_idt_reserve(&c->event_ids, 1) < 0) {
		free(h);
		anes_conn_reply_error(c, msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return NULL;
	}
	h->ev = anes_event_ref(ev);
	h->conn = c;
	h->owner = owner;
	(void)anes_idt_insert(&c->event_ids, h, &h->id);   /* cannot fail: checked, reserved */
	c->tenant->events++;
	return h;
}

/* The handle leaves its table: its tokens die, an owner's stops counting as
 * a signaller (the event may close). */
static void handle_drop(anes_evhandle *h)
{
	anes_share_revoke_event(h);
	h->conn->tenant->events--;
	if (h->owner)
		anes_event_signaler_done(h->ev);
	anes_event_unref(h->ev);
	free(h);
}

/* ---- event.create -------------------------------------------------------------------- */

void anes_m_event_create(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	(void)fds;
	(void)nfds;
	anes_server *srv = c->srv;
	if (srv->stats.events >= srv->lim.max_daemon_events) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_LIMIT,
		                      "the daemon has %" PRIu64 " events (max_daemon_events)",
		                      srv->stats.events);
		return;
	}
	anes_event *ev = calloc(1, sizeof(*ev));
	if (!ev) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return;
	}
	pthread_mutex_init(&ev->mu, NULL);
	ev->srv = srv;
	ev->signalers = 1;   /* the owner handle */
	ev->next = srv->events;
	if (srv->events)
		srv->events->prev = ev;
	srv->events = ev;
	srv->stats.events++;
	anes_event_ref(ev);  /* held across the handle's making */
	anes_evhandle *h = anes_event_handle_add(c, m->msgid, ev, true);
	if (!h) {
		ev->signalers = 0;
		anes_event_unref(ev);
		return;
	}
	anes_event_unref(ev);
	anes_frame f;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, m->msgid, 1);
	anes_pack_kv_u64(&f.pk, "id", h->id);
	anes_conn_send(c, &f, m->msgid, NULL, 0);
}

/* ---- event.signal ---------------------------------------------------------------------- */

int anes_event_signal_check(const anes_evhandle *h, uint64_t value, char *msg, size_t msg_len)
{
	if (!h->owner) {
		snprintf(msg, msg_len, "event %u was imported: only its creator signals it", h->id);
		return -EPERM;
	}
	uint64_t now = anes_event_value(h->ev);
	if (value <= now) {
		snprintf(msg, msg_len, "event %u is at %" PRIu64 " already: a signal must raise it",
		         h->id, now);
		return -EINVAL;
	}
	return 0;
}

void anes_m_event_signal(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	(void)fds;
	(void)nfds;
	uint64_t value;
	int r = anes_mp_u64(m->params, "value", UINT64_MAX, &value);
	anes_evhandle *h = lookup(c, m, NULL);
	if (!h)
		return;
	if (r < 0) {
		anes_reply_param(c, m, "value", r);
		return;
	}
	char msg[128];
	if (anes_event_signal_check(h, value, msg, sizeof(msg)) < 0) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS, "%s", msg);
		return;
	}
	/* To max(value now, value): a run of this connection that signals it
	 * may have raised it further since the check. */
	anes_event_raise(h->ev, value);
	anes_conn_reply_empty(c, m->msgid);
}

/* ---- event.wait ---------------------------------------------------------------------------- */

typedef struct wait_req {
	anes_evwaiter w;
	anes_parked parked;
	anes_job job;           /* its done() answers (unless wake() did), on the loop */
	anes_conn *conn;        /* referenced */
	uint32_t msgid;
	/* A met wait's reply, sent by the thread that met it when nothing is
	 * queued before it (as a worker sends a run's): whole (sent ==
	 * len), in part (the rest queued by done()), or not at all. */
	uint8_t reply[48];
	size_t len, sent;
	bool direct;
} wait_req;

static void wait_answer(anes_conn *c, uint32_t msgid, const anes_evwaiter *w)
{
	if (w->outcome == ANES_EVW_MET) {
		anes_frame f;
		anes_frame_init(&f);
		anes_pack_result(&f.pk, msgid, 1);
		anes_pack_kv_u64(&f.pk, "value", w->final);
		anes_conn_send(c, &f, msgid, NULL, 0);
	} else if (w->outcome == ANES_EVW_CLOSED) {
		anes_conn_reply_error(c, msgid, ANES_WERR_EVENT_CLOSED,
		                      "event %u closed at %" PRIu64 ", below %" PRIu64, w->id, w->final,
		                      w->value);
	} else {
		anes_conn_reply_error(c, msgid, ANES_WERR_SHUTTING_DOWN,
		                      "the daemon is shutting down; event %u did not reach %" PRIu64,
		                      w->id, w->value);
	}
}

static void wait_no_work(anes_job *j)
{
	(void)j;
}

/* Loop (the pool's delivery): answer and free. */
static void wait_done(anes_job *j, bool cancelled)
{
	(void)cancelled;
	wait_req *wr = ANES_CONTAINER_OF(j, wait_req, job);
	anes_conn *c = wr->conn;
	if (wr->direct) {
		anes_conn_direct_seen(c);
		if (wr->sent < wr->len) {
			void *rest = malloc(wr->len);
			if (rest) {
				memcpy(rest, wr->reply, wr->len);
				anes_conn_queue_rest(c, rest, wr->len, wr->sent);
			} else {
				anes_conn_fail(c, "out of memory keeping a response");   /* half sent */
			}
		}
	}
	if (wr->parked.prev)
		wr->parked.prev->next = wr->parked.next;
	else if (c->parked == &wr->parked)
		c->parked = wr->parked.next;
	if (wr->parked.next)
		wr->parked.next->prev = wr->parked.prev;
	c->ev_waits--;
	if (!c->failed && !wr->direct)
		wait_answer(c, wr->msgid, &wr->w);
	anes_event_unref(wr->w.ev);
	anes_conn_kick(c);
	anes_conn_unref(c);
	free(wr);
}

static int small_write(void *data, const char *buf, size_t len)
{
	wait_req *wr = data;
	if (len > sizeof(wr->reply) - wr->len)
		return -1;
	memcpy(wr->reply + wr->len, buf, len);
	wr->len += len;
	return 0;
}

/* Any thread: the wait ended.  A met one is answered from here when
 * nothing is queued before its reply on the connection (no loop hop on a
 * pipeline's path); the rest, and the bookkeeping, are the loop's. */
static void wait_wake(anes_evwaiter *w)
{
	wait_req *wr = ANES_CONTAINER_OF(w, wait_req, w);
	anes_conn *c = wr->conn;
	anes_server *srv = c->srv;
	atomic_fetch_sub(&srv->ev_parked, 1);
	if (w->outcome != ANES_EVW_MET) {
		anes_pool_complete(srv->pool, &wr->job);
		return;
	}
	msgpack_packer pk;
	wr->len = ANES_FRAME_HEADER_SIZE;
	msgpack_packer_init(&pk, wr, small_write);
	anes_pack_result(&pk, wr->msgid, 1);
	anes_pack_kv_u64(&pk, "value", w->final);
	if (wr->len <= ANES_FRAME_HEADER_SIZE || wr->len > sizeof(wr->reply)) {
		anes_pool_complete(srv->pool, &wr->job);
		return;
	}
	anes_frame_header_write(wr->reply, (uint32_t)(wr->len - ANES_FRAME_HEADER_SIZE), 0);
	pthread_mutex_lock(&c->send_mu);
	atomic_fetch_add(&c->direct_unseen, 1);   /* before the client can see it */
	size_t n = c->wclosed ? 0 : anes_conn_try_send_locked(c, wr->reply, wr->len);
	if (n == 0) {
		atomic_fetch_sub(&c->direct_unseen, 1);
		pthread_mutex_unlock(&c->send_mu);
		anes_pool_complete(srv->pool, &wr->job);   /* done() answers */
		return;
	}
	wr->direct = true;
	wr->sent = n;
	/* On the done list before send_mu goes: the loop, taking send_mu and
	 * then collecting, is sure to see it (worker.c, job_end). */
	anes_pool_complete(srv->pool, &wr->job);
	pthread_mutex_unlock(&c->send_mu);
}

/* Loop, the connection closes: a wait still pending ends unanswered. */
static void wait_cancel(anes_parked *p)
{
	wait_req *wr = ANES_CONTAINER_OF(p, wait_req, parked);
	if (anes_event_cancel(&wr->w))
		wait_wake(&wr->w);   /* its done() sees the connection failed */
}

void anes_m_event_wait(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	(void)fds;
	(void)nfds;
	uint64_t value;
	int r = anes_mp_u64(m->params, "value", UINT64_MAX, &value);
	uint32_t id;
	anes_evhandle *h = lookup(c, m, &id);
	if (!h)
		return;
	if (r < 0) {
		anes_reply_param(c, m, "value", r);
		return;
	}
	anes_evwaiter probe = { .ev = h->ev, .id = id, .value = value };
	pthread_mutex_lock(&h->ev->mu);
	probe.final = h->ev->value;
	probe.outcome = value <= h->ev->value ? ANES_EVW_MET :
	                h->ev->closed ? ANES_EVW_CLOSED : ANES_EVW_PENDING;
	pthread_mutex_unlock(&h->ev->mu);
	if (probe.outcome != ANES_EVW_PENDING) {
		wait_answer(c, m->msgid, &probe);
		return;
	}
	if (c->ev_waits >= c->srv->lim.max_event_waits) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_LIMIT,
		                      "this connection has %u event.wait requests pending (max_event_waits)",
		                      c->ev_waits);
		return;
	}
	wait_req *wr = calloc(1, sizeof(*wr));
	if (!wr) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return;
	}
	wr->w = (anes_evwaiter){ .ev = anes_event_ref(h->ev), .id = id, .value = value,
	                         .wake = wait_wake };
	wr->job.work = wait_no_work;
	wr->job.done = wait_done;
	wr->conn = anes_conn_ref(c);
	wr->msgid = m->msgid;
	wr->parked.cancel = wait_cancel;
	wr->parked.next = c->parked;
	if (c->parked)
		c->parked->prev = &wr->parked;
	c->parked = &wr->parked;
	c->ev_waits++;
	atomic_fetch_add(&c->srv->ev_parked, 1);
	if (anes_event_wait_add(&wr->w) != ANES_EVW_PENDING)
		wait_wake(&wr->w);   /* met or closed meanwhile (another thread raised it) */
}

/* ---- event.release --------------------------------------------------------------------------- */

void anes_m_event_release(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	(void)fds;
	(void)nfds;
	uint32_t id;
	anes_evhandle *h = lookup(c, m, &id);
	if (!h)
		return;
	anes_idt_remove(&c->event_ids, id);
	handle_drop(h);
	anes_conn_reply_empty(c, m->msgid);
}

/* ---- teardown ------------------------------------------------------------------------------------ */

void anes_events_conn_gone(anes_conn *c)
{
	/* Its waits and parked runs first: cancel() unlinks each. */
	while (c->parked) {
		anes_parked *p = c->parked;
		c->parked = p->next;
		if (c->parked)
			c->parked->prev = NULL;
		p->prev = p->next = NULL;
		p->cancel(p);
	}
	for (uint32_t i = 0; i < c->event_ids.n; i++)
		handle_drop(c->event_ids.v[i].ptr);
	anes_idt_cleanup(&c->event_ids);
}

/* ---- event.signal on a lane ------------------------------------------------------------------- */

int anes_lane_event_request(anes_conn *c, const void *payload, uint32_t len, anes_wctx *ctx)
{
	anes_msg m;
	if (!c->hello_done)
		return 0;
	int r = anes_msg_decode(payload, len, &ctx->zone, &m);
	if (r < 0 || m.type != ANES_MSG_REQUEST || !anes_msg_method_is(&m, "event.signal")) {
		msgpack_zone_clear(&ctx->zone);
		return 0;   /* the loop's (and it reports what is wrong) */
	}
	uint32_t id;
	uint64_t value;
	char msg[128];
	int code = 0;
	int rid = anes_mp_u32(m.params, "id", &id);
	int rv = anes_mp_u64(m.params, "value", UINT64_MAX, &value);
	/* The table does not change while the lane holds the read side. */
	anes_evhandle *h = rid < 0 ? NULL : anes_idt_find(&c->event_ids, id);
	if (rid < 0) {
		code = ANES_WERR_INVALID_PARAMS;
		snprintf(msg, sizeof(msg), rid == -ENOENT ? "missing \"id\"" :
		         "\"id\" has the wrong type or is out of range");
	} else if (!h) {
		code = ANES_WERR_NO_SUCH_EVENT;
		snprintf(msg, sizeof(msg), "no event %u", id);
	} else if (rv < 0) {
		code = ANES_WERR_INVALID_PARAMS;
		snprintf(msg, sizeof(msg), rv == -ENOENT ? "missing \"value\"" :
		         "\"value\" has the wrong type or is out of range");
	} else if (anes_event_signal_check(h, value, msg, sizeof(msg)) < 0) {
		code = ANES_WERR_INVALID_PARAMS;
	} else {
		/* What it makes ready is collected on this thread and taken
		 * after the reply is sent (lanes.c). */
		anes_event_raise(h->ev, value);
	}
	uint32_t msgid = m.msgid;
	msgpack_zone_clear(&ctx->zone);
	anes_frame *f = &ctx->reply;
	anes_frame_reset(f);
	if (code)
		anes_pack_error(&f->pk, msgid, code, msg);
	else
		anes_pack_result(&f->pk, msgid, 0);
	if (anes_frame_seal(f, 0, c->srv->lim.max_frame) < 0)
		return -ENOMEM;
	return 1;
}
