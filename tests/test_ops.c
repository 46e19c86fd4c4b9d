/* SPDX-License-Identifier: MIT */
/*
 * The MIL op set on the CPU backend: every op against an independent fp64
 * reference on random data (broadcasting, edge shapes, fp16 and fp32),
 * quantized weights, strict mode, the built-in GEMM, several functions,
 * compile-time error messages, and the transformer block example.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "backend.h"
#include "cpu_internal.h"
#include "transformer_ref.h"

static anes_backend *B;
static char errbuf[512];

static void setup(void)
{
	cr_assert_eq(anes_cpu_backend_new(0, &B), 0);
}

static void teardown(void)
{
	B->ops->destroy(B);
	B = NULL;
}

TestSuite(ops, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers ---- */

static uint64_t rng = 88172645463325252ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static double urand(double lo, double hi)
{
	return lo + (hi - lo) * (double)(rnd() >> 11) / 9007199254740992.0;
}

static double h2d(uint16_t h) { return anes_f16_to_f32_soft(h); }

/* n random fp16 values in [lo, hi); their exact values in *vals (malloc'd) */
static uint16_t *rf16(size_t n, double lo, double hi, double **vals)
{
	uint16_t *h = malloc(n * 2 + 2);
	double *v = malloc(n * sizeof *v + 8);
	for (size_t i = 0; i < n; i++) {
		h[i] = anes_f32_to_f16_soft((float)urand(lo, hi));
		v[i] = h2d(h[i]);
	}
	*vals = v;
	return h;
}

static float *rf32(size_t n, double lo, double hi, double **vals)
{
	float *f = malloc(n * 4 + 4);
	double *v = malloc(n * sizeof *v + 8);
	for (size_t i = 0; i < n; i++) {
		f[i] = (float)urand(lo, hi);
		v[i] = f[i];
	}
	*vals = v;
	return f;
}

/* "[2, 3, 4]" in one of 8 rotating buffers */
static const char *shs(const int *d, int r)
{
	static char bufs[8][96];
	static int k;
	char *b = bufs[k++ & 7];
	int o = snprintf(b, 96, "[");
	for (int i = 0; i < r; i++)
		o += snprintf(b + o, 96 - (size_t)o, "%s%d", i ? ", " : "", d[i]);
	snprintf(b + o, 96 - (size_t)o, "]");
	return b;
}

static size_t prod(const int *d, int r)
{
	size_t n = 1;
	for (int i = 0; i < r; i++)
		n *= (size_t)d[i];
	return n;
}

__attribute__((format(printf, 3, 4)))
static char *prog(const char *inputs, const char *outs, const char *body_fmt, ...)
{
	static char text[1 << 17];
	char body[1 << 16];
	va_list ap;
	va_start(ap, body_fmt);
	vsnprintf(body, sizeof body, body_fmt, ap);
	va_end(ap);
	snprintf(text, sizeof text, "program(1.3)\n{\n    func main<ios18>(%s) {\n%s\n    } -> (%s);\n}\n", inputs,
	         body, outs);
	return text;
}

static anes_bprogram *compile_ok(const char *text)
{
	anes_bprogram *p = NULL;
	int rc = B->ops->compile(B, text, strlen(text), NULL, 0, &p, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "compile failed (%d): %s\n%s", rc, errbuf, text);
	return p;
}

static int compile_err(const char *text)
{
	anes_bprogram *p = NULL;
	int rc = B->ops->compile(B, text, strlen(text), NULL, 0, &p, errbuf, sizeof errbuf);
	cr_assert_neq(rc, 0, "compiled but should not have:\n%s", text);
	cr_assert_null(p);
	return rc;
}

static void run_ok(anes_bprogram *p, uint32_t fn, const void *const *in, void *const *out)
{
	int rc = B->ops->run(B, p, fn, in, out, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "run failed (%d): %s", rc, errbuf);
}

/* compile text, run its function 0 once on in/out, free it */
static void compile_run(const char *text, const void *const *in, void *const *out)
{
	anes_bprogram *p = compile_ok(text);
	run_ok(p, 0, in, out);
	B->ops->program_free(B, p);
}

/* |got - ref| <= tol * max(1, |ref|) */
static void check(const char *what, const double *got, const double *ref, size_t n, double tol)
{
	double worst = 0;
	size_t wi = 0;
	for (size_t i = 0; i < n; i++) {
		double e = fabs(got[i] - ref[i]) / fmax(1.0, fabs(ref[i]));
		if (isnan(ref[i]) && isnan(got[i]))
			e = 0;
		if (isinf(ref[i]) && got[i] == ref[i])
			e = 0;
		if (!(e <= worst)) {
			worst = e;
			wi = i;
		}
	}
	cr_assert(worst <= tol, "%s: element %zu: got %.6g, want %.6g (rel err %.3g > %.3g)", what, wi, got[wi],
	          ref[wi], worst, tol);
}

static void check_f16(const char *what, const uint16_t *got, const double *ref, size_t n, double tol)
{
	double *g = malloc(n * sizeof *g + 8);
	for (size_t i = 0; i < n; i++)
		g[i] = h2d(got[i]);
	check(what, g, ref, n, tol);
	free(g);
}

static void check_f32(const char *what, const float *got, const double *ref, size_t n, double tol)
{
	double *g = malloc(n * sizeof *g + 8);
	for (size_t i = 0; i < n; i++)
		g[i] = got[i];
	check(what, g, ref, n, tol);
	free(g);
}

static void unravel(size_t i, const int *d, int r, int *idx)
{
	for (int k = r - 1; k >= 0; k--) {
		idx[k] = (int)(i % (size_t)d[k]);
		i /= (size_t)d[k];
	}
}

/* linear index in an input of shape d (rank r) broadcast to an output of rank ro */
static size_t bidx(const int *oidx, int ro, const int *d, int r)
{
	size_t o = 0;
	for (int k = 0; k < r; k++) {
		int ok = oidx[ro - r + k];
		o = o * (size_t)d[k] + (size_t)(d[k] == 1 ? 0 : ok);
	}
	return o;
}

/* one input, one output, fp16; body uses x and y */
static void run1_f16(const char *in_decl, const char *out_decl, const char *body, const uint16_t *x, uint16_t *y)
{
	char inputs[128];
	snprintf(inputs, sizeof inputs, "%s x", in_decl);
	char *t = prog(inputs, "y", "        %s y = %s;", out_decl, body);
	compile_run(t, (const void *[]){x}, (void *[]){y});
}

/* ---- unary ---- */

typedef struct ucase {
	const char *op, *extra;
	double lo, hi;
	double (*ref)(double);
	double tol;
} ucase;

static double r_neg(double x) { return -x; }
static double r_log(double x) { return log(x + 1e-45); }
static double r_rsqrt(double x) { return 1 / sqrt(x + 1e-12); }
static double r_relu(double x) { return x < 0 ? 0 : x; }
static double r_sigmoid(double x) { return 1 / (1 + exp(-x)); }
static double r_gelu(double x) { return 0.5 * x * (1 + erf(x / sqrt(2))); }
static double r_gelu_t(double x) { return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }
static double r_gelu_s(double x) { return x * r_sigmoid(1.702 * x); }
static double r_silu(double x) { return x * r_sigmoid(x); }
static double r_clip(double x) { return x < -0.5 ? -0.5 : x > 1.25 ? 1.25 : x; }
static double r_square(double x) { return x * x; }
static double r_inverse(double x) { return 1 / (x + 1e-4); }
static double r_log_eps(double x) { return log(x + 0.5); }

static double r_sign(double x) { return x > 0 ? 1 : x < 0 ? -1 : 0; }
static double r_relu6(double x) { return x < 0 ? 0 : x > 6 ? 6 : x; }
static double r_softplus(double x) { return log(1 + exp(x)); }
static double r_softsign(double x) { return x / (1 + fabs(x)); }
static double r_elu(double x) { return x > 0 ? x : 0.5 * (exp(x) - 1); }
static double r_leaky(double x) { return x >= 0 ? x : 0.125 * x; }
static double r_trelu(double x) { return x >= 0.75 ? x : 0; }
static double r_hsig(double x) { double v = 0.25 * x + 0.5; return v < 0 ? 0 : v > 1 ? 1 : v; }
static double r_stanh(double x) { return 1.5 * tanh(0.75 * x); }
static double r_clamped(double x) { double v = x >= 0 ? x : 0.25 * x; return v > 2 ? 2 : v; }
static double r_linact(double x) { return 1.5 * x - 0.25; }
static double r_threshold(double x) { return x > 0.5 ? x : 0.5; }

static const ucase ucases[] = {
	{"neg", "", -4, 4, r_neg, 1e-3},
	{"exp", "", -6, 6, exp, 2e-3},
	{"log", "", 0.01, 50, r_log, 2e-3},
	{"log", ", epsilon = fp16(0.5)", 0.01, 50, r_log_eps, 2e-3},
	{"sqrt", "", 0, 100, sqrt, 1e-3},
	{"rsqrt", "", 0.01, 100, r_rsqrt, 2e-3},
	{"abs", "", -4, 4, fabs, 1e-3},
	{"relu", "", -4, 4, r_relu, 1e-3},
	{"sigmoid", "", -8, 8, r_sigmoid, 2e-3},
	{"tanh", "", -4, 4, tanh, 2e-3},
	{"gelu", "", -5, 5, r_gelu, 2e-3},
	{"gelu", ", mode = string(\"EXACT\")", -5, 5, r_gelu, 2e-3},
	{"gelu", ", mode = string(\"TANH_APPROXIMATION\")", -5, 5, r_gelu_t, 2e-3},
	{"gelu", ", mode = string(\"SIGMOID_APPROXIMATION\")", -5, 5, r_gelu_s, 2e-3},
	{"silu", "", -8, 8, r_silu, 2e-3},
	{"erf", "", -3, 3, erf, 2e-3},
	{"clip", ", alpha = fp16(-0.5), beta = fp16(1.25)", -3, 3, r_clip, 1e-3},
	{"square", "", -10, 10, r_square, 1e-3},
	{"inverse", "", 0.05, 10, r_inverse, 2e-3},
	{"floor", "", -9, 9, floor, 0},
	{"ceil", "", -9, 9, ceil, 0},
	{"round", "", -9, 9, nearbyint, 0},
	{"sign", "", -2, 2, r_sign, 0},
	{"sin", "", -7, 7, sin, 2e-3},
	{"cos", "", -7, 7, cos, 2e-3},
	{"tan", "", -1.4, 1.4, tan, 2e-3},
	{"asin", "", -1, 1, asin, 2e-3},
	{"acos", "", -1, 1, acos, 2e-3},
	{"atan", "", -9, 9, atan, 2e-3},
	{"sinh", "", -4, 4, sinh, 2e-3},
	{"cosh", "", -4, 4, cosh, 2e-3},
	{"atanh", "", -0.99, 0.99, atanh, 2e-3},
	{"exp2", "", -10, 10, exp2, 2e-3},
	{"threshold", ", alpha = fp16(0.5)", -2, 2, r_threshold, 1e-3},
	{"relu6", "", -3, 9, r_relu6, 1e-3},
	{"softplus", "", -20, 30, r_softplus, 2e-3},
	{"softsign", "", -9, 9, r_softsign, 2e-3},
	{"elu", ", alpha = fp16(0.5)", -6, 3, r_elu, 2e-3},
	{"leaky_relu", ", alpha = fp16(0.125)", -4, 4, r_leaky, 1e-3},
	{"thresholded_relu", ", alpha = fp16(0.75)", -2, 2, r_trelu, 1e-3},
	{"sigmoid_hard", ", alpha = fp16(0.25), beta = fp16(0.5)", -5, 5, r_hsig, 1e-3},
	{"scaled_tanh", ", alpha = fp16(1.5), beta = fp16(0.75)", -4, 4, r_stanh, 2e-3},
	{"clamped_relu", ", alpha = fp16(0.25), beta = fp16(2)", -4, 4, r_clamped, 1e-3},
	{"linear_activation", ", alpha = fp16(1.5), beta = fp16(-0.25)", -4, 4, r_linact, 1e-3},
};

Test(ops, unary_fp16_and_fp32)
{
	static const int shapes[][4] = {{3, 37, 0, 0}, {1, 1, 1, 1}, {5000, 0, 0, 0}, {2, 3, 1, 4}};
	static const int ranks[] = {2, 4, 1, 4};
	for (size_t c = 0; c < sizeof ucases / sizeof ucases[0]; c++) {
		const ucase *u = &ucases[c];
		for (int s = 0; s < 4; s++) {
			for (int f32 = 0; f32 < 2; f32++) {
				const char *dt = f32 ? "fp32" : "fp16";
				const char *sh = shs(shapes[s], ranks[s]);
				size_t n = prod(shapes[s], ranks[s]);
				char decl[96], body[160], extra[96];
				snprintf(decl, sizeof decl, "tensor<%s, %s>", dt, sh);
				snprintf(extra, sizeof extra, "%s", u->extra);
				if (f32) /* constants of fp32 programs */
					for (char *q = strstr(extra, "fp16"); q; q = strstr(q, "fp16"))
						memcpy(q, "fp32", 4);
				snprintf(body, sizeof body, "%s(x = x%s)", u->op, extra);
				double *v, *ref = malloc(n * sizeof *ref);
				void *x = f32 ? (void *)rf32(n, u->lo, u->hi, &v) : (void *)rf16(n, u->lo, u->hi, &v);
				void *y = malloc(n * 4);
				char inputs[128];
				snprintf(inputs, sizeof inputs, "%s x", decl);
				compile_run(prog(inputs, "y", "        %s y = %s;", decl, body),
				            (const void *[]){x}, (void *[]){y});
				for (size_t i = 0; i < n; i++)
					ref[i] = u->ref(v[i]);
				char what[400];
				snprintf(what, sizeof what, "%s %s %s", body, dt, sh);
				if (f32)
					check_f32(what, y, ref, n, 1e-5 * 10 + u->tol / 100);
				else
					check_f16(what, y, ref, n, u->tol);
				free(v);
				free(ref);
				free(x);
				free(y);
			}
		}
	}
}

/* ---- binary with broadcasting ---- */

typedef struct bshape {
	int xr, yr;
	int x[5], y[5];
} bshape;

static const bshape bshapes[] = {
	{2, 2, {3, 4}, {3, 4}},
	{3, 1, {2, 3, 5}, {5}},
	{1, 3, {5}, {2, 3, 5}},
	{4, 4, {1, 64, 1, 33}, {1, 64, 1, 1}},
	{4, 4, {2, 1, 3, 1}, {1, 4, 1, 5}},
	{0, 2, {0}, {7, 9}},
	{2, 0, {7, 9}, {0}},
	{3, 3, {1, 1, 1}, {1, 1, 1}},
	{5, 2, {2, 3, 1, 2, 3}, {2, 1}},
	{1, 1, {4099}, {4099}},
};

static double bref(int op, double a, double b)
{
	switch (op) {
	case 0: return a + b;
	case 1: return a - b;
	case 2: return a * b;
	case 3: return a / b;
	case 4: return pow(a, b);
	case 5: return a > b ? a : b;
	default: return a < b ? a : b;
	}
}

Test(ops, binary_broadcasting)
{
	static const char *names[] = {"add", "sub", "mul", "real_div", "pow", "maximum", "minimum"};
	for (int op = 0; op < 7; op++)
		for (size_t c = 0; c < sizeof bshapes / sizeof bshapes[0]; c++)
			for (int f32 = 0; f32 < 2; f32++) {
				const bshape *s = &bshapes[c];
				const char *dt = f32 ? "fp32" : "fp16";
				int o[5], ro = s->xr > s->yr ? s->xr : s->yr;
				for (int k = 0; k < ro; k++) {
					int dx = k < ro - s->xr ? 1 : s->x[k - (ro - s->xr)];
					int dy = k < ro - s->yr ? 1 : s->y[k - (ro - s->yr)];
					o[k] = dx > dy ? dx : dy;
				}
				size_t nx = prod(s->x, s->xr), ny = prod(s->y, s->yr), no = prod(o, ro);
				double lo = op == 4 ? 0.1 : -2, hi = 2;
				double *vx, *vy, *ref = malloc(no * sizeof *ref);
				void *x = f32 ? (void *)rf32(nx, lo, hi, &vx) : (void *)rf16(nx, lo, hi, &vx);
				void *y = f32 ? (void *)rf32(ny, op == 3 ? 0.5 : -2, 2, &vy)
				              : (void *)rf16(ny, op == 3 ? 0.5 : -2, 2, &vy);
				void *z = malloc(no * 4 + 4);
				char tx[64], ty[64], tz[64], inputs[160];
#define TY(buf, r, d) (r ? snprintf(buf, sizeof buf, "tensor<%s, %s>", dt, shs(d, r)) : snprintf(buf, sizeof buf, "%s", dt))
				TY(tx, s->xr, s->x);
				TY(ty, s->yr, s->y);
				TY(tz, ro, o);
#undef TY
				snprintf(inputs, sizeof inputs, "%s x, %s y", tx, ty);
				compile_run(prog(inputs, "z", "        %s z = %s(x = x, y = y);", tz, names[op]),
				            (const void *[]){x, y}, (void *[]){z});
				for (size_t i = 0; i < no; i++) {
					int idx[5];
					unravel(i, o, ro, idx);
					ref[i] = bref(op, vx[bidx(idx, ro, s->x, s->xr)], vy[bidx(idx, ro, s->y, s->yr)]);
				}
				char what[96];
				snprintf(what, sizeof what, "%s %s case %zu", names[op], dt, c);
				if (f32)
					check_f32(what, z, ref, no, 1e-6);
				else
					check_f16(what, z, ref, no, 1e-3);
				free(vx);
				free(vy);
				free(ref);
				free(x);
				free(y);
				free(z);
			}
}

Test(ops, binary_int32_and_constants)
{
	int32_t x[6] = {1, -2, 3, 2147483647, -5, 6}, y[3] = {10, -20, 1}, z[6];
	static const char *names[] = {"add", "sub", "mul", "maximum", "minimum"};
	for (int op = 0; op < 5; op++) {
		compile_run(prog("tensor<int32, [2, 3]> x, tensor<int32, [3]> y", "z",
		                 "        tensor<int32, [2, 3]> z = %s(x = x, y = y);", names[op]),
		            (const void *[]){x, y}, (void *[]){z});
		for (int i = 0; i < 6; i++) {
			int64_t a = x[i], b = y[i % 3], r;
			switch (op) {
			case 0: r = (int32_t)(uint32_t)(a + b); break;
			case 1: r = (int32_t)(uint32_t)(a - b); break;
			case 2: r = (int32_t)(uint32_t)(uint64_t)(a * b); break;
			case 3: r = a > b ? a : b; break;
			default: r = a < b ? a : b; break;
			}
			cr_assert_eq(z[i], r, "%s[%d]: %d != %lld", names[op], i, z[i], (long long)r);
		}
	}
	/* real_div on int32 is refused at compile time */
	cr_assert_eq(compile_err(prog("tensor<int32, [2]> x", "z", "        tensor<int32, [2]> z = real_div(x = x, y = x);")),
	             -ENOTSUP);
	/* scalar constant operand */
	uint16_t h[4], o[4];
	double *v;
	uint16_t *hx = rf16(4, -1, 1, &v);
	memcpy(h, hx, sizeof h);
	run1_f16("tensor<fp16, [4]>", "tensor<fp16, [4]>", "mul(x = x, y = fp16(0.5))", h, o);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(h2d(o[i]), v[i] * 0.5);
	free(hx);
	free(v);
}

/* ---- softmax, reductions, layer_norm ---- */

Test(ops, softmax_every_axis)
{
	int d[4] = {2, 3, 5, 7};
	size_t n = prod(d, 4);
	for (int axis = -4; axis < 4; axis++) {
		double *v, *ref = malloc(n * sizeof *ref);
		uint16_t *x = rf16(n, -8, 8, &v), *y = malloc(n * 2);
		char body[64];
		snprintf(body, sizeof body, "softmax(x = x, axis = %d)", axis);
		run1_f16("tensor<fp16, [2, 3, 5, 7]>", "tensor<fp16, [2, 3, 5, 7]>", body, x, y);
		int a = axis < 0 ? axis + 4 : axis;
		for (size_t i = 0; i < n; i++) {
			int idx[4];
			unravel(i, d, 4, idx);
			double mx = -INFINITY, sum = 0;
			for (int k = 0; k < d[a]; k++) {
				int j[4] = {idx[0], idx[1], idx[2], idx[3]};
				j[a] = k;
				double t = v[((j[0] * 3 + j[1]) * 5 + j[2]) * 7 + j[3]];
				mx = t > mx ? t : mx;
			}
			for (int k = 0; k < d[a]; k++) {
				int j[4] = {idx[0], idx[1], idx[2], idx[3]};
				j[a] = k;
				sum += exp(v[((j[0] * 3 + j[1]) * 5 + j[2]) * 7 + j[3]] - mx);
			}
			ref[i] = exp(v[i] - mx) / sum;
		}
		check_f16(body, y, ref, n, 1e-3);
		free(v);
		free(ref);
		free(x);
		free(y);
	}
	/* default axis (-1), fp32, one long row */
	double *v;
	float *x = rf32(3000, -30, 30, &v), *y = malloc(3000 * 4);
	double mx = -INFINITY, sum = 0, *ref = malloc(3000 * sizeof *ref);
	compile_run(prog("tensor<fp32, [1, 3000]> x", "y", "        tensor<fp32, [1, 3000]> y = softmax(x = x);"),
	            (const void *[]){x}, (void *[]){y});
	for (int i = 0; i < 3000; i++)
		mx = v[i] > mx ? v[i] : mx;
	for (int i = 0; i < 3000; i++)
		sum += exp(v[i] - mx);
	for (int i = 0; i < 3000; i++)
		ref[i] = exp(v[i] - mx) / sum;
	check_f32("softmax fp32", y, ref, 3000, 1e-6);
	free(v);
	free(ref);
	free(x);
	free(y);
}

Test(ops, reductions)
{
	static const char *names[] = {"reduce_sum", "reduce_mean", "reduce_max", "reduce_min"};
	static const char *axes[] = {"[1]", "[-1]", "[0, 2]", "[0, 1, 2, 3]", "[3, 1]", NULL};
	static const int naxes[] = {1, 1, 2, 4, 2, 0};
	int d[4] = {3, 4, 5, 6};
	size_t n = prod(d, 4);
	for (int op = 0; op < 4; op++)
		for (int a = 0; a < 6; a++)
			for (int keep = 0; keep < 2; keep++) {
				bool red[4] = {false, false, false, false};
				if (!axes[a]) {
					red[0] = red[1] = red[2] = red[3] = true;
				} else {
					for (const char *q = axes[a]; *q; q++) {
						if (*q == '-')
							red[4 - (q[1] - '0')] = true, q++;
						else if (*q >= '0' && *q <= '9')
							red[*q - '0'] = true;
					}
				}
				int od[4], orank = 0, cnt = 1;
				for (int k = 0; k < 4; k++) {
					if (!red[k])
						od[orank++] = d[k];
					else {
						cnt *= d[k];
						if (keep)
							od[orank++] = 1;
					}
				}
				size_t no = prod(od, orank);
				double *v, *ref = malloc(no * sizeof *ref);
				uint16_t *x = rf16(n, -2, 2, &v), *y = malloc(no * 2 + 2);
				for (size_t i = 0; i < no; i++)
					ref[i] = op == 2 ? -INFINITY : op == 3 ? INFINITY : 0;
				for (size_t i = 0; i < n; i++) {
					int idx[4];
					unravel(i, d, 4, idx);
					size_t o = 0;
					for (int k = 0; k < 4; k++)
						if (!red[k])
							o = o * (size_t)d[k] + (size_t)idx[k];
					double t = v[i];
					ref[o] = op <= 1 ? ref[o] + t : op == 2 ? fmax(ref[o], t) : fmin(ref[o], t);
				}
				if (op == 1)
					for (size_t i = 0; i < no; i++)
						ref[i] /= cnt;
				char args[128], tout[64], body[256];
				if (axes[a])
					snprintf(args, sizeof args, ", axes = tensor<int32, [%d]>(%s), keep_dims = %s", naxes[a], axes[a],
					         keep ? "true" : "false");
				else
					snprintf(args, sizeof args, ", keep_dims = %s", keep ? "true" : "false");
				if (orank)
					snprintf(tout, sizeof tout, "tensor<fp16, %s>", shs(od, orank));
				else
					snprintf(tout, sizeof tout, "fp16");
				snprintf(body, sizeof body, "%s(x = x%s)", names[op], args);
				run1_f16("tensor<fp16, [3, 4, 5, 6]>", tout, body, x, y);
				check_f16(body, y, ref, no, 2e-3);
				free(v);
				free(ref);
				free(x);
				free(y);
			}
}

static void layer_norm_case(const int *d, int r, const char *axes, const bool *red, bool gamma, bool beta)
{
	size_t n = prod(d, r);
	int gd[8], gr = 0;
	for (int k = 0; k < r; k++)
		if (red[k])
			gd[gr++] = d[k];
	size_t ng = prod(gd, gr);
	double *v, *vg, *vb, *ref = malloc(n * sizeof *ref);
	uint16_t *x = rf16(n, -3, 3, &v), *g = rf16(ng, 0.5, 1.5, &vg), *b = rf16(ng, -1, 1, &vb);
	uint16_t *y = malloc(n * 2);
	char inputs[200], body[300], tx[64];
	snprintf(tx, sizeof tx, "tensor<fp16, %s>", shs(d, r));
	snprintf(inputs, sizeof inputs, "%s x, tensor<fp16, %s> g, tensor<fp16, %s> b", tx, shs(gd, gr), shs(gd, gr));
	snprintf(body, sizeof body, "layer_norm(x = x%s%s%s%s, epsilon = fp16(0.001))", axes ? ", axes = " : "",
	         axes ? axes : "", gamma ? ", gamma = g" : "", beta ? ", beta = b" : "");
	compile_run(prog(inputs, "y", "        %s y = %s;", tx, body), (const void *[]){x, g, b}, (void *[]){y});
	/* reference: for every kept index, mean/var over the reduced ones */
	for (size_t i = 0; i < n; i++) {
		int idx[8];
		unravel(i, d, r, idx);
		double s = 0, s2 = 0;
		int cnt = 0;
		for (size_t j = 0; j < n; j++) {
			int jdx[8];
			unravel(j, d, r, jdx);
			bool same = true;
			for (int k = 0; k < r; k++)
				if (!red[k] && jdx[k] != idx[k])
					same = false;
			if (same) {
				s += v[j];
				cnt++;
			}
		}
		double mean = s / cnt;
		for (size_t j = 0; j < n; j++) {
			int jdx[8];
			unravel(j, d, r, jdx);
			bool same = true;
			for (int k = 0; k < r; k++)
				if (!red[k] && jdx[k] != idx[k])
					same = false;
			if (same)
				s2 += (v[j] - mean) * (v[j] - mean);
		}
		size_t gi = 0;
		for (int k = 0; k < r; k++)
			if (red[k])
				gi = gi * (size_t)d[k] + (size_t)idx[k];
		double t = (v[i] - mean) / sqrt(s2 / cnt + h2d(anes_f32_to_f16_soft(0.001f)));
		ref[i] = t * (gamma ? vg[gi] : 1) + (beta ? vb[gi] : 0);
	}
	check_f16(body, y, ref, n, 3e-3);
	free(v);
	free(vg);
	free(vb);
	free(ref);
	free(x);
	free(g);
	free(b);
	free(y);
}

Test(ops, layer_norm)
{
	int d1[3] = {2, 5, 16};
	bool r1[3] = {false, false, true};
	layer_norm_case(d1, 3, "tensor<int32, [1]>([-1])", r1, true, true);
	layer_norm_case(d1, 3, "tensor<int32, [1]>([2])", r1, false, false);
	int d2[4] = {2, 8, 1, 7};    /* the ANE layout, normalize channels */
	bool r2[4] = {false, true, false, false};
	layer_norm_case(d2, 4, "tensor<int32, [1]>([1])", r2, true, true);
	bool r3[4] = {false, true, true, false};
	layer_norm_case(d2, 4, "tensor<int32, [2]>([1, 2])", r3, true, false);
	int d4[2] = {3, 4};
	bool r4[2] = {true, true};
	layer_norm_case(d4, 2, NULL, r4, true, true);
	/* separated axes are refused at compile time */
	cr_assert_eq(compile_err(prog("tensor<fp16, [2, 3, 4]> x", "y",
	                              "        tensor<fp16, [2, 3, 4]> y = layer_norm(x = x, axes = tensor<int32, [2]>([0, 2]));")),
	             -ENOTSUP);
	cr_assert(strstr(errbuf, "line 4: op 'layer_norm' (y): ") == errbuf, "%s", errbuf);
}

/* ---- matmul, linear ---- */

typedef struct mcase {
	int xr, yr;
	int x[4], y[4];
	bool tx, ty;
} mcase;

static const mcase mcases[] = {
	{2, 2, {5, 7}, {7, 3}, false, false},
	{2, 2, {7, 5}, {7, 3}, true, false},
	{2, 2, {5, 7}, {3, 7}, false, true},
	{2, 2, {7, 5}, {3, 7}, true, true},
	{3, 2, {4, 5, 7}, {7, 3}, false, false},
	{2, 3, {5, 7}, {4, 7, 3}, false, false},
	{4, 3, {2, 1, 7, 5}, {3, 3, 7}, true, true},
	{3, 3, {1, 64, 33}, {1, 33, 65}, false, false},
	{1, 2, {7}, {7, 3}, false, false},
	{2, 1, {5, 7}, {7}, false, false},
	{2, 2, {1, 300}, {300, 1}, false, false},
};

static void matmul_case(const mcase *c, bool f32, bool y_const)
{
	const char *dt = f32 ? "fp32" : "fp16";
	int xs[4], ys[4];
	memcpy(xs, c->x, sizeof xs);
	memcpy(ys, c->y, sizeof ys);
	int m, k, n;
	if (c->xr == 1) {
		m = 1;
		k = xs[0];
	} else {
		m = xs[c->xr - (c->tx ? 1 : 2)];
		k = xs[c->xr - (c->tx ? 2 : 1)];
	}
	n = c->yr == 1 ? 1 : ys[c->yr - (c->ty ? 2 : 1)];
	int bx = c->xr > 2 ? c->xr - 2 : 0, by = c->yr > 2 ? c->yr - 2 : 0, br = bx > by ? bx : by;
	int bs[4], os[6], orank = 0;
	for (int i = 0; i < br; i++) {
		int a = i < br - bx ? 1 : xs[i - (br - bx)], b = i < br - by ? 1 : ys[i - (br - by)];
		bs[i] = a > b ? a : b;
		os[orank++] = bs[i];
	}
	if (c->xr >= 2)
		os[orank++] = m;
	if (c->yr >= 2)
		os[orank++] = n;
	size_t nx = prod(xs, c->xr), ny = prod(ys, c->yr), no = prod(os, orank), nb = prod(bs, br);
	double *vx, *vy, *ref = malloc(no * sizeof *ref);
	void *x = f32 ? (void *)rf32(nx, -1, 1, &vx) : (void *)rf16(nx, -1, 1, &vx);
	void *y = f32 ? (void *)rf32(ny, -1, 1, &vy) : (void *)rf16(ny, -1, 1, &vy);
	void *z = malloc(no * 4 + 4);
	char inputs[200], tz[64];
	static char lit[400000], body[sizeof lit + 1024];
	snprintf(tz, sizeof tz, "tensor<%s, %s>", dt, shs(os, orank));
	if (y_const) {
		int o = 0;
		for (size_t i = 0; i < ny; i++)
			o += snprintf(lit + o, sizeof lit - (size_t)o, "%s%.9g", i ? ", " : "", vy[i]);
		snprintf(inputs, sizeof inputs, "tensor<%s, %s> x", dt, shs(xs, c->xr));
		snprintf(body, sizeof body,
		         "        tensor<%s, %s> w = const()[name = string(\"w\"), val = tensor<%s, %s>([%s])];\n"
		         "        %s z = matmul(x = x, y = w, transpose_x = %s, transpose_y = %s);",
		         dt, shs(ys, c->yr), dt, shs(ys, c->yr), lit, tz, c->tx ? "true" : "false", c->ty ? "true" : "false");
	} else {
		snprintf(inputs, sizeof inputs, "tensor<%s, %s> x, tensor<%s, %s> y", dt, shs(xs, c->xr), dt, shs(ys, c->yr));
		snprintf(body, sizeof body, "        %s z = matmul(x = x, y = y, transpose_x = %s, transpose_y = %s);", tz,
		         c->tx ? "true" : "false", c->ty ? "true" : "false");
	}
	compile_run(prog(inputs, "z", "%s", body), (const void *[]){x, y}, (void *[]){z});
	for (size_t b = 0; b < nb; b++) {
		int bi[4];
		unravel(b, bs, br, bi);
		size_t xb = bx ? bidx(bi, br, xs, bx) : 0, ybb = by ? bidx(bi, br, ys, by) : 0;
		for (int i = 0; i < m; i++)
			for (int j = 0; j < n; j++) {
				double s = 0;
				for (int t = 0; t < k; t++) {
					double a = c->tx ? vx[xb * (size_t)(m * k) + (size_t)(t * m + i)]
					                 : vx[xb * (size_t)(m * k) + (size_t)(i * k + t)];
					double bb = c->ty ? vy[ybb * (size_t)(k * n) + (size_t)(j * k + t)]
					                  : vy[ybb * (size_t)(k * n) + (size_t)(t * n + j)];
					s += a * bb;
				}
				ref[b * (size_t)(m * n) + (size_t)(i * n + j)] = s;
			}
	}
	char what[64];
	snprintf(what, sizeof what, "matmul %s tx=%d ty=%d const=%d", dt, c->tx, c->ty, y_const);
	if (f32)
		check_f32(what, z, ref, no, 1e-5);
	else
		check_f16(what, z, ref, no, 1.5e-3);
	free(vx);
	free(vy);
	free(ref);
	free(x);
	free(y);
	free(z);
}

Test(ops, matmul_transposes_and_broadcast)
{
	for (size_t c = 0; c < sizeof mcases / sizeof mcases[0]; c++)
		for (int f32 = 0; f32 < 2; f32++)
			for (int cst = 0; cst < 2; cst++)
				matmul_case(&mcases[c], f32, cst);
}

Test(ops, linear)
{
	for (int bias = 0; bias < 2; bias++) {
		enum { DIN = 24, DOUT = 10, M = 6 };
		double *vx, *vw, *vb, ref[2 * M * DOUT];
		uint16_t *x = rf16(2 * M * DIN, -1, 1, &vx), *w = rf16(DOUT * DIN, -1, 1, &vw), *b = rf16(DOUT, -1, 1, &vb);
		uint16_t y[2 * M * DOUT];
		char inputs[200];
		snprintf(inputs, sizeof inputs, "tensor<fp16, [2, %d, %d]> x, tensor<fp16, [%d, %d]> w, tensor<fp16, [%d]> b",
		         M, DIN, DOUT, DIN, DOUT);
		compile_run(prog(inputs, "y", "        tensor<fp16, [2, %d, %d]> y = linear(x = x, weight = w%s);",
		                 M, DOUT, bias ? ", bias = b" : ""), (const void *[]){x, w, b}, (void *[]){y});
		for (int i = 0; i < 2 * M; i++)
			for (int o = 0; o < DOUT; o++) {
				double s = bias ? vb[o] : 0;
				for (int t = 0; t < DIN; t++)
					s += vx[i * DIN + t] * vw[o * DIN + t];
				ref[i * DOUT + o] = s;
			}
		check_f16("linear", y, ref, 2 * M * DOUT, 1.5e-3);
		free(vx);
		free(vw);
		free(vb);
		free(x);
		free(w);
		free(b);
	}
}

/* ---- conv ---- */

typedef struct ccase {
	int n, cin, h, w, cout, kh, kw, sh, sw, dh, dw, groups;
	const char *pad_type;
	int pad[4];
	bool bias, one_d;
} ccase;

static const ccase ccases[] = {
	{1, 16, 1, 20, 24, 1, 1, 1, 1, 1, 1, 1, "valid", {0}, true, false},       /* pointwise (linear layer) */
	{2, 6, 7, 9, 5, 3, 3, 1, 1, 1, 1, 1, "same", {0}, true, false},
	{1, 4, 9, 8, 6, 3, 2, 2, 2, 1, 1, 1, "valid", {0}, false, false},
	{1, 4, 9, 8, 6, 3, 3, 1, 2, 2, 1, 1, "custom", {1, 2, 0, 3}, true, false},
	{1, 6, 5, 5, 4, 3, 3, 1, 1, 1, 1, 2, "same", {0}, true, false},           /* groups */
	{1, 8, 6, 6, 8, 3, 3, 1, 1, 1, 1, 8, "same", {0}, false, false},          /* depthwise */
	{1, 3, 6, 7, 2, 2, 4, 2, 1, 1, 1, 1, "same_lower", {0}, true, false},
	{2, 5, 1, 17, 3, 1, 3, 1, 2, 1, 2, 1, "custom", {0, 0, 2, 1}, true, true}, /* 1-D */
	{1, 4, 1, 12, 4, 1, 1, 1, 1, 1, 1, 1, "same", {0}, false, true},          /* 1-D pointwise */
};

static int conv_out(int d, int k, int s, int dl, const char *pt, int pb, int pe)
{
	if (strcmp(pt, "same") == 0 || strcmp(pt, "same_lower") == 0)
		return (d + s - 1) / s;
	if (strcmp(pt, "valid") == 0)
		pb = pe = 0;
	return (d + pb + pe - dl * (k - 1) - 1) / s + 1;
}

static void conv_case(const ccase *c)
{
	int oh = conv_out(c->h, c->kh, c->sh, c->dh, c->pad_type, c->pad[0], c->pad[1]);
	int ow = conv_out(c->w, c->kw, c->sw, c->dw, c->pad_type, c->pad[2], c->pad[3]);
	int cin_g = c->cin / c->groups, cout_g = c->cout / c->groups;
	int pt = c->pad[0], pl = c->pad[2];
	if (strcmp(c->pad_type, "valid") == 0)
		pt = pl = 0;
	if (strncmp(c->pad_type, "same", 4) == 0) {
		int th = (oh - 1) * c->sh + (c->kh - 1) * c->dh + 1 - c->h, tw = (ow - 1) * c->sw + (c->kw - 1) * c->dw + 1 - c->w;
		th = th < 0 ? 0 : th;
		tw = tw < 0 ? 0 : tw;
		bool lower = strcmp(c->pad_type, "same_lower") == 0;
		pt = lower ? th - th / 2 : th / 2;
		pl = lower ? tw - tw / 2 : tw / 2;
	}
	size_t nx = (size_t)(c->n * c->cin * c->h * c->w), nw = (size_t)(c->cout * cin_g * c->kh * c->kw);
	size_t no = (size_t)(c->n * c->cout * oh * ow);
	double *vx, *vw, *vb, *ref = malloc(no * sizeof *ref);
	uint16_t *x = rf16(nx, -1, 1, &vx), *w = rf16(nw, -1, 1, &vw), *b = rf16((size_t)c->cout, -1, 1, &vb);
	uint16_t *y = malloc(no * 2);
	char inputs[256], args[256], tx[64], tw_[64], ty[64];
	if (c->one_d) {
		snprintf(tx, sizeof tx, "[%d, %d, %d]", c->n, c->cin, c->w);
		snprintf(tw_, sizeof tw_, "[%d, %d, %d]", c->cout, cin_g, c->kw);
		snprintf(ty, sizeof ty, "[%d, %d, %d]", c->n, c->cout, ow);
		snprintf(args, sizeof args,
		         "strides = tensor<int32, [1]>([%d]), dilations = tensor<int32, [1]>([%d]), pad_type = string(\"%s\")%s",
		         c->sw, c->dw, c->pad_type, "");
		if (strcmp(c->pad_type, "custom") == 0) {
			size_t l = strlen(args);
			snprintf(args + l, sizeof args - l, ", pad = tensor<int32, [2]>([%d, %d])", c->pad[2], c->pad[3]);
		}
	} else {
		snprintf(tx, sizeof tx, "[%d, %d, %d, %d]", c->n, c->cin, c->h, c->w);
		snprintf(tw_, sizeof tw_, "[%d, %d, %d, %d]", c->cout, cin_g, c->kh, c->kw);
		snprintf(ty, sizeof ty, "[%d, %d, %d, %d]", c->n, c->cout, oh, ow);
		snprintf(args, sizeof args,
		         "strides = tensor<int32, [2]>([%d, %d]), dilations = tensor<int32, [2]>([%d, %d]), pad_type = string(\"%s\"), "
		         "pad = tensor<int32, [4]>([%d, %d, %d, %d])",
		         c->sh, c->sw, c->dh, c->dw, c->pad_type, c->pad[0], c->pad[1], c->pad[2], c->pad[3]);
	}
	snprintf(inputs, sizeof inputs, "tensor<fp16, %s> x, tensor<fp16, %s> w, tensor<fp16, [%d]> b", tx, tw_, c->cout);
	compile_run(prog(inputs, "y", "        tensor<fp16, %s> y = conv(x = x, weight = w, %s, groups = %d%s);",
	                 ty, args, c->groups, c->bias ? ", bias = b" : ""), (const void *[]){x, w, b}, (void *[]){y});
	for (int bn = 0; bn < c->n; bn++)
		for (int co = 0; co < c->cout; co++)
			for (int i = 0; i < oh; i++)
				for (int j = 0; j < ow; j++) {
					int g = co / cout_g;
					double s = c->bias ? vb[co] : 0;
					for (int ci = 0; ci < cin_g; ci++)
						for (int a = 0; a < c->kh; a++)
							for (int e = 0; e < c->kw; e++) {
								int iy = i * c->sh + a * c->dh - pt, ix = j * c->sw + e * c->dw - pl;
								if (iy < 0 || ix < 0 || iy >= c->h || ix >= c->w)
									continue;
								s += vx[((size_t)(bn * c->cin + g * cin_g + ci) * (size_t)c->h + (size_t)iy) * (size_t)c->w + (size_t)ix] *
								     vw[((size_t)(co * cin_g + ci) * (size_t)c->kh + (size_t)a) * (size_t)c->kw + (size_t)e];
							}
					ref[((size_t)(bn * c->cout + co) * (size_t)oh + (size_t)i) * (size_t)ow + (size_t)j] = s;
				}
	char what[96];
	snprintf(what, sizeof what, "conv %s %dx%d groups %d", c->pad_type, c->kh, c->kw, c->groups);
	check_f16(what, y, ref, no, 1.5e-3);
	free(vx);
	free(vw);
	free(vb);
	free(ref);
	free(x);
	free(w);
	free(b);
	free(y);
}

Test(ops, conv)
{
	for (size_t c = 0; c < sizeof ccases / sizeof ccases[0]; c++)
		conv_case(&ccases[c]);
}

/* ---- the built-in GEMM (ANESHARE_CPU_GEMM=builtin), threaded ---- */

Test(ops, builtin_gemm)
{
	B->ops->destroy(B);
	setenv("ANESHARE_CPU_GEMM", "builtin", 1);
	cr_assert_eq(anes_cpu_backend_new(2, &B), 0);
	static const mcase big[] = {
		{2, 2, {150, 300}, {300, 77}, false, false},   /* edge tiles, k > one block, several M blocks */
		{2, 2, {300, 150}, {77, 300}, true, true},
		{3, 3, {3, 13, 5}, {3, 5, 2100}, false, false}, /* n > one block */
	};
	for (size_t c = 0; c < sizeof big / sizeof big[0]; c++)
		for (int f32 = 0; f32 < 2; f32++)
			matmul_case(&big[c], f32, false);
	for (size_t c = 0; c < sizeof ccases / sizeof ccases[0]; c++)
		conv_case(&ccases[c]);
	for (size_t c = 0; c < sizeof mcases / sizeof mcases[0]; c++)
		matmul_case(&mcases[c], false, true);
}

/* ---- strict mode ---- */

Test(ops, strict_mode_models_fp16_accumulation)
{
	enum { M = 8, K = 512, N = 16 };
	double *vx, *vy;
	uint16_t *x = rf16(M * K, 0, 1, &vx), *y = rf16(K * N, 0, 1, &vy);
	uint16_t z0[M * N], z1[M * N];
	const char *text = prog("tensor<fp16, [8, 512]> x, tensor<fp16, [512, 16]> y", "z",
	                        "        tensor<fp16, [8, 16]> z = matmul(x = x, y = y);");
	const void *in[] = {x, y};
	void *o0[] = {z0}, *o1[] = {z1};
	anes_bprogram *p = compile_ok(text);
	run_ok(p, 0, in, o0);
	B->ops->program_free(B, p);
	B->ops->destroy(B);
	setenv("ANESHARE_CPU_STRICT", "1", 1);
	cr_assert_eq(anes_cpu_backend_new(0, &B), 0);
	p = compile_ok(text);
	run_ok(p, 0, in, o1);
	B->ops->program_free(B, p);
	/* model: running sum rounded to fp16 after every 32 products */
	double err0 = 0, err1 = 0;
	int differ = 0;
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++) {
			double exact = 0;
			float acc = 0;
			for (int k0 = 0; k0 < K; k0 += 32) {
				float part = 0;
				for (int k = k0; k < k0 + 32; k++) {
					part += (float)(vx[i * K + k] * vy[k * N + j]);
					exact += vx[i * K + k] * vy[k * N + j];
				}
				acc = anes_f16_to_f32_soft(anes_f32_to_f16_soft(acc + part));
			}
			double g0 = h2d(z0[i * N + j]), g1 = h2d(z1[i * N + j]);
			/* the chunk sums may differ in their last fp32 bits: one fp16 ulp of slack per chunk */
			cr_assert(fabs(g1 - acc) <= 16 * 0.125, "strict [%d][%d]: %g, model %g", i, j, g1, (double)acc);
			cr_assert(fabs(g0 - exact) <= fabs(exact) * 1e-3, "default [%d][%d]: %g, exact %g", i, j, g0, exact);
			err0 += fabs(g0 - exact);
			err1 += fabs(g1 - exact);
			differ += z0[i * N + j] != z1[i * N + j];
		}
	cr_assert(differ > 0, "strict mode changed nothing");
	cr_assert(err1 > err0, "strict mode should lose precision (%g vs %g)", err1, err0);
	unsetenv("ANESHARE_CPU_STRICT");
	free(vx);
	free(vy);
	free(x);
	free(y);
}

/* ---- shape ops ---- */

/* a single-input fp16 op whose output is a gather of x: out[i] = x[map(i)] */
static void shape_case(const char *tin, const int *din, int rin, const char *tout, size_t nout, const char *body,
                       size_t (*map)(size_t, const void *), const void *ctx)
{
	size_t n = prod(din, rin);
	double *v, *ref = malloc(nout * sizeof *ref);
	uint16_t *x = rf16(n, -4, 4, &v), *y = malloc(nout * 2 + 2);
	run1_f16(tin, tout, body, x, y);
	for (size_t i = 0; i < nout; i++)
		ref[i] = v[map(i, ctx)];
	check_f16(body, y, ref, nout, 0);
	free(v);
	free(ref);
	free(x);
	free(y);
}

typedef struct sl_ctx {
	int od[4], orank;
	int b[4], s[4];          /* per output dim (squeezed dims removed) */
	int din[4];
	int base;
} sl_ctx;

static size_t sl_map(size_t i, const void *vc)
{
	const sl_ctx *c = vc;
	int idx[4];
	unravel(i, c->od, c->orank, idx);
	long off = c->base;
	for (int k = 0; k < c->orank; k++)
		off += (long)(c->b[k] + idx[k] * c->s[k]);
	return (size_t)off;
}

Test(ops, slice_by_index)
{
	/* x [4, 6, 5]; strides of x: 30, 5, 1 */
	int din[3] = {4, 6, 5};
	const char *tin = "tensor<fp16, [4, 6, 5]>";
	/* 1: begin [1, 0, 1], end [3, 6, 5], stride [1, 2, 2] -> [2, 3, 2] */
	sl_ctx c1 = {{2, 3, 2}, 3, {30, 0, 1}, {30, 10, 2}, {0}, 0};
	shape_case(tin, din, 3, "tensor<fp16, [2, 3, 2]>", 12,
	           "slice_by_index(x = x, begin = tensor<int32, [3]>([1, 0, 1]), end = tensor<int32, [3]>([3, 6, 5]), "
	           "stride = tensor<int32, [3]>([1, 2, 2]))", sl_map, &c1);
	/* 2: negative stride on axis 1 from the end (begin_mask), negative begin/end on axis 2 */
	sl_ctx c2 = {{4, 6, 2}, 3, {0, 25, 2}, {30, -5, 1}, {0}, 0};
	shape_case(tin, din, 3, "tensor<fp16, [4, 6, 2]>", 48,
	           "slice_by_index(x = x, begin = tensor<int32, [3]>([0, 0, -3]), end = tensor<int32, [3]>([0, 0, -1]), "
	           "stride = tensor<int32, [3]>([1, -1, 1]), begin_mask = tensor<bool, [3]>([true, true, false]), "
	           "end_mask = tensor<bool, [3]>([true, true, false]))", sl_map, &c2);
	/* 3: squeeze axis 0 at index 2, stride 3 on axis 2 */
	sl_ctx c3 = {{6, 2}, 2, {60, 0}, {5, 3}, {0}, 0};
	shape_case(tin, din, 3, "tensor<fp16, [6, 2]>", 12,
	           "slice_by_index(x = x, begin = tensor<int32, [3]>([2, 0, 0]), end = tensor<int32, [3]>([3, 6, 5]), "
	           "stride = tensor<int32, [3]>([1, 1, 3]), squeeze_mask = tensor<bool, [3]>([true, false, false]))",
	           sl_map, &c3);
	/* 4: out-of-range end is clamped; stride -2 without masks */
	sl_ctx c4 = {{2, 6, 5}, 3, {90, 0, 0}, {-60, 5, 1}, {0}, 0};
	shape_case(tin, din, 3, "tensor<fp16, [2, 6, 5]>", 60,
	           "slice_by_index(x = x, begin = tensor<int32, [3]>([3, 0, 0]), end = tensor<int32, [3]>([-10, 100, 100]), "
	           "stride = tensor<int32, [3]>([-2, 1, 1]))", sl_map, &c4);
	/* an empty slice is an error */
	compile_err(prog("tensor<fp16, [4]> x", "y",
	                 "        tensor<fp16, [1]> y = slice_by_index(x = x, begin = tensor<int32, [1]>([3]), end = tensor<int32, [1]>([1]));"));
	cr_assert(strstr(errbuf, "is empty"), "%s", errbuf);
}

typedef struct tile_ctx {
	int od[3], id[3];
} tile_ctx;

static size_t tile_map(size_t i, const void *vc)
{
	const tile_ctx *c = vc;
	int idx[3];
	unravel(i, c->od, 3, idx);
	return (size_t)(((idx[0] % c->id[0]) * c->id[1] + idx[1] % c->id[1]) * c->id[2] + idx[2] % c->id[2]);
}

typedef struct pad_ctx {
	int od[3], id[3], before[3];
	int mode;
} pad_ctx;

static size_t pad_map(size_t i, const void *vc)
{
	const pad_ctx *c = vc;
	int idx[3];
	unravel(i, c->od, 3, idx);
	size_t off = 0;
	for (int k = 0; k < 3; k++) {
		int s = idx[k] - c->before[k], n = c->id[k];
		if (s < 0)
			s = c->mode == 1 ? -s : 0;
		if (s >= n)
			s = c->mode == 1 ? 2 * (n - 1) - s : n - 1;
		off = off * (size_t)n + (size_t)s;
	}
	return off;
}

static size_t ident_map(size_t i, const void *c)
{
	(void)c;
	return i;
}

Test(ops, expand_squeeze_tile_pad)
{
	int d[3] = {2, 3, 4};
	const char *tin = "tensor<fp16, [2, 3, 4]>";
	shape_case(tin, d, 3, "tensor<fp16, [1, 2, 3, 1, 4]>", 24,
	           "expand_dims(x = x, axes = tensor<int32, [2]>([0, -2]))", ident_map, NULL);
	int d1[5] = {1, 2, 1, 3, 1};
	shape_case("tensor<fp16, [1, 2, 1, 3, 1]>", d1, 5, "tensor<fp16, [2, 3]>", 6, "squeeze(x = x)", ident_map, NULL);
	shape_case("tensor<fp16, [1, 2, 1, 3, 1]>", d1, 5, "tensor<fp16, [2, 1, 3, 1]>", 6,
	           "squeeze(x = x, axes = tensor<int32, [1]>([0]))", ident_map, NULL);
	int d2[3] = {1, 1, 1};
	shape_case("tensor<fp16, [1, 1, 1]>", d2, 3, "fp16", 1, "squeeze(x = x)", ident_map, NULL);
	tile_ctx tc = {{4, 3, 12}, {2, 3, 4}};
	shape_case(tin, d, 3, "tensor<fp16, [4, 3, 12]>", 144, "tile(x = x, reps = tensor<int32, [3]>([2, 1, 3]))",
	           tile_map, &tc);
	static const char *modes[] = {"constant", "reflect", "replicate"};
	for (int m = 1; m < 3; m++) {
		pad_ctx pc = {{2, 6, 7}, {2, 3, 4}, {0, 2, 1}, m};
		char body[160];
		snprintf(body, sizeof body, "pad(x = x, pad = tensor<int32, [4]>([2, 1, 1, 2]), mode = string(\"%s\"))",
		         modes[m]);
		shape_case(tin, d, 3, "tensor<fp16, [2, 6, 7]>", 84, body, pad_map, &pc);
	}
	/* constant mode: outside is constant_val */
	double *v;
	uint16_t *x = rf16(24, -4, 4, &v), y[2 * 6 * 7];
	run1_f16(tin, "tensor<fp16, [2, 6, 7]>",
	         "pad(x = x, pad = tensor<int32, [4]>([2, 1, 1, 2]), constant_val = fp16(7.5))", x, y);
	for (int i = 0; i < 84; i++) {
		int idx[3], od[3] = {2, 6, 7};
		unravel((size_t)i, od, 3, idx);
		int a = idx[1] - 2, b = idx[2] - 1;
		double want = (a < 0 || a >= 3 || b < 0 || b >= 4) ? 7.5 : v[(idx[0] * 3 + a) * 4 + b];
		cr_assert_eq(h2d(y[i]), want, "pad constant [%d]", i);
	}
	free(v);
	free(x);
	/* reflect needs pad < dim */
	compile_err(prog("tensor<fp16, [2, 3]> x", "y",
	                 "        tensor<fp16, [2, 9]> y = pad(x = x, pad = tensor<int32, [2]>([3, 3]), mode = string(\"reflect\"));"));
	cr_assert(strstr(errbuf, "reflect"), "%s", errbuf);
}

Test(ops, split_and_concat)
{
	/* both ways of writing several outputs */
	const char *text = prog("tensor<fp16, [2, 7, 3]> x", "a, b, c, d, e",
		"        (tensor<fp16, [2, 2, 3]> a, tensor<fp16, [2, 4, 3]> b, tensor<fp16, [2, 1, 3]> c) = split(x = x, "
		"split_sizes = tensor<int32, [3]>([2, 4, 1]), axis = int32(1));\n"
		"        tensor<fp16, [1, 7, 3]> d, tensor<fp16, [1, 7, 3]> e = split(x = x, num_splits = int32(2), axis = int32(-3));\n");
	anes_bprogram *p = compile_ok(text);
	cr_assert_eq(p->functions[0].n_outputs, 5);
	double *v;
	uint16_t *x = rf16(42, -4, 4, &v), a[12], b[24], c[6], d[21], e[21];
	const void *in[] = {x};
	void *out[] = {a, b, c, d, e};
	run_ok(p, 0, in, out);
	for (int i = 0; i < 2; i++)
		for (int j = 0; j < 7; j++)
			for (int k = 0; k < 3; k++) {
				double want = v[(i * 7 + j) * 3 + k], got;
				if (j < 2)
					got = h2d(a[(i * 2 + j) * 3 + k]);
				else if (j < 6)
					got = h2d(b[(i * 4 + j - 2) * 3 + k]);
				else
					got = h2d(c[i * 3 + k]);
				cr_assert_eq(got, want);
				cr_assert_eq(h2d(i ? e[j * 3 + k] : d[j * 3 + k]), want);
			}
	B->ops->program_free(B, p);
	/* concat with interleave of three inputs */
	p = compile_ok(prog("tensor<fp16, [2, 7, 3]> x", "y",
		"        (tensor<fp16, [2, 7, 1]> a, tensor<fp16, [2, 7, 1]> b, tensor<fp16, [2, 7, 1]> c) = split(x = x, num_splits = int32(3), axis = int32(2));\n"
		"        tensor<fp16, [2, 21, 1]> y = concat(values = (a, b, c), axis = int32(1), interleave = true);\n"));
	uint16_t y[42];
	void *out2[] = {y};
	run_ok(p, 0, in, out2);
	for (int i = 0; i < 2; i++)
		for (int j = 0; j < 7; j++)
			for (int k = 0; k < 3; k++)
				cr_assert_eq(h2d(y[i * 21 + j * 3 + k]), v[(i * 7 + j) * 3 + k]);
	B->ops->program_free(B, p);
	/* wrong number of outputs */
	compile_err(prog("tensor<fp16, [4]> x", "a",
	                 "        (tensor<fp16, [2]> a, tensor<fp16, [2]> b) = split(x = x, num_splits = int32(4), axis = int32(0));"));
	cr_assert(strstr(errbuf, "num_splits"), "%s", errbuf);
	free(v);
	free(x);
}

Test(ops, gather)
{
	double *v;
	uint16_t *x = rf16(5 * 4 * 3, -4, 4, &v), y[5 * 2 * 2 * 3];
	/* runtime int32 indices, axis 1, negative index */
	int32_t idx[4] = {3, -4, 0, -1};
	anes_bprogram *p = compile_ok(prog("tensor<fp16, [5, 4, 3]> x, tensor<int32, [2, 2]> i", "y",
		"        tensor<fp16, [5, 2, 2, 3]> y = gather(x = x, indices = i, axis = int32(1));"));
	const void *in[] = {x, idx};
	void *out[] = {y};
	run_ok(p, 0, in, out);
	for (int a = 0; a < 5; a++)
		for (int t = 0; t < 4; t++)
			for (int c = 0; c < 3; c++) {
				int j = idx[t] < 0 ? idx[t] + 4 : idx[t];
				cr_assert_eq(h2d(y[(a * 4 + t) * 3 + c]), v[(a * 4 + j) * 3 + c]);
			}
	/* out of range at run time: the run fails with a clear error */
	idx[2] = 4;
	cr_assert_eq(B->ops->run(B, p, 0, in, out, errbuf, sizeof errbuf), -EINVAL);
	cr_assert(strstr(errbuf, "op 'gather' (y): indices[2] = 4 is out of range [-4, 4)"), "%s", errbuf);
	idx[2] = INT32_MIN;
	cr_assert_eq(B->ops->run(B, p, 0, in, out, errbuf, sizeof errbuf), -EINVAL);
	B->ops->program_free(B, p);
	/* constant indices (uint8), axis 0: folded at compile time, checked there */
	p = compile_ok(prog("tensor<fp16, [5, 4, 3]> x", "y",
		"        tensor<fp16, [3, 4, 3]> y = gather(x = x, indices = tensor<uint8, [3]>([4, 0, 4]));"));
	const void *in1[] = {x};
	run_ok(p, 0, in1, out);
	for (int t = 0; t < 3; t++)
		for (int k = 0; k < 12; k++)
			cr_assert_eq(h2d(y[t * 12 + k]), v[(t == 1 ? 0 : 4) * 12 + k]);
	B->ops->program_free(B, p);
	compile_err(prog("tensor<fp16, [5, 4, 3]> x", "y",
		"        tensor<fp16, [1, 4, 3]> y = gather(x = x, indices = tensor<int32, [1]>([5]));"));
	cr_assert(strstr(errbuf, "line 4: op 'gather' (y): indices[0] = 5 is out of range"), "%s", errbuf);
	free(v);
	free(x);
}

/* ---- attention ---- */

static void sdpa_case(int nb, const int *bd, int L, int S, int E, int EV, int mask_kind, const char *mshape,
                      int mrank, const int *md)
{
	int qd[6], kd[6], vd[6], od[6], r = nb + 2;
	for (int i = 0; i < nb; i++)
		qd[i] = kd[i] = vd[i] = od[i] = bd[i];
	qd[nb] = L, qd[nb + 1] = E;
	kd[nb] = S, kd[nb + 1] = E;
	vd[nb] = S, vd[nb + 1] = EV;
	od[nb] = L, od[nb + 1] = EV;
	size_t nq = prod(qd, r), nk = prod(kd, r), nv = prod(vd, r), no = prod(od, r), nm = mrank ? prod(md, mrank) : 1;
	double *vq, *vk, *vv, *vm, *ref = malloc(no * sizeof *ref);
	uint16_t *q = rf16(nq, -2, 2, &vq), *k = rf16(nk, -2, 2, &vk), *v = rf16(nv, -1, 1, &vv), *y = malloc(no * 2);
	uint16_t *mf = rf16(nm, -3, 1, &vm);
	uint8_t *mb = malloc(nm + 1);
	for (size_t i = 0; i < nm; i++)
		mb[i] = (rnd() % 3) != 0;
	for (size_t i = 0; i < nm; i += (size_t)S)
		mb[i] = 1;   /* at least one visible key per row */
	char inputs[256];
	snprintf(inputs, sizeof inputs, "tensor<fp16, %s> q, tensor<fp16, %s> k, tensor<fp16, %s> v%s%s%s%s", shs(qd, r),
	         shs(kd, r), shs(vd, r), mask_kind ? ", tensor<" : "", mask_kind == 1 ? "bool, " : mask_kind == 2 ? "fp16, " : "",
	         mask_kind ? mshape : "", mask_kind ? "> m" : "");
	compile_run(prog(inputs, "y",
		"        tensor<fp16, %s> y = scaled_dot_product_attention(query = q, key = k, value = v%s);", shs(od, r),
		mask_kind ? ", attn_mask = m" : ""),
		(const void *[]){q, k, v, mask_kind == 1 ? (const void *)mb : (const void *)mf}, (void *[]){y});
	size_t B_ = prod(bd, nb);
	for (size_t b = 0; b < B_; b++)
		for (int l = 0; l < L; l++) {
			double sc[64], mx = -INFINITY, sum = 0;
			for (int s = 0; s < S; s++) {
				double dot = 0;
				for (int e = 0; e < E; e++)
					dot += vq[(b * (size_t)L + (size_t)l) * (size_t)E + (size_t)e] * vk[(b * (size_t)S + (size_t)s) * (size_t)E + (size_t)e];
				dot /= sqrt((double)E);
				if (mask_kind) {
					int oi[6], bi[6];
					unravel(b, bd, nb, bi);
					for (int i = 0; i < nb; i++)
						oi[i] = bi[i];
					oi[nb] = l;
					oi[nb + 1] = s;
					size_t mi = bidx(oi, r, md, mrank);
					if (mask_kind == 1)
						dot = mb[mi] ? dot : -INFINITY;
					else
						dot += vm[mi];
				}
				sc[s] = dot;
				mx = dot > mx ? dot : mx;
			}
			for (int s = 0; s < S; s++)
				sum += (sc[s] = exp(sc[s] - mx));
			for (int e = 0; e < EV; e++) {
				double acc = 0;
				for (int s = 0; s < S; s++)
					acc += sc[s] / sum * vv[(b * (size_t)S + (size_t)s) * (size_t)EV + (size_t)e];
				ref[(b * (size_t)L + (size_t)l) * (size_t)EV + (size_t)e] = acc;
			}
		}
	check_f16("sdpa", y, ref, no, 2e-3);
	free(vq);
	free(vk);
	free(vv);
	free(vm);
	free(ref);
	free(q);
	free(k);
	free(v);
	free(y);
	free(mf);
	free(mb);
}

Test(ops, scaled_dot_product_attention)
{
	int b1[1] = {3}, b2[2] = {2, 3};
	sdpa_case(1, b1, 5, 7, 8, 6, 0, NULL, 0, NULL);
	int m1[2] = {5, 7};
	sdpa_case(1, b1, 5, 7, 8, 6, 1, "[5, 7]", 2, m1);
	int m2[4] = {2, 1, 4, 9};
	sdpa_case(2, b2, 4, 9, 16, 16, 2, "[2, 1, 4, 9]", 4, m2);
	int m3[1] = {9};
	sdpa_case(2, b2, 4, 9, 16, 5, 1, "[9]", 1, m3);
	int b3[1] = {1};
	sdpa_case(1, b3, 1, 1, 3, 2, 0, NULL, 0, NULL);
	/* mask that does not broadcast */
	compile_err(prog("tensor<fp16, [2, 4, 8]> q, tensor<fp16, [2, 5, 8]> k, tensor<fp16, [2, 5, 8]> v, tensor<bool, [3, 4, 5]> m", "y",
	                 "        tensor<fp16, [2, 4, 8]> y = scaled_dot_product_attention(query = q, key = k, value = v, attn_mask = m);"));
	cr_assert(strstr(errbuf, "attn_mask"), "%s", errbuf);
}

/* ---- quantization and casts ---- */

Test(ops, quantized_weights_and_quantize)
{
	/* constexpr_affine_dequantize: int8 per-channel (axis 0) with int8 zero points, and uint8
	 * per-tensor with an fp32 zero point, both feeding a matmul */
	const char *text = prog("tensor<fp16, [2, 3]> x", "y, z, w",
		"        tensor<fp16, [3, 4]> w = constexpr_affine_dequantize(quantized_data = tensor<int8, [3, 4]>([[-128, -1, 0, 127], [5, 6, 7, 8], [-9, 10, -11, 12]]), "
		"zero_point = tensor<int8, [3]>([0, 1, -2]), scale = tensor<fp16, [3]>([0.5, 0.25, 0.125]), axis = int32(0))[name = string(\"w\")];\n"
		"        tensor<fp32, [4, 3]> u = constexpr_affine_dequantize(quantized_data = tensor<uint8, [4, 3]>([0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255]), "
		"zero_point = fp32(127.5), scale = fp32(0.01), axis = int32(-1));\n"
		"        tensor<fp16, [2, 4]> y = matmul(x = x, y = w);\n"
		"        tensor<fp16, [4, 3]> z = cast(x = u, dtype = string(\"fp16\"));\n");
	static const int8_t q[12] = {-128, -1, 0, 127, 5, 6, 7, 8, -9, 10, -11, 12};
	static const double zp[3] = {0, 1, -2}, sc[3] = {0.5, 0.25, 0.125};
	double *v, ref[8], wref[12];
	uint16_t *x = rf16(6, -1, 1, &v), y[8], z[12], w[12];
	compile_run(text, (const void *[]){x}, (void *[]){y, z, w});
	for (int r = 0; r < 3; r++)
		for (int c = 0; c < 4; c++)
			wref[r * 4 + c] = (q[r * 4 + c] - zp[r]) * sc[r];
	check_f16("dequantized w", w, wref, 12, 0);
	for (int i = 0; i < 2; i++)
		for (int j = 0; j < 4; j++) {
			ref[i * 4 + j] = 0;
			for (int t = 0; t < 3; t++)
				ref[i * 4 + j] += v[i * 3 + t] * wref[t * 4 + j];
		}
	check_f16("matmul with dequantized w", y, ref, 8, 2e-3);
	static const uint8_t uq[12] = {0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255};
	double zr[12];
	for (int i = 0; i < 12; i++)
		zr[i] = (uq[i] - 127.5) * (double)0.01f;
	check_f16("uint8 dequantized", z, zr, 12, 1e-3);
	free(v);
	free(x);

	/* quantize then dequantize, per-channel along axis 1 */
	text = prog("tensor<fp32, [2, 3, 5]> x", "q, d",
		"        tensor<int8, [2, 3, 5]> q = quantize(input = x, zero_point = tensor<int8, [3]>([0, 10, -10]), "
		"scale = tensor<fp32, [3]>([0.01, 0.02, 0.05]), axis = int32(1), output_dtype = string(\"int8\"));\n"
		"        tensor<fp32, [2, 3, 5]> d = dequantize(input = q, zero_point = tensor<int8, [3]>([0, 10, -10]), "
		"scale = tensor<fp32, [3]>([0.01, 0.02, 0.05]), axis = int32(1));\n");
	float *xf = rf32(30, -3, 3, &v), dq[30];
	int8_t qq[30];
	anes_bprogram *p = compile_ok(text);
	const void *in2[] = {xf};
	void *out2[] = {qq, dq};
	run_ok(p, 0, in2, out2);
	B->ops->program_free(B, p);
	static const float s3[3] = {0.01f, 0.02f, 0.05f};
	static const int z3[3] = {0, 10, -10};
	for (int i = 0; i < 30; i++) {
		int c = (i / 5) % 3;
		double t = nearbyint((double)(xf[i] / s3[c])) + z3[c];
		t = t < -128 ? -128 : t > 127 ? 127 : t;
		cr_assert_eq(qq[i], (int8_t)t, "quantize[%d]: %d != %g (x %g)", i, qq[i], t, (double)xf[i]);
		cr_assert(fabs(dq[i] - (t - z3[c]) * s3[c]) < 1e-6, "dequantize[%d]", i);
	}
	/* uint8 output, scalar params, no zero point */
	p = compile_ok(prog("tensor<fp32, [2, 3, 5]> x", "q",
		"        tensor<uint8, [2, 3, 5]> q = quantize(input = x, scale = fp32(0.02), output_dtype = string(\"uint8\"));"));
	uint8_t uq8[30];
	void *out3[] = {uq8};
	run_ok(p, 0, in2, out3);
	for (int i = 0; i < 30; i++) {
		double t = nearbyint((double)(xf[i] / 0.02f));
		cr_assert_eq(uq8[i], (uint8_t)(t < 0 ? 0 : t > 255 ? 255 : t));
	}
	B->ops->program_free(B, p);
	free(v);
	free(xf);
	/* bad quantization parameters */
	compile_err(prog("tensor<fp32, [2, 3]> x", "q",
		"        tensor<int8, [2, 3]> q = quantize(input = x, scale = tensor<fp32, [2]>([1, 2]), axis = int32(1), output_dtype = string(\"int8\"));"));
	cr_assert(strstr(errbuf, "scale"), "%s", errbuf);
}

Test(ops, cast_all_pairs)
{
	static const char *dts[] = {"fp16", "fp32", "int8", "uint8", "int16", "int32"};
	static const int ids[] = {ANES_DT_FP16, ANES_DT_FP32, ANES_DT_INT8, ANES_DT_UINT8, ANES_DT_INT16, ANES_DT_INT32};
	static const double vals[8] = {-300.75, -128, -1.5, 0, 0.5, 2.5, 255.9, 70000};
	for (int a = 0; a < 6; a++)
		for (int b = 0; b < 6; b++) {
			uint8_t in[64], out[64];
			double src[8];
			size_t ea = anes_dtype_size((anes_dtype)ids[a]), eb = anes_dtype_size((anes_dtype)ids[b]);
			for (int i = 0; i < 8; i++) {
				double t = vals[i];
				switch (ids[a]) {
				case ANES_DT_FP16: { uint16_t h = anes_f32_to_f16_soft((float)t); memcpy(in + 2 * i, &h, 2); src[i] = h2d(h); break; }
				case ANES_DT_FP32: { float f = (float)t; memcpy(in + 4 * i, &f, 4); src[i] = f; break; }
				case ANES_DT_INT8: { int8_t v = (int8_t)(t < -128 ? -128 : t > 127 ? 127 : trunc(t)); in[i] = (uint8_t)v; src[i] = v; break; }
				case ANES_DT_UINT8: { uint8_t v = (uint8_t)(t < 0 ? 0 : t > 255 ? 255 : trunc(t)); in[i] = v; src[i] = v; break; }
				case ANES_DT_INT16: { int16_t v = (int16_t)trunc(t < -32768 ? -32768 : t > 32767 ? 32767 : t); memcpy(in + 2 * i, &v, 2); src[i] = v; break; }
				default: { int32_t v = (int32_t)trunc(t); memcpy(in + 4 * i, &v, 4); src[i] = v; break; }
				}
			}
			char decl[64];
			snprintf(decl, sizeof decl, "tensor<%s, [8]> x", dts[a]);
			compile_run(prog(decl, "y", "        tensor<%s, [8]> y = cast(x = x, dtype = string(\"%s\"));",
			                                   dts[b], dts[b]), (const void *[]){in}, (void *[]){out});
			for (int i = 0; i < 8; i++) {
				double want, got;
				double t = src[i];
				switch (ids[b]) {
				case ANES_DT_FP16: { uint16_t h; memcpy(&h, out + 2 * i, 2); got = h2d(h); want = h2d(anes_f32_to_f16_soft((float)t)); break; }
				case ANES_DT_FP32: { float f; memcpy(&f, out + 4 * i, 4); got = f; want = (float)t; break; }
				case ANES_DT_INT8: got = (int8_t)out[i]; want = t < -128 ? -128 : t > 127 ? 127 : trunc(t); break;
				case ANES_DT_UINT8: got = out[i]; want = t < 0 ? 0 : t > 255 ? 255 : trunc(t); break;
				case ANES_DT_INT16: { int16_t v; memcpy(&v, out + 2 * i, 2); got = v; want = t < -32768 ? -32768 : t > 32767 ? 32767 : trunc(t); break; }
				default: { int32_t v; memcpy(&v, out + 4 * i, 4); got = v; want = t < INT32_MIN ? INT32_MIN : t > INT32_MAX ? INT32_MAX : trunc(t); break; }
				}
				cr_assert(got == want, "cast %s -> %s [%d]: %g -> %g, want %g", dts[a], dts[b], i, t, got, want);
			}
			(void)ea;
			(void)eb;
		}
}

/* ---- program structure ---- */

Test(ops, several_functions_run_by_index)
{
	const char *text =
		"program(1.3)\n{\n"
		"  func first<ios18>(tensor<fp16, [4]> a) {\n"
		"    tensor<fp16, [4]> b = exp(x = a);\n"
		"  } -> (b);\n"
		"  func main<ios18>(tensor<fp16, [4]> a) {\n"
		"    tensor<fp16, [4]> b = neg(x = a);\n"
		"  } -> (b);\n"
		"  func third<ios18>(tensor<fp16, [2, 2]> a, tensor<fp16, [2, 2]> c) {\n"
		"    tensor<fp16, [2, 2]> b = matmul(x = a, y = c);\n"
		"    tensor<fp16, [2]> s = reduce_sum(x = b, axes = tensor<int32, [1]>([1]));\n"
		"  } -> (s, b);\n"
		"}\n";
	anes_bprogram *p = compile_ok(text);
	cr_assert_eq(p->n_functions, 3);
	cr_assert_str_eq(p->functions[0].name, "main");
	cr_assert_str_eq(p->functions[1].name, "first");
	cr_assert_str_eq(p->functions[2].name, "third");
	cr_assert_eq(p->functions[2].n_inputs, 2);
	cr_assert_eq(p->functions[2].n_outputs, 2);
	double *v;
	uint16_t *a = rf16(4, -1, 1, &v), b[4], s[2];
	const void *in[] = {a, a};
	void *out[] = {b, s};
	run_ok(p, 0, in, out);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(h2d(b[i]), -v[i]);
	run_ok(p, 1, in, out);
	double r[4];
	for (int i = 0; i < 4; i++)
		r[i] = exp(v[i]);
	check_f16("first", b, r, 4, 1e-3);
	void *out3[] = {s, b};
	run_ok(p, 2, in, out3);
	for (int i = 0; i < 2; i++)
		for (int j = 0; j < 2; j++)
			r[i * 2 + j] = v[i * 2] * v[j] + v[i * 2 + 1] * v[2 + j];
	check_f16("third b", b, r, 4, 1e-3);
	double rs[2] = {h2d(b[0]) + h2d(b[1]), h2d(b[2]) + h2d(b[3])};
	check_f16("third s", s, rs, 2, 1e-3);
	cr_assert_eq(B->ops->run(B, p, 3, in, out, errbuf, sizeof errbuf), -EINVAL);
	B->ops->program_free(B, p);
	free(a);
	free(v);
}

/* ---- compile-time errors: line, op and reason ---- */

typedef struct ecase {
	const char *inputs, *body;
	int rc;
	const char *want;     /* substring of the message */
} ecase;

static const ecase ecases[] = {
	{"tensor<fp16, [2]> x", "        tensor<fp16, [2]> y = hard_swish(x = x);", -ENOTSUP, "line 4: unknown op 'hard_swish' (y)"},
	{"tensor<fp16, [2]> x", "        tensor<fp16, [2]> y = relu(x = x, alpha = fp16(1));", -EINVAL,
	 "line 4: op 'relu' (y): unknown argument 'alpha'"},
	{"tensor<fp16, [2, 3]> x", "        tensor<fp16, [2, 3]> y = add(x = x, y = tensor<fp16, [2]>([1, 2]));", -EINVAL,
	 "line 4: op 'add' (y): shapes do not broadcast: x is [2,3], y is [2]"},
	{"tensor<int8, [2]> x", "        tensor<int8, [2]> y = exp(x = x);", -EINVAL, "line 4: op 'exp' (y): argument 'x' must be fp16 or fp32"},
	{"tensor<int32, [2]> x", "        tensor<int32, [2]> y = add(x = x, y = x);\n        tensor<int32, [1]> z = reduce_mean(x = y, axes = tensor<int32, [1]>([0]), keep_dims = true);",
	 -ENOTSUP, "line 5: op 'reduce_mean' (z): dtype int32 is not supported"},
	{"tensor<fp16, [1, 4, 8, 8]> x, tensor<fp16, [4, 4, 3, 3]> w", "        tensor<fp16, [1, 4, 8, 8]> y = conv(x = x, weight = w, pad_type = string(\"bogus\"));",
	 -EINVAL, "line 4: op 'conv' (y): pad_type must be"},
	{"tensor<fp16, [1, 4, 8, 8]> x, tensor<fp16, [4, 4, 3, 3]> w", "        tensor<fp16, [1, 4, 8, 8]> y = conv(x = x, weight = w);",
	 -EINVAL, "line 4: op 'conv' (y): declared type tensor<fp16, [1,4,8,8]> of 'y' does not match the inferred tensor<fp16, [1,4,6,6]>"},
	{"tensor<fp16, [1, 4, 8, 8]> x, tensor<fp16, [4, 3, 3, 3]> w", "        tensor<fp16, [1, 4, 6, 6]> y = conv(x = x, weight = w);",
	 -EINVAL, "line 4: op 'conv' (y): channels do not match"},
	{"tensor<fp16, [1, 4, 8, 8, 2]> x, tensor<fp16, [4, 4, 1, 1, 1]> w", "        tensor<fp16, [1, 4, 8, 8, 2]> y = conv(x = x, weight = w);",
	 -ENOTSUP, "line 4: op 'conv' (y): 3-D convolution is not supported"},
	{"tensor<fp16, [2, 3]> x, tensor<int32, [1]> a", "        tensor<fp16, [2, 1]> y = reduce_sum(x = x, axes = a, keep_dims = true);",
	 -ENOTSUP, "line 4: op 'reduce_sum' (y): argument 'axes' must be a constant"},
	{"tensor<fp16, [2, 3]> x", "        tensor<fp16, [2, 3]> y = softmax(x = x, axis = int32(2));", -EINVAL,
	 "line 4: op 'softmax' (y): axis 2 is out of range for rank 2"},
	{"tensor<fp16, [2, 3]> x", "        tensor<fp16, [2, 3]> y = gelu(x = x, mode = string(\"FAST\"));", -EINVAL,
	 "line 4: op 'gelu' (y): mode must be"},
	{"tensor<fp16, [2, 3]> x", "        tensor<int8, [2, 3]> y = quantize(input = x, scale = fp16(1), output_dtype = string(\"int4\"));",
	 -EINVAL, "line 4: op 'quantize' (y): output_dtype must be"},
	{"tensor<fp16, [2, 3]> x", "        tensor<fp16, [2, 3]> w = constexpr_affine_dequantize(quantized_data = tensor<int16, [2, 3]>([1, 2, 3, 4, 5, 6]), zero_point = int8(0), scale = fp16(1), axis = int32(0));",
	 -EINVAL, "line 4: op 'constexpr_affine_dequantize' (w): quantized_data must be int8 or uint8"},
	{"tensor<fp16, [2, 3]> x", "        tensor<fp16, [3, 2]> y = matmul(x = x, y = x);", -EINVAL,
	 "line 4: op 'matmul' (y): inner dimensions differ"},
	{"tensor<fp16, [2, 3]> x", "        tensor<fp16, [2, 3]> y = linear(x = x, weight = tensor<fp16, [3, 2]>([1, 2, 3, 4, 5, 6]));", -EINVAL,
	 "line 4: op 'linear' (y): weight must be [D_out, 3]"},
	{"tensor<fp16, [2, 3]> x", "        tensor<fp16, [2, 3]> y = tile(x = x, reps = tensor<int32, [1]>([2]));", -EINVAL,
	 "line 4: op 'tile' (y): reps has 1 elements, x has rank 2"},
	{"tensor<fp16, [2, 3]> x", "        tensor<fp16, [2, 1, 3]> y = squeeze(x = x, axes = tensor<int32, [1]>([1]));", -EINVAL,
	 "line 4: op 'squeeze' (y): cannot squeeze axis 1 of size 3"},
	{"tensor<fp16, [2, 3]> x", "        tensor<fp16, [2, 3]> y = gather(x = x, indices = tensor<int32, [1]>([0]), batch_dims = int32(1));", -ENOTSUP,
	 "line 4: op 'gather' (y): batch_dims other than 0 are not supported"},
};

Test(ops, compile_error_messages)
{
	for (size_t i = 0; i < sizeof ecases / sizeof ecases[0]; i++) {
		const ecase *e = &ecases[i];
		const char *t = prog(e->inputs, "y", "%s", e->body);
		int rc = compile_err(t);
		cr_assert_eq(rc, e->rc, "case %zu: rc %d, want %d (%s)", i, rc, e->rc, errbuf);
		cr_assert(strstr(errbuf, e->want) == errbuf, "case %zu:\n  got  %s\n  want %s...", i, errbuf, e->want);
	}
}

/* ---- the transformer block example ---- */

static char *read_example(const char *rel)
{
	/* relative to this file, like test_cpu.c (meson runs tests in the build dir) */
	char path[1024];
	const char *src = __FILE__, *slash = strrchr(src, '/');
	snprintf(path, sizeof path, "%.*s/../%s", slash ? (int)(slash - src) : 1, slash ? src : ".", rel);
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "cannot open %s", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *t = malloc((size_t)n + 1);
	cr_assert_eq(fread(t, 1, (size_t)n, f), (size_t)n);
	t[n] = 0;
	fclose(f);
	return t;
}

static void transformer_check(const char *example, bool builtin)
{
	if (builtin) {
		B->ops->destroy(B);
		setenv("ANESHARE_CPU_GEMM", "builtin", 1);
		cr_assert_eq(anes_cpu_backend_new(2, &B), 0);
	}
	char *text = read_example(example);
	static tb_weights w;
	cr_assert(tb_load(text, &w), "cannot read the weights from %s", example);
	anes_bprogram *p = compile_ok(text);
	cr_assert_eq(p->functions[0].n_inputs, 1);
	cr_assert_eq(p->functions[0].inputs[0].bytes, TB_D * TB_S * 2);
	double *v;
	uint16_t *x = rf16(TB_D * TB_S, -2, 2, &v), y[TB_D * TB_S];
	static float xf[TB_D * TB_S], ref[TB_D * TB_S];
	for (int i = 0; i < TB_D * TB_S; i++)
		xf[i] = (float)v[i];
	const void *in[] = {x};
	void *out[] = {y};
	run_ok(p, 0, in, out);
	tb_reference(&w, xf, ref);
	double mx = 0, err = 0;
	for (int i = 0; i < TB_D * TB_S; i++) {
		mx = fmax(mx, fabs(ref[i]));
		err = fmax(err, fabs(h2d(y[i]) - ref[i]));
	}
	cr_assert(mx > 0.5, "degenerate reference");
	cr_assert(err / mx <= 5e-3, "%s: max error %g of max |ref| %g", example, err, mx);
	B->ops->program_free(B, p);
	free(text);
	free(v);
	free(x);
}

Test(ops, transformer_block)
{
	transformer_check("examples/transformer_block.mil", false);
}

Test(ops, transformer_block_builtin_gemm)
{
	transformer_check("examples/transformer_block.mil", true);
}

/* the same block written with verified ops only (attention decomposed, an
 * additive mask, fp16 MLP weights), against the same fp32 reference */
Test(ops, transformer_block_verified)
{
	transformer_check("examples/transformer_block_verified.mil", false);
}

/* ---- masks: comparisons, logical ops, select, floor_div, mod ---- */

/* n values of dtype dt ("fp16", "fp32", "int32", "bool") drawn from a small
 * set so that ties happen; exact values in *vals */
static void *rmask(const char *dt, size_t n, double **vals)
{
	double *v = malloc(n * sizeof *v + 8);
	void *d = malloc(n * 4 + 4);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(dt, "bool") == 0) {
			static const uint8_t bytes[] = {0, 1, 0, 7, 255, 0, 1};
			uint8_t b = bytes[rnd() % sizeof bytes];
			((uint8_t *)d)[i] = b;
			v[i] = b != 0;
		} else if (strcmp(dt, "int32") == 0) {
			static const int32_t ints[] = {0, 1, -1, 2, -3, 7, -8, 13, INT32_MAX, INT32_MIN};
			int32_t x = (rnd() % 4) ? (int32_t)(rnd() % 9) - 4 : ints[rnd() % 10];
			((int32_t *)d)[i] = x;
			v[i] = x;
		} else {
			double x = (double)((int)(rnd() % 33) - 16) * 0.25;
			if (strcmp(dt, "fp16") == 0)
				((uint16_t *)d)[i] = anes_f32_to_f16_soft((float)x);
			else
				((float *)d)[i] = (float)x;
			v[i] = x;
		}
	}
	*vals = v;
	return d;
}

static double mask_ref(const char *op, double a, double b, bool is_int)
{
	if (!strcmp(op, "equal")) return a == b;
	if (!strcmp(op, "not_equal")) return a != b;
	if (!strcmp(op, "less")) return a < b;
	if (!strcmp(op, "less_equal")) return a <= b;
	if (!strcmp(op, "greater")) return a > b;
	if (!strcmp(op, "greater_equal")) return a >= b;
	if (!strcmp(op, "logical_and")) return (a != 0) && (b != 0);
	if (!strcmp(op, "logical_or")) return (a != 0) || (b != 0);
	if (!strcmp(op, "logical_xor")) return (a != 0) != (b != 0);
	if (!strcmp(op, "floor_div")) {
		if (is_int && b == 0)
			return 0;
		double q = floor(a / b);
		return is_int ? (double)(int32_t)(uint32_t)(int64_t)q : q;
	}
	/* mod: Python's, the sign of b */
	if (is_int && b == 0)
		return 0;
	double r = a - floor(a / b) * b;
	if (!is_int)
		r = fmod(a, b), r = (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
	return r;
}

/* output element i of a program output of dtype dt, as double */
static double out_val(const void *o, const char *dt, size_t i)
{
	if (!strcmp(dt, "bool")) return ((const uint8_t *)o)[i];
	if (!strcmp(dt, "int32")) return ((const int32_t *)o)[i];
	if (!strcmp(dt, "fp16")) return h2d(((const uint16_t *)o)[i]);
	return ((const float *)o)[i];
}

Test(ops, masks_compare_logical_floor_div_mod)
{
	static const char *cmp[] = {"equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
	                            "floor_div", "mod", "logical_and", "logical_or", "logical_xor"};
	static const char *dts[] = {"fp16", "fp32", "int32"};
	size_t checked = 0, trues = 0;
	for (size_t o = 0; o < sizeof cmp / sizeof cmp[0]; o++)
		for (int d = 0; d < 3; d++)
			for (size_t c = 0; c < sizeof bshapes / sizeof bshapes[0]; c++) {
				const bshape *s = &bshapes[c];
				bool logical = !strncmp(cmp[o], "logical", 7), arith = o == 6 || o == 7;
				const char *dt = logical ? "bool" : dts[d];
				const char *odt = arith ? dt : "bool";
				if (logical && d > 0)
					continue;
				int od[5], ro = s->xr > s->yr ? s->xr : s->yr;
				for (int k = 0; k < ro; k++) {
					int dx = k < ro - s->xr ? 1 : s->x[k - (ro - s->xr)];
					int dy = k < ro - s->yr ? 1 : s->y[k - (ro - s->yr)];
					od[k] = dx > dy ? dx : dy;
				}
				size_t nx = prod(s->x, s->xr), ny = prod(s->y, s->yr), no = prod(od, ro);
				double *vx, *vy;
				void *x = rmask(dt, nx, &vx), *y = rmask(dt, ny, &vy), *z = malloc(no * 4 + 4);
				if (arith && strcmp(dt, "int32"))   /* float division by zero: inf/nan, not compared */
					for (size_t i = 0; i < ny; i++)
						if (vy[i] == 0) {
							vy[i] = 0.5;
							if (!strcmp(dt, "fp16"))
								((uint16_t *)y)[i] = anes_f32_to_f16_soft(0.5f);
							else
								((float *)y)[i] = 0.5f;
						}
				char tx[64], ty[64], tz[64], inputs[160];
#define TY(buf, t, r, dd) (r ? snprintf(buf, sizeof buf, "tensor<%s, %s>", t, shs(dd, r)) : snprintf(buf, sizeof buf, "%s", t))
				TY(tx, dt, s->xr, s->x);
				TY(ty, dt, s->yr, s->y);
				TY(tz, odt, ro, od);
#undef TY
				snprintf(inputs, sizeof inputs, "%s x, %s y", tx, ty);
				compile_run(prog(inputs, "z", "        %s z = %s(x = x, y = y);", tz, cmp[o]),
				            (const void *[]){x, y}, (void *[]){z});
				for (size_t i = 0; i < no; i++) {
					int idx[5];
					unravel(i, od, ro, idx);
					double a = vx[bidx(idx, ro, s->x, s->xr)], b = vy[bidx(idx, ro, s->y, s->yr)];
					double want = mask_ref(cmp[o], a, b, !strcmp(dt, "int32"));
					if (!strcmp(odt, "fp16"))
						want = h2d(anes_f32_to_f16_soft((float)want));
					double got = out_val(z, odt, i);
					cr_assert_eq(got, want, "%s %s case %zu [%zu]: %g op %g = %g, want %g", cmp[o], dt, c, i, a, b,
					             got, want);
					checked++;
					trues += !arith && got != 0;
				}
				free(vx);
				free(vy);
				free(x);
				free(y);
				free(z);
			}
	cr_assert(trues > checked / 10, "masks should be true often (%zu of %zu)", trues, checked);
}

Test(ops, logical_not_and_bool_constants)
{
	uint8_t x[6] = {0, 1, 2, 255, 0, 9}, y[6];
	compile_run(prog("tensor<bool, [2, 3]> x", "y",
		"        tensor<bool, [2, 3]> n = logical_not(x = x);\n"
		"        tensor<bool, [2, 3]> y = logical_and(x = n, y = tensor<bool, [3]>([true, false, true]));"),
		(const void *[]){x}, (void *[]){y});
	for (int i = 0; i < 6; i++)
		cr_assert_eq(y[i], (x[i] == 0) && (i % 3 != 1), "[%d]: %d", i, y[i]);
	/* a mask computed from constants only is folded at compile time */
	uint16_t h[3], o[3];
	for (int i = 0; i < 3; i++)
		h[i] = anes_f32_to_f16_soft((float)i);
	compile_run(prog("tensor<fp16, [3]> x", "y",
		"        tensor<bool, [3]> m = less(x = tensor<int32, [3]>([1, 5, 3]), y = tensor<int32, [3]>([2, 2, 3]));\n"
		"        tensor<fp16, [3]> y = select(cond = m, a = x, b = fp16(-1));"),
		(const void *[]){h}, (void *[]){o});
	cr_assert_eq(h2d(o[0]), 0.0);
	cr_assert_eq(h2d(o[1]), -1.0);
	cr_assert_eq(h2d(o[2]), -1.0);
	/* dtype errors */
	compile_err(prog("tensor<fp16, [3]> x", "y", "        tensor<bool, [3]> y = logical_not(x = x);"));
	cr_assert(strstr(errbuf, "argument 'x' must be bool, is fp16"), "%s", errbuf);
	compile_err(prog("tensor<fp16, [3]> x", "y", "        tensor<bool, [3]> y = less(x = x, y = int32(1));"));
	cr_assert(strstr(errbuf, "must have the same dtype"), "%s", errbuf);
	compile_err(prog("tensor<fp16, [3]> x", "y", "        tensor<fp16, [3]> y = less(x = x, y = fp16(1));"));
	cr_assert(strstr(errbuf, "does not match the inferred tensor<bool, [3]>"), "%s", errbuf);
}

Test(ops, select_broadcasting_all_dtypes)
{
	/* cond [2, 1, 4], a [3, 1], b [1] -> [2, 3, 4], for fp16, fp32, int32 and bool values */
	static const char *dts[] = {"fp16", "fp32", "int32", "bool"};
	int cd[3] = {2, 1, 4}, ad[2] = {3, 1}, od[3] = {2, 3, 4};
	for (int d = 0; d < 4; d++) {
		double *vc, *va, *vb;
		void *c = rmask("bool", 8, &vc), *a = rmask(dts[d], 3, &va), *b = rmask(dts[d], 1, &vb);
		uint8_t z[24 * 4];
		char inputs[200];
		snprintf(inputs, sizeof inputs, "tensor<bool, [2, 1, 4]> c, tensor<%s, [3, 1]> a, tensor<%s, [1]> b", dts[d],
		         dts[d]);
		compile_run(prog(inputs, "z", "        tensor<%s, [2, 3, 4]> z = select(cond = c, a = a, b = b);",
		                 dts[d]), (const void *[]){c, a, b}, (void *[]){z});
		for (size_t i = 0; i < 24; i++) {
			int idx[3];
			unravel(i, od, 3, idx);
			double want = vc[bidx(idx, 3, cd, 3)] != 0 ? va[bidx(idx, 3, ad, 2)] : vb[0];
			if (d == 3) /* bool values are copied as they are */
				want = vc[bidx(idx, 3, cd, 3)] != 0 ? ((uint8_t *)a)[bidx(idx, 3, ad, 2)] : ((uint8_t *)b)[0];
			cr_assert_eq(out_val(z, dts[d], i), want, "select %s [%zu]", dts[d], i);
		}
		free(vc);
		free(va);
		free(vb);
		free(c);
		free(a);
		free(b);
	}
	compile_err(prog("tensor<bool, [2]> c, tensor<fp16, [3]> a", "z", "        tensor<fp16, [3]> z = select(cond = c, a = a, b = a);"));
	cr_assert(strstr(errbuf, "shapes do not broadcast: cond is [2], a/b is [3]"), "%s", errbuf);
	compile_err(prog("tensor<fp16, [3]> c, tensor<fp16, [3]> a", "z", "        tensor<fp16, [3]> z = select(cond = c, a = a, b = a);"));
	cr_assert(strstr(errbuf, "argument 'cond' must be bool"), "%s", errbuf);
}

Test(ops, round_half_to_even_and_prelu)
{
	static const float xs[8] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.25f, -3.75f};
	static const double want[8] = {0, 2, 2, -0.0, -2, -2, 3, -4};
	uint16_t h[8], o[8];
	for (int i = 0; i < 8; i++)
		h[i] = anes_f32_to_f16_soft(xs[i]);
	run1_f16("tensor<fp16, [8]>", "tensor<fp16, [8]>", "round(x = x)", h, o);
	for (int i = 0; i < 8; i++)
		cr_assert_eq(h2d(o[i]), want[i], "round(%g) = %g", xs[i], h2d(o[i]));
	/* prelu and softplus_parametric: one alpha (and beta) per channel (axis 1) */
	int d[4] = {2, 3, 4, 5};
	size_t n = prod(d, 4);
	double *v, *ref = malloc(n * sizeof *ref), al[3] = {0.25, -0.5, 2}, be[3] = {1, 0.5, 2};
	uint16_t *x = rf16(n, -3, 3, &v), *y = malloc(n * 2);
	run1_f16("tensor<fp16, [2, 3, 4, 5]>", "tensor<fp16, [2, 3, 4, 5]>",
	         "prelu(x = x, alpha = tensor<fp16, [3]>([0.25, -0.5, 2]))", x, y);
	for (size_t i = 0; i < n; i++) {
		double a = al[(i / 20) % 3];
		ref[i] = v[i] >= 0 ? v[i] : a * v[i];
	}
	check_f16("prelu", y, ref, n, 1e-3);
	run1_f16("tensor<fp16, [2, 3, 4, 5]>", "tensor<fp16, [2, 3, 4, 5]>",
	         "softplus_parametric(x = x, alpha = tensor<fp16, [3]>([0.25, -0.5, 2]), beta = tensor<fp16, [3]>([1, 0.5, 2]))",
	         x, y);
	for (size_t i = 0; i < n; i++) {
		size_t ch = (i / 20) % 3;
		ref[i] = al[ch] * log(1 + exp(be[ch] * v[i]));
	}
	check_f16("softplus_parametric", y, ref, n, 2e-3);
	compile_err(prog("tensor<fp16, [2, 3, 4]> x", "y",
	                 "        tensor<fp16, [2, 3, 4]> y = prelu(x = x, alpha = tensor<fp16, [2]>([1, 2]));"));
	cr_assert(strstr(errbuf, "alpha must be [3] (one per channel), is [2]"), "%s", errbuf);
	free(v);
	free(ref);
	free(x);
	free(y);
}

/* ---- more reductions, scans, sorting ---- */

/* a naive reduction of x [2, 3, 4] over the axes in red (kind as the op name) */
static double red_ref(const char *op, const double *v, const int *d, const bool *red, const int *oidx)
{
	double acc = !strcmp(op, "reduce_prod") ? 1 : 0, mx = -INFINITY;
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < d[0]; i++)
			for (int j = 0; j < d[1]; j++)
				for (int k = 0; k < d[2]; k++) {
					int id[3] = {i, j, k};
					bool in = true;
					for (int a = 0; a < 3; a++)
						if (!red[a] && id[a] != oidx[a])
							in = false;
					if (!in)
						continue;
					double x = v[(i * d[1] + j) * d[2] + k];
					if (pass == 0) {
						if (!strcmp(op, "reduce_prod")) acc *= x;
						else if (!strcmp(op, "reduce_l1_norm")) acc += fabs(x);
						else if (!strcmp(op, "reduce_l2_norm") || !strcmp(op, "reduce_sum_square")) acc += x * x;
						else if (!strcmp(op, "reduce_log_sum")) acc += x;
						else mx = x > mx ? x : mx;
					} else if (!strcmp(op, "reduce_log_sum_exp")) {
						acc += exp(x - mx);
					}
				}
	if (!strcmp(op, "reduce_l2_norm")) return sqrt(acc);
	if (!strcmp(op, "reduce_log_sum")) return log(acc);
	if (!strcmp(op, "reduce_log_sum_exp")) return log(acc) + mx;
	return acc;
}

Test(ops, reductions_prod_norms_log_sum)
{
	static const char *ops[] = {"reduce_prod", "reduce_l1_norm", "reduce_l2_norm", "reduce_log_sum",
	                            "reduce_log_sum_exp", "reduce_sum_square"};
	static const char *axes[] = {"", "[1]", "[0, 2]", "[-1]", "[0, 1, 2]"};
	static const bool reds[][3] = {{1, 1, 1}, {0, 1, 0}, {1, 0, 1}, {0, 0, 1}, {1, 1, 1}};
	int d[3] = {2, 3, 4};
	for (int o = 0; o < 6; o++)
		for (int a = 0; a < 5; a++)
			for (int keep = 0; keep < 2; keep++)
				for (int f32 = 0; f32 < 2; f32++) {
					const char *dt = f32 ? "fp32" : "fp16";
					bool pos = !strcmp(ops[o], "reduce_log_sum");
					double *v;
					void *x = f32 ? (void *)rf32(24, pos ? 0.1 : -2, 2, &v) : (void *)rf16(24, pos ? 0.1 : -2, 2, &v);
					int od[3], ro = 0;
					for (int k = 0; k < 3; k++)
						if (!reds[a][k])
							od[ro++] = d[k];
						else if (keep)
							od[ro++] = 1;
					size_t no = prod(od, ro);
					char body[200], tout[64], inputs[64];
					snprintf(body, sizeof body, "%s(x = x%s%s%s%s)", ops[o], a ? ", axes = tensor<int32, [" : "",
					         a ? (a == 2 ? "2]>(" : a == 4 ? "3]>(" : "1]>(") : "", a ? axes[a] : "",
					         a ? (keep ? "), keep_dims = true" : ")") : (keep ? ", keep_dims = true" : ""));
					if (ro)
						snprintf(tout, sizeof tout, "tensor<%s, %s>", dt, shs(od, ro));
					else
						snprintf(tout, sizeof tout, "%s", dt);
					snprintf(inputs, sizeof inputs, "tensor<%s, [2, 3, 4]> x", dt);
					void *y = malloc(no * 4 + 4);
					double *ref = malloc(no * sizeof *ref);
					compile_run(prog(inputs, "y", "        %s y = %s;", tout, body),
					            (const void *[]){x}, (void *[]){y});
					for (size_t i = 0; i < no; i++) {
						/* output index -> the index of the kept dims */
						int oi[3] = {0, 0, 0}, ki = 0, rem = (int)i;
						int full[3];
						for (int k = 2; k >= 0; k--) {
							int dim = !reds[a][k] ? d[k] : 1;
							if (!reds[a][k] || keep) {
								full[k] = rem % dim;
								rem /= dim;
							} else {
								full[k] = 0;
							}
						}
						(void)ki;
						memcpy(oi, full, sizeof oi);
						ref[i] = red_ref(ops[o], v, d, reds[a], oi);
					}
					if (f32)
						check_f32(body, y, ref, no, 1e-5);
					else
						check_f16(body, y, ref, no, 2e-3);
					free(v);
					free(x);
					free(y);
					free(ref);
				}
}

Test(ops, argmax_argmin_cumsum)
{
	/* x [3, 5] from a small set (ties): argmax/argmin along each axis give the first index */
	double *v;
	uint16_t *x = rmask("fp16", 15, &v);
	int32_t idx[5];
	for (int axis = 0; axis < 2; axis++)
		for (int mn = 0; mn < 2; mn++) {
			char body[96];
			snprintf(body, sizeof body, "%s(x = x, axis = int32(%d), keep_dims = true)", mn ? "reduce_argmin" : "reduce_argmax",
			         axis - 2);
			int n = axis ? 3 : 5;
			char inputs[] = "tensor<fp16, [3, 5]> x";
			compile_run(prog(inputs, "y", "        tensor<int32, %s> y = %s;",
			                 axis ? "[3, 1]" : "[1, 5]", body), (const void *[]){x}, (void *[]){idx});
			for (int l = 0; l < n; l++) {
				int m = axis ? 5 : 3, best = 0;
				for (int t = 1; t < m; t++) {
					double a = axis ? v[l * 5 + t] : v[t * 5 + l], b = axis ? v[l * 5 + best] : v[best * 5 + l];
					if (mn ? a < b : a > b)
						best = t;
				}
				cr_assert_eq(idx[l], best, "%s line %d: %d, want %d", body, l, idx[l], best);
			}
		}
	free(x);
	free(v);
	/* int32 values above 2^24 compare exactly */
	int32_t xi[4] = {16777217, 16777216, -5, 16777217}, r;
	compile_run(prog("tensor<int32, [4]> x", "y", "        int32 y = reduce_argmax(x = x);"),
	            (const void *[]){xi}, (void *[]){&r});
	cr_assert_eq(r, 0);
	/* cumsum: every axis, exclusive and reverse, fp16 and int32 */
	int d[3] = {2, 3, 4};
	for (int dt = 0; dt < 2; dt++)
		for (int axis = 0; axis < 3; axis++)
			for (int ex = 0; ex < 2; ex++)
				for (int rv = 0; rv < 2; rv++) {
					const char *t = dt ? "int32" : "fp16";
					double *vv;
					void *xx = dt ? rmask("int32", 24, &vv) : (void *)rf16(24, -2, 2, &vv);
					uint8_t y[24 * 4];
					char inputs[64], body[160];
					snprintf(inputs, sizeof inputs, "tensor<%s, [2, 3, 4]> x", t);
					snprintf(body, sizeof body, "cumsum(x = x, axis = int32(%d), exclusive = %s, reverse = %s)", axis,
					         ex ? "true" : "false", rv ? "true" : "false");
					compile_run(prog(inputs, "y", "        tensor<%s, [2, 3, 4]> y = %s;", t, body),
					            (const void *[]){xx}, (void *[]){y});
					double ref[24];
					for (size_t i = 0; i < 24; i++) {
						int id[3];
						unravel(i, d, 3, id);
						double s = 0;
						for (int k = 0; k < d[axis]; k++) {
							int j[3] = {id[0], id[1], id[2]};
							j[axis] = k;
							bool take = rv ? (ex ? k > id[axis] : k >= id[axis]) : (ex ? k < id[axis] : k <= id[axis]);
							if (take)
								s += vv[(j[0] * 3 + j[1]) * 4 + j[2]];
						}
						ref[i] = dt ? (double)(int32_t)(uint32_t)(int64_t)s : s;
					}
					if (dt) {
						for (int i = 0; i < 24; i++)
							cr_assert_eq(((int32_t *)y)[i], ref[i], "%s [%d]", body, i);
					} else {
						check_f16(body, (uint16_t *)y, ref, 24, 2e-3);
					}
					free(vv);
					free(xx);
				}
}

Test(ops, topk_and_argsort)
{
	/* x [4, 6], from a small set (ties keep the lower index first) */
	static const char *dts[] = {"fp16", "fp32", "int32"};
	for (int dt = 0; dt < 3; dt++)
		for (int axis = 0; axis < 2; axis++)
			for (int asc = 0; asc < 2; asc++) {
				double *v;
				void *x = rmask(dts[dt], 24, &v);
				int n = axis ? 6 : 4, lines = axis ? 4 : 6, k = axis ? 3 : 2;
				uint8_t vals[24 * 4];
				int32_t ind[24], order[24];
				char inputs[64], tk[64];
				snprintf(inputs, sizeof inputs, "tensor<%s, [4, 6]> x", dts[dt]);
				snprintf(tk, sizeof tk, "%s", axis ? "[4, 3]" : "[2, 6]");
				compile_run(prog(inputs, "v, i, s",
					"        tensor<%s, %s> v, tensor<int32, %s> i = topk(x = x, k = int32(%d), axis = int32(%d), ascending = %s);\n"
					"        tensor<int32, [4, 6]> s = argsort(x = x, axis = int32(%d), ascending = %s);",
					dts[dt], tk, tk, k, axis, asc ? "true" : "false", axis, asc ? "true" : "false"),
					(const void *[]){x}, (void *[]){vals, ind, order});
				for (int l = 0; l < lines; l++) {
					/* reference: a stable selection sort on doubles */
					int perm[6];
					bool used[6] = {false};
					for (int t = 0; t < n; t++) {
						int best = -1;
						for (int c = 0; c < n; c++) {
							if (used[c])
								continue;
							double a = axis ? v[l * 6 + c] : v[c * 6 + l];
							double b = best < 0 ? 0 : axis ? v[l * 6 + best] : v[best * 6 + l];
							if (best < 0 || (asc ? a < b : a > b))
								best = c;
						}
						used[best] = true;
						perm[t] = best;
					}
					for (int t = 0; t < n; t++) {
						int oi = axis ? l * 6 + t : t * 6 + l;
						cr_assert_eq(order[oi], perm[t], "argsort %s axis %d asc %d line %d [%d]: %d, want %d", dts[dt], axis,
						             asc, l, t, order[oi], perm[t]);
					}
					for (int t = 0; t < k; t++) {
						int oi = axis ? l * 3 + t : t * 6 + l;
						double want = axis ? v[l * 6 + perm[t]] : v[perm[t] * 6 + l];
						cr_assert_eq(ind[oi], perm[t], "topk index %s [%d]", dts[dt], oi);
						cr_assert_eq(out_val(vals, dts[dt], (size_t)oi), want, "topk value %s [%d]", dts[dt], oi);
					}
				}
				free(v);
				free(x);
			}
	compile_err(prog("tensor<fp16, [4, 6]> x", "v",
	                 "        tensor<fp16, [4, 7]> v, tensor<int32, [4, 7]> i = topk(x = x, k = int32(7));"));
	cr_assert(strstr(errbuf, "argument 'k' = 7 is out of range [-1, 6]"), "%s", errbuf);
}

Test(ops, batch_instance_l2_lrn_norms)
{
	int d[4] = {2, 3, 4, 5};
	size_t n = prod(d, 4);
	double *v, *ref = malloc(n * sizeof *ref);
	uint16_t *x = rf16(n, -3, 3, &v), *y = malloc(n * 2);
	static const double mean[3] = {0.5, -1, 0}, var[3] = {1, 4, 0.25}, g[3] = {1, 0.5, 2}, b[3] = {0, 1, -1};
	run1_f16("tensor<fp16, [2, 3, 4, 5]>", "tensor<fp16, [2, 3, 4, 5]>",
	         "batch_norm(x = x, mean = tensor<fp16, [3]>([0.5, -1, 0]), variance = tensor<fp16, [3]>([1, 4, 0.25]), "
	         "gamma = tensor<fp16, [3]>([1, 0.5, 2]), beta = tensor<fp16, [3]>([0, 1, -1]), epsilon = fp16(0.001))", x, y);
	for (size_t i = 0; i < n; i++) {
		size_t c = (i / 20) % 3;
		ref[i] = (v[i] - mean[c]) / sqrt(var[c] + 0.001) * g[c] + b[c];
	}
	check_f16("batch_norm", y, ref, n, 2e-3);
	run1_f16("tensor<fp16, [2, 3, 4, 5]>", "tensor<fp16, [2, 3, 4, 5]>",
	         "instance_norm(x = x, gamma = tensor<fp16, [3]>([1, 0.5, 2]), beta = tensor<fp16, [3]>([0, 1, -1]))", x, y);
	for (size_t l = 0; l < 6; l++) {
		double m = 0, s = 0;
		for (int t = 0; t < 20; t++)
			m += v[l * 20 + t];
		m /= 20;
		for (int t = 0; t < 20; t++)
			s += (v[l * 20 + t] - m) * (v[l * 20 + t] - m);
		s = sqrt(s / 20 + 1e-5);
		for (int t = 0; t < 20; t++)
			ref[l * 20 + t] = (v[l * 20 + t] - m) / s * g[l % 3] + b[l % 3];
	}
	check_f16("instance_norm", y, ref, n, 3e-3);
	run1_f16("tensor<fp16, [2, 3, 4, 5]>", "tensor<fp16, [2, 3, 4, 5]>", "l2_norm(x = x)", x, y);
	for (size_t bb = 0; bb < 2; bb++) {
		double s = 0;
		for (int t = 0; t < 60; t++)
			s += v[bb * 60 + t] * v[bb * 60 + t];
		for (int t = 0; t < 60; t++)
			ref[bb * 60 + t] = v[bb * 60 + t] / sqrt(s + 1e-6);
	}
	check_f16("l2_norm", y, ref, n, 2e-3);
	run1_f16("tensor<fp16, [2, 3, 4, 5]>", "tensor<fp16, [2, 3, 4, 5]>",
	         "local_response_norm(x = x, size = int32(2), alpha = fp16(0.5), beta = fp16(0.75), k = fp16(2))", x, y);
	for (size_t i = 0; i < n; i++) {
		int id[4];
		unravel(i, d, 4, id);
		double s = 0;
		for (int c = id[1]; c <= id[1] + 1 && c < 3; c++) {   /* size 2: [c, c + 1] */
			double t = v[((id[0] * 3 + c) * 4 + id[2]) * 5 + id[3]];
			s += t * t;
		}
		ref[i] = v[i] / pow(2 + 0.5 / 2 * s, 0.75);
	}
	check_f16("local_response_norm", y, ref, n, 2e-3);
	compile_err(prog("tensor<fp16, [2, 3]> x", "y", "        tensor<fp16, [2, 3]> y = l2_norm(x = x);"));
	cr_assert(strstr(errbuf, "x must have rank 3 to 8"), "%s", errbuf);
	free(v);
	free(ref);
	free(x);
	free(y);
}

/* ---- data movement ---- */

typedef struct map_ctx {
	int od[6], orank, id[6], irank;
	int kind, b, axis, stride;
} map_ctx;

static size_t lin(const int *idx, const int *d, int r)
{
	size_t o = 0;
	for (int k = 0; k < r; k++)
		o = o * (size_t)d[k] + (size_t)idx[k];
	return o;
}

/* source of output element i for the layout ops, written from their definitions */
static size_t layout_map(size_t i, const void *vc)
{
	const map_ctx *c = vc;
	int o[6], s[6] = {0};
	unravel(i, c->od, c->orank, o);
	int b = c->b;
	switch (c->kind) {
	case 0: /* reverse axes 0 and 2 */
		s[0] = c->id[0] - 1 - o[0], s[1] = o[1], s[2] = c->id[2] - 1 - o[2];
		break;
	case 1: /* depth_to_space (TF DCR): out[n][c][h*b+i][w*b+j] = in[n][(i*b+j)*C'+c][h][w] */
		s[0] = o[0], s[1] = ((o[2] % b) * b + o[3] % b) * c->od[1] + o[1], s[2] = o[2] / b, s[3] = o[3] / b;
		break;
	case 2: /* space_to_depth: out[n][(i*b+j)*C+c][h][w] = in[n][c][h*b+i][w*b+j] */
		s[0] = o[0], s[1] = o[1] % c->id[1], s[2] = o[2] * b + (o[1] / c->id[1]) / b,
		s[3] = o[3] * b + (o[1] / c->id[1]) % b;
		break;
	case 3: /* pixel_shuffle (torch): out[n][c][h*r+i][w*r+j] = in[n][c*r*r+i*r+j][h][w] */
		s[0] = o[0], s[1] = o[1] * b * b + (o[2] % b) * b + o[3] % b, s[2] = o[2] / b, s[3] = o[3] / b;
		break;
	case 4: /* pixel_unshuffle: out[n][c*r*r+i*r+j][h][w] = in[n][c][h*r+i][w*r+j] */
		s[0] = o[0], s[1] = o[1] / (b * b), s[2] = o[2] * b + (o[1] % (b * b)) / b, s[3] = o[3] * b + o[1] % b;
		break;
	case 5: /* sliding_windows on axis 1, size 3, stride 2: out [2, nw, 3, 4] */
		s[0] = o[0], s[1] = o[1] * c->stride + o[2], s[2] = o[3];
		break;
	default: /* stack along axis: out [..] of n inputs stacked -> input k's element */
		return i;
	}
	return lin(s, c->id, c->irank);
}

Test(ops, layout_reverse_blocks_shuffle_sliding)
{
	map_ctx rv = {{2, 3, 4}, 3, {2, 3, 4}, 3, 0, 0, 0, 0};
	int d3[3] = {2, 3, 4};
	shape_case("tensor<fp16, [2, 3, 4]>", d3, 3, "tensor<fp16, [2, 3, 4]>", 24,
	           "reverse(x = x, axes = tensor<int32, [2]>([0, -1]))", layout_map, &rv);
	int d4[4] = {2, 8, 3, 5};
	map_ctx d2s = {{2, 2, 6, 10}, 4, {2, 8, 3, 5}, 4, 1, 2, 0, 0};
	shape_case("tensor<fp16, [2, 8, 3, 5]>", d4, 4, "tensor<fp16, [2, 2, 6, 10]>", 240,
	           "depth_to_space(x = x, block_size = int32(2))", layout_map, &d2s);
	map_ctx ps = {{2, 2, 6, 10}, 4, {2, 8, 3, 5}, 4, 3, 2, 0, 0};
	shape_case("tensor<fp16, [2, 8, 3, 5]>", d4, 4, "tensor<fp16, [2, 2, 6, 10]>", 240,
	           "pixel_shuffle(x = x, upscale_factor = int32(2))", layout_map, &ps);
	int d5[4] = {1, 2, 6, 4};
	map_ctx s2d = {{1, 8, 3, 2}, 4, {1, 2, 6, 4}, 4, 2, 2, 0, 0};
	shape_case("tensor<fp16, [1, 2, 6, 4]>", d5, 4, "tensor<fp16, [1, 8, 3, 2]>", 48,
	           "space_to_depth(x = x, block_size = int32(2))", layout_map, &s2d);
	map_ctx pu = {{1, 8, 3, 2}, 4, {1, 2, 6, 4}, 4, 4, 2, 0, 0};
	shape_case("tensor<fp16, [1, 2, 6, 4]>", d5, 4, "tensor<fp16, [1, 8, 3, 2]>", 48,
	           "pixel_unshuffle(x = x, downscale_factor = int32(2))", layout_map, &pu);
	int d6[3] = {2, 7, 4};
	map_ctx sw = {{2, 3, 3, 4}, 4, {2, 7, 4}, 3, 5, 0, 1, 2};
	shape_case("tensor<fp16, [2, 7, 4]>", d6, 3, "tensor<fp16, [2, 3, 3, 4]>", 72,
	           "sliding_windows(x = x, axis = int32(1), size = int32(3), stride = int32(2))", layout_map, &sw);
	shape_case("tensor<fp16, [2, 3, 4]>", d3, 3, "tensor<fp16, [6, 4]>", 24, "flatten2d(x = x, axis = int32(-1))",
	           ident_map, NULL);
	/* reverse of everything by default */
	double *v;
	uint16_t *x = rf16(24, -4, 4, &v), y[24];
	run1_f16("tensor<fp16, [2, 3, 4]>", "tensor<fp16, [2, 3, 4]>", "reverse(x = x)", x, y);
	for (int i = 0; i < 24; i++)
		cr_assert_eq(h2d(y[i]), v[23 - i]);
	/* band_part: keep lower 1 diagonal below, none above, on the last two dims */
	run1_f16("tensor<fp16, [2, 3, 4]>", "tensor<fp16, [2, 3, 4]>", "band_part(x = x, lower = int32(1), upper = int32(0))",
	         x, y);
	for (int i = 0; i < 24; i++) {
		int r = (i / 4) % 3, c = i % 4;
		cr_assert_eq(h2d(y[i]), (r - c <= 1 && c - r <= 0) ? v[i] : 0.0, "band_part [%d]", i);
	}
	compile_err(prog("tensor<fp16, [1, 3, 4, 4]> x", "y",
	                 "        tensor<fp16, [1, 1, 8, 8]> y = depth_to_space(x = x, block_size = int32(2));"));
	cr_assert(strstr(errbuf, "channels 3 are not divisible by block_size^2 = 4"), "%s", errbuf);
	free(v);
	free(x);
}

Test(ops, stack_fill_range_shape_one_hot)
{
	double *va, *vb;
	uint16_t *a = rf16(6, -4, 4, &va), *b = rf16(6, -4, 4, &vb), y[12];
	for (int axis = -3; axis < 3; axis++) {
		int ax = axis < 0 ? axis + 3 : axis;
		static const char *outs[3] = {"[2, 2, 3]", "[2, 2, 3]", "[2, 3, 2]"};
		char body[96];
		snprintf(body, sizeof body, "        tensor<fp16, %s> y = stack(values = (a, b), axis = int32(%d));",
		         ax == 0 ? "[2, 2, 3]" : outs[ax], axis);
		compile_run(prog("tensor<fp16, [2, 3]> a, tensor<fp16, [2, 3]> b", "y", "%s", body),
		            (const void *[]){a, b}, (void *[]){y});
		for (int i = 0; i < 2; i++)
			for (int j = 0; j < 3; j++)
				for (int k = 0; k < 2; k++) {
					int o = ax == 0 ? (k * 2 + i) * 3 + j : ax == 1 ? (i * 2 + k) * 3 + j : (i * 3 + j) * 2 + k;
					cr_assert_eq(h2d(y[o]), (k ? vb : va)[i * 3 + j], "stack axis %d", axis);
				}
	}
	free(a);
	free(b);
	free(va);
	free(vb);
	/* fill (folded), fill_like, range_1d, shape, one_hot */
	float f[6];
	int32_t r[5], sh[3], oh[3 * 4];
	uint16_t x[24] = {0}, fl[24];
	int32_t ind[3] = {2, -1, 3};
	compile_run(prog("tensor<fp16, [2, 3, 4]> x, tensor<int32, [3]> i", "f, r, s, h, l",
		"        tensor<fp32, [2, 3]> f = fill(shape = tensor<int32, [2]>([2, 3]), value = fp32(2.5));\n"
		"        tensor<int32, [5]> r = range_1d(start = int32(7), end = int32(-3), step = int32(-2));\n"
		"        tensor<int32, [3]> s = shape(x = x);\n"
		"        tensor<int32, [3, 4]> h = one_hot(indices = i, one_hot_vector_size = int32(4), on_value = int32(5), off_value = int32(-1));\n"
		"        tensor<fp16, [2, 3, 4]> l = fill_like(ref_tensor = x, value = fp16(-0.5));"),
		(const void *[]){x, ind}, (void *[]){f, r, sh, oh, fl});
	for (int i = 0; i < 6; i++)
		cr_assert_eq(f[i], 2.5f);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(r[i], 7 - 2 * i);
	cr_assert(sh[0] == 2 && sh[1] == 3 && sh[2] == 4);
	for (int i = 0; i < 3; i++)
		for (int k = 0; k < 4; k++)
			cr_assert_eq(oh[i * 4 + k], ind[i] == k ? 5 : -1, "one_hot [%d][%d] = %d", i, k, oh[i * 4 + k]);
	for (int i = 0; i < 24; i++)
		cr_assert_eq(h2d(fl[i]), -0.5);
	/* one_hot along axis 0, fp16 values; range_1d in fp16 */
	uint16_t oh2[4 * 3], rr[4];
	compile_run(prog("tensor<int32, [3]> i", "h, r",
		"        tensor<fp16, [4, 3]> h = one_hot(indices = i, one_hot_vector_size = int32(4), axis = int32(0), on_value = fp16(1), off_value = fp16(0));\n"
		"        tensor<fp16, [4]> r = range_1d(start = fp16(0.5), end = fp16(2.5), step = fp16(0.5));"),
		(const void *[]){ind}, (void *[]){oh2, rr});
	for (int k = 0; k < 4; k++) {
		cr_assert_eq(h2d(rr[k]), 0.5 + 0.5 * k);
		for (int i = 0; i < 3; i++)
			cr_assert_eq(h2d(oh2[k * 3 + i]), ind[i] == k ? 1.0 : 0.0);
	}
	compile_err(prog("tensor<int32, [3]> i", "r", "        tensor<int32, [1]> r = range_1d(start = int32(0), end = int32(5), step = int32(-1));"));
	cr_assert(strstr(errbuf, "has 0 elements"), "%s", errbuf);
	compile_err(prog("tensor<int32, [3]> i", "r", "        tensor<int32, [1]> r = fill(shape = tensor<int32, [2]>([0, 3]));"));
	cr_assert(strstr(errbuf, "shape[0] = 0 is out of range"), "%s", errbuf);
}

Test(ops, gather_nd_and_gather_along_axis)
{
	/* x [3, 4, 2]; indices [2, 2] (K = 2) -> out [2, 2] */
	double *v;
	uint16_t *x = rf16(24, -4, 4, &v), y[24];
	int32_t ind[4] = {2, -1, 0, 1};
	anes_bprogram *p = compile_ok(prog("tensor<fp16, [3, 4, 2]> x, tensor<int32, [2, 2]> i", "y",
		"        tensor<fp16, [2, 2]> y = gather_nd(x = x, indices = i);"));
	const void *in[] = {x, ind};
	void *out[] = {y};
	run_ok(p, 0, in, out);
	for (int t = 0; t < 2; t++) {
		int a = ind[2 * t] < 0 ? ind[2 * t] + 3 : ind[2 * t], b = ind[2 * t + 1] < 0 ? ind[2 * t + 1] + 4 : ind[2 * t + 1];
		for (int q = 0; q < 2; q++)
			cr_assert_eq(h2d(y[t * 2 + q]), v[(a * 4 + b) * 2 + q]);
	}
	ind[1] = 4;
	cr_assert_eq(B->ops->run(B, p, 0, in, out, errbuf, sizeof errbuf), -EINVAL);
	cr_assert(strstr(errbuf, "op 'gather_nd' (y): indices[1] = 4 is out of range [-4, 4)"), "%s", errbuf);
	ind[1] = INT32_MIN;
	cr_assert_eq(B->ops->run(B, p, 0, in, out, errbuf, sizeof errbuf), -EINVAL);
	B->ops->program_free(B, p);
	/* gather_along_axis, axis 1: indices [3, 5, 2] */
	int32_t ia[30];
	for (int i = 0; i < 30; i++)
		ia[i] = (int32_t)(rnd() % 8) - 4;
	uint16_t ya[30];
	p = compile_ok(prog("tensor<fp16, [3, 4, 2]> x, tensor<int32, [3, 5, 2]> i", "y",
		"        tensor<fp16, [3, 5, 2]> y = gather_along_axis(x = x, indices = i, axis = int32(1));"));
	const void *in2[] = {x, ia};
	void *out2[] = {ya};
	run_ok(p, 0, in2, out2);
	for (int i = 0; i < 30; i++) {
		int a = i / 10, q = i % 2, j = ia[i] < 0 ? ia[i] + 4 : ia[i];
		cr_assert_eq(h2d(ya[i]), v[(a * 4 + j) * 2 + q], "gather_along_axis [%d]", i);
	}
	ia[7] = 4;
	cr_assert_eq(B->ops->run(B, p, 0, in2, out2, errbuf, sizeof errbuf), -EINVAL);
	cr_assert(strstr(errbuf, "indices[7] = 4 is out of range [-4, 4)"), "%s", errbuf);
	B->ops->program_free(B, p);
	/* constant indices are checked at compile time */
	compile_err(prog("tensor<fp16, [3, 4, 2]> x", "y",
		"        tensor<fp16, [1, 2]> y = gather_nd(x = x, indices = tensor<int32, [1, 2]>([0, 9]));"));
	cr_assert(strstr(errbuf, "indices[1] = 9 is out of range [-4, 4)"), "%s", errbuf);
	free(v);
	free(x);
}

/* sequential reference of one scatter combine, rounding as the output dtype does */
static double sc_ref(int mode, double a, double b, bool is_int)
{
	double r;
	switch (mode) {
	case 0: r = b; break;
	case 1: r = a + b; break;
	case 2: r = a - b; break;
	case 3: r = a * b; break;
	case 4: r = is_int ? (b == 0 ? 0 : trunc(a / b)) : a / b; break;
	case 5: r = a > b ? a : b; break;
	default: r = a < b ? a : b; break;
	}
	return is_int ? r : h2d(anes_f32_to_f16_soft((float)r));
}

Test(ops, scatter_modes_nd_along_axis)
{
	static const char *modes[] = {"update", "add", "sub", "mul", "div", "max", "min"};
	for (int dt = 0; dt < 2; dt++)
		for (int m = 0; m < 7; m++) {
			const char *t = dt ? "int32" : "fp16";
			bool is_int = dt == 1;
			/* data [4, 3]; scatter along axis 0 with indices [3] (a repeat), updates [3, 3] */
			double *vd, *vu;
			void *d = is_int ? rmask("int32", 12, &vd) : (void *)rf16(12, 1, 3, &vd);
			void *u = is_int ? rmask("int32", 9, &vu) : (void *)rf16(9, 1, 3, &vu);
			int32_t ind[3] = {2, -4, 2};
			uint8_t o[12 * 4];
			char inputs[128];
			snprintf(inputs, sizeof inputs, "tensor<%s, [4, 3]> d, tensor<int32, [3]> i, tensor<%s, [3, 3]> u", t, t);
			anes_bprogram *p = compile_ok(prog(inputs, "o",
				"        tensor<%s, [4, 3]> o = scatter(data = d, indices = i, updates = u, axis = int32(0), mode = string(\"%s\"));",
				t, modes[m]));
			const void *in[] = {d, ind, u};
			void *out[] = {o};
			run_ok(p, 0, in, out);
			double ref[12];
			memcpy(ref, vd, sizeof ref);
			for (int k = 0; k < 3; k++) {
				int row = ind[k] < 0 ? ind[k] + 4 : ind[k];
				for (int c = 0; c < 3; c++)
					ref[row * 3 + c] = sc_ref(m, ref[row * 3 + c], vu[k * 3 + c], is_int);
			}
			for (int i = 0; i < 12; i++) {
				double want = is_int ? (double)(int32_t)(uint32_t)(uint64_t)(int64_t)ref[i] : ref[i];
				cr_assert_eq(out_val(o, t, (size_t)i), want, "scatter %s %s [%d]", t, modes[m], i);
			}
			ind[1] = 4;
			cr_assert_eq(B->ops->run(B, p, 0, in, out, errbuf, sizeof errbuf), -EINVAL);
			B->ops->program_free(B, p);
			free(vd);
			free(vu);
			free(d);
			free(u);
		}
	/* scatter_nd: data [3, 4], indices [2, 1] -> rows; updates [2, 4] */
	double *vd, *vu;
	uint16_t *d = rf16(12, -2, 2, &vd), *u = rf16(8, -2, 2, &vu), o[12];
	int32_t ind[2] = {1, -1};
	anes_bprogram *p = compile_ok(prog("tensor<fp16, [3, 4]> d, tensor<int32, [2, 1]> i, tensor<fp16, [2, 4]> u", "o",
		"        tensor<fp16, [3, 4]> o = scatter_nd(data = d, indices = i, updates = u, mode = string(\"update\"));"));
	const void *in[] = {d, ind, u};
	void *out[] = {o};
	run_ok(p, 0, in, out);
	for (int i = 0; i < 12; i++) {
		int row = i / 4;
		double want = row == 1 ? vu[i % 4] : row == 2 ? vu[4 + i % 4] : vd[i];
		cr_assert_eq(h2d(o[i]), want, "scatter_nd [%d]", i);
	}
	ind[0] = 3;
	cr_assert_eq(B->ops->run(B, p, 0, in, out, errbuf, sizeof errbuf), -EINVAL);
	cr_assert(strstr(errbuf, "indices[0] = 3 is out of range [-3, 3)"), "%s", errbuf);
	B->ops->program_free(B, p);
	/* scatter_along_axis, axis 1, add: indices/updates [3, 2] */
	int32_t ia[6] = {0, 0, 3, -1, 2, 1};
	p = compile_ok(prog("tensor<fp16, [3, 4]> d, tensor<int32, [3, 2]> i, tensor<fp16, [3, 2]> u", "o",
		"        tensor<fp16, [3, 4]> o = scatter_along_axis(data = d, indices = i, updates = u, axis = int32(1));"));
	const void *in2[] = {d, ia, u};
	run_ok(p, 0, in2, out);
	double ref[12];
	memcpy(ref, vd, sizeof ref);
	for (int r = 0; r < 3; r++)
		for (int k = 0; k < 2; k++) {
			int col = ia[r * 2 + k] < 0 ? ia[r * 2 + k] + 4 : ia[r * 2 + k];
			ref[r * 4 + col] = sc_ref(1, ref[r * 4 + col], vu[r * 2 + k], false);
		}
	for (int i = 0; i < 12; i++)
		cr_assert_eq(h2d(o[i]), ref[i], "scatter_along_axis [%d]", i);
	B->ops->program_free(B, p);
	free(vd);
	free(vu);
	free(d);
	free(u);
}

Test(ops, slice_update_constant_and_runtime_begin)
{
	/* x [4, 6]; update [2, 3] into rows 1..2, columns 0, 2, 4 */
	double *vx, *vu;
	uint16_t *x = rf16(24, -2, 2, &vx), *u = rf16(6, -2, 2, &vu), o[24];
	void *out[] = {o};
	compile_run(prog("tensor<fp16, [4, 6]> x, tensor<fp16, [2, 3]> u", "o",
		"        tensor<fp16, [4, 6]> o = slice_update(x = x, update = u, begin = tensor<int32, [2]>([1, 0]), "
		"end = tensor<int32, [2]>([3, 6]), stride = tensor<int32, [2]>([1, 2]));"),
		(const void *[]){x, u}, out);
	for (int i = 0; i < 24; i++) {
		int r = i / 6, c = i % 6;
		bool hit = r >= 1 && r <= 2 && c % 2 == 0;
		cr_assert_eq(h2d(o[i]), hit ? vu[(r - 1) * 3 + c / 2] : vx[i], "slice_update [%d]", i);
	}
	/* a KV-cache style update: begin from a run-time input, row squeezed */
	int32_t beg[2] = {2, 0}, end[2] = {3, 6};
	anes_bprogram *p = compile_ok(prog("tensor<fp16, [4, 6]> x, tensor<fp16, [6]> u, tensor<int32, [2]> b, tensor<int32, [2]> e", "o",
		"        tensor<fp16, [4, 6]> o = slice_update(x = x, update = u, begin = b, end = e, "
		"squeeze_mask = tensor<bool, [2]>([true, false]));"));
	const void *in2[] = {x, u, beg, end};
	run_ok(p, 0, in2, out);
	for (int i = 0; i < 24; i++)
		cr_assert_eq(h2d(o[i]), i / 6 == 2 ? vu[i % 6] : vx[i], "runtime slice_update [%d]", i);
	beg[0] = -1;
	run_ok(p, 0, in2, out);
	cr_assert_eq(h2d(o[18]), vu[0]);
	beg[0] = 4;
	cr_assert_eq(B->ops->run(B, p, 0, in2, out, errbuf, sizeof errbuf), -EINVAL);
	cr_assert(strstr(errbuf, "begin[0] = 4 is out of range"), "%s", errbuf);
	beg[0] = 0;
	end[1] = 5;
	cr_assert_eq(B->ops->run(B, p, 0, in2, out, errbuf, sizeof errbuf), -EINVAL);
	cr_assert(strstr(errbuf, "the slice of axis 1 has 5 elements"), "%s", errbuf);
	end[1] = INT32_MAX;
	beg[1] = INT32_MIN;
	run_ok(p, 0, in2, out);   /* clamped to [0, 6): the whole row */
	B->ops->program_free(B, p);
	free(vx);
	free(vu);
	free(x);
	free(u);
}

/* ---- vision: pools, conv_transpose, resizing, crop; einsum ---- */

typedef struct pcase {
	int h, w, kh, kw, sh, sw;
	const char *pad_type;
	int pad[4];
	bool ceil_mode, exclude;
} pcase;

static int pool_out(int d, int k, int s, const char *pt, int pb, int pe, bool ceil_mode)
{
	if (!strcmp(pt, "same"))
		return (d + s - 1) / s;
	int span = d + pb + pe - k;
	int o = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
	if (ceil_mode && (o - 1) * s >= d + pb && pb + pe > 0)
		o--;
	return o;
}

Test(ops, max_avg_l2_pool)
{
	static const pcase cases[] = {
		{7, 6, 3, 2, 2, 1, "valid", {0, 0, 0, 0}, false, false},
		{7, 6, 3, 3, 2, 2, "same", {0, 0, 0, 0}, false, false},
		{7, 6, 3, 3, 2, 2, "same", {0, 0, 0, 0}, false, true},
		{7, 6, 2, 3, 1, 2, "custom", {1, 0, 0, 2}, false, false},
		{7, 6, 3, 3, 2, 2, "custom", {1, 1, 1, 1}, true, false},
		{7, 6, 3, 3, 2, 2, "custom", {1, 1, 1, 1}, true, true},
		{1, 9, 1, 3, 1, 2, "valid", {0, 0, 0, 0}, false, false},   /* 1-D */
	};
	static const char *kinds[] = {"max_pool", "avg_pool", "l2_pool"};
	for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
		for (int kd = 0; kd < 3; kd++) {
			const pcase *c = &cases[ci];
			bool one = c->h == 1;
			if (c->exclude && kd != 1)
				continue;
			int pt = 0, pl = 0, pb = c->pad[1], pe = c->pad[3];
			pt = c->pad[0], pl = c->pad[2];
			int oh = pool_out(c->h, c->kh, c->sh, c->pad_type, pt, pb, c->ceil_mode);
			int ow = pool_out(c->w, c->kw, c->sw, c->pad_type, pl, pe, c->ceil_mode);
			if (!strcmp(c->pad_type, "same")) {
				int th = (oh - 1) * c->sh + c->kh - c->h, tw = (ow - 1) * c->sw + c->kw - c->w;
				th = th < 0 ? 0 : th, tw = tw < 0 ? 0 : tw;
				pt = th / 2, pb = th - pt, pl = tw / 2, pe = tw - pl;
			}
			size_t n = (size_t)(2 * 3 * c->h * c->w), no = (size_t)(2 * 3 * oh * ow);
			double *v, *ref = malloc(no * sizeof *ref);
			uint16_t *x = rf16(n, kd == 0 ? -4 : 0.1, 4, &v), *y = malloc(no * 2);
			char tin[64], tout[64], body[400];
			if (one) {
				snprintf(tin, sizeof tin, "tensor<fp16, [2, 3, %d]>", c->w);
				snprintf(tout, sizeof tout, "tensor<fp16, [2, 3, %d]>", ow);
				snprintf(body, sizeof body, "%s(x = x, kernel_sizes = tensor<int32, [1]>([%d]), strides = tensor<int32, [1]>([%d]), pad_type = string(\"%s\"))",
				         kinds[kd], c->kw, c->sw, c->pad_type);
			} else {
				snprintf(tin, sizeof tin, "tensor<fp16, [2, 3, %d, %d]>", c->h, c->w);
				snprintf(tout, sizeof tout, "tensor<fp16, [2, 3, %d, %d]>", oh, ow);
				snprintf(body, sizeof body, "%s(x = x, kernel_sizes = tensor<int32, [2]>([%d, %d]), strides = tensor<int32, [2]>([%d, %d]), "
				         "pad_type = string(\"%s\"), pad = tensor<int32, [4]>([%d, %d, %d, %d]), ceil_mode = %s%s)",
				         kinds[kd], c->kh, c->kw, c->sh, c->sw, c->pad_type, c->pad[0], c->pad[1], c->pad[2], c->pad[3],
				         c->ceil_mode ? "true" : "false",
				         kd == 1 ? (c->exclude ? ", exclude_padding_from_average = true" : ", exclude_padding_from_average = false") : "");
			}
			run1_f16(tin, tout, body, x, y);
			for (int p = 0; p < 6; p++)
				for (int i = 0; i < oh; i++)
					for (int j = 0; j < ow; j++) {
						double mx = -INFINITY, sum = 0, sq = 0;
						int cnt = 0, padded = 0;
						for (int a = 0; a < c->kh; a++)
							for (int b = 0; b < c->kw; b++) {
								int yy = i * c->sh - pt + a, xx = j * c->sw - pl + b;
								if (yy < c->h + pb && xx < c->w + pe)
									padded++;
								if (yy < 0 || xx < 0 || yy >= c->h || xx >= c->w)
									continue;
								double t = v[(p * c->h + yy) * c->w + xx];
								mx = fmax(mx, t), sum += t, sq += t * t, cnt++;
							}
						ref[(p * oh + i) * ow + j] = kd == 0 ? mx : kd == 2 ? sqrt(sq) : sum / (c->exclude ? cnt : padded);
					}
			check_f16(body, y, ref, no, 2e-3);
			free(v);
			free(ref);
			free(x);
			free(y);
		}
	cr_assert_eq(compile_err(prog("tensor<fp16, [1, 2, 4, 4, 4]> x", "y",
	                 "        tensor<fp16, [1, 2, 2, 2, 2]> y = max_pool(x = x, kernel_sizes = tensor<int32, [3]>([2, 2, 2]), pad_type = string(\"valid\"));")),
	             -ENOTSUP);
	cr_assert(strstr(errbuf, "3-D windows are not supported"), "%s", errbuf);
}

Test(ops, conv_transpose)
{
	/* x [1, 4, 3, 5]; weight [4, Cout/g, 3, 2]; out = (in - 1) s + (k - 1) d + 1 - pads */
	static const struct {
		int groups, sh, sw, dh, dw;
		const char *pt;
		int pad[4];
		int oh, ow;       /* 0: computed */
	} cases[] = {
		{1, 1, 1, 1, 1, "valid", {0, 0, 0, 0}, 0, 0},
		{1, 2, 1, 1, 2, "custom", {1, 0, 0, 1}, 0, 0},
		{2, 2, 3, 1, 1, "valid", {0, 0, 0, 0}, 0, 0},
		{1, 2, 2, 1, 1, "same", {0, 0, 0, 0}, 0, 0},
		{1, 2, 2, 1, 1, "valid", {0, 0, 0, 0}, 8, 12},   /* output_shape: extra rows/cols */
	};
	for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
		int g = cases[ci].groups, cout_g = g == 1 ? 3 : 1, cout = cout_g * g;
		int sh = cases[ci].sh, sw = cases[ci].sw, dh = cases[ci].dh, dw = cases[ci].dw;
		const int *pad = cases[ci].pad;
		int oh = (3 - 1) * sh + (3 - 1) * dh + 1 - pad[0] - pad[1], ow = (5 - 1) * sw + (2 - 1) * dw + 1 - pad[2] - pad[3];
		int pt = pad[0], pl = pad[2];
		if (!strcmp(cases[ci].pt, "same")) {
			int fh = (3 - 1) * sh + (3 - 1) * dh + 1, fw = (5 - 1) * sw + (2 - 1) * dw + 1;
			oh = 3 * sh, ow = 5 * sw;
			pt = (fh - oh) / 2, pl = (fw - ow) / 2;
		}
		if (cases[ci].oh)
			oh = cases[ci].oh, ow = cases[ci].ow;
		size_t nw = (size_t)(4 * cout_g * 3 * 2), no = (size_t)(cout * oh * ow);
		double *vx, *vw, *vb, *ref = calloc(no, sizeof *ref);
		uint16_t *x = rf16(60, -2, 2, &vx), *w = rf16(nw, -1, 1, &vw), *b = rf16((size_t)cout, -1, 1, &vb);
		uint16_t *y = malloc(no * 2);
		char wl[4096], bl[256], body[6000], os[96] = "";
		int o = snprintf(wl, sizeof wl, "tensor<fp16, [4, %d, 3, 2]>([", cout_g);
		for (size_t i = 0; i < nw; i++)
			o += snprintf(wl + o, sizeof wl - (size_t)o, "%s%.17g", i ? ", " : "", vw[i]);
		snprintf(wl + o, sizeof wl - (size_t)o, "])");
		o = snprintf(bl, sizeof bl, "tensor<fp16, [%d]>([", cout);
		for (int i = 0; i < cout; i++)
			o += snprintf(bl + o, sizeof bl - (size_t)o, "%s%.17g", i ? ", " : "", vb[i]);
		snprintf(bl + o, sizeof bl - (size_t)o, "])");
		if (cases[ci].oh)
			snprintf(os, sizeof os, ", output_shape = tensor<int32, [2]>([%d, %d])", oh, ow);
		snprintf(body, sizeof body,
		         "conv_transpose(x = x, weight = %s, bias = %s, strides = tensor<int32, [2]>([%d, %d]), dilations = tensor<int32, [2]>([%d, %d]), "
		         "pad_type = string(\"%s\"), pad = tensor<int32, [4]>([%d, %d, %d, %d]), groups = int32(%d)%s)",
		         wl, bl, sh, sw, dh, dw, cases[ci].pt, pad[0], pad[1], pad[2], pad[3], g, os);
		char tout[64];
		snprintf(tout, sizeof tout, "tensor<fp16, [1, %d, %d, %d]>", cout, oh, ow);
		run1_f16("tensor<fp16, [1, 4, 3, 5]>", tout, body, x, y);
		/* gather form: out[co][oy][ox] = b + sum x[ci][iy][ix] w[ci][co_g][ky][kx], oy = iy sh + ky dh - pt */
		for (int co = 0; co < cout; co++)
			for (int oy = 0; oy < oh; oy++)
				for (int ox = 0; ox < ow; ox++) {
					double s = vb[co];
					int grp = co / cout_g, cg = co % cout_g;
					for (int ci2 = grp * (4 / g); ci2 < (grp + 1) * (4 / g); ci2++)
						for (int ky = 0; ky < 3; ky++)
							for (int kx = 0; kx < 2; kx++) {
								int ny = oy + pt - ky * dh, nx = ox + pl - kx * dw;
								if (ny < 0 || nx < 0 || ny % sh || nx % sw || ny / sh >= 3 || nx / sw >= 5)
									continue;
								s += vx[(ci2 * 3 + ny / sh) * 5 + nx / sw] * vw[((ci2 * cout_g + cg) * 3 + ky) * 2 + kx];
							}
					ref[(co * oh + oy) * ow + ox] = s;
				}
		check_f16(body + 0, y, ref, no, 3e-3);
		free(vx);
		free(vw);
		free(vb);
		free(ref);
		free(x);
		free(w);
		free(b);
		free(y);
	}
}

Test(ops, resize_grids_and_crop)
{
	/* x = [0, 1] along W: a bilinear resize returns its grid points, which coremltools' op
	 * reference tabulates for Xin = 2, Xout = 5 and 6 */
	static const struct {
		const char *mode;
		double g5[5], g6[6];
	} grids[] = {
		{"UNALIGN_CORNERS", {0, 0.1, 0.5, 0.9, 1}, {0, 0, 0.33, 0.67, 1, 1}},
		{"STRICT_ALIGN_CORNERS", {0, 0.25, 0.5, 0.75, 1}, {0, 0.2, 0.4, 0.6, 0.8, 1}},
		{"ALIGN_CORNERS", {0, 0.25, 0.5, 0.75, 1}, {0, 0.2, 0.4, 0.6, 0.8, 1}},
		{"DEFAULT", {0, 0.4, 0.8, 1, 1}, {0, 0.33, 0.67, 1, 1, 1}},
		{"OFFSET_CORNERS", {0.1, 0.3, 0.5, 0.7, 0.9}, {0.08, 0.25, 0.42, 0.58, 0.75, 0.92}},
	};
	uint16_t x2[2] = {anes_f32_to_f16_soft(0), anes_f32_to_f16_soft(1)}, y6[6];
	for (size_t m = 0; m < 5; m++)
		for (int n = 5; n <= 6; n++) {
			char body[160], tout[64];
			snprintf(body, sizeof body, "resize_bilinear(x = x, target_size_height = int32(1), target_size_width = int32(%d), sampling_mode = string(\"%s\"))",
			         n, grids[m].mode);
			snprintf(tout, sizeof tout, "tensor<fp16, [1, 1, %d]>", n);
			run1_f16("tensor<fp16, [1, 1, 2]>", tout, body, x2, y6);
			check_f16(body, y6, n == 5 ? grids[m].g5 : grids[m].g6, (size_t)n, 6e-3);
		}
	/* upsample_bilinear: align_corners true = STRICT_ALIGN_CORNERS, false = UNALIGN_CORNERS */
	run1_f16("tensor<fp16, [1, 1, 2]>", "tensor<fp16, [1, 1, 6]>",
	         "upsample_bilinear(x = x, scale_factor_height = int32(1), scale_factor_width = int32(3), align_corners = false)", x2, y6);
	check_f16("upsample_bilinear half pixel", y6, grids[0].g6, 6, 6e-3);
	run1_f16("tensor<fp16, [1, 1, 2]>", "tensor<fp16, [1, 1, 6]>",
	         "upsample_bilinear(x = x, scale_factor_height = int32(1), scale_factor_width = int32(3))", x2, y6);
	check_f16("upsample_bilinear align corners", y6, grids[1].g6, 6, 6e-3);
	/* 2-D bilinear on random data: both dims interpolate (UNALIGN_CORNERS, x [2, 3, 4] -> [2, 5, 7]) */
	double *v, ref[70];
	uint16_t *x = rf16(24, -2, 2, &v), y[80];
	run1_f16("tensor<fp16, [2, 3, 4]>", "tensor<fp16, [2, 5, 7]>",
	         "resize_bilinear(x = x, target_size_height = int32(5), target_size_width = int32(7), sampling_mode = string(\"UNALIGN_CORNERS\"))", x, y);
	for (int p = 0; p < 2; p++)
		for (int i = 0; i < 5; i++)
			for (int j = 0; j < 7; j++) {
				double gy = fmin(2, fmax(0, (i + 0.5) * 3 / 5 - 0.5)), gx = fmin(3, fmax(0, (j + 0.5) * 4 / 7 - 0.5));
				int y0 = (int)gy, x0 = (int)gx, y1 = y0 + 1 < 3 ? y0 + 1 : y0, x1 = x0 + 1 < 4 ? x0 + 1 : x0;
				double wy = gy - y0, wx = gx - x0;
				const double *q = v + p * 12;
				ref[(p * 5 + i) * 7 + j] = (1 - wy) * ((1 - wx) * q[y0 * 4 + x0] + wx * q[y0 * 4 + x1]) +
				                           wy * ((1 - wx) * q[y1 * 4 + x0] + wx * q[y1 * 4 + x1]);
			}
	check_f16("resize_bilinear 2-D", y, ref, 70, 2e-3);
	/* nearest: upsample by 2 x 1.5, resize to 2 x 6; source floor(i * in / out) */
	run1_f16("tensor<fp16, [2, 3, 4]>", "tensor<fp16, [2, 6, 6]>",
	         "upsample_nearest_neighbor(x = x, scale_factor_height = int32(2), scale_factor_width = fp32(1.5))", x, y);
	for (int i = 0; i < 72; i++) {
		int p = i / 36, r = (i / 6) % 6, c = i % 6;
		cr_assert_eq(h2d(y[i]), v[p * 12 + (r / 2) * 4 + (c * 4) / 6], "upsample_nearest_neighbor [%d]", i);
	}
	run1_f16("tensor<fp16, [2, 3, 4]>", "tensor<fp16, [2, 2, 6]>",
	         "resize_nearest_neighbor(x = x, target_size_height = int32(2), target_size_width = int32(6))", x, y);
	for (int i = 0; i < 24; i++) {
		int p = i / 12, r = (i / 6) % 2, c = i % 6;
		cr_assert_eq(h2d(y[i]), v[p * 12 + (r * 3 / 2) * 4 + (c * 4) / 6], "resize_nearest_neighbor [%d]", i);
	}
	/* crop: 1 row off the top, 1 column off each side */
	run1_f16("tensor<fp16, [2, 3, 4]>", "tensor<fp16, [2, 2, 2]>",
	         "crop(x = x, crop_height = tensor<int32, [2]>([1, 0]), crop_width = tensor<int32, [2]>([1, 1]))", x, y);
	for (int i = 0; i < 8; i++)
		cr_assert_eq(h2d(y[i]), v[(i / 4) * 12 + ((i / 2) % 2 + 1) * 4 + i % 2 + 1], "crop [%d]", i);
	compile_err(prog("tensor<fp16, [2, 3, 4]> x", "y",
	                 "        tensor<fp16, [2, 3, 4]> y = resize_bilinear(x = x, target_size_height = int32(3), target_size_width = int32(4), sampling_mode = string(\"BICUBIC\"));"));
	cr_assert(strstr(errbuf, "sampling_mode must be"), "%s", errbuf);
	free(v);
	free(x);
}

Test(ops, einsum_equations)
{
	/* the two forms coremltools writes, and a general contraction; fp64 references */
	static const struct {
		const char *eq, *ta, *tb, *tout;
		int da[4], db[4], ra, rb;
	} cases[] = {
		{"nchw,nwhu->nchu", "[2, 3, 4, 5]", "[2, 5, 4, 6]", "[2, 3, 4, 6]", {2, 3, 4, 5}, {2, 5, 4, 6}, 4, 4},
		{"chw,whu->chu", "[3, 4, 5]", "[5, 4, 6]", "[3, 4, 6]", {3, 4, 5}, {5, 4, 6}, 3, 3},
		{"ij,kj->ik", "[3, 7]", "[4, 7]", "[3, 4]", {3, 7}, {4, 7}, 2, 2},
		{"bij,bjk->bki", "[2, 3, 4]", "[2, 4, 5]", "[2, 5, 3]", {2, 3, 4}, {2, 4, 5}, 3, 3},
	};
	for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
		size_t na = prod(cases[ci].da, cases[ci].ra), nb = prod(cases[ci].db, cases[ci].rb);
		double *va, *vb;
		float *a = rf32(na, -1, 1, &va), *b = rf32(nb, -1, 1, &vb), y[200];
		char inputs[128];
		snprintf(inputs, sizeof inputs, "tensor<fp32, %s> a, tensor<fp32, %s> b", cases[ci].ta, cases[ci].tb);
		compile_run(prog(inputs, "y", "        tensor<fp32, %s> y = einsum(values = (a, b), equation = string(\"%s\"));",
		                 cases[ci].tout, cases[ci].eq), (const void *[]){a, b}, (void *[]){y});
		/* reference: bind every letter, loop over all bindings */
		const char *eq = cases[ci].eq;
		char ta[8] = {0}, tb[8] = {0}, to[8] = {0}, letters[16] = {0};
		sscanf(eq, "%7[a-z],%7[a-z]->%7[a-z]", ta, tb, to);
		int dim[128] = {0}, nl = 0;
		for (int k = 0; ta[k]; k++)
			dim[(int)ta[k]] = cases[ci].da[k];
		for (int k = 0; tb[k]; k++)
			dim[(int)tb[k]] = cases[ci].db[k];
		for (const char *c = to; *c; c++)
			letters[nl++] = *c;
		for (const char *c = ta; *c; c++)
			if (!strchr(letters, *c))
				letters[nl++] = *c;
		for (const char *c = tb; *c; c++)
			if (!strchr(letters, *c))
				letters[nl++] = *c;
		size_t no = 1, total = 1;
		for (int k = 0; to[k]; k++)
			no *= (size_t)dim[(int)to[k]];
		for (int k = 0; k < nl; k++)
			total *= (size_t)dim[(int)letters[k]];
		double ref[200] = {0};
		for (size_t t = 0; t < total; t++) {
			int val[128] = {0};
			size_t r = t;
			for (int k = nl - 1; k >= 0; k--) {
				val[(int)letters[k]] = (int)(r % (size_t)dim[(int)letters[k]]);
				r /= (size_t)dim[(int)letters[k]];
			}
			size_t ia = 0, ib = 0, io = 0;
			for (int k = 0; ta[k]; k++)
				ia = ia * (size_t)dim[(int)ta[k]] + (size_t)val[(int)ta[k]];
			for (int k = 0; tb[k]; k++)
				ib = ib * (size_t)dim[(int)tb[k]] + (size_t)val[(int)tb[k]];
			for (int k = 0; to[k]; k++)
				io = io * (size_t)dim[(int)to[k]] + (size_t)val[(int)to[k]];
			ref[io] += va[ia] * vb[ib];
		}
		check_f32(eq, y, ref, no, 1e-5);
		free(va);
		free(vb);
		free(a);
		free(b);
	}
	compile_err(prog("tensor<fp32, [2, 3]> a", "y", "        tensor<fp32, [2, 2]> y = einsum(values = (a, a), equation = string(\"...i,...i->...\"));"));
	cr_assert(strstr(errbuf, "ellipsis (...) is not supported"), "%s", errbuf);
	compile_err(prog("tensor<fp32, [3, 3]> a", "y", "        tensor<fp32, [3]> y = einsum(values = (a, a), equation = string(\"ii,ij->j\"));"));
	cr_assert(strstr(errbuf, "a repeated index in one term is not supported"), "%s", errbuf);
	compile_err(prog("tensor<fp32, [3, 3]> a", "y", "        tensor<fp32, [3, 3]> y = einsum(values = (a, a, a), equation = string(\"ij,jk,kl->il\"));"));
	cr_assert(strstr(errbuf, "einsum of 3 operands is not supported"), "%s", errbuf);
}

/* ---- docs/mil.md's table of every op of the iOS 15-18 opsets states the code ---- */

Test(ops, doc_table_matches_the_op_table)
{
	char *doc = read_example("docs/mil.md");
	char *sec = strstr(doc, "## Every op of the iOS 15-18 opsets");
	cr_assert_not_null(sec);
	char *end = strstr(sec + 4, "\n## ");
	if (end)
		*end = 0;
	int rows = 0, supported = 0;
	for (char *line = strstr(sec, "\n| `"); line; line = strstr(line + 1, "\n| `")) {
		char name[64], status[32];
		cr_assert_eq(sscanf(line, "\n| `%63[a-z0-9_]` | %*[0-9, ] | %31[a-z (]", name, status), 2, "bad row: %.80s", line + 1);
		bool has_def = anes_mil_opdef_find(name, strlen(name)) != NULL;
		bool has_kernel = cpu_opimpl_find(name) != NULL;
		rows++;
		if (!strcmp(status, "supported (a value")) {
			cr_assert(!has_def, "%s is an op now", name);
		} else if (!strcmp(status, "supported ")) {
			cr_assert(has_def && has_kernel, "docs/mil.md says %s is supported, but the op table (%d) or the CPU kernels (%d) lack it",
			          name, has_def, has_kernel);
			supported++;
		} else {
			cr_assert(!strncmp(status, "unsupported", 11), "row %s: status '%s'", name, status);
			cr_assert(!(has_def && has_kernel), "docs/mil.md says %s is unsupported, but the CPU backend runs it: update the row",
			          name);
		}
	}
	cr_assert_geq(rows, 168, "%d rows", rows);
	cr_assert_geq(supported, 136, "%d supported", supported);
	free(doc);
}

/* ---- recurrent ---- */

static double sgm(double v) { return 1 / (1 + exp(-v)); }

static char *f16_list(char *buf, size_t len, const char *shape, const double *v, size_t n)
{
	int o = snprintf(buf, len, "tensor<fp16, %s>([", shape);
	for (size_t i = 0; i < n; i++)
		o += snprintf(buf + o, len - (size_t)o, "%s%.17g", i ? ", " : "", v[i]);
	snprintf(buf + o, len - (size_t)o, "])");
	return buf;
}

Test(ops, lstm_and_rnn)
{
	enum { S = 4, Bn = 2, I = 3, H = 2 };
	static const char *dirs[] = {"forward", "reverse", "bidirectional"};
	for (int di = 0; di < 3; di++)
		for (int peep = 0; peep < 2; peep++)
			for (int seqo = 0; seqo < 2; seqo++) {
				int D = di == 2 ? 2 : 1;
				double *vx, *vh0, *vc0, *w[2][4];
				uint16_t *x = rf16(S * Bn * I, -1, 1, &vx), *h0 = rf16(Bn * D * H, -1, 1, &vh0), *c0 = rf16(Bn * D * H, -1, 1, &vc0);
				static const size_t wn[4] = {4 * H * I, 4 * H * H, 4 * H, 3 * H};
				char wl[2][4][1024];
				static const char *shp[4] = {"[8, 3]", "[8, 2]", "[8]", "[6]"};
				for (int d = 0; d < 2; d++)
					for (int k = 0; k < 4; k++) {
						uint16_t *t = rf16(wn[k], -0.8, 0.8, &w[d][k]);
						free(t);
						f16_list(wl[d][k], sizeof wl[d][k], shp[k], w[d][k], wn[k]);
					}
				char body[8192];
				snprintf(body, sizeof body,
				         "        tensor<fp16, [%d, 2, %d]> o, tensor<fp16, [2, %d]> h, tensor<fp16, [2, %d]> c = lstm(x = x, initial_h = h0, initial_c = c0, "
				         "weight_ih = %s, weight_hh = %s, bias = %s%s%s%s%s%s%s%s%s, direction = string(\"%s\"), output_sequence = %s);",
				         seqo ? S : 1, D * H, D * H, D * H, wl[0][0], wl[0][1], wl[0][2], peep ? ", peephole = " : "", peep ? wl[0][3] : "",
				         D == 2 ? ", weight_ih_back = " : "", D == 2 ? wl[1][0] : "", D == 2 ? ", weight_hh_back = " : "",
				         D == 2 ? wl[1][1] : "", D == 2 ? ", bias_back = " : "", D == 2 ? wl[1][2] : "", dirs[di],
				         seqo ? "true" : "false");
				char inputs[160];
				snprintf(inputs, sizeof inputs, "tensor<fp16, [4, 2, 3]> x, tensor<fp16, [2, %d]> h0, tensor<fp16, [2, %d]> c0", D * H, D * H);
				uint16_t o[S * Bn * 2 * H], hh[Bn * 2 * H], cc[Bn * 2 * H];
				compile_run(prog(inputs, "o, h, c", "%s", body),
				            (const void *[]){x, h0, c0}, (void *[]){o, hh, cc});
				/* reference */
				double hs[Bn][2 * H], cs[Bn][2 * H], seq[S][Bn][2 * H];
				for (int b = 0; b < Bn; b++)
					for (int j = 0; j < D * H; j++)
						hs[b][j] = vh0[b * D * H + j], cs[b][j] = vc0[b * D * H + j];
				for (int d = 0; d < D; d++)
					for (int t0 = 0; t0 < S; t0++) {
						int t = (di == 1 || d == 1) ? S - 1 - t0 : t0;
						for (int b = 0; b < Bn; b++) {
							double gsum[4 * H];
							for (int r = 0; r < 4 * H; r++) {
								double s = w[d][2][r];
								for (int i = 0; i < I; i++)
									s += w[d][0][r * I + i] * vx[(t * Bn + b) * I + i];
								for (int i = 0; i < H; i++)
									s += w[d][1][r * H + i] * hs[b][d * H + i];
								gsum[r] = s;
							}
							for (int j = 0; j < H; j++) {
								double cp = cs[b][d * H + j], pp[3] = {0, 0, 0};
								if (peep && d == 0)
									pp[0] = w[0][3][j], pp[1] = w[0][3][H + j], pp[2] = w[0][3][2 * H + j];
								double ig = sgm(gsum[j] + pp[0] * cp), fg = sgm(gsum[H + j] + pp[1] * cp);
								double cn = fg * cp + ig * tanh(gsum[3 * H + j]);
								double og = sgm(gsum[2 * H + j] + pp[2] * cn);
								cs[b][d * H + j] = cn;
								hs[b][d * H + j] = og * tanh(cn);
								seq[t][b][d * H + j] = hs[b][d * H + j];
							}
						}
					}
				double rh[Bn * 2 * H], rc[Bn * 2 * H], ro[S * Bn * 2 * H];
				for (int b = 0; b < Bn; b++)
					for (int j = 0; j < D * H; j++)
						rh[b * D * H + j] = hs[b][j], rc[b * D * H + j] = cs[b][j];
				for (int t = 0; t < S; t++)
					for (int b = 0; b < Bn; b++)
						for (int j = 0; j < D * H; j++)
							ro[(t * Bn + b) * D * H + j] = seq[t][b][j];
				char what[64];
				snprintf(what, sizeof what, "lstm %s peephole %d seq %d", dirs[di], peep, seqo);
				check_f16(what, hh, rh, (size_t)(Bn * D * H), 3e-3);
				check_f16(what, cc, rc, (size_t)(Bn * D * H), 3e-3);
				check_f16(what, o, seqo ? ro : rh, (size_t)((seqo ? S : 1) * Bn * D * H), 3e-3);
				for (int d = 0; d < 2; d++)
					for (int k = 0; k < 4; k++)
						free(w[d][k]);
				free(vx), free(vh0), free(vc0), free(x), free(h0), free(c0);
			}
	/* rnn, reverse, relu, the sequence */
	double *vx, *vh0, *wi, *wh, *bb;
	uint16_t *x = rf16(S * Bn * I, -1, 1, &vx), *h0 = rf16(Bn * H, -1, 1, &vh0);
	free(rf16(H * I, -1, 1, &wi));
	free(rf16(H * H, -1, 1, &wh));
	free(rf16(H, -1, 1, &bb));
	char a[512], b2[512], c2[256];
	uint16_t o[S * Bn * H], hh[Bn * H];
	compile_run(prog("tensor<fp16, [4, 2, 3]> x, tensor<fp16, [2, 2]> h0", "o, h",
		"        tensor<fp16, [4, 2, 2]> o, tensor<fp16, [2, 2]> h = rnn(x = x, initial_h = h0, weight_ih = %s, weight_hh = %s, bias = %s, "
		"direction = string(\"reverse\"), output_sequence = true, activation = string(\"relu\"));",
		f16_list(a, sizeof a, "[2, 3]", wi, H * I), f16_list(b2, sizeof b2, "[2, 2]", wh, H * H), f16_list(c2, sizeof c2, "[2]", bb, H)),
		(const void *[]){x, h0}, (void *[]){o, hh});
	double hs[Bn][H], ro[S * Bn * H];
	for (int b = 0; b < Bn; b++)
		for (int j = 0; j < H; j++)
			hs[b][j] = vh0[b * H + j];
	for (int t = S - 1; t >= 0; t--)
		for (int b = 0; b < Bn; b++) {
			double nh[H];
			for (int j = 0; j < H; j++) {
				double s = bb[j];
				for (int i = 0; i < I; i++)
					s += wi[j * I + i] * vx[(t * Bn + b) * I + i];
				for (int i = 0; i < H; i++)
					s += wh[j * H + i] * hs[b][i];
				nh[j] = s < 0 ? 0 : s;
			}
			for (int j = 0; j < H; j++)
				hs[b][j] = nh[j], ro[(t * Bn + b) * H + j] = nh[j];
		}
	check_f16("rnn sequence", o, ro, S * Bn * H, 3e-3);
	double rh[Bn * H] = {hs[0][0], hs[0][1], hs[1][0], hs[1][1]};
	check_f16("rnn h", hh, rh, Bn * H, 3e-3);
	free(vx), free(vh0), free(wi), free(wh), free(bb), free(x), free(h0);
}

Test(ops, reverse_sequence_and_reshape_like)
{
	/* x [seq 4, batch 3, 2]; lengths per batch entry */
	double *v;
	uint16_t *x = rf16(24, -4, 4, &v), y[24];
	int32_t len[3] = {2, 4, 0};
	anes_bprogram *p = compile_ok(prog("tensor<fp16, [4, 3, 2]> x, tensor<int32, [3]> l", "y",
		"        tensor<fp16, [4, 3, 2]> y = reverse_sequence(x = x, lengths = l, seq_axis = int32(0), batch_axis = int32(1));"));
	const void *in[] = {x, len};
	void *out[] = {y};
	run_ok(p, 0, in, out);
	for (int t = 0; t < 4; t++)
		for (int b = 0; b < 3; b++)
			for (int k = 0; k < 2; k++) {
				int src = t < len[b] ? len[b] - 1 - t : t;
				cr_assert_eq(h2d(y[(t * 3 + b) * 2 + k]), v[(src * 3 + b) * 2 + k], "reverse_sequence [%d][%d][%d]", t, b, k);
			}
	len[1] = 5;
	cr_assert_eq(B->ops->run(B, p, 0, in, out, errbuf, sizeof errbuf), -EINVAL);
	cr_assert(strstr(errbuf, "lengths[1] = 5 is out of range [0, 4]"), "%s", errbuf);
	B->ops->program_free(B, p);
	/* reshape_like: the shape from slices of the references' shapes */
	uint16_t z[24];
	compile_run(prog("tensor<fp16, [4, 3, 2]> x, tensor<fp16, [2, 9]> a, tensor<fp16, [1, 12, 5]> b", "y",
		"        tensor<fp16, [2, 12]> y = reshape_like(x = x, ref_tensors = (a, b), begins = tensor<int32, [2]>([0, 1]), "
		"ends = tensor<int32, [2]>([1, 2]), end_masks = tensor<bool, [2]>([false, false]));"),
		(const void *[]){x, x, x}, (void *[]){z});
	for (int i = 0; i < 24; i++)
		cr_assert_eq(h2d(z[i]), v[i]);
	compile_err(prog("tensor<fp16, [4, 3, 2]> x, tensor<fp16, [2, 9]> a", "y",
		"        tensor<fp16, [2, 9]> y = reshape_like(x = x, ref_tensors = (a), begins = tensor<int32, [1]>([0]), ends = tensor<int32, [1]>([2]));"));
	cr_assert(strstr(errbuf, "the reference shape has 18 elements, x has 24"), "%s", errbuf);
	free(v);
	free(x);
}

Test(ops, topk_and_argmax_ios17_forms)
{
	/* k = -1 (all), return_indices = false (values only); output_dtype / output_indices_dtype "int32" */
	float x[5] = {0.5f, -1, 3, 2, 3}, v[5];
	int32_t ix[5], am;
	compile_run(prog("tensor<fp32, [5]> x", "v, i, a",
		"        tensor<fp32, [5]> v = topk(x = x, k = int32(-1), return_indices = false);\n"
		"        tensor<fp32, [5]> w, tensor<int32, [5]> i = topk(x = x, k = int32(-1), ascending = true, output_indices_dtype = string(\"int32\"));\n"
		"        int32 a = reduce_argmax(x = x, output_dtype = string(\"int32\"));"),
		(const void *[]){x}, (void *[]){v, ix, &am});
	static const float want[5] = {3, 3, 2, 0.5f, -1};
	static const int32_t wi[5] = {1, 0, 3, 2, 4};
	for (int i = 0; i < 5; i++) {
		cr_assert_eq(v[i], want[i]);
		cr_assert_eq(ix[i], wi[i]);
	}
	cr_assert_eq(am, 2);
	cr_assert_eq(compile_err(prog("tensor<fp32, [5]> x", "a", "        int32 a = reduce_argmax(x = x, output_dtype = string(\"uint16\"));")),
	             -ENOTSUP);
	compile_err(prog("tensor<fp32, [5]> x", "v", "        tensor<fp32, [5]> v, tensor<int32, [5]> i = topk(x = x, k = int32(-1), return_indices = false);"));
	cr_assert(strstr(errbuf, "has 1 outputs, 2 declared"), "%s", errbuf);
}

/* The op table's argument checks are one set (daemon/mil/mil_args.c): an op of
 * either half of the table (mil_ops.c, mil_ops_ext.c) reads an optional
 * number the same way (a scalar or a one-element vector) and fails with the
 * same words. */
Test(ops, argument_checks_are_one_set)
{
	/* leaky_relu (mil_ops_ext.c) takes alpha as a one-element vector, as log (mil_ops.c) takes epsilon */
	uint16_t x[4], y[4];
	static const double xs[4] = {-2, -0.5, 0, 3};
	for (int i = 0; i < 4; i++)
		x[i] = anes_f32_to_f16_soft((float)xs[i]);
	run1_f16("tensor<fp16, [4]>", "tensor<fp16, [4]>", "leaky_relu(x = x, alpha = tensor<fp16, [1]>([0.125]))", x, y);
	static const double want[4] = {-0.25, -0.0625, 0, 3};
	for (int i = 0; i < 4; i++)
		cr_assert_eq(h2d(y[i]), want[i], "leaky_relu[%d] = %g, want %g", i, h2d(y[i]), want[i]);
	run1_f16("tensor<fp16, [4]>", "tensor<fp16, [4]>", "log(x = x, epsilon = tensor<fp16, [1]>([4]))", x, y);
	cr_assert_eq(h2d(y[0]), h2d(anes_f32_to_f16_soft(logf(2.0f))));

	/* two elements: refused by both, in the same words */
	static const char *const bad[][2] = {
		{"leaky_relu(x = x, alpha = tensor<fp16, [2]>([0.125, 0.25]))", "argument 'alpha' must be a numeric scalar"},
		{"log(x = x, epsilon = tensor<fp16, [2]>([1, 2]))", "argument 'epsilon' must be a numeric scalar"},
		{"cumsum(x = x, exclusive = int32(1))", "argument 'exclusive' must be a bool scalar"},
		{"softmax(x = x, axis = fp16(0))", "argument 'axis' must be an integer scalar"},
		{"cumsum(x = x, axis = tensor<int32, [1]>([0]))", "argument 'axis' must be an integer scalar"},
		{"softmax(x = x, axis = int32(1))", "axis 1 is out of range for rank 1"},
		{"cumsum(x = x, axis = int32(-2))", "axis -2 is out of range for rank 1"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		cr_assert_eq(compile_err(prog("tensor<fp16, [4]> x", "y", "        tensor<fp16, [4]> y = %s;", bad[i][0])),
		             -EINVAL, "%s", bad[i][0]);
		cr_assert(strstr(errbuf, bad[i][1]), "%s: %s", bad[i][0], errbuf);
	}
	cr_assert_eq(compile_err(prog("tensor<fp16, [2, 2]> x", "y",
		"        tensor<fp16, [2, 2]> y = matmul(x = x, y = x, transpose_x = int32(1));")), -EINVAL);
	cr_assert(strstr(errbuf, "argument 'transpose_x' must be a bool scalar"), "%s", errbuf);

	/* a result over the tensor limit: the same message from tile (mil_ops.c) and fill (mil_ops_ext.c) */
	cr_assert_eq(compile_err(prog("tensor<fp16, [4, 4]> x", "y",
		"        tensor<fp16, [4, 4]> y = tile(x = x, reps = tensor<int32, [2]>([65536, 65536]));")),
		-EINVAL);
	cr_assert(strstr(errbuf, "result is too large (or has a zero or oversized dimension)"), "%s", errbuf);
	cr_assert_eq(compile_err(prog("tensor<fp16, [4]> x", "y",
		"        tensor<fp16, [4]> y = fill(shape = tensor<int32, [2]>([4194304, 4194304]), value = fp16(1));")),
		-EINVAL);
	cr_assert(strstr(errbuf, "result is too large (or has a zero or oversized dimension)"), "%s", errbuf);
}

/* gru, against an fp64 reference of the formulas: gates in the order reset,
 * output, update; reset_after false: o = tanh(W_io x + b_io + b_ho + W_ho (r * h)),
 * true (PyTorch's GRU, with input_bias): o = tanh(W_io x + b_io + r * (W_ho h + b_ho));
 * h = (1 - z) o + z h */
Test(ops, gru)
{
	enum { S = 4, Bn = 2, I = 3, H = 2 };
	for (int rev = 0; rev < 2; rev++)
		for (int ra = 0; ra < 2; ra++)
			for (int seqo = 0; seqo < 2; seqo++)
				for (int f32 = 0; f32 < 2; f32++) {
					const char *dt = f32 ? "fp32" : "fp16";
					double *vx, *vh0, *w[4];
					void *x = f32 ? (void *)rf32(S * Bn * I, -1, 1, &vx) : (void *)rf16(S * Bn * I, -1, 1, &vx);
					void *h0 = f32 ? (void *)rf32(Bn * H, -1, 1, &vh0) : (void *)rf16(Bn * H, -1, 1, &vh0);
					static const size_t wn[4] = {3 * H * I, 3 * H * H, 3 * H, 3 * H};
					static const char *shp[4] = {"[6, 3]", "[6, 2]", "[6]", "[6]"};
					char wl[4][1024];
					for (int k = 0; k < 4; k++) {
						free(rf16(wn[k], -0.9, 0.9, &w[k]));   /* fp16 values: exact in both dtypes */
						f16_list(wl[k], sizeof wl[k], shp[k], w[k], wn[k]);
						if (f32)
							for (char *q = strstr(wl[k], "fp16"); q; q = strstr(q, "fp16"))
								memcpy(q, "fp32", 4);
					}
					char body[8192], inputs[160];
					snprintf(body, sizeof body,
					         "        tensor<%s, [%d, 2, %d]> o, tensor<%s, [2, %d]> h = gru(x = x, initial_h = h0, "
					         "weight_ih = %s, weight_hh = %s, bias = %s%s%s, direction = string(\"%s\"), "
					         "output_sequence = %s, reset_after = %s);",
					         dt, seqo ? S : 1, H, dt, H, wl[0], wl[1], wl[2], ra ? ", input_bias = " : "", ra ? wl[3] : "",
					         rev ? "reverse" : "forward", seqo ? "true" : "false", ra ? "true" : "false");
					snprintf(inputs, sizeof inputs, "tensor<%s, [4, 2, 3]> x, tensor<%s, [2, %d]> h0", dt, dt, H);
					float o[S * Bn * H], hh[Bn * H];   /* big enough for fp16 and fp32 */
					compile_run(prog(inputs, "o, h", "%s", body), (const void *[]){x, h0}, (void *[]){o, hh});

					double hs[Bn][H], ro[S * Bn * H], rh[Bn * H];
					for (int b = 0; b < Bn; b++)
						for (int j = 0; j < H; j++)
							hs[b][j] = vh0[b * H + j];
					for (int t0 = 0; t0 < S; t0++) {
						int t = rev ? S - 1 - t0 : t0;
						for (int b = 0; b < Bn; b++) {
							const double *xt = vx + (t * Bn + b) * I;
							double gi[3 * H], gh[3 * H], r[H], z[H], n[H];
							for (int q = 0; q < 3 * H; q++) {
								gi[q] = ra ? w[3][q] : 0;
								for (int i = 0; i < I; i++)
									gi[q] += w[0][q * I + i] * xt[i];
								gh[q] = w[2][q];
								for (int i = 0; i < H; i++)
									gh[q] += w[1][q * H + i] * hs[b][i];
							}
							for (int j = 0; j < H; j++) {
								r[j] = sgm(gi[j] + gh[j]);
								z[j] = sgm(gi[2 * H + j] + gh[2 * H + j]);
							}
							for (int j = 0; j < H; j++) {
								if (ra) {
									n[j] = tanh(gi[H + j] + r[j] * gh[H + j]);
								} else {
									double s = gi[H + j] + w[2][H + j];
									for (int i = 0; i < H; i++)
										s += w[1][(H + j) * H + i] * r[i] * hs[b][i];
									n[j] = tanh(s);
								}
							}
							for (int j = 0; j < H; j++) {
								hs[b][j] = (1 - z[j]) * n[j] + z[j] * hs[b][j];
								ro[(t * Bn + b) * H + j] = hs[b][j];
							}
						}
					}
					for (int b = 0; b < Bn; b++)
						for (int j = 0; j < H; j++)
							rh[b * H + j] = hs[b][j];
					char what[96];
					snprintf(what, sizeof what, "gru %s reset_after %d seq %d %s", rev ? "reverse" : "forward", ra,
					         seqo, dt);
					if (f32) {
						check_f32(what, hh, rh, Bn * H, 1e-5);
						check_f32(what, o, seqo ? ro : rh, (size_t)((seqo ? S : 1) * Bn * H), 1e-5);
					} else {
						check_f16(what, (uint16_t *)hh, rh, Bn * H, 3e-3);
						check_f16(what, (uint16_t *)o, seqo ? ro : rh, (size_t)((seqo ? S : 1) * Bn * H), 3e-3);
					}
					for (int k = 0; k < 4; k++)
						free(w[k]);
					free(vx);
					free(vh0);
					free(x);
					free(h0);
				}
	/* shapes: weight_hh must be [3 H, H]; bidirectional is lstm's only */
	compile_err(prog("tensor<fp16, [4, 2, 3]> x, tensor<fp16, [2, 1]> h0", "o, h",
		"        tensor<fp16, [1, 2, 1]> o, tensor<fp16, [2, 1]> h = gru(x = x, initial_h = h0, "
		"weight_ih = tensor<fp16, [3, 3]>([0, 0, 0, 0, 0, 0, 0, 0, 0]), weight_hh = tensor<fp16, [3, 1]>([0, 0, 0]), "
		"direction = string(\"bidirectional\"));"));
	cr_assert(strstr(errbuf, "direction must be \"forward\", \"reverse\""), "%s", errbuf);
	compile_err(prog("tensor<fp16, [4, 2, 3]> x, tensor<fp16, [2, 2]> h0", "o, h",
		"        tensor<fp16, [1, 2, 2]> o, tensor<fp16, [2, 2]> h = gru(x = x, initial_h = h0, "
		"weight_ih = tensor<fp16, [6, 3]>([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "
		"weight_hh = tensor<fp16, [4, 2]>([0, 0, 0, 0, 0, 0, 0, 0]));"));
	cr_assert(strstr(errbuf, "weight_hh must be [3 H, H]"), "%s", errbuf);
}

/* The iOS 18 sparse-to-sparse weight ops, each followed by
 * constexpr_sparse_to_dense (as coremltools writes joint compression) and
 * added to an input of zeros, so the dense weight comes out.  References:
 * the examples of coremltools' op reference (worked by hand), and a dense
 * expansion written here (every position of the output, its source
 * position, its index), unlike the kernels' sparse walk. */

/* the mask of coremltools' example, [4, 6] */
static const int sp_mask[4][6] = {{1, 1, 0, 0, 0, 0}, {1, 1, 0, 0, 0, 1}, {0, 1, 1, 0, 1, 0}, {0, 0, 0, 1, 0, 0}};

static void sp_list(char *buf, size_t len, const int *v, int n)
{
	size_t o = 0;
	for (int i = 0; i < n; i++)
		o += (size_t)snprintf(buf + o, len - o, "%s%d", i ? ", " : "", v[i]);
}

Test(ops, constexpr_lut_to_sparse)
{
	static const int nz[9] = {0, 1, 1, 0, 1, 1, 0, 0, 1};
	char mask[200], idx[64];
	sp_list(mask, sizeof mask, &sp_mask[0][0], 24);
	sp_list(idx, sizeof idx, nz, 9);

	/* scalar palettization, one palette {0: 2, 1: 3}: coremltools' example */
	uint16_t x[48] = {0}, y[48];
	char body[2048];
	snprintf(body, sizeof body,
	         "        tensor<uint1, [4, 6]> m, tensor<fp16, [9]> v = constexpr_lut_to_sparse("
	         "indices_mask = tensor<uint1, [4, 6]>([%s]), indices_nonzero_data = tensor<uint1, [9]>([%s]), "
	         "lut = tensor<fp16, [1, 1, 2, 1]>([2, 3]))[name = string(\"s\")];\n"
	         "        tensor<fp16, [4, 6]> w = constexpr_sparse_to_dense(nonzero_data = v, mask = m)[name = string(\"w\")];\n"
	         "        tensor<fp16, [4, 6]> y = add(x = x, y = w);", mask, idx);
	compile_run(prog("tensor<fp16, [4, 6]> x", "y", "%s", body), (const void *[]){x}, (void *[]){y});
	static const double want[4][6] = {{2, 3, 0, 0, 0, 0}, {3, 2, 0, 0, 0, 3}, {0, 3, 2, 0, 2, 0}, {0, 0, 0, 3, 0, 0}};
	for (int i = 0; i < 24; i++)
		cr_assert_eq(h2d(y[i]), want[i / 6][i % 6], "scalar [%d] = %g, want %g", i, h2d(y[i]), want[i / 6][i % 6]);

	/* vector palettization (VECTOR_SIZE 2) along each axis, one palette per two rows */
	static const double lut[2][2][2] = {{{2, 4}, {3, 5}}, {{-1, -2}, {6, 7}}};   /* [table][index][v] */
	for (int va = 0; va < 2; va++) {
		int oh = va ? 4 : 8, ow = va ? 12 : 6;
		snprintf(body, sizeof body,
		         "        tensor<uint1, [%d, %d]> m, tensor<fp16, [18]> v = constexpr_lut_to_sparse("
		         "indices_mask = tensor<uint1, [4, 6]>([%s]), indices_nonzero_data = tensor<uint1, [9]>([%s]), "
		         "lut = tensor<fp16, [2, 1, 2, 2]>([2, 4, 3, 5, -1, -2, 6, 7]), vector_axis = int32(%d))[name = string(\"s\")];\n"
		         "        tensor<fp16, [%d, %d]> w = constexpr_sparse_to_dense(nonzero_data = v, mask = m)[name = string(\"w\")];\n"
		         "        tensor<fp16, [%d, %d]> y = add(x = x, y = w);", oh, ow, mask, idx, va - 2, oh, ow, oh, ow);
		char inputs[64];
		snprintf(inputs, sizeof inputs, "tensor<fp16, [%d, %d]> x", oh, ow);
		compile_run(prog(inputs, "y", "%s", body), (const void *[]){x}, (void *[]){y});
		/* dense reference: the index of each set source position, by counting in row-major order */
		int ord[4][6], k = 0;
		for (int i = 0; i < 4; i++)
			for (int j = 0; j < 6; j++)
				ord[i][j] = sp_mask[i][j] ? nz[k++] : -1;
		for (int p = 0; p < oh * ow; p++) {
			int r = p / ow, c = p % ow;
			int si = va ? r : r / 2, sj = va ? c / 2 : c, v = va ? c % 2 : r % 2;
			double w = ord[si][sj] < 0 ? 0 : lut[si / 2][ord[si][sj]][v];
			cr_assert_eq(h2d(y[p]), w, "vector_axis %d: [%d, %d] = %g, want %g", va - 2, r, c, h2d(y[p]), w);
		}
	}

	/* the count of set bits must match; indices need 2^n palette entries */
	snprintf(body, sizeof body,
	         "        tensor<uint1, [4, 6]> m, tensor<fp16, [8]> v = constexpr_lut_to_sparse("
	         "indices_mask = tensor<uint1, [4, 6]>([%s]), indices_nonzero_data = tensor<uint1, [8]>([0, 1, 1, 0, 1, 1, 0, 0]), "
	         "lut = tensor<fp16, [1, 1, 2, 1]>([2, 3]));\n"
	         "        tensor<fp16, [4, 6]> y = constexpr_sparse_to_dense(nonzero_data = v, mask = m);", mask);
	cr_assert_eq(compile_err(prog("tensor<fp16, [1]> x", "y", "%s", body)), -EINVAL);
	cr_assert(strstr(errbuf, "indices_mask has 9 set bits, indices_nonzero_data has 8 elements"), "%s", errbuf);
	snprintf(body, sizeof body,
	         "        tensor<uint1, [4, 6]> m, tensor<fp16, [9]> v = constexpr_lut_to_sparse("
	         "indices_mask = tensor<uint1, [4, 6]>([%s]), indices_nonzero_data = tensor<uint2, [9]>([%s]), "
	         "lut = tensor<fp16, [1, 1, 2, 1]>([2, 3]));\n"
	         "        tensor<fp16, [4, 6]> y = constexpr_sparse_to_dense(nonzero_data = v, mask = m);", mask, idx);
	cr_assert_eq(compile_err(prog("tensor<fp16, [1]> x", "y", "%s", body)), -EINVAL);
	cr_assert(strstr(errbuf, "lut has 2 palette entries; uint2 indices need 4"), "%s", errbuf);
}

Test(ops, constexpr_sparse_blockwise_shift_scale)
{
	/* coremltools' example: one scale and offset per column */
	static const int nz[9] = {10, 11, 3, 4, 5, 6, 7, 8, 9};
	static const int m4[16] = {1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0};
	char mask[100], data[64], body[2048];
	sp_list(mask, sizeof mask, m4, 16);
	sp_list(data, sizeof data, nz, 9);
	uint16_t x[16] = {0}, y[16], v[9];
	snprintf(body, sizeof body,
	         "        tensor<uint1, [4, 4]> m, tensor<fp16, [9]> v = constexpr_sparse_blockwise_shift_scale("
	         "data_mask = tensor<uint1, [4, 4]>([%s]), nonzero_data = tensor<int8, [9]>([%s]), "
	         "scale = tensor<fp16, [1, 4]>([0.1, 0.2, 0.3, 0.4]), offset = tensor<int8, [1, 4]>([1, 2, 3, 4]))[name = string(\"s\")];\n"
	         "        tensor<fp16, [4, 4]> w = constexpr_sparse_to_dense(nonzero_data = v, mask = m)[name = string(\"w\")];\n"
	         "        tensor<fp16, [4, 4]> y = add(x = x, y = w);\n"
	         "        tensor<fp16, [9]> n = add(x = v, y = fp16(0));", mask, data);
	compile_run(prog("tensor<fp16, [4, 4]> x", "y, n", "%s", body), (const void *[]){x}, (void *[]){y, v});
	static const double want_nz[9] = {0.9, 1.8, 0.2, 0.4, 0.6, 0.9, 1.2, 0.7, 1.4};   /* the op reference's */
	check_f16("sparse shift-scale nonzero data", v, want_nz, 9, 2e-3);
	for (int i = 0, k = 0; i < 16; i++) {
		double w = m4[i] ? want_nz[k++] : 0;
		cr_assert(fabs(h2d(y[i]) - w) <= 2e-3 * fmax(1, w), "dense [%d] = %g, want %g", i, h2d(y[i]), w);
	}

	/* int4 data, scales per block of two rows, no offset; fp32 out; exact values */
	static const int nz4[9] = {-8, 7, 1, -1, 2, -3, 4, 5, -6};
	char d4[64];
	sp_list(d4, sizeof d4, nz4, 9);
	float xf[16] = {0}, yf[16];
	snprintf(body, sizeof body,
	         "        tensor<uint1, [4, 4]> m, tensor<fp32, [9]> v = constexpr_sparse_blockwise_shift_scale("
	         "data_mask = tensor<uint1, [4, 4]>([%s]), nonzero_data = tensor<int4, [9]>([%s]), "
	         "scale = tensor<fp32, [2, 1]>([0.5, -0.25]));\n"
	         "        tensor<fp32, [4, 4]> w = constexpr_sparse_to_dense(nonzero_data = v, mask = m);\n"
	         "        tensor<fp32, [4, 4]> y = add(x = x, y = w);", mask, d4);
	compile_run(prog("tensor<fp32, [4, 4]> x", "y", "%s", body), (const void *[]){xf}, (void *[]){yf});
	for (int i = 0, k = 0; i < 16; i++) {
		double w = m4[i] ? nz4[k++] * (i / 4 < 2 ? 0.5 : -0.25) : 0;
		cr_assert_eq(yf[i], (float)w, "int4 [%d] = %g, want %g", i, (double)yf[i], w);
	}

	/* scale's dims must divide the mask's */
	snprintf(body, sizeof body,
	         "        tensor<uint1, [4, 4]> m, tensor<fp32, [9]> v = constexpr_sparse_blockwise_shift_scale("
	         "data_mask = tensor<uint1, [4, 4]>([%s]), nonzero_data = tensor<int4, [9]>([%s]), "
	         "scale = tensor<fp32, [3, 1]>([0.5, -0.25, 1]));\n"
	         "        tensor<fp32, [4, 4]> y = constexpr_sparse_to_dense(nonzero_data = v, mask = m);", mask, d4);
	cr_assert_eq(compile_err(prog("tensor<fp32, [1]> x", "y", "%s", body)), -EINVAL);
	cr_assert(strstr(errbuf, "data_mask dim 0 (4) is not a multiple of scale dim 0 (3)"), "%s", errbuf);
}

/* iOS 18 joint compression as coremltools writes it: an int8 palette of a
 * sparse tensor, dequantized, then made dense */
Test(ops, constexpr_sparse_chain)
{
	static const int nz[9] = {0, 1, 1, 0, 1, 1, 0, 0, 1};
	char mask[200], idx[64], body[2048];
	sp_list(mask, sizeof mask, &sp_mask[0][0], 24);
	sp_list(idx, sizeof idx, nz, 9);
	snprintf(body, sizeof body,
	         "        tensor<uint1, [4, 6]> m, tensor<int8, [9]> q = constexpr_lut_to_sparse("
	         "indices_mask = tensor<uint1, [4, 6]>([%s]), indices_nonzero_data = tensor<uint1, [9]>([%s]), "
	         "lut = tensor<int8, [1, 1, 2, 1]>([-4, 6]));\n"
	         "        tensor<uint1, [4, 6]> m2, tensor<fp16, [9]> v = constexpr_sparse_blockwise_shift_scale("
	         "data_mask = m, nonzero_data = q, scale = tensor<fp16, [4, 1]>([0.5, 0.25, 2, 1]), "
	         "offset = tensor<int8, [4, 1]>([0, 2, 0, -1]));\n"
	         "        tensor<fp16, [4, 6]> w = constexpr_sparse_to_dense(nonzero_data = v, mask = m2);\n"
	         "        tensor<fp16, [4, 6]> y = add(x = x, y = w);", mask, idx);
	uint16_t x[24] = {0}, y[24];
	compile_run(prog("tensor<fp16, [4, 6]> x", "y", "%s", body), (const void *[]){x}, (void *[]){y});
	static const double sc[4] = {0.5, 0.25, 2, 1}, off[4] = {0, 2, 0, -1}, pal[2] = {-4, 6};
	for (int i = 0, k = 0; i < 24; i++) {
		int r = i / 6;
		double w = sp_mask[r][i % 6] ? sc[r] * (pal[nz[k++]] - off[r]) : 0;
		cr_assert_eq(h2d(y[i]), w, "[%d] = %g, want %g", i, h2d(y[i]), w);
	}
}

/* Function attributes as Core ML's compiler prints them on their own line
 * after the inputs.  The header below is the one a public project's test
 * quotes from a compiled model (FluidAudio, KokoroAneModelCompatibilityTests:
 * "func main<ios17>(tensor<int32, [1, ?]> input_ids)" then
 * "[FlexibleShapeInformation = tuple<tuple<tensor<string, []>>>()] {"): an
 * empty shape list leaves the '?' without a shape, refused naming the input.
 * With DefaultShapes and RangeDims (what a RangeDim input gets) the default
 * shape is compiled, and no extra function. */
Test(ops, flexible_shape_attribute_printed_forms)
{
	static const char quoted[] =
		"program(1.0) {\n"
		"    func main<ios17>(tensor<int32, [1, ?]> input_ids)\n"
		"        [FlexibleShapeInformation = tuple<tuple<tensor<string, []>>>()] {\n"
		"            tensor<int32, [1, ?]> y = add(x = input_ids, y = int32(1))[name = string(\"y\")];\n"
		"        } -> (y);\n"
		"}\n";
	cr_assert_eq(compile_err(quoted), -ENOTSUP);
	cr_assert(strstr(errbuf, "input_ids"), "%s", errbuf);

	static const char range[] =
		"program(1.0)\n"
		"{\n"
		"    func main<ios17>(tensor<fp16, [1, 2, ?]> audio)\n"
		"        [FlexibleShapeInformation = tuple<tuple<tensor<string, []>, dict<tensor<string, []>, tensor<int32, [?]>>>, "
		"tuple<tensor<string, []>, dict<tensor<string, []>, list<tensor<int32, [2]>, ?>>>>(((\"DefaultShapes\", "
		"{{\"audio\", [1, 2, 8]}}), (\"RangeDims\", {{\"audio\", [[1, 1], [2, 2], [1, 64]]}})))] {\n"
		"            tensor<fp16, [1, 2, ?]> y = mul(x = audio, y = fp16(2))[name = string(\"y\")];\n"
		"        } -> (y);\n"
		"}\n";
	anes_bprogram *p = compile_ok(range);
	cr_assert_eq(p->n_functions, 1);
	cr_assert_eq(p->functions[0].inputs[0].shape[2], 8);
	uint16_t x[16], y[16];
	for (int i = 0; i < 16; i++)
		x[i] = anes_f32_to_f16_soft((float)i - 7.5f);
	run_ok(p, 0, (const void *[]){x}, (void *[]){y});
	for (int i = 0; i < 16; i++)
		cr_assert_eq(h2d(y[i]), 2 * ((double)i - 7.5));
	B->ops->program_free(B, p);
}

/* --max-mil-io's ceiling: 64 inputs and 64 outputs compile and run on the
 * backend; the 65th input is refused */
Test(ops, sixty_four_inputs_and_outputs)
{
	char *text = malloc(1 << 16);
	size_t o = (size_t)snprintf(text, 1 << 16, "program(1.3)\n{\n    func main<ios18>(");
	for (int i = 0; i < 64; i++)
		o += (size_t)snprintf(text + o, (1 << 16) - o, "%stensor<fp32, [2]> x%d", i ? ", " : "", i);
	o += (size_t)snprintf(text + o, (1 << 16) - o, ") {\n");
	for (int j = 0; j < 64; j++)
		o += (size_t)snprintf(text + o, (1 << 16) - o, "        tensor<fp32, [2]> y%d = mul(x = x%d, y = x%d);\n", j,
		                      j, (j + 1) % 64);
	o += (size_t)snprintf(text + o, (1 << 16) - o, "    } -> (");
	for (int j = 0; j < 64; j++)
		o += (size_t)snprintf(text + o, (1 << 16) - o, "%sy%d", j ? ", " : "", j);
	snprintf(text + o, (1 << 16) - o, ");\n}\n");
	anes_bprogram *p = compile_ok(text);
	float xs[64][2], ys[64][2];
	const void *in[64];
	void *out[64];
	for (int i = 0; i < 64; i++) {
		xs[i][0] = (float)i, xs[i][1] = (float)-i;
		in[i] = xs[i];
		out[i] = ys[i];
	}
	run_ok(p, 0, in, out);
	for (int j = 0; j < 64; j++)
		cr_assert(ys[j][0] == (float)(j * ((j + 1) % 64)) && ys[j][1] == ys[j][0], "y%d", j);
	B->ops->program_free(B, p);
	/* one more input */
	char *more = strstr(text, ") {");
	memmove(more + 22, more, strlen(more) + 1);
	memcpy(more, ", tensor<fp32, [2]> xx", 22);
	cr_assert_eq(compile_err(text), -EINVAL);
	cr_assert(strstr(errbuf, "more than 64 inputs"), "%s", errbuf);
	/* 64 inputs again, one more output (y0 twice) */
	memmove(more, more + 22, strlen(more + 22) + 1);
	char *end = strstr(text, ");\n}\n");
	memcpy(end, ", y0);\n}\n", 10);
	cr_assert_eq(compile_err(text), -EINVAL);
	cr_assert(strstr(errbuf, "more than 64 outputs"), "%s", errbuf);
	free(text);
}
