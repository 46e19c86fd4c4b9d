/* SPDX-License-Identifier: MIT */
/*
 * Surface memory backends, shared by aneshared and libaneshare.
 *
 * A surface is memory both processes map.  How it crosses the process
 * boundary depends on the platform (docs/protocol.md, "Surfaces"):
 *
 *   memfd      Linux.  The memory is an fd passed with SCM_RIGHTS; it has no
 *              wire ID.  This is the default on Linux.  The daemon and the
 *              library still use their own fd paths for it (the seam only
 *              describes it, so that callers can ask ops->by_id).
 *   iosurface  macOS.  The memory is an IOSurface, named on the wire by its
 *              IOSurfaceID (32 bits); the peer finds it with IOSurfaceLookup.
 *              IOSurface.framework and CoreFoundation are reached through
 *              dlopen/dlsym, so this compiles everywhere; where they are
 *              missing (Linux) create and lookup return -ENOTSUP.
 *
 * Selection (anes_shm_default): memfd on Linux, iosurface elsewhere.  In
 * builds with the test hooks (meson -Dtest_hooks=true, off by default; the
 * builds of scripts/test.sh) two environment variables exist for the tests:
 *   ANESHARE_SURFACES=memfd|iosurface     overrides the choice;
 *   ANESHARE_IOSURFACE_LIB=PATH           is dlopen()ed in place of both
 *                                         IOSurface.framework and
 *                                         CoreFoundation (tests/fake_iosurface.c).
 * Other builds ignore both.  docs/security.md explains what naming
 * surfaces by a global ID exposes.
 */
#ifndef ANES_SHM_H
#define ANES_SHM_H

#include <stdbool.h>
#include <stdint.h>

typedef struct anes_shm_ops anes_shm_ops;

/* The smallest IOSurface the IOSurface backend makes: the smallest
 * allocation the public record reports to work for an ANE evaluation
 * (mechramc/Orion docs/ane_constraints.md, section 4: status 0x1d with
 * 3,072 bytes, 49,152 the minimum working size found; libane pads to it;
 * docs/ane.md).  Surfaces made for a program's tensors can then go to the
 * device as they are.  Not measured by this project. */
#define ANES_SHM_IOSURFACE_MIN_BYTES 49152u

/* One reference to a surface's memory in this process, mapped read-write
 * for its whole life.  Fields are read-only for users. */
typedef struct anes_shm {
	const anes_shm_ops *ops;
	void *base;        /* size bytes (at least), valid until release */
	uint64_t size;     /* bytes usable at base */
	uint32_t id;       /* the wire ID (IOSurfaceID); 0 for memfd */
	void *ref;         /* backend's object (IOSurfaceRef, +1) */
} anes_shm;

struct anes_shm_ops {
	const char *name;  /* "memfd", "iosurface" */
	bool by_id;        /* surfaces are named on the wire by ID, not passed as fds */
	/* A new surface of at least size bytes; *ret owned by the caller
	 * (release).  -EINVAL (size 0 or too big), -ENOTSUP (no backend
	 * library), -ENOMEM.  *ret set only on success. */
	int (*create)(uint64_t size, anes_shm **ret);
	/* A new reference to the existing surface id.  -ENOENT (no such
	 * surface, or not visible to this process), -ENOTSUP, -ENOMEM, -EIO
	 * (it cannot be locked or has no memory). */
	int (*lookup)(uint32_t id, anes_shm **ret);
	/* Unmap and drop the reference; NULL is ignored. */
	void (*release)(anes_shm *h);
};

/* The implementations; never NULL. */
const anes_shm_ops *anes_shm_memfd_ops(void);
const anes_shm_ops *anes_shm_iosurface_ops(void);

/* The one this process uses (see the top of the file); thread-safe, the
 * same every call. */
const anes_shm_ops *anes_shm_default(void);

#endif
