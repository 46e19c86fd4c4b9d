/* SPDX-License-Identifier: MIT */
/*
 * The server: socket directory, single-instance lock, listening socket,
 * accepting, and the orderly shutdown that leaves uv_loop_close() == 0.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#ifdef __APPLE__
#include <launch.h>   /* launch_activate_socket (libSystem) */
#endif

#include "anes_sockpath.h"
#include "daemon.h"
#include "event.h"
#include "run.h"

/* The machine's memory, or 16 GiB when it cannot be read. */
static uint64_t phys_bytes(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || psize <= 0)
		return 16ull << 30;
	return (uint64_t)pages * (uint64_t)psize;
}

void anes_server_config_init(anes_server_config *cfg)
{
	*cfg = (anes_server_config){
		.socket_path = NULL,
		.listen_fd = -1,
		.workers = 0,
		.lanes = true,
		.lane_run_max_us = 1000,
		.lane_spin_us = 50,
		.sched_slice_us = ANES_SCHED_SLICE_US,
		.backend = NULL,
		.limits = {
			.max_frame = ANES_FRAME_MAX_DEFAULT,
			.max_surfaces = 1024,
			.max_surface_bytes = 1ull << 30,
			/* Memory: fractions of the machine's, so that the daemon's
			 * limits together stay below it (docs/protocol.md, Limits). */
			.max_total_surface_bytes = phys_bytes() / 4,
			.max_programs = 256,
			.max_inflight = 64,
			.max_mil_bytes = 64u << 20,   /* ANES_MIL_DEFAULT_TEXT (daemon/mil/mil.h) */
			.max_weights = 256,
			.max_weight_bytes = 64u << 20,
			.max_connections = 256,
			.max_daemon_surface_bytes = phys_bytes() / 4,
			.max_unsent_bytes = 4u << 20,
			.drop_unsent_bytes = 4u << 20,
			.drop_unsent_seconds = 10,
			.drop_unsent_hard_bytes = 256u << 20,
			.max_client_surfaces = 0,   /* 0: max_surfaces (anes_server_new) */
			.max_daemon_surfaces = 65536,
			.max_client_fds = 0,        /* 0: max_client_surfaces */
			.max_daemon_fds = 65536,
			.max_client_programs = 0,   /* 0: max_programs */
			.max_daemon_programs = 65536,
			.max_client_program_bytes = phys_bytes() / 8 * 5,
			.max_daemon_program_bytes = phys_bytes() / 8 * 5,
			.max_client_jobs = 0,       /* 0: max_inflight */
			.max_daemon_jobs = 4096,
			.max_client_input_bytes = 0,   /* 0: max_frame + 8 */
			.max_client_unsent_bytes = 0,  /* 0: drop_unsent_hard_bytes */
			.max_daemon_unsent_bytes = 0,  /* 0: RAM / 16, at least the client's */
			/* max_uid_*: 0, the daemon-wide limit */
			.max_hello_frame = 64u << 10,
			.max_input_bytes = 256u << 20,
			.hello_timeout_ms = 10000,
			.frame_timeout_ms = 30000,
			.max_exports_per_conn = 256,
			.max_daemon_exports = 4096,
			.max_export_uses = 1024,
			.max_export_ttl_ms = 600000,
			.max_events_per_conn = 256,
			.max_daemon_events = 4096,
			.max_event_waits = 64,
		},
		.handle_signals = false,
		.verbose = false,
		.allow_uids = NULL,
		.n_allow_uids = 0,
		.shutdown_timeout_ms = 10000,
		.fault_run_fail = NULL,
		.fault_run_gate = NULL,
	};
}

static void errmsg(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errmsg(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	if (!buf || len == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

int anes_default_socket_path(char **ret)
{
	return anes_socket_path_default(ret);
}

static int set_cloexec_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0)
		return -errno;
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

int anes_listen_fd_from_env(int *ret_fd)
{
#ifdef __APPLE__
	/* launchd: the socket of the agent's Sockets/Listeners entry
	 * (launchd/com.aneshare.aneshared.plist.in).  ESRCH: not started by
	 * launchd; ENOENT: a launchd job without that socket (say launchd could
	 * not bind it): either way the daemon makes its own socket. */
	int *fds = NULL;
	size_t n = 0;
	int e = launch_activate_socket("Listeners", &fds, &n);
	if (e == ESRCH || e == ENOENT)
		return 0;
	if (e != 0)
		return -e;
	if (n == 0) {
		free(fds);
		return 0;
	}
	int fd = fds[0];
	for (size_t i = 1; i < n; i++)   /* one path, one fd; never leak extras */
		close(fds[i]);
	free(fds);
	struct stat st;
	int accepting = 0;
	socklen_t len = sizeof(accepting);
	int r;
	if (fstat(fd, &st) < 0)
		r = -errno;
	else if (!S_ISSOCK(st.st_mode))
		r = -ENOTSOCK;
	else if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) < 0)
		r = -errno;
	else if (!accepting)
		r = -EINVAL;
	else
		r = set_cloexec_nonblock(fd);
	if (r < 0) {
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 1;
#else
	const char *pid = getenv("LISTEN_PID");
	const char *fds = getenv("LISTEN_FDS");
	if (!pid || !fds)
		return 0;
	char *end;
	errno = 0;
	long lp = strtol(pid, &end, 10);
	if (errno || *end || lp != (long)getpid())
		return 0;
	errno = 0;
	long n = strtol(fds, &end, 10);
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	if (errno || *end || n < 1)
		return 0;
	const int fd = 3;  /* SD_LISTEN_FDS_START */
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISSOCK(st.st_mode))
		return -ENOTSOCK;
	int accepting = 0;
	socklen_t len = sizeof(accepting);
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) < 0)
		return -errno;
	if (!accepting)
		return -EINVAL;
	/* Extra fds (n > 1) are not ours to use: close them so they do not leak. */
	for (long i = 1; i < n && i < 64; i++)
		close(fd + (int)i);
	int r = set_cloexec_nonblock(fd);
	if (r < 0)
		return r;
	*ret_fd = fd;
	return 1;
#endif
}

/* ---- the fd limit ------------------------------------------------------------ */

int anes_raise_nofile(uint64_t *ret_old, uint64_t *ret_new)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -errno;
	rlim_t old = rl.rlim_cur, want = rl.rlim_max;
#ifdef __APPLE__
	/* The hard limit is often RLIM_INFINITY, but setrlimit refuses more
	 * than OPEN_MAX (and kern.maxfilesperproc): halve until it takes. */
	if (want == RLIM_INFINITY || want > OPEN_MAX)
		want = OPEN_MAX;
#endif
	if (want == RLIM_INFINITY)
		want = 1u << 20;
	rlim_t now = old;
	while (want > now) {
		rl.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &rl) == 0) {
			now = want;
			break;
		}
		want /= 2;
	}
	if (now < ANES_MIN_NOFILE)
		return -EMFILE;
	*ret_old = (uint64_t)old;
	*ret_new = (uint64_t)now;
	return 0;
}

/* ---- setting up ------------------------------------------------------------ */

static int prepare_dir(const char *path, char *errbuf, size_t errlen)
{
	const char *slash = strrchr(path, '/');
	char *dir = slash == path ? strdup("/") : slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
	if (!dir)
		return -ENOMEM;
	int r = 0;
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		r = -errno;
		errmsg(errbuf, errlen, "cannot create socket directory %s: %s%s", dir, strerror(-r),
		       r == -ENOENT ? " (its parent must exist: give --socket a path in one that does)" : "");
		goto out;
	}
	struct stat st;
	/* lstat: a symlink planted in a shared /tmp must not redirect us. */
	if (lstat(dir, &st) < 0) {
		r = -errno;
		errmsg(errbuf, errlen, "cannot stat socket directory %s: %s", dir, strerror(-r));
		goto out;
	}
	if (!S_ISDIR(st.st_mode)) {
		r = -ENOTDIR;
		errmsg(errbuf, errlen, "socket directory %s is not a directory", dir);
		goto out;
	}
	if (st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
		r = -EPERM;
		errmsg(errbuf, errlen,
		       "socket directory %s must be owned by uid %u and not accessible to group or others "
		       "(it is owned by uid %u, mode %04o): chmod 700 it if it is yours, or give --socket "
		       "a path in a directory of your own",
		       dir, (unsigned)geteuid(), (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
		goto out;
	}
out:
	free(dir);
	return r;
}

static int take_lock(anes_server *srv, char *errbuf, size_t errlen)
{
	int fd = open(srv->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		int r = -errno;
		errmsg(errbuf, errlen, "cannot open lock file %s: %s", srv->lock_path, strerror(-r));
		return r;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int r = -errno;
		if (r == -EWOULDBLOCK) {
			char buf[32] = "";
			ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
			long pid = n > 0 ? strtol(buf, NULL, 10) : 0;
			if (pid > 0)
				errmsg(errbuf, errlen, "another daemon is already listening on %s (pid %ld): "
				       "stop it first, or give this one another --socket PATH",
				       srv->socket_path, pid);
			else
				errmsg(errbuf, errlen, "another daemon is already listening on %s: "
				       "stop it first, or give this one another --socket PATH",
				       srv->socket_path);
			r = -EADDRINUSE;
		} else {
			errmsg(errbuf, errlen, "cannot lock %s: %s", srv->lock_path, strerror(-r));
		}
		close(fd);
		return r;
	}
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
		int r = -errno;
		errmsg(errbuf, errlen, "cannot write %s: %s", srv->lock_path, strerror(-r));
		close(fd);
		return r;
	}
	srv->lock_fd = fd;
	return 0;
}

static int open_listener(anes_server *srv, char *errbuf, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t len = strlen(srv->socket_path);
	if (len >= sizeof(sa.sun_path)) {
		errmsg(errbuf, errlen, "socket path %s is longer than %zu bytes", srv->socket_path,
		       sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, srv->socket_path, len);

	/* With the lock held, a file at the path is the stale socket of a daemon
	 * that died, unless something still accepts on it: a daemon started by
	 * systemd or launchd listens on a socket the service manager made and
	 * holds no lock.  Anything else is not ours to delete. */
	struct stat st;
	if (lstat(srv->socket_path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			errmsg(errbuf, errlen, "%s exists and is not a socket", srv->socket_path);
			return -EEXIST;
		}
#ifdef SOCK_CLOEXEC
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
#else
		int probe = socket(AF_UNIX, SOCK_STREAM, 0);
		if (probe >= 0)
			fcntl(probe, F_SETFD, FD_CLOEXEC);
#endif
		if (probe >= 0) {
			int live = connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
			close(probe);
			if (live) {
				errmsg(errbuf, errlen,
				       "%s is served by another daemon (started by a service manager?)",
				       srv->socket_path);
				return -EADDRINUSE;
			}
		}
		if (unlink(srv->socket_path) < 0 && errno != ENOENT) {
			int r = -errno;
			errmsg(errbuf, errlen, "cannot remove stale socket %s: %s", srv->socket_path,
			       strerror(-r));
			return r;
		}
	}

#ifdef SOCK_CLOEXEC
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
#else
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd >= 0 && set_cloexec_nonblock(fd) < 0) {
		close(fd);
		fd = -1;
	}
#endif
	if (fd < 0) {
		int r = -errno;
		errmsg(errbuf, errlen, "socket: %s", strerror(-r));
		return r;
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, SOMAXCONN) < 0) {
		int r = -errno;
		errmsg(errbuf, errlen, "cannot listen on %s: %s", srv->socket_path, strerror(-r));
		close(fd);
		return r;
	}
	srv->listen_fd = fd;
	srv->own_socket_file = true;
	return 0;
}

/* ---- accepting --------------------------------------------------------------- */

static int accept_fd(int lfd)
{
#ifdef SOCK_CLOEXEC
	return accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
#else
	int fd = accept(lfd, NULL, NULL);
	if (fd >= 0 && set_cloexec_nonblock(fd) < 0) {
		close(fd);
		errno = EIO;
		return -1;
	}
	return fd;
#endif
}

static void on_listen(uv_poll_t *h, int status, int events)
{
	anes_server *srv = h->data;

	if (status < 0) {
		anes_log("error: polling the listening socket: %s", uv_strerror(status));
		return;
	}
	/* Bounded, so that a connection storm cannot starve the clients. */
	for (int i = 0; i < 64; i++) {
		int fd = accept_fd(srv->listen_fd);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if ((errno == EMFILE || errno == ENFILE) && srv->reserve_fd >= 0) {
				/* Out of fds: the pending connection would keep the
				 * listener readable forever.  Use the reserve fd to
				 * accept it and close it at once. */
				close(srv->reserve_fd);
				srv->reserve_fd = -1;
				fd = accept_fd(srv->listen_fd);
				if (fd >= 0) {
					close(fd);
					srv->stats.turned_away++;
				}
				srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
				anes_log("error: out of file descriptors, dropped a connection");
				return;
			}
			anes_log("error: accept: %s", strerror(errno));
			return;
		}
		anes_conn_new(srv, fd);
	}
}

/* ---- stopping ---------------------------------------------------------------- */

/* Closing the socket resets connections still waiting in its backlog
 * (rather than leaving their hello unanswered until the daemon exits). */
static void on_listen_closed(uv_handle_t *h)
{
	anes_server *srv = h->data;
	if (srv->listen_fd >= 0)
		close(srv->listen_fd);
	srv->listen_fd = -1;
}

/* Refuse new clients: remove the name, stop accepting. */
static void stop_listening(anes_server *srv)
{
	if (srv->listen_closed)
		return;
	srv->listen_closed = true;
	uv_close((uv_handle_t *)&srv->listen_poll, on_listen_closed);
	if (srv->own_socket_file) {
		unlink(srv->socket_path);
		unlink(srv->lock_path);
	}
}

/* The end: fail whatever is still in flight with shutting_down, close every
 * connection and every handle, so that uv_run returns. */
static void server_shutdown(anes_server *srv)
{
	if (srv->shut_down || !srv->handles_init)
		return;
	stop_listening(srv);
	srv->draining = true;
	srv->shut_down = true;

	/* Joins the workers and delivers every outstanding completion: queued
	 * jobs are answered with shutting_down on the connections still open
	 * (as far as their sockets take it now), and the last references to
	 * surfaces, programs and connections go. */
	anes_events_drain(srv);   /* parked runs and waits: shutting_down */
	anes_pool_shutdown(srv->pool);
	srv->pool = NULL;
	anes_conn_lanes_orphan(srv);
	for (anes_conn *c = srv->conns; c; c = c->next)
		anes_conn_fail(c, NULL);
	anes_conn_run_deferred(srv);

	uv_close((uv_handle_t *)&srv->idle, NULL);
	uv_close((uv_handle_t *)&srv->stop_async, NULL);
	uv_close((uv_handle_t *)&srv->drain_timer, NULL);
	uv_close((uv_handle_t *)&srv->unsent_timer, NULL);
	pthread_mutex_lock(&srv->input_mu);
	srv->input_live = false;
	pthread_mutex_unlock(&srv->input_mu);
	uv_close((uv_handle_t *)&srv->input_async, NULL);
	uv_close((uv_handle_t *)&srv->input_timer, NULL);
	anes_shares_close(srv);
	if (srv->cfg.handle_signals) {
		uv_close((uv_handle_t *)&srv->sig_int, NULL);
		uv_close((uv_handle_t *)&srv->sig_term, NULL);
	}
}

static void on_drain_timeout(uv_timer_t *h)
{
	anes_server *srv = h->data;
	anes_log("shutdown: %u clients still had requests in flight after %u ms; failing them",
	         srv->n_conns, srv->cfg.shutdown_timeout_ms);
	server_shutdown(srv);
}

void anes_server_drain_check(anes_server *srv)
{
	if (!srv->draining || srv->shut_down)
		return;
	/* A connection with nothing in flight and nothing to send is done. */
	bool quiet = true;
	for (anes_conn *c = srv->conns; c; c = c->next) {
		if (c->failed || anes_conn_lane_recall(c) || anes_conn_predrain_unread(c)) {
			quiet = quiet && c->failed;
			continue;   /* more to do: it is coming back from its lane, or
			             * requests from before the drain are unread */
		}
		if (c->inflight == 0 && c->ev_waits == 0 && !anes_io_want_write(&c->io))
			anes_conn_fail(c, "the daemon is shutting down");
	}
	/* Only runs and waits for events are left: nothing can raise those
	 * events any more (docs/protocol.md, "Events"). */
	if (quiet && anes_events_only_parked(srv))
		anes_events_drain(srv);
}

void anes_server_drained(anes_server *srv)
{
	if (srv->draining && !srv->shut_down && srv->n_conns == 0)
		server_shutdown(srv);
}

/* First stop request: stop accepting, let requests in flight finish (new
 * ones are answered with shutting_down), close each connection when it has
 * nothing left; a second request or the timeout ends it all. */
static void server_drain(anes_server *srv)
{
	if (srv->shut_down || !srv->handles_init)
		return;
	if (srv->draining || srv->cfg.shutdown_timeout_ms == 0) {
		server_shutdown(srv);
		return;
	}
	/* Before draining is set: a lane worker that sees it set has read
	 * nothing past the mark. */
	for (anes_conn *c = srv->conns; c; c = c->next)
		anes_conn_drain_mark(c);
	srv->draining = true;
	stop_listening(srv);
	uv_timer_start(&srv->drain_timer, on_drain_timeout, srv->cfg.shutdown_timeout_ms, 0);
	anes_server_drain_check(srv);
	anes_conn_run_deferred(srv);
	anes_server_drained(srv);
}

static void on_stop(uv_async_t *h)
{
	server_drain(h->data);
}

static void on_signal(uv_signal_t *h, int signum)
{
	anes_server *srv = h->data;
	anes_log("received %s, %s", signum == SIGINT ? "SIGINT" : "SIGTERM",
	         srv->draining ? "stopping now" : "finishing requests in flight");
	server_drain(srv);
}

void anes_server_stop(anes_server *srv)
{
	uv_async_send(&srv->stop_async);
}

/* ---- life cycle ------------------------------------------------------------------ */

static void server_destroy(anes_server *srv, bool loop_init)
{
	if (loop_init) {
		server_shutdown(srv);
		if (srv->pool) {
			/* Only if setup failed after the pool but before the handles. */
			anes_pool_shutdown(srv->pool);
			srv->pool = NULL;
		}
		/* Runs the close callbacks of everything shut down above. */
		uv_run(&srv->loop, UV_RUN_DEFAULT);
		int r = uv_loop_close(&srv->loop);
		assert(r == 0);
		(void)r;
	}
	anes_cache_free(srv->cache);
	anes_tenants_cleanup(&srv->tenants);
	anes_run_jobs_free(srv);
	pthread_mutex_destroy(&srv->input_mu);
	if (srv->zone_init)
		msgpack_zone_destroy(&srv->zone);
	if (srv->listen_fd >= 0)
		close(srv->listen_fd);
	if (srv->lock_fd >= 0)
		close(srv->lock_fd);  /* after the unlink: a successor may lock the new file */
	if (srv->reserve_fd >= 0)
		close(srv->reserve_fd);
	if (srv->fault_gate_fd >= 0)
		close(srv->fault_gate_fd);
	free(srv->socket_path);
	free(srv->lock_path);
	free(srv);
}

/* The daemon keeps an fd per memfd surface (surface.c): keep the
 * surfaces' fds within the process's fd limit (minus the connections and a
 * margin for everything else), so that the last surface refused gets
 * `limit` and not EMFILE, and a client whose fd limit was not set takes at
 * most half of them, leaving room for the others. */
static void clamp_fd_limits(anes_server *srv)
{
	anes_limits *l = &srv->lim;
	bool derived = srv->cfg.limits.max_client_fds == 0;
	struct rlimit rl;
	if (anes_surface_keeps_fd(srv) && getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
	    rl.rlim_cur != RLIM_INFINITY) {
		uint64_t other = (uint64_t)l->max_connections + 64;
		uint64_t room = rl.rlim_cur > other + 64 ? rl.rlim_cur - other : 64;
		if (l->max_daemon_fds > room) {
			anes_log("max_daemon_fds lowered from %llu to %llu to fit the file descriptor "
			         "limit %llu (less the connections and a margin)",
			         (unsigned long long)l->max_daemon_fds, (unsigned long long)room,
			         (unsigned long long)rl.rlim_cur);
			l->max_daemon_fds = room;
		}
	}
	if (derived && l->max_client_fds > l->max_daemon_fds / 2)
		l->max_client_fds = l->max_daemon_fds / 2 ? l->max_daemon_fds / 2 : 1;
	if (l->max_client_fds > l->max_daemon_fds)
		l->max_client_fds = l->max_daemon_fds;
}

/* The pool delivers finished jobs in batches: their replies leave together. */
static void pool_batch_begin(void *ud)
{
	anes_conn_batch_begin(ud);
}

static void pool_batch_end(void *ud)
{
	anes_conn_batch_end(ud);
}

int anes_server_new(const anes_server_config *cfg, anes_server **ret, char *errbuf,
                    size_t errbuf_len)
{
	anes_server *srv;
	int r;
	bool loop_init = false;

	errmsg(errbuf, errbuf_len, "%s", "");
	srv = calloc(1, sizeof(*srv));
	if (!srv) {
		if (cfg->listen_fd >= 0)
			close(cfg->listen_fd);
		errmsg(errbuf, errbuf_len, "out of memory");
		return -ENOMEM;
	}
	srv->lock_fd = -1;
	srv->reserve_fd = -1;
	srv->fault_gate_fd = -1;
	pthread_mutex_init(&srv->input_mu, NULL);
	srv->listen_fd = cfg->listen_fd;
	srv->cfg = *cfg;
	srv->lim = cfg->limits;
	srv->backend = cfg->backend;
	if (srv->cfg.workers == 0)
		srv->cfg.workers = 2;
	if (srv->cfg.lane_threads == 0)
		srv->cfg.lane_threads = srv->cfg.workers;

	anes_limits *l = &srv->lim;
	/* A process gets what one connection gets, unless told otherwise. */
	if (l->max_client_surfaces == 0)
		l->max_client_surfaces = l->max_surfaces;
	if (l->max_client_fds == 0)
		l->max_client_fds = l->max_client_surfaces;
	if (l->max_client_programs == 0)
		l->max_client_programs = l->max_programs;
	if (l->max_client_jobs == 0)
		l->max_client_jobs = l->max_inflight;
	if (l->max_client_input_bytes == 0)
		l->max_client_input_bytes = (uint64_t)l->max_frame + ANES_FRAME_HEADER_SIZE;
	if (l->max_client_unsent_bytes == 0)
		l->max_client_unsent_bytes = l->drop_unsent_hard_bytes;
	if (l->max_daemon_unsent_bytes == 0) {
		l->max_daemon_unsent_bytes = phys_bytes() / 16;
		if (l->max_daemon_unsent_bytes < l->max_client_unsent_bytes)
			l->max_daemon_unsent_bytes = l->max_client_unsent_bytes;
	}
	if (cfg->fault_run_gate) {
		/* Read and write: the open does not wait for a writer, and reads
		 * block (never see end of file) while the test holds its end. */
		srv->fault_gate_fd = open(cfg->fault_run_gate, O_RDWR | O_CLOEXEC);
		if (srv->fault_gate_fd < 0) {
			r = -errno;
			errmsg(errbuf, errbuf_len, "--fault-inject run_gate: %s: %s", cfg->fault_run_gate,
			       strerror(errno));
			goto fail;
		}
	}
	if (!srv->backend || !srv->backend->ops) {
		errmsg(errbuf, errbuf_len, "no backend");
		r = -EINVAL;
		goto fail;
	}
	if (l->max_frame < ANES_FRAME_MAX_LOWEST || l->max_frame > ANES_FRAME_MAX_HIGHEST ||
	    l->max_surfaces == 0 || l->max_surface_bytes == 0 || l->max_total_surface_bytes == 0 ||
	    l->max_daemon_surface_bytes == 0 || l->max_programs == 0 || l->max_inflight == 0 ||
	    l->max_connections == 0 || l->max_unsent_bytes == 0 || l->drop_unsent_bytes == 0 ||
	    l->max_daemon_surfaces == 0 || l->max_daemon_programs == 0 || l->max_daemon_jobs == 0 ||
	    l->max_client_program_bytes == 0 || l->max_daemon_program_bytes == 0 ||
	    l->max_exports_per_conn == 0 || l->max_daemon_exports == 0 || l->max_export_uses == 0 ||
	    l->max_export_ttl_ms == 0 || l->max_events_per_conn == 0 || l->max_daemon_events == 0 ||
	    l->max_event_waits == 0 || srv->cfg.workers > 1024 || srv->cfg.lane_threads > 1024) {
		errmsg(errbuf, errbuf_len, "invalid limits (max_frame must be %u..%u, the others > 0)",
		       ANES_FRAME_MAX_LOWEST, ANES_FRAME_MAX_HIGHEST);
		r = -EINVAL;
		goto fail;
	}
	/* The largest frame must fit in the input memory; before hello no
	 * frame is larger than after it. */
	if (l->max_input_bytes < (uint64_t)l->max_frame + ANES_FRAME_HEADER_SIZE ||
	    l->max_hello_frame == 0) {
		errmsg(errbuf, errbuf_len, "max_input_bytes (%llu) must be at least max_frame + 8",
		       (unsigned long long)l->max_input_bytes);
		r = -EINVAL;
		goto fail;
	}
	if (srv->lim.max_hello_frame > l->max_frame)
		srv->lim.max_hello_frame = l->max_frame;
	/* One response (up to max_frame) to a client that reads must never
	 * trip the hard cap. */
	if (l->drop_unsent_hard_bytes < (uint64_t)l->max_frame + ANES_FRAME_HEADER_SIZE ||
	    l->drop_unsent_hard_bytes < l->drop_unsent_bytes ||
	    l->drop_unsent_hard_bytes < l->max_unsent_bytes) {
		errmsg(errbuf, errbuf_len,
		       "drop_unsent_hard_bytes (%llu) must be at least max_frame + 8, "
		       "drop_unsent_bytes and max_unsent_bytes",
		       (unsigned long long)l->drop_unsent_hard_bytes);
		r = -EINVAL;
		goto fail;
	}
	/* A client must always be able to send one largest frame and to be
	 * sent one largest response. */
	uint64_t one = (uint64_t)l->max_frame + ANES_FRAME_HEADER_SIZE;
	if (l->max_client_input_bytes < one || l->max_client_unsent_bytes < one ||
	    l->max_daemon_unsent_bytes < one) {
		errmsg(errbuf, errbuf_len, "max_client_input_bytes, max_client_unsent_bytes and "
		       "max_daemon_unsent_bytes must be at least max_frame + 8 (%llu)",
		       (unsigned long long)one);
		r = -EINVAL;
		goto fail;
	}

	if (cfg->socket_path) {
		srv->socket_path = strdup(cfg->socket_path);
		r = srv->socket_path ? 0 : -ENOMEM;
	} else {
		r = anes_default_socket_path(&srv->socket_path);
	}
	if (r < 0 || asprintf(&srv->lock_path, "%s.lock", srv->socket_path) < 0) {
		srv->lock_path = NULL;
		errmsg(errbuf, errbuf_len, "out of memory");
		r = -ENOMEM;
		goto fail;
	}
	srv->cfg.socket_path = srv->socket_path;

	if (srv->listen_fd < 0) {
		r = anes_socket_path_check(srv->socket_path);
		if (r < 0) {
			errmsg(errbuf, errbuf_len,
			       "the socket path %s is %zu bytes, longer than the %zu a Unix socket path can "
			       "hold: pass a shorter --socket PATH (or set ANESHARE_SOCKET)",
			       srv->socket_path, strlen(srv->socket_path), (size_t)ANES_SOCKET_PATH_MAX);
			goto fail;
		}
		r = prepare_dir(srv->socket_path, errbuf, errbuf_len);
		if (r < 0)
			goto fail;
		r = take_lock(srv, errbuf, errbuf_len);
		if (r < 0)
			goto fail;
		r = open_listener(srv, errbuf, errbuf_len);
		if (r < 0)
			goto fail;
	}
	srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	clamp_fd_limits(srv);
	anes_limits_uid_defaults(&srv->lim);
	if (l->max_uid_input_bytes < one || l->max_uid_unsent_bytes < one) {
		errmsg(errbuf, errbuf_len, "max_uid_input_bytes and max_uid_unsent_bytes must be at "
		       "least max_frame + 8 (%llu)", (unsigned long long)one);
		r = -EINVAL;
		goto fail;
	}
	anes_tenants_init(&srv->tenants, &srv->lim);
	/* Most runs of one program at once: each job worker and each lane
	 * thread may hold one of its run arenas (program memory). */
	srv->run_concurrency = srv->cfg.workers;
	srv->lane_concurrency = srv->cfg.lanes ? srv->cfg.lane_threads : 0;
	if (srv->backend->ops->worker_info) {
		/* The programs run in device worker processes, each on its own
		 * threads: the daemon's job and lane threads only wait for them. */
		anes_worker_info wi = { 0 };
		srv->backend->ops->worker_info(srv->backend, &wi);
		if (wi.threads) {
			srv->run_concurrency = wi.threads;
			srv->lane_concurrency = 0;
		}
	}

	r = anes_cache_new(srv, &srv->cache);
	if (r < 0 || !msgpack_zone_init(&srv->zone, 4096)) {
		errmsg(errbuf, errbuf_len, "out of memory");
		r = -ENOMEM;
		goto fail;
	}
	srv->zone_init = true;
	r = uv_loop_init(&srv->loop);
	if (r < 0) {
		errmsg(errbuf, errbuf_len, "uv_loop_init: %s", uv_strerror(r));
		r = -EIO;
		goto fail;
	}
	loop_init = true;
	const anes_pool_hooks hooks = { pool_batch_begin, pool_batch_end, srv };
	r = anes_pool_new(&srv->loop, srv->cfg.workers, srv->cfg.lanes ? srv->cfg.lane_threads : 0,
	                  (uint64_t)srv->cfg.sched_slice_us * 1000u, &hooks, &srv->pool);
	if (r < 0) {
		errmsg(errbuf, errbuf_len, "cannot start worker threads: %s", strerror(-r));
		goto fail;
	}

	/* None of these fail on Linux/macOS but for bad arguments; check anyway
	 * and initialise all of them before any can be closed. */
	int e1 = uv_poll_init(&srv->loop, &srv->listen_poll, srv->listen_fd);
	if (e1 < 0) {
		errmsg(errbuf, errbuf_len, "cannot poll the listening socket: %s", uv_strerror(e1));
		r = -EIO;
		goto fail;
	}
	uv_async_init(&srv->loop, &srv->stop_async, on_stop);
	uv_idle_init(&srv->loop, &srv->idle);
	uv_timer_init(&srv->loop, &srv->drain_timer);
	uv_timer_init(&srv->loop, &srv->unsent_timer);
	uv_async_init(&srv->loop, &srv->input_async, anes_conn_on_input_async);
	uv_timer_init(&srv->loop, &srv->input_timer);
	anes_shares_init(srv);
	srv->input_async.data = srv;
	srv->input_timer.data = srv;
	srv->input_live = true;
	srv->listen_poll.data = srv;
	srv->stop_async.data = srv;
	srv->idle.data = srv;
	srv->drain_timer.data = srv;
	srv->unsent_timer.data = srv;
	if (srv->cfg.handle_signals) {
		uv_signal_init(&srv->loop, &srv->sig_int);
		uv_signal_init(&srv->loop, &srv->sig_term);
		srv->sig_int.data = srv;
		srv->sig_term.data = srv;
		uv_signal_start(&srv->sig_int, on_signal, SIGINT);
		uv_signal_start(&srv->sig_term, on_signal, SIGTERM);
	}
	srv->handles_init = true;
	r = uv_poll_start(&srv->listen_poll, UV_READABLE, on_listen);
	if (r < 0) {
		errmsg(errbuf, errbuf_len, "cannot poll the listening socket: %s", uv_strerror(r));
		r = -EIO;
		goto fail;
	}
	if (l->hello_timeout_ms || l->frame_timeout_ms) {
		uint64_t tick = anes_conn_input_tick_ms(srv);
		uv_timer_start(&srv->input_timer, anes_conn_on_input_timer, tick, tick);
		uv_unref((uv_handle_t *)&srv->input_timer);   /* never keeps the loop alive by itself */
	}
	srv->start_ns = uv_hrtime();
	*ret = srv;
	return 0;

fail:
	if (srv->own_socket_file) {
		unlink(srv->socket_path);
		srv->own_socket_file = false;
	}
	if (srv->lock_fd >= 0)
		unlink(srv->lock_path);
	server_destroy(srv, loop_init);
	return r;
}

int anes_server_run(anes_server *srv)
{
	srv->running = true;
	int r = uv_run(&srv->loop, UV_RUN_DEFAULT);
	srv->running = false;
	(void)r;
	return 0;
}

const char *anes_server_socket_path(const anes_server *srv)
{
	return srv->socket_path;
}

anes_server *anes_server_free(anes_server *srv)
{
	if (!srv)
		return NULL;
	server_destroy(srv, true);
	return NULL;
}
