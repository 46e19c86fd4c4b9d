/* SPDX-License-Identifier: MIT */
/*
 * A fake Objective-C runtime behind an anes_ane_bridge, for testing the ANE
 * backend where there is no ANE (tests/test_ane.c).
 *
 * It knows the classes and selectors the backend uses and nothing else: any
 * other message, a message sent through the wrong objc_msgSend shape, to a
 * dead object, or outside the object's life cycle (evaluate before load, a
 * loaded model released, a surface read while unlocked, an autoreleased
 * object with no pool) is recorded as a misuse.
 *
 * It counts objects (manual retain/release with autorelease pools, as Cocoa
 * does) and IOSurfaces, so a test can check that nothing is left alive.
 *
 * It records the messages that make up the ANE call sequence (to the ANE
 * classes and their objects), the IOSurface calls, and NSTemporaryDirectory,
 * one line each, with argument values rendered as text:
 *   nil, 21, "text", data(LEN:FNV32), {"k": v, ...} (keys sorted), [a, b],
 *   desc#N, model#N, request#N, surfobj#N, surface#N, &error (an NSError **).
 *
 * Failure injection: every "failable" call (object factories, every ANE
 * message, IOSurfaceCreate/Lock, NSTemporaryDirectory) gets a running index;
 * setting fk.fail_at = i makes call i fail (nil, NULL, a lock error, or NO
 * with an NSError whose localized description is fk.error_text).  The bridge
 * entry points are thread-safe, and autorelease pools are per thread.
 */
#ifndef ANES_TEST_ANE_FAKE_H
#define ANES_TEST_ANE_FAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ane_bridge.h"

typedef struct fake_view {
	uint8_t *mem;
	size_t size;
} fake_view;

typedef void (*fake_eval_fn)(const fake_view *in, size_t n_in, fake_view *out, size_t n_out);

typedef struct fake_state {
	/* ---- set by tests ---- */
	long fail_at;               /* index of the failable call that fails; -1: none */
	const char *fail_name;      /* or: the first failable call of this name fails */
	int fail_again;             /* after the injected failure, this many more calls of
	                             * the same name fail too */
	bool fail_without_error;    /* failing BOOL methods return NO with *error left nil */
	const char *error_text;     /* NSLocalizedDescription of injected NSErrors (NULL: none) */
	const char *error_domain;   /* their domain and code */
	long error_code;
	const char *missing_class;  /* objc_getClass returns nil for this name */
	bool has_ane;               /* +[_ANEDeviceInfo hasANE] (default true) */
	bool no_device_info;        /* no _ANEDeviceInfo class at all */
	char tmpdir[512];           /* what NSTemporaryDirectory() returns */
	fake_eval_fn on_evaluate;   /* what evaluate computes (default: out[k] = in[0]) */
	const char *hex_override;   /* what hexStringIdentifier returns, if set */

	/* ---- observed ---- */
	long n_failable;            /* failable calls so far */
	char failed_call[128];      /* the call that fk.fail_at made fail */
	char **log;                 /* the ANE call sequence */
	size_t n_log, cap_log;
	long live_objects;          /* non-constant objects with a reference */
	long live_surfaces;
	long pool_depth;
	long evaluations;
	anes_iosurface eval_in[8], eval_out[8];   /* the surfaces of the last evaluated request */
	size_t eval_n_in, eval_n_out;
	unsigned long slept_ms;     /* through the bridge's sleep_ms (which does not sleep) */
	char misuse[1024];          /* first misuse, "" if none */
} fake_state;

extern fake_state fk;

/* Reset everything (frees all fake objects, live or dead), set defaults. */
void fake_reset(void);
const anes_ane_bridge *fake_bridge(void);

/* "data(LEN:FNV32)" as the log renders an NSData with these bytes. */
const char *fake_data_str(const void *bytes, size_t len, char *buf, size_t buflen);
/* The hexStringIdentifier the fake gives a model: fnv-1a 64 over the MIL text
 * and each weight's path and bytes, as 16 hex digits (+ "-fake"). */
const char *fake_hex_id(const char *mil, size_t mil_len, const char *const *paths,
                        const void *const *data, const size_t *lens, size_t n, char *buf,
                        size_t buflen);

/* What -[NSError description] (description true) or -localizedDescription
 * returns for an NSError with this domain, code and NSLocalizedDescription
 * (NULL: no userInfo), in Foundation's format:
 *   Error Domain=D Code=N "L" UserInfo={NSLocalizedDescription=L}
 *   Error Domain=D Code=N "(null)"
 *   L, or: The operation couldn't be completed. (D error N.)   (with U+2019) */
const char *fake_nserror_text(bool description, const char *domain, long code, const char *localized,
                              char *buf, size_t len);

/* An IOSurface as another process (a client, the daemon) would have made
 * it, with whole pages of alloc_size bytes; not logged, never fails.  It
 * counts in live_surfaces until fake_surface_release. */
anes_iosurface fake_surface_new(size_t alloc_size);
void fake_surface_release(anes_iosurface s);
uint8_t *fake_surface_mem(anes_iosurface s);
unsigned fake_surface_serial(anes_iosurface s);

/* What evaluate computes by default: each output gets input 0's bytes. */
void default_eval_for_test(const fake_view *in, size_t n_in, fake_view *out, size_t n_out);

/* The log joined with '\n' (static buffer). */
const char *fake_log_text(void);
void fake_log_clear(void);

#endif
