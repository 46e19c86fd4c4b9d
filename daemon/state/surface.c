/* SPDX-License-Identifier: MIT */
/*
 * Surfaces: shared memory mapped MAP_SHARED in the daemon, and the handles
 * connections name it by.
 *
 * The memory (anes_smem) is made by surface.create or surface.import (by fd
 * or IOSurface ID) and is counted once in the daemon's totals; a handle
 * (anes_surface) is one connection's ID for it, charged to that
 * connection's process and uid.  surface.import by token (share.c) adds a
 * handle to existing memory.  The memory lives while any handle does; a
 * handle lives while its connection's table or a run refers to it
 * (docs/protocol.md, "Sharing surfaces").
 *
 * A memfd surface keeps a CLOEXEC dup of the memfd (O_RDWR) for the life of
 * the memory: surface.export needs it to give an importer its own fd, and a
 * backend in a device worker (run_surfaces) needs it to share the surface
 * with the worker, again after a worker restart (docs/worker.md).  It is
 * charged as an fd (max_client_fds, max_daemon_fds).  Surfaces named by ID
 * (IOSurface) have no fd: the worker looks them up by their ID.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/mman.h>

#include "anes_shm.h"
#include "daemon.h"

bool anes_surface_keeps_fd(const anes_server *srv)
{
	(void)srv;
	return !anes_shm_default()->by_id;
}

int anes_surface_charge(anes_conn *owner, uint64_t size, bool fd, bool daemon, anes_res *ret_res)
{
	anes_tenant *t = owner->tenant;
	anes_res r = ANES_RES_SURFACES;
	int rc = anes_tenant_charge(t, r, 1, daemon);
	if (rc == 0) {
		r = ANES_RES_SURFACE_BYTES;
		rc = anes_tenant_charge(t, r, size, daemon);
		if (rc < 0)
			anes_tenant_uncharge(t, ANES_RES_SURFACES, 1, daemon);
	}
	if (rc == 0 && fd) {
		r = ANES_RES_FDS;
		rc = anes_tenant_charge(t, r, 1, daemon);
		if (rc < 0) {
			anes_tenant_uncharge(t, ANES_RES_SURFACE_BYTES, size, daemon);
			anes_tenant_uncharge(t, ANES_RES_SURFACES, 1, daemon);
		}
	}
	if (rc < 0)
		*ret_res = r;
	return rc;
}

static void uncharge(anes_tenant *t, uint64_t size, bool fd, bool daemon)
{
	anes_tenant_uncharge(t, ANES_RES_SURFACES, 1, daemon);
	anes_tenant_uncharge(t, ANES_RES_SURFACE_BYTES, size, daemon);
	if (fd)
		anes_tenant_uncharge(t, ANES_RES_FDS, 1, daemon);
}

void anes_surface_uncharge(anes_conn *owner, uint64_t size, bool fd, bool daemon)
{
	uncharge(owner->tenant, size, fd, daemon);
}

/* Live memory created here and named by ID.  Process-wide, like the IDs
 * (several servers can run in one test process, on their own threads). */
static anes_smem *shm_created_list;
static pthread_mutex_t shm_created_lock = PTHREAD_MUTEX_INITIALIZER;

/* The memory's daemon-wide count (its charge to the daemon's totals came
 * with the first handle's, anes_surface_charge with daemon = true). */
static anes_smem *mem_new(anes_server *srv, uint64_t size)
{
	anes_smem *m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->srv = srv;
	m->size = size;
	m->fd = -1;
	return m;
}

static void mem_count(anes_smem *m)
{
	anes_server *srv = m->srv;
	m->key = ++srv->next_surface_key;
	srv->stats.surfaces++;
	srv->stats.surface_bytes += m->size;
}

static void handle_link(anes_conn *owner, anes_smem *m, anes_surface *s, bool read_only)
{
	s->refs = 1;
	s->mem = m;
	m->refs++;
	s->map = m->map;
	s->size = m->size;
	s->key = m->key;
	s->fd = m->fd;
	s->shm = m->shm;
	s->read_only = read_only;
	s->owner = anes_conn_ref(owner);
	s->tenant = anes_tenant_ref(owner->tenant);
	s->fd_charged = m->fd >= 0;
	s->mnext = m->handles;
	if (m->handles)
		m->handles->mprev = s;
	m->handles = s;
	owner->surfaces_alive++;
	owner->surface_bytes += m->size;
}

int anes_surface_new(anes_conn *owner, int fd, uint64_t size, anes_surface **ret)
{
	if (size == 0 || size > SIZE_MAX)
		return -EINVAL;
	anes_surface *s = calloc(1, sizeof(*s));
	anes_smem *m = s ? mem_new(owner->srv, size) : NULL;
	if (!m) {
		free(s);
		return -ENOMEM;
	}
	int r = 0;
	if (anes_surface_keeps_fd(owner->srv)) {
		m->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
		if (m->fd < 0)
			r = -errno;
	}
	if (r == 0) {
		m->map = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (m->map == MAP_FAILED)
			r = -errno;
	}
	if (r < 0) {
		if (m->fd >= 0)
			close(m->fd);
		free(m);
		free(s);
		return r;
	}
	m->fd_charged = m->fd >= 0;
	mem_count(m);
	handle_link(owner, m, s, false);
	*ret = s;
	return 0;
}

int anes_surface_new_shm(anes_conn *owner, struct anes_shm *shm, bool created,
                         anes_surface **ret)
{
	anes_surface *s = calloc(1, sizeof(*s));
	anes_smem *m = s ? mem_new(owner->srv, shm->size) : NULL;
	if (!m) {
		free(s);
		return -ENOMEM;
	}
	m->shm = shm;
	m->map = shm->base;
	if (created) {
		m->shm_created = true;
		pthread_mutex_lock(&shm_created_lock);
		m->shm_next = shm_created_list;
		if (shm_created_list)
			shm_created_list->shm_prev = m;
		shm_created_list = m;
		pthread_mutex_unlock(&shm_created_lock);
	}
	mem_count(m);
	handle_link(owner, m, s, false);
	*ret = s;
	return 0;
}

int anes_surface_new_handle(anes_conn *owner, anes_smem *mem, bool read_only,
                            anes_surface **ret)
{
	anes_surface *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	handle_link(owner, mem, s, read_only);
	*ret = s;
	return 0;
}

bool anes_surface_shm_created(uint32_t id)
{
	bool found = false;
	pthread_mutex_lock(&shm_created_lock);
	for (anes_smem *m = shm_created_list; m && !found; m = m->shm_next)
		found = m->shm->id == id;
	pthread_mutex_unlock(&shm_created_lock);
	return found;
}

anes_surface *anes_surface_ref(anes_surface *s)
{
	assert(s->refs > 0);
	s->refs++;
	return s;
}

/* The last handle went: free the memory and give back the daemon's count. */
static void mem_free(anes_smem *m)
{
	anes_server *srv = m->srv;
	anes_backend *b = srv->backend;
	assert(m->refs == 0 && m->tokens == 0 && !m->handles);
	if (m->exported) {
		if (m->xprev)
			m->xprev->xnext = m->xnext;
		else
			srv->shares.exported = m->xnext;
		if (m->xnext)
			m->xnext->xprev = m->xprev;
	}
	if ((m->fd >= 0 || m->shm) && b->ops->run_surfaces && b->ops->surface_release)
		b->ops->surface_release(b, m->key);
	if (m->fd >= 0)
		close(m->fd);
	if (m->shm_created) {
		pthread_mutex_lock(&shm_created_lock);
		if (m->shm_prev)
			m->shm_prev->shm_next = m->shm_next;
		else
			shm_created_list = m->shm_next;
		if (m->shm_next)
			m->shm_next->shm_prev = m->shm_prev;
		pthread_mutex_unlock(&shm_created_lock);
	}
	if (m->shm)
		m->shm->ops->release(m->shm);
	else
		munmap(m->map, (size_t)m->size);
	srv->stats.surfaces--;
	srv->stats.surface_bytes -= m->size;
	anes_tenants_uncharge(&srv->tenants, ANES_RES_SURFACES, 1);
	anes_tenants_uncharge(&srv->tenants, ANES_RES_SURFACE_BYTES, m->size);
	if (m->fd_charged)
		anes_tenants_uncharge(&srv->tenants, ANES_RES_FDS, 1);
	free(m);
}

anes_surface *anes_surface_unref(anes_surface *s)
{
	if (!s)
		return NULL;
	assert(s->refs > 0);
	if (--s->refs > 0)
		return NULL;
	assert(!s->tokens);
	anes_conn *owner = s->owner;
	anes_smem *m = s->mem;
	if (s->mprev)
		s->mprev->mnext = s->mnext;
	else
		m->handles = s->mnext;
	if (s->mnext)
		s->mnext->mprev = s->mprev;
	owner->surfaces_alive--;
	owner->surface_bytes -= s->size;
	uncharge(s->tenant, s->size, s->fd_charged, false);
	anes_tenant_unref(s->tenant);
	free(s);
	if (--m->refs == 0)
		mem_free(m);
	anes_conn_unref(owner);
	return NULL;
}

bool anes_surface_drop(anes_surface *s)
{
	anes_share_revoke(s);
	bool held = s->refs > 1;
	anes_surface_unref(s);
	return held;
}
