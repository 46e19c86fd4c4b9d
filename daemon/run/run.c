/* SPDX-License-Identifier: MIT */
/*
 * A run from bytes to reply (run.h).
 *
 * Bytes: anes_run_wire_parse reads every run request, on the loop and on
 * the lanes alike, in one pass into a workspace (srv->run_wire on the
 * loop, ctx->wire on a lane thread); what it finds wrong with the params
 * comes back as codes, answered here.  Resolution (resolve) checks each
 * step against the connection's tables in the request's order and fills
 * the steps, their surfaces and their data pointers in one pass.  Every
 * run executes on a worker or lane thread, never on the loop (a backend
 * call can take any time, and the loop serves every client), through
 * run_steps; a failure becomes a wire error in one place (run_fail).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anes_shm.h"
#include "event.h"
#include "run.h"
#include "state.h"

_Static_assert(ANES_MAX_IO <= ANES_RUN_WIRE_MAX_IO,
               "the decoder keeps every surface ID a function can take");

/* One run, or one step of a chain. */
typedef struct run_step {
	anes_centry *entry;     /* pinned (jobs) */
	uint32_t fn;
	uint32_t n_in, n_out;
	bool fault;             /* --fault-inject run_fail: fail instead of running */
	int gate;               /* --fault-inject run_gate: read a byte first; -1: off */
	anes_surface **surf;    /* n_in + n_out, referenced (jobs) */
	const void **in;
	void **out;
	anes_state *state;      /* the state it names (referenced by the job's claim), or NULL */
} run_step;

/* What a run request is answered with when it fails: the wire error, and
 * for a chain the step at fault (named in the reply's failed_step). */
typedef struct run_err {
	int code;               /* 0: none */
	bool step_named;
	uint32_t step;
	char msg[ANES_ERRMSG_MAX + 32];
} run_err;

/* ---- errors and replies ---------------------------------------------------- */

/* The error e answers with.  step_level: an error of step `step`, named
 * (in the message and the reply) when the request is a chain. */
static void set_err(run_err *e, bool chain, bool step_level, uint32_t step, int code,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void set_err(run_err *e, bool chain, bool step_level, uint32_t step, int code,
                    const char *fmt, ...)
{
	char msg[ANES_ERRMSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	e->code = code;
	e->step_named = chain && step_level;
	e->step = step;
	if (e->step_named)
		snprintf(e->msg, sizeof(e->msg), "step %u: %s", step, msg);
	else
		snprintf(e->msg, sizeof(e->msg), "%s", msg);
}

/* A step whose state is lost (run_one) fails with this code; a backend's
 * own -ESTALE is answered as any other failure. */
#define STATE_LOST_RC (-ESTALE)

/* The events a run names (docs/protocol.md, "Events in runs"), resolved:
 * handles of the connection (their events referenced by jobs). */
typedef struct run_events {
	uint8_t n_wait, n_signal;
	anes_evhandle *wait[ANES_RUN_MAX_EVENTS];
	uint64_t wait_value[ANES_RUN_MAX_EVENTS];
	anes_evhandle *signal[ANES_RUN_MAX_EVENTS];
	uint64_t signal_value[ANES_RUN_MAX_EVENTS];
} run_events;

/* The one map from a failed step's return code to the wire. */
static void run_fail(run_err *e, bool chain, uint32_t step, int rc, const char *err)
{
	if (rc == STATE_LOST_RC)
		set_err(e, chain, true, step, ANES_WERR_STATE_LOST, "%s", err);
	else if (rc == -ECONNRESET)
		set_err(e, chain, true, step, ANES_WERR_WORKER_RESTARTED, "%s",
		        err[0] ? err : "the device worker was lost; retry");
	else
		set_err(e, chain, true, step, ANES_WERR_RUN_FAILED, "%s", err[0] ? err : strerror(-rc));
}

/* The reply: {elapsed_us, steps (chain)}, or e's error; a chain's names
 * the step at fault: [1, msgid, {code, name, message, failed_step}, nil]. */
static void pack_reply(msgpack_packer *pk, uint32_t msgid, bool chain, uint32_t n_steps,
                       uint64_t elapsed_ns, const run_err *e)
{
	if (e && e->code && !e->step_named) {
		anes_pack_error(pk, msgid, e->code, e->msg);
		return;
	}
	if (e && e->code) {
		const char *name = anes_wire_error_name(e->code);
		msgpack_pack_array(pk, 4);
		msgpack_pack_uint32(pk, ANES_MSG_RESPONSE);
		msgpack_pack_uint32(pk, msgid);
		msgpack_pack_map(pk, 4);
		anes_pack_kv_u64(pk, "code", (uint64_t)e->code);
		anes_pack_str(pk, "name");
		anes_pack_str(pk, name ? name : "internal");
		anes_pack_str(pk, "message");
		anes_pack_text(pk, e->msg);
		anes_pack_kv_u64(pk, "failed_step", e->step);
		msgpack_pack_nil(pk);
		return;
	}
	anes_pack_result(pk, msgid, chain ? 2 : 1);
	anes_pack_kv_u64(pk, "elapsed_us", elapsed_ns / 1000u);
	if (chain)
		anes_pack_kv_u64(pk, "steps", n_steps);
}

/* Loop: answer msgid (reply or e's error). */
static void send_reply(anes_conn *c, uint32_t msgid, bool chain, uint32_t n_steps,
                       uint64_t elapsed_ns, const run_err *e)
{
	anes_frame f;
	anes_frame_init(&f);
	pack_reply(&f.pk, msgid, chain, n_steps, elapsed_ns, e);
	anes_conn_send(c, &f, msgid, NULL, 0);
}

/* ---- resolution --------------------------------------------------------------- */

/* The steps, then n_surf surface pointers, then as many data pointers. */
static size_t run_steps_bytes(uint32_t n_steps, uint64_t n_surf)
{
	return n_steps * sizeof(run_step) + (size_t)n_surf * (sizeof(anes_surface *) + sizeof(void *));
}

/* What the decoder found wrong with step i's params, as e. */
static void step_param_err(run_err *e, bool chain, uint32_t i, const anes_run_wire_step *ws)
{
	const char *key = "program";
	switch (ws->bad) {
	case ANES_RUN_PROGRAM_MISSING:
	case ANES_RUN_INPUTS_MISSING:
	case ANES_RUN_OUTPUTS_MISSING:
		key = ws->bad == ANES_RUN_PROGRAM_MISSING ? "program" :
		      ws->bad == ANES_RUN_INPUTS_MISSING ? "inputs" : "outputs";
		set_err(e, chain, true, i, ANES_WERR_INVALID_PARAMS, "missing \"%s\"", key);
		return;
	case ANES_RUN_INPUTS_ITEM:
	case ANES_RUN_OUTPUTS_ITEM:
		set_err(e, chain, true, i, ANES_WERR_INVALID_PARAMS, "\"%s\"[%u] is not a surface ID",
		        ws->bad == ANES_RUN_INPUTS_ITEM ? "inputs" : "outputs", ws->bad_item);
		return;
	case ANES_RUN_FUNCTION_TYPE: key = "function"; break;
	case ANES_RUN_INPUTS_TYPE: key = "inputs"; break;
	case ANES_RUN_OUTPUTS_TYPE: key = "outputs"; break;
	case ANES_RUN_STATE_TYPE: key = "state"; break;
	case ANES_RUN_STEP_EVENTS:
		set_err(e, chain, true, i, ANES_WERR_INVALID_PARAMS,
		        "\"wait\" and \"signal\" belong to the run, not to a step");
		return;
	default: break;
	}
	set_err(e, chain, true, i, ANES_WERR_INVALID_PARAMS,
	        "\"%s\" has the wrong type or is out of range", key);
}

/* The surfaces a step names, against what the function takes; ret[i].
 * Outputs (what "output") must not be read-only imports (share.c). */
static bool check_surfaces(anes_conn *c, run_err *e, bool chain, uint32_t step, const char *what,
                           const uint32_t *ids, const anes_tensor_desc *t, uint32_t n,
                           anes_surface **ret)
{
	for (uint32_t i = 0; i < n; i++) {
		anes_surface *s = anes_idt_find(&c->surfaces, ids[i]);
		if (!s) {
			set_err(e, chain, true, step, ANES_WERR_NO_SUCH_SURFACE, "no surface %u", ids[i]);
			return false;
		}
		if (s->read_only && !strcmp(what, "output")) {
			set_err(e, chain, true, step, ANES_WERR_INVALID_PARAMS,
			        "output %u: surface %u is a read-only import", i, ids[i]);
			return false;
		}
		if (s->size < t[i].bytes) {
			set_err(e, chain, true, step, ANES_WERR_SIZE_MISMATCH,
			        "%s %u (\"%s\") needs %llu bytes, surface %u has %llu", what, i,
			        t[i].name, (unsigned long long)t[i].bytes, ids[i],
			        (unsigned long long)s->size);
			return false;
		}
		ret[i] = s;
	}
	return true;
}

/* Step i of w against c's tables, into st (whose surf is set). */
static bool resolve_step(anes_conn *c, const anes_run_wire *w, uint32_t i, run_step *st,
                         run_err *e)
{
	const anes_run_wire_step *ws = &w->steps[i];
	bool chain = w->chain;
	if (ws->bad) {
		step_param_err(e, chain, i, ws);
		return false;
	}
	anes_centry *en = anes_idt_find(&c->programs, ws->program);
	if (!en) {
		set_err(e, chain, true, i, ANES_WERR_NO_SUCH_PROGRAM, "no program %u", ws->program);
		return false;
	}
	/* "function": the function of that name, compared byte for byte (""
	 * names none); without it, the program's first (docs/protocol.md). */
	const anes_bprogram *p = en->prog;
	uint32_t fn = UINT32_MAX;
	if (ws->function) {
		for (uint32_t k = 0; k < p->n_functions; k++) {
			if (strlen(p->functions[k].name) == ws->function_len &&
			    memcmp(p->functions[k].name, ws->function, ws->function_len) == 0) {
				fn = k;
				break;
			}
		}
	} else if (p->n_functions > 0) {
		fn = 0;
	}
	if (fn == UINT32_MAX) {
		set_err(e, chain, true, i, ANES_WERR_NO_SUCH_FUNCTION, "no function \"%.*s\"",
		        (int)(ws->function_len > 64 ? 64 : ws->function_len),
		        ws->function ? ws->function : "");
		return false;
	}
	const anes_function_info *fi = &p->functions[fn];
	if (ws->n_in != fi->n_inputs || ws->n_out != fi->n_outputs) {
		set_err(e, chain, true, i, ANES_WERR_SIZE_MISMATCH,
		        "function \"%s\" takes %u inputs and %u outputs, got %u and %u",
		        fi->name, fi->n_inputs, fi->n_outputs, ws->n_in, ws->n_out);
		return false;
	}
	/* The counts match a function's: every ID was kept (at most ANES_MAX_IO). */
	if (!check_surfaces(c, e, chain, i, "input", w->ids + ws->in, fi->inputs, ws->n_in, st->surf) ||
	    !check_surfaces(c, e, chain, i, "output", w->ids + ws->out, fi->outputs, ws->n_out,
	                    st->surf + ws->n_in))
		return false;
	/* A function with states runs on one state of this connection made for
	 * it (state.create); one without takes none (docs/protocol.md). */
	anes_state *state = NULL;
	if (ws->has_state) {
		state = anes_idt_find(&c->states, ws->state);
		if (!state) {
			set_err(e, chain, true, i, ANES_WERR_NO_SUCH_STATE, "no state %u", ws->state);
			return false;
		}
		if (fi->n_states == 0) {
			set_err(e, chain, true, i, ANES_WERR_INVALID_PARAMS,
			        "function \"%s\" has no states: it takes no \"state\"", fi->name);
			return false;
		}
		if (!anes_state_fits(state, en, fn)) {
			set_err(e, chain, true, i, ANES_WERR_INVALID_PARAMS,
			        "state %u was made for another program or function than function \"%s\" "
			        "of program %u", ws->state, fi->name, ws->program);
			return false;
		}
	} else if (fi->n_states > 0) {
		set_err(e, chain, true, i, ANES_WERR_INVALID_PARAMS,
		        "function \"%s\" has %u states (state<...> inputs): name one made for it by "
		        "state.create in \"state\"", fi->name, fi->n_states);
		return false;
	}
	st->entry = en;
	st->fn = fn;
	st->state = state;
	st->n_in = ws->n_in;
	st->n_out = ws->n_out;
	st->fault = c->srv->cfg.fault_run_fail && !strcmp(fi->name, c->srv->cfg.fault_run_fail);
	st->gate = c->srv->fault_gate_fd;
	return true;
}

/* The run's "wait" and "signal" lists against c's event handles, after its
 * steps (docs/protocol.md, "Events in runs"). */
static bool resolve_events(anes_conn *c, const anes_run_wire *w, run_events *ev, run_err *e)
{
	ev->n_wait = ev->n_signal = 0;
	if (w->ev_bad) {
		const char *list = w->ev_bad_signal ? "signal" : "wait";
		if (w->ev_bad == ANES_RUN_EV_TYPE)
			set_err(e, false, false, 0, ANES_WERR_INVALID_PARAMS,
			        "\"%s\" is not an array of at most %d {event, value} maps", list,
			        ANES_RUN_MAX_EVENTS);
		else if (w->ev_bad == ANES_RUN_EV_DUP)
			set_err(e, false, false, 0, ANES_WERR_INVALID_PARAMS,
			        "\"%s\"[%u] names an event listed before it", list, w->ev_bad_item);
		else
			set_err(e, false, false, 0, ANES_WERR_INVALID_PARAMS,
			        "\"%s\"[%u] is not a map of \"event\" (an event ID) and \"value\" (uint)",
			        list, w->ev_bad_item);
		return false;
	}
	for (uint8_t i = 0; i < w->n_wait; i++) {
		anes_evhandle *h = anes_idt_find(&c->event_ids, w->wait[i].event);
		if (!h) {
			set_err(e, false, false, 0, ANES_WERR_NO_SUCH_EVENT, "wait: no event %u",
			        w->wait[i].event);
			return false;
		}
		ev->wait[i] = h;
		ev->wait_value[i] = w->wait[i].value;
	}
	for (uint8_t i = 0; i < w->n_signal; i++) {
		anes_evhandle *h = anes_idt_find(&c->event_ids, w->signal[i].event);
		if (!h) {
			set_err(e, false, false, 0, ANES_WERR_NO_SUCH_EVENT, "signal: no event %u",
			        w->signal[i].event);
			return false;
		}
		char msg[128];
		if (anes_event_signal_check(h, w->signal[i].value, msg, sizeof(msg)) < 0) {
			set_err(e, false, false, 0, ANES_WERR_INVALID_PARAMS, "signal: %s", msg);
			return false;
		}
		ev->signal[i] = h;
		ev->signal_value[i] = w->signal[i].value;
	}
	/* A wait that can never be met is refused now. */
	for (uint8_t i = 0; i < w->n_wait; i++) {
		anes_event *x = ev->wait[i]->ev;
		pthread_mutex_lock(&x->mu);
		bool dead = x->closed && x->value < ev->wait_value[i];
		uint64_t final = x->value;
		pthread_mutex_unlock(&x->mu);
		if (dead) {
			set_err(e, false, false, 0, ANES_WERR_EVENT_CLOSED,
			        "wait: event %u closed at %llu, below %llu", ev->wait[i]->id,
			        (unsigned long long)final, (unsigned long long)ev->wait_value[i]);
			return false;
		}
	}
	ev->n_wait = w->n_wait;
	ev->n_signal = w->n_signal;
	return true;
}

/* Check the request w (the first thing wrong becomes e) and fill steps[]
 * -- laid out as run_steps_bytes(w->n_steps, w->n_ids) counts -- in one
 * pass, in the order the daemon has always checked: the request, then each
 * step's params, program, function, counts, inputs and outputs, and state. */
static bool resolve(anes_conn *c, const anes_run_wire *w, run_step *steps, run_events *ev,
                    run_err *e)
{
	switch (w->bad) {
	case ANES_RUN_OK:
		break;
	case ANES_RUN_STEPS_EMPTY:
		set_err(e, false, false, 0, ANES_WERR_INVALID_PARAMS, "\"steps\" is empty");
		return false;
	case ANES_RUN_STEPS_AND_PROGRAM:
		set_err(e, false, false, 0, ANES_WERR_INVALID_PARAMS,
		        "a run has either \"steps\" or \"program\"");
		return false;
	case ANES_RUN_STEP_NOT_MAP:
		set_err(e, true, true, w->bad_step, ANES_WERR_INVALID_PARAMS, "a step is not a map");
		return false;
	default:
		set_err(e, false, false, 0, ANES_WERR_INVALID_PARAMS,
		        "\"steps\" is not an array of 1 to %d steps", ANES_MAX_STEPS);
		return false;
	}
	anes_surface **surf = (anes_surface **)(void *)(steps + w->n_steps);
	void **ptrs = (void **)(void *)(surf + w->n_ids);
	for (uint32_t i = 0; i < w->n_steps; i++) {
		run_step *st = &steps[i];
		*st = (run_step){ .surf = surf };
		if (!resolve_step(c, w, i, st, e))
			return false;
		st->in = (const void **)ptrs;
		st->out = ptrs + st->n_in;
		for (uint32_t k = 0; k < st->n_in; k++)
			st->in[k] = st->surf[k]->map;
		for (uint32_t k = 0; k < st->n_out; k++)
			st->out[k] = st->surf[st->n_in + k]->map;
		surf += st->n_in + st->n_out;
		ptrs += st->n_in + st->n_out;
	}
	return resolve_events(c, w, ev, e);
}

/* ---- the step executor ------------------------------------------------------- */

/* run_one past the state's check: the fault hooks, then the backend. */
static int run_backend(anes_backend *b, const run_step *st, char *err, size_t err_len)
{
	anes_state *state = st->state;
	if (st->fault) {
		snprintf(err, err_len, "injected failure (--fault-inject run_fail)");
		return -EIO;
	}
	if (st->gate >= 0) {
		char token;
		ssize_t n;
		while ((n = read(st->gate, &token, 1)) < 0 && errno == EINTR)
			;
		if (n != 1) {
			snprintf(err, err_len, "--fault-inject run_gate: the gate failed");
			return -EIO;
		}
	}
	if (b->ops->run_surfaces) {
		/* inputs, outputs, then the state's tensors (backend.h) */
		anes_surface_desc d[3 * ANES_MAX_IO];
		uint32_t n = st->n_in + st->n_out, n_st = state ? state->n : 0;
		for (uint32_t i = 0; i < n + n_st && i < 3 * ANES_MAX_IO; i++) {
			const anes_surface *s = i < n ? st->surf[i] : state->mem;
			uint64_t off = i < n ? 0 : state->off[i - n];
			d[i] = (anes_surface_desc){ .ptr = (char *)s->map + off, .fd = s->fd,
			                            .ios_id = s->shm ? s->shm->id : 0,
			                            .ios = s->shm && s->shm->id ? s->shm->ref : NULL,
			                            .key = s->key,
			                            .offset = off, .size = s->size };
		}
		return b->ops->run_surfaces(b, st->entry->prog, st->fn, d, n + n_st, err, err_len);
	}
	if (state) {
		void *sp[ANES_MAX_IO];
		for (uint32_t i = 0; i < state->n && i < ANES_MAX_IO; i++)
			sp[i] = anes_state_ptr(state, i);
		if (!b->ops->run_states) {
			snprintf(err, err_len, "the %s backend does not run functions with states",
			         b->ops->name);
			return -ENOTSUP;
		}
		return b->ops->run_states(b, st->entry->prog, st->fn, st->in, (void *const *)st->out,
		                          sp, err, err_len);
	}
	return b->ops->run(b, st->entry->prog, st->fn, st->in, (void *const *)st->out, err, err_len);
}

static int run_one(anes_backend *b, const run_step *st, char *err, size_t err_len)
{
	anes_state *state = st->state;
	if (state && atomic_load(&state->lost)) {
		snprintf(err, err_len, "the state's contents are unknown since a run of it failed: "
		         "state.reset it");
		return STATE_LOST_RC;
	}
	int rc = run_backend(b, st, err, err_len);
	return rc == STATE_LOST_RC ? -EIO : rc;
}

/* Keep a moving average of e's run time (ns): 1/4 of the new one. */
static void note_run_time(anes_centry *e, uint64_t ns)
{
	uint64_t old = atomic_load_explicit(&e->run_ns, memory_order_relaxed);
	uint64_t avg = old ? old - old / 4 + ns / 4 : ns;
	atomic_store_explicit(&e->run_ns, avg ? avg : 1, memory_order_relaxed);
}

/* The one executor, for jobs and lanes: the steps back to back, each timed
 * for its program's moving average, stopping at the first failure.
 * *ret_n_done: the steps that ran (the failed one included); err holds a
 * failure's message (NUL-terminated, maybe empty). */
static int run_steps(anes_backend *b, const run_step *steps, uint32_t n, uint32_t *ret_n_done,
                     uint64_t *ret_elapsed_ns, char *err, size_t err_len)
{
	int rc = 0;
	uint32_t done = 0;
	err[0] = '\0';
	uint64_t t0 = anes_now_ns(), t = t0;
	for (uint32_t i = 0; i < n && rc == 0; i++) {
		rc = run_one(b, &steps[i], err, err_len);
		uint64_t t1 = anes_now_ns();
		if (rc == 0)
			note_run_time(steps[i].entry, t1 - t);
		else if (steps[i].state)   /* how far it got is unknown */
			atomic_store(&steps[i].state->lost, true);
		t = t1;
		done = i + 1;
	}
	err[err_len - 1] = '\0';
	*ret_n_done = done;
	*ret_elapsed_ns = t - t0;
	return rc;
}

/* ---- runs on the loop: jobs ------------------------------------------------------ */

typedef struct run_job run_job;

/* One of a run's event waits (state/event.h). */
typedef struct run_evwait {
	anes_evwaiter w;        /* w.ev referenced */
	run_job *rj;
} run_evwait;

/* Failures that are not a step's (run_work, run_done). */
#define EVENT_CLOSED_RC (-EPIPE)      /* an event it waits for closed below */
#define EVENT_SHUTDOWN_RC (-ESHUTDOWN)   /* the daemon stopped it while parked */

/* A run request: one step, or a chain run back to back in one job.  The
 * steps, their surface pointers and their data pointers live in the same
 * allocation as the job. */
struct run_job {
	anes_job job;
	anes_conn *conn;        /* referenced */
	anes_tenant *tenant;    /* conn's, referenced: the job is counted */
	anes_backend *backend;
	uint32_t msgid;
	bool chain;
	uint32_t n_steps;
	uint32_t n_done;        /* steps that ran (the failed one included) */
	run_step *steps;
	/* The distinct states its steps name, claimed in their queues: it is
	 * submitted once it is first in every one (state.h). */
	anes_state_wait wait;
	anes_state_claim *claims;   /* n_steps entries, n_claims used */
	uint32_t n_claims;
	/* Events (docs/protocol.md, "Events in runs"): its waits, and the
	 * events it raises when it succeeds (referenced, counted as their
	 * signallers until done()). */
	uint8_t n_wait, n_signal;
	run_evwait evw[ANES_RUN_MAX_EVENTS];
	anes_event *sig[ANES_RUN_MAX_EVENTS];
	uint64_t sig_value[ANES_RUN_MAX_EVENTS];
	_Atomic uint32_t ev_left;   /* waits not met yet (+1 while submit() registers them) */
	anes_parked parked;     /* on conn->parked while it has waits (loop) */
	bool on_parked;
	int rc;
	uint64_t elapsed_ns;
	/* The success reply, packed on the worker (run_reply): sent whole
	 * (replied), partly (reply_sent bytes) or not at all. */
	bool replied;
	void *reply;
	size_t reply_len, reply_sent;
	char err[ANES_ERRMSG_MAX];
};

/* On a worker: back to back, stopping at the first failure. */
static void run_work(anes_job *j)
{
	run_job *rj = ANES_CONTAINER_OF(j, run_job, job);

	/* A wait that ended without being met: nothing runs. */
	for (uint8_t i = 0; i < rj->n_wait; i++) {
		const anes_evwaiter *w = &rj->evw[i].w;
		if (w->outcome == ANES_EVW_MET || w->outcome == ANES_EVW_CANCELLED)
			continue;
		rj->rc = w->outcome == ANES_EVW_CLOSED ? EVENT_CLOSED_RC : EVENT_SHUTDOWN_RC;
		rj->n_done = 0;
		rj->elapsed_ns = 0;
		snprintf(rj->err, sizeof(rj->err), "wait: event %u closed at %llu, below %llu", w->id,
		         (unsigned long long)w->final, (unsigned long long)w->value);
		return;
	}

	/* A client that is gone gets no more runs started: the ones still
	 * queued when its connection closed are dropped (nobody waits for
	 * them, and they would keep the workers from the other clients). */
	if (anes_conn_write_closed(rj->conn)) {
		rj->rc = -ECANCELED;
		rj->n_done = 0;
		rj->elapsed_ns = 0;
		rj->err[0] = '\0';
		return;
	}
	rj->rc = run_steps(rj->backend, rj->steps, rj->n_steps, &rj->n_done, &rj->elapsed_ns,
	                   rj->err, sizeof(rj->err));
	/* Counted before any client can see the reply (run_reply). */
	atomic_fetch_add(&rj->conn->srv->stats.runs, rj->n_done);
	atomic_fetch_add(&rj->tenant->runs, rj->n_done);
	/* Its signals, on success only, before its reply (run_reply) goes. */
	for (uint8_t i = 0; i < rj->n_signal && rj->rc == 0; i++)
		anes_event_raise(rj->sig[i], rj->sig_value[i]);
}

/* A reply packed on the stack: a run's is a few dozen bytes, so the worker
 * allocates nothing unless the socket does not take it at once. */
typedef struct small_frame {
	char data[ANES_FRAME_HEADER_SIZE + 112];
	size_t len;
	bool full;
} small_frame;

static int small_frame_write(void *data, const char *buf, size_t len)
{
	small_frame *f = data;
	if (f->full || len > sizeof(f->data) - f->len) {
		f->full = true;
		return -1;
	}
	memcpy(f->data + f->len, buf, len);
	f->len += len;
	return 0;
}

/* On the worker, after run_work: a successful run's reply goes to the client
 * from here when nothing is queued before it, without waiting for the loop
 * (docs/performance.md).  Errors are answered by the loop.  Returns the
 * connection's send_mu locked when something was sent (worker.c). */
static pthread_mutex_t *run_reply(anes_job *j)
{
	run_job *rj = ANES_CONTAINER_OF(j, run_job, job);
	anes_conn *c = rj->conn;

	if (rj->rc != 0)
		return NULL;
	small_frame f = { .len = ANES_FRAME_HEADER_SIZE };
	msgpack_packer pk;
	msgpack_packer_init(&pk, &f, small_frame_write);
	pack_reply(&pk, rj->msgid, rj->chain, rj->n_steps, rj->elapsed_ns, NULL);
	if (f.full)
		return NULL;   /* run_done packs it */
	anes_frame_header_write((uint8_t *)f.data, (uint32_t)(f.len - ANES_FRAME_HEADER_SIZE), 0);

	pthread_mutex_lock(&c->send_mu);
	/* Counted before the client can see the reply and ask something. */
	atomic_fetch_add(&c->direct_unseen, 1);
	size_t n = anes_conn_try_send_locked(c, f.data, f.len);
	if (n == 0) {
		atomic_fetch_sub(&c->direct_unseen, 1);
		pthread_mutex_unlock(&c->send_mu);
		return NULL;   /* run_done packs and queues it */
	}
	if (n == f.len) {
		rj->replied = true;
	} else {
		/* The rest must follow before anything else (wblocked): keep it. */
		rj->reply = malloc(f.len);
		if (rj->reply) {
			memcpy(rj->reply, f.data, f.len);
			rj->reply_len = f.len;
		}
		rj->reply_sent = n;   /* without the copy, run_done fails the connection */
	}
	return &c->send_mu;
}

static void run_job_free(anes_server *srv, run_job *rj);

/* Answer, release what the run held, free it, and look at the connection's
 * buffered requests again (it may have stopped reading at max_inflight). */
static void run_done(anes_job *j, bool cancelled)
{
	run_job *rj = ANES_CONTAINER_OF(j, run_job, job);
	anes_conn *c = rj->conn;

	c->inflight--;
	if (rj->replied || rj->reply_sent)
		anes_conn_direct_seen(c);
	if (rj->on_parked) {
		if (rj->parked.prev)
			rj->parked.prev->next = rj->parked.next;
		else if (c->parked == &rj->parked)
			c->parked = rj->parked.next;
		if (rj->parked.next)
			rj->parked.next->prev = rj->parked.prev;
	}
	if (cancelled || rj->rc == EVENT_SHUTDOWN_RC) {
		anes_conn_reply_error(c, rj->msgid, ANES_WERR_SHUTTING_DOWN,
		                      "the daemon is shutting down; the run was not done");
	} else if (rj->replied) {
		/* sent by the worker */
	} else if (rj->reply_sent && !rj->reply) {
		anes_conn_fail(c, "out of memory keeping a response");   /* half sent */
	} else if (rj->reply_sent) {
		anes_conn_queue_rest(c, rj->reply, rj->reply_len, rj->reply_sent);
	} else {
		run_err e = { 0 };
		if (rj->rc == EVENT_CLOSED_RC)
			set_err(&e, false, false, 0, ANES_WERR_EVENT_CLOSED, "%s", rj->err);
		else if (rj->rc != 0)
			run_fail(&e, rj->chain, rj->n_done ? rj->n_done - 1 : 0, rj->rc, rj->err);
		send_reply(c, rj->msgid, rj->chain, rj->n_steps, rj->elapsed_ns, &e);
	}
	/* Its events: it is no longer a pending signaller (they may close). */
	for (uint8_t i = 0; i < rj->n_signal; i++) {
		anes_event_signaler_done(rj->sig[i]);
		anes_event_unref(rj->sig[i]);
	}
	for (uint8_t i = 0; i < rj->n_wait; i++)
		anes_event_unref(rj->evw[i].w.ev);
	for (uint32_t s = 0; s < rj->n_steps; s++) {
		run_step *st = &rj->steps[s];
		for (uint32_t i = 0; i < st->n_in + st->n_out; i++)
			anes_surface_unref(st->surf[i]);
		anes_centry_unpin(st->entry);
	}
	/* The next run or reset of each state may go (and is submitted). */
	anes_state_release_claims(rj->claims, rj->n_claims);
	for (uint32_t i = 0; i < rj->n_claims; i++)
		anes_state_unref(rj->claims[i].st);
	anes_server *srv = c->srv;
	anes_conn_kick(c);
	anes_tenant_job_end(rj->tenant);
	anes_tenant_unref(rj->tenant);
	anes_conn_unref(c);
	run_job_free(srv, rj);
}

/* Single-step run jobs are all allocated at this size and kept for reuse
 * (loop only), so a steady stream of runs through the loop allocates no
 * job.  Chains get their own size. */
#define SMALL_JOB_BYTES (sizeof(run_job) + run_steps_bytes(1, 2 * ANES_RUN_WIRE_MAX_IO) + \
                         sizeof(anes_state_claim))
#define JOB_CACHE_MAX 64

static run_job *run_job_alloc(anes_server *srv, size_t bytes)
{
	if (bytes > SMALL_JOB_BYTES)
		return calloc(1, bytes);
	run_job *rj = srv->job_cache;
	if (!rj)
		return calloc(1, SMALL_JOB_BYTES);
	srv->job_cache = rj->job.next;
	srv->n_job_cache--;
	memset(rj, 0, sizeof(*rj));
	return rj;
}

static void run_job_free(anes_server *srv, run_job *rj)
{
	if (rj->n_steps != 1 || srv->n_job_cache >= JOB_CACHE_MAX) {
		free(rj);
		return;
	}
	rj->job.next = srv->job_cache;
	srv->job_cache = rj;
	srv->n_job_cache++;
}

void anes_run_jobs_free(anes_server *srv)
{
	while (srv->job_cache) {
		run_job *rj = srv->job_cache;
		srv->job_cache = rj->job.next;
		free(rj);
	}
	srv->n_job_cache = 0;
	free(srv->run_wire);
	srv->run_wire = NULL;
}

/* Any thread: one of rj's waits ended (met, closed, shutdown, cancelled). */
static void run_ev_wake(anes_evwaiter *w)
{
	run_evwait *x = ANES_CONTAINER_OF(w, run_evwait, w);
	run_job *rj = x->rj;
	if (atomic_fetch_sub(&rj->ev_left, 1) == 1)
		atomic_fetch_sub(&rj->conn->srv->ev_parked, 1);
	anes_wait_unblock(&rj->wait);
}

/* Loop, its connection closes: its pending waits end (it is then not run:
 * run_work sees the connection gone). */
static void run_cancel(anes_parked *p)
{
	run_job *rj = ANES_CONTAINER_OF(p, run_job, parked);
	rj->on_parked = false;   /* off the list (anes_events_conn_gone) */
	for (uint8_t i = 0; i < rj->n_wait; i++)
		if (anes_event_cancel(&rj->evw[i].w))
			run_ev_wake(&rj->evw[i].w);
}

/* Any thread: whether a run made ready by an event is short (the lane
 * rule: its programs' recent runs took at most --lane-run-max-us in all),
 * and may run on the thread that raised the event. */
static bool run_can_inline(anes_job *j)
{
	run_job *rj = ANES_CONTAINER_OF(j, run_job, job);
	anes_server *srv = rj->conn->srv;
	uint64_t expect_ns = 0, max_ns = (uint64_t)srv->cfg.lane_run_max_us * 1000u;
	anes_backend *b = rj->backend;
	for (uint32_t i = 0; i < rj->n_steps; i++) {
		const anes_centry *en = rj->steps[i].entry;
		uint64_t ns = atomic_load_explicit(&en->run_ns, memory_order_relaxed);
		if (ns == 0 || (expect_ns += ns) > max_ns || !en->lanes ||
		    (b->ops->program_ready && !b->ops->program_ready(b, en->prog)))
			return false;
	}
	/* It runs here now (anes_pool_run_ready). */
	atomic_fetch_add_explicit(&srv->stats.event_runs, 1, memory_order_relaxed);
	return true;
}

/* Loop: w (well formed, after hello) becomes a job, or its error reply. */
static void submit(anes_conn *c, const anes_run_wire *w)
{
	anes_server *srv = c->srv;
	size_t steps_bytes = run_steps_bytes(w->n_steps, w->n_ids);
	size_t bytes = sizeof(run_job) + steps_bytes + w->n_steps * sizeof(anes_state_claim);
	run_job *rj = run_job_alloc(srv, bytes);
	if (!rj) {
		anes_conn_reply_error(c, w->msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return;
	}
	rj->steps = (run_step *)(void *)(rj + 1);
	rj->claims = (anes_state_claim *)(void *)((char *)rj->steps + steps_bytes);
	rj->n_steps = w->n_steps;   /* the size class, for run_job_free */
	run_err e = { 0 };
	run_events ev;
	if (!resolve(c, w, rj->steps, &ev, &e)) {
		send_reply(c, w->msgid, w->chain, 0, 0, &e);
		run_job_free(srv, rj);
		return;
	}
	/* The job holds what it uses until its done(): the client may release
	 * them meanwhile. */
	uint64_t cost_ns = 0;
	for (uint32_t i = 0; i < w->n_steps; i++) {
		run_step *st = &rj->steps[i];
		for (uint32_t k = 0; k < st->n_in + st->n_out; k++)
			anes_surface_ref(st->surf[k]);
		anes_centry_pin(st->entry);
		cost_ns += atomic_load_explicit(&st->entry->run_ns, memory_order_relaxed);
	}
	/* Its client's queue, and its estimated device time (jobsched.h). */
	rj->job.task.si = (anes_sitem){ .flow = &c->tenant->sflow, .cost_ns = cost_ns };
	rj->job.work = run_work;
	rj->job.done = run_done;
	rj->job.reply = run_reply;
	rj->conn = anes_conn_ref(c);
	rj->tenant = anes_tenant_ref(c->tenant);
	anes_tenant_job_begin(c->tenant);
	rj->backend = srv->backend;
	rj->msgid = w->msgid;
	rj->chain = w->chain;
	c->inflight++;
	/* Its states, each claimed once, in the order the steps name them.
	 * blocked starts at 1, submit()'s own hold: event waits may be met on
	 * other threads while they are registered. */
	rj->wait = (anes_state_wait){ .job = &rj->job, .pool = srv->pool };
	atomic_init(&rj->wait.blocked, 1);
	for (uint32_t i = 0; i < w->n_steps; i++) {
		anes_state *st = rj->steps[i].state;
		bool seen = !st;
		for (uint32_t k = 0; k < rj->n_claims && !seen; k++)
			seen = rj->claims[k].st == st;
		if (!seen)
			anes_state_enqueue(anes_state_ref(st), &rj->claims[rj->n_claims++], &rj->wait);
	}
	/* Its events: signalled ones cannot close while it is pending; waits
	 * not met yet park it (docs/protocol.md, "Events in runs"). */
	rj->n_signal = ev.n_signal;
	for (uint8_t i = 0; i < ev.n_signal; i++) {
		rj->sig[i] = anes_event_ref(ev.signal[i]->ev);
		rj->sig_value[i] = ev.signal_value[i];
		anes_event_signaler_add(rj->sig[i]);
	}
	rj->job.can_inline = run_can_inline;
	rj->n_wait = ev.n_wait;
	if (ev.n_wait > 0) {
		rj->parked = (anes_parked){ .next = c->parked, .cancel = run_cancel };
		if (c->parked)
			c->parked->prev = &rj->parked;
		c->parked = &rj->parked;
		rj->on_parked = true;
		atomic_init(&rj->ev_left, 1);
		atomic_fetch_add(&srv->ev_parked, 1);
	}
	for (uint8_t i = 0; i < ev.n_wait; i++) {
		run_evwait *x = &rj->evw[i];
		x->rj = rj;
		x->w = (anes_evwaiter){ .ev = anes_event_ref(ev.wait[i]->ev), .id = ev.wait[i]->id,
		                        .value = ev.wait_value[i], .wake = run_ev_wake };
		atomic_fetch_add(&rj->wait.blocked, 1);
		atomic_fetch_add(&rj->ev_left, 1);
		if (anes_event_wait_add(&x->w) != ANES_EVW_PENDING)
			run_ev_wake(&x->w);   /* met (closed below was refused by resolve) */
	}
	if (ev.n_wait > 0 && atomic_fetch_sub(&rj->ev_left, 1) == 1)
		atomic_fetch_sub(&srv->ev_parked, 1);
	anes_wait_unblock(&rj->wait);
}

bool anes_run_request(anes_conn *c, const void *payload, uint32_t len, unsigned nfds)
{
	anes_server *srv = c->srv;
	if (!srv->run_wire && !(srv->run_wire = malloc(sizeof(*srv->run_wire)))) {
		anes_conn_fail(c, "out of memory decoding a message");
		return true;
	}
	anes_run_wire *w = srv->run_wire;
	int r = anes_run_wire_parse(payload, len, w, &srv->zone);
	if (r == 0)
		return false;
	if (r == -ENOMEM) {
		anes_conn_fail(c, "out of memory decoding a message");
		return true;
	}
	if (r < 0) {
		anes_conn_protocol_error(c, "malformed message");
		return true;
	}
	if (!anes_request_admit(c, w->msgid, false))
		return true;
	if (nfds > 0) {
		anes_conn_reply_error(c, w->msgid, ANES_WERR_BAD_FD, "run takes no file descriptor");
		return true;
	}
	submit(c, w);
	return true;
}

/* ---- runs on a lane ---------------------------------------------------------------- */

/* Lane: make ctx->buf hold need bytes. */
static bool lane_buf(anes_wctx *ctx, size_t need)
{
	if (need <= ctx->buf_cap)
		return true;
	void *nb = realloc(ctx->buf, need);
	if (!nb)
		return false;
	ctx->buf = nb;
	ctx->buf_cap = need;
	return true;
}

int anes_lane_request(anes_conn *c, const void *payload, uint32_t len, anes_wctx *ctx)
{
	if (!c->hello_done)
		return 0;
	if (!ctx->wire && !(ctx->wire = malloc(sizeof(*ctx->wire))))
		return 0;   /* the loop has its own workspace */
	anes_run_wire *w = ctx->wire;
	/* Anything but a well-formed run (another method, a malformed one, no
	 * memory to check it) is the loop's to answer. */
	if (anes_run_wire_parse(payload, len, w, &ctx->zone) != 1)
		return 0;

	run_err e = { 0 };
	run_events ev;
	uint32_t n_done = 0;
	uint64_t elapsed_ns = 0;
	if (!lane_buf(ctx, run_steps_bytes(w->n_steps, w->n_ids))) {
		set_err(&e, false, false, 0, ANES_WERR_NO_MEMORY, "out of memory");
	} else if (resolve(c, w, ctx->buf, &ev, &e)) {
		run_step *steps = ctx->buf;
		/* A run that would wait is parked by the loop. */
		for (uint8_t i = 0; i < ev.n_wait; i++)
			if (anes_event_value(ev.wait[i]->ev) < ev.wait_value[i])
				return 0;
		/* Only what is known to be short: anything else would hold up
		 * the connection's next requests, and goes to the loop. */
		uint64_t expect_ns = 0, max_ns = (uint64_t)c->srv->cfg.lane_run_max_us * 1000u;
		anes_backend *b = c->srv->backend;
		for (uint32_t i = 0; i < w->n_steps; i++) {
			uint64_t ns = atomic_load_explicit(&steps[i].entry->run_ns, memory_order_relaxed);
			if (ns == 0 || (expect_ns += ns) > max_ns ||
			    !steps[i].entry->lanes ||
			    (steps[i].state && anes_state_claimed(steps[i].state)) ||
			    (b->ops->program_ready && !b->ops->program_ready(b, steps[i].entry->prog)))
				return 0;   /* (nor one that would wait for a device worker's restart,
				             * nor one whose state a job holds or waits for) */
		}
		char err[ANES_ERRMSG_MAX];
		int rc = run_steps(c->srv->backend, steps, w->n_steps, &n_done, &elapsed_ns, err,
		                   sizeof(err));
		/* Counted before the client can see the reply and ask status. */
		atomic_fetch_add(&c->srv->stats.lane_runs, n_done);
		atomic_fetch_add(&c->srv->stats.runs, n_done);
		atomic_fetch_add(&c->tenant->runs, n_done);
		if (rc != 0)
			run_fail(&e, w->chain, n_done - 1, rc, err);
		/* Its signals, on success only, before its reply: this
		 * connection owns them, and its table holds them while the lane
		 * does.  What they make ready runs after the reply
		 * (lanes.c). */
		for (uint8_t i = 0; i < ev.n_signal && rc == 0; i++)
			anes_event_raise(ev.signal[i]->ev, ev.signal_value[i]);
	}
	anes_frame *f = &ctx->reply;
	uint32_t max_frame = c->srv->lim.max_frame;
	anes_frame_reset(f);
	pack_reply(&f->pk, w->msgid, w->chain, w->n_steps, elapsed_ns, &e);
	if (anes_frame_seal(f, 0, max_frame) < 0) {
		anes_frame_reset(f);
		anes_pack_error(&f->pk, w->msgid, ANES_WERR_NO_MEMORY, "out of memory");
		if (anes_frame_seal(f, 0, max_frame) < 0)
			return -ENOMEM;
	}
	return 1;
}
