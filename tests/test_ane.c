/* SPDX-License-Identifier: MIT */
/*
 * ANE backend tests, against the fake Objective-C runtime of tests/ane_fake.c:
 * the exact call sequence (classes, selectors, argument values) of compile,
 * load, run and unload; a failure injected at every step, each of which must
 * fail cleanly (nothing left alive, NSError text intact in errbuf); the
 * constraints enforced before the framework is called; and, on this machine,
 * the real bridge and aneshared --backend.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <math.h>

#include "ane_backend.h"
#include "anes_fp16.h"
#include "ane_fake.h"

static anes_backend *B;
static char errbuf[512];
static char tmpdir[256];

static void make_tmpdir(void)
{
	const char *t = getenv("TMPDIR");
	snprintf(tmpdir, sizeof tmpdir, "%s/anes-ane-XXXXXX", t && *t ? t : "/tmp");
	cr_assert(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
}

static void new_backend(void)
{
	fake_reset();
	snprintf(fk.tmpdir, sizeof fk.tmpdir, "%s", tmpdir);
	errbuf[0] = '\0';
	int rc = anes_ane_backend_new(fake_bridge(), &B, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "anes_ane_backend_new: %d %s", rc, errbuf);
	cr_assert_str_eq(B->ops->name, "ane");
	cr_assert_eq(fk.misuse[0], '\0', "%s", fk.misuse);
	/* the start-up sweep of leftover directories is not part of what the
	 * tests below count */
	fake_log_clear();
	fk.n_failable = 0;
}

/* TMP/.aneshare.lock stays (it is only ever locked); remove it to see
 * whether anything else is left */
static void unlink_lock(void)
{
	char lock[512];
	snprintf(lock, sizeof lock, "%s/.aneshare.lock", tmpdir);
	unlink(lock);
}

/* nothing alive, nothing misused, no files left */
static void check_clean(const char *when)
{
	cr_assert_eq(fk.misuse[0], '\0', "%s: misuse: %s", when, fk.misuse);
	cr_assert_eq(fk.live_objects, 0, "%s: %ld objects alive\n%s", when, fk.live_objects, fake_log_text());
	cr_assert_eq(fk.live_surfaces, 0, "%s: %ld surfaces alive", when, fk.live_surfaces);
	cr_assert_eq(fk.pool_depth, 0, "%s: %ld pools not popped", when, fk.pool_depth);
	/* the temp directory holds no model directory or marker any more */
	unlink_lock();
	cr_assert_eq(rmdir(tmpdir), 0, "%s: %s is not empty (%s)", when, tmpdir, strerror(errno));
	cr_assert_eq(mkdir(tmpdir, 0700), 0);
}

static void destroy_backend(void)
{
	B->ops->destroy(B);
	B = NULL;
}

static void setup(void)
{
	make_tmpdir();
	new_backend();
}

static void teardown(void)
{
	if (B)
		destroy_backend();
	unlink_lock();
	rmdir(tmpdir);
	fake_reset();
}

TestSuite(ane, .init = setup, .fini = teardown);

/* Criterion does not fail a test on an assertion in .fini, so every test ends
 * with this check in its own body: the backend destroyed, nothing alive. */
static void finish(void)
{
	if (B)
		destroy_backend();
	check_clean("end of test");
}

#define ANE_TEST(name)                          \
	static void body_##name(void);          \
	Test(ane, name) { body_##name(); finish(); } \
	static void body_##name(void)
#define ANE_TEST_TIMEOUT(name, secs)            \
	static void body_##name(void);          \
	Test(ane, name, .timeout = secs) { body_##name(); finish(); } \
	static void body_##name(void)

/* ---- helpers ---- */

static char *mil(const char *inputs, const char *body, const char *outs)
{
	static char text[1 << 14];
	snprintf(text, sizeof text,
	         "program(1.3)\n{\n    func main<ios18>(%s) {\n%s\n    } -> (%s);\n}\n", inputs, body, outs);
	return text;
}

/* x [1, 64, 1, 64] fp16 -> y = x + x */
static const char *simple_mil(void)
{
	return mil("tensor<fp16, [1, 64, 1, 64]> x",
	           "        tensor<fp16, [1, 64, 1, 64]> y = add(x = x, y = x)[name = string(\"y\")];", "y");
}

static const char *data_str(const void *p, size_t n)
{
	static char buf[8][64];
	static int k;
	k = (k + 1) % 8;
	return fake_data_str(p, n, buf[k], sizeof buf[k]);
}

static const char *surface_props(unsigned long long bytes)
{
	static char buf[4][256];
	static int k;
	k = (k + 1) % 4;
	snprintf(buf[k], sizeof buf[k],
	         "{\"IOSurfaceAllocSize\": %llu, \"IOSurfaceBytesPerElement\": 1, \"IOSurfaceBytesPerRow\": %llu, "
	         "\"IOSurfaceHeight\": 1, \"IOSurfacePixelFormat\": 0, \"IOSurfaceWidth\": %llu}",
	         bytes, bytes, bytes);
	return buf[k];
}

#define REQUEST_SEL "requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:"

static void expect_log(const char *const *lines, size_t n)
{
	const char *all = fake_log_text();
	for (size_t i = 0; i < n && i < fk.n_log; i++)
		cr_assert_str_eq(fk.log[i], lines[i], "call %zu differs; the whole sequence:\n%s", i, all);
	cr_assert_eq(fk.n_log, n, "%zu calls, expected %zu; the whole sequence:\n%s", fk.n_log, n, all);
}

static anes_bprogram *compile_ok(const char *text, const anes_weight *w, size_t nw)
{
	anes_bprogram *p = NULL;
	int rc = B->ops->compile(B, text, strlen(text), w, nw, &p, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "compile failed (%d): %s\n%s", rc, errbuf, text);
	cr_assert_not_null(p);
	cr_assert_eq(fk.misuse[0], '\0', "%s", fk.misuse);
	return p;
}

static void compile_fails(const char *text, const anes_weight *w, size_t nw, int want_rc, const char *want_err)
{
	anes_bprogram *p = (anes_bprogram *)0x1;
	int rc = B->ops->compile(B, text, strlen(text), w, nw, &p, errbuf, sizeof errbuf);
	cr_assert_eq(rc, want_rc, "rc %d, expected %d: %s", rc, want_rc, errbuf);
	cr_assert_eq(p, (anes_bprogram *)0x1, "the out-parameter was written on failure");
	cr_assert(strstr(errbuf, want_err), "error \"%s\" does not contain \"%s\"", errbuf, want_err);
}

/* Rejected before the framework: no ANE call at all. */
static void refused(const char *text, const anes_weight *w, size_t nw, int want_rc, const char *want_err)
{
	fake_log_clear();
	compile_fails(text, w, nw, want_rc, want_err);
	cr_assert_eq(fk.n_log, 0, "the framework was called:\n%s", fake_log_text());
}

/* A weight blob (the layout daemon/mil reads): header, chunk at 64, fp16 data at 128. */
static uint8_t *make_blob(size_t n_elems, uint16_t seed, size_t *ret_len)
{
	size_t len = 128 + n_elems * 2;
	uint8_t *b = calloc(1, len);
	b[0] = 1;
	b[4] = 2;
	uint8_t hdr[20] = {0xEF, 0xBE, 0xAD, 0xDE, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 128, 0, 0, 0};
	uint32_t sz = (uint32_t)(n_elems * 2);
	memcpy(hdr + 8, &sz, 4);
	memcpy(b + 64, hdr, sizeof hdr);
	for (size_t i = 0; i < n_elems; i++) {
		uint16_t v = (uint16_t)(0x3c00 + ((i * 7 + seed) & 0xff));
		memcpy(b + 128 + 2 * i, &v, 2);
	}
	*ret_len = len;
	return b;
}

static bool exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

/* ---- the call sequence ---- */

ANE_TEST(compile_run_unload_sequence)
{
	const char *text = simple_mil();
	anes_bprogram *p = compile_ok(text, NULL, 0);

	char hex[64];
	fake_hex_id(text, strlen(text), NULL, NULL, NULL, 0, hex, sizeof hex);
	char l0[256], create[300], req[300];
	snprintf(l0, sizeof l0, "_ANEInMemoryModelDescriptor modelWithMILText:weights:optionsPlist: %s {} nil",
	         data_str(text, strlen(text)));
	/* 8 KiB tensors get the minimum surface */
	snprintf(create, sizeof create, "IOSurfaceCreate %s", surface_props(49152));
	snprintf(req, sizeof req, "_ANERequest " REQUEST_SEL " [surfobj#1] [0] [surfobj#2] [0] nil nil 0");
	const char *seq[] = {
		l0,
		"_ANEInMemoryModel inMemoryModelWithDescriptor: desc#1",
		"model#1 hexStringIdentifier",
		"NSTemporaryDirectory",
		"model#1 compileWithQoS:options:error: 21 {} &error",
		"model#1 loadWithQoS:options:error: 21 {} &error",
		create, "_ANEIOSurfaceObject objectWithIOSurface: surface#1",
		create, "_ANEIOSurfaceObject objectWithIOSurface: surface#2",
		req,
	};
	expect_log(seq, sizeof seq / sizeof seq[0]);

	/* the interface the daemon reads */
	cr_assert_eq(p->n_functions, 1);
	cr_assert_str_eq(p->functions[0].name, "main");
	cr_assert_eq(p->functions[0].n_inputs, 1);
	cr_assert_eq(p->functions[0].inputs[0].bytes, 64 * 64 * 2);

	/* the model files stay in TMP/HEX while the program lives */
	char path[512];
	snprintf(path, sizeof path, "%s/%s/model.mil", tmpdir, hex);
	cr_assert(exists(path), "%s missing", path);

	/* run: copy in, evaluate, copy out (the fake's model copies input 0 to each output) */
	fake_log_clear();
	uint16_t *in = malloc(8192), *out = calloc(1, 8192);
	for (int i = 0; i < 4096; i++)
		in[i] = (uint16_t)(i * 31 + 7);
	const void *ins[] = {in};
	void *outs[] = {out};
	cr_assert_eq(B->ops->run(B, p, 0, ins, outs, errbuf, sizeof errbuf), 0, "%s", errbuf);
	const char *run_seq[] = {
		"IOSurfaceLock surface#1 0",
		"IOSurfaceUnlock surface#1 0",
		"model#1 evaluateWithQoS:options:request:error: 21 {} request#1 &error",
		"IOSurfaceLock surface#2 1",
		"IOSurfaceUnlock surface#2 1",
	};
	expect_log(run_seq, sizeof run_seq / sizeof run_seq[0]);
	cr_assert_eq(memcmp(in, out, 8192), 0, "the output is not what the model wrote");
	cr_assert_eq(fk.evaluations, 1);

	/* unload */
	fake_log_clear();
	B->ops->program_free(B, p);
	const char *free_seq[] = {
		"model#1 unloadWithQoS:error: 21 &error",
		"CFRelease surface#1",
		"CFRelease surface#2",
	};
	expect_log(free_seq, sizeof free_seq / sizeof free_seq[0]);
	snprintf(path, sizeof path, "%s/%s", tmpdir, hex);
	cr_assert(!exists(path), "%s left behind", path);
	free(in);
	free(out);
}

ANE_TEST(weights_dictionary_and_files)
{
	size_t l1, l2;
	uint8_t *b1 = make_blob(64 * 64, 1, &l1), *b2 = make_blob(64 * 64, 2, &l2);
	anes_weight w[] = {{"@model_path/weights/w1.bin", b1, l1, false, false, -1}, {"@model_path/weights/w2.bin", b2, l2, false, false, -1}};
	const char *text = mil("tensor<fp16, [1, 64, 1, 64]> x",
		"        tensor<fp16, [1, 64, 1, 64]> W1 = const()[name = string(\"W1\"), val = tensor<fp16, [1, 64, 1, 64]>(BLOBFILE(path = string(\"@model_path/weights/w1.bin\"), offset = uint64(64)))];\n"
		"        tensor<fp16, [1, 64, 1, 64]> W2 = const()[name = string(\"W2\"), val = tensor<fp16, [1, 64, 1, 64]>(BLOBFILE(path = string(\"@model_path/weights/w2.bin\"), offset = uint64(64)))];\n"
		"        tensor<fp16, [1, 64, 1, 64]> a = add(x = x, y = W1)[name = string(\"a\")];\n"
		"        tensor<fp16, [1, 64, 1, 64]> y = mul(x = a, y = W2)[name = string(\"y\")];", "y");
	anes_bprogram *p = compile_ok(text, w, 2);

	char want[512];
	snprintf(want, sizeof want,
	         "_ANEInMemoryModelDescriptor modelWithMILText:weights:optionsPlist: %s "
	         "{\"@model_path/weights/w1.bin\": {\"data\": %s, \"offset\": 0}, "
	         "\"@model_path/weights/w2.bin\": {\"data\": %s, \"offset\": 0}} nil",
	         data_str(text, strlen(text)), data_str(b1, l1), data_str(b2, l2));
	cr_assert_str_eq(fk.log[0], want);
	/* the fake checked at compileWithQoS: that model.mil and weights/w{1,2}.bin held the bytes */

	char hex[64], path[512];
	const char *paths[] = {w[0].path, w[1].path};
	const void *data[] = {b1, b2};
	size_t lens[] = {l1, l2};
	fake_hex_id(text, strlen(text), paths, data, lens, 2, hex, sizeof hex);
	snprintf(path, sizeof path, "%s/%s/weights/w2.bin", tmpdir, hex);
	cr_assert(exists(path), "%s missing", path);
	B->ops->program_free(B, p);
	snprintf(path, sizeof path, "%s/%s", tmpdir, hex);
	cr_assert(!exists(path), "%s left behind", path);
	free(b1);
	free(b2);
}

/* Weight names with '/', as public code uses them (weights/layer_00/w1.bin):
 * the files go into subdirectories of TMP/HEX/weights. */
ANE_TEST(weight_names_with_slashes)
{
	size_t l1, l2;
	uint8_t *b1 = make_blob(64 * 64, 1, &l1), *b2 = make_blob(64 * 64, 2, &l2);
	anes_weight w[] = {{"@model_path/weights/layer_00/w1.bin", b1, l1, false, false, -1},
	                   {"@model_path/weights/layer_01/sub/w1.bin", b2, l2, false, false, -1}};
	const char *text = mil("tensor<fp16, [1, 64, 1, 64]> x",
		"        tensor<fp16, [1, 64, 1, 64]> W1 = const()[name = string(\"W1\"), val = tensor<fp16, [1, 64, 1, 64]>(BLOBFILE(path = string(\"@model_path/weights/layer_00/w1.bin\"), offset = uint64(64)))];\n"
		"        tensor<fp16, [1, 64, 1, 64]> W2 = const()[name = string(\"W2\"), val = tensor<fp16, [1, 64, 1, 64]>(BLOBFILE(path = string(\"@model_path/weights/layer_01/sub/w1.bin\"), offset = uint64(64)))];\n"
		"        tensor<fp16, [1, 64, 1, 64]> a = add(x = x, y = W1)[name = string(\"a\")];\n"
		"        tensor<fp16, [1, 64, 1, 64]> y = mul(x = a, y = W2)[name = string(\"y\")];", "y");
	/* the fake checks at compileWithQoS: that both files hold their blobs */
	anes_bprogram *p = compile_ok(text, w, 2);
	char hex[64], path[512];
	const char *paths[] = {w[0].path, w[1].path};
	const void *data[] = {b1, b2};
	size_t lens[] = {l1, l2};
	fake_hex_id(text, strlen(text), paths, data, lens, 2, hex, sizeof hex);
	snprintf(path, sizeof path, "%s/%s/weights/layer_01/sub/w1.bin", tmpdir, hex);
	cr_assert(exists(path), "%s missing", path);
	B->ops->program_free(B, p);
	snprintf(path, sizeof path, "%s/%s", tmpdir, hex);
	cr_assert(!exists(path), "%s left behind", path);
	free(b1);
	free(b2);
}

/* ---- zero copy: the caller's IOSurfaces go to the device as they are ---- */

static void eval_in_k_to_out_k(const fake_view *in, size_t n_in, fake_view *out, size_t n_out);

/* A run argument on surface s (a client's IOSurface, or NULL: memory that
 * is not an IOSurface, at mem). */
static anes_surface_desc on_surface(anes_iosurface s, void *mem, uint64_t size, uint64_t offset)
{
	static uint64_t key;
	return (anes_surface_desc){ .ptr = (uint8_t *)(s ? fake_surface_mem(s) : mem) + offset, .fd = -1,
	                            .ios_id = s ? 1000 + fake_surface_serial(s) : 0, .ios = s,
	                            .key = ++key, .offset = offset, .size = size };
}

static uint64_t copies(void)
{
	return B->ops->copies(B);
}

/* The request of a run holds the client's own IOSurfaces: no copy in, no
 * copy out, nothing locked by the backend, and ane_copies stays 0. */
ANE_TEST(run_surfaces_hands_the_client_surfaces_to_the_device)
{
	anes_bprogram *p = compile_ok(simple_mil(), NULL, 0);
	cr_assert_not_null(B->ops->run_surfaces);
	anes_iosurface in = fake_surface_new(49152), out = fake_surface_new(49152);
	for (int i = 0; i < 8192; i++)
		fake_surface_mem(in)[i] = (uint8_t)(i * 7 + 1);
	anes_surface_desc args[2] = { on_surface(in, NULL, 49152, 0), on_surface(out, NULL, 49152, 0) };
	fake_log_clear();
	cr_assert_eq(B->ops->run_surfaces(B, p, 0, args, 2, errbuf, sizeof errbuf), 0, "%s", errbuf);
	char l0[128], l1[128];
	snprintf(l0, sizeof l0, "_ANEIOSurfaceObject objectWithIOSurface: surface#%u", fake_surface_serial(in));
	snprintf(l1, sizeof l1, "_ANEIOSurfaceObject objectWithIOSurface: surface#%u", fake_surface_serial(out));
	const char *seq[] = {
		l0, l1,
		"_ANERequest " REQUEST_SEL " [surfobj#3] [0] [surfobj#4] [0] nil nil 0",
		"model#1 evaluateWithQoS:options:request:error: 21 {} request#2 &error",
	};
	expect_log(seq, sizeof seq / sizeof seq[0]);
	/* the request that was evaluated held the client's surfaces */
	cr_assert_eq(fk.eval_n_in, 1);
	cr_assert_eq(fk.eval_in[0], in, "the input is not the client's IOSurface");
	cr_assert_eq(fk.eval_out[0], out, "the output is not the client's IOSurface");
	cr_assert_eq(memcmp(fake_surface_mem(in), fake_surface_mem(out), 8192), 0);
	cr_assert_eq(copies(), 0);
	/* the request of the run is gone with its pool; the surfaces are the client's */
	cr_assert_eq(fk.pool_depth, 0);
	B->ops->program_free(B, p);
	fake_surface_release(in);
	fake_surface_release(out);
}

/* run one program; in, out: the surfaces the device got */
static void run_args(anes_bprogram *p, anes_surface_desc *args, uint32_t n, anes_iosurface *ret_in,
                     anes_iosurface *ret_out)
{
	int rc = B->ops->run_surfaces(B, p, 0, args, n, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "%s", errbuf);
	cr_assert_eq(fk.misuse[0], '\0', "%s", fk.misuse);
	if (ret_in)
		*ret_in = fk.eval_in[0];
	if (ret_out)
		*ret_out = fk.eval_out[0];
}

/* What does not fit the device is copied through the program's own
 * surfaces, and counted: a small surface, a tensor not at the start, memory
 * that is not an IOSurface, an output on an input's surface. */
ANE_TEST(run_surfaces_copies_what_does_not_fit)
{
	anes_bprogram *p = compile_ok(simple_mil(), NULL, 0);
	anes_iosurface small = fake_surface_new(8192), in = fake_surface_new(49152),
	               out = fake_surface_new(49152), big = fake_surface_new(65536);
	anes_iosurface got_in, got_out;
	uint8_t *plain = calloc(1, 8192), *plain_out = calloc(1, 8192);
	for (int i = 0; i < 8192; i++) {
		fake_surface_mem(small)[i] = (uint8_t)(i + 3);
		fake_surface_mem(in)[i] = (uint8_t)(i * 5);
		fake_surface_mem(big)[4096 + i] = (uint8_t)(i * 11);
		plain[i] = (uint8_t)(i * 13);
	}

	/* too small (the fake allocates 16 KiB pages: 16384 < 49152) */
	anes_surface_desc a1[2] = { on_surface(small, NULL, 8192, 0), on_surface(out, NULL, 49152, 0) };
	run_args(p, a1, 2, &got_in, &got_out);
	cr_assert_neq(got_in, small);
	cr_assert_eq(got_out, out);
	cr_assert_eq(memcmp(fake_surface_mem(out), fake_surface_mem(small), 8192), 0);
	cr_assert_eq(copies(), 1);

	/* the tensor at an offset */
	anes_surface_desc a2[2] = { on_surface(big, NULL, 65536, 4096), on_surface(out, NULL, 49152, 0) };
	run_args(p, a2, 2, &got_in, &got_out);
	cr_assert_neq(got_in, big);
	cr_assert_eq(got_out, out);
	cr_assert_eq(memcmp(fake_surface_mem(out), fake_surface_mem(big) + 4096, 8192), 0);
	cr_assert_eq(copies(), 2);

	/* plain memory (a memfd surface) in and out */
	anes_surface_desc a3[2] = { on_surface(NULL, plain, 8192, 0), on_surface(NULL, plain_out, 8192, 0) };
	run_args(p, a3, 2, &got_in, &got_out);
	cr_assert_eq(memcmp(plain, plain_out, 8192), 0);
	cr_assert_eq(copies(), 4);

	/* the output on the input's IOSurface: the output is copied */
	anes_surface_desc a4[2] = { on_surface(in, NULL, 49152, 0), on_surface(in, NULL, 49152, 0) };
	a4[1].key = a4[0].key;
	run_args(p, a4, 2, &got_in, &got_out);
	cr_assert_eq(got_in, in);
	cr_assert_neq(got_out, in);
	cr_assert_eq(copies(), 5);

	/* all fit: nothing copied */
	anes_surface_desc a5[2] = { on_surface(in, NULL, 49152, 0), on_surface(out, NULL, 49152, 0) };
	run_args(p, a5, 2, &got_in, &got_out);
	cr_assert(got_in == in && got_out == out);
	cr_assert_eq(copies(), 5);

	/* the plain run (no surfaces) copies everything */
	const void *ins[] = {plain};
	void *outs[] = {plain_out};
	cr_assert_eq(B->ops->run(B, p, 0, ins, outs, errbuf, sizeof errbuf), 0, "%s", errbuf);
	cr_assert_eq(copies(), 7);

	/* arguments that do not hold the tensor are refused */
	anes_surface_desc bad[2] = { on_surface(in, NULL, 4096, 0), on_surface(out, NULL, 49152, 0) };
	cr_assert_eq(B->ops->run_surfaces(B, p, 0, bad, 2, errbuf, sizeof errbuf), -EINVAL);
	cr_assert_eq(B->ops->run_surfaces(B, p, 0, bad, 1, errbuf, sizeof errbuf), -EINVAL);
	B->ops->program_free(B, p);
	fake_surface_release(small);
	fake_surface_release(in);
	fake_surface_release(out);
	fake_surface_release(big);
	free(plain);
	free(plain_out);
}

/* One alloc size for all inputs of a request: inputs of the same size all
 * go as they are; of mixed sizes, those of the program's own surface size
 * (65536 here) go as they are and the rest are copied. */
ANE_TEST(run_surfaces_keeps_one_size_per_side)
{
	const char *text = mil("tensor<fp16, [1, 32, 1, 64]> zeta, tensor<fp16, [1, 512, 1, 64]> alpha",
		"        tensor<fp16, [1, 32, 1, 64]> out_z = add(x = zeta, y = zeta)[name = string(\"out_z\")];\n"
		"        tensor<fp16, [1, 512, 1, 64]> out_a = add(x = alpha, y = alpha)[name = string(\"out_a\")];",
		"out_z, out_a");
	anes_bprogram *p = compile_ok(text, NULL, 0);
	fk.on_evaluate = eval_in_k_to_out_k;
	anes_iosurface z48 = fake_surface_new(49152), z64 = fake_surface_new(65536), a64 = fake_surface_new(65536),
	               oz = fake_surface_new(65536), oa = fake_surface_new(65536), z80 = fake_surface_new(81920),
	               a80 = fake_surface_new(81920);
	for (int i = 0; i < 65536; i++) {
		fake_surface_mem(a64)[i] = fake_surface_mem(a80)[i] = (uint8_t)(i * 3);
		if (i < 4096)
			fake_surface_mem(z48)[i] = fake_surface_mem(z64)[i] = fake_surface_mem(z80)[i] = (uint8_t)(i + 9);
	}
	/* function order: zeta, alpha, out_z, out_a; request order alpha, zeta */
	anes_surface_desc mixed[4] = { on_surface(z48, NULL, 49152, 0), on_surface(a64, NULL, 65536, 0),
	                               on_surface(oz, NULL, 65536, 0), on_surface(oa, NULL, 65536, 0) };
	run_args(p, mixed, 4, NULL, NULL);
	cr_assert_eq(fk.eval_in[0], a64, "alpha (the program's size) was not handed over");
	cr_assert_neq(fk.eval_in[1], z48, "zeta (49152 next to 65536) was handed over");
	cr_assert(fk.eval_out[0] == oa && fk.eval_out[1] == oz);
	cr_assert_eq(copies(), 1);
	for (int i = 0; i < 4096; i++)
		cr_assert_eq(fake_surface_mem(oz)[i], (uint8_t)((i + 9) ^ 0x22), "out_z byte %d", i);
	for (int i = 0; i < 65536; i++)
		cr_assert_eq(fake_surface_mem(oa)[i], (uint8_t)((i * 3) ^ 0x11), "out_a byte %d", i);

	anes_surface_desc same[4] = { on_surface(z64, NULL, 65536, 0), on_surface(a64, NULL, 65536, 0),
	                              on_surface(oz, NULL, 65536, 0), on_surface(oa, NULL, 65536, 0) };
	run_args(p, same, 4, NULL, NULL);
	cr_assert(fk.eval_in[0] == a64 && fk.eval_in[1] == z64);
	cr_assert_eq(copies(), 1);
	/* one size, though not the program's own: all handed over */
	anes_surface_desc big[4] = { on_surface(z80, NULL, 81920, 0), on_surface(a80, NULL, 81920, 0),
	                             on_surface(oz, NULL, 65536, 0), on_surface(oa, NULL, 65536, 0) };
	run_args(p, big, 4, NULL, NULL);
	cr_assert(fk.eval_in[0] == a80 && fk.eval_in[1] == z80);
	cr_assert_eq(copies(), 1);
	B->ops->program_free(B, p);
	anes_iosurface all[] = { z48, z64, a64, oz, oa, z80, a80 };
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
		fake_surface_release(all[i]);
}

/* A failure at every failable step of a zero-copy run: an error, nothing
 * left behind, and the next run works. */
ANE_TEST(run_surfaces_every_step_fails_cleanly)
{
	anes_bprogram *p = compile_ok(simple_mil(), NULL, 0);
	anes_iosurface in = fake_surface_new(49152), out = fake_surface_new(49152), small = fake_surface_new(100);
	long base_objects = fk.live_objects, base_surfaces = fk.live_surfaces;
	long steps = 0;
	for (long i = 0;; i++) {
		/* input copied (small), output handed over: both kinds of step */
		anes_surface_desc args[2] = { on_surface(small, NULL, 8192, 0), on_surface(out, NULL, 49152, 0) };
		fk.failed_call[0] = '\0';
		fk.fail_at = fk.n_failable + i;
		int rc = B->ops->run_surfaces(B, p, 0, args, 2, errbuf, sizeof errbuf);
		fk.fail_at = -1;
		cr_assert_eq(fk.misuse[0], '\0', "%s", fk.misuse);
		cr_assert_eq(fk.pool_depth, 0);
		cr_assert_eq(fk.live_objects, base_objects, "step %ld (%s): %ld objects alive", i, fk.failed_call,
		             fk.live_objects - base_objects);
		cr_assert_eq(fk.live_surfaces, base_surfaces);
		if (!fk.failed_call[0]) {
			cr_assert_eq(rc, 0, "%s", errbuf);
			steps = i;
			break;
		}
		cr_assert(rc == -EIO || rc == -ENOMEM, "step %ld (%s): rc %d", i, fk.failed_call, rc);
		cr_assert(errbuf[0], "step %ld (%s): no message", i, fk.failed_call);
		anes_surface_desc ok[2] = { on_surface(in, NULL, 49152, 0), on_surface(out, NULL, 49152, 0) };
		run_args(p, ok, 2, NULL, NULL);
	}
	cr_assert_geq(steps, 5, "only %ld failable steps", steps);
	B->ops->program_free(B, p);
	fake_surface_release(in);
	fake_surface_release(out);
	fake_surface_release(small);
}

/* ---- temp directories across processes ---- */

static void touch(const char *dir, const char *name, const char *content)
{
	char path[1024];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fputs(content, f);
	fclose(f);
}

static void mkdir_in(const char *dir, const char *name)
{
	char path[1024];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	cr_assert_eq(mkdir(path, 0755), 0, "%s: %s", path, strerror(errno));
}

static bool exists_in(const char *dir, const char *name)
{
	char path[1024];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	return exists(path);
}

/* A pid that no process has: a child that has exited and been reaped. */
static pid_t dead_pid(void)
{
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0)
		_exit(0);
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	return pid;
}

/* A worker that crashed left TMP/HEX and its marker behind; a backend that
 * starts removes both.  A directory a live process marks, and a directory
 * without a marker (another program's), stay. */
ANE_TEST(start_sweeps_directories_of_dead_workers)
{
	destroy_backend();
	check_clean("before");
	char name[128];
	/* a crashed worker's: model.mil and weights/ under TMP/HEX */
	mkdir_in(tmpdir, "0123abcd-dead");
	touch(tmpdir, "0123abcd-dead/model.mil", "program(1.3)");
	mkdir_in(tmpdir, "0123abcd-dead/weights");
	mkdir_in(tmpdir, "0123abcd-dead/weights/layer_00");
	touch(tmpdir, "0123abcd-dead/weights/layer_00/w1.bin", "blob");
	snprintf(name, sizeof name, ".aneshare.%ld.0.0123abcd-dead", (long)dead_pid());
	touch(tmpdir, name, "");
	char dead_marker[128];
	snprintf(dead_marker, sizeof dead_marker, "%s", name);
	/* a live process's (our parent: alive, and not us) */
	mkdir_in(tmpdir, "4567-alive");
	touch(tmpdir, "4567-alive/model.mil", "x");
	char live_marker[128];
	snprintf(live_marker, sizeof live_marker, ".aneshare.%ld.3.4567-alive", (long)getppid());
	touch(tmpdir, live_marker, "");
	/* the same directory marked by a dead and a live process: it stays */
	snprintf(name, sizeof name, ".aneshare.%ld.1.4567-alive", (long)dead_pid());
	touch(tmpdir, name, "");
	char dead_marker2[128];
	snprintf(dead_marker2, sizeof dead_marker2, "%s", name);
	/* not ours: no marker */
	mkdir_in(tmpdir, "89ef-other-app");
	touch(tmpdir, "89ef-other-app/model.mil", "x");

	new_backend();
	cr_assert(!exists_in(tmpdir, "0123abcd-dead"), "the dead worker's directory was not removed");
	cr_assert(!exists_in(tmpdir, dead_marker), "the dead worker's marker was not removed");
	cr_assert(!exists_in(tmpdir, dead_marker2), "a dead worker's marker was not removed");
	cr_assert(exists_in(tmpdir, "4567-alive/model.mil"), "a live process's directory was removed");
	cr_assert(exists_in(tmpdir, live_marker));
	cr_assert(exists_in(tmpdir, "89ef-other-app/model.mil"), "a directory that is not ours was removed");

	char path[700];
	snprintf(path, sizeof path, "%s/%s", tmpdir, live_marker);
	unlink(path);
	snprintf(path, sizeof path, "%s/4567-alive/model.mil", tmpdir);
	unlink(path);
	snprintf(path, sizeof path, "%s/4567-alive", tmpdir);
	rmdir(path);
	snprintf(path, sizeof path, "%s/89ef-other-app/model.mil", tmpdir);
	unlink(path);
	snprintf(path, sizeof path, "%s/89ef-other-app", tmpdir);
	rmdir(path);
}

/* Another live process (here: our parent, by its marker) uses the same
 * model directory: this backend uses the files as they are and leaves the
 * directory to it when its program goes. */
ANE_TEST(directory_shared_with_a_live_process)
{
	const char *text = simple_mil();
	char hex[64], marker[160], path[700];
	fake_hex_id(text, strlen(text), NULL, NULL, NULL, 0, hex, sizeof hex);
	mkdir_in(tmpdir, hex);
	snprintf(path, sizeof path, "%s/weights", hex);
	mkdir_in(tmpdir, path);
	snprintf(path, sizeof path, "%s/model.mil", hex);
	touch(tmpdir, path, text);
	snprintf(path, sizeof path, "%s/other-process-file", hex);
	touch(tmpdir, path, "x");
	snprintf(marker, sizeof marker, ".aneshare.%ld.0.%s", (long)getppid(), hex);
	touch(tmpdir, marker, "");

	anes_bprogram *p = compile_ok(text, NULL, 0);
	cr_assert(exists_in(tmpdir, path), "the directory was written afresh while another process used it");
	B->ops->program_free(B, p);
	cr_assert(exists_in(tmpdir, path), "removed while another process uses it");
	cr_assert(exists_in(tmpdir, marker));

	/* once that process is gone, the last user removes it */
	snprintf(path, sizeof path, "%s/%s", tmpdir, marker);
	unlink(path);
	p = compile_ok(text, NULL, 0);
	snprintf(path, sizeof path, "%s/other-process-file", hex);
	cr_assert(!exists_in(tmpdir, path), "a directory nobody marks was not written afresh");
	B->ops->program_free(B, p);
	cr_assert(!exists_in(tmpdir, hex));
}

/* Two inputs and two outputs, declared out of alphabetical order and of
 * different sizes: the request binds them by name, in alphabetical order, and
 * all inputs (and all outputs) get one surface size. */
static void eval_in_k_to_out_k(const fake_view *in, size_t n_in, fake_view *out, size_t n_out)
{
	for (size_t k = 0; k < n_out && k < n_in; k++)
		for (size_t j = 0; j < out[k].size && j < in[k].size; j++)
			out[k].mem[j] = (uint8_t)(in[k].mem[j] ^ (0x11 * (k + 1)));
}

ANE_TEST(multi_io_order_and_sizes)
{
	const char *text = mil("tensor<fp16, [1, 32, 1, 64]> zeta, tensor<fp16, [1, 512, 1, 64]> alpha",
		"        tensor<fp16, [1, 32, 1, 64]> out_z = add(x = zeta, y = zeta)[name = string(\"out_z\")];\n"
		"        tensor<fp16, [1, 512, 1, 64]> out_a = add(x = alpha, y = alpha)[name = string(\"out_a\")];",
		"out_z, out_a");
	anes_bprogram *p = compile_ok(text, NULL, 0);
	cr_assert_str_eq(p->functions[0].inputs[0].name, "zeta");
	cr_assert_str_eq(p->functions[0].outputs[0].name, "out_z");

	char c1[300], c2[300], c3[300], c4[300];
	snprintf(c1, sizeof c1, "IOSurfaceCreate %s", surface_props(65536));
	snprintf(c2, sizeof c2, "IOSurfaceCreate %s", surface_props(65536));
	snprintf(c3, sizeof c3, "IOSurfaceCreate %s", surface_props(65536));
	snprintf(c4, sizeof c4, "IOSurfaceCreate %s", surface_props(65536));
	cr_assert_str_eq(fk.log[6], c1);
	cr_assert_str_eq(fk.log[8], c2);
	cr_assert_str_eq(fk.log[10], c3);
	cr_assert_str_eq(fk.log[12], c4);
	cr_assert_str_eq(fk.log[14], "_ANERequest " REQUEST_SEL
	                 " [surfobj#1, surfobj#2] [0, 1] [surfobj#3, surfobj#4] [0, 1] nil nil 0");

	fk.on_evaluate = eval_in_k_to_out_k;
	size_t nz = 32 * 64 * 2, na = 512 * 64 * 2;
	uint8_t *z = malloc(nz), *a = malloc(na), *oz = calloc(1, nz), *oa = calloc(1, na);
	for (size_t i = 0; i < nz; i++)
		z[i] = (uint8_t)(i * 13 + 1);
	for (size_t i = 0; i < na; i++)
		a[i] = (uint8_t)(i * 29 + 5);
	const void *ins[] = {z, a};   /* function order: zeta, alpha */
	void *outs[] = {oz, oa};      /* function order: out_z, out_a */
	cr_assert_eq(B->ops->run(B, p, 0, ins, outs, errbuf, sizeof errbuf), 0, "%s", errbuf);
	/* request order: alpha (k = 0) -> out_a, zeta (k = 1) -> out_z */
	for (size_t i = 0; i < na; i++)
		cr_assert_eq(oa[i], (uint8_t)(a[i] ^ 0x11), "out_a byte %zu", i);
	for (size_t i = 0; i < nz; i++)
		cr_assert_eq(oz[i], (uint8_t)(z[i] ^ 0x22), "out_z byte %zu", i);
	B->ops->program_free(B, p);
	free(z);
	free(a);
	free(oz);
	free(oa);
}

ANE_TEST(identical_programs_share_the_temp_directory)
{
	const char *text = simple_mil();
	char hex[64], path[512];
	fake_hex_id(text, strlen(text), NULL, NULL, NULL, 0, hex, sizeof hex);
	snprintf(path, sizeof path, "%s/%s/model.mil", tmpdir, hex);

	anes_bprogram *p1 = compile_ok(text, NULL, 0);
	anes_bprogram *p2 = compile_ok(text, NULL, 0);
	B->ops->program_free(B, p1);
	cr_assert(exists(path), "freeing one program removed the directory the other uses");
	uint16_t in[4096] = {1, 2, 3}, out[4096];
	const void *ins[] = {in};
	void *outs[] = {out};
	cr_assert_eq(B->ops->run(B, p2, 0, ins, outs, errbuf, sizeof errbuf), 0, "%s", errbuf);
	B->ops->program_free(B, p2);
	cr_assert(!exists(path), "%s left behind", path);
}

ANE_TEST(program_free_and_destroy_accept_null)
{
	B->ops->program_free(B, NULL);
	B->ops->destroy(NULL);
	cr_assert_eq(fk.n_log, 0);
}

ANE_TEST(run_of_a_missing_function)
{
	anes_bprogram *p = compile_ok(simple_mil(), NULL, 0);
	uint16_t in[4096] = {0}, out[4096];
	const void *ins[] = {in};
	void *outs[] = {out};
	cr_assert_eq(B->ops->run(B, p, 1, ins, outs, errbuf, sizeof errbuf), -EINVAL);
	B->ops->program_free(B, p);
}

struct runner {
	anes_bprogram *p;
	uint16_t seed;
	int bad;
};

static void *run_many(void *arg)
{
	struct runner *r = arg;
	uint16_t *in = malloc(8192), *out = malloc(8192);
	char err[256];
	for (int it = 0; it < 200 && !r->bad; it++) {
		for (int i = 0; i < 4096; i++)
			in[i] = (uint16_t)(r->seed * 1000 + it * 7 + i);
		const void *ins[] = {in};
		void *outs[] = {out};
		if (B->ops->run(B, r->p, 0, ins, outs, err, sizeof err) != 0 || memcmp(in, out, 8192) != 0)
			r->bad = 1;
	}
	free(in);
	free(out);
	return NULL;
}

ANE_TEST(concurrent_runs_do_not_mix_data)
{
	anes_bprogram *p = compile_ok(simple_mil(), NULL, 0);
	struct runner r[3] = {{p, 1, 0}, {p, 2, 0}, {p, 3, 0}};
	pthread_t t[3];
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, run_many, &r[i]), 0);
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(r[i].bad, 0, "runner %d saw another run's data", i);
	cr_assert_eq(fk.evaluations, 600);
	B->ops->program_free(B, p);
}

/* Two programs run on two threads at once.  The fake's model holds the
 * first evaluation until the second has started, and the second until the
 * first run has returned: so the first thread pops its autorelease pool
 * while the second thread's pool is open.  Pools are per thread (one shared
 * stack would see a pop of a pool that is not the innermost). */
static pthread_mutex_t both_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t both_cv = PTHREAD_COND_INITIALIZER;
static int arrived, runs_done;

static void eval_meet(const fake_view *in, size_t n_in, fake_view *out, size_t n_out)
{
	pthread_mutex_lock(&both_mu);
	int me = ++arrived;
	pthread_cond_broadcast(&both_cv);
	if (me == 1)
		while (arrived < 2)
			pthread_cond_wait(&both_cv, &both_mu);
	else
		while (runs_done < 1)
			pthread_cond_wait(&both_cv, &both_mu);
	pthread_mutex_unlock(&both_mu);
	default_eval_for_test(in, n_in, out, n_out);
}

struct prog_runner {
	anes_bprogram *p;
	size_t bytes;
	uint8_t seed;
	int rc;
	bool same;
};

static void *run_prog_once(void *arg)
{
	struct prog_runner *r = arg;
	uint8_t *in = malloc(r->bytes), *out = calloc(1, r->bytes);
	char err[256];
	for (size_t i = 0; i < r->bytes; i++)
		in[i] = (uint8_t)(i * r->seed + r->seed);
	const void *ins[] = {in};
	void *outs[] = {out};
	r->rc = B->ops->run(B, r->p, 0, ins, outs, err, sizeof err);
	pthread_mutex_lock(&both_mu);
	runs_done++;
	pthread_cond_broadcast(&both_cv);
	pthread_mutex_unlock(&both_mu);
	r->same = memcmp(in, out, r->bytes) == 0;
	free(in);
	free(out);
	return NULL;
}

ANE_TEST_TIMEOUT(two_programs_on_two_threads_at_once, 30)
{
	anes_bprogram *p1 = compile_ok(simple_mil(), NULL, 0);
	anes_bprogram *p2 = compile_ok(mil("tensor<fp16, [1, 32, 1, 64]> x",
	                                   "        tensor<fp16, [1, 32, 1, 64]> y = mul(x = x, y = x);", "y"),
	                               NULL, 0);
	fk.on_evaluate = eval_meet;
	struct prog_runner r[2] = {{p1, 64 * 64 * 2, 3, -1, false}, {p2, 32 * 64 * 2, 5, -1, false}};
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, run_prog_once, &r[i]), 0);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	cr_assert_eq(arrived, 2);
	cr_assert_eq(fk.misuse[0], '\0', "%s", fk.misuse);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(r[i].rc, 0, "run %d failed", i);
		cr_assert(r[i].same, "run %d got the wrong output", i);
	}
	cr_assert_eq(fk.evaluations, 2);
	B->ops->program_free(B, p1);
	B->ops->program_free(B, p2);
}

/* ---- NSError text reaches errbuf intact ---- */

static const char *const nserror_text =
	"Error Domain=com.apple.appleneuralengine.compiler Code=1 \"_ANECompiler : ANECCompile() FAILED\" "
	"UserInfo={NSLocalizedDescription=ünïcödé, 100% \"quoted\" %s %n}";

static void fail_call(const char *name, bool with_error)
{
	fk.fail_name = name;
	fk.fail_without_error = !with_error;
	fk.error_text = nserror_text;
}

/* "ANE VERB failed: " and -[NSError description] of the injected error */
static const char *want_nserror(const char *verb, const char *localized)
{
	static char want[1024];
	char d[900];
	snprintf(want, sizeof want, "ANE %s failed: %s", verb,
	         fake_nserror_text(true, fk.error_domain, fk.error_code, localized, d, sizeof d));
	return want;
}

ANE_TEST(nserror_description_has_domain_code_and_user_info)
{
	char d[512];
	/* the fake renders what Foundation renders */
	cr_assert_str_eq(fake_nserror_text(true, "D", 3, "text", d, sizeof d),
	                 "Error Domain=D Code=3 \"text\" UserInfo={NSLocalizedDescription=text}");
	cr_assert_str_eq(fake_nserror_text(true, "D", 3, NULL, d, sizeof d), "Error Domain=D Code=3 \"(null)\"");
	cr_assert_str_eq(fake_nserror_text(false, "D", 3, NULL, d, sizeof d),
	                 "The operation couldn\u2019t be completed. (D error 3.)");
	/* the backend reports -description: domain, code and userInfo */
	fail_call("compileWithQoS:options:error:", true);
	fk.error_domain = "com.apple.appleneuralengine.compiler";
	fk.error_code = 1;
	fk.error_text = "ANECCompile() FAILED";
	compile_fails(simple_mil(), NULL, 0, -EIO, "");
	cr_assert_str_eq(errbuf, "ANE compile failed: Error Domain=com.apple.appleneuralengine.compiler Code=1 "
	                         "\"ANECCompile() FAILED\" UserInfo={NSLocalizedDescription=ANECCompile() FAILED}");
	/* an NSError without a localized description still names domain and code */
	destroy_backend();
	check_clean("between");
	new_backend();
	fail_call("compileWithQoS:options:error:", true);
	fk.error_text = NULL;
	compile_fails(simple_mil(), NULL, 0, -EIO, "");
	cr_assert_str_eq(errbuf, "ANE compile failed: Error Domain=com.apple.appleneuralengine Code=5 \"(null)\"");
}

ANE_TEST(compile_error_text_intact)
{
	fail_call("compileWithQoS:options:error:", true);
	const char *want = want_nserror("compile", nserror_text);
	compile_fails(simple_mil(), NULL, 0, -EIO, want);
	cr_assert_str_eq(errbuf, want);
	cr_assert_str_eq(fk.log[fk.n_log - 1], "model#1 compileWithQoS:options:error: 21 {} &error");
}

ANE_TEST(load_error_text_intact)
{
	fail_call("loadWithQoS:options:error:", true);
	fk.fail_again = 1;   /* the retry fails too */
	const char *want = want_nserror("load", nserror_text);
	compile_fails(simple_mil(), NULL, 0, -EIO, want);
	cr_assert_str_eq(errbuf, want);
}

/* maderix/ANE's bridge: one more loadWithQoS: after 100 ms */
ANE_TEST(load_is_retried_once_after_100_ms)
{
	fail_call("loadWithQoS:options:error:", true);
	anes_bprogram *p = compile_ok(simple_mil(), NULL, 0);
	cr_assert_str_eq(fk.log[5], "model#1 loadWithQoS:options:error: 21 {} &error");
	cr_assert_str_eq(fk.log[6], "sleep 100 ms");
	cr_assert_str_eq(fk.log[7], "model#1 loadWithQoS:options:error: 21 {} &error");
	cr_assert_eq(fk.slept_ms, 100);
	uint16_t in[4096] = {5}, out[4096] = {0};
	const void *ins[] = {in};
	void *outs[] = {out};
	cr_assert_eq(B->ops->run(B, p, 0, ins, outs, errbuf, sizeof errbuf), 0, "%s", errbuf);
	cr_assert_eq(out[0], 5);
	B->ops->program_free(B, p);

	/* twice: the compile fails, after one pause, with the second error */
	destroy_backend();
	check_clean("between");
	new_backend();
	fail_call("loadWithQoS:options:error:", true);
	fk.fail_again = 1;
	compile_fails(simple_mil(), NULL, 0, -EIO, "ANE load failed: Error Domain=");
	cr_assert_eq(fk.slept_ms, 100);
	cr_assert_null(strstr(fake_log_text(), "evaluate"));
}

ANE_TEST(evaluate_error_text_intact)
{
	anes_bprogram *p = compile_ok(simple_mil(), NULL, 0);
	fail_call("evaluateWithQoS:options:request:error:", true);
	uint16_t in[4096] = {0}, out[4096];
	const void *ins[] = {in};
	void *outs[] = {out};
	cr_assert_eq(B->ops->run(B, p, 0, ins, outs, errbuf, sizeof errbuf), -EIO);
	cr_assert_str_eq(fk.failed_call, "evaluateWithQoS:options:request:error:");
	cr_assert_str_eq(errbuf, want_nserror("evaluate", nserror_text));
	/* the NSError and its text were autoreleased in the run's pool and are gone */
	cr_assert_eq(fk.pool_depth, 0);
	/* the next run works */
	cr_assert_eq(B->ops->run(B, p, 0, ins, outs, errbuf, sizeof errbuf), 0, "%s", errbuf);
	B->ops->program_free(B, p);
}

ANE_TEST(error_without_nserror)
{
	fail_call("compileWithQoS:options:error:", false);
	compile_fails(simple_mil(), NULL, 0, -EIO, "ANE compile failed: (no error description)");
}

ANE_TEST(truncated_errbuf_stays_terminated)
{
	fail_call("compileWithQoS:options:error:", true);
	char small[24];
	memset(small, 'x', sizeof small);
	anes_bprogram *p = NULL;
	const char *text = simple_mil();
	cr_assert_eq(B->ops->compile(B, text, strlen(text), NULL, 0, &p, small, sizeof small), -EIO);
	cr_assert_eq(small[sizeof small - 1], '\0');
	cr_assert_str_eq(small, "ANE compile failed: Err");
}

/* ---- a failure at every step ---- */

/* compile (with two weights, two inputs, two outputs), run twice, free */
static const char *scenario_mil(void)
{
	return mil("tensor<fp16, [1, 64, 1, 64]> x, tensor<fp16, [1, 64, 1, 32]> b",
		"        tensor<fp16, [1, 64, 1, 64]> W1 = const()[name = string(\"W1\"), val = tensor<fp16, [1, 64, 1, 64]>(BLOBFILE(path = string(\"@model_path/weights/w1.bin\"), offset = uint64(64)))];\n"
		"        tensor<fp16, [1, 64, 1, 32]> W2 = const()[name = string(\"W2\"), val = tensor<fp16, [1, 64, 1, 32]>(BLOBFILE(path = string(\"@model_path/weights/w2.bin\"), offset = uint64(64)))];\n"
		"        tensor<fp16, [1, 64, 1, 64]> y = add(x = x, y = W1)[name = string(\"y\")];\n"
		"        tensor<fp16, [1, 64, 1, 32]> c = mul(x = b, y = W2)[name = string(\"c\")];", "y, c");
}

typedef struct outcome {
	int stage;          /* 0: all succeeded, 1: compile failed, 2: the first run failed */
	int rc;
	char err[512];
} outcome;

static outcome scenario(void)
{
	outcome o = {0, 0, ""};
	size_t l1, l2;
	uint8_t *b1 = make_blob(64 * 64, 1, &l1), *b2 = make_blob(64 * 32, 2, &l2);
	anes_weight w[] = {{"@model_path/weights/w1.bin", b1, l1, false, false, -1}, {"@model_path/weights/w2.bin", b2, l2, false, false, -1}};
	const char *text = scenario_mil();
	anes_bprogram *p = NULL;
	uint16_t *x = calloc(4096, 2), *b = calloc(2048, 2), *y = calloc(4096, 2), *c = calloc(2048, 2);
	const void *ins[] = {x, b};
	void *outs[] = {y, c};

	o.rc = B->ops->compile(B, text, strlen(text), w, 2, &p, o.err, sizeof o.err);
	if (o.rc < 0) {
		o.stage = 1;
		cr_assert_null(p, "compile wrote its out-parameter on failure");
		goto out;
	}
	o.rc = B->ops->run(B, p, 0, ins, outs, o.err, sizeof o.err);
	if (o.rc < 0) {
		o.stage = 2;
		/* a failed run leaves the program usable */
		long fail_at = fk.fail_at;
		int again = fk.fail_again;
		fk.fail_at = -1;
		fk.fail_again = 0;
		int rc2 = B->ops->run(B, p, 0, ins, outs, errbuf, sizeof errbuf);
		cr_assert_eq(rc2, 0, "the run after %s failed: %s", fk.failed_call, errbuf);
		fk.fail_at = fail_at;
		fk.fail_again = again;
	}
	B->ops->program_free(B, p);
out:
	free(b1);
	free(b2);
	free(x);
	free(b);
	free(y);
	free(c);
	return o;
}

static void every_step(bool with_error)
{
	static const char *const must_cover[] = {
		"dataWithBytes:length:", "dictionary", "stringWithUTF8String:", "numberWithUnsignedLongLong:",
		"arrayWithObjects:count:", "modelWithMILText:weights:optionsPlist:",
		"inMemoryModelWithDescriptor:", "hexStringIdentifier", "NSTemporaryDirectory",
		"compileWithQoS:options:error:", "loadWithQoS:options:error:", "IOSurfaceCreate",
		"objectWithIOSurface:", REQUEST_SEL, "IOSurfaceLock", "evaluateWithQoS:options:request:error:",
		"unloadWithQoS:error:",
	};
	bool covered[sizeof must_cover / sizeof must_cover[0]] = {false};
	long n = 0;

	for (long i = 0;; i++) {
		destroy_backend();
		check_clean("before a step");
		new_backend();
		fk.fail_at = i;
		fk.fail_again = 1;   /* so that the retried load fails too */
		fk.fail_without_error = !with_error;
		fk.error_text = "injected failure: x \"y\" 100%";
		outcome o = scenario();
		if (!fk.failed_call[0]) {
			cr_assert_eq(o.stage, 0, "stage %d failed with no injected failure: %s", o.stage, o.err);
			n = i;
			break;
		}
		const char *what = fk.failed_call;
		for (size_t k = 0; k < sizeof must_cover / sizeof must_cover[0]; k++)
			if (strcmp(must_cover[k], what) == 0)
				covered[k] = true;

		if (strcmp(what, "unloadWithQoS:error:") == 0) {
			cr_assert_eq(o.stage, 0, "an unload failure is not reported (program_free is void)");
		} else if (strcmp(what, "IOSurfaceLock") == 0 || strcmp(what, "evaluateWithQoS:options:request:error:") == 0) {
			cr_assert_eq(o.stage, 2, "step %ld (%s): stage %d", i, what, o.stage);
			cr_assert_eq(o.rc, -EIO, "step %ld (%s): rc %d", i, what, o.rc);
		} else {
			cr_assert_eq(o.stage, 1, "step %ld (%s): stage %d", i, what, o.stage);
			cr_assert(o.rc == -EIO || o.rc == -ENOMEM, "step %ld (%s): rc %d", i, what, o.rc);
		}
		if (o.stage)
			cr_assert(o.err[0], "step %ld (%s): no error message", i, what);
		if (strcmp(what, "compileWithQoS:options:error:") == 0 || strcmp(what, "loadWithQoS:options:error:") == 0 ||
		    strcmp(what, "evaluateWithQoS:options:request:error:") == 0) {
			char want[1024];
			const char *verb = what[0] == 'c' ? "compile" : what[0] == 'l' ? "load" : "evaluate";
			if (with_error)
				snprintf(want, sizeof want, "%s", want_nserror(verb, fk.error_text));
			else
				snprintf(want, sizeof want, "ANE %s failed: (no error description)", verb);
			cr_assert_str_eq(o.err, want, "step %ld", i);
		}
		destroy_backend();
		check_clean(what);
		new_backend();
	}
	cr_assert_geq(n, 40, "only %ld failable steps", n);
	cr_log_info("%ld failable steps", n);
	for (size_t k = 0; k < sizeof must_cover / sizeof must_cover[0]; k++)
		cr_assert(covered[k], "no failure was injected into %s", must_cover[k]);
}

ANE_TEST_TIMEOUT(every_step_fails_cleanly_with_nserror, 120)
{
	every_step(true);
}

ANE_TEST_TIMEOUT(every_step_fails_cleanly_without_nserror, 120)
{
	every_step(false);
}

ANE_TEST(unsafe_hex_identifier)
{
	fk.hex_override = "../escape";
	compile_fails(simple_mil(), NULL, 0, -EIO, "hexStringIdentifier returned \"../escape\"");
}

ANE_TEST(temp_directory_unwritable)
{
	snprintf(fk.tmpdir, sizeof fk.tmpdir, "%s/missing/deeper", tmpdir);
	compile_fails(simple_mil(), NULL, 0, -EIO, "cannot write the ANE model files into");
	cr_assert_null(strstr(fake_log_text(), "compileWithQoS"), "compiled without the model files");
}

/* ---- constraints, enforced before the framework is called ---- */

ANE_TEST(refuses_io_that_is_not_float)
{
	refused(mil("tensor<int32, [1, 64, 1, 64]> x",
	            "        tensor<int32, [1, 64, 1, 64]> y = add(x = x, y = x);", "y"),
	        NULL, 0, -ENOTSUP, "line 3: input 'x' is int32: ANE inputs and outputs must be fp16 or fp32");
	refused(mil("tensor<fp16, [1, 64, 1, 64]> x",
	            "        tensor<int32, [1, 64, 1, 64]> y = cast(x = x, dtype = string(\"int32\"));", "y"),
	        NULL, 0, -ENOTSUP, "line 4: output 'y' is int32");
}

/* fp32 I/O: maderix/ANE's README ("fp16 or fp32") and training/ane_mil_gen.h */
ANE_TEST(accepts_fp32_io)
{
	anes_bprogram *p = compile_ok(mil("tensor<fp32, [1, 64, 1, 16]> x",
	                                  "        tensor<fp32, [1, 64, 1, 16]> y = add(x = x, y = x);", "y"),
	                              NULL, 0);
	cr_assert_eq(p->functions[0].inputs[0].bytes, 64 * 16 * 4);
	B->ops->program_free(B, p);
	/* 8 fp32 = 32 bytes a row */
	refused(mil("tensor<fp32, [1, 64, 1, 8]> x", "        tensor<fp32, [1, 64, 1, 8]> y = add(x = x, y = x);", "y"),
	        NULL, 0, -ENOTSUP, "S = 8 is 32 bytes of fp32, but a row of the ANE's layout may be padded to 64 "
	        "bytes, so S must be a multiple of 16");
}

ANE_TEST(refuses_other_layouts)
{
	refused(mil("tensor<fp16, [64, 64]> x", "        tensor<fp16, [64, 64]> y = add(x = x, y = x);", "y"),
	        NULL, 0, -ENOTSUP,
	        "line 3: input 'x' has shape [64,64]: ANE inputs and outputs must have shape [1, C, 1, S]");
	refused(mil("tensor<fp16, [2, 64, 1, 64]> x", "        tensor<fp16, [2, 64, 1, 64]> y = add(x = x, y = x);", "y"),
	        NULL, 0, -ENOTSUP, "must have shape [1, C, 1, S]");
	refused(mil("tensor<fp16, [1, 64, 2, 64]> x", "        tensor<fp16, [1, 64, 2, 64]> y = add(x = x, y = x);", "y"),
	        NULL, 0, -ENOTSUP, "must have shape [1, C, 1, S]");
}

ANE_TEST(refuses_unaligned_rows)
{
	refused(mil("tensor<fp16, [1, 64, 1, 48]> x", "        tensor<fp16, [1, 64, 1, 48]> y = add(x = x, y = x);", "y"),
	        NULL, 0, -ENOTSUP,
	        "line 3: input 'x' has shape [1,64,1,48]: its last dimension S = 48 is 96 bytes of fp16, but a "
	        "row of the ANE's layout may be padded to 64 bytes, so S must be a multiple of 32");
	/* an output computed with an aligned input */
	refused(mil("tensor<fp16, [1, 64, 1, 64]> x",
	            "        tensor<int32, [2]> b = const()[name = string(\"b\"), val = tensor<int32, [2]>([0, 0])];\n"
	            "        tensor<int32, [4]> bb = const()[name = string(\"bb\"), val = tensor<int32, [4]>([0, 0, 0, 0])];\n"
	            "        tensor<int32, [4]> sz = const()[name = string(\"sz\"), val = tensor<int32, [4]>([1, 64, 1, 16])];\n"
	            "        tensor<fp16, [1, 64, 1, 16]> y = slice_by_size(x = x, begin = bb, size = sz);", "y"),
	        NULL, 0, -ENOTSUP, "output 'y' has shape [1,64,1,16]");
	/* S = 32 is the smallest accepted */
	B->ops->program_free(B, compile_ok(mil("tensor<fp16, [1, 3, 1, 32]> x",
	                                       "        tensor<fp16, [1, 3, 1, 32]> y = add(x = x, y = x);", "y"),
	                                   NULL, 0));
}

/* ---- unverified ops: passed on, logged once per program ---- */

static char logged[8][600];
static int n_logged;

static void capture_log(void *ctx, const char *line)
{
	cr_assert_eq(ctx, &n_logged);
	if (n_logged < 8)
		snprintf(logged[n_logged], sizeof logged[0], "%s", line);
	n_logged++;
}

#define NOTE "not verified on the ANE by public code (passed to the framework as they are): "

/* The text of the only model directory's model.mil (the program is alive). */
static char *model_mil(void)
{
	static char text[1 << 16];
	char path[700];
	DIR *d = opendir(tmpdir);
	struct dirent *e;
	int n = 0;
	cr_assert_not_null(d);
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "%s/%s/model.mil", tmpdir, e->d_name);
		n++;
	}
	closedir(d);
	cr_assert_eq(n, 1, "%d model directories", n);
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "%s", path);
	size_t len = fread(text, 1, sizeof text - 1, f);
	fclose(f);
	text[len] = '\0';
	return text;
}

ANE_TEST(unverified_ops_are_passed_on_and_logged_once)
{
	anes_ane_backend_set_log(B, capture_log, &n_logged);
	n_logged = 0;
	static char text[1 << 14];
	snprintf(text, sizeof text, "%s", mil("tensor<fp16, [1, 64, 1, 64]> x",
	                       "        tensor<fp16, [1, 64, 1, 64]> a = identity(x = x)[name = string(\"ident\")];\n"
	                       "        tensor<fp16, [1, 64, 1, 64]> b = identity(x = a);\n"
	                       "        tensor<fp16, [1, 64, 1, 64]> c = relu(x = b);\n"
	                       "        tensor<fp16, [1, 64, 1, 64]> y = add(x = c, y = x);", "y"));
	fake_log_clear();
	anes_bprogram *p = compile_ok(text, NULL, 0);
	cr_assert(strstr(fake_log_text(), "compileWithQoS:"), "not compiled:\n%s", fake_log_text());
	cr_assert(strstr(model_mil(), "identity(x = x)"), "not passed on as it is:\n%s", model_mil());
	cr_assert_eq(n_logged, 1, "%d lines logged", n_logged);
	cr_assert_str_eq(logged[0], NOTE "identity (lines 4, 5), relu (line 6)");
	B->ops->program_free(B, p);

	/* a program of verified ops only logs nothing */
	B->ops->program_free(B, compile_ok(simple_mil(), NULL, 0));
	cr_assert_eq(n_logged, 1);
	/* each program is logged when it is compiled */
	B->ops->program_free(B, compile_ok(text, NULL, 0));
	cr_assert_eq(n_logged, 2);

	/* concat without interleave = false and integer compute are passed on too */
	const char *in = "tensor<fp16, [1, 32, 1, 64]> a, tensor<fp16, [1, 32, 1, 64]> b";
	B->ops->program_free(B, compile_ok(mil(in, "        tensor<fp16, [1, 64, 1, 64]> y = concat(values = (a, b), axis = 1);", "y"),
	                                   NULL, 0));
	cr_assert_str_eq(logged[2], NOTE "concat without interleave = false (line 4)");
	B->ops->program_free(B, compile_ok(mil(in, "        tensor<fp16, [1, 64, 1, 64]> y = concat(values = (a, b), axis = 1, interleave = false);", "y"),
	                                   NULL, 0));
	cr_assert_eq(n_logged, 3);
	B->ops->program_free(B, compile_ok(mil("tensor<fp16, [1, 64, 1, 64]> x",
	            "        tensor<int32, [1, 64, 1, 64]> i = cast(x = x, dtype = string(\"int32\"))[name = string(\"i\")];\n"
	            "        tensor<fp16, [1, 64, 1, 64]> y = cast(x = i, dtype = string(\"fp16\"));", "y"), NULL, 0));
	cr_assert_str_eq(logged[3], NOTE "int32 values from cast (line 4)");
	cr_assert_eq(n_logged, 4);

	/* a long line is cut with "..." */
	static char body[1 << 13];
	size_t pos = 0;
	for (int i = 0; i < 40; i++)
		pos += (size_t)snprintf(body + pos, sizeof body - pos,
		                        "        tensor<fp16, [1, 64, 1, 64]> c%d = concat(values = (a, b), axis = 1);\n", i);
	snprintf(body + pos, sizeof body - pos, "        tensor<fp16, [1, 64, 1, 64]> y = add(x = c0, y = c39);");
	B->ops->program_free(B, compile_ok(mil(in, body, "y"), NULL, 0));
	cr_assert_eq(n_logged, 5);
	size_t len = strlen(logged[4]);
	cr_assert_eq(len, sizeof ((anes_ane_prepared *)0)->note - 1, "%zu: %s", len, logged[4]);
	cr_assert_str_eq(logged[4] + len - 3, "...");
}

/* the ops added for the iOS 15-18 opsets (masks, select, ...) reach the
 * framework as they are and are named unverified */
/* A function with states (read_state, coreml_update_state) is refused at
 * its run, before the framework is asked anything: how the framework takes
 * Core ML's state buffers is not implemented (docs/protocol.md, "States"). */
ANE_TEST(functions_with_states_are_refused_at_run)
{
	anes_ane_backend_set_log(B, capture_log, &n_logged);
	n_logged = 0;
	anes_bprogram *p = compile_ok(mil("tensor<fp16, [1, 64, 1, 64]> x, state<tensor<fp16, [1, 64, 1, 64]>> acc",
	            "        tensor<fp16, [1, 64, 1, 64]> a = read_state(input = acc)[name = string(\"a\")];\n"
	            "        tensor<fp16, [1, 64, 1, 64]> b = add(x = a, y = x)[name = string(\"b\")];\n"
	            "        tensor<fp16, [1, 64, 1, 64]> y = coreml_update_state(state = acc, value = b)[name = string(\"y\")];",
	            "y"), NULL, 0);
	cr_assert_eq(p->functions[0].n_states, 1);
	cr_assert_eq(n_logged, 1);
	cr_assert_str_eq(logged[0], NOTE "read_state (line 4), coreml_update_state (line 6)");
	cr_assert_null(B->ops->run_states, "the ANE backend runs no states in process");
	anes_iosurface in = fake_surface_new(49152), out = fake_surface_new(49152), st = fake_surface_new(49152);
	anes_surface_desc args[3] = { on_surface(in, NULL, 49152, 0), on_surface(out, NULL, 49152, 0),
		                      on_surface(st, NULL, 49152, 0) };
	fake_log_clear();
	int rc = B->ops->run_surfaces(B, p, 0, args, 3, errbuf, sizeof errbuf);
	cr_assert_eq(rc, -ENOTSUP, "%d: %s", rc, errbuf);
	cr_assert(strstr(errbuf, "does not run functions with states"), "%s", errbuf);
	cr_assert(strstr(errbuf, "not implemented (unverified)"), "%s", errbuf);
	expect_log(NULL, 0);   /* nothing reached the framework */
	B->ops->program_free(B, p);
	fake_surface_release(in);
	fake_surface_release(out);
	fake_surface_release(st);
}

ANE_TEST(ios15_18_ops_are_passed_on_unverified)
{
	anes_ane_backend_set_log(B, capture_log, &n_logged);
	n_logged = 0;
	anes_bprogram *p = compile_ok(mil("tensor<fp16, [1, 64, 1, 64]> x",
	            "        tensor<bool, [1, 64, 1, 64]> m = less(x = x, y = fp16(0));\n"
	            "        tensor<fp16, [1, 64, 1, 64]> y = select(cond = m, a = x, b = fp16(0))[name = string(\"s\")];", "y"),
	                              NULL, 0);
	cr_assert(strstr(model_mil(), "select(cond = m, a = x, b = fp16(0))"), "not passed on as it is:\n%s", model_mil());
	B->ops->program_free(B, p);
	cr_assert_eq(n_logged, 1);
	cr_assert_str_eq(logged[0], NOTE "less (line 4), select (line 5), bool values from less (line 4)");
}

ANE_TEST(the_verified_list)
{
	static const char *const yes[] = {
		"conv", "matmul", "add", "mul", "sub", "pow", "sigmoid", "softmax", "reduce_sum", "reshape",
		"transpose", "slice_by_size", "concat", "cast", "exp", "scaled_dot_product_attention",
	};
	static const char *const no[] = {
		"gelu", "identity", "relu", "layer_norm", "linear", "real_div", "slice_by_index", "silu",
		"rsqrt", "reduce_mean", "constexpr_affine_dequantize", "tanh", "while_loop", "",
	};
	for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
		cr_assert(anes_ane_op_verified(yes[i]), "%s", yes[i]);
	for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
		cr_assert(!anes_ane_op_verified(no[i]), "%s", no[i]);
}

/* ---- gelu: rewritten into verified ops on the ANE path ---- */

static const char *gelu_mil(void)
{
	/* a value named like the rewrite's names, to make it pick another prefix */
	return mil("tensor<fp16, [1, 64, 1, 64]> x",
	           "        tensor<fp16, [1, 64, 1, 64]> anes_gelu0_s = mul(x = x, y = x);\n"
	           "        tensor<fp16, [1, 64, 1, 64]> g1 = gelu(x = anes_gelu0_s)[name = string(\"g1\")];\n"
	           "        tensor<fp16, [1, 64, 1, 64]> g2 = gelu(x = g1, mode = string(\"TANH_APPROXIMATION\"));  tensor<fp16, [1, 64, 1, 64]> g3 = gelu(x = g2, mode = string(\"SIGMOID_APPROXIMATION\"));\n"
	           "        tensor<fp16, [1, 64, 1, 64]> y = sub(x = g3, y = x)[name = string(\"y\")];", "y");
}

ANE_TEST(gelu_is_rewritten_into_verified_ops)
{
	anes_ane_backend_set_log(B, capture_log, &n_logged);
	n_logged = 0;
	anes_bprogram *p = compile_ok(gelu_mil(), NULL, 0);
	const char *sent = model_mil();
	cr_assert_null(strstr(sent, "gelu("), "gelu reached the framework:\n%s", sent);
	/* the framework got exactly this text */
	cr_assert(strstr(fake_log_text(), data_str(sent, strlen(sent))), "model.mil is not the MIL sent:\n%s",
	          fake_log_text());
	cr_assert_eq(n_logged, 0, "logged: %s", logged[0]);

	anes_mil_program *mp = NULL;
	int rc = anes_mil_parse(sent, strlen(sent), NULL, 0, &mp, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "the MIL sent does not parse: %s\n%s", errbuf, sent);
	const anes_mil_function *fn = &mp->functions[0];
	unsigned sigmoids = 0;
	for (uint32_t i = 0; i < fn->n_ops; i++) {
		cr_assert(anes_ane_op_verified(fn->ops[i].def->name), "op %s (line %u) is not verified:\n%s",
		          fn->ops[i].def->name, fn->ops[i].line, sent);
		sigmoids += strcmp(fn->ops[i].def->name, "sigmoid") == 0;
	}
	cr_assert_eq(sigmoids, 3);
	/* the other statements kept their lines; the results keep their names */
	cr_assert_str_eq(fn->ops[fn->n_ops - 1].name, "y");
	cr_assert_eq(fn->ops[fn->n_ops - 1].line, 7);
	cr_assert_eq(fn->ops[0].line, 4);
	bool g3 = false;
	for (uint32_t i = 0; i < fn->n_values; i++)
		if (strcmp(fn->values[i].name, "g3") == 0)
			g3 = fn->values[i].line == 6;
	cr_assert(g3, "g3 is not defined on line 6:\n%s", sent);
	cr_assert(strstr(sent, "anes_gelu_0_sq"), "the rewrite's names clash:\n%s", sent);
	anes_mil_program_free(mp);
	B->ops->program_free(B, p);

	/* gelu of an inline literal is left as it is, and logged */
	p = compile_ok(mil("tensor<fp16, [1, 64, 1, 64]> x",
		"        fp16 g = gelu(x = fp16(0.5));\n"
		"        tensor<fp16, [1, 64, 1, 64]> y = add(x = x, y = g);", "y"), NULL, 0);
	cr_assert(strstr(model_mil(), "gelu(x = fp16(0.5))"), "%s", model_mil());
	cr_assert_eq(n_logged, 1);
	cr_assert_str_eq(logged[0], NOTE "gelu (line 4)");
	B->ops->program_free(B, p);
}

ANE_TEST(refuses_several_functions)
{
	const char *text =
		"program(1.3)\n{\n"
		"  func main<ios18>(tensor<fp16, [1, 8, 1, 32]> a) {\n"
		"    tensor<fp16, [1, 8, 1, 32]> b = add(x = a, y = a);\n"
		"  } -> (b);\n"
		"  func other<ios18>(tensor<fp16, [1, 8, 1, 32]> a) {\n"
		"    tensor<fp16, [1, 8, 1, 32]> b = mul(x = a, y = a);\n"
		"  } -> (b);\n"
		"}\n";
	refused(text, NULL, 0, -ENOTSUP, "line 6: function 'other': the ANE backend runs single-function programs");
}

ANE_TEST(refuses_bad_weight_paths)
{
	size_t l;
	uint8_t *blob = make_blob(64, 1, &l);
	const char *text = simple_mil();
	const char *bad[] = {
		"@model_path/weights/../../etc/passwd", "@model_path/weights/", "@model_path/weights/a/../b.bin",
		"@model_path/other/w.bin", "/abs/w.bin", "@model_path/weights/..", "@model_path/weights/\x01x",
		"@model_path/weights/a//b.bin", "@model_path/weights/a/", "@model_path/weights//a",
		"@model_path/weights/a/./b", "@model_path/weights/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q",
		"@model_path/weights/l/\x7f",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		anes_weight w = {bad[i], blob, l, false, false, -1};
		refused(text, &w, 1, -EINVAL, "weight \"");
	}
	anes_weight twice[] = {{"@model_path/weights/w.bin", blob, l, false, false, -1}, {"@model_path/weights/w.bin", blob, l, false, false, -1}};
	refused(text, twice, 2, -EINVAL, "is given twice");
	anes_weight nested[] = {{"@model_path/weights/a/b.bin", blob, l, false, false, -1}, {"@model_path/weights/a", blob, l, false, false, -1}};
	refused(text, nested, 2, -EINVAL, "weight \"@model_path/weights/a\" is a directory of weight");
	free(blob);
}

ANE_TEST(parse_errors_pass_through)
{
	refused("program(1.3) { func main<ios18>(", NULL, 0, -EINVAL, "line 1");
}

/* The examples written for a first run on a Mac use verified ops only: they
 * compile with nothing logged and reach the framework as they are. */
static char *read_source(const char *rel)
{
	/* relative to this file (meson runs tests in the build directory) */
	char path[1024];
	const char *src = __FILE__, *slash = strrchr(src, '/');
	snprintf(path, sizeof path, "%.*s/../%s", slash ? (int)(slash - src) : 1, slash ? src : ".", rel);
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "cannot open %s", path);
	char *t = malloc(1 << 20);
	size_t n = fread(t, 1, (1 << 20) - 1, f);
	cr_assert(n > 0 && n < (1 << 20) - 1, "%s: %zu bytes", path, n);
	t[n] = '\0';
	fclose(f);
	return t;
}

ANE_TEST(the_smoke_examples_use_verified_ops_only)
{
	static const char *const files[] = {"examples/dynamic_matmul.mil", "examples/transformer_block_verified.mil"};
	anes_ane_backend_set_log(B, capture_log, &n_logged);
	for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
		n_logged = 0;
		char *text = read_source(files[i]);
		fake_log_clear();
		anes_bprogram *p = compile_ok(text, NULL, 0);
		cr_assert_eq(n_logged, 0, "%s: %s", files[i], logged[0]);
		cr_assert(strstr(fake_log_text(), data_str(text, strlen(text))), "%s was not sent as it is", files[i]);
		B->ops->program_free(B, p);
		free(text);
	}
}

/* Every probe of examples/ane_probe (the op table of a first run on a Mac)
 * passes this backend's own checks, so that the table shows what the
 * framework does, not what aneshare refuses. */
ANE_TEST(every_op_probe_reaches_the_framework)
{
	const char *exe = ANES_ANE_PROBE_EXE;
	char cmd[1200];
	if (!exe[0] || access(exe, X_OK) != 0) {
		fprintf(stderr, "every_op_probe_reaches_the_framework: skipped: no ane_probe in this build\n");
		return;
	}
	anes_ane_backend_set_log(B, capture_log, &n_logged);
	n_logged = 0;
	snprintf(cmd, sizeof cmd, "'%s' --print-probes", exe);
	FILE *f = popen(cmd, "r");
	cr_assert_not_null(f);
	static char all[1 << 20];
	size_t len = fread(all, 1, sizeof all - 1, f);
	cr_assert_eq(pclose(f), 0);
	all[len] = '\0';
	int n = 0;
	for (char *p = strstr(all, "// probe "); p; n++) {
		char *next = strstr(p + 1, "// probe ");
		char *text = strstr(p, "program(");
		cr_assert_not_null(text);
		size_t tl = next ? (size_t)(next - text) : strlen(text);
		char name[80];
		sscanf(p, "// probe %79[^\n]", name);
		anes_bprogram *prog = NULL;
		fake_log_clear();
		int rc = B->ops->compile(B, text, tl, NULL, 0, &prog, errbuf, sizeof errbuf);
		cr_assert_eq(rc, 0, "probe %s: %s\n%.*s", name, errbuf, (int)tl, text);
		cr_assert(strstr(fake_log_text(), "compileWithQoS:"), "probe %s did not reach the framework", name);
		B->ops->program_free(B, prog);
		p = next;
	}
	cr_assert_eq(n, 57, "%d probes", n);
	/* one line for each probe of an unverified op (gelu is rewritten) */
	cr_assert_eq(n_logged, 39, "%d lines logged", n_logged);
}

/* The rewritten gelu, run on the CPU backend, against the CPU backend's own
 * gelu over every fp16 value in [-16, 16].  The tanh form differs from the
 * exact (erf) gelu by at most 4.74e-4 (largest at x = -2.70); computed
 * through fp16 intermediates the rewrite stays within 4.74e-4 + 2^-10 + 2^-9 |y|
 * of the exact gelu y (docs/ane.md, "gelu"). */
#define GELU_N 38913

static void gelu_run(anes_backend *cpu, const char *mode, bool lower, const uint16_t *x, uint16_t *y)
{
	char text[1024], *low = NULL, err[256];
	size_t low_len = 0;
	snprintf(text, sizeof text,
	         "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, 1, 1, %d]> x) {\n"
	         "        tensor<fp16, [1, 1, 1, %d]> y = gelu(x = x%s%s%s)[name = string(\"y\")];\n"
	         "    } -> (y);\n}\n", GELU_N, GELU_N, mode ? ", mode = string(\"" : "", mode ? mode : "",
	         mode ? "\")" : "");
	const char *src = text;
	size_t len = strlen(text);
	if (lower) {
		anes_mil_program *mp = NULL;
		cr_assert_eq(anes_mil_parse(text, len, NULL, 0, &mp, err, sizeof err), 0, "%s", err);
		cr_assert_eq(anes_ane_lower(mp, text, len, &low, &low_len), 1);
		anes_mil_program_free(mp);
		cr_assert_null(strstr(low, "gelu("), "%s", low);
		src = low;
		len = low_len;
	}
	anes_bprogram *p = NULL;
	cr_assert_eq(cpu->ops->compile(cpu, src, len, NULL, 0, &p, err, sizeof err), 0, "%s\n%s", err, src);
	const void *ins[] = {x};
	void *outs[] = {y};
	cr_assert_eq(cpu->ops->run(cpu, p, 0, ins, outs, err, sizeof err), 0, "%s", err);
	cpu->ops->program_free(cpu, p);
	free(low);
}

Test(gelu, rewrite_on_cpu_matches_gelu)
{
	anes_backend *cpu = NULL;
	cr_assert_eq(anes_cpu_backend_new(1, &cpu), 0);
	uint16_t *x = malloc(GELU_N * 2), *want = malloc(GELU_N * 2), *got = malloc(GELU_N * 2);
	size_t n = 0;
	for (uint32_t h = 0; h <= 0x4c00; h++)
		x[n++] = (uint16_t)h;
	for (uint32_t h = 0x8001; h <= 0xcc00; h++)
		x[n++] = (uint16_t)h;
	cr_assert_eq(n, GELU_N);

	static const struct {
		const char *mode;     /* of both programs */
		double abs_tol, rel_tol;
	} cases[] = {
		{NULL, 4.74e-4 + 1.0 / 1024, 1.0 / 512},          /* EXACT: the tanh form's error too */
		{"TANH_APPROXIMATION", 1.0 / 1024, 1.0 / 512},  /* the same formula: fp16 rounding only */
		{"SIGMOID_APPROXIMATION", 1.0 / 1024, 1.0 / 512},
	};
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		gelu_run(cpu, cases[c].mode, false, x, want);
		gelu_run(cpu, cases[c].mode, true, x, got);
		double worst = 0, worst_x = 0;
		for (size_t i = 0; i < n; i++) {
			double xv = anes_f16_to_f32_soft(x[i]);
			double w = anes_f16_to_f32_soft(want[i]), g = anes_f16_to_f32_soft(got[i]);
			double bound = cases[c].abs_tol + cases[c].rel_tol * fabs(w);
			cr_assert(fabs(g - w) <= bound, "mode %s, x = %.9g: rewrite %.9g, gelu %.9g (|diff| %.3g > %.3g)",
			          cases[c].mode ? cases[c].mode : "EXACT", xv, g, w, fabs(g - w), bound);
			if (fabs(g - w) > worst) {
				worst = fabs(g - w);
				worst_x = xv;
			}
		}
		cr_log_info("gelu mode %s: largest |rewrite - gelu| %.3g at x = %.6g",
		            cases[c].mode ? cases[c].mode : "EXACT", worst, worst_x);
	}
	free(x);
	free(want);
	free(got);
	cpu->ops->destroy(cpu);
}

/* The rewrite in the places gelu can stand in MIL text: several statements
 * on one line, comments and line breaks inside a statement, the "(T y) = op"
 * form, fp32 and scalar values inside the program, a gelu that is the
 * function's output, a gelu whose input is a function input used again later.
 * Each program must lower, parse, keep no named-input gelu, and compute what
 * the original computes on the CPU backend (within the rewrite's error). */
Test(gelu, rewrite_in_every_syntactic_place)
{
	static const char *const bodies[] = {
		/* two statements on the gelu's line, one after it */
		"        tensor<fp16, [1, 1, 1, 64]> a = mul(x = x, y = x); tensor<fp16, [1, 1, 1, 64]> g = gelu(x = a); "
		"tensor<fp16, [1, 1, 1, 64]> y = sub(x = g, y = x);\n",
		/* a comment and line breaks inside the statement */
		"        tensor<fp16, [1, 1, 1, 64]> y = gelu( // the activation\n"
		"            x = x,\n            mode = string(\"TANH_APPROXIMATION\")\n        )[name = string(\"act\")];\n",
		/* the parenthesised output form */
		"        (tensor<fp16, [1, 1, 1, 64]> y) = gelu(x = x, mode = string(\"SIGMOID_APPROXIMATION\"));\n",
		/* fp32 inside the program */
		"        tensor<fp32, [1, 1, 1, 64]> f = cast(x = x, dtype = string(\"fp32\"));\n"
		"        tensor<fp32, [1, 1, 1, 64]> gf = gelu(x = f);\n"
		"        tensor<fp16, [1, 1, 1, 64]> y = cast(x = gf, dtype = string(\"fp16\"));\n",
		/* a scalar */
		"        fp16 h = const()[name = string(\"h\"), val = fp16(0.75)];\n"
		"        fp16 gh = gelu(x = h);\n"
		"        tensor<fp16, [1, 1, 1, 64]> y = mul(x = x, y = gh);\n",
		/* chained gelus, the input used again */
		"        tensor<fp16, [1, 1, 1, 64]> g1 = gelu(x = x);\n"
		"        tensor<fp16, [1, 1, 1, 64]> g2 = gelu(x = g1);\n"
		"        tensor<fp16, [1, 1, 1, 64]> y = add(x = g2, y = x);\n",
	};
	anes_backend *cpu = NULL;
	cr_assert_eq(anes_cpu_backend_new(1, &cpu), 0);
	uint16_t x[64], want[64], got[64];
	for (int i = 0; i < 64; i++)
		x[i] = anes_f32_to_f16_soft((float)(i - 32) / 8.0f);
	for (size_t b = 0; b < sizeof bodies / sizeof bodies[0]; b++) {
		char text[2048], err[256], *low = NULL;
		size_t low_len = 0;
		snprintf(text, sizeof text, "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, 1, 1, 64]> x) {\n%s"
		         "    } -> (y);\n}\n", bodies[b]);
		anes_mil_program *mp = NULL, *lp = NULL;
		cr_assert_eq(anes_mil_parse(text, strlen(text), NULL, 0, &mp, err, sizeof err), 0, "%s\n%s", err, text);
		cr_assert_eq(anes_ane_lower(mp, text, strlen(text), &low, &low_len), 1, "%s", text);
		cr_assert_eq(strlen(low), low_len);
		cr_assert_eq(anes_mil_parse(low, low_len, NULL, 0, &lp, err, sizeof err), 0, "%s\n%s", err, low);
		const anes_mil_function *fn = &lp->functions[0];
		for (uint32_t i = 0; i < fn->n_ops; i++)
			cr_assert_str_neq(fn->ops[i].def->name, "gelu", "%s", low);
		cr_assert_eq(lp->functions[0].n_outputs, 1);
		anes_mil_program_free(mp);
		anes_mil_program_free(lp);

		const void *ins[] = {x};
		void *o1[] = {want}, *o2[] = {got};
		anes_bprogram *p1 = NULL, *p2 = NULL;
		cr_assert_eq(cpu->ops->compile(cpu, text, strlen(text), NULL, 0, &p1, err, sizeof err), 0, "%s", err);
		cr_assert_eq(cpu->ops->compile(cpu, low, low_len, NULL, 0, &p2, err, sizeof err), 0, "%s", err);
		cr_assert_eq(cpu->ops->run(cpu, p1, 0, ins, o1, err, sizeof err), 0, "%s", err);
		cr_assert_eq(cpu->ops->run(cpu, p2, 0, ins, o2, err, sizeof err), 0, "%s", err);
		for (int i = 0; i < 64; i++) {
			double w = anes_f16_to_f32_soft(want[i]), g = anes_f16_to_f32_soft(got[i]);
			/* two gelus in a row (the last body) may add their errors */
			cr_assert(fabs(g - w) <= 2 * (4.74e-4 + 1.0 / 1024) + 1.0 / 256 * fabs(w),
			          "body %zu, element %d: rewrite %g, gelu %g\n%s", b, i, g, w, low);
		}
		cpu->ops->program_free(cpu, p1);
		cpu->ops->program_free(cpu, p2);
		free(low);
	}
	cpu->ops->destroy(cpu);
}

/* ---- backend creation ---- */

ANE_TEST(missing_class_means_no_ane)
{
	destroy_backend();
	fk.missing_class = "_ANERequest";
	anes_backend *b = (anes_backend *)0x1;
	cr_assert_eq(anes_ane_backend_new(fake_bridge(), &b, errbuf, sizeof errbuf), -ENODEV);
	cr_assert_eq(b, (anes_backend *)0x1);
	cr_assert(strncmp(errbuf, "no ANE on this machine (Objective-C class _ANERequest not found", 62) == 0,
	          "%s", errbuf);
	new_backend();
}

ANE_TEST(device_without_ane)
{
	destroy_backend();
	fk.has_ane = false;
	anes_backend *b = (anes_backend *)0x1;
	cr_assert_eq(anes_ane_backend_new(fake_bridge(), &b, errbuf, sizeof errbuf), -ENODEV);
	cr_assert_str_eq(errbuf, "no ANE on this machine (_ANEDeviceInfo hasANE returned NO)");
	cr_assert_eq(fk.pool_depth, 0);
	/* without the _ANEDeviceInfo class the backend starts */
	fk.has_ane = true;
	fk.no_device_info = true;
	cr_assert_eq(anes_ane_backend_new(fake_bridge(), &b, errbuf, sizeof errbuf), 0, "%s", errbuf);
	b->ops->destroy(b);
	new_backend();
}

/* ---- the real bridge on this machine ---- */

ANE_TEST(real_bridge_reports_no_ane)
{
#ifdef __APPLE__
	cr_skip_test("a Mac: the real bridge may open");
#else
	const anes_ane_bridge *br = (const anes_ane_bridge *)0x1;
	char e[512];
	cr_assert_eq(anes_ane_bridge_open(&br, e, sizeof e), -ENODEV);
	cr_assert_eq(br, (const anes_ane_bridge *)0x1);
	cr_assert(strncmp(e, "no ANE on this machine (AppleNeuralEngine.framework: ", 53) == 0, "%s", e);
	/* opened once: the same answer again */
	char e2[512];
	cr_assert_eq(anes_ane_bridge_open(&br, e2, sizeof e2), -ENODEV);
	cr_assert_str_eq(e, e2);
#endif
}

/* ---- aneshared --backend ---- */

static const char *aneshared(void)
{
	const char *exe = getenv("ANESHARED");
#ifdef ANES_ANESHARED_EXE
	if (!exe || !*exe)
		exe = ANES_ANESHARED_EXE;
#endif
	if (!exe || !*exe)
		cr_skip_test("the path of aneshared is unknown (set ANESHARED)");
	return exe;
}

typedef struct daemon_run {
	pid_t pid;
	int err_fd;          /* read end of its stderr */
	char out[8192];      /* what it wrote to stderr so far */
	size_t n;
	char sock[512];
} daemon_run;

static void start_daemon(daemon_run *d, const char *backend)
{
	const char *exe = aneshared();
	int pfd[2];
	memset(d, 0, sizeof *d);
	snprintf(d->sock, sizeof d->sock, "%s/aneshare.sock", tmpdir);
	cr_assert_eq(pipe(pfd), 0);
	d->pid = fork();
	cr_assert(d->pid >= 0);
	if (d->pid == 0) {
		dup2(pfd[1], 2);
		close(pfd[0]);
		close(pfd[1]);
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0);
		dup2(null, 1);
		unsetenv("LISTEN_FDS");
		unsetenv("LISTEN_PID");
		execl(exe, exe, "--socket", d->sock, "--backend", backend, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	d->err_fd = pfd[0];
}

/* Read stderr until want appears, the stream ends, or 10 s pass. */
static bool read_until(daemon_run *d, const char *want)
{
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (want && strstr(d->out, want))
			return true;
		clock_gettime(CLOCK_MONOTONIC, &t);
		long ms = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
		if (ms > 10000)
			return false;
		struct pollfd p = {d->err_fd, POLLIN, 0};
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t n = read(d->err_fd, d->out + d->n, sizeof d->out - 1 - d->n);
		if (n <= 0)
			return want ? strstr(d->out, want) != NULL : true;
		d->n += (size_t)n;
		d->out[d->n] = '\0';
	}
}

static int wait_exit(daemon_run *d)
{
	int status = 0;
	pid_t r;
	do
		r = waitpid(d->pid, &status, 0);
	while (r < 0 && errno == EINTR);
	cr_assert_eq(r, d->pid);
	close(d->err_fd);
	unlink(d->sock);
	char lock[600];
	snprintf(lock, sizeof lock, "%s.lock", d->sock);
	unlink(lock);
	return status;
}

ANE_TEST(daemon_backend_ane_exits_without_an_ane)
{
#ifdef __APPLE__
	cr_skip_test("a Mac may have an ANE");
#endif
	daemon_run d;
	start_daemon(&d, "ane");
	read_until(&d, NULL);
	int status = wait_exit(&d);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status 0x%x; stderr:\n%s", status, d.out);
	cr_assert(strstr(d.out, "aneshared: no ANE on this machine ("), "stderr:\n%s", d.out);
	cr_assert(strstr(d.out, "); --backend cpu (or auto) runs the CPU reference backend\n"),
	          "no way out named:\n%s", d.out);
}

ANE_TEST(daemon_backend_auto_picks_cpu)
{
#ifdef __APPLE__
	cr_skip_test("a Mac may have an ANE");
#endif
	daemon_run d;
	start_daemon(&d, "auto");
	bool up = read_until(&d, "listening on");
	if (!up)
		kill(d.pid, SIGKILL);
	cr_assert(up, "aneshared did not start; stderr:\n%s", d.out);
	read_until(&d, "\n");
	cr_assert(strstr(d.out, "(backend cpu"), "stderr:\n%s", d.out);
	cr_assert_eq(kill(d.pid, SIGTERM), 0);
	read_until(&d, NULL);
	int status = wait_exit(&d);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status 0x%x; stderr:\n%s", status, d.out);
}

ANE_TEST(daemon_backend_unknown_name)
{
	daemon_run d;
	start_daemon(&d, "gpu");
	read_until(&d, NULL);
	int status = wait_exit(&d);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 78, "status 0x%x; stderr:\n%s", status, d.out);
	cr_assert(strstr(d.out, "gpu"), "stderr:\n%s", d.out);
}
