/* SPDX-License-Identifier: MIT */
/*
 * Surface memory backends (anes_shm.h): memfd and IOSurface.
 *
 * The IOSurface backend makes the flat buffers of the public ANE projects
 * (maderix/ANE bridge/ane_bridge.m, make_surface; docs/ane.md step 8): width
 * N, height 1, 1 byte per element, pixel format 0.  Two things differ:
 *   - N is at least ANES_SHM_IOSURFACE_MIN_BYTES, the smallest surface the
 *     public record reports the ANE to accept, so that a surface made for a
 *     program's tensor can be handed to the device as it is (docs/ane.md);
 *   - bytes per row and alloc size are passed through IOSurfaceAlignProperty
 *     (IOSurfaceRef.h: bytes per row "should always be aligned if you choose
 *     to calculate them yourself"), so the alloc size is the aligned row.
 *     IOSurfaceGetAllocSize may still return more (whole pages).
 * It adds kIOSurfaceIsGlobal = true, without which another process's
 * IOSurfaceLookup of the ID fails (IOSurfaceRef.h; docs/security.md).
 *
 * Every Apple symbol comes from dlsym with this file's own declarations of
 * the C types (IOSurfaceRef, CFDictionaryRef... are opaque pointers here;
 * CFIndex and CFNumberType are long, IOSurfaceID uint32_t, kern_return_t
 * int).  None of that has been checked against a Mac.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "anes_config.h"
#include "anes_proto.h"
#include "anes_shm.h"

/* ---- memfd ------------------------------------------------------------------- */

typedef struct memfd_shm {
	anes_shm pub;
	int fd;            /* owned, CLOEXEC */
} memfd_shm;

static int memfd_create_shm(uint64_t size, anes_shm **ret)
{
	if (size == 0 || size > SIZE_MAX)
		return -EINVAL;
	memfd_shm *m = calloc(1, sizeof *m);
	if (!m)
		return -ENOMEM;
	int r = anes_memfd_create("aneshare-surface", size, &m->fd);
	if (r < 0) {
		free(m);
		return r;
	}
	void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
	if (p == MAP_FAILED) {
		r = -errno;
		close(m->fd);
		free(m);
		return r;
	}
	m->pub = (anes_shm){ .ops = anes_shm_memfd_ops(), .base = p, .size = size };
	*ret = &m->pub;
	return 0;
}

static int memfd_lookup(uint32_t id, anes_shm **ret)
{
	(void)id;
	(void)ret;
	return -ENOTSUP;   /* a memfd has no name: it travels as an fd */
}

static void memfd_release(anes_shm *h)
{
	if (!h)
		return;
	memfd_shm *m = (memfd_shm *)h;
	munmap(h->base, (size_t)h->size);
	close(m->fd);
	free(m);
}

static const anes_shm_ops memfd_ops = {
	.name = "memfd", .by_id = false,
	.create = memfd_create_shm, .lookup = memfd_lookup, .release = memfd_release,
};

const anes_shm_ops *anes_shm_memfd_ops(void)
{
	return &memfd_ops;
}

/* ---- IOSurface ----------------------------------------------------------------- */

#define FW "/System/Library/Frameworks/"

/* kCFNumberSInt64Type (CFNumber.h) */
#define CF_NUMBER_SINT64 4L

typedef const void *cf_ref;   /* CFTypeRef, CFStringRef, CFDictionaryRef, IOSurfaceRef */

typedef struct ios_lib {
	/* IOSurface.framework */
	cf_ref (*create)(cf_ref props);                            /* IOSurfaceCreate */
	cf_ref (*lookup)(uint32_t id);                             /* IOSurfaceLookup */
	uint32_t (*get_id)(cf_ref s);                              /* IOSurfaceGetID */
	int (*lock)(cf_ref s, uint32_t options, uint32_t *seed);   /* IOSurfaceLock, kern_return_t */
	int (*unlock)(cf_ref s, uint32_t options, uint32_t *seed); /* IOSurfaceUnlock */
	void *(*base)(cf_ref s);                                   /* IOSurfaceGetBaseAddress */
	size_t (*alloc_size)(cf_ref s);                            /* IOSurfaceGetAllocSize */
	size_t (*align)(cf_ref property, size_t value);            /* IOSurfaceAlignProperty */
	cf_ref k_width, k_height, k_bpe, k_bpr, k_alloc, k_pixfmt, k_global;   /* kIOSurface* */
	/* CoreFoundation */
	void (*release)(cf_ref o);                                 /* CFRelease */
	void *(*dict_new)(cf_ref alloc, long cap, const void *kcb, const void *vcb);  /* CFDictionaryCreateMutable */
	void (*dict_set)(void *d, cf_ref k, cf_ref v);             /* CFDictionarySetValue */
	cf_ref (*number)(cf_ref alloc, long type, const void *v);  /* CFNumberCreate */
	const void *key_cb, *value_cb;   /* &kCFTypeDictionaryKeyCallBacks, ...ValueCallBacks */
	cf_ref cf_true;                  /* kCFBooleanTrue */
} ios_lib;

static ios_lib ios;
static int ios_rc = -ENOTSUP;
static pthread_once_t ios_once = PTHREAD_ONCE_INIT;

static int sym(void *h, const char *name, void *dst, size_t n)
{
	void *p = dlsym(h, name);
	if (!p)
		return -1;
	memcpy(dst, &p, n);   /* object pointer -> function pointer, as POSIX allows */
	return 0;
}

/* *dst = *(CFTypeRef *)dlsym(h, name): a constant exported as data */
static int data(void *h, const char *name, cf_ref *dst)
{
	cf_ref *p = dlsym(h, name);
	if (!p || !*p)
		return -1;
	*dst = *p;
	return 0;
}

#define SYM(h, field, name) sym(h, name, &ios.field, sizeof ios.field)

static void ios_open(void)
{
	const char *over = anes_test_hook_env("ANESHARE_IOSURFACE_LIB");
	void *cf = dlopen(over ? over : FW "CoreFoundation.framework/CoreFoundation", RTLD_NOW | RTLD_LOCAL);
	void *io = cf ? dlopen(over ? over : FW "IOSurface.framework/IOSurface", RTLD_NOW | RTLD_LOCAL) : NULL;
	if (!io)
		return;   /* -ENOTSUP; the handles of a failed open stay loaded (harmless) */
	if (SYM(io, create, "IOSurfaceCreate") || SYM(io, lookup, "IOSurfaceLookup") ||
	    SYM(io, get_id, "IOSurfaceGetID") || SYM(io, lock, "IOSurfaceLock") ||
	    SYM(io, unlock, "IOSurfaceUnlock") || SYM(io, base, "IOSurfaceGetBaseAddress") ||
	    SYM(io, alloc_size, "IOSurfaceGetAllocSize") || SYM(io, align, "IOSurfaceAlignProperty") ||
	    data(io, "kIOSurfaceWidth", &ios.k_width) || data(io, "kIOSurfaceHeight", &ios.k_height) ||
	    data(io, "kIOSurfaceBytesPerElement", &ios.k_bpe) ||
	    data(io, "kIOSurfaceBytesPerRow", &ios.k_bpr) ||
	    data(io, "kIOSurfaceAllocSize", &ios.k_alloc) ||
	    data(io, "kIOSurfacePixelFormat", &ios.k_pixfmt) ||
	    data(io, "kIOSurfaceIsGlobal", &ios.k_global) ||
	    SYM(cf, release, "CFRelease") || SYM(cf, dict_new, "CFDictionaryCreateMutable") ||
	    SYM(cf, dict_set, "CFDictionarySetValue") || SYM(cf, number, "CFNumberCreate") ||
	    data(cf, "kCFBooleanTrue", &ios.cf_true))
		return;
	ios.key_cb = dlsym(cf, "kCFTypeDictionaryKeyCallBacks");
	ios.value_cb = dlsym(cf, "kCFTypeDictionaryValueCallBacks");
	if (!ios.key_cb || !ios.value_cb)
		return;
	ios_rc = 0;
}

static int ios_ready(void)
{
	pthread_once(&ios_once, ios_open);
	return ios_rc;
}

/* Lock the surface (for its whole life in this process) and wrap it.
 * s (+1) is taken in every case. */
static int ios_wrap(cf_ref s, uint64_t want, anes_shm **ret)
{
	anes_shm *h = calloc(1, sizeof *h);
	if (!h) {
		ios.release(s);
		return -ENOMEM;
	}
	/* Options 0: read-write.  The lock is held until release so that the
	 * base address stays valid for zero-copy access in place. */
	if (ios.lock(s, 0, NULL) != 0) {
		ios.release(s);
		free(h);
		return -EIO;
	}
	void *base = ios.base(s);
	size_t n = ios.alloc_size(s);
	uint32_t id = ios.get_id(s);
	if (!base || n == 0 || n < want || id == 0) {
		ios.unlock(s, 0, NULL);
		ios.release(s);
		free(h);
		return -EIO;
	}
	*h = (anes_shm){ .ops = anes_shm_iosurface_ops(), .base = base,
	                 .size = want ? want : (uint64_t)n, .id = id, .ref = (void *)s };
	*ret = h;
	return 0;
}

static int ios_create(uint64_t size, anes_shm **ret)
{
	int r = ios_ready();
	if (r < 0)
		return r;
	/* CFNumber holds a signed 64-bit value; IOSurface sizes are size_t;
	 * and the aligned sizes below must not wrap */
	if (size == 0 || size > SIZE_MAX / 2 || size > (uint64_t)INT64_MAX / 2)
		return -EINVAL;
	size_t width = size < ANES_SHM_IOSURFACE_MIN_BYTES ? ANES_SHM_IOSURFACE_MIN_BYTES : (size_t)size;
	size_t bpr = ios.align(ios.k_bpr, width);
	size_t alloc = bpr < width ? 0 : ios.align(ios.k_alloc, bpr);
	if (alloc < bpr || alloc > (size_t)INT64_MAX)
		return -EINVAL;
	int64_t n = (int64_t)width, nb = (int64_t)bpr, na = (int64_t)alloc, one = 1, zero = 0;
	void *props = ios.dict_new(NULL, 0, ios.key_cb, ios.value_cb);
	cf_ref num_n = ios.number(NULL, CF_NUMBER_SINT64, &n);
	cf_ref num_bpr = ios.number(NULL, CF_NUMBER_SINT64, &nb);
	cf_ref num_alloc = ios.number(NULL, CF_NUMBER_SINT64, &na);
	cf_ref num_1 = ios.number(NULL, CF_NUMBER_SINT64, &one);
	cf_ref num_0 = ios.number(NULL, CF_NUMBER_SINT64, &zero);
	cf_ref s = NULL;
	r = -ENOMEM;
	if (props && num_n && num_bpr && num_alloc && num_1 && num_0) {
		/* the flat layout (top of the file) */
		ios.dict_set(props, ios.k_width, num_n);
		ios.dict_set(props, ios.k_height, num_1);
		ios.dict_set(props, ios.k_bpe, num_1);
		ios.dict_set(props, ios.k_bpr, num_bpr);
		ios.dict_set(props, ios.k_alloc, num_alloc);
		ios.dict_set(props, ios.k_pixfmt, num_0);
		/* deprecated since macOS 10.11 ("Global surfaces are insecure"):
		 * docs/security.md */
		ios.dict_set(props, ios.k_global, ios.cf_true);
		s = ios.create(props);
	}
	if (num_0)
		ios.release(num_0);
	if (num_1)
		ios.release(num_1);
	if (num_alloc)
		ios.release(num_alloc);
	if (num_bpr)
		ios.release(num_bpr);
	if (num_n)
		ios.release(num_n);
	if (props)
		ios.release(props);
	if (!s)
		return r;
	return ios_wrap(s, size, ret);
}

static int ios_lookup(uint32_t id, anes_shm **ret)
{
	int r = ios_ready();
	if (r < 0)
		return r;
	if (id == 0)
		return -ENOENT;
	cf_ref s = ios.lookup(id);
	if (!s)
		return -ENOENT;
	return ios_wrap(s, 0, ret);
}

static void ios_release(anes_shm *h)
{
	if (!h)
		return;
	ios.unlock(h->ref, 0, NULL);
	ios.release(h->ref);
	free(h);
}

static const anes_shm_ops ios_ops = {
	.name = "iosurface", .by_id = true,
	.create = ios_create, .lookup = ios_lookup, .release = ios_release,
};

const anes_shm_ops *anes_shm_iosurface_ops(void)
{
	return &ios_ops;
}

/* ---- selection ------------------------------------------------------------------ */

static const anes_shm_ops *default_ops;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void pick_default(void)
{
#ifdef __linux__
	default_ops = &memfd_ops;
#else
	default_ops = &ios_ops;
#endif
	const char *v = anes_test_hook_env("ANESHARE_SURFACES");
	if (v && strcmp(v, "iosurface") == 0)
		default_ops = &ios_ops;
	else if (v && strcmp(v, "memfd") == 0)
		default_ops = &memfd_ops;
}

const anes_shm_ops *anes_shm_default(void)
{
	pthread_once(&default_once, pick_default);
	return default_ops;
}
