/* SPDX-License-Identifier: MIT */
/*
 * The real anes_ane_bridge: Apple's libraries through dlopen()/dlsym() only.
 *
 * This file includes no Apple header and links no Apple library, so it builds
 * (and runs) everywhere; where the frameworks are absent (Linux, or a system
 * whose frameworks lack a symbol) anes_ane_bridge_open() fails with -ENODEV.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ane_bridge.h"

#define FW "/System/Library/Frameworks/"
#define PFW "/System/Library/PrivateFrameworks/"

static anes_ane_bridge bridge;
static int open_rc = -ENODEV;
static char open_err[512];
static pthread_once_t open_once = PTHREAD_ONCE_INIT;

/* Function pointers and data pointers have the same size on every platform
 * with dlsym(); copying the bits avoids the object-to-function pointer
 * conversion ISO C leaves undefined. */
_Static_assert(sizeof(void *) == sizeof(void (*)(void)), "dlsym needs code and data pointers of one size");

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;
	char why[400];

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	snprintf(open_err, sizeof open_err, "no ANE on this machine (%s)", why);
}

static void *load(const char *path, const char *what)
{
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		const char *e = dlerror();
		fail("%s: %s", what, e ? e : "dlopen failed");
	}
	return h;
}

/* *dst (a function pointer of size n) = dlsym(h, name) */
static int fn(void *h, const char *name, void *dst, size_t n)
{
	void *p = dlsym(h, name);
	if (!p) {
		fail("symbol %s not found", name);
		return -1;
	}
	memcpy(dst, &p, n);
	return 0;
}

/* *dst = *(CFStringRef *)dlsym(h, name): a constant object exported as data */
static int key(void *h, const char *name, anes_id *dst)
{
	anes_id *p = dlsym(h, name);
	if (!p || !*p) {
		fail("symbol %s not found", name);
		return -1;
	}
	*dst = *p;
	return 0;
}

#define FN(h, field, name) fn(h, name, &b->field, sizeof b->field)

static void sleep_ms(unsigned ms)
{
	struct timespec t = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&t, &t) < 0 && errno == EINTR)
		;
}

static void open_bridge(void)
{
	anes_ane_bridge *b = &bridge;

	/* The ANE framework first: on Linux this is the informative failure. */
	void *ane = load(PFW "AppleNeuralEngine.framework/AppleNeuralEngine", "AppleNeuralEngine.framework");
	if (!ane)
		return;
	/* Its compiler and services frameworks; AppleNeuralEngine links them
	 * itself, so their absence is not fatal here. */
	(void)dlopen(PFW "ANECompiler.framework/ANECompiler", RTLD_NOW | RTLD_LOCAL);
	(void)dlopen(PFW "ANEServices.framework/ANEServices", RTLD_NOW | RTLD_LOCAL);
	void *objc = load("/usr/lib/libobjc.A.dylib", "libobjc");
	void *cf = objc ? load(FW "CoreFoundation.framework/CoreFoundation", "CoreFoundation") : NULL;
	void *foundation = cf ? load(FW "Foundation.framework/Foundation", "Foundation") : NULL;
	void *ios = foundation ? load(FW "IOSurface.framework/IOSurface", "IOSurface.framework") : NULL;
	if (!ios)
		return;

	b->name = "macos";
	b->sleep_ms = sleep_ms;
	if (FN(objc, get_class, "objc_getClass") || FN(objc, sel_register, "sel_registerName") ||
	    FN(objc, pool_push, "objc_autoreleasePoolPush") || FN(objc, pool_pop, "objc_autoreleasePoolPop"))
		return;
	/* objc_msgSend, once per method shape (ane_bridge.h) */
	if (FN(objc, send, "objc_msgSend") || FN(objc, send_id, "objc_msgSend") ||
	    FN(objc, send_id3, "objc_msgSend") || FN(objc, send_id7, "objc_msgSend") ||
	    FN(objc, send_ptr, "objc_msgSend") || FN(objc, send_ptr_ulong, "objc_msgSend") ||
	    FN(objc, send_ullong, "objc_msgSend") || FN(objc, send_void, "objc_msgSend") ||
	    FN(objc, send_void_id_id, "objc_msgSend") || FN(objc, send_cstr, "objc_msgSend") ||
	    FN(objc, send_bool, "objc_msgSend") || FN(objc, send_bool_sel, "objc_msgSend") ||
	    FN(objc, send_bool_u32_id_err, "objc_msgSend") || FN(objc, send_bool_u32_id_id_err, "objc_msgSend") ||
	    FN(objc, send_bool_u32_err, "objc_msgSend"))
		return;
	if (FN(foundation, temporary_directory, "NSTemporaryDirectory") || FN(cf, cf_release, "CFRelease"))
		return;
	if (FN(ios, surface_create, "IOSurfaceCreate") || FN(ios, surface_lock, "IOSurfaceLock") ||
	    FN(ios, surface_unlock, "IOSurfaceUnlock") || FN(ios, surface_base, "IOSurfaceGetBaseAddress") ||
	    FN(ios, surface_alloc_size, "IOSurfaceGetAllocSize") ||
	    FN(ios, surface_align, "IOSurfaceAlignProperty"))
		return;
	if (key(ios, "kIOSurfaceWidth", &b->key_width) || key(ios, "kIOSurfaceHeight", &b->key_height) ||
	    key(ios, "kIOSurfaceBytesPerElement", &b->key_bytes_per_element) ||
	    key(ios, "kIOSurfaceBytesPerRow", &b->key_bytes_per_row) ||
	    key(ios, "kIOSurfaceAllocSize", &b->key_alloc_size) ||
	    key(ios, "kIOSurfacePixelFormat", &b->key_pixel_format))
		return;
	open_rc = 0;
	open_err[0] = '\0';
}

int anes_ane_bridge_open(const anes_ane_bridge **ret, char *errbuf, size_t errbuf_len)
{
	pthread_once(&open_once, open_bridge);
	if (open_rc < 0) {
		if (errbuf && errbuf_len)
			snprintf(errbuf, errbuf_len, "%s", open_err[0] ? open_err : "no ANE on this machine");
		return open_rc;
	}
	*ret = &bridge;
	return 0;
}
