/* SPDX-License-Identifier: MIT */
/*
 * libaneshare: the client library of aneshare.
 *
 * Connect to aneshared, create shared-memory surfaces that both sides map
 * (tensor data is never copied through the socket), compile MIL programs in
 * the daemon and run them on surfaces.
 *
 * Conventions
 *  - Every function that can fail returns int: 0 (or a non-negative count) on
 *    success, a negative error code on failure.  Codes above -1000 are
 *    -errno values from the system; codes from -1001 to -9999 are
 *    -(ANESHARE_EBASE + the daemon's wire error code), see enum below;
 *    codes from -10001 down are the library's own (ANESHARE_EDISCONNECTED).
 *    aneshare_strerror() names all kinds.  The daemon's human message for
 *    the last failed call on a connection is aneshare_last_error().
 *  - Out-parameters (ret_*) are written only on success.
 *  - Ownership is stated at each declaration.  Objects created through a
 *    connection are owned by the caller and must be released before (or are
 *    invalidated by) aneshare_disconnect().
 *  - A connection and its objects are not thread-safe: use one connection
 *    per thread, or lock around it.
 *  - If the daemon dies or restarts, the library reconnects by itself and
 *    the caller's surfaces and programs carry on: see "reconnecting" below.
 */
#ifndef ANESHARE_H
#define ANESHARE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ANESHARE_API __attribute__((visibility("default")))
#else
#define ANESHARE_API
#endif

/* Error codes returned as negative values: -(ANESHARE_EBASE + wire code). */
#define ANESHARE_EBASE 1000
enum aneshare_error {
	ANESHARE_EPROTOCOL = ANESHARE_EBASE + 1,        /* malformed frame or message */
	ANESHARE_EVERSION = ANESHARE_EBASE + 2,         /* protocol version not supported */
	ANESHARE_EHANDSHAKE = ANESHARE_EBASE + 3,
	ANESHARE_EUNKNOWN_METHOD = ANESHARE_EBASE + 4,
	ANESHARE_EINVALID_PARAMS = ANESHARE_EBASE + 5,
	ANESHARE_ENO_SUCH_SURFACE = ANESHARE_EBASE + 6,
	ANESHARE_ENO_SUCH_PROGRAM = ANESHARE_EBASE + 7,
	ANESHARE_ENO_SUCH_FUNCTION = ANESHARE_EBASE + 8,
	ANESHARE_ELIMIT = ANESHARE_EBASE + 9,           /* a daemon resource limit */
	ANESHARE_ECOMPILE = ANESHARE_EBASE + 10,        /* the MIL text is invalid */
	ANESHARE_EUNSUPPORTED = ANESHARE_EBASE + 11,    /* valid MIL the backend can't run */
	ANESHARE_ESIZE_MISMATCH = ANESHARE_EBASE + 12,  /* surfaces don't fit the program */
	ANESHARE_EBAD_FD = ANESHARE_EBASE + 13,
	ANESHARE_ERUN_FAILED = ANESHARE_EBASE + 14,
	ANESHARE_ENO_MEMORY = ANESHARE_EBASE + 15,
	ANESHARE_EINTERNAL = ANESHARE_EBASE + 16,
	ANESHARE_ESHUTTING_DOWN = ANESHARE_EBASE + 17,  /* the daemon is stopping; the request was not done */
	ANESHARE_EWORKER_RESTARTED = ANESHARE_EBASE + 18, /* the device worker was lost and restarted; not done */
	ANESHARE_ENO_SUCH_STATE = ANESHARE_EBASE + 19,
	ANESHARE_ESTATE_LOST = ANESHARE_EBASE + 20,     /* the state's contents are unknown: reset it */
	ANESHARE_ENO_SUCH_EVENT = ANESHARE_EBASE + 21,
	ANESHARE_EEVENT_CLOSED = ANESHARE_EBASE + 22,   /* the event closed below the value waited for */

	/* The library's own codes, clear of the daemon's (wire codes 1-8999). */
	ANESHARE_EDISCONNECTED = ANESHARE_EBASE + 9001, /* connection lost: retryable */
};

/* A static string naming any code this library returns ("no_such_surface",
 * "disconnected", "Connection refused", ...).  Never NULL. */
ANESHARE_API const char *aneshare_strerror(int err);

/* True if the call that returned err may succeed when simply made again on
 * the same connection: -ANESHARE_EDISCONNECTED (see "reconnecting") and
 * -ANESHARE_ESHUTTING_DOWN (the daemon was stopping and did not do the
 * request; the next call reconnects to its successor) and
 * -ANESHARE_EWORKER_RESTARTED (the daemon's device worker was lost during the
 * call and is being restarted; the connection and its objects are intact).
 * Every other code is final for that call. */
ANESHARE_API bool aneshare_error_is_retryable(int err);

typedef struct aneshare_conn aneshare_conn;
typedef struct aneshare_surface aneshare_surface;
typedef struct aneshare_program aneshare_program;
typedef struct aneshare_state aneshare_state;
typedef struct aneshare_event aneshare_event;

/* ---- connection ---------------------------------------------------------- */

/* The socket path used when none is given (docs/protocol.md, "Transport"):
 * $ANESHARE_SOCKET if set, else
 * ~/Library/Application Support/aneshare/aneshare.sock (macOS), else
 * $XDG_RUNTIME_DIR/aneshare/aneshare.sock, else
 * ${TMPDIR:-/tmp}/aneshare-$UID/aneshare.sock.  Writes at most buf_len bytes
 * including the NUL; returns the length, -ENAMETOOLONG if it does not fit
 * buf, -ENOENT on macOS when the home directory is unknown, or -ENOMEM.
 * The path may still be too long for a Unix socket: aneshare_connect says so
 * with -ENAMETOOLONG. */
ANESHARE_API int aneshare_default_socket_path(char *buf, size_t buf_len);

/* Connect and perform the handshake.  socket_path NULL = the default path;
 * client_name (may be NULL) is shown in the daemon's logs.  Makes one
 * attempt (no reconnect loop): e.g. -ENOENT or -ECONNREFUSED if no daemon
 * listens, -ECONNRESET if it hangs up, -ENAMETOOLONG if the path is longer
 * than a Unix socket path holds (103 bytes on macOS, 107 on Linux).  Reconnecting is on for the new
 * connection, with the timeout from $ANESHARE_RECONNECT_TIMEOUT_MS (ms,
 * 0 to 3600000; anything else means the default, 5000).
 * On success *ret_conn is owned by the caller: aneshare_disconnect(). */
ANESHARE_API int aneshare_connect(const char *socket_path, const char *client_name,
                                  aneshare_conn **ret_conn);

/* Close the connection.  The daemon frees everything the connection owned.
 * Surfaces and programs of this connection that the caller has not released
 * are freed here too (their pointers become invalid).  Accepts NULL. */
ANESHARE_API void aneshare_disconnect(aneshare_conn *conn);

/* The daemon's (or the library's) message for the last failed call on conn,
 * or "" if none.  Every failing call sets it, local failures included;
 * successful calls leave it alone.  Owned by conn, valid until the next call
 * on conn.
 *
 * When the daemon closes the connection after saying why in an `error`
 * notification (a protocol error: a bug on this side), every later call
 * on it fails with the daemon's code (normally ANESHARE_EPROTOCOL) and
 * message; the library does not reconnect.  A notification with
 * ANESHARE_ELIMIT or ANESHARE_ENO_MEMORY (the daemon closed the connection
 * for its own resources or a deadline, docs/protocol.md "Limits") is not
 * final: the connection is broken as if the daemon had gone away.  When
 * the connection ends without one (the daemon died), see "reconnecting". */
ANESHARE_API const char *aneshare_last_error(const aneshare_conn *conn);

/* ---- reconnecting ----------------------------------------------------------
 *
 * When the connection ends without an `error` notification (EOF, reset or
 * EPIPE: the daemon was killed, crashed or restarted), the library marks it
 * broken and closes the socket:
 *  - runs in flight (submitted tickets, a blocking aneshare_run) fail with
 *    -ANESHARE_EDISCONNECTED: the run may or may not have happened, and its
 *    output surfaces may hold partial results.  Runs are never sent again
 *    by the library, because a run is not idempotent: an output that is
 *    also an input may already have been overwritten, the app may already
 *    have reused its surfaces, and a run that crashed the daemon would
 *    crash the next one too.  Make the run again if it makes sense.
 *  - the next call on the connection reconnects first: it connects to the
 *    same socket path again, retrying with a short backoff (5 ms doubling
 *    to 250 ms) until the reconnect timeout (default 5000 ms;
 *    $ANESHARE_RECONNECT_TIMEOUT_MS read by aneshare_connect, or
 *    aneshare_set_reconnect_timeout) has passed, says hello, imports every
 *    live surface again (the same memory: data written before the crash is
 *    still there, only the surface ID changes), compiles every live
 *    program again (the same MIL and weights, so the same key) and makes
 *    every live state again (zero-filled: its contents died with the old
 *    daemon, so runs on it fail with -ANESHARE_ESTATE_LOST until
 *    aneshare_state_reset), then makes the call.  If the daemon does not come back in time, the call fails
 *    with -ANESHARE_EDISCONNECTED (last_error says what the last attempt
 *    got), the connection stays broken and the next call tries again.
 *  - these calls are sent again after reconnecting (at most once) when the
 *    connection broke with them in flight, because doing them twice does no
 *    harm -- whatever the lost request created died with the old
 *    connection: aneshare_surface_create, aneshare_surface_import,
 *    aneshare_program_compile (which includes program.info),
 *    aneshare_state_create, aneshare_state_reset, aneshare_get_status.
 *    aneshare_surface_release, aneshare_program_release and
 *    aneshare_state_release never reconnect: on a broken connection they
 *    free the object locally and return 0 (the daemon freed its side with
 *    the old connection).
 *  - any request that the library could not write to the socket completely
 *    (the daemon cannot have acted on it) is written to the new connection
 *    after reconnecting, runs included.
 *  - aneshare_wait never reconnects; it returns the ticket's result.
 *  - a surface the new daemon refuses to import (e.g. over a lower limit),
 *    or a program it does not compile to the same key, is lost: its ID is 0,
 *    runs naming it fail with -ANESHARE_ENO_SUCH_SURFACE or
 *    -ANESHARE_ENO_SUCH_PROGRAM, and it still has to be released (a state
 *    the new daemon refuses, or whose program was released or lost: runs
 *    on it fail with -ANESHARE_ENO_SUCH_STATE).
 *  - events (see "events") are not restored: they lived in the old daemon,
 *    with their values and waiters.  Every later call on an event made
 *    before the reconnect fails with -ANESHARE_EEVENT_CLOSED (except
 *    aneshare_event_release, which frees it locally and returns 0), and a
 *    run naming one in its wait or signal list fails the same way before
 *    it is sent.  The app creates new events and exports them again.
 *  - aneshare_server() describes the new daemon afterwards.
 * The cost: the library keeps one fd (the memfd) per live surface, and per
 * live program a copy of its MIL text and what sends its weights again:
 * its weight fds (aneshare_program_compile on Linux: the sealed memfds it
 * put the inline weights in; aneshare_program_compile_fds: duplicates), or
 * a copy of its inline weights where no memfd was used.
 *
 * With reconnecting off, a broken connection stays broken: runs in flight
 * and every later call fail with -ECONNRESET (not retryable).
 */

/* Turn automatic reconnecting on (the default) or off.  Changes apply from
 * the next call; a connection that is already broken reconnects on the next
 * call once turned on.  0, or -EINVAL if conn is NULL. */
ANESHARE_API int aneshare_set_reconnect(aneshare_conn *conn, bool enable);

/* How long one call keeps trying to reconnect, in ms (0: a single attempt;
 * at most 3,600,000).  0 or -EINVAL. */
ANESHARE_API int aneshare_set_reconnect_timeout(aneshare_conn *conn, uint32_t timeout_ms);

/* The number of times conn has reconnected (0 if never, or conn is NULL):
 * when it changes, surface IDs have changed. */
ANESHARE_API uint64_t aneshare_reconnect_count(const aneshare_conn *conn);

/* ---- waiting: spin, then sleep ---------------------------------------------
 *
 * A blocking call (aneshare_run, aneshare_run_chain, aneshare_wait, every
 * request that waits for its reply) first polls the socket for up to
 * spin_us microseconds, then sleeps in the kernel until the reply comes.
 * A thread that sleeps on an otherwise idle CPU can take tens of
 * microseconds to wake (most of all on VMs, whose idle vCPUs halt); a
 * reply due within the spin arrives without that cost.  Polling costs this
 * thread's CPU time, so it stops by itself:
 *  - when the thread was taken off the CPU while polling (another thread,
 *    or the daemon itself, needed that CPU) for more than half the time it
 *    has polled (a thread that takes the CPU for a moment now and then,
 *    a timer, does not stop it), and
 *  - when nothing came within spin_us.
 * A stop of the first kind costs one poll and nothing after it.  After two
 * stops of the second kind in a row the next wait sleeps straight away,
 * then the next 2, 4, ... up to 64, before one polls again; a poll that gets
 * its reply halves that number (one such stop after a poll that got its
 * reply is usually a pause between bursts of calls).  So a connection whose
 * replies take longer than spin_us spins about 1 wait in 65.
 * Only a wait for the connection's one request in flight spins: while more
 * are outstanding (pipelining with tickets), waits sleep.  The pollable-fd
 * API (aneshare_fd, aneshare_dispatch) never spins.
 *
 * The default: $ANESHARE_SPIN_US (0 to 100000) when aneshare_connect runs,
 * else 1000; 0 if the calling thread may run on one CPU only.
 * The spin's time is read from the clock of proto/anes_clock.h; in builds
 * with the test hooks (-Dtest_hooks=true) a test may give it a fake one
 * through $ANESHARE_TEST_CLOCK, read by the process's first
 * aneshare_connect (which then fails with -errno if that file cannot be
 * mapped). */

/* Set conn's spin, in microseconds (0: never spin; at most 100000).  A new
 * value also forgets the penalty of earlier failed spins.  0, or -EINVAL. */
ANESHARE_API int aneshare_set_spin(aneshare_conn *conn, uint32_t spin_us);

/* conn's spin in microseconds (0 if conn is NULL). */
ANESHARE_API uint32_t aneshare_spin(const aneshare_conn *conn);

/* What the daemon said in the handshake.  Strings owned by conn (after a
 * reconnect, this describes the new daemon; strings returned before stay
 * valid until aneshare_disconnect). */
typedef struct aneshare_server_info {
	uint32_t protocol;           /* protocol version spoken */
	const char *server_version;  /* e.g. "0.1.0" */
	const char *backend;         /* "cpu" or "ane" */
	uint64_t max_frame;          /* bytes in one frame's payload */
	uint64_t max_surface_bytes;  /* bytes in one surface */
	uint32_t max_surfaces;       /* surfaces per connection */
	uint32_t max_programs;       /* program handles per connection */
	uint32_t max_inflight;       /* requests in flight before the daemon stops reading */
} aneshare_server_info;
ANESHARE_API const aneshare_server_info *aneshare_server(const aneshare_conn *conn);

/* ---- surfaces -------------------------------------------------------------- */

/* Ask the daemon for a shared-memory surface of size bytes, mapped into this
 * process read-write (zero-filled).  The library keeps the mapping and the
 * memfd (CLOEXEC), to hand it to a restarted daemon: each live surface costs
 * this process one file descriptor (raise RLIMIT_NOFILE for many surfaces).
 * On success *ret is owned by the caller: aneshare_surface_release(). */
ANESHARE_API int aneshare_surface_create(aneshare_conn *conn, size_t size, aneshare_surface **ret);

/* Hand the daemon a memfd this process made; it must be sealed against
 * shrinking (F_SEAL_SHRINK), or the daemon refuses it (ANESHARE_EBAD_FD).
 * fd is borrowed: the library keeps a duplicate (CLOEXEC) until the surface
 * is released, and the caller keeps its own.
 * Linux only (-ENOTSUP elsewhere).  On success *ret is owned by the caller. */
/* The mapping is read-only if the memfd is sealed against writing. */
ANESHARE_API int aneshare_surface_import(aneshare_conn *conn, int fd, aneshare_surface **ret);

/* macOS, where surfaces are IOSurfaces named by their IOSurfaceID
 * (docs/protocol.md): hand the daemon an IOSurface this process made, by
 * IOSurfaceGetID().  The library looks it up (its own reference, mapped in
 * place) and asks the daemon to import it.  -ENOTSUP where surfaces are
 * memfds (Linux).  On success *ret is owned by the caller. */
ANESHARE_API int aneshare_surface_import_iosurface(aneshare_conn *conn, uint32_t iosurface_id,
                                                   aneshare_surface **ret);
/* The surface's IOSurfaceID (stable across reconnects), or 0 for a memfd
 * surface.  See docs/security.md: any local process may look it up. */
ANESHARE_API uint32_t aneshare_surface_iosurface_id(const aneshare_surface *s);

/* Release a surface: the daemon frees it once no run uses it, and the local
 * mapping and fd are closed.  Accepts NULL (returns 0).  The pointer is
 * invalid afterwards, whatever the result.  Never reconnects: returns 0 if
 * the connection is broken (see "reconnecting"). */
ANESHARE_API int aneshare_surface_release(aneshare_surface *s);

/* The mapping: read and write tensors in place.  Owned by the surface. */
ANESHARE_API void *aneshare_surface_data(const aneshare_surface *s);
ANESHARE_API size_t aneshare_surface_size(const aneshare_surface *s);
/* The 32-bit ID the daemon knows it by now.  It changes when the library
 * reconnects (aneshare_reconnect_count); 0 if the surface was lost then. */
ANESHARE_API uint32_t aneshare_surface_id(const aneshare_surface *s);

/* ---- sharing surfaces between processes -------------------------------------
 *
 * A surface this connection holds can be handed to another client process
 * of the daemon without copying it: aneshare_surface_export() asks the
 * daemon for a token (64 lowercase hex digits: 256 bits from the daemon's
 * random source), the program passes the token's text to the other process
 * by any means it likes (a pipe, a socket, argv), and that process's
 * aneshare_surface_import_token() gets its own handle to the same memory
 * (docs/protocol.md, "surface.export"; docs/security.md says whom a token
 * lets in).  Each handle is the holder's own: it is released, and counted
 * against the holder's limits, like a surface it created; the memory lives
 * while any handle or run refers to it.  Ordering the writes and reads of
 * the processes that share a surface (a frame is ready, a buffer is free
 * again) is the programs' business: the daemon does not order them.
 *
 * Read-only: a surface exported with read_only is imported read-only.  Its
 * mapping in the importer is PROT_READ (a write through
 * aneshare_surface_data() is a SIGSEGV, not a silent change; on Linux the fd
 * the library keeps is O_RDONLY as well), it cannot be a run output (the
 * library refuses such a run with -ANESHARE_EINVALID_PARAMS before sending
 * it, and the daemon refuses it too), and a re-export of it is read-only
 * whatever the export asks.  On macOS the import is an IOSurface looked up
 * by its global ID: its mapping is writable, and only runs are refused.
 *
 * Reconnecting: tokens do not survive a daemon restart.  An import in
 * flight when the connection broke is sent again to the new daemon, which
 * answers -ANESHARE_ENO_SUCH_SURFACE as for any unknown token; an export in
 * flight is made again, of the surface as restored: a new token.  A
 * surface this process imported by token is treated as any other surface
 * (see "reconnecting"): the library keeps its fd (Linux) or its IOSurface
 * reference (macOS), so the memory stays mapped here, and after a
 * reconnect it imports that memory again into the new daemon as this
 * connection's own surface, with a new ID (surface.import).  The processes
 * that shared it still share the memory itself, but the new daemon knows
 * each holder's re-import as memory of its own (charged in full to the
 * holder, and once more to the daemon's totals) until one holder exports it
 * again and the others import that.  On Linux a read-only import is lost
 * instead: its fd is read-only, and the daemon imports only memfds it can
 * map for writing (its ID is 0, runs and exports naming it fail with
 * -ANESHARE_ENO_SUCH_SURFACE; it is still mapped, read-only, until
 * released).  On macOS it is imported again by ID and stays read-only here
 * (the library refuses it as a run output). */

/* A token's text: ANESHARE_TOKEN_LEN lowercase hex digits and a NUL. */
#define ANESHARE_TOKEN_LEN 64
typedef struct aneshare_token {
	char text[ANESHARE_TOKEN_LEN + 1];
} aneshare_token;

/* How a token may be used.  Zero-initialise it for the defaults. */
typedef struct aneshare_export_opts {
	bool read_only;     /* importers get a read-only handle (always so for a
	                     * read-only surface) */
	uint32_t uses;      /* imports the token allows; 0: the daemon's default (1) */
	uint32_t ttl_ms;    /* the token expires this long after the export;
	                     * 0: the daemon's default (30,000 ms) */
} aneshare_export_opts;

/* Export surface s (this connection's): a token for the same memory, valid
 * for opts->uses imports within opts->ttl_ms, until s is released.  opts
 * NULL means all defaults.  On success *ret_token holds the token (the
 * caller's copy) and, if ret_expires_ms is not NULL, *ret_expires_ms the
 * lifetime the daemon gave the token, in ms from the export
 * (docs/protocol.md, "surface.export").  Errors: -EINVAL (s or ret_token
 * NULL), -ANESHARE_ENO_SUCH_SURFACE (s was lost in a reconnect),
 * -ANESHARE_EINVALID_PARAMS (uses or ttl_ms over the daemon's
 * max_export_uses or max_export_ttl_ms), -ANESHARE_ELIMIT (too many live
 * tokens), and connection errors. */
ANESHARE_API int aneshare_surface_export(aneshare_surface *s, const aneshare_export_opts *opts,
                                         aneshare_token *ret_token, uint64_t *ret_expires_ms);

/* Import the surface a token names (token: its text, borrowed for the
 * call; exactly ANESHARE_TOKEN_LEN lowercase hex digits, checked here
 * before anything is sent: -EINVAL otherwise).  The new handle is this
 * connection's, mapped in this process (PROT_READ if the export was
 * read-only: aneshare_surface_read_only()).  A token that is unknown, used
 * up, expired or whose surface was released: -ANESHARE_ENO_SUCH_SURFACE.
 * The daemon slows down a connection that fails more than a few imports
 * and then closes it with a limit notification (docs/protocol.md,
 * "surface.import by token"), after which the library reconnects as after
 * a restart (see "reconnecting").  On macOS the daemon names an IOSurface,
 * which the library looks up as for aneshare_surface_create.
 * On success *ret is owned by the caller: aneshare_surface_release(). */
ANESHARE_API int aneshare_surface_import_token(aneshare_conn *conn, const char *token,
                                               aneshare_surface **ret);

/* 0 if text is a well-formed token (ANESHARE_TOKEN_LEN lowercase hex
 * digits, then the NUL), else -EINVAL.  text may be NULL (-EINVAL). */
ANESHARE_API int aneshare_token_check(const char *text);

/* True if s is read-only: imported by token from a read-only export.
 * False for NULL. */
ANESHARE_API bool aneshare_surface_read_only(const aneshare_surface *s);

/* ---- programs ------------------------------------------------------------- */

/* A weight blob referenced from MIL by BLOBFILE(path = string("PATH"), ...).
 * Borrowed for the duration of the call (the library keeps its own copy in
 * a memfd or in memory, see aneshare_program_compile). */
typedef struct aneshare_weight {
	const char *path;   /* e.g. "@model_path/weights/w.bin" */
	const void *data;
	size_t len;
} aneshare_weight;

/* Compile MIL text (NUL-terminated) with optional weights.  If the daemon
 * already has the same program (same MIL and weights), it is shared and
 * *ret_cached (may be NULL) is set true.  On a compile error the daemon's
 * message (with the line) is in aneshare_last_error().
 * How the weights travel (the key is the same either way: the daemon
 * hashes the bytes): on Linux the library copies each non-empty weight
 * into a sealed memfd of its own ("aneshare-inline-weight", CLOEXEC; see
 * aneshare_weight_memfd) and passes it by fd, as aneshare_program_compile_fds
 * does; the daemon maps the memfd in place, so the bytes neither cross the
 * socket nor get copied again.  The program owns those fds, one per
 * non-empty weight, until aneshare_program_release (or aneshare_disconnect)
 * closes them; they are what it compiles from again after a reconnect.
 * The library keeps a copy in its memory instead and sends the bytes
 * inline (bounded by the daemon's max_weight_bytes) when there are more
 * non-empty weights than the daemon's max_fds_per_frame (4), and where
 * there are no sealed memfds (macOS; -ENOSYS); empty weights always go
 * inline.  Making a memfd can fail (-EMFILE, -ENOMEM...): the call then
 * fails with that code, having closed the memfds it made.
 * On success *ret is owned by the caller: aneshare_program_release(). */
ANESHARE_API int aneshare_program_compile(aneshare_conn *conn, const char *mil,
                                          const aneshare_weight *weights, size_t n_weights,
                                          aneshare_program **ret, bool *ret_cached);

/* A weight file referenced from MIL by BLOBFILE(path = string("PATH"), ...),
 * passed to the daemon by file descriptor: its bytes do not cross the
 * socket (docs/protocol.md, "Weights by file descriptor"). */
typedef struct aneshare_weight_fd {
	const char *path;   /* e.g. "@model_path/weights/weight.bin"; borrowed for the call */
	int fd;             /* open for reading; borrowed: the caller keeps and closes it */
} aneshare_weight_fd;

/* Compile MIL text (NUL-terminated) whose weights are files: at most 4
 * (the daemon's max_fds_per_frame), each a regular file or a memfd.  The
 * daemon hashes them itself for the program's key, so the same model
 * compiled from any client and any copy of its files is shared.  A memfd
 * sealed against writing, shrinking and growing (aneshare_weight_memfd) is
 * used in place by the daemon; any other file is read into the daemon's
 * memory once (a client can then change or truncate its file without
 * affecting the program).  The library keeps a duplicate of each fd (closed
 * with the program) to compile the program again after a reconnect; the
 * file should then still hold the same bytes (else the program is lost, see
 * "reconnecting").  Otherwise as aneshare_program_compile.
 * On success *ret is owned by the caller: aneshare_program_release(). */
ANESHARE_API int aneshare_program_compile_fds(aneshare_conn *conn, const char *mil,
                                              const aneshare_weight_fd *files, size_t n_files,
                                              aneshare_program **ret, bool *ret_cached);

/* Compile a compiled Core ML model folder (an ".mlmodelc", e.g. from
 * `xcrun coremlcompiler compile X.mlpackage OUTDIR`; an .mlpackage itself
 * is not read).  Reads DIR/model.mil (at most ANESHARE_MODEL_MIL_MAX bytes,
 * no NUL byte), finds every string "@model_path/REL" in it (each at most
 * ANESHARE_MODEL_PATH_MAX bytes; at most 4 distinct ones) and opens each
 * distinct REL once, strictly inside DIR: one openat(O_NOFOLLOW) per path
 * component from DIR's descriptor, so an absolute REL, an empty, "." or
 * ".." component and any symbolic link below DIR (even one pointing inside
 * it) are refused; the last component must be a regular file.  The files go
 * to the daemon by descriptor (aneshare_program_compile_fds): no weight
 * byte crosses the socket.  dir is borrowed for the call; the library
 * closes the fds it opened (keeping duplicates with the program, see
 * aneshare_program_compile_fds).  Errors, with the message in
 * aneshare_last_error(): -ENOENT (no DIR/model.mil, or a weight file
 * missing), -EPERM (a weight path leaving the folder, or a symbolic link),
 * -ENAMETOOLONG, -E2BIG (more than 4 weight files), -EFBIG (model.mil too
 * large), -ENOTDIR, -EINVAL; else as aneshare_program_compile_fds.
 * On success *ret is owned by the caller: aneshare_program_release(). */
#define ANESHARE_MODEL_MIL_MAX (64u << 20)
#define ANESHARE_MODEL_PATH_MAX 1024
ANESHARE_API int aneshare_program_compile_model(aneshare_conn *conn, const char *dir,
                                                aneshare_program **ret, bool *ret_cached);

/* A new memfd holding a copy of len bytes at data, sealed against writing,
 * shrinking, growing and further sealing: a weight file the daemon maps
 * without copying.  name is the memfd's name for debugging (may be NULL).
 * On success *ret_fd is owned by the caller (close it; CLOEXEC is set).
 * -ENOTSUP where there are no sealed memfds (macOS: pass a file instead). */
ANESHARE_API int aneshare_weight_memfd(const char *name, const void *data, size_t len, int *ret_fd);

/* Release a program handle.  Accepts NULL (returns 0).  The pointer is
 * invalid afterwards, whatever the result.  Never reconnects: returns 0 if
 * the connection is broken. */
ANESHARE_API int aneshare_program_release(aneshare_program *p);

/* The content hash (SHA-256, 64 hex digits) the daemon caches the program
 * under.  Owned by the program. */
ANESHARE_API const char *aneshare_program_key(const aneshare_program *p);

typedef enum aneshare_dtype {
	ANESHARE_FP16 = 1,
	ANESHARE_FP32,
	ANESHARE_INT32,
	ANESHARE_INT16,
	ANESHARE_INT8,
	ANESHARE_UINT8,
	ANESHARE_BOOL,
} aneshare_dtype;

#define ANESHARE_MAX_RANK 8

typedef struct aneshare_tensor_info {
	const char *name;      /* owned by the program */
	aneshare_dtype dtype;
	uint32_t rank;
	uint64_t shape[ANESHARE_MAX_RANK];
	uint64_t bytes;        /* bytes the tensor occupies in a surface */
} aneshare_tensor_info;

/* The functions of a program (index 0 is "main" when the program has one)
 * and the inputs/outputs of each.  Fetched from the daemon at compile time.
 * Returned pointers are owned by the program. */
ANESHARE_API uint32_t aneshare_program_function_count(const aneshare_program *p);
ANESHARE_API const char *aneshare_program_function_name(const aneshare_program *p, uint32_t fn);
ANESHARE_API uint32_t aneshare_program_input_count(const aneshare_program *p, uint32_t fn);
ANESHARE_API uint32_t aneshare_program_output_count(const aneshare_program *p, uint32_t fn);
/* NULL if fn or i is out of range. */
ANESHARE_API const aneshare_tensor_info *aneshare_program_input(const aneshare_program *p,
                                                                uint32_t fn, uint32_t i);
ANESHARE_API const aneshare_tensor_info *aneshare_program_output(const aneshare_program *p,
                                                                 uint32_t fn, uint32_t i);

/* ---- states of a program's function (read_state, coreml_update_state) ------
 *
 * A function with state<tensor<...>> inputs (an iOS 18 model's KV cache)
 * runs on a state: memory the daemon keeps between runs, read by
 * read_state and overwritten by coreml_update_state / write_state, as Core
 * ML's MLState (docs/protocol.md, "States").  Make one per independent
 * sequence (two conversations: two states); each starts zero-filled.  Runs
 * naming one state happen one at a time, in the order they were sent.
 * A state counts as a surface of its size in the daemon's limits.
 * A run that fails leaves its state's contents unknown: the daemon marks it
 * lost, and runs on it fail with ANESHARE_ESTATE_LOST until
 * aneshare_state_reset.  After a reconnect (the daemon restarted) every
 * state is made again on the new daemon, zero-filled and marked lost the
 * same way (its contents died with the daemon). */

/* The states of function fn of p and their tensors (NULL if out of range).
 * Owned by the program. */
ANESHARE_API uint32_t aneshare_program_state_count(const aneshare_program *p, uint32_t fn);
ANESHARE_API const aneshare_tensor_info *aneshare_program_state(const aneshare_program *p,
                                                                uint32_t fn, uint32_t i);

/* Make a zero-filled state for function fn of p (-ANESHARE_EINVALID_PARAMS
 * if it has no states; -ANESHARE_ELIMIT over a surface limit).  p is
 * borrowed and should outlive the state (a state whose program was released
 * cannot be made again after a reconnect).  On success *ret is owned by the
 * caller: aneshare_state_release(). */
ANESHARE_API int aneshare_state_create(aneshare_program *p, uint32_t fn, aneshare_state **ret);

/* Zero the state again (and clear its lost mark), after the runs sent
 * before and before the runs sent after.  Blocks until done. */
ANESHARE_API int aneshare_state_reset(aneshare_state *s);

/* Release a state: the daemon frees it once no run uses it.  Accepts NULL
 * (returns 0).  The pointer is invalid afterwards, whatever the result.
 * Never reconnects: returns 0 if the connection is broken. */
ANESHARE_API int aneshare_state_release(aneshare_state *s);

/* The bytes the daemon holds for it (its tensors, each at a multiple of
 * 64 bytes), 0 for NULL. */
ANESHARE_API uint64_t aneshare_state_size(const aneshare_state *s);

/* aneshare_run and aneshare_run_submit for a function with states, on
 * state (borrowed, made for function fn of a program with p's content). */
ANESHARE_API int aneshare_run_state(aneshare_program *p, uint32_t fn, aneshare_state *state,
                                    aneshare_surface *const *inputs, size_t n_inputs,
                                    aneshare_surface *const *outputs, size_t n_outputs);
ANESHARE_API int aneshare_run_state_submit(aneshare_program *p, uint32_t fn, aneshare_state *state,
                                           aneshare_surface *const *inputs, size_t n_inputs,
                                           aneshare_surface *const *outputs, size_t n_outputs,
                                           uint32_t *ret_ticket);

/* ---- running -------------------------------------------------------------- */

/* Run function fn (0 = main) of p: inputs[i] holds input i at offset 0,
 * outputs[i] receives output i.  All surfaces borrowed; they must belong to
 * p's connection (else -EINVAL), and outputs must not be read-only
 * (-ANESHARE_EINVALID_PARAMS, see "sharing surfaces").  Blocks until done.  If the connection
 * breaks meanwhile: -ANESHARE_EDISCONNECTED, not retried (see
 * "reconnecting"). */
ANESHARE_API int aneshare_run(aneshare_program *p, uint32_t fn,
                              aneshare_surface *const *inputs, size_t n_inputs,
                              aneshare_surface *const *outputs, size_t n_outputs);

/* Pipelining: submit a run without waiting; *ret_ticket identifies it.
 * At most aneshare_server()->max_inflight runs are in flight: when that many
 * are, run_submit first reads responses until one completes (its result is
 * kept for aneshare_wait).  Every ticket must be waited for with
 * aneshare_wait, which returns the run's result (and sets last_error when it
 * failed); runs may complete in any order and may be waited for in any
 * order.  A ticket is valid for one aneshare_wait: -ENOENT after that.
 * Other calls on the connection may be made while runs are outstanding.
 * Runs in flight when the connection breaks complete with
 * -ANESHARE_EDISCONNECTED (-ECONNRESET with reconnecting off). */
ANESHARE_API int aneshare_run_submit(aneshare_program *p, uint32_t fn,
                                     aneshare_surface *const *inputs, size_t n_inputs,
                                     aneshare_surface *const *outputs, size_t n_outputs,
                                     uint32_t *ret_ticket);
ANESHARE_API int aneshare_wait(aneshare_conn *conn, uint32_t ticket);

/* ---- chained runs ------------------------------------------------------------
 *
 * One request that runs several steps back to back in one daemon job (no
 * round trip between them): e.g. one compiled kernel applied as 28 layers,
 * each with its own weight surface, step i+1 reading step i's output.
 * Steps run in order and stop at the first failure; the outputs of the
 * steps before it have been written. */

#define ANESHARE_MAX_STEPS 256   /* steps in one chain (the daemon's limit) */

typedef struct aneshare_step {
	aneshare_program *program;              /* borrowed; all steps on one connection */
	uint32_t function;                      /* index, 0 = main */
	aneshare_surface *const *inputs;        /* borrowed arrays, as for aneshare_run */
	size_t n_inputs;
	aneshare_surface *const *outputs;
	size_t n_outputs;
} aneshare_step;

/* Run steps[0..n_steps) (1 <= n_steps <= ANESHARE_MAX_STEPS) in one request
 * and wait.  On failure aneshare_last_failed_step() names the step that
 * failed (the daemon's message, in aneshare_last_error, says why), or is -1
 * when the chain as a whole was refused or never ran (e.g. the connection
 * broke: -ANESHARE_EDISCONNECTED, not retried, as aneshare_run). */
ANESHARE_API int aneshare_run_chain(aneshare_conn *conn, const aneshare_step *steps,
                                    size_t n_steps);

/* aneshare_run_chain whose step i runs on states[i] (borrowed; NULL for a
 * step whose function has no states; states itself may be NULL): each step
 * names its own state, and steps may share one (they run in order).  See
 * "states of a program's function". */
ANESHARE_API int aneshare_run_chain_states(aneshare_conn *conn, const aneshare_step *steps,
                                           aneshare_state *const *states, size_t n_steps);

/* The index of the step at which the last failed aneshare_run_chain on conn
 * stopped, or -1 (no step failed, or no chain failed yet). */
ANESHARE_API int aneshare_last_failed_step(const aneshare_conn *conn);

/* How long the daemon took to run the steps of the last run or chain on
 * conn that succeeded and was waited for (aneshare_run, aneshare_run_chain,
 * aneshare_wait), in microseconds: the reply's elapsed_us (docs/protocol.md).
 * The call's own time minus this is what the daemon's protocol work, the
 * socket and the wake-ups added.  0 before the first (and for a run under a
 * microsecond). */
ANESHARE_API uint64_t aneshare_last_run_us(const aneshare_conn *conn);

/* ---- asynchronous calls ------------------------------------------------------
 *
 * Requests go out at once without waiting; responses are matched by ID in
 * whatever order they come, and a completion callback is called for each.
 * To fit a connection into an application's own event loop (poll, epoll,
 * libuv, ...):
 *   - aneshare_fd(conn) is the socket to watch and aneshare_events(conn) the
 *     events to watch it for: ANESHARE_EV_READ always, ANESHARE_EV_WRITE as
 *     well while requests wait in the library for room in the socket (the
 *     values equal libuv's UV_READABLE and UV_WRITABLE).  Ask for both again
 *     after every call on the connection: the fd changes when the library
 *     reconnects, and is -1 while the connection is broken or dead.
 *   - when the fd is readable or writable, call aneshare_dispatch(conn).  It
 *     never blocks: it sends what it can, reads what has arrived and calls
 *     the callbacks of completed requests.
 * Callbacks are only ever called from aneshare_dispatch (or, with
 * -ECANCELED, from aneshare_disconnect), on the caller's thread.  A callback
 * may make any call on the connection (including more async calls) except
 * aneshare_disconnect.  Blocking calls on the same connection are allowed
 * too: responses to async calls that they read are kept, and delivered by
 * the next aneshare_dispatch -- call it after a blocking call when async
 * calls are outstanding (the data has already been read from the fd, so the
 * fd may not turn readable again for them).
 *
 * Disconnects: when the connection breaks (the daemon died), every async
 * call in flight completes with -ANESHARE_EDISCONNECTED (retryable: the run
 * may or may not have happened; -ECONNRESET with reconnecting off), just as
 * submitted tickets do, and aneshare_dispatch returns that code after
 * delivering them.  The next call on the connection -- async calls included
 * -- reconnects first (blocking, bounded by the reconnect timeout), see
 * "reconnecting"; a request the library had not finished writing is sent
 * to the new daemon.  A connection that is dead (a protocol error) completes
 * them with its final code. */

#define ANESHARE_EV_READ 1
#define ANESHARE_EV_WRITE 2

/* The outcome of an async call, valid during the callback only. */
typedef struct aneshare_result {
	int rc;               /* 0, or a negative code as the blocking call would return */
	int failed_step;      /* chains: the step that failed, else -1 */
	const char *message;  /* the daemon's (or library's) message when rc < 0, else "" */
} aneshare_result;

/* userdata is the caller's, passed back untouched. */
typedef void (*aneshare_done_fn)(aneshare_conn *conn, const aneshare_result *res,
                                 void *userdata);

/* Start a run (as aneshare_run) and return without waiting; cb (not NULL)
 * is called exactly once from a later aneshare_dispatch (or
 * aneshare_disconnect).  Surfaces are borrowed until the callback.  Returns
 * 0 once the request is queued (sent, or waiting for room: see
 * aneshare_events), or a negative code -- then cb is never called.  At most
 * 65536 async calls and tickets may be outstanding on a connection
 * (-EBUSY beyond). */
ANESHARE_API int aneshare_run_async(aneshare_program *p, uint32_t fn,
                                    aneshare_surface *const *inputs, size_t n_inputs,
                                    aneshare_surface *const *outputs, size_t n_outputs,
                                    aneshare_done_fn cb, void *userdata);

/* aneshare_run_chain without waiting, as aneshare_run_async. */
ANESHARE_API int aneshare_run_chain_async(aneshare_conn *conn, const aneshare_step *steps,
                                          size_t n_steps, aneshare_done_fn cb, void *userdata);

/* aneshare_run_async for a function with states, on state (borrowed, as
 * the surfaces, until the callback; see "states of a program's function"). */
ANESHARE_API int aneshare_run_state_async(aneshare_program *p, uint32_t fn, aneshare_state *state,
                                          aneshare_surface *const *inputs, size_t n_inputs,
                                          aneshare_surface *const *outputs, size_t n_outputs,
                                          aneshare_done_fn cb, void *userdata);

/* The connection's socket (owned by conn: never close it), or -1 while the
 * connection is broken or dead or conn is NULL. */
ANESHARE_API int aneshare_fd(const aneshare_conn *conn);

/* ANESHARE_EV_READ | (ANESHARE_EV_WRITE if output waits to be sent), or 0
 * when aneshare_fd is -1. */
ANESHARE_API int aneshare_events(const aneshare_conn *conn);

/* Send queued requests, read the responses that have arrived and call their
 * callbacks, without blocking.  Returns the number of callbacks called (0
 * if none), or, once the connection broke or died, its code (after calling
 * the callbacks of the calls that failed with it). */
ANESHARE_API int aneshare_dispatch(aneshare_conn *conn);

/* Async calls whose callback has not been called yet. */
ANESHARE_API size_t aneshare_async_outstanding(const aneshare_conn *conn);

/* ---- events: ordering runs between processes -----------------------------------
 *
 * An event is a timeline kept by the daemon: a 64-bit value that starts at 0
 * and only grows (like Metal's MTLSharedEvent or a Vulkan timeline
 * semaphore; docs/protocol.md, "Events").  The connection that creates one
 * owns it and is the only one that raises it; other connections get a
 * wait-only handle by token, as for surfaces (aneshare_event_export, then
 * aneshare_event_import_token in the other process).  A run can wait for
 * events before it starts and signal events when it succeeds (the wait and
 * signal lists of aneshare_run_opts): the daemon starts a run submitted
 * ahead the moment its waits are met, without waking any client process.
 *
 * Closing: an event closes when its owner's handle is released (or the
 * owner's connection closed) and no run that signals it is still pending.
 * A closed event keeps its value: waits for values it reached succeed,
 * waits for higher values fail with -ANESHARE_EEVENT_CLOSED (runs waiting
 * for it fail the same way, and nothing of them runs).  A run that fails
 * signals nothing.  Handles are released with aneshare_event_release (or
 * freed by aneshare_disconnect); releasing a handle does not stop the runs
 * and waits already sent that name it.
 *
 * Reconnecting: events do not survive a daemon restart (see
 * "reconnecting": calls on an event made before fail with
 * -ANESHARE_EEVENT_CLOSED).
 */

/* A new event on conn, value 0, owned by this connection (the only one that
 * can signal it).  -ANESHARE_ELIMIT over the daemon's max_events_per_conn
 * or max_daemon_events.  On success *ret is owned by the caller:
 * aneshare_event_release(). */
ANESHARE_API int aneshare_event_create(aneshare_conn *conn, aneshare_event **ret);

/* Raise ev (this connection's own event) to value, which must be greater
 * than its value now (else -ANESHARE_EINVALID_PARAMS; the daemon's message
 * names the current value).  Runs and waits it meets go on at once.  An
 * imported handle cannot signal: -ANESHARE_EINVALID_PARAMS, said by the
 * library before anything is sent.  Blocks for the daemon's answer. */
ANESHARE_API int aneshare_event_signal(aneshare_event *ev, uint64_t value);

/* Block until ev's value is at least value (at once if it is already);
 * *ret_value (may be NULL) is its value then.  -ANESHARE_EEVENT_CLOSED if
 * the event closed below value; -ANESHARE_ELIMIT over the daemon's
 * max_event_waits pending waits of this connection.  There is no timeout:
 * a wait for a value nobody signals lasts until the owner releases the
 * event (or the connection breaks); use aneshare_event_wait_async with
 * aneshare_dispatch for a wait the caller can give up. */
ANESHARE_API int aneshare_event_wait(aneshare_event *ev, uint64_t value, uint64_t *ret_value);

/* aneshare_event_wait without blocking: cb (not NULL) is called once, as
 * for aneshare_run_async (res->rc 0 when the value was reached), from a
 * later aneshare_dispatch (or aneshare_disconnect, with -ECANCELED).  The
 * event may be released before the callback.  0 once the request is
 * queued, or a negative code (then cb is never called).  Until its
 * callback it counts as an async call outstanding, and in the library's
 * count of requests in flight that aneshare_run_submit keeps under
 * max_inflight (the daemon does not count pending waits there): keep far
 * fewer than max_inflight of them outstanding on a connection that also
 * submits runs whose completion they wait for. */
ANESHARE_API int aneshare_event_wait_async(aneshare_event *ev, uint64_t value, aneshare_done_fn cb,
                                           void *userdata);

/* ev's value now, asked of the daemon (a wait for 0, answered at once). */
ANESHARE_API int aneshare_event_value(aneshare_event *ev, uint64_t *ret_value);

/* A token for ev, as aneshare_surface_export gives for a surface (the same
 * text, the same uses, ttl and limits; opts NULL means the defaults;
 * opts->read_only means nothing here and is ignored: every import is
 * wait-only).  Any holder may export, an importer too.  The token dies
 * with this handle.  On success *ret_token holds the token and, if
 * ret_expires_ms is not NULL, *ret_expires_ms its lifetime in ms. */
ANESHARE_API int aneshare_event_export(aneshare_event *ev, const aneshare_export_opts *opts,
                                       aneshare_token *ret_token, uint64_t *ret_expires_ms);

/* A wait-only handle on this connection to the event a token names (token:
 * its text, borrowed for the call; checked here before anything is sent:
 * -EINVAL unless ANESHARE_TOKEN_LEN lowercase hex digits).  A token that
 * is unknown, used up, expired, or a surface's: -ANESHARE_ENO_SUCH_EVENT
 * (failed imports of events and surfaces count together for the daemon's
 * slow-down, see aneshare_surface_import_token).  On success *ret is owned
 * by the caller: aneshare_event_release(). */
ANESHARE_API int aneshare_event_import_token(aneshare_conn *conn, const char *token,
                                             aneshare_event **ret);

/* True if ev is an imported (wait-only) handle; false for NULL. */
ANESHARE_API bool aneshare_event_imported(const aneshare_event *ev);

/* Drop the handle.  Releasing the owner's handle closes the event once the
 * runs that signal it are done.  Accepts NULL (returns 0).  The pointer is
 * invalid afterwards, whatever the result.  Never reconnects: returns 0 if
 * the connection is broken or the event died with a daemon before it. */
ANESHARE_API int aneshare_event_release(aneshare_event *ev);

/* ---- runs with options: states, waits and signals ------------------------------ */

/* Entries in a run's wait list and in its signal list (the daemon's limit). */
#define ANESHARE_MAX_RUN_EVENTS 8

/* An event and a value: in a wait list, the run starts once the event's
 * value is at least value; in a signal list, a run that succeeds raises
 * the event (this connection's own, not imported) to value before its
 * reply is sent (a client that has the reply may rely on it). */
typedef struct aneshare_event_point {
	aneshare_event *event;      /* borrowed for the call */
	uint64_t value;
} aneshare_event_point;

/* How a run is made.  Zero-initialise it: all zero is a plain run of
 * function 0 (aneshare_run).  The struct and the arrays it points to are
 * borrowed for the call only (a run submitted ahead keeps nothing of
 * them; its events may be released meanwhile).  Extending it: later
 * versions give reserved entries a meaning whose zero is today's
 * behaviour, so the struct's size and layout never change; this version
 * refuses a non-zero reserved entry (-EINVAL) rather than ignore a field it
 * does not know. */
typedef struct aneshare_run_opts {
	uint32_t function;                   /* index, 0 = main (for a chain: 0, the steps say) */
	aneshare_state *state;               /* NULL, or the state to run on (a chain: NULL,
	                                      * see aneshare_run_chain_ex) */
	const aneshare_event_point *wait;    /* n_wait entries (at most ANESHARE_MAX_RUN_EVENTS):
	                                      * the run starts once all are met */
	size_t n_wait;
	const aneshare_event_point *signal;  /* n_signal entries (at most ANESHARE_MAX_RUN_EVENTS):
	                                      * raised when the run succeeds */
	size_t n_signal;
	uint64_t reserved[4];                /* 0 */
} aneshare_run_opts;

/* aneshare_run, aneshare_run_submit and aneshare_run_async with options
 * (opts NULL: as the plain calls with fn 0).  A run whose waits are not met
 * yet is accepted and parked by the daemon: it holds no thread, does not
 * hold back the connection's other runs and counts as a queued run; a
 * blocking aneshare_run_ex waits until it is met and done.  Submit runs
 * ahead this way (aneshare_run_submit_ex, aneshare_run_async_ex) and the
 * daemon starts each as soon as its waits are met.  Errors besides the
 * plain calls', found before anything is sent: -EINVAL (more than
 * ANESHARE_MAX_RUN_EVENTS entries in a list, a list NULL with a count, a
 * NULL event, an event of another connection, a non-zero reserved entry),
 * -ANESHARE_EINVALID_PARAMS (an imported event in the signal list, an
 * event twice in one list), -ANESHARE_EEVENT_CLOSED (an event made before
 * a reconnect); from the daemon: -ANESHARE_ENO_SUCH_EVENT,
 * -ANESHARE_EINVALID_PARAMS (a signal value not above the event's value
 * now), and -ANESHARE_EEVENT_CLOSED when an event it waits for closes
 * below the value (nothing of it ran). */
ANESHARE_API int aneshare_run_ex(aneshare_program *p,
                                 aneshare_surface *const *inputs, size_t n_inputs,
                                 aneshare_surface *const *outputs, size_t n_outputs,
                                 const aneshare_run_opts *opts);
ANESHARE_API int aneshare_run_submit_ex(aneshare_program *p,
                                        aneshare_surface *const *inputs, size_t n_inputs,
                                        aneshare_surface *const *outputs, size_t n_outputs,
                                        const aneshare_run_opts *opts, uint32_t *ret_ticket);
ANESHARE_API int aneshare_run_async_ex(aneshare_program *p,
                                       aneshare_surface *const *inputs, size_t n_inputs,
                                       aneshare_surface *const *outputs, size_t n_outputs,
                                       const aneshare_run_opts *opts,
                                       aneshare_done_fn cb, void *userdata);

/* aneshare_run_chain_states with options: the chain waits before its
 * first step and signals after its last.  opts->function and opts->state
 * must be 0 and NULL (-EINVAL): each step names its function, states[i]
 * (states may be NULL) its state. */
ANESHARE_API int aneshare_run_chain_ex(aneshare_conn *conn, const aneshare_step *steps,
                                       aneshare_state *const *states, size_t n_steps,
                                       const aneshare_run_opts *opts);

/* ---- status ----------------------------------------------------------------- */

typedef struct aneshare_status {
	const char *server_version;   /* owned by the status */
	const char *backend;
	uint64_t uptime_ms;
	uint32_t clients;
	uint32_t programs;            /* compiled programs held by the daemon */
	uint32_t surfaces;
	uint64_t surface_bytes;
	uint64_t runs;                /* runs served since start */
	uint64_t compiles;            /* programs compiled since start */
	uint64_t cache_hits;          /* compiles answered from the cache */
	struct aneshare_status_program {
		const char *key;          /* SHA-256 hex */
		uint32_t refs;            /* handles held by all connections */
	} *program_list;              /* programs entries, owned by the status */
	uint64_t lane_runs;           /* of runs, those a worker took straight off the
	                               * socket (docs/design.md, "Lanes"); 0 from
	                               * daemons that do not report it */
	uint64_t lane_spins;          /* lane answers after which the daemon polled the
	                               * client's socket for its next request ... */
	uint64_t lane_spin_hits;      /* ... and of those, the polls that got it, */
	uint64_t lane_spin_gaps;      /* ... and those that ended because the daemon's
	                               * thread was switched out */
	uint64_t lane_spin_skips;     /* lane answers not followed by a poll: the spin's
	                               * penalty after polls that got nothing (the three:
	                               * docs/design.md, "The spin"; 0
	                               * from daemons that do not report them) */
	/* What each client process holds (docs/protocol.md, "status"); empty
	 * from daemons that do not report it.  The list may be cut:
	 * processes_total counts them all. */
	uint32_t n_processes;
	uint32_t processes_total;
	struct aneshare_status_process {
		const char *name;          /* its latest hello's client name, "" if none; owned by the status */
		uint64_t pid;              /* 0: unknown */
		uint32_t uid;
		uint32_t connections;
		uint64_t surfaces, surface_bytes, fds, programs, program_bytes, jobs;
		uint64_t unsent_bytes, input_bytes, runs;
		/* The fair scheduler (docs/protocol.md, "Scheduling"): jobs waiting
		 * for the device, the device time its finished jobs took (us), and
		 * that as a percentage of all listed clients'. */
		uint64_t queued, device_us, device_share;
		/* Its scheduling class: "interactive", "default" or "background"
		 * (static; "" from daemons that do not report it). */
		const char *priority;
		uint64_t events;           /* event handles its connections hold (0 from daemons
		                            * that do not report it) */
	} *process_list;               /* n_processes entries, owned by the status */
	/* The daemon's totals against its limits, one per resource. */
	uint32_t n_totals;
	struct aneshare_status_total {
		const char *resource;      /* "surfaces", "surface_bytes", ...; owned by the status */
		uint64_t used;
		uint64_t limit;            /* all clients together; 0: none */
		uint64_t client_limit;     /* one client process; 0: none */
		uint64_t uid_limit;        /* all client processes of one uid; 0: none (or not reported) */
	} *total_list;                 /* n_totals entries, owned by the status */
	uint64_t lane_slice_ends;      /* times a lane thread gave a client up at the end of
	                                * its slice (docs/protocol.md, "Scheduling"); 0 from
	                                * daemons that do not report it */
	/* Surfaces held by more than one connection, or with live tokens
	 * (docs/protocol.md, "status": `shared`); empty from daemons that do
	 * not report it.  The list may be cut: shared_total counts them all. */
	uint32_t n_shared;
	uint64_t shared_total;
	struct aneshare_status_shared {
		uint64_t key;              /* the daemon's name for the memory (not a surface ID) */
		uint64_t size;             /* bytes */
		uint32_t tokens;           /* tokens of it that can still be imported */
		uint32_t holders_total;    /* handles to it, all connections (the list may be cut) */
		uint32_t n_holders;
		struct aneshare_status_holder {
			const char *name;      /* the holder process's client name; owned by the status */
			uint64_t pid;          /* 0: unknown */
			bool read_only;        /* its handle is read-only */
		} *holder_list;            /* n_holders entries, owned by the status */
	} *shared_list;                /* n_shared entries, owned by the status */
	uint64_t events;               /* events alive in the daemon (docs/protocol.md,
	                                * "Events"); 0 from daemons that do not report it */
	uint64_t event_runs;           /* of runs, those made ready by an event and run on the
	                                * thread that raised it (docs/design.md, "Events");
	                                * 0 from daemons that do not report it */
} aneshare_status;

/* On success *ret is owned by the caller: aneshare_status_free(). */
ANESHARE_API int aneshare_get_status(aneshare_conn *conn, aneshare_status **ret);
ANESHARE_API void aneshare_status_free(aneshare_status *st);

/* ---- fp16 helpers ------------------------------------------------------------ */

/* Round-to-nearest-even conversions, n elements. */
ANESHARE_API void aneshare_f32_to_f16(uint16_t *dst, const float *src, size_t n);
ANESHARE_API void aneshare_f16_to_f32(float *dst, const uint16_t *src, size_t n);

#ifdef __cplusplus
}
#endif
#endif
