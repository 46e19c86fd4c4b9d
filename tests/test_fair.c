/* SPDX-License-Identifier: MIT */
/*
 * The fair scheduler of device work against a real daemon (docs/protocol.md,
 * "Scheduling"): with one worker, and one client process keeping 64 runs in
 * flight, another client's compile is answered before that backlog drains.
 * Order is checked, not durations: the device is a gate the test opens one
 * run at a time (--fault-inject run_gate), and the greedy client's runs the
 * daemon counts (status) say what ran before the compile.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <msgpack.h>

#include "anes_proto.h"
#include "aneshare.h"
#include "daemon_harness.h"
#include "test_util.h"

static h_daemon D;

static void teardown(void)
{
	h_daemon_kill(&D);
}

TestSuite(fair, .fini = teardown, .timeout = 300);

#define GREEDY_INFLIGHT 64
#define GREEDY_N 256   /* a matmul of a few ms */

/* The greedy client (a forked child: no assertions, exit status): keeps
 * GREEDY_INFLIGHT runs in flight until ctl is readable; writes 'r' to res
 * once they are all submitted and the first is done. */
static int greedy(const char *sock, int ctl, int res)
{
	aneshare_conn *c;
	if (aneshare_connect(sock, "greedy", &c) < 0)
		return 2;
	char *mil = h_square_mm_mil(GREEDY_N, "main");
	aneshare_program *p;
	if (!mil || aneshare_program_compile(c, mil, NULL, 0, &p, NULL) < 0)
		return 3;
	free(mil);
	size_t bytes = (size_t)GREEDY_N * GREEDY_N * 2u;
	aneshare_surface *s[3];
	for (int i = 0; i < 3; i++) {
		if (aneshare_surface_create(c, bytes, &s[i]) < 0)
			return 4;
		memset(aneshare_surface_data(s[i]), 0x20, bytes);
	}
	uint32_t tk[GREEDY_INFLIGHT];
	for (int i = 0; i < GREEDY_INFLIGHT; i++)
		if (aneshare_run_submit(p, 0, s, 2, s + 2, 1, &tk[i]) < 0)
			return 5;
	bool told = false;
	for (unsigned i = 0;; i = (i + 1) % GREEDY_INFLIGHT) {
		if (aneshare_wait(c, tk[i]) < 0)
			return 6;
		if (!told && write(res, "r", 1) != 1)
			return 7;
		told = true;
		char b;
		if (read(ctl, &b, 1) == 1)
			break;
		if (aneshare_run_submit(p, 0, s, 2, s + 2, 1, &tk[i]) < 0)
			return 8;
	}
	aneshare_disconnect(c);
	return 0;
}

/* The greedy process's entry in status: its runs done and jobs queued. */
static void greedy_counts(aneshare_conn *c, pid_t pid, uint64_t *ret_runs, uint64_t *ret_queued)
{
	aneshare_status *st = h_status(c);
	bool found = false;
	for (uint32_t i = 0; i < st->n_processes; i++) {
		if (st->process_list[i].pid == (uint64_t)pid) {
			*ret_runs = st->process_list[i].runs;
			*ret_queued = st->process_list[i].queued;
			found = true;
		}
	}
	aneshare_status_free(st);
	cr_assert(found, "the greedy client is not in status");
}

/* A compile on its own connection (a thread): its result, for the test. */
typedef struct compile_call {
	aneshare_conn *c;
	const char *mil;
	int rc;
	bool cached;
	aneshare_program *p;
	atomic_bool done;
} compile_call;

static void *compile_thread(void *arg)
{
	compile_call *cc = arg;
	cc->rc = aneshare_program_compile(cc->c, cc->mil, NULL, 0, &cc->p, &cc->cached);
	atomic_store(&cc->done, true);
	return NULL;
}

/* This process's jobs (queued or running) as status shows them. */
static uint64_t my_jobs(aneshare_conn *c)
{
	aneshare_status *st = h_status(c);
	uint64_t jobs = 0;
	for (uint32_t i = 0; i < st->n_processes; i++)
		if (st->process_list[i].pid == (uint64_t)getpid())
			jobs = st->process_list[i].jobs;
	aneshare_status_free(st);
	return jobs;
}

/* The device is a gate (--fault-inject run_gate: every run reads a token
 * from a FIFO first), so the order of device work is observed, not timed.
 * The greedy client's first run holds the one worker thread at the gate
 * with the rest of its 64 queued; a compile is queued behind them; one
 * token lets exactly one run through, and the fair queue takes the compile
 * next: it is answered while the greedy client has exactly one more run
 * done.  A FIFO would need 63 more tokens: the compile would never be
 * answered. */
Test(fair, a_compile_is_answered_before_a_backlog_of_runs)
{
	h_gate g;
	h_gate_make(&g);
	const char *const args[] = { "--workers", "1", "--no-lanes", "--fault-inject", g.arg, NULL };
	h_daemon_start_args(&D, args);
	h_gate_attach(&g);
	int ctl[2], res[2];
	cr_assert_eq(pipe(ctl), 0);
	cr_assert_eq(pipe(res), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(ctl[1]);
		close(res[0]);
		fcntl(ctl[0], F_SETFL, O_NONBLOCK);
		_exit(greedy(D.sock, ctl[0], res[1]));
	}
	close(ctl[0]);
	close(res[1]);
	h_gate_open(&g, 1);   /* the greedy client's first run */
	char b;
	cr_assert_eq(read(res[0], &b, 1), 1, "the greedy client failed");

	aneshare_conn *c = h_connect(&D, "fair-b");
	aneshare_conn *cc = h_connect(&D, "fair-b-compile");
	for (int k = 0; k < 3; k++) {
		/* The backlog in place: the worker thread at the gate, the rest queued. */
		uint64_t runs0 = 0, queued0 = 0;
		for (int t = 0;; t++) {
			greedy_counts(c, pid, &runs0, &queued0);
			if (queued0 >= GREEDY_INFLIGHT - 1)
				break;
			cr_assert_lt(t, 10000, "the greedy client's backlog never formed (%llu queued)",
			             (unsigned long long)queued0);
			tu_pause_ms(1);
		}
		char mil[512];
		snprintf(mil, sizeof mil,
		         "program(1.3)\n{\n"
		         "    func main<ios18>(tensor<fp16, [1, 1, 1, 16]> x) {\n"
		         "        tensor<fp16, [1, 1, 1, 16]> y = relu(x = x)[name = string(\"y%d\")];\n"
		         "    } -> (y);\n}\n", k);
		compile_call call = { .c = cc, .mil = mil, .rc = 1 };
		pthread_t th;
		cr_assert_eq(pthread_create(&th, NULL, compile_thread, &call), 0);
		for (int t = 0; !atomic_load(&call.done) && my_jobs(c) == 0; t++) {
			cr_assert_lt(t, 60000 * h_slow(), "the compile was neither queued nor answered");
			tu_pause_ms(1);
		}
		/* Queued (or already answered without the device): one token. */
		uint64_t let_through = atomic_load(&call.done) ? 0 : 1;
		if (let_through)
			h_gate_open(&g, 1);
		/* Answered once the run let through is done; a FIFO never answers
		 * it (no more tokens come): a minute is only the bound of that wait. */
		for (int t = 0; !atomic_load(&call.done); t++) {
			cr_assert_lt(t, 60000 * h_slow(), "the compile was not answered with one of the "
			             "greedy client's runs let through: it waits behind the backlog");
			tu_pause_ms(1);
		}
		cr_assert_eq(pthread_join(th, NULL), 0);
		cr_assert_eq(call.rc, 0, "%s", aneshare_last_error(cc));
		cr_assert(!call.cached);
		uint64_t runs1, queued1;
		greedy_counts(c, pid, &runs1, &queued1);
		cr_assert_eq(runs1 - runs0, let_through, "the compile was answered after %llu of the "
		             "greedy client's runs, with %llu let through",
		             (unsigned long long)(runs1 - runs0), (unsigned long long)let_through);
		aneshare_program_release(call.p);
	}
	aneshare_disconnect(cc);
	aneshare_disconnect(c);
	cr_assert_eq(write(ctl[1], "s", 1), 1);
	h_gate_open(&g, 4096);   /* the greedy client's runs in flight finish */
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "greedy client: status %d", st);
	h_daemon_stop(&D);
	h_gate_free(&g);
}

/* hello with { protocol: 1, priority: prio }: 0 or the wire error. */
static int hello_priority(int fd, const char *prio)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	msgpack_packer pk;
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	msgpack_pack_str_with_body(&pk, "protocol", 8);
	msgpack_pack_uint32(&pk, 1);
	msgpack_pack_str_with_body(&pk, "priority", 8);
	msgpack_pack_str_with_body(&pk, prio, strlen(prio));
	int r = h_raw_request(fd, 1, "hello", sb.data, sb.size, NULL, 0);
	msgpack_sbuffer_destroy(&sb);
	cr_assert_eq(r, 0);
	return h_raw_response(fd, 1, 5000);
}

/* The process's class as status shows it. */
static void status_priority(const char *expect)
{
	aneshare_conn *c = h_connect(&D, "fair-status");
	aneshare_status *st = h_status(c);
	bool found = false;
	for (uint32_t i = 0; i < st->n_processes; i++)
		if (st->process_list[i].pid == (uint64_t)getpid())
			found = st->process_list[i].priority && !strcmp(st->process_list[i].priority, expect);
	aneshare_status_free(st);
	aneshare_disconnect(c);
	cr_assert(found, "status does not show priority %s", expect);
}

Test(fair, any_client_may_lower_itself_interactive_only_configured_uids)
{
	h_daemon_start(&D);
	int fd = h_raw_connect(D.sock);
	cr_assert_geq(fd, 0);
	cr_assert_eq(hello_priority(fd, "interactive"), ANES_WERR_INVALID_PARAMS);
	cr_assert_eq(hello_priority(fd, "urgent"), ANES_WERR_INVALID_PARAMS);
	cr_assert_eq(hello_priority(fd, "background"), 0);
	status_priority("background");
	close(fd);
	h_daemon_stop(&D);

	char uid[32];
	snprintf(uid, sizeof uid, "%u", (unsigned)getuid());
	const char *const args[] = { "--interactive-uid", uid, NULL };
	h_daemon_start_args(&D, args);
	fd = h_raw_connect(D.sock);
	cr_assert_geq(fd, 0);
	cr_assert_eq(hello_priority(fd, "interactive"), 0);
	status_priority("interactive");
	close(fd);
	h_daemon_stop(&D);
}
