/* SPDX-License-Identifier: MIT */
/* dtypes, types, arena, error reporting and argument helpers. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "mil_internal.h"

/* ---- dtypes ---- */

static const struct {
	int dt;
	const char *name;
	size_t size;
} dtypes[] = {
	{ANES_DT_FP16, "fp16", 2},
	{ANES_DT_FP32, "fp32", 4},
	{ANES_DT_INT32, "int32", 4},
	{ANES_DT_INT16, "int16", 2},
	{ANES_DT_INT8, "int8", 1},
	{ANES_DT_UINT8, "uint8", 1},
	{ANES_DT_BOOL, "bool", 1},
	{ANES_MIL_DT_STRING, "string", 1},
	{ANES_MIL_DT_UINT1, "uint1", 0},
	{ANES_MIL_DT_UINT2, "uint2", 0},
	{ANES_MIL_DT_UINT3, "uint3", 0},
	{ANES_MIL_DT_UINT4, "uint4", 0},
	{ANES_MIL_DT_UINT6, "uint6", 0},
	{ANES_MIL_DT_INT4, "int4", 0},
	{ANES_MIL_DT_UINT16, "uint16", 0},
	{ANES_MIL_DT_UINT32, "uint32", 0},
};

const char *anes_dtype_name(anes_dtype dt)
{
	if ((int)dt == ANES_MIL_DT_STRING)
		return NULL;
	return anes_mil_dtype_name((int)dt);
}

size_t anes_dtype_size(anes_dtype dt)
{
	for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
		if (dtypes[i].dt == (int)dt && dtypes[i].dt < ANES_MIL_DT_STRING)
			return dtypes[i].size;
	return 0;
}

const char *anes_mil_dtype_name(int dtype)
{
	for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
		if (dtypes[i].dt == dtype)
			return dtypes[i].name;
	return NULL;
}

int anes_mil_dtype_parse(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
		if (strlen(dtypes[i].name) == len && memcmp(dtypes[i].name, name, len) == 0)
			return dtypes[i].dt;
	return -1;
}

bool anes_mil_dtype_is_float(int dtype)
{
	return dtype == ANES_DT_FP16 || dtype == ANES_DT_FP32;
}

bool anes_mil_dtype_is_int(int dtype)
{
	return dtype == ANES_DT_INT32 || dtype == ANES_DT_INT16 || dtype == ANES_DT_INT8 ||
	       dtype == ANES_DT_UINT8;
}

bool anes_mil_dtype_is_storage(int dtype)
{
	return dtype >= ANES_MIL_DT_UINT1 && dtype <= ANES_MIL_DT_UINT32;
}

unsigned anes_mil_dtype_bits(int dtype)
{
	switch (dtype) {
	case ANES_MIL_DT_STRING: return 8;
	case ANES_MIL_DT_UINT1: return 1;
	case ANES_MIL_DT_UINT2: return 2;
	case ANES_MIL_DT_UINT3: return 3;
	case ANES_MIL_DT_UINT4: return 4;
	case ANES_MIL_DT_UINT6: return 6;
	case ANES_MIL_DT_INT4: return 4;
	case ANES_MIL_DT_UINT16: return 16;
	case ANES_MIL_DT_UINT32: return 32;
	default: return (unsigned)anes_dtype_size((anes_dtype)dtype) * 8;
	}
}

int64_t anes_mil_load_i64(const void *data, int dtype, uint64_t i)
{
	const uint8_t *p = data;
	unsigned bits = anes_mil_dtype_bits(dtype);

	switch (dtype) {
	case ANES_MIL_DT_UINT16: { uint16_t x; memcpy(&x, p + 2 * i, 2); return x; }
	case ANES_MIL_DT_UINT32: { uint32_t x; memcpy(&x, p + 4 * i, 4); return x; }
	case ANES_DT_FP16: case ANES_DT_FP32: return (int64_t)anes_mil_load_f64(data, dtype, i);
	default: break;
	}
	if (bits >= 8)
		return (int64_t)anes_mil_load_f64(data, dtype, i);
	if (bits == 0)
		return 0;
	uint64_t bit = i * bits;
	unsigned v = p[bit / 8] >> (bit % 8);
	if (bit % 8 + bits > 8)
		v |= (unsigned)p[bit / 8 + 1] << (8 - bit % 8);
	v &= (1u << bits) - 1;
	if (dtype == ANES_MIL_DT_INT4 && (v & 8u))
		return (int64_t)v - 16;
	return v;
}

/* ---- limits ---- */

static anes_mil_limits limits = {
	ANES_MIL_DEFAULT_TEXT, ANES_MIL_DEFAULT_STMTS, ANES_MIL_DEFAULT_TENSOR_BYTES,
	ANES_MIL_DEFAULT_VALUE_BYTES, 64, ANES_MAX_IO,
};

void anes_mil_limits_default(anes_mil_limits *ret)
{
	*ret = (anes_mil_limits){ ANES_MIL_DEFAULT_TEXT, ANES_MIL_DEFAULT_STMTS, ANES_MIL_DEFAULT_TENSOR_BYTES,
		                  ANES_MIL_DEFAULT_VALUE_BYTES, 64, ANES_MAX_IO };
}

int anes_mil_set_limits(const anes_mil_limits *l)
{
	if (!l->max_text || l->max_text > ANES_MIL_CEIL_TEXT || !l->max_stmts || l->max_stmts > ANES_MIL_CEIL_STMTS ||
	    !l->max_tensor_bytes || l->max_tensor_bytes > ANES_MIL_CEIL_TENSOR_BYTES || !l->max_value_bytes ||
	    l->max_value_bytes > ANES_MIL_CEIL_VALUE_BYTES || !l->max_functions ||
	    l->max_functions > ANES_MAX_FUNCTIONS || !l->max_io || l->max_io > ANES_MAX_IO)
		return -EINVAL;
	limits = *l;
	return 0;
}

const anes_mil_limits *anes_mil_get_limits(void)
{
	return &limits;
}

void anes_mil_limits_format(const anes_mil_limits *l, char *buf, size_t len)
{
	snprintf(buf, len, "%llu,%llu,%llu,%llu,%u,%u", (unsigned long long)l->max_text,
	         (unsigned long long)l->max_stmts, (unsigned long long)l->max_tensor_bytes,
	         (unsigned long long)l->max_value_bytes, l->max_functions, l->max_io);
}

int anes_mil_limits_scan(const char *s, anes_mil_limits *ret)
{
	unsigned long long v[6];
	for (int i = 0; i < 6; i++) {
		char *end;
		if (*s < '0' || *s > '9')
			return -EINVAL;
		errno = 0;
		v[i] = strtoull(s, &end, 10);
		if (errno || *end != (i < 5 ? ',' : '\0'))
			return -EINVAL;
		s = end + (i < 5);
	}
	if (v[4] > UINT32_MAX || v[5] > UINT32_MAX)
		return -EINVAL;
	*ret = (anes_mil_limits){ v[0], v[1], v[2], v[3], (uint32_t)v[4], (uint32_t)v[5] };
	return 0;
}

/* ---- types ---- */

int anes_mil_type_init(anes_mil_type *t, int dtype, uint32_t rank, const uint64_t *shape)
{
	size_t es;
	uint64_t count = 1, bytes;

	if (rank > ANES_MAX_RANK)
		return -EINVAL;
	es = dtype == ANES_MIL_DT_STRING ? 8 : anes_mil_dtype_bits(dtype);
	if (es == 0)
		return -EINVAL;
	memset(t, 0, sizeof *t);
	for (uint32_t i = 0; i < rank; i++) {
		if (shape[i] < 1 || shape[i] > ANES_MIL_MAX_DIM)
			return -EINVAL;
		if (__builtin_mul_overflow(count, shape[i], &count))
			return -EINVAL;
		t->shape[i] = shape[i];
	}
	/* es is in bits: bytes = ceil(count * bits / 8) (sub-byte types are packed) */
	if (__builtin_mul_overflow(count, (uint64_t)es, &bytes))
		return -EINVAL;
	bytes = bytes / 8 + (bytes % 8 != 0);
	if (bytes > anes_mil_get_limits()->max_tensor_bytes)
		return -EINVAL;
	t->dtype = dtype;
	t->rank = rank;
	t->count = count;
	t->bytes = bytes;
	return 0;
}

bool anes_mil_type_equal(const anes_mil_type *a, const anes_mil_type *b)
{
	if (a->dtype != b->dtype || a->rank != b->rank)
		return false;
	if (a->dtype == ANES_MIL_DT_STRING)
		return true;
	for (uint32_t i = 0; i < a->rank; i++)
		if (a->shape[i] != b->shape[i])
			return false;
	return true;
}

const char *anes_mil_shape_str(const anes_mil_type *t, char *buf, size_t len)
{
	size_t o = 0;
	int n;

	if (len == 0)
		return buf;
	buf[0] = 0;
	n = snprintf(buf, len, "[");
	o = n > 0 ? (size_t)n : 0;
	for (uint32_t i = 0; i < t->rank && o < len; i++) {
		n = snprintf(buf + o, len - o, "%s%llu", i ? "," : "", (unsigned long long)t->shape[i]);
		if (n < 0)
			break;
		o += (size_t)n;
	}
	if (o < len)
		snprintf(buf + o, len - o, "]");
	return buf;
}

const char *anes_mil_type_str(const anes_mil_type *t, char *buf, size_t len)
{
	char sh[ANES_MAX_RANK * 12 + 4];
	const char *dn = anes_mil_dtype_name(t->dtype);

	if (!dn)
		dn = "?";
	if (t->rank == 0)
		snprintf(buf, len, "%s", dn);
	else
		snprintf(buf, len, "tensor<%s, %s>", dn, anes_mil_shape_str(t, sh, sizeof sh));
	return buf;
}

/* ---- arena ---- */

struct mil_chunk {
	struct mil_chunk *next;
	size_t size, used;
	unsigned char *data;       /* 64-byte aligned */
};

struct anes_mil_arena {
	struct mil_chunk *head;
	size_t total;
};

#define MIL_CHUNK_SIZE ((size_t)64 << 10)

struct anes_mil_arena *mil_arena_new(void)
{
	return calloc(1, sizeof(struct anes_mil_arena));
}

void mil_arena_free(struct anes_mil_arena *a)
{
	if (!a)
		return;
	for (struct mil_chunk *c = a->head, *n; c; c = n) {
		n = c->next;
		free(c);
	}
	free(a);
}

static struct mil_chunk *chunk_new(size_t size)
{
	size_t hdr = (sizeof(struct mil_chunk) + 63) & ~(size_t)63;
	struct mil_chunk *c;

	if (size > SIZE_MAX - hdr - 64)
		return NULL;
	c = malloc(hdr + size + 64);
	if (!c)
		return NULL;
	c->next = NULL;
	c->size = size;
	c->used = 0;
	c->data = (unsigned char *)(((uintptr_t)c + hdr + 63) & ~(uintptr_t)63);
	return c;
}

static void *arena_alloc(struct anes_mil_arena *a, size_t n, size_t align)
{
	struct mil_chunk *c = a->head;
	size_t need = (n + align - 1) & ~(align - 1);
	size_t at;
	void *p;

	if (need < n || need == 0)
		need = align;
	if (need > MIL_ARENA_CAP || a->total > MIL_ARENA_CAP - need)
		return NULL;
	at = c ? (c->used + align - 1) & ~(align - 1) : 0;
	if (!c || at > c->size || c->size - at < need) {
		if (need >= MIL_CHUNK_SIZE / 4) {
			/* big: own chunk, linked behind the current one */
			struct mil_chunk *b = chunk_new(need);
			if (!b)
				return NULL;
			if (c) {
				b->next = c->next;
				c->next = b;
			} else {
				a->head = b;
			}
			b->used = need;
			a->total += need;
			memset(b->data, 0, n);
			return b->data;
		}
		c = chunk_new(MIL_CHUNK_SIZE);
		if (!c)
			return NULL;
		c->next = a->head;
		a->head = c;
		at = 0;
	}
	p = c->data + at;
	a->total += need + (at - c->used);
	c->used = at + need;
	memset(p, 0, n);
	return p;
}

void *mil_arena_alloc(struct anes_mil_arena *a, size_t n)
{
	return arena_alloc(a, n, 64);
}

void *mil_arena_alloc_small(struct anes_mil_arena *a, size_t n)
{
	return arena_alloc(a, n, 8);
}

char *mil_arena_strndup(struct anes_mil_arena *a, const char *s, size_t len)
{
	char *d = len < SIZE_MAX ? arena_alloc(a, len + 1, 1) : NULL;

	if (d && len)
		memcpy(d, s, len);
	return d;
}

/* ---- errors ---- */

void mil_vfail(anes_mil_check *c, uint32_t line, const char *fmt, va_list ap)
{
	int n;

	if (c->failed)
		return;  /* keep the first message */
	c->failed = true;
	if (!c->errbuf || c->errbuf_len == 0)
		return;
	n = snprintf(c->errbuf, c->errbuf_len, "line %u: ", line);
	if (n >= 0 && (size_t)n < c->errbuf_len)
		vsnprintf(c->errbuf + n, c->errbuf_len - (size_t)n, fmt, ap);
	/* one line: no newlines from user-supplied text */
	for (char *p = c->errbuf; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

void mil_failf(anes_mil_check *c, uint32_t line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mil_vfail(c, line, fmt, ap);
	va_end(ap);
}

int anes_mil_fail(anes_mil_check *c, const anes_mil_op *op, int rc, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	mil_failf(c, op->line, "op '%s' (%s): %s", op->def ? op->def->name : "?",
	          op->name ? op->name : "", msg);
	return rc;
}

/* ---- argument helpers ---- */

const anes_mil_arg *anes_mil_op_arg(const anes_mil_op *op, const char *name)
{
	for (uint32_t i = 0; i < op->n_args; i++)
		if (strcmp(op->args[i].name, name) == 0)
			return &op->args[i];
	return NULL;
}

const anes_mil_value *anes_mil_op_value(const anes_mil_function *fn, const anes_mil_op *op,
                                        const char *name)
{
	const anes_mil_arg *a = anes_mil_op_arg(op, name);

	if (!a || a->is_tuple || a->n != 1 || a->vals[0] >= fn->n_values)
		return NULL;
	return &fn->values[a->vals[0]];
}

int anes_mil_const_ints(const anes_mil_value *v, int64_t *out, uint32_t max, uint32_t *ret_n)
{
	uint64_t n;

	if (!v || v->kind != ANES_MIL_V_CONST || v->type.rank > 1 ||
	    !(anes_mil_dtype_is_int(v->type.dtype) || v->type.dtype == ANES_MIL_DT_UINT16 ||
	      v->type.dtype == ANES_MIL_DT_UINT32))
		return -EINVAL;
	n = v->type.count;
	if (n > max)
		return -EINVAL;
	for (uint64_t i = 0; i < n; i++)
		out[i] = anes_mil_load_i64(v->data, v->type.dtype, i);
	*ret_n = (uint32_t)n;
	return 0;
}

int anes_mil_const_bool(const anes_mil_value *v, bool *ret)
{
	if (!v || v->kind != ANES_MIL_V_CONST || v->type.rank != 0 || v->type.dtype != ANES_DT_BOOL)
		return -EINVAL;
	*ret = ((const uint8_t *)v->data)[0] != 0;
	return 0;
}

const char *anes_mil_const_string(const anes_mil_value *v)
{
	if (!v || v->kind != ANES_MIL_V_CONST || v->type.rank != 0 || v->type.dtype != ANES_MIL_DT_STRING)
		return NULL;
	return v->data;
}

double anes_mil_load_f64(const void *data, int dt, uint64_t i)
{
	const uint8_t *p = data;

	switch (dt) {
	case ANES_DT_FP16: { uint16_t h; memcpy(&h, p + 2 * i, 2); return anes_f16_to_f32_soft(h); }
	case ANES_DT_FP32: { float f; memcpy(&f, p + 4 * i, 4); return f; }
	case ANES_DT_INT32: { int32_t x; memcpy(&x, p + 4 * i, 4); return x; }
	case ANES_DT_INT16: { int16_t x; memcpy(&x, p + 2 * i, 2); return x; }
	case ANES_DT_INT8: return ((const int8_t *)data)[i];
	case ANES_DT_UINT8: return p[i];
	case ANES_DT_BOOL: return p[i] ? 1.0 : 0.0;
	default: return 0;
	}
}

int anes_mil_const_f64(const anes_mil_value *v, double *ret)
{
	if (!v || v->kind != ANES_MIL_V_CONST || v->type.count != 1 || v->type.rank > 1 ||
	    (!anes_mil_dtype_is_float(v->type.dtype) && !anes_mil_dtype_is_int(v->type.dtype)))
		return -EINVAL;
	*ret = anes_mil_load_f64(v->data, v->type.dtype, 0);
	return 0;
}

void anes_mil_slice_axis(int64_t d, int64_t b, int64_t e, int64_t s, bool begin_mask,
                         bool end_mask, int64_t *ret_begin, int64_t *ret_len)
{
	if (begin_mask) {
		b = s > 0 ? 0 : d - 1;
	} else {
		if (b < 0)
			b += d;
		b = s > 0 ? (b < 0 ? 0 : b > d ? d : b) : (b < -1 ? -1 : b > d - 1 ? d - 1 : b);
	}
	if (end_mask) {
		e = s > 0 ? d : -1;
	} else {
		if (e < 0)
			e += d;
		e = s > 0 ? (e < 0 ? 0 : e > d ? d : e) : (e < -1 ? -1 : e > d - 1 ? d - 1 : e);
	}
	*ret_begin = b;
	*ret_len = s > 0 ? (e > b ? (e - b + s - 1) / s : 0) : (b > e ? (b - e + (-s) - 1) / (-s) : 0);
}

uint64_t anes_mil_program_bytes(const anes_mil_program *prog)
{
	uint64_t n = sizeof(struct anes_mil_arena);
	for (const struct mil_chunk *c = prog->arena->head; c; c = c->next)
		n += c->size + sizeof(struct mil_chunk) + 128;
	return n;
}
