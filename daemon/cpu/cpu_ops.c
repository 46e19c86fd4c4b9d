/* SPDX-License-Identifier: MIT */
/*
 * CPU reference kernels.  fp16 tensors are stored as IEEE half bits; kernels
 * compute in fp32 and round to fp16 (nearest even) once, at the op's output.
 * Every index used here comes from the compile-time plan (shapes checked by
 * daemon/mil), never from tensor contents.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anes_config.h"
#include "anes_fp16.h"
#include "cpu_internal.h"

#if ANES_HAVE_ACCELERATE
#include <Accelerate/Accelerate.h>
#elif ANES_HAVE_BLAS
#include <cblas.h>
#endif

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

static const anes_mil_value *argv_(const anes_mil_function *fn, const anes_mil_op *op, const char *name)
{
	return anes_mil_op_value(fn, op, name);
}

static uint32_t argid(const anes_mil_op *op, const char *name)
{
	return anes_mil_op_arg(op, name)->vals[0];
}

static const anes_mil_type *out_type(const anes_mil_function *fn, const anes_mil_op *op)
{
	return &fn->values[op->outputs[0]].type;
}

static size_t esize(int dt)
{
	return anes_dtype_size((anes_dtype)dt);
}

/* ---- conversions ---- */

static void to_f32(float *dst, const void *src, int dt, size_t n)
{
	switch (dt) {
	case ANES_DT_FP16: anes_f16_to_f32_n(dst, src, n); break;
	case ANES_DT_FP32: memcpy(dst, src, n * 4); break;
	default: break;
	}
}

static void from_f32(void *dst, int dt, const float *src, size_t n)
{
	switch (dt) {
	case ANES_DT_FP16: anes_f32_to_f16_n(dst, src, n); break;
	case ANES_DT_FP32: if (dst != src) memcpy(dst, src, n * 4); break;
	default: break;
	}
}

/* fp32 view of a float value: the value itself when fp32, else converted into *slot */
static const float *load_f32(const cpu_exec *ex, uint32_t vid, uint8_t **slot)
{
	const anes_mil_value *v = &ex->fn->values[vid];
	const void *p = cpu_ptr(ex, vid);
	float *d;

	if (v->type.dtype == ANES_DT_FP32)
		return p;
	d = (float *)(void *)*slot;
	*slot += cpu_align64(v->type.count * 4);
	to_f32(d, p, v->type.dtype, (size_t)v->type.count);
	return d;
}

static uint64_t f32_scratch(const anes_mil_type *t)
{
	return t->dtype == ANES_DT_FP32 ? 0 : cpu_align64(t->count * 4);
}

static double load_f64(const void *p, int dt, size_t i)
{
	switch (dt) {
	case ANES_DT_FP16: return anes_f16_to_f32(((const uint16_t *)p)[i]);
	case ANES_DT_FP32: return ((const float *)p)[i];
	case ANES_DT_INT32: return ((const int32_t *)p)[i];
	case ANES_DT_INT16: return ((const int16_t *)p)[i];
	case ANES_DT_INT8: return ((const int8_t *)p)[i];
	case ANES_DT_UINT8: return ((const uint8_t *)p)[i];
	case ANES_DT_BOOL: return ((const uint8_t *)p)[i] ? 1.0 : 0.0;
	default: return 0;
	}
}

static double sat(double v, double lo, double hi)
{
	if (isnan(v))
		return 0;
	v = trunc(v);
	return v < lo ? lo : v > hi ? hi : v;
}

static void store_f64(void *p, int dt, size_t i, double v)
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

/* ---- identity / reshape ---- */

static int run_copy(const cpu_step *st, const cpu_exec *ex)
{
	const anes_mil_op *op = st->op;
	uint32_t x = argid(op, "x"), o = op->outputs[0];
	memcpy(cpu_ptr(ex, o), cpu_ptr(ex, x), (size_t)ex->fn->values[o].type.bytes);
	return 0;
}

/* ---- slice_by_size ---- */

typedef struct slice_params {
	uint32_t rank;
	size_t es;
	uint64_t out[ANES_MAX_RANK];
	uint64_t istride[ANES_MAX_RANK];   /* elements */
	uint64_t base;                     /* element offset of begin */
} slice_params;

static int plan_slice(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &argv_(fn, op, "x")->type, *o = out_type(fn, op);
	int64_t begin[ANES_MAX_RANK];
	uint32_t n;
	slice_params *p = calloc(1, sizeof *p);

	(void)pc;
	if (!p)
		return -ENOMEM;
	anes_mil_const_ints(argv_(fn, op, "begin"), begin, ANES_MAX_RANK, &n);
	p->es = esize(x->dtype);
	if (x->rank == 0) {
		p->rank = 1;
		p->out[0] = 1;
		p->istride[0] = 1;
	} else {
		uint64_t s = 1;
		p->rank = x->rank;
		for (uint32_t i = x->rank; i-- > 0;) {
			p->istride[i] = s;
			p->out[i] = o->shape[i];
			p->base += (uint64_t)begin[i] * s;
			s *= x->shape[i];
		}
	}
	st->params = p;
	return 0;
}

static int run_slice(const cpu_step *st, const cpu_exec *ex)
{
	const slice_params *p = st->params;
	const uint8_t *src = cpu_ptr(ex, argid(st->op, "x"));
	uint8_t *dst = cpu_ptr(ex, st->op->outputs[0]);
	uint64_t idx[ANES_MAX_RANK] = {0}, off = p->base;
	uint32_t r = p->rank;
	size_t row = (size_t)(p->out[r - 1] * p->es);
	uint64_t rows = 1;

	for (uint32_t i = 0; i + 1 < r; i++)
		rows *= p->out[i];
	for (uint64_t k = 0; k < rows; k++) {
		memcpy(dst, src + off * p->es, row);
		dst += row;
		for (uint32_t d = r - 1; d-- > 0;) {
			off += p->istride[d];
			if (++idx[d] < p->out[d])
				break;
			off -= p->istride[d] * p->out[d];
			idx[d] = 0;
		}
	}
	return 0;
}

/* ---- transpose ---- */

typedef struct transpose_params {
	uint32_t rank;
	size_t es;
	uint64_t out[ANES_MAX_RANK];
	uint64_t sstride[ANES_MAX_RANK];   /* input stride (elements) of each output dim */
} transpose_params;

static int plan_transpose(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &argv_(fn, op, "x")->type;
	int64_t perm[ANES_MAX_RANK];
	uint64_t istr[ANES_MAX_RANK], s = 1;
	uint32_t n;
	transpose_params *p = calloc(1, sizeof *p);

	(void)pc;
	if (!p)
		return -ENOMEM;
	anes_mil_const_ints(argv_(fn, op, "perm"), perm, ANES_MAX_RANK, &n);
	for (uint32_t i = x->rank; i-- > 0;) {
		istr[i] = s;
		s *= x->shape[i];
	}
	p->es = esize(x->dtype);
	if (x->rank == 0) {
		p->rank = 1;
		p->out[0] = 1;
		p->sstride[0] = 1;
	} else {
		p->rank = x->rank;
		for (uint32_t i = 0; i < x->rank; i++) {
			uint32_t a = (uint32_t)(perm[i] < 0 ? perm[i] + x->rank : perm[i]);
			p->out[i] = x->shape[a];
			p->sstride[i] = istr[a];
		}
	}
	st->params = p;
	return 0;
}

static int run_transpose(const cpu_step *st, const cpu_exec *ex)
{
	const transpose_params *p = st->params;
	const uint8_t *src = cpu_ptr(ex, argid(st->op, "x"));
	uint8_t *dst = cpu_ptr(ex, st->op->outputs[0]);
	uint64_t idx[ANES_MAX_RANK] = {0}, off = 0, rows = 1;
	uint32_t r = p->rank;
	uint64_t inner = p->out[r - 1], is = p->sstride[r - 1];

	for (uint32_t i = 0; i + 1 < r; i++)
		rows *= p->out[i];
	for (uint64_t k = 0; k < rows; k++) {
		switch (p->es) {
		case 2: {
			const uint16_t *s = (const uint16_t *)(const void *)src + off;
			uint16_t *d = (uint16_t *)(void *)dst;
			for (uint64_t j = 0; j < inner; j++)
				d[j] = s[j * is];
			break;
		}
		case 4: {
			const uint32_t *s = (const uint32_t *)(const void *)src + off;
			uint32_t *d = (uint32_t *)(void *)dst;
			for (uint64_t j = 0; j < inner; j++)
				d[j] = s[j * is];
			break;
		}
		default: {
			const uint8_t *s = src + off;
			for (uint64_t j = 0; j < inner; j++)
				dst[j] = s[j * is];
			break;
		}
		}
		dst += inner * p->es;
		for (uint32_t d = r - 1; d-- > 0;) {
			off += p->sstride[d];
			if (++idx[d] < p->out[d])
				break;
			off -= p->sstride[d] * p->out[d];
			idx[d] = 0;
		}
	}
	return 0;
}

/* ---- broadcasting helpers ---- */

typedef struct bcast {
	uint32_t rank;                     /* >= 1 */
	uint64_t shape[ANES_MAX_RANK];     /* output */
	uint64_t sa[ANES_MAX_RANK], sb[ANES_MAX_RANK];  /* element strides, 0 where broadcast */
	uint64_t count;
} bcast;

static void input_strides(const anes_mil_type *t, uint32_t r, const uint64_t *oshape, uint64_t *s)
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

static void bcast_init(bcast *b, const anes_mil_type *a, const anes_mil_type *bt, const anes_mil_type *o)
{
	memset(b, 0, sizeof *b);
	if (o->rank == 0) {
		b->rank = 1;
		b->shape[0] = 1;
		b->sa[0] = b->sb[0] = 1;
		b->count = 1;
		return;
	}
	b->rank = o->rank;
	memcpy(b->shape, o->shape, sizeof b->shape);
	input_strides(a, o->rank, o->shape, b->sa);
	input_strides(bt, o->rank, o->shape, b->sb);
	b->count = o->count;
}

/* ---- add / sub / mul ---- */

enum { BIN_ADD, BIN_SUB, BIN_MUL };

typedef struct binary_params {
	bcast b;
	int kind;
	int dtype;
} binary_params;

static int plan_binary(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &argv_(fn, op, "x")->type, *y = &argv_(fn, op, "y")->type, *o = out_type(fn, op);
	binary_params *p;

	if (x->dtype != ANES_DT_FP16 && x->dtype != ANES_DT_FP32 && x->dtype != ANES_DT_INT32)
		return cpu_fail(pc, op, -ENOTSUP, "dtype %s is not supported by the CPU backend",
		                anes_mil_dtype_name(x->dtype));
	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	bcast_init(&p->b, x, y, o);
	p->kind = strcmp(op->def->name, "add") == 0 ? BIN_ADD : strcmp(op->def->name, "sub") == 0 ? BIN_SUB : BIN_MUL;
	p->dtype = x->dtype;
	if (x->dtype != ANES_DT_INT32)
		st->scratch = f32_scratch(x) + f32_scratch(y) + f32_scratch(o);
	st->params = p;
	return 0;
}

#define BIN_LOOP(T, EXPR)                                                                        \
	do {                                                                                     \
		const T *xa = xp, *ya = yp;                                                      \
		T *oa = op_;                                                                     \
		uint64_t idx[ANES_MAX_RANK] = {0}, xo = 0, yo = 0;                               \
		for (uint64_t k = 0; k < rows; k++) {                                            \
			const T *xr = xa + xo, *yr = ya + yo;                                    \
			if (sxi == 1 && syi == 1) {                                              \
				for (uint64_t j = 0; j < inner; j++) {                           \
					T a = xr[j], c = yr[j];                                  \
					oa[j] = EXPR;                                            \
				}                                                                \
			} else {                                                                 \
				for (uint64_t j = 0; j < inner; j++) {                           \
					T a = xr[j * sxi], c = yr[j * syi];                      \
					oa[j] = EXPR;                                            \
				}                                                                \
			}                                                                        \
			oa += inner;                                                             \
			for (uint32_t d = r - 1; d-- > 0;) {                                     \
				xo += b->sa[d];                                                  \
				yo += b->sb[d];                                                  \
				if (++idx[d] < b->shape[d])                                      \
					break;                                                   \
				xo -= b->sa[d] * b->shape[d];                                    \
				yo -= b->sb[d] * b->shape[d];                                    \
				idx[d] = 0;                                                      \
			}                                                                        \
		}                                                                                \
	} while (0)

static uint32_t wrap_add(uint32_t a, uint32_t c) { return a + c; }
static uint32_t wrap_sub(uint32_t a, uint32_t c) { return a - c; }
static uint32_t wrap_mul(uint32_t a, uint32_t c) { return a * c; }

static int run_binary(const cpu_step *st, const cpu_exec *ex)
{
	const binary_params *p = st->params;
	const bcast *b = &p->b;
	uint32_t r = b->rank;
	uint64_t inner = b->shape[r - 1], rows = b->count / inner;
	uint64_t sxi = b->sa[r - 1], syi = b->sb[r - 1];
	uint32_t xid = argid(st->op, "x"), yid = argid(st->op, "y"), oid = st->op->outputs[0];

	if (p->dtype == ANES_DT_INT32) {
		const uint32_t *xp = cpu_ptr(ex, xid), *yp = cpu_ptr(ex, yid);
		uint32_t *op_ = cpu_ptr(ex, oid);
		switch (p->kind) {
		case BIN_ADD: BIN_LOOP(uint32_t, wrap_add(a, c)); break;
		case BIN_SUB: BIN_LOOP(uint32_t, wrap_sub(a, c)); break;
		default: BIN_LOOP(uint32_t, wrap_mul(a, c)); break;
		}
		return 0;
	}
	uint8_t *slot = ex->scratch;
	const float *xp = load_f32(ex, xid, &slot), *yp = load_f32(ex, yid, &slot);
	void *out = cpu_ptr(ex, oid);
	float *op_ = p->dtype == ANES_DT_FP32 ? out : (float *)(void *)slot;
	switch (p->kind) {
	case BIN_ADD: BIN_LOOP(float, a + c); break;
	case BIN_SUB: BIN_LOOP(float, a - c); break;
	default: BIN_LOOP(float, a * c); break;
	}
	from_f32(out, p->dtype, op_, (size_t)b->count);
	return 0;
}

/* ---- cast ---- */

static int plan_cast(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &argv_(fn, op, "x")->type;
	(void)st;
	if (anes_dtype_size((anes_dtype)x->dtype) == 0)
		return cpu_fail(pc, op, -ENOTSUP, "cannot cast from %s", anes_mil_dtype_name(x->dtype));
	return 0;
}

static int run_cast(const cpu_step *st, const cpu_exec *ex)
{
	uint32_t xid = argid(st->op, "x"), oid = st->op->outputs[0];
	const anes_mil_type *x = &ex->fn->values[xid].type, *o = &ex->fn->values[oid].type;
	const void *src = cpu_ptr(ex, xid);
	void *dst = cpu_ptr(ex, oid);
	size_t n = (size_t)x->count;

	if (x->dtype == o->dtype) {
		memcpy(dst, src, (size_t)o->bytes);
	} else if (x->dtype == ANES_DT_FP16 && o->dtype == ANES_DT_FP32) {
		anes_f16_to_f32_n(dst, src, n);
	} else if (x->dtype == ANES_DT_FP32 && o->dtype == ANES_DT_FP16) {
		anes_f32_to_f16_n(dst, src, n);
	} else {
		for (size_t i = 0; i < n; i++)
			store_f64(dst, o->dtype, i, load_f64(src, x->dtype, i));
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
	anes_mil_const_ints(argv_(fn, op, "axis"), &axis_v, 1, &n);
	if (argv_(fn, op, "interleave"))
		anes_mil_const_bool(argv_(fn, op, "interleave"), &interleave);
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
	p->es = esize(t0->dtype);
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
				memcpy(dst, src + o * nb, nb);
				dst += nb;
			}
		} else {
			size_t nb = (size_t)(p->after * p->es);
			for (uint64_t i = 0; i < p->dim; i++) {
				for (uint32_t k = 0; k < p->n; k++) {
					const uint8_t *src = cpu_ptr(ex, vals->vals[k]);
					memcpy(dst, src + (o * p->dim + i) * nb, nb);
					dst += nb;
				}
			}
		}
	}
	return 0;
}

/* ---- reduce_sum ---- */

typedef struct reduce_params {
	uint32_t rank;                     /* of x, >= 1 */
	uint64_t shape[ANES_MAX_RANK];     /* x */
	uint64_t ostride[ANES_MAX_RANK];   /* output stride per x dim, 0 where reduced */
	uint64_t count, ocount;
	int dtype;
} reduce_params;

static int plan_reduce(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_value *xv = argv_(fn, op, "x"), *av = argv_(fn, op, "axes");
	const anes_mil_type *x = &xv->type, *o = out_type(fn, op);
	bool red[ANES_MAX_RANK] = {false};
	reduce_params *p;

	if (x->dtype != ANES_DT_FP16 && x->dtype != ANES_DT_FP32 && x->dtype != ANES_DT_INT32)
		return cpu_fail(pc, op, -ENOTSUP, "dtype %s is not supported by the CPU backend",
		                anes_mil_dtype_name(x->dtype));
	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	if (av) {
		int64_t axes[ANES_MAX_RANK];
		uint32_t n;
		anes_mil_const_ints(av, axes, ANES_MAX_RANK, &n);
		for (uint32_t i = 0; i < n; i++)
			red[axes[i] < 0 ? axes[i] + x->rank : axes[i]] = true;
	} else {
		for (uint32_t i = 0; i < x->rank; i++)
			red[i] = true;
	}
	p->dtype = x->dtype;
	p->count = x->count;
	p->ocount = o->count;
	if (x->rank == 0) {
		p->rank = 1;
		p->shape[0] = 1;
		p->ostride[0] = 0;
	} else {
		uint64_t s = 1;
		p->rank = x->rank;
		memcpy(p->shape, x->shape, sizeof p->shape);
		for (uint32_t i = x->rank; i-- > 0;) {
			p->ostride[i] = red[i] ? 0 : s;
			if (!red[i])
				s *= x->shape[i];
		}
	}
	st->scratch = (x->dtype == ANES_DT_FP16 ? cpu_align64(x->count * 4) : 0) + cpu_align64(o->count * 8);
	st->params = p;
	return 0;
}

#define REDUCE_LOOP(T, ACC)                                                                      \
	do {                                                                                     \
		uint64_t idx[ANES_MAX_RANK] = {0}, oo = 0;                                       \
		const T *xr = xs;                                                                \
		for (uint64_t k = 0; k < rows; k++) {                                            \
			if (osi == 0) {                                                          \
				ACC s = 0;                                                       \
				for (uint64_t j = 0; j < inner; j++)                             \
					s += (ACC)xr[j];                                         \
				acc[oo] += s;                                                    \
			} else {                                                                 \
				for (uint64_t j = 0; j < inner; j++)                             \
					acc[oo + j] += (ACC)xr[j];                               \
			}                                                                        \
			xr += inner;                                                             \
			for (uint32_t d = r - 1; d-- > 0;) {                                     \
				oo += p->ostride[d];                                             \
				if (++idx[d] < p->shape[d])                                      \
					break;                                                   \
				oo -= p->ostride[d] * p->shape[d];                               \
				idx[d] = 0;                                                      \
			}                                                                        \
		}                                                                                \
	} while (0)

static int run_reduce(const cpu_step *st, const cpu_exec *ex)
{
	const reduce_params *p = st->params;
	uint32_t xid = argid(st->op, "x"), oid = st->op->outputs[0];
	uint32_t r = p->rank;
	uint64_t inner = p->shape[r - 1], rows = p->count / inner, osi = p->ostride[r - 1];
	void *out = cpu_ptr(ex, oid);
	uint8_t *slot = ex->scratch;

	if (p->dtype == ANES_DT_INT32) {
		const int32_t *xs = cpu_ptr(ex, xid);
		int64_t *acc = (int64_t *)(void *)slot;
		memset(acc, 0, (size_t)p->ocount * 8);
		REDUCE_LOOP(int32_t, int64_t);
		for (uint64_t i = 0; i < p->ocount; i++)
			((int32_t *)out)[i] = (int32_t)(uint32_t)(uint64_t)acc[i];
		return 0;
	}
	const float *xs = load_f32(ex, xid, &slot);
	float *acc = (float *)(void *)slot;
	memset(acc, 0, (size_t)p->ocount * 4);
	REDUCE_LOOP(float, float);
	from_f32(out, p->dtype, acc, (size_t)p->ocount);
	return 0;
}

/* ---- matmul ---- */

typedef struct matmul_params {
	uint64_t m, n, k;
	bool tx, ty;         /* as stored: x is [k, m] when tx, y is [n, k] when ty */
	int dtype;
	uint64_t batches;
	uint64_t *xoff, *yoff;  /* element offsets of each batch's matrices (in params block) */
	uint64_t data[];
} matmul_params;

static int plan_matmul(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &argv_(fn, op, "x")->type, *y = &argv_(fn, op, "y")->type, *o = out_type(fn, op);
	bool tx = false, ty = false;
	uint64_t m, n, k, batches = 1;
	uint32_t br;
	uint64_t bshape[ANES_MAX_RANK];
	anes_mil_type bx, by;
	matmul_params *p;

	(void)pc;
	if (argv_(fn, op, "transpose_x"))
		anes_mil_const_bool(argv_(fn, op, "transpose_x"), &tx);
	if (argv_(fn, op, "transpose_y"))
		anes_mil_const_bool(argv_(fn, op, "transpose_y"), &ty);
	if (x->rank == 1) {
		m = 1;
		k = x->shape[0];
		tx = false;
	} else {
		m = x->shape[x->rank - (tx ? 1 : 2)];
		k = x->shape[x->rank - (tx ? 2 : 1)];
	}
	if (y->rank == 1) {
		n = 1;
		ty = false;
	} else {
		n = y->shape[y->rank - (ty ? 2 : 1)];
	}
	memset(&bx, 0, sizeof bx);
	memset(&by, 0, sizeof by);
	bx.rank = x->rank > 2 ? x->rank - 2 : 0;
	by.rank = y->rank > 2 ? y->rank - 2 : 0;
	memcpy(bx.shape, x->shape, bx.rank * sizeof(uint64_t));
	memcpy(by.shape, y->shape, by.rank * sizeof(uint64_t));
	anes_mil_broadcast(&bx, &by, &br, bshape);
	for (uint32_t i = 0; i < br; i++)
		batches *= bshape[i];
	/* batches <= output elements <= tensor cap, so this is bounded */
	p = calloc(1, sizeof *p + 2 * batches * sizeof(uint64_t));
	if (!p)
		return -ENOMEM;
	p->m = m;
	p->n = n;
	p->k = k;
	p->tx = tx;
	p->ty = ty;
	p->dtype = x->dtype;
	p->batches = batches;
	p->xoff = p->data;
	p->yoff = p->data + batches;
	{
		uint64_t sx[ANES_MAX_RANK] = {0}, sy[ANES_MAX_RANK] = {0}, idx[ANES_MAX_RANK] = {0};
		uint64_t xo = 0, yo = 0;
		if (br) {
			input_strides(&bx, br, bshape, sx);
			input_strides(&by, br, bshape, sy);
		}
		for (uint64_t b = 0; b < batches; b++) {
			p->xoff[b] = xo * m * k;
			p->yoff[b] = yo * k * n;
			for (uint32_t d = br; d-- > 0;) {
				xo += sx[d];
				yo += sy[d];
				if (++idx[d] < bshape[d])
					break;
				xo -= sx[d] * bshape[d];
				yo -= sy[d] * bshape[d];
				idx[d] = 0;
			}
		}
	}
	st->scratch = f32_scratch(x) + f32_scratch(y) + f32_scratch(o);
#if !ANES_HAVE_BLAS
	st->scratch += cpu_align64(m * k * 4) + cpu_align64(k * n * 4);
#endif
	st->params = p;
	return 0;
}

#if !ANES_HAVE_BLAS
/* C[m,n] = A[m,k] * B[k,n], all row-major and dense; blocked for cache, four
 * rows of C per pass so each loaded row segment of B is used four times */
static void gemm_nn(const float *A, const float *B, float *C, uint64_t m, uint64_t n, uint64_t k)
{
	enum { MB = 64, KB = 256, NB = 512 };

	memset(C, 0, (size_t)(m * n) * sizeof(float));
	for (uint64_t j0 = 0; j0 < n; j0 += NB) {
		uint64_t j1 = j0 + NB < n ? j0 + NB : n;
		for (uint64_t k0 = 0; k0 < k; k0 += KB) {
			uint64_t k1 = k0 + KB < k ? k0 + KB : k;
			for (uint64_t i0 = 0; i0 < m; i0 += MB) {
				uint64_t i1 = i0 + MB < m ? i0 + MB : m;
				uint64_t i = i0;
				for (; i + 4 <= i1; i += 4) {
					float *restrict c0 = C + i * n, *restrict c1 = c0 + n;
					float *restrict c2 = c1 + n, *restrict c3 = c2 + n;
					for (uint64_t kk = k0; kk < k1; kk++) {
						float a0 = A[i * k + kk], a1 = A[(i + 1) * k + kk];
						float a2 = A[(i + 2) * k + kk], a3 = A[(i + 3) * k + kk];
						const float *restrict b = B + kk * n;
						for (uint64_t j = j0; j < j1; j++) {
							float bj = b[j];
							c0[j] += a0 * bj;
							c1[j] += a1 * bj;
							c2[j] += a2 * bj;
							c3[j] += a3 * bj;
						}
					}
				}
				for (; i < i1; i++) {
					float *restrict c = C + i * n;
					for (uint64_t kk = k0; kk < k1; kk++) {
						float a = A[i * k + kk];
						const float *restrict b = B + kk * n;
						for (uint64_t j = j0; j < j1; j++)
							c[j] += a * b[j];
					}
				}
			}
		}
	}
}

static void transpose_f32(float *dst, const float *src, uint64_t rows, uint64_t cols)
{
	for (uint64_t i = 0; i < rows; i++)
		for (uint64_t j = 0; j < cols; j++)
			dst[j * rows + i] = src[i * cols + j];
}
#endif

static void gemm(const matmul_params *p, const float *A, const float *B, float *C, uint8_t *tmp)
{
#if ANES_HAVE_BLAS
	(void)tmp;
	cblas_sgemm(CblasRowMajor, p->tx ? CblasTrans : CblasNoTrans, p->ty ? CblasTrans : CblasNoTrans,
	            (int)p->m, (int)p->n, (int)p->k, 1.0f, A, (int)(p->tx ? p->m : p->k), B,
	            (int)(p->ty ? p->k : p->n), 0.0f, C, (int)p->n);
#else
	float *ta = (float *)(void *)tmp;
	float *tb = (float *)(void *)(tmp + cpu_align64(p->m * p->k * 4));
	if (p->tx) {
		transpose_f32(ta, A, p->k, p->m);
		A = ta;
	}
	if (p->ty) {
		transpose_f32(tb, B, p->n, p->k);
		B = tb;
	}
	gemm_nn(A, B, C, p->m, p->n, p->k);
#endif
}

static int run_matmul(const cpu_step *st, const cpu_exec *ex)
{
	const matmul_params *p = st->params;
	uint32_t xid = argid(st->op, "x"), yid = argid(st->op, "y"), oid = st->op->outputs[0];
	uint8_t *slot = ex->scratch;
	const float *fx = load_f32(ex, xid, &slot), *fy = load_f32(ex, yid, &slot);
	void *out = cpu_ptr(ex, oid);
	float *fo;
	uint64_t ocount = ex->fn->values[oid].type.count;

	if (p->dtype == ANES_DT_FP32) {
		fo = out;
	} else {
		fo = (float *)(void *)slot;
		slot += cpu_align64(ocount * 4);
	}
	for (uint64_t b = 0; b < p->batches; b++)
		gemm(p, fx + p->xoff[b], fy + p->yoff[b], fo + b * p->m * p->n, slot);
	from_f32(out, p->dtype, fo, (size_t)ocount);
	return 0;
}

/* ---- table ---- */

static const cpu_opimpl impls[] = {
	{"add", plan_binary, run_binary},
	{"cast", plan_cast, run_cast},
	{"concat", plan_concat, run_concat},
	{"identity", NULL, run_copy},
	{"matmul", plan_matmul, run_matmul},
	{"mul", plan_binary, run_binary},
	{"reduce_sum", plan_reduce, run_reduce},
	{"reshape", NULL, run_copy},
	{"slice_by_size", plan_slice, run_slice},
	{"sub", plan_binary, run_binary},
	{"transpose", plan_transpose, run_transpose},
};

const cpu_opimpl *cpu_opimpl_find(const char *name)
{
	for (size_t i = 0; i < sizeof impls / sizeof impls[0]; i++)
		if (strcmp(impls[i].name, name) == 0)
			return &impls[i];
	return NULL;
}
