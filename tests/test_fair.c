/* SPDX-License-Identifier: MIT */
/*
 * The fair scheduler of device work against a real daemon (docs/protocol.md,
 * "Scheduling"): with one worker, and one client process keeping 64 runs in
 * flight, another client's compile is answered before that backlog drains.
 * Order is checked, not durations: the greedy client's runs the daemon
 * counts (status) while the compile waits.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

Test(fair, a_compile_is_answered_before_a_backlog_of_runs)
{
	const char *const args[] = { "--workers", "1", "--no-lanes", NULL };
	h_daemon_start_args(&D, args);
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
	char b;
	cr_assert_eq(read(res[0], &b, 1), 1, "the greedy client failed");

	aneshare_conn *c = h_connect(&D, "fair-b");
	for (int k = 0; k < 3; k++) {
		uint64_t runs0, runs1, queued0, queued1;
		greedy_counts(c, pid, &runs0, &queued0);
		char mil[512];
		snprintf(mil, sizeof mil,
		         "program(1.3)\n{\n"
		         "    func main<ios18>(tensor<fp16, [1, 1, 1, 16]> x) {\n"
		         "        tensor<fp16, [1, 1, 1, 16]> y = relu(x = x)[name = string(\"y%d\")];\n"
		         "    } -> (y);\n}\n", k);
		aneshare_program *p;
		bool cached = true;
		cr_assert_eq(aneshare_program_compile(c, mil, NULL, 0, &p, &cached), 0, "%s",
		             aneshare_last_error(c));
		cr_assert(!cached);
		greedy_counts(c, pid, &runs1, &queued1);
		/* A FIFO answers it after the ~60 runs queued before it. */
		cr_assert_leq(runs1 - runs0, 16,
		              "the compile waited for %llu of the greedy client's runs",
		              (unsigned long long)(runs1 - runs0));
		cr_assert_leq(queued0, GREEDY_INFLIGHT);
		cr_assert_geq(queued1, GREEDY_INFLIGHT / 2,
		              "the greedy client's backlog drained first (%llu queued)",
		              (unsigned long long)queued1);
		aneshare_program_release(p);
	}
	aneshare_disconnect(c);
	cr_assert_eq(write(ctl[1], "s", 1), 1);
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "greedy client: status %d", st);
	h_daemon_stop(&D);
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
