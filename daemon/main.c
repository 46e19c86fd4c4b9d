/* SPDX-License-Identifier: MIT */
/* aneshared: a thin shell over the server library (server.h); settings in options.c. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anes_config.h"
#include "anes_proto.h"
#include "ane_backend.h"
#include "backend.h"
#include "options.h"
#include "server.h"

int main(int argc, char **argv)
{
	anes_options opts;
	int r = anes_options_parse(&opts, argc, argv);
	if (r != 0) {
		anes_options_free(&opts);
		return r > 0 ? 0 : 2;
	}
	anes_server_config cfg = opts.cfg;
	if (strcmp(opts.backend, "cpu") != 0 && strcmp(opts.backend, "ane") != 0 &&
	    strcmp(opts.backend, "auto") != 0) {
		fprintf(stderr, "aneshared: unknown backend \"%s\" (available: cpu, ane, auto)\n", opts.backend);
		anes_options_free(&opts);
		return 2;
	}

	/* Peers that vanish must not kill the daemon; writes see EPIPE. */
	signal(SIGPIPE, SIG_IGN);

	/* Hold SIGINT/SIGTERM until the loop's handlers are in place: the socket
	 * accepts connections before that, and a stop request that arrives in
	 * between must still end in a clean shutdown.  Threads started meanwhile
	 * inherit the mask, so the signals are delivered to this thread. */
	sigset_t stop_signals, old_mask;
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGINT);
	sigaddset(&stop_signals, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop_signals, &old_mask);

	r = anes_listen_fd_from_env(&cfg.listen_fd);
	if (r < 0) {
		fprintf(stderr, "aneshared: the socket passed by the service manager is unusable: %s\n",
		        strerror(-r));
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
	cfg.backend = backend;

	anes_server *srv;
	char err[512];
	r = anes_server_new(&cfg, &srv, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "aneshared: %s\n", err[0] ? err : strerror(-r));
		backend->ops->destroy(backend);
		anes_options_free(&opts);
		return 1;
	}
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
