/* SPDX-License-Identifier: MIT */
/*
 * The device worker (docs/worker.md): a child process of the daemon that
 * hosts the real backend, and the proxy backend that forwards compiles and
 * runs to it over a private socketpair.
 *
 * Private protocol: every message is a 16-byte header in host byte order
 * (both ends are the same binary on the same machine) followed by len
 * payload bytes; a surface's memfd rides with the first byte of its
 * SURFACE_ADD message (SCM_RIGHTS); a surface named by IOSurface ID is
 * shared with SURFACE_ADD_ID instead, which carries the ID.  See docs/worker.md for the payloads.
 */
#ifndef ANES_DEVWORKER_H
#define ANES_DEVWORKER_H

#include <errno.h>
#include <stdint.h>
#include <sys/uio.h>

#include "backend.h"

typedef struct anes_wmsg_hdr {
	uint32_t len;        /* payload bytes */
	uint32_t type;       /* ANES_WM_* */
	uint64_t id;         /* request ID; the surface key; the program ID */
} anes_wmsg_hdr;

enum {
	/* worker -> daemon */
	ANES_WM_HELLO = 1,          /* id 0: u32 pid, backend name */
	ANES_WM_COMPILED = 2,       /* id of the compile: i32 rc, u32 errlen, err, functions */
	ANES_WM_RAN = 3,            /* id of the run: i32 rc, u32 errlen, err */
	/* daemon -> worker */
	ANES_WM_COMPILE = 16,       /* id becomes the program ID: u32 mil_len, u32 n, mil, weights */
	ANES_WM_RUN = 17,           /* u64 program, u32 fn, u32 n, n x {u64 key, u64 offset} */
	ANES_WM_SURFACE_ADD = 18,   /* id = key: u64 size; one fd */
	ANES_WM_SURFACE_DROP = 19,  /* id = key */
	ANES_WM_PROGRAM_FREE = 20,  /* id = program ID */
	ANES_WM_SURFACE_ADD_ID = 21, /* id = key: u64 size, u32 IOSurface ID; no fd */
};

#define ANES_WMSG_MAX (1u << 30)   /* largest payload either side accepts */

/* Blocking send of one message (header + iov), with fd (or -1) attached.
 * MSG_NOSIGNAL; 0 or -errno. */
int anes_wmsg_send(int fd, uint32_t type, uint64_t id, const struct iovec *iov, int niov,
                   int pass_fd);
/* Blocking receive of one message.  On success *ret_payload is malloc'd
 * (NULL when len is 0) and *ret_fd is a received fd (CLOEXEC) or -1; both
 * owned by the caller.  -EPIPE at a clean EOF between messages; -EBADMSG
 * for a malformed message. */
int anes_wmsg_recv(int fd, anes_wmsg_hdr *ret_hdr, void **ret_payload, int *ret_fd);

/* The worker process: serve the daemon on fd with backend b (owned by the
 * caller), running requests on n_threads threads, until the daemon closes
 * its end.  fault: the --worker-fault test hook or NULL ("compile_eio=NAME":
 * compiles of function NAME fail with -EIO as a framework failure would).
 * Returns the process's exit status. */
int anes_devworker_serve(int fd, anes_backend *b, unsigned n_threads, const char *fault);

/* The compile budget (docs/worker.md, "Compile budget").  The framework
 * fails silently and then crashes a process past about 119 compiles
 * (libane's kCompileHardLimit comment); maderix/ANE stops at 100
 * (training/stories_config.h MAX_COMPILES) and libane refuses at 115 and
 * warns at 100.  The default keeps the wider of the two margins. */
#define ANES_ANE_COMPILE_BUDGET 100

/* What a compile's result (0 or -errno, backend.h) says about the budget
 * of the process that made it.  -EINVAL and -ENOTSUP come from the
 * daemon's own checks (parse, types, the ANE op checks) before the
 * framework is called, -EBADMSG from a malformed request: not counted.
 * -EIO is a framework compile or load failure of a program that passed
 * those checks: counted, and taken as a sign that the budget is spent.
 * Anything else (a success, -ENOMEM) is counted. */
enum { ANES_COMPILE_NOT_COUNTED, ANES_COMPILE_COUNTED, ANES_COMPILE_SPENT };
static inline int anes_compile_counts(int rc)
{
	if (rc == -EINVAL || rc == -ENOTSUP || rc == -EBADMSG)
		return ANES_COMPILE_NOT_COUNTED;
	return rc == -EIO ? ANES_COMPILE_SPENT : ANES_COMPILE_COUNTED;
}

/* The proxy backend (the daemon side). */
typedef struct anes_wproxy_config {
	const char *exe;              /* the aneshared binary, run as EXE --worker-child 3 ... */
	const char *backend;          /* "cpu" or "ane" */
	uint32_t compile_budget;      /* compiles per worker process; 0 = unlimited */
	unsigned threads;             /* request threads in the worker */
	const char *fault;            /* --worker-fault VALUE for tests, or NULL */
} anes_wproxy_config;

/* Start the first worker and wait (bounded) until it answers.  On failure
 * a one-line reason is written to errbuf.  On success *ret is owned by the
 * caller (ret->ops->destroy stops the worker and reaps it). */
int anes_wproxy_new(const anes_wproxy_config *cfg, anes_backend **ret, char *errbuf,
                    size_t errbuf_len);

#endif
