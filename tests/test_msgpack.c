/* SPDX-License-Identifier: MIT */
/* libanes_proto, msgpack from the wire: the bounded validator
 * (anes_mp_check), message decoding (anes_msg_decode) and the accessors.
 * docs/protocol.md is the contract. */
#include "anes_proto.h"
#include "proto_util.h"

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

/* ---- anes_mp_check --------------------------------------------------------- */

/* One value of every msgpack type and encoding. */
static const char *const valid_values[] = {
	"c0", "c2", "c3",                                           /* nil, false, true */
	"00", "7f", "e0", "ff",                                     /* fixints */
	"cc ff", "cd ff ff", "ce ff ff ff ff", "cf ff ff ff ff ff ff ff ff",
	"d0 80", "d1 80 00", "d2 80 00 00 00", "d3 80 00 00 00 00 00 00 00",
	"ca 3f 80 00 00", "cb 3f f0 00 00 00 00 00 00",
	"a0", "a3 61 62 63",
	"bf 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61",
	"d9 00", "d9 03 61 62 63", "da 00 03 61 62 63", "db 00 00 00 03 61 62 63",
	"c4 00", "c4 02 01 02", "c5 00 02 01 02", "c6 00 00 00 02 01 02",
	"90", "93 01 02 03", "dc 00 00", "dc 00 02 c0 c0", "dd 00 00 00 00", "dd 00 00 00 02 c0 c0",
	"80", "81 a1 61 01", "de 00 00", "de 00 01 a1 61 01", "df 00 00 00 00", "df 00 00 00 01 a1 61 01",
	"92 81 a1 61 91 c0 a0", "81 01 92 c3 80",
};
#define N_VALID (sizeof valid_values / sizeof valid_values[0])

Test(mp_check, valid_values_pass_and_unpack)
{
	for (size_t i = 0; i < N_VALID; i++) {
		bytes b = {0};
		b_hex(&b, valid_values[i]);
		cr_assert_eq(check_exact(b.p, b.n), 0, "valid value rejected: %s", valid_values[i]);
		/* msgpack-c agrees that it is one complete value */
		msgpack_zone z;
		msgpack_object o;
		size_t off = 0;
		cr_assert(msgpack_zone_init(&z, 256));
		cr_assert_eq(msgpack_unpack((const char *)b.p, b.n, &off, &z, &o), MSGPACK_UNPACK_SUCCESS,
		             "%s", valid_values[i]);
		cr_assert_eq(off, b.n);
		msgpack_zone_destroy(&z);
		b_free(&b);
	}
}

Test(mp_check, truncated_and_trailing_fail)
{
	/* each value on its own, and all of them in one array */
	bytes all = {0};
	b_hex(&all, "dc");
	b_be(&all, N_VALID, 2);
	for (size_t i = 0; i < N_VALID; i++) {
		bytes b = {0};
		b_hex(&b, valid_values[i]);
		b_put(&all, b.p, b.n);
		for (size_t cut = 0; cut < b.n; cut++)
			cr_assert_eq(check_exact(b.p, cut), -EBADMSG, "%s cut at %zu", valid_values[i], cut);
		b_u8(&b, 0xc0);
		cr_assert_eq(check_exact(b.p, b.n), -EBADMSG, "%s + trailing byte", valid_values[i]);
		b_free(&b);
	}
	cr_assert_eq(check_exact(all.p, all.n), 0);
	for (size_t cut = 0; cut < all.n; cut++)
		cr_assert_eq(check_exact(all.p, cut), -EBADMSG, "composite cut at %zu", cut);
	b_u8(&all, 0x00);
	cr_assert_eq(check_exact(all.p, all.n), -EBADMSG);
	b_free(&all);

	/* a valid request envelope, cut everywhere */
	anes_frame f;
	void *data;
	size_t len;
	anes_frame_init(&f);
	anes_pack_request(&f.pk, 0xdeadbeef, "surface.create", 2);
	anes_pack_str(&f.pk, "size");
	msgpack_pack_uint64(&f.pk, 1u << 20);
	anes_pack_str(&f.pk, "tags");
	msgpack_pack_array(&f.pk, 2);
	anes_pack_str(&f.pk, "a");
	msgpack_pack_double(&f.pk, 0.5);
	cr_assert_eq(anes_frame_finish(&f, 0, 1000, &data, &len), 0);
	const uint8_t *pl = (const uint8_t *)data + ANES_FRAME_HEADER_SIZE;
	size_t pn = len - ANES_FRAME_HEADER_SIZE;
	cr_assert_eq(check_exact(pl, pn), 0);
	for (size_t cut = 0; cut < pn; cut++) {
		cr_assert_eq(check_exact(pl, cut), -EBADMSG, "request cut at %zu", cut);
		msgpack_zone z;
		anes_msg m;
		cr_assert(msgpack_zone_init(&z, 256));
		cr_assert_eq(anes_msg_decode(pl, cut, &z, &m), -EBADMSG);
		msgpack_zone_destroy(&z);
	}
	free(data);
}

Test(mp_check, ext_and_reserved_fail)
{
	static const char *const bad[] = {
		"c1", "91 c1", "81 c1 c0", "81 00 c1",
		"d4 01 00", "d5 01 00 00", "d6 01 00 00 00 00", "d7 01 00 00 00 00 00 00 00 00",
		"d8 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
		"c7 01 01 00", "c8 00 01 01 00", "c9 00 00 00 01 01 00",
		"d6 ff 00 00 00 00",  /* timestamp 32 */
		"92 c0 d4 00 00",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		cr_assert_eq(check_hex(bad[i]), -EBADMSG, "accepted: %s", bad[i]);
}

static const char *const huge_lengths[] = {
	"dd ff ff ff ff c0",              /* array32 */
	"df ff ff ff ff c0 c0",           /* map32 */
	"db ff ff ff ff 61",              /* str32 */
	"c6 ff ff ff ff 00",              /* bin32 */
	"dc ff ff c0", "de ff ff c0 c0", "da ff ff 61", "c5 ff ff 00", "d9 ff 61", "c4 ff 00",
	"93 c0 c0", "dd 00 00 00 03 c0 c0", "82 c0 c0 c0", "a5 61 61 61 61",
	"91 dd ff ff ff ff", "81 a1 61 db ff ff ff ff",
	"dd ff ff", "db ff", "c6", "cf 00 00", "cb 00",  /* length field or body cut */
};

Test(mp_check, huge_declared_lengths_fail_fast)
{
	for (size_t i = 0; i < sizeof huge_lengths / sizeof huge_lengths[0]; i++)
		cr_assert_eq(check_hex(huge_lengths[i]), -EBADMSG, "accepted: %s", huge_lengths[i]);

	/* Without allocating: decode (which would hand these to msgpack-c)
	 * refuses them in the check, before anything comes from the zone. */
	uint8_t bufs[4][8];
	size_t lens[4];
	for (int i = 0; i < 4; i++) {
		bytes b = {0};
		b_hex(&b, huge_lengths[i]);
		memcpy(bufs[i], b.p, b.n);
		lens[i] = b.n;
		b_free(&b);
	}
	for (int i = 0; i < 4; i++) {
		msgpack_zone z;
		anes_msg m;
		cr_assert(msgpack_zone_init(&z, 64));
		msgpack_zone_chunk_list cl0 = z.chunk_list;
		cr_assert_eq(anes_mp_check(bufs[i], lens[i]), -EBADMSG);
		cr_assert_eq(anes_msg_decode(bufs[i], lens[i], &z, &m), -EBADMSG);
		/* refused before msgpack-c saw it: the zone gave out nothing */
		cr_assert(z.chunk_list.free == cl0.free && z.chunk_list.ptr == cl0.ptr &&
		          z.chunk_list.head == cl0.head, "%s: the zone was used", huge_lengths[i]);
		msgpack_zone_destroy(&z);
	}
}

/* n nested arrays (or maps), the innermost holding a nil or empty */
static void nest(bytes *b, unsigned n, bool maps, bool empty)
{
	for (unsigned i = 1; i < n; i++)
		b_hex(b, maps ? "81 00" : "91");
	if (empty)
		b_hex(b, maps ? "80" : "90");
	else
		b_hex(b, maps ? "81 00 c0" : "91 c0");
}

Test(mp_check, depth)
{
	for (int maps = 0; maps < 2; maps++) {
		for (int empty = 0; empty < 2; empty++) {
			bytes b = {0};
			nest(&b, ANES_MP_MAX_DEPTH, maps, empty);
			cr_assert_eq(check_exact(b.p, b.n), 0, "depth 16 maps=%d empty=%d", maps, empty);
			b_free(&b);
			nest(&b, ANES_MP_MAX_DEPTH + 1, maps, empty);
			cr_assert_eq(check_exact(b.p, b.n), -EBADMSG, "depth 17 maps=%d empty=%d", maps, empty);
			b_free(&b);
			nest(&b, 200, maps, empty);
			cr_assert_eq(check_exact(b.p, b.n), -EBADMSG);
			b_free(&b);
		}
	}
	/* depth counts nesting, not siblings: many depth-16 subtrees are fine */
	bytes b = {0};
	b_hex(&b, "9f");
	for (int i = 0; i < 15; i++)
		nest(&b, ANES_MP_MAX_DEPTH - 1, false, i & 1);
	cr_assert_eq(check_exact(b.p, b.n), 0);
	b_free(&b);
}

Test(mp_check, object_count)
{
	/* an array of n-1 nils is n objects */
	for (uint32_t n = ANES_MP_MAX_OBJECTS; n <= ANES_MP_MAX_OBJECTS + 1; n++) {
		bytes b = {0};
		b_u8(&b, 0xdd);
		b_be(&b, n - 1, 4);
		for (uint32_t i = 0; i < n - 1; i++)
			b_u8(&b, 0xc0);
		cr_assert_eq(check_exact(b.p, b.n), n <= ANES_MP_MAX_OBJECTS ? 0 : -EBADMSG, "%u objects", n);
		b_free(&b);
	}
	/* keys and values count: 64 maps x 512 entries = 65536 + 65 objects */
	bytes b = {0};
	b_hex(&b, "dc 00 40");
	for (int m = 0; m < 64; m++) {
		b_hex(&b, "de 02 00");
		for (int i = 0; i < 512; i++) {
			b_u8(&b, 0xcd);
			b_be(&b, (uint64_t)i, 2);
			b_u8(&b, 0xc0);
		}
	}
	cr_assert_eq(check_exact(b.p, b.n), -EBADMSG);
	b_free(&b);
}

Test(mp_check, map_size)
{
	for (uint32_t n = ANES_MP_MAX_MAP; n <= ANES_MP_MAX_MAP + 1; n++) {
		for (int wide = 0; wide < 2; wide++) {
			bytes b = {0};
			b_u8(&b, wide ? 0xdf : 0xde);
			b_be(&b, n, wide ? 4 : 2);
			for (uint32_t i = 0; i < n; i++) {
				b_u8(&b, 0xcd);
				b_be(&b, i, 2);
				b_u8(&b, 0xc3);
			}
			cr_assert_eq(check_exact(b.p, b.n), n <= ANES_MP_MAX_MAP ? 0 : -EBADMSG, "map of %u", n);
			b_free(&b);
		}
	}
	/* arrays are not limited by the map bound */
	bytes b = {0};
	b_hex(&b, "dc 10 00");
	for (int i = 0; i < 4096; i++)
		b_u8(&b, 0x01);
	cr_assert_eq(check_exact(b.p, b.n), 0);
	b_free(&b);
}

/* ---- anes_msg_decode ----------------------------------------------------- */

static msgpack_zone zone;

static void zone_setup(void)
{
	cr_assert(msgpack_zone_init(&zone, 1024));
}

static void zone_teardown(void)
{
	msgpack_zone_destroy(&zone);
}

TestSuite(decode, .init = zone_setup, .fini = zone_teardown);

/* Finish f and decode its payload into *m; returns the frame (free it). */
static void *finish_decode(anes_frame *f, anes_msg *m, int want)
{
	void *data;
	size_t len;

	cr_assert_eq(anes_frame_finish(f, 0, ANES_FRAME_MAX_DEFAULT, &data, &len), 0);
	cr_assert_eq(anes_msg_decode((uint8_t *)data + ANES_FRAME_HEADER_SIZE,
	                             len - ANES_FRAME_HEADER_SIZE, &zone, m), want);
	return data;
}

Test(decode, request)
{
	anes_frame f;
	anes_msg m;
	uint64_t size = 0;
	const char *s;
	uint32_t slen;

	anes_frame_init(&f);
	anes_pack_request(&f.pk, 7, "surface.create", 2);
	anes_pack_str(&f.pk, "size");
	msgpack_pack_uint16(&f.pk, 4096);
	anes_pack_str(&f.pk, "name");
	anes_pack_strn(&f.pk, "xyz", 2);
	void *data = finish_decode(&f, &m, 0);
	cr_assert_eq(m.type, ANES_MSG_REQUEST);
	cr_assert_eq(m.msgid, 7);
	cr_assert_eq(m.method_len, strlen("surface.create"));
	cr_assert(anes_msg_method_is(&m, "surface.create"));
	cr_assert_not(anes_msg_method_is(&m, "surface"));
	cr_assert_not(anes_msg_method_is(&m, "surface.create2"));
	cr_assert_not_null(m.params);
	cr_assert_eq(m.params->type, MSGPACK_OBJECT_MAP);
	cr_assert_eq(m.params->via.map.size, 2);
	cr_assert_null(m.error);
	cr_assert_null(m.result);
	cr_assert_eq(anes_mp_u64(m.params, "size", UINT64_MAX, &size), 0);
	cr_assert_eq(size, 4096);
	cr_assert_eq(anes_mp_str(m.params, "name", 64, &s, &slen), 0);
	cr_assert_eq(slen, 2);
	cr_assert_eq(memcmp(s, "xy", 2), 0);
	free(data);

	/* the largest msgid, a 64-byte method, no params */
	char method[ANES_METHOD_MAX + 1];
	memset(method, 'm', ANES_METHOD_MAX);
	method[ANES_METHOD_MAX] = 0;
	anes_frame_init(&f);
	anes_pack_request(&f.pk, UINT32_MAX, method, 0);
	data = finish_decode(&f, &m, 0);
	cr_assert_eq(m.msgid, UINT32_MAX);
	cr_assert(anes_msg_method_is(&m, method));
	cr_assert_eq(m.params->via.map.size, 0);
	free(data);
}

Test(decode, response_ok)
{
	anes_frame f;
	anes_msg m;
	uint32_t id = 0;
	int code = 99;
	const char *msg = NULL;
	uint32_t mlen = 99;

	anes_frame_init(&f);
	anes_pack_result(&f.pk, 9, 1);
	anes_pack_str(&f.pk, "id");
	msgpack_pack_uint32(&f.pk, 5);
	void *data = finish_decode(&f, &m, 0);
	cr_assert_eq(m.type, ANES_MSG_RESPONSE);
	cr_assert_eq(m.msgid, 9);
	cr_assert_null(m.error);
	cr_assert_null(m.method);
	cr_assert_null(m.params);
	cr_assert_not_null(m.result);
	cr_assert_eq(anes_mp_u32(m.result, "id", &id), 0);
	cr_assert_eq(id, 5);
	cr_assert_eq(anes_msg_error(&m, &code, &msg, &mlen), -EBADMSG);
	cr_assert_eq(code, 99);
	cr_assert_null(msg);
	cr_assert_eq(mlen, 99);
	free(data);
}

Test(decode, response_error)
{
	anes_frame f;
	anes_msg m;
	int code = 0;
	const char *msg = NULL, *name = NULL;
	uint32_t mlen = 0, nlen = 0;

	anes_frame_init(&f);
	anes_pack_error(&f.pk, 11, ANES_WERR_LIMIT, "too many surfaces");
	void *data = finish_decode(&f, &m, 0);
	cr_assert_eq(m.type, ANES_MSG_RESPONSE);
	cr_assert_eq(m.msgid, 11);
	cr_assert_null(m.result);
	cr_assert_not_null(m.error);
	cr_assert_eq(anes_msg_error(&m, &code, &msg, &mlen), 0);
	cr_assert_eq(code, ANES_WERR_LIMIT);
	cr_assert_eq(mlen, strlen("too many surfaces"));
	cr_assert_eq(memcmp(msg, "too many surfaces", mlen), 0);
	cr_assert_eq(anes_mp_str(m.error, "name", 64, &name, &nlen), 0);
	cr_assert_eq(nlen, 5);
	cr_assert_eq(memcmp(name, "limit", 5), 0);
	free(data);

	/* NULL message becomes "", an unknown code is named "internal" */
	anes_frame_init(&f);
	anes_pack_error(&f.pk, 12, 999, NULL);
	data = finish_decode(&f, &m, 0);
	cr_assert_eq(anes_msg_error(&m, &code, &msg, &mlen), 0);
	cr_assert_eq(code, 999);
	cr_assert_eq(mlen, 0);
	cr_assert_eq(anes_mp_str(m.error, "name", 64, &name, &nlen), 0);
	cr_assert_eq(nlen, 8);
	cr_assert_eq(memcmp(name, "internal", 8), 0);
	free(data);
}

Test(decode, error_map_checks)
{
	static const struct { const char *hex; int want; } cases[] = {
		/* [1, 1, {code, message}, nil] */
		{ "94 01 01 82 a4 636f6465 05 a7 6d657373616765 a2 6869 c0", 0 },
		/* code missing */
		{ "94 01 01 81 a7 6d657373616765 a2 6869 c0", -EBADMSG },
		/* message missing */
		{ "94 01 01 81 a4 636f6465 05 c0", -EBADMSG },
		/* negative code */
		{ "94 01 01 82 a4 636f6465 ff a7 6d657373616765 a2 6869 c0", -EBADMSG },
		/* code over INT32_MAX */
		{ "94 01 01 82 a4 636f6465 ce 80 00 00 00 a7 6d657373616765 a2 6869 c0", -EBADMSG },
		/* message not a string */
		{ "94 01 01 82 a4 636f6465 05 a7 6d657373616765 c4 02 6869 c0", -EBADMSG },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		bytes b = {0};
		anes_msg m;
		int code = -7;
		const char *msg = (const char *)0x1;
		uint32_t mlen = 77;
		b_hex(&b, cases[i].hex);
		cr_assert_eq(anes_msg_decode(b.p, b.n, &zone, &m), 0, "case %zu", i);
		cr_assert_eq(anes_msg_error(&m, &code, &msg, &mlen), cases[i].want, "case %zu", i);
		if (cases[i].want == 0) {
			cr_assert_eq(code, 5);
			cr_assert_eq(mlen, 2);
			cr_assert_eq(memcmp(msg, "hi", 2), 0);
		} else {
			cr_assert_eq(code, -7);
			cr_assert_eq(msg, (const char *)0x1);
			cr_assert_eq(mlen, 77);
		}
		b_free(&b);
	}
}

Test(decode, notify)
{
	anes_frame f;
	anes_msg m;
	uint32_t code = 0;

	anes_frame_init(&f);
	anes_pack_notify(&f.pk, "error", 1);
	anes_pack_str(&f.pk, "code");
	msgpack_pack_uint8(&f.pk, 1);
	void *data = finish_decode(&f, &m, 0);
	cr_assert_eq(m.type, ANES_MSG_NOTIFY);
	cr_assert_eq(m.msgid, 0);
	cr_assert(anes_msg_method_is(&m, "error"));
	cr_assert_null(m.error);
	cr_assert_null(m.result);
	cr_assert_eq(anes_mp_u32(m.params, "code", &code), 0);
	cr_assert_eq(code, 1);
	free(data);
}

/* Envelopes that must be rejected, as hex. */
static const char *const bad_envelopes[] = {
	/* not an array / wrong arity */
	"c0", "80", "a1 61", "90", "91 00", "92 00 01",
	"93 00 01 a1 6d",                     /* request with 3 elements */
	"95 00 01 a1 6d 80 c0",               /* request with 5 */
	"93 01 01 c0",                        /* response with 3 */
	"95 01 01 c0 80 c0",                  /* response with 5 */
	"92 02 a1 6d",                        /* notify with 2 */
	"94 02 a1 6d 80 c0",                  /* notify with 4 */
	/* wrong type tag */
	"94 03 01 a1 6d 80", "93 03 a1 6d 80", "94 ff 01 a1 6d 80", "94 a1 30 01 a1 6d 80",
	"94 c0 01 a1 6d 80", "94 cb 00 00 00 00 00 00 00 00 01 a1 6d 80", "94 cf 00 00 00 01 00 00 00 00 01 a1 6d 80",
	/* msgid */
	"94 00 cf 00 00 00 01 00 00 00 00 a1 6d 80",      /* UINT32_MAX + 1 */
	"94 00 cf ff ff ff ff ff ff ff ff a1 6d 80",
	"94 01 cf 00 00 00 01 00 00 00 00 c0 80",
	"94 00 ff a1 6d 80", "94 00 d0 80 a1 6d 80", "94 01 ff c0 80",   /* negative */
	"94 00 a1 31 a1 6d 80", "94 00 c0 a1 6d 80", "94 00 c3 a1 6d 80",
	"94 00 ca 3f 80 00 00 a1 6d 80",
	/* method */
	"94 00 01 01 80", "94 00 01 c4 01 6d 80", "94 00 01 c0 80",
	"94 00 01 91 a1 6d 80", "93 02 01 80", "93 02 c4 01 6d 80",
	/* params */
	"94 00 01 a1 6d 90", "94 00 01 a1 6d c0", "94 00 01 a1 6d 01", "94 00 01 a1 6d a0",
	"93 02 a1 6d 90", "93 02 a1 6d c0",
	/* response error/result */
	"94 01 01 80 80", "94 01 01 c0 c0", "94 01 01 c0 90", "94 01 01 a1 65 c0",
	"94 01 01 90 c0", "94 01 01 80 01", "94 01 01 01 80",
	/* duplicate keys */
	"94 00 01 a1 6d 82 a1 61 01 a1 61 02",
	"94 00 01 a1 6d 83 a1 61 01 a1 62 01 a1 61 01",
	"94 00 01 a1 6d 81 a1 78 82 a2 6162 01 a2 6162 02",       /* nested map */
	"94 00 01 a1 6d 81 a1 78 92 80 82 a0 c0 a0 c0",            /* in an array */
	"94 01 01 c0 82 a1 61 01 a1 61 01",                        /* in a result */
	"94 01 01 82 a1 61 01 a1 61 01 c0",                        /* in an error */
	"93 02 a1 6d 82 d9 01 61 01 a1 61 02",                     /* str8 vs fixstr */
	"94 00 01 a1 6d 81 a1 78 82 01 c0 01 c0",                  /* equal int keys */
	"94 00 01 a1 6d 81 a1 78 82 01 c0 cc 01 c0",               /* same int, two encodings */
	"94 00 01 a1 6d 81 a1 78 82 c4 01 61 c0 c4 01 61 c0",      /* equal bin keys */
	/* trailing bytes */
	"94 00 01 a1 6d 80 c0",
};

Test(decode, malformed)
{
	for (size_t i = 0; i < sizeof bad_envelopes / sizeof bad_envelopes[0]; i++) {
		bytes b = {0};
		anes_msg m;
		memset(&m, 0x5a, sizeof m);
		anes_msg before = m;
		b_hex(&b, bad_envelopes[i]);
		cr_assert_eq(anes_msg_decode(b.p, b.n, &zone, &m), -EBADMSG, "accepted: %s", bad_envelopes[i]);
		cr_assert_eq(memcmp(&m, &before, sizeof m), 0, "ret written on failure: %s", bad_envelopes[i]);
		b_free(&b);
	}
}

/* 0 to ANES_METHOD_MAX bytes: "" is a well-formed name (a request for it
 * gets unknown_method from the daemon, not a protocol error). */
Test(decode, method_length)
{
	for (int n = 0; n <= ANES_METHOD_MAX + 2; n++) {
		char method[ANES_METHOD_MAX + 3];
		mp m;
		anes_msg msg;
		memset(method, 'a', (size_t)n);
		method[n] = 0;
		mp_init(&m);
		msgpack_pack_array(&m.pk, 4);
		msgpack_pack_uint8(&m.pk, 0);
		msgpack_pack_uint8(&m.pk, 1);
		anes_pack_str(&m.pk, method);
		msgpack_pack_map(&m.pk, 0);
		cr_assert_eq(anes_msg_decode(m.sb.data, m.sb.size, &zone, &msg),
		             n <= ANES_METHOD_MAX ? 0 : -EBADMSG, "method of %d bytes", n);
		mp_free(&m);
	}
}

Test(decode, distinct_keys_ok)
{
	/* prefixes, different types and equal keys in different maps are fine */
	static const char *const ok[] = {
		"94 00 01 a1 6d 82 a1 61 01 a2 6162 01",
		"94 00 01 a1 6d 82 a1 61 81 a1 61 01 a1 62 81 a1 61 01",
		"94 00 01 a1 6d 81 a1 78 84 01 c0 a1 01 c0 c4 01 01 c0 ff c0",
		"94 00 01 a1 6d 81 a1 78 92 81 a1 61 01 81 a1 61 01",
	};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		bytes b = {0};
		anes_msg m;
		b_hex(&b, ok[i]);
		cr_assert_eq(anes_msg_decode(b.p, b.n, &zone, &m), 0, "rejected: %s", ok[i]);
		b_free(&b);
	}
}

/* [0, 1, "m", {"x": [nmaps maps of 1024 keys of klen bytes]}], keys differ
 * only in their last two bytes. */
static void many_long_keys(bytes *b, uint32_t nmaps, uint32_t klen)
{
	b_hex(b, "94 00 01 a1 6d 81 a1 78 dc");
	b_be(b, nmaps, 2);
	uint8_t *key = malloc(klen);
	cr_assert_not_null(key);
	memset(key, 'k', klen);
	for (uint32_t m = 0; m < nmaps; m++) {
		b_u8(b, 0xde);
		b_be(b, ANES_MP_MAX_MAP, 2);
		for (uint32_t i = 0; i < ANES_MP_MAX_MAP; i++) {
			key[klen - 2] = (uint8_t)(i >> 8);
			key[klen - 1] = (uint8_t)i;
			b_u8(b, 0xdb);
			b_be(b, klen, 4);
			b_put(b, key, klen);
			b_u8(b, 0xc0);
		}
	}
	free(key);
}

Test(decode, unique_key_check_is_not_quadratic)
{
	/* A pairwise key comparison would memcmp ~16 GB for either payload
	 * (31 maps of 1 KiB keys; one map of 32 KiB keys): n(n-1)/2 comparisons
	 * a map.  Sorting bounds them by about n log2 n; the check allows twice
	 * that plus the n-1 neighbour comparisons after the sort. */
	static const struct { uint32_t nmaps, klen; } cases[] = { { 31, 1024 }, { 1, 32768 } };
	uint64_t n = ANES_MP_MAX_MAP, log2n = 0;
	while ((1ull << log2n) < n)
		log2n++;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		bytes b = {0};
		anes_msg msg;
		many_long_keys(&b, cases[i].nmaps, cases[i].klen);
		uint64_t c0 = anes_msg_key_compares();
		cr_assert_eq(anes_msg_decode(b.p, b.n, &zone, &msg), 0);
		uint64_t made = anes_msg_key_compares() - c0;
		uint64_t bound = cases[i].nmaps * (2 * n * log2n + n);
		cr_assert_leq(made, bound, "%" PRIu64 " key comparisons for %u maps of %" PRIu64
		              " keys (bound %" PRIu64 ", pairwise %" PRIu64 ")", made, cases[i].nmaps,
		              n, bound, cases[i].nmaps * n * (n - 1) / 2);
		cr_assert_geq(made, cases[i].nmaps * (n - 1), "every map's keys were compared");
		/* and a duplicate among them is still found */
		b.p[b.n - 2]--;
		cr_assert_eq(anes_msg_decode(b.p, b.n, &zone, &msg), -EBADMSG);
		b_free(&b);
	}
}

Test(decode, limits_inside_envelope)
{
	/* [0, 1, "m", {"x": <nest>}]: the envelope and params take 2 levels */
	for (unsigned inner = ANES_MP_MAX_DEPTH - 2; inner <= ANES_MP_MAX_DEPTH - 1; inner++) {
		bytes b = {0};
		anes_msg m;
		b_hex(&b, "94 00 01 a1 6d 81 a1 78");
		nest(&b, inner, false, false);
		cr_assert_eq(anes_msg_decode(b.p, b.n, &zone, &m),
		             inner + 2 <= ANES_MP_MAX_DEPTH ? 0 : -EBADMSG, "inner %u", inner);
		b_free(&b);
	}
	/* the most objects a message may hold still decode:
	 * root, 0, 1, "m", params, "x", the array = 7 + its elements */
	bytes b = {0};
	anes_msg m;
	const msgpack_object *items;
	uint32_t n;
	b_hex(&b, "94 00 01 a1 6d 81 a1 78 dd");
	b_be(&b, ANES_MP_MAX_OBJECTS - 7, 4);
	for (uint32_t i = 0; i < ANES_MP_MAX_OBJECTS - 7; i++)
		b_u8(&b, 0x01);
	cr_assert_eq(anes_msg_decode(b.p, b.n, &zone, &m), 0);
	cr_assert_eq(anes_mp_array(m.params, "x", UINT32_MAX, &items, &n), 0);
	cr_assert_eq(n, ANES_MP_MAX_OBJECTS - 7);
	b.p[9 + 3]++;  /* one more element, and one more byte */
	b_u8(&b, 0x01);
	cr_assert_eq(anes_msg_decode(b.p, b.n, &zone, &m), -EBADMSG);
	b_free(&b);
}

/* ---- accessors ------------------------------------------------------------ */

static msgpack_zone acc_zone;
static const msgpack_object *acc_map;
static mp acc_buf;

static const char acc_bin[3] = { 1, 2, 3 };

static void acc_build(void)
{
	msgpack_packer *pk = &acc_buf.pk;
	static msgpack_object root;
	size_t off = 0;

	mp_init(&acc_buf);
	msgpack_pack_map(pk, 16);
	anes_pack_str(pk, "u");        msgpack_pack_uint8(pk, 5);
	anes_pack_str(pk, "u32max");   msgpack_pack_uint32(pk, UINT32_MAX);
	anes_pack_str(pk, "over32");   msgpack_pack_uint64(pk, (uint64_t)UINT32_MAX + 1);
	anes_pack_str(pk, "u64max");   msgpack_pack_uint64(pk, UINT64_MAX);
	anes_pack_str(pk, "neg");      msgpack_pack_int8(pk, -5);
	anes_pack_str(pk, "i64min");   msgpack_pack_int64(pk, INT64_MIN);
	anes_pack_str(pk, "i64max");   msgpack_pack_int64(pk, INT64_MAX);
	anes_pack_str(pk, "b");        msgpack_pack_true(pk);
	anes_pack_str(pk, "s");        anes_pack_str(pk, "hello");
	anes_pack_str(pk, "bin");      msgpack_pack_bin_with_body(pk, acc_bin, sizeof acc_bin);
	anes_pack_str(pk, "arr");
	msgpack_pack_array(pk, 5);
	msgpack_pack_uint8(pk, 1);
	msgpack_pack_uint32(pk, UINT32_MAX);
	msgpack_pack_int8(pk, -1);
	msgpack_pack_uint64(pk, (uint64_t)UINT32_MAX + 1);
	anes_pack_str(pk, "7");
	anes_pack_str(pk, "map");
	msgpack_pack_map(pk, 2);
	anes_pack_str(pk, "a"); msgpack_pack_uint8(pk, 1);
	anes_pack_str(pk, "b"); msgpack_pack_uint8(pk, 2);
	anes_pack_str(pk, "nil");      msgpack_pack_nil(pk);
	anes_pack_str(pk, "f");        msgpack_pack_double(pk, 1.0);
	anes_pack_str(pk, "zero");     msgpack_pack_uint8(pk, 0);
	anes_pack_str(pk, "empty");    anes_pack_str(pk, "");

	cr_assert(msgpack_zone_init(&acc_zone, 1024));
	cr_assert_eq(anes_mp_check(acc_buf.sb.data, acc_buf.sb.size), 0);
	cr_assert_eq(msgpack_unpack(acc_buf.sb.data, acc_buf.sb.size, &off, &acc_zone, &root),
	             MSGPACK_UNPACK_SUCCESS);
	acc_map = &root;
}

static void acc_teardown(void)
{
	msgpack_zone_destroy(&acc_zone);
	mp_free(&acc_buf);
}

TestSuite(access, .init = acc_build, .fini = acc_teardown);

Test(access, get)
{
	cr_assert_not_null(anes_mp_get(acc_map, "u"));
	cr_assert_null(anes_mp_get(acc_map, "absent"));
	cr_assert_null(anes_mp_get(acc_map, "U"));
	cr_assert_null(anes_mp_get(acc_map, "u3"));   /* prefix of u32max */
	cr_assert_null(anes_mp_get(NULL, "u"));
	cr_assert_null(anes_mp_get(anes_mp_get(acc_map, "arr"), "u"));  /* not a map */
	cr_assert(anes_mp_str_eq(anes_mp_get(acc_map, "s"), "hello"));
	cr_assert_not(anes_mp_str_eq(anes_mp_get(acc_map, "s"), "hell"));
	cr_assert_not(anes_mp_str_eq(anes_mp_get(acc_map, "s"), "hello!"));
	cr_assert_not(anes_mp_str_eq(anes_mp_get(acc_map, "bin"), "\x01\x02\x03"));
	cr_assert(anes_mp_str_eq(anes_mp_get(acc_map, "empty"), ""));
}

Test(access, u64)
{
	uint64_t v = SENT64;
	cr_assert_eq(anes_mp_u64(acc_map, "u", 5, &v), 0);
	cr_assert_eq(v, 5);
	cr_assert_eq(anes_mp_u64(acc_map, "u64max", UINT64_MAX, &v), 0);
	cr_assert_eq(v, UINT64_MAX);
	cr_assert_eq(anes_mp_u64(acc_map, "zero", 0, &v), 0);
	cr_assert_eq(v, 0);

	static const struct { const char *key; uint64_t max; int want; } bad[] = {
		{ "absent", UINT64_MAX, -ENOENT }, { "u", 4, -EINVAL }, { "u64max", UINT64_MAX - 1, -EINVAL },
		{ "neg", UINT64_MAX, -EINVAL }, { "i64min", UINT64_MAX, -EINVAL }, { "s", UINT64_MAX, -EINVAL },
		{ "b", UINT64_MAX, -EINVAL }, { "f", UINT64_MAX, -EINVAL }, { "nil", UINT64_MAX, -EINVAL },
		{ "arr", UINT64_MAX, -EINVAL }, { "map", UINT64_MAX, -EINVAL }, { "bin", UINT64_MAX, -EINVAL },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		v = SENT64;
		cr_assert_eq(anes_mp_u64(acc_map, bad[i].key, bad[i].max, &v), bad[i].want, "%s", bad[i].key);
		cr_assert_eq(v, SENT64, "%s", bad[i].key);
	}
}

Test(access, u32)
{
	uint32_t v = SENT32;
	cr_assert_eq(anes_mp_u32(acc_map, "u32max", &v), 0);
	cr_assert_eq(v, UINT32_MAX);
	static const struct { const char *key; int want; } bad[] = {
		{ "absent", -ENOENT }, { "over32", -EINVAL }, { "u64max", -EINVAL }, { "neg", -EINVAL },
		{ "s", -EINVAL }, { "b", -EINVAL }, { "f", -EINVAL }, { "nil", -EINVAL },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		v = SENT32;
		cr_assert_eq(anes_mp_u32(acc_map, bad[i].key, &v), bad[i].want, "%s", bad[i].key);
		cr_assert_eq(v, SENT32, "%s", bad[i].key);
	}
}

Test(access, i64)
{
	int64_t v = (int64_t)SENT64;
	cr_assert_eq(anes_mp_i64(acc_map, "neg", &v), 0);
	cr_assert_eq(v, -5);
	cr_assert_eq(anes_mp_i64(acc_map, "i64min", &v), 0);
	cr_assert_eq(v, INT64_MIN);
	cr_assert_eq(anes_mp_i64(acc_map, "i64max", &v), 0);
	cr_assert_eq(v, INT64_MAX);
	cr_assert_eq(anes_mp_i64(acc_map, "u", &v), 0);
	cr_assert_eq(v, 5);
	static const struct { const char *key; int want; } bad[] = {
		{ "absent", -ENOENT }, { "u64max", -EINVAL }, { "s", -EINVAL }, { "b", -EINVAL },
		{ "f", -EINVAL }, { "nil", -EINVAL }, { "arr", -EINVAL },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		v = (int64_t)SENT64;
		cr_assert_eq(anes_mp_i64(acc_map, bad[i].key, &v), bad[i].want, "%s", bad[i].key);
		cr_assert_eq(v, (int64_t)SENT64, "%s", bad[i].key);
	}
}

Test(access, boolean)
{
	bool v = false;
	cr_assert_eq(anes_mp_bool(acc_map, "b", &v), 0);
	cr_assert(v);
	static const struct { const char *key; int want; } bad[] = {
		{ "absent", -ENOENT }, { "u", -EINVAL }, { "zero", -EINVAL }, { "s", -EINVAL }, { "nil", -EINVAL },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		v = false;
		cr_assert_eq(anes_mp_bool(acc_map, bad[i].key, &v), bad[i].want, "%s", bad[i].key);
		cr_assert_not(v);
		v = true;
		cr_assert_eq(anes_mp_bool(acc_map, bad[i].key, &v), bad[i].want, "%s", bad[i].key);
		cr_assert(v);
	}
}

Test(access, str_and_bin)
{
	const char *s = (const char *)0x1;
	const void *p = (const void *)0x1;
	uint32_t n = SENT32;

	cr_assert_eq(anes_mp_str(acc_map, "s", 5, &s, &n), 0);
	cr_assert_eq(n, 5);
	cr_assert_eq(memcmp(s, "hello", 5), 0);
	cr_assert_eq(anes_mp_str(acc_map, "empty", 0, &s, &n), 0);
	cr_assert_eq(n, 0);
	cr_assert_eq(anes_mp_bin(acc_map, "bin", 3, &p, &n), 0);
	cr_assert_eq(n, 3);
	cr_assert_eq(memcmp(p, acc_bin, 3), 0);

	static const struct { const char *key; uint32_t max; int want; } bad_s[] = {
		{ "absent", 100, -ENOENT }, { "s", 4, -EINVAL }, { "bin", 100, -EINVAL },
		{ "u", 100, -EINVAL }, { "nil", 100, -EINVAL }, { "arr", 100, -EINVAL },
	};
	for (size_t i = 0; i < sizeof bad_s / sizeof bad_s[0]; i++) {
		s = (const char *)0x1;
		n = SENT32;
		cr_assert_eq(anes_mp_str(acc_map, bad_s[i].key, bad_s[i].max, &s, &n), bad_s[i].want, "%s", bad_s[i].key);
		cr_assert_eq(s, (const char *)0x1);
		cr_assert_eq(n, SENT32);
	}
	static const struct { const char *key; uint32_t max; int want; } bad_b[] = {
		{ "absent", 100, -ENOENT }, { "bin", 2, -EINVAL }, { "s", 100, -EINVAL },
		{ "u", 100, -EINVAL }, { "nil", 100, -EINVAL },
	};
	for (size_t i = 0; i < sizeof bad_b / sizeof bad_b[0]; i++) {
		p = (const void *)0x1;
		n = SENT32;
		cr_assert_eq(anes_mp_bin(acc_map, bad_b[i].key, bad_b[i].max, &p, &n), bad_b[i].want, "%s", bad_b[i].key);
		cr_assert_eq(p, (const void *)0x1);
		cr_assert_eq(n, SENT32);
	}
}

Test(access, array_map_items)
{
	const msgpack_object *items = (const msgpack_object *)0x1, *sub = (const msgpack_object *)0x1;
	uint32_t n = SENT32, v = SENT32;

	cr_assert_eq(anes_mp_array(acc_map, "arr", 5, &items, &n), 0);
	cr_assert_eq(n, 5);
	cr_assert_eq(anes_mp_item_u32(&items[0], &v), 0);
	cr_assert_eq(v, 1);
	cr_assert_eq(anes_mp_item_u32(&items[1], &v), 0);
	cr_assert_eq(v, UINT32_MAX);
	for (uint32_t i = 2; i < 5; i++) {  /* -1, 2^32, "7" */
		v = SENT32;
		cr_assert_eq(anes_mp_item_u32(&items[i], &v), -EINVAL, "item %u", i);
		cr_assert_eq(v, SENT32);
	}

	const msgpack_object *keep = items;
	n = SENT32;
	cr_assert_eq(anes_mp_array(acc_map, "arr", 4, &items, &n), -EINVAL);
	cr_assert_eq(anes_mp_array(acc_map, "map", 100, &items, &n), -EINVAL);
	cr_assert_eq(anes_mp_array(acc_map, "s", 100, &items, &n), -EINVAL);
	cr_assert_eq(anes_mp_array(acc_map, "absent", 100, &items, &n), -ENOENT);
	cr_assert_eq(items, keep);
	cr_assert_eq(n, SENT32);

	cr_assert_eq(anes_mp_map(acc_map, "map", 2, &sub), 0);
	cr_assert_eq(sub->type, MSGPACK_OBJECT_MAP);
	cr_assert_eq(anes_mp_u32(sub, "b", &v), 0);
	cr_assert_eq(v, 2);
	keep = sub;
	cr_assert_eq(anes_mp_map(acc_map, "map", 1, &sub), -EINVAL);
	cr_assert_eq(anes_mp_map(acc_map, "arr", 100, &sub), -EINVAL);
	cr_assert_eq(anes_mp_map(acc_map, "nil", 100, &sub), -EINVAL);
	cr_assert_eq(anes_mp_map(acc_map, "absent", 100, &sub), -ENOENT);
	cr_assert_eq(sub, keep);
}
