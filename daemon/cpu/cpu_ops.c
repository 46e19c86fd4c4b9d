/* SPDX-License-Identifier: MIT */
/*
 * CPU reference kernels: conversions, elementwise ops, shape ops, casts and
 * quantization, and the kernel table.  (matmul, linear, conv, softmax,
 * reductions, layer_norm and attention are in cpu_nn.c.)
 *
 * fp16 tensors are stored as IEEE half bits; float kernels compute in fp32
 * and round to fp16 (nearest even) once, at the op's output.  Every index
 * used here comes from the compile-time plan (shapes checked by daemon/mil),
 * never from tensor contents -- except gather's indices, which are checked
 * one by one as they are read.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "cpu_internal.h"

int cpu_fail(cpu_plan_ctx *pc, const anes_mil_op *op, int rc, const char *fmt, ...)
{
	char msg[384];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (pc->errbuf && pc->errbuf_len)
		snprintf(pc->errbuf, pc->errbuf_len, "line %u: op '%s' (%s): %s", op->line, op->def->name,
		         op->name ? op->name : "", msg);
	return rc;
}

int cpu_run_fail(const cpu_exec *ex, const anes_mil_op *op, int rc, const char *fmt, ...)
{
	char msg[384];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (ex->errbuf && ex->errbuf_len)
		snprintf(ex->errbuf, ex->errbuf_len, "line %u: op '%s' (%s): %s", op->line, op->def->name,
		         op->name ? op->name : "", msg);
	return rc;
}

int cpu_need_float(cpu_plan_ctx *pc, const anes_mil_op *op, int dt)
{
	if (dt != ANES_DT_FP16 && dt != ANES_DT_FP32)
		return cpu_fail(pc, op, -ENOTSUP, "dtype %s is not supported by the CPU backend (fp16 and fp32 are)",
		                anes_mil_dtype_name(dt));
	return 0;
}

/* ---- conversions ---- */

void cpu_to_f32(float *dst, const void *src, int dt, size_t n)
{
	switch (dt) {
	case ANES_DT_FP16: anes_f16_to_f32_n(dst, src, n); break;
	case ANES_DT_FP32: if ((const void *)dst != src) memmove(dst, src, n * 4); break;
	default:
		for (size_t i = 0; i < n; i++)
			dst[i] = (float)cpu_load_f64(src, dt, i);
		break;
	}
}

void cpu_from_f32(void *dst, int dt, const float *src, size_t n)
{
	switch (dt) {
	case ANES_DT_FP16: anes_f32_to_f16_n(dst, src, n); break;
	case ANES_DT_FP32: if (dst != (const void *)src) memmove(dst, src, n * 4); break;
	default:
		for (size_t i = 0; i < n; i++)
			cpu_store_f64(dst, dt, i, src[i]);
		break;
	}
}

void cpu_round_f16(float *x, size_t n)
{
	uint16_t h[256];

	for (size_t i = 0; i < n; i += 256) {
		size_t m = n - i < 256 ? n - i : 256;
		anes_f32_to_f16_n(h, x + i, m);
		anes_f16_to_f32_n(x + i, h, m);
	}
}

float *cpu_f32_dup(const void *data, int dt, uint64_t n)
{
	float *f = malloc((size_t)(n ? n : 1) * sizeof(float));
	if (f)
		cpu_to_f32(f, data, dt, (size_t)n);
	return f;
}

const float *cpu_load_f32(const cpu_exec *ex, uint32_t vid, uint8_t **slot)
{
	const anes_mil_value *v = &ex->fn->values[vid];
	const void *p = cpu_ptr(ex, vid);
	float *d;

	if (v->type.dtype == ANES_DT_FP32)
		return p;
	d = (float *)(void *)*slot;
	*slot += cpu_align64(v->type.count * 4);
	cpu_to_f32(d, p, v->type.dtype, (size_t)v->type.count);
	return d;
}

double cpu_load_f64(const void *p, int dt, size_t i)
{
	return anes_mil_load_f64(p, dt, i);
}

void cpu_strides(const anes_mil_type *t, uint64_t *s)
{
	uint64_t k = 1;
	for (uint32_t i = t->rank; i-- > 0;) {
		s[i] = k;
		k *= t->shape[i];
	}
}

void cpu_split_at(const anes_mil_type *x, uint32_t axis, uint64_t *outer, uint64_t *dim, uint64_t *inner)
{
	*outer = *inner = 1;
	for (uint32_t i = 0; i < axis && i < x->rank; i++)
		*outer *= x->shape[i];
	for (uint32_t i = axis + 1; i < x->rank; i++)
		*inner *= x->shape[i];
	*dim = axis < x->rank ? x->shape[axis] : 1;
}

void cpu_reduce_layout(const anes_mil_type *x, const bool *red, uint32_t *rank, uint64_t *shape, uint64_t *ostride)
{
	uint64_t s = 1;

	if (x->rank == 0) {
		*rank = 1;
		shape[0] = 1;
		ostride[0] = 0;
		return;
	}
	*rank = x->rank;
	for (uint32_t i = x->rank; i-- > 0;) {
		shape[i] = x->shape[i];
		ostride[i] = red[i] ? 0 : s;
		if (!red[i])
			s *= x->shape[i];
	}
}

void cpu_axes_mask(const anes_mil_value *av, uint32_t rank, bool *mask)
{
	int64_t axes[ANES_MAX_RANK];
	uint32_t n = 0;

	for (uint32_t i = 0; i < rank; i++)
		mask[i] = av == NULL;
	if (av && anes_mil_const_ints(av, axes, ANES_MAX_RANK, &n) == 0)
		for (uint32_t i = 0; i < n; i++)
			if (axes[i] >= -(int64_t)rank && axes[i] < (int64_t)rank)
				mask[axes[i] < 0 ? axes[i] + rank : axes[i]] = true;
}

static double sat(double v, double lo, double hi)
{
	if (isnan(v))
		return 0;
	v = trunc(v);
	return v < lo ? lo : v > hi ? hi : v;
}

void cpu_store_f64(void *p, int dt, size_t i, double v)
{
	switch (dt) {
	case ANES_DT_FP16: ((uint16_t *)p)[i] = anes_f32_to_f16((float)v); break;
	case ANES_DT_FP32: ((float *)p)[i] = (float)v; break;
	case ANES_DT_INT32: ((int32_t *)p)[i] = (int32_t)sat(v, INT32_MIN, INT32_MAX); break;
	case ANES_DT_INT16: ((int16_t *)p)[i] = (int16_t)sat(v, INT16_MIN, INT16_MAX); break;
	case ANES_DT_INT8: ((int8_t *)p)[i] = (int8_t)sat(v, INT8_MIN, INT8_MAX); break;
	case ANES_DT_UINT8: ((uint8_t *)p)[i] = (uint8_t)sat(v, 0, UINT8_MAX); break;
	case ANES_DT_BOOL: ((uint8_t *)p)[i] = v != 0; break;
	default: break;
	}
}

void cpu_input_strides(const anes_mil_type *t, uint32_t r, const uint64_t *oshape, uint64_t *s)
{
	uint64_t st = 1;

	for (uint32_t i = r; i-- > 0;) {
		uint32_t off = r - t->rank;
		if (i < off) {
			s[i] = 0;
			continue;
		}
		uint64_t d = t->shape[i - off];
		s[i] = (d == 1 && oshape[i] != 1) ? 0 : st;
		st *= d;
	}
}

/* ---- copies: identity, reshape, expand_dims, squeeze ---- */

/* Large copies go in 1 MiB pieces over the pool (a single thread does not
 * reach the memory bandwidth).  Each piece is a memmove within its own
 * range: when source and destination overlap (aliased caller buffers) the
 * result is undefined, but every access stays in bounds. */
#define COPY_PIECE ((uint64_t)1 << 20)

typedef struct copy_job {
	uint8_t *dst;
	const uint8_t *src;
	uint64_t bytes;
} copy_job;

static void copy_task(void *ctx, uint64_t b, uint64_t e)
{
	const copy_job *j = ctx;
	uint64_t lo = b * COPY_PIECE, hi = e * COPY_PIECE < j->bytes ? e * COPY_PIECE : j->bytes;
	memmove(j->dst + lo, j->src + lo, (size_t)(hi - lo));
}

static int run_copy(const cpu_step *st, const cpu_exec *ex)
{
	const anes_mil_op *op = st->op;
	uint32_t x = cpu_argid(op, "x"), o = op->outputs[0];
	copy_job j = {cpu_ptr(ex, o), cpu_ptr(ex, x), ex->fn->values[o].type.bytes};
	if (j.dst == j.src)
		return 0;
	if (j.bytes < 4 * COPY_PIECE) {
		memmove(j.dst, j.src, (size_t)j.bytes);
		return 0;
	}
	cpu_parallel(ex->cfg->pool, (j.bytes + COPY_PIECE - 1) / COPY_PIECE, 1, copy_task, &j);
	return 0;
}

/* ---- generic strided gather-copy (slice_by_size, slice_by_index, transpose) ----
 * out[i0..ir) = in[base + sum idx_d * stride_d], strides in elements, may be negative */

typedef struct strided_params {
	uint32_t rank;
	size_t es;
	uint64_t out[ANES_MAX_RANK];
	int64_t stride[ANES_MAX_RANK];
	int64_t base;
} strided_params;

static int run_strided(const cpu_step *st, const cpu_exec *ex)
{
	const strided_params *p = st->params;
	const uint8_t *src = cpu_ptr(ex, cpu_argid(st->op, "x"));
	uint8_t *dst = cpu_ptr(ex, st->op->outputs[0]);
	uint64_t idx[ANES_MAX_RANK] = {0}, rows = 1;
	int64_t off = p->base;
	uint32_t r = p->rank;
	uint64_t inner = p->out[r - 1];
	int64_t is = p->stride[r - 1];

	for (uint32_t i = 0; i + 1 < r; i++)
		rows *= p->out[i];
	for (uint64_t k = 0; k < rows; k++) {
		if (is == 1) {
			memmove(dst, src + off * (int64_t)p->es, (size_t)(inner * p->es));
		} else {
			switch (p->es) {
			case 2: {
				const uint16_t *s = (const uint16_t *)(const void *)src + off;
				uint16_t *d = (uint16_t *)(void *)dst;
				for (uint64_t j = 0; j < inner; j++)
					d[j] = s[(int64_t)j * is];
				break;
			}
			case 4: {
				const uint32_t *s = (const uint32_t *)(const void *)src + off;
				uint32_t *d = (uint32_t *)(void *)dst;
				for (uint64_t j = 0; j < inner; j++)
					d[j] = s[(int64_t)j * is];
				break;
			}
			default: {
				const uint8_t *s = src + off;
				for (uint64_t j = 0; j < inner; j++)
					dst[j] = s[(int64_t)j * is];
				break;
			}
			}
		}
		dst += inner * p->es;
		for (uint32_t d = r - 1; d-- > 0;) {
			off += p->stride[d];
			if (++idx[d] < p->out[d])
				break;
			off -= p->stride[d] * (int64_t)p->out[d];
			idx[d] = 0;
		}
	}
	return 0;
}

static strided_params *strided_new(const anes_mil_type *x)
{
	strided_params *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->es = cpu_esize(x->dtype);
	if (x->rank == 0) {
		p->rank = 1;
		p->out[0] = 1;
		p->stride[0] = 1;
	}
	return p;
}

static void in_strides(const anes_mil_type *x, int64_t *istr)
{
	int64_t s = 1;
	for (uint32_t i = x->rank; i-- > 0;) {
		istr[i] = s;
		s *= (int64_t)x->shape[i];
	}
}

static int plan_slice(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type, *o = cpu_out_type(fn, op);
	int64_t begin[ANES_MAX_RANK], istr[ANES_MAX_RANK];
	uint32_t n;
	strided_params *p = strided_new(x);

	(void)pc;
	if (!p)
		return -ENOMEM;
	anes_mil_const_ints(cpu_arg(fn, op, "begin"), begin, ANES_MAX_RANK, &n);
	in_strides(x, istr);
	if (x->rank) {
		p->rank = x->rank;
		for (uint32_t i = 0; i < x->rank; i++) {
			p->out[i] = o->shape[i];
			p->stride[i] = istr[i];
			p->base += begin[i] * istr[i];
		}
	}
	st->params = p;
	return 0;
}

static int plan_slice_by_index(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	int64_t begin[ANES_MAX_RANK], end[ANES_MAX_RANK], stride[ANES_MAX_RANK], istr[ANES_MAX_RANK];
	bool bm[ANES_MAX_RANK] = {false}, em[ANES_MAX_RANK] = {false}, sm[ANES_MAX_RANK] = {false};
	uint32_t n, r = 0;
	strided_params *p = strided_new(x);

	(void)pc;
	if (!p)
		return -ENOMEM;
	anes_mil_const_ints(cpu_arg(fn, op, "begin"), begin, ANES_MAX_RANK, &n);
	anes_mil_const_ints(cpu_arg(fn, op, "end"), end, ANES_MAX_RANK, &n);
	for (uint32_t i = 0; i < x->rank; i++)
		stride[i] = 1;
	if (cpu_arg(fn, op, "stride"))
		anes_mil_const_ints(cpu_arg(fn, op, "stride"), stride, ANES_MAX_RANK, &n);
	const char *mn[3] = {"begin_mask", "end_mask", "squeeze_mask"};
	bool *mv[3] = {bm, em, sm};
	for (int k = 0; k < 3; k++) {
		const anes_mil_value *v = cpu_arg(fn, op, mn[k]);
		if (v)
			for (uint32_t i = 0; i < x->rank; i++)
				mv[k][i] = ((const uint8_t *)v->data)[i] != 0;
	}
	in_strides(x, istr);
	/* the type checker accepted these bounds; normalize them the same way */
	for (uint32_t i = 0; i < x->rank; i++) {
		int64_t d = (int64_t)x->shape[i], s = stride[i], b = begin[i], len;
		if (sm[i]) {
			if (b < 0)
				b += d;
			p->base += b * istr[i];
			continue;
		}
		anes_mil_slice_axis(d, b, end[i], s, bm[i], em[i], &b, &len);
		p->base += b * istr[i];
		p->out[r] = (uint64_t)len;
		p->stride[r] = s * istr[i];
		r++;
	}
	if (r == 0) {
		p->rank = 1;
		p->out[0] = 1;
		p->stride[0] = 1;
	} else {
		p->rank = r;
	}
	st->params = p;
	return 0;
}

static int plan_transpose(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	int64_t perm[ANES_MAX_RANK], istr[ANES_MAX_RANK];
	uint32_t n;
	strided_params *p = strided_new(x);

	(void)pc;
	if (!p)
		return -ENOMEM;
	anes_mil_const_ints(cpu_arg(fn, op, "perm"), perm, ANES_MAX_RANK, &n);
	in_strides(x, istr);
	if (x->rank) {
		p->rank = x->rank;
		for (uint32_t i = 0; i < x->rank; i++) {
			uint32_t a = (uint32_t)(perm[i] < 0 ? perm[i] + x->rank : perm[i]);
			p->out[i] = x->shape[a];
			p->stride[i] = istr[a];
		}
	}
	st->params = p;
	return 0;
}

/* ---- split: outputs are consecutive blocks along axis ---- */

typedef struct split_params {
	uint64_t outer, after;
	uint64_t dim;
	size_t es;
	uint32_t n;
	uint64_t sz[];       /* per output: size along axis */
} split_params;

static int plan_split(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	int64_t axis_v;
	uint32_t n, axis;
	split_params *p;

	(void)pc;
	anes_mil_const_ints(cpu_arg(fn, op, "axis"), &axis_v, 1, &n);
	axis = (uint32_t)(axis_v < 0 ? axis_v + x->rank : axis_v);
	p = calloc(1, sizeof *p + op->n_outputs * sizeof(uint64_t));
	if (!p)
		return -ENOMEM;
	cpu_split_at(x, axis, &p->outer, &p->dim, &p->after);
	p->es = cpu_esize(x->dtype);
	p->n = op->n_outputs;
	for (uint32_t k = 0; k < op->n_outputs; k++)
		p->sz[k] = fn->values[op->outputs[k]].type.shape[axis];
	st->params = p;
	return 0;
}

static int run_split(const cpu_step *st, const cpu_exec *ex)
{
	const split_params *p = st->params;
	const uint8_t *src = cpu_ptr(ex, cpu_argid(st->op, "x"));
	size_t row = (size_t)(p->dim * p->after * p->es);

	for (uint32_t k = 0, at = 0; k < p->n; k++) {
		uint8_t *dst = cpu_ptr(ex, st->op->outputs[k]);
		size_t nb = (size_t)(p->sz[k] * p->after * p->es);
		for (uint64_t o = 0; o < p->outer; o++)
			memmove(dst + o * nb, src + o * row + (size_t)at * p->after * p->es, nb);
		at += (uint32_t)p->sz[k];
	}
	return 0;
}

/* ---- concat ---- */

typedef struct concat_params {
	uint64_t outer;      /* product of dims before axis */
	uint64_t dim;        /* interleave: the (common) axis dim */
	uint64_t after;      /* product of dims after axis */
	bool interleave;
	size_t es;
	uint32_t n;
	uint64_t blk[];      /* per input: elements per outer step (axis dim * after) */
} concat_params;

static int plan_concat(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_arg *vals = anes_mil_op_arg(op, "values");
	const anes_mil_type *t0 = &fn->values[vals->vals[0]].type;
	int64_t axis_v;
	uint32_t n, axis;
	bool interleave = false;
	concat_params *p;

	(void)pc;
	anes_mil_const_ints(cpu_arg(fn, op, "axis"), &axis_v, 1, &n);
	if (cpu_arg(fn, op, "interleave"))
		anes_mil_const_bool(cpu_arg(fn, op, "interleave"), &interleave);
	axis = (uint32_t)(axis_v < 0 ? axis_v + t0->rank : axis_v);
	p = calloc(1, sizeof *p + vals->n * sizeof(uint64_t));
	if (!p)
		return -ENOMEM;
	p->outer = 1;
	for (uint32_t i = 0; i < axis; i++)
		p->outer *= t0->shape[i];
	p->after = 1;
	for (uint32_t i = axis + 1; i < t0->rank; i++)
		p->after *= t0->shape[i];
	p->dim = t0->shape[axis];
	p->interleave = interleave;
	p->es = cpu_esize(t0->dtype);
	p->n = vals->n;
	for (uint32_t k = 0; k < vals->n; k++)
		p->blk[k] = fn->values[vals->vals[k]].type.shape[axis] * p->after;
	st->params = p;
	return 0;
}

static int run_concat(const cpu_step *st, const cpu_exec *ex)
{
	const concat_params *p = st->params;
	const anes_mil_arg *vals = anes_mil_op_arg(st->op, "values");
	uint8_t *dst = cpu_ptr(ex, st->op->outputs[0]);

	for (uint64_t o = 0; o < p->outer; o++) {
		if (!p->interleave) {
			for (uint32_t k = 0; k < p->n; k++) {
				const uint8_t *src = cpu_ptr(ex, vals->vals[k]);
				size_t nb = (size_t)(p->blk[k] * p->es);
				memmove(dst, src + o * nb, nb);
				dst += nb;
			}
		} else {
			size_t nb = (size_t)(p->after * p->es);
			for (uint64_t i = 0; i < p->dim; i++) {
				for (uint32_t k = 0; k < p->n; k++) {
					const uint8_t *src = cpu_ptr(ex, vals->vals[k]);
					memmove(dst, src + (o * p->dim + i) * nb, nb);
					dst += nb;
				}
			}
		}
	}
	return 0;
}

/* ---- tile ---- */

typedef struct tile_params {
	uint32_t rank;
	size_t es;
	uint64_t in[ANES_MAX_RANK], out[ANES_MAX_RANK];
	uint64_t istr[ANES_MAX_RANK];
} tile_params;

static int plan_tile(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type, *o = cpu_out_type(fn, op);
	tile_params *p = calloc(1, sizeof *p);
	uint64_t s = 1;

	(void)pc;
	if (!p)
		return -ENOMEM;
	p->es = cpu_esize(x->dtype);
	p->rank = x->rank ? x->rank : 1;
	for (uint32_t i = 0; i < p->rank; i++) {
		p->in[i] = x->rank ? x->shape[i] : 1;
		p->out[i] = x->rank ? o->shape[i] : 1;
	}
	for (uint32_t i = p->rank; i-- > 0;) {
		p->istr[i] = s;
		s *= p->in[i];
	}
	st->params = p;
	return 0;
}

static int run_tile(const cpu_step *st, const cpu_exec *ex)
{
	const tile_params *p = st->params;
	const uint8_t *src = cpu_ptr(ex, cpu_argid(st->op, "x"));
	uint8_t *dst = cpu_ptr(ex, st->op->outputs[0]);
	uint32_t r = p->rank;
	uint64_t idx[ANES_MAX_RANK] = {0}, rows = 1;
	size_t rowb = (size_t)(p->in[r - 1] * p->es);
	uint64_t reps = p->out[r - 1] / p->in[r - 1];

	for (uint32_t i = 0; i + 1 < r; i++)
		rows *= p->out[i];
	for (uint64_t k = 0; k < rows; k++) {
		uint64_t off = 0;
		for (uint32_t d = 0; d + 1 < r; d++)
			off += (idx[d] % p->in[d]) * p->istr[d];
		for (uint64_t t = 0; t < reps; t++) {
			memmove(dst, src + off * p->es, rowb);
			dst += rowb;
		}
		for (uint32_t d = r - 1; d-- > 0;) {
			if (++idx[d] < p->out[d])
				break;
			idx[d] = 0;
		}
	}
	return 0;
}

/* ---- gather ---- */

typedef struct gather_params {
	uint64_t pre, dim, post, nidx;
	size_t es;
	int idt;
} gather_params;

static int plan_gather(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type, *it = &cpu_arg(fn, op, "indices")->type;
	int64_t axis_v = 0;
	uint32_t n, axis;
	gather_params *p = calloc(1, sizeof *p);

	(void)pc;
	if (!p)
		return -ENOMEM;
	if (cpu_arg(fn, op, "axis"))
		anes_mil_const_ints(cpu_arg(fn, op, "axis"), &axis_v, 1, &n);
	axis = (uint32_t)(axis_v < 0 ? axis_v + x->rank : axis_v);
	cpu_split_at(x, axis, &p->pre, &p->dim, &p->post);
	p->nidx = it->count;
	p->es = cpu_esize(x->dtype);
	p->idt = it->dtype;
	st->params = p;
	return 0;
}

/* Out-of-range indices (outside [-dim, dim)) fail the run.  indices may be
 * the caller's shared memory (a function input, or a function output that a
 * client can write during the run): each index is read once into a register
 * (the empty asm keeps the compiler from reloading it after the check),
 * checked, then used, so memory changing under us cannot matter. */
static int run_gather(const cpu_step *st, const cpu_exec *ex)
{
	const gather_params *p = st->params;
	const uint8_t *src = cpu_ptr(ex, cpu_argid(st->op, "x"));
	const void *ind = cpu_ptr(ex, cpu_argid(st->op, "indices"));
	uint8_t *dst = cpu_ptr(ex, st->op->outputs[0]);
	size_t nb = (size_t)(p->post * p->es);

	for (uint64_t a = 0; a < p->pre; a++) {
		for (uint64_t i = 0; i < p->nidx; i++) {
			int64_t ix = (int64_t)cpu_load_f64(ind, p->idt, (size_t)i);
			__asm__ volatile("" : "+r"(ix));
			if (ix < -(int64_t)p->dim || ix >= (int64_t)p->dim)
				return cpu_run_fail(ex, st->op, -EINVAL, "indices[%llu] = %lld is out of range [%lld, %lld)",
				                    (unsigned long long)i, (long long)ix, -(long long)p->dim,
				                    (long long)p->dim);
			if (ix < 0)
				ix += (int64_t)p->dim;
			memmove(dst, src + ((a * p->dim + (uint64_t)ix) * nb), nb);
			dst += nb;
		}
	}
	return 0;
}

/* ---- pad ---- */

enum { PAD_CONSTANT, PAD_REFLECT, PAD_REPLICATE };

typedef struct pad_params {
	uint32_t rank;
	int mode;
	size_t es;
	uint8_t cval[8];     /* constant_val in x's dtype */
	uint64_t in[ANES_MAX_RANK], out[ANES_MAX_RANK], before[ANES_MAX_RANK], istr[ANES_MAX_RANK];
} pad_params;

static int plan_pad(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	int64_t pad[2 * ANES_MAX_RANK];
	uint32_t n;
	double cv = 0;
	const char *mode = "constant";
	pad_params *p;

	(void)pc;
	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	anes_mil_const_ints(cpu_arg(fn, op, "pad"), pad, 2 * ANES_MAX_RANK, &n);
	if (cpu_arg(fn, op, "constant_val"))
		anes_mil_const_f64(cpu_arg(fn, op, "constant_val"), &cv);
	if (cpu_arg(fn, op, "mode"))
		mode = anes_mil_const_string(cpu_arg(fn, op, "mode"));
	p->mode = strcmp(mode, "reflect") == 0 ? PAD_REFLECT : strcmp(mode, "replicate") == 0 ? PAD_REPLICATE
	                                                                                     : PAD_CONSTANT;
	p->es = cpu_esize(x->dtype);
	cpu_store_f64(p->cval, x->dtype, 0, cv);
	p->rank = x->rank;
	uint64_t s = 1;
	for (uint32_t i = x->rank; i-- > 0;) {
		p->in[i] = x->shape[i];
		p->istr[i] = s;
		s *= x->shape[i];
	}
	for (uint32_t i = 0; i < x->rank; i++) {
		p->out[i] = x->shape[i];
		p->before[i] = 0;
	}
	for (uint32_t j = 0; j < n / 2; j++) {
		uint32_t a = x->rank - n / 2 + j;
		p->before[a] = (uint64_t)pad[2 * j];
		p->out[a] = x->shape[a] + (uint64_t)pad[2 * j] + (uint64_t)pad[2 * j + 1];
	}
	st->params = p;
	return 0;
}

/* source index along one dim, or -1 for the constant */
static int64_t pad_src(const pad_params *p, uint32_t d, uint64_t o)
{
	int64_t i = (int64_t)o - (int64_t)p->before[d], n = (int64_t)p->in[d];
	if (i >= 0 && i < n)
		return i;
	switch (p->mode) {
	case PAD_REFLECT:
		/* pads are < n (checked), one reflection is enough */
		return i < 0 ? -i : 2 * (n - 1) - i;
	case PAD_REPLICATE:
		return i < 0 ? 0 : n - 1;
	default:
		return -1;
	}
}

static int run_pad(const cpu_step *st, const cpu_exec *ex)
{
	const pad_params *p = st->params;
	const uint8_t *src = cpu_ptr(ex, cpu_argid(st->op, "x"));
	uint8_t *dst = cpu_ptr(ex, st->op->outputs[0]);
	uint32_t r = p->rank;
	uint64_t idx[ANES_MAX_RANK] = {0}, rows = 1, inner = p->out[r - 1];
	size_t es = p->es;

	for (uint32_t i = 0; i + 1 < r; i++)
		rows *= p->out[i];
	for (uint64_t k = 0; k < rows; k++) {
		int64_t off = 0;
		bool cst = false;
		for (uint32_t d = 0; d + 1 < r; d++) {
			int64_t s = pad_src(p, d, idx[d]);
			if (s < 0)
				cst = true;
			else
				off += s * (int64_t)p->istr[d];
		}
		for (uint64_t j = 0; j < inner; j++) {
			int64_t s = cst ? -1 : pad_src(p, r - 1, j);
			memmove(dst + j * es, s < 0 ? p->cval : src + (size_t)(off + s) * es, es);
		}
		dst += inner * es;
		for (uint32_t d = r - 1; d-- > 0;) {
			if (++idx[d] < p->out[d])
				break;
			idx[d] = 0;
		}
	}
	return 0;
}

/* ---- unary elementwise ---- */

enum {
	U_NEG, U_EXP, U_LOG, U_SQRT, U_RSQRT, U_ABS, U_RELU, U_SIGMOID, U_TANH, U_GELU_EXACT, U_GELU_TANH,
	U_GELU_SIGMOID, U_SILU, U_ERF, U_CLIP, U_SQUARE, U_INVERSE,
};

typedef struct unary_params {
	int kind, dtype;
	float eps, lo, hi;
	uint64_t count;
	/* run-time */
} unary_params;

static const struct {
	const char *name;
	int kind;
	float eps;           /* default epsilon (MIL's) */
} unary_ops[] = {
	{"neg", U_NEG, 0}, {"exp", U_EXP, 0}, {"log", U_LOG, 1e-45f}, {"sqrt", U_SQRT, 0},
	{"rsqrt", U_RSQRT, 1e-12f}, {"abs", U_ABS, 0}, {"relu", U_RELU, 0}, {"sigmoid", U_SIGMOID, 0},
	{"tanh", U_TANH, 0}, {"gelu", U_GELU_EXACT, 0}, {"silu", U_SILU, 0}, {"erf", U_ERF, 0},
	{"clip", U_CLIP, 0}, {"square", U_SQUARE, 0}, {"inverse", U_INVERSE, 1e-4f},
};

static int plan_unary(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	unary_params *p;
	double d;

	if (cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	for (size_t i = 0; i < sizeof unary_ops / sizeof unary_ops[0]; i++)
		if (strcmp(unary_ops[i].name, op->def->name) == 0) {
			p->kind = unary_ops[i].kind;
			p->eps = unary_ops[i].eps;
		}
	if (cpu_arg(fn, op, "epsilon") && anes_mil_const_f64(cpu_arg(fn, op, "epsilon"), &d) == 0)
		p->eps = (float)d;
	if (p->kind == U_GELU_EXACT && cpu_arg(fn, op, "mode")) {
		const char *m = anes_mil_const_string(cpu_arg(fn, op, "mode"));
		if (strcmp(m, "TANH_APPROXIMATION") == 0)
			p->kind = U_GELU_TANH;
		else if (strcmp(m, "SIGMOID_APPROXIMATION") == 0)
			p->kind = U_GELU_SIGMOID;
	}
	if (p->kind == U_CLIP) {
		anes_mil_const_f64(cpu_arg(fn, op, "alpha"), &d);
		p->lo = (float)d;
		anes_mil_const_f64(cpu_arg(fn, op, "beta"), &d);
		p->hi = (float)d;
	}
	p->dtype = x->dtype;
	p->count = x->count;
	st->params = p;
	return 0;
}

static float sigmoidf(float x)
{
	return 1.0f / (1.0f + expf(-x));
}

static void unary_apply(const unary_params *p, float *v, size_t n)
{
	switch (p->kind) {
	case U_NEG: for (size_t i = 0; i < n; i++) v[i] = -v[i]; break;
	case U_EXP: for (size_t i = 0; i < n; i++) v[i] = expf(v[i]); break;
	case U_LOG: for (size_t i = 0; i < n; i++) v[i] = logf(v[i] + p->eps); break;
	case U_SQRT: for (size_t i = 0; i < n; i++) v[i] = sqrtf(v[i]); break;
	case U_RSQRT: for (size_t i = 0; i < n; i++) v[i] = 1.0f / sqrtf(v[i] + p->eps); break;
	case U_ABS: for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]); break;
	case U_RELU: for (size_t i = 0; i < n; i++) v[i] = v[i] < 0 ? 0.0f : v[i]; break;
	case U_SIGMOID: for (size_t i = 0; i < n; i++) v[i] = sigmoidf(v[i]); break;
	case U_TANH: for (size_t i = 0; i < n; i++) v[i] = tanhf(v[i]); break;
	case U_GELU_EXACT:
		for (size_t i = 0; i < n; i++)
			v[i] = 0.5f * v[i] * (1.0f + erff(v[i] * 0.70710678118654752f));
		break;
	case U_GELU_TANH:
		for (size_t i = 0; i < n; i++) {
			float x = v[i];
			v[i] = 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
		}
		break;
	case U_GELU_SIGMOID: for (size_t i = 0; i < n; i++) v[i] = v[i] * sigmoidf(1.702f * v[i]); break;
	case U_SILU: for (size_t i = 0; i < n; i++) v[i] = v[i] * sigmoidf(v[i]); break;
	case U_ERF: for (size_t i = 0; i < n; i++) v[i] = erff(v[i]); break;
	case U_CLIP:
		for (size_t i = 0; i < n; i++)
			v[i] = v[i] < p->lo ? p->lo : v[i] > p->hi ? p->hi : v[i];
		break;
	case U_SQUARE: for (size_t i = 0; i < n; i++) v[i] = v[i] * v[i]; break;
	case U_INVERSE: for (size_t i = 0; i < n; i++) v[i] = 1.0f / (v[i] + p->eps); break;
	default: break;
	}
}

enum { CHUNK = 2048 };

typedef struct unary_job {
	const unary_params *p;
	const void *x;
	void *o;
} unary_job;

static void unary_task(void *ctx, uint64_t b, uint64_t e)
{
	const unary_job *j = ctx;
	float buf[CHUNK];

	for (uint64_t c = b; c < e; c++) {
		uint64_t i0 = c * CHUNK, n = j->p->count - i0 < CHUNK ? j->p->count - i0 : CHUNK;
		if (j->p->dtype == ANES_DT_FP32) {
			float *o = (float *)j->o + i0;
			memmove(o, (const float *)j->x + i0, (size_t)n * 4);
			unary_apply(j->p, o, (size_t)n);
		} else {
			anes_f16_to_f32_n(buf, (const uint16_t *)j->x + i0, (size_t)n);
			unary_apply(j->p, buf, (size_t)n);
			anes_f32_to_f16_n((uint16_t *)j->o + i0, buf, (size_t)n);
		}
	}
}

static int run_unary(const cpu_step *st, const cpu_exec *ex)
{
	const unary_params *p = st->params;
	unary_job j = {p, cpu_ptr(ex, cpu_argid(st->op, "x")), cpu_ptr(ex, st->op->outputs[0])};
	cpu_parallel(ex->cfg->pool, (p->count + CHUNK - 1) / CHUNK, 8, unary_task, &j);
	return 0;
}

/* ---- binary elementwise with broadcasting ---- */

enum { B_ADD, B_SUB, B_MUL, B_DIV, B_POW, B_MAX, B_MIN };

typedef struct binary_params {
	int kind, dtype;
	uint32_t rank;                     /* collapsed, >= 1 */
	uint64_t shape[ANES_MAX_RANK];     /* output */
	uint64_t sx[ANES_MAX_RANK], sy[ANES_MAX_RANK];   /* element strides, 0 where broadcast */
	uint64_t count;
} binary_params;

static int plan_binary(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type, *y = &cpu_arg(fn, op, "y")->type;
	const anes_mil_type *o = cpu_out_type(fn, op);
	const char *nm = op->def->name;
	binary_params *p;
	int kind = strcmp(nm, "add") == 0 ? B_ADD : strcmp(nm, "sub") == 0 ? B_SUB : strcmp(nm, "mul") == 0 ? B_MUL
	         : strcmp(nm, "real_div") == 0 ? B_DIV : strcmp(nm, "pow") == 0 ? B_POW
	         : strcmp(nm, "maximum") == 0 ? B_MAX : B_MIN;

	if (x->dtype == ANES_DT_INT32 && (kind == B_DIV || kind == B_POW))
		return cpu_fail(pc, op, -ENOTSUP, "int32 is not supported for this op (fp16 and fp32 are)");
	if (x->dtype != ANES_DT_INT32 && cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	p->kind = kind;
	p->dtype = x->dtype;
	p->count = o->count;
	if (o->rank == 0) {
		p->rank = 1;
		p->shape[0] = 1;
		p->sx[0] = p->sy[0] = 0;
	} else {
		uint64_t sx[ANES_MAX_RANK], sy[ANES_MAX_RANK];
		cpu_input_strides(x, o->rank, o->shape, sx);
		cpu_input_strides(y, o->rank, o->shape, sy);
		/* drop size-1 dims, merge dims that are contiguous for both inputs */
		uint32_t r = 0;
		for (uint32_t i = 0; i < o->rank; i++) {
			if (o->shape[i] == 1)
				continue;
			if (r > 0 && p->sx[r - 1] == sx[i] * o->shape[i] && p->sy[r - 1] == sy[i] * o->shape[i]) {
				p->shape[r - 1] *= o->shape[i];
				p->sx[r - 1] = sx[i];
				p->sy[r - 1] = sy[i];
				continue;
			}
			p->shape[r] = o->shape[i];
			p->sx[r] = sx[i];
			p->sy[r] = sy[i];
			r++;
		}
		if (r == 0) {
			p->shape[0] = 1;
			p->sx[0] = p->sy[0] = 0;
			r = 1;
		}
		p->rank = r;
	}
	st->params = p;
	return 0;
}

static void binary_apply(int kind, const float *a, const float *b, float *o, size_t n)
{
	switch (kind) {
	case B_ADD: for (size_t i = 0; i < n; i++) o[i] = a[i] + b[i]; break;
	case B_SUB: for (size_t i = 0; i < n; i++) o[i] = a[i] - b[i]; break;
	case B_MUL: for (size_t i = 0; i < n; i++) o[i] = a[i] * b[i]; break;
	case B_DIV: for (size_t i = 0; i < n; i++) o[i] = a[i] / b[i]; break;
	case B_POW: for (size_t i = 0; i < n; i++) o[i] = powf(a[i], b[i]); break;
	case B_MAX: for (size_t i = 0; i < n; i++) o[i] = a[i] > b[i] || isnan(a[i]) ? a[i] : b[i]; break;
	default: for (size_t i = 0; i < n; i++) o[i] = a[i] < b[i] || isnan(a[i]) ? a[i] : b[i]; break;
	}
}

static int32_t binary_i32(int kind, int32_t a, int32_t b)
{
	uint32_t ua = (uint32_t)a, ub = (uint32_t)b;
	switch (kind) {
	case B_ADD: return (int32_t)(ua + ub);
	case B_SUB: return (int32_t)(ua - ub);
	case B_MUL: return (int32_t)(ua * ub);
	case B_MAX: return a > b ? a : b;
	default: return a < b ? a : b;
	}
}

typedef struct binary_job {
	const binary_params *p;
	const void *x, *y;
	void *o;
} binary_job;

/* offsets of output element o */
static void bin_offsets(const binary_params *p, uint64_t o, uint64_t *xo, uint64_t *yo)
{
	uint64_t a = 0, b = 0;
	for (uint32_t d = p->rank; d-- > 0;) {
		uint64_t i = o % p->shape[d];
		o /= p->shape[d];
		a += i * p->sx[d];
		b += i * p->sy[d];
	}
	*xo = a;
	*yo = b;
}

static void load_span(float *dst, const void *src, int dt, uint64_t off, uint64_t stride, size_t n)
{
	if (stride) {
		if (dt == ANES_DT_FP16)
			anes_f16_to_f32_n(dst, (const uint16_t *)src + off, n);
		else
			memmove(dst, (const float *)src + off, n * 4);
	} else {
		float v = dt == ANES_DT_FP16 ? anes_f16_to_f32(((const uint16_t *)src)[off]) : ((const float *)src)[off];
		for (size_t i = 0; i < n; i++)
			dst[i] = v;
	}
}

static void binary_task(void *ctx, uint64_t b, uint64_t e)
{
	const binary_job *j = ctx;
	const binary_params *p = j->p;
	uint64_t inner = p->shape[p->rank - 1], sxi = p->sx[p->rank - 1], syi = p->sy[p->rank - 1];
	float xa[CHUNK], ya[CHUNK], oa[CHUNK];
	uint64_t o = b * CHUNK, end = e * CHUNK < p->count ? e * CHUNK : p->count;

	while (o < end) {
		uint64_t xo, yo, jj = o % inner;
		bin_offsets(p, o, &xo, &yo);
		uint64_t n = inner - jj;
		if (n > end - o)
			n = end - o;
		if (n > CHUNK)
			n = CHUNK;
		if (p->dtype == ANES_DT_INT32) {
			const int32_t *xs = j->x, *ys = j->y;
			int32_t *os = j->o;
			for (uint64_t i = 0; i < n; i++)
				os[o + i] = binary_i32(p->kind, xs[xo + i * sxi], ys[yo + i * syi]);
		} else {
			load_span(xa, j->x, p->dtype, xo, sxi, (size_t)n);
			load_span(ya, j->y, p->dtype, yo, syi, (size_t)n);
			if (p->dtype == ANES_DT_FP32) {
				binary_apply(p->kind, xa, ya, (float *)j->o + o, (size_t)n);
			} else {
				binary_apply(p->kind, xa, ya, oa, (size_t)n);
				anes_f32_to_f16_n((uint16_t *)j->o + o, oa, (size_t)n);
			}
		}
		o += n;
	}
}

static int run_binary(const cpu_step *st, const cpu_exec *ex)
{
	const binary_params *p = st->params;
	binary_job j = {p, cpu_ptr(ex, cpu_argid(st->op, "x")), cpu_ptr(ex, cpu_argid(st->op, "y")),
	                cpu_ptr(ex, st->op->outputs[0])};
	cpu_parallel(ex->cfg->pool, (p->count + CHUNK - 1) / CHUNK, 8, binary_task, &j);
	return 0;
}

/* ---- cast ---- */

static int plan_cast(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	(void)st;
	if (anes_dtype_size((anes_dtype)x->dtype) == 0)
		return cpu_fail(pc, op, -ENOTSUP, "cannot cast from %s", anes_mil_dtype_name(x->dtype));
	return 0;
}

static int run_cast(const cpu_step *st, const cpu_exec *ex)
{
	uint32_t xid = cpu_argid(st->op, "x"), oid = st->op->outputs[0];
	const anes_mil_type *x = &ex->fn->values[xid].type, *o = &ex->fn->values[oid].type;
	const void *src = cpu_ptr(ex, xid);
	void *dst = cpu_ptr(ex, oid);
	size_t n = (size_t)x->count;

	if (x->dtype == o->dtype) {
		memmove(dst, src, (size_t)o->bytes);
	} else if (x->dtype == ANES_DT_FP16 && o->dtype == ANES_DT_FP32) {
		anes_f16_to_f32_n(dst, src, n);
	} else if (x->dtype == ANES_DT_FP32 && o->dtype == ANES_DT_FP16) {
		anes_f32_to_f16_n(dst, src, n);
	} else {
		for (size_t i = 0; i < n; i++)
			cpu_store_f64(dst, o->dtype, i, cpu_load_f64(src, x->dtype, i));
	}
	return 0;
}

/* ---- quantize / dequantize / constexpr_affine_dequantize ---- */

typedef struct quant_params {
	bool quantize;
	int idt, odt;
	uint64_t count, inner, dim;     /* params vary along axis: index = (i / inner) % dim */
	float qmin, qmax;
	float *scale, *zp;              /* dim entries each (dim = 1 for scalars), after the struct */
} quant_params;

static int plan_quant(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	bool cexpr = strcmp(op->def->name, "constexpr_affine_dequantize") == 0;
	const anes_mil_value *iv = cpu_arg(fn, op, cexpr ? "quantized_data" : "input");
	const anes_mil_value *sv = cpu_arg(fn, op, "scale"), *zv = cpu_arg(fn, op, "zero_point");
	const anes_mil_type *o = cpu_out_type(fn, op);
	quant_params *p;
	int64_t axis_v = 0;
	uint32_t n;

	(void)pc;
	if (cpu_arg(fn, op, "axis"))
		anes_mil_const_ints(cpu_arg(fn, op, "axis"), &axis_v, 1, &n);
	uint32_t axis = iv->type.rank ? (uint32_t)(axis_v < 0 ? axis_v + iv->type.rank : axis_v) : 0;
	uint64_t dim = (sv->type.count > 1 || (zv && zv->type.count > 1)) ? iv->type.shape[axis] : 1;
	/* one allocation (st->params is freed with free) */
	size_t sz = sizeof *p + 2 * (size_t)dim * sizeof(float);
	p = calloc(1, sz);
	if (!p)
		return -ENOMEM;
	p->scale = (float *)(void *)(p + 1);
	p->zp = p->scale + dim;
	p->quantize = strcmp(op->def->name, "quantize") == 0;
	p->idt = iv->type.dtype;
	p->odt = o->dtype;
	p->count = iv->type.count;
	p->dim = dim;
	p->inner = 1;
	for (uint32_t i = axis + 1; i < iv->type.rank; i++)
		p->inner *= iv->type.shape[i];
	for (uint64_t i = 0; i < dim; i++) {
		p->scale[i] = (float)anes_mil_load_f64(sv->data, sv->type.dtype, sv->type.count > 1 ? i : 0);
		p->zp[i] = zv ? (float)anes_mil_load_f64(zv->data, zv->type.dtype, zv->type.count > 1 ? i : 0) : 0.0f;
	}
	if (p->quantize) {
		p->qmin = p->odt == ANES_DT_INT8 ? -128.0f : 0.0f;
		p->qmax = p->odt == ANES_DT_INT8 ? 127.0f : 255.0f;
	}
	st->params = p;
	return 0;
}

typedef struct quant_job {
	const quant_params *p;
	const void *x;
	void *o;
} quant_job;

static void quant_task(void *ctx, uint64_t b, uint64_t e)
{
	const quant_job *j = ctx;
	const quant_params *p = j->p;
	float buf[CHUNK];

	for (uint64_t c = b; c < e; c++) {
		uint64_t i0 = c * CHUNK, n = p->count - i0 < CHUNK ? p->count - i0 : CHUNK;
		if (p->quantize) {
			cpu_to_f32(buf, p->idt == ANES_DT_FP16 ? (const void *)((const uint16_t *)j->x + i0)
			                                       : (const void *)((const float *)j->x + i0),
			           p->idt, (size_t)n);
			for (uint64_t i = 0; i < n; i++) {
				uint64_t a = ((i0 + i) / p->inner) % p->dim;
				float q = rintf(buf[i] / p->scale[a]) + p->zp[a];
				q = isnan(q) ? 0.0f : q < p->qmin ? p->qmin : q > p->qmax ? p->qmax : q;
				if (p->odt == ANES_DT_INT8)
					((int8_t *)j->o)[i0 + i] = (int8_t)q;
				else
					((uint8_t *)j->o)[i0 + i] = (uint8_t)q;
			}
		} else {
			for (uint64_t i = 0; i < n; i++) {
				uint64_t a = ((i0 + i) / p->inner) % p->dim;
				float q = p->idt == ANES_DT_INT8 ? (float)((const int8_t *)j->x)[i0 + i]
				                                 : (float)((const uint8_t *)j->x)[i0 + i];
				buf[i] = (q - p->zp[a]) * p->scale[a];
			}
			if (p->odt == ANES_DT_FP16)
				anes_f32_to_f16_n((uint16_t *)j->o + i0, buf, (size_t)n);
			else
				memmove((float *)j->o + i0, buf, (size_t)n * 4);
		}
	}
}

static int run_quant(const cpu_step *st, const cpu_exec *ex)
{
	const quant_params *p = st->params;
	bool cexpr = strcmp(st->op->def->name, "constexpr_affine_dequantize") == 0;
	quant_job j = {p, cpu_ptr(ex, cpu_argid(st->op, cexpr ? "quantized_data" : "input")),
	               cpu_ptr(ex, st->op->outputs[0])};
	cpu_parallel(ex->cfg->pool, (p->count + CHUNK - 1) / CHUNK, 8, quant_task, &j);
	return 0;
}

/* ---- table ---- */

static const cpu_opimpl impls[] = {
	{"abs", plan_unary, run_unary},
	{"add", plan_binary, run_binary},
	{"cast", plan_cast, run_cast},
	{"clip", plan_unary, run_unary},
	{"concat", plan_concat, run_concat},
	{"constexpr_affine_dequantize", plan_quant, run_quant},
	{"conv", cpu_plan_conv, cpu_run_conv},
	{"dequantize", plan_quant, run_quant},
	{"erf", plan_unary, run_unary},
	{"exp", plan_unary, run_unary},
	{"expand_dims", NULL, run_copy},
	{"gather", plan_gather, run_gather},
	{"gelu", plan_unary, run_unary},
	{"identity", NULL, run_copy},
	{"inverse", plan_unary, run_unary},
	{"layer_norm", cpu_plan_layer_norm, cpu_run_layer_norm},
	{"linear", cpu_plan_linear, cpu_run_linear},
	{"log", plan_unary, run_unary},
	{"matmul", cpu_plan_matmul, cpu_run_matmul},
	{"maximum", plan_binary, run_binary},
	{"minimum", plan_binary, run_binary},
	{"mul", plan_binary, run_binary},
	{"neg", plan_unary, run_unary},
	{"pad", plan_pad, run_pad},
	{"pow", plan_binary, run_binary},
	{"quantize", plan_quant, run_quant},
	{"real_div", plan_binary, run_binary},
	{"reduce_max", cpu_plan_reduce, cpu_run_reduce},
	{"reduce_mean", cpu_plan_reduce, cpu_run_reduce},
	{"reduce_min", cpu_plan_reduce, cpu_run_reduce},
	{"reduce_sum", cpu_plan_reduce, cpu_run_reduce},
	{"relu", plan_unary, run_unary},
	{"reshape", NULL, run_copy},
	{"rsqrt", plan_unary, run_unary},
	{"scaled_dot_product_attention", cpu_plan_sdpa, cpu_run_sdpa},
	{"sigmoid", plan_unary, run_unary},
	{"silu", plan_unary, run_unary},
	{"slice_by_index", plan_slice_by_index, run_strided},
	{"slice_by_size", plan_slice, run_strided},
	{"softmax", cpu_plan_softmax, cpu_run_softmax},
	{"split", plan_split, run_split},
	{"sqrt", plan_unary, run_unary},
	{"square", plan_unary, run_unary},
	{"squeeze", NULL, run_copy},
	{"sub", plan_binary, run_binary},
	{"tanh", plan_unary, run_unary},
	{"tile", plan_tile, run_tile},
	{"transpose", plan_transpose, run_strided},
};

const cpu_opimpl *cpu_opimpl_find(const char *name)
{
	for (size_t i = 0; i < sizeof impls / sizeof impls[0]; i++)
		if (strcmp(impls[i].name, name) == 0)
			return &impls[i];
	for (const cpu_opimpl *x = cpu_constexpr_impls; x->name; x++)
		if (strcmp(x->name, name) == 0)
			return x;
	for (const cpu_opimpl *x = cpu_state_impls; x->name; x++)
		if (strcmp(x->name, name) == 0)
			return x;
	return cpu_ext_find(name);
}
