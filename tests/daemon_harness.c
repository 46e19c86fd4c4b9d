/* SPDX-License-Identifier: MIT */
#include "daemon_harness.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "anes_clock.h"
#include "anes_config.h"
#include "anes_fp16.h"
#include "anes_proto.h"
#include "linear_blob.h"
#include "scm_fds.h"

#ifndef ANES_SOURCE_DIR
#define ANES_SOURCE_DIR "."
#endif

/* A short pause between two polls of a condition (not for synchronisation:
 * every caller re-checks its condition and gives up after a deadline). */
static void poll_pause(void)
{
	tu_pause_ms(5);
}

/* ---- the daemon --------------------------------------------------------------- */

static void dump_log(const h_daemon *d)
{
	FILE *f = fopen(d->log, "re");
	if (!f)
		return;
	char line[512];
	unsigned n = 0;
	while (fgets(line, sizeof line, f) && n++ < 50)
		fprintf(stderr, "  aneshared: %s", line);
	fclose(f);
}

static void remove_dir(h_daemon *d)
{
	if (!d->dir[0])
		return;
	unlink(d->log);
	unlink(d->sock);
	char lock[256];
	snprintf(lock, sizeof lock, "%s.lock", d->sock);
	unlink(lock);
	rmdir(d->dir);
	d->dir[0] = '\0';
}

int h_slow(void)
{
	const char *s = getenv("ANESHARE_TEST_SLOW");
	if (s && atoi(s) > 0)
		return atoi(s);
	const char *w = getenv("ANESHARED_WRAPPER");
	return w && *w ? 20 : 1;
}

void h_child_stdio(const char *log)
{
	tu_die_with_parent();   /* never outlive a crashed test */
	int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd >= 0)
		dup2(fd, 2);
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
	}
}

unsigned h_wrapper_argv(const char **argv)
{
	unsigned n = 0;
	char *wrapper = getenv("ANESHARED_WRAPPER");
	if (wrapper && *wrapper) {
		wrapper = strdup(wrapper);
		for (char *tok = strtok(wrapper, " \t"); tok && n < 32; tok = strtok(NULL, " \t"))
			argv[n++] = tok;
	}
	return n;
}

void h_daemon_start(h_daemon *d)
{
	h_daemon_start_args(d, NULL);
}

/* The fake clocks of this test process (h_fake_clock, h_fake_client_clock):
 * files removed when it exits. */
static char fake_clock_path[64];
#if ANES_TEST_HOOKS
static char client_clock_path[64];
#endif

/* Start the daemon: in a fresh directory, or (restart) on d's socket path
 * again; wait until it answers unless told not to. */
static void daemon_launch(h_daemon *d, const char *const *args, bool fresh, bool wait)
{
	const char *exe = getenv("ANESHARED");
	cr_assert(exe && *exe, "ANESHARED is not set (tests/meson.build sets it)");
	const char *tmp = getenv("TMPDIR");
	if (fresh) {
		memset(d, 0, sizeof *d);
		snprintf(d->dir, sizeof d->dir, "%s/anes-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
		cr_assert(mkdtemp(d->dir), "mkdtemp: %s", strerror(errno));
		snprintf(d->sock, sizeof d->sock, "%s/aneshare.sock", d->dir);
		snprintf(d->log, sizeof d->log, "%s/daemon.log", d->dir);
	}

	pid_t pid = fork();
	cr_assert(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		h_child_stdio(d->log);
		setenv("ANESHARE_SOCKET", d->sock, 1);
		setenv("XDG_CONFIG_HOME", d->dir, 1);
		/* the daemons' fake clock, never this process's own (libaneshare's) */
		if (fake_clock_path[0])
			setenv("ANESHARE_TEST_CLOCK", fake_clock_path, 1);
		else
			unsetenv("ANESHARE_TEST_CLOCK");
		const char *argv[64];
		unsigned n = h_wrapper_argv(argv);
		argv[n++] = exe;
		argv[n++] = "--socket";
		argv[n++] = d->sock;
		for (unsigned i = 0; args && args[i] && n < 63; i++)
			argv[n++] = args[i];
		argv[n] = NULL;
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	d->pid = pid;
	if (!wait)
		return;

	/* Bounded wait until the daemon answers hello (or died).  A completed
	 * handshake, not just an accepted connect, shows its loop is running. */
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	for (;;) {
		aneshare_conn *c;
		if (aneshare_connect(d->sock, "harness", &c) == 0) {
			aneshare_disconnect(c);
			return;
		}
		int status;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			d->pid = 0;
			dump_log(d);
			cr_assert_fail("aneshared exited during start-up (status 0x%x)", status);
		}
		if (tu_now_ms() > deadline) {
			h_daemon_kill(d);
			cr_assert_fail("aneshared did not answer on %s within 10 s", d->sock);
		}
		poll_pause();
	}
}

void h_daemon_start_args(h_daemon *d, const char *const *args)
{
	daemon_launch(d, args, true, true);
}

void h_daemon_start_worker(h_daemon *d, bool worker, const char *const *more)
{
	const char *args[32];
	unsigned n = 0;
	if (worker) {
		args[n++] = "--backend";
		args[n++] = "cpu";
		args[n++] = "--worker";
	}
	for (unsigned i = 0; more && more[i] && n < 30; i++)
		args[n++] = more[i];
	args[n] = NULL;
	h_daemon_start_args(d, args);
}

void h_daemon_crash(h_daemon *d)
{
	cr_assert(d->pid > 0, "the daemon is not running");
	cr_assert_eq(kill(d->pid, SIGKILL), 0);
	int status = 0;
	pid_t r;
	do
		r = waitpid(d->pid, &status, 0);
	while (r < 0 && errno == EINTR);
	cr_assert_eq(r, d->pid);
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "status 0x%x", status);
	d->pid = 0;
}

void h_daemon_restart(h_daemon *d, bool wait)
{
	cr_assert(d->pid == 0 && d->dir[0], "restart needs a stopped daemon and its directory");
	daemon_launch(d, NULL, false, wait);
}

void h_daemon_stop(h_daemon *d)
{
	cr_assert(d->pid > 0, "the daemon is not running");
	cr_assert_eq(kill(d->pid, SIGTERM), 0);
	h_daemon_wait(d);
}

void h_daemon_wait(h_daemon *d)
{
	cr_assert(d->pid > 0, "the daemon is not running");
	int status = 0;
	pid_t r;
	do
		r = waitpid(d->pid, &status, 0);
	while (r < 0 && errno == EINTR);
	cr_assert_eq(r, d->pid);
	d->pid = 0;
	bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	if (!clean)
		dump_log(d);
	cr_assert(clean, "aneshared did not exit cleanly on SIGTERM (status 0x%x)", status);
	/* The daemon removes its socket file on a clean shutdown. */
	cr_expect_neq(access(d->sock, F_OK), 0, "the socket file is still there");
	remove_dir(d);
}

void h_daemon_kill(h_daemon *d)
{
	if (d->pid > 0) {
		/* SIGTERM first, so that a daemon that can still stop writes its
		 * coverage counters (a coverage build loses them on SIGKILL);
		 * SIGKILL after a bounded wait. */
		kill(d->pid, SIGTERM);
		int64_t deadline = tu_now_ms() + 2000 * h_slow();
		pid_t r;
		while ((r = waitpid(d->pid, NULL, WNOHANG)) == 0 && tu_now_ms() < deadline)
			tu_pause_ms(5);
		if (r == 0) {
			kill(d->pid, SIGKILL);
			waitpid(d->pid, NULL, 0);
		}
		d->pid = 0;
	}
	remove_dir(d);
}

#if ANES_TEST_HOOKS
static void fake_clocks_unlink(void)
{
	if (fake_clock_path[0])
		unlink(fake_clock_path);
	if (client_clock_path[0])
		unlink(client_clock_path);
}

/* A fresh clock file at path (a mkostemp template's buffer), mapped here:
 * 1 s, step 0. */
static anes_test_clock *clock_file(char path[64])
{
	cr_assert_eq(path[0], 0, "one fake clock of each kind per test");
	snprintf(path, 64, "/tmp/aneshare-clock-XXXXXX");
	int fd = mkostemp(path, O_CLOEXEC);
	cr_assert_geq(fd, 0, "mkostemp: %s", strerror(errno));
	static bool registered;
	if (!registered)
		atexit(fake_clocks_unlink);
	registered = true;
	cr_assert_eq(ftruncate(fd, sizeof(anes_test_clock)), 0);
	anes_test_clock *k = mmap(NULL, sizeof *k, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(k, MAP_FAILED);
	close(fd);
	atomic_store(&k->now_ns, 1000000000u);
	atomic_store(&k->step_ns, 0);
	return k;
}
#endif

anes_test_clock *h_fake_clock(void)
{
#if !ANES_TEST_HOOKS
	cr_skip_test("built without -Dtest_hooks=true: no fake clock ($ANESHARE_TEST_CLOCK)");
	return NULL;
#else
	return clock_file(fake_clock_path);   /* daemon_launch hands it to the daemons */
#endif
}

anes_test_clock *h_fake_client_clock(void)
{
#if !ANES_TEST_HOOKS
	cr_skip_test("built without -Dtest_hooks=true: no fake clock ($ANESHARE_TEST_CLOCK)");
	return NULL;
#else
	anes_test_clock *k = clock_file(client_clock_path);
	cr_assert_eq(setenv("ANESHARE_TEST_CLOCK", client_clock_path, 1), 0);
	return k;
#endif
}

aneshare_conn *h_connect(const h_daemon *d, const char *name)
{
	aneshare_conn *c = NULL;
	int r = aneshare_connect(d->sock, name, &c);
	cr_assert_eq(r, 0, "connect: %s", aneshare_strerror(r));
	cr_assert_not_null(c);
	return c;
}

aneshare_status *h_status(aneshare_conn *c)
{
	aneshare_status *st = NULL;
	int r = aneshare_get_status(c, &st);
	cr_assert_eq(r, 0, "status: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	return st;
}

void h_wait_counts(aneshare_conn *c, uint32_t surfaces, uint32_t programs)
{
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	for (;;) {
		aneshare_status *st = h_status(c);
		uint32_t s = st->surfaces, p = st->programs;
		aneshare_status_free(st);
		if (s == surfaces && p == programs)
			return;
		cr_assert(tu_now_ms() < deadline,
		          "status stuck at %u surfaces, %u programs (want %u, %u)", s, p, surfaces,
		          programs);
		poll_pause();
	}
}

void h_wait_clients(aneshare_conn *c, uint32_t clients)
{
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	for (;;) {
		aneshare_status *st = h_status(c);
		uint32_t n = st->clients;
		aneshare_status_free(st);
		if (n == clients)
			return;
		cr_assert(tu_now_ms() < deadline, "status stuck at %u clients (want %u)", n,
		          clients);
		poll_pause();
	}
}

char *h_read_source(const char *relpath)
{
	char path[1024];
	snprintf(path, sizeof path, "%s/%s", ANES_SOURCE_DIR, relpath);
	FILE *f = fopen(path, "re");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	cr_assert_eq(fseek(f, 0, SEEK_END), 0);
	long n = ftell(f);
	cr_assert(n >= 0 && n < (16 << 20));
	rewind(f);
	char *buf = malloc((size_t)n + 1);
	cr_assert_not_null(buf);
	cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* ---- matmul ------------------------------------------------------------------- */

aneshare_program *h_compile_mm(aneshare_conn *c, h_mm *mm, bool *ret_cached)
{
	char *mil = h_read_source("examples/dynamic_matmul.mil");
	aneshare_program *p = NULL;
	bool cached = true;
	int r = aneshare_program_compile(c, mil, NULL, 0, &p, &cached);
	free(mil);
	cr_assert_eq(r, 0, "compile: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert(h_mm_from_program(p, mm),
	          "dynamic_matmul.mil does not have the documented layout");
	if (ret_cached)
		*ret_cached = cached;
	return p;
}

aneshare_surface *h_surface(aneshare_conn *c, size_t size)
{
	aneshare_surface *s = NULL;
	int r = aneshare_surface_create(c, size, &s);
	cr_assert_eq(r, 0, "surface.create(%zu): %s: %s", size, aneshare_strerror(r),
	             aneshare_last_error(c));
	return s;
}

uint8_t *h_linear_blob(int in, int out, float seed, size_t *ret_len)
{
	uint8_t *b = lb_blob(out, in, lb_wval, seed, ret_len);
	cr_assert_not_null(b);
	return b;
}

void h_linear_check(aneshare_conn *c, aneshare_program *p, int in, int out, float seed)
{
	aneshare_surface *sin = h_surface(c, (size_t)in * 2), *sout = h_surface(c, (size_t)out * 2);
	uint16_t *x = aneshare_surface_data(sin), *y = aneshare_surface_data(sout);
	for (int i = 0; i < in; i++)
		x[i] = anes_f32_to_f16_soft((float)(i % 5) / 4.0f);
	for (int o = 0; o < out; o++)
		y[o] = 0x7e00;   /* NaN: the run must overwrite it */
	cr_assert_eq(aneshare_run(p, 0, &sin, 1, &sout, 1), 0, "%s", aneshare_last_error(c));
	for (int o = 0; o < out; o++) {
		double ref = 0;
		for (int i = 0; i < in; i++)
			ref += anes_f16_to_f32_soft(anes_f32_to_f16_soft(lb_wval(o, i, seed))) *
			       anes_f16_to_f32_soft(x[i]);
		double got = anes_f16_to_f32_soft(y[o]);
		cr_assert(fabs(got - ref) <= 2e-3 * fmax(1.0, fabs(ref)), "y[%d] = %g, want %g", o, got, ref);
	}
	aneshare_surface_release(sin);
	aneshare_surface_release(sout);
}

void h_mm_pairs(aneshare_conn *c, const h_mm *mm, aneshare_surface **in, aneshare_surface **out,
                int n, uint64_t seed0)
{
	for (int i = 0; i < n; i++) {
		in[i] = h_surface(c, mm->in_bytes);
		out[i] = h_surface(c, mm->out_bytes);
		h_mm_fill(mm, aneshare_surface_data(in[i]), seed0 + (uint64_t)i);
		memset(aneshare_surface_data(out[i]), 0xff, mm->out_bytes);
	}
}

double h_mm_error(const h_mm *mm, const uint16_t *x, const uint16_t *y)
{
	float *xf = malloc(mm->ic * (mm->seq + mm->oc) * sizeof *xf);
	float *yf = malloc(mm->oc * mm->seq * sizeof *yf);
	cr_assert(xf && yf);
	double e = tu_mm_error(mm, x, y, xf, yf);
	free(xf);
	free(yf);
	return e;
}

/* seed: NULL when the caller filled in. */
static void mm_run_check(aneshare_program *p, const h_mm *mm, aneshare_surface *in,
                         aneshare_surface *out, const uint64_t *seed)
{
	if (seed)
		h_mm_fill(mm, aneshare_surface_data(in), *seed);
	memset(aneshare_surface_data(out), 0xff, mm->out_bytes);   /* NaNs: must be overwritten */
	int r = aneshare_run(p, 0, &in, 1, &out, 1);
	cr_assert_eq(r, 0, "run: %s", aneshare_strerror(r));
	double err = h_mm_error(mm, aneshare_surface_data(in), aneshare_surface_data(out));
	if (seed)
		cr_assert_leq(err, H_MM_TOL, "relative error %g (seed %llu)", err,
		              (unsigned long long)*seed);
	else
		cr_assert_leq(err, H_MM_TOL, "relative error %g", err);
}

void h_mm_run_check(aneshare_program *p, const h_mm *mm, aneshare_surface *in,
                    aneshare_surface *out)
{
	mm_run_check(p, mm, in, out, NULL);
}

void h_mm_fill_run_check(aneshare_program *p, const h_mm *mm, aneshare_surface *in,
                         aneshare_surface *out, uint64_t seed)
{
	mm_run_check(p, mm, in, out, &seed);
}

/* ---- raw connections ----------------------------------------------------------- */

int h_raw_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof sa.sun_path)
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	int fd = anes_socket_cloexec(AF_UNIX, SOCK_STREAM);
	if (fd < 0)
		return fd;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

int h_raw_send(int fd, const void *buf, size_t len, const int *fds, unsigned nfds)
{
	SCM_FDS_BUF(H_RAW_MAX_FDS) cm;
	if (nfds > H_RAW_MAX_FDS)
		return -EINVAL;
	const char *p = buf;
	while (len) {
		struct iovec iov = { (void *)p, len };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		scm_fds_attach(&msg, cm.buf, sizeof cm, fds, nfds);
		ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
		nfds = 0;   /* the fds went with the first byte */
	}
	return 0;
}

void h_raw_frame(msgpack_sbuffer *sb, uint32_t msgid, const char *method, const void *params_mp,
                 size_t params_len, unsigned nfds)
{
	msgpack_packer pk;
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	char zero[ANES_FRAME_HEADER_SIZE] = { 0 };
	size_t start = sb->size;
	msgpack_sbuffer_write(sb, zero, sizeof zero);
	msgpack_pack_array(&pk, 4);
	msgpack_pack_uint32(&pk, 0);
	msgpack_pack_uint32(&pk, msgid);
	msgpack_pack_str(&pk, strlen(method));
	msgpack_pack_str_body(&pk, method, strlen(method));
	if (params_mp)
		msgpack_sbuffer_write(sb, params_mp, params_len);
	else
		msgpack_pack_map(&pk, 0);
	anes_frame_header_write((uint8_t *)sb->data + start,
	                        (uint32_t)(sb->size - start - ANES_FRAME_HEADER_SIZE), nfds);
}

int h_raw_request(int fd, uint32_t msgid, const char *method, const void *params_mp,
                  size_t params_len, const int *fds, unsigned nfds)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	h_raw_frame(&sb, msgid, method, params_mp, params_len, nfds);
	int r = h_raw_send(fd, sb.data, sb.size, fds, nfds);
	msgpack_sbuffer_destroy(&sb);
	return r;
}

/* Wait (until deadline, on tu_now_ms) for the next frame on io: 1 with the
 * payload (valid until the next read) and the count of its fds (closed),
 * 0 when the peer closed, -EBADMSG for a frame that does not parse,
 * -ETIMEDOUT. */
static int io_frame_fds(anes_io *io, int64_t deadline, const uint8_t **ret_payload, uint32_t *ret_len,
                        int *ret_fds, unsigned *ret_nfds)
{
	for (;;) {
		*ret_nfds = 0;
		int r = anes_io_next_frame(io, ret_payload, ret_len, ret_fds, ret_nfds);
		if (r < 0)
			return -EBADMSG;
		if (r > 0)
			return 1;
		int64_t left = deadline - tu_now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd pfd = { .fd = io->fd, .events = POLLIN };
		int pr = poll(&pfd, 1, (int)left);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0)
			return -ETIMEDOUT;
		ssize_t n = anes_io_read(io);
		if (n == -EINTR || n == -EAGAIN)
			continue;
		if (n <= 0)
			return 0;
	}
}

/* io_frame_fds with the fds that came closed and counted in *ret_nfds (if
 * not NULL). */
static int io_frame(anes_io *io, int64_t deadline, const uint8_t **ret_payload, uint32_t *ret_len,
                    unsigned *ret_nfds)
{
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	int r = io_frame_fds(io, deadline, ret_payload, ret_len, fds, &nfds);
	if (r != 1)
		return r;
	for (unsigned i = 0; i < nfds; i++)
		close(fds[i]);
	if (ret_nfds)
		*ret_nfds = nfds;
	return 1;
}

/* The next message on io, decoded: 1 after fn(m, ud), else as io_frame
 * (-EBADMSG also for a payload that does not decode). */
static int io_msg(anes_io *io, int64_t deadline, h_msg_fn fn, void *ud)
{
	const uint8_t *payload;
	uint32_t len;
	int r = io_frame(io, deadline, &payload, &len, NULL);
	if (r <= 0)
		return r;
	msgpack_zone zone;
	anes_msg m;
	msgpack_zone_init(&zone, 1024);
	if (anes_msg_decode(payload, len, &zone, &m) < 0) {
		msgpack_zone_destroy(&zone);
		return -EBADMSG;
	}
	fn(&m, ud);
	msgpack_zone_destroy(&zone);
	return 1;
}

static int64_t deadline_of(int timeout_ms)
{
	return tu_now_ms() + (int64_t)timeout_ms * h_slow();
}

int h_raw_response(int fd, uint32_t msgid, int timeout_ms)
{
	return h_raw_response_cb(fd, msgid, timeout_ms, NULL, NULL);
}

typedef struct raw_wait {
	h_reply reply;
	void (*fn)(const msgpack_object *result, void *ud);
	void *ud;
} raw_wait;

static void raw_wait_cb(const anes_msg *m, void *ud)
{
	raw_wait *w = ud;
	h_reply_cb(m, &w->reply);
	if (w->reply.got && m->type == ANES_MSG_RESPONSE && m->msgid == w->reply.msgid &&
	    !m->error && m->result && w->fn)
		w->fn(m->result, w->ud);
}

int h_raw_response_cb(int fd, uint32_t msgid, int timeout_ms,
                      void (*fn)(const msgpack_object *result, void *ud), void *ud)
{
	anes_io io;
	anes_io_init(&io, fd, ANES_FRAME_MAX_DEFAULT);
	int64_t deadline = deadline_of(timeout_ms);
	raw_wait w = { .reply = { .msgid = msgid }, .fn = fn, .ud = ud };
	int r = 1;
	while (!w.reply.got && (r = io_msg(&io, deadline, raw_wait_cb, &w)) == 1)
		;
	anes_io_cleanup(&io);
	if (!w.reply.got)
		return r == 0 ? -EPIPE : r;
	return w.reply.code;
}

static void count_errors_cb(const anes_msg *m, void *ud)
{
	if (m->type == ANES_MSG_NOTIFY && anes_msg_method_is(m, "error"))
		(*(unsigned *)ud)++;
}

int h_raw_wait_closed(int fd, int timeout_ms, unsigned *ret_errors)
{
	anes_io io;
	anes_io_init(&io, fd, ANES_FRAME_MAX_DEFAULT);
	int64_t deadline = deadline_of(timeout_ms);
	unsigned errors = 0;
	int r;
	while ((r = io_msg(&io, deadline, count_errors_cb, &errors)) == 1)
		;
	anes_io_cleanup(&io);
	if (ret_errors)
		*ret_errors = errors;
	return r;
}

static void error_code_cb(const anes_msg *m, void *ud)
{
	const char *s;
	uint32_t l;
	int code;
	if (m->type == ANES_MSG_NOTIFY && anes_msg_method_is(m, "error"))
		*(int *)ud = anes_msg_error(&(anes_msg){ .error = m->params }, &code, &s, &l) == 0 ? code : 9999;
}

static int io_closed_with(anes_io *io, int64_t deadline)
{
	int code = 0, r;
	while ((r = io_msg(io, deadline, error_code_cb, &code)) == 1)
		;
	return r < 0 ? r : code;
}

int h_raw_closed_with(int fd, int timeout_ms)
{
	anes_io io;
	anes_io_init(&io, fd, ANES_FRAME_MAX_DEFAULT);
	int r = io_closed_with(&io, deadline_of(timeout_ms));
	anes_io_cleanup(&io);
	return r;
}

/* { key: str } when str is set, else { key: v }; {} when key is NULL. */
static int raw_request_kv(int fd, uint32_t msgid, const char *method, const char *key, uint64_t v,
                          const char *str, const int *fds, unsigned nfds)
{
	msgpack_sbuffer s;
	msgpack_packer pk;
	msgpack_sbuffer_init(&s);
	msgpack_packer_init(&pk, &s, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, key ? 1 : 0);
	if (key) {
		msgpack_pack_str(&pk, strlen(key));
		msgpack_pack_str_body(&pk, key, strlen(key));
		if (str) {
			msgpack_pack_str(&pk, strlen(str));
			msgpack_pack_str_body(&pk, str, strlen(str));
		} else {
			msgpack_pack_uint64(&pk, v);
		}
	}
	int r = h_raw_request(fd, msgid, method, s.data, s.size, fds, nfds);
	msgpack_sbuffer_destroy(&s);
	return r;
}

int h_raw_request_kv(int fd, uint32_t msgid, const char *method, const char *key, uint64_t v,
                     const int *fds, unsigned nfds)
{
	return raw_request_kv(fd, msgid, method, key, v, NULL, fds, nfds);
}

int h_raw_request_kstr(int fd, uint32_t msgid, const char *method, const char *key, const char *str)
{
	return raw_request_kv(fd, msgid, method, key, 0, str, NULL, 0);
}

int h_raw_send_hello(int fd, uint32_t msgid)
{
	return h_raw_request_kv(fd, msgid, "hello", "protocol", 1, NULL, 0);
}

void h_raw_hello(int fd)
{
	cr_assert_eq(h_raw_send_hello(fd, 1), 0);
	cr_assert_eq(h_raw_response(fd, 1, 5000), 0, "raw hello failed");
}

int h_raw_open(const char *path)
{
	int fd = h_raw_connect(path);
	cr_assert_geq(fd, 0);
	h_raw_hello(fd);
	return fd;
}

void h_raw_padded_frame(msgpack_sbuffer *sb, uint32_t msgid, const char *method, size_t pad)
{
	msgpack_sbuffer p;
	msgpack_packer pk;
	msgpack_sbuffer_init(&p);
	msgpack_packer_init(&pk, &p, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	msgpack_pack_str(&pk, 3);
	msgpack_pack_str_body(&pk, "pad", 3);
	msgpack_pack_bin(&pk, pad);
	char *zeros = calloc(1, pad ? pad : 1);
	if (!zeros)
		abort();   /* asserts nothing: forked children use it too */
	msgpack_pack_bin_body(&pk, zeros, pad);
	free(zeros);
	h_raw_frame(sb, msgid, method, p.data, p.size, 0);
	msgpack_sbuffer_destroy(&p);
}

/* The unsigned field key of o (a map); asserts it is there. */
static uint64_t status_u64(const msgpack_object *o, const char *key)
{
	uint64_t v = 0;
	cr_assert_eq(anes_mp_u64(o, key, UINT64_MAX, &v), 0, "status has no unsigned %s", key);
	return v;
}

/* The entry of the array result[list] whose field key is v, NULL if none. */
static const msgpack_object *status_entry(const msgpack_object *result, const char *list,
                                          const char *key, uint64_t v)
{
	const msgpack_object *a = anes_mp_get(result, list);
	cr_assert(a && a->type == MSGPACK_OBJECT_ARRAY, "status has no array %s", list);
	for (uint32_t i = 0; i < a->via.array.size; i++) {
		uint64_t got;
		if (anes_mp_u64(&a->via.array.ptr[i], key, UINT64_MAX, &got) == 0 && got == v)
			return &a->via.array.ptr[i];
	}
	return NULL;
}

void h_raw_st_read(const msgpack_object *result, h_raw_st *st)
{
	memset(st, 0, sizeof(*st));
	st->clients = status_u64(result, "clients");
	st->turned_away = status_u64(result, "turned_away");
	st->dropped = status_u64(result, "dropped");
	const msgpack_object *in = anes_mp_get(result, "input");
	cr_assert(in && in->type == MSGPACK_OBJECT_MAP, "status has no input map");
	st->in_bytes = status_u64(in, "bytes");
	st->in_waiting = status_u64(in, "waiting");
	st->in_timed_out = status_u64(in, "timed_out");
	const msgpack_object *me = status_entry(result, "processes", "pid", (uint64_t)getpid());
	if (me) {
		st->my_input = status_u64(me, "input_bytes");
		st->my_unsent = status_u64(me, "unsent_bytes");
	}
	const msgpack_object *uid = status_entry(result, "users", "uid", (uint64_t)getuid());
	if (uid)
		st->uid_jobs = status_u64(uid, "jobs");
	const msgpack_object *ts = anes_mp_get(result, "totals");
	cr_assert(ts && ts->type == MSGPACK_OBJECT_ARRAY, "status has no totals");
	for (uint32_t i = 0; i < ts->via.array.size; i++) {
		const char *name;
		uint32_t len;
		if (anes_mp_str(&ts->via.array.ptr[i], "resource", 64, &name, &len) == 0 &&
		    len == strlen("unsent_bytes") && !memcmp(name, "unsent_bytes", len))
			st->total_unsent = status_u64(&ts->via.array.ptr[i], "used");
	}
}

static void read_raw_status(const msgpack_object *result, void *ud)
{
	h_raw_st_read(result, ud);
}

h_raw_st h_raw_status(int fd)
{
	static uint32_t msgid = 0x40000000u;   /* apart from the tests' own msgids */
	h_raw_st st;
	msgid++;
	cr_assert_eq(h_raw_request_kv(fd, msgid, "status", NULL, 0, NULL, 0), 0);
	cr_assert_eq(h_raw_response_cb(fd, msgid, 10000, read_raw_status, &st), 0, "raw status failed");
	return st;
}

h_raw_st h_raw_wait_input_waiting(int fd, uint64_t n)
{
	int64_t deadline = deadline_of(10000);
	h_raw_st st;
	for (;;) {
		st = h_raw_status(fd);
		if (st.in_waiting == n || tu_now_ms() > deadline)
			break;
		poll_pause();
	}
	cr_assert_eq(st.in_waiting, n, "input.waiting never got to %llu (%llu)", (unsigned long long)n,
	             (unsigned long long)st.in_waiting);
	return st;
}

/* ---- a gate in front of the device -------------------------------------------------- */

void h_gate_make(h_gate *g)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(g->dir, sizeof g->dir, "%s/anes-gate-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	cr_assert_not_null(mkdtemp(g->dir), "mkdtemp: %s", strerror(errno));
	snprintf(g->path, sizeof g->path, "%s/gate", g->dir);
	cr_assert_eq(mkfifo(g->path, 0600), 0, "mkfifo: %s", strerror(errno));
	snprintf(g->arg, sizeof g->arg, "run_gate=%s", g->path);
	g->fd = -1;
}

void h_gate_attach(h_gate *g)
{
	g->fd = open(g->path, O_RDWR | O_CLOEXEC);
	cr_assert_geq(g->fd, 0, "opening the gate: %s", strerror(errno));
}

void h_gate_open(h_gate *g, unsigned n)
{
	char tokens[4096];
	cr_assert_leq(n, sizeof tokens);
	memset(tokens, 'g', n);
	cr_assert_eq(write(g->fd, tokens, n), (ssize_t)n);
}

void h_gate_free(h_gate *g)
{
	if (g->fd >= 0)
		close(g->fd);
	g->fd = -1;
	unlink(g->path);
	rmdir(g->dir);
}

/* ---- a raw connection with its own receive buffer ------------------------------ */

void h_rconn_adopt(h_rconn *rc, int fd)
{
	rc->fd = fd;
	anes_io_init(&rc->io, fd, ANES_FRAME_MAX_DEFAULT);
}

void h_rconn_open(h_rconn *rc, const char *path)
{
	h_rconn_adopt(rc, h_raw_open(path));
}

void h_rconn_close(h_rconn *rc)
{
	if (rc->fd < 0)
		return;
	anes_io_cleanup(&rc->io);
	close(rc->fd);
	rc->fd = -1;
}

int h_rconn_frame(h_rconn *rc, int timeout_ms, const uint8_t **ret_payload, uint32_t *ret_len,
                  unsigned *ret_nfds)
{
	return io_frame(&rc->io, deadline_of(timeout_ms), ret_payload, ret_len, ret_nfds);
}

int h_rconn_next(h_rconn *rc, int timeout_ms, h_msg_fn fn, void *ud)
{
	return io_msg(&rc->io, deadline_of(timeout_ms), fn, ud);
}

int h_rconn_frame_fds(h_rconn *rc, int timeout_ms, const uint8_t **ret_payload, uint32_t *ret_len,
                      int *ret_fds, unsigned *ret_nfds)
{
	return io_frame_fds(&rc->io, deadline_of(timeout_ms), ret_payload, ret_len, ret_fds, ret_nfds);
}

int h_rconn_closed_with(h_rconn *rc, int timeout_ms)
{
	return io_closed_with(&rc->io, deadline_of(timeout_ms));
}

void h_reply_cb(const anes_msg *m, void *ud)
{
	h_reply *res = ud;
	if (m->type == ANES_MSG_NOTIFY) {
		res->notifications++;
		return;
	}
	if (m->type != ANES_MSG_RESPONSE || m->msgid != res->msgid)
		return;
	res->got = true;
	res->code = 0;
	res->failed_step = -1;
	res->message[0] = '\0';
	if (m->error) {
		const char *s;
		uint32_t l;
		if (anes_msg_error(m, &res->code, &s, &l) < 0)
			res->code = 9999;
		else
			snprintf(res->message, sizeof res->message, "%.*s", (int)l, s);
		int64_t st;
		if (anes_mp_i64(m->error, "failed_step", &st) == 0)
			res->failed_step = st;
	} else if (res->key) {
		if (!m->result || anes_mp_u64(m->result, res->key, UINT64_MAX, &res->value) < 0)
			res->code = 9998;
	}
}

int h_rconn_wait(h_rconn *rc, h_reply *res)
{
	while (!res->got) {
		int r = h_rconn_next(rc, 10000, h_reply_cb, res);
		cr_assert_eq(r, 1, "no response to msgid %u (%s)", res->msgid,
		             r == 0 ? "connection closed" : "timed out");
	}
	return res->code;
}

int h_rconn_call(h_rconn *rc, uint32_t msgid, const char *method, const void *params_mp,
                 size_t params_len, const int *fds, unsigned nfds, const char *key, uint64_t *ret)
{
	int r = h_raw_request(rc->fd, msgid, method, params_mp, params_len, fds, nfds);
	cr_assert_eq(r, 0, "sending %s: %s", method, strerror(-r));
	h_reply res = { .msgid = msgid, .key = key };
	int code = h_rconn_wait(rc, &res);
	if (code == 0 && ret)
		*ret = res.value;
	return code;
}

int h_rconn_call_kv(h_rconn *rc, uint32_t msgid, const char *method, const char *key, uint64_t v,
                    const int *fds, unsigned nfds)
{
	int r = h_raw_request_kv(rc->fd, msgid, method, key, v, fds, nfds);
	cr_assert_eq(r, 0, "sending %s: %s", method, strerror(-r));
	h_reply res = { .msgid = msgid };
	return h_rconn_wait(rc, &res);
}

int h_rconn_call_kstr(h_rconn *rc, uint32_t msgid, const char *method, const char *key,
                      const char *str)
{
	int r = h_raw_request_kstr(rc->fd, msgid, method, key, str);
	cr_assert_eq(r, 0, "sending %s: %s", method, strerror(-r));
	h_reply res = { .msgid = msgid };
	return h_rconn_wait(rc, &res);
}

int h_fake_listen(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	cr_assert_lt(strlen(path), sizeof sa.sun_path, "socket path too long: %s", path);
	strcpy(sa.sun_path, path);
	int fd = anes_socket_cloexec(AF_UNIX, SOCK_STREAM);
	cr_assert_geq(fd, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind %s: %s", path, strerror(errno));
	cr_assert_eq(listen(fd, 1), 0);
	return fd;
}

bool h_fake_accept(int listen_fd, h_rconn *rc)
{
	int fd = anes_accept_cloexec(listen_fd);
	if (fd < 0)
		return false;
	h_rconn_adopt(rc, fd);
	return true;
}

bool h_fake_greet(int listen_fd, h_rconn *rc, int *failures)
{
	if (!h_fake_accept(listen_fd, rc)) {
		(*failures)++;
		return false;
	}
	uint32_t msgid = 0, id;
	char method[16];
	if (!h_fake_next(rc, 10000, &msgid, method, sizeof method, &id) || strcmp(method, "hello"))
		(*failures)++;
	h_fake_hello(&rc->io, msgid);
	return true;
}

bool h_fake_next(h_rconn *rc, int timeout_ms, uint32_t *ret_msgid, char *method,
                 size_t method_size, uint32_t *ret_id)
{
	const uint8_t *payload;
	uint32_t len;
	if (h_rconn_frame(rc, timeout_ms, &payload, &len, NULL) != 1)
		return false;
	msgpack_zone z;
	anes_msg m;
	msgpack_zone_init(&z, 1024);
	bool ok = anes_msg_decode(payload, len, &z, &m) == 0 && m.type == ANES_MSG_REQUEST &&
	          m.method_len < method_size;
	if (ok) {
		*ret_msgid = m.msgid;
		memcpy(method, m.method, m.method_len);
		method[m.method_len] = '\0';
		if (anes_mp_u32(m.params, "id", ret_id) < 0)
			*ret_id = 0;
	}
	msgpack_zone_destroy(&z);
	return ok;
}

void h_fake_hello(anes_io *io, uint32_t msgid)
{
	anes_frame f;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, msgid, 4);
	anes_pack_str(&f.pk, "protocol");
	msgpack_pack_uint32(&f.pk, 1);
	anes_pack_str(&f.pk, "server");
	anes_pack_str(&f.pk, "fake");
	anes_pack_str(&f.pk, "version");
	anes_pack_str(&f.pk, "9.9");
	anes_pack_str(&f.pk, "backend");
	anes_pack_str(&f.pk, "cpu");
	h_fake_send(io, &f, NULL, 0);
}

void h_fake_send(anes_io *io, anes_frame *f, const int *fds, unsigned nfds)
{
	void *data;
	size_t len;
	if (anes_frame_finish(f, nfds, ANES_FRAME_MAX_DEFAULT, &data, &len) == 0 &&
	    anes_io_queue(io, data, len, fds, nfds) == 0)
		(void)anes_io_flush(io);
}

int h_count_fds(void)
{
	return tu_fd_count(getpid());
}

int h_daemon_fds(const h_daemon *d)
{
	return tu_fd_count(d->pid);
}

long h_daemon_rss_kb(const h_daemon *d)
{
	return tu_proc_status_kb(d->pid, "VmRSS");
}

void h_wait_daemon_fds(const h_daemon *d, int n)
{
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	for (;;) {
		int got = h_daemon_fds(d);
		if (got == n)
			return;
		cr_assert(tu_now_ms() < deadline, "the daemon has %d fds open (want %d)", got, n);
		poll_pause();
	}
}

pid_t h_spawn(int (*fn)(void *arg, int ready_fd), void *arg)
{
	int p[2];
	cr_assert_eq(anes_pipe_cloexec(p), 0);
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		tu_die_with_parent();
		close(p[0]);
		_exit(fn(arg, p[1]));
	}
	close(p[1]);
	char b;
	ssize_t n;
	do
		n = read(p[0], &b, 1);
	while (n < 0 && errno == EINTR);
	close(p[0]);
	if (n != 1) {
		int st = 0;
		waitpid(pid, &st, 0);
		cr_assert_fail("the child failed before it was ready (status 0x%x)", st);
	}
	return pid;
}

aneshare_conn *h_observe(const h_daemon *d, int *ret_fds)
{
	aneshare_conn *obs = h_connect(d, "observer");
	h_wait_clients(obs, 1);
	*ret_fds = h_daemon_fds(d);
	cr_assert_gt(*ret_fds, 0);
	return obs;
}

void h_back_to_baseline(const h_daemon *d, aneshare_conn *obs, int fds)
{
	h_wait_clients(obs, 1);
	h_wait_counts(obs, 0, 0);
	aneshare_status *st = h_status(obs);
	cr_expect_eq(st->surface_bytes, 0);
	aneshare_status_free(st);
	h_wait_daemon_fds(d, fds);
}

char *h_square_mm_mil(unsigned n, const char *fn_name)
{
	char *s = NULL;
	int r = asprintf(&s,
	                 "program(1.3)\n{\n"
	                 "    func %s<ios18>(tensor<fp16, [1, 1, %u, %u]> x, tensor<fp16, [1, 1, %u, %u]> y) {\n"
	                 "        bool tx = const()[name = string(\"tx\"), val = bool(false)];\n"
	                 "        bool ty = const()[name = string(\"ty\"), val = bool(false)];\n"
	                 "        tensor<fp16, [1, 1, %u, %u]> z = matmul(transpose_x = tx, transpose_y = ty, "
	                 "x = x, y = y)[name = string(\"z\")];\n"
	                 "    } -> (z);\n}\n",
	                 fn_name, n, n, n, n, n, n);
	if (r < 0)
		abort();
	return s;
}

int h_run_aneshared(const char *dir, const char *const *args, char *err, size_t errsz)
{
	char log[256];
	snprintf(log, sizeof log, "%s/stderr", dir);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		const char *argv[32] = { getenv("ANESHARED") };
		size_t n = 1;
		for (size_t i = 0; args[i] && n < 31; i++)
			argv[n++] = args[i];
		argv[n] = NULL;
		setenv("XDG_CONFIG_HOME", dir, 1);
		unsetenv("ANESHARE_SOCKET");
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0 || dup2(fd, 2) < 0 || dup2(fd, 1) < 0)
			_exit(126);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	char *text = tu_read_file(log);
	snprintf(err, errsz, "%s", text ? text : "");
	free(text);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 256;
}

int h_run_tool(const h_daemon *d, const char *env_exe, char *out, size_t len,
               const char *const *args)
{
	const char *exe = getenv(env_exe);
	cr_assert(exe && *exe, "%s is not set (tests/meson.build sets it)", env_exe);
	cr_assert_gt(len, 0);
	char path[256];
	snprintf(path, sizeof path, "%s/tool.out", d->dir);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0)
			_exit(126);
		dup2(fd, 1);
		dup2(fd, 2);
		char *argv[32];
		int n = 0;
		argv[n++] = (char *)exe;
		argv[n++] = "--socket";
		argv[n++] = (char *)d->sock;
		for (; *args && n < 31; args++)
			argv[n++] = (char *)*args;
		argv[n] = NULL;
		execv(exe, argv);
		_exit(127);
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	FILE *f = fopen(path, "re");
	cr_assert_not_null(f);
	size_t got = fread(out, 1, len - 1, f);
	out[got] = '\0';
	fclose(f);
	unlink(path);
	cr_assert(WIFEXITED(status));
	return WEXITSTATUS(status);
}

void h_msg_error_of(const anes_msg *m, int *ret_code, char *msg, size_t size, int64_t *ret_failed_step)
{
	const char *s;
	uint32_t l;
	cr_assert_eq(anes_msg_error(m, ret_code, &s, &l), 0);
	snprintf(msg, size, "%.*s", (int)l, s);
	int64_t st;
	*ret_failed_step = anes_mp_i64(m->error, "failed_step", &st) == 0 ? st : -1;
}

int h_fds_keep_first(const int *fds, unsigned nfds, bool keep)
{
	for (unsigned i = keep ? 1 : 0; i < nfds; i++)
		close(fds[i]);
	return keep && nfds > 0 ? fds[0] : -1;
}

void h_map_str(const msgpack_object *m, const char *key, char *buf, size_t size)
{
	const char *s;
	uint32_t l;
	buf[0] = '\0';
	if (anes_mp_str(m, key, (uint32_t)size - 1, &s, &l) == 0) {
		memcpy(buf, s, l);
		buf[l] = '\0';
	}
}

msgpack_packer *h_pb_begin(h_pbuf *b, uint32_t n)
{
	msgpack_sbuffer_init(&b->sb);
	msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
	msgpack_pack_map(&b->pk, n);
	return &b->pk;
}

void h_pk_str(msgpack_packer *pk, const char *s)
{
	size_t n = strlen(s);
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

void h_pk_kv_u(msgpack_packer *pk, const char *k, uint64_t v)
{
	h_pk_str(pk, k);
	msgpack_pack_uint64(pk, v);
}

void h_pk_ids(msgpack_packer *pk, const char *k, const uint32_t *ids, uint32_t n)
{
	h_pk_str(pk, k);
	msgpack_pack_array(pk, n);
	for (uint32_t i = 0; i < n; i++)
		msgpack_pack_uint32(pk, ids[i]);
}

uint64_t h_map_u64(const msgpack_object *m, const char *key)
{
	if (m->type != MSGPACK_OBJECT_MAP)
		return UINT64_MAX;
	for (uint32_t i = 0; i < m->via.map.size; i++) {
		const msgpack_object_kv *kv = &m->via.map.ptr[i];
		if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
		    !memcmp(kv->key.via.str.ptr, key, kv->key.via.str.size) &&
		    kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			return kv->val.via.u64;
	}
	return UINT64_MAX;
}

/* ---- the fake IOSurface library ---------------------------------------------------- */

void h_fake_iosurface_env(char *dir, size_t size)
{
#if !ANES_TEST_HOOKS
	(void)dir;
	(void)size;
	cr_skip_test("built without -Dtest_hooks=true: ANESHARE_SURFACES and ANESHARE_IOSURFACE_LIB "
	             "are compiled out, so the fake IOSurface library cannot be loaded");
#else
	const char *lib = getenv("FAKE_IOSURFACE_LIB");
	cr_assert(lib && *lib, "FAKE_IOSURFACE_LIB is not set (run through meson test)");
	cr_assert_geq(size, 32);
	snprintf(dir, size, "/tmp/anes-fakeios-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	setenv("ANESHARE_SURFACES", "iosurface", 1);
	setenv("ANESHARE_IOSURFACE_LIB", lib, 1);
	setenv("ANESHARE_FAKE_IOSURFACE_DIR", dir, 1);
#endif
}

bool h_fake_iosurface_exists(const char *dir, uint64_t id)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%llu", dir, (unsigned long long)id);
	struct stat st;
	return stat(path, &st) == 0;
}

void h_fake_iosurface_rm(const char *dir)
{
	if (!dir[0])
		return;
	DIR *d = opendir(dir);
	struct dirent *e;
	char path[512];
	while (d && (e = readdir(d)))
		if (e->d_name[0] != '.') {
			snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
			unlink(path);
		}
	if (d)
		closedir(d);
	if (rmdir(dir) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}
