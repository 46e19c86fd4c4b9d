/* SPDX-License-Identifier: MIT */
/*
 * libaneshare: shared-memory surfaces.
 *
 * The library keeps each surface's memfd (CLOEXEC) besides its mapping, so
 * that after a daemon restart it can hand the same memory to the new daemon
 * (surface.import): the data survives, only the ID changes.  That costs one
 * fd per live surface.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "anes_shm.h"
#include "internal.h"

static void surface_link(aneshare_conn *c, aneshare_surface *s)
{
	s->conn = c;
	s->prev = NULL;
	s->next = c->surfaces;
	if (c->surfaces)
		c->surfaces->prev = s;
	c->surfaces = s;
}

void anesc_surface_free_local(aneshare_surface *s)
{
	aneshare_conn *c = s->conn;
	if (s->prev)
		s->prev->next = s->next;
	else
		c->surfaces = s->next;
	if (s->next)
		s->next->prev = s->prev;
	if (s->shm)
		s->shm->ops->release(s->shm);
	else if (s->data)
		munmap(s->data, s->size);
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}

typedef struct surface_result {
	uint32_t id;
	uint64_t size;
	int fd;
	uint32_t ios_id;   /* "iosurface_id": named by ID, no fd (macOS) */
} surface_result;

static int surface_cb(aneshare_conn *c, const msgpack_object *res, int *fds, unsigned nfds,
                      void *ud)
{
	surface_result *sr = ud;
	uint32_t id;
	uint64_t size;
	if (anes_mp_u32(res, "id", &id) < 0 || id == 0 ||
	    anes_mp_u64(res, "size", UINT64_MAX, &size) < 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed surface result from the daemon");
	sr->id = id;
	sr->size = size;
	if (anes_mp_get(res, "iosurface_id")) {
		if (anes_mp_u32(res, "iosurface_id", &sr->ios_id) < 0 || sr->ios_id == 0 || nfds != 0)
			return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed IOSurface result from the daemon");
		if (sr->fd == -2)
			sr->fd = -1;
		return 0;
	}
	if (sr->fd == -2) {   /* create: the response must carry exactly one fd */
		if (nfds != 1)
			return anesc_fail(c, -ANESHARE_EPROTOCOL,
			                  "the daemon sent %u fds with a new surface, not 1", nfds);
		sr->fd = fds[0];
		fds[0] = -1;
	}
	return 0;
}

static int map_fd(int fd, size_t size, void **ret)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED && errno == EPERM)   /* a write-sealed memfd: read-only */
		p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	*ret = p;
	return 0;
}

/* Map fd (size bytes, announced by the daemon) and make the surface object.
 * fd is taken in every case (kept by the surface, or closed).  On failure
 * the daemon's surface is released. */
static int surface_finish(aneshare_conn *c, const surface_result *sr, int fd, size_t want,
                          aneshare_surface **ret)
{
	uint64_t fsize;
	int r = anes_memfd_check(fd, &fsize);
	if (r < 0 || sr->size == 0 || sr->size > SIZE_MAX || fsize < sr->size ||
	    (want && sr->size != want)) {
		r = anesc_fail(c, -ANESHARE_EPROTOCOL, "the daemon's surface does not match its size");
		goto drop;
	}
	aneshare_surface *s = calloc(1, sizeof *s);
	if (!s) {
		r = anesc_fail(c, -ENOMEM, "out of memory");
		goto drop;
	}
	r = map_fd(fd, (size_t)sr->size, &s->data);
	if (r < 0) {
		free(s);
		r = anesc_fail(c, r, "mapping the surface: %s", strerror(-r));
		goto drop;
	}
	s->id = sr->id;
	s->size = (size_t)sr->size;
	s->fd = fd;
	surface_link(c, s);
	*ret = s;
	return 0;
drop:
	close(fd);
	anesc_release_quiet(c, "surface.release", sr->id);
	return r;
}

/* A surface named by IOSurface ID: shm (taken in every case) is this
 * process's reference to the daemon's surface sr.  On failure the daemon's
 * surface is released. */
static int surface_finish_shm(aneshare_conn *c, const surface_result *sr, anes_shm *shm,
                              size_t want, aneshare_surface **ret)
{
	int r;
	if (sr->size == 0 || sr->size > shm->size || (want && sr->size != want)) {
		r = anesc_fail(c, -ANESHARE_EPROTOCOL, "the daemon's surface does not match its size");
		goto drop;
	}
	aneshare_surface *s = calloc(1, sizeof *s);
	if (!s) {
		r = anesc_fail(c, -ENOMEM, "out of memory");
		goto drop;
	}
	s->id = sr->id;
	s->size = (size_t)sr->size;
	s->fd = -1;
	s->shm = shm;
	s->data = shm->base;
	surface_link(c, s);
	*ret = s;
	return 0;
drop:
	shm->ops->release(shm);
	anesc_release_quiet(c, "surface.release", sr->id);
	return r;
}

/* The daemon named a new surface by IOSurface ID: look it up here. */
static int surface_lookup(aneshare_conn *c, const surface_result *sr, size_t want,
                          aneshare_surface **ret)
{
	const anes_shm_ops *so = anes_shm_default();
	anes_shm *shm;
	int r = so->by_id ? so->lookup(sr->ios_id, &shm) : -ENOTSUP;
	if (r < 0) {
		anesc_release_quiet(c, "surface.release", sr->id);
		if (r == -ENOTSUP)
			return anesc_fail(c, -ANESHARE_EPROTOCOL,
			                  "the daemon names surfaces by IOSurface ID; this library's are %s",
			                  so->name);
		return anesc_fail(c, r, "looking up IOSurface %u: %s", sr->ios_id, strerror(-r));
	}
	return surface_finish_shm(c, sr, shm, want, ret);
}

static int pack_ios_id(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	(void)c;
	anes_pack_str(pk, "iosurface_id");
	msgpack_pack_uint32(pk, *(const uint32_t *)ud);
	return 0;
}

static int pack_size(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	(void)c;
	anes_pack_str(pk, "size");
	msgpack_pack_uint64(pk, *(const size_t *)ud);
	return 0;
}

ANESHARE_API int aneshare_surface_create(aneshare_conn *c, size_t size, aneshare_surface **ret)
{
	if (!c || !ret)
		return -EINVAL;
	if (size == 0)
		return anesc_fail(c, -EINVAL, "a surface needs at least one byte");
	surface_result sr = { .fd = -2 };
	int r = anesc_request(c, &(anesc_req){ .method = "surface.create", .n_params = 1,
	                                       .pack = pack_size, .pack_ud = &size, .fd = -1,
	                                       .fn = surface_cb, .fn_ud = &sr,
	                                       .flags = ANESC_IDEMPOTENT });
	if (r < 0) {
		if (sr.fd >= 0)
			close(sr.fd);
		anesc_release_quiet(c, "surface.release", sr.id);
		return r;
	}
	if (sr.ios_id)
		return surface_lookup(c, &sr, size, ret);
	return surface_finish(c, &sr, sr.fd, size, ret);
}

ANESHARE_API int aneshare_surface_import_iosurface(aneshare_conn *c, uint32_t iosurface_id,
                                                   aneshare_surface **ret)
{
	if (!c || !ret)
		return -EINVAL;
	const anes_shm_ops *so = anes_shm_default();
	if (!so->by_id)
		return anesc_fail(c, -ENOTSUP, "surfaces are %s here, not IOSurfaces", so->name);
	anes_shm *shm;
	int r = so->lookup(iosurface_id, &shm);
	if (r < 0)
		return anesc_fail(c, r, "looking up IOSurface %u: %s", iosurface_id, strerror(-r));
	surface_result sr = { .fd = -1 };
	r = anesc_request(c, &(anesc_req){ .method = "surface.import", .n_params = 1,
	                                   .pack = pack_ios_id, .pack_ud = &iosurface_id, .fd = -1,
	                                   .fn = surface_cb, .fn_ud = &sr,
	                                   .flags = ANESC_IDEMPOTENT });
	if (r == 0 && sr.ios_id != iosurface_id)
		r = anesc_fail(c, -ANESHARE_EPROTOCOL, "the daemon imported another IOSurface");
	if (r < 0) {
		so->release(shm);
		anesc_release_quiet(c, "surface.release", sr.id);
		return r;
	}
	return surface_finish_shm(c, &sr, shm, 0, ret);
}

ANESHARE_API int aneshare_surface_import(aneshare_conn *c, int fd, aneshare_surface **ret)
{
	if (!c || !ret)
		return -EINVAL;
#ifndef __linux__
	(void)fd;
	return anesc_fail(c, -ENOTSUP, "surface import needs memfd (Linux)");
#else
	if (fd < 0)
		return anesc_fail(c, -EBADF, "bad fd");
	int own = fcntl(fd, F_DUPFD_CLOEXEC, 3);   /* the surface's; a duplicate is sent */
	if (own < 0) {
		int e = -errno;
		return anesc_fail(c, e, "duplicating the fd: %s", strerror(-e));
	}
	surface_result sr = { .fd = -1 };
	int r = anesc_request(c, &(anesc_req){ .method = "surface.import", .fd = own,
	                                       .fn = surface_cb, .fn_ud = &sr,
	                                       .flags = ANESC_IDEMPOTENT });
	if (r < 0) {
		close(own);
		anesc_release_quiet(c, "surface.release", sr.id);
		return r;
	}
	return surface_finish(c, &sr, own, 0, ret);
#endif
}

int anesc_surface_restore(aneshare_conn *c, aneshare_surface *s)
{
	surface_result sr = { .fd = -1 };
	uint32_t ios_id = s->shm ? s->shm->id : 0;   /* named by ID: import it by ID */
	int r = anesc_request(c, &(anesc_req){ .method = "surface.import", .fd = s->fd,
	                                       .n_params = ios_id ? 1 : 0,
	                                       .pack = ios_id ? pack_ios_id : NULL, .pack_ud = &ios_id,
	                                       .fn = surface_cb, .fn_ud = &sr,
	                                       .flags = ANESC_NO_RECONNECT });
	if (c->dead || c->broken)
		return r < 0 ? r : anesc_broken_rc(c);
	/* an import by ID has the IOSurface's alloc size, which may exceed the
	 * size the surface was created with */
	if (r == 0 && (ios_id ? sr.size < s->size : sr.size != s->size)) {
		r = -ANESHARE_EPROTOCOL;
		anesc_release_quiet(c, "surface.release", sr.id);
	}
	if (r < 0) {   /* refused (a lower limit, out of memory...): this surface is lost */
		s->lost = r;
		s->id = 0;
		return 0;
	}
	s->id = sr.id;
	return 0;
}

ANESHARE_API int aneshare_surface_release(aneshare_surface *s)
{
	if (!s)
		return 0;
	aneshare_conn *c = s->conn;
	uint32_t id = s->id;
	bool lost = s->lost != 0;
	anesc_surface_free_local(s);
	if (lost)
		return 0;   /* the daemon has no such surface */
	return anesc_release(c, "surface.release", id);
}

ANESHARE_API void *aneshare_surface_data(const aneshare_surface *s)
{
	return s ? s->data : NULL;
}

ANESHARE_API size_t aneshare_surface_size(const aneshare_surface *s)
{
	return s ? s->size : 0;
}

ANESHARE_API uint32_t aneshare_surface_id(const aneshare_surface *s)
{
	return s ? s->id : 0;
}

ANESHARE_API uint32_t aneshare_surface_iosurface_id(const aneshare_surface *s)
{
	return s && s->shm ? s->shm->id : 0;
}
