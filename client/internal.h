/* SPDX-License-Identifier: MIT */
/*
 * libaneshare internals: the connection object and the request/response
 * machinery shared by the surface, program and status code.
 */
#ifndef ANESHARE_INTERNAL_H
#define ANESHARE_INTERNAL_H

#include <stdarg.h>

#include "anes_proto.h"
#include "aneshare.h"

#define ANESC_ERRMSG_MAX 1024      /* bytes kept of a daemon's message */
#define ANESC_MAX_PENDING 65536    /* submitted runs not yet waited for */
#define ANESC_MAX_NAME 256         /* longest function/tensor name accepted from the daemon */
#define ANESC_MAX_FUNCTIONS 1024   /* functions accepted in program.info */
#define ANESC_MAX_IO 1024          /* inputs or outputs of one function */
#define ANESC_MAX_STR 4096         /* other strings from the daemon (version, backend, key) */

/* A submitted run: its ticket (= msgid) and, once the response arrived, its result. */
typedef struct anesc_pending {
	uint32_t msgid;
	bool done;
	int rc;
	char *msg;                 /* owned; the daemon's message when rc < 0 */
} anesc_pending;

/* Called with the result map of the response a synchronous call waits for.
 * fds[0..nfds) came with the response: the callback takes one by storing it
 * and setting its slot to -1; the rest are closed by the caller. */
typedef int (*anesc_result_fn)(aneshare_conn *c, const msgpack_object *result,
                               int *fds, unsigned nfds, void *ud);

struct aneshare_surface {
	aneshare_conn *conn;
	aneshare_surface *prev, *next;
	uint32_t id;
	void *data;                /* owned mapping of size bytes */
	size_t size;
};

typedef struct anesc_function {
	char *name;                /* owned */
	uint32_t n_inputs, n_outputs;
	aneshare_tensor_info *inputs;   /* owned, names owned */
	aneshare_tensor_info *outputs;
} anesc_function;

struct aneshare_program {
	aneshare_conn *conn;
	aneshare_program *prev, *next;
	uint32_t id;
	char key[65];
	uint32_t n_functions;
	anesc_function *functions;     /* owned */
};

struct aneshare_conn {
	int fd;                        /* owned socket */
	anes_io io;
	uint32_t next_msgid;
	int dead;                      /* 0, or the code every call now fails with */
	char dead_msg[ANESC_ERRMSG_MAX];
	char last_error[ANESC_ERRMSG_MAX];

	aneshare_server_info info;
	char *server_version;          /* owned; info points here */
	char *backend;

	anesc_pending *pending;        /* owned array, n_pending used of cap_pending */
	size_t n_pending, cap_pending;
	size_t n_outstanding;          /* pending entries not done */

	/* the synchronous call being waited for */
	bool sync_active, sync_done, sync_killed;
	uint32_t sync_msgid;
	int sync_rc;
	anesc_result_fn sync_fn;
	void *sync_ud;

	aneshare_surface *surfaces;    /* owned lists */
	aneshare_program *programs;
};

/* Record a failure of a call on c: rc is returned, last_error is the message. */
int anesc_fail(aneshare_conn *c, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Start a request frame: checks the connection is usable, picks a msgid and
 * packs [0, msgid, method, { -- then pack n_params key/value pairs. */
int anesc_begin(aneshare_conn *c, anes_frame *f, const char *method, uint32_t n_params,
                uint32_t *ret_msgid);

/* Finish and send f with fds (taken in every case: closed on failure; the
 * frame is released in every case). */
int anesc_send(aneshare_conn *c, anes_frame *f, const int *fds, unsigned nfds);

/* Read frames until the response to msgid arrives; returns its result:
 * fn's result on success, or the daemon's error. */
int anesc_wait_for(aneshare_conn *c, uint32_t msgid, anesc_result_fn fn, void *ud);

/* anesc_send + anesc_wait_for. */
int anesc_call(aneshare_conn *c, anes_frame *f, uint32_t msgid, const int *fds, unsigned nfds,
               anesc_result_fn fn, void *ud);

/* Register msgid as a submitted run (before sending it). */
int anesc_pending_add(aneshare_conn *c, uint32_t msgid);
void anesc_pending_drop(aneshare_conn *c, uint32_t msgid);
/* Read frames until fewer than limit runs are outstanding. */
int anesc_pending_throttle(aneshare_conn *c, size_t limit);

/* Copy a msgpack str (bounded) into a new NUL-terminated string: 0,
 * -ENOENT, -EINVAL (wrong type, too long or holds a NUL), -ENOMEM. */
int anesc_dup_str(const msgpack_object *map, const char *key, uint32_t max_len, char **ret);

void anesc_surface_free_local(aneshare_surface *s);
void anesc_program_free_local(aneshare_program *p);

#endif
