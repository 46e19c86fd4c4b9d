/* SPDX-License-Identifier: MIT */
/*
 * libaneshare: events, the daemon's timelines (docs/protocol.md, "Events").
 *
 * An event handle names an event on the daemon connection it was made on.
 * Events are not restored after a reconnect (they lived in the old daemon,
 * with their values and waiters): a handle whose epoch is not the
 * connection's reconnect count is closed, and every call on it -- and every
 * run naming it -- fails with -ANESHARE_EEVENT_CLOSED before anything is
 * sent.  The check is made again when a request is packed, since the call
 * itself may have reconnected first.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void event_link(aneshare_conn *c, aneshare_event *ev)
{
	ANESC_LIST_LINK(c, events, ev);
}

void anesc_event_free_local(aneshare_event *ev)
{
	ANESC_LIST_UNLINK(events, ev);
	free(ev);
}

/* Made on an earlier daemon (or on this one, which is gone: the next call
 * reconnects to another). */
static bool event_gone(const aneshare_event *ev)
{
	return ev->epoch != ev->conn->reconnects || ev->conn->broken;
}

static int event_closed(aneshare_conn *c, const char *pre, const aneshare_event *ev)
{
	(void)ev;
	return anesc_fail(c, -ANESHARE_EEVENT_CLOSED,
	                  "%sthe event was made before the daemon restarted: events are not "
	                  "restored (make a new one)", pre);
}

/* ---- requests ---------------------------------------------------------------------- */

typedef struct event_args {
	aneshare_event *ev;
	uint64_t value;
	const aneshare_export_opts *o;
	/* results */
	uint32_t id;
	uint64_t got;
	aneshare_token token;
	uint64_t expires_ms;
} event_args;

/* { id, value }: packed at send time, when a reconnect may have come. */
static int pack_id_value(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	const event_args *a = ud;
	if (event_gone(a->ev))
		return event_closed(c, "", a->ev);
	anes_pack_str(pk, "id");
	msgpack_pack_uint32(pk, a->ev->id);
	anes_pack_str(pk, "value");
	msgpack_pack_uint64(pk, a->value);
	return 0;
}

static int no_fds(aneshare_conn *c, unsigned nfds)
{
	return nfds ? anesc_fail(c, -ANESHARE_EPROTOCOL, "the daemon sent an fd with an event result")
	            : 0;
}

static int id_cb(aneshare_conn *c, const msgpack_object *res, int *fds, unsigned nfds, void *ud)
{
	(void)fds;
	event_args *a = ud;
	if (anes_mp_u32(res, "id", &a->id) < 0 || a->id == 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed event result from the daemon");
	return no_fds(c, nfds);
}

static int value_cb(aneshare_conn *c, const msgpack_object *res, int *fds, unsigned nfds, void *ud)
{
	(void)fds;
	event_args *a = ud;
	if (anes_mp_u64(res, "value", UINT64_MAX, &a->got) < 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed event.wait result from the daemon");
	return no_fds(c, nfds);
}

/* A new handle for the daemon's event id (the result r of the request
 * that made it): on failure the daemon's event, if any, is released. */
static int event_take(aneshare_conn *c, int r, uint32_t id, bool imported, aneshare_event **ret)
{
	if (r < 0) {
		anesc_release_quiet(c, "event.release", id);
		return r;
	}
	aneshare_event *ev = calloc(1, sizeof *ev);
	if (!ev) {
		anesc_release_quiet(c, "event.release", id);
		return anesc_fail(c, -ENOMEM, "out of memory");
	}
	ev->id = id;
	ev->epoch = c->reconnects;
	ev->imported = imported;
	event_link(c, ev);
	*ret = ev;
	return 0;
}

ANESHARE_API int aneshare_event_create(aneshare_conn *c, aneshare_event **ret)
{
	if (!c || !ret)
		return -EINVAL;
	event_args a = { 0 };
	int r = anesc_request(c, &(anesc_req){ .method = "event.create", .fd = -1, .fn = id_cb,
	                                       .fn_ud = &a, .flags = ANESC_IDEMPOTENT });
	return event_take(c, r, a.id, false, ret);
}

/* The checks every call on an existing handle starts with. */
static int event_usable(aneshare_event *ev)
{
	if (!ev)
		return -EINVAL;
	return event_gone(ev) ? event_closed(ev->conn, "", ev) : 0;
}

ANESHARE_API int aneshare_event_signal(aneshare_event *ev, uint64_t value)
{
	int r = event_usable(ev);
	if (r < 0)
		return r;
	aneshare_conn *c = ev->conn;
	if (ev->imported)
		return anesc_fail(c, -ANESHARE_EINVALID_PARAMS,
		                  "the event was imported: only its creator signals it");
	/* Sent again after a break only to fail at packing: the event is gone. */
	event_args a = { .ev = ev, .value = value };
	return anesc_request(c, &(anesc_req){ .method = "event.signal", .n_params = 2,
	                                      .pack = pack_id_value, .pack_ud = &a, .fd = -1,
	                                      .flags = ANESC_IDEMPOTENT });
}

ANESHARE_API int aneshare_event_wait(aneshare_event *ev, uint64_t value, uint64_t *ret_value)
{
	int r = event_usable(ev);
	if (r < 0)
		return r;
	event_args a = { .ev = ev, .value = value };
	r = anesc_request(ev->conn, &(anesc_req){ .method = "event.wait", .n_params = 2,
	                                          .pack = pack_id_value, .pack_ud = &a, .fd = -1,
	                                          .fn = value_cb, .fn_ud = &a,
	                                          .flags = ANESC_IDEMPOTENT });
	if (r < 0)
		return r;
	if (ret_value)
		*ret_value = a.got;
	return 0;
}

ANESHARE_API int aneshare_event_value(aneshare_event *ev, uint64_t *ret_value)
{
	if (!ret_value)
		return ev ? anesc_fail(ev->conn, -EINVAL, "no value to write") : -EINVAL;
	return aneshare_event_wait(ev, 0, ret_value);
}

ANESHARE_API int aneshare_event_wait_async(aneshare_event *ev, uint64_t value, aneshare_done_fn cb,
                                           void *userdata)
{
	if (!cb)
		return ev ? anesc_fail(ev->conn, -EINVAL, "no callback") : -EINVAL;
	int r = event_usable(ev);
	if (r < 0)
		return r;
	/* An async call: the pending table's entry gets the reply (its value is
	 * not kept: rc 0 says it was reached). */
	anesc_retry rt = { 0 };
	uint32_t msgid;
	event_args a = { .ev = ev, .value = value };
	return anesc_send_request(ev->conn, &(anesc_req){ .method = "event.wait", .n_params = 2,
	                                                   .pack = pack_id_value, .pack_ud = &a,
	                                                   .fd = -1, .flags = ANESC_PENDING,
	                                                   .cb = cb, .cb_ud = userdata },
	                          &rt, &msgid);
}

static int pack_export(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	const event_args *a = ud;
	if (event_gone(a->ev))
		return event_closed(c, "", a->ev);
	anes_pack_str(pk, "id");
	msgpack_pack_uint32(pk, a->ev->id);
	anesc_pack_export_limits(pk, a->o);
	return 0;
}

static int export_cb(aneshare_conn *c, const msgpack_object *res, int *fds, unsigned nfds, void *ud)
{
	(void)fds;
	event_args *a = ud;
	int r = anesc_export_result(c, res, &a->token, &a->expires_ms);
	return r < 0 ? r : no_fds(c, nfds);
}

ANESHARE_API int aneshare_event_export(aneshare_event *ev, const aneshare_export_opts *opts,
                                       aneshare_token *ret_token, uint64_t *ret_expires_ms)
{
	if (ev && !ret_token)
		return anesc_fail(ev->conn, -EINVAL, "no token to write");
	int r = event_usable(ev);
	if (r < 0)
		return r;
	static const aneshare_export_opts defaults = { 0 };
	event_args a = { .ev = ev, .o = opts ? opts : &defaults };
	uint32_t n = 1 + (a.o->uses != 0) + (a.o->ttl_ms != 0);
	r = anesc_request(ev->conn, &(anesc_req){ .method = "event.export", .n_params = n,
	                                          .pack = pack_export, .pack_ud = &a, .fd = -1,
	                                          .fn = export_cb, .fn_ud = &a,
	                                          .flags = ANESC_IDEMPOTENT });
	if (r < 0)
		return r;
	*ret_token = a.token;
	if (ret_expires_ms)
		*ret_expires_ms = a.expires_ms;
	return 0;
}

ANESHARE_API int aneshare_event_import_token(aneshare_conn *c, const char *token,
                                             aneshare_event **ret)
{
	if (!c || !ret)
		return -EINVAL;
	if (aneshare_token_check(token) < 0)
		return anesc_fail(c, -EINVAL, "a token is %d lowercase hex digits", ANESHARE_TOKEN_LEN);
	event_args a = { 0 };
	int r = anesc_request(c, &(anesc_req){ .method = "event.import", .n_params = 1,
	                                       .pack = anesc_pack_token, .pack_ud = (void *)token, .fd = -1,
	                                       .fn = id_cb, .fn_ud = &a, .flags = ANESC_IDEMPOTENT });
	return event_take(c, r, a.id, true, ret);
}

ANESHARE_API bool aneshare_event_imported(const aneshare_event *ev)
{
	return ev && ev->imported;
}

ANESHARE_API int aneshare_event_release(aneshare_event *ev)
{
	if (!ev)
		return 0;
	aneshare_conn *c = ev->conn;
	uint32_t id = ev->id;
	bool gone = event_gone(ev);
	anesc_event_free_local(ev);
	if (gone)
		return 0;   /* the daemon it lived in is gone */
	return anesc_release(c, "event.release", id);
}

/* ---- in runs ------------------------------------------------------------------------ */

static int check_list(aneshare_conn *c, const char *name, const aneshare_event_point *l, size_t n,
                      bool signal)
{
	if (n > ANESHARE_MAX_RUN_EVENTS)
		return anesc_fail(c, -EINVAL, "a run's %s list has at most %d entries, not %zu", name,
		                  ANESHARE_MAX_RUN_EVENTS, n);
	if (n && !l)
		return anesc_fail(c, -EINVAL, "no %s array", name);
	for (size_t i = 0; i < n; i++) {
		const aneshare_event *ev = l[i].event;
		char pre[64];
		snprintf(pre, sizeof pre, "%s entry %zu: ", name, i);
		if (!ev || ev->conn != c)
			return anesc_fail(c, -EINVAL, "%sthe event is NULL or from another connection", pre);
		if (event_gone(ev))
			return event_closed(c, pre, ev);
		if (signal && ev->imported)
			return anesc_fail(c, -ANESHARE_EINVALID_PARAMS,
			                  "%sthe event was imported: only its creator signals it", pre);
		for (size_t j = 0; j < i; j++)
			if (l[j].event == ev)
				return anesc_fail(c, -ANESHARE_EINVALID_PARAMS,
				                  "%sthe event is listed twice (entry %zu)", pre, j);
	}
	return 0;
}

int anesc_check_events(aneshare_conn *c, const aneshare_run_opts *o)
{
	if (!o)
		return 0;
	for (size_t i = 0; i < sizeof o->reserved / sizeof o->reserved[0]; i++)
		if (o->reserved[i])
			return anesc_fail(c, -EINVAL, "aneshare_run_opts: reserved[%zu] is not 0", i);
	int r = check_list(c, "wait", o->wait, o->n_wait, false);
	return r < 0 ? r : check_list(c, "signal", o->signal, o->n_signal, true);
}

uint32_t anesc_events_params(const aneshare_run_opts *o)
{
	return o ? (o->n_wait > 0) + (o->n_signal > 0) : 0;
}

static int pack_list(aneshare_conn *c, msgpack_packer *pk, const char *name,
                     const aneshare_event_point *l, size_t n)
{
	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (event_gone(l[i].event))
			return event_closed(c, "", l[i].event);
	anes_pack_str(pk, name);
	msgpack_pack_array(pk, (uint32_t)n);
	for (size_t i = 0; i < n; i++) {
		msgpack_pack_map(pk, 2);
		anes_pack_str(pk, "event");
		msgpack_pack_uint32(pk, l[i].event->id);
		anes_pack_str(pk, "value");
		msgpack_pack_uint64(pk, l[i].value);
	}
	return 0;
}

int anesc_pack_events(aneshare_conn *c, msgpack_packer *pk, const aneshare_run_opts *o)
{
	if (!o)
		return 0;
	int r = pack_list(c, pk, "wait", o->wait, o->n_wait);
	return r < 0 ? r : pack_list(c, pk, "signal", o->signal, o->n_signal);
}
