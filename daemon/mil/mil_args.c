/* SPDX-License-Identifier: MIT */
/*
 * The argument checks that every part of the op table uses (mil_ops.c,
 * mil_ops_ext.c, mil_constexpr.c): one wording for each failure, declared in
 * mil_internal.h.
 */
#include <errno.h>

#include "mil_internal.h"

int mil_set_type(anes_mil_check *c, const anes_mil_op *op, anes_mil_type *t, int dtype, uint32_t rank,
                 const uint64_t *shape)
{
	if (anes_mil_type_init(t, dtype, rank, shape))
		return anes_mil_fail(c, op, -EINVAL, "result is too large (or has a zero or oversized dimension)");
	return 0;
}

int mil_need_float(anes_mil_check *c, const anes_mil_op *op, const char *arg, const anes_mil_value *v)
{
	if (!anes_mil_dtype_is_float(v->type.dtype))
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be fp16 or fp32, is %s", arg,
		                     anes_mil_dtype_name(v->type.dtype));
	return 0;
}

int mil_same_dtype(anes_mil_check *c, const anes_mil_op *op, const char *a, const anes_mil_value *va,
                   const char *b, const anes_mil_value *vb)
{
	if (va->type.dtype != vb->type.dtype)
		return anes_mil_fail(c, op, -EINVAL, "'%s' (%s) and '%s' (%s) must have the same dtype", a,
		                     anes_mil_dtype_name(va->type.dtype), b, anes_mil_dtype_name(vb->type.dtype));
	return 0;
}

int mil_norm_axis(anes_mil_check *c, const anes_mil_op *op, const char *arg, int64_t axis, uint32_t rank,
                  uint32_t *ret)
{
	if (axis < -(int64_t)rank || axis >= (int64_t)rank)
		return anes_mil_fail(c, op, -EINVAL, "%s %lld is out of range for rank %u", arg, (long long)axis, rank);
	*ret = (uint32_t)(axis < 0 ? axis + (int64_t)rank : axis);
	return 0;
}

int mil_opt_bool(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                 bool def, bool *ret)
{
	const anes_mil_value *v = anes_mil_op_value(fn, op, name);

	if (!v) {
		*ret = def;
		return 0;
	}
	if (anes_mil_const_bool(v, ret))
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a bool scalar", name);
	return 0;
}

int mil_opt_f64(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                double def, double *ret)
{
	const anes_mil_value *v = anes_mil_op_value(fn, op, name);

	if (!v) {
		*ret = def;
		return 0;
	}
	if (anes_mil_const_f64(v, ret))
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a numeric scalar", name);
	return 0;
}

int mil_opt_int(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                int64_t def, int64_t lo, int64_t hi, int64_t *ret)
{
	const anes_mil_value *v = anes_mil_op_value(fn, op, name);
	int64_t x;
	uint32_t n;

	if (!v) {
		*ret = def;
		return 0;
	}
	if (v->type.rank != 0 || anes_mil_const_ints(v, &x, 1, &n) || n != 1)
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be an integer scalar", name);
	if (x < lo || x > hi)
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' = %lld is out of range [%lld, %lld]", name,
		                     (long long)x, (long long)lo, (long long)hi);
	*ret = x;
	return 0;
}
