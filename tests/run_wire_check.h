/* SPDX-License-Identifier: MIT */
/*
 * anes_run_wire_parse against the general path (anes_msg_decode and the
 * accessors daemon/methods.c reads a run with: check_run, parse_step).
 * Whatever the one-pass reader accepts, the general path must accept too
 * and read as the same request, or the daemon would answer one request two
 * ways.  Shared by tests/test_wire.c and tests/fuzz/fuzz_frame.c.
 */
#ifndef ANES_RUN_WIRE_CHECK_H
#define ANES_RUN_WIRE_CHECK_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "anes_proto.h"

/* One step as the general path reads it, against the wire reading. */
static const char *run_wire_step_agrees(const msgpack_object *item, const anes_run_wire *w,
                                        const anes_run_wire_step *ws)
{
	uint32_t prog, flen, n;
	const char *fname = NULL;
	const msgpack_object *ids;
	if (item->type != MSGPACK_OBJECT_MAP)
		return "a step is not a map";
	if (anes_mp_u32(item, "program", &prog) < 0 || prog != ws->program)
		return "program differs";
	int r = anes_mp_str(item, "function", UINT32_MAX, &fname, &flen);
	if (r == -ENOENT || (r == 0 && flen == 0)) {
		if (ws->function)
			return "function: the wire names one, the decoder none";
	} else if (r < 0 || !ws->function || flen != ws->function_len ||
	           memcmp(fname, ws->function, flen) != 0) {
		return "function differs";
	}
	for (int io = 0; io < 2; io++) {
		uint32_t want_n = io ? ws->n_out : ws->n_in, at = io ? ws->out : ws->in;
		if (anes_mp_array(item, io ? "outputs" : "inputs", UINT32_MAX, &ids, &n) < 0 ||
		    n != want_n)
			return "the number of surface IDs differs";
		for (uint32_t i = 0; i < n; i++) {
			uint32_t id;
			if (anes_mp_item_u32(&ids[i], &id) < 0 || at + i >= w->n_ids ||
			    id != w->ids[at + i])
				return "a surface ID differs";
		}
	}
	return NULL;
}

/* 1: the one-pass reader accepts buf and the general path agrees; 0: the
 * reader leaves it to the decoder; -1: they disagree (*why says how). */
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
	if (anes_run_wire_parse(buf, len, w) != 1) {
		ret = 0;
		goto out;
	}
	anes_msg m;
	const msgpack_object *items = NULL;
	uint32_t n = 0;
	*why = NULL;
	if (anes_msg_decode(buf, len, &zone, &m) < 0 || m.type != ANES_MSG_REQUEST)
		*why = "the decoder rejects it";
	else if (!anes_msg_method_is(&m, "run") || m.msgid != w->msgid)
		*why = "method or msgid differs";
	else if (w->chain)
		*why = anes_mp_array(m.params, "steps", ANES_MAX_STEPS, &items, &n) < 0 ? "no steps"
		       : n != w->n_steps || n == 0                                    ? "step count differs"
		       : anes_mp_get(m.params, "program")                            ? "steps and program"
		                                                                      : NULL;
	else if (anes_mp_get(m.params, "steps"))
		*why = "a single run with steps";
	else {
		items = m.params;
		n = 1;
	}
	for (uint32_t i = 0; !*why && i < n; i++)
		*why = run_wire_step_agrees(&items[i], w, &w->steps[i]);
	ret = *why ? -1 : 1;
out:
	msgpack_zone_destroy(&zone);
	free(w);
	return ret;
}

#endif
