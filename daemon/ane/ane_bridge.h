/* SPDX-License-Identifier: MIT */
/*
 * The one door between aneshare and Apple's libraries.
 *
 * Every Apple symbol the ANE backend uses (libobjc, Foundation/CoreFoundation,
 * IOSurface, AppleNeuralEngine.framework) is reached through this struct of
 * function pointers and constants.  Nothing here includes an Apple header: the
 * types below are the project's own opaque declarations, so the backend
 * compiles on every platform.
 *
 *   anes_ane_bridge_open()  the real bridge: dlopen()s the frameworks and
 *                           dlsym()s the symbols (daemon/ane/ane_bridge.c).
 *                           On a machine without the frameworks (Linux, or a
 *                           Mac without an ANE) it fails with -ENODEV and
 *                           "no ANE on this machine (...)".
 *   tests/ane_fake.c        a fake Objective-C runtime with the same shape,
 *                           which records every message and counts objects.
 *
 * objc_msgSend has no prototype of its own: callers must call it through a
 * function pointer of the exact type of the method they send.  The send_*
 * members below are those casts, one per method shape the backend uses, all
 * pointing at the same objc_msgSend in the real bridge.  Keeping them here
 * keeps the casts in one place; a wrong shape is a silent ABI bug, so every
 * use in the backend names its shape in a comment.
 *
 * Ownership follows Cocoa's manual rules: objects returned by class factory
 * methods (+dictionary, +dataWithBytes:length:, +modelWithMILText:..., ...)
 * are autoreleased, so every call sequence runs inside pool_push()/pool_pop()
 * and objects kept beyond it are sent "retain" (and later "release").
 */
#ifndef ANES_ANE_BRIDGE_H
#define ANES_ANE_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

/* Opaque stand-ins for Apple's types. */
typedef struct anes_objc_object *anes_id;        /* id (and Class: a class is an object); NULL is nil */
typedef const struct anes_objc_selector *anes_sel; /* SEL */
typedef struct anes_iosurface *anes_iosurface;   /* IOSurfaceRef */
typedef signed char anes_objc_bool;              /* BOOL: read as 0 / non-zero only */

/* IOSurfaceLock option (kIOSurfaceLockReadOnly in IOSurfaceTypes.h) */
#define ANES_IOSURFACE_LOCK_READ_ONLY 1u

typedef struct anes_ane_bridge {
	const char *name;                           /* "macos", "fake", ... (for logs) */

	/* ---- libobjc ---- */
	anes_id (*get_class)(const char *name);     /* objc_getClass; NULL if unknown */
	anes_sel (*sel_register)(const char *name); /* sel_registerName */
	void *(*pool_push)(void);                   /* objc_autoreleasePoolPush */
	void (*pool_pop)(void *pool);               /* objc_autoreleasePoolPop */

	/* ---- objc_msgSend, one pointer per method shape ---- */
	/* - (id)m  e.g. hexStringIdentifier, retain, localizedDescription, +dictionary */
	anes_id (*send)(anes_id self, anes_sel op);
	/* - (id)m:(id)a  e.g. +inMemoryModelWithDescriptor: */
	anes_id (*send_id)(anes_id self, anes_sel op, anes_id a);
	/* - (id)m:(id)a :(id)b :(id)c  e.g. +modelWithMILText:weights:optionsPlist: */
	anes_id (*send_id3)(anes_id self, anes_sel op, anes_id a, anes_id b, anes_id c);
	/* - (id)m:(id)a ... :(id)g  +requestWithInputs:inputIndices:outputs:outputIndices:
	 *   weightsBuffer:perfStats:procedureIndex: */
	anes_id (*send_id7)(anes_id self, anes_sel op, anes_id a, anes_id b, anes_id c, anes_id d,
	                    anes_id e, anes_id f, anes_id g);
	/* - (id)m:(const void *)p  e.g. +stringWithUTF8String:, +objectWithIOSurface: */
	anes_id (*send_ptr)(anes_id self, anes_sel op, const void *p);
	/* - (id)m:(const void *)p :(NSUInteger)n  e.g. +dataWithBytes:length:, +arrayWithObjects:count: */
	anes_id (*send_ptr_ulong)(anes_id self, anes_sel op, const void *p, unsigned long n);
	/* - (id)m:(unsigned long long)v  +numberWithUnsignedLongLong: */
	anes_id (*send_ullong)(anes_id self, anes_sel op, unsigned long long v);
	/* - (void)m  release */
	void (*send_void)(anes_id self, anes_sel op);
	/* - (void)m:(id)a :(id)b  -setObject:forKey: */
	void (*send_void_id_id)(anes_id self, anes_sel op, anes_id a, anes_id b);
	/* - (const char *)m  -UTF8String */
	const char *(*send_cstr)(anes_id self, anes_sel op);
	/* - (BOOL)m  +hasANE */
	anes_objc_bool (*send_bool)(anes_id self, anes_sel op);
	/* - (BOOL)m:(SEL)s  +respondsToSelector: */
	anes_objc_bool (*send_bool_sel)(anes_id self, anes_sel op, anes_sel s);
	/* - (BOOL)m:(unsigned)qos :(id)options :(NSError **)err
	 *   compileWithQoS:options:error:, loadWithQoS:options:error: */
	anes_objc_bool (*send_bool_u32_id_err)(anes_id self, anes_sel op, uint32_t qos, anes_id options,
	                                       anes_id *err);
	/* - (BOOL)m:(unsigned)qos :(id)options :(id)request :(NSError **)err
	 *   evaluateWithQoS:options:request:error: */
	anes_objc_bool (*send_bool_u32_id_id_err)(anes_id self, anes_sel op, uint32_t qos, anes_id options,
	                                          anes_id request, anes_id *err);
	/* - (BOOL)m:(unsigned)qos :(NSError **)err  unloadWithQoS:error: */
	anes_objc_bool (*send_bool_u32_err)(anes_id self, anes_sel op, uint32_t qos, anes_id *err);

	/* ---- Foundation ---- */
	anes_id (*temporary_directory)(void);       /* NSTemporaryDirectory(): autoreleased NSString */

	/* ---- CoreFoundation ---- */
	void (*cf_release)(const void *cf);         /* CFRelease (IOSurfaceRef) */

	/* ---- IOSurface ---- */
	/* IOSurfaceCreate; the property dictionary is an NSDictionary (toll-free
	 * bridged to CFDictionaryRef).  Returns +1 (cf_release it) or NULL. */
	anes_iosurface (*surface_create)(anes_id properties);
	int (*surface_lock)(anes_iosurface s, uint32_t options, uint32_t *seed);   /* kern_return_t, 0 = ok */
	int (*surface_unlock)(anes_iosurface s, uint32_t options, uint32_t *seed);
	void *(*surface_base)(anes_iosurface s);                                   /* IOSurfaceGetBaseAddress */
	size_t (*surface_alloc_size)(anes_iosurface s);                            /* IOSurfaceGetAllocSize */
	/* IOSurfaceAlignProperty: value rounded up to what property needs
	 * (key_bytes_per_row, key_alloc_size) */
	size_t (*surface_align)(anes_id property, size_t value);
	/* the property keys (CFStringRef constants, toll-free bridged to NSString) */
	anes_id key_width, key_height, key_bytes_per_element, key_bytes_per_row, key_alloc_size,
	        key_pixel_format;

	/* ---- the process ---- */
	/* Sleep ms milliseconds (the load retry's pause).  The real bridge
	 * sleeps; the fake records the call and returns at once, so tests do
	 * not wait on the clock. */
	void (*sleep_ms)(unsigned ms);
} anes_ane_bridge;

/* Open the real bridge (process-wide, opened once, never closed: frameworks
 * that register Objective-C classes cannot be unloaded).  On success *ret
 * points to it.  On failure returns -ENODEV and writes "no ANE on this machine
 * (REASON)" to errbuf (NUL-terminated when errbuf_len > 0). */
int anes_ane_bridge_open(const anes_ane_bridge **ret, char *errbuf, size_t errbuf_len);

#endif
