/* SPDX-License-Identifier: MIT */
/*
 * aneshare service install|uninstall|status: puts the daemon under the user's
 * service manager, socket-activated:
 *
 *   Linux: aneshare.socket + aneshare.service in $XDG_CONFIG_HOME/systemd/user
 *          (~/.config/systemd/user), then `systemctl --user daemon-reload` and
 *          `systemctl --user enable --now aneshare.socket`.
 *   macOS: ~/Library/LaunchAgents/com.aneshare.aneshared.plist, then
 *          `launchctl bootstrap gui/UID PLIST`; logs in ~/Library/Logs/aneshare.
 *
 * The text of the files is the templates in daemon/systemd/ and launchd/,
 * embedded at build time (anes_service_templates.h, client/meson.build); their
 * @NAME@ placeholders are filled in here, escaped for the file's syntax.
 *
 * --root DIR stands in for the home directory and starts nothing, so tests
 * never touch the real one.  With the test hooks (-Dtest_hooks=true),
 * $ANESHARE_SYSTEMCTL and $ANESHARE_LAUNCHCTL replace the service-manager
 * programs, and either one, when set, is run on any platform for its kind of
 * files (a stand-in launchctl on Linux).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __APPLE__
#include <mach-o/dyld.h>
#endif

#include "anes_config.h"
#include "anes_service_templates.h"
#include "anes_proto.h"   /* anes_test_hook_env */
#include "anes_sockpath.h"
#include "aneshare.h"
#include "cli_service.h"

extern char **environ;

#define LAUNCHD_LABEL "com.aneshare.aneshared"
#define PROBE_TIMEOUT_MS 10000   /* status: a socket-activated daemon may still be starting */
#define MAX_UNIT_BYTES (1u << 20)

/* ---- a growable string ------------------------------------------------------ */

typedef struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
} sbuf;

static void sb_addn(sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_adds(sbuf *b, const char *s)
{
	sb_addn(b, s, strlen(s));
}

static void sb_addc(sbuf *b, char c)
{
	sb_addn(b, &c, 1);
}

/* The string (caller frees), or NULL after an allocation failure. */
static char *sb_take(sbuf *b)
{
	if (b->oom || !b->p) {
		free(b->p);
		*b = (sbuf){ 0 };
		return b->oom ? NULL : strdup("");
	}
	char *p = b->p;
	*b = (sbuf){ 0 };
	return p;
}

/* ---- escaping ------------------------------------------------------------- */

static bool valid_utf8(const unsigned char *s)
{
	while (*s) {
		unsigned n = *s < 0x80 ? 0 : (*s & 0xe0) == 0xc0 ? 1 : (*s & 0xf0) == 0xe0 ? 2 :
		             (*s & 0xf8) == 0xf0 ? 3 : 4;
		if (n == 4 || (n == 1 && *s < 0xc2))
			return false;
		s++;
		for (unsigned i = 0; i < n; i++, s++)
			if ((*s & 0xc0) != 0x80)
				return false;
	}
	return true;
}

static bool has_control(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

/* One word of a systemd command line (systemd.syntax(7) "Quoting"): in
 * double quotes if it holds a space; '%' doubled (a specifier otherwise),
 * and '$' doubled too where dollars (the word is an argument, which systemd
 * expands ${NAME} in at start; "$$" is a literal '$').  The caller has
 * refused quotes, backslashes and control characters. */
static void systemd_word(sbuf *b, const char *s, bool dollars)
{
	bool quote = strchr(s, ' ') != NULL;
	if (quote)
		sb_addc(b, '"');
	for (const char *p = s; *p; p++) {
		if (*p == '%')
			sb_adds(b, "%%");
		else if (*p == '$' && dollars)
			sb_adds(b, "$$");
		else
			sb_addc(b, *p);
	}
	if (quote)
		sb_addc(b, '"');
}

/* The daemon's path as the start of ExecStart= (systemd.service(5),
 * "Command lines").  systemd unquotes the first word, expands its
 * specifiers, and refuses an executable path with quotes, a backslash or
 * control characters; a line that is not UTF-8 it drops altogether.  It
 * never expands variables in the executable path, only in the arguments,
 * argv[0] (a copy of the path) included.  So a path with a '$' is written
 * "@PATH ARGV0": PATH with its '$' as is, ARGV0 with it doubled.
 * NULL in *ret_why, or why the path cannot be written. */
static int systemd_exec_path(const char *s, char **ret, const char **ret_why)
{
	*ret_why = NULL;
	if (!valid_utf8((const unsigned char *)s))
		*ret_why = "is not valid UTF-8 (systemd ignores a unit line that is not)";
	else if (has_control(s))
		*ret_why = "contains control characters (systemd refuses them in a command)";
	else if (strpbrk(s, "\"'\\"))
		*ret_why = "contains a quote or a backslash (systemd refuses them in the path of a command)";
	if (*ret_why)
		return -EINVAL;
	sbuf b = { 0 };
	if (strchr(s, '$')) {
		sb_addc(&b, '@');
		systemd_word(&b, s, false);
		sb_addc(&b, ' ');
		systemd_word(&b, s, true);
	} else {
		systemd_word(&b, s, false);
	}
	*ret = sb_take(&b);
	return *ret ? 0 : -ENOMEM;
}

/* A path as a file:// URI in a systemd setting: percent-encoded, '%' doubled. */
static int systemd_uri_path(const char *s, char **ret)
{
	sbuf b = { 0 };
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		    strchr("/-._~", *p)) {
			sb_addc(&b, (char)*p);
		} else {
			char hex[8];
			snprintf(hex, sizeof hex, "%%%%%02X", *p);
			sb_adds(&b, hex);
		}
	}
	*ret = sb_take(&b);
	return *ret ? 0 : -ENOMEM;
}

/* Text for an XML element.  -EINVAL for control characters or bad UTF-8. */
static int xml_text(const char *s, char **ret)
{
	if (has_control(s) || !valid_utf8((const unsigned char *)s))
		return -EINVAL;
	sbuf b = { 0 };
	for (const char *p = s; *p; p++) {
		switch (*p) {
		case '&': sb_adds(&b, "&amp;"); break;
		case '<': sb_adds(&b, "&lt;"); break;
		case '>': sb_adds(&b, "&gt;"); break;
		case '"': sb_adds(&b, "&quot;"); break;
		case '\'': sb_adds(&b, "&apos;"); break;
		default: sb_addc(&b, *p);
		}
	}
	*ret = sb_take(&b);
	return *ret ? 0 : -ENOMEM;
}

/* ---- templates ------------------------------------------------------------ */

typedef struct tvar {
	const char *name;
	const char *value;   /* already escaped for the file */
} tvar;

/* Fill in @NAME@ from vars.  An unknown @NAME@ is a bug in a template:
 * -EINVAL with its name in *bad. */
static int render(const char *tmpl, const tvar *vars, size_t n, char **ret, const char **bad)
{
	sbuf b = { 0 };
	const char *p = tmpl;
	for (;;) {
		const char *at = strchr(p, '@');
		if (!at) {
			sb_adds(&b, p);
			break;
		}
		sb_addn(&b, p, (size_t)(at - p));
		size_t len = strspn(at + 1, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_");
		if (len == 0 || at[1 + len] != '@') {
			sb_addc(&b, '@');
			p = at + 1;
			continue;
		}
		size_t i;
		for (i = 0; i < n; i++)
			if (strlen(vars[i].name) == len && !memcmp(vars[i].name, at + 1, len))
				break;
		if (i == n) {
			*bad = at;
			free(sb_take(&b));
			return -EINVAL;
		}
		sb_adds(&b, vars[i].value);
		p = at + len + 2;
	}
	*ret = sb_take(&b);
	return *ret ? 0 : -ENOMEM;
}

/* ---- paths -------------------------------------------------------------- */

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;
	va_start(ap, fmt);
	int r = vasprintf(&p, fmt, ap);
	va_end(ap);
	return r < 0 ? NULL : p;
}

/* path made absolute against the working directory (not resolved: a stable
 * symlink such as a package manager's bin/ entry stays one). */
static char *absolute(const char *path)
{
	if (path[0] == '/')
		return strdup(path);
	char cwd[PATH_MAX];
	if (!getcwd(cwd, sizeof cwd))
		return NULL;
	return xasprintf("%s/%s", cwd, path);
}

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		return strdup(".");
	if (slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

static bool is_executable_file(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

static char *self_exe(void)
{
#if defined(__linux__)
	char buf[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
	if (n <= 0)
		return NULL;
	buf[n] = '\0';
	return strdup(buf);
#elif defined(__APPLE__)
	/* The path it was started by, symlinks kept: Homebrew's bin/ links
	 * survive upgrades, the Cellar paths they point to do not. */
	char buf[PATH_MAX];
	uint32_t size = sizeof buf;
	if (_NSGetExecutablePath(buf, &size) != 0)
		return NULL;
	return absolute(buf);
#else
	return NULL;
#endif
}

/* Where this program's layout puts aneshared (newly allocated, NULL without
 * memory or this program's path): 0, next to it (an install: bin/aneshare,
 * bin/aneshared); 1, in a build tree: build/client/aneshare,
 * build/daemon/aneshared. */
static char *daemon_near_self(int which)
{
	char *self = self_exe(), *dir = self ? dir_of(self) : NULL, *p = NULL;
	free(self);
	if (dir && which == 0) {
		p = xasprintf("%s/aneshared", dir);
	} else if (dir) {
		char *up = dir_of(dir);
		p = up ? xasprintf("%s/daemon/aneshared", strcmp(up, "/") ? up : "") : NULL;
		free(up);
	}
	free(dir);
	return p;
}

/* The daemon the service runs: --daemon, else aneshared next to this
 * program, else the one of its build tree, else in the install prefix. */
static int find_daemon(const char *opt, char **ret)
{
	if (opt) {
		char *p = absolute(opt);
		if (!p)
			return fail("%s: %s", opt, strerror(errno));
		if (!is_executable_file(p)) {
			int r = fail("--daemon %s: not an executable file", p);
			free(p);
			return r;
		}
		*ret = p;
		return 0;
	}
	char *cand[3] = { daemon_near_self(0), daemon_near_self(1),
		          xasprintf("%s/aneshared", ANES_BINDIR) };
	int found = -1;
	for (int i = 0; i < 3 && found < 0; i++)
		if (cand[i] && is_executable_file(cand[i]))
			found = i;
	if (found >= 0) {
		*ret = cand[found];
		cand[found] = NULL;
	} else {
		fail("cannot find aneshared (looked for %s, %s and %s): pass --daemon PATH",
		     cand[0] ? cand[0] : "aneshared next to this program",
		     cand[1] ? cand[1] : "daemon/aneshared in its build tree",
		     cand[2] ? cand[2] : ANES_BINDIR);
	}
	for (int i = 0; i < 3; i++)
		free(cand[i]);
	return found >= 0 ? 0 : EXIT_FAILURE;
}

/* mkdir -p; the last component gets mode, the others 0755. */
static int mkdir_p(const char *path, mode_t mode)
{
	char *p = strdup(path);
	if (!p)
		return -ENOMEM;
	int r = 0;
	for (char *s = p + 1;; s++) {
		bool last = *s == '\0';
		if (*s != '/' && !last)
			continue;
		*s = '\0';
		if (mkdir(p, last ? mode : 0755) < 0) {
			struct stat st;
			if (errno != EEXIST || stat(p, &st) < 0 || !S_ISDIR(st.st_mode)) {
				r = errno == EEXIST ? -ENOTDIR : -errno;
				break;
			}
		}
		if (last)
			break;
		*s = '/';
	}
	free(p);
	return r;
}

static bool exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

/* Write via a temporary file and rename, so a reader never sees half a unit. */
static int write_atomic(const char *path, const char *data)
{
	char *tmp = xasprintf("%s.tmp.%ld", path, (long)getpid());
	if (!tmp)
		return -ENOMEM;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		int r = -errno;
		free(tmp);
		return r;
	}
	int r = 0;
	size_t len = strlen(data);
	while (len && r == 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			r = -errno;
		else {
			data += n;
			len -= (size_t)n;
		}
	}
	/* launchd refuses agents writable by others; do not depend on the umask. */
	if (r == 0 && fchmod(fd, 0644) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	free(tmp);
	return r;
}

/* The file's contents (NUL-terminated) or NULL with errno set. */
static char *read_small_file(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return NULL;
	sbuf b = { 0 };
	char buf[4096];
	ssize_t n;
	while ((n = read(fd, buf, sizeof buf)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || b.len + (size_t)n > MAX_UNIT_BYTES) {
			int e = n < 0 ? errno : EFBIG;
			free(sb_take(&b));
			close(fd);
			errno = e;
			return NULL;
		}
		sb_addn(&b, buf, (size_t)n);
	}
	close(fd);
	char *s = sb_take(&b);
	if (!s)
		errno = ENOMEM;
	return s;
}

/* ---- running the service manager -------------------------------------------- */

static int pipe_cloexec(int fds[2])
{
	if (pipe(fds) < 0)
		return -errno;
	for (int i = 0; i < 2; i++)
		if (fcntl(fds[i], F_SETFD, FD_CLOEXEC) < 0) {
			int r = -errno;
			close(fds[0]);
			close(fds[1]);
			return r;
		}
	return 0;
}

static void print_cmd(const char *prefix, char *const argv[])
{
	printf("%s", prefix);
	for (size_t i = 0; argv[i]; i++)
		printf("%s%s", i ? " " : "", argv[i]);
	printf("\n");
}

/* Run argv (looked up in PATH) with stdin from /dev/null; its stdout and
 * stderr together go to *ret_out (NUL-terminated, trailing newlines cut).
 * Returns its exit status (>= 0; 128 + signal if killed), or -errno if it
 * could not be started (-ENOENT: not installed). */
static int run(char *const argv[], char **ret_out)
{
	int fds[2];
	*ret_out = NULL;
	int r = pipe_cloexec(fds);
	if (r < 0)
		return r;
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
	posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
	pid_t pid;
	fflush(stdout);
	int e = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[1]);
	if (e != 0) {
		close(fds[0]);
		return -e;
	}
	sbuf b = { 0 };
	char buf[1024];
	ssize_t n;
	while ((n = read(fds[0], buf, sizeof buf)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		if (b.len < 64 * 1024)
			sb_addn(&b, buf, (size_t)n);
	}
	close(fds[0]);
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	char *out = sb_take(&b);
	if (out) {
		size_t len = strlen(out);
		while (len && (out[len - 1] == '\n' || out[len - 1] == '\r'))
			out[--len] = '\0';
	}
	*ret_out = out;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Print a command's output, indented. */
static void print_output(const char *out)
{
	if (!out || !*out)
		return;
	const char *p = out;
	while (*p) {
		size_t n = strcspn(p, "\n");
		printf("    %.*s\n", (int)n, p);
		p += n;
		if (*p)
			p++;
	}
}

/* Run and print the command and its output; returns as run(). */
static int run_verbose(char *const argv[], char **ret_out)
{
	print_cmd("running: ", argv);
	int r = run(argv, ret_out);
	if (r < 0)
		printf("    cannot run %s: %s\n", argv[0], strerror(-r));
	else
		print_output(*ret_out);
	return r;
}

/* ---- the service ------------------------------------------------------------ */

typedef enum svc_kind { KIND_SYSTEMD, KIND_LAUNCHD } svc_kind;

typedef struct svc_file {
	const char *name;
	const char *tmpl;
} svc_file;

static const svc_file systemd_files[] = {
	{ "aneshare.socket", ANES_TMPL_SYSTEMD_SOCKET },
	{ "aneshare.service", ANES_TMPL_SYSTEMD_SERVICE },
};
static const svc_file launchd_files[] = {
	{ LAUNCHD_LABEL ".plist", ANES_TMPL_LAUNCHD_PLIST },
};

typedef struct svc {
	svc_kind kind;
	bool native;          /* this OS's kind: the service manager may be run */
	bool start;           /* native and no --root */
	bool dry_run;
	const char *root;
	const svc_file *files;
	size_t n_files;
	char *home;
	char *dir;            /* where the files go */
	char *paths[2];       /* dir/files[i].name */
	char *log_dir;        /* launchd */
	char *sock;           /* the socket the service listens on */
	char *sock_dir;       /* launchd: made at install, launchd binds in it */
	char *daemon;         /* absolute path of aneshared, or NULL */
	const char *systemctl, *launchctl;
	char domain[32];      /* launchd: gui/UID */
	char target[96];      /* launchd: gui/UID/LABEL */
} svc;

static void svc_free(svc *s)
{
	free(s->home);
	free(s->dir);
	for (size_t i = 0; i < 2; i++)
		free(s->paths[i]);
	free(s->log_dir);
	free(s->sock);
	free(s->sock_dir);
	free(s->daemon);
}

/* A test hook's value (NULL if unset or empty); always NULL without the
 * test hooks. */
static const char *env_abs(const char *name)
{
	const char *v = getenv(name);
	return v && v[0] == '/' ? v : NULL;
}

/* Work out every path.  Returns 0 or an exit status. */
static int svc_init(svc *s, svc_kind kind, const char *root, const char *socket_path)
{
#ifdef __APPLE__
	const svc_kind native = KIND_LAUNCHD;
#else
	const svc_kind native = KIND_SYSTEMD;
#endif
	const char *systemctl = anes_test_hook_env("ANESHARE_SYSTEMCTL");
	const char *launchctl = anes_test_hook_env("ANESHARE_LAUNCHCTL");
	s->kind = kind;
	s->native = kind == native || (kind == KIND_SYSTEMD ? systemctl : launchctl) != NULL;
	s->start = s->native && !root && !s->dry_run;
	s->files = kind == KIND_SYSTEMD ? systemd_files : launchd_files;
	s->n_files = kind == KIND_SYSTEMD ? 2 : 1;
	s->systemctl = systemctl ? systemctl : "systemctl";
	s->launchctl = launchctl ? launchctl : "launchctl";
	snprintf(s->domain, sizeof s->domain, "gui/%u", (unsigned)getuid());
	snprintf(s->target, sizeof s->target, "%s/%s", s->domain, LAUNCHD_LABEL);

	if (root) {
		s->home = absolute(root);
	} else if (env_abs("HOME")) {
		s->home = strdup(env_abs("HOME"));
	} else {
		struct passwd *pw = getpwuid(getuid());
		if (!pw || !pw->pw_dir || pw->pw_dir[0] != '/')
			return fail("cannot tell the home directory: set HOME");
		s->home = strdup(pw->pw_dir);
	}
	if (!s->home)
		return fail("out of memory");

	if (kind == KIND_SYSTEMD) {
		if (!root && env_abs("XDG_CONFIG_HOME"))
			s->dir = xasprintf("%s/systemd/user", env_abs("XDG_CONFIG_HOME"));
		else
			s->dir = xasprintf("%s/.config/systemd/user", s->home);
		/* The units' ListenStream: %t is $XDG_RUNTIME_DIR, /run/user/UID by default. */
		if (socket_path)
			s->sock = absolute(socket_path);
		else if (env_abs("XDG_RUNTIME_DIR"))
			s->sock = xasprintf("%s/aneshare/aneshare.sock", env_abs("XDG_RUNTIME_DIR"));
		else
			s->sock = xasprintf("/run/user/%u/aneshare/aneshare.sock", (unsigned)getuid());
	} else {
		s->dir = xasprintf("%s/Library/LaunchAgents", s->home);
		s->log_dir = xasprintf("%s/Library/Logs/aneshare", s->home);
		const char *env_sock = getenv("ANESHARE_SOCKET");
		if (socket_path) {
			s->sock = absolute(socket_path);
		} else if (env_sock && *env_sock) {
			s->sock = absolute(env_sock);
		} else {
			/* The macOS default, under this home (--root's, on any platform). */
			anes_sockpath_env env = { .macos = true, .home = s->home, .uid = (unsigned)getuid() };
			if (anes_socket_path_for(&env, &s->sock) < 0)
				return fail("out of memory");
		}
		if (!s->log_dir || !s->sock || !(s->sock_dir = dir_of(s->sock)))
			return fail("out of memory");
	}
	if (!s->dir || !s->sock)
		return fail("out of memory");
	for (size_t i = 0; i < s->n_files; i++)
		if (!(s->paths[i] = xasprintf("%s/%s", s->dir, s->files[i].name)))
			return fail("out of memory");
	return 0;
}

/* The files' text for s->daemon: texts[i] for files[i].  Returns 0 or an exit status. */
static int svc_render(const svc *s, char **texts)
{
	char *daemon = NULL, *docdir = NULL, *sock = NULL, *logdir = NULL;
	int r;
	const char *what = "the daemon's path";
	if (s->kind == KIND_SYSTEMD) {
		const char *why;
		r = systemd_exec_path(s->daemon, &daemon, &why);
		if (r == -EINVAL)
			return fail("the daemon's path %s %s: install or link aneshared elsewhere and pass "
			            "--daemon PATH", s->daemon, why);
		if (r == 0)
			r = systemd_uri_path(ANES_DOCDIR, &docdir);
	} else {
		r = xml_text(s->daemon, &daemon);
		if (r == 0) {
			what = "the socket path";
			r = xml_text(s->sock, &sock);
		}
		if (r == 0) {
			what = "the home directory";
			r = xml_text(s->log_dir, &logdir);
		}
	}
	if (r < 0) {
		free(daemon);
		free(docdir);
		free(sock);
		free(logdir);
		if (r == -ENOMEM)
			return fail("out of memory");
		return fail("%s contains characters a %s file cannot hold (control characters or "
		            "invalid UTF-8)", what, s->kind == KIND_SYSTEMD ? "unit" : "plist");
	}
	const tvar vars[] = {
		{ "ANESHARED", daemon },
		{ "DOCDIR", docdir ? docdir : "" },
		{ "SOCKET", sock ? sock : "" },
		{ "LOGDIR", logdir ? logdir : "" },
	};
	int rc = 0;
	for (size_t i = 0; i < s->n_files; i++) {
		const char *bad = NULL;
		r = render(s->files[i].tmpl, vars, sizeof vars / sizeof vars[0], &texts[i], &bad);
		if (r < 0) {
			rc = r == -ENOMEM ? fail("out of memory")
			                  : fail("bug: the template of %s has an unknown placeholder %.20s",
			                         s->files[i].name, bad);
			for (size_t j = 0; j < i; j++) {
				free(texts[j]);
				texts[j] = NULL;
			}
			break;
		}
	}
	free(daemon);
	free(docdir);
	free(sock);
	free(logdir);
	return rc;
}

static const char *systemd_start_hint =
	"systemctl --user daemon-reload && systemctl --user enable --now aneshare.socket";

static void print_launchd_hint(const svc *s)
{
	printf("  launchctl bootstrap %s '%s'\n", s->domain, s->paths[0]);
}

/* ---- install -------------------------------------------------------------- */

static int systemd_start(const svc *s)
{
	char *out = NULL;
	char *reload[] = { (char *)s->systemctl, "--user", "daemon-reload", NULL };
	int r = run_verbose(reload, &out);
	if (r != 0) {
		printf("\nNo user systemd instance is reachable here (%s), so nothing was started.\n"
		       "The units are installed in %s; in a session with a user systemd, start "
		       "them with:\n  %s\n",
		       r == -ENOENT ? "systemctl is not installed"
		       : r < 0      ? "systemctl could not be run"
		                    : "systemctl --user daemon-reload failed",
		       s->dir, systemd_start_hint);
		free(out);
		return 0;
	}
	free(out);
	char *enable[] = { (char *)s->systemctl, "--user", "enable", "--now", "aneshare.socket", NULL };
	r = run_verbose(enable, &out);
	free(out);
	if (r != 0)
		return fail("could not enable aneshare.socket (see above); the units are in %s", s->dir);
	/* A daemon already running from an older install picks up the new unit. */
	char *restart[] = { (char *)s->systemctl, "--user", "try-restart", "aneshare.service", NULL };
	r = run_verbose(restart, &out);
	free(out);
	if (r != 0)
		printf("note: could not restart a running aneshare.service (see above)\n");
	printf("aneshare.socket is enabled and listening on %s;\n"
	       "aneshared starts on the first connection (logs: journalctl --user -u aneshare)\n",
	       s->sock);
	return 0;
}

static bool launchd_loaded(const svc *s)
{
	char *out = NULL;
	char *print[] = { (char *)s->launchctl, "print", (char *)s->target, NULL };
	int r = run(print, &out);
	free(out);
	return r == 0;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* launchctl's exit status when bootstrap runs while a bootout of the same
 * service is still being torn down ("Bootstrap failed: 5: Input/output
 * error"); it succeeds once launchd has finished. */
#define LAUNCHCTL_EIO 5
#define BOOTSTRAP_TRIES 6     /* waits of 100, 200, 400, 800, 1600 ms: 3.1 s in all */

static int launchd_start(const svc *s)
{
	char *out = NULL;
	int r;
	bool booted_out = false;
	if (launchd_loaded(s)) {
		/* Reload: the running agent has the old plist. */
		char *bootout[] = { (char *)s->launchctl, "bootout", (char *)s->target, NULL };
		r = run_verbose(bootout, &out);
		free(out);
		if (r != 0)
			return fail("could not unload the running agent %s (see above)", s->target);
		booted_out = true;
	}
	char *bootstrap[] = { (char *)s->launchctl, "bootstrap", (char *)s->domain, s->paths[0], NULL };
	unsigned wait_ms = 100;
	for (int i = 0;; i++) {
		r = run_verbose(bootstrap, &out);
		free(out);
		out = NULL;
		if (r != LAUNCHCTL_EIO || !booted_out || i + 1 == BOOTSTRAP_TRIES)
			break;
		printf("    launchd is still unloading the old agent: trying again in %u ms\n", wait_ms);
		sleep_ms(wait_ms);
		wait_ms *= 2;
	}
	if (r != 0) {
		fail("launchctl bootstrap failed (see above); the agent is in %s.\n"
		     "Outside a graphical login session (e.g. over ssh) there is no %s domain: "
		     "log in at the Mac, then run:", s->dir, s->domain);
		print_launchd_hint(s);
		return EXIT_FAILURE;
	}
	printf("%s is loaded and listening on %s (logs: %s)\n", LAUNCHD_LABEL, s->sock, s->log_dir);
	return 0;
}

static int cmd_install(svc *s)
{
	if (s->kind == KIND_LAUNCHD && anes_socket_path_check(s->sock) < 0)
		return fail("the socket path %s is %zu bytes, longer than the %zu a Unix socket path can "
		            "hold: pass a shorter --socket PATH (or set ANESHARE_SOCKET)",
		            s->sock, strlen(s->sock), (size_t)ANES_SOCKET_PATH_MAX);
	char *texts[2] = { NULL, NULL };
	int rc = svc_render(s, texts);
	if (rc)
		return rc;

	if (s->dry_run) {
		if (!exists(s->dir))
			printf("would create %s\n", s->dir);
		if (s->kind == KIND_LAUNCHD) {
			if (!exists(s->log_dir))
				printf("would create %s\n", s->log_dir);
			if (!exists(s->sock_dir))
				printf("would create %s (mode 0700)\n", s->sock_dir);
		}
		for (size_t i = 0; i < s->n_files; i++)
			printf("would write %s:\n%s%s", s->paths[i], texts[i],
			       i + 1 < s->n_files ? "\n" : "");
		if (s->native && !s->root) {
			if (s->kind == KIND_SYSTEMD) {
				printf("would run: %s --user daemon-reload\n", s->systemctl);
				printf("would run: %s --user enable --now aneshare.socket\n", s->systemctl);
			} else {
				printf("would run: %s bootstrap %s %s\n", s->launchctl, s->domain, s->paths[0]);
			}
		}
		goto out;
	}

	int r = mkdir_p(s->dir, 0755);
	if (r < 0) {
		rc = fail("cannot create %s: %s", s->dir, strerror(-r));
		goto out;
	}
	if (s->kind == KIND_LAUNCHD) {
		r = mkdir_p(s->log_dir, 0755);
		if (r < 0) {
			rc = fail("cannot create %s: %s", s->log_dir, strerror(-r));
			goto out;
		}
		/* launchd binds the socket when the agent loads: the directory must
		 * exist, private as the daemon would make it. */
		r = mkdir_p(s->sock_dir, 0700);
		struct stat st;
		if (r < 0 || lstat(s->sock_dir, &st) < 0) {
			rc = fail("cannot create %s: %s", s->sock_dir, strerror(r < 0 ? -r : errno));
			goto out;
		}
		if (st.st_uid != geteuid() || (st.st_mode & 077))
			printf("warning: %s should be owned by you and private (mode 0700); "
			       "aneshared refuses it otherwise\n", s->sock_dir);
	}
	for (size_t i = 0; i < s->n_files; i++) {
		r = write_atomic(s->paths[i], texts[i]);
		if (r < 0) {
			rc = fail("cannot write %s: %s", s->paths[i], strerror(-r));
			goto out;
		}
		printf("wrote %s\n", s->paths[i]);
	}
	printf("the service runs %s\n", s->daemon);

	if (!s->start) {
		printf("not starting anything (%s); to start the service:\n",
		       s->root ? "--root given" : "these files are for another platform");
		if (s->kind == KIND_SYSTEMD)
			printf("  %s\n", systemd_start_hint);
		else
			print_launchd_hint(s);
		goto out;
	}
	rc = s->kind == KIND_SYSTEMD ? systemd_start(s) : launchd_start(s);
out:
	for (size_t i = 0; i < 2; i++)
		free(texts[i]);
	return rc;
}

/* ---- uninstall ------------------------------------------------------------ */

/* path is a socket file nothing listens on: launchd's, left behind when the
 * agent was unloaded (launchd does not remove a SockPathName). */
static bool stale_socket(const char *path)
{
	struct stat st;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode) || st.st_uid != geteuid() ||
	    strlen(path) >= sizeof sa.sun_path)
		return false;
	memcpy(sa.sun_path, path, strlen(path));
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0)
		return false;
	(void)fcntl(fd, F_SETFD, FD_CLOEXEC);
	bool stale = connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno == ECONNREFUSED;
	close(fd);
	return stale;
}

static int cmd_uninstall(svc *s)
{
	bool present[2] = { false, false }, any = false;
	for (size_t i = 0; i < s->n_files; i++)
		any |= present[i] = exists(s->paths[i]);
	char *wants = s->kind == KIND_SYSTEMD
	            ? xasprintf("%s/sockets.target.wants/aneshare.socket", s->dir) : NULL;
	struct stat st;
	bool wants_link = wants && lstat(wants, &st) == 0 && S_ISLNK(st.st_mode);

	if (s->dry_run) {
		if (s->native && !s->root) {
			if (s->kind == KIND_SYSTEMD)
				printf("would run: %s --user disable --now aneshare.socket aneshare.service\n",
				       s->systemctl);
			else
				printf("would run: %s bootout %s (if loaded)\n", s->launchctl, s->target);
		}
		for (size_t i = 0; i < s->n_files; i++)
			if (present[i])
				printf("would remove %s\n", s->paths[i]);
		if (wants_link)
			printf("would remove %s\n", wants);
		if (s->kind == KIND_LAUNCHD && exists(s->sock))
			printf("would remove %s (if nothing listens on it)\n", s->sock);
		if (!any)
			printf("nothing installed in %s\n", s->dir);
		free(wants);
		return 0;
	}

	int rc = 0;
	char *out = NULL;
	bool booted_out = false;
	if (s->start && s->kind == KIND_SYSTEMD && any) {
		char *disable[] = { (char *)s->systemctl, "--user", "disable", "--now",
		                    "aneshare.socket", "aneshare.service", NULL };
		if (run_verbose(disable, &out) != 0)
			printf("note: systemctl could not stop/disable the units (see above); "
			       "removing the files anyway\n");
		free(out);
		out = NULL;
	} else if (s->start && s->kind == KIND_LAUNCHD && launchd_loaded(s)) {
		char *bootout[] = { (char *)s->launchctl, "bootout", (char *)s->target, NULL };
		if (run_verbose(bootout, &out) != 0)
			rc = fail("could not unload %s (see above); removing the plist anyway", s->target);
		else
			booted_out = true;
		free(out);
		out = NULL;
	}
	for (size_t i = 0; i < s->n_files; i++) {
		if (!present[i])
			continue;
		if (unlink(s->paths[i]) < 0 && errno != ENOENT)
			rc = fail("cannot remove %s: %s", s->paths[i], strerror(errno));
		else
			printf("removed %s\n", s->paths[i]);
	}
	/* Left behind by `enable` when systemctl could not disable. */
	if (wants && lstat(wants, &st) == 0 && S_ISLNK(st.st_mode)) {
		if (unlink(wants) < 0)
			rc = fail("cannot remove %s: %s", wants, strerror(errno));
		else
			printf("removed %s\n", wants);
	}
	free(wants);
	/* launchd may close its listening socket a moment after bootout returns. */
	for (int i = 0; booted_out && i < 10 && exists(s->sock) && !stale_socket(s->sock); i++)
		sleep_ms(100);
	if (s->kind == KIND_LAUNCHD && stale_socket(s->sock)) {
		if (unlink(s->sock) < 0 && errno != ENOENT)
			rc = fail("cannot remove %s: %s", s->sock, strerror(errno));
		else
			printf("removed %s\n", s->sock);
	}
	if (s->start && s->kind == KIND_SYSTEMD && any) {
		char *reload[] = { (char *)s->systemctl, "--user", "daemon-reload", NULL };
		run_verbose(reload, &out);
		free(out);
	}
	if (!any)
		printf("nothing installed in %s\n", s->dir);
	else if (s->kind == KIND_LAUNCHD)
		printf("logs kept in %s\n", s->log_dir);
	return rc;
}

/* ---- status --------------------------------------------------------------- */

/* Whether a daemon answers on path: a line for the user in buf.  The check
 * runs in a child with a deadline: a socket whose owner never accepts must
 * not hang `status`. */
static bool probe(const char *path, char *buf, size_t len)
{
	int fds[2];
	if (pipe_cloexec(fds) < 0) {
		snprintf(buf, len, "cannot check: %s", strerror(errno));
		return false;
	}
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(buf, len, "cannot check: fork: %s", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return false;
	}
	if (pid == 0) {
		close(fds[0]);
		char line[512];
		aneshare_conn *c = NULL;
		aneshare_status *st = NULL;
		int r = aneshare_connect(path, "aneshare-service-status", &c);
		if (r == 0)
			r = aneshare_get_status(c, &st);
		if (r == 0)
			snprintf(line, sizeof line, "Y aneshared %s (backend %s, up %llu s, %u clients)",
			         st->server_version, st->backend,
			         (unsigned long long)(st->uptime_ms / 1000), st->clients);
		else
			snprintf(line, sizeof line, "N %s%s%s", aneshare_strerror(r),
			         c && *aneshare_last_error(c) ? ": " : "", c ? aneshare_last_error(c) : "");
		if (st)
			aneshare_status_free(st);
		aneshare_disconnect(c);
		ssize_t n = write(fds[1], line, strlen(line));
		_exit(n < 0 ? 1 : 0);
	}
	close(fds[1]);
	char got[512];
	size_t n = 0;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	bool timed_out = false;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		long left = PROBE_TIMEOUT_MS - ((t.tv_sec - t0.tv_sec) * 1000 +
		                                (t.tv_nsec - t0.tv_nsec) / 1000000);
		if (left <= 0) {
			timed_out = true;
			break;
		}
		struct pollfd p = { fds[0], POLLIN, 0 };
		int pr = poll(&p, 1, (int)left);
		if (pr < 0 && errno != EINTR)
			break;
		if (pr <= 0)
			continue;
		ssize_t k = read(fds[0], got + n, sizeof got - 1 - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		n += (size_t)k;
		if (n == sizeof got - 1)
			break;
	}
	close(fds[0]);
	if (timed_out)
		kill(pid, SIGKILL);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	got[n] = '\0';
	if (timed_out) {
		snprintf(buf, len, "no answer within %d s (something holds the socket but does not serve)",
		         PROBE_TIMEOUT_MS / 1000);
		return false;
	}
	if (n < 2) {
		snprintf(buf, len, "the check failed");
		return false;
	}
	snprintf(buf, len, "%s", got + 2);
	return got[0] == 'Y';
}

static void systemd_state(const svc *s)
{
	char *out = NULL;
	char *probe_argv[] = { (char *)s->systemctl, "--user", "show-environment", NULL };
	int r = run(probe_argv, &out);
	free(out);
	if (r != 0) {
		printf("systemd: no user systemd instance is reachable (%s)\n",
		       r == -ENOENT ? "systemctl is not installed" : "systemctl --user failed");
		return;
	}
	const char *checks[][2] = {
		{ "is-enabled", "aneshare.socket" },
		{ "is-active", "aneshare.socket" },
		{ "is-active", "aneshare.service" },
	};
	for (size_t i = 0; i < 3; i++) {
		char *argv[] = { (char *)s->systemctl, "--user", (char *)checks[i][0],
		                 (char *)checks[i][1], NULL };
		r = run(argv, &out);
		const char *first = out && *out ? out : r < 0 ? strerror(-r) : "unknown";
		printf("systemd: %s %s: %.*s\n", checks[i][1], checks[i][0] + 3,
		       (int)strcspn(first, "\n"), first);
		free(out);
		out = NULL;
	}
}

static int cmd_status(svc *s)
{
	printf("%s in %s:\n", s->kind == KIND_SYSTEMD ? "systemd user units" : "launchd agent", s->dir);
	char *texts[2] = { NULL, NULL };
	bool compare = s->daemon && svc_render(s, texts) == 0;
	size_t installed = 0;
	for (size_t i = 0; i < s->n_files; i++) {
		char *cur = read_small_file(s->paths[i]);
		const char *state;
		if (!cur)
			state = errno == ENOENT ? "not installed" : "unreadable";
		else if (compare && strcmp(cur, texts[i]) != 0)
			state = "installed (differs from what install would write now)";
		else
			state = "installed";
		if (cur)
			installed++;
		printf("  %-30s %s\n", s->files[i].name, state);
		free(cur);
	}
	for (size_t i = 0; i < 2; i++)
		free(texts[i]);
	if (s->native && !s->root) {
		if (s->kind == KIND_SYSTEMD) {
			systemd_state(s);
		} else {
			printf("launchd: %s %s\n", s->target, launchd_loaded(s) ? "loaded" : "not loaded");
		}
	}
	char why[600];
	bool ok = probe(s->sock, why, sizeof why);
	printf("daemon: %s on %s: %s\n", ok ? "answers" : "does not answer", s->sock, why);
	return installed == s->n_files && ok ? 0 : EXIT_FAILURE;
}

/* ---- entry -------------------------------------------------------------------- */

int anes_cli_service(const char *socket_path, int argc, char **argv)
{
	if (argc < 1)
		return usage_error("service needs a command: install, uninstall or status");
	const char *cmd = argv[0];
	bool install = !strcmp(cmd, "install"), uninstall = !strcmp(cmd, "uninstall"),
	     status = !strcmp(cmd, "status");
	if (!install && !uninstall && !status)
		return usage_error("unknown service command '%s' (install, uninstall, status)", cmd);

	const char *daemon_opt = NULL, *root = NULL;
	bool dry_run = false;
#ifdef __APPLE__
	svc_kind kind = KIND_LAUNCHD;
#else
	svc_kind kind = KIND_SYSTEMD;
#endif
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--daemon") || !strcmp(a, "--root")) {
			if (i + 1 >= argc || !argv[i + 1][0])
				return usage_error("%s needs a path", a);
			*(a[2] == 'd' ? &daemon_opt : &root) = argv[++i];
		} else if (!strcmp(a, "--dry-run") && !status) {
			dry_run = true;
		} else if (!strcmp(a, "--systemd")) {
			kind = KIND_SYSTEMD;
		} else if (!strcmp(a, "--launchd")) {
			kind = KIND_LAUNCHD;
		} else {
			return usage_error("service %s: unknown argument '%s'", cmd, a);
		}
	}
	if (install && kind == KIND_SYSTEMD && socket_path)
		return usage_error("the systemd units listen on %%t/aneshare/aneshare.sock "
		                   "($XDG_RUNTIME_DIR/aneshare/aneshare.sock): "
		                   "--socket applies to service status only");

	svc s = { .dry_run = dry_run, .root = root };
	int rc = svc_init(&s, kind, root, socket_path);
	if (rc == 0 && (install || (status && daemon_opt)))
		rc = find_daemon(daemon_opt, &s.daemon);
	else if (rc == 0 && status) {
		/* Only to tell stale files; no complaint if not found. */
		for (int i = 0; i < 2 && !s.daemon; i++) {
			char *near = daemon_near_self(i);
			if (near && is_executable_file(near))
				s.daemon = near;
			else
				free(near);
		}
	}
	if (rc == 0)
		rc = install ? cmd_install(&s) : uninstall ? cmd_uninstall(&s) : cmd_status(&s);
	svc_free(&s);
	return rc;
}
