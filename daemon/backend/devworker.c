/* SPDX-License-Identifier: MIT */
/*
 * The device worker process (docs/worker.md) and the private protocol's
 * message I/O, shared with the proxy (wproxy.c).
 *
 * The worker's main thread reads messages in order: surface and program
 * bookkeeping happens there, compiles and runs go to a small thread pool
 * (the daemon's generic one, tpool.h) and are answered from it (replies may come in any order; the daemon
 * matches them by ID).  The daemon never drops a surface or frees a
 * program while a run that uses it is in flight, so the tables need no
 * reference counts.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "anes_proto.h"   /* anes_recvmsg_cloexec */
#include "anes_shm.h"
#include "devworker.h"
#include "tpool.h"
#include "util.h"

/* ---- messages ------------------------------------------------------------ */

int anes_wmsg_send_fds(int fd, uint32_t type, uint64_t id, const struct iovec *iov, int niov,
                       const int *fds, unsigned nfds)
{
	struct iovec v[8];
	anes_wmsg_hdr h = { .type = type, .id = id };
	size_t total = 0;
	int n = 0;

	if (niov > 7 || nfds > ANES_WMSG_MAX_FDS)
		return -EINVAL;
	v[n++] = (struct iovec){ &h, sizeof(h) };
	for (int i = 0; i < niov; i++) {
		if (iov[i].iov_len == 0)
			continue;
		v[n++] = iov[i];
		total += iov[i].iov_len;
	}
	if (total > ANES_WMSG_MAX)
		return -EMSGSIZE;
	h.len = (uint32_t)total;

	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(ANES_WMSG_MAX_FDS * sizeof(int))];
	} cm;
	struct msghdr mh = { .msg_iov = v, .msg_iovlen = (size_t)n };
	if (nfds > 0) {
		memset(&cm, 0, sizeof(cm));
		mh.msg_control = cm.buf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	struct iovec *cur = v;
	int left = n;
	bool sent = false;
	while (left > 0) {
		mh.msg_iov = cur;
		mh.msg_iovlen = (size_t)left;
		ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return sent ? -EPIPE : -errno;
		}
		sent = true;
		mh.msg_control = NULL;   /* the fds went with the first byte */
		mh.msg_controllen = 0;
		size_t done = (size_t)w;
		while (left > 0 && done >= cur->iov_len) {
			done -= cur->iov_len;
			cur++;
			left--;
		}
		if (left > 0) {
			cur->iov_base = (char *)cur->iov_base + done;
			cur->iov_len -= done;
		}
	}
	return 0;
}

int anes_wmsg_send(int fd, uint32_t type, uint64_t id, const struct iovec *iov, int niov,
                   int pass_fd)
{
	return anes_wmsg_send_fds(fd, type, id, iov, niov, &pass_fd, pass_fd >= 0 ? 1 : 0);
}

/* Fds received so far for one message: kept up to ANES_WMSG_MAX_FDS, the
 * rest closed and the message marked as having lost some. */
typedef struct rfds {
	int fd[ANES_WMSG_MAX_FDS];
	unsigned n;
	bool lost;
} rfds;

static void rfds_close(rfds *f)
{
	for (unsigned i = 0; i < f->n; i++)
		close(f->fd[i]);
	f->n = 0;
}

/* len bytes; fds that come with them go to *f (NULL: none are expected, any
 * that come are closed and lost). */
static int read_full(int fd, void *buf, size_t len, rfds *f)
{
	char *p = buf;
	while (len > 0) {
		union {
			struct cmsghdr align;
			char buf[CMSG_SPACE(ANES_WMSG_MAX_FDS * sizeof(int))];
		} cm;
		struct iovec v = { p, len };
		struct msghdr mh = { .msg_iov = &v, .msg_iovlen = 1,
		                     .msg_control = cm.buf, .msg_controllen = sizeof(cm.buf) };
		ssize_t r = anes_recvmsg_cloexec(fd, &mh, 0);
		if (r < 0) {
			if (r == -EINTR)
				continue;
			return (int)r;
		}
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
				continue;
			size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < nfd; i++) {
				int x;
				memcpy(&x, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
				if (f && f->n < ANES_WMSG_MAX_FDS) {
					f->fd[f->n++] = x;
				} else {
					close(x);
					if (f)
						f->lost = true;
				}
			}
		}
		/* More fds than the buffer holds, or the fd table full: the
		 * kernel closed the ones it could not give us. */
		if ((mh.msg_flags & MSG_CTRUNC) && f)
			f->lost = true;
		if (r == 0)
			return -EPIPE;
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int anes_wmsg_recv_fds(int fd, anes_wmsg_hdr *ret_hdr, void **ret_payload,
                       int ret_fds[ANES_WMSG_MAX_FDS], unsigned *ret_nfds)
{
	anes_wmsg_hdr h;
	rfds f = { .n = 0 };
	void *payload = NULL;

	int r = read_full(fd, &h, sizeof(h), &f);
	if (r == -EPIPE && f.n == 0 && !f.lost)
		return -EPIPE;   /* (a partial header is also treated as EOF) */
	if (r < 0)
		goto fail;
	if (h.len > ANES_WMSG_MAX) {
		r = -EBADMSG;
		goto fail;
	}
	if (h.len > 0) {
		payload = malloc(h.len);
		if (!payload) {
			r = -ENOMEM;
			goto fail;
		}
		/* (fds ride with the first byte: any here are a broken stream) */
		rfds none = { .n = 0 };
		r = read_full(fd, payload, h.len, &none);
		rfds_close(&none);
		if (r == 0 && none.lost)
			r = -EBADMSG;
		if (r < 0)
			goto fail;
	}
	if (f.lost)
		rfds_close(&f);
	*ret_hdr = h;
	*ret_payload = payload;
	memcpy(ret_fds, f.fd, f.n * sizeof(int));
	*ret_nfds = f.n;
	return f.lost ? ANES_WMSG_FDS_LOST : 0;
fail:
	free(payload);
	rfds_close(&f);
	return r;
}

int anes_wmsg_recv(int fd, anes_wmsg_hdr *ret_hdr, void **ret_payload, int *ret_fd)
{
	anes_wmsg_hdr h;
	void *payload;
	int fds[ANES_WMSG_MAX_FDS];
	unsigned n;
	int r = anes_wmsg_recv_fds(fd, &h, &payload, fds, &n);
	if (r < 0)
		return r;
	if (r > 0 || n > 1) {
		for (unsigned i = 0; i < n; i++)
			close(fds[i]);
		free(payload);
		return -EBADMSG;
	}
	*ret_hdr = h;
	*ret_payload = payload;
	*ret_fd = n ? fds[0] : -1;
	return 0;
}

/* ---- the worker ------------------------------------------------------------ */

typedef struct wsurf {
	uint64_t key;
	void *map;
	uint64_t size;
	anes_shm *shm;      /* an IOSurface looked up by ID (SURFACE_ADD_ID), held
	                     * locked and mapped until SURFACE_DROP; NULL: map is
	                     * an mmap of the memfd */
} wsurf;

static void wsurf_unmap(wsurf *s)
{
	if (s->shm)
		s->shm->ops->release(s->shm);
	else
		munmap(s->map, (size_t)s->size);
}

/* A compile's weight files, mapped read-only for as long as its program
 * lives (the backend uses them in place: anes_weight.kept). */
typedef struct wmaps {
	void *map[ANES_WMSG_MAX_FDS];
	size_t len[ANES_WMSG_MAX_FDS];
	unsigned n;
} wmaps;

static void wmaps_free(wmaps *m)
{
	for (unsigned i = 0; i < m->n; i++)
		if (m->len[i])
			munmap(m->map[i], m->len[i]);
	m->n = 0;
}

typedef struct wprog {
	uint64_t id;
	anes_bprogram *prog;
	wmaps maps;
} wprog;

typedef struct worker worker;

/* A compile or a run, a task of the worker's thread pool (tpool.h). */
typedef struct wjob {
	anes_task task;
	worker *w;
	anes_wmsg_hdr h;
	void *payload;
	int fds[ANES_WMSG_MAX_FDS]; /* compile: its weight files (owned) */
	unsigned nfds;
	bool fds_lost;              /* compile: its files could not all be received */
	anes_bprogram *prog;        /* run */
	uint32_t fn, n;
	void *ptrs[3 * ANES_MAX_IO];                /* inputs, outputs, states */
	anes_surface_desc descs[3 * ANES_MAX_IO];   /* the same, for backends with run_surfaces */
} wjob;

struct worker {
	int fd;
	anes_backend *b;
	const char *fail_compile;   /* test hook: "func NAME<" that fails with -EIO */
	const char *hold_path;      /* test hook: compiles of "func held<" wait while it exists */
	anes_tpool *pool;           /* compiles and runs, first in first out */
	pthread_mutex_t m;          /* tables */
	pthread_mutex_t send_m;
	wsurf *surfs;
	size_t n_surfs, cap_surfs;
	wprog *progs;
	size_t n_progs, cap_progs;
};

static int grow(void **v, size_t *cap, size_t n, size_t elem)
{
	if (n < *cap)
		return 0;
	size_t nc = *cap ? 2 * *cap : 16;
	void *p = realloc(*v, nc * elem);
	if (!p)
		return -ENOMEM;
	*v = p;
	*cap = nc;
	return 0;
}

static wsurf *find_surf(worker *w, uint64_t key)
{
	for (size_t i = 0; i < w->n_surfs; i++)
		if (w->surfs[i].key == key)
			return &w->surfs[i];
	return NULL;
}

static wprog *find_prog(worker *w, uint64_t id)
{
	for (size_t i = 0; i < w->n_progs; i++)
		if (w->progs[i].id == id)
			return &w->progs[i];
	return NULL;
}

static void reply(worker *w, uint32_t type, uint64_t id, const struct iovec *iov, int niov)
{
	pthread_mutex_lock(&w->send_m);
	/* A failure means the daemon is gone: the main thread sees EOF. */
	(void)anes_wmsg_send(w->fd, type, id, iov, niov, -1);
	pthread_mutex_unlock(&w->send_m);
}

static void reply_rc(worker *w, uint32_t type, uint64_t id, int32_t rc, const char *err)
{
	uint32_t el = (uint32_t)strnlen(err, ANES_ERRMSG_MAX - 1);
	struct iovec v[3] = { { &rc, 4 }, { &el, 4 }, { (void *)err, el } };
	reply(w, type, id, v, 3);
}

typedef struct rd {
	const uint8_t *p;
	size_t left;
	bool bad;
} rd;

static const void *rd_take(rd *r, size_t n)
{
	if (r->bad || n > r->left) {
		r->bad = true;
		return NULL;
	}
	const void *p = r->p;
	r->p += n;
	r->left -= n;
	return p;
}

static uint32_t rd_u32(rd *r)
{
	uint32_t v = 0;
	const void *p = rd_take(r, 4);
	if (p)
		memcpy(&v, p, 4);
	return v;
}

static uint64_t rd_u64(rd *r)
{
	uint64_t v = 0;
	const void *p = rd_take(r, 8);
	if (p)
		memcpy(&v, p, 8);
	return v;
}

/* Map the compile's weight files read-only (each whole).  They are files
 * only the daemon and this process hold that cannot change (a client's
 * sealed memfd, or the daemon's own copy, docs/worker.md); on Linux the
 * seals are checked anyway, so a file that could shrink under the mapping
 * (SIGBUS) is refused. */
static int map_weight_files(wjob *j, wmaps *m, uint64_t sizes[ANES_WMSG_MAX_FDS], char *err,
                            size_t errlen)
{
	for (unsigned i = 0; i < j->nfds; i++) {
		struct stat st;
		if (fstat(j->fds[i], &st) < 0 || !S_ISREG(st.st_mode) || st.st_size < 0 ||
		    (uint64_t)st.st_size > SIZE_MAX) {
			snprintf(err, errlen, "device worker: weight file %u is not a regular file", i);
			return -EBADMSG;
		}
#if defined(__linux__) && defined(F_GET_SEALS)
		int seals = fcntl(j->fds[i], F_GET_SEALS);
		int need = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
		if (seals < 0 || (seals & need) != need) {
			snprintf(err, errlen, "device worker: weight file %u is not sealed", i);
			return -EBADMSG;
		}
#endif
		sizes[i] = (uint64_t)st.st_size;
		void *p = NULL;
		if (sizes[i]) {
			p = mmap(NULL, (size_t)sizes[i], PROT_READ, MAP_SHARED, j->fds[i], 0);
			if (p == MAP_FAILED) {
				snprintf(err, errlen, "device worker: mapping weight file %u: %s", i, strerror(errno));
				return -ENOMEM;
			}
		}
		m->map[m->n] = p;
		m->len[m->n++] = (size_t)sizes[i];
	}
	return 0;
}

/* Tensor i of fi: its inputs, then its outputs, then its states. */
static const anes_tensor_desc *fn_tensor(const anes_function_info *fi, uint32_t i)
{
	if (i < fi->n_inputs)
		return &fi->inputs[i];
	i -= fi->n_inputs;
	return i < fi->n_outputs ? &fi->outputs[i] : &fi->states[i - fi->n_outputs];
}

static void do_compile(worker *w, wjob *j)
{
	char err[ANES_ERRMSG_MAX] = "";
	rd r = { j->payload, j->h.len, false };
	uint32_t mil_len = rd_u32(&r), n = rd_u32(&r), nf = rd_u32(&r);
	const char *mil = rd_take(&r, mil_len);
	anes_weight *ws = NULL;
	anes_bprogram *prog = NULL;
	wmaps maps = { .n = 0 };
	uint64_t sizes[ANES_WMSG_MAX_FDS];
	int rc;

	if (j->fds_lost) {
		snprintf(err, sizeof err, "device worker: the compile's weight files could not be received "
		         "(its table of open files is full)");
		rc = -EMFILE;
		goto answer;
	}
	if (r.bad || n > ANES_WMSG_MAX_WEIGHTS || nf != j->nfds) {
		rc = -EBADMSG;
		goto answer;
	}
	rc = map_weight_files(j, &maps, sizes, err, sizeof err);
	if (rc < 0)
		goto answer;
	ws = n ? calloc(n, sizeof(*ws)) : NULL;
	if (n && !ws) {
		rc = -ENOMEM;
		goto answer;
	}
	for (uint32_t i = 0; i < n; i++) {
		uint32_t pl = rd_u32(&r), fi = rd_u32(&r);
		uint64_t off = rd_u64(&r), len = rd_u64(&r);
		ws[i].path = rd_take(&r, pl);   /* NUL included by the proxy */
		if (r.bad || pl == 0 || ws[i].path[pl - 1] != '\0' || fi >= nf || off > sizes[fi] ||
		    len > sizes[fi] - off) {
			rc = -EBADMSG;
			goto answer;
		}
		ws[i].data = (const uint8_t *)maps.map[fi] + off;
		ws[i].len = (size_t)len;
		ws[i].kept = true;   /* mapped until the program is freed */
		ws[i].has_fd = off == 0 && len == sizes[fi];
		ws[i].fd = ws[i].has_fd ? j->fds[fi] : -1;
	}
	if (r.bad || r.left) {
		rc = -EBADMSG;
		goto answer;
	}
	if (w->fail_compile && memmem(mil, mil_len, w->fail_compile, strlen(w->fail_compile))) {
		/* What the ANE backend answers when compileWithQoS: fails. */
		snprintf(err, sizeof err, "ANE compile failed: injected (--worker-fault compile_eio)");
		rc = -EIO;
		goto answer;
	}
	if (w->hold_path && memmem(mil, mil_len, "func held<", 10)) {
		/* --worker-fault compile_hold=PATH: a compile that takes as long
		 * as a test wants (docs/worker.md). */
		while (access(w->hold_path, F_OK) == 0)
			poll(NULL, 0, 10);
	}
	rc = w->b->ops->compile(w->b, mil, mil_len, ws, n, &prog, err, sizeof(err));
	if (rc == 0 && !prog)
		rc = -EIO;
	if (rc == 0) {
		pthread_mutex_lock(&w->m);
		rc = grow((void **)&w->progs, &w->cap_progs, w->n_progs, sizeof(*w->progs));
		if (rc == 0)
			w->progs[w->n_progs++] = (wprog){ j->h.id, prog, maps };
		pthread_mutex_unlock(&w->m);
		if (rc < 0)
			w->b->ops->program_free(w->b, prog);
	}
answer:
	free(ws);
	if (rc < 0)
		wmaps_free(&maps);
	/* the mappings stay; the files' fds are not needed any more */
	for (unsigned i = 0; i < j->nfds; i++)
		close(j->fds[i]);
	j->nfds = 0;
	if (rc < 0) {
		err[sizeof(err) - 1] = '\0';
		reply_rc(w, ANES_WM_COMPILED, j->h.id, rc, err);
		return;
	}
	/* i32 0, u32 0, u32 n_functions, then per function: u32 name_len, the
	 * name (no NUL), u32 n_in, u32 n_out, u32 n_states, and per input,
	 * output, then state: u32 name_len, the name, u32 dtype, u32 rank, u64
	 * shape[ANES_MAX_RANK], u64 bytes (docs/worker.md).  Names are at most
	 * ANES_NAME_MAX bytes. */
	size_t len = 12;
	for (uint32_t f = 0; f < prog->n_functions; f++) {
		const anes_function_info *fi = &prog->functions[f];
		len += 4 + strlen(fi->name) + 12;
		for (uint32_t i = 0; i < fi->n_inputs + fi->n_outputs + fi->n_states; i++)
			len += 4 + strlen(fn_tensor(fi, i)->name) + 8 + 8 * ANES_MAX_RANK + 8;
	}
	uint8_t *buf = calloc(1, len), *p = buf;
	if (!buf) {
		reply_rc(w, ANES_WM_COMPILED, j->h.id, -ENOMEM, "out of memory in the device worker");
		return;
	}
	p += 8;
	memcpy(p, &prog->n_functions, 4);
	p += 4;
	for (uint32_t f = 0; f < prog->n_functions; f++) {
		const anes_function_info *fi = &prog->functions[f];
		uint32_t nl = (uint32_t)strlen(fi->name);
		memcpy(p, &nl, 4);
		memcpy(p + 4, fi->name, nl);
		p += 4 + nl;
		memcpy(p, &fi->n_inputs, 4);
		memcpy(p + 4, &fi->n_outputs, 4);
		memcpy(p + 8, &fi->n_states, 4);
		p += 12;
		for (uint32_t i = 0; i < fi->n_inputs + fi->n_outputs + fi->n_states; i++) {
			const anes_tensor_desc *t = fn_tensor(fi, i);
			uint32_t tl = (uint32_t)strlen(t->name), dt = (uint32_t)t->dtype;
			memcpy(p, &tl, 4);
			memcpy(p + 4, t->name, tl);
			p += 4 + tl;
			memcpy(p, &dt, 4);
			memcpy(p + 4, &t->rank, 4);
			p += 8;
			memcpy(p, t->shape, 8 * ANES_MAX_RANK);
			p += 8 * ANES_MAX_RANK;
			memcpy(p, &t->bytes, 8);
			p += 8;
		}
	}
	struct iovec v = { buf, len };
	reply(w, ANES_WM_COMPILED, j->h.id, &v, 1);
	free(buf);
}

static void do_run(worker *w, wjob *j)
{
	char err[ANES_ERRMSG_MAX] = "";
	const anes_function_info *fi = &j->prog->functions[j->fn];
	int rc;
	if (w->b->ops->run_surfaces) {
		rc = w->b->ops->run_surfaces(w->b, j->prog, j->fn, j->descs, j->n, err, sizeof(err));
	} else if (fi->n_states > 0 && w->b->ops->run_states) {
		rc = w->b->ops->run_states(w->b, j->prog, j->fn, (const void *const *)j->ptrs,
		                           (void *const *)(j->ptrs + fi->n_inputs),
		                           (void *const *)(j->ptrs + fi->n_inputs + fi->n_outputs), err,
		                           sizeof(err));
	} else if (fi->n_states > 0) {
		snprintf(err, sizeof(err), "the %s backend does not run functions with states",
		         w->b->ops->name);
		rc = -ENOTSUP;
	} else {
		rc = w->b->ops->run(w->b, j->prog, j->fn, (const void *const *)j->ptrs,
		                    (void *const *)(j->ptrs + fi->n_inputs), err, sizeof(err));
	}
	err[sizeof(err) - 1] = '\0';
	/* i32 rc, u32 err_len, err, u64 the backend's copies so far (status) */
	int32_t rc32 = rc;
	uint32_t el = rc < 0 ? (uint32_t)strnlen(err, ANES_ERRMSG_MAX - 1) : 0;
	uint64_t copies = w->b->ops->copies ? w->b->ops->copies(w->b) : 0;
	struct iovec v[4] = { { &rc32, 4 }, { &el, 4 }, { err, el }, { &copies, 8 } };
	reply(w, ANES_WM_RAN, j->h.id, v, 4);
}

static void job_run(anes_task *t)
{
	wjob *j = ANES_CONTAINER_OF(t, wjob, task);
	if (j->h.type == ANES_WM_COMPILE)
		do_compile(j->w, j);
	else
		do_run(j->w, j);
}

/* Run or not (the daemon went away while it was queued: nobody waits for
 * it any more), the job is done. */
static void job_end(anes_task *t, bool ran)
{
	wjob *j = ANES_CONTAINER_OF(t, wjob, task);
	for (unsigned i = 0; i < j->nfds; i++)   /* (a compile dropped unrun) */
		close(j->fds[i]);
	free(j->payload);
	free(j);
}

/* On the main thread: resolve a run's program and surfaces (so that the
 * tables are only changed here and by compile completions). */
static int prepare_run(worker *w, wjob *j, char *err, size_t errlen)
{
	rd r = { j->payload, j->h.len, false };
	uint64_t pid = rd_u64(&r);
	j->fn = rd_u32(&r);
	j->n = rd_u32(&r);
	if (r.bad)
		return -EBADMSG;
	pthread_mutex_lock(&w->m);
	wprog *wp = find_prog(w, pid);
	int rc = 0;
	if (!wp) {
		snprintf(err, errlen, "device worker: no program %llu", (unsigned long long)pid);
		rc = -EIO;
		goto out;
	}
	j->prog = wp->prog;
	if (j->fn >= j->prog->n_functions) {
		rc = -EBADMSG;
		goto out;
	}
	const anes_function_info *fi = &j->prog->functions[j->fn];
	if (j->n != fi->n_inputs + fi->n_outputs + fi->n_states || j->n > 3 * ANES_MAX_IO) {
		rc = -EBADMSG;
		goto out;
	}
	for (uint32_t i = 0; i < j->n; i++) {
		uint64_t key = rd_u64(&r), off = rd_u64(&r);
		const anes_tensor_desc *t = fn_tensor(fi, i);
		if (r.bad) {   /* cut short: no key to look up */
			rc = -EBADMSG;
			goto out;
		}
		wsurf *s = find_surf(w, key);
		if (!s) {
			snprintf(err, errlen, "device worker: surface key %llu was not shared",
			         (unsigned long long)key);
			rc = -EIO;
			goto out;
		}
		if (off > s->size || t->bytes > s->size - off) {
			rc = -EBADMSG;
			goto out;
		}
		j->ptrs[i] = (char *)s->map + off;
		/* An IOSurface goes to the backend as itself (the ANE backend hands
		 * it to the device as it is, docs/ane.md) */
		j->descs[i] = (anes_surface_desc){ .ptr = j->ptrs[i], .fd = -1, .ios_id = s->shm ? s->shm->id : 0,
		                                   .ios = s->shm ? s->shm->ref : NULL, .key = key,
		                                   .offset = off, .size = s->size };
	}
out:
	pthread_mutex_unlock(&w->m);
	return rc;
}

static void surface_put(worker *w, wsurf ns)
{
	pthread_mutex_lock(&w->m);
	wsurf *old = find_surf(w, ns.key);
	if (old) {
		wsurf_unmap(old);
		*old = ns;
	} else if (grow((void **)&w->surfs, &w->cap_surfs, w->n_surfs, sizeof(*w->surfs)) == 0) {
		w->surfs[w->n_surfs++] = ns;
	} else {
		wsurf_unmap(&ns);
	}
	pthread_mutex_unlock(&w->m);
}

static void surface_add(worker *w, uint64_t key, const void *payload, uint32_t len, int fd)
{
	uint64_t size;
	if (fd < 0 || len != 8)
		return;
	memcpy(&size, payload, 8);
	void *map = size && size <= SIZE_MAX
	                    ? mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
	                    : MAP_FAILED;
	if (map == MAP_FAILED) {
		/* The runs that use it fail with "was not shared". */
		fprintf(stderr, "aneshared worker: cannot map surface %llu: %s\n", (unsigned long long)key,
		        size && size <= SIZE_MAX ? strerror(errno) : "no size");
		return;
	}
	surface_put(w, (wsurf){ key, map, size, NULL });
}

/* SURFACE_ADD_ID: look the IOSurface up through the same anes_shm backend
 * as the daemon (the environment is inherited, so tests get the fake), and
 * keep the reference, locked and mapped, until SURFACE_DROP. */
static void surface_add_id(worker *w, uint64_t key, const void *payload, uint32_t len, int fd)
{
	uint64_t size;
	uint32_t ios_id;
	if (fd >= 0 || len != 12)
		return;
	memcpy(&size, payload, 8);
	memcpy(&ios_id, (const char *)payload + 8, 4);
	anes_shm *shm = NULL;
	int r = ios_id && size ? anes_shm_iosurface_ops()->lookup(ios_id, &shm) : -EINVAL;
	if (r == 0 && shm->size < size) {
		shm->ops->release(shm);
		r = -EIO;
	}
	if (r < 0) {
		/* The runs that use it fail with "was not shared". */
		fprintf(stderr, "aneshared worker: cannot look up IOSurface %u (surface %llu): %s\n",
		        ios_id, (unsigned long long)key, strerror(-r));
		return;
	}
	surface_put(w, (wsurf){ key, shm->base, size, shm });
}

static void surface_drop(worker *w, uint64_t key)
{
	pthread_mutex_lock(&w->m);
	wsurf *s = find_surf(w, key);
	if (s) {
		wsurf_unmap(s);
		*s = w->surfs[--w->n_surfs];
	}
	pthread_mutex_unlock(&w->m);
}

static void program_free(worker *w, uint64_t id)
{
	pthread_mutex_lock(&w->m);
	wprog *p = find_prog(w, id);
	anes_bprogram *prog = NULL;
	wmaps maps = { .n = 0 };
	if (p) {
		prog = p->prog;
		maps = p->maps;
		*p = w->progs[--w->n_progs];
	}
	pthread_mutex_unlock(&w->m);
	if (prog)
		w->b->ops->program_free(w->b, prog);
	wmaps_free(&maps);   /* after the program, which used them in place */
}

int anes_devworker_serve(int fd, anes_backend *b, unsigned n_threads, const char *fault)
{
	worker w = { .fd = fd, .b = b };
	char fail_compile[ANES_NAME_MAX + 8];
	if (fault && !strncmp(fault, "compile_eio=", 12)) {
		snprintf(fail_compile, sizeof fail_compile, "func %s<", fault + 12);
		w.fail_compile = fail_compile;
	}
	if (fault && !strncmp(fault, "compile_hold=", 13))
		w.hold_path = fault + 13;
	if (fault && !strncmp(fault, "fd_room=", 8)) {
		/* --worker-fault fd_room=N: room for N more open files than the
		 * worker has at its start (a full fd table, docs/worker.md). */
		int probe = fcntl(0, F_DUPFD_CLOEXEC, 0);
		struct rlimit rl;
		if (probe >= 0 && getrlimit(RLIMIT_NOFILE, &rl) == 0) {
			close(probe);
			rl.rlim_cur = (rlim_t)probe + (rlim_t)strtoul(fault + 8, NULL, 10);
			(void)setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	int status = 0;

	/* The daemon decides when the worker ends (it closes the socket);
	 * terminal and service-manager stop signals are for the daemon. */
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	if (n_threads == 0)
		n_threads = 2;
	if (n_threads > 64)
		n_threads = 64;
	/* Its order is the daemon's: the daemon's scheduler decided it, and
	 * keeps no more calls in flight here than it has threads calling. */
	int r = anes_tpool_new(n_threads, 0, &w.pool);
	if (r < 0) {
		fprintf(stderr, "aneshared worker: cannot start threads: %s\n", strerror(-r));
		return 1;
	}
	pthread_mutex_init(&w.m, NULL);
	pthread_mutex_init(&w.send_m, NULL);

	uint32_t pid = (uint32_t)getpid();
	const char *name = b->ops->name ? b->ops->name : "unknown";
	struct iovec hv[2] = { { &pid, 4 }, { (void *)name, strlen(name) } };
	if (anes_wmsg_send(fd, ANES_WM_HELLO, 0, hv, 2, -1) < 0)
		status = 1;

	while (status == 0) {
		anes_wmsg_hdr h;
		void *payload;
		int fds[ANES_WMSG_MAX_FDS];
		unsigned nfds;
		r = anes_wmsg_recv_fds(fd, &h, &payload, fds, &nfds);
		if (r == -EPIPE)
			break;
		if (r < 0) {
			fprintf(stderr, "aneshared worker: reading from the daemon: %s\n", strerror(-r));
			status = 1;
			break;
		}
		bool fds_lost = r == ANES_WMSG_FDS_LOST;
		/* a surface comes with exactly one fd (SURFACE_ADD) or none */
		int mfd = nfds == 1 && h.type != ANES_WM_COMPILE ? fds[0] : -1;
		if (h.type != ANES_WM_COMPILE && nfds > 1)
			fds_lost = true;
		switch (h.type) {
		case ANES_WM_SURFACE_ADD:
			surface_add(&w, h.id, payload, h.len, mfd);
			free(payload);
			break;
		case ANES_WM_SURFACE_ADD_ID:
			surface_add_id(&w, h.id, payload, h.len, mfd);
			free(payload);
			break;
		case ANES_WM_SURFACE_DROP:
			surface_drop(&w, h.id);
			free(payload);
			break;
		case ANES_WM_PROGRAM_FREE:
			program_free(&w, h.id);
			free(payload);
			break;
		case ANES_WM_COMPILE:
		case ANES_WM_RUN: {
			wjob *j = calloc(1, sizeof(*j));
			if (!j) {
				reply_rc(&w, h.type == ANES_WM_RUN ? ANES_WM_RAN : ANES_WM_COMPILED, h.id,
				         -ENOMEM, "out of memory in the device worker");
				free(payload);
				break;
			}
			j->w = &w;
			j->h = h;
			j->payload = payload;
			if (h.type == ANES_WM_COMPILE) {
				memcpy(j->fds, fds, nfds * sizeof(int));
				j->nfds = nfds;
				j->fds_lost = fds_lost;
				nfds = 0;   /* the job's now */
			}
			j->task.run = job_run;
			j->task.end = job_end;
			if (h.type == ANES_WM_RUN) {
				char err[256] = "";
				int rc = prepare_run(&w, j, err, sizeof(err));
				if (rc < 0) {
					reply_rc(&w, ANES_WM_RAN, h.id, rc, err);
					free(payload);
					free(j);
					break;
				}
			}
			anes_tpool_submit(w.pool, &j->task);
			break;
		}
		default:
			fprintf(stderr, "aneshared worker: unknown message %u\n", h.type);
			free(payload);
			status = 1;
			break;
		}
		for (unsigned i = 0; i < nfds; i++)
			close(fds[i]);
	}

	/* Nobody waits for queued work any more: drop it, finish what runs. */
	anes_tpool_stop(w.pool);
	anes_tpool_free(w.pool);
	for (size_t i = 0; i < w.n_progs; i++) {
		b->ops->program_free(b, w.progs[i].prog);
		wmaps_free(&w.progs[i].maps);
	}
	for (size_t i = 0; i < w.n_surfs; i++)
		wsurf_unmap(&w.surfs[i]);
	free(w.progs);
	free(w.surfs);
	pthread_mutex_destroy(&w.send_m);
	pthread_mutex_destroy(&w.m);
	return status;
}
