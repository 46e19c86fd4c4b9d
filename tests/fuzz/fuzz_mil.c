/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: the MIL parser and checker (anes_mil_parse) on untrusted
 * text, with two fixed weight blobs and one taken from the input (see
 * fuzz_mil_common.h for the input layout).
 *
 * Checks, on failure: a documented return code and a one-line message that
 * starts with "line ".  On success: the IR is consistent -- every value
 * index in range, ops in topological order, constants carrying type.bytes
 * readable bytes, the function infos agreeing with the values -- since the
 * backends trust it; every op statement's text span in range and ending with
 * its ';'; and the ANE backend's gelu rewrite of the text (ane_lower.c): its
 * result parses to the same interface with no gelu of a named value left, or
 * fails with a well-formed message.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ane_backend.h"
#include "fuzz.h"
#include "fuzz_mil_common.h"

static volatile uint64_t sink;

static void check_tensor(const anes_tensor_desc *t, const anes_mil_value *v)
{
	CHECK(t->rank <= ANES_MAX_RANK);
	CHECK(t->name && strlen(t->name) <= ANES_NAME_MAX);
	CHECK(strcmp(t->name, v->name) == 0);
	CHECK(anes_dtype_name(t->dtype) != NULL);
	uint64_t n = anes_dtype_size(t->dtype);
	for (uint32_t i = 0; i < t->rank; i++) {
		CHECK(t->shape[i] >= 1 && t->shape[i] <= ANES_MIL_MAX_DIM);
		n *= t->shape[i];
	}
	CHECK(n == t->bytes && t->bytes == v->type.bytes && t->bytes <= anes_mil_get_limits()->max_tensor_bytes);
	CHECK((int)t->dtype == v->type.dtype && t->rank == v->type.rank);
}

static void check_spans(const anes_mil_function *fn, const char *text, size_t len)
{
	for (uint32_t i = 0; i < fn->n_ops; i++) {
		const anes_mil_op *op = &fn->ops[i];
		CHECK(op->text_begin < op->text_end && op->text_end <= len);
		CHECK(text[op->text_end - 1] == ';');
		if (i > 0 && fn->ops[i - 1].text_end <= op->text_begin)
			continue;   /* ops of one function are in text order */
		CHECK(i == 0);
	}
}

static bool same_tensor(const anes_tensor_desc *a, const anes_tensor_desc *b)
{
	if (strcmp(a->name, b->name) || a->dtype != b->dtype || a->rank != b->rank || a->bytes != b->bytes)
		return false;
	for (uint32_t i = 0; i < a->rank; i++)
		if (a->shape[i] != b->shape[i])
			return false;
	return true;
}

/* The rewrite of p (parsed from text) parses to the same interface. */
static void check_lower(const anes_mil_program *p, const char *text, size_t len, const anes_weight *w)
{
	char *low = NULL, errbuf[256];
	size_t low_len = 0;
	int rc = anes_ane_lower(p, text, len, &low, &low_len);
	CHECK(rc == 0 || rc == 1 || rc == -ENOMEM);
	if (rc != 1) {
		CHECK(low == NULL || rc == -ENOMEM);
		return;
	}
	CHECK(low && strlen(low) == low_len);
	anes_mil_program *q = NULL;
	rc = anes_mil_parse(low, low_len, w, 3, &q, errbuf, sizeof errbuf);
	if (rc == 0) {
		CHECK(q->n_functions == p->n_functions);
		for (uint32_t f = 0; f < p->n_functions; f++) {
			const anes_function_info *a = &p->info[f], *b = &q->info[f];
			CHECK(strcmp(a->name, b->name) == 0 && a->n_inputs == b->n_inputs && a->n_outputs == b->n_outputs);
			for (uint32_t i = 0; i < a->n_inputs; i++)
				CHECK(same_tensor(&a->inputs[i], &b->inputs[i]));
			for (uint32_t i = 0; i < a->n_outputs; i++)
				CHECK(same_tensor(&a->outputs[i], &b->outputs[i]));
			const anes_mil_function *fn = &q->functions[f];
			for (uint32_t i = 0; i < fn->n_ops; i++) {
				const anes_mil_value *x = anes_mil_op_value(fn, &fn->ops[i], "x");
				const anes_mil_value *y = &fn->values[fn->ops[i].outputs[0]];
				CHECK(strcmp(fn->ops[i].def->name, "gelu") != 0 || !x || !x->name[0] ||
				      !anes_mil_dtype_is_float(y->type.dtype));
			}
		}
		anes_mil_program_free(q);
	} else {
		/* the rewrite can push a program past a limit (statements, bytes) */
		CHECK(rc == -EINVAL || rc == -ENOTSUP || rc == -ENOMEM);
		CHECK(strncmp(errbuf, "line ", 5) == 0);
	}
	free(low);
}

static void check_function(const anes_mil_function *fn, const anes_function_info *info)
{
	char buf[256];

	CHECK(fn->name && fn->opset && strlen(fn->name) <= ANES_NAME_MAX && strlen(fn->opset) <= ANES_NAME_MAX);
	CHECK(strcmp(fn->name, info->name) == 0);
	CHECK(fn->n_inputs == info->n_inputs && fn->n_outputs == info->n_outputs);
	CHECK(fn->n_inputs <= ANES_MAX_IO && fn->n_outputs <= ANES_MAX_IO);
	for (uint32_t i = 0; i < fn->n_values; i++) {
		const anes_mil_value *v = &fn->values[i];
		CHECK(v->name && strlen(v->name) <= ANES_NAME_MAX);
		CHECK(v->type.rank <= ANES_MAX_RANK);
		CHECK(anes_mil_dtype_name(v->type.dtype) != NULL);
		anes_mil_type_str(&v->type, buf, sizeof buf);
		anes_mil_shape_str(&v->type, buf, 8);
		if (v->type.dtype != ANES_MIL_DT_STRING) {
			anes_mil_type t;
			CHECK(anes_mil_type_init(&t, v->type.dtype, v->type.rank, v->type.shape) == 0);
			CHECK(anes_mil_type_equal(&t, &v->type) && t.bytes == v->type.bytes);
		}
		switch (v->kind) {
		case ANES_MIL_V_INPUT:
			CHECK(v->data == NULL);
			break;
		case ANES_MIL_V_CONST: {
			CHECK(v->data != NULL);
			const uint8_t *d = v->data;
			for (uint64_t k = 0; k < v->type.bytes; k++)  /* ASan: all readable */
				sink += d[k];
			if (v->type.dtype == ANES_MIL_DT_STRING)
				CHECK(d[v->type.bytes - 1] == 0 && anes_mil_const_string(v) != NULL);
			int64_t ints[16];
			uint32_t n;
			bool b;
			if (anes_mil_const_ints(v, ints, 16, &n) == 0)
				CHECK(n <= 16);
			(void)anes_mil_const_bool(v, &b);
			break;
		}
		case ANES_MIL_V_OP:
			CHECK(v->op < fn->n_ops);
			CHECK(v->out_index < fn->ops[v->op].n_outputs);
			CHECK(fn->ops[v->op].outputs[v->out_index] == i);
			break;
		default:
			CHECK(!"bad value kind");
		}
	}
	for (uint32_t i = 0; i < fn->n_inputs; i++) {
		CHECK(fn->inputs[i] < fn->n_values);
		CHECK(fn->values[fn->inputs[i]].kind == ANES_MIL_V_INPUT);
		check_tensor(&info->inputs[i], &fn->values[fn->inputs[i]]);
	}
	for (uint32_t i = 0; i < fn->n_outputs; i++) {
		CHECK(fn->outputs[i] < fn->n_values);
		check_tensor(&info->outputs[i], &fn->values[fn->outputs[i]]);
	}
	CHECK(fn->n_states == info->n_states);
	for (uint32_t i = 0; i < fn->n_states; i++) {
		CHECK(fn->states[i] < fn->n_values);
		CHECK(fn->values[fn->states[i]].kind == ANES_MIL_V_INPUT && fn->values[fn->states[i]].is_state);
		check_tensor(&info->states[i], &fn->values[fn->states[i]]);
	}
	for (uint32_t i = 0; i < fn->n_ops; i++) {
		const anes_mil_op *op = &fn->ops[i];
		CHECK(op->def != NULL && op->def->name != NULL);
		CHECK(anes_mil_opdef_find(op->def->name, strlen(op->def->name)) == op->def);
		/* only write_state has no outputs */
		CHECK(op->n_args <= ANES_MIL_MAX_ARGS && op->n_outputs <= ANES_MIL_MAX_OUTPUTS &&
		      (op->n_outputs >= 1) == (strcmp(op->def->name, "write_state") != 0));
		CHECK(op->name != NULL);
		for (uint32_t a = 0; a < op->n_args; a++) {
			const anes_mil_arg *arg = &op->args[a];
			CHECK(arg->name != NULL && arg->n <= ANES_MIL_MAX_TUPLE);
			CHECK(arg->is_tuple || arg->n == 1);
			CHECK(anes_mil_op_arg(op, arg->name) != NULL);
			for (uint32_t k = 0; k < arg->n; k++) {
				uint32_t vi = arg->vals[k];
				CHECK(vi < fn->n_values);
				/* topological: an argument is never a later op's output */
				if (fn->values[vi].kind == ANES_MIL_V_OP)
					CHECK(fn->values[vi].op < i);
			}
			if (!arg->is_tuple)
				CHECK(anes_mil_op_value(fn, op, arg->name) == &fn->values[arg->vals[0]]);
		}
		for (uint32_t k = 0; k < op->n_outputs; k++) {
			CHECK(op->outputs[k] < fn->n_values);
			CHECK(fn->values[op->outputs[k]].kind == ANES_MIL_V_OP);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	anes_weight *w = fuzz_weights();
	char errbuf[256];
	fuzz_input in;
	fuzz_input_split(data, size, w, &in);

	anes_mil_program *p = NULL;
	memset(errbuf, 'X', sizeof errbuf);
	int rc = anes_mil_parse(in.text, in.text_len, w, 3, &p, errbuf, sizeof errbuf);
	if (rc == 0) {
		CHECK(p != NULL);
		CHECK(p->n_functions >= 1 && p->n_functions <= ANES_MAX_FUNCTIONS);
		CHECK(p->total_bytes <= anes_mil_get_limits()->max_value_bytes);
		for (uint32_t i = 0; i < p->n_functions; i++) {
			check_function(&p->functions[i], &p->info[i]);
			if (i > 0)
				CHECK(strcmp(p->info[i].name, "main") != 0);
			for (uint32_t j = 0; j < i; j++)
				CHECK(strcmp(p->info[i].name, p->info[j].name) != 0);
			check_spans(&p->functions[i], in.text, in.text_len);
		}
		check_lower(p, in.text, in.text_len, w);
		anes_mil_program_free(p);
	} else {
		CHECK(rc == -EINVAL || rc == -ENOTSUP || rc == -ENOMEM);
		CHECK(memchr(errbuf, 0, sizeof errbuf));
		CHECK(strncmp(errbuf, "line ", 5) == 0);
		CHECK(strchr(errbuf, '\n') == NULL);
	}
	fuzz_input_free(&in);
	return 0;
}
