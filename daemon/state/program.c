/* SPDX-License-Identifier: MIT */
/*
 * The program cache.  Programs are keyed by the SHA-256 of their MIL and
 * weights (docs/protocol.md, program.compile) and shared by all connections.
 * An entry is COMPILING while a worker compiles it (later requests for the
 * same key wait on it) and READY afterwards; it is freed when no handle and
 * no run (nor the compile job) refers to it.
 */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#ifdef __APPLE__
#include <CommonCrypto/CommonDigest.h>
#else
#include <openssl/evp.h>
#endif

#include "daemon.h"

/* The shapes of the entries (anes_centry.shape) as a counting Bloom filter:
 * each shape counts in two of SHAPE_SLOTS counters, so a shape none of whose
 * counters is 0 may be cached, and any other is not.  Entries come and go on
 * the loop thread; a compile's key job asks from its own thread (relaxed
 * atomics: a wrong answer costs time, never correctness, see
 * copy_while_keying). */
enum { SHAPE_SLOTS = 4096 };

struct anes_cache {
	anes_server *srv;
	anes_centry **buckets;
	size_t n_buckets;   /* power of two */
	size_t n;
	_Atomic uint32_t shapes[SHAPE_SLOTS];
};

/* ---- hashing ------------------------------------------------------------- */

typedef struct sha256 {
#ifdef __APPLE__
	CC_SHA256_CTX ctx;
#else
	EVP_MD_CTX *ctx;
#endif
	bool failed;
} sha256;

static int sha256_init(sha256 *h)
{
	h->failed = false;
#ifdef __APPLE__
	CC_SHA256_Init(&h->ctx);
#else
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx)
		return -ENOMEM;
	if (EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(h->ctx);
		return -EIO;
	}
#endif
	return 0;
}

static void sha256_update(sha256 *h, const void *p, size_t len)
{
#ifdef __APPLE__
	/* CC_LONG is 32 bits. */
	const uint8_t *b = p;
	while (len > 0) {
		CC_LONG chunk = len > (1u << 30) ? (1u << 30) : (CC_LONG)len;
		CC_SHA256_Update(&h->ctx, b, chunk);
		b += chunk;
		len -= chunk;
	}
#else
	if (len > 0 && EVP_DigestUpdate(h->ctx, p, len) != 1)
		h->failed = true;
#endif
}

/* out = a second hash going on from where h is (h stays as it is). */
static int sha256_fork(const sha256 *h, sha256 *out)
{
	out->failed = h->failed;
#ifdef __APPLE__
	out->ctx = h->ctx;
#else
	out->ctx = EVP_MD_CTX_new();
	if (!out->ctx)
		return -ENOMEM;
	if (EVP_MD_CTX_copy_ex(out->ctx, h->ctx) != 1) {
		EVP_MD_CTX_free(out->ctx);
		return -EIO;
	}
#endif
	return 0;
}

static void sha256_chunk(void *h, const void *p, size_t len)
{
	sha256_update(h, p, len);
}

static void sha256_u64be(sha256 *h, uint64_t v)
{
	uint8_t b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (56 - 8 * i));
	sha256_update(h, b, sizeof(b));
}

static int sha256_final(sha256 *h, uint8_t out[ANES_KEY_SIZE])
{
#ifdef __APPLE__
	CC_SHA256_Final(out, &h->ctx);
	return 0;
#else
	unsigned len = 0;
	int ok = EVP_DigestFinal_ex(h->ctx, out, &len) == 1 && len == ANES_KEY_SIZE && !h->failed;
	EVP_MD_CTX_free(h->ctx);
	return ok ? 0 : -EIO;
#endif
}

static int weight_cmp(const void *a, const void *b)
{
	const anes_wire_weight *x = a, *y = b;
	uint32_t n = x->path_len < y->path_len ? x->path_len : y->path_len;
	int c = memcmp(x->path, y->path, n);
	if (c != 0)
		return c;
	return (x->path_len > y->path_len) - (x->path_len < y->path_len);
}

/* The program key of mil and weights (docs/protocol.md, program.compile),
 * which it sorts by path first (ascending byte order), and its shape: the
 * hash of the same fields with each blob's bytes left out (its length
 * stays), which programs that can have the same key share.  The files are
 * read with anes_wfile_stream (with pread, also the daemon's copy or a
 * mapped memfd: a cache hit needs nothing but the key, and the pages of a
 * mapping stay out of the daemon's memory while nothing here runs it).
 * copy (may be NULL) is asked once, with the shape, before any file is
 * read: if it answers true, the files that need a copy are copied in the
 * pass that hashes them, so the key is that of the copy's bytes. */
static int program_hash(const char *mil, size_t mil_len, anes_wire_weight *weights, size_t n,
                        bool (*copy)(void *ud, const uint8_t shape[ANES_KEY_SIZE]), void *ud,
                        uint8_t ret_key[ANES_KEY_SIZE], uint8_t ret_shape[ANES_KEY_SIZE])
{
	static const char tag[] = "aneshare-program-v1";  /* hashed with its NUL */
	sha256 h, sh;
	uint8_t key[ANES_KEY_SIZE], shape[ANES_KEY_SIZE];

	if (n > 1)
		qsort(weights, n, sizeof(*weights), weight_cmp);
	int r = sha256_init(&h);
	if (r < 0)
		return r;
	sha256_update(&h, tag, sizeof(tag));
	sha256_u64be(&h, mil_len);
	sha256_update(&h, mil, mil_len);
	r = sha256_fork(&h, &sh);
	if (r == 0) {
		for (size_t i = 0; i < n; i++) {
			sha256_u64be(&sh, weights[i].path_len);
			sha256_update(&sh, weights[i].path, weights[i].path_len);
			sha256_u64be(&sh, weights[i].file ? weights[i].file->size : weights[i].len);
		}
		r = sha256_final(&sh, shape);
	}
	bool cp = r == 0 && copy && copy(ud, shape);
	for (size_t i = 0; i < n && r == 0; i++) {
		anes_wfile *f = weights[i].file;
		uint64_t len = f ? f->size : weights[i].len;
		sha256_u64be(&h, weights[i].path_len);
		sha256_update(&h, weights[i].path, weights[i].path_len);
		sha256_u64be(&h, len);
		if (f)
			r = anes_wfile_stream(f, cp, sha256_chunk, &h);
		else
			sha256_update(&h, weights[i].data, (size_t)len);
	}
	if (r < 0) {
		uint8_t junk[ANES_KEY_SIZE];
		(void)sha256_final(&h, junk);
		return r;
	}
	r = sha256_final(&h, key);
	if (r < 0)
		return r;
	memcpy(ret_key, key, sizeof(key));
	if (ret_shape)
		memcpy(ret_shape, shape, sizeof(shape));
	return 0;
}

static bool copy_always(void *ud, const uint8_t shape[ANES_KEY_SIZE])
{
	(void)ud;
	(void)shape;
	return true;
}

/* ---- the table ------------------------------------------------------------ */

static size_t key_hash(const uint8_t key[ANES_KEY_SIZE])
{
	size_t h;
	memcpy(&h, key, sizeof(h));  /* already uniformly distributed */
	return h;
}

int anes_cache_new(anes_server *srv, anes_cache **ret)
{
	anes_cache *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	for (size_t i = 0; i < SHAPE_SLOTS; i++)
		atomic_init(&c->shapes[i], 0);
	c->n_buckets = 64;
	c->buckets = calloc(c->n_buckets, sizeof(*c->buckets));
	if (!c->buckets) {
		free(c);
		return -ENOMEM;
	}
	c->srv = srv;
	*ret = c;
	return 0;
}

anes_cache *anes_cache_free(anes_cache *c)
{
	if (!c)
		return NULL;
	assert(c->n == 0);
	free(c->buckets);
	free(c);
	return NULL;
}

void anes_cache_foreach(anes_cache *c, void (*fn)(anes_centry *e, void *ud), void *ud)
{
	for (size_t i = 0; i < c->n_buckets; i++)
		for (anes_centry *e = c->buckets[i]; e; e = e->hnext)
			fn(e, ud);
}

static anes_centry *cache_find(anes_cache *c, const uint8_t key[ANES_KEY_SIZE])
{
	for (anes_centry *e = c->buckets[key_hash(key) & (c->n_buckets - 1)]; e; e = e->hnext)
		if (memcmp(e->key, key, ANES_KEY_SIZE) == 0)
			return e;
	return NULL;
}

static void cache_grow(anes_cache *c)
{
	/* Growing is an optimisation: on failure the chains just get longer. */
	size_t nb = c->n_buckets * 2;
	anes_centry **b = calloc(nb, sizeof(*b));
	if (!b)
		return;
	for (size_t i = 0; i < c->n_buckets; i++) {
		anes_centry *e = c->buckets[i];
		while (e) {
			anes_centry *next = e->hnext;
			size_t k = key_hash(e->key) & (nb - 1);
			e->hnext = b[k];
			b[k] = e;
			e = next;
		}
	}
	free(c->buckets);
	c->buckets = b;
	c->n_buckets = nb;
}

static void shape_slots(const uint8_t shape[ANES_KEY_SIZE], size_t slot[2])
{
	slot[0] = ((size_t)shape[0] | (size_t)shape[1] << 8) % SHAPE_SLOTS;
	slot[1] = ((size_t)shape[2] | (size_t)shape[3] << 8) % SHAPE_SLOTS;
}

static void shape_count(anes_cache *c, const uint8_t shape[ANES_KEY_SIZE], bool add)
{
	size_t slot[2];
	shape_slots(shape, slot);
	for (int i = 0; i < 2; i++) {
		if (add)
			atomic_fetch_add_explicit(&c->shapes[slot[i]], 1, memory_order_relaxed);
		else
			atomic_fetch_sub_explicit(&c->shapes[slot[i]], 1, memory_order_relaxed);
	}
}

/* false: no entry has this shape (any thread) */
static bool shape_maybe_cached(anes_cache *c, const uint8_t shape[ANES_KEY_SIZE])
{
	size_t slot[2];
	shape_slots(shape, slot);
	return atomic_load_explicit(&c->shapes[slot[0]], memory_order_relaxed) > 0 &&
	       atomic_load_explicit(&c->shapes[slot[1]], memory_order_relaxed) > 0;
}

static void cache_insert(anes_cache *c, anes_centry *e)
{
	shape_count(c, e->shape, true);
	if (c->n >= 2 * c->n_buckets)
		cache_grow(c);
	size_t k = key_hash(e->key) & (c->n_buckets - 1);
	e->hnext = c->buckets[k];
	c->buckets[k] = e;
	c->n++;
}

static void cache_remove(anes_cache *c, anes_centry *e)
{
	anes_centry **pp = &c->buckets[key_hash(e->key) & (c->n_buckets - 1)];
	while (*pp && *pp != e)
		pp = &(*pp)->hnext;
	assert(*pp == e);
	if (*pp) {
		*pp = e->hnext;
		c->n--;
		shape_count(c, e->shape, false);
	}
}

static void centry_maybe_free(anes_centry *e)
{
	if (e->handles > 0 || e->pins > 0)
		return;
	assert(!e->waiters && !e->holders);
	anes_server *srv = e->srv;
	cache_remove(srv->cache, e);
	if (e->prog)
		srv->backend->ops->program_free(srv->backend, e->prog);
	/* after the program: it may refer to the files' bytes */
	for (uint32_t i = 0; i < e->n_files; i++)
		anes_wfile_free(e->files[i]);
	free(e->files);
	if (e->bytes_daemon)
		anes_tenants_uncharge(&srv->tenants, ANES_RES_PROGRAM_BYTES, e->bytes);
	free(e);
}

static anes_holder **find_holder(anes_centry *e, anes_tenant *t)
{
	anes_holder **pp = &e->holders;
	while (*pp && (*pp)->tenant != t)
		pp = &(*pp)->next;
	return pp;
}

int anes_centry_add_handle(anes_centry *e, anes_tenant *t, anes_res *ret_res)
{
	int r = anes_tenant_charge(t, ANES_RES_PROGRAMS, 1, true);
	if (r < 0) {
		*ret_res = ANES_RES_PROGRAMS;
		return r;
	}
	anes_holder **pp = find_holder(e, t);
	if (!*pp) {
		anes_holder *h = calloc(1, sizeof(*h));
		r = h ? anes_tenant_charge(t, ANES_RES_PROGRAM_BYTES, e->bytes, false) : -ENOMEM;
		if (r < 0) {
			free(h);
			anes_tenant_uncharge(t, ANES_RES_PROGRAMS, 1, true);
			*ret_res = ANES_RES_PROGRAM_BYTES;
			return r;
		}
		h->tenant = anes_tenant_ref(t);
		*pp = h;
	}
	(*pp)->handles++;
	e->handles++;
	return 0;
}

/* Drop t's holding of e when it has no handle left: its charge goes. */
static void holder_put(anes_centry *e, anes_holder **pp)
{
	anes_holder *h = *pp;
	if (h->handles > 0)
		return;
	*pp = h->next;
	anes_tenant_uncharge(h->tenant, ANES_RES_PROGRAM_BYTES, e->bytes, false);
	anes_tenant_unref(h->tenant);
	free(h);
}

void anes_centry_drop_handle(anes_centry *e, anes_tenant *t)
{
	assert(e->handles > 0);
	anes_holder **pp = find_holder(e, t);
	assert(*pp && (*pp)->handles > 0);
	if (*pp) {
		(*pp)->handles--;
		holder_put(e, pp);
	}
	anes_tenant_uncharge(t, ANES_RES_PROGRAMS, 1, true);
	e->handles--;
	centry_maybe_free(e);
}

void anes_centry_pin(anes_centry *e)
{
	e->pins++;
}

void anes_centry_unpin(anes_centry *e)
{
	assert(e->pins > 0);
	e->pins--;
	centry_maybe_free(e);
}

/* ---- compiling ------------------------------------------------------------- */

typedef struct compile_job {
	anes_job job;
	anes_server *srv;
	anes_tenant *tenant;   /* of the request that started it, referenced */
	uint64_t copy_bytes;   /* the request's copy, charged to tenant and the daemon */
	uint64_t est;          /* program memory, charged by compile_work (est_charged) */
	bool lanes;            /* the estimate's: its runs may go on a lane */
	bool est_charged;
	anes_res limit_res;    /* rc -EDQUOT/-ENOSPC: the resource */
	anes_centry *entry;
	const char *mil;
	size_t mil_len;
	anes_weight *weights;
	size_t n_weights;
	anes_wire_weight *wire;  /* the weights as requested: paths and inline data in copy, files owned */
	uint64_t file_bytes;     /* sum of the files' sizes */
	void *copy;            /* one allocation holding mil, paths and blobs */
	/* A compile with weight files starts with the key (hashing them on this
	 * job's thread, copying those that need it in the same pass when no
	 * cached program can have the key: copy_while_keying); its done callback
	 * looks the key up and either answers or submits the same job again to
	 * compile. */
	bool keying;
	anes_conn *conn;       /* keying: the requester (referenced) and its msgid */
	uint32_t msgid;
	uint8_t key[ANES_KEY_SIZE];
	uint8_t shape[ANES_KEY_SIZE];
	int rc;
	anes_bprogram *prog;
	char err[ANES_ERRMSG_MAX];
} compile_job;

static void job_free(compile_job *cj)
{
	if (cj->est_charged)   /* the files, charged for copies no program uses */
		anes_tenant_uncharge(cj->tenant, ANES_RES_PROGRAM_BYTES, cj->est, true);
	for (size_t i = 0; i < cj->n_weights; i++)
		anes_wfile_free(cj->wire[i].file);
	anes_tenant_unref(cj->tenant);
	free(cj->copy);
	free(cj->weights);
	free(cj->wire);
	free(cj);
}

/* The files of a compile: counted as program memory while the program lives
 * (they are mapped or copied for it; the key job may have charged them
 * already, copy_while_keying), copied if the key job did not copy them, and
 * mapped. */
static int load_files(compile_job *cj)
{
	bool copy = false;

	if (!cj->file_bytes)
		return 0;
	if (!cj->est_charged) {
		int r = anes_tenant_charge(cj->tenant, ANES_RES_PROGRAM_BYTES, cj->file_bytes, true);
		if (r < 0) {
			cj->limit_res = ANES_RES_PROGRAM_BYTES;
			anes_tenant_limit_msg(cj->tenant, ANES_RES_PROGRAM_BYTES, cj->file_bytes, r, cj->err,
			                      sizeof(cj->err));
			return r;
		}
		cj->est = cj->file_bytes;
		cj->est_charged = true;
	}
	for (size_t i = 0; i < cj->n_weights; i++)
		copy |= cj->wire[i].file && anes_wfile_needs_copy(cj->wire[i].file);
	if (copy) {
		/* The key was computed from the client's files, which may have
		 * changed since.  Copy them, hashing in the same pass what is
		 * copied, and compare: the entry's key is the key of the bytes
		 * the program is compiled from, or the compile fails. */
		uint8_t key[ANES_KEY_SIZE];
		int r = program_hash(cj->mil, cj->mil_len, cj->wire, cj->n_weights, copy_always, NULL, key, NULL);
		if (r < 0) {
			if (r == -EIO)
				snprintf(cj->err, sizeof(cj->err),
				         "a weight file is shorter than when it was passed (truncated)");
			else
				snprintf(cj->err, sizeof(cj->err), "copying the weight files: %s", strerror(-r));
			return r == -ENOMEM ? r : -EINVAL;
		}
		if (memcmp(key, cj->key, sizeof(key)) != 0) {
			snprintf(cj->err, sizeof(cj->err), "a weight file changed while it was being compiled");
			return -EINVAL;
		}
	}
	for (size_t i = 0; i < cj->n_weights; i++) {
		anes_wfile *f = cj->wire[i].file;
		if (!f)
			continue;
		int r = anes_wfile_load(f);
		if (r < 0) {
			snprintf(cj->err, sizeof(cj->err), "weight file \"%s\": %s", cj->wire[i].path, strerror(-r));
			return r == -ENOMEM ? r : -EINVAL;
		}
	}
	for (size_t i = 0; i < cj->n_weights; i++) {
		const anes_wire_weight *w = &cj->wire[i];
		cj->weights[i].path = w->path;
		cj->weights[i].data = w->file ? w->file->data : w->data;
		cj->weights[i].len = w->file ? (size_t)w->file->size : (size_t)w->len;
		cj->weights[i].kept = w->file != NULL;
		/* an empty file was neither copied nor mapped: no fd to pass on */
		cj->weights[i].has_fd = w->file && w->file->size > 0;
		cj->weights[i].fd = cj->weights[i].has_fd ? w->file->fd : -1;
	}
	return 0;
}

/* The key job's choice, made once the shape is known and before any file is
 * read: copy the files that need it in the pass that computes the key (one
 * read and one hash of each file), or only hash them (a cache hit then
 * costs no copy; a miss copies and hashes again, load_files).  It copies
 * when no cached program has the shape (so none can have the key, unless a
 * compile of the same program starts meanwhile: then the copy is dropped
 * unused) and the files' program memory, which load_files charges
 * otherwise, can be charged now. */
static bool copy_while_keying(void *ud, const uint8_t shape[ANES_KEY_SIZE])
{
	compile_job *cj = ud;
	bool need = false;

	for (size_t i = 0; i < cj->n_weights; i++)
		need |= cj->wire[i].file && anes_wfile_needs_copy(cj->wire[i].file);
	if (!need || shape_maybe_cached(cj->srv->cache, shape))
		return false;
	if (anes_tenant_charge(cj->tenant, ANES_RES_PROGRAM_BYTES, cj->file_bytes, true) < 0)
		return false;   /* load_files tries again and says why it fails */
	cj->est = cj->file_bytes;
	cj->est_charged = true;
	return true;
}

static void compile_work(anes_job *j)
{
	compile_job *cj = ANES_CONTAINER_OF(j, compile_job, job);
	anes_backend *b = cj->srv->backend;
	anes_bprogram *prog = NULL;

	cj->err[0] = '\0';
	if (cj->keying) {
		cj->rc = program_hash(cj->mil, cj->mil_len, cj->wire, cj->n_weights, copy_while_keying, cj,
		                      cj->key, cj->shape);
		if (cj->rc == -EIO)
			snprintf(cj->err, sizeof(cj->err), "a weight file is shorter than when it was passed (truncated)");
		return;
	}
	cj->rc = load_files(cj);
	if (cj->rc < 0)
		return;
	/* Charge the program's memory before it exists (docs/protocol.md,
	 * "Program memory"): refused here, nothing of its size is allocated. */
	uint64_t est = 0;
	cj->rc = anes_program_estimate(b->ops->name, cj->mil, cj->mil_len, cj->weights,
	                               cj->n_weights, cj->srv->run_concurrency,
	                               cj->srv->lane_concurrency, &est, &cj->lanes, cj->err,
	                               sizeof(cj->err));
	if (cj->rc == 0) {
		cj->rc = anes_tenant_charge(cj->tenant, ANES_RES_PROGRAM_BYTES, est, true);
		if (cj->rc < 0) {
			cj->limit_res = ANES_RES_PROGRAM_BYTES;
			anes_tenant_limit_msg(cj->tenant, ANES_RES_PROGRAM_BYTES, est, cj->rc, cj->err,
			                      sizeof(cj->err));
			return;
		}
		cj->est += est;
		cj->est_charged = true;
	}
	if (cj->rc < 0) {
		cj->err[sizeof(cj->err) - 1] = '\0';
		return;
	}
	cj->rc = b->ops->compile(b, cj->mil, cj->mil_len, cj->weights, cj->n_weights, &prog,
	                         cj->err, sizeof(cj->err));
	if (cj->rc == 0 && !prog)
		cj->rc = -EIO;
	if (cj->rc == 0)
		cj->prog = prog;
	cj->err[sizeof(cj->err) - 1] = '\0';
}

static void answer_waiter(anes_centry *e, anes_waiter *w, int rc, const char *err)
{
	anes_conn *c = w->conn;
	anes_server *srv = e->srv;

	if (c->failed)
		return;
	if (rc == 0) {
		uint32_t id;
		anes_res res;
		int r = anes_centry_add_handle(e, w->tenant, &res);
		if (r == -ENOMEM) {
			anes_conn_reply_error(c, w->msgid, ANES_WERR_NO_MEMORY, "out of memory");
			return;
		}
		if (r < 0) {
			char msg[ANES_ERRMSG_MAX];
			anes_tenant_limit_msg(w->tenant, res, res == ANES_RES_PROGRAMS ? 1 : e->bytes, r, msg,
			                      sizeof(msg));
			anes_conn_reply_error(c, w->msgid, ANES_WERR_LIMIT, "%s", msg);
			return;
		}
		/* The slot was reserved when the request was accepted. */
		r = anes_idt_insert(&c->programs, e, &id);
		if (r < 0) {
			anes_centry_drop_handle(e, w->tenant);
			anes_conn_reply_error(c, w->msgid, r == -ENOSPC ? ANES_WERR_LIMIT : ANES_WERR_NO_MEMORY,
			                      r == -ENOSPC ? "program IDs exhausted" : "out of memory");
			return;
		}
		if (w->cached)
			srv->stats.cache_hits++;
		anes_frame f;
		anes_frame_init(&f);
		anes_pack_result(&f.pk, w->msgid, 3);
		anes_pack_str(&f.pk, "id");
		msgpack_pack_uint32(&f.pk, id);
		anes_pack_str(&f.pk, "key");
		anes_pack_strn(&f.pk, e->hex, 2 * ANES_KEY_SIZE);
		anes_pack_str(&f.pk, "cached");
		if (w->cached)
			msgpack_pack_true(&f.pk);
		else
			msgpack_pack_false(&f.pk);
		anes_conn_send(c, &f, w->msgid, NULL, 0);
		return;
	}
	switch (rc) {
	case -EINVAL:
		anes_conn_reply_error(c, w->msgid, ANES_WERR_COMPILE, "%s", err[0] ? err : "invalid program");
		break;
	case -ENOTSUP:
		anes_conn_reply_error(c, w->msgid, ANES_WERR_UNSUPPORTED, "%s",
		                      err[0] ? err : "unsupported program");
		break;
	case -ENOMEM:
		anes_conn_reply_error(c, w->msgid, ANES_WERR_NO_MEMORY, "out of memory while compiling");
		break;
	case -ECANCELED:
		anes_conn_reply_error(c, w->msgid, ANES_WERR_SHUTTING_DOWN,
		                      "the daemon is shutting down; the compile was not done");
		break;
	case -ECONNRESET:
		anes_conn_reply_error(c, w->msgid, ANES_WERR_WORKER_RESTARTED, "%s",
		                      err[0] ? err : "the device worker was lost; retry");
		break;
	case -ENOSPC:
		anes_conn_reply_error(c, w->msgid, ANES_WERR_LIMIT, "%s",
		                      err[0] ? err : "the device worker's compile budget is full");
		break;
	case -EDQUOT:
		anes_conn_reply_error(c, w->msgid, ANES_WERR_LIMIT, "%s", err);
		break;
	default:
		anes_conn_reply_error(c, w->msgid, ANES_WERR_INTERNAL, "compile failed (%s)%s%s",
		                      strerror(-rc), err[0] ? ": " : "", err);
		break;
	}
}

static void keyed(compile_job *cj, bool cancelled);

static void compile_done(anes_job *j, bool cancelled)
{
	compile_job *cj = ANES_CONTAINER_OF(j, compile_job, job);
	if (cj->keying) {
		keyed(cj, cancelled);
		return;
	}
	anes_centry *e = cj->entry;
	anes_server *srv = cj->srv;
	int rc = cancelled ? -ECANCELED : cj->rc;

	assert(e->state == ANES_CE_COMPILING);
	if (rc == 0) {
		e->prog = cj->prog;
		e->state = ANES_CE_READY;
		/* the program refers to its files' bytes: they live with it */
		if (cj->file_bytes) {
			e->files = calloc(cj->n_weights, sizeof(*e->files));
			for (size_t i = 0; i < cj->n_weights; i++)
				if (cj->wire[i].file && e->files) {
					e->files[e->n_files++] = cj->wire[i].file;
					cj->wire[i].file = NULL;
				}
			if (!e->files) {
				/* cannot keep them: drop the program rather than its bytes */
				srv->backend->ops->program_free(srv->backend, e->prog);
				e->prog = NULL;
				e->state = ANES_CE_COMPILING;
				rc = -ENOMEM;
			}
		}
	}
	if (rc == 0) {
		srv->stats.compiles++;
		/* The compile's charge becomes the program's: in the daemon's
		 * total while it lives, and the starter's holding (which its
		 * handle finds below; dropped if it got none). */
		e->bytes = cj->est;
		e->lanes = cj->lanes;
		e->bytes_daemon = true;
		anes_holder *h = calloc(1, sizeof(*h));
		if (h) {
			h->tenant = anes_tenant_ref(cj->tenant);
			h->next = e->holders;
			e->holders = h;
		} else {
			anes_tenant_uncharge(cj->tenant, ANES_RES_PROGRAM_BYTES, cj->est, false);
		}
		cj->est_charged = false;
	} else if (cj->est_charged) {
		anes_tenant_uncharge(cj->tenant, ANES_RES_PROGRAM_BYTES, cj->est, true);
		cj->est_charged = false;
	}
	anes_tenant_uncharge(cj->tenant, ANES_RES_PROGRAM_BYTES, cj->copy_bytes, true);

	anes_waiter *list = e->waiters;
	e->waiters = NULL;
	e->waiters_tail = &e->waiters;
	while (list) {
		anes_waiter *w = list;
		list = w->next;
		w->conn->inflight--;
		w->conn->pending_compiles--;
		answer_waiter(e, w, rc, cj->err);
		anes_conn_kick(w->conn);
		anes_tenant_job_end(w->tenant);
		anes_tenant_unref(w->tenant);
		anes_conn_unref(w->conn);
		free(w);
	}
	for (anes_holder **pp = &e->holders; *pp;) {
		if ((*pp)->handles == 0)
			holder_put(e, pp);
		else
			pp = &(*pp)->next;
	}

	job_free(cj);
	anes_centry_unpin(e);
}

static int add_waiter(anes_centry *e, anes_conn *c, uint32_t msgid, bool cached)
{
	anes_waiter *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->conn = anes_conn_ref(c);
	w->tenant = anes_tenant_ref(c->tenant);
	w->msgid = msgid;
	w->cached = cached;
	*e->waiters_tail = w;
	e->waiters_tail = &w->next;
	c->inflight++;
	c->pending_compiles++;
	anes_tenant_job_begin(c->tenant);
	return 0;
}

/* The job, with a copy of the request charged to c's tenant as program
 * memory before it is made; it takes the weights' files (also on failure).
 * -EDQUOT/-ENOSPC (over the limit), -ENOMEM. */
static int make_job(anes_conn *c, const char *mil, uint32_t mil_len, const anes_wire_weight *weights,
                    uint32_t n, compile_job **ret)
{
	anes_server *srv = c->srv;
	/* The request's payload is gone once the handler returns: copy it. */
	size_t total = (size_t)mil_len + 1;
	uint64_t file_bytes = 0;
	for (uint32_t i = 0; i < n; i++) {
		total += (size_t)weights[i].path_len + 1 + (weights[i].file ? 0 : (size_t)weights[i].len);
		if (weights[i].file)
			file_bytes += weights[i].file->size;
	}
	uint64_t charge = sizeof(compile_job) + total + (uint64_t)n * (sizeof(anes_weight) + sizeof(anes_wire_weight));
	int r = anes_tenant_charge(c->tenant, ANES_RES_PROGRAM_BYTES, charge, true);
	if (r < 0)
		goto fail;

	compile_job *cj = calloc(1, sizeof(*cj));
	char *copy = malloc(total);
	anes_weight *ws = n ? calloc(n, sizeof(*ws)) : NULL;
	anes_wire_weight *wire = n ? calloc(n, sizeof(*wire)) : NULL;
	if (!cj || !copy || (n && (!ws || !wire))) {
		free(cj);
		free(copy);
		free(ws);
		free(wire);
		anes_tenant_uncharge(c->tenant, ANES_RES_PROGRAM_BYTES, charge, true);
		r = -ENOMEM;
		goto fail;
	}
	cj->tenant = anes_tenant_ref(c->tenant);
	cj->copy_bytes = charge;
	cj->file_bytes = file_bytes;
	char *p = copy;
	memcpy(p, mil, mil_len);
	p[mil_len] = '\0';
	cj->mil = p;
	cj->mil_len = mil_len;
	p += (size_t)mil_len + 1;
	for (uint32_t i = 0; i < n; i++) {
		memcpy(p, weights[i].path, weights[i].path_len);
		p[weights[i].path_len] = '\0';
		ws[i].path = p;
		wire[i].path = p;
		wire[i].path_len = weights[i].path_len;
		p += (size_t)weights[i].path_len + 1;
		if (weights[i].file) {
			wire[i].file = weights[i].file;
			continue;
		}
		if (weights[i].len)
			memcpy(p, weights[i].data, (size_t)weights[i].len);
		ws[i].data = p;
		ws[i].len = (size_t)weights[i].len;
		wire[i].data = p;
		wire[i].len = weights[i].len;
		p += weights[i].len;
	}
	cj->job.work = compile_work;
	cj->job.done = compile_done;
	cj->srv = srv;
	cj->weights = ws;
	cj->wire = wire;
	cj->n_weights = n;
	cj->copy = copy;
	*ret = cj;
	return 0;
fail:
	for (uint32_t i = 0; i < n; i++)
		anes_wfile_free(weights[i].file);
	return r;
}

static void reply_limit(anes_conn *c, uint32_t msgid, const char *mil, uint32_t mil_len,
                        const anes_wire_weight *weights, uint32_t n, int r)
{
	char msg[ANES_ERRMSG_MAX];
	uint64_t req = mil_len;
	for (uint32_t i = 0; i < n; i++)
		req += weights[i].file ? 0 : weights[i].len;
	anes_tenant_limit_msg(c->tenant, ANES_RES_PROGRAM_BYTES, req, r, msg, sizeof(msg));
	anes_conn_reply_error(c, msgid, ANES_WERR_LIMIT, "%s", msg);
}

/* The key is known: answer from the cache, wait for its compile, or start
 * one.  cj: the job already made (a compile with files), or NULL (made here
 * from the request, only when a compile is needed); taken in every case. */
static void compile_keyed(anes_conn *c, uint32_t msgid, const uint8_t key[ANES_KEY_SIZE],
                          const uint8_t shape[ANES_KEY_SIZE], compile_job *cj, const char *mil,
                          uint32_t mil_len, anes_wire_weight *weights, uint32_t n_weights)
{
	anes_server *srv = c->srv;

	anes_centry *e = cache_find(srv->cache, key);
	if (e && e->state == ANES_CE_READY) {
		if (cj)
			job_free(cj);
		anes_waiter w = { .conn = c, .tenant = c->tenant, .msgid = msgid, .cached = true };
		answer_waiter(e, &w, 0, "");
		return;
	}
	if (e) {
		if (cj)
			job_free(cj);
		if (add_waiter(e, c, msgid, true) < 0)
			goto oom;
		return;
	}

	if (!cj) {
		int r = make_job(c, mil, mil_len, weights, n_weights, &cj);
		if (r == -EDQUOT || r == -ENOSPC) {
			reply_limit(c, msgid, mil, mil_len, weights, n_weights, r);
			return;
		}
		if (r < 0)
			goto oom;
	}
	e = calloc(1, sizeof(*e));
	if (!e) {
		anes_tenant_uncharge(cj->tenant, ANES_RES_PROGRAM_BYTES, cj->copy_bytes, true);
		job_free(cj);
		goto oom;
	}
	e->srv = srv;
	memcpy(e->key, key, ANES_KEY_SIZE);
	memcpy(e->shape, shape, ANES_KEY_SIZE);
	memcpy(cj->key, key, ANES_KEY_SIZE);
	static const char hexd[] = "0123456789abcdef";
	for (int i = 0; i < ANES_KEY_SIZE; i++) {
		e->hex[2 * i] = hexd[key[i] >> 4];
		e->hex[2 * i + 1] = hexd[key[i] & 15];
	}
	e->hex[2 * ANES_KEY_SIZE] = '\0';
	e->state = ANES_CE_COMPILING;
	e->waiters_tail = &e->waiters;
	if (add_waiter(e, c, msgid, false) < 0) {
		anes_tenant_uncharge(cj->tenant, ANES_RES_PROGRAM_BYTES, cj->copy_bytes, true);
		job_free(cj);
		free(e);
		goto oom;
	}
	cj->entry = e;
	cj->keying = false;
	e->pins = 1;  /* the compile job's */
	cache_insert(srv->cache, e);
	cj->job.task.si = (anes_sitem){ .flow = &cj->tenant->sflow, .compile = true };
	anes_pool_submit(srv->pool, &cj->job);
	return;

oom:
	anes_conn_reply_error(c, msgid, ANES_WERR_NO_MEMORY, "out of memory");
}

/* The key job of a compile with files is done (on the loop thread). */
static void keyed(compile_job *cj, bool cancelled)
{
	anes_conn *c = cj->conn;
	uint32_t msgid = cj->msgid;
	int rc = cancelled ? -ECANCELED : cj->rc;

	cj->conn = NULL;
	c->inflight--;
	c->pending_compiles--;
	anes_tenant_job_end(c->tenant);
	if (c->failed || rc < 0) {
		if (!c->failed) {
			if (rc == -ECANCELED)
				anes_conn_reply_error(c, msgid, ANES_WERR_SHUTTING_DOWN,
				                      "the daemon is shutting down; the compile was not done");
			else if (rc == -EIO)
				anes_conn_reply_error(c, msgid, ANES_WERR_INVALID_PARAMS, "%s", cj->err);
			else
				anes_conn_reply_error(c, msgid, rc == -ENOMEM ? ANES_WERR_NO_MEMORY : ANES_WERR_INTERNAL,
				                      "hashing the weights failed (%s)", strerror(-rc));
		}
		anes_tenant_uncharge(cj->tenant, ANES_RES_PROGRAM_BYTES, cj->copy_bytes, true);
		job_free(cj);
	} else {
		/* a cache hit frees the job: its copy's charge goes with it (and
		 * the files' copies, if made, with theirs: job_free) */
		uint8_t key[ANES_KEY_SIZE], shape[ANES_KEY_SIZE];
		memcpy(key, cj->key, sizeof(key));
		memcpy(shape, cj->shape, sizeof(shape));
		anes_centry *e = cache_find(c->srv->cache, key);
		if (e)
			anes_tenant_uncharge(cj->tenant, ANES_RES_PROGRAM_BYTES, cj->copy_bytes, true);
		compile_keyed(c, msgid, key, shape, cj, NULL, 0, NULL, 0);
	}
	anes_conn_kick(c);
	anes_conn_unref(c);
}

void anes_program_compile(anes_conn *c, uint32_t msgid, const char *mil, uint32_t mil_len,
                          anes_wire_weight *weights, uint32_t n_weights)
{
	anes_server *srv = c->srv;
	uint8_t key[ANES_KEY_SIZE], shape[ANES_KEY_SIZE];
	bool files = false;

	for (uint32_t i = 0; i < n_weights; i++)
		files |= weights[i].file != NULL;
	if (c->programs.n + c->pending_compiles >= srv->lim.max_programs) {
		anes_conn_reply_error(c, msgid, ANES_WERR_LIMIT, "too many programs on this connection (max_programs %u)",
		                      srv->lim.max_programs);
		goto drop;
	}
	uint32_t next_id;
	if (anes_idt_peek(&c->programs, &next_id) < 0) {
		anes_conn_reply_error(c, msgid, ANES_WERR_LIMIT, "program IDs exhausted");
		goto drop;
	}
	/* Reserve the handle slot now so that the answer cannot fail later. */
	if (anes_idt_reserve(&c->programs, c->pending_compiles + 1) < 0)
		goto oom;
	if (files) {
		/* hash on a job thread, then compile_keyed (keyed) */
		compile_job *cj;
		int r = make_job(c, mil, mil_len, weights, n_weights, &cj);
		if (r == -EDQUOT || r == -ENOSPC) {
			reply_limit(c, msgid, mil, mil_len, weights, n_weights, r);
			return;
		}
		if (r < 0) {
			anes_conn_reply_error(c, msgid, ANES_WERR_NO_MEMORY, "out of memory");
			return;
		}
		cj->keying = true;
		cj->conn = anes_conn_ref(c);
		cj->msgid = msgid;
		c->inflight++;
		c->pending_compiles++;
		anes_tenant_job_begin(c->tenant);
		cj->job.task.si = (anes_sitem){ .flow = &cj->tenant->sflow, .compile = true };
		anes_pool_submit(srv->pool, &cj->job);
		return;
	}
	int r = program_hash(mil, mil_len, weights, n_weights, NULL, NULL, key, shape);
	if (r == -ENOMEM)
		goto oom;
	if (r < 0) {
		anes_conn_reply_error(c, msgid, ANES_WERR_INTERNAL, "hashing failed");
		return;
	}
	compile_keyed(c, msgid, key, shape, NULL, mil, mil_len, weights, n_weights);
	return;

oom:
	anes_conn_reply_error(c, msgid, ANES_WERR_NO_MEMORY, "out of memory");
drop:
	for (uint32_t i = 0; i < n_weights; i++)
		anes_wfile_free(weights[i].file);
}
