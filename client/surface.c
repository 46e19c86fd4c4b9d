/* SPDX-License-Identifier: MIT */
/*
 * libaneshare: shared-memory surfaces.
 *
 * The library keeps no fd per surface: the mapping alone keeps the memory
 * alive on this side, so a process with many surfaces does not use up its
 * fd limit.  (An imported surface's fd stays the caller's.)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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
	if (s->data)
		munmap(s->data, s->size);
	free(s);
}

typedef struct surface_result {
	uint32_t id;
	uint64_t size;
	int fd;
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
	if (sr->fd == -2) {   /* create: the response must carry exactly one fd */
		if (nfds != 1)
			return anesc_fail(c, -ANESHARE_EPROTOCOL,
			                  "the daemon sent %u fds with a new surface, not 1", nfds);
		sr->fd = fds[0];
		fds[0] = -1;
	}
	return 0;
}

/* Best effort: tell the daemon to drop a surface this side could not use. */
static void surface_drop_remote(aneshare_conn *c, uint32_t id)
{
	anes_frame f;
	uint32_t msgid = 0;
	char saved[ANESC_ERRMSG_MAX];
	memcpy(saved, c->last_error, sizeof saved);
	if (anesc_begin(c, &f, "surface.release", 1, &msgid) == 0) {
		anes_pack_str(&f.pk, "id");
		msgpack_pack_uint32(&f.pk, id);
		(void)anesc_call(c, &f, msgid, NULL, 0, NULL, NULL);
	}
	memcpy(c->last_error, saved, sizeof saved);
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
 * fd is borrowed.  On failure the daemon's surface is released. */
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
	surface_link(c, s);
	*ret = s;
	return 0;
drop:
	surface_drop_remote(c, sr->id);
	return r;
}

ANESHARE_API int aneshare_surface_create(aneshare_conn *c, size_t size, aneshare_surface **ret)
{
	if (!c || !ret)
		return -EINVAL;
	if (size == 0)
		return anesc_fail(c, -EINVAL, "a surface needs at least one byte");
	anes_frame f;
	uint32_t msgid = 0;
	int r = anesc_begin(c, &f, "surface.create", 1, &msgid);
	if (r < 0)
		return r;
	anes_pack_str(&f.pk, "size");
	msgpack_pack_uint64(&f.pk, size);
	surface_result sr = { .fd = -2 };
	r = anesc_call(c, &f, msgid, NULL, 0, surface_cb, &sr);
	if (r < 0) {
		if (sr.fd >= 0)
			close(sr.fd);
		if (sr.id)
			surface_drop_remote(c, sr.id);
		return r;
	}
	r = surface_finish(c, &sr, sr.fd, size, ret);
	close(sr.fd);
	return r;
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
	int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (dup_fd < 0) {
		int e = -errno;
		return anesc_fail(c, e, "duplicating the fd: %s", strerror(-e));
	}
	anes_frame f;
	uint32_t msgid = 0;
	int r = anesc_begin(c, &f, "surface.import", 0, &msgid);
	if (r < 0) {
		close(dup_fd);
		return r;
	}
	surface_result sr = { .fd = -1 };
	r = anesc_call(c, &f, msgid, &dup_fd, 1, surface_cb, &sr);   /* dup_fd is taken */
	if (r < 0) {
		if (sr.id)
			surface_drop_remote(c, sr.id);
		return r;
	}
	return surface_finish(c, &sr, fd, 0, ret);
#endif
}

ANESHARE_API int aneshare_surface_release(aneshare_surface *s)
{
	if (!s)
		return 0;
	aneshare_conn *c = s->conn;
	uint32_t id = s->id;
	anesc_surface_free_local(s);
	anes_frame f;
	uint32_t msgid = 0;
	int r = anesc_begin(c, &f, "surface.release", 1, &msgid);
	if (r < 0)
		return r;
	anes_pack_str(&f.pk, "id");
	msgpack_pack_uint32(&f.pk, id);
	return anesc_call(c, &f, msgid, NULL, 0, NULL, NULL);
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
