/* SPDX-License-Identifier: MIT */
/*
 * The request methods of docs/protocol.md.  Every field comes from an
 * untrusted client: read through the typed accessors, check every ID and
 * size before use, and leave the connection's state untouched on failure.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "anes_config.h"
#include "anes_clock.h"
#include "anes_shm.h"
#include "daemon.h"
#include "mil.h"   /* the MIL front end's caps on tensors, announced in hello */
#include "event.h"
#include "state.h"

typedef void (*method_fn)(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);

void anes_reply_param(anes_conn *c, const anes_msg *m, const char *key, int r)
{
	if (r == -ENOENT)
		anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS, "missing \"%s\"", key);
	else
		anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS,
		                      "\"%s\" has the wrong type or is out of range", key);
}

static void reply_errno(anes_conn *c, const anes_msg *m, int r, const char *what)
{
	if (r == -EMFILE || r == -ENFILE)
		anes_conn_reply_error(c, m->msgid, ANES_WERR_LIMIT,
		                      "%s: the daemon is out of file descriptors (%s)", what, strerror(-r));
	else if (r == -ENOMEM || r == -ENOSPC)
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "%s: %s", what, strerror(-r));
	else
		anes_conn_reply_error(c, m->msgid, ANES_WERR_INTERNAL, "%s: %s", what, strerror(-r));
}

static void pack_bool(msgpack_packer *pk, bool v)
{
	if (v)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
}

static void pack_kv_str(msgpack_packer *pk, const char *key, const char *v)
{
	anes_pack_str(pk, key);
	anes_pack_str(pk, v);
}

static const char *dtype_str(anes_dtype dt)
{
	/* Own table: the daemon must not depend on one backend's helpers. */
	switch (dt) {
	case ANES_DT_FP16: return "fp16";
	case ANES_DT_FP32: return "fp32";
	case ANES_DT_INT32: return "int32";
	case ANES_DT_INT16: return "int16";
	case ANES_DT_INT8: return "int8";
	case ANES_DT_UINT8: return "uint8";
	case ANES_DT_BOOL: return "bool";
	}
	return "unknown";
}

static const char *backend_name(const anes_server *srv)
{
	return srv->backend->ops->name ? srv->backend->ops->name : "unknown";
}

/* ---- hello, status ---------------------------------------------------------- */

/* The per-client, per-uid and daemon-wide limits of tenant.h not announced
 * by name in m_hello (max_total_surface_bytes, max_daemon_surface_bytes and
 * max_input_bytes are). */
static bool tenant_key_new(const char *key)
{
	return strcmp(key, "max_total_surface_bytes") && strcmp(key, "max_daemon_surface_bytes") &&
	       strcmp(key, "max_input_bytes");
}

static uint32_t count_tenant_limits(void)
{
	uint32_t n = 0;
	for (int r = 0; r < ANES_RES_N; r++)
		n += tenant_key_new(anes_res_client_key(r)) + tenant_key_new(anes_res_uid_key(r)) +
		     tenant_key_new(anes_res_daemon_key(r));
	return n;
}

static void pack_tenant_limits(msgpack_packer *pk, const anes_limits *lim)
{
	for (int r = 0; r < ANES_RES_N; r++) {
		if (tenant_key_new(anes_res_client_key(r)))
			anes_pack_kv_u64(pk, anes_res_client_key(r), anes_res_client_limit(lim, r));
		if (tenant_key_new(anes_res_uid_key(r)))
			anes_pack_kv_u64(pk, anes_res_uid_key(r), anes_res_uid_limit(lim, r));
		if (tenant_key_new(anes_res_daemon_key(r)))
			anes_pack_kv_u64(pk, anes_res_daemon_key(r), anes_res_daemon_limit(lim, r));
	}
}

static void m_hello(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	const anes_limits *lim = &c->srv->lim;
	uint64_t version;
	const char *name = NULL;
	uint32_t name_len = 0;

	if (c->hello_done) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_HANDSHAKE, "hello was already done");
		return;
	}
	int r = anes_mp_u64(m->params, "protocol", UINT64_MAX, &version);
	if (r < 0) {
		anes_reply_param(c, m, "protocol", r);
		return;
	}
	/* First: a client of another version may send other fields, or other values. */
	if (version != ANES_PROTOCOL_VERSION) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_VERSION,
		                      "protocol version %llu is not supported (this daemon speaks %d)",
		                      (unsigned long long)version, ANES_PROTOCOL_VERSION);
		return;
	}
	r = anes_mp_str(m->params, "client", ANES_CLIENT_NAME_MAX, &name, &name_len);
	if (r < 0 && r != -ENOENT) {
		anes_reply_param(c, m, "client", r);
		return;
	}
	/* The scheduling class of the client process (docs/protocol.md,
	 * "Scheduling"): anyone may ask for less, interactive only the uids
	 * the configuration names. */
	const char *prio = NULL;
	uint32_t prio_len = 0;
	int sclass = -1;
	r = anes_mp_str(m->params, "priority", 16, &prio, &prio_len);
	if (r < 0 && r != -ENOENT) {
		anes_reply_param(c, m, "priority", r);
		return;
	}
	if (r == 0) {
		sclass = anes_sclass_parse(prio, prio_len);
		if (sclass < 0) {
			anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS,
			                      "priority must be \"interactive\", \"default\" or \"background\"");
			return;
		}
		bool allowed = sclass != ANES_SCLASS_INTERACTIVE;
		for (size_t i = 0; !allowed && i < c->srv->cfg.n_interactive_uids; i++)
			allowed = c->srv->cfg.interactive_uids[i] == c->tenant->uid;
		if (!allowed) {
			anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS,
			                      "priority \"interactive\" is not allowed for uid %u "
			                      "(the daemon's interactive_uid)", (unsigned)c->tenant->uid);
			return;
		}
	}
	/* The name only goes into logs: keep it printable. */
	for (uint32_t i = 0; i < name_len; i++) {
		unsigned char ch = (unsigned char)name[i];
		c->name[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
	}
	c->name[name_len] = '\0';
	c->hello_done = true;
	if (sclass >= 0)
		anes_pool_set_class(c->srv->pool, &c->tenant->sflow, (anes_sclass)sclass);
	if (name_len > 0)   /* the process's latest name, for status */
		memcpy(c->tenant->name, c->name, name_len + 1);
	if (c->srv->cfg.verbose && c->name[0])
		anes_log("client #%llu is \"%s\"", (unsigned long long)c->serial, c->name);

	anes_frame f;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, m->msgid, 5);
	anes_pack_kv_u64(&f.pk, "protocol", ANES_PROTOCOL_VERSION);
	pack_kv_str(&f.pk, "server", "aneshared");
	pack_kv_str(&f.pk, "version", ANES_VERSION);
	pack_kv_str(&f.pk, "backend", backend_name(c->srv));
	anes_pack_str(&f.pk, "limits");
	msgpack_pack_map(&f.pk, 18 + 1 + 4 + 4 + 3 + count_tenant_limits());
	anes_pack_kv_u64(&f.pk, "max_frame", lim->max_frame);
	anes_pack_kv_u64(&f.pk, "max_fds_per_frame", ANES_MAX_FDS_PER_FRAME);
	anes_pack_kv_u64(&f.pk, "max_surfaces", lim->max_surfaces);
	anes_pack_kv_u64(&f.pk, "max_surface_bytes", lim->max_surface_bytes);
	anes_pack_kv_u64(&f.pk, "max_total_surface_bytes", lim->max_total_surface_bytes);
	anes_pack_kv_u64(&f.pk, "max_daemon_surface_bytes", lim->max_daemon_surface_bytes);
	anes_pack_kv_u64(&f.pk, "max_programs", lim->max_programs);
	anes_pack_kv_u64(&f.pk, "max_inflight", lim->max_inflight);
	anes_pack_kv_u64(&f.pk, "max_mil_bytes", lim->max_mil_bytes);
	anes_pack_kv_u64(&f.pk, "max_weights", lim->max_weights);
	anes_pack_kv_u64(&f.pk, "max_weight_bytes", lim->max_weight_bytes);
	anes_pack_kv_u64(&f.pk, "max_rank", ANES_MAX_RANK);
	anes_pack_kv_u64(&f.pk, "max_dim", ANES_MIL_MAX_DIM);
	anes_pack_kv_u64(&f.pk, "max_tensor_bytes", anes_mil_get_limits()->max_tensor_bytes);
	anes_pack_kv_u64(&f.pk, "max_unsent_bytes", lim->max_unsent_bytes);
	anes_pack_kv_u64(&f.pk, "drop_unsent_bytes", lim->drop_unsent_bytes);
	anes_pack_kv_u64(&f.pk, "drop_unsent_seconds", lim->drop_unsent_seconds);
	anes_pack_kv_u64(&f.pk, "drop_unsent_hard_bytes", lim->drop_unsent_hard_bytes);
	anes_pack_kv_u64(&f.pk, "max_connections", lim->max_connections);
	pack_tenant_limits(&f.pk, lim);
	anes_pack_kv_u64(&f.pk, "max_hello_frame", lim->max_hello_frame);
	anes_pack_kv_u64(&f.pk, "max_input_bytes", lim->max_input_bytes);
	anes_pack_kv_u64(&f.pk, "hello_timeout_ms", lim->hello_timeout_ms);
	anes_pack_kv_u64(&f.pk, "frame_timeout_ms", lim->frame_timeout_ms);
	anes_pack_kv_u64(&f.pk, "max_exports_per_conn", lim->max_exports_per_conn);
	anes_pack_kv_u64(&f.pk, "max_daemon_exports", lim->max_daemon_exports);
	anes_pack_kv_u64(&f.pk, "max_export_uses", lim->max_export_uses);
	anes_pack_kv_u64(&f.pk, "max_export_ttl_ms", lim->max_export_ttl_ms);
	anes_pack_kv_u64(&f.pk, "max_events_per_conn", lim->max_events_per_conn);
	anes_pack_kv_u64(&f.pk, "max_daemon_events", lim->max_daemon_events);
	anes_pack_kv_u64(&f.pk, "max_event_waits", lim->max_event_waits);
	anes_conn_send(c, &f, m->msgid, NULL, 0);
}

typedef struct status_ctx {
	msgpack_packer *pk;
	uint32_t n;      /* entries to list */
	uint32_t done;
} status_ctx;

static void count_ready(anes_centry *e, void *ud)
{
	status_ctx *ctx = ud;
	if (e->state == ANES_CE_READY)
		ctx->n++;
}

static void pack_program(anes_centry *e, void *ud)
{
	status_ctx *ctx = ud;
	if (e->state != ANES_CE_READY || ctx->done >= ctx->n)
		return;
	msgpack_pack_map(ctx->pk, 2);
	anes_pack_str(ctx->pk, "key");
	anes_pack_strn(ctx->pk, e->hex, 2 * ANES_KEY_SIZE);
	anes_pack_kv_u64(ctx->pk, "refs", e->handles);
	ctx->done++;
}

/* What a client process holds now: the tenant's counters. */
static void pack_process(msgpack_packer *pk, const anes_tenant *t, uint64_t device_ns_all)
{
	msgpack_pack_map(pk, 18);
	anes_pack_str(pk, "name");
	anes_pack_strn(pk, t->name, strnlen(t->name, sizeof(t->name)));
	anes_pack_kv_u64(pk, "pid", t->pid > 0 ? (uint64_t)t->pid : 0);
	anes_pack_kv_u64(pk, "uid", t->uid);
	anes_pack_kv_u64(pk, "connections", t->n_conns);
	for (int r = 0; r < ANES_RES_N; r++)
		anes_pack_kv_u64(pk, anes_res_name(r), anes_tenant_use(t, r));
	anes_pack_kv_u64(pk, "runs", atomic_load_explicit(&t->runs, memory_order_relaxed));
	/* The fair scheduler (jobsched.h): its jobs waiting for a worker, and
	 * the device time its finished jobs took, also as a percentage of all
	 * current clients'. */
	uint64_t dev = atomic_load_explicit(&t->sflow.device_ns, memory_order_relaxed);
	pack_kv_str(pk, "priority", anes_sclass_name(t->sflow.sclass));
	anes_pack_kv_u64(pk, "queued", atomic_load_explicit(&t->sflow.queued, memory_order_relaxed));
	anes_pack_kv_u64(pk, "device_us", dev / 1000u);
	anes_pack_kv_u64(pk, "device_share",
	                 device_ns_all ? (uint64_t)((double)dev * 100.0 / (double)device_ns_all + 0.5) : 0);
	anes_pack_kv_u64(pk, "events", t->events);
}

/* The daemon's totals against their limits. */
static void pack_totals(msgpack_packer *pk, const anes_server *srv)
{
	msgpack_pack_array(pk, ANES_RES_N);
	for (int r = 0; r < ANES_RES_N; r++) {
		msgpack_pack_map(pk, 5);
		pack_kv_str(pk, "resource", anes_res_name(r));
		anes_pack_kv_u64(pk, "used", anes_tenants_total(&srv->tenants, r));
		anes_pack_kv_u64(pk, "limit", anes_res_daemon_limit(&srv->lim, r));
		anes_pack_kv_u64(pk, "client_limit", anes_res_client_limit(&srv->lim, r));
		anes_pack_kv_u64(pk, "uid_limit", anes_res_uid_limit(&srv->lim, r));
	}
}

static void m_status(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	anes_server *srv = c->srv;
	anes_frame f;
	status_ctx ctx = { .pk = &f.pk };

	anes_frame_init(&f);
	anes_cache_foreach(srv->cache, count_ready, &ctx);
	/* Bounded: a process entry packs to at most ~420 bytes and gets a
	 * quarter of max_frame (at most 1024 of them); a program entry to at
	 * most ~90 bytes, the rest.  Longer lists are cut (processes_total and
	 * the totals still count everything). */
	uint32_t n_procs = srv->tenants.n_procs, procs_fit = srv->lim.max_frame / 4 / 512;
	if (procs_fit > 1024)
		procs_fit = 1024;
	if (n_procs > procs_fit)
		n_procs = procs_fit;
	/* Shared surfaces get an eighth (anes_share_pack_status). */
	uint32_t fit = (srv->lim.max_frame - 2048 - srv->lim.max_frame / 4 - srv->lim.max_frame / 8) / 96;
	if (ctx.n > fit)
		ctx.n = fit;

	const anes_backend *b = srv->backend;
	anes_worker_info wi = { 0 };
	if (b->ops->worker_info)
		b->ops->worker_info(srv->backend, &wi);
	anes_pack_result(&f.pk, m->msgid, b->ops->worker_info ? 34 : 33);
	pack_kv_str(&f.pk, "server", "aneshared");
	pack_kv_str(&f.pk, "version", ANES_VERSION);
	anes_pack_kv_u64(&f.pk, "protocol", ANES_PROTOCOL_VERSION);
	pack_kv_str(&f.pk, "backend", backend_name(srv));
	anes_pack_kv_u64(&f.pk, "uptime_ms", (uv_hrtime() - srv->start_ns) / 1000000u);
	anes_pack_kv_u64(&f.pk, "clients", srv->n_conns);
	anes_pack_kv_u64(&f.pk, "surfaces", srv->stats.surfaces);
	anes_pack_kv_u64(&f.pk, "surface_bytes", srv->stats.surface_bytes);
	anes_pack_kv_u64(&f.pk, "states", srv->stats.states);
	anes_pack_kv_u64(&f.pk, "state_bytes", srv->stats.state_bytes);
	anes_pack_kv_u64(&f.pk, "events", srv->stats.events);
	anes_pack_kv_u64(&f.pk, "runs", srv->stats.runs);
	anes_pack_kv_u64(&f.pk, "lane_runs", srv->stats.lane_runs);
	anes_pack_kv_u64(&f.pk, "lane_spins", srv->stats.lane_spins);
	anes_pack_kv_u64(&f.pk, "lane_spin_hits", srv->stats.lane_spin_hits);
	anes_pack_kv_u64(&f.pk, "lane_spin_gaps", srv->stats.lane_spin_gaps);
	anes_pack_kv_u64(&f.pk, "lane_spin_skips", srv->stats.lane_spin_skips);
	anes_pack_kv_u64(&f.pk, "lane_slice_ends", srv->stats.lane_slice_ends);
	anes_pack_kv_u64(&f.pk, "event_runs", srv->stats.event_runs);
	anes_pack_kv_u64(&f.pk, "compiles", srv->stats.compiles);
	anes_pack_kv_u64(&f.pk, "cache_hits", srv->stats.cache_hits);
	anes_pack_kv_u64(&f.pk, "refused", srv->stats.refused);
	anes_pack_kv_u64(&f.pk, "dropped", srv->stats.dropped);
	anes_pack_kv_u64(&f.pk, "turned_away", srv->stats.turned_away);
	/* Input memory and deadlines (conn.c, "input limits"). */
	uint64_t input_bytes, waiting = 0;
	pthread_mutex_lock(&srv->input_mu);
	input_bytes = srv->input_used;
	for (const anes_conn *w = srv->input_wait_head; w; w = w->input_next)
		waiting++;
	waiting += srv->input_tenant_waiters;
	pthread_mutex_unlock(&srv->input_mu);
	anes_pack_str(&f.pk, "input");
	msgpack_pack_map(&f.pk, 3);
	anes_pack_kv_u64(&f.pk, "bytes", input_bytes);
	anes_pack_kv_u64(&f.pk, "waiting", waiting);
	anes_pack_kv_u64(&f.pk, "timed_out", srv->stats.timed_out);
	anes_pack_kv_u64(&f.pk, "ane_copies", b->ops->copies ? b->ops->copies(srv->backend) : 0);
	if (b->ops->worker_info) {
		anes_pack_str(&f.pk, "worker");
		msgpack_pack_map(&f.pk, 13);
		anes_pack_kv_u64(&f.pk, "pid", wi.pid > 0 ? (uint64_t)wi.pid : 0);
		pack_kv_str(&f.pk, "backend", wi.backend ? wi.backend : "unknown");
		anes_pack_kv_u64(&f.pk, "restarts", wi.restarts);
		anes_pack_kv_u64(&f.pk, "compiles", wi.compiles);
		anes_pack_kv_u64(&f.pk, "compile_budget", wi.compile_budget);
		anes_pack_kv_u64(&f.pk, "recompiles", wi.recompiles);
		anes_pack_kv_u64(&f.pk, "workers", wi.workers);
		anes_pack_kv_u64(&f.pk, "max_workers", wi.max_workers);
		anes_pack_kv_u64(&f.pk, "programs", wi.programs);
		anes_pack_kv_u64(&f.pk, "watchdog_kills", wi.watchdog_kills);
		anes_pack_kv_u64(&f.pk, "restoring", wi.restoring);
		anes_pack_kv_u64(&f.pk, "run_deadline_floor_ms", wi.run_floor_ms);
		anes_pack_kv_u64(&f.pk, "compile_deadline_floor_ms", wi.compile_floor_ms);
	}
	anes_pack_str(&f.pk, "programs");
	msgpack_pack_array(&f.pk, ctx.n);
	anes_cache_foreach(srv->cache, pack_program, &ctx);
	anes_pack_str(&f.pk, "totals");
	pack_totals(&f.pk, srv);
	anes_pack_kv_u64(&f.pk, "processes_total", srv->tenants.n_procs);
	anes_pack_str(&f.pk, "processes");
	msgpack_pack_array(&f.pk, n_procs);
	uint64_t device_ns_all = 0;
	for (const anes_tenant *t = srv->tenants.procs; t; t = t->next)
		device_ns_all += atomic_load_explicit(&t->sflow.device_ns, memory_order_relaxed);
	uint32_t i = 0;
	for (const anes_tenant *t = srv->tenants.procs; t && i < n_procs; t = t->next, i++)
		pack_process(&f.pk, t, device_ns_all);
	/* Per uid: as many as the processes listed, at most (~100 bytes each). */
	uint32_t n_users = srv->tenants.n_users < n_procs ? srv->tenants.n_users : n_procs;
	anes_pack_str(&f.pk, "users");
	msgpack_pack_array(&f.pk, n_users);
	i = 0;
	for (const anes_tenant *u = srv->tenants.users; u && i < n_users; u = u->next, i++) {
		msgpack_pack_map(&f.pk, 1 + ANES_RES_N);
		anes_pack_kv_u64(&f.pk, "uid", u->uid);
		for (int r = 0; r < ANES_RES_N; r++)
			anes_pack_kv_u64(&f.pk, anes_res_name(r), anes_tenant_use(u, r));
	}
	anes_share_pack_status(&f.pk, srv, srv->lim.max_frame / 8);
	anes_conn_send(c, &f, m->msgid, NULL, 0);
}

/* ---- surfaces ---------------------------------------------------------------- */

/* The connection's own caps (its ID table), then the charge to its client
 * process and (daemon) the daemon (tenant.h).  On success the surface is
 * charged: every later failure must call anes_surface_uncharge. */
bool anes_surface_limits_ok(anes_conn *c, uint32_t msgid, uint64_t size, bool fd, bool daemon)
{
	const anes_limits *lim = &c->srv->lim;
	uint32_t id;

	if (c->surfaces_alive >= lim->max_surfaces) {
		anes_conn_reply_error(c, msgid, ANES_WERR_LIMIT,
		                      "too many surfaces on this connection (max_surfaces %u)", lim->max_surfaces);
		return false;
	}
	if (anes_idt_peek(&c->surfaces, &id) < 0) {
		anes_conn_reply_error(c, msgid, ANES_WERR_LIMIT, "surface IDs exhausted");
		return false;
	}
	if (anes_idt_reserve(&c->surfaces, 1) < 0) {
		anes_conn_reply_error(c, msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return false;
	}
	anes_res res;
	int r = anes_surface_charge(c, size, fd, daemon, &res);
	if (r < 0) {
		char msg[ANES_ERRMSG_MAX];
		anes_tenant_limit_msg(c->tenant, res, res == ANES_RES_SURFACE_BYTES ? size : 1, r, msg,
		                      sizeof(msg));
		anes_conn_reply_error(c, msgid, ANES_WERR_LIMIT, "%s", msg);
		return false;
	}
	return true;
}

/* Answer {id, size} with fd (or none) attached, and only then enter the
 * surface in the table, so that a failure leaves the table unchanged. */
void anes_surface_reply(anes_conn *c, uint32_t msgid, anes_surface *s, int fd, bool with_ro)
{
	uint32_t id;
	void *data;
	size_t len;
	anes_frame f;

	(void)anes_idt_peek(&c->surfaces, &id);
	anes_frame_init(&f);
	anes_pack_result(&f.pk, msgid, 2 + (s->shm != NULL) + with_ro);
	anes_pack_kv_u64(&f.pk, "id", id);
	anes_pack_kv_u64(&f.pk, "size", s->size);
	if (s->shm)   /* named by ID (macOS): no fd (docs/protocol.md) */
		anes_pack_kv_u64(&f.pk, "iosurface_id", s->shm->id);
	if (with_ro) {
		anes_pack_str(&f.pk, "read_only");
		pack_bool(&f.pk, s->read_only);
	}
	int r = anes_frame_finish(&f, fd >= 0 ? 1 : 0, c->io.max_frame, &data, &len);
	if (r < 0) {
		anes_frame_release(&f);
		anes_surface_unref(s);
		if (fd >= 0)
			close(fd);
		anes_conn_reply_error(c, msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return;
	}
	/* Cannot fail: the ID was checked and the slot reserved. */
	(void)anes_idt_insert(&c->surfaces, s, NULL);
	anes_conn_queue(c, data, len, fd >= 0 ? &fd : NULL, fd >= 0 ? 1 : 0);
}

static void m_surface_create(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	uint64_t size;
	int fd;
	anes_surface *s;

	int r = anes_mp_u64(m->params, "size", c->srv->lim.max_surface_bytes, &size);
	if (r < 0 || size == 0) {
		anes_reply_param(c, m, "size", r < 0 ? r : -EINVAL);
		return;
	}
	const anes_shm_ops *so = anes_shm_default();
	bool keep_fd = anes_surface_keeps_fd(c->srv);
	if (!anes_surface_limits_ok(c, m->msgid, size, keep_fd, true))
		return;
	if (so->by_id) {
		anes_shm *shm;
		r = so->create(size, &shm);
		if (r < 0) {
			anes_surface_uncharge(c, size, false, true);
			reply_errno(c, m, r, "creating the IOSurface");
			return;
		}
		r = anes_surface_new_shm(c, shm, true, &s);
		if (r < 0) {
			so->release(shm);
			anes_surface_uncharge(c, size, false, true);
			reply_errno(c, m, r, "creating the surface");
			return;
		}
		anes_surface_reply(c, m->msgid, s, -1, false);
		return;
	}
	r = anes_memfd_create("aneshare-surface", size, &fd);
	if (r < 0) {
		anes_surface_uncharge(c, size, keep_fd, true);
		reply_errno(c, m, r, "creating the memfd");
		return;
	}
	r = anes_surface_new(c, fd, size, &s);
	if (r < 0) {
		close(fd);
		anes_surface_uncharge(c, size, keep_fd, true);
		reply_errno(c, m, r, "mapping the surface");
		return;
	}
	anes_surface_reply(c, m->msgid, s, fd, false);
}

/* surface.import {iosurface_id} (macOS).  Policy (docs/security.md): the
 * ID of a surface this daemon created is refused, so that no connection
 * reaches another's surface through the daemon by naming its ID.  Any other
 * surface the daemon can look up is accepted: it cannot tell who created it. */
static void import_by_id(anes_conn *c, const anes_msg *m, unsigned nfds)
{
	const anes_shm_ops *so = anes_shm_default();
	uint32_t ios_id;
	uint64_t size;
	anes_shm *shm;
	anes_surface *s;

	int r = anes_mp_u32(m->params, "iosurface_id", &ios_id);
	if (r < 0 || ios_id == 0) {
		anes_reply_param(c, m, "iosurface_id", r < 0 ? r : -EINVAL);
		return;
	}
	if (nfds != 0) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_BAD_FD,
		                      "surface.import by iosurface_id takes no fd");
		return;
	}
	if (!so->by_id) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS,
		                      "this daemon's surfaces are %s, not named by IOSurface ID", so->name);
		return;
	}
	if (anes_surface_shm_created(ios_id)) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS,
		                      "IOSurface %u was created by this daemon: it cannot be imported",
		                      ios_id);
		return;
	}
	r = so->lookup(ios_id, &shm);
	if (r == -ENOENT) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_SUCH_SURFACE,
		                      "no IOSurface %u visible to the daemon (an IOSurface made by another "
		                      "process is visible only if created with kIOSurfaceIsGlobal = true)",
		                      ios_id);
		return;
	}
	if (r < 0) {
		reply_errno(c, m, r, "looking up the IOSurface");
		return;
	}
	size = shm->size;
	if (size > c->srv->lim.max_surface_bytes) {
		so->release(shm);
		anes_conn_reply_error(c, m->msgid, ANES_WERR_LIMIT,
		                      "the IOSurface's size %llu is over %llu",
		                      (unsigned long long)size,
		                      (unsigned long long)c->srv->lim.max_surface_bytes);
		return;
	}
	if (!anes_surface_limits_ok(c, m->msgid, size, false, true)) {
		so->release(shm);
		return;
	}
	r = anes_surface_new_shm(c, shm, false, &s);
	if (r < 0) {
		so->release(shm);
		anes_surface_uncharge(c, size, false, true);
		reply_errno(c, m, r, "importing the surface");
		return;
	}
	anes_surface_reply(c, m->msgid, s, -1, false);
}

static void m_surface_import(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	uint64_t size;
	anes_surface *s;

	if (anes_mp_get(m->params, "token")) {
		anes_share_import(c, m, nfds);   /* share.c */
		return;
	}
	if (anes_mp_get(m->params, "iosurface_id")) {
		import_by_id(c, m, nfds);
		return;
	}
	if (nfds != 1) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_BAD_FD,
		                      "surface.import takes exactly one fd, got %u", nfds);
		return;
	}
	int r = anes_memfd_check(fds[0], &size);
	if (r < 0) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_BAD_FD,
		                      "the fd is not a memfd sealed against shrinking");
		return;
	}
	if (size == 0 || size > c->srv->lim.max_surface_bytes) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_BAD_FD,
		                      "the memfd's size %llu is not within 1..%llu",
		                      (unsigned long long)size,
		                      (unsigned long long)c->srv->lim.max_surface_bytes);
		return;
	}
	bool keep_fd = anes_surface_keeps_fd(c->srv);
	if (!anes_surface_limits_ok(c, m->msgid, size, keep_fd, true))
		return;
	/* The mapping keeps the memory; the dispatcher closes the fd. */
	r = anes_surface_new(c, fds[0], size, &s);
	if (r < 0)
		anes_surface_uncharge(c, size, keep_fd, true);
	if (r == -EPERM || r == -EACCES) {
		/* Sealed against writing, or opened read-only. */
		anes_conn_reply_error(c, m->msgid, ANES_WERR_BAD_FD,
		                      "the memfd cannot be mapped for reading and writing");
		return;
	}
	if (r < 0) {
		reply_errno(c, m, r, "mapping the surface");
		return;
	}
	anes_surface_reply(c, m->msgid, s, -1, false);
}

static void m_surface_release(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	uint32_t id;
	int r = anes_mp_u32(m->params, "id", &id);
	if (r < 0) {
		anes_reply_param(c, m, "id", r);
		return;
	}
	anes_surface *s = anes_idt_remove(&c->surfaces, id);
	if (!s) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_SUCH_SURFACE, "no surface %u", id);
		return;
	}
	bool deferred = anes_surface_drop(s);

	anes_frame f;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, m->msgid, 1);
	anes_pack_str(&f.pk, "deferred");
	pack_bool(&f.pk, deferred);
	anes_conn_send(c, &f, m->msgid, NULL, 0);
}

/* ---- programs ------------------------------------------------------------------ */

static void m_program_compile(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	const anes_limits *lim = &c->srv->lim;
	const char *mil;
	uint32_t mil_len;
	const msgpack_object *wmap = NULL;

	int r = anes_mp_str(m->params, "mil", lim->max_mil_bytes, &mil, &mil_len);
	if (r < 0) {
		anes_reply_param(c, m, "mil", r);
		return;
	}
	r = anes_mp_map(m->params, "weights", lim->max_weights, &wmap);
	if (r < 0 && r != -ENOENT) {
		anes_reply_param(c, m, "weights", r);
		return;
	}
	/* weight files: weight_fds[i] is the path of the i-th fd of the frame */
	const msgpack_object *fpaths = NULL;
	uint32_t nf = 0;
	r = anes_mp_array(m->params, "weight_fds", ANES_MAX_FDS_PER_FRAME, &fpaths, &nf);
	if (r < 0 && r != -ENOENT) {
		anes_reply_param(c, m, "weight_fds", r);
		return;
	}
	if (r == -ENOENT)
		nf = 0;
	if (nf != nfds) {   /* a missing fd, or one where none belongs: bad_fd */
		anes_conn_reply_error(c, m->msgid, ANES_WERR_BAD_FD,
		                      "weight_fds names %u files, the request carries %u fds", nf, nfds);
		return;
	}
	uint32_t n = wmap ? wmap->via.map.size : 0;
	uint64_t wbytes = 0;
	for (uint32_t i = 0; i < n; i++)
		if (wmap->via.map.ptr[i].val.type == MSGPACK_OBJECT_BIN)
			wbytes += wmap->via.map.ptr[i].val.via.bin.size;
	if (wbytes > lim->max_weight_bytes) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS,
		                      "the weights hold %llu bytes, more than max_weight_bytes (%llu)",
		                      (unsigned long long)wbytes, (unsigned long long)lim->max_weight_bytes);
		return;
	}
	anes_wire_weight *ws = NULL;
	if (n + nf > 0) {
		ws = calloc(n + nf, sizeof(*ws));
		if (!ws) {
			anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "out of memory");
			return;
		}
	}
	for (uint32_t i = 0; i < n; i++) {
		const msgpack_object_kv *kv = &wmap->via.map.ptr[i];
		/* The backend gets the path as a C string: an empty path or an
		 * embedded NUL could never name a BLOBFILE. */
		if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size == 0 ||
		    kv->key.via.str.size > ANES_WEIGHT_PATH_MAX ||
		    memchr(kv->key.via.str.ptr, '\0', kv->key.via.str.size)) {
			anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS,
			                      "weight paths must be strings of 1..%d bytes without NUL",
			                      ANES_WEIGHT_PATH_MAX);
			free(ws);
			return;
		}
		if (kv->val.type != MSGPACK_OBJECT_BIN) {
			anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS,
			                      "weight \"%.*s\" is not a bin", (int)kv->key.via.str.size,
			                      kv->key.via.str.ptr);
			free(ws);
			return;
		}
		ws[i] = (anes_wire_weight){
			.path = kv->key.via.str.ptr,
			.path_len = kv->key.via.str.size,
			.data = kv->val.via.bin.ptr,
			.len = kv->val.via.bin.size,
		};
	}
	for (uint32_t i = 0; i < nf; i++) {
		const msgpack_object *o = &fpaths[i];
		const char *err = NULL;
		if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 || o->via.str.size > ANES_WEIGHT_PATH_MAX ||
		    memchr(o->via.str.ptr, '\0', o->via.str.size))
			err = "weight paths must be strings of 1..256 bytes without NUL";
		for (uint32_t k = 0; !err && k < n + i; k++)
			if (ws[k].path_len == o->via.str.size && !memcmp(ws[k].path, o->via.str.ptr, o->via.str.size))
				err = "a weight path is given twice";
		int wr = err ? 0 : anes_wfile_open(fds[i], lim->max_daemon_program_bytes, &ws[n + i].file);
		if (!err && wr < 0)
			err = wr == -EFBIG ? "a weight file is larger than max_daemon_program_bytes"
			                   : "a weight fd is not a regular file (or memfd) open for reading";
		if (err) {
			anes_conn_reply_error(c, m->msgid, wr < 0 && wr != -EFBIG ? ANES_WERR_BAD_FD : ANES_WERR_INVALID_PARAMS,
			                      "%s", err);
			for (uint32_t k = n; k < n + i; k++)
				anes_wfile_free(ws[k].file);
			free(ws);
			return;
		}
		ws[n + i].path = o->via.str.ptr;
		ws[n + i].path_len = o->via.str.size;
	}
	/* the fds themselves are closed by the dispatcher; the files keep duplicates */
	anes_program_compile(c, m->msgid, mil, mil_len, ws, n + nf);
	free(ws);
}

bool anes_lookup_program(anes_conn *c, const anes_msg *m, const char *key, anes_centry **ret)
{
	uint32_t id;
	int r = anes_mp_u32(m->params, key, &id);
	if (r < 0) {
		anes_reply_param(c, m, key, r);
		return false;
	}
	anes_centry *e = anes_idt_find(&c->programs, id);
	if (!e) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_SUCH_PROGRAM, "no program %u", id);
		return false;
	}
	*ret = e;
	return true;
}

static void pack_tensors(msgpack_packer *pk, const anes_tensor_desc *t, uint32_t n)
{
	msgpack_pack_array(pk, n);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t rank = t[i].rank <= ANES_MAX_RANK ? t[i].rank : ANES_MAX_RANK;
		msgpack_pack_map(pk, 4);
		anes_pack_str(pk, "name");
		anes_pack_strn(pk, t[i].name, strlen(t[i].name));
		pack_kv_str(pk, "dtype", dtype_str(t[i].dtype));
		anes_pack_str(pk, "shape");
		msgpack_pack_array(pk, rank);
		for (uint32_t d = 0; d < rank; d++)
			msgpack_pack_uint64(pk, t[i].shape[d]);
		anes_pack_kv_u64(pk, "bytes", t[i].bytes);
	}
}

static void m_program_info(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	anes_centry *e;
	if (!anes_lookup_program(c, m, "id", &e))
		return;
	const anes_bprogram *p = e->prog;

	anes_frame f;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, m->msgid, 2);
	anes_pack_str(&f.pk, "key");
	anes_pack_strn(&f.pk, e->hex, 2 * ANES_KEY_SIZE);
	anes_pack_str(&f.pk, "functions");
	msgpack_pack_array(&f.pk, p->n_functions);
	for (uint32_t i = 0; i < p->n_functions; i++) {
		const anes_function_info *fn = &p->functions[i];
		msgpack_pack_map(&f.pk, 4);
		anes_pack_str(&f.pk, "name");
		anes_pack_strn(&f.pk, fn->name, strlen(fn->name));
		anes_pack_str(&f.pk, "inputs");
		pack_tensors(&f.pk, fn->inputs, fn->n_inputs);
		anes_pack_str(&f.pk, "outputs");
		pack_tensors(&f.pk, fn->outputs, fn->n_outputs);
		anes_pack_str(&f.pk, "states");
		pack_tensors(&f.pk, fn->states, fn->n_states);
	}
	anes_conn_send(c, &f, m->msgid, NULL, 0);
}

static void m_program_release(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	anes_centry *e;
	if (!anes_lookup_program(c, m, "id", &e))
		return;
	uint32_t id;
	(void)anes_mp_u32(m->params, "id", &id);
	anes_idt_remove(&c->programs, id);
	anes_centry_drop_handle(e, c->tenant);
	anes_conn_reply_empty(c, m->msgid);
}

/* ---- dispatch ---------------------------------------------------------------------- */

static const struct method {
	const char *name;
	method_fn fn;
	bool takes_fd;
} methods[] = {
	{ "hello", m_hello, false },
	{ "status", m_status, false },
	{ "surface.create", m_surface_create, false },
	{ "surface.import", m_surface_import, true },
	{ "surface.release", m_surface_release, false },
	{ "surface.export", anes_share_export, false },
	{ "program.compile", m_program_compile, true },
	{ "program.info", m_program_info, false },
	{ "program.release", m_program_release, false },
	{ "state.create", anes_m_state_create, false },
	{ "state.reset", anes_m_state_reset, false },
	{ "state.release", anes_m_state_release, false },
	{ "event.create", anes_m_event_create, false },
	{ "event.signal", anes_m_event_signal, false },
	{ "event.wait", anes_m_event_wait, false },
	{ "event.export", anes_share_event_export, false },
	{ "event.import", anes_share_event_import, false },
	{ "event.release", anes_m_event_release, false },
};

bool anes_request_admit(anes_conn *c, uint32_t msgid, bool is_hello)
{
	if (!c->hello_done && !is_hello) {
		anes_conn_reply_error(c, msgid, ANES_WERR_HANDSHAKE, "the first request must be hello");
		return false;
	}
	if (c->srv->draining && !c->predrain_frame) {
		anes_conn_reply_error(c, msgid, ANES_WERR_SHUTTING_DOWN,
		                      "the daemon is shutting down; the request was not done");
		return false;
	}
	return true;
}

void anes_dispatch_request(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	const struct method *md = NULL;
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		if (anes_msg_method_is(m, methods[i].name)) {
			md = &methods[i];
			break;
		}
	}
	if (!anes_request_admit(c, m->msgid, md && md->fn == m_hello))
		return;
	if (!md) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_UNKNOWN_METHOD, "no method \"%.*s\"",
		                      (int)m->method_len, m->method);
		return;
	}
	if (nfds > 0 && !md->takes_fd) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_BAD_FD, "%s takes no file descriptor",
		                      md->name);
		return;
	}
	md->fn(c, m, fds, nfds);
}
