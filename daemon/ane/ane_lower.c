/* SPDX-License-Identifier: MIT */
/*
 * What the ANE backend does to a program's MIL text before the framework
 * sees it (docs/ane.md, "Which ops"): gelu is rewritten into verified ops,
 * because Orion (docs/ane_constraints.md, constraint 10) reports that gelu
 * fails ANECCompile().  The CPU backend keeps the exact gelu; only the ANE
 * path is rewritten.
 *
 * The rewrite works on the text: the parser records each op statement's
 * bytes (anes_mil_op.text_begin/text_end), and every gelu statement is
 * replaced by a sequence of statements on the same line, so every other
 * statement keeps its line number (and the errors about it stay true to the
 * client's text).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ane_backend.h"

typedef struct site {
	uint32_t begin, end;
	const anes_mil_function *fn;
	const anes_mil_op *op;
} site;

/* The named x of a gelu that can be rewritten, else NULL. */
static const anes_mil_value *gelu_x(const anes_mil_function *fn, const anes_mil_op *op)
{
	if (!op->def || strcmp(op->def->name, "gelu") != 0 || op->n_outputs != 1)
		return NULL;
	const anes_mil_value *x = anes_mil_op_value(fn, op, "x");
	if (!x || !x->name[0])
		return NULL;   /* an inline literal: left as it is (and reported unverified) */
	const anes_mil_value *y = &fn->values[op->outputs[0]];
	if (y->type.dtype != ANES_DT_FP16 && y->type.dtype != ANES_DT_FP32)
		return NULL;
	return x;
}

/* A prefix that no value name of the program starts with, so the names made
 * from it cannot clash.  false if none of the tries is free. */
static bool pick_prefix(const anes_mil_program *prog, char *buf, size_t len)
{
	for (int tries = 0; tries < 16; tries++) {
		snprintf(buf, len, "anes_gelu%.*s", tries, "________________");
		size_t plen = strlen(buf);
		bool clash = false;
		for (uint32_t f = 0; f < prog->n_functions && !clash; f++) {
			const anes_mil_function *fn = &prog->functions[f];
			for (uint32_t i = 0; i < fn->n_values && !clash; i++)
				clash = strncmp(fn->values[i].name, buf, plen) == 0;
		}
		if (!clash)
			return true;
	}
	return false;
}

static int cmp_site(const void *a, const void *b)
{
	const site *x = a, *y = b;
	return (x->begin > y->begin) - (x->begin < y->begin);
}

typedef struct out {
	char *buf;
	size_t len, cap;
	bool oom;
} out;

static void put(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out *o, const char *fmt, ...)
{
	va_list ap;

	if (o->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			o->oom = true;
			return;
		}
		if ((size_t)n < o->cap - o->len) {
			o->len += (size_t)n;
			return;
		}
		size_t ncap = o->cap * 2 + (size_t)n;
		char *nb = realloc(o->buf, ncap);
		if (!nb) {
			o->oom = true;
			return;
		}
		o->buf = nb;
		o->cap = ncap;
	}
}

static void put_bytes(out *o, const char *p, size_t n)
{
	if (o->oom)
		return;
	if (o->cap - o->len <= n) {
		size_t ncap = o->cap * 2 + n + 1;
		char *nb = realloc(o->buf, ncap);
		if (!nb) {
			o->oom = true;
			return;
		}
		o->buf = nb;
		o->cap = ncap;
	}
	memcpy(o->buf + o->len, p, n);
	o->len += n;
	o->buf[o->len] = '\0';
}

/* The statements that replace one gelu (all on one line). */
static void put_gelu(out *o, const anes_mil_function *fn, const anes_mil_op *op, const char *pfx,
                     size_t k)
{
	const anes_mil_value *x = gelu_x(fn, op);
	const anes_mil_value *y = &fn->values[op->outputs[0]];
	const anes_mil_value *m = anes_mil_op_value(fn, op, "mode");
	const char *mode = m ? anes_mil_const_string(m) : NULL;
	const char *dt = anes_mil_dtype_name(y->type.dtype);
	char t[160], p[64];

	anes_mil_type_str(&y->type, t, sizeof t);
	snprintf(p, sizeof p, "%s%zu", pfx, k);
	if (mode && strcmp(mode, "SIGMOID_APPROXIMATION") == 0) {
		/* x * sigmoid(1.702 x) */
		put(o, "%s %s_c = const()[name = string(\"%s_c\"), val = %s(1.702)]; ", dt, p, p, dt);
		put(o, "%s %s_w = mul(x = %s, y = %s_c)[name = string(\"%s_w\")]; ", t, p, x->name, p, p);
	} else {
		/* EXACT and TANH_APPROXIMATION: the tanh form,
		 * 0.5 x (1 + tanh(k (x + 0.044715 x^3))) = x sigmoid(2k (x + 0.044715 x^3)),
		 * k = sqrt(2 / pi), 2k = 1.5957691, 2k * 0.044715 = 0.0713548 */
		put(o, "%s %s_sq = mul(x = %s, y = %s)[name = string(\"%s_sq\")]; ", t, p, x->name, x->name, p);
		put(o, "%s %s_a = const()[name = string(\"%s_a\"), val = %s(0.0713548)]; ", dt, p, p, dt);
		put(o, "%s %s_u = mul(x = %s_sq, y = %s_a)[name = string(\"%s_u\")]; ", t, p, p, p, p);
		put(o, "%s %s_b = const()[name = string(\"%s_b\"), val = %s(1.5957691)]; ", dt, p, p, dt);
		put(o, "%s %s_v = add(x = %s_u, y = %s_b)[name = string(\"%s_v\")]; ", t, p, p, p, p);
		put(o, "%s %s_w = mul(x = %s_v, y = %s)[name = string(\"%s_w\")]; ", t, p, p, x->name, p);
	}
	put(o, "%s %s_s = sigmoid(x = %s_w)[name = string(\"%s_s\")]; ", t, p, p, p);
	put(o, "%s %s = mul(x = %s, y = %s_s)[name = string(\"%s\")];", t, y->name, x->name, p, y->name);
}

int anes_ane_lower(const anes_mil_program *prog, const char *text, size_t len, char **ret_text,
                   size_t *ret_len)
{
	size_t n = 0;
	char pfx[32];

	for (uint32_t f = 0; f < prog->n_functions; f++)
		for (uint32_t i = 0; i < prog->functions[f].n_ops; i++)
			n += gelu_x(&prog->functions[f], &prog->functions[f].ops[i]) != NULL;
	if (n == 0 || !pick_prefix(prog, pfx, sizeof pfx)) {
		*ret_text = NULL;
		return 0;
	}

	site *s = malloc(n * sizeof *s);
	if (!s)
		return -ENOMEM;
	size_t k = 0;
	for (uint32_t f = 0; f < prog->n_functions; f++) {
		const anes_mil_function *fn = &prog->functions[f];
		for (uint32_t i = 0; i < fn->n_ops; i++)
			if (gelu_x(fn, &fn->ops[i]))
				s[k++] = (site){fn->ops[i].text_begin, fn->ops[i].text_end, fn, &fn->ops[i]};
	}
	qsort(s, n, sizeof *s, cmp_site);

	out o = {NULL, 0, len + n * 1024 + 1, false};
	o.buf = malloc(o.cap);
	if (!o.buf) {
		free(s);
		return -ENOMEM;
	}
	o.buf[0] = '\0';
	size_t at = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i].begin < at || s[i].end > len || s[i].end < s[i].begin)
			continue;   /* cannot happen for text the program was parsed from */
		put_bytes(&o, text + at, s[i].begin - at);
		put_gelu(&o, s[i].fn, s[i].op, pfx, i);
		at = s[i].end;
	}
	put_bytes(&o, text + at, len - at);
	free(s);
	if (o.oom) {
		free(o.buf);
		return -ENOMEM;
	}
	*ret_text = o.buf;
	*ret_len = o.len;
	return 1;
}

int anes_ane_prepare(const char *mil, size_t mil_len, const anes_weight *weights, size_t n_weights,
                     anes_ane_prepared *ret, char *errbuf, size_t errbuf_len)
{
	anes_mil_program *mp = NULL, *lp = NULL;
	char *low = NULL;
	size_t low_len = 0;
	int rc;

	rc = anes_mil_parse(mil, mil_len, weights, n_weights, &mp, errbuf, errbuf_len);
	if (rc < 0)
		return rc;
	rc = anes_ane_check_program(mp, weights, n_weights, errbuf, errbuf_len);
	if (rc == 0)
		rc = anes_ane_lower(mp, mil, mil_len, &low, &low_len);
	if (rc == -ENOMEM && errbuf && errbuf_len)
		snprintf(errbuf, errbuf_len, "out of memory");
	if (rc == 1) {
		/* the lowered text is what the framework gets: it must pass the same
		 * front end and checks (it can fail only where the rewrite's extra
		 * statements and values pass a limit of daemon/mil) */
		char why[400];
		rc = anes_mil_parse(low, low_len, weights, n_weights, &lp, why, sizeof why);
		if (rc == 0)
			rc = anes_ane_check_program(lp, weights, n_weights, why, sizeof why);
		if (rc < 0) {
			if (errbuf && errbuf_len)
				snprintf(errbuf, errbuf_len, "the program with gelu rewritten for the ANE "
				         "(docs/ane.md) is refused: %s", why);
			rc = rc == -ENOMEM ? rc : -EINVAL;
		} else {
			anes_mil_program_free(mp);
			mp = lp;
			lp = NULL;
		}
	}
	if (rc < 0) {
		anes_mil_program_free(lp);
		anes_mil_program_free(mp);
		free(low);
		return rc;
	}
	ret->prog = mp;
	ret->text = low ? low : mil;
	ret->len = low ? low_len : mil_len;
	ret->lowered = low;
	anes_ane_unverified(mp, ret->note, sizeof ret->note);
	return 0;
}
