/* SPDX-License-Identifier: MIT */
/*
 * Requests with bad params, over a raw connection to a real daemon: every
 * fault gets its wire error and a message naming the field (docs/protocol.md,
 * "Errors"), and the connection carries on -- a good request right after is
 * answered.  Also what a verbose daemon logs of its clients.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <msgpack.h>

#include "anes_proto.h"
#include "daemon_harness.h"

TestSuite(requests, .timeout = 120);

static const char *mil_double =
	"program(1.3)\n{\n"
	"    func main<ios18>(tensor<fp16, [1, 1, 1, 8]> x) {\n"
	"        tensor<fp16, [1, 1, 1, 8]> y = add(x = x, y = x)[name = string(\"y\")];\n"
	"    } -> (y);\n}\n";

/* ---- params written as text --------------------------------------------------- */

/* Pack one value of a small literal syntax: {key: value, ...} (keys are
 * bare words or "strings"), [a, b], "str" (no escapes), integers, nil, and
 * #N for a bin of N zero bytes.  Asserts on a syntax error. */
static const char *pack_value(msgpack_packer *pk, const char *s);

static const char *skip_ws(const char *s)
{
	while (*s == ' ')
		s++;
	return s;
}

/* The items of a map or an array up to close: how many, packed into a
 * buffer of their own (the count goes first). */
static const char *pack_items(msgpack_packer *pk, const char *s, char close)
{
	msgpack_sbuffer items;
	msgpack_packer ipk;
	msgpack_sbuffer_init(&items);
	msgpack_packer_init(&ipk, &items, msgpack_sbuffer_write);
	uint32_t n = 0;
	s = skip_ws(s);
	while (*s != close) {
		if (close == '}') {
			const char *k = s;
			size_t len;
			if (*s == '"') {
				k = ++s;
				while (*s && *s != '"')
					s++;
				len = (size_t)(s - k);
				cr_assert_eq(*s, '"');
				s++;
			} else {
				while (isalnum((unsigned char)*s) || *s == '_' || *s == '.')
					s++;
				len = (size_t)(s - k);
			}
			s = skip_ws(s);
			cr_assert_eq(*s, ':', "params: ':' expected at \"%s\"", s);
			msgpack_pack_str(&ipk, len);
			msgpack_pack_str_body(&ipk, k, len);
			s++;
		}
		s = skip_ws(pack_value(&ipk, skip_ws(s)));
		n++;
		if (*s == ',')
			s = skip_ws(s + 1);
		else
			cr_assert_eq(*s, close, "params: '%c' expected at \"%s\"", close, s);
	}
	if (close == '}')
		msgpack_pack_map(pk, n);
	else
		msgpack_pack_array(pk, n);
	msgpack_pack_bin_body(pk, items.data, items.size);   /* raw bytes, no header */
	msgpack_sbuffer_destroy(&items);
	return s + 1;
}

static const char *pack_value(msgpack_packer *pk, const char *s)
{
	if (*s == '{')
		return pack_items(pk, s + 1, '}');
	if (*s == '[')
		return pack_items(pk, s + 1, ']');
	if (*s == '"') {
		const char *e = strchr(s + 1, '"');
		cr_assert(e, "params: unterminated string");
		msgpack_pack_str(pk, (size_t)(e - s - 1));
		msgpack_pack_str_body(pk, s + 1, (size_t)(e - s - 1));
		return e + 1;
	}
	if (!strncmp(s, "nil", 3)) {
		msgpack_pack_nil(pk);
		return s + 3;
	}
	char *end;
	if (*s == '#') {
		unsigned long n = strtoul(s + 1, &end, 10);
		char *zeros = calloc(1, n + 1);
		cr_assert(zeros);
		msgpack_pack_bin(pk, n);
		msgpack_pack_bin_body(pk, zeros, n);
		free(zeros);
		return end;
	}
	long long v = strtoll(s, &end, 10);
	cr_assert_neq(end, s, "params: a value expected at \"%s\"", s);
	if (v < 0)
		msgpack_pack_int64(pk, v);
	else
		msgpack_pack_uint64(pk, (uint64_t)v);
	return end;
}

/* The params text (printf format) packed into sb (initialised here). */
__attribute__((format(printf, 2, 3)))
static void params(msgpack_sbuffer *sb, const char *fmt, ...)
{
	char text[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	msgpack_packer pk;
	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	const char *rest = skip_ws(pack_value(&pk, skip_ws(text)));
	cr_assert_eq(*rest, '\0', "params: trailing \"%s\"", rest);
}

/* ---- calls ----------------------------------------------------------------------- */

/* Start d with args (NULL: the defaults) and open rc on it (hello done). */
static void start_open(h_daemon *d, const char *const *args, h_rconn *rc)
{
	h_daemon_start_args(d, args);
	h_rconn_open(rc, d->sock);
}

/* Close rc and stop d (its exit status checked by h_daemon_stop). */
static void close_stop(h_rconn *rc, h_daemon *d)
{
	h_rconn_close(rc);
	h_daemon_stop(d);
}

static uint32_t next_msgid = 100;

/* Send method with the params text (and fds) on rc; the reply (code,
 * message, failed_step) and, for a success, result[key] in value. */
__attribute__((format(printf, 6, 7)))
static h_reply call(h_rconn *rc, const char *method, const int *fds, unsigned nfds, const char *key,
                    const char *fmt, ...)
{
	char text[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	msgpack_sbuffer sb;
	params(&sb, "%s", text);
	h_reply r = { .msgid = next_msgid++, .key = key };
	cr_assert_eq(h_raw_request(rc->fd, r.msgid, method, sb.data, sb.size, fds, nfds), 0);
	msgpack_sbuffer_destroy(&sb);
	h_rconn_wait(rc, &r);
	return r;
}

/* The call fails with code and a message holding says. */
#define expect_error(r, want_code, says)                                                        \
	do {                                                                                   \
		h_reply r_ = (r);                                                              \
		cr_expect_eq(r_.code, (want_code), "got code %d (%s), wanted %d", r_.code,      \
		             r_.message, (int)(want_code));                                    \
		cr_expect(strstr(r_.message, (says)), "the message \"%s\" does not say \"%s\"",  \
		          r_.message, (says));                                                 \
	} while (0)

/* The ID the call (params as text) returned in result.id; asserts it succeeded. */
static uint32_t call_id(h_rconn *rc, const char *method, const char *text)
{
	h_reply r = call(rc, method, NULL, 0, "id", "%s", text);
	cr_assert_eq(r.code, 0, "%s: %s", method, r.message);
	return (uint32_t)r.value;
}

/* The daemon's fd count once only rc is connected (the harness's start-up
 * probe may still be on its way out): a baseline to come back to. */
static int settled_fds(h_rconn *rc, const h_daemon *d)
{
	for (int k = 0; k < 1000 * h_slow() && h_raw_status(rc->fd).clients != 1; k++)
		tu_pause_ms(10);
	cr_assert_eq(h_raw_status(rc->fd).clients, 1);
	return h_daemon_fds(d);
}

/* The MIL as a params string value: its quotes and newlines cannot go in
 * the literal syntax, so the program is compiled through h_raw_request_kstr. */
static uint32_t compile_double(h_rconn *rc)
{
	h_reply r = { .msgid = next_msgid++, .key = "id" };
	cr_assert_eq(h_raw_request_kstr(rc->fd, r.msgid, "program.compile", "mil", mil_double), 0);
	cr_assert_eq(h_rconn_wait(rc, &r), 0, "%s", r.message);
	return (uint32_t)r.value;
}

/* ---- hello ------------------------------------------------------------------------- */

Test(requests, hello_faults_name_the_field)
{
	h_daemon d;
	h_daemon_start(&d);
	h_rconn rc;
	int fd = h_raw_connect(d.sock);
	cr_assert_geq(fd, 0);
	h_rconn_adopt(&rc, fd);
	expect_error(call(&rc, "hello", NULL, 0, NULL, "{}"), ANES_WERR_INVALID_PARAMS,
	             "missing \"protocol\"");
	expect_error(call(&rc, "hello", NULL, 0, NULL, "{protocol: \"one\"}"), ANES_WERR_INVALID_PARAMS,
	             "\"protocol\" has the wrong type");
	expect_error(call(&rc, "hello", NULL, 0, NULL, "{protocol: 1, client: 5}"), ANES_WERR_INVALID_PARAMS,
	             "\"client\" has the wrong type");
	expect_error(call(&rc, "hello", NULL, 0, NULL, "{protocol: 1, priority: 3}"),
	             ANES_WERR_INVALID_PARAMS, "\"priority\" has the wrong type");
	expect_error(call(&rc, "hello", NULL, 0, NULL, "{protocol: 1, priority: \"urgent\"}"),
	             ANES_WERR_INVALID_PARAMS, "priority must be");
	expect_error(call(&rc, "hello", NULL, 0, NULL, "{protocol: 99}"), ANES_WERR_VERSION,
	             "protocol version 99 is not supported");
	/* The version is checked first: another version's fields are not judged by this one's rules. */
	expect_error(call(&rc, "hello", NULL, 0, NULL, "{protocol: 2, priority: \"realtime\"}"),
	             ANES_WERR_VERSION, "protocol version 2 is not supported");
	/* None of those counted as the hello: this one does, once. */
	h_reply ok = call(&rc, "hello", NULL, 0, "protocol", "{protocol: 1, client: \"requests\"}");
	cr_assert_eq(ok.code, 0, "%s", ok.message);
	cr_assert_eq(ok.value, 1);
	expect_error(call(&rc, "hello", NULL, 0, NULL, "{protocol: 1}"), ANES_WERR_HANDSHAKE,
	             "hello was already done");
	cr_assert_eq(call(&rc, "status", NULL, 0, NULL, "{}").code, 0);
	close_stop(&rc, &d);
}

/* ---- program.compile, program.info, program.release ------------------------------- */

Test(requests, compile_params_are_checked)
{
	h_daemon d;
	h_rconn rc;
	start_open(&d, NULL, &rc);
	const int W = ANES_WERR_INVALID_PARAMS;
	expect_error(call(&rc, "program.compile", NULL, 0, NULL, "{}"), W, "missing \"mil\"");
	expect_error(call(&rc, "program.compile", NULL, 0, NULL, "{mil: 5}"), W, "\"mil\" has the wrong type");
	expect_error(call(&rc, "program.compile", NULL, 0, NULL, "{mil: \"x\", weights: 5}"), W,
	             "\"weights\" has the wrong type");
	expect_error(call(&rc, "program.compile", NULL, 0, NULL, "{mil: \"x\", weight_fds: 5}"), W,
	             "\"weight_fds\" has the wrong type");
	expect_error(call(&rc, "program.compile", NULL, 0, NULL,
	                  "{mil: \"x\", weight_fds: [\"@model_path/w.bin\"]}"),
	             ANES_WERR_BAD_FD, "weight_fds names 1 files, the request carries 0 fds");
	expect_error(call(&rc, "program.compile", NULL, 0, NULL, "{mil: \"x\", weights: {\"\": #4}}"), W,
	             "weight paths must be strings of 1..");
	expect_error(call(&rc, "program.compile", NULL, 0, NULL, "{mil: \"x\", weights: {\"@model_path/w.bin\": 4}}"),
	             W, "weight \"@model_path/w.bin\" is not a bin");

	/* Weight files: a path that is not one, a path given twice, an fd that
	 * is not a file.  The fds are the daemon's to close: none leaks. */
	int p[2];
	cr_assert_eq(pipe(p), 0);
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(devnull, 0);
	int base = settled_fds(&rc, &d);
	expect_error(call(&rc, "program.compile", &p[0], 1, NULL, "{mil: \"x\", weight_fds: [7]}"),
	             ANES_WERR_INVALID_PARAMS, "weight paths must be strings of 1..");
	expect_error(call(&rc, "program.compile", &p[0], 1, NULL,
	                  "{mil: \"x\", weights: {\"@model_path/w.bin\": #2}, weight_fds: [\"@model_path/w.bin\"]}"),
	             ANES_WERR_INVALID_PARAMS, "a weight path is given twice");
	expect_error(call(&rc, "program.compile", &p[0], 1, NULL, "{mil: \"x\", weight_fds: [\"@model_path/w.bin\"]}"),
	             ANES_WERR_BAD_FD, "a weight fd is not a regular file");
	int two[2] = { devnull, devnull };
	expect_error(call(&rc, "program.compile", two, 2, NULL, "{mil: \"x\", weight_fds: [\"@model_path/w.bin\"]}"),
	             ANES_WERR_BAD_FD, "weight_fds names 1 files, the request carries 2 fds");
	h_wait_daemon_fds(&d, base);   /* it kept no weight fd */
	close(p[0]);
	close(p[1]);
	close(devnull);

	/* The connection carries on. */
	uint32_t id = compile_double(&rc);
	cr_assert_gt(id, 0);
	close_stop(&rc, &d);
}

Test(requests, program_ids_are_checked)
{
	h_daemon d;
	h_rconn rc;
	start_open(&d, NULL, &rc);
	for (int i = 0; i < 2; i++) {
		const char *m = i ? "program.release" : "program.info";
		expect_error(call(&rc, m, NULL, 0, NULL, "{}"), ANES_WERR_INVALID_PARAMS, "missing \"id\"");
		expect_error(call(&rc, m, NULL, 0, NULL, "{id: \"one\"}"), ANES_WERR_INVALID_PARAMS,
		             "\"id\" has the wrong type");
		expect_error(call(&rc, m, NULL, 0, NULL, "{id: 77}"), ANES_WERR_NO_SUCH_PROGRAM, "no program 77");
	}
	uint32_t id = compile_double(&rc);
	cr_assert_eq(call(&rc, "program.info", NULL, 0, NULL, "{id: %u}", id).code, 0);
	cr_assert_eq(call(&rc, "program.release", NULL, 0, NULL, "{id: %u}", id).code, 0);
	expect_error(call(&rc, "program.info", NULL, 0, NULL, "{id: %u}", id), ANES_WERR_NO_SUCH_PROGRAM,
	             "no program");
	close_stop(&rc, &d);
}

/* program.info names every dtype a function's inputs and outputs may have. */
static void dtype_cb(const anes_msg *m, void *ud)
{
	char *out = ud;
	cr_assert(m->type == ANES_MSG_RESPONSE && m->result, "program.info failed");
	const msgpack_object *fns = anes_mp_get(m->result, "functions");
	cr_assert(fns && fns->type == MSGPACK_OBJECT_ARRAY && fns->via.array.size == 1);
	const char *lists[] = { "inputs", "outputs" };
	for (int l = 0; l < 2; l++) {
		const msgpack_object *a = anes_mp_get(&fns->via.array.ptr[0], lists[l]);
		cr_assert(a && a->type == MSGPACK_OBJECT_ARRAY);
		for (uint32_t i = 0; i < a->via.array.size; i++) {
			const char *s;
			uint32_t len;
			cr_assert_eq(anes_mp_str(&a->via.array.ptr[i], "dtype", 16, &s, &len), 0);
			snprintf(out + strlen(out), 256 - strlen(out), "%s%.*s", out[0] ? " " : "", (int)len, s);
		}
		snprintf(out + strlen(out), 256 - strlen(out), " |");
	}
}

Test(requests, program_info_names_every_dtype)
{
	static const char *mil =
		"program(1.3)\n{\n"
		"    func main<ios18>(tensor<int8, [4]> a, tensor<uint8, [4]> b, tensor<int16, [4]> c,\n"
		"                     tensor<bool, [4]> d, tensor<int32, [4]> e, tensor<fp32, [4]> f) {\n"
		"        tensor<fp16, [4]> a2 = cast(x = a, dtype = string(\"fp16\"));\n"
		"        tensor<fp16, [4]> b2 = cast(x = b, dtype = string(\"fp16\"));\n"
		"        tensor<fp16, [4]> c2 = cast(x = c, dtype = string(\"fp16\"));\n"
		"        tensor<fp16, [4]> d2 = cast(x = d, dtype = string(\"fp16\"));\n"
		"        tensor<int8, [4]> e2 = cast(x = e, dtype = string(\"int8\"));\n"
		"        tensor<bool, [4]> f2 = cast(x = f, dtype = string(\"bool\"));\n"
		"        tensor<int16, [4]> g2 = cast(x = f, dtype = string(\"int16\"));\n"
		"        tensor<uint8, [4]> h2 = cast(x = f, dtype = string(\"uint8\"));\n"
		"    } -> (a2, b2, c2, d2, e2, f2, g2, h2);\n}\n";
	h_daemon d;
	h_rconn rc;
	start_open(&d, NULL, &rc);
	h_reply r = { .msgid = next_msgid++, .key = "id" };
	cr_assert_eq(h_raw_request_kstr(rc.fd, r.msgid, "program.compile", "mil", mil), 0);
	cr_assert_eq(h_rconn_wait(&rc, &r), 0, "%s", r.message);
	uint32_t msgid = next_msgid++;
	cr_assert_eq(h_raw_request_kv(rc.fd, msgid, "program.info", "id", r.value, NULL, 0), 0);
	char got[256] = "";
	cr_assert_eq(h_rconn_next(&rc, 10000, dtype_cb, got), 1);
	cr_assert_str_eq(got, "int8 uint8 int16 bool int32 fp32 | fp16 fp16 fp16 fp16 int8 bool int16 uint8 |");
	close_stop(&rc, &d);
}

/* A weight file the daemon cannot use: open for writing only, larger than
 * all program memory may be, or empty (then the program's BLOBFILE is out
 * of the file: a compile error). */
static const char *mil_blob =
	"program(1.3)\n{\n"
	"    func main<ios18>(tensor<fp16, [1, 4]> x) {\n"
	"        tensor<fp16, [1, 4]> w = const()[name = string(\"w\"), val = tensor<fp16, [1, 4]>(BLOBFILE("
	"path = string(\"@model_path/weights/w.bin\"), offset = uint64(64)))];\n"
	"        tensor<fp16, [1, 4]> y = add(x = x, y = w)[name = string(\"y\")];\n"
	"    } -> (y);\n}\n";

/* program.compile {mil: mil_blob, weight_fds: [the path]} with fd. */
static h_reply compile_blob_fd(h_rconn *rc, int fd)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	anes_pack_str(&pk, "mil");
	anes_pack_str(&pk, mil_blob);
	anes_pack_str(&pk, "weight_fds");
	msgpack_pack_array(&pk, 1);
	anes_pack_str(&pk, "@model_path/weights/w.bin");
	h_reply r = { .msgid = next_msgid++ };
	cr_assert_eq(h_raw_request(rc->fd, r.msgid, "program.compile", sb.data, sb.size, &fd, 1), 0);
	msgpack_sbuffer_destroy(&sb);
	h_rconn_wait(rc, &r);
	return r;
}

Test(requests, weight_files_the_daemon_cannot_use)
{
	const char *args[] = { "--max-daemon-program-bytes", "8M", NULL };
	h_daemon d;
	h_rconn rc;
	start_open(&d, args, &rc);
	char path[300];
	snprintf(path, sizeof path, "%s/w.bin", d.dir);
	int wo = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(wo, 0);
	expect_error(compile_blob_fd(&rc, wo), ANES_WERR_BAD_FD, "open for reading");
	cr_assert_eq(ftruncate(wo, 16 << 20), 0);   /* sparse: no disk used */
	close(wo);
	int big = open(path, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(big, 0);
	expect_error(compile_blob_fd(&rc, big), ANES_WERR_INVALID_PARAMS,
	             "a weight file is larger than max_daemon_program_bytes");
	close(big);
	cr_assert_eq(truncate(path, 0), 0);
	int empty = open(path, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(empty, 0);
	expect_error(compile_blob_fd(&rc, empty), ANES_WERR_COMPILE, "w.bin");
	close(empty);
	/* A blob file (one blob, version 2; at 64 its fp16 entry: 8 bytes at
	 * 128) of 4 zeros: it compiles. */
	int ok = open(path, O_RDWR | O_CLOEXEC);
	cr_assert_geq(ok, 0);
	uint8_t blob[136] = { 0 };
	const uint32_t head[2] = { 1, 2 }, entry[2] = { 0xDEADBEEFu, 1 };
	const uint64_t where[2] = { 8, 128 };
	memcpy(blob, head, sizeof head);
	memcpy(blob + 64, entry, sizeof entry);
	memcpy(blob + 72, where, sizeof where);
	cr_assert_eq(pwrite(ok, blob, sizeof blob, 0), (ssize_t)sizeof blob);
	h_reply r = compile_blob_fd(&rc, ok);
	cr_assert_eq(r.code, 0, "%s", r.message);
	close(ok);
	close_stop(&rc, &d);
}

/* A compile whose own text and weights, or weight files, are more than the
 * process's program memory may hold is refused at once with `limit`
 * naming max_client_program_bytes; a small one then compiles. */
Test(requests, a_compile_over_the_program_memory_limit_is_refused)
{
	const char *args[] = { "--max-client-program-bytes", "2M", NULL };
	h_daemon d;
	h_rconn rc;
	start_open(&d, args, &rc);
	expect_error(call(&rc, "program.compile", NULL, 0, NULL, "{mil: \"x\", weights: {\"@model_path/w.bin\": #3145728}}"),
	             ANES_WERR_LIMIT, "max_client_program_bytes");
	char path[300];
	snprintf(path, sizeof path, "%s/w.bin", d.dir);
	int fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 3 << 20), 0);
	expect_error(compile_blob_fd(&rc, fd), ANES_WERR_LIMIT, "max_client_program_bytes");
	close(fd);
	cr_assert_gt(compile_double(&rc), 0);
	close_stop(&rc, &d);
}

/* ---- the program cache ------------------------------------------------------------------ */

/* The cache grows its table as programs come (64 buckets, doubled past two
 * programs a bucket): 300 distinct programs later, each one is still found
 * -- compiling it again is a cache hit on the same key -- and status counts
 * them all. */
static void key_cb(const anes_msg *m, void *ud)
{
	char *key = ud;
	const char *s;
	uint32_t len;
	cr_assert(m->type == ANES_MSG_RESPONSE && m->result, "program.compile failed");
	cr_assert_eq(anes_mp_str(m->result, "key", 64, &s, &len), 0);
	const msgpack_object *o = anes_mp_get(m->result, "cached");
	cr_assert(o && o->type == MSGPACK_OBJECT_BOOLEAN);
	snprintf(key, 80, "%c%.*s", o->via.boolean ? 'c' : 'n', (int)len, s);
}

Test(requests, the_program_cache_finds_every_program_as_it_grows)
{
	enum { N = 300 };
	const char *args[] = { "--max-programs", "1000", NULL };
	h_daemon d;
	h_rconn rc;
	start_open(&d, args, &rc);
	static char keys[N][80];
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 0; i < N; i++) {
			char fn[32];
			snprintf(fn, sizeof fn, "f%d", i);
			char *mil = h_square_mm_mil(2, fn);
			uint32_t msgid = next_msgid++;
			cr_assert_eq(h_raw_request_kstr(rc.fd, msgid, "program.compile", "mil", mil), 0);
			free(mil);
			char got[80];
			cr_assert_eq(h_rconn_next(&rc, 10000, key_cb, got), 1);
			if (pass == 0) {
				cr_assert_eq(got[0], 'n', "program %d was cached before it was compiled", i);
				memcpy(keys[i], got + 1, sizeof keys[i] - 1);
			} else {
				cr_assert_eq(got[0], 'c', "program %d was not found after the cache grew", i);
				cr_assert_str_eq(got + 1, keys[i]);
			}
		}
	}
	h_reply st = call(&rc, "status", NULL, 0, "compiles", "{}");
	cr_assert_eq(st.code, 0);
	cr_assert_eq(st.value, N, "%llu compiles", (unsigned long long)st.value);
	st = call(&rc, "status", NULL, 0, "cache_hits", "{}");
	cr_assert_eq(st.value, N, "%llu cache hits", (unsigned long long)st.value);
	close_stop(&rc, &d);
}

/* ---- run ------------------------------------------------------------------------------ */

Test(requests, run_params_name_the_fault)
{
	h_daemon d;
	h_rconn rc;
	start_open(&d, NULL, &rc);
	uint32_t p = compile_double(&rc);
	uint32_t x = call_id(&rc, "surface.create", "{size: 16}");
	uint32_t y = call_id(&rc, "surface.create", "{size: 16}");
	const int W = ANES_WERR_INVALID_PARAMS;
	static const struct {
		const char *params;   /* P: the program, X and Y: the surfaces */
		const char *says;
	} single[] = {
		{ "{program: \"p\", inputs: [X], outputs: [Y]}", "\"program\" has the wrong type" },
		{ "{program: P, function: 5, inputs: [X], outputs: [Y]}", "\"function\" has the wrong type" },
		{ "{program: P, inputs: 5, outputs: [Y]}", "\"inputs\" has the wrong type" },
		{ "{program: P, inputs: [X], outputs: 5}", "\"outputs\" has the wrong type" },
		{ "{program: P, inputs: [\"x\"], outputs: [Y]}", "\"inputs\"[0] is not a surface ID" },
		{ "{program: P, inputs: [X], outputs: [Y, -1]}", "\"outputs\"[1] is not a surface ID" },
		{ "{inputs: [X], outputs: [Y]}", "missing \"program\"" },
		{ "{program: P, outputs: [Y]}", "missing \"inputs\"" },
		{ "{program: P, inputs: [X]}", "missing \"outputs\"" },
		{ "{steps: [], program: P}", "\"steps\" is empty" },
		{ "{steps: [{program: P, inputs: [X], outputs: [Y]}], program: P}", "either \"steps\" or \"program\"" },
		{ "{steps: 5}", "\"steps\" is not an array" },
	};
	for (size_t i = 0; i < sizeof single / sizeof single[0]; i++) {
		char text[512];
		size_t n = 0;
		for (const char *c = single[i].params; *c && n < sizeof text - 12; c++) {
			if (*c == 'P' || *c == 'X' || *c == 'Y')
				n += (size_t)snprintf(text + n, sizeof text - n, "%u", *c == 'P' ? p : *c == 'X' ? x : y);
			else
				text[n++] = *c;
		}
		text[n] = '\0';
		h_reply r = call(&rc, "run", NULL, 0, NULL, "%s", text);
		expect_error(r, W, single[i].says);
		cr_expect_eq(r.failed_step, -1, "%s: failed_step %lld", text, (long long)r.failed_step);
	}
	/* In a chain, the step at fault is named. */
	h_reply r = call(&rc, "run", NULL, 0, NULL,
	                 "{steps: [{program: %u, inputs: [%u], outputs: [%u]}, {program: %u, inputs: 7, outputs: [%u]}]}",
	                 p, x, y, p, x);
	expect_error(r, W, "step 1: \"inputs\" has the wrong type");
	cr_expect_eq(r.failed_step, 1);
	r = call(&rc, "run", NULL, 0, NULL, "{steps: [{program: %u, inputs: [%u], outputs: [%u]}, 5]}", p, x, y);
	expect_error(r, W, "step 1: a step is not a map");
	cr_expect_eq(r.failed_step, 1);
	r = call(&rc, "run", NULL, 0, NULL, "{steps: [{inputs: [%u], outputs: [%u]}]}", x, y);
	expect_error(r, W, "step 0: missing \"program\"");
	cr_expect_eq(r.failed_step, 0);
	/* The connection carries on: a good run. */
	r = call(&rc, "run", NULL, 0, NULL, "{program: %u, inputs: [%u], outputs: [%u]}", p, x, y);
	cr_assert_eq(r.code, 0, "%s", r.message);
	close_stop(&rc, &d);
}

/* ---- surface.import ------------------------------------------------------------------- */

Test(requests, surface_import_takes_exactly_one_memfd)
{
	const char *args[] = { "--max-surfaces", "1", NULL };
	h_daemon d;
	h_rconn rc;
	start_open(&d, args, &rc);
	int m1, m2;
	cr_assert_eq(anes_memfd_create("req", 4096, &m1), 0);
	cr_assert_eq(anes_memfd_create("req", 4096, &m2), 0);
	int both[2] = { m1, m2 };
	int base = settled_fds(&rc, &d);
	expect_error(call(&rc, "surface.import", NULL, 0, NULL, "{}"), ANES_WERR_BAD_FD,
	             "takes exactly one fd, got 0");
	expect_error(call(&rc, "surface.import", both, 2, NULL, "{}"), ANES_WERR_BAD_FD,
	             "takes exactly one fd, got 2");
	expect_error(call(&rc, "surface.import", &m1, 1, NULL, "{iosurface_id: 5}"), ANES_WERR_BAD_FD,
	             "takes no fd");
	expect_error(call(&rc, "surface.import", NULL, 0, NULL, "{iosurface_id: 0}"), ANES_WERR_INVALID_PARAMS,
	             "\"iosurface_id\" has the wrong type or is out of range");
	/* One surface is the connection's limit: an import past it is refused
	 * like a create. */
	uint32_t s = call_id(&rc, "surface.create", "{size: 4096}");
	expect_error(call(&rc, "surface.import", &m1, 1, NULL, "{}"), ANES_WERR_LIMIT, "too many surfaces");
	cr_assert_eq(call(&rc, "surface.release", NULL, 0, NULL, "{id: %u}", s).code, 0);
	h_reply r = call(&rc, "surface.import", &m1, 1, "id", "{}");
	cr_assert_eq(r.code, 0, "%s", r.message);
	cr_assert_eq(call(&rc, "surface.release", NULL, 0, NULL, "{id: %u}", (uint32_t)r.value).code, 0);
	h_wait_daemon_fds(&d, base);
	close(m1);
	close(m2);
	close_stop(&rc, &d);
}

/* An h_msg_fn: the message of an `error` notification (protocol) into ud. */
static void error_note_cb(const anes_msg *m, void *ud)
{
	int code;
	const char *msg;
	uint32_t len;
	if (m->type == ANES_MSG_NOTIFY && anes_msg_method_is(m, "error") &&
	    anes_msg_error(&(anes_msg){ .error = m->params }, &code, &msg, &len) == 0 &&
	    code == ANES_WERR_PROTOCOL)
		snprintf(ud, 256, "%.*s", (int)len, msg);
}

/* More fds in one message than the daemon takes (ANES_IO_MAX_QUEUED_FDS):
 * the connection is closed with a protocol error, none of the fds is kept,
 * and another client is served. */
Test(requests, too_many_fds_in_one_message_close_the_connection)
{
	h_daemon d;
	h_rconn rc;
	start_open(&d, NULL, &rc);
	int base = settled_fds(&rc, &d);
	int bad = h_raw_open(d.sock);
	int fds[ANES_IO_MAX_QUEUED_FDS + 4];
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(devnull, 0);
	for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
		fds[i] = devnull;
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	h_raw_frame(&sb, 5, "status", NULL, 0, 0);
	cr_assert_eq(h_raw_send(bad, sb.data, sb.size, fds, sizeof fds / sizeof fds[0]), 0);
	msgpack_sbuffer_destroy(&sb);
	h_rconn brc;
	h_rconn_adopt(&brc, bad);
	char said[256] = "";
	int r;
	while ((r = h_rconn_next(&brc, 10000, error_note_cb, said)) == 1)
		;
	cr_assert_eq(r, 0, "the connection was not closed (%d)", r);
	cr_assert(strstr(said, "bad ancillary data"), "the error notification said \"%s\"", said);
	h_rconn_close(&brc);
	close(devnull);
	h_wait_daemon_fds(&d, base);
	cr_assert_eq(call(&rc, "status", NULL, 0, NULL, "{}").code, 0);
	close_stop(&rc, &d);
}

/* ---- verbose ------------------------------------------------------------------------------ */

/* With -v the daemon logs each client's arrival with its uid and pid, its
 * name, what it released when it left, and a connection turned away over
 * max_connections. */
Test(requests, verbose_logs_each_client)
{
	const char *args[] = { "-v", "--max-connections", "2", NULL };
	h_daemon d;
	h_daemon_start_args(&d, args);
	h_rconn rc;
	int fd = h_raw_connect(d.sock);
	cr_assert_geq(fd, 0);
	h_rconn_adopt(&rc, fd);
	cr_assert_eq(call(&rc, "hello", NULL, 0, NULL, "{protocol: 1, client: \"talker\"}").code, 0);
	call_id(&rc, "surface.create", "{size: 4096}");
	/* Once the harness's start-up probe is gone, a second connection makes
	 * two, and a third is one too many: closed at once. */
	settled_fds(&rc, &d);
	int second = h_raw_open(d.sock);
	int extra = h_raw_connect(d.sock);
	cr_assert_geq(extra, 0);
	cr_assert_eq(h_raw_wait_closed(extra, 10000, NULL), 0);
	close(extra);
	close(second);
	h_rconn_close(&rc);
	char want[160];
	snprintf(want, sizeof want, "connected (uid %u, pid %ld)", (unsigned)getuid(), (long)getpid());
	const char *says[] = { want, "is \"talker\"", "(talker) disconnected: released 1 surfaces (4096 bytes)",
		               "refused a connection: 2 clients already" };
	for (size_t i = 0; i < sizeof says / sizeof says[0]; i++) {
		char *log = NULL;
		for (int k = 0; k < 1000 * h_slow(); k++) {
			free(log);
			log = tu_read_file(d.log);
			if (log && strstr(log, says[i]))
				break;
			tu_pause_ms(10);
		}
		cr_expect(log && strstr(log, says[i]), "the log does not say \"%s\":\n%s", says[i], log ? log : "");
		free(log);
	}
	h_daemon_stop(&d);
}

/* docs/protocol.md, Limits: "A limit error's message names the limit" -- the
 * per-connection ones too (they said "(max 1)"; found by tests/conformance). */
Test(requests, per_connection_limits_name_their_keys)
{
	static const char *const args[] = { "--max-surfaces", "1", "--max-client-surfaces", "8",
	                                    "--max-programs", "1", "--max-client-programs", "8", NULL };
	h_daemon d;
	h_rconn rc;
	start_open(&d, args, &rc);
	cr_assert_eq(call(&rc, "surface.create", NULL, 0, NULL, "{size: 16}").code, 0);
	expect_error(call(&rc, "surface.create", NULL, 0, NULL, "{size: 16}"), ANES_WERR_LIMIT,
	             "(max_surfaces 1)");
	compile_double(&rc);
	h_reply r = { .msgid = next_msgid++ };
	cr_assert_eq(h_raw_request_kstr(rc.fd, r.msgid, "program.compile", "mil", mil_double), 0);
	h_rconn_wait(&rc, &r);
	expect_error(r, ANES_WERR_LIMIT, "(max_programs 1)");
	close_stop(&rc, &d);
}
