/* SPDX-License-Identifier: MIT */
/*
 * The load test of docs/reliability.md ("Load"): N client processes (64)
 * pipeline runs of the dynamic-weights matmul (examples/dynamic_matmul.mil)
 * against one aneshared for a bounded time while this process SIGKILLs random
 * ones and starts replacements.  Every child checks every result against an
 * fp32 reference and reports its counts through a pipe.  Afterwards status
 * must show no surfaces, no programs and one client (us), and the daemon's
 * fd count and resident memory must be back at their baseline.
 *
 *   load_test [--clients N] [--seconds S] [--kill-ms MS] [--daemon PATH] [--mil FILE]
 *
 * The daemon defaults to $ANESHARED.  Prints the figures; exit status 0 only
 * if every check passed.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "anes_proto.h"
#include "aneshare.h"
#include "test_util.h"

#ifndef ANES_SOURCE_DIR
#define ANES_SOURCE_DIR "."
#endif

#define PAIRS 4   /* runs each child keeps in flight */

/* ---- the daemon --------------------------------------------------------------- */

static char dir[256], sock[300], logpath[300];
static pid_t daemon_pid;

static int count_fds(pid_t pid)
{
	return tu_fd_count(pid);
}

static int start_daemon(const char *exe)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof dir, "%s/anes-load-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(dir))
		return -errno;
	snprintf(sock, sizeof sock, "%s/aneshare.sock", dir);
	snprintf(logpath, sizeof logpath, "%s/daemon.log", dir);
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		tu_die_with_parent();
		int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd >= 0)
			dup2(fd, 2);
		setenv("XDG_CONFIG_HOME", dir, 1);
		execl(exe, exe, "--socket", sock, (char *)NULL);
		_exit(127);
	}
	daemon_pid = pid;
	int64_t deadline = tu_now_ms() + 10000;
	while (tu_now_ms() < deadline) {
		aneshare_conn *c;
		if (aneshare_connect(sock, "probe", &c) == 0) {
			aneshare_disconnect(c);
			return 0;
		}
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			daemon_pid = 0;
			return -ECHILD;
		}
		tu_pause_ms(5);
	}
	return -ETIMEDOUT;
}

/* SIGTERM and wait: the daemon's exit status, or -1. */
static int stop_daemon(void)
{
	if (daemon_pid <= 0)
		return -1;
	kill(daemon_pid, SIGTERM);
	int st;
	if (waitpid(daemon_pid, &st, 0) != daemon_pid)
		return -1;
	daemon_pid = 0;
	unlink(logpath);
	rmdir(dir);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- a child ------------------------------------------------------------------- */

typedef struct report {
	int32_t pid;
	uint32_t ok, wrong, errors;
} report;

/* The parent closes the write end of this pipe to stop the children. */
static int stop_fd = -1;

static bool told_to_stop(void)
{
	struct pollfd p = { .fd = stop_fd, .events = POLLIN };
	return poll(&p, 1, 0) > 0;
}

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void send_report(int fd, report *r)
{
	if (!r->ok && !r->wrong && !r->errors)
		return;
	/* < PIPE_BUF: atomic, whatever the other children write. */
	ssize_t n;
	do
		n = write(fd, r, sizeof *r);
	while (n < 0 && errno == EINTR);
	r->ok = r->wrong = r->errors = 0;
}

/* Exit status: 0 when told to stop, 2.. set-up failures. */
static int child_main(const char *mil, int report_fd, uint64_t seed)
{
	report rep = { .pid = (int32_t)getpid() };
	aneshare_conn *c;
	char name[32];
	snprintf(name, sizeof name, "load-%ld", (long)getpid());
	if (aneshare_connect(sock, name, &c) < 0)
		return 2;
	aneshare_program *p;
	if (aneshare_program_compile(c, mil, NULL, 0, &p, NULL) < 0)
		return 3;
	h_mm sh;
	if (!h_mm_from_program(p, &sh))
		return 4;
	aneshare_surface *in[PAIRS], *out[PAIRS];
	for (int i = 0; i < PAIRS; i++)
		if (aneshare_surface_create(c, sh.in_bytes, &in[i]) < 0 ||
		    aneshare_surface_create(c, sh.out_bytes, &out[i]) < 0)
			return 5;
	float *xf = malloc(sh.ic * (sh.seq + sh.oc) * sizeof *xf);
	float *yf = malloc(sh.oc * sh.seq * sizeof *yf);
	if (!xf || !yf)
		return 6;

	while (!told_to_stop()) {
		uint32_t t[PAIRS];
		bool submitted[PAIRS];
		for (int i = 0; i < PAIRS; i++) {
			h_mm_fill(&sh, aneshare_surface_data(in[i]), rng(&seed));
			memset(aneshare_surface_data(out[i]), 0xff, sh.out_bytes);   /* NaN */
			submitted[i] = aneshare_run_submit(p, 0, &in[i], 1, &out[i], 1, &t[i]) == 0;
			if (!submitted[i])
				rep.errors++;
		}
		for (int i = 0; i < PAIRS; i++) {
			if (!submitted[i])
				continue;
			if (aneshare_wait(c, t[i]) != 0) {
				rep.errors++;
				continue;
			}
			double e = tu_mm_error(&sh, aneshare_surface_data(in[i]),
			                       aneshare_surface_data(out[i]), xf, yf);
			if (e <= H_MM_TOL)
				rep.ok++;
			else
				rep.wrong++;
		}
		send_report(report_fd, &rep);
	}
	for (int i = 0; i < PAIRS; i++) {
		aneshare_surface_release(in[i]);
		aneshare_surface_release(out[i]);
	}
	aneshare_program_release(p);
	aneshare_disconnect(c);
	free(xf);
	free(yf);
	return 0;
}

static pid_t spawn_child(const char *mil, const int rep[2], const int stop[2], uint64_t seed)
{
	pid_t pid = fork();
	if (pid == 0) {
		tu_die_with_parent();
		close(rep[0]);
		close(stop[1]);
		stop_fd = stop[0];
		_exit(child_main(mil, rep[1], seed));
	}
	return pid;
}

/* ---- the parent ----------------------------------------------------------------- */

typedef struct totals {
	uint64_t ok, wrong, errors;
} totals;

static void drain_reports(int fd, totals *t, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	while (poll(&p, 1, timeout_ms) > 0) {
		report r[64];
		ssize_t n = read(fd, r, sizeof r);
		if (n <= 0)
			return;
		for (size_t i = 0; i < (size_t)n / sizeof r[0]; i++) {
			t->ok += r[i].ok;
			t->wrong += r[i].wrong;
			t->errors += r[i].errors;
		}
		timeout_ms = 0;
	}
}

typedef struct counts {
	uint32_t clients, surfaces, programs;
} counts;

static int get_counts(aneshare_conn *c, counts *ret)
{
	aneshare_status *st;
	int r = aneshare_get_status(c, &st);
	if (r < 0)
		return r;
	*ret = (counts){ st->clients, st->surfaces, st->programs };
	aneshare_status_free(st);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned n_clients = 64, seconds = 20, kill_ms = 150;
	const char *exe = getenv("ANESHARED"), *mil_path = ANES_SOURCE_DIR "/examples/dynamic_matmul.mil";
	static const struct option opts[] = {
		{ "clients", required_argument, NULL, 'c' }, { "seconds", required_argument, NULL, 's' },
		{ "kill-ms", required_argument, NULL, 'k' }, { "daemon", required_argument, NULL, 'd' },
		{ "mil", required_argument, NULL, 'm' },     { NULL, 0, NULL, 0 },
	};
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'c': n_clients = (unsigned)atoi(optarg); break;
		case 's': seconds = (unsigned)atoi(optarg); break;
		case 'k': kill_ms = (unsigned)atoi(optarg); break;
		case 'd': exe = optarg; break;
		case 'm': mil_path = optarg; break;
		default:
			fprintf(stderr, "usage: load_test [--clients N] [--seconds S] [--kill-ms MS] "
			                "[--daemon PATH] [--mil FILE]\n");
			return 2;
		}
	}
	if (!exe || n_clients < 1 || n_clients > 200 || seconds < 1 || kill_ms < 1) {
		fprintf(stderr, "load_test: bad arguments (is $ANESHARED set?)\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	char *mil = tu_read_file(mil_path);
	if (!mil) {
		fprintf(stderr, "load_test: cannot read %s\n", mil_path);
		return 2;
	}
	int r = start_daemon(exe);
	if (r < 0) {
		fprintf(stderr, "load_test: cannot start %s: %s\n", exe, strerror(-r));
		return 1;
	}

	/* Baseline: a daemon that has served one client, which has gone again. */
	aneshare_conn *obs;
	if (aneshare_connect(sock, "load-observer", &obs) < 0) {
		fprintf(stderr, "load_test: cannot connect\n");
		return 1;
	}
	long rss_start = tu_proc_status_kb(daemon_pid, "VmRSS");
	{
		aneshare_program *p;
		aneshare_surface *in, *out;
		h_mm sh;
		if (aneshare_program_compile(obs, mil, NULL, 0, &p, NULL) < 0 ||
		    !h_mm_from_program(p, &sh) || aneshare_surface_create(obs, sh.in_bytes, &in) < 0 ||
		    aneshare_surface_create(obs, sh.out_bytes, &out) < 0 ||
		    aneshare_run(p, 0, &in, 1, &out, 1) < 0) {
			fprintf(stderr, "load_test: warm-up failed: %s\n", aneshare_last_error(obs));
			return 1;
		}
		aneshare_surface_release(in);
		aneshare_surface_release(out);
		aneshare_program_release(p);
	}
	counts cn;
	int64_t deadline = tu_now_ms() + 10000;
	while (get_counts(obs, &cn) == 0 && (cn.clients != 1 || cn.surfaces || cn.programs) &&
	       tu_now_ms() < deadline)
		tu_pause_ms(10);
	int fds_base = count_fds(daemon_pid);
	long rss_base = tu_proc_status_kb(daemon_pid, "VmRSS");

	int rp[2], sp[2];
	if (anes_pipe_cloexec(rp) < 0 || anes_pipe_cloexec(sp) < 0)
		return 1;
	pid_t *kids = calloc(n_clients, sizeof *kids);
	uint64_t seed = 0x5eed;
	unsigned spawned = 0, kills = 0, setup_failures = 0;
	for (unsigned i = 0; i < n_clients; i++) {
		kids[i] = spawn_child(mil, rp, sp, ++seed);
		spawned++;
	}

	totals tot = { 0 };
	long rss_peak = rss_base;
	int fds_peak = fds_base;
	int64_t t0 = tu_now_ms(), end = t0 + (int64_t)seconds * 1000, next_kill = t0 + kill_ms;
	uint64_t rs = 0x1234567;
	while (tu_now_ms() < end) {
		int64_t wait = next_kill - tu_now_ms();
		drain_reports(rp[0], &tot, wait > 0 ? (int)wait : 0);
		long rss = tu_proc_status_kb(daemon_pid, "VmRSS");
		if (rss > rss_peak)
			rss_peak = rss;
		int fds = count_fds(daemon_pid);
		if (fds > fds_peak)
			fds_peak = fds;
		if (tu_now_ms() < next_kill)
			continue;
		next_kill += kill_ms / 2 + (int64_t)(rng(&rs) % kill_ms);
		unsigned v = (unsigned)(rng(&rs) % n_clients);
		kill(kids[v], SIGKILL);
		int st;
		waitpid(kids[v], &st, 0);
		if (WIFEXITED(st) && WEXITSTATUS(st) != 0)
			setup_failures++;   /* died on its own before we killed it */
		kills++;
		kids[v] = spawn_child(mil, rp, sp, ++seed);
		spawned++;
	}
	double elapsed = (double)(tu_now_ms() - t0) / 1000.0;

	/* Stop the rest gently: they finish their batch, report and exit 0. */
	close(rp[1]);
	close(sp[1]);
	for (unsigned i = 0; i < n_clients; i++) {
		int st;
		waitpid(kids[i], &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			setup_failures++;
	}
	drain_reports(rp[0], &tot, 1000);
	close(rp[0]);
	close(sp[0]);

	/* Back to the baseline? */
	deadline = tu_now_ms() + 20000;
	int fds_final = -1;
	do {
		if (get_counts(obs, &cn) < 0) {
			fprintf(stderr, "load_test: status failed: %s\n", aneshare_last_error(obs));
			break;
		}
		fds_final = count_fds(daemon_pid);
		if (cn.clients == 1 && !cn.surfaces && !cn.programs && fds_final == fds_base)
			break;
		tu_pause_ms(20);
	} while (tu_now_ms() < deadline);
	long rss_final = tu_proc_status_kb(daemon_pid, "VmRSS");
	long hwm = tu_proc_status_kb(daemon_pid, "VmHWM");
	if (hwm > rss_peak)
		rss_peak = hwm;
	aneshare_status *st = NULL;
	uint64_t daemon_runs = 0;
	if (aneshare_get_status(obs, &st) == 0) {
		daemon_runs = st->runs;
		aneshare_status_free(st);
	}
	aneshare_disconnect(obs);
	int exit_status = stop_daemon();

	/* Memory: back within 16 MiB (or 25 %) of the warm baseline. */
	long rss_slack = rss_base / 4 > 16384 ? rss_base / 4 : 16384;
	bool rss_ok = rss_final <= rss_base + rss_slack;
	printf("load: %u clients for %.1f s, a kill every ~%u ms\n", n_clients, elapsed, kill_ms);
	printf("load: runs completed and checked %llu (%.0f/s; the daemon ran %llu), wrong %llu, "
	       "failed %llu\n",
	       (unsigned long long)tot.ok, (double)tot.ok / elapsed, (unsigned long long)daemon_runs,
	       (unsigned long long)tot.wrong, (unsigned long long)tot.errors);
	printf("load: clients started %u, killed %u, failed on their own %u\n", spawned, kills,
	       setup_failures);
	printf("load: daemon RSS start %.1f MiB, baseline %.1f MiB, peak %.1f MiB, final %.1f MiB\n",
	       rss_start / 1024.0, rss_base / 1024.0, rss_peak / 1024.0, rss_final / 1024.0);
	printf("load: daemon fds baseline %d, peak %d, final %d\n", fds_base, fds_peak, fds_final);
	printf("load: status at the end: %u clients, %u surfaces, %u programs; daemon exit %d\n",
	       cn.clients, cn.surfaces, cn.programs, exit_status);

	bool pass = tot.ok > 0 && tot.wrong == 0 && tot.errors == 0 && kills > 0 &&
	            setup_failures == 0 && cn.clients == 1 && cn.surfaces == 0 && cn.programs == 0 &&
	            fds_final == fds_base && rss_ok && exit_status == 0;
	printf("load: %s\n", pass ? "PASS" : "FAIL");
	free(kids);
	free(mil);
	return pass ? 0 : 1;
}
