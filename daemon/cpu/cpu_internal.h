/* SPDX-License-Identifier: MIT */
/* Private to daemon/cpu: the kernel table, the execution context, shared helpers. */
#ifndef ANES_CPU_INTERNAL_H
#define ANES_CPU_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mil.h"

/* working memory (value buffers + scratch) of one run of one program */
#define ANES_CPU_MAX_ARENA_BYTES ((uint64_t)4 << 30)

/* strict mode: default number of products accumulated in fp32 before the
 * running sum is rounded to fp16 (see docs/mil.md, "strict mode") */
#define ANES_CPU_STRICT_DEFAULT_CHUNK 32u
#define ANES_CPU_STRICT_MAX_CHUNK 65536u

/* ---- thread pool (cpu_pool.c) ---- */

typedef struct cpu_pool cpu_pool;
/* process items [begin, end) */
typedef void (*cpu_task_fn)(void *ctx, uint64_t begin, uint64_t end);

/* n_threads total (the caller counts as one); NULL on failure or n_threads <= 1 */
cpu_pool *cpu_pool_new(unsigned n_threads);
void cpu_pool_free(cpu_pool *p);
/* Run fn over [0, n) in pieces of at least grain items, on the pool's
 * threads and the caller.  Serial when pool is NULL, n is small, or the pool
 * is busy with another run's work (no nesting, no waiting). */
void cpu_parallel(cpu_pool *pool, uint64_t n, uint64_t grain, cpu_task_fn fn, void *ctx);

/* ---- per-backend configuration ---- */

typedef struct cpu_cfg {
	cpu_pool *pool;             /* NULL: single-threaded kernels */
	unsigned n_threads;
	unsigned strict_chunk;      /* strict mode (fp16 accumulator model); 0 = off */
	bool builtin_gemm;          /* use the built-in gemm even when a BLAS is present */
} cpu_cfg;

/* ---- execution ---- */

/* What a kernel sees during a run.
 *
 * Where a value lives: a constant in the program (fn->values[v].data), a
 * folded constant (fixed[v]), the caller's memory (io[v] != 0: io[v] = i + 1
 * for function input i, read in place; io[v] = -(j + 1) for a value computed
 * straight into function output j), or else the arena at offset[v].  Caller
 * memory is shared with an untrusted client and may change at any time, and
 * an output may alias an input or another output: kernels read and write it
 * as plain numbers (never an address, index or bound derived from it without
 * a check at the point of use), and use memmove, never memcpy, between
 * values. */
typedef struct cpu_exec {
	const anes_mil_function *fn;
	const uint64_t *offset;     /* per value: byte offset in arena (non-const values) */
	const void *const *fixed;   /* per value: folded constant data, or NULL */
	const int32_t *io;          /* per value: 0 arena, > 0 input io-1, < 0 output -io-1; NULL = all arena */
	const void *const *inputs;  /* this run's input pointers (fn->n_inputs) */
	void *const *outputs;       /* this run's output pointers (fn->n_outputs) */
	uint8_t *arena;             /* 64-byte aligned */
	uint8_t *scratch;           /* 64-byte aligned, step->scratch bytes */
	const cpu_cfg *cfg;
	char *errbuf;               /* run error message (kernels: use cpu_run_fail) */
	size_t errbuf_len;
} cpu_exec;

struct cpu_step;
typedef int (*cpu_run_fn)(const struct cpu_step *st, const cpu_exec *ex);

typedef struct cpu_step {
	const anes_mil_op *op;
	cpu_run_fn run;             /* NULL: folded at compile time, nothing to do */
	void *params;               /* kernel-private, malloc'd (freed with free) */
	uint64_t scratch;           /* bytes of scratch the kernel needs */
} cpu_step;

/* Plan one op at compile time: validate what this backend supports, compute
 * parameters (st->params) and scratch needs (st->scratch).  Errors return
 * -ENOTSUP/-EINVAL/-ENOMEM with a message (via cpu_fail). */
typedef struct cpu_plan_ctx {
	char *errbuf;
	size_t errbuf_len;
	const void *const *fixed;   /* per value: data of values folded so far, or NULL */
	const cpu_cfg *cfg;
} cpu_plan_ctx;

typedef int (*cpu_plan_fn)(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st);

typedef struct cpu_opimpl {
	const char *name;           /* MIL op name (matches anes_mil_opdef.name) */
	cpu_plan_fn plan;           /* may be NULL: no parameters, no scratch */
	cpu_run_fn run;
} cpu_opimpl;

const cpu_opimpl *cpu_opimpl_find(const char *name);
/* the kernels of the ops added for the iOS 15-18 opsets (cpu_elem.c,
 * cpu_ext.c); cpu_opimpl_find falls back to it.  NULL if no such op */
const cpu_opimpl *cpu_ext_find(const char *name);
const cpu_opimpl *cpu_elem_find(const char *name);
/* the compressed-weight ops (cpu_constexpr.c), terminated by a NULL name */
extern const cpu_opimpl cpu_constexpr_impls[];
/* the state ops (cpu_state.c), terminated by a NULL name */
extern const cpu_opimpl cpu_state_impls[];

int cpu_fail(cpu_plan_ctx *pc, const anes_mil_op *op, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* A run-time failure (data-dependent, e.g. an out-of-range gather index):
 * writes "line N: op 'NAME' (VALUE): <fmt>" to the run's errbuf. */
int cpu_run_fail(const cpu_exec *ex, const anes_mil_op *op, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static inline void *cpu_ptr(const cpu_exec *ex, uint32_t vid)
{
	const anes_mil_value *v = &ex->fn->values[vid];
	if (v->kind == ANES_MIL_V_CONST)
		return (void *)(uintptr_t)v->data;
	if (ex->fixed && ex->fixed[vid])
		return (void *)(uintptr_t)ex->fixed[vid];
	if (ex->io && ex->io[vid]) {
		int32_t k = ex->io[vid];
		return k > 0 ? (void *)(uintptr_t)ex->inputs[k - 1] : ex->outputs[-(int64_t)k - 1];
	}
	return ex->arena + ex->offset[vid];
}

/* compile-time data of a value: constant or folded, else NULL */
static inline const void *cpu_const_data(const cpu_plan_ctx *pc, const anes_mil_function *fn, uint32_t vid)
{
	const anes_mil_value *v = &fn->values[vid];
	if (v->kind == ANES_MIL_V_CONST)
		return v->data;
	return pc->fixed ? pc->fixed[vid] : NULL;
}

static inline uint64_t cpu_align64(uint64_t n)
{
	return (n + 63) & ~(uint64_t)63;
}

/* ---- shared kernel helpers (cpu_ops.c) ---- */

/* n elements of dtype dt (fp16/fp32) <-> fp32 */
void cpu_to_f32(float *dst, const void *src, int dt, size_t n);
void cpu_from_f32(void *dst, int dt, const float *src, size_t n);
/* round every element to the nearest fp16 (as fp32), in place */
void cpu_round_f16(float *x, size_t n);
double cpu_load_f64(const void *p, int dt, size_t i);
/* s[i] = the row-major stride (elements) of t's dim i */
void cpu_strides(const anes_mil_type *t, uint64_t *s);
/* x as [outer, dim, inner] around axis (a scalar: 1, 1, 1) */
void cpu_split_at(const anes_mil_type *x, uint32_t axis, uint64_t *outer, uint64_t *dim, uint64_t *inner);
/* A reduction over the axes red[] marks: the shape to walk (x's; [1] for a
 * scalar) and each dim's stride in the output (0 for a reduced dim). */
void cpu_reduce_layout(const anes_mil_type *x, const bool *red, uint32_t *rank, uint64_t *shape, uint64_t *ostride);
/* mask[i] (i < rank): axis i is one of the constant axes av lists (negative
 * ones counting from the end), or av is NULL (every axis).  The shape rules
 * checked the list; entries out of range are ignored all the same. */
void cpu_axes_mask(const anes_mil_value *av, uint32_t rank, bool *mask);
void cpu_store_f64(void *p, int dt, size_t i, double v);

/* argument access for plan/run functions */
static inline const anes_mil_value *cpu_arg(const anes_mil_function *fn, const anes_mil_op *op, const char *name)
{
	return anes_mil_op_value(fn, op, name);
}

/* value index of a required single argument */
static inline uint32_t cpu_argid(const anes_mil_op *op, const char *name)
{
	return anes_mil_op_arg(op, name)->vals[0];
}

/* value index of an optional single argument, or UINT32_MAX */
static inline uint32_t cpu_optid(const anes_mil_op *op, const char *name)
{
	const anes_mil_arg *a = anes_mil_op_arg(op, name);
	return a ? a->vals[0] : UINT32_MAX;
}

static inline const anes_mil_type *cpu_out_type(const anes_mil_function *fn, const anes_mil_op *op)
{
	return &fn->values[op->outputs[0]].type;
}

static inline size_t cpu_esize(int dt)
{
	return anes_dtype_size((anes_dtype)dt);
}

/* float dtype supported by the float kernels? else fails the plan */
int cpu_need_float(cpu_plan_ctx *pc, const anes_mil_op *op, int dt);

/* fp32 copy of compile-time data (fp16/fp32) in a malloc'd buffer; NULL on ENOMEM */
float *cpu_f32_dup(const void *data, int dt, uint64_t n);

/* fp32 view of a float value at run time: the value itself when fp32, else
 * converted into *slot (advancing it by cpu_align64(count * 4)) */
const float *cpu_load_f32(const cpu_exec *ex, uint32_t vid, uint8_t **slot);
/* scratch that cpu_load_f32 needs for t */
static inline uint64_t cpu_f32_scratch(const anes_mil_type *t)
{
	return t->dtype == ANES_DT_FP32 ? 0 : cpu_align64(t->count * 4);
}

/* numpy-broadcast input strides (elements; 0 where broadcast) of t against
 * the r-dim output shape oshape */
void cpu_input_strides(const anes_mil_type *t, uint32_t r, const uint64_t *oshape, uint64_t *s);

/* kernels in cpu_nn.c */
int cpu_plan_matmul(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st);
int cpu_run_matmul(const cpu_step *st, const cpu_exec *ex);
int cpu_plan_linear(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st);
int cpu_run_linear(const cpu_step *st, const cpu_exec *ex);
int cpu_plan_conv(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st);
int cpu_run_conv(const cpu_step *st, const cpu_exec *ex);
int cpu_plan_softmax(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st);
int cpu_run_softmax(const cpu_step *st, const cpu_exec *ex);
int cpu_plan_layer_norm(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st);
int cpu_run_layer_norm(const cpu_step *st, const cpu_exec *ex);
int cpu_plan_reduce(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st);
int cpu_run_reduce(const cpu_step *st, const cpu_exec *ex);
int cpu_plan_sdpa(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st);
int cpu_run_sdpa(const cpu_step *st, const cpu_exec *ex);

/* ---- gemm (cpu_gemm.c) ---- */

/* C[m,n] = op(A)[m,k] * op(B)[k,n] (+ C when accumulate), row-major fp32
 * with leading dimensions; op(A) = A^T when ta (A stored [k, m]), op(B) =
 * B^T when tb (B stored [n, k]).  tmp: cpu_gemm_tmp_floats() floats of
 * scratch (packing for the built-in kernel, partial sums in strict mode).
 * Threads: the BLAS's own, or cfg->pool for the built-in kernel. */
void cpu_gemm(const cpu_cfg *cfg, bool ta, bool tb, uint64_t m, uint64_t n, uint64_t k,
              const float *A, uint64_t lda, const float *B, uint64_t ldb, float *C, uint64_t ldc,
              bool accumulate, float *tmp);
uint64_t cpu_gemm_tmp_floats(const cpu_cfg *cfg, uint64_t m, uint64_t n, uint64_t k);
/* cpu_gemm with A or B (not both) possibly fp16 (adt/bdt: ANES_DT_FP16 or
 * ANES_DT_FP32): constant weights are kept in fp16 and converted one tile
 * at a time, never whole.  tmp: cpu_gemm_w_tmp_floats() floats. */
void cpu_gemm_w(const cpu_cfg *cfg, bool ta, bool tb, uint64_t m, uint64_t n, uint64_t k, const void *A, int adt,
                uint64_t lda, const void *B, int bdt, uint64_t ldb, float *C, uint64_t ldc, bool accumulate,
                float *tmp);
uint64_t cpu_gemm_w_tmp_floats(const cpu_cfg *cfg, uint64_t m, uint64_t n, uint64_t k);
/* "blas", "builtin-avx2" or "builtin" */
const char *cpu_gemm_impl(const cpu_cfg *cfg);

#endif
