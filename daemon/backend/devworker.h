/* SPDX-License-Identifier: MIT */
/*
 * The device worker (docs/worker.md): a child process of the daemon that
 * hosts the real backend, and the proxy backend that forwards compiles and
 * runs to it over a private socketpair.
 *
 * Private protocol: every message is a 16-byte header in host byte order
 * (both ends are the same binary on the same machine) followed by len
 * payload bytes; a surface's memfd rides with the first byte of its
 * SURFACE_ADD message (SCM_RIGHTS), and a COMPILE's weight files with the
 * first byte of the COMPILE; a surface named by IOSurface ID is
 * shared with SURFACE_ADD_ID instead, which carries the ID.  See docs/worker.md for the payloads.
 */
#ifndef ANES_DEVWORKER_H
#define ANES_DEVWORKER_H

#include <errno.h>
#include <stdbool.h>
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
	ANES_WM_COMPILE = 16,       /* id becomes the program ID: u32 mil_len, u32 n, u32 n_fds, mil,
	                             * n x {u32 path_len, u32 fd index, u64 offset, u64 len, path};
	                             * n_fds weight files attached */
	ANES_WM_RUN = 17,           /* u64 program, u32 fn, u32 n, n x {u64 key, u64 offset} */
	ANES_WM_SURFACE_ADD = 18,   /* id = key: u64 size; one fd */
	ANES_WM_SURFACE_DROP = 19,  /* id = key */
	ANES_WM_PROGRAM_FREE = 20,  /* id = program ID */
	ANES_WM_SURFACE_ADD_ID = 21, /* id = key: u64 size, u32 IOSurface ID; no fd */
};

/* Largest payload either side accepts.  Weights never travel in a payload
 * (they are files passed by fd), so this bounds the MIL text of a compile
 * and nothing else of size. */
#define ANES_WMSG_MAX (1u << 30)
#define ANES_WMSG_MAX_FDS 8        /* fds attached to one message */
#define ANES_WMSG_MAX_WEIGHTS 4096 /* weights of one COMPILE */

/* Blocking send of one message (header + iov), with fd (or -1) attached.
 * MSG_NOSIGNAL; 0 or -errno.  A failure after part of the message was
 * written is -EPIPE (the stream is broken); any other error means nothing
 * was written (anes_wmsg_unsent: the stream is still in step, e.g. the
 * kernel refused the fds). */
int anes_wmsg_send(int fd, uint32_t type, uint64_t id, const struct iovec *iov, int niov,
                   int pass_fd);
/* The same with nfds fds (borrowed) attached, at most ANES_WMSG_MAX_FDS
 * (-EINVAL otherwise). */
int anes_wmsg_send_fds(int fd, uint32_t type, uint64_t id, const struct iovec *iov, int niov,
                       const int *fds, unsigned nfds);
static inline bool anes_wmsg_unsent(int r)
{
	return r == -ETOOMANYREFS || r == -EMFILE || r == -ENFILE || r == -ENOBUFS || r == -ENOMEM;
}
/* Blocking receive of one message.  On success *ret_payload is malloc'd
 * (NULL when len is 0) and *ret_fd is a received fd (CLOEXEC) or -1; both
 * owned by the caller.  -EPIPE at a clean EOF between messages; -EBADMSG
 * for a malformed message, or one with more than one fd or fds that could
 * not be received. */
int anes_wmsg_recv(int fd, anes_wmsg_hdr *ret_hdr, void **ret_payload, int *ret_fd);
/* The same, with up to ANES_WMSG_MAX_FDS fds: ret_fds[0 .. *ret_nfds - 1]
 * are received fds (CLOEXEC, owned by the caller).  Returns 0, or
 * ANES_WMSG_FDS_LOST (> 0) when the message was read whole but the fds sent
 * with it could not all be received (more than ANES_WMSG_MAX_FDS, or this
 * process's fd table full): the stream is still in step, *ret_nfds is 0 and
 * every fd that came was closed; the caller refuses that message. */
#define ANES_WMSG_FDS_LOST 1
int anes_wmsg_recv_fds(int fd, anes_wmsg_hdr *ret_hdr, void **ret_payload,
                       int ret_fds[ANES_WMSG_MAX_FDS], unsigned *ret_nfds);

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

/* The watchdog's deadlines (docs/worker.md, "Watchdog"), in ms from when
 * the request was sent.  Pure functions of their inputs (times are inputs),
 * so the rules are tested without a clock. */
#define ANES_WD_RUN_FACTOR 10             /* a run may take 10x its program's recent runs */
#define ANES_WD_COMPILE_MS_PER_STMT 20    /* compile: 20 ms per MIL statement ... */
#define ANES_WD_COMPILE_BYTES_PER_S (16ull << 20)  /* ... and 1 s per 16 MiB of weights */
#define ANES_WD_RUN_BYTES_PER_S (64ull << 20)      /* a first run: 1 s per 64 MiB of weights and tensors */
#define ANES_WD_RUN_FLOOR_MS 5000         /* default floors (--run-deadline-floor-ms, */
#define ANES_WD_COMPILE_FLOOR_MS 30000    /* --compile-deadline-floor-ms) */

/* A compile of a program with statements MIL statements and weight_bytes of
 * weights: the floor plus time in proportion to its size, so that a model of
 * several GB gets minutes. */
static inline uint64_t anes_wd_compile_ms(uint64_t floor_ms, uint64_t statements,
                                          uint64_t weight_bytes)
{
	return floor_ms + statements * ANES_WD_COMPILE_MS_PER_STMT +
	       weight_bytes * 1000 / ANES_WD_COMPILE_BYTES_PER_S;
}

/* A run of a program whose recent runs took up to recent_us (0: none yet,
 * then the size of its weights and tensors stands in). */
static inline uint64_t anes_wd_run_ms(uint64_t floor_ms, uint64_t recent_us, uint64_t bytes)
{
	uint64_t ms = recent_us ? recent_us * ANES_WD_RUN_FACTOR / 1000
	                        : bytes * 1000 / ANES_WD_RUN_BYTES_PER_S;
	return ms > floor_ms ? ms : floor_ms;
}

/* The recent run time after a run of run_us: the longest run, decaying by
 * 1/8 per run, so that one slow run raises it at once and it comes down
 * over a few dozen fast ones. */
static inline uint64_t anes_wd_recent_us(uint64_t recent_us, uint64_t run_us)
{
	uint64_t decayed = recent_us - recent_us / 8;
	return run_us > decayed ? run_us : decayed;
}

/* Device worker processes at once by default (--max-device-workers): each
 * has its own compile budget, so the daemon holds up to this many budgets'
 * worth of programs.  They are started only when needed. */
#define ANES_DEVICE_WORKERS_DEFAULT 8

/* The recent run time after the watchdog killed a run that had been
 * waiting for waited_us: it counts as a run that long, so that the program's
 * next run gets ten times as long (a slow first run is not killed forever). */
static inline uint64_t anes_wd_killed_us(uint64_t recent_us, uint64_t waited_us)
{
	return waited_us > recent_us ? waited_us : recent_us;
}

/* The proxy backend (the daemon side). */
typedef struct anes_wproxy_config {
	const char *exe;              /* the aneshared binary, run as EXE --worker-child 3 ... */
	const char *backend;          /* "cpu" or "ane" */
	uint32_t compile_budget;      /* compiles per worker process; 0 = unlimited */
	unsigned max_workers;         /* device worker processes at once (0: 1) */
	uint32_t run_floor_ms;        /* watchdog deadline floors (0: the defaults above) */
	uint32_t compile_floor_ms;
	unsigned threads;             /* request threads in the worker */
	const char *fault;            /* --worker-fault VALUE for tests, or NULL */
} anes_wproxy_config;

/* Start the first worker and wait (bounded) until it answers.  On failure
 * a one-line reason is written to errbuf.  On success *ret is owned by the
 * caller (ret->ops->destroy stops the worker and reaps it). */
int anes_wproxy_new(const anes_wproxy_config *cfg, anes_backend **ret, char *errbuf,
                    size_t errbuf_len);

#endif
