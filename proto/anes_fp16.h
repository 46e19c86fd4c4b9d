/* SPDX-License-Identifier: MIT */
/*
 * IEEE 754 binary16 <-> binary32 conversion, header-only.
 *
 *   uint16_t anes_f32_to_f16(float f);     round to nearest, ties to even
 *   float    anes_f16_to_f32(uint16_t h);  exact
 *   void     anes_f32_to_f16_n(uint16_t *dst, const float *src, size_t n);
 *   void     anes_f16_to_f32_n(float *dst, const uint16_t *src, size_t n);
 *
 * Subnormals, infinities and signed zeros convert exactly/correctly.  NaNs stay
 * NaNs with their sign; f32 -> f16 keeps the top 10 payload bits and sets the
 * quiet bit (as the F16C and ARMv8 instructions do).
 *
 * Scalar conversions use F16C (when compiled with -mf16c) or __fp16 on
 * aarch64, else portable bit twiddling.  On x86_64 with GCC/clang the bulk
 * conversions pick F16C at run time even when the translation unit is not
 * compiled with -mf16c.
 */
#ifndef ANES_FP16_H
#define ANES_FP16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__F16C__) || (defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)))
#include <immintrin.h>
#endif
#if !defined(__F16C__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <stdatomic.h>
#endif

/* ---- portable versions (always available, used by the tests as reference) ---- */

static inline uint16_t anes_f32_to_f16_soft(float f)
{
	uint32_t x;
	memcpy(&x, &f, sizeof x);
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
	uint32_t ax = x & 0x7fffffffu;

	if (ax >= 0x7f800000u) {                 /* inf or NaN */
		if (ax > 0x7f800000u)
			return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
		return (uint16_t)(sign | 0x7c00u);
	}
	if (ax >= 0x477ff000u)                   /* >= 65520 rounds to inf */
		return (uint16_t)(sign | 0x7c00u);
	if (ax < 0x38800000u) {                  /* below 2^-14: subnormal half */
		if (ax <= 0x33000000u)               /* <= 2^-25: rounds to zero */
			return sign;
		uint32_t e = ax >> 23;               /* 102..112 */
		uint32_t m = (ax & 0x7fffffu) | 0x800000u;
		uint32_t shift = 126u - e;           /* 14..24 */
		uint32_t r = m >> shift;
		uint32_t rem = m & ((1u << shift) - 1u);
		uint32_t half = 1u << (shift - 1u);
		if (rem > half || (rem == half && (r & 1u)))
			r++;
		return (uint16_t)(sign | r);
	}
	uint32_t r = ax - 0x38000000u;           /* rebias exponent 127 -> 15 */
	uint32_t h = r >> 13;
	uint32_t rem = r & 0x1fffu;
	if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
		h++;                                 /* may carry into the exponent: correct */
	return (uint16_t)(sign | h);
}

static inline float anes_f16_to_f32_soft(uint16_t h)
{
	uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
	uint32_t e = ((uint32_t)h >> 10) & 0x1fu;
	uint32_t m = (uint32_t)h & 0x3ffu;
	uint32_t bits;
	float f;

	if (e == 0) {
		if (m == 0) {
			bits = sign;
		} else {                             /* subnormal: m * 2^-24, exact in f32 */
			f = (float)m * 5.9604644775390625e-8f;
			memcpy(&bits, &f, sizeof bits);
			bits |= sign;
		}
	} else if (e == 31) {
		bits = sign | 0x7f800000u | (m << 13);
	} else {
		bits = sign | ((e + 112u) << 23) | (m << 13);
	}
	memcpy(&f, &bits, sizeof f);
	return f;
}

/* ---- scalar conversions ---- */

static inline uint16_t anes_f32_to_f16(float f)
{
#if defined(__F16C__)
	return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#elif defined(__aarch64__) && defined(__ARM_FP16_FORMAT_IEEE)
	__fp16 h = (__fp16)f;
	uint16_t u;
	memcpy(&u, &h, sizeof u);
	return u;
#else
	return anes_f32_to_f16_soft(f);
#endif
}

static inline float anes_f16_to_f32(uint16_t h)
{
#if defined(__F16C__)
	return _cvtsh_ss(h);
#elif defined(__aarch64__) && defined(__ARM_FP16_FORMAT_IEEE)
	__fp16 x;
	memcpy(&x, &h, sizeof x);
	return (float)x;
#else
	return anes_f16_to_f32_soft(h);
#endif
}

/* ---- bulk conversions ---- */

/* The F16C loops: built for the whole translation unit under -mf16c, else
 * (x86_64, GCC/clang) for these functions only, picked at run time. */
#if defined(__F16C__)
#define ANES_FP16_F16C_TARGET
#elif defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ANES_FP16_RUNTIME_F16C 1
#define ANES_FP16_F16C_TARGET __attribute__((target("avx,f16c")))
#endif

#if defined(ANES_FP16_F16C_TARGET)
ANES_FP16_F16C_TARGET
static inline void anes_f16_to_f32_n_f16c(float *dst, const uint16_t *src, size_t n)
{
	size_t i = 0, n8 = n & ~(size_t)7;
	for (; i < n8; i += 8) {
		__m128i h = _mm_loadu_si128((const __m128i *)(const void *)(src + i));
		_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
	}
	for (; i < n; i++)
		dst[i] = anes_f16_to_f32(src[i]);
}

ANES_FP16_F16C_TARGET
static inline void anes_f32_to_f16_n_f16c(uint16_t *dst, const float *src, size_t n)
{
	size_t i = 0, n8 = n & ~(size_t)7;
	for (; i < n8; i += 8) {
		__m256 f = _mm256_loadu_ps(src + i);
		_mm_storeu_si128((__m128i *)(void *)(dst + i),
		                 _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
	}
	for (; i < n; i++)
		dst[i] = anes_f32_to_f16(src[i]);
}
#endif

#if defined(ANES_FP16_RUNTIME_F16C)
static inline int anes_fp16_have_f16c(void)
{
	/* Cached (relaxed atomics: racing threads at worst compute it twice).
	 * F16C needs AVX and the OS saving YMM state (OSXSAVE + XCR0 bits 1, 2). */
	static _Atomic int cached = -1;
	int c = atomic_load_explicit(&cached, memory_order_relaxed);
	if (c < 0) {
		unsigned a = 0, b = 0, cx = 0, d = 0;
		c = 0;
		if (__get_cpuid(1, &a, &b, &cx, &d) && (cx & (1u << 27)) && (cx & (1u << 28)) &&
		    (cx & (1u << 29))) {
			unsigned lo, hi;
			__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
			(void)hi;
			c = (lo & 6u) == 6u;
		}
		atomic_store_explicit(&cached, c, memory_order_relaxed);
	}
	return c;
}
#endif

static inline void anes_f16_to_f32_n(float *dst, const uint16_t *src, size_t n)
{
#if defined(__F16C__)
	anes_f16_to_f32_n_f16c(dst, src, n);
#else
#if defined(ANES_FP16_RUNTIME_F16C)
	if (anes_fp16_have_f16c()) {
		anes_f16_to_f32_n_f16c(dst, src, n);
		return;
	}
#endif
	for (size_t i = 0; i < n; i++)
		dst[i] = anes_f16_to_f32(src[i]);
#endif
}

static inline void anes_f32_to_f16_n(uint16_t *dst, const float *src, size_t n)
{
#if defined(__F16C__)
	anes_f32_to_f16_n_f16c(dst, src, n);
#else
#if defined(ANES_FP16_RUNTIME_F16C)
	if (anes_fp16_have_f16c()) {
		anes_f32_to_f16_n_f16c(dst, src, n);
		return;
	}
#endif
	for (size_t i = 0; i < n; i++)
		dst[i] = anes_f32_to_f16(src[i]);
#endif
}

#endif
