/* SPDX-License-Identifier: MIT */
/*
 * ane_probe: run the same programs on two daemons, a device under test (for a
 * first run on a Mac: aneshared --backend ane) and a reference (aneshared
 * --backend cpu), and print a Markdown report to paste into an issue
 * (scripts/ane-smoke.sh runs it; docs/ane.md, "A first run on a Mac").
 *
 *   ane_probe --dut SOCKET --ref SOCKET [--runs N] [--seed N] [--ops] [--strict]
 *             [FILE.mil ...]
 *
 * For each FILE.mil (no weight blobs): compile it on both, fill the inputs
 * with the same seeded random values, run, compare every output element,
 * time N runs on each side.  With --ops: one tiny program for every op the
 * CPU backend supports (fp16 [1, 32, 1, 32] inputs, the op, and where its
 * result is not [1, C, 1, S] a few verified ops around it), and a table of
 * compiles / runs / matches the reference.
 *
 * A result matches when every element d of the device's output is within
 * 2e-3 max|ref| + 1e-2 |r| of the reference element r (NaN only where the
 * reference has NaN).
 *
 * Exit status: 0; 1 when a FILE does not match, a connection or the reference
 * fails, or (--strict) any probe does not compile, run and match on the
 * device; 2 usage.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ane_backend.h"   /* anes_ane_op_verified: the verified column */
#include "aneshare.h"
#include "example_util.h"

#define ABS_TOL 2e-3   /* times max|ref| */
#define REL_TOL 1e-2
#define PROBE_MAX_IO 16   /* inputs (or outputs) of a program this tool runs */

/* ---- small helpers ---- */

static uint64_t rng;

static double rnd01(void)
{
	return ex_rand01(&rng);
}

/* A growing string. */
typedef struct str {
	char *p;
	size_t len, cap;
} str;

static void sadd(str *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sadd(str *s, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		va_start(ap, fmt);
		int n = vsnprintf(s->p ? s->p + s->len : NULL, s->p ? s->cap - s->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			abort();
		if (s->p && (size_t)n < s->cap - s->len) {
			s->len += (size_t)n;
			return;
		}
		size_t ncap = (s->cap + (size_t)n + 1) * 2;
		char *np = realloc(s->p, ncap);
		if (!np)
			abort();
		s->p = np;
		s->cap = ncap;
		if (s->len == 0)
			s->p[0] = '\0';
	}
}

/* error text for a table cell: one line, no '|', at most 90 characters */
static void cell(char *dst, size_t len, const char *src)
{
	size_t j = 0;
	for (size_t i = 0; src[i] && j + 4 < len && j < 90; i++)
		dst[j++] = src[i] == '|' || src[i] == '\n' || src[i] == '\r' ? ' ' : src[i];
	if (src[0] && strlen(src) > j && j + 4 < len)
		dst[j++] = '.', dst[j++] = '.', dst[j++] = '.';
	dst[j] = '\0';
}

/* ---- running one program on one daemon ---- */

typedef struct side {
	const char *name;            /* "device" or "reference" */
	aneshare_conn *conn;
} side;

typedef struct outcome {
	bool compiled, ran;
	char error[256];
	uint32_t n_out;
	float *out[PROBE_MAX_IO];
	size_t count[PROBE_MAX_IO];
	double median_us, min_us;
} outcome;

static void outcome_free(outcome *o)
{
	for (uint32_t i = 0; i < o->n_out; i++)
		free(o->out[i]);
	memset(o, 0, sizeof *o);
}

/* Inputs of a program: the same values on both sides. */
typedef struct inputs {
	uint32_t n;
	float *v[PROBE_MAX_IO];
	size_t count[PROBE_MAX_IO];
} inputs;

static void inputs_free(inputs *in)
{
	for (uint32_t i = 0; i < in->n; i++)
		free(in->v[i]);
	memset(in, 0, sizeof *in);
}

static size_t tensor_count(const aneshare_tensor_info *t)
{
	size_t n = 1;
	for (uint32_t i = 0; i < t->rank; i++)
		n *= (size_t)t->shape[i];
	return n;
}

/* Compile text on s, run it runs times (at least once) with the inputs (made
 * from [lo, hi] on first use), keep the outputs as floats. */
static void run_on(side *s, const char *text, inputs *in, double lo, double hi, int runs, outcome *o)
{
	aneshare_program *p = NULL;
	aneshare_surface *sin[PROBE_MAX_IO] = {0}, *sout[PROBE_MAX_IO] = {0};
	uint32_t n_in = 0, n_out = 0;
	double *times = NULL;
	bool cached;

	memset(o, 0, sizeof *o);
	int r = aneshare_program_compile(s->conn, text, NULL, 0, &p, &cached);
	if (r < 0) {
		snprintf(o->error, sizeof o->error, "%s", *aneshare_last_error(s->conn) ?
		         aneshare_last_error(s->conn) : aneshare_strerror(r));
		return;
	}
	o->compiled = true;
	n_in = aneshare_program_input_count(p, 0);
	n_out = aneshare_program_output_count(p, 0);
	if (n_in > PROBE_MAX_IO || n_out > PROBE_MAX_IO) {
		snprintf(o->error, sizeof o->error, "more than %d inputs or outputs", PROBE_MAX_IO);
		goto out;
	}
	for (uint32_t i = 0; i < n_in; i++) {
		const aneshare_tensor_info *t = aneshare_program_input(p, 0, i);
		size_t n = tensor_count(t);
		if ((r = aneshare_surface_create(s->conn, (size_t)t->bytes, &sin[i])) < 0)
			goto fail;
		if (in->n <= i) {
			in->v[i] = malloc(n * sizeof(float));
			if (!in->v[i])
				abort();
			in->count[i] = n;
			for (size_t k = 0; k < n; k++)
				in->v[i][k] = (float)(lo + (hi - lo) * rnd01());
			in->n = i + 1;
		}
		void *d = aneshare_surface_data(sin[i]);
		if (t->dtype == ANESHARE_FP16) {
			aneshare_f32_to_f16(d, in->v[i], n);
			aneshare_f16_to_f32(in->v[i], d, n);   /* both sides see the rounded values */
		} else if (t->dtype == ANESHARE_FP32) {
			memcpy(d, in->v[i], n * sizeof(float));
		}   /* other dtypes: zeros */
	}
	for (uint32_t i = 0; i < n_out; i++) {
		const aneshare_tensor_info *t = aneshare_program_output(p, 0, i);
		if ((r = aneshare_surface_create(s->conn, (size_t)t->bytes, &sout[i])) < 0)
			goto fail;
	}
	if (runs < 1)
		runs = 1;
	times = malloc((size_t)runs * sizeof *times);
	if (!times)
		abort();
	for (int k = 0; k < runs; k++) {
		double t0 = ex_now_us();
		r = aneshare_run(p, 0, sin, n_in, sout, n_out);
		times[k] = ex_now_us() - t0;
		if (r < 0)
			goto fail;
	}
	o->ran = true;
	qsort(times, (size_t)runs, sizeof *times, ex_cmp_double);
	o->median_us = times[runs / 2];
	o->min_us = times[0];
	for (uint32_t i = 0; i < n_out; i++) {
		const aneshare_tensor_info *t = aneshare_program_output(p, 0, i);
		size_t n = tensor_count(t);
		o->out[i] = calloc(n ? n : 1, sizeof(float));
		if (!o->out[i])
			abort();
		o->count[i] = n;
		o->n_out = i + 1;
		const void *d = aneshare_surface_data(sout[i]);
		if (t->dtype == ANESHARE_FP16)
			aneshare_f16_to_f32(o->out[i], d, n);
		else if (t->dtype == ANESHARE_FP32)
			memcpy(o->out[i], d, n * sizeof(float));
	}
	goto out;
fail:
	snprintf(o->error, sizeof o->error, "%s", *aneshare_last_error(s->conn) ?
	         aneshare_last_error(s->conn) : aneshare_strerror(r));
out:
	free(times);
	for (uint32_t i = 0; i < PROBE_MAX_IO; i++) {
		aneshare_surface_release(sin[i]);
		aneshare_surface_release(sout[i]);
	}
	aneshare_program_release(p);
}

/* max |d - r| and whether every element is within tolerance */
static bool compare(const outcome *d, const outcome *r, double *ret_err, double *ret_max)
{
	double mx = 0, err = 0;
	bool ok = d->n_out == r->n_out;
	for (uint32_t i = 0; ok && i < r->n_out; i++)
		for (size_t k = 0; k < r->count[i]; k++)
			if (isfinite(r->out[i][k]))
				mx = fmax(mx, fabs(r->out[i][k]));
	for (uint32_t i = 0; ok && i < r->n_out; i++) {
		ok = d->count[i] == r->count[i];
		for (size_t k = 0; ok && k < r->count[i]; k++) {
			double a = d->out[i][k], b = r->out[i][k];
			if (isnan(b)) {
				ok = isnan(a);
				continue;
			}
			double e = fabs(a - b);
			if (isnan(a) || (isinf(b) && a != b)) {
				err = INFINITY;
				ok = false;
				break;
			}
			if (isinf(b))
				continue;
			err = fmax(err, e);
			if (e > ABS_TOL * mx + REL_TOL * fabs(b))
				ok = false;
		}
	}
	*ret_err = err;
	*ret_max = mx;
	return ok;
}

/* ---- the op probes ---- */

#define X16 "tensor<fp16, [1, 32, 1, 32]>"

typedef struct probe {
	const char *op;
	const char *note;        /* what else the program holds, or NULL */
	int n_inputs;            /* x, then y, fp16 [1, 32, 1, 32] */
	double lo, hi;
	void (*body)(str *b);    /* statements; the result is z */
	const char *sig;         /* other inputs than n_inputs says, or NULL */
	const char *outs;        /* other outputs than z, or NULL */
} probe;

static void list_ints(str *b, const int *v, int n)
{
	for (int i = 0; i < n; i++)
		sadd(b, "%s%d", i ? ", " : "", v[i]);
}

/* n small fp16-exact weights: (k*37 % 17 - 8) / 64 */
static void list_weights(str *b, int n)
{
	for (int i = 0; i < n; i++)
		sadd(b, "%s%g", i ? ", " : "", (double)((i * 37) % 17 - 8) / 64.0);
}

#define UNARY(fn, op) \
	static void fn(str *b) { sadd(b, "        " X16 " z = " op "(x = x)[name = string(\"z\")];\n"); }
#define BINARY(fn, op) \
	static void fn(str *b) { sadd(b, "        " X16 " z = " op "(x = x, y = y)[name = string(\"z\")];\n"); }

UNARY(p_abs, "abs")
UNARY(p_erf, "erf")
UNARY(p_exp, "exp")
UNARY(p_gelu, "gelu")
UNARY(p_identity, "identity")
UNARY(p_inverse, "inverse")
UNARY(p_log, "log")
UNARY(p_neg, "neg")
UNARY(p_relu, "relu")
UNARY(p_rsqrt, "rsqrt")
UNARY(p_sigmoid, "sigmoid")
UNARY(p_silu, "silu")
UNARY(p_sqrt, "sqrt")
UNARY(p_square, "square")
UNARY(p_tanh, "tanh")
BINARY(p_add, "add")
BINARY(p_maximum, "maximum")
BINARY(p_minimum, "minimum")
BINARY(p_mul, "mul")
BINARY(p_pow, "pow")
BINARY(p_real_div, "real_div")
BINARY(p_sub, "sub")

static void p_cast(str *b)
{
	sadd(b, "        tensor<fp32, [1, 32, 1, 32]> c = cast(x = x, dtype = string(\"fp32\"))[name = string(\"c\")];\n"
	        "        " X16 " z = cast(x = c, dtype = string(\"fp16\"))[name = string(\"z\")];\n");
}

static void p_cast_int(str *b)
{
	sadd(b, "        tensor<int32, [1, 32, 1, 32]> c = cast(x = x, dtype = string(\"int32\"))[name = string(\"c\")];\n"
	        "        " X16 " z = cast(x = c, dtype = string(\"fp16\"))[name = string(\"z\")];\n");
}

static void p_clip(str *b)
{
	sadd(b, "        " X16 " z = clip(x = x, alpha = fp16(-0.5), beta = fp16(0.5))[name = string(\"z\")];\n");
}

static void p_concat(str *b)
{
	sadd(b, "        tensor<fp16, [1, 64, 1, 32]> z = concat(values = (x, y), axis = int32(1), "
	        "interleave = bool(false))[name = string(\"z\")];\n");
}

static void p_affine_dq(str *b)
{
	int q[32];
	for (int i = 0; i < 32; i++)
		q[i] = (i * 29) % 41 - 20;
	sadd(b, "        tensor<fp16, [1, 32, 1, 1]> w = constexpr_affine_dequantize(quantized_data = "
	        "tensor<int8, [1, 32, 1, 1]>([");
	list_ints(b, q, 32);
	sadd(b, "]), zero_point = int8(0), scale = fp16(0.0625), axis = int32(1))[name = string(\"w\")];\n"
	        "        " X16 " z = add(x = x, y = w)[name = string(\"z\")];\n");
}

static void p_lut(str *b)
{
	int q[32];
	for (int i = 0; i < 32; i++)
		q[i] = (i * 7) % 4;
	sadd(b, "        tensor<uint2, [1, 32, 1, 1]> i = const()[name = string(\"i\"), val = tensor<uint2, [1, 32, 1, 1]>([");
	list_ints(b, q, 32);
	sadd(b, "])];\n        tensor<fp16, [1, 2, 1, 1, 4, 1]> l = const()[name = string(\"l\"), "
	        "val = tensor<fp16, [1, 2, 1, 1, 4, 1]>([-1, -0.5, 0.25, 1, 0.5, 0.75, -0.25, -1.5])];\n"
	        "        tensor<fp16, [1, 32, 1, 1]> w = constexpr_lut_to_dense(indices = i, lut = l)[name = string(\"w\")];\n"
	        "        " X16 " z = add(x = x, y = w)[name = string(\"z\")];\n");
}

static void p_shift_scale(str *b)
{
	int q[32];
	for (int i = 0; i < 32; i++)
		q[i] = (i * 5) % 16 - 8;
	sadd(b, "        tensor<int4, [1, 32, 1, 1]> q = const()[name = string(\"q\"), val = tensor<int4, [1, 32, 1, 1]>([");
	list_ints(b, q, 32);
	sadd(b, "])];\n        tensor<fp16, [1, 4, 1, 1]> s = const()[name = string(\"s\"), "
	        "val = tensor<fp16, [1, 4, 1, 1]>([0.125, 0.25, 0.0625, 0.5])];\n"
	        "        tensor<int4, [1, 4, 1, 1]> o = const()[name = string(\"o\"), val = tensor<int4, [1, 4, 1, 1]>([1, 0, -2, 3])];\n"
	        "        tensor<fp16, [1, 32, 1, 1]> w = constexpr_blockwise_shift_scale(data = q, scale = s, offset = o)"
	        "[name = string(\"w\")];\n"
	        "        " X16 " z = add(x = x, y = w)[name = string(\"z\")];\n");
}

static void p_sparse(str *b)
{
	int m[32];
	for (int i = 0; i < 32; i++)
		m[i] = i % 3 == 0;
	sadd(b, "        tensor<uint1, [1, 32, 1, 1]> m = const()[name = string(\"m\"), val = tensor<uint1, [1, 32, 1, 1]>([");
	list_ints(b, m, 32);
	sadd(b, "])];\n        tensor<fp16, [11]> v = const()[name = string(\"v\"), val = tensor<fp16, [11]>([");
	list_weights(b, 11);
	sadd(b, "])];\n        tensor<fp16, [1, 32, 1, 1]> w = constexpr_sparse_to_dense(nonzero_data = v, mask = m)"
	        "[name = string(\"w\")];\n"
	        "        " X16 " z = add(x = x, y = w)[name = string(\"z\")];\n");
}

static void p_lut_sparse(str *b)
{
	int m[32], q[11];
	for (int i = 0; i < 32; i++)
		m[i] = i % 3 == 0;
	for (int i = 0; i < 11; i++)
		q[i] = (i * 3) % 4;
	sadd(b, "        tensor<uint1, [1, 32, 1, 1]> m = const()[name = string(\"m\"), val = tensor<uint1, [1, 32, 1, 1]>([");
	list_ints(b, m, 32);
	sadd(b, "])];\n        tensor<uint2, [11]> i = const()[name = string(\"i\"), val = tensor<uint2, [11]>([");
	list_ints(b, q, 11);
	sadd(b, "])];\n        tensor<fp16, [1, 2, 1, 1, 4, 1]> l = const()[name = string(\"l\"), "
	        "val = tensor<fp16, [1, 2, 1, 1, 4, 1]>([-1, -0.5, 0.25, 1, 0.5, 0.75, -0.25, -1.5])];\n"
	        "        tensor<uint1, [1, 32, 1, 1]> m2, tensor<fp16, [11]> v = constexpr_lut_to_sparse(indices_mask = m, "
	        "indices_nonzero_data = i, lut = l)[name = string(\"s\")];\n"
	        "        tensor<fp16, [1, 32, 1, 1]> w = constexpr_sparse_to_dense(nonzero_data = v, mask = m2)"
	        "[name = string(\"w\")];\n"
	        "        " X16 " z = add(x = x, y = w)[name = string(\"z\")];\n");
}

static void p_sparse_shift_scale(str *b)
{
	int m[32], q[11];
	for (int i = 0; i < 32; i++)
		m[i] = i % 3 == 0;
	for (int i = 0; i < 11; i++)
		q[i] = (i * 5) % 16 - 8;
	sadd(b, "        tensor<uint1, [1, 32, 1, 1]> m = const()[name = string(\"m\"), val = tensor<uint1, [1, 32, 1, 1]>([");
	list_ints(b, m, 32);
	sadd(b, "])];\n        tensor<int8, [11]> q = const()[name = string(\"q\"), val = tensor<int8, [11]>([");
	list_ints(b, q, 11);
	sadd(b, "])];\n        tensor<fp16, [1, 4, 1, 1]> s = const()[name = string(\"s\"), "
	        "val = tensor<fp16, [1, 4, 1, 1]>([0.125, 0.25, 0.0625, 0.5])];\n"
	        "        tensor<uint1, [1, 32, 1, 1]> m2, tensor<fp16, [11]> v = constexpr_sparse_blockwise_shift_scale("
	        "data_mask = m, nonzero_data = q, scale = s)[name = string(\"sp\")];\n"
	        "        tensor<fp16, [1, 32, 1, 1]> w = constexpr_sparse_to_dense(nonzero_data = v, mask = m2)"
	        "[name = string(\"w\")];\n"
	        "        " X16 " z = add(x = x, y = w)[name = string(\"z\")];\n");
}

static void p_cexpr_cast(str *b)
{
	sadd(b, "        tensor<fp16, [1, 32, 1, 1]> h = const()[name = string(\"h\"), val = tensor<fp16, [1, 32, 1, 1]>([");
	list_weights(b, 32);
	sadd(b, "])];\n        tensor<fp32, [1, 32, 1, 1]> w = constexpr_cast(source_val = h, output_dtype = string(\"fp32\"))"
	        "[name = string(\"w\")];\n"
	        "        tensor<fp32, [1, 32, 1, 32]> x32 = cast(x = x, dtype = string(\"fp32\"))[name = string(\"x32\")];\n"
	        "        tensor<fp32, [1, 32, 1, 32]> a = add(x = x32, y = w)[name = string(\"a\")];\n"
	        "        " X16 " z = cast(x = a, dtype = string(\"fp16\"))[name = string(\"z\")];\n");
}

static void p_conv(str *b)
{
	sadd(b, "        tensor<fp16, [32, 32, 1, 1]> w = const()[name = string(\"w\"), val = tensor<fp16, [32, 32, 1, 1]>([");
	list_weights(b, 32 * 32);
	sadd(b, "])];\n        " X16 " z = conv(x = x, weight = w)[name = string(\"z\")];\n");
}

static void p_dequantize(str *b)
{
	sadd(b, "        tensor<int8, [1, 32, 1, 32]> q = cast(x = x, dtype = string(\"int8\"))[name = string(\"q\")];\n"
	        "        " X16 " z = dequantize(input = q, scale = fp16(0.5), zero_point = int8(3))[name = string(\"z\")];\n");
}

static void p_expand_dims(str *b)
{
	sadd(b, "        tensor<fp16, [32, 32]> r = reshape(x = x, shape = tensor<int32, [2]>([32, 32]))[name = string(\"r\")];\n"
	        "        " X16 " z = expand_dims(x = r, axes = tensor<int32, [2]>([0, 2]))[name = string(\"z\")];\n");
}

static void p_gather(str *b)
{
	int idx[32];
	for (int i = 0; i < 32; i++)
		idx[i] = (i * 7 + 3) % 32;
	sadd(b, "        " X16 " z = gather(x = x, indices = tensor<int32, [32]>([");
	list_ints(b, idx, 32);
	sadd(b, "]), axis = int32(1))[name = string(\"z\")];\n");
}

static void p_layer_norm(str *b)
{
	sadd(b, "        " X16 " z = layer_norm(x = x, axes = tensor<int32, [1]>([1]), epsilon = fp16(0.00001))"
	        "[name = string(\"z\")];\n");
}

static void p_linear(str *b)
{
	sadd(b, "        tensor<fp16, [32, 32]> w = const()[name = string(\"w\"), val = tensor<fp16, [32, 32]>([");
	list_weights(b, 32 * 32);
	sadd(b, "])];\n        " X16 " z = linear(x = x, weight = w)[name = string(\"z\")];\n");
}

static void p_matmul(str *b)
{
	sadd(b, "        tensor<int32, [4]> sq = const()[name = string(\"sq\"), val = tensor<int32, [4]>([1, 1, 32, 32])];\n"
	        "        tensor<fp16, [1, 1, 32, 32]> a = reshape(x = x, shape = sq)[name = string(\"a\")];\n"
	        "        tensor<fp16, [1, 1, 32, 32]> c = reshape(x = y, shape = sq)[name = string(\"c\")];\n"
	        "        tensor<fp16, [1, 1, 32, 32]> m = matmul(x = a, y = c)[name = string(\"m\")];\n"
	        "        " X16 " z = reshape(x = m, shape = tensor<int32, [4]>([1, 32, 1, 32]))[name = string(\"z\")];\n");
}

static void p_pad(str *b)
{
	sadd(b, "        tensor<fp16, [1, 32, 1, 16]> s = slice_by_size(x = x, begin = tensor<int32, [4]>([0, 0, 0, 0]), "
	        "size = tensor<int32, [4]>([1, 32, 1, 16]))[name = string(\"s\")];\n"
	        "        " X16 " z = pad(x = s, pad = tensor<int32, [2]>([8, 8]), mode = string(\"constant\"), "
	        "constant_val = fp16(0.25))[name = string(\"z\")];\n");
}

static void p_quantize(str *b)
{
	sadd(b, "        tensor<int8, [1, 32, 1, 32]> q = quantize(input = x, scale = fp16(0.05), zero_point = int8(0), "
	        "output_dtype = string(\"int8\"))[name = string(\"q\")];\n"
	        "        " X16 " z = cast(x = q, dtype = string(\"fp16\"))[name = string(\"z\")];\n");
}

#define REDUCE(fn, op) \
	static void fn(str *b) \
	{ \
		sadd(b, "        tensor<fp16, [1, 1, 1, 32]> z = " op "(x = x, axes = tensor<int32, [1]>([1]), " \
		        "keep_dims = bool(true))[name = string(\"z\")];\n"); \
	}
REDUCE(p_reduce_max, "reduce_max")
REDUCE(p_reduce_mean, "reduce_mean")
REDUCE(p_reduce_min, "reduce_min")
REDUCE(p_reduce_sum, "reduce_sum")

static void p_reshape(str *b)
{
	sadd(b, "        tensor<fp16, [1, 16, 1, 64]> z = reshape(x = x, shape = tensor<int32, [4]>([1, 16, 1, 64]))"
	        "[name = string(\"z\")];\n");
}

static void p_sdpa(str *b)
{
	sadd(b, "        tensor<int32, [4]> sq = const()[name = string(\"sq\"), val = tensor<int32, [4]>([1, 1, 32, 32])];\n"
	        "        tensor<fp16, [1, 1, 32, 32]> q = reshape(x = x, shape = sq)[name = string(\"q\")];\n"
	        "        tensor<fp16, [1, 1, 32, 32]> k = reshape(x = y, shape = sq)[name = string(\"k\")];\n"
	        "        tensor<fp16, [1, 1, 32, 32]> a = scaled_dot_product_attention(query = q, key = k, value = q)"
	        "[name = string(\"a\")];\n"
	        "        " X16 " z = reshape(x = a, shape = tensor<int32, [4]>([1, 32, 1, 32]))[name = string(\"z\")];\n");
}

static void p_slice_by_index(str *b)
{
	sadd(b, "        tensor<fp16, [1, 16, 1, 32]> z = slice_by_index(x = x, begin = tensor<int32, [4]>([0, 8, 0, 0]), "
	        "end = tensor<int32, [4]>([1, 24, 1, 32]))[name = string(\"z\")];\n");
}

static void p_slice_by_size(str *b)
{
	sadd(b, "        tensor<fp16, [1, 16, 1, 32]> z = slice_by_size(x = x, begin = tensor<int32, [4]>([0, 8, 0, 0]), "
	        "size = tensor<int32, [4]>([1, 16, 1, 32]))[name = string(\"z\")];\n");
}

static void p_softmax(str *b)
{
	sadd(b, "        " X16 " z = softmax(x = x, axis = int32(1))[name = string(\"z\")];\n");
}

static void p_split(str *b)
{
	sadd(b, "        tensor<fp16, [1, 16, 1, 32]> a, tensor<fp16, [1, 16, 1, 32]> c = split(x = x, num_splits = int32(2), "
	        "axis = int32(1))[name = string(\"a\")];\n"
	        "        tensor<fp16, [1, 16, 1, 32]> z = sub(x = a, y = c)[name = string(\"z\")];\n");
}

/* fp32 I/O ([Mr] "fp16 or fp32"): inputs and output fp32 [1, 32, 1, 16] */
static void p_add32(str *b)
{
	sadd(b, "        tensor<fp32, [1, 32, 1, 16]> z = add(x = x, y = y)[name = string(\"z\")];\n");
}

/* two outputs of different values, returned out of alphabetical order: a
 * device that binds outputs in another order than the backend swaps them */
static void p_split2(str *b)
{
	sadd(b, "        tensor<fp16, [1, 16, 1, 32]> za, tensor<fp16, [1, 16, 1, 32]> zb = split(x = x, num_splits = int32(2), "
	        "axis = int32(1))[name = string(\"za\")];\n");
}

static void p_squeeze(str *b)
{
	sadd(b, "        tensor<fp16, [1, 32, 1, 1, 32]> r = reshape(x = x, shape = tensor<int32, [5]>([1, 32, 1, 1, 32]))"
	        "[name = string(\"r\")];\n"
	        "        " X16 " z = squeeze(x = r, axes = tensor<int32, [1]>([3]))[name = string(\"z\")];\n");
}

static void p_tile(str *b)
{
	sadd(b, "        tensor<fp16, [1, 32, 1, 16]> s = slice_by_size(x = x, begin = tensor<int32, [4]>([0, 0, 0, 0]), "
	        "size = tensor<int32, [4]>([1, 32, 1, 16]))[name = string(\"s\")];\n"
	        "        " X16 " z = tile(x = s, reps = tensor<int32, [4]>([1, 1, 1, 2]))[name = string(\"z\")];\n");
}

static void p_transpose(str *b)
{
	sadd(b, "        tensor<fp16, [1, 1, 32, 32]> a = reshape(x = x, shape = tensor<int32, [4]>([1, 1, 32, 32]))"
	        "[name = string(\"a\")];\n"
	        "        tensor<fp16, [1, 1, 32, 32]> t = transpose(x = a, perm = tensor<int32, [4]>([0, 1, 3, 2]))"
	        "[name = string(\"t\")];\n"
	        "        " X16 " z = reshape(x = t, shape = tensor<int32, [4]>([1, 32, 1, 32]))[name = string(\"z\")];\n");
}

static const probe probes[] = {
	{"abs", NULL, 1, -2, 2, p_abs, NULL, NULL},
	{"add", NULL, 2, -2, 2, p_add, NULL, NULL},
	{"add", "fp32 inputs and output", 2, -2, 2, p_add32,
	 "tensor<fp32, [1, 32, 1, 16]> x, tensor<fp32, [1, 32, 1, 16]> y", NULL},
	{"cast", "fp16 -> fp32 -> fp16", 1, -2, 2, p_cast, NULL, NULL},
	{"cast", "fp16 -> int32 -> fp16", 1, -100, 100, p_cast_int, NULL, NULL},
	{"clip", NULL, 1, -2, 2, p_clip, NULL, NULL},
	{"concat", "interleave = false", 2, -2, 2, p_concat, NULL, NULL},
	{"constexpr_affine_dequantize", "+ add", 1, -2, 2, p_affine_dq, NULL, NULL},
	{"constexpr_blockwise_shift_scale", "int4, 4 blocks, offset; + add", 1, -2, 2, p_shift_scale, NULL, NULL},
	{"constexpr_cast", "+ add in fp32", 1, -2, 2, p_cexpr_cast, NULL, NULL},
	{"constexpr_lut_to_dense", "uint2, 2 palettes; + add", 1, -2, 2, p_lut, NULL, NULL},
	{"constexpr_lut_to_sparse", "uint2, 2 palettes; + constexpr_sparse_to_dense, add", 1, -2, 2, p_lut_sparse, NULL,
	 NULL},
	{"constexpr_sparse_blockwise_shift_scale", "int8, 4 blocks; + constexpr_sparse_to_dense, add", 1, -2, 2,
	 p_sparse_shift_scale, NULL, NULL},
	{"constexpr_sparse_to_dense", "uint1 mask; + add", 1, -2, 2, p_sparse, NULL, NULL},
	{"conv", "1x1, const weights", 1, -2, 2, p_conv, NULL, NULL},
	{"dequantize", "cast to int8 first", 1, -100, 100, p_dequantize, NULL, NULL},
	{"erf", NULL, 1, -3, 3, p_erf, NULL, NULL},
	{"exp", NULL, 1, -4, 4, p_exp, NULL, NULL},
	{"expand_dims", "reshape first", 1, -2, 2, p_expand_dims, NULL, NULL},
	{"gather", "const indices", 1, -2, 2, p_gather, NULL, NULL},
	{"gelu", "the ANE backend rewrites it", 1, -4, 4, p_gelu, NULL, NULL},
	{"identity", NULL, 1, -2, 2, p_identity, NULL, NULL},
	{"inverse", NULL, 1, 0.5, 2, p_inverse, NULL, NULL},
	{"layer_norm", NULL, 1, -2, 2, p_layer_norm, NULL, NULL},
	{"linear", "const weights", 1, -2, 2, p_linear, NULL, NULL},
	{"log", NULL, 1, 0.1, 4, p_log, NULL, NULL},
	{"matmul", "reshape around it", 2, -1, 1, p_matmul, NULL, NULL},
	{"maximum", NULL, 2, -2, 2, p_maximum, NULL, NULL},
	{"minimum", NULL, 2, -2, 2, p_minimum, NULL, NULL},
	{"mul", NULL, 2, -2, 2, p_mul, NULL, NULL},
	{"neg", NULL, 1, -2, 2, p_neg, NULL, NULL},
	{"pad", "slice first", 1, -2, 2, p_pad, NULL, NULL},
	{"pow", NULL, 2, 0.5, 2, p_pow, NULL, NULL},
	{"quantize", "cast after", 1, -4, 4, p_quantize, NULL, NULL},
	{"real_div", NULL, 2, 0.5, 2, p_real_div, NULL, NULL},
	{"reduce_max", NULL, 1, -2, 2, p_reduce_max, NULL, NULL},
	{"reduce_mean", NULL, 1, -2, 2, p_reduce_mean, NULL, NULL},
	{"reduce_min", NULL, 1, -2, 2, p_reduce_min, NULL, NULL},
	{"reduce_sum", NULL, 1, -2, 2, p_reduce_sum, NULL, NULL},
	{"relu", NULL, 1, -2, 2, p_relu, NULL, NULL},
	{"reshape", NULL, 1, -2, 2, p_reshape, NULL, NULL},
	{"rsqrt", NULL, 1, 0.25, 4, p_rsqrt, NULL, NULL},
	{"scaled_dot_product_attention", "reshape around it", 2, -1, 1, p_sdpa, NULL, NULL},
	{"sigmoid", NULL, 1, -6, 6, p_sigmoid, NULL, NULL},
	{"silu", NULL, 1, -6, 6, p_silu, NULL, NULL},
	{"slice_by_index", NULL, 1, -2, 2, p_slice_by_index, NULL, NULL},
	{"slice_by_size", NULL, 1, -2, 2, p_slice_by_size, NULL, NULL},
	{"softmax", NULL, 1, -2, 2, p_softmax, NULL, NULL},
	{"split", "+ sub", 1, -2, 2, p_split, NULL, NULL},
	{"split", "two outputs, returned as (zb, za)", 1, -2, 2, p_split2, NULL, "zb, za"},
	{"sqrt", NULL, 1, 0.1, 4, p_sqrt, NULL, NULL},
	{"square", NULL, 1, -2, 2, p_square, NULL, NULL},
	{"squeeze", "reshape first", 1, -2, 2, p_squeeze, NULL, NULL},
	{"sub", NULL, 2, -2, 2, p_sub, NULL, NULL},
	{"tanh", NULL, 1, -3, 3, p_tanh, NULL, NULL},
	{"tile", "slice first", 1, -2, 2, p_tile, NULL, NULL},
	{"transpose", "reshape around it", 1, -2, 2, p_transpose, NULL, NULL},
};

static char *probe_text(const probe *pr)
{
	str b = {0};
	if (pr->sig)
		sadd(&b, "program(1.3)\n{\n    func main<ios18>(%s) {\n", pr->sig);
	else
		sadd(&b, "program(1.3)\n{\n    func main<ios18>(" X16 " x%s) {\n", pr->n_inputs > 1 ? ", " X16 " y" : "");
	pr->body(&b);
	sadd(&b, "    } -> (%s);\n}\n", pr->outs ? pr->outs : "z");
	return b.p;
}

/* ---- main ---- */

static int usage(void)
{
	fprintf(stderr, "usage: ane_probe --dut SOCKET --ref SOCKET [--runs N] [--seed N] [--ops] [--strict] "
	                "[--print-probes] [FILE.mil ...]\n");
	return 2;
}

int main(int argc, char **argv)
{
	const char *dut_path = NULL, *ref_path = NULL;
	const char *files[64];
	int n_files = 0, runs = 20;
	bool ops = false, strict = false, print = false;
	uint64_t seed = 1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--dut") && i + 1 < argc)
			dut_path = argv[++i];
		else if (!strcmp(argv[i], "--ref") && i + 1 < argc)
			ref_path = argv[++i];
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
			runs = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
			seed = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--ops"))
			ops = true;
		else if (!strcmp(argv[i], "--strict"))
			strict = true;
		else if (!strcmp(argv[i], "--print-probes"))
			print = true;
		else if (argv[i][0] != '-' && n_files < 64)
			files[n_files++] = argv[i];
		else
			return usage();
	}
	if (print) {   /* the probe programs, for reading (no daemon needed) */
		for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
			char *t = probe_text(&probes[i]);
			printf("// probe %s%s%s\n%s\n", probes[i].op, probes[i].note ? ": " : "",
			       probes[i].note ? probes[i].note : "", t);
			free(t);
		}
		return 0;
	}
	if (!dut_path || !ref_path || runs < 1 || runs > 100000)
		return usage();

	side dut = {"device", NULL}, ref = {"reference", NULL};
	int r = aneshare_connect(dut_path, "ane_probe", &dut.conn);
	if (r < 0) {
		fprintf(stderr, "ane_probe: connect %s: %s\n", dut_path, aneshare_strerror(r));
		return 1;
	}
	r = aneshare_connect(ref_path, "ane_probe", &ref.conn);
	if (r < 0) {
		fprintf(stderr, "ane_probe: connect %s: %s\n", ref_path, aneshare_strerror(r));
		aneshare_disconnect(dut.conn);
		return 1;
	}
	const aneshare_server_info *di = aneshare_server(dut.conn), *ri = aneshare_server(ref.conn);
	int status = 0;

	printf("### Programs: device (backend %s) against reference (backend %s)\n\n", di->backend, ri->backend);
	printf("Inputs uniform in [-1, 1] (seed %llu), %d runs a side; a match is every element within "
	       "%g max|ref| + %g |ref|.\n\n", (unsigned long long)seed, runs, ABS_TOL, REL_TOL);
	printf("| program | compiles | runs | matches | max abs err | max abs ref | device median us | "
	       "reference median us | error |\n|---|---|---|---|---|---|---|---|---|\n");
	for (int f = 0; f < n_files; f++) {
		char *text = ex_read_text(files[f]);
		const char *base = strrchr(files[f], '/') ? strrchr(files[f], '/') + 1 : files[f];
		if (!text) {
			printf("| %s | | | | | | | | cannot read: %s |\n", base, strerror(errno ? errno : EIO));
			status = 1;
			continue;
		}
		inputs in = {0};
		outcome od, orf;
		rng = seed;
		run_on(&ref, text, &in, -1, 1, runs, &orf);
		run_on(&dut, text, &in, -1, 1, runs, &od);
		double err = 0, mx = 0;
		bool match = od.ran && orf.ran && compare(&od, &orf, &err, &mx);
		char e[128];
		cell(e, sizeof e, od.error[0] ? od.error : orf.error[0] ? orf.error : "");
		printf("| %s | %s | %s | %s | %.3g | %.3g | %.1f | %.1f | %s |\n", base, od.compiled ? "yes" : "no",
		       od.ran ? "yes" : "no", match ? "yes" : "no", err, mx, od.median_us, orf.median_us, e);
		if (!match)
			status = 1;
		outcome_free(&od);
		outcome_free(&orf);
		inputs_free(&in);
		free(text);
	}

	if (ops) {
		size_t n_probes = sizeof probes / sizeof probes[0], n_yes = 0;
		printf("\n### Ops: one tiny program each (fp16 [1, 32, 1, 32] in unless the program column says otherwise)\n\n");
		printf("| op | verified | program | compiles | runs | matches | max abs err | error |\n"
		       "|---|---|---|---|---|---|---|---|\n");
		for (size_t i = 0; i < n_probes; i++) {
			const probe *pr = &probes[i];
			char *text = probe_text(pr);
			inputs in = {0};
			outcome od, orf;
			rng = seed + i;
			run_on(&ref, text, &in, pr->lo, pr->hi, 1, &orf);
			run_on(&dut, text, &in, pr->lo, pr->hi, 1, &od);
			double err = 0, mx = 0;
			bool match = od.ran && orf.ran && compare(&od, &orf, &err, &mx);
			char e[128];
			cell(e, sizeof e, !orf.ran ? orf.error : od.error);
			printf("| %s | %s | %s | %s | %s | %s | %.3g | %s%s |\n", pr->op,
			       anes_ane_op_verified(pr->op) ? "yes" : "no", pr->note ? pr->note : "",
			       od.compiled ? "yes" : "no", od.ran ? "yes" : "no", match ? "yes" : "no", err,
			       !orf.ran ? "reference failed: " : "", e);
			if (!orf.ran)
				status = 1;   /* a probe the CPU backend cannot run is a bug of the probe */
			if (match)
				n_yes++;
			else if (strict)
				status = 1;
			outcome_free(&od);
			outcome_free(&orf);
			inputs_free(&in);
			free(text);
		}
		printf("\n%zu of %zu probes compile, run and match on the device.\n", n_yes, n_probes);
	}
	aneshare_disconnect(dut.conn);
	aneshare_disconnect(ref.conn);
	return status;
}
