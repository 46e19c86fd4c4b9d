/* SPDX-License-Identifier: MIT */
/*
 * libaneshare: the connection, the handshake and the request/response loop.
 *
 * The socket is blocking.  A synchronous call sends its request and reads
 * frames until its response arrives; responses to submitted runs that arrive
 * meanwhile are stashed in the pending table for aneshare_wait.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

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

/* Mark the connection unusable (once: the first cause wins). */
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
	/* No more requests can be answered: fail every run still outstanding. */
	for (size_t i = 0; i < c->n_pending; i++) {
		anesc_pending *p = &c->pending[i];
		if (!p->done) {
			p->done = true;
			p->rc = rc;
			p->msg = strdup(c->dead_msg);
			c->n_outstanding--;
		}
	}
	if (c->sync_active && !c->sync_done) {
		c->sync_done = true;
		c->sync_killed = true;
		c->sync_rc = rc;
	}
}

static int conn_dead(aneshare_conn *c)
{
	return anesc_fail(c, c->dead, "%s", c->dead_msg);
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
	c->pending[c->n_pending++] = (anesc_pending){ .msgid = msgid };
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
	if (m->error)
		rc = decode_error(m, msg, sizeof msg);
	else if (nfds > 0) {
		rc = -ANESHARE_EPROTOCOL;
		snprintf(msg, sizeof msg, "the daemon sent an fd with a run result");
	}
	p->done = true;
	p->rc = rc;
	p->msg = rc < 0 ? strdup(msg) : NULL;
	c->n_outstanding--;
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
	conn_kill(c, rc, "%s", msg);
}

/* Read and handle one frame (blocking). */
static void pump_one(aneshare_conn *c)
{
	const uint8_t *payload;
	uint32_t len;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds = 0;

	for (;;) {
		if (c->dead)
			return;
		int r = anes_io_next_frame(&c->io, &payload, &len, fds, &nfds);
		if (r < 0) {
			conn_kill(c, -ANESHARE_EPROTOCOL, "malformed frame from the daemon: %s",
			          strerror(-r));
			return;
		}
		if (r > 0)
			break;
		ssize_t n = anes_io_read(&c->io);
		if (n == -EINTR)
			continue;
		if (n == 0 || n == -ECONNRESET) {
			conn_kill(c, -ECONNRESET, "the daemon closed the connection");
			return;
		}
		if (n == -EPROTO) {
			conn_kill(c, -ANESHARE_EPROTOCOL, "bad file descriptors from the daemon");
			return;
		}
		if (n < 0) {
			conn_kill(c, (int)n, "reading from the daemon: %s", strerror((int)-n));
			return;
		}
	}

	msgpack_zone zone;
	if (!msgpack_zone_init(&zone, 2048)) {
		close_fds(fds, nfds);
		conn_kill(c, -ENOMEM, "out of memory");
		return;
	}
	anes_msg m;
	int r = anes_msg_decode(payload, len, &zone, &m);
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
	msgpack_zone_destroy(&zone);
}

/* ---- sending ------------------------------------------------------------------- */

int anesc_begin(aneshare_conn *c, anes_frame *f, const char *method, uint32_t n_params,
                uint32_t *ret_msgid)
{
	if (c->dead)
		return conn_dead(c);
	uint32_t id;
	do {
		id = c->next_msgid++;
	} while (id == 0 || pending_find(c, id));
	anes_frame_init(f);
	anes_pack_request(&f->pk, id, method, n_params);
	*ret_msgid = id;
	return 0;
}

int anesc_send(aneshare_conn *c, anes_frame *f, const int *fds, unsigned nfds)
{
	void *data;
	size_t len;
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
	do {
		r = anes_io_flush(&c->io);
	} while (r == -EINTR);
	if (r < 0) {
		/* The stream is broken.  If the daemon closed it on purpose it said
		 * why in an error notification: read what it sent (the peer is gone,
		 * so this cannot block for long). */
		if (r == -EPIPE || r == -ECONNRESET) {
			while (!c->dead)
				pump_one(c);
		}
		conn_kill(c, r == -EPIPE ? -ECONNRESET : r, "writing to the daemon: %s", strerror(-r));
		return conn_dead(c);
	}
	return 0;
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
	while (!c->sync_done)
		pump_one(c);
	c->sync_active = false;
	if (c->sync_killed)
		return conn_dead(c);
	return c->sync_rc;
}

int anesc_call(aneshare_conn *c, anes_frame *f, uint32_t msgid, const int *fds, unsigned nfds,
               anesc_result_fn fn, void *ud)
{
	int r = anesc_send(c, f, fds, nfds);
	if (r < 0)
		return r;
	return anesc_wait_for(c, msgid, fn, ud);
}

int anesc_pending_throttle(aneshare_conn *c, size_t limit)
{
	while (c->n_outstanding >= limit && !c->dead)
		pump_one(c);
	return c->dead ? conn_dead(c) : 0;
}

/* ---- waiting for a run ------------------------------------------------------- */

ANESHARE_API int aneshare_wait(aneshare_conn *c, uint32_t ticket)
{
	if (!c)
		return -EINVAL;
	anesc_pending *p = pending_find(c, ticket);
	if (!p)
		return anesc_fail(c, -ENOENT, "no run with ticket %u is outstanding", ticket);
	while (!p->done) {
		pump_one(c);
		p = pending_find(c, ticket);   /* the table does not move while pumping, but be safe */
	}
	int rc = p->rc;
	if (rc < 0)
		anesc_fail(c, rc, "%s", p->msg ? p->msg : "");
	anesc_pending_drop(c, ticket);
	return rc;
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
	uint64_t limits[7];
} hello_result;

static const char *const limit_keys[7] = {
	"max_frame", "max_surface_bytes", "max_surfaces", "max_programs", "max_inflight",
	"max_mil_bytes", "max_weights",
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
	for (size_t i = 0; i < 7; i++) {
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

static int conn_hello(aneshare_conn *c, const char *client_name)
{
	anes_frame f;
	uint32_t msgid = 0;
	int r = anesc_begin(c, &f, "hello", client_name ? 2 : 1, &msgid);
	if (r < 0)
		return r;
	anes_pack_str(&f.pk, "protocol");
	msgpack_pack_uint32(&f.pk, ANES_PROTOCOL_VERSION);
	if (client_name) {
		size_t n = strnlen(client_name, 128);
		anes_pack_str(&f.pk, "client");
		anes_pack_strn(&f.pk, client_name, n);
	}
	hello_result h = { .limits = {
		ANES_FRAME_MAX_DEFAULT, 1ull << 30, 1024, 256, 64, 16u << 20, 256 } };
	r = anesc_call(c, &f, msgid, NULL, 0, hello_cb, &h);
	if (r < 0) {
		free(h.version);
		free(h.backend);
		return r;
	}
	c->server_version = h.version;
	c->backend = h.backend;
	uint64_t mf = h.limits[0];
	if (mf < ANES_FRAME_MAX_LOWEST)
		mf = ANES_FRAME_MAX_LOWEST;
	if (mf > ANES_FRAME_MAX_HIGHEST)
		mf = ANES_FRAME_MAX_HIGHEST;
	c->io.max_frame = (uint32_t)mf;
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

ANESHARE_API int aneshare_connect(const char *socket_path, const char *client_name,
                                  aneshare_conn **ret_conn)
{
	char defpath[sizeof(((struct sockaddr_un *)0)->sun_path)];
	if (!ret_conn)
		return -EINVAL;
	if (!socket_path) {
		int r = aneshare_default_socket_path(defpath, sizeof defpath);
		if (r < 0)
			return r;
		socket_path = defpath;
	}
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t plen = strlen(socket_path);
	if (plen == 0)
		return -EINVAL;
	if (plen >= sizeof sa.sun_path)
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, socket_path, plen + 1);

	aneshare_conn *c = calloc(1, sizeof *c);
	if (!c)
		return -ENOMEM;
	c->next_msgid = 1;
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		int e = -errno;
		free(c);
		return e;
	}
	anes_io_init(&c->io, c->fd, ANES_FRAME_MAX_DEFAULT);
	int r;
	do {
		r = connect(c->fd, (struct sockaddr *)&sa, sizeof sa);
	} while (r < 0 && errno == EINTR);
	if (r < 0) {
		r = -errno;
		aneshare_disconnect(c);
		return r;
	}
	r = conn_hello(c, client_name);
	if (r < 0) {
		aneshare_disconnect(c);
		return r;
	}
	*ret_conn = c;
	return 0;
}

ANESHARE_API void aneshare_disconnect(aneshare_conn *c)
{
	if (!c)
		return;
	while (c->surfaces)
		anesc_surface_free_local(c->surfaces);
	while (c->programs)
		anesc_program_free_local(c->programs);
	for (size_t i = 0; i < c->n_pending; i++)
		free(c->pending[i].msg);
	free(c->pending);
	anes_io_cleanup(&c->io);
	if (c->fd >= 0)
		close(c->fd);
	free(c->server_version);
	free(c->backend);
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
