/* SPDX-License-Identifier: MIT */
/*
 * Surfaces: shared memory mapped MAP_SHARED in the daemon.  The daemon keeps
 * only the mapping, not the fd: the mapping holds the memfd alive, and
 * keeping fds would put 256 clients x 1024 surfaces against RLIMIT_NOFILE.
 * The exception is a backend in a device worker (run_surfaces): it needs the
 * fd to share the surface with the worker, again after a worker restart, so
 * the surface keeps a CLOEXEC dup until it is freed (docs/worker.md).
 * Surfaces named by ID (IOSurface) have no fd: the worker looks them up by
 * their ID.
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
	return srv->backend->ops->run_surfaces != NULL;
}

int anes_surface_charge(anes_conn *owner, uint64_t size, bool fd, anes_res *ret_res)
{
	anes_tenant *t = owner->tenant;
	anes_res r = ANES_RES_SURFACES;
	int rc = anes_tenant_charge(t, r, 1, true);
	if (rc == 0) {
		r = ANES_RES_SURFACE_BYTES;
		rc = anes_tenant_charge(t, r, size, true);
		if (rc < 0)
			anes_tenant_uncharge(t, ANES_RES_SURFACES, 1, true);
	}
	if (rc == 0 && fd) {
		r = ANES_RES_FDS;
		rc = anes_tenant_charge(t, r, 1, true);
		if (rc < 0) {
			anes_tenant_uncharge(t, ANES_RES_SURFACE_BYTES, size, true);
			anes_tenant_uncharge(t, ANES_RES_SURFACES, 1, true);
		}
	}
	if (rc < 0)
		*ret_res = r;
	return rc;
}

static void uncharge(anes_tenant *t, uint64_t size, bool fd)
{
	anes_tenant_uncharge(t, ANES_RES_SURFACES, 1, true);
	anes_tenant_uncharge(t, ANES_RES_SURFACE_BYTES, size, true);
	if (fd)
		anes_tenant_uncharge(t, ANES_RES_FDS, 1, true);
}

void anes_surface_uncharge(anes_conn *owner, uint64_t size, bool fd)
{
	uncharge(owner->tenant, size, fd);
}

int anes_surface_new(anes_conn *owner, int fd, uint64_t size, anes_surface **ret)
{
	if (size == 0 || size > SIZE_MAX)
		return -EINVAL;
	anes_surface *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	const anes_backend *b = owner->srv->backend;
	s->fd = -1;
	if (b->ops->run_surfaces) {
		s->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
		if (s->fd < 0) {
			int r = -errno;
			free(s);
			return r;
		}
	}
	void *map = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		int r = -errno;
		if (s->fd >= 0)
			close(s->fd);
		free(s);
		return r == -ENOMEM ? -ENOMEM : r;
	}
	s->key = ++owner->srv->next_surface_key;
	s->refs = 1;
	s->map = map;
	s->size = size;
	s->owner = anes_conn_ref(owner);
	s->tenant = anes_tenant_ref(owner->tenant);
	s->fd_charged = s->fd >= 0;
	owner->surfaces_alive++;
	owner->surface_bytes += size;
	owner->srv->stats.surfaces++;
	owner->srv->stats.surface_bytes += size;
	*ret = s;
	return 0;
}

static void surface_count(anes_conn *owner, anes_surface *s)
{
	s->key = ++owner->srv->next_surface_key;
	s->refs = 1;
	s->owner = anes_conn_ref(owner);
	s->tenant = anes_tenant_ref(owner->tenant);
	owner->surfaces_alive++;
	owner->surface_bytes += s->size;
	owner->srv->stats.surfaces++;
	owner->srv->stats.surface_bytes += s->size;
}

/* Live surfaces created here and named by ID.  Process-wide, like the IDs
 * (several servers can run in one test process, on their own threads). */
static anes_surface *shm_created_list;
static pthread_mutex_t shm_created_lock = PTHREAD_MUTEX_INITIALIZER;

int anes_surface_new_shm(anes_conn *owner, struct anes_shm *shm, bool created,
                         anes_surface **ret)
{
	anes_surface *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->fd = -1;
	s->shm = shm;
	s->map = shm->base;
	s->size = shm->size;
	if (created) {
		s->shm_created = true;
		pthread_mutex_lock(&shm_created_lock);
		s->shm_next = shm_created_list;
		if (shm_created_list)
			shm_created_list->shm_prev = s;
		shm_created_list = s;
		pthread_mutex_unlock(&shm_created_lock);
	}
	surface_count(owner, s);
	*ret = s;
	return 0;
}

bool anes_surface_shm_created(uint32_t id)
{
	bool found = false;
	pthread_mutex_lock(&shm_created_lock);
	for (anes_surface *s = shm_created_list; s && !found; s = s->shm_next)
		found = s->shm->id == id;
	pthread_mutex_unlock(&shm_created_lock);
	return found;
}

anes_surface *anes_surface_ref(anes_surface *s)
{
	assert(s->refs > 0);
	s->refs++;
	return s;
}

anes_surface *anes_surface_unref(anes_surface *s)
{
	if (!s)
		return NULL;
	assert(s->refs > 0);
	if (--s->refs > 0)
		return NULL;
	anes_conn *owner = s->owner;
	anes_backend *b = owner->srv->backend;
	if ((s->fd >= 0 || s->shm) && b->ops->run_surfaces && b->ops->surface_release)
		b->ops->surface_release(b, s->key);
	if (s->fd >= 0)
		close(s->fd);
	if (s->shm_created) {
		pthread_mutex_lock(&shm_created_lock);
		if (s->shm_prev)
			s->shm_prev->shm_next = s->shm_next;
		else
			shm_created_list = s->shm_next;
		if (s->shm_next)
			s->shm_next->shm_prev = s->shm_prev;
		pthread_mutex_unlock(&shm_created_lock);
	}
	if (s->shm)
		s->shm->ops->release(s->shm);
	else
		munmap(s->map, (size_t)s->size);
	owner->surfaces_alive--;
	owner->surface_bytes -= s->size;
	owner->srv->stats.surfaces--;
	owner->srv->stats.surface_bytes -= s->size;
	uncharge(s->tenant, s->size, s->fd_charged);
	anes_tenant_unref(s->tenant);
	free(s);
	anes_conn_unref(owner);
	return NULL;
}
