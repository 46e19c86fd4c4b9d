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

static bool is_fp(const anes_mil_value *v)
{
	return anes_mil_dtype_is_float(v->type.dtype);
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

/* an optional axis argument (default def) normalized against rank */
static int opt_axis(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                    int64_t def, uint32_t rank, uint32_t *ret)
{
	int64_t a;

	if (mil_opt_int(c, fn, op, name, def, INT32_MIN, INT32_MAX, &a))
		return -EINVAL;
	if (rank == 0)
		return anes_mil_fail(c, op, -EINVAL, "x must have rank >= 1");
	return mil_norm_axis(c, op, name, a, rank, ret);
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

	if (mil_need_float(c, op, "x", xv) || mil_opt_f64(c, fn, op, "alpha", 0, &d) || mil_opt_f64(c, fn, op, "beta", 0, &d))
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
	               mil_same_dtype(c, op, "x", xv, "y", yv)))
		return -EINVAL;
	if (broadcast2(c, op, "x", &xv->type, "y", &yv->type, &r, shape))
		return -EINVAL;
	return mil_set_type(c, op, &out[0], out_dtype < 0 ? xv->type.dtype : out_dtype, r, shape);
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

	if (need_bool(c, op, "cond", cv) || mil_same_dtype(c, op, "a", av, "b", bv))
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
	return mil_set_type(c, op, &out[0], av->type.dtype, r2, s2);
}

/* prelu / softplus_parametric: x [B, C, ...] (rank >= 3), alpha (and beta) [C] */
static int infer_per_channel(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                             anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	const char *names[2] = {"alpha", "beta"};
	char sb[SHAPE_STR_LEN];

	if (mil_need_float(c, op, "x", xv))
		return -EINVAL;
	if (xv->type.rank < 3)
		return anes_mil_fail(c, op, -EINVAL, "x must be [B, C, ...] of rank >= 3, is %s",
		                     anes_mil_shape_str(&xv->type, sb, sizeof sb));
	for (int k = 0; k < 2; k++) {
		const anes_mil_value *v = V(fn, op, names[k]);
		if (!v)
			continue;
		if (mil_same_dtype(c, op, "x", xv, names[k], v))
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
		if (mil_norm_axis(c, op, "axis", axes[i], x->rank, &a))
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
	return mil_set_type(c, op, out, dtype, r, shape);
}

static int infer_reduce_f(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	bool red[ANES_MAX_RANK], keep;

	if (mil_need_float(c, op, "x", xv) || mil_opt_bool(c, fn, op, "keep_dims", false, &keep) ||
	    reduce_axes(c, fn, op, &xv->type, red))
		return -EINVAL;
	return reduced_type(c, op, &xv->type, red, keep, xv->type.dtype, &out[0]);
}

/* iOS 17 output_dtype / output_indices_dtype: "int32" (default); "uint16" is not computed here */
static int index_dtype(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name)
{
	const anes_mil_value *v = V(fn, op, name);
	const char *s = v ? anes_mil_const_string(v) : "int32";

	if (s && !strcmp(s, "int32"))
		return 0;
	if (s && !strcmp(s, "uint16"))
		return anes_mil_fail(c, op, -ENOTSUP, "%s uint16 is not supported (int32 is)", name);
	return anes_mil_fail(c, op, -EINVAL, "%s must be \"int32\" or \"uint16\"", name);
}

static int infer_argreduce(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	bool red[ANES_MAX_RANK] = {false}, keep;
	uint32_t a;

	if (need_arith(c, op, "x", xv) || mil_opt_bool(c, fn, op, "keep_dims", false, &keep) ||
	    opt_axis(c, fn, op, "axis", -1, xv->type.rank, &a))
		return -EINVAL;
	int rc = index_dtype(c, fn, op, "output_dtype");
	if (rc)
		return rc;
	red[a] = true;
	return reduced_type(c, op, &xv->type, red, keep, ANES_DT_INT32, &out[0]);
}

static int infer_cumsum(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	bool b;
	uint32_t a;

	if (need_arith(c, op, "x", xv) || opt_axis(c, fn, op, "axis", 0, xv->type.rank, &a) ||
	    mil_opt_bool(c, fn, op, "exclusive", false, &b) || mil_opt_bool(c, fn, op, "reverse", false, &b))
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
	    mil_opt_bool(c, fn, op, "ascending", false, &b) || mil_opt_bool(c, fn, op, "sort", true, &b) ||
	    mil_opt_bool(c, fn, op, "return_indices", true, &ri) ||
	    mil_opt_int(c, fn, op, "k", 1, -1, (int64_t)xv->type.shape[a], &k))
		return -EINVAL;
	int rc = index_dtype(c, fn, op, "output_indices_dtype");
	if (rc)
		return rc;
	if (k == 0)
		return anes_mil_fail(c, op, -EINVAL, "k must be -1 (all) or 1..%llu", (unsigned long long)xv->type.shape[a]);
	if (op->n_outputs != (ri ? 2u : 1u))
		return anes_mil_fail(c, op, -EINVAL, "has %u outputs, %u declared (return_indices = %s)", ri ? 2u : 1u,
		                     op->n_outputs, ri ? "true" : "false");
	memcpy(shape, xv->type.shape, sizeof shape);
	if (k > 0)
		shape[a] = (uint64_t)k;
	if (mil_set_type(c, op, &out[0], xv->type.dtype, xv->type.rank, shape))
		return -EINVAL;
	return ri ? mil_set_type(c, op, &out[1], ANES_DT_INT32, xv->type.rank, shape) : 0;
}

static int infer_argsort(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	uint32_t a;
	bool b;

	if (need_arith(c, op, "x", xv) || opt_axis(c, fn, op, "axis", -1, xv->type.rank, &a) ||
	    mil_opt_bool(c, fn, op, "ascending", false, &b))
		return -EINVAL;
	return mil_set_type(c, op, &out[0], ANES_DT_INT32, xv->type.rank, xv->type.shape);
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
		if (mil_same_dtype(c, op, "x", xv, names[k], v))
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

	if (mil_need_float(c, op, "x", xv) || need_rank(c, op, xv, 3, 5) || mil_opt_f64(c, fn, op, "epsilon", 1e-5, &eps) ||
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

	if (mil_need_float(c, op, "x", xv) || need_rank(c, op, xv, 3, 4) || mil_opt_f64(c, fn, op, "epsilon", 1e-5, &eps) ||
	    channel_params(c, fn, op, xv, names, 2))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}

static int infer_l2_norm(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	double eps;

	if (mil_need_float(c, op, "x", xv) || need_rank(c, op, xv, 3, ANES_MAX_RANK) ||
	    mil_opt_f64(c, fn, op, "epsilon", 1e-6, &eps))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}

static int infer_lrn(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	double d;
	int64_t size;

	if (mil_need_float(c, op, "x", xv) || need_rank(c, op, xv, 3, 4) || mil_opt_f64(c, fn, op, "alpha", 1e-4, &d) ||
	    mil_opt_f64(c, fn, op, "beta", 0.75, &d) || mil_opt_f64(c, fn, op, "k", 1, &d) ||
	    mil_opt_int(c, fn, op, "size", 1, 1, INT32_MAX, &size))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}


/* ---- data movement ---- */

/* a constant integer list (at most max entries) */
static int const_list(anes_mil_check *c, const anes_mil_op *op, const char *name, const anes_mil_value *v,
                      int64_t *out, uint32_t max, uint32_t *ret_n)
{
	if (!v || anes_mil_const_ints(v, out, max, ret_n))
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a constant integer list of at most %u elements",
		                     name, max);
	return 0;
}

static int need_int(anes_mil_check *c, const anes_mil_op *op, const char *arg, const anes_mil_value *v)
{
	if (!anes_mil_dtype_is_int(v->type.dtype))
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be an integer tensor, is %s", arg,
		                     anes_mil_dtype_name(v->type.dtype));
	return 0;
}

/* constant indices along a dim of size d: every entry in [-d, d) */
static int const_indices_in(anes_mil_check *c, const anes_mil_op *op, const anes_mil_value *iv, uint64_t stride,
                            uint64_t phase, uint64_t d)
{
	if (iv->kind != ANES_MIL_V_CONST)
		return 0;
	for (uint64_t i = phase; i < iv->type.count; i += stride) {
		double ix = anes_mil_load_f64(iv->data, iv->type.dtype, i);
		if (ix < -(double)d || ix >= (double)d)
			return anes_mil_fail(c, op, -EINVAL, "indices[%llu] = %.0f is out of range [%lld, %lld)",
			                     (unsigned long long)i, ix, -(long long)d, (long long)d);
	}
	return 0;
}

static int infer_stack(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_arg *vals = anes_mil_op_arg(op, "values");
	const anes_mil_type *t0 = &fn->values[vals->vals[0]].type;
	uint64_t shape[ANES_MAX_RANK];
	int64_t axis;
	char s0[SHAPE_STR_LEN], si[SHAPE_STR_LEN];

	if (t0->rank + 1 > ANES_MAX_RANK)
		return anes_mil_fail(c, op, -EINVAL, "result rank exceeds %d", ANES_MAX_RANK);
	if (mil_opt_int(c, fn, op, "axis", 0, -(int64_t)t0->rank - 1, t0->rank, &axis))
		return -EINVAL;
	if (axis < 0)
		axis += t0->rank + 1;
	for (uint32_t i = 1; i < vals->n; i++) {
		const anes_mil_type *t = &fn->values[vals->vals[i]].type;
		if (!anes_mil_type_equal(t, t0))
			return anes_mil_fail(c, op, -EINVAL, "values[%u] (%s %s) does not match values[0] (%s %s)", i,
			                     anes_mil_dtype_name(t->dtype), anes_mil_shape_str(t, si, sizeof si),
			                     anes_mil_dtype_name(t0->dtype), anes_mil_shape_str(t0, s0, sizeof s0));
	}
	if (t0->dtype == ANES_MIL_DT_STRING)
		return anes_mil_fail(c, op, -EINVAL, "cannot stack strings");
	for (uint32_t i = 0, j = 0; i <= t0->rank; i++)
		shape[i] = (int64_t)i == axis ? vals->n : t0->shape[j++];
	return mil_set_type(c, op, &out[0], t0->dtype, t0->rank + 1, shape);
}

static int infer_reverse(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	bool red[ANES_MAX_RANK];

	if (reduce_axes(c, fn, op, &xv->type, red))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}

static int infer_gather_nd(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x"), *iv = V(fn, op, "indices");
	const anes_mil_type *x = &xv->type, *it = &iv->type;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t r = 0;
	int64_t bd;
	bool b;

	if (need_int(c, op, "indices", iv) || mil_opt_int(c, fn, op, "batch_dims", 0, INT32_MIN, INT32_MAX, &bd) ||
	    mil_opt_bool(c, fn, op, "validate_indices", false, &b))
		return -EINVAL;
	if (bd != 0)
		return anes_mil_fail(c, op, -ENOTSUP, "batch_dims other than 0 are not supported");
	if (x->rank < 1 || it->rank < 1 || it->shape[it->rank - 1] > x->rank)
		return anes_mil_fail(c, op, -EINVAL, "indices must be [..., K] with 1 <= K <= rank of x (%u)", x->rank);
	uint32_t K = (uint32_t)it->shape[it->rank - 1];
	if (it->rank - 1 + x->rank - K > ANES_MAX_RANK)
		return anes_mil_fail(c, op, -EINVAL, "result rank exceeds %d", ANES_MAX_RANK);
	for (uint32_t k = 0; k < K; k++)
		if (const_indices_in(c, op, iv, K, k, x->shape[k]))
			return -EINVAL;
	for (uint32_t i = 0; i + 1 < it->rank; i++)
		shape[r++] = it->shape[i];
	for (uint32_t i = K; i < x->rank; i++)
		shape[r++] = x->shape[i];
	return mil_set_type(c, op, &out[0], x->dtype, r, shape);
}

static int infer_gather_along(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                              anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x"), *iv = V(fn, op, "indices");
	const anes_mil_type *x = &xv->type, *it = &iv->type;
	uint32_t a;
	bool b;
	char sx[SHAPE_STR_LEN], si[SHAPE_STR_LEN];

	if (need_int(c, op, "indices", iv) || opt_axis(c, fn, op, "axis", 0, x->rank, &a) ||
	    mil_opt_bool(c, fn, op, "validate_indices", false, &b))
		return -EINVAL;
	bool ok = it->rank == x->rank;
	for (uint32_t i = 0; ok && i < x->rank; i++)
		ok = i == a || it->shape[i] == x->shape[i];
	if (!ok)
		return anes_mil_fail(c, op, -EINVAL, "indices %s must match x %s except along axis %u",
		                     anes_mil_shape_str(it, si, sizeof si), anes_mil_shape_str(x, sx, sizeof sx), a);
	if (const_indices_in(c, op, iv, 1, 0, x->shape[a]))
		return -EINVAL;
	return mil_set_type(c, op, &out[0], x->dtype, it->rank, it->shape);
}

static int scatter_mode(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op)
{
	static const char *const modes[] = {"update", "add", "sub", "mul", "div", "max", "min"};
	const anes_mil_value *mv = V(fn, op, "mode");
	const char *m = mv ? anes_mil_const_string(mv) : "add";

	for (size_t i = 0; m && i < sizeof modes / sizeof modes[0]; i++)
		if (strcmp(m, modes[i]) == 0)
			return 0;
	return anes_mil_fail(c, op, -EINVAL, "mode must be one of update, add, sub, mul, div, max, min");
}

static int scatter_common(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                          const anes_mil_value **dv, const anes_mil_value **iv, const anes_mil_value **uv)
{
	bool b;

	*dv = V(fn, op, "data");
	*iv = V(fn, op, "indices");
	*uv = V(fn, op, "updates");
	if (need_arith(c, op, "data", *dv) || need_int(c, op, "indices", *iv) ||
	    mil_same_dtype(c, op, "data", *dv, "updates", *uv) || scatter_mode(c, fn, op) ||
	    mil_opt_bool(c, fn, op, "validate_indices", false, &b))
		return -EINVAL;
	if ((*dv)->type.rank < 1)
		return anes_mil_fail(c, op, -EINVAL, "data must have rank >= 1");
	return 0;
}

static int updates_shape(anes_mil_check *c, const anes_mil_op *op, const anes_mil_type *u, uint32_t r,
                         const uint64_t *want)
{
	anes_mil_type w;
	char su[SHAPE_STR_LEN], sw[SHAPE_STR_LEN];
	bool ok = u->rank == r;

	for (uint32_t i = 0; ok && i < r; i++)
		ok = u->shape[i] == want[i];
	if (ok)
		return 0;
	memset(&w, 0, sizeof w);
	w.rank = r;
	memcpy(w.shape, want, r * sizeof(uint64_t));
	return anes_mil_fail(c, op, -EINVAL, "updates must be %s, is %s", anes_mil_shape_str(&w, sw, sizeof sw),
	                     anes_mil_shape_str(u, su, sizeof su));
}

static int infer_scatter(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *dv, *iv, *uv;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t a, r = 0;

	if (scatter_common(c, fn, op, &dv, &iv, &uv) || opt_axis(c, fn, op, "axis", 0, dv->type.rank, &a))
		return -EINVAL;
	const anes_mil_type *d = &dv->type, *it = &iv->type;
	if (d->rank - 1 + it->rank > ANES_MAX_RANK)
		return anes_mil_fail(c, op, -EINVAL, "updates rank exceeds %d", ANES_MAX_RANK);
	for (uint32_t i = 0; i < a; i++)
		shape[r++] = d->shape[i];
	for (uint32_t i = 0; i < it->rank; i++)
		shape[r++] = it->shape[i];
	for (uint32_t i = a + 1; i < d->rank; i++)
		shape[r++] = d->shape[i];
	if (updates_shape(c, op, &uv->type, r, shape) || const_indices_in(c, op, iv, 1, 0, d->shape[a]))
		return -EINVAL;
	out[0] = *d;
	return 0;
}

static int infer_scatter_nd(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                            anes_mil_type *out)
{
	const anes_mil_value *dv, *iv, *uv;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t r = 0;

	if (scatter_common(c, fn, op, &dv, &iv, &uv))
		return -EINVAL;
	const anes_mil_type *d = &dv->type, *it = &iv->type;
	if (it->rank < 1 || it->shape[it->rank - 1] > d->rank)
		return anes_mil_fail(c, op, -EINVAL, "indices must be [..., K] with 1 <= K <= rank of data (%u)", d->rank);
	uint32_t K = (uint32_t)it->shape[it->rank - 1];
	if (it->rank - 1 + d->rank - K > ANES_MAX_RANK)
		return anes_mil_fail(c, op, -EINVAL, "updates rank exceeds %d", ANES_MAX_RANK);
	for (uint32_t i = 0; i + 1 < it->rank; i++)
		shape[r++] = it->shape[i];
	for (uint32_t i = K; i < d->rank; i++)
		shape[r++] = d->shape[i];
	if (updates_shape(c, op, &uv->type, r, shape))
		return -EINVAL;
	for (uint32_t k = 0; k < K; k++)
		if (const_indices_in(c, op, iv, K, k, d->shape[k]))
			return -EINVAL;
	out[0] = *d;
	return 0;
}

static int infer_scatter_along(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                               anes_mil_type *out)
{
	const anes_mil_value *dv, *iv, *uv;
	uint32_t a;
	char sd[SHAPE_STR_LEN], si[SHAPE_STR_LEN];

	if (scatter_common(c, fn, op, &dv, &iv, &uv) || opt_axis(c, fn, op, "axis", 0, dv->type.rank, &a))
		return -EINVAL;
	const anes_mil_type *d = &dv->type, *it = &iv->type;
	bool ok = it->rank == d->rank;
	for (uint32_t i = 0; ok && i < d->rank; i++)
		ok = i == a || it->shape[i] <= d->shape[i];
	if (!ok)
		return anes_mil_fail(c, op, -EINVAL, "indices %s must have the rank of data %s and no larger dims off axis %u",
		                     anes_mil_shape_str(it, si, sizeof si), anes_mil_shape_str(d, sd, sizeof sd), a);
	if (updates_shape(c, op, &uv->type, it->rank, it->shape) || const_indices_in(c, op, iv, 1, 0, d->shape[a]))
		return -EINVAL;
	out[0] = *d;
	return 0;
}

/* slice_update: begin/end may be run-time int32 tensors (checked when the
 * op runs); stride and the masks are constants */
static int infer_slice_update(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                              anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x"), *uv = V(fn, op, "update");
	const anes_mil_value *bv = V(fn, op, "begin"), *ev = V(fn, op, "end");
	const anes_mil_type *x = &xv->type;
	int64_t begin[ANES_MAX_RANK], end[ANES_MAX_RANK], stride[ANES_MAX_RANK];
	bool msk[3][ANES_MAX_RANK];
	static const char *const mnames[3] = {"begin_mask", "end_mask", "squeeze_mask"};
	uint64_t shape[ANES_MAX_RANK];
	uint32_t n, r = 0;

	if (mil_same_dtype(c, op, "x", xv, "update", uv))
		return -EINVAL;
	if (x->rank < 1)
		return anes_mil_fail(c, op, -EINVAL, "x must have rank >= 1");
	for (int k = 0; k < 2; k++) {
		const anes_mil_value *v = k ? ev : bv;
		if (!anes_mil_dtype_is_int(v->type.dtype) || v->type.rank != 1 || v->type.count != x->rank)
			return anes_mil_fail(c, op, -EINVAL, "%s must be an integer vector of %u elements (rank of x)",
			                     k ? "end" : "begin", x->rank);
	}
	for (uint32_t i = 0; i < x->rank; i++)
		stride[i] = 1;
	if (V(fn, op, "stride") && (const_list(c, op, "stride", V(fn, op, "stride"), stride, ANES_MAX_RANK, &n) ||
	                            n != x->rank))
		return anes_mil_fail(c, op, -EINVAL, "stride needs %u elements", x->rank);
	for (int k = 0; k < 3; k++) {
		const anes_mil_value *v = V(fn, op, mnames[k]);
		for (uint32_t i = 0; i < ANES_MAX_RANK; i++)
			msk[k][i] = false;
		if (!v)
			continue;
		if (v->kind != ANES_MIL_V_CONST || v->type.dtype != ANES_DT_BOOL || v->type.rank != 1 ||
		    v->type.count != x->rank)
			return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a bool list of %u elements", mnames[k],
			                     x->rank);
		for (uint32_t i = 0; i < x->rank; i++)
			msk[k][i] = ((const uint8_t *)v->data)[i] != 0;
	}
	bool known = bv->kind == ANES_MIL_V_CONST && ev->kind == ANES_MIL_V_CONST;
	if (known) {
		anes_mil_const_ints(bv, begin, ANES_MAX_RANK, &n);
		anes_mil_const_ints(ev, end, ANES_MAX_RANK, &n);
	}
	for (uint32_t i = 0; i < x->rank; i++) {
		int64_t d = (int64_t)x->shape[i], s = stride[i], b, len;
		if (s == 0 || s < -(int64_t)ANES_MIL_MAX_DIM || s > (int64_t)ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "stride on axis %u must be non-zero", i);
		if (msk[2][i]) {
			if (known) {
				b = begin[i] < 0 ? begin[i] + d : begin[i];
				if (b < 0 || b >= d)
					return anes_mil_fail(c, op, -EINVAL, "squeezed axis %u: begin %lld out of range", i,
					                     (long long)begin[i]);
			}
			continue;
		}
		if (!known) {
			shape[r++] = 0;   /* from update, checked at run time */
			continue;
		}
		if (begin[i] < -2 * (int64_t)ANES_MIL_MAX_DIM || begin[i] > 2 * (int64_t)ANES_MIL_MAX_DIM ||
		    end[i] < -2 * (int64_t)ANES_MIL_MAX_DIM || end[i] > 2 * (int64_t)ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "begin/end on axis %u out of range", i);
		anes_mil_slice_axis(d, begin[i], end[i], s, msk[0][i], msk[1][i], &b, &len);
		if (len < 1)
			return anes_mil_fail(c, op, -EINVAL, "slice on axis %u is empty", i);
		shape[r++] = (uint64_t)len;
	}
	if (!known) {
		if (uv->type.rank != r)
			return anes_mil_fail(c, op, -EINVAL, "update must have rank %u (x's rank less squeezed axes)", r);
		memcpy(shape, uv->type.shape, r * sizeof(uint64_t));
	}
	if (updates_shape(c, op, &uv->type, r, shape))
		return -EINVAL;
	out[0] = *x;
	return 0;
}

static int infer_band_part(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                           anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	int64_t l;

	if (xv->type.rank < 2)
		return anes_mil_fail(c, op, -EINVAL, "x must have rank >= 2");
	if (mil_opt_int(c, fn, op, "lower", -1, INT32_MIN, INT32_MAX, &l) ||
	    mil_opt_int(c, fn, op, "upper", -1, INT32_MIN, INT32_MAX, &l))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}

/* a constant scalar value argument (fill, one_hot): numeric or bool */
static int scalar_value(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                        int def_dtype, int *dtype)
{
	const anes_mil_value *v = V(fn, op, name);

	*dtype = def_dtype;
	if (!v)
		return 0;
	if (v->type.count != 1 || v->type.rank > 1 ||
	    (!is_fp(v) && v->type.dtype != ANES_DT_INT32 && v->type.dtype != ANES_DT_BOOL))
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be an fp16, fp32, int32 or bool scalar", name);
	*dtype = v->type.dtype;
	return 0;
}

static int infer_fill(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	int64_t s[ANES_MAX_RANK];
	uint64_t shape[ANES_MAX_RANK];
	uint32_t n;
	int dt;

	if (const_list(c, op, "shape", V(fn, op, "shape"), s, ANES_MAX_RANK, &n) ||
	    scalar_value(c, fn, op, "value", ANES_DT_FP32, &dt))
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		if (s[i] < 1 || (uint64_t)s[i] > ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "shape[%u] = %lld is out of range", i, (long long)s[i]);
		shape[i] = (uint64_t)s[i];
	}
	return mil_set_type(c, op, &out[0], dt, n, shape);
}

static int infer_fill_like(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                           anes_mil_type *out)
{
	const anes_mil_value *rv = V(fn, op, "ref_tensor");
	int dt;

	if (scalar_value(c, fn, op, "value", ANES_DT_FP32, &dt))
		return -EINVAL;
	return mil_set_type(c, op, &out[0], dt, rv->type.rank, rv->type.shape);
}

static int infer_range_1d(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	static const char *const names[3] = {"start", "end", "step"};
	double v[3];
	int dt = -1;

	for (int k = 0; k < 3; k++) {
		const anes_mil_value *a = V(fn, op, names[k]);
		if (a->type.rank != 0 || (!is_fp(a) && a->type.dtype != ANES_DT_INT32) || anes_mil_const_f64(a, &v[k]))
			return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a constant fp16, fp32 or int32 scalar",
			                     names[k]);
		if (dt >= 0 && a->type.dtype != dt)
			return anes_mil_fail(c, op, -EINVAL, "start, end and step must have the same dtype");
		dt = a->type.dtype;
	}
	if (v[2] == 0 || isnan(v[0] + v[1] + v[2]) || isinf(v[0] + v[1] + v[2]))
		return anes_mil_fail(c, op, -EINVAL, "step must be finite and non-zero (and start, end finite)");
	double n = ceil((v[1] - v[0]) / v[2]);
	if (!(n >= 1) || n > (double)ANES_MIL_MAX_DIM)
		return anes_mil_fail(c, op, -EINVAL, "the range [%g, %g) by %g has %.0f elements (1..%llu allowed)", v[0],
		                     v[1], v[2], n < 0 ? 0 : n, (unsigned long long)ANES_MIL_MAX_DIM);
	uint64_t shape[1] = {(uint64_t)n};
	return mil_set_type(c, op, &out[0], dt, 1, shape);
}

static int infer_shape(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	uint64_t shape[1] = {xv->type.rank};

	if (xv->type.rank == 0)
		return anes_mil_fail(c, op, -ENOTSUP, "the shape of a scalar is an empty tensor (not supported)");
	return mil_set_type(c, op, &out[0], ANES_DT_INT32, 1, shape);
}

static int infer_one_hot(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *iv = V(fn, op, "indices");
	uint64_t shape[ANES_MAX_RANK];
	int64_t size, axis;
	int dt, dt2;

	if (need_int(c, op, "indices", iv) ||
	    mil_opt_int(c, fn, op, "one_hot_vector_size", 1, 1, (int64_t)ANES_MIL_MAX_DIM, &size) ||
	    scalar_value(c, fn, op, "on_value", ANES_DT_INT32, &dt) ||
	    scalar_value(c, fn, op, "off_value", dt, &dt2))
		return -EINVAL;
	if (dt != dt2)
		return anes_mil_fail(c, op, -EINVAL, "on_value and off_value must have the same dtype");
	if (iv->type.rank + 1 > ANES_MAX_RANK)
		return anes_mil_fail(c, op, -EINVAL, "result rank exceeds %d", ANES_MAX_RANK);
	if (mil_opt_int(c, fn, op, "axis", -1, -(int64_t)iv->type.rank - 1, iv->type.rank, &axis))
		return -EINVAL;
	if (axis < 0)
		axis += iv->type.rank + 1;
	for (uint32_t i = 0, j = 0; i <= iv->type.rank; i++)
		shape[i] = (int64_t)i == axis ? (uint64_t)size : iv->type.shape[j++];
	return mil_set_type(c, op, &out[0], dt, iv->type.rank + 1, shape);
}

/* depth_to_space, space_to_depth, pixel_shuffle, pixel_unshuffle on [N, C, H, W] */
static int infer_blocks(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const char *nm = op->def->name;
	const char *arg = !strcmp(nm, "pixel_shuffle") ? "upscale_factor"
	                : !strcmp(nm, "pixel_unshuffle") ? "downscale_factor" : "block_size";
	bool up = !strcmp(nm, "pixel_shuffle") || !strcmp(nm, "depth_to_space");
	const anes_mil_value *xv = V(fn, op, "x");
	const anes_mil_type *x = &xv->type;
	uint64_t shape[4];
	int64_t b;
	char sx[SHAPE_STR_LEN];

	if (x->rank != 4)
		return anes_mil_fail(c, op, -EINVAL, "x must be [N, C, H, W], is %s", anes_mil_shape_str(x, sx, sizeof sx));
	if (mil_opt_int(c, fn, op, arg, 1, 1, 65536, &b))
		return -EINVAL;
	uint64_t bb = (uint64_t)b * (uint64_t)b;
	shape[0] = x->shape[0];
	if (up) {
		if (x->shape[1] % bb)
			return anes_mil_fail(c, op, -EINVAL, "channels %llu are not divisible by %s^2 = %llu",
			                     (unsigned long long)x->shape[1], arg, (unsigned long long)bb);
		shape[1] = x->shape[1] / bb;
		shape[2] = x->shape[2] * (uint64_t)b;
		shape[3] = x->shape[3] * (uint64_t)b;
	} else {
		if (x->shape[2] % (uint64_t)b || x->shape[3] % (uint64_t)b)
			return anes_mil_fail(c, op, -EINVAL, "H and W of %s are not divisible by %s %lld",
			                     anes_mil_shape_str(x, sx, sizeof sx), arg, (long long)b);
		shape[1] = x->shape[1] * bb;
		shape[2] = x->shape[2] / (uint64_t)b;
		shape[3] = x->shape[3] / (uint64_t)b;
	}
	if (shape[1] > ANES_MIL_MAX_DIM || shape[2] > ANES_MIL_MAX_DIM || shape[3] > ANES_MIL_MAX_DIM)
		return anes_mil_fail(c, op, -EINVAL, "result is too large");
	return mil_set_type(c, op, &out[0], x->dtype, 4, shape);
}

static int infer_flatten2d(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                           anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	uint64_t shape[2] = {1, 1};
	int64_t axis;

	if (mil_opt_int(c, fn, op, "axis", 1, -(int64_t)x->rank, x->rank, &axis))
		return -EINVAL;
	if (axis < 0)
		axis += x->rank;
	for (uint32_t i = 0; i < x->rank; i++)
		shape[(int64_t)i < axis ? 0 : 1] *= x->shape[i];
	return mil_set_type(c, op, &out[0], x->dtype, 2, shape);
}

static int infer_sliding_windows(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                                 anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t a, r = 0;
	int64_t size, stride;

	if (opt_axis(c, fn, op, "axis", 0, x->rank, &a))
		return -EINVAL;
	if (x->rank + 1 > ANES_MAX_RANK)
		return anes_mil_fail(c, op, -EINVAL, "result rank exceeds %d", ANES_MAX_RANK);
	if (mil_opt_int(c, fn, op, "size", 1, 1, (int64_t)x->shape[a], &size) ||
	    mil_opt_int(c, fn, op, "stride", 1, 1, INT32_MAX, &stride))
		return -EINVAL;
	for (uint32_t i = 0; i < x->rank; i++) {
		if (i == a) {
			shape[r++] = (x->shape[a] - (uint64_t)size) / (uint64_t)stride + 1;
			shape[r++] = (uint64_t)size;
		} else {
			shape[r++] = x->shape[i];
		}
	}
	return mil_set_type(c, op, &out[0], x->dtype, r, shape);
}


/* ---- vision ---- */

/* window geometry shared by the pools and conv_transpose: per spatial dim
 * the kernel, stride, dilation and padding, from the op's arguments */
typedef struct win {
	uint32_t ns;
	int64_t k[2], s[2], d[2], pb[2], pe[2];
	int pad_kind;                   /* 0 valid, 1 same, 2 same_lower, 3 custom */
} win;

static int window_args(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const anes_mil_type *x,
                       const char *kname, const uint64_t *kdims, win *w)
{
	int64_t v[2 * ANES_MAX_RANK];
	uint32_t n;
	char sx[SHAPE_STR_LEN];

	memset(w, 0, sizeof *w);
	if (x->rank == 5)
		return anes_mil_fail(c, op, -ENOTSUP, "3-D windows are not supported (x has rank 5)");
	if (x->rank != 3 && x->rank != 4)
		return anes_mil_fail(c, op, -EINVAL, "x must be [N, C, W] or [N, C, H, W], is %s",
		                     anes_mil_shape_str(x, sx, sizeof sx));
	w->ns = x->rank - 2;
	for (uint32_t i = 0; i < w->ns; i++)
		w->s[i] = w->d[i] = 1;
	if (kname) {
		if (const_list(c, op, kname, V(fn, op, kname), v, 2, &n) || n != w->ns)
			return anes_mil_fail(c, op, -EINVAL, "%s needs %u elements", kname, w->ns);
		for (uint32_t i = 0; i < w->ns; i++)
			w->k[i] = v[i];
	} else {
		for (uint32_t i = 0; i < w->ns; i++)
			w->k[i] = (int64_t)kdims[i];
	}
	static const char *const names[2] = {"strides", "dilations"};
	for (int t = 0; t < 2; t++) {
		if (!V(fn, op, names[t]))
			continue;
		if (const_list(c, op, names[t], V(fn, op, names[t]), v, 2, &n) || n != w->ns)
			return anes_mil_fail(c, op, -EINVAL, "%s needs %u elements", names[t], w->ns);
		for (uint32_t i = 0; i < w->ns; i++)
			(t ? w->d : w->s)[i] = v[i];
	}
	for (uint32_t i = 0; i < w->ns; i++)
		if (w->k[i] < 1 || w->k[i] > 65536 || w->s[i] < 1 || w->s[i] > 65536 || w->d[i] < 1 || w->d[i] > 65536)
			return anes_mil_fail(c, op, -EINVAL, "kernel sizes, strides and dilations must be in 1..65536");
	const char *pt = V(fn, op, "pad_type") ? anes_mil_const_string(V(fn, op, "pad_type")) : "valid";
	if (!pt || (strcmp(pt, "valid") && strcmp(pt, "same") && strcmp(pt, "same_lower") && strcmp(pt, "custom")))
		return anes_mil_fail(c, op, -EINVAL, "pad_type must be \"valid\", \"same\", \"same_lower\" or \"custom\"");
	w->pad_kind = !strcmp(pt, "valid") ? 0 : !strcmp(pt, "same") ? 1 : !strcmp(pt, "same_lower") ? 2 : 3;
	if (w->pad_kind == 3 && V(fn, op, "pad")) {
		if (const_list(c, op, "pad", V(fn, op, "pad"), v, 2 * ANES_MAX_RANK, &n) || n != 2 * w->ns)
			return anes_mil_fail(c, op, -EINVAL, "pad must be a constant list of %u integers", 2 * w->ns);
		for (uint32_t i = 0; i < w->ns; i++) {
			w->pb[i] = v[2 * i];
			w->pe[i] = v[2 * i + 1];
			if (w->pb[i] < 0 || w->pe[i] < 0 || w->pb[i] > 65536 || w->pe[i] > 65536)
				return anes_mil_fail(c, op, -EINVAL, "pad entries must be in 0..65536");
		}
	}
	return 0;
}

static int infer_pool(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	const anes_mil_type *x = &xv->type;
	uint64_t shape[ANES_MAX_RANK];
	bool ceil_mode, ex;
	win w;

	int rc = mil_need_float(c, op, "x", xv);
	if (!rc)
		rc = window_args(c, fn, op, x, "kernel_sizes", NULL, &w);
	if (rc)
		return rc;
	if (mil_opt_bool(c, fn, op, "ceil_mode", false, &ceil_mode) ||
	    mil_opt_bool(c, fn, op, "exclude_padding_from_average", false, &ex))
		return -EINVAL;
	if (ceil_mode && (w.pad_kind == 1 || w.pad_kind == 2))
		return anes_mil_fail(c, op, -EINVAL, "ceil_mode needs pad_type \"valid\" or \"custom\"");
	shape[0] = x->shape[0];
	shape[1] = x->shape[1];
	for (uint32_t i = 0; i < w.ns; i++) {
		int64_t d = (int64_t)x->shape[2 + i], o;
		if (w.pad_kind == 1 || w.pad_kind == 2) {
			o = (d + w.s[i] - 1) / w.s[i];
		} else {
			int64_t span = d + w.pb[i] + w.pe[i] - w.k[i];
			if (span < 0)
				return anes_mil_fail(c, op, -EINVAL, "kernel %lld is larger than the padded input dim %u (%lld)",
				                     (long long)w.k[i], 2 + i, (long long)(d + w.pb[i] + w.pe[i]));
			o = (ceil_mode ? (span + w.s[i] - 1) / w.s[i] : span / w.s[i]) + 1;
			if (ceil_mode && (o - 1) * w.s[i] >= d + w.pb[i] && w.pb[i] + w.pe[i] > 0)
				o--;
		}
		shape[2 + i] = (uint64_t)o;
	}
	return mil_set_type(c, op, &out[0], x->dtype, x->rank, shape);
}

static int infer_conv_transpose(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                                anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x"), *wv = V(fn, op, "weight"), *bv = V(fn, op, "bias");
	const anes_mil_type *x = &xv->type, *wt = &wv->type;
	uint64_t shape[ANES_MAX_RANK];
	int64_t groups, os[ANES_MAX_RANK];
	uint32_t n = 0;
	win w;
	char sx[SHAPE_STR_LEN], sw[SHAPE_STR_LEN];

	if (mil_need_float(c, op, "x", xv) || mil_same_dtype(c, op, "x", xv, "weight", wv) ||
	    mil_opt_int(c, fn, op, "groups", 1, 1, INT32_MAX, &groups))
		return -EINVAL;
	if (wt->rank != x->rank || x->rank < 3)
		return anes_mil_fail(c, op, -EINVAL, "weight must be [C_in, C_out/groups, kernel...] of x's rank, is %s",
		                     anes_mil_shape_str(wt, sw, sizeof sw));
	int rc = window_args(c, fn, op, x, NULL, wt->shape + 2, &w);
	if (rc)
		return rc;
	if (wt->shape[0] != x->shape[1] || x->shape[1] % (uint64_t)groups)
		return anes_mil_fail(c, op, -EINVAL, "channels do not match: x is %s, weight is %s, groups %lld",
		                     anes_mil_shape_str(x, sx, sizeof sx), anes_mil_shape_str(wt, sw, sizeof sw),
		                     (long long)groups);
	uint64_t cout = wt->shape[1] * (uint64_t)groups;
	if (bv) {
		if (mil_same_dtype(c, op, "x", xv, "bias", bv))
			return -EINVAL;
		if (bv->type.rank != 1 || bv->type.shape[0] != cout)
			return anes_mil_fail(c, op, -EINVAL, "bias must be [%llu]", (unsigned long long)cout);
	}
	if (V(fn, op, "output_shape")) {
		if (const_list(c, op, "output_shape", V(fn, op, "output_shape"), os, ANES_MAX_RANK, &n) ||
		    (n != x->rank && n != w.ns))
			return anes_mil_fail(c, op, -EINVAL, "output_shape needs %u (or %u spatial) elements", x->rank, w.ns);
	}
	shape[0] = x->shape[0];
	shape[1] = cout;
	for (uint32_t i = 0; i < w.ns; i++) {
		int64_t d = (int64_t)x->shape[2 + i];
		int64_t full = (d - 1) * w.s[i] + w.d[i] * (w.k[i] - 1) + 1, o;
		if (w.pad_kind == 1 || w.pad_kind == 2)
			o = d * w.s[i];
		else
			o = full - w.pb[i] - w.pe[i];
		if (n)
			o = os[n == x->rank ? 2 + i : i];
		if (o < 1 || o > (int64_t)ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "output dim %u would be %lld", 2 + i, (long long)o);
		shape[2 + i] = (uint64_t)o;
	}
	return mil_set_type(c, op, &out[0], x->dtype, x->rank, shape);
}

/* upsample_* and resize_*: the last two dims */
static int infer_resize(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	const anes_mil_type *x = &xv->type;
	const char *nm = op->def->name;
	uint64_t shape[ANES_MAX_RANK];
	bool b;

	if (mil_need_float(c, op, "x", xv))
		return -EINVAL;
	if (x->rank < 3)
		return anes_mil_fail(c, op, -EINVAL, "x must have rank >= 3");
	memcpy(shape, x->shape, sizeof shape);
	if (!strncmp(nm, "upsample", 8)) {
		static const char *const names[2] = {"scale_factor_height", "scale_factor_width"};
		for (int k = 0; k < 2; k++) {
			double f;
			if (mil_opt_f64(c, fn, op, names[k], 1, &f))
				return -EINVAL;
			double o = floor(f * (double)x->shape[x->rank - 2 + k]);
			if (!(f > 0) || !(o >= 1) || o > (double)ANES_MIL_MAX_DIM)
				return anes_mil_fail(c, op, -EINVAL, "%s = %g gives an output dim of %.0f", names[k], f, o);
			shape[x->rank - 2 + k] = (uint64_t)o;
		}
		if (mil_opt_bool(c, fn, op, "align_corners", true, &b) || mil_opt_bool(c, fn, op, "half_pixel_centers", !b, &b))
			return -EINVAL;
	} else {
		static const char *const names[2] = {"target_size_height", "target_size_width"};
		for (int k = 0; k < 2; k++) {
			int64_t t;
			if (mil_opt_int(c, fn, op, names[k], 1, 1, (int64_t)ANES_MIL_MAX_DIM, &t))
				return -EINVAL;
			shape[x->rank - 2 + k] = (uint64_t)t;
		}
		if (V(fn, op, "sampling_mode")) {
			const char *m = anes_mil_const_string(V(fn, op, "sampling_mode"));
			if (!m || (strcmp(m, "STRICT_ALIGN_CORNERS") && strcmp(m, "ALIGN_CORNERS") && strcmp(m, "DEFAULT") &&
			           strcmp(m, "OFFSET_CORNERS") && strcmp(m, "UNALIGN_CORNERS")))
				return anes_mil_fail(c, op, -EINVAL, "sampling_mode must be STRICT_ALIGN_CORNERS, ALIGN_CORNERS, "
				                                     "DEFAULT, OFFSET_CORNERS or UNALIGN_CORNERS");
		}
	}
	return mil_set_type(c, op, &out[0], x->dtype, x->rank, shape);
}

static int infer_crop(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	static const char *const names[2] = {"crop_height", "crop_width"};
	uint64_t shape[ANES_MAX_RANK];
	int64_t v[2];
	uint32_t n;

	if (x->rank < 3)
		return anes_mil_fail(c, op, -EINVAL, "x must have rank >= 3");
	memcpy(shape, x->shape, sizeof shape);
	for (int k = 0; k < 2; k++) {
		uint64_t d = x->shape[x->rank - 2 + k];
		if (const_list(c, op, names[k], V(fn, op, names[k]), v, 2, &n) || n != 2 || v[0] < 0 || v[1] < 0 ||
		    (uint64_t)v[0] + (uint64_t)v[1] >= d)
			return anes_mil_fail(c, op, -EINVAL, "%s must be 2 amounts >= 0 leaving at least one of %llu", names[k],
			                     (unsigned long long)d);
		shape[x->rank - 2 + k] = d - (uint64_t)v[0] - (uint64_t)v[1];
	}
	return mil_set_type(c, op, &out[0], x->dtype, x->rank, shape);
}

/* einsum of two operands: letters a-z (A-Z), each at most once per operand;
 * no "..." (refused) */
#define EINSUM_MAX_WORK ((uint64_t)1 << 36)

static int infer_einsum(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_arg *vals = anes_mil_op_arg(op, "values");
	const char *eq = anes_mil_const_string(V(fn, op, "equation"));
	int64_t dim[128];
	uint64_t shape[ANES_MAX_RANK], work = 1;
	char term[3][ANES_MAX_RANK + 1];
	uint32_t nt = 0, len = 0, r = 0;

	if (!eq)
		return anes_mil_fail(c, op, -EINVAL, "argument 'equation' must be a string");
	if (vals->n != 2)
		return anes_mil_fail(c, op, -ENOTSUP, "einsum of %u operands is not supported (2 are)", vals->n);
	for (const char *p = eq;; p++) {
		if (*p == ' ')
			continue;
		if (*p == ',' || *p == '-' || *p == '\0') {
			if (nt > 2 || (*p == ',' && nt != 0) || (*p == '-' && (nt != 1 || p[1] != '>')) ||
			    (*p == '\0' && nt != 2))
				return anes_mil_fail(c, op, -ENOTSUP, "equation \"%.64s\" is not of the form \"ab,bc->ac\"", eq);
			term[nt++][len] = '\0';
			len = 0;
			if (*p == '\0')
				break;
			if (*p == '-')
				p++;
			continue;
		}
		if (*p == '.')
			return anes_mil_fail(c, op, -ENOTSUP, "equation \"%.64s\": ellipsis (...) is not supported", eq);
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) || len >= ANES_MAX_RANK)
			return anes_mil_fail(c, op, -ENOTSUP, "equation \"%.64s\" is not of the form \"ab,bc->ac\"", eq);
		for (uint32_t i = 0; i < len; i++)
			if (term[nt][i] == *p)
				return anes_mil_fail(c, op, -ENOTSUP, "equation \"%.64s\": a repeated index in one term is not supported",
				                     eq);
		term[nt][len++] = *p;
	}
	for (int i = 0; i < 128; i++)
		dim[i] = -1;
	const anes_mil_type *t[2] = {&fn->values[vals->vals[0]].type, &fn->values[vals->vals[1]].type};
	if (!anes_mil_dtype_is_float(t[0]->dtype) || t[0]->dtype != t[1]->dtype)
		return anes_mil_fail(c, op, -EINVAL, "values must be two tensors of one float dtype");
	for (int k = 0; k < 2; k++) {
		if (strlen(term[k]) != t[k]->rank)
			return anes_mil_fail(c, op, -EINVAL, "term %d of \"%.64s\" has %zu indices, operand has rank %u", k, eq,
			                     strlen(term[k]), t[k]->rank);
		for (uint32_t i = 0; i < t[k]->rank; i++) {
			int ch = term[k][i];
			if (dim[ch] >= 0 && dim[ch] != (int64_t)t[k]->shape[i])
				return anes_mil_fail(c, op, -EINVAL, "index '%c' has sizes %lld and %llu", ch, (long long)dim[ch],
				                     (unsigned long long)t[k]->shape[i]);
			if (dim[ch] < 0) {
				dim[ch] = (int64_t)t[k]->shape[i];
				if (__builtin_mul_overflow(work, (uint64_t)dim[ch], &work) || work > EINSUM_MAX_WORK)
					return anes_mil_fail(c, op, -ENOTSUP, "einsum needs more than 2^36 multiply-adds");
			}
		}
	}
	for (const char *p = term[2]; *p; p++) {
		if (dim[(int)*p] < 0)
			return anes_mil_fail(c, op, -EINVAL, "output index '%c' is in no operand", *p);
		for (const char *q = term[2]; q < p; q++)
			if (*q == *p)
				return anes_mil_fail(c, op, -EINVAL, "output index '%c' repeated", *p);
		shape[r++] = (uint64_t)dim[(int)*p];
	}
	return mil_set_type(c, op, &out[0], t[0]->dtype, r, shape);
}


/* ---- recurrent: lstm, gru, rnn ---- */

static int act_arg(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name)
{
	const anes_mil_value *v = V(fn, op, name);
	const char *a = v ? anes_mil_const_string(v) : "";

	if (!v)
		return 0;
	if (!a || (strcmp(a, "sigmoid") && strcmp(a, "tanh") && strcmp(a, "relu") && strcmp(a, "linear")))
		return anes_mil_fail(c, op, -ENOTSUP, "%s must be \"sigmoid\", \"tanh\", \"relu\" or \"linear\"", name);
	return 0;
}

/* x [s, b, I]; weight_ih [G H, I], weight_hh [G H, H], bias [G H] (G: lstm 4, gru 3, rnn 1), lstm's
 * peephole [3 H] or gru's input_bias [3 H]; initial states [b, D H] */
static int infer_recurrent(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	bool lstm = !strcmp(op->def->name, "lstm"), gru = !strcmp(op->def->name, "gru"), reset_after;
	uint64_t G = lstm ? 4 : gru ? 3 : 1;
	const anes_mil_value *xv = V(fn, op, "x");
	const anes_mil_type *x = &xv->type;
	const char *dir = V(fn, op, "direction") ? anes_mil_const_string(V(fn, op, "direction")) : "forward";
	bool seq;
	char sb[SHAPE_STR_LEN];

	if (mil_need_float(c, op, "x", xv) || mil_opt_bool(c, fn, op, "output_sequence", false, &seq) ||
	    mil_opt_bool(c, fn, op, "reset_after", false, &reset_after))
		return -EINVAL;
	static const char *const acts[3] = {"activation", "recurrent_activation", "cell_activation"};
	for (int k = 0; k < 3; k++) {
		int rc = act_arg(c, fn, op, acts[k]);
		if (rc)
			return rc;
	}
	if (V(fn, op, "clip"))
		return anes_mil_fail(c, op, -ENOTSUP, "clip is not supported");
	if (!dir || (strcmp(dir, "forward") && strcmp(dir, "reverse") && (!lstm || strcmp(dir, "bidirectional"))))
		return anes_mil_fail(c, op, -EINVAL, "direction must be \"forward\", \"reverse\"%s", lstm ? " or \"bidirectional\"" : "");
	uint64_t D = strcmp(dir, "bidirectional") ? 1 : 2;
	if (x->rank != 3)
		return anes_mil_fail(c, op, -EINVAL, "x must be [s, b, I], is %s", anes_mil_shape_str(x, sb, sizeof sb));
	const anes_mil_value *wh = V(fn, op, "weight_hh");
	if (wh->type.rank != 2 || wh->type.shape[0] % G || wh->type.shape[0] / G != wh->type.shape[1])
		return anes_mil_fail(c, op, -EINVAL, "weight_hh must be [%llu H, H], is %s", (unsigned long long)G,
		                     anes_mil_shape_str(&wh->type, sb, sizeof sb));
	uint64_t H = wh->type.shape[1];
	static const char *const rec_names[] = {"weight_ih", "weight_hh", "bias", "peephole", "weight_ih_back",
	                                        "weight_hh_back", "bias_back", "peephole_back"};
	static const char *const gru_names[] = {"weight_ih", "weight_hh", "bias", "input_bias"};
	const char *const *names = gru ? gru_names : rec_names;
	for (int k = 0; k < (gru ? 4 : 8); k++) {
		const anes_mil_value *v = V(fn, op, names[k]);
		bool back = k >= 4;
		if (!v) {
			if (back && D == 2 && (k == 4 || k == 5))
				return anes_mil_fail(c, op, -EINVAL, "%s is needed for a bidirectional lstm", names[k]);
			continue;
		}
		if (mil_same_dtype(c, op, "x", xv, names[k], v))
			return -EINVAL;
		uint64_t want0 = (k % 4 == 3) ? 3 * H : G * H, want1 = (k % 4 == 0) ? x->shape[2] : H;
		bool vec = k % 4 >= 2;
		if ((vec && (v->type.rank != 1 || v->type.shape[0] != want0)) ||
		    (!vec && (v->type.rank != 2 || v->type.shape[0] != want0 || v->type.shape[1] != want1)))
			return anes_mil_fail(c, op, -EINVAL, "%s has shape %s (H %llu, I %llu)", names[k],
			                     anes_mil_shape_str(&v->type, sb, sizeof sb), (unsigned long long)H,
			                     (unsigned long long)x->shape[2]);
	}
	const char *states[2] = {"initial_h", lstm ? "initial_c" : NULL};
	for (int k = 0; k < 2 && states[k]; k++) {
		const anes_mil_value *v = V(fn, op, states[k]);
		if (mil_same_dtype(c, op, "x", xv, states[k], v))
			return -EINVAL;
		if (v->type.count != x->shape[1] * D * H || v->type.shape[v->type.rank - 1] != D * H)
			return anes_mil_fail(c, op, -EINVAL, "%s must be [b, %llu], is %s", states[k], (unsigned long long)(D * H),
			                     anes_mil_shape_str(&v->type, sb, sizeof sb));
	}
	uint64_t shape[3] = {seq ? x->shape[0] : 1, x->shape[1], D * H};
	if (mil_set_type(c, op, &out[0], x->dtype, 3, shape))
		return -EINVAL;
	for (uint32_t k = 1; k < op->n_outputs; k++)
		if (mil_set_type(c, op, &out[k], x->dtype, 2, shape + 1))
			return -EINVAL;
	return 0;
}


/* ---- reverse_sequence, reshape_like ---- */

static int infer_reverse_sequence(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                                  anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x"), *lv = V(fn, op, "lengths");
	uint32_t sa, ba;

	if (need_int(c, op, "lengths", lv) || opt_axis(c, fn, op, "seq_axis", 0, xv->type.rank, &sa) ||
	    opt_axis(c, fn, op, "batch_axis", 0, xv->type.rank, &ba))
		return -EINVAL;
	if (sa == ba)
		return anes_mil_fail(c, op, -EINVAL, "seq_axis and batch_axis must differ");
	if (lv->type.rank != 1 || lv->type.shape[0] != xv->type.shape[ba])
		return anes_mil_fail(c, op, -EINVAL, "lengths must be [%llu] (the batch dim)",
		                     (unsigned long long)xv->type.shape[ba]);
	for (uint64_t i = 0; lv->kind == ANES_MIL_V_CONST && i < lv->type.count; i++) {
		double l = anes_mil_load_f64(lv->data, lv->type.dtype, i);
		if (l < 0 || l > (double)xv->type.shape[sa])
			return anes_mil_fail(c, op, -EINVAL, "lengths[%llu] = %.0f is out of range [0, %llu]", (unsigned long long)i,
			                     l, (unsigned long long)xv->type.shape[sa]);
	}
	out[0] = xv->type;
	return 0;
}

static int infer_reshape_like(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                              anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	const anes_mil_arg *refs = anes_mil_op_arg(op, "ref_tensors");
	int64_t b[ANES_MAX_RANK], e[ANES_MAX_RANK];
	bool em[ANES_MAX_RANK] = {false};
	uint64_t shape[ANES_MAX_RANK], count = 1;
	uint32_t nb, ne, r = 0;

	if (refs->n > ANES_MAX_RANK || const_list(c, op, "begins", V(fn, op, "begins"), b, ANES_MAX_RANK, &nb) ||
	    const_list(c, op, "ends", V(fn, op, "ends"), e, ANES_MAX_RANK, &ne) || nb != refs->n || ne != refs->n)
		return anes_mil_fail(c, op, -EINVAL, "begins and ends need one entry per ref_tensor (at most %d)", ANES_MAX_RANK);
	const anes_mil_value *mv = V(fn, op, "end_masks");
	if (mv) {
		if (mv->kind != ANES_MIL_V_CONST || mv->type.dtype != ANES_DT_BOOL || mv->type.count != refs->n ||
		    mv->type.rank > 1)
			return anes_mil_fail(c, op, -EINVAL, "end_masks must be a bool list of %u elements", refs->n);
		for (uint32_t i = 0; i < refs->n; i++)
			em[i] = ((const uint8_t *)mv->data)[i] != 0;
	}
	for (uint32_t i = 0; i < refs->n; i++) {
		const anes_mil_type *t = &fn->values[refs->vals[i]].type;
		int64_t lo = b[i] < 0 ? b[i] + t->rank : b[i], hi = em[i] ? t->rank : e[i] < 0 ? e[i] + t->rank : e[i];
		if (lo < 0 || hi > (int64_t)t->rank || lo > hi)
			return anes_mil_fail(c, op, -EINVAL, "ref_tensors[%u]: [%lld, %lld) is not a range of its %u dims", i,
			                     (long long)b[i], (long long)e[i], t->rank);
		for (int64_t d = lo; d < hi; d++) {
			if (r == ANES_MAX_RANK)
				return anes_mil_fail(c, op, -EINVAL, "result rank exceeds %d", ANES_MAX_RANK);
			shape[r++] = t->shape[d];
			if (__builtin_mul_overflow(count, t->shape[d], &count) || count > xv->type.count)
				return anes_mil_fail(c, op, -EINVAL, "the reference shape has more elements than x (%llu)",
				                     (unsigned long long)xv->type.count);
		}
	}
	if (count != xv->type.count)
		return anes_mil_fail(c, op, -EINVAL, "the reference shape has %llu elements, x has %llu",
		                     (unsigned long long)count, (unsigned long long)xv->type.count);
	return mil_set_type(c, op, &out[0], xv->type.dtype, r, shape);
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
static const anes_mil_argdef a_argreduce[] = {
	{"x", REQ}, {"axis", CONST}, {"keep_dims", CONST}, {"output_dtype", CONST}, {NULL, 0}};
static const anes_mil_argdef a_cumsum[] = {
	{"x", REQ}, {"axis", CONST}, {"exclusive", CONST}, {"reverse", CONST}, {NULL, 0}};
static const anes_mil_argdef a_topk[] = {
	{"x", REQ}, {"k", CONST}, {"axis", CONST}, {"ascending", CONST}, {"sort", CONST}, {"return_indices", CONST},
	{"output_indices_dtype", CONST}, {NULL, 0}};
static const anes_mil_argdef a_argsort[] = {{"x", REQ}, {"axis", CONST}, {"ascending", CONST}, {NULL, 0}};
static const anes_mil_argdef a_batch_norm[] = {
	{"x", REQ}, {"mean", REQ | CONST}, {"variance", REQ | CONST}, {"gamma", CONST}, {"beta", CONST},
	{"epsilon", CONST}, {NULL, 0}};
static const anes_mil_argdef a_instance_norm[] = {
	{"x", REQ}, {"gamma", CONST}, {"beta", CONST}, {"epsilon", CONST}, {NULL, 0}};
static const anes_mil_argdef a_l2_norm[] = {{"x", REQ}, {"epsilon", CONST}, {NULL, 0}};
static const anes_mil_argdef a_lrn[] = {
	{"x", REQ}, {"size", REQ | CONST}, {"alpha", CONST}, {"beta", CONST}, {"k", CONST}, {NULL, 0}};

static const anes_mil_argdef a_stack[] = {{"values", REQ | TUPLE}, {"axis", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_reverse[] = {{"x", REQ}, {"axes", CONST}, {NULL, 0}};
static const anes_mil_argdef a_gather_nd[] = {
	{"x", REQ}, {"indices", REQ}, {"batch_dims", CONST}, {"validate_indices", CONST}, {NULL, 0}};
static const anes_mil_argdef a_gather_along[] = {
	{"x", REQ}, {"indices", REQ}, {"axis", CONST}, {"validate_indices", CONST}, {NULL, 0}};
static const anes_mil_argdef a_scatter[] = {
	{"data", REQ}, {"indices", REQ}, {"updates", REQ}, {"axis", CONST}, {"mode", CONST},
	{"validate_indices", CONST}, {NULL, 0}};
static const anes_mil_argdef a_scatter_nd[] = {
	{"data", REQ}, {"indices", REQ}, {"updates", REQ}, {"mode", CONST}, {"validate_indices", CONST}, {NULL, 0}};
static const anes_mil_argdef a_slice_update[] = {
	{"x", REQ}, {"update", REQ}, {"begin", REQ}, {"end", REQ}, {"stride", CONST}, {"begin_mask", CONST},
	{"end_mask", CONST}, {"squeeze_mask", CONST}, {NULL, 0}};
static const anes_mil_argdef a_band_part[] = {{"x", REQ}, {"lower", CONST}, {"upper", CONST}, {NULL, 0}};
static const anes_mil_argdef a_fill[] = {{"shape", REQ | CONST}, {"value", CONST}, {NULL, 0}};
static const anes_mil_argdef a_fill_like[] = {{"ref_tensor", REQ}, {"value", CONST}, {NULL, 0}};
static const anes_mil_argdef a_range_1d[] = {
	{"end", REQ | CONST}, {"start", REQ | CONST}, {"step", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_one_hot[] = {
	{"indices", REQ}, {"one_hot_vector_size", REQ | CONST}, {"axis", CONST}, {"on_value", CONST},
	{"off_value", CONST}, {NULL, 0}};
static const anes_mil_argdef a_block[] = {{"x", REQ}, {"block_size", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_pixel_shuffle[] = {{"x", REQ}, {"upscale_factor", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_pixel_unshuffle[] = {{"x", REQ}, {"downscale_factor", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_flatten2d[] = {{"x", REQ}, {"axis", CONST}, {NULL, 0}};
static const anes_mil_argdef a_sliding[] = {
	{"x", REQ}, {"axis", REQ | CONST}, {"size", REQ | CONST}, {"stride", CONST}, {NULL, 0}};

static const anes_mil_argdef a_pool[] = {
	{"x", REQ}, {"kernel_sizes", REQ | CONST}, {"strides", CONST}, {"pad_type", CONST}, {"pad", CONST},
	{"ceil_mode", CONST}, {NULL, 0}};
static const anes_mil_argdef a_avg_pool[] = {
	{"x", REQ}, {"kernel_sizes", REQ | CONST}, {"strides", CONST}, {"pad_type", CONST}, {"pad", CONST},
	{"ceil_mode", CONST}, {"exclude_padding_from_average", CONST}, {NULL, 0}};
static const anes_mil_argdef a_conv_t[] = {
	{"x", REQ}, {"weight", REQ}, {"bias", 0}, {"pad", CONST}, {"output_shape", CONST},
	{"pad_type", CONST}, {"strides", CONST}, {"dilations", CONST}, {"groups", CONST}, {NULL, 0}};
static const anes_mil_argdef a_upsample_nn[] = {
	{"x", REQ}, {"scale_factor_height", CONST}, {"scale_factor_width", CONST}, {NULL, 0}};
static const anes_mil_argdef a_upsample_bl[] = {
	{"x", REQ}, {"scale_factor_height", CONST}, {"scale_factor_width", CONST}, {"align_corners", CONST},
	{"half_pixel_centers", CONST}, {NULL, 0}};
static const anes_mil_argdef a_resize_nn[] = {
	{"x", REQ}, {"target_size_height", REQ | CONST}, {"target_size_width", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_resize_bl[] = {
	{"x", REQ}, {"target_size_height", CONST}, {"target_size_width", CONST}, {"sampling_mode", CONST}, {NULL, 0}};
static const anes_mil_argdef a_crop[] = {{"x", REQ}, {"crop_height", REQ | CONST}, {"crop_width", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_einsum[] = {{"values", REQ | TUPLE}, {"equation", REQ | CONST}, {NULL, 0}};

static const anes_mil_argdef a_lstm[] = {
	{"x", REQ}, {"initial_h", REQ}, {"initial_c", REQ}, {"weight_ih", REQ}, {"weight_hh", REQ},
	{"bias", 0}, {"peephole", 0}, {"weight_ih_back", 0}, {"weight_hh_back", 0}, {"bias_back", 0},
	{"peephole_back", 0}, {"direction", CONST}, {"output_sequence", CONST}, {"recurrent_activation", CONST},
	{"cell_activation", CONST}, {"activation", CONST}, {"clip", CONST}, {NULL, 0}};
static const anes_mil_argdef a_gru[] = {
	{"x", REQ}, {"initial_h", REQ}, {"weight_ih", REQ}, {"weight_hh", REQ}, {"bias", 0}, {"input_bias", 0},
	{"direction", CONST}, {"output_sequence", CONST}, {"recurrent_activation", CONST}, {"activation", CONST},
	{"reset_after", CONST}, {NULL, 0}};
static const anes_mil_argdef a_rnn[] = {
	{"x", REQ}, {"initial_h", REQ}, {"weight_ih", REQ}, {"weight_hh", REQ}, {"bias", 0},
	{"direction", CONST}, {"output_sequence", CONST}, {"activation", CONST}, {NULL, 0}};

static const anes_mil_argdef a_reverse_seq[] = {
	{"x", REQ}, {"lengths", REQ}, {"seq_axis", CONST}, {"batch_axis", CONST}, {NULL, 0}};
static const anes_mil_argdef a_reshape_like[] = {
	{"x", REQ}, {"ref_tensors", REQ | TUPLE}, {"begins", REQ | CONST}, {"ends", REQ | CONST}, {"end_masks", CONST},
	{NULL, 0}};

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
	{"topk", 0, a_topk, infer_topk},
	{"argsort", 1, a_argsort, infer_argsort},
	/* normalizations */
	{"batch_norm", 1, a_batch_norm, infer_batch_norm},
	{"instance_norm", 1, a_instance_norm, infer_instance_norm},
	{"l2_norm", 1, a_l2_norm, infer_l2_norm},
	{"local_response_norm", 1, a_lrn, infer_lrn},
	/* data movement */
	{"stack", 1, a_stack, infer_stack},
	{"reverse", 1, a_reverse, infer_reverse},
	{"gather_nd", 1, a_gather_nd, infer_gather_nd},
	{"gather_along_axis", 1, a_gather_along, infer_gather_along},
	{"scatter", 1, a_scatter, infer_scatter},
	{"scatter_nd", 1, a_scatter_nd, infer_scatter_nd},
	{"scatter_along_axis", 1, a_scatter, infer_scatter_along},
	{"slice_update", 1, a_slice_update, infer_slice_update},
	{"band_part", 1, a_band_part, infer_band_part},
	{"fill", 1, a_fill, infer_fill},
	{"fill_like", 1, a_fill_like, infer_fill_like},
	{"range_1d", 1, a_range_1d, infer_range_1d},
	{"shape", 1, a_x, infer_shape},
	{"one_hot", 1, a_one_hot, infer_one_hot},
	{"depth_to_space", 1, a_block, infer_blocks},
	{"space_to_depth", 1, a_block, infer_blocks},
	{"pixel_shuffle", 1, a_pixel_shuffle, infer_blocks},
	{"pixel_unshuffle", 1, a_pixel_unshuffle, infer_blocks},
	{"flatten2d", 1, a_flatten2d, infer_flatten2d},
	{"sliding_windows", 1, a_sliding, infer_sliding_windows},
	/* vision, einsum */
	{"max_pool", 1, a_pool, infer_pool},
	{"avg_pool", 1, a_avg_pool, infer_pool},
	{"l2_pool", 1, a_pool, infer_pool},
	{"conv_transpose", 1, a_conv_t, infer_conv_transpose},
	{"upsample_nearest_neighbor", 1, a_upsample_nn, infer_resize},
	{"upsample_bilinear", 1, a_upsample_bl, infer_resize},
	{"resize_nearest_neighbor", 1, a_resize_nn, infer_resize},
	{"resize_bilinear", 1, a_resize_bl, infer_resize},
	{"crop", 1, a_crop, infer_crop},
	{"einsum", 1, a_einsum, infer_einsum},
	/* recurrent */
	{"lstm", 3, a_lstm, infer_recurrent},
	{"gru", 2, a_gru, infer_recurrent},
	{"rnn", 2, a_rnn, infer_recurrent},
	{"reverse_sequence", 1, a_reverse_seq, infer_reverse_sequence},
	{"reshape_like", 1, a_reshape_like, infer_reshape_like},
};

const anes_mil_opdef *mil_ops_ext_find(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
		if (strlen(ops[i].name) == len && memcmp(ops[i].name, name, len) == 0)
			return &ops[i];
	return NULL;
}
