/* SPDX-License-Identifier: MIT */
/*
 * Attacks by careless or hostile clients (issue 14, docs/reliability.md's
 * attack table): each test starts a real daemon, attacks it over real
 * sockets and checks what the attacker got, that the daemon logged and
 * counted it, and that another client is still served.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <msgpack.h>

#include "anes_proto.h"
#include "daemon_harness.h"

static const char *mil_double =
	"program(1.3)\n{\n"
	"    func main<ios18>(tensor<fp16, [1, 1, 1, 8]> x) {\n"
	"        tensor<fp16, [1, 1, 1, 8]> y = add(x = x, y = x)[name = string(\"y\")];\n"
	"    } -> (y);\n}\n";

/* ---- raw requests ------------------------------------------------------------ */

/* On a raw connection after hello: program 1 (mil_double), surfaces 1 and 2
 * (16 bytes each). */
static void raw_program_and_surfaces(int fd)
{
	cr_assert_eq(h_raw_request_kstr(fd, 2, "program.compile", "mil", mil_double), 0);
	cr_assert_eq(h_raw_response(fd, 2, 10000), 0);
	for (uint32_t id = 3; id < 5; id++) {
		cr_assert_eq(h_raw_request_kv(fd, id, "surface.create", "size", 16, NULL, 0), 0);
		cr_assert_eq(h_raw_response(fd, id, 10000), 0);
	}
}

/* Append run {program 1, inputs [1], outputs [2]} as request msgid. */
static void raw_run_frame(msgpack_sbuffer *sb, uint32_t msgid)
{
	msgpack_sbuffer p;
	msgpack_packer pk;
	msgpack_sbuffer_init(&p);
	msgpack_packer_init(&pk, &p, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 3);
	msgpack_pack_str(&pk, 7);
	msgpack_pack_str_body(&pk, "program", 7);
	msgpack_pack_uint32(&pk, 1);
	msgpack_pack_str(&pk, 6);
	msgpack_pack_str_body(&pk, "inputs", 6);
	msgpack_pack_array(&pk, 1);
	msgpack_pack_uint32(&pk, 1);
	msgpack_pack_str(&pk, 7);
	msgpack_pack_str_body(&pk, "outputs", 7);
	msgpack_pack_array(&pk, 1);
	msgpack_pack_uint32(&pk, 2);
	h_raw_frame(sb, msgid, "run", p.data, p.size, 0);
	msgpack_sbuffer_destroy(&p);
}

/* What raw_collect has seen of the responses to [first, first + n). */
typedef struct collect {
	uint32_t first, n, got, errors;
	uint8_t *seen;
} collect;

static void collect_cb(const anes_msg *m, void *ud)
{
	collect *c = ud;
	if (m->type != ANES_MSG_RESPONSE)
		return;
	cr_assert(m->msgid >= c->first && m->msgid - c->first < c->n, "msgid %u", m->msgid);
	cr_assert(!c->seen[m->msgid - c->first], "msgid %u answered twice", m->msgid);
	c->seen[m->msgid - c->first] = 1;
	c->got++;
	if (m->error)
		c->errors++;
}

/* Read responses to msgids [first, first + n) on rc until each came once,
 * or the connection closes, or nothing comes for 10 s (x h_slow()).
 * Returns how many came; *ret_errors counts the error responses among
 * them. */
static uint32_t raw_collect(h_rconn *rc, uint32_t first, uint32_t n, uint32_t *ret_errors)
{
	collect c = { .first = first, .n = n, .seen = calloc(n, 1) };
	cr_assert(c.seen);
	int r = 1;
	while (c.got < n && (r = h_rconn_next(rc, 10000, collect_cb, &c)) == 1)
		;
	cr_assert_neq(r, -EBADMSG, "a frame from the daemon that does not parse");
	free(c.seen);
	*ret_errors = c.errors;
	return c.got;
}

/* status.dropped, asked on a connection of its own. */
static uint64_t raw_status_dropped(const h_daemon *d)
{
	int fd = h_raw_open(d->sock);
	uint64_t v = h_raw_status(fd).dropped;
	close(fd);
	return v;
}

/* ---- item 5: pipelined runs are all answered, on every reply path -------------- */

/* The daemon's log so far (malloc'd, NUL-terminated). */
static char *daemon_log(const h_daemon *d)
{
	FILE *f = fopen(d->log, "r");
	cr_assert(f);
	char *buf = calloc(1, 1 << 20);
	cr_assert(buf);
	size_t n = fread(buf, 1, (1 << 20) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* A client writes 10,000 runs (one write each) before it reads a single
 * reply.  With the default limits each is answered once (the replies are
 * about 300 KiB, under max_unsent_bytes) and nothing is dropped; with
 * drop_unsent_bytes under that, the client is dropped, with a log line and
 * status.dropped, never silently. */
static void pipeline_10000(bool lanes, bool drop)
{
	const char *args[8];
	unsigned na = 0;
	if (!lanes)
		args[na++] = "--no-lanes";
	if (drop) {
		args[na++] = "--drop-unsent-bytes";
		args[na++] = "16K";
		args[na++] = "--drop-unsent-seconds";
		args[na++] = "0";
	}
	args[na] = NULL;
	h_daemon d;
	h_daemon_start_args(&d, args);
	h_rconn rc;
	h_rconn_open(&rc, d.sock);
	int fd = rc.fd;
	raw_program_and_surfaces(fd);
	enum { N = 10000, FIRST = 100 };
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	uint32_t sent = 0;
	for (; sent < N; sent++) {
		sb.size = 0;
		raw_run_frame(&sb, FIRST + sent);
		if (h_raw_send(fd, sb.data, sb.size, NULL, 0) < 0)
			break;
	}
	msgpack_sbuffer_destroy(&sb);
	uint32_t errors;
	uint32_t got = raw_collect(&rc, FIRST, N, &errors);
	cr_assert_eq(errors, 0);
	if (drop) {
		cr_assert_lt(got, N, "the client should have been dropped");
		cr_assert_eq(raw_status_dropped(&d), 1);
		char *log = daemon_log(&d);
		cr_assert(strstr(log, "dropped client #"), "no log line: %s", log);
		free(log);
	} else {
		cr_assert_eq(sent, N, "the daemon closed the connection after %u runs", sent);
		cr_assert_eq(got, N, "%u of %u runs answered", got, N);
		cr_assert_eq(raw_status_dropped(&d), 0);
	}
	h_rconn_close(&rc);
	h_daemon_stop(&d);
}

Test(limits, pipelined_runs_are_all_answered_with_lanes)
{
	pipeline_10000(true, false);
}

Test(limits, pipelined_runs_are_all_answered_without_lanes)
{
	pipeline_10000(false, false);
}

Test(limits, a_pipeline_over_drop_unsent_is_dropped_and_counted_with_lanes)
{
	pipeline_10000(true, true);
}

Test(limits, a_pipeline_over_drop_unsent_is_dropped_and_counted_without_lanes)
{
	pipeline_10000(false, true);
}

/* ---- item 7 -------------------------------------------------------------------- */

/* The method name "" is an unknown method like any other: unknown_method,
 * and the connection carries on. */
Test(limits, the_empty_method_name_is_an_unknown_method)
{
	h_daemon d;
	h_daemon_start(&d);
	int fd = h_raw_open(d.sock);
	cr_assert_eq(h_raw_request_kv(fd, 7, "", NULL, 0, NULL, 0), 0);
	cr_assert_eq(h_raw_response(fd, 7, 10000), ANES_WERR_UNKNOWN_METHOD);
	cr_assert_eq(h_raw_request_kv(fd, 8, "no.such", NULL, 0, NULL, 0), 0);
	cr_assert_eq(h_raw_response(fd, 8, 10000), ANES_WERR_UNKNOWN_METHOD);
	cr_assert_eq(h_raw_request_kv(fd, 9, "status", NULL, 0, NULL, 0), 0);
	cr_assert_eq(h_raw_response(fd, 9, 10000), 0);
	close(fd);
	h_daemon_stop(&d);
}

#ifdef __linux__
#include <fcntl.h>
#include <sys/mman.h>
/* A memfd sealed against writing cannot be a surface (the daemon maps
 * surfaces for reading and writing): bad_fd, as docs/protocol.md says. */
Test(limits, a_write_sealed_memfd_gets_bad_fd)
{
	h_daemon d;
	h_daemon_start(&d);
	int fd = h_raw_open(d.sock);
	int mfd = memfd_create("sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	cr_assert_geq(mfd, 0);
	cr_assert_eq(ftruncate(mfd, 4096), 0);
	cr_assert_eq(fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), 0);
	cr_assert_eq(h_raw_request_kv(fd, 2, "surface.import", NULL, 0, &mfd, 1), 0);
	cr_assert_eq(h_raw_response(fd, 2, 10000), ANES_WERR_BAD_FD);
	close(mfd);
	close(fd);
	h_daemon_stop(&d);
}
#endif

/* ---- item 3: input ------------------------------------------------------------- */

/* Before hello a frame may be 64 KiB (max_hello_frame); a larger header is
 * a protocol error before anything is read of it.  After hello, max_frame
 * holds: a 1 MiB request is answered. */
Test(limits, a_large_frame_before_hello_is_refused)
{
	h_daemon d;
	h_daemon_start(&d);
	int fd = h_raw_connect(d.sock);
	cr_assert_geq(fd, 0);
	uint8_t hdr[ANES_FRAME_HEADER_SIZE];
	anes_frame_header_write(hdr, (64u << 10) + 1, 0);
	cr_assert_eq(h_raw_send(fd, hdr, sizeof hdr, NULL, 0), 0);
	cr_assert_eq(h_raw_closed_with(fd, 10000), ANES_WERR_PROTOCOL);
	close(fd);

	fd = h_raw_open(d.sock);
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	h_raw_padded_frame(&sb, 5, "status", 1u << 20);
	cr_assert_eq(h_raw_send(fd, sb.data, sb.size, NULL, 0), 0);
	msgpack_sbuffer_destroy(&sb);
	cr_assert_eq(h_raw_response(fd, 5, 10000), 0);
	close(fd);
	h_daemon_stop(&d);
}

/* A connection that never says hello is closed after hello_timeout_ms with
 * an error notification `limit`; one that did is not. */
Test(limits, no_hello_is_closed_at_the_hello_timeout)
{
	const char *args[] = { "--hello-timeout-ms", "200", NULL };
	h_daemon d;
	h_daemon_start_args(&d, args);
	int idle = h_raw_connect(d.sock);
	cr_assert_geq(idle, 0);
	int good = h_raw_open(d.sock);
	cr_assert_eq(h_raw_closed_with(idle, 10000), ANES_WERR_LIMIT);
	close(idle);
	/* Well past the timeout by now: the good connection still answers. */
	cr_assert_eq(h_raw_request_kv(good, 9, "status", NULL, 0, NULL, 0), 0);
	cr_assert_eq(h_raw_response(good, 9, 10000), 0);
	close(good);
	char *log = daemon_log(&d);
	cr_assert(strstr(log, "no hello within 200 ms"), "%s", log);
	free(log);
	h_daemon_stop(&d);
}

/* A frame trickled a byte at a time is closed frame_timeout_ms after its
 * first byte, however steadily the bytes come: sending a byte each 20 ms,
 * the 4,000-byte frame would take 80 s, and the connection is closed at
 * the 300 ms deadline, with `limit`. */
Test(limits, a_trickled_frame_is_closed_at_the_frame_timeout)
{
	const char *args[] = { "--frame-timeout-ms", "300", NULL };
	h_daemon d;
	h_daemon_start_args(&d, args);
	int fd = h_raw_open(d.sock);
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	h_raw_padded_frame(&sb, 5, "status", 4000);
	size_t sent = 0;
	int code = -ETIMEDOUT;
	while (sent < sb.size) {
		if (h_raw_send(fd, sb.data + sent, 1, NULL, 0) < 0)
			break;
		sent++;
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		if (poll(&pfd, 1, 20) == 1) {   /* paces the trickle; the close ends it */
			code = h_raw_closed_with(fd, 10000);
			break;
		}
	}
	cr_assert_lt(sent, sb.size, "the whole frame went through");
	cr_assert_eq(code, ANES_WERR_LIMIT);
	msgpack_sbuffer_destroy(&sb);
	close(fd);
	char *log = daemon_log(&d);
	cr_assert(strstr(log, "not complete 300 ms after its first byte"), "%s", log);
	free(log);
	h_daemon_stop(&d);
}

/* Send what the socket takes of buf without blocking; the bytes sent. */
static size_t send_some(int fd, const void *buf, size_t len)
{
	size_t off = 0;
	while (off < len) {
		ssize_t n = send(fd, (const char *)buf + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	return off;
}

/* Three clients each send the first 100 KiB of a 500 KiB frame and stop,
 * against max_input_bytes 1 MiB: two get their frame's memory reserved
 * (436 KiB each); the third is not read further and waits (nothing is
 * allocated for it).  When the first frame is completed and answered, its
 * memory goes to the waiter, whose frame then completes too: no client is
 * stuck behind the cap, and all memory is given back at the end. */
Test(limits, input_memory_is_capped_and_waiters_resume)
{
	/* The three connections are this one process: its own limits (client
	 * and uid) are lifted above the daemon's, so that they stand for three
	 * clients and the third waits in the daemon's queue (with them at the
	 * daemon's 1M it waited for its process's room instead, and the queue
	 * went untested; the process's limit:
	 * tenants::fifty_connections_get_no_more_input_memory_than_one). */
	const char *args[] = { "--max-frame", "512K", "--max-input-bytes", "1M",
		               "--max-client-input-bytes", "4M", "--max-uid-input-bytes", "4M", NULL };
	h_daemon d;
	h_daemon_start_args(&d, args);
	int obs = h_raw_open(d.sock);
	int fd[3];
	msgpack_sbuffer sb[3];
	size_t sent[3];
	for (int i = 0; i < 3; i++) {
		fd[i] = h_raw_open(d.sock);
		msgpack_sbuffer_init(&sb[i]);
		h_raw_padded_frame(&sb[i], 50 + (uint32_t)i, "status", 500u << 10);
		sent[i] = send_some(fd[i], sb[i].data, 100u << 10);
		cr_assert_eq(sent[i], 100u << 10);
		if (i < 2) {   /* one at a time: which two get the memory is known */
			for (int k = 0; k < 1000 * h_slow() && h_raw_status(obs).in_bytes < (i + 1) * (436u << 10); k++)
				poll(NULL, 0, 10);
		}
	}
	h_raw_st st = h_raw_wait_input_waiting(obs, 1);
	size_t need = sb[0].size - (64u << 10);
	cr_assert_eq(st.in_bytes, 2 * need, "reserved %llu", (unsigned long long)st.in_bytes);

	/* The first frame completes and is answered; the third gets its room. */
	cr_assert_eq(h_raw_send(fd[0], sb[0].data + sent[0], sb[0].size - sent[0], NULL, 0), 0);
	cr_assert_eq(h_raw_response(fd[0], 50, 10000), 0);
	h_raw_wait_input_waiting(obs, 0);
	cr_assert_eq(h_raw_send(fd[2], sb[2].data + sent[2], sb[2].size - sent[2], NULL, 0), 0);
	cr_assert_eq(h_raw_response(fd[2], 52, 10000), 0);
	cr_assert_eq(h_raw_send(fd[1], sb[1].data + sent[1], sb[1].size - sent[1], NULL, 0), 0);
	cr_assert_eq(h_raw_response(fd[1], 51, 10000), 0);
	st = h_raw_status(obs);
	cr_assert_eq(st.in_bytes, 0);
	cr_assert_eq(st.in_waiting, 0);
	for (int i = 0; i < 3; i++) {
		msgpack_sbuffer_destroy(&sb[i]);
		close(fd[i]);
	}
	close(obs);
	h_daemon_stop(&d);
}

/* ---- item 4: file descriptors ----------------------------------------------------- */

/* Set this test process's fd limit (inherited by the daemon it starts;
 * criterion runs each test in its own process). */
static void set_nofile(rlim_t soft, rlim_t hard)
{
	struct rlimit rl = { soft, hard };
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0, "setrlimit: %s", strerror(errno));
}

/* With RLIMIT_NOFILE 8 (soft and hard) the daemon exits 1 with a message
 * that names the limit, instead of aborting inside libuv. */
Test(limits, an_fd_limit_of_8_exits_with_a_message)
{
	char dir[] = "/tmp/anes-nofile-XXXXXX";
	cr_assert(mkdtemp(dir));
	char sock[128], log[128];
	snprintf(sock, sizeof sock, "%s/s.sock", dir);
	snprintf(log, sizeof log, "%s/log", dir);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		h_child_stdio(log);
		struct rlimit rl = { 8, 8 };
		setrlimit(RLIMIT_NOFILE, &rl);
		execl(getenv("ANESHARED"), "aneshared", "--socket", sock, "--backend", "cpu", (char *)NULL);
		_exit(127);
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status 0x%x", status);
	FILE *f = fopen(log, "r");
	cr_assert(f);
	char buf[4096] = "";
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	buf[n] = '\0';
	fclose(f);
	cr_assert(strstr(buf, "file descriptor limit (RLIMIT_NOFILE) is 8"), "%s", buf);
	unlink(log);
	rmdir(dir);
}

/* A soft limit below the hard one is raised to it at start, and logged. */
Test(limits, the_soft_fd_limit_is_raised_and_logged)
{
	struct rlimit rl;
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	cr_assert_gt(rl.rlim_max, 256, "the hard limit is too low for this test");
	set_nofile(256, rl.rlim_max);
	h_daemon d;
	h_daemon_start(&d);
	char *log = daemon_log(&d);
	char want[96];
	snprintf(want, sizeof want, "file descriptor limit raised from 256 to %llu",
	         (unsigned long long)(rl.rlim_max == RLIM_INFINITY ? 1u << 20 : rl.rlim_max));
	cr_assert(strstr(log, want), "no \"%s\" in: %s", want, log);
	free(log);
	h_daemon_stop(&d);
}

#ifdef __linux__
/* A child process: create surfaces until refused; ready (and holding them
 * until killed) only if the refusal was `limit` after more than 50. */
static int greedy_surfaces(void *arg, int ready_fd)
{
	const h_daemon *d = arg;
	aneshare_conn *a;
	if (aneshare_connect(d->sock, "greedy", &a) < 0)
		return 2;
	static aneshare_surface *held[100000];
	unsigned n = 0;
	int r;
	while (n < 100000 && (r = aneshare_surface_create(a, 4096, &held[n])) == 0)
		n++;
	if (r != -ANESHARE_ELIMIT || n <= 50) {
		fprintf(stderr, "greedy: surface %u: %s: %s\n", n, aneshare_strerror(r),
		        aneshare_last_error(a));
		return 3;
	}
	if (write(ready_fd, "r", 1) != 1)
		return 4;
	for (;;)
		pause();
}

/* With the device worker (one fd kept per surface) and an fd limit of 400:
 * a client creating surfaces until refused gets `limit` (never no_memory or
 * protocol), and a second client can still connect, create and import a
 * surface, and run a checked matmul. */
Test(limits, surfaces_until_refused_leave_fds_for_another_client)
{
	set_nofile(400, 400);
	const char *args[] = { "--worker", "--max-surfaces", "100000", "--max-connections", "32", NULL };
	h_daemon d;
	h_daemon_start_args(&d, args);
	pid_t greedy = h_spawn(greedy_surfaces, &d);

	aneshare_conn *b = h_connect(&d, "second");
	h_mm mm;
	aneshare_program *p = h_compile_mm(b, &mm, NULL);
	aneshare_surface *in = NULL, *out = NULL;
	cr_assert_eq(aneshare_surface_create(b, mm.in_bytes, &in), 0, "%s", aneshare_last_error(b));
	/* An imported memfd for the output. */
	int mfd;
	cr_assert_eq(anes_memfd_create("imported", mm.out_bytes, &mfd), 0);
	cr_assert_eq(aneshare_surface_import(b, mfd, &out), 0, "%s", aneshare_last_error(b));
	close(mfd);
	h_mm_fill_run_check(p, &mm, in, out, 7);

	kill(greedy, SIGKILL);
	waitpid(greedy, NULL, 0);
	aneshare_disconnect(b);
	h_daemon_stop(&d);
}

/* The daemon at its fd limit receives a client's memfd: recvmsg cuts the
 * fd off (MSG_CTRUNC).  That is the daemon's shortage, not a protocol error
 * of the client: the client is closed with `limit` (which libaneshare
 * retries), and the daemon carries on once fds are free again. */
Test(limits, fds_cut_off_by_the_daemons_shortage_are_not_a_protocol_error)
{
	const char *args[] = { "--max-connections", "1000", NULL };
	h_daemon d;
	h_daemon_start_args(&d, args);
	struct rlimit rl = { 200, 200 };
	cr_assert_eq(prlimit(d.pid, RLIMIT_NOFILE, &rl, NULL), 0, "prlimit: %s", strerror(errno));
	int fd = h_raw_open(d.sock);
	enum { MORE = 260 };
	int fill[MORE];
	unsigned nfill = 0;
	/* Raw connections until the daemon holds 200 fds; the ones it cannot
	 * accept any more it closes at once (the reserve fd). */
	for (; nfill < MORE; nfill++) {
		fill[nfill] = h_raw_connect(d.sock);
		if (fill[nfill] < 0)
			break;
	}
	/* Every filler is either served (status.clients, with fd) or turned
	 * away (status.turned_away): then the daemon's backlog is drained and
	 * it sits at its limit, the reserve fd taken back. */
	h_raw_st st = { 0 };
	for (int i = 0; i < 1000 * h_slow(); i++) {
		st = h_raw_status(fd);
		if (st.clients - 1 + st.turned_away >= nfill)
			break;
		poll(NULL, 0, 10);
	}
	cr_assert_eq(st.clients - 1 + st.turned_away, nfill, "%llu served, %llu turned away, %u connected",
	             (unsigned long long)st.clients - 1, (unsigned long long)st.turned_away, nfill);
	cr_assert_gt(st.turned_away, 0);
	cr_assert_eq(h_daemon_fds(&d), 200);
	int mfd;
	cr_assert_eq(anes_memfd_create("cut", 4096, &mfd), 0);
	cr_assert_eq(h_raw_request_kv(fd, 2, "surface.import", NULL, 0, &mfd, 1), 0);
	close(mfd);
	cr_assert_eq(h_raw_closed_with(fd, 10000), ANES_WERR_LIMIT);
	close(fd);
	for (unsigned i = 0; i < nfill; i++)
		close(fill[i]);
	/* Serving again, once the daemon has closed its ends of those (it
	 * closes a connection it cannot accept at once, so until then a new
	 * one could be refused the same way). */
	for (int i = 0; i < 1000 * h_slow() && h_daemon_fds(&d) > 200 - (int)nfill / 2; i++)
		poll(NULL, 0, 10);
	cr_assert_leq(h_daemon_fds(&d), 200 - (int)nfill / 2, "%d fds after %u connections closed",
	              h_daemon_fds(&d), nfill);
	fd = h_raw_open(d.sock);
	cr_assert_eq(h_raw_request_kv(fd, 3, "status", NULL, 0, NULL, 0), 0);
	cr_assert_eq(h_raw_response(fd, 3, 10000), 0);
	close(fd);
	char *log = daemon_log(&d);
	cr_assert(strstr(log, "ran out of file descriptors"), "%s", log);
	free(log);
	h_daemon_stop(&d);
}
#endif

/* ---- anes_io's charge hook, alone over a socketpair ---------------------------------- */

static int64_t g_charged;   /* what the hook holds */
static int64_t g_room;      /* what it may hold */
static unsigned g_refusals;

static bool test_charge(anes_io *io, int64_t delta)
{
	(void)io;
	if (delta > 0 && g_charged + delta > g_room) {
		g_refusals++;
		return false;
	}
	g_charged += delta;
	return true;
}

/* A frame up to 64 KiB needs no charge; a larger one is charged whole (its
 * size less the 64 KiB base) before its buffer grows, whatever has arrived;
 * refused, anes_io_read reads nothing and says -EDQUOT; once the frame is
 * taken, anes_io_trim gives the charge back; cleanup gives back the rest. */
Test(limits, anes_io_charges_a_large_frame_whole_and_gives_it_back)
{
	int sv[2];
	cr_assert_eq(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sv), 0);
	anes_io io;
	anes_io_init(&io, sv[0], 1u << 20);
	io.charge = test_charge;
	io.msg_flags = MSG_DONTWAIT;
	g_charged = 0;
	g_room = 0;
	g_refusals = 0;

	/* A small frame: no charge at all. */
	uint8_t small[ANES_FRAME_HEADER_SIZE + 100] = { 0 };
	anes_frame_header_write(small, 100, 0);
	cr_assert_eq(h_raw_send(sv[1], small, sizeof small, NULL, 0), 0);
	cr_assert_eq(anes_io_read(&io), (ssize_t)sizeof small);
	const uint8_t *payload;
	uint32_t len;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	cr_assert_eq(anes_io_next_frame(&io, &payload, &len, fds, &nfds), 1);
	cr_assert_eq(g_charged, 0);

	/* 300 KiB: 64 KiB arrive into the base buffer, then the rest must be
	 * charged, and there is no room: nothing more is read. */
	const uint32_t big = 300u << 10;
	uint8_t *frame = calloc(1, ANES_FRAME_HEADER_SIZE + big);
	cr_assert(frame);
	anes_frame_header_write(frame, big, 0);
	size_t off = send_some(sv[1], frame, ANES_FRAME_HEADER_SIZE + big);
	cr_assert_gt(off, 64u << 10);
	ssize_t n;
	size_t got = 0;
	while ((n = anes_io_read(&io)) > 0)
		got += (size_t)n;
	cr_assert_eq(n, -EDQUOT);
	cr_assert_eq(got, 64u << 10, "read %zu before the charge", got);
	cr_assert_eq(g_refusals, 1);
	cr_assert_eq(g_charged, 0);
	cr_assert_eq(io.rcap, 64u << 10, "the buffer grew without a charge");

	/* Room: the whole frame is charged at once, then read to the end. */
	g_room = 1 << 20;
	const int64_t need = ANES_FRAME_HEADER_SIZE + big - (64 << 10);
	bool charged_early = false;
	while (got < ANES_FRAME_HEADER_SIZE + big) {
		if (off < ANES_FRAME_HEADER_SIZE + big)
			off += send_some(sv[1], frame + off, ANES_FRAME_HEADER_SIZE + big - off);
		n = anes_io_read(&io);
		if (n == -EAGAIN)
			continue;
		cr_assert_gt(n, 0, "%zd", n);
		got += (size_t)n;
		if (got < ANES_FRAME_HEADER_SIZE + big && g_charged == need)
			charged_early = true;
	}
	cr_assert(charged_early, "not charged whole before the frame was in");
	cr_assert_eq(g_charged, need);
	cr_assert_eq(anes_io_next_frame(&io, &payload, &len, fds, &nfds), 1);
	cr_assert_eq(len, big);
	anes_io_trim(&io);
	cr_assert_eq(g_charged, 0);
	cr_assert_leq(io.rcap, 64u << 10);

	/* Cleanup with a frame half charged gives the charge back. */
	cr_assert_eq(h_raw_send(sv[1], frame, 128u << 10, NULL, 0), 0);
	while (anes_io_read(&io) > 0)
		;
	cr_assert_eq(g_charged, need);
	anes_io_cleanup(&io);
	cr_assert_eq(g_charged, 0);
	free(frame);
	close(sv[0]);
	close(sv[1]);
}
