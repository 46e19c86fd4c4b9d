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

/* [outer, dim, inner] around axis */
static void split_at(const anes_mil_type *x, uint32_t axis, uint64_t *outer, uint64_t *dim, uint64_t *inner)
{
	*outer = *inner = 1;
	for (uint32_t i = 0; i < axis; i++)
		*outer *= x->shape[i];
	for (uint32_t i = axis + 1; i < x->rank; i++)
		*inner *= x->shape[i];
	*dim = x->rank ? x->shape[axis] : 1;
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
	p->ocount = cpu_out_type(fn, op)->count;
	if (x->rank == 0) {
		p->rank = 1;
		p->shape[0] = 1;
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
		split_at(x, axis_of(fn, op, "axis", -1, x->rank), &p->outer, &p->dim, &p->inner);
		p->k = 1;
		break;
	case LN_CUMSUM:
		split_at(x, axis_of(fn, op, "axis", 0, x->rank), &p->outer, &p->dim, &p->inner);
		p->k = p->dim;
		p->exclusive = bool_of(fn, op, "exclusive", false);
		p->reverse = bool_of(fn, op, "reverse", false);
		break;
	case LN_TOPK:
	case LN_ARGSORT: {
		uint32_t a = axis_of(fn, op, "axis", -1, x->rank);
		split_at(x, a, &p->outer, &p->dim, &p->inner);
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
		split_at(x, 1, &p->outer, &p->dim, &p->inner);
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
};

const cpu_opimpl *cpu_ext_find(const char *name)
{
	for (size_t i = 0; i < sizeof impls / sizeof impls[0]; i++)
		if (impls[i].name && strcmp(impls[i].name, name) == 0)
			return &impls[i];
	return cpu_elem_find(name);
}
