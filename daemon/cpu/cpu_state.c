/* SPDX-License-Identifier: MIT */
/* The state ops (daemon/mil/mil_states.c): copies between a state, which
 * lives in the caller's memory (run_states), and values. */
#include <string.h>

#include "cpu_internal.h"

static void *arg_ptr(const cpu_exec *ex, const anes_mil_op *op, const char *name)
{
	const anes_mil_arg *a = anes_mil_op_arg(op, name);
	return cpu_ptr(ex, a->vals[0]);
}

static int run_read_state(const cpu_step *st, const cpu_exec *ex)
{
	const anes_mil_op *op = st->op;
	memmove(cpu_ptr(ex, op->outputs[0]), arg_ptr(ex, op, "input"),
	        (size_t)ex->fn->values[op->outputs[0]].type.bytes);
	return 0;
}

static int run_write_state(const cpu_step *st, const cpu_exec *ex)
{
	const anes_mil_op *op = st->op;
	const anes_mil_arg *s = anes_mil_op_arg(op, "input");
	memmove(arg_ptr(ex, op, "input"), arg_ptr(ex, op, "data"), (size_t)ex->fn->values[s->vals[0]].type.bytes);
	return 0;
}

static int run_update_state(const cpu_step *st, const cpu_exec *ex)
{
	const anes_mil_op *op = st->op;
	size_t n = (size_t)ex->fn->values[op->outputs[0]].type.bytes;
	const void *x = arg_ptr(ex, op, "value");
	memmove(arg_ptr(ex, op, "state"), x, n);
	memmove(cpu_ptr(ex, op->outputs[0]), x, n);
	return 0;
}

const cpu_opimpl cpu_state_impls[] = {
	{"read_state", NULL, run_read_state},
	{"write_state", NULL, run_write_state},
	{"coreml_update_state", NULL, run_update_state},
	{NULL, NULL, NULL},
};
