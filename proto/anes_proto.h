/* SPDX-License-Identifier: MIT */
/*
 * libanes_proto: the wire protocol of aneshare, shared by the daemon and the
 * client library.  docs/protocol.md is the contract; this is its C form.
 *
 *   - framing: an 8-byte header (payload length, fd count) + one msgpack value
 *   - msgpack-rpc envelopes: request, response, notification
 *   - a strict validator that walks a payload before msgpack-c unpacks it
 *   - typed field accessors for params/result maps
 *   - connection I/O with fd passing (sendmsg/recvmsg, SCM_RIGHTS)
 *
 * Error convention: 0 (or a count) on success, a negative errno code on
 * failure; ret_* out-parameters are written only on success.
 */
#ifndef ANES_PROTO_H
#define ANES_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <msgpack.h>

#include "anes_name.h"

#define ANES_PROTOCOL_VERSION 1

/* Frame header: u32 payload length (big-endian), u8 fd count, 3 zero bytes. */
#define ANES_FRAME_HEADER_SIZE 8
#define ANES_FRAME_MAX_DEFAULT (64u << 20)  /* default max payload length */
#define ANES_FRAME_MAX_LOWEST (64u << 10)   /* lowest max a daemon may configure */
#define ANES_FRAME_MAX_HIGHEST (1u << 30)   /* highest max a daemon may configure */
#define ANES_MAX_FDS_PER_FRAME 4            /* fds attached to one frame */
#define ANES_IO_MAX_QUEUED_FDS 16           /* received fds not yet claimed by a frame */

/* Validator bounds for one payload. */
#define ANES_MP_MAX_DEPTH 16        /* nesting of arrays/maps */
#define ANES_MP_MAX_OBJECTS 65536   /* msgpack objects in one payload */
#define ANES_MP_MAX_MAP 1024        /* entries in one map (keys must be unique) */
#define ANES_METHOD_MAX 64          /* bytes in a method name */


/* msgpack-rpc message types (element 0 of the envelope). */
typedef enum anes_msg_type {
	ANES_MSG_REQUEST = 0,
	ANES_MSG_RESPONSE = 1,
	ANES_MSG_NOTIFY = 2,
} anes_msg_type;

/*
 * Wire error codes: the numbers and names are stable.  X(code, NAME, "name").
 */
#define ANES_WIRE_ERRORS(X)                                                        \
	X(1, PROTOCOL, "protocol")             /* malformed frame or message */      \
	X(2, VERSION, "version")               /* unsupported protocol version */    \
	X(3, HANDSHAKE, "handshake")           /* request before hello, or 2nd hello */ \
	X(4, UNKNOWN_METHOD, "unknown_method") /* no such method */                  \
	X(5, INVALID_PARAMS, "invalid_params") /* missing, mistyped or out-of-range field */ \
	X(6, NO_SUCH_SURFACE, "no_such_surface")                                     \
	X(7, NO_SUCH_PROGRAM, "no_such_program")                                     \
	X(8, NO_SUCH_FUNCTION, "no_such_function")                                   \
	X(9, LIMIT, "limit")                   /* a resource limit was reached */    \
	X(10, COMPILE, "compile")              /* the MIL text is invalid */         \
	X(11, UNSUPPORTED, "unsupported")      /* valid MIL the backend cannot run */ \
	X(12, SIZE_MISMATCH, "size_mismatch")  /* surfaces do not fit the program */ \
	X(13, BAD_FD, "bad_fd")                /* fd missing, not sealed, or too small */ \
	X(14, RUN_FAILED, "run_failed")        /* the backend failed during a run */ \
	X(15, NO_MEMORY, "no_memory")                                                \
	X(16, INTERNAL, "internal")                                                  \
	X(17, SHUTTING_DOWN, "shutting_down")  /* the daemon is stopping; not done */ \
	X(18, WORKER_RESTARTED, "worker_restarted") /* device worker lost; not done, retry */ \
	X(19, NO_SUCH_STATE, "no_such_state")  /* no state with that ID on this connection */ \
	X(20, STATE_LOST, "state_lost")        /* the state's contents are unknown: reset it */ \
	X(21, NO_SUCH_EVENT, "no_such_event")  /* no event with that ID on this connection */ \
	X(22, EVENT_CLOSED, "event_closed")    /* the event closed below the value waited for */

typedef enum anes_wire_error {
#define ANES_X_(c, N, s) ANES_WERR_##N = c,
	ANES_WIRE_ERRORS(ANES_X_)
#undef ANES_X_
} anes_wire_error;

#define ANES_WERR_MAX 22

/* "protocol", ... for a known code; NULL otherwise. */
const char *anes_wire_error_name(int code);
/* The code for a name; 0 if unknown. */
int anes_wire_error_from_name(const char *name, size_t len);

/* Typed object IDs (nng style), so one kind cannot be passed as another.
 * 0 is never a valid ID. */
typedef struct anes_surface_id { uint32_t v; } anes_surface_id;
typedef struct anes_program_id { uint32_t v; } anes_program_id;

/* ---- framing ---------------------------------------------------------- */

void anes_frame_header_write(uint8_t hdr[ANES_FRAME_HEADER_SIZE], uint32_t len, unsigned nfds);
/* -EMSGSIZE if len > max_frame; -EPROTO if nfds > ANES_MAX_FDS_PER_FRAME or a
 * reserved byte is not zero. */
int anes_frame_header_parse(const uint8_t hdr[ANES_FRAME_HEADER_SIZE], uint32_t max_frame,
                            uint32_t *ret_len, unsigned *ret_nfds);

/* ---- validating and decoding ------------------------------------------ */

/* Walk one msgpack value that must occupy exactly buf[0..len).  Checks every
 * declared length against the bytes that remain, the depth (every array and
 * map counts, also empty ones), the object count (ANES_MP_MAX_OBJECTS) and map
 * sizes, and rejects ext types and 0xc1.  Unique keys need the decoded
 * objects: anes_msg_decode checks them.  Only after this succeeds is
 * msgpack-c allowed to unpack the buffer, so its allocation is bounded by
 * ~24 bytes x ANES_MP_MAX_OBJECTS.
 * Returns 0 or -EBADMSG. */
int anes_mp_check(const void *buf, size_t len);

/* A decoded message.  All pointers point into the zone passed to
 * anes_msg_decode or into the payload buffer (str/bin are referenced, not
 * copied): both must outlive the message. */
typedef struct anes_msg {
	anes_msg_type type;
	uint32_t msgid;                /* request, response */
	const char *method;            /* request, notify; not NUL-terminated */
	uint32_t method_len;
	const msgpack_object *params;  /* request, notify: a map */
	const msgpack_object *error;   /* response: NULL on success, else a map */
	const msgpack_object *result;  /* response: a map on success, else NULL */
} anes_msg;

/* Validate (anes_mp_check) and decode one payload into an envelope.
 * Returns 0, or -EBADMSG for anything malformed (wrong arity, types, a msgid
 * over UINT32_MAX, a method name longer than ANES_METHOD_MAX, params that
 * are not a map, two equal keys in any map, ...), -ENOMEM. */
int anes_msg_decode(const void *buf, size_t len, msgpack_zone *zone, anes_msg *ret);

bool anes_msg_method_is(const anes_msg *m, const char *name);

/* How many map-key comparisons this thread's anes_msg_decode calls have made
 * so far: a diagnostic that lets a test bound the unique-key check's work by
 * counting it instead of timing it. */
uint64_t anes_msg_key_compares(void);

/* ---- a run request, read in one pass ----------------------------------- */

#define ANES_MAX_STEPS 256          /* steps in one chained run (docs/protocol.md) */
#define ANES_RUN_WIRE_MAX_IO 64     /* surface IDs of one step's inputs (outputs) kept */
/* IDs kept in all: every step's (and, in a chain, the params' own, ignored) */
#define ANES_RUN_WIRE_MAX_IDS ((ANES_MAX_STEPS + 1) * 2 * ANES_RUN_WIRE_MAX_IO)

/* What is wrong with a well-formed run request's params, in the order the
 * daemon checks (it answers the first with invalid_params): the request's,
 * then each step's. */
typedef enum anes_run_bad {
	ANES_RUN_OK = 0,
	ANES_RUN_STEPS_TYPE,        /* "steps" is not an array of 1 to ANES_MAX_STEPS */
	ANES_RUN_STEPS_EMPTY,       /* "steps" is [] */
	ANES_RUN_STEPS_AND_PROGRAM, /* both "steps" and "program" */
	ANES_RUN_STEP_NOT_MAP,      /* steps[bad_step] is not a map */
	/* a step's (anes_run_wire_step.bad) */
	ANES_RUN_PROGRAM_MISSING,
	ANES_RUN_PROGRAM_TYPE,      /* not an unsigned integer up to UINT32_MAX */
	ANES_RUN_FUNCTION_TYPE,     /* not a str */
	ANES_RUN_INPUTS_MISSING,
	ANES_RUN_INPUTS_TYPE,       /* not an array */
	ANES_RUN_INPUTS_ITEM,       /* inputs[bad_item] is not a surface ID (u32) */
	ANES_RUN_OUTPUTS_MISSING,
	ANES_RUN_OUTPUTS_TYPE,
	ANES_RUN_OUTPUTS_ITEM,
	ANES_RUN_STATE_TYPE,        /* "state" is not an unsigned integer up to UINT32_MAX */
	ANES_RUN_STEP_EVENTS,       /* a chain's step has "wait" or "signal" (the run's) */
} anes_run_bad;

/* A run's "wait" and "signal" lists (docs/protocol.md, "Events in runs"). */
#define ANES_RUN_MAX_EVENTS 8

/* What is wrong with them (anes_run_wire.ev_bad), the first found. */
typedef enum anes_run_ev_bad {
	ANES_RUN_EV_OK = 0,
	ANES_RUN_EV_TYPE,       /* not an array of at most ANES_RUN_MAX_EVENTS */
	ANES_RUN_EV_ENTRY,      /* entry ev_bad_item is not a map with "event" (u32) and "value" (u64) */
	ANES_RUN_EV_DUP,        /* entry ev_bad_item names an event named before in its list */
} anes_run_ev_bad;

typedef struct anes_run_wire_ev {
	uint32_t event;
	uint64_t value;
} anes_run_wire_ev;

/* One step (or the single run) of a run request. */
typedef struct anes_run_wire_step {
	uint32_t program;
	/* Points into the payload (not NUL-terminated) when the step has the
	 * key, also for "" (function_len 0); NULL when it has none. */
	const char *function;
	uint32_t function_len;
	uint32_t n_in, n_out; /* as many as the request names; the first
	                       * ANES_RUN_WIRE_MAX_IO of each are kept ... */
	uint32_t in, out;     /* ... in anes_run_wire.ids, from these indexes */
	uint8_t bad;          /* anes_run_bad: the first thing wrong with it, or 0 */
	uint32_t bad_item;    /* ANES_RUN_*_ITEM: the index */
	bool has_state;       /* the step names a state ("state", docs/protocol.md) ... */
	uint32_t state;       /* ... with this ID */
} anes_run_wire_step;

typedef struct anes_run_wire {
	uint32_t msgid;
	bool chain;           /* { steps: [...] }; else the params are the one step */
	uint8_t bad;          /* anes_run_bad of the request itself, or 0 */
	uint32_t bad_step;    /* ANES_RUN_STEP_NOT_MAP: the index */
	uint32_t n_steps;     /* chain: steps named (1..ANES_MAX_STEPS) */
	uint8_t n_wait, n_signal;   /* the run's "wait" and "signal" entries */
	anes_run_wire_ev wait[ANES_RUN_MAX_EVENTS];
	anes_run_wire_ev signal[ANES_RUN_MAX_EVENTS];
	uint8_t ev_bad;       /* anes_run_ev_bad, the first found in "wait" then "signal" order read */
	bool ev_bad_signal;   /* ... in "signal" (else "wait") */
	uint32_t ev_bad_item;
	uint32_t n_ids;
	anes_run_wire_step steps[ANES_MAX_STEPS];
	uint32_t ids[ANES_RUN_WIRE_MAX_IDS];
} anes_run_wire;

/* The one decoder of the daemon's run requests, in one pass without
 * unpacking: a request [0, msgid, "run", params] in any well-formed
 * encoding, params either {steps: [step, ...]} or one step, a step a map
 * of "program" (u32), "function" (str, optional), "inputs" and "outputs"
 * (arrays of u32 surface IDs), "state" (u32, optional); beside them (not
 * in a chain's steps) "wait" and "signal", arrays of {event: u32, value:
 * u64}; other keys are ignored.
 * Returns
 *   1        a well-formed run request (exactly what anes_msg_decode
 *            accepts, with the same values through its accessors): w holds
 *            it, and w->bad or a step's bad what is wrong with its params;
 *   0        not a request for "run" (another method, not a request, or not
 *            even a well-formed envelope): decode it with anes_msg_decode;
 *   -EBADMSG a request for "run" that anes_msg_decode rejects;
 *   -ENOMEM.
 * The reader checks everything anes_msg_decode does (anes_mp_check's
 * limits, each key of the maps it reads once) itself; a request with
 * content it does not read (other keys, maps as values) is also given to
 * anes_msg_decode in zone (cleared after), which checks those for repeated
 * keys.  Never reads outside buf[0..len).  w is the caller's workspace
 * (about 140 KiB, touched only as far as the request goes), not an
 * out-parameter: only after 1 does it hold the request.
 * tests/run_wire_check.h states it against the decoder's accessors. */
int anes_run_wire_parse(const void *buf, size_t len, anes_run_wire *w, msgpack_zone *zone);

/* Typed access to a field of a map with string keys.
 * Each returns 0 on success, -ENOENT if the key is absent, -EINVAL if it has
 * the wrong type or is out of range (nothing is written on failure). */
const msgpack_object *anes_mp_get(const msgpack_object *map, const char *key);
int anes_mp_u64(const msgpack_object *map, const char *key, uint64_t max, uint64_t *ret);
int anes_mp_u32(const msgpack_object *map, const char *key, uint32_t *ret);
int anes_mp_i64(const msgpack_object *map, const char *key, int64_t *ret);
int anes_mp_bool(const msgpack_object *map, const char *key, bool *ret);
/* Strings and bins are not NUL-terminated; max_len bounds the length. */
int anes_mp_str(const msgpack_object *map, const char *key, uint32_t max_len,
                const char **ret, uint32_t *ret_len);
int anes_mp_bin(const msgpack_object *map, const char *key, uint32_t max_len,
                const void **ret, uint32_t *ret_len);
int anes_mp_array(const msgpack_object *map, const char *key, uint32_t max_n,
                  const msgpack_object **ret_items, uint32_t *ret_n);
/* A nested map with at most max_n entries. */
int anes_mp_map(const msgpack_object *map, const char *key, uint32_t max_n,
                const msgpack_object **ret);
/* An element of an array as a u32 (e.g. a list of surface IDs). */
int anes_mp_item_u32(const msgpack_object *item, uint32_t *ret);
/* Compare a msgpack str with a C string. */
bool anes_mp_str_eq(const msgpack_object *o, const char *s);

/* ---- building frames --------------------------------------------------- */

/* A frame under construction: header space is reserved, msgpack is packed
 * after it with pk, and anes_frame_finish fills the header in.  Allocation
 * failures while packing are sticky and reported by anes_frame_finish. */
typedef struct anes_frame {
	char *data;
	size_t len;
	size_t cap;
	bool oom;
	msgpack_packer pk;
} anes_frame;

void anes_frame_init(anes_frame *f);
/* Like anes_frame_init, packing into buf (malloc'd, cap bytes; NULL: none),
 * which the frame owns from now on. */
void anes_frame_init_buf(anes_frame *f, void *buf, size_t cap);
/* Free the frame's buffer (if not handed over).  Accepts a finished frame. */
void anes_frame_release(anes_frame *f);
/* Empty the frame for the next message, keeping its buffer (one that is
 * reused for message after message allocates nothing in steady state). */
void anes_frame_reset(anes_frame *f);
/* Like anes_frame_finish, but the frame keeps its buffer: on success the
 * message is f->data[0..f->len), valid until the next reset. */
int anes_frame_seal(anes_frame *f, unsigned nfds, uint32_t max_frame);
/* Fill the header in.  -EMSGSIZE if the payload exceeds max_frame, -ENOMEM
 * if packing ran out of memory.  On success the buffer (*ret_data, *ret_len,
 * including the header) is owned by the caller (free()) and the frame is
 * empty; on failure the frame still owns it. */
int anes_frame_finish(anes_frame *f, unsigned nfds, uint32_t max_frame,
                      void **ret_data, size_t *ret_len);

/* Packing helpers (write into f->pk). */
void anes_pack_str(msgpack_packer *pk, const char *s);
void anes_pack_strn(msgpack_packer *pk, const char *s, size_t n);
/* The str key, then v as an unsigned integer (a map entry). */
void anes_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t v);
/* s (NUL-terminated) as a str that is valid UTF-8 (RFC 3629): every byte not
 * part of a well-formed sequence (a client's bytes quoted in a message, a
 * message cut inside a character) is written as '?', so the length is
 * strlen(s).  For every human-readable text the daemon sends. */
void anes_pack_text(msgpack_packer *pk, const char *s);
/* [0, msgid, method, {  -- then pack n_params key/value pairs */
void anes_pack_request(msgpack_packer *pk, uint32_t msgid, const char *method, uint32_t n_params);
/* [1, msgid, nil, {     -- then pack n_result key/value pairs */
void anes_pack_result(msgpack_packer *pk, uint32_t msgid, uint32_t n_result);
/* [1, msgid, {code, name, message}, nil] -- complete */
void anes_pack_error(msgpack_packer *pk, uint32_t msgid, int code, const char *message);
/* [2, method, {         -- then pack n_params key/value pairs */
void anes_pack_notify(msgpack_packer *pk, const char *method, uint32_t n_params);

/* Decode a response's error map. Pointers refer into the message.
 * -EBADMSG if the map lacks an integer "code" or string "message". */
int anes_msg_error(const anes_msg *m, int *ret_code, const char **ret_message, uint32_t *ret_len);

/* ---- connection I/O ------------------------------------------------------ */

/* One end of a connection: a receive buffer, received fds not yet claimed,
 * and a queue of frames to send.  Works with blocking and non-blocking
 * sockets.  Not thread-safe. */
typedef struct anes_out anes_out;
struct anes_io;
typedef struct anes_io {
	int fd;                 /* borrowed: the owner closes it */
	uint32_t max_frame;     /* max payload accepted and sent */
	uint8_t *rbuf;          /* owned */
	size_t rpos;            /* start of unconsumed bytes */
	size_t rlen;            /* end of received bytes */
	size_t rcap;
	int fdq[ANES_IO_MAX_QUEUED_FDS];  /* owned: received, not yet claimed */
	unsigned nfdq;
	anes_out *out_head;     /* owned: frames not yet fully sent */
	anes_out *out_tail;
	size_t out_bytes;       /* bytes queued and not yet sent */
	int msg_flags;          /* OR-ed into every recvmsg (e.g. MSG_DONTWAIT on a blocking
	                         * socket); 0 after init.  Sends never block. */
	/* Optional (NULL after init): the owner's accounting of receive memory.
	 * A frame larger than ANES_IO_RBUF_MIN needs its bytes beyond that
	 * reserved before the buffer grows for it: charge(io, +n) is asked for
	 * them (all at once, whatever has arrived), and charge(io, -n) gives
	 * back what is no longer needed (the frame was taken, or cleanup).
	 * When charge refuses (returns false), anes_io_read reads nothing and
	 * returns -EDQUOT.  May be called on whichever thread reads. */
	bool (*charge)(struct anes_io *io, int64_t delta);
	size_t charged;         /* bytes charge() accepted and has not been given back */
} anes_io;

/* The receive buffer every connection may use without charge(). */
#define ANES_IO_RBUF_MIN (64u << 10)

void anes_io_init(anes_io *io, int fd, uint32_t max_frame);
/* Free buffers, close queued and unsent fds.  Does not close io->fd. */
void anes_io_cleanup(anes_io *io);

/* One recvmsg (MSG_CMSG_CLOEXEC).  Returns the bytes read (> 0), 0 on
 * end-of-file, -EAGAIN if nothing is available on a non-blocking socket,
 * -EPROTO if the peer sent more fds than fit (MSG_CTRUNC; all received fds
 * are closed) or any ancillary data but SCM_RIGHTS, -EMFILE if they were
 * cut short because this process is out of fds (not the peer's fault; the
 * fds that came are closed and the stream is out of step), -ENOBUFS if the buffer
 * is full and holds a complete frame (take it with anes_io_next_frame
 * first), -EDQUOT if the frame in progress needs memory that io->charge
 * refused (nothing was read: try again once the owner has room), or
 * another -errno.
 * The buffer grows with what arrives, never beyond header + max_frame. */
ssize_t anes_io_read(anes_io *io);

/* Give back receive memory that the frames still buffered do not need:
 * a large frame's buffer and its charge once it was taken.  Invalidates
 * payloads returned before. */
void anes_io_trim(anes_io *io);

/* Take the next complete frame out of the receive buffer.
 * Returns 1 with *ret_payload and *ret_len (valid until the next anes_io_read or
 * anes_io_next_frame) and ret_fds[0..*ret_nfds) (owned by the caller from now
 * on); 0 if no complete frame is buffered; -EMSGSIZE for a frame over
 * max_frame (detected from its header, before anything is allocated);
 * -EPROTO for a bad header, a frame that claims more fds than arrived, or
 * fds that arrived with no frame to claim them. */
int anes_io_next_frame(anes_io *io, const uint8_t **ret_payload, uint32_t *ret_len,
                       int ret_fds[ANES_MAX_FDS_PER_FRAME], unsigned *ret_nfds);

/* Like anes_io_next_frame, but the frame stays buffered and its fds
 * queued: returns 1 with *ret_payload, *ret_len and the count of fds it
 * claims (*ret_nfds), 0 or a negative errno as anes_io_next_frame. */
int anes_io_peek_frame(const anes_io *io, const uint8_t **ret_payload, uint32_t *ret_len,
                       unsigned *ret_nfds);

/* Queue a finished frame (from anes_frame_finish) and the fds that go with it
 * (nfds must equal the count in its header).  Takes ownership of data and of
 * the fds in every case, also on failure (then they are freed/closed).
 * -EINVAL if the header does not match len or nfds, -EMSGSIZE if the payload
 * exceeds io->max_frame, -ENOMEM. */
int anes_io_queue(anes_io *io, void *data, size_t len, const int *fds, unsigned nfds);

/* The one send of every connection, daemon and library alike: one sendmsg
 * (anes_os_sendmsg) of iov[0..n_iov) that never blocks (MSG_DONTWAIT,
 * MSG_NOSIGNAL; EINTR is retried), with fds[0..nfds) (borrowed: the peer
 * gets duplicates; at most ANES_MAX_FDS_PER_FRAME) attached to its first
 * byte.  Returns the bytes sent (> 0).  A partial write is the caller's to
 * finish: it sends the rest later, without the fds, which went with the
 * first byte.  -EAGAIN when the socket took nothing (poll for writable),
 * -EPIPE when it took 0 bytes, -EINVAL for too many fds, another -errno. */
ssize_t anes_io_try_send(int fd, const struct iovec *iov, unsigned n_iov, const int *fds,
                         unsigned nfds);

/* Send queued frames with anes_io_try_send, gathering consecutive frames
 * into one send (a frame with fds starts a new one), until the queue is
 * empty (0) or the socket is full (-EAGAIN: poll for writable and call
 * again; a blocking socket does not block here), or another -errno on
 * failure (-EPIPE when the peer is gone). */
int anes_io_flush(anes_io *io);

/* Queue data, one or more finished frames without fds back to back, of
 * which the first sent bytes already went out on io->fd by other means:
 * with sent > 0 at the front of the queue (so that its rest leaves first),
 * with sent 0 at the back.  Takes ownership of data.  -EINVAL (a bad or
 * cut header, a frame with fds, or sent not below len), -ENOMEM. */
int anes_io_queue_rest(anes_io *io, void *data, size_t len, size_t sent);

static inline bool anes_io_want_write(const anes_io *io) { return io->out_head != NULL; }

/* ---- OS helpers ------------------------------------------------------------ */

/* System calls used for fd passing, replaceable by tests to inject faults. */
extern ssize_t (*anes_os_sendmsg)(int fd, const struct msghdr *msg, int flags);
extern ssize_t (*anes_os_recvmsg)(int fd, struct msghdr *msg, int flags);

/* Create a memfd of size bytes, sealed against shrinking, growing and further
 * sealing (MFD_CLOEXEC).  On success *ret_fd is owned by the caller. */
int anes_memfd_create(const char *name, uint64_t size, int *ret_fd);
/* Check that fd is a memfd sealed against shrinking; return its size. */
int anes_memfd_check(int fd, uint64_t *ret_size);

/* A read-only copy only this process (and whom it passes the fd to) holds:
 * weights the daemon copied (a plain file, inline bytes), passed to its
 * device worker by fd (docs/worker.md).  anes_rofile_create makes a file of
 * size bytes (Linux: a memfd allowing seals; elsewhere: a POSIX shared memory
 * object unlinked at once, so nobody else can open it), CLOEXEC, owned by the
 * caller; anes_rofile_write fills it (Linux: pwrite, so that the pages are
 * not mapped into this process; elsewhere through a short-lived mapping);
 * anes_rofile_seal makes it unchangeable (Linux: sealed against shrinking,
 * growing, writing and further seals; elsewhere a no-op: no other process
 * has the object).  0 or -errno. */
int anes_rofile_create(const char *name, uint64_t size, int *ret_fd);
int anes_rofile_write(int fd, uint64_t off, const void *buf, size_t len);
int anes_rofile_seal(int fd);

/* Whole-buffer read/write helpers for blocking fds; 0 or -errno (-EPIPE at EOF). */
int anes_write_all(int fd, const void *buf, size_t len);

/* Fds that have FD_CLOEXEC from the start (proto/anes_os.c).  Linux sets it
 * atomically (SOCK_CLOEXEC, pipe2, accept4, MSG_CMSG_CLOEXEC); macOS has none
 * of these, so there it is set with fcntl right after the call, and a fork+exec
 * by another thread in between may inherit the fd (which is why the daemon spawns
 * its worker with POSIX_SPAWN_CLOEXEC_DEFAULT there).  On failure nothing is
 * left open and the out-parameters are untouched. */
/* socket(domain, type, 0): the fd (owned by the caller) or -errno. */
int anes_socket_cloexec(int domain, int type);
/* socketpair(domain, type, 0): 0 with ret_sv[0..1] (owned by the caller) or -errno. */
int anes_socketpair_cloexec(int domain, int type, int ret_sv[2]);
/* pipe(): 0 with ret_fds[0] (read end) and ret_fds[1] (owned by the caller) or -errno. */
int anes_pipe_cloexec(int ret_fds[2]);
/* accept(lfd, NULL, NULL): the fd (owned by the caller) or -errno. */
int anes_accept_cloexec(int lfd);
/* open(path, flags | O_CLOEXEC) and fstat it: the fd (owned by the caller)
 * with *ret_st, or -errno (nothing left open, *ret_st untouched). */
struct stat;
int anes_open_stat(const char *path, int flags, struct stat *ret_st);
/* recvmsg(fd, msg, flags) with every fd received (SCM_RIGHTS) CLOEXEC, owned by
 * the caller: the bytes read (0 at end-of-file) or -errno. */
ssize_t anes_recvmsg_cloexec(int fd, struct msghdr *msg, int flags);
/* A test hook's environment variable: its value (getenv's), or NULL when it is
 * unset or empty, and always NULL in a build without the test hooks
 * (meson -Dtest_hooks=false, the default). */
const char *anes_test_hook_env(const char *name);

#endif
