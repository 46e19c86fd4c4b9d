/* SPDX-License-Identifier: MIT */
/* CPU reference backend tests: every op against a plain-C reference. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "backend.h"
#include "mil.h"

static anes_backend *B;
static char errbuf[512];

static void setup(void)
{
	cr_assert_eq(anes_cpu_backend_new(0, &B), 0);
	cr_assert_not_null(B);
	cr_assert_str_eq(B->ops->name, "cpu");
}

static void teardown(void)
{
	B->ops->destroy(B);
	B = NULL;
}

TestSuite(cpu, .init = setup, .fini = teardown);

/* ---- helpers ---- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static float frand(void) /* [-1, 1) */
{
	return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static uint16_t *rand_f16(size_t n)
{
	uint16_t *h = malloc(n * 2 + 2);
	for (size_t i = 0; i < n; i++)
		h[i] = anes_f32_to_f16_soft(frand());
	return h;
}

static float *rand_f32(size_t n)
{
	float *f = malloc(n * 4 + 4);
	for (size_t i = 0; i < n; i++)
		f[i] = frand();
	return f;
}

static float h2f(uint16_t h) { return anes_f16_to_f32_soft(h); }

static anes_bprogram *compile_text(const char *text)
{
	anes_bprogram *p = NULL;
	int rc = B->ops->compile(B, text, strlen(text), NULL, 0, &p, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "compile failed (%d): %s\n%s", rc, errbuf, text);
	return p;
}

/* program(1.3) { func main<ios18>(INPUTS) { BODY } -> (OUTS); } */
static char *mil(const char *inputs, const char *body, const char *outs)
{
	static char text[1 << 16];
	snprintf(text, sizeof text,
	         "program(1.3)\n{\n    func main<ios18>(%s) {\n%s\n    } -> (%s);\n}\n", inputs, body, outs);
	return text;
}

static void run_ok(anes_bprogram *p, uint32_t fn, const void *const *in, void *const *out)
{
	int rc = B->ops->run(B, p, fn, in, out, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "run failed (%d): %s", rc, errbuf);
}

/* |got - ref| <= tol * max(1, |ref|) */
static void check_close(const char *what, const float *got, const double *ref, size_t n, double tol)
{
	double worst = 0;
	size_t wi = 0;
	for (size_t i = 0; i < n; i++) {
		double e = fabs((double)got[i] - ref[i]) / fmax(1.0, fabs(ref[i]));
		if (!(e <= worst)) {
			worst = e;
			wi = i;
		}
	}
	cr_assert(worst <= tol, "%s: element %zu: got %.6f, want %.6f (rel err %.3g > %.3g)", what, wi,
	          (double)got[wi], ref[wi], worst, tol);
}

static void check_f16(const char *what, const uint16_t *got, const double *ref, size_t n, double tol)
{
	float *g = malloc(n * 4 + 4);
	for (size_t i = 0; i < n; i++)
		g[i] = h2f(got[i]);
	check_close(what, g, ref, n, tol);
	free(g);
}

/* ---- fp16 conversion ---- */

Test(cpu, fp16_exhaustive_roundtrip)
{
	static float f[65536], fb[65536];
	static uint16_t h[65536], hb[65536];
	for (uint32_t i = 0; i < 65536; i++)
		h[i] = (uint16_t)i;
	anes_f16_to_f32_n(fb, h, 65536);
	for (uint32_t i = 0; i < 65536; i++) {
		uint16_t x = (uint16_t)i;
		float a = anes_f16_to_f32(x), s = anes_f16_to_f32_soft(x);
		f[i] = a;
		bool nan = (x & 0x7c00) == 0x7c00 && (x & 0x3ff);
		if (nan) {
			cr_assert(isnan(a) && isnan(s) && isnan(fb[i]), "0x%04x not NaN", x);
			cr_assert_eq(!!signbit(a), !!(x & 0x8000));
			uint16_t back = anes_f32_to_f16(a);
			cr_assert((back & 0x7c00) == 0x7c00 && (back & 0x3ff), "0x%04x -> 0x%04x", x, back);
			cr_assert_eq(back & 0x8000, x & 0x8000);
			cr_assert_eq(back & 0x1ff, x & 0x1ff, "NaN payload 0x%04x -> 0x%04x", x, back);
			cr_assert(anes_f32_to_f16_soft(a) == (uint16_t)(x | 0x200), "soft NaN 0x%04x", x);
			continue;
		}
		cr_assert(memcmp(&a, &s, 4) == 0, "0x%04x: hw %a soft %a", x, (double)a, (double)s);
		cr_assert(memcmp(&a, &fb[i], 4) == 0, "0x%04x: bulk differs", x);
		cr_assert_eq(anes_f32_to_f16(a), x, "0x%04x round trip", x);
		cr_assert_eq(anes_f32_to_f16_soft(a), x, "0x%04x soft round trip", x);
	}
	anes_f32_to_f16_n(hb, f, 65536);
	for (uint32_t i = 0; i < 65536; i++) {
		bool nan = (i & 0x7c00) == 0x7c00 && (i & 0x3ff);
		if (!nan)
			cr_assert_eq(hb[i], i, "bulk 0x%04x", i);
	}
	/* specific values */
	cr_assert_eq(anes_f32_to_f16(1.0f), 0x3c00);
	cr_assert_eq(anes_f32_to_f16(-2.0f), 0xc000);
	cr_assert_eq(anes_f32_to_f16(65504.0f), 0x7bff);
	cr_assert_eq(anes_f32_to_f16(65520.0f), 0x7c00);     /* tie -> even -> inf */
	cr_assert_eq(anes_f32_to_f16(65519.99f), 0x7bff);
	cr_assert_eq(anes_f32_to_f16(INFINITY), 0x7c00);
	cr_assert_eq(anes_f32_to_f16(-INFINITY), 0xfc00);
	cr_assert_eq(anes_f32_to_f16(-0.0f), 0x8000);
	cr_assert_eq(anes_f32_to_f16(0x1p-24f), 0x0001);
	cr_assert_eq(anes_f32_to_f16(0x1p-25f), 0x0000);     /* tie -> even -> 0 */
	cr_assert_eq(anes_f32_to_f16(0x1.000002p-25f), 0x0001);
	cr_assert_eq(anes_f32_to_f16(0x3p-25f), 0x0002);     /* 1.5 ulp tie -> even 2 */
	cr_assert_eq(anes_f32_to_f16(1e-10f), 0x0000);
	cr_assert(isnan(anes_f16_to_f32(anes_f32_to_f16(NAN))));
}

/* nearest-even reference in double: exact for every float input */
static double ref_round_f16(float xf)
{
	double x = xf, ax = fabs(x);
	if (isnan(x))
		return x;
	if (ax == 0)
		return x;
	int e;
	frexp(ax, &e);                 /* ax = m * 2^e, m in [0.5, 1) */
	int ue = e - 11;               /* ulp of a half with that exponent: 2^(e-1-10) */
	if (ue < -24)
		ue = -24;              /* subnormal spacing */
	double ulp = ldexp(1.0, ue);
	double q = ax / ulp;           /* exact: scaling by a power of two */
	double r = nearbyint(q);       /* ties to even in the default rounding mode */
	double v = r * ulp;
	if (v >= 65520.0 || v > 65504.0)
		v = INFINITY;
	return x < 0 ? -v : v;
}

Test(cpu, fp16_rne_random)
{
	rng_state = 0x9E3779B97F4A7C15ull;
	for (int i = 0; i < 2000000; i++) {
		uint32_t bits;
		uint64_t r = rnd();
		switch (i % 4) {
		case 0: /* any finite float in half range and below */
			bits = (uint32_t)(r >> 32);
			bits = (bits & 0x80000000u) | (0x30000000u + (bits & 0x7fffffff) % (0x47800000u - 0x30000000u));
			break;
		case 1: /* exact ties: half value + half ulp */
			bits = (uint32_t)(r >> 32);
			{
				uint16_t h = (uint16_t)(bits & 0x7bff);
				float a = anes_f16_to_f32_soft(h), b = anes_f16_to_f32_soft((uint16_t)(h + 1));
				float m = (float)(((double)a + (double)b) / 2);
				memcpy(&bits, &m, 4);
				bits |= (uint32_t)(r & 0x80000000u);
			}
			break;
		case 2: /* subnormal half range */
			bits = (uint32_t)(0x32800000u + (r >> 40) % (0x38800000u - 0x32800000u)) | (uint32_t)(r & 0x80000000u);
			break;
		default: /* anything */
			bits = (uint32_t)(r >> 32);
			break;
		}
		float f;
		memcpy(&f, &bits, 4);
		uint16_t h = anes_f32_to_f16(f), hs = anes_f32_to_f16_soft(f);
		if (isnan(f)) {
			cr_assert(isnan(anes_f16_to_f32(h)) && isnan(anes_f16_to_f32(hs)));
			continue;
		}
		double want = ref_round_f16(f);
		double got = anes_f16_to_f32(h);
		cr_assert(got == want && signbit(got) == signbit(want), "%a: got %a (0x%04x) want %a", (double)f, got, h,
		          want);
		cr_assert_eq(h, hs, "%a: hw 0x%04x soft 0x%04x", (double)f, h, hs);
	}
	/* bulk = scalar on odd lengths */
	float v[37];
	uint16_t a[37];
	for (int i = 0; i < 37; i++)
		v[i] = frand() * 1000.0f;
	anes_f32_to_f16_n(a, v, 37);
	for (int i = 0; i < 37; i++)
		cr_assert_eq(a[i], anes_f32_to_f16_soft(v[i]));
}

/* ---- simple ops (exact) ---- */

Test(cpu, identity_reshape_transpose)
{
	rng_state = 1;
	const char *body =
		"        tensor<fp16, [2, 3, 4, 5]> i = identity(x = x)[name = string(\"i\")];\n"
		"        tensor<fp16, [4, 30]> r = reshape(x = i, shape = tensor<int32, [2]>([-1, 30]));\n"
		"        tensor<int32, [4]> perm = const()[name = string(\"perm\"), val = tensor<int32, [4]>([0, 2, 3, 1])];\n"
		"        tensor<fp16, [2, 4, 5, 3]> t = transpose(x = x, perm = perm);\n"
		"        tensor<fp32, [7, 3]> u = transpose(x = m, perm = tensor<int32, [2]>([-1, 0]));\n"
		"        tensor<fp32, [5]> v = transpose(x = w, perm = tensor<int32, [1]>([0]));\n"
		"        tensor<fp32, [5, 1, 1]> v3 = reshape(x = w, shape = tensor<int32, [3]>([5, 1, 1]));\n"
		"        tensor<fp32, [1, 5, 1]> v4 = transpose(x = v3, perm = tensor<int32, [3]>([1, 0, 2]));\n";
	anes_bprogram *p = compile_text(mil("tensor<fp16, [2, 3, 4, 5]> x, tensor<fp32, [3, 7]> m, tensor<fp32, [5]> w",
	                                    body, "i, r, t, u, v, v4"));
	cr_assert_eq(p->n_functions, 1);
	cr_assert_eq(p->functions[0].n_outputs, 6);
	uint16_t *x = rand_f16(120), oi[120], orr[120], ot[120];
	float *m = rand_f32(21), *w = rand_f32(5), ou[21], ov[5], ov4[5];
	const void *in[] = {x, m, w};
	void *out[] = {oi, orr, ot, ou, ov, ov4};
	run_ok(p, 0, in, out);
	cr_assert(memcmp(oi, x, 240) == 0);
	cr_assert(memcmp(orr, x, 240) == 0);
	for (int a = 0; a < 2; a++)
		for (int b = 0; b < 3; b++)
			for (int c = 0; c < 4; c++)
				for (int d = 0; d < 5; d++)
					cr_assert_eq(ot[((a * 4 + c) * 5 + d) * 3 + b], x[((a * 3 + b) * 4 + c) * 5 + d]);
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 7; j++)
			cr_assert_eq(ou[j * 3 + i], m[i * 7 + j]);
	cr_assert(memcmp(ov, w, 20) == 0);
	cr_assert(memcmp(ov4, w, 20) == 0);
	B->ops->program_free(B, p);
	free(x);
	free(m);
	free(w);
}

Test(cpu, slice_by_size)
{
	rng_state = 2;
	const char *body =
		"        tensor<fp16, [2, 5, 4]> s = slice_by_size(x = x, begin = tensor<int32, [3]>([1, 0, 2]), size = tensor<int32, [3]>([2, -1, 4]));\n"
		"        tensor<fp16, [1, 1, 1]> s1 = slice_by_size(x = x, begin = tensor<int32, [3]>([2, 4, 6]), size = tensor<int32, [3]>([1, 1, 1]));\n"
		"        tensor<fp16, [3]> s2 = slice_by_size(x = v, begin = tensor<int32, [1]>([6]), size = tensor<int32, [1]>([-1]));\n";
	anes_bprogram *p = compile_text(mil("tensor<fp16, [3, 5, 7]> x, tensor<fp16, [9]> v", body, "s, s1, s2"));
	uint16_t *x = rand_f16(105), *v = rand_f16(9), o[40], o1[1], o2[3];
	const void *in[] = {x, v};
	void *out[] = {o, o1, o2};
	run_ok(p, 0, in, out);
	for (int a = 0; a < 2; a++)
		for (int b = 0; b < 5; b++)
			for (int c = 0; c < 4; c++)
				cr_assert_eq(o[(a * 5 + b) * 4 + c], x[((a + 1) * 5 + b) * 7 + c + 2]);
	cr_assert_eq(o1[0], x[104]);
	cr_assert(memcmp(o2, v + 6, 6) == 0);
	B->ops->program_free(B, p);
	free(x);
	free(v);
}

/* ---- elementwise with broadcasting ---- */

static void bcast_ref_idx(const uint32_t *oshape, uint32_t r, const uint32_t *ishape, uint32_t ir, size_t oi,
                          size_t *ii)
{
	size_t idx = 0, stride = 1;
	for (uint32_t d = r; d-- > 0;) {
		size_t c = oi % oshape[d];
		oi /= oshape[d];
		if (d >= r - ir) {
			uint32_t id = ishape[d - (r - ir)];
			idx += (id == 1 ? 0 : c) * stride;
			stride *= id;
		}
	}
	*ii = idx;
}

typedef struct bcase {
	const char *xt, *yt, *ot;
	uint32_t r, oshape[4], xr, xshape[4], yr, yshape[4];
} bcase;

static const bcase bcases[] = {
	{"[2, 3, 4]", "[3, 1]", "[2, 3, 4]", 3, {2, 3, 4}, 3, {2, 3, 4}, 2, {3, 1}},
	{"[1, 4]", "[3, 1]", "[3, 4]", 2, {3, 4}, 2, {1, 4}, 2, {3, 1}},
	{"[5]", "[]", "[5]", 1, {5}, 1, {5}, 0, {0}},
	{"[2, 1, 3, 1]", "[4, 1, 6]", "[2, 4, 3, 6]", 4, {2, 4, 3, 6}, 4, {2, 1, 3, 1}, 3, {4, 1, 6}},
	{"[7, 9]", "[7, 9]", "[7, 9]", 2, {7, 9}, 2, {7, 9}, 2, {7, 9}},
};

static size_t prod(const uint32_t *s, uint32_t r)
{
	size_t n = 1;
	for (uint32_t i = 0; i < r; i++)
		n *= s[i];
	return n;
}

static void binary_case(const char *dt, const bcase *c)
{
	char inputs[256], body[1024];
	bool f16 = strcmp(dt, "fp16") == 0, i32 = strcmp(dt, "int32") == 0;
	snprintf(inputs, sizeof inputs, "tensor<%s, %s> x, tensor<%s, %s> y", dt, c->xt, dt, c->yt);
	snprintf(body, sizeof body,
	         "        tensor<%s, %s> a = add(x = x, y = y);\n"
	         "        tensor<%s, %s> s = sub(x = x, y = y);\n"
	         "        tensor<%s, %s> m = mul(x = y, y = x);\n",
	         dt, c->ot, dt, c->ot, dt, c->ot);
	anes_bprogram *p = compile_text(mil(inputs, body, "a, s, m"));
	size_t nx = prod(c->xshape, c->xr), ny = prod(c->yshape, c->yr), no = prod(c->oshape, c->r);
	size_t es = f16 ? 2 : 4;
	void *x = malloc(nx * es), *y = malloc(ny * es);
	void *oa = malloc(no * es), *os = malloc(no * es), *om = malloc(no * es);
	for (size_t i = 0; i < nx; i++) {
		if (f16) ((uint16_t *)x)[i] = anes_f32_to_f16_soft(frand());
		else if (i32) ((int32_t *)x)[i] = (int32_t)(rnd() >> 33) - (1 << 30);
		else ((float *)x)[i] = frand();
	}
	for (size_t i = 0; i < ny; i++) {
		if (f16) ((uint16_t *)y)[i] = anes_f32_to_f16_soft(frand());
		else if (i32) ((int32_t *)y)[i] = (int32_t)(rnd() >> 33) - (1 << 30);
		else ((float *)y)[i] = frand();
	}
	const void *in[] = {x, y};
	void *out[] = {oa, os, om};
	run_ok(p, 0, in, out);
	for (size_t o = 0; o < no; o++) {
		size_t ix, iy;
		bcast_ref_idx(c->oshape, c->r, c->xshape, c->xr, o, &ix);
		bcast_ref_idx(c->oshape, c->r, c->yshape, c->yr, o, &iy);
		if (f16) {
			float a = h2f(((uint16_t *)x)[ix]), b = h2f(((uint16_t *)y)[iy]);
			/* fp32 compute, one rounding to fp16: bit exact */
			cr_assert_eq(((uint16_t *)oa)[o], anes_f32_to_f16_soft(a + b), "%s add %zu", c->xt, o);
			cr_assert_eq(((uint16_t *)os)[o], anes_f32_to_f16_soft(a - b), "%s sub %zu", c->xt, o);
			cr_assert_eq(((uint16_t *)om)[o], anes_f32_to_f16_soft(b * a), "%s mul %zu", c->xt, o);
		} else if (i32) {
			uint32_t a = (uint32_t)((int32_t *)x)[ix], b = (uint32_t)((int32_t *)y)[iy];
			cr_assert_eq(((int32_t *)oa)[o], (int32_t)(a + b));
			cr_assert_eq(((int32_t *)os)[o], (int32_t)(a - b));
			cr_assert_eq(((int32_t *)om)[o], (int32_t)(b * a));
		} else {
			float a = ((float *)x)[ix], b = ((float *)y)[iy];
			cr_assert_eq(((float *)oa)[o], a + b);
			cr_assert_eq(((float *)os)[o], a - b);
			cr_assert_eq(((float *)om)[o], b * a);
		}
	}
	B->ops->program_free(B, p);
	free(x); free(y); free(oa); free(os); free(om);
}

Test(cpu, add_sub_mul_broadcast)
{
	rng_state = 3;
	for (size_t i = 0; i < sizeof bcases / sizeof bcases[0]; i++) {
		binary_case("fp16", &bcases[i]);
		binary_case("fp32", &bcases[i]);
		binary_case("int32", &bcases[i]);
	}
}

Test(cpu, binary_with_constants)
{
	const char *body =
		"        tensor<fp16, [2, 2]> c = const()[name = string(\"c\"), val = tensor<fp16, [2, 2]>([1.0, 2.0, 3.0, 4.0])];\n"
		"        tensor<fp16, [2, 2]> a = add(x = x, y = c);\n"
		"        tensor<fp16, [2, 2]> h = mul(x = a, y = fp16(0.5));\n";
	anes_bprogram *p = compile_text(mil("tensor<fp16, [2, 2]> x", body, "h, c, x"));
	uint16_t x[4], oh[4], oc[4], ox[4];
	for (int i = 0; i < 4; i++)
		x[i] = anes_f32_to_f16((float)i);
	const void *in[] = {x};
	void *out[] = {oh, oc, ox};
	run_ok(p, 0, in, out);
	for (int i = 0; i < 4; i++) {
		cr_assert_float_eq(h2f(oh[i]), (float)(2 * i + 1) * 0.5f, 0);
		cr_assert_float_eq(h2f(oc[i]), (float)(i + 1), 0);
		cr_assert_eq(ox[i], x[i]);
	}
	B->ops->program_free(B, p);
}

/* ---- cast ---- */

Test(cpu, cast)
{
	rng_state = 4;
	const char *body =
		"        string to32 = const()[name = string(\"to32\"), val = string(\"fp32\")];\n"
		"        tensor<fp32, [64]> a = cast(x = h, dtype = to32);\n"
		"        tensor<fp16, [64]> b = cast(x = f, dtype = string(\"fp16\"));\n"
		"        tensor<int32, [64]> c = cast(x = f, dtype = string(\"int32\"));\n"
		"        tensor<fp16, [64]> d = cast(x = i, dtype = string(\"fp16\"));\n"
		"        tensor<bool, [64]> e = cast(x = i, dtype = string(\"bool\"));\n"
		"        tensor<int8, [64]> g = cast(x = f, dtype = string(\"int8\"));\n";
	anes_bprogram *p = compile_text(mil("tensor<fp16, [64]> h, tensor<fp32, [64]> f, tensor<int32, [64]> i", body,
	                                    "a, b, c, d, e, g"));
	uint16_t *h = rand_f16(64), ob[64], od[64];
	float f[64], oa[64];
	int32_t iv[64], oc[64];
	uint8_t oe[64];
	int8_t og[64];
	for (int k = 0; k < 64; k++) {
		f[k] = frand() * 300.0f;
		iv[k] = (int32_t)(rnd() % 4001) - 2000;
	}
	f[0] = NAN;
	f[1] = 1e10f;
	f[2] = -1e10f;
	f[3] = -2.75f;
	iv[5] = 0;
	const void *in[] = {h, f, iv};
	void *out[] = {oa, ob, oc, od, oe, og};
	run_ok(p, 0, in, out);
	for (int k = 0; k < 64; k++) {
		cr_assert_eq(oa[k], h2f(h[k]));
		if (k)
			cr_assert_eq(ob[k], anes_f32_to_f16_soft(f[k]));
		else
			cr_assert(isnan(h2f(ob[k])));
		if (k > 2)
			cr_assert_eq(oc[k], (int32_t)truncf(f[k]), "%d: %f -> %d", k, (double)f[k], oc[k]);
		cr_assert_eq(od[k], anes_f32_to_f16_soft((float)iv[k]));
		cr_assert_eq(oe[k], iv[k] != 0);
		if (k > 2) {
			float t = truncf(f[k]);
			int8_t want = t < -128 ? -128 : t > 127 ? 127 : (int8_t)t;
			cr_assert_eq(og[k], want);
		}
	}
	cr_assert_eq(oc[0], 0);
	cr_assert_eq(oc[1], INT32_MAX);
	cr_assert_eq(oc[2], INT32_MIN);
	cr_assert_eq(oc[3], -2);
	B->ops->program_free(B, p);
	free(h);
}

/* ---- concat ---- */

Test(cpu, concat)
{
	rng_state = 5;
	const char *body =
		"        tensor<fp16, [2, 3, 7]> c = concat(values = (a, b, d), axis = -1)[name = string(\"c\")];\n"
		"        tensor<fp16, [4, 3, 1]> c0 = concat(values = (a, a), axis = 0);\n"
		"        tensor<fp16, [2, 6, 1]> ci = concat(values = (a, e), axis = int32(1), interleave = true);\n"
		"        tensor<fp16, [2, 6, 1]> cn = concat(values = (a, e), axis = 1, interleave = bool(false));\n";
	anes_bprogram *p = compile_text(mil("tensor<fp16, [2, 3, 1]> a, tensor<fp16, [2, 3, 4]> b, "
	                                    "tensor<fp16, [2, 3, 2]> d, tensor<fp16, [2, 3, 1]> e",
	                                    body, "c, c0, ci, cn"));
	uint16_t *a = rand_f16(6), *b = rand_f16(24), *d = rand_f16(12), *e = rand_f16(6);
	uint16_t oc[42], oc0[12], oci[12], ocn[12];
	const void *in[] = {a, b, d, e};
	void *out[] = {oc, oc0, oci, ocn};
	run_ok(p, 0, in, out);
	for (int i = 0; i < 6; i++) {
		const uint16_t *row = oc + i * 7;
		cr_assert_eq(row[0], a[i]);
		for (int j = 0; j < 4; j++)
			cr_assert_eq(row[1 + j], b[i * 4 + j]);
		for (int j = 0; j < 2; j++)
			cr_assert_eq(row[5 + j], d[i * 2 + j]);
	}
	cr_assert(memcmp(oc0, a, 12) == 0 && memcmp(oc0 + 6, a, 12) == 0);
	for (int n = 0; n < 2; n++)
		for (int i = 0; i < 3; i++) {
			cr_assert_eq(oci[n * 6 + 2 * i], a[n * 3 + i]);
			cr_assert_eq(oci[n * 6 + 2 * i + 1], e[n * 3 + i]);
			cr_assert_eq(ocn[n * 6 + i], a[n * 3 + i]);
			cr_assert_eq(ocn[n * 6 + 3 + i], e[n * 3 + i]);
		}
	B->ops->program_free(B, p);
	free(a); free(b); free(d); free(e);
}

/* ---- reduce_sum ---- */

Test(cpu, reduce_sum)
{
	rng_state = 6;
	const char *body =
		"        tensor<fp16, [3, 5]> r1 = reduce_sum(x = x, axes = tensor<int32, [1]>([1]), keep_dims = false);\n"
		"        tensor<fp16, [1, 4, 1]> r2 = reduce_sum(x = x, axes = tensor<int32, [2]>([0, -1]), keep_dims = true);\n"
		"        fp16 r3 = reduce_sum(x = x);\n"
		"        tensor<int32, [2]> r4 = reduce_sum(x = iv, axes = tensor<int32, [1]>([1]));\n"
		"        tensor<fp32, [3, 4]> r5 = reduce_sum(x = f, axes = tensor<int32, [1]>([2]));\n";
	anes_bprogram *p = compile_text(mil("tensor<fp16, [3, 4, 5]> x, tensor<int32, [2, 3]> iv, tensor<fp32, [3, 4, 5]> f",
	                                    body, "r1, r2, r3, r4, r5"));
	uint16_t *x = rand_f16(60), o1[15], o2[4], o3[1];
	float *f = rand_f32(60), o5[12];
	int32_t iv[6] = {1, 2, 3, -4, 5, INT32_MAX}, o4[2];
	const void *in[] = {x, iv, f};
	void *out[] = {o1, o2, o3, o4, o5};
	run_ok(p, 0, in, out);
	double r1[15] = {0}, r2[4] = {0}, r3[1] = {0}, r5[12] = {0};
	for (int a = 0; a < 3; a++)
		for (int b = 0; b < 4; b++)
			for (int c = 0; c < 5; c++) {
				double v = h2f(x[(a * 4 + b) * 5 + c]);
				r1[a * 5 + c] += v;
				r2[b] += v;
				r3[0] += v;
				r5[a * 4 + b] += f[(a * 4 + b) * 5 + c];
			}
	check_f16("r1", o1, r1, 15, 2e-3);
	check_f16("r2", o2, r2, 4, 2e-3);
	check_f16("r3", o3, r3, 1, 2e-3);
	check_close("r5", o5, r5, 12, 1e-5);
	cr_assert_eq(o4[0], 6);
	cr_assert_eq(o4[1], (int32_t)((uint32_t)-4 + 5u + (uint32_t)INT32_MAX));
	B->ops->program_free(B, p);
	free(x);
	free(f);
}

/* ---- matmul ---- */

typedef struct mcase {
	const char *xt, *yt, *ot;
	bool tx, ty;
	uint32_t batch, xb, yb;   /* output batches; x/y batch counts (1 = broadcast) */
	uint32_t m, k, n;
} mcase;

static const mcase mcases[] = {
	{"[3, 5]", "[5, 7]", "[3, 7]", false, false, 1, 1, 1, 3, 5, 7},
	{"[5, 3]", "[5, 7]", "[3, 7]", true, false, 1, 1, 1, 3, 5, 7},
	{"[3, 5]", "[7, 5]", "[3, 7]", false, true, 1, 1, 1, 3, 5, 7},
	{"[5, 3]", "[7, 5]", "[3, 7]", true, true, 1, 1, 1, 3, 5, 7},
	{"[1, 1, 64, 64]", "[1, 1, 64, 64]", "[1, 1, 64, 64]", false, false, 1, 1, 1, 64, 64, 64},
	{"[4, 17, 33]", "[33, 9]", "[4, 17, 9]", false, false, 4, 4, 1, 17, 33, 9},
	{"[1, 1]", "[1, 1]", "[1, 1]", false, false, 1, 1, 1, 1, 1, 1},
	{"[130, 70]", "[70, 129]", "[130, 129]", false, false, 1, 1, 1, 130, 70, 129},
	{"[2, 1, 3, 4]", "[3, 4, 5]", "[2, 3, 3, 5]", false, false, 6, 2, 3, 3, 4, 5},
};

static void matmul_case(const char *dt, const mcase *c)
{
	char inputs[256], body[512];
	bool f16 = strcmp(dt, "fp16") == 0;
	snprintf(inputs, sizeof inputs, "tensor<%s, %s> x, tensor<%s, %s> y", dt, c->xt, dt, c->yt);
	snprintf(body, sizeof body,
	         "        tensor<%s, %s> z = matmul(x = x, y = y, transpose_x = %s, transpose_y = bool(%s))[name = string(\"z\")];\n",
	         dt, c->ot, c->tx ? "true" : "false", c->ty ? "true" : "false");
	anes_bprogram *p = compile_text(mil(inputs, body, "z"));
	size_t nx = (size_t)c->xb * c->m * c->k, ny = (size_t)c->yb * c->k * c->n, no = (size_t)c->batch * c->m * c->n;
	float *xf = rand_f32(nx), *yf = rand_f32(ny);
	void *x = xf, *y = yf, *o = malloc(no * 4);
	uint16_t *xh = NULL, *yh = NULL;
	if (f16) {
		xh = malloc(nx * 2);
		yh = malloc(ny * 2);
		for (size_t i = 0; i < nx; i++) {
			xh[i] = anes_f32_to_f16_soft(xf[i]);
			xf[i] = h2f(xh[i]);
		}
		for (size_t i = 0; i < ny; i++) {
			yh[i] = anes_f32_to_f16_soft(yf[i]);
			yf[i] = h2f(yh[i]);
		}
		x = xh;
		y = yh;
	}
	const void *in[] = {x, y};
	void *out[] = {o};
	run_ok(p, 0, in, out);
	double *ref = calloc(no, sizeof *ref);
	for (uint32_t b = 0; b < c->batch; b++) {
		/* batch b -> x batch, y batch: case [2,1,..] x [3,..]: b = i*3 + j */
		uint32_t bx = c->xb == 1 ? 0 : (c->yb > 1 && c->xb > 1 ? b / c->yb : b);
		uint32_t by = c->yb == 1 ? 0 : b % c->yb;
		const float *X = xf + (size_t)bx * c->m * c->k, *Y = yf + (size_t)by * c->k * c->n;
		for (uint32_t i = 0; i < c->m; i++)
			for (uint32_t j = 0; j < c->n; j++) {
				double s = 0;
				for (uint32_t k = 0; k < c->k; k++) {
					double a = c->tx ? X[k * c->m + i] : X[i * c->k + k];
					double bb = c->ty ? Y[j * c->k + k] : Y[k * c->n + j];
					s += a * bb;
				}
				ref[(size_t)b * c->m * c->n + i * c->n + j] = s;
			}
	}
	char what[128];
	snprintf(what, sizeof what, "matmul %s %s x %s%s%s", dt, c->xt, c->yt, c->tx ? " tx" : "", c->ty ? " ty" : "");
	if (f16)
		check_f16(what, o, ref, no, 1e-3);
	else
		check_close(what, o, ref, no, 1e-5);
	B->ops->program_free(B, p);
	free(xf); free(yf); free(o); free(ref); free(xh); free(yh);
}

Test(cpu, matmul)
{
	rng_state = 7;
	for (size_t i = 0; i < sizeof mcases / sizeof mcases[0]; i++) {
		matmul_case("fp16", &mcases[i]);
		matmul_case("fp32", &mcases[i]);
	}
}

Test(cpu, matmul_rank1)
{
	rng_state = 8;
	const char *body =
		"        tensor<fp32, [3]> a = matmul(x = v, y = m);\n"
		"        tensor<fp32, [4]> b = matmul(x = m, y = w);\n"
		"        tensor<fp32, [2, 4]> c = matmul(x = bm, y = w);\n";
	anes_bprogram *p = compile_text(mil("tensor<fp32, [4]> v, tensor<fp32, [4, 3]> m, tensor<fp32, [3]> w, "
	                                    "tensor<fp32, [2, 4, 3]> bm", body, "a, b, c"));
	float *v = rand_f32(4), *m = rand_f32(12), *w = rand_f32(3), *bm = rand_f32(24), oa[3], ob[4], oc[8];
	const void *in[] = {v, m, w, bm};
	void *out[] = {oa, ob, oc};
	run_ok(p, 0, in, out);
	for (int j = 0; j < 3; j++) {
		double s = 0;
		for (int k = 0; k < 4; k++)
			s += (double)v[k] * m[k * 3 + j];
		cr_assert_float_eq(oa[j], s, 1e-5);
	}
	for (int i = 0; i < 4; i++) {
		double s = 0;
		for (int k = 0; k < 3; k++)
			s += (double)m[i * 3 + k] * w[k];
		cr_assert_float_eq(ob[i], s, 1e-5);
	}
	for (int b = 0; b < 2; b++)
		for (int i = 0; i < 4; i++) {
			double s = 0;
			for (int k = 0; k < 3; k++)
				s += (double)bm[(b * 4 + i) * 3 + k] * w[k];
			cr_assert_float_eq(oc[b * 4 + i], s, 1e-5);
		}
	B->ops->program_free(B, p);
	free(v); free(m); free(w); free(bm);
}

/* ---- the dynamic-weights program ---- */

/* input [1, IC, 1, SEQ+OC]: columns [0, SEQ) activations, [SEQ, SEQ+OC) weights;
 * output [1, OC, 1, SEQ]: out[oc][s] = sum_ic act[ic][s] * w[ic][oc] */
static char *dyn_mil(int ic, int seq, int oc)
{
	static char text[8192];
	snprintf(text, sizeof text,
		"program(1.3)\n"
		"[buildInfo = dict<string, string>({{\"coremlc-component-MIL\", \"3510.2.1\"}, {\"coremlc-version\", \"3505.4.1\"}, {\"coremltools-component-milinternal\", \"\"}, {\"coremltools-version\", \"9.0\"}})]\n"
		"{\n"
		"    func main<ios18>(tensor<fp16, [1, %1$d, 1, %4$d]> x) {\n"
		"        tensor<int32, [4]> ab = const()[name = string(\"ab\"), val = tensor<int32, [4]>([0, 0, 0, 0])];\n"
		"        tensor<int32, [4]> as = const()[name = string(\"as\"), val = tensor<int32, [4]>([1, %1$d, 1, %2$d])];\n"
		"        tensor<fp16, [1, %1$d, 1, %2$d]> act = slice_by_size(x = x, begin = ab, size = as)[name = string(\"act\")];\n"
		"        tensor<int32, [4]> wb = const()[name = string(\"wb\"), val = tensor<int32, [4]>([0, 0, 0, %2$d])];\n"
		"        tensor<int32, [4]> ws = const()[name = string(\"ws\"), val = tensor<int32, [4]>([1, %1$d, 1, %3$d])];\n"
		"        tensor<fp16, [1, %1$d, 1, %3$d]> wt = slice_by_size(x = x, begin = wb, size = ws)[name = string(\"wt\")];\n"
		"        tensor<fp16, [1, 1, %1$d, %2$d]> a2 = reshape(x = act, shape = tensor<int32, [4]>([1, 1, %1$d, %2$d]))[name = string(\"a2\")];\n"
		"        tensor<fp16, [1, 1, %1$d, %3$d]> w2 = reshape(x = wt, shape = tensor<int32, [4]>([1, 1, %1$d, %3$d]))[name = string(\"w2\")];\n"
		"        tensor<int32, [4]> perm = const()[name = string(\"perm\"), val = tensor<int32, [4]>([0, 1, 3, 2])];\n"
		"        tensor<fp16, [1, 1, %2$d, %1$d]> at = transpose(x = a2, perm = perm)[name = string(\"at\")];\n"
		"        bool tx = const()[name = string(\"tx\"), val = bool(false)];\n"
		"        tensor<fp16, [1, 1, %2$d, %3$d]> y = matmul(transpose_x = tx, transpose_y = false, x = at, y = w2)[name = string(\"y\")];\n"
		"        tensor<fp16, [1, 1, %3$d, %2$d]> yt = transpose(x = y, perm = perm)[name = string(\"yt\")];\n"
		"        tensor<fp16, [1, %3$d, 1, %2$d]> out = reshape(x = yt, shape = tensor<int32, [4]>([1, %3$d, 1, %2$d]))[name = string(\"out\")];\n"
		"    } -> (out);\n"
		"}\n",
		ic, seq, oc, seq + oc);
	return text;
}

static void dyn_fill(uint16_t *x, int ic, int seq, int oc)
{
	for (int i = 0; i < ic * (seq + oc); i++)
		x[i] = anes_f32_to_f16_soft(frand());
}

static void dyn_ref(const uint16_t *x, int ic, int seq, int oc, double *ref)
{
	int cols = seq + oc;
	for (int o = 0; o < oc; o++)
		for (int s = 0; s < seq; s++) {
			double acc = 0;
			for (int c = 0; c < ic; c++)
				acc += (double)h2f(x[c * cols + s]) * (double)h2f(x[c * cols + seq + o]);
			ref[o * seq + s] = acc;
		}
}

static void dyn_case(int ic, int seq, int oc, const char *text)
{
	anes_bprogram *p = compile_text(text ? text : dyn_mil(ic, seq, oc));
	const anes_function_info *f = &p->functions[0];
	cr_assert_str_eq(f->name, "main");
	cr_assert_eq(f->n_inputs, 1);
	cr_assert_eq(f->inputs[0].bytes, (uint64_t)ic * (seq + oc) * 2);
	cr_assert_eq(f->outputs[0].rank, 4);
	cr_assert_eq(f->outputs[0].shape[1], (uint64_t)oc);
	cr_assert_eq(f->outputs[0].shape[3], (uint64_t)seq);
	uint16_t *x = malloc((size_t)ic * (seq + oc) * 2), *o = malloc((size_t)oc * seq * 2);
	double *ref = malloc((size_t)oc * seq * sizeof *ref);
	for (int it = 0; it < 3; it++) {  /* same program, new weights each time */
		dyn_fill(x, ic, seq, oc);
		const void *in[] = {x};
		void *out[] = {o};
		run_ok(p, 0, in, out);
		dyn_ref(x, ic, seq, oc, ref);
		check_f16("dynamic matmul", o, ref, (size_t)oc * seq, 1e-2);
		check_f16("dynamic matmul (tight)", o, ref, (size_t)oc * seq, 2e-3);
	}
	B->ops->program_free(B, p);
	free(x); free(o); free(ref);
}

Test(cpu, dynamic_weights_matmul)
{
	rng_state = 9;
	dyn_case(64, 64, 64, NULL);
	dyn_case(48, 20, 36, NULL);
	dyn_case(1, 1, 1, NULL);
}

Test(cpu, example_file)
{
	char path[1024];
	const char *f = __FILE__;
	const char *slash = strrchr(f, '/');
	snprintf(path, sizeof path, "%.*s/../examples/dynamic_matmul.mil", slash ? (int)(slash - f) : 1,
	         slash ? f : ".");
	FILE *fp = fopen(path, "rb");
	if (!fp) {
		cr_log_warn("cannot open %s, skipping", path);
		return;
	}
	static char buf[1 << 16];
	size_t len = fread(buf, 1, sizeof buf - 1, fp);
	fclose(fp);
	buf[len] = 0;
	rng_state = 10;
	dyn_case(64, 64, 64, buf);
}

/* ---- concurrency ---- */

typedef struct thr {
	anes_bprogram *p;
	int id;
	int failures;
	uint16_t *shared_in;
	uint16_t *shared_out;   /* output on shared_in, compared to the baseline */
	const uint16_t *baseline;
} thr;

static void *thread_main(void *arg)
{
	thr *t = arg;
	enum { IC = 64, SEQ = 64, OC = 64 };
	uint16_t *x = malloc(IC * (SEQ + OC) * 2), *o = malloc(OC * SEQ * 2);
	double *ref = malloc(OC * SEQ * sizeof *ref);
	uint64_t s = 0x1234567ull * (uint64_t)(t->id + 1);
	char eb[256];
	for (int it = 0; it < 40; it++) {
		for (int i = 0; i < IC * (SEQ + OC); i++) {
			s ^= s << 13; s ^= s >> 7; s ^= s << 17;
			x[i] = anes_f32_to_f16_soft((float)((double)(s >> 11) / 9007199254740992.0 * 2 - 1));
		}
		const void *in[] = {x};
		void *out[] = {o};
		if (B->ops->run(B, t->p, 0, in, out, eb, sizeof eb)) {
			t->failures++;
			continue;
		}
		dyn_ref(x, IC, SEQ, OC, ref);
		for (int i = 0; i < OC * SEQ; i++)
			if (fabs(h2f(o[i]) - ref[i]) > 2e-3 * fmax(1, fabs(ref[i])))
				t->failures++;
		const void *in2[] = {t->shared_in};
		void *out2[] = {t->shared_out};
		if (B->ops->run(B, t->p, 0, in2, out2, eb, sizeof eb) ||
		    memcmp(t->shared_out, t->baseline, OC * SEQ * 2) != 0)
			t->failures++;
	}
	free(x); free(o); free(ref);
	return NULL;
}

Test(cpu, concurrent_runs)
{
	enum { IC = 64, SEQ = 64, OC = 64, NT = 4 };
	rng_state = 11;
	anes_bprogram *p = compile_text(dyn_mil(IC, SEQ, OC));
	uint16_t *shared = malloc(IC * (SEQ + OC) * 2), *base = malloc(OC * SEQ * 2);
	dyn_fill(shared, IC, SEQ, OC);
	const void *in[] = {shared};
	void *out[] = {base};
	run_ok(p, 0, in, out);
	pthread_t th[NT];
	thr t[NT];
	for (int i = 0; i < NT; i++) {
		t[i] = (thr){p, i, 0, shared, malloc(OC * SEQ * 2), base};
		cr_assert_eq(pthread_create(&th[i], NULL, thread_main, &t[i]), 0);
	}
	for (int i = 0; i < NT; i++) {
		pthread_join(th[i], NULL);
		cr_assert_eq(t[i].failures, 0, "thread %d: %d failures", i, t[i].failures);
		free(t[i].shared_out);
	}
	B->ops->program_free(B, p);
	free(shared);
	free(base);
}

/* ---- program structure, errors ---- */

Test(cpu, multiple_functions)
{
	const char *text =
		"program(1.3)\n{\n"
		"  func second(tensor<fp32, [2]> a) {\n"
		"    tensor<fp32, [2]> b = add(x = a, y = a);\n"
		"  } -> (b);\n"
		"  func main(tensor<fp32, [2]> a) {\n"
		"    tensor<fp32, [2]> b = mul(x = a, y = a);\n"
		"  } -> (b);\n"
		"}\n";
	anes_bprogram *p = compile_text(text);
	cr_assert_eq(p->n_functions, 2);
	cr_assert_str_eq(p->functions[0].name, "main");
	cr_assert_str_eq(p->functions[1].name, "second");
	float a[2] = {3, -4}, o[2];
	const void *in[] = {a};
	void *out[] = {o};
	run_ok(p, 0, in, out);
	cr_assert(o[0] == 9 && o[1] == 16);
	run_ok(p, 1, in, out);
	cr_assert(o[0] == 6 && o[1] == -8);
	cr_assert_eq(B->ops->run(B, p, 2, in, out, errbuf, sizeof errbuf), -EINVAL);
	cr_assert_eq(B->ops->run(B, p, 0, NULL, out, errbuf, sizeof errbuf), -EINVAL);
	B->ops->program_free(B, p);
	B->ops->program_free(B, NULL);
}

Test(cpu, compile_errors)
{
	anes_bprogram *p = (anes_bprogram *)(uintptr_t)1;
	const char *t1 = mil("tensor<fp16, [2]> x", "        tensor<fp16, [2]> y = hard_swish(x = x);", "y");
	cr_assert_eq(B->ops->compile(B, t1, strlen(t1), NULL, 0, &p, errbuf, sizeof errbuf), -ENOTSUP);
	cr_assert(strncmp(errbuf, "line 4: ", 8) == 0, "%s", errbuf);
	cr_assert_eq(p, (anes_bprogram *)(uintptr_t)1, "ret_prog written on failure");
	/* valid MIL the CPU kernels do not support: add on int8 */
	const char *t2 = mil("tensor<int8, [2]> x", "\n        tensor<int8, [2]> y = add(x = x, y = x);", "y");
	cr_assert_eq(B->ops->compile(B, t2, strlen(t2), NULL, 0, &p, errbuf, sizeof errbuf), -ENOTSUP);
	cr_assert(strncmp(errbuf, "line 5: op 'add' (y): ", 22) == 0, "%s", errbuf);
	const char *t3 = mil("tensor<fp16, [2]> x", "        tensor<fp16, [3]> y = add(x = x, y = x);", "y");
	cr_assert_eq(B->ops->compile(B, t3, strlen(t3), NULL, 0, &p, errbuf, sizeof errbuf), -EINVAL);
	cr_assert(strncmp(errbuf, "line 4: ", 8) == 0, "%s", errbuf);
	B->ops->destroy(NULL);
}

Test(cpu, weights_blob_program)
{
	/* a const weight from a blob, used by matmul */
	enum { K = 8, N = 5 };
	size_t len = 128 + K * N * 2;
	uint8_t *blob = calloc(1, len);
	blob[0] = 1;
	blob[4] = 2;
	uint8_t hdr[20] = {0xEF, 0xBE, 0xAD, 0xDE, 1, 0, 0, 0, K * N * 2, 0, 0, 0, 0, 0, 0, 0, 128, 0, 0, 0};
	memcpy(blob + 64, hdr, sizeof hdr);
	rng_state = 12;
	uint16_t *w = rand_f16(K * N);
	memcpy(blob + 128, w, K * N * 2);
	anes_weight wt = {"@model_path/weights/w.bin", blob, len, false, false, -1};
	const char *text = mil("tensor<fp16, [3, 8]> x",
		"        tensor<fp16, [8, 5]> W = const()[name = string(\"W\"), val = tensor<fp16, [8, 5]>(BLOBFILE(path = string(\"@model_path/weights/w.bin\"), offset = uint64(64)))];\n"
		"        tensor<fp16, [3, 5]> y = matmul(x = x, y = W)[name = string(\"y\")];\n", "y");
	anes_bprogram *p = NULL;
	cr_assert_eq(B->ops->compile(B, text, strlen(text), &wt, 1, &p, errbuf, sizeof errbuf), 0, "%s", errbuf);
	memset(blob, 0, len);  /* the backend must have copied what it needs */
	free(blob);
	uint16_t *x = rand_f16(24), o[15];
	const void *in[] = {x};
	void *out[] = {o};
	run_ok(p, 0, in, out);
	double ref[15];
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < N; j++) {
			double s = 0;
			for (int k = 0; k < K; k++)
				s += (double)h2f(x[i * K + k]) * h2f(w[k * N + j]);
			ref[i * N + j] = s;
		}
	check_f16("blob matmul", o, ref, 15, 1e-3);
	B->ops->program_free(B, p);
	free(x);
	free(w);
}

/* ---- run arguments in the caller's memory (no copies) ----
 * Inputs are read in place and op-computed outputs are computed straight into
 * the output buffers; these check the plan's special cases and that aliasing
 * or concurrently changing buffers can change numbers but never crash. */

/* a = x + y feeds a later op and is returned twice; x is returned as is;
 * i = identity(x); r = reshape(y); k is a folded constant */
static const char *direct_mil(void)
{
	return mil("tensor<fp32, [2, 8]> x, tensor<fp32, [2, 8]> y",
		"        tensor<fp32, [2, 8]> a = add(x = x, y = y);\n"
		"        tensor<fp32, [2, 8]> b = mul(x = a, y = x);\n"
		"        tensor<fp32, [2, 8]> c = relu(x = b);\n"
		"        tensor<fp32, [2, 8]> i = identity(x = x);\n"
		"        tensor<fp32, [16]> r = reshape(x = y, shape = tensor<int32, [1]>([16]));\n"
		"        tensor<fp32, [2]> kc = const()[name = string(\"kc\"), val = tensor<fp32, [2]>([1.5, -2])];\n"
		"        tensor<fp32, [2]> k = add(x = kc, y = kc);\n",
		"a, c, a, x, i, r, k");
}

Test(cpu, direct_outputs_separate)
{
	anes_bprogram *p = compile_text(direct_mil());
	cr_assert_eq(p->functions[0].n_outputs, 7);
	float x[16], y[16], o[7][16];
	for (int rep = 0; rep < 3; rep++) {   /* arenas are reused: results must not depend on history */
		for (int i = 0; i < 16; i++) {
			x[i] = (float)(i - 7 + rep);
			y[i] = (float)(3 - i) * 0.5f;
		}
		memset(o, 0xAB, sizeof o);
		const void *in[] = {x, y};
		void *out[] = {o[0], o[1], o[2], o[3], o[4], o[5], o[6]};
		run_ok(p, 0, in, out);
		for (int i = 0; i < 16; i++) {
			float a = x[i] + y[i], b = a * x[i];
			cr_assert_eq(o[0][i], a, "a[%d]", i);
			cr_assert_eq(o[1][i], b > 0 ? b : 0, "c[%d]", i);
			cr_assert_eq(o[2][i], a, "a (second time)[%d]", i);
			cr_assert_eq(o[3][i], x[i], "x returned[%d]", i);
			cr_assert_eq(o[4][i], x[i], "identity(x)[%d]", i);
			cr_assert_eq(o[5][i], y[i], "reshape(y)[%d]", i);
		}
		cr_assert(o[6][0] == 3.0f && o[6][1] == -4.0f);
	}
	/* the inputs are read, never written */
	for (int i = 0; i < 16; i++)
		cr_assert(x[i] == (float)(i - 5) && y[i] == (float)(3 - i) * 0.5f);
	B->ops->program_free(B, p);
}

Test(cpu, direct_outputs_alias_inputs)
{
	anes_bprogram *p = compile_text(direct_mil());
	float *buf = malloc(64 * sizeof *buf);
	for (int i = 0; i < 64; i++)
		buf[i] = (float)i;
	/* every output on the first input's buffer */
	const void *in[] = {buf, buf + 16};
	void *out_same[] = {buf, buf, buf, buf, buf, buf, buf};
	run_ok(p, 0, in, out_same);
	/* outputs partially overlapping the inputs and each other */
	void *out_ovl[] = {buf + 8, buf + 4, buf + 12, buf + 1, buf + 17, buf + 3, buf + 30};
	for (int rep = 0; rep < 4; rep++)
		run_ok(p, 0, in, out_ovl);
	/* an elementwise op in place gives the right answer */
	anes_bprogram *q = compile_text(mil("tensor<fp32, [32]> x",
		"        tensor<fp32, [32]> y = relu(x = x);\n"
		"        tensor<fp32, [32]> z = identity(x = x);\n", "y, z, x"));
	for (int i = 0; i < 32; i++)
		buf[i] = (float)(i % 5) - 2.0f;
	const void *qin[] = {buf};
	void *qout[] = {buf, buf, buf};
	run_ok(q, 0, qin, qout);
	for (int i = 0; i < 32; i++)
		cr_assert(!(buf[i] < 0) && !isnan(buf[i]), "buf[%d] = %f", i, (double)buf[i]);
	B->ops->program_free(B, q);
	B->ops->program_free(B, p);
	free(buf);
}

Test(cpu, direct_misaligned_arguments)
{
	/* pointers not aligned to their element size are staged, results exact */
	anes_bprogram *p = compile_text(direct_mil());
	uint8_t *mem = malloc(8 * 64 * 4 + 64);
	float x[16], y[16];
	for (int i = 0; i < 16; i++) {
		x[i] = (float)i * 0.25f;
		y[i] = (float)(i * i);
	}
	uint8_t *xi = mem + 1, *yi = mem + 67, *o = mem + 133;   /* odd addresses */
	memcpy(xi, x, sizeof x);
	memcpy(yi, y, sizeof y);
	const void *in[] = {xi, yi};
	void *out[7];
	for (int j = 0; j < 7; j++)
		out[j] = o + j * 66 + (j == 2 ? 1 : 0);   /* output 2 (a repeated value) misaligned differently */
	out[4] = mem + 8 * 64 * 4;                    /* one aligned output among them */
	run_ok(p, 0, in, out);
	for (int i = 0; i < 16; i++) {
		float v[7];
		for (int j = 0; j < 6; j++)
			memcpy(&v[j], (uint8_t *)out[j] + i * 4, 4);
		float a = x[i] + y[i], b = a * x[i];
		cr_assert(v[0] == a && v[1] == (b > 0 ? b : 0) && v[2] == a && v[3] == x[i] && v[4] == x[i] &&
		          v[5] == y[i], "element %d", i);
	}
	B->ops->program_free(B, p);
	free(mem);
}

typedef struct flipper {
	volatile int32_t *idx;
	int n;
	volatile int stop;
} flipper;

static void *flip_main(void *arg)
{
	flipper *f = arg;
	uint32_t s = 12345;
	while (!f->stop) {
		for (int i = 0; i < f->n; i++) {
			s = s * 1664525u + 1013904223u;
			static const int32_t bad[] = {7, -8, 1 << 30, INT32_MIN, INT32_MAX, -1, 0, 3};
			f->idx[i] = (s >> 28) < 8 ? bad[(s >> 20) & 7] : (int32_t)((s >> 8) % 7) - 3;
		}
	}
	return NULL;
}

/* gather with indices changing during the run: every run either fails
 * cleanly (-EINVAL, out of range) or gathers only rows of x; never out of
 * bounds (the ASan build checks) */
static void gather_flip_case(const char *text, bool idx_is_output)
{
	enum { D = 7, W = 33, N = 64, RUNS = 300 };
	anes_bprogram *p = compile_text(text);
	uint16_t *x = rand_f16(D * W);
	int32_t *idx = calloc(N, sizeof *idx);
	int32_t *idx_out = calloc(N, sizeof *idx_out);
	uint16_t *y = malloc(N * W * 2);
	flipper f = {idx_is_output ? idx_out : idx, N, 0};
	pthread_t th;
	int ok = 0, refused = 0;
	cr_assert_eq(pthread_create(&th, NULL, flip_main, &f), 0);
	for (int r = 0; r < RUNS; r++) {
		const void *in[] = {x, idx};
		void *out2[] = {y, idx_out};
		void *out1[] = {y};
		int rc = B->ops->run(B, p, 0, in, idx_is_output ? out2 : out1, errbuf, sizeof errbuf);
		if (rc == -EINVAL) {
			cr_assert(strstr(errbuf, "out of range"), "%s", errbuf);
			refused++;
			continue;
		}
		cr_assert_eq(rc, 0, "%s", errbuf);
		ok++;
		for (int i = 0; i < N; i++) {
			bool found = false;
			for (int d = 0; d < D && !found; d++)
				found = memcmp(y + i * W, x + d * W, W * 2) == 0;
			cr_assert(found, "run %d: row %d is no row of x", r, i);
		}
	}
	f.stop = 1;
	pthread_join(th, NULL);
	cr_assert_eq(ok + refused, RUNS);
	B->ops->program_free(B, p);
	free(x);
	free(idx);
	free(idx_out);
	free(y);
}

Test(cpu, gather_indices_changing_input)
{
	rng_state = 21;
	gather_flip_case(mil("tensor<fp16, [7, 33]> x, tensor<int32, [64]> i",
		"        tensor<fp16, [64, 33]> y = gather(x = x, indices = i, axis = int32(0));\n", "y"), false);
}

Test(cpu, gather_indices_changing_output)
{
	/* the indices are a function output computed into the caller's buffer
	 * (which the flipper writes) and then read back by gather */
	rng_state = 22;
	gather_flip_case(mil("tensor<fp16, [7, 33]> x, tensor<int32, [64]> i",
		"        tensor<int32, [64]> j = add(x = i, y = int32(0));\n"
		"        tensor<fp16, [64, 33]> y = gather(x = x, indices = j, axis = int32(0));\n", "y, j"), true);
}

Test(cpu, direct_large_copy)
{
	/* identity of an input to an output above the parallel-copy threshold:
	 * exact when separate, in bounds when the buffers overlap */
	enum { N = 5 * 1024 * 1024 / 2 + 77 };
	char text[512];
	snprintf(text, sizeof text, "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [%d]> x) {\n"
	         "        tensor<fp16, [%d]> y = identity(x = x);\n    } -> (y, x);\n}\n", N, N);
	anes_bprogram *p = compile_text(text);
	uint16_t *buf = malloc((size_t)N * 2 * 3);
	for (size_t i = 0; i < (size_t)N * 3; i++)
		buf[i] = (uint16_t)(i * 2654435761u >> 7);
	const void *in[] = {buf};
	void *out[] = {buf + N, buf + 2 * N};
	run_ok(p, 0, in, out);
	cr_assert(memcmp(buf, buf + N, (size_t)N * 2) == 0);
	cr_assert(memcmp(buf, buf + 2 * N, (size_t)N * 2) == 0);
	void *ovl[] = {buf + 3, buf + N / 2};
	run_ok(p, 0, in, ovl);
	void *same[] = {buf, buf};
	run_ok(p, 0, in, same);
	B->ops->program_free(B, p);
	free(buf);
}

/* ---- the text coremlc and coremltools <= 7 write (iOS 15-17 forms) ---- */

/* The exact forms of issue 17 item 1 and 3, in one program: program(1),
 * opset CoreML8, tensor<string, []> and a dict of them in buildInfo, a
 * BLOBFILE offset as tensor<uint64, []>, one-element literals without
 * brackets, a function attribute before the body, and a constexpr op with
 * its inputs inside the attribute bracket.  Computed against numbers worked
 * out by hand (every value is exact in fp16). */
static const char old_forms_text[] =
	"program(1)\n"
	"[buildInfo = dict<tensor<string, []>, tensor<string, []>>({{\"coremlc-component-MIL\", \"3304.5.2\"}, "
	"{\"coremlc-version\", \"3304.6.2\"}, {\"coremltools-component-torch\", \"2.2.2\"}, "
	"{\"coremltools-source-dialect\", \"TorchScript\"}, {\"coremltools-version\", \"7.2\"}})]\n"
	"{\n"
	"    func main<CoreML8>(tensor<fp16, [1, 4]> x) [FlexibleShapeInformation = tuple<tuple<tensor<string, []>, "
	"dict<tensor<string, []>, tensor<int32, [?]>>>>((\"DefaultShapes\", {{\"x\", [1, 4]}}))] {\n"
	"            tensor<int32, [1]> ax = const()[name = tensor<string, []>(\"ax\"), val = tensor<int32, [1]>(-1)];\n"
	"            tensor<fp16, [4]> b = const()[name = tensor<string, []>(\"b\"), val = tensor<fp16, [4]>(BLOBFILE("
	"path = tensor<string, []>(\"@model_path/weights/weight.bin\"), offset = tensor<uint64, []>(64)))];\n"
	"            tensor<fp16, [4, 4]> q = constexpr_affine_dequantize()[axis = tensor<int32, []>(0), "
	"name = tensor<string, []>(\"q\"), quantized_data = tensor<int8, [4, 4]>([[1, 2, 3, 4], [-1, -2, -3, -4], "
	"[0, 1, 0, 1], [8, 0, -8, 0]]), scale = tensor<fp16, []>(0x1p-1), zero_point = tensor<int8, []>(0)];\n"
	"            tensor<fp16, [1, 4]> y = linear(bias = b, weight = q, x = x)[name = tensor<string, []>(\"y\")];\n"
	"            tensor<bool, []> kd = const()[name = tensor<string, []>(\"kd\"), val = tensor<bool, []>(true)];\n"
	"            tensor<fp16, [1, 1]> r = reduce_sum(axes = ax, keep_dims = kd, x = y)[name = tensor<string, []>(\"r\")];\n"
	"            tensor<string, []> to32 = const()[name = tensor<string, []>(\"to32\"), val = tensor<string, []>(\"fp32\")];\n"
	"            tensor<fp32, [1, 1]> r32 = cast(dtype = to32, x = r)[name = tensor<string, []>(\"cast_0\")];\n"
	"        } -> (y, r32);\n"
	"}\n";

Test(cpu, coremlc_ios17_text_forms_run)
{
	/* weight.bin: one fp16 [4] blob at 64 holding 0, 0.25, 0.5, 0.75 */
	uint8_t blob[136] = {1, 0, 0, 0, 2};
	uint8_t *m = blob + 64;
	m[0] = 0xEF; m[1] = 0xBE; m[2] = 0xAD; m[3] = 0xDE; m[4] = 1; m[8] = 8; m[16] = 128;
	for (int i = 0; i < 4; i++) {
		uint16_t h = anes_f32_to_f16_soft(0.25f * (float)i);
		memcpy(blob + 128 + 2 * i, &h, 2);
	}
	anes_weight w = {"@model_path/weights/weight.bin", blob, sizeof blob, false, false, -1};
	anes_bprogram *p = NULL;
	int rc = B->ops->compile(B, old_forms_text, strlen(old_forms_text), &w, 1, &p, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "compile failed (%d): %s", rc, errbuf);
	cr_assert_eq(p->n_functions, 1);
	cr_assert_eq(p->functions[0].n_outputs, 2);

	uint16_t x[4], y[4];
	float r32 = 0;
	for (int i = 0; i < 4; i++)
		x[i] = anes_f32_to_f16_soft((float)(i + 1));
	const void *in[] = {x};
	void *out[] = {y, &r32};
	run_ok(p, 0, in, out);
	/* y[j] = 0.5 * sum_i q[j][i] * x[i] + b[j] */
	const double want[4] = {15.0, -14.75, 3.5, -7.25};
	for (int j = 0; j < 4; j++)
		cr_assert_eq(h2f(y[j]), (float)want[j], "y[%d] = %g, want %g", j, (double)h2f(y[j]), want[j]);
	cr_assert_eq(r32, -3.5f);
	B->ops->program_free(B, p);
}

/* ---- flexible shapes (docs/mil.md, Functions, shapes and states) ---- */

/* coremlc's form: '?' input dimensions, DefaultShapes and EnumeratedShapes */
static const char flex_text[] =
	"program(1.0)\n"
	"{\n"
	"    func main<ios17>(tensor<fp16, [1, ?]> x) [FlexibleShapeInformation = tuple<tuple<tensor<string, []>, "
	"dict<tensor<string, []>, tensor<int32, [?]>>>, tuple<tensor<string, []>, dict<tensor<string, []>, "
	"dict<tensor<string, []>, tensor<int32, [?]>>>>>(((\"DefaultShapes\", {{\"x\", [1, 4]}}), "
	"(\"EnumeratedShapes\", {{\"x_1_4\", {{\"x\", [1, 4]}}}, {\"x_1_8\", {{\"x\", [1, 8]}}}})))] {\n"
	"            tensor<fp16, [1, ?]> y = mul(x = x, y = fp16(2))[name = string(\"y\")];\n"
	"            tensor<fp16, [1, ?]> z = add(x = y, y = x)[name = string(\"z\")];\n"
	"        } -> (z);\n"
	"}\n";

Test(cpu, enumerated_shapes_are_functions)
{
	anes_bprogram *p = compile_text(flex_text);
	cr_assert_eq(p->n_functions, 3);
	static const char *const names[] = {"main", "main/x_1_4", "main/x_1_8"};
	static const uint64_t widths[] = {4, 4, 8};
	for (uint32_t f = 0; f < 3; f++) {
		const anes_function_info *fi = &p->functions[f];
		cr_assert_str_eq(fi->name, names[f]);
		cr_assert_eq(fi->inputs[0].shape[1], widths[f]);
		cr_assert_eq(fi->outputs[0].shape[1], widths[f]);
		cr_assert_eq(fi->outputs[0].bytes, 2 * widths[f]);
		uint16_t x[8], z[8];
		for (uint64_t i = 0; i < widths[f]; i++)
			x[i] = anes_f32_to_f16_soft((float)i - 2.5f);
		const void *in[] = {x};
		void *out[] = {z};
		run_ok(p, f, in, out);
		for (uint64_t i = 0; i < widths[f]; i++)
			cr_assert_eq(h2f(z[i]), 3 * ((float)i - 2.5f), "%s: z[%llu] = %g", names[f],
			             (unsigned long long)i, (double)h2f(z[i]));
	}
	B->ops->program_free(B, p);
}

/* ---- states (iOS 18): a KV cache that runs accumulate ---- */

/* A shift-register key cache of 4 rows (the oldest row drops out, k is
 * appended), scores q . cache^T over it, and a step counter; the cache is
 * written with write_state then read back (as coremlc writes
 * coreml_update_state), the counter with coreml_update_state. */
static const char kv_text[] =
	"program(1.3)\n"
	"{\n"
	"    func main<ios18>(tensor<fp16, [1, 2]> k, tensor<fp16, [1, 2]> q, state<tensor<fp16, [4, 2]>> kv,\n"
	"                     state<tensor<fp16, [1]>> steps) {\n"
	"        tensor<fp16, [4, 2]> c = read_state(input = kv)[name = string(\"c\")];\n"
	"        tensor<fp16, [3, 2]> old = slice_by_size(x = c, begin = tensor<int32, [2]>([1, 0]), "
	"size = tensor<int32, [2]>([3, 2]))[name = string(\"old\")];\n"
	"        tensor<fp16, [4, 2]> nc = concat(values = (old, k), axis = int32(0))[name = string(\"nc\")];\n"
	"        write_state(data = nc, input = kv)[name = string(\"kv_write_state\")];\n"
	"        tensor<fp16, [4, 2]> c2 = read_state(input = kv)[name = string(\"c2\")];\n"
	"        tensor<fp16, [1, 4]> s = matmul(x = q, y = c2, transpose_y = true)[name = string(\"s\")];\n"
	"        tensor<fp16, [1]> n0 = read_state(input = steps)[name = string(\"n0\")];\n"
	"        tensor<fp16, [1]> n1 = add(x = n0, y = fp16(1))[name = string(\"n1\")];\n"
	"        tensor<fp16, [1]> n = coreml_update_state(state = steps, value = n1)[name = string(\"n\")];\n"
	"    } -> (s, n);\n"
	"}\n";

Test(cpu, kv_cache_state_accumulates_over_runs)
{
	anes_bprogram *p = compile_text(kv_text);
	const anes_function_info *fi = &p->functions[0];
	cr_assert_eq(fi->n_inputs, 2);
	cr_assert_eq(fi->n_states, 2);
	cr_assert_str_eq(fi->states[0].name, "kv");
	cr_assert_eq(fi->states[0].bytes, 16);
	cr_assert_str_eq(fi->states[1].name, "steps");

	/* without the states the function does not run */
	uint16_t k[2], q[2], s[4], n;
	const void *in[] = {k, q};
	void *out[] = {s, &n};
	cr_assert_eq(B->ops->run(B, p, 0, in, out, errbuf, sizeof errbuf), -ENOTSUP);
	cr_assert(strstr(errbuf, "has 2 states"), "%s", errbuf);

	uint16_t kv[8] = {0}, steps = 0;
	void *states[] = {kv, &steps};
	float ref[4][2] = {{0}};   /* the cache, computed here */
	for (int t = 1; t <= 6; t++) {
		float kt[2] = {(float)t, -0.5f * (float)t}, qt[2] = {0.25f, (float)(t % 3)};
		for (int i = 0; i < 2; i++) {
			k[i] = anes_f32_to_f16_soft(kt[i]);
			q[i] = anes_f32_to_f16_soft(qt[i]);
		}
		int rc = B->ops->run_states(B, p, 0, in, out, states, errbuf, sizeof errbuf);
		cr_assert_eq(rc, 0, "step %d: %s", t, errbuf);
		memmove(ref[0], ref[1], sizeof ref[0] * 3);
		ref[3][0] = kt[0];
		ref[3][1] = kt[1];
		for (int r = 0; r < 4; r++) {
			for (int i = 0; i < 2; i++)
				cr_assert_eq(h2f(kv[2 * r + i]), ref[r][i], "step %d: cache[%d][%d] = %g, want %g", t, r, i,
				             (double)h2f(kv[2 * r + i]), (double)ref[r][i]);
			float want = qt[0] * ref[r][0] + qt[1] * ref[r][1];
			cr_assert_eq(h2f(s[r]), want, "step %d: s[%d] = %g, want %g", t, r, (double)h2f(s[r]), (double)want);
		}
		cr_assert_eq(h2f(n), (float)t);
		cr_assert_eq(h2f(steps), (float)t);
	}
	B->ops->program_free(B, p);
}
