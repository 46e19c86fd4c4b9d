/* SPDX-License-Identifier: MIT */
/*
 * Program memory (docs/protocol.md, "Program memory"): an upper bound of the
 * memory that compiling a program and running it make the backend hold,
 * computed from the MIL's types before any of it is allocated.  The MIL is
 * parsed once with its weights borrowed (what that parse allocates grows
 * with the MIL text, which max_mil_bytes bounds), and the bound is added up
 * from the values' shapes:
 *
 * CPU reference backend (daemon/cpu), per the plan of cpu_backend.c:
 *   the parsed program (its constants copied from the weights, except from
 *     weight files, which the daemon charges at their size: anes_weight.kept)
 *   + outputs of ops folded at compile time (all arguments constant)
 *   + an fp32 copy of every constant operand of the ops whose plans keep
 *     one (norms, reductions, attention; matmul's x, biases) -- the weights
 *     of matmul (y), linear and conv are used in place
 *   + run_concurrency run arenas (the daemon's job and lane threads, or with a
 *     device worker the worker's threads, which alone run the program): each
 *     holds every intermediate value of the
 *     function (no reuse counted), the staging of misaligned arguments and the
 *     largest scratch of one op (fp32 copies of its operands and outputs, the
 *     GEMM packing, conv's im2col tile, attention's score block).
 * ANE backend (daemon/ane): the parsed program (constants copied) + the
 *   weights handed to the framework + the MIL text + one IOSurface per input
 *   and output of the first function.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "mil.h"

/* Mirrors of daemon/cpu's own caps (cpu_nn.c, cpu_gemm.c). */
#define CPU_GEMM_PACK_BYTES ((uint64_t)256 * 2048 * 4)
#define CPU_IM2COL_BYTES ((uint64_t)16 << 20)
#define CPU_SDPA_SCORE_BYTES ((uint64_t)64 << 20)
#define CPU_STEP_BYTES 512   /* a step and its parameter block, beyond the fp32 copies */

static uint64_t a64(uint64_t n)
{
	return (n + 63) & ~(uint64_t)63;
}

/* Saturating: the bound never wraps. */
static uint64_t add(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t mul(uint64_t a, uint64_t b)
{
	return b && a > UINT64_MAX / b ? UINT64_MAX : a * b;
}

static const anes_mil_type *vtype(const anes_mil_function *fn, uint32_t v)
{
	return &fn->values[v].type;
}

/* The ops whose CPU plans keep fp32 copies of constant operands and take
 * scratch (cpu_nn.c); every other op's plan holds a few strides. */
static bool heavy_op(const char *name)
{
	static const char *const heavy[] = {
		"matmul", "linear", "conv", "softmax", "layer_norm", "reduce_sum", "reduce_mean",
		"reduce_max", "reduce_min", "scaled_dot_product_attention",
	};
	for (size_t i = 0; i < sizeof(heavy) / sizeof(heavy[0]); i++)
		if (!strcmp(name, heavy[i]))
			return true;
	return false;
}

/* conv's im2col tile (cpu_nn.c, cpu_plan_conv): rows x tile fp32, rows =
 * cin/groups x kh x kw (the weight's elements per output channel), tile the
 * output positions of one image (all of them, or as many as fit
 * CPU_IM2COL_BYTES but at least 16).  A 1x1 conv of 64 channels over 32
 * positions takes 8 KiB, not the cap. */
static uint64_t conv_im2col(const anes_mil_function *fn, const anes_mil_op *op)
{
	const anes_mil_type *w = NULL, *o = op->n_outputs ? vtype(fn, op->outputs[0]) : NULL;
	for (uint32_t a = 0; a < op->n_args; a++)
		if (!strcmp(op->args[a].name, "weight") && op->args[a].n > 0)
			w = vtype(fn, op->args[a].vals[0]);
	if (!w || !o || w->rank < 1 || o->rank < 2 || w->shape[0] == 0 || o->shape[0] == 0 || o->shape[1] == 0)
		return CPU_IM2COL_BYTES;   /* the parser refuses these; the cap is a bound anyway */
	uint64_t rows = w->count / w->shape[0];
	uint64_t positions = o->count / o->shape[0] / o->shape[1];
	uint64_t whole = mul(mul(rows, positions), 4);
	uint64_t tiled = add(CPU_IM2COL_BYTES, mul(mul(rows, 16), 4));
	return a64(whole < tiled ? whole : tiled);
}

/* Scratch of one op, an upper bound of its plan's st->scratch. */
static uint64_t op_scratch(const anes_mil_function *fn, const anes_mil_op *op)
{
	if (!heavy_op(op->def->name))
		return 0;
	uint64_t s = 0;
	for (uint32_t a = 0; a < op->n_args; a++)
		for (uint32_t j = 0; j < op->args[a].n; j++)
			s = add(s, a64(mul(vtype(fn, op->args[a].vals[j])->count, 4)));
	for (uint32_t j = 0; j < op->n_outputs; j++)
		s = add(s, a64(mul(vtype(fn, op->outputs[j])->count, 8)));
	const char *name = op->def->name;
	if (!strcmp(name, "matmul") || !strcmp(name, "linear") || !strcmp(name, "conv") ||
	    !strcmp(name, "scaled_dot_product_attention"))
		s = add(s, CPU_GEMM_PACK_BYTES);
	if (!strcmp(name, "conv"))
		s = add(s, conv_im2col(fn, op));
	if (!strcmp(name, "scaled_dot_product_attention")) {
		/* The score block: at most the whole [batches, L, S] fp32 scores. */
		uint64_t scores = 4;
		if (op->n_args > 0 && op->args[0].n > 0) {
			const anes_mil_type *q = vtype(fn, op->args[0].vals[0]);
			scores = mul(scores, q->count);
		}
		if (op->n_args > 1 && op->args[1].n > 0) {
			const anes_mil_type *k = vtype(fn, op->args[1].vals[0]);
			if (k->rank >= 2)
				scores = mul(scores, k->shape[k->rank - 2]);
		}
		s = add(s, scores < CPU_SDPA_SCORE_BYTES ? scores : add(CPU_SDPA_SCORE_BYTES, scores));
	}
	return s;
}

/* the weight operands cpu_nn.c uses where they are (cpu_gemm_w) */
static bool in_place(const anes_mil_op *op, uint32_t a)
{
	const char *n = op->def->name, *arg = op->args[a].name;
	return (!strcmp(n, "matmul") && !strcmp(arg, "y")) ||
	       ((!strcmp(n, "linear") || !strcmp(n, "conv")) && !strcmp(arg, "weight"));
}

/* data inside a weight the daemon keeps for the program (a weight file) */
static bool in_kept(const void *data, const anes_weight *weights, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const uint8_t *b = weights[i].data;
		if (weights[i].kept && b && (const uint8_t *)data >= b && (const uint8_t *)data < b + weights[i].len)
			return true;
	}
	return false;
}

/* fixed: the plans' own memory; *ret_arena: the largest run arena. */
static uint64_t cpu_bound(const anes_mil_program *mp, uint8_t *folded, uint64_t *ret_arena)
{
	uint64_t fixed = 0, arena_max = 0;
	for (uint32_t f = 0; f < mp->n_functions; f++) {
		const anes_mil_function *fn = &mp->functions[f];
		uint64_t values = 0, scratch = 0, stage = 0;
		memset(folded, 0, fn->n_values);
		for (uint32_t i = 0; i < fn->n_ops; i++) {
			const anes_mil_op *op = &fn->ops[i];
			bool all_const = true;
			for (uint32_t a = 0; a < op->n_args; a++)
				for (uint32_t j = 0; j < op->args[a].n; j++) {
					uint32_t v = op->args[a].vals[j];
					if (fn->values[v].kind != ANES_MIL_V_CONST && !folded[v])
						all_const = false;
					else if (heavy_op(op->def->name) && !in_place(op, a))
						fixed = add(fixed, a64(mul(vtype(fn, v)->count, 4)));
				}
			fixed = add(fixed, CPU_STEP_BYTES);
			uint64_t sc = op_scratch(fn, op);
			if (sc > scratch)
				scratch = sc;
			for (uint32_t j = 0; j < op->n_outputs; j++) {
				uint32_t v = op->outputs[j];
				uint64_t b = a64(vtype(fn, v)->bytes);
				if (all_const) {
					folded[v] = 1;
					fixed = add(fixed, b);
				} else {
					values = add(values, b);
				}
			}
		}
		for (uint32_t j = 0; j < fn->n_inputs; j++)
			stage = add(stage, a64(vtype(fn, fn->inputs[j])->bytes));
		for (uint32_t j = 0; j < fn->n_outputs; j++)
			stage = add(stage, a64(vtype(fn, fn->outputs[j])->bytes));
		/* The plan's per-value tables. */
		fixed = add(fixed, mul(fn->n_values, 32));
		uint64_t arena = add(add(values, scratch), add(stage, 4096));
		if (arena > arena_max)
			arena_max = arena;
	}
	*ret_arena = arena_max;
	return fixed;
}

static uint64_t ane_bound(const anes_mil_program *mp, size_t mil_len, const anes_weight *weights,
                          size_t n_weights)
{
	uint64_t b = mil_len;
	for (size_t i = 0; i < n_weights; i++)
		b = add(b, weights[i].len);
	if (mp->n_functions > 0) {
		const anes_function_info *fi = &mp->info[0];
		for (uint32_t i = 0; i < fi->n_inputs; i++)
			b = add(b, a64(fi->inputs[i].bytes) + 16384);
		for (uint32_t i = 0; i < fi->n_outputs; i++)
			b = add(b, a64(fi->outputs[i].bytes) + 16384);
	}
	return b;
}

int anes_program_estimate(const char *backend, const char *mil, size_t mil_len,
                          const anes_weight *weights, size_t n_weights, unsigned concurrency,
                          unsigned lane_concurrency, uint64_t *ret_bytes, bool *ret_lanes,
                          char *errbuf, size_t errbuf_len)
{
	anes_mil_program *mp;
	int r = anes_mil_parse_borrowed(mil, mil_len, weights, n_weights, &mp, errbuf, errbuf_len);
	if (r < 0)
		return r;
	/* The real parse copies what this one borrowed. */
	uint64_t bytes = anes_mil_program_bytes(mp);
	for (uint32_t f = 0; f < mp->n_functions; f++) {
		const anes_mil_function *fn = &mp->functions[f];
		for (uint32_t v = 0; v < fn->n_values; v++)
			if (fn->values[v].kind == ANES_MIL_V_CONST && !in_kept(fn->values[v].data, weights, n_weights))
				bytes = add(bytes, a64(fn->values[v].type.bytes));
	}
	bool lanes = true;
	if (backend && !strcmp(backend, "ane")) {
		bytes = add(bytes, ane_bound(mp, mil_len, weights, n_weights));
	} else {
		uint32_t most = 1;
		for (uint32_t f = 0; f < mp->n_functions; f++)
			if (mp->functions[f].n_values > most)
				most = mp->functions[f].n_values;
		uint8_t *folded = malloc(most);
		if (!folded) {
			anes_mil_program_free(mp);
			return -ENOMEM;
		}
		uint64_t arena;
		bytes = add(bytes, cpu_bound(mp, folded, &arena));
		free(folded);
		/* An arena per job thread, and per lane thread for a program the
		 * lanes may run (ANES_LANE_ARENA_BYTES). */
		lanes = arena <= ANES_LANE_ARENA_BYTES;
		bytes = add(bytes, mul(arena, (concurrency ? concurrency : 1) + (lanes ? lane_concurrency : 0)));
	}
	anes_mil_program_free(mp);
	*ret_bytes = bytes;
	*ret_lanes = lanes;
	return 0;
}
