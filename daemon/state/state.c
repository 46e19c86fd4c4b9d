/* SPDX-License-Identifier: MIT */
/*
 * States: state.create, state.reset, state.release, the states' queues of
 * claims (state.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anes_shm.h"
#include "state.h"

#define STATE_ALIGN 64u   /* each tensor's offset in the state's memory */

/* ---- references ------------------------------------------------------------ */

anes_state *anes_state_ref(anes_state *st)
{
	st->refs++;
	return st;
}

void anes_state_unref(anes_state *st)
{
	if (!st || --st->refs > 0)
		return;
	anes_server *srv = st->mem->owner->srv;
	srv->stats.states--;
	srv->stats.state_bytes -= st->bytes;
	anes_surface_unref(st->mem);   /* unmaps and uncharges */
	free(st->off);
	free(st);
}

void anes_states_drop_all(anes_conn *c)
{
	for (uint32_t i = 0; i < c->states.n; i++)
		anes_state_unref(c->states.v[i].ptr);
	anes_idt_cleanup(&c->states);
}

bool anes_state_fits(const anes_state *st, const anes_centry *e, uint32_t fn)
{
	return st->fn == fn && memcmp(st->key, e->key, ANES_KEY_SIZE) == 0;
}

/* ---- claims ------------------------------------------------------------------ */

void anes_wait_unblock(anes_state_wait *w)
{
	if (atomic_fetch_sub(&w->blocked, 1) == 1)
		anes_pool_ready(w->pool, w->job);
}

void anes_state_enqueue(anes_state *st, anes_state_claim *c, anes_state_wait *w)
{
	c->st = st;
	c->next = NULL;
	c->wait = w;
	uint32_t before = atomic_load_explicit(&st->claims, memory_order_relaxed);
	atomic_store_explicit(&st->claims, before + 1, memory_order_release);
	if (before == 0)
		return;   /* first: it holds the state */
	atomic_fetch_add(&w->blocked, 1);
	if (st->tail)
		st->tail->next = c;
	else
		st->head = c;
	st->tail = c;
}

void anes_state_release_claims(anes_state_claim *c, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		anes_state *st = c[i].st;
		uint32_t left = atomic_load_explicit(&st->claims, memory_order_relaxed) - 1;
		/* The job's writes to the state happened before its done(): a lane
		 * that sees no claim (acquire) sees them. */
		atomic_store_explicit(&st->claims, left, memory_order_release);
		anes_state_claim *next = st->head;
		if (!next)
			continue;
		st->head = next->next;
		if (!st->head)
			st->tail = NULL;
		anes_wait_unblock(next->wait);
	}
}

/* ---- state.create ------------------------------------------------------------ */

/* The memory of a state: made as surface.create makes a surface (a memfd,
 * or an IOSurface where surfaces are named by ID), zero-filled, charged
 * by the caller. */
static int state_memory(anes_conn *c, uint64_t size, anes_surface **ret, const char **ret_what)
{
	const anes_shm_ops *so = anes_shm_default();
	anes_surface *s;
	int r;
	if (so->by_id) {
		anes_shm *shm;
		*ret_what = "creating the IOSurface";
		r = so->create(size, &shm);
		if (r < 0)
			return r;
		r = anes_surface_new_shm(c, shm, true, &s);
		if (r < 0) {
			so->release(shm);
			return r;
		}
		memset(s->map, 0, (size_t)size);   /* a new IOSurface's contents are not promised */
		*ret = s;
		return 0;
	}
	int fd;
	*ret_what = "creating the memfd";
	r = anes_memfd_create("aneshare-state", size, &fd);
	if (r < 0)
		return r;
	*ret_what = "mapping the state";
	r = anes_surface_new(c, fd, size, &s);   /* a new memfd reads as zeros */
	close(fd);
	if (r < 0)
		return r;
	*ret = s;
	return 0;
}

void anes_m_state_create(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	(void)fds;
	(void)nfds;
	const anes_limits *lim = &c->srv->lim;
	anes_centry *e;
	if (!anes_lookup_program(c, m, "program", &e))
		return;
	const anes_bprogram *p = e->prog;
	const char *name = NULL;
	uint32_t name_len = 0, fn = UINT32_MAX;
	int r = anes_mp_str(m->params, "function", ANES_NAME_MAX, &name, &name_len);
	if (r < 0 && r != -ENOENT) {
		anes_reply_param(c, m, "function", r);
		return;
	}
	if (r == -ENOENT) {
		fn = p->n_functions > 0 ? 0 : UINT32_MAX;
		name = "";
	} else {
		for (uint32_t k = 0; k < p->n_functions; k++)
			if (strlen(p->functions[k].name) == name_len &&
			    memcmp(p->functions[k].name, name, name_len) == 0)
				fn = k;
	}
	if (fn == UINT32_MAX) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_SUCH_FUNCTION, "no function \"%.*s\"",
		                      (int)(name_len > 64 ? 64 : name_len), name);
		return;
	}
	const anes_function_info *fi = &p->functions[fn];
	if (fi->n_states == 0 || fi->n_states > ANES_MAX_IO) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS,
		                      "function \"%s\" has no states (no state<...> input)", fi->name);
		return;
	}
	/* The tensors one after the other, each at a multiple of 64 bytes:
	 * every size is bounded by the program's limits, the sum checked. */
	uint64_t total = 0;
	uint64_t *off = calloc(fi->n_states, sizeof(*off));
	if (!off) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return;
	}
	for (uint32_t i = 0; i < fi->n_states; i++) {
		uint64_t b = fi->states[i].bytes;
		if (b > lim->max_surface_bytes || total > lim->max_surface_bytes) {
			total = UINT64_MAX;
			break;
		}
		off[i] = total;
		total += (b + STATE_ALIGN - 1) / STATE_ALIGN * STATE_ALIGN;
	}
	if (total == 0)
		total = STATE_ALIGN;
	if (total > lim->max_surface_bytes) {
		free(off);
		anes_conn_reply_error(c, m->msgid, ANES_WERR_LIMIT,
		                      "the states of function \"%s\" need more than max_surface_bytes "
		                      "(%llu) bytes", fi->name, (unsigned long long)lim->max_surface_bytes);
		return;
	}
	uint32_t id;
	if (anes_idt_peek(&c->states, &id) < 0) {
		free(off);
		anes_conn_reply_error(c, m->msgid, ANES_WERR_LIMIT, "state IDs exhausted");
		return;
	}
	anes_state *st = calloc(1, sizeof(*st));
	if (!st || anes_idt_reserve(&c->states, 1) < 0) {
		free(st);
		free(off);
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return;
	}
	/* A state counts as a surface: the connection's cap, then the charge
	 * to its client process, uid and the daemon (tenant.h). */
	bool keep_fd = anes_surface_keeps_fd(c->srv);
	if (!anes_surface_limits_ok(c, m->msgid, total, keep_fd, true)) {
		free(st);
		free(off);
		return;
	}
	const char *what = "";
	r = state_memory(c, total, &st->mem, &what);
	if (r < 0) {
		anes_surface_uncharge(c, total, keep_fd, true);
		free(st);
		free(off);
		if (r == -EMFILE || r == -ENFILE)
			anes_conn_reply_error(c, m->msgid, ANES_WERR_LIMIT,
			                      "%s: the daemon is out of file descriptors (%s)", what, strerror(-r));
		else if (r == -ENOMEM || r == -ENOSPC)
			anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "%s: %s", what, strerror(-r));
		else
			anes_conn_reply_error(c, m->msgid, ANES_WERR_INTERNAL, "%s: %s", what, strerror(-r));
		return;
	}
	st->refs = 1;
	memcpy(st->key, e->key, ANES_KEY_SIZE);
	st->fn = fn;
	st->n = fi->n_states;
	st->off = off;
	st->bytes = total;
	atomic_init(&st->lost, false);
	atomic_init(&st->claims, 0);
	c->srv->stats.states++;
	c->srv->stats.state_bytes += total;

	anes_frame f;
	void *data;
	size_t len;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, m->msgid, 2);
	anes_pack_kv_u64(&f.pk, "id", id);
	anes_pack_kv_u64(&f.pk, "size", total);
	if (anes_frame_finish(&f, 0, c->io.max_frame, &data, &len) < 0) {
		anes_frame_release(&f);
		anes_state_unref(st);
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return;
	}
	/* Cannot fail: the ID was checked and the slot reserved. */
	(void)anes_idt_insert(&c->states, st, NULL);
	anes_conn_queue(c, data, len, NULL, 0);
}

/* ---- state.reset ---------------------------------------------------------------- */

/* A reset is a job of the pool like a run, in the state's queue: it zeroes
 * the state after the runs sent before it and before those sent after. */
typedef struct reset_job {
	anes_job job;
	anes_conn *conn;        /* referenced */
	anes_tenant *tenant;    /* conn's, referenced: the job is counted */
	uint32_t msgid;
	anes_state_wait wait;
	anes_state_claim claim; /* holds a reference to the state */
} reset_job;

static void reset_work(anes_job *j)
{
	reset_job *rj = ANES_CONTAINER_OF(j, reset_job, job);
	anes_state *st = rj->claim.st;
	memset(st->mem->map, 0, (size_t)st->bytes);
	atomic_store(&st->lost, false);
}

static void reset_done(anes_job *j, bool cancelled)
{
	reset_job *rj = ANES_CONTAINER_OF(j, reset_job, job);
	anes_conn *c = rj->conn;
	c->inflight--;
	if (cancelled)
		anes_conn_reply_error(c, rj->msgid, ANES_WERR_SHUTTING_DOWN,
		                      "the daemon is shutting down; the state was not reset");
	else
		anes_conn_reply_empty(c, rj->msgid);
	anes_state_release_claims(&rj->claim, 1);
	anes_state_unref(rj->claim.st);
	anes_conn_kick(c);
	anes_tenant_job_end(rj->tenant);
	anes_tenant_unref(rj->tenant);
	anes_conn_unref(c);
	free(rj);
}

static bool lookup_state(anes_conn *c, const anes_msg *m, uint32_t *ret_id, anes_state **ret)
{
	uint32_t id;
	int r = anes_mp_u32(m->params, "id", &id);
	if (r < 0) {
		anes_reply_param(c, m, "id", r);
		return false;
	}
	anes_state *st = anes_idt_find(&c->states, id);
	if (!st) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_SUCH_STATE, "no state %u", id);
		return false;
	}
	*ret_id = id;
	*ret = st;
	return true;
}

void anes_m_state_reset(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	(void)fds;
	(void)nfds;
	uint32_t id;
	anes_state *st;
	if (!lookup_state(c, m, &id, &st))
		return;
	reset_job *rj = calloc(1, sizeof(*rj));
	if (!rj) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return;
	}
	rj->job.task.si = (anes_sitem){ .flow = &c->tenant->sflow };
	rj->job.work = reset_work;
	rj->job.done = reset_done;
	rj->conn = anes_conn_ref(c);
	rj->tenant = anes_tenant_ref(c->tenant);
	anes_tenant_job_begin(c->tenant);
	rj->msgid = m->msgid;
	rj->wait = (anes_state_wait){ .job = &rj->job, .pool = c->srv->pool };
	anes_state_enqueue(anes_state_ref(st), &rj->claim, &rj->wait);
	c->inflight++;
	if (atomic_load(&rj->wait.blocked) == 0)
		anes_pool_submit(c->srv->pool, &rj->job);
}

/* ---- state.release -------------------------------------------------------------- */

void anes_m_state_release(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	(void)fds;
	(void)nfds;
	uint32_t id;
	anes_state *st;
	if (!lookup_state(c, m, &id, &st))
		return;
	anes_idt_remove(&c->states, id);
	anes_state_unref(st);   /* runs still holding it keep it */
	anes_conn_reply_empty(c, m->msgid);
}
