/* SPDX-License-Identifier: MIT */
/*
 * libaneshare: status, error names, the default socket path, fp16 helpers.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anes_fp16.h"
#include "anes_sockpath.h"
#include "internal.h"

/* ---- status ------------------------------------------------------------------- */

#define STATUS_MAX_PROGRAMS 65536
#define STATUS_MAX_PROCESSES 65536
#define STATUS_MAX_SHARED 65536      /* shared surfaces, and holders of one */

static int status_cb(aneshare_conn *c, const msgpack_object *res, int *fds, unsigned nfds,
                     void *ud)
{
	aneshare_status **ret = ud;
	const char *ver, *be;
	uint32_t ver_len, be_len, n;
	uint64_t uptime, clients, surfaces, bytes, runs, compiles, hits;
	const msgpack_object *items;
	if (anes_mp_str(res, "version", ANESC_MAX_STR, &ver, &ver_len) < 0 ||
	    anes_mp_str(res, "backend", ANESC_MAX_STR, &be, &be_len) < 0 ||
	    anes_mp_u64(res, "uptime_ms", UINT64_MAX, &uptime) < 0 ||
	    anes_mp_u64(res, "clients", UINT32_MAX, &clients) < 0 ||
	    anes_mp_u64(res, "surfaces", UINT32_MAX, &surfaces) < 0 ||
	    anes_mp_u64(res, "surface_bytes", UINT64_MAX, &bytes) < 0 ||
	    anes_mp_u64(res, "runs", UINT64_MAX, &runs) < 0 ||
	    anes_mp_u64(res, "compiles", UINT64_MAX, &compiles) < 0 ||
	    anes_mp_u64(res, "cache_hits", UINT64_MAX, &hits) < 0 ||
	    anes_mp_array(res, "programs", STATUS_MAX_PROGRAMS, &items, &n) < 0)
		goto bad;

	/* Optional: per client process, and the totals (absent from older daemons). */
	const msgpack_object *procs = NULL, *tots = NULL;
	uint32_t np = 0, nt = 0;
	uint64_t ptotal = 0;
	size_t strs = 0;
	if (anes_mp_get(res, "processes")) {
		if (anes_mp_array(res, "processes", STATUS_MAX_PROCESSES, &procs, &np) < 0 ||
		    anes_mp_u64(res, "processes_total", UINT32_MAX, &ptotal) < 0)
			goto bad;
		for (uint32_t i = 0; i < np; i++) {
			const char *nm;
			uint32_t nl;
			if (procs[i].type != MSGPACK_OBJECT_MAP ||
			    anes_mp_str(&procs[i], "name", ANESC_MAX_STR, &nm, &nl) < 0)
				goto bad;
			strs += nl + 1;
		}
	}
	if (anes_mp_get(res, "totals")) {
		if (anes_mp_array(res, "totals", 64, &tots, &nt) < 0)
			goto bad;
		for (uint32_t i = 0; i < nt; i++) {
			const char *nm;
			uint32_t nl;
			if (tots[i].type != MSGPACK_OBJECT_MAP ||
			    anes_mp_str(&tots[i], "resource", 64, &nm, &nl) < 0)
				goto bad;
			strs += nl + 1;
		}
	}

	/* Optional: surfaces shared between connections (absent from older daemons). */
	const msgpack_object *shared = NULL;
	uint32_t ns = 0;
	uint64_t stotal = 0;
	size_t nh_all = 0;
	if (anes_mp_get(res, "shared")) {
		if (anes_mp_array(res, "shared", STATUS_MAX_SHARED, &shared, &ns) < 0 ||
		    (anes_mp_get(res, "shared_total") &&
		     anes_mp_u64(res, "shared_total", UINT64_MAX, &stotal) < 0))
			goto bad;
		for (uint32_t i = 0; i < ns; i++) {
			const msgpack_object *hl;
			uint32_t nh;
			if (shared[i].type != MSGPACK_OBJECT_MAP ||
			    anes_mp_array(&shared[i], "holders", STATUS_MAX_SHARED, &hl, &nh) < 0)
				goto bad;
			for (uint32_t k = 0; k < nh; k++) {
				const char *nm;
				uint32_t nl;
				if (hl[k].type != MSGPACK_OBJECT_MAP ||
				    anes_mp_str(&hl[k], "name", ANESC_MAX_STR, &nm, &nl) < 0)
					goto bad;
				strs += nl + 1;
			}
			nh_all += nh;
		}
		if (stotal < ns)
			stotal = ns;
	}

	/* One block: the struct, the arrays, then the strings. */
	size_t size = sizeof(aneshare_status) + (size_t)n * sizeof(struct aneshare_status_program) +
	              (size_t)np * sizeof(struct aneshare_status_process) +
	              (size_t)nt * sizeof(struct aneshare_status_total) +
	              (size_t)ns * sizeof(struct aneshare_status_shared) +
	              nh_all * sizeof(struct aneshare_status_holder) +
	              ver_len + 1 + be_len + 1 + (size_t)n * 65 + strs;
	aneshare_status *st = calloc(1, size);
	if (!st)
		return anesc_fail(c, -ENOMEM, "out of memory");
	st->program_list = (struct aneshare_status_program *)(st + 1);
	st->process_list = (struct aneshare_status_process *)(st->program_list + n);
	st->total_list = (struct aneshare_status_total *)(st->process_list + np);
	st->shared_list = (struct aneshare_status_shared *)(st->total_list + nt);
	struct aneshare_status_holder *hp = (struct aneshare_status_holder *)(st->shared_list + ns);
	char *sp = (char *)(hp + nh_all);
	for (uint32_t i = 0; i < ns; i++) {
		struct aneshare_status_shared *sh = &st->shared_list[i];
		const msgpack_object *hl;
		uint32_t nh;
		(void)anes_mp_array(&shared[i], "holders", STATUS_MAX_SHARED, &hl, &nh);
		(void)anes_mp_u64(&shared[i], "key", UINT64_MAX, &sh->key);
		(void)anes_mp_u64(&shared[i], "size", UINT64_MAX, &sh->size);
		(void)anes_mp_u32(&shared[i], "tokens", &sh->tokens);
		(void)anes_mp_u32(&shared[i], "holders_total", &sh->holders_total);
		if (sh->holders_total < nh)
			sh->holders_total = nh;
		sh->n_holders = nh;
		sh->holder_list = hp;
		for (uint32_t k = 0; k < nh; k++, hp++) {
			const char *nm;
			uint32_t nl;
			(void)anes_mp_str(&hl[k], "name", ANESC_MAX_STR, &nm, &nl);
			memcpy(sp, nm, nl);
			sp[nl] = '\0';
			hp->name = sp;
			sp += nl + 1;
			(void)anes_mp_u64(&hl[k], "pid", UINT64_MAX, &hp->pid);
			(void)anes_mp_bool(&hl[k], "read_only", &hp->read_only);
		}
	}
	st->n_shared = ns;
	st->shared_total = stotal;
	for (uint32_t i = 0; i < np; i++) {
		struct aneshare_status_process *pr = &st->process_list[i];
		const char *nm;
		uint32_t nl, uid = 0, conns = 0;
		(void)anes_mp_str(&procs[i], "name", ANESC_MAX_STR, &nm, &nl);
		memcpy(sp, nm, nl);
		sp[nl] = '\0';
		pr->name = sp;
		sp += nl + 1;
		/* counters a daemon may not report stay 0 */
		(void)anes_mp_u64(&procs[i], "pid", UINT64_MAX, &pr->pid);
		(void)anes_mp_u32(&procs[i], "uid", &uid);
		(void)anes_mp_u32(&procs[i], "connections", &conns);
		pr->uid = uid;
		pr->connections = conns;
		(void)anes_mp_u64(&procs[i], "surfaces", UINT64_MAX, &pr->surfaces);
		(void)anes_mp_u64(&procs[i], "surface_bytes", UINT64_MAX, &pr->surface_bytes);
		(void)anes_mp_u64(&procs[i], "fds", UINT64_MAX, &pr->fds);
		(void)anes_mp_u64(&procs[i], "programs", UINT64_MAX, &pr->programs);
		(void)anes_mp_u64(&procs[i], "program_bytes", UINT64_MAX, &pr->program_bytes);
		(void)anes_mp_u64(&procs[i], "jobs", UINT64_MAX, &pr->jobs);
		(void)anes_mp_u64(&procs[i], "unsent_bytes", UINT64_MAX, &pr->unsent_bytes);
		(void)anes_mp_u64(&procs[i], "input_bytes", UINT64_MAX, &pr->input_bytes);
		(void)anes_mp_u64(&procs[i], "runs", UINT64_MAX, &pr->runs);
		(void)anes_mp_u64(&procs[i], "queued", UINT64_MAX, &pr->queued);
		(void)anes_mp_u64(&procs[i], "device_us", UINT64_MAX, &pr->device_us);
		(void)anes_mp_u64(&procs[i], "device_share", 100, &pr->device_share);
		(void)anes_mp_u64(&procs[i], "events", UINT64_MAX, &pr->events);
		static const char *const classes[] = { "interactive", "default", "background" };
		const char *pn;
		uint32_t pl;
		pr->priority = "";
		if (anes_mp_str(&procs[i], "priority", 16, &pn, &pl) == 0)
			for (size_t k = 0; k < sizeof classes / sizeof classes[0]; k++)
				if (strlen(classes[k]) == pl && !memcmp(classes[k], pn, pl))
					pr->priority = classes[k];
	}
	for (uint32_t i = 0; i < nt; i++) {
		struct aneshare_status_total *to = &st->total_list[i];
		const char *nm;
		uint32_t nl;
		(void)anes_mp_str(&tots[i], "resource", 64, &nm, &nl);
		memcpy(sp, nm, nl);
		sp[nl] = '\0';
		to->resource = sp;
		sp += nl + 1;
		(void)anes_mp_u64(&tots[i], "used", UINT64_MAX, &to->used);
		(void)anes_mp_u64(&tots[i], "limit", UINT64_MAX, &to->limit);
		(void)anes_mp_u64(&tots[i], "client_limit", UINT64_MAX, &to->client_limit);
		(void)anes_mp_u64(&tots[i], "uid_limit", UINT64_MAX, &to->uid_limit);
	}
	st->n_processes = np;
	st->processes_total = (uint32_t)ptotal;
	st->n_totals = nt;
	for (uint32_t i = 0; i < n; i++) {
		const char *key;
		uint32_t key_len, refs;
		if (items[i].type != MSGPACK_OBJECT_MAP ||
		    anes_mp_str(&items[i], "key", 64, &key, &key_len) < 0 ||
		    anes_mp_u32(&items[i], "refs", &refs) < 0) {
			free(st);
			goto bad;
		}
		memcpy(sp, key, key_len);
		sp[key_len] = '\0';
		st->program_list[i].key = sp;
		st->program_list[i].refs = refs;
		sp += 65;
	}
	memcpy(sp, ver, ver_len);
	sp[ver_len] = '\0';
	st->server_version = sp;
	sp += ver_len + 1;
	memcpy(sp, be, be_len);
	sp[be_len] = '\0';
	st->backend = sp;
	st->uptime_ms = uptime;
	st->clients = (uint32_t)clients;
	st->programs = n;
	st->surfaces = (uint32_t)surfaces;
	st->surface_bytes = bytes;
	st->runs = runs;
	st->compiles = compiles;
	st->cache_hits = hits;
	/* optional: 0 from daemons that do not report them */
	uint64_t lane_runs = 0, spins = 0, spin_hits = 0, spin_gaps = 0, spin_skips = 0;
	(void)anes_mp_u64(res, "lane_runs", UINT64_MAX, &lane_runs);
	(void)anes_mp_u64(res, "lane_spins", UINT64_MAX, &spins);
	(void)anes_mp_u64(res, "lane_spin_hits", UINT64_MAX, &spin_hits);
	(void)anes_mp_u64(res, "lane_spin_gaps", UINT64_MAX, &spin_gaps);
	(void)anes_mp_u64(res, "lane_spin_skips", UINT64_MAX, &spin_skips);
	(void)anes_mp_u64(res, "lane_slice_ends", UINT64_MAX, &st->lane_slice_ends);
	(void)anes_mp_u64(res, "events", UINT64_MAX, &st->events);
	(void)anes_mp_u64(res, "event_runs", UINT64_MAX, &st->event_runs);
	st->lane_runs = lane_runs;
	st->lane_spins = spins;
	st->lane_spin_hits = spin_hits;
	st->lane_spin_gaps = spin_gaps;
	st->lane_spin_skips = spin_skips;
	*ret = st;
	return 0;
bad:
	return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed status from the daemon");
}

ANESHARE_API int aneshare_get_status(aneshare_conn *c, aneshare_status **ret)
{
	if (!c || !ret)
		return -EINVAL;
	aneshare_status *st = NULL;
	int r = anesc_request(c, &(anesc_req){ .method = "status", .fd = -1, .fn = status_cb,
	                                       .fn_ud = &st, .flags = ANESC_IDEMPOTENT });
	if (r < 0)
		return r;
	*ret = st;
	return 0;
}

ANESHARE_API void aneshare_status_free(aneshare_status *st)
{
	free(st);
}

/* ---- errors ------------------------------------------------------------------- */

ANESHARE_API const char *aneshare_strerror(int err)
{
	static const char *const names[] = {
#define ANES_X_(c, N, s) [c] = s,
		ANES_WIRE_ERRORS(ANES_X_)
#undef ANES_X_
	};
	if (err == 0)
		return "success";
	if (err > 0)
		return "unknown error";
	if (err == -ANESHARE_EDISCONNECTED)
		return "disconnected";
	if (err <= -ANESHARE_EBASE) {
		long code = -(long)err - ANESHARE_EBASE;
		if (code > 0 && code < (long)(sizeof names / sizeof names[0]) && names[code])
			return names[code];
		return "unknown daemon error";
	}
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
	const char *s = strerrordesc_np(-err);   /* static, unlike strerror's */
#else
	const char *s = strerror(-err);
#endif
	return s ? s : "unknown error";
}

/* ---- default socket path --------------------------------------------------------- */

ANESHARE_API int aneshare_default_socket_path(char *buf, size_t buf_len)
{
	if (!buf)
		return -EINVAL;
	char *p = NULL;
	int r = anes_socket_path_default(&p);
	if (r < 0)
		return r;
	size_t n = strlen(p);
	if (n >= buf_len || n > INT32_MAX) {
		free(p);
		return -ENAMETOOLONG;
	}
	memcpy(buf, p, n + 1);
	free(p);
	return (int)n;
}

/* ---- fp16 ------------------------------------------------------------------------- */

ANESHARE_API void aneshare_f32_to_f16(uint16_t *dst, const float *src, size_t n)
{
	anes_f32_to_f16_n(dst, src, n);
}

ANESHARE_API void aneshare_f16_to_f32(float *dst, const uint16_t *src, size_t n)
{
	anes_f16_to_f32_n(dst, src, n);
}
