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

int mil_infer_lut_to_dense(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                           anes_mil_type *out)
{
	const anes_mil_value *iv = V(fn, op, "indices"), *lv = V(fn, op, "lut"), *sv = V(fn, op, "shape");
	const anes_mil_value *av = V(fn, op, "vector_axis");
	const anes_mil_type *it = &iv->type, *lt = &lv->type;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t rank;

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
	unsigned nb = index_bits(it->dtype);
	if (!nb)
		return anes_mil_fail(c, op, -EINVAL, "indices must be uint1, uint2, uint3, uint4, uint6 or uint8, is %s",
		                     anes_mil_dtype_name(it->dtype));
	if (it->rank < 1 || lt->rank != it->rank + 2)
		return anes_mil_fail(c, op, -EINVAL, "lut must have rank %u (indices' rank + 2), has %u", it->rank + 2,
		                     lt->rank);
	for (uint32_t i = 0; i < it->rank; i++)
		if (it->shape[i] % lt->shape[i])
			return anes_mil_fail(c, op, -EINVAL, "indices dim %u (%llu) is not a multiple of lut dim %u (%llu)", i,
			                     (unsigned long long)it->shape[i], i, (unsigned long long)lt->shape[i]);
	if (lt->shape[it->rank] != (1ull << nb))
		return anes_mil_fail(c, op, -EINVAL, "lut has %llu palette entries; %s indices need %llu",
		                     (unsigned long long)lt->shape[it->rank], anes_mil_dtype_name(it->dtype),
		                     1ull << nb);
	uint64_t vs = lt->shape[it->rank + 1];
	rank = it->rank;
	memcpy(shape, it->shape, sizeof shape[0] * rank);
	if (av) {
		int64_t a;
		uint32_t n;
		if (anes_mil_const_ints(av, &a, 1, &n) || n != 1 || av->type.rank != 0)
			return anes_mil_fail(c, op, -EINVAL, "vector_axis must be an integer scalar");
		if (a < -(int64_t)rank || a >= (int64_t)rank)
			return anes_mil_fail(c, op, -EINVAL, "vector_axis %lld is out of range for rank %u", (long long)a, rank);
		if (a < 0)
			a += rank;
		if (__builtin_mul_overflow(shape[a], vs, &shape[a]) || shape[a] > ANES_MIL_MAX_DIM)
			return anes_mil_fail(c, op, -EINVAL, "result is too large");
	} else if (vs != 1) {
		return anes_mil_fail(c, op, -EINVAL, "a lut of vectors (VECTOR_SIZE %llu) needs vector_axis",
		                     (unsigned long long)vs);
	}
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

int mil_infer_blockwise_shift_scale(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                                    anes_mil_type *out)
{
	const anes_mil_value *dv = V(fn, op, "data"), *sv = V(fn, op, "scale"), *ov = V(fn, op, "offset");
	const anes_mil_type *dt = &dv->type, *st = &sv->type;

	if (need_constexpr(c, fn, op, "data", dv) || need_constexpr(c, fn, op, "scale", sv) ||
	    (ov && need_constexpr(c, fn, op, "offset", ov)))
		return -ENOTSUP;
	if (!shift_scale_src_dtype(dt->dtype))
		return anes_mil_fail(c, op, -EINVAL, "data must be int4, uint4, int8, uint8, fp16 or fp32, is %s",
		                     anes_mil_dtype_name(dt->dtype));
	if (!anes_mil_dtype_is_float(st->dtype))
		return anes_mil_fail(c, op, -EINVAL, "scale must be fp16 or fp32, is %s", anes_mil_dtype_name(st->dtype));
	if (dt->rank < 1 || st->rank != dt->rank)
		return anes_mil_fail(c, op, -EINVAL, "scale must have data's rank %u, has %u", dt->rank, st->rank);
	for (uint32_t i = 0; i < dt->rank; i++)
		if (dt->shape[i] % st->shape[i])
			return anes_mil_fail(c, op, -EINVAL, "data dim %u (%llu) is not a multiple of scale dim %u (%llu)", i,
			                     (unsigned long long)dt->shape[i], i, (unsigned long long)st->shape[i]);
	if (ov) {
		if (!anes_mil_dtype_is_float(ov->type.dtype) && ov->type.dtype != dt->dtype)
			return anes_mil_fail(c, op, -EINVAL, "offset must be fp16, fp32 or data's dtype %s, is %s",
			                     anes_mil_dtype_name(dt->dtype), anes_mil_dtype_name(ov->type.dtype));
		if (ov->type.rank != st->rank || memcmp(ov->type.shape, st->shape, sizeof st->shape[0] * st->rank))
			return anes_mil_fail(c, op, -EINVAL, "offset must have scale's shape");
	}
	return mil_set_type(c, op, &out[0], st->dtype, dt->rank, dt->shape);
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
const anes_mil_argdef mil_a_constexpr_cast[] = {
	{"source_val", ANES_MIL_ARG_REQ}, {"output_dtype", ANES_MIL_ARG_REQ | ANES_MIL_ARG_CONST}, {NULL, 0}};
