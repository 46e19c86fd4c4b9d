/* SPDX-License-Identifier: MIT */
/*
 * Kernels of the ops added for the iOS 15-18 opsets that are not elementwise
 * (cpu_elem.c has those): reductions, sorting, normalizations, data
 * movement, pooling, resizing and conv_transpose.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "cpu_internal.h"


/* ---- common ---- */

static uint32_t axis_of(const anes_mil_function *fn, const anes_mil_op *op, const char *name, int64_t def,
                        uint32_t rank)
{
	int64_t a = def;
	uint32_t n;

	if (cpu_arg(fn, op, name))
		anes_mil_const_ints(cpu_arg(fn, op, name), &a, 1, &n);
	return (uint32_t)(a < 0 ? a + (int64_t)rank : a);
}

static bool bool_of(const anes_mil_function *fn, const anes_mil_op *op, const char *name, bool def)
{
	bool b = def;

	if (cpu_arg(fn, op, name))
		anes_mil_const_bool(cpu_arg(fn, op, name), &b);
	return b;
}

static double f64_of(const anes_mil_function *fn, const anes_mil_op *op, const char *name, double def)
{
	double d = def;

	if (cpu_arg(fn, op, name))
		anes_mil_const_f64(cpu_arg(fn, op, name), &d);
	return d;
}

/* element i of a numeric buffer as float (fp16/fp32/int32) */
static float ld(const void *p, int dt, uint64_t i)
{
	switch (dt) {
	case ANES_DT_FP16: return anes_f16_to_f32(((const uint16_t *)p)[i]);
	case ANES_DT_FP32: return ((const float *)p)[i];
	case ANES_DT_INT32: return (float)((const int32_t *)p)[i];
	default: return (float)anes_mil_load_f64(p, dt, i);
	}
}

/* ---- reductions over several axes ---- */

enum { RX_PROD, RX_L1, RX_L2, RX_LOGSUM, RX_LSE, RX_SUMSQ };

typedef struct rx_params {
	int kind, dtype;
	uint32_t rank;
	uint64_t shape[ANES_MAX_RANK];
	uint64_t ostride[ANES_MAX_RANK];   /* output stride per x dim, 0 where reduced */
	uint64_t count, ocount;
} rx_params;

static int plan_reduce_x(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	static const char *const names[] = {"reduce_prod", "reduce_l1_norm", "reduce_l2_norm", "reduce_log_sum",
	                                    "reduce_log_sum_exp", "reduce_sum_square"};
	const anes_mil_value *xv = cpu_arg(fn, op, "x"), *av = cpu_arg(fn, op, "axes");
	const anes_mil_type *x = &xv->type;
	bool red[ANES_MAX_RANK] = {false};
	rx_params *p;

	if (cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	for (int k = 0; k < 6; k++)
		if (strcmp(op->def->name, names[k]) == 0)
			p->kind = k;
	cpu_axes_mask(av, x->rank, red);
	p->dtype = x->dtype;
	p->count = x->count;
	p->ocount = cpu_out_type(fn, op)->count;
	cpu_reduce_layout(x, red, &p->rank, p->shape, p->ostride);
	st->scratch = cpu_align64(p->ocount * 8);
	st->params = p;
	return 0;
}

/* visit every element of x with its output offset */
#define RX_WALK(BODY)                                                                  \
	do {                                                                           \
		uint64_t idx_[ANES_MAX_RANK] = {0}, oo = 0;                            \
		for (uint64_t i = 0; i < p->count; i++) {                              \
			float v = ld(x, p->dtype, i);                                  \
			BODY;                                                          \
			for (uint32_t d = p->rank; d-- > 0;) {                         \
				oo += p->ostride[d];                                   \
				if (++idx_[d] < p->shape[d])                           \
					break;                                         \
				oo -= p->ostride[d] * p->shape[d];                     \
				idx_[d] = 0;                                           \
			}                                                              \
		}                                                                      \
	} while (0)

static int run_reduce_x(const cpu_step *st, const cpu_exec *ex)
{
	const rx_params *p = st->params;
	const void *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	void *out = cpu_ptr(ex, st->op->outputs[0]);
	float *acc = (float *)(void *)ex->scratch, *mx = acc + p->ocount;

	for (uint64_t i = 0; i < p->ocount; i++) {
		acc[i] = p->kind == RX_PROD ? 1.0f : 0.0f;
		mx[i] = -INFINITY;
	}
	switch (p->kind) {
	case RX_PROD: RX_WALK(acc[oo] *= v); break;
	case RX_L1: RX_WALK(acc[oo] += fabsf(v)); break;
	case RX_L2:
	case RX_SUMSQ: RX_WALK(acc[oo] += v * v); break;
	case RX_LOGSUM: RX_WALK(acc[oo] += v); break;
	case RX_LSE:
		/* max first, so exp never overflows; a NaN propagates through both passes */
		RX_WALK(mx[oo] = v > mx[oo] || isnan(v) ? v : mx[oo]);
		for (uint64_t i = 0; i < p->ocount; i++)
			if (isinf(mx[i]))
				mx[i] = 0;   /* all -inf: log(0) = -inf; +inf: inf - inf avoided, exp(inf) = inf */
		RX_WALK(acc[oo] += expf(v - mx[oo]));
		break;
	}
	for (uint64_t i = 0; i < p->ocount; i++) {
		if (p->kind == RX_L2)
			acc[i] = sqrtf(acc[i]);
		else if (p->kind == RX_LOGSUM)
			acc[i] = logf(acc[i]);
		else if (p->kind == RX_LSE)
			acc[i] = logf(acc[i]) + mx[i];
	}
	cpu_from_f32(out, p->dtype, acc, (size_t)p->ocount);
	return 0;
}

/* ---- line ops: one axis at a time, [outer, dim, inner] ---- */

enum { LN_ARGMAX, LN_ARGMIN, LN_CUMSUM, LN_TOPK, LN_ARGSORT, LN_INSTANCE, LN_L2, LN_LRN };

typedef struct line_params {
	int kind, idt, odt;
	uint64_t outer, dim, inner;
	uint64_t k;                     /* topk: kept; argmax/min: 1; else dim */
	bool exclusive, reverse, ascending;
	float eps, alpha, beta, kk;
	uint64_t size;                  /* lrn window */
	uint64_t nch, chdiv;            /* instance_norm: channel = (line / chdiv) % nch */
	float *gamma, *beta_v;          /* instance_norm (in this block), or NULL */
} line_params;

static int plan_line(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	static const char *const names[] = {"reduce_argmax", "reduce_argmin", "cumsum", "topk", "argsort",
	                                    "instance_norm", "l2_norm", "local_response_norm"};
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	int kind = -1;
	uint64_t nch = 0;
	line_params *p;

	for (int k = 0; k < 8; k++)
		if (strcmp(op->def->name, names[k]) == 0)
			kind = k;
	if (kind >= LN_INSTANCE && cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	if (kind == LN_INSTANCE)
		nch = x->shape[1];
	p = calloc(1, sizeof *p + 2 * (size_t)nch * sizeof(float));
	if (!p)
		return -ENOMEM;
	p->kind = kind;
	p->idt = x->dtype;
	p->odt = cpu_out_type(fn, op)->dtype;
	switch (kind) {
	case LN_ARGMAX:
	case LN_ARGMIN:
		cpu_split_at(x, axis_of(fn, op, "axis", -1, x->rank), &p->outer, &p->dim, &p->inner);
		p->k = 1;
		break;
	case LN_CUMSUM:
		cpu_split_at(x, axis_of(fn, op, "axis", 0, x->rank), &p->outer, &p->dim, &p->inner);
		p->k = p->dim;
		p->exclusive = bool_of(fn, op, "exclusive", false);
		p->reverse = bool_of(fn, op, "reverse", false);
		break;
	case LN_TOPK:
	case LN_ARGSORT: {
		uint32_t a = axis_of(fn, op, "axis", -1, x->rank);
		cpu_split_at(x, a, &p->outer, &p->dim, &p->inner);
		p->k = cpu_out_type(fn, op)->shape[a];
		p->ascending = bool_of(fn, op, "ascending", false);
		break;
	}
	case LN_INSTANCE: {
		const anes_mil_value *g = cpu_arg(fn, op, "gamma"), *b = cpu_arg(fn, op, "beta");
		p->outer = x->shape[0] * x->shape[1];
		p->dim = x->count / p->outer;
		p->inner = 1;
		p->k = p->dim;
		p->eps = (float)f64_of(fn, op, "epsilon", 1e-5);
		p->nch = nch;
		p->chdiv = 1;
		p->gamma = (float *)(void *)(p + 1);
		p->beta_v = p->gamma + nch;
		for (uint64_t c = 0; c < nch; c++) {
			p->gamma[c] = g ? (float)anes_mil_load_f64(g->data, g->type.dtype, c) : 1.0f;
			p->beta_v[c] = b ? (float)anes_mil_load_f64(b->data, b->type.dtype, c) : 0.0f;
		}
		break;
	}
	case LN_L2:
		p->dim = x->shape[x->rank - 1] * x->shape[x->rank - 2] * x->shape[x->rank - 3];
		p->outer = x->count / p->dim;
		p->inner = 1;
		p->k = p->dim;
		p->eps = (float)f64_of(fn, op, "epsilon", 1e-6);
		break;
	case LN_LRN: {
		int64_t size = 1;
		uint32_t n;
		anes_mil_const_ints(cpu_arg(fn, op, "size"), &size, 1, &n);
		cpu_split_at(x, 1, &p->outer, &p->dim, &p->inner);
		p->k = p->dim;
		p->size = (uint64_t)size;
		p->alpha = (float)f64_of(fn, op, "alpha", 1e-4);
		p->beta = (float)f64_of(fn, op, "beta", 0.75);
		p->kk = (float)f64_of(fn, op, "k", 1.0);
		break;
	}
	default:
		free(p);
		return cpu_fail(pc, op, -ENOTSUP, "no kernel");
	}
	/* one line of values, one of (value, index) pairs for sorting, one of results */
	st->scratch = cpu_align64(p->dim * 4) + cpu_align64(p->dim * 16) + cpu_align64(p->dim * 4);
	st->params = p;
	return 0;
}

typedef struct sort_item {
	float v;
	uint32_t pad;                   /* int32 inputs: the value's bits */
	uint64_t i;
} sort_item;

/* NaN is larger than every number; ties keep the lower index first */
static int cmp_desc(const void *a, const void *b)
{
	const sort_item *x = a, *y = b;
	bool nx = isnan(x->v), ny = isnan(y->v);
	if (nx != ny)
		return nx ? -1 : 1;
	if (!nx && x->v != y->v)
		return x->v > y->v ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

static int cmp_asc(const void *a, const void *b)
{
	const sort_item *x = a, *y = b;
	bool nx = isnan(x->v), ny = isnan(y->v);
	if (nx != ny)
		return nx ? 1 : -1;
	if (!nx && x->v != y->v)
		return x->v < y->v ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

static int cmp_int_desc(const void *a, const void *b)
{
	const sort_item *x = a, *y = b;
	int32_t u = (int32_t)x->pad, v = (int32_t)y->pad;
	if (u != v)
		return u > v ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

static int cmp_int_asc(const void *a, const void *b)
{
	const sort_item *x = a, *y = b;
	int32_t u = (int32_t)x->pad, v = (int32_t)y->pad;
	if (u != v)
		return u < v ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

static void st_val(void *p, int dt, uint64_t i, float v)
{
	switch (dt) {
	case ANES_DT_FP16: ((uint16_t *)p)[i] = anes_f32_to_f16(v); break;
	case ANES_DT_FP32: ((float *)p)[i] = v; break;
	default: cpu_store_f64(p, dt, (size_t)i, v); break;
	}
}

static int run_line(const cpu_step *st, const cpu_exec *ex)
{
	const line_params *p = st->params;
	const void *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	void *out = cpu_ptr(ex, st->op->outputs[0]);
	void *out2 = st->op->n_outputs > 1 ? cpu_ptr(ex, st->op->outputs[1]) : NULL;
	float *line = (float *)(void *)ex->scratch;
	sort_item *items = (sort_item *)(void *)(ex->scratch + cpu_align64(p->dim * 4));
	float *res = (float *)(void *)(ex->scratch + cpu_align64(p->dim * 4) + cpu_align64(p->dim * 16));

	for (uint64_t o = 0; o < p->outer; o++)
		for (uint64_t in = 0; in < p->inner; in++) {
			uint64_t base = o * p->dim * p->inner + in, obase = o * p->k * p->inner + in;
			bool is_int = p->idt == ANES_DT_INT32;
			for (uint64_t d = 0; d < p->dim; d++)
				line[d] = ld(x, p->idt, base + d * p->inner);
			switch (p->kind) {
			case LN_ARGMAX:
			case LN_ARGMIN: {
				uint64_t best = 0;
				for (uint64_t d = 1; d < p->dim; d++) {
					float v = line[d], b = line[best];
					if (isnan(b))
						break;      /* the first NaN wins (numpy) */
					if (isnan(v) || (p->kind == LN_ARGMAX ? v > b : v < b))
						best = d;
				}
				if (is_int) {   /* exact int32 compare (floats lose bits above 2^24) */
					const int32_t *xi = x;
					best = 0;
					for (uint64_t d = 1; d < p->dim; d++) {
						int32_t v = xi[base + d * p->inner], b = xi[base + best * p->inner];
						if (p->kind == LN_ARGMAX ? v > b : v < b)
							best = d;
					}
				}
				((int32_t *)out)[o * p->inner + in] = (int32_t)best;
				break;
			}
			case LN_CUMSUM:
				if (is_int) {
					const int32_t *xi = x;
					uint32_t acc = 0;
					for (uint64_t t = 0; t < p->dim; t++) {
						uint64_t d = p->reverse ? p->dim - 1 - t : t;
						uint32_t v = (uint32_t)xi[base + d * p->inner];
						if (!p->exclusive)
							acc += v;
						((int32_t *)out)[base + d * p->inner] = (int32_t)acc;
						if (p->exclusive)
							acc += v;
					}
				} else {
					float acc = 0;
					for (uint64_t t = 0; t < p->dim; t++) {
						uint64_t d = p->reverse ? p->dim - 1 - t : t;
						float v = line[d];
						if (!p->exclusive)
							acc += v;
						st_val(out, p->odt, base + d * p->inner, acc);
						if (p->exclusive)
							acc += v;
					}
				}
				break;
			case LN_TOPK:
			case LN_ARGSORT:
				for (uint64_t d = 0; d < p->dim; d++) {
					items[d].v = line[d];
					items[d].pad = 0;
					items[d].i = d;
				}
				if (is_int) {   /* int32 sorted exactly, by value */
					for (uint64_t d = 0; d < p->dim; d++)
						items[d].pad = (uint32_t)((const int32_t *)x)[base + d * p->inner];
					qsort(items, (size_t)p->dim, sizeof *items, p->ascending ? cmp_int_asc : cmp_int_desc);
				} else {
					qsort(items, (size_t)p->dim, sizeof *items, p->ascending ? cmp_asc : cmp_desc);
				}
				for (uint64_t t = 0; t < p->k; t++) {
					uint64_t oi = obase + t * p->inner;
					if (p->kind == LN_ARGSORT) {
						((int32_t *)out)[oi] = (int32_t)items[t].i;
					} else {
						if (is_int)
							((int32_t *)out)[oi] = ((const int32_t *)x)[base + items[t].i * p->inner];
						else
							st_val(out, p->odt, oi, items[t].v);
						if (out2)
							((int32_t *)out2)[oi] = (int32_t)items[t].i;
					}
				}
				break;
			case LN_INSTANCE: {
				float mean = 0, var = 0;
				uint64_t ch = (o / p->chdiv) % p->nch;
				for (uint64_t d = 0; d < p->dim; d++)
					mean += line[d];
				mean /= (float)p->dim;
				for (uint64_t d = 0; d < p->dim; d++)
					var += (line[d] - mean) * (line[d] - mean);
				float r = 1.0f / sqrtf(var / (float)p->dim + p->eps);
				for (uint64_t d = 0; d < p->dim; d++)
					res[d] = (line[d] - mean) * r * p->gamma[ch] + p->beta_v[ch];
				cpu_from_f32((uint8_t *)out + base * cpu_esize(p->odt), p->odt, res, (size_t)p->dim);
				break;
			}
			case LN_L2: {
				float ss = 0;
				for (uint64_t d = 0; d < p->dim; d++)
					ss += line[d] * line[d];
				float r = 1.0f / sqrtf(ss + p->eps);
				for (uint64_t d = 0; d < p->dim; d++)
					res[d] = line[d] * r;
				cpu_from_f32((uint8_t *)out + base * cpu_esize(p->odt), p->odt, res, (size_t)p->dim);
				break;
			}
			case LN_LRN: {
				/* window [c - floor((size - 1) / 2), c + ceil((size - 1) / 2)], clipped */
				uint64_t lo = (p->size - 1) / 2, hi = p->size - 1 - lo;
				for (uint64_t d = 0; d < p->dim; d++) {
					uint64_t a = d > lo ? d - lo : 0, b = d + hi < p->dim ? d + hi : p->dim - 1;
					float ss = 0;
					for (uint64_t j = a; j <= b; j++)
						ss += line[j] * line[j];
					float v = line[d] / powf(p->kk + p->alpha / (float)p->size * ss, p->beta);
					st_val(out, p->odt, base + d * p->inner, v);
				}
				break;
			}
			default:
				break;
			}
		}
	return 0;
}


/* ---- data movement ---- */

static void unravel(uint64_t i, const uint64_t *shape, uint32_t r, uint64_t *idx)
{
	for (uint32_t d = r; d-- > 0;) {
		idx[d] = i % shape[d];
		i /= shape[d];
	}
}

/* An index read from a tensor the client may be writing: read once into a
 * register (the empty asm keeps the compiler from reading it again after the
 * check), checked against [-d, d), then made non-negative. */
static int read_index(const cpu_exec *ex, const anes_mil_op *op, const void *ind, int dt, uint64_t i, uint64_t d,
                      uint64_t *ret)
{
	int64_t ix = (int64_t)anes_mil_load_f64(ind, dt, i);
	__asm__ volatile("" : "+r"(ix));
	if (ix < -(int64_t)d || ix >= (int64_t)d) {
		cpu_run_fail(ex, op, -EINVAL, "indices[%llu] = %lld is out of range [%lld, %lld)",
		             (unsigned long long)i, (long long)ix, -(long long)d, (long long)d);
		return -EINVAL;   /* what cpu_run_fail returns, said where gcc -O3 sees it */
	}
	*ret = (uint64_t)(ix < 0 ? ix + (int64_t)d : ix);
	return 0;
}

/* stack */

typedef struct stack_params {
	uint64_t outer, inner;          /* elements of one input before / from the axis */
	size_t es;
	uint32_t n;
} stack_params;

static int plan_stack(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_arg *vals = anes_mil_op_arg(op, "values");
	const anes_mil_type *t0 = &fn->values[vals->vals[0]].type;
	uint32_t axis = axis_of(fn, op, "axis", 0, t0->rank + 1);
	stack_params *p = calloc(1, sizeof *p);

	(void)pc;
	if (!p)
		return -ENOMEM;
	p->outer = p->inner = 1;
	for (uint32_t i = 0; i < t0->rank; i++) {
		if (i < axis)
			p->outer *= t0->shape[i];
		else
			p->inner *= t0->shape[i];
	}
	p->es = cpu_esize(t0->dtype);
	p->n = vals->n;
	st->params = p;
	return 0;
}

static int run_stack(const cpu_step *st, const cpu_exec *ex)
{
	const stack_params *p = st->params;
	const anes_mil_arg *vals = anes_mil_op_arg(st->op, "values");
	uint8_t *dst = cpu_ptr(ex, st->op->outputs[0]);
	size_t nb = (size_t)(p->inner * p->es);

	for (uint64_t o = 0; o < p->outer; o++)
		for (uint32_t k = 0; k < p->n; k++) {
			memmove(dst, (const uint8_t *)cpu_ptr(ex, vals->vals[k]) + o * nb, nb);
			dst += nb;
		}
	return 0;
}

/* remap: out[i] = x[f(i)] (or zero) for the layout ops */

enum { RM_REVERSE, RM_D2S, RM_S2D, RM_PSHUF, RM_PUNSHUF, RM_SLIDING, RM_BAND, RM_COPY };

typedef struct remap_params {
	int kind;
	size_t es;
	uint32_t orank, xrank;
	uint64_t oshape[ANES_MAX_RANK], xshape[ANES_MAX_RANK], xstr[ANES_MAX_RANK];
	uint64_t count;
	bool rev[ANES_MAX_RANK];
	uint64_t b;                     /* block size / factor; sliding: stride */
	uint32_t axis;
	int64_t lower, upper;
} remap_params;

static int plan_remap(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	static const char *const names[] = {"reverse", "depth_to_space", "space_to_depth", "pixel_shuffle",
	                                    "pixel_unshuffle", "sliding_windows", "band_part", "flatten2d"};
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type, *o = cpu_out_type(fn, op);
	remap_params *p = calloc(1, sizeof *p);
	int64_t v = 1;
	uint32_t n;

	(void)pc;
	if (!p)
		return -ENOMEM;
	for (int k = 0; k < 8; k++)
		if (strcmp(op->def->name, names[k]) == 0)
			p->kind = k;
	p->es = cpu_esize(x->dtype);
	p->orank = o->rank;
	p->xrank = x->rank;
	memcpy(p->oshape, o->shape, sizeof p->oshape);
	memcpy(p->xshape, x->shape, sizeof p->xshape);
	cpu_strides(x, p->xstr);
	p->count = o->count;
	switch (p->kind) {
	case RM_REVERSE:
		cpu_axes_mask(cpu_arg(fn, op, "axes"), x->rank, p->rev);
		break;
	case RM_D2S:
	case RM_S2D:
		anes_mil_const_ints(cpu_arg(fn, op, "block_size"), &v, 1, &n);
		p->b = (uint64_t)v;
		break;
	case RM_PSHUF:
		anes_mil_const_ints(cpu_arg(fn, op, "upscale_factor"), &v, 1, &n);
		p->b = (uint64_t)v;
		break;
	case RM_PUNSHUF:
		anes_mil_const_ints(cpu_arg(fn, op, "downscale_factor"), &v, 1, &n);
		p->b = (uint64_t)v;
		break;
	case RM_SLIDING:
		p->axis = axis_of(fn, op, "axis", 0, x->rank);
		v = 1;
		if (cpu_arg(fn, op, "stride"))
			anes_mil_const_ints(cpu_arg(fn, op, "stride"), &v, 1, &n);
		p->b = (uint64_t)v;
		break;
	case RM_BAND:
		p->lower = p->upper = -1;
		if (cpu_arg(fn, op, "lower"))
			anes_mil_const_ints(cpu_arg(fn, op, "lower"), &p->lower, 1, &n);
		if (cpu_arg(fn, op, "upper"))
			anes_mil_const_ints(cpu_arg(fn, op, "upper"), &p->upper, 1, &n);
		break;
	default:
		break;
	}
	st->params = p;
	return 0;
}

/* source element of output index idx, or -1 for zero */
static int64_t remap_src(const remap_params *p, const uint64_t *idx, uint64_t lin)
{
	const uint64_t *s = p->xstr;
	uint64_t b = p->b;

	switch (p->kind) {
	case RM_REVERSE: {
		uint64_t off = 0;
		for (uint32_t d = 0; d < p->xrank; d++)
			off += (p->rev[d] ? p->xshape[d] - 1 - idx[d] : idx[d]) * s[d];
		return (int64_t)off;
	}
	case RM_D2S: {   /* DCR: channel (i * b + j) * C_out + c */
		uint64_t i = idx[2] % b, j = idx[3] % b;
		uint64_t c = (i * b + j) * p->oshape[1] + idx[1];
		return (int64_t)(idx[0] * s[0] + c * s[1] + (idx[2] / b) * s[2] + (idx[3] / b) * s[3]);
	}
	case RM_S2D: {
		uint64_t q = idx[1] / p->xshape[1], c = idx[1] % p->xshape[1];
		return (int64_t)(idx[0] * s[0] + c * s[1] + (idx[2] * b + q / b) * s[2] + (idx[3] * b + q % b) * s[3]);
	}
	case RM_PSHUF: {   /* CRD: channel c * b^2 + i * b + j */
		uint64_t c = idx[1] * b * b + (idx[2] % b) * b + idx[3] % b;
		return (int64_t)(idx[0] * s[0] + c * s[1] + (idx[2] / b) * s[2] + (idx[3] / b) * s[3]);
	}
	case RM_PUNSHUF: {
		uint64_t c = idx[1] / (b * b), q = idx[1] % (b * b);
		return (int64_t)(idx[0] * s[0] + c * s[1] + (idx[2] * b + q / b) * s[2] + (idx[3] * b + q % b) * s[3]);
	}
	case RM_SLIDING: {
		uint64_t off = 0;
		for (uint32_t d = 0, o = 0; d < p->xrank; d++, o++) {
			if (d == p->axis) {
				off += (idx[o] * b + idx[o + 1]) * s[d];
				o++;
			} else {
				off += idx[o] * s[d];
			}
		}
		return (int64_t)off;
	}
	case RM_BAND: {
		int64_t i = (int64_t)idx[p->orank - 2], j = (int64_t)idx[p->orank - 1];
		if ((p->lower >= 0 && i - j > p->lower) || (p->upper >= 0 && j - i > p->upper))
			return -1;
		return (int64_t)lin;
	}
	default:
		return (int64_t)lin;
	}
}

static int run_remap(const cpu_step *st, const cpu_exec *ex)
{
	const remap_params *p = st->params;
	const uint8_t *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	uint8_t *o = cpu_ptr(ex, st->op->outputs[0]);
	uint64_t idx[ANES_MAX_RANK];

	for (uint64_t i = 0; i < p->count; i++) {
		unravel(i, p->oshape, p->orank, idx);
		int64_t src = remap_src(p, idx, i);
		if (src < 0)
			memset(o + i * p->es, 0, p->es);
		else
			memmove(o + i * p->es, x + (uint64_t)src * p->es, p->es);
	}
	return 0;
}

/* gather_nd, gather_along_axis */

typedef struct gidx_params {
	size_t es;
	int idt;
	uint32_t K, xrank, irank, axis;
	uint64_t nidx, block;           /* gather_nd: index tuples, elements per tuple */
	uint64_t xshape[ANES_MAX_RANK], xstr[ANES_MAX_RANK], ishape[ANES_MAX_RANK];
	uint64_t icount;
} gidx_params;

static gidx_params *gidx_new(const anes_mil_type *x, const anes_mil_type *it)
{
	gidx_params *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->es = cpu_esize(x->dtype);
	p->idt = it->dtype;
	p->xrank = x->rank;
	p->irank = it->rank;
	memcpy(p->xshape, x->shape, sizeof p->xshape);
	memcpy(p->ishape, it->shape, sizeof p->ishape);
	cpu_strides(x, p->xstr);
	p->icount = it->count;
	p->K = (uint32_t)it->shape[it->rank - 1];
	p->nidx = it->count / p->K;
	p->block = 1;
	for (uint32_t i = p->K; i < x->rank; i++)
		p->block *= x->shape[i];
	return p;
}

static int plan_gather_x(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type, *it = &cpu_arg(fn, op, "indices")->type;
	gidx_params *p = gidx_new(x, it);

	(void)pc;
	if (!p)
		return -ENOMEM;
	p->axis = axis_of(fn, op, "axis", 0, x->rank);
	st->params = p;
	return 0;
}

static int run_gather_nd(const cpu_step *st, const cpu_exec *ex)
{
	const gidx_params *p = st->params;
	const uint8_t *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	const void *ind = cpu_ptr(ex, cpu_argid(st->op, "indices"));
	uint8_t *o = cpu_ptr(ex, st->op->outputs[0]);
	size_t nb = (size_t)(p->block * p->es);

	for (uint64_t t = 0; t < p->nidx; t++) {
		uint64_t off = 0, ix;
		for (uint32_t k = 0; k < p->K; k++) {
			if (read_index(ex, st->op, ind, p->idt, t * p->K + k, p->xshape[k], &ix))
				return -EINVAL;
			off += ix * p->xstr[k];
		}
		memmove(o + t * nb, x + off * p->es, nb);
	}
	return 0;
}

static int run_gather_along(const cpu_step *st, const cpu_exec *ex)
{
	const gidx_params *p = st->params;
	const uint8_t *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	const void *ind = cpu_ptr(ex, cpu_argid(st->op, "indices"));
	uint8_t *o = cpu_ptr(ex, st->op->outputs[0]);
	uint64_t idx[ANES_MAX_RANK];

	for (uint64_t i = 0; i < p->icount; i++) {
		uint64_t ix, off = 0;
		if (read_index(ex, st->op, ind, p->idt, i, p->xshape[p->axis], &ix))
			return -EINVAL;
		unravel(i, p->ishape, p->irank, idx);
		idx[p->axis] = ix;
		for (uint32_t d = 0; d < p->xrank; d++)
			off += idx[d] * p->xstr[d];
		memmove(o + i * p->es, x + off * p->es, p->es);
	}
	return 0;
}

/* scatter, scatter_nd, scatter_along_axis */

enum { SC_UPDATE, SC_ADD, SC_SUB, SC_MUL, SC_DIV, SC_MAX, SC_MIN };
enum { SK_AXIS, SK_ND, SK_ALONG };

typedef struct scat_params {
	int kind, mode, dt, idt;
	size_t es;
	uint32_t drank, irank, axis, K;
	uint64_t dshape[ANES_MAX_RANK], dstr[ANES_MAX_RANK], ishape[ANES_MAX_RANK];
	uint64_t pre, dim, post;        /* SK_AXIS: data as [pre, dim, post] */
	uint64_t nidx, block, icount, bytes;
} scat_params;

static int plan_scatter(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	static const char *const modes[] = {"update", "add", "sub", "mul", "div", "max", "min"};
	const anes_mil_type *d = &cpu_arg(fn, op, "data")->type, *it = &cpu_arg(fn, op, "indices")->type;
	const char *m = cpu_arg(fn, op, "mode") ? anes_mil_const_string(cpu_arg(fn, op, "mode")) : "add";
	scat_params *p = calloc(1, sizeof *p);

	(void)pc;
	if (!p)
		return -ENOMEM;
	p->kind = !strcmp(op->def->name, "scatter") ? SK_AXIS : !strcmp(op->def->name, "scatter_nd") ? SK_ND : SK_ALONG;
	for (int k = 0; k < 7; k++)
		if (strcmp(m, modes[k]) == 0)
			p->mode = k;
	p->dt = d->dtype;
	p->idt = it->dtype;
	p->es = cpu_esize(d->dtype);
	p->drank = d->rank;
	p->irank = it->rank;
	memcpy(p->dshape, d->shape, sizeof p->dshape);
	memcpy(p->ishape, it->shape, sizeof p->ishape);
	cpu_strides(d, p->dstr);
	p->icount = it->count;
	p->bytes = d->bytes;
	if (p->kind == SK_ND) {
		p->K = (uint32_t)it->shape[it->rank - 1];
		p->nidx = it->count / p->K;
		p->block = 1;
		for (uint32_t i = p->K; i < d->rank; i++)
			p->block *= d->shape[i];
	} else {
		p->axis = axis_of(fn, op, "axis", 0, d->rank);
		cpu_split_at(d, p->axis, &p->pre, &p->dim, &p->post);
	}
	st->params = p;
	return 0;
}

static void combine(const scat_params *p, uint8_t *o, uint64_t at, const void *u, uint64_t ui)
{
	if (p->mode == SC_UPDATE) {
		memmove(o + at * p->es, (const uint8_t *)u + ui * p->es, p->es);
		return;
	}
	if (p->dt == ANES_DT_INT32) {
		int64_t a = ((int32_t *)(void *)o)[at], b = ((const int32_t *)u)[ui], r;
		switch (p->mode) {
		case SC_ADD: r = a + b; break;
		case SC_SUB: r = a - b; break;
		case SC_MUL: r = (int64_t)((uint64_t)a * (uint64_t)b); break;
		case SC_DIV: r = b == 0 ? 0 : (a == INT32_MIN && b == -1) ? a : a / b; break;
		case SC_MAX: r = a > b ? a : b; break;
		default: r = a < b ? a : b; break;
		}
		((int32_t *)(void *)o)[at] = (int32_t)(uint32_t)(uint64_t)r;
		return;
	}
	float a = ld(o, p->dt, at), b = ld(u, p->dt, ui), r;
	switch (p->mode) {
	case SC_ADD: r = a + b; break;
	case SC_SUB: r = a - b; break;
	case SC_MUL: r = a * b; break;
	case SC_DIV: r = a / b; break;
	case SC_MAX: r = a > b || isnan(a) ? a : b; break;
	default: r = a < b || isnan(a) ? a : b; break;
	}
	st_val(o, p->dt, at, r);
}

static int run_scatter(const cpu_step *st, const cpu_exec *ex)
{
	const scat_params *p = st->params;
	const anes_mil_op *op = st->op;
	const void *ind = cpu_ptr(ex, cpu_argid(op, "indices"));
	const void *u = cpu_ptr(ex, cpu_argid(op, "updates"));
	uint8_t *o = cpu_ptr(ex, op->outputs[0]);
	uint64_t idx[ANES_MAX_RANK], ix;

	memmove(o, cpu_ptr(ex, cpu_argid(op, "data")), (size_t)p->bytes);
	switch (p->kind) {
	case SK_AXIS: {
		/* updates [pre, indices..., post] */
		uint64_t ui = 0;
		for (uint64_t a = 0; a < p->pre; a++)
			for (uint64_t t = 0; t < p->icount; t++) {
				if (read_index(ex, op, ind, p->idt, t, p->dim, &ix))
					return -EINVAL;
				for (uint64_t q = 0; q < p->post; q++)
					combine(p, o, (a * p->dim + ix) * p->post + q, u, ui++);
			}
		break;
	}
	case SK_ND:
		for (uint64_t t = 0; t < p->nidx; t++) {
			uint64_t off = 0;
			for (uint32_t k = 0; k < p->K; k++) {
				if (read_index(ex, op, ind, p->idt, t * p->K + k, p->dshape[k], &ix))
					return -EINVAL;
				off += ix * p->dstr[k];
			}
			for (uint64_t q = 0; q < p->block; q++)
				combine(p, o, off + q, u, t * p->block + q);
		}
		break;
	default:
		for (uint64_t i = 0; i < p->icount; i++) {
			uint64_t off = 0;
			if (read_index(ex, op, ind, p->idt, i, p->dim, &ix))
				return -EINVAL;
			unravel(i, p->ishape, p->irank, idx);
			idx[p->axis] = ix;
			for (uint32_t d = 0; d < p->drank; d++)
				off += idx[d] * p->dstr[d];
			combine(p, o, off, u, i);
		}
		break;
	}
	return 0;
}

/* slice_update */

typedef struct su_params {
	size_t es;
	uint32_t rank, urank;
	uint64_t shape[ANES_MAX_RANK], str[ANES_MAX_RANK], ushape[ANES_MAX_RANK];
	int64_t stride[ANES_MAX_RANK];
	bool bm[ANES_MAX_RANK], em[ANES_MAX_RANK], sm[ANES_MAX_RANK];
	int bdt, edt;
	uint64_t bytes, ucount;
} su_params;

static int plan_slice_update(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type, *u = &cpu_arg(fn, op, "update")->type;
	static const char *const mn[3] = {"begin_mask", "end_mask", "squeeze_mask"};
	su_params *p = calloc(1, sizeof *p);
	uint32_t n;

	(void)pc;
	if (!p)
		return -ENOMEM;
	p->es = cpu_esize(x->dtype);
	p->rank = x->rank;
	p->urank = u->rank;
	memcpy(p->shape, x->shape, sizeof p->shape);
	memcpy(p->ushape, u->shape, sizeof p->ushape);
	cpu_strides(x, p->str);
	for (uint32_t i = 0; i < x->rank; i++)
		p->stride[i] = 1;
	if (cpu_arg(fn, op, "stride"))
		anes_mil_const_ints(cpu_arg(fn, op, "stride"), p->stride, ANES_MAX_RANK, &n);
	bool *mv[3] = {p->bm, p->em, p->sm};
	for (int k = 0; k < 3; k++) {
		const anes_mil_value *v = cpu_arg(fn, op, mn[k]);
		if (v)
			for (uint32_t i = 0; i < x->rank; i++)
				mv[k][i] = ((const uint8_t *)v->data)[i] != 0;
	}
	p->bdt = cpu_arg(fn, op, "begin")->type.dtype;
	p->edt = cpu_arg(fn, op, "end")->type.dtype;
	p->bytes = x->bytes;
	p->ucount = u->count;
	st->params = p;
	return 0;
}

static int64_t clamp_arg(double v)
{
	double lim = 2.0 * (double)ANES_MIL_MAX_DIM;
	return (int64_t)(v < -lim ? -lim : v > lim ? lim : v);
}

static int run_slice_update(const cpu_step *st, const cpu_exec *ex)
{
	const su_params *p = st->params;
	const anes_mil_op *op = st->op;
	const void *bp = cpu_ptr(ex, cpu_argid(op, "begin")), *ep = cpu_ptr(ex, cpu_argid(op, "end"));
	const uint8_t *u = cpu_ptr(ex, cpu_argid(op, "update"));
	uint8_t *o = cpu_ptr(ex, op->outputs[0]);
	int64_t first[ANES_MAX_RANK], step[ANES_MAX_RANK];
	uint64_t len[ANES_MAX_RANK];
	uint32_t r = 0;

	/* begin and end may be the caller's memory: each read once, bounded, checked */
	for (uint32_t i = 0; i < p->rank; i++) {
		int64_t d = (int64_t)p->shape[i];
		int64_t b = clamp_arg(anes_mil_load_f64(bp, p->bdt, i)), e = clamp_arg(anes_mil_load_f64(ep, p->edt, i));
		__asm__ volatile("" : "+r"(b), "+r"(e));
		if (p->sm[i]) {
			int64_t bb = b < 0 ? b + d : b;
			if (bb < 0 || bb >= d)
				return cpu_run_fail(ex, op, -EINVAL, "begin[%u] = %lld is out of range for the squeezed dim %lld", i,
				                    (long long)b, (long long)d);
			first[i] = bb;
			step[i] = 1;
			len[i] = 1;
			continue;
		}
		int64_t bb, l;
		anes_mil_slice_axis(d, b, e, p->stride[i], p->bm[i], p->em[i], &bb, &l);
		if (l != (int64_t)p->ushape[r])
			return cpu_run_fail(ex, op, -EINVAL, "the slice of axis %u has %lld elements (begin %lld, end %lld), update has %llu",
			                    i, (long long)l, (long long)b, (long long)e, (unsigned long long)p->ushape[r]);
		first[i] = bb;
		step[i] = p->stride[i];
		len[i] = (uint64_t)l;
		r++;
	}
	memmove(o, cpu_ptr(ex, cpu_argid(op, "x")), (size_t)p->bytes);
	uint64_t idx[ANES_MAX_RANK];
	for (uint64_t i = 0; i < p->ucount; i++) {
		int64_t off = 0;
		unravel(i, len, p->rank, idx);
		for (uint32_t d = 0; d < p->rank; d++)
			off += (first[d] + (int64_t)idx[d] * step[d]) * (int64_t)p->str[d];
		memmove(o + (uint64_t)off * p->es, u + i * p->es, p->es);
	}
	return 0;
}

/* fill, fill_like, range_1d, shape, one_hot */

typedef struct gen_params {
	int kind, odt, idt;
	size_t es;
	uint64_t count;
	uint8_t on[8], off[8];          /* fill: value in on */
	double start, step;
	uint32_t rank, axis;
	uint64_t shape[ANES_MAX_RANK];  /* shape: x's dims; one_hot: output shape */
} gen_params;

enum { G_FILL, G_RANGE, G_SHAPE, G_ONE_HOT };

static int plan_gen(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const char *nm = op->def->name;
	const anes_mil_type *o = cpu_out_type(fn, op);
	gen_params *p = calloc(1, sizeof *p);

	(void)pc;
	if (!p)
		return -ENOMEM;
	p->kind = !strcmp(nm, "range_1d") ? G_RANGE : !strcmp(nm, "shape") ? G_SHAPE
	        : !strcmp(nm, "one_hot") ? G_ONE_HOT : G_FILL;
	p->odt = o->dtype;
	p->es = cpu_esize(o->dtype);
	p->count = o->count;
	switch (p->kind) {
	case G_FILL:
		cpu_store_f64(p->on, p->odt, 0, f64_of(fn, op, "value", 0));
		if (p->odt == ANES_DT_BOOL && cpu_arg(fn, op, "value"))
			p->on[0] = ((const uint8_t *)cpu_arg(fn, op, "value")->data)[0] != 0;
		break;
	case G_RANGE:
		p->start = f64_of(fn, op, "start", 0);
		p->step = f64_of(fn, op, "step", 1);
		break;
	case G_SHAPE: {
		const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
		p->rank = x->rank;
		memcpy(p->shape, x->shape, sizeof p->shape);
		break;
	}
	case G_ONE_HOT: {
		const anes_mil_type *it = &cpu_arg(fn, op, "indices")->type;
		int64_t a = -1;
		uint32_t n;
		if (cpu_arg(fn, op, "axis"))
			anes_mil_const_ints(cpu_arg(fn, op, "axis"), &a, 1, &n);
		p->axis = (uint32_t)(a < 0 ? a + (int64_t)it->rank + 1 : a);
		p->idt = it->dtype;
		p->rank = o->rank;
		memcpy(p->shape, o->shape, sizeof p->shape);
		const anes_mil_value *on = cpu_arg(fn, op, "on_value"), *off = cpu_arg(fn, op, "off_value");
		cpu_store_f64(p->on, p->odt, 0, on ? anes_mil_load_f64(on->data, on->type.dtype, 0) : 1);
		cpu_store_f64(p->off, p->odt, 0, off ? anes_mil_load_f64(off->data, off->type.dtype, 0) : 0);
		break;
	}
	}
	st->params = p;
	return 0;
}

static int run_gen(const cpu_step *st, const cpu_exec *ex)
{
	const gen_params *p = st->params;
	uint8_t *o = cpu_ptr(ex, st->op->outputs[0]);

	switch (p->kind) {
	case G_FILL:
		for (uint64_t i = 0; i < p->count; i++)
			memcpy(o + i * p->es, p->on, p->es);
		break;
	case G_RANGE:
		for (uint64_t i = 0; i < p->count; i++) {
			if (p->odt == ANES_DT_INT32)
				((int32_t *)(void *)o)[i] = (int32_t)(uint32_t)(uint64_t)((int64_t)p->start + (int64_t)i * (int64_t)p->step);
			else
				st_val(o, p->odt, i, (float)p->start + (float)i * (float)p->step);
		}
		break;
	case G_SHAPE:
		for (uint32_t i = 0; i < p->rank; i++)
			((int32_t *)(void *)o)[i] = (int32_t)p->shape[i];
		break;
	case G_ONE_HOT: {
		const void *ind = cpu_ptr(ex, cpu_argid(st->op, "indices"));
		uint64_t idx[ANES_MAX_RANK];
		uint64_t depth = p->shape[p->axis];
		for (uint64_t i = 0; i < p->count; i++) {
			unravel(i, p->shape, p->rank, idx);
			/* the index tensor position: the output index without the axis */
			uint64_t src = 0;
			for (uint32_t d = 0; d < p->rank; d++)
				if (d != p->axis)
					src = src * p->shape[d] + idx[d];
			double v = anes_mil_load_f64(ind, p->idt, src);   /* compared only: any value is safe */
			bool hot = v >= 0 && v < (double)depth && (uint64_t)v == idx[p->axis];
			memcpy(o + i * p->es, hot ? p->on : p->off, p->es);
		}
		break;
	}
	}
	return 0;
}


/* ---- vision ---- */

/* window geometry (as the type checker computed it), 1-D as 2-D with H = 1 */
typedef struct win2 {
	uint64_t n, c, h, w, oh, ow;
	int64_t kh, kw, sh, sw, dh, dw, pt, pl, pbh, pbw;   /* pbh/pbw: padding after */
} win2;

static void win_of(const anes_mil_function *fn, const anes_mil_op *op, const anes_mil_type *x,
                   const anes_mil_type *o, const int64_t *kdims, bool transpose, win2 *g)
{
	int64_t k[2] = {1, 1}, s[2] = {1, 1}, d[2] = {1, 1}, pad[4] = {0, 0, 0, 0};
	uint32_t ns = x->rank - 2, n;
	const char *pt = cpu_arg(fn, op, "pad_type") ? anes_mil_const_string(cpu_arg(fn, op, "pad_type")) : "valid";

	memcpy(k, kdims, ns * sizeof(int64_t));
	if (cpu_arg(fn, op, "strides"))
		anes_mil_const_ints(cpu_arg(fn, op, "strides"), s, 2, &n);
	if (cpu_arg(fn, op, "dilations"))
		anes_mil_const_ints(cpu_arg(fn, op, "dilations"), d, 2, &n);
	if (!strcmp(pt, "custom") && cpu_arg(fn, op, "pad"))
		anes_mil_const_ints(cpu_arg(fn, op, "pad"), pad, 4, &n);
	g->n = x->shape[0];
	g->c = x->shape[1];
	bool one = ns == 1;
	g->h = one ? 1 : x->shape[2];
	g->w = x->shape[x->rank - 1];
	g->oh = one ? 1 : o->shape[2];
	g->ow = o->shape[o->rank - 1];
	g->kh = one ? 1 : k[0];
	g->kw = k[ns - 1];
	g->sh = one ? 1 : s[0];
	g->sw = s[ns - 1];
	g->dh = one ? 1 : d[0];
	g->dw = d[ns - 1];
	int64_t pb[2] = {one ? 0 : pad[0], pad[2 * (ns - 1)]}, pe[2] = {one ? 0 : pad[1], pad[2 * (ns - 1) + 1]};
	if (!strcmp(pt, "same") || !strcmp(pt, "same_lower")) {
		int64_t in[2] = {(int64_t)g->h, (int64_t)g->w}, out[2] = {(int64_t)g->oh, (int64_t)g->ow};
		int64_t kk[2] = {g->kh, g->kw}, ss[2] = {g->sh, g->sw}, dd[2] = {g->dh, g->dw};
		for (int i = 0; i < 2; i++) {
			/* total padding: forward, (out - 1) s + eff - in; transposed, full - out */
			int64_t eff = dd[i] * (kk[i] - 1) + 1;
			int64_t tot = transpose ? (in[i] - 1) * ss[i] + eff - out[i] : (out[i] - 1) * ss[i] + eff - in[i];
			if (tot < 0)
				tot = 0;
			pb[i] = !strcmp(pt, "same_lower") ? tot - tot / 2 : tot / 2;
			pe[i] = tot - pb[i];
		}
	}
	g->pt = pb[0];
	g->pl = pb[1];
	g->pbh = pe[0];
	g->pbw = pe[1];
}

enum { PL_MAX, PL_AVG, PL_L2 };

typedef struct pool_params {
	int kind, dtype;
	bool exclude;
	win2 g;
} pool_params;

static int plan_pool(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	int64_t k[2];
	uint32_t n;
	pool_params *p;

	if (cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	p->kind = !strcmp(op->def->name, "max_pool") ? PL_MAX : !strcmp(op->def->name, "avg_pool") ? PL_AVG : PL_L2;
	p->dtype = x->dtype;
	p->exclude = bool_of(fn, op, "exclude_padding_from_average", false);
	anes_mil_const_ints(cpu_arg(fn, op, "kernel_sizes"), k, 2, &n);
	win_of(fn, op, x, cpu_out_type(fn, op), k, false, &p->g);
	st->params = p;
	return 0;
}

static int run_pool(const cpu_step *st, const cpu_exec *ex)
{
	const pool_params *p = st->params;
	const win2 *g = &p->g;
	const void *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	void *out = cpu_ptr(ex, st->op->outputs[0]);
	uint64_t oi = 0;

	for (uint64_t nc = 0; nc < g->n * g->c; nc++)
		for (uint64_t oy = 0; oy < g->oh; oy++)
			for (uint64_t ox = 0; ox < g->ow; ox++, oi++) {
				int64_t y0 = (int64_t)oy * g->sh - g->pt, x0 = (int64_t)ox * g->sw - g->pl;
				float acc = p->kind == PL_MAX ? -INFINITY : 0.0f;
				int64_t valid = 0, inpad = 0;
				for (int64_t i = 0; i < g->kh; i++)
					for (int64_t j = 0; j < g->kw; j++) {
						int64_t yy = y0 + i, xx = x0 + j;
						/* positions inside the padded input count for the average */
						if (yy < (int64_t)g->h + g->pbh && xx < (int64_t)g->w + g->pbw)
							inpad++;
						if (yy < 0 || xx < 0 || yy >= (int64_t)g->h || xx >= (int64_t)g->w)
							continue;
						float v = ld(x, p->dtype, (nc * g->h + (uint64_t)yy) * g->w + (uint64_t)xx);
						valid++;
						if (p->kind == PL_MAX)
							acc = v > acc || isnan(v) ? v : acc;
						else if (p->kind == PL_AVG)
							acc += v;
						else
							acc += v * v;
					}
				if (p->kind == PL_AVG)
					acc /= (float)(p->exclude ? (valid ? valid : 1) : (inpad ? inpad : 1));
				else if (p->kind == PL_L2)
					acc = sqrtf(acc);
				st_val(out, p->dtype, oi, acc);
			}
	return 0;
}

/* conv_transpose: direct, out[n, co, oy, ox] += x[n, ci, iy, ix] w[ci, co_g, ky, kx]
 * where oy = iy sh + ky dh - pt */
typedef struct convt_params {
	int dtype;
	win2 g;
	uint64_t cout, groups, cin_g, cout_g;
	bool has_bias;
	float *w, *b;                   /* fp32 copies (in this block) */
} convt_params;

static int plan_conv_t(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type, *o = cpu_out_type(fn, op);
	const anes_mil_value *wv = cpu_arg(fn, op, "weight"), *bv = cpu_arg(fn, op, "bias");
	int64_t k[2] = {1, 1}, groups = 1;
	uint32_t n, ns = x->rank - 2;
	convt_params *p;

	if (cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	const void *wd = cpu_const_data(pc, fn, cpu_argid(op, "weight"));
	const void *bd = bv ? cpu_const_data(pc, fn, cpu_argid(op, "bias")) : NULL;
	if (!wd || (bv && !bd))
		return cpu_fail(pc, op, -ENOTSUP, "weight and bias must be constants");
	p = calloc(1, sizeof *p + (size_t)(wv->type.count + o->shape[1]) * sizeof(float));
	if (!p)
		return -ENOMEM;
	for (uint32_t i = 0; i < ns; i++)
		k[i] = (int64_t)wv->type.shape[2 + i];
	if (cpu_arg(fn, op, "groups"))
		anes_mil_const_ints(cpu_arg(fn, op, "groups"), &groups, 1, &n);
	p->dtype = x->dtype;
	win_of(fn, op, x, o, k, true, &p->g);
	p->groups = (uint64_t)groups;
	p->cout = o->shape[1];
	p->cin_g = x->shape[1] / p->groups;
	p->cout_g = p->cout / p->groups;
	p->w = (float *)(void *)(p + 1);
	p->b = p->w + wv->type.count;
	cpu_to_f32(p->w, wd, wv->type.dtype, (size_t)wv->type.count);
	p->has_bias = bv != NULL;
	if (bv)
		cpu_to_f32(p->b, bd, bv->type.dtype, (size_t)p->cout);
	st->scratch = cpu_align64(o->count * 4);
	st->params = p;
	return 0;
}

static int run_conv_t(const cpu_step *st, const cpu_exec *ex)
{
	const convt_params *p = st->params;
	const win2 *g = &p->g;
	const void *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	void *out = cpu_ptr(ex, st->op->outputs[0]);
	float *acc = (float *)(void *)ex->scratch;
	uint64_t P = g->oh * g->ow, ocount = g->n * p->cout * P;

	for (uint64_t b = 0; b < g->n; b++)
		for (uint64_t co = 0; co < p->cout; co++)
			for (uint64_t q = 0; q < P; q++)
				acc[(b * p->cout + co) * P + q] = p->has_bias ? p->b[co] : 0.0f;
	for (uint64_t b = 0; b < g->n; b++)
		for (uint64_t ci = 0; ci < g->c; ci++) {
			uint64_t grp = ci / p->cin_g;
			for (uint64_t iy = 0; iy < g->h; iy++)
				for (uint64_t ix = 0; ix < g->w; ix++) {
					float v = ld(x, p->dtype, ((b * g->c + ci) * g->h + iy) * g->w + ix);
					for (uint64_t cg = 0; cg < p->cout_g; cg++) {
						uint64_t co = grp * p->cout_g + cg;
						const float *wk = p->w + (ci * p->cout_g + cg) * (uint64_t)(g->kh * g->kw);
						float *ao = acc + (b * p->cout + co) * P;
						for (int64_t ky = 0; ky < g->kh; ky++) {
							int64_t oy = (int64_t)iy * g->sh + ky * g->dh - g->pt;
							if (oy < 0 || oy >= (int64_t)g->oh)
								continue;
							for (int64_t kx = 0; kx < g->kw; kx++) {
								int64_t ox = (int64_t)ix * g->sw + kx * g->dw - g->pl;
								if (ox < 0 || ox >= (int64_t)g->ow)
									continue;
								ao[(uint64_t)oy * g->ow + (uint64_t)ox] += v * wk[ky * g->kw + kx];
							}
						}
					}
				}
		}
	cpu_from_f32(out, p->dtype, acc, (size_t)ocount);
	return 0;
}

/* upsample / resize: grid point (fp32 coordinate in the input) of each output row and column */
enum { RS_NEAREST, RS_BILINEAR };

typedef struct resize_params {
	int kind, dtype;
	uint64_t planes, ih, iw, oh, ow;
	float *gy, *gx;                 /* grid points (in this block) */
} resize_params;

/* grid of one dim: mode 0 align corners (strict), 1 align corners (Xout = 1: center),
 * 2 DEFAULT (TF legacy), 3 OFFSET_CORNERS, 4 half pixel (UNALIGN_CORNERS) */
static void grid(float *gp, uint64_t in, uint64_t out, int mode)
{
	for (uint64_t i = 0; i < out; i++) {
		double g, fi = (double)i, xin = (double)in, xout = (double)out;
		switch (mode) {
		case 0: g = out > 1 ? fi * (xin - 1) / (xout - 1) : 0; break;
		case 1: g = out > 1 ? fi * (xin - 1) / (xout - 1) : (xin - 1) / 2; break;
		case 2: g = out > 1 ? fi * (xin - xin / xout) / (xout - 1) : 0; break;
		case 3: { double delta = (xin - 1 > 1 ? xin - 1 : 1) / xout; g = 0.5 * delta + fi * delta; break; }
		default: g = (fi + 0.5) * xin / xout - 0.5; break;
		}
		gp[i] = (float)(g < 0 ? 0 : g > xin - 1 ? xin - 1 : g);
	}
}

static int plan_resize(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type, *o = cpu_out_type(fn, op);
	const char *nm = op->def->name;
	resize_params *p;

	if (cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	p = calloc(1, sizeof *p + (size_t)(o->shape[o->rank - 2] + o->shape[o->rank - 1]) * sizeof(float));
	if (!p)
		return -ENOMEM;
	p->dtype = x->dtype;
	p->ih = x->shape[x->rank - 2];
	p->iw = x->shape[x->rank - 1];
	p->oh = o->shape[o->rank - 2];
	p->ow = o->shape[o->rank - 1];
	p->planes = x->count / (p->ih * p->iw);
	p->gy = (float *)(void *)(p + 1);
	p->gx = p->gy + p->oh;
	p->kind = strstr(nm, "nearest") ? RS_NEAREST : RS_BILINEAR;
	if (p->kind == RS_NEAREST) {
		/* source = floor(i * in / out), exact in integers */
		for (uint64_t i = 0; i < p->oh; i++)
			p->gy[i] = (float)(i * p->ih / p->oh);
		for (uint64_t i = 0; i < p->ow; i++)
			p->gx[i] = (float)(i * p->iw / p->ow);
	} else if (!strcmp(nm, "upsample_bilinear")) {
		bool ac = bool_of(fn, op, "align_corners", true);
		bool hp = bool_of(fn, op, "half_pixel_centers", !ac);
		int mode = ac ? 0 : hp ? 4 : 2;
		grid(p->gy, p->ih, p->oh, mode);
		grid(p->gx, p->iw, p->ow, mode);
	} else {
		const char *m = cpu_arg(fn, op, "sampling_mode") ? anes_mil_const_string(cpu_arg(fn, op, "sampling_mode"))
		                                                 : "DEFAULT";
		int mode = !strcmp(m, "STRICT_ALIGN_CORNERS") ? 0 : !strcmp(m, "ALIGN_CORNERS") ? 1
		         : !strcmp(m, "DEFAULT") ? 2 : !strcmp(m, "OFFSET_CORNERS") ? 3 : 4;
		grid(p->gy, p->ih, p->oh, mode);
		grid(p->gx, p->iw, p->ow, mode);
	}
	st->params = p;
	return 0;
}

static int run_resize(const cpu_step *st, const cpu_exec *ex)
{
	const resize_params *p = st->params;
	const void *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	void *out = cpu_ptr(ex, st->op->outputs[0]);
	uint64_t oi = 0;

	for (uint64_t pl = 0; pl < p->planes; pl++) {
		uint64_t base = pl * p->ih * p->iw;
		for (uint64_t i = 0; i < p->oh; i++)
			for (uint64_t j = 0; j < p->ow; j++, oi++) {
				float gy = p->gy[i], gx = p->gx[j];
				uint64_t y0 = (uint64_t)gy, x0 = (uint64_t)gx;   /* grid points are clamped to [0, in - 1] */
				if (p->kind == RS_NEAREST) {
					st_val(out, p->dtype, oi, ld(x, p->dtype, base + y0 * p->iw + x0));
					continue;
				}
				uint64_t y1 = y0 + 1 < p->ih ? y0 + 1 : y0, x1 = x0 + 1 < p->iw ? x0 + 1 : x0;
				float wy = gy - (float)y0, wx = gx - (float)x0;
				float a = ld(x, p->dtype, base + y0 * p->iw + x0), b = ld(x, p->dtype, base + y0 * p->iw + x1);
				float c = ld(x, p->dtype, base + y1 * p->iw + x0), d = ld(x, p->dtype, base + y1 * p->iw + x1);
				float top = a + (b - a) * wx, bot = c + (d - c) * wx;
				st_val(out, p->dtype, oi, top + (bot - top) * wy);
			}
	}
	return 0;
}

/* crop: a strided copy of the last two dims */
typedef struct crop_params {
	size_t es;
	uint64_t planes, ih, iw, oh, ow, top, left;
} crop_params;

static int plan_crop(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type, *o = cpu_out_type(fn, op);
	int64_t ch[2], cw[2];
	uint32_t n;
	crop_params *p = calloc(1, sizeof *p);

	(void)pc;
	if (!p)
		return -ENOMEM;
	anes_mil_const_ints(cpu_arg(fn, op, "crop_height"), ch, 2, &n);
	anes_mil_const_ints(cpu_arg(fn, op, "crop_width"), cw, 2, &n);
	p->es = cpu_esize(x->dtype);
	p->ih = x->shape[x->rank - 2];
	p->iw = x->shape[x->rank - 1];
	p->oh = o->shape[o->rank - 2];
	p->ow = o->shape[o->rank - 1];
	p->planes = x->count / (p->ih * p->iw);
	p->top = (uint64_t)ch[0];
	p->left = (uint64_t)cw[0];
	st->params = p;
	return 0;
}

static int run_crop(const cpu_step *st, const cpu_exec *ex)
{
	const crop_params *p = st->params;
	const uint8_t *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	uint8_t *o = cpu_ptr(ex, st->op->outputs[0]);

	for (uint64_t pl = 0; pl < p->planes; pl++)
		for (uint64_t i = 0; i < p->oh; i++)
			memmove(o + ((pl * p->oh + i) * p->ow) * p->es,
			        x + ((pl * p->ih + i + p->top) * p->iw + p->left) * p->es, (size_t)(p->ow * p->es));
	return 0;
}

/* einsum of two operands: out[o] = sum over the other indices of a[..] b[..] */
typedef struct einsum_params {
	int dtype;
	uint32_t nidx, nout;            /* distinct indices (output ones first) */
	uint64_t dim[2 * ANES_MAX_RANK];
	uint64_t sa[2 * ANES_MAX_RANK], sb[2 * ANES_MAX_RANK];   /* operand strides per index (0 if absent) */
	uint64_t ocount, scount;
} einsum_params;

static int plan_einsum(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_arg *vals = anes_mil_op_arg(op, "values");
	const anes_mil_type *t[2] = {&fn->values[vals->vals[0]].type, &fn->values[vals->vals[1]].type};
	const char *eq = anes_mil_const_string(cpu_arg(fn, op, "equation"));
	char term[3][ANES_MAX_RANK + 1] = {{0}};
	char letters[2 * ANES_MAX_RANK];
	uint32_t nt = 0, len = 0;
	einsum_params *p;

	if (cpu_need_float(pc, op, t[0]->dtype))
		return -ENOTSUP;
	for (const char *c = eq; nt < 3; c++) {
		if (*c == ' ')
			continue;
		if (*c == ',' || *c == '-' || *c == '\0') {
			term[nt++][len] = '\0';
			len = 0;
			if (*c == '\0')
				break;
			if (*c == '-')
				c++;
			continue;
		}
		term[nt][len++] = *c;
	}
	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	p->dtype = t[0]->dtype;
	/* output indices first, then the summed ones */
	for (const char *c = term[2]; *c; c++)
		letters[p->nidx++] = *c;
	p->nout = p->nidx;
	for (int k = 0; k < 2; k++)
		for (const char *c = term[k]; *c; c++)
			if (!memchr(letters, *c, p->nidx))
				letters[p->nidx++] = *c;
	for (uint32_t i = 0; i < p->nidx; i++)
		for (int k = 0; k < 2; k++) {
			const char *at = strchr(term[k], letters[i]);
			uint64_t s = 1;
			if (!at)
				continue;
			uint32_t pos = (uint32_t)(at - term[k]);
			for (uint32_t d = pos + 1; d < t[k]->rank; d++)
				s *= t[k]->shape[d];
			(k ? p->sb : p->sa)[i] = s;
			p->dim[i] = t[k]->shape[pos];
		}
	p->ocount = p->scount = 1;
	for (uint32_t i = 0; i < p->nidx; i++)
		*(i < p->nout ? &p->ocount : &p->scount) *= p->dim[i];
	st->params = p;
	return 0;
}

static int run_einsum(const cpu_step *st, const cpu_exec *ex)
{
	const einsum_params *p = st->params;
	const anes_mil_arg *vals = anes_mil_op_arg(st->op, "values");
	const void *a = cpu_ptr(ex, vals->vals[0]), *b = cpu_ptr(ex, vals->vals[1]);
	void *out = cpu_ptr(ex, st->op->outputs[0]);
	uint64_t idx[2 * ANES_MAX_RANK];

	for (uint64_t o = 0; o < p->ocount; o++) {
		uint64_t oa = 0, ob = 0, r = o;
		for (uint32_t i = p->nout; i-- > 0;) {
			idx[i] = r % p->dim[i];
			r /= p->dim[i];
			oa += idx[i] * p->sa[i];
			ob += idx[i] * p->sb[i];
		}
		float acc = 0;
		for (uint64_t s = 0; s < p->scount; s++) {
			uint64_t ia = oa, ib = ob, q = s;
			for (uint32_t i = p->nidx; i-- > p->nout;) {
				uint64_t v = q % p->dim[i];
				q /= p->dim[i];
				ia += v * p->sa[i];
				ib += v * p->sb[i];
			}
			acc += ld(a, p->dtype, ia) * ld(b, p->dtype, ib);
		}
		st_val(out, p->dtype, o, acc);
	}
	return 0;
}


/* ---- recurrent: lstm (gates in the order input, forget, output, cell), gru (reset, output, update), rnn ---- */

enum { A_SIGMOID, A_TANH, A_RELU, A_LINEAR };

typedef struct rec_params {
	bool lstm, gru, seq, reset_after;
	int dtype, dir;                 /* 0 forward, 1 reverse, 2 bidirectional */
	int ract, cact, act;
	uint64_t S, Bn, I, H, G, D;
	const float *w[2][4];           /* per direction: weight_ih, weight_hh, bias, peephole / input_bias (or NULL) */
} rec_params;

static int act_of(const anes_mil_function *fn, const anes_mil_op *op, const char *name, int def)
{
	const anes_mil_value *v = cpu_arg(fn, op, name);
	const char *a = v ? anes_mil_const_string(v) : NULL;
	if (!a)
		return def;
	return !strcmp(a, "sigmoid") ? A_SIGMOID : !strcmp(a, "tanh") ? A_TANH : !strcmp(a, "relu") ? A_RELU : A_LINEAR;
}

static float act_f(int a, float v)
{
	switch (a) {
	case A_SIGMOID: return 1.0f / (1.0f + expf(-v));
	case A_TANH: return tanhf(v);
	case A_RELU: return v < 0 ? 0.0f : v;
	default: return v;
	}
}

static int plan_recurrent(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	static const char *const rec_names[2][4] = {{"weight_ih", "weight_hh", "bias", "peephole"},
	                                            {"weight_ih_back", "weight_hh_back", "bias_back", "peephole_back"}};
	static const char *const gru_names[2][4] = {{"weight_ih", "weight_hh", "bias", "input_bias"},
	                                            {"", "", "", ""}};
	bool gru = !strcmp(op->def->name, "gru");
	const char *const (*names)[4] = gru ? gru_names : rec_names;
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	const char *dir = cpu_arg(fn, op, "direction") ? anes_mil_const_string(cpu_arg(fn, op, "direction")) : "forward";
	rec_params *p;
	size_t total = 0;

	if (cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	for (int d = 0; d < 2; d++)
		for (int k = 0; k < 4; k++)
			if (cpu_arg(fn, op, names[d][k]))
				total += (size_t)cpu_arg(fn, op, names[d][k])->type.count;
	p = calloc(1, sizeof *p + total * sizeof(float));
	if (!p)
		return -ENOMEM;
	float *at = (float *)(void *)(p + 1);
	for (int d = 0; d < 2; d++)
		for (int k = 0; k < 4; k++) {
			const anes_mil_value *v = cpu_arg(fn, op, names[d][k]);
			if (!v)
				continue;
			/* constants, or folded at compile time (the output of a constexpr op) */
			const void *data = cpu_const_data(pc, fn, cpu_argid(op, names[d][k]));
			if (!data) {
				free(p);
				return cpu_fail(pc, op, -ENOTSUP, "%s must be known at compile time", names[d][k]);
			}
			cpu_to_f32(at, data, v->type.dtype, (size_t)v->type.count);
			p->w[d][k] = at;
			at += v->type.count;
		}
	p->lstm = !strcmp(op->def->name, "lstm");
	p->gru = gru;
	p->seq = bool_of(fn, op, "output_sequence", false);
	p->reset_after = bool_of(fn, op, "reset_after", false);
	p->dtype = x->dtype;
	p->dir = !strcmp(dir, "reverse") ? 1 : !strcmp(dir, "bidirectional") ? 2 : 0;
	p->ract = act_of(fn, op, "recurrent_activation", A_SIGMOID);
	p->cact = act_of(fn, op, "cell_activation", A_TANH);
	p->act = act_of(fn, op, "activation", A_TANH);
	p->S = x->shape[0];
	p->Bn = x->shape[1];
	p->I = x->shape[2];
	p->G = p->lstm ? 4 : gru ? 3 : 1;
	p->H = cpu_arg(fn, op, "weight_hh")->type.shape[1];
	p->D = p->dir == 2 ? 2 : 1;
	/* x in fp32, h and c per direction, gate sums (and gru's r * h), the full output sequence */
	st->scratch = cpu_align64(x->count * 4) + 2 * cpu_align64(p->Bn * p->D * p->H * 4) +
	              cpu_align64((p->G + 1) * p->H * 4) +
	              cpu_align64(p->S * p->Bn * p->D * p->H * 4);
	st->params = p;
	return 0;
}

/* One gru step of one batch entry: h (H) from x (I) and h, gates in the order
 * reset, output, update (coremltools' op reference).  bias [3 H] is the
 * recurrent bias, ib [3 H] (input_bias, iOS 18) the input bias.  reset_after
 * false: o = act(W_io x + b_io + b_ho + W_ho (r * h)) (Core ML's GRU layer);
 * true: o = act(W_io x + b_io + r * (W_ho h + b_ho)) (PyTorch's GRU).  g holds
 * 4 H floats of scratch. */
static void gru_step(const rec_params *p, const float *wi, const float *wh, const float *bias, const float *ib,
                     const float *x, float *h, float *g)
{
	uint64_t H = p->H, I = p->I;
	float *rh = g + 3 * H;

	for (uint64_t r = 0; r < 3 * H; r++) {    /* the input part of every gate */
		float s = ib ? ib[r] : 0.0f;
		for (uint64_t i = 0; i < I; i++)
			s += wi[r * I + i] * x[i];
		g[r] = s;
	}
	for (uint64_t k = 0; k < 2; k++)          /* reset (rows 0..H) and update (2H..3H) */
		for (uint64_t j = 0; j < H; j++) {
			uint64_t r = (k ? 2 * H : 0) + j;
			float s = g[r] + (bias ? bias[r] : 0.0f);
			for (uint64_t i = 0; i < H; i++)
				s += wh[r * H + i] * h[i];
			g[r] = act_f(p->ract, s);
		}
	for (uint64_t j = 0; j < H; j++)
		rh[j] = g[j] * h[j];
	for (uint64_t j = 0; j < H; j++) {        /* output gate, into g[H..2H) */
		uint64_t r = H + j;
		const float *src = p->reset_after ? h : rh;
		float s = bias ? bias[r] : 0.0f;
		for (uint64_t i = 0; i < H; i++)
			s += wh[r * H + i] * src[i];
		g[r] = act_f(p->act, g[r] + (p->reset_after ? g[j] * s : s));
	}
	for (uint64_t j = 0; j < H; j++) {
		float z = g[2 * H + j];
		h[j] = (1.0f - z) * g[H + j] + z * h[j];
	}
}

static int run_recurrent(const cpu_step *st, const cpu_exec *ex)
{
	const rec_params *p = st->params;
	const anes_mil_op *op = st->op;
	uint8_t *slot = ex->scratch;
	float *xf = (float *)(void *)slot;
	slot += cpu_align64(p->S * p->Bn * p->I * 4);
	float *h = (float *)(void *)slot;
	slot += cpu_align64(p->Bn * p->D * p->H * 4);
	float *c = (float *)(void *)slot;
	slot += cpu_align64(p->Bn * p->D * p->H * 4);
	float *g = (float *)(void *)slot;
	slot += cpu_align64((p->G + 1) * p->H * 4);
	float *seq = (float *)(void *)slot;
	uint64_t DH = p->D * p->H, H = p->H;

	cpu_to_f32(xf, cpu_ptr(ex, cpu_argid(op, "x")), p->dtype, (size_t)(p->S * p->Bn * p->I));
	cpu_to_f32(h, cpu_ptr(ex, cpu_argid(op, "initial_h")), p->dtype, (size_t)(p->Bn * DH));
	if (p->lstm)
		cpu_to_f32(c, cpu_ptr(ex, cpu_argid(op, "initial_c")), p->dtype, (size_t)(p->Bn * DH));
	for (uint64_t d = 0; d < p->D; d++) {
		bool rev = p->dir == 1 || d == 1;
		const float *wi = p->w[d][0], *wh = p->w[d][1], *bias = p->w[d][2], *peep = p->w[d][3];
		for (uint64_t t = 0; t < p->S; t++) {
			uint64_t tt = rev ? p->S - 1 - t : t;
			for (uint64_t b = 0; b < p->Bn; b++) {
				const float *xt = xf + (tt * p->Bn + b) * p->I;
				float *hb = h + b * DH + d * H, *cb = c + b * DH + d * H;
				if (p->gru) {
					gru_step(p, wi, wh, bias, peep, xt, hb, g);
					memcpy(seq + (tt * p->Bn + b) * DH + d * H, hb, H * 4);
					continue;
				}
				for (uint64_t r = 0; r < p->G * H; r++) {
					float s = bias ? bias[r] : 0.0f;
					for (uint64_t i = 0; i < p->I; i++)
						s += wi[r * p->I + i] * xt[i];
					for (uint64_t i = 0; i < H; i++)
						s += wh[r * H + i] * hb[i];
					g[r] = s;
				}
				if (p->lstm) {
					for (uint64_t j = 0; j < H; j++) {
						float cp = cb[j];
						float ig = act_f(p->ract, g[j] + (peep ? peep[j] * cp : 0.0f));
						float fg = act_f(p->ract, g[H + j] + (peep ? peep[H + j] * cp : 0.0f));
						float z = act_f(p->cact, g[3 * H + j]);
						float cn = fg * cp + ig * z;
						float og = act_f(p->ract, g[2 * H + j] + (peep ? peep[2 * H + j] * cn : 0.0f));
						cb[j] = cn;
						hb[j] = og * act_f(p->act, cn);
					}
				} else {
					for (uint64_t j = 0; j < H; j++)
						hb[j] = act_f(p->act, g[j]);
				}
				memcpy(seq + (tt * p->Bn + b) * DH + d * H, hb, H * 4);
			}
		}
	}
	/* outputs: the sequence (or its last step: forward's final h, backward's final h) */
	void *o0 = cpu_ptr(ex, op->outputs[0]);
	if (p->seq)
		cpu_from_f32(o0, p->dtype, seq, (size_t)(p->S * p->Bn * DH));
	else
		cpu_from_f32(o0, p->dtype, h, (size_t)(p->Bn * DH));
	cpu_from_f32(cpu_ptr(ex, op->outputs[1]), p->dtype, h, (size_t)(p->Bn * DH));
	if (p->lstm)
		cpu_from_f32(cpu_ptr(ex, op->outputs[2]), p->dtype, c, (size_t)(p->Bn * DH));
	return 0;
}


/* ---- reverse_sequence: per batch entry, reverse the first lengths[b] steps ---- */

typedef struct revseq_params {
	size_t es;
	int ldt;
	uint32_t rank, sa, ba;
	uint64_t shape[ANES_MAX_RANK], str[ANES_MAX_RANK], count;
} revseq_params;

static int plan_revseq(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	revseq_params *p = calloc(1, sizeof *p);

	(void)pc;
	if (!p)
		return -ENOMEM;
	p->es = cpu_esize(x->dtype);
	p->ldt = cpu_arg(fn, op, "lengths")->type.dtype;
	p->rank = x->rank;
	p->sa = axis_of(fn, op, "seq_axis", 0, x->rank);
	p->ba = axis_of(fn, op, "batch_axis", 0, x->rank);
	memcpy(p->shape, x->shape, sizeof p->shape);
	cpu_strides(x, p->str);
	p->count = x->count;
	st->scratch = cpu_align64(x->shape[p->ba] * 8);
	st->params = p;
	return 0;
}

static int run_revseq(const cpu_step *st, const cpu_exec *ex)
{
	const revseq_params *p = st->params;
	const void *lp = cpu_ptr(ex, cpu_argid(st->op, "lengths"));
	const uint8_t *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	uint8_t *o = cpu_ptr(ex, st->op->outputs[0]);
	uint64_t *len = (uint64_t *)(void *)ex->scratch, idx[ANES_MAX_RANK];
	uint64_t S = p->shape[p->sa];

	/* lengths: each read once, checked (0..S), kept */
	for (uint64_t b = 0; b < p->shape[p->ba]; b++) {
		int64_t l = (int64_t)anes_mil_load_f64(lp, p->ldt, b);
		__asm__ volatile("" : "+r"(l));
		if (l < 0 || l > (int64_t)S)
			return cpu_run_fail(ex, st->op, -EINVAL, "lengths[%llu] = %lld is out of range [0, %llu]",
			                    (unsigned long long)b, (long long)l, (unsigned long long)S);
		len[b] = (uint64_t)l;
	}
	for (uint64_t i = 0; i < p->count; i++) {
		uint64_t off = 0;
		unravel(i, p->shape, p->rank, idx);
		uint64_t l = len[idx[p->ba]];
		if (idx[p->sa] < l)
			idx[p->sa] = l - 1 - idx[p->sa];
		for (uint32_t d = 0; d < p->rank; d++)
			off += idx[d] * p->str[d];
		memmove(o + i * p->es, x + off * p->es, p->es);
	}
	return 0;
}

static int run_copy_x(const cpu_step *st, const cpu_exec *ex)
{
	uint32_t xid = cpu_argid(st->op, "x");
	memmove(cpu_ptr(ex, st->op->outputs[0]), cpu_ptr(ex, xid), (size_t)ex->fn->values[xid].type.bytes);
	return 0;
}

/* ---- table ---- */

static const cpu_opimpl impls[] = {
	{"reduce_prod", plan_reduce_x, run_reduce_x},
	{"reduce_l1_norm", plan_reduce_x, run_reduce_x},
	{"reduce_l2_norm", plan_reduce_x, run_reduce_x},
	{"reduce_log_sum", plan_reduce_x, run_reduce_x},
	{"reduce_log_sum_exp", plan_reduce_x, run_reduce_x},
	{"reduce_sum_square", plan_reduce_x, run_reduce_x},
	{"reduce_argmax", plan_line, run_line},
	{"reduce_argmin", plan_line, run_line},
	{"cumsum", plan_line, run_line},
	{"topk", plan_line, run_line},
	{"argsort", plan_line, run_line},
	{"instance_norm", plan_line, run_line},
	{"l2_norm", plan_line, run_line},
	{"local_response_norm", plan_line, run_line},
	{"stack", plan_stack, run_stack},
	{"reverse", plan_remap, run_remap},
	{"depth_to_space", plan_remap, run_remap},
	{"space_to_depth", plan_remap, run_remap},
	{"pixel_shuffle", plan_remap, run_remap},
	{"pixel_unshuffle", plan_remap, run_remap},
	{"sliding_windows", plan_remap, run_remap},
	{"band_part", plan_remap, run_remap},
	{"flatten2d", plan_remap, run_remap},
	{"gather_nd", plan_gather_x, run_gather_nd},
	{"gather_along_axis", plan_gather_x, run_gather_along},
	{"scatter", plan_scatter, run_scatter},
	{"scatter_nd", plan_scatter, run_scatter},
	{"scatter_along_axis", plan_scatter, run_scatter},
	{"slice_update", plan_slice_update, run_slice_update},
	{"fill", plan_gen, run_gen},
	{"fill_like", plan_gen, run_gen},
	{"range_1d", plan_gen, run_gen},
	{"shape", plan_gen, run_gen},
	{"one_hot", plan_gen, run_gen},
	{"max_pool", plan_pool, run_pool},
	{"avg_pool", plan_pool, run_pool},
	{"l2_pool", plan_pool, run_pool},
	{"conv_transpose", plan_conv_t, run_conv_t},
	{"upsample_nearest_neighbor", plan_resize, run_resize},
	{"upsample_bilinear", plan_resize, run_resize},
	{"resize_nearest_neighbor", plan_resize, run_resize},
	{"resize_bilinear", plan_resize, run_resize},
	{"crop", plan_crop, run_crop},
	{"einsum", plan_einsum, run_einsum},
	{"gru", plan_recurrent, run_recurrent},
	{"lstm", plan_recurrent, run_recurrent},
	{"rnn", plan_recurrent, run_recurrent},
	{"reverse_sequence", plan_revseq, run_revseq},
	{"reshape_like", NULL, run_copy_x},
};

const cpu_opimpl *cpu_ext_find(const char *name)
{
	for (size_t i = 0; i < sizeof impls / sizeof impls[0]; i++)
		if (impls[i].name && strcmp(impls[i].name, name) == 0)
			return &impls[i];
	return cpu_elem_find(name);
}
