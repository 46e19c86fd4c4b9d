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
	ANESC_LIST_LINK(c, surfaces, s);
}

void anesc_surface_free_local(aneshare_surface *s)
{
	ANESC_LIST_UNLINK(surfaces, s);
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
	bool read_only;    /* "read_only" (surface.import by token) */
} surface_result;

static int surface_cb(aneshare_conn *c, const msgpack_object *res, int *fds, unsigned nfds,
                      void *ud)
{
	surface_result *sr = ud;
	uint32_t id;
	uint64_t size;
	if (anes_mp_u32(res, "id", &id) < 0 || id == 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed surface result from the daemon");
	sr->id = id;   /* known from here on, so the caller can release it */
	if (anes_mp_u64(res, "size", UINT64_MAX, &size) < 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed surface result from the daemon");
	sr->size = size;
	if (anes_mp_get(res, "read_only") && anes_mp_bool(res, "read_only", &sr->read_only) < 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed surface result from the daemon");
	if (anes_mp_get(res, "iosurface_id")) {
		if (anes_mp_u32(res, "iosurface_id", &sr->ios_id) < 0 || sr->ios_id == 0 || nfds != 0)
			return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed IOSurface result from the daemon");
		if (sr->fd == -2)
			sr->fd = -1;
		return 0;
	}
	if (sr->fd == -2) {   /* create, import by token: the response must carry exactly one fd */
		if (nfds != 1)
			return anesc_fail(c, -ANESHARE_EPROTOCOL,
			                  "the daemon sent %u fds with a new surface, not 1", nfds);
		sr->fd = fds[0];
		fds[0] = -1;
	}
	return 0;
}

/* Map fd: PROT_READ only when read_only, or when the fd itself is open
 * for reading only (a read-only import: a writable mapping would fail). */
static int map_fd(int fd, size_t size, bool read_only, void **ret)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	int prot = read_only || (fl & O_ACCMODE) == O_RDONLY ? PROT_READ : PROT_READ | PROT_WRITE;
	void *p = mmap(NULL, size, prot, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED && errno == EPERM && prot != PROT_READ)   /* a write-sealed memfd */
		p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	*ret = p;
	return 0;
}

/* Map fd (size bytes, announced by the daemon) and make the surface object.
 * fd is taken in every case (kept by the surface, or closed).  On failure
 * the daemon's surface is released.  A read-only result (sr->read_only)
 * is mapped PROT_READ. */
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
	r = map_fd(fd, (size_t)sr->size, sr->read_only, &s->data);
	if (r < 0) {
		free(s);
		r = anesc_fail(c, r, "mapping the surface: %s", strerror(-r));
		goto drop;
	}
	s->id = sr->id;
	s->size = (size_t)sr->size;
	s->fd = fd;
	s->read_only = sr->read_only;
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
	s->read_only = sr->read_only;   /* the IOSurface's mapping stays writable (aneshare.h) */
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

/* The answer (r) to a request for a new surface (surface.create, import by
 * token): the surface, named by IOSurface ID or by the fd the response
 * carried (size: 0, or the size it must have).  On failure the daemon's
 * surface, if any, is released and its fd closed. */
static int surface_take(aneshare_conn *c, surface_result *sr, int r, size_t size,
                        aneshare_surface **ret)
{
	if (r < 0) {
		if (sr->fd >= 0)
			close(sr->fd);
		anesc_release_quiet(c, "surface.release", sr->id);
		return r;
	}
	if (sr->ios_id)
		return surface_lookup(c, sr, size, ret);
	if (sr->fd < 0) {
		anesc_release_quiet(c, "surface.release", sr->id);
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "the daemon sent no fd with the new surface");
	}
	return surface_finish(c, sr, sr->fd, size, ret);
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
	return surface_take(c, &sr, r, size, ret);
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

/* ---- sharing by token ---------------------------------------------------------- */

ANESHARE_API int aneshare_token_check(const char *text)
{
	if (!text)
		return -EINVAL;
	for (size_t i = 0; i < ANESHARE_TOKEN_LEN; i++)
		if (!((text[i] >= '0' && text[i] <= '9') || (text[i] >= 'a' && text[i] <= 'f')))
			return -EINVAL;   /* also a NUL before the end */
	return text[ANESHARE_TOKEN_LEN] == '\0' ? 0 : -EINVAL;
}

void anesc_pack_export_limits(msgpack_packer *pk, const aneshare_export_opts *o)
{
	if (o->uses) {
		anes_pack_str(pk, "uses");
		msgpack_pack_uint32(pk, o->uses);
	}
	if (o->ttl_ms) {
		anes_pack_str(pk, "ttl_ms");
		msgpack_pack_uint32(pk, o->ttl_ms);
	}
}

int anesc_export_result(aneshare_conn *c, const msgpack_object *res, aneshare_token *ret_token,
                        uint64_t *ret_expires_ms)
{
	const char *tok;
	uint32_t len;
	uint64_t expires = 0;
	if (anes_mp_str(res, "token", ANESHARE_TOKEN_LEN, &tok, &len) < 0 || len != ANESHARE_TOKEN_LEN ||
	    (anes_mp_get(res, "expires_ms") && anes_mp_u64(res, "expires_ms", UINT64_MAX, &expires) < 0))
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed export result from the daemon");
	aneshare_token t;
	memcpy(t.text, tok, len);
	t.text[len] = '\0';
	if (aneshare_token_check(t.text) < 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "the daemon's token is not %d lowercase hex digits",
		                  ANESHARE_TOKEN_LEN);
	*ret_token = t;
	*ret_expires_ms = expires;
	return 0;
}

int anesc_pack_token(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	(void)c;
	anes_pack_str(pk, "token");
	msgpack_pack_str(pk, ANESHARE_TOKEN_LEN);
	msgpack_pack_str_body(pk, ud, ANESHARE_TOKEN_LEN);
	return 0;
}

typedef struct export_args {
	aneshare_surface *s;
	const aneshare_export_opts *o;
	aneshare_token token;
	uint64_t expires_ms;
} export_args;

/* Packed at send time: the ID changes when the library reconnects. */
static int pack_export(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	const export_args *a = ud;
	if (a->s->lost)
		return anesc_fail(c, -ANESHARE_ENO_SUCH_SURFACE,
		                  "the surface could not be imported again after the daemon restarted: %s",
		                  aneshare_strerror(a->s->lost));
	anes_pack_str(pk, "id");
	msgpack_pack_uint32(pk, a->s->id);
	anes_pack_str(pk, "read_only");
	if (a->o->read_only)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
	anesc_pack_export_limits(pk, a->o);
	return 0;
}

static int export_cb(aneshare_conn *c, const msgpack_object *res, int *fds, unsigned nfds, void *ud)
{
	(void)fds;
	(void)nfds;
	export_args *a = ud;
	return anesc_export_result(c, res, &a->token, &a->expires_ms);
}

ANESHARE_API int aneshare_surface_export(aneshare_surface *s, const aneshare_export_opts *opts,
                                         aneshare_token *ret_token, uint64_t *ret_expires_ms)
{
	if (!s || !ret_token)
		return s ? anesc_fail(s->conn, -EINVAL, "no token to write") : -EINVAL;
	static const aneshare_export_opts defaults = { 0 };
	aneshare_conn *c = s->conn;
	export_args a = { .s = s, .o = opts ? opts : &defaults };
	uint32_t n = 2 + (a.o->uses != 0) + (a.o->ttl_ms != 0);
	int r = anesc_request(c, &(anesc_req){ .method = "surface.export", .n_params = n,
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

ANESHARE_API int aneshare_surface_import_token(aneshare_conn *c, const char *token,
                                               aneshare_surface **ret)
{
	if (!c || !ret)
		return -EINVAL;
	if (aneshare_token_check(token) < 0)
		return anesc_fail(c, -EINVAL, "a token is %d lowercase hex digits", ANESHARE_TOKEN_LEN);
	/* Linux: the response carries the memfd (O_RDONLY for a read-only
	 * export); macOS: an iosurface_id, looked up here. */
	surface_result sr = { .fd = anes_shm_default()->by_id ? -1 : -2 };
	int r = anesc_request(c, &(anesc_req){ .method = "surface.import", .n_params = 1,
	                                       .pack = anesc_pack_token, .pack_ud = (void *)token, .fd = -1,
	                                       .fn = surface_cb, .fn_ud = &sr,
	                                       .flags = ANESC_IDEMPOTENT });
	return surface_take(c, &sr, r, 0, ret);
}

ANESHARE_API bool aneshare_surface_read_only(const aneshare_surface *s)
{
	return s && s->read_only;
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
	if (r == 0 && (ios_id ? sr.size < s->size : sr.size != s->size))
		r = -ANESHARE_EPROTOCOL;
	if (r < 0) {   /* refused (a lower limit, out of memory...): this surface is lost */
		anesc_release_quiet(c, "surface.release", sr.id);   /* the daemon's, if it made one */
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
