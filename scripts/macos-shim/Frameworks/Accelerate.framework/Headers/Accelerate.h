/*
 * SHIM for the macOS compile check (scripts/check-macos.sh), not Apple's header.
 *
 * Accelerate's headers exist only in Apple's SDK.  This declares the part of its CBLAS
 * interface that the tree uses (daemon/cpu/cpu_gemm.c, bench/bench_cpu.c), with the
 * classic signature of vecLib's cblas.h (int dimensions; the enum values are the CBLAS
 * standard's), so that the code built with ANES_HAVE_ACCELERATE is compiled off a Mac.
 * A Mac build uses the real header from the SDK.
 */
#ifndef ANES_SHIM_ACCELERATE_H
#define ANES_SHIM_ACCELERATE_H

enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };

void cblas_sgemm(const enum CBLAS_ORDER Order, const enum CBLAS_TRANSPOSE TransA,
                 const enum CBLAS_TRANSPOSE TransB, const int M, const int N, const int K,
                 const float alpha, const float *A, const int lda, const float *B, const int ldb,
                 const float beta, float *C, const int ldc);

#endif
