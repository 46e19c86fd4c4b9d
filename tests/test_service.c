/* SPDX-License-Identifier: MIT */
/*
 * Running as a service:
 *  - socket activation the way systemd does it (a listening socket as fd 3,
 *    LISTEN_FDS=1, LISTEN_PID=the daemon's pid): the daemon serves on it,
 *    exits 0 on SIGTERM, and leaves the socket file (the manager's) alone;
 *    a LISTEN_PID for another process is ignored; an unusable fd 3 is refused;
 *    the units `aneshare service install` writes are run as systemd would;
 *  - the launchd plist: well-formed XML (a strict checker below, plus xmllint
 *    and plutil -lint where installed) with the expected keys;
 *  - `aneshare service install|uninstall|status` against temporary homes, with
 *    a stand-in systemctl to check the commands it runs.
 * Needs $ANESHARED and $ANESHARE_CLI (tests/meson.build).
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "anes_config.h"
#include "anes_proto.h"
#include "anes_sockpath.h"
#include "aneshare.h"
#include "daemon_harness.h"

TestSuite(sockpath, .timeout = 60);
TestSuite(activation, .timeout = 90);
TestSuite(plist);
TestSuite(cli, .timeout = 90);

/* ---- small helpers ---------------------------------------------------------- */

/* Tests that replace systemctl or launchctl need the test hooks: without
 * them the CLI would run the real ones, for the real user. */
static void needs_test_hooks(void)
{
#if !ANES_TEST_HOOKS
	cr_skip_test("built without -Dtest_hooks=true: $ANESHARE_SYSTEMCTL/$ANESHARE_LAUNCHCTL are "
	             "compiled out, and the real service manager must not be run from a test");
#endif
}

static const char *exe_env(const char *name)
{
	const char *v = getenv(name);
	cr_assert(v && *v, "%s is not set (tests/meson.build sets it)", name);
	return v;
}

static void make_tmpdir(char *buf, size_t len)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(buf, len, "%s/anes-svc-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	cr_assert(mkdtemp(buf), "mkdtemp: %s", strerror(errno));
}

static void rm_rf(const char *dir)
{
	if (!dir || !dir[0] || strncmp(dir, "/", 1) != 0 || !strstr(dir, "anes-svc-"))
		return;
	pid_t pid = fork();
	if (pid == 0) {
		execlp("rm", "rm", "-rf", "--", dir, (char *)NULL);
		_exit(127);
	}
	if (pid > 0)
		waitpid(pid, NULL, 0);
}

static char *path_join(const char *a, const char *b)
{
	char *p;
	cr_assert(asprintf(&p, "%s/%s", a, b) >= 0);
	return p;
}

static bool file_exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

static void write_text(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
	size_t len = strlen(text);
	cr_assert_eq(write(fd, text, len), (ssize_t)len);
	cr_assert_eq(fchmod(fd, mode), 0);
	close(fd);
}

static bool in_path(const char *prog)
{
	const char *path = getenv("PATH");
	if (!path)
		return false;
	char *copy = strdup(path), *save = NULL;
	bool found = false;
	for (char *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
		char buf[4096];
		snprintf(buf, sizeof buf, "%s/%s", d, prog);
		found = access(buf, X_OK) == 0;
	}
	free(copy);
	return found;
}

/* Run argv; its stdout and stderr into *out.  env: "NAME=VALUE" to set,
 * "NAME" to unset (NULL-terminated, may be NULL).  Returns the exit status. */
static int run_cmd(char **out, const char *const *env, const char *const *argv)
{
	int p[2];
	cr_assert_eq(anes_pipe_cloexec(p), 0);
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		tu_die_with_parent();
		dup2(p[1], 1);
		dup2(p[1], 2);
		int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (null >= 0)
			dup2(null, 0);
		for (size_t i = 0; env && env[i]; i++) {
			const char *eq = strchr(env[i], '=');
			if (eq) {
				char *name = strndup(env[i], (size_t)(eq - env[i]));
				setenv(name, eq + 1, 1);
			} else {
				unsetenv(env[i]);
			}
		}
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(p[1]);
	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);
	char chunk[4096];
	ssize_t n;
	while ((n = read(p[0], chunk, sizeof chunk)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		fwrite(chunk, 1, (size_t)n, m);
	}
	fclose(m);
	close(p[0]);
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	*out = buf;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* aneshare ARGS... (NULL-terminated) with env changes. */
static int cli(char **out, const char *const *env, ...)
{
	const char *argv[32];
	size_t n = 0;
	argv[n++] = exe_env("ANESHARE_CLI");
	va_list ap;
	va_start(ap, env);
	const char *a;
	while ((a = va_arg(ap, const char *)) && n < 31)
		argv[n++] = a;
	va_end(ap);
	argv[n] = NULL;
	return run_cmd(out, env, argv);
}

/* ---- the default socket path ---------------------------------------------------- */

static char *sockpath(anes_sockpath_env env)
{
	char *p = NULL;
	int r = anes_socket_path_for(&env, &p);
	cr_assert_eq(r, 0, "anes_socket_path_for: %s", strerror(-r));
	return p;
}

#define EXPECT_PATH(env, want)                                             \
	do {                                                               \
		char *got_ = sockpath(env);                                \
		cr_expect_str_eq(got_, want);                              \
		free(got_);                                                \
	} while (0)

/* The rule of docs/protocol.md "Transport", both platforms' branches. */
Test(sockpath, rule)
{
	/* macOS: under the home, never $TMPDIR (cleaned after 3 days unaccessed)
	 * nor $XDG_RUNTIME_DIR. */
	EXPECT_PATH(((anes_sockpath_env){ .macos = true, .home = "/Users/ann", .uid = 501,
	                                  .tmpdir = "/var/folders/xy/T/", .xdg_runtime = "/run/user/501" }),
	            "/Users/ann/Library/Application Support/aneshare/aneshare.sock");
	EXPECT_PATH(((anes_sockpath_env){ .macos = true, .home = "/Users/ann//" }),
	            "/Users/ann/Library/Application Support/aneshare/aneshare.sock");
	EXPECT_PATH(((anes_sockpath_env){ .macos = true, .home = "/Users/ann", .socket = "/tmp/x.sock" }),
	            "/tmp/x.sock");
	char *p = NULL;
	anes_sockpath_env nohome = { .macos = true, .home = "" };
	cr_expect_eq(anes_socket_path_for(&nohome, &p), -ENOENT);
	cr_expect_null(p);
	/* Elsewhere: $XDG_RUNTIME_DIR, else $TMPDIR or /tmp with the uid. */
	EXPECT_PATH(((anes_sockpath_env){ .xdg_runtime = "/run/user/1000", .home = "/home/b", .uid = 1000 }),
	            "/run/user/1000/aneshare/aneshare.sock");
	EXPECT_PATH(((anes_sockpath_env){ .tmpdir = "/var/tmp/", .home = "/home/b", .uid = 1000 }),
	            "/var/tmp/aneshare-1000/aneshare.sock");
	EXPECT_PATH(((anes_sockpath_env){ .xdg_runtime = "", .uid = 7 }), "/tmp/aneshare-7/aneshare.sock");
	EXPECT_PATH(((anes_sockpath_env){ .socket = "rel.sock", .xdg_runtime = "/run/user/7" }), "rel.sock");
}

/* This process's platform and environment. */
Test(sockpath, default_for_this_process)
{
	setenv("HOME", "/home/someone", 1);
	setenv("XDG_RUNTIME_DIR", "/run/user/4242", 1);
	unsetenv("ANESHARE_SOCKET");
	char *p = NULL;
	cr_assert_eq(anes_socket_path_default(&p), 0);
#ifdef __APPLE__
	cr_expect_str_eq(p, "/home/someone/Library/Application Support/aneshare/aneshare.sock");
#else
	cr_expect_str_eq(p, "/run/user/4242/aneshare/aneshare.sock");
#endif
	char buf[256];
	cr_expect_eq(aneshare_default_socket_path(buf, sizeof buf), (int)strlen(p));
	cr_expect_str_eq(buf, p);
	cr_expect_eq(aneshare_default_socket_path(buf, strlen(p)), -ENAMETOOLONG);
	free(p);
}

/* The longest path sun_path holds passes; one byte more is refused, by the
 * check, the library, the CLI and the daemon, each with a clear message. */
Test(sockpath, too_long_is_refused_clearly)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char fits[512], over[512];
	size_t max = ANES_SOCKET_PATH_MAX;
	cr_assert_lt(strlen(dir) + 8, max);
	snprintf(fits, sizeof fits, "%s/%0*d", dir, (int)(max - strlen(dir) - 1), 0);
	snprintf(over, sizeof over, "%s/%0*d", dir, (int)(max - strlen(dir)), 0);
	cr_assert_eq(strlen(fits), max);
	cr_expect_eq(anes_socket_path_check(fits), 0);
	cr_expect_eq(anes_socket_path_check(over), -ENAMETOOLONG);

	aneshare_conn *c = NULL;
	cr_expect_eq(aneshare_connect(over, "t", &c), -ENAMETOOLONG);
	cr_expect_null(c);
	cr_expect_eq(aneshare_connect(fits, "t", &c), -ENOENT, "a path that fits is tried");

	char *e_sock, *out = NULL, *want;
	cr_assert(asprintf(&e_sock, "ANESHARE_SOCKET=%s", over) >= 0);
	cr_assert(asprintf(&want, "the socket path %s is %zu bytes, longer than the %zu a Unix socket path "
	                          "can hold", over, strlen(over), max) >= 0);
	const char *env[] = { e_sock, NULL };
	int rc = cli(&out, env, "status", NULL);
	cr_expect_eq(rc, 1, "%s", out);
	cr_expect(strstr(out, want), "no \"%s\" in:\n%s", want, out);
	free(out);

	const char *argv[] = { exe_env("ANESHARED"), "--socket", over, NULL };
	rc = run_cmd(&out, NULL, argv);
	cr_expect_eq(rc, 78, "aneshared exited %d (not EX_CONFIG):\n%s", rc, out);
	cr_expect(strstr(out, want), "no \"%s\" in:\n%s", want, out);
	free(out);
	/* Refused before anything was made. */
	char *sdir = strndup(over, (size_t)(strrchr(over, '/') - over));
	struct dirent *e;
	DIR *d = opendir(sdir);
	cr_assert(d);
	size_t n = 0;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	cr_expect_eq(n, 0, "the daemon left %zu files in %s", n, sdir);
	free(sdir);

	rc = cli(&out, NULL, "--socket", over, "service", "install", "--launchd", "--root", dir,
	         "--daemon", exe_env("ANESHARED"), NULL);
	cr_expect_eq(rc, 1, "%s", out);
	cr_expect(strstr(out, want), "no \"%s\" in:\n%s", want, out);
	free(out);
	free(want);
	free(e_sock);
	rm_rf(dir);
}

/* ---- socket activation -------------------------------------------------------- */

static int listen_unix(const char *path)
{
	int fd = anes_socket_cloexec(AF_UNIX, SOCK_STREAM);
	cr_assert(fd >= 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	cr_assert_lt(strlen(path), sizeof sa.sun_path);
	strcpy(sa.sun_path, path);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind %s: %s", path, strerror(errno));
	cr_assert_eq(chmod(path, 0600), 0);
	cr_assert_eq(listen(fd, 16), 0);
	return fd;
}

typedef enum { PID_SELF, PID_OTHER } listen_pid;

/* Start argv (argv[0] the daemon) the way a service manager does: fd passed
 * as fd 3, LISTEN_FDS=1, LISTEN_PID = the child's pid (or another one), stderr
 * to log.  $ANESHARED_WRAPPER (valgrind) keeps the pid, so it is honoured. */
static pid_t spawn_activated(int fd, listen_pid which, const char *dir, const char *log,
                             const char *const *argv)
{
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		h_child_stdio(log);
		if (fd == 3)
			fcntl(3, F_SETFD, 0);
		else if (dup2(fd, 3) != 3)
			_exit(126);
		char buf[32];
		snprintf(buf, sizeof buf, "%ld", (long)(which == PID_SELF ? getpid() : getppid()));
		setenv("LISTEN_PID", buf, 1);
		setenv("LISTEN_FDS", "1", 1);
		unsetenv("LISTEN_FDNAMES");
		unsetenv("ANESHARE_SOCKET");
		setenv("XDG_CONFIG_HOME", dir, 1);   /* no user configuration */
		const char *args[64];
		size_t n = h_wrapper_argv(args);
		for (size_t i = 0; argv[i] && n < 63; i++)
			args[n++] = argv[i];
		args[n] = NULL;
		execvp(args[0], (char *const *)args);
		_exit(127);
	}
	return pid;
}

static void dump(const char *log)
{
	char *s = tu_read_file(log);
	fprintf(stderr, "--- %s ---\n%s\n---\n", log, s ? s : "(unreadable)");
	free(s);
}

/* Wait (bounded) until log contains want; fails if the daemon exits first. */
static void wait_log(pid_t pid, const char *log, const char *want)
{
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	for (;;) {
		char *s = tu_read_file(log);
		bool found = s && strstr(s, want);
		free(s);
		if (found)
			return;
		int status;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			dump(log);
			cr_assert_fail("aneshared exited (status 0x%x) before logging \"%s\"", status, want);
		}
		if (tu_now_ms() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			dump(log);
			cr_assert_fail("aneshared did not log \"%s\" within 10 s", want);
		}
		tu_pause_ms(10);
	}
}

/* Wait (bounded) for pid to exit; its wait status.  SIGKILLs it on timeout. */
static int wait_exit(pid_t pid)
{
	int64_t deadline = tu_now_ms() + 20000 * h_slow();
	for (;;) {
		int status;
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return status;
		cr_assert(r == 0, "waitpid: %s", strerror(errno));
		if (tu_now_ms() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			cr_assert_fail("aneshared did not exit within 20 s");
		}
		tu_pause_ms(10);
	}
}

static void stop_clean(pid_t pid, const char *log)
{
	cr_assert_eq(kill(pid, SIGTERM), 0);
	int status = wait_exit(pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		dump(log);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	          "aneshared did not exit 0 on SIGTERM (status 0x%x)", status);
}

/* hello, status, and a real run of the dynamic matmul with a checked result. */
static void use_daemon(const char *path)
{
	aneshare_conn *c = NULL;
	int r = aneshare_connect(path, "test-service", &c);
	cr_assert_eq(r, 0, "connect %s: %s", path, aneshare_strerror(r));
	aneshare_status *st = h_status(c);
	cr_assert_geq(st->clients, 1);
	aneshare_status_free(st);

	char *mil = h_read_source("examples/dynamic_matmul.mil");
	aneshare_program *p = NULL;
	r = aneshare_program_compile(c, mil, NULL, 0, &p, NULL);
	free(mil);
	cr_assert_eq(r, 0, "compile: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	h_mm mm;
	cr_assert(h_mm_from_program(p, &mm));
	aneshare_surface *in = NULL, *out = NULL;
	cr_assert_eq(aneshare_surface_create(c, mm.in_bytes, &in), 0);
	cr_assert_eq(aneshare_surface_create(c, mm.out_bytes, &out), 0);
	h_mm_fill(&mm, aneshare_surface_data(in), 7);
	memset(aneshare_surface_data(out), 0xff, mm.out_bytes);
	r = aneshare_run(p, 0, &in, 1, &out, 1);
	cr_assert_eq(r, 0, "run: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	double err = h_mm_error(&mm, aneshare_surface_data(in), aneshare_surface_data(out));
	cr_assert_leq(err, H_MM_TOL, "relative error %g", err);
	aneshare_disconnect(c);
}

static ino_t inode_of(const char *path)
{
	struct stat st;
	cr_assert_eq(lstat(path, &st), 0, "%s: %s", path, strerror(errno));
	cr_assert(S_ISSOCK(st.st_mode), "%s is not a socket", path);
	return st.st_ino;
}

Test(activation, passed_socket_served_and_left_alone)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *sock = path_join(dir, "act.sock"), *log = path_join(dir, "daemon.log");
	char *lock = path_join(dir, "act.sock.lock");
	int lfd = listen_unix(sock);
	ino_t ino = inode_of(sock);
	const char *argv[] = { exe_env("ANESHARED"), "--socket", sock, NULL };

	/* Twice: after a clean exit the manager starts the daemon again on the
	 * same socket, which must still be there and listening. */
	for (int round = 0; round < 2; round++) {
		pid_t pid = spawn_activated(lfd, PID_SELF, dir, log, argv);
		wait_log(pid, log, "listening on");
		use_daemon(sock);
		cr_assert(!file_exists(lock), "the daemon took a lock on an inherited socket");
		char *text = tu_read_file(log);
		cr_assert(text && strstr(text, sock), "the log does not name the socket:\n%s", text);
		free(text);
		stop_clean(pid, log);
		cr_assert(file_exists(sock), "the daemon removed the socket file it was given (round %d)", round);
		cr_assert_eq(inode_of(sock), ino, "the socket file was replaced");
	}
	/* The manager's socket still listens. */
	int c = h_raw_connect(sock);
	cr_assert(c >= 0, "connect after the daemon exited: %s", strerror(-c));
	close(c);
	close(lfd);
	free(sock);
	free(log);
	free(lock);
	rm_rf(dir);
}

/* A daemon started by hand on the path a service manager listens on must not
 * take the manager's socket away: no lock is held there, but the socket is
 * live, so it is refused rather than replaced as stale. */
Test(activation, manual_start_on_a_managed_socket_is_refused)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *sock = path_join(dir, "managed.sock");
	int lfd = listen_unix(sock);
	ino_t ino = inode_of(sock);

	char *out = NULL;
	const char *argv[] = { exe_env("ANESHARED"), "--socket", sock, NULL };
	int rc = run_cmd(&out, NULL, argv);
	cr_assert_eq(rc, 1, "aneshared exited %d:\n%s", rc, out);
	cr_assert(out && strstr(out, "served by another daemon"), "unclear message:\n%s", out);
	cr_assert_eq(inode_of(sock), ino, "the managed socket was replaced");
	int c = h_raw_connect(sock);
	cr_assert(c >= 0, "the managed socket no longer accepts: %s", strerror(-c));
	close(c);

	free(out);
	close(lfd);
	free(sock);
	rm_rf(dir);
}

Test(activation, listen_pid_of_another_process_is_ignored)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *passed = path_join(dir, "passed.sock"), *own = path_join(dir, "own.sock");
	char *own_lock = path_join(dir, "own.sock.lock"), *log = path_join(dir, "daemon.log");
	int lfd = listen_unix(passed);
	const char *argv[] = { exe_env("ANESHARED"), "--socket", own, NULL };
	pid_t pid = spawn_activated(lfd, PID_OTHER, dir, log, argv);
	wait_log(pid, log, "listening on");

	/* It made and serves its own socket, under its lock... */
	inode_of(own);
	cr_assert(file_exists(own_lock), "no lock file: the daemon did not create its own socket");
	use_daemon(own);
	/* ...and never accepts on fd 3: a connection there stays queued for us. */
	int c = h_raw_connect(passed);
	cr_assert(c >= 0);
	tu_pause_ms(300 * h_slow());
	struct pollfd pending = { .fd = lfd, .events = POLLIN };
	cr_assert_eq(poll(&pending, 1, 0), 1, "the connection on the passed socket was taken");
	int got = anes_accept_cloexec(lfd);
	cr_assert(got >= 0, "accept: %s", strerror(-got));
	close(got);
	close(c);

	stop_clean(pid, log);
	cr_assert(!file_exists(own), "the daemon left its own socket file behind");
	cr_assert(file_exists(passed), "the passed socket file was removed");
	close(lfd);
	free(passed);
	free(own);
	free(own_lock);
	free(log);
	rm_rf(dir);
}

static void refuses_fd(int fd, const char *what)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *sock = path_join(dir, "x.sock"), *log = path_join(dir, "daemon.log");
	const char *argv[] = { exe_env("ANESHARED"), "--socket", sock, NULL };
	pid_t pid = spawn_activated(fd, PID_SELF, dir, log, argv);
	int status = wait_exit(pid);
	char *text = tu_read_file(log);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1,
	          "%s as fd 3: status 0x%x, log:\n%s", what, status, text);
	cr_assert(text && strstr(text, "the socket passed by the service manager is unusable"),
	          "%s as fd 3: unexpected message:\n%s", what, text);
	cr_assert(!file_exists(sock), "the daemon made a socket of its own after refusing fd 3");
	free(text);
	free(sock);
	free(log);
	rm_rf(dir);
}

Test(activation, unusable_fd_is_refused)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	cr_assert(null >= 0);
	refuses_fd(null, "/dev/null");
	close(null);
	int sp[2];
	cr_assert_eq(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sp), 0);
	refuses_fd(sp[0], "a connected (not listening) socket");
	close(sp[0]);
	close(sp[1]);
}

/* A configuration error exits 78 (EX_CONFIG), which the service definitions
 * do not restart after, and closes the connections waiting on the passed
 * socket: their clients are not left hanging, and nothing waits there that
 * would make launchd or systemd start the daemon again at once. */
Test(activation, config_error_exits_78_and_closes_waiting_connections)
{
	const char *bad[][4] = {
		{ "--max-inflight", "0", NULL },      /* a bad option */
		{ "--backend", "gpu", NULL },         /* an unknown backend */
		{ "--drop-unsent-hard-bytes", "1M", "--max-frame", "2M" },   /* limits that do not fit */
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char dir[256];
		make_tmpdir(dir, sizeof dir);
		char *sock = path_join(dir, "cfg.sock"), *log = path_join(dir, "daemon.log");
		int lfd = listen_unix(sock);
		int c1 = h_raw_connect(sock), c2 = h_raw_connect(sock);
		cr_assert(c1 >= 0 && c2 >= 0);
		const char *argv[8] = { exe_env("ANESHARED"), "--socket", sock };
		size_t n = 3;
		for (size_t k = 0; k < 4 && bad[i][k]; k++)
			argv[n++] = bad[i][k];
		argv[n] = NULL;
		pid_t pid = spawn_activated(lfd, PID_SELF, dir, log, argv);
		int status = wait_exit(pid);
		char *text = tu_read_file(log);
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 78,
		          "case %zu: status 0x%x, log:\n%s", i, status, text);
		free(text);
		/* Both clients see the hang-up (EOF), and nothing waits any more. */
		for (int k = 0; k < 2; k++) {
			int fd = k ? c2 : c1;
			struct pollfd p = { fd, POLLIN, 0 };
			cr_assert_eq(poll(&p, 1, 5000), 1, "case %zu: client %d not closed", i, k);
			char b;
			cr_assert_eq(read(fd, &b, 1), 0, "case %zu: client %d", i, k);
			close(fd);
		}
		cr_assert_eq(fcntl(lfd, F_SETFL, O_NONBLOCK), 0);
		int got = accept(lfd, NULL, NULL);
		cr_assert(got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK),
		          "case %zu: a connection still waits on the socket", i);
		cr_assert(file_exists(sock), "case %zu: the manager's socket file was removed", i);
		close(lfd);
		free(sock);
		free(log);
		rm_rf(dir);
	}
}

/* The line "KEY=..." of a unit file (without the key), or NULL. */
static char *unit_value(const char *text, const char *key)
{
	size_t klen = strlen(key);
	for (const char *p = text; p && *p;) {
		const char *eol = strchr(p, '\n');
		size_t len = eol ? (size_t)(eol - p) : strlen(p);
		if (len > klen && !strncmp(p, key, klen) && p[klen] == '=')
			return strndup(p + klen + 1, len - klen - 1);
		p = eol ? eol + 1 : NULL;
	}
	return NULL;
}

/* Replace every "%t" with rt (the only specifier the units use). */
static char *expand_t(const char *s, const char *rt)
{
	char *out = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&out, &len);
	for (; *s; s++) {
		if (s[0] == '%' && s[1] == 't') {
			fputs(rt, m);
			s++;
		} else {
			cr_assert(s[0] != '%', "unexpected specifier in %s", s);
			fputc(*s, m);
		}
	}
	fclose(m);
	return out;
}

/* The units `aneshare service install` writes, run as systemd would: the
 * socket from ListenStream (with DirectoryMode/SocketMode), the daemon from
 * ExecStart with that socket passed. */
Test(activation, installed_units_run_socket_activated)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *out = NULL;
	int rc = cli(&out, NULL, "service", "install", "--root", dir, "--daemon", exe_env("ANESHARED"),
	             NULL);
	cr_assert_eq(rc, 0, "install: %s", out);
	free(out);
	char *units = path_join(dir, ".config/systemd/user");
	char *sock_unit = path_join(units, "aneshare.socket"), *svc_unit = path_join(units, "aneshare.service");
	char *sock_text = tu_read_file(sock_unit), *svc_text = tu_read_file(svc_unit);
	cr_assert(sock_text && svc_text);

	char *rt = path_join(dir, "run");
	cr_assert_eq(mkdir(rt, 0700), 0);
	char *listen = unit_value(sock_text, "ListenStream"), *exec = unit_value(svc_text, "ExecStart");
	cr_assert(listen && exec, "ListenStream/ExecStart missing");
	const char *want[][3] = {
		{ "socket", "SocketMode", "0600" },
		{ "socket", "DirectoryMode", "0700" },
		{ "service", "Restart", "on-failure" },
		{ "service", "RestartPreventExitStatus", "78" },   /* EX_CONFIG */
		{ "service", "LimitNOFILE", "65536" },
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		char *v = unit_value(want[i][0][1] == 'o' ? sock_text : svc_text, want[i][1]);
		cr_assert(v && !strcmp(v, want[i][2]), "%s=%s in the %s unit, not %s", want[i][1], v,
		          want[i][0], want[i][2]);
		free(v);
	}
	char *sock = expand_t(listen, rt), *cmd = expand_t(exec, rt);
	char *sdir = strndup(sock, (size_t)(strrchr(sock, '/') - sock));
	cr_assert_eq(mkdir(sdir, 0700), 0);
	int lfd = listen_unix(sock);

	/* ExecStart: plain words here (the daemon path has no spaces). */
	const char *argv[16];
	size_t n = 0;
	for (char *save = NULL, *t = strtok_r(cmd, " ", &save); t && n < 15; t = strtok_r(NULL, " ", &save))
		argv[n++] = t;
	argv[n] = NULL;
	cr_assert_str_eq(argv[0], exe_env("ANESHARED"));

	char *log = path_join(dir, "daemon.log");
	pid_t pid = spawn_activated(lfd, PID_SELF, dir, log, argv);
	wait_log(pid, log, "listening on");
	use_daemon(sock);
	stop_clean(pid, log);
	cr_assert(file_exists(sock), "the daemon removed systemd's socket file");
	char *lock;
	cr_assert(asprintf(&lock, "%s.lock", sock) >= 0);
	cr_assert(!file_exists(lock));
	close(lfd);
	free(lock);
	free(log);
	free(sdir);
	free(sock);
	free(cmd);
	free(listen);
	free(exec);
	free(rt);
	free(sock_text);
	free(svc_text);
	free(sock_unit);
	free(svc_unit);
	free(units);
	rm_rf(dir);
}

/* ---- a strict checker for XML property lists ------------------------------------
 *
 * The subset launchd plists use: an XML declaration, an optional DOCTYPE,
 * comments, and <plist version="1.0"> holding one value (dict, array, string,
 * integer, real, true, false).  Anything else, unbalanced tags, stray text,
 * a bare '&' or '<', a dict key without a value or a duplicate key: an error. */

typedef enum { PV_DICT, PV_ARRAY, PV_STRING, PV_INT, PV_REAL, PV_BOOL } pv_type;

typedef struct pv {
	pv_type t;
	char *s;              /* string */
	long long i;          /* integer; bool */
	size_t n;             /* dict/array items */
	char **keys;          /* dict */
	struct pv **items;
} pv;

typedef struct px {
	const char *p;
	char err[160];
} px;

static void pv_free(pv *v)
{
	if (!v)
		return;
	for (size_t k = 0; k < v->n; k++) {
		if (v->keys)
			free(v->keys[k]);
		pv_free(v->items[k]);
	}
	free(v->keys);
	free(v->items);
	free(v->s);
	free(v);
}

__attribute__((format(printf, 2, 3)))
static bool px_fail(px *x, const char *fmt, ...)
{
	if (x->err[0])
		return false;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(x->err, sizeof x->err, fmt, ap);
	va_end(ap);
	return false;
}

/* Skip whitespace and comments. */
static bool px_skip(px *x)
{
	for (;;) {
		while (*x->p == ' ' || *x->p == '\t' || *x->p == '\n' || *x->p == '\r')
			x->p++;
		if (strncmp(x->p, "<!--", 4) != 0)
			return true;
		const char *end = strstr(x->p + 4, "--");
		if (!end || end[2] != '>')
			return px_fail(x, "a comment with '--' inside or not closed");
		x->p = end + 3;
	}
}

/* Character data up to '<', entities decoded. */
static bool px_text(px *x, char **ret)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);
	bool ok = true;
	while (ok && *x->p && *x->p != '<') {
		if (*x->p != '&') {
			fputc(*x->p++, m);
			continue;
		}
		static const struct { const char *ent; char c; } ents[] = {
			{ "&amp;", '&' }, { "&lt;", '<' }, { "&gt;", '>' }, { "&quot;", '"' }, { "&apos;", '\'' },
		};
		size_t k;
		for (k = 0; k < 5; k++)
			if (!strncmp(x->p, ents[k].ent, strlen(ents[k].ent)))
				break;
		if (k < 5) {
			fputc(ents[k].c, m);
			x->p += strlen(ents[k].ent);
		} else if (x->p[1] == '#') {
			char *end;
			bool hex = x->p[2] == 'x';
			long cp = strtol(x->p + (hex ? 3 : 2), &end, hex ? 16 : 10);
			if (*end != ';' || cp <= 0 || cp > 0x7f)   /* ASCII is all we need */
				ok = px_fail(x, "a bad character reference");
			else {
				fputc((int)cp, m);
				x->p = end + 1;
			}
		} else {
			ok = px_fail(x, "a bare '&' in text");
		}
	}
	fclose(m);
	if (!*x->p && ok)
		ok = px_fail(x, "text runs to the end of the document");
	if (!ok) {
		free(buf);
		return false;
	}
	*ret = buf;
	return true;
}

/* A tag at x->p: <name>, </name> or <name/>.  Attributes only where allowed. */
typedef struct tag {
	char name[32];
	bool close, empty;
	char attrs[128];
} tag;

static bool px_tag(px *x, tag *t)
{
	memset(t, 0, sizeof *t);
	if (*x->p != '<')
		return px_fail(x, "expected a tag, found '%.10s'", x->p);
	x->p++;
	if (*x->p == '/') {
		t->close = true;
		x->p++;
	}
	size_t n = 0;
	while (isalnum((unsigned char)*x->p) && n < sizeof t->name - 1)
		t->name[n++] = *x->p++;
	if (n == 0)
		return px_fail(x, "a tag without a name");
	const char *gt = strchr(x->p, '>');
	if (!gt)
		return px_fail(x, "an unclosed tag <%s", t->name);
	size_t alen = (size_t)(gt - x->p);
	if (alen && gt[-1] == '/') {
		t->empty = true;
		alen--;
	}
	if (alen && !isspace((unsigned char)x->p[0]))
		return px_fail(x, "a bad tag <%s%.10s", t->name, x->p);
	if (alen >= sizeof t->attrs || memchr(x->p, '<', alen))
		return px_fail(x, "a bad tag <%s", t->name);
	memcpy(t->attrs, x->p, alen);
	if (t->close && (t->empty || alen))
		return px_fail(x, "a bad closing tag </%s", t->name);
	x->p = gt + 1;
	return true;
}

static bool px_close(px *x, const char *name)
{
	tag t;
	if (!px_skip(x) || !px_tag(x, &t))
		return false;
	if (!t.close || strcmp(t.name, name))
		return px_fail(x, "expected </%s>, found <%s%s>", name, t.close ? "/" : "", t.name);
	return true;
}

static pv *px_value(px *x, int depth);

static pv *px_value_from(px *x, const tag *t, int depth)
{
	if (t->close)
		return px_fail(x, "unexpected </%s>", t->name), NULL;
	if (t->attrs[0])
		return px_fail(x, "attributes on <%s>", t->name), NULL;
	pv *v = calloc(1, sizeof *v);
	cr_assert(v);
	if (!strcmp(t->name, "true") || !strcmp(t->name, "false")) {
		if (!t->empty)
			return px_fail(x, "<%s> must be empty", t->name), pv_free(v), NULL;
		v->t = PV_BOOL;
		v->i = t->name[0] == 't';
		return v;
	}
	if (!strcmp(t->name, "string") || !strcmp(t->name, "integer") || !strcmp(t->name, "real") ||
	    !strcmp(t->name, "key")) {
		v->t = t->name[0] == 's' || t->name[0] == 'k' ? PV_STRING : t->name[0] == 'i' ? PV_INT : PV_REAL;
		if (t->empty) {
			v->s = strdup("");
		} else if (!px_text(x, &v->s) || !px_close(x, t->name)) {
			pv_free(v);
			return NULL;
		}
		if (v->t != PV_STRING) {
			char *end;
			errno = 0;
			if (v->t == PV_INT)
				v->i = strtoll(v->s, &end, 10);
			else
				(void)strtod(v->s, &end);
			if (!v->s[0] || *end || errno)
				return px_fail(x, "<%s>%s</%s> is not a number", t->name, v->s, t->name),
				       pv_free(v), NULL;
		}
		return v;
	}
	bool dict = !strcmp(t->name, "dict");
	if (!dict && strcmp(t->name, "array"))
		return px_fail(x, "<%s> is not a plist element", t->name), pv_free(v), NULL;
	v->t = dict ? PV_DICT : PV_ARRAY;
	if (t->empty)
		return v;
	if (depth > 32)
		return px_fail(x, "nested too deeply"), pv_free(v), NULL;
	for (;;) {
		if (!px_skip(x)) {
			pv_free(v);
			return NULL;
		}
		if (!strncmp(x->p, "</", 2)) {
			if (!px_close(x, t->name)) {
				pv_free(v);
				return NULL;
			}
			return v;
		}
		char *key = NULL;
		if (dict) {
			tag kt;
			if (!px_tag(x, &kt) || kt.close || kt.empty || strcmp(kt.name, "key") || kt.attrs[0] ||
			    !px_text(x, &key) || !px_close(x, "key")) {
				free(key);
				px_fail(x, "a dict entry that does not start with <key>");
				pv_free(v);
				return NULL;
			}
			for (size_t k = 0; k < v->n; k++)
				if (!strcmp(v->keys[k], key)) {
					px_fail(x, "duplicate key %s", key);
					free(key);
					pv_free(v);
					return NULL;
				}
		}
		pv *item = px_value(x, depth + 1);
		if (!item) {
			px_fail(x, dict ? "key %s has no value" : "a bad array item", key);
			free(key);
			pv_free(v);
			return NULL;
		}
		v->items = realloc(v->items, (v->n + 1) * sizeof *v->items);
		cr_assert(v->items);
		if (dict) {
			v->keys = realloc(v->keys, (v->n + 1) * sizeof *v->keys);
			cr_assert(v->keys);
			v->keys[v->n] = key;
		}
		v->items[v->n++] = item;
	}
}

static pv *px_value(px *x, int depth)
{
	tag t;
	if (!px_skip(x) || !px_tag(x, &t))
		return NULL;
	if (!strcmp(t.name, "key"))
		return px_fail(x, "<key> outside a dict"), NULL;
	return px_value_from(x, &t, depth);
}

/* The plist's root value, or NULL with the reason in err. */
static pv *plist_parse(const char *text, char *err, size_t errlen)
{
	px x = { .p = text };
	pv *root = NULL;
	const char *decl = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";
	if (strncmp(x.p, decl, strlen(decl)) != 0) {
		px_fail(&x, "no XML declaration with version 1.0 and UTF-8 at the start");
		goto out;
	}
	x.p += strlen(decl);
	if (!px_skip(&x))
		goto out;
	if (!strncmp(x.p, "<!DOCTYPE plist ", 16)) {
		const char *gt = strchr(x.p, '>');
		if (!gt || memchr(x.p, '[', (size_t)(gt - x.p))) {
			px_fail(&x, "a bad DOCTYPE");
			goto out;
		}
		x.p = gt + 1;
	}
	tag t;
	if (!px_skip(&x) || !px_tag(&x, &t))
		goto out;
	if (t.close || t.empty || strcmp(t.name, "plist") || strcmp(t.attrs, " version=\"1.0\"")) {
		px_fail(&x, "the root element is not <plist version=\"1.0\">");
		goto out;
	}
	root = px_value(&x, 0);
	if (!root)
		goto out;
	if (!px_close(&x, "plist") || !px_skip(&x)) {
		pv_free(root);
		root = NULL;
		goto out;
	}
	if (*x.p) {
		px_fail(&x, "content after </plist>: '%.10s'", x.p);
		pv_free(root);
		root = NULL;
	}
out:
	if (!root)
		snprintf(err, errlen, "%s (at offset %td)", x.err[0] ? x.err : "invalid", x.p - text);
	return root;
}

static pv *pv_get(const pv *dict, const char *key)
{
	cr_assert(dict && dict->t == PV_DICT, "looking up %s in a non-dict", key);
	for (size_t k = 0; k < dict->n; k++)
		if (!strcmp(dict->keys[k], key))
			return dict->items[k];
	return NULL;
}

static const char *pv_str(const pv *dict, const char *key)
{
	pv *v = pv_get(dict, key);
	cr_assert(v, "no key %s", key);
	cr_assert_eq(v->t, PV_STRING, "%s is not a string", key);
	return v->s;
}

static pv *parse_or_fail(const char *text, const char *what)
{
	char err[256];
	cr_assert(text, "%s: no text", what);
	pv *root = plist_parse(text, err, sizeof err);
	cr_assert(root, "%s is not a valid plist: %s", what, err);
	cr_assert_eq(root->t, PV_DICT, "%s: the root is not a dict", what);
	return root;
}

/* The keys launchd needs, with the values install was given. */
static void check_agent(const pv *root, const char *daemon, const char *sock, const char *logdir)
{
	cr_assert_str_eq(pv_str(root, "Label"), "com.aneshare.aneshared");
	pv *args = pv_get(root, "ProgramArguments");
	cr_assert(args && args->t == PV_ARRAY && args->n == 3, "ProgramArguments: 3 strings expected");
	for (size_t i = 0; i < 3; i++)
		cr_assert_eq(args->items[i]->t, PV_STRING);
	cr_assert_str_eq(args->items[0]->s, daemon);
	cr_assert_str_eq(args->items[1]->s, "--socket");
	cr_assert_str_eq(args->items[2]->s, sock);

	pv *sockets = pv_get(root, "Sockets");
	cr_assert(sockets && sockets->t == PV_DICT, "no Sockets dict");
	pv *listeners = pv_get(sockets, "Listeners");
	cr_assert(listeners && listeners->t == PV_DICT, "no Sockets/Listeners dict");
	cr_assert_str_eq(pv_str(listeners, "SockPathName"), sock);
	pv *mode = pv_get(listeners, "SockPathMode");
	cr_assert(mode && mode->t == PV_INT && mode->i == 0600, "SockPathMode is not 384 (0600)");

	/* Restarted after a crash only: launchd ORs the KeepAlive conditions, so
	 * SuccessfulExit = false would restart an exit 78 (EX_CONFIG) too. */
	pv *keep = pv_get(root, "KeepAlive");
	cr_assert(keep && keep->t == PV_DICT && keep->n == 1, "KeepAlive: a dict with Crashed only");
	pv *crashed = pv_get(keep, "Crashed");
	cr_assert(crashed && crashed->t == PV_BOOL && crashed->i == 1, "KeepAlive: Crashed = true");
	pv *throttle = pv_get(root, "ThrottleInterval");
	cr_assert(throttle && throttle->t == PV_INT && throttle->i >= 1, "no ThrottleInterval");
	cr_assert_str_eq(pv_str(root, "ProcessType"), "Standard");
	pv *soft = pv_get(root, "SoftResourceLimits");
	cr_assert(soft && soft->t == PV_DICT, "no SoftResourceLimits");
	pv *nofile = pv_get(soft, "NumberOfFiles");
	cr_assert(nofile && nofile->t == PV_INT && nofile->i == 10240, "NumberOfFiles: OPEN_MAX (10240)");
	char *want;
	cr_assert(asprintf(&want, "%s/aneshared.log", logdir) >= 0);
	cr_assert_str_eq(pv_str(root, "StandardErrorPath"), want);
	free(want);
	cr_assert(asprintf(&want, "%s/aneshared.out.log", logdir) >= 0);
	cr_assert_str_eq(pv_str(root, "StandardOutPath"), want);
	free(want);
}

static void external_lint(const char *file)
{
	char *out = NULL;
	if (in_path("xmllint")) {
		const char *argv[] = { "xmllint", "--noout", file, NULL };
		int rc = run_cmd(&out, NULL, argv);
		cr_assert_eq(rc, 0, "xmllint %s: %s", file, out);
		free(out);
	}
	if (in_path("plutil")) {   /* macOS */
		const char *argv[] = { "plutil", "-lint", file, NULL };
		int rc = run_cmd(&out, NULL, argv);
		cr_assert_eq(rc, 0, "plutil -lint %s: %s", file, out);
		free(out);
	}
}

Test(plist, checker_rejects_malformed)
{
	const char *head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">";
	const char *bad[] = {
		"<dict><key>a</key><string>x</string>",                  /* unclosed dict */
		"<dict><key>a</key><string>x</dict></plist>",            /* mismatched */
		"<dict><key>a</key><string>a & b</string></dict></plist>",
		"<dict><key>a</key></dict></plist>",                     /* key without value */
		"<dict><string>x</string></dict></plist>",               /* value without key */
		"<dict><key>a</key><true/><key>a</key><true/></dict></plist>",
		"<dict><key>a</key><integer>12x</integer></dict></plist>",
		"<dict><key>a</key><strin>x</strin></dict></plist>",
		"<dict/></plist><dict/>",                                /* two roots */
		"<dict><key>a</key><string>x</string></dict>stray</plist>",
		"<dict><!-- a -- b --></dict></plist>",
		"<dict><key>a</key><string>a<b</string></dict></plist>",
		"<dict><key>a</key><true>x</true></dict></plist>",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char *doc, err[256];
		cr_assert(asprintf(&doc, "%s%s\n", head, bad[i]) >= 0);
		pv *v = plist_parse(doc, err, sizeof err);
		cr_expect_null(v, "accepted: %s", bad[i]);
		pv_free(v);
		free(doc);
	}
	char *doc, err[256];
	cr_assert(asprintf(&doc, "%s<!-- c --><dict><key>a&amp;b</key><array><string>&lt;x&gt;</string>"
	                         "<integer>-3</integer><false/></array></dict></plist>\n", head) >= 0);
	pv *v = plist_parse(doc, err, sizeof err);
	cr_assert(v, "rejected a valid plist: %s", err);
	pv *a = pv_get(v, "a&b");
	cr_assert(a && a->t == PV_ARRAY && a->n == 3);
	cr_assert_str_eq(a->items[0]->s, "<x>");
	cr_assert_eq(a->items[1]->i, -3);
	pv_free(v);
	free(doc);
	/* No declaration, or no <plist>. */
	cr_assert_null(plist_parse("<plist version=\"1.0\"><dict/></plist>", err, sizeof err));
	cr_assert_null(plist_parse("<?xml version=\"1.0\" encoding=\"UTF-8\"?><dict/>", err, sizeof err));
}

Test(plist, template_is_valid)
{
	char *text = h_read_source("launchd/com.aneshare.aneshared.plist.in");
	pv *root = parse_or_fail(text, "launchd/com.aneshare.aneshared.plist.in");
	cr_assert_str_eq(pv_str(root, "Label"), "com.aneshare.aneshared");
	pv *l = pv_get(pv_get(root, "Sockets"), "Listeners");
	cr_assert(l && pv_get(l, "SockPathName") && pv_get(l, "SockPathMode"));
	cr_assert_eq(pv_get(l, "SockPathMode")->i, 384);
	pv_free(root);
	free(text);
	char *file = path_join(ANES_SOURCE_DIR, "launchd/com.aneshare.aneshared.plist.in");
	external_lint(file);
	free(file);
}

Test(plist, install_writes_a_valid_agent)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *sock = path_join(dir, "run/aneshare/aneshare.sock");
	const char *daemon = exe_env("ANESHARED");
	char *out = NULL;
	int rc = cli(&out, NULL, "--socket", sock, "service", "install", "--launchd", "--root", dir,
	             "--daemon", daemon, NULL);
	cr_assert_eq(rc, 0, "install --launchd: %s", out);
	cr_assert(strstr(out, "not starting anything"), "%s", out);
	free(out);

	char *file = path_join(dir, "Library/LaunchAgents/com.aneshare.aneshared.plist");
	char *logdir = path_join(dir, "Library/Logs/aneshare");
	char *text = tu_read_file(file);
	pv *root = parse_or_fail(text, file);
	check_agent(root, daemon, sock, logdir);
	pv_free(root);
	external_lint(file);

	struct stat st;
	cr_assert_eq(stat(file, &st), 0);
	cr_assert_eq(st.st_mode & 07777, 0644, "plist mode %o", st.st_mode & 07777);
	cr_assert_eq(stat(logdir, &st), 0, "the log directory was not made");
	cr_assert(S_ISDIR(st.st_mode));
	/* launchd binds the socket at load: its directory exists, private. */
	char *sdir = path_join(dir, "run/aneshare");
	cr_assert_eq(stat(sdir, &st), 0, "the socket directory was not made");
	cr_assert_eq(st.st_mode & 0777, 0700);
	cr_assert(!file_exists(sock), "install must not create the socket itself");

	/* status sees it; uninstall removes the plist, keeps the logs. */
	rc = cli(&out, NULL, "--socket", sock, "service", "status", "--launchd", "--root", dir, NULL);
	cr_assert_eq(rc, 1, "status without a daemon: %s", out);
	cr_assert(strstr(out, "com.aneshare.aneshared.plist") && strstr(out, " installed"), "%s", out);
	cr_assert(strstr(out, "does not answer"), "%s", out);
	free(out);
	rc = cli(&out, NULL, "--socket", sock, "service", "uninstall", "--launchd", "--root", dir, NULL);
	cr_assert_eq(rc, 0, "uninstall: %s", out);
	free(out);
	cr_assert(!file_exists(file));
	cr_assert(file_exists(logdir));

	free(sdir);
	free(text);
	free(file);
	free(logdir);
	free(sock);
	rm_rf(dir);
}

/* Without --socket the agent listens on the macOS default under the home,
 * not in $TMPDIR, which macOS cleans of files not accessed for 3 days. */
Test(plist, default_socket_is_under_the_home)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	const char *daemon = exe_env("ANESHARED");
	char *out = NULL;
	const char *env[] = { "ANESHARE_SOCKET", "TMPDIR=/var/folders/xy/T/", NULL };
	int rc = cli(&out, env, "service", "install", "--launchd", "--root", dir, "--daemon", daemon, NULL);
	cr_assert_eq(rc, 0, "%s", out);
	free(out);
	char *file = path_join(dir, "Library/LaunchAgents/com.aneshare.aneshared.plist");
	char *logdir = path_join(dir, "Library/Logs/aneshare");
	char *sock = path_join(dir, "Library/Application Support/aneshare/aneshare.sock");
	char *text = tu_read_file(file);
	pv *root = parse_or_fail(text, file);
	check_agent(root, daemon, sock, logdir);
	pv_free(root);
	struct stat st;
	char *sdir = path_join(dir, "Library/Application Support/aneshare");
	cr_assert_eq(stat(sdir, &st), 0, "the socket directory was not made");
	cr_assert_eq(st.st_mode & 0777, 0700);
	free(sdir);
	free(text);
	free(sock);
	free(logdir);
	free(file);
	rm_rf(dir);
}

Test(plist, dry_run_writes_nothing)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *sock = path_join(dir, "s.sock");
	const char *daemon = exe_env("ANESHARED");
	char *out = NULL;
	int rc = cli(&out, NULL, "--socket", sock, "service", "install", "--launchd", "--root", dir,
	             "--daemon", daemon, "--dry-run", NULL);
	cr_assert_eq(rc, 0, "%s", out);
	char *lib = path_join(dir, "Library");
	cr_assert(!file_exists(lib), "--dry-run created %s", lib);
	char *want;
	cr_assert(asprintf(&want, "would write %s/Library/LaunchAgents/com.aneshare.aneshared.plist:\n",
	                   dir) >= 0);
	char *at = strstr(out, want);
	cr_assert(at, "no \"%s\" in:\n%s", want, out);
	/* What it prints is the plist itself. */
	char *logdir = path_join(dir, "Library/Logs/aneshare");
	pv *root = parse_or_fail(at + strlen(want), "the --dry-run output");
	check_agent(root, daemon, sock, logdir);
	pv_free(root);
	free(logdir);
	free(want);
	free(lib);
	free(out);
	free(sock);
	rm_rf(dir);
}

Test(plist, odd_characters_are_escaped)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *odd = path_join(dir, "a & <b> \"c\" 'd'");
	cr_assert_eq(mkdir(odd, 0755), 0);
	char *daemon = path_join(odd, "aneshared");
	cr_assert_eq(symlink(exe_env("ANESHARED"), daemon), 0);
	char *sock = path_join(dir, "s&.sock");
	char *out = NULL;
	int rc = cli(&out, NULL, "--socket", sock, "service", "install", "--launchd", "--root", dir,
	             "--daemon", daemon, NULL);
	cr_assert_eq(rc, 0, "%s", out);
	free(out);
	char *file = path_join(dir, "Library/LaunchAgents/com.aneshare.aneshared.plist");
	char *text = tu_read_file(file);
	cr_assert(strstr(text, "a &amp; &lt;b&gt; &quot;c&quot; &apos;d&apos;/aneshared"), "%s", text);
	char *logdir = path_join(dir, "Library/Logs/aneshare");
	pv *root = parse_or_fail(text, file);
	check_agent(root, daemon, sock, logdir);   /* decodes back to the exact paths */
	pv_free(root);
	external_lint(file);
	free(logdir);
	free(text);
	free(file);
	free(sock);
	free(daemon);
	free(odd);
	rm_rf(dir);
}

/* ---- the CLI with systemd units ------------------------------------------------ */

static const char *units_rel = ".config/systemd/user";

Test(cli, install_status_uninstall_under_root)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	const char *daemon = exe_env("ANESHARED");
	char *out = NULL;

	/* --dry-run: the text, nothing written. */
	int rc = cli(&out, NULL, "service", "install", "--root", dir, "--daemon", daemon, "--dry-run", NULL);
	cr_assert_eq(rc, 0, "%s", out);
	char *exec_line;
	cr_assert(asprintf(&exec_line, "\nExecStart=%s --socket %%t/aneshare/aneshare.sock\n", daemon) >= 0);
	cr_assert(strstr(out, exec_line), "no \"%s\" in:\n%s", exec_line + 1, out);
	cr_assert(strstr(out, "\nListenStream=%t/aneshare/aneshare.sock\n"), "%s", out);
	cr_assert(strstr(out, "would write "), "%s", out);
	free(out);
	char *cfg = path_join(dir, ".config");
	cr_assert(!file_exists(cfg), "--dry-run created %s", cfg);

	rc = cli(&out, NULL, "service", "install", "--root", dir, "--daemon", daemon, NULL);
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "not starting anything (--root given)"), "%s", out);
	cr_assert(strstr(out, "systemctl --user enable --now aneshare.socket"), "%s", out);
	free(out);
	char *units = path_join(dir, units_rel);
	char *sock_unit = path_join(units, "aneshare.socket"), *svc_unit = path_join(units, "aneshare.service");
	char *sock_text = tu_read_file(sock_unit), *svc_text = tu_read_file(svc_unit);
	cr_assert(sock_text && svc_text, "the units were not written to %s", units);
	cr_assert(strstr(svc_text, exec_line), "%s", svc_text);
	cr_assert(strstr(sock_text, "\nListenStream=%t/aneshare/aneshare.sock\n"), "%s", sock_text);
	cr_assert(strstr(sock_text, "\nWantedBy=sockets.target\n"), "%s", sock_text);
	cr_assert(strstr(svc_text, "\nRequires=aneshare.socket\n"), "%s", svc_text);
	cr_assert_null(strchr(sock_text, '@'), "a placeholder left:\n%s", sock_text);
	cr_assert_null(strchr(svc_text, '@'), "a placeholder left:\n%s", svc_text);
	struct stat st;
	cr_assert_eq(stat(svc_unit, &st), 0);
	cr_assert_eq(st.st_mode & 07777, 0644);

	/* The same text as the template, but for the placeholders: one source. */
	char *tmpl = h_read_source("daemon/systemd/aneshare.service");
	char *t_at = strchr(tmpl, '@');
	cr_assert(t_at);
	cr_assert_eq(memcmp(tmpl, svc_text, (size_t)(t_at - tmpl)), 0,
	             "the installed unit does not start like daemon/systemd/aneshare.service");
	char *t_tail = strstr(tmpl, "--socket %t/aneshare/aneshare.sock\n");
	cr_assert(t_tail && strstr(svc_text, t_tail), "the installed unit does not end like the template");
	free(tmpl);

	/* status: installed; no daemon on the socket given. */
	char *nosock = path_join(dir, "none.sock");
	rc = cli(&out, NULL, "--socket", nosock, "service", "status", "--root", dir, NULL);
	cr_assert_eq(rc, 1, "%s", out);
	cr_assert(strstr(out, "aneshare.socket") && strstr(out, "aneshare.service"), "%s", out);
	cr_assert(strstr(out, " installed\n"), "%s", out);
	cr_assert_null(strstr(out, "not installed"), "%s", out);
	cr_assert(strstr(out, "does not answer on"), "%s", out);
	free(out);

	rc = cli(&out, NULL, "service", "uninstall", "--root", dir, NULL);
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "removed "), "%s", out);
	free(out);
	cr_assert(!file_exists(sock_unit) && !file_exists(svc_unit));
	rc = cli(&out, NULL, "service", "uninstall", "--root", dir, NULL);
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "nothing installed"), "%s", out);
	free(out);
	rc = cli(&out, NULL, "--socket", nosock, "service", "status", "--root", dir, NULL);
	cr_assert_eq(rc, 1, "%s", out);
	cr_assert(strstr(out, "not installed"), "%s", out);
	free(out);

	free(nosock);
	free(sock_text);
	free(svc_text);
	free(sock_unit);
	free(svc_unit);
	free(units);
	free(cfg);
	free(exec_line);
	rm_rf(dir);
}

Test(cli, status_reports_a_daemon_that_answers)
{
	h_daemon d;
	h_daemon_start(&d);
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *out = NULL;
	int rc = cli(&out, NULL, "service", "install", "--root", dir, "--daemon", exe_env("ANESHARED"), NULL);
	cr_assert_eq(rc, 0, "%s", out);
	free(out);
	rc = cli(&out, NULL, "--socket", d.sock, "service", "status", "--root", dir,
	         "--daemon", exe_env("ANESHARED"), NULL);
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "answers on") && strstr(out, "backend cpu"), "%s", out);
	cr_assert_null(strstr(out, "differs"), "%s", out);
	free(out);
	/* Stale files: installed for another daemon path. */
	rc = cli(&out, NULL, "--socket", d.sock, "service", "status", "--root", dir, "--daemon", "/bin/true",
	         NULL);
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "aneshare.service") && strstr(out, "differs"), "%s", out);
	free(out);
	h_daemon_stop(&d);
	rc = cli(&out, NULL, "--socket", d.sock, "service", "status", "--root", dir, NULL);
	cr_assert_eq(rc, 1, "%s", out);
	cr_assert(strstr(out, "does not answer"), "%s", out);
	free(out);
	rm_rf(dir);
}

/* A stand-in systemctl that logs its arguments (and fails if told to). */
static char *fake_systemctl(const char *dir, const char *behaviour)
{
	char *path = path_join(dir, "systemctl");
	char *script;
	cr_assert(asprintf(&script, "#!/bin/sh\necho \"$*\" >> '%s/calls'\n%s\n", dir, behaviour) >= 0);
	write_text(path, script, 0755);
	free(script);
	return path;
}

/* The ExecStart line of a --dry-run's output: the daemon the unit runs. */
static char *exec_start(const char *out)
{
	const char *at = strstr(out, "ExecStart=");
	cr_assert(at, "no ExecStart in: %s", out);
	at += strlen("ExecStart=");
	return strndup(at, strcspn(at, " \n"));
}

/* Without --daemon, install finds aneshared next to the CLI (an install's
 * bin/), else in its build tree (build/client/aneshare runs
 * build/daemon/aneshared), else in the install prefix. */
Test(cli, install_finds_aneshared_of_its_layout)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *e_home, *e_cfg, *e_rt;
	cr_assert(asprintf(&e_home, "HOME=%s/home", dir) >= 0);
	cr_assert(asprintf(&e_cfg, "XDG_CONFIG_HOME=%s/cfg", dir) >= 0);
	cr_assert(asprintf(&e_rt, "XDG_RUNTIME_DIR=%s/rt", dir) >= 0);
	const char *env[] = { e_home, e_cfg, e_rt, "ANESHARE_SYSTEMCTL=/bin/false", NULL };

	/* This build tree: the CLI in build/client, the daemon in build/daemon. */
	char *out = NULL;
	int rc = cli(&out, env, "service", "install", "--dry-run", NULL);
	cr_assert_eq(rc, 0, "%s", out);
	char *want = realpath(exe_env("ANESHARED"), NULL), *got = exec_start(out);
	cr_assert(want);
	cr_expect_str_eq(got, want, "from the build tree: %s", out);
	free(got);
	free(want);
	free(out);

	/* A copy of the CLI in T/bin, with T/bin/aneshared and T/daemon/aneshared
	 * (T without symlinks: the CLI finds its own path resolved). */
	char *rdir = realpath(dir, NULL);
	cr_assert(rdir);
	char *t = path_join(rdir, "t"), *bin = path_join(t, "bin"), *dmn = path_join(t, "daemon");
	cr_assert_eq(mkdir(t, 0755), 0);
	cr_assert_eq(mkdir(bin, 0755), 0);
	cr_assert_eq(mkdir(dmn, 0755), 0);
	char *cli_copy = path_join(bin, "aneshare");
	const char *cp[] = { "cp", exe_env("ANESHARE_CLI"), cli_copy, NULL };
	cr_assert_eq(run_cmd(&out, NULL, cp), 0, "%s", out);
	free(out);
	char *cli_dir = realpath(exe_env("ANESHARE_CLI"), NULL);
	cr_assert(cli_dir);
	*strrchr(cli_dir, '/') = '\0';
	char *lib = path_join(cli_dir, "libaneshare.so.0"), *lib_copy = path_join(bin, "libaneshare.so.0");
	if (file_exists(lib))   /* its RUNPATH is $ORIGIN/ */
		cr_assert_eq(symlink(lib, lib_copy), 0);
	char *next = path_join(bin, "aneshared"), *tree = path_join(dmn, "aneshared");
	write_text(next, "#!/bin/sh\nexit 0\n", 0755);
	write_text(tree, "#!/bin/sh\nexit 0\n", 0755);
	const char *argv[] = { cli_copy, "service", "install", "--dry-run", NULL };
	rc = run_cmd(&out, env, argv);
	cr_assert_eq(rc, 0, "%s", out);
	got = exec_start(out);
	cr_expect_str_eq(got, next, "next to the CLI first: %s", out);
	free(got);
	free(out);

	cr_assert_eq(unlink(next), 0);
	rc = run_cmd(&out, env, argv);
	cr_assert_eq(rc, 0, "%s", out);
	got = exec_start(out);
	cr_expect_str_eq(got, tree, "then ../daemon/aneshared: %s", out);
	free(got);
	free(out);

	/* Neither: the install prefix's, or an error naming where it looked. */
	cr_assert_eq(unlink(tree), 0);
	rc = run_cmd(&out, env, argv);
	if (rc == 0) {
		got = exec_start(out);
		cr_expect(strncmp(got, t, strlen(t)) != 0, "%s", out);
		free(got);
	} else {
		char *msg;
		cr_assert(asprintf(&msg, "cannot find aneshared (looked for %s, %s and ", next, tree) >= 0);
		cr_expect_eq(rc, 1, "%s", out);
		cr_expect(strstr(out, msg) && strstr(out, "pass --daemon PATH"), "%s", out);
		free(msg);
	}
	free(out);
	free(next);
	free(tree);
	free(lib);
	free(lib_copy);
	free(cli_dir);
	free(cli_copy);
	free(t);
	free(rdir);
	free(bin);
	free(dmn);
	free(e_home);
	free(e_cfg);
	free(e_rt);
	rm_rf(dir);
}

Test(cli, runs_systemctl_for_the_user)
{
	needs_test_hooks();
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *ctl = fake_systemctl(dir, "case \"$2\" in is-enabled) echo enabled;; is-active) echo active;; esac");
	char *e_ctl, *e_home, *e_cfg, *e_rt;
	cr_assert(asprintf(&e_ctl, "ANESHARE_SYSTEMCTL=%s", ctl) >= 0);
	cr_assert(asprintf(&e_home, "HOME=%s/home", dir) >= 0);
	cr_assert(asprintf(&e_cfg, "XDG_CONFIG_HOME=%s/cfg", dir) >= 0);
	cr_assert(asprintf(&e_rt, "XDG_RUNTIME_DIR=%s/rt", dir) >= 0);
	const char *env[] = { e_ctl, e_home, e_cfg, e_rt, NULL };
	char *out = NULL;

	int rc = cli(&out, env, "service", "install", "--daemon", exe_env("ANESHARED"), "--dry-run", NULL);
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "would run: ") && strstr(out, "--user enable --now aneshare.socket"), "%s", out);
	free(out);
	char *calls = path_join(dir, "calls");
	cr_assert(!file_exists(calls), "--dry-run ran systemctl");

	rc = cli(&out, env, "service", "install", "--daemon", exe_env("ANESHARED"), NULL);
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "aneshare.socket is enabled"), "%s", out);
	free(out);
	char *unit = path_join(dir, "cfg/systemd/user/aneshare.service");
	cr_assert(file_exists(unit), "not installed into $XDG_CONFIG_HOME/systemd/user");
	char *log = tu_read_file(calls);
	cr_assert_str_eq(log, "--user daemon-reload\n"
	                      "--user enable --now aneshare.socket\n"
	                      "--user try-restart aneshare.service\n");
	free(log);
	unlink(calls);

	rc = cli(&out, env, "service", "status", NULL);
	cr_assert(strstr(out, "systemd: aneshare.socket enabled: enabled\n"), "%s", out);
	cr_assert(strstr(out, "systemd: aneshare.service active: active\n"), "%s", out);
	cr_assert(strstr(out, "does not answer"), "%s", out);
	cr_assert_eq(rc, 1);
	free(out);
	unlink(calls);

	rc = cli(&out, env, "service", "uninstall", NULL);
	cr_assert_eq(rc, 0, "%s", out);
	free(out);
	log = tu_read_file(calls);
	cr_assert_str_eq(log, "--user disable --now aneshare.socket aneshare.service\n"
	                      "--user daemon-reload\n");
	free(log);
	cr_assert(!file_exists(unit));

	free(unit);
	free(calls);
	free(ctl);
	free(e_ctl);
	free(e_home);
	free(e_cfg);
	free(e_rt);
	rm_rf(dir);
}

Test(cli, without_user_systemd_leaves_files_and_says_so)
{
	needs_test_hooks();
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *ctl = fake_systemctl(dir, "echo 'Failed to connect to bus: No medium found' >&2\nexit 1");
	char *e_ctl, *e_home, *e_cfg;
	cr_assert(asprintf(&e_ctl, "ANESHARE_SYSTEMCTL=%s", ctl) >= 0);
	cr_assert(asprintf(&e_home, "HOME=%s/home", dir) >= 0);
	cr_assert(asprintf(&e_cfg, "XDG_CONFIG_HOME=%s/cfg", dir) >= 0);
	const char *env[] = { e_ctl, e_home, e_cfg, NULL };
	char *out = NULL;
	int rc = cli(&out, env, "service", "install", "--daemon", exe_env("ANESHARED"), NULL);
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "No user systemd instance is reachable"), "%s", out);
	cr_assert(strstr(out, "Failed to connect to bus"), "systemctl's own message is not shown:\n%s", out);
	cr_assert(strstr(out, "systemctl --user daemon-reload && systemctl --user enable --now aneshare.socket"),
	          "%s", out);
	free(out);
	char *unit = path_join(dir, "cfg/systemd/user/aneshare.socket");
	cr_assert(file_exists(unit), "the units must stay in place");

	/* No systemctl at all. */
	const char *env2[] = { "ANESHARE_SYSTEMCTL=/nonexistent/systemctl", e_home, e_cfg, NULL };
	rc = cli(&out, env2, "service", "install", "--daemon", exe_env("ANESHARED"), NULL);
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "systemctl is not installed"), "%s", out);
	free(out);
	rc = cli(&out, env2, "service", "uninstall", NULL);
	cr_assert_eq(rc, 0, "%s", out);
	free(out);
	cr_assert(!file_exists(unit));
	free(unit);
	free(ctl);
	free(e_ctl);
	free(e_home);
	free(e_cfg);
	rm_rf(dir);
}

Test(cli, odd_daemon_path_is_quoted_for_systemd)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *odd = path_join(dir, "my dir 100%");
	cr_assert_eq(mkdir(odd, 0755), 0);
	char *daemon = path_join(odd, "aneshared");
	cr_assert_eq(symlink(exe_env("ANESHARED"), daemon), 0);
	char *out = NULL;
	int rc = cli(&out, NULL, "service", "install", "--root", dir, "--daemon", daemon, NULL);
	cr_assert_eq(rc, 0, "%s", out);
	free(out);
	char *unit = path_join(dir, ".config/systemd/user/aneshare.service");
	char *text = tu_read_file(unit);
	char *want;
	cr_assert(asprintf(&want, "\nExecStart=\"%s/my dir 100%%%%/aneshared\" --socket", dir) >= 0);
	cr_assert(strstr(text, want), "no \"%s\" in:\n%s", want + 1, text);
	free(want);
	free(text);
	free(unit);
	free(daemon);
	free(odd);
	rm_rf(dir);
}

/* systemd-analyze verify FILE: systemd's own parser on a unit file (it
 * also checks that the command's path is an executable).  Returns the exit
 * status, or -1 if systemd-analyze is not installed. */
static int sd_verify(const char *unit, char **out)
{
	if (!in_path("systemd-analyze"))
		return -1;
	const char *argv[] = { "systemd-analyze", "verify", unit, NULL };
	return run_cmd(out, NULL, argv);
}

/* Install the units under root for daemon; the text of aneshare.service. */
static char *install_units(const char *root, const char *daemon, int want_rc, char **out)
{
	int rc = cli(out, NULL, "service", "install", "--root", root, "--daemon", daemon, NULL);
	cr_assert_eq(rc, want_rc, "install --daemon '%s' exited %d:\n%s", daemon, rc, *out);
	char *unit = path_join(root, ".config/systemd/user/aneshare.service");
	char *text = tu_read_file(unit);
	free(unit);
	return text;
}

/* systemd takes the executable's path literally: no variables are expanded
 * in it, so a '$' stays single there; argv[0], an argument, has it doubled. */
Test(cli, dollar_in_daemon_path)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *odd = path_join(dir, "a$b ${HOME} 50%");
	cr_assert_eq(mkdir(odd, 0755), 0);
	char *daemon = path_join(odd, "aneshared");
	cr_assert_eq(symlink(exe_env("ANESHARED"), daemon), 0);
	char *out = NULL;
	char *text = install_units(dir, daemon, 0, &out);
	free(out);
	char *want;
	cr_assert(asprintf(&want, "\nExecStart=@\"%s/a$b ${HOME} 50%%%%/aneshared\" "
	                          "\"%s/a$$b $${HOME} 50%%%%/aneshared\" --socket %%t/aneshare/aneshare.sock\n",
	                   dir, dir) >= 0);
	cr_assert(text && strstr(text, want), "no \"%s\" in:\n%s", want + 1, text);
	free(want);
	free(text);

	char *unit = path_join(dir, ".config/systemd/user/aneshare.service");
	int rc = sd_verify(unit, &out);
	if (rc < 0) {
		free(unit);
		rm_rf(dir);
		cr_skip_test("the text is as systemd.service(5) reads it; systemd-analyze is not installed "
		             "to check it with systemd's own parser");
	}
	cr_assert_eq(rc, 0, "systemd-analyze verify %s:\n%s", unit, out);
	free(out);
	out = NULL;
	/* The control: the same check sees a path that does not exist. */
	cr_assert_eq(unlink(daemon), 0);
	rc = sd_verify(unit, &out);
	cr_assert_neq(rc, 0, "systemd-analyze verify did not notice the missing daemon:\n%s", out);
	free(out);
	free(unit);
	free(daemon);
	free(odd);
	rm_rf(dir);
}

/* What systemd would drop or refuse is refused at install, and nothing is
 * written. */
Test(cli, unit_refuses_what_systemd_cannot_run)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	const struct {
		const char *name, *why;
	} cases[] = {
		{ "lat\xe9n", "is not valid UTF-8" },              /* Latin-1 */
		{ "a\"b", "contains a quote or a backslash" },
		{ "it's", "contains a quote or a backslash" },
		{ "back\\slash", "contains a quote or a backslash" },
		{ "tab\there", "contains control characters" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *odd = path_join(dir, cases[i].name);
		if (mkdir(odd, 0755) < 0 && errno == EILSEQ) {
			free(odd);   /* a file system that holds UTF-8 names only (APFS) */
			continue;
		}
		cr_assert(file_exists(odd), "mkdir %s: %s", odd, strerror(errno));
		char *daemon = path_join(odd, "aneshared");
		cr_assert_eq(symlink(exe_env("ANESHARED"), daemon), 0);
		char *out = NULL;
		char *text = install_units(dir, daemon, 1, &out);
		cr_assert_null(text, "case %zu: a unit was written:\n%s", i, text);
		cr_assert(strstr(out, cases[i].why), "case %zu: no \"%s\" in:\n%s", i, cases[i].why, out);
		cr_assert(strstr(out, "--daemon PATH"), "case %zu: %s", i, out);
		free(out);
		free(daemon);
		free(odd);
	}
	char *cfg = path_join(dir, ".config");
	cr_assert(!file_exists(cfg), "files were written for a refused path");
	free(cfg);
	rm_rf(dir);
}

/* ---- the CLI with launchd, against a stand-in launchctl ------------------------ */

/* A launchctl that logs its arguments and keeps the agent's state in files:
 * DIR/loaded while the agent is loaded; bootstrap fails with status 5 ("Input/
 * output error", as launchctl does while a bootout of the same service is
 * still being torn down) as many times as DIR/eio holds lines, then loads. */
static char *fake_launchctl(const char *dir)
{
	char *path = path_join(dir, "launchctl");
	char *script;
	cr_assert(asprintf(&script,
	                   "#!/bin/sh\n"
	                   "d='%s'\n"
	                   "echo \"$*\" >> \"$d/calls\"\n"
	                   "case \"$1\" in\n"
	                   "print) [ -e \"$d/loaded\" ] || { echo \"Could not find service\" >&2; exit 113; } ;;\n"
	                   "bootout) rm -f \"$d/loaded\" ;;\n"
	                   "bootstrap)\n"
	                   "  if [ -s \"$d/eio\" ]; then tail -n +2 \"$d/eio\" > \"$d/eio.t\"; mv \"$d/eio.t\" \"$d/eio\"\n"
	                   "    echo 'Bootstrap failed: 5: Input/output error' >&2; exit 5; fi\n"
	                   "  : > \"$d/loaded\" ;;\n"
	                   "esac\n",
	                   dir) >= 0);
	write_text(path, script, 0755);
	free(script);
	return path;
}

typedef struct launchd_env {
	char *ctl, *e_ctl, *e_home, *sock, *calls, *eio, *loaded;
	const char *env[3];
} launchd_env;

static void launchd_env_init(launchd_env *l, const char *dir)
{
	l->ctl = fake_launchctl(dir);
	cr_assert(asprintf(&l->e_ctl, "ANESHARE_LAUNCHCTL=%s", l->ctl) >= 0);
	cr_assert(asprintf(&l->e_home, "HOME=%s/home", dir) >= 0);
	l->sock = path_join(dir, "s/aneshare.sock");
	l->calls = path_join(dir, "calls");
	l->eio = path_join(dir, "eio");
	l->loaded = path_join(dir, "loaded");
	l->env[0] = l->e_ctl;
	l->env[1] = l->e_home;
	l->env[2] = NULL;
}

static void launchd_env_free(launchd_env *l)
{
	free(l->ctl);
	free(l->e_ctl);
	free(l->e_home);
	free(l->sock);
	free(l->calls);
	free(l->eio);
	free(l->loaded);
}

/* The lines of the call log with the uid-dependent domain cut to "gui/U". */
static char *calls_of(const launchd_env *l)
{
	char *log = tu_read_file(l->calls);
	cr_assert(log, "launchctl was not run");
	char dom[32];
	snprintf(dom, sizeof dom, "gui/%u", (unsigned)getuid());
	char *out = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&out, &len);
	for (const char *p = log; *p;) {
		if (!strncmp(p, dom, strlen(dom))) {
			fputs("gui/U", m);
			p += strlen(dom);
		} else {
			fputc(*p++, m);
		}
	}
	fclose(m);
	free(log);
	unlink(l->calls);
	return out;
}

Test(cli, launchd_bootstrap_retried_after_bootout)
{
	needs_test_hooks();
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	launchd_env l;
	launchd_env_init(&l, dir);
	char *out = NULL;

	/* A first install: not loaded, bootstrap works at once. */
	int rc = cli(&out, l.env, "--socket", l.sock, "service", "install", "--launchd",
	             "--daemon", exe_env("ANESHARED"), NULL);
	cr_assert_eq(rc, 0, "%s", out);
	free(out);
	char *plist;
	cr_assert(asprintf(&plist, "%s/home/Library/LaunchAgents/com.aneshare.aneshared.plist", dir) >= 0);
	char *log = calls_of(&l), *want;
	cr_assert(asprintf(&want, "print gui/U/com.aneshare.aneshared\nbootstrap gui/U %s\n", plist) >= 0);
	cr_assert_str_eq(log, want);
	free(want);
	free(log);
	cr_assert(file_exists(l.loaded));

	/* Again, loaded: bootout, then bootstrap fails twice with 5 while launchd
	 * tears the old one down, and works on the third try. */
	write_text(l.eio, "1\n2\n", 0644);
	rc = cli(&out, l.env, "--socket", l.sock, "service", "install", "--launchd",
	         "--daemon", exe_env("ANESHARED"), NULL);
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "trying again in 100 ms") && strstr(out, "trying again in 200 ms"), "%s", out);
	cr_assert(strstr(out, "is loaded and listening on"), "%s", out);
	free(out);
	log = calls_of(&l);
	cr_assert(asprintf(&want, "print gui/U/com.aneshare.aneshared\nbootout gui/U/com.aneshare.aneshared\n"
	                          "bootstrap gui/U %s\nbootstrap gui/U %s\nbootstrap gui/U %s\n",
	                   plist, plist, plist) >= 0);
	cr_assert_str_eq(log, want);
	free(want);
	free(log);
	cr_assert(file_exists(l.loaded));

	/* Status 5 without a bootout before it is not that race: no retry. */
	cr_assert_eq(unlink(l.loaded), 0);
	write_text(l.eio, "1\n", 0644);
	rc = cli(&out, l.env, "--socket", l.sock, "service", "install", "--launchd",
	         "--daemon", exe_env("ANESHARED"), NULL);
	cr_assert_eq(rc, 1, "%s", out);
	cr_assert(strstr(out, "launchctl bootstrap failed"), "%s", out);
	cr_assert_null(strstr(out, "trying again"), "%s", out);
	free(out);
	log = calls_of(&l);
	cr_assert(asprintf(&want, "print gui/U/com.aneshare.aneshared\nbootstrap gui/U %s\n", plist) >= 0);
	cr_assert_str_eq(log, want);
	free(want);
	free(log);

	/* A bootstrap that keeps failing after a bootout is given up on. */
	write_text(l.loaded, "", 0644);
	write_text(l.eio, "1\n2\n3\n4\n5\n6\n7\n", 0644);
	rc = cli(&out, l.env, "--socket", l.sock, "service", "install", "--launchd",
	         "--daemon", exe_env("ANESHARED"), NULL);
	cr_assert_eq(rc, 1, "%s", out);
	cr_assert(strstr(out, "trying again in 1600 ms") && !strstr(out, "trying again in 3200 ms"), "%s", out);
	free(out);
	log = calls_of(&l);
	size_t n = 0;
	for (const char *p = log; (p = strstr(p, "bootstrap ")); p++)
		n++;
	cr_assert_eq(n, 6, "bootstrap ran %zu times:\n%s", n, log);
	free(log);

	free(plist);
	launchd_env_free(&l);
	rm_rf(dir);
}

/* Uninstall removes the socket file launchd bound (launchd leaves it), but
 * never a socket something still listens on. */
Test(cli, launchd_uninstall_removes_the_socket_file)
{
	needs_test_hooks();
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	launchd_env l;
	launchd_env_init(&l, dir);
	char *out = NULL;
	int rc = cli(&out, l.env, "--socket", l.sock, "service", "install", "--launchd",
	             "--daemon", exe_env("ANESHARE_CLI"), NULL);
	cr_assert_eq(rc, 0, "%s", out);
	free(out);

	/* Live: a listener holds it (a daemon started by hand, say). */
	int lfd = listen_unix(l.sock);
	rc = cli(&out, l.env, "--socket", l.sock, "service", "uninstall", "--launchd", NULL);
	cr_assert_eq(rc, 0, "%s", out);
	free(out);
	cr_assert(file_exists(l.sock), "uninstall removed a socket that is listened on");
	char *log = calls_of(&l);
	cr_assert(strstr(log, "bootout gui/U/com.aneshare.aneshared\n"), "%s", log);
	free(log);

	/* Left behind: nothing listens any more. */
	close(lfd);
	rc = cli(&out, l.env, "--socket", l.sock, "service", "install", "--launchd",
	         "--daemon", exe_env("ANESHARE_CLI"), NULL);
	cr_assert_eq(rc, 0, "%s", out);
	free(out);
	rc = cli(&out, l.env, "--socket", l.sock, "service", "uninstall", "--launchd", "--dry-run", NULL);
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "would remove") && strstr(out, "aneshare.sock"), "%s", out);
	free(out);
	cr_assert(file_exists(l.sock));
	rc = cli(&out, l.env, "--socket", l.sock, "service", "uninstall", "--launchd", NULL);
	cr_assert_eq(rc, 0, "%s", out);
	char *removed;
	cr_assert(asprintf(&removed, "removed %s\n", l.sock) >= 0);
	cr_assert(strstr(out, removed), "%s", out);
	free(removed);
	free(out);
	cr_assert(!file_exists(l.sock), "the stale socket file is still there");
	cr_assert(!file_exists(l.loaded));

	launchd_env_free(&l);
	rm_rf(dir);
}

Test(cli, bad_usage)
{
	char dir[256];
	make_tmpdir(dir, sizeof dir);
	char *out = NULL;
	cr_assert_eq(cli(&out, NULL, "service", NULL), 2, "%s", out);
	free(out);
	cr_assert_eq(cli(&out, NULL, "service", "restart", NULL), 2, "%s", out);
	free(out);
	cr_assert_eq(cli(&out, NULL, "service", "install", "--root", NULL), 2, "%s", out);
	free(out);
	cr_assert_eq(cli(&out, NULL, "service", "status", "--dry-run", NULL), 2, "%s", out);
	free(out);
	cr_assert_eq(cli(&out, NULL, "--socket", "/tmp/x.sock", "service", "install", "--systemd",
	                 "--root", dir, NULL), 2, "%s", out);
	cr_assert(strstr(out, "%t/aneshare/aneshare.sock"), "%s", out);
	free(out);
	/* Not an executable: refused, nothing written. */
	cr_assert_eq(cli(&out, NULL, "service", "install", "--root", dir, "--daemon", "/etc/passwd", NULL),
	             1, "%s", out);
	cr_assert(strstr(out, "not an executable file"), "%s", out);
	free(out);
	cr_assert_eq(cli(&out, NULL, "service", "install", "--root", dir, "--daemon", "/nonexistent/aneshared",
	                 NULL), 1, "%s", out);
	free(out);
	char *cfg = path_join(dir, ".config");
	cr_assert(!file_exists(cfg));
	free(cfg);
	rm_rf(dir);
}
