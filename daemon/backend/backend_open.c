/* SPDX-License-Identifier: MIT */
/* anes_backend_open (backend_open.h): cpu, ane or auto, here or in device workers. */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "ane_backend.h"
#include "backend_open.h"
#include "devworker.h"
#include "util.h"

#ifdef __APPLE__
#include <mach-o/dyld.h>
#endif

/* The binary to run as the device worker. */
static const char *self_exe(void)
{
#ifdef __APPLE__
	static char buf[PATH_MAX];
	uint32_t len = sizeof buf;
	return _NSGetExecutablePath(buf, &len) == 0 ? buf : "aneshared";
#else
	return "/proc/self/exe";
#endif
}

/* The framework's compile budget is per process and is never given back
 * (docs/worker.md): inside the daemon, once spent, nothing could compile
 * again until the daemon restarts. */
static const char no_worker_ane[] =
        "--no-worker: the ane backend runs only in device workers, which are replaced when "
        "their compile budget is spent (docs/worker.md); leave out --no-worker, or use --backend cpu";

int anes_backend_check(const anes_backend_choice *c, char *why, size_t whylen)
{
	if (strcmp(c->backend, "cpu") != 0 && strcmp(c->backend, "ane") != 0 &&
	    strcmp(c->backend, "auto") != 0) {
		snprintf(why, whylen, "unknown backend \"%s\" (available: cpu, ane, auto)", c->backend);
		return -EINVAL;
	}
	if (c->worker == 0 && strcmp(c->backend, "ane") == 0) {
		snprintf(why, whylen, "%s", no_worker_ane);
		return -EINVAL;
	}
	return 0;
}

int anes_backend_new_local(const char *name, anes_backend **ret, char *why, size_t whylen)
{
	if (strcmp(name, "cpu") == 0)
		return anes_cpu_backend_new(0, ret);
	const anes_ane_bridge *bridge;
	int r = anes_ane_bridge_open(&bridge, why, whylen);
	if (r == 0)
		r = anes_ane_backend_new(bridge, ret, why, whylen);
	return r;
}

int anes_backend_open(const anes_backend_choice *c, anes_backend **ret, char *why, size_t whylen)
{
	int r = anes_backend_check(c, why, whylen);
	if (r < 0)
		return r;
	anes_backend *b = NULL;
	if (strcmp(c->backend, "cpu") != 0) {
		/* ane, or auto: the ANE where the bridge opens, else the CPU (docs/ane.md) */
		char probe[512] = "";
		r = anes_backend_new_local("ane", &b, probe, sizeof probe);
		if (r < 0 && strcmp(c->backend, "ane") == 0) {
			snprintf(why, whylen, "%.400s; --backend cpu (or auto) runs the CPU reference backend",
			         probe[0] ? probe : strerror(-r));
			return r == -EINVAL ? -EIO : r;   /* not a configuration error */
		}
		if (r < 0)
			anes_log("backend auto: %s; using the cpu backend", probe[0] ? probe : strerror(-r));
	}
	if (!b) {
		r = anes_cpu_backend_new(0, &b);
		if (r < 0) {
			snprintf(why, whylen, "cannot start the cpu backend: %s", strerror(-r));
			return r == -EINVAL ? -EIO : r;
		}
	}

	const char *bname = b->ops->name ? b->ops->name : "cpu";
	bool is_ane = strcmp(bname, "ane") == 0;
	if (is_ane && c->worker == 0) {
		/* --backend auto found the ANE */
		b->ops->destroy(b);
		snprintf(why, whylen, "%s", no_worker_ane);
		return -EINVAL;
	}
	if (c->worker > 0 || (c->worker < 0 && is_ane)) {
		/* The in-process backend was the probe; the worker hosts its own. */
		anes_wproxy_config wc = {
			.exe = self_exe(),
			.backend = is_ane ? "ane" : "cpu",
			.compile_budget = c->compile_budget != UINT32_MAX ? c->compile_budget
			                  : is_ane                        ? ANES_ANE_COMPILE_BUDGET
			                                                  : 0,
			.max_workers = c->max_workers,
			.run_floor_ms = c->run_floor_ms,
			.compile_floor_ms = c->compile_floor_ms,
			.threads = c->threads ? c->threads : 2,
			.fault = c->fault,
		};
		b->ops->destroy(b);
		b = NULL;
		r = anes_wproxy_new(&wc, &b, why, whylen);
		if (r < 0) {
			if (!why[0])
				snprintf(why, whylen, "%s", strerror(-r));
			return r == -EINVAL ? -EIO : r;
		}
		anes_worker_info wi;
		b->ops->worker_info(b, &wi);
		anes_log("device worker pid %lld (backend %s, compile budget %llu)", (long long)wi.pid,
		         wi.backend, (unsigned long long)wi.compile_budget);
	}
	*ret = b;
	return 0;
}
