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
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "anes_proto.h"

#ifndef ANES_SOURCE_DIR
#define ANES_SOURCE_DIR "."
#endif

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A short pause between two polls of a condition (not for synchronisation:
 * every caller re-checks its condition and gives up after a deadline). */
static void poll_pause(void)
{
	struct timespec ts = { 0, 5 * 1000 * 1000 };
	nanosleep(&ts, NULL);
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

void h_daemon_start(h_daemon *d)
{
	h_daemon_start_args(d, NULL);
}

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
		prctl(PR_SET_PDEATHSIG, SIGKILL);   /* never outlive a crashed test */
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd >= 0)
			dup2(fd, 2);
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
		}
		setenv("ANESHARE_SOCKET", d->sock, 1);
		setenv("XDG_CONFIG_HOME", d->dir, 1);
		char *argv[64];
		unsigned n = 0;
		char *wrapper = getenv("ANESHARED_WRAPPER");
		if (wrapper && *wrapper) {
			wrapper = strdup(wrapper);
			for (char *tok = strtok(wrapper, " \t"); tok && n < 32; tok = strtok(NULL, " \t"))
				argv[n++] = tok;
		}
		argv[n++] = (char *)exe;
		argv[n++] = "--socket";
		argv[n++] = d->sock;
		for (unsigned i = 0; args && args[i] && n < 63; i++)
			argv[n++] = (char *)args[i];
		argv[n] = NULL;
		execvp(argv[0], argv);
		_exit(127);
	}
	d->pid = pid;
	if (!wait)
		return;

	/* Bounded wait until the daemon answers hello (or died).  A completed
	 * handshake, not just an accepted connect, shows its loop is running. */
	int64_t deadline = now_ms() + 10000 * h_slow();
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
		if (now_ms() > deadline) {
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
		kill(d->pid, SIGKILL);
		waitpid(d->pid, NULL, 0);
		d->pid = 0;
	}
	remove_dir(d);
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
	int64_t deadline = now_ms() + 10000 * h_slow();
	for (;;) {
		aneshare_status *st = h_status(c);
		uint32_t s = st->surfaces, p = st->programs;
		aneshare_status_free(st);
		if (s == surfaces && p == programs)
			return;
		cr_assert(now_ms() < deadline,
		          "status stuck at %u surfaces, %u programs (want %u, %u)", s, p, surfaces,
		          programs);
		poll_pause();
	}
}

void h_wait_clients(aneshare_conn *c, uint32_t clients)
{
	int64_t deadline = now_ms() + 10000 * h_slow();
	for (;;) {
		aneshare_status *st = h_status(c);
		uint32_t n = st->clients;
		aneshare_status_free(st);
		if (n == clients)
			return;
		cr_assert(now_ms() < deadline, "status stuck at %u clients (want %u)", n, clients);
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

bool h_mm_from_program(const aneshare_program *p, h_mm *ret)
{
	if (aneshare_program_input_count(p, 0) != 1 || aneshare_program_output_count(p, 0) != 1)
		return false;
	const aneshare_tensor_info *ti = aneshare_program_input(p, 0, 0);
	const aneshare_tensor_info *to = aneshare_program_output(p, 0, 0);
	if (ti->dtype != ANESHARE_FP16 || to->dtype != ANESHARE_FP16 || ti->rank != 4 ||
	    to->rank != 4 || ti->shape[0] != 1 || ti->shape[2] != 1 || to->shape[0] != 1 ||
	    to->shape[2] != 1 || ti->shape[3] != to->shape[3] + to->shape[1])
		return false;
	ret->ic = (size_t)ti->shape[1];
	ret->oc = (size_t)to->shape[1];
	ret->seq = (size_t)to->shape[3];
	ret->in_bytes = (size_t)ti->bytes;
	ret->out_bytes = (size_t)to->bytes;
	return true;
}

void h_mm_fill(const h_mm *mm, uint16_t *x, uint64_t seed)
{
	size_t n = mm->ic * (mm->seq + mm->oc);
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
	for (size_t i = 0; i < n; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		float f = (float)((double)(s >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
		aneshare_f32_to_f16(&x[i], &f, 1);
	}
}

double h_mm_error(const h_mm *mm, const uint16_t *x, const uint16_t *y)
{
	size_t w = mm->seq + mm->oc;
	float *xf = malloc(mm->ic * w * sizeof *xf);
	float *yf = malloc(mm->oc * mm->seq * sizeof *yf);
	cr_assert(xf && yf);
	aneshare_f16_to_f32(xf, x, mm->ic * w);
	aneshare_f16_to_f32(yf, y, mm->oc * mm->seq);
	double max_ref = 0, max_err = 0;
	for (size_t o = 0; o < mm->oc; o++)
		for (size_t s = 0; s < mm->seq; s++) {
			double acc = 0;
			for (size_t i = 0; i < mm->ic; i++)
				acc += (double)xf[i * w + s] * (double)xf[i * w + mm->seq + o];
			double e = fabs((double)yf[o * mm->seq + s] - acc);
			if (!(e <= max_err))
				max_err = isnan(e) ? INFINITY : e;
			max_ref = fmax(max_ref, fabs(acc));
		}
	free(xf);
	free(yf);
	return max_ref > 0 ? max_err / max_ref : max_err;
}

/* ---- raw connections ----------------------------------------------------------- */

int h_raw_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof sa.sun_path)
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

int h_raw_send(int fd, const void *buf, size_t len, const int *fds, unsigned nfds)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * 8)];
	} cm;
	const char *p = buf;
	while (len) {
		struct iovec iov = { (void *)p, len };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		if (nfds) {
			memset(&cm, 0, sizeof cm);
			msg.msg_control = cm.b;
			msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
			struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
			memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
		}
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

int h_raw_request(int fd, uint32_t msgid, const char *method, const void *params_mp,
                  size_t params_len, const int *fds, unsigned nfds)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	char zero[ANES_FRAME_HEADER_SIZE] = { 0 };
	msgpack_sbuffer_write(&sb, zero, sizeof zero);
	msgpack_pack_array(&pk, 4);
	msgpack_pack_uint32(&pk, 0);
	msgpack_pack_uint32(&pk, msgid);
	msgpack_pack_str(&pk, strlen(method));
	msgpack_pack_str_body(&pk, method, strlen(method));
	if (params_mp)
		msgpack_sbuffer_write(&sb, params_mp, params_len);
	else
		msgpack_pack_map(&pk, 0);
	anes_frame_header_write((uint8_t *)sb.data, (uint32_t)(sb.size - ANES_FRAME_HEADER_SIZE),
	                        nfds);
	int r = h_raw_send(fd, sb.data, sb.size, fds, nfds);
	msgpack_sbuffer_destroy(&sb);
	return r;
}

/* Read one message (bounded by deadline).  1 and *m filled (zone must be
 * destroyed by the caller), 0 on close, -ETIMEDOUT. */
static int raw_next(anes_io *io, int64_t deadline, msgpack_zone *zone, anes_msg *m)
{
	for (;;) {
		const uint8_t *payload;
		uint32_t len;
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nfds = 0;
		int r = anes_io_next_frame(io, &payload, &len, fds, &nfds);
		if (r < 0)
			return 0;   /* treat garbage from the daemon as a close: the caller asserts */
		if (r > 0) {
			for (unsigned i = 0; i < nfds; i++)
				close(fds[i]);
			msgpack_zone_init(zone, 1024);
			if (anes_msg_decode(payload, len, zone, m) < 0) {
				msgpack_zone_destroy(zone);
				return 0;
			}
			return 1;
		}
		int64_t left = deadline - now_ms();
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

int h_raw_response(int fd, uint32_t msgid, int timeout_ms)
{
	return h_raw_response_cb(fd, msgid, timeout_ms, NULL, NULL);
}

int h_raw_response_cb(int fd, uint32_t msgid, int timeout_ms,
                      void (*fn)(const struct msgpack_object *result, void *ud), void *ud)
{
	anes_io io;
	anes_io_init(&io, fd, ANES_FRAME_MAX_DEFAULT);
	int64_t deadline = now_ms() + (int64_t)timeout_ms * h_slow();
	int ret;
	for (;;) {
		msgpack_zone zone;
		anes_msg m;
		int r = raw_next(&io, deadline, &zone, &m);
		if (r <= 0) {
			ret = r == 0 ? -EPIPE : r;
			break;
		}
		bool mine = m.type == ANES_MSG_RESPONSE && m.msgid == msgid;
		int code = 0;
		if (mine && m.error) {
			const char *s;
			uint32_t l;
			if (anes_msg_error(&m, &code, &s, &l) < 0)
				code = 9999;
		} else if (mine && fn && m.result) {
			fn(m.result, ud);
		}
		msgpack_zone_destroy(&zone);
		if (mine) {
			ret = code;
			break;
		}
	}
	anes_io_cleanup(&io);
	return ret;
}

int h_raw_wait_closed(int fd, int timeout_ms, unsigned *ret_errors)
{
	anes_io io;
	anes_io_init(&io, fd, ANES_FRAME_MAX_DEFAULT);
	int64_t deadline = now_ms() + (int64_t)timeout_ms * h_slow();
	unsigned errors = 0;
	int ret;
	for (;;) {
		msgpack_zone zone;
		anes_msg m;
		int r = raw_next(&io, deadline, &zone, &m);
		if (r <= 0) {
			ret = r;
			break;
		}
		if (m.type == ANES_MSG_NOTIFY && anes_msg_method_is(&m, "error"))
			errors++;
		msgpack_zone_destroy(&zone);
	}
	anes_io_cleanup(&io);
	if (ret_errors)
		*ret_errors = errors;
	return ret;
}

void h_raw_hello(int fd)
{
	msgpack_sbuffer s;
	msgpack_packer pk;
	msgpack_sbuffer_init(&s);
	msgpack_packer_init(&pk, &s, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	msgpack_pack_str(&pk, 8);
	msgpack_pack_str_body(&pk, "protocol", 8);
	msgpack_pack_uint32(&pk, 1);
	cr_assert_eq(h_raw_request(fd, 1, "hello", s.data, s.size, NULL, 0), 0);
	msgpack_sbuffer_destroy(&s);
	cr_assert_eq(h_raw_response(fd, 1, 5000), 0, "raw hello failed");
}

int h_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;   /* the directory's own fd */
}

int h_daemon_fds(const h_daemon *d)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%ld/fd", (long)d->pid);
	DIR *dir = opendir(path);
	if (!dir)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(dir)))
		if (e->d_name[0] != '.')
			n++;
	closedir(dir);
	return n;
}

long h_daemon_rss_kb(const h_daemon *d)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%ld/status", (long)d->pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	long kb = -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

void h_wait_daemon_fds(const h_daemon *d, int n)
{
	int64_t deadline = now_ms() + 10000 * h_slow();
	for (;;) {
		int got = h_daemon_fds(d);
		if (got == n)
			return;
		cr_assert(now_ms() < deadline, "the daemon has %d fds open (want %d)", got, n);
		poll_pause();
	}
}
