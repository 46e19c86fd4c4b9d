/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the daemon integration tests: start a real aneshared on a
 * private socket, talk to it through libaneshare or raw frames, and build
 * the dynamic-matmul workload with its fp32 reference.
 *
 * Functions named h_* report failures with criterion assertions, so they are
 * for the test process only (not for forked children, which use the
 * non-asserting variants and report through their exit status).
 */
#ifndef DAEMON_HARNESS_H
#define DAEMON_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "anes_proto.h"
#include "aneshare.h"
#include "test_util.h"

typedef struct h_daemon {
	char dir[128];      /* private mkdtemp directory */
	char sock[192];     /* dir/aneshare.sock */
	char log[192];      /* dir/daemon.log: the daemon's stderr */
	pid_t pid;          /* 0 once stopped */
} h_daemon;

/* Start $ANESHARED on a fresh socket and wait (bounded) until it accepts.
 * The daemon gets XDG_CONFIG_HOME=d->dir, so no user configuration applies.
 * $ANESHARED_WRAPPER, if set, is a command prefix split at spaces (e.g.
 * "valgrind --leak-check=full --error-exitcode=1"); waits then scale by
 * h_slow(). */
void h_daemon_start(h_daemon *d);
/* The same with extra daemon arguments (NULL-terminated; may be NULL). */
void h_daemon_start_args(h_daemon *d, const char *const *args);
/* h_daemon_start_args with more (NULL-terminated, may be NULL; up to 29 of
 * them), after "--backend cpu --worker" when worker. */
void h_daemon_start_worker(h_daemon *d, bool worker, const char *const *more);
/* For a forked child about to exec the daemon (no assertions): die with
 * the test process, stderr to log (created or truncated), stdin and stdout
 * on /dev/null. */
void h_child_stdio(const char *log);
/* For such a child: the words of $ANESHARED_WRAPPER (at most 32) at the
 * front of argv; their count. */
unsigned h_wrapper_argv(const char **argv);
/* Timeouts are multiplied by this: 1, or 20 under $ANESHARED_WRAPPER
 * ($ANESHARE_TEST_SLOW overrides). */
int h_slow(void);

/* Run the program named by $env_exe (tests/meson.build sets it) with
 * --socket d->sock and args (NULL-terminated, at most 28); its stdout and
 * stderr go to out (NUL-terminated, truncated to len).  Returns its exit
 * status; a program that did not exit is a test failure. */
int h_run_tool(const h_daemon *d, const char *env_exe, char *out, size_t len,
               const char *const *args);
/* Run $ANESHARED with args (NULL-terminated, at most 30), XDG_CONFIG_HOME=dir
 * and no ANESHARE_SOCKET, to its exit (for start-up refusals: a daemon that
 * starts serving does not return); its exit status (256 if it did not
 * exit), and its stdout and stderr in err (NUL-terminated, truncated to
 * errsz; dir/stderr holds them). */
int h_run_aneshared(const char *dir, const char *const *args, char *err, size_t errsz);
/* SIGTERM, wait, and assert a clean exit (status 0); removes the directory. */
void h_daemon_stop(h_daemon *d);
/* Wait for the daemon to exit (after the test sent it a signal) and assert
 * a clean exit as h_daemon_stop does. */
void h_daemon_wait(h_daemon *d);
/* For a fixture's fini: stop a daemon the test did not stop (SIGTERM, then
 * SIGKILL after 2 s x h_slow()), without checking how it exited. */
void h_daemon_kill(h_daemon *d);
/* SIGKILL the daemon and reap it, like a crash: its socket file and the
 * directory stay (h_daemon_kill or h_daemon_stop still clean up). */
void h_daemon_crash(h_daemon *d);
/* Start a new daemon (default options) on the same socket path after
 * h_daemon_crash; it replaces the stale socket.  With wait, return once it
 * answers; without, right after the fork. */
void h_daemon_restart(h_daemon *d, bool wait);

/* A fake clock for the daemons this test process starts from now on
 * ($ANESHARE_TEST_CLOCK, proto/anes_clock.h, set in the daemon's
 * environment only): a fresh file mapped here, removed when the process
 * exits.  It reads 1 s with step 0 (time stands still) until the test
 * changes it.  Skips the test in builds without the test hooks
 * (-Dtest_hooks=true). */
struct anes_test_clock;
struct anes_test_clock *h_fake_clock(void);
/* The same for this process's libaneshare (its spin): a clock of its own,
 * in $ANESHARE_TEST_CLOCK of this process, which the library reads at its
 * first aneshare_connect; daemons started by the harness never see it. */
struct anes_test_clock *h_fake_client_clock(void);

aneshare_conn *h_connect(const h_daemon *d, const char *name);
aneshare_status *h_status(aneshare_conn *c);
/* Poll status (bounded, ~10 s) until surfaces and programs are as given;
 * asserts if they never get there. */
void h_wait_counts(aneshare_conn *c, uint32_t surfaces, uint32_t programs);

/* The same for the number of connections. */
void h_wait_clients(aneshare_conn *c, uint32_t clients);

/* Read a file from the source tree (NUL-terminated); asserts on failure. */
char *h_read_source(const char *relpath);

/* MIL of z = x @ y on [1, 1, n, n] fp16, function fn_name (distinct names
 * make distinct programs).  malloc'd, the caller's; aborts when out of
 * memory (usable in forked children). */
char *h_square_mm_mil(unsigned n, const char *fn_name);

/* ---- the dynamic matmul (h_mm and its helpers: test_util.h) ---------------- */

/* Compile examples/dynamic_matmul.mil on c and read its shapes into mm;
 * *ret_cached (if not NULL) tells whether the daemon had it cached. */
aneshare_program *h_compile_mm(aneshare_conn *c, h_mm *mm, bool *ret_cached);
/* aneshare_surface_create that asserts. */
aneshare_surface *h_surface(aneshare_conn *c, size_t size);
/* Run p, the linear program of tests/linear_blob.h ([1, in] -> [1, out]),
 * on x[i] = (i % 5) / 4 with y preset to NaN, and assert every y[o] is within
 * 2e-3 (relative past 1) of an fp64 sum over the fp16 weights lb_wval(o, i,
 * seed). */
void h_linear_check(aneshare_conn *c, aneshare_program *p, int in, int out, float seed);
/* lb_blob of lb_wval(o, i, seed) (the weights h_linear_check expects),
 * asserting it is made; the caller frees it. */
uint8_t *h_linear_blob(int in, int out, float seed, size_t *ret_len);
/* n input/output surface pairs for mm: in[i] filled from seed0 + i, out[i]
 * set to NaNs (which a run must overwrite). */
void h_mm_pairs(aneshare_conn *c, const h_mm *mm, aneshare_surface **in, aneshare_surface **out,
                int n, uint64_t seed0);
/* Max |out - ref| / max|ref| for the output computed from input x (fp32
 * reference from the same fp16 values). */
double h_mm_error(const h_mm *mm, const uint16_t *x, const uint16_t *y);
/* Run in -> out (out first set to NaNs, which must be overwritten) and
 * assert that out is within H_MM_TOL of the reference for what in holds. */
void h_mm_run_check(aneshare_program *p, const h_mm *mm, aneshare_surface *in,
                    aneshare_surface *out);
/* The same after filling in from seed (named in the failure message). */
void h_mm_fill_run_check(aneshare_program *p, const h_mm *mm, aneshare_surface *in,
                         aneshare_surface *out, uint64_t seed);

/* ---- raw connections ----------------------------------------------------- */

/* A plain connected socket (blocking, CLOEXEC); -errno on failure. */
int h_raw_connect(const char *path);
/* Send bytes with fds (0 to H_RAW_MAX_FDS: more than the daemon takes in
 * one read) in one sendmsg; 0 or -errno (-EINVAL for more fds). */
#define H_RAW_MAX_FDS (ANES_IO_MAX_QUEUED_FDS + 8)
int h_raw_send(int fd, const void *buf, size_t len, const int *fds, unsigned nfds);
/* Append a request frame to sb (msgpack_sbuffer, initialised by the caller):
 * params as for h_raw_request (NULL: {}), nfds the fd count its header
 * announces. */
void h_raw_frame(msgpack_sbuffer *sb, uint32_t msgid, const char *method,
                 const void *params_mp, size_t params_len, unsigned nfds);
/* Send a request; params is a msgpack map body packed by the caller in
 * params_mp/params_len (a complete map value).  0 or -errno. */
int h_raw_request(int fd, uint32_t msgid, const char *method, const void *params_mp,
                  size_t params_len, const int *fds, unsigned nfds);
/* h_raw_request with the params { key: v } ({} when key is NULL). */
int h_raw_request_kv(int fd, uint32_t msgid, const char *method, const char *key, uint64_t v,
                     const int *fds, unsigned nfds);
/* h_raw_request with the params { key: str } ({} when key is NULL). */
int h_raw_request_kstr(int fd, uint32_t msgid, const char *method, const char *key, const char *str);
/* Wait (up to timeout_ms x h_slow()) for the response to msgid.  Returns 0 for a
 * success, the wire error code (> 0) for an error response, -EPIPE if the
 * connection was closed, -EBADMSG for a frame that does not parse,
 * -ETIMEDOUT. Notifications are skipped. */
int h_raw_response(int fd, uint32_t msgid, int timeout_ms);
/* h_raw_response that also hands a success's result map to fn (if not
 * NULL) before it is freed. */
int h_raw_response_cb(int fd, uint32_t msgid, int timeout_ms,
                      void (*fn)(const msgpack_object *result, void *ud), void *ud);
/* Wait (up to timeout_ms x h_slow()) until the daemon closes the connection; counts
 * the error notifications received on the way.  0 if closed, -EBADMSG for a
 * frame that does not parse, -ETIMEDOUT. */
int h_raw_wait_closed(int fd, int timeout_ms, unsigned *ret_errors);
/* Wait (up to timeout_ms x h_slow()) until the daemon closes the connection:
 * the code of the error notification it sent before (the last one), 0 if
 * none came, -ETIMEDOUT if it is still open, -EBADMSG for a frame that does
 * not parse. */
int h_raw_closed_with(int fd, int timeout_ms);
/* Send hello (protocol 1) as request msgid on a raw connection without
 * waiting for the response: h_raw_request's result (for forked children). */
int h_raw_send_hello(int fd, uint32_t msgid);
/* hello on a raw connection; asserts it succeeds. */
void h_raw_hello(int fd);
/* h_raw_connect and h_raw_hello, asserting both succeed: the fd. */
int h_raw_open(const char *path);

/* Append to sb a request frame of method with params { "pad": pad zero bytes
 * in a bin } (the daemon ignores keys it does not know).  Aborts when out
 * of memory (usable in forked children). */
void h_raw_padded_frame(msgpack_sbuffer *sb, uint32_t msgid, const char *method, size_t pad);

/* The unsigned integer under key in the msgpack map m, UINT64_MAX if there is
 * none (or it is not a positive integer). */
uint64_t h_map_u64(const msgpack_object *m, const char *key);
/* The error of the response m (m->error set; asserts it has a code and a
 * message): the code in *ret_code, the message in msg (NUL-terminated, cut
 * to size), its failed_step in *ret_failed_step (-1 if none). */
void h_msg_error_of(const anes_msg *m, int *ret_code, char *msg, size_t size, int64_t *ret_failed_step);
/* Of the nfds fds that came with a frame: the first when keep (-1 if none
 * came), the caller's; every other one closed. */
int h_fds_keep_first(const int *fds, unsigned nfds, bool keep);
/* The str under key in the msgpack map m into buf (NUL-terminated, of
 * size bytes); "" if there is none or it is longer than size - 1. */
void h_map_str(const msgpack_object *m, const char *key, char *buf, size_t size);

/* Params packed by the caller: h_pb_begin starts b's buffer with a map of n
 * entries (the caller packs them into the packer returned and frees b->sb
 * with msgpack_sbuffer_destroy); h_pk_* pack a str, a {key: unsigned} entry,
 * a {key: [ids]} entry. */
typedef struct h_pbuf {
	msgpack_sbuffer sb;
	msgpack_packer pk;
} h_pbuf;
msgpack_packer *h_pb_begin(h_pbuf *b, uint32_t n);
void h_pk_str(msgpack_packer *pk, const char *s);
void h_pk_kv_u(msgpack_packer *pk, const char *k, uint64_t v);
void h_pk_ids(msgpack_packer *pk, const char *k, const uint32_t *ids, uint32_t n);

/* ---- the fake IOSurface library (tests/fake_iosurface.c) ------------------- */

/* Make the daemons this process starts (and its library) use the fake for
 * surfaces, with a fresh directory of its surfaces written into dir (size
 * bytes, at least 32).  Skips the test when built without -Dtest_hooks=true;
 * asserts FAKE_IOSURFACE_LIB is set (meson test sets it). */
void h_fake_iosurface_env(char *dir, size_t size);
/* Whether the fake in dir still holds surface id (some process references it). */
bool h_fake_iosurface_exists(const char *dir, uint64_t id);
/* Remove dir, h_fake_iosurface_env's directory, and its files (nothing if dir
 * is ""). */
void h_fake_iosurface_rm(const char *dir);

/* What status says, read on a raw connection: the fields the raw-protocol
 * tests watch. */
typedef struct h_raw_st {
	uint64_t clients, turned_away, dropped;
	uint64_t in_bytes, in_waiting, in_timed_out;   /* status.input */
	uint64_t my_input, my_unsent;   /* this process's input_bytes, unsent_bytes (0 if not listed) */
	uint64_t uid_jobs;              /* this uid's jobs (0 if not listed) */
	uint64_t total_unsent;          /* totals: unsent_bytes used */
} h_raw_st;
/* status on the raw connection fd (hello done; an msgid of its own, the
 * response awaited up to 10 s x h_slow()); asserts it succeeds and has
 * those fields. */
h_raw_st h_raw_status(int fd);
/* The same fields from a status result map (asserts they are there). */
void h_raw_st_read(const msgpack_object *result, h_raw_st *st);
/* Poll h_raw_status (bounded, ~10 s x h_slow()) until status.input.waiting
 * is n; asserts it gets there.  The last status. */
h_raw_st h_raw_wait_input_waiting(int fd, uint64_t n);

/* ---- a raw connection with its own receive buffer -------------------------- */

/* h_raw_response reads into a buffer of its own and drops what it read past
 * the response it waited for; an h_rconn keeps one buffer for the life of
 * the connection, for clients that have many responses on the way.  The
 * h_rconn_* functions that wait assert on nothing but what they say. */
typedef struct h_rconn {
	int fd;        /* owned: closed by h_rconn_close; -1 when closed */
	anes_io io;    /* owned: the receive buffer */
} h_rconn;

/* h_raw_open (connect and hello, asserted) with a receive buffer. */
void h_rconn_open(h_rconn *rc, const char *path);
/* A receive buffer for fd, a connection the caller opened; the h_rconn
 * owns fd from now on. */
void h_rconn_adopt(h_rconn *rc, int fd);
/* Free the buffer and close the connection; a second call does nothing. */
void h_rconn_close(h_rconn *rc);
/* Wait (up to timeout_ms x h_slow()) for the next frame: 1 with *ret_payload
 * (valid until the next read on rc) and *ret_len, the fds that came with it
 * closed and counted in *ret_nfds (if not NULL); 0 when the daemon closed
 * the connection; -EBADMSG for a frame that does not parse; -ETIMEDOUT. */
int h_rconn_frame(h_rconn *rc, int timeout_ms, const uint8_t **ret_payload, uint32_t *ret_len,
                  unsigned *ret_nfds);
/* The next message, decoded: 1 after fn(m, ud); else as h_rconn_frame
 * (-EBADMSG also for a payload that does not decode). */
typedef void (*h_msg_fn)(const anes_msg *m, void *ud);
int h_rconn_next(h_rconn *rc, int timeout_ms, h_msg_fn fn, void *ud);
/* h_rconn_frame that keeps the fds that came with the frame: *ret_nfds of
 * them in ret_fds (room for ANES_MAX_FDS_PER_FRAME), the caller's. */
int h_rconn_frame_fds(h_rconn *rc, int timeout_ms, const uint8_t **ret_payload, uint32_t *ret_len,
                      int *ret_fds, unsigned *ret_nfds);
/* h_raw_closed_with on rc (what its buffer holds first). */
int h_rconn_closed_with(h_rconn *rc, int timeout_ms);

/* What h_reply_cb gathers for the response to msgid.  Set msgid (and key,
 * to read an unsigned result field) before; the rest is its output. */
typedef struct h_reply {
	uint32_t msgid;
	const char *key;        /* result field to read into value, or NULL */
	bool got;               /* the response came */
	int code;               /* 0, the wire error code, 9999 for an error map
	                         * without a code, 9998 for a success without key */
	int64_t failed_step;    /* the error's failed_step, -1 if none */
	char message[256];      /* the error's message (NUL-terminated, cut), "" if none */
	uint64_t value;         /* result[key] */
	unsigned notifications; /* notifications seen on the way */
} h_reply;
/* An h_msg_fn that fills the h_reply ud (other responses are skipped). */
void h_reply_cb(const anes_msg *m, void *ud);
/* Read messages (each within 10 s x h_slow(), asserted) until res's response
 * came: its code. */
int h_rconn_wait(h_rconn *rc, h_reply *res);
/* Send a request (params: a complete msgpack map packed by the caller, NULL
 * for {}; fds as h_raw_request; asserts it went) and wait for its response:
 * its code; a success's result[key] (key not NULL) in *ret (if not NULL). */
int h_rconn_call(h_rconn *rc, uint32_t msgid, const char *method, const void *params_mp,
                 size_t params_len, const int *fds, unsigned nfds, const char *key, uint64_t *ret);
/* h_rconn_call with the params { key: v } ({} when key is NULL). */
int h_rconn_call_kv(h_rconn *rc, uint32_t msgid, const char *method, const char *key, uint64_t v,
                    const int *fds, unsigned nfds);

/* h_rconn_call with the params { key: str }. */
int h_rconn_call_kstr(h_rconn *rc, uint32_t msgid, const char *method, const char *key,
                      const char *str);

/* ---- a fake daemon on a thread of the test --------------------------------- */

/* A listening Unix socket at path (CLOEXEC, backlog 1); asserts. */
int h_fake_listen(const char *path);
/* Accept one connection on listen_fd into rc (h_rconn_adopt); false if
 * accept failed.  Asserts nothing. */
bool h_fake_accept(int listen_fd, h_rconn *rc);
/* h_fake_accept, then the client's hello (h_fake_next, 10 s x h_slow())
 * answered with h_fake_hello.  Counts in *failures an accept that failed
 * (then false: rc is not open) or a first request that is not hello (it is
 * answered all the same).  Asserts nothing. */
bool h_fake_greet(int listen_fd, h_rconn *rc, int *failures);
/* For a fake daemon (asserts nothing, so it may run on the fake's thread):
 * the next request on rc (h_rconn_frame, up to timeout_ms x h_slow()): true
 * with its msgid, its method copied into method (NUL-terminated; a longer
 * one is refused) and its params' "id" in *ret_id (0 without one); false
 * when the client hung up, or sent something else. */
bool h_fake_next(h_rconn *rc, int timeout_ms, uint32_t *ret_msgid, char *method,
                 size_t method_size, uint32_t *ret_id);
/* The fake's answer to hello msgid: protocol 1, server "fake", version
 * "9.9", backend "cpu". */
void h_fake_hello(anes_io *io, uint32_t msgid);

/* For a fake daemon in a test: finish frame f (announcing nfds fds), queue
 * it with fds on io and flush what the socket takes (best effort).  The fds
 * are taken (anes_io_queue): closed once sent, or on failure. */
void h_fake_send(anes_io *io, anes_frame *f, const int *fds, unsigned nfds);

/* ---- a gate in front of the device (--fault-inject run_gate) ----------------- */

/* Every run step of a daemon started with --fault-inject g->arg reads one
 * token from the FIFO first, so a test lets runs through one by one and
 * observes the order of device work (or a backlog held in place) instead
 * of timing it. */
typedef struct h_gate {
	char dir[64];     /* private mkdtemp directory */
	char path[96];    /* dir/gate, the FIFO */
	char arg[112];    /* "run_gate=PATH", for --fault-inject */
	int fd;           /* the test's end (O_RDWR), -1 until h_gate_attach */
} h_gate;
/* Make the FIFO; asserts. */
void h_gate_make(h_gate *g);
/* Once the daemon has started (it opens the FIFO at start): the test's end. */
void h_gate_attach(h_gate *g);
/* Let n runs through (n <= 4096); asserts. */
void h_gate_open(h_gate *g, unsigned n);
/* Close and remove. */
void h_gate_free(h_gate *g);

/* Open fds of this process (for leak checks). */
int h_count_fds(void);
/* Open fds of the daemon (tu_fd_count), -1 if unknown. */
int h_daemon_fds(const h_daemon *d);
/* The daemon's resident memory (VmRSS of /proc/PID/status) in KiB, -1 if unknown. */
long h_daemon_rss_kb(const h_daemon *d);
/* Poll (bounded, ~10 s x h_slow()) until the daemon has n open fds; asserts. */
void h_wait_daemon_fds(const h_daemon *d, int n);

/* An observer connection to d, once the daemon has settled; *ret_fds is the
 * daemon's fd count then: the baseline h_back_to_baseline waits for.  The
 * connection is the caller's (aneshare_disconnect). */
aneshare_conn *h_observe(const h_daemon *d, int *ret_fds);
/* Wait (bounded) until only obs is connected, no surface or program is
 * left, and d has fds open again; asserts. */
void h_back_to_baseline(const h_daemon *d, aneshare_conn *obs, int fds);

/* Fork a child (killed if the test process dies) that runs fn(arg,
 * ready_fd) and exits with its result; fn reports readiness by writing one
 * byte to ready_fd.  Returns once it has (asserts if the child failed
 * first). */
pid_t h_spawn(int (*fn)(void *arg, int ready_fd), void *arg);

#endif
