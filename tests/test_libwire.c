/* SPDX-License-Identifier: MIT */
/*
 * libaneshare against a fake daemon that answers from a script: every
 * malformed answer the library must refuse (hello, status, program.compile
 * and program.info, surfaces, export), with the daemon's objects it was
 * given released and no fd kept; the daemon's error codes and
 * notifications as the library's codes; the limits hello announces; the
 * reconnect paths where the next daemon refuses or hangs up while objects
 * are restored; and the argument checks that fail before anything is sent.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "anes_fp16.h"

#include "anes_proto.h"
#include "aneshare.h"
#include "daemon_harness.h"

TestSuite(libwire, .timeout = 120);

/* ---- the fake daemon ------------------------------------------------------------ */

#define FK_LOG 256

typedef struct fake fake;
/* Answers request m on io (or not); may set fk->hangup to close the
 * connection after it.  Runs on the fake's thread: asserts nothing. */
typedef void (*fk_fn)(fake *fk, anes_io *io, const anes_msg *m);

struct fake {
	char dir[64], path[128];
	int listen_fd;
	pthread_t th;
	fk_fn hello;          /* NULL: h_fake_hello */
	fk_fn answer;         /* every other request */
	int conn;             /* the connection being served: 1, 2, ... */
	int closed;           /* connections closed (under m; cond signalled) */
	pthread_cond_t cond;
	int step;             /* the script's own counter */
	void *ud;             /* the script's own state */
	bool hangup;
	int failures;
	pthread_mutex_t m;    /* the log, read by the test while the fake runs */
	int n_log;
	char methods[FK_LOG][32];
	uint32_t ids[FK_LOG];
	int conns[FK_LOG];
};

static void *fake_main(void *arg)
{
	fake *fk = arg;
	h_rconn rc;
	while (h_fake_accept(fk->listen_fd, &rc)) {
		fk->conn++;
		for (;;) {
			const uint8_t *payload;
			uint32_t len;
			if (h_rconn_frame(&rc, 20000, &payload, &len, NULL) != 1)
				break;
			msgpack_zone z;
			msgpack_zone_init(&z, 4096);
			anes_msg m;
			if (anes_msg_decode(payload, len, &z, &m) < 0 || m.type != ANES_MSG_REQUEST) {
				fk->failures++;
				msgpack_zone_destroy(&z);
				break;
			}
			pthread_mutex_lock(&fk->m);
			if (fk->n_log < FK_LOG) {
				snprintf(fk->methods[fk->n_log], sizeof fk->methods[0], "%.*s", (int)m.method_len,
				         m.method);
				if (anes_mp_u32(m.params, "id", &fk->ids[fk->n_log]) < 0)
					fk->ids[fk->n_log] = 0;
				fk->conns[fk->n_log] = fk->conn;
				fk->n_log++;
			}
			pthread_mutex_unlock(&fk->m);
			if (anes_msg_method_is(&m, "hello") && !fk->hello)
				h_fake_hello(&rc.io, m.msgid);
			else if (anes_msg_method_is(&m, "hello"))
				fk->hello(fk, &rc.io, &m);
			else if (fk->answer)
				fk->answer(fk, &rc.io, &m);
			msgpack_zone_destroy(&z);
			if (fk->hangup) {
				fk->hangup = false;
				break;
			}
		}
		h_rconn_close(&rc);
		pthread_mutex_lock(&fk->m);
		fk->closed++;
		pthread_cond_broadcast(&fk->cond);
		pthread_mutex_unlock(&fk->m);
	}
	return NULL;
}

static void fake_start_ud(fake *fk, fk_fn hello, fk_fn answer, void *ud)
{
	memset(fk, 0, sizeof *fk);
	fk->ud = ud;
	pthread_mutex_init(&fk->m, NULL);
	pthread_cond_init(&fk->cond, NULL);
	snprintf(fk->dir, sizeof fk->dir, "/tmp/anes-libwire-XXXXXX");
	cr_assert_not_null(mkdtemp(fk->dir));
	snprintf(fk->path, sizeof fk->path, "%s/sock", fk->dir);
	fk->listen_fd = h_fake_listen(fk->path);
	fk->hello = hello;
	fk->answer = answer;
	cr_assert_eq(pthread_create(&fk->th, NULL, fake_main, fk), 0);
}

static void fake_start(fake *fk, fk_fn hello, fk_fn answer)
{
	fake_start_ud(fk, hello, answer, NULL);
}

/* After every client hung up: the fake's thread ends (accept fails). */
static void fake_stop(fake *fk)
{
	shutdown(fk->listen_fd, SHUT_RDWR);
	pthread_join(fk->th, NULL);
	close(fk->listen_fd);
	unlink(fk->path);
	rmdir(fk->dir);
	cr_assert_eq(fk->failures, 0, "the fake daemon saw %d requests it did not expect", fk->failures);
	pthread_mutex_destroy(&fk->m);
	pthread_cond_destroy(&fk->cond);
}

/* Wait (bounded) until the fake has closed n connections: its end of them
 * is no longer an fd of this process. */
static void fake_wait_closed(fake *fk, int n)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 20 * h_slow();
	pthread_mutex_lock(&fk->m);
	int r = 0;
	while (fk->closed < n && r == 0)
		r = pthread_cond_timedwait(&fk->cond, &fk->m, &ts);
	int got = fk->closed;
	pthread_mutex_unlock(&fk->m);
	cr_assert_geq(got, n, "the fake closed %d connections, not %d", got, n);
}

/* How many requests of method (with params id, unless id is 0) the fake saw. */
static int seen(fake *fk, const char *method, uint32_t id)
{
	int n = 0;
	pthread_mutex_lock(&fk->m);
	for (int i = 0; i < fk->n_log; i++)
		n += !strcmp(fk->methods[i], method) && (id == 0 || fk->ids[i] == id);
	pthread_mutex_unlock(&fk->m);
	return n;
}

static aneshare_conn *fake_connect(fake *fk)
{
	aneshare_conn *c = NULL;
	int r = aneshare_connect(fk->path, "libwire", &c);
	cr_assert_eq(r, 0, "connect to the fake: %s", aneshare_strerror(r));
	return c;
}

/* ---- building answers -------------------------------------------------------------- */

/* A map built entry by entry (its size counted), then packed as a result
 * or into another object. */
typedef struct mb {
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint32_t n;
} mb;

static msgpack_packer *mb_init(mb *b)
{
	msgpack_sbuffer_init(&b->sb);
	msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
	b->n = 0;
	return &b->pk;
}

static msgpack_packer *mb_key(mb *b, const char *key)
{
	b->n++;
	anes_pack_str(&b->pk, key);
	return &b->pk;
}

static void mb_u(mb *b, const char *key, uint64_t v)
{
	msgpack_pack_uint64(mb_key(b, key), v);
}

static void mb_s(mb *b, const char *key, const char *s)
{
	anes_pack_str(mb_key(b, key), s);
}

/* Pack b as a map into pk (b is consumed). */
static void mb_pack(msgpack_packer *pk, mb *b)
{
	msgpack_pack_map(pk, b->n);
	if (b->sb.size)
		pk->callback(pk->data, b->sb.data, b->sb.size);
	msgpack_sbuffer_destroy(&b->sb);
}

/* Send b as the result of msgid, with fds (b and the fds are taken: the
 * fds are closed once sent). */
static void mb_result(anes_io *io, uint32_t msgid, mb *b, const int *fds, unsigned nfds)
{
	anes_frame f;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, msgid, b->n);
	if (b->sb.size)
		f.pk.callback(f.pk.data, b->sb.data, b->sb.size);
	msgpack_sbuffer_destroy(&b->sb);
	h_fake_send(io, &f, fds, nfds);
}

static void send_empty_result(anes_io *io, uint32_t msgid)
{
	mb b;
	mb_init(&b);
	mb_result(io, msgid, &b, NULL, 0);
}

/* An error response [1, msgid, {code, message}, nil], code not checked. */
static void send_error(anes_io *io, uint32_t msgid, int64_t code, const char *message)
{
	anes_frame f;
	anes_frame_init(&f);
	msgpack_pack_array(&f.pk, 4);
	msgpack_pack_uint8(&f.pk, ANES_MSG_RESPONSE);
	msgpack_pack_uint32(&f.pk, msgid);
	msgpack_pack_map(&f.pk, message ? 2 : 1);
	anes_pack_str(&f.pk, "code");
	msgpack_pack_int64(&f.pk, code);
	if (message) {
		anes_pack_str(&f.pk, "message");
		anes_pack_str(&f.pk, message);
	}
	msgpack_pack_nil(&f.pk);
	h_fake_send(io, &f, NULL, 0);
}

static void hello_good(mb *b, uint64_t protocol)
{
	mb_init(b);
	mb_u(b, "protocol", protocol);
	mb_s(b, "server", "fake");
	mb_s(b, "version", "9.9");
	mb_s(b, "backend", "cpu");
}

/* Bytes straight onto the socket, past the codec's checks. */
static void raw_write(fake *fk, anes_io *io, const void *p, size_t n)
{
	if (write(io->fd, p, n) != (ssize_t)n)
		fk->failures++;
}

/* ---- hello ---------------------------------------------------------------------------- */

static const struct {
	int rc;
	const char *what;
} hello_cases[] = {
	{ -ANESHARE_EPROTOCOL, "no protocol" },
	{ -ANESHARE_EVERSION, "protocol 2" },
	{ -ANESHARE_EPROTOCOL, "a version that is not a string" },
	{ -ANESHARE_EPROTOCOL, "no backend" },
	{ -ANESHARE_EPROTOCOL, "a version holding a NUL" },
	{ -ANESHARE_EPROTOCOL, "limits that are not a map" },
	{ -ANESHARE_EPROTOCOL, "a limit that is not a number" },
	{ -ANESHARE_ESHUTTING_DOWN, "the error shutting_down" },
	{ -ANESHARE_EPROTOCOL, "an error with code 0" },
	{ -ANESHARE_EPROTOCOL, "an error with code 9000" },
	{ -ANESHARE_EPROTOCOL, "an error without a message" },
	{ -ECONNRESET, "a hang-up" },
	{ -ANESHARE_EPROTOCOL, "an answer carrying an fd" },
	{ -ANESHARE_EPROTOCOL, "a request instead of an answer" },
	{ -ANESHARE_EPROTOCOL, "a payload that is not msgpack" },
	{ -ANESHARE_EINVALID_PARAMS, "an error notification (final)" },
	{ -ECONNRESET, "an error notification of a limit (not final: a reset)" },
	{ -ANESHARE_EPROTOCOL, "a frame longer than max_frame" },
	{ 0, "an unknown notification and a stray answer, then hello's" },
};

static void hello_script(fake *fk, anes_io *io, const anes_msg *m)
{
	mb b;
	anes_frame f;
	switch (fk->conn - 1) {
	case 0:
		mb_init(&b);
		mb_s(&b, "version", "9.9");
		mb_s(&b, "backend", "cpu");
		break;
	case 1:
		hello_good(&b, 2);
		break;
	case 2:
		mb_init(&b);
		mb_u(&b, "protocol", 1);
		mb_u(&b, "version", 9);
		mb_s(&b, "backend", "cpu");
		break;
	case 3:
		mb_init(&b);
		mb_u(&b, "protocol", 1);
		mb_s(&b, "version", "9.9");
		break;
	case 4:
		mb_init(&b);
		mb_u(&b, "protocol", 1);
		msgpack_pack_str(mb_key(&b, "version"), 3);
		msgpack_pack_str_body(&b.pk, "a\0b", 3);
		mb_s(&b, "backend", "cpu");
		break;
	case 5:
		hello_good(&b, 1);
		mb_u(&b, "limits", 7);
		break;
	case 6: {
		hello_good(&b, 1);
		mb lim;
		mb_init(&lim);
		mb_s(&lim, "max_frame", "big");
		mb_pack(mb_key(&b, "limits"), &lim);
		break;
	}
	case 7:
		send_error(io, m->msgid, ANESHARE_ESHUTTING_DOWN - ANESHARE_EBASE, "stopping");
		return;
	case 8:
		send_error(io, m->msgid, 0, "zero");
		return;
	case 9:
		send_error(io, m->msgid, 9000, "beyond the wire's codes");
		return;
	case 10:
		send_error(io, m->msgid, 5, NULL);
		return;
	case 11:
		fk->hangup = true;
		return;
	case 12: {
		int fd = -1;
		if (anes_memfd_create("stray", 4096, &fd) < 0)
			fk->failures++;
		hello_good(&b, 1);
		mb_result(io, m->msgid, &b, &fd, 1);   /* the fd is taken */
		return;
	}
	case 13:
		anes_frame_init(&f);
		anes_pack_request(&f.pk, 1, "hello", 0);
		h_fake_send(io, &f, NULL, 0);
		return;
	case 14: {
		uint8_t junk[ANES_FRAME_HEADER_SIZE + 2] = { 0 };
		anes_frame_header_write(junk, 2, 0);
		junk[ANES_FRAME_HEADER_SIZE] = junk[ANES_FRAME_HEADER_SIZE + 1] = 0xc1;   /* never used */
		raw_write(fk, io, junk, sizeof junk);
		return;
	}
	case 15:
	case 16:
		anes_frame_init(&f);
		anes_pack_notify(&f.pk, "error", 2);
		anes_pack_str(&f.pk, "code");
		msgpack_pack_uint32(&f.pk, fk->conn - 1 == 15 ? ANESHARE_EINVALID_PARAMS - ANESHARE_EBASE
		                                               : ANESHARE_ELIMIT - ANESHARE_EBASE);
		anes_pack_str(&f.pk, "message");
		anes_pack_str(&f.pk, "closed by the fake");
		h_fake_send(io, &f, NULL, 0);
		fk->hangup = true;
		return;
	case 17: {
		uint8_t hdr[ANES_FRAME_HEADER_SIZE];
		anes_frame_header_write(hdr, ANES_FRAME_MAX_DEFAULT + 1, 0);
		raw_write(fk, io, hdr, sizeof hdr);
		return;
	}
	default:
		anes_frame_init(&f);
		anes_pack_notify(&f.pk, "hint", 0);
		h_fake_send(io, &f, NULL, 0);
		send_empty_result(io, m->msgid + 1000);
		hello_good(&b, 1);
		break;
	}
	mb_result(io, m->msgid, &b, NULL, 0);
}

Test(libwire, hello_answers_the_library_refuses)
{
	fake fk;
	fake_start(&fk, hello_script, NULL);
	int fds = h_count_fds();
	for (size_t i = 0; i < sizeof hello_cases / sizeof hello_cases[0]; i++) {
		aneshare_conn *c = (aneshare_conn *)(uintptr_t)0x5a5a;
		int r = aneshare_connect(fk.path, NULL, &c);
		cr_assert_eq(r, hello_cases[i].rc, "hello with %s: %d (%s), want %s", hello_cases[i].what, r,
		             aneshare_strerror(r), aneshare_strerror(hello_cases[i].rc));
		if (r == 0) {
			cr_assert_str_eq(aneshare_server(c)->server_version, "9.9");
			aneshare_disconnect(c);
		} else {
			cr_assert_eq((uintptr_t)c, 0x5a5a, "%s: the out-parameter is written only on success",
			             hello_cases[i].what);
		}
		fake_wait_closed(&fk, (int)i + 1);
		cr_assert_eq(h_count_fds(), fds, "%s: no fd kept", hello_cases[i].what);
	}
	fake_stop(&fk);
	cr_assert_eq(fk.conn, (int)(sizeof hello_cases / sizeof hello_cases[0]));
}

/* ---- the limits hello announces ---------------------------------------------------------- */

static void hello_limits(fake *fk, anes_io *io, const anes_msg *m)
{
	mb b, lim;
	hello_good(&b, 1);
	mb_init(&lim);
	if (fk->conn == 1) {
		mb_u(&lim, "max_frame", 1);            /* below the lowest: the lowest */
		mb_u(&lim, "max_inflight", 0);         /* none: one */
		mb_u(&lim, "max_surfaces", 1ull << 40);
		mb_u(&lim, "max_fds_per_frame", 1000);
		mb_s(&lim, "a_limit_of_a_newer_daemon", "ignored");
	} else {
		mb_u(&lim, "max_frame", 1ull << 40);   /* beyond the highest: the highest */
		mb_u(&lim, "max_programs", 3);
	}
	mb_pack(mb_key(&b, "limits"), &lim);
	mb_result(io, m->msgid, &b, NULL, 0);
}

static void answer_status_min(fake *fk, anes_io *io, const anes_msg *m);

Test(libwire, hello_limits_are_clamped_and_the_frame_limit_holds)
{
	fake fk;
	fake_start(&fk, hello_limits, answer_status_min);
	aneshare_conn *c = fake_connect(&fk);
	const aneshare_server_info *si = aneshare_server(c);
	cr_assert_eq(si->max_frame, ANES_FRAME_MAX_LOWEST);
	cr_assert_eq(si->max_inflight, 1);
	cr_assert_eq(si->max_surfaces, UINT32_MAX);
	cr_assert_eq(si->max_programs, 256, "a limit not announced keeps its documented default");

	/* a request beyond max_frame fails here, nothing is sent, the
	 * connection goes on; with weight fds, the fds are not kept */
	size_t n = ANES_FRAME_MAX_LOWEST + 16;
	char *mil = malloc(n + 1);
	memset(mil, ' ', n);
	mil[n] = '\0';
	int fds = h_count_fds();
	aneshare_program *p = (aneshare_program *)(uintptr_t)0x5a5a;
	int r = aneshare_program_compile(c, mil, NULL, 0, &p, NULL);
	cr_assert_eq(r, -EMSGSIZE, "%s", aneshare_strerror(r));
	cr_assert(strstr(aneshare_last_error(c), "max_frame"), "%s", aneshare_last_error(c));
	int wfd = -1;
	cr_assert_eq(aneshare_weight_memfd("w", "abcd", 4, &wfd), 0);
	aneshare_weight_fd wf = { .path = "@model_path/w.bin", .fd = wfd };
	r = aneshare_program_compile_fds(c, mil, &wf, 1, &p, NULL);
	cr_assert_eq(r, -EMSGSIZE, "%s", aneshare_strerror(r));
	close(wfd);
	cr_assert_eq(h_count_fds(), fds, "the weight file's duplicates are closed");
	cr_assert_eq((uintptr_t)p, 0x5a5a);
	cr_assert_eq(seen(&fk, "program.compile", 0), 0, "nothing was sent");
	aneshare_status *st = NULL;
	cr_assert_eq(aneshare_get_status(c, &st), 0, "%s", aneshare_last_error(c));
	aneshare_status_free(st);
	aneshare_disconnect(c);

	c = fake_connect(&fk);
	cr_assert_eq(aneshare_server(c)->max_frame, ANES_FRAME_MAX_HIGHEST);
	cr_assert_eq(aneshare_server(c)->max_programs, 3);
	aneshare_disconnect(c);
	free(mil);
	fake_stop(&fk);
}

/* ---- status ---------------------------------------------------------------------------- */

enum {
	ST_NO_VERSION, ST_BACKEND_INT, ST_UPTIME_STR, ST_CLIENTS_BIG, ST_SURFACES_STR, ST_BYTES_STR,
	ST_RUNS_STR, ST_COMPILES_STR, ST_HITS_STR, ST_PROGRAMS_MAP, ST_PROCS_MAP, ST_PROCS_NO_TOTAL,
	ST_PROC_INT, ST_PROC_NO_NAME, ST_TOTALS_MAP, ST_TOTAL_INT, ST_TOTAL_NO_RESOURCE, ST_SHARED_MAP,
	ST_SHARED_TOTAL_STR, ST_SHARED_INT, ST_SHARED_NO_HOLDERS, ST_HOLDER_INT, ST_HOLDER_NO_NAME,
	ST_PROGRAM_INT, ST_PROGRAM_NO_KEY, ST_PROGRAM_NO_REFS,
	ST_N_BAD,
	ST_GOOD = ST_N_BAD,
};

static void pack_status(anes_io *io, uint32_t msgid, int bad)
{
	mb b, x;
	mb_init(&b);
	if (bad != ST_NO_VERSION)
		mb_s(&b, "version", "9.9");
	if (bad == ST_BACKEND_INT)
		mb_u(&b, "backend", 1);
	else
		mb_s(&b, "backend", "cpu");
	if (bad == ST_UPTIME_STR)
		mb_s(&b, "uptime_ms", "1");
	else
		mb_u(&b, "uptime_ms", 1234);
	mb_u(&b, "clients", bad == ST_CLIENTS_BIG ? 1ull << 33 : 2);
	static const char *const counters[] = { "surfaces", "surface_bytes", "runs", "compiles",
		                                    "cache_hits" };
	for (int i = 0; i < 5; i++) {
		if (bad == ST_SURFACES_STR + i)
			mb_s(&b, counters[i], "7");
		else
			mb_u(&b, counters[i], 7 + (uint64_t)i);
	}
	/* programs: one */
	msgpack_packer *pk = mb_key(&b, "programs");
	if (bad == ST_PROGRAMS_MAP) {
		msgpack_pack_map(pk, 0);
	} else {
		msgpack_pack_array(pk, 1);
		if (bad == ST_PROGRAM_INT) {
			msgpack_pack_uint32(pk, 1);
		} else {
			mb_init(&x);
			if (bad != ST_PROGRAM_NO_KEY)
				mb_s(&x, "key", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
			if (bad != ST_PROGRAM_NO_REFS)
				mb_u(&x, "refs", 2);
			mb_pack(pk, &x);
		}
	}
	/* processes: two, one of an unknown priority class */
	pk = mb_key(&b, "processes");
	if (bad == ST_PROCS_MAP) {
		msgpack_pack_map(pk, 0);
	} else {
		msgpack_pack_array(pk, 2);
		if (bad == ST_PROC_INT) {
			msgpack_pack_uint32(pk, 1);
		} else {
			mb_init(&x);
			if (bad != ST_PROC_NO_NAME)
				mb_s(&x, "name", "one");
			mb_u(&x, "pid", 41);
			mb_s(&x, "priority", "background");
			mb_u(&x, "device_share", 30);
			mb_pack(pk, &x);
		}
		mb_init(&x);
		mb_s(&x, "name", "two");
		mb_s(&x, "priority", "urgent");
		mb_pack(pk, &x);
	}
	if (bad != ST_PROCS_NO_TOTAL)
		mb_u(&b, "processes_total", 2);
	/* totals: one */
	pk = mb_key(&b, "totals");
	if (bad == ST_TOTALS_MAP) {
		msgpack_pack_map(pk, 0);
	} else {
		msgpack_pack_array(pk, 1);
		if (bad == ST_TOTAL_INT) {
			msgpack_pack_uint32(pk, 1);
		} else {
			mb_init(&x);
			if (bad != ST_TOTAL_NO_RESOURCE)
				mb_s(&x, "resource", "surfaces");
			mb_u(&x, "used", 3);
			mb_u(&x, "limit", 9);
			mb_pack(pk, &x);
		}
	}
	/* shared: one surface with one holder; its totals say fewer (a daemon's
	 * counts taken apart from the list): the list wins */
	pk = mb_key(&b, "shared");
	if (bad == ST_SHARED_MAP) {
		msgpack_pack_map(pk, 0);
	} else {
		msgpack_pack_array(pk, 1);
		if (bad == ST_SHARED_INT) {
			msgpack_pack_uint32(pk, 1);
		} else {
			mb_init(&x);
			mb_u(&x, "key", 99);
			mb_u(&x, "size", 4096);
			mb_u(&x, "holders_total", 0);
			if (bad != ST_SHARED_NO_HOLDERS) {
				msgpack_packer *hp = mb_key(&x, "holders");
				msgpack_pack_array(hp, 1);
				if (bad == ST_HOLDER_INT) {
					msgpack_pack_uint32(hp, 1);
				} else {
					mb h;
					mb_init(&h);
					if (bad != ST_HOLDER_NO_NAME)
						mb_s(&h, "name", "holder");
					mb_u(&h, "pid", 42);
					msgpack_pack_true(mb_key(&h, "read_only"));
					mb_pack(hp, &h);
				}
			}
			mb_pack(pk, &x);
		}
	}
	if (bad == ST_SHARED_TOTAL_STR)
		mb_s(&b, "shared_total", "1");
	else
		mb_u(&b, "shared_total", 0);
	mb_result(io, msgid, &b, NULL, 0);
}

static void answer_status_script(fake *fk, anes_io *io, const anes_msg *m)
{
	if (!anes_msg_method_is(m, "status")) {
		fk->failures++;
		return;
	}
	pack_status(io, m->msgid, fk->step++);
}

Test(libwire, malformed_status_is_refused_and_the_connection_goes_on)
{
	fake fk;
	fake_start(&fk, NULL, answer_status_script);
	aneshare_conn *c = fake_connect(&fk);
	for (int i = 0; i < ST_N_BAD; i++) {
		aneshare_status *st = (aneshare_status *)(uintptr_t)0x5a5a;
		int r = aneshare_get_status(c, &st);
		cr_assert_eq(r, -ANESHARE_EPROTOCOL, "case %d: %d %s", i, r, aneshare_strerror(r));
		cr_assert_eq((uintptr_t)st, 0x5a5a, "case %d", i);
		cr_assert_str_eq(aneshare_last_error(c), "malformed status from the daemon");
	}
	aneshare_status *st = NULL;
	int r = aneshare_get_status(c, &st);
	cr_assert_eq(r, 0, "%s", aneshare_last_error(c));
	cr_assert_eq(st->uptime_ms, 1234);
	cr_assert_eq(st->clients, 2);
	cr_assert_eq(st->surfaces, 7);
	cr_assert_eq(st->cache_hits, 11);
	cr_assert_eq(st->programs, 1);
	cr_assert_eq(st->program_list[0].refs, 2);
	cr_assert_eq(st->n_processes, 2);
	cr_assert_str_eq(st->process_list[0].name, "one");
	cr_assert_str_eq(st->process_list[0].priority, "background");
	cr_assert_eq(st->process_list[0].device_share, 30);
	cr_assert_str_eq(st->process_list[1].priority, "", "an unknown class is not passed on");
	cr_assert_eq(st->n_totals, 1);
	cr_assert_str_eq(st->total_list[0].resource, "surfaces");
	cr_assert_eq(st->total_list[0].limit, 9);
	cr_assert_eq(st->n_shared, 1);
	cr_assert_eq(st->shared_total, 1, "never fewer than listed");
	cr_assert_eq(st->shared_list[0].holders_total, 1, "never fewer than listed");
	cr_assert_str_eq(st->shared_list[0].holder_list[0].name, "holder");
	cr_assert(st->shared_list[0].holder_list[0].read_only);
	cr_assert_eq(st->lane_runs, 0, "counters a daemon does not report are 0");
	aneshare_status_free(st);
	aneshare_disconnect(c);
	fake_stop(&fk);
}

/* ---- the daemon's errors and notifications ---------------------------------------------- */

static void answer_status_min(fake *fk, anes_io *io, const anes_msg *m)
{
	(void)fk;
	pack_status(io, m->msgid, ST_GOOD);
}

static void answer_errors(fake *fk, anes_io *io, const anes_msg *m)
{
	anes_frame f;
	char big[2100];
	switch (fk->step++) {
	case 0:
		send_error(io, m->msgid, 77, "a code of a newer daemon");
		break;
	case 1:
		send_error(io, m->msgid, -3, "negative");
		break;
	case 2:
		memset(big, 'm', sizeof big - 1);
		big[sizeof big - 1] = '\0';
		send_error(io, m->msgid, ANESHARE_ELIMIT - ANESHARE_EBASE, big);
		break;
	case 3:
		/* an unknown notification, an answer to nothing, then the answer */
		anes_frame_init(&f);
		anes_pack_notify(&f.pk, "news", 1);
		anes_pack_str(&f.pk, "x");
		msgpack_pack_uint32(&f.pk, 1);
		h_fake_send(io, &f, NULL, 0);
		send_error(io, m->msgid + 77, 5, "for nobody");
		pack_status(io, m->msgid, ST_GOOD);
		break;
	case 4:
		/* an error notification of the daemon's own limits: not final */
		anes_frame_init(&f);
		anes_pack_notify(&f.pk, "error", 2);
		anes_pack_str(&f.pk, "code");
		msgpack_pack_uint32(&f.pk, ANESHARE_ENO_MEMORY - ANESHARE_EBASE);
		anes_pack_str(&f.pk, "message");
		anes_pack_str(&f.pk, "the daemon is out of memory");
		h_fake_send(io, &f, NULL, 0);
		fk->hangup = true;
		break;
	case 5:
		pack_status(io, m->msgid, ST_GOOD);   /* on the next connection */
		break;
	case 6:
		/* a malformed error notification: final, EPROTOCOL */
		anes_frame_init(&f);
		anes_pack_notify(&f.pk, "error", 1);
		anes_pack_str(&f.pk, "code");
		msgpack_pack_uint32(&f.pk, 5);
		h_fake_send(io, &f, NULL, 0);
		fk->hangup = true;
		break;
	default:
		fk->failures++;
	}
}

Test(libwire, the_daemons_errors_are_the_librarys_codes)
{
	fake fk;
	fake_start(&fk, NULL, answer_errors);
	aneshare_conn *c = fake_connect(&fk);
	aneshare_status *st = NULL;
	int r = aneshare_get_status(c, &st);
	cr_assert_eq(r, -(ANESHARE_EBASE + 77), "an unknown code in the wire's range is passed on: %d", r);
	cr_assert_str_eq(aneshare_strerror(r), "unknown daemon error");
	cr_assert_str_eq(aneshare_last_error(c), "a code of a newer daemon");
	cr_assert_eq(aneshare_get_status(c, &st), -ANESHARE_EPROTOCOL);
	cr_assert_eq(aneshare_get_status(c, &st), -ANESHARE_ELIMIT);
	cr_assert_eq(strlen(aneshare_last_error(c)), 1023, "a long message is cut to the buffer");
	r = aneshare_get_status(c, &st);
	cr_assert_eq(r, 0, "%s", aneshare_last_error(c));
	aneshare_status_free(st);
	/* closed for the daemon's memory: not final; status is idempotent, so
	 * the library reconnects and asks the next daemon */
	r = aneshare_get_status(c, &st);
	cr_assert_eq(r, 0, "%d %s", r, aneshare_last_error(c));
	aneshare_status_free(st);
	cr_assert_eq(aneshare_reconnect_count(c), 1);
	cr_assert_eq(seen(&fk, "status", 0), 6);
	/* a notification that does not parse: final */
	cr_assert_eq(aneshare_get_status(c, &st), -ANESHARE_EPROTOCOL);
	cr_assert_eq(aneshare_get_status(c, &st), -ANESHARE_EPROTOCOL, "final: no reconnect");
	cr_assert_eq(aneshare_dispatch(c), -ANESHARE_EPROTOCOL);
	cr_assert_eq(aneshare_reconnect_count(c), 1);
	aneshare_disconnect(c);
	fake_stop(&fk);
	cr_assert_eq(fk.conn, 2);
}

/* ---- programs ------------------------------------------------------------------------ */

static const char KEY[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

static void pack_tensor(msgpack_packer *pk, const char *name, const char *dtype, uint64_t d0, uint64_t d1,
                        uint64_t bytes)
{
	mb t;
	mb_init(&t);
	if (name)
		mb_s(&t, "name", name);
	mb_s(&t, "dtype", dtype);
	msgpack_packer *sp = mb_key(&t, "shape");
	msgpack_pack_array(sp, 2);
	msgpack_pack_uint64(sp, d0);
	msgpack_pack_uint64(sp, d1);
	mb_u(&t, "bytes", bytes);
	mb_pack(pk, &t);
}

enum {
	CI_ID0, CI_KEY_UPPER, CI_KEY_SHORT, CI_CACHED_STR, CI_ERROR,
	CI_N_COMPILE,
	IN_NO_FUNCTIONS = CI_N_COMPILE, IN_EMPTY, IN_FN_INT, IN_NO_NAME, IN_NO_INPUTS, IN_TENSOR_INT,
	IN_DTYPE, IN_SHAPE_MAP, IN_DIM0, IN_DIM_STR, IN_BYTES, IN_OVERFLOW, IN_TENSOR_NO_NAME,
	IN_STATES_INT, IN_ERROR,
	CI_N_BAD,
	CI_GOOD = CI_N_BAD,
};

/* An info result: one function "main", an fp16 input [1,4] and an fp32 output [1,2]; int8
 * state [2,2]; bad breaks one thing. */
static void pack_info(anes_io *io, uint32_t msgid, int bad)
{
	if (bad == IN_ERROR) {
		send_error(io, msgid, ANESHARE_ENO_SUCH_PROGRAM - ANESHARE_EBASE, "gone");
		return;
	}
	mb b, fn;
	mb_init(&b);
	if (bad == IN_NO_FUNCTIONS) {
		mb_result(io, msgid, &b, NULL, 0);
		return;
	}
	msgpack_packer *pk = mb_key(&b, "functions");
	if (bad == IN_EMPTY) {
		msgpack_pack_array(pk, 0);
		mb_result(io, msgid, &b, NULL, 0);
		return;
	}
	msgpack_pack_array(pk, 1);
	if (bad == IN_FN_INT) {
		msgpack_pack_uint32(pk, 3);
		mb_result(io, msgid, &b, NULL, 0);
		return;
	}
	mb_init(&fn);
	if (bad != IN_NO_NAME)
		mb_s(&fn, "name", "main");
	if (bad != IN_NO_INPUTS) {
		msgpack_packer *ip = mb_key(&fn, "inputs");
		msgpack_pack_array(ip, 1);
		switch (bad) {
		case IN_TENSOR_INT: msgpack_pack_uint32(ip, 1); break;
		case IN_DTYPE: pack_tensor(ip, "x", "fp64", 1, 4, 32); break;
		case IN_DIM0: pack_tensor(ip, "x", "fp16", 0, 4, 0); break;
		case IN_BYTES: pack_tensor(ip, "x", "fp16", 1, 4, 9); break;
		case IN_OVERFLOW: pack_tensor(ip, "x", "fp16", 1ull << 32, 1ull << 32, 0); break;
		case IN_TENSOR_NO_NAME: pack_tensor(ip, NULL, "fp16", 1, 4, 8); break;
		case IN_SHAPE_MAP:
		case IN_DIM_STR: {
			mb t;
			mb_init(&t);
			mb_s(&t, "name", "x");
			mb_s(&t, "dtype", "fp16");
			msgpack_packer *sp = mb_key(&t, "shape");
			if (bad == IN_SHAPE_MAP) {
				msgpack_pack_map(sp, 0);
			} else {
				msgpack_pack_array(sp, 1);
				anes_pack_str(sp, "4");
			}
			mb_u(&t, "bytes", 8);
			mb_pack(ip, &t);
			break;
		}
		default: pack_tensor(ip, "x", "fp16", 1, 4, 8);
		}
	}
	msgpack_packer *op = mb_key(&fn, "outputs");
	msgpack_pack_array(op, 1);
	pack_tensor(op, "y", "fp32", 1, 2, 8);
	msgpack_packer *sp = mb_key(&fn, "states");
	if (bad == IN_STATES_INT) {
		msgpack_pack_uint32(sp, 1);
	} else {
		msgpack_pack_array(sp, 1);
		pack_tensor(sp, "kv", "int8", 2, 2, 4);
	}
	mb_pack(pk, &fn);
	mb_result(io, msgid, &b, NULL, 0);
}

static void pack_compiled(anes_io *io, uint32_t msgid, uint32_t id, int bad)
{
	mb b;
	mb_init(&b);
	mb_u(&b, "id", bad == CI_ID0 ? 0 : id);
	mb_s(&b, "key", bad == CI_KEY_UPPER ? "00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff"
	                : bad == CI_KEY_SHORT ? "0011" : KEY);
	if (bad == CI_CACHED_STR)
		mb_s(&b, "cached", "yes");
	else
		msgpack_pack_true(mb_key(&b, "cached"));
	mb_result(io, msgid, &b, NULL, 0);
}

static void answer_programs(fake *fk, anes_io *io, const anes_msg *m)
{
	uint32_t id = 0;
	(void)anes_mp_u32(m->params, "id", &id);
	if (anes_msg_method_is(m, "program.compile")) {
		int bad = fk->step < CI_N_BAD ? fk->step : CI_GOOD;
		if (bad == CI_ERROR) {
			send_error(io, m->msgid, ANESHARE_ECOMPILE - ANESHARE_EBASE, "line 1: no program");
			fk->step++;
			return;
		}
		pack_compiled(io, m->msgid, 100 + (uint32_t)fk->step, bad);
		if (bad < CI_N_COMPILE)
			fk->step++;
	} else if (anes_msg_method_is(m, "program.info")) {
		int bad = fk->step < CI_N_BAD ? fk->step : CI_GOOD;
		if (id != 100 + (uint32_t)fk->step)
			fk->failures++;
		pack_info(io, m->msgid, bad);
		fk->step++;
	} else if (anes_msg_method_is(m, "program.release")) {
		send_empty_result(io, m->msgid);
	} else {
		fk->failures++;
	}
}

Test(libwire, malformed_compile_and_info_answers_release_the_program)
{
	fake fk;
	fake_start(&fk, NULL, answer_programs);
	aneshare_conn *c = fake_connect(&fk);
	int fds = h_count_fds();
	for (int i = 0; i < CI_N_BAD; i++) {
		aneshare_program *p = (aneshare_program *)(uintptr_t)0x5a5a;
		int want = i == CI_ERROR ? -ANESHARE_ECOMPILE
		         : i == IN_ERROR ? -ANESHARE_ENO_SUCH_PROGRAM : -ANESHARE_EPROTOCOL;
		int r = aneshare_program_compile(c, "program", NULL, 0, &p, NULL);
		cr_assert_eq(r, want, "case %d: %d %s (%s)", i, r, aneshare_strerror(r), aneshare_last_error(c));
		cr_assert_eq((uintptr_t)p, 0x5a5a, "case %d", i);
		/* the daemon's handle, once the library knew it, is released */
		uint32_t id = 100 + (uint32_t)i;
		int want_release = i == CI_ID0 || i == CI_ERROR ? 0 : 1;
		cr_assert_eq(seen(&fk, "program.release", id), want_release, "case %d: releases of %u", i, id);
	}
	cr_assert(strstr(aneshare_last_error(c), "gone"), "%s", aneshare_last_error(c));
	/* a right one, with a weight file: every field as the daemon said */
	int wfd = -1;
	cr_assert_eq(aneshare_weight_memfd(NULL, "abcd", 4, &wfd), 0);
	aneshare_weight_fd wf = { .path = "@model_path/w.bin", .fd = wfd };
	aneshare_program *p = NULL;
	bool cached = false;
	int r = aneshare_program_compile_fds(c, "program", &wf, 1, &p, &cached);
	cr_assert_eq(r, 0, "%s", aneshare_last_error(c));
	close(wfd);
	cr_assert(cached);
	cr_assert_str_eq(aneshare_program_key(p), KEY);
	cr_assert_eq(aneshare_program_function_count(p), 1);
	cr_assert_str_eq(aneshare_program_function_name(p, 0), "main");
	cr_assert_null(aneshare_program_function_name(p, 1));
	const aneshare_tensor_info *t = aneshare_program_input(p, 0, 0);
	cr_assert_eq(t->dtype, ANESHARE_FP16);
	cr_assert_eq(t->rank, 2);
	cr_assert_eq(t->shape[1], 4);
	cr_assert_eq(aneshare_program_output(p, 0, 0)->dtype, ANESHARE_FP32);
	cr_assert_null(aneshare_program_output(p, 0, 1));
	cr_assert_null(aneshare_program_output(p, 1, 0));
	cr_assert_null(aneshare_program_input(p, 0, 1));
	cr_assert_eq(aneshare_program_state_count(p, 0), 1);
	cr_assert_eq(aneshare_program_state(p, 0, 0)->dtype, ANESHARE_INT8);
	cr_assert_null(aneshare_program_state(p, 0, 1));
	cr_assert_eq(aneshare_program_state_count(p, 1), 0);
	cr_assert_eq(aneshare_program_input_count(p, 1), 0);
	cr_assert_eq(aneshare_program_output_count(p, 1), 0);
	cr_assert_eq(aneshare_program_release(p), 0);
	cr_assert_eq(h_count_fds(), fds, "no fd kept");
	aneshare_disconnect(c);
	fake_stop(&fk);
}

/* ---- surfaces --------------------------------------------------------------------------- */

enum {
	SC_NO_FD, SC_TWO_FDS, SC_ID0, SC_SIZE_STR, SC_RO_STR, SC_SMALL_FD, SC_OTHER_SIZE, SC_IOS,
	SC_IOS0, SC_IOS_WITH_FD,
	SC_N_BAD,
};

static void answer_surfaces(fake *fk, anes_io *io, const anes_msg *m)
{
	if (anes_msg_method_is(m, "surface.release")) {
		send_empty_result(io, m->msgid);
		return;
	}
	if (anes_msg_method_is(m, "surface.export")) {
		mb b;
		mb_init(&b);
		switch (fk->step++ - SC_N_BAD - 1) {
		case 0: mb_s(&b, "token", "0123"); break;
		case 1: mb_u(&b, "token", 3); break;
		case 2:
			mb_s(&b, "token", KEY);
			mb_s(&b, "expires_ms", "soon");
			break;
		default:
			mb_s(&b, "token", KEY);   /* no expires_ms: 0 */
		}
		mb_result(io, m->msgid, &b, NULL, 0);
		return;
	}
	if (!anes_msg_method_is(m, "surface.create") && !anes_msg_method_is(m, "surface.import")) {
		fk->failures++;
		return;
	}
	int bad = fk->step++;
	int fds[2] = { -1, -1 };
	unsigned nfds = bad == SC_NO_FD || bad == SC_IOS || bad == SC_IOS0 ? 0 : bad == SC_TWO_FDS ? 2 : 1;
	for (unsigned i = 0; i < nfds; i++)
		if (anes_memfd_create("fake", bad == SC_SMALL_FD ? 1024 : 4096, &fds[i]) < 0)
			fk->failures++;
	mb b;
	mb_init(&b);
	mb_u(&b, "id", bad == SC_ID0 ? 0 : 200 + (uint32_t)bad);
	if (bad == SC_SIZE_STR)
		mb_s(&b, "size", "4096");
	else
		mb_u(&b, "size", bad == SC_OTHER_SIZE ? 2048 : 4096);
	if (bad == SC_RO_STR)
		mb_s(&b, "read_only", "no");
	if (bad == SC_IOS || bad == SC_IOS_WITH_FD)
		mb_u(&b, "iosurface_id", 5);
	if (bad == SC_IOS0)
		mb_u(&b, "iosurface_id", 0);
	mb_result(io, m->msgid, &b, fds, nfds);   /* the fds are taken */
}

Test(libwire, malformed_surface_answers_release_the_surface_and_keep_no_fd)
{
	fake fk;
	fake_start(&fk, NULL, answer_surfaces);
	aneshare_conn *c = fake_connect(&fk);
	int fds = h_count_fds();
	for (int i = 0; i < SC_N_BAD; i++) {
		aneshare_surface *s = (aneshare_surface *)(uintptr_t)0x5a5a;
		int r = aneshare_surface_create(c, 4096, &s);
		cr_assert_eq(r, -ANESHARE_EPROTOCOL, "case %d: %d %s (%s)", i, r, aneshare_strerror(r),
		             aneshare_last_error(c));
		cr_assert_eq((uintptr_t)s, 0x5a5a, "case %d", i);
		uint32_t id = 200 + (uint32_t)i;
		cr_assert_eq(seen(&fk, "surface.release", id), i == SC_ID0 ? 0 : 1, "case %d (%s): releases of %u", i,
		             aneshare_last_error(c), id);
		cr_assert_eq(h_count_fds(), fds, "case %d: no fd kept", i);
		if (i == SC_IOS)
			cr_assert(strstr(aneshare_last_error(c), "IOSurface"), "%s", aneshare_last_error(c));
	}
	/* a right one, then its exports */
	aneshare_surface *s = NULL;
	cr_assert_eq(aneshare_surface_create(c, 4096, &s), 0, "%s", aneshare_last_error(c));
	cr_assert_eq(aneshare_surface_size(s), 4096);
	cr_assert_not(aneshare_surface_read_only(s));
	cr_assert_eq(aneshare_surface_iosurface_id(s), 0);
	aneshare_token t;
	uint64_t expires = 77;
	for (int i = 0; i < 3; i++)
		cr_assert_eq(aneshare_surface_export(s, NULL, &t, &expires), -ANESHARE_EPROTOCOL, "export case %d", i);
	cr_assert_eq(expires, 77, "written only on success");
	cr_assert_eq(aneshare_surface_export(s, NULL, &t, &expires), 0, "%s", aneshare_last_error(c));
	cr_assert_str_eq(t.text, KEY);
	cr_assert_eq(expires, 0);
	cr_assert_eq(aneshare_surface_release(s), 0);
	cr_assert_eq(h_count_fds(), fds, "no fd kept");
	aneshare_disconnect(c);
	fake_stop(&fk);
}

/* ---- runs and states ------------------------------------------------------------------- */

static void answer_surface_ok(fake *fk, anes_io *io, const anes_msg *m, uint32_t id)
{
	int fd = -1;
	bool import = anes_msg_method_is(m, "surface.import");
	if (!import && anes_memfd_create("fake", 4096, &fd) < 0)
		fk->failures++;
	mb b;
	mb_init(&b);
	mb_u(&b, "id", id);
	mb_u(&b, "size", 4096);
	mb_result(io, m->msgid, &b, &fd, import ? 0 : 1);   /* the fd is taken */
}

static void answer_state_ok(anes_io *io, const anes_msg *m, uint32_t id)
{
	mb b;
	mb_init(&b);
	mb_u(&b, "id", id);
	mb_u(&b, "size", 4);
	mb_result(io, m->msgid, &b, NULL, 0);
}

/* The objects every scenario starts with; answers what is not a run. */
static bool answer_setup(fake *fk, anes_io *io, const anes_msg *m)
{
	if (anes_msg_method_is(m, "program.compile")) {
		pack_compiled(io, m->msgid, 100, CI_GOOD);
	} else if (anes_msg_method_is(m, "program.info")) {
		pack_info(io, m->msgid, CI_GOOD);
	} else if (anes_msg_method_is(m, "surface.create")) {
		answer_surface_ok(fk, io, m, 200 + (uint32_t)fk->step++);
	} else if (anes_msg_method_is(m, "surface.release") || anes_msg_method_is(m, "program.release") ||
	           anes_msg_method_is(m, "state.release") || anes_msg_method_is(m, "state.reset")) {
		send_empty_result(io, m->msgid);
	} else {
		return false;
	}
	return true;
}

static void answer_runs(fake *fk, anes_io *io, const anes_msg *m)
{
	if (answer_setup(fk, io, m))
		return;
	mb b;
	if (anes_msg_method_is(m, "state.create")) {
		if (seen(fk, "state.create", 0) == 1) {   /* the first: malformed */
			mb_init(&b);
			mb_u(&b, "id", 300);
			mb_s(&b, "size", "4");
			mb_result(io, m->msgid, &b, NULL, 0);
		} else {
			answer_state_ok(io, m, 301);
		}
		return;
	}
	if (!anes_msg_method_is(m, "run")) {
		fk->failures++;
		return;
	}
	int fd = -1;
	anes_frame f;
	switch (seen(fk, "run", 0)) {
	case 1:
		send_error(io, m->msgid, ANESHARE_ERUN_FAILED - ANESHARE_EBASE, "the device said no");
		break;
	case 2:   /* a result with an fd */
		if (anes_memfd_create("stray", 4096, &fd) < 0)
			fk->failures++;
		mb_init(&b);
		mb_result(io, m->msgid, &b, &fd, 1);   /* the fd is taken */
		break;
	case 3:   /* a chain whose second step failed */
		anes_frame_init(&f);
		msgpack_pack_array(&f.pk, 4);
		msgpack_pack_uint8(&f.pk, ANES_MSG_RESPONSE);
		msgpack_pack_uint32(&f.pk, m->msgid);
		msgpack_pack_map(&f.pk, 3);
		anes_pack_str(&f.pk, "code");
		msgpack_pack_uint32(&f.pk, ANESHARE_ESIZE_MISMATCH - ANESHARE_EBASE);
		anes_pack_str(&f.pk, "message");
		anes_pack_str(&f.pk, "step 1: output 0 is too small");
		anes_pack_str(&f.pk, "failed_step");
		msgpack_pack_uint32(&f.pk, 1);
		msgpack_pack_nil(&f.pk);
		h_fake_send(io, &f, NULL, 0);
		break;
	default:
		mb_init(&b);
		mb_u(&b, "elapsed_us", 42);
		mb_result(io, m->msgid, &b, NULL, 0);
	}
}

Test(libwire, run_and_state_answers_are_the_librarys_results)
{
	fake fk;
	fake_start(&fk, NULL, answer_runs);
	aneshare_conn *c = fake_connect(&fk);
	int fds = h_count_fds();
	aneshare_program *p = NULL;
	cr_assert_eq(aneshare_program_compile(c, "program", NULL, 0, &p, NULL), 0, "%s", aneshare_last_error(c));
	aneshare_surface *in = NULL, *out = NULL;
	cr_assert_eq(aneshare_surface_create(c, 4096, &in), 0);
	cr_assert_eq(aneshare_surface_create(c, 4096, &out), 0);

	aneshare_state *st = (aneshare_state *)(uintptr_t)0x5a5a;
	cr_assert_eq(aneshare_state_create(p, 0, &st), -ANESHARE_EPROTOCOL);
	cr_assert_eq((uintptr_t)st, 0x5a5a);
	cr_assert_eq(seen(&fk, "state.release", 300), 1, "the state a malformed reply named is released");
	cr_assert_eq(aneshare_state_create(p, 0, &st), 0, "%s", aneshare_last_error(c));
	cr_assert_eq(aneshare_state_size(st), 4);

	int r = aneshare_run(p, 0, &in, 1, &out, 1);
	cr_assert_eq(r, -ANESHARE_ERUN_FAILED, "%s", aneshare_strerror(r));
	cr_assert_str_eq(aneshare_last_error(c), "the device said no");
	r = aneshare_run(p, 0, &in, 1, &out, 1);
	cr_assert_eq(r, -ANESHARE_EPROTOCOL, "%s", aneshare_strerror(r));
	cr_assert(strstr(aneshare_last_error(c), "fd"), "%s", aneshare_last_error(c));
	aneshare_step steps[2] = { { p, 0, &in, 1, &out, 1 }, { p, 0, &out, 1, &in, 1 } };
	r = aneshare_run_chain(c, steps, 2);
	cr_assert_eq(r, -ANESHARE_ESIZE_MISMATCH, "%s", aneshare_strerror(r));
	cr_assert_eq(aneshare_last_failed_step(c), 1);
	r = aneshare_run_state(p, 0, st, &in, 1, &out, 1);
	cr_assert_eq(r, 0, "%s", aneshare_last_error(c));
	cr_assert_eq(aneshare_last_run_us(c), 42);
	cr_assert_eq(aneshare_state_reset(st), 0);
	cr_assert_eq(aneshare_state_release(st), 0);
	cr_assert_eq(aneshare_surface_release(in), 0);
	cr_assert_eq(aneshare_surface_release(out), 0);
	cr_assert_eq(aneshare_program_release(p), 0);
	cr_assert_eq(h_count_fds(), fds, "the surfaces' fds are closed, no fd kept");
	aneshare_disconnect(c);
	fake_stop(&fk);
}

/* ---- reconnecting ------------------------------------------------------------------------ */

/* Connection 1 makes the objects and hangs up; 2 speaks another protocol;
 * 3, 4 and 5 hang up while the surface, the program and the state are
 * restored; 6 refuses the surface, compiles the program to another key,
 * and then serves. */
static void hello_reconnect(fake *fk, anes_io *io, const anes_msg *m)
{
	mb b;
	hello_good(&b, fk->conn == 2 ? 2 : 1);
	mb_result(io, m->msgid, &b, NULL, 0);
}

static void answer_reconnect(fake *fk, anes_io *io, const anes_msg *m)
{
	if (fk->conn == 1) {
		if (anes_msg_method_is(m, "state.create"))
			answer_state_ok(io, m, 301);
		else if (anes_msg_method_is(m, "status"))
			fk->hangup = true;
		else if (!answer_setup(fk, io, m))
			fk->failures++;
		return;
	}
	if ((fk->conn == 3 && anes_msg_method_is(m, "surface.import")) ||
	    (fk->conn == 4 && anes_msg_method_is(m, "program.compile")) ||
	    (fk->conn == 5 && anes_msg_method_is(m, "state.create"))) {
		fk->hangup = true;
		return;
	}
	if (anes_msg_method_is(m, "surface.import")) {
		if (fk->conn == 6)
			send_error(io, m->msgid, ANESHARE_ELIMIT - ANESHARE_EBASE, "too many surfaces");
		else
			answer_surface_ok(fk, io, m, 210);
	} else if (anes_msg_method_is(m, "program.compile") && fk->conn == 6 && seen(fk, "program.info", 0) == 1) {
		mb b;   /* compiled again, to another key */
		mb_init(&b);
		mb_u(&b, "id", 110);
		mb_s(&b, "key", "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100");
		mb_result(io, m->msgid, &b, NULL, 0);
	} else if (anes_msg_method_is(m, "state.create")) {
		answer_state_ok(io, m, 311);
	} else if (anes_msg_method_is(m, "status")) {
		pack_status(io, m->msgid, ST_GOOD);
	} else if (!answer_setup(fk, io, m)) {
		fk->failures++;
	}
}

Test(libwire, reconnects_that_fail_and_objects_that_cannot_be_restored)
{
	fake fk;
	fake_start(&fk, hello_reconnect, answer_reconnect);
	aneshare_conn *c = fake_connect(&fk);
	aneshare_program *p = NULL;
	cr_assert_eq(aneshare_program_compile(c, "program", NULL, 0, &p, NULL), 0, "%s", aneshare_last_error(c));
	aneshare_surface *s = NULL;
	cr_assert_eq(aneshare_surface_create(c, 4096, &s), 0);
	aneshare_state *st = NULL;
	cr_assert_eq(aneshare_state_create(p, 0, &st), 0, "%s", aneshare_last_error(c));

	/* the daemon goes; the next one speaks another protocol: a final answer
	 * for this call, no retrying until the deadline */
	aneshare_status *status = NULL;
	int r = aneshare_get_status(c, &status);
	cr_assert_eq(r, -ANESHARE_EVERSION, "%d %s: %s", r, aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_eq(fk.conn, 2);
	cr_assert_eq(aneshare_reconnect_count(c), 0);

	/* the next call tries again: three daemons hang up while the objects are
	 * restored, the fourth refuses the surface and compiles another key */
	r = aneshare_get_status(c, &status);
	cr_assert_eq(r, 0, "%d %s: %s", r, aneshare_strerror(r), aneshare_last_error(c));
	aneshare_status_free(status);
	cr_assert_eq(aneshare_reconnect_count(c), 1);
	cr_assert_eq(fk.conn, 6);
	cr_assert_eq(seen(&fk, "program.release", 110), 1, "the program of another key is released");
	cr_assert_eq(seen(&fk, "state.create", 0), 2, "made on 1 and (hung up) 5, not on 6: its program is lost");

	/* the lost objects fail where they are named, without a request */
	int before = fk.n_log;
	aneshare_surface *other = NULL;
	cr_assert_eq(aneshare_surface_create(c, 4096, &other), 0);
	r = aneshare_run(p, 0, &other, 1, &other, 1);
	cr_assert_eq(r, -ANESHARE_ENO_SUCH_PROGRAM, "%s", aneshare_strerror(r));
	cr_assert(strstr(aneshare_last_error(c), "compiled again"), "%s", aneshare_last_error(c));
	aneshare_token t;
	cr_assert_eq(aneshare_surface_export(s, NULL, &t, NULL), -ANESHARE_ENO_SUCH_SURFACE);
	aneshare_program *p2 = NULL;
	cr_assert_eq(aneshare_program_compile(c, "program", NULL, 0, &p2, NULL), 0, "%s", aneshare_last_error(c));
	r = aneshare_run(p2, 0, &s, 1, &other, 1);
	cr_assert_eq(r, -ANESHARE_ENO_SUCH_SURFACE, "%s", aneshare_strerror(r));
	cr_assert_eq(aneshare_state_reset(st), -ANESHARE_ENO_SUCH_STATE);
	cr_assert_eq(fk.n_log, before + 3, "only surface.create, program.compile and program.info were sent");
	cr_assert_eq(aneshare_state_release(st), 0);
	cr_assert_eq(aneshare_surface_release(s), 0);
	cr_assert_eq(aneshare_program_release(p), 0);
	cr_assert_eq(fk.n_log, before + 3, "the lost objects are released without a request");
	cr_assert_eq(aneshare_program_release(p2), 0);
	cr_assert_eq(aneshare_surface_release(other), 0);
	aneshare_disconnect(c);
	fake_stop(&fk);
}

/* ---- argument checks: nothing is sent ------------------------------------------------------ */

Test(libwire, bad_arguments_fail_before_anything_is_sent)
{
	fake fk;
	fake_start(&fk, NULL, answer_runs);
	aneshare_conn *c = NULL;
	char longpath[200];
	memset(longpath, 'p', sizeof longpath - 1);
	longpath[sizeof longpath - 1] = '\0';
	cr_assert_eq(aneshare_connect(fk.path, NULL, NULL), -EINVAL);
	cr_assert_eq(aneshare_connect("", NULL, &c), -EINVAL);
	cr_assert_eq(aneshare_connect(longpath, NULL, &c), -ENAMETOOLONG);
	cr_assert_null(c);
	c = fake_connect(&fk);
	aneshare_program *p = NULL;
	cr_assert_eq(aneshare_program_compile(c, "program", NULL, 0, &p, NULL), 0);
	aneshare_surface *s = NULL;
	cr_assert_eq(aneshare_surface_create(c, 4096, &s), 0);
	int before = fk.n_log;

	/* NULLs */
	cr_assert_eq(aneshare_get_status(NULL, NULL), -EINVAL);
	cr_assert_eq(aneshare_get_status(c, NULL), -EINVAL);
	cr_assert_eq(aneshare_surface_create(c, 4096, NULL), -EINVAL);
	cr_assert_eq(aneshare_surface_import(c, 0, NULL), -EINVAL);
	cr_assert_eq(aneshare_surface_import(NULL, 0, &s), -EINVAL);
	cr_assert_eq(aneshare_surface_import_iosurface(c, 1, NULL), -EINVAL);
	cr_assert_eq(aneshare_program_compile(c, "x", NULL, 0, NULL, NULL), -EINVAL);
	cr_assert_eq(aneshare_program_compile_fds(NULL, "x", NULL, 0, &p, NULL), -EINVAL);
	cr_assert_eq(aneshare_run(NULL, 0, NULL, 0, NULL, 0), -EINVAL);
	cr_assert_eq(aneshare_run_submit(p, 0, &s, 1, &s, 1, NULL), -EINVAL);
	cr_assert_eq(aneshare_run_chain(NULL, NULL, 1), -EINVAL);
	cr_assert_eq(aneshare_run_async(p, 0, &s, 1, &s, 1, NULL, NULL), -EINVAL);
	cr_assert_eq(aneshare_run_chain_async(c, NULL, 1, NULL, NULL), -EINVAL);
	cr_assert_eq(aneshare_state_create(p, 0, NULL), -EINVAL);
	cr_assert_eq(aneshare_run_state_submit(p, 0, NULL, &s, 1, &s, 1, NULL), -EINVAL);
	cr_assert_eq(aneshare_run_state_async(p, 0, NULL, &s, 1, &s, 1, NULL, NULL), -EINVAL);
	cr_assert_eq(aneshare_wait(NULL, 1), -EINVAL);
	cr_assert_eq(aneshare_dispatch(NULL), -EINVAL);
	cr_assert_eq(aneshare_set_reconnect_timeout(NULL, 1), -EINVAL);
	cr_assert_eq(aneshare_set_reconnect_timeout(c, 3600001), -EINVAL);
	cr_assert_eq(aneshare_set_spin(c, 100001), -EINVAL);
	cr_assert_eq(aneshare_default_socket_path(NULL, 10), -EINVAL);
	char tiny[2];
	cr_assert_eq(aneshare_default_socket_path(tiny, sizeof tiny), -ENAMETOOLONG);
	cr_assert_eq(aneshare_weight_memfd("w", NULL, 4, &(int){ 0 }), -EINVAL);
	cr_assert_eq(aneshare_weight_memfd("w", "x", 1, NULL), -EINVAL);
	/* accessors of nothing */
	cr_assert_null(aneshare_surface_data(NULL));
	cr_assert_eq(aneshare_surface_size(NULL), 0);
	cr_assert_eq(aneshare_surface_id(NULL), 0);
	cr_assert_eq(aneshare_surface_iosurface_id(NULL), 0);
	cr_assert_not(aneshare_surface_read_only(NULL));
	cr_assert_str_eq(aneshare_program_key(NULL), "");
	cr_assert_eq(aneshare_program_function_count(NULL), 0);
	cr_assert_null(aneshare_program_input(NULL, 0, 0));
	cr_assert_eq(aneshare_program_state_count(NULL, 0), 0);
	cr_assert_eq(aneshare_state_size(NULL), 0);
	cr_assert_str_eq(aneshare_last_error(NULL), "");
	cr_assert_null(aneshare_server(NULL));
	cr_assert_eq(aneshare_last_failed_step(NULL), -1);
	cr_assert_eq(aneshare_last_run_us(NULL), 0);
	cr_assert_eq(aneshare_async_outstanding(NULL), 0);
	cr_assert_eq(aneshare_reconnect_count(NULL), 0);
	cr_assert_eq(aneshare_spin(NULL), 0);
	cr_assert_eq(aneshare_fd(NULL), -1);
	cr_assert_eq(aneshare_surface_release(NULL), 0);
	cr_assert_eq(aneshare_program_release(NULL), 0);
	cr_assert_str_eq(aneshare_strerror(5), "unknown error");
	cr_assert_str_eq(aneshare_strerror(-(ANESHARE_EBASE + 8000)), "unknown daemon error");

	/* values the library refuses itself, each with a message */
	struct { int rc; int got; const char *what; } cases[] = {
		{ -EINVAL, aneshare_surface_create(c, 0, &s), "a surface of 0 bytes" },
		{ -EBADF, aneshare_surface_import(c, -1, &s), "a negative fd" },
		{ -ENOTSUP, aneshare_surface_import_iosurface(c, 1, &s), "an IOSurface on Linux" },
		{ -EINVAL, aneshare_surface_import_token(c, "0123", &s), "a short token" },
		{ -EINVAL, aneshare_program_compile(c, NULL, NULL, 0, &p, NULL), "no MIL" },
		{ -EINVAL, aneshare_program_compile(c, "x", NULL, 1, &p, NULL), "weights without an array" },
		{ -EINVAL, aneshare_program_compile(c, "x", &(aneshare_weight){ NULL, "a", 1 }, 1, &p, NULL),
		  "a weight without a path" },
		{ -EINVAL, aneshare_program_compile(c, "x", &(aneshare_weight){ "@model_path/w", NULL, 1 }, 1, &p, NULL),
		  "a weight without data" },
		{ -EINVAL, aneshare_program_compile_fds(c, NULL, NULL, 0, &p, NULL), "no MIL (fds)" },
		{ -EINVAL, aneshare_program_compile_fds(c, "x", NULL, 1, &p, NULL), "files without an array" },
		{ -EINVAL, aneshare_program_compile_fds(c, "x", &(aneshare_weight_fd){ "", 0 }, 1, &p, NULL),
		  "a weight file with an empty path" },
		{ -EINVAL, aneshare_program_compile_fds(c, "x", &(aneshare_weight_fd){ "w", -1 }, 1, &p, NULL),
		  "a weight file without an fd" },
		{ -EINVAL, aneshare_run(p, 1, &s, 1, &s, 1), "a function the program has not" },
		{ -EINVAL, aneshare_run(p, 0, NULL, 1, &s, 1), "inputs without an array" },
		{ -EINVAL, aneshare_run(p, 0, &s, 2000, &s, 1), "too many inputs" },
		{ -EINVAL, aneshare_run(p, 0, &(aneshare_surface *){ NULL }, 1, &s, 1), "a NULL input" },
		{ -EINVAL, aneshare_run_chain(c, NULL, 0), "a chain of no steps" },
		{ -EINVAL, aneshare_run_chain(c, &(aneshare_step){ NULL, 0, NULL, 0, NULL, 0 }, 1),
		  "a step without a program" },
		{ -EINVAL, aneshare_state_create(p, 1, &(aneshare_state *){ NULL }), "a state of no function" },
		{ -ENOENT, aneshare_wait(c, 12345), "a ticket never given" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		cr_assert_eq(cases[i].got, cases[i].rc, "%s: %d (%s), want %s", cases[i].what, cases[i].got,
		             aneshare_strerror(cases[i].got), aneshare_strerror(cases[i].rc));
	cr_assert_str_not_empty(aneshare_last_error(c));
	cr_assert_eq(fk.n_log, before, "nothing was sent");
	cr_assert_eq(aneshare_surface_release(s), 0);
	cr_assert_eq(aneshare_program_release(p), 0);
	aneshare_disconnect(c);
	fake_stop(&fk);
}

/* ---- the CLI against the fake: every dtype ------------------------------------------------ */

/* The fake's program for the CLI: "main" takes and makes one tensor of each
 * dtype; "second" doubles four fp16 values and has an int8 state. */
static const struct {
	const char *name, *dtype;
	uint64_t n, esize;
} CT[7] = {
	{ "a", "fp16", 4, 2 }, { "b", "fp32", 10, 4 }, { "c", "int32", 2, 4 }, { "d", "int16", 2, 2 },
	{ "e", "int8", 4, 1 }, { "f", "uint8", 3, 1 }, { "g", "bool", 5, 1 },
};

typedef struct cliw {
	int fds[64];            /* surface 200 + i: the fake's copy of its memfd */
	int n;
	int conn;               /* the connection they belong to */
	uint8_t in[7][64];      /* the last run's inputs */
	int runs, state_runs;
	bool in_range;          /* every input of every run of main within --fill random's range */
} cliw;

static void pack_cli_info(anes_io *io, uint32_t msgid)
{
	mb b, fn;
	mb_init(&b);
	msgpack_packer *pk = mb_key(&b, "functions");
	msgpack_pack_array(pk, 2);
	mb_init(&fn);
	mb_s(&fn, "name", "main");
	for (int k = 0; k < 2; k++) {
		msgpack_packer *tp = mb_key(&fn, k ? "outputs" : "inputs");
		msgpack_pack_array(tp, 7);
		for (int i = 0; i < 7; i++) {
			char name[8];
			snprintf(name, sizeof name, "%s%s", k ? "o" : "", CT[i].name);
			pack_tensor(tp, name, CT[i].dtype, 1, CT[i].n, CT[i].n * CT[i].esize);
		}
	}
	mb_pack(pk, &fn);
	mb_init(&fn);
	mb_s(&fn, "name", "second");
	msgpack_packer *tp = mb_key(&fn, "inputs");
	msgpack_pack_array(tp, 1);
	pack_tensor(tp, "x", "fp16", 1, 4, 8);
	tp = mb_key(&fn, "outputs");
	msgpack_pack_array(tp, 1);
	pack_tensor(tp, "y", "fp16", 1, 4, 8);
	tp = mb_key(&fn, "states");
	msgpack_pack_array(tp, 1);
	pack_tensor(tp, "kv", "int8", 2, 2, 4);
	mb_pack(pk, &fn);
	mb_result(io, msgid, &b, NULL, 0);
}

static int cli_fd(fake *fk, cliw *w, const msgpack_object *o)
{
	if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 < 200 || o->via.u64 >= 200 + (uint64_t)w->n) {
		fk->failures++;
		return -1;
	}
	return w->fds[o->via.u64 - 200];
}

static void cli_run(fake *fk, cliw *w, anes_io *io, const anes_msg *m)
{
	const msgpack_object *ins, *outs;
	uint32_t ni, no, state = 0;
	const char *fn;
	uint32_t fl;
	if (anes_mp_array(m->params, "inputs", 16, &ins, &ni) < 0 ||
	    anes_mp_array(m->params, "outputs", 16, &outs, &no) < 0 ||
	    anes_mp_str(m->params, "function", 16, &fn, &fl) < 0) {
		fk->failures++;
		return;
	}
	(void)anes_mp_u32(m->params, "state", &state);
	if (fl == 6 && !memcmp(fn, "second", 6)) {
		uint16_t x[4], y[4];
		if (ni != 1 || no != 1 || state != 400 || pread(cli_fd(fk, w, &ins[0]), x, 8, 0) != 8)
			fk->failures++;
		for (int i = 0; i < 4; i++)
			y[i] = anes_f32_to_f16_soft(2.0f * anes_f16_to_f32_soft(x[i]));
		if (pwrite(cli_fd(fk, w, &outs[0]), y, 8, 0) != 8)
			fk->failures++;
		w->state_runs++;
	} else {
		if (ni != 7 || no != 7 || state) {
			fk->failures++;
			return;
		}
		for (int i = 0; i < 7; i++)
			if (pread(cli_fd(fk, w, &ins[i]), w->in[i], CT[i].n * CT[i].esize, 0) !=
			    (ssize_t)(CT[i].n * CT[i].esize))
				fk->failures++;
		/* --fill random's ranges: floats in [-1, 1), integers in [-8, 8], bools 0 or 1 */
		float a[4], b[10];
		int32_t c[2];
		int16_t d[2];
		for (int i = 0; i < 4; i++)
			a[i] = anes_f16_to_f32_soft(((uint16_t *)(void *)w->in[0])[i]);
		memcpy(b, w->in[1], sizeof b);
		memcpy(c, w->in[2], sizeof c);
		memcpy(d, w->in[3], sizeof d);
		for (int i = 0; i < 4; i++)
			w->in_range &= a[i] >= -1 && a[i] <= 1 && (int8_t)w->in[4][i] >= -8 && (int8_t)w->in[4][i] <= 8;
		for (int i = 0; i < 10; i++)
			w->in_range &= b[i] >= -1 && b[i] < 1;
		for (int i = 0; i < 2; i++)
			w->in_range &= c[i] >= -8 && c[i] <= 8 && d[i] >= -8 && d[i] <= 8;
		for (int i = 0; i < 5; i++)
			w->in_range &= w->in[6][i] <= 1;
		/* the outputs: a pattern per dtype */
		uint16_t oa[4] = { anes_f32_to_f16_soft(1), anes_f32_to_f16_soft(-2), 0x7e00,
			               anes_f32_to_f16_soft(3) };
		float ob[10];
		for (int i = 0; i < 10; i++)
			ob[i] = (float)i;
		int32_t oc[2] = { -7, 9 };
		int16_t od[2] = { -300, 100 };
		int8_t oe[4] = { -3, -1, 2, 4 };
		uint8_t of[3] = { 200, 0, 10 }, og[5] = { 1, 0, 2, 0, 0 };
		const void *pat[7] = { oa, ob, oc, od, oe, of, og };
		for (int i = 0; i < 7; i++)
			if (pwrite(cli_fd(fk, w, &outs[i]), pat[i], CT[i].n * CT[i].esize, 0) !=
			    (ssize_t)(CT[i].n * CT[i].esize))
				fk->failures++;
	}
	w->runs++;
	mb b;
	mb_init(&b);
	mb_u(&b, "elapsed_us", 5);
	mb_result(io, m->msgid, &b, NULL, 0);
}

static void answer_cli(fake *fk, anes_io *io, const anes_msg *m)
{
	cliw *w = fk->ud;
	uint64_t size = 0;
	if (w->conn != fk->conn) {   /* a new CLI process: its surfaces are new */
		for (int i = 0; i < w->n; i++)
			close(w->fds[i]);
		w->n = 0;
		w->conn = fk->conn;
	}
	if (anes_msg_method_is(m, "program.compile")) {
		pack_compiled(io, m->msgid, 100, CI_GOOD);
	} else if (anes_msg_method_is(m, "program.info")) {
		pack_cli_info(io, m->msgid);
	} else if (anes_msg_method_is(m, "surface.create") && w->n < 64 &&
	           anes_mp_u64(m->params, "size", 4096, &size) == 0) {
		int fd = -1;
		if (anes_memfd_create("cli", size, &fd) < 0)
			fk->failures++;
		w->fds[w->n] = fcntl(fd, F_DUPFD_CLOEXEC, 3);
		mb b;
		mb_init(&b);
		mb_u(&b, "id", 200 + (uint32_t)w->n++);
		mb_u(&b, "size", size);
		mb_result(io, m->msgid, &b, &fd, 1);
	} else if (anes_msg_method_is(m, "state.create")) {
		answer_state_ok(io, m, 400);
	} else if (anes_msg_method_is(m, "run")) {
		cli_run(fk, w, io, m);
	} else if (!answer_setup(fk, io, m)) {
		fk->failures++;
	}
}

static int cli(fake *fk, char *out, size_t len, const char *const *args)
{
	h_daemon d = { .pid = 0 };
	snprintf(d.dir, sizeof d.dir, "%s", fk->dir);
	snprintf(d.sock, sizeof d.sock, "%s", fk->path);
	return h_run_tool(&d, "ANESHARE_CLI", out, len, args);
}

static void write_bytes(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	cr_assert_eq(fwrite(p, 1, n, f), n);
	cr_assert_eq(fclose(f), 0);
}

Test(libwire, the_cli_runs_every_dtype)
{
	fake fk;
	cliw w = { .in_range = true };
	fake_start_ud(&fk, NULL, answer_cli, &w);
	char mil[200], f32[200], f32bad[200], raw[200], outp[200], wfile[200], warg[300];
	snprintf(mil, sizeof mil, "%s/p.mil", fk.dir);
	snprintf(f32, sizeof f32, "%s/x.f32", fk.dir);
	snprintf(f32bad, sizeof f32bad, "%s/bad.f32", fk.dir);
	snprintf(raw, sizeof raw, "%s/b.bin", fk.dir);
	snprintf(outp, sizeof outp, "%s/y.bin", fk.dir);
	snprintf(wfile, sizeof wfile, "%s/w.bin", fk.dir);
	snprintf(warg, sizeof warg, "@model_path/w.bin=%s", wfile);
	write_bytes(mil, "program", 7);
	float xs[4] = { 0.5f, -1.25f, 2.0f, 100.0f };
	write_bytes(f32, xs, sizeof xs);
	write_bytes(f32bad, xs, 12);
	float b10[10] = { 0 };
	write_bytes(raw, b10, sizeof b10);
	write_bytes(wfile, "wxyz", 4);
	char out[8192];

	/* every dtype filled at random (in its range, the same for the same seed) and summarised */
	int r = cli(&fk, out, sizeof out, (const char *[]){ "run", mil, "--fill", "random", "--seed", "7",
	                                                    "--weight", warg, NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert(w.in_range, "the random inputs are in their dtypes' ranges");
	uint8_t first[7][64];
	memcpy(first, w.in, sizeof first);
	static const char *const want[] = {
		"output oa: fp16 [1, 4] (8 bytes)", "min -2  max 3  mean 0.666667  (1 NaN)",
		"first: 1 -2 nan 3\n",
		"output ob: fp32 [1, 10] (40 bytes)", "min 0  max 9  mean 4.5", "first: 0 1 2 3 4 5 6 7 ...",
		"output oc: int32", "min -7  max 9  mean 1", "output od: int16", "min -300  max 100  mean -100",
		"output oe: int8", "min -3  max 4  mean 0.5", "output of: uint8", "min 0  max 200  mean 70",
		"output og: bool", "min 0  max 1  mean 0.4", "first: 1 0 1 0 0\n",
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		cr_assert(strstr(out, want[i]), "no '%s' in:\n%s", want[i], out);
	r = cli(&fk, out, sizeof out, (const char *[]){ "run", mil, "--fill", "random", "--seed", "7", NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert_eq(memcmp(first, w.in, sizeof first), 0, "the same seed, the same inputs");
	r = cli(&fk, out, sizeof out, (const char *[]){ "run", mil, "--fill", "random", "--seed", "0x8", NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert_neq(memcmp(first, w.in, sizeof first), 0, "another seed, other inputs");
	r = cli(&fk, out, sizeof out, (const char *[]){ "run", mil, "--fill", "zeros", NULL });
	cr_assert_eq(r, 0, "%s", out);
	uint8_t zero[64] = { 0 };
	for (int i = 0; i < 7; i++)
		cr_assert_eq(memcmp(w.in[i], zero, CT[i].n * CT[i].esize), 0, "input %d is zeros", i);
	/* inputs from files: float32 converted to fp16, raw bytes as they are */
	r = cli(&fk, out, sizeof out, (const char *[]){ "run", mil, "--input-f32", f32, "--input", raw,
	                                                "--fill", "zeros", NULL });
	cr_assert_eq(r, 0, "%s", out);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(((uint16_t *)(void *)w.in[0])[i], anes_f32_to_f16_soft(xs[i]));
	cr_assert_eq(w.runs, 5);

	/* another function by name, on a fresh state, its output to a file */
	r = cli(&fk, out, sizeof out, (const char *[]){ "run", mil, "--function", "second", "--input-f32", f32,
	                                                "--output", outp, NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert_eq(w.state_runs, 1);
	cr_assert(strstr(out, "function second"), "%s", out);
	uint16_t y[4];
	FILE *f = fopen(outp, "re");
	cr_assert_not_null(f);
	cr_assert_eq(fread(y, 1, sizeof y + 1, f), sizeof y, "the output's bytes, no more");
	fclose(f);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(anes_f16_to_f32_soft(y[i]), 2 * anes_f16_to_f32_soft(anes_f32_to_f16_soft(xs[i])));

	/* what the CLI refuses: usage errors (2) before connecting, failures (1) after */
	struct { int rc; const char *args[12]; const char *says; } bad[] = {
		{ 2, { "run", NULL }, "needs a MIL file" },
		{ 2, { "run", mil, mil, NULL }, "one MIL file" },
		{ 2, { "run", mil, "--bogus", NULL }, "--bogus" },
		{ 2, { "run", mil, "--seed", NULL }, "--seed" },
		{ 2, { "run", mil, "--seed", "7x", NULL }, "7x" },
		{ 2, { "run", mil, "--seed", "", NULL }, "--seed" },
		{ 2, { "run", mil, "--fill", "ones", NULL }, "ones" },
		{ 2, { "run", mil, "--weight", "nofile", NULL }, "nofile" },
		{ 2, { "run", mil, "--weight", "=x", NULL }, "=x" },
		{ 1, { "run", mil, "--weight", "p=/nonexistent/w", NULL }, "/nonexistent/w" },
		{ 1, { "run", mil, "--function", "third", "--fill", "zeros", NULL }, "third" },
		{ 2, { "run", mil, NULL }, "--fill" },
		{ 2, { "run", mil, "--function", "second", "--input", raw, "--input", raw, NULL }, "2 inputs" },
		{ 2, { "run", mil, "--function", "second", "--fill", "zeros", "--output", outp, "--output", outp,
		       NULL }, "2 output" },
		{ 1, { "run", mil, "--input", f32, "--fill", "zeros", NULL }, "needs 8 bytes" },
		{ 1, { "run", mil, "--input-f32", f32bad, "--fill", "zeros", NULL }, "12 bytes" },
		{ 1, { "run", mil, "--input-f32", f32, "--input", raw, "--input-f32", f32, "--fill", "zeros", NULL },
		  "int32" },
		{ 1, { "run", mil, "--input", "/nonexistent/in", "--fill", "zeros", NULL }, "/nonexistent/in" },
		{ 1, { "run", mil, "--function", "second", "--fill", "zeros", "--output", "/nonexistent/out", NULL },
		  "/nonexistent/out" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		r = cli(&fk, out, sizeof out, bad[i].args);
		cr_assert_eq(r, bad[i].rc, "case %zu: exit %d, want %d:\n%s", i, r, bad[i].rc, out);
		cr_assert(strstr(out, bad[i].says), "case %zu: no '%s' in:\n%s", i, bad[i].says, out);
	}
	cr_assert_eq(w.runs, 7, "of the refused cases only the last ran (its output file failed)");
	for (int i = 0; i < w.n; i++)
		close(w.fds[i]);
	fake_stop(&fk);
}

/* ---- the CLI's status of a daemon with lists longer than it sends ---------------------------- */

static void pack_holder(msgpack_packer *pk, const char *name, uint64_t pid, bool ro)
{
	mb h;
	mb_init(&h);
	mb_s(&h, "name", name);
	mb_u(&h, "pid", pid);
	if (ro)
		msgpack_pack_true(mb_key(&h, "read_only"));
	mb_pack(pk, &h);
}

static void answer_status_display(fake *fk, anes_io *io, const anes_msg *m)
{
	if (!anes_msg_method_is(m, "status")) {
		fk->failures++;
		return;
	}
	mb b, x;
	mb_init(&b);
	mb_s(&b, "version", "9.9");
	mb_s(&b, "backend", "cpu");
	mb_u(&b, "uptime_ms", 61005);
	static const char *const counters[] = { "clients", "surfaces", "surface_bytes", "runs", "compiles",
		                                    "cache_hits" };
	for (int i = 0; i < 6; i++)
		mb_u(&b, counters[i], 3);
	msgpack_pack_array(mb_key(&b, "programs"), 0);
	/* two processes listed of five: one named with a control byte and a
	 * quote, one unnamed without a pid */
	msgpack_packer *pk = mb_key(&b, "processes");
	msgpack_pack_array(pk, 2);
	mb_init(&x);
	mb_s(&x, "name", "a\x01q\"b\\");
	mb_u(&x, "pid", 4242);
	mb_u(&x, "surface_bytes", 3u << 20);
	mb_pack(pk, &x);
	mb_init(&x);
	mb_s(&x, "name", "");
	mb_pack(pk, &x);
	mb_u(&b, "processes_total", 5);
	/* one total with every limit, one with none */
	pk = mb_key(&b, "totals");
	msgpack_pack_array(pk, 2);
	mb_init(&x);
	mb_s(&x, "resource", "surface_bytes");
	mb_u(&x, "used", 1u << 20);
	mb_u(&x, "limit", 1u << 30);
	mb_u(&x, "client_limit", 1u << 28);
	mb_u(&x, "uid_limit", 1u << 29);
	mb_pack(pk, &x);
	mb_init(&x);
	mb_s(&x, "resource", "programs");
	mb_u(&x, "used", 2);
	mb_pack(pk, &x);
	/* shared: two listed of three; the first has two holders listed of
	 * four, the second none */
	pk = mb_key(&b, "shared");
	msgpack_pack_array(pk, 2);
	mb_init(&x);
	mb_u(&x, "key", 17);
	mb_u(&x, "size", 8192);
	mb_u(&x, "tokens", 1);
	mb_u(&x, "holders_total", 4);
	msgpack_packer *hp = mb_key(&x, "holders");
	msgpack_pack_array(hp, 2);
	pack_holder(hp, "writer", 77, false);
	pack_holder(hp, "", 0, true);
	mb_pack(pk, &x);
	mb_init(&x);
	mb_u(&x, "key", 18);
	mb_u(&x, "size", 100);
	msgpack_pack_array(mb_key(&x, "holders"), 0);
	mb_pack(pk, &x);
	mb_u(&b, "shared_total", 3);
	mb_result(io, m->msgid, &b, NULL, 0);
}

Test(libwire, the_cli_shows_what_the_status_lists_and_what_it_leaves_out)
{
	fake fk;
	fake_start(&fk, NULL, answer_status_display);
	char out[16384];
	int r = cli(&fk, out, sizeof out, (const char *[]){ "status", NULL });
	cr_assert_eq(r, 0, "%s", out);
	static const char *const want[] = {
		"up 61.005 s", "a?q\"b\\", "4242", "(unnamed)", "(3 more not listed)",
		"1.0M         1.0G       256.0M       512.0M", "programs                   2            -",
		"writer (77), (unnamed) (?, ro) and 2 more", "100B      0  -\n", "(1 more not listed)",
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		cr_assert(strstr(out, want[i]), "no '%s' in:\n%s", want[i], out);
	r = cli(&fk, out, sizeof out, (const char *[]){ "status", "--json", "--wait", "0.5", NULL });
	cr_assert_eq(r, 0, "%s", out);
	static const char *const jwant[] = {
		"\"name\": \"a\\u0001q\\\"b\\\\\"", "\"processes_total\": 5", "\"shared_total\": 3",
		"\"holders_total\": 4", "{\"name\": \"\", \"pid\": 0, \"read_only\": true}", "\"holders\": []",
		"\"uid_limit\": 536870912",
	};
	for (size_t i = 0; i < sizeof jwant / sizeof jwant[0]; i++)
		cr_assert(strstr(out, jwant[i]), "no '%s' in:\n%s", jwant[i], out);
	/* what status and top refuse */
	struct { int rc; const char *args[6]; const char *says; } bad[] = {
		{ 2, { "status", "--wait", "soon", NULL }, "--wait" },
		{ 2, { "status", "--wait", "4000", NULL }, "--wait" },
		{ 2, { "status", "extra", NULL }, "status" },
		{ 2, { "top", "--interval", "0.01", NULL }, "--interval" },
		{ 2, { "top", "extra", NULL }, "--interval" },
		{ 1, { "top", NULL }, "terminal" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		r = cli(&fk, out, sizeof out, bad[i].args);
		cr_assert_eq(r, bad[i].rc, "case %zu: exit %d, want %d:\n%s", i, r, bad[i].rc, out);
		cr_assert(strstr(out, bad[i].says), "case %zu: no '%s' in:\n%s", i, bad[i].says, out);
	}
	fake_stop(&fk);
	cr_assert_eq(seen(&fk, "status", 0), 2, "only the two good commands asked");
}
