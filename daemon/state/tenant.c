/* SPDX-License-Identifier: MIT */
/* Tenants: accounting per client process, per user and for the daemon (tenant.h). */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "tenant.h"

#define LOFF(f) offsetof(anes_limits, f)

static const struct res_def {
	const char *name;
	const char *client_key, *uid_key, *daemon_key;
	size_t client_off, uid_off, daemon_off;   /* of a uint64_t in anes_limits */
	const char *unit;                         /* for messages */
} res_defs[ANES_RES_N] = {
#define DEF(r, name, ck, uk, dk, unit) \
	[r] = { name, #ck, #uk, #dk, LOFF(ck), LOFF(uk), LOFF(dk), unit }
	DEF(ANES_RES_SURFACES, "surfaces", max_client_surfaces, max_uid_surfaces,
	    max_daemon_surfaces, "surfaces"),
	DEF(ANES_RES_SURFACE_BYTES, "surface_bytes", max_total_surface_bytes, max_uid_surface_bytes,
	    max_daemon_surface_bytes, "bytes of surfaces"),
	DEF(ANES_RES_FDS, "fds", max_client_fds, max_uid_fds, max_daemon_fds,
	    "surface file descriptors"),
	DEF(ANES_RES_PROGRAMS, "programs", max_client_programs, max_uid_programs,
	    max_daemon_programs, "program handles"),
	DEF(ANES_RES_PROGRAM_BYTES, "program_bytes", max_client_program_bytes, max_uid_program_bytes,
	    max_daemon_program_bytes, "bytes of program memory"),
	DEF(ANES_RES_JOBS, "jobs", max_client_jobs, max_uid_jobs, max_daemon_jobs, "queued jobs"),
	DEF(ANES_RES_INPUT_BYTES, "input_bytes", max_client_input_bytes, max_uid_input_bytes,
	    max_input_bytes, "bytes of receive memory for large requests"),
	DEF(ANES_RES_OUTPUT_BYTES, "unsent_bytes", max_client_unsent_bytes, max_uid_unsent_bytes,
	    max_daemon_unsent_bytes, "bytes of unsent responses"),
#undef DEF
};

static uint64_t limit_at(const anes_limits *lim, size_t off)
{
	uint64_t v;
	memcpy(&v, (const char *)lim + off, sizeof(v));
	return v;
}

uint64_t anes_res_client_limit(const anes_limits *lim, anes_res r)
{
	return limit_at(lim, res_defs[r].client_off);
}

uint64_t anes_res_uid_limit(const anes_limits *lim, anes_res r)
{
	return limit_at(lim, res_defs[r].uid_off);
}

uint64_t anes_res_daemon_limit(const anes_limits *lim, anes_res r)
{
	return limit_at(lim, res_defs[r].daemon_off);
}

void anes_limits_uid_defaults(anes_limits *lim)
{
	for (int r = 0; r < ANES_RES_N; r++) {
		uint64_t *u = (uint64_t *)(void *)((char *)lim + res_defs[r].uid_off);
		if (*u == 0)
			*u = anes_res_daemon_limit(lim, r);
	}
}

const char *anes_res_client_key(anes_res r)
{
	return res_defs[r].client_key;
}

const char *anes_res_uid_key(anes_res r)
{
	return res_defs[r].uid_key;
}

const char *anes_res_daemon_key(anes_res r)
{
	return res_defs[r].daemon_key;
}

const char *anes_res_name(anes_res r)
{
	return res_defs[r].name;
}

void anes_tenants_init(anes_tenants *set, const anes_limits *lim)
{
	memset(set, 0, sizeof(*set));
	set->lim = lim;
	for (int r = 0; r < ANES_RES_N; r++)
		atomic_init(&set->total[r], 0);
}

void anes_tenants_cleanup(anes_tenants *set)
{
	assert(!set->procs && !set->users);
	(void)set;
}

static void list_remove(anes_tenant **head, anes_tenant *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		*head = t->next;
	if (t->next)
		t->next->prev = t->prev;
	t->prev = t->next = NULL;
}

static anes_tenant *tenant_new(anes_tenants *set, anes_tenant **head, uint32_t uid, int64_t pid)
{
	anes_tenant *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->set = set;
	t->uid = uid;
	t->pid = pid;
	t->refs = 1;
	t->serial = ++set->next_serial;
	for (int r = 0; r < ANES_RES_N; r++)
		atomic_init(&t->use[r], 0);
	atomic_init(&t->runs, 0);
	anes_sflow_init(&t->sflow);
	t->next = *head;
	if (*head)
		(*head)->prev = t;
	*head = t;
	return t;
}

static anes_tenant *find(anes_tenant *head, uint32_t uid, int64_t pid)
{
	for (anes_tenant *t = head; t; t = t->next)
		if (t->uid == uid && t->pid == pid)
			return t;
	return NULL;
}

anes_tenant *anes_tenant_get(anes_tenants *set, uint32_t uid, int64_t pid)
{
	if (pid < 0)
		pid = -1;
	anes_tenant *t = find(set->procs, uid, pid);
	if (t)
		return anes_tenant_ref(t);
	anes_tenant *u = find(set->users, uid, -1);
	if (u) {
		anes_tenant_ref(u);
	} else {
		u = tenant_new(set, &set->users, uid, -1);
		if (!u)
			return NULL;
		set->n_users++;
	}
	t = tenant_new(set, &set->procs, uid, pid);
	if (!t) {
		anes_tenant_unref(u);
		return NULL;
	}
	t->user = u;
	set->n_procs++;
	return t;
}

anes_tenant *anes_tenant_ref(anes_tenant *t)
{
	assert(t->refs > 0);
	t->refs++;
	return t;
}

void anes_tenant_unref(anes_tenant *t)
{
	if (!t)
		return;
	assert(t->refs > 0);
	if (--t->refs > 0)
		return;
	for (int r = 0; r < ANES_RES_N; r++)
		assert(anes_tenant_use(t, r) == 0);
	assert(t->n_conns == 0);
	anes_tenants *set = t->set;
	anes_tenant *u = t->user;
	if (u) {
		list_remove(&set->procs, t);
		set->n_procs--;
	} else {
		list_remove(&set->users, t);
		set->n_users--;
	}
	free(t);
	anes_tenant_unref(u);
}

/* Add n to *v unless that takes it over max. */
static bool try_add(_Atomic uint64_t *v, uint64_t n, uint64_t max)
{
	uint64_t cur = atomic_load_explicit(v, memory_order_relaxed);
	do {
		if (cur > max || n > max - cur)
			return false;
	} while (!atomic_compare_exchange_weak_explicit(v, &cur, cur + n, memory_order_relaxed,
	                                                memory_order_relaxed));
	return true;
}

int anes_tenant_charge(anes_tenant *t, anes_res r, uint64_t n, bool daemon)
{
	anes_tenants *set = t->set;
	/* The process, then the daemon, then the uid: with the uid's limit
	 * at its default (the daemon's), the daemon's is the one named. */
	if (!try_add(&t->use[r], n, anes_res_client_limit(set->lim, r)))
		return -EDQUOT;
	if (daemon && !try_add(&set->total[r], n, anes_res_daemon_limit(set->lim, r))) {
		atomic_fetch_sub_explicit(&t->use[r], n, memory_order_relaxed);
		return -ENOSPC;
	}
	if (t->user && !try_add(&t->user->use[r], n, anes_res_uid_limit(set->lim, r))) {
		atomic_fetch_sub_explicit(&t->use[r], n, memory_order_relaxed);
		if (daemon)
			atomic_fetch_sub_explicit(&set->total[r], n, memory_order_relaxed);
		return -EDQUOT;
	}
	return 0;
}

void anes_tenant_uncharge(anes_tenant *t, anes_res r, uint64_t n, bool daemon)
{
	uint64_t old = atomic_fetch_sub_explicit(&t->use[r], n, memory_order_relaxed);
	assert(old >= n);
	(void)old;
	if (t->user)
		atomic_fetch_sub_explicit(&t->user->use[r], n, memory_order_relaxed);
	if (daemon)
		anes_tenants_uncharge(t->set, r, n);
}

void anes_tenants_uncharge(anes_tenants *set, anes_res r, uint64_t n)
{
	uint64_t old = atomic_fetch_sub_explicit(&set->total[r], n, memory_order_relaxed);
	assert(old >= n);
	(void)old;
}

bool anes_tenant_uid_over(const anes_tenant *t, anes_res r, uint64_t n)
{
	if (!t->user)
		return false;
	uint64_t lim = anes_res_uid_limit(t->set->lim, r), used = anes_tenant_use(t->user, r);
	return used > lim || n > lim - used;
}

void anes_tenant_limit_msg(const anes_tenant *t, anes_res r, uint64_t n, int rc, char *buf,
                           size_t len)
{
	const struct res_def *d = &res_defs[r];
	const anes_limits *lim = t->set->lim;
	uint64_t cl = anes_res_client_limit(lim, r), cu = anes_tenant_use(t, r);
	bool client_over = cu > cl || n > cl - cu;
	if (rc != -ENOSPC && !client_over && anes_tenant_uid_over(t, r, n))
		snprintf(buf, len, "the clients of uid %u together would hold more than %llu %s (%s): "
		         "they hold %llu, this needs %llu more",
		         t->uid, (unsigned long long)anes_res_uid_limit(lim, r), d->unit, d->uid_key,
		         (unsigned long long)anes_tenant_use(t->user, r), (unsigned long long)n);
	else if (rc == -ENOSPC)
		snprintf(buf, len, "all clients together would hold more than %llu %s (%s); this needs %llu more",
		         (unsigned long long)anes_res_daemon_limit(lim, r), d->unit, d->daemon_key,
		         (unsigned long long)n);
	else
		snprintf(buf, len, "this client (uid %u, pid %lld) would hold more than %llu %s (%s): "
		         "it holds %llu, this needs %llu more",
		         t->uid, (long long)t->pid, (unsigned long long)cl, d->unit, d->client_key,
		         (unsigned long long)anes_tenant_use(t, r), (unsigned long long)n);
}

/* ---- jobs ----------------------------------------------------------------- */

bool anes_tenant_jobs_room(anes_tenant *t)
{
	anes_tenants *set = t->set;
	if (anes_tenant_use(t, ANES_RES_JOBS) >= anes_res_client_limit(set->lim, ANES_RES_JOBS)) {
		t->jobs_full = true;
		return false;
	}
	if (anes_tenant_use(t->user, ANES_RES_JOBS) >= anes_res_uid_limit(set->lim, ANES_RES_JOBS)) {
		t->user->jobs_full = true;
		return false;
	}
	if (anes_tenants_total(set, ANES_RES_JOBS) >= anes_res_daemon_limit(set->lim, ANES_RES_JOBS)) {
		set->jobs_full = true;
		return false;
	}
	return true;
}

void anes_tenant_job_begin(anes_tenant *t)
{
	atomic_fetch_add_explicit(&t->use[ANES_RES_JOBS], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&t->user->use[ANES_RES_JOBS], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&t->set->total[ANES_RES_JOBS], 1, memory_order_relaxed);
}

void anes_tenant_job_end(anes_tenant *t)
{
	anes_tenants *set = t->set;
	anes_tenant_uncharge(t, ANES_RES_JOBS, 1, true);
	if (t->jobs_full) {
		t->jobs_full = false;
		for (anes_conn *c = t->conns; c; c = c->tnext)
			anes_conn_kick(c);
	}
	if (t->user->jobs_full) {
		t->user->jobs_full = false;
		for (anes_tenant *p = set->procs; p; p = p->next)
			if (p->user == t->user)
				for (anes_conn *c = p->conns; c; c = c->tnext)
					anes_conn_kick(c);
	}
	if (set->jobs_full) {
		set->jobs_full = false;
		for (anes_tenant *p = set->procs; p; p = p->next)
			for (anes_conn *c = p->conns; c; c = c->tnext)
				anes_conn_kick(c);
	}
}
