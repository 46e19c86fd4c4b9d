/* SPDX-License-Identifier: MIT */
/*
 * Attacks by careless or hostile clients (issue 14, docs/reliability.md's
 * attack table): each test starts a real daemon, attacks it over real
 * sockets and checks what the attacker got, that the daemon logged and
 * counted it, and that another client is still served.
 */
#include <errno.h>
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

/* Read responses to msgids [first, first + n) on a blocking fd until each
 * came once, or the connection closes, or nothing comes for 10 s (x
 * h_slow()).  Returns how many came; *ret_errors counts the error
 * responses among them. */
static uint32_t raw_collect(int fd, uint32_t first, uint32_t n, uint32_t *ret_errors)
{
	anes_io io;
	anes_io_init(&io, fd, ANES_FRAME_MAX_DEFAULT);
	uint8_t *seen = calloc(n, 1);
	cr_assert(seen);
	uint32_t got = 0, errors = 0;
	msgpack_zone zone;
	cr_assert(msgpack_zone_init(&zone, 4096));
	while (got < n) {
		const uint8_t *payload;
		uint32_t len;
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nfds = 0;
		int r = anes_io_next_frame(&io, &payload, &len, fds, &nfds);
		cr_assert_geq(r, 0);
		if (r == 0) {
			struct pollfd pfd = { .fd = fd, .events = POLLIN };
			if (poll(&pfd, 1, 10000 * h_slow()) != 1)
				break;
			ssize_t k = anes_io_read(&io);
			if (k <= 0)
				break;
			continue;
		}
		for (unsigned i = 0; i < nfds; i++)
			close(fds[i]);
		anes_msg m;
		cr_assert_eq(anes_msg_decode(payload, len, &zone, &m), 0);
		if (m.type == ANES_MSG_RESPONSE) {
			cr_assert(m.msgid >= first && m.msgid - first < n, "msgid %u", m.msgid);
			cr_assert(!seen[m.msgid - first], "msgid %u answered twice", m.msgid);
			seen[m.msgid - first] = 1;
			got++;
			if (m.error)
				errors++;
		}
		msgpack_zone_clear(&zone);
	}
	msgpack_zone_destroy(&zone);
	free(seen);
	anes_io_cleanup(&io);
	*ret_errors = errors;
	return got;
}

/* status.<key> (an unsigned integer) read on a raw connection. */
static void read_u64_field(const msgpack_object *result, void *ud)
{
	uint64_t *v = ud;
	const msgpack_object *o = anes_mp_get(result, "dropped");
	cr_assert(o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER);
	*v = o->via.u64;
}

static uint64_t raw_status_dropped(const h_daemon *d)
{
	int fd = h_raw_open(d->sock);
	uint64_t v = UINT64_MAX;
	cr_assert_eq(h_raw_request_kv(fd, 2, "status", NULL, 0, NULL, 0), 0);
	cr_assert_eq(h_raw_response_cb(fd, 2, 10000, read_u64_field, &v), 0);
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
	int fd = h_raw_open(d.sock);
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
	uint32_t got = raw_collect(fd, FIRST, N, &errors);
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
	close(fd);
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
