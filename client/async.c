/* SPDX-License-Identifier: MIT */
/*
 * libaneshare: chained runs and the asynchronous API.
 *
 * An async call is an entry of the pending table (conn.c) with a callback:
 * responses fill it in whenever they are read -- by aneshare_dispatch or by
 * a blocking call reading for its own response -- and aneshare_dispatch
 * calls the callbacks of the completed ones.  Requests are written without
 * blocking: what the socket does not take stays queued in the connection's
 * anes_io until aneshare_dispatch finds the socket writable.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- checking and packing ------------------------------------------------------ */

/* pre prefixes the messages: "" for a single run, "step N: " in a chain. */
static int check_surfaces(aneshare_conn *c, const char *pre, aneshare_surface *const *s, size_t n)
{
	if (n && !s)
		return anesc_fail(c, -EINVAL, "%sno surface array", pre);
	if (n > ANESC_MAX_IO)
		return anesc_fail(c, -EINVAL, "%stoo many surfaces", pre);
	for (size_t i = 0; i < n; i++)
		if (!s[i] || s[i]->conn != c)
			return anesc_fail(c, -EINVAL,
			                  "%ssurface %zu is NULL or from another connection", pre, i);
	return 0;
}

int anesc_check_step(aneshare_conn *c, const char *pre, const aneshare_step *st)
{
	if (st->function >= st->program->n_functions)
		return anesc_fail(c, -EINVAL, "%sthe program has no function %u", pre,
		                  st->function);
	int r = check_surfaces(c, pre, st->inputs, st->n_inputs);
	if (r == 0)
		r = check_surfaces(c, pre, st->outputs, st->n_outputs);
	/* The daemon refuses it too; a daemon restored after a reconnect may
	 * not know that a surface imported by ID is read-only (aneshare.h). */
	for (size_t i = 0; r == 0 && i < st->n_outputs; i++)
		if (st->outputs[i]->read_only)
			r = anesc_fail(c, -ANESHARE_EINVALID_PARAMS,
			               "%soutput %zu is a read-only surface", pre, i);
	return r;
}

/* states: NULL, or one state (or NULL) per step. */
static int check_steps(aneshare_conn *c, const aneshare_step *steps, aneshare_state *const *states,
                       size_t n, bool chain)
{
	if (!steps || n == 0 || n > ANESHARE_MAX_STEPS)
		return anesc_fail(c, -EINVAL, "a chain has 1 to %d steps", ANESHARE_MAX_STEPS);
	for (size_t i = 0; i < n; i++) {
		const aneshare_step *st = &steps[i];
		if (!st->program || st->program->conn != c)
			return anesc_fail(c, -EINVAL, "step %zu: program is NULL or from another connection", i);
		char pre[32] = "";   /* a single run's messages name no step */
		if (chain)
			snprintf(pre, sizeof pre, "step %zu: ", i);
		int r = anesc_check_step(c, pre, st);
		if (r == 0 && states && states[i])
			r = anesc_state_check(c, pre, states[i]);
		if (r < 0)
			return r;
	}
	return 0;
}

static int pack_surfaces(aneshare_conn *c, msgpack_packer *pk, aneshare_surface *const *s,
                         size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i]->lost)
			return anesc_fail(c, -ANESHARE_ENO_SUCH_SURFACE,
			                  "a surface could not be imported again after the daemon "
			                  "restarted: %s", aneshare_strerror(s[i]->lost));
	msgpack_pack_array(pk, n);
	for (size_t i = 0; i < n; i++)
		msgpack_pack_uint32(pk, s[i]->id);
	return 0;
}

int anesc_pack_program_fn(aneshare_conn *c, msgpack_packer *pk, const aneshare_program *p,
                          uint32_t fn)
{
	if (p->lost)
		return anesc_fail(c, -ANESHARE_ENO_SUCH_PROGRAM,
		                  "the program could not be compiled again after the daemon "
		                  "restarted: %s", aneshare_strerror(p->lost));
	anes_pack_str(pk, "program");
	msgpack_pack_uint32(pk, p->id);
	anes_pack_str(pk, "function");
	anes_pack_str(pk, p->functions[fn].name);
	return 0;
}

/* The four (with a state five: step_params) key/value pairs of one run (or
 * one step).  Packed at send time: IDs change when the library reconnects. */
int anesc_pack_step(aneshare_conn *c, msgpack_packer *pk, const aneshare_step *st,
                    const aneshare_state *state)
{
	int r = anesc_pack_program_fn(c, pk, st->program, st->function);
	if (r < 0)
		return r;
	anes_pack_str(pk, "inputs");
	r = pack_surfaces(c, pk, st->inputs, st->n_inputs);
	if (r == 0) {
		anes_pack_str(pk, "outputs");
		r = pack_surfaces(c, pk, st->outputs, st->n_outputs);
	}
	if (r == 0 && state) {
		r = anesc_state_check(c, "", state);   /* made again since it was checked? */
		if (r == 0) {
			anes_pack_str(pk, "state");
			msgpack_pack_uint32(pk, state->id);
		}
	}
	return r;
}

/* What pack_run packs. */
typedef struct run_req {
	const aneshare_step *steps;
	aneshare_state *const *states;   /* NULL, or one (or NULL) per step */
	size_t n;
	bool chain;
	const aneshare_run_opts *o;      /* NULL, or its wait and signal lists */
} run_req;

static const aneshare_state *step_state(const run_req *rr, size_t i)
{
	return rr->states ? rr->states[i] : NULL;
}

/* A single run is { program, function, inputs, outputs }; a chain is
 * { steps: [ {...}, ... ] } (docs/protocol.md, "run"). */
static int pack_run(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	const run_req *rr = ud;
	if (!rr->chain) {
		int r = anesc_pack_step(c, pk, &rr->steps[0], step_state(rr, 0));
		return r < 0 ? r : anesc_pack_events(c, pk, rr->o);
	}
	anes_pack_str(pk, "steps");
	msgpack_pack_array(pk, rr->n);
	for (size_t i = 0; i < rr->n; i++) {
		msgpack_pack_map(pk, step_state(rr, i) ? 5 : 4);
		int r = anesc_pack_step(c, pk, &rr->steps[i], step_state(rr, i));
		if (r < 0)
			return r;
	}
	return anesc_pack_events(c, pk, rr->o);   /* a chain's waits and signals: the whole chain's */
}

/* ---- submitting -------------------------------------------------------------------- */

/* Send a run or chain through the one reconnect loop (anesc_send_request).
 * With cb, as an async call (never blocks on the socket); without, as a
 * ticket (*ret_msgid) to wait for.  Runs are not idempotent: only a request
 * the daemon cannot have received is sent again after reconnecting (see
 * aneshare.h). */
int anesc_submit(aneshare_conn *c, const aneshare_step *steps, aneshare_state *const *states,
                 size_t n, bool chain, const aneshare_run_opts *o, aneshare_done_fn cb, void *ud,
                 uint32_t *ret_msgid)
{
	anesc_retry rt = { 0 };
	run_req rr = { steps, states, n, chain, o };
	uint32_t msgid = 0;
	uint32_t n_params = (chain ? 1 : step_state(&rr, 0) ? 5 : 4) + anesc_events_params(o);
	int r = anesc_send_request(c, &(anesc_req){ .method = "run", .n_params = n_params,
	                                            .pack = pack_run, .pack_ud = &rr, .fd = -1,
	                                            .flags = ANESC_PENDING, .cb = cb, .cb_ud = ud },
	                           &rt, &msgid);
	if (r == 0 && ret_msgid)
		*ret_msgid = msgid;
	return r;
}

/* ---- the entry points ---------------------------------------------------------------- */

static const aneshare_run_opts no_opts;

/* The one path of every run and chain: check everything the library can
 * (nothing is sent on a failure), then submit as a ticket (*ret_ticket) or
 * an async call (cb).  A single run is steps[0] with o's function and
 * state. */
static int run_path(aneshare_conn *c, const aneshare_step *steps, aneshare_state *const *states,
                    size_t n, bool chain, const aneshare_run_opts *o, aneshare_done_fn cb, void *ud,
                    uint32_t *ret_ticket)
{
	int r = check_steps(c, steps, states, n, chain);
	if (r == 0)
		r = anesc_check_events(c, o);
	if (r < 0)
		return r;
	return anesc_submit(c, steps, states, n, chain, o, cb, ud, ret_ticket);
}

/* A single run: p's step with o's function (o NULL: the defaults). */
static int run_one(aneshare_program *p, aneshare_surface *const *inputs, size_t n_inputs,
                   aneshare_surface *const *outputs, size_t n_outputs, const aneshare_run_opts *o,
                   aneshare_done_fn cb, void *ud, uint32_t *ret_ticket)
{
	if (!o)
		o = &no_opts;
	aneshare_step st = { p, o->function, inputs, n_inputs, outputs, n_outputs };
	aneshare_state *state = o->state;
	return run_path(p->conn, &st, state ? &state : NULL, 1, false, o, cb, ud, ret_ticket);
}

/* Wait for a blocking call's ticket; a chain's failed step is recorded. */
static int run_wait(aneshare_conn *c, uint32_t ticket, bool chain)
{
	int failed = -1;
	int r = anesc_pending_wait(c, ticket, &failed);
	if (r < 0 && chain)
		c->last_failed_step = failed;
	return r;
}

ANESHARE_API int aneshare_run_ex(aneshare_program *p,
                                 aneshare_surface *const *inputs, size_t n_inputs,
                                 aneshare_surface *const *outputs, size_t n_outputs,
                                 const aneshare_run_opts *opts)
{
	if (!p)
		return -EINVAL;
	uint32_t ticket = 0;   /* set by run_one on success (gcc -O3 cannot tell) */
	int r = run_one(p, inputs, n_inputs, outputs, n_outputs, opts, NULL, NULL, &ticket);
	return r < 0 ? r : run_wait(p->conn, ticket, false);
}

ANESHARE_API int aneshare_run_submit_ex(aneshare_program *p,
                                        aneshare_surface *const *inputs, size_t n_inputs,
                                        aneshare_surface *const *outputs, size_t n_outputs,
                                        const aneshare_run_opts *opts, uint32_t *ret_ticket)
{
	if (!p || !ret_ticket)
		return -EINVAL;
	return run_one(p, inputs, n_inputs, outputs, n_outputs, opts, NULL, NULL, ret_ticket);
}

ANESHARE_API int aneshare_run_async_ex(aneshare_program *p,
                                       aneshare_surface *const *inputs, size_t n_inputs,
                                       aneshare_surface *const *outputs, size_t n_outputs,
                                       const aneshare_run_opts *opts,
                                       aneshare_done_fn cb, void *userdata)
{
	if (!p || !cb)
		return -EINVAL;
	return run_one(p, inputs, n_inputs, outputs, n_outputs, opts, cb, userdata, NULL);
}

ANESHARE_API int aneshare_run_chain_ex(aneshare_conn *c, const aneshare_step *steps,
                                       aneshare_state *const *states, size_t n_steps,
                                       const aneshare_run_opts *opts)
{
	if (!c)
		return -EINVAL;
	c->last_failed_step = -1;
	if (opts && (opts->function || opts->state))
		return anesc_fail(c, -EINVAL, "a chain's steps name their functions and states, not its options");
	uint32_t ticket = 0;
	int r = run_path(c, steps, states, n_steps, true, opts, NULL, NULL, &ticket);
	return r < 0 ? r : run_wait(c, ticket, true);
}

ANESHARE_API int aneshare_run(aneshare_program *p, uint32_t fn,
                              aneshare_surface *const *inputs, size_t n_inputs,
                              aneshare_surface *const *outputs, size_t n_outputs)
{
	return aneshare_run_ex(p, inputs, n_inputs, outputs, n_outputs,
	                       &(aneshare_run_opts){ .function = fn });
}

ANESHARE_API int aneshare_run_submit(aneshare_program *p, uint32_t fn,
                                     aneshare_surface *const *inputs, size_t n_inputs,
                                     aneshare_surface *const *outputs, size_t n_outputs,
                                     uint32_t *ret_ticket)
{
	return aneshare_run_submit_ex(p, inputs, n_inputs, outputs, n_outputs,
	                              &(aneshare_run_opts){ .function = fn }, ret_ticket);
}

ANESHARE_API int aneshare_run_async(aneshare_program *p, uint32_t fn,
                                    aneshare_surface *const *inputs, size_t n_inputs,
                                    aneshare_surface *const *outputs, size_t n_outputs,
                                    aneshare_done_fn cb, void *userdata)
{
	return aneshare_run_async_ex(p, inputs, n_inputs, outputs, n_outputs,
	                             &(aneshare_run_opts){ .function = fn }, cb, userdata);
}

/* The state calls: a state is required (-EINVAL for NULL). */
ANESHARE_API int aneshare_run_state(aneshare_program *p, uint32_t fn, aneshare_state *state,
                                    aneshare_surface *const *inputs, size_t n_inputs,
                                    aneshare_surface *const *outputs, size_t n_outputs)
{
	if (!state)
		return -EINVAL;
	return aneshare_run_ex(p, inputs, n_inputs, outputs, n_outputs,
	                       &(aneshare_run_opts){ .function = fn, .state = state });
}

ANESHARE_API int aneshare_run_state_submit(aneshare_program *p, uint32_t fn, aneshare_state *state,
                                           aneshare_surface *const *inputs, size_t n_inputs,
                                           aneshare_surface *const *outputs, size_t n_outputs,
                                           uint32_t *ret_ticket)
{
	if (!state)
		return -EINVAL;
	return aneshare_run_submit_ex(p, inputs, n_inputs, outputs, n_outputs,
	                              &(aneshare_run_opts){ .function = fn, .state = state }, ret_ticket);
}

ANESHARE_API int aneshare_run_state_async(aneshare_program *p, uint32_t fn, aneshare_state *state,
                                          aneshare_surface *const *inputs, size_t n_inputs,
                                          aneshare_surface *const *outputs, size_t n_outputs,
                                          aneshare_done_fn cb, void *userdata)
{
	if (!state)
		return -EINVAL;
	return aneshare_run_async_ex(p, inputs, n_inputs, outputs, n_outputs,
	                             &(aneshare_run_opts){ .function = fn, .state = state }, cb, userdata);
}

ANESHARE_API int aneshare_run_chain(aneshare_conn *c, const aneshare_step *steps, size_t n_steps)
{
	return aneshare_run_chain_ex(c, steps, NULL, n_steps, NULL);
}

ANESHARE_API int aneshare_run_chain_states(aneshare_conn *c, const aneshare_step *steps,
                                           aneshare_state *const *states, size_t n_steps)
{
	return aneshare_run_chain_ex(c, steps, states, n_steps, NULL);
}

ANESHARE_API int aneshare_run_chain_async(aneshare_conn *c, const aneshare_step *steps,
                                          size_t n_steps, aneshare_done_fn cb, void *userdata)
{
	if (!c || !cb)
		return -EINVAL;
	return run_path(c, steps, NULL, n_steps, true, NULL, cb, userdata, NULL);
}

ANESHARE_API int aneshare_last_failed_step(const aneshare_conn *c)
{
	return c ? c->last_failed_step : -1;
}

ANESHARE_API uint64_t aneshare_last_run_us(const aneshare_conn *c)
{
	return c ? c->last_run_us : 0;
}

/* ---- the event loop side ----------------------------------------------------------- */

ANESHARE_API int aneshare_fd(const aneshare_conn *c)
{
	if (!c || c->dead || c->broken)
		return -1;
	return c->fd;
}

ANESHARE_API int aneshare_events(const aneshare_conn *c)
{
	if (aneshare_fd(c) < 0)
		return 0;
	return ANESHARE_EV_READ | (anes_io_want_write(&c->io) ? ANESHARE_EV_WRITE : 0);
}

ANESHARE_API size_t aneshare_async_outstanding(const aneshare_conn *c)
{
	return c ? c->n_async : 0;
}

/* Call the callbacks of completed async calls; the number called.  A
 * callback may change the table (new calls, blocking calls that drop
 * tickets), so each one's result is taken out before it is called, and the
 * scan goes on from the same slot (which now holds another entry) and
 * wraps until nothing completed is left. */
static int deliver(aneshare_conn *c)
{
	int n = 0;
	size_t i = 0;
	while (c->n_async_done > 0) {
		if (i >= c->n_pending) {
			i = 0;
			continue;
		}
		anesc_pending *p = &c->pending[i];
		if (!p->cb || !p->done) {
			i++;
			continue;
		}
		aneshare_done_fn cb = p->cb;
		void *ud = p->cb_ud;
		char *msg = p->msg;
		aneshare_result res = { .rc = p->rc, .failed_step = p->failed_step,
		                        .message = msg ? msg : "" };
		p->msg = NULL;
		anesc_pending_drop(c, p->msgid);
		cb(c, &res, ud);
		free(msg);
		if (n < INT32_MAX)
			n++;
	}
	return n;
}

ANESHARE_API int aneshare_dispatch(aneshare_conn *c)
{
	if (!c)
		return -EINVAL;
	int r = anesc_io_nowait(c);
	int n = deliver(c);
	if (r < 0)
		return anesc_fail(c, r, "%s", c->dead ? c->dead_msg : c->broken_msg);
	return n;
}

void anesc_async_cancel_all(aneshare_conn *c)
{
	for (size_t i = 0; i < c->n_pending; i++) {
		anesc_pending *p = &c->pending[i];
		if (p->cb && !p->done) {
			p->done = true;
			p->rc = -ECANCELED;
			p->msg = strdup("the connection was closed before the response arrived");
			c->n_outstanding--;
			c->n_async_done++;
		}
	}
	(void)deliver(c);
}
