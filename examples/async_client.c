/* SPDX-License-Identifier: MIT */
/*
 * The async client API in an application's own poll(2) loop: keep WINDOW
 * runs of the dynamic matmul in flight, a 28-layer chain now and then, and
 * let completions arrive in any order.
 *
 *   async_client [SOCKET] [RUNS]
 *
 * The pattern for any event loop (epoll, libuv's uv_poll_t, ...):
 *   - watch aneshare_fd(conn) for aneshare_events(conn), asked again after
 *     every call (the fd changes when the library reconnects);
 *   - when it is ready, call aneshare_dispatch(conn), which never blocks and
 *     calls the completion callbacks.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aneshare.h"

#define WINDOW 8
#define LAYERS 28

typedef struct app {
	aneshare_program *p;
	aneshare_surface *in[LAYERS], *out[LAYERS];
	aneshare_step chain[LAYERS];
	long submitted, completed, failed, chains, target;
} app;

static void submit_one(aneshare_conn *c, app *a);

static void on_done(aneshare_conn *c, const aneshare_result *res, void *ud)
{
	app *a = ud;
	a->completed++;
	if (res->rc < 0) {
		a->failed++;
		fprintf(stderr, "run failed: %s (%s)%s\n", aneshare_strerror(res->rc), res->message,
		        aneshare_error_is_retryable(res->rc) ? ", retryable" : "");
	}
	if (a->submitted < a->target)
		submit_one(c, a);   /* callbacks may make new calls */
}

static void submit_one(aneshare_conn *c, app *a)
{
	long i = a->submitted++;
	int r;
	if (i % 100 == 99) {   /* now and then: 28 layers in one request */
		a->chains++;
		r = aneshare_run_chain_async(c, a->chain, LAYERS, on_done, a);
	} else {
		int l = (int)(i % LAYERS);
		r = aneshare_run_async(a->p, 0, &a->in[l], 1, &a->out[l], 1, on_done, a);
	}
	if (r < 0) {
		fprintf(stderr, "submit: %s: %s\n", aneshare_strerror(r), aneshare_last_error(c));
		a->submitted--;
		a->target = a->submitted;   /* stop */
	}
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
	if (s && fread(s, 1, (size_t)n, f) == (size_t)n)
		s[n] = '\0';
	else {
		free(s);
		s = NULL;
	}
	fclose(f);
	return s;
}

int main(int argc, char **argv)
{
	if (argc > 3 || (argc > 1 && argv[1][0] == '-')) {
		bool help = !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help");
		fprintf(help ? stdout : stderr, "usage: async_client [SOCKET] [RUNS]\n");
		return help ? 0 : 2;
	}
	const char *sock = argc > 1 ? argv[1] : NULL;
	app a = { .target = argc > 2 ? atol(argv[2]) : 10000 };
	aneshare_conn *c;
	int r = aneshare_connect(sock, "async_client", &c);
	if (r < 0) {
		fprintf(stderr, "async_client: cannot connect to %s: %s (is aneshared running there?)\n",
		        sock ? sock : "the daemon's default socket", aneshare_strerror(r));
		return 1;
	}
	char *mil = read_file(ANES_EXAMPLES_DIR "/dynamic_matmul.mil");
	if (!mil || (r = aneshare_program_compile(c, mil, NULL, 0, &a.p, NULL)) < 0) {
		fprintf(stderr, "compile: %s\n", c ? aneshare_last_error(c) : "no MIL");
		return 1;
	}
	free(mil);
	size_t ib = aneshare_program_input(a.p, 0, 0)->bytes;
	size_t ob = aneshare_program_output(a.p, 0, 0)->bytes;
	for (int l = 0; l < LAYERS; l++) {
		if (aneshare_surface_create(c, ib, &a.in[l]) < 0 ||
		    aneshare_surface_create(c, ob, &a.out[l]) < 0) {
			fprintf(stderr, "surface: %s\n", aneshare_last_error(c));
			return 1;
		}
		memset(aneshare_surface_data(a.in[l]), 0x30, ib);   /* small fp16 values */
		a.chain[l] = (aneshare_step){ a.p, 0, &a.in[l], 1, &a.out[l], 1 };
	}

	for (int i = 0; i < WINDOW && a.submitted < a.target; i++)
		submit_one(c, &a);
	while (a.completed < a.submitted) {
		struct pollfd pfd = { .fd = aneshare_fd(c), .events = 0 };
		int ev = aneshare_events(c);
		if (ev & ANESHARE_EV_READ)
			pfd.events |= POLLIN;
		if (ev & ANESHARE_EV_WRITE)
			pfd.events |= POLLOUT;
		/* (a real application polls its other fds here too) */
		if (pfd.fd >= 0 && poll(&pfd, 1, -1) < 0 && errno != EINTR)
			break;
		r = aneshare_dispatch(c);
		if (r < 0) {   /* the callbacks of the lost calls have run */
			fprintf(stderr, "connection: %s\n", aneshare_last_error(c));
			break;
		}
	}
	printf("%ld calls (%ld chains of %d layers) completed, %ld failed\n", a.completed, a.chains,
	       LAYERS, a.failed);
	aneshare_disconnect(c);
	return a.failed ? 1 : 0;
}
