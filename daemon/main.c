/* SPDX-License-Identifier: MIT */
/* aneshared: a thin shell over the server library (server.h); settings in options.c,
 * the backend in backend/backend_open.c. */
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
#include "backend_open.h"
#include "devworker.h"
#include "mil.h"
#include "options.h"
#include "server.h"

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
	int r = anes_backend_new_local(backend, &b, why, sizeof why);
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

	/* Everything main() holds, released once at the end. */
	anes_options opts;
	anes_backend *backend = NULL;
	anes_server *srv = NULL;
	int status = 1;
	bool config_error = false;   /* exit through config_exit */
	char why[512] = "";

	/* The socket a service manager passed, taken first so that a
	 * configuration error can still close what waits on it (config_exit). */
	int passed_fd = -1;
	int passed_r = anes_listen_fd_from_env(&passed_fd);

	int r = anes_options_parse(&opts, argc, argv);
	if (r != 0) {
		status = 0;                  /* > 0: --help or --version */
		config_error = r < 0;
		goto out;
	}
	if (opts.config_path)   /* the default file is read only if it exists: say so */
		fprintf(stderr, "aneshared: settings from %s\n", opts.config_path);
	anes_server_config cfg = opts.cfg;
	anes_mil_set_limits(&opts.mil);   /* in range: the options checked each */
	const anes_backend_choice choice = {
		.backend = opts.backend,
		.worker = opts.worker,
		.compile_budget = opts.compile_budget,
		.max_workers = opts.max_device_workers,
		.run_floor_ms = opts.run_deadline_floor_ms,
		.compile_floor_ms = opts.compile_deadline_floor_ms,
		.threads = cfg.workers,
		.fault = opts.worker_fault,
	};
	r = anes_backend_check(&choice, why, sizeof why);
	if (r < 0) {
		fprintf(stderr, "aneshared: %s\n", why);
		config_error = true;
		goto out;
	}

	/* Builds with the test hooks: a fake clock the tests drive (anes_clock.h). */
	r = anes_clock_from_env();
	if (r < 0) {
		fprintf(stderr, "aneshared: ANESHARE_TEST_CLOCK: %s\n", strerror(-r));
		config_error = true;
		goto out;
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
		goto out;
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

	if (passed_r < 0) {
		fprintf(stderr, "aneshared: the socket passed by the service manager is unusable: %s\n",
		        strerror(-passed_r));
		goto out;
	}

	r = anes_backend_open(&choice, &backend, why, sizeof why);
	if (r < 0) {
		fprintf(stderr, "aneshared: %s\n", why[0] ? why : strerror(-r));
		config_error = r == -EINVAL;
		goto out;
	}
	cfg.backend = backend;
	cfg.listen_fd = passed_fd;

	/* anes_server_new takes the passed socket, and closes it if it fails:
	 * keep a copy for config_exit. */
	int keep_fd = passed_fd >= 0 ? fcntl(passed_fd, F_DUPFD_CLOEXEC, 3) : -1;
	r = anes_server_new(&cfg, &srv, why, sizeof why);
	passed_fd = r < 0 ? keep_fd : -1;
	if (r >= 0 && keep_fd >= 0)
		close(keep_fd);
	if (r < 0) {
		fprintf(stderr, "aneshared: %s\n", why[0] ? why : strerror(-r));
		/* Limits that do not fit together, a socket path too long or in a
		 * directory that is not private: nothing a restart can mend. */
		config_error = r == -EINVAL || r == -ENAMETOOLONG || r == -ENOTDIR || r == -EPERM;
		goto out;
	}
	fprintf(stderr, "aneshared: %s listening on %s (backend %s, pid %ld)\n", ANES_VERSION,
	        anes_server_socket_path(srv), backend->ops->name, (long)getpid());
	if (geteuid() == 0)   /* a daemon run with sudo: its users' clients look elsewhere */
		fprintf(stderr, "aneshared: running as root: only root's programs can reach the socket "
		        "(its directory is 0700); run aneshared as the user whose programs use it\n");
	pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
	r = anes_server_run(srv);
	fprintf(stderr, "aneshared: stopped\n");
	status = r < 0 ? 1 : 0;

out:
	if (srv)
		anes_server_free(srv);
	if (backend)
		backend->ops->destroy(backend);
	anes_options_free(&opts);
	if (config_error)
		return config_exit(passed_fd);
	if (passed_fd >= 0)
		close(passed_fd);
	return status;
}
