/* SPDX-License-Identifier: MIT */
/* libanes_proto, the wire: error names, the frame header, building frames,
 * and the one-pass reader of run requests (anes_run_wire_parse).
 * docs/protocol.md is the contract. */
#include "anes_proto.h"
#include "proto_util.h"
#include "run_wire_check.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- wire error names ---------------------------------------------------- */

Test(wire_errors, names_unique_and_round_trip)
{
	/* The table in docs/protocol.md; numbers and names are stable. */
	static const char *const doc[ANES_WERR_MAX + 1] = {
		NULL, "protocol", "version", "handshake", "unknown_method", "invalid_params",
		"no_such_surface", "no_such_program", "no_such_function", "limit", "compile",
		"unsupported", "size_mismatch", "bad_fd", "run_failed", "no_memory", "internal",
		"shutting_down", "worker_restarted", "no_such_state", "state_lost", "no_such_event",
		"event_closed",
	};

	for (int c = 1; c <= ANES_WERR_MAX; c++) {
		const char *n = anes_wire_error_name(c);
		cr_assert_not_null(n, "code %d has no name", c);
		cr_assert_str_eq(n, doc[c]);
		for (int d = 1; d < c; d++)
			cr_assert_str_neq(n, anes_wire_error_name(d));
		cr_assert_eq(anes_wire_error_from_name(n, strlen(n)), c);
		/* length-delimited: a prefix or a longer buffer does not match */
		cr_assert_eq(anes_wire_error_from_name(n, strlen(n) - 1), 0);
		char longer[64];
		snprintf(longer, sizeof longer, "%sx", n);
		cr_assert_eq(anes_wire_error_from_name(longer, strlen(longer)), 0);
		cr_assert_eq(anes_wire_error_from_name(longer, strlen(n)), c);
	}
	cr_assert_eq(ANES_WERR_EVENT_CLOSED, ANES_WERR_MAX);
	cr_assert_null(anes_wire_error_name(0));
	cr_assert_null(anes_wire_error_name(-1));
	cr_assert_null(anes_wire_error_name(ANES_WERR_MAX + 1));
	cr_assert_eq(anes_wire_error_from_name("", 0), 0);
	cr_assert_eq(anes_wire_error_from_name("nope", 4), 0);
}

/* ---- frame header -------------------------------------------------------- */

Test(frame, header_round_trip)
{
	static const struct { uint32_t len; unsigned nfds; } cases[] = {
		{ 0, 0 }, { 1, 1 }, { 0x01020304, 2 }, { ANES_FRAME_MAX_DEFAULT, 4 }, { UINT32_MAX, 3 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		uint8_t h[ANES_FRAME_HEADER_SIZE];
		uint32_t len = 0;
		unsigned nfds = 99;
		memset(h, 0xee, sizeof h);
		anes_frame_header_write(h, cases[i].len, cases[i].nfds);
		cr_assert_eq(anes_frame_header_parse(h, UINT32_MAX, &len, &nfds), 0);
		cr_assert_eq(len, cases[i].len);
		cr_assert_eq(nfds, cases[i].nfds);
		cr_assert_eq(h[5] | h[6] | h[7], 0);
	}

	uint8_t h[ANES_FRAME_HEADER_SIZE];
	anes_frame_header_write(h, 0x01020304, 2);
	static const uint8_t want[] = { 1, 2, 3, 4, 2, 0, 0, 0 };
	cr_assert_arr_eq(h, want, sizeof want);  /* big-endian */
}

Test(frame, header_limits)
{
	uint8_t h[ANES_FRAME_HEADER_SIZE];
	uint32_t len = 0xabcdef;
	unsigned nfds = 77;

	/* exactly max_frame is fine, one more is not */
	anes_frame_header_write(h, 1000, 0);
	cr_assert_eq(anes_frame_header_parse(h, 1000, &len, &nfds), 0);
	cr_assert_eq(len, 1000);
	len = 0xabcdef, nfds = 77;
	anes_frame_header_write(h, 1001, 0);
	cr_assert_eq(anes_frame_header_parse(h, 1000, &len, &nfds), -EMSGSIZE);
	anes_frame_header_write(h, UINT32_MAX, 0);
	cr_assert_eq(anes_frame_header_parse(h, ANES_FRAME_MAX_DEFAULT, &len, &nfds), -EMSGSIZE);
	cr_assert_eq(len, 0xabcdef);
	cr_assert_eq(nfds, 77);

	for (int i = 5; i < 8; i++) {
		anes_frame_header_write(h, 10, 1);
		h[i] = 1;
		cr_assert_eq(anes_frame_header_parse(h, 1000, &len, &nfds), -EPROTO, "reserved byte %d", i);
		h[i] = 0x80;
		cr_assert_eq(anes_frame_header_parse(h, 1000, &len, &nfds), -EPROTO);
	}
	anes_frame_header_write(h, 10, ANES_MAX_FDS_PER_FRAME);
	cr_assert_eq(anes_frame_header_parse(h, 1000, &len, &nfds), 0);
	cr_assert_eq(nfds, ANES_MAX_FDS_PER_FRAME);
	len = 0xabcdef, nfds = 77;
	for (unsigned n = ANES_MAX_FDS_PER_FRAME + 1; n < 256; n++) {
		anes_frame_header_write(h, 10, n);
		cr_assert_eq(anes_frame_header_parse(h, 1000, &len, &nfds), -EPROTO, "nfds %u", n);
	}
	cr_assert_eq(len, 0xabcdef);
	cr_assert_eq(nfds, 77);
}

/* ---- text the daemon sends is UTF-8 -------------------------------------- */

/* anes_pack_text: s as a str of the same length, every byte outside a
 * well-formed UTF-8 sequence replaced by '?' (a client's bytes quoted in an
 * error message reach every decoder that checks UTF-8, e.g. Python's). */
static void expect_text(const char *in, const char *want)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	anes_pack_text(&pk, in);
	msgpack_unpacked u;
	msgpack_unpacked_init(&u);
	size_t off = 0;
	cr_assert_eq(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
	cr_assert_eq(off, sb.size);
	cr_assert_eq(u.data.type, MSGPACK_OBJECT_STR);
	cr_assert_eq(u.data.via.str.size, strlen(want), "\"%s\": length %u", want,
	             (unsigned)u.data.via.str.size);
	/* msgpack-c leaves ptr NULL for an empty str */
	cr_assert(!want[0] || memcmp(u.data.via.str.ptr, want, strlen(want)) == 0, "want \"%s\"", want);
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&sb);
}

Test(wire_text, invalid_utf8_becomes_question_marks)
{
	expect_text("", "");
	expect_text("no method \"x\"", "no method \"x\"");
	/* well-formed: 2, 3 and 4 bytes, the edges of each range */
	expect_text("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xc2\x80 \xef\xbf\xbf \xf4\x8f\xbf\xbf",
	            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xc2\x80 \xef\xbf\xbf \xf4\x8f\xbf\xbf");
	expect_text("no method \"\xff\xfe\"", "no method \"??\"");   /* never in UTF-8 */
	expect_text("a\x80" "b", "a?b");                                  /* a lone continuation */
	expect_text("\xc0\xaf\xc1\xbf", "????");                       /* overlong 2-byte */
	expect_text("\xe0\x80\xaf", "???");                             /* overlong 3-byte */
	expect_text("\xf0\x80\x80\xaf", "????");                         /* overlong 4-byte */
	expect_text("\xed\xa0\x80", "???");                             /* a surrogate */
	expect_text("\xf4\x90\x80\x80", "????");                         /* past U+10FFFF */
	expect_text("\xf5\x80", "??");
	expect_text("x\xc3", "x?");                                   /* cut at the end */
	expect_text("\xe2\x82x", "??x");                                 /* cut inside */
	expect_text("\xc3\xa9\xc3", "\xc3\xa9?");
}

/* ---- building frames ----------------------------------------------------- */

Test(frame, finish_ok)
{
	anes_frame f;
	void *data = NULL;
	size_t len = 0;

	anes_frame_init(&f);
	anes_pack_notify(&f.pk, "x", 0);
	cr_assert_eq(anes_frame_finish(&f, 2, 1000, &data, &len), 0);
	cr_assert_null(f.data);
	cr_assert_eq(f.len, 0);
	/* [2, "x", {}] = 93 02 a1 78 80 */
	static const uint8_t want[] = { 0, 0, 0, 5, 2, 0, 0, 0, 0x93, 0x02, 0xa1, 0x78, 0x80 };
	cr_assert_eq(len, sizeof want);
	cr_assert_arr_eq(data, want, sizeof want);
	anes_frame_release(&f);  /* a finished frame may be released */
	free(data);
}

Test(frame, finish_errors_keep_buffer)
{
	anes_frame f;
	void *data = (void *)0x1;
	size_t len = 12345;

	anes_frame_init(&f);
	anes_pack_request(&f.pk, 1, "m", 1);
	anes_pack_str(&f.pk, "blob");
	char big[200];
	memset(big, 'z', sizeof big);
	msgpack_pack_bin(&f.pk, sizeof big);
	msgpack_pack_bin_body(&f.pk, big, sizeof big);
	size_t plen = f.len - ANES_FRAME_HEADER_SIZE;
	char *before = f.data;

	cr_assert_eq(anes_frame_finish(&f, 0, (uint32_t)plen - 1, &data, &len), -EMSGSIZE);
	cr_assert_eq(f.data, before);
	cr_assert_eq(f.len, plen + ANES_FRAME_HEADER_SIZE);
	cr_assert_eq(data, (void *)0x1);
	cr_assert_eq(len, 12345);
	cr_assert_eq(anes_frame_finish(&f, ANES_MAX_FDS_PER_FRAME + 1, 1u << 20, &data, &len), -EINVAL);
	cr_assert_eq(f.data, before);
	cr_assert_eq(data, (void *)0x1);
	/* the frame is still usable: payload of exactly max_frame succeeds */
	cr_assert_eq(anes_frame_finish(&f, 0, (uint32_t)plen, &data, &len), 0);
	cr_assert_eq(len, plen + ANES_FRAME_HEADER_SIZE);
	free(data);

	/* failing, then released: ASan flags a leak or double free */
	anes_frame_init(&f);
	anes_pack_notify(&f.pk, "m", 0);
	cr_assert_eq(anes_frame_finish(&f, 0, 2, &data, &len), -EMSGSIZE);
	anes_frame_release(&f);
	cr_assert_null(f.data);
	anes_frame_release(&f);
}

/* ---- a run read in one pass (anes_run_wire_parse) ------------------------- */

/* A run request packed as libaneshare packs it (client/async.c): n steps
 * (0: a single run), each of prog, "main" (when with_fn), ids[2 * step]
 * in and ids[2 * step + 1] out. */
static void pack_lib_run(mp *m, uint32_t msgid, uint32_t n, bool with_fn, const uint32_t *ids)
{
	anes_pack_request(&m->pk, msgid, "run", n ? 1 : (with_fn ? 4 : 3));
	if (n) {
		anes_pack_str(&m->pk, "steps");
		msgpack_pack_array(&m->pk, n);
	}
	for (uint32_t i = 0; i < (n ? n : 1); i++) {
		if (n)
			msgpack_pack_map(&m->pk, with_fn ? 4 : 3);
		anes_pack_str(&m->pk, "program");
		msgpack_pack_uint32(&m->pk, 7 + i);
		if (with_fn) {
			anes_pack_str(&m->pk, "function");
			anes_pack_str(&m->pk, "main");
		}
		anes_pack_str(&m->pk, "inputs");
		msgpack_pack_array(&m->pk, 1);
		msgpack_pack_uint32(&m->pk, ids[2 * i]);
		anes_pack_str(&m->pk, "outputs");
		msgpack_pack_array(&m->pk, 1);
		msgpack_pack_uint32(&m->pk, ids[2 * i + 1]);
	}
}

/* run_wire_agrees on an exact-size heap copy (ASan sees any overread). */
static int wire_exact(const void *p, size_t n)
{
	uint8_t *c = malloc(n ? n : 1);
	cr_assert_not_null(c);
	if (n)
		memcpy(c, p, n);
	const char *why = NULL;
	int r = run_wire_agrees(c, n, &why);
	cr_assert_neq(r, -1, "the one-pass reader and the decoder disagree: %s", why);
	free(c);
	return r;
}

static uint32_t g_ids[2 * ANES_MAX_STEPS];

static void ids_init(void)
{
	/* IDs in every width the reader takes: fixint, u8, u16, u32 */
	static const uint32_t pick[] = { 1, 127, 128, 255, 256, 65535, 65536, UINT32_MAX };
	for (uint32_t i = 0; i < 2 * ANES_MAX_STEPS; i++)
		g_ids[i] = pick[i % 8] - (i / 8 % 2);
}

/* The reader's verdict (w points into p), after wire_exact checked it
 * against the decoder on an exact-size copy. */
static int wire_read(const void *p, size_t n, anes_run_wire *w)
{
	(void)wire_exact(p, n);
	msgpack_zone z;
	cr_assert(msgpack_zone_init(&z, 4096));
	int r = anes_run_wire_parse(p, n, w, &z);
	msgpack_zone_destroy(&z);
	return r;
}

Test(run_wire, library_forms_are_read)
{
	ids_init();
	const uint32_t steps[] = { 0, 1, 2, 15, 16, 28, ANES_MAX_STEPS };
	anes_run_wire *w = malloc(sizeof *w);
	for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
		for (int fn = 0; fn < 2; fn++) {
			mp m;
			mp_init(&m);
			pack_lib_run(&m, s == 0 ? UINT32_MAX : (uint32_t)s * 1000, steps[s], fn, g_ids);
			cr_assert_eq(wire_read(m.sb.data, m.sb.size, w), 1, "%u steps, function %d",
			             steps[s], fn);
			cr_assert_eq(w->chain, steps[s] != 0);
			cr_assert_eq(w->bad, ANES_RUN_OK);
			cr_assert_eq(w->n_steps, steps[s] ? steps[s] : 1);
			cr_assert_eq(w->n_ids, 2 * w->n_steps);
			for (uint32_t i = 0; i < w->n_steps; i++) {
				cr_assert_eq(w->steps[i].program, 7 + i);
				cr_assert_eq(w->steps[i].bad, ANES_RUN_OK);
				cr_assert_eq(w->ids[w->steps[i].in], g_ids[2 * i]);
				cr_assert_eq(w->ids[w->steps[i].out], g_ids[2 * i + 1]);
				cr_assert_eq(w->steps[i].function != NULL, fn);
			}
			mp_free(&m);
		}
	}
	free(w);
}

/* Keys in any order, str8 method and function, array16 IDs, no IDs. */
Test(run_wire, other_orders_and_widths_are_read)
{
	/* [0, 5, "run"(str8), {outputs: [], function: "f"(str8), inputs: [3] (array16), program: 9}] */
	bytes b = { 0 };
	b_hex(&b, "94 00 05 d9 03 72 75 6e 84");
	b_hex(&b, "a7 6f7574707574 73 90");                  /* outputs: [] */
	b_hex(&b, "a8 66756e6374696f6e d9 01 66");            /* function: "f" */
	b_hex(&b, "a6 696e70757473 dc 0001 03");              /* inputs: [3] */
	b_hex(&b, "a7 70726f6772616d 09");                    /* program: 9 */
	anes_run_wire *w = malloc(sizeof *w);
	cr_assert_eq(wire_read(b.p, b.n, w), 1);
	cr_assert_eq(w->msgid, 5);
	cr_assert_eq(w->steps[0].program, 9);
	cr_assert_eq(w->steps[0].n_in, 1);
	cr_assert_eq(w->steps[0].n_out, 0);
	cr_assert_eq(w->ids[w->steps[0].in], 3);
	cr_assert_eq(w->steps[0].function_len, 1);
	cr_assert_eq(w->steps[0].function[0], 'f');
	/* function "": a name (of no function), not the absence of one */
	b_free(&b);
	b_hex(&b, "94 00 05 a3 72756e 84 a7 70726f6772616d 01 a8 66756e6374696f6e a0 "
	          "a6 696e70757473 90 a7 6f757470757473 90");
	cr_assert_eq(wire_read(b.p, b.n, w), 1);
	cr_assert_not_null(w->steps[0].function);
	cr_assert_eq(w->steps[0].function_len, 0);
	free(w);
	b_free(&b);
}

/* Every form a request may take: read (1) with what is wrong with it,
 * refused as malformed (-EBADMSG) exactly when the decoder refuses it, or
 * left to the decoder (0) when it is not a run request. */
Test(run_wire, every_form_is_read_or_refused)
{
	static const struct {
		const char *hex;
		int rc;
		uint8_t bad;        /* the request's, else the first step's */
	} cases[] = {
		/* a duplicate key */
		{ "94 00 01 a3 72756e 84 a7 70726f6772616d 01 a7 70726f6772616d 01 "
		  "a6 696e70757473 90 a7 6f757470757473 90", -EBADMSG, 0 },
		/* an unknown key, twice */
		{ "94 00 01 a3 72756e 85 a7 70726f6772616d 01 a4 6e6f7465 c0 "
		  "a6 696e70757473 90 a7 6f757470757473 90 a4 6e6f7465 c0", -EBADMSG, 0 },
		/* an unknown key; one whose value is a map with a key twice */
		{ "94 00 01 a3 72756e 84 a7 70726f6772616d 01 a4 6e6f7465 c0 "
		  "a6 696e70757473 90 a7 6f757470757473 90", 1, ANES_RUN_OK },
		{ "94 00 01 a3 72756e 84 a7 70726f6772616d 01 a4 6e6f7465 82 01 c0 01 c0 "
		  "a6 696e70757473 90 a7 6f757470757473 90", -EBADMSG, 0 },
		/* program as a uint64, a surface ID as an int8 */
		{ "94 00 01 a3 72756e 83 a7 70726f6772616d cf 0000000000000001 "
		  "a6 696e70757473 90 a7 6f757470757473 90", 1, ANES_RUN_OK },
		{ "94 00 01 a3 72756e 83 a7 70726f6772616d 01 a6 696e70757473 91 d0 01 "
		  "a7 6f757470757473 90", 1, ANES_RUN_OK },
		/* a negative ID, program over u32, function not a str, no outputs */
		{ "94 00 01 a3 72756e 83 a7 70726f6772616d 01 a6 696e70757473 92 01 ff "
		  "a7 6f757470757473 90", 1, ANES_RUN_INPUTS_ITEM },
		{ "94 00 01 a3 72756e 83 a7 70726f6772616d cf 0000000100000000 "
		  "a6 696e70757473 90 a7 6f757470757473 90", 1, ANES_RUN_PROGRAM_TYPE },
		{ "94 00 01 a3 72756e 84 a7 70726f6772616d 01 a8 66756e6374696f6e c4 01 66 "
		  "a6 696e70757473 90 a7 6f757470757473 90", 1, ANES_RUN_FUNCTION_TYPE },
		{ "94 00 01 a3 72756e 82 a7 70726f6772616d 01 a6 696e70757473 90", 1,
		  ANES_RUN_OUTPUTS_MISSING },
		/* a byte after the request; params that are not a map */
		{ "94 00 01 a3 72756e 83 a7 70726f6772616d 01 a6 696e70757473 90 "
		  "a7 6f757470757473 90 c0", -EBADMSG, 0 },
		{ "94 00 01 a3 72756e 90", -EBADMSG, 0 },
		/* msgid as a uint64 and {}: no program */
		{ "94 00 cf 0000000000000001 a3 72756e 80", 1, ANES_RUN_PROGRAM_MISSING },
		/* a notification, another method, 5 elements, a msgid over u32 */
		{ "93 02 a3 72756e 83 a7 70726f6772616d 01 a6 696e70757473 90 a7 6f757470757473 90", 0, 0 },
		{ "94 00 01 a4 72756e78 83 a7 70726f6772616d 01 a6 696e70757473 90 a7 6f757470757473 90", 0, 0 },
		{ "95 00 01 a3 72756e 83 a7 70726f6772616d 01 a6 696e70757473 90 a7 6f757470757473 90 c0", 0, 0 },
		{ "94 00 cf 0000000100000000 a3 72756e 80", 0, 0 },
		/* steps: [], {}, with program, with a step that is not a map */
		{ "94 00 01 a3 72756e 81 a5 7374657073 90", 1, ANES_RUN_STEPS_EMPTY },
		{ "94 00 01 a3 72756e 81 a5 7374657073 80", 1, ANES_RUN_STEPS_TYPE },
		{ "94 00 01 a3 72756e 82 a5 7374657073 91 83 a7 70726f6772616d 01 a6 696e70757473 90 "
		  "a7 6f757470757473 90 a7 70726f6772616d 01", 1, ANES_RUN_STEPS_AND_PROGRAM },
		{ "94 00 01 a3 72756e 81 a5 7374657073 92 83 a7 70726f6772616d 01 a6 696e70757473 90 "
		  "a7 6f757470757473 90 01", 1, ANES_RUN_STEP_NOT_MAP },
		/* a map16 step */
		{ "94 00 01 a3 72756e de 0003 a7 70726f6772616d 01 a6 696e70757473 90 a7 6f757470757473 90",
		  1, ANES_RUN_OK },
	};
	anes_run_wire *w = malloc(sizeof *w);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		bytes b = { 0 };
		b_hex(&b, cases[i].hex);
		int r = wire_read(b.p, b.n, w);
		cr_assert_eq(r, cases[i].rc, "case %zu: %d", i, r);
		if (r == 1)
			cr_assert_eq(w->bad ? w->bad : w->steps[0].bad, cases[i].bad, "case %zu", i);
		b_free(&b);
	}
	/* 257 steps: not an array of 1 to 256 steps */
	ids_init();
	mp m;
	mp_init(&m);
	uint32_t *many = calloc(2 * (ANES_MAX_STEPS + 1), sizeof *many);
	pack_lib_run(&m, 1, ANES_MAX_STEPS + 1, true, many);
	cr_assert_eq(wire_read(m.sb.data, m.sb.size, w), 1);
	cr_assert_eq(w->bad, ANES_RUN_STEPS_TYPE);
	mp_free(&m);
	free(many);
	/* 65 inputs in one step (counted, 64 kept); 256 steps of 64 inputs */
	for (int big = 0; big < 2; big++) {
		uint32_t n_steps = big ? ANES_MAX_STEPS : 1;
		uint32_t n_in = big ? ANES_RUN_WIRE_MAX_IO : ANES_RUN_WIRE_MAX_IO + 1;
		mp_init(&m);
		anes_pack_request(&m.pk, 1, "run", 1);
		anes_pack_str(&m.pk, "steps");
		msgpack_pack_array(&m.pk, n_steps);
		for (uint32_t s = 0; s < n_steps; s++) {
			msgpack_pack_map(&m.pk, 3);
			anes_pack_str(&m.pk, "program");
			msgpack_pack_uint32(&m.pk, 1);
			anes_pack_str(&m.pk, "inputs");
			msgpack_pack_array(&m.pk, n_in);
			for (uint32_t i = 0; i < n_in; i++)
				msgpack_pack_uint32(&m.pk, i + 1);
			anes_pack_str(&m.pk, "outputs");
			msgpack_pack_array(&m.pk, 0);
		}
		cr_assert_eq(wire_read(m.sb.data, m.sb.size, w), 1, "big %d", big);
		cr_assert_eq(w->n_steps, n_steps);
		cr_assert_eq(w->steps[n_steps - 1].n_in, n_in);
		cr_assert_eq(w->ids[w->steps[n_steps - 1].in + ANES_RUN_WIRE_MAX_IO - 1],
		             ANES_RUN_WIRE_MAX_IO);
		mp_free(&m);
	}
	free(w);
}

/* "state" (docs/protocol.md, "States"): a u32 in any width, in a single run
 * and in a chain's steps; anything else is ANES_RUN_STATE_TYPE, judged after
 * the step's other params; twice is malformed. */
Test(run_wire, a_state_is_read)
{
#define RUN3 "a7 70726f6772616d 01 a6 696e70757473 90 a7 6f757470757473 90 "
	static const struct {
		const char *hex;
		int rc;
		uint8_t bad;
		bool has;
		uint32_t state;
	} cases[] = {
		{ "94 00 01 a3 72756e 84 " RUN3 "a5 7374617465 05", 1, ANES_RUN_OK, true, 5 },
		{ "94 00 01 a3 72756e 84 a5 7374617465 ce ffffffff " RUN3, 1, ANES_RUN_OK, true, UINT32_MAX },
		{ "94 00 01 a3 72756e 84 " RUN3 "a5 7374617465 d0 07", 1, ANES_RUN_OK, true, 7 },
		{ "94 00 01 a3 72756e 84 " RUN3 "a5 7374617465 00", 1, ANES_RUN_OK, true, 0 },
		{ "94 00 01 a3 72756e 83 " RUN3, 1, ANES_RUN_OK, false, 0 },
		{ "94 00 01 a3 72756e 84 " RUN3 "a5 7374617465 cf 0000000100000000", 1, ANES_RUN_STATE_TYPE, false, 0 },
		{ "94 00 01 a3 72756e 84 " RUN3 "a5 7374617465 ff", 1, ANES_RUN_STATE_TYPE, false, 0 },
		{ "94 00 01 a3 72756e 84 " RUN3 "a5 7374617465 a1 31", 1, ANES_RUN_STATE_TYPE, false, 0 },
		{ "94 00 01 a3 72756e 84 " RUN3 "a5 7374617465 c0", 1, ANES_RUN_STATE_TYPE, false, 0 },
		{ "94 00 01 a3 72756e 84 " RUN3 "a5 7374617465 91 01", 1, ANES_RUN_STATE_TYPE, false, 0 },
		/* outputs missing comes first */
		{ "94 00 01 a3 72756e 83 a7 70726f6772616d 01 a6 696e70757473 90 a5 7374617465 c0", 1,
		  ANES_RUN_OUTPUTS_MISSING, false, 0 },
		/* twice */
		{ "94 00 01 a3 72756e 85 " RUN3 "a5 7374617465 01 a5 7374617465 02", -EBADMSG, 0, false, 0 },
		/* in a chain's step; one beside steps is not the step's */
		{ "94 00 01 a3 72756e 81 a5 7374657073 91 84 " RUN3 "a5 7374617465 09", 1, ANES_RUN_OK, true, 9 },
		{ "94 00 01 a3 72756e 82 a5 7374617465 09 a5 7374657073 91 83 " RUN3, 1, ANES_RUN_OK, false, 0 },
	};
#undef RUN3
	anes_run_wire *w = malloc(sizeof *w);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		bytes b = { 0 };
		b_hex(&b, cases[i].hex);
		int r = wire_read(b.p, b.n, w);
		cr_assert_eq(r, cases[i].rc, "case %zu: %d", i, r);
		if (r == 1) {
			cr_assert_eq(w->bad ? w->bad : w->steps[0].bad, cases[i].bad, "case %zu", i);
			cr_assert_eq(w->steps[0].has_state, cases[i].has, "case %zu", i);
			if (cases[i].has)
				cr_assert_eq(w->steps[0].state, cases[i].state, "case %zu", i);
		}
		b_free(&b);
	}
	free(w);
}

/* Every prefix of a request is cut short: never accepted, never read past. */
Test(run_wire, every_prefix_is_rejected)
{
	ids_init();
	mp m;
	mp_init(&m);
	pack_lib_run(&m, 77, 3, true, g_ids);
	for (size_t n = 0; n < m.sb.size; n++)
		cr_assert_eq(wire_exact(m.sb.data, n), 0, "prefix of %zu bytes", n);
	cr_assert_eq(wire_exact(m.sb.data, m.sb.size), 1);
	mp_free(&m);
}

/* Each byte of a chain changed to each interesting value: whatever the
 * reader accepts, the decoder reads the same (a small deterministic fuzz;
 * tests/fuzz/fuzz_frame.c does the same on any input). */
Test(run_wire, changed_bytes_never_read_two_ways)
{
	static const uint8_t vals[] = { 0x00, 0x01, 0x02, 0x03, 0x7f, 0x80, 0x81, 0x83, 0x84, 0x85,
		                        0x8f, 0x90, 0x91, 0x9f, 0xa0, 0xa3, 0xa5, 0xa6, 0xa7, 0xa8,
		                        0xbf, 0xc0, 0xc4, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd9, 0xda,
		                        0xdb, 0xdc, 0xdd, 0xde, 0xff };
	ids_init();
	mp m;
	mp_init(&m);
	pack_lib_run(&m, 300, 2, true, g_ids);
	uint8_t *p = malloc(m.sb.size);
	unsigned accepted = 0;
	for (size_t at = 0; at < m.sb.size; at++) {
		for (size_t v = 0; v < sizeof vals + 2; v++) {
			memcpy(p, m.sb.data, m.sb.size);
			p[at] = v < sizeof vals ? vals[v] : (uint8_t)(p[at] + (v == sizeof vals ? 1 : -1));
			accepted += wire_exact(p, m.sb.size) == 1;
		}
	}
	/* Some changes keep a valid request (another ID, msgid, program). */
	cr_assert_gt(accepted, 50);
	free(p);
	mp_free(&m);
}
