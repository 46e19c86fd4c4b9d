/* SPDX-License-Identifier: MIT */
/*
 * The op table: argument schemas and type/shape inference.  Adding an op means
 * adding an infer function and a row in ops[] here, and a row in the backend's
 * kernel table (daemon/cpu/cpu_ops.c).
 */
#include <errno.h>
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
	if (anes_mil_type_init(t, dtype, rank, shape))
		return anes_mil_fail(c, op, -EINVAL, "result is too large");
	return 0;
}

static int need_numeric(anes_mil_check *c, const anes_mil_op *op, const char *arg, const anes_mil_value *v)
{
	if (!anes_mil_dtype_is_float(v->type.dtype) && !anes_mil_dtype_is_int(v->type.dtype))
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be numeric, is %s", arg,
		                     anes_mil_dtype_name(v->type.dtype));
	return 0;
}

/* optional constant bool argument */
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

static int const_ints(anes_mil_check *c, const anes_mil_op *op, const char *name, const anes_mil_value *v,
                      int64_t *out, uint32_t *ret_n)
{
	if (anes_mil_const_ints(v, out, ANES_MAX_RANK, ret_n))
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a constant integer list of at most %d elements",
		                     name, ANES_MAX_RANK);
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

/* numpy broadcast of a and b into out */
int anes_mil_broadcast(const anes_mil_type *a, const anes_mil_type *b, uint32_t *ret_rank, uint64_t *shape)
{
	uint32_t r = a->rank > b->rank ? a->rank : b->rank;

	for (uint32_t i = 0; i < r; i++) {
		uint64_t da = i < r - a->rank ? 1 : a->shape[i - (r - a->rank)];
		uint64_t db = i < r - b->rank ? 1 : b->shape[i - (r - b->rank)];
		if (da != db && da != 1 && db != 1)
			return -EINVAL;
		shape[i] = da == 1 ? db : da;
	}
	*ret_rank = r;
	return 0;
}

/* ---- ops ---- */

static int infer_identity(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	(void)c;
	out[0] = V(fn, op, "x")->type;
	return 0;
}

static int infer_slice_by_size(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                               anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	int64_t begin[ANES_MAX_RANK], size[ANES_MAX_RANK];
	uint64_t shape[ANES_MAX_RANK];
	uint32_t nb, ns;
	char sb[SHAPE_STR_LEN];

	if (const_ints(c, op, "begin", V(fn, op, "begin"), begin, &nb) ||
	    const_ints(c, op, "size", V(fn, op, "size"), size, &ns))
		return -EINVAL;
	if (nb != x->rank || ns != x->rank)
		return anes_mil_fail(c, op, -EINVAL, "begin and size need %u elements (rank of x), have %u and %u",
		                     x->rank, nb, ns);
	for (uint32_t i = 0; i < x->rank; i++) {
		int64_t d = (int64_t)x->shape[i], b = begin[i], s = size[i];
		if (b < 0 || b >= d || (s != -1 && (s < 1 || s > d - b)))
			return anes_mil_fail(c, op, -EINVAL,
			                     "slice out of bounds on axis %u: begin %lld, size %lld, x is %s", i,
			                     (long long)b, (long long)s, anes_mil_shape_str(x, sb, sizeof sb));
		shape[i] = (uint64_t)(s == -1 ? d - b : s);
	}
	return set_type(c, op, &out[0], x->dtype, x->rank, shape);
}

static int infer_reshape(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	int64_t s[ANES_MAX_RANK];
	uint64_t shape[ANES_MAX_RANK], known = 1;
	uint32_t n;
	int infer_at = -1;
	char sb[SHAPE_STR_LEN];

	if (const_ints(c, op, "shape", V(fn, op, "shape"), s, &n))
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		if (s[i] == -1 && infer_at < 0) {
			infer_at = (int)i;
			continue;
		}
		if (s[i] < 1 || (uint64_t)s[i] > ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "bad dimension %lld in shape", (long long)s[i]);
		shape[i] = (uint64_t)s[i];
		if (__builtin_mul_overflow(known, shape[i], &known))
			return anes_mil_fail(c, op, -EINVAL, "shape is too large");
	}
	if (infer_at >= 0) {
		if (x->count % known)
			return anes_mil_fail(c, op, -EINVAL, "cannot reshape %s (%llu elements) with a -1 dimension",
			                     anes_mil_shape_str(x, sb, sizeof sb), (unsigned long long)x->count);
		shape[infer_at] = x->count / known;
		known = x->count;
	}
	if (known != x->count)
		return anes_mil_fail(c, op, -EINVAL, "cannot reshape %s (%llu elements) to %llu elements",
		                     anes_mil_shape_str(x, sb, sizeof sb), (unsigned long long)x->count,
		                     (unsigned long long)known);
	return set_type(c, op, &out[0], x->dtype, n, shape);
}

static int infer_transpose(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	int64_t perm[ANES_MAX_RANK];
	uint64_t shape[ANES_MAX_RANK];
	bool seen[ANES_MAX_RANK] = {false};
	uint32_t n;

	if (const_ints(c, op, "perm", V(fn, op, "perm"), perm, &n))
		return -EINVAL;
	if (n != x->rank)
		return anes_mil_fail(c, op, -EINVAL, "perm has %u elements, x has rank %u", n, x->rank);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t a = 0;
		if (norm_axis(c, op, "perm entry", perm[i], x->rank, &a))
			return -EINVAL;
		if (seen[a])
			return anes_mil_fail(c, op, -EINVAL, "perm is not a permutation (axis %u repeated)", a);
		seen[a] = true;
		shape[i] = x->shape[a];
	}
	return set_type(c, op, &out[0], x->dtype, n, shape);
}

static int infer_matmul(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type, *y = &V(fn, op, "y")->type;
	bool tx, ty;
	char sx[SHAPE_STR_LEN], sy[SHAPE_STR_LEN];
	anes_mil_type bx, by;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t br;

	if (opt_bool(c, fn, op, "transpose_x", false, &tx) || opt_bool(c, fn, op, "transpose_y", false, &ty))
		return -EINVAL;
	if (!anes_mil_dtype_is_float(x->dtype) || x->dtype != y->dtype)
		return anes_mil_fail(c, op, -EINVAL, "x and y must have the same float dtype, are %s and %s",
		                     anes_mil_dtype_name(x->dtype), anes_mil_dtype_name(y->dtype));
	if (x->rank < 1 || y->rank < 1)
		return anes_mil_fail(c, op, -EINVAL, "x and y must have rank >= 1");
	/* rank-1 operands: x [K] -> [1, K], y [K] -> [K, 1] (transpose flags ignored) */
	uint64_t m, kx, ky, n;
	if (x->rank == 1) {
		m = 1;
		kx = x->shape[0];
	} else {
		m = x->shape[x->rank - (tx ? 1 : 2)];
		kx = x->shape[x->rank - (tx ? 2 : 1)];
	}
	if (y->rank == 1) {
		ky = y->shape[0];
		n = 1;
	} else {
		ky = y->shape[y->rank - (ty ? 1 : 2)];
		n = y->shape[y->rank - (ty ? 2 : 1)];
	}
	if (kx != ky)
		return anes_mil_fail(c, op, -EINVAL, "inner dimensions differ: x is %s, y is %s%s%s",
		                     anes_mil_shape_str(x, sx, sizeof sx), anes_mil_shape_str(y, sy, sizeof sy),
		                     tx ? " (transpose_x)" : "", ty ? " (transpose_y)" : "");
	memset(&bx, 0, sizeof bx);
	memset(&by, 0, sizeof by);
	bx.rank = x->rank > 2 ? x->rank - 2 : 0;
	by.rank = y->rank > 2 ? y->rank - 2 : 0;
	memcpy(bx.shape, x->shape, bx.rank * sizeof(uint64_t));
	memcpy(by.shape, y->shape, by.rank * sizeof(uint64_t));
	if (anes_mil_broadcast(&bx, &by, &br, shape))
		return anes_mil_fail(c, op, -EINVAL, "batch dimensions do not broadcast: x is %s, y is %s",
		                     anes_mil_shape_str(x, sx, sizeof sx), anes_mil_shape_str(y, sy, sizeof sy));
	uint32_t r = br;
	if (x->rank >= 2)
		shape[r++] = m;
	if (y->rank >= 2)
		shape[r++] = n;
	return set_type(c, op, &out[0], x->dtype, r, shape);
}

static int infer_binary(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x"), *yv = V(fn, op, "y");
	uint64_t shape[ANES_MAX_RANK];
	uint32_t r;
	char sx[SHAPE_STR_LEN], sy[SHAPE_STR_LEN];

	if (need_numeric(c, op, "x", xv) || need_numeric(c, op, "y", yv))
		return -EINVAL;
	if (xv->type.dtype != yv->type.dtype)
		return anes_mil_fail(c, op, -EINVAL, "x and y have different dtypes (%s, %s)",
		                     anes_mil_dtype_name(xv->type.dtype), anes_mil_dtype_name(yv->type.dtype));
	if (anes_mil_broadcast(&xv->type, &yv->type, &r, shape))
		return anes_mil_fail(c, op, -EINVAL, "shapes do not broadcast: x is %s, y is %s",
		                     anes_mil_shape_str(&xv->type, sx, sizeof sx),
		                     anes_mil_shape_str(&yv->type, sy, sizeof sy));
	return set_type(c, op, &out[0], xv->type.dtype, r, shape);
}

static int infer_cast(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	const char *s = anes_mil_const_string(V(fn, op, "dtype"));
	int dt;

	if (!s)
		return anes_mil_fail(c, op, -EINVAL, "argument 'dtype' must be a string");
	dt = anes_mil_dtype_parse(s, strlen(s));
	if (dt < 0 || dt == ANES_MIL_DT_STRING)
		return anes_mil_fail(c, op, -ENOTSUP, "unsupported dtype '%.32s'", s);
	return set_type(c, op, &out[0], dt, x->rank, x->shape);
}

static int infer_concat(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_arg *vals = anes_mil_op_arg(op, "values");
	int64_t axis_v;
	uint32_t n, axis = 0;
	bool interleave;
	uint64_t shape[ANES_MAX_RANK];
	char s0[SHAPE_STR_LEN], si[SHAPE_STR_LEN];

	if (anes_mil_const_ints(V(fn, op, "axis"), &axis_v, 1, &n) || n != 1 || V(fn, op, "axis")->type.rank != 0)
		return anes_mil_fail(c, op, -EINVAL, "argument 'axis' must be an integer scalar");
	if (opt_bool(c, fn, op, "interleave", false, &interleave))
		return -EINVAL;
	const anes_mil_type *t0 = &fn->values[vals->vals[0]].type;
	if (t0->rank < 1)
		return anes_mil_fail(c, op, -EINVAL, "cannot concatenate scalars");
	if (norm_axis(c, op, "axis", axis_v, t0->rank, &axis))
		return -EINVAL;
	memcpy(shape, t0->shape, sizeof shape);
	for (uint32_t i = 1; i < vals->n; i++) {
		const anes_mil_type *t = &fn->values[vals->vals[i]].type;
		bool ok = t->dtype == t0->dtype && t->rank == t0->rank;
		for (uint32_t d = 0; ok && d < t0->rank; d++)
			if ((d != axis || interleave) && t->shape[d] != t0->shape[d])
				ok = false;
		if (!ok)
			return anes_mil_fail(c, op, -EINVAL, "values[%u] (%s %s) does not match values[0] (%s %s)%s", i,
			                     anes_mil_dtype_name(t->dtype), anes_mil_shape_str(t, si, sizeof si),
			                     anes_mil_dtype_name(t0->dtype), anes_mil_shape_str(t0, s0, sizeof s0),
			                     interleave ? " (interleave needs equal shapes)" : "");
		shape[axis] += t->shape[axis];
		if (shape[axis] > ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "result is too large");
	}
	return set_type(c, op, &out[0], t0->dtype, t0->rank, shape);
}

static int infer_reduce(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	const anes_mil_value *av = V(fn, op, "axes");
	const anes_mil_type *x = &xv->type;
	bool keep, red[ANES_MAX_RANK] = {false};
	int64_t axes[ANES_MAX_RANK];
	uint64_t shape[ANES_MAX_RANK];
	uint32_t n, r = 0;

	if (need_numeric(c, op, "x", xv) || opt_bool(c, fn, op, "keep_dims", false, &keep))
		return -EINVAL;
	if (av) {
		if (const_ints(c, op, "axes", av, axes, &n))
			return -EINVAL;
		for (uint32_t i = 0; i < n; i++) {
			uint32_t a = 0;
			if (norm_axis(c, op, "axis", axes[i], x->rank, &a))
				return -EINVAL;
			if (red[a])
				return anes_mil_fail(c, op, -EINVAL, "axis %u repeated in axes", a);
			red[a] = true;
		}
	} else {
		for (uint32_t i = 0; i < x->rank; i++)
			red[i] = true;
	}
	for (uint32_t i = 0; i < x->rank; i++) {
		if (!red[i])
			shape[r++] = x->shape[i];
		else if (keep)
			shape[r++] = 1;
	}
	return set_type(c, op, &out[0], x->dtype, r, shape);
}

/* ---- table ---- */

#define REQ ANES_MIL_ARG_REQ
#define CONST ANES_MIL_ARG_CONST
#define TUPLE ANES_MIL_ARG_TUPLE

static const anes_mil_argdef a_x[] = {{"x", REQ}, {NULL, 0}};
static const anes_mil_argdef a_xy[] = {{"x", REQ}, {"y", REQ}, {NULL, 0}};
static const anes_mil_argdef a_slice[] = {{"x", REQ}, {"begin", REQ | CONST}, {"size", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_reshape[] = {{"x", REQ}, {"shape", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_transpose[] = {{"x", REQ}, {"perm", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_matmul[] = {
	{"x", REQ}, {"y", REQ}, {"transpose_x", CONST}, {"transpose_y", CONST}, {NULL, 0}};
static const anes_mil_argdef a_cast[] = {{"x", REQ}, {"dtype", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_concat[] = {
	{"values", REQ | TUPLE}, {"axis", REQ | CONST}, {"interleave", CONST}, {NULL, 0}};
static const anes_mil_argdef a_reduce[] = {{"x", REQ}, {"axes", CONST}, {"keep_dims", CONST}, {NULL, 0}};

static const anes_mil_opdef ops[] = {
	{"add", 1, a_xy, infer_binary},
	{"cast", 1, a_cast, infer_cast},
	{"concat", 1, a_concat, infer_concat},
	{"identity", 1, a_x, infer_identity},
	{"matmul", 1, a_matmul, infer_matmul},
	{"mul", 1, a_xy, infer_binary},
	{"reduce_sum", 1, a_reduce, infer_reduce},
	{"reshape", 1, a_reshape, infer_reshape},
	{"slice_by_size", 1, a_slice, infer_slice_by_size},
	{"sub", 1, a_xy, infer_binary},
	{"transpose", 1, a_transpose, infer_transpose},
};

const anes_mil_opdef *anes_mil_opdef_find(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
		if (strlen(ops[i].name) == len && memcmp(ops[i].name, name, len) == 0)
			return &ops[i];
	return NULL;
}
