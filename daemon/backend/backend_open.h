/* SPDX-License-Identifier: MIT */
/*
 * Which backend the daemon uses, decided once (docs/worker.md, "Backends"):
 * cpu, ane or auto (the ANE where its frameworks open, else the CPU), in
 * this process or behind the proxy backend in device worker processes
 * (devworker.h).  main.c calls anes_backend_check right after the options
 * and anes_backend_open once it is ready to serve; the device worker
 * process makes its backend with anes_backend_new_local.
 */
#ifndef ANES_BACKEND_OPEN_H
#define ANES_BACKEND_OPEN_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

typedef struct anes_backend_choice {
	const char *backend;        /* "cpu", "ane" or "auto" */
	int worker;                 /* 1: device workers, 0: in this process (--no-worker),
	                             * -1: the backend's default (workers for ane only) */
	uint32_t compile_budget;    /* per worker process; UINT32_MAX: the backend's
	                             * default (ANES_ANE_COMPILE_BUDGET for ane, none for cpu) */
	unsigned max_workers;       /* device worker processes at once */
	uint32_t run_floor_ms;      /* the watchdog's floors (0: its defaults) */
	uint32_t compile_floor_ms;
	unsigned threads;           /* request threads in a worker (0: 2) */
	const char *fault;          /* --worker-fault, a test hook, or NULL */
} anes_backend_choice;

/* Whether c can be opened at all, before anything is started: 0, or
 * -EINVAL with the reason in why (an unknown name; ane in this process).
 * A configuration error: the daemon exits with EX_CONFIG. */
int anes_backend_check(const anes_backend_choice *c, char *why, size_t whylen);

/* Open the backend c names.  auto opens the ANE where it can (and says on
 * stderr why it uses the CPU otherwise).  With a device worker the
 * in-process backend was only the probe: the proxy starts the first worker
 * (docs/worker.md) and *ret is the proxy.  0 and *ret (owned by the caller:
 * (*ret)->ops->destroy), or a negative errno and the reason in why:
 * -EINVAL is a configuration error (auto found the ANE under --no-worker),
 * anything else a failure to start. */
int anes_backend_open(const anes_backend_choice *c, anes_backend **ret, char *why, size_t whylen);

/* The backend named name ("cpu" or "ane") in this process, with no worker:
 * the device worker's own.  0 and *ret (the caller's), or a negative errno
 * and, where there is one, the reason in why. */
int anes_backend_new_local(const char *name, anes_backend **ret, char *why, size_t whylen);

#endif
