/* SPDX-License-Identifier: MIT */
/*
 * CPU kernels built on GEMM and row-wise math: matmul, linear, conv,
 * scaled_dot_product_attention, softmax, layer_norm and the reductions.
 * Compute in fp32; fp16 outputs are rounded once at the end of each op.
 * Constant (or folded) weights of matmul, linear and conv stay where they
 * are, in their dtype: fp16 weights are converted to fp32 one GEMM tile at a
 * time (cpu_gemm_w), so a program's resident size is about its weights'
 * size, not twice or three times it.  Biases are converted once.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "cpu_internal.h"

/* an fp32 copy of a compile-time operand in the params block, or NULL if the
 * value is only known at run time */
static const void *plan_const(const cpu_plan_ctx *pc, const anes_mil_function *fn, uint32_t vid)
{
	return vid == UINT32_MAX ? NULL : cpu_const_data(pc, fn, vid);
}

/* bytes of an fp32 copy kept in a params block */
static size_t copy_bytes(const void *data, const anes_mil_type *t)
{
	return data ? (size_t)cpu_align64(t->count * 4) : 0;
}

/* A constant weight used in place (fp16 or fp32): bytes of the aligned copy
 * it needs in the params block (0 when its data is aligned to its element
 * size, the usual case), and the pointer the kernel reads. */
static size_t keep_bytes(const void *data, const anes_mil_type *t)
{
	return data && ((uintptr_t)data % cpu_esize(t->dtype)) ? (size_t)cpu_align64(t->bytes) : 0;
}

static const void *keep(const void *data, const anes_mil_type *t, uint8_t **at)
{
	size_t nb = keep_bytes(data, t);
	if (!nb)
		return data;
	memcpy(*at, data, (size_t)t->bytes);
	*at += nb;
	return *at - nb;
}

/* ---- matmul ---- */

typedef struct matmul_params {
	uint64_t m, n, k;
	bool tx, ty;         /* as stored: x is [k, m] when tx, y is [n, k] when ty */
	int dtype;
	uint64_t batches;
	uint64_t *xoff, *yoff;  /* element offsets of each batch's matrices */
	const float *cx;        /* compile-time x, fp32 (in this block), or NULL */
	const void *cy;         /* compile-time y in place (dtype), or NULL */
	uint64_t tmp_floats;
} matmul_params;

int cpu_plan_matmul(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	uint32_t xid = cpu_argid(op, "x"), yid = cpu_argid(op, "y");
	const anes_mil_type *x = &fn->values[xid].type, *y = &fn->values[yid].type, *o = cpu_out_type(fn, op);
	bool tx = false, ty = false;
	uint64_t m, n, k, batches = 1;
	uint32_t br;
	uint64_t bshape[ANES_MAX_RANK];
	anes_mil_type bx, by;
	matmul_params *p;

	if (cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	if (cpu_arg(fn, op, "transpose_x"))
		anes_mil_const_bool(cpu_arg(fn, op, "transpose_x"), &tx);
	if (cpu_arg(fn, op, "transpose_y"))
		anes_mil_const_bool(cpu_arg(fn, op, "transpose_y"), &ty);
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
	const void *dx = plan_const(pc, fn, xid), *dy = plan_const(pc, fn, yid);
	size_t head = (size_t)cpu_align64(sizeof *p + 2 * batches * sizeof(uint64_t));
	/* batches <= output elements <= tensor cap, so this is bounded */
	p = calloc(1, head + copy_bytes(dx, x) + keep_bytes(dy, y));
	if (!p)
		return -ENOMEM;
	p->m = m;
	p->n = n;
	p->k = k;
	p->tx = tx;
	p->ty = ty;
	p->dtype = x->dtype;
	p->batches = batches;
	p->xoff = (uint64_t *)(void *)(p + 1);
	p->yoff = p->xoff + batches;
	uint8_t *at = (uint8_t *)p + head;
	if (dx) {
		cpu_to_f32((float *)(void *)at, dx, x->dtype, (size_t)x->count);
		p->cx = (const float *)(void *)at;
		at += copy_bytes(dx, x);
	}
	if (dy)
		p->cy = keep(dy, y, &at);
	{
		uint64_t sx[ANES_MAX_RANK] = {0}, sy[ANES_MAX_RANK] = {0}, idx[ANES_MAX_RANK] = {0};
		uint64_t xo = 0, yo = 0;
		if (br) {
			cpu_input_strides(&bx, br, bshape, sx);
			cpu_input_strides(&by, br, bshape, sy);
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
	p->tmp_floats = cpu_gemm_w_tmp_floats(pc->cfg, m, n, k);
	st->scratch = (dx ? 0 : cpu_f32_scratch(x)) + (dy ? 0 : cpu_f32_scratch(y)) + cpu_f32_scratch(o) +
	              cpu_align64(p->tmp_floats * 4);
	st->params = p;
	return 0;
}

int cpu_run_matmul(const cpu_step *st, const cpu_exec *ex)
{
	const matmul_params *p = st->params;
	uint32_t xid = cpu_argid(st->op, "x"), yid = cpu_argid(st->op, "y"), oid = st->op->outputs[0];
	uint8_t *slot = ex->scratch;
	const float *fx = p->cx ? p->cx : cpu_load_f32(ex, xid, &slot);
	const float *fy = p->cy ? NULL : cpu_load_f32(ex, yid, &slot);
	int ydt = p->cy ? p->dtype : ANES_DT_FP32;
	size_t yes = p->cy ? cpu_esize(p->dtype) : 4;
	const uint8_t *by = p->cy ? p->cy : (const void *)fy;
	void *out = cpu_ptr(ex, oid);
	uint64_t ocount = ex->fn->values[oid].type.count;
	float *fo;

	if (p->dtype == ANES_DT_FP32) {
		fo = out;
	} else {
		fo = (float *)(void *)slot;
		slot += cpu_align64(ocount * 4);
	}
	for (uint64_t b = 0; b < p->batches; b++)
		cpu_gemm_w(ex->cfg, p->tx, p->ty, p->m, p->n, p->k, fx + p->xoff[b], ANES_DT_FP32, p->tx ? p->m : p->k,
		           by + p->yoff[b] * yes, ydt, p->ty ? p->k : p->n, fo + b * p->m * p->n, p->n, false,
		           (float *)(void *)slot);
	cpu_from_f32(out, p->dtype, fo, (size_t)ocount);
	return 0;
}

/* ---- linear: y = x W^T + b ---- */

typedef struct linear_params {
	uint64_t m, din, dout;
	int dtype;
	const void *cw;         /* compile-time weight in place (dtype), or NULL */
	const float *cb;        /* compile-time bias (fp32, in this block) or NULL */
	bool has_bias;
	uint64_t tmp_floats;
} linear_params;

int cpu_plan_linear(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	uint32_t xid = cpu_argid(op, "x"), wid = cpu_argid(op, "weight"), bid = cpu_optid(op, "bias");
	const anes_mil_type *x = &fn->values[xid].type, *w = &fn->values[wid].type, *o = cpu_out_type(fn, op);
	const anes_mil_type *bt = bid != UINT32_MAX ? &fn->values[bid].type : NULL;
	linear_params *p;

	if (cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	const void *dw = plan_const(pc, fn, wid), *db = plan_const(pc, fn, bid);
	size_t head = (size_t)cpu_align64(sizeof *p);
	p = calloc(1, head + keep_bytes(dw, w) + (bt ? copy_bytes(db, bt) : 0));
	if (!p)
		return -ENOMEM;
	p->dtype = x->dtype;
	p->din = w->shape[1];
	p->dout = w->shape[0];
	p->m = x->count / p->din;
	p->has_bias = bt != NULL;
	uint8_t *at = (uint8_t *)p + head;
	if (dw)
		p->cw = keep(dw, w, &at);
	if (bt && db) {
		cpu_to_f32((float *)(void *)at, db, bt->dtype, (size_t)bt->count);
		p->cb = (const float *)(void *)at;
	}
	p->tmp_floats = cpu_gemm_w_tmp_floats(pc->cfg, p->m, p->dout, p->din);
	st->scratch = cpu_f32_scratch(x) + (dw ? 0 : cpu_f32_scratch(w)) + (bt && !db ? cpu_f32_scratch(bt) : 0) +
	              cpu_f32_scratch(o) + cpu_align64(p->tmp_floats * 4);
	st->params = p;
	return 0;
}

static void add_bias_rows(float *o, const float *b, uint64_t rows, uint64_t cols)
{
	for (uint64_t i = 0; i < rows; i++)
		for (uint64_t j = 0; j < cols; j++)
			o[i * cols + j] += b[j];
}

int cpu_run_linear(const cpu_step *st, const cpu_exec *ex)
{
	const linear_params *p = st->params;
	const anes_mil_op *op = st->op;
	uint8_t *slot = ex->scratch;
	const float *fx = cpu_load_f32(ex, cpu_argid(op, "x"), &slot);
	const void *fw = p->cw ? p->cw : cpu_load_f32(ex, cpu_argid(op, "weight"), &slot);
	const float *fb = p->cb ? p->cb : p->has_bias ? cpu_load_f32(ex, cpu_argid(op, "bias"), &slot) : NULL;
	void *out = cpu_ptr(ex, op->outputs[0]);
	float *fo;

	if (p->dtype == ANES_DT_FP32) {
		fo = out;
	} else {
		fo = (float *)(void *)slot;
		slot += cpu_align64(p->m * p->dout * 4);
	}
	cpu_gemm_w(ex->cfg, false, true, p->m, p->dout, p->din, fx, ANES_DT_FP32, p->din, fw,
	           p->cw ? p->dtype : ANES_DT_FP32, p->din, fo, p->dout, false, (float *)(void *)slot);
	if (fb)
		add_bias_rows(fo, fb, p->m, p->dout);
	cpu_from_f32(out, p->dtype, fo, (size_t)(p->m * p->dout));
	return 0;
}

/* ---- conv (1-D and 2-D; GEMM per batch and group, im2col unless 1x1) ---- */

typedef struct conv_params {
	int dtype;
	uint64_t n, cin, h, w;          /* x (1-D: h = 1) */
	uint64_t cout, kh, kw;          /* weight */
	uint64_t oh, ow;
	uint64_t sh, sw, dh, dw;
	int64_t pt, pl;                 /* padding before (top, left) */
	uint64_t groups, cin_g, cout_g;
	bool pointwise;                 /* 1x1, stride 1, no padding: plain GEMM on x */
	uint64_t tile;                  /* output positions per im2col tile */
	bool has_bias;
	const void *cw;                 /* compile-time weight in place (dtype), or NULL */
	const float *cb;                /* compile-time bias, fp32 (in this block) */
	uint64_t tmp_floats;
} conv_params;

#define CONV_IM2COL_BYTES ((uint64_t)16 << 20)

int cpu_plan_conv(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	uint32_t xid = cpu_argid(op, "x"), wid = cpu_argid(op, "weight"), bid = cpu_optid(op, "bias");
	const anes_mil_type *x = &fn->values[xid].type, *w = &fn->values[wid].type, *o = cpu_out_type(fn, op);
	const anes_mil_type *bt = bid != UINT32_MAX ? &fn->values[bid].type : NULL;
	int64_t strides[2] = {1, 1}, dil[2] = {1, 1}, pad[4] = {0, 0, 0, 0}, groups = 1;
	uint32_t ns = x->rank - 2, n;
	const char *pt = "valid";
	conv_params *p;

	if (cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	if (cpu_arg(fn, op, "strides"))
		anes_mil_const_ints(cpu_arg(fn, op, "strides"), strides, 2, &n);
	if (cpu_arg(fn, op, "dilations"))
		anes_mil_const_ints(cpu_arg(fn, op, "dilations"), dil, 2, &n);
	if (cpu_arg(fn, op, "groups"))
		anes_mil_const_ints(cpu_arg(fn, op, "groups"), &groups, 1, &n);
	if (cpu_arg(fn, op, "pad_type"))
		pt = anes_mil_const_string(cpu_arg(fn, op, "pad_type"));
	if (strcmp(pt, "custom") == 0 && cpu_arg(fn, op, "pad"))
		anes_mil_const_ints(cpu_arg(fn, op, "pad"), pad, 4, &n);
	const void *dw = plan_const(pc, fn, wid), *db = plan_const(pc, fn, bid);
	size_t head = (size_t)cpu_align64(sizeof *p);
	p = calloc(1, head + keep_bytes(dw, w) + (bt ? copy_bytes(db, bt) : 0));
	if (!p)
		return -ENOMEM;
	p->dtype = x->dtype;
	p->n = x->shape[0];
	p->cin = x->shape[1];
	p->cout = w->shape[0];
	if (ns == 1) {
		/* 1-D as 2-D with height 1 */
		p->h = 1;
		p->w = x->shape[2];
		p->kh = 1;
		p->kw = w->shape[2];
		p->oh = 1;
		p->ow = o->shape[2];
		p->sh = 1;
		p->sw = (uint64_t)strides[0];
		p->dh = 1;
		p->dw = (uint64_t)dil[0];
		pad[2] = pad[0];
		pad[3] = pad[1];
		pad[0] = pad[1] = 0;
	} else {
		p->h = x->shape[2];
		p->w = x->shape[3];
		p->kh = w->shape[2];
		p->kw = w->shape[3];
		p->oh = o->shape[2];
		p->ow = o->shape[3];
		p->sh = (uint64_t)strides[0];
		p->sw = (uint64_t)strides[1];
		p->dh = (uint64_t)dil[0];
		p->dw = (uint64_t)dil[1];
	}
	if (strcmp(pt, "same") == 0 || strcmp(pt, "same_lower") == 0) {
		/* total padding so that out = ceil(in / stride); odd padding goes at
		 * the end for "same", at the beginning for "same_lower" */
		int64_t tot_h = (int64_t)((p->oh - 1) * p->sh + (p->kh - 1) * p->dh + 1) - (int64_t)p->h;
		int64_t tot_w = (int64_t)((p->ow - 1) * p->sw + (p->kw - 1) * p->dw + 1) - (int64_t)p->w;
		if (tot_h < 0)
			tot_h = 0;
		if (tot_w < 0)
			tot_w = 0;
		bool lower = strcmp(pt, "same_lower") == 0;
		p->pt = lower ? tot_h - tot_h / 2 : tot_h / 2;
		p->pl = lower ? tot_w - tot_w / 2 : tot_w / 2;
	} else {
		p->pt = pad[0];
		p->pl = pad[2];
	}
	p->groups = (uint64_t)groups;
	p->cin_g = p->cin / p->groups;
	p->cout_g = p->cout / p->groups;
	p->pointwise = p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->pt == 0 && p->pl == 0 &&
	               p->oh == p->h && p->ow == p->w;
	p->has_bias = bt != NULL;
	uint64_t P = p->oh * p->ow, rows = p->cin_g * p->kh * p->kw;
	p->tile = P;
	if (!p->pointwise && rows * P * 4 > CONV_IM2COL_BYTES) {
		p->tile = CONV_IM2COL_BYTES / 4 / rows;
		if (p->tile < 16)
			p->tile = 16;
		if (p->tile > P)
			p->tile = P;
	}
	uint8_t *at = (uint8_t *)p + head;
	if (dw)
		p->cw = keep(dw, w, &at);
	if (bt && db) {
		cpu_to_f32((float *)(void *)at, db, bt->dtype, (size_t)bt->count);
		p->cb = (const float *)(void *)at;
	}
	p->tmp_floats = cpu_gemm_w_tmp_floats(pc->cfg, p->cout_g, p->tile, rows);
	st->scratch = cpu_f32_scratch(x) + (dw ? 0 : cpu_f32_scratch(w)) + (bt && !db ? cpu_f32_scratch(bt) : 0) +
	              cpu_f32_scratch(o) + (p->pointwise ? 0 : cpu_align64(rows * p->tile * 4)) +
	              cpu_align64(p->tmp_floats * 4) + (p->tile < P ? cpu_align64(p->cout_g * p->tile * 4) : 0);
	st->params = p;
	return 0;
}

/* col[r][t] for output positions [p0, p0 + np) of one image/group */
static void im2col(const conv_params *p, const float *x, float *col, uint64_t p0, uint64_t np)
{
	for (uint64_t c = 0; c < p->cin_g; c++)
		for (uint64_t i = 0; i < p->kh; i++)
			for (uint64_t j = 0; j < p->kw; j++) {
				float *dst = col + ((c * p->kh + i) * p->kw + j) * np;
				const float *xc = x + c * p->h * p->w;
				for (uint64_t t = 0; t < np; t++) {
					uint64_t q = p0 + t, oy = q / p->ow, ox = q % p->ow;
					int64_t iy = (int64_t)(oy * p->sh + i * p->dh) - p->pt;
					int64_t ix = (int64_t)(ox * p->sw + j * p->dw) - p->pl;
					dst[t] = (iy < 0 || ix < 0 || iy >= (int64_t)p->h || ix >= (int64_t)p->w)
					             ? 0.0f : xc[(uint64_t)iy * p->w + (uint64_t)ix];
				}
			}
}

int cpu_run_conv(const cpu_step *st, const cpu_exec *ex)
{
	const conv_params *p = st->params;
	const anes_mil_op *op = st->op;
	uint8_t *slot = ex->scratch;
	const float *fx = cpu_load_f32(ex, cpu_argid(op, "x"), &slot);
	const void *fw = p->cw ? p->cw : cpu_load_f32(ex, cpu_argid(op, "weight"), &slot);
	int wdt = p->cw ? p->dtype : ANES_DT_FP32;
	size_t wes = p->cw ? cpu_esize(p->dtype) : 4;
	const float *fb = p->cb ? p->cb : p->has_bias ? cpu_load_f32(ex, cpu_argid(op, "bias"), &slot) : NULL;
	void *out = cpu_ptr(ex, op->outputs[0]);
	uint64_t P = p->oh * p->ow, HW = p->h * p->w, rows = p->cin_g * p->kh * p->kw;
	uint64_t ocount = p->n * p->cout * P;
	float *fo, *col = NULL, *tbuf = NULL, *tmp;

	if (p->dtype == ANES_DT_FP32) {
		fo = out;
	} else {
		fo = (float *)(void *)slot;
		slot += cpu_align64(ocount * 4);
	}
	if (!p->pointwise) {
		col = (float *)(void *)slot;
		slot += cpu_align64(rows * p->tile * 4);
	}
	tmp = (float *)(void *)slot;
	slot += cpu_align64(p->tmp_floats * 4);
	if (p->tile < P)
		tbuf = (float *)(void *)slot;
	for (uint64_t b = 0; b < p->n; b++) {
		for (uint64_t g = 0; g < p->groups; g++) {
			const float *xg = fx + (b * p->cin + g * p->cin_g) * HW;
			const void *wg = (const uint8_t *)fw + g * p->cout_g * rows * wes;
			float *og = fo + (b * p->cout + g * p->cout_g) * P;
			if (p->pointwise) {
				cpu_gemm_w(ex->cfg, false, false, p->cout_g, P, p->cin_g, wg, wdt, rows, xg, ANES_DT_FP32, HW, og, P,
				           false, tmp);
				continue;
			}
			for (uint64_t p0 = 0; p0 < P; p0 += p->tile) {
				uint64_t np = P - p0 < p->tile ? P - p0 : p->tile;
				im2col(p, xg, col, p0, np);
				if (np == P) {
					cpu_gemm_w(ex->cfg, false, false, p->cout_g, np, rows, wg, wdt, rows, col, ANES_DT_FP32, np, og, P,
					           false, tmp);
				} else {
					/* gemm into a dense tile, then into the strided output */
					cpu_gemm_w(ex->cfg, false, false, p->cout_g, np, rows, wg, wdt, rows, col, ANES_DT_FP32, np, tbuf,
					           np, false, tmp);
					for (uint64_t co = 0; co < p->cout_g; co++)
						memcpy(og + co * P + p0, tbuf + co * np, (size_t)np * 4);
				}
			}
		}
	}
	if (fb)
		for (uint64_t b = 0; b < p->n; b++)
			for (uint64_t co = 0; co < p->cout; co++) {
				float *r = fo + (b * p->cout + co) * P, v = fb[co];
				for (uint64_t t = 0; t < P; t++)
					r[t] += v;
			}
	cpu_from_f32(out, p->dtype, fo, (size_t)ocount);
	return 0;
}

/* ---- softmax / layer_norm: lines of [outer, dim, inner] ---- */

enum { JB = 64 };   /* inner positions per work item */

typedef struct rows_params {
	int dtype;
	uint64_t outer, dim, inner, count;
	float eps;
	bool has_gamma, has_beta;
	const float *cg, *cb;           /* compile-time gamma / beta (fp32, in this block) */
} rows_params;

typedef struct rows_job {
	const rows_params *p;
	float *v;                       /* fp32 data, in place */
	const float *gamma, *beta;
} rows_job;

static uint64_t rows_items(const rows_params *p)
{
	return p->outer * ((p->inner + JB - 1) / JB);
}

static void softmax_task(void *ctx, uint64_t b, uint64_t e)
{
	const rows_job *j = ctx;
	const rows_params *p = j->p;
	uint64_t nj = (p->inner + JB - 1) / JB;
	float mx[JB], sum[JB];

	for (uint64_t it = b; it < e; it++) {
		uint64_t o = it / nj, j0 = (it % nj) * JB, jn = p->inner - j0 < JB ? p->inner - j0 : JB;
		float *base = j->v + o * p->dim * p->inner + j0;
		for (uint64_t t = 0; t < jn; t++) {
			mx[t] = -INFINITY;
			sum[t] = 0;
		}
		for (uint64_t d = 0; d < p->dim; d++) {
			const float *r = base + d * p->inner;
			for (uint64_t t = 0; t < jn; t++)
				mx[t] = r[t] > mx[t] ? r[t] : mx[t];
		}
		for (uint64_t t = 0; t < jn; t++)
			if (isinf(mx[t]) && mx[t] < 0)
				mx[t] = 0;    /* a row of -inf: exp(-inf - 0) = 0, sum 0, result NaN (as IEEE says) */
		for (uint64_t d = 0; d < p->dim; d++) {
			float *r = base + d * p->inner;
			for (uint64_t t = 0; t < jn; t++) {
				r[t] = expf(r[t] - mx[t]);
				sum[t] += r[t];
			}
		}
		for (uint64_t t = 0; t < jn; t++)
			sum[t] = 1.0f / sum[t];
		for (uint64_t d = 0; d < p->dim; d++) {
			float *r = base + d * p->inner;
			for (uint64_t t = 0; t < jn; t++)
				r[t] *= sum[t];
		}
	}
}

static void layer_norm_task(void *ctx, uint64_t b, uint64_t e)
{
	const rows_job *j = ctx;
	const rows_params *p = j->p;
	uint64_t nj = (p->inner + JB - 1) / JB;
	float mean[JB], rstd[JB];

	for (uint64_t it = b; it < e; it++) {
		uint64_t o = it / nj, j0 = (it % nj) * JB, jn = p->inner - j0 < JB ? p->inner - j0 : JB;
		float *base = j->v + o * p->dim * p->inner + j0;
		for (uint64_t t = 0; t < jn; t++)
			mean[t] = rstd[t] = 0;
		for (uint64_t d = 0; d < p->dim; d++) {
			const float *r = base + d * p->inner;
			for (uint64_t t = 0; t < jn; t++)
				mean[t] += r[t];
		}
		for (uint64_t t = 0; t < jn; t++)
			mean[t] /= (float)p->dim;
		for (uint64_t d = 0; d < p->dim; d++) {
			const float *r = base + d * p->inner;
			for (uint64_t t = 0; t < jn; t++) {
				float c = r[t] - mean[t];
				rstd[t] += c * c;
			}
		}
		for (uint64_t t = 0; t < jn; t++)
			rstd[t] = 1.0f / sqrtf(rstd[t] / (float)p->dim + p->eps);
		for (uint64_t d = 0; d < p->dim; d++) {
			float *r = base + d * p->inner;
			float g = j->gamma ? j->gamma[d] : 1.0f, bb = j->beta ? j->beta[d] : 0.0f;
			for (uint64_t t = 0; t < jn; t++)
				r[t] = (r[t] - mean[t]) * rstd[t] * g + bb;
		}
	}
}

int cpu_plan_softmax(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	int64_t axis_v = -1;
	uint32_t n, axis;
	rows_params *p;

	if (cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	if (cpu_arg(fn, op, "axis"))
		anes_mil_const_ints(cpu_arg(fn, op, "axis"), &axis_v, 1, &n);
	axis = (uint32_t)(axis_v < 0 ? axis_v + x->rank : axis_v);
	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	p->dtype = x->dtype;
	cpu_split_at(x, axis, &p->outer, &p->dim, &p->inner);
	p->count = x->count;
	st->scratch = cpu_f32_scratch(x);
	st->params = p;
	return 0;
}

int cpu_run_softmax(const cpu_step *st, const cpu_exec *ex)
{
	const rows_params *p = st->params;
	const void *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	void *out = cpu_ptr(ex, st->op->outputs[0]);
	float *v = p->dtype == ANES_DT_FP32 ? out : (float *)(void *)ex->scratch;
	rows_job j = {p, v, NULL, NULL};

	cpu_to_f32(v, x, p->dtype, (size_t)p->count);
	cpu_parallel(ex->cfg->pool, rows_items(p), (2048 + p->dim - 1) / p->dim, softmax_task, &j);
	cpu_from_f32(out, p->dtype, v, (size_t)p->count);
	return 0;
}

int cpu_plan_layer_norm(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *x = &cpu_arg(fn, op, "x")->type;
	const anes_mil_value *av = cpu_arg(fn, op, "axes");
	uint32_t gid = cpu_optid(op, "gamma"), bid = cpu_optid(op, "beta");
	bool red[ANES_MAX_RANK] = {false};
	double eps = 1e-5;
	rows_params *p;

	if (cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	cpu_axes_mask(av, x->rank, red);
	/* the normalized dims (ignoring size-1 dims) must be one contiguous block */
	int first = -1, last = -1;
	for (uint32_t i = 0; i < x->rank; i++)
		if (red[i] && x->shape[i] > 1) {
			if (first < 0)
				first = (int)i;
			last = (int)i;
		}
	for (int i = first; first >= 0 && i <= last; i++)
		if (!red[i] && x->shape[i] > 1)
			return cpu_fail(pc, op, -ENOTSUP,
			                "normalizing over axes separated by a non-normalized axis is not supported");
	if (cpu_arg(fn, op, "epsilon"))
		anes_mil_const_f64(cpu_arg(fn, op, "epsilon"), &eps);
	const void *dg = plan_const(pc, fn, gid), *db = plan_const(pc, fn, bid);
	const anes_mil_type *gt = gid != UINT32_MAX ? &fn->values[gid].type : NULL;
	const anes_mil_type *bt = bid != UINT32_MAX ? &fn->values[bid].type : NULL;
	size_t head = (size_t)cpu_align64(sizeof *p);
	p = calloc(1, head + (gt ? copy_bytes(dg, gt) : 0) + (bt ? copy_bytes(db, bt) : 0));
	if (!p)
		return -ENOMEM;
	p->dtype = x->dtype;
	p->eps = (float)eps;
	p->count = x->count;
	p->outer = p->dim = p->inner = 1;
	for (uint32_t i = 0; i < x->rank; i++) {
		if (red[i])
			p->dim *= x->shape[i];
		else if (first < 0 || (int)i < first)
			p->outer *= x->shape[i];
		else
			p->inner *= x->shape[i];
	}
	p->has_gamma = gt != NULL;
	p->has_beta = bt != NULL;
	uint8_t *at = (uint8_t *)p + head;
	if (gt && dg) {
		cpu_to_f32((float *)(void *)at, dg, gt->dtype, (size_t)gt->count);
		p->cg = (const float *)(void *)at;
		at += copy_bytes(dg, gt);
	}
	if (bt && db) {
		cpu_to_f32((float *)(void *)at, db, bt->dtype, (size_t)bt->count);
		p->cb = (const float *)(void *)at;
	}
	st->scratch = cpu_f32_scratch(x) + (gt && !dg ? cpu_f32_scratch(gt) : 0) + (bt && !db ? cpu_f32_scratch(bt) : 0);
	st->params = p;
	return 0;
}

int cpu_run_layer_norm(const cpu_step *st, const cpu_exec *ex)
{
	const rows_params *p = st->params;
	const void *x = cpu_ptr(ex, cpu_argid(st->op, "x"));
	void *out = cpu_ptr(ex, st->op->outputs[0]);
	uint8_t *slot = ex->scratch;
	float *v;

	if (p->dtype == ANES_DT_FP32) {
		v = out;
	} else {
		v = (float *)(void *)slot;
		slot += cpu_align64(p->count * 4);
	}
	const float *g = p->cg ? p->cg : p->has_gamma ? cpu_load_f32(ex, cpu_argid(st->op, "gamma"), &slot) : NULL;
	const float *b = p->cb ? p->cb : p->has_beta ? cpu_load_f32(ex, cpu_argid(st->op, "beta"), &slot) : NULL;
	rows_job j = {p, v, g, b};

	cpu_to_f32(v, x, p->dtype, (size_t)p->count);
	cpu_parallel(ex->cfg->pool, rows_items(p), (2048 + p->dim - 1) / p->dim, layer_norm_task, &j);
	cpu_from_f32(out, p->dtype, v, (size_t)p->count);
	return 0;
}

/* ---- reductions ---- */

enum { R_SUM, R_MEAN, R_MAX, R_MIN };

typedef struct reduce_params {
	int kind, dtype;
	uint32_t rank;                     /* of x, >= 1 */
	uint64_t shape[ANES_MAX_RANK];     /* x */
	uint64_t ostride[ANES_MAX_RANK];   /* output stride per x dim, 0 where reduced */
	uint64_t count, ocount;
} reduce_params;

int cpu_plan_reduce(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_value *xv = cpu_arg(fn, op, "x"), *av = cpu_arg(fn, op, "axes");
	const anes_mil_type *x = &xv->type, *o = cpu_out_type(fn, op);
	const char *nm = op->def->name;
	bool red[ANES_MAX_RANK] = {false};
	int kind = strcmp(nm, "reduce_sum") == 0 ? R_SUM : strcmp(nm, "reduce_mean") == 0 ? R_MEAN
	         : strcmp(nm, "reduce_max") == 0 ? R_MAX : R_MIN;
	reduce_params *p;

	if (!(x->dtype == ANES_DT_INT32 && kind != R_MEAN) && cpu_need_float(pc, op, x->dtype))
		return -ENOTSUP;
	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	cpu_axes_mask(av, x->rank, red);
	p->kind = kind;
	p->dtype = x->dtype;
	p->count = x->count;
	p->ocount = o->count;
	cpu_reduce_layout(x, red, &p->rank, p->shape, p->ostride);
	st->scratch = (x->dtype == ANES_DT_FP16 ? cpu_align64(x->count * 4) : 0) + cpu_align64(o->count * 8);
	st->params = p;
	return 0;
}

#define REDUCE_LOOP(T, ACC, COMBINE)                                                             \
	do {                                                                                     \
		uint64_t idx[ANES_MAX_RANK] = {0}, oo = 0;                                       \
		const T *xr = xs;                                                                \
		for (uint64_t k = 0; k < rows; k++) {                                            \
			if (osi == 0) {                                                          \
				ACC s = acc[oo];                                                 \
				for (uint64_t j = 0; j < inner; j++)                             \
					s = COMBINE(s, (ACC)xr[j]);                              \
				acc[oo] = s;                                                     \
			} else {                                                                 \
				for (uint64_t j = 0; j < inner; j++)                             \
					acc[oo + j] = COMBINE(acc[oo + j], (ACC)xr[j]);          \
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

#define C_ADD(a, b) ((a) + (b))
#define C_MAX(a, b) ((b) > (a) || (b) != (b) ? (b) : (a))
#define C_MIN(a, b) ((b) < (a) || (b) != (b) ? (b) : (a))

int cpu_run_reduce(const cpu_step *st, const cpu_exec *ex)
{
	const reduce_params *p = st->params;
	uint32_t xid = cpu_argid(st->op, "x"), oid = st->op->outputs[0];
	uint32_t r = p->rank;
	uint64_t inner = p->shape[r - 1], rows = p->count / inner, osi = p->ostride[r - 1];
	void *out = cpu_ptr(ex, oid);
	uint8_t *slot = ex->scratch;

	if (p->dtype == ANES_DT_INT32) {
		const int32_t *xs = cpu_ptr(ex, xid);
		int64_t *acc = (int64_t *)(void *)slot;
		int64_t init = p->kind == R_MAX ? INT32_MIN : p->kind == R_MIN ? INT32_MAX : 0;
		for (uint64_t i = 0; i < p->ocount; i++)
			acc[i] = init;
		if (p->kind == R_SUM)
			REDUCE_LOOP(int32_t, int64_t, C_ADD);
		else if (p->kind == R_MAX)
			REDUCE_LOOP(int32_t, int64_t, C_MAX);
		else
			REDUCE_LOOP(int32_t, int64_t, C_MIN);
		for (uint64_t i = 0; i < p->ocount; i++)
			((int32_t *)out)[i] = (int32_t)(uint32_t)(uint64_t)acc[i];
		return 0;
	}
	const float *xs = cpu_load_f32(ex, xid, &slot);
	float *acc = (float *)(void *)slot;
	float init = p->kind == R_MAX ? -INFINITY : p->kind == R_MIN ? INFINITY : 0.0f;
	for (uint64_t i = 0; i < p->ocount; i++)
		acc[i] = init;
	if (p->kind == R_MAX)
		REDUCE_LOOP(float, float, C_MAX);
	else if (p->kind == R_MIN)
		REDUCE_LOOP(float, float, C_MIN);
	else
		REDUCE_LOOP(float, float, C_ADD);
	if (p->kind == R_MEAN) {
		float scale = (float)p->ocount / (float)p->count;
		for (uint64_t i = 0; i < p->ocount; i++)
			acc[i] *= scale;
	}
	cpu_from_f32(out, p->dtype, acc, (size_t)p->ocount);
	return 0;
}

/* ---- scaled_dot_product_attention ---- */

typedef struct sdpa_params {
	int dtype, mdt;                 /* mdt: mask dtype, 0 = no mask */
	uint32_t nb;                    /* batch dims (rank - 2) */
	uint64_t bshape[ANES_MAX_RANK];
	uint64_t mstride[ANES_MAX_RANK]; /* mask strides over batch dims, then L; S stride is 1 */
	uint64_t batches, L, S, E, EV;
	uint64_t group;                 /* batches per score buffer */
	float scale;
	uint64_t tmp_floats;
} sdpa_params;

#define SDPA_SCORE_BYTES ((uint64_t)64 << 20)

int cpu_plan_sdpa(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st)
{
	const anes_mil_type *q = &cpu_arg(fn, op, "query")->type, *k = &cpu_arg(fn, op, "key")->type;
	const anes_mil_type *v = &cpu_arg(fn, op, "value")->type, *o = cpu_out_type(fn, op);
	const anes_mil_value *mv = cpu_arg(fn, op, "attn_mask");
	uint32_t r = q->rank;
	sdpa_params *p;

	if (cpu_need_float(pc, op, q->dtype))
		return -ENOTSUP;
	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	p->dtype = q->dtype;
	p->nb = r - 2;
	p->batches = 1;
	for (uint32_t i = 0; i < r - 2; i++) {
		p->bshape[i] = q->shape[i];
		p->batches *= q->shape[i];
	}
	p->L = q->shape[r - 2];
	p->E = q->shape[r - 1];
	p->S = k->shape[r - 2];
	p->EV = v->shape[r - 1];
	p->scale = (float)(1.0 / sqrt((double)p->E));
	if (mv) {
		uint64_t oshape[ANES_MAX_RANK], s[ANES_MAX_RANK];
		p->mdt = mv->type.dtype;
		memcpy(oshape, q->shape, sizeof oshape);
		oshape[r - 1] = p->S;
		cpu_input_strides(&mv->type, r, oshape, s);
		memcpy(p->mstride, s, (r - 1) * sizeof(uint64_t));
	}
	uint64_t per = p->L * p->S * 4;
	p->group = per >= SDPA_SCORE_BYTES ? 1 : SDPA_SCORE_BYTES / per;
	if (p->group > p->batches)
		p->group = p->batches;
	uint64_t t1 = cpu_gemm_tmp_floats(pc->cfg, p->L, p->S, p->E), t2 = cpu_gemm_tmp_floats(pc->cfg, p->L, p->EV, p->S);
	p->tmp_floats = t1 > t2 ? t1 : t2;
	st->scratch = cpu_f32_scratch(q) + cpu_f32_scratch(k) + cpu_f32_scratch(v) + cpu_f32_scratch(o) +
	              cpu_align64(p->group * per) + cpu_align64(p->tmp_floats * 4);
	st->params = p;
	return 0;
}

typedef struct sdpa_job {
	const sdpa_params *p;
	float *scores;                  /* group batches of [L, S] */
	uint64_t b0;                    /* first batch of the group */
	const void *mask;
} sdpa_job;

/* scale, mask and softmax rows (b, l) of the group */
static void sdpa_rows(void *ctx, uint64_t begin, uint64_t end)
{
	const sdpa_job *j = ctx;
	const sdpa_params *p = j->p;

	for (uint64_t it = begin; it < end; it++) {
		uint64_t bl = it / p->L, l = it % p->L, b = j->b0 + bl;
		float *row = j->scores + it * p->S;
		for (uint64_t s = 0; s < p->S; s++)
			row[s] *= p->scale;
		if (p->mdt) {
			uint64_t moff = l * p->mstride[p->nb], rem = b;
			for (uint32_t d = p->nb; d-- > 0;) {
				moff += (rem % p->bshape[d]) * p->mstride[d];
				rem /= p->bshape[d];
			}
			if (p->mdt == ANES_DT_BOOL) {
				const uint8_t *m = (const uint8_t *)j->mask + moff;
				for (uint64_t s = 0; s < p->S; s++)
					if (!m[s])
						row[s] = -INFINITY;
			} else if (p->mdt == ANES_DT_FP16) {
				const uint16_t *m = (const uint16_t *)j->mask + moff;
				for (uint64_t s = 0; s < p->S; s++)
					row[s] += anes_f16_to_f32(m[s]);
			} else {
				const float *m = (const float *)j->mask + moff;
				for (uint64_t s = 0; s < p->S; s++)
					row[s] += m[s];
			}
		}
		float mx = -INFINITY, sum = 0;
		for (uint64_t s = 0; s < p->S; s++)
			mx = row[s] > mx ? row[s] : mx;
		if (isinf(mx) && mx < 0)
			mx = 0;
		for (uint64_t s = 0; s < p->S; s++) {
			row[s] = expf(row[s] - mx);
			sum += row[s];
		}
		sum = 1.0f / sum;
		for (uint64_t s = 0; s < p->S; s++)
			row[s] *= sum;
	}
}

int cpu_run_sdpa(const cpu_step *st, const cpu_exec *ex)
{
	const sdpa_params *p = st->params;
	const anes_mil_op *op = st->op;
	uint8_t *slot = ex->scratch;
	const float *fq = cpu_load_f32(ex, cpu_argid(op, "query"), &slot);
	const float *fk = cpu_load_f32(ex, cpu_argid(op, "key"), &slot);
	const float *fv = cpu_load_f32(ex, cpu_argid(op, "value"), &slot);
	uint32_t mid = cpu_optid(op, "attn_mask");
	void *out = cpu_ptr(ex, op->outputs[0]);
	uint64_t ocount = p->batches * p->L * p->EV;
	float *fo, *scores, *tmp;

	if (p->dtype == ANES_DT_FP32) {
		fo = out;
	} else {
		fo = (float *)(void *)slot;
		slot += cpu_align64(ocount * 4);
	}
	scores = (float *)(void *)slot;
	slot += cpu_align64(p->group * p->L * p->S * 4);
	tmp = (float *)(void *)slot;
	sdpa_job j = {p, scores, 0, mid != UINT32_MAX ? cpu_ptr(ex, mid) : NULL};
	for (uint64_t b0 = 0; b0 < p->batches; b0 += p->group) {
		uint64_t gn = p->batches - b0 < p->group ? p->batches - b0 : p->group;
		for (uint64_t g = 0; g < gn; g++) {
			uint64_t b = b0 + g;
			cpu_gemm(ex->cfg, false, true, p->L, p->S, p->E, fq + b * p->L * p->E, p->E, fk + b * p->S * p->E, p->E,
			         scores + g * p->L * p->S, p->S, false, tmp);
		}
		j.b0 = b0;
		cpu_parallel(ex->cfg->pool, gn * p->L, (4096 + p->S - 1) / p->S, sdpa_rows, &j);
		for (uint64_t g = 0; g < gn; g++) {
			uint64_t b = b0 + g;
			cpu_gemm(ex->cfg, false, false, p->L, p->EV, p->S, scores + g * p->L * p->S, p->S,
			         fv + b * p->S * p->EV, p->EV, fo + b * p->L * p->EV, p->EV, false, tmp);
		}
	}
	cpu_from_f32(out, p->dtype, fo, (size_t)ocount);
	return 0;
}
