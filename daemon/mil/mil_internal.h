/* SPDX-License-Identifier: MIT */
/* Private to daemon/mil. */
#ifndef ANES_MIL_INTERNAL_H
#define ANES_MIL_INTERNAL_H

#include <stdarg.h>

#include "mil.h"

/* What a program's arena may hold: its values, plus room for the IR of its
 * statements (names, arguments, ops) */
#define MIL_ARENA_CAP ((size_t)(anes_mil_get_limits()->max_value_bytes + \
                                anes_mil_get_limits()->max_stmts * 256 + ((uint64_t)256 << 20)))

struct anes_mil_arena;
struct anes_mil_arena *mil_arena_new(void);
void mil_arena_free(struct anes_mil_arena *a);
/* 64-byte aligned, zeroed; NULL on failure or when the cap is reached */
void *mil_arena_alloc(struct anes_mil_arena *a, size_t n);
/* the same, 8-byte aligned: for the IR's small arrays */
void *mil_arena_alloc_small(struct anes_mil_arena *a, size_t n);
/* s[0..len) and a NUL, 1-byte aligned; NULL on failure */
char *mil_arena_strndup(struct anes_mil_arena *a, const char *s, size_t len);

struct anes_mil_check {
	char *errbuf;
	size_t errbuf_len;
	bool failed;
};

/* the second half of the op table (mil_ops_ext.c); NULL if no such op */
const anes_mil_opdef *mil_ops_ext_find(const char *name, size_t len);
/* the state ops (mil_states.c): read_state, write_state, coreml_update_state */
const anes_mil_opdef *mil_states_find(const char *name, size_t len);

void mil_vfail(anes_mil_check *c, uint32_t line, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));
void mil_failf(anes_mil_check *c, uint32_t line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Argument checks shared by the op table (mil_args.c).  Each fails with
 * -EINVAL and a message naming the argument; ret is set only on success. */
/* t = the type (dtype, rank, shape), or "result is too large" */
int mil_set_type(anes_mil_check *c, const anes_mil_op *op, anes_mil_type *t, int dtype, uint32_t rank,
                 const uint64_t *shape);
/* v is fp16 or fp32 */
int mil_need_float(anes_mil_check *c, const anes_mil_op *op, const char *arg, const anes_mil_value *v);
/* va and vb have one dtype */
int mil_same_dtype(anes_mil_check *c, const anes_mil_op *op, const char *a, const anes_mil_value *va,
                   const char *b, const anes_mil_value *vb);
/* axis in [-rank, rank): ret = axis, counted from 0 */
int mil_norm_axis(anes_mil_check *c, const anes_mil_op *op, const char *arg, int64_t axis, uint32_t rank,
                  uint32_t *ret);
/* An optional constant argument NAME: absent, ret = def.  A bool scalar; a
 * number (a scalar or a one-element vector, of any numeric dtype); an
 * integer scalar within [lo, hi]. */
int mil_opt_bool(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                 bool def, bool *ret);
int mil_opt_f64(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                double def, double *ret);
int mil_opt_int(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op, const char *name,
                int64_t def, int64_t lo, int64_t hi, int64_t *ret);

/* compressed-weight ops (mil_constexpr.c), rows in mil_ops.c's table */
extern const anes_mil_argdef mil_a_lut_to_dense[], mil_a_sparse_to_dense[], mil_a_blockwise_shift_scale[],
	mil_a_constexpr_cast[], mil_a_lut_to_sparse[], mil_a_sparse_shift_scale[];
int mil_infer_lut_to_dense(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                           anes_mil_type *out);
int mil_infer_sparse_to_dense(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                              anes_mil_type *out);
int mil_infer_blockwise_shift_scale(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                                    anes_mil_type *out);
int mil_infer_lut_to_sparse(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                            anes_mil_type *out);
int mil_infer_sparse_shift_scale(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                                 anes_mil_type *out);
int mil_infer_constexpr_cast(anes_mil_check *c, const anes_mil_function *fn, const anes_mil_op *op,
                             anes_mil_type *out);

#endif
