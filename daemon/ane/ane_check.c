/* SPDX-License-Identifier: MIT */
/*
 * What the ANE backend refuses before the framework is called, and what it
 * passes on but reports as unverified (docs/ane.md, "What is refused" and
 * "Which ops", give the public source of each rule and op).  Everything here
 * works on the checked IR of daemon/mil.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ane_backend.h"

/* Ops that public code has run on the ANE through the in-memory path
 * (_ANEInMemoryModel).  docs/ane.md, "Which ops", gives the source of each.
 * Ops not on the list still go to the framework: the daemon logs them as
 * unverified (anes_ane_unverified) instead of refusing them, because what
 * the framework does with them is what a Mac owner should find out. */
static const char *const verified_ops[] = {
	"add", "cast", "concat", "conv", "exp", "matmul", "mul", "pow", "reduce_sum", "reshape",
	"scaled_dot_product_attention", "sigmoid", "slice_by_size", "softmax", "sub", "transpose",
};

#define WEIGHT_PREFIX "@model_path/weights/"

static int fail(char *errbuf, size_t len, int rc, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *errbuf, size_t len, int rc, const char *fmt, ...)
{
	va_list ap;

	if (errbuf && len) {
		va_start(ap, fmt);
		vsnprintf(errbuf, len, fmt, ap);
		va_end(ap);
	}
	return rc;
}

bool anes_ane_op_verified(const char *op)
{
	for (size_t i = 0; i < sizeof verified_ops / sizeof verified_ops[0]; i++)
		if (strcmp(verified_ops[i], op) == 0)
			return true;
	return false;
}

static int check_io(const anes_mil_function *fn, uint32_t vid, const char *what, char *errbuf,
                    size_t len)
{
	const anes_mil_value *v = &fn->values[vid];
	const anes_mil_type *t = &v->type;
	char shape[160];

	if (t->dtype != ANES_DT_FP16 && t->dtype != ANES_DT_FP32)
		return fail(errbuf, len, -ENOTSUP,
		            "line %u: %s '%s' is %s: ANE inputs and outputs must be fp16 or fp32 "
		            "(cast to and from other types inside the program)",
		            v->line, what, v->name, anes_mil_dtype_name(t->dtype));
	if (t->rank != 4 || t->shape[0] != 1 || t->shape[2] != 1)
		return fail(errbuf, len, -ENOTSUP,
		            "line %u: %s '%s' has shape %s: ANE inputs and outputs must have shape "
		            "[1, C, 1, S] (the ANE's channel-first I/O layout)",
		            v->line, what, v->name, anes_mil_shape_str(t, shape, sizeof shape));
	uint64_t esize = anes_dtype_size((anes_dtype)t->dtype);
	if ((t->shape[3] * esize) % ANES_ANE_ROW_ALIGN != 0)
		return fail(errbuf, len, -ENOTSUP,
		            "line %u: %s '%s' has shape %s: its last dimension S = %llu is %llu bytes of %s, "
		            "but a row of the ANE's layout may be padded to %u bytes, so S must be a "
		            "multiple of %llu",
		            v->line, what, v->name, anes_mil_shape_str(t, shape, sizeof shape),
		            (unsigned long long)t->shape[3], (unsigned long long)(t->shape[3] * esize),
		            anes_mil_dtype_name(t->dtype), ANES_ANE_ROW_ALIGN,
		            (unsigned long long)(ANES_ANE_ROW_ALIGN / esize));
	return 0;
}

/* NAME of "@model_path/weights/NAME" becomes a file below the model's temp
 * directory: '/'-separated components (public code uses
 * weights/layer_00/w1.bin), none empty, "." or "..", no control characters. */
static bool plain_relative_path(const char *name)
{
	size_t depth = 1;
	if (!*name || strlen(name) > 200)
		return false;
	for (const char *c = name;; c = strchr(c, '/') + 1) {
		size_t n = strcspn(c, "/");
		if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
			return false;
		if (!c[n])
			break;
		if (++depth > 16)
			return false;
	}
	return true;
}

static int check_weight(const anes_weight *w, size_t idx, const anes_weight *all, char *errbuf,
                        size_t len)
{
	const char *path = w->path ? w->path : "";
	size_t plen = strlen(WEIGHT_PREFIX);
	const char *file = strncmp(path, WEIGHT_PREFIX, plen) == 0 ? path + plen : NULL;

	for (const char *p = path; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return fail(errbuf, len, -EINVAL,
			            "weight \"%.200s\": control character in the file name", path);
	if (!file || !plain_relative_path(file))
		return fail(errbuf, len, -EINVAL,
		            "weight \"%.200s\": the ANE backend needs weight paths of the form "
		            "\"" WEIGHT_PREFIX "NAME\", NAME a relative file name of at most 200 bytes "
		            "(components separated by '/', at most 16, none empty, \".\" or \"..\")",
		            path);
	for (size_t i = 0; i < idx; i++) {
		const char *o = all[i].path;
		if (!o)
			continue;
		if (strcmp(o, path) == 0)
			return fail(errbuf, len, -EINVAL, "weight \"%.200s\" is given twice", path);
		/* one is a directory of the other: both cannot be files */
		size_t lo = strlen(o), lp = strlen(path);
		const char *longer = lo > lp ? o : path, *shorter = lo > lp ? path : o;
		size_t ls = lo > lp ? lp : lo;
		if (strncmp(longer, shorter, ls) == 0 && longer[ls] == '/')
			return fail(errbuf, len, -EINVAL,
			            "weight \"%.200s\" is a directory of weight \"%.200s\": a path cannot be both",
			            shorter, longer);
	}
	return 0;
}

int anes_ane_check_program(const anes_mil_program *prog, const anes_weight *weights,
                           size_t n_weights, char *errbuf, size_t errbuf_len)
{
	int rc;

	if (prog->n_functions != 1) {
		const anes_mil_function *f = &prog->functions[1];
		return fail(errbuf, errbuf_len, -ENOTSUP,
		            "line %u: function '%s': the ANE backend runs single-function programs "
		            "(this one has %u functions)",
		            f->line, f->name, prog->n_functions);
	}
	for (size_t i = 0; i < n_weights; i++)
		if ((rc = check_weight(&weights[i], i, weights, errbuf, errbuf_len)) < 0)
			return rc;

	const anes_mil_function *fn = &prog->functions[0];
	for (uint32_t i = 0; i < fn->n_inputs; i++)
		if ((rc = check_io(fn, fn->inputs[i], "input", errbuf, errbuf_len)) < 0)
			return rc;
	for (uint32_t i = 0; i < fn->n_outputs; i++)
		if ((rc = check_io(fn, fn->outputs[i], "output", errbuf, errbuf_len)) < 0)
			return rc;
	return 0;
}

/* ---- what public code has not shown to work ---- */

typedef struct note {
	char *buf;
	size_t len, pos;
	size_t count;
} note;

static void note_add(note *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_add(note *n, const char *fmt, ...)
{
	va_list ap;

	if (n->count++ && n->pos < n->len)
		n->pos += (size_t)snprintf(n->buf + n->pos, n->len - n->pos, ", ");
	if (n->pos < n->len) {
		va_start(ap, fmt);
		int w = vsnprintf(n->buf + n->pos, n->len - n->pos, fmt, ap);
		va_end(ap);
		if (w > 0)
			n->pos += (size_t)w;
	}
}

/* One entry per op name (in the order of first use): "name (line L)" or
 * "name (lines L1, L2, L3, ...)". */
static void note_ops(note *n, const anes_mil_function *fn)
{
	for (uint32_t i = 0; i < fn->n_ops; i++) {
		const char *name = fn->ops[i].def ? fn->ops[i].def->name : "?";
		bool seen = false;
		if (anes_ane_op_verified(name))
			continue;
		for (uint32_t j = 0; j < i && !seen; j++)
			seen = fn->ops[j].def && strcmp(fn->ops[j].def->name, name) == 0;
		if (seen)
			continue;
		char lines[64];
		size_t pos = 0;
		unsigned k = 0;
		for (uint32_t j = i; j < fn->n_ops; j++) {
			if (!fn->ops[j].def || strcmp(fn->ops[j].def->name, name) != 0)
				continue;
			if (k == 4) {
				pos += (size_t)snprintf(lines + pos, sizeof lines - pos, ", ...");
				k++;
				break;
			}
			pos += (size_t)snprintf(lines + pos, sizeof lines - pos, "%s%u", k ? ", " : "",
			                        fn->ops[j].line);
			k++;
			if (pos >= sizeof lines)
				break;
		}
		note_add(n, "%s (line%s %s)", name, k > 1 ? "s" : "", lines);
	}
}

size_t anes_ane_unverified(const anes_mil_program *prog, char *buf, size_t len)
{
	static const char intro[] = "not verified on the ANE by public code (passed to the framework "
	                            "as they are): ";
	note n = {buf, len, 0, 0};

	if (!buf || len == 0)
		return 0;
	buf[0] = '\0';
	if (len <= sizeof intro)
		return 0;
	n.pos = (size_t)snprintf(buf, len, "%s", intro);
	for (uint32_t f = 0; f < prog->n_functions; f++) {
		const anes_mil_function *fn = &prog->functions[f];
		note_ops(&n, fn);
		for (uint32_t i = 0; i < fn->n_ops; i++) {
			const anes_mil_op *op = &fn->ops[i];
			const char *name = op->def ? op->def->name : "?";
			if (strcmp(name, "concat") == 0) {
				const anes_mil_value *il = anes_mil_op_value(fn, op, "interleave");
				bool interleave = true;
				if (!il || anes_mil_const_bool(il, &interleave) < 0 || interleave)
					note_add(&n, "concat without interleave = false (line %u)", op->line);
			}
			for (uint32_t j = 0; j < op->n_outputs; j++) {
				const anes_mil_value *v = &fn->values[op->outputs[j]];
				if (v->type.dtype != ANES_DT_FP16 && v->type.dtype != ANES_DT_FP32) {
					note_add(&n, "%s values from %s (line %u)", anes_mil_dtype_name(v->type.dtype),
					         name, op->line);
					break;
				}
			}
		}
	}
	if (n.count == 0) {
		buf[0] = '\0';
		return 0;
	}
	if (n.pos >= len && len > 4)
		memcpy(buf + len - 4, "...", 4);
	return n.count;
}
