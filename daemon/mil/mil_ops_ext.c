/* SPDX-License-Identifier: MIT */
/*
 * The op table, continued: masks and comparisons, more elementwise math and
 * activations, more reductions, sorting, normalizations, data movement and
 * vision ops of the iOS 15-18 opsets (docs/mil.md, "Supported ops").
 * anes_mil_opdef_find (mil_ops.c) looks here for names it does not know.
 *
 * Everything comes from untrusted text: every axis, count, size and index
 * that a constant carries is range-checked here, before any backend plans a
 * kernel from it; products of dimensions go through anes_mil_type_init,
 * which bounds the tensor.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mil_internal.h"

#define SHAPE_STR_LEN (ANES_MAX_RANK * 12 + 4)

static const anes_mil_value *V(const anes_mil_function *fn, const anes_mil_op *op, const char *name)
{
	return anes_mil_op_value(fn, op, name);
}

static int set_type(anes_mil_check *c, const anes_mil_op *op, anes_mil_type *t, int dtype, uint32_t rank,
                    const uint64_t *shape)
{
	if (rank > ANES_MAX_RANK || anes_mil_type_init(t, dtype, rank, shape))
		return anes_mil_fail(c, op, -EINVAL, "result is too large (or has a zero or oversized dimension)");
	return 0;
}

static bool is_fp(const anes_mil_value *v)
{
	return anes_mil_dtype_is_float(v->type.dtype);
}

static int need_float(anes_mil_check *c, const anes_mil_op *op, const char *arg, const anes_mil_value *v)
{
	if (!is_fp(v))
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be fp16 or fp32, is %s", arg,
		                     anes_mil_dtype_name(v->type.dtype));
	return 0;
}

/* fp16, fp32 or int32 (the "T" of the comparison and arithmetic ops) */
static int need_arith(anes_mil_check *c, const anes_mil_op *op, const char *arg, const anes_mil_value *v)
{
	if (!is_fp(v) && v->type.dtype != ANES_DT_INT32)
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be fp16, fp32 or int32, is %s", arg,
		                     anes_mil_dtype_name(v->type.dtype));
	return 0;
}

static int need_bool(anes_mil_check *c, const anes_mil_op *op, const char *arg, const anes_mil_value *v)
{
	if (v->type.dtype != ANES_DT_BOOL)
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be bool, is %s", arg,
		                     anes_mil_dtype_name(v->type.dtype));
	return 0;
}

static int same_dtype(anes_mil_check *c, const anes_mil_op *op, const char *a, const anes_mil_value *va,
                      const char *b, const anes_mil_value *vb)
{
	if (va->type.dtype != vb->type.dtype)
		return anes_mil_fail(c, op, -EINVAL, "'%s' (%s) and '%s' (%s) must have the same dtype", a,
		                     anes_mil_dtype_name(va->type.dtype), b, anes_mil_dtype_name(vb->type.dtype));
	return 0;
}

/* optional constant numeric scalar */
static int opt_f64(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                   double def, double *ret)
{
	const anes_mil_value *v = V(fn, op, name);

	if (!v) {
		*ret = def;
		return 0;
	}
	if (anes_mil_const_f64(v, ret) || v->type.rank != 0)
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a numeric scalar", name);
	return 0;
}

/* optional constant integer scalar, within [lo, hi] */
static int opt_int(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                   int64_t def, int64_t lo, int64_t hi, int64_t *ret)
{
	const anes_mil_value *v = V(fn, op, name);
	uint32_t n;

	if (!v) {
		*ret = def;
		return 0;
	}
	if (v->type.rank != 0 || anes_mil_const_ints(v, ret, 1, &n) || n != 1)
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be an integer scalar", name);
	if (*ret < lo || *ret > hi)
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' = %lld is out of range [%lld, %lld]", name,
		                     (long long)*ret, (long long)lo, (long long)hi);
	return 0;
}

static __attribute__((unused)) int opt_bool(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                    bool def, bool *ret)
{
	const anes_mil_value *v = V(fn, op, name);

	if (!v) {
		*ret = def;
		return 0;
	}
	if (anes_mil_const_bool(v, ret))
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a bool scalar", name);
	return 0;
}

static int norm_axis(anes_mil_check *c, const anes_mil_op *op, const char *arg, int64_t axis, uint32_t rank,
                     uint32_t *ret)
{
	if (axis < -(int64_t)rank || axis >= (int64_t)rank)
		return anes_mil_fail(c, op, -EINVAL, "%s %lld is out of range for rank %u", arg, (long long)axis, rank);
	*ret = (uint32_t)(axis < 0 ? axis + (int64_t)rank : axis);
	return 0;
}

/* an optional axis argument (default def) normalized against rank */
static __attribute__((unused)) int opt_axis(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                    int64_t def, uint32_t rank, uint32_t *ret)
{
	int64_t a;

	if (opt_int(c, fn, op, name, def, INT32_MIN, INT32_MAX, &a))
		return -EINVAL;
	if (rank == 0)
		return anes_mil_fail(c, op, -EINVAL, "x must have rank >= 1");
	return norm_axis(c, op, name, a, rank, ret);
}

static int broadcast2(anes_mil_check *c, const anes_mil_op *op, const char *na, const anes_mil_type *a,
                      const char *nb, const anes_mil_type *b, uint32_t *r, uint64_t *shape)
{
	char sa[SHAPE_STR_LEN], sb[SHAPE_STR_LEN];

	if (anes_mil_broadcast(a, b, r, shape))
		return anes_mil_fail(c, op, -EINVAL, "shapes do not broadcast: %s is %s, %s is %s", na,
		                     anes_mil_shape_str(a, sa, sizeof sa), nb, anes_mil_shape_str(b, sb, sizeof sb));
	return 0;
}

/* ---- elementwise ---- */

/* float unary ops (and the activations with scalar alpha/beta) */
static int infer_funary(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	double d;

	if (need_float(c, op, "x", xv) || opt_f64(c, fn, op, "alpha", 0, &d) || opt_f64(c, fn, op, "beta", 0, &d))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}

static int infer_logical_not(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                             anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");

	if (need_bool(c, op, "x", xv))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}

/* x, y of one dtype, broadcast; out_dtype -1 = the inputs' dtype */
static int infer_bin(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out,
                     bool logical, int out_dtype)
{
	const anes_mil_value *xv = V(fn, op, "x"), *yv = V(fn, op, "y");
	uint64_t shape[ANES_MAX_RANK];
	uint32_t r;

	if (logical ? (need_bool(c, op, "x", xv) || need_bool(c, op, "y", yv))
	            : (need_arith(c, op, "x", xv) || need_arith(c, op, "y", yv) ||
	               same_dtype(c, op, "x", xv, "y", yv)))
		return -EINVAL;
	if (broadcast2(c, op, "x", &xv->type, "y", &yv->type, &r, shape))
		return -EINVAL;
	return set_type(c, op, &out[0], out_dtype < 0 ? xv->type.dtype : out_dtype, r, shape);
}

static int infer_compare(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	return infer_bin(c, fn, op, out, false, ANES_DT_BOOL);
}

static int infer_logical(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	return infer_bin(c, fn, op, out, true, ANES_DT_BOOL);
}

static int infer_arith(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	return infer_bin(c, fn, op, out, false, -1);
}

static int infer_select(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *cv = V(fn, op, "cond"), *av = V(fn, op, "a"), *bv = V(fn, op, "b");
	uint64_t s1[ANES_MAX_RANK], s2[ANES_MAX_RANK];
	anes_mil_type ab;
	uint32_t r1, r2;

	if (need_bool(c, op, "cond", cv) || same_dtype(c, op, "a", av, "b", bv))
		return -EINVAL;
	if (av->type.dtype == ANES_MIL_DT_STRING)
		return anes_mil_fail(c, op, -EINVAL, "a and b cannot be strings");
	if (broadcast2(c, op, "a", &av->type, "b", &bv->type, &r1, s1))
		return -EINVAL;
	memset(&ab, 0, sizeof ab);
	ab.rank = r1;
	memcpy(ab.shape, s1, sizeof s1);
	if (broadcast2(c, op, "cond", &cv->type, "a/b", &ab, &r2, s2))
		return -EINVAL;
	return set_type(c, op, &out[0], av->type.dtype, r2, s2);
}

/* prelu / softplus_parametric: x [B, C, ...] (rank >= 3), alpha (and beta) [C] */
static int infer_per_channel(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                             anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	const char *names[2] = {"alpha", "beta"};
	char sb[SHAPE_STR_LEN];

	if (need_float(c, op, "x", xv))
		return -EINVAL;
	if (xv->type.rank < 3)
		return anes_mil_fail(c, op, -EINVAL, "x must be [B, C, ...] of rank >= 3, is %s",
		                     anes_mil_shape_str(&xv->type, sb, sizeof sb));
	for (int k = 0; k < 2; k++) {
		const anes_mil_value *v = V(fn, op, names[k]);
		if (!v)
			continue;
		if (same_dtype(c, op, "x", xv, names[k], v))
			return -EINVAL;
		if (v->type.rank != 1 || (v->type.shape[0] != xv->type.shape[1] && v->type.shape[0] != 1))
			return anes_mil_fail(c, op, -EINVAL, "%s must be [%llu] (one per channel), is %s", names[k],
			                     (unsigned long long)xv->type.shape[1],
			                     anes_mil_shape_str(&v->type, sb, sizeof sb));
	}
	out[0] = xv->type;
	return 0;
}

/* ---- table ---- */

#define REQ ANES_MIL_ARG_REQ
#define CONST ANES_MIL_ARG_CONST
#define TUPLE ANES_MIL_ARG_TUPLE

static const anes_mil_argdef a_x[] = {{"x", REQ}, {NULL, 0}};
static const anes_mil_argdef a_xy[] = {{"x", REQ}, {"y", REQ}, {NULL, 0}};
static const anes_mil_argdef a_x_alpha[] = {{"x", REQ}, {"alpha", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_x_ab[] = {{"x", REQ}, {"alpha", REQ | CONST}, {"beta", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_select[] = {{"cond", REQ}, {"a", REQ}, {"b", REQ}, {NULL, 0}};
static const anes_mil_argdef a_prelu[] = {{"x", REQ}, {"alpha", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_softplus_p[] = {{"x", REQ}, {"alpha", REQ | CONST}, {"beta", REQ | CONST}, {NULL, 0}};

static const anes_mil_opdef ops[] = {
	/* masks */
	{"select", 1, a_select, infer_select},
	{"equal", 1, a_xy, infer_compare},
	{"not_equal", 1, a_xy, infer_compare},
	{"less", 1, a_xy, infer_compare},
	{"less_equal", 1, a_xy, infer_compare},
	{"greater", 1, a_xy, infer_compare},
	{"greater_equal", 1, a_xy, infer_compare},
	{"logical_and", 1, a_xy, infer_logical},
	{"logical_or", 1, a_xy, infer_logical},
	{"logical_xor", 1, a_xy, infer_logical},
	{"logical_not", 1, a_x, infer_logical_not},
	{"floor_div", 1, a_xy, infer_arith},
	{"mod", 1, a_xy, infer_arith},
	{"floor", 1, a_x, infer_funary},
	{"ceil", 1, a_x, infer_funary},
	{"round", 1, a_x, infer_funary},
	{"sign", 1, a_x, infer_funary},
	/* math */
	{"sin", 1, a_x, infer_funary},
	{"cos", 1, a_x, infer_funary},
	{"tan", 1, a_x, infer_funary},
	{"asin", 1, a_x, infer_funary},
	{"acos", 1, a_x, infer_funary},
	{"atan", 1, a_x, infer_funary},
	{"sinh", 1, a_x, infer_funary},
	{"cosh", 1, a_x, infer_funary},
	{"atanh", 1, a_x, infer_funary},
	{"exp2", 1, a_x, infer_funary},
	{"threshold", 1, a_x_alpha, infer_funary},
	/* activations */
	{"relu6", 1, a_x, infer_funary},
	{"softplus", 1, a_x, infer_funary},
	{"softsign", 1, a_x, infer_funary},
	{"elu", 1, a_x_alpha, infer_funary},
	{"leaky_relu", 1, a_x_alpha, infer_funary},
	{"thresholded_relu", 1, a_x_alpha, infer_funary},
	{"sigmoid_hard", 1, a_x_ab, infer_funary},
	{"scaled_tanh", 1, a_x_ab, infer_funary},
	{"clamped_relu", 1, a_x_ab, infer_funary},
	{"linear_activation", 1, a_x_ab, infer_funary},
	{"prelu", 1, a_prelu, infer_per_channel},
	{"softplus_parametric", 1, a_softplus_p, infer_per_channel},
};

const anes_mil_opdef *mil_ops_ext_find(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
		if (strlen(ops[i].name) == len && memcmp(ops[i].name, name, len) == 0)
			return &ops[i];
	return NULL;
}
