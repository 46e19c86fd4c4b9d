/* SPDX-License-Identifier: MIT */
/*
 * The daemon against its floors: every figure is measured next to its
 * baseline in the same run, several repetitions each (medians reported),
 * and the acceptance ratios of docs/performance.md are checked at the end.
 *
 *   bench_daemon [--quick] [--reps N] [--aneshared PATH] [--json]
 *
 * --json: the report goes to stderr, and stdout gets one JSON object with
 * the date, the machine, every figure and every check (the data files in
 * bench/results/ are such objects).
 *
 * It starts its own aneshared ($ANESHARED or --aneshared; CPU backend, on
 * a private socket) and calls the same CPU backend in-process for the
 * in-process baselines.  The raw baselines are two processes doing
 * ping-pong over a socketpair.  scripts/bench.sh builds and runs it.
 */
#ifdef __linux__
#include <dirent.h>
#endif
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "anes_fp16.h"
#include "anes_proto.h"
#include "aneshare.h"
#include "backend.h"
#include "bench_util.h"

/* ---- helpers ----------------------------------------------------------------- */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static pid_t g_daemon = 0;
static pid_t g_main;

static _Noreturn void die(const char *what, int rc, const char *msg)
{
	fprintf(stderr, "bench_daemon: %s failed (%d %s): %s\n", what, rc,
	        rc < 0 ? aneshare_strerror(rc) : "", msg ? msg : "");
	if (g_daemon > 0 && getpid() == g_main)
		kill(g_daemon, SIGTERM);
	exit(1);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* q-quantile of v[0..n) (sorts v). */
static double quantile(double *v, size_t n, double q)
{
	qsort(v, n, sizeof *v, cmp_double);
	size_t i = (size_t)(q * (double)(n - 1) + 0.5);
	return v[i < n ? i : n - 1];
}

static double median(double *v, size_t n)
{
	return quantile(v, n, 0.5);
}

static int g_reps = 5;
static bool g_quick;
static char g_sock[256];
static char g_dir[128];
static const char *g_aneshared;

/* ---- the programs ------------------------------------------------------------ */

/* A trivial program: relu on 16 fp16 values. */
static const char *mil_tiny =
	"program(1.3)\n{\n"
	"    func main<ios18>(tensor<fp16, [1, 1, 1, 16]> x) {\n"
	"        tensor<fp16, [1, 1, 1, 16]> y = relu(x = x)[name = string(\"y\")];\n"
	"    } -> (y);\n}\n";

/* 16 MiB in, 16 MiB out: identity on [1, 1, 2048, 4096] fp16. */
static const char *mil_big =
	"program(1.3)\n{\n"
	"    func main<ios18>(tensor<fp16, [1, 1, 2048, 4096]> x) {\n"
	"        tensor<fp16, [1, 1, 2048, 4096]> y = identity(x = x)[name = string(\"y\")];\n"
	"    } -> (y);\n}\n";
#define BIG_BYTES (16u << 20)

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die(path, -errno, "cannot open");
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *s = malloc((size_t)n + 1);
	if (!s || fread(s, 1, (size_t)n, f) != (size_t)n)
		die(path, -EIO, "cannot read");
	s[n] = '\0';
	fclose(f);
	return s;
}

static char *mil_matmul(void)
{
	return read_file(ANES_SOURCE_DIR "/examples/dynamic_matmul.mil");
}

/* ---- the daemon ---------------------------------------------------------------- */

static const char *const *g_daemon_args;   /* extra arguments of the next daemon_start */

static void daemon_start(void)
{
	snprintf(g_dir, sizeof g_dir, "/tmp/anes-bench-XXXXXX");
	if (!mkdtemp(g_dir))
		die("mkdtemp", -errno, g_dir);
	snprintf(g_sock, sizeof g_sock, "%s/aneshare.sock", g_dir);
	pid_t pid = fork();
	if (pid < 0)
		die("fork", -errno, NULL);
	if (pid == 0) {
		setenv("XDG_CONFIG_HOME", g_dir, 1);
		char log[300];
		snprintf(log, sizeof log, "%s/daemon.log", g_dir);
		int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (lfd >= 0) {
			dup2(lfd, 1);
			dup2(lfd, 2);
		}
		const char *argv[16] = { g_aneshared, "--socket", g_sock, "--backend", "cpu" };
		int n = 5;
		for (int i = 0; g_daemon_args && g_daemon_args[i] && n < 15; i++)
			argv[n++] = g_daemon_args[i];
		argv[n] = NULL;
		if (g_daemon_args)
			setenv("OPENBLAS_NUM_THREADS", "1", 1);   /* one device queue: one core's work */
		execv(g_aneshared, (char *const *)argv);
		_exit(127);
	}
	g_daemon = pid;
	if (bench_wait_daemon(g_sock) < 0)
		die("starting aneshared", -ETIMEDOUT, g_aneshared);
}

static void daemon_stop(void)
{
	if (g_daemon > 0) {
		kill(g_daemon, SIGTERM);
		waitpid(g_daemon, NULL, 0);
		g_daemon = 0;
	}
	unlink(g_sock);
	char lock[300];
	snprintf(lock, sizeof lock, "%s.lock", g_sock);
	unlink(lock);
	snprintf(lock, sizeof lock, "%s/daemon.log", g_dir);
	unlink(lock);
	rmdir(g_dir);
}

/* VmRSS (kB) of pid. */
static long rss_kb(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	long v = -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* The machine's CPU time so far, in clock ticks, from /proc/stat's first
 * line: all of it and the part the hypervisor ran something else in place
 * of a vCPU (steal).  Both 0 where there is no /proc/stat. */
typedef struct cpu_ticks {
	unsigned long long total, steal;
} cpu_ticks;

static cpu_ticks cpu_ticks_now(void)
{
	cpu_ticks t = { 0, 0 };
	unsigned long long v[8] = { 0 };
	FILE *f = fopen("/proc/stat", "re");
	if (!f)
		return t;
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
	           &v[5], &v[6], &v[7]) == 8) {
		for (int i = 0; i < 8; i++)
			t.total += v[i];
		t.steal = v[7];
	}
	fclose(f);
	return t;
}

/* The share of CPU time stolen between a and b, in percent (-1: unknown). */
static double steal_pct(cpu_ticks a, cpu_ticks b)
{
	if (b.total <= a.total)
		return -1;
	return 100.0 * (double)(b.steal - a.steal) / (double)(b.total - a.total);
}

static aneshare_conn *connect_or_die(const char *name)
{
	aneshare_conn *c;
	int r = aneshare_connect(g_sock, name, &c);
	if (r < 0)
		die("connect", r, g_sock);
	return c;
}

static aneshare_program *compile_or_die(aneshare_conn *c, const char *mil)
{
	aneshare_program *p;
	int r = aneshare_program_compile(c, mil, NULL, 0, &p, NULL);
	if (r < 0)
		die("compile", r, aneshare_last_error(c));
	return p;
}

static aneshare_surface *surface_or_die(aneshare_conn *c, size_t size)
{
	aneshare_surface *s;
	int r = aneshare_surface_create(c, size, &s);
	if (r < 0)
		die("surface.create", r, aneshare_last_error(c));
	return s;
}

/* ---- in-process backend --------------------------------------------------------- */

static anes_backend *g_backend;

static anes_bprogram *bcompile(const char *mil)
{
	char err[512];
	anes_bprogram *p;
	int r = g_backend->ops->compile(g_backend, mil, strlen(mil), NULL, 0, &p, err, sizeof err);
	if (r < 0)
		die("in-process compile", r, err);
	return p;
}

static void brun(anes_bprogram *p, const void *in, void *out)
{
	char err[512];
	const void *ins[1] = { in };
	void *outs[1] = { out };
	int r = g_backend->ops->run(g_backend, p, 0, ins, outs, err, sizeof err);
	if (r < 0)
		die("in-process run", r, err);
}

/* ---- raw ping-pong -------------------------------------------------------------- */

#define REQ_BYTES 72   /* about a run request frame */
#define REP_BYTES 32   /* about a run reply frame */

static void full_read(int fd, void *buf, size_t n)
{
	char *p = buf;
	while (n > 0) {
		ssize_t k = read(fd, p, n);
		if (k <= 0) {
			if (k < 0 && errno == EINTR)
				continue;
			_exit(0);   /* the peer is gone: done */
		}
		p += k;
		n -= (size_t)k;
	}
}

static void full_write(int fd, const void *buf, size_t n)
{
	if (anes_write_all(fd, buf, n) < 0)
		_exit(0);
}

/* A child that answers every REQ_BYTES with REP_BYTES until EOF. */
static pid_t echo_child(int *ret_fd)
{
	int sv[2];
	int sr = anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sv);
	if (sr < 0)
		die("socketpair", sr, NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork", -errno, NULL);
	if (pid == 0) {
		close(sv[0]);
		char buf[REQ_BYTES], rep[REP_BYTES] = { 0 };
		for (;;) {
			full_read(sv[1], buf, sizeof buf);
			full_write(sv[1], rep, sizeof rep);
		}
	}
	close(sv[1]);
	*ret_fd = sv[0];
	return pid;
}

static void pingpong_once(int fd)
{
	char req[REQ_BYTES] = { 1 }, rep[REP_BYTES];
	full_write(fd, req, sizeof req);
	full_read(fd, rep, sizeof rep);
}

/* The same, but the reply is polled for (up to 1 ms) before sleeping, as a
 * libaneshare blocking call does by default (aneshare_set_spin). */
static void pingpong_poll_once(int fd)
{
	char req[REQ_BYTES] = { 1 }, rep[REP_BYTES];
	full_write(fd, req, sizeof req);
	size_t got = 0;
	double t0 = now_s();
	while (got < sizeof rep && now_s() - t0 < 1e-3) {
		ssize_t k = recv(fd, rep + got, sizeof rep - got, MSG_DONTWAIT);
		if (k == 0)
			_exit(0);
		if (k > 0)
			got += (size_t)k;
	}
	full_read(fd, rep + got, sizeof rep - got);
}

static void reap(pid_t pid, int fd)
{
	close(fd);
	waitpid(pid, NULL, 0);
}

/* ---- results ------------------------------------------------------------------- */

static void json_report(FILE *o, double total)
{
	bench_json_begin(o, "bench_daemon");
	fprintf(o, "  \"quick\": %s,\n  \"reps\": %d,\n  \"seconds\": %.1f,\n",
	        g_quick ? "true" : "false", g_reps, total);
	bench_json_end(o);
}

/* ---- 1. round trip ---------------------------------------------------------------- */

/*
 * Where the two ends of a round trip run decides most of its cost: on this
 * kind of machine (a VM), waking a thread on another, idle vCPU costs
 * several times what a switch on the same vCPU does.  The scheduler places
 * the two processes of a ping-pong and the client and daemon threads on
 * its own terms, and not always alike, so the round trip is measured with
 * both ends on one core, with the client on core 0 and the other end
 * (echo process or daemon) on core 1, and as the scheduler places them;
 * each against its ping-pong in the same placement.  The limit is checked
 * on the two placements that are the same for both.
 */
typedef enum { PLACE_FREE, PLACE_SAME, PLACE_CROSS } placement;

static const char *const place_name[] = { "as placed by the scheduler", "one core",
                                          "client core 0, server core 1" };

#ifdef __linux__
/* cpu < 0: every CPU. */
static void pin_tid(pid_t tid, int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	if (cpu < 0) {
		for (int i = 0; i < CPU_SETSIZE && i < 1024; i++)
			CPU_SET(i, &set);
	} else {
		CPU_SET(cpu, &set);
	}
	(void)sched_setaffinity(tid, sizeof set, &set);
}

/* Every thread of pid (the daemon: its threads exist by now). */
static void pin_process(pid_t pid, int cpu)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%ld/task", (long)pid);
	DIR *d = opendir(path);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			pin_tid((pid_t)atol(e->d_name), cpu);
	closedir(d);
}
#define CAN_PIN true
#else
/* No thread affinity (macOS): only the scheduler's placement is measured. */
static void pin_tid(pid_t tid, int cpu) { (void)tid; (void)cpu; }
static void pin_process(pid_t pid, int cpu) { (void)pid; (void)cpu; }
#define CAN_PIN false
#endif

/* echo: the ping-pong's echo process, or 0. */
static void place(placement pl, pid_t echo)
{
	int client = pl == PLACE_FREE ? -1 : 0, server = pl == PLACE_FREE ? -1 : pl == PLACE_SAME ? 0 : 1;
	pin_tid(0, client);
	if (echo > 0)
		pin_process(echo, server);
	pin_process(g_daemon, server);
}

static double g_rtt_ratio[3];

static void bench_rtt_at(placement pl)
{
	int n = g_quick ? 500 : 2000;
	double *t = malloc(sizeof(double) * (size_t)n);
	double pp50[2][32], pp99[2][32], ip50[32], dp50[2][32], dp99[2][32];

	/* [0] sleeps (spin 0), [1] as libaneshare does by default: two
	 * connections, so that each keeps its own spin state */
	aneshare_conn *cs[2];
	aneshare_program *ps[2];
	aneshare_surface *ins[2], *outs[2];
	for (int v = 0; v < 2; v++) {
		cs[v] = connect_or_die("bench-rtt");
		if (v == 0)
			aneshare_set_spin(cs[v], 0);
		ps[v] = compile_or_die(cs[v], mil_tiny);
		ins[v] = surface_or_die(cs[v], 4096);
		outs[v] = surface_or_die(cs[v], 4096);
	}
	anes_bprogram *bp = bcompile(mil_tiny);
	uint16_t bin[16] = { 0 }, bout[16];
	int efd;
	pid_t echo = echo_child(&efd);
	place(pl, echo);

	for (int rep = 0; rep < g_reps; rep++) {
		for (int v = 0; v < 2; v++) {
			void (*once)(int) = v ? pingpong_poll_once : pingpong_once;
			for (int i = 0; i < 50; i++)   /* warm up */
				once(efd);
			for (int i = 0; i < n; i++) {
				double t0 = now_s();
				once(efd);
				t[i] = now_s() - t0;
			}
			pp50[v][rep] = quantile(t, (size_t)n, 0.5);
			pp99[v][rep] = quantile(t, (size_t)n, 0.99);
		}

		for (int i = 0; i < n; i++) {
			double t0 = now_s();
			brun(bp, bin, bout);
			t[i] = now_s() - t0;
		}
		ip50[rep] = quantile(t, (size_t)n, 0.5);

		for (int v = 0; v < 2; v++) {
			for (int i = 0; i < 50; i++)
				aneshare_run(ps[v], 0, &ins[v], 1, &outs[v], 1);
			for (int i = 0; i < n; i++) {
				double t0 = now_s();
				int r = aneshare_run(ps[v], 0, &ins[v], 1, &outs[v], 1);
				t[i] = now_s() - t0;
				if (r < 0)
					die("run", r, aneshare_last_error(cs[v]));
			}
			dp50[v][rep] = quantile(t, (size_t)n, 0.5);
			dp99[v][rep] = quantile(t, (size_t)n, 0.99);
		}
	}
	double b = median(ip50, (size_t)g_reps) * 1e6, a[2], a99[2], d[2], d99[2];
	for (int v = 0; v < 2; v++) {
		a[v] = median(pp50[v], (size_t)g_reps) * 1e6;
		a99[v] = median(pp99[v], (size_t)g_reps) * 1e6;
		d[v] = median(dp50[v], (size_t)g_reps) * 1e6;
		d99[v] = median(dp99[v], (size_t)g_reps) * 1e6;
	}
	g_rtt_ratio[pl] = d[1] / (a[0] + b);
	bench_fig("us", d[1], "run round trip p50, %s", place_name[pl]);
	bench_fig("us", d[0], "run round trip p50, client sleeping, %s", place_name[pl]);
	bench_fig("us", a[0], "ping-pong p50, %s", place_name[pl]);
	bench_fig("us", a[1], "ping-pong p50, client polling, %s", place_name[pl]);
	bench_fig("us", b, "in-process run p50, %s", place_name[pl]);
	bench_fig("ratio", g_rtt_ratio[pl], "run round trip / (ping-pong + in-process), %s", place_name[pl]);
	printf("  %s:\n", place_name[pl]);
	printf("    %-48s p50 %8.1f us   p99 %8.1f us\n", "raw socketpair ping-pong (2 processes)", a[0], a99[0]);
	printf("    %-48s p50 %8.1f us   p99 %8.1f us\n", "  the same, the client polling for the reply", a[1],
	       a99[1]);
	printf("    %-48s p50 %8.1f us\n", "backend run in-process", b);
	printf("    %-48s p50 %8.1f us   p99 %8.1f us\n", "aneshare_run through the daemon", d[1], d99[1]);
	printf("    %-48s p50 %8.1f us   p99 %8.1f us\n", "  the same, the client sleeping (spin 0)", d[0],
	       d99[0]);
	printf("    ratio daemon / (ping-pong + in-process)        %.2f%s\n", g_rtt_ratio[pl],
	       pl == PLACE_FREE ? "" : "  (limit 1.5)");
	printf("      client sleeping / (ping-pong + in-process)   %.2f\n", d[0] / (a[0] + b));
	printf("      daemon / (polling ping-pong + in-process)    %.2f\n", d[1] / (a[1] + b));

	place(PLACE_FREE, echo);
	reap(echo, efd);
	g_backend->ops->program_free(g_backend, bp);
	for (int v = 0; v < 2; v++) {
		aneshare_surface_release(ins[v]);
		aneshare_surface_release(outs[v]);
		aneshare_program_release(ps[v]);
		aneshare_disconnect(cs[v]);
	}
	free(t);
}

/* Run a section in every placement: where threads can be pinned, one core
 * and (with 2 CPUs) two cores, each checked (ratio[pl] <= limit, named
 * what[pl]), then as the scheduler places them, printed only; elsewhere
 * only the last, checked. */
static void by_placement(void (*at)(placement), const double *ratio, const char *const what[3], double limit)
{
	if (!CAN_PIN) {
		at(PLACE_FREE);
		bench_check(ratio[PLACE_FREE], limit, true, "%s", what[PLACE_FREE]);
		return;
	}
	for (placement pl = PLACE_SAME; pl <= PLACE_CROSS; pl++) {
		if (pl == PLACE_CROSS && sysconf(_SC_NPROCESSORS_ONLN) < 2)
			break;
		at(pl);
		bench_check(ratio[pl], limit, true, "%s", what[pl]);
	}
	at(PLACE_FREE);
}

static void bench_rtt(void)
{
	static const char *const what[3] = { "run p50 <= 1.5 x (ping-pong + in-process)",
		                             "run p50 <= 1.5 x (ping-pong + in-process), one core",
		                             "run p50 <= 1.5 x (ping-pong + in-process), two cores" };
	printf("\n== run round trip, trivial program (relu on 16 fp16), %d x %d calls\n", g_reps,
	       g_quick ? 500 : 2000);
	by_placement(bench_rtt_at, g_rtt_ratio, what, 1.5);
}

/* ---- 1b. the Python client -------------------------------------------------------- */

/*
 * The Python package (python/aneshare, ctypes over libaneshare) against the
 * C client, on the same daemon, in the same run: bench/bench_python.py runs
 * in a child process and times its blocking runs of the trivial program
 * when told to, in turn with this process timing its own, rep by rep.  The
 * interpreter is $ANESHARE_PYTHON, else /usr/bin/python3 (the one with
 * Debian's numpy).
 */
#ifndef ANES_LIBANESHARE
#define ANES_LIBANESHARE ""
#endif

static void bench_python(void)
{
	const char *py = getenv("ANESHARE_PYTHON");
	if (!py || !*py)
		py = "/usr/bin/python3";
	int n = g_quick ? 500 : 2000;
	printf("\n== the Python client (python/aneshare) against the C client, trivial program, %d x %d calls\n",
	       g_reps, n);
	char script[512], pypath[512], runs[16];
	snprintf(script, sizeof script, "%s/bench/bench_python.py", ANES_SOURCE_DIR);
	snprintf(pypath, sizeof pypath, "%s/python", ANES_SOURCE_DIR);
	snprintf(runs, sizeof runs, "%d", n);
	int to_py[2], from_py[2];
	if (anes_pipe_cloexec(to_py) < 0 || anes_pipe_cloexec(from_py) < 0)
		die("pipe", -errno, NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork", -errno, NULL);
	if (pid == 0) {
		dup2(to_py[0], 0);
		dup2(from_py[1], 1);
		setenv("PYTHONPATH", pypath, 1);
		const char *lib = ANES_LIBANESHARE;
		if (!getenv("ANESHARE_LIBRARY") && *lib)
			setenv("ANESHARE_LIBRARY", lib, 1);
		execl(py, py, script, "--socket", g_sock, "--runs", runs, (char *)NULL);
		_exit(127);
	}
	close(to_py[0]);
	close(from_py[1]);
	FILE *in = fdopen(from_py[0], "r");
	char line[256];
	if (!in || !fgets(line, sizeof line, in) || strncmp(line, "ready", 5) != 0) {
		printf("  skipped: %s %s did not start (it needs numpy and the aneshare package)\n", py,
		       script);
		close(to_py[1]);
		if (in)
			fclose(in);
		waitpid(pid, NULL, 0);
		return;
	}

	aneshare_conn *c = connect_or_die("bench-python-c");
	aneshare_program *p = compile_or_die(c, mil_tiny);
	aneshare_surface *s_in = surface_or_die(c, 4096), *s_out = surface_or_die(c, 4096);
	double *t = malloc(sizeof(double) * (size_t)n);
	double c50[32], c99[32], p50[32], p99[32], call50[32];
	for (int rep = 0; rep < g_reps; rep++) {
		for (int side = 0; side < 2; side++) {
			/* alternate which side goes first, so neither always follows the other */
			if ((side == 0) == (rep % 2 == 0)) {
				for (int i = 0; i < 50; i++)
					aneshare_run(p, 0, &s_in, 1, &s_out, 1);
				for (int i = 0; i < n; i++) {
					double t0 = now_s();
					int r = aneshare_run(p, 0, &s_in, 1, &s_out, 1);
					t[i] = now_s() - t0;
					if (r < 0)
						die("run", r, aneshare_last_error(c));
				}
				c50[rep] = quantile(t, (size_t)n, 0.5) * 1e6;
				c99[rep] = quantile(t, (size_t)n, 0.99) * 1e6;
			} else {
				full_write(to_py[1], "go\n", 3);
				if (!fgets(line, sizeof line, in) ||
				    sscanf(line, "%lf %lf %lf", &p50[rep], &p99[rep], &call50[rep]) != 3)
					die("bench_python.py", -EPROTO, "no figures from the Python side");
			}
		}
	}
	close(to_py[1]);
	fclose(in);
	waitpid(pid, NULL, 0);
	double cm = median(c50, (size_t)g_reps), pm = median(p50, (size_t)g_reps);
	double c99m = median(c99, (size_t)g_reps), p99m = median(p99, (size_t)g_reps);
	double callm = median(call50, (size_t)g_reps);
	printf("    %-48s p50 %8.1f us   p99 %8.1f us\n", "aneshare_run from C", cm, c99m);
	printf("    %-48s p50 %8.1f us   p99 %8.1f us\n", "program.run from Python (zero-copy)", pm, p99m);
	printf("    %-48s p50 %8.1f us\n", "program(x) from Python (copies in and out)", callm);
	printf("    ratio Python / C                               %.2f  (limit 1.5)\n", pm / cm);
	bench_fig("us", cm, "python section: C run p50");
	bench_fig("us", pm, "python section: Python run p50");
	bench_fig("us", callm, "python section: Python convenience call p50");
	bench_fig("ratio", pm / cm, "python section: Python run p50 / C run p50");
	bench_check(pm / cm, 1.5, true, "python run p50 <= 1.5 x C run p50");
	free(t);
	aneshare_surface_release(s_in);
	aneshare_surface_release(s_out);
	aneshare_program_release(p);
	aneshare_disconnect(c);
}

/*
 * Three client processes chained on surfaces shared by token (producer ->
 * dynamic_matmul.mil -> transformer_block.mil: examples/pipeline.c) against
 * the same two models chained in one process on shared surfaces (a two-step
 * aneshare_run_chain), per-frame latency with one frame in flight.  The
 * example measures both, repetition by repetition on this daemon, checks
 * every result against the one-process reference and prints a "bench:"
 * line with the medians; $ANESHARE_PIPELINE overrides its path.  Checked:
 * the processes ordered by events (--sync event: runs submitted ahead, no
 * message between the processes per frame), frames 1 ms apart (a frame
 * source: each frame of both starts from idle).  Printed: the same ordered
 * by socketpair messages (--sync socket), and both with frames back to
 * back, where the one process's next chain finds the daemon's lane still
 * polling its socket and the pipeline's connections do not.
 */
#ifndef ANES_PIPELINE_EXE
#define ANES_PIPELINE_EXE ""
#endif

/* One run of the example: its medians; exits on a failure or a wrong result. */
static double pipeline_run(const char *sync, int interval_us, int n, double *ret_pipe, double *ret_one)
{
	const char *exe = getenv("ANESHARE_PIPELINE");
	if (!exe || !*exe)
		exe = ANES_PIPELINE_EXE;
	char reps[16], batch[16], iv[16];
	snprintf(reps, sizeof reps, "%d", g_reps);
	snprintf(batch, sizeof batch, "%d", n);
	snprintf(iv, sizeof iv, "%d", interval_us);
	int from[2];
	if (anes_pipe_cloexec(from) < 0)
		die("pipe", -errno, NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork", -errno, NULL);
	if (pid == 0) {
		dup2(from[1], 1);
		execl(exe, exe, "--socket", g_sock, "--sync", sync, "--bench", reps, "--batch", batch,
		      "--interval-us", iv, "--quiet", (char *)NULL);
		_exit(127);
	}
	close(from[1]);
	FILE *in = fdopen(from[0], "r");
	char line[512], got_sync[16] = "";
	double ratio = 0;
	int bad = -1, ivr = -1;
	while (in && fgets(line, sizeof line, in)) {
		if (sscanf(line, "bench: interval_us=%d pipeline_p50_us=%lf single_p50_us=%lf ratio=%lf bad=%d "
		                 "sync=%15s", &ivr, ret_pipe, ret_one, &ratio, &bad, got_sync) == 6)
			continue;
		printf("  %s", line);   /* the example's own report */
	}
	if (in)
		fclose(in);
	int st = 0;
	waitpid(pid, &st, 0);
	if (bad != 0 || ivr != interval_us || strcmp(got_sync, sync) != 0 || !WIFEXITED(st) ||
	    WEXITSTATUS(st) != 0)
		die("examples/pipeline", -EIO, bad > 0 ? "results off the one-process reference" : exe);
	return ratio;
}

static void bench_pipeline(void)
{
	int n = g_quick ? 100 : 300;
	printf("\n== 3-process pipeline (examples/pipeline) against the same chain in one process, "
	       "%d x %d frames\n", g_reps, n);
	double ep, es, sp, ss, ebp, ebs, sbp, sbs;
	double ratio = pipeline_run("event", 1000, n, &ep, &es);
	double ratio_s = pipeline_run("socket", 1000, n, &sp, &ss);
	double ratio_eb = pipeline_run("event", 0, n, &ebp, &ebs);
	double ratio_sb = pipeline_run("socket", 0, n, &sbp, &sbs);
	printf("    %-60s p50 %8.1f us\n", "frames 1 ms apart: 3 processes, events, one frame in flight", ep);
	printf("    %-60s p50 %8.1f us\n", "frames 1 ms apart: one process, 2-step chain", es);
	printf("    ratio 3 processes (events) / one process (median of the repetitions' ratios)  %.2f  "
	       "(limit 1.2)\n", ratio);
	printf("    socket messages instead: 3 processes %.1f us, one process %.1f us, ratio %.2f\n", sp, ss,
	       ratio_s);
	printf("    frames back to back: events %.1f us / %.1f us, ratio %.2f; socket messages %.1f us / "
	       "%.1f us, ratio %.2f\n", ebp, ebs, ratio_eb, sbp, sbs, ratio_sb);
	bench_fig("us", ep, "pipeline: 3-process per-frame latency p50, events, frames 1 ms apart");
	bench_fig("us", es, "pipeline: one-process 2-step chain p50, frames 1 ms apart");
	bench_fig("ratio", ratio, "pipeline: 3 processes (events) / one process, frames 1 ms apart");
	bench_fig("us", sp, "pipeline: 3-process per-frame latency p50, socket messages, frames 1 ms apart");
	bench_fig("ratio", ratio_s, "pipeline: 3 processes (socket messages) / one process, frames 1 ms apart");
	bench_fig("us", ebp, "pipeline: 3-process per-frame latency p50, events, back to back");
	bench_fig("us", ebs, "pipeline: one-process 2-step chain p50, back to back (events run)");
	bench_fig("ratio", ratio_eb, "pipeline: 3 processes (events) / one process, back to back");
	bench_fig("us", sbp, "pipeline: 3-process per-frame latency p50, socket messages, back to back");
	bench_fig("ratio", ratio_sb, "pipeline: 3 processes (socket messages) / one process, back to back");
	bench_check(ratio, 1.2, true, "3-process pipeline (events) <= 1.2 x one process (1 ms apart)");
}

/* ---- 2. throughput ---------------------------------------------------------------- */

#define WINDOW 8   /* runs each client keeps in flight */

/* A client process: connect, set up, wait for go, run until the deadline. */
static void throughput_client(int go_fd, int res_fd, double seconds)
{
	aneshare_conn *c = connect_or_die("bench-tp");
	aneshare_program *p = compile_or_die(c, mil_tiny);
	aneshare_surface *in = surface_or_die(c, 4096), *out[WINDOW];
	for (int i = 0; i < WINDOW; i++)
		out[i] = surface_or_die(c, 4096);
	char go;
	if (read(go_fd, &go, 1) != 1)
		_exit(1);
	uint32_t ticket[WINDOW];
	unsigned long done = 0;
	for (int i = 0; i < WINDOW; i++)
		if (aneshare_run_submit(p, 0, &in, 1, &out[i], 1, &ticket[i]) < 0)
			_exit(1);
	double end = now_s() + seconds;
	for (int i = 0;; i = (i + 1) % WINDOW) {
		if (aneshare_wait(c, ticket[i]) < 0)
			_exit(1);
		done++;
		if (now_s() >= end)
			break;
		if (aneshare_run_submit(p, 0, &in, 1, &out[i], 1, &ticket[i]) < 0)
			_exit(1);
	}
	for (int j = 0; j < WINDOW - 1; j++)   /* the others still in flight */
		(void)aneshare_wait(c, ticket[(unsigned)(j + 1) % WINDOW]);
	if (write(res_fd, &done, sizeof done) != (ssize_t)sizeof done)
		_exit(1);
	aneshare_disconnect(c);
	_exit(0);
}

static void pingpong_client(int go_fd, int res_fd, double seconds)
{
	int efd;
	pid_t echo = echo_child(&efd);
	char go;
	if (read(go_fd, &go, 1) != 1)
		_exit(1);
	unsigned long done = 0;
	double end = now_s() + seconds;
	while (now_s() < end) {
		for (int i = 0; i < 16; i++)
			pingpong_once(efd);
		done += 16;
	}
	if (write(res_fd, &done, sizeof done) != (ssize_t)sizeof done)
		_exit(1);
	reap(echo, efd);
	_exit(0);
}

/* k clients (daemon or ping-pong): operations per second over all. */
static double run_clients(int k, bool daemon, double seconds)
{
	int go[2], res[2];
	int pr = anes_pipe_cloexec(go);
	if (pr < 0 || (pr = anes_pipe_cloexec(res)) < 0)
		die("pipe", pr, NULL);
	pid_t *pids = calloc((size_t)k, sizeof *pids);
	for (int i = 0; i < k; i++) {
		pids[i] = fork();
		if (pids[i] < 0)
			die("fork", -errno, NULL);
		if (pids[i] == 0) {
			close(go[1]);
			close(res[0]);
			if (daemon)
				throughput_client(go[0], res[1], seconds);
			pingpong_client(go[0], res[1], seconds);
		}
	}
	close(go[0]);
	close(res[1]);
	/* Give the clients time to set up (connect, compile: a cache hit). */
	struct timespec ts = { 0, (k > 16 ? 300 : 100) * 1000 * 1000 };
	nanosleep(&ts, NULL);
	char gobuf[64] = { 0 };
	for (int left = k; left > 0; left -= 64)
		full_write(go[1], gobuf, (size_t)(left < 64 ? left : 64));
	double total = 0;
	int got = 0;
	for (int i = 0; i < k; i++) {
		unsigned long v;
		ssize_t r = read(res[0], &v, sizeof v);
		if (r == (ssize_t)sizeof v) {
			total += (double)v;
			got++;
		}
	}
	for (int i = 0; i < k; i++)
		waitpid(pids[i], NULL, 0);
	close(go[1]);
	close(res[0]);
	free(pids);
	if (got != k)
		die("throughput", -EIO, "a client failed");
	return total / seconds;
}

static void bench_throughput(void)
{
	static const int ks[] = { 1, 4, 16, 64 };
	double seconds = g_quick ? 0.3 : 1.0;
	int reps = g_reps < 3 ? g_reps : 3;
	printf("\n== throughput: k client processes, each pipelining %d runs (trivial program),\n"
	       "   against k raw ping-pong pairs; %d x %.1f s each, medians\n", WINDOW, reps, seconds);
	printf("  %-8s %16s %20s %8s\n", "clients", "daemon runs/s", "ping-pong trips/s", "ratio");
	for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
		double d[8], pp[8];
		for (int r = 0; r < reps; r++) {
			d[r] = run_clients(ks[i], true, seconds);
			pp[r] = run_clients(ks[i], false, seconds);
		}
		double dm = median(d, (size_t)reps), pm = median(pp, (size_t)reps);
		bench_fig("runs/s", dm, "throughput, %d clients", ks[i]);
		bench_fig("trips/s", pm, "ping-pong pairs, %d pairs", ks[i]);
		bench_fig("ratio", dm / pm, "throughput / ping-pong pairs, %d clients", ks[i]);
		printf("  %-8d %16.0f %20.0f %8.2f\n", ks[i], dm, pm, dm / pm);
	}
}

/* ---- 3. 16 MiB: zero-copy against inline ---------------------------------------- */

/* Send what io queued on a blocking socket (anes_io_flush never blocks). */
static int flush_blocking(anes_io *io)
{
	int r;
	while ((r = anes_io_flush(io)) == -EAGAIN) {
		struct pollfd p = { .fd = io->fd, .events = POLLOUT };
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			return -errno;
	}
	return r;
}

/* The copying protocol: the peer reads a frame carrying the input bytes,
 * copies them into its tensor, runs, and answers with the output bytes;
 * the client copies them out of the reply.  Same framing code (anes_io,
 * msgpack) as the real protocol. */
static void inline_peer(int fd)
{
	anes_bprogram *bp = bcompile(mil_big);
	void *tin = malloc(BIG_BYTES), *tout = malloc(BIG_BYTES);
	anes_io io;
	anes_io_init(&io, fd, 64u << 20);
	for (;;) {
		const uint8_t *payload;
		uint32_t len;
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nfds;
		int r;
		while ((r = anes_io_next_frame(&io, &payload, &len, fds, &nfds)) == 0) {
			ssize_t n = anes_io_read(&io);
			if (n <= 0)
				_exit(0);
		}
		if (r < 0)
			_exit(1);
		msgpack_zone zone;
		msgpack_zone_init(&zone, 4096);
		anes_msg m;
		const void *data;
		uint32_t dlen;
		if (anes_msg_decode(payload, len, &zone, &m) < 0 ||
		    anes_mp_bin(m.params, "x", BIG_BYTES, &data, &dlen) < 0 || dlen != BIG_BYTES)
			_exit(1);
		memcpy(tin, data, BIG_BYTES);
		brun(bp, tin, tout);
		anes_frame f;
		anes_frame_init(&f);
		anes_pack_result(&f.pk, m.msgid, 1);
		anes_pack_str(&f.pk, "y");
		msgpack_pack_bin(&f.pk, BIG_BYTES);
		msgpack_pack_bin_body(&f.pk, tout, BIG_BYTES);
		msgpack_zone_destroy(&zone);
		void *out;
		size_t olen;
		if (anes_frame_finish(&f, 0, 64u << 20, &out, &olen) < 0 ||
		    anes_io_queue(&io, out, olen, NULL, 0) < 0 || flush_blocking(&io) < 0)
			_exit(1);
	}
}

static void inline_once(anes_io *io, uint32_t msgid, const void *x, void *y)
{
	anes_frame f;
	anes_frame_init(&f);
	anes_pack_request(&f.pk, msgid, "run", 1);
	anes_pack_str(&f.pk, "x");
	msgpack_pack_bin(&f.pk, BIG_BYTES);
	msgpack_pack_bin_body(&f.pk, x, BIG_BYTES);
	void *out;
	size_t olen;
	if (anes_frame_finish(&f, 0, 64u << 20, &out, &olen) < 0 ||
	    anes_io_queue(io, out, olen, NULL, 0) < 0 || flush_blocking(io) < 0)
		die("inline send", -EIO, NULL);
	const uint8_t *payload;
	uint32_t len;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	int r;
	while ((r = anes_io_next_frame(io, &payload, &len, fds, &nfds)) == 0)
		if (anes_io_read(io) <= 0)
			die("inline read", -EIO, NULL);
	msgpack_zone zone;
	msgpack_zone_init(&zone, 4096);
	anes_msg m;
	const void *data;
	uint32_t dlen;
	if (r < 0 || anes_msg_decode(payload, len, &zone, &m) < 0 || m.type != ANES_MSG_RESPONSE ||
	    !m.result || anes_mp_bin(m.result, "y", BIG_BYTES, &data, &dlen) < 0)
		die("inline reply", -EIO, NULL);
	memcpy(y, data, dlen);
	msgpack_zone_destroy(&zone);
}

static void bench_big(void)
{
	int n = g_quick ? 3 : 10;
	double zc[64], il[64], ip[64];
	aneshare_conn *c = connect_or_die("bench-big");
	aneshare_program *p = compile_or_die(c, mil_big);
	aneshare_surface *in = surface_or_die(c, BIG_BYTES), *out = surface_or_die(c, BIG_BYTES);
	memset(aneshare_surface_data(in), 0x3c, BIG_BYTES);
	memset(aneshare_surface_data(out), 0, BIG_BYTES);
	anes_bprogram *bp = bcompile(mil_big);
	void *x = malloc(BIG_BYTES), *y = malloc(BIG_BYTES);
	memset(x, 0x3c, BIG_BYTES);
	memset(y, 0, BIG_BYTES);

	int sv[2];
	int sr = anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sv);
	if (sr < 0)
		die("socketpair", sr, NULL);
	pid_t peer = fork();
	if (peer == 0) {
		close(sv[0]);
		inline_peer(sv[1]);
	}
	close(sv[1]);
	anes_io io;
	anes_io_init(&io, sv[0], 64u << 20);

	/* warm up all three */
	aneshare_run(p, 0, &in, 1, &out, 1);
	inline_once(&io, 1, x, y);
	brun(bp, x, y);
	for (int i = 0; i < n; i++) {
		double t0 = now_s();
		int r = aneshare_run(p, 0, &in, 1, &out, 1);
		zc[i] = now_s() - t0;
		if (r < 0)
			die("run 16 MiB", r, aneshare_last_error(c));
		t0 = now_s();
		inline_once(&io, (uint32_t)i + 2, x, y);
		il[i] = now_s() - t0;
		t0 = now_s();
		brun(bp, x, y);
		ip[i] = now_s() - t0;
	}
	double z = median(zc, (size_t)n) * 1e3, l = median(il, (size_t)n) * 1e3,
	       q = median(ip, (size_t)n) * 1e3;
	printf("\n== 16 MiB in, 16 MiB out (identity on [1,1,2048,4096] fp16), %d runs each, medians\n", n);
	printf("  %-52s %9.2f ms\n", "zero-copy: aneshare_run on shared surfaces", z);
	printf("  %-52s %9.2f ms\n", "inline: bytes over a socket to a peer and back + run", l);
	printf("  %-52s %9.2f ms\n", "(the run alone, in-process)", q);
	printf("  ratio inline / zero-copy   %.1f  (limit >= 10)\n", l / z);
	bench_fig("ms", z, "16 MiB run, zero-copy");
	bench_fig("ms", l, "16 MiB run, inline copy");
	bench_fig("ratio", l / z, "16 MiB inline / zero-copy");
	bench_check(l / z, 10, false, "16 MiB: inline copy >= 10 x zero-copy run");

	anes_io_cleanup(&io);
	close(sv[0]);
	waitpid(peer, NULL, 0);
	free(x);
	free(y);
	g_backend->ops->program_free(g_backend, bp);
	aneshare_surface_release(in);
	aneshare_surface_release(out);
	aneshare_program_release(p);
	aneshare_disconnect(c);
}

/* ---- 4. compile cache hit against status --------------------------------------------- */

static void bench_compile(void)
{
	int n = g_quick ? 100 : 400;
	double *t = malloc(sizeof(double) * (size_t)n);
	double cp[32], st[32];
	aneshare_conn *c = connect_or_die("bench-compile");
	char *mil = mil_matmul();
	aneshare_program *keep = compile_or_die(c, mil);
	for (int rep = 0; rep < g_reps; rep++) {
		for (int i = 0; i < n; i++) {
			aneshare_program *p;
			bool cached = false;
			double t0 = now_s();
			int r = aneshare_program_compile(c, mil, NULL, 0, &p, &cached);
			t[i] = now_s() - t0;
			if (r < 0 || !cached)
				die("compile (cache hit)", r, aneshare_last_error(c));
			aneshare_program_release(p);
		}
		cp[rep] = median(t, (size_t)n);
		for (int i = 0; i < n; i++) {
			aneshare_status *s;
			double t0 = now_s();
			int r = aneshare_get_status(c, &s);
			t[i] = now_s() - t0;
			if (r < 0)
				die("status", r, aneshare_last_error(c));
			aneshare_status_free(s);
		}
		st[rep] = median(t, (size_t)n);
	}
	double a = median(cp, (size_t)g_reps) * 1e6, b = median(st, (size_t)g_reps) * 1e6;
	printf("\n== program.compile of a cached program against status, %d x %d calls, p50\n",
	       g_reps, n);
	printf("  %-52s %8.1f us\n", "aneshare_program_compile, cache hit (+ program.info)", a);
	printf("  %-52s %8.1f us\n", "aneshare_get_status", b);
	printf("  ratio compile / status   %.2f\n", a / b);
	bench_fig("us", a, "compile, cache hit, p50");
	bench_fig("us", b, "status p50");
	aneshare_program_release(keep);
	aneshare_disconnect(c);
	free(mil);
	free(t);
}

/* ---- 5. a chain of 28 ------------------------------------------------------------- */

#define LAYERS 28

/* The n steps as n single runs, all submitted, then waited for. */
static void run_pipelined(aneshare_conn *c, const aneshare_step *steps, int n)
{
	uint32_t tk[LAYERS];
	int r;
	for (int l = 0; l < n; l++)
		if ((r = aneshare_run_submit(steps[l].program, steps[l].function, steps[l].inputs, steps[l].n_inputs,
		                             steps[l].outputs, steps[l].n_outputs, &tk[l])) < 0)
			die("run_submit", r, aneshare_last_error(c));
	for (int l = 0; l < n; l++)
		if ((r = aneshare_wait(c, tk[l])) < 0)
			die("wait", r, aneshare_last_error(c));
}

static double g_chain_ratio[3];

/* A thread on core 0 that polls a socket as a spinning client does
 * (recv + sched_yield) while g_poll is set: to see whether a client
 * polling on one vCPU slows the daemon's steps on the other (the
 * in-process calls with and without it, interleaved).  Otherwise it
 * blocks in a read of g_poll_pipe (a byte: poll; EOF: exit).  It must
 * not nap in a loop instead: on the VM of docs/performance.md each
 * wake-up of a thread costs the thread spinning on that vCPU 5-60 us
 * (a usleep(200) loop there made 1,000 gaps of 30 us or more a second
 * in a yield loop, against 270 without it), and the client's chains on
 * core 0 then took 50-120 us more than the daemon's steps instead of
 * 13-25 us. */
static atomic_bool g_poll;
static int g_poll_pipe[2] = { -1, -1 };

static void *poller_main(void *arg)
{
	(void)arg;
	pin_tid(0, 0);
	int sv[2];
	if (anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sv) < 0)
		return NULL;
	char b[8];
	for (;;) {
		ssize_t n = read(g_poll_pipe[0], b, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		while (atomic_load(&g_poll)) {
			(void)recv(sv[0], b, sizeof b, MSG_DONTWAIT);
			sched_yield();
		}
	}
	close(sv[0]);
	close(sv[1]);
	return NULL;
}

/* Start (on) or stop the poller's polling. */
static void poller_set(bool on)
{
	atomic_store(&g_poll, on);
	if (on && write(g_poll_pipe[1], "p", 1) != 1)
		die("write", -errno, "poller pipe");
}

static void bench_chain_at(placement pl)
{
	int n = g_quick ? 20 : 100;
	double ch[256], chs[256], sep[256], pip[256], inp[256], dst[256], dsts[256], inpp[256];
	aneshare_conn *c = connect_or_die("bench-chain");
	aneshare_conn *c0 = connect_or_die("bench-chain-sleeping");   /* the same with spin 0 */
	aneshare_set_spin(c0, 0);
	char *mil = mil_matmul();
	aneshare_program *p = compile_or_die(c, mil), *p0 = compile_or_die(c0, mil);
	const aneshare_tensor_info *ti = aneshare_program_input(p, 0, 0);
	const aneshare_tensor_info *to = aneshare_program_output(p, 0, 0);
	size_t ib = ti->bytes, ob = to->bytes;
	aneshare_surface *in[LAYERS], *out[LAYERS], *in0[LAYERS], *out0[LAYERS];
	aneshare_step steps[LAYERS], steps0[LAYERS];
	anes_bprogram *bp = bcompile(mil);
	void *bin[LAYERS], *bout[LAYERS];
	uint64_t rng = 0x9E3779B97F4A7C15ull;
	for (int l = 0; l < LAYERS; l++) {
		in[l] = surface_or_die(c, ib);
		out[l] = surface_or_die(c, ob);
		uint16_t *x = aneshare_surface_data(in[l]);
		bin[l] = malloc(ib);
		bout[l] = malloc(ob);
		for (size_t i = 0; i < ib / 2; i++) {
			rng ^= rng << 13;
			rng ^= rng >> 7;
			rng ^= rng << 17;
			x[i] = anes_f32_to_f16((float)((double)(rng >> 11) / 9007199254740992.0 - 0.5));
		}
		memcpy(bin[l], x, ib);
		in0[l] = surface_or_die(c0, ib);
		out0[l] = surface_or_die(c0, ob);
		memcpy(aneshare_surface_data(in0[l]), x, ib);
		steps[l] = (aneshare_step){ p, 0, &in[l], 1, &out[l], 1 };
		steps0[l] = (aneshare_step){ p0, 0, &in0[l], 1, &out0[l], 1 };
	}
	for (int rep = 0; rep < 3; rep++) {   /* warm up */
		if (aneshare_run_chain(c, steps, LAYERS) < 0 || aneshare_run_chain(c0, steps0, LAYERS) < 0)
			die("run_chain", -EIO, aneshare_last_error(c));
		for (int l = 0; l < LAYERS; l++)
			brun(bp, bin[l], bout[l]);
	}
	aneshare_status *st0 = NULL, *st1 = NULL;
	if (aneshare_get_status(c, &st0) < 0)
		die("status", -EIO, aneshare_last_error(c));
	cpu_ticks tk0 = cpu_ticks_now();
	pthread_t poller;
	atomic_store(&g_poll, false);
	if (pl == PLACE_CROSS) {
		int pr = anes_pipe_cloexec(g_poll_pipe);
		if (pr < 0)
			die("pipe", pr, NULL);
		if ((errno = pthread_create(&poller, NULL, poller_main, NULL)) != 0)
			die("pthread_create", -errno, NULL);
	}
	/* Interleaved, each timed call right after an untimed one of its own
	 * kind: the variants run on different threads (lane, job workers, this
	 * process), and each should find the caches as it left them, not as
	 * the variant before it did. */
	place(pl, 0);
	for (int i = 0; i < n; i++) {
		int r;
		double t0;
		for (int v = 0; v < 2; v++) {
			aneshare_conn *cv = v ? c0 : c;
			const aneshare_step *sv = v ? steps0 : steps;
			(void)aneshare_run_chain(cv, sv, LAYERS);
			t0 = now_s();
			r = aneshare_run_chain(cv, sv, LAYERS);
			(v ? chs : ch)[i] = now_s() - t0;
			if (r < 0)
				die("run_chain", r, aneshare_last_error(cv));
			(v ? dsts : dst)[i] = (double)aneshare_last_run_us(cv) * 1e-6;
		}
		t0 = now_s();
		for (int l = 0; l < LAYERS; l++)
			if ((r = aneshare_run(p, 0, &in[l], 1, &out[l], 1)) < 0)
				die("run", r, aneshare_last_error(c));
		sep[i] = now_s() - t0;
		run_pipelined(c, steps, LAYERS);   /* untimed, then timed */
		t0 = now_s();
		run_pipelined(c, steps, LAYERS);
		pip[i] = now_s() - t0;
		/* On the core the daemon's steps run on: the same work on the
		 * same CPU (a VM's vCPUs need not be equally fast at a time). */
		if (pl == PLACE_CROSS)
			pin_tid(0, 1);
		for (int poll = 0; poll < (pl == PLACE_CROSS ? 2 : 1); poll++) {
			if (poll == 1)
				poller_set(true);
			for (int l = 0; l < LAYERS; l++)
				brun(bp, bin[l], bout[l]);
			t0 = now_s();
			for (int l = 0; l < LAYERS; l++)
				brun(bp, bin[l], bout[l]);
			(poll ? inpp : inp)[i] = now_s() - t0;
		}
		poller_set(false);
		if (pl == PLACE_CROSS)
			pin_tid(0, 0);
	}
	place(PLACE_FREE, 0);
	if (pl == PLACE_CROSS) {
		close(g_poll_pipe[1]);   /* EOF: the poller exits */
		pthread_join(poller, NULL);
		close(g_poll_pipe[0]);
		g_poll_pipe[0] = g_poll_pipe[1] = -1;
	}
	cpu_ticks tk1 = cpu_ticks_now();
	if (aneshare_get_status(c, &st1) < 0)
		die("status", -EIO, aneshare_last_error(c));
	/* Each iteration's chain against its own in-process calls, made a
	 * few milliseconds apart: the speed of a vCPU drifts in phases (the
	 * same 28 steps take 257 us, then 350-500 us for a fraction of a
	 * second to seconds, on the VM of docs/performance.md), and a ratio
	 * of two medians taken over a whole section can set one phase's chain
	 * against another phase's baseline.  The checked ratio is the median
	 * of the paired ones. */
	double pr[256], prs[256], pst[256], rest[256];
	for (int i = 0; i < n; i++) {
		pr[i] = ch[i] / inp[i];
		prs[i] = chs[i] / inp[i];
		pst[i] = dst[i] / inp[i];
		rest[i] = (ch[i] - dst[i]) * 1e6;
	}
	double pr50 = median(pr, (size_t)n), prs50 = median(prs, (size_t)n), pst50 = median(pst, (size_t)n),
	       rest25 = quantile(rest, (size_t)n, 0.25), rest50 = quantile(rest, (size_t)n, 0.5),
	       rest75 = quantile(rest, (size_t)n, 0.75);
	double a = median(ch, (size_t)n) * 1e6, as = median(chs, (size_t)n) * 1e6,
	       b = median(sep, (size_t)n) * 1e6, d = median(pip, (size_t)n) * 1e6,
	       e = median(inp, (size_t)n) * 1e6, ds = median(dst, (size_t)n) * 1e6,
	       dss = median(dsts, (size_t)n) * 1e6,
	       ep = pl == PLACE_CROSS ? median(inpp, (size_t)n) * 1e6 : 0;
	g_chain_ratio[pl] = pr50;
	bench_fig("us", a, "28-step chain p50, %s", place_name[pl]);
	bench_fig("us", ds, "28-step chain, the daemon's steps, %s", place_name[pl]);
	bench_fig("us", as, "28-step chain, client sleeping, %s", place_name[pl]);
	bench_fig("us", b, "28 separate requests, %s", place_name[pl]);
	bench_fig("us", d, "28 pipelined requests, %s", place_name[pl]);
	bench_fig("us", e, "28 in-process calls, %s", place_name[pl]);
	bench_fig("ratio", pr50, "28-step chain / in-process, %s", place_name[pl]);
	bench_fig("us", rest50, "28-step chain minus the daemon's steps p50, %s", place_name[pl]);
	printf("  %s:\n", place_name[pl]);
	printf("    %-50s %9.1f us\n", "one request with 28 steps (aneshare_run_chain)", a);
	printf("    %-50s %9.1f us\n", "  of which the daemon ran the steps (last_run_us)", ds);
	printf("    %-50s %9.1f us (steps %.1f us)\n", "  the same, the client sleeping (spin 0)", as, dss);
	printf("    %-50s %9.1f us\n", "28 separate requests (aneshare_run, blocking)", b);
	printf("    %-50s %9.1f us\n", "28 requests pipelined (run_submit, then wait)", d);
	printf("    %-50s %9.1f us\n", "28 in-process backend calls", e);
	if (pl == PLACE_CROSS) {
		printf("    %-50s %9.1f us (%.2f)\n", "  the same, a thread polling on core 0 meanwhile", ep,
		       ep / e);
		/* The two vCPUs ran as one core's two hyperthreads on the host:
		 * a client waiting on core 0 then slows the daemon's steps as
		 * much (docs/performance.md, "The machine"). */
		if (ep / e >= 1.1)
			printf("    note: a thread busy on core 0 slowed core 1 by %.2f in this run: the two vCPUs\n"
			       "          shared a physical core, and a client polling for its reply slows the steps\n",
			       ep / e);
	}
	printf("    ratio chain / in-process      %.2f%s   (sleeping: %.2f)   [of the medians: %.2f]\n", pr50,
	       pl == PLACE_FREE ? "" : "  (limit 1.2)", prs50, a / e);
	printf("    ratio separate / in-process   %.2f\n", b / e);
	/* Which part of the chain is over the limit, when one is: the
	 * daemon's steps against the same kernels here, or the rest. */
	printf("    the daemon's steps / in-process %.2f; the rest of the chain p25 %.1f, p50 %.1f, p75 %.1f us\n",
	       pst50, rest25, rest50, rest75);
	/* What the lane spin did over the whole section (all its requests). */
	printf("    lane spin: %llu polls after an answer, %llu got the next request, %llu lost the CPU, "
	       "%llu answers skipped it\n",
	       (unsigned long long)(st1->lane_spins - st0->lane_spins),
	       (unsigned long long)(st1->lane_spin_hits - st0->lane_spin_hits),
	       (unsigned long long)(st1->lane_spin_gaps - st0->lane_spin_gaps),
	       (unsigned long long)(st1->lane_spin_skips - st0->lane_spin_skips));
	/* On a VM: how much of the CPUs' time the host took meanwhile. */
	double sp = steal_pct(tk0, tk1);
	if (sp >= 0)
		printf("    steal: %.1f %% of the CPUs' time in this section went to other guests\n", sp);
	aneshare_status_free(st0);
	aneshare_status_free(st1);
	for (int l = 0; l < LAYERS; l++) {
		aneshare_surface_release(in[l]);
		aneshare_surface_release(out[l]);
		aneshare_surface_release(in0[l]);
		aneshare_surface_release(out0[l]);
		free(bin[l]);
		free(bout[l]);
	}
	g_backend->ops->program_free(g_backend, bp);
	aneshare_program_release(p);
	aneshare_program_release(p0);
	aneshare_disconnect(c);
	aneshare_disconnect(c0);
	free(mil);
}

static void bench_chain(void)
{
	static const char *const what[3] = { "28-step chain <= 1.2 x 28 in-process calls",
		                             "28-step chain <= 1.2 x 28 in-process calls, one core",
		                             "28-step chain <= 1.2 x 28 in-process calls, two cores" };
	printf("\n== 28 layers: dynamic_matmul.mil (64x64x64), 28 weight surfaces, %d reps, medians\n",
	       g_quick ? 20 : 100);
	by_placement(bench_chain_at, g_chain_ratio, what, 1.2);
}

/* ---- 6. memory ---------------------------------------------------------------------- */

static void bench_memory(void)
{
	/* A fresh daemon, so that "idle" means idle. */
	daemon_stop();
	daemon_start();
	struct timespec settle = { 0, 100 * 1000 * 1000 };
	nanosleep(&settle, NULL);
	long idle = rss_kb(g_daemon);
	enum { CLIENTS = 64, SURFACES = 256, SURF_BYTES = 1 << 20 };
	aneshare_conn *cs[CLIENTS];
	for (int i = 0; i < CLIENTS; i++)
		cs[i] = connect_or_die("bench-mem");
	/* one status round trip on each, so every connection has been served */
	for (int i = 0; i < CLIENTS; i++) {
		aneshare_status *s;
		if (aneshare_get_status(cs[i], &s) == 0)
			aneshare_status_free(s);
	}
	long with_clients = rss_kb(g_daemon);
	aneshare_surface *ss[SURFACES];
	for (int i = 0; i < SURFACES; i++) {
		ss[i] = surface_or_die(cs[0], SURF_BYTES);
		memset(aneshare_surface_data(ss[i]), 1, SURF_BYTES);   /* the client touches it */
	}
	long with_surfaces = rss_kb(g_daemon);
	bench_fig("KiB", (double)idle, "daemon memory, idle");
	bench_fig("KiB", (double)(with_clients - idle) / CLIENTS, "daemon memory per client");
	bench_fig("KiB", (double)(with_surfaces - with_clients) / SURFACES, "daemon memory per 1 MiB surface");
	printf("\n== daemon memory (VmRSS of /proc/PID/status, a fresh daemon)\n");
	printf("  %-52s %8ld KiB\n", "idle", idle);
	printf("  %-52s %8.1f KiB\n", "per connected client (64 clients)",
	       (double)(with_clients - idle) / CLIENTS);
	printf("  %-52s %8.2f KiB\n", "per 1 MiB surface (256; the client wrote them)",
	       (double)(with_surfaces - with_clients) / SURFACES);
	for (int i = 0; i < SURFACES; i++)
		aneshare_surface_release(ss[i]);
	for (int i = 0; i < CLIENTS; i++)
		aneshare_disconnect(cs[i]);
}

/* ---- an input attack (issue 14) ----------------------------------------------------- */

/* Raw connection, hello done; non-blocking afterwards.  -1 on failure. */
static int attacker_open(void)
{
	int fd = anes_socket_cloexec(AF_UNIX, SOCK_STREAM);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t plen = strlen(g_sock);
	if (fd < 0 || plen >= sizeof sa.sun_path)
		goto fail;
	memcpy(sa.sun_path, g_sock, plen);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
		goto fail;
	static const uint8_t hello[] = { 0x94, 0x00, 0x01, 0xa5, 'h', 'e', 'l', 'l', 'o', 0x81, 0xa8,
		                         'p', 'r', 'o', 't', 'o', 'c', 'o', 'l', 0x01 };
	uint8_t hdr[ANES_FRAME_HEADER_SIZE];
	anes_frame_header_write(hdr, sizeof hello, 0);
	full_write(fd, hdr, sizeof hdr);
	full_write(fd, hello, sizeof hello);
	uint32_t len;
	unsigned nfds;
	full_read(fd, hdr, sizeof hdr);
	if (anes_frame_header_parse(hdr, ANES_FRAME_MAX_HIGHEST, &len, &nfds) < 0 || len > 65536)
		goto fail;
	uint8_t reply[65536];
	full_read(fd, reply, len);
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
		goto fail;
	return fd;
fail:
	if (fd >= 0)
		close(fd);
	return -1;
}

/* The attacker process: n connections each send 63 MiB of a 64 MiB frame
 * (as fast as the daemon reads them) and then stall; ready_fd gets a byte
 * once all are connected; runs until killed. */
static _Noreturn void attacker_main(int n, int ready_fd)
{
	enum { FRAME = 64u << 20, SEND = 63u << 20 };
	int *fds = calloc((size_t)n, sizeof *fds);
	size_t *sent = calloc((size_t)n, sizeof *sent);
	struct pollfd *pf = calloc((size_t)n, sizeof *pf);
	static uint8_t chunk[1 << 20];
	if (!fds || !sent || !pf)
		_exit(2);
	for (int i = 0; i < n; i++) {
		if ((fds[i] = attacker_open()) < 0)
			_exit(3);
		uint8_t hdr[ANES_FRAME_HEADER_SIZE];
		anes_frame_header_write(hdr, FRAME, 0);
		full_write(fds[i], hdr, sizeof hdr);
	}
	if (write(ready_fd, "r", 1) != 1)
		_exit(4);
	for (;;) {
		int k = 0;
		for (int i = 0; i < n; i++)
			if (sent[i] < SEND)
				pf[k++] = (struct pollfd){ .fd = fds[i], .events = POLLOUT };
		if (k == 0) {
			pause();
			continue;
		}
		if (poll(pf, (nfds_t)k, 1000) <= 0)
			continue;
		for (int j = 0; j < k; j++) {
			if (!(pf[j].revents & POLLOUT))
				continue;
			int i = 0;
			while (fds[i] != pf[j].fd)
				i++;
			size_t want = SEND - sent[i] < sizeof chunk ? SEND - sent[i] : sizeof chunk;
			ssize_t w = send(fds[i], chunk, want, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (w > 0)
				sent[i] += (size_t)w;
			else if (w < 0 && errno != EAGAIN)
				sent[i] = SEND;   /* closed by the daemon (a deadline): done */
		}
	}
}

/* 200 connections each send 63 MiB of a 64 MiB frame and stall: the
 * daemon's RSS stays below 1 GiB (frames over 64 KiB reserve their memory
 * from max_input_bytes first, and the others are not read), and another
 * client's run p99 stays under 10 ms meanwhile. */
static void bench_attack(void)
{
	daemon_stop();
	daemon_start();
	enum { ATTACKERS = 200 };
	int nrun = g_quick ? 300 : 1000;
	aneshare_conn *c = connect_or_die("bench-victim");
	aneshare_program *p = compile_or_die(c, mil_tiny);
	aneshare_surface *in = surface_or_die(c, 4096), *out = surface_or_die(c, 4096);
	double *t = calloc((size_t)nrun, sizeof *t);
	if (!t)
		die("calloc", -ENOMEM, NULL);
	for (int i = 0; i < 50; i++)
		aneshare_run(p, 0, &in, 1, &out, 1);
	for (int i = 0; i < nrun; i++) {
		double t0 = now_s();
		int r = aneshare_run(p, 0, &in, 1, &out, 1);
		if (r < 0)
			die("run", r, aneshare_last_error(c));
		t[i] = now_s() - t0;
	}
	double alone99 = quantile(t, (size_t)nrun, 0.99);
	long rss0 = rss_kb(g_daemon);

	int pipefd[2];
	if (pipe(pipefd) < 0)
		die("pipe", -errno, NULL);
	double a0 = now_s();
	pid_t att = fork();
	if (att < 0)
		die("fork", -errno, NULL);
	if (att == 0) {
		close(pipefd[0]);
		attacker_main(ATTACKERS, pipefd[1]);
	}
	close(pipefd[1]);
	char b;
	if (read(pipefd[0], &b, 1) != 1)
		die("the attacker process", -EIO, "did not connect its 200 clients");
	close(pipefd[0]);
	double connected = now_s() - a0;
	/* The victim's runs while the attack goes on, and the daemon's RSS. */
	long peak = rss_kb(g_daemon);
	double during_s = g_quick ? 2.0 : 5.0, start = now_s();
	int n = 0;
	while (now_s() - start < during_s && n < nrun) {
		double t0 = now_s();
		int r = aneshare_run(p, 0, &in, 1, &out, 1);
		if (r < 0)
			die("run during the attack", r, aneshare_last_error(c));
		t[n++] = now_s() - t0;
		long rss = rss_kb(g_daemon);
		if (rss > peak)
			peak = rss;
		struct timespec gap = { 0, (long)(during_s / nrun * 1e9) };
		nanosleep(&gap, NULL);
	}
	double attack99 = quantile(t, (size_t)n, 0.99);
	for (int i = 0; i < 20; i++) {   /* a last look at the memory */
		long rss = rss_kb(g_daemon);
		if (rss > peak)
			peak = rss;
		struct timespec gap = { 0, 10 * 1000 * 1000 };
		nanosleep(&gap, NULL);
	}
	kill(att, SIGKILL);
	waitpid(att, NULL, 0);
	aneshare_surface_release(in);
	aneshare_surface_release(out);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	free(t);

	printf("\n== input attack: %d connections each send 63 MiB of a 64 MiB frame and stall\n",
	       ATTACKERS);
	printf("  %-52s %8.1f s\n", "200 connections and hellos took", connected);
	printf("  %-52s %8ld KiB\n", "daemon RSS before the attack", rss0);
	printf("  %-52s %8ld KiB\n", "daemon RSS, peak during the attack", peak);
	printf("  %-52s %8.1f us\n", "another client's run p99, alone", alone99 * 1e6);
	printf("  %-52s %8.1f us (%d runs, %.1fx alone)\n", "... during the attack", attack99 * 1e6, n,
	       attack99 / alone99);
	bench_fig("KiB", (double)peak, "input attack: daemon RSS peak");
	bench_fig("us", attack99 * 1e6, "input attack: another client's run p99");
	bench_check((double)peak / 1024.0, 1024, true, "input attack: daemon RSS (MiB) < 1024");
	bench_check(attack99 * 1e3, 10, true, "input attack: other client's run p99 (ms) < 10");
}

/* ---- 8. fairness: one device queue, a greedy client and another ----------------------- */

/*
 * One device queue (--workers 1, single-threaded BLAS) and a program of
 * about 1.5 ms (a matmul, sized here).  A greedy client process keeps 64
 * runs of it in flight; another client's runs of the same program and its
 * compile of a new program are timed against the same calls alone
 * (docs/protocol.md, "Scheduling").  Two equal greedy clients share the
 * device: each one's share is its completed runs over both's, counted by
 * the clients themselves.
 */
#define FAIR_INFLIGHT 64

static int g_fair_n = 128;   /* the matmul's size, set by fair_calibrate */

static char *mil_fair(int n)
{
	char *s = malloc(1024);
	if (!s)
		die("malloc", -ENOMEM, NULL);
	snprintf(s, 1024,
	         "program(1.3)\n{\n"
	         "    func main<ios18>(tensor<fp16, [1, 1, %d, %d]> a, tensor<fp16, [1, 1, %d, %d]> b) {\n"
	         "        bool tx = const()[name = string(\"tx\"), val = bool(false)];\n"
	         "        bool ty = const()[name = string(\"ty\"), val = bool(false)];\n"
	         "        tensor<fp16, [1, 1, %d, %d]> y = matmul(transpose_x = tx, transpose_y = ty, x = a, y = b)[name = string(\"y\")];\n"
	         "    } -> (y);\n}\n",
	         n, n, n, n, n, n);
	return s;
}

/* A new small program each time (its text, so its key, differs). */
static char *mil_fresh(unsigned k)
{
	char *s = malloc(512);
	if (!s)
		die("malloc", -ENOMEM, NULL);
	snprintf(s, 512,
	         "program(1.3)\n{\n"
	         "    func main<ios18>(tensor<fp16, [1, 1, 1, 16]> x) {\n"
	         "        tensor<fp16, [1, 1, 1, 16]> y = relu(x = x)[name = string(\"y%u_%ld\")];\n"
	         "    } -> (y);\n}\n",
	         k, (long)getpid());
	return s;
}

typedef struct fair_client {
	aneshare_conn *c;
	aneshare_program *p;
	aneshare_surface *s[3];
} fair_client;

static void fair_open(fair_client *f, const char *name)
{
	f->c = connect_or_die(name);
	char *mil = mil_fair(g_fair_n);
	f->p = compile_or_die(f->c, mil);
	free(mil);
	size_t bytes = (size_t)g_fair_n * (size_t)g_fair_n * 2u;
	for (int i = 0; i < 3; i++) {
		f->s[i] = surface_or_die(f->c, bytes);
		memset(aneshare_surface_data(f->s[i]), 0x10, bytes);   /* small fp16 values */
	}
}

static void fair_close(fair_client *f)
{
	for (int i = 0; i < 3; i++)
		aneshare_surface_release(f->s[i]);
	aneshare_program_release(f->p);
	aneshare_disconnect(f->c);
}

static void fair_run(fair_client *f)
{
	int r = aneshare_run(f->p, 0, f->s, 2, f->s + 2, 1);
	if (r < 0)
		die("run", r, aneshare_last_error(f->c));
}

/* Size the matmul so that one run in the daemon takes about 1.5 ms (its
 * elapsed_us: the daemon just started has --workers 1 and one BLAS thread). */
static void fair_calibrate(void)
{
	static const int sizes[] = { 128, 192, 256, 320, 384, 448, 512, 640 };
	for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
		g_fair_n = sizes[k];
		fair_client f;
		fair_open(&f, "bench-fair-size");
		double t[21];
		for (int i = 0; i < 21; i++) {
			fair_run(&f);
			t[i] = (double)aneshare_last_run_us(f.c) * 1e-6;
		}
		fair_close(&f);
		if (median(t, 21) >= 1.5e-3)
			break;
	}
}

/* The greedy client, in its own process: keeps FAIR_INFLIGHT runs in flight
 * until told to stop.  ctl (read): 'g' starts counting completions, 's'
 * stops; res (write): 'r' once its first FAIR_INFLIGHT runs are done, then
 * the count (uint64_t) at the end. */
static pid_t fair_greedy(int *ret_ctl, int *ret_res)
{
	int ctl[2], res[2];
	if (pipe(ctl) < 0 || pipe(res) < 0)
		die("pipe", -errno, NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork", -errno, NULL);
	if (pid == 0) {
		close(ctl[1]);
		close(res[0]);
		fcntl(ctl[0], F_SETFL, O_NONBLOCK);
		fair_client f;
		fair_open(&f, "bench-greedy");
		uint32_t tk[FAIR_INFLIGHT];
		for (int i = 0; i < FAIR_INFLIGHT; i++)
			if (aneshare_run_submit(f.p, 0, f.s, 2, f.s + 2, 1, &tk[i]) < 0)
				_exit(3);
		uint64_t done = 0, counted = 0;
		bool counting = false;
		for (unsigned i = 0;; i = (i + 1) % FAIR_INFLIGHT) {
			if (aneshare_wait(f.c, tk[i]) < 0)
				_exit(4);
			if (++done == FAIR_INFLIGHT && write(res[1], "r", 1) != 1)
				_exit(5);
			counted += counting;
			char cmd;
			if (read(ctl[0], &cmd, 1) == 1) {
				if (cmd == 's')
					break;
				counting = true;
			}
			if (aneshare_run_submit(f.p, 0, f.s, 2, f.s + 2, 1, &tk[i]) < 0)
				_exit(6);
		}
		if (write(res[1], &counted, sizeof counted) != (ssize_t)sizeof counted)
			_exit(7);
		_exit(0);   /* the daemon cancels nothing: the runs left finish unread */
	}
	close(ctl[0]);
	close(res[1]);
	*ret_ctl = ctl[1];
	*ret_res = res[0];
	char r;
	full_read(res[0], &r, 1);   /* it is running */
	return pid;
}

static uint64_t fair_greedy_stop(pid_t pid, int ctl, int res)
{
	uint64_t n = 0;
	full_write(ctl, "s", 1);
	full_read(res, &n, sizeof n);
	close(ctl);
	close(res);
	int st;
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		die("greedy client", -EIO, "failed");
	return n;
}

/* p90 of n runs (s); and the median compile of a new program (s). */
static void fair_probe(fair_client *f, int n_runs, int n_compiles, unsigned *k, double *ret_p90,
                       double *ret_compile)
{
	double *t = malloc(sizeof(double) * (size_t)(n_runs > n_compiles ? n_runs : n_compiles));
	if (!t)
		die("malloc", -ENOMEM, NULL);
	for (int i = 0; i < n_runs; i++) {
		double t0 = now_s();
		fair_run(f);
		t[i] = now_s() - t0;
	}
	*ret_p90 = quantile(t, (size_t)n_runs, 0.9);
	for (int i = 0; i < n_compiles; i++) {
		char *mil = mil_fresh((*k)++);
		aneshare_program *p;
		bool cached = true;
		double t0 = now_s();
		int r = aneshare_program_compile(f->c, mil, NULL, 0, &p, &cached);
		t[i] = now_s() - t0;
		free(mil);
		if (r < 0 || cached)
			die("compile (new program)", r, aneshare_last_error(f->c));
		aneshare_program_release(p);
	}
	*ret_compile = median(t, (size_t)n_compiles);
	free(t);
}

static void bench_fair_one(bool worker)
{
	static const char *const args_inproc[] = { "--workers", "1", NULL };
	static const char *const args_worker[] = { "--workers", "1", "--worker", NULL };
	g_daemon_args = worker ? args_worker : args_inproc;
	daemon_start();
	g_daemon_args = NULL;
	if (!worker)
		fair_calibrate();
	const char *where = worker ? "--worker" : "in-process";
	int n_runs = g_quick ? 60 : 150, n_compiles = g_quick ? 10 : 20;
	unsigned k = worker ? 100000 : 0;

	fair_client f;
	fair_open(&f, "bench-fair");
	for (int i = 0; i < 20; i++)
		fair_run(&f);   /* warm, and the daemon has its run time */
	double run_alone, compile_alone, run_busy, compile_busy, unused;
	fair_probe(&f, n_runs, n_compiles, &k, &run_alone, &compile_alone);
	double run_p50_alone;
	{
		double t[64];
		for (int i = 0; i < 64; i++) {
			double t0 = now_s();
			fair_run(&f);
			t[i] = now_s() - t0;
		}
		run_p50_alone = median(t, 64);
	}
	int ctl, res;
	pid_t g = fair_greedy(&ctl, &res);
	fair_probe(&f, n_runs, n_compiles, &k, &run_busy, &compile_busy);
	(void)fair_greedy_stop(g, ctl, res);
	(void)unused;

	printf("\n== fairness, %s, --workers 1: a %dx%d matmul (%.2f ms alone), another client keeping %d in flight\n",
	       where, g_fair_n, g_fair_n, run_p50_alone * 1e3, FAIR_INFLIGHT);
	printf("  %-52s %8.2f ms\n", "run p90, alone", run_alone * 1e3);
	printf("  %-52s %8.2f ms\n", "run p90, next to the greedy client", run_busy * 1e3);
	printf("  %-52s %8.2f ms\n", "compile of a new program (p50), alone", compile_alone * 1e3);
	printf("  %-52s %8.2f ms\n", "compile of a new program (p50), next to it", compile_busy * 1e3);
	bench_fig("ms", run_alone * 1e3, "fair %s: run p90 alone", where);
	bench_fig("ms", run_busy * 1e3, "fair %s: run p90 next to a greedy client", where);
	bench_fig("ms", compile_alone * 1e3, "fair %s: compile p50 alone", where);
	bench_fig("ms", compile_busy * 1e3, "fair %s: compile p50 next to a greedy client", where);
	static char what[4][80];
	int w = worker ? 2 : 0;
	snprintf(what[w], sizeof what[w], "fair %s: run p90 busy / alone", where);
	bench_check(run_busy / run_alone, 2.5, true, "%s", what[w]);
	snprintf(what[w + 1], sizeof what[w + 1], "fair %s: compile busy / (alone + run)", where);
	bench_check(compile_busy / (compile_alone + run_p50_alone), 2.5, true, "%s", what[w + 1]);

	if (!worker) {
		/* Two equal greedy clients. */
		int ctl2, res2;
		pid_t g1 = fair_greedy(&ctl, &res);
		pid_t g2 = fair_greedy(&ctl2, &res2);
		full_write(ctl, "g", 1);
		full_write(ctl2, "g", 1);
		struct timespec ts = { g_quick ? 1 : 3, 0 };
		nanosleep(&ts, NULL);
		uint64_t n1 = fair_greedy_stop(g1, ctl, res);
		uint64_t n2 = fair_greedy_stop(g2, ctl2, res2);
		double share = n1 + n2 ? 100.0 * (double)n1 / (double)(n1 + n2) : 0;
		printf("  %-52s %8.1f %% (%llu and %llu runs, %.2f s of device time)\n",
		       "two greedy clients: the first one's share", share, (unsigned long long)n1,
		       (unsigned long long)n2, (double)(n1 + n2) * run_p50_alone);
		bench_fig("%", share, "fair: two greedy clients, the first one's share");
		bench_check(share, 45, false, "fair: two greedy clients, first's share >= 45 %%");
		bench_check(share, 55, true, "fair: two greedy clients, first's share <= 55 %%");
	}
	fair_close(&f);
	daemon_stop();
}

static void bench_fair(void)
{
	/* The main daemon stops for these; they start their own. */
	daemon_stop();
	bench_fair_one(false);
	bench_fair_one(true);
	daemon_start();
}

/* ---- main -------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	bool json = false, attack_only = false;
	g_aneshared = getenv("ANESHARED");
	bool only_fair = false, only_python = false, only_pipeline = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick")) {
			g_quick = true;
			g_reps = 3;
		} else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
			g_reps = atoi(argv[++i]);
			if (g_reps < 1 || g_reps > 31)
				g_reps = 5;
		} else if (!strcmp(argv[i], "--fair")) {
			only_fair = true;   /* the fairness section only */
		} else if (!strcmp(argv[i], "--python")) {
			only_python = true;   /* the Python client's section only */
		} else if (!strcmp(argv[i], "--pipeline")) {
			only_pipeline = true;   /* the 3-process pipeline's section only */
		} else if (!strcmp(argv[i], "--aneshared") && i + 1 < argc) {
			g_aneshared = argv[++i];
		} else if (!strcmp(argv[i], "--json")) {
			json = true;
		} else if (!strcmp(argv[i], "--attack-only")) {
			attack_only = true;
		} else {
			fprintf(stderr, "usage: bench_daemon [--quick] [--reps N] [--aneshared PATH] [--json] "
			                "[--attack-only] [--fair] [--python] [--pipeline]\n");
			return 2;
		}
	}
	if (!g_aneshared)
		g_aneshared = ANES_ANESHARED_EXE;
	FILE *json_out = NULL;
	if (json) {   /* the JSON alone on stdout, the report on stderr */
		int fd = dup(STDOUT_FILENO);
		if (fd < 0 || !(json_out = fdopen(fd, "w")) || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
			perror("bench_daemon: --json");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	g_main = getpid();
	setvbuf(stdout, NULL, _IOLBF, 0);
	double t0 = now_s();
	int r = anes_cpu_backend_new(0, &g_backend);
	if (r < 0)
		die("cpu backend", r, NULL);
	daemon_start();
	printf("bench_daemon: aneshared %s, %d repetitions%s\n", g_aneshared, g_reps,
	       g_quick ? " (quick)" : "");
	if (only_fair) {
		bench_fair();
	} else if (only_python) {
		bench_python();
	} else if (only_pipeline) {
		bench_pipeline();
	} else {
		if (!attack_only) {
			bench_rtt();
			bench_python();
			bench_chain();
			bench_pipeline();
			bench_big();
			bench_compile();
			bench_throughput();
			bench_memory();
		}
		bench_attack();
		if (!attack_only)
			bench_fair();
	}
	daemon_stop();
	g_backend->ops->destroy(g_backend);
	double total = now_s() - t0;
	printf("\n== total %.1f s\n", total);
	bench_check(total, 300, true, "whole benchmark < 300 s");
	printf("\n");
	int failed = bench_print_checks();
	if (json_out) {
		json_report(json_out, total);
		fclose(json_out);
	}
	return failed ? 1 : 0;
}
