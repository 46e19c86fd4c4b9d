/* SPDX-License-Identifier: MIT */
/*
 * Elementwise kernels with numpy broadcasting over up to three inputs:
 * comparisons and logical ops (bool outputs), select, floor_div and mod,
 * rounding, trigonometry, and the activations with scalar or per-channel
 * parameters.
 *
 * Float inputs are converted to fp32 (exactly), computed in fp32 and rounded
 * once on store; int32 inputs are computed in int64 and wrapped to int32;
 * bool inputs are read as "nonzero byte = true" (a client may put any byte
 * in a bool input) and bool outputs are written as 0/1.  Every offset comes
 * from the compile-time shapes, never from tensor contents.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "cpu_internal.h"

enum {
	/* float unary */
	E_SIN, E_COS, E_TAN, E_ASIN, E_ACOS, E_ATAN, E_SINH, E_COSH, E_ATANH, E_EXP2, E_FLOOR, E_CEIL, E_ROUND,
	E_SIGN, E_THRESHOLD, E_RELU6, E_SOFTPLUS, E_SOFTSIGN, E_ELU, E_LEAKY, E_TRELU, E_HSIG, E_STANH, E_CLAMPED,
	E_LINACT, E_PRELU, E_SOFTPLUS_P, E_BATCH_NORM,
	/* binary */
	E_EQ, E_NE, E_LT, E_LE, E_GT, E_GE, E_FLOORDIV, E_MOD, E_AND, E_OR, E_XOR, E_NOT,
	E_SELECT,
};

static const struct {
	const char *name;
	int kind;
	double a, b;            /* defaults of alpha, beta */
} kinds[] = {
	{"sin", E_SIN, 0, 0}, {"cos", E_COS, 0, 0}, {"tan", E_TAN, 0, 0}, {"asin", E_ASIN, 0, 0},
	{"acos", E_ACOS, 0, 0}, {"atan", E_ATAN, 0, 0}, {"sinh", E_SINH, 0, 0}, {"cosh", E_COSH, 0, 0},
	{"atanh", E_ATANH, 0, 0}, {"exp2", E_EXP2, 0, 0}, {"floor", E_FLOOR, 0, 0}, {"ceil", E_CEIL, 0, 0},
	{"round", E_ROUND, 0, 0}, {"sign", E_SIGN, 0, 0}, {"threshold", E_THRESHOLD, 0, 0},
	{"relu6", E_RELU6, 0, 0}, {"softplus", E_SOFTPLUS, 0, 0}, {"softsign", E_SOFTSIGN, 0, 0},
	{"elu", E_ELU, 1, 0}, {"leaky_relu", E_LEAKY, 0.01, 0}, {"thresholded_relu", E_TRELU, 1, 0},
	{"sigmoid_hard", E_HSIG, 0.2, 0.5}, {"scaled_tanh", E_STANH, 1, 1}, {"clamped_relu", E_CLAMPED, 0, 0},
	{"linear_activation", E_LINACT, 0, 0}, {"prelu", E_PRELU, 0, 0},
	{"softplus_parametric", E_SOFTPLUS_P, 0, 0}, {"batch_norm", E_BATCH_NORM, 0, 0},
	{"equal", E_EQ, 0, 0}, {"not_equal", E_NE, 0, 0}, {"less", E_LT, 0, 0}, {"less_equal", E_LE, 0, 0},
	{"greater", E_GT, 0, 0}, {"greater_equal", E_GE, 0, 0}, {"floor_div", E_FLOORDIV, 0, 0},
	{"mod", E_MOD, 0, 0}, {"logical_and", E_AND, 0, 0}, {"logical_or", E_OR, 0, 0},
	{"logical_xor", E_XOR, 0, 0}, {"logical_not", E_NOT, 0, 0}, {"select", E_SELECT, 0, 0},
};

#define EW_CHUNK 512u

typedef struct ew_params {
	int kind;
	bool int_domain;                       /* inputs int32/bool: compute in int64 */
	uint32_t nin;
	const char *arg[3];
	int idt[3], odt;
	size_t es;                             /* select: element size */
	uint32_t rank;                         /* >= 1 */
	uint64_t shape[ANES_MAX_RANK];
	uint64_t st[3][ANES_MAX_RANK];         /* input strides (elements), 0 where broadcast */
	uint64_t count;
	float a, b;
	uint64_t ch_inner, ch_dim;             /* per-channel parameters: index (i / inner) % dim */
	float *va, *vb;                        /* per-channel alpha, beta (in this block), or NULL */
} ew_params;

static int ew_kind(const char *name, double *a, double *b)
{
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
		if (strcmp(kinds[i].name, name) == 0) {
			*a = kinds[i].a;
			*b = kinds[i].b;
			return kinds[i].kind;
		}
	return -1;
}

static int plan_ew(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *o = cpu_out_type(fn, op);
	double a, b;
	int kind = ew_kind(op->def->name, &a, &b);
	ew_params *p;
	uint64_t nch = 0;

	if (kind < 0)
		return cpu_fail(pc, op, -ENOTSUP, "no elementwise kernel");
	if (kind == E_PRELU || kind == E_SOFTPLUS_P || kind == E_BATCH_NORM)
		nch = cpu_arg(fn, op, "x")->type.shape[1];
	p = calloc(1, sizeof *p + 2 * (size_t)nch * sizeof(float));
	if (!p)
		return -ENOMEM;
	p->kind = kind;
	p->odt = o->dtype;
	p->count = o->count;
	if (kind == E_SELECT) {
		p->nin = 3;
		p->arg[0] = "cond";
		p->arg[1] = "a";
		p->arg[2] = "b";
	} else if (kind >= E_EQ && kind != E_NOT) {
		p->nin = 2;
		p->arg[0] = "x";
		p->arg[1] = "y";
	} else {
		p->nin = 1;
		p->arg[0] = "x";
	}
	for (uint32_t k = 0; k < p->nin; k++)
		p->idt[k] = cpu_arg(fn, op, p->arg[k])->type.dtype;
	p->int_domain = p->idt[p->nin - 1] == ANES_DT_INT32 || p->idt[p->nin - 1] == ANES_DT_BOOL;
	if (kind == E_SELECT)
		p->es = cpu_esize(p->idt[1]);
	else if (!p->int_domain && cpu_need_float(pc, op, p->idt[0])) {
		free(p);
		return -ENOTSUP;
	}
	if (cpu_arg(fn, op, "alpha") && nch == 0)
		anes_mil_const_f64(cpu_arg(fn, op, "alpha"), &a);
	if (cpu_arg(fn, op, "beta") && nch == 0)
		anes_mil_const_f64(cpu_arg(fn, op, "beta"), &b);
	p->a = (float)a;
	p->b = (float)b;
	if (nch) {
		const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
		const anes_mil_value *av = cpu_arg(fn, op, "alpha"), *bv = cpu_arg(fn, op, "beta");
		p->va = (float *)(void *)(p + 1);
		p->vb = p->va + nch;
		p->ch_dim = nch;
		p->ch_inner = x->count / x->shape[0] / nch;
		if (kind == E_BATCH_NORM) {
			/* y = x * scale + shift: scale = gamma / sqrt(variance + epsilon), shift = beta - mean * scale */
			const anes_mil_value *mv = cpu_arg(fn, op, "mean"), *vv = cpu_arg(fn, op, "variance");
			const anes_mil_value *gv = cpu_arg(fn, op, "gamma");
			double eps = 1e-5;
			if (cpu_arg(fn, op, "epsilon"))
				anes_mil_const_f64(cpu_arg(fn, op, "epsilon"), &eps);
			for (uint64_t i = 0; i < nch; i++) {
				float g = gv ? (float)anes_mil_load_f64(gv->data, gv->type.dtype, i) : 1.0f;
				float be = bv ? (float)anes_mil_load_f64(bv->data, bv->type.dtype, i) : 0.0f;
				float m = (float)anes_mil_load_f64(mv->data, mv->type.dtype, i);
				float var = (float)anes_mil_load_f64(vv->data, vv->type.dtype, i);
				p->va[i] = g / sqrtf(var + (float)eps);
				p->vb[i] = be - m * p->va[i];
			}
		} else {
			for (uint64_t i = 0; i < nch; i++) {
				p->va[i] = (float)anes_mil_load_f64(av->data, av->type.dtype, av->type.count > 1 ? i : 0);
				p->vb[i] = bv ? (float)anes_mil_load_f64(bv->data, bv->type.dtype, bv->type.count > 1 ? i : 0) : 1.0f;
			}
		}
	}
	if (o->rank == 0) {
		p->rank = 1;
		p->shape[0] = 1;
	} else {
		p->rank = o->rank;
		memcpy(p->shape, o->shape, sizeof p->shape);
		for (uint32_t k = 0; k < p->nin; k++)
			cpu_input_strides(&cpu_arg(fn, op, p->arg[k])->type, o->rank, o->shape, p->st[k]);
	}
	st->params = p;
	return 0;
}

static float fsign(float x)
{
	return x > 0 ? 1.0f : x < 0 ? -1.0f : x;   /* sign(0) = 0, sign(NaN) = NaN */
}

static float softplusf(float x)
{
	/* log(1 + e^x) without overflow for large x */
	return x > 20.0f ? x : log1pf(expf(x));
}

static void ew_float(const ew_params *p, uint64_t o0, float *const *in, float *out, size_t n)
{
	const float *x = in[0], *y = in[1];
	float a = p->a, b = p->b;

	switch (p->kind) {
	case E_SIN: for (size_t i = 0; i < n; i++) out[i] = sinf(x[i]); break;
	case E_COS: for (size_t i = 0; i < n; i++) out[i] = cosf(x[i]); break;
	case E_TAN: for (size_t i = 0; i < n; i++) out[i] = tanf(x[i]); break;
	case E_ASIN: for (size_t i = 0; i < n; i++) out[i] = asinf(x[i]); break;
	case E_ACOS: for (size_t i = 0; i < n; i++) out[i] = acosf(x[i]); break;
	case E_ATAN: for (size_t i = 0; i < n; i++) out[i] = atanf(x[i]); break;
	case E_SINH: for (size_t i = 0; i < n; i++) out[i] = sinhf(x[i]); break;
	case E_COSH: for (size_t i = 0; i < n; i++) out[i] = coshf(x[i]); break;
	case E_ATANH: for (size_t i = 0; i < n; i++) out[i] = atanhf(x[i]); break;
	case E_EXP2: for (size_t i = 0; i < n; i++) out[i] = exp2f(x[i]); break;
	case E_FLOOR: for (size_t i = 0; i < n; i++) out[i] = floorf(x[i]); break;
	case E_CEIL: for (size_t i = 0; i < n; i++) out[i] = ceilf(x[i]); break;
	case E_ROUND: for (size_t i = 0; i < n; i++) out[i] = rintf(x[i]); break;   /* half to even */
	case E_SIGN: for (size_t i = 0; i < n; i++) out[i] = fsign(x[i]); break;
	case E_THRESHOLD: for (size_t i = 0; i < n; i++) out[i] = x[i] > a || isnan(x[i]) ? x[i] : a; break;
	case E_RELU6:
		for (size_t i = 0; i < n; i++)
			out[i] = x[i] < 0 ? 0.0f : x[i] > 6 ? 6.0f : x[i];
		break;
	case E_SOFTPLUS: for (size_t i = 0; i < n; i++) out[i] = softplusf(x[i]); break;
	case E_SOFTSIGN: for (size_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + fabsf(x[i])); break;
	case E_ELU: for (size_t i = 0; i < n; i++) out[i] = x[i] > 0 ? x[i] : a * expm1f(x[i]); break;
	case E_LEAKY: for (size_t i = 0; i < n; i++) out[i] = x[i] >= 0 ? x[i] : a * x[i]; break;
	case E_TRELU: for (size_t i = 0; i < n; i++) out[i] = x[i] >= a ? x[i] : 0.0f; break;
	case E_HSIG:
		for (size_t i = 0; i < n; i++) {
			float v = a * x[i] + b;
			out[i] = v < 0 ? 0.0f : v > 1 ? 1.0f : v;
		}
		break;
	case E_STANH: for (size_t i = 0; i < n; i++) out[i] = a * tanhf(b * x[i]); break;
	case E_CLAMPED:
		for (size_t i = 0; i < n; i++) {
			float v = x[i] >= 0 ? x[i] : a * x[i];
			out[i] = v > b ? b : v;
		}
		break;
	case E_LINACT: for (size_t i = 0; i < n; i++) out[i] = a * x[i] + b; break;
	case E_PRELU:
		for (size_t i = 0; i < n; i++) {
			float al = p->va[((o0 + i) / p->ch_inner) % p->ch_dim];
			out[i] = x[i] >= 0 ? x[i] : al * x[i];
		}
		break;
	case E_SOFTPLUS_P:
		for (size_t i = 0; i < n; i++) {
			uint64_t ch = ((o0 + i) / p->ch_inner) % p->ch_dim;
			out[i] = p->va[ch] * softplusf(p->vb[ch] * x[i]);
		}
		break;
	case E_EQ: for (size_t i = 0; i < n; i++) out[i] = x[i] == y[i]; break;
	case E_NE: for (size_t i = 0; i < n; i++) out[i] = x[i] != y[i]; break;
	case E_LT: for (size_t i = 0; i < n; i++) out[i] = x[i] < y[i]; break;
	case E_LE: for (size_t i = 0; i < n; i++) out[i] = x[i] <= y[i]; break;
	case E_GT: for (size_t i = 0; i < n; i++) out[i] = x[i] > y[i]; break;
	case E_GE: for (size_t i = 0; i < n; i++) out[i] = x[i] >= y[i]; break;
	case E_FLOORDIV: for (size_t i = 0; i < n; i++) out[i] = floorf(x[i] / y[i]); break;
	case E_MOD:
		/* Python's x % y: the sign of y (x - floor(x / y) * y, computed exactly by fmod) */
		for (size_t i = 0; i < n; i++) {
			float r = fmodf(x[i], y[i]);
			out[i] = (r != 0 && ((r < 0) != (y[i] < 0))) ? r + y[i] : r;
		}
		break;
	case E_BATCH_NORM:
		for (size_t i = 0; i < n; i++) {
			uint64_t ch = ((o0 + i) / p->ch_inner) % p->ch_dim;
			out[i] = x[i] * p->va[ch] + p->vb[ch];
		}
		break;
	default: break;
	}
}

/* int32 and bool inputs; int64 results (bools as 0/1) */
static void ew_int(const ew_params *p, int64_t *const *in, int64_t *out, size_t n)
{
	const int64_t *x = in[0], *y = in[1];

	switch (p->kind) {
	case E_EQ: for (size_t i = 0; i < n; i++) out[i] = x[i] == y[i]; break;
	case E_NE: for (size_t i = 0; i < n; i++) out[i] = x[i] != y[i]; break;
	case E_LT: for (size_t i = 0; i < n; i++) out[i] = x[i] < y[i]; break;
	case E_LE: for (size_t i = 0; i < n; i++) out[i] = x[i] <= y[i]; break;
	case E_GT: for (size_t i = 0; i < n; i++) out[i] = x[i] > y[i]; break;
	case E_GE: for (size_t i = 0; i < n; i++) out[i] = x[i] >= y[i]; break;
	case E_AND: for (size_t i = 0; i < n; i++) out[i] = x[i] && y[i]; break;
	case E_OR: for (size_t i = 0; i < n; i++) out[i] = x[i] || y[i]; break;
	case E_XOR: for (size_t i = 0; i < n; i++) out[i] = !x[i] != !y[i]; break;
	case E_NOT: for (size_t i = 0; i < n; i++) out[i] = !x[i]; break;
	case E_FLOORDIV:
		/* Python semantics (round toward -inf); x // 0 = 0 (defined here: no trap) */
		for (size_t i = 0; i < n; i++) {
			int64_t a = x[i], b = y[i];
			if (b == 0) {
				out[i] = 0;
				continue;
			}
			int64_t q = a / b;
			if ((a % b != 0) && ((a < 0) != (b < 0)))
				q--;
			out[i] = q;
		}
		break;
	case E_MOD:
		/* the sign of y; x % 0 = 0 */
		for (size_t i = 0; i < n; i++) {
			int64_t a = x[i], b = y[i];
			if (b == 0) {
				out[i] = 0;
				continue;
			}
			int64_t r = a % b;
			out[i] = (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
		}
		break;
	default: break;
	}
}

typedef struct ew_job {
	const ew_params *p;
	const void *in[3];
	void *out;
} ew_job;

static void walker_init(const ew_params *p, uint64_t o, uint64_t *idx, uint64_t *off)
{
	for (uint32_t k = 0; k < p->nin; k++)
		off[k] = 0;
	for (uint32_t d = p->rank; d-- > 0;) {
		idx[d] = o % p->shape[d];
		o /= p->shape[d];
		for (uint32_t k = 0; k < p->nin; k++)
			off[k] += idx[d] * p->st[k][d];
	}
}

static void walker_next(const ew_params *p, uint64_t *idx, uint64_t *off)
{
	for (uint32_t d = p->rank; d-- > 0;) {
		for (uint32_t k = 0; k < p->nin; k++)
			off[k] += p->st[k][d];
		if (++idx[d] < p->shape[d])
			return;
		for (uint32_t k = 0; k < p->nin; k++)
			off[k] -= p->st[k][d] * p->shape[d];
		idx[d] = 0;
	}
}

static int64_t load_i(const void *src, int dt, uint64_t i)
{
	switch (dt) {
	case ANES_DT_INT32: return ((const int32_t *)src)[i];
	case ANES_DT_BOOL: return ((const uint8_t *)src)[i] != 0;
	default: return (int64_t)anes_mil_load_f64(src, dt, i);
	}
}

static float load_f(const void *src, int dt, uint64_t i)
{
	switch (dt) {
	case ANES_DT_FP16: return anes_f16_to_f32(((const uint16_t *)src)[i]);
	case ANES_DT_FP32: return ((const float *)src)[i];
	default: return (float)anes_mil_load_f64(src, dt, i);
	}
}

static void ew_task(void *ctx, uint64_t cb, uint64_t ce)
{
	const ew_job *j = ctx;
	const ew_params *p = j->p;
	float fb[2][EW_CHUNK], fo[EW_CHUNK];
	int64_t ib[2][EW_CHUNK], io[EW_CHUNK];
	float *fin[2] = {fb[0], fb[1]};
	int64_t *iin[2] = {ib[0], ib[1]};
	uint64_t idx[ANES_MAX_RANK], off[3];

	for (uint64_t c = cb; c < ce; c++) {
		uint64_t o0 = c * EW_CHUNK;
		size_t n = (size_t)(p->count - o0 < EW_CHUNK ? p->count - o0 : EW_CHUNK);
		walker_init(p, o0, idx, off);
		if (p->kind == E_SELECT) {
			const uint8_t *cond = j->in[0];
			const uint8_t *a = j->in[1], *b = j->in[2];
			uint8_t *out = (uint8_t *)j->out + o0 * p->es;
			for (size_t i = 0; i < n; i++) {
				const uint8_t *src = cond[off[0]] ? a + off[1] * p->es : b + off[2] * p->es;
				memmove(out + i * p->es, src, p->es);
				walker_next(p, idx, off);
			}
			continue;
		}
		for (size_t i = 0; i < n; i++) {
			for (uint32_t k = 0; k < p->nin; k++) {
				if (p->int_domain)
					ib[k][i] = load_i(j->in[k], p->idt[k], off[k]);
				else
					fb[k][i] = load_f(j->in[k], p->idt[k], off[k]);
			}
			walker_next(p, idx, off);
		}
		if (p->int_domain)
			ew_int(p, iin, io, n);
		else
			ew_float(p, o0, fin, fo, n);
		switch (p->odt) {
		case ANES_DT_FP16: anes_f32_to_f16_n((uint16_t *)j->out + o0, fo, n); break;
		case ANES_DT_FP32: memmove((float *)j->out + o0, fo, n * 4); break;
		case ANES_DT_INT32:
			for (size_t i = 0; i < n; i++)
				((int32_t *)j->out)[o0 + i] = (int32_t)(uint32_t)(uint64_t)io[i];
			break;
		case ANES_DT_BOOL:
			if (p->int_domain)
				for (size_t i = 0; i < n; i++)
					((uint8_t *)j->out)[o0 + i] = io[i] != 0;
			else
				for (size_t i = 0; i < n; i++)
					((uint8_t *)j->out)[o0 + i] = fo[i] != 0;
			break;
		default: break;
		}
	}
}

static int run_ew(const cpu_step *st, const cpu_exec *ex)
{
	const ew_params *p = st->params;
	ew_job j = {p, {NULL, NULL, NULL}, cpu_ptr(ex, st->op->outputs[0])};

	for (uint32_t k = 0; k < p->nin; k++)
		j.in[k] = cpu_ptr(ex, cpu_argid(st->op, p->arg[k]));
	cpu_parallel(ex->cfg->pool, (p->count + EW_CHUNK - 1) / EW_CHUNK, 4, ew_task, &j);
	return 0;
}

/* ---- table ---- */

static const cpu_opimpl impls[] = {
	{"select", plan_ew, run_ew},
	{"equal", plan_ew, run_ew},
	{"not_equal", plan_ew, run_ew},
	{"less", plan_ew, run_ew},
	{"less_equal", plan_ew, run_ew},
	{"greater", plan_ew, run_ew},
	{"greater_equal", plan_ew, run_ew},
	{"logical_and", plan_ew, run_ew},
	{"logical_or", plan_ew, run_ew},
	{"logical_xor", plan_ew, run_ew},
	{"logical_not", plan_ew, run_ew},
	{"floor_div", plan_ew, run_ew},
	{"mod", plan_ew, run_ew},
	{"floor", plan_ew, run_ew},
	{"ceil", plan_ew, run_ew},
	{"round", plan_ew, run_ew},
	{"sign", plan_ew, run_ew},
	{"sin", plan_ew, run_ew},
	{"cos", plan_ew, run_ew},
	{"tan", plan_ew, run_ew},
	{"asin", plan_ew, run_ew},
	{"acos", plan_ew, run_ew},
	{"atan", plan_ew, run_ew},
	{"sinh", plan_ew, run_ew},
	{"cosh", plan_ew, run_ew},
	{"atanh", plan_ew, run_ew},
	{"exp2", plan_ew, run_ew},
	{"threshold", plan_ew, run_ew},
	{"relu6", plan_ew, run_ew},
	{"softplus", plan_ew, run_ew},
	{"softsign", plan_ew, run_ew},
	{"elu", plan_ew, run_ew},
	{"leaky_relu", plan_ew, run_ew},
	{"thresholded_relu", plan_ew, run_ew},
	{"sigmoid_hard", plan_ew, run_ew},
	{"scaled_tanh", plan_ew, run_ew},
	{"clamped_relu", plan_ew, run_ew},
	{"linear_activation", plan_ew, run_ew},
	{"prelu", plan_ew, run_ew},
	{"softplus_parametric", plan_ew, run_ew},
	{"batch_norm", plan_ew, run_ew},
};

const cpu_opimpl *cpu_elem_find(const char *name)
{
	for (size_t i = 0; i < sizeof impls / sizeof impls[0]; i++)
		if (strcmp(impls[i].name, name) == 0)
			return &impls[i];
	return NULL;
}
