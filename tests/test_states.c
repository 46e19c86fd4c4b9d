/* SPDX-License-Identifier: MIT */
/*
 * States (docs/protocol.md, "States"): a KV-cache decoder step written the
 * way coremltools prints an iOS 18 stateful program, run token by token
 * through a real daemon on states the daemon keeps, against a reference
 * computed here; independence, reset, release, limits, order of runs on one
 * state, failures, and the device worker.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "anes_clock.h"
#include "anes_fp16.h"
#include "anes_proto.h"
#include "daemon_harness.h"

#define D 4   /* model width */
#define L 4   /* cache positions (a sliding window) */

/* ---- the model ------------------------------------------------------------------ */

/* Weights that fp16 holds exactly. */
static float weight(int m, int i, int j)
{
	return (float)(((m * 5 + i * 4 + j) % 7) - 3) / 8.0f;
}

/* Token t's embedding (exact in fp16). */
static float token(int t, int j)
{
	return (float)(((t * 3 + j) % 5) - 2) * 0.5f;
}

static void append_matrix(char **s, size_t *len, const char *name, int m)
{
	char buf[1024];
	int n = snprintf(buf, sizeof buf,
	                 "        tensor<fp16, [%d, %d]> %s = const()[name = string(\"%s\"), "
	                 "val = tensor<fp16, [%d, %d]>([", D, D, name, name, D, D);
	for (int i = 0; i < D; i++)
		for (int j = 0; j < D; j++)
			n += snprintf(buf + n, sizeof buf - (size_t)n, "%s%g", i + j ? ", " : "",
			              (double)weight(m, i, j));
	n += snprintf(buf + n, sizeof buf - (size_t)n, "])];\n");
	*s = realloc(*s, *len + (size_t)n + 1);
	memcpy(*s + *len, buf, (size_t)n + 1);
	*len += (size_t)n;
}

/* One decoder step of single-head attention over a sliding KV cache of L
 * positions, and a step counter: the states are read with read_state and
 * written with coreml_update_state, as coremltools prints them for iOS 18
 * (names read_state_N / coreml_update_state_N).  fn names the function. */
static char *kv_mil(const char *fn)
{
	char *s = NULL;
	size_t len = 0;
	char head[1024];
	int n = snprintf(head, sizeof head,
		"program(1.3)\n"
		"[buildInfo = dict<string, string>({{\"coremlc-component-MIL\", \"3402.3.2\"}, "
		"{\"coremltools-version\", \"8.1\"}})]\n"
		"{\n"
		"    func %s<ios18>(state<tensor<fp16, [%d, %d]>> k_cache, state<tensor<fp16, [1]>> pos, "
		"state<tensor<fp16, [%d, %d]>> v_cache, tensor<fp16, [1, %d]> x) {\n",
		fn, L, D, L, D, D);
	s = malloc((size_t)n + 1);
	memcpy(s, head, (size_t)n + 1);
	len = (size_t)n;
	append_matrix(&s, &len, "wq", 0);
	append_matrix(&s, &len, "wk", 1);
	append_matrix(&s, &len, "wv", 2);
	static const char body[] =
		"        tensor<fp16, [1, 4]> q = matmul(x = x, y = wq)[name = string(\"q\")];\n"
		"        tensor<fp16, [1, 4]> k = matmul(x = x, y = wk)[name = string(\"k\")];\n"
		"        tensor<fp16, [1, 4]> v = matmul(x = x, y = wv)[name = string(\"v\")];\n"
		"        tensor<fp16, [4, 4]> read_state_0 = read_state(input = k_cache)[name = string(\"read_state_0\")];\n"
		"        tensor<int32, [2]> begin_0 = const()[name = string(\"begin_0\"), val = tensor<int32, [2]>([1, 0])];\n"
		"        tensor<int32, [2]> size_0 = const()[name = string(\"size_0\"), val = tensor<int32, [2]>([3, 4])];\n"
		"        tensor<fp16, [3, 4]> k_old = slice_by_size(x = read_state_0, begin = begin_0, size = size_0)[name = string(\"k_old\")];\n"
		"        int32 axis_0 = const()[name = string(\"axis_0\"), val = int32(0)];\n"
		"        tensor<fp16, [4, 4]> k_new = concat(values = (k_old, k), axis = axis_0)[name = string(\"k_new\")];\n"
		"        tensor<fp16, [4, 4]> coreml_update_state_0 = coreml_update_state(state = k_cache, value = k_new)[name = string(\"coreml_update_state_0\")];\n"
		"        tensor<fp16, [4, 4]> read_state_1 = read_state(input = v_cache)[name = string(\"read_state_1\")];\n"
		"        tensor<fp16, [3, 4]> v_old = slice_by_size(x = read_state_1, begin = begin_0, size = size_0)[name = string(\"v_old\")];\n"
		"        tensor<fp16, [4, 4]> v_new = concat(values = (v_old, v), axis = axis_0)[name = string(\"v_new\")];\n"
		"        tensor<fp16, [4, 4]> coreml_update_state_1 = coreml_update_state(state = v_cache, value = v_new)[name = string(\"coreml_update_state_1\")];\n"
		"        bool transpose_y_0 = const()[name = string(\"transpose_y_0\"), val = bool(true)];\n"
		"        tensor<fp16, [1, 4]> scores = matmul(x = q, y = coreml_update_state_0, transpose_y = transpose_y_0)[name = string(\"scores\")];\n"
		"        fp16 scale_0 = const()[name = string(\"scale_0\"), val = fp16(0x1p-1)];\n"
		"        tensor<fp16, [1, 4]> scaled = mul(x = scores, y = scale_0)[name = string(\"scaled\")];\n"
		"        int32 axis_1 = const()[name = string(\"axis_1\"), val = int32(-1)];\n"
		"        tensor<fp16, [1, 4]> probs = softmax(x = scaled, axis = axis_1)[name = string(\"probs\")];\n"
		"        tensor<fp16, [1, 4]> out = matmul(x = probs, y = coreml_update_state_1)[name = string(\"out\")];\n"
		"        tensor<fp16, [1]> read_state_2 = read_state(input = pos)[name = string(\"read_state_2\")];\n"
		"        fp16 one_0 = const()[name = string(\"one_0\"), val = fp16(0x1p+0)];\n"
		"        tensor<fp16, [1]> pos_1 = add(x = read_state_2, y = one_0)[name = string(\"pos_1\")];\n"
		"        tensor<fp16, [1]> coreml_update_state_2 = coreml_update_state(state = pos, value = pos_1)[name = string(\"coreml_update_state_2\")];\n"
		"    } -> (out, coreml_update_state_2);\n"
		"}\n";
	s = realloc(s, len + sizeof body);
	memcpy(s + len, body, sizeof body);
	return s;
}

static float r16(float v)
{
	return anes_f16_to_f32(anes_f32_to_f16(v));
}

/* The reference: the caches as the model keeps them (fp16 values), the
 * arithmetic in double. */
typedef struct kv_ref {
	float k[L][D], v[L][D];
	int pos;
} kv_ref;

static void ref_step(kv_ref *r, int t, float out[D])
{
	float x[D], q[D], k[D], v[D];
	for (int j = 0; j < D; j++)
		x[j] = token(t, j);
	for (int j = 0; j < D; j++) {
		double a = 0, b = 0, c = 0;
		for (int i = 0; i < D; i++) {
			a += x[i] * weight(0, i, j);
			b += x[i] * weight(1, i, j);
			c += x[i] * weight(2, i, j);
		}
		q[j] = r16((float)a);
		k[j] = r16((float)b);
		v[j] = r16((float)c);
	}
	memmove(r->k[0], r->k[1], sizeof r->k[0] * (L - 1));
	memmove(r->v[0], r->v[1], sizeof r->v[0] * (L - 1));
	memcpy(r->k[L - 1], k, sizeof k);
	memcpy(r->v[L - 1], v, sizeof v);
	double sc[L], mx = -1e30, sum = 0;
	for (int p = 0; p < L; p++) {
		double a = 0;
		for (int j = 0; j < D; j++)
			a += q[j] * r->k[p][j];
		sc[p] = a * 0.5;
		if (sc[p] > mx)
			mx = sc[p];
	}
	for (int p = 0; p < L; p++)
		sum += (sc[p] = exp(sc[p] - mx));
	for (int j = 0; j < D; j++) {
		double a = 0;
		for (int p = 0; p < L; p++)
			a += sc[p] / sum * r->v[p][j];
		out[j] = (float)a;
	}
	r->pos++;
}

/* ---- a client of the model -------------------------------------------------------- */

typedef struct kv {
	aneshare_conn *c;
	aneshare_program *p;
	aneshare_surface *x, *out, *pos;
} kv;

static void kv_open(kv *m, const h_daemon *d, const char *fn)
{
	m->c = h_connect(d, "test-states");
	char *mil = kv_mil(fn);
	int r = aneshare_program_compile(m->c, mil, NULL, 0, &m->p, NULL);
	free(mil);
	cr_assert_eq(r, 0, "compile: %s", aneshare_last_error(m->c));
	m->x = h_surface(m->c, 2 * D);
	m->out = h_surface(m->c, 2 * D);
	m->pos = h_surface(m->c, 2);
}

static void kv_close(kv *m)
{
	aneshare_surface_release(m->x);
	aneshare_surface_release(m->out);
	aneshare_surface_release(m->pos);
	aneshare_program_release(m->p);
	aneshare_disconnect(m->c);
}

static void fill_token(aneshare_surface *x, int t)
{
	uint16_t *v = aneshare_surface_data(x);
	for (int j = 0; j < D; j++)
		v[j] = anes_f32_to_f16(token(t, j));
}

/* Run token t on st into out/pos surfaces. */
static int kv_run_into(kv *m, aneshare_state *st, int t, aneshare_surface *x, aneshare_surface *out,
                       aneshare_surface *pos)
{
	fill_token(x, t);
	aneshare_surface *outs[] = { out, pos };
	return aneshare_run_state(m->p, 0, st, &x, 1, outs, 2);
}

/* The outputs against the reference after its step. */
static void check_out(aneshare_surface *out, aneshare_surface *pos, const kv_ref *r,
                      const float want[D], const char *what, int step)
{
	const uint16_t *o = aneshare_surface_data(out);
	for (int j = 0; j < D; j++)
		cr_assert(fabsf(anes_f16_to_f32(o[j]) - want[j]) <= 0.02f + 0.01f * fabsf(want[j]),
		          "%s step %d: out[%d] = %g, want %g", what, step, j,
		          (double)anes_f16_to_f32(o[j]), (double)want[j]);
	cr_assert_eq(anes_f16_to_f32(*(const uint16_t *)aneshare_surface_data(pos)), (float)r->pos,
	             "%s step %d: the counter", what, step);
}

static void kv_step_check(kv *m, aneshare_state *st, kv_ref *r, int t, const char *what)
{
	int rc = kv_run_into(m, st, t, m->x, m->out, m->pos);
	cr_assert_eq(rc, 0, "%s token %d: %s (%s)", what, t, aneshare_strerror(rc),
	             aneshare_last_error(m->c));
	float want[D];
	ref_step(r, t, want);
	check_out(m->out, m->pos, r, want, what, r->pos);
}

/* A fresh state of m's program (asserts it is made). */
static aneshare_state *kv_state(kv *m)
{
	aneshare_state *st = NULL;
	cr_assert_eq(aneshare_state_create(m->p, 0, &st), 0, "%s", aneshare_last_error(m->c));
	return st;
}

/* Another handle, on m's connection, to the program of function fn
 * (asserts the compile; cached as aneshare_program_compile's). */
static aneshare_program *kv_compile(kv *m, const char *fn, bool *cached)
{
	aneshare_program *p = NULL;
	char *mil = kv_mil(fn);
	cr_assert_eq(aneshare_program_compile(m->c, mil, NULL, 0, &p, cached), 0, "%s", aneshare_last_error(m->c));
	free(mil);
	return p;
}

/* Tokens first .. end - 1 on st, each checked against r (kv_step_check). */
static void kv_steps(kv *m, aneshare_state *st, kv_ref *r, int first, int end, const char *what)
{
	for (int t = first; t < end; t++)
		kv_step_check(m, st, r, t, what);
}

/* status's "states", "state_bytes" and the connection-independent surface counts. */
typedef struct counts {
	uint64_t states, state_bytes, surfaces, surface_bytes;
} counts;

static counts raw_counts(const h_daemon *d)
{
	h_rconn rc;
	counts k;
	h_rconn_open(&rc, d->sock);
	cr_assert_eq(h_rconn_call(&rc, 2, "status", NULL, 0, NULL, 0, "states", &k.states), 0);
	cr_assert_eq(h_rconn_call(&rc, 3, "status", NULL, 0, NULL, 0, "state_bytes", &k.state_bytes), 0);
	cr_assert_eq(h_rconn_call(&rc, 4, "status", NULL, 0, NULL, 0, "surfaces", &k.surfaces), 0);
	cr_assert_eq(h_rconn_call(&rc, 5, "status", NULL, 0, NULL, 0, "surface_bytes", &k.surface_bytes),
	             0);
	h_rconn_close(&rc);
	return k;
}

static h_daemon Dm;

static void stop_daemon(void)
{
	h_daemon_kill(&Dm);
}

/* Start Dm (default options) and open m on it, function main. */
static void kv_start(kv *m)
{
	h_daemon_start(&Dm);
	kv_open(m, &Dm, "main");
}

/* Close m and stop Dm (its exit status checked by h_daemon_stop). */
static void kv_stop(kv *m)
{
	kv_close(m);
	h_daemon_stop(&Dm);
}

/* ---- token by token ------------------------------------------------------------------ */

Test(states, kv_cache_runs_token_by_token_against_the_reference, .fini = stop_daemon)
{
	kv m;
	kv_start(&m);
	cr_assert_eq(aneshare_program_input_count(m.p, 0), 1, "states are not inputs");
	cr_assert_eq(aneshare_program_state_count(m.p, 0), 3);
	const aneshare_tensor_info *ti = aneshare_program_state(m.p, 0, 0);
	cr_assert_str_eq(ti->name, "k_cache");
	cr_assert_eq(ti->bytes, 2 * L * D);
	cr_assert_str_eq(aneshare_program_state(m.p, 0, 1)->name, "pos");
	cr_assert_null(aneshare_program_state(m.p, 0, 3));

	aneshare_state *st = kv_state(&m);
	/* k_cache 32 bytes, pos 2, v_cache 32: each at a multiple of 64 */
	cr_assert_eq(aneshare_state_size(st), 192);
	kv_ref r = { 0 };
	kv_steps(&m, st, &r, 0, 12, "one state");
	aneshare_status *s = h_status(m.c);
	cr_assert_geq(s->runs, 12);
	aneshare_status_free(s);
	cr_assert_eq(aneshare_state_release(st), 0);
	kv_stop(&m);
}

Test(states, two_states_of_one_program_stay_independent, .fini = stop_daemon)
{
	kv m;
	kv_start(&m);
	aneshare_state *a = kv_state(&m), *b = kv_state(&m);
	/* a second handle to the same program (a cache hit) fits both states */
	bool cached = false;
	aneshare_program *p2 = kv_compile(&m, "main", &cached);
	cr_assert(cached);
	kv_ref ra = { 0 }, rb = { 0 };
	for (int t = 0; t < 10; t++) {
		kv_step_check(&m, a, &ra, t, "conversation a");
		if (t % 3 != 2)   /* b gets other tokens, and fewer */
			kv_step_check(&m, b, &rb, 100 + 7 * t, "conversation b");
	}
	aneshare_program *keep = m.p;
	m.p = p2;
	kv_step_check(&m, b, &rb, 5, "b through the second handle");
	m.p = keep;
	kv_step_check(&m, a, &ra, 6, "a again");
	aneshare_program_release(p2);
	aneshare_state_release(a);
	aneshare_state_release(b);
	kv_stop(&m);
}

Test(states, reset_zeroes_the_state, .fini = stop_daemon)
{
	kv m;
	kv_start(&m);
	aneshare_state *st = kv_state(&m);
	kv_ref r = { 0 };
	kv_steps(&m, st, &r, 0, 5, "before the reset");
	cr_assert_eq(aneshare_state_reset(st), 0, "%s", aneshare_last_error(m.c));
	kv_ref fresh = { 0 };
	kv_steps(&m, st, &fresh, 40, 45, "after the reset");
	aneshare_state_release(st);
	kv_stop(&m);
}

/* ---- memory ------------------------------------------------------------------------------ */

Test(states, release_and_disconnect_give_the_memory_back, .fini = stop_daemon)
{
	h_daemon_start(&Dm);
	aneshare_conn *obs = h_connect(&Dm, "observer");
	kv m;
	kv_open(&m, &Dm, "main");
	counts base = raw_counts(&Dm);
	cr_assert_eq(base.states, 0);

	aneshare_state *st[3];
	for (int i = 0; i < 3; i++)
		cr_assert_eq(aneshare_state_create(m.p, 0, &st[i]), 0);
	uint64_t size = aneshare_state_size(st[0]);
	counts k = raw_counts(&Dm);
	cr_assert_eq(k.states, 3);
	cr_assert_eq(k.state_bytes, 3 * size);
	cr_assert_eq(k.surfaces, base.surfaces + 3, "a state counts as a surface");
	cr_assert_eq(k.surface_bytes, base.surface_bytes + 3 * size);
	aneshare_status *s = h_status(obs);
	uint64_t proc_bytes = 0;
	for (uint32_t i = 0; i < s->n_processes; i++)
		proc_bytes += s->process_list[i].surface_bytes;
	cr_assert_eq(proc_bytes, base.surface_bytes + 3 * size, "charged to the client process");
	aneshare_status_free(s);

	kv_ref r = { 0 };
	kv_step_check(&m, st[1], &r, 1, "a state among others");
	cr_assert_eq(aneshare_state_release(st[1]), 0);
	k = raw_counts(&Dm);
	cr_assert_eq(k.states, 2);
	cr_assert_eq(k.surface_bytes, base.surface_bytes + 2 * size);

	/* The connection's end frees the rest (and its surfaces). */
	aneshare_disconnect(m.c);
	h_wait_counts(obs, 0, 0);
	k = raw_counts(&Dm);
	cr_assert_eq(k.states, 0);
	cr_assert_eq(k.state_bytes, 0);
	cr_assert_eq(k.surface_bytes, 0);
	aneshare_disconnect(obs);
	h_daemon_stop(&Dm);
}

Test(states, state_memory_is_under_the_surface_limits, .fini = stop_daemon)
{
	/* 192 bytes a state; 3 surfaces of the client (x, out, pos) take 12 */
	const char *args[] = { "--max-total-surface-bytes", "500", NULL };
	h_daemon_start_args(&Dm, args);
	kv m;
	kv_open(&m, &Dm, "main");
	aneshare_state *a, *b, *c;
	a = kv_state(&m);
	b = kv_state(&m);
	int rc = aneshare_state_create(m.p, 0, &c);
	cr_assert_eq(rc, -ANESHARE_ELIMIT, "%s (%s)", aneshare_strerror(rc), aneshare_last_error(m.c));
	cr_assert(strstr(aneshare_last_error(m.c), "surface"), "%s", aneshare_last_error(m.c));
	aneshare_state_release(a);
	cr_assert_eq(aneshare_state_create(m.p, 0, &c), 0, "room again after a release: %s",
	             aneshare_last_error(m.c));
	aneshare_state_release(b);
	aneshare_state_release(c);
	kv_stop(&m);

	/* and the connection's count of surfaces */
	const char *args2[] = { "--max-surfaces", "4", NULL };
	h_daemon_start_args(&Dm, args2);
	kv_open(&m, &Dm, "main");
	a = kv_state(&m);
	rc = aneshare_state_create(m.p, 0, &b);
	cr_assert_eq(rc, -ANESHARE_ELIMIT, "%s (%s)", aneshare_strerror(rc), aneshare_last_error(m.c));
	aneshare_state_release(a);
	kv_stop(&m);

	/* and the size of one surface: the state's tensors together (192 bytes)
	 * are one surface's memory */
	const char *args3[] = { "--max-surface-bytes", "128", NULL };
	h_daemon_start_args(&Dm, args3);
	kv_open(&m, &Dm, "main");
	c = (aneshare_state *)(uintptr_t)0x5a5a;
	rc = aneshare_state_create(m.p, 0, &c);
	cr_assert_eq(rc, -ANESHARE_ELIMIT, "%s (%s)", aneshare_strerror(rc), aneshare_last_error(m.c));
	cr_assert(strstr(aneshare_last_error(m.c), "need more than max_surface_bytes (128)"), "%s",
	          aneshare_last_error(m.c));
	cr_assert_eq((uintptr_t)c, 0x5a5a);
	aneshare_status *st = h_status(m.c);
	cr_assert_eq(st->surfaces, 3, "no surface was made for it");
	aneshare_status_free(st);
	kv_stop(&m);
}

/* ---- what a run must name --------------------------------------------------------------- */

static const char *plain_mil =
	"program(1.3)\n{\n"
	"    func main<ios18>(tensor<fp16, [1, 4]> x) {\n"
	"        tensor<fp16, [1, 4]> y = add(x = x, y = x)[name = string(\"y\")];\n"
	"    } -> (y);\n}\n";

/* A raw run {program, inputs, outputs, state} with state packed by pack. */
static int raw_run(h_rconn *rc, uint32_t msgid, uint32_t prog, uint32_t in, uint32_t out0,
                   uint32_t out1, int n_out, void (*pack)(msgpack_packer *pk, void *ud), void *ud)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, pack ? 4 : 3);
	anes_pack_str(&pk, "program");
	msgpack_pack_uint32(&pk, prog);
	anes_pack_str(&pk, "inputs");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_uint32(&pk, in);
	anes_pack_str(&pk, "outputs");
	msgpack_pack_array(&pk, (size_t)n_out);
	msgpack_pack_uint32(&pk, out0);
	if (n_out > 1)
		msgpack_pack_uint32(&pk, out1);
	if (pack) {
		anes_pack_str(&pk, "state");
		pack(&pk, ud);
	}
	int r = h_rconn_call(rc, msgid, "run", sb.data, sb.size, NULL, 0, NULL, NULL);
	msgpack_sbuffer_destroy(&sb);
	return r;
}

static void pack_u32(msgpack_packer *pk, void *ud)
{
	msgpack_pack_uint32(pk, *(uint32_t *)ud);
}

static void pack_str(msgpack_packer *pk, void *ud)
{
	(void)ud;
	anes_pack_str(pk, "1");
}

static void pack_pk(msgpack_sbuffer *sb, const char *k1, uint64_t v1, const char *k2, const char *v2)
{
	msgpack_packer pk;
	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, k2 ? 2 : 1);
	anes_pack_str(&pk, k1);
	msgpack_pack_uint64(&pk, v1);
	if (k2) {
		anes_pack_str(&pk, k2);
		anes_pack_str(&pk, v2);
	}
}

static uint32_t raw_id(h_rconn *rc, uint32_t msgid, const char *method, const char *k1, uint64_t v1,
                       const char *k2, const char *v2)
{
	msgpack_sbuffer sb;
	pack_pk(&sb, k1, v1, k2, v2);
	uint64_t id = 0;
	int r = h_rconn_call(rc, msgid, method, sb.data, sb.size, NULL, 0, "id", &id);
	msgpack_sbuffer_destroy(&sb);
	cr_assert_eq(r, 0, "%s: wire error %d", method, r);
	return (uint32_t)id;
}

static int raw_call(h_rconn *rc, uint32_t msgid, const char *method, const char *k1, uint64_t v1,
                    const char *k2, const char *v2)
{
	msgpack_sbuffer sb;
	pack_pk(&sb, k1, v1, k2, v2);
	int r = h_rconn_call(rc, msgid, method, sb.data, sb.size, NULL, 0, NULL, NULL);
	msgpack_sbuffer_destroy(&sb);
	return r;
}

static uint32_t raw_compile(h_rconn *rc, uint32_t msgid, const char *mil)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	anes_pack_str(&pk, "mil");
	anes_pack_str(&pk, mil);
	uint64_t id = 0;
	int r = h_rconn_call(rc, msgid, "program.compile", sb.data, sb.size, NULL, 0, "id", &id);
	msgpack_sbuffer_destroy(&sb);
	cr_assert_eq(r, 0, "compile: wire error %d", r);
	return (uint32_t)id;
}

Test(states, a_run_names_a_state_made_for_its_function, .fini = stop_daemon)
{
	kv m;
	kv_start(&m);
	aneshare_surface *outs[] = { m.out, m.pos };
	/* without a state: refused, saying why */
	int rc = aneshare_run(m.p, 0, &m.x, 1, outs, 2);
	cr_assert_eq(rc, -ANESHARE_EINVALID_PARAMS, "%s", aneshare_strerror(rc));
	cr_assert(strstr(aneshare_last_error(m.c), "has 3 states"), "%s", aneshare_last_error(m.c));
	cr_assert(strstr(aneshare_last_error(m.c), "state.create"), "%s", aneshare_last_error(m.c));
	/* a state of another program (another function name: another content) */
	kv other;
	aneshare_program *p2 = kv_compile(&m, "other", NULL);
	aneshare_state *st2;
	cr_assert_eq(aneshare_state_create(p2, 0, &st2), 0);
	rc = kv_run_into(&m, st2, 1, m.x, m.out, m.pos);
	cr_assert_eq(rc, -ANESHARE_EINVALID_PARAMS, "%s", aneshare_strerror(rc));
	cr_assert(strstr(aneshare_last_error(m.c), "made for another program"), "%s",
	          aneshare_last_error(m.c));
	/* a function without states takes none; and has none to make */
	aneshare_program *plain;
	cr_assert_eq(aneshare_program_compile(m.c, plain_mil, NULL, 0, &plain, NULL), 0);
	aneshare_state *none = NULL;
	rc = aneshare_state_create(plain, 0, &none);
	cr_assert_eq(rc, -ANESHARE_EINVALID_PARAMS, "%s", aneshare_strerror(rc));
	cr_assert_null(none, "no out-parameter on failure");
	cr_assert(strstr(aneshare_last_error(m.c), "has no states"), "%s", aneshare_last_error(m.c));
	aneshare_surface *y = h_surface(m.c, 8);
	rc = aneshare_run_state(plain, 0, st2, &m.x, 1, &y, 1);
	cr_assert_eq(rc, -ANESHARE_EINVALID_PARAMS, "%s", aneshare_strerror(rc));
	cr_assert(strstr(aneshare_last_error(m.c), "takes no \"state\""), "%s", aneshare_last_error(m.c));
	/* the right one still runs */
	kv_ref r = { 0 };
	aneshare_program *keep = m.p;
	m.p = p2;
	kv_step_check(&m, st2, &r, 3, "after the refusals");
	m.p = keep;
	(void)other;

	/* the wire: an unknown ID, a state that is not a uint, a released one,
	 * state.* with bad params */
	h_rconn raw;
	h_rconn_open(&raw, Dm.sock);
	char *mil = kv_mil("main");
	uint32_t pid = raw_compile(&raw, 10, mil);
	free(mil);
	uint32_t x = raw_id(&raw, 11, "surface.create", "size", 8, NULL, NULL);
	uint32_t o = raw_id(&raw, 12, "surface.create", "size", 8, NULL, NULL);
	uint32_t n = raw_id(&raw, 13, "surface.create", "size", 2, NULL, NULL);
	uint32_t sid = raw_id(&raw, 14, "state.create", "program", pid, "function", "main");
	cr_assert_eq(raw_run(&raw, 15, pid, x, o, n, 2, pack_u32, &sid), 0);
	uint32_t bad = sid + 100;
	cr_assert_eq(raw_run(&raw, 16, pid, x, o, n, 2, pack_u32, &bad), ANES_WERR_NO_SUCH_STATE);
	cr_assert_eq(raw_run(&raw, 17, pid, x, o, n, 2, pack_str, NULL), ANES_WERR_INVALID_PARAMS);
	cr_assert_eq(raw_run(&raw, 18, pid, x, o, n, 2, NULL, NULL), ANES_WERR_INVALID_PARAMS);
	cr_assert_eq(raw_call(&raw, 19, "state.create", "program", pid, "function", "nope"),
	             ANES_WERR_NO_SUCH_FUNCTION);
	cr_assert_eq(raw_call(&raw, 20, "state.create", "program", pid + 50, NULL, NULL),
	             ANES_WERR_NO_SUCH_PROGRAM);
	cr_assert_eq(raw_call(&raw, 21, "state.create", "nothing", 1, NULL, NULL), ANES_WERR_INVALID_PARAMS);
	cr_assert_eq(raw_call(&raw, 22, "state.reset", "id", bad, NULL, NULL), ANES_WERR_NO_SUCH_STATE);
	cr_assert_eq(raw_call(&raw, 23, "state.release", "id", sid, NULL, NULL), 0);
	cr_assert_eq(raw_call(&raw, 24, "state.release", "id", sid, NULL, NULL), ANES_WERR_NO_SUCH_STATE);
	cr_assert_eq(raw_run(&raw, 25, pid, x, o, n, 2, pack_u32, &sid), ANES_WERR_NO_SUCH_STATE);
	/* a state of this connection is no other connection's */
	uint32_t sid2 = raw_id(&raw, 26, "state.create", "program", pid, NULL, NULL);
	h_rconn other_conn;
	h_rconn_open(&other_conn, Dm.sock);
	cr_assert_eq(raw_call(&other_conn, 2, "state.reset", "id", sid2, NULL, NULL),
	             ANES_WERR_NO_SUCH_STATE);
	h_rconn_close(&other_conn);
	/* a chain step names its own */
	h_rconn_close(&raw);

	aneshare_surface_release(y);
	aneshare_program_release(plain);
	aneshare_state_release(st2);
	aneshare_program_release(p2);
	kv_stop(&m);
}

/* ---- chains ------------------------------------------------------------------------------ */

Test(states, each_chain_step_names_its_own_state, .fini = stop_daemon)
{
	kv m;
	kv_start(&m);
	aneshare_state *a = kv_state(&m), *b = kv_state(&m);
	/* four steps: a, b, a, a -- each with its own surfaces */
	enum { S = 4 };
	aneshare_surface *x[S], *o[S][2];
	aneshare_surface *outs[S][2];
	aneshare_step steps[S];
	aneshare_state *sts[S] = { a, b, a, a };
	int tok[S] = { 3, 50, 4, 5 };
	for (int i = 0; i < S; i++) {
		x[i] = h_surface(m.c, 2 * D);
		o[i][0] = h_surface(m.c, 2 * D);
		o[i][1] = h_surface(m.c, 2);
		outs[i][0] = o[i][0];
		outs[i][1] = o[i][1];
		fill_token(x[i], tok[i]);
		steps[i] = (aneshare_step){ m.p, 0, &x[i], 1, outs[i], 2 };
	}
	cr_assert_eq(aneshare_run_chain_states(m.c, steps, sts, S), 0, "%s", aneshare_last_error(m.c));
	kv_ref ra = { 0 }, rb = { 0 };
	for (int i = 0; i < S; i++) {
		float want[D];
		kv_ref *r = sts[i] == a ? &ra : &rb;
		ref_step(r, tok[i], want);
		check_out(o[i][0], o[i][1], r, want, sts[i] == a ? "chain a" : "chain b", i);
	}
	/* a step without its state: the chain is refused as a whole, naming it */
	sts[2] = NULL;
	int rc = aneshare_run_chain_states(m.c, steps, sts, S);
	cr_assert_eq(rc, -ANESHARE_EINVALID_PARAMS);
	cr_assert_eq(aneshare_last_failed_step(m.c), 2);
	/* nothing ran: a continues where it was */
	kv_step_check(&m, a, &ra, 9, "after the refused chain");
	for (int i = 0; i < S; i++) {
		aneshare_surface_release(x[i]);
		aneshare_surface_release(o[i][0]);
		aneshare_surface_release(o[i][1]);
	}
	aneshare_state_release(a);
	aneshare_state_release(b);
	kv_stop(&m);
}

/* ---- runs in flight on one state ------------------------------------------------------- */

/* Let n runs through the gate (--fault-inject run_gate; -1: none). */
static void gate_open(int gate, unsigned n)
{
	if (gate < 0)
		return;
	char tokens[64];
	memset(tokens, 'g', sizeof tokens);
	cr_assert_leq(n, sizeof tokens);
	cr_assert_eq(write(gate, tokens, n), (ssize_t)n);
}

/* K runs on one state submitted without waiting, a reset among them, then
 * more: they run one at a time in the order sent (each sees the state the
 * one before left: the counter says so), whatever threads take them.  With
 * a gate, every run waits at it until the test lets a round's runs through
 * at once: several job threads would take them together if the daemon did
 * not hold the state's later runs back. */
static void pipelined_runs_in_order(const char *const *args, int gate)
{
	h_daemon_start_args(&Dm, args);
	kv m;
	kv_open(&m, &Dm, "main");
	aneshare_state *st = kv_state(&m);
	enum { K = 24, RESET_AT = 16 };
	aneshare_surface *x[K], *o[K], *n[K];
	uint32_t t[K];
	for (int i = 0; i < K; i++) {
		x[i] = h_surface(m.c, 2 * D);
		o[i] = h_surface(m.c, 2 * D);
		n[i] = h_surface(m.c, 2);
		fill_token(x[i], i);
	}
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < RESET_AT; i++) {
			aneshare_surface *outs[] = { o[i], n[i] };
			cr_assert_eq(aneshare_run_state_submit(m.p, 0, st, &x[i], 1, outs, 2, &t[i]), 0);
		}
		if (gate >= 0) {
			/* Every run is admitted before status is answered (requests
			 * are read in order); at most one of them is with the job
			 * threads, the rest wait for the state, not for a thread. */
			aneshare_status *s = h_status(m.c);
			bool found = false;
			for (uint32_t i = 0; i < s->n_processes; i++) {
				const struct aneshare_status_process *pr = &s->process_list[i];
				if (pr->pid != (uint64_t)getpid())
					continue;
				found = true;
				cr_assert_eq(pr->jobs, RESET_AT);
				cr_assert_leq(pr->queued, 1, "%llu runs of one state queued for the threads",
				              (unsigned long long)pr->queued);
			}
			cr_assert(found);
			aneshare_status_free(s);
		}
		gate_open(gate, RESET_AT);
		/* blocks until done: after the runs before it */
		cr_assert_eq(aneshare_state_reset(st), 0, "%s", aneshare_last_error(m.c));
		for (int i = RESET_AT; i < K; i++) {
			aneshare_surface *outs[] = { o[i], n[i] };
			cr_assert_eq(aneshare_run_state_submit(m.p, 0, st, &x[i], 1, outs, 2, &t[i]), 0);
		}
		gate_open(gate, K - RESET_AT);
		for (int i = K - 1; i >= 0; i--)   /* waited for in any order */
			cr_assert_eq(aneshare_wait(m.c, t[i]), 0, "run %d: %s", i, aneshare_last_error(m.c));
		kv_ref r = { 0 };
		for (int i = 0; i < K; i++) {
			if (i == RESET_AT)
				r = (kv_ref){ 0 };
			float want[D];
			ref_step(&r, i, want);
			check_out(o[i], n[i], &r, want, "pipelined", i);
		}
		cr_assert_eq(aneshare_state_reset(st), 0);
	}
	for (int i = 0; i < K; i++) {
		aneshare_surface_release(x[i]);
		aneshare_surface_release(o[i]);
		aneshare_surface_release(n[i]);
	}
	aneshare_state_release(st);
	kv_stop(&m);
}

Test(states, runs_on_one_state_go_in_order_on_the_job_threads, .fini = stop_daemon)
{
	char gdir[] = "/tmp/anes-gate-XXXXXX", gpath[64], garg[96];
	cr_assert_not_null(mkdtemp(gdir));
	snprintf(gpath, sizeof gpath, "%s/gate", gdir);
	cr_assert_eq(mkfifo(gpath, 0600), 0);
	snprintf(garg, sizeof garg, "run_gate=%s", gpath);
	int gate = open(gpath, O_RDWR | O_CLOEXEC);
	cr_assert_geq(gate, 0);
	const char *args[] = { "--workers", "4", "--no-lanes", "--fault-inject", garg, NULL };
	pipelined_runs_in_order(args, gate);
	close(gate);
	unlink(gpath);
	rmdir(gdir);
}

Test(states, runs_on_one_state_go_in_order_with_lanes, .fini = stop_daemon)
{
	const char *args[] = { "--workers", "4", NULL };
	pipelined_runs_in_order(args, -1);
}

/* A stop (two SIGTERMs) while one run of a state is at the gate and more
 * wait for the state: the waiting ones are never started (shutting_down,
 * or no answer once the connection is closed), the one running finishes,
 * and the daemon exits 0 -- the waiting runs are ended as cancelled when
 * the running one's done() hands them to the stopped pool. */
Test(states, a_stop_ends_the_runs_waiting_for_a_state, .fini = stop_daemon)
{
	char gdir[] = "/tmp/anes-gate-XXXXXX", gpath[64], garg[96];
	cr_assert_not_null(mkdtemp(gdir));
	snprintf(gpath, sizeof gpath, "%s/gate", gdir);
	cr_assert_eq(mkfifo(gpath, 0600), 0);
	snprintf(garg, sizeof garg, "run_gate=%s", gpath);
	int gate = open(gpath, O_RDWR | O_CLOEXEC);
	cr_assert_geq(gate, 0);
	const char *args[] = { "--workers", "2", "--no-lanes", "--fault-inject", garg, NULL };
	h_daemon_start_args(&Dm, args);
	kv m;
	kv_open(&m, &Dm, "main");
	aneshare_state *st = kv_state(&m);
	enum { K = 6 };
	aneshare_surface *o[K], *n[K];
	uint32_t t[K];
	fill_token(m.x, 1);
	for (int i = 0; i < K; i++) {
		o[i] = h_surface(m.c, 2 * D);
		n[i] = h_surface(m.c, 2);
		aneshare_surface *outs[] = { o[i], n[i] };
		cr_assert_eq(aneshare_run_state_submit(m.p, 0, st, &m.x, 1, outs, 2, &t[i]), 0);
	}
	aneshare_status *s = h_status(m.c);   /* every run admitted */
	aneshare_status_free(s);
	cr_assert_eq(kill(Dm.pid, SIGTERM), 0);
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	aneshare_conn *late = NULL;
	while (aneshare_connect(Dm.sock, "late", &late) == 0) {
		aneshare_disconnect(late);
		late = NULL;
		cr_assert(tu_now_ms() < deadline, "the daemon still accepts after SIGTERM");
	}
	cr_assert_eq(kill(Dm.pid, SIGTERM), 0);
	gate_open(gate, K);   /* the run at the gate, and any that start before the stop */
	int done = 0;
	for (int i = 0; i < K; i++) {
		int r = aneshare_wait(m.c, t[i]);
		cr_assert(r == 0 || r == -ANESHARE_ESHUTTING_DOWN || r == -ANESHARE_EDISCONNECTED,
		          "run %d: %s (%s)", i, aneshare_strerror(r), aneshare_last_error(m.c));
		if (r == 0) {
			cr_assert_eq(done, i, "run %d finished after one that did not", i);
			cr_assert_eq(anes_f16_to_f32(*(const uint16_t *)aneshare_surface_data(n[i])),
			             (float)(i + 1), "run %d saw the runs before it", i);
			done++;
		}
	}
	h_daemon_wait(&Dm);   /* exit status 0 */
	for (int i = 0; i < K; i++) {
		aneshare_surface_release(o[i]);
		aneshare_surface_release(n[i]);
	}
	aneshare_state_release(st);
	aneshare_surface_release(m.x);
	aneshare_surface_release(m.out);
	aneshare_surface_release(m.pos);
	aneshare_program_release(m.p);
	aneshare_disconnect(m.c);
	close(gate);
	unlink(gpath);
	rmdir(gdir);
}

/* Two clients' states at once: each client's runs in order, none waiting
 * for the other's state. */
Test(states, states_of_two_connections_run_side_by_side, .fini = stop_daemon)
{
	const char *args[] = { "--workers", "2", "--no-lanes", NULL };
	h_daemon_start_args(&Dm, args);
	kv m[2];
	aneshare_state *st[2];
	for (int k = 0; k < 2; k++) {
		kv_open(&m[k], &Dm, "main");
		st[k] = kv_state(&m[k]);
	}
	kv_ref r[2];
	memset(r, 0, sizeof r);
	for (int t = 0; t < 8; t++)
		for (int k = 0; k < 2; k++)
			kv_step_check(&m[k], st[k], &r[k], t * (k + 1), k ? "client 1" : "client 0");
	for (int k = 0; k < 2; k++) {
		aneshare_state_release(st[k]);
		kv_close(&m[k]);
	}
	h_daemon_stop(&Dm);
}

/* ---- failures ------------------------------------------------------------------------------ */

Test(states, a_failed_run_leaves_the_state_lost_until_reset, .fini = stop_daemon)
{
	const char *args[] = { "--fault-inject", "run_fail=fail_me", NULL };
	h_daemon_start_args(&Dm, args);
	kv m;
	kv_open(&m, &Dm, "fail_me");
	aneshare_state *st = kv_state(&m);
	int rc = kv_run_into(&m, st, 1, m.x, m.out, m.pos);
	cr_assert_eq(rc, -ANESHARE_ERUN_FAILED, "%s", aneshare_strerror(rc));
	rc = kv_run_into(&m, st, 1, m.x, m.out, m.pos);
	cr_assert_eq(rc, -ANESHARE_ESTATE_LOST, "%s", aneshare_strerror(rc));
	cr_assert(strstr(aneshare_last_error(m.c), "state.reset"), "%s", aneshare_last_error(m.c));
	cr_assert(!aneshare_error_is_retryable(rc));
	cr_assert_eq(aneshare_state_reset(st), 0);
	rc = kv_run_into(&m, st, 1, m.x, m.out, m.pos);
	cr_assert_eq(rc, -ANESHARE_ERUN_FAILED, "the fault is still on: %s", aneshare_strerror(rc));
	aneshare_state_release(st);
	kv_stop(&m);
}

/* ---- the device worker ---------------------------------------------------------------------- */

typedef struct wstat {
	int64_t pid;
	uint64_t restarts, restoring;
} wstat;

static void worker_cb(const msgpack_object *res, void *ud)
{
	wstat *w = ud;
	const msgpack_object *wm = anes_mp_get(res, "worker");
	if (!wm || wm->type != MSGPACK_OBJECT_MAP)
		return;
	uint64_t pid = 0;
	(void)anes_mp_u64(wm, "pid", UINT64_MAX, &pid);
	w->pid = (int64_t)pid;
	(void)anes_mp_u64(wm, "restarts", UINT64_MAX, &w->restarts);
	(void)anes_mp_u64(wm, "restoring", UINT64_MAX, &w->restoring);
}

static wstat worker_now(void)
{
	wstat w = { 0 };
	int fd = h_raw_open(Dm.sock);
	static const uint8_t empty_map = 0x80;
	cr_assert_eq(h_raw_request(fd, 9, "status", &empty_map, 1, NULL, 0), 0);
	cr_assert_eq(h_raw_response_cb(fd, 9, 5000, worker_cb, &w), 0);
	close(fd);
	return w;
}

/* A new worker up (restarts at least n, another pid), its programs back. */
static wstat worker_back(uint64_t n, int64_t old_pid)
{
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	for (;;) {
		wstat w = worker_now();
		if (w.restarts >= n && w.pid > 0 && w.pid != old_pid && w.restoring == 0)
			return w;
		cr_assert(tu_now_ms() < deadline, "no new worker");
		tu_pause_ms(10);
	}
}

Test(states, in_a_device_worker, .fini = stop_daemon)
{
	anes_test_clock *clk = h_fake_clock();
	const char *args[] = { "--backend", "cpu", "--worker", "--run-deadline-floor-ms", "1000", NULL };
	h_daemon_start_args(&Dm, args);
	kv m;
	kv_open(&m, &Dm, "main");
	aneshare_state *a = kv_state(&m), *b = kv_state(&m);
	kv_ref ra = { 0 }, rb = { 0 };
	for (int t = 0; t < 6; t++) {
		kv_step_check(&m, a, &ra, t, "worker a");
		kv_step_check(&m, b, &rb, 60 - t, "worker b");
	}

	/* The worker dies between runs: the states live in the daemon and go on. */
	wstat w0 = worker_now();
	cr_assert_gt(w0.pid, 0);
	cr_assert_eq(kill((pid_t)w0.pid, SIGKILL), 0);
	wstat w1 = worker_back(1, w0.pid);
	kv_steps(&m, a, &ra, 6, 9, "a after a restart between runs");

	/* The worker dies during a run of b (stopped, then killed by the
	 * watchdog on the daemon's clock): that run is not done, and b's
	 * contents are unknown; a is untouched. */
	cr_assert_eq(kill((pid_t)w1.pid, SIGSTOP), 0);
	fill_token(m.x, 1);
	aneshare_surface *outs[] = { m.out, m.pos };
	uint32_t t;
	cr_assert_eq(aneshare_run_state_submit(m.p, 0, b, &m.x, 1, outs, 2, &t), 0);
	/* Move the clock past the run's deadline until the answer comes
	 * (the run may reach the worker after one move). */
	struct pollfd pfd = { .fd = aneshare_fd(m.c), .events = POLLIN };
	int polls = 0;
	do {
		atomic_fetch_add(&clk->now_ns, 2000000000ull);
		cr_assert_lt(polls++, 200 * h_slow(), "the run was never answered");
	} while (poll(&pfd, 1, 50) == 0);
	int rc = aneshare_wait(m.c, t);
	cr_assert_eq(rc, -ANESHARE_EWORKER_RESTARTED, "%s (%s)", aneshare_strerror(rc),
	             aneshare_last_error(m.c));
	worker_back(2, w1.pid);
	rc = kv_run_into(&m, b, 2, m.x, m.out, m.pos);
	cr_assert_eq(rc, -ANESHARE_ESTATE_LOST, "%s (%s)", aneshare_strerror(rc), aneshare_last_error(m.c));
	kv_step_check(&m, a, &ra, 9, "a after b was lost");
	cr_assert_eq(aneshare_state_reset(b), 0);
	rb = (kv_ref){ 0 };
	for (int k = 0; k < 3; k++)
		kv_step_check(&m, b, &rb, 20 + k, "b after its reset");
	aneshare_state_release(a);
	aneshare_state_release(b);
	kv_stop(&m);
}

/* ---- the CLI ------------------------------------------------------------------------------------ */

Test(states, the_cli_runs_a_stateful_program_once_on_a_fresh_state, .fini = stop_daemon)
{
	h_daemon_start(&Dm);
	char path[256], out[8192];
	snprintf(path, sizeof path, "%s/kv.mil", Dm.dir);
	char *mil = kv_mil("main");
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f);
	cr_assert_eq(fputs(mil, f) >= 0, true);
	cr_assert_eq(fclose(f), 0);
	free(mil);
	const char *cargs[] = { "compile", path, NULL };
	cr_assert_eq(h_run_tool(&Dm, "ANESHARE_CLI", out, sizeof out, cargs), 0, "%s", out);
	cr_assert(strstr(out, "state  k_cache: fp16 [4, 4] (32 bytes)"), "%s", out);
	/* token 0 from zeros: the counter output is 1 */
	const char *rargs[] = { "run", path, "--fill", "zeros", NULL };
	cr_assert_eq(h_run_tool(&Dm, "ANESHARE_CLI", out, sizeof out, rargs), 0, "%s", out);
	cr_assert(strstr(out, "ran in"), "%s", out);
	const char *ctr = strstr(out, "output coreml_update_state_2: fp16 [1] (2 bytes)");
	cr_assert(ctr && strstr(ctr, "first: 1\n"), "%s", out);
	counts k = raw_counts(&Dm);
	cr_assert_eq(k.states, 0, "the CLI's state went with its connection");
	h_daemon_stop(&Dm);
}

/* ---- a restarted daemon ---------------------------------------------------------------------- */

Test(states, after_a_reconnect_the_state_is_made_again_and_marked_lost, .fini = stop_daemon)
{
	kv m;
	kv_start(&m);
	aneshare_state *st = kv_state(&m);
	kv_ref r = { 0 };
	kv_steps(&m, st, &r, 0, 3, "before the crash");
	/* a state made through a handle released since: it fits m.p (same
	 * content) but cannot be made again without its program */
	aneshare_program *p2 = kv_compile(&m, "main", NULL);
	aneshare_state *orphan;
	cr_assert_eq(aneshare_state_create(p2, 0, &orphan), 0);
	aneshare_program_release(p2);
	kv_ref ro = { 0 };
	kv_step_check(&m, orphan, &ro, 7, "a state whose handle was released");
	h_daemon_crash(&Dm);
	h_daemon_restart(&Dm, true);
	/* the first call reconnects: programs, surfaces and the state made again */
	int rc = kv_run_into(&m, st, 3, m.x, m.out, m.pos);
	cr_assert_eq(rc, -ANESHARE_ESTATE_LOST, "%s (%s)", aneshare_strerror(rc), aneshare_last_error(m.c));
	cr_assert_eq(aneshare_reconnect_count(m.c), 1);
	cr_assert_eq(aneshare_state_reset(st), 0, "%s", aneshare_last_error(m.c));
	r = (kv_ref){ 0 };
	kv_steps(&m, st, &r, 0, 3, "after the restart and reset");
	rc = kv_run_into(&m, orphan, 8, m.x, m.out, m.pos);
	cr_assert_eq(rc, -ANESHARE_ENO_SUCH_STATE, "%s (%s)", aneshare_strerror(rc), aneshare_last_error(m.c));
	cr_assert_eq(aneshare_state_reset(orphan), -ANESHARE_ENO_SUCH_STATE);
	counts k = raw_counts(&Dm);
	cr_assert_eq(k.states, 1);
	cr_assert_eq(aneshare_state_release(orphan), 0);
	aneshare_state_release(st);
	kv_stop(&m);
}
