/* SPDX-License-Identifier: MIT */
/*
 * Internals of aneshared shared by server.c, conn.c, methods.c, surface.c,
 * program.c and worker.c.  Everything here runs on the loop thread unless a
 * comment says otherwise; the cross-thread state lives in worker.c and in a
 * connection's send state (anes_conn.send_mu: workers send run replies).
 * Modules with interfaces of their own include those, not this header:
 * util.h (logging, clock), idtable.h, jobsched.h and tpool.h (scheduling,
 * the generic thread pool), devworker.h and backend_open.h (the device).
 */
#ifndef ANES_DAEMON_H
#define ANES_DAEMON_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "anes_proto.h"
#include "anes_spin.h"
#include "backend.h"
#include "idtable.h"
#include "server.h"
#include "tenant.h"
#include "tpool.h"
#include "util.h"

#define ANES_CLIENT_NAME_MAX 128   /* bytes of the hello "client" name */
#define ANES_WEIGHT_PATH_MAX 256   /* bytes of a weight path */
#define ANES_KEY_SIZE 32           /* SHA-256 */

typedef struct anes_conn anes_conn;
typedef struct anes_event anes_event;
/* A request that waits for events on its connection (an event.wait, a
 * parked run: state/event.h).  On the connection's list while it waits
 * (loop); cancel() ends it when the connection closes (it unlinks it). */
typedef struct anes_parked {
	struct anes_parked *prev, *next;
	void (*cancel)(struct anes_parked *p);
} anes_parked;
typedef struct anes_surface anes_surface;
struct anes_share_tok;
typedef struct anes_centry anes_centry;
typedef struct anes_wfile anes_wfile;
typedef struct anes_cache anes_cache;
typedef struct anes_pool anes_pool;
typedef struct anes_job anes_job;

/* ---- the server -------------------------------------------------------- */

/* Sharing surfaces between connections by token (share.c). */
typedef struct anes_smem anes_smem;
typedef struct anes_shares {
	struct anes_share_tok *toks;  /* live tokens, daemon-wide (doubly linked) */
	uint32_t n_toks;
	anes_smem *exported;          /* memory exported at least once, alive (xnext) */
	uv_timer_t timer;             /* ends penalties of failed token imports */
	bool timer_init;
	uint32_t n_paused;            /* connections under a penalty */
} anes_shares;

typedef struct anes_stats {
	_Atomic uint64_t runs;    /* added to by lane workers too */
	_Atomic uint64_t lane_runs;  /* of those, run on a lane (lanes.c) */
	/* Lane answers after which the lane spin polled for the next request,
	 * those polls that got it, those that ended because the thread was
	 * switched out (the gap rule), and answers that did not poll because
	 * of the spin's penalty (lanes.c, lane_ready). */
	_Atomic uint64_t lane_spins, lane_spin_hits, lane_spin_gaps, lane_spin_skips;
	/* Times a lane thread gave a client's lane up at the end of its slice
	 * (--sched-slice-us) with requests buffered or a spin due (lanes.c). */
	_Atomic uint64_t lane_slice_ends;
	/* Runs made ready by an event and run on the thread that raised it
	 * (anes_pool_run_ready; docs/design.md, "Events"). */
	_Atomic uint64_t event_runs;
	uint64_t compiles;
	uint64_t cache_hits;
	uint64_t surfaces;        /* alive, all connections */
	uint64_t surface_bytes;
	uint64_t states;          /* alive, all connections (state/state.h); each is also a surface */
	uint64_t state_bytes;
	uint64_t events;          /* alive (state/event.h) */
	uint64_t refused;         /* connections refused for their uid */
	uint64_t timed_out;       /* closed for a hello or a frame not done in time */
	uint64_t dropped;         /* clients dropped for not reading their responses */
	uint64_t turned_away;     /* connections accepted and closed at once: the daemon was
	                           * out of fds (server.c, the reserve fd) */
} anes_stats;

struct anes_server {
	uv_loop_t loop;
	msgpack_zone zone;           /* loop: decodes one request at a time, cleared after each */
	bool zone_init;
	void *job_cache;             /* run/run.c: single-step run jobs kept for reuse */
	unsigned n_job_cache;
	anes_run_wire *run_wire;     /* run/run.c: the loop's run decoder workspace (malloc'd) */
	anes_server_config cfg;      /* socket_path points to socket_path below */
	anes_limits lim;
	anes_backend *backend;
	char *socket_path;
	char *lock_path;
	int lock_fd;
	int fault_gate_fd;           /* --fault-inject run_gate: the FIFO, O_RDWR; -1: off */
	int listen_fd;
	bool own_socket_file;        /* unlink socket_path + lock_path at shutdown */
	int reserve_fd;              /* given up to accept-and-close on EMFILE */

	uv_poll_t listen_poll;
	uv_async_t stop_async;
	uv_signal_t sig_int;
	uv_signal_t sig_term;
	uv_idle_t idle;              /* deferred connection work, see conn.c */
	uv_timer_t drain_timer;      /* shutdown_timeout_ms after the first stop request */
	uv_timer_t unsent_timer;     /* runs while a client has unread output over drop_unsent_bytes */
	bool handles_init;
	bool listen_closed;
	atomic_bool draining;        /* stop requested: finishing requests in flight
	                              * (read by lane workers) */
	bool shut_down;              /* everything closed or closing */
	bool running;
	uint64_t refusal_log_ms;     /* rate limit of "refused" log lines */
	uint32_t refusals_unlogged;

	anes_pool *pool;
	anes_cache *cache;

	anes_conn *conns;            /* open connections (doubly linked) */
	uint32_t n_conns;
	uint64_t next_conn_serial;
	anes_conn *dead;             /* failed, waiting to be torn down */
	anes_conn *kicked;           /* waiting to have buffered frames processed */
	unsigned out_batch;          /* > 0: anes_conn_queue only queues (see anes_conn_batch_begin) */
	anes_conn *to_flush;         /* queued to while out_batch > 0 */

	/* Input memory (conn.c, input_charge): bytes reserved for frames over
	 * ANES_IO_RBUF_MIN, all connections, and the connections waiting for
	 * room, oldest first: only the first of them gets room. */
	pthread_mutex_t input_mu;
	uint64_t input_used;                            /* under input_mu */
	anes_conn *input_wait_head, *input_wait_tail;   /* under input_mu */
	unsigned input_tenant_waiters;                  /* under input_mu: connections waiting
	                                                 * for room in their process's or uid's
	                                                 * input limit (not on the list) */
	anes_conn *input_twait;      /* loop: those connections */
	bool input_live;             /* under input_mu: input_async may be sent */
	uv_async_t input_async;      /* room was given back: resume the first waiter */
	uv_timer_t input_timer;      /* hello and frame deadlines (conn.c) */

	uint64_t start_ns;
	anes_stats stats;
	anes_tenants tenants;        /* what each client process holds (tenant.h) */
	unsigned run_concurrency;    /* most runs of one program at once on the job threads
	                              * (or a device worker's), and ... */
	unsigned lane_concurrency;   /* ... how many more on the lane threads (program memory) */
	uint64_t next_surface_key;   /* anes_smem.key */
	anes_shares shares;          /* tokens and exported memory (share.c) */
	anes_event *events;          /* loop: every event alive (state/event.h) */
	/* Runs whose event waits are not all met, and event.waits pending:
	 * changed by any thread that meets one (drain: anes_events_only_parked). */
	_Atomic uint32_t ev_parked;
};

/* ---- connections (conn.c) ------------------------------------------------- */

/* ---- jobs and lanes (worker.c) ------------------------------------------- */

struct anes_job {
	anes_job *next;
	/* On a worker thread: the work, touching nothing but the job and what
	 * the job holds references to. */
	void (*work)(anes_job *j);
	/* On the loop thread, once: deliver the result and free the job.
	 * cancelled: work never ran (shutdown). */
	void (*done)(anes_job *j, bool cancelled);
	/* Optional, on the worker thread right after work(): answer the client
	 * directly.  May return a mutex it leaves locked; the pool unlocks it
	 * once the job is on the done list (so the loop, by taking that mutex
	 * and then calling anes_pool_collect, is sure to see the job). */
	pthread_mutex_t *(*reply)(anes_job *j);
	/* Optional, any thread: whether the job is short enough to run on the
	 * thread that made it ready (anes_pool_run_ready). */
	bool (*can_inline)(anes_job *j);
	/* task.si is set by the submitter (zero: the pool's own flow, a run of
	 * unknown cost): the client's flow, the estimated device time, compile
	 * or run.  The rest of task, and pool, are the pool's. */
	anes_task task;
	anes_pool *pool;
};

/* The default of --sched-slice-us (anes_server_config.sched_slice_us). */
#define ANES_SCHED_SLICE_US 5000u

/* Per lane thread scratch, reused from request to request. */
typedef struct anes_wctx {
	msgpack_zone zone;      /* cleared before each message; the run decoder's */
	anes_frame reply;       /* its buffer is kept between replies */
	void *buf;              /* malloc'd, grows: run steps of a lane run */
	size_t buf_cap;
	anes_run_wire *wire;    /* malloc'd at first use: the run decoder's workspace */
	void *rest_spare;       /* conn.c: a reply's rest, in case a send falls short */
	char *out;              /* lanes.c, lane_batch: replies of a pipeline, to go in one send */
	size_t out_len, out_cap;
} anes_wctx;

/* A lane: a socket that the lane threads read themselves (docs/design.md,
 * "Lanes").  Armed one-shot: once readable, exactly one lane thread calls
 * ready(); it stays disarmed until armed again. */
typedef struct anes_lane anes_lane;
struct anes_lane {
	int fd;                                       /* borrowed */
	void (*ready)(anes_lane *l, anes_wctx *ctx);  /* on a worker thread */
	bool registered;                              /* in the pool's poll set */
};

struct anes_conn {
	anes_server *srv;
	anes_conn *prev, *next;      /* srv->conns */
	anes_conn *dead_next;        /* srv->dead */
	anes_conn *kick_next;        /* srv->kicked */
	uint64_t serial;
	atomic_uint refs;            /* the server's (until the poll handle closed) + jobs +
	                              * waiters + a lane thread's reply on its way */
	int fd;
	uv_poll_t poll;
	int events;                  /* UV_READABLE/UV_WRITABLE currently polled */
	bool failed;                 /* no more I/O; teardown pending or done */
	bool torn_down;
	bool kick_pending;
	bool hello_done;
	bool processing;             /* in conn_process: update_poll waits for its end */
	bool flush_pending;          /* on srv->to_flush (referenced) */
	anes_conn *flush_next;
	anes_io io;
	char name[ANES_CLIENT_NAME_MAX + 1];
	anes_tenant *tenant;         /* its peer process (referenced) */
	anes_conn *tprev, *tnext;    /* tenant->conns */

	uint32_t inflight;           /* runs and compiles not answered yet */
	uint32_t pending_compiles;   /* reserve a handle slot each */
	anes_idtable surfaces;       /* -> anes_surface* (the table's reference) */
	anes_idtable programs;       /* -> anes_centry* (one handle each) */
	anes_idtable states;         /* -> anes_state* (the table's reference; state/state.h) */
	anes_idtable event_ids;        /* -> anes_evhandle* (state/event.h) */
	uint32_t ev_waits;           /* event.wait requests not answered yet */
	anes_parked *parked;         /* loop: its requests waiting for events */
	uint32_t surfaces_alive;     /* including released ones still held by runs, and
	                              * the states' memory */
	uint64_t surface_bytes;
	/* Sharing (share.c): live tokens this connection exported, its failed
	 * token imports (forgotten after a quiet while), and the penalty they
	 * earned: not read until share_until_ns while share_paused. */
	uint32_t share_tokens;
	uint32_t share_fails;
	uint64_t share_last_fail_ns;
	uint64_t share_until_ns;
	bool share_paused;
	/* Input (conn.c, "input limits"). */
	anes_conn *input_prev, *input_next;  /* srv->input_wait_*, under srv->input_mu */
	bool input_waiting;          /* under srv->input_mu: on that list */
	uint64_t input_need;         /* under srv->input_mu: the room last refused */
	bool input_by_tenant;        /* read side: that refusal was its process's or uid's limit */
	bool input_tenant_wait;      /* loop: waiting for that room, on srv->input_twait */
	anes_conn *twait_prev, *twait_next;
	bool input_blocked;          /* loop: not read until the room it waits for is there */
	uint64_t created_ns;         /* anes_clock_ns at accept: the hello deadline */
	/* anes_clock_ns at the first byte of the incomplete frame buffered
	 * (moved later by the time the daemon did not read c), 0 if none.
	 * Written by the read side's owner, read by the loop's deadline timer. */
	_Atomic uint64_t frame_since_ns;
	uint64_t frame_off;          /* read side: rd_consumed when frame_since_ns was set */
	uint64_t paused_since_ns;    /* loop: when it stopped reading c (0: it reads) */
	bool unsent_over;            /* io.out_bytes > drop_unsent_bytes since unsent_since_ms */
	uint64_t out_charged;        /* under send_mu: output bytes charged to tenant (conn.c) */
	uint64_t unsent_since_ms;    /* uv_now */

	/* Shared with the workers, which send run replies themselves when
	 * nothing is queued before them (anes_conn_try_send_locked).  send_mu
	 * guards every send on fd and every change of io's output queue (the
	 * loop reads io.out_head/out_bytes without it: only it changes them),
	 * wclosed and wblocked. */
	pthread_mutex_t send_mu;
	bool wclosed;                /* failed: workers do not touch fd any more */
	bool wblocked;               /* a worker sent part of a frame; its rest is
	                              * queued by the job's done() before anything else */
	atomic_uint direct_unseen;   /* replies sent by workers whose jobs' done()
	                              * has not run yet */
	atomic_uint lane_rests;      /* lane replies whose rest the loop has not
	                              * queued yet (lanes.c, lane_send) */

	/* The lane (docs/design.md, "Lanes").  While `lane` is set a
	 * worker owns the read side: io's receive buffer and fd queue, and
	 * the handling of the requests in it.  It does `run` and
	 * `event.signal` requests itself and hands everything else back
	 * (lane_job), so only those happen there, which read the surface,
	 * program, state and event tables and change nothing the loop owns
	 * (an event's value is under its own mutex, state/event.h); the loop
	 * arms a lane only while no compile
	 * is pending (compiles add to the program table when they finish).
	 * A connection with a lane is not torn down until it is back. */
	bool lane;                   /* loop only: armed or busy, not handed back yet */
	bool teardown_deferred;      /* loop only: failed while the lane was out */
	anes_lane lane_h;
	anes_job lane_job;           /* a worker hands the read side back with it */
	pthread_mutex_t lane_mu;
	int lane_state;              /* under lane_mu: ANES_LANE_OFF/ARMED/BUSY */
	bool lane_stop;              /* under lane_mu: the loop wants it back */
	/* The lane spin's history for this client (lanes.c, lane_spin): used
	 * only by the lane thread holding the lane (BUSY), handed from thread
	 * to thread with it.  Per client, not per thread: whether the next
	 * request comes soon is this client's habit, and a thread's history
	 * would mix the clients it served (two clients that each pause once
	 * after a burst made two misses in a row, and the penalty then
	 * skipped the spin before the next burst; docs/design.md, "The spin"). */
	anes_spin lane_spin;
	/* Set by the worker before the hand-back, read by the loop after it. */
	int lane_status;             /* 0, ANES_LANE_EOF, ANES_LANE_NOROOM, a read's -errno
	                              * or -ENOMEM */

	/* Draining (docs/protocol.md, "Shutdown"): a request whose first byte
	 * had reached the daemon's socket when the stop request came is done as
	 * usual; later ones get shutting_down.  Offsets in the byte stream from
	 * the client: rd_total counts what was read (by the loop, or by a lane
	 * worker under lane_mu), rd_consumed the frames taken (by whoever owns
	 * the read side), drain_cutoff is rd_total plus what the socket held
	 * when draining began (UINT64_MAX before). */
	uint64_t rd_total;
	uint64_t rd_consumed;
	uint64_t drain_cutoff;
	bool predrain_frame;         /* loop: the request being handled came before */
};

enum { ANES_LANE_OFF, ANES_LANE_ARMED, ANES_LANE_BUSY };
#define ANES_LANE_EOF 1
#define ANES_LANE_NOROOM 2   /* a frame's memory was refused (conn.c, input_wait) */

/* Accept an fd from accept4 (owned by the connection from now on, also on
 * failure). */
int anes_conn_new(anes_server *srv, int fd);
anes_conn *anes_conn_ref(anes_conn *c);
void anes_conn_unref(anes_conn *c);
/* Stop all I/O on c and schedule its teardown.  Safe anywhere, idempotent. */
void anes_conn_fail(anes_conn *c, const char *why);
/* Send an error notification with code (best effort), then fail c. */
void anes_conn_close_with_error(anes_conn *c, int code, const char *msg);
/* Send a protocol error notification (best effort), then fail c. */
void anes_conn_protocol_error(anes_conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Schedule processing of buffered frames (after in-flight work finished). */
void anes_conn_kick(anes_conn *c);
/* Tear down failed connections and process kicked ones (loop idle). */
void anes_conn_run_deferred(anes_server *srv);
/* Loop, when draining begins: note where c's stream stands (drain_cutoff). */
void anes_conn_drain_mark(anes_conn *c);
/* Loop: true while requests that came before the drain are still unread. */
bool anes_conn_predrain_unread(anes_conn *c);
/* Loop: ask c's lane back.  True if a worker is in it now: then it comes
 * back when that worker is done (lane_back); an armed one stays armed. */
bool anes_conn_lane_recall(anes_conn *c);
/* Loop, once the workers are joined: every lane still armed is the
 * loop's again (nobody will read it). */
void anes_conn_lanes_orphan(anes_server *srv);
/* Drop c for not reading its responses (logged, counted in status). */
void anes_conn_drop_slow(anes_conn *c);
/* srv->unsent_timer's callback: drop clients over drop_unsent_bytes for
 * longer than drop_unsent_seconds. */
void anes_conn_on_unsent_timer(uv_timer_t *h);
/* srv->input_timer's callback: close connections past their hello or
 * frame deadline; srv->input_async's: resume the first connection waiting
 * for input memory. */
void anes_conn_on_input_timer(uv_timer_t *h);
void anes_conn_on_input_async(uv_async_t *h);
/* The input_timer's period for srv's limits (ms). */
uint64_t anes_conn_input_tick_ms(const anes_server *srv);

/* Shutdown (server.c): while draining, close connections that have nothing
 * left in flight or to send; then, once none is left, finish. */
void anes_server_drain_check(anes_server *srv);
void anes_server_drained(anes_server *srv);

/* Queue a finished frame (takes ownership of data and fds in every case) and
 * try to send it.  A connection that failed silently drops it. */
void anes_conn_queue(anes_conn *c, void *data, size_t len, int *fds, unsigned nfds);
/* Finish f and queue it; on failure answer msgid with no_memory/internal. */
void anes_conn_send(anes_conn *c, anes_frame *f, uint32_t msgid, int *fds, unsigned nfds);
/* Answer msgid with an empty result ({}), through anes_conn_send. */
void anes_conn_reply_empty(anes_conn *c, uint32_t msgid);
void anes_conn_reply_error(anes_conn *c, uint32_t msgid, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* methods.c: answer m with invalid_params for its parameter key, which a
 * typed accessor failed to read with r (-ENOENT: missing). */
void anes_reply_param(anes_conn *c, const anes_msg *m, const char *key, int r);
/* methods.c: the program whose ID is m's parameter key; false (m answered
 * with invalid_params or no_such_program) when there is none.  *ret is
 * borrowed from c's program table. */
bool anes_lookup_program(anes_conn *c, const anes_msg *m, const char *key, anes_centry **ret);
/* Any thread: whether c's connection is closed for writing (the client is
 * gone or is being dropped): nothing sent to it arrives any more. */
bool anes_conn_write_closed(anes_conn *c);

/* Any thread, c->send_mu held: send data (finished frames without fds) now,
 * without blocking (anes_io_try_send), if the connection is open and
 * nothing waits to be sent before it.  Returns the bytes sent: len (done),
 * 0 (nothing sent: queue it as usual), or fewer than len (c->wblocked is
 * set: the rest must go to anes_conn_queue_rest before anything else is
 * sent).  Worker-direct replies count in c->direct_unseen from before the
 * send until their job's done() calls anes_conn_direct_seen(). */
size_t anes_conn_try_send_locked(anes_conn *c, const void *data, size_t len);
/* Loop: the rest of a frame of which a worker sent the first sent bytes
 * (takes data; clears c->wblocked). */
void anes_conn_queue_rest(anes_conn *c, void *data, size_t len, size_t sent);
void anes_conn_direct_seen(anes_conn *c);
/* Between begin and end, frames queued by anes_conn_queue leave together at
 * end (one sendmsg for up to 64 of them) rather than one by one: the pool
 * delivers its finished jobs inside such a batch. */
void anes_conn_batch_begin(anes_server *srv);
void anes_conn_batch_end(anes_server *srv);

/* ---- methods (methods.c) ---------------------------------------------------- */

/* Handle one request.  fds[i] that the method keeps are set to -1; the
 * caller closes the rest.  Runs do not come here (run/run.h). */
void anes_dispatch_request(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);
/* The checks every request passes first (hello done unless it is hello;
 * not after a drain began unless it came before): false when msgid was
 * answered with the error. */
bool anes_request_admit(anes_conn *c, uint32_t msgid, bool is_hello);

/* ---- surfaces (surface.c) --------------------------------------------------- */

/* A surface's memory: one per surface.create or surface.import by fd or by
 * IOSurface ID, shared by every handle to it (token imports add handles,
 * share.c).  Counted once in the daemon's totals (stats.surfaces and
 * surface_bytes, and the daemon-wide surface charges) while it lives; it
 * lives while any handle does.  Loop thread only. */
struct anes_smem {
	unsigned refs;      /* its handles */
	anes_server *srv;
	void *map;          /* MAP_SHARED, size bytes */
	uint64_t size;
	uint64_t key;       /* unique in this daemon (backend.h, anes_surface_desc) */
	int fd;             /* a CLOEXEC dup of the memfd (O_RDWR), kept while the
	                     * memory lives (export and the device worker need it);
	                     * -1 with shm (named by ID) */
	bool fd_charged;    /* the daemon's total holds an fd for it */
	struct anes_shm *shm;   /* owned: memory named by ID (IOSurface, anes_shm.h);
	                         * map == shm->base.  NULL for memfd */
	bool shm_created;       /* by this daemon (surface.create): on the list of
	                         * anes_surface_shm_created, through shm_prev/next */
	anes_smem *shm_prev, *shm_next;
	anes_surface *handles;  /* its handles (anes_surface.mnext), newest first */
	/* Sharing (share.c): live tokens, whether the memfd's mode was made
	 * read-only (first read-only export), and the daemon's list of memory
	 * ever exported (status "shared"). */
	uint32_t tokens;
	bool ro_mode;
	bool exported;
	anes_smem *xprev, *xnext;
};

/* A handle: one connection's ID for a surface's memory.  map, size, key, fd
 * and shm are the memory's (copied for the run path). */
struct anes_surface {
	unsigned refs;      /* the owner's table + runs in flight */
	void *map;
	uint64_t size;
	anes_conn *owner;   /* referenced: accounting outlives the table entry */
	anes_tenant *tenant;    /* owner's, referenced: charged 1 surface, size and,
	                         * when fd_charged, 1 fd (not the daemon's totals:
	                         * the memory holds those) */
	bool fd_charged;
	uint64_t key;
	int fd;             /* the memory's (borrowed), -1 if none */
	struct anes_shm *shm;   /* the memory's (borrowed), NULL for memfd */
	anes_smem *mem;     /* referenced */
	bool read_only;     /* from a read-only token: never a run output */
	anes_surface *mprev, *mnext;     /* mem->handles */
	struct anes_share_tok *tokens;   /* share.c: live tokens exported from this handle */
};

/* Whether surfaces on memfds keep an fd in the daemon: always (a memfd
 * surface can be exported, and a device worker needs it). */
bool anes_surface_keeps_fd(const anes_server *srv);
/* Charge a handle of size bytes (and an fd, when fd) to owner's tenant and,
 * when daemon, to the daemon's totals (new memory; false: a token import's
 * handle to memory the daemon holds already) before it is made.  0, or
 * -EDQUOT / -ENOSPC (tenant.h) with *ret_res the resource over its limit.
 * anes_surface_new* take the charge over on success; on their failure the
 * caller undoes it with the same arguments. */
int anes_surface_charge(anes_conn *owner, uint64_t size, bool fd, bool daemon, anes_res *ret_res);
void anes_surface_uncharge(anes_conn *owner, uint64_t size, bool fd, bool daemon);
/* New memory: map size bytes of fd (not taken; the memory keeps a CLOEXEC
 * dup, and the mapping) and the first handle to it, owner's.  -ENOMEM,
 * -EMFILE, mmap's errno. */
int anes_surface_new(anes_conn *owner, int fd, uint64_t size, anes_surface **ret);
/* New memory on shm (anes_shm.h; taken on success only) and its first
 * handle.  With a device worker (run_surfaces) the worker looks it up by
 * its ID (docs/worker.md). */
int anes_surface_new_shm(anes_conn *owner, struct anes_shm *shm, bool created,
                         anes_surface **ret);
/* Another handle to mem, owner's (a token import, charged with daemon =
 * false).  -ENOMEM. */
int anes_surface_new_handle(anes_conn *owner, anes_smem *mem, bool read_only,
                            anes_surface **ret);
/* Whether a live surface this process created (surface.create) has wire ID
 * id: surface.import refuses those (docs/security.md).  Thread-safe. */
bool anes_surface_shm_created(uint32_t id);
anes_surface *anes_surface_ref(anes_surface *s);
anes_surface *anes_surface_unref(anes_surface *s);
/* A handle leaves its connection's table (surface.release, disconnect):
 * the tokens exported from it die (share.c), then the table's reference
 * goes.  Returns whether runs still hold it. */
bool anes_surface_drop(anes_surface *s);

/* The methods of methods.c that share.c uses for surface.import by token:
 * the connection's caps and the charge (anes_surface_charge's daemon), and
 * the answer {id, size[, iosurface_id][, read_only]} with fd attached
 * (taken; -1: none) that enters s in the table (s's reference is taken in
 * every case). */
bool anes_surface_limits_ok(anes_conn *c, uint32_t msgid, uint64_t size, bool fd, bool daemon);
void anes_surface_reply(anes_conn *c, uint32_t msgid, anes_surface *s, int fd, bool with_ro);

/* ---- sharing (share.c) ------------------------------------------------------ */

/* Bytes of a token (64 hex digits on the wire). */
#define ANES_TOKEN_BYTES 32

/* n bytes from the OS's CSPRNG (getrandom, arc4random_buf, /dev/urandom).
 * 0 or -errno. */
int anes_random_bytes(void *buf, size_t n);
/* anes_server_new / shutdown: the penalty timer. */
void anes_shares_init(anes_server *srv);
void anes_shares_close(anes_server *srv);
/* The tokens exported from handle s die (anes_surface_drop). */
void anes_share_revoke(anes_surface *s);
/* The tokens exported from event handle h die (event.c, a handle's drop). */
struct anes_evhandle;
void anes_share_revoke_event(struct anes_evhandle *h);
/* event.export and event.import (state/event.h; methods.c dispatches). */
void anes_share_event_export(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);
void anes_share_event_import(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);
/* A connection's teardown: forget its penalty. */
void anes_share_conn_gone(anes_conn *c);
/* surface.export, and surface.import with "token" (methods.c dispatches). */
void anes_share_export(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds);
void anes_share_import(anes_conn *c, const anes_msg *m, unsigned nfds);
/* status: "shared" (an array of at most budget bytes or so) and
 * "shared_total", two key-value pairs. */
void anes_share_pack_status(msgpack_packer *pk, anes_server *srv, size_t budget);

/* ---- program cache (program.c) ---------------------------------------------- */

typedef enum anes_centry_state {
	ANES_CE_COMPILING,
	ANES_CE_READY,
} anes_centry_state;

typedef struct anes_holder {
	struct anes_holder *next;
	anes_tenant *tenant;  /* referenced; charged the entry's bytes */
	uint32_t handles;
} anes_holder;

typedef struct anes_waiter {
	struct anes_waiter *next;
	anes_conn *conn;     /* referenced */
	anes_tenant *tenant; /* conn's, referenced: its job is counted */
	uint32_t msgid;
	bool cached;
} anes_waiter;

struct anes_centry {
	anes_centry *hnext;
	anes_server *srv;
	uint8_t key[ANES_KEY_SIZE];
	uint8_t shape[ANES_KEY_SIZE];   /* the key's fields without the blobs' bytes (program.c) */
	char hex[2 * ANES_KEY_SIZE + 1];
	anes_centry_state state;
	anes_bprogram *prog;        /* READY */
	uint32_t handles;           /* program handles, all connections */
	uint32_t pins;              /* runs in flight + the compile job */
	anes_waiter *waiters;       /* COMPILING: requests to answer */
	/* Program memory (docs/protocol.md, "Program memory"): bytes, counted
	 * once in the daemon's total while the entry lives (from the compile's
	 * start), and charged to each tenant that holds a handle. */
	uint64_t bytes;
	bool bytes_daemon;          /* bytes is in the daemon's total */
	bool lanes;                 /* its runs may go on a lane (anes_program_estimate) */
	anes_holder *holders;
	anes_waiter **waiters_tail;
	anes_wfile **files;         /* READY: weight files the program uses in place (owned) */
	uint32_t n_files;
	/* How long its runs take lately (ns, a moving average; 0: it has not
	 * run yet).  Workers update it; a lane runs only short programs. */
	_Atomic uint64_t run_ns;
};

/* A weight file passed by descriptor (state/wfile.c): a sealed memfd is
 * mapped and used in place, anything else is copied into a read-only file of
 * the daemon's own (anes_rofile_*) before use, so a client truncating its
 * file cannot fault the daemon or its device worker. */
struct anes_wfile {
	int fd;              /* owned, CLOEXEC: a duplicate of the client's fd; after
	                      * anes_wfile_load, a file that cannot change (the sealed
	                      * memfd, or the daemon's copy), which a device worker maps */
	uint64_t size;       /* fstat's, at open; later reads never trust the file's size */
	bool sealed;         /* Linux memfd sealed against shrinking, growing and writing */
	bool copied;         /* fd and data are the daemon's copy (it was not sealed) */
	const void *data;    /* after anes_wfile_load: size bytes, valid until anes_wfile_free */
	void *map;           /* what to unmap */
	size_t map_len;
};

/* Take a duplicate of fd (the caller keeps fd): a regular file (memfds are)
 * of at most max_bytes, open for reading.  -EBADF (not a readable regular
 * file), -EFBIG, -ENOMEM, or fstat/fcntl's errno. */
int anes_wfile_open(int fd, uint64_t max_bytes, anes_wfile **ret);
/* Whether w must be copied before it is used: neither sealed nor copied
 * yet, and not empty. */
bool anes_wfile_needs_copy(const anes_wfile *w);
/* Read the file once with pread, from 0 to its size at open, and hand every
 * chunk (at most 1 MiB, in order) to fn.  With copy, a file that needs it
 * (anes_wfile_needs_copy) is also written chunk by chunk, from the buffer fn
 * just saw, into a read-only file of the daemon's own (anes_rofile_*),
 * sealed at the end; w->fd is then that copy (w->copied), so fn saw exactly
 * the copy's bytes.  -EIO (the file is shorter than at open), -ENOMEM, or
 * the read's or the copy's errno; w is unchanged on failure. */
int anes_wfile_stream(anes_wfile *w, bool copy, void (*fn)(void *ud, const void *p, size_t len), void *ud);
/* Make w->data valid: the sealed memfd or the daemon's copy mapped
 * read-only (-EINVAL for a file that still needs its copy).  Nothing reads
 * the mapping here: pages count in the daemon's memory only once a backend
 * in this process uses them.  -ENOMEM if it cannot be mapped. */
int anes_wfile_load(anes_wfile *w);
/* Unmap and close; NULL is ignored. */
void anes_wfile_free(anes_wfile *w);

/* A weight as it arrived: pointers into the request (inline), or a file
 * (taken by anes_program_compile in every case). */
typedef struct anes_wire_weight {
	const char *path;
	uint32_t path_len;
	const void *data;
	uint64_t len;
	anes_wfile *file;    /* NULL: inline, data/len */
} anes_wire_weight;

int anes_cache_new(anes_server *srv, anes_cache **ret);
/* All entries must be gone (asserted in debug builds). */
anes_cache *anes_cache_free(anes_cache *cache);
/* Call fn for each entry (fn must not add or remove entries). */
void anes_cache_foreach(anes_cache *cache, void (*fn)(anes_centry *e, void *ud), void *ud);

/* program.compile after the params were checked: answers msgid itself (now
 * for a cached program, from the compile's completion otherwise).  Takes the
 * weights' files (anes_wire_weight.file) in every case.  With files, the key
 * is computed on a job thread (hashing a large file does not stall the loop)
 * and the cache is looked up when it is done; files that need a copy are
 * copied in the pass that hashes them unless a cached program may have the
 * key (program.c, copy_while_keying). */
void anes_program_compile(anes_conn *c, uint32_t msgid, const char *mil, uint32_t mil_len,
                          anes_wire_weight *weights, uint32_t n_weights);

/* A handle of t to e: charges t one program handle and, when t holds no
 * other handle to e, e->bytes of program memory.  0, or -EDQUOT/-ENOSPC
 * (tenant.h; *ret_res says which resource) or -ENOMEM, and nothing changed. */
int anes_centry_add_handle(anes_centry *e, anes_tenant *t, anes_res *ret_res);
void anes_centry_drop_handle(anes_centry *e, anes_tenant *t);

/* progmem.c: an upper bound of the memory compiling and running a program
 * makes backend ("cpu", "ane") hold, from the MIL's types, before any of it
 * is allocated (docs/protocol.md, "Program memory").  concurrency: most runs
 * of one program at once on the job threads; lane_concurrency: how many
 * more the lane threads may add.  *ret_lanes: whether the program may run
 * on a lane thread, counted in the bound (false for a CPU program whose run
 * arena exceeds ANES_LANE_ARENA_BYTES: such runs are not short anyway, and
 * keeping them off the lanes keeps their arenas to the job threads').
 * Errors as the backend's compile (-EINVAL with a "line N: ..." message,
 * -ENOTSUP, -ENOMEM). */
int anes_program_estimate(const char *backend, const char *mil, size_t mil_len,
                          const anes_weight *weights, size_t n_weights, unsigned concurrency,
                          unsigned lane_concurrency, uint64_t *ret_bytes, bool *ret_lanes,
                          char *errbuf, size_t errbuf_len);
#define ANES_LANE_ARENA_BYTES ((uint64_t)4 << 20)
void anes_centry_pin(anes_centry *e);
void anes_centry_unpin(anes_centry *e);

/* ---- worker pool (worker.c) ---------------------------------------------- */

/* Called on the loop around each batch of done() calls (either may be
 * NULL): the server sends the replies of a batch together
 * (anes_conn_batch_begin/end). */
typedef struct anes_pool_hooks {
	void (*batch_begin)(void *ud);
	void (*batch_end)(void *ud);
	void *ud;
} anes_pool_hooks;

/* n_threads job workers (a generic anes_tpool, tpool.h, scheduling with
 * slice_ns, the scheduler's slice, that delivers its
 * finished jobs to loop); n_lane_threads threads that serve lanes and
 * nothing else (0: anes_pool_lane_arm fails). */
int anes_pool_new(uv_loop_t *loop, unsigned n_threads, unsigned n_lane_threads,
                  uint64_t slice_ns, const anes_pool_hooks *hooks, anes_pool **ret);
void anes_pool_submit(anes_pool *p, anes_job *j);
/* Any thread: j is ready (its last blocker went, state/state.h).  On the
 * loop, or a thread that collects nothing: anes_pool_submit.  On a job or
 * lane thread it is collected, and anes_pool_run_ready takes it later
 * (docs/design.md, "Events"). */
void anes_pool_ready(anes_pool *p, anes_job *j);
/* Job or lane thread: the jobs this thread collected: each one that
 * j->can_inline() says is short runs right here (work, reply, then done()
 * on the loop as for any job), for at most the scheduler's slice from the
 * first; the others, and all after the slice, go to the fair queue. */
void anes_pool_run_ready(anes_pool *p);
/* Loop: the scheduling class of flow f from now on (jobsched.h). */
void anes_pool_set_class(anes_pool *p, anes_sflow *f, anes_sclass sc);
/* Any thread: put j on the done list as finished (its done() runs on the
 * loop); for a job that did its work elsewhere, e.g. a lane's hand-back. */
void anes_pool_complete(anes_pool *p, anes_job *j);
/* Any thread: arm l (registering it the first time).  -ENOTSUP without
 * lanes, or a negative errno. */
int anes_pool_lane_arm(anes_pool *p, anes_lane *l);
/* Loop, once no worker can be in l->ready() and before l->fd is closed. */
void anes_pool_lane_remove(anes_pool *p, anes_lane *l);
/* Loop: deliver the finished jobs now (as the uv_async_t would later). */
void anes_pool_collect(anes_pool *p);
/* Cancel queued jobs, let running ones finish, join the threads, deliver
 * every outstanding done(), and close the pool (freed in the close callback).
 * Lanes still armed then are left to their owners (no worker reads them). */
void anes_pool_shutdown(anes_pool *p);

#endif
