/* SPDX-License-Identifier: MIT */
/* MIL text lexer and parser; builds the checked IR (see mil.h). */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "mil_internal.h"

typedef enum tkind {
	T_EOF, T_IDENT, T_NUM, T_STR,
	T_LP, T_RP, T_LB, T_RB, T_LC, T_RC, T_LT, T_GT,
	T_COMMA, T_EQ, T_SEMI, T_ARROW, T_MINUS, T_QUEST,
} tkind;

typedef struct tok {
	tkind k;
	uint32_t line;
	const char *s;      /* T_STR: contents between the quotes, escapes undecoded */
	size_t len;
} tok;

typedef struct fnstate {
	anes_mil_function f;
	anes_mil_value *values;
	uint32_t nv, capv;
	anes_mil_op *ops;
	uint32_t nops, capops;
	uint32_t *hash;     /* value index + 1, open addressing */
	uint32_t hcap;
} fnstate;

typedef struct parser {
	const char *base;   /* start of the text (op statement spans are offsets into it) */
	const char *p, *end;
	uint32_t line;
	tok t;
	anes_mil_check chk;
	const anes_weight *weights;
	size_t n_weights;
	struct anes_mil_arena *arena;
	uint32_t n_stmts;
	uint64_t total_bytes;
	bool borrow;        /* BLOBFILE constants point into the weights */
	anes_mil_limits lim;
	bool flex_ok;       /* a '?' dimension may be parsed (inputs, declared op outputs) */
	int variant;        /* -1: the function's default shapes; else its enumerated shape k */
	fnstate *fn;        /* function being parsed, NULL at program level */
} parser;

#define TRY(x) do { int rc_ = (x); if (rc_) return rc_; } while (0)

__attribute__((format(printf, 4, 5)))
static int perr(parser *P, int rc, uint32_t line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mil_vfail(&P->chk, line, fmt, ap);
	va_end(ap);
	return rc;
}

static int nomem(parser *P)
{
	return perr(P, -ENOMEM, P->t.line, "out of memory");
}

/* ---- lexer ---- */

static bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_alnum(char c) { return is_alpha(c) || is_digit(c); }

static const char *tok_kind_str(tkind k)
{
	switch (k) {
	case T_EOF: return "end of text";
	case T_IDENT: return "identifier";
	case T_NUM: return "number";
	case T_STR: return "string";
	case T_LP: return "'('";
	case T_RP: return "')'";
	case T_LB: return "'['";
	case T_RB: return "']'";
	case T_LC: return "'{'";
	case T_RC: return "'}'";
	case T_LT: return "'<'";
	case T_GT: return "'>'";
	case T_COMMA: return "','";
	case T_EQ: return "'='";
	case T_SEMI: return "';'";
	case T_ARROW: return "'->'";
	case T_MINUS: return "'-'";
	case T_QUEST: return "'?'";
	}
	return "?";
}

/* printable description of the current token, for messages */
static const char *tok_desc(const tok *t, char *buf, size_t len)
{
	if (t->k == T_IDENT || t->k == T_NUM) {
		int n = t->len > 32 ? 32 : (int)t->len;
		snprintf(buf, len, "'%.*s'", n, t->s);
	} else if (t->k == T_STR) {
		snprintf(buf, len, "string");
	} else {
		snprintf(buf, len, "%s", tok_kind_str(t->k));
	}
	return buf;
}

static int next(parser *P)
{
	const char *p = P->p, *e = P->end;
	tok t;

	for (;;) {
		while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) {
			if (*p == '\n')
				P->line++;
			p++;
		}
		if (e - p >= 2 && p[0] == '/' && p[1] == '/') {
			while (p < e && *p != '\n')
				p++;
			continue;
		}
		break;
	}
	t.line = P->line;
	t.s = p;
	t.len = 0;
	if (p >= e) {
		t.k = T_EOF;
	} else if (is_alpha(*p)) {
		const char *s = p;
		while (p < e && is_alnum(*p))
			p++;
		t.k = T_IDENT;
		t.len = (size_t)(p - s);
	} else if (is_digit(*p) || ((*p == '-' || *p == '+' || *p == '.') && e - p >= 2 &&
	                            (is_digit(p[1]) || p[1] == '.'))) {
		const char *s = p;
		p++;
		while (p < e) {
			char c = *p;
			if (is_alnum(c) || c == '.') {
				p++;
			} else if ((c == '-' || c == '+') &&
			           (p[-1] == 'e' || p[-1] == 'E' || p[-1] == 'p' || p[-1] == 'P') &&
			           !(s[0] == '0' && p - s >= 2 && (s[1] == 'x' || s[1] == 'X') &&
			             (p[-1] == 'e' || p[-1] == 'E'))) {
				p++;
			} else {
				break;
			}
			if (p - s > 64)
				return perr(P, -EINVAL, t.line, "number too long");
		}
		t.k = T_NUM;
		t.len = (size_t)(p - s);
	} else if (*p == '"') {
		const char *s = ++p;
		while (p < e && *p != '"' && *p != '\n') {
			if (*p == '\\' && e - p >= 2 && p[1] != '\n')
				p++;
			p++;
		}
		if (p >= e || *p != '"')
			return perr(P, -EINVAL, t.line, "unterminated string");
		if ((size_t)(p - s) > ANES_MIL_MAX_STRING)
			return perr(P, -EINVAL, t.line, "string longer than %u bytes", ANES_MIL_MAX_STRING);
		t.k = T_STR;
		t.s = s;
		t.len = (size_t)(p - s);
		p++;
	} else if (*p == '-' && e - p >= 2 && p[1] == '>') {
		t.k = T_ARROW;
		p += 2;
	} else {
		switch (*p) {
		case '(': t.k = T_LP; break;
		case ')': t.k = T_RP; break;
		case '[': t.k = T_LB; break;
		case ']': t.k = T_RB; break;
		case '{': t.k = T_LC; break;
		case '}': t.k = T_RC; break;
		case '<': t.k = T_LT; break;
		case '>': t.k = T_GT; break;
		case ',': t.k = T_COMMA; break;
		case '=': t.k = T_EQ; break;
		case ';': t.k = T_SEMI; break;
		case '-': t.k = T_MINUS; break;
		case '?': t.k = T_QUEST; break;
		default: {
			unsigned char c = (unsigned char)*p;
			if (c >= 0x21 && c < 0x7f)
				return perr(P, -EINVAL, t.line, "unexpected character '%c'", c);
			return perr(P, -EINVAL, t.line, "unexpected byte 0x%02x", c);
		}
		}
		p++;
	}
	P->p = p;
	P->t = t;
	return 0;
}

static bool tok_is(const tok *t, const char *word)
{
	size_t n = strlen(word);
	return t->k == T_IDENT && t->len == n && memcmp(t->s, word, n) == 0;
}

static int expect(parser *P, tkind k, const char *context)
{
	char d[48];

	if (P->t.k != k)
		return perr(P, -EINVAL, P->t.line, "expected %s %s, got %s", tok_kind_str(k), context,
		            tok_desc(&P->t, d, sizeof d));
	return next(P);
}

static int expect_word(parser *P, const char *word, const char *context)
{
	char d[48];

	if (!tok_is(&P->t, word))
		return perr(P, -EINVAL, P->t.line, "expected '%s' %s, got %s", word, context,
		            tok_desc(&P->t, d, sizeof d));
	return next(P);
}

/* an identifier token of at most ANES_NAME_MAX bytes: its span in the text */
static int take_ident(parser *P, const char **ret_s, size_t *ret_len, const char *what)
{
	char d[48];

	if (P->t.k != T_IDENT)
		return perr(P, -EINVAL, P->t.line, "expected %s, got %s", what, tok_desc(&P->t, d, sizeof d));
	if (P->t.len > ANES_NAME_MAX)
		return perr(P, -EINVAL, P->t.line, "%s '%.32s...' is %zu bytes long; names are at most %d bytes",
		            what, P->t.s, P->t.len, ANES_NAME_MAX);
	*ret_s = P->t.s;
	*ret_len = P->t.len;
	return next(P);
}

/* an identifier token, copied into the arena (names are stored at their own
 * length: no memory grows with ANES_NAME_MAX) */
static int take_name(parser *P, const char **ret, const char *what)
{
	const char *s = NULL;
	size_t len = 0;
	char *name;

	TRY(take_ident(P, &s, &len, what));
	name = mil_arena_strndup(P->arena, s, len);
	if (!name)
		return nomem(P);
	*ret = name;
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decode a T_STR token into out (t->len + 1 bytes; decoding never grows):
 * \n \t \r \" \\ \xHH; any other escaped character stands for itself.
 * Returns the length, or -1 if the string would hold a NUL byte. */
static ptrdiff_t decode_str(const tok *t, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < t->len; i++) {
		char c = t->s[i];
		if (c == '\\' && i + 1 < t->len) {
			c = t->s[++i];
			if (c == 'n') {
				c = '\n';
			} else if (c == 't') {
				c = '\t';
			} else if (c == 'r') {
				c = '\r';
			} else if (c == 'x' && i + 2 < t->len && hexval(t->s[i + 1]) >= 0 &&
			           hexval(t->s[i + 2]) >= 0) {
				c = (char)(hexval(t->s[i + 1]) << 4 | hexval(t->s[i + 2]));
				i += 2;
			}
		}
		if (c == 0)
			return -1;
		out[o++] = c;
	}
	out[o] = 0;
	return (ptrdiff_t)o;
}

/* ---- values and names ---- */

static uint32_t name_hash_n(const char *s, size_t len)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < len; i++)
		h = (h ^ (uint8_t)s[i]) * 16777619u;
	return h;
}

static uint32_t name_hash(const char *s)
{
	return name_hash_n(s, strlen(s));
}

/* the value named s[0..len), or -1 */
static int32_t fn_lookup_n(const fnstate *F, const char *s, size_t len)
{
	if (!F->hcap)
		return -1;
	for (uint32_t i = name_hash_n(s, len) & (F->hcap - 1);; i = (i + 1) & (F->hcap - 1)) {
		uint32_t h = F->hash[i];
		if (!h)
			return -1;
		const char *n = F->values[h - 1].name;
		if (strncmp(n, s, len) == 0 && n[len] == 0)
			return (int32_t)(h - 1);
	}
}

static int32_t fn_lookup(const fnstate *F, const char *name)
{
	return fn_lookup_n(F, name, strlen(name));
}

static int hash_insert(fnstate *F, uint32_t idx)
{
	if ((uint64_t)(F->nv + 1) * 2 > F->hcap) {
		uint32_t ncap = F->hcap ? F->hcap * 2 : 64;
		uint32_t *nh = calloc(ncap, sizeof *nh);
		if (!nh)
			return -ENOMEM;
		for (uint32_t i = 0; i < F->hcap; i++) {
			uint32_t h = F->hash[i];
			if (!h)
				continue;
			uint32_t j = name_hash(F->values[h - 1].name) & (ncap - 1);
			while (nh[j])
				j = (j + 1) & (ncap - 1);
			nh[j] = h;
		}
		free(F->hash);
		F->hash = nh;
		F->hcap = ncap;
	}
	uint32_t j = name_hash(F->values[idx].name) & (F->hcap - 1);
	while (F->hash[j])
		j = (j + 1) & (F->hcap - 1);
	F->hash[j] = idx + 1;
	return 0;
}

static int count_stmt(parser *P, uint32_t line)
{
	if (++P->n_stmts > P->lim.max_stmts)
		return perr(P, -EINVAL, line, "program has more than %llu statements (the limit, --max-mil-statements)",
		            (unsigned long long)P->lim.max_stmts);
	return 0;
}

/* add v to the current function; named values must be new */
static int add_value(parser *P, const anes_mil_value *v, uint32_t *ret_idx)
{
	fnstate *F = P->fn;

	TRY(count_stmt(P, v->line));
	if (v->name && v->name[0]) {
		int32_t old = fn_lookup(F, v->name);
		if (old >= 0)
			return perr(P, -EINVAL, v->line, "redefinition of '%s' (first defined on line %u)",
			            v->name, F->values[old].line);
	}
	if (v->type.bytes > P->lim.max_value_bytes - P->total_bytes)
		return perr(P, -EINVAL, v->line,
		            "program needs more than %llu bytes of values (the limit, --max-mil-value-bytes)",
		            (unsigned long long)P->lim.max_value_bytes);
	if (F->nv == F->capv) {
		uint32_t ncap = F->capv ? F->capv * 2 : 64;
		anes_mil_value *nv = realloc(F->values, (size_t)ncap * sizeof *nv);
		if (!nv)
			return nomem(P);
		F->values = nv;
		F->capv = ncap;
	}
	F->values[F->nv] = *v;
	if (!v->name)
		F->values[F->nv].name = "";
	else if (v->name[0] && hash_insert(F, F->nv))
		return nomem(P);
	P->total_bytes += v->type.bytes;
	*ret_idx = F->nv++;
	return 0;
}

/* ---- types ---- */

static int parse_dim(parser *P, uint64_t *ret)
{
	char buf[72], *endp;
	unsigned long long v;
	char d[48];

	if (P->t.k == T_QUEST) {
		if (!P->flex_ok)
			return perr(P, -EINVAL, P->t.line,
			            "a dimension '?' is allowed only in function inputs and declared op outputs");
		*ret = 0;   /* unknown: resolved by FlexibleShapeInformation or by inference */
		return next(P);
	}
	if (P->t.k == T_IDENT)
		return perr(P, -ENOTSUP, P->t.line, "symbolic dimension %s is not supported",
		            tok_desc(&P->t, d, sizeof d));
	if (P->t.k != T_NUM)
		return perr(P, -EINVAL, P->t.line, "expected a dimension, got %s", tok_desc(&P->t, d, sizeof d));
	memcpy(buf, P->t.s, P->t.len);
	buf[P->t.len] = 0;
	if (!is_digit(buf[0]))
		return perr(P, -EINVAL, P->t.line, "dimension %s must be positive", buf);
	errno = 0;
	v = strtoull(buf, &endp, 10);
	if (*endp)
		return perr(P, -EINVAL, P->t.line, "bad dimension '%s'", buf);
	if (errno == ERANGE || v > ANES_MIL_MAX_DIM)
		return perr(P, -EINVAL, P->t.line, "dimension %s too large (max %llu)", buf,
		            (unsigned long long)ANES_MIL_MAX_DIM);
	if (v == 0)
		return perr(P, -EINVAL, P->t.line, "dimension must be positive");
	*ret = v;
	return next(P);
}

/* the current token is the type keyword (not yet consumed) */
static int parse_type(parser *P, anes_mil_type *t)
{
	uint32_t line = P->t.line;
	uint64_t shape[ANES_MAX_RANK];
	uint32_t rank = 0;
	char d[48];
	int dt;

	if (P->t.k != T_IDENT)
		return perr(P, -EINVAL, line, "expected a type, got %s", tok_desc(&P->t, d, sizeof d));
	if (tok_is(&P->t, "tensor")) {
		TRY(next(P));
		TRY(expect(P, T_LT, "after 'tensor'"));
		if (P->t.k != T_IDENT)
			return perr(P, -EINVAL, P->t.line, "expected a dtype, got %s", tok_desc(&P->t, d, sizeof d));
		dt = anes_mil_dtype_parse(P->t.s, P->t.len);
		if (dt < 0)
			return perr(P, -ENOTSUP, P->t.line, "unsupported dtype %s", tok_desc(&P->t, d, sizeof d));
		TRY(next(P));
		TRY(expect(P, T_COMMA, "after the dtype"));
		TRY(expect(P, T_LB, "before the shape"));
		if (P->t.k != T_RB) {
			for (;;) {
				uint64_t v = 0;
				if (rank == ANES_MAX_RANK)
					return perr(P, -EINVAL, P->t.line, "rank exceeds the maximum of %d", ANES_MAX_RANK);
				TRY(parse_dim(P, &v));
				shape[rank++] = v;
				if (P->t.k != T_COMMA)
					break;
				TRY(next(P));
			}
		}
		TRY(expect(P, T_RB, "after the shape"));
		TRY(expect(P, T_GT, "to close the tensor type"));
		if (dt == ANES_MIL_DT_STRING) {
			/* tensor<string, []> is the string scalar (coremlc <= iOS 17 writes it so) */
			if (rank)
				return perr(P, -ENOTSUP, line, "string tensors of rank %u are not supported (rank 0 is)",
				            rank);
			memset(t, 0, sizeof *t);
			t->dtype = dt;
			t->count = 1;
			t->bytes = 1;
			return 0;
		}
		bool unknown = false;
		for (uint32_t i = 0; i < rank; i++)
			unknown |= shape[i] == 0;
		if (unknown) {
			/* a flexible type: unknown dims are 0, count and bytes 0 until resolved */
			memset(t, 0, sizeof *t);
			t->dtype = dt;
			t->rank = rank;
			memcpy(t->shape, shape, rank * sizeof shape[0]);
			return 0;
		}
		if (anes_mil_type_init(t, dt, rank, shape))
			return perr(P, -EINVAL, line, "tensor of %u dimensions is larger than %llu bytes", rank,
			            (unsigned long long)P->lim.max_tensor_bytes);
		return 0;
	}
	dt = anes_mil_dtype_parse(P->t.s, P->t.len);
	if (dt < 0)
		return perr(P, -ENOTSUP, line, "unsupported type %s", tok_desc(&P->t, d, sizeof d));
	TRY(next(P));
	if (dt == ANES_MIL_DT_STRING) {
		memset(t, 0, sizeof *t);
		t->dtype = dt;
		t->count = 1;
		t->bytes = 1;
		return 0;
	}
	return anes_mil_type_init(t, dt, 0, NULL);
}

static bool is_type_word(const tok *t)
{
	return t->k == T_IDENT && (tok_is(t, "tensor") || anes_mil_dtype_parse(t->s, t->len) >= 0 ||
	                           tok_is(t, "uint64") || tok_is(t, "int64") || tok_is(t, "uint16") ||
	                           tok_is(t, "bf16") || tok_is(t, "fp64") || tok_is(t, "uint32"));
}

/* ---- literals ---- */

static int num_text(parser *P, char buf[72])
{
	char d[48];

	if (P->t.k != T_NUM)
		return perr(P, -EINVAL, P->t.line, "expected a number, got %s", tok_desc(&P->t, d, sizeof d));
	memcpy(buf, P->t.s, P->t.len);
	buf[P->t.len] = 0;
	return 0;
}

/* parse one scalar element of dtype dt into dst (current token starts it) */
static int parse_elem(parser *P, int dt, void *dst)
{
	uint32_t line = P->t.line;
	char buf[72], *endp;
	char d[48];

	if (anes_mil_dtype_is_float(dt)) {
		bool neg = false;
		double v;
		if (P->t.k == T_MINUS) {
			neg = true;
			TRY(next(P));
		}
		if (tok_is(&P->t, "inf") || tok_is(&P->t, "infinity")) {
			v = INFINITY;
		} else if (tok_is(&P->t, "nan")) {
			v = NAN;
		} else {
			TRY(num_text(P, buf));
			errno = 0;
			v = strtod(buf, &endp);
			if (*endp || endp == buf)
				return perr(P, -EINVAL, line, "bad number '%s'", buf);
		}
		if (neg)
			v = -v;
		if (dt == ANES_DT_FP32) {
			float f = (float)v;
			memcpy(dst, &f, 4);
		} else {
			uint16_t h = anes_f32_to_f16_soft((float)v);
			memcpy(dst, &h, 2);
		}
		return next(P);
	}
	if (dt == ANES_DT_BOOL) {
		uint8_t b;
		if (tok_is(&P->t, "true"))
			b = 1;
		else if (tok_is(&P->t, "false"))
			b = 0;
		else if (P->t.k == T_NUM && P->t.len == 1 && (P->t.s[0] == '0' || P->t.s[0] == '1'))
			b = (uint8_t)(P->t.s[0] - '0');
		else
			return perr(P, -EINVAL, line, "expected true or false, got %s", tok_desc(&P->t, d, sizeof d));
		*(uint8_t *)dst = b;
		return next(P);
	}
	if (anes_mil_dtype_is_int(dt) || anes_mil_dtype_is_storage(dt)) {
		long long v, lo, hi;
		TRY(num_text(P, buf));
		errno = 0;
		{
			const char *q = buf + (buf[0] == '-' || buf[0] == '+');
			int base = (q[0] == '0' && (q[1] == 'x' || q[1] == 'X')) ? 16 : 10;
			v = strtoll(buf, &endp, base);
		}
		if (*endp || endp == buf)
			return perr(P, -EINVAL, line, "bad integer '%s'", buf);
		switch (dt) {
		case ANES_DT_INT32: lo = INT32_MIN; hi = INT32_MAX; break;
		case ANES_DT_INT16: lo = INT16_MIN; hi = INT16_MAX; break;
		case ANES_DT_INT8: lo = INT8_MIN; hi = INT8_MAX; break;
		case ANES_MIL_DT_INT4: lo = -8; hi = 7; break;
		case ANES_MIL_DT_UINT16: lo = 0; hi = UINT16_MAX; break;
		case ANES_MIL_DT_UINT32: lo = 0; hi = UINT32_MAX; break;
		case ANES_DT_UINT8: lo = 0; hi = UINT8_MAX; break;
		default: lo = 0; hi = (1ll << anes_mil_dtype_bits(dt)) - 1; break;
		}
		if (errno == ERANGE || v < lo || v > hi)
			return perr(P, -EINVAL, line, "integer %s out of range for %s", buf, anes_mil_dtype_name(dt));
		switch (dt) {
		case ANES_DT_INT32: { int32_t x = (int32_t)v; memcpy(dst, &x, 4); break; }
		case ANES_DT_INT16: { int16_t x = (int16_t)v; memcpy(dst, &x, 2); break; }
		case ANES_DT_INT8: *(int8_t *)dst = (int8_t)v; break;
		case ANES_MIL_DT_UINT16: { uint16_t x = (uint16_t)v; memcpy(dst, &x, 2); break; }
		case ANES_MIL_DT_UINT32: { uint32_t x = (uint32_t)v; memcpy(dst, &x, 4); break; }
		case ANES_DT_UINT8: *(uint8_t *)dst = (uint8_t)v; break;
		default: { int64_t x = v; memcpy(dst, &x, 8); break; } /* sub-byte: packed by the caller */
		}
		return next(P);
	}
	return perr(P, -ENOTSUP, line, "unsupported element type");
}

/* "..." string literal token -> arena copy */
static int take_string(parser *P, const char **ret, size_t *ret_len)
{
	char *s;
	size_t n;
	char d[48];

	if (P->t.k != T_STR)
		return perr(P, -EINVAL, P->t.line, "expected a string, got %s", tok_desc(&P->t, d, sizeof d));
	s = mil_arena_alloc_small(P->arena, P->t.len + 1);
	if (!s)
		return nomem(P);
	ptrdiff_t dn = decode_str(&P->t, s);
	if (dn < 0)
		return perr(P, -EINVAL, P->t.line, "string holds a NUL byte");
	n = (size_t)dn;
	TRY(next(P));
	*ret = s;
	if (ret_len)
		*ret_len = n;
	return 0;
}

/* ("...") after the string type was consumed */
static int parse_string_call(parser *P, const char **ret)
{
	TRY(expect(P, T_LP, "after the string type"));
	TRY(take_string(P, ret, NULL));
	return expect(P, T_RP, "after the string");
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* BLOBFILE(path = string("..."), offset = uint64(N)); 'BLOBFILE' is current */
static int parse_blobfile(parser *P, const anes_mil_type *t, void **ret_data)
{
	uint32_t line = P->t.line;
	const char *path = NULL;
	bool have_off = false;
	uint64_t off = 0;
	const anes_weight *w = NULL;
	char d[48], tb[96];

	TRY(next(P));
	TRY(expect(P, T_LP, "after BLOBFILE"));
	for (;;) {
		if (tok_is(&P->t, "path")) {
			TRY(next(P));
			TRY(expect(P, T_EQ, "after 'path'"));
			if (tok_is(&P->t, "tensor")) {
				anes_mil_type st;
				TRY(parse_type(P, &st));
				if (st.dtype != ANES_MIL_DT_STRING)
					return perr(P, -EINVAL, P->t.line, "the BLOBFILE path must be a string");
			} else {
				TRY(expect_word(P, "string", "for the BLOBFILE path"));
			}
			TRY(parse_string_call(P, &path));
		} else if (tok_is(&P->t, "offset")) {
			char buf[72], *endp;
			TRY(next(P));
			TRY(expect(P, T_EQ, "after 'offset'"));
			/* uint64(N), or tensor<uint64, []>(N) as coremlc <= iOS 17 writes it */
			if (tok_is(&P->t, "tensor")) {
				TRY(next(P));
				TRY(expect(P, T_LT, "after 'tensor'"));
				TRY(expect_word(P, "uint64", "for the BLOBFILE offset"));
				TRY(expect(P, T_COMMA, "after 'uint64'"));
				TRY(expect(P, T_LB, "for the BLOBFILE offset's shape"));
				TRY(expect(P, T_RB, "(the BLOBFILE offset is a scalar)"));
				TRY(expect(P, T_GT, "to close the offset's type"));
			} else {
				TRY(expect_word(P, "uint64", "for the BLOBFILE offset"));
			}
			TRY(expect(P, T_LP, "after the offset's type"));
			TRY(num_text(P, buf));
			errno = 0;
			off = strtoull(buf, &endp, 0);
			if (*endp || endp == buf || errno == ERANGE || buf[0] == '-')
				return perr(P, -EINVAL, P->t.line, "bad BLOBFILE offset '%s'", buf);
			TRY(next(P));
			TRY(expect(P, T_RP, "after the offset"));
			have_off = true;
		} else {
			return perr(P, -EINVAL, P->t.line, "unexpected %s in BLOBFILE", tok_desc(&P->t, d, sizeof d));
		}
		if (P->t.k != T_COMMA)
			break;
		TRY(next(P));
	}
	TRY(expect(P, T_RP, "to close BLOBFILE"));
	if (!path || !have_off)
		return perr(P, -EINVAL, line, "BLOBFILE needs path and offset");

	for (size_t i = 0; i < P->n_weights; i++) {
		if (P->weights[i].path && strcmp(P->weights[i].path, path) == 0) {
			w = &P->weights[i];
			break;
		}
	}
	if (!w)
		return perr(P, -EINVAL, line, "unknown weight blob '%s'", path);

	/* The MIL blob storage format (docs/mil.md, "Weight files"): a 64-byte
	 * storage header {u32 count, u32 version = 2, reserved}, then per blob a
	 * 64-byte metadata record {u32 0xDEADBEEF, u32 data type, u64 size,
	 * u64 data offset, reserved} that BLOBFILE's offset points at.  Checked
	 * as Core ML's reader checks it: the version, the sentinel, the data
	 * type; plus every offset and size against the blob's length. */
	const uint8_t *b = w->data;
	size_t len = b ? w->len : 0;
	if (len < 64)
		return perr(P, -EINVAL, line, "weight blob '%s' is too short (%zu bytes)", path, len);
	if (le32(b + 4) != 2)
		return perr(P, -EINVAL, line,
		            "weight blob '%s' has file format version %u at byte 4; the storage reader expects "
		            "version 2 (header: u32 blob count at byte 0, u32 version 2 at byte 4)",
		            path, le32(b + 4));
	if (off > len || len - off < 64)
		return perr(P, -EINVAL, line, "BLOBFILE offset %llu is outside weight blob '%s' (%zu bytes)",
		            (unsigned long long)off, path, len);
	if (off < 64)
		return perr(P, -EINVAL, line,
		            "BLOBFILE offset %llu is inside the 64-byte storage header of weight blob '%s'",
		            (unsigned long long)off, path);
	const uint8_t *ch = b + off;
	if (le32(ch) != 0xDEADBEEFu)
		return perr(P, -EINVAL, line, "bad magic 0x%08x at offset %llu of weight blob '%s'", le32(ch),
		            (unsigned long long)off, path);
	/* BlobDataType codes of the format (docs/mil.md); bool has none */
	int code = -1;
	switch (t->dtype) {
	case ANES_DT_FP16: code = 1; break;
	case ANES_DT_FP32: code = 2; break;
	case ANES_DT_UINT8: code = 3; break;
	case ANES_DT_INT8: code = 4; break;
	case ANES_DT_INT16: code = 6; break;
	case ANES_DT_INT32: code = 14; break;
	case ANES_MIL_DT_UINT16: code = 7; break;
	case ANES_MIL_DT_INT4: code = 8; break;
	case ANES_MIL_DT_UINT1: code = 9; break;
	case ANES_MIL_DT_UINT2: code = 10; break;
	case ANES_MIL_DT_UINT4: code = 11; break;
	case ANES_MIL_DT_UINT3: code = 12; break;
	case ANES_MIL_DT_UINT6: code = 13; break;
	case ANES_MIL_DT_UINT32: code = 15; break;
	default: break;
	}
	if (code >= 0 && le32(ch + 4) != (uint32_t)code)
		return perr(P, -EINVAL, line, "weight blob '%s' at offset %llu has data type %u, expected %d for %s",
		            path, (unsigned long long)off, le32(ch + 4), code, anes_mil_dtype_name(t->dtype));
	uint64_t size = le64(ch + 8), doff = le64(ch + 16);
	if (size != t->bytes)
		return perr(P, -EINVAL, line, "weight blob '%s' at offset %llu holds %llu bytes, %s needs %llu",
		            path, (unsigned long long)off, (unsigned long long)size,
		            anes_mil_type_str(t, tb, sizeof tb), (unsigned long long)t->bytes);
	if (doff > len || len - doff < size)
		return perr(P, -EINVAL, line, "weight blob '%s': data at offset %llu (+%llu bytes) is outside the blob (%zu bytes)",
		            path, (unsigned long long)doff, (unsigned long long)size, len);
	if (P->borrow || w->kept) {
		*ret_data = (void *)(uintptr_t)(b + doff);
		return 0;
	}
	void *data = mil_arena_alloc(P->arena, (size_t)size);
	if (!data)
		return nomem(P);
	memcpy(data, b + doff, (size_t)size);
	*ret_data = data;
	return 0;
}

/* element n of a literal of type t into data; sub-byte dtypes are packed
 * least significant bit first, as the blob format packs them (mil.h) */
static int parse_elem_at(parser *P, const anes_mil_type *t, uint8_t *data, uint64_t n)
{
	unsigned bits = anes_mil_dtype_bits(t->dtype);
	int64_t v;

	if (bits >= 8)
		return parse_elem(P, t->dtype, data + n * (bits / 8));
	TRY(parse_elem(P, t->dtype, &v));
	uint64_t bit = n * bits;
	unsigned u = (unsigned)v & ((1u << bits) - 1);
	data[bit / 8] |= (uint8_t)(u << (bit % 8));
	if (bit % 8 + bits > 8)
		data[bit / 8 + 1] |= (uint8_t)(u >> (8 - bit % 8));
	return 0;
}

/* elements of a tensor literal: [a, b, ...] possibly nested; '[' is current */
static int parse_elements(parser *P, const anes_mil_type *t, uint8_t *data)
{
	uint64_t n = 0;
	uint32_t depth = 0;
	uint32_t line = P->t.line;

	for (;;) {
		if (P->t.k == T_LB) {
			if (++depth > ANES_MIL_MAX_NEST)
				return perr(P, -EINVAL, P->t.line, "literal nested deeper than %u", ANES_MIL_MAX_NEST);
			TRY(next(P));
			if (P->t.k == T_RB)
				return perr(P, -EINVAL, P->t.line, "empty list in tensor literal");
			continue;
		}
		if (n >= t->count)
			return perr(P, -EINVAL, P->t.line, "tensor literal has more than the %llu elements of its type",
			            (unsigned long long)t->count);
		TRY(parse_elem_at(P, t, data, n));
		n++;
		while (P->t.k == T_RB) {
			TRY(next(P));
			if (--depth == 0)
				goto done;
		}
		TRY(expect(P, T_COMMA, "between tensor elements"));
	}
done:
	if (n != t->count)
		return perr(P, -EINVAL, line, "tensor literal has %llu elements, its type has %llu",
		            (unsigned long long)n, (unsigned long long)t->count);
	return 0;
}

/* A typed literal; the current token is the type word.  Fills v (type, data,
 * kind CONST, line). */
static int parse_literal(parser *P, anes_mil_value *v)
{
	uint32_t line = P->t.line;
	char d[48];

	memset(v, 0, sizeof *v);
	v->kind = ANES_MIL_V_CONST;
	v->line = line;
	if (!tok_is(&P->t, "tensor") && anes_mil_dtype_parse(P->t.s, P->t.len) < 0)
		return perr(P, -ENOTSUP, line, "unsupported literal type %s", tok_desc(&P->t, d, sizeof d));
	TRY(parse_type(P, &v->type));
	TRY(expect(P, T_LP, "to open the literal"));
	if (v->type.dtype == ANES_MIL_DT_STRING) {
		const char *s;
		size_t n;
		TRY(take_string(P, &s, &n));
		v->data = s;
		v->type.bytes = n + 1;
	} else if (tok_is(&P->t, "BLOBFILE")) {
		void *data = NULL;
		TRY(parse_blobfile(P, &v->type, &data));
		v->data = data;
	} else {
		size_t remaining = (size_t)(P->end - P->p);
		if (v->type.count > remaining + 1)
			return perr(P, -EINVAL, line, "literal is shorter than its type's %llu elements",
			            (unsigned long long)v->type.count);
		/* tensors 64-byte aligned (the kernels' loads); scalars need only 8 */
		uint8_t *data = v->type.bytes <= 8 ? mil_arena_alloc_small(P->arena, (size_t)v->type.bytes)
		                                   : mil_arena_alloc(P->arena, (size_t)v->type.bytes);
		if (!data)
			return nomem(P);
		/* scalars, and one-element tensors written without brackets:
		 * tensor<int32, [1]>(-1) */
		if (v->type.count == 1 && P->t.k != T_LB)
			TRY(parse_elem_at(P, &v->type, data, 0));
		else
			TRY(parse_elements(P, &v->type, data));
		v->data = data;
	}
	return expect(P, T_RP, "to close the literal");
}

/* ---- attribute values (program and function attributes) ----
 *
 * Attribute values are any MIL value: a typed value TYPE(V) where TYPE is a
 * type word with an optional <...> (tuple<...>, dict<...>, list<..., ?>,
 * tensor<...>, string, ...), or a bare V: a string, a number, true/false,
 * (a, b) tuples, {k, v} dict entries and [a, b] lists, nested.  They are
 * parsed into a small tree (arena, bounded by the statement limit and
 * ANES_MIL_MAX_NEST) that function attributes read
 * (FlexibleShapeInformation); other attributes are dropped. */

typedef struct anode {
	char kind;              /* 's' string, 'n' number, 'b' bool, '(' '{' '[' lists */
	uint32_t n;             /* children of a list */
	struct anode *kid, *next;
	const char *s;          /* 's': decoded, NUL-terminated; 'n': the token text */
	size_t len;
	uint32_t line;
} anode;

/* a type's <...>, balanced, skipped; '<' is current */
static int skip_type_args(parser *P)
{
	uint32_t depth = 0;
	char d[48];

	do {
		switch (P->t.k) {
		case T_LT:
			if (++depth > ANES_MIL_MAX_NEST)
				return perr(P, -EINVAL, P->t.line, "type nested deeper than %u", ANES_MIL_MAX_NEST);
			break;
		case T_GT: depth--; break;
		case T_IDENT: case T_NUM: case T_COMMA: case T_LB: case T_RB: case T_QUEST: break;
		default:
			return perr(P, -EINVAL, P->t.line, "unexpected %s in a type", tok_desc(&P->t, d, sizeof d));
		}
		TRY(next(P));
	} while (depth);
	return 0;
}

static int parse_anode(parser *P, uint32_t depth, anode **ret);

/* items up to the closing token; the opening one was consumed */
static int parse_alist(parser *P, uint32_t depth, char kind, tkind close, anode **ret)
{
	anode *l = mil_arena_alloc(P->arena, sizeof *l), **tail;

	if (!l)
		return nomem(P);
	l->kind = kind;
	l->line = P->t.line;
	tail = &l->kid;
	while (P->t.k != close) {
		TRY(parse_anode(P, depth + 1, tail));
		tail = &(*tail)->next;
		l->n++;
		if (P->t.k != T_COMMA)
			break;
		TRY(next(P));
	}
	TRY(expect(P, close, "to close the attribute value"));
	*ret = l;
	return 0;
}

static int parse_anode(parser *P, uint32_t depth, anode **ret)
{
	uint32_t line = P->t.line;
	anode *a;
	char d[48];

	if (depth > ANES_MIL_MAX_NEST)
		return perr(P, -EINVAL, line, "attribute value nested deeper than %u", ANES_MIL_MAX_NEST);
	TRY(count_stmt(P, line));
	if (P->t.k == T_LP)
		return next(P) ? -EINVAL : parse_alist(P, depth, '(', T_RP, ret);
	if (P->t.k == T_LC)
		return next(P) ? -EINVAL : parse_alist(P, depth, '{', T_RC, ret);
	if (P->t.k == T_LB)
		return next(P) ? -EINVAL : parse_alist(P, depth, '[', T_RB, ret);
	a = mil_arena_alloc(P->arena, sizeof *a);
	if (!a)
		return nomem(P);
	a->line = line;
	if (P->t.k == T_STR) {
		a->kind = 's';
		TRY(take_string(P, &a->s, &a->len));
	} else if (P->t.k == T_NUM || P->t.k == T_MINUS) {
		const char *s = P->t.s;
		if (P->t.k == T_MINUS)
			TRY(next(P));
		if (P->t.k != T_NUM && !tok_is(&P->t, "inf"))
			return perr(P, -EINVAL, P->t.line, "expected a number, got %s", tok_desc(&P->t, d, sizeof d));
		a->kind = 'n';
		a->s = s;
		a->len = (size_t)(P->t.s + P->t.len - s);
		TRY(next(P));
	} else if (tok_is(&P->t, "true") || tok_is(&P->t, "false")) {
		a->kind = 'b';
		a->s = P->t.s;
		a->len = P->t.len;
		TRY(next(P));
	} else if (tok_is(&P->t, "inf") || tok_is(&P->t, "nan")) {
		a->kind = 'n';
		a->s = P->t.s;
		a->len = P->t.len;
		TRY(next(P));
	} else if (P->t.k == T_IDENT) {
		/* TYPE(V): the value inside stands for the whole */
		TRY(next(P));
		if (P->t.k == T_LT)
			TRY(skip_type_args(P));
		TRY(expect(P, T_LP, "after the type of an attribute value"));
		if (P->t.k == T_RP) {
			a->kind = '(';
		} else {
			TRY(parse_anode(P, depth + 1, &a));
			if (P->t.k == T_COMMA) {
				/* several values: a list */
				anode *l = mil_arena_alloc(P->arena, sizeof *l), **tail = &l->kid;
				if (!l)
					return nomem(P);
				l->kind = '(';
				l->line = line;
				*tail = a;
				tail = &a->next;
				l->n = 1;
				while (P->t.k == T_COMMA) {
					TRY(next(P));
					TRY(parse_anode(P, depth + 1, tail));
					tail = &(*tail)->next;
					l->n++;
				}
				a = l;
			}
		}
		TRY(expect(P, T_RP, "to close the attribute value"));
	} else {
		return perr(P, -EINVAL, line, "expected an attribute value, got %s", tok_desc(&P->t, d, sizeof d));
	}
	*ret = a;
	return 0;
}

/* [name = value, ...]; '[' is current.  Calls back for each attribute. */
typedef int (*attr_fn)(parser *P, const char *name, size_t len, anode *val, void *ctx);

static int parse_attrs(parser *P, const char *what, attr_fn fn, void *ctx)
{
	uint32_t n = 0;
	char d[48];

	TRY(next(P));
	while (P->t.k != T_RB) {
		const char *name;
		size_t len;
		anode *val;
		if (++n > ANES_MIL_MAX_ARGS)
			return perr(P, -EINVAL, P->t.line, "more than %u %s attributes", ANES_MIL_MAX_ARGS, what);
		if (P->t.k != T_IDENT)
			return perr(P, -EINVAL, P->t.line, "expected an attribute name, got %s",
			            tok_desc(&P->t, d, sizeof d));
		name = P->t.s;
		len = P->t.len;
		TRY(next(P));
		TRY(expect(P, T_EQ, "after the attribute name"));
		TRY(parse_anode(P, 0, &val));
		if (fn)
			TRY(fn(P, name, len, val, ctx));
		if (P->t.k != T_COMMA)
			break;
		TRY(next(P));
	}
	char ctxmsg[48];
	snprintf(ctxmsg, sizeof ctxmsg, "to close the %s attributes", what);
	return expect(P, T_RB, ctxmsg);
}

/* ---- argument values ---- */

/* one argument value: a reference or a literal; adds literals as anonymous
 * constants; returns the value index */
static int parse_single(parser *P, uint32_t *ret)
{
	fnstate *F = P->fn;
	uint32_t line = P->t.line;
	anes_mil_value v;
	char d[48];

	if (P->t.k == T_IDENT) {
		const char *name = NULL;
		size_t name_len = 0;
		/* typed literal: the type word followed by '(' or '<' */
		if (is_type_word(&P->t)) {
			const char *save_p = P->p;
			uint32_t save_line = P->line;
			tok save_t = P->t;
			TRY(next(P));
			bool lit = P->t.k == T_LP || P->t.k == T_LT;
			P->p = save_p;
			P->line = save_line;
			P->t = save_t;
			if (lit) {
				TRY(parse_literal(P, &v));
				return add_value(P, &v, ret);
			}
		}
		if (tok_is(&P->t, "true") || tok_is(&P->t, "false")) {
			memset(&v, 0, sizeof v);
			if (fn_lookup(F, tok_is(&P->t, "true") ? "true" : "false") < 0) {
				uint8_t *b = mil_arena_alloc_small(P->arena, 1);
				if (!b)
					return nomem(P);
				*b = tok_is(&P->t, "true");
				anes_mil_type_init(&v.type, ANES_DT_BOOL, 0, NULL);
				v.kind = ANES_MIL_V_CONST;
				v.line = line;
				v.data = b;
				TRY(next(P));
				return add_value(P, &v, ret);
			}
		}
		TRY(take_ident(P, &name, &name_len, "a value name"));
		int32_t idx = fn_lookup_n(F, name, name_len);
		if (idx < 0)
			return perr(P, -EINVAL, line, "undefined value '%.*s'", (int)name_len, name);
		*ret = (uint32_t)idx;
		return 0;
	}
	if (P->t.k == T_STR) {
		memset(&v, 0, sizeof v);
		const char *s;
		size_t n;
		TRY(take_string(P, &s, &n));
		v.type.dtype = ANES_MIL_DT_STRING;
		v.type.count = 1;
		v.type.bytes = n + 1;
		v.kind = ANES_MIL_V_CONST;
		v.line = line;
		v.data = s;
		return add_value(P, &v, ret);
	}
	if (P->t.k == T_NUM || P->t.k == T_MINUS) {
		/* bare number: int32 if integral text, else fp32 */
		bool is_int = P->t.k == T_NUM;
		for (size_t i = 0; is_int && i < P->t.len; i++)
			if (!is_digit(P->t.s[i]) && !(i == 0 && P->t.s[i] == '-'))
				is_int = false;
		int dt = is_int ? ANES_DT_INT32 : ANES_DT_FP32;
		memset(&v, 0, sizeof v);
		void *data = mil_arena_alloc_small(P->arena, 4);
		if (!data)
			return nomem(P);
		anes_mil_type_init(&v.type, dt, 0, NULL);
		TRY(parse_elem(P, dt, data));
		v.kind = ANES_MIL_V_CONST;
		v.line = line;
		v.data = data;
		return add_value(P, &v, ret);
	}
	return perr(P, -EINVAL, line, "expected a value, got %s", tok_desc(&P->t, d, sizeof d));
}

/* NAME = value-or-tuple, into arg (names copied to the arena) */
static int parse_arg(parser *P, anes_mil_arg *arg)
{
	TRY(take_name(P, &arg->name, "an argument name"));
	TRY(expect(P, T_EQ, "after the argument name"));
	if (P->t.k == T_LP) {
		uint32_t tmp[ANES_MIL_MAX_TUPLE], n = 0;
		TRY(next(P));
		for (;;) {
			if (n == ANES_MIL_MAX_TUPLE)
				return perr(P, -EINVAL, P->t.line, "tuple has more than %u elements", ANES_MIL_MAX_TUPLE);
			TRY(parse_single(P, &tmp[n]));
			n++;
			if (P->t.k != T_COMMA)
				break;
			TRY(next(P));
		}
		TRY(expect(P, T_RP, "to close the tuple"));
		uint32_t *vals = mil_arena_alloc_small(P->arena, n * sizeof *vals);
		if (!vals)
			return nomem(P);
		memcpy(vals, tmp, n * sizeof *vals);
		arg->is_tuple = true;
		arg->n = n;
		arg->vals = vals;
		return 0;
	}
	uint32_t *vals = mil_arena_alloc_small(P->arena, sizeof *vals);
	if (!vals)
		return nomem(P);
	TRY(parse_single(P, vals));
	arg->is_tuple = false;
	arg->n = 1;
	arg->vals = vals;
	return 0;
}

/* (a = v, ...) or [a = v, ...]; closing token kind given */
static int parse_arglist(parser *P, tkind close, anes_mil_arg *args, uint32_t *ret_n)
{
	uint32_t n = 0;

	if (P->t.k != close) {
		for (;;) {
			if (n == ANES_MIL_MAX_ARGS)
				return perr(P, -EINVAL, P->t.line, "more than %u arguments", ANES_MIL_MAX_ARGS);
			TRY(parse_arg(P, &args[n]));
			for (uint32_t i = 0; i < n; i++)
				if (strcmp(args[i].name, args[n].name) == 0)
					return perr(P, -EINVAL, P->t.line, "duplicate argument '%s'", args[n].name);
			n++;
			if (P->t.k != T_COMMA)
				break;
			TRY(next(P));
		}
	}
	TRY(expect(P, close, "to close the argument list"));
	*ret_n = n;
	return 0;
}

/* ---- statements ---- */

static const anes_mil_function *fn_view(fnstate *F)
{
	F->f.values = F->values;
	F->f.n_values = F->nv;
	F->f.ops = F->ops;
	F->f.n_ops = F->nops;
	return &F->f;
}

/* true if t has a '?' dimension */
static bool type_flexible(const anes_mil_type *t)
{
	for (uint32_t i = 0; i < t->rank; i++)
		if (t->shape[i] == 0)
			return true;
	return false;
}

/* a declared type with '?' dimensions matches an inferred one of the same
 * dtype and rank that agrees on the known dimensions */
static bool flex_matches(const anes_mil_type *decl, const anes_mil_type *t)
{
	if (decl->dtype != t->dtype || decl->rank != t->rank)
		return false;
	for (uint32_t i = 0; i < decl->rank; i++)
		if (decl->shape[i] && decl->shape[i] != t->shape[i])
			return false;
	return true;
}

static int check_op(parser *P, anes_mil_op *op, anes_mil_type *decl, const char *const *names,
                    anes_mil_type *inferred)
{
	const anes_mil_opdef *def = op->def;
	const anes_mil_function *fn = fn_view(P->fn);
	anes_mil_check *c = &P->chk;

	for (uint32_t i = 0; i < op->n_args; i++) {
		const anes_mil_arg *a = &op->args[i];
		const anes_mil_argdef *ad = NULL;
		for (const anes_mil_argdef *x = def->args; x->name; x++)
			if (strcmp(x->name, a->name) == 0)
				ad = x;
		if (!ad)
			return anes_mil_fail(c, op, -EINVAL, "unknown argument '%s'", a->name);
		if ((ad->flags & ANES_MIL_ARG_TUPLE) && !a->is_tuple)
			return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a tuple (a, b, ...)", a->name);
		if (!(ad->flags & ANES_MIL_ARG_TUPLE) && a->is_tuple)
			return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a single value, not a tuple", a->name);
		for (uint32_t j = 0; j < a->n; j++) {
			bool st = fn->values[a->vals[j]].is_state;
			if (st && !(ad->flags & ANES_MIL_ARG_STATE))
				return anes_mil_fail(c, op, -EINVAL,
				                     "argument '%s' is the state '%s': only read_state, write_state and "
				                     "coreml_update_state take a state", a->name, fn->values[a->vals[j]].name);
			if (!st && (ad->flags & ANES_MIL_ARG_STATE))
				return anes_mil_fail(c, op, -EINVAL, "argument '%s' must be a state input (state<...>)",
				                     a->name);
		}
		if (ad->flags & ANES_MIL_ARG_CONST)
			for (uint32_t j = 0; j < a->n; j++)
				if (fn->values[a->vals[j]].kind != ANES_MIL_V_CONST)
					return anes_mil_fail(c, op, -ENOTSUP, "argument '%s' must be a constant", a->name);
		for (uint32_t j = 0; j < a->n; j++) {
			int adt = fn->values[a->vals[j]].type.dtype;
			if (adt == ANES_MIL_DT_STRING && !(ad->flags & ANES_MIL_ARG_CONST))
				return anes_mil_fail(c, op, -EINVAL, "argument '%s' cannot be a string", a->name);
			if (anes_mil_dtype_is_storage(adt) && strncmp(def->name, "constexpr_", 10) != 0)
				return anes_mil_fail(c, op, -ENOTSUP,
				                     "argument '%s' is %s, which only constexpr_* ops take", a->name,
				                     anes_mil_dtype_name(adt));
		}
	}
	for (const anes_mil_argdef *x = def->args; x->name; x++)
		if ((x->flags & ANES_MIL_ARG_REQ) && !anes_mil_op_arg(op, x->name))
			return anes_mil_fail(c, op, -EINVAL, "missing required argument '%s'", x->name);
	if (def->n_outputs && def->n_outputs != op->n_outputs)
		return anes_mil_fail(c, op, -EINVAL, "has %u outputs, %u declared", def->n_outputs, op->n_outputs);
	for (uint32_t i = 0; i < op->n_outputs; i++)
		memset(&inferred[i], 0, sizeof inferred[i]);
	TRY(def->infer(c, fn, op, inferred));
	for (uint32_t i = 0; i < op->n_outputs; i++) {
		if (type_flexible(&decl[i]) && flex_matches(&decl[i], &inferred[i])) {
			decl[i] = inferred[i];   /* the shape the function's shapes give it */
			continue;
		}
		if (!anes_mil_type_equal(&decl[i], &inferred[i])) {
			char a[96], b[96];
			return anes_mil_fail(c, op, -EINVAL, "declared type %s of '%s' does not match the inferred %s",
			                     anes_mil_type_str(&decl[i], a, sizeof a), names[i],
			                     anes_mil_type_str(&inferred[i], b, sizeof b));
		}
	}
	return 0;
}

static int parse_stmt(parser *P)
{
	fnstate *F = P->fn;
	uint32_t line = P->t.line;
	const char *stmt_begin = P->t.s;
	const char *stmt_end;
	anes_mil_type decl[ANES_MIL_MAX_OUTPUTS];
	const char *names[ANES_MIL_MAX_OUTPUTS];
	anes_mil_arg args[ANES_MIL_MAX_ARGS], attrs[ANES_MIL_MAX_ARGS];
	uint32_t n_out = 0, n_args = 0, n_attrs = 0;
	const char *opname_s = NULL;
	size_t opname_len = 0;
	char opname[64];
	uint32_t op_line;
	char d[48];

	names[0] = "";
	if (P->t.k == T_LP) {
		TRY(next(P));
		for (;;) {
			if (n_out == ANES_MIL_MAX_OUTPUTS)
				return perr(P, -EINVAL, P->t.line, "more than %u outputs", ANES_MIL_MAX_OUTPUTS);
			P->flex_ok = true;
			int rc = parse_type(P, &decl[n_out]);
			P->flex_ok = false;
			TRY(rc);
			TRY(take_name(P, &names[n_out], "an output name"));
			n_out++;
			if (P->t.k != T_COMMA)
				break;
			TRY(next(P));
		}
		TRY(expect(P, T_RP, "after the outputs"));
	} else if (P->t.k == T_IDENT && !is_type_word(&P->t)) {
		/* an op without outputs: write_state(input = s, data = x)[...]; */
	} else {
		if (!is_type_word(&P->t))
			return perr(P, -EINVAL, line, "expected a statement, got %s", tok_desc(&P->t, d, sizeof d));
		/* one output, or several: "tensor<...> a, tensor<...> b = split(...)" */
		for (;;) {
			if (n_out == ANES_MIL_MAX_OUTPUTS)
				return perr(P, -EINVAL, P->t.line, "more than %u outputs", ANES_MIL_MAX_OUTPUTS);
			P->flex_ok = true;
			int rc = parse_type(P, &decl[n_out]);
			P->flex_ok = false;
			TRY(rc);
			TRY(take_name(P, &names[n_out], "a value name"));
			n_out++;
			if (P->t.k != T_COMMA)
				break;
			TRY(next(P));
		}
	}
	if (n_out)
		TRY(expect(P, T_EQ, "after the declared value"));
	op_line = P->t.line;
	TRY(take_ident(P, &opname_s, &opname_len, "an op name"));
	/* op names are short; a longer one is unknown, named by its start */
	snprintf(opname, sizeof opname, "%.*s", (int)opname_len, opname_s);
	TRY(expect(P, T_LP, "after the op name"));
	if (opname_len == 5 && memcmp(opname_s, "const", 5) == 0) {
		const anes_mil_value *val = NULL;
		TRY(parse_arglist(P, T_RP, args, &n_args));
		if (n_args)
			return perr(P, -EINVAL, op_line, "const() takes no arguments (%s)", names[0]);
		if (P->t.k != T_LB)
			return perr(P, -EINVAL, op_line, "const (%s) needs a [val = ...] attribute", names[0]);
		TRY(next(P));
		TRY(parse_arglist(P, T_RB, attrs, &n_attrs));
		TRY(expect(P, T_SEMI, "after the statement"));
		if (n_out != 1)
			return perr(P, -EINVAL, line, "const (%s) has exactly one output", names[0]);
		if (type_flexible(&decl[0]))
			return perr(P, -EINVAL, line, "const (%s) has a '?' dimension", names[0]);
		for (uint32_t i = 0; i < n_attrs; i++)
			if (strcmp(attrs[i].name, "val") == 0 && !attrs[i].is_tuple)
				val = &F->values[attrs[i].vals[0]];
		if (!val)
			return perr(P, -EINVAL, line, "const (%s) needs a val attribute", names[0]);
		if (val->kind != ANES_MIL_V_CONST)
			return perr(P, -EINVAL, line, "const (%s): val must be a literal", names[0]);
		if (!anes_mil_type_equal(&val->type, &decl[0])) {
			char a[96], b[96];
			return perr(P, -EINVAL, line, "const (%s): declared type %s does not match value of type %s",
			            names[0], anes_mil_type_str(&decl[0], a, sizeof a),
			            anes_mil_type_str(&val->type, b, sizeof b));
		}
		anes_mil_value v = *val;
		uint32_t idx;
		v.name = names[0];
		v.line = line;
		/* the literal's bytes were already counted once */
		P->total_bytes -= v.type.bytes;
		return add_value(P, &v, &idx);
	}

	const anes_mil_opdef *def = anes_mil_opdef_find(opname_s, opname_len);
	if (!def)
		return perr(P, -ENOTSUP, op_line, "unknown op '%s' (%s)", opname, names[0]);
	TRY(parse_arglist(P, T_RP, args, &n_args));
	if (P->t.k == T_LB) {
		TRY(next(P));
		TRY(parse_arglist(P, T_RB, attrs, &n_attrs));
	}
	stmt_end = P->t.s + 1;   /* past the ';' (when it is one: expect checks) */
	TRY(expect(P, T_SEMI, "after the statement"));
	/* An attribute named like one of the op's arguments is that argument:
	 * coremltools (iOS <= 17) prints constexpr ops with their inputs inside
	 * the bracket, constexpr_affine_dequantize()[axis = ..., scale = ...]. */
	for (uint32_t i = 0; i < n_attrs; i++) {
		bool is_arg = false;
		for (const anes_mil_argdef *x = def->args; x->name; x++)
			if (strcmp(x->name, attrs[i].name) == 0)
				is_arg = true;
		if (!is_arg)
			continue;
		for (uint32_t j = 0; j < n_args; j++)
			if (strcmp(args[j].name, attrs[i].name) == 0)
				return perr(P, -EINVAL, line, "argument '%s' of '%s' (%s) is given twice", attrs[i].name,
				            opname, names[0]);
		if (n_args == ANES_MIL_MAX_ARGS)
			return perr(P, -EINVAL, line, "more than %u arguments", ANES_MIL_MAX_ARGS);
		args[n_args++] = attrs[i];
	}

	anes_mil_op op;
	memset(&op, 0, sizeof op);
	op.def = def;
	op.line = line;
	op.text_begin = (uint32_t)(stmt_begin - P->base);
	op.text_end = (uint32_t)(stmt_end - P->base);
	for (uint32_t i = 0; i < n_attrs; i++) {
		const char *s;
		if (strcmp(attrs[i].name, "name") == 0 && !attrs[i].is_tuple &&
		    (s = anes_mil_const_string(&F->values[attrs[i].vals[0]])) != NULL)
			op.name = s;
	}
	if (!op.name)
		op.name = names[0];
	anes_mil_arg *a = mil_arena_alloc_small(P->arena, (n_args ? n_args : 1) * sizeof *a);
	uint32_t *outs = mil_arena_alloc_small(P->arena, (n_out ? n_out : 1) * sizeof *outs);
	if (!a || !outs)
		return nomem(P);
	memcpy(a, args, n_args * sizeof *a);
	op.args = a;
	op.n_args = n_args;
	op.n_outputs = n_out;
	op.outputs = outs;

	anes_mil_type inferred[ANES_MIL_MAX_OUTPUTS];
	TRY(check_op(P, &op, decl, names, inferred));

	if (F->nops == F->capops) {
		uint32_t ncap = F->capops ? F->capops * 2 : 32;
		anes_mil_op *no = realloc(F->ops, (size_t)ncap * sizeof *no);
		if (!no)
			return nomem(P);
		F->ops = no;
		F->capops = ncap;
	}
	uint32_t op_idx = F->nops;
	for (uint32_t i = 0; i < n_out; i++) {
		anes_mil_value v;
		memset(&v, 0, sizeof v);
		v.name = names[i];
		v.type = decl[i];
		v.kind = ANES_MIL_V_OP;
		v.line = line;
		v.op = op_idx;
		v.out_index = i;
		TRY(add_value(P, &v, &outs[i]));
	}
	F->ops[F->nops++] = op;
	return 0;
}

/* ---- functions and program ---- */

/* The opsets of Core ML 5-9 (iOS 15-18 and 26), by both of their names:
 * coremlc writes CoreMLN, coremltools' text iosNN. */
#define OPSETS_TEXT "ios15-ios18, ios26, CoreML5-CoreML9"
static bool opset_known(const char *s)
{
	static const char *const known[] = {
		"ios15", "ios16", "ios17", "ios18", "ios26",
		"CoreML5", "CoreML6", "CoreML7", "CoreML8", "CoreML9",
	};
	for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
		if (strcmp(s, known[i]) == 0)
			return true;
	return false;
}

static void fnstate_free(fnstate *F)
{
	free(F->values);
	free(F->ops);
	free(F->hash);
	memset(F, 0, sizeof *F);
}

/* ---- flexible shapes (FlexibleShapeInformation) ---- */

static int fn_attr(parser *P, const char *name, size_t len, anode *val, void *ctx)
{
	(void)P;
	if (len == 24 && memcmp(name, "FlexibleShapeInformation", 24) == 0)
		*(anode **)ctx = val;
	return 0;
}

/* the value after the string key in a (key, value) or {key, value} pair
 * anywhere in a, or NULL */
static const anode *find_keyed(const anode *a, const char *key, uint32_t depth)
{
	if (!a || a->kind == 's' || a->kind == 'n' || a->kind == 'b' || depth > ANES_MIL_MAX_NEST + 1)
		return NULL;
	if (a->n == 2 && a->kid->kind == 's' && strcmp(a->kid->s, key) == 0)
		return a->kid->next;
	for (const anode *k = a->kid; k; k = k->next) {
		const anode *r = find_keyed(k, key, depth + 1);
		if (r)
			return r;
	}
	return NULL;
}

/* the value of key in a dict {{k, v}, ...} (a list of pairs), or NULL */
static const anode *dict_get(const anode *d, const char *key)
{
	if (!d || (d->kind != '{' && d->kind != '(' && d->kind != '['))
		return NULL;
	for (const anode *e = d->kid; e; e = e->next)
		if (e->kind != 's' && e->kind != 'n' && e->kind != 'b' && e->n == 2 && e->kid->kind == 's' &&
		    strcmp(e->kid->s, key) == 0)
			return e->kid->next;
	return NULL;
}

/* Give input v (with '?' dimensions) its shape from shapes (a dict input
 * name -> [d0, d1, ...]); where says which shapes these are. */
static int resolve_input(parser *P, const char *fname, anes_mil_value *v, const anode *shapes, const char *where)
{
	const anode *sh = dict_get(shapes, v->name);
	uint64_t dims[ANES_MAX_RANK];
	uint32_t n = 0;

	if (!sh)
		return perr(P, -ENOTSUP, v->line,
		            "input '%s' of function '%s' has a '?' dimension and %s gives it no shape", v->name,
		            fname, where);
	if (sh->kind != '[' && sh->kind != '(')
		return perr(P, -EINVAL, sh->line, "the shape of input '%s' in %s is not a list", v->name, where);
	for (const anode *d = sh->kid; d; d = d->next) {
		char buf[72], *end;
		if (d->kind != 'n' || d->len >= sizeof buf || n == ANES_MAX_RANK)
			return perr(P, -EINVAL, d->line, "bad shape of input '%s' in %s", v->name, where);
		memcpy(buf, d->s, d->len);
		buf[d->len] = 0;
		errno = 0;
		unsigned long long x = strtoull(buf, &end, 10);
		if (*end || buf[0] == '-' || errno || x == 0 || x > ANES_MIL_MAX_DIM)
			return perr(P, -EINVAL, d->line, "bad dimension '%s' of input '%s' in %s", buf, v->name, where);
		dims[n++] = x;
	}
	if (n != v->type.rank)
		return perr(P, -EINVAL, sh->line, "%s gives input '%s' %u dimensions, it has %u", where, v->name, n,
		            v->type.rank);
	for (uint32_t i = 0; i < n; i++)
		if (v->type.shape[i] && v->type.shape[i] != dims[i])
			return perr(P, -EINVAL, sh->line, "%s gives input '%s' dimension %u = %llu, it is %llu", where,
			            v->name, i, (unsigned long long)dims[i], (unsigned long long)v->type.shape[i]);
	if (anes_mil_type_init(&v->type, v->type.dtype, n, dims))
		return perr(P, -EINVAL, sh->line, "input '%s' in %s is larger than %llu bytes", v->name, where,
		            (unsigned long long)P->lim.max_tensor_bytes);
	return 0;
}

/* Parse one function.  With FlexibleShapeInformation, variant -1 gives its
 * '?' input dimensions the DefaultShapes (else the first of the
 * EnumeratedShapes), variant k the k-th enumerated shape (its name becomes
 * "NAME/KEY"); *ret_variants says how many enumerated shapes it has. */
static int parse_function(parser *P, anes_mil_function *out, int variant, uint32_t *ret_variants)
{
	fnstate *F = P->fn;
	uint32_t ins[ANES_MAX_IO], outs[ANES_MAX_IO], sts[ANES_MAX_IO], n_in = 0, n_out = 0;
	anes_mil_value pend[ANES_MAX_IO];
	bool flexible = false;
	anode *flex = NULL;
	char d[48];

	*ret_variants = 0;
	F->f.line = P->t.line;
	TRY(expect_word(P, "func", "to start a function"));
	F->f.opset = "";
	TRY(take_name(P, &F->f.name, "a function name"));
	if (P->t.k == T_LT) {
		uint32_t line = P->t.line;
		TRY(next(P));
		TRY(take_name(P, &F->f.opset, "an opset name"));
		if (!opset_known(F->f.opset))
			return perr(P, -ENOTSUP, line, "unsupported opset '%s' of function '%s' (known: %s)",
			            F->f.opset, F->f.name, OPSETS_TEXT);
		TRY(expect(P, T_GT, "after the opset"));
	}
	TRY(expect(P, T_LP, "to open the function inputs"));
	if (P->t.k != T_RP) {
		for (;;) {
			if (n_in == P->lim.max_io)   /* before pend[n_in] is touched: max_io may be ANES_MAX_IO */
				return perr(P, -EINVAL, P->t.line, "function '%s' has more than %u inputs", F->f.name,
				            P->lim.max_io);
			anes_mil_value *v = &pend[n_in];
			memset(v, 0, sizeof *v);
			v->line = P->t.line;
			v->kind = ANES_MIL_V_INPUT;
			if (tok_is(&P->t, "state")) {
				/* state<tensor<...>>: kept by the caller between runs */
				TRY(next(P));
				TRY(expect(P, T_LT, "after 'state'"));
				if (!tok_is(&P->t, "tensor"))
					return perr(P, -ENOTSUP, P->t.line, "a state holds a tensor");
				TRY(parse_type(P, &v->type));
				TRY(expect(P, T_GT, "to close the state type"));
				v->is_state = true;
			} else {
				P->flex_ok = true;
				int rc = parse_type(P, &v->type);
				P->flex_ok = false;
				TRY(rc);
			}
			if (v->type.dtype == ANES_MIL_DT_STRING || anes_mil_dtype_is_storage(v->type.dtype))
				return perr(P, -ENOTSUP, v->line, "function input of type %s is not supported",
				            anes_mil_dtype_name(v->type.dtype));
			flexible |= type_flexible(&v->type);
			TRY(take_name(P, &v->name, "an input name"));
			n_in++;
			if (P->t.k != T_COMMA)
				break;
			TRY(next(P));
		}
	}
	TRY(expect(P, T_RP, "to close the function inputs"));
	/* function attributes, e.g. [FlexibleShapeInformation = ...] */
	if (P->t.k == T_LB)
		TRY(parse_attrs(P, "function", fn_attr, &flex));
	if (flexible) {
		const anode *dflt = find_keyed(flex, "DefaultShapes", 0);
		const anode *en = find_keyed(flex, "EnumeratedShapes", 0);
		const anode *shapes = dflt;
		const char *where = "DefaultShapes";
		char vname[64];
		if (en && en->kind != 's' && en->kind != 'n' && en->kind != 'b')
			*ret_variants = en->n;
		if (variant >= 0 || !shapes) {
			/* the k-th (or, without defaults, the first) enumerated shape */
			uint32_t k = variant >= 0 ? (uint32_t)variant : 0;
			const anode *e = en && *ret_variants > k ? en->kid : NULL;
			for (uint32_t i = 0; e && i < k; i++)
				e = e->next;
			if (!e || e->kind == 's' || e->kind == 'n' || e->kind == 'b' || e->n != 2 || e->kid->kind != 's') {
				const char *in = "";
				for (uint32_t i = 0; i < n_in && !*in; i++)
					if (type_flexible(&pend[i].type))
						in = pend[i].name;
				return perr(P, -ENOTSUP, F->f.line,
				            "function '%s' has inputs with '?' dimensions (input '%s') and no "
				            "FlexibleShapeInformation with DefaultShapes or EnumeratedShapes for them",
				            F->f.name, in);
			}
			shapes = e->kid->next;
			snprintf(vname, sizeof vname, "EnumeratedShapes '%.32s'", e->kid->s);
			where = vname;
			if (variant >= 0) {
				size_t fl = strlen(F->f.name), kl = e->kid->len;
				if (fl + 1 + kl > ANES_NAME_MAX)
					return perr(P, -EINVAL, F->f.line, "function '%s' with shape '%s': the name is longer "
					            "than %d bytes", F->f.name, e->kid->s, ANES_NAME_MAX);
				char *nm = mil_arena_strndup(P->arena, F->f.name, fl + 1 + kl);
				if (!nm)
					return nomem(P);
				nm[fl] = '/';
				memcpy(nm + fl + 1, e->kid->s, kl);
				F->f.name = nm;
			}
		}
		for (uint32_t i = 0; i < n_in; i++)
			if (type_flexible(&pend[i].type))
				TRY(resolve_input(P, F->f.name, &pend[i], shapes, where));
	}
	uint32_t n_args_in = n_in, n_st = 0;
	n_in = 0;
	for (uint32_t i = 0; i < n_args_in; i++) {
		uint32_t idx;
		TRY(add_value(P, &pend[i], &idx));
		if (pend[i].is_state)
			sts[n_st++] = idx;
		else
			ins[n_in++] = idx;
	}
	TRY(expect(P, T_LC, "to open the function body"));
	while (P->t.k != T_RC) {
		if (P->t.k == T_EOF)
			return perr(P, -EINVAL, P->t.line, "function '%s' is not closed with '}'", F->f.name);
		TRY(parse_stmt(P));
	}
	TRY(next(P));
	if (P->t.k != T_ARROW)
		return perr(P, -EINVAL, P->t.line, "expected '-> (outputs)' after the body of function '%s', got %s",
		            F->f.name, tok_desc(&P->t, d, sizeof d));
	TRY(next(P));
	TRY(expect(P, T_LP, "to open the function outputs"));
	for (;;) {
		const char *name;
		uint32_t line = P->t.line;
		if (n_out == P->lim.max_io)
			return perr(P, -EINVAL, line, "function '%s' has more than %u outputs", F->f.name, P->lim.max_io);
		TRY(take_name(P, &name, "an output name"));
		int32_t idx = fn_lookup(F, name);
		if (idx < 0)
			return perr(P, -EINVAL, line, "output '%s' of function '%s' is not defined", name, F->f.name);
		if (F->values[idx].is_state)
			return perr(P, -EINVAL, line, "output '%s' of function '%s' is a state (read_state gives its value)",
			            name, F->f.name);
		if (F->values[idx].type.dtype == ANES_MIL_DT_STRING ||
		    anes_mil_dtype_is_storage(F->values[idx].type.dtype))
			return perr(P, -ENOTSUP, line, "output '%s' of function '%s' is of type %s", name, F->f.name,
			            anes_mil_dtype_name(F->values[idx].type.dtype));
		outs[n_out++] = (uint32_t)idx;
		if (P->t.k != T_COMMA)
			break;
		TRY(next(P));
	}
	TRY(expect(P, T_RP, "to close the function outputs"));
	if (P->t.k == T_SEMI)
		TRY(next(P));

	/* move into the arena */
	*out = F->f;
	uint32_t *i_arr = mil_arena_alloc(P->arena, (n_in ? n_in : 1) * sizeof(uint32_t));
	uint32_t *o_arr = mil_arena_alloc(P->arena, n_out * sizeof(uint32_t));
	uint32_t *s_arr = mil_arena_alloc_small(P->arena, (n_st ? n_st : 1) * sizeof(uint32_t));
	anes_mil_value *vals = mil_arena_alloc(P->arena, (F->nv ? F->nv : 1) * sizeof *vals);
	anes_mil_op *ops = mil_arena_alloc(P->arena, (F->nops ? F->nops : 1) * sizeof *ops);
	if (!i_arr || !o_arr || !s_arr || !vals || !ops)
		return nomem(P);
	memcpy(s_arr, sts, n_st * sizeof *s_arr);
	out->n_states = n_st;
	out->states = s_arr;
	memcpy(i_arr, ins, n_in * sizeof *i_arr);
	memcpy(o_arr, outs, n_out * sizeof *o_arr);
	if (F->nv)
		memcpy(vals, F->values, F->nv * sizeof *vals);
	if (F->nops)
		memcpy(ops, F->ops, F->nops * sizeof *ops);
	out->n_inputs = n_in;
	out->inputs = i_arr;
	out->n_outputs = n_out;
	out->outputs = o_arr;
	out->n_values = F->nv;
	out->values = vals;
	out->n_ops = F->nops;
	out->ops = ops;
	return 0;
}

static int fill_desc(parser *P, const anes_mil_function *f, uint32_t vidx, anes_tensor_desc *d)
{
	const anes_mil_value *v = &f->values[vidx];

	memset(d, 0, sizeof *d);
	if (anes_dtype_size((anes_dtype)v->type.dtype) == 0)
		return perr(P, -ENOTSUP, v->line, "'%s' of function '%s' has an unsupported type", v->name, f->name);
	d->name = v->name;
	d->dtype = (anes_dtype)v->type.dtype;
	d->rank = v->type.rank;
	for (uint32_t i = 0; i < v->type.rank; i++)
		d->shape[i] = v->type.shape[i];
	d->bytes = v->type.bytes;
	return 0;
}

static int parse_program(parser *P, anes_mil_program *prog)
{
	anes_mil_function funcs[ANES_MAX_FUNCTIONS];
	uint32_t nf = 0;
	char buf[72];
	char d[48];

	TRY(next(P));
	TRY(expect_word(P, "program", "at the start"));
	TRY(expect(P, T_LP, "after 'program'"));
	TRY(num_text(P, buf));
	if (P->t.len >= sizeof prog->version)
		return perr(P, -EINVAL, P->t.line, "bad program version");
	memcpy(prog->version, buf, P->t.len + 1);
	/* program(1), program(1.0), program(1.3): version 1 of the text */
	if (buf[0] != '1' || (buf[1] && (buf[1] != '.' || !is_digit(buf[2]))))
		return perr(P, -ENOTSUP, P->t.line, "unsupported program version %s", buf);
	TRY(next(P));
	TRY(expect(P, T_RP, "after the program version"));
	/* program attributes, e.g. [buildInfo = dict<string, string>({{"k", "v"}})]: dropped */
	if (P->t.k == T_LB)
		TRY(parse_attrs(P, "program", NULL, NULL));
	TRY(expect(P, T_LC, "to open the program body"));
	while (tok_is(&P->t, "func")) {
		/* the function, then again once per enumerated shape (as NAME/KEY),
		 * parsed from the same text */
		const char *at_p = P->p;
		uint32_t at_line = P->line;
		tok at_t = P->t;
		uint32_t n_variants = 0;
		for (int variant = -1; variant < (int)n_variants; variant++) {
			fnstate F;
			int rc;
			if (nf == P->lim.max_functions)
				return perr(P, -EINVAL, P->t.line,
				            "more than %u functions (the limit, --max-mil-functions; each enumerated "
				            "shape is one)", P->lim.max_functions);
			if (variant >= 0) {
				P->p = at_p;
				P->line = at_line;
				P->t = at_t;
			}
			memset(&F, 0, sizeof F);
			P->fn = &F;
			uint32_t nv = 0;
			rc = parse_function(P, &funcs[nf], variant, &nv);
			P->fn = NULL;
			fnstate_free(&F);
			if (rc)
				return rc;
			if (variant < 0)
				n_variants = nv;
			for (uint32_t i = 0; i < nf; i++)
				if (strcmp(funcs[i].name, funcs[nf].name) == 0)
					return perr(P, -EINVAL, funcs[nf].line, "redefinition of function '%s'",
					            funcs[nf].name);
			nf++;
		}
	}
	if (P->t.k != T_RC)
		return perr(P, -EINVAL, P->t.line, "expected 'func' or '}', got %s", tok_desc(&P->t, d, sizeof d));
	if (nf == 0)
		return perr(P, -EINVAL, P->t.line, "program has no functions");
	TRY(next(P));
	if (P->t.k != T_EOF)
		return perr(P, -EINVAL, P->t.line, "unexpected %s after the program", tok_desc(&P->t, d, sizeof d));

	/* "main" first, then file order */
	anes_mil_function *fa = mil_arena_alloc(P->arena, nf * sizeof *fa);
	anes_function_info *info = mil_arena_alloc(P->arena, nf * sizeof *info);
	if (!fa || !info)
		return nomem(P);
	uint32_t k = 0;
	for (uint32_t i = 0; i < nf; i++)
		if (strcmp(funcs[i].name, "main") == 0)
			fa[k++] = funcs[i];
	for (uint32_t i = 0; i < nf; i++)
		if (strcmp(funcs[i].name, "main") != 0)
			fa[k++] = funcs[i];
	for (uint32_t i = 0; i < nf; i++) {
		const anes_mil_function *f = &fa[i];
		anes_tensor_desc *in = mil_arena_alloc(P->arena, (f->n_inputs ? f->n_inputs : 1) * sizeof *in);
		anes_tensor_desc *out = mil_arena_alloc(P->arena, f->n_outputs * sizeof *out);
		anes_tensor_desc *st = mil_arena_alloc_small(P->arena, (f->n_states ? f->n_states : 1) * sizeof *st);
		if (!in || !out || !st)
			return nomem(P);
		for (uint32_t j = 0; j < f->n_states; j++)
			TRY(fill_desc(P, f, f->states[j], &st[j]));
		info[i].n_states = f->n_states;
		info[i].states = st;
		for (uint32_t j = 0; j < f->n_inputs; j++)
			TRY(fill_desc(P, f, f->inputs[j], &in[j]));
		for (uint32_t j = 0; j < f->n_outputs; j++)
			TRY(fill_desc(P, f, f->outputs[j], &out[j]));
		info[i].name = f->name;
		info[i].n_inputs = f->n_inputs;
		info[i].n_outputs = f->n_outputs;
		info[i].inputs = in;
		info[i].outputs = out;
	}
	prog->n_functions = nf;
	prog->functions = fa;
	prog->info = info;
	prog->total_bytes = P->total_bytes;
	return 0;
}

static int parse(const char *text, size_t len, const anes_weight *weights, size_t n_weights,
                 bool borrow, anes_mil_program **ret_prog, char *errbuf, size_t errbuf_len)
{
	parser P;
	anes_mil_program *prog;
	int rc;

	if (errbuf && errbuf_len)
		errbuf[0] = 0;
	memset(&P, 0, sizeof P);
	P.borrow = borrow;
	P.chk.errbuf = errbuf;
	P.chk.errbuf_len = errbuf_len;
	P.line = 1;
	if (!text && len)
		return perr(&P, -EINVAL, 0, "no program text");
	P.lim = *anes_mil_get_limits();
	if (len > P.lim.max_text)
		return perr(&P, -EINVAL, 0, "program text longer than %llu bytes (the limit, --max-mil-bytes)",
		            (unsigned long long)P.lim.max_text);
	if (n_weights && !weights)
		return perr(&P, -EINVAL, 0, "no weights");
	P.p = text ? text : "";
	P.base = P.p;
	P.end = P.p + len;
	P.weights = weights;
	P.n_weights = n_weights;
	P.arena = mil_arena_new();
	if (!P.arena)
		return perr(&P, -ENOMEM, 0, "out of memory");
	prog = mil_arena_alloc(P.arena, sizeof *prog);
	if (!prog) {
		mil_arena_free(P.arena);
		return perr(&P, -ENOMEM, 0, "out of memory");
	}
	rc = parse_program(&P, prog);
	if (rc) {
		if (!P.chk.failed)
			perr(&P, rc, P.t.line, "invalid program");
		mil_arena_free(P.arena);
		return rc;
	}
	prog->arena = P.arena;
	*ret_prog = prog;
	return 0;
}

int anes_mil_parse(const char *text, size_t len, const anes_weight *weights, size_t n_weights,
                   anes_mil_program **ret_prog, char *errbuf, size_t errbuf_len)
{
	return parse(text, len, weights, n_weights, false, ret_prog, errbuf, errbuf_len);
}

int anes_mil_parse_borrowed(const char *text, size_t len, const anes_weight *weights,
                            size_t n_weights, anes_mil_program **ret_prog, char *errbuf,
                            size_t errbuf_len)
{
	return parse(text, len, weights, n_weights, true, ret_prog, errbuf, errbuf_len);
}

void anes_mil_program_free(anes_mil_program *prog)
{
	if (prog)
		mil_arena_free(prog->arena);
}
