/* SPDX-License-Identifier: MIT */
/*
 * fp32 GEMM for matmul, linear, conv and attention: the BLAS (OpenBLAS,
 * cblas, Accelerate) when the build has one, else a built-in packed, cache
 * blocked kernel (6x16 register tile; AVX2+FMA chosen at run time on x86_64,
 * portable C otherwise) that runs on the backend's thread pool.
 *
 * Strict mode (cfg->strict_chunk > 0) models an fp16 accumulator: the k
 * products of each output are summed in fp32 in chunks of strict_chunk, and
 * the running sum is rounded to fp16 after every chunk.  See docs/mil.md.
 */
#include <math.h>
#include <string.h>

#include "anes_config.h"
#include "anes_fp16.h"
#include "cpu_internal.h"

#if ANES_HAVE_ACCELERATE
#include <Accelerate/Accelerate.h>
#elif ANES_HAVE_BLAS
#include <cblas.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_X86_DISPATCH 1
#endif

enum { MR = 6, NR = 16, KC = 256, MC = 72, NC = 2048, JG = 4 /* panels per task */ };

/* ---- built-in kernel ---- */

typedef void (*ukr_fn)(uint64_t kc, const float *ap, const float *bp, float *c, uint64_t ldc, uint32_t mr,
                       uint32_t nr, bool acc);

/* c[mr, nr] (+)= ap[kc][MR] x bp[kc][NR] */
static void ukr_c(uint64_t kc, const float *ap, const float *bp, float *c, uint64_t ldc, uint32_t mr, uint32_t nr,
                  bool acc)
{
	float t[MR][NR];

	memset(t, 0, sizeof t);
	for (uint64_t p = 0; p < kc; p++) {
		const float *a = ap + p * MR, *b = bp + p * NR;
		for (int i = 0; i < MR; i++) {
			float ai = a[i];
			for (int j = 0; j < NR; j++)
				t[i][j] += ai * b[j];
		}
	}
	for (uint32_t i = 0; i < mr; i++)
		for (uint32_t j = 0; j < nr; j++)
			c[i * ldc + j] = acc ? c[i * ldc + j] + t[i][j] : t[i][j];
}

#ifdef HAVE_X86_DISPATCH
__attribute__((target("avx2,fma")))
static void ukr_avx2(uint64_t kc, const float *ap, const float *bp, float *c, uint64_t ldc, uint32_t mr,
                     uint32_t nr, bool acc)
{
	__m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
	__m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
	__m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
	__m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
	__m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
	__m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();

	for (uint64_t p = 0; p < kc; p++) {
		__m256 b0 = _mm256_loadu_ps(bp + p * NR), b1 = _mm256_loadu_ps(bp + p * NR + 8);
		const float *a = ap + p * MR;
		__m256 a0 = _mm256_broadcast_ss(a + 0), a1 = _mm256_broadcast_ss(a + 1);
		c00 = _mm256_fmadd_ps(a0, b0, c00);
		c01 = _mm256_fmadd_ps(a0, b1, c01);
		c10 = _mm256_fmadd_ps(a1, b0, c10);
		c11 = _mm256_fmadd_ps(a1, b1, c11);
		a0 = _mm256_broadcast_ss(a + 2);
		a1 = _mm256_broadcast_ss(a + 3);
		c20 = _mm256_fmadd_ps(a0, b0, c20);
		c21 = _mm256_fmadd_ps(a0, b1, c21);
		c30 = _mm256_fmadd_ps(a1, b0, c30);
		c31 = _mm256_fmadd_ps(a1, b1, c31);
		a0 = _mm256_broadcast_ss(a + 4);
		a1 = _mm256_broadcast_ss(a + 5);
		c40 = _mm256_fmadd_ps(a0, b0, c40);
		c41 = _mm256_fmadd_ps(a0, b1, c41);
		c50 = _mm256_fmadd_ps(a1, b0, c50);
		c51 = _mm256_fmadd_ps(a1, b1, c51);
	}
	float t[MR][NR];
	_mm256_storeu_ps(t[0], c00);
	_mm256_storeu_ps(t[0] + 8, c01);
	_mm256_storeu_ps(t[1], c10);
	_mm256_storeu_ps(t[1] + 8, c11);
	_mm256_storeu_ps(t[2], c20);
	_mm256_storeu_ps(t[2] + 8, c21);
	_mm256_storeu_ps(t[3], c30);
	_mm256_storeu_ps(t[3] + 8, c31);
	_mm256_storeu_ps(t[4], c40);
	_mm256_storeu_ps(t[4] + 8, c41);
	_mm256_storeu_ps(t[5], c50);
	_mm256_storeu_ps(t[5] + 8, c51);
	if (mr == MR && nr == NR) {
		for (int i = 0; i < MR; i++) {
			float *ci = c + i * ldc;
			__m256 lo = _mm256_loadu_ps(t[i]), hi = _mm256_loadu_ps(t[i] + 8);
			if (acc) {
				lo = _mm256_add_ps(lo, _mm256_loadu_ps(ci));
				hi = _mm256_add_ps(hi, _mm256_loadu_ps(ci + 8));
			}
			_mm256_storeu_ps(ci, lo);
			_mm256_storeu_ps(ci + 8, hi);
		}
		return;
	}
	for (uint32_t i = 0; i < mr; i++)
		for (uint32_t j = 0; j < nr; j++)
			c[i * ldc + j] = acc ? c[i * ldc + j] + t[i][j] : t[i][j];
}

static bool have_avx2_fma(void)
{
	static int cached = -1;   /* benign race: computed twice at worst */
	if (cached < 0) {
		__builtin_cpu_init();
		cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
	}
	return cached;
}
#endif

static ukr_fn pick_ukr(void)
{
#ifdef HAVE_X86_DISPATCH
	if (have_avx2_fma())
		return ukr_avx2;
#endif
	return ukr_c;
}

typedef struct gemm_job {
	ukr_fn ukr;
	bool ta, acc;
	uint64_t m, nc, kc;         /* this (jc, pc) block */
	const float *A;             /* at column pc (or row pc when ta) */
	uint64_t lda;
	const float *bp;            /* packed B block: panels of [kc][NR] */
	float *C;                   /* at column jc */
	uint64_t ldc;
	uint64_t n_mblocks, n_jgroups;
} gemm_job;

static void gemm_task(void *ctx, uint64_t begin, uint64_t end)
{
	const gemm_job *g = ctx;
	float ap[MC * KC];
	uint64_t npanels = (g->nc + NR - 1) / NR;

	for (uint64_t t = begin; t < end; t++) {
		uint64_t mb = t / g->n_jgroups, jg = t % g->n_jgroups;
		uint64_t i0 = mb * MC, mc = g->m - i0 < MC ? g->m - i0 : MC;
		/* pack A[i0 .. i0+mc, 0 .. kc) into row panels of MR */
		for (uint64_t ip = 0; ip < mc; ip += MR) {
			float *dst = ap + ip * g->kc;
			for (uint64_t p = 0; p < g->kc; p++)
				for (uint64_t ii = 0; ii < MR; ii++) {
					uint64_t i = i0 + ip + ii;
					dst[p * MR + ii] = i >= g->m ? 0.0f
					                 : g->ta ? g->A[p * g->lda + i] : g->A[i * g->lda + p];
				}
		}
		uint64_t j1 = (jg + 1) * JG < npanels ? (jg + 1) * JG : npanels;
		for (uint64_t jp = jg * JG; jp < j1; jp++) {
			uint64_t j = jp * NR;
			uint32_t nr = (uint32_t)(g->nc - j < NR ? g->nc - j : NR);
			for (uint64_t ip = 0; ip < mc; ip += MR) {
				uint32_t mr = (uint32_t)(mc - ip < MR ? mc - ip : MR);
				g->ukr(g->kc, ap + ip * g->kc, g->bp + jp * g->kc * NR, g->C + (i0 + ip) * g->ldc + j, g->ldc, mr,
				       nr, g->acc);
			}
		}
	}
}

static uint64_t builtin_tmp_floats(uint64_t n, uint64_t k)
{
	uint64_t kc = k < KC ? k : KC, nc = n < NC ? n : NC;
	return kc * ((nc + NR - 1) / NR * NR);
}

static void gemm_builtin(cpu_pool *pool, bool ta, bool tb, uint64_t m, uint64_t n, uint64_t k, const float *A,
                         uint64_t lda, const float *B, uint64_t ldb, float *C, uint64_t ldc, bool accumulate,
                         float *bp)
{
	ukr_fn ukr = pick_ukr();

	if (k == 0) {
		if (!accumulate)
			for (uint64_t i = 0; i < m; i++)
				memset(C + i * ldc, 0, (size_t)n * sizeof(float));
		return;
	}
	for (uint64_t jc = 0; jc < n; jc += NC) {
		uint64_t nc = n - jc < NC ? n - jc : NC;
		for (uint64_t pc = 0; pc < k; pc += KC) {
			uint64_t kc = k - pc < KC ? k - pc : KC;
			uint64_t npanels = (nc + NR - 1) / NR;
			/* pack B[pc .. pc+kc, jc .. jc+nc) into column panels of NR */
			for (uint64_t jp = 0; jp < npanels; jp++) {
				float *dst = bp + jp * kc * NR;
				for (uint64_t p = 0; p < kc; p++) {
					for (uint64_t jj = 0; jj < NR; jj++) {
						uint64_t j = jc + jp * NR + jj, kk = pc + p;
						dst[p * NR + jj] = j >= jc + nc ? 0.0f : tb ? B[j * ldb + kk] : B[kk * ldb + j];
					}
				}
			}
			gemm_job g = {
				.ukr = ukr, .ta = ta, .acc = accumulate || pc > 0, .m = m, .nc = nc, .kc = kc,
				.A = ta ? A + pc * lda : A + pc, .lda = lda, .bp = bp, .C = C + jc, .ldc = ldc,
				.n_mblocks = (m + MC - 1) / MC, .n_jgroups = (npanels + JG - 1) / JG,
			};
			uint64_t tasks = g.n_mblocks * g.n_jgroups;
			/* about 2 MFLOP per piece at least */
			uint64_t per_task = (uint64_t)MC * kc * JG * NR * 2;
			uint64_t grain = per_task >= (2u << 20) ? 1 : (2u << 20) / per_task;
			cpu_parallel(pool, tasks, grain, gemm_task, &g);
		}
	}
}

/* ---- dispatch ---- */

static void gemm_plain(const cpu_cfg *cfg, bool ta, bool tb, uint64_t m, uint64_t n, uint64_t k, const float *A,
                       uint64_t lda, const float *B, uint64_t ldb, float *C, uint64_t ldc, bool accumulate,
                       float *tmp)
{
#if ANES_HAVE_BLAS
	if (!cfg->builtin_gemm && m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX && lda <= INT32_MAX &&
	    ldb <= INT32_MAX && ldc <= INT32_MAX) {
		(void)tmp;
		cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
		            (int)k, 1.0f, A, (int)lda, B, (int)ldb, accumulate ? 1.0f : 0.0f, C, (int)ldc);
		return;
	}
#endif
	gemm_builtin(cfg->pool, ta, tb, m, n, k, A, lda, B, ldb, C, ldc, accumulate, tmp);
}

uint64_t cpu_gemm_tmp_floats(const cpu_cfg *cfg, uint64_t m, uint64_t n, uint64_t k)
{
	uint64_t t = 16;

	if (cfg->strict_chunk && k > cfg->strict_chunk) {
		t += m * n;
		k = cfg->strict_chunk;
	}
#if ANES_HAVE_BLAS
	if (cfg->builtin_gemm)
		t += builtin_tmp_floats(n, k);
#else
	t += builtin_tmp_floats(n, k);
#endif
	return t;
}

static void round_rows(float *C, uint64_t ldc, uint64_t m, uint64_t n)
{
	for (uint64_t i = 0; i < m; i++)
		cpu_round_f16(C + i * ldc, (size_t)n);
}

void cpu_gemm(const cpu_cfg *cfg, bool ta, bool tb, uint64_t m, uint64_t n, uint64_t k, const float *A,
              uint64_t lda, const float *B, uint64_t ldb, float *C, uint64_t ldc, bool accumulate, float *tmp)
{
	uint64_t ch = cfg->strict_chunk;

	if (m == 0 || n == 0)
		return;
	if (!ch) {
		gemm_plain(cfg, ta, tb, m, n, k, A, lda, B, ldb, C, ldc, accumulate, tmp);
		return;
	}
	/* strict: acc = fp16(acc + fp32 sum of the next chunk of products) */
	if (k <= ch) {
		gemm_plain(cfg, ta, tb, m, n, k, A, lda, B, ldb, C, ldc, accumulate, tmp);
		round_rows(C, ldc, m, n);
		return;
	}
	float *part = tmp, *rest = tmp + m * n;
	if (accumulate)
		round_rows(C, ldc, m, n);
	for (uint64_t k0 = 0; k0 < k; k0 += ch) {
		uint64_t kc = k - k0 < ch ? k - k0 : ch;
		const float *a = ta ? A + k0 * lda : A + k0;
		const float *b = tb ? B + k0 : B + k0 * ldb;
		if (k0 == 0 && !accumulate) {
			gemm_plain(cfg, ta, tb, m, n, kc, a, lda, b, ldb, C, ldc, false, rest);
			round_rows(C, ldc, m, n);
			continue;
		}
		gemm_plain(cfg, ta, tb, m, n, kc, a, lda, b, ldb, part, n, false, rest);
		for (uint64_t i = 0; i < m; i++) {
			float *c = C + i * ldc;
			const float *pp = part + i * n;
			for (uint64_t j = 0; j < n; j++)
				c[j] += pp[j];
			cpu_round_f16(c, (size_t)n);
		}
	}
}

/* ---- one operand kept in fp16 (constant weights) ---- */

/* fp32 floats of one converted tile of the fp16 operand (a tile is at least
 * one stored row or column, so it may be longer: see cpu_gemm_w_tmp_floats) */
#define W_TILE_FLOATS ((uint64_t)64 << 10)

uint64_t cpu_gemm_w_tmp_floats(const cpu_cfg *cfg, uint64_t m, uint64_t n, uint64_t k)
{
	return cpu_gemm_tmp_floats(cfg, m, n, k) + W_TILE_FLOATS + k;
}

/* rows [0, nr) x columns [c0, c0 + nc) of a stored fp16 matrix (leading
 * dimension ld) into dst as a dense fp32 [nr, nc] */
static void block_to_f32(float *dst, const uint16_t *src, uint64_t ld, uint64_t nr, uint64_t c0, uint64_t nc)
{
	for (uint64_t r = 0; r < nr; r++)
		anes_f16_to_f32_n(dst + r * nc, src + r * ld + c0, (size_t)nc);
}

/* The fp16 operand is converted one tile at a time into a dense fp32 block
 * (at most W_TILE_FLOATS, or one full row or column of k), so no fp32 copy of
 * the whole weight exists.  Tiles split m or n, never k: each output is
 * computed by one cpu_gemm call over all of k, so strict mode's rounding
 * points are those of an untiled call. */
void cpu_gemm_w(const cpu_cfg *cfg, bool ta, bool tb, uint64_t m, uint64_t n, uint64_t k, const void *A, int adt,
                uint64_t lda, const void *B, int bdt, uint64_t ldb, float *C, uint64_t ldc, bool accumulate,
                float *tmp)
{
	bool a16 = adt == ANES_DT_FP16, b16 = bdt == ANES_DT_FP16;

	if (!a16 && !b16) {
		cpu_gemm(cfg, ta, tb, m, n, k, A, lda, B, ldb, C, ldc, accumulate, tmp);
		return;
	}
	if (m == 0 || n == 0)
		return;
	float *tile = tmp, *rest = tmp + W_TILE_FLOATS + k;
	uint64_t t = W_TILE_FLOATS / (k ? k : 1);
	if (t == 0)
		t = 1;
	if (b16) {
		/* columns [j0, j0 + nn) of op(B) */
		for (uint64_t j0 = 0; j0 < n; j0 += t) {
			uint64_t nn = n - j0 < t ? n - j0 : t;
			if (tb)
				block_to_f32(tile, (const uint16_t *)B + j0 * ldb, ldb, nn, 0, k);   /* [nn, k] */
			else
				block_to_f32(tile, B, ldb, k, j0, nn);                               /* [k, nn] */
			cpu_gemm(cfg, ta, tb, m, nn, k, A, lda, tile, tb ? k : nn, C + j0, ldc, accumulate, rest);
		}
		return;
	}
	/* rows [i0, i0 + mm) of op(A) */
	for (uint64_t i0 = 0; i0 < m; i0 += t) {
		uint64_t mm = m - i0 < t ? m - i0 : t;
		if (ta)
			block_to_f32(tile, A, lda, k, i0, mm);                                   /* [k, mm] */
		else
			block_to_f32(tile, (const uint16_t *)A + i0 * lda, lda, mm, 0, k);       /* [mm, k] */
		cpu_gemm(cfg, ta, tb, mm, n, k, tile, ta ? mm : k, B, ldb, C + i0 * ldc, ldc, accumulate, rest);
	}
}

const char *cpu_gemm_impl(const cpu_cfg *cfg)
{
#if ANES_HAVE_BLAS
	if (!cfg->builtin_gemm)
		return ANES_HAVE_ACCELERATE ? "accelerate" : "blas";
#else
	(void)cfg;
#endif
#ifdef HAVE_X86_DISPATCH
	if (have_avx2_fma())
		return "builtin-avx2";
#endif
	return "builtin";
}
