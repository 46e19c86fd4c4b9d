/* SPDX-License-Identifier: MIT */
/*
 * libaneshare: the connection, the handshake and the request/response loop.
 *
 * The socket is blocking.  A synchronous call sends its request and reads
 * frames until its response arrives; responses to submitted runs that arrive
 * meanwhile are stashed in the pending table for aneshare_wait.
 *
 * When the stream ends without an `error` notification (the daemon died),
 * the connection is marked broken and the next call reconnects: same socket
 * path, hello, every live surface imported and every live program compiled
 * again (surface.c, program.c), then the call itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "anes_clock.h"
#include "internal.h"

/* ---- errors ---------------------------------------------------------------- */

static void vset_msg(char *buf, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void vset_msg(char *buf, const char *fmt, va_list ap)
{
	int n = vsnprintf(buf, ANESC_ERRMSG_MAX, fmt, ap);
	if (n < 0)
		buf[0] = '\0';
}

int anesc_fail(aneshare_conn *c, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vset_msg(c->last_error, fmt, ap);
	va_end(ap);
	return rc;
}

/* No more requests can be answered: fail every run still outstanding and
 * the synchronous call being waited for. */
static void fail_outstanding(aneshare_conn *c, int rc, const char *msg)
{
	for (size_t i = 0; i < c->n_pending; i++) {
		anesc_pending *p = &c->pending[i];
		if (!p->done) {
			p->done = true;
			p->rc = rc;
			p->msg = strdup(msg);
			c->n_outstanding--;
			if (p->cb)
				c->n_async_done++;
		}
	}
	if (c->sync_active && !c->sync_done) {
		c->sync_done = true;
		c->sync_killed = true;
		c->sync_rc = rc;
	}
}

/* Mark the connection unusable for good (once: the first cause wins). */
static void conn_kill(aneshare_conn *c, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void conn_kill(aneshare_conn *c, int rc, const char *fmt, ...)
{
	if (c->dead)
		return;
	va_list ap;
	va_start(ap, fmt);
	vset_msg(c->dead_msg, fmt, ap);
	va_end(ap);
	c->dead = rc;
	fail_outstanding(c, rc, c->dead_msg);
}

static void close_socket(aneshare_conn *c)
{
	anes_io_cleanup(&c->io);   /* closes received fds not yet claimed */
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	anes_io_init(&c->io, -1, c->io.max_frame);
}

int anesc_broken_rc(const aneshare_conn *c)
{
	return c->reconnect ? -ANESHARE_EDISCONNECTED : -ECONNRESET;
}

/* The stream ended without the daemon saying why: it died or was restarted.
 * Requests in flight fail (retryably, if we reconnect); the socket is closed
 * at once, and the next call reconnects. */
static void conn_break(aneshare_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_break(aneshare_conn *c, const char *fmt, ...)
{
	if (c->dead || c->broken)
		return;
	va_list ap;
	va_start(ap, fmt);
	vset_msg(c->broken_msg, fmt, ap);
	va_end(ap);
	c->broken = true;
	char msg[ANESC_ERRMSG_MAX + 64];
	snprintf(msg, sizeof msg, "connection to the daemon lost with the request in flight: %s",
	         c->broken_msg);
	fail_outstanding(c, anesc_broken_rc(c), msg);
	close_socket(c);
}

static int conn_dead(aneshare_conn *c)
{
	if (c->dead)
		return anesc_fail(c, c->dead, "%s", c->dead_msg);
	return anesc_fail(c, anesc_broken_rc(c), "%s", c->broken_msg);
}

/* Fail a synchronous call whose response the broken connection lost. */
static int conn_lost_inflight(aneshare_conn *c)
{
	if (c->dead)
		return conn_dead(c);
	return anesc_fail(c, anesc_broken_rc(c),
	                  "connection to the daemon lost with the request in flight: %s",
	                  c->broken_msg);
}

/* Error code for a daemon wire code: unknown codes are passed on as
 * -(EBASE + code) as long as they stay clear of the errno range. */
static int wire_rc(int64_t code)
{
	if (code < 1 || code > 8999)
		return -ANESHARE_EPROTOCOL;
	return -(ANESHARE_EBASE + (int)code);
}

/* Decode an error map into (rc, message); never fails. */
static int decode_error(const anes_msg *m, char *msg, size_t msg_len)
{
	int code;
	const char *s;
	uint32_t len;
	if (anes_msg_error(m, &code, &s, &len) < 0) {
		snprintf(msg, msg_len, "malformed error from the daemon");
		return -ANESHARE_EPROTOCOL;
	}
	if (len >= msg_len)
		len = (uint32_t)(msg_len - 1);
	memcpy(msg, s, len);
	msg[len] = '\0';
	/* A NUL inside the message would just cut it short: harmless. */
	return wire_rc(code);
}

/* ---- the pending table ------------------------------------------------------ */

static anesc_pending *pending_find(aneshare_conn *c, uint32_t msgid)
{
	for (size_t i = 0; i < c->n_pending; i++)
		if (c->pending[i].msgid == msgid)
			return &c->pending[i];
	return NULL;
}

int anesc_pending_add(aneshare_conn *c, uint32_t msgid)
{
	if (c->n_pending >= ANESC_MAX_PENDING)
		return anesc_fail(c, -EBUSY, "too many runs not waited for");
	if (c->n_pending == c->cap_pending) {
		size_t cap = c->cap_pending ? c->cap_pending * 2 : 16;
		anesc_pending *p = realloc(c->pending, cap * sizeof *p);
		if (!p)
			return anesc_fail(c, -ENOMEM, "out of memory");
		c->pending = p;
		c->cap_pending = cap;
	}
	c->pending[c->n_pending++] = (anesc_pending){ .msgid = msgid, .failed_step = -1 };
	c->n_outstanding++;
	return 0;
}

void anesc_pending_drop(aneshare_conn *c, uint32_t msgid)
{
	anesc_pending *p = pending_find(c, msgid);
	if (!p)
		return;
	if (!p->done)
		c->n_outstanding--;
	if (p->cb) {
		c->n_async--;
		if (p->done)
			c->n_async_done--;
	}
	free(p->msg);
	*p = c->pending[--c->n_pending];
}

/* ---- reading ------------------------------------------------------------------ */

static void close_fds(int *fds, unsigned nfds)
{
	for (unsigned i = 0; i < nfds; i++)
		if (fds[i] >= 0) {
			close(fds[i]);
			fds[i] = -1;
		}
}

static void handle_response(aneshare_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	if (c->sync_active && !c->sync_done && m->msgid == c->sync_msgid) {
		int rc;
		if (m->error) {
			rc = decode_error(m, c->last_error, sizeof c->last_error);
		} else {
			rc = c->sync_fn ? c->sync_fn(c, m->result, fds, nfds, c->sync_ud) : 0;
			if (rc >= 0) {
				for (unsigned i = 0; i < nfds; i++)
					if (fds[i] >= 0)
						rc = anesc_fail(c, -ANESHARE_EPROTOCOL,
						                "the daemon sent an fd where none belongs");
			}
		}
		c->sync_done = true;
		c->sync_rc = rc;
		return;
	}
	anesc_pending *p = pending_find(c, m->msgid);
	if (!p || p->done)
		return;   /* not ours (or a duplicate): ignore */
	char msg[ANESC_ERRMSG_MAX];
	int rc = 0;
	uint32_t step;
	if (m->error) {
		rc = decode_error(m, msg, sizeof msg);
		if (anes_mp_u32(m->error, "failed_step", &step) == 0 && step < INT32_MAX)
			p->failed_step = (int)step;
	} else if (nfds > 0) {
		rc = -ANESHARE_EPROTOCOL;
		snprintf(msg, sizeof msg, "the daemon sent an fd with a run result");
	} else {
		(void)anes_mp_u64(m->result, "elapsed_us", UINT64_MAX, &p->elapsed_us);
	}
	p->done = true;
	p->rc = rc;
	p->msg = rc < 0 ? strdup(msg) : NULL;
	c->n_outstanding--;
	if (p->cb)
		c->n_async_done++;
}

static void handle_notify(aneshare_conn *c, const anes_msg *m)
{
	if (!anes_msg_method_is(m, "error"))
		return;   /* unknown notifications are ignored */
	char msg[ANESC_ERRMSG_MAX];
	int code;
	const char *s;
	uint32_t len;
	int rc = -ANESHARE_EPROTOCOL;
	snprintf(msg, sizeof msg, "the daemon closed the connection");
	if (anes_msg_error(&(anes_msg){ .error = m->params }, &code, &s, &len) == 0) {
		rc = wire_rc(code);
		if (len >= sizeof msg)
			len = sizeof msg - 1;
		memcpy(msg, s, len);
		msg[len] = '\0';
	}
	/* Closed for the daemon's own resources or a deadline (docs/protocol.md,
	 * Limits): not final, the next call reconnects. */
	if (rc == -ANESHARE_ELIMIT || rc == -ANESHARE_ENO_MEMORY) {
		conn_break(c, "%s", msg);
		return;
	}
	conn_kill(c, rc, "%s", msg);
}

/*
 * Before a blocking wait sleeps, poll the socket for up to c->spin_us
 * (proto/anes_spin.h has the rules: yield to anything runnable here, stop
 * when the thread was off its CPU for a while or nothing came, a doubling
 * penalty after two spins in a row that got nothing in spin_us).  Only a wait for the one
 * request in flight spins: with more (pipelining), the daemon is busy
 * anyway and the CPU is better left to it.  Returns what anes_io_read returned, or -EAGAIN when the caller
 * should sleep in a blocking read.
 */
static ssize_t spin_read(aneshare_conn *c)
{
	size_t in_flight = c->n_outstanding + (c->sync_active && !c->sync_done);
	anes_spin_run run;
	if (in_flight > 1 || anes_spin_start(&c->spin, c->spin_us, &run) <= 0)
		return -EAGAIN;
	ssize_t n;
	c->io.msg_flags = MSG_DONTWAIT;
	do
		n = anes_io_read(&c->io);
	while ((n == -EAGAIN || n == -EINTR) && anes_spin_again(&run));
	c->io.msg_flags = 0;
	if (n == -EINTR)
		n = -EAGAIN;
	anes_spin_end(&c->spin, &run, n != -EAGAIN);
	return n;
}

/* Read and handle one frame: 1 when one was handled (or the connection
 * broke or died meanwhile); with nowait, 0 when none has arrived. */
static int pump(aneshare_conn *c, bool nowait)
{
	const uint8_t *payload;
	uint32_t len;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds = 0;

	for (;;) {
		if (c->dead || c->broken)
			return 1;
		int r = anes_io_next_frame(&c->io, &payload, &len, fds, &nfds);
		if (r < 0) {
			conn_kill(c, -ANESHARE_EPROTOCOL, "malformed frame from the daemon: %s",
			          strerror(-r));
			return 1;
		}
		if (r > 0)
			break;
		ssize_t n;
		if (nowait) {
			c->io.msg_flags = MSG_DONTWAIT;
			n = anes_io_read(&c->io);
			c->io.msg_flags = 0;
		} else if ((n = spin_read(c)) == -EAGAIN) {
			n = anes_io_read(&c->io);   /* sleep until something comes */
		}
		if (n == -EINTR)
			continue;
		if (n == -EAGAIN && nowait)
			return 0;
		if (n == 0 || n == -ECONNRESET || n == -EPIPE) {
			conn_break(c, "the daemon closed the connection");
			return 1;
		}
		if (n == -EPROTO) {
			conn_kill(c, -ANESHARE_EPROTOCOL, "bad file descriptors from the daemon");
			return 1;
		}
		if (n == -EMFILE) {   /* this process is out of fds: not final */
			conn_break(c, "out of file descriptors receiving the daemon's fds");
			return 1;
		}
		if (n < 0) {
			conn_kill(c, (int)n, "reading from the daemon: %s", strerror((int)-n));
			return 1;
		}
	}

	/* The connection's zone, unless a callback of the reply being handled
	 * is reading the next one. */
	msgpack_zone own, *zone = &c->zone;
	bool shared = c->zone_ok && !c->zone_busy;
	if (shared) {
		c->zone_busy = true;
	} else if (msgpack_zone_init(&own, 2048)) {
		zone = &own;
	} else {
		close_fds(fds, nfds);
		conn_kill(c, -ENOMEM, "out of memory");
		return 1;
	}
	anes_msg m;
	int r = anes_msg_decode(payload, len, zone, &m);
	if (r < 0) {
		conn_kill(c, r == -ENOMEM ? -ENOMEM : -ANESHARE_EPROTOCOL,
		          "malformed message from the daemon");
	} else if (m.type == ANES_MSG_RESPONSE) {
		handle_response(c, &m, fds, nfds);
	} else if (m.type == ANES_MSG_NOTIFY) {
		handle_notify(c, &m);
	} else {
		conn_kill(c, -ANESHARE_EPROTOCOL, "the daemon sent a request");
	}
	close_fds(fds, nfds);
	if (shared) {
		msgpack_zone_clear(zone);
		c->zone_busy = false;
	} else {
		msgpack_zone_destroy(&own);
	}
	return 1;
}

static void pump_one(aneshare_conn *c)
{
	(void)pump(c, false);
}

/* ---- sending ------------------------------------------------------------------- */

int anesc_begin(aneshare_conn *c, anes_frame *f, const char *method, uint32_t n_params,
                uint32_t *ret_msgid)
{
	if (c->dead || c->broken)
		return conn_dead(c);
	uint32_t id;
	do {
		id = c->next_msgid++;
	} while (id == 0 || pending_find(c, id));
	anes_frame_init_buf(f, c->fbuf, c->fbuf_cap);
	c->fbuf = NULL;
	c->fbuf_cap = 0;
	anes_pack_request(&f->pk, id, method, n_params);
	*ret_msgid = id;
	return 0;
}

/* A flush failed with r: the stream is broken (see anesc_send). */
static int send_failed(aneshare_conn *c, int r)
{
	if (r == -EPIPE || r == -ECONNRESET) {
		while (!c->dead && !c->broken)
			pump_one(c);
	} else {
		conn_kill(c, r, "writing to the daemon: %s", strerror(-r));
	}
	return conn_dead(c);
}

/* The request in f is sent (or given up): keep its buffer for the next. */
static void keep_frame_buf(aneshare_conn *c, anes_frame *f)
{
	if (!c->fbuf && f->cap <= 65536) {
		c->fbuf = f->data;
		c->fbuf_cap = f->cap;
	} else {
		free(f->data);
	}
	f->data = NULL;
	f->len = f->cap = 0;
}

/* A blocking send's pause: until the socket takes more (or fails). */
static int wait_writable(aneshare_conn *c)
{
	struct pollfd p = { .fd = c->io.fd, .events = POLLOUT };
	int r;
	do
		r = poll(&p, 1, -1);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : 0;
}

/* Nothing queued before it and no fds: send f's request straight from its
 * buffer (no copy, no queue entry) with anes_io_try_send.  block: until
 * all of it went; else what the socket takes now.  Returns 0 with
 * *ret_sent, or a negative errno. */
static int send_frame(aneshare_conn *c, anes_frame *f, bool block, size_t *ret_sent)
{
	size_t sent = 0;
	while (sent < f->len) {
		struct iovec iov = { .iov_base = f->data + sent, .iov_len = f->len - sent };
		ssize_t n = anes_io_try_send(c->io.fd, &iov, 1, NULL, 0);
		if (n == -EAGAIN && !block)
			break;
		if (n == -EAGAIN) {
			int r = wait_writable(c);
			if (r < 0)
				return r;
			continue;
		}
		if (n < 0)
			return (int)n;
		sent += (size_t)n;
	}
	*ret_sent = sent;
	return 0;
}

static int frame_error(aneshare_conn *c, int r)
{
	if (r == -EMSGSIZE)
		return anesc_fail(c, r, "request larger than the daemon's max_frame (%u bytes)",
		                  c->io.max_frame);
	return anesc_fail(c, r, "building the request: %s", strerror(-r));
}

int anesc_send(aneshare_conn *c, anes_frame *f, const int *fds, unsigned nfds)
{
	void *data;
	size_t len;
	if (nfds == 0 && !anes_io_want_write(&c->io)) {
		size_t sent;
		int r = anes_frame_seal(f, 0, c->io.max_frame);
		if (r < 0) {
			anes_frame_release(f);
			return frame_error(c, r);
		}
		r = send_frame(c, f, true, &sent);
		keep_frame_buf(c, f);
		return r < 0 ? send_failed(c, r) : 0;
	}
	int r = anes_frame_finish(f, nfds, c->io.max_frame, &data, &len);
	if (r < 0) {
		anes_frame_release(f);
		for (unsigned i = 0; i < nfds; i++)
			close(fds[i]);
		if (r == -EMSGSIZE)
			return anesc_fail(c, r, "request larger than the daemon's max_frame (%u bytes)",
			                  c->io.max_frame);
		return anesc_fail(c, r, "building the request: %s", strerror(-r));
	}
	r = anes_io_queue(&c->io, data, len, fds, nfds);
	if (r < 0)
		return anesc_fail(c, r, "queueing the request: %s", strerror(-r));
	while ((r = anes_io_flush(&c->io)) == -EAGAIN && (r = wait_writable(c)) == 0)
		;
	if (r < 0) {
		/* The stream is broken.  If the daemon closed it on purpose it said
		 * why in an error notification: read what it sent (the peer is gone,
		 * so this cannot block for long).  Responses to runs that it sent
		 * before are taken too. */
		return send_failed(c, r);
	}
	return 0;
}

static int flush_nowait(aneshare_conn *c)
{
	int r = anes_io_flush(&c->io);
	if (r == -EAGAIN)
		return 0;   /* the rest waits for writable: aneshare_events */
	return r < 0 ? send_failed(c, r) : 0;
}

int anesc_send_nowait(aneshare_conn *c, anes_frame *f)
{
	void *data;
	size_t len;
	if (!anes_io_want_write(&c->io)) {
		size_t sent = 0;
		int r = anes_frame_seal(f, 0, c->io.max_frame);
		if (r < 0) {
			anes_frame_release(f);
			return frame_error(c, r);
		}
		r = send_frame(c, f, false, &sent);
		if (r < 0) {
			keep_frame_buf(c, f);
			return send_failed(c, r);
		}
		if (sent == f->len) {
			keep_frame_buf(c, f);
			return 0;
		}
		/* The socket is full: the rest waits for writable (aneshare_events). */
		len = f->len;
		void *copy = malloc(len);
		if (copy)
			memcpy(copy, f->data, len);
		keep_frame_buf(c, f);
		r = !copy ? -ENOMEM
		    : sent ? anes_io_queue_rest(&c->io, copy, len, sent)
		           : anes_io_queue(&c->io, copy, len, NULL, 0);
		if (r < 0 && sent > 0) {
			/* Part of it went: the stream cannot go on without the rest. */
			conn_kill(c, r, "out of memory queueing a request");
			return conn_dead(c);
		}
		if (r < 0)
			return anesc_fail(c, r, "queueing the request: %s", strerror(-r));
		return 0;
	}
	int r = anes_frame_finish(f, 0, c->io.max_frame, &data, &len);
	if (r < 0) {
		anes_frame_release(f);
		if (r == -EMSGSIZE)
			return anesc_fail(c, r, "request larger than the daemon's max_frame (%u bytes)",
			                  c->io.max_frame);
		return anesc_fail(c, r, "building the request: %s", strerror(-r));
	}
	r = anes_io_queue(&c->io, data, len, NULL, 0);
	if (r < 0)
		return anesc_fail(c, r, "queueing the request: %s", strerror(-r));
	return flush_nowait(c);
}

int anesc_io_nowait(aneshare_conn *c)
{
	if (c->dead || c->broken)
		return c->dead ? c->dead : anesc_broken_rc(c);
	int r = anes_io_want_write(&c->io) ? flush_nowait(c) : 0;
	/* Read until nothing more has arrived: a level-triggered poll would
	 * report the fd again anyway, but a frame already in the buffer
	 * would not. */
	while (r == 0 && !c->dead && !c->broken && pump(c, true) > 0)
		;
	if (c->dead || c->broken)
		return c->dead ? c->dead : anesc_broken_rc(c);
	return r;
}

int anesc_wait_for(aneshare_conn *c, uint32_t msgid, anesc_result_fn fn, void *ud)
{
	c->sync_active = true;
	c->sync_done = false;
	c->sync_msgid = msgid;
	c->sync_fn = fn;
	c->sync_ud = ud;
	c->sync_rc = 0;
	c->sync_killed = false;
	if (c->dead || c->broken) {
		c->sync_active = false;
		return conn_dead(c);
	}
	while (!c->sync_done)
		pump_one(c);
	c->sync_active = false;
	if (c->sync_killed)
		return conn_lost_inflight(c);
	return c->sync_rc;
}

int anesc_pending_throttle(aneshare_conn *c, size_t limit)
{
	while (c->n_outstanding >= limit && !c->dead && !c->broken)
		pump_one(c);
	return c->dead ? conn_dead(c) : 0;   /* broken: nothing is outstanding any more */
}

/* ---- requests --------------------------------------------------------------------- */

int anesc_send_request(aneshare_conn *c, const anesc_req *rq, anesc_retry *rt,
                       uint32_t *ret_msgid)
{
	bool may_reconnect = !(rq->flags & ANESC_NO_RECONNECT);
	bool pending = rq->flags & ANESC_PENDING;
	for (;;) {
		int r = pending && !rq->cb ? anesc_pending_throttle(c, c->info.max_inflight) : 0;
		if (r == 0 && may_reconnect)
			r = anesc_ready(c, rt);
		if (r < 0)
			return r;
		anes_frame f;
		uint32_t msgid = 0;
		r = anesc_begin(c, &f, rq->method, rq->n_params, &msgid);
		if (r < 0)
			return r;
		if (rq->pack && (r = rq->pack(c, &f.pk, rq->pack_ud)) < 0) {
			anes_frame_release(&f);
			return r;
		}
		if (pending && (r = anesc_pending_add(c, msgid)) < 0) {
			anes_frame_release(&f);
			return r;
		}
		if (pending && rq->cb) {
			anesc_pending *p = &c->pending[c->n_pending - 1];
			p->cb = rq->cb;
			p->cb_ud = rq->cb_ud;
			c->n_async++;
		}
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nfds = 0, want = rq->fd >= 0 ? 1 : rq->nfds;
		for (; nfds < want && nfds < ANES_MAX_FDS_PER_FRAME; nfds++) {
			fds[nfds] = fcntl(rq->fd >= 0 ? rq->fd : rq->fds[nfds], F_DUPFD_CLOEXEC, 3);
			if (fds[nfds] < 0) {
				r = -errno;
				while (nfds > 0)
					close(fds[--nfds]);
				anes_frame_release(&f);
				if (pending)
					anesc_pending_drop(c, msgid);
				return anesc_fail(c, r, "duplicating the fd: %s", strerror(-r));
			}
		}
		r = pending && rq->cb ? anesc_send_nowait(c, &f) : anesc_send(c, &f, fds, nfds);
		if (r < 0 && pending)
			anesc_pending_drop(c, msgid);
		if (r == -ANESHARE_EDISCONNECTED && may_reconnect)
			continue;   /* the daemon did not get it: send it to the next one */
		if (r < 0)
			return r;
		*ret_msgid = msgid;
		return 0;
	}
}

int anesc_request(aneshare_conn *c, const anesc_req *rq)
{
	anesc_retry rt = { 0 };
	bool resent = false;
	for (;;) {
		uint32_t msgid = 0;
		int r = anesc_send_request(c, rq, &rt, &msgid);
		if (r < 0)
			return r;
		r = anesc_wait_for(c, msgid, rq->fn, rq->fn_ud);
		if (r == -ANESHARE_EDISCONNECTED && c->broken && !(rq->flags & ANESC_NO_RECONNECT) &&
		    (rq->flags & ANESC_IDEMPOTENT) && !resent) {
			resent = true;   /* once: a request that kills every daemon must not loop */
			continue;
		}
		return r;
	}
}

int anesc_pack_id(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	(void)c;
	anes_pack_str(pk, "id");
	msgpack_pack_uint32(pk, *(const uint32_t *)ud);
	return 0;
}

int anesc_release(aneshare_conn *c, const char *method, uint32_t id)
{
	int r = anesc_request(c, &(anesc_req){ .method = method, .n_params = 1,
	                                       .pack = anesc_pack_id, .pack_ud = &id, .fd = -1,
	                                       .flags = ANESC_NO_RECONNECT });
	return r == -ANESHARE_EDISCONNECTED ? 0 : r;
}

void anesc_release_quiet(aneshare_conn *c, const char *method, uint32_t id)
{
	if (id == 0 || c->dead || c->broken)
		return;
	char saved[ANESC_ERRMSG_MAX];
	memcpy(saved, c->last_error, sizeof saved);
	(void)anesc_request(c, &(anesc_req){ .method = method, .n_params = 1, .pack = anesc_pack_id,
	                                     .pack_ud = &id, .fd = -1, .flags = ANESC_NO_RECONNECT });
	memcpy(c->last_error, saved, sizeof saved);
}

/* ---- waiting for a run ------------------------------------------------------- */

int anesc_pending_wait(aneshare_conn *c, uint32_t ticket, int *ret_failed_step)
{
	anesc_pending *p = pending_find(c, ticket);
	if (!p || p->cb)   /* async calls are not tickets */
		return anesc_fail(c, -ENOENT, "no run with ticket %u is outstanding", ticket);
	while (!p->done) {
		pump_one(c);
		p = pending_find(c, ticket);   /* the table does not move while pumping, but be safe */
	}
	int rc = p->rc;
	if (ret_failed_step)
		*ret_failed_step = p->failed_step;
	if (rc < 0)
		anesc_fail(c, rc, "%s", p->msg ? p->msg : "");
	else
		c->last_run_us = p->elapsed_us;
	anesc_pending_drop(c, ticket);
	return rc;
}

ANESHARE_API int aneshare_wait(aneshare_conn *c, uint32_t ticket)
{
	if (!c)
		return -EINVAL;
	return anesc_pending_wait(c, ticket, NULL);
}

/* ---- helpers -------------------------------------------------------------------- */

int anesc_dup_str(const msgpack_object *map, const char *key, uint32_t max_len, char **ret)
{
	const char *s;
	uint32_t len;
	int r = anes_mp_str(map, key, max_len, &s, &len);
	if (r < 0)
		return r;
	if (memchr(s, '\0', len))
		return -EINVAL;
	char *d = malloc((size_t)len + 1);
	if (!d)
		return -ENOMEM;
	memcpy(d, s, len);
	d[len] = '\0';
	*ret = d;
	return 0;
}

/* ---- connect and hello ------------------------------------------------------- */

typedef struct hello_result {
	uint64_t protocol;
	char *version;
	char *backend;
	uint64_t limits[8];
} hello_result;

static const char *const limit_keys[8] = {
	"max_frame", "max_surface_bytes", "max_surfaces", "max_programs", "max_inflight",
	"max_mil_bytes", "max_weights", "max_fds_per_frame",
};

static int hello_cb(aneshare_conn *c, const msgpack_object *res, int *fds, unsigned nfds,
                    void *ud)
{
	hello_result *h = ud;
	int r = anes_mp_u64(res, "protocol", UINT32_MAX, &h->protocol);
	if (r < 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "hello: no protocol in the daemon's answer");
	if (h->protocol != ANES_PROTOCOL_VERSION)
		return anesc_fail(c, -ANESHARE_EVERSION, "the daemon speaks protocol %llu, not %d",
		                  (unsigned long long)h->protocol, ANES_PROTOCOL_VERSION);
	r = anesc_dup_str(res, "version", ANESC_MAX_STR, &h->version);
	if (r == 0)
		r = anesc_dup_str(res, "backend", ANESC_MAX_STR, &h->backend);
	if (r == -ENOMEM)
		return anesc_fail(c, r, "out of memory");
	if (r < 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "hello: malformed version or backend");
	const msgpack_object *lim;
	r = anes_mp_map(res, "limits", ANES_MP_MAX_MAP, &lim);
	if (r == -ENOENT)
		return 0;   /* keep the documented defaults */
	if (r < 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "hello: malformed limits");
	for (size_t i = 0; i < 8; i++) {
		uint64_t v;
		r = anes_mp_u64(lim, limit_keys[i], UINT64_MAX, &v);
		if (r == -EINVAL)
			return anesc_fail(c, -ANESHARE_EPROTOCOL, "hello: malformed limit %s",
			                  limit_keys[i]);
		if (r == 0)
			h->limits[i] = v;
	}
	return 0;
}

static uint32_t clamp_u32(uint64_t v)
{
	return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static int pack_hello(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	(void)ud;
	anes_pack_str(pk, "protocol");
	msgpack_pack_uint32(pk, ANES_PROTOCOL_VERSION);
	if (c->client_name) {
		anes_pack_str(pk, "client");
		anes_pack_str(pk, c->client_name);
	}
	return 0;
}

/* Keep a string of the previous daemon alive until disconnect (callers may
 * hold pointers from aneshare_server()). */
static int retire_string(aneshare_conn *c, char *s)
{
	if (!s)
		return 0;
	char **v = realloc(c->old_strings, (c->n_old_strings + 1) * sizeof *v);
	if (!v)
		return -ENOMEM;
	c->old_strings = v;
	v[c->n_old_strings++] = s;
	return 0;
}

/* Replace *slot by fresh, unless they are equal: then fresh is freed. */
static int replace_string(aneshare_conn *c, char **slot, char *fresh)
{
	if (*slot && strcmp(*slot, fresh) == 0) {
		free(fresh);
		return 0;
	}
	int r = retire_string(c, *slot);
	if (r < 0) {
		free(fresh);
		return r;
	}
	*slot = fresh;
	return 0;
}

static int conn_hello(aneshare_conn *c)
{
	hello_result h = { .limits = {
		ANES_FRAME_MAX_DEFAULT, 1ull << 30, 1024, 256, 64, 16u << 20, 256, 0 } };
	int r = anesc_request(c, &(anesc_req){ .method = "hello",
	                                       .n_params = c->client_name ? 2 : 1,
	                                       .pack = pack_hello, .fd = -1, .fn = hello_cb,
	                                       .fn_ud = &h, .flags = ANESC_NO_RECONNECT });
	if (r < 0) {
		free(h.version);
		free(h.backend);
		return r;
	}
	r = replace_string(c, &c->server_version, h.version);
	if (r == 0)
		r = replace_string(c, &c->backend, h.backend);
	else
		free(h.backend);
	if (r < 0)
		return anesc_fail(c, r, "out of memory");
	uint64_t mf = h.limits[0];
	if (mf < ANES_FRAME_MAX_LOWEST)
		mf = ANES_FRAME_MAX_LOWEST;
	if (mf > ANES_FRAME_MAX_HIGHEST)
		mf = ANES_FRAME_MAX_HIGHEST;
	c->io.max_frame = (uint32_t)mf;
	/* no fds per frame announced: inline weights only (aneshare_program_compile) */
	c->max_fds_per_frame = (unsigned)(h.limits[7] < ANES_MAX_FDS_PER_FRAME ? h.limits[7] : ANES_MAX_FDS_PER_FRAME);
	c->info = (aneshare_server_info){
		.protocol = (uint32_t)h.protocol,
		.server_version = c->server_version,
		.backend = c->backend,
		.max_frame = mf,
		.max_surface_bytes = h.limits[1],
		.max_surfaces = clamp_u32(h.limits[2]),
		.max_programs = clamp_u32(h.limits[3]),
		.max_inflight = clamp_u32(h.limits[4]),
	};
	if (c->info.max_inflight == 0)
		c->info.max_inflight = 1;
	return 0;
}

/* A new socket connected to c->socket_path (c->fd, c->io); -errno. */
static int conn_open(aneshare_conn *c)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t plen = strlen(c->socket_path);
	if (plen >= sizeof sa.sun_path)
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, c->socket_path, plen + 1);
	int fd = anes_socket_cloexec(AF_UNIX, SOCK_STREAM);
	if (fd < 0)
		return fd;
#ifdef SO_NOSIGPIPE
	(void)setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &(int){ 1 }, sizeof(int));
#endif
	int r;
	do {
		r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
	} while (r < 0 && errno == EINTR);
	if (r < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	close_socket(c);
	c->fd = fd;
	anes_io_init(&c->io, fd, ANES_FRAME_MAX_DEFAULT);
	return 0;
}

/* ---- reconnecting -------------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pause_ms(int64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* One attempt: connect, hello, restore every surface and program.  Returns
 * 0; a negative code with c->broken set when worth another attempt (no
 * daemon listening yet, or the new connection broke too); or a final
 * failure of this call (dead, or hello refused). */
static int reconnect_once(aneshare_conn *c)
{
	int r = conn_open(c);
	if (r < 0)
		return anesc_fail(c, r, "connecting to %s: %s", c->socket_path, strerror(-r));
	c->broken = false;
	r = conn_hello(c);
	if (r < 0) {
		if (!c->dead && !c->broken) {   /* refused: stay broken, say why */
			c->broken = true;
			snprintf(c->broken_msg, sizeof c->broken_msg, "%s", c->last_error);
			close_socket(c);
		}
		return r;
	}
	/* Restoring names no object of the call being made, so a failure to
	 * restore one object only marks that object lost. */
	for (aneshare_surface *s = c->surfaces; s; s = s->next)
		if (!s->lost && (r = anesc_surface_restore(c, s)) < 0)
			return r;
	for (aneshare_program *p = c->programs; p; p = p->next)
		if (!p->lost && (r = anesc_program_restore(c, p)) < 0)
			return r;
	for (aneshare_state *st = c->states; st; st = st->next)
		if (!st->lost && (r = anesc_state_restore(c, st)) < 0)
			return r;
	return 0;
}

int anesc_ready(aneshare_conn *c, anesc_retry *rt)
{
	if (c->dead)
		return conn_dead(c);
	if (!c->broken)
		return 0;
	if (!c->reconnect)
		return conn_dead(c);
	if (!rt->started) {
		rt->started = true;
		rt->deadline_ms = now_ms() + c->reconnect_timeout_ms;
	}
	/* Restoring objects sets last_error on the way; the caller's call
	 * decides what it finally says. */
	char cause[ANESC_ERRMSG_MAX];
	unsigned attempts = 0;
	int64_t backoff = 5;
	for (;;) {
		attempts++;
		int r = reconnect_once(c);
		if (r == 0) {
			c->reconnects++;
			return 0;
		}
		if (c->dead)
			return conn_dead(c);
		bool transient = c->broken && (r == -ANESHARE_EDISCONNECTED || r > -ANESHARE_EBASE);
		if (!transient)
			return r;   /* e.g. the new daemon speaks another protocol version */
		memcpy(cause, c->last_error, sizeof cause);
		int64_t left = rt->deadline_ms - now_ms();
		if (left <= 0)
			break;
		pause_ms(backoff < left ? backoff : left);
		backoff = backoff * 2 > 250 ? 250 : backoff * 2;
	}
	return anesc_fail(c, -ANESHARE_EDISCONNECTED,
	                  "the daemon went away (%s) and reconnecting to %s failed for %u ms "
	                  "(%u attempts; last: %s)",
	                  c->broken_msg, c->socket_path, c->reconnect_timeout_ms, attempts, cause);
}

/* $name as a decimal number up to max; def if unset or anything else. */
static uint32_t u32_from_env(const char *name, uint32_t def, uint32_t max)
{
	const char *e = getenv(name);
	if (!e || !*e || strspn(e, "0123456789") != strlen(e) || strlen(e) > 10)
		return def;
	unsigned long long v = strtoull(e, NULL, 10);
	return v > max ? def : (uint32_t)v;
}

/* The default spin: none when this thread may run on one CPU only, where
 * polling would only keep the daemon off that CPU. */
static uint32_t default_spin_us(void)
{
#ifdef __linux__
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) < 2)
		return 0;
#else
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		return 0;
#endif
	return u32_from_env("ANESHARE_SPIN_US", ANESC_SPIN_US, ANESC_SPIN_MAX_US);
}

/* The clock of the spin's rules (proto/anes_clock.h): in builds with the
 * test hooks, the fake one named by $ANESHARE_TEST_CLOCK when this
 * process's first aneshare_connect runs; what anes_clock_from_env said. */
static pthread_once_t clock_once = PTHREAD_ONCE_INIT;
static int clock_rc;

static void clock_from_env(void)
{
	clock_rc = anes_clock_from_env();
}

ANESHARE_API int aneshare_connect(const char *socket_path, const char *client_name,
                                  aneshare_conn **ret_conn)
{
	char defpath[sizeof(((struct sockaddr_un *)0)->sun_path)];
	if (!ret_conn)
		return -EINVAL;
	pthread_once(&clock_once, clock_from_env);
	if (clock_rc < 0)
		return clock_rc;
	if (!socket_path) {
		int r = aneshare_default_socket_path(defpath, sizeof defpath);
		if (r < 0)
			return r;
		socket_path = defpath;
	}
	size_t plen = strlen(socket_path);
	if (plen == 0)
		return -EINVAL;
	if (plen >= sizeof defpath)
		return -ENAMETOOLONG;

	aneshare_conn *c = calloc(1, sizeof *c);
	if (!c)
		return -ENOMEM;
	c->fd = -1;
	anes_io_init(&c->io, -1, ANES_FRAME_MAX_DEFAULT);
	c->zone_ok = msgpack_zone_init(&c->zone, 2048);
	c->next_msgid = 1;
	c->last_failed_step = -1;
	c->reconnect = true;
	c->reconnect_timeout_ms = u32_from_env("ANESHARE_RECONNECT_TIMEOUT_MS", ANESC_RECONNECT_TIMEOUT_MS,
	                                       ANESC_RECONNECT_TIMEOUT_MAX);
	c->spin_us = default_spin_us();
	c->socket_path = strdup(socket_path);
	if (client_name)
		c->client_name = strndup(client_name, 128);
	if (!c->socket_path || (client_name && !c->client_name)) {
		aneshare_disconnect(c);
		return -ENOMEM;
	}
	int r = conn_open(c);
	if (r == 0)
		r = conn_hello(c);
	if (r < 0) {
		aneshare_disconnect(c);
		/* No connection to retry on: hung up during hello is a reset. */
		return r == -ANESHARE_EDISCONNECTED ? -ECONNRESET : r;
	}
	*ret_conn = c;
	return 0;
}

ANESHARE_API void aneshare_disconnect(aneshare_conn *c)
{
	if (!c)
		return;
	anesc_async_cancel_all(c);
	while (c->events)
		anesc_event_free_local(c->events);
	while (c->states)
		anesc_state_free_local(c->states);
	while (c->surfaces)
		anesc_surface_free_local(c->surfaces);
	while (c->programs)
		anesc_program_free_local(c->programs);
	for (size_t i = 0; i < c->n_pending; i++)
		free(c->pending[i].msg);
	free(c->pending);
	free(c->fbuf);
	if (c->zone_ok)
		msgpack_zone_destroy(&c->zone);
	close_socket(c);
	free(c->server_version);
	free(c->backend);
	for (size_t i = 0; i < c->n_old_strings; i++)
		free(c->old_strings[i]);
	free(c->old_strings);
	free(c->socket_path);
	free(c->client_name);
	free(c);
}

ANESHARE_API const char *aneshare_last_error(const aneshare_conn *c)
{
	return c ? c->last_error : "";
}

ANESHARE_API const aneshare_server_info *aneshare_server(const aneshare_conn *c)
{
	return c ? &c->info : NULL;
}

ANESHARE_API int aneshare_set_reconnect(aneshare_conn *c, bool enable)
{
	if (!c)
		return -EINVAL;
	c->reconnect = enable;
	return 0;
}

ANESHARE_API int aneshare_set_reconnect_timeout(aneshare_conn *c, uint32_t timeout_ms)
{
	if (!c || timeout_ms > ANESC_RECONNECT_TIMEOUT_MAX)
		return -EINVAL;
	c->reconnect_timeout_ms = timeout_ms;
	return 0;
}

ANESHARE_API int aneshare_set_spin(aneshare_conn *c, uint32_t spin_us)
{
	if (!c || spin_us > ANESC_SPIN_MAX_US)
		return -EINVAL;
	if (spin_us != c->spin_us) {
		c->spin_us = spin_us;
		c->spin = (anes_spin){ 0 };
	}
	return 0;
}

ANESHARE_API uint32_t aneshare_spin(const aneshare_conn *c)
{
	return c ? c->spin_us : 0;
}

ANESHARE_API uint64_t aneshare_reconnect_count(const aneshare_conn *c)
{
	return c ? c->reconnects : 0;
}

ANESHARE_API bool aneshare_error_is_retryable(int err)
{
	return err == -ANESHARE_EDISCONNECTED || err == -ANESHARE_ESHUTTING_DOWN ||
	       err == -ANESHARE_EWORKER_RESTARTED;
}
