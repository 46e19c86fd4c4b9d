/* SPDX-License-Identifier: MIT */
/*
 * aneshared as a library: the listening socket, the connections, the objects
 * they own, the program cache and the worker threads.  main.c is a thin shell
 * over this.
 *
 * Threading: every function here except anes_server_stop must be called from
 * the thread that calls anes_server_run (or created the server).
 * Error convention: 0 on success, a negative errno code on failure; ret_*
 * out-parameters are written only on success.
 */
#ifndef ANES_SERVER_H
#define ANES_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* Limits on what clients control, announced in hello (docs/protocol.md,
 * Limits).  Per connection unless a comment says otherwise. */
typedef struct anes_limits {
	uint32_t max_frame;                /* payload bytes of one frame */
	uint32_t max_surfaces;             /* surfaces alive per connection */
	uint64_t max_surface_bytes;        /* size of one surface */
	uint64_t max_total_surface_bytes;  /* bytes of surfaces alive per client process */
	uint32_t max_programs;             /* program handles per connection */
	uint32_t max_inflight;             /* requests on worker threads per connection */
	uint32_t max_mil_bytes;            /* MIL text of one compile */
	uint32_t max_weights;              /* weight blobs of one compile */
	uint64_t max_weight_bytes;         /* weight bytes (all blobs) of one compile */
	uint32_t max_connections;          /* whole daemon; not announced */
	uint64_t max_daemon_surface_bytes; /* bytes of surfaces alive, whole daemon */
	uint64_t max_unsent_bytes;         /* stop reading a client with this much output pending */
	/* Drop a client whose unsent output stays above drop_unsent_bytes for
	 * drop_unsent_seconds (0: at once), or would exceed drop_unsent_hard_bytes. */
	uint64_t drop_unsent_bytes;
	uint32_t drop_unsent_seconds;
	uint64_t drop_unsent_hard_bytes;
	/* Per client process (all its connections together; daemon/state/tenant.h)
	 * and for all clients together. */
	uint64_t max_client_surfaces, max_daemon_surfaces;
	uint64_t max_client_fds, max_daemon_fds;           /* fds kept for surfaces */
	uint64_t max_client_programs, max_daemon_programs; /* program handles */
	uint64_t max_client_program_bytes, max_daemon_program_bytes;
	uint64_t max_client_jobs, max_daemon_jobs;         /* runs and compiles queued */
	/* Buffers (conn.c): receive memory of frames over 64 KiB (the daemon's
	 * is max_input_bytes below) and responses queued, not yet sent. */
	uint64_t max_client_input_bytes;
	uint64_t max_client_unsent_bytes, max_daemon_unsent_bytes;
	/* Per uid (all processes of one user together; 0: the daemon-wide
	 * limit), for each of the resources above. */
	uint64_t max_uid_surfaces, max_uid_surface_bytes, max_uid_fds, max_uid_programs,
	         max_uid_program_bytes, max_uid_jobs, max_uid_input_bytes, max_uid_unsent_bytes;
	/* Input (docs/protocol.md, Limits): the payload of a frame before hello;
	 * the bytes that frames larger than 64 KiB may hold in receive buffers,
	 * whole daemon (over it, reading such a frame pauses until there is
	 * room); the time from a connection's start to its hello, and from a
	 * frame's first byte to its last (0: none; time the daemon itself did
	 * not read the connection does not count). */
	uint32_t max_hello_frame;
	uint64_t max_input_bytes;
	uint32_t hello_timeout_ms;
	uint32_t frame_timeout_ms;
	/* Tokens (surface.export, docs/protocol.md "Sharing surfaces"): live
	 * tokens per connection and of the whole daemon, imports one token
	 * allows, and its longest life. */
	uint32_t max_exports_per_conn;
	uint32_t max_daemon_exports;
	uint32_t max_export_uses;
	uint32_t max_export_ttl_ms;
	/* Events (docs/protocol.md "Events"): handles per connection, events
	 * alive in the daemon, pending event.wait requests per connection. */
	uint32_t max_events_per_conn;
	uint32_t max_daemon_events;
	uint32_t max_event_waits;
} anes_limits;

typedef struct anes_server_config {
	/* Socket path; NULL = anes_default_socket_path().  Ignored for binding
	 * when listen_fd >= 0 (then it is only used in messages). */
	const char *socket_path;
	/* A socket already bound and listening (socket activation), or -1 to
	 * create one.  The server takes ownership of it in anes_server_new (also
	 * on failure).  With an inherited socket there is no lock file and the
	 * socket file is not unlinked at shutdown: whoever made it owns it. */
	int listen_fd;
	/* Worker threads for compiles and runs; 0 = 2. */
	unsigned workers;
	bool lanes;            /* lane threads read idle connections (lanes.c) */
	unsigned lane_threads; /* how many (0: as many as workers) */
	uint32_t lane_run_max_us; /* ... and run a request there if its programs' runs
	                           * lately took at most this long (else: the loop) */
	uint32_t lane_spin_us;    /* a lane thread that answered a request polls its socket
	                           * this long for the next one (0: never; lanes.c, lane_spin) */
	/* The scheduler's slice (docs/protocol.md, "Scheduling"): a client with
	 * a compile waiting goes first while it has had at most this much device
	 * time over its share, and a lane thread serves one client at most this
	 * long (anes_clock_ns) before it lets the others' requests go first. */
	uint32_t sched_slice_us;
	/* Borrowed: must outlive the server and is not destroyed by it. */
	anes_backend *backend;
	anes_limits limits;
	/* Install SIGINT/SIGTERM handlers on the loop that stop the server. */
	bool handle_signals;
	/* Log one line per connect/disconnect to stderr; errors are logged always. */
	bool verbose;
	/* Peers are accepted if their uid (SO_PEERCRED / getpeereid) is the
	 * daemon's effective uid or one of these (borrowed, must outlive the
	 * server); everyone else is disconnected at once. */
	const uint32_t *allow_uids;
	size_t n_allow_uids;
	/* Uids whose clients may ask for the interactive scheduling class
	 * (borrowed, like allow_uids; docs/protocol.md, "Scheduling"). */
	const uint32_t *interactive_uids;
	size_t n_interactive_uids;
	/* After a stop request: how long requests in flight may take to finish
	 * before the rest are failed with shutting_down (milliseconds). */
	uint32_t shutdown_timeout_ms;
	/* Test hook (--fault-inject run_fail=NAME): runs of functions named
	 * this fail with run_failed.  NULL: off.  Borrowed. */
	const char *fault_run_fail;
	/* Test hook (--fault-inject run_gate=/PATH): every run step first reads
	 * one byte from the FIFO at PATH, so a test lets runs through one at a
	 * time and observes the order of device work without a clock.  NULL:
	 * off.  Borrowed. */
	const char *fault_run_gate;
} anes_server_config;

typedef struct anes_server anes_server;

/* The defaults of docs/protocol.md; listen_fd -1, workers 0, backend NULL. */
void anes_server_config_init(anes_server_config *cfg);

/* The default socket path (docs/protocol.md, Transport).  On success
 * *ret is a malloc'd string owned by the caller. */
int anes_default_socket_path(char **ret);

/* Raise the soft RLIMIT_NOFILE to what the system allows (the hard limit;
 * on macOS at most OPEN_MAX, which setrlimit enforces even when the hard
 * limit is unlimited).  0 with *ret_old and *ret_new (both the same when
 * nothing changed); -EMFILE when the limit it ends with is below
 * ANES_MIN_NOFILE, the fds the daemon needs to start and serve a client.
 * Call before anything is opened. */
#define ANES_MIN_NOFILE 64
int anes_raise_nofile(uint64_t *ret_old, uint64_t *ret_new);

/* Socket activation: if systemd passed a listening socket (LISTEN_PID is us,
 * LISTEN_FDS >= 1), return 1 with *ret_fd = 3 made CLOEXEC and non-blocking
 * and the LISTEN_* variables removed from the environment; 0 if the daemon
 * was not socket-activated; a negative errno if the passed fd is unusable. */
int anes_listen_fd_from_env(int *ret_fd);

/* Create the server: the socket directory (mode 0700), the lock file
 * PATH.lock, the listening socket, the worker threads.  Nothing is accepted
 * until anes_server_run.  On failure a one-line reason is written to errbuf
 * (always NUL-terminated when errbuf_len > 0), e.g. -EADDRINUSE when another
 * daemon holds the lock.  On success *ret is owned by the caller. */
int anes_server_new(const anes_server_config *cfg, anes_server **ret, char *errbuf,
                    size_t errbuf_len);

/* Serve until anes_server_stop (or a signal with handle_signals).  On return
 * every connection is closed, the workers are joined and the socket file and
 * lock file are gone.  Returns 0 or a negative errno. */
int anes_server_run(anes_server *srv);

/* Make anes_server_run return (or, before it runs, return at once).  The
 * first request stops accepting and lets requests in flight finish, for up
 * to shutdown_timeout_ms (answering new requests with shutting_down); a
 * second one, or the timeout, fails what is left with shutting_down and
 * closes everything.  Safe from any thread and from signal handlers, but only
 * until anes_server_run has returned. */
void anes_server_stop(anes_server *srv);

/* The socket path in use (owned by the server). */
const char *anes_server_socket_path(const anes_server *srv);

/* Free the server (stopping it first if it still runs).  Accepts NULL;
 * returns NULL. */
anes_server *anes_server_free(anes_server *srv);

#endif
