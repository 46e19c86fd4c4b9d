/* SPDX-License-Identifier: MIT */
/*
 * The state ops of iOS 18 (coremltools ops/defs/iOS18/states.py, and the
 * coreml dialect's coreml_update_state that coremlc writes as write_state
 * then read_state):
 *
 *   T y = read_state(input = s)               a copy of the state
 *   write_state(input = s, data = x)          the state becomes x (no outputs)
 *   T y = coreml_update_state(state = s, value = x)   both: y is x
 *
 * s is a function input declared state<T> (T a tensor type); x is of type T.
 */
#include <errno.h>
#include <string.h>

#include "mil_internal.h"

static const anes_mil_argdef a_read[] = {
	{"input", ANES_MIL_ARG_REQ | ANES_MIL_ARG_STATE}, {NULL, 0},
};
static const anes_mil_argdef a_write[] = {
	{"input", ANES_MIL_ARG_REQ | ANES_MIL_ARG_STATE}, {"data", ANES_MIL_ARG_REQ}, {NULL, 0},
};
static const anes_mil_argdef a_update[] = {
	{"state", ANES_MIL_ARG_REQ | ANES_MIL_ARG_STATE}, {"value", ANES_MIL_ARG_REQ}, {NULL, 0},
};

static int same_type(anes_mil_check *c, const anes_mil_op *op, const anes_mil_value *s, const anes_mil_value *x)
{
	if (!anes_mil_type_equal(&s->type, &x->type)) {
		char a[96], b[96];
		return anes_mil_fail(c, op, -EINVAL, "the value is %s, the state '%s' holds %s",
		                     anes_mil_type_str(&x->type, a, sizeof a), s->name,
		                     anes_mil_type_str(&s->type, b, sizeof b));
	}
	return 0;
}

static int infer_read(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	(void)c;
	out[0] = anes_mil_op_value(fn, op, "input")->type;
	return 0;
}

static int infer_write(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	(void)out;
	if (op->n_outputs != 0)
		return anes_mil_fail(c, op, -EINVAL, "write_state has no outputs");
	return same_type(c, op, anes_mil_op_value(fn, op, "input"), anes_mil_op_value(fn, op, "data"));
}

static int infer_update(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *s = anes_mil_op_value(fn, op, "state"), *x = anes_mil_op_value(fn, op, "value");
	int rc = same_type(c, op, s, x);
	if (rc)
		return rc;
	out[0] = x->type;
	return 0;
}

static const anes_mil_opdef state_ops[] = {
	{"coreml_update_state", 1, a_update, infer_update},
	{"read_state", 1, a_read, infer_read},
	{"write_state", 0, a_write, infer_write},
};

const anes_mil_opdef *mil_states_find(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof state_ops / sizeof state_ops[0]; i++)
		if (strlen(state_ops[i].name) == len && memcmp(state_ops[i].name, name, len) == 0)
			return &state_ops[i];
	return NULL;
}
