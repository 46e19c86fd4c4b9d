/* SPDX-License-Identifier: MIT */
/*
 * aneshare_program_compile's inline weights on Linux: the library puts them
 * in sealed memfds and compiles them by fd (weight_fds), keeping only those
 * memfds to compile again after a reconnect.  No weight byte crosses the
 * socket (this process's sendmsg is counted), the daemon maps the memfds in
 * place (its /proc/PID/maps), the key is the one of the same program sent
 * inline by a raw client (a cache hit), and with more weights than the
 * daemon takes fds in a frame the library falls back to the inline bytes.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <msgpack.h>

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

TestSuite(inline_weights, .init = setup, .fini = teardown, .timeout = 60);

#ifdef __linux__

/* ---- this process's sendmsg, counted while asked -------------------------------- */

static volatile int g_counting;
static size_t g_sent;

__attribute__((visibility("default"))) ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	static ssize_t (*real)(int, const struct msghdr *, int);
	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "sendmsg");
	ssize_t n = real(fd, msg, flags);
	if (g_counting && n > 0) {   /* only what goes to the daemon's socket */
		struct sockaddr_un sa;
		socklen_t sl = sizeof sa;
		if (getpeername(fd, (struct sockaddr *)&sa, &sl) == 0 && sa.sun_family == AF_UNIX &&
		    strncmp(sa.sun_path, D.sock, sizeof sa.sun_path) == 0)
			g_sent += (size_t)n;
	}
	return n;
}

/* ---- the program: y [1, OUT] = linear(x [1, IN], W [OUT, IN]) ------------------ */

enum { IN = 64, OUT = 2048 };   /* W: 256 KiB of fp16 */
#define WPATH LB_WPATH

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

/* run p on x and check y against an fp64 sum over the fp16 weights */
static void run_check(aneshare_conn *c, aneshare_program *p, float seed)
{
	h_linear_check(c, p, IN, OUT, seed);
}

/* fds of this process that are the library's memfds of inline weights */
static int count_weight_memfds(void)
{
	DIR *d = opendir("/proc/self/fd");
	cr_assert_not_null(d);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		char path[300], link[256];
		snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
		ssize_t k = readlink(path, link, sizeof link - 1);
		if (k <= 0)
			continue;
		link[k] = '\0';
		n += strncmp(link, "/memfd:aneshare-inline-weight", 29) == 0;
	}
	closedir(d);
	return n;
}

/* the daemon maps one of those memfds itself (in place, not a copy) */
static bool daemon_maps_weight_memfd(void)
{
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/%d/maps", (int)D.pid);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f);
	bool found = false;
	while (!found && fgets(line, sizeof line, f))
		found = strstr(line, "/memfd:aneshare-inline-weight") != NULL;
	fclose(f);
	return found;
}

/* aneshare_program_compile with this process's sendmsg bytes counted */
static int compile_counted(aneshare_conn *c, const aneshare_weight *w, size_t n, aneshare_program **ret,
                           bool *cached, size_t *ret_sent)
{
	g_sent = 0;
	g_counting = 1;
	int r = aneshare_program_compile(c, mil_text(), w, n, ret, cached);
	g_counting = 0;
	*ret_sent = g_sent;
	return r;
}

Test(inline_weights, compile_sends_no_weight_bytes_and_the_daemon_maps_the_memfd)
{
	int fds0 = h_count_fds();
	size_t len;
	uint8_t *blob = make_blob(&len, 0.0f);
	aneshare_conn *c = h_connect(&D, "iw-1");
	int fds1 = h_count_fds();
	aneshare_weight w = { WPATH, blob, len };
	aneshare_program *p = NULL;
	bool cached = true;
	size_t sent;
	cr_assert_eq(compile_counted(c, &w, 1, &p, &cached, &sent), 0, "%s", aneshare_last_error(c));
	cr_assert_not(cached);
	size_t mil = strlen(mil_text());
	cr_assert_lt(sent, mil + 4096, "the compile sent %zu bytes for %zu of MIL and %zu of weights", sent, mil, len);
	cr_assert_eq(count_weight_memfds(), 1, "the library keeps the weights in one memfd");
	cr_assert_eq(h_count_fds(), fds1 + 1);
	cr_assert(daemon_maps_weight_memfd(), "the daemon maps the library's memfd in place");
	memset(blob, 0x5a, len);   /* the library keeps no reference to the caller's bytes */
	run_check(c, p, 0.0f);
	cr_assert_eq(aneshare_program_release(p), 0);
	cr_assert_eq(count_weight_memfds(), 0);
	cr_assert_eq(h_count_fds(), fds1);
	aneshare_disconnect(c);
	cr_assert_eq(h_count_fds(), fds0);
	free(blob);
}

/* ---- a raw client sends the same program inline, by bytes ----------------------- */

typedef struct key_res {
	char key[65];
	bool cached;
} key_res;

static void key_cb(const msgpack_object *res, void *ud)
{
	key_res *k = ud;
	const char *s;
	uint32_t n;
	if (anes_mp_str(res, "key", 64, &s, &n) == 0 && n == 64) {
		memcpy(k->key, s, 64);
		k->key[64] = '\0';
	}
	(void)anes_mp_bool(res, "cached", &k->cached);
}

/* The connection stays open (the daemon frees a program with its last
 * handle): *ret_fd is the caller's to close. */
static key_res raw_compile_inline(const void *blob, size_t len, int *ret_fd)
{
	int fd = h_raw_open(D.sock);
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	msgpack_packer pk;
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	anes_pack_str(&pk, "mil");
	anes_pack_str(&pk, mil_text());
	anes_pack_str(&pk, "weights");
	msgpack_pack_map(&pk, 1);
	anes_pack_str(&pk, WPATH);
	msgpack_pack_bin(&pk, (uint32_t)len);
	msgpack_pack_bin_body(&pk, blob, len);
	cr_assert_eq(h_raw_request(fd, 7, "program.compile", sb.data, sb.size, NULL, 0), 0);
	msgpack_sbuffer_destroy(&sb);
	key_res k = { .key = "" };
	cr_assert_eq(h_raw_response_cb(fd, 7, 10000, key_cb, &k), 0);
	cr_assert_eq(strlen(k.key), 64);
	*ret_fd = fd;
	return k;
}

Test(inline_weights, same_key_as_inline_bytes_from_a_raw_client)
{
	size_t len;
	uint8_t *blob = make_blob(&len, 0.25f);
	int raw_fd;
	key_res raw = raw_compile_inline(blob, len, &raw_fd);
	cr_assert_not(raw.cached);
	aneshare_conn *c = h_connect(&D, "iw-key");
	aneshare_weight w = { WPATH, blob, len };
	aneshare_program *p = NULL;
	bool cached = false;
	size_t sent;
	cr_assert_eq(compile_counted(c, &w, 1, &p, &cached, &sent), 0, "%s", aneshare_last_error(c));
	cr_assert_lt(sent, strlen(mil_text()) + 4096);
	cr_assert(cached, "the daemon keys by content: the raw client's program is a cache hit");
	cr_assert_str_eq(aneshare_program_key(p), raw.key);
	run_check(c, p, 0.25f);
	aneshare_program_release(p);
	aneshare_disconnect(c);
	close(raw_fd);
	free(blob);
}

/* A daemon restart: the library compiles the program again from its
 * memfds (the caller's bytes are gone), with the same key. */
Test(inline_weights, restart_replays_the_compile_from_the_memfds)
{
	int fds0 = h_count_fds();
	size_t len;
	uint8_t *blob = make_blob(&len, 0.5f);
	aneshare_conn *c = h_connect(&D, "iw-rc");
	int fds1 = h_count_fds();
	aneshare_weight w = { WPATH, blob, len };
	aneshare_program *p = NULL;
	cr_assert_eq(aneshare_program_compile(c, mil_text(), &w, 1, &p, NULL), 0, "%s", aneshare_last_error(c));
	free(blob);
	char key[65];
	snprintf(key, sizeof key, "%s", aneshare_program_key(p));
	h_daemon_crash(&D);
	h_daemon_restart(&D, true);
	g_sent = 0;
	g_counting = 1;
	run_check(c, p, 0.5f);   /* reconnects, compiles again, runs */
	g_counting = 0;
	cr_assert_lt(g_sent, strlen(mil_text()) + 4096 + 4096, "the replay sent %zu bytes", g_sent);
	cr_assert(daemon_maps_weight_memfd(), "the new daemon maps the same memfd");
	cr_assert_str_eq(aneshare_program_key(p), key);
	aneshare_status *st = h_status(c);
	cr_assert_eq(st->programs, 1);
	aneshare_status_free(st);
	cr_assert_eq(count_weight_memfds(), 1);
	aneshare_program_release(p);
	cr_assert_eq(count_weight_memfds(), 0);
	cr_assert_eq(h_count_fds(), fds1, "only the connection's socket is open (it was replaced)");
	aneshare_disconnect(c);
	cr_assert_eq(h_count_fds(), fds0);
}

/* More non-empty weights than max_fds_per_frame (4): the library keeps a
 * copy and sends the bytes inline, as before; the key is the same as for a
 * raw inline compile, and a restart replays the bytes.  Empty weights never
 * take an fd. */
Test(inline_weights, more_weights_than_fds_per_frame_go_inline)
{
	int fds0 = h_count_fds();
	size_t len;
	uint8_t *blob = make_blob(&len, 0.125f);
	static const uint8_t small[4][64] = { { 1 }, { 2 }, { 3 }, { 4 } };
	aneshare_weight w[6] = {
		{ WPATH, blob, len },
		{ "@model_path/weights/a.bin", small[0], 64 },
		{ "@model_path/weights/b.bin", small[1], 64 },
		{ "@model_path/weights/c.bin", small[2], 64 },
		{ "@model_path/weights/empty.bin", NULL, 0 },
		{ "@model_path/weights/d.bin", small[3], 64 },
	};
	aneshare_conn *c = h_connect(&D, "iw-many");
	int fds1 = h_count_fds();
	aneshare_program *p = NULL;
	bool cached = true;
	size_t sent;
	cr_assert_eq(compile_counted(c, w, 6, &p, &cached, &sent), 0, "%s", aneshare_last_error(c));
	cr_assert_not(cached);
	cr_assert_gt(sent, len, "5 blobs for 4 fds: the bytes go inline (%zu sent)", sent);
	cr_assert_eq(count_weight_memfds(), 0);
	cr_assert_eq(h_count_fds(), fds1);
	run_check(c, p, 0.125f);
	char key[65];
	snprintf(key, sizeof key, "%s", aneshare_program_key(p));

	/* the first five: four by memfd (the empty one stays inline), another
	 * key, the same numbers */
	aneshare_program *p4 = NULL;
	cr_assert_eq(compile_counted(c, w, 5, &p4, &cached, &sent), 0, "%s", aneshare_last_error(c));
	cr_assert_not(cached);
	cr_assert_lt(sent, strlen(mil_text()) + 4096);
	cr_assert_eq(count_weight_memfds(), 4);
	cr_assert_str_neq(aneshare_program_key(p4), key);
	run_check(c, p4, 0.125f);
	aneshare_program_release(p4);
	cr_assert_eq(count_weight_memfds(), 0);

	h_daemon_crash(&D);
	h_daemon_restart(&D, true);
	run_check(c, p, 0.125f);
	cr_assert_str_eq(aneshare_program_key(p), key);
	aneshare_program_release(p);
	cr_assert_eq(h_count_fds(), fds1);
	aneshare_disconnect(c);
	cr_assert_eq(h_count_fds(), fds0);
	free(blob);
}

/* Failures close every memfd made and leave the out-parameters alone. */
Test(inline_weights, failures_leak_no_fd)
{
	size_t len;
	uint8_t *blob = make_blob(&len, 0.0f);
	aneshare_conn *c = h_connect(&D, "iw-fail");
	int fds1 = h_count_fds();
	aneshare_weight w[2] = { { WPATH, blob, len }, { "@model_path/weights/x.bin", blob, 64 } };
	aneshare_program *p = (aneshare_program *)&p;   /* must stay as it is */
	bool cached = true;
	/* a compile error, after both memfds were made and sent */
	cr_assert_lt(aneshare_program_compile(c, "program(1.3)\n{ nonsense", w, 2, &p, &cached), 0);
	cr_assert_eq(p, (aneshare_program *)&p);
	cr_assert(cached);
	cr_assert_eq(count_weight_memfds(), 0);
	cr_assert_eq(h_count_fds(), fds1);
	/* the same path given twice: refused by the daemon */
	aneshare_weight twice[2] = { { WPATH, blob, len }, { WPATH, blob, len } };
	cr_assert_lt(aneshare_program_compile(c, mil_text(), twice, 2, &p, &cached), 0);
	cr_assert_eq(p, (aneshare_program *)&p);
	cr_assert_eq(h_count_fds(), fds1);
	cr_assert(cached);
	/* room for one more fd only: the second memfd fails with EMFILE, the
	 * first is closed, nothing is sent */
	int lowest = dup(0);
	cr_assert_geq(lowest, 0);
	close(lowest);
	struct rlimit rl0, rl;
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl0), 0);
	rl = rl0;
	rl.rlim_cur = (rlim_t)lowest + 1;
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	int r = aneshare_program_compile(c, mil_text(), w, 2, &p, &cached);
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl0), 0);
	cr_assert_eq(r, -EMFILE, "%d: %s", r, aneshare_last_error(c));
	cr_assert(strstr(aneshare_last_error(c), "sealed memfd"), "%s", aneshare_last_error(c));
	cr_assert_eq(p, (aneshare_program *)&p);
	cr_assert(cached);
	cr_assert_eq(h_count_fds(), fds1);
	aneshare_status *st = h_status(c);
	cr_assert_eq(st->programs, 0);
	aneshare_status_free(st);
	aneshare_disconnect(c);
	free(blob);
}

#else

Test(inline_weights, macos_keeps_the_inline_path)
{
	cr_skip_test("sealed memfds are Linux's: elsewhere the weights go inline (tests/test_daemon.c)");
}

#endif
