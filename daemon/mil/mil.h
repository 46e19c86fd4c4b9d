/* SPDX-License-Identifier: MIT */
/*
 * MIL ("Model Intermediate Language") text front end: lexer, parser, IR and
 * type/shape checker.  Used by the CPU reference backend and usable by any
 * other backend that wants a checked view of a program.
 *
 * The text comes from untrusted network clients: everything is bounded by the
 * limits below, and every error is reported as -EINVAL (malformed, type or
 * shape error) or -ENOTSUP (well-formed but unsupported: unknown op, dtype,
 * non-constant argument where a constant is needed) with a one-line message
 * "line N: ..." naming the op and value when there is one.
 *
 * Function order: anes_mil_program.functions (and .info) list the function
 * named "main" first when there is one, then the others in file order.
 */
#ifndef ANES_MIL_H
#define ANES_MIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* ---- limits (all inclusive) ----
 *
 * The structural limits a program is checked against.  They are one set per
 * process, set once at startup (aneshared's options --max-mil-*, passed on
 * to its device workers) before any parse: anes_mil_set_limits is not
 * synchronised with parses running on other threads.  The defaults fit the
 * largest public converted models (docs/mil.md, Limits). */
typedef struct anes_mil_limits {
	uint64_t max_text;           /* bytes of MIL text */
	uint64_t max_stmts;          /* statements, inputs, literals and attribute values, whole program */
	uint64_t max_tensor_bytes;   /* one tensor */
	uint64_t max_value_bytes;    /* the bytes of all values of a program together */
	uint32_t max_functions;      /* functions of a program */
	uint32_t max_io;             /* inputs (or outputs) of one function */
} anes_mil_limits;

#define ANES_MIL_DEFAULT_TEXT         ((uint64_t)64 << 20)
#define ANES_MIL_DEFAULT_STMTS        ((uint64_t)1 << 20)
#define ANES_MIL_DEFAULT_TENSOR_BYTES ((uint64_t)2 << 30)
#define ANES_MIL_DEFAULT_VALUE_BYTES  ((uint64_t)32 << 30)
/* The highest each limit may be set to */
#define ANES_MIL_CEIL_TEXT            ((uint64_t)1 << 30)      /* the largest frame */
#define ANES_MIL_CEIL_STMTS           ((uint64_t)1 << 28)
#define ANES_MIL_CEIL_TENSOR_BYTES    ((uint64_t)1 << 40)
#define ANES_MIL_CEIL_VALUE_BYTES     ((uint64_t)1 << 44)
/* max_functions <= ANES_MAX_FUNCTIONS, max_io <= ANES_MAX_IO (backend.h) */

/* The defaults */
void anes_mil_limits_default(anes_mil_limits *ret);
/* Set the process's limits.  -EINVAL (nothing changed) if one is 0 or above
 * its ceiling. */
int anes_mil_set_limits(const anes_mil_limits *l);
/* The process's limits (the defaults until set) */
const anes_mil_limits *anes_mil_get_limits(void);
/* "TEXT,STMTS,TENSOR,VALUE,FUNCTIONS,IO" (decimal), how aneshared passes its
 * limits to a device worker; buf of at least ANES_MIL_LIMITS_STR bytes */
#define ANES_MIL_LIMITS_STR 128
void anes_mil_limits_format(const anes_mil_limits *l, char *buf, size_t len);
/* The reverse; -EINVAL if s is not that form */
int anes_mil_limits_scan(const char *s, anes_mil_limits *ret);

#define ANES_MIL_MAX_ARGS          64u           /* arguments (or attributes) of one op */
#define ANES_MIL_MAX_TUPLE         1024u         /* elements of one tuple argument */
#define ANES_MIL_MAX_OUTPUTS       64u           /* outputs of one op statement */
#define ANES_MIL_MAX_STRING        4096u         /* bytes of one string literal */
#define ANES_MIL_MAX_NEST          16u           /* bracket nesting in literals */
#define ANES_MIL_MAX_DICT          1024u         /* entries of a dict attribute */
#define ANES_MIL_MAX_DIM           ((uint64_t)INT32_MAX)          /* one dimension */
/* Also: rank <= ANES_MAX_RANK, names <= ANES_NAME_MAX bytes (anes_name.h),
 * <= ANES_MAX_IO inputs and outputs per function, <= ANES_MAX_FUNCTIONS
 * functions (backend.h). */

/* dtype of string values (attribute-like arguments), beyond anes_dtype */
#define ANES_MIL_DT_STRING 64
/* Storage-only dtypes: constants that only the constexpr_* weight ops read
 * (indices, masks, quantized data, iOS 16 shapes).  Sub-byte ones are packed
 * as the MIL blob format packs them: element i occupies bits
 * [i*bits, (i+1)*bits) of the byte stream, least significant bit first
 * (an element may straddle two bytes); type.bytes = ceil(count * bits / 8). */
#define ANES_MIL_DT_UINT1  65
#define ANES_MIL_DT_UINT2  66
#define ANES_MIL_DT_UINT3  67
#define ANES_MIL_DT_UINT4  68
#define ANES_MIL_DT_UINT6  69
#define ANES_MIL_DT_INT4   70
#define ANES_MIL_DT_UINT16 71
#define ANES_MIL_DT_UINT32 72

/* "fp16" ... "bool", "string"; NULL if unknown */
const char *anes_mil_dtype_name(int dtype);
/* parse a dtype name ("fp16", ..., "string"); -1 if unknown */
int anes_mil_dtype_parse(const char *name, size_t len);
/* true for fp16/fp32 */
bool anes_mil_dtype_is_float(int dtype);
/* true for int8/16/32, uint8 */
bool anes_mil_dtype_is_int(int dtype);
/* true for the storage-only dtypes above (uint1..uint6, int4, uint16, uint32) */
bool anes_mil_dtype_is_storage(int dtype);
/* bits of one element (fp16 16, uint4 4, bool 8, string 8); 0 if unknown */
unsigned anes_mil_dtype_bits(int dtype);
/* element i of a constant of any numeric dtype (storage-only ones included:
 * packed elements are unpacked, int4 sign-extended), as int64; floats are
 * truncated toward zero */
int64_t anes_mil_load_i64(const void *data, int dtype, uint64_t i);

typedef struct anes_mil_type {
	int dtype;                      /* anes_dtype or ANES_MIL_DT_STRING */
	uint32_t rank;                  /* 0 = scalar */
	uint64_t shape[ANES_MAX_RANK];
	uint64_t count;                 /* elements (1 for scalars) */
	uint64_t bytes;                 /* count * dtype size (strings: length + 1) */
} anes_mil_type;

/* Fill t; checks rank, dims (1..ANES_MIL_MAX_DIM) and size (overflow-checked,
 * <= the max_tensor_bytes limit).  Returns 0 or -EINVAL (t unspecified). */
int anes_mil_type_init(anes_mil_type *t, int dtype, uint32_t rank, const uint64_t *shape);
bool anes_mil_type_equal(const anes_mil_type *a, const anes_mil_type *b);
/* "[1,64,1,64]" (shape only); returns buf */
const char *anes_mil_shape_str(const anes_mil_type *t, char *buf, size_t len);
/* "tensor<fp16, [1,64,1,64]>" or "fp16"; returns buf */
const char *anes_mil_type_str(const anes_mil_type *t, char *buf, size_t len);

typedef enum anes_mil_vkind {
	ANES_MIL_V_INPUT = 1,           /* function input */
	ANES_MIL_V_CONST,               /* const() or inline literal: data is set */
	ANES_MIL_V_OP,                  /* output of ops[op] */
} anes_mil_vkind;

typedef struct anes_mil_value {
	const char *name;               /* "" for inline literals; in the arena */
	anes_mil_type type;
	anes_mil_vkind kind;
	uint32_t line;                  /* where defined */
	const void *data;               /* CONST: type.bytes bytes, dense, in type.dtype
	                                   (fp16 as IEEE half bits, bool as 0/1 bytes,
	                                   string NUL-terminated); else NULL */
	uint32_t op;                    /* OP: index into function ops */
	bool is_state;                  /* INPUT declared state<T>: type is T; only the
	                                   state ops take it (read_state, write_state,
	                                   coreml_update_state) */
	uint32_t out_index;             /* OP: which output of that op */
} anes_mil_value;

typedef struct anes_mil_arg {
	const char *name;
	bool is_tuple;                  /* written as (a, b, ...) */
	uint32_t n;                     /* 1 unless tuple */
	const uint32_t *vals;           /* value indices */
} anes_mil_arg;

struct anes_mil_opdef;

typedef struct anes_mil_op {
	const struct anes_mil_opdef *def;
	uint32_t line;
	const char *name;               /* the name = string("...") attribute, else first output's name */
	uint32_t n_args;
	const anes_mil_arg *args;
	uint32_t n_outputs;
	const uint32_t *outputs;        /* value indices */
	uint32_t text_begin, text_end;  /* the statement's bytes in the parsed text:
	                                   [text_begin, text_end), ending with its ';' */
} anes_mil_op;

typedef struct anes_mil_function {
	const char *name;               /* in the arena */
	const char *opset;              /* "ios18", "CoreML8" or "" */
	uint32_t line;
	uint32_t n_inputs, n_outputs;
	const uint32_t *inputs;         /* value indices */
	const uint32_t *outputs;        /* value indices */
	uint32_t n_states;              /* inputs declared state<tensor<...>>, in order; */
	const uint32_t *states;         /* not in inputs (value indices) */
	uint32_t n_ops;                 /* in program (= topological) order; const() is not an op */
	const anes_mil_op *ops;
	uint32_t n_values;
	const anes_mil_value *values;
} anes_mil_function;

struct anes_mil_arena;

typedef struct anes_mil_program {
	char version[16];               /* "1.3" */
	uint32_t n_functions;           /* >= 1; "main" first, then file order */
	const anes_mil_function *functions;
	const anes_function_info *info; /* n_functions entries, same order */
	uint64_t total_bytes;           /* sum of bytes of all values */
	struct anes_mil_arena *arena;   /* owns everything above */
} anes_mil_program;

/* Parse and check MIL text.  weights (borrowed) resolve BLOBFILE references;
 * their data is copied.  On failure writes "line N: message" to errbuf
 * (NUL-terminated when errbuf_len > 0) and returns -EINVAL/-ENOTSUP/-ENOMEM. */
int anes_mil_parse(const char *text, size_t len, const anes_weight *weights, size_t n_weights,
                   anes_mil_program **ret_prog, char *errbuf, size_t errbuf_len);
void anes_mil_program_free(anes_mil_program *prog);
/* As anes_mil_parse, but BLOBFILE constants point into the weights (which
 * must then outlive the program) instead of being copied: for measuring a
 * program before its memory is allocated (the daemon's program memory). */
int anes_mil_parse_borrowed(const char *text, size_t len, const anes_weight *weights,
                            size_t n_weights, anes_mil_program **ret_prog, char *errbuf,
                            size_t errbuf_len);
/* Bytes the program's own allocations take (constants copied from weights
 * included, borrowed ones not). */
uint64_t anes_mil_program_bytes(const anes_mil_program *prog);

/* slice_by_index on one axis of size d (stride s != 0): clamp begin/end as
 * MIL does (negative values count from the end; a mask takes the whole
 * range in the stride's direction) and give the first index and the number
 * of elements (0 for an empty slice).  The type checker and the CPU backend
 * both use this, so they cannot disagree. */
void anes_mil_slice_axis(int64_t d, int64_t b, int64_t e, int64_t s, bool begin_mask,
                         bool end_mask, int64_t *ret_begin, int64_t *ret_len);

/* numpy-style broadcast of a and b: shape gets max(rank) dims.  0 or -EINVAL. */
int anes_mil_broadcast(const anes_mil_type *a, const anes_mil_type *b, uint32_t *ret_rank, uint64_t *shape);

/* ---- op table ---- */

#define ANES_MIL_ARG_REQ   1u   /* required */
#define ANES_MIL_ARG_CONST 2u   /* must be a compile-time constant */
#define ANES_MIL_ARG_TUPLE 4u   /* must be a tuple (a, b, ...) */
#define ANES_MIL_ARG_STATE 8u   /* must be a state input (and only such arguments may be) */

typedef struct anes_mil_argdef {
	const char *name;
	unsigned flags;
} anes_mil_argdef;

typedef struct anes_mil_check anes_mil_check;  /* checker context (error reporting) */

/* Infer the types of op's outputs (op->n_outputs of them, already checked
 * against opdef.n_outputs) from its arguments.  Arguments have been checked
 * against the argdefs (names known, required present, const/tuple flags). */
typedef int (*anes_mil_infer_fn)(anes_mil_check *c, const anes_mil_function *fn,
                                 const anes_mil_op *op, anes_mil_type *out);

typedef struct anes_mil_opdef {
	const char *name;
	uint32_t n_outputs;             /* 0 = any (infer checks) */
	const anes_mil_argdef *args;    /* terminated by {NULL, 0} */
	anes_mil_infer_fn infer;
} anes_mil_opdef;

/* NULL if no such op */
const anes_mil_opdef *anes_mil_opdef_find(const char *name, size_t len);

/* Report an error for op: writes "line N: op 'NAME' (VALUE): <fmt>" and returns rc. */
int anes_mil_fail(anes_mil_check *c, const anes_mil_op *op, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* ---- argument helpers (for infer and backend planning) ---- */

const anes_mil_arg *anes_mil_op_arg(const anes_mil_op *op, const char *name);
/* the value of a non-tuple argument; NULL if absent */
const anes_mil_value *anes_mil_op_value(const anes_mil_function *fn, const anes_mil_op *op,
                                        const char *name);
/* Constant integer scalar or rank-1 tensor -> int64 list.  -EINVAL if v is not
 * a constant integer of rank <= 1 or has more than max elements. */
int anes_mil_const_ints(const anes_mil_value *v, int64_t *out, uint32_t max, uint32_t *ret_n);
/* Constant bool scalar.  -EINVAL if not. */
int anes_mil_const_bool(const anes_mil_value *v, bool *ret);
/* Constant string scalar; NULL if not. */
const char *anes_mil_const_string(const anes_mil_value *v);
/* Constant numeric scalar (or one-element tensor) of any dtype -> double.
 * -EINVAL if not. */
int anes_mil_const_f64(const anes_mil_value *v, double *ret);
/* Element i of a constant (or any dense buffer) of dtype dt, as double. */
double anes_mil_load_f64(const void *data, int dt, uint64_t i);

#endif
