/* SPDX-License-Identifier: MIT */
/* The default socket path (anes_sockpath.h). */
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anes_sockpath.h"

static bool set(const char *s)
{
	return s && *s;
}

/* Length of s without trailing slashes (but "/" stays "/"). */
static int trimmed(const char *s)
{
	size_t n = strlen(s);
	while (n > 1 && s[n - 1] == '/')
		n--;
	return n > (size_t)INT_MAX ? INT_MAX : (int)n;
}

int anes_socket_path_for(const anes_sockpath_env *env, char **ret_path)
{
	char *p = NULL;
	int r;
	if (set(env->socket)) {
		p = strdup(env->socket);
		r = p ? 0 : -1;
	} else if (env->macos) {
		if (!set(env->home))
			return -ENOENT;
		r = asprintf(&p, "%.*s/Library/Application Support/aneshare/aneshare.sock",
		             trimmed(env->home), env->home);
	} else if (set(env->xdg_runtime)) {
		r = asprintf(&p, "%.*s/aneshare/aneshare.sock", trimmed(env->xdg_runtime), env->xdg_runtime);
	} else {
		const char *tmp = set(env->tmpdir) ? env->tmpdir : "/tmp";
		r = asprintf(&p, "%.*s/aneshare-%u/aneshare.sock", trimmed(tmp), tmp, env->uid);
	}
	if (r < 0)
		return -ENOMEM;
	*ret_path = p;
	return 0;
}

/* The home directory: $HOME if absolute, else the password database
 * (copied into buf).  NULL if neither. */
static const char *home_dir(char *buf, size_t len)
{
	const char *h = getenv("HOME");
	if (h && h[0] == '/')
		return h;
	struct passwd pw, *res = NULL;
	char tmp[4096];
	if (getpwuid_r(getuid(), &pw, tmp, sizeof tmp, &res) != 0 || !res || !pw.pw_dir ||
	    pw.pw_dir[0] != '/' || strlen(pw.pw_dir) >= len)
		return NULL;
	memcpy(buf, pw.pw_dir, strlen(pw.pw_dir) + 1);
	return buf;
}

int anes_socket_path_default(char **ret_path)
{
	char home[1024];
	anes_sockpath_env env = {
#ifdef __APPLE__
		.macos = true,
#else
		.macos = false,
#endif
		.socket = getenv("ANESHARE_SOCKET"),
		.xdg_runtime = getenv("XDG_RUNTIME_DIR"),
		.tmpdir = getenv("TMPDIR"),
		.home = NULL,
		.uid = (unsigned)getuid(),
	};
	if (env.macos && !set(env.socket))
		env.home = home_dir(home, sizeof home);
	return anes_socket_path_for(&env, ret_path);
}

int anes_socket_path_check(const char *path)
{
	return strlen(path) <= ANES_SOCKET_PATH_MAX ? 0 : -ENAMETOOLONG;
}
