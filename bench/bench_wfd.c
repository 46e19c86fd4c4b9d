/* SPDX-License-Identifier: MIT */
/*
 * Weights by file descriptor at the size of real models (docs/performance.md,
 * "Weights by fd"): a linear layer whose fp16 weights are one file of 1 GiB
 * (--mib N; --quick: 256 MiB, one repetition), passed by fd, with the daemon in-process and
 * with its device worker (--worker).  Each figure next to its baseline in
 * the same run:
 *
 *   - a cache hit from a second process (the daemon hashes the file itself)
 *     against `sha256sum FILE`, and against reading the file once;
 *   - first compiles (cache misses) of the plain file and of a sealed memfd
 *     of the same bytes (used in place: the daemon only hashes and maps it)
 *     against `sha256sum FILE`; the difference is what a plain file costs
 *     of its own (its copy, and what goes with it); in wall time, and in CPU
 *     time of the daemon and its worker (/proc/PID/stat) against
 *     sha256sum's (wait4), which other work on the machine hardly moves;
 *   - the peak RSS (VmHWM) of the daemon plus its worker, after the program
 *     was compiled and ran, against the file's size;
 *   - the bytes the client's compile frames take on the socket (an
 *     interposed sendmsg counts them) against the MIL text.
 *
 *   bench_wfd [--quick] [--mib N] [--reps N] [--aneshared PATH] [--json]
 *
 * The file is written in a temporary directory and deleted at the end.
 * scripts/bench.sh runs it after bench_daemon.  Exit status 1 if a check
 * fails.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* RTLD_NEXT */
#endif
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "anes_fp16.h"
#include "aneshare.h"
#include "bench_util.h"

extern char **environ;

enum { IN = 8192 };   /* y [1, OUT] = linear(x [1, IN], W [OUT, IN]); OUT = MiB x 64 */

static const char *g_aneshared;
static char g_dir[128], g_sock[256], g_file[256];
static pid_t g_daemon;
static unsigned g_out;
static uint64_t g_bytes;   /* of the weight file */
static int g_reps = 3;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static _Noreturn void die(const char *what, int rc)
{
	fprintf(stderr, "bench_wfd: %s: %s\n", what, rc ? strerror(rc < 0 ? -rc : rc) : "failed");
	if (g_daemon > 0)
		kill(g_daemon, SIGKILL);
	if (g_file[0])
		unlink(g_file);
	exit(2);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void json_report(FILE *o, bool quick, double total)
{
	bench_json_begin(o, "bench_wfd");
	fprintf(o, "  \"quick\": %s,\n  \"file_bytes\": %llu,\n  \"seconds\": %.1f,\n",
	        quick ? "true" : "false", (unsigned long long)g_bytes, total);
	bench_json_end(o);
}

/* ---- the compile frames: this process's sendmsg, counted while asked ------------ */

static volatile int g_counting;
static size_t g_sent;

__attribute__((visibility("default"))) ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	static ssize_t (*real)(int, const struct msghdr *, int);
	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "sendmsg");
	ssize_t n = real(fd, msg, flags);
	if (g_counting && n > 0)
		g_sent += (size_t)n;
	return n;
}

/* ---- the program and its file -------------------------------------------------- */

static char g_mil[1024];

static void make_mil(void)
{
	snprintf(g_mil, sizeof g_mil,
	         "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, %d]> x) {\n"
	         "        tensor<fp16, [%u, %d]> W = const()[name = string(\"W\"), val = tensor<fp16, [%u, %d]>("
	         "BLOBFILE(path = string(\"@model_path/weights/weight.bin\"), offset = uint64(64)))];\n"
	         "        tensor<fp16, [1, %u]> y = linear(x = x, weight = W)[name = string(\"y\")];\n"
	         "    } -> (y);\n}\n",
	         IN, g_out, IN, g_out, IN, g_out);
}

static float wval(unsigned o, unsigned i)
{
	return (float)((o * 7u + i * 3u) % 13u) / 64.0f - 0.09375f;
}

static float xval(unsigned i)
{
	return (float)(i % 5u) / 8.0f;
}

/* weight.bin: header, one record, then W row by row, written in 1 MiB pieces */
static void make_file(void)
{
	int fd = open(g_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		die(g_file, -errno);
	uint8_t head[128] = { 0 };
	head[0] = 1;
	head[4] = 2;
	uint32_t magic = 0xDEADBEEFu, dt = 1;
	uint64_t size = (uint64_t)g_out * IN * 2, off = 128;
	memcpy(head + 64, &magic, 4);
	memcpy(head + 68, &dt, 4);
	memcpy(head + 72, &size, 8);
	memcpy(head + 80, &off, 8);
	if (write(fd, head, sizeof head) != (ssize_t)sizeof head)
		die("writing the weight file", -errno);
	enum { ROWS = 64 };   /* 1 MiB */
	uint16_t *buf = malloc((size_t)ROWS * IN * 2);
	for (unsigned o0 = 0; o0 < g_out; o0 += ROWS) {
		for (unsigned r = 0; r < ROWS; r++)
			for (unsigned i = 0; i < IN; i++)
				buf[(size_t)r * IN + i] = anes_f32_to_f16_soft(wval(o0 + r, i));
		size_t n = (size_t)ROWS * IN * 2;
		if (write(fd, buf, n) != (ssize_t)n)
			die("writing the weight file", -errno);
	}
	free(buf);
	close(fd);
	g_bytes = sizeof head + size;
}

/* ---- baselines ---------------------------------------------------------------------- */

static double g_sum_cpu;   /* the last sha256sum's CPU time (user + system), s */

static double time_sha256sum(void)
{
	int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, null, 1);
	char *argv[] = { (char *)"sha256sum", g_file, NULL };
	double t0 = now_s();
	pid_t pid;
	int e = posix_spawnp(&pid, "sha256sum", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(null);
	if (e != 0)
		die("sha256sum", e);
	int st;
	struct rusage ru;
	wait4(pid, &st, 0, &ru);
	double t = now_s() - t0;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		die("sha256sum failed", 0);
	g_sum_cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
	            (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
	return t;
}

static double time_read_once(void)
{
	int fd = open(g_file, O_RDONLY | O_CLOEXEC);
	enum { CHUNK = 1 << 20 };
	char *buf = malloc(CHUNK);
	double t0 = now_s();
	ssize_t n;
	while ((n = read(fd, buf, CHUNK)) > 0)
		;
	double t = now_s() - t0;
	free(buf);
	close(fd);
	return t;
}

/* ---- the daemon ------------------------------------------------------------------------ */

static void daemon_start(bool worker)
{
	snprintf(g_sock, sizeof g_sock, "%s/aneshare.sock", g_dir);
	pid_t pid = fork();
	if (pid < 0)
		die("fork", -errno);
	if (pid == 0) {
		setenv("XDG_CONFIG_HOME", g_dir, 1);
		char log[300];
		snprintf(log, sizeof log, "%s/daemon.log", g_dir);
		int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		if (lfd >= 0) {
			dup2(lfd, 1);
			dup2(lfd, 2);
		}
		const char *argv[] = { g_aneshared, "--socket", g_sock, "--backend", "cpu",
		                       worker ? "--worker" : "--no-worker", NULL };
		execv(g_aneshared, (char *const *)argv);
		_exit(127);
	}
	g_daemon = pid;
	if (bench_wait_daemon(g_sock) < 0)
		die("starting aneshared", -ETIMEDOUT);
}

static void daemon_stop(void)
{
	kill(g_daemon, SIGTERM);
	waitpid(g_daemon, NULL, 0);
	g_daemon = 0;
	unlink(g_sock);
	char p[300];
	snprintf(p, sizeof p, "%s.lock", g_sock);
	unlink(p);
}

/* A "Key: N kB" line of /proc/PID/status, in bytes; 0 if unknown. */
static uint64_t status_bytes(pid_t pid, const char *key)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	long v = 0;
	size_t kl = strlen(key);
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, key, kl) && line[kl] == ':' && sscanf(line + kl + 1, "%ld", &v) == 1)
			break;
	fclose(f);
	return (uint64_t)v * 1024;
}

/* The daemon's children (its device worker), from /proc/PID/task/TID/children. */
static int children(pid_t pid, pid_t *out, int max)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%ld/task", (long)pid);
	DIR *d = opendir(path);
	int n = 0;
	if (!d)
		return 0;
	struct dirent *e;
	while ((e = readdir(d)) && n < max) {
		if (e->d_name[0] == '.')
			continue;
		char cp[320];
		snprintf(cp, sizeof cp, "/proc/%ld/task/%s/children", (long)pid, e->d_name);
		FILE *f = fopen(cp, "r");
		if (!f)
			continue;
		long c;
		while (n < max && fscanf(f, "%ld", &c) == 1)
			out[n++] = (pid_t)c;
		fclose(f);
	}
	closedir(d);
	return n;
}

/* CPU time (user + system, all threads) of pid so far, s; 0 if unknown. */
static double proc_cpu_s(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	const char *p = strrchr(buf, ')');   /* after the name, which may hold spaces */
	unsigned long long ut = 0, st = 0;
	if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The daemon's CPU time plus its device worker's (its children's), s:
 * unlike wall time, hardly moved by other work on the machine. */
static double daemon_cpu_s(void)
{
	pid_t kids[8];
	int nk = children(g_daemon, kids, 8);
	double t = proc_cpu_s(g_daemon);
	for (int i = 0; i < nk; i++)
		t += proc_cpu_s(kids[i]);
	return t;
}

/* ---- one client --------------------------------------------------------------------- */

typedef struct compiled {
	double seconds;
	size_t frame_bytes;
	bool cached;
} compiled;

/* Compile the program from fd (the weight file, or -1: g_file opened here). */
static aneshare_program *compile_fd(aneshare_conn *c, int wfd, compiled *ret)
{
	int fd = wfd >= 0 ? wfd : open(g_file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(g_file, -errno);
	aneshare_weight_fd wf = { "@model_path/weights/weight.bin", fd };
	aneshare_program *p = NULL;
	bool cached = false;
	g_sent = 0;
	g_counting = 1;
	double t0 = now_s();
	int r = aneshare_program_compile_fds(c, g_mil, &wf, 1, &p, &cached);
	double t = now_s() - t0;
	g_counting = 0;
	if (fd != wfd)
		close(fd);
	if (r < 0) {
		fprintf(stderr, "bench_wfd: compile: %s\n", aneshare_last_error(c));
		die("compile", r);
	}
	*ret = (compiled){ t, g_sent, cached };
	return p;
}

static aneshare_program *compile_file(aneshare_conn *c, compiled *ret)
{
	return compile_fd(c, -1, ret);
}

/* A sealed memfd holding the file's bytes (made by the library), or -1
 * where there are none (macOS). */
static int make_memfd(void)
{
	int fd = open(g_file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(g_file, -errno);
	void *m = mmap(NULL, (size_t)g_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		die("mapping the weight file", -errno);
	int mfd = -1;
	int r = aneshare_weight_memfd("bench-wfd", m, (size_t)g_bytes, &mfd);
	munmap(m, (size_t)g_bytes);
	if (r == -ENOTSUP)
		return -1;
	if (r < 0)
		die("aneshare_weight_memfd", r);
	return mfd;
}

/* Run p once and check y against W x on rows spread over the whole file. */
static void run_check(aneshare_conn *c, aneshare_program *p)
{
	aneshare_surface *in = NULL, *out = NULL;
	if (aneshare_surface_create(c, IN * 2, &in) < 0 || aneshare_surface_create(c, (size_t)g_out * 2, &out) < 0)
		die("surfaces", -ENOMEM);
	uint16_t *x = aneshare_surface_data(in), *y = aneshare_surface_data(out);
	for (unsigned i = 0; i < IN; i++)
		x[i] = anes_f32_to_f16_soft(xval(i));
	int r = aneshare_run(p, 0, &in, 1, &out, 1);
	if (r < 0)
		die(aneshare_last_error(c), r);
	for (unsigned k = 0; k < 64; k++) {
		unsigned o = (unsigned)(((uint64_t)k * 2654435761u) % g_out);
		double ref = 0;
		for (unsigned i = 0; i < IN; i++)
			ref += (double)anes_f16_to_f32_soft(anes_f32_to_f16_soft(wval(o, i))) *
			       anes_f16_to_f32_soft(x[i]);
		double got = anes_f16_to_f32_soft(y[o]);
		if (fabs(got - ref) > 1e-2 * fmax(1.0, fabs(ref))) {
			fprintf(stderr, "bench_wfd: y[%u] = %g, want %g\n", o, got, ref);
			die("wrong result", 0);
		}
	}
	aneshare_surface_release(in);
	aneshare_surface_release(out);
}

/* A second process compiles the same file: a cache hit.  Its time and frame
 * bytes come back through a pipe. */
static compiled hit_from_another_process(void)
{
	int pfd[2];
	if (pipe(pfd) < 0)
		die("pipe", -errno);
	pid_t pid = fork();
	if (pid < 0)
		die("fork", -errno);
	if (pid == 0) {
		close(pfd[0]);
		aneshare_conn *c;
		if (aneshare_connect(g_sock, "bench-wfd-2", &c) < 0)
			_exit(3);
		compiled k;
		aneshare_program *p = compile_file(c, &k);
		aneshare_program_release(p);
		aneshare_disconnect(c);
		_exit(write(pfd[1], &k, sizeof k) == (ssize_t)sizeof k ? 0 : 4);
	}
	close(pfd[1]);
	compiled k;
	ssize_t n = read(pfd[0], &k, sizeof k);
	close(pfd[0]);
	int st;
	waitpid(pid, &st, 0);
	if (n != (ssize_t)sizeof k || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		die("the second client failed", 0);
	return k;
}

static void bench_mode(bool worker)
{
	const char *where = worker ? "--worker" : "in-process";
	daemon_start(worker);
	aneshare_conn *c;
	int r = aneshare_connect(g_sock, "bench-wfd", &c);
	if (r < 0)
		die("connect", r);
	compiled cold;
	aneshare_program *p = compile_file(c, &cold);
	if (cold.cached)
		die("the first compile was a cache hit", 0);
	run_check(c, p);

	double hit[31], sum[62], rd[31], hitc[31], sumc[62];
	size_t hit_bytes = 0;
	for (int i = 0; i < g_reps; i++) {
		sum[i] = time_sha256sum();
		sumc[i] = g_sum_cpu;
		double c0 = daemon_cpu_s();
		compiled k = hit_from_another_process();
		hitc[i] = daemon_cpu_s() - c0;
		if (!k.cached)
			die("the second process's compile was no cache hit", 0);
		hit[i] = k.seconds;
		hit_bytes = k.frame_bytes > hit_bytes ? k.frame_bytes : hit_bytes;
		rd[i] = time_read_once();
	}
	run_check(c, p);
	pid_t kids[8];
	int nk = children(g_daemon, kids, 8);
	uint64_t hwm = status_bytes(g_daemon, "VmHWM"), whwm = 0;
	for (int i = 0; i < nk; i++)
		whwm += status_bytes(kids[i], "VmHWM");
	aneshare_program_release(p);

	/* First compiles (cache misses, the program released in between) of
	 * the plain file and of a sealed memfd of the same bytes, taking turns
	 * with sha256sum */
	int mfd = make_memfd();
	double fplain[31], fmem[31], fplainc[31], fmemc[31];
	for (int i = 0; i < g_reps; i++) {
		sum[g_reps + i] = time_sha256sum();
		sumc[g_reps + i] = g_sum_cpu;
		compiled k;
		double c0 = daemon_cpu_s();
		aneshare_program *q = compile_file(c, &k);
		fplainc[i] = daemon_cpu_s() - c0;
		if (k.cached)
			die("a first compile of the file was a cache hit", 0);
		fplain[i] = k.seconds;
		aneshare_program_release(q);
		if (mfd < 0)
			continue;
		c0 = daemon_cpu_s();
		q = compile_fd(c, mfd, &k);
		fmemc[i] = daemon_cpu_s() - c0;
		if (k.cached)
			die("a first compile of the memfd was a cache hit", 0);
		fmem[i] = k.seconds;
		if (i == 0)
			run_check(c, q);
		aneshare_program_release(q);
	}
	if (mfd >= 0)
		close(mfd);
	aneshare_disconnect(c);
	daemon_stop();

	double h = median(hit, g_reps), s = median(sum, 2 * g_reps), rdm = median(rd, g_reps);
	double fp = median(fplain, g_reps), fm = mfd >= 0 ? median(fmem, g_reps) : NAN;
	double hc = median(hitc, g_reps), sc = median(sumc, 2 * g_reps), fpc = median(fplainc, g_reps);
	double fmc = mfd >= 0 ? median(fmemc, g_reps) : NAN;
	size_t mil = strlen(g_mil), frames = cold.frame_bytes > hit_bytes ? cold.frame_bytes : hit_bytes;
	double mib = 1.0 / (1 << 20);
	printf("\n== weights by fd, %s: %.0f MiB of fp16 weights in one file\n", where, (double)g_bytes * mib);
	printf("  %-58s %9.3f s\n", "compile, first (hash, map or copy, compile)", cold.seconds);
	printf("  %-58s %9.3f s\n", "compile from a second process (cache hit), median", h);
	printf("  %-58s %9.3f s  %5.2fx sha256sum\n", "compile, first, plain file (cache miss), median", fp, fp / s);
	if (mfd >= 0) {
		printf("  %-58s %9.3f s  %5.2fx sha256sum\n", "compile, first, sealed memfd (cache miss), median", fm,
		       fm / s);
		printf("  %-58s %9.3f s  %5.2fx sha256sum\n", "  hashing the file once (a cache hit)", h, h / s);
		printf("  %-58s %9.3f s  %5.2fx sha256sum\n", "  the rest: mapping, compiling (memfd - hit)", fm - h, (fm - h) / s);
		printf("  %-58s %9.3f s  %5.2fx sha256sum\n", "  a plain file's own cost (plain - memfd)", fp - fm,
		       (fp - fm) / s);
	}
	printf("  %-58s %9.3f s\n", "sha256sum of the file, median", s);
	printf("  %-58s %9.3f s\n", "reading the file once, median", rdm);
	printf("  CPU time (daemon + worker; sha256sum's own), medians:\n");
	printf("  %-58s %9.3f s  %5.2fx sha256sum\n", "  compile, first, plain file", fpc, fpc / sc);
	if (mfd >= 0)
		printf("  %-58s %9.3f s  %5.2fx sha256sum\n", "  compile, first, sealed memfd", fmc, fmc / sc);
	printf("  %-58s %9.3f s  %5.2fx sha256sum\n", "  compile from a second process (cache hit)", hc, hc / sc);
	printf("  %-58s %9.3f s\n", "  sha256sum of the file", sc);
	printf("  %-58s %9.1f MiB%s\n", "peak RSS, daemon", (double)hwm * mib, "");
	if (worker)
		printf("  %-58s %9.1f MiB (%d process%s)\n", "peak RSS, device worker", (double)whwm * mib, nk,
		       nk == 1 ? "" : "es");
	printf("  %-58s %9zu B (MIL text %zu B)\n", "compile frames sent, largest of the compiles", frames, mil);
	bench_fig("s", cold.seconds, "wfd %s: first compile", where);
	bench_fig("s", h, "wfd %s: cache hit from a second process", where);
	bench_fig("s", fp, "wfd %s: first compile, plain file, median", where);
	bench_fig("ratio", fp / s, "wfd %s: first compile, plain file / sha256sum", where);
	bench_fig("ratio", fpc / sc, "wfd %s: first compile, plain file / sha256sum, CPU time", where);
	bench_fig("ratio", hc / sc, "wfd %s: cache hit / sha256sum, CPU time", where);
	if (mfd >= 0) {
		bench_fig("s", fm, "wfd %s: first compile, sealed memfd, median", where);
		bench_fig("ratio", fm / s, "wfd %s: first compile, sealed memfd / sha256sum", where);
		bench_fig("ratio", fmc / sc, "wfd %s: first compile, sealed memfd / sha256sum, CPU time", where);
	}
	bench_fig("s", s, "wfd %s: sha256sum", where);
	bench_fig("s", rdm, "wfd %s: read once", where);
	bench_fig("MiB", (double)hwm * mib, "wfd %s: daemon peak RSS", where);
	if (worker)
		bench_fig("MiB", (double)whwm * mib, "wfd %s: worker peak RSS", where);
	bench_fig("B", (double)frames, "wfd %s: compile frames", where);
	bench_check(h / s, 1.2, true, "wfd %s: cache hit / sha256sum", where);
	bench_check((double)(hwm + whwm) / (double)g_bytes, 1.2, true, "wfd %s: peak RSS / file size", where);
	bench_check((double)frames - (double)mil, 4095, true, "wfd %s: compile frames - MIL text (B)", where);
}

int main(int argc, char **argv)
{
	bool json = false, quick = false;
	unsigned mib = 1024;
	g_aneshared = getenv("ANESHARED");
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick")) {
			quick = true;
			mib = 256;
			g_reps = 1;
		} else if (!strcmp(argv[i], "--mib") && i + 1 < argc) {
			mib = (unsigned)atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
			g_reps = atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--aneshared") && i + 1 < argc) {
			g_aneshared = argv[++i];
		} else if (!strcmp(argv[i], "--json")) {
			json = true;
		} else {
			fprintf(stderr, "usage: bench_wfd [--quick] [--mib N] [--reps N] [--aneshared PATH] [--json]\n");
			return 2;
		}
	}
	if (mib < 1 || mib > 65536 || g_reps < 1 || g_reps > 31 || !g_aneshared) {
		fprintf(stderr, "bench_wfd: --mib 1..65536, --reps 1..31, and $ANESHARED or --aneshared\n");
		return 2;
	}
	FILE *json_out = NULL;
	if (json) {   /* the JSON alone on stdout, the report on stderr */
		int fd = dup(STDOUT_FILENO);
		if (fd < 0 || !(json_out = fdopen(fd, "w")) || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
			perror("bench_wfd: --json");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	double t0 = now_s();
	g_out = mib * 64;
	snprintf(g_dir, sizeof g_dir, "/tmp/anes-bench-wfd-XXXXXX");
	if (!mkdtemp(g_dir))
		die("mkdtemp", -errno);
	snprintf(g_file, sizeof g_file, "%s/weight.bin", g_dir);
	make_mil();
	make_file();
	printf("bench_wfd: aneshared %s, %u MiB weight file, %d repetitions%s\n", g_aneshared, mib, g_reps,
	       quick ? " (quick)" : "");
	bench_mode(false);
	bench_mode(true);
	unlink(g_file);
	char p[300];
	snprintf(p, sizeof p, "%s/daemon.log", g_dir);
	unlink(p);
	rmdir(g_dir);
	double total = now_s() - t0;
	printf("\n== total %.1f s\n\n", total);
	int failed = bench_print_checks();
	if (json_out) {
		json_report(json_out, quick, total);
		fclose(json_out);
	}
	return failed ? 1 : 0;
}
