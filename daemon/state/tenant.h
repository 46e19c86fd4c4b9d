/* SPDX-License-Identifier: MIT */
/*
 * Tenants: what each client process, each user and the whole daemon hold
 * (docs/protocol.md, "Limits").
 *
 * A client is a process, not a connection: connections from the same peer
 * process (the pid and uid the daemon reads from the socket's credentials)
 * share one process tenant, so opening more connections buys nothing.
 * Each process tenant belongs to its uid's user tenant.  Every resource a
 * client makes the daemon hold is charged, before it is allocated, to the
 * process tenant (checked against the per-client limit), to its user
 * (checked against the per-uid limit) and to the daemon's totals (checked
 * against the daemon-wide limit).
 *
 * Where the peer's pid cannot be read (a platform without SO_PEERCRED or
 * LOCAL_PEERPID), all connections of a uid share one tenant.
 *
 * Threading: tenants are created, referenced, listed and freed on the loop
 * thread.  anes_tenant_charge / anes_tenant_uncharge and the counters may be
 * used from any thread (atomics): a compile job charges its program memory
 * on a worker thread before it allocates it.
 */
#ifndef ANES_TENANT_H
#define ANES_TENANT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jobsched.h"
#include "server.h"

typedef enum anes_res {
	ANES_RES_SURFACES,        /* surfaces alive */
	ANES_RES_SURFACE_BYTES,   /* their bytes */
	ANES_RES_FDS,             /* file descriptors the daemon keeps for the client's surfaces */
	ANES_RES_PROGRAMS,        /* program handles */
	ANES_RES_PROGRAM_BYTES,   /* program memory (anes_program_estimate), request copies of compiles */
	ANES_RES_JOBS,            /* runs and compiles queued or running on the workers */
	/* The connections' buffers (conn.c): receive memory reserved for frames
	 * over ANES_IO_RBUF_MIN (charged by the thread that reads, before the
	 * buffer grows), and response bytes queued and not yet sent (charged
	 * by the loop before they are queued, given back as they leave). */
	ANES_RES_INPUT_BYTES,
	ANES_RES_OUTPUT_BYTES,
	ANES_RES_N
} anes_res;

typedef struct anes_tenant anes_tenant;
typedef struct anes_tenants anes_tenants;
struct anes_conn;

struct anes_tenant {
	anes_tenants *set;
	anes_tenant *prev, *next;     /* set->procs or set->users */
	anes_tenant *user;            /* the uid's tenant (referenced); NULL for a user */
	uint32_t uid;
	int64_t pid;                  /* -1: a user, or a process whose pid is unknown */
	unsigned refs;                /* loop: connections, objects charged, jobs */
	unsigned n_conns;
	struct anes_conn *conns;      /* loop: its open connections (anes_conn.tnext) */
	uint64_t serial;              /* order of creation, for listings */
	char name[129];               /* the latest hello's client name, "" before any */
	bool jobs_full;               /* loop: reading paused at the jobs limit (a user: its
	                               * uid's limit) */
	_Atomic uint64_t use[ANES_RES_N];
	_Atomic uint64_t runs;        /* runs finished (steps), for status */
	uint32_t events;              /* event handles its connections hold (loop; event.c) */
	anes_sflow sflow;             /* its queue of device work (jobsched.h; worker.c's
	                               * mutex), process tenants only */
};

struct anes_tenants {
	const anes_limits *lim;       /* borrowed: the server's */
	anes_tenant *procs;           /* process tenants, newest first */
	anes_tenant *users;
	unsigned n_procs, n_users;
	uint64_t next_serial;
	bool jobs_full;               /* loop: reading paused at the daemon's jobs limit */
	_Atomic uint64_t total[ANES_RES_N];
};

/* Static: the limit of r for one client process, for one uid and for the
 * daemon (UINT64_MAX: none) and their configuration keys (NULL: none). */
uint64_t anes_res_client_limit(const anes_limits *lim, anes_res r);
uint64_t anes_res_uid_limit(const anes_limits *lim, anes_res r);
uint64_t anes_res_daemon_limit(const anes_limits *lim, anes_res r);
const char *anes_res_client_key(anes_res r);
const char *anes_res_uid_key(anes_res r);
const char *anes_res_daemon_key(anes_res r);
/* Set every per-uid limit left 0 to the daemon-wide one. */
void anes_limits_uid_defaults(anes_limits *lim);
/* "surfaces", "surface_bytes", ... as in status. */
const char *anes_res_name(anes_res r);

void anes_tenants_init(anes_tenants *set, const anes_limits *lim);
/* Every tenant must be gone (asserted). */
void anes_tenants_cleanup(anes_tenants *set);

/* The tenant of peer (uid, pid), created on first use; pid < 0 when
 * unknown.  Returns it referenced, or NULL when out of memory. */
anes_tenant *anes_tenant_get(anes_tenants *set, uint32_t uid, int64_t pid);
anes_tenant *anes_tenant_ref(anes_tenant *t);
/* Accepts NULL.  Frees t when the last reference goes; its use must be 0
 * then (asserted). */
void anes_tenant_unref(anes_tenant *t);

/* Any thread.  Charge n units of r to t and its user, and when daemon is
 * true to the daemon's totals too (false: the daemon already holds it, for
 * a shared program; docs/protocol.md, "Program memory").  0, or nothing is
 * charged and -EDQUOT (t's limit or its uid's would be exceeded; see
 * anes_tenant_uid_over) or -ENOSPC (the daemon's would). */
int anes_tenant_charge(anes_tenant *t, anes_res r, uint64_t n, bool daemon);
/* Any thread.  Undo a charge (the same t, r, n and daemon). */
void anes_tenant_uncharge(anes_tenant *t, anes_res r, uint64_t n, bool daemon);
/* Any thread.  Take n off the daemon's total of r alone: what counts once
 * in the totals however many hold it (a shared program's memory, a shared
 * surface), given back when the last holder goes. */
void anes_tenants_uncharge(anes_tenants *set, anes_res r, uint64_t n);

static inline uint64_t anes_tenant_use(const anes_tenant *t, anes_res r)
{
	return atomic_load_explicit(&t->use[r], memory_order_relaxed);
}

static inline uint64_t anes_tenants_total(const anes_tenants *set, anes_res r)
{
	return atomic_load_explicit(&set->total[r], memory_order_relaxed);
}

/* Any thread: whether charging n more units of r to t would take its
 * uid over the per-uid limit (tells the two -EDQUOTs apart). */
bool anes_tenant_uid_over(const anes_tenant *t, anes_res r, uint64_t n);

/* A one-line reason for a failed charge of n units of r to t (rc from
 * anes_tenant_charge), e.g. for a `limit` error. */
void anes_tenant_limit_msg(const anes_tenant *t, anes_res r, uint64_t n, int rc, char *buf,
                           size_t len);

/* Loop.  Whether t may start another job (run or compile) now: below the
 * per-client, the per-uid and the daemon-wide jobs limit.  When not, the caller stops
 * reading and anes_tenant_job_end kicks it later. */
bool anes_tenant_jobs_room(anes_tenant *t);
/* Loop.  Count a job of t (jobs are never refused: reading pauses at the
 * limit), and its end, which kicks t's connections (its uid's, or every
 * client's, at those limits) that paused for it. */
void anes_tenant_job_begin(anes_tenant *t);
void anes_tenant_job_end(anes_tenant *t);

#endif
