/* SPDX-License-Identifier: MIT */
/*
 * Model folders (aneshare_program_compile_model): a compiled Core ML model
 * folder (.mlmodelc) compiles from its model.mil with its @model_path/
 * weight files passed by descriptor; paths leaving the folder, symbolic
 * links and missing files are refused with clear errors; the compile frames
 * carry no weight bytes.
 */
#ifdef __linux__
#include <dlfcn.h>
#include <dirent.h>
#endif
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "anes_fp16.h"
#include "aneshare.h"
#include "daemon_harness.h"

static h_daemon D;

static void setup(void)
{
	h_daemon_start(&D);
}

static void teardown(void)
{
	h_daemon_kill(&D);
}

TestSuite(model, .init = setup, .fini = teardown, .timeout = 60);

#ifdef __linux__
/* Bytes and descriptors this process sends with sendmsg while counting: the
 * test executable's sendmsg is the one libaneshare's (and its own) calls
 * resolve to. */
static volatile int counting;
static size_t sent_bytes;
static unsigned sent_fd_frames;

__attribute__((visibility("default"))) ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	static ssize_t (*real)(int, const struct msghdr *, int);
	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "sendmsg");
	ssize_t n = real(fd, msg, flags);
	if (counting && n > 0) {
		sent_bytes += (size_t)n;
		if (msg->msg_controllen)
			sent_fd_frames++;
	}
	return n;
}

static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	cr_assert_not_null(d);
	int n = 0;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}
#endif

static void put_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
	cr_assert_eq(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static void mkdir_p(const char *path)
{
	cr_assert(mkdir(path, 0700) == 0 || errno == EEXIST, "%s: %s", path, strerror(errno));
}

/* A weight blob (the layout coremltools writes): a 64-byte header, one
 * 64-byte record per tensor, then the data.  Records at 64 * (1 + i). */
static uint8_t *blob(const float *const *vals, const size_t *counts, unsigned n, size_t *ret_len)
{
	size_t len = 64 + 64 * n, data_off = len;
	for (unsigned i = 0; i < n; i++)
		len += counts[i] * 2;
	uint8_t *b = calloc(1, len);
	cr_assert_not_null(b);
	b[0] = (uint8_t)n;
	b[4] = 2;
	for (unsigned i = 0; i < n; i++) {
		uint32_t magic = 0xDEADBEEFu, dt = 1;
		uint64_t size = counts[i] * 2, off = data_off;
		uint8_t *r = b + 64 + 64 * i;
		memcpy(r, &magic, 4);
		memcpy(r + 4, &dt, 4);
		memcpy(r + 8, &size, 8);
		memcpy(r + 16, &off, 8);
		for (size_t k = 0; k < counts[i]; k++) {
			uint16_t h = anes_f32_to_f16_soft(vals[i][k]);
			memcpy(b + data_off + 2 * k, &h, 2);
		}
		data_off += size;
	}
	*ret_len = len;
	return b;
}

/* y [1, 3] = linear(x [1, 4], W [3, 4], b [3]), W and b from WPATH (the
 * same file twice, at two offsets). */
#define MIL_FMT \
	"program(1.3)\n" \
	"[buildInfo = dict<string, string>({{\"coremltools-version\", \"8.0\"}})]\n" \
	"{\n" \
	"    func main<ios18>(tensor<fp16, [1, 4]> x) {\n" \
	"            tensor<fp16, [3, 4]> W = const()[name = string(\"W\"), val = tensor<fp16, [3, 4]>(" \
	"BLOBFILE(path = string(\"%s\"), offset = uint64(64)))];\n" \
	"            tensor<fp16, [3]> b = const()[name = string(\"b\"), val = tensor<fp16, [3]>(" \
	"BLOBFILE(path = string(\"%s\"), offset = uint64(128)))];\n" \
	"            tensor<fp16, [1, 3]> y = linear(bias = b, weight = W, x = x)[name = string(\"y\")];\n" \
	"    } -> (y);\n" \
	"}\n"

static const float Wv[12] = {1, 0, 0, 0.5f, 0, -1, 2, 0, 0.25f, 0.25f, 0.25f, 0.25f};
static const float bv[3] = {0.5f, -1, 0};

/* Make D.dir/NAME.mlmodelc with weights/weight.bin and model.mil naming
 * wpath; returns the folder (static buffer). */
static const char *make_model(const char *name, const char *wpath)
{
	static char dir[512];
	char p[600];
	snprintf(dir, sizeof dir, "%s/%s.mlmodelc", D.dir, name);
	mkdir_p(dir);
	snprintf(p, sizeof p, "%s/weights", dir);
	mkdir_p(p);
	const float *vals[2] = {Wv, bv};
	size_t counts[2] = {12, 3}, len;
	uint8_t *b = blob(vals, counts, 2, &len);
	snprintf(p, sizeof p, "%s/weights/weight.bin", dir);
	put_file(p, b, len);
	free(b);
	char mil[2048];
	snprintf(mil, sizeof mil, MIL_FMT, wpath, wpath);
	snprintf(p, sizeof p, "%s/model.mil", dir);
	put_file(p, mil, strlen(mil));
	return dir;
}

Test(model, folder_with_weights_computes_by_hand)
{
	const char *dir = make_model("lin", "@model_path/weights/weight.bin");
	aneshare_conn *c = h_connect(&D, "model");
	aneshare_program *p = NULL;
	bool cached = true;
#ifdef __linux__
	int fds_before = open_fds();
	sent_bytes = 0;
	sent_fd_frames = 0;
	counting = 1;
#endif
	cr_assert_eq(aneshare_program_compile_model(c, dir, &p, &cached), 0, "%s", aneshare_last_error(c));
#ifdef __linux__
	counting = 0;
	cr_assert_eq(sent_fd_frames, 1, "the weight file went by descriptor");
	/* the library keeps one duplicate of the weight fd with the program */
	cr_assert_eq(open_fds(), fds_before + 1);
#endif
	cr_assert_not(cached);

	aneshare_surface *in = h_surface(c, 8), *out = h_surface(c, 6);
	uint16_t *x = aneshare_surface_data(in), *y = aneshare_surface_data(out);
	for (int i = 0; i < 4; i++)
		x[i] = anes_f32_to_f16_soft((float)(i + 1));   /* x = 1 2 3 4 */
	cr_assert_eq(aneshare_run(p, 0, &in, 1, &out, 1), 0, "%s", aneshare_last_error(c));
	/* by hand: 1 + 4 * 0.5 + 0.5 = 3.5;  -2 + 6 - 1 = 3;  (1 + 2 + 3 + 4) / 4 = 2.5 */
	const float want[3] = {3.5f, 3.0f, 2.5f};
	for (int o = 0; o < 3; o++)
		cr_assert_float_eq(anes_f16_to_f32_soft(y[o]), want[o], 1e-3, "y[%d] = %g, want %g", o,
		                   anes_f16_to_f32_soft(y[o]), want[o]);

	/* a second client compiling the same folder shares the compile */
	aneshare_conn *c2 = h_connect(&D, "model-2");
	aneshare_program *p2 = NULL;
	cr_assert_eq(aneshare_program_compile_model(c2, dir, &p2, &cached), 0, "%s", aneshare_last_error(c2));
	cr_assert(cached);
	cr_assert_str_eq(aneshare_program_key(p), aneshare_program_key(p2));
	aneshare_program_release(p2);
	aneshare_disconnect(c2);

	aneshare_surface_release(in);
	aneshare_surface_release(out);
	aneshare_program_release(p);
	aneshare_disconnect(c);
}

#ifdef __linux__
/* A folder with 2 MiB of weights: the compile sends less than its MIL text
 * plus 4 KiB. */
Test(model, compile_frames_carry_no_weight_bytes)
{
	enum { N = 1024 };
	char dir[512], p[600];
	snprintf(dir, sizeof dir, "%s/big.mlmodelc", D.dir);
	mkdir_p(dir);
	snprintf(p, sizeof p, "%s/weights", dir);
	mkdir_p(p);
	float *w = malloc(sizeof(float) * N * N);
	cr_assert_not_null(w);
	for (size_t i = 0; i < (size_t)N * N; i++)
		w[i] = (float)((i * 7) % 13) / 16.0f;
	const float *vals[1] = {w};
	size_t counts[1] = {(size_t)N * N}, len;
	uint8_t *b = blob(vals, counts, 1, &len);
	free(w);
	snprintf(p, sizeof p, "%s/weights/weight.bin", dir);
	put_file(p, b, len);
	free(b);
	char mil[1024];
	snprintf(mil, sizeof mil,
	         "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, %d]> x) {\n"
	         "        tensor<fp16, [%d, %d]> W = const()[name = string(\"W\"), val = tensor<fp16, [%d, %d]>("
	         "BLOBFILE(path = string(\"@model_path/weights/weight.bin\"), offset = uint64(64)))];\n"
	         "        tensor<fp16, [1, %d]> y = linear(x = x, weight = W)[name = string(\"y\")];\n"
	         "    } -> (y);\n}\n", N, N, N, N, N, N);
	snprintf(p, sizeof p, "%s/model.mil", dir);
	put_file(p, mil, strlen(mil));

	aneshare_conn *c = h_connect(&D, "model-big");
	aneshare_program *prog = NULL;
	sent_bytes = 0;
	counting = 1;
	cr_assert_eq(aneshare_program_compile_model(c, dir, &prog, NULL), 0, "%s", aneshare_last_error(c));
	counting = 0;
	cr_assert_gt(len, (size_t)2 << 20);
	cr_assert_gt(sent_bytes, strlen(mil), "the MIL text was sent");
	cr_assert_lt(sent_bytes, strlen(mil) + 4096, "sent %zu bytes for %zu of MIL and %zu of weights", sent_bytes,
	             strlen(mil), len);
	aneshare_program_release(prog);
	aneshare_disconnect(c);
}
#endif

/* compile_model must fail with rc, a message containing what, and no
 * program; the daemon still answers. */
static void refused(aneshare_conn *c, const char *dir, int rc, const char *what)
{
	aneshare_program *p = (aneshare_program *)(uintptr_t)1;
	int r = aneshare_program_compile_model(c, dir, &p, NULL);
	cr_assert_eq(r, rc, "%s: got %d (%s), want %d", dir, r, aneshare_last_error(c), rc);
	cr_assert_eq(p, (aneshare_program *)(uintptr_t)1, "out-parameter untouched on failure");
	cr_assert_not_null(strstr(aneshare_last_error(c), what), "message '%s' lacks '%s'", aneshare_last_error(c),
	                   what);
}

Test(model, paths_escaping_the_folder_are_refused)
{
	char outside[600], link[700];
	/* a real weight file just outside the folders */
	const float *vals[2] = {Wv, bv};
	size_t counts[2] = {12, 3}, len;
	uint8_t *b = blob(vals, counts, 2, &len);
	snprintf(outside, sizeof outside, "%s/outside.bin", D.dir);
	put_file(outside, b, len);
	free(b);
	aneshare_conn *c = h_connect(&D, "model-esc");
#ifdef __linux__
	int fds_before = open_fds();
#endif

	refused(c, make_model("dotdot", "@model_path/../outside.bin"), -EPERM, "'..'");
	refused(c, make_model("dotdot2", "@model_path/weights/../../outside.bin"), -EPERM, "'..'");
	refused(c, make_model("abs", "@model_path//etc/passwd"), -EPERM, "absolute");
	refused(c, make_model("empty", "@model_path/weights//weight.bin"), -EPERM, "empty");

	/* a link to a file outside, and a linked folder */
	const char *dir = make_model("link", "@model_path/weights/link.bin");
	snprintf(link, sizeof link, "%s/weights/link.bin", dir);
	cr_assert_eq(symlink(outside, link), 0);
	refused(c, dir, -EPERM, "symbolic link");
	dir = make_model("linkdir", "@model_path/w2/weight.bin");
	snprintf(link, sizeof link, "%s/w2", dir);
	cr_assert_eq(symlink(D.dir, link), 0);
	refused(c, dir, -EPERM, "symbolic link");
	/* a link is refused even when it points inside the folder */
	dir = make_model("linkin", "@model_path/weights/same.bin");
	snprintf(link, sizeof link, "%s/weights/same.bin", dir);
	cr_assert_eq(symlink("weight.bin", link), 0);
	refused(c, dir, -EPERM, "symbolic link");

#ifdef __linux__
	cr_assert_eq(open_fds(), fds_before, "no fd leaked by the refusals");
#endif
	/* the connection still compiles a good folder */
	aneshare_program *p = NULL;
	cr_assert_eq(aneshare_program_compile_model(c, make_model("good", "@model_path/weights/weight.bin"), &p, NULL),
	             0, "%s", aneshare_last_error(c));
	aneshare_program_release(p);
	aneshare_disconnect(c);
}

Test(model, missing_files_are_refused)
{
	aneshare_conn *c = h_connect(&D, "model-missing");
	refused(c, make_model("nofile", "@model_path/weights/nothere.bin"), -ENOENT, "weights/nothere.bin");
	refused(c, make_model("nodir", "@model_path/nodir/weight.bin"), -ENOENT, "nodir/weight.bin");

	char dir[600];
	snprintf(dir, sizeof dir, "%s/nomil.mlmodelc", D.dir);
	mkdir_p(dir);
	refused(c, dir, -ENOENT, "no model.mil");
	snprintf(dir, sizeof dir, "%s/absent.mlmodelc", D.dir);
	refused(c, dir, -ENOENT, "absent.mlmodelc");
	/* a weight path naming a folder */
	refused(c, make_model("isdir", "@model_path/weights"), -EINVAL, "not a regular file");
	aneshare_disconnect(c);
}

/* `aneshare --socket SOCK ARGS...`: its exit status; stdout+stderr in out. */
static int cli(char *out, size_t len, const char *const *args)
{
	return h_run_tool(&D, "ANESHARE_CLI", out, len, args);
}

Test(model, cli_compiles_and_runs_a_folder)
{
	char out[4096], xin[600], yout[600];
	const char *d = make_model("cli", "@model_path/weights/weight.bin");
	char dir[512];
	snprintf(dir, sizeof dir, "%s", d);
	cr_assert_eq(cli(out, sizeof out, (const char *[]){"compile", dir, NULL}), 0, "%s", out);
	cr_assert(strstr(out, "cached: no") && strstr(out, "fp16"), "%s", out);

	const float x[4] = {1, 2, 3, 4};
	snprintf(xin, sizeof xin, "%s/x.f32", D.dir);
	put_file(xin, x, sizeof x);
	snprintf(yout, sizeof yout, "%s/y.bin", D.dir);
	cr_assert_eq(cli(out, sizeof out, (const char *[]){"run", dir, "--input-f32", xin, "--output", yout, NULL}), 0,
	             "%s", out);
	uint16_t y[4];
	int fd = open(yout, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(read(fd, y, sizeof y), 6, "y is 3 fp16 values");
	close(fd);
	const float want[3] = {3.5f, 3.0f, 2.5f};
	for (int o = 0; o < 3; o++)
		cr_assert_float_eq(anes_f16_to_f32_soft(y[o]), want[o], 1e-3, "y[%d]", o);

	/* refusals are failures (1) with the library's message; --weight with a folder too */
	d = make_model("cli-esc", "@model_path/../x.f32");
	snprintf(dir, sizeof dir, "%s", d);
	cr_assert_eq(cli(out, sizeof out, (const char *[]){"run", dir, "--fill", "zeros", NULL}), 1, "%s", out);
	cr_assert(strstr(out, "inside the model folder"), "%s", out);
	char wopt[700];
	snprintf(wopt, sizeof wopt, "@model_path/w=%s", xin);
	cr_assert_eq(cli(out, sizeof out, (const char *[]){"compile", dir, "--weight", wopt, NULL}), 1, "%s", out);
	cr_assert(strstr(out, "brings its own weights"), "%s", out);
}
