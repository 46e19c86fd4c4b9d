/* SPDX-License-Identifier: MIT */
/*
 * A fake IOSurface.framework + CoreFoundation subset, for the IOSurface
 * surface backend (proto/anes_shm.c) on Linux.  Built as a loadable module;
 * builds with the test hooks (-Dtest_hooks=true) load it instead of the
 * frameworks when ANESHARE_IOSURFACE_LIB names it (with
 * ANESHARE_SURFACES=iosurface).  The real daemon and the real client library
 * then run their IOSurface code paths against it.
 *
 * Surfaces are shared between processes through a directory,
 * $ANESHARE_FAKE_IOSURFACE_DIR:
 *   DIR/ID               the memory: a regular file of alloc-size bytes, which
 *                        every reference maps MAP_SHARED (zero copy);
 *   DIR/ID.PID.N         one hard link per live reference (IOSurfaceCreate or
 *                        IOSurfaceLookup) in process PID.
 * Releasing the last reference of a process removes its link; when no link
 * is left, DIR/ID goes too, and IOSurfaceLookup(ID) fails, as for a freed
 * IOSurface.  A process that dies keeps its links (the surface leaks): the
 * real IOSurface drops a dead task's references, which the tests do not need.
 *
 * What it does as the real library does (IOSurfaceRef.h):
 *   - IOSurfaceAlignProperty rounds kIOSurfaceBytesPerRow up to a multiple
 *     of 64 and kIOSurfaceAllocSize up to a page (16 KiB, the page of Apple
 *     Silicon); other properties come back unchanged.  (The real alignments
 *     are whatever the machine needs; these are plausible values, not
 *     measured ones, and the code under test asks rather than assumes.)
 *   - IOSurfaceCreate takes a flat buffer (height 1, 1 byte per element,
 *     pixel format 0) with bytes per row >= width and alloc size >= bytes
 *     per row, aligned or not, and allocates whole pages:
 *     IOSurfaceGetAllocSize returns the alloc size rounded up to 16 KiB.
 *   - kIOSurfaceIsGlobal: "If true, the IOSurface may be looked up by any
 *     task in the system by its ID."  Without it (or false) IOSurfaceLookup
 *     of the ID fails in every process but the creator's (DIR/ID.owner
 *     holds the creator's pid).
 * Strict where the backend must get things right: any other layout, or a
 * missing property, makes IOSurfaceCreate fail; CFNumbers and the kCFType
 * callbacks only; the base address is NULL unless the surface is locked;
 * CFRelease of a surface still locked by this reference aborts.  CFStrings,
 * CFNumbers, CFDictionaries and the surfaces are distinct structs tagged by
 * a magic number.  fake_iosurface_last_create() tells a test the layout the
 * last IOSurfaceCreate of this process was given.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>

#define API __attribute__((visibility("default")))

/* The exported API (declared for -Wmissing-prototypes; types as in
 * proto/anes_shm.c: every CF object is a const void *). */
API void *CFDictionaryCreateMutable(const void *alloc, long cap, const void *kcb, const void *vcb);
API void CFDictionarySetValue(void *dict, const void *k, const void *v);
API const void *CFNumberCreate(const void *alloc, long type, const void *p);
API void CFRelease(const void *o);
API const void *IOSurfaceCreate(const void *props);
API const void *IOSurfaceLookup(uint32_t id);
API uint32_t IOSurfaceGetID(const void *o);
API int IOSurfaceLock(const void *o, uint32_t options, uint32_t *seed);
API int IOSurfaceUnlock(const void *o, uint32_t options, uint32_t *seed);
API void *IOSurfaceGetBaseAddress(const void *o);
API size_t IOSurfaceGetAllocSize(const void *o);
API size_t IOSurfaceAlignProperty(const void *property, size_t value);
API int fake_iosurface_live(void);
API void fake_iosurface_last_create(int64_t ret[4]);

#define FAKE_PAGE 16384u
#define FAKE_ROW_ALIGN 64u

enum { M_STR = 0x53545221, M_NUM = 0x4e554d21, M_DICT = 0x44494321, M_BOOL = 0x424f4f21,
       M_SURF = 0x53555221 };

typedef struct fstr { uint32_t magic; const char *s; } fstr;
typedef struct fnum { uint32_t magic; int64_t v; } fnum;
typedef struct fbool { uint32_t magic; int v; } fbool;
typedef struct fdict {
	uint32_t magic;
	unsigned n;
	const void *k[16], *v[16];
} fdict;
typedef struct fsurf {
	uint32_t magic;
	uint32_t id;
	int locks;
	void *base;
	size_t size;
	char link[256];
} fsurf;

/* ---- CoreFoundation ------------------------------------------------------------ */

static const fbool true_obj = { M_BOOL, 1 };
API const void *const kCFBooleanTrue = &true_obj;
/* CFDictionaryKeyCallBacks / ValueCallBacks: only their addresses matter */
API const long kCFTypeDictionaryKeyCallBacks[6] = { 0 };
API const long kCFTypeDictionaryValueCallBacks[5] = { 0 };

#define KEY(name) \
	static const fstr name##_obj = { M_STR, #name }; \
	API const void *const name = &name##_obj;
KEY(kIOSurfaceWidth)
KEY(kIOSurfaceHeight)
KEY(kIOSurfaceBytesPerElement)
KEY(kIOSurfaceBytesPerRow)
KEY(kIOSurfaceAllocSize)
KEY(kIOSurfacePixelFormat)
KEY(kIOSurfaceIsGlobal)

API void *CFDictionaryCreateMutable(const void *alloc, long cap, const void *kcb, const void *vcb)
{
	if (alloc || cap != 0 || kcb != kCFTypeDictionaryKeyCallBacks ||
	    vcb != kCFTypeDictionaryValueCallBacks)
		abort();   /* the backend passes kCFAllocatorDefault, 0, &kCFType... */
	fdict *d = calloc(1, sizeof *d);
	if (d)
		d->magic = M_DICT;
	return d;
}

API void CFDictionarySetValue(void *dict, const void *k, const void *v)
{
	fdict *d = dict;
	if (!d || d->magic != M_DICT || !k || !v || ((const fstr *)k)->magic != M_STR)
		abort();
	for (unsigned i = 0; i < d->n; i++)
		if (d->k[i] == k) {
			d->v[i] = v;
			return;
		}
	if (d->n == 16)
		abort();
	d->k[d->n] = k;
	d->v[d->n++] = v;
}

API const void *CFNumberCreate(const void *alloc, long type, const void *p)
{
	fnum *n = calloc(1, sizeof *n);
	if (!n || alloc)
		abort();
	n->magic = M_NUM;
	if (type == 3)          /* kCFNumberSInt32Type */
		n->v = *(const int32_t *)p;
	else if (type == 4)     /* kCFNumberSInt64Type */
		n->v = *(const int64_t *)p;
	else
		abort();
	return n;
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned link_serial;
static int64_t last_create[4] = { -1, -1, -1, -1 };   /* width, bpr, alloc asked; alloc given */
static int live_surfaces;   /* references in this process */

API void CFRelease(const void *o)
{
	if (!o)
		abort();
	uint32_t magic = *(const uint32_t *)o;
	if (magic == M_NUM || magic == M_DICT) {
		free((void *)o);
		return;
	}
	if (magic != M_SURF)
		abort();
	fsurf *s = (fsurf *)o;
	if (s->locks != 0)
		abort();   /* released while locked */
	const char *dir = getenv("ANESHARE_FAKE_IOSURFACE_DIR");
	char path[256];
	snprintf(path, sizeof path, "%s/%u", dir, s->id);
	pthread_mutex_lock(&lock);
	unlink(s->link);
	struct stat st;
	if (stat(path, &st) == 0 && st.st_nlink == 1) {
		unlink(path);   /* no reference left anywhere */
		snprintf(path, sizeof path, "%s/%u.owner", dir, s->id);
		unlink(path);
	}
	live_surfaces--;
	pthread_mutex_unlock(&lock);
	munmap(s->base, s->size);
	s->magic = 0;
	free(s);
}

/* ---- IOSurface ------------------------------------------------------------------- */

static int64_t prop(const fdict *d, const void *key, int *missing)
{
	for (unsigned i = 0; i < d->n; i++)
		if (d->k[i] == key) {
			const fnum *n = d->v[i];
			if (n->magic == M_BOOL)
				return ((const fbool *)d->v[i])->v;
			if (n->magic != M_NUM)
				abort();
			return n->v;
		}
	(*missing)++;
	return -1;
}

/* Whether this process may look surface id up: a global surface, or one
 * this process created. */
static int visible(const char *dir, uint32_t id)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%u.owner", dir, id);
	FILE *f = fopen(path, "re");
	if (!f)
		return 1;   /* global */
	long pid = -1;
	int ok = fscanf(f, "%ld", &pid) == 1 && pid == (long)getpid();
	fclose(f);
	return ok;
}

/* Map DIR/ID and add this reference's link; NULL if there is no DIR/ID. */
static fsurf *open_surface(uint32_t id, int fd)
{
	const char *dir = getenv("ANESHARE_FAKE_IOSURFACE_DIR");
	char path[256];
	snprintf(path, sizeof path, "%s/%u", dir, id);
	int own = -1;
	if (fd < 0 && !visible(dir, id))
		return NULL;
	if (fd < 0)
		fd = own = open(path, O_RDWR | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size <= 0) {
		if (own >= 0)
			close(own);
		return NULL;
	}
	fsurf *s = calloc(1, sizeof *s);
	void *p = s ? mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
	            : MAP_FAILED;
	if (own >= 0)
		close(own);
	if (p == MAP_FAILED) {
		free(s);
		return NULL;
	}
	*s = (fsurf){ .magic = M_SURF, .id = id, .base = p, .size = (size_t)st.st_size };
	pthread_mutex_lock(&lock);
	snprintf(s->link, sizeof s->link, "%s/%u.%d.%u", dir, id, (int)getpid(), link_serial++);
	int r = link(path, s->link);
	if (r == 0)
		live_surfaces++;
	pthread_mutex_unlock(&lock);
	if (r < 0) {   /* DIR/ID went away meanwhile */
		munmap(p, s->size);
		free(s);
		return NULL;
	}
	return s;
}

API const void *IOSurfaceCreate(const void *props)
{
	const fdict *d = props;
	const char *dir = getenv("ANESHARE_FAKE_IOSURFACE_DIR");
	if (!d || d->magic != M_DICT || !dir)
		abort();
	int missing = 0;
	int64_t w = prop(d, kIOSurfaceWidth, &missing), h = prop(d, kIOSurfaceHeight, &missing),
	        bpe = prop(d, kIOSurfaceBytesPerElement, &missing),
	        bpr = prop(d, kIOSurfaceBytesPerRow, &missing),
	        alloc = prop(d, kIOSurfaceAllocSize, &missing),
	        fmt = prop(d, kIOSurfacePixelFormat, &missing);
	/* kIOSurfaceIsGlobal is optional (default false); the rest is the flat
	 * layout, aligned or not; anything else is a bug in the backend */
	int no_global = 0;
	int64_t global = prop(d, kIOSurfaceIsGlobal, &no_global);
	int has_global = !no_global;
	if (!has_global)
		global = 0;
	pthread_mutex_lock(&lock);
	last_create[0] = w;
	last_create[1] = bpr;
	last_create[2] = alloc;
	last_create[3] = -1;
	pthread_mutex_unlock(&lock);
	if (missing || d->n != 6u + (unsigned)has_global || w <= 0 || h != 1 || bpe != 1 || bpr < w ||
	    alloc < bpr || alloc > ((int64_t)1 << 40) || fmt != 0 || (global != 0 && global != 1))
		return NULL;
	if (getenv("FAKE_IOSURFACE_FAIL_CREATE"))
		return NULL;
	int64_t pages = (alloc + FAKE_PAGE - 1) / FAKE_PAGE * FAKE_PAGE;
	for (int tries = 0; tries < 100; tries++) {
		uint32_t id;
		if (getentropy(&id, sizeof id) != 0)
			return NULL;
		id = id % 1000000 + 1;   /* small positive IDs, like the real ones */
		char path[256];
		snprintf(path, sizeof path, "%s/%u", dir, id);
		int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0 && errno == EEXIST)
			continue;
		if (fd < 0)
			return NULL;
		fsurf *s = NULL;
		int ok = 1;
		if (!global) {   /* only this process may look it up */
			char owner[300];
			snprintf(owner, sizeof owner, "%s.owner", path);
			FILE *f = fopen(owner, "we");
			ok = f && fprintf(f, "%ld\n", (long)getpid()) > 0;
			if (f && fclose(f) != 0)
				ok = 0;
		}
		if (ok && ftruncate(fd, (off_t)pages) == 0)
			s = open_surface(id, fd);
		close(fd);
		if (!s) {
			unlink(path);
			char owner[300];
			snprintf(owner, sizeof owner, "%s.owner", path);
			unlink(owner);
		}
		if (s) {
			pthread_mutex_lock(&lock);
			last_create[3] = (int64_t)s->size;
			pthread_mutex_unlock(&lock);
		}
		return s;
	}
	return NULL;
}

API const void *IOSurfaceLookup(uint32_t id)
{
	return open_surface(id, -1);
}

static fsurf *surf(const void *o)
{
	fsurf *s = (fsurf *)o;
	if (!s || s->magic != M_SURF)
		abort();
	return s;
}

API uint32_t IOSurfaceGetID(const void *o)
{
	return surf(o)->id;
}

API int IOSurfaceLock(const void *o, uint32_t options, uint32_t *seed)
{
	fsurf *s = surf(o);
	if (options != 0 || seed)
		abort();   /* the backend locks read-write, without a seed */
	s->locks++;
	return 0;
}

API int IOSurfaceUnlock(const void *o, uint32_t options, uint32_t *seed)
{
	fsurf *s = surf(o);
	if (options != 0 || seed || s->locks == 0)
		abort();
	s->locks--;
	return 0;
}

API void *IOSurfaceGetBaseAddress(const void *o)
{
	fsurf *s = surf(o);
	return s->locks ? s->base : NULL;   /* strict: only while locked */
}

API size_t IOSurfaceGetAllocSize(const void *o)
{
	return surf(o)->size;
}

API size_t IOSurfaceAlignProperty(const void *property, size_t value)
{
	size_t a = 1;
	if (property == kIOSurfaceBytesPerRow)
		a = FAKE_ROW_ALIGN;
	else if (property == kIOSurfaceAllocSize)
		a = FAKE_PAGE;
	else if (!property || ((const fstr *)property)->magic != M_STR)
		abort();
	return value % a ? value + (a - value % a) : value;
}

/* For the tests: the width, bytes per row and alloc size that the last
 * IOSurfaceCreate of this process was given, and the alloc size it made
 * (-1: it failed). */
API void fake_iosurface_last_create(int64_t ret[4])
{
	pthread_mutex_lock(&lock);
	memcpy(ret, last_create, sizeof last_create);
	pthread_mutex_unlock(&lock);
}

/* For the tests: references alive in this process. */
API int fake_iosurface_live(void)
{
	pthread_mutex_lock(&lock);
	int n = live_surfaces;
	pthread_mutex_unlock(&lock);
	return n;
}
