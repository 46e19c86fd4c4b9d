/* SPDX-License-Identifier: MIT */
/*
 * Access control, settings and limits of aneshared (docs/reliability.md,
 * "Access" and "Limits"): peers of another uid are refused unless allowed,
 * the configuration file and flags are checked, limits are announced in hello
 * and enforced with their documented errors, and a client that does not read
 * its responses is dropped without stalling anyone else.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/fsuid.h>
#endif

#include "anes_proto.h"
#include "aneshare.h"
#include "daemon_harness.h"

static h_daemon D;

static void remove_user(void);
static void conf_remove_all(void);

/* Also after a failed assertion: no users or files left behind. */
static void teardown(void)
{
	h_daemon_kill(&D);
	remove_user();
	conf_remove_all();
}

TestSuite(access, .fini = teardown, .timeout = 60);

static bool log_has(const h_daemon *d, const char *needle)
{
	char *text = tu_read_file(d->log);
	bool found = text && strstr(text, needle);
	free(text);
	return found;
}

/* ---- a second user ------------------------------------------------------------- */

static char user_name[64];
static uid_t other_uid;
static gid_t other_gid;
static bool user_created;

static void need_root(void)
{
#ifndef __linux__
	cr_skip_test("acts as a second user with useradd and setfsuid, which are Linux's");
#endif
	if (geteuid() != 0)
		cr_skip_test("needs root: the test acts as a second user (run as root to check access)");
}

/* Create aneshare-test-PID (removed at the end of the test); if useradd is
 * missing or fails, fall back to a uid that no process of the test uses. */
static void make_user(void)
{
	snprintf(user_name, sizeof user_name, "aneshare-test-%ld", (long)getpid());
	char cmd[256];
	snprintf(cmd, sizeof cmd, "useradd -M -r -s /usr/sbin/nologin %s >/dev/null 2>&1", user_name);
	if (system(cmd) == 0) {
		struct passwd *pw = getpwnam(user_name);
		cr_assert_not_null(pw, "useradd succeeded but %s is unknown", user_name);
		other_uid = pw->pw_uid;
		other_gid = pw->pw_gid;
		user_created = true;
	} else {
		/* not cr_log_warn, which makes criterion exit 1: this is a fallback */
		fprintf(stderr, "useradd failed; acting as the unused uid 61234 instead\n");
		snprintf(user_name, sizeof user_name, "61234");
		other_uid = 61234;
		other_gid = 61234;
		user_created = false;
	}
	cr_assert_neq(other_uid, geteuid());
}

static void remove_user(void)
{
	if (!user_created)
		return;
	char cmd[256];
	snprintf(cmd, sizeof cmd, "userdel %s >/dev/null 2>&1", user_name);
	if (system(cmd) != 0)
		fprintf(stderr, "userdel %s failed\n", user_name);
	user_created = false;
}

/* In a child: become the other user for the socket's peer credentials
 * (SO_PEERCRED reports the euid), but keep fsuid 0 so that the path lookup
 * in the daemon's 0700 directory still works; then try the handshake.
 * Exit status: 0 hello succeeded, 1 the daemon closed the connection,
 * 2.. set-up failures. */
static int child_hello_as(const char *sock, uid_t uid, gid_t gid)
{
	if (setgroups(0, NULL) < 0 || setegid(gid) < 0 || seteuid(uid) < 0)
		return 2;
#ifdef __linux__
	setfsuid(0);
	if ((uid_t)setfsuid((uid_t)-1) != 0 || geteuid() != uid)
		return 3;
#else
	return 3;   /* no fsuid: need_root skips before this */
#endif
	int fd = h_raw_connect(sock);
	if (fd < 0)
		return 4;
	int r = h_raw_send_hello(fd, 1);
	if (r == -EPIPE || r == -ECONNRESET)
		return 1;
	if (r < 0)
		return 5;
	r = h_raw_response(fd, 1, 5000);
	close(fd);
	if (r == 0)
		return 0;
	return r == -EPIPE ? 1 : 6;
}

static int hello_as_other_user(void)
{
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0)
		_exit(child_hello_as(D.sock, other_uid, other_gid));
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "child status 0x%x", status);
	return WEXITSTATUS(status);
}

static void root_client_works(void)
{
	aneshare_conn *c = h_connect(&D, "root-client");
	aneshare_status *st = h_status(c);
	cr_assert_geq(st->clients, 1);
	aneshare_status_free(st);
	aneshare_disconnect(c);
}

Test(access, other_uid_refused)
{
	need_root();
	make_user();
	h_daemon_start(&D);
	aneshare_conn *obs = h_connect(&D, "observer");
	h_wait_clients(obs, 1);   /* the harness's probe has gone */
	int fds0 = h_daemon_fds(&D);

	int r = hello_as_other_user();
	cr_expect_eq(r, 1, "a client of uid %u was not refused (child exit %d)", (unsigned)other_uid, r);
	/* Refused at once, and said so in the log. */
	char want[96];
	snprintf(want, sizeof want, "refused a connection from uid %u", (unsigned)other_uid);
	cr_expect(log_has(&D, want), "the log does not say \"%s\"", want);
	root_client_works();
	h_wait_daemon_fds(&D, fds0);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
	remove_user();
}

Test(access, allow_uid_flag)
{
	need_root();
	make_user();
	char uid[32];
	snprintf(uid, sizeof uid, "%u", (unsigned)other_uid);
	const char *args[] = { "--allow-uid", "4242", "--allow-uid", uid, NULL };
	h_daemon_start_args(&D, args);
	int r = hello_as_other_user();
	cr_expect_eq(r, 0, "an allowed uid was refused (child exit %d)", r);
	root_client_works();
	h_daemon_stop(&D);
	remove_user();
}

/* The CLI run by another user against this daemon's socket: the path lookup
 * in the 0700 directory fails, and the CLI says whose socket it is and what
 * to do.  Skipped where that user cannot run the CLI from the build tree (a
 * tree under a private home directory). */
Test(access, cli_of_another_user_is_told_why)
{
	need_root();
	make_user();
	h_daemon_start(&D);
	const char *exe = getenv("ANESHARE_CLI");
	cr_assert(exe && *exe, "ANESHARE_CLI is not set (tests/meson.build sets it)");
	int p[2];
	cr_assert_eq(pipe(p), 0);
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		dup2(p[1], 1);
		dup2(p[1], 2);
		if (setgroups(0, NULL) < 0 || setgid(other_gid) < 0 || setuid(other_uid) < 0)
			_exit(100);
		if (access(exe, X_OK) < 0)
			_exit(77);
		execl(exe, exe, "--socket", D.sock, "status", (char *)NULL);
		_exit(77);
	}
	close(p[1]);
	char out[4096];
	size_t got = 0;
	ssize_t n;
	while (got < sizeof out - 1 && (n = read(p[0], out + got, sizeof out - 1 - got)) > 0)
		got += (size_t)n;
	out[got] = '\0';
	close(p[0]);
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "status 0x%x", status);
	int code = WEXITSTATUS(status);
	char want[300];
	snprintf(want, sizeof want, "aneshare: cannot connect to %s: Permission denied\n"
	         "The socket belongs to another user", D.sock);
	h_daemon_stop(&D);
	remove_user();
	if (code == 77 || code == 127)   /* no way to the CLI (or its library) for that user */
		cr_skip_test("user %u cannot run %s: %s", (unsigned)other_uid, exe, out);
	cr_assert_eq(code, 1, "exit %d: %s", code, out);
	cr_expect(strstr(out, want), "%s", out);
}

/* ---- the configuration file ------------------------------------------------------- */

typedef struct tmpconf {
	char dir[128];
	char path[192];
} tmpconf;

/* Copies of the files made, for teardown (a failed assertion leaves the
 * test's own frame behind). */
static tmpconf live_confs[4];

static void conf_remove(tmpconf *t);

static void conf_remove_all(void)
{
	for (size_t i = 0; i < sizeof live_confs / sizeof live_confs[0]; i++)
		if (live_confs[i].dir[0]) {
			tmpconf t = live_confs[i];
			conf_remove(&t);
		}
}

static void conf_write(tmpconf *t, const char *text)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(t->dir, sizeof t->dir, "%s/anes-conf-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	cr_assert(mkdtemp(t->dir));
	snprintf(t->path, sizeof t->path, "%s/aneshared.conf", t->dir);
	for (size_t i = 0; i < sizeof live_confs / sizeof live_confs[0]; i++)
		if (!live_confs[i].dir[0]) {
			live_confs[i] = *t;
			break;
		}
	FILE *f = fopen(t->path, "we");
	cr_assert_not_null(f);
	fputs(text, f);
	fclose(f);
}

static void conf_remove(tmpconf *t)
{
	for (size_t i = 0; i < sizeof live_confs / sizeof live_confs[0]; i++)
		if (!strcmp(live_confs[i].dir, t->dir))
			live_confs[i].dir[0] = '\0';
	char sub[256];
	snprintf(sub, sizeof sub, "%s/aneshare/aneshared.conf", t->dir);   /* default_config_file */
	unlink(sub);
	snprintf(sub, sizeof sub, "%s/aneshare", t->dir);
	rmdir(sub);
	unlink(t->path);
	rmdir(t->dir);
}

Test(access, allow_uid_config)
{
	need_root();
	make_user();
	tmpconf t;
	char text[256];
	/* By name when useradd worked, else by number. */
	snprintf(text, sizeof text, "# who may connect\n\nallow_uid = %s\n  max_inflight = 8\n", user_name);
	conf_write(&t, text);
	const char *args[] = { "--config", t.path, NULL };
	h_daemon_start_args(&D, args);
	int r = hello_as_other_user();
	cr_expect_eq(r, 0, "a uid allowed in the config file was refused (child exit %d)", r);
	aneshare_conn *c = h_connect(&D, "root");
	cr_expect_eq(aneshare_server(c)->max_inflight, 8);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
	conf_remove(&t);
	remove_user();
}

/* Run aneshared with args to completion; its stderr into out. */
static int run_daemon(const char *const *args, char *out, size_t len)
{
	const char *exe = getenv("ANESHARED");
	cr_assert(exe);
	int p[2];
	cr_assert_eq(anes_pipe_cloexec(p), 0);
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		dup2(p[1], 2);
		const char *tmp = getenv("TMPDIR");
		char sock[256];
		snprintf(sock, sizeof sock, "%s/anes-never-%ld/s.sock", tmp && *tmp ? tmp : "/tmp",
		         (long)getpid());
		const char *argv[32] = { exe, "--socket", sock };
		unsigned n = 3;
		for (unsigned i = 0; args[i] && n < 31; i++)
			argv[n++] = args[i];
		argv[n] = NULL;
		execv(exe, (char *const *)argv);
		_exit(127);
	}
	close(p[1]);
	size_t got = 0;
	ssize_t n;
	while (got + 1 < len && (n = read(p[0], out + got, len - 1 - got)) > 0)
		got += (size_t)n;
	out[got] = '\0';
	close(p[0]);
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status));
	return WEXITSTATUS(status);
}

Test(access, config_errors_name_the_line)
{
	static const struct {
		const char *text;
		int line;
		const char *what;
	} cases[] = {
		{ "max_inflight = 4\n# fine\nno_such_key = 1\n", 3, "unknown key" },
		{ "\n\nmax_surfaces = lots\n", 3, "max_surfaces" },
		{ "max_frame = 1K\n", 1, "max_frame" },            /* below the lowest */
		{ "verbose = maybe\n", 1, "true or false" },
		{ "workers 4\n", 1, "key = value" },
		{ "max_inflight =\n", 1, "no value" },
		{ "max_inflight = 8 # comment\n", 1, "max_inflight" },
		{ "allow_uid = no-such-user-here\n", 1, "user name" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		tmpconf t;
		conf_write(&t, cases[i].text);
		const char *args[] = { "--config", t.path, NULL };
		char out[4096];
		int st = run_daemon(args, out, sizeof out);
		char want[256];
		snprintf(want, sizeof want, "%s:%d:", t.path, cases[i].line);
		cr_expect_eq(st, 78, "case %zu: exit %d (%s)", i, st, out);   /* EX_CONFIG */
		cr_expect(strstr(out, want), "case %zu: no \"%s\" in: %s", i, want, out);
		cr_expect(strstr(out, cases[i].what), "case %zu: no \"%s\" in: %s", i, cases[i].what, out);
		conf_remove(&t);
	}

	/* Flags are checked the same way; a missing --config file is an error. */
	char out[4096];
	const char *bad_flag[] = { "--max-inflight", "0", NULL };
	cr_expect_eq(run_daemon(bad_flag, out, sizeof out), 78);
	cr_expect(strstr(out, "--max-inflight"), "%s", out);
	const char *missing[] = { "--config", "/nonexistent/aneshared.conf", NULL };
	cr_expect_eq(run_daemon(missing, out, sizeof out), 78);
	cr_expect(strstr(out, "/nonexistent/aneshared.conf"), "%s", out);
	const char *hard[] = { "--drop-unsent-hard-bytes", "1M", "--max-frame", "2M", NULL };
	cr_expect_eq(run_daemon(hard, out, sizeof out), 78);
	cr_expect(strstr(out, "drop_unsent_hard_bytes"), "%s", out);
}

Test(access, default_config_file)
{
	/* $XDG_CONFIG_HOME/aneshare/aneshared.conf is read when it exists. */
	tmpconf t;
	conf_write(&t, "");
	char sub[256], path[320];
	snprintf(sub, sizeof sub, "%s/aneshare", t.dir);
	cr_assert_eq(mkdir(sub, 0700), 0);
	snprintf(path, sizeof path, "%s/aneshared.conf", sub);
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	fputs("max_programs = 0\n", f);
	fclose(f);
	setenv("XDG_CONFIG_HOME", t.dir, 1);
	char out[4096];
	const char *none[] = { NULL };
	int st = run_daemon(none, out, sizeof out);
	cr_expect_eq(st, 78, "%s", out);
	cr_expect(strstr(out, path), "%s", out);
	unlink(path);
	rmdir(sub);
	conf_remove(&t);
}

/* ---- limits in hello -------------------------------------------------------------- */

typedef struct limits_seen {
	uint64_t v[32];
	bool ok[32];
} limits_seen;

static const char *const limit_keys[] = {
	"max_frame", "max_fds_per_frame", "max_surfaces", "max_surface_bytes",
	"max_total_surface_bytes", "max_daemon_surface_bytes", "max_programs", "max_inflight",
	"max_mil_bytes", "max_weights", "max_weight_bytes", "max_rank", "max_dim", "max_tensor_bytes",
	"max_unsent_bytes", "drop_unsent_bytes", "drop_unsent_seconds", "drop_unsent_hard_bytes",
};
#define N_LIMIT_KEYS (sizeof limit_keys / sizeof limit_keys[0])

static void read_limits(const struct msgpack_object *result, void *ud)
{
	limits_seen *ls = ud;
	const msgpack_object *lim;
	if (anes_mp_map(result, "limits", 64, &lim) < 0)
		return;
	for (size_t i = 0; i < N_LIMIT_KEYS; i++)
		ls->ok[i] = anes_mp_u64(lim, limit_keys[i], UINT64_MAX, &ls->v[i]) == 0;
}

static uint64_t limit(const limits_seen *ls, const char *key)
{
	for (size_t i = 0; i < N_LIMIT_KEYS; i++)
		if (!strcmp(limit_keys[i], key)) {
			cr_assert(ls->ok[i], "hello does not announce %s", key);
			return ls->v[i];
		}
	cr_assert_fail("no key %s", key);
	return 0;
}

Test(access, hello_announces_limits)
{
	tmpconf t;
	conf_write(&t, "max_surfaces = 9\nmax_weight_bytes = 3M\nmax_inflight = 5\n");
	const char *args[] = { "--config", t.path, "--max-inflight", "7",
	                       "--max-daemon-surface-bytes", "5M", "--drop-unsent-seconds", "3", NULL };
	h_daemon_start_args(&D, args);
	conf_remove(&t);

	int fd = h_raw_connect(D.sock);
	cr_assert_geq(fd, 0);
	cr_assert_eq(h_raw_send_hello(fd, 1), 0);
	limits_seen ls = { 0 };
	cr_assert_eq(h_raw_response_cb(fd, 1, 5000, read_limits, &ls), 0);
	close(fd);

	cr_expect_eq(limit(&ls, "max_surfaces"), 9);            /* from the file */
	cr_expect_eq(limit(&ls, "max_weight_bytes"), 3u << 20);
	cr_expect_eq(limit(&ls, "max_inflight"), 7);            /* the flag wins */
	cr_expect_eq(limit(&ls, "max_daemon_surface_bytes"), 5u << 20);
	cr_expect_eq(limit(&ls, "drop_unsent_seconds"), 3);
	cr_expect_eq(limit(&ls, "max_rank"), 8);
	cr_expect_eq(limit(&ls, "max_dim"), 2147483647u);
	cr_expect_eq(limit(&ls, "max_tensor_bytes"), (uint64_t)2 << 30);
	cr_expect_eq(limit(&ls, "max_frame"), 64u << 20);
	cr_expect_gt(limit(&ls, "drop_unsent_hard_bytes"), limit(&ls, "max_frame"));
	for (size_t i = 0; i < N_LIMIT_KEYS; i++)
		cr_expect(ls.ok[i], "hello does not announce %s", limit_keys[i]);
	h_daemon_stop(&D);
}

/* ---- limits enforced -------------------------------------------------------------- */

Test(access, daemon_surface_memory)
{
	const char *args[] = { "--max-daemon-surface-bytes", "1M", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *a = h_connect(&D, "a"), *b = h_connect(&D, "b");
	aneshare_surface *sa, *sb, *sx = NULL;
	cr_assert_eq(aneshare_surface_create(a, 512 << 10, &sa), 0);
	cr_assert_eq(aneshare_surface_create(b, 512 << 10, &sb), 0);
	/* The daemon-wide cap, whoever asks. */
	int r = aneshare_surface_create(a, 4096, &sx);
	cr_expect_eq(r, -ANESHARE_ELIMIT, "%s", aneshare_strerror(r));
	cr_expect(strstr(aneshare_last_error(a), "daemon"), "%s", aneshare_last_error(a));
	r = aneshare_surface_create(b, 1, &sx);
	cr_expect_eq(r, -ANESHARE_ELIMIT, "%s", aneshare_strerror(r));
	/* Memory given back is available again. */
	cr_assert_eq(aneshare_surface_release(sb), 0);
	h_wait_counts(a, 1, 0);
	cr_assert_eq(aneshare_surface_create(a, 4096, &sx), 0);
	aneshare_surface_release(sx);
	aneshare_surface_release(sa);
	aneshare_disconnect(b);
	aneshare_disconnect(a);
	h_daemon_stop(&D);
}

Test(access, per_client_limits)
{
	const char *args[] = { "--max-surfaces", "2", "--max-programs", "1", "--max-weight-bytes", "1K",
	                       "--max-total-surface-bytes", "64K", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *c = h_connect(&D, "limits");
	aneshare_surface *s1, *s2, *s3;
	cr_assert_eq(aneshare_surface_create(c, 4096, &s1), 0);
	cr_assert_eq(aneshare_surface_create(c, 4096, &s2), 0);
	cr_expect_eq(aneshare_surface_create(c, 4096, &s3), -ANESHARE_ELIMIT);
	aneshare_surface_release(s2);
	cr_expect_eq(aneshare_surface_create(c, 64 << 10, &s3), -ANESHARE_ELIMIT);   /* bytes */

	char *mil = h_read_source("examples/dynamic_matmul.mil");
	aneshare_program *p, *p2;
	cr_assert_eq(aneshare_program_compile(c, mil, NULL, 0, &p, NULL), 0);
	/* Another program: over max_programs. */
	char *mil2 = malloc(strlen(mil) + 32);
	sprintf(mil2, "// another\n%s", mil);
	cr_expect_eq(aneshare_program_compile(c, mil2, NULL, 0, &p2, NULL), -ANESHARE_ELIMIT);
	aneshare_program_release(p);
	/* Inline weights over max_weight_bytes: invalid_params, before any
	 * compiling.  (Five blobs: with at most max_fds_per_frame, 4, the
	 * library would pass them as sealed memfds, which max_weight_bytes
	 * does not bound.) */
	static uint8_t blob[300];
	aneshare_weight w[5] = { { "@model_path/a.bin", blob, sizeof blob },
	                         { "@model_path/b.bin", blob, sizeof blob },
	                         { "@model_path/c.bin", blob, sizeof blob },
	                         { "@model_path/d.bin", blob, sizeof blob },
	                         { "@model_path/e.bin", blob, sizeof blob } };
	int r = aneshare_program_compile(c, mil2, w, 5, &p2, NULL);
	cr_expect_eq(r, -ANESHARE_EINVALID_PARAMS, "%s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_expect(strstr(aneshare_last_error(c), "max_weight_bytes"), "%s", aneshare_last_error(c));

	/* Rank over the MIL layer's max_rank (8): a compile error. */
	const char *rank9 =
		"program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, 1, 1, 1, 1, 1, 1, 1, 2]> x) {\n"
		"        tensor<fp16, [1, 1, 1, 1, 1, 1, 1, 1, 2]> y = identity(x = x)[name = string(\"y\")];\n"
		"    } -> (y);\n}\n";
	r = aneshare_program_compile(c, rank9, NULL, 0, &p2, NULL);
	cr_expect(r == -ANESHARE_ECOMPILE || r == -ANESHARE_EUNSUPPORTED, "rank 9: %s",
	          aneshare_strerror(r));
	free(mil2);
	free(mil);
	aneshare_surface_release(s1);
	h_wait_counts(c, 0, 0);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- a client that does not read ---------------------------------------------------- */

/* Pipeline status requests without ever reading, until the socket takes no
 * more (the daemon stopped reading us).  Returns the requests sent. */
static unsigned stuff_status_requests(int fd)
{
	cr_assert_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
	/* One request frame, sent many times. */
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	h_raw_frame(&sb, 7, "status", NULL, 0, 0);

	char *batch = malloc(sb.size * 256);
	for (int i = 0; i < 256; i++)
		memcpy(batch + i * sb.size, sb.data, sb.size);
	size_t blen = sb.size * 256, off = 0;
	unsigned long long sent = 0;
	int64_t deadline = tu_now_ms() + 20000;
	int idle_polls = 0;
	while (tu_now_ms() < deadline) {
		ssize_t n = send(fd, batch + off, blen - off, MSG_NOSIGNAL);
		if (n > 0) {
			sent += (size_t)n;
			off = (off + (size_t)n) % blen;
			idle_polls = 0;
			continue;
		}
		if (n < 0 && errno != EAGAIN)
			break;   /* already dropped */
		/* Full: wait a little for the daemon to take more; stop once it
		 * has not for a while (it stopped reading). */
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		if (poll(&p, 1, 200) == 0 && ++idle_polls >= 3)
			break;
	}
	free(batch);
	unsigned reqs = (unsigned)(sent / sb.size);
	msgpack_sbuffer_destroy(&sb);
	return reqs;
}

/* Read whatever arrives until EOF or an error; true if the daemon closed. */
static bool drained_to_eof(int fd, int timeout_ms)
{
	char buf[65536];
	int64_t deadline = tu_now_ms() + timeout_ms;
	while (tu_now_ms() < deadline) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			return true;
	}
	return false;
}

typedef struct good_client {
	aneshare_conn *c;
	aneshare_program *p;
	aneshare_surface *in, *out;
	h_mm mm;
	unsigned runs;
	int64_t worst_ms;
} good_client;

static void good_init(good_client *g)
{
	g->c = h_connect(&D, "good");
	char *mil = h_read_source("examples/dynamic_matmul.mil");
	cr_assert_eq(aneshare_program_compile(g->c, mil, NULL, 0, &g->p, NULL), 0);
	free(mil);
	cr_assert(h_mm_from_program(g->p, &g->mm));
	cr_assert_eq(aneshare_surface_create(g->c, g->mm.in_bytes, &g->in), 0);
	cr_assert_eq(aneshare_surface_create(g->c, g->mm.out_bytes, &g->out), 0);
}

/* One checked run and one status; tracks the slowest. */
static void good_step(good_client *g)
{
	int64_t t0 = tu_now_ms();
	h_mm_fill(&g->mm, aneshare_surface_data(g->in), g->runs + 1);
	int r = aneshare_run(g->p, 0, &g->in, 1, &g->out, 1);
	cr_assert_eq(r, 0, "the good client's run failed: %s", aneshare_strerror(r));
	double err = h_mm_error(&g->mm, aneshare_surface_data(g->in), aneshare_surface_data(g->out));
	cr_assert_leq(err, H_MM_TOL);
	aneshare_status_free(h_status(g->c));
	int64_t dt = tu_now_ms() - t0;
	if (dt > g->worst_ms)
		g->worst_ms = dt;
	g->runs++;
}

static void good_fini(good_client *g)
{
	aneshare_surface_release(g->in);
	aneshare_surface_release(g->out);
	aneshare_program_release(g->p);
	aneshare_disconnect(g->c);
}

static void slow_reader_case(const char *const *args, int max_drop_ms)
{
	h_daemon_start_args(&D, args);
	good_client g = { 0 };
	good_init(&g);
	h_wait_clients(g.c, 1);
	int fds0 = h_daemon_fds(&D);

	int bad = h_raw_open(D.sock);
	unsigned reqs = stuff_status_requests(bad);
	/* Enough to pass every cap: a status reply is several hundred bytes,
	 * so 256 of them are well over 64 KiB.  How many more go out depends
	 * on how fast the daemon reads: at the hard cap it drops the client
	 * as soon as its socket buffer and 64 KiB are full (once after 512). */
	cr_assert_geq(reqs, 256, "only %u requests went out", reqs);
	int64_t stuffed = tu_now_ms();

	/* The good client keeps working, unaffected, until the bad one is gone. */
	bool gone = false;
	while (tu_now_ms() - stuffed < (int64_t)max_drop_ms * h_slow()) {
		good_step(&g);
		aneshare_status *st = h_status(g.c);
		gone = st->clients == 1;
		aneshare_status_free(st);
		if (gone)
			break;
	}
	cr_assert(gone, "the client that does not read was not dropped within %d ms", max_drop_ms);
	for (int i = 0; i < 20; i++)
		good_step(&g);
	cr_expect_lt(g.worst_ms, 2000 * h_slow(), "the good client was stalled for %lld ms",
	             (long long)g.worst_ms);
	cr_expect(drained_to_eof(bad, 10000 * h_slow()), "the dropped connection was not closed");
	close(bad);
	cr_expect(log_has(&D, "dropped client"), "the drop is not logged");
	h_wait_daemon_fds(&D, fds0);
	good_fini(&g);
	h_daemon_stop(&D);
}

Test(access, slow_reader_dropped_after_timeout)
{
	const char *args[] = { "--max-unsent-bytes", "256K", "--drop-unsent-bytes", "128K",
	                       "--drop-unsent-seconds", "1", NULL };
	slow_reader_case(args, 10000);
}

Test(access, slow_reader_dropped_at_hard_cap)
{
	/* Never by time; the hard cap (64 KiB + 8, the lowest allowed with a
	 * 64 KiB max_frame) is reached right after reading stops. */
	const char *args[] = { "--max-frame", "64K", "--max-unsent-bytes", "64K",
	                       "--drop-unsent-bytes", "64K", "--drop-unsent-seconds", "86400",
	                       "--drop-unsent-hard-bytes", "65544", NULL };
	slow_reader_case(args, 10000);
}
