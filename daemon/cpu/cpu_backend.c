/* SPDX-License-Identifier: MIT */
/*
 * The CPU reference backend: compiles MIL (daemon/mil) into a per-function
 * plan of kernel steps over one working-memory arena, and runs it.
 *
 * Memory: at compile time every intermediate value gets a 64-byte-aligned
 * offset in the arena (buffers of dead values are reused), plus one scratch
 * region sized for the hungriest step.  Constants live in the compiled program.
 * Each concurrent run takes an arena from a mutex-protected free list
 * (allocating one lazily when the list is empty) and gives it back afterwards,
 * so steady state does no allocation.
 *
 * No copies of run arguments: ops read function inputs in the caller's memory,
 * and a function output computed by an op is computed straight into the
 * caller's output buffer (cpu_func.io; cpu_ptr).  Only an output that is not
 * computed by an op of its own (a function input, a constant, or a value
 * already returned by an earlier output) is copied, once, after the last step.
 * The caller's memory is shared with a client that may change it during the
 * run, and outputs may alias inputs: kernels treat it as numbers only (see
 * cpu_internal.h), so a misbehaving client changes results, never control
 * flow or addresses.  A pointer not aligned to its element size is staged
 * through a private buffer kept with the arena (allocated once).
 *
 * Constant folding: an op whose arguments are all compile-time constants
 * (constexpr_affine_dequantize, and any other op fed only by constants) runs
 * once at compile time; its outputs become constants of the compiled program
 * and the step is skipped at run time.
 *
 * Configuration (read when the backend is created):
 *   ANESHARE_CPU_STRICT=1|N   strict mode: model an fp16 matmul accumulator
 *                             (partial sums rounded to fp16 every 32 or N
 *                             products); see docs/mil.md.  Off by default.
 *   ANESHARE_CPU_GEMM=builtin use the built-in GEMM even if a BLAS is present.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu_internal.h"

typedef struct cpu_func {
	const anes_mil_function *fn;
	uint64_t *offset;           /* per value */
	int32_t *io;                /* per value: where in the caller's memory (cpu_exec.io) */
	uint64_t stage_bytes;       /* staging for misaligned arguments: all inputs + outputs */
	void **fixed;               /* per value: folded constant (malloc'd), or NULL */
	cpu_step *steps;            /* fn->n_ops */
	uint64_t scratch_off;
	uint64_t arena_bytes;
} cpu_func;

typedef struct cpu_arena {
	struct cpu_arena *next;
	uint8_t *mem;
	uint8_t *stage;             /* lazily allocated staging (misaligned arguments), or NULL */
	uint64_t stage_bytes;
} cpu_arena;

typedef struct cpu_backend {
	anes_backend base;
	cpu_cfg cfg;
} cpu_backend;

typedef struct cpu_program {
	anes_bprogram base;         /* first: the daemon sees this */
	anes_mil_program *mil;
	cpu_func *funcs;
	uint32_t n_funcs;
	size_t arena_bytes;         /* max over functions */
	pthread_mutex_t lock;
	cpu_arena *free_arenas;
} cpu_program;

static void set_err(char *errbuf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *errbuf, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!errbuf || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(errbuf, len, fmt, ap);
	va_end(ap);
}

/* ---- buffer planning ---- */

typedef struct live_block {
	uint64_t off, size;
	uint32_t vid;
} live_block;

typedef struct allocator {
	live_block *b;              /* sorted by off */
	uint32_t n;
	uint64_t high;
} allocator;

static uint64_t alloc_block(allocator *a, uint64_t size, uint32_t vid)
{
	uint64_t off = 0;
	uint32_t pos = 0;

	for (; pos < a->n; pos++) {
		if (a->b[pos].off - off >= size)
			break;
		off = a->b[pos].off + a->b[pos].size;
	}
	memmove(&a->b[pos + 1], &a->b[pos], (a->n - pos) * sizeof a->b[0]);
	a->b[pos] = (live_block){off, size, vid};
	a->n++;
	if (off + size > a->high)
		a->high = off + size;
	return off;
}

static void free_block(allocator *a, uint32_t vid)
{
	for (uint32_t i = 0; i < a->n; i++) {
		if (a->b[i].vid == vid) {
			memmove(&a->b[i], &a->b[i + 1], (a->n - i - 1) * sizeof a->b[0]);
			a->n--;
			return;
		}
	}
}

static void func_clear(cpu_func *f)
{
	if (f->steps)
		for (uint32_t i = 0; i < f->fn->n_ops; i++)
			free(f->steps[i].params);
	if (f->fixed)
		for (uint32_t v = 0; v < f->fn->n_values; v++)
			free(f->fixed[v]);
	free(f->fixed);
	free(f->steps);
	free(f->offset);
	free(f->io);
}

static bool all_args_const(const cpu_func *f, const anes_mil_op *op)
{
	for (uint32_t a = 0; a < op->n_args; a++)
		for (uint32_t j = 0; j < op->args[a].n; j++) {
			uint32_t v = op->args[a].vals[j];
			if (f->fn->values[v].kind != ANES_MIL_V_CONST && !f->fixed[v])
				return false;
		}
	return true;
}

/* Run step st once now; its outputs become folded constants. */
static int fold_step(cpu_func *f, cpu_step *st, const cpu_cfg *cfg, char *errbuf, size_t errbuf_len)
{
	const anes_mil_op *op = st->op;
	const anes_mil_function *fn = f->fn;
	uint64_t total = cpu_align64(st->scratch);
	uint8_t *mem;
	cpu_exec ex;
	int rc;

	for (uint32_t j = 0; j < op->n_outputs; j++)
		total += cpu_align64(fn->values[op->outputs[j]].type.bytes);
	mem = aligned_alloc(64, total ? total : 64);
	if (!mem)
		return -ENOMEM;
	uint64_t off = 0;
	for (uint32_t j = 0; j < op->n_outputs; j++) {
		f->offset[op->outputs[j]] = off;
		off += cpu_align64(fn->values[op->outputs[j]].type.bytes);
	}
	memset(&ex, 0, sizeof ex);
	ex.fn = fn;
	ex.offset = f->offset;
	ex.fixed = (const void *const *)f->fixed;
	ex.arena = mem;
	ex.scratch = mem + off;
	ex.cfg = cfg;
	ex.errbuf = errbuf;
	ex.errbuf_len = errbuf_len;
	if (errbuf && errbuf_len)
		errbuf[0] = 0;
	rc = st->run(st, &ex);
	if (rc) {
		if (!errbuf || !errbuf_len || !errbuf[0])
			set_err(errbuf, errbuf_len, "line %u: op '%s' (%s): failed on constant inputs", op->line,
			        op->def->name, op->name);
		free(mem);
		return rc;
	}
	for (uint32_t j = 0; j < op->n_outputs; j++) {
		uint32_t v = op->outputs[j];
		size_t nb = (size_t)fn->values[v].type.bytes;
		void *d = malloc(nb ? nb : 1);
		if (!d) {
			free(mem);
			return -ENOMEM;
		}
		memcpy(d, mem + f->offset[v], nb);
		f->fixed[v] = d;
		f->offset[v] = 0;
	}
	free(mem);
	free(st->params);
	st->params = NULL;
	st->run = NULL;
	st->scratch = 0;
	return 0;
}

static int plan_function(cpu_func *f, const anes_mil_function *fn, const cpu_cfg *cfg, char *errbuf,
                         size_t errbuf_len)
{
	uint32_t nv = fn->n_values, nops = fn->n_ops;
	uint32_t *last = NULL, **dying = NULL;
	uint32_t *dying_n = NULL, *dying_store = NULL;
	allocator A = {0};
	cpu_plan_ctx pc = {errbuf, errbuf_len, NULL, cfg};
	uint64_t scratch = 0;
	int rc = -ENOMEM;

	f->fn = fn;
	f->offset = calloc(nv ? nv : 1, sizeof *f->offset);
	f->io = calloc(nv ? nv : 1, sizeof *f->io);
	f->steps = calloc(nops ? nops : 1, sizeof *f->steps);
	f->fixed = calloc(nv ? nv : 1, sizeof *f->fixed);
	pc.fixed = (const void *const *)f->fixed;
	last = calloc(nv ? nv : 1, sizeof *last);
	A.b = calloc(nv ? nv : 1, sizeof *A.b);
	dying_n = calloc((size_t)nops + 1, sizeof *dying_n);
	dying = calloc((size_t)nops + 1, sizeof *dying);
	dying_store = calloc(nv ? nv : 1, sizeof *dying_store);
	if (!f->offset || !f->io || !f->steps || !f->fixed || !last || !A.b || !dying_n || !dying || !dying_store) {
		set_err(errbuf, errbuf_len, "line %u: out of memory", fn->line);
		goto out;
	}

	/* plan kernels */
	for (uint32_t i = 0; i < nops; i++) {
		const anes_mil_op *op = &fn->ops[i];
		const cpu_opimpl *impl = cpu_opimpl_find(op->def->name);
		cpu_step *st = &f->steps[i];
		st->op = op;
		if (!impl) {
			rc = cpu_fail(&pc, op, -ENOTSUP, "not supported by the CPU backend");
			goto out;
		}
		st->run = impl->run;
		if (impl->plan) {
			rc = impl->plan(&pc, fn, op, st);
			if (rc) {
				if (rc == -ENOMEM)
					cpu_fail(&pc, op, rc, "out of memory");
				goto out;
			}
		}
		if (all_args_const(f, op)) {
			rc = fold_step(f, st, cfg, errbuf, errbuf_len);
			if (rc) {
				if (rc == -ENOMEM)
					cpu_fail(&pc, op, rc, "out of memory");
				goto out;
			}
		}
		if (st->scratch > ANES_CPU_MAX_ARENA_BYTES) {
			rc = cpu_fail(&pc, op, -ENOTSUP, "needs more than %llu bytes of working memory",
			              (unsigned long long)ANES_CPU_MAX_ARENA_BYTES);
			goto out;
		}
		if (st->scratch > scratch)
			scratch = st->scratch;
	}

	/* Caller memory: inputs are read in place; a function output computed by
	 * a (not folded) op is computed into the caller's output buffer -- the
	 * first output returning it, when a value is returned twice.  Everything
	 * else returned (an input, a constant, a repeated value) is copied after
	 * the last step. */
	for (uint32_t j = 0; j < fn->n_inputs; j++)
		f->io[fn->inputs[j]] = (int32_t)j + 1;
	for (uint32_t j = 0; j < fn->n_states; j++)   /* after the inputs, in place */
		f->io[fn->states[j]] = (int32_t)(fn->n_inputs + j) + 1;
	for (uint32_t j = 0; j < fn->n_outputs; j++) {
		uint32_t v = fn->outputs[j];
		if (fn->values[v].kind == ANES_MIL_V_OP && !f->fixed[v] && !f->io[v])
			f->io[v] = -(int32_t)j - 1;
	}
	f->stage_bytes = 0;
	for (uint32_t j = 0; j < fn->n_inputs; j++)
		f->stage_bytes += cpu_align64(fn->values[fn->inputs[j]].type.bytes);
	for (uint32_t j = 0; j < fn->n_outputs; j++)
		f->stage_bytes += cpu_align64(fn->values[fn->outputs[j]].type.bytes);

	/* liveness: last step using each value; outputs live to the end (nops) */
	for (uint32_t v = 0; v < nv; v++)
		last[v] = fn->values[v].kind == ANES_MIL_V_OP ? fn->values[v].op : 0;
	for (uint32_t i = 0; i < nops; i++) {
		const anes_mil_op *op = &fn->ops[i];
		for (uint32_t a = 0; a < op->n_args; a++)
			for (uint32_t j = 0; j < op->args[a].n; j++)
				last[op->args[a].vals[j]] = i;
	}
	for (uint32_t j = 0; j < fn->n_outputs; j++)
		last[fn->outputs[j]] = nops;
	for (uint32_t v = 0; v < nv; v++)
		if (fn->values[v].kind != ANES_MIL_V_CONST && !f->fixed[v] && !f->io[v])
			dying_n[last[v]]++;
	{
		uint32_t pos = 0;
		for (uint32_t i = 0; i <= nops; i++) {
			dying[i] = dying_store + pos;
			pos += dying_n[i];
			dying_n[i] = 0;
		}
		for (uint32_t v = 0; v < nv; v++)
			if (fn->values[v].kind != ANES_MIL_V_CONST && !f->fixed[v] && !f->io[v])
				dying[last[v]][dying_n[last[v]]++] = v;
	}

	for (uint32_t i = 0; i < nops; i++) {
		const anes_mil_op *op = &fn->ops[i];
		for (uint32_t j = 0; j < op->n_outputs; j++) {
			uint32_t v = op->outputs[j];
			if (!f->fixed[v] && !f->io[v])
				f->offset[v] = alloc_block(&A, cpu_align64(fn->values[v].type.bytes), v);
		}
		for (uint32_t j = 0; j < dying_n[i]; j++)
			free_block(&A, dying[i][j]);
	}
	f->scratch_off = cpu_align64(A.high);
	f->arena_bytes = f->scratch_off + cpu_align64(scratch);
	if (f->arena_bytes > ANES_CPU_MAX_ARENA_BYTES || f->scratch_off > ANES_CPU_MAX_ARENA_BYTES) {
		set_err(errbuf, errbuf_len, "line %u: function '%s' needs more than %llu bytes of working memory",
		        fn->line, fn->name, (unsigned long long)ANES_CPU_MAX_ARENA_BYTES);
		rc = -ENOTSUP;
		goto out;
	}
	rc = 0;
out:
	free(last);
	free(A.b);
	free(dying_n);
	free(dying);
	free(dying_store);
	return rc;
}

/* ---- backend ops ---- */

static void cpu_program_free(anes_backend *b, anes_bprogram *bp)
{
	cpu_program *p = (cpu_program *)bp;

	(void)b;
	if (!p)
		return;
	if (p->funcs)
		for (uint32_t i = 0; i < p->n_funcs; i++)
			func_clear(&p->funcs[i]);
	free(p->funcs);
	for (cpu_arena *a = p->free_arenas, *n; a; a = n) {
		n = a->next;
		free(a->stage);
		free(a->mem);
		free(a);
	}
	pthread_mutex_destroy(&p->lock);
	anes_mil_program_free(p->mil);
	free(p);
}

static int cpu_compile(anes_backend *b, const char *mil, size_t mil_len, const anes_weight *weights,
                       size_t n_weights, anes_bprogram **ret_prog, char *errbuf, size_t errbuf_len)
{
	cpu_program *p;
	int rc;

	if (errbuf && errbuf_len)
		errbuf[0] = 0;
	p = calloc(1, sizeof *p);
	if (!p) {
		set_err(errbuf, errbuf_len, "line 0: out of memory");
		return -ENOMEM;
	}
	if (pthread_mutex_init(&p->lock, NULL)) {
		free(p);
		set_err(errbuf, errbuf_len, "line 0: out of memory");
		return -ENOMEM;
	}
	rc = anes_mil_parse(mil, mil_len, weights, n_weights, &p->mil, errbuf, errbuf_len);
	if (rc)
		goto fail;
	p->funcs = calloc(p->mil->n_functions, sizeof *p->funcs);
	if (!p->funcs) {
		set_err(errbuf, errbuf_len, "line 0: out of memory");
		rc = -ENOMEM;
		goto fail;
	}
	p->n_funcs = p->mil->n_functions;
	for (uint32_t i = 0; i < p->n_funcs; i++) {
		rc = plan_function(&p->funcs[i], &p->mil->functions[i], &((cpu_backend *)b)->cfg, errbuf, errbuf_len);
		if (rc)
			goto fail;
		if (p->funcs[i].arena_bytes > p->arena_bytes)
			p->arena_bytes = (size_t)p->funcs[i].arena_bytes;
	}
	p->base.backend = b;
	p->base.n_functions = p->mil->n_functions;
	p->base.functions = p->mil->info;
	*ret_prog = &p->base;
	return 0;
fail:
	cpu_program_free(b, &p->base);
	return rc;
}

static cpu_arena *arena_get(cpu_program *p)
{
	cpu_arena *a;

	pthread_mutex_lock(&p->lock);
	a = p->free_arenas;
	if (a)
		p->free_arenas = a->next;
	pthread_mutex_unlock(&p->lock);
	if (a)
		return a;
	a = calloc(1, sizeof *a);
	if (!a)
		return NULL;
	a->mem = aligned_alloc(64, p->arena_bytes ? p->arena_bytes : 64);
	if (!a->mem) {
		free(a);
		return NULL;
	}
	return a;
}

static void arena_put(cpu_program *p, cpu_arena *a)
{
	pthread_mutex_lock(&p->lock);
	a->next = p->free_arenas;
	p->free_arenas = a;
	pthread_mutex_unlock(&p->lock);
}

/* Staging for arguments not aligned to their element size (kernels load
 * elements as their C types): kept with the arena, so allocated at most once
 * per arena and function size. */
static uint8_t *arena_stage(cpu_arena *a, uint64_t bytes)
{
	if (a->stage_bytes < bytes) {
		free(a->stage);
		a->stage = aligned_alloc(64, (size_t)bytes);
		a->stage_bytes = a->stage ? bytes : 0;
	}
	return a->stage;
}

static bool misaligned(const void *p, const anes_mil_type *t)
{
	size_t es = cpu_esize(t->dtype);
	return es > 1 && ((uintptr_t)p % es) != 0;
}

static int run_fn(anes_backend *b, anes_bprogram *bp, uint32_t fn_index, const void *const *inputs,
                  void *const *outputs, void *const *states, char *errbuf, size_t errbuf_len)
{
	cpu_program *p = (cpu_program *)bp;
	const cpu_func *f;
	const anes_mil_function *fn;
	const void *in[2 * ANES_MAX_IO];   /* inputs, then states (read and written in place) */
	void *out[ANES_MAX_IO];
	bool staged = false;
	cpu_arena *a;
	cpu_exec ex;
	int rc = 0;

	if (!p || fn_index >= p->n_funcs) {
		set_err(errbuf, errbuf_len, "no function %u", fn_index);
		return -EINVAL;
	}
	f = &p->funcs[fn_index];
	fn = f->fn;
	if ((fn->n_inputs && !inputs) || (fn->n_outputs && !outputs)) {
		set_err(errbuf, errbuf_len, "function '%s': missing input or output buffers", fn->name);
		return -EINVAL;
	}
	if (fn->n_inputs > ANES_MAX_IO || fn->n_outputs > ANES_MAX_IO || fn->n_states > ANES_MAX_IO) {
		set_err(errbuf, errbuf_len, "function '%s': too many inputs or outputs", fn->name);
		return -EINVAL;
	}
	if (fn->n_states && !states) {
		set_err(errbuf, errbuf_len,
		        "function '%s' has %u states (state<...> inputs): it runs only where the caller keeps "
		        "them between runs (run_states); aneshared does not keep states yet", fn->name, fn->n_states);
		return -ENOTSUP;
	}
	for (uint32_t i = 0; i < fn->n_states; i++) {
		if (!states[i] || misaligned(states[i], &fn->values[fn->states[i]].type)) {
			set_err(errbuf, errbuf_len, "function '%s': state %u is NULL or misaligned", fn->name, i);
			return -EINVAL;
		}
		in[fn->n_inputs + i] = states[i];
	}
	for (uint32_t i = 0; i < fn->n_inputs; i++) {
		if (!inputs[i]) {
			set_err(errbuf, errbuf_len, "function '%s': input %u is NULL", fn->name, i);
			return -EINVAL;
		}
		in[i] = inputs[i];
		staged |= misaligned(inputs[i], &fn->values[fn->inputs[i]].type);
	}
	for (uint32_t i = 0; i < fn->n_outputs; i++) {
		if (!outputs[i]) {
			set_err(errbuf, errbuf_len, "function '%s': output %u is NULL", fn->name, i);
			return -EINVAL;
		}
		out[i] = outputs[i];
		staged |= misaligned(outputs[i], &fn->values[fn->outputs[i]].type);
	}
	a = arena_get(p);
	if (!a) {
		set_err(errbuf, errbuf_len, "out of memory for %zu bytes of working memory", p->arena_bytes);
		return -ENOMEM;
	}
	if (staged) {
		/* rare: an argument the kernels cannot load in place */
		uint8_t *stage = arena_stage(a, f->stage_bytes);
		uint64_t off = 0;
		if (!stage) {
			arena_put(p, a);
			set_err(errbuf, errbuf_len, "out of memory for staging misaligned run arguments");
			return -ENOMEM;
		}
		for (uint32_t i = 0; i < fn->n_inputs; i++) {
			const anes_mil_type *t = &fn->values[fn->inputs[i]].type;
			if (misaligned(inputs[i], t)) {
				memcpy(stage + off, inputs[i], (size_t)t->bytes);
				in[i] = stage + off;
			}
			off += cpu_align64(t->bytes);
		}
		for (uint32_t i = 0; i < fn->n_outputs; i++) {
			const anes_mil_type *t = &fn->values[fn->outputs[i]].type;
			if (misaligned(outputs[i], t))
				out[i] = stage + off;
			off += cpu_align64(t->bytes);
		}
	}
	memset(&ex, 0, sizeof ex);
	ex.fn = fn;
	ex.offset = f->offset;
	ex.fixed = (const void *const *)f->fixed;
	ex.io = f->io;
	ex.inputs = in;
	ex.outputs = out;
	ex.arena = a->mem;
	ex.scratch = a->mem + f->scratch_off;
	ex.cfg = &((cpu_backend *)b)->cfg;
	ex.errbuf = errbuf;
	ex.errbuf_len = errbuf_len;
	if (errbuf && errbuf_len)
		errbuf[0] = 0;
	for (uint32_t i = 0; i < fn->n_ops; i++) {
		if (!f->steps[i].run)
			continue;
		rc = f->steps[i].run(&f->steps[i], &ex);
		if (rc) {
			if (!errbuf || !errbuf_len || !errbuf[0])
				set_err(errbuf, errbuf_len, "line %u: op '%s' (%s) failed", fn->ops[i].line,
				        fn->ops[i].def->name, fn->ops[i].name);
			goto out;
		}
	}
	/* outputs not computed in place: one copy each (memmove: the caller's
	 * buffers may overlap; a state may have changed since it was read) */
	for (uint32_t i = 0; i < fn->n_outputs; i++) {
		uint32_t v = fn->outputs[i];
		if (f->io[v] != -(int32_t)i - 1)
			memmove(out[i], cpu_ptr(&ex, v), (size_t)fn->values[v].type.bytes);
	}
	if (staged)
		for (uint32_t i = 0; i < fn->n_outputs; i++)
			if (out[i] != outputs[i])
				memmove(outputs[i], out[i], (size_t)fn->values[fn->outputs[i]].type.bytes);
out:
	arena_put(p, a);
	return rc;
}

static int cpu_run(anes_backend *b, anes_bprogram *bp, uint32_t fn_index, const void *const *inputs,
                   void *const *outputs, char *errbuf, size_t errbuf_len)
{
	return run_fn(b, bp, fn_index, inputs, outputs, NULL, errbuf, errbuf_len);
}

static int cpu_run_states(anes_backend *b, anes_bprogram *bp, uint32_t fn_index, const void *const *inputs,
                          void *const *outputs, void *const *states, char *errbuf, size_t errbuf_len)
{
	return run_fn(b, bp, fn_index, inputs, outputs, states, errbuf, errbuf_len);
}

static void cpu_destroy(anes_backend *b)
{
	cpu_backend *cb = (cpu_backend *)b;

	if (!cb)
		return;
	cpu_pool_free(cb->cfg.pool);
	free(cb);
}

static const anes_backend_ops cpu_ops = {
	.name = "cpu",
	.compile = cpu_compile,
	.run = cpu_run,
	.run_states = cpu_run_states,
	.program_free = cpu_program_free,
	.destroy = cpu_destroy,
};

/* ANESHARE_CPU_STRICT: unset, "", "0" = off; "1" = default chunk; N >= 2 = chunk N */
static unsigned strict_from_env(void)
{
	const char *s = getenv("ANESHARE_CPU_STRICT");
	char *end;
	unsigned long v;

	if (!s || !*s)
		return 0;
	v = strtoul(s, &end, 10);
	if (*end || v == 0)
		return 0;
	if (v == 1)
		return ANES_CPU_STRICT_DEFAULT_CHUNK;
	return v > ANES_CPU_STRICT_MAX_CHUNK ? ANES_CPU_STRICT_MAX_CHUNK : (unsigned)v;
}

int anes_cpu_backend_new(unsigned n_threads, anes_backend **ret)
{
	cpu_backend *b = calloc(1, sizeof *b);
	const char *g = getenv("ANESHARE_CPU_GEMM");

	if (!b)
		return -ENOMEM;
	b->base.ops = &cpu_ops;
	if (n_threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		n_threads = n < 1 ? 1 : n > 256 ? 256 : (unsigned)n;
	}
	b->cfg.n_threads = n_threads;
	b->cfg.strict_chunk = strict_from_env();
	b->cfg.builtin_gemm = g && strcmp(g, "builtin") == 0;
	b->cfg.pool = cpu_pool_new(n_threads);   /* NULL when single-threaded (or no threads): serial kernels */
	*ret = &b->base;
	return 0;
}
