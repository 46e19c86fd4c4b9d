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

static int opt_bool(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
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
static int opt_axis(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
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


/* ---- reductions, scans, sorting ---- */

/* the axes argument (default all) into red[] */
static int reduce_axes(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                       const anes_mil_type *x, bool *red)
{
	const anes_mil_value *av = V(fn, op, "axes");
	int64_t axes[ANES_MAX_RANK];
	uint32_t n;

	for (uint32_t i = 0; i < ANES_MAX_RANK; i++)
		red[i] = !av && i < x->rank;
	if (!av)
		return 0;
	if (anes_mil_const_ints(av, axes, ANES_MAX_RANK, &n))
		return anes_mil_fail(c, op, -EINVAL, "argument 'axes' must be a constant integer list of at most %d elements",
		                     ANES_MAX_RANK);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t a = 0;
		if (norm_axis(c, op, "axis", axes[i], x->rank, &a))
			return -EINVAL;
		if (red[a])
			return anes_mil_fail(c, op, -EINVAL, "axis %u repeated in axes", a);
		red[a] = true;
	}
	return 0;
}

static int reduced_type(anes_mil_check *c, const anes_mil_op *op, const anes_mil_type *x, const bool *red,
                        bool keep, int dtype, anes_mil_type *out)
{
	uint64_t shape[ANES_MAX_RANK];
	uint32_t r = 0;

	for (uint32_t i = 0; i < x->rank; i++) {
		if (!red[i])
			shape[r++] = x->shape[i];
		else if (keep)
			shape[r++] = 1;
	}
	return set_type(c, op, out, dtype, r, shape);
}

static int infer_reduce_f(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	bool red[ANES_MAX_RANK], keep;

	if (need_float(c, op, "x", xv) || opt_bool(c, fn, op, "keep_dims", false, &keep) ||
	    reduce_axes(c, fn, op, &xv->type, red))
		return -EINVAL;
	return reduced_type(c, op, &xv->type, red, keep, xv->type.dtype, &out[0]);
}

static int infer_argreduce(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	bool red[ANES_MAX_RANK] = {false}, keep;
	uint32_t a;

	if (need_arith(c, op, "x", xv) || opt_bool(c, fn, op, "keep_dims", false, &keep) ||
	    opt_axis(c, fn, op, "axis", -1, xv->type.rank, &a))
		return -EINVAL;
	red[a] = true;
	return reduced_type(c, op, &xv->type, red, keep, ANES_DT_INT32, &out[0]);
}

static int infer_cumsum(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	bool b;
	uint32_t a;

	if (need_arith(c, op, "x", xv) || opt_axis(c, fn, op, "axis", 0, xv->type.rank, &a) ||
	    opt_bool(c, fn, op, "exclusive", false, &b) || opt_bool(c, fn, op, "reverse", false, &b))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}

static int infer_topk(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	uint64_t shape[ANES_MAX_RANK];
	int64_t k;
	uint32_t a;
	bool b, ri;

	if (need_arith(c, op, "x", xv) || opt_axis(c, fn, op, "axis", -1, xv->type.rank, &a) ||
	    opt_bool(c, fn, op, "ascending", false, &b) || opt_bool(c, fn, op, "sort", true, &b) ||
	    opt_bool(c, fn, op, "return_indices", true, &ri) ||
	    opt_int(c, fn, op, "k", 1, 1, (int64_t)xv->type.shape[a], &k))
		return -EINVAL;
	if (!ri)
		return anes_mil_fail(c, op, -ENOTSUP, "return_indices = false is not supported");
	memcpy(shape, xv->type.shape, sizeof shape);
	shape[a] = (uint64_t)k;
	if (set_type(c, op, &out[0], xv->type.dtype, xv->type.rank, shape))
		return -EINVAL;
	return set_type(c, op, &out[1], ANES_DT_INT32, xv->type.rank, shape);
}

static int infer_argsort(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	uint32_t a;
	bool b;

	if (need_arith(c, op, "x", xv) || opt_axis(c, fn, op, "axis", -1, xv->type.rank, &a) ||
	    opt_bool(c, fn, op, "ascending", false, &b))
		return -EINVAL;
	return set_type(c, op, &out[0], ANES_DT_INT32, xv->type.rank, xv->type.shape);
}

/* ---- normalizations ---- */

/* optional per-channel constants (names...) of x's dtype, [C] */
static int channel_params(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                          const anes_mil_value *xv, const char *const *names, int n)
{
	char sb[SHAPE_STR_LEN];

	for (int k = 0; k < n; k++) {
		const anes_mil_value *v = V(fn, op, names[k]);
		if (!v)
			continue;
		if (same_dtype(c, op, "x", xv, names[k], v))
			return -EINVAL;
		if (v->type.rank != 1 || v->type.shape[0] != xv->type.shape[1])
			return anes_mil_fail(c, op, -EINVAL, "%s must be [%llu] (one per channel), is %s", names[k],
			                     (unsigned long long)xv->type.shape[1],
			                     anes_mil_shape_str(&v->type, sb, sizeof sb));
	}
	return 0;
}

static int need_rank(anes_mil_check *c, const anes_mil_op *op, const anes_mil_value *xv, uint32_t lo, uint32_t hi)
{
	char sb[SHAPE_STR_LEN];

	if (xv->type.rank < lo || xv->type.rank > hi)
		return anes_mil_fail(c, op, -EINVAL, "x must have rank %u to %u, is %s", lo, hi,
		                     anes_mil_shape_str(&xv->type, sb, sizeof sb));
	return 0;
}

static int infer_batch_norm(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                            anes_mil_type *out)
{
	static const char *const names[] = {"mean", "variance", "gamma", "beta"};
	const anes_mil_value *xv = V(fn, op, "x");
	double eps;

	if (need_float(c, op, "x", xv) || need_rank(c, op, xv, 3, 5) || opt_f64(c, fn, op, "epsilon", 1e-5, &eps) ||
	    channel_params(c, fn, op, xv, names, 4))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}

static int infer_instance_norm(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                               anes_mil_type *out)
{
	static const char *const names[] = {"gamma", "beta"};
	const anes_mil_value *xv = V(fn, op, "x");
	double eps;

	if (need_float(c, op, "x", xv) || need_rank(c, op, xv, 3, 4) || opt_f64(c, fn, op, "epsilon", 1e-5, &eps) ||
	    channel_params(c, fn, op, xv, names, 2))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}

static int infer_l2_norm(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	double eps;

	if (need_float(c, op, "x", xv) || need_rank(c, op, xv, 3, ANES_MAX_RANK) ||
	    opt_f64(c, fn, op, "epsilon", 1e-6, &eps))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}

static int infer_lrn(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	double d;
	int64_t size;

	if (need_float(c, op, "x", xv) || need_rank(c, op, xv, 3, 4) || opt_f64(c, fn, op, "alpha", 1e-4, &d) ||
	    opt_f64(c, fn, op, "beta", 0.75, &d) || opt_f64(c, fn, op, "k", 1, &d) ||
	    opt_int(c, fn, op, "size", 1, 1, INT32_MAX, &size))
		return -EINVAL;
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

static const anes_mil_argdef a_reduce[] = {{"x", REQ}, {"axes", CONST}, {"keep_dims", CONST}, {NULL, 0}};
static const anes_mil_argdef a_argreduce[] = {{"x", REQ}, {"axis", CONST}, {"keep_dims", CONST}, {NULL, 0}};
static const anes_mil_argdef a_cumsum[] = {
	{"x", REQ}, {"axis", CONST}, {"exclusive", CONST}, {"reverse", CONST}, {NULL, 0}};
static const anes_mil_argdef a_topk[] = {
	{"x", REQ}, {"k", CONST}, {"axis", CONST}, {"ascending", CONST}, {"sort", CONST}, {"return_indices", CONST},
	{NULL, 0}};
static const anes_mil_argdef a_argsort[] = {{"x", REQ}, {"axis", CONST}, {"ascending", CONST}, {NULL, 0}};
static const anes_mil_argdef a_batch_norm[] = {
	{"x", REQ}, {"mean", REQ | CONST}, {"variance", REQ | CONST}, {"gamma", CONST}, {"beta", CONST},
	{"epsilon", CONST}, {NULL, 0}};
static const anes_mil_argdef a_instance_norm[] = {
	{"x", REQ}, {"gamma", CONST}, {"beta", CONST}, {"epsilon", CONST}, {NULL, 0}};
static const anes_mil_argdef a_l2_norm[] = {{"x", REQ}, {"epsilon", CONST}, {NULL, 0}};
static const anes_mil_argdef a_lrn[] = {
	{"x", REQ}, {"size", REQ | CONST}, {"alpha", CONST}, {"beta", CONST}, {"k", CONST}, {NULL, 0}};

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
	/* reductions, scans, sorting */
	{"reduce_prod", 1, a_reduce, infer_reduce_f},
	{"reduce_l1_norm", 1, a_reduce, infer_reduce_f},
	{"reduce_l2_norm", 1, a_reduce, infer_reduce_f},
	{"reduce_log_sum", 1, a_reduce, infer_reduce_f},
	{"reduce_log_sum_exp", 1, a_reduce, infer_reduce_f},
	{"reduce_sum_square", 1, a_reduce, infer_reduce_f},
	{"reduce_argmax", 1, a_argreduce, infer_argreduce},
	{"reduce_argmin", 1, a_argreduce, infer_argreduce},
	{"cumsum", 1, a_cumsum, infer_cumsum},
	{"topk", 2, a_topk, infer_topk},
	{"argsort", 1, a_argsort, infer_argsort},
	/* normalizations */
	{"batch_norm", 1, a_batch_norm, infer_batch_norm},
	{"instance_norm", 1, a_instance_norm, infer_instance_norm},
	{"l2_norm", 1, a_l2_norm, infer_l2_norm},
	{"local_response_norm", 1, a_lrn, infer_lrn},
};

const anes_mil_opdef *mil_ops_ext_find(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
		if (strlen(ops[i].name) == len && memcmp(ops[i].name, name, len) == 0)
			return &ops[i];
	return NULL;
}
