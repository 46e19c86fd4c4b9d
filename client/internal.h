/* SPDX-License-Identifier: MIT */
/*
 * libaneshare internals: the connection object and the request/response
 * machinery shared by the surface, program and status code.
 */
#ifndef ANESHARE_INTERNAL_H
#define ANESHARE_INTERNAL_H

#include <stdarg.h>

#include "anes_proto.h"
#include "anes_spin.h"
#include "aneshare.h"

#define ANESC_ERRMSG_MAX 1024      /* bytes kept of a daemon's message */
#define ANESC_MAX_PENDING 65536    /* submitted runs not yet waited for */
#define ANESC_MAX_NAME ANES_NAME_MAX  /* longest function/tensor name accepted from the daemon */
#define ANESC_MAX_FUNCTIONS 1024   /* functions accepted in program.info */
#define ANESC_MAX_IO 1024          /* inputs or outputs of one function */
#define ANESC_MAX_STR 4096         /* other strings from the daemon (version, backend, key) */
#define ANESC_RECONNECT_TIMEOUT_MS 5000u     /* default; $ANESHARE_RECONNECT_TIMEOUT_MS */
#define ANESC_RECONNECT_TIMEOUT_MAX 3600000u /* highest timeout accepted (1 h) */
#define ANESC_SPIN_US 1000u                  /* default; $ANESHARE_SPIN_US */
#define ANESC_SPIN_MAX_US 100000u            /* highest spin accepted (100 ms) */

/* A submitted run: its ticket (= msgid) and, once the response arrived, its result. */
typedef struct anesc_pending {
	uint32_t msgid;
	bool done;
	int rc;
	char *msg;                 /* owned; the daemon's message when rc < 0 */
	int failed_step;           /* -1, or the chain step the daemon says failed */
	uint64_t elapsed_us;       /* a success's elapsed_us (0 if absent) */
	aneshare_done_fn cb;       /* async calls (async.c): called by aneshare_dispatch; NULL for tickets */
	void *cb_ud;
} anesc_pending;

/* Called with the result map of the response a synchronous call waits for.
 * fds[0..nfds) came with the response: the callback takes one by storing it
 * and setting its slot to -1; the rest are closed by the caller. */
typedef int (*anesc_result_fn)(aneshare_conn *c, const msgpack_object *result,
                               int *fds, unsigned nfds, void *ud);

struct aneshare_surface {
	aneshare_conn *conn;
	aneshare_surface *prev, *next;
	uint32_t id;               /* on the current daemon connection; 0 once lost */
	int lost;                  /* 0, or why a reconnect could not restore it */
	int fd;                    /* owned memfd (CLOEXEC): imported again after a reconnect */
	struct anes_shm *shm;      /* owned instead of fd when surfaces are named by
	                            * IOSurface ID (anes_shm.h); data == shm->base */
	void *data;                /* owned mapping of size bytes */
	size_t size;
	bool read_only;            /* a read-only import: mapped PROT_READ (memfd), never a run output */
};

typedef struct anesc_function {
	char *name;                /* owned */
	uint32_t n_inputs, n_outputs;
	aneshare_tensor_info *inputs;   /* owned, names owned */
	aneshare_tensor_info *outputs;
	uint32_t n_states;
	aneshare_tensor_info *states;   /* owned, names owned (NULL when none) */
} anesc_function;

/* A copy of a weight blob the program was compiled with (inline weights that
 * did not go into sealed memfds: empty ones, more than max_fds_per_frame, or
 * no sealed memfds on this platform). */
typedef struct anesc_blob {
	char *path;                /* owned */
	void *data;                /* owned; NULL when len is 0 */
	size_t len;
} anesc_blob;

struct aneshare_program {
	aneshare_conn *conn;
	aneshare_program *prev, *next;
	uint32_t id;                   /* on the current daemon connection; 0 once lost */
	int lost;                      /* 0, or why a reconnect could not restore it */
	char key[65];
	uint32_t n_functions;
	anesc_function *functions;     /* owned */
	char *mil;                     /* owned copies, compiled again after a reconnect */
	anesc_blob *weights;
	size_t n_weights;
	char **file_paths;             /* weight files: owned paths and fds (duplicates of the
	                                * caller's, or sealed memfds holding inline weights) */
	int *file_fds;
	size_t n_files;
};

struct aneshare_conn {
	int fd;                        /* owned socket; -1 while broken */
	anes_io io;
	uint32_t next_msgid;
	int dead;                      /* 0, or the code every call now fails with (final) */
	char dead_msg[ANESC_ERRMSG_MAX];
	bool broken;                   /* the stream ended (EOF, reset): reconnect before the next request */
	char broken_msg[ANESC_ERRMSG_MAX];
	char last_error[ANESC_ERRMSG_MAX];

	char *socket_path;             /* owned: where to reconnect */
	unsigned max_fds_per_frame;    /* hello's, at most ANES_MAX_FDS_PER_FRAME; 0 if not announced */
	char *client_name;             /* owned, or NULL */
	bool reconnect;                /* reconnect automatically (default true) */
	uint32_t reconnect_timeout_ms;
	uint64_t reconnects;           /* successful reconnects */

	/* Polling for a reply before sleeping (aneshare_set_spin). */
	uint32_t spin_us;              /* the most one blocking wait polls, in us; 0 = never */
	anes_spin spin;                /* its history: failed spins make the next waits sleep */

	aneshare_server_info info;
	char *server_version;          /* owned; info points here */
	char *backend;
	char **old_strings;            /* owned: strings of daemons before a reconnect, freed at */
	size_t n_old_strings;          /* disconnect so that pointers from aneshare_server() stay valid */

	void *fbuf;                    /* owned: a request buffer kept for the next one */
	size_t fbuf_cap;
	msgpack_zone zone;             /* decodes replies; a nested decode (from a callback)
	                                * gets its own */
	bool zone_ok, zone_busy;

	anesc_pending *pending;        /* owned array, n_pending used of cap_pending */
	size_t n_pending, cap_pending;
	size_t n_outstanding;          /* pending entries not done */
	size_t n_async;                /* pending entries with a callback, done or not */
	size_t n_async_done;           /* of those, done and not yet delivered */
	int last_failed_step;          /* aneshare_last_failed_step */
	uint64_t last_run_us;          /* aneshare_last_run_us */

	/* the synchronous call being waited for */
	bool sync_active, sync_done, sync_killed;
	uint32_t sync_msgid;
	int sync_rc;
	anesc_result_fn sync_fn;
	void *sync_ud;

	aneshare_surface *surfaces;    /* owned lists */
	aneshare_program *programs;
	aneshare_state *states;
	aneshare_event *events;
};

/* An event handle (event.c).  Events are not restored after a reconnect:
 * a handle made on an earlier daemon connection is closed for good. */
struct aneshare_event {
	aneshare_conn *conn;
	aneshare_event *prev, *next;
	uint32_t id;                   /* on the daemon connection it was made on */
	uint64_t epoch;                /* conn->reconnects when it was made */
	bool imported;                 /* a wait-only handle (event.import) */
};

struct aneshare_state {
	aneshare_conn *conn;
	aneshare_state *prev, *next;
	aneshare_program *program;     /* borrowed; NULL once released (state.c) */
	uint32_t fn;
	uint32_t id;                   /* on the current daemon connection; 0 once lost */
	int lost;                      /* 0, or why a reconnect could not make it again */
	bool stale;                    /* made again after a reconnect: contents lost
	                                * until aneshare_state_reset */
	uint64_t size;
};

/* Record a failure of a call on c: rc is returned, last_error is the message. */
int anesc_fail(aneshare_conn *c, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Connection failures.  A connection is either usable, broken (the stream
 * ended without an `error` notification: the daemon died or restarted) or
 * dead (final: the daemon said why it hung up, or sent garbage).  While
 * broken, requests fail with
 *   -ANESHARE_EDISCONNECTED   if c->reconnect: the next call reconnects;
 *   -ECONNRESET               otherwise (final, as without reconnecting).
 * A function below that fails because the connection broke returns one of
 * these two; the caller can tell the phase from which function failed.
 */

/* Bounds one call's reconnecting: all attempts it makes share one deadline. */
typedef struct anesc_retry {
	bool started;
	int64_t deadline_ms;
} anesc_retry;

/* Make c usable for a request: fails if dead; if broken, reconnects (when
 * enabled: retrying until rt's deadline, restoring surfaces and programs)
 * or fails with -ECONNRESET. */
int anesc_ready(aneshare_conn *c, anesc_retry *rt);

/* Start a request frame: checks the connection is usable (never reconnects),
 * picks a msgid and packs [0, msgid, method, { -- then pack n_params
 * key/value pairs. */
int anesc_begin(aneshare_conn *c, anes_frame *f, const char *method, uint32_t n_params,
                uint32_t *ret_msgid);

/* Finish and send f with fds (taken in every case: closed on failure; the
 * frame is released in every case).  If the connection breaks, the daemon
 * did not receive all of the request (so it cannot have acted on it). */
int anesc_send(aneshare_conn *c, anes_frame *f, const int *fds, unsigned nfds);

/* Read frames until the response to msgid arrives; returns its result:
 * fn's result on success, or the daemon's error.  If the connection breaks
 * first, the daemon may or may not have acted on the request. */
int anesc_wait_for(aneshare_conn *c, uint32_t msgid, anesc_result_fn fn, void *ud);

/* Packs a request's n_params key/value pairs; may fail (with anesc_fail)
 * before packing anything, e.g. when an object the request names was lost. */
typedef int (*anesc_pack_fn)(aneshare_conn *c, msgpack_packer *pk, void *ud);

enum {
	ANESC_IDEMPOTENT = 1,      /* may be sent again after a break with it in flight */
	ANESC_NO_RECONNECT = 2,    /* fail at once if the connection is or becomes broken */
	ANESC_PENDING = 4,         /* a run: its response goes to the pending table (a
	                            * ticket to wait for, or an async call with cb) */
};

typedef struct anesc_req {
	const char *method;
	uint32_t n_params;
	anesc_pack_fn pack;        /* NULL when n_params is 0 */
	void *pack_ud;
	int fd;                    /* -1, or an fd to send along (borrowed: a duplicate is sent) */
	const int *fds;            /* or nfds fds to send along (borrowed: duplicates are sent) */
	unsigned nfds;
	anesc_result_fn fn;        /* may be NULL */
	void *fn_ud;
	unsigned flags;
	aneshare_done_fn cb;       /* ANESC_PENDING: NULL (a ticket), or an async call's
	                            * callback, sent without blocking */
	void *cb_ud;
} anesc_req;

/* The one reconnect loop of every request: make the connection ready
 * (reconnecting, unless ANESC_NO_RECONNECT, within rt's deadline), pack,
 * send -- again, to the next daemon, while the broken connection did not
 * deliver it.  ANESC_PENDING: registered in the pending table first (and a
 * blocking sender of runs first waits until fewer than max_inflight are
 * outstanding: the daemon stops reading beyond that, and a blocking writer
 * could then deadlock with it).  0 with *ret_msgid once it is sent. */
int anesc_send_request(aneshare_conn *c, const anesc_req *rq, anesc_retry *rt,
                       uint32_t *ret_msgid);

/* One synchronous request: anesc_send_request, then wait for the response.
 * An ANESC_IDEMPOTENT request that was in flight when the connection broke
 * is sent again (once). */
int anesc_request(aneshare_conn *c, const anesc_req *rq);

/* An anesc_pack_fn for the params { "id": *(uint32_t *)ud }. */
int anesc_pack_id(aneshare_conn *c, msgpack_packer *pk, void *ud);

/* What aneshare_surface_release and aneshare_program_release ask of the
 * daemon: release its object id ("surface.release" or "program.release").
 * Never reconnects: if the connection broke, the daemon released the object
 * with it (then 0), and it will not be restored. */
int anesc_release(aneshare_conn *c, const char *method, uint32_t id);

/* Best effort, to clean up after a failure: release the daemon's object id
 * ("surface.release" or "program.release") if the connection is usable,
 * without reconnecting.  last_error is kept. */
void anesc_release_quiet(aneshare_conn *c, const char *method, uint32_t id);

/* The code a call fails with when the connection broke: see above. */
int anesc_broken_rc(const aneshare_conn *c);

/* Register msgid as a submitted run (before sending it). */
int anesc_pending_add(aneshare_conn *c, uint32_t msgid);
void anesc_pending_drop(aneshare_conn *c, uint32_t msgid);
/* Read frames until fewer than limit runs are outstanding. */
int anesc_pending_throttle(aneshare_conn *c, size_t limit);
/* Wait for a pending entry (a ticket) and drop it: its result, and its
 * failed step in *ret_failed_step (may be NULL) whatever the result. */
int anesc_pending_wait(aneshare_conn *c, uint32_t msgid, int *ret_failed_step);

/* Non-blocking I/O for async calls (async.c).  anesc_send_nowait is
 * anesc_send that queues what the socket does not take now (aneshare_events
 * then asks for writable).  anesc_io_nowait sends what it can and reads and
 * handles every frame that has arrived; 0, or the code of a broken or dead
 * connection. */
int anesc_send_nowait(aneshare_conn *c, anes_frame *f);
int anesc_io_nowait(aneshare_conn *c);
/* At disconnect: call every undelivered callback with -ECANCELED. */
void anesc_async_cancel_all(aneshare_conn *c);

/* Runs (async.c), shared by aneshare_run*.  anesc_check_step checks a step's
 * function and surfaces (not its program), prefixing the messages with pre
 * ("" for a single run, "step N: " in a chain).  anesc_pack_step packs its
 * four key/value pairs (five with a state).  anesc_submit sends a run (chain: { steps: [...] })
 * as an async call (cb) or as a ticket to wait for (*ret_msgid), sending it
 * again only when the daemon cannot have received it: every run, blocking
 * (aneshare_run, a ticket waited for at once), ticket, chain or async. */
int anesc_check_step(aneshare_conn *c, const char *pre, const aneshare_step *st);
/* Packs "program" (p's current ID) and "function" (p's function fn, which
 * the caller has checked): -ANESHARE_ENO_SUCH_PROGRAM when p was lost at a
 * reconnect. */
int anesc_pack_program_fn(aneshare_conn *c, msgpack_packer *pk, const aneshare_program *p,
                          uint32_t fn);
int anesc_pack_step(aneshare_conn *c, msgpack_packer *pk, const aneshare_step *st,
                    const aneshare_state *state);
/* states: NULL, or each step's state (or NULL): packed as its "state".
 * o: NULL, or options whose wait and signal lists (checked by
 * anesc_check_events) are packed as the run's "wait" and "signal". */
int anesc_submit(aneshare_conn *c, const aneshare_step *steps, aneshare_state *const *states,
                 size_t n, bool chain, const aneshare_run_opts *o, aneshare_done_fn cb, void *ud,
                 uint32_t *ret_msgid);

/* Events (event.c).  anesc_check_events checks a run's wait and signal
 * lists before anything is sent (counts, NULLs, connection, imported
 * handles in the signal list, duplicates, events closed by a reconnect).
 * anesc_pack_events packs the "wait" and "signal" pairs of the non-empty
 * lists at send time, failing with -ANESHARE_EEVENT_CLOSED if a reconnect
 * came between.  anesc_events_params: how many pairs that is. */
int anesc_check_events(aneshare_conn *c, const aneshare_run_opts *o);
int anesc_pack_events(aneshare_conn *c, msgpack_packer *pk, const aneshare_run_opts *o);
uint32_t anesc_events_params(const aneshare_run_opts *o);
void anesc_event_free_local(aneshare_event *ev);

/* Export and import by token, shared by surfaces and events (surface.c).
 * anesc_pack_export_limits packs o's "uses" and "ttl_ms" where they are not
 * 0.  anesc_export_result reads an export's result: 0 with *ret_token (64
 * lowercase hex digits) and *ret_expires_ms (0 when absent), or
 * -ANESHARE_EPROTOCOL (anesc_fail) for a malformed one.  anesc_pack_token
 * is the anesc_pack_fn of { "token": ud }, ud a checked token's text. */
void anesc_pack_export_limits(msgpack_packer *pk, const aneshare_export_opts *o);
int anesc_export_result(aneshare_conn *c, const msgpack_object *res, aneshare_token *ret_token,
                        uint64_t *ret_expires_ms);
int anesc_pack_token(aneshare_conn *c, msgpack_packer *pk, void *ud);

/* Copy a msgpack str (bounded) into a new NUL-terminated string: 0,
 * -ENOENT, -EINVAL (wrong type, too long or holds a NUL), -ENOMEM. */
int anesc_dup_str(const msgpack_object *map, const char *key, uint32_t max_len, char **ret);

void anesc_surface_free_local(aneshare_surface *s);
void anesc_program_free_local(aneshare_program *p);
void anesc_state_free_local(aneshare_state *st);

/* After a reconnect: import s (compile p) again on the new connection.
 * 0 when done -- restored with a new ID, or marked lost when the daemon
 * refused it --, or the error when the connection failed meanwhile. */
int anesc_surface_restore(aneshare_conn *c, aneshare_surface *s);
int anesc_program_restore(aneshare_conn *c, aneshare_program *p);
/* The same for a state (after its program): made again, zero-filled and
 * marked stale. */
int anesc_state_restore(aneshare_conn *c, aneshare_state *st);
/* A state's params for a run step ("state": ID), checked: -ENO_SUCH_STATE
 * (lost), -ESTATE_LOST (stale). */
int anesc_state_check(aneshare_conn *c, const char *pre, const aneshare_state *st);

/* The connection's intrusive lists of its objects (surfaces, programs,
 * states, events): each object has conn, prev and next, the connection the
 * list's head.  Link obj at the head of conn->field; unlink it from its
 * connection's list (obj->conn set). */
#define ANESC_LIST_LINK(c, field, obj)                                                    \
	do {                                                                              \
		(obj)->conn = (c);                                                        \
		(obj)->prev = NULL;                                                       \
		(obj)->next = (c)->field;                                                 \
		if ((c)->field)                                                           \
			(c)->field->prev = (obj);                                         \
		(c)->field = (obj);                                                       \
	} while (0)
#define ANESC_LIST_UNLINK(field, obj)                                                     \
	do {                                                                              \
		if ((obj)->prev)                                                          \
			(obj)->prev->next = (obj)->next;                                  \
		else                                                                      \
			(obj)->conn->field = (obj)->next;                                 \
		if ((obj)->next)                                                          \
			(obj)->next->prev = (obj)->prev;                                  \
	} while (0)

#endif
