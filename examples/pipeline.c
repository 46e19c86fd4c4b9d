/* SPDX-License-Identifier: MIT */
/*
 * pipeline: three client processes chained on shared surfaces, no tensor
 * byte copied between them.
 *
 *   producer  --frame-->  model A  --activations-->  model B
 *   (writes frames     (examples/dynamic_    (examples/transformer_
 *    into its surfaces)  matmul.mil)           block.mil)
 *
 * The producer creates `depth` input surfaces and exports each read-only
 * (aneshare_surface_export); model A imports them by token
 * (aneshare_surface_import_token), runs its model from them into output
 * surfaces of its own and exports those read-only to model B, which runs its
 * model from them.  Frame f uses buffer f % depth at each stage.  Ordering
 * is the clients' business; two ways (--sync):
 *
 *  event (the default): three events (aneshare_event_create), shared by
 *    token like the surfaces, and no message between the processes per
 *    frame.  E0 (the producer's): frame f is written (value f + 1).  E1
 *    (model A's): A's run of frame f is done.  E2 (model B's): B's run of
 *    frame f is done.  Model A keeps `depth` runs submitted ahead
 *    (aneshare_run_submit_ex), each waiting for E0 >= f + 1 (its input) and
 *    E2 >= f + 1 - depth (B has read A's output buffer) and signalling
 *    E1 = f + 1; model B keeps its runs submitted ahead too, waiting for
 *    E1 >= f + 1 and signalling E2 = f + 1.  The producer waits for
 *    E2 >= f + 1 - depth (which implies E1: A has read its input buffer, and
 *    at most `depth` frames are in flight), writes the frame and signals
 *    E0 = f + 1: the daemon starts A's run, then B's.  Model B, before it
 *    waits for its run's reply, waits for E1 >= f + 1 (aneshare_event_wait):
 *    the daemon answers that wait from the thread that raised E1, just
 *    before it runs B's run there, so B is awake, polling its socket (the
 *    library's spin), when its reply comes, as a client of a one-process
 *    chain is: a consumer that wants its result at once does this; one that
 *    does not saves the request.  At the end the producer releases E0, which
 *    closes it: the runs parked on it fail with event_closed, model A
 *    releases E1 and model B E2 the same way.  The times (the producer's
 *    writes, the models' replies) go to the parent after each batch.
 *  socket: one 32-byte message per frame and hop over socketpairs ("frame f
 *    is in buffer k", "buffer k is free again").
 *
 * Tensor data crosses no socket: the program counts the bytes the three
 * send each other (setup tokens aside) and fails if a frame's messages come
 * near a tensor's size.
 *
 * Model B takes [1, 64, 1, 32] fp16 (4 KiB) and reads the first 4 KiB of
 * model A's [1, 64, 1, 64] output: channels 0-31 of A's output, read as
 * B's 64 x 32.
 *
 * Every output is checked against a reference computed first in one
 * process: the same frames through the same two models on one connection
 * (a two-step aneshare_run_chain on shared surfaces); model A is also
 * checked against an fp32 matmul computed here.  Exit status 0 if every
 * frame matches, 1 otherwise.
 *
 *   pipeline [--socket PATH] [--sync event|socket] [--frames N] [--depth D] [--spin-us US]
 *            [--lib-spin-us US]
 *   pipeline --bench REPS [--batch K] ...
 *
 * --depth D: frames in flight (1 to 4 buffers per stage; default 2).
 * --bench: per-frame latency (the producer's write to model B's result)
 * with one frame in flight, REPS times K frames, each time next to K frames
 * of the one-process chain: prints the medians of the per-repetition p50s
 * and of their ratios, and a line "bench: ..." for bench/bench_daemon.c.
 * --interval-us: the frame source's pace: the producer (and, in --bench,
 * the one-process baseline) sleeps this long before each frame (default 0:
 * back to back).
 * --spin-us (--sync socket): how long models A and B poll their socket for the next frame
 * (yielding the CPU between polls) before they sleep (default 0: at once;
 * the three processes, the daemon and the library's own spin share the
 * CPUs).  --lib-spin-us: the three processes' aneshare_set_spin (default:
 * the library's).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "aneshare.h"
#include "example_util.h"

#ifndef ANES_EXAMPLES_DIR
#define ANES_EXAMPLES_DIR "examples"
#endif

#define MAX_DEPTH 4
#define NREF 16            /* distinct frames; frame f is pattern f % NREF */
#define A_TOL 1e-2         /* model A against fp32: max |out - ref| / max |ref| */
#define B_TOL 1e-3         /* the pipeline against the one-process chain, the same */
#define MAX_BATCH 4096

enum { M_FRAME = 1, M_FREE, M_DONE, M_RUN, M_STOP, M_READY, M_RESULT, M_STATS,
       M_WRITTEN, M_A_DONE, M_B_DONE };

/* Every message between the processes: 32 bytes, no tensor data. */
typedef struct pmsg {
	uint32_t kind;
	uint32_t frame;
	uint32_t buf;
	uint32_t count;      /* M_RUN: frames; M_RESULT: 1 if it matched; M_STATS: which process */
	uint64_t t0_ns;      /* M_FRAME: when the producer finished writing it; M_RESULT: the hop
	                      * producer -> model A (ns) */
	uint64_t value;      /* M_RESULT: latency (ns); M_STATS: bytes sent to the other processes */
	uint64_t ta_ns;      /* M_FRAME to model B: when model A got the frame; M_RESULT: model A's run */
	uint64_t tb_ns;      /* M_FRAME to model B: when model A's run returned; M_RESULT: the hop A -> B */
} pmsg;

/* --sync event, to the parent after each frame or batch (M_WRITTEN: the
 * producer, M_A_DONE / M_B_DONE: the models): the frame, the process's time
 * of the event (the write done; the run's reply read), and more. */
typedef struct emsg {
	uint32_t kind;
	uint32_t frame;
	uint32_t ok;         /* M_B_DONE: 1 if the result matched the reference */
	uint32_t pad;
	uint64_t t_ns;       /* CLOCK_MONOTONIC, the same clock in every process */
	uint64_t us;         /* M_WRITTEN: the producer's event.signal round trip (ns);
	                      * M_A_DONE / M_B_DONE: the daemon's elapsed_us of the run */
	uint64_t spare[2];
} emsg;
_Static_assert(sizeof(emsg) == sizeof(pmsg), "one size on the result pipe");

typedef struct cfg {
	const char *socket;
	int frames, depth, spin_us, lib_spin_us, bench_reps, batch, interval_us;
	bool quiet;
	bool events;         /* --sync event (else socket) */
} cfg;

static cfg g;
static const char *g_who = "pipeline";
static char *g_mil_a, *g_mil_b;
static size_t g_a_in, g_a_out, g_b_in, g_b_out;
static uint16_t *g_frames;          /* NREF frames of g_a_in bytes (the producer's source) */
static uint16_t *g_ref;             /* NREF reference outputs of g_b_out bytes */
static uint64_t g_sent;             /* bytes this process sent to the other processes */
static uint32_t g_res_max;          /* results that fit the result pipe: frames per batch */

static _Noreturn void die(aneshare_conn *c, const char *what, int r)
{
	fprintf(stderr, "%s: %s: %s%s%s\n", g_who, what, r < 0 ? aneshare_strerror(r) : "failed",
	        c && *aneshare_last_error(c) ? ": " : "", c ? aneshare_last_error(c) : "");
	_exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- messages ----------------------------------------------------------------- */

static void send_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die(NULL, "write to another process", -errno);
		p += w;
		n -= (size_t)w;
		g_sent += (uint64_t)w;
	}
}

static void send_msg(int fd, uint32_t kind, uint32_t frame, uint32_t buf, uint32_t count,
                     uint64_t t0, uint64_t value)
{
	pmsg m = { kind, frame, buf, count, t0, value, 0, 0 };
	send_all(fd, &m, sizeof m);
}

/* Read exactly n bytes; false at EOF before the first byte. */
static bool recv_all(int fd, void *buf, size_t n)
{
	char *p = buf;
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0 && got == 0)
			return false;
		if (r <= 0)
			die(NULL, "read from another process", r < 0 ? -errno : -EPIPE);
		got += (size_t)r;
	}
	return true;
}

/* Wait until one of fds[0..n) is readable (polling up to spin_us first, then
 * sleeping in poll): its index. */
static int wait_any(const int *fds, int n, int spin_us)
{
	struct pollfd p[2];
	for (int i = 0; i < n; i++)
		p[i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
	uint64_t end = spin_us > 0 ? now_ns() + (uint64_t)spin_us * 1000u : 0;
	for (;;) {
		bool spin = end && now_ns() < end;
		int r = poll(p, (nfds_t)n, spin ? 0 : -1);
		if (r < 0 && errno != EINTR)
			die(NULL, "poll", -errno);
		for (int i = 0; r > 0 && i < n; i++)
			if (p[i].revents)
				return i;
		if (spin)
			sched_yield();   /* a thread of the daemon or another stage may want this CPU */
	}
}

/* The next message on fd; spin: poll for --spin-us first (the models'
 * waits for their next frame, the only ones on the frame's path). */
static void recv_msg(int fd, pmsg *m, bool spin)
{
	(void)wait_any(&fd, 1, spin ? g.spin_us : 0);
	if (!recv_all(fd, m, sizeof *m))
		die(NULL, "another process of the pipeline exited", -EPIPE);
}

static void send_token(int fd, const aneshare_token *t)
{
	send_all(fd, t->text, ANESHARE_TOKEN_LEN);
}

static void recv_token(int fd, char text[ANESHARE_TOKEN_LEN + 1])
{
	if (!recv_all(fd, text, ANESHARE_TOKEN_LEN))
		die(NULL, "no token from the process before", -EPIPE);
	text[ANESHARE_TOKEN_LEN] = '\0';
}

/* ---- models, frames and the reference --------------------------------------------- */

static aneshare_conn *connect_as(const char *name)
{
	aneshare_conn *c;
	int r = aneshare_connect(g.socket, name, &c);
	if (r < 0)
		die(NULL, "connect", r);
	return c;
}

/* The three processes' connections: --lib-spin-us, else the library's default. */
static aneshare_conn *connect_stage(const char *name)
{
	aneshare_conn *c = connect_as(name);
	if (g.lib_spin_us >= 0)
		(void)aneshare_set_spin(c, (uint32_t)g.lib_spin_us);
	return c;
}

static aneshare_program *compile(aneshare_conn *c, const char *mil)
{
	aneshare_program *p;
	int r = aneshare_program_compile(c, mil, NULL, 0, &p, NULL);
	if (r < 0)
		die(c, "compile", r);
	return p;
}

static aneshare_surface *surface(aneshare_conn *c, size_t bytes)
{
	aneshare_surface *s;
	int r = aneshare_surface_create(c, bytes, &s);
	if (r < 0)
		die(c, "surface_create", r);
	return s;
}

static void export_ro(aneshare_surface *s, int fd)
{
	aneshare_token t;
	aneshare_export_opts o = { .read_only = true, .uses = 1 };
	int r = aneshare_surface_export(s, &o, &t, NULL);
	if (r < 0)
		die(NULL, "surface_export", r);
	send_token(fd, &t);
}

static aneshare_surface *import_from(aneshare_conn *c, int fd, size_t min_bytes)
{
	char tok[ANESHARE_TOKEN_LEN + 1];
	recv_token(fd, tok);
	aneshare_surface *s;
	int r = aneshare_surface_import_token(c, tok, &s);
	if (r < 0)
		die(c, "surface_import_token", r);
	if (!aneshare_surface_read_only(s) || aneshare_surface_size(s) < min_bytes) {
		fprintf(stderr, "%s: the imported surface is not read-only or too small\n", g_who);
		_exit(1);
	}
	return s;
}

/* Frame pattern i: activations and weights of model A, uniform in [-1, 1). */
static void make_frames(void)
{
	size_t n = g_a_in / 2;
	g_frames = malloc(NREF * g_a_in);
	if (!g_frames)
		die(NULL, "out of memory", -ENOMEM);
	float *tmp = malloc(n * sizeof *tmp);
	if (!tmp)
		die(NULL, "out of memory", -ENOMEM);
	uint64_t st = 0x5eed;
	for (int i = 0; i < NREF; i++) {
		for (size_t k = 0; k < n; k++)
			tmp[k] = (float)(ex_rand01(&st) * 2.0 - 1.0);
		aneshare_f32_to_f16(g_frames + (size_t)i * n, tmp, n);
	}
	free(tmp);
}

/* Max |got - ref| / max |ref| over n fp16 values; INFINITY if got has a
 * NaN or ref is all zero. */
static double rel_err16(const uint16_t *got, const uint16_t *ref, size_t n)
{
	double dmax = 0, rmax = 0;
	for (size_t i = 0; i < n; i++) {
		float a, b;
		aneshare_f16_to_f32(&a, &got[i], 1);
		aneshare_f16_to_f32(&b, &ref[i], 1);
		if (!isfinite(a) || !isfinite(b))
			return INFINITY;
		dmax = fmax(dmax, fabs((double)a - b));
		rmax = fmax(rmax, fabs((double)b));
	}
	return rmax > 0 ? dmax / rmax : INFINITY;
}

/* Model A (examples/dynamic_matmul.mil) in fp32 from the fp16 input x
 * ([64 ic][64 act + 64 w]): out[oc][s] = sum_ic act[ic][s] w[ic][oc]. */
static double check_model_a(const uint16_t *x, const uint16_t *out)
{
	float *xf = malloc(64 * 128 * sizeof *xf), *of = malloc(64 * 64 * sizeof *of);
	if (!xf || !of)
		die(NULL, "out of memory", -ENOMEM);
	aneshare_f16_to_f32(xf, x, 64 * 128);
	aneshare_f16_to_f32(of, out, 64 * 64);
	double dmax = 0, rmax = 0;
	for (int oc = 0; oc < 64; oc++)
		for (int s = 0; s < 64; s++) {
			double acc = 0;
			for (int ic = 0; ic < 64; ic++)
				acc += (double)xf[ic * 128 + s] * xf[ic * 128 + 64 + oc];
			dmax = fmax(dmax, fabs(of[oc * 64 + s] - acc));
			rmax = fmax(rmax, fabs(acc));
		}
	free(xf);
	free(of);
	return dmax / rmax;
}

/* The one-process chain: the reference, and the bench's baseline. */
typedef struct single {
	aneshare_conn *c;
	aneshare_program *a, *b;
	aneshare_surface *in, *mid, *out;
	aneshare_step steps[2];
} single;

static void single_open(single *s)
{
	s->c = connect_as("pipeline-one-process");
	s->a = compile(s->c, g_mil_a);
	s->b = compile(s->c, g_mil_b);
	const aneshare_tensor_info *ai = aneshare_program_input(s->a, 0, 0);
	const aneshare_tensor_info *ao = aneshare_program_output(s->a, 0, 0);
	const aneshare_tensor_info *bi = aneshare_program_input(s->b, 0, 0);
	const aneshare_tensor_info *bo = aneshare_program_output(s->b, 0, 0);
	if (!ai || !ao || !bi || !bo || ai->bytes != 64 * 128 * 2 || ao->bytes != 64 * 64 * 2 ||
	    bi->bytes > ao->bytes) {
		fprintf(stderr, "%s: the models' tensors are not the ones this example chains\n", g_who);
		exit(1);
	}
	g_a_in = ai->bytes;
	g_a_out = ao->bytes;
	g_b_in = bi->bytes;
	g_b_out = bo->bytes;
	s->in = surface(s->c, g_a_in);
	s->mid = surface(s->c, g_a_out);
	s->out = surface(s->c, g_b_out);
	s->steps[0] = (aneshare_step){ s->a, 0, &s->in, 1, &s->mid, 1 };
	s->steps[1] = (aneshare_step){ s->b, 0, &s->mid, 1, &s->out, 1 };
}

/* Frame f through the chain; its latency in ns (from the frame written). */
/* A frame source's pace: --interval-us between frames (sleeping). */
static void pace(void)
{
	if (g.interval_us <= 0)
		return;
	struct timespec ts = { g.interval_us / 1000000, (long)(g.interval_us % 1000000) * 1000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static uint64_t single_frame(single *s, uint32_t f)
{
	pace();
	memcpy(aneshare_surface_data(s->in), g_frames + (size_t)(f % NREF) * (g_a_in / 2), g_a_in);
	memset(aneshare_surface_data(s->out), 0xff, g_b_out);   /* NaNs: the run must overwrite them */
	uint64_t t0 = now_ns();
	int r = aneshare_run_chain(s->c, s->steps, 2);
	uint64_t t1 = now_ns();
	if (r < 0)
		die(s->c, "run_chain", r);
	return t1 - t0;
}

static void single_close(single *s)
{
	aneshare_disconnect(s->c);   /* frees the programs and surfaces */
}

static void make_reference(single *s)
{
	g_ref = malloc(NREF * g_b_out);
	if (!g_ref)
		die(NULL, "out of memory", -ENOMEM);
	double worst = 0;
	for (uint32_t i = 0; i < NREF; i++) {
		(void)single_frame(s, i);
		worst = fmax(worst, check_model_a(g_frames + (size_t)i * (g_a_in / 2),
		                                  aneshare_surface_data(s->mid)));
		memcpy(g_ref + (size_t)i * (g_b_out / 2), aneshare_surface_data(s->out), g_b_out);
		if (!(rel_err16(g_ref + (size_t)i * (g_b_out / 2), g_ref + (size_t)i * (g_b_out / 2),
		                g_b_out / 2) == 0)) {   /* 0 exactly when all finite and not all zero */
			fprintf(stderr, "%s: the one-process reference of frame %u is not finite\n", g_who, i);
			exit(1);
		}
	}
	if (!(worst <= A_TOL)) {
		fprintf(stderr, "%s: model A is off its fp32 reference by %.3g (> %g)\n", g_who, worst, A_TOL);
		exit(1);
	}
	if (!g.quiet)
		printf("reference: %d frames through both models in one process; model A within %.2g of fp32\n",
		       NREF, worst);
}

/* ---- the three processes ------------------------------------------------------------ */

/* Die with the parent (Linux), so that a killed run leaves nothing behind. */
static void child_setup(const char *who)
{
	g_who = who;
#ifdef __linux__
	prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
	if (getppid() == 1)
		_exit(1);
}

static void report_stats(int res, uint32_t who)
{
	send_msg(res, M_STATS, 0, 0, who, 0, g_sent);
}

/* The producer: fd_a to model A (frames out, freed buffers in), fd_b from
 * model B (frames done), ctl from the parent (batches). */
static int producer(int ctl, int fd_a, int fd_b, int res)
{
	child_setup("pipeline: producer");
	aneshare_conn *c = connect_stage("pipeline-producer");
	aneshare_surface *in[MAX_DEPTH];
	bool busy[MAX_DEPTH] = { false };
	for (int k = 0; k < g.depth; k++) {
		in[k] = surface(c, g_a_in);
		export_ro(in[k], fd_a);
	}
	uint64_t setup_bytes = g_sent;
	uint32_t next = 0, inflight = 0;
	for (;;) {
		pmsg m;
		recv_msg(ctl, &m, false);
		if (m.kind == M_STOP)
			break;
		uint32_t end = next + m.count;
		while (next < end || inflight > 0) {
			uint32_t k = next % (uint32_t)g.depth;
			bool can = next < end && !busy[k] && inflight < (uint32_t)g.depth;
			if (can) {
				pace();
				memcpy(aneshare_surface_data(in[k]), g_frames + (size_t)(next % NREF) * (g_a_in / 2),
				       g_a_in);
				busy[k] = true;
				inflight++;
				send_msg(fd_a, M_FRAME, next, k, 0, now_ns(), 0);
				next++;
				continue;
			}
			int fds[2] = { fd_a, fd_b };
			int i = wait_any(fds, 2, 0);
			if (!recv_all(fds[i], &m, sizeof m))
				die(NULL, "a model process exited", -EPIPE);
			if (m.kind == M_FREE && m.buf < (uint32_t)g.depth)
				busy[m.buf] = false;
			else if (m.kind == M_DONE && inflight > 0) {
				inflight--;
				if (g.depth == 1)   /* no M_FREE at depth 1: done is free */
					busy[0] = false;
			} else
				die(NULL, "unexpected message", -EPROTO);
		}
		send_msg(ctl, M_DONE, next, 0, 0, 0, 0);   /* the batch is through */
	}
	send_msg(fd_a, M_STOP, 0, 0, 0, 0, 0);
	g_sent -= setup_bytes;
	report_stats(res, 0);
	aneshare_disconnect(c);
	return 0;
}

/* Model A: frames from the producer's read-only surfaces into its own
 * outputs, exported read-only to model B. */
static int model_a(int fd_p, int fd_b, int res)
{
	child_setup("pipeline: model A");
	aneshare_conn *c = connect_stage("pipeline-model-a");
	aneshare_program *p = compile(c, g_mil_a);
	aneshare_surface *in[MAX_DEPTH], *out[MAX_DEPTH];
	bool busy[MAX_DEPTH] = { false };
	for (int k = 0; k < g.depth; k++)
		in[k] = import_from(c, fd_p, g_a_in);
	for (int k = 0; k < g.depth; k++) {
		out[k] = surface(c, g_a_out);
		export_ro(out[k], fd_b);
	}
	uint64_t setup_bytes = g_sent;
	for (;;) {
		pmsg m;
		recv_msg(fd_p, &m, true);
		uint64_t got = now_ns();
		if (m.kind == M_STOP)
			break;
		if (m.kind != M_FRAME || m.buf >= (uint32_t)g.depth)
			die(NULL, "unexpected message", -EPROTO);
		uint32_t k = m.buf;
		/* Model B still reads this output (depth 1: never, the producer
		 * waits for model B's M_DONE before the next frame, and nobody
		 * sends M_FREE: a message fewer to wake a process per frame). */
		while (g.depth > 1 && busy[k]) {
			pmsg f;
			recv_msg(fd_b, &f, false);
			if (f.kind != M_FREE || f.buf >= (uint32_t)g.depth)
				die(NULL, "unexpected message", -EPROTO);
			busy[f.buf] = false;
		}
		int r = aneshare_run(p, 0, &in[k], 1, &out[k], 1);
		if (r < 0)
			die(c, "run", r);
		busy[k] = true;
		pmsg fw = { M_FRAME, m.frame, k, 0, m.t0_ns, 0, got, now_ns() };
		send_all(fd_b, &fw, sizeof fw);
		if (g.depth > 1)
			send_msg(fd_p, M_FREE, m.frame, k, 0, 0, 0);
	}
	send_msg(fd_b, M_STOP, 0, 0, 0, 0, 0);
	g_sent -= setup_bytes;
	report_stats(res, 1);
	aneshare_disconnect(c);
	return 0;
}

/* Model B: from model A's read-only outputs; checks each result against
 * the reference and reports it to the parent. */
static int model_b(int fd_a, int fd_p, int res)
{
	child_setup("pipeline: model B");
	aneshare_conn *c = connect_stage("pipeline-model-b");
	aneshare_program *p = compile(c, g_mil_b);
	aneshare_surface *in[MAX_DEPTH];
	for (int k = 0; k < g.depth; k++)
		in[k] = import_from(c, fd_a, g_b_in);
	aneshare_surface *out = surface(c, g_b_out);
	memset(aneshare_surface_data(out), 0xff, g_b_out);   /* NaNs: the run must overwrite them */
	send_msg(res, M_READY, 0, 0, 0, 0, 0);
	uint64_t setup_bytes = g_sent;
	uint64_t result_bytes = 0;
	for (;;) {
		pmsg m;
		recv_msg(fd_a, &m, true);
		uint64_t got = now_ns();
		if (m.kind == M_STOP)
			break;
		if (m.kind != M_FRAME || m.buf >= (uint32_t)g.depth)
			die(NULL, "unexpected message", -EPROTO);
		int r = aneshare_run(p, 0, &in[m.buf], 1, &out, 1);
		uint64_t t1 = now_ns();
		if (r < 0)
			die(c, "run", r);
		if (g.depth > 1)
			send_msg(fd_a, M_FREE, m.frame, m.buf, 0, 0, 0);
		double e = rel_err16(aneshare_surface_data(out), g_ref + (size_t)(m.frame % NREF) * (g_b_out / 2),
		                     g_b_out / 2);
		send_msg(fd_p, M_DONE, m.frame, 0, 0, 0, 0);
		uint64_t before = g_sent;
		pmsg rm = { M_RESULT, m.frame, 0, e <= B_TOL, m.ta_ns - m.t0_ns, t1 - m.t0_ns,
		            m.tb_ns - m.ta_ns, got - m.tb_ns };
		send_all(res, &rm, sizeof rm);
		result_bytes += g_sent - before;   /* to the parent: not between the pipeline's processes */
		memset(aneshare_surface_data(out), 0xff, g_b_out);   /* for the next frame */
	}
	g_sent -= setup_bytes + result_bytes;
	report_stats(res, 2);
	aneshare_disconnect(c);
	return 0;
}

/* ---- --sync event: the same three processes ordered by events ------------------------ */

/* To the parent (results, times): not between the pipeline's processes. */
static void send_parent(int fd, const void *m, size_t n)
{
	uint64_t before = g_sent;
	send_all(fd, m, n);
	g_sent = before;
}

static void send_emsg(int res, uint32_t kind, uint32_t frame, uint32_t ok, uint64_t t_ns, uint64_t us)
{
	emsg m = { kind, frame, ok, 0, t_ns, us, { 0, 0 } };
	send_parent(res, &m, sizeof m);
}

static aneshare_event *event_new(aneshare_conn *c)
{
	aneshare_event *e;
	int r = aneshare_event_create(c, &e);
	if (r < 0)
		die(c, "event_create", r);
	return e;
}

static void event_export_to(aneshare_conn *c, aneshare_event *e, int fd)
{
	aneshare_token t;
	int r = aneshare_event_export(e, &(aneshare_export_opts){ .uses = 1 }, &t, NULL);
	if (r < 0)
		die(c, "event_export", r);
	send_token(fd, &t);
}

static aneshare_event *event_from(aneshare_conn *c, int fd)
{
	char tok[ANESHARE_TOKEN_LEN + 1];
	recv_token(fd, tok);
	aneshare_event *e;
	int r = aneshare_event_import_token(c, tok, &e);
	if (r < 0)
		die(c, "event_import_token", r);
	return e;
}

static void event_wait_for(aneshare_conn *c, aneshare_event *e, uint64_t v)
{
	int r = aneshare_event_wait(e, v, NULL);
	if (r < 0)
		die(c, "event_wait", r);
}

/* The producer: writes frame f into buffer f % depth once model B is done
 * with frame f - depth (E2), then signals E0 = f + 1. */
static int producer_ev(int ctl, int fd_a, int fd_b, int res)
{
	child_setup("pipeline: producer");
	aneshare_conn *c = connect_stage("pipeline-producer");
	aneshare_surface *in[MAX_DEPTH];
	for (int k = 0; k < g.depth; k++) {
		in[k] = surface(c, g_a_in);
		export_ro(in[k], fd_a);
	}
	aneshare_event *e0 = event_new(c);
	event_export_to(c, e0, fd_a);
	aneshare_event *e2 = event_from(c, fd_b);
	uint64_t setup_bytes = g_sent;
	emsg *times = malloc(MAX_BATCH * sizeof *times);
	if (!times)
		die(NULL, "out of memory", -ENOMEM);
	uint32_t next = 0;
	for (;;) {
		pmsg m;
		recv_msg(ctl, &m, false);
		if (m.kind == M_STOP)
			break;
		if (m.count > MAX_BATCH)
			die(NULL, "a batch too large", -EPROTO);
		uint32_t first = next, end = next + m.count;
		for (; next < end; next++) {
			if (next + 1 > (uint32_t)g.depth)   /* buffer and slot free: B is done with next - depth */
				event_wait_for(c, e2, next + 1 - (uint32_t)g.depth);
			pace();
			memcpy(aneshare_surface_data(in[next % (uint32_t)g.depth]),
			       g_frames + (size_t)(next % NREF) * (g_a_in / 2), g_a_in);
			uint64_t t0 = now_ns();
			int r = aneshare_event_signal(e0, next + 1);
			if (r < 0)
				die(c, "event_signal", r);
			times[next - first] = (emsg){ M_WRITTEN, next, 0, 0, t0, now_ns() - t0, { 0, 0 } };
		}
		event_wait_for(c, e2, end);   /* the batch is through */
		send_parent(res, times, (size_t)(end - first) * sizeof *times);
		pmsg done = { M_DONE, next, 0, 0, 0, 0, 0, 0 };
		send_parent(ctl, &done, sizeof done);
	}
	free(times);
	/* E0 closes: the runs model A parked on it fail with event_closed, its end */
	int r = aneshare_event_release(e0);
	if (r < 0)
		die(c, "event_release", r);
	g_sent -= setup_bytes;
	report_stats(res, 0);
	aneshare_disconnect(c);
	return 0;
}

/* A model's runs kept submitted ahead: frame f's ticket in slot f % depth. */
typedef struct ahead {
	aneshare_conn *c;
	aneshare_program *p;
	aneshare_surface **in, **out;
	aneshare_event *wait_in;     /* E0 (model A) or E1 (model B): frame f's input is there */
	aneshare_event *wait_free;   /* E2 for model A: B has read A's output buffer; NULL for B */
	aneshare_event *sig;         /* E1 (A) or E2 (B): this model's run of frame f is done */
	uint32_t ticket[MAX_DEPTH];
} ahead;

static void ahead_submit(ahead *a, uint32_t f)
{
	uint32_t k = f % (uint32_t)g.depth;
	aneshare_event_point w[2] = { { a->wait_in, f + 1 }, { a->wait_free, f + 1 - (uint32_t)g.depth } };
	aneshare_event_point s = { a->sig, f + 1 };
	aneshare_run_opts o = { .wait = w, .n_wait = a->wait_free && f + 1 > (uint32_t)g.depth ? 2 : 1,
	                        .signal = &s, .n_signal = 1 };
	int r = aneshare_run_submit_ex(a->p, &a->in[k], 1, &a->out[k], 1, &o, &a->ticket[k]);
	if (r < 0)
		die(a->c, "run_submit_ex", r);
}

/* The reply to frame f's run: false when the event it waited for closed
 * (the stream ended: the later runs' replies are read too). */
static bool ahead_wait(ahead *a, uint32_t f)
{
	int r = aneshare_wait(a->c, a->ticket[f % (uint32_t)g.depth]);
	if (r == -ANESHARE_EEVENT_CLOSED) {
		for (uint32_t i = 1; i < (uint32_t)g.depth; i++) {
			r = aneshare_wait(a->c, a->ticket[(f + i) % (uint32_t)g.depth]);
			if (r != -ANESHARE_EEVENT_CLOSED)
				die(a->c, "a run parked at the end", r);
		}
		return false;
	}
	if (r < 0)
		die(a->c, "run", r);
	return true;
}

/* Model B: awake when frame f's run starts (its input's event reached f + 1,
 * answered by the thread about to run it), so that the reply finds it
 * polling rather than asleep.  A closed event is the stream's end, which
 * ahead_wait reads from the run's own reply. */
static void early_wake(ahead *a, uint32_t f)
{
	int r = aneshare_event_wait(a->wait_in, f + 1, NULL);
	if (r < 0 && r != -ANESHARE_EEVENT_CLOSED)
		die(a->c, "event_wait", r);
}

/* Model A: frame f from the producer's buffer into its own output buffer. */
static int model_a_ev(int fd_p, int fd_b, int res)
{
	child_setup("pipeline: model A");
	aneshare_conn *c = connect_stage("pipeline-model-a");
	aneshare_surface *in[MAX_DEPTH], *out[MAX_DEPTH];
	ahead a = { c, compile(c, g_mil_a), in, out, NULL, NULL, NULL, { 0 } };
	for (int k = 0; k < g.depth; k++)
		in[k] = import_from(c, fd_p, g_a_in);
	a.wait_in = event_from(c, fd_p);
	for (int k = 0; k < g.depth; k++) {
		out[k] = surface(c, g_a_out);
		export_ro(out[k], fd_b);
	}
	a.sig = event_new(c);
	event_export_to(c, a.sig, fd_b);
	a.wait_free = event_from(c, fd_b);
	uint64_t setup_bytes = g_sent;
	for (uint32_t f = 0; f < (uint32_t)g.depth; f++)
		ahead_submit(&a, f);
	for (uint32_t f = 0; ahead_wait(&a, f); f++) {
		send_emsg(res, M_A_DONE, f, 1, now_ns(), aneshare_last_run_us(c));
		ahead_submit(&a, f + (uint32_t)g.depth);
	}
	int r = aneshare_event_release(a.sig);   /* E1 closes: model B's parked runs end */
	if (r < 0)
		die(c, "event_release", r);
	g_sent -= setup_bytes;
	report_stats(res, 1);
	aneshare_disconnect(c);
	return 0;
}

/* Model B: frame f from model A's buffer into its own output buffer f %
 * depth, checked against the reference before that buffer is run into
 * again. */
static int model_b_ev(int fd_a, int fd_p, int res)
{
	child_setup("pipeline: model B");
	aneshare_conn *c = connect_stage("pipeline-model-b");
	aneshare_surface *in[MAX_DEPTH], *out[MAX_DEPTH];
	ahead b = { c, compile(c, g_mil_b), in, out, NULL, NULL, NULL, { 0 } };
	for (int k = 0; k < g.depth; k++)
		in[k] = import_from(c, fd_a, g_b_in);
	b.wait_in = event_from(c, fd_a);
	for (int k = 0; k < g.depth; k++) {
		out[k] = surface(c, g_b_out);
		memset(aneshare_surface_data(out[k]), 0xff, g_b_out);   /* NaNs: the run must overwrite them */
	}
	b.sig = event_new(c);
	event_export_to(c, b.sig, fd_a);
	event_export_to(c, b.sig, fd_p);
	send_msg(res, M_READY, 0, 0, 0, 0, 0);
	uint64_t setup_bytes = g_sent;
	for (uint32_t f = 0; f < (uint32_t)g.depth; f++)
		ahead_submit(&b, f);
	for (uint32_t f = 0; early_wake(&b, f), ahead_wait(&b, f); f++) {
		uint64_t t1 = now_ns();
		uint64_t us = aneshare_last_run_us(c);
		void *o = aneshare_surface_data(out[f % (uint32_t)g.depth]);
		double e = rel_err16(o, g_ref + (size_t)(f % NREF) * (g_b_out / 2), g_b_out / 2);
		send_emsg(res, M_B_DONE, f, e <= B_TOL, t1, us);
		memset(o, 0xff, g_b_out);   /* for the frame after next */
		ahead_submit(&b, f + (uint32_t)g.depth);
	}
	int r = aneshare_event_release(b.sig);
	if (r < 0)
		die(c, "event_release", r);
	g_sent -= setup_bytes;
	report_stats(res, 2);
	aneshare_disconnect(c);
	return 0;
}

/* ---- the parent ------------------------------------------------------------------------ */

typedef struct kids {
	pid_t pid[3];
	int ctl, res;
} kids;

static int cloexec2(int r, int fds[2])
{
	if (r < 0 || fcntl(fds[0], F_SETFD, FD_CLOEXEC) < 0 || fcntl(fds[1], F_SETFD, FD_CLOEXEC) < 0)
		return -1;
	return 0;
}

/* A socketpair between two processes of the pipeline (CLOEXEC). */
static int sp(int fds[2])
{
	return cloexec2(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), fds);
}

static void start_kids(kids *k, aneshare_conn *parent_conn)
{
	int ctl[2], pa[2], ab[2], bp[2], res[2];
	/* res: a pipe that all three write to (writes of PIPE_BUF bytes or
	 * less are never interleaved) */
	if (sp(ctl) < 0 || sp(pa) < 0 || sp(ab) < 0 || sp(bp) < 0 || cloexec2(pipe(res), res) < 0)
		die(NULL, "socketpair", -errno);
	/* The results of a batch wait in the pipe until the batch is through. */
	int cap = 16384;   /* POSIX promises PIPE_BUF only; macOS gives 16 KiB at least */
#ifdef F_SETPIPE_SZ
	if (fcntl(res[1], F_SETPIPE_SZ, 1 << 20) > 0 || fcntl(res[1], F_GETPIPE_SZ) > 0)
		cap = fcntl(res[1], F_GETPIPE_SZ);
#endif
	/* --sync event: three messages per frame (the producer's, A's, B's) */
	g_res_max = (uint32_t)cap / sizeof(pmsg) / (g.events ? 3 : 1);
	if (g_res_max > MAX_BATCH)
		g_res_max = MAX_BATCH;
	for (int i = 0; i < 3; i++) {
		fflush(NULL);
		pid_t pid = fork();
		if (pid < 0)
			die(NULL, "fork", -errno);
		if (pid == 0) {
			close(aneshare_fd(parent_conn));   /* the parent's connection is not ours */
			close(res[0]);
			close(ctl[1]);
			/* only its own ends: a process that dies is then seen to (EOF) */
			int mine[3][3] = { { ctl[0], pa[0], bp[0] }, { pa[1], ab[0], -1 }, { ab[1], bp[1], -1 } };
			int all[7] = { ctl[0], pa[0], pa[1], ab[0], ab[1], bp[0], bp[1] };
			for (int j = 0; j < 7; j++)
				if (all[j] != mine[i][0] && all[j] != mine[i][1] && all[j] != mine[i][2])
					close(all[j]);
			int rc = g.events ? (i == 0 ? producer_ev(ctl[0], pa[0], bp[0], res[1])
			                     : i == 1 ? model_a_ev(pa[1], ab[0], res[1])
			                              : model_b_ev(ab[1], bp[1], res[1]))
			         : i == 0 ? producer(ctl[0], pa[0], bp[0], res[1])
			         : i == 1 ? model_a(pa[1], ab[0], res[1])
			                  : model_b(ab[1], bp[1], res[1]);
			_exit(rc);
		}
		k->pid[i] = pid;
	}
	close(ctl[0]);
	close(pa[0]);
	close(pa[1]);
	close(ab[0]);
	close(ab[1]);
	close(bp[0]);
	close(bp[1]);
	close(res[1]);
	k->ctl = ctl[1];
	k->res = res[0];
}

static bool reap_kids(kids *k)
{
	bool ok = true;
	for (int i = 0; i < 3; i++) {
		int st;
		while (waitpid(k->pid[i], &st, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			ok = false;
	}
	return ok;
}

/* A message from the children's result channel; exits if they died. */
static void result_msg(kids *k, pmsg *m)
{
	if (!recv_all(k->res, m, sizeof *m)) {
		fprintf(stderr, "pipeline: a process of the pipeline failed\n");
		for (int i = 0; i < 3; i++)
			kill(k->pid[i], SIGKILL);
		(void)reap_kids(k);
		exit(1);
	}
}

#define NPARTS 5   /* figures per frame of where the time goes (see print_parts) */

/* --sync event: the batch's times from the three processes (3n messages,
 * frames [first, first + n) in any order), into each frame's latency and
 * parts; the number that did not match the reference. */
static int gather_event_batch(kids *k, uint32_t first, uint32_t n, double *lat, double (*parts)[NPARTS])
{
	enum { P, A, B };
	emsg *got = calloc((size_t)n * 3, sizeof *got);
	if (!got)
		die(NULL, "out of memory", -ENOMEM);
	for (uint32_t i = 0; i < 3 * n; i++) {
		pmsg raw;
		emsg m;
		result_msg(k, &raw);
		memcpy(&m, &raw, sizeof m);
		int who = m.kind == M_WRITTEN ? P : m.kind == M_A_DONE ? A : m.kind == M_B_DONE ? B : -1;
		if (who < 0 || m.frame - first >= n || got[(size_t)(m.frame - first) * 3 + (size_t)who].kind)
			die(NULL, "unexpected result message", -EPROTO);
		got[(size_t)(m.frame - first) * 3 + (size_t)who] = m;
	}
	int bad = 0;
	for (uint32_t i = 0; i < n; i++) {
		const emsg *e = &got[(size_t)i * 3];
		bad += !e[B].ok;
		double l = (double)e[B].t_ns - (double)e[P].t_ns;
		if (lat)
			lat[i] = l;
		if (parts) {   /* signal round trip, write -> A's reply read by A, A's run, B's run, the rest */
			parts[i][0] = (double)e[P].us;
			parts[i][1] = (double)e[A].t_ns - (double)e[P].t_ns;
			parts[i][2] = (double)e[A].us * 1e3;
			parts[i][3] = (double)e[B].us * 1e3;
			parts[i][4] = l - parts[i][2] - parts[i][3];
		}
	}
	free(got);
	return bad;
}

/* The pipeline's next n frames: their latencies (ns) into lat (may be
 * NULL); the number that did not match the reference. */
static int run_batch(kids *k, uint32_t n, double *lat, double (*parts)[NPARTS])
{
	static uint32_t first;   /* the batch's first frame */
	send_msg(k->ctl, M_RUN, 0, 0, n, 0, 0);
	/* Sleep until the producer says the batch is through, then read its
	 * results (they fit the pipe: n <= g_res_max), so that this process
	 * is not woken once per frame while the next one is on its way. */
	pmsg d;
	if (!recv_all(k->ctl, &d, sizeof d) || d.kind != M_DONE) {
		pmsg m;
		result_msg(k, &m);   /* a child failed: exits */
	}
	if (g.events) {
		int bad = gather_event_batch(k, first, n, lat, parts);
		first += n;
		return bad;
	}
	int bad = 0;
	for (uint32_t i = 0; i < n; i++) {
		pmsg m;
		result_msg(k, &m);
		if (m.kind != M_RESULT)
			die(NULL, "unexpected result message", -EPROTO);
		bad += !m.count;
		if (lat)
			lat[i] = (double)m.value;
		if (parts) {   /* hop P -> A, A's run, hop A -> B, B's run */
			parts[i][0] = (double)m.t0_ns;
			parts[i][1] = (double)m.ta_ns;
			parts[i][2] = (double)m.tb_ns;
			parts[i][3] = (double)m.value - (double)(m.t0_ns + m.ta_ns + m.tb_ns);
			parts[i][4] = 0;
		}
	}
	first += n;
	return bad;
}

/* What the daemon shows as shared: entries held by two connections. */
static uint32_t shared_pairs(aneshare_conn *c)
{
	aneshare_status *st;
	int r = aneshare_get_status(c, &st);
	if (r < 0)
		die(c, "status", r);
	uint32_t n = 0;
	for (uint32_t i = 0; i < st->n_shared; i++)
		n += st->shared_list[i].n_holders == 2;
	aneshare_status_free(st);
	return n;
}

/* The daemon's run counters (status): all runs, those on lanes, those run
 * on the thread that raised their event. */
static void run_counts(aneshare_conn *c, uint64_t n[3])
{
	aneshare_status *st;
	int r = aneshare_get_status(c, &st);
	if (r < 0)
		die(c, "status", r);
	n[0] = st->runs;
	n[1] = st->lane_runs;
	n[2] = st->event_runs;
	aneshare_status_free(st);
}

static double p50(double *v, size_t n)
{
	qsort(v, n, sizeof *v, ex_cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void usage(void)
{
	fprintf(stderr, "usage: pipeline [--socket PATH] [--sync event|socket] [--frames N] [--depth 1-%d] "
	                "[--spin-us US] [--lib-spin-us US] [--interval-us US] [--bench REPS [--batch K]] "
	                "[--quiet]\n", MAX_DEPTH);
	exit(2);
}

int main(int argc, char **argv)
{
	g = (cfg){ .frames = 64, .depth = 2, .spin_us = 0, .lib_spin_us = -1, .batch = 100, .events = true };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--quiet")) {
			g.quiet = true;
			continue;
		}
		if (!v)
			usage();
		i++;
		if (!strcmp(a, "--socket"))
			g.socket = v;
		else if (!strcmp(a, "--sync") && (!strcmp(v, "event") || !strcmp(v, "socket")))
			g.events = !strcmp(v, "event");
		else if (!strcmp(a, "--frames"))
			g.frames = atoi(v);
		else if (!strcmp(a, "--depth"))
			g.depth = atoi(v);
		else if (!strcmp(a, "--spin-us"))
			g.spin_us = atoi(v);
		else if (!strcmp(a, "--lib-spin-us"))
			g.lib_spin_us = atoi(v);
		else if (!strcmp(a, "--interval-us"))
			g.interval_us = atoi(v);
		else if (!strcmp(a, "--bench"))
			g.bench_reps = atoi(v);
		else if (!strcmp(a, "--batch"))
			g.batch = atoi(v);
		else
			usage();
	}
	if (g.frames < 1 || g.frames > 1000000 || g.depth < 1 || g.depth > MAX_DEPTH || g.spin_us < 0 ||
	    g.spin_us > 100000 || g.lib_spin_us < -1 || g.lib_spin_us > 100000 || g.interval_us < 0 ||
	    g.interval_us > 1000000 || g.bench_reps < 0 || g.bench_reps > 1000 || g.batch < 1 ||
	    g.batch > MAX_BATCH)
		usage();
	if (g.bench_reps)
		g.depth = 1;   /* latency: one frame in flight */
	signal(SIGPIPE, SIG_IGN);
	g_mil_a = ex_read_text(ANES_EXAMPLES_DIR "/dynamic_matmul.mil");
	g_mil_b = ex_read_text(ANES_EXAMPLES_DIR "/transformer_block.mil");
	if (!g_mil_a || !g_mil_b) {
		fprintf(stderr, "pipeline: cannot read the models in %s\n", ANES_EXAMPLES_DIR);
		return 1;
	}

	single one;
	single_open(&one);
	make_frames();
	make_reference(&one);

	kids k;
	start_kids(&k, one.c);
	pmsg m;
	result_msg(&k, &m);   /* model B has imported: every surface is shared */
	if (m.kind != M_READY)
		die(NULL, "unexpected message", -EPROTO);
	uint32_t pairs = shared_pairs(one.c);
	if (pairs < 2u * (uint32_t)g.depth) {
		fprintf(stderr, "pipeline: status shows %u surfaces held by two processes, not %d\n", pairs,
		        2 * g.depth);
		return 1;
	}

	int bad = 0, bad_one = 0;
	uint32_t frames = 0;
	double ratio50 = 0, pipe50 = 0, one50 = 0, part50[NPARTS] = { 0 };
	uint64_t runs0[3] = { 0 }, runs1[3] = { 0 };   /* the daemon's counters around the timed part */
	if (!g.bench_reps) {
		double *lat = malloc((size_t)g.frames * sizeof *lat);
		if (!lat)
			die(NULL, "out of memory", -ENOMEM);
		for (int done = 0; done < g.frames;) {
			int n = g.frames - done < (int)g_res_max ? g.frames - done : (int)g_res_max;
			bad += run_batch(&k, (uint32_t)n, lat + done, NULL);
			done += n;
		}
		frames = (uint32_t)g.frames;
		pipe50 = p50(lat, (size_t)g.frames) / 1e3;
		free(lat);
	} else {
		if (g.batch > (int)g_res_max)
			g.batch = (int)g_res_max;
		int reps = g.bench_reps, n = g.batch;
		double *lp = malloc((size_t)n * sizeof *lp), *ls = malloc((size_t)n * sizeof *ls);
		double *lp2 = malloc((size_t)reps * (size_t)n * sizeof *lp2);
		if (!lp2)
			die(NULL, "out of memory", -ENOMEM);
		double *rp = malloc((size_t)reps * sizeof *rp), *rs = malloc((size_t)reps * sizeof *rs);
		double *rr = malloc((size_t)reps * sizeof *rr);
		double (*parts)[NPARTS] = malloc((size_t)reps * (size_t)n * sizeof *parts);
		if (!lp || !ls || !rp || !rs || !rr || !parts)
			die(NULL, "out of memory", -ENOMEM);
		(void)run_batch(&k, (uint32_t)n, NULL, NULL);   /* warm up both */
		for (int i = 0; i < n; i++)
			(void)single_frame(&one, (uint32_t)i);
		run_counts(one.c, runs0);
		for (int r = 0; r < reps; r++) {
			/* the baseline, then the pipeline, K frames each */
			for (int i = 0; i < n; i++) {
				ls[i] = (double)single_frame(&one, (uint32_t)i);
				bad_one += !(rel_err16(aneshare_surface_data(one.out),
				                       g_ref + (size_t)(i % NREF) * (g_b_out / 2), g_b_out / 2) <= B_TOL);
			}
			bad += run_batch(&k, (uint32_t)n, lp, parts + (size_t)r * (size_t)n);
			rs[r] = p50(ls, (size_t)n) / 1e3;
			rp[r] = p50(lp, (size_t)n) / 1e3;
			rr[r] = rp[r] / rs[r];
		}
		run_counts(one.c, runs1);
		frames = (uint32_t)(reps + 1) * (uint32_t)n;
		pipe50 = p50(rp, (size_t)reps);
		one50 = p50(rs, (size_t)reps);
		ratio50 = p50(rr, (size_t)reps);
		/* where the pipeline's time goes: the median of each part over all frames */
		size_t nf = (size_t)reps * (size_t)n;
		for (int j = 0; j < NPARTS; j++) {
			for (size_t i = 0; i < nf; i++)
				lp2[i] = parts[i][j];
			part50[j] = p50(lp2, nf) / 1e3;
		}
		free(parts);
		free(lp);
		free(ls);
		free(rp);
		free(rs);
		free(rr);
		free(lp2);
	}

	send_msg(k.ctl, M_STOP, 0, 0, 0, 0, 0);
	uint64_t between = 0;
	for (int i = 0; i < 3; i++) {
		result_msg(&k, &m);
		if (m.kind != M_STATS)
			die(NULL, "unexpected message", -EPROTO);
		between += m.value;
	}
	bool kids_ok = reap_kids(&k);
	single_close(&one);

	double per_frame = (double)between / frames;
	const char *sync = g.events ? "event" : "socket";
	printf("pipeline: %u frames, producer -> model A -> model B, %d in flight, ordered by %s; %d of "
	       "them off the one-process reference\n", frames, g.depth, g.events ? "events" : "socket messages",
	       bad);
	printf("  shared surfaces: %u, each held by two processes (status)\n", pairs);
	printf("  bytes sent between the three processes: %.1f per frame (messages; a frame is %zu bytes, "
	       "model A's output %zu)\n", per_frame, g_a_in, g_a_out);
	if (g.bench_reps) {
		printf("  per-frame latency p50, frames %d us apart: 3 processes %.1f us, one process (2-step "
		       "chain) %.1f us; ratio %.3f (median of %d repetitions of %d frames)\n", g.interval_us,
		       pipe50, one50, ratio50, g.bench_reps, g.batch);
		if (g.events)
			printf("  3 processes, p50 of each part: the producer's event.signal round trip %.1f us, "
			       "its write -> A's reply read by A %.1f us, A's run %.1f us, B's run %.1f us (the daemon's "
			       "elapsed_us), the rest of the latency (wake-ups, hops, replies) %.1f us\n", part50[0],
			       part50[1], part50[2], part50[3], part50[4]);
		else
			printf("  3 processes, p50 of each part: producer -> A %.1f us, A's run %.1f us, A -> B %.1f us, "
			       "B's run %.1f us\n", part50[0], part50[1], part50[2], part50[3]);
		printf("  the daemon's runs in the timed part (pipeline and chains): %" PRIu64 ", on lanes %" PRIu64
		       ", on the thread that raised their event %" PRIu64 " (the pipeline ran %d)\n",
		       runs1[0] - runs0[0], runs1[1] - runs0[1], runs1[2] - runs0[2], 2 * g.bench_reps * g.batch);
		printf("bench: interval_us=%d pipeline_p50_us=%.2f single_p50_us=%.2f ratio=%.4f bad=%d sync=%s\n",
		       g.interval_us, pipe50, one50, ratio50, bad + bad_one, sync);
	} else {
		printf("  per-frame latency p50 (the producer's write to model B's result): %.1f us\n", pipe50);
	}
	/* Messages only: a frame's share of them stays far under one tensor. */
	if (per_frame >= (double)g_b_in / 8) {
		fprintf(stderr, "pipeline: %.1f bytes per frame crossed between the processes\n", per_frame);
		return 1;
	}
	return bad || bad_one || !kids_ok ? 1 : 0;
}
