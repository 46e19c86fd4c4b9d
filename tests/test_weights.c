/* SPDX-License-Identifier: MIT */
/*
 * Compressed weights on the CPU backend: constexpr_lut_to_dense (iOS 16
 * packed form, iOS 18 per-block and vector LUTs, every index width),
 * constexpr_sparse_to_dense (iOS 16 and iOS 18), constexpr_blockwise_shift_scale
 * (int4/uint4/int8/uint8 data, block scales and offsets), constexpr_cast, the
 * blob dtype codes of sub-byte data, chains of constexpr ops, and the errors.
 *
 * References: the worked examples of coremltools' op documentation, copied as
 * numbers; and, on random data, a reference that maps each OUTPUT element
 * back to the compressed element it comes from (the kernels go the other way,
 * from each compressed element forward), with its own bit packing.
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

static anes_backend *B;
static char errbuf[512];

static void setup(void)
{
	cr_assert_eq(anes_cpu_backend_new(1, &B), 0);
}

static void teardown(void)
{
	B->ops->destroy(B);
	B = NULL;
}

TestSuite(weights, .init = setup, .fini = teardown, .timeout = 120);

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* ---- a blob file under construction ---- */

typedef struct blob {
	uint8_t *b;
	size_t len;
} blob;

static void blob_init(blob *w)
{
	w->b = calloc(1, 64);
	w->len = 64;
	w->b[4] = 2; /* version */
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* append a record (metadata + data at 64-byte alignment); returns its offset */
static uint64_t blob_add(blob *w, uint32_t code, const void *data, size_t n, uint64_t pad_bits)
{
	size_t m = (w->len + 63) & ~(size_t)63, d = m + 64, end = d + n;
	w->b = realloc(w->b, end);
	memset(w->b + w->len, 0, end - w->len);
	put32(w->b + m, 0xDEADBEEFu);
	put32(w->b + m + 4, code);
	put64(w->b + m + 8, n);
	put64(w->b + m + 16, d);
	put64(w->b + m + 24, pad_bits);
	memcpy(w->b + d, data, n);
	w->len = end;
	put32(w->b, w->b[0] + 1u);
	return m;
}

/* the test's own packer: value v[i] at bit position i * bits, LSB first,
 * written bit by bit */
static uint8_t *pack_bits(const int *v, size_t n, unsigned bits, size_t *ret_len)
{
	size_t len = (n * bits + 7) / 8;
	uint8_t *p = calloc(1, len + 1);
	for (size_t i = 0; i < n; i++)
		for (unsigned k = 0; k < bits; k++)
			if (((unsigned)v[i] >> k) & 1u)
				p[(i * bits + k) / 8] |= (uint8_t)(1u << ((i * bits + k) % 8));
	*ret_len = len;
	return p;
}

static char text[1 << 16];

__attribute__((format(printf, 2, 3)))
static const char *prog(const char *ret_decl, const char *fmt, ...)
{
	char body[1 << 15];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(body, sizeof body, fmt, ap);
	va_end(ap);
	snprintf(text, sizeof text,
	         "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1]> x) {\n%s\n        %s W = identity(x = w)[name = string(\"W\")];\n    } -> (W);\n}\n",
	         body, ret_decl);
	return text;
}

/* compile text against blob w (or none) and run it; out gets the output */
static void compile_run(const char *t, const blob *w, void *out)
{
	anes_weight wt = {"@model_path/weights/weight.bin", w ? w->b : NULL, w ? w->len : 0, false, false, -1};
	anes_bprogram *p = NULL;
	int rc = B->ops->compile(B, t, strlen(t), w ? &wt : NULL, w ? 1 : 0, &p, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "compile failed (%d): %s\n%s", rc, errbuf, t);
	uint16_t x = 0;
	const void *in[1] = {&x};
	void *outs[1] = {out};
	rc = B->ops->run(B, p, 0, in, outs, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "run failed (%d): %s", rc, errbuf);
	B->ops->program_free(B, p);
}

static int compile_fail(const char *t, const blob *w, const char *needle)
{
	anes_weight wt = {"@model_path/weights/weight.bin", w ? w->b : NULL, w ? w->len : 0, false, false, -1};
	anes_bprogram *p = NULL;
	int rc = B->ops->compile(B, t, strlen(t), w ? &wt : NULL, w ? 1 : 0, &p, errbuf, sizeof errbuf);
	cr_assert_neq(rc, 0, "compiled but should not have:\n%s", t);
	cr_assert_null(p);
	cr_assert(strstr(errbuf, needle), "error '%s' does not say '%s'", errbuf, needle);
	return rc;
}

static double h2d(uint16_t h) { return anes_f16_to_f32_soft(h); }

#define BLOB "BLOBFILE(path = string(\"@model_path/weights/weight.bin\"), offset = uint64(%llu))"

/* ---- constexpr_lut_to_dense ---- */

/* coremltools' documentation, iOS 18 "Case 1": per-group scalar palettization */
Test(weights, lut_ios18_doc_case1_two_groups)
{
	const char *t = prog("tensor<fp16, [6, 2]>",
		"        tensor<uint2, [6, 2]> ind = const()[name = string(\"ind\"), val = tensor<uint2, [6, 2]>([2, 3, 3, 0, 1, 0, 3, 0, 2, 1, 0, 3])];\n"
		"        tensor<fp16, [2, 1, 4, 1]> lut = const()[name = string(\"lut\"), val = tensor<fp16, [2, 1, 4, 1]>([1.0, 5.0, 9.0, 13.0, 2.0, 10.0, 18.0, 26.0])];\n"
		"        tensor<fp16, [6, 2]> w = constexpr_lut_to_dense(indices = ind, lut = lut)[name = string(\"w\")];");
	uint16_t out[12];
	const double want[12] = {9, 13, 13, 1, 5, 1, 26, 2, 18, 10, 2, 26};
	compile_run(t, NULL, out);
	for (int i = 0; i < 12; i++)
		cr_assert_eq(h2d(out[i]), want[i], "element %d: %g, want %g", i, h2d(out[i]), want[i]);
}

/* iOS 18 "Case 2": a vector LUT of int8 [a0 a1 a2] [b0 b1 b2], vector_axis 1 and 2 */
Test(weights, lut_ios18_doc_case2_vectors)
{
	static const int8_t want1[2][6][2] = {
		{{1, 1}, {2, 2}, {3, 3}, {4, 1}, {5, 2}, {6, 3}},
		{{4, 4}, {5, 5}, {6, 6}, {1, 1}, {2, 2}, {3, 3}}};
	static const int8_t want2[2][2][6] = {
		{{1, 2, 3, 1, 2, 3}, {4, 5, 6, 1, 2, 3}},
		{{4, 5, 6, 4, 5, 6}, {1, 2, 3, 1, 2, 3}}};
	const char *common =
		"        tensor<uint1, [2, 2, 2]> ind = const()[name = string(\"ind\"), val = tensor<uint1, [2, 2, 2]>([[[0, 0], [1, 0]], [[1, 1], [0, 0]]])];\n"
		"        tensor<int8, [1, 1, 1, 2, 3]> lut = const()[name = string(\"lut\"), val = tensor<int8, [1, 1, 1, 2, 3]>([1, 2, 3, 4, 5, 6])];\n";
	int8_t out[24];
	compile_run(prog("tensor<int8, [2, 6, 2]>",
		"%s        tensor<int32, []> ax = const()[name = string(\"ax\"), val = int32(1)];\n"
		"        tensor<int8, [2, 6, 2]> w = constexpr_lut_to_dense(indices = ind, lut = lut, vector_axis = ax)[name = string(\"w\")];",
		common), NULL, out);
	cr_assert_arr_eq(out, want1, 24);
	compile_run(prog("tensor<int8, [2, 2, 6]>",
		"%s        tensor<int8, [2, 2, 6]> w = constexpr_lut_to_dense(indices = ind, lut = lut, vector_axis = int32(-1))[name = string(\"w\")];",
		common), NULL, out);
	cr_assert_arr_eq(out, want2, 24);
}

/* Every index width from a blob (dtype codes 9-13 and 3), per-block LUTs
 * over both axes, scalar and vector; reference: for each output element,
 * find its index (output coordinate / vector size along the axis), its LUT
 * (index coordinate / block) and its vector lane. */
Test(weights, lut_ios18_every_width_blob_against_reference)
{
	static const struct { const char *name; unsigned bits; uint32_t code; } w[] = {
		{"uint1", 1, 9}, {"uint2", 2, 10}, {"uint3", 3, 12}, {"uint4", 4, 11}, {"uint6", 6, 13}, {"uint8", 8, 3}};
	for (size_t k = 0; k < sizeof w / sizeof w[0]; k++) {
		for (int vs = 1; vs <= 2; vs++) {
			const int D0 = 6, D1 = 10, L0 = 3, L1 = 2, NP = 1 << w[k].bits; /* blocks 2 x 5 */
			int n = D0 * D1;
			int *ind = malloc(sizeof(int) * (size_t)n);
			for (int i = 0; i < n; i++)
				ind[i] = (int)(rnd() % (uint64_t)NP);
			size_t plen;
			uint8_t *packed = pack_bits(ind, (size_t)n, w[k].bits, &plen);
			size_t nl = (size_t)L0 * L1 * NP * vs;
			uint16_t *lut = malloc(nl * 2);
			for (size_t i = 0; i < nl; i++)
				lut[i] = anes_f32_to_f16_soft((float)((double)(int)(rnd() % 2001) / 16.0 - 60.0));
			blob b;
			blob_init(&b);
			uint64_t oi = blob_add(&b, w[k].code, packed, plen, plen * 8 - (size_t)n * w[k].bits);
			uint64_t ol = blob_add(&b, 1, lut, nl * 2, 0);
			int O0 = D0, O1 = D1 * vs; /* vector_axis 1 */
			char od[64];
			snprintf(od, sizeof od, "tensor<fp16, [%d, %d]>", O0, O1);
			const char *t = prog(od,
				"        tensor<%s, [%d, %d]> ind = const()[name = string(\"ind\"), val = tensor<%s, [%d, %d]>(" BLOB ")];\n"
				"        tensor<fp16, [%d, %d, %d, %d]> lut = const()[name = string(\"lut\"), val = tensor<fp16, [%d, %d, %d, %d]>(" BLOB ")];\n"
				"        %s w = constexpr_lut_to_dense(indices = ind, lut = lut%s)[name = string(\"w\")];",
				w[k].name, D0, D1, w[k].name, D0, D1, (unsigned long long)oi, L0, L1, NP, vs, L0, L1, NP, vs,
				(unsigned long long)ol, od, vs > 1 ? ", vector_axis = int32(1)" : "");
			uint16_t *out = malloc((size_t)O0 * O1 * 2);
			compile_run(t, &b, out);
			for (int i0 = 0; i0 < O0; i0++)
				for (int i1 = 0; i1 < O1; i1++) {
					int j1 = i1 / vs, lane = i1 % vs;             /* index coordinate, vector lane */
					int id = ind[i0 * D1 + j1];
					int t0 = i0 / (D0 / L0), t1 = j1 / (D1 / L1);   /* which LUT */
					uint16_t ref = lut[(((size_t)t0 * L1 + t1) * NP + id) * vs + lane];
					cr_assert_eq(out[i0 * O1 + i1], ref, "%s vs %d: [%d, %d] = %g, want %g", w[k].name, vs, i0,
					             i1, h2d(out[i0 * O1 + i1]), h2d(ref));
				}
			free(out);
			free(b.b);
			free(lut);
			free(packed);
			free(ind);
		}
	}
}

/* iOS 16: indices packed in a uint8 vector, lut a vector of 2^n, shape uint32;
 * coremltools' documented bit order: n = 2, 5 elements, byte 0 = i3 i2 i1 i0 */
Test(weights, lut_ios16_packed_form)
{
	/* i0 = 0, i1 = 3, i2 = 2, i3 = 1 -> 0b01101100; i4 = 3 in the low bits of byte 1 */
	const char *t = prog("tensor<fp32, [5]>",
		"        tensor<uint8, [2]> ind = const()[name = string(\"ind\"), val = tensor<uint8, [2]>([108, 3])];\n"
		"        tensor<fp32, [4]> lut = const()[name = string(\"lut\"), val = tensor<fp32, [4]>([0.5, 1.5, 2.5, 3.5])];\n"
		"        tensor<uint32, [1]> sh = const()[name = string(\"sh\"), val = tensor<uint32, [1]>([5])];\n"
		"        tensor<fp32, [5]> w = constexpr_lut_to_dense(indices = ind, lut = lut, shape = sh)[name = string(\"w\")];");
	float out[5];
	const float want[5] = {0.5f, 3.5f, 2.5f, 1.5f, 3.5f};
	compile_run(t, NULL, out);
	cr_assert_arr_eq(out, want, sizeof want);

	/* 4-bit, [3, 5] from a blob, against unpacking by the test's reference */
	int ind[15];
	for (int i = 0; i < 15; i++)
		ind[i] = (int)(rnd() % 16);
	size_t plen;
	uint8_t *packed = pack_bits(ind, 15, 4, &plen);
	uint16_t lut[16];
	for (int i = 0; i < 16; i++)
		lut[i] = anes_f32_to_f16_soft((float)(i * 3 - 20) / 4.0f);
	blob b;
	blob_init(&b);
	uint64_t oi = blob_add(&b, 3, packed, plen, 0), ol = blob_add(&b, 1, lut, sizeof lut, 0);
	t = prog("tensor<fp16, [3, 5]>",
		"        tensor<uint8, [8]> ind = const()[name = string(\"ind\"), val = tensor<uint8, [8]>(" BLOB ")];\n"
		"        tensor<fp16, [16]> lut = const()[name = string(\"lut\"), val = tensor<fp16, [16]>(" BLOB ")];\n"
		"        tensor<fp16, [3, 5]> w = constexpr_lut_to_dense(indices = ind, lut = lut, shape = tensor<uint32, [2]>([3, 5]))[name = string(\"w\")];",
		(unsigned long long)oi, (unsigned long long)ol);
	uint16_t o16[15];
	compile_run(t, &b, o16);
	for (int i = 0; i < 15; i++)
		cr_assert_eq(o16[i], lut[ind[i]], "element %d", i);
	free(packed);
	free(b.b);
}

/* ---- constexpr_sparse_to_dense ---- */

Test(weights, sparse_ios16_and_ios18)
{
	/* iOS 16, the documented example: shape (5,), mask bits i2 i3 set */
	float out[5];
	const float want[5] = {0, 0, 7.5f, -2, 0};
	compile_run(prog("tensor<fp32, [5]>",
		"        tensor<fp32, [2]> nz = const()[name = string(\"nz\"), val = tensor<fp32, [2]>([7.5, -2.0])];\n"
		"        tensor<uint8, [1]> m = const()[name = string(\"m\"), val = tensor<uint8, [1]>([12])];\n"
		"        tensor<fp32, [5]> w = constexpr_sparse_to_dense(nonzero_data = nz, mask = m, shape = tensor<uint32, [1]>([5]))[name = string(\"w\")];"),
		NULL, out);
	cr_assert_arr_eq(out, want, sizeof want);

	/* iOS 18: a uint1 mask [7, 9] from a blob (code 9), fp16 data; reference:
	 * element i is the k-th nonzero where k counts the set bits before it */
	int mask[63], nset = 0;
	for (int i = 0; i < 63; i++)
		nset += mask[i] = (rnd() % 3) == 0;
	size_t mlen;
	uint8_t *pm = pack_bits(mask, 63, 1, &mlen);
	uint16_t *nz = malloc((size_t)nset * 2 + 2);
	for (int i = 0; i < nset; i++)
		nz[i] = anes_f32_to_f16_soft((float)(i + 1) * 0.25f);
	blob b;
	blob_init(&b);
	uint64_t om = blob_add(&b, 9, pm, mlen, 1), on = blob_add(&b, 1, nz, (size_t)nset * 2, 0);
	const char *t = prog("tensor<fp16, [7, 9]>",
		"        tensor<uint1, [7, 9]> m = const()[name = string(\"m\"), val = tensor<uint1, [7, 9]>(" BLOB ")];\n"
		"        tensor<fp16, [%d]> nz = const()[name = string(\"nz\"), val = tensor<fp16, [%d]>(" BLOB ")];\n"
		"        tensor<fp16, [7, 9]> w = constexpr_sparse_to_dense(nonzero_data = nz, mask = m)[name = string(\"w\")];",
		(unsigned long long)om, nset, nset, (unsigned long long)on);
	uint16_t o16[63];
	compile_run(t, &b, o16);
	for (int i = 0; i < 63; i++) {
		int k = 0;
		for (int j = 0; j < i; j++)
			k += mask[j];
		uint16_t ref = mask[i] ? nz[k] : 0;
		cr_assert_eq(o16[i], ref, "element %d: %g, want %g", i, h2d(o16[i]), h2d(ref));
	}
	free(pm);
	free(nz);
	free(b.b);
}

/* ---- constexpr_blockwise_shift_scale ---- */

/* int4/uint4/int8/uint8 data (codes 8, 11, 4, 3), blocks of 2 x 4 along both
 * axes, with and without an offset of data's dtype, fp16 and fp32 scales */
Test(weights, blockwise_every_dtype_against_reference)
{
	static const struct { const char *name; unsigned bits; uint32_t code; int lo, hi; } d[] = {
		{"int4", 4, 8, -8, 7}, {"uint4", 4, 11, 0, 15}, {"int8", 8, 4, -128, 127}, {"uint8", 8, 3, 0, 255}};
	const int D0 = 4, D1 = 12, S0 = 2, S1 = 3;
	for (size_t k = 0; k < sizeof d / sizeof d[0]; k++)
		for (int with_off = 0; with_off < 2; with_off++)
			for (int f32 = 0; f32 < 2; f32++) {
				int q[48], o[6];
				for (int i = 0; i < 48; i++)
					q[i] = d[k].lo + (int)(rnd() % (uint64_t)(d[k].hi - d[k].lo + 1));
				for (int i = 0; i < 6; i++)
					o[i] = d[k].lo + (int)(rnd() % (uint64_t)(d[k].hi - d[k].lo + 1));
				size_t ql, ol;
				uint8_t *pq = pack_bits(q, 48, d[k].bits, &ql), *po = pack_bits(o, 6, d[k].bits, &ol);
				double sc[6];
				uint16_t s16[6];
				float s32[6];
				for (int i = 0; i < 6; i++) {
					s16[i] = anes_f32_to_f16_soft((float)(0.001 + (double)(rnd() % 1000) / 997.0));
					s32[i] = (float)(0.001 + (double)(rnd() % 100000) / 99991.0);
					sc[i] = f32 ? s32[i] : h2d(s16[i]);
				}
				blob b;
				blob_init(&b);
				uint64_t oq = blob_add(&b, d[k].code, pq, ql, 0);
				uint64_t oo = blob_add(&b, d[k].code, po, ol, 0);
				uint64_t os = f32 ? blob_add(&b, 2, s32, sizeof s32, 0) : blob_add(&b, 1, s16, sizeof s16, 0);
				const char *ft = f32 ? "fp32" : "fp16";
				char od[48], off[160];
				snprintf(od, sizeof od, "tensor<%s, [%d, %d]>", ft, D0, D1);
				snprintf(off, sizeof off, ", offset = o");
				const char *t = prog(od,
					"        tensor<%s, [%d, %d]> q = const()[name = string(\"q\"), val = tensor<%s, [%d, %d]>(" BLOB ")];\n"
					"        tensor<%s, [%d, %d]> o = const()[name = string(\"o\"), val = tensor<%s, [%d, %d]>(" BLOB ")];\n"
					"        tensor<%s, [%d, %d]> s = const()[name = string(\"s\"), val = tensor<%s, [%d, %d]>(" BLOB ")];\n"
					"        %s w = constexpr_blockwise_shift_scale(data = q, scale = s%s)[name = string(\"w\")];",
					d[k].name, D0, D1, d[k].name, D0, D1, (unsigned long long)oq,
					d[k].name, S0, S1, d[k].name, S0, S1, (unsigned long long)oo,
					ft, S0, S1, ft, S0, S1, (unsigned long long)os, od, with_off ? off : "");
				uint8_t out[48 * 4];
				compile_run(t, &b, out);
				for (int i0 = 0; i0 < D0; i0++)
					for (int i1 = 0; i1 < D1; i1++) {
						int si = (i0 / (D0 / S0)) * S1 + i1 / (D1 / S1);
						double ref = ((double)q[i0 * D1 + i1] - (with_off ? o[si] : 0)) * sc[si];
						double got;
						if (f32) {
							float g;
							memcpy(&g, out + 4 * (i0 * D1 + i1), 4);
							got = g;
							ref = (float)ref; /* the exact product, rounded once */
						} else {
							uint16_t h;
							memcpy(&h, out + 2 * (i0 * D1 + i1), 2);
							got = h2d(h);
							ref = h2d(anes_f32_to_f16_soft((float)ref)); /* exact in fp32, rounded once */
						}
						cr_assert_eq(got, ref, "%s off %d %s [%d, %d]: %.9g, want %.9g", d[k].name, with_off, ft,
						             i0, i1, got, ref);
					}
				free(pq);
				free(po);
				free(b.b);
			}
}

/* iOS 18 joint compression as coremltools writes it: an int8 palette feeding
 * a per-channel shift-scale, and a sparse int4 tensor feeding one */
Test(weights, chained_constexpr_ops)
{
	float out[8];
	compile_run(prog("tensor<fp32, [2, 4]>",
		"        tensor<uint1, [2, 4]> ind = const()[name = string(\"ind\"), val = tensor<uint1, [2, 4]>([0, 1, 1, 0, 1, 1, 0, 0])];\n"
		"        tensor<int8, [1, 1, 2, 1]> lut = const()[name = string(\"lut\"), val = tensor<int8, [1, 1, 2, 1]>([-3, 5])];\n"
		"        tensor<int8, [2, 4]> q = constexpr_lut_to_dense(indices = ind, lut = lut)[name = string(\"q\")];\n"
		"        tensor<fp32, [2, 1]> s = const()[name = string(\"s\"), val = tensor<fp32, [2, 1]>([0.5, 2.0])];\n"
		"        tensor<int8, [2, 1]> o = const()[name = string(\"o\"), val = tensor<int8, [2, 1]>([1, -1])];\n"
		"        tensor<fp32, [2, 4]> w = constexpr_blockwise_shift_scale(data = q, scale = s, offset = o)[name = string(\"w\")];"),
		NULL, out);
	const float want[8] = {-2, 2, 2, -2, 12, 12, -4, -4};
	cr_assert_arr_eq(out, want, sizeof want);

	compile_run(prog("tensor<fp32, [2, 4]>",
		"        tensor<uint1, [2, 4]> m = const()[name = string(\"m\"), val = tensor<uint1, [2, 4]>([1, 0, 0, 1, 0, 1, 1, 0])];\n"
		"        tensor<int4, [4]> nz = const()[name = string(\"nz\"), val = tensor<int4, [4]>([-8, 7, -1, 3])];\n"
		"        tensor<int4, [2, 4]> q = constexpr_sparse_to_dense(nonzero_data = nz, mask = m)[name = string(\"q\")];\n"
		"        tensor<fp32, [1, 1]> s = const()[name = string(\"s\"), val = tensor<fp32, [1, 1]>([0.25])];\n"
		"        tensor<fp32, [2, 4]> w = constexpr_blockwise_shift_scale(data = q, scale = s)[name = string(\"w\")];"),
		NULL, out);
	const float want2[8] = {-2, 0, 0, 1.75f, 0, -0.25f, 0.75f, 0};
	cr_assert_arr_eq(out, want2, sizeof want2);
}

Test(weights, constexpr_cast_fp16_to_fp32)
{
	float out[3];
	compile_run(prog("tensor<fp32, [3]>",
		"        tensor<fp16, [3]> h = const()[name = string(\"h\"), val = tensor<fp16, [3]>([0.1, -65504.0, 0.000000059604645])];\n"
		"        tensor<fp32, [3]> w = constexpr_cast(source_val = h, output_dtype = string(\"fp32\"))[name = string(\"w\")];"),
		NULL, out);
	cr_assert_eq(out[0], (float)h2d(anes_f32_to_f16_soft(0.1f)));
	cr_assert_eq(out[1], -65504.0f);
	cr_assert_eq(out[2], 0x1p-24f);
}

/* a folded weight used by a real op: the weights a quantized linear layer reads */
Test(weights, palettized_weight_feeds_linear)
{
	const char *t =
		"program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, 4]> x) {\n"
		"        tensor<uint2, [3, 4]> ind = const()[name = string(\"ind\"), val = tensor<uint2, [3, 4]>([0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 1, 1])];\n"
		"        tensor<fp16, [3, 1, 4, 1]> lut = const()[name = string(\"lut\"), val = tensor<fp16, [3, 1, 4, 1]>([0, 1, 2, 3, 0, -1, -2, -3, 5, 6, 7, 8])];\n"
		"        tensor<fp16, [3, 4]> wt = constexpr_lut_to_dense(indices = ind, lut = lut)[name = string(\"wt\")];\n"
		"        tensor<fp16, [1, 3]> y = linear(x = x, weight = wt)[name = string(\"y\")];\n"
		"    } -> (y);\n}\n";
	anes_bprogram *p = NULL;
	cr_assert_eq(B->ops->compile(B, t, strlen(t), NULL, 0, &p, errbuf, sizeof errbuf), 0, "%s", errbuf);
	uint16_t x[4], y[3];
	for (int i = 0; i < 4; i++)
		x[i] = anes_f32_to_f16_soft((float)(i + 1));
	const void *in[1] = {x};
	void *out[1] = {y};
	cr_assert_eq(B->ops->run(B, p, 0, in, out, errbuf, sizeof errbuf), 0, "%s", errbuf);
	/* rows: [0 1 2 3], [-3 -2 -1 0], [6 6 6 6] . [1 2 3 4] */
	cr_assert_eq(h2d(y[0]), 20.0);
	cr_assert_eq(h2d(y[1]), -10.0);
	cr_assert_eq(h2d(y[2]), 60.0);
	B->ops->program_free(B, p);
}

/* ---- errors ---- */

Test(weights, errors_name_the_problem)
{
	const char *lut4 = "        tensor<fp16, [1, 1, 4, 1]> lut = const()[name = string(\"lut\"), val = tensor<fp16, [1, 1, 4, 1]>([0, 1, 2, 3])];\n";
	/* palette size against the index width */
	compile_fail(prog("tensor<fp16, [2, 2]>",
		"        tensor<uint1, [2, 2]> ind = const()[name = string(\"ind\"), val = tensor<uint1, [2, 2]>([0, 1, 1, 0])];\n%s"
		"        tensor<fp16, [2, 2]> w = constexpr_lut_to_dense(indices = ind, lut = lut)[name = string(\"w\")];", lut4),
		NULL, "palette entries");
	/* an index out of its width's range in a literal */
	compile_fail(prog("tensor<fp16, [2, 2]>",
		"        tensor<uint2, [2, 2]> ind = const()[name = string(\"ind\"), val = tensor<uint2, [2, 2]>([0, 1, 4, 0])];\n%s"
		"        tensor<fp16, [2, 2]> w = constexpr_lut_to_dense(indices = ind, lut = lut)[name = string(\"w\")];", lut4),
		NULL, "out of range for uint2");
	/* a run-time tensor where a constant is needed */
	text[0] = 0;
	const char *rt =
		"program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, 1, 4, 1]> x) {\n"
		"        tensor<uint2, [2, 2]> ind = const()[name = string(\"ind\"), val = tensor<uint2, [2, 2]>([0, 1, 3, 0])];\n"
		"        tensor<fp16, [2, 2]> w = constexpr_lut_to_dense(indices = ind, lut = x)[name = string(\"w\")];\n"
		"    } -> (w);\n}\n";
	cr_assert_eq(compile_fail(rt, NULL, "must be a constant or the output of a constexpr_* op"), -ENOTSUP);
	/* sub-byte data only for constexpr ops */
	const char *sb =
		"program(1.3)\n{\n    func main<ios18>(tensor<fp16, [4]> x) {\n"
		"        tensor<uint4, [4]> i = const()[name = string(\"i\"), val = tensor<uint4, [4]>([0, 1, 3, 0])];\n"
		"        tensor<uint4, [4]> w = identity(x = i)[name = string(\"w\")];\n"
		"    } -> (x);\n}\n";
	cr_assert_eq(compile_fail(sb, NULL, "only constexpr_* ops take"), -ENOTSUP);
	/* mask bits against nonzero_data */
	compile_fail(prog("tensor<fp32, [5]>",
		"        tensor<fp32, [2]> nz = const()[name = string(\"nz\"), val = tensor<fp32, [2]>([7.5, -2.0])];\n"
		"        tensor<uint8, [1]> m = const()[name = string(\"m\"), val = tensor<uint8, [1]>([13])];\n"
		"        tensor<fp32, [5]> w = constexpr_sparse_to_dense(nonzero_data = nz, mask = m, shape = tensor<uint32, [1]>([5]))[name = string(\"w\")];"),
		NULL, "3 set bits");
	compile_fail(prog("tensor<fp32, [5]>",
		"        tensor<fp32, [2]> nz = const()[name = string(\"nz\"), val = tensor<fp32, [2]>([7.5, -2.0])];\n"
		"        tensor<uint8, [1]> m = const()[name = string(\"m\"), val = tensor<uint8, [1]>([76])];\n"
		"        tensor<fp32, [5]> w = constexpr_sparse_to_dense(nonzero_data = nz, mask = m, shape = tensor<uint32, [1]>([5]))[name = string(\"w\")];"),
		NULL, "bits set past");
	/* scale blocks that do not divide data */
	compile_fail(prog("tensor<fp16, [4, 6]>",
		"        tensor<int8, [4, 6]> q = const()[name = string(\"q\"), val = tensor<int8, [4, 6]>(" "[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])];\n"
		"        tensor<fp16, [1, 4]> s = const()[name = string(\"s\"), val = tensor<fp16, [1, 4]>([1, 1, 1, 1])];\n"
		"        tensor<fp16, [4, 6]> w = constexpr_blockwise_shift_scale(data = q, scale = s)[name = string(\"w\")];"),
		NULL, "not a multiple of scale dim 1");
	/* a blob whose dtype code does not match the declared sub-byte type */
	uint8_t four[2] = {0x21, 0x43};
	blob b;
	blob_init(&b);
	uint64_t o = blob_add(&b, 10 /* uint2 */, four, 2, 0);
	compile_fail(prog("tensor<fp16, [2, 2]>",
		"        tensor<uint4, [2, 2]> ind = const()[name = string(\"ind\"), val = tensor<uint4, [2, 2]>(" BLOB ")];\n"
		"        tensor<fp16, [1, 1, 16, 1]> lut = const()[name = string(\"lut\"), val = tensor<fp16, [1, 1, 16, 1]>([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])];\n"
		"        tensor<fp16, [2, 2]> w = constexpr_lut_to_dense(indices = ind, lut = lut)[name = string(\"w\")];",
		(unsigned long long)o), &b, "expected 11 for uint4");
	free(b.b);
}

/* ---- fp16 constant weights used in place by matmul, linear and conv ---- */

static double rnd_unit(void)
{
	return (double)(rnd() % 2001) / 1000.0 - 1.0;
}

/* blob of one fp16 tensor of n random values; vals gets their exact values */
static uint64_t blob_f16(blob *b, size_t n, double *vals)
{
	uint16_t *h = malloc(n * 2);
	for (size_t i = 0; i < n; i++) {
		h[i] = anes_f32_to_f16_soft((float)rnd_unit());
		vals[i] = h2d(h[i]);
	}
	uint64_t o = blob_add(b, 1, h, n * 2, 0);
	free(h);
	return o;
}

static void check_close(const uint16_t *got, const double *ref, size_t n, double tol, const char *what)
{
	for (size_t i = 0; i < n; i++) {
		double e = fabs(h2d(got[i]) - ref[i]);
		cr_assert(e <= tol * fmax(1.0, fabs(ref[i])), "%s: [%zu] = %g, want %g", what, i, h2d(got[i]), ref[i]);
	}
}

/* weights larger than one conversion tile (64 Ki floats), every layout the
 * tiling handles (B as [n, k] and as [k, n], A for conv), with the built-in
 * GEMM and the BLAS, plain and strict */
static void big_fp16_weights(void)
{
	enum { M = 3, K = 320, N = 300 };     /* 96,000-element weights */
	blob b;
	blob_init(&b);
	double *w = malloc(sizeof(double) * K * N), *cw = malloc(sizeof(double) * 256 * 64 * 9);
	uint64_t ow = blob_f16(&b, (size_t)K * N, w);
	uint64_t oc = blob_f16(&b, (size_t)256 * 64 * 9, cw);
	uint16_t x[M * K], xc[64 * 5 * 5];
	double xv[M * K], xcv[64 * 5 * 5];
	for (int i = 0; i < M * K; i++) {
		x[i] = anes_f32_to_f16_soft((float)rnd_unit());
		xv[i] = h2d(x[i]);
	}
	for (int i = 0; i < 64 * 25; i++) {
		xc[i] = anes_f32_to_f16_soft((float)rnd_unit());
		xcv[i] = h2d(xc[i]);
	}
	snprintf(text, sizeof text,
		"program(1.3)\n{\n    func main<ios18>(tensor<fp16, [%d, %d]> x, tensor<fp16, [1, 64, 5, 5]> xc) {\n"
		"        tensor<fp16, [%d, %d]> w = const()[name = string(\"w\"), val = tensor<fp16, [%d, %d]>(" BLOB ")];\n"
		"        tensor<fp16, [%d, %d]> wt = const()[name = string(\"wt\"), val = tensor<fp16, [%d, %d]>(" BLOB ")];\n"
		"        tensor<fp16, [256, 64, 3, 3]> cw = const()[name = string(\"cw\"), val = tensor<fp16, [256, 64, 3, 3]>(" BLOB ")];\n"
		"        tensor<fp16, [%d, %d]> a = matmul(x = x, y = w)[name = string(\"a\")];\n"
		"        tensor<fp16, [%d, %d]> c = matmul(x = x, y = wt, transpose_y = true)[name = string(\"c\")];\n"
		"        tensor<fp16, [%d, %d]> l = linear(x = x, weight = wt)[name = string(\"l\")];\n"
		"        tensor<fp16, [1, 256, 3, 3]> v = conv(x = xc, weight = cw)[name = string(\"v\")];\n"
		"    } -> (a, c, l, v);\n}\n",
		M, K, K, N, K, N, (unsigned long long)ow, N, K, N, K, (unsigned long long)ow, (unsigned long long)oc,
		M, N, M, N, M, N);
	anes_weight wt = {"@model_path/weights/weight.bin", b.b, b.len, false, false, -1};
	anes_bprogram *p = NULL;
	cr_assert_eq(B->ops->compile(B, text, strlen(text), &wt, 1, &p, errbuf, sizeof errbuf), 0, "%s", errbuf);
	uint16_t a[M * N], c[M * N], l[M * N], v[256 * 9];
	const void *in[2] = {x, xc};
	void *out[4] = {a, c, l, v};
	cr_assert_eq(B->ops->run(B, p, 0, in, out, errbuf, sizeof errbuf), 0, "%s", errbuf);
	double *ra = malloc(sizeof(double) * M * N), *rc = malloc(sizeof(double) * M * N), rv[256 * 9];
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++) {
			double sa = 0, sc = 0;
			for (int k = 0; k < K; k++) {
				sa += xv[i * K + k] * w[k * N + j];     /* w as [K, N] */
				sc += xv[i * K + k] * w[j * K + k];     /* the same bytes as [N, K] */
			}
			ra[i * N + j] = sa;
			rc[i * N + j] = sc;
		}
	for (int co = 0; co < 256; co++)
		for (int oy = 0; oy < 3; oy++)
			for (int ox = 0; ox < 3; ox++) {
				double s = 0;
				for (int ci = 0; ci < 64; ci++)
					for (int ky = 0; ky < 3; ky++)
						for (int kx = 0; kx < 3; kx++)
							s += xcv[(ci * 5 + oy + ky) * 5 + ox + kx] * cw[((co * 64 + ci) * 3 + ky) * 3 + kx];
				rv[(co * 3 + oy) * 3 + ox] = s;
			}
	/* plain: one fp16 rounding of an fp32 sum; strict (chunks of 32) loses more */
	double tol = getenv("ANESHARE_CPU_STRICT") ? 2e-2 : 2e-3;
	check_close(a, ra, (size_t)M * N, tol, "matmul y [k, n]");
	check_close(c, rc, (size_t)M * N, tol, "matmul y [n, k]");
	check_close(l, rc, (size_t)M * N, tol, "linear");
	check_close(v, rv, 256 * 9, tol, "conv 3x3");
	B->ops->program_free(B, p);
	free(ra);
	free(rc);
	free(w);
	free(cw);
	free(b.b);
}

Test(weights, fp16_weights_in_place_blas_or_builtin_plain_or_strict)
{
	static const char *const gemm[] = {NULL, "builtin"};
	static const char *const strict[] = {NULL, "32"};
	for (int g = 0; g < 2; g++)
		for (int s = 0; s < 2; s++) {
			if (gemm[g])
				setenv("ANESHARE_CPU_GEMM", gemm[g], 1);
			else
				unsetenv("ANESHARE_CPU_GEMM");
			if (strict[s])
				setenv("ANESHARE_CPU_STRICT", strict[s], 1);
			else
				unsetenv("ANESHARE_CPU_STRICT");
			B->ops->destroy(B);
			cr_assert_eq(anes_cpu_backend_new(2, &B), 0);
			big_fp16_weights();
		}
	unsetenv("ANESHARE_CPU_GEMM");
	unsetenv("ANESHARE_CPU_STRICT");
}
