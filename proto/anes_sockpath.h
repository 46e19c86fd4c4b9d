/* SPDX-License-Identifier: MIT */
/*
 * The default socket path, one rule for the daemon, libaneshare and the CLI
 * (docs/protocol.md, "Transport"):
 *
 *   $ANESHARE_SOCKET, if set and not empty; else
 *   macOS:  ~/Library/Application Support/aneshare/aneshare.sock.  Not
 *           $TMPDIR: macOS deletes files there that have not been accessed
 *           for 3 days (confstr(3), _CS_DARWIN_USER_TEMP_DIR), and
 *           connecting to a socket does not count as access;
 *   others: $XDG_RUNTIME_DIR/aneshare/aneshare.sock, else
 *           ${TMPDIR:-/tmp}/aneshare-UID/aneshare.sock.
 *
 * A Unix socket path holds at most ANES_SOCKET_PATH_MAX bytes (sun_path less
 * its NUL: 103 on macOS, 107 on Linux); a longer one is refused with
 * -ENAMETOOLONG where it is used, never cut.
 */
#ifndef ANES_SOCKPATH_H
#define ANES_SOCKPATH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#define ANES_SOCKET_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

/* What the rule reads; every string may be NULL or empty (= unset). */
typedef struct anes_sockpath_env {
	bool macos;              /* the macOS rule */
	const char *socket;      /* $ANESHARE_SOCKET */
	const char *xdg_runtime; /* $XDG_RUNTIME_DIR */
	const char *tmpdir;      /* $TMPDIR */
	const char *home;        /* the home directory (macOS only) */
	unsigned uid;
} anes_sockpath_env;

/* The path the rule gives for env (*ret_path: caller frees).  Returns 0,
 * -ENOMEM, or -ENOENT on macOS without a home directory.  The length is not
 * checked (anes_socket_path_check). */
int anes_socket_path_for(const anes_sockpath_env *env, char **ret_path);

/* The same for this process: its platform, environment, uid, and its home
 * directory ($HOME if absolute, else the password database). */
int anes_socket_path_default(char **ret_path);

/* 0 if path fits a Unix socket address, else -ENAMETOOLONG. */
int anes_socket_path_check(const char *path);

#endif
