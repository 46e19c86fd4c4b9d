/* SPDX-License-Identifier: MIT */
/*
 * Weights by file descriptor (program.compile's weight_fds,
 * aneshare_program_compile_fds): the bytes stay out of the frames, the key is
 * the daemon's own hash (the same as for inline weights, so any client and
 * any copy of the file share one compile), a sealed memfd is used in place,
 * a plain file is copied, and a client that truncates or rewrites its file
 * after (or while) passing it does not harm the daemon or other clients.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <msgpack.h>

#include "anes_config.h"
#include "anes_fp16.h"
#include "anes_proto.h"
#include "aneshare.h"
#include "daemon_harness.h"
#include "linear_blob.h"
#include "test_util.h"

static h_daemon D;

static void setup(void)
{
	h_daemon_start(&D);
}

static void teardown(void)
{
	h_daemon_kill(&D);
}

TestSuite(wfiles, .init = setup, .fini = teardown, .timeout = 60);

enum { IN = 64, OUT = 48 };   /* y [1, OUT] = linear(x [1, IN], W [OUT, IN]) */

static const char *mil_text(void)
{
	static char t[1024];
	return lb_mil(t, sizeof t, IN, OUT);
}

/* the blob of W[o][i] = lb_wval(o, i, seed) */
static uint8_t *make_blob(size_t *ret_len, float seed)
{
	return h_linear_blob(IN, OUT, seed, ret_len);
}

/* a plain file in the daemon's test directory holding len bytes */
static int plain_file(const char *name, const void *data, size_t len)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%s", D.dir, name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, data, len), (ssize_t)len);
	return fd;
}

/* run p on x = 1, 2, ... and check y against W of the given seed */
static void run_check(aneshare_conn *c, aneshare_program *p, float seed)
{
	h_linear_check(c, p, IN, OUT, seed);
}

Test(wfiles, file_fd_memfd_and_inline_share_one_key)
{
	size_t len;
	uint8_t *blob = make_blob(&len, 0.0f);
	aneshare_conn *c1 = h_connect(&D, "wf-1"), *c2 = h_connect(&D, "wf-2");

	int fd = plain_file("weight.bin", blob, len);
	aneshare_weight_fd wf = {"@model_path/weights/weight.bin", fd};
	aneshare_program *p1 = NULL;
	bool cached = true;
	cr_assert_eq(aneshare_program_compile_fds(c1, mil_text(), &wf, 1, &p1, &cached), 0, "%s",
	             aneshare_last_error(c1));
	cr_assert_not(cached);
	run_check(c1, p1, 0.0f);

	/* another client, inline weights: the same key, a cache hit */
	aneshare_weight w = {"@model_path/weights/weight.bin", blob, len};
	aneshare_program *p2 = NULL;
	cr_assert_eq(aneshare_program_compile(c2, mil_text(), &w, 1, &p2, &cached), 0, "%s", aneshare_last_error(c2));
	cr_assert(cached);
	cr_assert_str_eq(aneshare_program_key(p1), aneshare_program_key(p2));

#ifdef __linux__
	/* a sealed memfd of the same bytes: the same key again */
	int mfd = -1;
	cr_assert_eq(aneshare_weight_memfd("w", blob, len, &mfd), 0);
	cr_assert_eq(ftruncate(mfd, 0), -1, "a sealed memfd cannot shrink");
	aneshare_weight_fd mf = {"@model_path/weights/weight.bin", mfd};
	aneshare_program *p3 = NULL;
	cr_assert_eq(aneshare_program_compile_fds(c2, mil_text(), &mf, 1, &p3, &cached), 0, "%s",
	             aneshare_last_error(c2));
	cr_assert(cached);
	cr_assert_str_eq(aneshare_program_key(p1), aneshare_program_key(p3));
	close(mfd);
	aneshare_program_release(p3);
#endif
	close(fd);
	aneshare_program_release(p1);
	aneshare_program_release(p2);
	aneshare_disconnect(c1);
	aneshare_disconnect(c2);
	free(blob);
}

#ifdef __linux__
/* A sealed memfd is used in place: first compiled from it, the program runs
 * right after the client closed its fd and another client's compile from a
 * plain copy hits the cache. */
Test(wfiles, sealed_memfd_compiled_first)
{
	size_t len;
	uint8_t *blob = make_blob(&len, 0.25f);
	aneshare_conn *c = h_connect(&D, "wf-m");
	int mfd = -1;
	cr_assert_eq(aneshare_weight_memfd(NULL, blob, len, &mfd), 0);
	aneshare_weight_fd mf = {"@model_path/weights/weight.bin", mfd};
	aneshare_program *p = NULL;
	bool cached = true;
	cr_assert_eq(aneshare_program_compile_fds(c, mil_text(), &mf, 1, &p, &cached), 0, "%s", aneshare_last_error(c));
	cr_assert_not(cached);
	close(mfd);
	run_check(c, p, 0.25f);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	free(blob);
}
#endif

/* The attack: a client passes a plain file, then truncates it and rewrites
 * it, repeatedly, while it and another client run the program and compile
 * again.  The daemon uses its own copy: it survives, both clients keep
 * correct results, and a compile of the truncated file is an error, not a
 * crash. */
static void truncation_attack(void)
{
	size_t len;
	uint8_t *blob = make_blob(&len, 0.5f);
	aneshare_conn *bad = h_connect(&D, "wf-attacker"), *good = h_connect(&D, "wf-victim");
	int fd = plain_file("victim.bin", blob, len);
	aneshare_weight_fd wf = {"@model_path/weights/weight.bin", fd};
	aneshare_program *pb = NULL, *pg = NULL;
	cr_assert_eq(aneshare_program_compile_fds(bad, mil_text(), &wf, 1, &pb, NULL), 0, "%s", aneshare_last_error(bad));
	aneshare_weight w = {"@model_path/weights/weight.bin", blob, len};
	cr_assert_eq(aneshare_program_compile(good, mil_text(), &w, 1, &pg, NULL), 0, "%s", aneshare_last_error(good));

	for (int round = 0; round < 3; round++) {
		cr_assert_eq(ftruncate(fd, 0), 0);
		run_check(good, pg, 0.5f);
		run_check(bad, pb, 0.5f);
		/* compiling the truncated file: a compile error (BLOBFILE outside the blob) */
		aneshare_program *px = NULL;
		int r = aneshare_program_compile_fds(bad, mil_text(), &wf, 1, &px, NULL);
		cr_assert_neq(r, 0);
		cr_assert(strstr(aneshare_last_error(bad), "weight blob"), "%s", aneshare_last_error(bad));
		/* garbage of the old size */
		uint8_t *junk = malloc(len);
		memset(junk, 0x5a, len);
		cr_assert_eq(pwrite(fd, junk, len, 0), (ssize_t)len);
		free(junk);
		run_check(good, pg, 0.5f);
		run_check(bad, pb, 0.5f);
	}
	/* the file shrinks between the daemon's hashing and its copy: cannot be
	 * timed from here, but the same path (a short read) ends the compile of
	 * a file that is shorter than fstat said: an fd of a file truncated
	 * while queued behind a slow compile gets an error, never SIGBUS */
	cr_assert_eq(kill(D.pid, 0), 0, "the daemon is alive");
	aneshare_status *st = h_status(good);
	cr_assert_not_null(st);
	aneshare_status_free(st);
	close(fd);
	aneshare_program_release(pb);
	aneshare_program_release(pg);
	aneshare_disconnect(bad);
	aneshare_disconnect(good);
	free(blob);
}

Test(wfiles, truncating_the_file_harms_nobody)
{
	truncation_attack();
}

/* The same through a device worker: the worker maps only the daemon's
 * sealed copy, never the client's file. */
Test(wfiles, truncating_the_file_under_a_worker)
{
	const char *args[] = { "--backend", "cpu", "--worker", NULL };
	h_daemon_kill(&D);
	h_daemon_start_args(&D, args);
	truncation_attack();
}

Test(wfiles, bad_fds_and_paths_are_refused)
{
	aneshare_conn *c = h_connect(&D, "wf-bad");
	aneshare_program *p = NULL;
	int pfd[2];
	cr_assert_eq(pipe(pfd), 0);
	aneshare_weight_fd wf = {"@model_path/weights/weight.bin", pfd[0]};
	cr_assert_eq(aneshare_program_compile_fds(c, mil_text(), &wf, 1, &p, NULL), -ANESHARE_EBAD_FD);
	cr_assert(strstr(aneshare_last_error(c), "not a regular file"), "%s", aneshare_last_error(c));
	close(pfd[0]);
	close(pfd[1]);
	size_t len;
	uint8_t *blob = make_blob(&len, 0.0f);
	int fd = plain_file("w2.bin", blob, len);
	aneshare_weight_fd two[2] = {{"@model_path/weights/weight.bin", fd}, {"@model_path/weights/weight.bin", fd}};
	cr_assert_eq(aneshare_program_compile_fds(c, mil_text(), two, 2, &p, NULL), -ANESHARE_EINVALID_PARAMS);
	cr_assert(strstr(aneshare_last_error(c), "given twice"), "%s", aneshare_last_error(c));
	close(fd);
	aneshare_disconnect(c);
	free(blob);
}

/* After the daemon restarts, the library compiles the program again from
 * the fds it kept. */
Test(wfiles, reconnect_compiles_again_from_the_kept_fd)
{
	size_t len;
	uint8_t *blob = make_blob(&len, 0.75f);
	aneshare_conn *c = h_connect(&D, "wf-rc");
	int fd = plain_file("rc.bin", blob, len);
	aneshare_weight_fd wf = {"@model_path/weights/weight.bin", fd};
	aneshare_program *p = NULL;
	cr_assert_eq(aneshare_program_compile_fds(c, mil_text(), &wf, 1, &p, NULL), 0, "%s", aneshare_last_error(c));
	close(fd);   /* the library keeps its own duplicate */
	char key[65];
	snprintf(key, sizeof key, "%s", aneshare_program_key(p));
	h_daemon_crash(&D);
	h_daemon_restart(&D, true);
	run_check(c, p, 0.75f);
	cr_assert_str_eq(aneshare_program_key(p), key);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	free(blob);
}

/* With a device worker the daemon hands the worker the bytes it read or
 * mapped; the result is the same. */
Test(wfiles, through_a_device_worker)
{
	const char *args[] = { "--backend", "cpu", "--worker", NULL };
	h_daemon_kill(&D);   /* the suite's, without a worker */
	h_daemon_start_args(&D, args);
	size_t len;
	uint8_t *blob = make_blob(&len, 0.125f);
	aneshare_conn *c = h_connect(&D, "wf-worker");
	int fd = plain_file("wk.bin", blob, len);
	aneshare_weight_fd wf = {"@model_path/weights/weight.bin", fd};
	aneshare_program *p = NULL;
	cr_assert_eq(aneshare_program_compile_fds(c, mil_text(), &wf, 1, &p, NULL), 0, "%s", aneshare_last_error(c));
	cr_assert_eq(ftruncate(fd, 0), 0);
	run_check(c, p, 0.125f);
	close(fd);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	free(blob);
}

/* ---- the device worker: weights by fd ---------------------------------------------- */

typedef struct wst {
	int64_t pid;
	uint64_t restarts;
} wst;

static void wst_cb(const msgpack_object *res, void *ud)
{
	wst *w = ud;
	for (uint32_t i = 0; i < res->via.map.size; i++) {
		const msgpack_object_kv *kv = &res->via.map.ptr[i];
		if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 6 &&
		    !memcmp(kv->key.via.str.ptr, "worker", 6) && kv->val.type == MSGPACK_OBJECT_MAP) {
			w->pid = (int64_t)h_map_u64(&kv->val, "pid");
			w->restarts = h_map_u64(&kv->val, "restarts");
		}
	}
}

/* The device worker serving now, per status. */
static wst worker_now(void)
{
	wst w = { 0, 0 };
	int fd = h_raw_open(D.sock);
	static const uint8_t empty_map = 0x80;
	cr_assert_eq(h_raw_request(fd, 9, "status", &empty_map, 1, NULL, 0), 0);
	cr_assert_eq(h_raw_response_cb(fd, 9, 5000, wst_cb, &w), 0);
	close(fd);
	return w;
}

static void start_worker_daemon(const char *fault)
{
	const char *args[] = { "--backend", "cpu", "--worker", fault ? "--worker-fault" : NULL, fault, NULL };
	h_daemon_kill(&D);
	h_daemon_start_args(&D, args);
}

/* y of p for x = 1, 2, ... (the inputs of run_check) into y[OUT] */
static void run_out(aneshare_conn *c, aneshare_program *p, uint16_t *y)
{
	aneshare_surface *in = h_surface(c, IN * 2), *out = h_surface(c, OUT * 2);
	uint16_t *x = aneshare_surface_data(in);
	for (int i = 0; i < IN; i++)
		x[i] = anes_f32_to_f16_soft((float)(i % 5) / 4.0f);
	cr_assert_eq(aneshare_run(p, 0, &in, 1, &out, 1), 0, "%s", aneshare_last_error(c));
	memcpy(y, aneshare_surface_data(out), OUT * 2);
	aneshare_surface_release(in);
	aneshare_surface_release(out);
}

/* A device worker killed after it compiled programs whose weights came as a
 * plain file (the daemon's sealed copy), a sealed memfd and inline bytes:
 * the new worker compiles them again from the fds the daemon kept (the
 * client's file truncated and every client fd closed by then), and they
 * compute what they computed before, bit for bit what an in-process daemon
 * computes.  The daemon's fds are back to where they were at the end. */
Test(wfiles, worker_restores_programs_by_fd)
{
	enum { NP = 3 };
	static const float seeds[NP] = { 0.125f, 0.375f, 0.625f };
	uint16_t ref[NP][OUT], got[NP][OUT];

	/* the reference: the same three programs in process */
	aneshare_conn *ci = h_connect(&D, "wf-inproc");
	for (int k = 0; k < NP; k++) {
		size_t len;
		uint8_t *blob = make_blob(&len, seeds[k]);
		aneshare_weight w = {"@model_path/weights/weight.bin", blob, len};
		aneshare_program *p = NULL;
		cr_assert_eq(aneshare_program_compile(ci, mil_text(), &w, 1, &p, NULL), 0, "%s", aneshare_last_error(ci));
		run_out(ci, p, ref[k]);
		run_check(ci, p, seeds[k]);
		aneshare_program_release(p);
		free(blob);
	}
	aneshare_disconnect(ci);

	start_worker_daemon(NULL);
	aneshare_conn *c = h_connect(&D, "wf-restore");
	/* the base once the daemon has closed every earlier connection (the
	 * harness's probe of the new socket): else it counts one fd that is
	 * gone by the end, and the final count never gets back up to it */
	h_wait_clients(c, 1);
	int base_fds = tu_fd_count(D.pid);
	aneshare_program *p[NP] = { NULL };
	size_t len;
	uint8_t *b0 = make_blob(&len, seeds[0]), *b1 = make_blob(&len, seeds[1]), *b2 = make_blob(&len, seeds[2]);
	int fd = plain_file("restore.bin", b0, len);
	aneshare_weight_fd wf = {"@model_path/weights/weight.bin", fd};
	cr_assert_eq(aneshare_program_compile_fds(c, mil_text(), &wf, 1, &p[0], NULL), 0, "%s", aneshare_last_error(c));
	int mfd = -1;
#ifdef __linux__
	cr_assert_eq(aneshare_weight_memfd("w", b1, len, &mfd), 0);
	aneshare_weight_fd mf = {"@model_path/weights/weight.bin", mfd};
	cr_assert_eq(aneshare_program_compile_fds(c, mil_text(), &mf, 1, &p[1], NULL), 0, "%s", aneshare_last_error(c));
#else
	mfd = plain_file("restore1.bin", b1, len);
	aneshare_weight_fd mf = {"@model_path/weights/weight.bin", mfd};
	cr_assert_eq(aneshare_program_compile_fds(c, mil_text(), &mf, 1, &p[1], NULL), 0, "%s", aneshare_last_error(c));
#endif
	aneshare_weight w2 = {"@model_path/weights/weight.bin", b2, len};
	cr_assert_eq(aneshare_program_compile(c, mil_text(), &w2, 1, &p[2], NULL), 0, "%s", aneshare_last_error(c));
	for (int k = 0; k < NP; k++) {
		run_out(c, p[k], got[k]);
		cr_assert_eq(memcmp(got[k], ref[k], sizeof ref[k]), 0, "program %d: not what the in-process daemon computed", k);
	}
	cr_assert_eq(ftruncate(fd, 0), 0);
	close(fd);
	close(mfd);

	wst w0 = worker_now();
	cr_assert_gt(w0.pid, 0);
	cr_assert_eq(kill((pid_t)w0.pid, SIGKILL), 0);
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	wst w1;
	for (;;) {
		w1 = worker_now();
		if (w1.restarts >= 1 && w1.pid > 0 && w1.pid != w0.pid)
			break;
		cr_assert(tu_now_ms() < deadline, "no new device worker");
		tu_pause_ms(10);
	}
	for (int k = 0; k < NP; k++) {
		memset(got[k], 0, sizeof got[k]);
		run_out(c, p[k], got[k]);
		cr_assert_eq(memcmp(got[k], ref[k], sizeof ref[k]), 0, "program %d after the restart", k);
		run_check(c, p[k], seeds[k]);
	}
	for (int k = 0; k < NP; k++)
		aneshare_program_release(p[k]);
	aneshare_status_free(h_status(c));   /* (the releases are done) */
	/* the daemon closes a program's files once the worker let it go: polled */
	h_wait_daemon_fds(&D, base_fds);
	aneshare_disconnect(c);
	free(b0);
	free(b1);
	free(b2);
}

/* y [1, OUT] = linear(x, W, bias): W and bias from two weight files */
static const char *mil_two_files(void)
{
	static char t[1536];
	snprintf(t, sizeof t,
	         "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, %d]> x) {\n"
	         "        tensor<fp16, [%d, %d]> W = const()[name = string(\"W\"), val = tensor<fp16, [%d, %d]>("
	         "BLOBFILE(path = string(\"@model_path/weights/weight.bin\"), offset = uint64(64)))];\n"
	         "        tensor<fp16, [%d]> bias = const()[name = string(\"bias\"), val = tensor<fp16, [%d]>("
	         "BLOBFILE(path = string(\"@model_path/weights/bias.bin\"), offset = uint64(64)))];\n"
	         "        tensor<fp16, [1, %d]> y = linear(x = x, weight = W, bias = bias)[name = string(\"y\")];\n"
	         "    } -> (y);\n}\n",
	         IN, OUT, IN, OUT, IN, OUT, OUT, OUT);
	return t;
}

/* bias[o] = 1 for every o */
static uint8_t *make_bias(size_t *ret_len)
{
	size_t len = 128 + OUT * 2;
	uint8_t *b = calloc(1, len);
	b[0] = 1;
	b[4] = 2;
	uint32_t magic = 0xDEADBEEFu, dt = 1;
	uint64_t size = OUT * 2, off = 128;
	memcpy(b + 64, &magic, 4);
	memcpy(b + 68, &dt, 4);
	memcpy(b + 72, &size, 8);
	memcpy(b + 80, &off, 8);
	for (int o = 0; o < OUT; o++) {
		uint16_t h = anes_f32_to_f16_soft(1.0f);
		memcpy(b + 128 + 2 * o, &h, 2);
	}
	*ret_len = len;
	return b;
}

/* A worker whose fd table has room for one more file (--worker-fault
 * fd_room=1): a compile with one weight file works; one with two cannot be
 * received whole, and fails with a clear error while the worker goes on
 * (no restart) and the daemon keeps no fd of it; a one-file compile and its
 * runs work afterwards. */
Test(wfiles, worker_with_a_full_fd_table)
{
	start_worker_daemon("fd_room=1");
	aneshare_conn *c = h_connect(&D, "wf-fdfull");
	h_wait_clients(c, 1);   /* the harness's probe has gone (see above) */
	int base_fds = tu_fd_count(D.pid);
	wst w0 = worker_now();
	size_t len, blen;
	uint8_t *blob = make_blob(&len, 0.0f), *bias = make_bias(&blen);
	int fw = plain_file("fw.bin", blob, len), fb = plain_file("fb.bin", bias, blen);

	aneshare_weight_fd one = {"@model_path/weights/weight.bin", fw};
	aneshare_program *p = NULL;
	cr_assert_eq(aneshare_program_compile_fds(c, mil_text(), &one, 1, &p, NULL), 0, "%s", aneshare_last_error(c));
	run_check(c, p, 0.0f);

	aneshare_weight_fd two[2] = {{"@model_path/weights/weight.bin", fw}, {"@model_path/weights/bias.bin", fb}};
	aneshare_program *p2 = NULL;
	int r = aneshare_program_compile_fds(c, mil_two_files(), two, 2, &p2, NULL);
	cr_assert_neq(r, 0);
	cr_assert(strstr(aneshare_last_error(c), "could not be received"), "%s", aneshare_last_error(c));
	wst w1 = worker_now();
	cr_assert_eq(w1.pid, w0.pid, "the worker was not restarted");
	cr_assert_eq(w1.restarts, w0.restarts);

	/* the same program with its two weights inline: one file of the
	 * daemon's, which fits (with three unused blobs, more than fit in a
	 * frame's fds, so that the library sends the bytes rather than a
	 * sealed memfd for each) */
	static const uint8_t pad[3][8] = { { 1 }, { 2 }, { 3 } };
	aneshare_weight inl[5] = {{"@model_path/weights/weight.bin", blob, len}, {"@model_path/weights/bias.bin", bias, blen},
	                          {"@model_path/weights/p1.bin", pad[0], 8}, {"@model_path/weights/p2.bin", pad[1], 8},
	                          {"@model_path/weights/p3.bin", pad[2], 8}};
	cr_assert_eq(aneshare_program_compile(c, mil_two_files(), inl, 5, &p2, NULL), 0, "%s", aneshare_last_error(c));
	uint16_t y0[OUT], y1[OUT];
	run_out(c, p, y0);
	run_out(c, p2, y1);
	for (int o = 0; o < OUT; o++)
		cr_assert_float_eq(anes_f16_to_f32_soft(y1[o]), anes_f16_to_f32_soft(y0[o]) + 1.0f, 2e-2,
		                   "y[%d] with the bias", o);
	run_check(c, p, 0.0f);
	aneshare_program_release(p);
	aneshare_program_release(p2);
	aneshare_status_free(h_status(c));
	cr_assert_eq(tu_fd_count(D.pid), base_fds, "the daemon keeps no fd of the failed compile");
	cr_assert_eq(worker_now().pid, w0.pid);
	close(fw);
	close(fb);
	aneshare_disconnect(c);
	free(blob);
	free(bias);
}

/* ---- how often a compile reads and hashes a file ------------------------------------
 * The test hooks of daemon/state/wfile.c: $ANESHARE_TEST_WFILE_LOG gets a
 * line per pass over a weight file ("read SOURCE BYTES[ copy]"), and
 * $ANESHARE_TEST_WFILE_HOLD stops a pass that copies where a test changes
 * the client's file: before its first read (PATH.start) or after its first
 * chunk (PATH.chunk), announced by PATH.POINT.held. */

typedef struct hooks {
	char dir[64];
	char log[96];
	char hold[96];
} hooks;

static void start_hooked_daemon(hooks *hk, const char *const *args)
{
#if !ANES_TEST_HOOKS
	(void)hk;
	(void)args;
	cr_skip_test("built without -Dtest_hooks=true: no $ANESHARE_TEST_WFILE_LOG or _HOLD");
#else
	snprintf(hk->dir, sizeof hk->dir, "/tmp/anes-wfhooks-XXXXXX");
	cr_assert_not_null(mkdtemp(hk->dir));
	snprintf(hk->log, sizeof hk->log, "%s/log", hk->dir);
	snprintf(hk->hold, sizeof hk->hold, "%s/hold", hk->dir);
	cr_assert_eq(setenv("ANESHARE_TEST_WFILE_LOG", hk->log, 1), 0);
	cr_assert_eq(setenv("ANESHARE_TEST_WFILE_HOLD", hk->hold, 1), 0);
	h_daemon_kill(&D);
	h_daemon_start_args(&D, args);
	unsetenv("ANESHARE_TEST_WFILE_LOG");
	unsetenv("ANESHARE_TEST_WFILE_HOLD");
#endif
}

static void hooks_free(hooks *hk)
{
	static const char *const names[] = { "log", "hold.start", "hold.start.held", "hold.chunk", "hold.chunk.held" };
	char p[128];
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		snprintf(p, sizeof p, "%s/%s", hk->dir, names[i]);
		unlink(p);
	}
	rmdir(hk->dir);
}

/* The passes since the last call are exactly want (a printf format). */
__attribute__((format(printf, 2, 3))) static void expect_passes(hooks *hk, const char *want, ...)
{
	char w[256], got[256] = "";
	va_list ap;
	va_start(ap, want);
	vsnprintf(w, sizeof w, want, ap);
	va_end(ap);
	int fd = open(hk->log, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, got, sizeof got - 1);
		got[n > 0 ? n : 0] = '\0';
		close(fd);
	}
	cr_assert_eq(truncate(hk->log, 0) == 0 || errno == ENOENT, true);
	cr_assert_str_eq(got, w, "the daemon's passes over the weight files:\n%s\nwanted:\n%s", got, w);
}

static void hold_arm(hooks *hk, const char *point)
{
	char p[128];
	snprintf(p, sizeof p, "%s.%s", hk->hold, point);
	int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	close(fd);
}

/* Wait (bounded) until the daemon stopped at point. */
static void hold_wait(hooks *hk, const char *point)
{
	char p[128];
	snprintf(p, sizeof p, "%s.%s.held", hk->hold, point);
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	while (access(p, F_OK) != 0) {
		cr_assert(tu_now_ms() < deadline, "the daemon never stopped at %s", point);
		tu_pause_ms(5);
	}
}

static void hold_release(hooks *hk, const char *point)
{
	char p[128];
	snprintf(p, sizeof p, "%s.%s", hk->hold, point);
	cr_assert_eq(unlink(p), 0);
}

/* A compile on a thread of its own (on a connection nothing else uses), so
 * that the test changes the file while the daemon is stopped in it. */
typedef struct bg_compile {
	aneshare_conn *c;
	const char *mil;
	aneshare_weight_fd wf;
	aneshare_program *p;
	bool cached;
	int rc;
	char err[256];
	char key[65];
	pthread_t t;
} bg_compile;

static void *bg_main(void *arg)
{
	bg_compile *b = arg;
	b->rc = aneshare_program_compile_fds(b->c, b->mil, &b->wf, 1, &b->p, &b->cached);
	snprintf(b->err, sizeof b->err, "%s", b->rc < 0 ? aneshare_last_error(b->c) : "");
	snprintf(b->key, sizeof b->key, "%s", b->rc == 0 ? aneshare_program_key(b->p) : "");
	return NULL;
}

static void bg_start(bg_compile *b, aneshare_conn *c, const char *mil, int fd)
{
	*b = (bg_compile){ .c = c, .mil = mil, .wf = { LB_WPATH, fd }, .rc = 1 };
	cr_assert_eq(pthread_create(&b->t, NULL, bg_main, b), 0);
}

static void bg_join(bg_compile *b)
{
	cr_assert_eq(pthread_join(b->t, NULL), 0);
}

static aneshare_program *compile_fd(aneshare_conn *c, const char *mil, int fd, bool want_cached)
{
	aneshare_weight_fd wf = { LB_WPATH, fd };
	aneshare_program *p = NULL;
	bool cached = !want_cached;
	cr_assert_eq(aneshare_program_compile_fds(c, mil, &wf, 1, &p, &cached), 0, "%s", aneshare_last_error(c));
	cr_assert_eq(cached, want_cached, "cached: %d", cached);
	return p;
}

static const struct aneshare_status_total *total_of(const aneshare_status *st, const char *res)
{
	for (uint32_t i = 0; i < st->n_totals; i++)
		if (!strcmp(st->total_list[i].resource, res))
			return &st->total_list[i];
	cr_assert_fail("status has no total %s", res);
	return NULL;
}

/* Each compile's passes over its file: a plain file nothing cached can
 * share is read once, hashed and copied in that one pass; a cache hit
 * reads and hashes it once and copies nothing; a sealed memfd is read once
 * (hit or not) and never copied; a plain file whose program may be cached
 * (one of the same MIL and sizes is) is hashed for the lookup and, missed,
 * copied in a pass that hashes the copy's bytes.  Every program computes
 * its own weights. */
static void passes_per_compile(const char *const *args)
{
	hooks hk;
	start_hooked_daemon(&hk, args);
	aneshare_conn *c = h_connect(&D, "wf-passes");
	size_t len;
	uint8_t *a = make_blob(&len, 0.0f), *b = make_blob(&len, 0.25f), *d = make_blob(&len, 0.5f);

	int fa = plain_file("a.bin", a, len);
	aneshare_program *pa = compile_fd(c, mil_text(), fa, false);
	expect_passes(&hk, "read file %zu copy\n", len);
	run_check(c, pa, 0.0f);

	int fa2 = plain_file("a2.bin", a, len);
	aneshare_program *pa2 = compile_fd(c, mil_text(), fa2, true);
	expect_passes(&hk, "read file %zu\n", len);
	cr_assert_str_eq(aneshare_program_key(pa2), aneshare_program_key(pa));
	run_check(c, pa2, 0.0f);

#ifdef __linux__
	int mfd = -1;
	cr_assert_eq(aneshare_weight_memfd("w", b, len, &mfd), 0);
	aneshare_program *pb = compile_fd(c, mil_text(), mfd, false);
	expect_passes(&hk, "read sealed %zu\n", len);
	run_check(c, pb, 0.25f);
	aneshare_program *pb2 = compile_fd(c, mil_text(), mfd, true);
	expect_passes(&hk, "read sealed %zu\n", len);
	cr_assert_str_eq(aneshare_program_key(pb2), aneshare_program_key(pb));
	close(mfd);
	aneshare_program_release(pb);
	aneshare_program_release(pb2);
#endif

	int fd = plain_file("d.bin", d, len);
	aneshare_program *pd = compile_fd(c, mil_text(), fd, false);
	expect_passes(&hk, "read file %zu\nread file %zu copy\n", len, len);
	run_check(c, pd, 0.5f);

	/* once the programs of that shape are gone, a first compile is one pass again */
	aneshare_program_release(pa);
	aneshare_program_release(pa2);
	aneshare_program_release(pd);
	h_wait_counts(c, 0, 0);
	aneshare_program *pa3 = compile_fd(c, mil_text(), fa, false);
	expect_passes(&hk, "read file %zu copy\n", len);
	run_check(c, pa3, 0.0f);
	aneshare_program_release(pa3);

	close(fa);
	close(fa2);
	close(fd);
	aneshare_disconnect(c);
	hooks_free(&hk);
	free(a);
	free(b);
	free(d);
}

Test(wfiles, a_first_compile_reads_and_hashes_each_file_once)
{
	passes_per_compile(NULL);
}

Test(wfiles, a_first_compile_reads_and_hashes_each_file_once_with_a_worker)
{
	const char *args[] = { "--backend", "cpu", "--worker", NULL };
	passes_per_compile(args);
}

/* Cache poisoning, injected: a program of the same shape is cached, so the
 * daemon hashes the client's file B for the lookup alone; it misses, and
 * before the copy starts the client writes A's bytes into the file.  Were
 * the copy used, the entry under B's key would compute A for every client
 * that compiles B.  The compile fails instead, no entry is left under B's
 * key, and B compiled afterwards computes B. */
Test(wfiles, a_file_changed_after_its_key_fails_the_compile)
{
	hooks hk;
	start_hooked_daemon(&hk, NULL);
	aneshare_conn *c = h_connect(&D, "wf-poison"), *cb = h_connect(&D, "wf-poison-bg");
	size_t len;
	uint8_t *a = make_blob(&len, 0.0f), *b = make_blob(&len, 0.75f);
	int fa = plain_file("a.bin", a, len), fb = plain_file("b.bin", b, len);
	aneshare_program *pa = compile_fd(c, mil_text(), fa, false);
	expect_passes(&hk, "read file %zu copy\n", len);

	hold_arm(&hk, "start");
	bg_compile bg;
	bg_start(&bg, cb, mil_text(), fb);
	hold_wait(&hk, "start");
	cr_assert_eq(pwrite(fb, a, len, 0), (ssize_t)len);
	hold_release(&hk, "start");
	bg_join(&bg);
	cr_assert_eq(bg.rc, -ANESHARE_ECOMPILE, "%d %s", bg.rc, bg.err);
	cr_assert(strstr(bg.err, "changed while it was being compiled"), "%s", bg.err);
	expect_passes(&hk, "read file %zu\nread file %zu copy\n", len, len);

	aneshare_status *st = h_status(c);
	cr_assert_eq(st->programs, 1, "only A's entry");
	cr_assert_str_eq(st->program_list[0].key, aneshare_program_key(pa));
	aneshare_status_free(st);

	/* B's bytes, from another file: compiled afresh, they compute B */
	int fb2 = plain_file("b2.bin", b, len);
	aneshare_program *pb = compile_fd(c, mil_text(), fb2, false);
	run_check(c, pb, 0.75f);
	cr_assert_str_neq(aneshare_program_key(pb), aneshare_program_key(pa));
	/* the changed file holds A now: A's program */
	aneshare_program *pa2 = compile_fd(c, mil_text(), fb, true);
	cr_assert_str_eq(aneshare_program_key(pa2), aneshare_program_key(pa));
	run_check(c, pa2, 0.0f);

	aneshare_program_release(pa);
	aneshare_program_release(pa2);
	aneshare_program_release(pb);
	close(fa);
	close(fb);
	close(fb2);
	aneshare_disconnect(cb);
	aneshare_disconnect(c);
	hooks_free(&hk);
	free(a);
	free(b);
}

enum { BIG_OUT = 16384 };   /* W of 2 MiB: a file of more than one chunk (1 MiB) */

/* y of p (the linear program, OUT = BIG_OUT) for x = (i % 5) / 4 */
static void run_big(aneshare_conn *c, aneshare_program *p, uint16_t *y)
{
	aneshare_surface *in = h_surface(c, IN * 2), *out = h_surface(c, (size_t)BIG_OUT * 2);
	uint16_t *x = aneshare_surface_data(in);
	for (int i = 0; i < IN; i++)
		x[i] = anes_f32_to_f16_soft((float)(i % 5) / 4.0f);
	cr_assert_eq(aneshare_run(p, 0, &in, 1, &out, 1), 0, "%s", aneshare_last_error(c));
	memcpy(y, aneshare_surface_data(out), (size_t)BIG_OUT * 2);
	aneshare_surface_release(in);
	aneshare_surface_release(out);
}

/* whether y[o] is row o of W of the given seed times x */
static bool row_is(const uint16_t *y, int o, float seed)
{
	double ref = 0;
	for (int i = 0; i < IN; i++)
		ref += anes_f16_to_f32_soft(anes_f32_to_f16_soft(lb_wval(o, i, seed))) * ((double)(i % 5) / 4.0);
	return fabs(anes_f16_to_f32_soft(y[o]) - ref) <= 2e-3 * fmax(1.0, fabs(ref));
}

/* In the pass that hashes and copies a file, the client rewrites it after
 * the first chunk: the copy holds A's first chunk and B's rest, and the
 * program's key is the key of exactly those bytes (the same bytes sent
 * inline are a cache hit on it), which is what it computes. */
Test(wfiles, a_file_changed_while_it_is_copied_gets_the_key_of_the_copy)
{
	hooks hk;
	start_hooked_daemon(&hk, NULL);
	aneshare_conn *c = h_connect(&D, "wf-mix"), *cb = h_connect(&D, "wf-mix-bg");
	char mil[1024];
	lb_mil(mil, sizeof mil, IN, BIG_OUT);
	size_t len;
	uint8_t *a = h_linear_blob(IN, BIG_OUT, 0.0f, &len), *b = h_linear_blob(IN, BIG_OUT, 0.5f, &len);
	int fd = plain_file("mix.bin", a, len);

	hold_arm(&hk, "chunk");
	bg_compile bg;
	bg_start(&bg, cb, mil, fd);
	hold_wait(&hk, "chunk");
	cr_assert_eq(pwrite(fd, b, len, 0), (ssize_t)len);
	hold_release(&hk, "chunk");
	bg_join(&bg);
	cr_assert_eq(bg.rc, 0, "%s", bg.err);
	cr_assert_not(bg.cached);
	expect_passes(&hk, "read file %zu copy\n", len);

	/* rows 0..k-1 are A's, the rest B's, with 0 < k < BIG_OUT */
	uint16_t *y = malloc((size_t)BIG_OUT * 2);
	run_big(cb, bg.p, y);
	int k = 0;
	while (k < BIG_OUT && row_is(y, k, 0.0f))
		k++;
	cr_assert(k > 0 && k < BIG_OUT, "rows of A: %d", k);
	for (int o = k; o < BIG_OUT; o++)
		cr_assert(row_is(y, o, 0.5f), "y[%d] is neither A's (rows before %d) nor B's", o, k);

	size_t split = 128 + (size_t)k * IN * 2;
	uint8_t *mix = malloc(len);
	memcpy(mix, a, split);
	memcpy(mix + split, b + split, len - split);
	aneshare_weight w = { LB_WPATH, mix, len };
	aneshare_program *pm = NULL;
	bool cached = false;
	cr_assert_eq(aneshare_program_compile(c, mil, &w, 1, &pm, &cached), 0, "%s", aneshare_last_error(c));
	cr_assert(cached, "the copy's bytes, inline: a cache hit");
	cr_assert_str_eq(aneshare_program_key(pm), bg.key);

	aneshare_program_release(pm);
	aneshare_program_release(bg.p);
	close(fd);
	aneshare_disconnect(cb);
	aneshare_disconnect(c);
	hooks_free(&hk);
	free(y);
	free(mix);
	free(a);
	free(b);
}

/* A compile copies its file while it hashes it (nothing of its shape is
 * cached), and meanwhile another client compiles the same program: the
 * lookup hits, and the copy is dropped with its program memory and its fd. */
Test(wfiles, a_copy_made_for_a_program_compiled_meanwhile_is_dropped)
{
	const char *args[] = { "--backend", "cpu", "--workers", "4", NULL };
	hooks hk;
	start_hooked_daemon(&hk, args);
	aneshare_conn *c = h_connect(&D, "wf-drop"), *cb = h_connect(&D, "wf-drop-bg");
	h_wait_clients(c, 2);
	int base_fds = tu_fd_count(D.pid);
	size_t len;
	uint8_t *a = make_blob(&len, 0.25f);
	int fd = plain_file("drop.bin", a, len);

	hold_arm(&hk, "chunk");
	bg_compile bg;
	bg_start(&bg, cb, mil_text(), fd);
	hold_wait(&hk, "chunk");
	aneshare_weight w = { LB_WPATH, a, len };
	aneshare_program *p = NULL;
	bool cached = true;
	cr_assert_eq(aneshare_program_compile(c, mil_text(), &w, 1, &p, &cached), 0, "%s", aneshare_last_error(c));
	cr_assert_not(cached);
	aneshare_status *st = h_status(c);
	uint64_t held = total_of(st, "program_bytes")->used;
	aneshare_status_free(st);
	hold_release(&hk, "chunk");
	bg_join(&bg);
	cr_assert_eq(bg.rc, 0, "%s", bg.err);
	cr_assert(bg.cached);
	cr_assert_str_eq(bg.key, aneshare_program_key(p));
	run_check(cb, bg.p, 0.25f);

	st = h_status(c);
	cr_assert_eq(st->programs, 1);
	uint64_t after = total_of(st, "program_bytes")->used;
	aneshare_status_free(st);
	cr_assert_geq(held - after, (uint64_t)len, "the copy's charge (%zu B) went with it: %llu -> %llu", len,
	              (unsigned long long)held, (unsigned long long)after);
	aneshare_program_release(p);
	aneshare_program_release(bg.p);
	h_wait_counts(c, 0, 0);
	st = h_status(c);
	cr_assert_eq(total_of(st, "program_bytes")->used, 0);
	aneshare_status_free(st);
	h_wait_daemon_fds(&D, base_fds);
	close(fd);
	aneshare_disconnect(cb);
	aneshare_disconnect(c);
	hooks_free(&hk);
	free(a);
}

/* Empty weights with a device worker: an empty plain file passed by fd
 * (neither copied nor mapped: the worker gets it as an empty place in the
 * proxy's own file, which holds nothing else) and an empty inline weight
 * next to bytes inline (the same file, with the bytes).  Both programs
 * compile and compute their weights. */
Test(wfiles, empty_weights_reach_a_worker)
{
	start_worker_daemon(NULL);
	aneshare_conn *c = h_connect(&D, "wf-empty");
	size_t len;
	uint8_t *a = make_blob(&len, 0.0f), *b = make_blob(&len, 0.25f);
	int fa = plain_file("a.bin", a, len), fe = plain_file("e.bin", a, 0);
	aneshare_weight_fd wf[2] = { { LB_WPATH, fa }, { "@model_path/weights/empty.bin", fe } };
	aneshare_program *p = NULL;
	cr_assert_eq(aneshare_program_compile_fds(c, mil_text(), wf, 2, &p, NULL), 0, "%s", aneshare_last_error(c));
	run_check(c, p, 0.0f);
	/* five weights: more than fit as fds, so the library sends the bytes */
	static const uint8_t pad[3][8] = { { 1 }, { 2 }, { 3 } };
	aneshare_weight w[5] = { { LB_WPATH, b, len }, { "@model_path/weights/empty.bin", b, 0 },
	                         { "@model_path/weights/p1.bin", pad[0], 8 }, { "@model_path/weights/p2.bin", pad[1], 8 },
	                         { "@model_path/weights/p3.bin", pad[2], 8 } };
	aneshare_program *q = NULL;
	cr_assert_eq(aneshare_program_compile(c, mil_text(), w, 5, &q, NULL), 0, "%s", aneshare_last_error(c));
	run_check(c, q, 0.25f);
	aneshare_program_release(p);
	aneshare_program_release(q);
	close(fa);
	close(fe);
	aneshare_disconnect(c);
	free(a);
	free(b);
}
