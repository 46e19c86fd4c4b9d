/* SPDX-License-Identifier: MIT */
/*
 * The op table: argument schemas and type/shape inference.  Adding an op means
 * adding an infer function and a row in ops[] here, and a row in the backend's
 * kernel table (daemon/cpu/cpu_ops.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "mil_internal.h"

#define SHAPE_STR_LEN (ANES_MAX_RANK * 12 + 4)

static const anes_mil_value *V(const anes_mil_function *fn, const anes_mil_op *op, const char *name)
{
	return anes_mil_op_value(fn, op, name);
}

/* The check of an argument's dtype: fails with "argument 'ARG' must be WHAT, is DTYPE" unless ok. */
static int need_dtype(anes_mil_check *c, const anes_mil_op *op, const char *arg, const anes_mil_value *v,
                      bool ok, const char *what)
{
	if (!ok)
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be %s, is %s", arg, what,
		                     anes_mil_dtype_name(v->type.dtype));
	return 0;
}

static int need_numeric(anes_mil_check *c, const anes_mil_op *op, const char *arg, const anes_mil_value *v)
{
	return need_dtype(c, op, arg, v,
	                  anes_mil_dtype_is_float(v->type.dtype) || anes_mil_dtype_is_int(v->type.dtype),
	                  "numeric");
}

static int const_ints(anes_mil_check *c, const anes_mil_op *op, const char *name, const anes_mil_value *v,
                      int64_t *out, uint32_t *ret_n)
{
	if (anes_mil_const_ints(v, out, ANES_MAX_RANK, ret_n))
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a constant integer list of at most %d elements",
		                     name, ANES_MAX_RANK);
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
	return mil_set_type(c, op, &out[0], x->dtype, x->rank, shape);
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
	return mil_set_type(c, op, &out[0], x->dtype, n, shape);
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
		if (mil_norm_axis(c, op, "perm entry", perm[i], x->rank, &a))
			return -EINVAL;
		if (seen[a])
			return anes_mil_fail(c, op, -EINVAL, "perm is not a permutation (axis %u repeated)", a);
		seen[a] = true;
		shape[i] = x->shape[a];
	}
	return mil_set_type(c, op, &out[0], x->dtype, n, shape);
}

static int infer_matmul(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type, *y = &V(fn, op, "y")->type;
	bool tx, ty;
	char sx[SHAPE_STR_LEN], sy[SHAPE_STR_LEN];
	anes_mil_type bx, by;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t br;

	if (mil_opt_bool(c, fn, op, "transpose_x", false, &tx) || mil_opt_bool(c, fn, op, "transpose_y", false, &ty))
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
	return mil_set_type(c, op, &out[0], x->dtype, r, shape);
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
	return mil_set_type(c, op, &out[0], xv->type.dtype, r, shape);
}

static int infer_cast(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	const char *s = anes_mil_const_string(V(fn, op, "dtype"));
	int dt;

	if (!s)
		return anes_mil_fail(c, op, -EINVAL, "argument 'dtype' must be a string");
	dt = anes_mil_dtype_parse(s, strlen(s));
	if (dt < 0 || dt == ANES_MIL_DT_STRING || anes_mil_dtype_is_storage(dt))
		return anes_mil_fail(c, op, -ENOTSUP, "unsupported dtype '%.32s'", s);
	return mil_set_type(c, op, &out[0], dt, x->rank, x->shape);
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
	if (mil_opt_bool(c, fn, op, "interleave", false, &interleave))
		return -EINVAL;
	const anes_mil_type *t0 = &fn->values[vals->vals[0]].type;
	if (t0->rank < 1)
		return anes_mil_fail(c, op, -EINVAL, "cannot concatenate scalars");
	if (mil_norm_axis(c, op, "axis", axis_v, t0->rank, &axis))
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
	return mil_set_type(c, op, &out[0], t0->dtype, t0->rank, shape);
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

	if (need_numeric(c, op, "x", xv) || mil_opt_bool(c, fn, op, "keep_dims", false, &keep))
		return -EINVAL;
	if (av) {
		if (const_ints(c, op, "axes", av, axes, &n))
			return -EINVAL;
		for (uint32_t i = 0; i < n; i++) {
			uint32_t a = 0;
			if (mil_norm_axis(c, op, "axis", axes[i], x->rank, &a))
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
	return mil_set_type(c, op, &out[0], x->dtype, r, shape);
}

/* ---- helpers for the ops below ---- */

/* constant bool list of exactly n entries (absent: all false) */
static int opt_bools(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                     uint32_t n, bool *out)
{
	const anes_mil_value *v = V(fn, op, name);

	for (uint32_t i = 0; i < n; i++)
		out[i] = false;
	if (!v)
		return 0;
	if (v->kind != ANES_MIL_V_CONST || v->type.dtype != ANES_DT_BOOL || v->type.rank > 1 || v->type.count != n)
		return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a bool list of %u elements", name, n);
	for (uint32_t i = 0; i < n; i++)
		out[i] = ((const uint8_t *)v->data)[i] != 0;
	return 0;
}

static int infer_unary(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	const char *name = op->def->name;
	double d;

	if (mil_need_float(c, op, "x", xv))
		return -EINVAL;
	if (mil_opt_f64(c, fn, op, "epsilon", 0, &d))
		return -EINVAL;
	if (strcmp(name, "clip") == 0) {
		double lo, hi;
		if (mil_opt_f64(c, fn, op, "alpha", 0, &lo) || mil_opt_f64(c, fn, op, "beta", 0, &hi))
			return -EINVAL;
		if (!(lo <= hi))
			return anes_mil_fail(c, op, -EINVAL, "alpha (%g) must not exceed beta (%g)", lo, hi);
	}
	if (strcmp(name, "gelu") == 0 && V(fn, op, "mode")) {
		const char *m = anes_mil_const_string(V(fn, op, "mode"));
		if (!m || (strcmp(m, "EXACT") && strcmp(m, "TANH_APPROXIMATION") && strcmp(m, "SIGMOID_APPROXIMATION")))
			return anes_mil_fail(c, op, -EINVAL,
			                     "mode must be \"EXACT\", \"TANH_APPROXIMATION\" or \"SIGMOID_APPROXIMATION\"");
	}
	out[0] = xv->type;
	return 0;
}

static int infer_softmax(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x");
	int64_t axis;
	uint32_t a;

	if (mil_need_float(c, op, "x", xv) || mil_opt_int(c, fn, op, "axis", -1, INT32_MIN, INT32_MAX, &axis))
		return -EINVAL;
	if (xv->type.rank < 1)
		return anes_mil_fail(c, op, -EINVAL, "x must have rank >= 1");
	if (mil_norm_axis(c, op, "axis", axis, xv->type.rank, &a))
		return -EINVAL;
	out[0] = xv->type;
	return 0;
}

static int infer_layer_norm(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                            anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x"), *av = V(fn, op, "axes");
	const anes_mil_type *x = &xv->type;
	bool red[ANES_MAX_RANK] = {false};
	uint64_t nshape[ANES_MAX_RANK];
	uint32_t nr = 0;
	double eps;
	char sb[SHAPE_STR_LEN], sn[SHAPE_STR_LEN];

	if (mil_need_float(c, op, "x", xv) || mil_opt_f64(c, fn, op, "epsilon", 1e-5, &eps))
		return -EINVAL;
	if (av) {
		int64_t axes[ANES_MAX_RANK];
		uint32_t n;
		if (const_ints(c, op, "axes", av, axes, &n))
			return -EINVAL;
		for (uint32_t i = 0; i < n; i++) {
			uint32_t a = 0;
			if (mil_norm_axis(c, op, "axis", axes[i], x->rank, &a))
				return -EINVAL;
			if (red[a])
				return anes_mil_fail(c, op, -EINVAL, "axis %u repeated in axes", a);
			red[a] = true;
		}
	} else {
		for (uint32_t i = 0; i < x->rank; i++)
			red[i] = true;
	}
	for (uint32_t i = 0; i < x->rank; i++)
		if (red[i])
			nshape[nr++] = x->shape[i];
	for (int k = 0; k < 2; k++) {
		const char *nm = k ? "beta" : "gamma";
		const anes_mil_value *g = V(fn, op, nm);
		if (!g)
			continue;
		bool ok = g->type.dtype == x->dtype && g->type.rank == nr;
		for (uint32_t i = 0; ok && i < nr; i++)
			ok = g->type.shape[i] == nshape[i];
		if (!ok) {
			anes_mil_type t;
			memset(&t, 0, sizeof t);
			t.rank = nr;
			memcpy(t.shape, nshape, sizeof nshape);
			return anes_mil_fail(c, op, -EINVAL, "%s must be %s %s (the normalized dims of x), is %s %s", nm,
			                     anes_mil_dtype_name(x->dtype), anes_mil_shape_str(&t, sn, sizeof sn),
			                     anes_mil_dtype_name(g->type.dtype), anes_mil_shape_str(&g->type, sb, sizeof sb));
		}
	}
	out[0] = *x;
	return 0;
}

/* spatial output size of a convolution-like window */
static int conv_out_dim(int64_t d, int64_t k, int64_t s, int64_t dil, int64_t pb, int64_t pe, int64_t *ret)
{
	int64_t eff = dil * (k - 1) + 1, padded = d + pb + pe;
	if (padded < eff)
		return -EINVAL;
	*ret = (padded - eff) / s + 1;
	return 0;
}

static int infer_conv(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x"), *wv = V(fn, op, "weight"), *bv = V(fn, op, "bias");
	const anes_mil_type *x = &xv->type, *w = &wv->type;
	int64_t strides[ANES_MAX_RANK], dil[ANES_MAX_RANK], pad[2 * ANES_MAX_RANK] = {0}, groups;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t ns, n;
	const char *pt = "valid";
	char sx[SHAPE_STR_LEN], sw[SHAPE_STR_LEN];

	if (mil_need_float(c, op, "x", xv) || mil_same_dtype(c, op, "x", xv, "weight", wv) ||
	    mil_opt_int(c, fn, op, "groups", 1, INT32_MIN, INT32_MAX, &groups))
		return -EINVAL;
	if (x->rank == 5)
		return anes_mil_fail(c, op, -ENOTSUP, "3-D convolution is not supported (x has rank 5)");
	if (x->rank != 3 && x->rank != 4)
		return anes_mil_fail(c, op, -EINVAL, "x must be [N, C, W] or [N, C, H, W], is %s",
		                     anes_mil_shape_str(x, sx, sizeof sx));
	ns = x->rank - 2;
	if (w->rank != x->rank)
		return anes_mil_fail(c, op, -EINVAL, "weight must have rank %u ([C_out, C_in/groups, kernel...]), is %s",
		                     x->rank, anes_mil_shape_str(w, sw, sizeof sw));
	if (groups < 1 || (uint64_t)groups > x->shape[1] || x->shape[1] % (uint64_t)groups ||
	    w->shape[0] % (uint64_t)groups || w->shape[1] * (uint64_t)groups != x->shape[1])
		return anes_mil_fail(c, op, -EINVAL, "channels do not match: x is %s, weight is %s, groups %lld",
		                     anes_mil_shape_str(x, sx, sizeof sx), anes_mil_shape_str(w, sw, sizeof sw),
		                     (long long)groups);
	for (uint32_t i = 0; i < ns; i++)
		strides[i] = dil[i] = 1;
	if (V(fn, op, "strides")) {
		if (const_ints(c, op, "strides", V(fn, op, "strides"), strides, &n))
			return -EINVAL;
		if (n != ns)
			return anes_mil_fail(c, op, -EINVAL, "strides needs %u elements, has %u", ns, n);
	}
	if (V(fn, op, "dilations")) {
		if (const_ints(c, op, "dilations", V(fn, op, "dilations"), dil, &n))
			return -EINVAL;
		if (n != ns)
			return anes_mil_fail(c, op, -EINVAL, "dilations needs %u elements, has %u", ns, n);
	}
	for (uint32_t i = 0; i < ns; i++)
		if (strides[i] < 1 || strides[i] > (int64_t)ANES_MIL_MAX_DIM || dil[i] < 1 ||
		    dil[i] > (int64_t)ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "strides and dilations must be >= 1");
	if (V(fn, op, "pad_type")) {
		pt = anes_mil_const_string(V(fn, op, "pad_type"));
		if (!pt || (strcmp(pt, "valid") && strcmp(pt, "same") && strcmp(pt, "same_lower") && strcmp(pt, "custom")))
			return anes_mil_fail(c, op, -EINVAL, "pad_type must be \"valid\", \"same\", \"same_lower\" or \"custom\"");
	}
	if (strcmp(pt, "custom") == 0 && V(fn, op, "pad")) {
		if (anes_mil_const_ints(V(fn, op, "pad"), pad, 2 * ANES_MAX_RANK, &n) || n != 2 * ns)
			return anes_mil_fail(c, op, -EINVAL, "pad must be a constant list of %u integers", 2 * ns);
		for (uint32_t i = 0; i < n; i++)
			if (pad[i] < 0 || pad[i] > (int64_t)ANES_MIL_MAX_DIM)
				return anes_mil_fail(c, op, -EINVAL, "pad entries must be >= 0");
	}
	if (bv) {
		if (mil_same_dtype(c, op, "x", xv, "bias", bv))
			return -EINVAL;
		if (bv->type.rank != 1 || bv->type.shape[0] != w->shape[0])
			return anes_mil_fail(c, op, -EINVAL, "bias must be [%llu], is %s", (unsigned long long)w->shape[0],
			                     anes_mil_shape_str(&bv->type, sx, sizeof sx));
	}
	shape[0] = x->shape[0];
	shape[1] = w->shape[0];
	for (uint32_t i = 0; i < ns; i++) {
		int64_t d = (int64_t)x->shape[2 + i], k = (int64_t)w->shape[2 + i], o;
		if (strcmp(pt, "same") == 0 || strcmp(pt, "same_lower") == 0) {
			o = (d + strides[i] - 1) / strides[i];
		} else if (conv_out_dim(d, k, strides[i], dil[i], pad[2 * i], pad[2 * i + 1], &o)) {
			return anes_mil_fail(c, op, -EINVAL, "kernel (%lld, dilation %lld) is larger than padded input dim %u (%lld)",
			                     (long long)k, (long long)dil[i], 2 + i, (long long)d);
		}
		shape[2 + i] = (uint64_t)o;
	}
	return mil_set_type(c, op, &out[0], x->dtype, x->rank, shape);
}

static int infer_linear(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *xv = V(fn, op, "x"), *wv = V(fn, op, "weight"), *bv = V(fn, op, "bias");
	const anes_mil_type *x = &xv->type, *w = &wv->type;
	uint64_t shape[ANES_MAX_RANK];
	char sx[SHAPE_STR_LEN], sw[SHAPE_STR_LEN];

	if (mil_need_float(c, op, "x", xv) || mil_same_dtype(c, op, "x", xv, "weight", wv))
		return -EINVAL;
	if (x->rank < 1 || w->rank != 2 || w->shape[1] != x->shape[x->rank - 1])
		return anes_mil_fail(c, op, -EINVAL, "weight must be [D_out, %llu], is %s (x is %s)",
		                     x->rank ? (unsigned long long)x->shape[x->rank - 1] : 0ull,
		                     anes_mil_shape_str(w, sw, sizeof sw), anes_mil_shape_str(x, sx, sizeof sx));
	if (bv) {
		if (mil_same_dtype(c, op, "x", xv, "bias", bv))
			return -EINVAL;
		if (bv->type.rank != 1 || bv->type.shape[0] != w->shape[0])
			return anes_mil_fail(c, op, -EINVAL, "bias must be [%llu], is %s", (unsigned long long)w->shape[0],
			                     anes_mil_shape_str(&bv->type, sx, sizeof sx));
	}
	memcpy(shape, x->shape, sizeof shape);
	shape[x->rank - 1] = w->shape[0];
	return mil_set_type(c, op, &out[0], x->dtype, x->rank, shape);
}

static int infer_sdpa(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *qv = V(fn, op, "query"), *kv = V(fn, op, "key"), *vv = V(fn, op, "value");
	const anes_mil_value *mv = V(fn, op, "attn_mask");
	const anes_mil_type *q = &qv->type, *k = &kv->type, *v = &vv->type;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t r = q->rank, br;
	char sq[SHAPE_STR_LEN], sk[SHAPE_STR_LEN], sv[SHAPE_STR_LEN];

	if (mil_need_float(c, op, "query", qv) || mil_same_dtype(c, op, "query", qv, "key", kv) ||
	    mil_same_dtype(c, op, "query", qv, "value", vv))
		return -EINVAL;
	bool ok = r >= 3 && k->rank == r && v->rank == r && q->shape[r - 1] == k->shape[r - 1] &&
	          k->shape[r - 2] == v->shape[r - 2];
	for (uint32_t i = 0; ok && i + 2 < r; i++)
		ok = q->shape[i] == k->shape[i] && q->shape[i] == v->shape[i];
	if (!ok)
		return anes_mil_fail(c, op, -EINVAL,
		                     "need query [B.., L, E], key [B.., S, E], value [B.., S, EV] of rank >= 3, have %s, %s, %s",
		                     anes_mil_shape_str(q, sq, sizeof sq), anes_mil_shape_str(k, sk, sizeof sk),
		                     anes_mil_shape_str(v, sv, sizeof sv));
	if (mv) {
		const anes_mil_type *m = &mv->type;
		anes_mil_type mq, mm;
		if (m->dtype != ANES_DT_BOOL && m->dtype != q->dtype)
			return anes_mil_fail(c, op, -EINVAL, "attn_mask must be bool or %s, is %s",
			                     anes_mil_dtype_name(q->dtype), anes_mil_dtype_name(m->dtype));
		memset(&mq, 0, sizeof mq);
		memset(&mm, 0, sizeof mm);
		mq.rank = r - 1;
		memcpy(mq.shape, q->shape, (r - 1) * sizeof(uint64_t));
		mm.rank = m->rank ? m->rank - 1 : 0;
		memcpy(mm.shape, m->shape, mm.rank * sizeof(uint64_t));
		ok = m->rank >= 1 && m->rank <= r && m->shape[m->rank - 1] == k->shape[r - 2] &&
		     anes_mil_broadcast(&mq, &mm, &br, shape) == 0 && br == mq.rank;
		for (uint32_t i = 0; ok && i < br; i++)
			ok = shape[i] == mq.shape[i];
		if (!ok)
			return anes_mil_fail(c, op, -EINVAL, "attn_mask %s does not broadcast to [B.., L, S] = %s + [%llu]",
			                     anes_mil_shape_str(m, sv, sizeof sv), anes_mil_shape_str(&mq, sq, sizeof sq),
			                     (unsigned long long)k->shape[r - 2]);
	}
	memcpy(shape, q->shape, sizeof shape);
	shape[r - 1] = v->shape[r - 1];
	return mil_set_type(c, op, &out[0], q->dtype, r, shape);
}

static int infer_slice_by_index(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                                anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	int64_t begin[ANES_MAX_RANK], end[ANES_MAX_RANK], stride[ANES_MAX_RANK];
	bool bm[ANES_MAX_RANK], em[ANES_MAX_RANK], sm[ANES_MAX_RANK];
	uint64_t shape[ANES_MAX_RANK];
	uint32_t nb, ne, nst, r = 0;

	if (x->rank < 1)
		return anes_mil_fail(c, op, -EINVAL, "x must have rank >= 1");
	if (const_ints(c, op, "begin", V(fn, op, "begin"), begin, &nb) ||
	    const_ints(c, op, "end", V(fn, op, "end"), end, &ne))
		return -EINVAL;
	nst = x->rank;
	for (uint32_t i = 0; i < x->rank; i++)
		stride[i] = 1;
	if (V(fn, op, "stride") && const_ints(c, op, "stride", V(fn, op, "stride"), stride, &nst))
		return -EINVAL;
	if (nb != x->rank || ne != x->rank || nst != x->rank)
		return anes_mil_fail(c, op, -EINVAL, "begin, end and stride need %u elements (rank of x)", x->rank);
	if (opt_bools(c, fn, op, "begin_mask", x->rank, bm) || opt_bools(c, fn, op, "end_mask", x->rank, em) ||
	    opt_bools(c, fn, op, "squeeze_mask", x->rank, sm))
		return -EINVAL;
	for (uint32_t i = 0; i < x->rank; i++) {
		int64_t d = (int64_t)x->shape[i], s = stride[i], b = begin[i], e = end[i], len;
		if (s == 0 || s < -(int64_t)ANES_MIL_MAX_DIM || s > (int64_t)ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "stride on axis %u must be non-zero", i);
		if (b < -(int64_t)ANES_MIL_MAX_DIM * 2 || b > (int64_t)ANES_MIL_MAX_DIM * 2 ||
		    e < -(int64_t)ANES_MIL_MAX_DIM * 2 || e > (int64_t)ANES_MIL_MAX_DIM * 2)
			return anes_mil_fail(c, op, -EINVAL, "begin/end on axis %u out of range", i);
		if (sm[i]) {
			if (b < 0)
				b += d;
			if (b < 0 || b >= d)
				return anes_mil_fail(c, op, -EINVAL, "squeezed axis %u: begin %lld out of range for dim %lld", i,
				                     (long long)begin[i], (long long)d);
			continue;
		}
		anes_mil_slice_axis(d, b, e, s, bm[i], em[i], &b, &len);
		if (len < 1)
			return anes_mil_fail(c, op, -EINVAL, "slice on axis %u is empty (begin %lld, end %lld, stride %lld, dim %lld)",
			                     i, (long long)begin[i], (long long)end[i], (long long)s, (long long)d);
		shape[r++] = (uint64_t)len;
	}
	return mil_set_type(c, op, &out[0], x->dtype, r, shape);
}

static int infer_split(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	const anes_mil_value *nv = V(fn, op, "num_splits"), *sv = V(fn, op, "split_sizes");
	int64_t axis_v, num;
	uint32_t axis = 0, n = op->n_outputs;
	uint64_t d;

	if (mil_opt_int(c, fn, op, "axis", 0, INT32_MIN, INT32_MAX, &axis_v))
		return -EINVAL;
	if (x->rank < 1)
		return anes_mil_fail(c, op, -EINVAL, "x must have rank >= 1");
	if (mil_norm_axis(c, op, "axis", axis_v, x->rank, &axis))
		return -EINVAL;
	d = x->shape[axis];
	if (!!nv == !!sv)
		return anes_mil_fail(c, op, -EINVAL, "exactly one of num_splits and split_sizes is needed");
	if (nv) {
		if (mil_opt_int(c, fn, op, "num_splits", 1, INT32_MIN, INT32_MAX, &num))
			return -EINVAL;
		if (num < 1 || (uint64_t)num != n || d % (uint64_t)num)
			return anes_mil_fail(c, op, -EINVAL, "num_splits %lld must equal the %u outputs and divide dim %llu",
			                     (long long)num, n, (unsigned long long)d);
		for (uint32_t i = 0; i < n; i++) {
			uint64_t shape[ANES_MAX_RANK];
			memcpy(shape, x->shape, sizeof shape);
			shape[axis] = d / n;
			if (mil_set_type(c, op, &out[i], x->dtype, x->rank, shape))
				return -EINVAL;
		}
		return 0;
	}
	if (sv->kind != ANES_MIL_V_CONST || !anes_mil_dtype_is_int(sv->type.dtype) || sv->type.rank != 1 ||
	    sv->type.count != n)
		return anes_mil_fail(c, op, -EINVAL, "split_sizes must be a constant integer list of %u elements (one per output)", n);
	uint64_t sum = 0;
	for (uint32_t i = 0; i < n; i++) {
		double sz = anes_mil_load_f64(sv->data, sv->type.dtype, i);
		uint64_t shape[ANES_MAX_RANK];
		if (sz < 1 || sz > (double)d)
			return anes_mil_fail(c, op, -EINVAL, "split_sizes[%u] = %g is out of range", i, sz);
		sum += (uint64_t)sz;
		memcpy(shape, x->shape, sizeof shape);
		shape[axis] = (uint64_t)sz;
		if (mil_set_type(c, op, &out[i], x->dtype, x->rank, shape))
			return -EINVAL;
	}
	if (sum != d)
		return anes_mil_fail(c, op, -EINVAL, "split_sizes sum to %llu, dim %u is %llu", (unsigned long long)sum, axis,
		                     (unsigned long long)d);
	return 0;
}

static int infer_expand_dims(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                             anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	int64_t axes[ANES_MAX_RANK];
	bool ins[ANES_MAX_RANK] = {false};
	uint64_t shape[ANES_MAX_RANK];
	uint32_t n, r, j = 0;

	if (const_ints(c, op, "axes", V(fn, op, "axes"), axes, &n))
		return -EINVAL;
	r = x->rank + n;
	if (n < 1 || r > ANES_MAX_RANK)
		return anes_mil_fail(c, op, -EINVAL, "result rank %u is out of range 1..%d", r, ANES_MAX_RANK);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t a = 0;
		if (mil_norm_axis(c, op, "axis", axes[i], r, &a))
			return -EINVAL;
		if (ins[a])
			return anes_mil_fail(c, op, -EINVAL, "axis %u repeated in axes", a);
		ins[a] = true;
	}
	for (uint32_t i = 0; i < r; i++)
		shape[i] = ins[i] ? 1 : x->shape[j++];
	return mil_set_type(c, op, &out[0], x->dtype, r, shape);
}

static int infer_squeeze(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	const anes_mil_value *av = V(fn, op, "axes");
	bool drop[ANES_MAX_RANK] = {false};
	uint64_t shape[ANES_MAX_RANK];
	uint32_t r = 0;

	if (av) {
		int64_t axes[ANES_MAX_RANK];
		uint32_t n;
		if (const_ints(c, op, "axes", av, axes, &n))
			return -EINVAL;
		for (uint32_t i = 0; i < n; i++) {
			uint32_t a = 0;
			if (mil_norm_axis(c, op, "axis", axes[i], x->rank, &a))
				return -EINVAL;
			if (x->shape[a] != 1)
				return anes_mil_fail(c, op, -EINVAL, "cannot squeeze axis %u of size %llu", a,
				                     (unsigned long long)x->shape[a]);
			drop[a] = true;
		}
	} else {
		for (uint32_t i = 0; i < x->rank; i++)
			drop[i] = x->shape[i] == 1;
	}
	for (uint32_t i = 0; i < x->rank; i++)
		if (!drop[i])
			shape[r++] = x->shape[i];
	return mil_set_type(c, op, &out[0], x->dtype, r, shape);
}

static int infer_tile(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	int64_t reps[ANES_MAX_RANK];
	uint64_t shape[ANES_MAX_RANK];
	uint32_t n;

	if (const_ints(c, op, "reps", V(fn, op, "reps"), reps, &n))
		return -EINVAL;
	if (n != x->rank)
		return anes_mil_fail(c, op, -EINVAL, "reps has %u elements, x has rank %u", n, x->rank);
	for (uint32_t i = 0; i < n; i++) {
		if (reps[i] < 1 || (uint64_t)reps[i] > ANES_MIL_MAX_DIM / x->shape[i])
			return anes_mil_fail(c, op, -EINVAL, "reps[%u] = %lld is out of range", i, (long long)reps[i]);
		shape[i] = x->shape[i] * (uint64_t)reps[i];
	}
	return mil_set_type(c, op, &out[0], x->dtype, x->rank, shape);
}

static int infer_gather(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	const anes_mil_value *iv = V(fn, op, "indices");
	const anes_mil_type *it = &iv->type;
	int64_t axis_v, bd;
	uint32_t axis = 0, r = 0;
	uint64_t shape[ANES_MAX_RANK];
	bool vi;

	if (mil_opt_int(c, fn, op, "axis", 0, INT32_MIN, INT32_MAX, &axis_v) ||
	    mil_opt_int(c, fn, op, "batch_dims", 0, INT32_MIN, INT32_MAX, &bd) ||
	    mil_opt_bool(c, fn, op, "validate_indices", false, &vi))
		return -EINVAL;
	if (bd != 0)
		return anes_mil_fail(c, op, -ENOTSUP, "batch_dims other than 0 are not supported");
	if (x->rank < 1)
		return anes_mil_fail(c, op, -EINVAL, "x must have rank >= 1");
	if (mil_norm_axis(c, op, "axis", axis_v, x->rank, &axis))
		return -EINVAL;
	if (!anes_mil_dtype_is_int(it->dtype))
		return anes_mil_fail(c, op, -EINVAL, "indices must be an integer tensor, is %s", anes_mil_dtype_name(it->dtype));
	if (x->rank - 1 + it->rank > ANES_MAX_RANK)
		return anes_mil_fail(c, op, -EINVAL, "result rank exceeds %d", ANES_MAX_RANK);
	if (iv->kind == ANES_MIL_V_CONST) {
		int64_t d = (int64_t)x->shape[axis];
		for (uint64_t i = 0; i < it->count; i++) {
			double ix = anes_mil_load_f64(iv->data, it->dtype, i);
			if (ix < (double)-d || ix >= (double)d)
				return anes_mil_fail(c, op, -EINVAL, "indices[%llu] = %.0f is out of range [%lld, %lld)",
				                     (unsigned long long)i, ix, (long long)-d, (long long)d);
		}
	}
	for (uint32_t i = 0; i < axis; i++)
		shape[r++] = x->shape[i];
	for (uint32_t i = 0; i < it->rank; i++)
		shape[r++] = it->shape[i];
	for (uint32_t i = axis + 1; i < x->rank; i++)
		shape[r++] = x->shape[i];
	return mil_set_type(c, op, &out[0], x->dtype, r, shape);
}

static int infer_pad(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_type *x = &V(fn, op, "x")->type;
	int64_t pad[2 * ANES_MAX_RANK];
	uint64_t shape[ANES_MAX_RANK];
	uint32_t n;
	double cv;
	const char *mode = "constant";

	if (anes_mil_const_ints(V(fn, op, "pad"), pad, 2 * ANES_MAX_RANK, &n) || n % 2 || n / 2 > x->rank || n == 0)
		return anes_mil_fail(c, op, -EINVAL, "pad must be a constant integer list of 2 * N entries, N <= rank %u",
		                     x->rank);
	if (mil_opt_f64(c, fn, op, "constant_val", 0, &cv))
		return -EINVAL;
	if (V(fn, op, "mode")) {
		mode = anes_mil_const_string(V(fn, op, "mode"));
		if (!mode || (strcmp(mode, "constant") && strcmp(mode, "reflect") && strcmp(mode, "replicate")))
			return anes_mil_fail(c, op, -EINVAL, "mode must be \"constant\", \"reflect\" or \"replicate\"");
	}
	memcpy(shape, x->shape, sizeof shape);
	for (uint32_t j = 0; j < n / 2; j++) {
		uint32_t a = x->rank - n / 2 + j;
		int64_t pb = pad[2 * j], pe = pad[2 * j + 1], d = (int64_t)x->shape[a];
		if (pb < 0 || pe < 0 || pb > (int64_t)ANES_MIL_MAX_DIM || pe > (int64_t)ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "pad entries must be >= 0");
		if (strcmp(mode, "reflect") == 0 && (pb >= d || pe >= d))
			return anes_mil_fail(c, op, -EINVAL, "reflect padding of axis %u must be smaller than its size %lld", a,
			                     (long long)d);
		shape[a] = (uint64_t)(d + pb + pe);
		if (shape[a] > ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "result is too large");
	}
	return mil_set_type(c, op, &out[0], x->dtype, x->rank, shape);
}

/* scale / zero_point of the (de)quantize ops: scalar, or a vector along axis */
static int check_qparam(anes_mil_check *c, const anes_mil_op *op, const char *name, const anes_mil_value *p,
                        const anes_mil_type *data, bool have_axis, uint32_t axis)
{
	char sb[SHAPE_STR_LEN];

	if (!p)
		return 0;
	if (p->type.rank == 0)
		return 0;
	if (p->type.rank == 1 && have_axis && p->type.shape[0] == data->shape[axis])
		return 0;
	if (p->type.rank == 1 && p->type.count == 1)
		return 0;
	return anes_mil_fail(c, op, -EINVAL, "%s must be a scalar or a vector of %s along axis, is %s", name,
	                     have_axis ? "the size of data" : "size 1 (no axis given)",
	                     anes_mil_shape_str(&p->type, sb, sizeof sb));
}

static int q_axis(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const anes_mil_type *data,
                  bool *have, uint32_t *axis)
{
	int64_t a;

	*have = V(fn, op, "axis") != NULL;
	*axis = 0;
	if (!*have)
		return 0;
	if (mil_opt_int(c, fn, op, "axis", 0, INT32_MIN, INT32_MAX, &a))
		return -EINVAL;
	if (data->rank < 1)
		return anes_mil_fail(c, op, -EINVAL, "data must have rank >= 1");
	return mil_norm_axis(c, op, "axis", a, data->rank, axis);
}

static int infer_affine_dequant(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                                anes_mil_type *out)
{
	const anes_mil_value *dv = V(fn, op, "quantized_data"), *sv = V(fn, op, "scale"), *zv = V(fn, op, "zero_point");
	bool have;
	uint32_t axis;

	if (dv->type.dtype != ANES_DT_INT8 && dv->type.dtype != ANES_DT_UINT8)
		return anes_mil_fail(c, op, -EINVAL, "quantized_data must be int8 or uint8, is %s",
		                     anes_mil_dtype_name(dv->type.dtype));
	if (mil_need_float(c, op, "scale", sv))
		return -EINVAL;
	if (zv->type.dtype != ANES_DT_INT8 && zv->type.dtype != ANES_DT_UINT8 && zv->type.dtype != ANES_DT_FP32)
		return anes_mil_fail(c, op, -EINVAL, "zero_point must be int8, uint8 or fp32, is %s",
		                     anes_mil_dtype_name(zv->type.dtype));
	if (q_axis(c, fn, op, &dv->type, &have, &axis) ||
	    check_qparam(c, op, "scale", sv, &dv->type, have, axis) ||
	    check_qparam(c, op, "zero_point", zv, &dv->type, have, axis))
		return -EINVAL;
	return mil_set_type(c, op, &out[0], sv->type.dtype, dv->type.rank, dv->type.shape);
}

static int infer_quantize(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *iv = V(fn, op, "input"), *sv = V(fn, op, "scale"), *zv = V(fn, op, "zero_point");
	const char *ods = anes_mil_const_string(V(fn, op, "output_dtype"));
	bool have;
	uint32_t axis;
	int odt;

	if (mil_need_float(c, op, "input", iv) || mil_same_dtype(c, op, "input", iv, "scale", sv))
		return -EINVAL;
	if (!ods || ((odt = anes_mil_dtype_parse(ods, strlen(ods))) != ANES_DT_INT8 && odt != ANES_DT_UINT8))
		return anes_mil_fail(c, op, -EINVAL, "output_dtype must be \"int8\" or \"uint8\"");
	if (zv && zv->type.dtype != odt)
		return anes_mil_fail(c, op, -EINVAL, "zero_point must be %s (output_dtype), is %s", ods,
		                     anes_mil_dtype_name(zv->type.dtype));
	if (q_axis(c, fn, op, &iv->type, &have, &axis) ||
	    check_qparam(c, op, "scale", sv, &iv->type, have, axis) ||
	    check_qparam(c, op, "zero_point", zv, &iv->type, have, axis))
		return -EINVAL;
	return mil_set_type(c, op, &out[0], odt, iv->type.rank, iv->type.shape);
}

static int infer_dequantize(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, anes_mil_type *out)
{
	const anes_mil_value *iv = V(fn, op, "input"), *sv = V(fn, op, "scale"), *zv = V(fn, op, "zero_point");
	bool have;
	uint32_t axis;

	if (iv->type.dtype != ANES_DT_INT8 && iv->type.dtype != ANES_DT_UINT8)
		return anes_mil_fail(c, op, -EINVAL, "input must be int8 or uint8, is %s", anes_mil_dtype_name(iv->type.dtype));
	if (mil_need_float(c, op, "scale", sv))
		return -EINVAL;
	if (zv && zv->type.dtype != iv->type.dtype)
		return anes_mil_fail(c, op, -EINVAL, "zero_point must be %s (the dtype of input), is %s",
		                     anes_mil_dtype_name(iv->type.dtype), anes_mil_dtype_name(zv->type.dtype));
	if (q_axis(c, fn, op, &iv->type, &have, &axis) ||
	    check_qparam(c, op, "scale", sv, &iv->type, have, axis) ||
	    check_qparam(c, op, "zero_point", zv, &iv->type, have, axis))
		return -EINVAL;
	return mil_set_type(c, op, &out[0], sv->type.dtype, iv->type.rank, iv->type.shape);
}

/* ---- table ---- */

#define REQ ANES_MIL_ARG_REQ
#define CONST ANES_MIL_ARG_CONST
#define TUPLE ANES_MIL_ARG_TUPLE

static const anes_mil_argdef a_x[] = {{"x", REQ}, {NULL, 0}};
static const anes_mil_argdef a_xy[] = {{"x", REQ}, {"y", REQ}, {NULL, 0}};
static const anes_mil_argdef a_x_eps[] = {{"x", REQ}, {"epsilon", CONST}, {NULL, 0}};
static const anes_mil_argdef a_clip[] = {{"x", REQ}, {"alpha", REQ | CONST}, {"beta", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_gelu[] = {{"x", REQ}, {"mode", CONST}, {NULL, 0}};
static const anes_mil_argdef a_softmax[] = {{"x", REQ}, {"axis", CONST}, {NULL, 0}};
static const anes_mil_argdef a_slice[] = {{"x", REQ}, {"begin", REQ | CONST}, {"size", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_slice_idx[] = {
	{"x", REQ}, {"begin", REQ | CONST}, {"end", REQ | CONST}, {"stride", CONST}, {"begin_mask", CONST},
	{"end_mask", CONST}, {"squeeze_mask", CONST}, {NULL, 0}};
static const anes_mil_argdef a_reshape[] = {{"x", REQ}, {"shape", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_transpose[] = {{"x", REQ}, {"perm", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_matmul[] = {
	{"x", REQ}, {"y", REQ}, {"transpose_x", CONST}, {"transpose_y", CONST}, {NULL, 0}};
static const anes_mil_argdef a_linear[] = {{"x", REQ}, {"weight", REQ}, {"bias", 0}, {NULL, 0}};
static const anes_mil_argdef a_conv[] = {
	{"x", REQ}, {"weight", REQ}, {"bias", 0}, {"strides", CONST}, {"pad_type", CONST}, {"pad", CONST},
	{"dilations", CONST}, {"groups", CONST}, {NULL, 0}};
static const anes_mil_argdef a_cast[] = {{"x", REQ}, {"dtype", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_concat[] = {
	{"values", REQ | TUPLE}, {"axis", REQ | CONST}, {"interleave", CONST}, {NULL, 0}};
static const anes_mil_argdef a_reduce[] = {{"x", REQ}, {"axes", CONST}, {"keep_dims", CONST}, {NULL, 0}};
static const anes_mil_argdef a_layer_norm[] = {
	{"x", REQ}, {"axes", CONST}, {"gamma", 0}, {"beta", 0}, {"epsilon", CONST}, {NULL, 0}};
static const anes_mil_argdef a_split[] = {
	{"x", REQ}, {"num_splits", CONST}, {"split_sizes", CONST}, {"axis", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_expand_dims[] = {{"x", REQ}, {"axes", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_squeeze[] = {{"x", REQ}, {"axes", CONST}, {NULL, 0}};
static const anes_mil_argdef a_tile[] = {{"x", REQ}, {"reps", REQ | CONST}, {NULL, 0}};
static const anes_mil_argdef a_gather[] = {
	{"x", REQ}, {"indices", REQ}, {"axis", CONST}, {"batch_dims", CONST}, {"validate_indices", CONST}, {NULL, 0}};
static const anes_mil_argdef a_pad[] = {
	{"x", REQ}, {"pad", REQ | CONST}, {"mode", CONST}, {"constant_val", CONST}, {NULL, 0}};
static const anes_mil_argdef a_sdpa[] = {
	{"query", REQ}, {"key", REQ}, {"value", REQ}, {"attn_mask", 0}, {NULL, 0}};
static const anes_mil_argdef a_affine_dq[] = {
	{"quantized_data", REQ | CONST}, {"zero_point", REQ | CONST}, {"scale", REQ | CONST}, {"axis", REQ | CONST},
	{NULL, 0}};
static const anes_mil_argdef a_quantize[] = {
	{"input", REQ}, {"zero_point", CONST}, {"scale", REQ | CONST}, {"axis", CONST}, {"output_dtype", REQ | CONST},
	{NULL, 0}};
static const anes_mil_argdef a_dequantize[] = {
	{"input", REQ}, {"zero_point", CONST}, {"scale", REQ | CONST}, {"axis", CONST}, {NULL, 0}};

/* sorted by name */
static const anes_mil_opdef ops[] = {
	{"abs", 1, a_x, infer_unary},
	{"add", 1, a_xy, infer_binary},
	{"cast", 1, a_cast, infer_cast},
	{"clip", 1, a_clip, infer_unary},
	{"concat", 1, a_concat, infer_concat},
	{"constexpr_affine_dequantize", 1, a_affine_dq, infer_affine_dequant},
	{"constexpr_blockwise_shift_scale", 1, mil_a_blockwise_shift_scale, mil_infer_blockwise_shift_scale},
	{"constexpr_cast", 1, mil_a_constexpr_cast, mil_infer_constexpr_cast},
	{"constexpr_lut_to_dense", 1, mil_a_lut_to_dense, mil_infer_lut_to_dense},
	{"constexpr_lut_to_sparse", 2, mil_a_lut_to_sparse, mil_infer_lut_to_sparse},
	{"constexpr_sparse_blockwise_shift_scale", 2, mil_a_sparse_shift_scale, mil_infer_sparse_shift_scale},
	{"constexpr_sparse_to_dense", 1, mil_a_sparse_to_dense, mil_infer_sparse_to_dense},
	{"conv", 1, a_conv, infer_conv},
	{"dequantize", 1, a_dequantize, infer_dequantize},
	{"erf", 1, a_x, infer_unary},
	{"exp", 1, a_x, infer_unary},
	{"expand_dims", 1, a_expand_dims, infer_expand_dims},
	{"gather", 1, a_gather, infer_gather},
	{"gelu", 1, a_gelu, infer_unary},
	{"identity", 1, a_x, infer_identity},
	{"inverse", 1, a_x_eps, infer_unary},
	{"layer_norm", 1, a_layer_norm, infer_layer_norm},
	{"linear", 1, a_linear, infer_linear},
	{"log", 1, a_x_eps, infer_unary},
	{"matmul", 1, a_matmul, infer_matmul},
	{"maximum", 1, a_xy, infer_binary},
	{"minimum", 1, a_xy, infer_binary},
	{"mul", 1, a_xy, infer_binary},
	{"neg", 1, a_x, infer_unary},
	{"pad", 1, a_pad, infer_pad},
	{"pow", 1, a_xy, infer_binary},
	{"quantize", 1, a_quantize, infer_quantize},
	{"real_div", 1, a_xy, infer_binary},
	{"reduce_max", 1, a_reduce, infer_reduce},
	{"reduce_mean", 1, a_reduce, infer_reduce},
	{"reduce_min", 1, a_reduce, infer_reduce},
	{"reduce_sum", 1, a_reduce, infer_reduce},
	{"relu", 1, a_x, infer_unary},
	{"reshape", 1, a_reshape, infer_reshape},
	{"rsqrt", 1, a_x_eps, infer_unary},
	{"scaled_dot_product_attention", 1, a_sdpa, infer_sdpa},
	{"sigmoid", 1, a_x, infer_unary},
	{"silu", 1, a_x, infer_unary},
	{"slice_by_index", 1, a_slice_idx, infer_slice_by_index},
	{"slice_by_size", 1, a_slice, infer_slice_by_size},
	{"softmax", 1, a_softmax, infer_softmax},
	{"split", 0, a_split, infer_split},
	{"sqrt", 1, a_x, infer_unary},
	{"square", 1, a_x, infer_unary},
	{"squeeze", 1, a_squeeze, infer_squeeze},
	{"sub", 1, a_xy, infer_binary},
	{"tanh", 1, a_x, infer_unary},
	{"tile", 1, a_tile, infer_tile},
	{"transpose", 1, a_transpose, infer_transpose},
};

const anes_mil_opdef *anes_mil_opdef_find(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
		if (strlen(ops[i].name) == len && memcmp(ops[i].name, name, len) == 0)
			return &ops[i];
	const anes_mil_opdef *d = mil_ops_ext_find(name, len);
	return d ? d : mil_states_find(name, len);
}
