/* SPDX-License-Identifier: MIT */
/* aneshared: a thin shell over the server library (server.h). */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anes_config.h"
#include "anes_proto.h"
#include "backend.h"
#include "server.h"

static void usage(FILE *f)
{
	fprintf(f,
	        "Usage: aneshared [OPTIONS]\n"
	        "Share compiled neural-network programs and memory surfaces between processes.\n\n"
	        "  --socket PATH      listen on PATH (default: $ANESHARE_SOCKET, else\n"
	        "                     $XDG_RUNTIME_DIR/aneshare/aneshare.sock)\n"
	        "  --max-frame BYTES  largest accepted frame payload (default %u)\n"
	        "  --workers N        worker threads for compiles and runs (default 2)\n"
	        "  --backend NAME     compute backend: cpu (default)\n"
	        "  -v, --verbose      log every connect and disconnect\n"
	        "  -h, --help         show this help\n"
	        "  -V, --version      show the version\n",
	        ANES_FRAME_MAX_DEFAULT);
}

static int parse_uint(const char *s, unsigned long long lo, unsigned long long hi,
                      unsigned long long *ret)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
		return -EINVAL;
	*ret = v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "max-frame", required_argument, NULL, 'f' },
		{ "workers", required_argument, NULL, 'w' },
		{ "backend", required_argument, NULL, 'b' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	anes_server_config cfg;
	unsigned long long v;
	int c;

	anes_server_config_init(&cfg);
	cfg.handle_signals = true;
	while ((c = getopt_long(argc, argv, "vhV", opts, NULL)) != -1) {
		switch (c) {
		case 's': cfg.socket_path = optarg; break;
		case 'f':
			if (parse_uint(optarg, ANES_FRAME_MAX_LOWEST, ANES_FRAME_MAX_HIGHEST, &v) < 0) {
				fprintf(stderr, "aneshared: --max-frame must be %u..%u\n",
				        ANES_FRAME_MAX_LOWEST, ANES_FRAME_MAX_HIGHEST);
				return 2;
			}
			cfg.limits.max_frame = (uint32_t)v;
			break;
		case 'w':
			if (parse_uint(optarg, 1, 256, &v) < 0) {
				fprintf(stderr, "aneshared: --workers must be 1..256\n");
				return 2;
			}
			cfg.workers = (unsigned)v;
			break;
		case 'b':
			if (strcmp(optarg, "cpu") != 0) {
				fprintf(stderr, "aneshared: unknown backend \"%s\" (available: cpu)\n", optarg);
				return 2;
			}
			break;
		case 'v': cfg.verbose = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("aneshared %s (protocol %d)\n", ANES_VERSION, ANES_PROTOCOL_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "aneshared: unexpected argument \"%s\"\n", argv[optind]);
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

	int r = anes_listen_fd_from_env(&cfg.listen_fd);
	if (r < 0) {
		fprintf(stderr, "aneshared: the socket passed by the service manager is unusable: %s\n",
		        strerror(-r));
		return 1;
	}

	anes_backend *backend;
	r = anes_cpu_backend_new(0, &backend);
	if (r < 0) {
		fprintf(stderr, "aneshared: cannot start the cpu backend: %s\n", strerror(-r));
		if (cfg.listen_fd >= 0)
			close(cfg.listen_fd);
		return 1;
	}
	cfg.backend = backend;

	anes_server *srv;
	char err[512];
	r = anes_server_new(&cfg, &srv, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "aneshared: %s\n", err[0] ? err : strerror(-r));
		backend->ops->destroy(backend);
		return 1;
	}
	fprintf(stderr, "aneshared: %s listening on %s (backend %s, pid %ld)\n", ANES_VERSION,
	        anes_server_socket_path(srv), backend->ops->name, (long)getpid());
	pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
	r = anes_server_run(srv);
	anes_server_free(srv);
	backend->ops->destroy(backend);
	fprintf(stderr, "aneshared: stopped\n");
	return r < 0 ? 1 : 0;
}
