/* SPDX-License-Identifier: MIT */
/*
 * Surfaces named by IOSurface ID (issue 5, point 2), on Linux: the real
 * aneshared and libaneshare run their IOSurface code paths (proto/anes_shm.c)
 * against tests/fake_iosurface.c, which the test hooks (-Dtest_hooks=true)
 * load in place of IOSurface.framework and CoreFoundation:
 *   ANESHARE_SURFACES=iosurface ANESHARE_IOSURFACE_LIB=$FAKE_IOSURFACE_LIB
 *   ANESHARE_FAKE_IOSURFACE_DIR=<private dir>   (where the fake keeps surfaces)
 * The daemon inherits them from the test process.  Criterion runs each test
 * in its own process, so the once-per-process backend choice is per test.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "anes_config.h"
#include "anes_proto.h"
#include "anes_shm.h"
#include "aneshare.h"
#include "daemon_harness.h"

static h_daemon D;
static char fake_dir[128];

static void setup(void)
{
	h_fake_iosurface_env(fake_dir, sizeof fake_dir);
	h_daemon_start(&D);
}

static void teardown(void)
{
	h_daemon_kill(&D);
	h_fake_iosurface_rm(fake_dir);
}

/* Poll (bounded) until the fake has freed id: the daemon drops its reference
 * asynchronously after surface.release answers. */
static void wait_freed(uint32_t id)
{
	for (int i = 0; i < 1000 * h_slow() && h_fake_iosurface_exists(fake_dir, id); i++)
		usleep(10000);
	cr_assert(!h_fake_iosurface_exists(fake_dir, id), "IOSurface %u was not freed", id);
}

/* ---- raw requests ---------------------------------------------------------------- */

static void pack_create(int fd, uint32_t msgid, uint64_t size)
{
	cr_assert_eq(h_raw_request_kv(fd, msgid, "surface.create", "size", size, NULL, 0), 0);
}

static int import_id(int fd, uint32_t msgid, uint32_t ios_id)
{
	cr_assert_eq(h_raw_request_kv(fd, msgid, "surface.import", "iosurface_id", ios_id, NULL, 0),
	             0);
	return h_raw_response(fd, msgid, 5000);
}

typedef struct create_res {
	uint32_t id, ios_id;
	uint64_t size;
} create_res;

static void get_create(const msgpack_object *res, void *ud)
{
	create_res *cr = ud;
	cr_assert_eq(anes_mp_u32(res, "id", &cr->id), 0);
	cr_assert_eq(anes_mp_u64(res, "size", UINT64_MAX, &cr->size), 0);
	cr_assert_eq(anes_mp_u32(res, "iosurface_id", &cr->ios_id), 0, "no iosurface_id");
}

TestSuite(iosurface, .timeout = 60);

/* ---- the wire: an ID, no fd ----------------------------------------------------------- */

Test(iosurface, create_returns_id_and_no_fd, .init = setup, .fini = teardown)
{
	int fd = h_raw_open(D.sock);
	int fds0 = h_count_fds();
	pack_create(fd, 2, 5000);
	create_res cr = { 0 };
	cr_assert_eq(h_raw_response_cb(fd, 2, 5000, get_create, &cr), 0);
	cr_assert_neq(cr.id, 0);
	cr_assert_neq(cr.ios_id, 0);
	cr_assert_eq(cr.size, 5000);
	/* an fd attached to the response would have been received as a new fd */
	cr_assert_eq(h_count_fds(), fds0, "the response carried an fd");
	cr_assert(h_fake_iosurface_exists(fake_dir, cr.ios_id));
	close(fd);
	wait_freed(cr.ios_id);   /* the connection's surfaces go with it */
}

Test(iosurface, client_sees_daemon_writes, .init = setup, .fini = teardown)
{
	aneshare_conn *c = h_connect(&D, "ios-run");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in = h_surface(c, mm.in_bytes), *out = h_surface(c, mm.out_bytes);
	uint32_t in_id = aneshare_surface_iosurface_id(in), out_id = aneshare_surface_iosurface_id(out);
	cr_assert_neq(in_id, 0);
	cr_assert_neq(out_id, 0);
	cr_assert_neq(in_id, out_id);
	cr_assert_eq(aneshare_surface_size(in), mm.in_bytes);
	for (uint64_t seed = 1; seed <= 3; seed++)
		h_mm_fill_run_check(p, &mm, in, out, seed);
	cr_assert_eq(aneshare_surface_release(in), 0);
	cr_assert_eq(aneshare_surface_release(out), 0);
	aneshare_program_release(p);
	h_wait_counts(c, 0, 0);
	wait_freed(in_id);
	wait_freed(out_id);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- import by ID ---------------------------------------------------------------- */

Test(iosurface, import_by_id, .init = setup, .fini = teardown)
{
	aneshare_conn *c = h_connect(&D, "ios-import");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	/* an IOSurface of this process's own, made through the same backend */
	const anes_shm_ops *so = anes_shm_default();
	cr_assert_str_eq(so->name, "iosurface");
	anes_shm *mine;
	cr_assert_eq(so->create(mm.in_bytes, &mine), 0);
	aneshare_surface *in = NULL, *out = h_surface(c, mm.out_bytes);
	int r = aneshare_surface_import_iosurface(c, mine->id, &in);
	cr_assert_eq(r, 0, "import: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_eq(aneshare_surface_iosurface_id(in), mine->id);
	cr_assert_geq(aneshare_surface_size(in), mm.in_bytes);
	/* one memory: written through our own reference, seen through the surface */
	memset(mine->base, 0x5a, 64);
	cr_assert_eq(((unsigned char *)aneshare_surface_data(in))[63], 0x5a);
	h_mm_fill_run_check(p, &mm, in, out, 7);
	/* and the daemon read what our own reference sees */
	cr_assert_eq(memcmp(mine->base, aneshare_surface_data(in), mm.in_bytes), 0);

	/* a missing ID fails here, before the daemon is asked */
	aneshare_surface *none = NULL;
	cr_assert_eq(aneshare_surface_import_iosurface(c, 4000000000u, &none), -ENOENT);
	cr_assert_null(none);

	uint32_t id = mine->id;
	cr_assert_eq(aneshare_surface_release(in), 0);
	cr_assert_eq(aneshare_surface_release(out), 0);
	aneshare_program_release(p);
	h_wait_counts(c, 0, 0);
	cr_assert(h_fake_iosurface_exists(fake_dir, id), "freed while this process still holds it");
	so->release(mine);
	wait_freed(id);
	aneshare_disconnect(c);
}

/* Policy (docs/security.md): the daemon refuses the ID of a surface it
 * created, from any connection, so naming an ID through surface.import does
 * not reach another client's surface.  Other IDs it can look up are taken. */
Test(iosurface, import_of_daemon_surface_refused, .init = setup, .fini = teardown)
{
	aneshare_conn *a = h_connect(&D, "ios-owner");
	aneshare_surface *s = h_surface(a, 4096);
	uint32_t ios_id = aneshare_surface_iosurface_id(s);

	int fd = h_raw_open(D.sock);
	cr_assert_eq(import_id(fd, 2, ios_id), ANES_WERR_INVALID_PARAMS);
	/* nor from the connection that owns it */
	aneshare_surface *dup = NULL;
	cr_assert_eq(aneshare_surface_import_iosurface(a, ios_id, &dup), -ANESHARE_EINVALID_PARAMS);
	cr_assert_null(dup);
	/* an ID nobody has */
	cr_assert_eq(import_id(fd, 3, 4000000000u), ANES_WERR_NO_SUCH_SURFACE);
	cr_assert_eq(import_id(fd, 4, 0), ANES_WERR_INVALID_PARAMS);

	/* once the daemon has dropped it (released, but the client's reference
	 * keeps the memory), the ID is no longer the daemon's: import works */
	anes_shm *keep;
	cr_assert_eq(anes_shm_default()->lookup(ios_id, &keep), 0);
	cr_assert_eq(aneshare_surface_release(s), 0);
	h_wait_counts(a, 0, 0);
	cr_assert_eq(import_id(fd, 5, ios_id), 0);
	close(fd);
	anes_shm_default()->release(keep);
	wait_freed(ios_id);
	aneshare_disconnect(a);
}

Test(iosurface, release_frees, .init = setup, .fini = teardown)
{
	aneshare_conn *c = h_connect(&D, "ios-release");
	uint32_t ids[8];
	aneshare_surface *s[8];
	for (int i = 0; i < 8; i++) {
		s[i] = h_surface(c, 4096 * (size_t)(i + 1));
		ids[i] = aneshare_surface_iosurface_id(s[i]);
		memset(aneshare_surface_data(s[i]), i, aneshare_surface_size(s[i]));
	}
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(aneshare_surface_release(s[i]), 0);
		wait_freed(ids[i]);
		for (int j = i + 1; j < 8; j++)
			cr_assert(h_fake_iosurface_exists(fake_dir, ids[j]));
	}
	h_wait_counts(c, 0, 0);
	aneshare_disconnect(c);
}

/* ---- reconnect: the library imports its surfaces again, by ID ----------------------- */

Test(iosurface, reconnect_reimports_by_id, .init = setup, .fini = teardown)
{
	aneshare_conn *c = h_connect(&D, "ios-reconnect");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in = h_surface(c, mm.in_bytes), *out = h_surface(c, mm.out_bytes);
	uint32_t in_ios = aneshare_surface_iosurface_id(in);
	h_mm_fill_run_check(p, &mm, in, out, 11);
	memset((char *)aneshare_surface_data(out), 0x3c, 32);

	h_daemon_crash(&D);
	h_daemon_restart(&D, true);

	aneshare_status *st = NULL;
	int r = aneshare_get_status(c, &st);
	cr_assert_eq(r, 0, "status after restart: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	aneshare_status_free(st);
	cr_assert_geq(aneshare_reconnect_count(c), 1);
	cr_assert_neq(aneshare_surface_id(in), 0, "the surface was lost at the reconnect");
	cr_assert_eq(aneshare_surface_iosurface_id(in), in_ios, "the IOSurface changed");
	/* the same memory: what was there before the crash is still there */
	cr_assert_eq(((unsigned char *)aneshare_surface_data(out))[31], 0x3c);
	h_wait_counts(c, 2, 1);
	h_mm_fill_run_check(p, &mm, in, out, 12);

	cr_assert_eq(aneshare_surface_release(in), 0);
	cr_assert_eq(aneshare_surface_release(out), 0);
	aneshare_program_release(p);
	aneshare_disconnect(c);
}

/* ---- layout: aligned as IOSurfaceAlignProperty says, ANE-sized ------------------------------ */

/* A symbol of the fake library (already loaded by the anes_shm code). */
static void *fake_sym(const char *name)
{
	void *lib = dlopen(getenv("FAKE_IOSURFACE_LIB"), RTLD_NOW | RTLD_LOCAL);
	cr_assert_not_null(lib, "%s", dlerror());
	void *p = dlsym(lib, name);
	cr_assert_not_null(p, "%s", name);
	return p;
}

static void last_create(int64_t out[4])
{
	void (*fn)(int64_t *);
	void *p = fake_sym("fake_iosurface_last_create");
	memcpy(&fn, &p, sizeof fn);
	fn(out);
}

/* Bytes per row and alloc size go through IOSurfaceAlignProperty (the fake:
 * rows to 64 bytes, allocations to 16 KiB pages), the width is at least the
 * ANE's 49,152 bytes, and the surface's alloc size is whole pages. */
Test(iosurface, created_aligned_and_ane_sized, .init = setup, .fini = teardown)
{
	const anes_shm_ops *so = anes_shm_default();
	static const struct {
		uint64_t size;
		int64_t width, bpr, alloc;
	} cases[] = {
		{ 1, 49152, 49152, 49152 },
		{ 5000, 49152, 49152, 49152 },
		{ 49153, 49153, 49216, 65536 },
		{ 100000, 100000, 100032, 114688 },
		{ 131072, 131072, 131072, 131072 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		anes_shm *h = NULL;
		cr_assert_eq(so->create(cases[i].size, &h), 0);
		int64_t got[4];
		last_create(got);
		cr_assert_eq(got[0], cases[i].width, "size %llu: width %lld", (unsigned long long)cases[i].size,
		             (long long)got[0]);
		cr_assert_eq(got[1], cases[i].bpr, "size %llu: bytes per row %lld",
		             (unsigned long long)cases[i].size, (long long)got[1]);
		cr_assert_eq(got[2], cases[i].alloc, "size %llu: alloc size %lld",
		             (unsigned long long)cases[i].size, (long long)got[2]);
		cr_assert_eq(got[3], cases[i].alloc);
		cr_assert_eq(h->size, cases[i].size, "usable size");
		so->release(h);
	}

	/* the daemon's surfaces: the same layout, seen through a lookup */
	aneshare_conn *c = h_connect(&D, "ios-aligned");
	aneshare_surface *s = h_surface(c, 100000);
	cr_assert_eq(aneshare_surface_size(s), 100000);
	anes_shm *mine;
	cr_assert_eq(so->lookup(aneshare_surface_iosurface_id(s), &mine), 0);
	cr_assert_eq(mine->size, 114688, "alloc size %llu", (unsigned long long)mine->size);
	so->release(mine);
	cr_assert_eq(aneshare_surface_release(s), 0);
	aneshare_disconnect(c);
}

/* An IOSurface made without kIOSurfaceIsGlobal cannot be looked up by
 * another process (IOSurfaceRef.h): the daemon's import fails, and its
 * error says why. */
Test(iosurface, import_needs_kIOSurfaceIsGlobal, .init = setup, .fini = teardown)
{
	typedef void *(*dict_new_fn)(const void *, long, const void *, const void *);
	typedef void (*dict_set_fn)(void *, const void *, const void *);
	typedef const void *(*num_fn)(const void *, long, const void *);
	typedef const void *(*create_fn)(const void *);
	typedef uint32_t (*id_fn)(const void *);
	typedef void (*release_fn)(const void *);
	dict_new_fn dict_new;
	dict_set_fn dict_set;
	num_fn number;
	create_fn create;
	id_fn get_id;
	release_fn release;
	void *p;
	p = fake_sym("CFDictionaryCreateMutable"); memcpy(&dict_new, &p, sizeof p);
	p = fake_sym("CFDictionarySetValue"); memcpy(&dict_set, &p, sizeof p);
	p = fake_sym("CFNumberCreate"); memcpy(&number, &p, sizeof p);
	p = fake_sym("IOSurfaceCreate"); memcpy(&create, &p, sizeof p);
	p = fake_sym("IOSurfaceGetID"); memcpy(&get_id, &p, sizeof p);
	p = fake_sym("CFRelease"); memcpy(&release, &p, sizeof p);

	int64_t n = 65536, one = 1, zero = 0;
	void *d = dict_new(NULL, 0, fake_sym("kCFTypeDictionaryKeyCallBacks"),
	                   fake_sym("kCFTypeDictionaryValueCallBacks"));
	const void *num_n = number(NULL, 4, &n), *num_1 = number(NULL, 4, &one), *num_0 = number(NULL, 4, &zero);
	dict_set(d, *(const void **)fake_sym("kIOSurfaceWidth"), num_n);
	dict_set(d, *(const void **)fake_sym("kIOSurfaceHeight"), num_1);
	dict_set(d, *(const void **)fake_sym("kIOSurfaceBytesPerElement"), num_1);
	dict_set(d, *(const void **)fake_sym("kIOSurfaceBytesPerRow"), num_n);
	dict_set(d, *(const void **)fake_sym("kIOSurfaceAllocSize"), num_n);
	dict_set(d, *(const void **)fake_sym("kIOSurfacePixelFormat"), num_0);
	const void *local = create(d);   /* no kIOSurfaceIsGlobal */
	cr_assert_not_null(local);
	uint32_t id = get_id(local);
	release(num_n);
	release(num_1);
	release(num_0);
	release(d);

	/* this process sees it */
	anes_shm *mine;
	cr_assert_eq(anes_shm_default()->lookup(id, &mine), 0);
	anes_shm_default()->release(mine);
	/* the daemon does not */
	aneshare_conn *c = h_connect(&D, "ios-local");
	aneshare_surface *imp = NULL;
	int r = aneshare_surface_import_iosurface(c, id, &imp);
	cr_assert_eq(r, -ANESHARE_ENO_SUCH_SURFACE, "%s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_null(imp);
	cr_assert(strstr(aneshare_last_error(c), "kIOSurfaceIsGlobal"), "%s", aneshare_last_error(c));
	int fd = h_raw_open(D.sock);
	cr_assert_eq(import_id(fd, 2, id), ANES_WERR_NO_SUCH_SURFACE);
	close(fd);
	release(local);
	aneshare_disconnect(c);
}

/* ---- with the backend in a device worker (docs/worker.md) --------------------------------- */

/* The worker's pid and restart count, from status (its "worker" map). */
typedef struct wpid {
	int64_t pid;
	uint64_t restarts;
	bool has_copies;        /* status has "ane_copies" */
	uint64_t copies;
} wpid;

static uint64_t kv_u64(const msgpack_object *m, const char *key)
{
	for (uint32_t i = 0; i < m->via.map.size; i++) {
		const msgpack_object_kv *kv = &m->via.map.ptr[i];
		if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
		    !memcmp(kv->key.via.str.ptr, key, kv->key.via.str.size))
			return kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER ? kv->val.via.u64 : 0;
	}
	return 0;
}

static void wpid_cb(const msgpack_object *res, void *ud)
{
	wpid *w = ud;
	for (uint32_t i = 0; i < res->via.map.size; i++) {
		const msgpack_object_kv *kv = &res->via.map.ptr[i];
		if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 10 &&
		    !memcmp(kv->key.via.str.ptr, "ane_copies", 10) &&
		    kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
			w->has_copies = true;
			w->copies = kv->val.via.u64;
		}
		if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 6 &&
		    !memcmp(kv->key.via.str.ptr, "worker", 6) && kv->val.type == MSGPACK_OBJECT_MAP) {
			w->pid = (int64_t)kv_u64(&kv->val, "pid");
			w->restarts = kv_u64(&kv->val, "restarts");
		}
	}
}

static wpid worker_pid(void)
{
	wpid w = { 0 };
	int fd = h_raw_open(D.sock);
	static const uint8_t empty_map = 0x80;
	cr_assert_eq(h_raw_request(fd, 9, "status", &empty_map, 1, NULL, 0), 0);
	cr_assert_eq(h_raw_response_cb(fd, 9, 5000, wpid_cb, &w), 0);
	close(fd);
	return w;
}

static void setup_worker(void)
{
	h_fake_iosurface_env(fake_dir, sizeof fake_dir);
	const char *args[] = { "--backend", "cpu", "--worker", NULL };
	h_daemon_start_args(&D, args);
}

/* IOSurfaces have no fd: the worker gets each one's ID (SURFACE_ADD_ID),
 * looks it up through the same (fake) IOSurface backend, and drops its
 * reference at SURFACE_DROP. */
Test(iosurface, worker_runs_on_iosurfaces, .init = setup_worker, .fini = teardown)
{
	aneshare_conn *c = h_connect(&D, "ios-worker");
	wpid w0 = worker_pid();
	cr_assert_gt(w0.pid, 0, "no device worker");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in = h_surface(c, mm.in_bytes), *out = h_surface(c, mm.out_bytes);
	uint32_t in_id = aneshare_surface_iosurface_id(in), out_id = aneshare_surface_iosurface_id(out);
	cr_assert_neq(in_id, 0);
	cr_assert_neq(out_id, 0);
	for (uint64_t seed = 1; seed <= 3; seed++)
		h_mm_fill_run_check(p, &mm, in, out, seed);

	/* an imported IOSurface of this process's own, through the worker too */
	const anes_shm_ops *so = anes_shm_default();
	anes_shm *mine;
	cr_assert_eq(so->create(mm.in_bytes, &mine), 0);
	aneshare_surface *imp = NULL;
	int r = aneshare_surface_import_iosurface(c, mine->id, &imp);
	cr_assert_eq(r, 0, "import: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	h_mm_fill_run_check(p, &mm, imp, out, 4);
	cr_assert_eq(memcmp(mine->base, aneshare_surface_data(imp), mm.in_bytes), 0);
	uint32_t mine_id = mine->id;
	cr_assert_eq(aneshare_surface_release(imp), 0);
	h_wait_counts(c, 2, 1);
	so->release(mine);
	wait_freed(mine_id);   /* the daemon's and the worker's references are gone */

	/* release: the daemon and the worker both drop theirs */
	cr_assert_eq(aneshare_surface_release(in), 0);
	wait_freed(in_id);
	cr_assert(h_fake_iosurface_exists(fake_dir, out_id));
	in = h_surface(c, mm.in_bytes);
	in_id = aneshare_surface_iosurface_id(in);
	h_mm_fill_run_check(p, &mm, in, out, 5);
	wpid w1 = worker_pid();
	cr_assert_eq(w1.pid, w0.pid, "the worker was restarted");
	/* the CPU backend copies nothing (it computes in place) */
	cr_assert(w1.has_copies && w1.copies == 0, "status ane_copies %d %llu", w1.has_copies,
	          (unsigned long long)w1.copies);

	cr_assert_eq(aneshare_surface_release(in), 0);
	cr_assert_eq(aneshare_surface_release(out), 0);
	aneshare_program_release(p);
	h_wait_counts(c, 0, 0);
	wait_freed(in_id);
	wait_freed(out_id);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* A new worker gets the live IOSurfaces again, by ID. */
Test(iosurface, worker_restart_reshares_by_id, .init = setup_worker, .fini = teardown)
{
	aneshare_conn *c = h_connect(&D, "ios-worker-kill");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in = h_surface(c, mm.in_bytes), *out = h_surface(c, mm.out_bytes);
	h_mm_fill_run_check(p, &mm, in, out, 21);
	wpid w0 = worker_pid();
	cr_assert_gt(w0.pid, 0);

	cr_assert_eq(kill((pid_t)w0.pid, SIGKILL), 0);
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	wpid w1;
	for (;;) {
		w1 = worker_pid();
		if (w1.restarts >= 1 && w1.pid > 0 && w1.pid != w0.pid)
			break;
		cr_assert(tu_now_ms() < deadline, "no new worker");
		tu_pause_ms(10);
	}
	for (uint64_t seed = 22; seed <= 24; seed++)
		h_mm_fill_run_check(p, &mm, in, out, seed);
	/* a surface first used after the restart */
	aneshare_surface *out2 = h_surface(c, mm.out_bytes);
	h_mm_fill_run_check(p, &mm, in, out2, 25);
	cr_assert_eq(worker_pid().pid, w1.pid);

	/* (the killed worker's references stay in the fake: it does not
	 * model the kernel dropping a dead task's references) */
	cr_assert_eq(aneshare_surface_release(in), 0);
	cr_assert_eq(aneshare_surface_release(out), 0);
	cr_assert_eq(aneshare_surface_release(out2), 0);
	aneshare_program_release(p);
	h_wait_counts(c, 0, 0);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- without the hooks: Linux as it is --------------------------------------------------- */

/* A build without the test hooks loads nothing named by the environment. */
Test(iosurface, hooks_compiled_out_ignore_the_environment)
{
#if ANES_TEST_HOOKS
	cr_skip_test("built with -Dtest_hooks=true: this checks a build without them");
#elif defined(__APPLE__)
	cr_skip_test("on macOS the real IOSurface.framework is the default: nothing tells it from the fake");
#endif
	const char *lib = getenv("FAKE_IOSURFACE_LIB");
	cr_assert(lib && *lib, "FAKE_IOSURFACE_LIB is not set (run through meson test)");
	setenv("ANESHARE_SURFACES", "iosurface", 1);
	setenv("ANESHARE_IOSURFACE_LIB", lib, 1);
	cr_assert_str_eq(anes_shm_default()->name, "memfd");
	anes_shm *h = NULL;
	cr_assert_eq(anes_shm_iosurface_ops()->create(4096, &h), -ENOTSUP,
	             "the IOSurface backend loaded %s", lib);
}

Test(iosurface, linux_default_is_memfd)
{
	unsetenv("ANESHARE_SURFACES");
	unsetenv("ANESHARE_IOSURFACE_LIB");
	const anes_shm_ops *so = anes_shm_default();
	cr_assert_str_eq(so->name, "memfd");
	cr_assert(!so->by_id);
	anes_shm *h = NULL;
	cr_assert_eq(so->create(8192, &h), 0);
	cr_assert_eq(h->size, 8192);
	memset(h->base, 1, 8192);
	cr_assert_eq(so->lookup(1, &h), -ENOTSUP);
	so->release(h);
	/* no IOSurface.framework on Linux: the IOSurface backend says so */
	const anes_shm_ops *io = anes_shm_iosurface_ops();
	cr_assert(io->by_id);
	cr_assert_eq(io->create(4096, &h), -ENOTSUP);
	cr_assert_eq(io->lookup(1, &h), -ENOTSUP);
}

Test(iosurface, memfd_daemon_refuses_iosurface_import)
{
	unsetenv("ANESHARE_SURFACES");
	unsetenv("ANESHARE_IOSURFACE_LIB");
	h_daemon_start(&D);
	int fd = h_raw_open(D.sock);
	cr_assert_eq(import_id(fd, 2, 1), ANES_WERR_INVALID_PARAMS);
	close(fd);
	aneshare_conn *c = h_connect(&D, "memfd");
	aneshare_surface *s = h_surface(c, 4096);
	cr_assert_eq(aneshare_surface_iosurface_id(s), 0);
	aneshare_surface *t = NULL;
	cr_assert_eq(aneshare_surface_import_iosurface(c, 1, &t), -ENOTSUP);
	aneshare_surface_release(s);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* libaneshare's token import where surfaces are IOSurfaces (macOS): the
 * daemon names the exporter's IOSurface by ID, and the library looks it up
 * as for surface.create; a read-only import stays a refused run output. */
Test(iosurface, library_imports_a_token_by_iosurface_id, .init = setup, .fini = teardown)
{
	aneshare_conn *p = h_connect(&D, "exporter"), *q = h_connect(&D, "importer");
	aneshare_surface *s = h_surface(p, 4096);
	uint32_t ios = aneshare_surface_iosurface_id(s);
	cr_assert_neq(ios, 0);
	memset(aneshare_surface_data(s), 0x5c, 4096);
	aneshare_token t;
	aneshare_export_opts o = { .read_only = true };
	cr_assert_eq(aneshare_surface_export(s, &o, &t, NULL), 0, "%s", aneshare_last_error(p));
	aneshare_surface *r = NULL;
	cr_assert_eq(aneshare_surface_import_token(q, t.text, &r), 0, "%s", aneshare_last_error(q));
	cr_assert_eq(aneshare_surface_iosurface_id(r), ios, "the same IOSurface");
	cr_assert(aneshare_surface_read_only(r));
	cr_assert_geq(aneshare_surface_size(r), 4096);
	cr_assert_neq(aneshare_surface_id(r), 0);
	cr_assert_eq(((uint8_t *)aneshare_surface_data(r))[4095], 0x5c, "the exporter's bytes");
	((uint8_t *)aneshare_surface_data(s))[0] = 0x17;
	cr_assert_eq(((uint8_t *)aneshare_surface_data(r))[0], 0x17, "one memory");
	aneshare_program *prog = NULL;
	cr_assert_eq(aneshare_program_compile(q, "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, 1, 1, 16]> x) {\n"
	                                          "        tensor<fp16, [1, 1, 1, 16]> y = relu(x = x)[name = string(\"y\")];\n"
	                                          "    } -> (y);\n}\n", NULL, 0, &prog, NULL), 0,
	             "%s", aneshare_last_error(q));
	aneshare_surface *in = h_surface(q, 4096);
	cr_assert_eq(aneshare_run(prog, 0, &in, 1, &r, 1), -ANESHARE_EINVALID_PARAMS);
	cr_assert_eq(((uint8_t *)aneshare_surface_data(s))[0], 0x17, "not written");
	aneshare_disconnect(p);
	cr_assert_eq(((uint8_t *)aneshare_surface_data(r))[4095], 0x5c, "the importer's handle outlives the exporter");
	cr_assert_eq(aneshare_run(prog, 0, &r, 1, &in, 1), 0, "%s", aneshare_last_error(q));
	aneshare_disconnect(q);
}

static void setup_small(void)
{
	h_fake_iosurface_env(fake_dir, sizeof fake_dir);
	const char *args[] = { "--max-surface-bytes", "64K", "--max-surfaces", "1", NULL };
	h_daemon_start_args(&D, args);
}

/* An IOSurface imported by ID is under the surface limits as a created one:
 * one larger than max_surface_bytes is refused naming both sizes, one over
 * the connection's count too; the daemon keeps no reference to either (the
 * fake frees them once this process lets go), and the connection goes on. */
Test(iosurface, import_by_id_is_under_the_surface_limits, .init = setup_small, .fini = teardown)
{
	const anes_shm_ops *so = anes_shm_default();
	anes_shm *big, *small1, *small2;
	cr_assert_eq(so->create(128 * 1024, &big), 0);
	cr_assert_eq(so->create(4096, &small1), 0);
	cr_assert_eq(so->create(4096, &small2), 0);
	int fd = h_raw_open(D.sock);
	int code = import_id(fd, 2, big->id);
	cr_assert_eq(code, ANES_WERR_LIMIT, "an IOSurface over max_surface_bytes: %d", code);
	aneshare_conn *c = h_connect(&D, "ios-limits");
	aneshare_surface *s1 = NULL, *s2 = NULL;
	int r = aneshare_surface_import_iosurface(c, big->id, &s1);
	cr_assert_eq(r, -ANESHARE_ELIMIT, "%s", aneshare_strerror(r));
	cr_assert(strstr(aneshare_last_error(c), "size 131072 is over 65536"), "%s", aneshare_last_error(c));
	cr_assert_eq(aneshare_surface_import_iosurface(c, small1->id, &s1), 0, "%s", aneshare_last_error(c));
	r = aneshare_surface_import_iosurface(c, small2->id, &s2);
	cr_assert_eq(r, -ANESHARE_ELIMIT, "over max_surfaces: %s (%s)", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_null(s2);
	cr_assert_eq(aneshare_surface_release(s1), 0);
	cr_assert_eq(aneshare_surface_import_iosurface(c, small2->id, &s2), 0, "room again: %s",
	             aneshare_last_error(c));
	cr_assert_eq(aneshare_surface_release(s2), 0);
	h_wait_counts(c, 0, 0);
	uint32_t ids[3] = { big->id, small1->id, small2->id };
	so->release(big);
	so->release(small1);
	so->release(small2);
	for (int i = 0; i < 3; i++)
		wait_freed(ids[i]);
	close(fd);
	aneshare_disconnect(c);
}
