/* SPDX-License-Identifier: MIT */
/*
 * Tenants (docs/protocol.md, "Limits"; docs/reliability.md, "Tenants"): the
 * daemon's limits hold per client process, not per connection, and program
 * memory is charged before it is allocated, so a client over its limit gets
 * `limit` while the daemon's (and its device worker's) resident memory stays
 * within that limit.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#ifdef __APPLE__
#include <util.h>
#else
#include <pty.h>
#endif

#include "anes_proto.h"
#include "aneshare.h"
#include "daemon_harness.h"

static h_daemon D;

static void teardown(void)
{
	h_daemon_kill(&D);
}

TestSuite(tenants, .fini = teardown, .timeout = 120);

#define ELIMIT (-ANESHARE_ELIMIT)
#define NCONN 50

/* ---- programs ------------------------------------------------------------------ */

/* A program whose input is 32 bytes but whose run needs 2 x 2 x 16 x reps bytes
 * of intermediate values (tile, then add): the shape of the reproducer that
 * took the daemon to 9.7 GiB with 40 bytes of surfaces.  tag makes it a
 * distinct program. */
static char *big_arena_mil(unsigned reps, unsigned tag)
{
	char *s = NULL;
	unsigned n = 16 * reps;
	int r = asprintf(&s,
	                 "program(1.3)\n{\n"
	                 "    func main<ios18>(tensor<fp16, [1, 16]> x) {\n"
	                 "        tensor<int32, [2]> reps = const()[name = string(\"reps\"), val = tensor<int32, [2]>([1, %u])];\n"
	                 "        tensor<fp16, [1, %u]> t = tile(x = x, reps = reps)[name = string(\"t\")];\n"
	                 "        tensor<fp16, [1, %u]> u = add(x = t, y = t)[name = string(\"u\")];\n"
	                 "        tensor<int32, [1]> ax = const()[name = string(\"ax\"), val = tensor<int32, [1]>([1])];\n"
	                 "        bool kd = const()[name = string(\"kd\"), val = bool(true)];\n"
	                 "        tensor<fp16, [1, 1]> m = reduce_max(x = u, axes = ax, keep_dims = kd)[name = string(\"m\")];\n"
	                 "        tensor<fp16, [1, 1]> tag = const()[name = string(\"tag\"), val = tensor<fp16, [1, 1]>([%u])];\n"
	                 "        tensor<fp16, [1, 1]> out = add(x = m, y = tag)[name = string(\"out\")];\n"
	                 "    } -> (out);\n}\n",
	                 reps, n, n, tag);
	cr_assert_geq(r, 0);
	return s;
}

/* A program with one weight of n fp16 elements (in a blob the daemon copies):
 * out = max(w * x).  The blob, with its 64-byte header at offset 64, goes to
 * *ret_blob (malloc'd) and *ret_len. */
static char *weights_mil(unsigned n, unsigned tag, void **ret_blob, size_t *ret_len)
{
	size_t len = 128 + (size_t)n * 2;
	uint8_t *b = calloc(1, len);
	cr_assert_not_null(b);
	/* docs/mil.md, "Weight files" (little-endian hosts) */
	uint32_t count = 1, version = 2, magic = 0xDEADBEEFu, dtype = 1 /* fp16 */;
	uint64_t size = (uint64_t)n * 2, off = 128;
	memcpy(b, &count, 4);
	memcpy(b + 4, &version, 4);
	memcpy(b + 64, &magic, 4);
	memcpy(b + 68, &dtype, 4);
	memcpy(b + 72, &size, 8);
	memcpy(b + 80, &off, 8);
	for (size_t i = 0; i < n; i++) {
		uint16_t h = (uint16_t)(0x3c00 + (i + tag) % 256);   /* 1.0 and up */
		memcpy(b + 128 + 2 * i, &h, 2);
	}
	char *s = NULL;
	int r = asprintf(&s,
	                 "program(1.3)\n{\n"
	                 "    func main<ios18>(tensor<fp16, [1, 1]> x) {\n"
	                 "        tensor<fp16, [1, %u]> w = const()[name = string(\"w\"), val = tensor<fp16, [1, %u]>(BLOBFILE(path = string(\"@model_path/weights/w.bin\"), offset = uint64(64)))];\n"
	                 "        tensor<fp16, [1, %u]> y = mul(x = w, y = x)[name = string(\"y\")];\n"
	                 "        tensor<int32, [1]> ax = const()[name = string(\"ax\"), val = tensor<int32, [1]>([1])];\n"
	                 "        bool kd = const()[name = string(\"kd\"), val = bool(true)];\n"
	                 "        tensor<fp16, [1, 1]> out = reduce_max(x = y, axes = ax, keep_dims = kd)[name = string(\"out\")];\n"
	                 "    } -> (out);\n}\n",
	                 n, n, n);
	cr_assert_geq(r, 0);
	*ret_blob = b;
	*ret_len = len;
	return s;
}

/* ---- memory of the daemon and its device worker ------------------------------------- */

/* RSS (KiB) of pid and of its children (the device worker). */
static long tree_rss_kb(pid_t pid)
{
	long total = tu_proc_status_kb(pid, "VmRSS");
	if (total < 0)
		return -1;
	DIR *d = opendir("/proc");
	if (!d)
		return total;
	struct dirent *e;
	while ((e = readdir(d))) {
		char *end;
		long p = strtol(e->d_name, &end, 10);
		if (*end || p <= 0)
			continue;
		char path[64];
		snprintf(path, sizeof path, "/proc/%ld/stat", p);
		char *st = tu_read_file(path);
		if (!st)
			continue;
		/* pid (comm) state ppid ...: comm may hold spaces, so after the last ')' */
		const char *rp = strrchr(st, ')');
		long ppid = -1;
		if (rp)
			sscanf(rp + 1, " %*c %ld", &ppid);
		free(st);
		if (ppid == (long)pid) {
			long kb = tu_proc_status_kb((pid_t)p, "VmRSS");
			if (kb > 0)
				total += kb;
		}
	}
	closedir(d);
	return total;
}

static bool have_proc(void)
{
	return access("/proc/self/status", R_OK) == 0;
}

/* One run of p (input x of in_bytes, output of out_bytes) on every
 * connection of cs at once, so that each may take a run arena of its own. */
static void run_everywhere(aneshare_conn **cs, aneshare_program **ps, unsigned n, size_t in_bytes,
                           size_t out_bytes)
{
	aneshare_surface *in[8], *out[8];
	uint32_t t[8];
	cr_assert_leq(n, 8);
	for (unsigned i = 0; i < n; i++) {
		in[i] = h_surface(cs[i], in_bytes);
		out[i] = h_surface(cs[i], out_bytes);
		memset(aneshare_surface_data(in[i]), 0x3c, in_bytes);
	}
	for (unsigned i = 0; i < n; i++) {
		int r = aneshare_run_submit(ps[i], 0, &in[i], 1, &out[i], 1, &t[i]);
		cr_assert_eq(r, 0, "submit: %s (%s)", aneshare_strerror(r), aneshare_last_error(cs[i]));
	}
	for (unsigned i = 0; i < n; i++) {
		int r = aneshare_wait(cs[i], t[i]);
		cr_assert_eq(r, 0, "run: %s (%s)", aneshare_strerror(r), aneshare_last_error(cs[i]));
	}
	for (unsigned i = 0; i < n; i++) {
		aneshare_surface_release(in[i]);
		aneshare_surface_release(out[i]);
	}
}

/* The client of the reproducers: it compiles distinct programs (and
 * runs each on 4 connections at once) until the daemon says `limit`.  The
 * daemon's and its worker's RSS may grow by no more than the limit + 10 %. */
static void program_memory_bounded(const char *const *extra, bool weights)
{
	const uint64_t limit = 192ull << 20;
	const char *args[16] = { "--max-client-program-bytes", "192M" };
	unsigned na = 2;
	for (unsigned i = 0; extra && extra[i]; i++)
		args[na++] = extra[i];
	args[na] = NULL;
	/* Under AddressSanitizer freed memory waits in a quarantine (256 MiB by
	 * default), which would count as the daemon's: keep it small. */
	const char *asan = getenv("ASAN_OPTIONS");
	char opts[512];
	snprintf(opts, sizeof opts, "%s%squarantine_size_mb=4", asan ? asan : "", asan && *asan ? ":" : "");
	setenv("ASAN_OPTIONS", opts, 1);
	h_daemon_start_args(&D, args);
	if (asan)
		setenv("ASAN_OPTIONS", asan, 1);
	else
		unsetenv("ASAN_OPTIONS");

	aneshare_conn *cs[4];
	for (unsigned i = 0; i < 4; i++)
		cs[i] = h_connect(&D, "hog");
	/* A baseline after the daemon served a first small program. */
	aneshare_program *warm;
	char *wm = big_arena_mil(1, 9999);
	cr_assert_eq(aneshare_program_compile(cs[0], wm, NULL, 0, &warm, NULL), 0);
	free(wm);
	aneshare_program *wp[4] = { warm, warm, warm, warm };
	run_everywhere(cs, wp, 1, 32, 2);
	long before = tree_rss_kb(D.pid);
	cr_assert_gt(before, 0);

	unsigned ok = 0;
	int r = 0;
	for (unsigned tag = 0; tag < 200 && r == 0; tag++) {
		aneshare_program *p[4];
		void *blob = NULL;
		size_t len = 0;
		char *mil = weights ? weights_mil(1u << 20, tag, &blob, &len)   /* 2 MiB of weights */
		                    : big_arena_mil(64u << 10, tag);            /* 2 MiB values */
		aneshare_weight w = { "@model_path/weights/w.bin", blob, len };
		/* A handle on each connection (the process is charged once), then
		 * a run on all four at once: each run may take an arena of its
		 * own, which the daemon keeps. */
		for (unsigned i = 0; i < 4 && r == 0; i++)
			r = aneshare_program_compile(cs[i], mil, weights ? &w : NULL, weights ? 1 : 0,
			                             &p[i], NULL);
		free(mil);
		free(blob);
		if (r != 0) {
			cr_assert_eq(r, ELIMIT, "compile %u: %s (%s)", ok, aneshare_strerror(r),
			             aneshare_last_error(cs[0]));
			cr_expect(strstr(aneshare_last_error(cs[0]), "max_client_program_bytes"), "%s",
			          aneshare_last_error(cs[0]));
			break;
		}
		ok++;
		run_everywhere(cs, p, 4, weights ? 2 : 32, 2);
	}
	cr_assert_eq(r, ELIMIT, "%u programs fitted in the limit", ok);
	cr_assert_gt(ok, 0, "not even one program fitted");
	long after = tree_rss_kb(D.pid);
	long grown = after - before;
	fprintf(stderr, "tenants: %u programs, RSS %ld -> %ld KiB (grew %ld KiB, limit %llu KiB)\n",
	        ok, before, after, grown, (unsigned long long)(limit >> 10));
	cr_expect_leq(grown, (long)(limit * 11 / 10 >> 10),
	              "RSS grew by %ld KiB with a %llu KiB program limit", grown,
	              (unsigned long long)(limit >> 10));

	/* The client is refused, not the daemon broken: another client still
	 * compiles and runs. */
	aneshare_conn *other = h_connect(&D, "other");
	h_mm mm;
	aneshare_program *mp = h_compile_mm(other, &mm, NULL);
	aneshare_surface *in = h_surface(other, mm.in_bytes), *out = h_surface(other, mm.out_bytes);
	h_mm_fill_run_check(mp, &mm, in, out, 7);
	aneshare_disconnect(other);
	for (unsigned i = 0; i < 4; i++)
		aneshare_disconnect(cs[i]);
	h_daemon_stop(&D);
}

Test(tenants, program_memory_limit_bounds_rss)
{
	if (!have_proc())
		cr_skip_test("no /proc: RSS cannot be read here");
	program_memory_bounded(NULL, false);
}

Test(tenants, program_memory_limit_bounds_rss_in_worker)
{
	if (!have_proc())
		cr_skip_test("no /proc: RSS cannot be read here");
	const char *args[] = { "--worker", NULL };
	program_memory_bounded(args, false);
}

Test(tenants, weights_memory_limit_bounds_rss)
{
	if (!have_proc())
		cr_skip_test("no /proc: RSS cannot be read here");
	program_memory_bounded(NULL, true);
}

/* ---- one process, many connections ------------------------------------------------ */

/* How many surfaces of size bytes n connections of this process get,
 * taking turns, until each is refused with `limit`. */
static unsigned surfaces_until_limit(aneshare_conn **cs, unsigned n, size_t size,
                                     aneshare_surface **keep, unsigned keep_max)
{
	unsigned got = 0;
	bool refused[NCONN] = { false };
	unsigned n_refused = 0;
	while (n_refused < n) {
		for (unsigned i = 0; i < n; i++) {
			if (refused[i])
				continue;
			aneshare_surface *s;
			int r = aneshare_surface_create(cs[i], size, &s);
			if (r == 0) {
				cr_assert_lt(got, keep_max, "more surfaces than any limit allows");
				keep[got++] = s;
			} else {
				cr_assert_eq(r, ELIMIT, "%s (%s)", aneshare_strerror(r), aneshare_last_error(cs[i]));
				refused[i] = true;
				n_refused++;
			}
		}
	}
	return got;
}

static void release_all(aneshare_surface **s, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		cr_assert_eq(aneshare_surface_release(s[i]), 0);
}

Test(tenants, fifty_connections_get_no_more_surfaces_than_one)
{
	/* The count, then the bytes, are the limit. */
	const char *args[] = { "--max-surfaces", "6", "--max-total-surface-bytes", "1M", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *cs[NCONN];
	for (unsigned i = 0; i < NCONN; i++)
		cs[i] = h_connect(&D, "many");
	aneshare_surface *keep[64];

	unsigned one = surfaces_until_limit(cs, 1, 4096, keep, 64);
	cr_expect_eq(one, 6);
	cr_expect(strstr(aneshare_last_error(cs[0]), "surfaces on this connection"), "%s",
	          aneshare_last_error(cs[0]));
	release_all(keep, one);
	unsigned fifty = surfaces_until_limit(cs, NCONN, 4096, keep, 64);
	cr_expect_eq(fifty, one, "50 connections got %u surfaces, one got %u", fifty, one);
	cr_expect(strstr(aneshare_last_error(cs[NCONN - 1]), "max_client_surfaces"), "%s",
	          aneshare_last_error(cs[NCONN - 1]));
	release_all(keep, fifty);

	one = surfaces_until_limit(cs, 1, 256 << 10, keep, 64);
	cr_expect_eq(one, 4);
	release_all(keep, one);
	fifty = surfaces_until_limit(cs, NCONN, 256 << 10, keep, 64);
	cr_expect_eq(fifty, one, "50 connections got %u surfaces of 256 KiB, one got %u", fifty, one);
	cr_expect(strstr(aneshare_last_error(cs[0]), "max_total_surface_bytes"), "%s",
	          aneshare_last_error(cs[0]));
	release_all(keep, fifty);

	/* What was released is the client's again. */
	unsigned again = surfaces_until_limit(cs, 1, 4096, keep, 64);
	cr_expect_eq(again, 6);
	release_all(keep, again);
	for (unsigned i = 0; i < NCONN; i++)
		aneshare_disconnect(cs[i]);
	h_daemon_stop(&D);
}

/* Handles of one program (the same text) that n connections get. */
static unsigned handles_until_limit(aneshare_conn **cs, unsigned n, const char *mil,
                                    aneshare_program **keep, unsigned keep_max)
{
	unsigned got = 0, n_refused = 0;
	bool refused[NCONN] = { false };
	while (n_refused < n) {
		for (unsigned i = 0; i < n; i++) {
			if (refused[i])
				continue;
			aneshare_program *p;
			int r = aneshare_program_compile(cs[i], mil, NULL, 0, &p, NULL);
			if (r == 0) {
				cr_assert_lt(got, keep_max);
				keep[got++] = p;
			} else {
				cr_assert_eq(r, ELIMIT, "%s (%s)", aneshare_strerror(r), aneshare_last_error(cs[i]));
				refused[i] = true;
				n_refused++;
			}
		}
	}
	return got;
}

Test(tenants, fifty_connections_get_no_more_programs_than_one)
{
	const char *args[] = { "--max-programs", "3", "--max-client-program-bytes", "40M", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *cs[NCONN];
	for (unsigned i = 0; i < NCONN; i++)
		cs[i] = h_connect(&D, "many");
	aneshare_program *keep[64];

	/* Handles of one program. */
	char *mil = h_square_mm_mil(8, "main");
	unsigned one = handles_until_limit(cs, 1, mil, keep, 64);
	cr_expect_eq(one, 3);
	for (unsigned i = 0; i < one; i++)
		aneshare_program_release(keep[i]);
	unsigned fifty = handles_until_limit(cs, NCONN, mil, keep, 64);
	cr_expect_eq(fifty, one, "50 connections got %u handles, one got %u", fifty, one);
	cr_expect(strstr(aneshare_last_error(cs[0]), "max_client_programs"), "%s",
	          aneshare_last_error(cs[0]));
	for (unsigned i = 0; i < fifty; i++)
		aneshare_program_release(keep[i]);
	free(mil);

	/* Program memory: distinct programs of about 16 MiB each (4 run arenas
	 * of 4 MiB) until the 40 MiB are used. */
	unsigned got[2];
	for (unsigned round = 0; round < 2; round++) {
		unsigned n = round == 0 ? 1 : NCONN, k = 0;
		int r = 0;
		for (unsigned tag = 0; tag < 64 && r == 0; tag++) {
			char *m = big_arena_mil(32u << 10, tag);
			r = aneshare_program_compile(cs[tag % n], m, NULL, 0, &keep[k], NULL);
			free(m);
			if (r == 0)
				k++;
			else
				cr_assert_eq(r, ELIMIT, "%s (%s)", aneshare_strerror(r),
				             aneshare_last_error(cs[tag % n]));
		}
		cr_assert_eq(r, ELIMIT);
		got[round] = k;
		for (unsigned i = 0; i < k; i++)
			aneshare_program_release(keep[i]);
	}
	cr_expect_gt(got[0], 1);
	cr_expect_eq(got[1], got[0], "50 connections held %u programs, one held %u", got[1], got[0]);
	for (unsigned i = 0; i < NCONN; i++)
		aneshare_disconnect(cs[i]);
	h_daemon_stop(&D);
}

/* A program shared by two client processes is charged to each (and once to
 * the daemon): a second process with its own limit compiles what the first
 * holds, and a third whose limit it would exceed gets `limit`. */
static int hold_program(void *arg, int ready_fd)
{
	const char *sock = arg;
	aneshare_conn *c;
	if (aneshare_connect(sock, "holder", &c) < 0)
		return 1;
	char *m = big_arena_mil(16u << 10, 1);
	aneshare_program *p;
	int r = aneshare_program_compile(c, m, NULL, 0, &p, NULL);
	free(m);
	if (r < 0)
		return 2;
	if (write(ready_fd, "x", 1) != 1)
		return 3;
	pause();   /* killed by the test */
	return 0;
}

Test(tenants, shared_program_is_charged_to_each_holder)
{
	const char *args[] = { "--max-client-program-bytes", "12M", NULL };
	h_daemon_start_args(&D, args);
	pid_t child = h_spawn(hold_program, D.sock);
	aneshare_conn *c = h_connect(&D, "second");
	char *m = big_arena_mil(16u << 10, 1);
	aneshare_program *p;
	bool cached = false;
	int r = aneshare_program_compile(c, m, NULL, 0, &p, &cached);
	cr_assert_eq(r, 0, "%s (%s)", aneshare_strerror(r), aneshare_last_error(c));
	cr_expect(cached);
	/* A second handle in the same process costs no more memory. */
	aneshare_program *p2;
	cr_assert_eq(aneshare_program_compile(c, m, NULL, 0, &p2, NULL), 0);
	/* But another program that would take this process over 12 MiB does. */
	char *m2 = big_arena_mil(16u << 10, 2);
	aneshare_program *p3;
	r = aneshare_program_compile(c, m2, NULL, 0, &p3, NULL);
	cr_expect_eq(r, ELIMIT, "%s (%s)", aneshare_strerror(r), aneshare_last_error(c));
	free(m);
	free(m2);
	kill(child, SIGKILL);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- visibility: status, status --json, top ------------------------------------------- */

static const struct aneshare_status_process *find_process(const aneshare_status *st, uint64_t pid)
{
	for (uint32_t i = 0; i < st->n_processes; i++)
		if (st->process_list[i].pid == pid)
			return &st->process_list[i];
	return NULL;
}

static const struct aneshare_status_total *find_total(const aneshare_status *st, const char *res)
{
	for (uint32_t i = 0; i < st->n_totals; i++)
		if (!strcmp(st->total_list[i].resource, res))
			return &st->total_list[i];
	return NULL;
}

Test(tenants, status_lists_each_client_process)
{
	const char *args[] = { "--max-client-program-bytes", "64M", "--max-daemon-surfaces", "100", NULL };
	h_daemon_start_args(&D, args);
	pid_t child = h_spawn(hold_program, D.sock);
	aneshare_conn *cs[3];
	for (unsigned i = 0; i < 3; i++)
		cs[i] = h_connect(&D, "status-probe");
	aneshare_surface *s1 = h_surface(cs[0], 4096), *s2 = h_surface(cs[1], 8192);
	h_mm mm;
	aneshare_program *p = h_compile_mm(cs[2], &mm, NULL);
	aneshare_surface *in = h_surface(cs[2], mm.in_bytes), *out = h_surface(cs[2], mm.out_bytes);
	h_mm_fill_run_check(p, &mm, in, out, 3);

	/* Asked on the connection that saw the run's reply: the daemon has
	 * delivered that run's completion (its job count) before it answers
	 * there; another connection may ask before (conn.c, sync_direct). */
	aneshare_status *st = h_status(cs[2]);
	cr_assert_eq(st->processes_total, 2, "%u processes", st->processes_total);
	const struct aneshare_status_process *me = find_process(st, (uint64_t)getpid());
	cr_assert_not_null(me, "this process is not listed");
	cr_expect_str_eq(me->name, "status-probe");
	cr_expect_eq(me->connections, 3);
	cr_expect_eq(me->surfaces, 4);
	cr_expect_eq(me->surface_bytes, 4096 + 8192 + mm.in_bytes + mm.out_bytes);
	cr_expect_eq(me->programs, 1);
	cr_expect_gt(me->program_bytes, 0);
	cr_expect_eq(me->fds, 4);   /* an fd kept per memfd surface (state/surface.c) */
	cr_expect_eq(me->runs, 1);
	cr_expect_eq(me->jobs, 0);
	const struct aneshare_status_process *other = find_process(st, (uint64_t)child);
	cr_assert_not_null(other, "the child is not listed");
	cr_expect_str_eq(other->name, "holder");
	cr_expect_eq(other->programs, 1);
	cr_expect_eq(other->surfaces, 0);
	/* The daemon's totals are the sums, against their limits. */
	const struct aneshare_status_total *t = find_total(st, "surfaces");
	cr_assert_not_null(t);
	cr_expect_eq(t->used, 4);
	cr_expect_eq(t->limit, 100);
	cr_expect_eq(t->client_limit, 1024);
	t = find_total(st, "program_bytes");
	cr_assert_not_null(t);
	cr_expect_eq(t->used, me->program_bytes + other->program_bytes);
	cr_expect_eq(t->client_limit, 64u << 20);
	t = find_total(st, "programs");
	cr_assert_not_null(t);
	cr_expect_eq(t->used, 2);
	aneshare_status_free(st);

	/* What a client releases leaves its line at once. */
	aneshare_surface_release(s1);
	aneshare_surface_release(s2);
	aneshare_program_release(p);
	st = h_status(cs[0]);
	me = find_process(st, (uint64_t)getpid());
	cr_assert_not_null(me);
	cr_expect_eq(me->surfaces, 2);
	cr_expect_eq(me->programs, 0);
	cr_expect_eq(me->program_bytes, 0);
	aneshare_status_free(st);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	for (unsigned i = 0; i < 3; i++)
		aneshare_disconnect(cs[i]);
	h_daemon_stop(&D);
}

/* Run a shell command, return its stdout (malloc'd) and exit status. */
static char *run_cmd(const char *cmd, int *ret_status)
{
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p, "popen %s", cmd);
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	cr_assert_not_null(buf);
	size_t n;
	while ((n = fread(buf + len, 1, cap - 1 - len, p)) > 0) {
		len += n;
		if (len + 1 >= cap) {
			cap *= 2;
			buf = realloc(buf, cap);
			cr_assert_not_null(buf);
		}
	}
	buf[len] = '\0';
	*ret_status = pclose(p);
	return buf;
}

Test(tenants, status_json_parses)
{
	const char *cli = getenv("ANESHARE_CLI");
	cr_assert_not_null(cli, "ANESHARE_CLI is not set (tests/meson.build sets it)");
	if (system("python3 -c 'import json' 2>/dev/null") != 0)
		cr_skip_test("no python3 to parse JSON with");
	h_daemon_start(&D);
	aneshare_conn *c = h_connect(&D, "json \"probe\"\\");
	aneshare_surface *s = h_surface(c, 12345);
	char cmd[1024];
	int status;
	/* Parse the whole output as JSON and pick out this process's line. */
	snprintf(cmd, sizeof cmd,
	         "'%s' --socket '%s' status --json | python3 -c '"
	         "import json, sys\n"
	         "d = json.load(sys.stdin)\n"
	         "p = [p for p in d[\"processes\"] if p[\"pid\"] == %ld][0]\n"
	         "t = {t[\"resource\"]: t for t in d[\"totals\"]}\n"
	         "print(p[\"name\"], p[\"surfaces\"], p[\"surface_bytes\"], p[\"connections\"], "
	         "t[\"surface_bytes\"][\"used\"], t[\"surface_bytes\"][\"limit\"] > 0, d[\"processes_total\"])'",
	         cli, D.sock, (long)getpid());
	char *out = run_cmd(cmd, &status);
	cr_assert_eq(status, 0, "status --json did not parse: %s", out);
	cr_expect_str_eq(out, "json \"probe\"\\ 1 12345 1 12345 True 2\n");
	free(out);
	aneshare_surface_release(s);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* Read the pty until needle has appeared n times or timeout_ms pass; the
 * count seen. */
static unsigned pty_wait_for(int master, const char *needle, unsigned n, int timeout_ms, char *acc,
                             size_t acc_cap, size_t *acc_len)
{
	int64_t end = tu_now_ms() + (int64_t)timeout_ms * h_slow();
	unsigned seen = 0;
	while (seen < n && tu_now_ms() < end) {
		struct pollfd p = { .fd = master, .events = POLLIN };
		if (poll(&p, 1, 100) <= 0)
			continue;
		char buf[4096];
		ssize_t r = read(master, buf, sizeof buf);
		if (r <= 0)
			break;
		if (*acc_len + (size_t)r >= acc_cap) {   /* keep the tail */
			size_t drop = *acc_len + (size_t)r - acc_cap / 2;
			drop = drop > *acc_len ? *acc_len : drop;
			memmove(acc, acc + drop, *acc_len - drop);
			*acc_len -= drop;
		}
		memcpy(acc + *acc_len, buf, (size_t)r);
		*acc_len += (size_t)r;
		acc[*acc_len] = '\0';
		seen = 0;
		for (const char *q = acc; (q = strstr(q, needle)); q++)
			seen++;
	}
	return seen;
}

static int wait_exit(pid_t pid, int timeout_ms)
{
	int64_t end = tu_now_ms() + (int64_t)timeout_ms * h_slow();
	int status;
	while (tu_now_ms() < end) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return status;
		tu_pause_ms(20);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -1;
}

Test(tenants, top_shows_clients_and_quits_restoring_the_terminal)
{
	const char *cli = getenv("ANESHARE_CLI");
	cr_assert_not_null(cli, "ANESHARE_CLI is not set (tests/meson.build sets it)");
	h_daemon_start(&D);
	aneshare_conn *c = h_connect(&D, "top-probe");
	aneshare_surface *s = h_surface(c, 4096);
	/* Quit with q, then with Ctrl-C (a byte in raw mode, not a signal). */
	const char keys[] = { 'q', 3 };
	for (unsigned k = 0; k < 2; k++) {
		int master;
		struct winsize ws = { .ws_row = 50, .ws_col = 160 };
		pid_t pid = forkpty(&master, NULL, NULL, &ws);
		cr_assert_geq(pid, 0, "forkpty: %s", strerror(errno));
		if (pid == 0) {
			execl(cli, cli, "--socket", D.sock, "top", "--interval", "0.1", (char *)NULL);
			_exit(127);
		}
		static char acc[1 << 16];
		size_t len = 0;
		/* Two screens: it refreshes. */
		unsigned seen = pty_wait_for(master, "top-probe", 2, 10000, acc, sizeof acc - 1, &len);
		cr_assert_geq(seen, 2, "top did not show the client twice: %s", acc);
		struct termios tio;
		cr_assert_eq(tcgetattr(master, &tio), 0);
		cr_expect_eq(tio.c_lflag & (ICANON | ECHO), 0, "top runs without raw mode");
		cr_assert_eq(write(master, &keys[k], 1), 1);
		int status = wait_exit(pid, 5000);
		cr_assert(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
		          "top did not exit 0 on key %d (status %d)", keys[k], status);
		(void)pty_wait_for(master, "\033[?1049l", 1, 1000, acc, sizeof acc - 1, &len);
		cr_expect(strstr(acc, "\033[?1049l"), "top did not leave the alternate screen");
		cr_assert_eq(tcgetattr(master, &tio), 0);
		cr_expect_eq(tio.c_lflag & (ICANON | ECHO | ISIG), (tcflag_t)(ICANON | ECHO | ISIG),
		             "the terminal was not restored (lflag %#x)", (unsigned)tio.c_lflag);
		close(master);
	}
	aneshare_surface_release(s);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* The jobs this process has queued, as another process (the CLI) sees them
 * in status --json; -1 if it could not tell. */
static long jobs_seen(const char *cli, const char *sock)
{
	char cmd[1024];
	snprintf(cmd, sizeof cmd,
	         "'%s' --socket '%s' status --json | python3 -c '"
	         "import json, sys\n"
	         "d = json.load(sys.stdin)\n"
	         "p = [p for p in d[\"processes\"] if p[\"pid\"] == %ld]\n"
	         "t = [t for t in d[\"totals\"] if t[\"resource\"] == \"jobs\"][0]\n"
	         "print(p[0][\"jobs\"] if p else 0, t[\"used\"])'",
	         cli, sock, (long)getpid());
	int status;
	char *out = run_cmd(cmd, &status);
	long mine = -1, total = -1;
	if (status != 0 || sscanf(out, "%ld %ld", &mine, &total) != 2)
		mine = -1;
	free(out);
	cr_expect_leq(mine, total);
	return mine;
}

Test(tenants, fifty_connections_queue_no_more_jobs_than_one)
{
	const char *cli = getenv("ANESHARE_CLI");
	cr_assert_not_null(cli);
	if (system("python3 -c 'import json' 2>/dev/null") != 0)
		cr_skip_test("no python3 to parse JSON with");
	const char *args[] = { "--max-client-jobs", "4", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *cs[NCONN];
	aneshare_program *ps[NCONN];
	aneshare_surface *sx[NCONN], *sy[NCONN], *sz[NCONN];
	char *mil = h_square_mm_mil(384, "main");
	for (unsigned i = 0; i < NCONN; i++) {
		cs[i] = h_connect(&D, "jobs");
		cr_assert_eq(aneshare_program_compile(cs[i], mil, NULL, 0, &ps[i], NULL), 0);
		sx[i] = h_surface(cs[i], 384 * 384 * 2);
		sy[i] = h_surface(cs[i], 384 * 384 * 2);
		sz[i] = h_surface(cs[i], 384 * 384 * 2);
	}
	free(mil);
	uint32_t t[NCONN][3];
	for (unsigned k = 0; k < 3; k++)
		for (unsigned i = 0; i < NCONN; i++) {
			aneshare_surface *in[2] = { sx[i], sy[i] };
			cr_assert_eq(aneshare_run_submit(ps[i], 0, in, 2, &sz[i], 1, &t[i][k]), 0);
		}
	/* 150 runs submitted at once: the daemon holds at most 4 as jobs. */
	long most = -1;
	for (unsigned n = 0; n < 6; n++) {
		long j = jobs_seen(cli, D.sock);
		cr_expect_geq(j, 0, "status --json could not be read");
		cr_expect_leq(j, 4, "this process had %ld jobs queued, its limit is 4", j);
		if (j > most)
			most = j;
	}
	for (unsigned i = 0; i < NCONN; i++)
		for (unsigned k = 0; k < 3; k++) {
			int r = aneshare_wait(cs[i], t[i][k]);
			cr_expect_eq(r, 0, "run: %s (%s)", aneshare_strerror(r), aneshare_last_error(cs[i]));
		}
	fprintf(stderr, "tenants: at most %ld jobs seen queued (limit 4)\n", most);
	for (unsigned i = 0; i < NCONN; i++)
		aneshare_disconnect(cs[i]);
	h_daemon_stop(&D);
}

/* ---- fds, with a device worker ------------------------------------------------------- */

/* Another client process: a memfd surface imported, surfaces created, a
 * checked run. */
static int second_client(void *arg, int ready_fd)
{
	const char *sock = arg;
	aneshare_conn *c;
	if (aneshare_connect(sock, "second", &c) < 0)
		return 1;
	aneshare_program *p;
	h_mm mm;
	char *mil = tu_read_file(ANES_SOURCE_DIR "/examples/dynamic_matmul.mil");
	if (!mil || aneshare_program_compile(c, mil, NULL, 0, &p, NULL) < 0 || !h_mm_from_program(p, &mm))
		return 2;
	free(mil);
	aneshare_surface *in, *out, *imp;
	if (aneshare_surface_create(c, mm.in_bytes, &in) < 0 ||
	    aneshare_surface_create(c, mm.out_bytes, &out) < 0)
		return 3;
#ifdef __linux__
	int fd = memfd_create("second", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0 || ftruncate(fd, 4096) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0 ||
	    aneshare_surface_import(c, fd, &imp) < 0)
		return 4;
	close(fd);
#else
	if (aneshare_surface_create(c, 4096, &imp) < 0)   /* no memfds to import */
		return 4;
#endif
	h_mm_fill(&mm, aneshare_surface_data(in), 5);
	if (aneshare_run(p, 0, &in, 1, &out, 1) < 0)
		return 5;
	float *xf = malloc(mm.ic * (mm.seq + mm.oc) * sizeof(float));
	float *yf = malloc(mm.oc * mm.seq * sizeof(float));
	double err = tu_mm_error(&mm, aneshare_surface_data(in), aneshare_surface_data(out), xf, yf);
	free(xf);
	free(yf);
	if (!(err <= H_MM_TOL))
		return 6;
	if (write(ready_fd, "x", 1) != 1)
		return 7;
	aneshare_disconnect(c);
	return 0;
}

Test(tenants, surfaces_until_refused_leave_fds_for_others)
{
#ifndef __linux__
	cr_skip_test("surfaces are memfds (with an fd kept per surface) only on Linux");
#endif
	/* A small fd limit for the daemon (inherited): 512 - 256 connections -
	 * 64 leaves 192 fds for surfaces, 96 per client.  The hard limit too:
	 * the daemon raises its soft limit to the hard one at start.  (Put
	 * back after the start only where this process may raise it.) */
	struct rlimit old, low;
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
	low.rlim_cur = low.rlim_max = 512;
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
	const char *args[] = { "--worker", NULL };
	h_daemon_start_args(&D, args);
	(void)setrlimit(RLIMIT_NOFILE, &old);

	aneshare_conn *c = h_connect(&D, "fd-hog");
	aneshare_surface **keep = calloc(1024, sizeof *keep);
	unsigned n = 0;
	int r;
	while ((r = aneshare_surface_create(c, 4096, &keep[n])) == 0)
		cr_assert_lt(++n, 1024, "no limit before 1024 surfaces");
	cr_assert_eq(r, ELIMIT, "%s (%s)", aneshare_strerror(r), aneshare_last_error(c));
	cr_expect(strstr(aneshare_last_error(c), "max_client_fds"), "%s", aneshare_last_error(c));
	cr_expect_eq(n, 96);
	/* Another process still connects, imports, creates and runs. */
	pid_t child = h_spawn(second_client, D.sock);
	int status;
	cr_assert_eq(waitpid(child, &status, 0), child);
	cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "second client: status %#x", status);
	for (unsigned i = 0; i < n; i++)
		aneshare_surface_release(keep[i]);
	free(keep);
	aneshare_disconnect(c);
	h_daemon_stop(&D);
}

/* ---- hello ------------------------------------------------------------------------------ */

typedef struct hello_limits {
	unsigned n;
	const char *keys[32];
	uint64_t want[32];
	bool seen[32];
	uint64_t got[32];
} hello_limits;

static void read_hello_limits(const struct msgpack_object *result, void *ud)
{
	hello_limits *h = ud;
	const msgpack_object *lim;
	if (anes_mp_map(result, "limits", 128, &lim) < 0)
		return;
	for (unsigned i = 0; i < h->n; i++)
		h->seen[i] = anes_mp_u64(lim, h->keys[i], UINT64_MAX, &h->got[i]) == 0;
}

Test(tenants, hello_announces_the_client_and_daemon_limits)
{
	const char *args[] = { "--max-client-surfaces", "11", "--max-daemon-surfaces", "12",
	                       "--max-client-fds", "13", "--max-daemon-fds", "14",
	                       "--max-client-programs", "15", "--max-daemon-programs", "16",
	                       "--max-client-program-bytes", "17M", "--max-daemon-program-bytes", "18M",
	                       "--max-client-jobs", "19", "--max-daemon-jobs", "20",
	                       "--max-total-surface-bytes", "21M", "--max-daemon-surface-bytes", "22M",
	                       "--max-connections", "23", "--max-frame", "1M",
	                       "--max-client-input-bytes", "24M", "--max-client-unsent-bytes", "25M",
	                       "--max-daemon-unsent-bytes", "26M", "--max-uid-surfaces", "27",
	                       "--max-uid-surface-bytes", "28M", "--max-uid-fds", "9",
	                       "--max-uid-programs", "29", "--max-uid-program-bytes", "30M",
	                       "--max-uid-jobs", "31", "--max-uid-input-bytes", "32M",
	                       "--max-uid-unsent-bytes", "33M", NULL };
	h_daemon_start_args(&D, args);
	hello_limits h = { .n = 24,
		.keys = { "max_client_surfaces", "max_daemon_surfaces", "max_client_fds", "max_daemon_fds",
		          "max_client_programs", "max_daemon_programs", "max_client_program_bytes",
		          "max_daemon_program_bytes", "max_client_jobs", "max_daemon_jobs",
		          "max_total_surface_bytes", "max_daemon_surface_bytes", "max_connections",
		          "max_client_input_bytes", "max_client_unsent_bytes", "max_daemon_unsent_bytes",
		          "max_uid_surfaces", "max_uid_surface_bytes", "max_uid_fds", "max_uid_programs",
		          "max_uid_program_bytes", "max_uid_jobs", "max_uid_input_bytes", "max_uid_unsent_bytes" },
		.want = { 11, 12, 13, 14, 15, 16, 17u << 20, 18u << 20, 19, 20, 21u << 20, 22u << 20, 23,
		          24u << 20, 25u << 20, 26u << 20, 27, 28u << 20, 9, 29, 30u << 20, 31, 32u << 20,
		          33u << 20 } };
	int fd = h_raw_connect(D.sock);
	cr_assert_geq(fd, 0);
	cr_assert_eq(h_raw_send_hello(fd, 1), 0);
	cr_assert_eq(h_raw_response_cb(fd, 1, 5000, read_hello_limits, &h), 0);
	close(fd);
	for (unsigned i = 0; i < h.n; i++) {
		cr_expect(h.seen[i], "hello does not announce %s", h.keys[i]);
		cr_expect_eq(h.got[i], h.want[i], "%s = %llu, set to %llu", h.keys[i],
		             (unsigned long long)h.got[i], (unsigned long long)h.want[i]);
	}
	h_daemon_stop(&D);
}

/* ---- buffers: input memory and unsent output ------------------------------------ */

/* Another process sends a whole 500 KiB frame and is answered (while the
 * test process's connections wait for its own input limit). */
static int large_frame_client(void *arg, int ready_fd)
{
	const char *sock = arg;
	int fd = h_raw_open(sock);
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	h_raw_padded_frame(&sb, 7, "status", 500u << 10);
	int r = h_raw_send(fd, sb.data, sb.size, NULL, 0) == 0 && h_raw_response(fd, 7, 10000) == 0 ? 0 : 1;
	msgpack_sbuffer_destroy(&sb);
	close(fd);
	(void)!write(ready_fd, r ? "n" : "y", 1);
	return r;
}

/* Receive memory for frames over 64 KiB: one connection with 100 KiB of a
 * 500 KiB frame holds the frame's reservation (436 KiB); 50 connections
 * doing the same hold exactly as much, the process's limit (max_frame + 8
 * by default): the other 49 are not read and wait, while another process
 * still gets its frame's memory at once.  The first frame completed, one
 * waiter gets the room. */
Test(tenants, fifty_connections_get_no_more_input_memory_than_one)
{
	const char *args[] = { "--max-frame", "512K", "--max-input-bytes", "64M", NULL };
	h_daemon_start_args(&D, args);
	int obs = h_raw_open(D.sock);
	int fd[NCONN];
	msgpack_sbuffer sb[NCONN];
	for (unsigned i = 0; i < NCONN; i++) {
		fd[i] = h_raw_open(D.sock);
		msgpack_sbuffer_init(&sb[i]);
		h_raw_padded_frame(&sb[i], 10 + i, "status", 500u << 10);   /* msgids < 128: one size */
	}
	size_t need = sb[0].size - (64u << 10);

	/* One connection. */
	cr_assert_eq(h_raw_send(fd[0], sb[0].data, 100u << 10, NULL, 0), 0);
	h_raw_st st = { 0 };
	for (int k = 0; k < 1000 * h_slow() && st.my_input < need; k++) {
		st = h_raw_status(obs);
		if (st.my_input < need)
			poll(NULL, 0, 10);
	}
	cr_assert_eq(st.my_input, need, "one connection holds %llu", (unsigned long long)st.my_input);
	uint64_t one = st.my_input;

	/* 49 more: all wait, the process still holds one frame's memory. */
	for (unsigned i = 1; i < NCONN; i++)
		cr_assert_eq(h_raw_send(fd[i], sb[i].data, 100u << 10, NULL, 0), 0);
	st = h_raw_wait_input_waiting(obs, NCONN - 1);
	cr_assert_eq(st.my_input, one, "50 connections hold %llu, one held %llu",
	             (unsigned long long)st.my_input, (unsigned long long)one);
	cr_assert_eq(st.in_bytes, one);

	/* Another process is not held up by them. */
	int pipefd[2];
	cr_assert_eq(pipe(pipefd), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(pipefd[0]);
		_exit(large_frame_client(D.sock, pipefd[1]));
	}
	close(pipefd[1]);
	char ok = 0;
	cr_assert_eq(read(pipefd[0], &ok, 1), 1);
	cr_assert_eq(ok, 'y', "another process's large frame was not answered");
	close(pipefd[0]);
	int wst;
	cr_assert_eq(waitpid(pid, &wst, 0), pid);

	/* The first frame completes and is answered; a waiter gets its room. */
	cr_assert_eq(h_raw_send(fd[0], sb[0].data + (100u << 10), sb[0].size - (100u << 10), NULL, 0), 0);
	cr_assert_eq(h_raw_response(fd[0], 10, 10000), 0);
	for (int k = 0; k < 1000 * h_slow(); k++) {
		st = h_raw_status(obs);
		if (st.in_waiting == NCONN - 2 && st.my_input == one)
			break;
		poll(NULL, 0, 10);
	}
	cr_assert_eq(st.in_waiting, NCONN - 2);
	cr_assert_eq(st.my_input, one, "after the first frame: %llu", (unsigned long long)st.my_input);
	for (unsigned i = 0; i < NCONN; i++) {
		close(fd[i]);
		msgpack_sbuffer_destroy(&sb[i]);
	}
	/* All given back once the connections are gone. */
	for (int k = 0; k < 1000 * h_slow() && (st.in_bytes || st.in_waiting); k++) {
		poll(NULL, 0, 10);
		st = h_raw_status(obs);
	}
	cr_assert_eq(st.in_bytes, 0);
	cr_assert_eq(st.my_input, 0);
	close(obs);
	h_daemon_stop(&D);
}

/* Pipeline n status requests on fd without reading anything. */
static void pipeline_status(int fd, unsigned n, uint32_t first)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	for (unsigned i = 0; i < n; i++)
		h_raw_frame(&sb, first + i, "status", NULL, 0, 0);
	cr_assert_eq(h_raw_send(fd, sb.data, sb.size, NULL, 0), 0);
	msgpack_sbuffer_destroy(&sb);
}

#ifdef __linux__
#include <sys/ioctl.h>
#include <linux/sockios.h>

/* Until the daemon has read everything sent on these connections (their
 * send queues are empty): it handles what it reads at once. */
static void wait_read(const int *fd, unsigned n)
{
	for (int k = 0; k < 2000 * h_slow(); k++) {
		unsigned left = 0;
		for (unsigned i = 0; i < n; i++) {
			int q = 0;
			if (ioctl(fd[i], SIOCOUTQ, &q) == 0 && q > 0)
				left++;
		}
		if (!left)
			return;
		poll(NULL, 0, 10);
	}
	cr_assert_fail("the daemon did not read all the requests");
}

/* Unsent responses: connections of this process pipeline `status` and
 * never read.  Per connection nothing stops them (max_unsent_bytes and the
 * drop rules lifted); the process's 1 MiB does: one connection is dropped
 * once its queue would pass it, and 50 connections together hold no more
 * (the ones holding most dropped, logged with the limit's name and
 * counted).  Another process is answered throughout. */
Test(tenants, fifty_connections_get_no_more_unsent_output_than_one)
{
	const char *args[] = { "--max-frame", "512K", "--max-client-unsent-bytes", "1M",
		               "--max-unsent-bytes", "32M", "--drop-unsent-bytes", "32M",
		               "--drop-unsent-seconds", "3600", "--drop-unsent-hard-bytes", "32M", NULL };
	h_daemon_start_args(&D, args);
	int obs = h_raw_open(D.sock);

	/* One connection: 2,400 status replies (over 1 KiB each) cannot all
	 * wait for it. */
	int one = h_raw_open(D.sock);
	pipeline_status(one, 2400, 10);
	wait_read(&one, 1);
	/* Read is not yet handled (the loop defers connections it kicked):
	 * poll, bounded, until it is dropped; the limit holds at every look. */
	h_raw_st st;
	int64_t deadline = tu_now_ms() + 10000 * h_slow();
	for (;;) {
		st = h_raw_status(obs);
		cr_assert_leq(st.my_unsent, 1u << 20);
		if (st.dropped)
			break;
		cr_assert_lt(tu_now_ms(), deadline, "one connection over its process's limit was not dropped");
		tu_pause_ms(5);
	}
	cr_assert_eq(st.dropped, 1);
	close(one);

	/* 50 connections: 800 each, far over 1 MiB together beyond what their
	 * sockets take. */
	int fd[NCONN];
	for (unsigned i = 0; i < NCONN; i++)
		fd[i] = h_raw_open(D.sock);
	for (unsigned i = 0; i < NCONN; i++)
		pipeline_status(fd[i], 800, 10);
	wait_read(fd, NCONN);
	/* Read is not yet handled (the loop defers connections it kicked):
	 * poll, bounded, until one of the 50 is dropped; the limit holds at
	 * every look. */
	deadline = tu_now_ms() + 10000 * h_slow();
	for (;;) {
		st = h_raw_status(obs);
		cr_assert_leq(st.my_unsent, 1u << 20, "50 connections hold %llu unsent bytes, the limit is 1 MiB",
		              (unsigned long long)st.my_unsent);
		cr_assert_leq(st.total_unsent, 1u << 20);
		if (st.dropped > 1)
			break;
		cr_assert_lt(tu_now_ms(), deadline, "no connection of the 50 was dropped");
		tu_pause_ms(5);
	}
	fprintf(stderr, "tenants: 50 connections: %llu unsent bytes held, %llu dropped\n",
	        (unsigned long long)st.my_unsent, (unsigned long long)st.dropped - 1);
	char *log = NULL;
	{
		FILE *f = fopen(D.log, "r");
		cr_assert(f);
		size_t cap = 1 << 20, len = 0;
		log = calloc(1, cap + 1);
		cr_assert(log);
		len = fread(log, 1, cap, f);
		log[len] = '\0';
		fclose(f);
	}
	cr_assert(strstr(log, "max_client_unsent_bytes"), "%s", log);
	free(log);
	for (unsigned i = 0; i < NCONN; i++)
		close(fd[i]);
	close(obs);
	h_daemon_stop(&D);
}
#endif

/* Surface fds kept with a device worker (max_client_fds): 50 connections
 * get no more than one. */
Test(tenants, fifty_connections_get_no_more_surface_fds_than_one)
{
	const char *args[] = { "--worker", "--max-client-fds", "5", "--max-surfaces", "100", NULL };
	h_daemon_start_args(&D, args);
	aneshare_conn *cs[NCONN];
	for (unsigned i = 0; i < NCONN; i++)
		cs[i] = h_connect(&D, "fds");
	aneshare_surface *keep[64];
	unsigned one = surfaces_until_limit(cs, 1, 4096, keep, 64);
	cr_expect_eq(one, 5);
	cr_expect(strstr(aneshare_last_error(cs[0]), "max_client_fds"), "%s", aneshare_last_error(cs[0]));
	release_all(keep, one);
	unsigned fifty = surfaces_until_limit(cs, NCONN, 4096, keep, 64);
	cr_expect_eq(fifty, one, "50 connections kept %u fds, one kept %u", fifty, one);
	release_all(keep, fifty);
	for (unsigned i = 0; i < NCONN; i++)
		aneshare_disconnect(cs[i]);
	h_daemon_stop(&D);
}

/* ---- per uid: two processes of one user against the max_uid_* limits ------------- */

typedef struct uid_op {
	const char *sock;
	int kind;            /* 's': surfaces of size; 'p': handles of mil; 'c': distinct
	                      * big programs; 'i': a large frame; 'o': pipelined status */
	size_t size;
	const char *mil;
	const char *key;     /* the limit the refusal must name */
} uid_op;

/* In the child: do op until refused.  Exit: the count got, + 200 if the
 * refusal did not name op->key, 250 on any other failure. */
/* Read rc up to the response to msgid (each frame within timeout_ms x
 * h_slow(); 0: only what has come): 1 with its status fields in *st; else
 * h_rconn_frame's result (-ETIMEDOUT: not yet). */
static int status_answer(h_rconn *rc, uint32_t msgid, int timeout_ms, h_raw_st *st)
{
	const uint8_t *pl;
	uint32_t len;
	int r;
	while ((r = h_rconn_frame(rc, timeout_ms, &pl, &len, NULL)) == 1) {
		msgpack_zone z;
		anes_msg m;
		msgpack_zone_init(&z, 4096);
		cr_assert_eq(anes_msg_decode(pl, len, &z, &m), 0);
		bool mine = m.type == ANES_MSG_RESPONSE && m.msgid == msgid;
		if (mine) {
			cr_assert(m.result, "status failed");
			h_raw_st_read(m.result, st);
		}
		msgpack_zone_destroy(&z);
		if (mine)
			return 1;
	}
	return r;
}

static int uid_child(void *arg, int ready_fd)
{
	const uid_op *op = arg;
	if (op->kind == 'j') {
		/* 10 runs queued at once, then waited for: all must succeed. */
		aneshare_conn *c;
		aneshare_program *p;
		if (aneshare_connect(op->sock, "uid-jobs", &c) < 0 ||
		    aneshare_program_compile(c, op->mil, NULL, 0, &p, NULL) < 0)
			return 250;
		aneshare_surface *x, *y, *z;
		if (aneshare_surface_create(c, op->size, &x) < 0 || aneshare_surface_create(c, op->size, &y) < 0 ||
		    aneshare_surface_create(c, op->size, &z) < 0)
			return 250;
		aneshare_surface *in[2] = { x, y };
		uint32_t t[10];
		for (int i = 0; i < 10; i++)
			if (aneshare_run_submit(p, 0, in, 2, &z, 1, &t[i]) < 0)
				return 250;
		(void)!write(ready_fd, "x", 1);
		for (int i = 0; i < 10; i++)
			if (aneshare_wait(c, t[i]) < 0)
				return 251;
		return 0;
	}
	(void)!write(ready_fd, "x", 1);
	if (op->kind == 'i') {
		/* Wait for room behind the other process's frame, then be answered. */
		int fd = h_raw_open(op->sock);
		msgpack_sbuffer sb;
		msgpack_sbuffer_init(&sb);
		h_raw_padded_frame(&sb, 9, "status", 500u << 10);
		int r = h_raw_send(fd, sb.data, sb.size, NULL, 0) == 0 && h_raw_response(fd, 9, 30000) == 0;
		return r ? 0 : 250;
	}
	if (op->kind == 'o') {
		/* Never read: dropped once the uid's limit is passed (EOF). */
		int fd = h_raw_open(op->sock);
		pipeline_status(fd, 2400, 10);
		/* The daemon's close shows as a hang-up, replies still unread. */
		struct pollfd p = { .fd = fd, .events = 0 };
		return poll(&p, 1, 30000) == 1 && (p.revents & POLLHUP) ? 0 : 250;
	}
	aneshare_conn *c;
	if (aneshare_connect(op->sock, "uid-child", &c) < 0)
		return 250;
	unsigned n = 0;
	int r = 0;
	for (; n < 40; n++) {
		aneshare_surface *s;
		aneshare_program *p;
		if (op->kind == 's') {
			r = aneshare_surface_create(c, op->size, &s);
		} else if (op->kind == 'p') {
			r = aneshare_program_compile(c, op->mil, NULL, 0, &p, NULL);
		} else {
			char *m = big_arena_mil(32u << 10, 100 + n);
			r = aneshare_program_compile(c, m, NULL, 0, &p, NULL);
			free(m);
		}
		if (r < 0)
			break;
	}
	if (r != ELIMIT)
		return 250;
	return (int)n + (strstr(aneshare_last_error(c), op->key) ? 0 : 200);
}

static int run_uid_child(uid_op *op)
{
	pid_t pid = h_spawn(uid_child, op);
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st));
	return WEXITSTATUS(st);
}

/* Each resource's per-uid limit holds this process and another of its uid
 * together: what this one holds, the other does not get, and its refusal
 * names the max_uid_* key. */
Test(tenants, two_processes_of_one_uid_share_its_limits)
{
	char *mil = h_square_mm_mil(8, "main");
	struct {
		const char *args[8];
		uid_op op;
		unsigned mine;       /* what this process holds first */
		size_t size;
		int expect;          /* the child's exit status */
	} cases[] = {
		{ { "--max-uid-surfaces", "6", NULL }, { .kind = 's', .size = 4096, .key = "max_uid_surfaces" },
		  4, 4096, 2 },
		{ { "--max-uid-surface-bytes", "1M", NULL },
		  { .kind = 's', .size = 256 << 10, .key = "max_uid_surface_bytes" }, 2, 256 << 10, 2 },
		{ { "--worker", "--max-uid-fds", "4", NULL }, { .kind = 's', .size = 4096, .key = "max_uid_fds" },
		  2, 4096, 2 },
		{ { "--max-uid-programs", "3", NULL }, { .kind = 'p', .mil = mil, .key = "max_uid_programs" },
		  2, 0, 1 },
	};
	for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
		h_daemon_start_args(&D, cases[k].args);
		aneshare_conn *c = h_connect(&D, "uid-parent");
		aneshare_surface *s[8];
		aneshare_program *p[8];
		for (unsigned i = 0; i < cases[k].mine; i++) {
			if (cases[k].op.kind == 's')
				cr_assert_eq(aneshare_surface_create(c, cases[k].size, &s[i]), 0);
			else
				cr_assert_eq(aneshare_program_compile(c, mil, NULL, 0, &p[i], NULL), 0);
		}
		cases[k].op.sock = D.sock;
		int got = run_uid_child(&cases[k].op);
		cr_expect_eq(got, cases[k].expect, "%s: the other process got %d (200+: the refusal did not "
		             "name %s)", cases[k].args[0], got, cases[k].op.key);
		aneshare_disconnect(c);
		h_daemon_stop(&D);
	}
	free(mil);

	/* Program memory: this process fills the uid's 40 MiB, the other gets
	 * nothing. */
	const char *pargs[] = { "--max-uid-program-bytes", "40M", NULL };
	h_daemon_start_args(&D, pargs);
	aneshare_conn *c = h_connect(&D, "uid-parent");
	aneshare_program *keep[64];
	unsigned k = 0;
	int r = 0;
	for (unsigned tag = 0; tag < 64 && r == 0; tag++) {
		char *m = big_arena_mil(32u << 10, tag);
		r = aneshare_program_compile(c, m, NULL, 0, &keep[k], NULL);
		free(m);
		if (r == 0)
			k++;
	}
	cr_assert_eq(r, ELIMIT);
	cr_assert(strstr(aneshare_last_error(c), "max_uid_program_bytes"), "%s", aneshare_last_error(c));
	uid_op op = { .sock = D.sock, .kind = 'c', .key = "max_uid_program_bytes" };
	cr_expect_eq(run_uid_child(&op), 0, "the other process compiled programs past its uid's limit");
	aneshare_disconnect(c);
	h_daemon_stop(&D);

	/* Input memory: this process's frame holds the uid's room; the other
	 * process's frame waits for it, and is answered once it is given back. */
	const char *iargs[] = { "--max-frame", "512K", "--max-uid-input-bytes", "524296", NULL };
	h_daemon_start_args(&D, iargs);
	int obs = h_raw_open(D.sock);
	int fd = h_raw_open(D.sock);
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	h_raw_padded_frame(&sb, 5, "status", 500u << 10);
	cr_assert_eq(h_raw_send(fd, sb.data, 100u << 10, NULL, 0), 0);
	h_raw_st st = { 0 };
	for (int i = 0; i < 1000 * h_slow() && st.my_input == 0; i++) {
		st = h_raw_status(obs);
		if (!st.my_input)
			poll(NULL, 0, 10);
	}
	cr_assert_gt(st.my_input, 0);
	op = (uid_op){ .sock = D.sock, .kind = 'i' };
	pid_t pid = h_spawn(uid_child, &op);
	h_raw_wait_input_waiting(obs, 1);
	cr_assert_eq(h_raw_send(fd, sb.data + (100u << 10), sb.size - (100u << 10), NULL, 0), 0);
	cr_assert_eq(h_raw_response(fd, 5, 10000), 0);
	int wst;
	cr_assert_eq(waitpid(pid, &wst, 0), pid);
	cr_expect(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "the other process's frame was not answered");
	msgpack_sbuffer_destroy(&sb);
	close(fd);
	close(obs);
	h_daemon_stop(&D);

	/* Jobs: this process and the other queue 10 runs each; the uid never
	 * has more than its 2 on the workers, and every run is answered.  The
	 * device is a gate (--fault-inject run_gate) the test opens one run at a
	 * time, so no status can see the runs all done.  An observer of the same
	 * uid is answered only while the uid has room (reading pauses for all
	 * its connections), so its status requests are answered between runs:
	 * each answer must show at most 2 jobs.  It may show none: a run's end
	 * is taken by the loop, which reads the next run only after it, and the
	 * worker may finish the next run (its token given) before then.  With 19
	 * runs through, the test waits for the state it needs: the last run read
	 * and held at the gate, the only job of the uid (1 job). */
	h_gate g;
	h_gate_make(&g);
	const char *jargs[] = { "--max-uid-jobs", "2", "--workers", "1", "--no-lanes",
		                "--fault-inject", g.arg, NULL };
	h_daemon_start_args(&D, jargs);
	h_gate_attach(&g);
	h_rconn orc;
	h_rconn_open(&orc, D.sock);   /* before the uid is full: its hello is answered */
	char *jm = h_square_mm_mil(256, "main");
	c = h_connect(&D, "uid-jobs-parent");
	aneshare_program *jp;
	cr_assert_eq(aneshare_program_compile(c, jm, NULL, 0, &jp, NULL), 0);
	aneshare_surface *jx = h_surface(c, 256 * 256 * 2), *jy = h_surface(c, 256 * 256 * 2),
	                 *jz = h_surface(c, 256 * 256 * 2);
	aneshare_surface *jin[2] = { jx, jy };
	/* The other process compiles (no job of the uid yet) and queues its 10
	 * runs; then this one's 10. */
	op = (uid_op){ .sock = D.sock, .kind = 'j', .mil = jm, .size = 256 * 256 * 2 };
	pid = h_spawn(uid_child, &op);
	uint32_t jt[10];
	for (int i = 0; i < 10; i++)
		cr_assert_eq(aneshare_run_submit(jp, 0, jin, 2, &jz, 1, &jt[i]), 0);
	uint32_t smsg = 7000;
	cr_assert_eq(h_raw_request(orc.fd, smsg, "status", NULL, 0, NULL, 0), 0);
	unsigned answers = 0, none = 0;
	for (unsigned token = 1; token <= 20; token++) {
		/* Status answers that came in between (the uid had room). */
		while (token < 20 && status_answer(&orc, smsg, 0, &st) == 1) {
			cr_expect_leq(st.uid_jobs, 2, "uid %u had %llu jobs (answer read with %u of 20 runs let "
			             "through), its limit is 2", (unsigned)getuid(),
			             (unsigned long long)st.uid_jobs, token - 1);
			answers++;
			none += st.uid_jobs == 0;
			cr_assert_eq(h_raw_request(orc.fd, ++smsg, "status", NULL, 0, NULL, 0), 0);
		}
		/* With 19 through, until the last run alone holds the uid: 1 job
		 * (none while the loop has not read it yet). */
		for (int w = 0; token == 20; w++) {
			cr_assert_eq(status_answer(&orc, smsg, 10000, &st), 1, "no status answered with only "
			             "the last run left");
			cr_assert_leq(st.uid_jobs, 1, "the last run alone: %llu jobs",
			             (unsigned long long)st.uid_jobs);
			answers++;
			none += st.uid_jobs == 0;
			if (st.uid_jobs == 1)
				break;
			cr_assert_lt(w, 1000 * h_slow(), "the last run was never read");
			tu_pause_ms(5);
			cr_assert_eq(h_raw_request(orc.fd, ++smsg, "status", NULL, 0, NULL, 0), 0);
		}
		h_gate_open(&g, 1);
		/* Until the daemon took the token (one run past the gate). */
		int left = 1;
		for (int w = 0; w < 1000 * h_slow() && left > 0; w++) {
			cr_assert_eq(ioctl(g.fd, FIONREAD, &left), 0);
			if (left > 0)
				tu_pause_ms(5);
		}
		cr_assert_eq(left, 0, "run %u never passed the gate", token);
	}
	for (int i = 0; i < 10; i++)
		cr_expect_eq(aneshare_wait(c, jt[i]), 0);
	cr_assert_eq(waitpid(pid, &wst, 0), pid);
	cr_expect(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "the other process's runs: exit %d", wst);
	cr_log_info("tenants: %u status answers while the 20 runs went one by one, %u of them with "
	            "no job (the next run not read yet)", answers, none);
	h_rconn_close(&orc);
	aneshare_disconnect(c);
	free(jm);
	h_daemon_stop(&D);
	h_gate_free(&g);

	/* Unsent output: over the uid's 1 MiB (below its process's 2 MiB) the
	 * other process's connection is dropped, logged with the uid's key. */
	const char *oargs[] = { "--max-frame", "512K", "--max-client-unsent-bytes", "2M",
		                "--max-uid-unsent-bytes", "1M", NULL };
	h_daemon_start_args(&D, oargs);
	op = (uid_op){ .sock = D.sock, .kind = 'o' };
	cr_expect_eq(run_uid_child(&op), 0, "the other process was not dropped");
	obs = h_raw_open(D.sock);
	st = h_raw_status(obs);
	cr_expect_eq(st.dropped, 1);
	close(obs);
	FILE *f = fopen(D.log, "r");
	cr_assert(f);
	char line[1024];
	bool named = false;
	while (fgets(line, sizeof line, f))
		named = named || strstr(line, "max_uid_unsent_bytes");
	fclose(f);
	cr_expect(named, "the drop did not name max_uid_unsent_bytes");
	h_daemon_stop(&D);
}
