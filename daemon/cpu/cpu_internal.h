/* SPDX-License-Identifier: MIT */
/* Private to daemon/cpu: the kernel table and the execution context. */
#ifndef ANES_CPU_INTERNAL_H
#define ANES_CPU_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mil.h"

/* working memory (value buffers + scratch) of one run of one program */
#define ANES_CPU_MAX_ARENA_BYTES ((uint64_t)4 << 30)

/* What a kernel sees during a run. */
typedef struct cpu_exec {
	const anes_mil_function *fn;
	const uint64_t *offset;     /* per value: byte offset in arena (non-const values) */
	uint8_t *arena;             /* 64-byte aligned */
	uint8_t *scratch;           /* 64-byte aligned, step->scratch bytes */
} cpu_exec;

struct cpu_step;
typedef int (*cpu_run_fn)(const struct cpu_step *st, const cpu_exec *ex);

typedef struct cpu_step {
	const anes_mil_op *op;
	cpu_run_fn run;
	void *params;               /* kernel-private, malloc'd (freed with free) */
	uint64_t scratch;           /* bytes of scratch the kernel needs */
} cpu_step;

/* Plan one op at compile time: validate what this backend supports, compute
 * parameters (st->params) and scratch needs (st->scratch).  Errors return
 * -ENOTSUP/-EINVAL/-ENOMEM with a message (via cpu_fail). */
typedef struct cpu_plan_ctx {
	char *errbuf;
	size_t errbuf_len;
} cpu_plan_ctx;

typedef int (*cpu_plan_fn)(cpu_plan_ctx *pc, const anes_mil_function *fn, const anes_mil_op *op, cpu_step *st);

typedef struct cpu_opimpl {
	const char *name;           /* MIL op name (matches anes_mil_opdef.name) */
	cpu_plan_fn plan;           /* may be NULL: no parameters, no scratch */
	cpu_run_fn run;
} cpu_opimpl;

const cpu_opimpl *cpu_opimpl_find(const char *name);

int cpu_fail(cpu_plan_ctx *pc, const anes_mil_op *op, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static inline void *cpu_ptr(const cpu_exec *ex, uint32_t vid)
{
	const anes_mil_value *v = &ex->fn->values[vid];
	if (v->kind == ANES_MIL_V_CONST)
		return (void *)(uintptr_t)v->data;
	return ex->arena + ex->offset[vid];
}

static inline uint64_t cpu_align64(uint64_t n)
{
	return (n + 63) & ~(uint64_t)63;
}

#endif
