/* SPDX-License-Identifier: MIT */
/*
 * The ANE constraints enforced at compile time, before the framework is
 * called (docs/ane.md, "Constraints enforced", gives the public source of
 * each rule).  Everything here works on the checked IR of daemon/mil.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ane_backend.h"

/* Ops the ANE backend lets through: ops that public projects compile and run
 * on ANE hardware through the in-memory MIL path (maderix/ANE training/
 * stories_mil.h, ane_mil_gen.h, docs/ANE_INTERNALS.md section 3).  Ops the
 * MIL front end does not know are refused by it before this list is read. */
static const char *const accepted_ops[] = {
	"add", "cast", "concat", "conv", "gelu", "layer_norm", "linear", "matmul", "mul", "pow",
	"real_div", "reduce_sum", "relu", "reshape", "scaled_dot_product_attention", "sigmoid",
	"slice_by_index", "slice_by_size", "softmax", "sub", "transpose",
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

bool anes_ane_op_accepted(const char *op)
{
	for (size_t i = 0; i < sizeof accepted_ops / sizeof accepted_ops[0]; i++)
		if (strcmp(accepted_ops[i], op) == 0)
			return true;
	return false;
}

static int check_io(const anes_mil_function *fn, uint32_t vid, const char *what, char *errbuf,
                    size_t len)
{
	const anes_mil_value *v = &fn->values[vid];
	const anes_mil_type *t = &v->type;
	char shape[160];

	if (t->dtype != ANES_DT_FP16)
		return fail(errbuf, len, -ENOTSUP,
		            "line %u: %s '%s' is %s: ANE inputs and outputs must be fp16 "
		            "(cast to and from other types inside the program)",
		            v->line, what, v->name, anes_mil_dtype_name(t->dtype));
	if (t->rank != 4 || t->shape[0] != 1 || t->shape[2] != 1)
		return fail(errbuf, len, -ENOTSUP,
		            "line %u: %s '%s' has shape %s: ANE inputs and outputs must have shape "
		            "[1, C, 1, S] (the ANE's channel-first I/O layout)",
		            v->line, what, v->name, anes_mil_shape_str(t, shape, sizeof shape));
	if ((t->shape[3] * 2) % ANES_ANE_ROW_ALIGN != 0)
		return fail(errbuf, len, -ENOTSUP,
		            "line %u: %s '%s' has shape %s: its last dimension S = %llu is %llu bytes of fp16, "
		            "but the ANE lays each row out at a %u-byte stride, so S must be a multiple of %u",
		            v->line, what, v->name, anes_mil_shape_str(t, shape, sizeof shape),
		            (unsigned long long)t->shape[3], (unsigned long long)t->shape[3] * 2,
		            ANES_ANE_ROW_ALIGN, ANES_ANE_ROW_ALIGN / 2);
	return 0;
}

static int check_op(const anes_mil_function *fn, const anes_mil_op *op, char *errbuf, size_t len)
{
	const char *name = op->def ? op->def->name : "?";
	const char *vname = op->name ? op->name : "";

	if (!anes_ane_op_accepted(name)) {
		char list[512];
		size_t pos = 0;
		list[0] = '\0';
		for (size_t i = 0; i < sizeof accepted_ops / sizeof accepted_ops[0] && pos < sizeof list; i++) {
			int n = snprintf(list + pos, sizeof list - pos, "%s%s", i ? ", " : "", accepted_ops[i]);
			if (n < 0)
				break;
			pos += (size_t)n;
		}
		return fail(errbuf, len, -ENOTSUP,
		            "line %u: op '%s' (%s): not accepted by the ANE backend (accepted ops: %s)",
		            op->line, name, vname, list);
	}
	for (uint32_t j = 0; j < op->n_outputs; j++) {
		const anes_mil_value *v = &fn->values[op->outputs[j]];
		if (v->type.dtype != ANES_DT_FP16 && v->type.dtype != ANES_DT_FP32)
			return fail(errbuf, len, -ENOTSUP,
			            "line %u: op '%s' (%s): computes %s values; the ANE computes in fp16 "
			            "(fp32 is accepted as a cast target only)",
			            op->line, name, vname, anes_mil_dtype_name(v->type.dtype));
	}
	if (strcmp(name, "concat") == 0) {
		const anes_mil_value *il = anes_mil_op_value(fn, op, "interleave");
		bool interleave = true;
		if (!il || anes_mil_const_bool(il, &interleave) < 0 || interleave)
			return fail(errbuf, len, -ENOTSUP,
			            "line %u: op '%s' (%s): the ANE compiler accepts concat only with an explicit "
			            "interleave = false",
			            op->line, name, vname);
	}
	return 0;
}

static int check_weight(const anes_weight *w, size_t idx, const anes_weight *all, char *errbuf,
                        size_t len)
{
	const char *path = w->path ? w->path : "";
	size_t plen = strlen(WEIGHT_PREFIX);
	const char *file = strncmp(path, WEIGHT_PREFIX, plen) == 0 ? path + plen : NULL;

	if (!file || !*file || strlen(file) > 128 || strchr(file, '/') || strcmp(file, ".") == 0 ||
	    strcmp(file, "..") == 0)
		return fail(errbuf, len, -EINVAL,
		            "weight \"%.200s\": the ANE backend needs weight paths of the form "
		            "\"" WEIGHT_PREFIX "NAME\" with NAME a plain file name of at most 128 bytes",
		            path);
	for (const char *p = file; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return fail(errbuf, len, -EINVAL,
			            "weight \"%.200s\": control character in the file name", path);
	for (size_t i = 0; i < idx; i++)
		if (all[i].path && strcmp(all[i].path, path) == 0)
			return fail(errbuf, len, -EINVAL, "weight \"%.200s\" is given twice", path);
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
	for (uint32_t i = 0; i < fn->n_ops; i++)
		if ((rc = check_op(fn, &fn->ops[i], errbuf, errbuf_len)) < 0)
			return rc;
	for (uint32_t i = 0; i < fn->n_outputs; i++)
		if ((rc = check_io(fn, fn->outputs[i], "output", errbuf, errbuf_len)) < 0)
			return rc;
	return 0;
}
