/* SPDX-License-Identifier: MIT */
/*
 * anes_run_wire_parse, the daemon's one decoder of run requests, against
 * the general decoder (anes_msg_decode) and its accessors read the way the
 * daemon read a run before it had one decoder (check_run, parse_step):
 *   - it takes a payload (1) exactly when the decoder accepts it as a
 *     request for "run", refuses one as malformed (-EBADMSG) only when the
 *     decoder does, and leaves everything else to the decoder (0);
 *   - what it reads is what the accessors read: msgid, chain or not, the
 *     steps' programs, functions ("" included), surface IDs and states, and the
 *     first thing wrong with the params, in the daemon's order.
 * Shared by tests/test_wire.c and tests/fuzz/fuzz_frame.c.
 */
#ifndef ANES_RUN_WIRE_CHECK_H
#define ANES_RUN_WIRE_CHECK_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "anes_proto.h"

/* One step map as the accessors read it, against the reader's step. */
static const char *run_wire_step_agrees(const msgpack_object *item, const anes_run_wire *w,
                                        const anes_run_wire_step *ws, bool in_chain)
{
	uint8_t bad = ANES_RUN_OK;
	uint32_t bad_item = 0;
	uint32_t prog, flen;
	const char *fname = NULL;
	int r = anes_mp_u32(item, "program", &prog);
	if (r == -ENOENT)
		bad = ANES_RUN_PROGRAM_MISSING;
	else if (r < 0)
		bad = ANES_RUN_PROGRAM_TYPE;
	else if (prog != ws->program)
		return "program differs";
	r = anes_mp_str(item, "function", UINT32_MAX, &fname, &flen);
	if (r == -ENOENT) {
		if (ws->function)
			return "function: the reader names one, the decoder none";
	} else if (r < 0) {
		if (!bad)
			bad = ANES_RUN_FUNCTION_TYPE;
	} else if (!ws->function || flen != ws->function_len ||
	           (flen && memcmp(fname, ws->function, flen) != 0)) {
		return "function differs";
	}
	for (int io = 0; io < 2; io++) {
		const msgpack_object *ids;
		uint32_t n;
		uint32_t want_n = io ? ws->n_out : ws->n_in, at = io ? ws->out : ws->in;
		r = anes_mp_array(item, io ? "outputs" : "inputs", UINT32_MAX, &ids, &n);
		if (r < 0) {
			if (!bad)
				bad = r == -ENOENT ? (io ? ANES_RUN_OUTPUTS_MISSING : ANES_RUN_INPUTS_MISSING)
				                   : (io ? ANES_RUN_OUTPUTS_TYPE : ANES_RUN_INPUTS_TYPE);
			continue;
		}
		if (n != want_n)
			return "the number of surface IDs differs";
		bool all = true;
		for (uint32_t i = 0; i < n; i++) {
			uint32_t id;
			if (anes_mp_item_u32(&ids[i], &id) < 0) {
				if (!bad) {
					bad = io ? ANES_RUN_OUTPUTS_ITEM : ANES_RUN_INPUTS_ITEM;
					bad_item = i;
				}
				all = false;
			} else if (all && i < ANES_RUN_WIRE_MAX_IO &&
			           (at + i >= w->n_ids || id != w->ids[at + i])) {
				return "a surface ID differs";
			}
		}
	}
	uint32_t state;
	r = anes_mp_u32(item, "state", &state);
	if (r == -ENOENT) {
		if (ws->has_state)
			return "state: the reader names one, the decoder none";
	} else if (r < 0) {
		if (!bad)
			bad = ANES_RUN_STATE_TYPE;
	} else if (!ws->has_state || ws->state != state) {
		return "state differs";
	}
	if (!bad && in_chain && (anes_mp_get(item, "wait") || anes_mp_get(item, "signal")))
		bad = ANES_RUN_STEP_EVENTS;
	if (bad != ws->bad)
		return "what is wrong with the step differs";
	if ((bad == ANES_RUN_INPUTS_ITEM || bad == ANES_RUN_OUTPUTS_ITEM) && bad_item != ws->bad_item)
		return "the item that is not a surface ID differs";
	return NULL;
}

/* The run's "wait" and "signal" lists (read in the params' key order, as
 * the reader does) against the reader's. */
static const char *run_wire_events_agree(const msgpack_object *params, const anes_run_wire *w)
{
	uint8_t bad = ANES_RUN_EV_OK, n[2] = { 0, 0 };
	bool bad_sig = false;
	uint32_t bad_item = 0;
	anes_run_wire_ev v[2][ANES_RUN_MAX_EVENTS];
	for (uint32_t k = 0; k < params->via.map.size; k++) {
		const msgpack_object_kv *kv = &params->via.map.ptr[k];
		if (kv->key.type != MSGPACK_OBJECT_STR)
			continue;
		int sig = kv->key.via.str.size == 6 && !memcmp(kv->key.via.str.ptr, "signal", 6);
		if (!sig && !(kv->key.via.str.size == 4 && !memcmp(kv->key.via.str.ptr, "wait", 4)))
			continue;
		const msgpack_object *a = &kv->val;
		if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size > ANES_RUN_MAX_EVENTS) {
			if (!bad) {
				bad = ANES_RUN_EV_TYPE;
				bad_sig = sig;
				bad_item = 0;
			}
			continue;
		}
		for (uint32_t i = 0; i < a->via.array.size; i++) {
			const msgpack_object *e = &a->via.array.ptr[i];
			uint32_t ev;
			uint64_t val;
			uint8_t b = ANES_RUN_EV_OK;
			if (e->type != MSGPACK_OBJECT_MAP || anes_mp_u32(e, "event", &ev) < 0 ||
			    anes_mp_u64(e, "value", UINT64_MAX, &val) < 0) {
				b = ANES_RUN_EV_ENTRY;
			} else {
				for (uint8_t j = 0; j < n[sig]; j++)
					if (v[sig][j].event == ev)
						b = ANES_RUN_EV_DUP;
			}
			if (b) {
				if (!bad) {
					bad = b;
					bad_sig = sig;
					bad_item = i;
				}
				continue;
			}
			v[sig][n[sig]++] = (anes_run_wire_ev){ .event = ev, .value = val };
		}
	}
	if (bad != w->ev_bad || (bad && (bad_sig != w->ev_bad_signal || bad_item != w->ev_bad_item)))
		return "what is wrong with wait or signal differs";
	if (n[0] != w->n_wait || n[1] != w->n_signal)
		return "the number of wait or signal entries differs";
	for (uint8_t j = 0; j < n[0]; j++)
		if (v[0][j].event != w->wait[j].event || v[0][j].value != w->wait[j].value)
			return "a wait entry differs";
	for (uint8_t j = 0; j < n[1]; j++)
		if (v[1][j].event != w->signal[j].event || v[1][j].value != w->signal[j].value)
			return "a signal entry differs";
	return NULL;
}

/* 1: a run request both read the same; 0: not a run request, for both;
 * -1: they disagree (*why says how). */
static int run_wire_agrees(const void *buf, size_t len, const char **why)
{
	anes_run_wire *w = malloc(sizeof *w);
	msgpack_zone zone;
	int ret = -1;
	*why = "out of memory";
	if (!w || !msgpack_zone_init(&zone, 4096)) {
		free(w);
		return -1;
	}
	int rr = anes_run_wire_parse(buf, len, w, &zone);
	anes_msg m;
	int dr = anes_msg_decode(buf, len, &zone, &m);
	bool run = dr == 0 && m.type == ANES_MSG_REQUEST && anes_msg_method_is(&m, "run");
	*why = NULL;
	if (rr == -ENOMEM || dr == -ENOMEM) {
		ret = 0;   /* no verdict */
		goto out;
	}
	if (rr == 0 || rr == -EBADMSG) {
		*why = run ? "the reader refuses a run request the decoder accepts" : NULL;
		ret = *why ? -1 : 0;
		goto out;
	}
	if (rr != 1) {
		*why = "the reader returned something else";
		goto out;
	}
	if (!run) {
		*why = "the reader takes what the decoder does not accept as a run request";
		goto out;
	}
	if (m.msgid != w->msgid) {
		*why = "msgid differs";
		goto out;
	}
	const msgpack_object *items = m.params;
	uint32_t n = 1;
	if (anes_mp_get(m.params, "steps")) {
		int r = anes_mp_array(m.params, "steps", ANES_MAX_STEPS, &items, &n);
		uint8_t bad = ANES_RUN_OK;
		uint32_t at = 0;
		if (r < 0)
			bad = ANES_RUN_STEPS_TYPE;
		else if (n == 0)
			bad = ANES_RUN_STEPS_EMPTY;
		else if (anes_mp_get(m.params, "program"))
			bad = ANES_RUN_STEPS_AND_PROGRAM;
		else
			for (uint32_t i = 0; i < n && !bad; i++)
				if (items[i].type != MSGPACK_OBJECT_MAP) {
					bad = ANES_RUN_STEP_NOT_MAP;
					at = i;
				}
		if (!w->chain)
			*why = "a chain read as a single run";
		else if (bad != w->bad || (bad == ANES_RUN_STEP_NOT_MAP && at != w->bad_step))
			*why = "what is wrong with the request differs";
		else if (!bad && n != w->n_steps)
			*why = "step count differs";
		if (bad)
			n = 0;
	} else if (w->chain || w->bad || w->n_steps != 1) {
		*why = "a single run read as a chain";
	}
	bool in_chain = w->chain;
	for (uint32_t i = 0; !*why && i < n; i++)
		*why = run_wire_step_agrees(&items[i], w, &w->steps[i], in_chain);
	if (!*why)
		*why = run_wire_events_agree(m.params, w);
	ret = *why ? -1 : 1;
out:
	msgpack_zone_destroy(&zone);
	free(w);
	return ret;
}

#endif
