/* SPDX-License-Identifier: MIT */
/*
 * The compressed-weight ops of the iOS 16 and iOS 18 opsets: argument
 * schemas and type/shape inference (rows in mil_ops.c's table).  Every
 * argument is a compile-time constant or the output of another constexpr_*
 * op (iOS 18 chains them, e.g. a palettized int8 LUT feeding
 * constexpr_blockwise_shift_scale), so a backend folds the whole chain once
 * at compile time.  The semantics are in docs/mil.md ("Compressed weights").
 */
#include <errno.h>
#include <string.h>

#include "mil_internal.h"

static const anes_mil_value *V(const anes_mil_function *fn, const anes_mil_op *op, const char *name)
{
	return anes_mil_op_value(fn, op, name);
}

/* a constant, or the output of a constexpr_* op (folded at compile time) */
static int need_constexpr(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                          const char *arg, const anes_mil_value *v)
{
	if (v->kind == ANES_MIL_V_CONST)
		return 0;
	if (v->kind == ANES_MIL_V_OP && strncmp(fn->ops[v->op].def->name, "constexpr_", 10) == 0)
		return 0;
	return anes_mil_fail(c, op, -ENOTSUP, "argument '%s' must be a constant or the output of a constexpr_* op",
	                     arg);
}

/* iOS 16 'shape' argument: a constant uint32 (or other integer) vector of dims >= 1 */
static int shape_arg(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, uint32_t *ret_rank,
                     uint64_t *shape)
{
	int64_t d[ANES_MAX_RANK];
	uint32_t n;

	if (anes_mil_const_ints(V(fn, op, "shape"), d, ANES_MAX_RANK, &n) || n < 1)
		return anes_mil_fail(c, op, -EINVAL, "argument 'shape' must be a constant integer vector of 1 to %d dims",
		                     ANES_MAX_RANK);
	for (uint32_t i = 0; i < n; i++) {
		if (d[i] < 1 || (uint64_t)d[i] > ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "shape[%u] = %lld is not a valid dimension", i, (long long)d[i]);
		shape[i] = (uint64_t)d[i];
	}
	*ret_rank = n;
	return 0;
}

static bool lut_value_dtype(int dt)
{
	return dt == ANES_DT_INT8 || dt == ANES_DT_UINT8 || dt == ANES_DT_FP16 || dt == ANES_DT_FP32;
}

static unsigned index_bits(int dt)
{
	switch (dt) {
	case ANES_MIL_DT_UINT1: return 1;
	case ANES_MIL_DT_UINT2: return 2;
	case ANES_MIL_DT_UINT3: return 3;
	case ANES_MIL_DT_UINT4: return 4;
	case ANES_MIL_DT_UINT6: return 6;
	case ANES_DT_UINT8: return 8;
	default: return 0;
	}
}

/* The iOS 18 palette rules for indices of dtype idt and shape ishape (rank
 * r; named what): lut [l0..lr-1, 2^n, VECTOR_SIZE] with each ishape[i] a
 * multiple of l_i, vector_axis needed when VECTOR_SIZE > 1.  ret_shape: the
 * shape of the values, ishape with the vector_axis dim times VECTOR_SIZE. */
static int lut_shape(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *what,
                     int idt, uint32_t r, const uint64_t *ishape, uint32_t *ret_rank, uint64_t *ret_shape)
{
	const anes_mil_type *lt = &V(fn, op, "lut")->type;
	const anes_mil_value *av = V(fn, op, "vector_axis");
	unsigned nb = index_bits(idt);
	uint64_t shape[ANES_MAX_RANK];

	if (!nb)
		return anes_mil_fail(c, op, -EINVAL, "%s must be uint1, uint2, uint3, uint4, uint6 or uint8, is %s", what,
		                     anes_mil_dtype_name(idt));
	if (r < 1 || lt->rank != r + 2)
		return anes_mil_fail(c, op, -EINVAL, "lut must have rank %u (%s' rank + 2), has %u", r + 2, what, lt->rank);
	for (uint32_t i = 0; i < r; i++)
		if (ishape[i] % lt->shape[i])
			return anes_mil_fail(c, op, -EINVAL, "%s dim %u (%llu) is not a multiple of lut dim %u (%llu)", what, i,
			                     (unsigned long long)ishape[i], i, (unsigned long long)lt->shape[i]);
	if (lt->shape[r] != (1ull << nb))
		return anes_mil_fail(c, op, -EINVAL, "lut has %llu palette entries; %s indices need %llu",
		                     (unsigned long long)lt->shape[r], anes_mil_dtype_name(idt), 1ull << nb);
	uint64_t vs = lt->shape[r + 1];
	memcpy(shape, ishape, sizeof shape[0] * r);
	if (av) {
		int64_t a;
		uint32_t n;
		if (anes_mil_const_ints(av, &a, 1, &n) || n != 1 || av->type.rank != 0)
			return anes_mil_fail(c, op, -EINVAL, "vector_axis must be an integer scalar");
		if (a < -(int64_t)r || a >= (int64_t)r)
			return anes_mil_fail(c, op, -EINVAL, "vector_axis %lld is out of range for rank %u", (long long)a, r);
		if (a < 0)
			a += r;
		if (__builtin_mul_overflow(shape[a], vs, &shape[a]) || shape[a] > ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "result is too large");
	} else if (vs != 1) {
		return anes_mil_fail(c, op, -EINVAL, "a lut of vectors (VECTOR_SIZE %llu) needs vector_axis",
		                     (unsigned long long)vs);
	}
	memcpy(ret_shape, shape, sizeof shape[0] * r);
	*ret_rank = r;
	return 0;
}

int mil_infer_lut_to_dense(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                           anes_mil_type *out)
{
	const anes_mil_value *iv = V(fn, op, "indices"), *lv = V(fn, op, "lut"), *sv = V(fn, op, "shape");
	const anes_mil_value *av = V(fn, op, "vector_axis");
	const anes_mil_type *it = &iv->type, *lt = &lv->type;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t rank = 0;

	if (need_constexpr(c, fn, op, "indices", iv) || need_constexpr(c, fn, op, "lut", lv))
		return -ENOTSUP;
	if (!lut_value_dtype(lt->dtype))
		return anes_mil_fail(c, op, -EINVAL, "lut must be int8, uint8, fp16 or fp32, is %s",
		                     anes_mil_dtype_name(lt->dtype));
	if (sv) {
		/* iOS 16: indices uint8 [M] holding packed n-bit indices, lut [2^n], output shape */
		uint64_t nbits = 0, bits;
		if (av)
			return anes_mil_fail(c, op, -EINVAL, "vector_axis needs the iOS 18 form (no 'shape')");
		if (it->dtype != ANES_DT_UINT8 || it->rank != 1)
			return anes_mil_fail(c, op, -EINVAL, "indices must be a uint8 vector of packed indices (iOS 16 form)");
		if (lt->rank != 1)
			return anes_mil_fail(c, op, -EINVAL, "lut must be a vector (iOS 16 form)");
		switch (lt->shape[0]) {
		case 2: nbits = 1; break;
		case 4: nbits = 2; break;
		case 16: nbits = 4; break;
		case 64: nbits = 6; break;
		case 256: nbits = 8; break;
		default:
			return anes_mil_fail(c, op, -EINVAL, "lut has %llu entries; must be 2, 4, 16, 64 or 256",
			                     (unsigned long long)lt->shape[0]);
		}
		if (shape_arg(c, fn, op, &rank, shape) || mil_set_type(c, op, &out[0], lt->dtype, rank, shape))
			return -EINVAL;
		bits = out[0].count * nbits;
		if (it->shape[0] != bits / 8 + (bits % 8 != 0))
			return anes_mil_fail(c, op, -EINVAL,
			                     "indices has %llu bytes; %llu indices of %llu bits need %llu",
			                     (unsigned long long)it->shape[0], (unsigned long long)out[0].count,
			                     (unsigned long long)nbits, (unsigned long long)(bits / 8 + (bits % 8 != 0)));
		return 0;
	}
	/* iOS 18: indices [d0..dK-1] of uint1..uint8, lut [l0..lK-1, 2^n, VECTOR_SIZE] */
	if (lut_shape(c, fn, op, "indices", it->dtype, it->rank, it->shape, &rank, shape))
		return -EINVAL;
	return mil_set_type(c, op, &out[0], lt->dtype, rank, shape);
}

static bool sparse_data_dtype(int dt)
{
	return lut_value_dtype(dt) || dt == ANES_MIL_DT_INT4 || dt == ANES_MIL_DT_UINT4;
}

/* number of set bits among the first n of a packed bit vector; *ret_pad_set
 * says whether any bit past n (in the last byte) is set */
static uint64_t mil_count_bits(const uint8_t *m, uint64_t n, bool *ret_pad_set)
{
	uint64_t k = 0;

	for (uint64_t i = 0; i < n / 8; i++)
		k += (uint64_t)__builtin_popcount(m[i]);
	if (n % 8) {
		unsigned last = m[n / 8];
		k += (uint64_t)__builtin_popcount(last & ((1u << (n % 8)) - 1));
		*ret_pad_set = (last >> (n % 8)) != 0;
	} else {
		*ret_pad_set = false;
	}
	return k;
}

int mil_infer_sparse_to_dense(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                              anes_mil_type *out)
{
	const anes_mil_value *dv = V(fn, op, "nonzero_data"), *mv = V(fn, op, "mask"), *sv = V(fn, op, "shape");
	const anes_mil_type *dt = &dv->type, *mt = &mv->type;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t rank;
	bool pad = false;

	if (need_constexpr(c, fn, op, "nonzero_data", dv) || need_constexpr(c, fn, op, "mask", mv))
		return -ENOTSUP;
	if (!sparse_data_dtype(dt->dtype) || (sv && !lut_value_dtype(dt->dtype)))
		return anes_mil_fail(c, op, -EINVAL, "nonzero_data must be %s, is %s",
		                     sv ? "int8, uint8, fp16 or fp32" : "int4, uint4, int8, uint8, fp16 or fp32",
		                     anes_mil_dtype_name(dt->dtype));
	if (dt->rank != 1)
		return anes_mil_fail(c, op, -EINVAL, "nonzero_data must be a vector");
	if (sv) {
		/* iOS 16: mask uint8 [ceil(N / 8)] of packed bits, output shape */
		if (mt->dtype != ANES_DT_UINT8 || mt->rank != 1)
			return anes_mil_fail(c, op, -EINVAL, "mask must be a uint8 vector of packed bits (iOS 16 form)");
		if (shape_arg(c, fn, op, &rank, shape) || mil_set_type(c, op, &out[0], dt->dtype, rank, shape))
			return -EINVAL;
		if (mt->shape[0] != out[0].count / 8 + (out[0].count % 8 != 0))
			return anes_mil_fail(c, op, -EINVAL, "mask has %llu bytes; %llu elements need %llu",
			                     (unsigned long long)mt->shape[0], (unsigned long long)out[0].count,
			                     (unsigned long long)(out[0].count / 8 + (out[0].count % 8 != 0)));
	} else {
		/* iOS 18: mask uint1 of the output's shape */
		if (mt->dtype != ANES_MIL_DT_UINT1)
			return anes_mil_fail(c, op, -EINVAL, "mask must be uint1 (iOS 18 form), is %s",
			                     anes_mil_dtype_name(mt->dtype));
		if (mil_set_type(c, op, &out[0], dt->dtype, mt->rank, mt->shape))
			return -EINVAL;
	}
	/* the count of set bits against nonzero_data's length, when the mask is
	 * known now (a folded mask is checked by the backend's kernel) */
	if (mv->kind == ANES_MIL_V_CONST) {
		uint64_t k = mil_count_bits(mv->data, out[0].count, &pad);
		if (k != dt->shape[0])
			return anes_mil_fail(c, op, -EINVAL, "mask has %llu set bits, nonzero_data has %llu elements",
			                     (unsigned long long)k, (unsigned long long)dt->shape[0]);
		if (pad)
			return anes_mil_fail(c, op, -EINVAL, "mask has bits set past its %llu elements",
			                     (unsigned long long)out[0].count);
	}
	return 0;
}

static bool shift_scale_src_dtype(int dt)
{
	return dt == ANES_MIL_DT_INT4 || dt == ANES_MIL_DT_UINT4 || dt == ANES_DT_INT8 || dt == ANES_DT_UINT8 ||
	       anes_mil_dtype_is_float(dt);
}

/* The shift-scale rules for data of dtype ddt and shape dshape (rank r;
 * named what): scale fp16/fp32 of rank r, each dshape[i] a multiple of
 * scale's; offset (optional) of scale's shape, float or of ddt. */
static int shift_scale_check(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *what,
                             int ddt, uint32_t r, const uint64_t *dshape)
{
	const anes_mil_value *sv = V(fn, op, "scale"), *ov = V(fn, op, "offset");
	const anes_mil_type *st = &sv->type;

	if (!shift_scale_src_dtype(ddt))
		return anes_mil_fail(c, op, -EINVAL, "%s must be int4, uint4, int8, uint8, fp16 or fp32, is %s", what,
		                     anes_mil_dtype_name(ddt));
	if (!anes_mil_dtype_is_float(st->dtype))
		return anes_mil_fail(c, op, -EINVAL, "scale must be fp16 or fp32, is %s", anes_mil_dtype_name(st->dtype));
	if (r < 1 || st->rank != r)
		return anes_mil_fail(c, op, -EINVAL, "scale must have %s's rank %u, has %u", what, r, st->rank);
	for (uint32_t i = 0; i < r; i++)
		if (dshape[i] % st->shape[i])
			return anes_mil_fail(c, op, -EINVAL, "%s dim %u (%llu) is not a multiple of scale dim %u (%llu)", what,
			                     i, (unsigned long long)dshape[i], i, (unsigned long long)st->shape[i]);
	if (ov) {
		if (!anes_mil_dtype_is_float(ov->type.dtype) && ov->type.dtype != ddt)
			return anes_mil_fail(c, op, -EINVAL, "offset must be fp16, fp32 or %s's dtype %s, is %s", what,
			                     anes_mil_dtype_name(ddt), anes_mil_dtype_name(ov->type.dtype));
		if (ov->type.rank != st->rank || memcmp(ov->type.shape, st->shape, sizeof st->shape[0] * st->rank))
			return anes_mil_fail(c, op, -EINVAL, "offset must have scale's shape");
	}
	return 0;
}

int mil_infer_blockwise_shift_scale(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                                    anes_mil_type *out)
{
	const anes_mil_value *dv = V(fn, op, "data"), *sv = V(fn, op, "scale"), *ov = V(fn, op, "offset");
	const anes_mil_type *dt = &dv->type;

	if (need_constexpr(c, fn, op, "data", dv) || need_constexpr(c, fn, op, "scale", sv) ||
	    (ov && need_constexpr(c, fn, op, "offset", ov)))
		return -ENOTSUP;
	if (shift_scale_check(c, fn, op, "data", dt->dtype, dt->rank, dt->shape))
		return -EINVAL;
	return mil_set_type(c, op, &out[0], sv->type.dtype, dt->rank, dt->shape);
}

/* The iOS 18 sparse pair: a uint1 mask (rank >= 1) and a vector of its
 * nonzero entries; the count of set bits is checked when the mask is a
 * constant (a folded one by the backend's kernel). */
static int sparse_pair(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *mask,
                       const char *data)
{
	const anes_mil_value *mv = V(fn, op, mask), *dv = V(fn, op, data);
	bool pad = false;

	if (mv->type.dtype != ANES_MIL_DT_UINT1 || mv->type.rank < 1)
		return anes_mil_fail(c, op, -EINVAL, "%s must be a uint1 tensor, is %s", mask,
		                     anes_mil_dtype_name(mv->type.dtype));
	if (dv->type.rank != 1)
		return anes_mil_fail(c, op, -EINVAL, "%s must be a vector", data);
	if (mv->kind == ANES_MIL_V_CONST) {
		uint64_t k = mil_count_bits(mv->data, mv->type.count, &pad);
		if (k != dv->type.shape[0])
			return anes_mil_fail(c, op, -EINVAL, "%s has %llu set bits, %s has %llu elements", mask,
			                     (unsigned long long)k, data, (unsigned long long)dv->type.shape[0]);
		if (pad)
			return anes_mil_fail(c, op, -EINVAL, "%s has bits set past its %llu elements", mask,
			                     (unsigned long long)mv->type.count);
	}
	return 0;
}

/* constexpr_lut_to_sparse: indices_mask (uint1), indices_nonzero_data [D]
 * (uint1..uint8), lut, vector_axis -> the mask (expanded VECTOR_SIZE times
 * along vector_axis) and the palette values of the nonzero entries [D VECTOR_SIZE] */
int mil_infer_lut_to_sparse(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                            anes_mil_type *out)
{
	const anes_mil_value *mv = V(fn, op, "indices_mask"), *iv = V(fn, op, "indices_nonzero_data");
	const anes_mil_value *lv = V(fn, op, "lut");
	uint64_t shape[ANES_MAX_RANK], nz;
	uint32_t rank = 0;

	if (need_constexpr(c, fn, op, "indices_mask", mv) || need_constexpr(c, fn, op, "indices_nonzero_data", iv) ||
	    need_constexpr(c, fn, op, "lut", lv))
		return -ENOTSUP;
	if (!lut_value_dtype(lv->type.dtype))
		return anes_mil_fail(c, op, -EINVAL, "lut must be int8, uint8, fp16 or fp32, is %s",
		                     anes_mil_dtype_name(lv->type.dtype));
	if (sparse_pair(c, fn, op, "indices_mask", "indices_nonzero_data") ||
	    lut_shape(c, fn, op, "indices_mask", iv->type.dtype, mv->type.rank, mv->type.shape, &rank, shape))
		return -EINVAL;
	nz = iv->type.shape[0] * lv->type.shape[lv->type.rank - 1];   /* D * VECTOR_SIZE: bounded by the mask */
	if (mil_set_type(c, op, &out[0], ANES_MIL_DT_UINT1, rank, shape) ||
	    mil_set_type(c, op, &out[1], lv->type.dtype, 1, &nz))
		return -EINVAL;
	return 0;
}

/* constexpr_sparse_blockwise_shift_scale: data_mask (uint1), nonzero_data
 * [D], scale, offset -> the mask and scale * (nonzero_data - offset) [D], each
 * entry with the scale and offset of its block in the dense layout */
int mil_infer_sparse_shift_scale(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                                 anes_mil_type *out)
{
	const anes_mil_value *mv = V(fn, op, "data_mask"), *dv = V(fn, op, "nonzero_data");
	const anes_mil_value *sv = V(fn, op, "scale"), *ov = V(fn, op, "offset");

	if (need_constexpr(c, fn, op, "data_mask", mv) || need_constexpr(c, fn, op, "nonzero_data", dv) ||
	    need_constexpr(c, fn, op, "scale", sv) || (ov && need_constexpr(c, fn, op, "offset", ov)))
		return -ENOTSUP;
	if (sparse_pair(c, fn, op, "data_mask", "nonzero_data") ||
	    shift_scale_check(c, fn, op, "data_mask", dv->type.dtype, mv->type.rank, mv->type.shape))
		return -EINVAL;
	if (mil_set_type(c, op, &out[0], ANES_MIL_DT_UINT1, mv->type.rank, mv->type.shape) ||
	    mil_set_type(c, op, &out[1], sv->type.dtype, 1, dv->type.shape))
		return -EINVAL;
	return 0;
}

int mil_infer_constexpr_cast(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                             anes_mil_type *out)
{
	const anes_mil_value *sv = V(fn, op, "source_val");
	const char *s = anes_mil_const_string(V(fn, op, "output_dtype"));

	if (need_constexpr(c, fn, op, "source_val", sv))
		return -ENOTSUP;
	if (sv->type.dtype != ANES_DT_FP16)
		return anes_mil_fail(c, op, -EINVAL, "source_val must be fp16, is %s", anes_mil_dtype_name(sv->type.dtype));
	if (!s || strcmp(s, "fp32") != 0)
		return anes_mil_fail(c, op, -ENOTSUP, "output_dtype must be \"fp32\"");
	return mil_set_type(c, op, &out[0], ANES_DT_FP32, sv->type.rank, sv->type.shape);
}

const anes_mil_argdef mil_a_lut_to_dense[] = {
	{"indices", ANES_MIL_ARG_REQ}, {"lut", ANES_MIL_ARG_REQ}, {"shape", ANES_MIL_ARG_CONST},
	{"vector_axis", ANES_MIL_ARG_CONST}, {NULL, 0}};
const anes_mil_argdef mil_a_sparse_to_dense[] = {
	{"nonzero_data", ANES_MIL_ARG_REQ}, {"mask", ANES_MIL_ARG_REQ}, {"shape", ANES_MIL_ARG_CONST}, {NULL, 0}};
const anes_mil_argdef mil_a_blockwise_shift_scale[] = {
	{"data", ANES_MIL_ARG_REQ}, {"scale", ANES_MIL_ARG_REQ}, {"offset", 0}, {NULL, 0}};
const anes_mil_argdef mil_a_lut_to_sparse[] = {
	{"indices_mask", ANES_MIL_ARG_REQ}, {"indices_nonzero_data", ANES_MIL_ARG_REQ}, {"lut", ANES_MIL_ARG_REQ},
	{"vector_axis", ANES_MIL_ARG_CONST}, {NULL, 0}};
const anes_mil_argdef mil_a_sparse_shift_scale[] = {
	{"data_mask", ANES_MIL_ARG_REQ}, {"nonzero_data", ANES_MIL_ARG_REQ}, {"scale", ANES_MIL_ARG_REQ},
	{"offset", 0}, {NULL, 0}};
const anes_mil_argdef mil_a_constexpr_cast[] = {
	{"source_val", ANES_MIL_ARG_REQ}, {"output_dtype", ANES_MIL_ARG_REQ | ANES_MIL_ARG_CONST}, {NULL, 0}};
