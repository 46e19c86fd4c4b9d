/* SPDX-License-Identifier: MIT */
/* aneshared: a thin shell over the server library (server.h); settings in options.c. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sysexits.h>   /* EX_CONFIG (78): a bad option or configuration; the service
                           definitions do not restart the daemon after it */
#include <unistd.h>
#include <sys/resource.h>

#include "anes_clock.h"
#include "anes_config.h"
#include "anes_proto.h"
#include "ane_backend.h"
#include "backend.h"
#include "devworker.h"
#include "mil.h"
#include "options.h"
#include "server.h"

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

/* The backend named name ("cpu" or "ane"), in this process. */
static int backend_new(const char *name, anes_backend **ret, char *why, size_t whylen)
{
	if (strcmp(name, "cpu") == 0)
		return anes_cpu_backend_new(0, ret);
	const anes_ane_bridge *bridge;
	int r = anes_ane_bridge_open(&bridge, why, whylen);
	if (r == 0)
		r = anes_ane_backend_new(bridge, ret, why, whylen);
	return r;
}

/* aneshared --worker-child FD --backend NAME --threads N --mil-limits L
 * [--worker-fault F]: the device worker (docs/worker.md), started by the
 * daemon only. */
static int worker_child_main(int argc, char **argv)
{
	int fd = -1;
	unsigned threads = 2;
	const char *backend = "cpu", *fault = NULL;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--worker-child"))
			fd = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--backend"))
			backend = argv[i + 1];
		else if (!strcmp(argv[i], "--threads"))
			threads = (unsigned)atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--worker-fault"))
			fault = argv[i + 1];
		else if (!strcmp(argv[i], "--mil-limits")) {
			anes_mil_limits l;
			if (anes_mil_limits_scan(argv[i + 1], &l) < 0 || anes_mil_set_limits(&l) < 0) {
				fprintf(stderr, "aneshared worker: bad --mil-limits %s\n", argv[i + 1]);
				return 1;
			}
		}
	}
	if (fd < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
		fprintf(stderr, "aneshared worker: no channel to the daemon\n");
		return 1;
	}
	if (fault && !strcmp(fault, "start_fail")) {
		fprintf(stderr, "aneshared worker: injected start failure (--worker-fault start_fail)\n");
		return 1;
	}
	anes_backend *b = NULL;
	char why[512] = "";
	int r = backend_new(backend, &b, why, sizeof why);
	if (r < 0) {
		fprintf(stderr, "aneshared worker: cannot start the %s backend: %s\n", backend,
		        why[0] ? why : strerror(-r));
		return 1;
	}
	int status = anes_devworker_serve(fd, b, threads, fault);
	b->ops->destroy(b);
	close(fd);
	return status;
}

/* The framework's compile budget is per process and is never given back
 * (docs/worker.md): inside the daemon, once spent, nothing could compile
 * again until the daemon restarts. */
static const char no_worker_ane[] =
        "--no-worker: the ane backend runs only in device workers, which are replaced when "
        "their compile budget is spent (docs/worker.md); leave out --no-worker, or use --backend cpu";

/* Exit on a configuration error.  Connections waiting on a socket that a
 * service manager passed are accepted and closed first: their clients see
 * the daemon hang up at once instead of waiting, and launchd or systemd,
 * which start the daemon again while the socket has connections waiting,
 * have no reason to (the daemon would only exit again).  Takes fd. */
static int config_exit(int fd)
{
	if (fd >= 0) {
		for (int i = 0; i < 4096; i++) {
			int c = accept(fd, NULL, NULL);   /* fd is non-blocking */
			if (c < 0 && errno == EINTR)
				continue;
			if (c < 0)
				break;
			close(c);
		}
		close(fd);
	}
	return EX_CONFIG;
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "--worker-child"))
		return worker_child_main(argc, argv);

	/* The socket a service manager passed, taken first so that a
	 * configuration error can still close what waits on it (config_exit). */
	int passed_fd = -1;
	int passed_r = anes_listen_fd_from_env(&passed_fd);

	anes_options opts;
	int r = anes_options_parse(&opts, argc, argv);
	if (r != 0) {
		anes_options_free(&opts);
		if (r > 0) {
			if (passed_fd >= 0)
				close(passed_fd);
			return 0;
		}
		return config_exit(passed_fd);
	}
	anes_server_config cfg = opts.cfg;
	anes_mil_set_limits(&opts.mil);   /* in range: the options checked each */
	if (strcmp(opts.backend, "cpu") != 0 && strcmp(opts.backend, "ane") != 0 &&
	    strcmp(opts.backend, "auto") != 0) {
		fprintf(stderr, "aneshared: unknown backend \"%s\" (available: cpu, ane, auto)\n", opts.backend);
		anes_options_free(&opts);
		return config_exit(passed_fd);
	}

	if (opts.worker == 0 && strcmp(opts.backend, "ane") == 0) {
		fprintf(stderr, "aneshared: %s\n", no_worker_ane);
		anes_options_free(&opts);
		return config_exit(passed_fd);
	}

	/* Builds with the test hooks: a fake clock the tests drive (anes_clock.h). */
	r = anes_clock_from_env();
	if (r < 0) {
		fprintf(stderr, "aneshared: ANESHARE_TEST_CLOCK: %s\n", strerror(-r));
		anes_options_free(&opts);
		return config_exit(passed_fd);
	}

	/* Peers that vanish must not kill the daemon; writes see EPIPE. */
	signal(SIGPIPE, SIG_IGN);

	/* One fd per client, and with a device worker one per surface. */
	uint64_t nofile_old, nofile;
	r = anes_raise_nofile(&nofile_old, &nofile);
	if (r < 0) {
		struct rlimit rl = { 0, 0 };
		(void)getrlimit(RLIMIT_NOFILE, &rl);
		fprintf(stderr, "aneshared: the file descriptor limit (RLIMIT_NOFILE) is %llu, hard %llu: "
		        "the daemon needs at least %d (raise it with ulimit -n or LimitNOFILE=)\n",
		        (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max, ANES_MIN_NOFILE);
		anes_options_free(&opts);
		return 1;
	}
	if (nofile != nofile_old)
		fprintf(stderr, "aneshared: file descriptor limit raised from %llu to %llu\n",
		        (unsigned long long)nofile_old, (unsigned long long)nofile);
	else
		fprintf(stderr, "aneshared: file descriptor limit %llu\n", (unsigned long long)nofile);

	/* Hold SIGINT/SIGTERM until the loop's handlers are in place: the socket
	 * accepts connections before that, and a stop request that arrives in
	 * between must still end in a clean shutdown.  Threads started meanwhile
	 * inherit the mask, so the signals are delivered to this thread. */
	sigset_t stop_signals, old_mask;
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGINT);
	sigaddset(&stop_signals, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop_signals, &old_mask);

	cfg.listen_fd = passed_fd;
	if (passed_r < 0) {
		fprintf(stderr, "aneshared: the socket passed by the service manager is unusable: %s\n",
		        strerror(-passed_r));
		anes_options_free(&opts);
		return 1;
	}

	anes_backend *backend = NULL;
	if (strcmp(opts.backend, "cpu") != 0) {
		/* ane, or auto: the ANE where the bridge opens, else the CPU (docs/ane.md) */
		const anes_ane_bridge *bridge;
		char why[512] = "";
		r = anes_ane_bridge_open(&bridge, why, sizeof why);
		if (r == 0)
			r = anes_ane_backend_new(bridge, &backend, why, sizeof why);
		if (r < 0 && strcmp(opts.backend, "ane") == 0) {
			fprintf(stderr, "aneshared: %s\n", why[0] ? why : strerror(-r));
			if (cfg.listen_fd >= 0)
				close(cfg.listen_fd);
			anes_options_free(&opts);
			return 1;
		}
		if (r < 0)
			fprintf(stderr, "aneshared: backend auto: %s; using the cpu backend\n", why[0] ? why : strerror(-r));
	}
	r = backend ? 0 : anes_cpu_backend_new(0, &backend);
	if (r < 0) {
		fprintf(stderr, "aneshared: cannot start the cpu backend: %s\n", strerror(-r));
		if (cfg.listen_fd >= 0)
			close(cfg.listen_fd);
		anes_options_free(&opts);
		return 1;
	}

	const char *bname = backend->ops->name ? backend->ops->name : "cpu";
	bool is_ane = strcmp(bname, "ane") == 0;
	if (is_ane && opts.worker == 0) {
		/* --backend auto found the ANE */
		fprintf(stderr, "aneshared: %s\n", no_worker_ane);
		backend->ops->destroy(backend);
		anes_options_free(&opts);
		return config_exit(cfg.listen_fd);
	}
	if (opts.worker > 0 || (opts.worker < 0 && is_ane)) {
		/* The in-process backend was the probe; the worker hosts its own. */
		anes_wproxy_config wc = {
			.exe = self_exe(),
			.backend = is_ane ? "ane" : "cpu",
			.compile_budget = opts.compile_budget != UINT32_MAX ? opts.compile_budget
			                  : is_ane                         ? ANES_ANE_COMPILE_BUDGET
			                                                   : 0,
			.max_workers = opts.max_device_workers,
			.run_floor_ms = opts.run_deadline_floor_ms,
			.compile_floor_ms = opts.compile_deadline_floor_ms,
			.threads = cfg.workers ? cfg.workers : 2,
			.fault = opts.worker_fault,
		};
		backend->ops->destroy(backend);
		backend = NULL;
		char why[512] = "";
		r = anes_wproxy_new(&wc, &backend, why, sizeof why);
		if (r < 0) {
			fprintf(stderr, "aneshared: %s\n", why[0] ? why : strerror(-r));
			if (cfg.listen_fd >= 0)
				close(cfg.listen_fd);
			anes_options_free(&opts);
			return 1;
		}
		anes_worker_info wi;
		backend->ops->worker_info(backend, &wi);
		fprintf(stderr, "aneshared: device worker pid %lld (backend %s, compile budget %llu)\n",
		        (long long)wi.pid, wi.backend, (unsigned long long)wi.compile_budget);
	}
	cfg.backend = backend;

	anes_server *srv;
	char err[512];
	/* anes_server_new closes the passed socket if it fails: keep a copy. */
	int keep_fd = cfg.listen_fd >= 0 ? fcntl(cfg.listen_fd, F_DUPFD_CLOEXEC, 3) : -1;
	r = anes_server_new(&cfg, &srv, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "aneshared: %s\n", err[0] ? err : strerror(-r));
		backend->ops->destroy(backend);
		anes_options_free(&opts);
		/* Limits that do not fit together, a socket path too long or in a
		 * directory that is not private: nothing a restart can mend. */
		if (r == -EINVAL || r == -ENAMETOOLONG || r == -ENOTDIR || r == -EPERM)
			return config_exit(keep_fd);
		if (keep_fd >= 0)
			close(keep_fd);
		return 1;
	}
	if (keep_fd >= 0)
		close(keep_fd);
	fprintf(stderr, "aneshared: %s listening on %s (backend %s, pid %ld)\n", ANES_VERSION,
	        anes_server_socket_path(srv), backend->ops->name, (long)getpid());
	pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
	r = anes_server_run(srv);
	anes_server_free(srv);
	backend->ops->destroy(backend);
	anes_options_free(&opts);
	fprintf(stderr, "aneshared: stopped\n");
	return r < 0 ? 1 : 0;
}
