/* SPDX-License-Identifier: MIT */
/* A fake Objective-C runtime behind an anes_ane_bridge (see ane_fake.h). */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ane_fake.h"

fake_state fk;

/* The IOSurface alignments (as tests/fake_iosurface.c: rows to 64 bytes,
 * allocations to 16 KiB pages). */
#define FAKE_ROW_ALIGN 64u
#define FAKE_PAGE 16384u

typedef enum fk_kind {
	K_CLASS = 1, K_KEY, K_STRING, K_DATA, K_NUMBER, K_DICT, K_ARRAY, K_ERROR,
	K_DESC, K_MODEL, K_SURFOBJ, K_REQUEST,
} fk_kind;

/* The opaque types of ane_bridge.h, defined here for the fake. */
struct anes_objc_object {
	fk_kind kind;
	const char *cls;              /* class name (K_CLASS: the class itself) */
	unsigned serial;
	int refs;
	bool constant;                /* classes and keys: never counted or freed */
	struct anes_objc_object *all_next;
	/* payload */
	char *str;                    /* K_STRING, K_KEY; K_ERROR: localized description or NULL */
	char *domain;                 /* K_ERROR */
	long code;                    /* K_ERROR */
	uint8_t *bytes;               /* K_DATA */
	size_t len;
	unsigned long long num;       /* K_NUMBER */
	anes_id *keys, *vals;         /* K_DICT (keys, vals), K_ARRAY (vals) */
	size_t n, cap;
	anes_id ref[8];               /* DESC: mil, weights, options; MODEL: desc; REQUEST: 7 args */
	anes_iosurface surface;       /* K_SURFOBJ */
	char hex[40];                 /* K_MODEL */
	bool compiled, loaded;        /* K_MODEL */
};

struct anes_objc_selector {
	struct anes_objc_selector *next;
	char name[];
};

struct anes_iosurface {
	unsigned serial;
	int refs;
	int locks;
	uint32_t lock_opts;
	size_t size;
	uint8_t *mem;
	struct anes_iosurface *all_next;
};

static anes_id all_objects;
static struct anes_iosurface *all_surfaces;
static struct anes_objc_selector *all_sels;
/* Autorelease pools are per thread, as in the real runtime: each thread has
 * its own stack of autoreleased objects, NULL entries marking pools. */
typedef struct tpool {
	anes_id *stack;
	size_t n, cap;
	struct tpool *next;
} tpool;
static tpool *all_pools;
static unsigned pool_gen;                    /* bumped by fake_reset */
static _Thread_local tpool *my_pool;
static _Thread_local unsigned my_pool_gen;

/* One lock for the whole fake: every bridge entry point takes it (the real
 * runtime is thread-safe); evaluate drops it while the model computes. */
static pthread_mutex_t fake_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned serials[16];
static unsigned surface_serial;

/* ---- bookkeeping ---- */

static void misuse(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void misuse(const char *fmt, ...)
{
	va_list ap;

	if (fk.misuse[0])
		return;
	va_start(ap, fmt);
	vsnprintf(fk.misuse, sizeof fk.misuse, fmt, ap);
	va_end(ap);
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		abort();
	return p;
}

static char *xstrdup(const char *s)
{
	char *p = strdup(s);
	if (!p)
		abort();
	return p;
}

static void log_add(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_add(const char *fmt, ...)
{
	char buf[4096];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (fk.n_log == fk.cap_log) {
		fk.cap_log = fk.cap_log ? 2 * fk.cap_log : 64;
		fk.log = realloc(fk.log, fk.cap_log * sizeof *fk.log);
		if (!fk.log)
			abort();
	}
	fk.log[fk.n_log++] = xstrdup(buf);
}

/* true if this failable call is the one to fail */
static bool fail_here(const char *what)
{
	long i = fk.n_failable++;
	bool by_name = fk.fail_name && !fk.failed_call[0] && strcmp(fk.fail_name, what) == 0;
	if (fk.failed_call[0] && fk.fail_again > 0 && strcmp(fk.failed_call, what) == 0) {
		fk.fail_again--;
		return true;
	}
	if (i != fk.fail_at && !by_name)
		return false;
	snprintf(fk.failed_call, sizeof fk.failed_call, "%s", what);
	return true;
}

static anes_id obj_new(fk_kind kind, const char *cls)
{
	anes_id o = xcalloc(1, sizeof *o);
	o->kind = kind;
	o->cls = cls;
	o->serial = ++serials[kind];
	o->refs = 1;
	o->all_next = all_objects;
	all_objects = o;
	fk.live_objects++;
	return o;
}

static anes_id obj_const(fk_kind kind, const char *cls, const char *str)
{
	anes_id o = xcalloc(1, sizeof *o);
	o->kind = kind;
	o->cls = cls;
	o->constant = true;
	o->refs = 1;
	o->str = str ? xstrdup(str) : NULL;
	o->all_next = all_objects;
	all_objects = o;
	return o;
}

static bool alive(anes_id o, const char *what)
{
	if (!o)
		return false;
	if (!o->constant && o->refs <= 0) {
		misuse("%s: message to a deallocated %s #%u", what, o->cls, o->serial);
		return false;
	}
	return true;
}

static void obj_release(anes_id o);

static void surf_release(anes_iosurface s)
{
	if (s->refs <= 0) {
		misuse("CFRelease of a freed surface#%u", s->serial);
		return;
	}
	if (--s->refs == 0) {
		if (s->locks)
			misuse("surface#%u freed while locked", s->serial);
		free(s->mem);
		s->mem = NULL;
		fk.live_surfaces--;
	}
}

static void obj_dealloc(anes_id o)
{
	fk.live_objects--;
	if (o->kind == K_MODEL && o->loaded)
		misuse("model#%u deallocated while loaded (no unloadWithQoS:error:)", o->serial);
	for (size_t i = 0; i < o->n; i++) {
		if (o->keys)
			obj_release(o->keys[i]);
		obj_release(o->vals[i]);
	}
	for (size_t i = 0; i < sizeof o->ref / sizeof o->ref[0]; i++)
		if (o->ref[i])
			obj_release(o->ref[i]);
	if (o->surface)
		surf_release(o->surface);
	/* the struct stays (on all_objects) so later misuse can be detected */
}

static void obj_release(anes_id o)
{
	if (!o || o->constant)
		return;
	if (o->refs <= 0) {
		misuse("release of a deallocated %s #%u", o->cls, o->serial);
		return;
	}
	if (--o->refs == 0)
		obj_dealloc(o);
}

static anes_id obj_retain(anes_id o)
{
	if (o && !o->constant)
		o->refs++;
	return o;
}

static tpool *this_pool(void)
{
	if (!my_pool || my_pool_gen != pool_gen) {
		my_pool = xcalloc(1, sizeof *my_pool);
		my_pool->next = all_pools;
		all_pools = my_pool;
		my_pool_gen = pool_gen;
	}
	return my_pool;
}

static anes_id autorelease(anes_id o)
{
	tpool *t = this_pool();
	if (o && !t->n)
		misuse("%s #%u autoreleased with no pool in place on this thread (leaks)", o->cls, o->serial);
	if (t->n == t->cap) {
		t->cap = t->cap ? 2 * t->cap : 64;
		t->stack = realloc(t->stack, t->cap * sizeof *t->stack);
		if (!t->stack)
			abort();
	}
	t->stack[t->n++] = o;
	return o;
}

/* a new autoreleased object, as a factory method returns it */
static anes_id factory(fk_kind kind, const char *cls)
{
	return autorelease(obj_new(kind, cls));
}

static anes_id new_string(const char *s)
{
	anes_id o = factory(K_STRING, "NSString");
	o->str = xstrdup(s);
	return o;
}

/* -[NSError description] and -localizedDescription, in Foundation's format */
const char *fake_nserror_text(bool description, const char *domain, long code, const char *localized,
                              char *buf, size_t len)
{
	if (!description && localized)
		snprintf(buf, len, "%s", localized);
	else if (!description)
		snprintf(buf, len, "The operation couldn\u2019t be completed. (%s error %ld.)", domain, code);
	else if (localized)
		snprintf(buf, len, "Error Domain=%s Code=%ld \"%s\" UserInfo={NSLocalizedDescription=%s}", domain,
		         code, localized, localized);
	else
		snprintf(buf, len, "Error Domain=%s Code=%ld \"(null)\"", domain, code);
	return buf;
}

static void f_sleep_ms(unsigned ms)
{
	log_add("sleep %u ms", ms);
	fk.slept_ms += ms;
}

/* ---- rendering ---- */

static uint32_t fnv32(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 16777619u;
	return h;
}

const char *fake_data_str(const void *bytes, size_t len, char *buf, size_t buflen)
{
	snprintf(buf, buflen, "data(%zu:%08x)", len, fnv32(bytes, len));
	return buf;
}

typedef struct sbuf {
	char s[4096];
	size_t n;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
	va_list ap;

	if (b->n >= sizeof b->s)
		return;
	va_start(ap, fmt);
	int n = vsnprintf(b->s + b->n, sizeof b->s - b->n, fmt, ap);
	va_end(ap);
	if (n > 0)
		b->n += (size_t)n;
	if (b->n > sizeof b->s)
		b->n = sizeof b->s;
}

static void render(sbuf *b, anes_id o);

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void render(sbuf *b, anes_id o)
{
	char tmp[64];

	if (!o) {
		put(b, "nil");
		return;
	}
	switch (o->kind) {
	case K_CLASS: put(b, "%s", o->cls); break;
	case K_KEY:
	case K_STRING: put(b, "\"%s\"", o->str); break;
	case K_NUMBER: put(b, "%llu", o->num); break;
	case K_DATA: put(b, "%s", fake_data_str(o->bytes, o->len, tmp, sizeof tmp)); break;
	case K_ERROR: put(b, "error#%u", o->serial); break;
	case K_DESC: put(b, "desc#%u", o->serial); break;
	case K_MODEL: put(b, "model#%u", o->serial); break;
	case K_SURFOBJ: put(b, "surfobj#%u", o->serial); break;
	case K_REQUEST: put(b, "request#%u", o->serial); break;
	case K_ARRAY:
		put(b, "[");
		for (size_t i = 0; i < o->n; i++) {
			if (i)
				put(b, ", ");
			render(b, o->vals[i]);
		}
		put(b, "]");
		break;
	case K_DICT: {
		/* "key: value" entries sorted, so the rendering does not depend on insertion order */
		char **ent = xcalloc(o->n, sizeof *ent);
		for (size_t i = 0; i < o->n; i++) {
			sbuf *e = xcalloc(1, sizeof *e);
			render(e, o->keys[i]);
			put(e, ": ");
			render(e, o->vals[i]);
			ent[i] = xstrdup(e->s);
			free(e);
		}
		qsort(ent, o->n, sizeof *ent, cmp_str);
		put(b, "{");
		for (size_t i = 0; i < o->n; i++) {
			put(b, "%s%s", i ? ", " : "", ent[i]);
			free(ent[i]);
		}
		free(ent);
		put(b, "}");
		break;
	}
	}
}

static const char *r(anes_id o, sbuf *b)
{
	b->n = 0;
	b->s[0] = '\0';
	render(b, o);
	return b->s;
}

/* ---- classes and selectors ---- */

static const char *const class_names[] = {
	"NSData", "NSString", "NSNumber", "NSMutableDictionary", "NSArray", "NSError",
	"_ANEInMemoryModelDescriptor", "_ANEInMemoryModel", "_ANERequest", "_ANEIOSurfaceObject",
	"_ANEDeviceInfo",
};
static anes_id classes[sizeof class_names / sizeof class_names[0]];
static anes_ane_bridge fake;

static anes_id cls(const char *name)
{
	for (size_t i = 0; i < sizeof class_names / sizeof class_names[0]; i++)
		if (strcmp(class_names[i], name) == 0)
			return classes[i];
	return NULL;
}

static bool is_class(anes_id o, const char *name)
{
	return o && o->kind == K_CLASS && strcmp(o->cls, name) == 0;
}

static bool is_sel(anes_sel s, const char *name)
{
	return s && strcmp(s->name, name) == 0;
}

static anes_id f_get_class(const char *name)
{
	if (fk.missing_class && strcmp(fk.missing_class, name) == 0)
		return NULL;
	if (fk.no_device_info && strcmp(name, "_ANEDeviceInfo") == 0)
		return NULL;
	return cls(name);
}

static anes_sel f_sel_register(const char *name)
{
	for (struct anes_objc_selector *s = all_sels; s; s = s->next)
		if (strcmp(s->name, name) == 0)
			return s;
	struct anes_objc_selector *s = xcalloc(1, sizeof *s + strlen(name) + 1);
	strcpy(s->name, name);
	s->next = all_sels;
	all_sels = s;
	return s;
}

static void *f_pool_push(void)
{
	fk.pool_depth++;
	autorelease(NULL);                       /* a NULL entry marks the pool */
	return (void *)(uintptr_t)this_pool()->n;   /* token: index just past the marker */
}

static void f_pool_pop(void *token)
{
	size_t mark = (size_t)(uintptr_t)token;
	tpool *t = this_pool();
	if (mark == 0 || mark > t->n || t->stack[mark - 1] != NULL) {
		misuse("objc_autoreleasePoolPop with a bad token (not a pool of this thread?)");
		return;
	}
	for (size_t i = mark; i < t->n; i++)
		if (!t->stack[i]) {
			misuse("objc_autoreleasePoolPop of a pool that is not the innermost of this thread");
			return;
		}
	while (t->n > mark)
		obj_release(t->stack[--t->n]);
	t->n--;                                  /* the marker */
	fk.pool_depth--;
}

static void unexpected(const char *shape, anes_id self, anes_sel op)
{
	sbuf b;
	misuse("unexpected message %s -> %s via %s", op ? op->name : "(null)", r(self, &b), shape);
}

/* ---- the model's behaviour ---- */

static uint64_t fnv64(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 1099511628211ull;
	return h;
}

const char *fake_hex_id(const char *mil, size_t mil_len, const char *const *paths,
                        const void *const *data, const size_t *lens, size_t n, char *buf,
                        size_t buflen)
{
	uint64_t h = fnv64(14695981039346656037ull, mil, mil_len);
	for (size_t i = 0; i < n; i++) {
		h = fnv64(h, paths[i], strlen(paths[i]) + 1);
		h = fnv64(h, data[i], lens[i]);
	}
	snprintf(buf, buflen, "%016llx-fake", (unsigned long long)h);
	return buf;
}

static anes_id dict_get(anes_id d, const char *key)
{
	for (size_t i = 0; d && i < d->n; i++)
		if (d->keys[i]->str && strcmp(d->keys[i]->str, key) == 0)
			return d->vals[i];
	return NULL;
}

/* What compileWithQoS: needs: model.mil and every weight under TMP/HEX/. */
static void check_model_files(anes_id model)
{
	anes_id desc = model->ref[0], mil = desc->ref[0], w = desc->ref[1];
	char path[1200];

	snprintf(path, sizeof path, "%s/%s/model.mil", fk.tmpdir, model->hex);
	FILE *f = fopen(path, "rb");
	if (!f) {
		misuse("compileWithQoS: %s is missing", path);
		return;
	}
	uint8_t *buf = xcalloc(mil->len + 2, 1);
	size_t got = fread(buf, 1, mil->len + 1, f);
	fclose(f);
	if (got != mil->len || memcmp(buf, mil->bytes, mil->len) != 0)
		misuse("compileWithQoS: %s does not hold the MIL text", path);
	free(buf);
	for (size_t i = 0; w && i < w->n; i++) {
		const char *key = w->keys[i]->str;
		anes_id data = dict_get(w->vals[i], "data");
		if (strncmp(key, "@model_path/", 12) != 0 || !data) {
			misuse("compileWithQoS: bad weights entry %s", key);
			return;
		}
		snprintf(path, sizeof path, "%s/%s/%s", fk.tmpdir, model->hex, key + 12);
		f = fopen(path, "rb");
		if (!f) {
			misuse("compileWithQoS: %s is missing", path);
			return;
		}
		buf = xcalloc(data->len + 2, 1);
		got = fread(buf, 1, data->len + 1, f);
		fclose(f);
		if (got != data->len || memcmp(buf, data->bytes, data->len) != 0)
			misuse("compileWithQoS: %s does not hold the weight blob", path);
		free(buf);
	}
}

void default_eval_for_test(const fake_view *in, size_t n_in, fake_view *out, size_t n_out)
{
	for (size_t k = 0; k < n_out; k++) {
		if (n_in)
			memcpy(out[k].mem, in[0].mem, in[0].size < out[k].size ? in[0].size : out[k].size);
	}
}

static bool views(anes_id arr, fake_view **ret, size_t *n)
{
	fake_view *v = xcalloc(arr->n, sizeof *v);
	for (size_t i = 0; i < arr->n; i++) {
		anes_id so = arr->vals[i];
		if (!so || so->kind != K_SURFOBJ || !so->surface) {
			free(v);
			return false;
		}
		if (so->surface->locks)
			misuse("evaluate while surface#%u is locked", so->surface->serial);
		v[i].mem = so->surface->mem;
		v[i].size = so->surface->size;
	}
	*ret = v;
	*n = arr->n;
	return true;
}

static void evaluate(anes_id request)
{
	fake_view *in = NULL, *out = NULL;
	size_t n_in = 0, n_out = 0;
	if (!views(request->ref[0], &in, &n_in) || !views(request->ref[2], &out, &n_out)) {
		misuse("evaluate: the request does not hold surface objects");
		free(in);
		return;
	}
	/* the model computes without the fake's lock, as the device would:
	 * evaluations of other programs may run at the same time */
	fk.eval_n_in = n_in < 8 ? n_in : 8;
	fk.eval_n_out = n_out < 8 ? n_out : 8;
	for (size_t i = 0; i < fk.eval_n_in; i++)
		fk.eval_in[i] = request->ref[0]->vals[i]->surface;
	for (size_t i = 0; i < fk.eval_n_out; i++)
		fk.eval_out[i] = request->ref[2]->vals[i]->surface;
	fake_eval_fn fn = fk.on_evaluate ? fk.on_evaluate : default_eval_for_test;
	pthread_mutex_unlock(&fake_mu);
	fn(in, n_in, out, n_out);
	pthread_mutex_lock(&fake_mu);
	fk.evaluations++;
	free(in);
	free(out);
}

/* a failing BOOL method: NO, and an NSError unless fk.fail_without_error */
static anes_objc_bool fail_bool(anes_id *err)
{
	if (err && !fk.fail_without_error) {
		anes_id e = factory(K_ERROR, "NSError");
		e->str = fk.error_text ? xstrdup(fk.error_text) : NULL;
		e->domain = xstrdup(fk.error_domain);
		e->code = fk.error_code;
		*err = e;
	}
	return 0;
}

/* ---- objc_msgSend, by shape ---- */

static anes_id f_send(anes_id self, anes_sel op)
{
	sbuf b;
	if (!alive(self, op->name))
		return NULL;
	if (is_sel(op, "retain"))
		return obj_retain(self);
	if (is_sel(op, "dictionary") && is_class(self, "NSMutableDictionary"))
		return fail_here("dictionary") ? NULL : factory(K_DICT, "NSMutableDictionary");
	if (self->kind == K_ERROR && (is_sel(op, "localizedDescription") || is_sel(op, "description"))) {
		char buf[2048];
		fake_nserror_text(is_sel(op, "description"), self->domain, self->code, self->str, buf,
		                  sizeof buf);
		return new_string(buf);
	}
	if (is_sel(op, "hexStringIdentifier") && self->kind == K_MODEL) {
		log_add("%s hexStringIdentifier", r(self, &b));
		return fail_here("hexStringIdentifier") ? NULL
		       : new_string(fk.hex_override ? fk.hex_override : self->hex);
	}
	unexpected("send", self, op);
	return NULL;
}

static anes_id f_send_id(anes_id self, anes_sel op, anes_id a)
{
	sbuf b1, b2;
	if (!alive(self, op->name))
		return NULL;
	if (is_sel(op, "inMemoryModelWithDescriptor:") && is_class(self, "_ANEInMemoryModel")) {
		log_add("%s %s %s", r(self, &b1), op->name, r(a, &b2));
		if (!a || a->kind != K_DESC)
			misuse("inMemoryModelWithDescriptor: needs a descriptor");
		if (fail_here(op->name) || !a || a->kind != K_DESC)
			return NULL;
		anes_id m = factory(K_MODEL, "_ANEInMemoryModel");
		m->ref[0] = obj_retain(a);
		/* the identifier: over the MIL text and each weight (path, bytes) */
		anes_id mil = a->ref[0], w = a->ref[1];
		const char **paths = xcalloc(w ? w->n : 0, sizeof *paths);
		const void **data = xcalloc(w ? w->n : 0, sizeof *data);
		size_t *lens = xcalloc(w ? w->n : 0, sizeof *lens);
		/* in key order, as the dictionary has no order */
		size_t n = w ? w->n : 0;
		for (size_t i = 0; i < n; i++) {
			anes_id d = dict_get(w->vals[i], "data");
			paths[i] = w->keys[i]->str;
			data[i] = d ? d->bytes : NULL;
			lens[i] = d ? d->len : 0;
		}
		for (size_t i = 1; i < n; i++)
			for (size_t j = i; j > 0 && strcmp(paths[j - 1], paths[j]) > 0; j--) {
				const char *tp = paths[j]; paths[j] = paths[j - 1]; paths[j - 1] = tp;
				const void *td = data[j]; data[j] = data[j - 1]; data[j - 1] = td;
				size_t tl = lens[j]; lens[j] = lens[j - 1]; lens[j - 1] = tl;
			}
		fake_hex_id((const char *)mil->bytes, mil->len, paths, data, lens, n, m->hex, sizeof m->hex);
		free(paths);
		free(data);
		free(lens);
		return m;
	}
	unexpected("send_id", self, op);
	return NULL;
}

static anes_id f_send_id3(anes_id self, anes_sel op, anes_id a, anes_id b, anes_id c)
{
	sbuf b0, b1, b2, b3;
	if (!alive(self, op->name))
		return NULL;
	if (is_sel(op, "modelWithMILText:weights:optionsPlist:") && is_class(self, "_ANEInMemoryModelDescriptor")) {
		log_add("%s %s %s %s %s", r(self, &b0), op->name, r(a, &b1), r(b, &b2), r(c, &b3));
		if (!a || a->kind != K_DATA)
			misuse("modelWithMILText: the MIL text must be NSData");
		if (!b || b->kind != K_DICT)
			misuse("modelWithMILText: weights must be a dictionary (never nil)");
		if (fail_here(op->name) || !a || a->kind != K_DATA || !b || b->kind != K_DICT)
			return NULL;
		anes_id d = factory(K_DESC, "_ANEInMemoryModelDescriptor");
		d->ref[0] = obj_retain(a);
		d->ref[1] = obj_retain(b);
		d->ref[2] = obj_retain(c);
		return d;
	}
	unexpected("send_id3", self, op);
	return NULL;
}

static anes_id f_send_id7(anes_id self, anes_sel op, anes_id a, anes_id b, anes_id c, anes_id d,
                          anes_id e, anes_id f, anes_id g)
{
	sbuf s[8];
	if (!alive(self, op->name))
		return NULL;
	if (is_sel(op, "requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:") &&
	    is_class(self, "_ANERequest")) {
		log_add("%s %s %s %s %s %s %s %s %s", r(self, &s[0]), op->name, r(a, &s[1]), r(b, &s[2]),
		        r(c, &s[3]), r(d, &s[4]), r(e, &s[5]), r(f, &s[6]), r(g, &s[7]));
		if (fail_here(op->name))
			return NULL;
		anes_id q = factory(K_REQUEST, "_ANERequest");
		anes_id args[7] = {a, b, c, d, e, f, g};
		for (int i = 0; i < 7; i++)
			q->ref[i] = obj_retain(args[i]);
		if (!a || a->kind != K_ARRAY || !c || c->kind != K_ARRAY)
			misuse("requestWithInputs: inputs and outputs must be arrays");
		return q;
	}
	unexpected("send_id7", self, op);
	return NULL;
}

static anes_id f_send_ptr(anes_id self, anes_sel op, const void *p)
{
	sbuf b;
	if (!alive(self, op->name))
		return NULL;
	if (is_sel(op, "stringWithUTF8String:") && is_class(self, "NSString"))
		return fail_here(op->name) || !p ? NULL : new_string(p);
	if (is_sel(op, "objectWithIOSurface:") && is_class(self, "_ANEIOSurfaceObject")) {
		anes_iosurface s = (anes_iosurface)p;
		log_add("%s %s surface#%u", r(self, &b), op->name, s ? s->serial : 0);
		if (fail_here(op->name) || !s)
			return NULL;
		anes_id o = factory(K_SURFOBJ, "_ANEIOSurfaceObject");
		o->surface = s;
		s->refs++;
		return o;
	}
	unexpected("send_ptr", self, op);
	return NULL;
}

static anes_id f_send_ptr_ulong(anes_id self, anes_sel op, const void *p, unsigned long n)
{
	if (!alive(self, op->name))
		return NULL;
	if (is_sel(op, "dataWithBytes:length:") && is_class(self, "NSData")) {
		if (fail_here(op->name))
			return NULL;
		anes_id o = factory(K_DATA, "NSData");
		o->bytes = xcalloc(n, 1);
		if (n)
			memcpy(o->bytes, p, n);
		o->len = n;
		return o;
	}
	if (is_sel(op, "arrayWithObjects:count:") && is_class(self, "NSArray")) {
		if (fail_here(op->name))
			return NULL;
		anes_id o = factory(K_ARRAY, "NSArray");
		const anes_id *objs = p;
		o->vals = xcalloc(n, sizeof *o->vals);
		for (unsigned long i = 0; i < n; i++) {
			if (!objs[i])
				misuse("arrayWithObjects:count: with a nil element");
			o->vals[i] = obj_retain(objs[i]);
		}
		o->n = n;
		return o;
	}
	unexpected("send_ptr_ulong", self, op);
	return NULL;
}

static anes_id f_send_ullong(anes_id self, anes_sel op, unsigned long long v)
{
	if (!alive(self, op->name))
		return NULL;
	if (is_sel(op, "numberWithUnsignedLongLong:") && is_class(self, "NSNumber")) {
		if (fail_here(op->name))
			return NULL;
		anes_id o = factory(K_NUMBER, "NSNumber");
		o->num = v;
		return o;
	}
	unexpected("send_ullong", self, op);
	return NULL;
}

static void f_send_void(anes_id self, anes_sel op)
{
	if (!self)
		return;
	if (is_sel(op, "release")) {
		obj_release(self);
		return;
	}
	unexpected("send_void", self, op);
}

static void f_send_void_id_id(anes_id self, anes_sel op, anes_id value, anes_id key)
{
	if (!alive(self, op->name))
		return;
	if (is_sel(op, "setObject:forKey:") && self->kind == K_DICT) {
		if (!value || !key) {
			misuse("setObject:forKey: with nil (an exception in Foundation)");
			return;
		}
		for (size_t i = 0; i < self->n; i++) {
			if (self->keys[i]->str && key->str && strcmp(self->keys[i]->str, key->str) == 0) {
				obj_retain(value);
				obj_release(self->vals[i]);
				self->vals[i] = value;
				return;
			}
		}
		if (self->n == self->cap) {
			self->cap = self->cap ? 2 * self->cap : 8;
			self->keys = realloc(self->keys, self->cap * sizeof *self->keys);
			self->vals = realloc(self->vals, self->cap * sizeof *self->vals);
			if (!self->keys || !self->vals)
				abort();
		}
		self->keys[self->n] = obj_retain(key);
		self->vals[self->n] = obj_retain(value);
		self->n++;
		return;
	}
	unexpected("send_void_id_id", self, op);
}

static const char *f_send_cstr(anes_id self, anes_sel op)
{
	if (!alive(self, op->name))
		return NULL;
	if (is_sel(op, "UTF8String") && (self->kind == K_STRING || self->kind == K_KEY))
		return self->str;
	unexpected("send_cstr", self, op);
	return NULL;
}

static anes_objc_bool f_send_bool(anes_id self, anes_sel op)
{
	if (is_sel(op, "hasANE") && is_class(self, "_ANEDeviceInfo"))
		return fk.has_ane;
	unexpected("send_bool", self, op);
	return 0;
}

static anes_objc_bool f_send_bool_sel(anes_id self, anes_sel op, anes_sel s)
{
	if (is_sel(op, "respondsToSelector:") && self && self->kind == K_CLASS)
		return is_class(self, "_ANEDeviceInfo") && is_sel(s, "hasANE");
	unexpected("send_bool_sel", self, op);
	return 0;
}

static anes_objc_bool f_send_bool_u32_id_err(anes_id self, anes_sel op, uint32_t qos, anes_id options,
                                             anes_id *err)
{
	sbuf b0, b1;
	if (!alive(self, op->name))
		return 0;
	if (self->kind == K_MODEL && (is_sel(op, "compileWithQoS:options:error:") ||
	                              is_sel(op, "loadWithQoS:options:error:"))) {
		bool compile = is_sel(op, "compileWithQoS:options:error:");
		log_add("%s %s %u %s %s", r(self, &b0), op->name, qos, r(options, &b1), err ? "&error" : "NULL");
		if (compile)
			check_model_files(self);
		else if (!self->compiled)
			misuse("loadWithQoS: before compileWithQoS:");
		if (fail_here(op->name))
			return fail_bool(err);
		if (compile)
			self->compiled = true;
		else
			self->loaded = true;
		return 1;
	}
	unexpected("send_bool_u32_id_err", self, op);
	return 0;
}

static anes_objc_bool f_send_bool_u32_id_id_err(anes_id self, anes_sel op, uint32_t qos, anes_id options,
                                                anes_id request, anes_id *err)
{
	sbuf b0, b1, b2;
	if (!alive(self, op->name) || !alive(request, op->name))
		return 0;
	if (self->kind == K_MODEL && is_sel(op, "evaluateWithQoS:options:request:error:")) {
		log_add("%s %s %u %s %s %s", r(self, &b0), op->name, qos, r(options, &b1), r(request, &b2),
		        err ? "&error" : "NULL");
		if (!self->loaded)
			misuse("evaluateWithQoS: on a model that is not loaded");
		if (fail_here(op->name))
			return fail_bool(err);
		if (request->kind == K_REQUEST)
			evaluate(request);
		return 1;
	}
	unexpected("send_bool_u32_id_id_err", self, op);
	return 0;
}

static anes_objc_bool f_send_bool_u32_err(anes_id self, anes_sel op, uint32_t qos, anes_id *err)
{
	sbuf b0;
	if (!alive(self, op->name))
		return 0;
	if (self->kind == K_MODEL && is_sel(op, "unloadWithQoS:error:")) {
		log_add("%s %s %u %s", r(self, &b0), op->name, qos, err ? "&error" : "NULL");
		if (!self->loaded)
			misuse("unloadWithQoS: on a model that is not loaded");
		self->loaded = false;   /* even when reporting failure: nothing else to do */
		if (fail_here(op->name))
			return fail_bool(err);
		return 1;
	}
	unexpected("send_bool_u32_err", self, op);
	return 0;
}

/* ---- Foundation, CoreFoundation, IOSurface ---- */

static anes_id f_temporary_directory(void)
{
	log_add("NSTemporaryDirectory");
	if (fail_here("NSTemporaryDirectory"))
		return NULL;
	return new_string(fk.tmpdir);
}

static void f_cf_release(const void *cf)
{
	anes_iosurface s = (anes_iosurface)cf;
	for (anes_iosurface t = all_surfaces; t; t = t->all_next) {
		if (t == s) {
			log_add("CFRelease surface#%u", s->serial);
			surf_release(s);
			return;
		}
	}
	misuse("CFRelease of something that is not a fake surface");
}

static unsigned long long number_at(anes_id dict, anes_id key, bool *ok)
{
	for (size_t i = 0; dict && i < dict->n; i++)
		if (dict->keys[i] == key) {
			if (dict->vals[i]->kind == K_NUMBER)
				return dict->vals[i]->num;
			break;
		}
	*ok = false;
	return 0;
}

static anes_iosurface f_surface_create(anes_id props)
{
	sbuf b;
	log_add("IOSurfaceCreate %s", r(props, &b));
	if (!alive(props, "IOSurfaceCreate") || props->kind != K_DICT) {
		misuse("IOSurfaceCreate needs a property dictionary");
		return NULL;
	}
	if (fail_here("IOSurfaceCreate"))
		return NULL;
	bool ok = true;
	unsigned long long alloc = number_at(props, fake.key_alloc_size, &ok);
	unsigned long long width = number_at(props, fake.key_width, &ok);
	unsigned long long bpr = number_at(props, fake.key_bytes_per_row, &ok);
	/* as tests/fake_iosurface.c: a flat buffer, rows at least the width,
	 * aligned or not; whole pages allocated */
	if (!ok || alloc == 0 || width == 0 || bpr < width || alloc < bpr || alloc > (1ull << 32)) {
		misuse("IOSurfaceCreate: inconsistent properties %s", b.s);
		return NULL;
	}
	anes_iosurface s = xcalloc(1, sizeof *s);
	s->serial = ++surface_serial;
	s->refs = 1;
	s->size = (size_t)((alloc + FAKE_PAGE - 1) / FAKE_PAGE * FAKE_PAGE);
	s->mem = xcalloc(s->size, 1);
	s->all_next = all_surfaces;
	all_surfaces = s;
	fk.live_surfaces++;
	return s;
}

static int f_surface_lock(anes_iosurface s, uint32_t options, uint32_t *seed)
{
	(void)seed;
	log_add("IOSurfaceLock surface#%u %u", s->serial, options);
	if (s->refs <= 0)
		misuse("IOSurfaceLock of a freed surface#%u", s->serial);
	if (fail_here("IOSurfaceLock"))
		return 0x2c7;   /* an arbitrary kern_return_t */
	s->locks++;
	s->lock_opts = options;
	return 0;
}

static int f_surface_unlock(anes_iosurface s, uint32_t options, uint32_t *seed)
{
	(void)seed;
	log_add("IOSurfaceUnlock surface#%u %u", s->serial, options);
	if (s->locks <= 0)
		misuse("IOSurfaceUnlock of unlocked surface#%u", s->serial);
	else if (options != s->lock_opts)
		misuse("IOSurfaceUnlock surface#%u with options %u, locked with %u", s->serial, options,
		       s->lock_opts);
	else
		s->locks--;
	return 0;
}

static void *f_surface_base(anes_iosurface s)
{
	if (!s->locks)
		misuse("IOSurfaceGetBaseAddress of unlocked surface#%u", s->serial);
	return s->mem;
}

static size_t f_surface_alloc_size(anes_iosurface s)
{
	return s->size;
}

/* IOSurfaceAlignProperty, with tests/fake_iosurface.c's alignments */
static size_t f_surface_align(anes_id property, size_t value)
{
	size_t a = 1;
	if (property == fake.key_bytes_per_row)
		a = FAKE_ROW_ALIGN;
	else if (property == fake.key_alloc_size)
		a = FAKE_PAGE;
	return value % a ? value + (a - value % a) : value;
}

anes_iosurface fake_surface_new(size_t alloc_size)
{
	pthread_mutex_lock(&fake_mu);
	anes_iosurface s = xcalloc(1, sizeof *s);
	s->serial = ++surface_serial;
	s->refs = 1;
	s->size = (alloc_size + FAKE_PAGE - 1) / FAKE_PAGE * FAKE_PAGE;
	s->mem = xcalloc(s->size, 1);
	s->all_next = all_surfaces;
	all_surfaces = s;
	fk.live_surfaces++;
	pthread_mutex_unlock(&fake_mu);
	return s;
}

void fake_surface_release(anes_iosurface s)
{
	pthread_mutex_lock(&fake_mu);
	surf_release(s);
	pthread_mutex_unlock(&fake_mu);
}

uint8_t *fake_surface_mem(anes_iosurface s)
{
	return s->mem;
}

unsigned fake_surface_serial(anes_iosurface s)
{
	return s->serial;
}

/* ---- the bridge: every entry point under the fake's lock ---- */
static anes_id l_get_class(const char *name)
{
	pthread_mutex_lock(&fake_mu);
	anes_id r = f_get_class(name);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_sel l_sel_register(const char *name)
{
	pthread_mutex_lock(&fake_mu);
	anes_sel r = f_sel_register(name);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static void *l_pool_push(void)
{
	pthread_mutex_lock(&fake_mu);
	void *r = f_pool_push();
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static void l_pool_pop(void *token)
{
	pthread_mutex_lock(&fake_mu);
	f_pool_pop(token);
	pthread_mutex_unlock(&fake_mu);
}

static anes_id l_send(anes_id self, anes_sel op)
{
	pthread_mutex_lock(&fake_mu);
	anes_id r = f_send(self, op);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_id l_send_id(anes_id self, anes_sel op, anes_id a)
{
	pthread_mutex_lock(&fake_mu);
	anes_id r = f_send_id(self, op, a);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_id l_send_id3(anes_id self, anes_sel op, anes_id a, anes_id b, anes_id c)
{
	pthread_mutex_lock(&fake_mu);
	anes_id r = f_send_id3(self, op, a, b, c);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_id l_send_id7(anes_id self, anes_sel op, anes_id a, anes_id b, anes_id c, anes_id d, anes_id e, anes_id f, anes_id g)
{
	pthread_mutex_lock(&fake_mu);
	anes_id r = f_send_id7(self, op, a, b, c, d, e, f, g);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_id l_send_ptr(anes_id self, anes_sel op, const void *p)
{
	pthread_mutex_lock(&fake_mu);
	anes_id r = f_send_ptr(self, op, p);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_id l_send_ptr_ulong(anes_id self, anes_sel op, const void *p, unsigned long n)
{
	pthread_mutex_lock(&fake_mu);
	anes_id r = f_send_ptr_ulong(self, op, p, n);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_id l_send_ullong(anes_id self, anes_sel op, unsigned long long v)
{
	pthread_mutex_lock(&fake_mu);
	anes_id r = f_send_ullong(self, op, v);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static void l_send_void(anes_id self, anes_sel op)
{
	pthread_mutex_lock(&fake_mu);
	f_send_void(self, op);
	pthread_mutex_unlock(&fake_mu);
}

static void l_send_void_id_id(anes_id self, anes_sel op, anes_id a, anes_id b)
{
	pthread_mutex_lock(&fake_mu);
	f_send_void_id_id(self, op, a, b);
	pthread_mutex_unlock(&fake_mu);
}

static const char *l_send_cstr(anes_id self, anes_sel op)
{
	pthread_mutex_lock(&fake_mu);
	const char *r = f_send_cstr(self, op);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_objc_bool l_send_bool(anes_id self, anes_sel op)
{
	pthread_mutex_lock(&fake_mu);
	anes_objc_bool r = f_send_bool(self, op);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_objc_bool l_send_bool_sel(anes_id self, anes_sel op, anes_sel s)
{
	pthread_mutex_lock(&fake_mu);
	anes_objc_bool r = f_send_bool_sel(self, op, s);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_objc_bool l_send_bool_u32_id_err(anes_id self, anes_sel op, uint32_t qos, anes_id options, anes_id *err)
{
	pthread_mutex_lock(&fake_mu);
	anes_objc_bool r = f_send_bool_u32_id_err(self, op, qos, options, err);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_objc_bool l_send_bool_u32_id_id_err(anes_id self, anes_sel op, uint32_t qos, anes_id options, anes_id request, anes_id *err)
{
	pthread_mutex_lock(&fake_mu);
	anes_objc_bool r = f_send_bool_u32_id_id_err(self, op, qos, options, request, err);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_objc_bool l_send_bool_u32_err(anes_id self, anes_sel op, uint32_t qos, anes_id *err)
{
	pthread_mutex_lock(&fake_mu);
	anes_objc_bool r = f_send_bool_u32_err(self, op, qos, err);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static anes_id l_temporary_directory(void)
{
	pthread_mutex_lock(&fake_mu);
	anes_id r = f_temporary_directory();
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static void l_cf_release(const void *cf)
{
	pthread_mutex_lock(&fake_mu);
	f_cf_release(cf);
	pthread_mutex_unlock(&fake_mu);
}

static anes_iosurface l_surface_create(anes_id props)
{
	pthread_mutex_lock(&fake_mu);
	anes_iosurface r = f_surface_create(props);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static int l_surface_lock(anes_iosurface s, uint32_t options, uint32_t *seed)
{
	pthread_mutex_lock(&fake_mu);
	int r = f_surface_lock(s, options, seed);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static int l_surface_unlock(anes_iosurface s, uint32_t options, uint32_t *seed)
{
	pthread_mutex_lock(&fake_mu);
	int r = f_surface_unlock(s, options, seed);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static void *l_surface_base(anes_iosurface s)
{
	pthread_mutex_lock(&fake_mu);
	void *r = f_surface_base(s);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static size_t l_surface_alloc_size(anes_iosurface s)
{
	pthread_mutex_lock(&fake_mu);
	size_t r = f_surface_alloc_size(s);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

static void l_sleep_ms(unsigned ms)
{
	pthread_mutex_lock(&fake_mu);
	f_sleep_ms(ms);
	pthread_mutex_unlock(&fake_mu);
}

static size_t l_surface_align(anes_id property, size_t value)
{
	pthread_mutex_lock(&fake_mu);
	size_t r = f_surface_align(property, value);
	pthread_mutex_unlock(&fake_mu);
	return r;
}

/* ---- set-up ---- */

void fake_log_clear(void)
{
	for (size_t i = 0; i < fk.n_log; i++)
		free(fk.log[i]);
	fk.n_log = 0;
}

const char *fake_log_text(void)
{
	static char *text;
	size_t n = 1;
	for (size_t i = 0; i < fk.n_log; i++)
		n += strlen(fk.log[i]) + 1;
	free(text);
	text = xcalloc(n, 1);
	for (size_t i = 0; i < fk.n_log; i++) {
		strcat(text, fk.log[i]);
		strcat(text, "\n");
	}
	return text;
}

void fake_reset(void)
{
	fake_log_clear();
	free(fk.log);
	while (all_objects) {
		anes_id o = all_objects;
		all_objects = o->all_next;
		free(o->str);
		free(o->domain);
		free(o->bytes);
		free(o->keys);
		free(o->vals);
		free(o);
	}
	while (all_surfaces) {
		anes_iosurface s = all_surfaces;
		all_surfaces = s->all_next;
		free(s->mem);
		free(s);
	}
	while (all_sels) {
		struct anes_objc_selector *s = all_sels;
		all_sels = s->next;
		free(s);
	}
	while (all_pools) {
		tpool *t = all_pools;
		all_pools = t->next;
		free(t->stack);
		free(t);
	}
	pool_gen++;
	memset(serials, 0, sizeof serials);
	surface_serial = 0;
	memset(&fk, 0, sizeof fk);
	fk.fail_at = -1;
	fk.has_ane = true;
	fk.error_text = "fake error";
	fk.error_domain = "com.apple.appleneuralengine";
	fk.error_code = 5;
	snprintf(fk.tmpdir, sizeof fk.tmpdir, "/nonexistent");

	for (size_t i = 0; i < sizeof class_names / sizeof class_names[0]; i++)
		classes[i] = obj_const(K_CLASS, class_names[i], NULL);
	fake = (anes_ane_bridge){
		.name = "fake",
		.get_class = l_get_class,
		.sel_register = l_sel_register,
		.pool_push = l_pool_push,
		.pool_pop = l_pool_pop,
		.send = l_send,
		.send_id = l_send_id,
		.send_id3 = l_send_id3,
		.send_id7 = l_send_id7,
		.send_ptr = l_send_ptr,
		.send_ptr_ulong = l_send_ptr_ulong,
		.send_ullong = l_send_ullong,
		.send_void = l_send_void,
		.send_void_id_id = l_send_void_id_id,
		.send_cstr = l_send_cstr,
		.send_bool = l_send_bool,
		.send_bool_sel = l_send_bool_sel,
		.send_bool_u32_id_err = l_send_bool_u32_id_err,
		.send_bool_u32_id_id_err = l_send_bool_u32_id_id_err,
		.send_bool_u32_err = l_send_bool_u32_err,
		.temporary_directory = l_temporary_directory,
		.cf_release = l_cf_release,
		.surface_create = l_surface_create,
		.surface_lock = l_surface_lock,
		.surface_unlock = l_surface_unlock,
		.surface_base = l_surface_base,
		.surface_alloc_size = l_surface_alloc_size,
		.sleep_ms = l_sleep_ms,
		.surface_align = l_surface_align,
		.key_width = obj_const(K_KEY, "NSString", "IOSurfaceWidth"),
		.key_height = obj_const(K_KEY, "NSString", "IOSurfaceHeight"),
		.key_bytes_per_element = obj_const(K_KEY, "NSString", "IOSurfaceBytesPerElement"),
		.key_bytes_per_row = obj_const(K_KEY, "NSString", "IOSurfaceBytesPerRow"),
		.key_alloc_size = obj_const(K_KEY, "NSString", "IOSurfaceAllocSize"),
		.key_pixel_format = obj_const(K_KEY, "NSString", "IOSurfacePixelFormat"),
	};
}

const anes_ane_bridge *fake_bridge(void)
{
	return &fake;
}
