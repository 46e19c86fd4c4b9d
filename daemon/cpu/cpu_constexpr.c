/* SPDX-License-Identifier: MIT */
/*
 * Kernels of the compressed-weight ops (constexpr_lut_to_dense,
 * constexpr_sparse_to_dense, constexpr_blockwise_shift_scale,
 * constexpr_cast, and the iOS 18 sparse-to-sparse constexpr_lut_to_sparse
 * and constexpr_sparse_blockwise_shift_scale).  Their arguments are all constants (mil_constexpr.c
 * checks it), so cpu_backend.c runs them once, at compile time, and keeps
 * the dense result as a folded constant; nothing of them runs per run.
 *
 * Sub-byte data (uint1..uint6, int4) is packed least significant bit first
 * (mil.h); anes_mil_load_i64 unpacks one element.
 */
#include <errno.h>
#include <string.h>

#include "anes_fp16.h"
#include "cpu_internal.h"

/* advance the multi-index idx over shape (rank r) by one, row-major */
static void step_index(uint64_t *idx, const uint64_t *shape, uint32_t r)
{
	for (uint32_t d = r; d-- > 0;) {
		if (++idx[d] < shape[d])
			return;
		idx[d] = 0;
	}
}

/* store v into element i of a packed sub-byte buffer (zeroed beforehand) */
static void store_packed(uint8_t *p, unsigned bits, uint64_t i, int64_t v)
{
	uint64_t bit = i * bits;
	unsigned u = (unsigned)v & ((1u << bits) - 1);
	p[bit / 8] |= (uint8_t)(u << (bit % 8));
	if (bit % 8 + bits > 8)
		p[bit / 8 + 1] |= (uint8_t)(u >> (8 - bit % 8));
}

/* ---- constexpr_lut_to_dense ---- */

static int run_lut(const cpu_step *st, const cpu_exec *ex)
{
	const anes_mil_op *op = st->op;
	const anes_mil_function *fn = ex->fn;
	const anes_mil_type *it = &fn->values[cpu_argid(op, "indices")].type;
	const anes_mil_type *lt = &fn->values[cpu_argid(op, "lut")].type;
	const anes_mil_type *ot = cpu_out_type(fn, op);
	const uint8_t *ind = cpu_ptr(ex, cpu_argid(op, "indices"));
	const uint8_t *lut = cpu_ptr(ex, cpu_argid(op, "lut"));
	uint8_t *out = cpu_ptr(ex, op->outputs[0]);
	size_t es = cpu_esize(lt->dtype);

	if (cpu_optid(op, "shape") != UINT32_MAX) {
		/* iOS 16: ot->count indices of log2(lut entries) bits, packed in a uint8 vector */
		unsigned nbits = (unsigned)__builtin_ctzll(lt->shape[0]);
		for (uint64_t i = 0; i < ot->count; i++) {
			uint64_t bit = i * nbits;
			unsigned v = ind[bit / 8] >> (bit % 8);
			if (bit % 8 + nbits > 8)
				v |= (unsigned)ind[bit / 8 + 1] << (8 - bit % 8);
			v &= (1u << nbits) - 1;
			memcpy(out + i * es, lut + (size_t)v * es, es);
		}
		return 0;
	}

	/* iOS 18: one LUT per block of indices; vectors of VECTOR_SIZE along vector_axis */
	uint32_t r = it->rank;
	uint64_t np = lt->shape[r], vs = lt->shape[r + 1];
	uint64_t idx[ANES_MAX_RANK] = {0}, block[ANES_MAX_RANK], lstride[ANES_MAX_RANK + 2], ostride[ANES_MAX_RANK];
	uint32_t va = 0;

	cpu_strides(lt, lstride);
	cpu_strides(ot, ostride);
	for (uint32_t d = 0; d < r; d++)
		block[d] = it->shape[d] / lt->shape[d];
	if (vs > 1) {
		int64_t a = 0;
		uint32_t n;
		anes_mil_const_ints(cpu_arg(fn, op, "vector_axis"), &a, 1, &n);
		va = (uint32_t)(a < 0 ? a + r : a);
	}
	for (uint64_t p = 0; p < it->count; p++) {
		uint64_t k = (uint64_t)anes_mil_load_i64(ind, it->dtype, p);
		uint64_t src = k * lstride[r], dst = 0;
		if (k >= np) /* cannot happen: n-bit indices, 2^n entries; kept as a guard */
			return cpu_run_fail(ex, op, -EINVAL, "index %llu is outside the lut", (unsigned long long)k);
		for (uint32_t d = 0; d < r; d++) {
			src += (idx[d] / block[d]) * lstride[d];
			dst += (d == va ? idx[d] * vs : idx[d]) * ostride[d];
		}
		for (uint64_t v = 0; v < vs; v++)
			memcpy(out + (dst + v * ostride[va]) * es, lut + (src + v) * es, es);
		step_index(idx, it->shape, r);
	}
	return 0;
}

/* ---- constexpr_sparse_to_dense ---- */

static int run_sparse(const cpu_step *st, const cpu_exec *ex)
{
	const anes_mil_op *op = st->op;
	const anes_mil_function *fn = ex->fn;
	const anes_mil_type *dt = &fn->values[cpu_argid(op, "nonzero_data")].type;
	const anes_mil_type *ot = cpu_out_type(fn, op);
	const uint8_t *data = cpu_ptr(ex, cpu_argid(op, "nonzero_data"));
	const uint8_t *mask = cpu_ptr(ex, cpu_argid(op, "mask"));
	uint8_t *out = cpu_ptr(ex, op->outputs[0]);
	unsigned bits = anes_mil_dtype_bits(ot->dtype);
	uint64_t k = 0, d = dt->count;

	memset(out, 0, (size_t)ot->bytes);
	for (uint64_t i = 0; i < ot->count; i++) {
		if (!(mask[i / 8] >> (i % 8) & 1))
			continue;
		if (k == d)
			return cpu_run_fail(ex, op, -EINVAL, "mask has more set bits than the %llu of nonzero_data",
			                    (unsigned long long)d);
		if (bits < 8)
			store_packed(out, bits, i, anes_mil_load_i64(data, dt->dtype, k));
		else
			memcpy(out + i * (bits / 8), data + k * (bits / 8), bits / 8);
		k++;
	}
	if (k != d)
		return cpu_run_fail(ex, op, -EINVAL, "mask has %llu set bits, nonzero_data has %llu elements",
		                    (unsigned long long)k, (unsigned long long)d);
	return 0;
}

/* ---- constexpr_blockwise_shift_scale ---- */

static float load_f32(const void *p, int dt, uint64_t i)
{
	if (anes_mil_dtype_is_float(dt))
		return (float)anes_mil_load_f64(p, dt, i);
	return (float)anes_mil_load_i64(p, dt, i);
}

static int run_shift_scale(const cpu_step *st, const cpu_exec *ex)
{
	const anes_mil_op *op = st->op;
	const anes_mil_function *fn = ex->fn;
	const anes_mil_type *dt = &fn->values[cpu_argid(op, "data")].type;
	const anes_mil_type *sty = &fn->values[cpu_argid(op, "scale")].type;
	const anes_mil_type *ot = cpu_out_type(fn, op);
	uint32_t oid = cpu_optid(op, "offset");
	const void *data = cpu_ptr(ex, cpu_argid(op, "data"));
	const void *scale = cpu_ptr(ex, cpu_argid(op, "scale"));
	const void *off = oid != UINT32_MAX ? cpu_ptr(ex, oid) : NULL;
	int odt = oid != UINT32_MAX ? fn->values[oid].type.dtype : 0;
	void *out = cpu_ptr(ex, op->outputs[0]);
	uint32_t r = dt->rank;
	uint64_t idx[ANES_MAX_RANK] = {0}, block[ANES_MAX_RANK], sstride[ANES_MAX_RANK];

	cpu_strides(sty, sstride);
	for (uint32_t d = 0; d < r; d++)
		block[d] = dt->shape[d] / sty->shape[d];
	for (uint64_t i = 0; i < dt->count; i++) {
		uint64_t s = 0;
		for (uint32_t d = 0; d < r; d++)
			s += (idx[d] / block[d]) * sstride[d];
		float x = load_f32(data, dt->dtype, i);
		if (off)
			x -= load_f32(off, odt, s);
		x *= load_f32(scale, sty->dtype, s);
		if (ot->dtype == ANES_DT_FP16) {
			uint16_t h = anes_f32_to_f16_soft(x);
			memcpy((uint8_t *)out + 2 * i, &h, 2);
		} else {
			memcpy((uint8_t *)out + 4 * i, &x, 4);
		}
		step_index(idx, dt->shape, r);
	}
	return 0;
}

/* ---- the iOS 18 sparse-to-sparse ops ---- */

static bool bit_of(const uint8_t *m, uint64_t i)
{
	return m[i / 8] >> (i % 8) & 1;
}

/* the table of lut t (its first rank dims, strides ls) that position pos of
 * the dense layout (shape sh, blocks bl) reads */
static uint64_t block_offset(uint64_t pos, const uint64_t *sh, const uint64_t *bl, const uint64_t *ls, uint32_t r)
{
	uint64_t off = 0;
	for (uint32_t d = r; d-- > 0;) {
		off += (pos % sh[d]) / bl[d] * ls[d];
		pos /= sh[d];
	}
	return off;
}

/* constexpr_lut_to_sparse: the mask (expanded VECTOR_SIZE times along
 * vector_axis) and, for each set bit of it in row-major order, its palette
 * value: entry v of the vector that the index of its source position picks.
 * The dense layout is walked as [outer, dim, inner] around vector_axis, each
 * (outer, i) row of the source read VECTOR_SIZE times, so the ordinal of a
 * nonzero entry is a running count (no per-position table). */
static int run_lut_to_sparse(const cpu_step *st, const cpu_exec *ex)
{
	const anes_mil_op *op = st->op;
	const anes_mil_function *fn = ex->fn;
	const anes_mil_type *mt = &fn->values[cpu_argid(op, "indices_mask")].type;
	const anes_mil_type *it = &fn->values[cpu_argid(op, "indices_nonzero_data")].type;
	const anes_mil_type *lt = &fn->values[cpu_argid(op, "lut")].type;
	const anes_mil_type *omt = &fn->values[op->outputs[0]].type;
	const uint8_t *mask = cpu_ptr(ex, cpu_argid(op, "indices_mask"));
	const uint8_t *ind = cpu_ptr(ex, cpu_argid(op, "indices_nonzero_data"));
	const uint8_t *lut = cpu_ptr(ex, cpu_argid(op, "lut"));
	uint8_t *omask = cpu_ptr(ex, op->outputs[0]), *out = cpu_ptr(ex, op->outputs[1]);
	size_t es = cpu_esize(lt->dtype);
	uint32_t r = mt->rank, va = 0;
	uint64_t np = lt->shape[r], vs = lt->shape[r + 1], D = it->count, k = 0, o = 0;
	uint64_t block[ANES_MAX_RANK], lstride[ANES_MAX_RANK + 2], outer, dim, inner;

	cpu_strides(lt, lstride);
	for (uint32_t d = 0; d < r; d++)
		block[d] = mt->shape[d] / lt->shape[d];
	if (cpu_optid(op, "vector_axis") != UINT32_MAX) {
		int64_t a = 0;
		uint32_t n;
		anes_mil_const_ints(cpu_arg(fn, op, "vector_axis"), &a, 1, &n);
		va = (uint32_t)(a < 0 ? a + r : a);
	}
	cpu_split_at(mt, va, &outer, &dim, &inner);
	memset(omask, 0, (size_t)omt->bytes);
	for (uint64_t row = 0; row < outer * dim; row++) {
		uint64_t base = k;
		for (uint64_t v = 0; v < vs; v++) {
			k = base;
			for (uint64_t t = 0; t < inner; t++) {
				uint64_t pos = row * inner + t, q = (row * vs + v) * inner + t;
				if (!bit_of(mask, pos))
					continue;
				if (k == D)
					return cpu_run_fail(ex, op, -EINVAL, "indices_mask has more set bits than the %llu of "
					                    "indices_nonzero_data", (unsigned long long)D);
				uint64_t idx = (uint64_t)anes_mil_load_i64(ind, it->dtype, k++);
				if (idx >= np) /* cannot happen: n-bit indices, 2^n entries; kept as a guard */
					return cpu_run_fail(ex, op, -EINVAL, "index %llu is outside the lut", (unsigned long long)idx);
				uint64_t src = block_offset(pos, mt->shape, block, lstride, r) + idx * lstride[r] + v;
				omask[q / 8] |= (uint8_t)(1u << (q % 8));
				memcpy(out + o++ * es, lut + src * es, es);
			}
		}
	}
	if (k != D)
		return cpu_run_fail(ex, op, -EINVAL, "indices_mask has %llu set bits, indices_nonzero_data has %llu elements",
		                    (unsigned long long)k, (unsigned long long)D);
	return 0;
}

/* constexpr_sparse_blockwise_shift_scale: the mask as it is, and each
 * nonzero entry j (at position pos of the dense layout, in row-major order)
 * as scale[b] * (nonzero_data[j] - offset[b]), b the block of pos; fp32,
 * rounded once */
static int run_sparse_shift_scale(const cpu_step *st, const cpu_exec *ex)
{
	const anes_mil_op *op = st->op;
	const anes_mil_function *fn = ex->fn;
	const anes_mil_type *mt = &fn->values[cpu_argid(op, "data_mask")].type;
	const anes_mil_type *dt = &fn->values[cpu_argid(op, "nonzero_data")].type;
	const anes_mil_type *sty = &fn->values[cpu_argid(op, "scale")].type;
	uint32_t oid = cpu_optid(op, "offset");
	const uint8_t *mask = cpu_ptr(ex, cpu_argid(op, "data_mask"));
	const void *data = cpu_ptr(ex, cpu_argid(op, "nonzero_data"));
	const void *scale = cpu_ptr(ex, cpu_argid(op, "scale"));
	const void *off = oid != UINT32_MAX ? cpu_ptr(ex, oid) : NULL;
	int odt = oid != UINT32_MAX ? fn->values[oid].type.dtype : 0;
	uint8_t *out = cpu_ptr(ex, op->outputs[1]);
	uint64_t block[ANES_MAX_RANK], sstride[ANES_MAX_RANK], k = 0, D = dt->count;

	cpu_strides(sty, sstride);
	for (uint32_t d = 0; d < mt->rank; d++)
		block[d] = mt->shape[d] / sty->shape[d];
	memmove(cpu_ptr(ex, op->outputs[0]), mask, (size_t)mt->bytes);
	for (uint64_t pos = 0; pos < mt->count; pos++) {
		if (!bit_of(mask, pos))
			continue;
		if (k == D)
			return cpu_run_fail(ex, op, -EINVAL, "data_mask has more set bits than the %llu of nonzero_data",
			                    (unsigned long long)D);
		uint64_t s = block_offset(pos, mt->shape, block, sstride, mt->rank);
		float x = load_f32(data, dt->dtype, k);
		if (off)
			x -= load_f32(off, odt, s);
		x *= load_f32(scale, sty->dtype, s);
		if (sty->dtype == ANES_DT_FP16) {
			uint16_t h = anes_f32_to_f16_soft(x);
			memcpy(out + 2 * k, &h, 2);
		} else {
			memcpy(out + 4 * k, &x, 4);
		}
		k++;
	}
	if (k != D)
		return cpu_run_fail(ex, op, -EINVAL, "data_mask has %llu set bits, nonzero_data has %llu elements",
		                    (unsigned long long)k, (unsigned long long)D);
	return 0;
}

/* ---- constexpr_cast ---- */

static int run_cexpr_cast(const cpu_step *st, const cpu_exec *ex)
{
	const anes_mil_op *op = st->op;
	const anes_mil_type *ot = cpu_out_type(ex->fn, op);

	cpu_to_f32(cpu_ptr(ex, op->outputs[0]), cpu_ptr(ex, cpu_argid(op, "source_val")), ANES_DT_FP16,
	           (size_t)ot->count);
	return 0;
}

const cpu_opimpl cpu_constexpr_impls[] = {
	{"constexpr_blockwise_shift_scale", NULL, run_shift_scale},
	{"constexpr_cast", NULL, run_cexpr_cast},
	{"constexpr_lut_to_dense", NULL, run_lut},
	{"constexpr_lut_to_sparse", NULL, run_lut_to_sparse},
	{"constexpr_sparse_blockwise_shift_scale", NULL, run_sparse_shift_scale},
	{"constexpr_sparse_to_dense", NULL, run_sparse},
	{NULL, NULL, NULL},
};
