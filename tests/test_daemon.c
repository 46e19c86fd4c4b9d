/* SPDX-License-Identifier: MIT */
/*
 * Integration tests: each test starts a real aneshared ($ANESHARED) on its
 * own socket in a fresh directory, talks to it through libaneshare (and raw
 * frames where the library would refuse), and stops it with SIGTERM,
 * expecting a clean exit.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "anes_proto.h"
#include "aneshare.h"
#include "daemon_harness.h"

static h_daemon D;

static void setup(void)
{
	h_daemon_start(&D);
}

static void teardown(void)
{
	h_daemon_kill(&D);   /* only if the test did not stop it */
}

TestSuite(daemon, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers ---------------------------------------------------------------- */

static char *mm_text(void)
{
	return h_read_source("examples/dynamic_matmul.mil");
}

static uint32_t count_surfaces(aneshare_conn *c)
{
	aneshare_status *st = h_status(c);
	uint32_t n = st->surfaces;
	aneshare_status_free(st);
	return n;
}

/* A msgpack map {key: v}, or {} when key is NULL. */
typedef struct params {
	msgpack_sbuffer sb;
} params;

static params *params_u32(const char *key, uint32_t v)
{
	params *p = calloc(1, sizeof *p);
	cr_assert_not_null(p);
	msgpack_packer pk;
	msgpack_sbuffer_init(&p->sb);
	msgpack_packer_init(&pk, &p->sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, key ? 1 : 0);
	if (key) {
		msgpack_pack_str(&pk, strlen(key));
		msgpack_pack_str_body(&pk, key, strlen(key));
		msgpack_pack_uint32(&pk, v);
	}
	return p;
}

/* A memfd of size bytes with these seals (none, or SEAL_SHRINK and maybe SEAL_GROW).
 * memfds are Linux's: elsewhere the calling test skips here. */
enum { SEAL_SHRINK = 1, SEAL_GROW = 2 };
static int sealed_memfd(size_t size, unsigned seals)
{
#ifdef __linux__
	int fd = memfd_create("anes-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	cr_assert_geq(fd, 0, "memfd_create: %s", strerror(errno));
	cr_assert_eq(ftruncate(fd, (off_t)size), 0);
	unsigned s = (seals & SEAL_SHRINK ? F_SEAL_SHRINK : 0) | (seals & SEAL_GROW ? F_SEAL_GROW : 0);
	if (s)
		cr_assert_eq(fcntl(fd, F_ADD_SEALS, s), 0);
	return fd;
#else
	(void)size, (void)seals;
	cr_skip_test("memfds are Linux's (surfaces are IOSurfaces here: test_iosurface)");
#endif
}

/* ---- connection ------------------------------------------------------------------ */

Test(daemon, hello_limits)
{
	aneshare_conn *c = h_connect(&D, "test-hello");
	const aneshare_server_info *si = aneshare_server(c);
	cr_assert_eq(si->protocol, 1);
	cr_assert(si->server_version && *si->server_version);
	cr_assert(!strcmp(si->backend, "cpu") || !strcmp(si->backend, "ane"), "backend %s",
	          si->backend);
	cr_assert_geq(si->max_frame, ANES_FRAME_MAX_LOWEST);
	cr_assert_gt(si->max_surface_bytes, 0);
	cr_assert_gt(si->max_surfaces, 0);
	cr_assert_gt(si->max_programs, 0);
	cr_assert_gt(si->max_inflight, 0);
	cr_assert_str_empty(aneshare_last_error(c));

	h_wait_clients(c, 1);   /* the harness's probe connection may still be closing */
	aneshare_status *st = h_status(c);
	cr_assert_str_eq(st->server_version, si->server_version);
	cr_assert_str_eq(st->backend, si->backend);
	cr_assert_eq(st->clients, 1);
	cr_assert_eq(st->surfaces, 0);
	cr_assert_eq(st->programs, 0);
	aneshare_status_free(st);

	aneshare_conn *c2 = h_connect(&D, NULL);
	st = h_status(c2);
	cr_assert_eq(st->clients, 2);
	aneshare_status_free(st);
	aneshare_disconnect(c2);

	/* Nobody listens there. */
	char path[256];
	snprintf(path, sizeof path, "%s/nothing.sock", D.dir);
	aneshare_conn *c3 = NULL;
	int r = aneshare_connect(path, "x", &c3);
	cr_assert_eq(r, -ENOENT, "%s", aneshare_strerror(r));
	cr_assert_null(c3);

	/* The default path honours $ANESHARE_SOCKET. */
	setenv("ANESHARE_SOCKET", D.sock, 1);
	char buf[256];
	cr_assert_eq(aneshare_default_socket_path(buf, sizeof buf), (int)strlen(D.sock));
	cr_assert_str_eq(buf, D.sock);
	cr_assert_eq(aneshare_default_socket_path(buf, 4), -ENAMETOOLONG);
	r = aneshare_connect(NULL, NULL, &c3);
	cr_assert_eq(r, 0);
	aneshare_disconnect(c3);

	cr_assert_str_eq(aneshare_strerror(-ANESHARE_EBAD_FD), "bad_fd");
	cr_assert_str_eq(aneshare_strerror(-ANESHARE_ECOMPILE), "compile");
	cr_assert_str_eq(aneshare_strerror(-ANESHARE_EINTERNAL), "internal");
	cr_assert_str_eq(aneshare_strerror(-ECONNRESET), "Connection reset by peer");

	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- surfaces ------------------------------------------------------------------ */

Test(daemon, surface_create_write_read)
{
	aneshare_conn *c = h_connect(&D, "test-surface");
	size_t size = (1u << 20) + 3;
	aneshare_surface *s = h_surface(c, size);
	cr_assert_eq(aneshare_surface_size(s), size);
	cr_assert_neq(aneshare_surface_id(s), 0);
	unsigned char *p = aneshare_surface_data(s);
	cr_assert_not_null(p);
	for (size_t i = 0; i < size; i++)
		cr_assert_eq(p[i], 0, "new surfaces are zero-filled");
	for (size_t i = 0; i < size; i++)
		p[i] = (unsigned char)(i * 7 + 1);
	for (size_t i = 0; i < size; i++)
		cr_assert_eq(p[i], (unsigned char)(i * 7 + 1));

	aneshare_surface *s2 = h_surface(c, 100);
	cr_assert_neq(aneshare_surface_id(s2), aneshare_surface_id(s));

	aneshare_status *st = h_status(c);
	cr_assert_eq(st->surfaces, 2);
	cr_assert_eq(st->surface_bytes, size + 100);
	aneshare_status_free(st);

	aneshare_surface *bad = NULL;
	cr_assert_eq(aneshare_surface_create(c, 0, &bad), -EINVAL);
	int r = aneshare_surface_create(c, (size_t)aneshare_server(c)->max_surface_bytes + 1, &bad);
	cr_assert_eq(r, -ANESHARE_EINVALID_PARAMS, "%s", aneshare_strerror(r));
	cr_assert_str_not_empty(aneshare_last_error(c));
	cr_assert_null(bad);

	/* The data survives the other calls. */
	cr_assert_eq(p[12345], (unsigned char)(12345 * 7 + 1));
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

Test(daemon, surface_import_sealed)
{
	aneshare_conn *c = h_connect(&D, "test-import");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);

	int fd = sealed_memfd(mm.in_bytes, SEAL_SHRINK);
	uint16_t *mine = mmap(NULL, mm.in_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(mine, MAP_FAILED);
	aneshare_surface *in = NULL;
	int r = aneshare_surface_import(c, fd, &in);
	cr_assert_eq(r, 0, "import: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_eq(aneshare_surface_size(in), mm.in_bytes);
	cr_assert_geq(fcntl(fd, F_GETFD), 0, "the caller keeps its fd");

	/* The library's mapping and ours are the same memory... */
	h_mm_fill(&mm, mine, 77);
	cr_assert_eq(memcmp(aneshare_surface_data(in), mine, mm.in_bytes), 0);
	/* ... and so is the daemon's: it computes from what we wrote. */
	aneshare_surface *out = h_surface(c, mm.out_bytes);
	cr_assert_eq(aneshare_run(p, 0, &in, 1, &out, 1), 0);
	double err = h_mm_error(&mm, mine, aneshare_surface_data(out));
	cr_assert_leq(err, H_MM_TOL, "relative error %g", err);

	cr_assert_eq(count_surfaces(c), 2);
	cr_assert_eq(aneshare_surface_release(in), 0);
	cr_assert_eq(count_surfaces(c), 1);
	munmap(mine, mm.in_bytes);
	close(fd);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

Test(daemon, surface_import_refused)
{
	aneshare_conn *c = h_connect(&D, "test-import-bad");
	aneshare_surface *s = NULL;

	int fd = sealed_memfd(4096, 0);   /* not sealed */
	int r = aneshare_surface_import(c, fd, &s);
	cr_assert_eq(r, -ANESHARE_EBAD_FD, "unsealed memfd: %s", aneshare_strerror(r));
	cr_assert_null(s);
	cr_assert_str_not_empty(aneshare_last_error(c));
	close(fd);

	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	r = aneshare_surface_import(c, pfd[0], &s);
	cr_assert_eq(r, -ANESHARE_EBAD_FD, "pipe: %s", aneshare_strerror(r));
	close(pfd[0]);
	close(pfd[1]);

	fd = sealed_memfd(0, SEAL_SHRINK);   /* empty */
	r = aneshare_surface_import(c, fd, &s);
	cr_assert_eq(r, -ANESHARE_EBAD_FD, "empty memfd: %s", aneshare_strerror(r));
	close(fd);

	/* The connection is still fine and holds nothing. */
	cr_assert_eq(count_surfaces(c), 0);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

Test(daemon, release)
{
	aneshare_conn *c = h_connect(&D, "test-release");
	aneshare_surface *a = h_surface(c, 4096), *b = h_surface(c, 8192);
	cr_assert_eq(count_surfaces(c), 2);
	cr_assert_eq(aneshare_surface_release(a), 0);
	aneshare_status *st = h_status(c);
	cr_assert_eq(st->surfaces, 1);
	cr_assert_eq(st->surface_bytes, 8192);
	aneshare_status_free(st);
	cr_assert_eq(aneshare_surface_release(NULL), 0);

	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	st = h_status(c);
	cr_assert_eq(st->programs, 1);
	cr_assert_eq(st->program_list[0].refs, 1);
	cr_assert_str_eq(st->program_list[0].key, aneshare_program_key(p));
	aneshare_status_free(st);
	cr_assert_eq(aneshare_program_release(p), 0);
	cr_assert_eq(aneshare_program_release(NULL), 0);
	cr_assert_eq(aneshare_surface_release(b), 0);
	h_wait_counts(c, 0, 0);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

Test(daemon, surface_of_another_connection)
{
	aneshare_conn *a = h_connect(&D, "owner");
	aneshare_surface *s = h_surface(a, 4096);
	uint32_t id = aneshare_surface_id(s);

	h_rconn rc;
	h_rconn_open(&rc, D.sock);
	cr_assert_eq(h_rconn_call_kv(&rc, 2, "surface.release", "id", id, NULL, 0), 6 /* no_such_surface */);
	cr_assert_eq(h_rconn_call_kv(&rc, 3, "surface.release", "id", id + 1, NULL, 0), 6);
	cr_assert_eq(h_rconn_call_kv(&rc, 4, "status", NULL, 0, NULL, 0), 0, "the connection stays usable");
	h_rconn_close(&rc);

	/* The owner's surface is untouched. */
	cr_assert_eq(count_surfaces(a), 1);
	cr_assert_eq(aneshare_surface_release(s), 0);
	cr_assert_eq(count_surfaces(a), 0);
	aneshare_disconnect(a);
	h_daemon_stop(&D);
}

/* ---- programs and runs -------------------------------------------------------------- */

Test(daemon, compile_error_has_line)
{
	aneshare_conn *c = h_connect(&D, "test-compile-error");
	char *good = mm_text();

	/* Insert a garbage line right after the line that opens the function body. */
	char *func = strstr(good, "func ");
	cr_assert_not_null(func);
	char *brace = strchr(func, '{');
	cr_assert_not_null(brace);
	char *eol = strchr(brace, '\n');
	cr_assert_not_null(eol);
	unsigned line = 1;
	for (char *q = good; q <= eol; q++)
		line += *q == '\n';
	size_t head = (size_t)(eol + 1 - good);
	const char *junk = "        %%% this is not MIL %%%\n";
	char *bad = malloc(strlen(good) + strlen(junk) + 1);
	cr_assert_not_null(bad);
	memcpy(bad, good, head);
	strcpy(bad + head, junk);
	strcat(bad, good + head);

	aneshare_program *p = NULL;
	bool cached = true;
	int r = aneshare_program_compile(c, bad, NULL, 0, &p, &cached);
	cr_assert_eq(r, -ANESHARE_ECOMPILE, "%s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_null(p);
	cr_assert(cached, "out-params are left alone on failure");
	char want[32];
	snprintf(want, sizeof want, "line %u", line);
	cr_assert(strstr(aneshare_last_error(c), want), "message '%s' does not name %s",
	          aneshare_last_error(c), want);

	r = aneshare_program_compile(c, "", NULL, 0, &p, NULL);
	cr_assert(r == -ANESHARE_ECOMPILE || r == -ANESHARE_EINVALID_PARAMS, "%s",
	          aneshare_strerror(r));

	/* The connection is fine: the good text compiles. */
	r = aneshare_program_compile(c, good, NULL, 0, &p, NULL);
	cr_assert_eq(r, 0, "%s: %s", aneshare_strerror(r), aneshare_last_error(c));
	aneshare_status *st = h_status(c);
	cr_assert_eq(st->programs, 1);
	aneshare_status_free(st);
	free(good);
	free(bad);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

Test(daemon, matmul_dynamic_weights)
{
	aneshare_conn *c = h_connect(&D, "test-matmul");
	h_mm mm;
	bool cached = true;
	aneshare_program *p = h_compile_mm(c, &mm, &cached);
	cr_assert(!cached, "first compile in a fresh daemon");
	const char *key = aneshare_program_key(p);
	cr_assert_eq(strlen(key), 64);
	cr_assert_eq(strspn(key, "0123456789abcdef"), 64);
	cr_assert_str_eq(aneshare_program_function_name(p, 0), "main");
	cr_assert_null(aneshare_program_input(p, 0, 1));
	cr_assert_null(aneshare_program_input(p, aneshare_program_function_count(p), 0));

	aneshare_surface *in = h_surface(c, mm.in_bytes), *out = h_surface(c, mm.out_bytes);
	for (uint64_t seed = 1; seed <= 4; seed++)   /* compile once, new weights each run */
		h_mm_fill_run_check(p, &mm, in, out, seed);

	/* Surfaces that do not fit. */
	aneshare_surface *small = h_surface(c, mm.out_bytes - 2);
	int r = aneshare_run(p, 0, &in, 1, &small, 1);
	cr_assert_eq(r, -ANESHARE_ESIZE_MISMATCH, "%s", aneshare_strerror(r));
	r = aneshare_run(p, 0, &in, 1, NULL, 0);
	cr_assert_eq(r, -ANESHARE_ESIZE_MISMATCH, "%s", aneshare_strerror(r));
	r = aneshare_run(p, 1000, &in, 1, &out, 1);
	cr_assert_eq(r, -EINVAL);

	aneshare_status *st = h_status(c);
	cr_assert_geq(st->runs, 4);
	cr_assert_eq(st->compiles, 1);
	aneshare_status_free(st);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

#define N_PIPE 48

Test(daemon, pipelined_runs)
{
	aneshare_conn *c = h_connect(&D, "test-pipeline");
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in[N_PIPE], *out[N_PIPE];
	uint32_t ticket[N_PIPE];
	h_mm_pairs(c, &mm, in, out, N_PIPE, 1000);
	for (int i = 0; i < N_PIPE; i++) {
		int r = aneshare_run_submit(p, 0, &in[i], 1, &out[i], 1, &ticket[i]);
		cr_assert_eq(r, 0, "submit %d: %s", i, aneshare_strerror(r));
	}
	/* Wait out of order: odd ones backwards, then even ones. */
	for (int i = N_PIPE - 1; i >= 0; i -= 2)
		cr_assert_eq(aneshare_wait(c, ticket[i]), 0, "run %d", i);
	for (int i = 0; i < N_PIPE; i += 2)
		cr_assert_eq(aneshare_wait(c, ticket[i]), 0, "run %d", i);
	for (int i = 0; i < N_PIPE; i++) {
		double err = h_mm_error(&mm, aneshare_surface_data(in[i]), aneshare_surface_data(out[i]));
		cr_assert_leq(err, H_MM_TOL, "run %d: relative error %g", i, err);
	}
	cr_assert_eq(aneshare_wait(c, ticket[0]), -ENOENT, "a ticket is waited for once");

	/* A failing run in the middle of a pipeline fails alone. */
	aneshare_surface *small = h_surface(c, 2);
	uint32_t t_ok, t_bad, t_ok2;
	cr_assert_eq(aneshare_run_submit(p, 0, &in[0], 1, &out[0], 1, &t_ok), 0);
	cr_assert_eq(aneshare_run_submit(p, 0, &in[1], 1, &small, 1, &t_bad), 0);
	cr_assert_eq(aneshare_run_submit(p, 0, &in[2], 1, &out[2], 1, &t_ok2), 0);
	cr_assert_eq(aneshare_wait(c, t_ok2), 0);
	cr_assert_eq(aneshare_wait(c, t_bad), -ANESHARE_ESIZE_MISMATCH);
	cr_assert_eq(aneshare_wait(c, t_ok), 0);

	aneshare_status *st = h_status(c);
	cr_assert_geq(st->runs, N_PIPE + 2);
	aneshare_status_free(st);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- several processes ----------------------------------------------------------------- */

/* Child: compile the matmul, report cached ('1'/'0', 'E' on error) on out_fd,
 * then hold the program until go_fd reaches EOF. */
static void child_compile_and_hold(int out_fd, int go_fd)
{
	aneshare_conn *c;
	char res = 'E';
	char *mil = mm_text();
	if (aneshare_connect(D.sock, "child", &c) == 0) {
		aneshare_program *p;
		bool cached;
		if (aneshare_program_compile(c, mil, NULL, 0, &p, &cached) == 0)
			res = cached ? '1' : '0';
		if (write(out_fd, &res, 1) != 1)
			_exit(3);
		char b;
		while (read(go_fd, &b, 1) > 0)
			;
		aneshare_disconnect(c);
	} else if (write(out_fd, &res, 1) != 1) {
		_exit(3);
	}
	_exit(res == 'E' ? 1 : 0);
}

static void wait_child_ok(pid_t pid)
{
	int status;
	pid_t r;
	do
		r = waitpid(pid, &status, 0);
	while (r < 0 && errno == EINTR);
	cr_assert_eq(r, pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status 0x%x", status);
}

Test(daemon, two_processes_share_a_program)
{
	int res[2], go[2];
	cr_assert_eq(anes_pipe_cloexec(res), 0);
	cr_assert_eq(anes_pipe_cloexec(go), 0);
	pid_t pid[2];
	char got[2];
	for (int i = 0; i < 2; i++) {
		pid[i] = fork();
		cr_assert_geq(pid[i], 0);
		if (pid[i] == 0) {
			tu_die_with_parent();
			close(res[0]);
			close(go[1]);
			child_compile_and_hold(res[1], go[0]);
		}
		cr_assert_eq(read(res[0], &got[i], 1), 1);   /* one compile after the other */
	}
	close(res[1]);
	close(go[0]);
	cr_assert_eq(got[0], '0', "first compile: cached=%c", got[0]);
	cr_assert_eq(got[1], '1', "second compile must be a cache hit: %c", got[1]);

	aneshare_conn *c = h_connect(&D, "observer");
	h_wait_clients(c, 3);
	aneshare_status *st = h_status(c);
	cr_assert_eq(st->clients, 3);
	cr_assert_eq(st->programs, 1);
	cr_assert_eq(st->program_list[0].refs, 2);
	cr_assert_eq(st->compiles, 1);
	cr_assert_eq(st->cache_hits, 1);
	aneshare_status_free(st);

	close(go[1]);   /* let the children go */
	close(res[0]);
	wait_child_ok(pid[0]);
	wait_child_ok(pid[1]);
	h_wait_counts(c, 0, 0);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

#define N_KILL 16

/* Child: keep N_KILL runs in flight forever; write 'R' once they flow. */
static void child_pipeline_forever(int out_fd)
{
	aneshare_conn *c;
	h_mm mm;
	aneshare_program *p;
	char *mil = mm_text();
	if (aneshare_connect(D.sock, "doomed", &c) < 0 ||
	    aneshare_program_compile(c, mil, NULL, 0, &p, NULL) < 0 || !h_mm_from_program(p, &mm))
		_exit(1);
	aneshare_surface *in[N_KILL], *out[N_KILL];
	uint32_t t[N_KILL];
	for (int i = 0; i < N_KILL; i++) {
		if (aneshare_surface_create(c, mm.in_bytes, &in[i]) < 0 ||
		    aneshare_surface_create(c, mm.out_bytes, &out[i]) < 0)
			_exit(1);
		h_mm_fill(&mm, aneshare_surface_data(in[i]), (uint64_t)i);
		if (aneshare_run_submit(p, 0, &in[i], 1, &out[i], 1, &t[i]) < 0)
			_exit(1);
	}
	for (unsigned long k = 0;; k++) {
		int i = (int)(k % N_KILL);
		if (aneshare_wait(c, t[i]) < 0 || aneshare_run_submit(p, 0, &in[i], 1, &out[i], 1, &t[i]) < 0)
			_exit(1);
		if (k == N_KILL && write(out_fd, "R", 1) != 1)
			_exit(1);
	}
}

Test(daemon, killed_client_is_cleaned_up)
{
	int res[2];
	cr_assert_eq(anes_pipe_cloexec(res), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		tu_die_with_parent();
		close(res[0]);
		child_pipeline_forever(res[1]);
	}
	close(res[1]);
	char b = 0;
	cr_assert_eq(read(res[0], &b, 1), 1, "the child failed before its runs got going");
	cr_assert_eq(b, 'R');
	close(res[0]);

	aneshare_conn *c = h_connect(&D, "survivor");
	aneshare_status *st = h_status(c);
	cr_assert_eq(st->surfaces, 2 * N_KILL);
	cr_assert_eq(st->programs, 1);
	aneshare_status_free(st);

	cr_assert_eq(kill(pid, SIGKILL), 0);   /* runs are in flight right now */
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

	h_wait_counts(c, 0, 0);
	h_wait_clients(c, 1);

	/* Everything still works for the survivor. */
	h_mm mm;
	aneshare_program *p = h_compile_mm(c, &mm, NULL);
	aneshare_surface *in = h_surface(c, mm.in_bytes), *out = h_surface(c, mm.out_bytes);
	h_mm_fill_run_check(p, &mm, in, out, 99);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- hostile input -------------------------------------------------------------------- */

typedef struct good_client {
	aneshare_conn *c;
	aneshare_program *p;
	h_mm mm;
	aneshare_surface *in, *out;
	uint64_t seed;
} good_client;

static void good_check(good_client *g)
{
	h_mm_fill_run_check(g->p, &g->mm, g->in, g->out, ++g->seed);
}

Test(daemon, garbage_does_not_hurt_others)
{
	good_client g = { .c = h_connect(&D, "good") };
	g.p = h_compile_mm(g.c, &g.mm, NULL);
	g.in = h_surface(g.c, g.mm.in_bytes);
	g.out = h_surface(g.c, g.mm.out_bytes);
	good_check(&g);

	/* Random bytes. */
	int fd = h_raw_connect(D.sock);
	cr_assert_geq(fd, 0);
	unsigned char junk[4096];
	uint64_t s = 0x1234567;
	for (size_t i = 0; i < sizeof junk; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		junk[i] = (unsigned char)(s >> 56);
	}
	(void)h_raw_send(fd, junk, sizeof junk, NULL, 0);   /* may fail once the daemon hangs up */
	cr_assert_eq(h_raw_wait_closed(fd, 5000, NULL), 0, "random bytes: connection not closed");
	close(fd);
	good_check(&g);

	/* A truncated frame: the header promises 100 bytes, 50 come, then EOF. */
	fd = h_raw_open(D.sock);
	uint8_t trunc[ANES_FRAME_HEADER_SIZE + 50];
	memset(trunc, 0x90, sizeof trunc);
	anes_frame_header_write(trunc, 100, 0);
	cr_assert_eq(h_raw_send(fd, trunc, sizeof trunc, NULL, 0), 0);
	shutdown(fd, SHUT_WR);
	cr_assert_eq(h_raw_wait_closed(fd, 5000, NULL), 0, "truncated frame: not closed");
	close(fd);
	good_check(&g);

	/* A header announcing 4 GiB: refused before anything is allocated. */
	fd = h_raw_connect(D.sock);
	cr_assert_geq(fd, 0);
	const uint8_t huge[ANES_FRAME_HEADER_SIZE] = { 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0 };
	cr_assert_eq(h_raw_send(fd, huge, sizeof huge, NULL, 0), 0);
	unsigned errors = 0;
	cr_assert_eq(h_raw_wait_closed(fd, 5000, &errors), 0, "oversized frame: not closed");
	cr_expect_eq(errors, 1, "the daemon says why it hangs up");
	close(fd);
	good_check(&g);

	/* A header claiming 3 fds that never came. */
	fd = h_raw_connect(D.sock);
	cr_assert_geq(fd, 0);
	{
		params *p = params_u32("protocol", 1);
		msgpack_sbuffer sb;
		msgpack_sbuffer_init(&sb);
		h_raw_frame(&sb, 1, "hello", p->sb.data, p->sb.size, 3);   /* announces 3 fds */
		cr_assert_eq(h_raw_send(fd, sb.data, sb.size, NULL, 0), 0);
		msgpack_sbuffer_destroy(&sb);
		msgpack_sbuffer_destroy(&p->sb);
		free(p);
	}
	cr_assert_eq(h_raw_wait_closed(fd, 5000, NULL), 0, "missing fds: not closed");
	close(fd);
	good_check(&g);

	/* Protocol-level mistakes that keep the connection: before hello, an
	 * unknown method, an fd on a method that takes none. */
	fd = h_raw_connect(D.sock);
	cr_assert_geq(fd, 0);
	h_rconn rc;
	h_rconn_adopt(&rc, fd);
	cr_assert_eq(h_rconn_call_kv(&rc, 7, "status", NULL, 0, NULL, 0), 3 /* handshake */);
	cr_assert_eq(h_rconn_call_kv(&rc, 1, "hello", "protocol", 1, NULL, 0), 0);
	cr_assert_eq(h_rconn_call_kv(&rc, 8, "no.such.method", NULL, 0, NULL, 0), 4 /* unknown_method */);
	int mfd = sealed_memfd(4096, SEAL_SHRINK);
	cr_assert_eq(h_rconn_call_kv(&rc, 9, "status", NULL, 0, &mfd, 1), 13 /* bad_fd */);
	cr_assert_eq(h_rconn_call_kv(&rc, 10, "surface.release", NULL, 0, NULL, 0), 5 /* invalid_params */);
	cr_assert_eq(h_rconn_call_kv(&rc, 11, "status", NULL, 0, NULL, 0), 0, "still usable");
	close(mfd);
	h_rconn_close(&rc);
	good_check(&g);

	/* The daemon is healthy and holds only the good client's objects. */
	h_wait_clients(g.c, 1);   /* closed raw connections may take a moment to go */
	aneshare_status *st = h_status(g.c);
	cr_assert_eq(st->clients, 1);
	cr_assert_eq(st->surfaces, 2);
	cr_assert_eq(st->programs, 1);
	aneshare_status_free(st);
	aneshare_disconnect(g.c);
	h_daemon_stop(&D);
}

/* ---- cleanup ---------------------------------------------------------------------------- */

Test(daemon, disconnect_frees_everything)
{
	aneshare_conn *obs = h_connect(&D, "observer");
	int fds_before = h_count_fds();

	aneshare_conn *c = h_connect(&D, "leaver");
	h_mm mm;
	aneshare_program *p1 = h_compile_mm(c, &mm, NULL);
	char *mil = mm_text();
	size_t n = strlen(mil);
	char *mil2 = malloc(n + 3);
	cr_assert_not_null(mil2);
	memcpy(mil2, mil, n);
	strcpy(mil2 + n, "\n\n");   /* different bytes, so a second program */
	aneshare_program *p2 = NULL;
	cr_assert_eq(aneshare_program_compile(c, mil2, NULL, 0, &p2, NULL), 0);
	cr_assert_str_neq(aneshare_program_key(p1), aneshare_program_key(p2));
	free(mil);
	free(mil2);

	aneshare_surface *in = h_surface(c, mm.in_bytes), *out = h_surface(c, mm.out_bytes);
	aneshare_surface *extra = h_surface(c, 12345);
	int mfd = sealed_memfd(8192, SEAL_SHRINK | SEAL_GROW);
	aneshare_surface *imp = NULL;
	cr_assert_eq(aneshare_surface_import(c, mfd, &imp), 0);
	close(mfd);
	/* The library keeps one fd per live surface (its memfd, for reconnecting)
	 * besides the socket, and nothing else. */
	cr_assert_eq(h_count_fds(), fds_before + 1 + 4, "%d fds", h_count_fds() - fds_before);
	cr_assert_eq(aneshare_surface_release(extra), 0);
	cr_assert_eq(h_count_fds(), fds_before + 1 + 3, "release closes the surface's fd");
	h_mm_fill(&mm, aneshare_surface_data(in), 5);
	uint32_t t;
	for (int i = 0; i < 4; i++)   /* left in flight */
		cr_assert_eq(aneshare_run_submit(p1, 0, &in, 1, &out, 1, &t), 0);

	aneshare_status *st = h_status(obs);
	cr_assert_eq(st->surfaces, 3);
	cr_assert_eq(st->programs, 2);
	aneshare_status_free(st);

	aneshare_disconnect(c);   /* releases nothing explicitly */
	cr_assert_eq(h_count_fds(), fds_before, "the library leaked fds");
	h_wait_counts(obs, 0, 0);
	h_wait_clients(obs, 1);
	st = h_status(obs);
	cr_assert_eq(st->surface_bytes, 0);
	aneshare_status_free(st);
	aneshare_disconnect(obs);
	h_daemon_stop(&D);
}

/* ---- the CLI ------------------------------------------------------------------------------- */

static int cli(char *out, size_t len, const char *const *args)
{
	return h_run_tool(&D, "ANESHARE_CLI", out, len, args);
}

Test(daemon, cli)
{
	char out[8192];
	char mil[512], bad[512];
	snprintf(mil, sizeof mil, "%s/examples/dynamic_matmul.mil", ANES_SOURCE_DIR);
	snprintf(bad, sizeof bad, "%s/bad.mil", D.dir);
	FILE *f = fopen(bad, "we");
	cr_assert_not_null(f);
	fputs("program(1.3)\n{\n  this is wrong\n}\n", f);
	fclose(f);

	cr_assert_eq(cli(out, sizeof out, (const char *[]){ "status", NULL }), 0, "%s", out);
	cr_assert(strstr(out, "connections 1,") && strstr(out, "programs: 0"), "%s", out);
	cr_assert_eq(cli(out, sizeof out, (const char *[]){ "compile", mil, NULL }), 0, "%s", out);
	cr_assert(strstr(out, "cached: no") && strstr(out, "input") && strstr(out, "fp16"), "%s", out);
	cr_assert_eq(cli(out, sizeof out, (const char *[]){ "run", mil, "--fill", "random", NULL }),
	             0, "%s", out);
	cr_assert(strstr(out, "min") && strstr(out, "mean"), "%s", out);
	cr_assert_eq(cli(out, sizeof out, (const char *[]){ "compile", bad, NULL }), 1, "%s", out);
	cr_assert(strstr(out, "line"), "%s", out);
	cr_assert_eq(cli(out, sizeof out, (const char *[]){ "frobnicate", NULL }), 2, "%s", out);
	cr_assert_eq(cli(out, sizeof out, (const char *[]){ "run", mil, NULL }), 2, "%s", out);
	cr_assert_eq(cli(out, sizeof out, (const char *[]){ "--help", NULL }), 0, "%s", out);
	unlink(bad);
	h_daemon_stop(&D);
}

/* ---- a misbehaving daemon ---------------------------------------------------------------- */

/* The library must not trust the daemon either.  A fake daemon on a thread
 * answers hello, then misbehaves on each surface.create, and finally hangs up
 * with an error notification. */

typedef struct fake {
	int listen_fd;
	int failures;      /* things the fake saw that it did not expect */
} fake;

static void *fake_main(void *arg)
{
	fake *fk = arg;
	h_rconn rc;
	if (!h_fake_greet(fk->listen_fd, &rc, &fk->failures))
		return NULL;
	uint32_t msgid, id;
	char method[64];
	anes_frame f;

	/* Three bad surface.create answers: no fd, two fds, an fd too small.
	 * Each is followed by the library's surface.release of that ID. */
	for (unsigned step = 0; step < 3; step++) {
		if (!h_fake_next(&rc, 10000, &msgid, method, sizeof method, &id) ||
		    strcmp(method, "surface.create"))
			fk->failures++;
		int fds[2] = { -1, -1 };
		unsigned nfds = step == 0 ? 0 : step == 1 ? 2 : 1;
		for (unsigned i = 0; i < nfds; i++)
			if (anes_memfd_create("fake", step == 2 ? 100 : 4096, &fds[i]) < 0)
				fk->failures++;
		anes_frame_init(&f);
		anes_pack_result(&f.pk, msgid, 2);
		anes_pack_str(&f.pk, "id");
		msgpack_pack_uint32(&f.pk, 40 + step);
		anes_pack_str(&f.pk, "size");
		msgpack_pack_uint32(&f.pk, 4096);
		h_fake_send(&rc.io, &f, fds, nfds);

		if (!h_fake_next(&rc, 10000, &msgid, method, sizeof method, &id) ||
		    strcmp(method, "surface.release") || id != 40 + step)
			fk->failures++;
		anes_frame_init(&f);
		anes_pack_result(&f.pk, msgid, 0);
		h_fake_send(&rc.io, &f, NULL, 0);
	}

	/* An unknown notification (ignored), then the error notification and EOF. */
	if (!h_fake_next(&rc, 10000, &msgid, method, sizeof method, &id) || strcmp(method, "status"))
		fk->failures++;
	anes_frame_init(&f);
	anes_pack_notify(&f.pk, "weather", 0);
	h_fake_send(&rc.io, &f, NULL, 0);
	anes_frame_init(&f);
	anes_pack_notify(&f.pk, "error", 3);
	anes_pack_str(&f.pk, "code");
	msgpack_pack_uint32(&f.pk, 1);
	anes_pack_str(&f.pk, "name");
	anes_pack_str(&f.pk, "protocol");
	anes_pack_str(&f.pk, "message");
	anes_pack_str(&f.pk, "you are not welcome");
	h_fake_send(&rc.io, &f, NULL, 0);
	h_rconn_close(&rc);
	return NULL;
}

Test(daemon, misbehaving_daemon)
{
	char path[256];
	snprintf(path, sizeof path, "%s/fake.sock", D.dir);
	fake fk = { .listen_fd = h_fake_listen(path) };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, fake_main, &fk), 0);

	int fds_before = h_count_fds();
	aneshare_conn *c = NULL;
	cr_assert_eq(aneshare_connect(path, "victim", &c), 0);
	cr_assert_str_eq(aneshare_server(c)->server_version, "9.9");
	cr_assert_eq(aneshare_server(c)->max_inflight, 64, "documented default");
	aneshare_surface *s = NULL;
	for (int step = 0; step < 3; step++) {
		int r = aneshare_surface_create(c, 4096, &s);
		cr_assert_eq(r, -ANESHARE_EPROTOCOL, "step %d: %s", step, aneshare_strerror(r));
		cr_assert_null(s);
		cr_assert_str_not_empty(aneshare_last_error(c));
	}
	aneshare_status *st = NULL;
	int r = aneshare_get_status(c, &st);
	cr_assert_eq(r, -ANESHARE_EPROTOCOL, "%s", aneshare_strerror(r));
	cr_assert_str_eq(aneshare_last_error(c), "you are not welcome");
	r = aneshare_surface_create(c, 10, &s);   /* the connection stays dead */
	cr_assert_eq(r, -ANESHARE_EPROTOCOL);
	cr_assert_str_eq(aneshare_last_error(c), "you are not welcome");
	cr_assert_null(st);

	pthread_join(th, NULL);
	cr_assert_eq(fk.failures, 0, "the fake daemon saw unexpected requests");
	aneshare_disconnect(c);
	cr_assert_eq(h_count_fds(), fds_before, "fds leaked");
	close(fk.listen_fd);
	unlink(path);
	h_daemon_stop(&D);
}

Test(daemon, example_matmul_client)
{
	char out[8192];
	int r = h_run_tool(&D, "MATMUL_CLIENT", out, sizeof out,
	                 (const char *[]){ "--sets", "2", "--runs", "3", NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert(strstr(out, "cached: no") && strstr(out, "\nOK\n"), "%s", out);
	/* While another connection holds the program, the example shares it. */
	aneshare_conn *c = h_connect(&D, "holder");
	h_mm mm;
	(void)h_compile_mm(c, &mm, NULL);
	r = h_run_tool(&D, "MATMUL_CLIENT", out, sizeof out, (const char *[]){ "--runs", "1", NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert(strstr(out, "cached: yes"), "%s", out);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- weights ------------------------------------------------------------------------------ */

static const char weights_mil[] =
	"program(1.3)\n"
	"{\n"
	"    func main<ios18>(tensor<fp16, [1, 4]> x) {\n"
	"        tensor<fp16, [1, 4]> w = const()[name = string(\"w\"), val = tensor<fp16, [1, 4]>"
	"(BLOBFILE(path = string(\"@model_path/weights/weight.bin\"), offset = uint64(64)))];\n"
	"        tensor<fp16, [1, 4]> y = add(x = x, y = w)[name = string(\"y\")];\n"
	"    } -> (y);\n"
	"}\n";

/* A weight blob (docs/mil.md, "Weight files"): the 64-byte storage header
 * (count 1, version 2), a metadata record at 64 (magic, dtype fp16, size,
 * data offset) and 4 fp16 values at 128. */
static void make_blob(uint8_t blob[136], const float w[4])
{
	memset(blob, 0, 136);
	blob[0] = 1;
	blob[4] = 2;
	uint8_t *ch = blob + 64;
	uint32_t magic = 0xDEADBEEFu;
	uint64_t size = 8, off = 128;
	memcpy(ch, &magic, 4);   /* little-endian hosts only, like the daemon */
	ch[4] = 1;
	memcpy(ch + 8, &size, 8);
	memcpy(ch + 16, &off, 8);
	aneshare_f32_to_f16((uint16_t *)(void *)(blob + 128), w, 4);
}

Test(daemon, compile_with_weights)
{
	aneshare_conn *c = h_connect(&D, "test-weights");
	uint8_t blob_a[136], blob_b[136];
	make_blob(blob_a, (const float[4]){ 1, 2, 3, 4 });
	make_blob(blob_b, (const float[4]){ -1, -2, -3, -4 });
	aneshare_weight wa = { "@model_path/weights/weight.bin", blob_a, sizeof blob_a };
	aneshare_weight wb = { "@model_path/weights/weight.bin", blob_b, sizeof blob_b };

	aneshare_program *pa = NULL, *pb = NULL, *pa2 = NULL;
	bool cached = true;
	int r = aneshare_program_compile(c, weights_mil, &wa, 1, &pa, &cached);
	cr_assert_eq(r, 0, "%s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert(!cached);
	cr_assert_eq(aneshare_program_compile(c, weights_mil, &wb, 1, &pb, &cached), 0);
	cr_assert(!cached, "other weights, other program");
	cr_assert_str_neq(aneshare_program_key(pa), aneshare_program_key(pb));
	cr_assert_eq(aneshare_program_compile(c, weights_mil, &wa, 1, &pa2, &cached), 0);
	cr_assert(cached, "same MIL and weights: shared");
	cr_assert_str_eq(aneshare_program_key(pa), aneshare_program_key(pa2));

	r = aneshare_program_compile(c, weights_mil, NULL, 0, &pb, NULL);
	cr_assert_eq(r, -ANESHARE_ECOMPILE, "%s", aneshare_strerror(r));
	cr_assert(strstr(aneshare_last_error(c), "line 4"), "%s", aneshare_last_error(c));

	aneshare_surface *x = h_surface(c, 8), *y = h_surface(c, 8);
	const float xv[4] = { 0.5f, 0.25f, -1, 10 };
	aneshare_f32_to_f16(aneshare_surface_data(x), xv, 4);
	cr_assert_eq(aneshare_run(pa, 0, &x, 1, &y, 1), 0);
	float yv[4];
	aneshare_f16_to_f32(yv, aneshare_surface_data(y), 4);
	cr_assert(yv[0] == 1.5f && yv[1] == 2.25f && yv[2] == 2.0f && yv[3] == 14.0f,
	          "%g %g %g %g", yv[0], yv[1], yv[2], yv[3]);
	cr_assert_eq(aneshare_run(pb, 0, &x, 1, &y, 1), 0);
	aneshare_f16_to_f32(yv, aneshare_surface_data(y), 4);
	cr_assert(yv[0] == -0.5f && yv[3] == 6.0f, "%g %g %g %g", yv[0], yv[1], yv[2], yv[3]);

	aneshare_status *st = h_status(c);
	cr_assert_eq(st->programs, 2);
	cr_assert_eq(st->cache_hits, 1);
	aneshare_status_free(st);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- options ------------------------------------------------------------------------ */

/* Every kind of bad option or config line ends the daemon before it
 * listens, with exit status 78 (EX_CONFIG) and a message that names the
 * option or FILE:LINE; --help and --version exit 0. */
Test(daemon, bad_options_and_config_lines)
{
	char dir[] = "/tmp/anes-opts-XXXXXX";
	cr_assert_not_null(mkdtemp(dir));
	char conf[300], err[8192];
	snprintf(conf, sizeof conf, "%s/bad.conf", dir);
	static const struct {
		const char *args[4];
		const char *says;
	} cases[] = {
		{ { "--max-frame", "12x" }, "--max-frame" },
		{ { "--max-frame", "1Q" }, "--max-frame" },
		{ { "--max-frame", "99999999999999999999" }, "--max-frame" },
		{ { "--max-surface-bytes", "99999999999G" }, "--max-surface-bytes" },
		{ { "--workers", "-1" }, "--workers" },
		{ { "--verbose", "maybe" }, "" },
		{ { "--allow-uid", "no-such-user-anes" }, "no-such-user-anes" },
		{ { "--no-such-option" }, "no-such-option" },
		{ { "--max-frame" }, "--max-frame" },
		{ { "--backend", "gpu" }, "gpu" },
		{ { "--max-mil-statements", "0" }, "--max-mil-statements" },
		{ { "--max-mil-io", "65" }, "--max-mil-io" },
		{ { "--max-mil-tensor-bytes", "2T" }, "--max-mil-tensor-bytes" },
		{ { "--max-mil-bytes", "2G" }, "--max-mil-bytes" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int code = h_run_aneshared(dir, cases[i].args, err, sizeof err);
		cr_assert_eq(code, 78, "%s %s: exit %d: %s", cases[i].args[0],
		             cases[i].args[1] ? cases[i].args[1] : "", code, err);
		cr_assert(strstr(err, cases[i].says), "%s: the message does not name it: %s", cases[i].args[0],
		          err);
	}
	static const char *const lines[] = {
		"max_frame\n",                   /* no '=' */
		"no_such_key = 1\n",
		"max_frame = lots\n",
		"max-frame = 65536\n",           /* options' '-' is '_' in the file */
		"verbose = sometimes\n",
		"allow_uid = 4294967295\n",
	};
	for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
		FILE *f = fopen(conf, "w");
		cr_assert_not_null(f);
		fprintf(f, "# a comment\n\n%s", lines[i]);
		fclose(f);
		const char *args[] = { "--config", conf, NULL };
		int code = h_run_aneshared(dir, args, err, sizeof err);
		cr_assert_eq(code, 78, "%s: exit %d: %s", lines[i], code, err);
		cr_assert(strstr(err, ":3"), "%s: the message does not name line 3: %s", lines[i], err);
	}
	/* Good lines of every value form first (a user by name, byte suffixes),
	 * then a bad one: the message names line 5. */
	FILE *f = fopen(conf, "w");
	cr_assert_not_null(f);
	fprintf(f, "allow_uid = root\nmax_surface_bytes = 5MiB\nmax_hello_frame = 4KB\n"
	           "verbose = yes\nmax_frame = x\n");
	fclose(f);
	const char *good_then_bad[] = { "--config", conf, "-v", NULL };
	cr_assert_eq(h_run_aneshared(dir, good_then_bad, err, sizeof err), 78, "%s", err);
	cr_assert(strstr(err, ":5"), "%s", err);
	f = fopen(conf, "w");
	cr_assert_not_null(f);
	for (int i = 0; i < 5000; i++)
		fputc('x', f);
	fclose(f);
	const char *too_long[] = { "--config", conf, NULL };
	cr_assert_eq(h_run_aneshared(dir, too_long, err, sizeof err), 78, "%s", err);
	cr_assert(strstr(err, "too long"), "%s", err);
	const char *missing[] = { "--config", "/nonexistent/anes.conf", NULL };
	cr_assert_eq(h_run_aneshared(dir, missing, err, sizeof err), 78, "%s", err);
	/* A socket path that does not fit, and one in a directory others may
	 * write to: refused before listening, naming the path. */
	char longpath[200];
	memset(longpath, 'a', sizeof longpath - 1);
	longpath[0] = '/';
	longpath[sizeof longpath - 1] = '\0';
	const char *too_long_socket[] = { "--socket", longpath, NULL };
	cr_assert_eq(h_run_aneshared(dir, too_long_socket, err, sizeof err), 78, "%s", err);
	const char *open_dir[] = { "--socket", "/tmp/anes-open-dir.sock", NULL };
	cr_assert_neq(h_run_aneshared(dir, open_dir, err, sizeof err), 0, "%s", err);
	cr_assert(strstr(err, "/tmp"), "%s", err);
	const char *help[] = { "--help", NULL };
	cr_assert_eq(h_run_aneshared(dir, help, err, sizeof err), 0, "%s", err);
	cr_assert(strstr(err, "Usage: aneshared") && strstr(err, "--max-frame"), "%s", err);
	const char *version[] = { "--version", NULL };
	cr_assert_eq(h_run_aneshared(dir, version, err, sizeof err), 0, "%s", err);
	unlink(conf);
	char log[256];
	snprintf(log, sizeof log, "%s/stderr", dir);
	unlink(log);
	rmdir(dir);
}

/* --max-mil-io is at most 64 (docs/mil.md, Limits): a function with 64
 * inputs and 64 outputs, the most a run carries, compiles and runs through
 * the daemon at the default; 65 inputs are refused with the limit named. */
static char *io_text(int n_in, int n_out)
{
	size_t len = 256 + (size_t)(n_in + n_out) * 160;
	char *t = malloc(len);
	size_t o = (size_t)snprintf(t, len, "program(1.3)\n{\n    func main<ios18>(");
	for (int i = 0; i < n_in; i++)
		o += (size_t)snprintf(t + o, len - o, "%stensor<fp16, [4]> x%d", i ? ", " : "", i);
	o += (size_t)snprintf(t + o, len - o, ") {\n");
	for (int j = 0; j < n_out; j++)   /* y_j = x_j + x_{j+1}: every input read, every output its own */
		o += (size_t)snprintf(t + o, len - o, "        tensor<fp16, [4]> y%d = add(x = x%d, y = x%d)[name = string(\"y%d\")];\n",
		                      j, j % n_in, (j + 1) % n_in, j);
	o += (size_t)snprintf(t + o, len - o, "    } -> (");
	for (int j = 0; j < n_out; j++)
		o += (size_t)snprintf(t + o, len - o, "%sy%d", j ? ", " : "", j);
	snprintf(t + o, len - o, ");\n}\n");
	return t;
}

Test(daemon, sixty_four_inputs_and_outputs)
{
	aneshare_conn *c = h_connect(&D, "test-io");
	aneshare_program *p = NULL;
	char *text = io_text(64, 64);
	int r = aneshare_program_compile(c, text, NULL, 0, &p, NULL);
	cr_assert_eq(r, 0, "%s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_eq(aneshare_program_input_count(p, 0), 64);
	cr_assert_eq(aneshare_program_output_count(p, 0), 64);
	aneshare_surface *in[64], *out[64];
	for (int i = 0; i < 64; i++) {
		in[i] = h_surface(c, 8);
		out[i] = h_surface(c, 8);
		uint16_t *x = aneshare_surface_data(in[i]);
		for (int k = 0; k < 4; k++)
			x[k] = (uint16_t)(0x3c00 + (((i * 4 + k) % 64) << 4));   /* 1 + m / 64: sums exact in fp16 */
	}
	r = aneshare_run(p, 0, in, 64, out, 64);
	cr_assert_eq(r, 0, "%s: %s", aneshare_strerror(r), aneshare_last_error(c));
	for (int j = 0; j < 64; j++)
		for (int k = 0; k < 4; k++) {
			double a = 1 + (4 * j + k) % 64 / 64.0, b = 1 + (4 * ((j + 1) % 64) + k) % 64 / 64.0;
			uint16_t h = ((uint16_t *)aneshare_surface_data(out[j]))[k];
			double got = ldexp((double)(0x400 | (h & 0x3ff)), ((h >> 10) & 0x1f) - 25);
			cr_assert_eq(got, a + b, "y%d[%d] = %g, want %g", j, k, got, a + b);
		}
	free(text);
	text = io_text(65, 1);
	aneshare_program *q = NULL;
	r = aneshare_program_compile(c, text, NULL, 0, &q, NULL);
	cr_assert_lt(r, 0);
	cr_assert_null(q);
	cr_assert(strstr(aneshare_last_error(c), "more than 64 inputs"), "%s", aneshare_last_error(c));
	free(text);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}
