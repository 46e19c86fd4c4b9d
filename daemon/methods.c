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

typedef void (*method_fn)(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);

uint64_t anes_now_ns(void)
{
	return anes_clock_monotonic_ns();   /* a measurement: the real time, whatever the rules see */
}

static void reply_param(anes_conn *c, const anes_msg *m, const char *key, int r)
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

static void pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t v)
{
	anes_pack_str(pk, key);
	msgpack_pack_uint64(pk, v);
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
			pack_kv_u64(pk, anes_res_client_key(r), anes_res_client_limit(lim, r));
		if (tenant_key_new(anes_res_uid_key(r)))
			pack_kv_u64(pk, anes_res_uid_key(r), anes_res_uid_limit(lim, r));
		if (tenant_key_new(anes_res_daemon_key(r)))
			pack_kv_u64(pk, anes_res_daemon_key(r), anes_res_daemon_limit(lim, r));
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
		reply_param(c, m, "protocol", r);
		return;
	}
	r = anes_mp_str(m->params, "client", ANES_CLIENT_NAME_MAX, &name, &name_len);
	if (r < 0 && r != -ENOENT) {
		reply_param(c, m, "client", r);
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
		reply_param(c, m, "priority", r);
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
	if (version != ANES_PROTOCOL_VERSION) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_VERSION,
		                      "protocol version %llu is not supported (this daemon speaks %d)",
		                      (unsigned long long)version, ANES_PROTOCOL_VERSION);
		return;
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
	pack_kv_u64(&f.pk, "protocol", ANES_PROTOCOL_VERSION);
	pack_kv_str(&f.pk, "server", "aneshared");
	pack_kv_str(&f.pk, "version", ANES_VERSION);
	pack_kv_str(&f.pk, "backend", backend_name(c->srv));
	anes_pack_str(&f.pk, "limits");
	msgpack_pack_map(&f.pk, 18 + 1 + 4 + count_tenant_limits());
	pack_kv_u64(&f.pk, "max_frame", lim->max_frame);
	pack_kv_u64(&f.pk, "max_fds_per_frame", ANES_MAX_FDS_PER_FRAME);
	pack_kv_u64(&f.pk, "max_surfaces", lim->max_surfaces);
	pack_kv_u64(&f.pk, "max_surface_bytes", lim->max_surface_bytes);
	pack_kv_u64(&f.pk, "max_total_surface_bytes", lim->max_total_surface_bytes);
	pack_kv_u64(&f.pk, "max_daemon_surface_bytes", lim->max_daemon_surface_bytes);
	pack_kv_u64(&f.pk, "max_programs", lim->max_programs);
	pack_kv_u64(&f.pk, "max_inflight", lim->max_inflight);
	pack_kv_u64(&f.pk, "max_mil_bytes", lim->max_mil_bytes);
	pack_kv_u64(&f.pk, "max_weights", lim->max_weights);
	pack_kv_u64(&f.pk, "max_weight_bytes", lim->max_weight_bytes);
	pack_kv_u64(&f.pk, "max_rank", ANES_MAX_RANK);
	pack_kv_u64(&f.pk, "max_dim", ANES_MIL_MAX_DIM);
	pack_kv_u64(&f.pk, "max_tensor_bytes", ANES_MIL_MAX_TENSOR_BYTES);
	pack_kv_u64(&f.pk, "max_unsent_bytes", lim->max_unsent_bytes);
	pack_kv_u64(&f.pk, "drop_unsent_bytes", lim->drop_unsent_bytes);
	pack_kv_u64(&f.pk, "drop_unsent_seconds", lim->drop_unsent_seconds);
	pack_kv_u64(&f.pk, "drop_unsent_hard_bytes", lim->drop_unsent_hard_bytes);
	pack_kv_u64(&f.pk, "max_connections", lim->max_connections);
	pack_tenant_limits(&f.pk, lim);
	pack_kv_u64(&f.pk, "max_hello_frame", lim->max_hello_frame);
	pack_kv_u64(&f.pk, "max_input_bytes", lim->max_input_bytes);
	pack_kv_u64(&f.pk, "hello_timeout_ms", lim->hello_timeout_ms);
	pack_kv_u64(&f.pk, "frame_timeout_ms", lim->frame_timeout_ms);
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
	pack_kv_u64(ctx->pk, "refs", e->handles);
	ctx->done++;
}

/* What a client process holds now: the tenant's counters. */
static void pack_process(msgpack_packer *pk, const anes_tenant *t, uint64_t device_ns_all)
{
	msgpack_pack_map(pk, 17);
	anes_pack_str(pk, "name");
	anes_pack_strn(pk, t->name, strnlen(t->name, sizeof(t->name)));
	pack_kv_u64(pk, "pid", t->pid > 0 ? (uint64_t)t->pid : 0);
	pack_kv_u64(pk, "uid", t->uid);
	pack_kv_u64(pk, "connections", t->n_conns);
	for (int r = 0; r < ANES_RES_N; r++)
		pack_kv_u64(pk, anes_res_name(r), anes_tenant_use(t, r));
	pack_kv_u64(pk, "runs", atomic_load_explicit(&t->runs, memory_order_relaxed));
	/* The fair scheduler (jobsched.h): its jobs waiting for a worker, and
	 * the device time its finished jobs took, also as a percentage of all
	 * current clients'. */
	uint64_t dev = atomic_load_explicit(&t->sflow.device_ns, memory_order_relaxed);
	pack_kv_str(pk, "priority", anes_sclass_name(t->sflow.sclass));
	pack_kv_u64(pk, "queued", atomic_load_explicit(&t->sflow.queued, memory_order_relaxed));
	pack_kv_u64(pk, "device_us", dev / 1000u);
	pack_kv_u64(pk, "device_share", device_ns_all ? (uint64_t)((double)dev * 100.0 / (double)device_ns_all + 0.5) : 0);
}

/* The daemon's totals against their limits. */
static void pack_totals(msgpack_packer *pk, const anes_server *srv)
{
	msgpack_pack_array(pk, ANES_RES_N);
	for (int r = 0; r < ANES_RES_N; r++) {
		msgpack_pack_map(pk, 5);
		pack_kv_str(pk, "resource", anes_res_name(r));
		pack_kv_u64(pk, "used", anes_tenants_total(&srv->tenants, r));
		pack_kv_u64(pk, "limit", anes_res_daemon_limit(&srv->lim, r));
		pack_kv_u64(pk, "client_limit", anes_res_client_limit(&srv->lim, r));
		pack_kv_u64(pk, "uid_limit", anes_res_uid_limit(&srv->lim, r));
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
	uint32_t fit = (srv->lim.max_frame - 2048 - srv->lim.max_frame / 4) / 96;
	if (ctx.n > fit)
		ctx.n = fit;

	const anes_backend *b = srv->backend;
	anes_worker_info wi = { 0 };
	if (b->ops->worker_info)
		b->ops->worker_info(srv->backend, &wi);
	anes_pack_result(&f.pk, m->msgid, b->ops->worker_info ? 27 : 26);
	pack_kv_str(&f.pk, "server", "aneshared");
	pack_kv_str(&f.pk, "version", ANES_VERSION);
	pack_kv_u64(&f.pk, "protocol", ANES_PROTOCOL_VERSION);
	pack_kv_str(&f.pk, "backend", backend_name(srv));
	pack_kv_u64(&f.pk, "uptime_ms", (uv_hrtime() - srv->start_ns) / 1000000u);
	pack_kv_u64(&f.pk, "clients", srv->n_conns);
	pack_kv_u64(&f.pk, "surfaces", srv->stats.surfaces);
	pack_kv_u64(&f.pk, "surface_bytes", srv->stats.surface_bytes);
	pack_kv_u64(&f.pk, "runs", srv->stats.runs);
	pack_kv_u64(&f.pk, "lane_runs", srv->stats.lane_runs);
	pack_kv_u64(&f.pk, "lane_spins", srv->stats.lane_spins);
	pack_kv_u64(&f.pk, "lane_spin_hits", srv->stats.lane_spin_hits);
	pack_kv_u64(&f.pk, "lane_spin_gaps", srv->stats.lane_spin_gaps);
	pack_kv_u64(&f.pk, "lane_spin_skips", srv->stats.lane_spin_skips);
	pack_kv_u64(&f.pk, "compiles", srv->stats.compiles);
	pack_kv_u64(&f.pk, "cache_hits", srv->stats.cache_hits);
	pack_kv_u64(&f.pk, "refused", srv->stats.refused);
	pack_kv_u64(&f.pk, "dropped", srv->stats.dropped);
	pack_kv_u64(&f.pk, "turned_away", srv->stats.turned_away);
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
	pack_kv_u64(&f.pk, "bytes", input_bytes);
	pack_kv_u64(&f.pk, "waiting", waiting);
	pack_kv_u64(&f.pk, "timed_out", srv->stats.timed_out);
	pack_kv_u64(&f.pk, "ane_copies", b->ops->copies ? b->ops->copies(srv->backend) : 0);
	if (b->ops->worker_info) {
		anes_pack_str(&f.pk, "worker");
		msgpack_pack_map(&f.pk, 12);
		pack_kv_u64(&f.pk, "pid", wi.pid > 0 ? (uint64_t)wi.pid : 0);
		pack_kv_str(&f.pk, "backend", wi.backend ? wi.backend : "unknown");
		pack_kv_u64(&f.pk, "restarts", wi.restarts);
		pack_kv_u64(&f.pk, "compiles", wi.compiles);
		pack_kv_u64(&f.pk, "compile_budget", wi.compile_budget);
		pack_kv_u64(&f.pk, "recompiles", wi.recompiles);
		pack_kv_u64(&f.pk, "workers", wi.workers);
		pack_kv_u64(&f.pk, "max_workers", wi.max_workers);
		pack_kv_u64(&f.pk, "programs", wi.programs);
		pack_kv_u64(&f.pk, "watchdog_kills", wi.watchdog_kills);
		pack_kv_u64(&f.pk, "run_deadline_floor_ms", wi.run_floor_ms);
		pack_kv_u64(&f.pk, "compile_deadline_floor_ms", wi.compile_floor_ms);
	}
	anes_pack_str(&f.pk, "programs");
	msgpack_pack_array(&f.pk, ctx.n);
	anes_cache_foreach(srv->cache, pack_program, &ctx);
	anes_pack_str(&f.pk, "totals");
	pack_totals(&f.pk, srv);
	pack_kv_u64(&f.pk, "processes_total", srv->tenants.n_procs);
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
		pack_kv_u64(&f.pk, "uid", u->uid);
		for (int r = 0; r < ANES_RES_N; r++)
			pack_kv_u64(&f.pk, anes_res_name(r), anes_tenant_use(u, r));
	}
	anes_conn_send(c, &f, m->msgid, NULL, 0);
}

/* ---- surfaces ---------------------------------------------------------------- */

/* The connection's own caps (its ID table), then the charge to its client
 * process and the daemon (tenant.h).  On success the surface is charged:
 * every later failure must call anes_surface_uncharge. */
static bool surface_limits_ok(anes_conn *c, const anes_msg *m, uint64_t size, bool fd)
{
	const anes_limits *lim = &c->srv->lim;
	uint32_t id;

	if (c->surfaces_alive >= lim->max_surfaces) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_LIMIT,
		                      "too many surfaces on this connection (max %u)", lim->max_surfaces);
		return false;
	}
	if (anes_idt_peek(&c->surfaces, &id) < 0) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_LIMIT, "surface IDs exhausted");
		return false;
	}
	if (anes_idt_reserve(&c->surfaces, 1) < 0) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return false;
	}
	anes_res res;
	int r = anes_surface_charge(c, size, fd, &res);
	if (r < 0) {
		char msg[ANES_ERRMSG_MAX];
		anes_tenant_limit_msg(c->tenant, res, res == ANES_RES_SURFACE_BYTES ? size : 1, r, msg,
		                      sizeof(msg));
		anes_conn_reply_error(c, m->msgid, ANES_WERR_LIMIT, "%s", msg);
		return false;
	}
	return true;
}

/* Answer {id, size} with fd (or none) attached, and only then enter the
 * surface in the table, so that a failure leaves the table unchanged. */
static void surface_reply(anes_conn *c, const anes_msg *m, anes_surface *s, int fd)
{
	uint32_t id;
	void *data;
	size_t len;
	anes_frame f;

	(void)anes_idt_peek(&c->surfaces, &id);
	anes_frame_init(&f);
	anes_pack_result(&f.pk, m->msgid, s->shm ? 3 : 2);
	pack_kv_u64(&f.pk, "id", id);
	pack_kv_u64(&f.pk, "size", s->size);
	if (s->shm)   /* named by ID (macOS): no fd (docs/protocol.md) */
		pack_kv_u64(&f.pk, "iosurface_id", s->shm->id);
	int r = anes_frame_finish(&f, fd >= 0 ? 1 : 0, c->io.max_frame, &data, &len);
	if (r < 0) {
		anes_frame_release(&f);
		anes_surface_unref(s);
		if (fd >= 0)
			close(fd);
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "out of memory");
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
		reply_param(c, m, "size", r < 0 ? r : -EINVAL);
		return;
	}
	const anes_shm_ops *so = anes_shm_default();
	bool keep_fd = !so->by_id && anes_surface_keeps_fd(c->srv);
	if (!surface_limits_ok(c, m, size, keep_fd))
		return;
	if (so->by_id) {
		anes_shm *shm;
		r = so->create(size, &shm);
		if (r < 0) {
			anes_surface_uncharge(c, size, false);
			reply_errno(c, m, r, "creating the IOSurface");
			return;
		}
		r = anes_surface_new_shm(c, shm, true, &s);
		if (r < 0) {
			so->release(shm);
			anes_surface_uncharge(c, size, false);
			reply_errno(c, m, r, "creating the surface");
			return;
		}
		surface_reply(c, m, s, -1);
		return;
	}
	r = anes_memfd_create("aneshare-surface", size, &fd);
	if (r < 0) {
		anes_surface_uncharge(c, size, keep_fd);
		reply_errno(c, m, r, "creating the memfd");
		return;
	}
	r = anes_surface_new(c, fd, size, &s);
	if (r < 0) {
		close(fd);
		anes_surface_uncharge(c, size, keep_fd);
		reply_errno(c, m, r, "mapping the surface");
		return;
	}
	surface_reply(c, m, s, fd);
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
		reply_param(c, m, "iosurface_id", r < 0 ? r : -EINVAL);
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
	if (!surface_limits_ok(c, m, size, false)) {
		so->release(shm);
		return;
	}
	r = anes_surface_new_shm(c, shm, false, &s);
	if (r < 0) {
		so->release(shm);
		anes_surface_uncharge(c, size, false);
		reply_errno(c, m, r, "importing the surface");
		return;
	}
	surface_reply(c, m, s, -1);
}

static void m_surface_import(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	uint64_t size;
	anes_surface *s;

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
	if (!surface_limits_ok(c, m, size, keep_fd))
		return;
	/* The mapping keeps the memory; the dispatcher closes the fd. */
	r = anes_surface_new(c, fds[0], size, &s);
	if (r < 0)
		anes_surface_uncharge(c, size, keep_fd);
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
	surface_reply(c, m, s, -1);
}

static void m_surface_release(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	uint32_t id;
	int r = anes_mp_u32(m->params, "id", &id);
	if (r < 0) {
		reply_param(c, m, "id", r);
		return;
	}
	anes_surface *s = anes_idt_remove(&c->surfaces, id);
	if (!s) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_SUCH_SURFACE, "no surface %u", id);
		return;
	}
	bool deferred = s->refs > 1;
	anes_surface_unref(s);

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
		reply_param(c, m, "mil", r);
		return;
	}
	r = anes_mp_map(m->params, "weights", lim->max_weights, &wmap);
	if (r < 0 && r != -ENOENT) {
		reply_param(c, m, "weights", r);
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
	if (n > 0) {
		ws = calloc(n, sizeof(*ws));
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
	anes_program_compile(c, m->msgid, mil, mil_len, ws, n);
	free(ws);
}

static bool lookup_program(anes_conn *c, const anes_msg *m, const char *key, anes_centry **ret)
{
	uint32_t id;
	int r = anes_mp_u32(m->params, key, &id);
	if (r < 0) {
		reply_param(c, m, key, r);
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
		pack_kv_u64(pk, "bytes", t[i].bytes);
	}
}

static void m_program_info(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	anes_centry *e;
	if (!lookup_program(c, m, "id", &e))
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
		msgpack_pack_map(&f.pk, 3);
		anes_pack_str(&f.pk, "name");
		anes_pack_strn(&f.pk, fn->name, strlen(fn->name));
		anes_pack_str(&f.pk, "inputs");
		pack_tensors(&f.pk, fn->inputs, fn->n_inputs);
		anes_pack_str(&f.pk, "outputs");
		pack_tensors(&f.pk, fn->outputs, fn->n_outputs);
	}
	anes_conn_send(c, &f, m->msgid, NULL, 0);
}

static void m_program_release(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	anes_centry *e;
	if (!lookup_program(c, m, "id", &e))
		return;
	uint32_t id;
	(void)anes_mp_u32(m->params, "id", &id);
	anes_idt_remove(&c->programs, id);
	anes_centry_drop_handle(e, c->tenant);

	anes_frame f;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, m->msgid, 0);
	anes_conn_send(c, &f, m->msgid, NULL, 0);
}

/* ---- run ------------------------------------------------------------------------ */

/* Every run executes on a worker thread, never on the loop thread: a
 * backend call can take any time, and the loop serves every client. */

/* One run, or one step of a chain. */
typedef struct run_step {
	anes_centry *entry;     /* pinned */
	uint32_t fn;
	uint32_t n_in, n_out;
	bool fault;             /* --fault-inject run_fail: fail instead of running */
	anes_surface **surf;    /* n_in + n_out, referenced */
	const void **in;
	void **out;
} run_step;

/* A run request: one step, or a chain run back to back in one job.  The
 * steps, their surface pointers and their data pointers live in the same
 * allocation as the job. */
typedef struct run_job {
	anes_job job;
	anes_conn *conn;        /* referenced */
	anes_tenant *tenant;    /* conn's, referenced: the job is counted */
	anes_backend *backend;
	uint32_t msgid;
	bool chain;
	uint32_t n_steps;
	uint32_t n_done;        /* steps that ran (the failed one included) */
	run_step *steps;
	int rc;
	uint64_t elapsed_ns;
	/* The success reply, packed on the worker (run_reply): sent whole
	 * (replied), partly (reply_sent bytes) or not at all. */
	bool replied;
	void *reply;
	size_t reply_len, reply_sent;
	char err[ANES_ERRMSG_MAX];
} run_job;

static int run_one(anes_backend *b, const run_step *st, char *err, size_t err_len)
{
	if (st->fault) {
		snprintf(err, err_len, "injected failure (--fault-inject run_fail)");
		return -EIO;
	}
	if (b->ops->run_surfaces) {
		anes_surface_desc d[2 * ANES_MAX_IO];
		uint32_t n = st->n_in + st->n_out;
		for (uint32_t i = 0; i < n && i < 2 * ANES_MAX_IO; i++) {
			const anes_surface *s = st->surf[i];
			d[i] = (anes_surface_desc){ .ptr = s->map, .fd = s->fd,
			                            .ios_id = s->shm ? s->shm->id : 0,
			                            .ios = s->shm && s->shm->id ? s->shm->ref : NULL,
			                            .key = s->key,
			                            .offset = 0, .size = s->size };
		}
		return b->ops->run_surfaces(b, st->entry->prog, st->fn, d, n, err, err_len);
	}
	return b->ops->run(b, st->entry->prog, st->fn, st->in, (void *const *)st->out, err, err_len);
}

/* Keep a moving average of e's run time (ns): 1/4 of the new one. */
static void note_run_time(anes_centry *e, uint64_t ns)
{
	uint64_t old = atomic_load_explicit(&e->run_ns, memory_order_relaxed);
	uint64_t avg = old ? old - old / 4 + ns / 4 : ns;
	atomic_store_explicit(&e->run_ns, avg ? avg : 1, memory_order_relaxed);
}

/* One step, timed for the program's moving average. */
static int run_timed(anes_backend *b, const run_step *st, char *err, size_t err_len)
{
	uint64_t t0 = anes_now_ns();
	int r = run_one(b, st, err, err_len);
	if (r == 0)
		note_run_time(st->entry, anes_now_ns() - t0);
	return r;
}

/* Back to back, stopping at the first failure (rj->n_done - 1 failed). */
static void run_work(anes_job *j)
{
	run_job *rj = ANES_CONTAINER_OF(j, run_job, job);

	rj->err[0] = '\0';
	rj->rc = 0;
	/* A client that is gone gets no more runs started: the ones still
	 * queued when its connection closed are dropped (nobody waits for
	 * them, and they would keep the workers from the other clients). */
	if (anes_conn_write_closed(rj->conn)) {
		rj->rc = -ECANCELED;
		rj->n_done = 0;
		rj->elapsed_ns = 0;
		return;
	}
	uint64_t t0 = anes_now_ns();
	for (uint32_t i = 0; i < rj->n_steps && rj->rc == 0; i++) {
		rj->rc = run_timed(rj->backend, &rj->steps[i], rj->err, sizeof(rj->err));
		rj->n_done = i + 1;
	}
	rj->elapsed_ns = anes_now_ns() - t0;
	rj->err[sizeof(rj->err) - 1] = '\0';
	/* Counted before any client can see the reply (run_reply). */
	atomic_fetch_add(&rj->conn->srv->stats.runs, rj->n_done);
	atomic_fetch_add(&rj->tenant->runs, rj->n_done);
}

static void pack_run_ok(msgpack_packer *pk, uint32_t msgid, bool chain, uint32_t n_steps,
                        uint64_t elapsed_ns)
{
	anes_pack_result(pk, msgid, chain ? 2 : 1);
	pack_kv_u64(pk, "elapsed_us", elapsed_ns / 1000u);
	if (chain)
		pack_kv_u64(pk, "steps", n_steps);
}

/* A reply packed on the stack: a run's is a few dozen bytes, so the worker
 * allocates nothing unless the socket does not take it at once. */
typedef struct small_frame {
	char data[ANES_FRAME_HEADER_SIZE + 112];
	size_t len;
	bool full;
} small_frame;

static int small_frame_write(void *data, const char *buf, size_t len)
{
	small_frame *f = data;
	if (f->full || len > sizeof(f->data) - f->len) {
		f->full = true;
		return -1;
	}
	memcpy(f->data + f->len, buf, len);
	f->len += len;
	return 0;
}

/* On the worker, after run_work: a successful run's reply goes to the client
 * from here when nothing is queued before it, without waiting for the loop
 * (docs/performance.md).  Errors are answered by the loop.  Returns the
 * connection's send_mu locked when something was sent (worker.c). */
static pthread_mutex_t *run_reply(anes_job *j)
{
	run_job *rj = ANES_CONTAINER_OF(j, run_job, job);
	anes_conn *c = rj->conn;

	if (rj->rc != 0)
		return NULL;
	small_frame f = { .len = ANES_FRAME_HEADER_SIZE };
	msgpack_packer pk;
	msgpack_packer_init(&pk, &f, small_frame_write);
	pack_run_ok(&pk, rj->msgid, rj->chain, rj->n_steps, rj->elapsed_ns);
	if (f.full)
		return NULL;   /* run_done packs it */
	anes_frame_header_write((uint8_t *)f.data, (uint32_t)(f.len - ANES_FRAME_HEADER_SIZE), 0);

	pthread_mutex_lock(&c->send_mu);
	/* Counted before the client can see the reply and ask something. */
	atomic_fetch_add(&c->direct_unseen, 1);
	size_t n = anes_conn_try_send_locked(c, f.data, f.len);
	if (n == 0) {
		atomic_fetch_sub(&c->direct_unseen, 1);
		pthread_mutex_unlock(&c->send_mu);
		return NULL;   /* run_done packs and queues it */
	}
	if (n == f.len) {
		rj->replied = true;
	} else {
		/* The rest must follow before anything else (wblocked): keep it. */
		rj->reply = malloc(f.len);
		if (rj->reply) {
			memcpy(rj->reply, f.data, f.len);
			rj->reply_len = f.len;
			rj->reply_sent = n;
		} else {
			rj->reply_sent = n;   /* run_done fails the connection */
		}
	}
	return &c->send_mu;
}

/* An error response whose map also names the chain step at fault:
 * [1, msgid, {code, name, message, failed_step}, nil]. */
static void pack_step_error(msgpack_packer *pk, uint32_t msgid, int code, uint32_t step,
                            const char *msg)
{
	msgpack_pack_array(pk, 4);
	msgpack_pack_uint32(pk, ANES_MSG_RESPONSE);
	msgpack_pack_uint32(pk, msgid);
	msgpack_pack_map(pk, 4);
	pack_kv_u64(pk, "code", (uint64_t)code);
	pack_kv_str(pk, "name", anes_wire_error_name(code) ? anes_wire_error_name(code) : "internal");
	pack_kv_str(pk, "message", msg);
	pack_kv_u64(pk, "failed_step", step);
	msgpack_pack_nil(pk);
}

static void reply_step_error(anes_conn *c, uint32_t msgid, int code, uint32_t step,
                             const char *msg)
{
	anes_frame f;
	anes_frame_init(&f);
	pack_step_error(&f.pk, msgid, code, step, msg);
	anes_conn_send(c, &f, msgid, NULL, 0);
}

/* Where a run request's errors go: a chain's name their step.  On a lane
 * (a worker, conn.c) the first error is kept for the reply instead. */
typedef struct run_req {
	anes_conn *c;
	uint32_t msgid;
	bool chain;
	uint32_t step;
	bool lane;
	bool failed;            /* lane: err_* hold the error */
	bool err_step;          /* lane: name the step in the reply */
	uint32_t err_at;        /* lane: ... that step */
	int err_code;
	char err_msg[ANES_ERRMSG_MAX + 32];
} run_req;

/* On a lane: keep the first error for the reply. */
static void lane_keep_error(run_req *q, int code, bool name_step, const char *msg)
{
	if (q->failed)
		return;
	q->failed = true;
	q->err_step = name_step;
	q->err_at = q->step;
	q->err_code = code;
	snprintf(q->err_msg, sizeof(q->err_msg), "%s", msg);
}

/* An error about the request as a whole (no step). */
static void req_error(run_req *q, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void req_error(run_req *q, int code, const char *fmt, ...)
{
	char msg[ANES_ERRMSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (q->lane)
		lane_keep_error(q, code, false, msg);
	else
		anes_conn_reply_error(q->c, q->msgid, code, "%s", msg);
}

static void run_error(run_req *q, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void run_error(run_req *q, int code, const char *fmt, ...)
{
	char msg[ANES_ERRMSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!q->chain) {
		req_error(q, code, "%s", msg);
		return;
	}
	char full[ANES_ERRMSG_MAX + 32];
	snprintf(full, sizeof(full), "step %u: %s", q->step, msg);
	if (q->lane)
		lane_keep_error(q, code, true, full);
	else
		reply_step_error(q->c, q->msgid, code, q->step, full);
}

static void run_job_free(anes_server *srv, run_job *rj);

/* Answer, release what the run held, free it, and look at the connection's
 * buffered requests again (it may have stopped reading at max_inflight). */
static void run_done(anes_job *j, bool cancelled)
{
	run_job *rj = ANES_CONTAINER_OF(j, run_job, job);
	anes_conn *c = rj->conn;
	run_req q = { .c = c, .msgid = rj->msgid, .chain = rj->chain,
	              .step = rj->n_done ? rj->n_done - 1 : 0 };

	c->inflight--;
	if (rj->replied || rj->reply_sent)
		anes_conn_direct_seen(c);
	if (cancelled) {
		anes_conn_reply_error(c, rj->msgid, ANES_WERR_SHUTTING_DOWN,
		                      "the daemon is shutting down; the run was not done");
	} else {
		if (rj->replied) {
			/* sent by the worker */
		} else if (rj->reply_sent && !rj->reply) {
			anes_conn_fail(c, "out of memory keeping a response");   /* half sent */
		} else if (rj->reply_sent) {
			anes_conn_queue_rest(c, rj->reply, rj->reply_len, rj->reply_sent);
		} else if (rj->reply) {
			anes_conn_queue(c, rj->reply, rj->reply_len, NULL, 0);
		} else if (rj->rc == 0) {
			anes_frame f;
			anes_frame_init(&f);
			pack_run_ok(&f.pk, rj->msgid, rj->chain, rj->n_steps, rj->elapsed_ns);
			anes_conn_send(c, &f, rj->msgid, NULL, 0);
		} else if (rj->rc == -ECONNRESET) {
			run_error(&q, ANES_WERR_WORKER_RESTARTED, "%s",
			          rj->err[0] ? rj->err : "the device worker was lost; retry");
		} else {
			run_error(&q, ANES_WERR_RUN_FAILED, "%s", rj->err[0] ? rj->err : strerror(-rj->rc));
		}
	}
	for (uint32_t s = 0; s < rj->n_steps; s++) {
		run_step *st = &rj->steps[s];
		for (uint32_t i = 0; i < st->n_in + st->n_out; i++)
			anes_surface_unref(st->surf[i]);
		anes_centry_unpin(st->entry);
	}
	anes_server *srv = c->srv;
	anes_conn_kick(c);
	anes_tenant_job_end(rj->tenant);
	anes_tenant_unref(rj->tenant);
	anes_conn_unref(c);
	run_job_free(srv, rj);
}

static bool read_ids(run_req *q, const msgpack_object *params, const char *key,
                     const msgpack_object **ret, uint32_t *ret_n)
{
	const msgpack_object *items;
	uint32_t n;
	int r = anes_mp_array(params, key, UINT32_MAX, &items, &n);
	if (r < 0) {
		run_error(q, ANES_WERR_INVALID_PARAMS, r == -ENOENT ? "missing \"%s\"" :
		          "\"%s\" has the wrong type or is out of range", key);
		return false;
	}
	for (uint32_t i = 0; i < n; i++) {
		uint32_t id;
		if (anes_mp_item_u32(&items[i], &id) < 0) {
			run_error(q, ANES_WERR_INVALID_PARAMS, "\"%s\"[%u] is not a surface ID", key, i);
			return false;
		}
	}
	*ret = items;
	*ret_n = n;
	return true;
}

/* The surface IDs of a step: decoded objects (checked by read_ids) or, from
 * anes_run_wire_parse, plain numbers. */
typedef struct step_ids {
	const msgpack_object *obj;
	const uint32_t *u32;
} step_ids;

static uint32_t step_id(const step_ids *ids, uint32_t i)
{
	uint32_t id = 0;
	if (ids->u32)
		return ids->u32[i];
	(void)anes_mp_item_u32(&ids->obj[i], &id);
	return id;
}

static bool check_surfaces(run_req *q, const char *what, const step_ids *ids,
                           const anes_tensor_desc *t, uint32_t n, anes_surface **ret)
{
	for (uint32_t i = 0; i < n; i++) {
		uint32_t id = step_id(ids, i);
		anes_surface *s = anes_idt_find(&q->c->surfaces, id);
		if (!s) {
			run_error(q, ANES_WERR_NO_SUCH_SURFACE, "no surface %u", id);
			return false;
		}
		if (s->size < t[i].bytes) {
			run_error(q, ANES_WERR_SIZE_MISMATCH,
			          "%s %u (\"%s\") needs %llu bytes, surface %u has %llu", what, i,
			          t[i].name, (unsigned long long)t[i].bytes, id,
			          (unsigned long long)s->size);
			return false;
		}
		if (ret)
			ret[i] = s;
	}
	return true;
}

/* What a step names, read from the request by either path. */
typedef struct step_ref {
	uint32_t program;
	const char *function;   /* NULL: the first */
	uint32_t function_len;
	step_ids in, out;
	uint32_t n_in, n_out;
} step_ref;

/* Resolve what a step names against the connection's tables and fill st
 * in; st->surf too when it is set (else only check).  Replies on failure. */
static bool resolve_step(run_req *q, const step_ref *sr, run_step *st)
{
	anes_conn *c = q->c;
	anes_centry *e = anes_idt_find(&c->programs, sr->program);
	if (!e) {
		run_error(q, ANES_WERR_NO_SUCH_PROGRAM, "no program %u", sr->program);
		return false;
	}
	const anes_bprogram *p = e->prog;
	uint32_t fn = UINT32_MAX;
	if (sr->function) {
		for (uint32_t i = 0; i < p->n_functions; i++) {
			if (strlen(p->functions[i].name) == sr->function_len &&
			    memcmp(p->functions[i].name, sr->function, sr->function_len) == 0) {
				fn = i;
				break;
			}
		}
	} else if (p->n_functions > 0) {
		fn = 0;
	}
	if (fn == UINT32_MAX) {
		run_error(q, ANES_WERR_NO_SUCH_FUNCTION, "no function \"%.*s\"",
		          (int)(sr->function_len > 64 ? 64 : sr->function_len),
		          sr->function ? sr->function : "");
		return false;
	}
	const anes_function_info *fi = &p->functions[fn];
	if (sr->n_in != fi->n_inputs || sr->n_out != fi->n_outputs) {
		run_error(q, ANES_WERR_SIZE_MISMATCH,
		          "function \"%s\" takes %u inputs and %u outputs, got %u and %u",
		          fi->name, fi->n_inputs, fi->n_outputs, sr->n_in, sr->n_out);
		return false;
	}
	if (!check_surfaces(q, "input", &sr->in, fi->inputs, sr->n_in, st->surf) ||
	    !check_surfaces(q, "output", &sr->out, fi->outputs, sr->n_out,
	                    st->surf ? st->surf + sr->n_in : NULL))
		return false;
	st->entry = e;
	st->fn = fn;
	st->n_in = sr->n_in;
	st->n_out = sr->n_out;
	st->fault = c->srv->cfg.fault_run_fail && !strcmp(fi->name, c->srv->cfg.fault_run_fail);
	return true;
}

/* Check one decoded run (or step) {program, function?, inputs, outputs}
 * and fill st in (resolve_step).  Replies on failure. */
static bool parse_step(run_req *q, const msgpack_object *params, run_step *st)
{
	step_ref sr = { 0 };
	int r = anes_mp_u32(params, "program", &sr.program);
	if (r < 0) {
		run_error(q, ANES_WERR_INVALID_PARAMS, r == -ENOENT ? "missing \"%s\"" :
		          "\"%s\" has the wrong type or is out of range", "program");
		return false;
	}
	r = anes_mp_str(params, "function", UINT32_MAX, &sr.function, &sr.function_len);
	if (r < 0 && r != -ENOENT) {
		run_error(q, ANES_WERR_INVALID_PARAMS, "\"function\" has the wrong type or is out of range");
		return false;
	}
	if (!read_ids(q, params, "inputs", &sr.in.obj, &sr.n_in) ||
	    !read_ids(q, params, "outputs", &sr.out.obj, &sr.n_out))
		return false;
	return resolve_step(q, &sr, st);
}

/* Check a run request.  A single run: the params are the step.  A chain:
 * { steps: [step, ...] }.  Answers (or on a lane records) what is wrong;
 * on success the steps and how many surfaces they name in all. */
static bool check_run(run_req *q, const anes_msg *m, const msgpack_object **ret_items,
                      uint32_t *ret_n_steps, uint64_t *ret_n_surf)
{
	const msgpack_object *items = m->params;
	uint32_t n_steps = 1;

	int r = anes_mp_array(m->params, "steps", ANES_MAX_STEPS, &items, &n_steps);
	if (r == 0) {
		if (n_steps == 0 || anes_mp_get(m->params, "program")) {
			req_error(q, ANES_WERR_INVALID_PARAMS,
			          n_steps ? "a run has either \"steps\" or \"program\"" : "\"steps\" is empty");
			return false;
		}
		q->chain = true;
		for (uint32_t i = 0; i < n_steps; i++)
			if (items[i].type != MSGPACK_OBJECT_MAP) {
				q->step = i;
				run_error(q, ANES_WERR_INVALID_PARAMS, "a step is not a map");
				return false;
			}
	} else if (r == -EINVAL) {
		req_error(q, ANES_WERR_INVALID_PARAMS, "\"steps\" is not an array of 1 to %d steps",
		          ANES_MAX_STEPS);
		return false;
	} else {
		items = m->params;
		n_steps = 1;
	}

	/* Check every step before anything runs, counting the surfaces. */
	uint64_t n_surf = 0;
	for (uint32_t i = 0; i < n_steps; i++) {
		run_step st = { 0 };
		q->step = i;
		if (!parse_step(q, &items[i], &st))
			return false;
		n_surf += st.n_in + st.n_out;
	}
	*ret_items = items;
	*ret_n_steps = n_steps;
	*ret_n_surf = n_surf;
	return true;
}

static size_t run_steps_bytes(uint32_t n_steps, uint64_t n_surf)
{
	return n_steps * sizeof(run_step) + (size_t)n_surf * (sizeof(anes_surface *) + sizeof(void *));
}

/* Point each step's data pointers at its surfaces' mappings; surf
 * and ptrs are laid out after steps[] as run_steps_bytes counts. */
static void set_step_ptrs(run_step *steps, uint32_t n_steps, uint64_t n_surf)
{
	void **ptrs = (void **)(void *)((anes_surface **)(void *)(steps + n_steps) + n_surf);
	for (uint32_t i = 0; i < n_steps; i++) {
		run_step *st = &steps[i];
		st->in = (const void **)ptrs;
		st->out = ptrs + st->n_in;
		for (uint32_t k = 0; k < st->n_in; k++)
			st->in[k] = st->surf[k]->map;
		for (uint32_t k = 0; k < st->n_out; k++)
			st->out[k] = st->surf[st->n_in + k]->map;
		ptrs += st->n_in + st->n_out;
	}
}

/* Fill steps[] (and the surface and data pointers after them, laid out
 * as run_steps_bytes counts) from a request check_run accepted. */
static void fill_steps(run_req *q, const msgpack_object *items, uint32_t n_steps,
                       uint64_t n_surf, run_step *steps)
{
	anes_surface **surf = (anes_surface **)(void *)(steps + n_steps);
	for (uint32_t i = 0; i < n_steps; i++) {
		run_step *st = &steps[i];
		st->surf = surf;
		q->step = i;
		(void)parse_step(q, &items[i], st);   /* checked: cannot fail */
		surf += st->n_in + st->n_out;
	}
	set_step_ptrs(steps, n_steps, n_surf);
}

/* Single-step run jobs are all allocated at this size and kept for reuse
 * (loop only), so a steady stream of runs through the loop allocates no
 * job.  Chains get their own size. */
#define SMALL_JOB_BYTES (sizeof(run_job) + run_steps_bytes(1, 2 * ANES_MAX_IO))
#define JOB_CACHE_MAX 64

static run_job *run_job_alloc(anes_server *srv, size_t bytes)
{
	if (bytes > SMALL_JOB_BYTES)
		return calloc(1, bytes);
	run_job *rj = srv->job_cache;
	if (!rj)
		return calloc(1, SMALL_JOB_BYTES);
	srv->job_cache = rj->job.next;
	srv->n_job_cache--;
	memset(rj, 0, bytes);
	return rj;
}

static void run_job_free(anes_server *srv, run_job *rj)
{
	if (rj->n_steps != 1 || srv->n_job_cache >= JOB_CACHE_MAX) {
		free(rj);
		return;
	}
	rj->job.next = srv->job_cache;
	srv->job_cache = rj;
	srv->n_job_cache++;
}

void anes_run_jobs_free(anes_server *srv)
{
	while (srv->job_cache) {
		run_job *rj = srv->job_cache;
		srv->job_cache = rj->job.next;
		free(rj);
	}
	srv->n_job_cache = 0;
}

static void m_run(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	run_req q = { .c = c, .msgid = m->msgid };
	const msgpack_object *items;
	uint32_t n_steps;
	uint64_t n_surf;

	if (!check_run(&q, m, &items, &n_steps, &n_surf))
		return;
	run_job *rj = run_job_alloc(c->srv, sizeof(run_job) + run_steps_bytes(n_steps, n_surf));
	if (!rj) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return;
	}
	rj->steps = (run_step *)(void *)(rj + 1);
	fill_steps(&q, items, n_steps, n_surf, rj->steps);
	/* The job holds what it uses until its done(): the client may release
	 * them meanwhile. */
	uint64_t cost_ns = 0;
	for (uint32_t i = 0; i < n_steps; i++) {
		run_step *st = &rj->steps[i];
		for (uint32_t k = 0; k < st->n_in + st->n_out; k++)
			anes_surface_ref(st->surf[k]);
		anes_centry_pin(st->entry);
		cost_ns += atomic_load_explicit(&st->entry->run_ns, memory_order_relaxed);
	}
	/* Its client's queue, and its estimated device time (jobsched.h). */
	rj->job.si = (anes_sitem){ .flow = &c->tenant->sflow, .cost_ns = cost_ns };
	rj->job.work = run_work;
	rj->job.done = run_done;
	rj->job.reply = run_reply;
	rj->conn = anes_conn_ref(c);
	rj->tenant = anes_tenant_ref(c->tenant);
	anes_tenant_job_begin(c->tenant);
	rj->backend = c->srv->backend;
	rj->msgid = m->msgid;
	rj->chain = q.chain;
	rj->n_steps = n_steps;
	c->inflight++;
	anes_pool_submit(c->srv->pool, &rj->job);
}

/* Lane: make ctx->buf hold need bytes. */
static bool lane_buf(anes_wctx *ctx, size_t need)
{
	if (need <= ctx->buf_cap)
		return true;
	void *nb = realloc(ctx->buf, need);
	if (!nb)
		return false;
	ctx->buf = nb;
	ctx->buf_cap = need;
	return true;
}

/* Lane: read a run request in its usual form straight from the payload
 * (anes_run_wire_parse) into ctx->buf, resolving each step as it comes.
 * 1: done, *ret_n_steps steps in ctx->buf, or q->failed; 0: the payload
 * is not in that form, or the workspace could not be allocated (decode
 * it); -ENOMEM when the steps buffer could not grow. */
static int lane_read_wire(run_req *q, const void *payload, uint32_t len, anes_wctx *ctx,
                          uint32_t *ret_n_steps)
{
	if (!ctx->wire && !(ctx->wire = malloc(sizeof *ctx->wire)))
		return 0;   /* the decoder needs no workspace */
	anes_run_wire *w = ctx->wire;
	if (anes_run_wire_parse(payload, len, w) != 1)
		return 0;
	q->msgid = w->msgid;
	q->chain = w->chain;
	if (!lane_buf(ctx, run_steps_bytes(w->n_steps, w->n_ids)))
		return -ENOMEM;
	run_step *steps = ctx->buf;
	anes_surface **surf = (anes_surface **)(void *)(steps + w->n_steps);
	for (uint32_t i = 0; i < w->n_steps; i++) {
		const anes_run_wire_step *ws = &w->steps[i];
		step_ref sr = { .program = ws->program, .function = ws->function,
		                .function_len = ws->function_len,
		                .in = { .u32 = w->ids + ws->in }, .out = { .u32 = w->ids + ws->out },
		                .n_in = ws->n_in, .n_out = ws->n_out };
		run_step *st = &steps[i];
		*st = (run_step){ .surf = surf };
		q->step = i;
		if (!resolve_step(q, &sr, st))
			return 1;
		surf += ws->n_in + ws->n_out;
	}
	set_step_ptrs(steps, w->n_steps, w->n_ids);
	*ret_n_steps = w->n_steps;
	return 1;
}

/* Lane: decode and check a run request the general way into ctx->buf. */
static int lane_read_decoded(run_req *q, const anes_msg *m, anes_wctx *ctx, uint32_t *ret_n_steps)
{
	const msgpack_object *items;
	uint32_t n_steps;
	uint64_t n_surf;
	if (!check_run(q, m, &items, &n_steps, &n_surf))
		return 1;
	if (!lane_buf(ctx, run_steps_bytes(n_steps, n_surf)))
		return -ENOMEM;
	fill_steps(q, items, n_steps, n_surf, ctx->buf);
	*ret_n_steps = n_steps;
	return 1;
}

/* On a lane worker (conn.c): the run happens here and now.  It takes no
 * references: while the lane holds the read side, nothing can change the
 * connection's tables (see anes_conn), and what they refer to stays.
 * The payload is read in one pass when it is a run in the usual form;
 * anything else is decoded and checked the general way, with the same
 * checks and errors. */
int anes_lane_request(anes_conn *c, const void *payload, uint32_t len, anes_wctx *ctx)
{
	if (!c->hello_done)
		return 0;
	run_req q = { .c = c, .lane = true };
	uint32_t n_steps = 0, n_done = 0;
	uint64_t elapsed_ns = 0;
	int rc = 0;

	int r = lane_read_wire(&q, payload, len, ctx, &n_steps);
	if (r == 0) {
		anes_msg m;
		msgpack_zone_clear(&ctx->zone);
		if (anes_msg_decode(payload, len, &ctx->zone, &m) < 0 || m.type != ANES_MSG_REQUEST ||
		    !anes_msg_method_is(&m, "run"))
			return 0;
		q.msgid = m.msgid;
		r = lane_read_decoded(&q, &m, ctx, &n_steps);
	}
	if (r == -ENOMEM)
		req_error(&q, ANES_WERR_NO_MEMORY, "out of memory");
	if (!q.failed) {
		run_step *steps = ctx->buf;
		/* Only what is known to be short: anything else would hold up
		 * the connection's next requests, and goes to the loop. */
		uint64_t expect_ns = 0, max_ns = (uint64_t)c->srv->cfg.lane_run_max_us * 1000u;
		for (uint32_t i = 0; i < n_steps; i++) {
			uint64_t ns = atomic_load_explicit(&steps[i].entry->run_ns, memory_order_relaxed);
			if (ns == 0 || (expect_ns += ns) > max_ns)
				return 0;
		}
		char err[ANES_ERRMSG_MAX];
		err[0] = '\0';
		uint64_t t0 = anes_now_ns();
		for (uint32_t i = 0; i < n_steps && rc == 0; i++) {
			rc = run_timed(c->srv->backend, &steps[i], err, sizeof(err));
			n_done = i + 1;
		}
		elapsed_ns = anes_now_ns() - t0;
		err[sizeof(err) - 1] = '\0';
		/* Counted before the client can see the reply and ask status. */
		atomic_fetch_add(&c->srv->stats.lane_runs, n_done);
		atomic_fetch_add(&c->srv->stats.runs, n_done);
		atomic_fetch_add(&c->tenant->runs, n_done);
		if (rc != 0) {
			q.step = n_done - 1;
			if (rc == -ECONNRESET)
				run_error(&q, ANES_WERR_WORKER_RESTARTED, "%s",
				          err[0] ? err : "the device worker was lost; retry");
			else
				run_error(&q, ANES_WERR_RUN_FAILED, "%s", err[0] ? err : strerror(-rc));
		}
	}
	anes_frame *f = &ctx->reply;
	uint32_t max_frame = c->srv->lim.max_frame;
	anes_frame_reset(f);
	if (!q.failed)
		pack_run_ok(&f->pk, q.msgid, q.chain, n_steps, elapsed_ns);
	else if (q.err_step)
		pack_step_error(&f->pk, q.msgid, q.err_code, q.err_at, q.err_msg);
	else
		anes_pack_error(&f->pk, q.msgid, q.err_code, q.err_msg);
	if (anes_frame_seal(f, 0, max_frame) < 0) {
		anes_frame_reset(f);
		anes_pack_error(&f->pk, q.msgid, ANES_WERR_NO_MEMORY, "out of memory");
		if (anes_frame_seal(f, 0, max_frame) < 0)
			return -ENOMEM;
	}
	return 1;
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
	{ "program.compile", m_program_compile, false },
	{ "program.info", m_program_info, false },
	{ "program.release", m_program_release, false },
	{ "run", m_run, false },
};

void anes_dispatch_request(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	const struct method *md = NULL;
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		if (anes_msg_method_is(m, methods[i].name)) {
			md = &methods[i];
			break;
		}
	}
	if (!c->hello_done && (!md || md->fn != m_hello)) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_HANDSHAKE, "the first request must be hello");
		return;
	}
	if (c->srv->draining && !c->predrain_frame) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_SHUTTING_DOWN,
		                      "the daemon is shutting down; the request was not done");
		return;
	}
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
