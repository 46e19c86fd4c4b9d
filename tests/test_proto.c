/* SPDX-License-Identifier: MIT */
/* Tests for libanes_proto: framing, validation, decoding, accessors, I/O with
 * fd passing, memfds and wire error names.  docs/protocol.md is the contract. */
#include "anes_proto.h"
#include "run_wire_check.h"
#include "scm_fds.h"

#include <criterion/criterion.h>

#include <dirent.h>
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
#include <time.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------- */

/* A growable byte buffer for hand-made payloads. */
typedef struct bytes {
	uint8_t *p;
	size_t n, cap;
} bytes;

static void b_put(bytes *b, const void *d, size_t n)
{
	if (b->cap - b->n < n) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap - b->n < n)
			cap *= 2;
		b->p = realloc(b->p, cap);
		cr_assert_not_null(b->p);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->n, d, n);
	b->n += n;
}

static void b_u8(bytes *b, uint8_t v)
{
	b_put(b, &v, 1);
}

static void b_be(bytes *b, uint64_t v, unsigned n)
{
	for (unsigned i = n; i-- > 0;)
		b_u8(b, (uint8_t)(v >> (8 * i)));
}

static void b_hex(bytes *b, const char *s)
{
	while (*s) {
		if (*s == ' ') {
			s++;
			continue;
		}
		unsigned v;
		cr_assert_eq(sscanf(s, "%2x", &v), 1, "bad hex in test: %s", s);
		b_u8(b, (uint8_t)v);
		s += 2;
	}
}

static void b_free(bytes *b)
{
	free(b->p);
	*b = (bytes){0};
}

/* Run the validator on an exact-size heap copy, so ASan sees any overread. */
static int check_exact(const uint8_t *p, size_t n)
{
	uint8_t *c = malloc(n ? n : 1);
	cr_assert_not_null(c);
	if (n)
		memcpy(c, p, n);
	int r = anes_mp_check(c, n);
	free(c);
	return r;
}

static int check_hex(const char *hex)
{
	bytes b = {0};
	b_hex(&b, hex);
	int r = check_exact(b.p, b.n);
	b_free(&b);
	return r;
}

/* msgpack into a growable buffer, for envelopes anes_pack_* cannot make. */
typedef struct mp {
	msgpack_sbuffer sb;
	msgpack_packer pk;
} mp;

static void mp_init(mp *m)
{
	msgpack_sbuffer_init(&m->sb);
	msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

static void mp_free(mp *m)
{
	msgpack_sbuffer_destroy(&m->sb);
}

/* The fds open in this process (macOS: /dev/fd lists them all). */
static int count_fds(void)
{
#ifdef __linux__
	DIR *d = opendir("/proc/self/fd");
#else
	DIR *d = opendir("/dev/fd");
#endif
	struct dirent *e;
	int n = 0;

	cr_assert_not_null(d);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static bool fd_is_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

/* Shared memory of size bytes to pass as an fd: a memfd on Linux, an unlinked
 * temporary file elsewhere. */
static int shared_fd(size_t size)
{
	int fd = -1;
#ifdef __linux__
	cr_assert_eq(anes_memfd_create("anes-test", size, &fd), 0);
#else
	char path[] = "/tmp/anes-test-XXXXXX";
	fd = mkstemp(path);
	cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
	unlink(path);
	cr_assert_eq(fcntl(fd, F_SETFD, FD_CLOEXEC), 0);
	cr_assert_eq(ftruncate(fd, (off_t)size), 0);
#endif
	return fd;
}

/* ---- wire error names ---------------------------------------------------- */

Test(wire_errors, names_unique_and_round_trip)
{
	/* The table in docs/protocol.md; numbers and names are stable. */
	static const char *const doc[ANES_WERR_MAX + 1] = {
		NULL, "protocol", "version", "handshake", "unknown_method", "invalid_params",
		"no_such_surface", "no_such_program", "no_such_function", "limit", "compile",
		"unsupported", "size_mismatch", "bad_fd", "run_failed", "no_memory", "internal",
		"shutting_down", "worker_restarted",
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
	cr_assert_eq(ANES_WERR_WORKER_RESTARTED, ANES_WERR_MAX);
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

#define SENT64 0x5a5a5a5a5a5a5a5aull
#define SENT32 0x5a5a5a5au

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

/* ---- anes_io ---------------------------------------------------------------- */

static int sp[2] = { -1, -1 };

static void pair(void)
{
	cr_assert_eq(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sp), 0);
}

static void pair_teardown(void)
{
	anes_os_sendmsg = sendmsg;
	anes_os_recvmsg = recvmsg;
	for (int i = 0; i < 2; i++)
		if (sp[i] >= 0)
			close(sp[i]);
}

TestSuite(io, .init = pair, .fini = pair_teardown);

static void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	cr_assert_geq(fl, 0);
	cr_assert_eq(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

/* A request frame [0, msgid, method, {"x": msgid * 3}] with nfds in its header. */
static void make_req(uint32_t msgid, const char *method, unsigned nfds, void **data, size_t *len)
{
	anes_frame f;
	anes_frame_init(&f);
	anes_pack_request(&f.pk, msgid, method, 1);
	anes_pack_str(&f.pk, "x");
	msgpack_pack_uint64(&f.pk, (uint64_t)msgid * 3);
	cr_assert_eq(anes_frame_finish(&f, nfds, ANES_FRAME_MAX_DEFAULT, data, len), 0);
}

static void check_req(const uint8_t *p, uint32_t len, uint32_t msgid, const char *method)
{
	msgpack_zone z;
	anes_msg m;
	uint64_t x = 0;

	cr_assert(msgpack_zone_init(&z, 256));
	cr_assert_eq(anes_msg_decode(p, len, &z, &m), 0);
	cr_assert_eq(m.type, ANES_MSG_REQUEST);
	cr_assert_eq(m.msgid, msgid);
	cr_assert(anes_msg_method_is(&m, method));
	cr_assert_eq(anes_mp_u64(m.params, "x", UINT64_MAX, &x), 0);
	cr_assert_eq(x, (uint64_t)msgid * 3);
	msgpack_zone_destroy(&z);
}

/* Next frame, reading as needed (blocking socket).  Returns next_frame's or
 * read's error, or -ECONNRESET at EOF. */
static int recv_frame(anes_io *io, const uint8_t **p, uint32_t *len, int fds[ANES_MAX_FDS_PER_FRAME],
                      unsigned *nfds)
{
	for (;;) {
		int r = anes_io_next_frame(io, p, len, fds, nfds);
		if (r != 0)
			return r;
		ssize_t n = anes_io_read(io);
		if (n <= 0)
			return n == 0 ? -ECONNRESET : (int)n;
	}
}

/* sendmsg bytes with fds (any number), bypassing anes_io. */
static void raw_send(int fd, const void *data, size_t len, const int *fds, unsigned nfds)
{
	SCM_FDS_BUF(64) ctl;
	struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	cr_assert_leq(nfds, 64);
	scm_fds_attach(&msg, ctl.buf, sizeof ctl, fds, nfds);
	cr_assert_eq(sendmsg(fd, &msg, MSG_NOSIGNAL), (ssize_t)len);
}

Test(io, several_frames_in_order)
{
	anes_io tx, rx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);

	size_t total = 0;
	for (uint32_t i = 1; i <= 5; i++) {
		void *data;
		size_t len;
		make_req(i * 1000, i % 2 ? "odd" : "even", 0, &data, &len);
		total += len;
		cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), 0);
	}
	cr_assert_eq(tx.out_bytes, total);
	cr_assert(anes_io_want_write(&tx));
	cr_assert_eq(anes_io_flush(&tx), 0);
	cr_assert_not(anes_io_want_write(&tx));
	cr_assert_eq(tx.out_bytes, 0);
	cr_assert_eq(anes_io_flush(&tx), 0);  /* empty queue */

	for (uint32_t i = 1; i <= 5; i++) {
		const uint8_t *p;
		uint32_t len;
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nfds = 99;
		cr_assert_eq(recv_frame(&rx, &p, &len, fds, &nfds), 1);
		cr_assert_eq(nfds, 0);
		check_req(p, len, i * 1000, i % 2 ? "odd" : "even");
	}
	const uint8_t *p;
	uint32_t len;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	cr_assert_eq(anes_io_next_frame(&rx, &p, &len, fds, &nfds), 0);

	/* EOF and a non-blocking empty socket */
	set_nonblock(sp[1]);
	cr_assert_eq(anes_io_read(&rx), -EAGAIN);
	close(sp[0]);
	sp[0] = -1;
	cr_assert_eq(anes_io_read(&rx), 0);
	anes_io_cleanup(&tx);
	anes_io_cleanup(&rx);
}

Test(io, byte_at_a_time)
{
	anes_io rx;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	int base = count_fds();

	for (uint32_t i = 1; i <= 3; i++) {
		void *data;
		size_t len;
		int pfd[2];
		unsigned nfds = i == 2 ? 1 : 0;
		make_req(i, "bytes", nfds, &data, &len);
		if (nfds)
			cr_assert_eq(anes_pipe_cloexec(pfd), 0);
		for (size_t k = 0; k < len; k++) {
			/* the fd travels with the first byte */
			if (k == 0 && nfds) {
				raw_send(sp[0], data, 1, &pfd[1], 1);
				close(pfd[1]);
			} else {
				cr_assert_eq(write(sp[0], (uint8_t *)data + k, 1), 1);
			}
			cr_assert_eq(anes_io_read(&rx), 1);

			const uint8_t *p;
			uint32_t plen;
			int fds[ANES_MAX_FDS_PER_FRAME] = { -1 };
			unsigned got = 99;
			int r = anes_io_next_frame(&rx, &p, &plen, fds, &got);
			if (k + 1 < len) {
				cr_assert_eq(r, 0, "frame %u byte %zu", i, k);
				continue;
			}
			cr_assert_eq(r, 1);
			cr_assert_eq(got, nfds);
			check_req(p, plen, i, "bytes");
			if (nfds) {
				/* it is the write end of our pipe */
				cr_assert_eq(write(fds[0], "z", 1), 1);
				char c = 0;
				cr_assert_eq(read(pfd[0], &c, 1), 1);
				cr_assert_eq(c, 'z');
				close(fds[0]);
				close(pfd[0]);
			}
		}
		free(data);
	}
	cr_assert_eq(rx.rlen - rx.rpos, 0);
	cr_assert_eq(rx.nfdq, 0);
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);
}

Test(io, large_frame)
{
	const size_t blen = 8u << 20;
	uint8_t *blob = malloc(blen);
	cr_assert_not_null(blob);
	for (size_t i = 0; i < blen; i++)
		blob[i] = (uint8_t)(i * 131 + (i >> 13));

	anes_frame f;
	anes_frame_init(&f);
	anes_pack_request(&f.pk, 42, "big", 1);
	anes_pack_str(&f.pk, "blob");
	msgpack_pack_bin_with_body(&f.pk, blob, blen);
	uint32_t max = (uint32_t)(f.len - ANES_FRAME_HEADER_SIZE);  /* exactly max_frame */
	void *data;
	size_t len;
	cr_assert_eq(anes_frame_finish(&f, 0, max, &data, &len), 0);

	set_nonblock(sp[0]);
	set_nonblock(sp[1]);
	anes_io tx, rx;
	anes_io_init(&tx, sp[0], max);
	anes_io_init(&rx, sp[1], max);
	cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), 0);

	const uint8_t *p = NULL;
	uint32_t plen = 0;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	bool got = false;
	size_t peak = 0;
	for (int iter = 0; !got; iter++) {
		cr_assert_lt(iter, 1000000);
		int fr = anes_io_flush(&tx);
		cr_assert(fr == 0 || fr == -EAGAIN, "flush: %d", fr);
		for (;;) {
			int r = anes_io_next_frame(&rx, &p, &plen, fds, &nfds);
			cr_assert_geq(r, 0);
			if (r == 1) {
				got = true;
				break;
			}
			ssize_t n = anes_io_read(&rx);
			if (n == -EAGAIN)
				break;
			cr_assert_gt(n, 0);
			cr_assert_leq(rx.rcap, (size_t)ANES_FRAME_HEADER_SIZE + max);
			if (rx.rcap > peak)
				peak = rx.rcap;
		}
	}
	cr_assert_eq(anes_io_flush(&tx), 0);
	cr_assert_eq(plen, max);
	cr_assert_eq(nfds, 0);
	cr_assert_leq(peak, (size_t)ANES_FRAME_HEADER_SIZE + max);

	msgpack_zone z;
	anes_msg m;
	const void *bin;
	uint32_t bn;
	cr_assert(msgpack_zone_init(&z, 256));
	cr_assert_eq(anes_msg_decode(p, plen, &z, &m), 0);
	cr_assert_eq(m.msgid, 42);
	cr_assert_eq(anes_mp_bin(m.params, "blob", UINT32_MAX, &bin, &bn), 0);
	cr_assert_eq(bn, blen);
	cr_assert(memcmp(bin, blob, blen) == 0, "8 MiB payload corrupted");
	msgpack_zone_destroy(&z);
	free(blob);
	anes_io_cleanup(&tx);
	anes_io_cleanup(&rx);
}

Test(io, oversized_header)
{
	anes_io rx;
	uint8_t junk[1000];
	uint8_t h[ANES_FRAME_HEADER_SIZE];
	const uint8_t *p;
	uint32_t len;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;

	/* a frame declared just under the limit and never sent costs little */
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	anes_frame_header_write(h, ANES_FRAME_MAX_DEFAULT, 0);
	cr_assert_eq(write(sp[0], h, sizeof h), (ssize_t)sizeof h);
	memset(junk, 0xc0, sizeof junk);
	cr_assert_eq(write(sp[0], junk, sizeof junk), (ssize_t)sizeof junk);
	set_nonblock(sp[1]);
	while (anes_io_read(&rx) > 0)
		cr_assert_eq(anes_io_next_frame(&rx, &p, &len, fds, &nfds), 0);
	cr_assert_eq(rx.rlen, sizeof h + sizeof junk);
	cr_assert_leq(rx.rcap, 64u << 10);
	anes_io_cleanup(&rx);

	/* 0xFFFFFFFF: refused from the header alone */
	close(sp[0]);
	close(sp[1]);
	pair();
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	anes_frame_header_write(h, UINT32_MAX, 0);
	cr_assert_eq(write(sp[0], h, sizeof h), (ssize_t)sizeof h);
	cr_assert_eq(anes_io_read(&rx), (ssize_t)sizeof h);
	cr_assert_eq(anes_io_next_frame(&rx, &p, &len, fds, &nfds), -EMSGSIZE);
	cr_assert_leq(rx.rcap, 64u << 10);
	anes_io_cleanup(&rx);

	/* max_frame + 1 */
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	anes_frame_header_write(h, ANES_FRAME_MAX_DEFAULT + 1, 0);
	cr_assert_eq(write(sp[0], h, sizeof h), (ssize_t)sizeof h);
	cr_assert_eq(write(sp[0], junk, 10), 10);
	cr_assert_gt(anes_io_read(&rx), 0);
	cr_assert_eq(anes_io_next_frame(&rx, &p, &len, fds, &nfds), -EMSGSIZE);
	cr_assert_leq(rx.rcap, 64u << 10);
	anes_io_cleanup(&rx);
}

Test(io, bad_headers_in_stream)
{
	static const uint8_t hdrs[][ANES_FRAME_HEADER_SIZE] = {
		{ 0, 0, 0, 1, 0, 1, 0, 0 },   /* reserved */
		{ 0, 0, 0, 1, 0, 0, 0, 1 },
		{ 0, 0, 0, 1, 5, 0, 0, 0 },   /* 5 fds */
		{ 0, 0, 0, 1, 1, 0, 0, 0 },   /* claims 1 fd, none sent */
	};
	for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
		anes_io rx;
		const uint8_t *p;
		uint32_t len = 777;
		int fds[ANES_MAX_FDS_PER_FRAME] = { -5, -5, -5, -5 };
		unsigned nfds = 777;
		anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
		cr_assert_eq(write(sp[0], hdrs[i], 8), 8);
		cr_assert_eq(write(sp[0], "\xc0", 1), 1);
		cr_assert_eq(recv_frame(&rx, &p, &len, fds, &nfds), -EPROTO, "header %zu", i);
		cr_assert_eq(len, 777);
		cr_assert_eq(nfds, 777);
		cr_assert_eq(fds[0], -5);
		anes_io_cleanup(&rx);
		close(sp[0]);
		close(sp[1]);
		pair();
	}
}

Test(io, fd_passing_memfd)
{
#ifndef __linux__
	cr_skip_test("memfds are Linux's (surfaces are IOSurfaces here: test_iosurface)");
#endif
	const size_t sz = 3 * 4096 + 5;
	int mfd = -1;
	cr_assert_eq(anes_memfd_create("anes-test", sz, &mfd), 0);
	uint8_t *a = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	cr_assert_neq(a, MAP_FAILED);

	anes_io tx, rx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	void *data;
	size_t len;
	make_req(1, "surface.import", 1, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, &mfd, 1), 0);
	make_req(2, "after", 0, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), 0);
	cr_assert_eq(anes_io_flush(&tx), 0);
	cr_assert_not(fd_is_open(mfd), "the sent fd is closed by flush");

	const uint8_t *p;
	uint32_t plen;
	int fds[ANES_MAX_FDS_PER_FRAME] = { -1, -1, -1, -1 };
	unsigned nfds = 0;
	cr_assert_eq(recv_frame(&rx, &p, &plen, fds, &nfds), 1);
	check_req(p, plen, 1, "surface.import");
	cr_assert_eq(nfds, 1);
	cr_assert_geq(fds[0], 0);
	int fl = fcntl(fds[0], F_GETFD);
	cr_assert_geq(fl, 0);
	cr_assert(fl & FD_CLOEXEC, "received fd lacks FD_CLOEXEC");
	uint64_t got_sz = 0;
	cr_assert_eq(anes_memfd_check(fds[0], &got_sz), 0);
	cr_assert_eq(got_sz, sz);

	uint8_t *b = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	cr_assert_neq(b, MAP_FAILED);
	a[0] = 0x11;
	a[sz - 1] = 0x22;
	memcpy(a + 4096, "shared", 6);
	cr_assert_eq(b[0], 0x11);
	cr_assert_eq(b[sz - 1], 0x22);
	cr_assert_eq(memcmp(b + 4096, "shared", 6), 0);
	b[100] = 0x77;
	cr_assert_eq(a[100], 0x77);
	munmap(a, sz);
	munmap(b, sz);
	close(fds[0]);

	nfds = 99;
	cr_assert_eq(recv_frame(&rx, &p, &plen, fds, &nfds), 1);
	check_req(p, plen, 2, "after");
	cr_assert_eq(nfds, 0);
	cr_assert_eq(rx.nfdq, 0);
	anes_io_cleanup(&tx);
	anes_io_cleanup(&rx);
}

Test(io, max_fds_per_frame)
{
	int base = count_fds();
	int pfd[ANES_MAX_FDS_PER_FRAME][2];
	int send[ANES_MAX_FDS_PER_FRAME];
	for (int i = 0; i < ANES_MAX_FDS_PER_FRAME; i++) {
		cr_assert_eq(anes_pipe_cloexec(pfd[i]), 0);
		send[i] = pfd[i][1];
	}
	anes_io tx, rx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	void *data;
	size_t len;
	make_req(4, "four", ANES_MAX_FDS_PER_FRAME, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, send, ANES_MAX_FDS_PER_FRAME), 0);
	cr_assert_eq(anes_io_flush(&tx), 0);

	const uint8_t *p;
	uint32_t plen;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds = 0;
	cr_assert_eq(recv_frame(&rx, &p, &plen, fds, &nfds), 1);
	cr_assert_eq(nfds, ANES_MAX_FDS_PER_FRAME);
	for (int i = 0; i < ANES_MAX_FDS_PER_FRAME; i++) {  /* in order */
		char c = (char)('a' + i), d = 0;
		cr_assert_eq(write(fds[i], &c, 1), 1);
		cr_assert_eq(read(pfd[i][0], &d, 1), 1);
		cr_assert_eq(d, c);
		close(fds[i]);
		close(pfd[i][0]);
	}
	anes_io_cleanup(&tx);
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);
}

Test(io, unclaimed_fd)
{
	int base = count_fds();
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	void *data;
	size_t len;
	make_req(1, "nofd", 0, &data, &len);
	raw_send(sp[0], data, len, &pfd[0], 1);
	free(data);
	close(pfd[0]);
	close(pfd[1]);
	cr_assert_eq(count_fds(), base);

	anes_io rx;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	cr_assert_eq(anes_io_read(&rx), (ssize_t)len);
	cr_assert_eq(count_fds(), base + 1);
	const uint8_t *p;
	uint32_t plen;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds = 99;
	cr_assert_eq(anes_io_next_frame(&rx, &p, &plen, fds, &nfds), 1);
	cr_assert_eq(nfds, 0);
	check_req(p, plen, 1, "nofd");
	cr_assert_eq(anes_io_next_frame(&rx, &p, &plen, fds, &nfds), -EPROTO);
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);
}

Test(io, too_many_fds_in_one_message)
{
	int base = count_fds();
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	int many[ANES_IO_MAX_QUEUED_FDS + 4];
	for (size_t i = 0; i < sizeof many / sizeof many[0]; i++)
		many[i] = pfd[i & 1];
	raw_send(sp[0], "x", 1, many, sizeof many / sizeof many[0]);
	close(pfd[0]);
	close(pfd[1]);

	anes_io rx;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	cr_assert_eq(anes_io_read(&rx), -EPROTO);
	cr_assert_eq(count_fds(), base, "received fds leaked");
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);

	/* exactly ANES_IO_MAX_QUEUED_FDS in one message are accepted */
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	for (size_t i = 0; i < ANES_IO_MAX_QUEUED_FDS; i++)
		many[i] = pfd[i & 1];
	raw_send(sp[0], "x", 1, many, ANES_IO_MAX_QUEUED_FDS);
	close(pfd[0]);
	close(pfd[1]);
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	cr_assert_eq(anes_io_read(&rx), 1);
	cr_assert_eq(rx.nfdq, ANES_IO_MAX_QUEUED_FDS);
	cr_assert_eq(count_fds(), base + ANES_IO_MAX_QUEUED_FDS);
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);
}

Test(io, too_many_fds_queued)
{
	int base = count_fds();
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	int ten[10];
	for (int i = 0; i < 10; i++)
		ten[i] = pfd[0];

	anes_io rx;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	raw_send(sp[0], "\0", 1, ten, 10);
	cr_assert_eq(anes_io_read(&rx), 1);
	cr_assert_eq(rx.nfdq, 10);
	raw_send(sp[0], "\0", 1, ten, 10);
	cr_assert_eq(anes_io_read(&rx), -EPROTO);
	cr_assert_eq(rx.nfdq, 10);
	close(pfd[0]);
	close(pfd[1]);
	cr_assert_eq(count_fds(), base + 10);
	anes_io_cleanup(&rx);
	cr_assert_eq(count_fds(), base);
}

Test(io, foreign_ancillary_data)
{
	int base = count_fds();
#ifdef SO_PASSCRED
	int one = 1;
	cr_assert_eq(setsockopt(sp[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one), 0);
#else
	cr_skip_test("no SO_PASSCRED, which makes the kernel add SCM_CREDENTIALS (Linux)");
#endif
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	raw_send(sp[0], "x", 1, pfd, 2);
	close(pfd[0]);
	close(pfd[1]);

	anes_io rx;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	cr_assert_eq(anes_io_read(&rx), -EPROTO);  /* SCM_CREDENTIALS */
	cr_assert_eq(count_fds(), base);
	anes_io_cleanup(&rx);
}

Test(io, queue_rejects)
{
	anes_io tx;
	int base = count_fds();
	int pfd[2];
	void *data;
	size_t len;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);

	/* nfds differs from the header: data freed, fds closed */
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	make_req(1, "m", 0, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, pfd, 2), -EINVAL);
	cr_assert_eq(count_fds(), base);

	/* more than 4 fds: all closed */
	int five[ANES_MAX_FDS_PER_FRAME + 1];
	for (int i = 0; i < ANES_MAX_FDS_PER_FRAME + 1; i++)
		five[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
	make_req(1, "m", ANES_MAX_FDS_PER_FRAME, &data, &len);
	((uint8_t *)data)[4] = ANES_MAX_FDS_PER_FRAME + 1;
	cr_assert_eq(anes_io_queue(&tx, data, len, five, ANES_MAX_FDS_PER_FRAME + 1), -EINVAL);
	cr_assert_eq(count_fds(), base, "fds leaked when nfds > ANES_MAX_FDS_PER_FRAME");

	/* too short to hold a header */
	data = malloc(4);
	memset(data, 0, 4);
	cr_assert_eq(anes_io_queue(&tx, data, 4, NULL, 0), -EINVAL);

	/* a header whose length does not match the buffer would desync the stream */
	make_req(1, "m", 0, &data, &len);
	((uint8_t *)data)[3]++;
	cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), -EINVAL);

	/* a frame larger than this connection's max_frame */
	anes_io small;
	anes_io_init(&small, sp[0], 8);
	make_req(1, "m", 0, &data, &len);
	cr_assert_eq(anes_io_queue(&small, data, len, NULL, 0), -EMSGSIZE);
	anes_io_cleanup(&small);

	cr_assert_not(anes_io_want_write(&tx));
	cr_assert_eq(tx.out_bytes, 0);
	anes_io_cleanup(&tx);
	cr_assert_eq(count_fds(), base);
}

Test(io, cleanup_closes_unsent)
{
	int base = count_fds();
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	anes_io tx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	void *data;
	size_t len;
	make_req(1, "m", 2, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, pfd, 2), 0);
	make_req(2, "m", 0, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), 0);
	cr_assert_eq(count_fds(), base + 2);
	anes_io_cleanup(&tx);
	cr_assert_eq(count_fds(), base);
	cr_assert_eq(tx.fd, -1);
	cr_assert_null(tx.out_head);
	anes_io_cleanup(&tx);  /* twice is harmless */
}

Test(io, flush_to_closed_peer)
{
	anes_io tx;
	void *data;
	size_t len;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	close(sp[1]);
	sp[1] = -1;
	make_req(1, "m", 0, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, NULL, 0), 0);
	cr_assert_eq(anes_io_flush(&tx), -EPIPE);  /* and no SIGPIPE */
	cr_assert(anes_io_want_write(&tx));
	anes_io_cleanup(&tx);
}

/* ---- failure injection ------------------------------------------------------ */

static int send_calls;

/* EAGAIN first, then EINTR, then one byte per call. */
static ssize_t fake_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	int call = send_calls++;
	if (call == 0) {
		errno = EAGAIN;
		return -1;
	}
	if (call == 1) {
		errno = EINTR;
		return -1;
	}
	struct msghdr m = *msg;
	struct iovec iov = msg->msg_iov[0];
	if (iov.iov_len > 1)
		iov.iov_len = 1;
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	return sendmsg(fd, &m, flags);
}

Test(io, inject_sendmsg_eagain_and_short_writes)
{
	const size_t sz = 4096;
	int mfd[2];
	uint8_t *maps[2];
	for (int i = 0; i < 2; i++) {
		mfd[i] = shared_fd(sz);
		maps[i] = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, mfd[i], 0);
		cr_assert_neq(maps[i], MAP_FAILED);
		memset(maps[i], 'A' + i, sz);
	}
	int base = count_fds();

	anes_io tx, rx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	size_t total = 0;
	for (uint32_t i = 1; i <= 3; i++) {
		void *data;
		size_t len;
		unsigned nfds = i == 1 ? 1 : i == 3 ? 1 : 0;
		make_req(i, "inj", nfds, &data, &len);
		total += len;
		cr_assert_eq(anes_io_queue(&tx, data, len, nfds ? &mfd[i == 1 ? 0 : 1] : NULL, nfds), 0);
	}

	send_calls = 0;
	anes_os_sendmsg = fake_sendmsg;
	cr_assert_eq(anes_io_flush(&tx), -EAGAIN);
	cr_assert_eq(tx.out_bytes, total);
	cr_assert_eq(count_fds(), base);  /* nothing sent, nothing closed */
	cr_assert_eq(anes_io_flush(&tx), 0);
	anes_os_sendmsg = sendmsg;
	cr_assert_eq(send_calls, 2 + (int)total);
	cr_assert_eq(tx.out_bytes, 0);
	cr_assert_eq(count_fds(), base - 2, "sent fds are closed");

	for (uint32_t i = 1; i <= 3; i++) {
		const uint8_t *p;
		uint32_t plen;
		int fds[ANES_MAX_FDS_PER_FRAME];
		unsigned nfds = 99;
		cr_assert_eq(recv_frame(&rx, &p, &plen, fds, &nfds), 1);
		check_req(p, plen, i, "inj");
		cr_assert_eq(nfds, i == 2 ? 0u : 1u);
		if (nfds) {
			uint8_t *m = mmap(NULL, sz, PROT_READ, MAP_SHARED, fds[0], 0);
			cr_assert_neq(m, MAP_FAILED);
			cr_assert_eq(m[0], i == 1 ? 'A' : 'B');
			cr_assert_eq(m[sz - 1], i == 1 ? 'A' : 'B');
			munmap(m, sz);
			close(fds[0]);
		}
	}
	cr_assert_eq(rx.nfdq, 0);
	cr_assert_eq(rx.rlen, rx.rpos);
	for (int i = 0; i < 2; i++)
		munmap(maps[i], sz);
	anes_io_cleanup(&tx);
	anes_io_cleanup(&rx);
}

static ssize_t fake_send_epipe(int fd, const struct msghdr *msg, int flags)
{
	(void)fd, (void)msg, (void)flags;
	errno = EPIPE;
	return -1;
}

Test(io, inject_sendmsg_error_keeps_fds)
{
	int base = count_fds();
	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	anes_io tx;
	anes_io_init(&tx, sp[0], ANES_FRAME_MAX_DEFAULT);
	void *data;
	size_t len;
	make_req(1, "m", 1, &data, &len);
	cr_assert_eq(anes_io_queue(&tx, data, len, &pfd[1], 1), 0);
	anes_os_sendmsg = fake_send_epipe;
	cr_assert_eq(anes_io_flush(&tx), -EPIPE);
	anes_os_sendmsg = sendmsg;
	cr_assert(fd_is_open(pfd[1]));
	anes_io_cleanup(&tx);
	cr_assert_not(fd_is_open(pfd[1]));
	close(pfd[0]);
	cr_assert_eq(count_fds(), base);
}

static int recv_calls;
static int recv_errno;

static ssize_t fake_recvmsg(int fd, struct msghdr *msg, int flags)
{
	if (recv_calls++ == 0) {
		errno = recv_errno;
		return -1;
	}
	return recvmsg(fd, msg, flags);
}

Test(io, inject_recvmsg_eintr)
{
	anes_io rx;
	void *data;
	size_t len;
	anes_io_init(&rx, sp[1], ANES_FRAME_MAX_DEFAULT);
	make_req(77, "intr", 0, &data, &len);
	cr_assert_eq(anes_write_all(sp[0], data, len), 0);
	free(data);

	recv_calls = 0;
	recv_errno = EINTR;
	anes_os_recvmsg = fake_recvmsg;
	cr_assert_eq(anes_io_read(&rx), (ssize_t)len);
	cr_assert_eq(recv_calls, 2);

	/* other errors are returned as -errno, nothing is consumed */
	recv_calls = 0;
	recv_errno = ECONNRESET;
	cr_assert_eq(anes_io_read(&rx), -ECONNRESET);
	recv_calls = 0;
	recv_errno = EAGAIN;
	cr_assert_eq(anes_io_read(&rx), -EAGAIN);
	anes_os_recvmsg = recvmsg;

	const uint8_t *p;
	uint32_t plen;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	cr_assert_eq(anes_io_next_frame(&rx, &p, &plen, fds, &nfds), 1);
	check_req(p, plen, 77, "intr");
	anes_io_cleanup(&rx);
}

/* ---- memfd ------------------------------------------------------------------ */

#ifdef __linux__
Test(memfd, create_sizes)
{
	static const uint64_t sizes[] = { 1, 4095, 4096, 65537, 16u << 20 };
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		int fd = -1;
		struct stat st;
		cr_assert_eq(anes_memfd_create("anes-size", sizes[i], &fd), 0);
		cr_assert_geq(fd, 0);
		cr_assert_eq(fstat(fd, &st), 0);
		cr_assert_eq((uint64_t)st.st_size, sizes[i]);
		int fl = fcntl(fd, F_GETFD);
		cr_assert(fl >= 0 && (fl & FD_CLOEXEC));
		int seals = fcntl(fd, F_GET_SEALS);
		cr_assert_eq(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
		             F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
		cr_assert_eq(seals & F_SEAL_WRITE, 0);
		cr_assert_eq(ftruncate(fd, (off_t)sizes[i] + 1), -1);
		cr_assert_eq(errno, EPERM);
		cr_assert_eq(ftruncate(fd, 0), -1);
		cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), -1);
		uint64_t got = 0;
		cr_assert_eq(anes_memfd_check(fd, &got), 0);
		cr_assert_eq(got, sizes[i]);
		/* zero-filled and writable */
		uint8_t *m = mmap(NULL, sizes[i], PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		cr_assert_neq(m, MAP_FAILED);
		cr_assert_eq(m[0], 0);
		cr_assert_eq(m[sizes[i] - 1], 0);
		m[sizes[i] - 1] = 1;
		munmap(m, sizes[i]);
		close(fd);
	}
	int fd = 12345;
	cr_assert_eq(anes_memfd_create("zero", 0, &fd), -EINVAL);
	cr_assert_eq(anes_memfd_create("huge", (uint64_t)INT64_MAX + 1, &fd), -EINVAL);
	cr_assert_eq(fd, 12345);
}

Test(memfd, check_rejects)
{
	uint64_t sz = SENT64;
	int fd;

	/* no sealing allowed at all */
	fd = memfd_create("unsealed", MFD_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 4096), 0);
	cr_assert_eq(anes_memfd_check(fd, &sz), -EPERM);
	cr_assert_eq(sz, SENT64);
	close(fd);

	/* sealable, but only against growing */
	fd = memfd_create("grow-only", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 4096), 0);
	cr_assert_eq(anes_memfd_check(fd, &sz), -EPERM);
	cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW), 0);
	cr_assert_eq(anes_memfd_check(fd, &sz), -EPERM);
	cr_assert_eq(sz, SENT64);
	/* shrink is what matters */
	cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	cr_assert_eq(anes_memfd_check(fd, &sz), 0);
	cr_assert_eq(sz, 4096);
	close(fd);
	sz = SENT64;

	int pfd[2];
	cr_assert_eq(anes_pipe_cloexec(pfd), 0);
	cr_assert_eq(anes_memfd_check(pfd[0], &sz), -EBADF);
	cr_assert_eq(anes_memfd_check(pfd[1], &sz), -EBADF);
	close(pfd[0]);
	close(pfd[1]);

	FILE *tf = tmpfile();
	cr_assert_not_null(tf);
	cr_assert_eq(ftruncate(fileno(tf), 4096), 0);
	cr_assert_eq(anes_memfd_check(fileno(tf), &sz), -EBADF);
	fclose(tf);

	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	cr_assert_eq(anes_memfd_check(fd, &sz), -EBADF);
	close(fd);
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	close(fd);
	cr_assert_eq(anes_memfd_check(fd, &sz), -EBADF);  /* closed */
	cr_assert_eq(anes_memfd_check(-1, &sz), -EBADF);
	int s[2];
	cr_assert_eq(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, s), 0);
	cr_assert_eq(anes_memfd_check(s[0], &sz), -EBADF);
	close(s[0]);
	close(s[1]);
	cr_assert_eq(sz, SENT64);
}

#else
Test(memfd, unsupported)
{
	int fd = 12345;
	uint64_t sz = SENT64;
	cr_assert_eq(anes_memfd_create("anes-test", 4096, &fd), -ENOTSUP);
	cr_assert_eq(anes_memfd_check(0, &sz), -ENOTSUP);
	cr_assert_eq(fd, 12345);
	cr_assert_eq(sz, SENT64);
}
#endif

/* ---- misc ------------------------------------------------------------------- */

Test(misc, write_all)
{
	int s[2];
	char buf[300000], got[sizeof buf];
	cr_assert_eq(anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, s), 0);
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (char)(i * 7);
	/* more than the socket buffer: read it from a child */
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(s[0]);
		_exit(anes_write_all(s[1], buf, sizeof buf) == 0 ? 0 : 1);
	}
	close(s[1]);
	size_t n = 0;
	while (n < sizeof got) {
		ssize_t r = read(s[0], got + n, sizeof got - n);
		cr_assert_gt(r, 0);
		n += (size_t)r;
	}
	cr_assert_eq(memcmp(buf, got, sizeof buf), 0);
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(s[0]);
	cr_assert_eq(anes_write_all(-1, "x", 1), -EBADF);
}

Test(io, full_buffer_with_complete_frame)
{
	/* max_frame at its lowest: the first read fills the 64 KiB buffer with
	 * frame A and the start of frame B */
	const uint32_t max = ANES_FRAME_MAX_LOWEST;
	anes_io rx;
	anes_io_init(&rx, sp[1], max);
	void *a;
	size_t alen;
	make_req(1, "a", 0, &a, &alen);
	bytes b = {0};
	b_hex(&b, "94 00 02 a1 62 81 a1 78 c6");
	b_be(&b, max - 13, 4);
	for (uint32_t i = 0; i < max - 13; i++)
		b_u8(&b, (uint8_t)i);
	cr_assert_eq(b.n, max);
	uint8_t h[ANES_FRAME_HEADER_SIZE];
	anes_frame_header_write(h, (uint32_t)b.n, 0);
	cr_assert_eq(anes_write_all(sp[0], a, alen), 0);
	cr_assert_eq(anes_write_all(sp[0], h, sizeof h), 0);
	cr_assert_eq(anes_write_all(sp[0], b.p, b.n), 0);
	free(a);

	cr_assert_eq(anes_io_read(&rx), 64 << 10);
	cr_assert_eq(rx.rcap, 64u << 10);
	cr_assert_eq(anes_io_read(&rx), -ENOBUFS);

	const uint8_t *p;
	uint32_t plen;
	int fds[ANES_MAX_FDS_PER_FRAME];
	unsigned nfds;
	cr_assert_eq(anes_io_next_frame(&rx, &p, &plen, fds, &nfds), 1);
	check_req(p, plen, 1, "a");
	cr_assert_eq(recv_frame(&rx, &p, &plen, fds, &nfds), 1);
	cr_assert_eq(plen, max);
	cr_assert_eq(memcmp(p, b.p, b.n), 0);
	cr_assert_leq(rx.rcap, (size_t)ANES_FRAME_HEADER_SIZE + max);
	b_free(&b);
	anes_io_cleanup(&rx);
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

Test(run_wire, library_forms_are_read)
{
	ids_init();
	const uint32_t steps[] = { 0, 1, 2, 15, 16, 28, ANES_MAX_STEPS };
	for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
		for (int fn = 0; fn < 2; fn++) {
			mp m;
			mp_init(&m);
			pack_lib_run(&m, s == 0 ? UINT32_MAX : (uint32_t)s * 1000, steps[s], fn, g_ids);
			cr_assert_eq(wire_exact(m.sb.data, m.sb.size), 1, "%u steps, function %d",
			             steps[s], fn);
			anes_run_wire *w = malloc(sizeof *w);
			cr_assert_eq(anes_run_wire_parse(m.sb.data, m.sb.size, w), 1);
			cr_assert_eq(w->chain, steps[s] != 0);
			cr_assert_eq(w->n_steps, steps[s] ? steps[s] : 1);
			cr_assert_eq(w->n_ids, 2 * w->n_steps);
			for (uint32_t i = 0; i < w->n_steps; i++) {
				cr_assert_eq(w->steps[i].program, 7 + i);
				cr_assert_eq(w->ids[w->steps[i].in], g_ids[2 * i]);
				cr_assert_eq(w->ids[w->steps[i].out], g_ids[2 * i + 1]);
				cr_assert_eq(w->steps[i].function != NULL, fn);
			}
			free(w);
			mp_free(&m);
		}
	}
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
	cr_assert_eq(wire_exact(b.p, b.n), 1);
	anes_run_wire *w = malloc(sizeof *w);
	cr_assert_eq(anes_run_wire_parse(b.p, b.n, w), 1);
	cr_assert_eq(w->msgid, 5);
	cr_assert_eq(w->steps[0].program, 9);
	cr_assert_eq(w->steps[0].n_in, 1);
	cr_assert_eq(w->steps[0].n_out, 0);
	cr_assert_eq(w->ids[w->steps[0].in], 3);
	cr_assert_eq(w->steps[0].function_len, 1);
	cr_assert_eq(w->steps[0].function[0], 'f');
	/* function "": no function named, as the decoder sees it (NULL) */
	b_free(&b);
	b_hex(&b, "94 00 05 a3 72756e 84 a7 70726f6772616d 01 a8 66756e6374696f6e a0 "
	          "a6 696e70757473 90 a7 6f757470757473 90");
	cr_assert_eq(wire_exact(b.p, b.n), 1);
	cr_assert_eq(anes_run_wire_parse(b.p, b.n, w), 1);
	cr_assert_null(w->steps[0].function);
	free(w);
	b_free(&b);
}

/* Forms the one-pass reader leaves to the decoder (which may accept them
 * or not: the general path answers either way). */
Test(run_wire, other_forms_are_left_to_the_decoder)
{
	static const char *const cases[] = {
		/* a duplicate key */
		"94 00 01 a3 72756e 84 a7 70726f6772616d 01 a7 70726f6772616d 01 "
		"a6 696e70757473 90 a7 6f757470757473 90",
		/* an unknown key */
		"94 00 01 a3 72756e 84 a7 70726f6772616d 01 a4 6e6f7465 c0 "
		"a6 696e70757473 90 a7 6f757470757473 90",
		/* program as a uint64 */
		"94 00 01 a3 72756e 83 a7 70726f6772616d cf 0000000000000001 "
		"a6 696e70757473 90 a7 6f757470757473 90",
		/* a surface ID as an int8 */
		"94 00 01 a3 72756e 83 a7 70726f6772616d 01 a6 696e70757473 91 d0 01 "
		"a7 6f757470757473 90",
		/* no outputs */
		"94 00 01 a3 72756e 82 a7 70726f6772616d 01 a6 696e70757473 90",
		/* a byte after the request */
		"94 00 01 a3 72756e 83 a7 70726f6772616d 01 a6 696e70757473 90 "
		"a7 6f757470757473 90 c0",
		/* msgid as a uint64, a notification, another method, 5 elements */
		"94 00 cf 0000000000000001 a3 72756e 80",
		"93 02 a3 72756e 83 a7 70726f6772616d 01 a6 696e70757473 90 a7 6f757470757473 90",
		"94 00 01 a4 72756e78 83 a7 70726f6772616d 01 a6 696e70757473 90 a7 6f757470757473 90",
		"95 00 01 a3 72756e 83 a7 70726f6772616d 01 a6 696e70757473 90 a7 6f757470757473 90 c0",
		/* no steps, steps that are not an array, steps and another key */
		"94 00 01 a3 72756e 81 a5 7374657073 90",
		"94 00 01 a3 72756e 81 a5 7374657073 80",
		"94 00 01 a3 72756e 82 a5 7374657073 91 83 a7 70726f6772616d 01 a6 696e70757473 90 "
		"a7 6f757470757473 90 a7 70726f6772616d 01",
		/* function as a bin */
		"94 00 01 a3 72756e 84 a7 70726f6772616d 01 a8 66756e6374696f6e c4 01 66 "
		"a6 696e70757473 90 a7 6f757470757473 90",
		/* a map16 step */
		"94 00 01 a3 72756e de 0003 a7 70726f6772616d 01 a6 696e70757473 90 a7 6f757470757473 90",
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		bytes b = { 0 };
		b_hex(&b, cases[i]);
		cr_assert_eq(wire_exact(b.p, b.n), 0, "case %zu", i);
		b_free(&b);
	}
	/* 257 steps; 65 inputs in one step; more than ANES_RUN_WIRE_MAX_IDS IDs */
	ids_init();
	mp m;
	mp_init(&m);
	uint32_t *many = calloc(2 * (ANES_MAX_STEPS + 1), sizeof *many);
	pack_lib_run(&m, 1, ANES_MAX_STEPS + 1, true, many);
	cr_assert_eq(wire_exact(m.sb.data, m.sb.size), 0);
	mp_free(&m);
	free(many);
	for (int big = 0; big < 2; big++) {
		uint32_t n_steps = big ? ANES_RUN_WIRE_MAX_IDS / ANES_RUN_WIRE_MAX_IO + 1 : 1;
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
		cr_assert_eq(wire_exact(m.sb.data, m.sb.size), 0, "big %d", big);
		mp_free(&m);
	}
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

/* ---- the spin's rules (proto/anes_spin.c) ------------------------------------ */

#include "anes_clock.h"
#include "anes_spin.h"

/* The spin reads a fake clock (anes_clock_ns): every read is one poll and
 * advances it by fk_step; the read numbered fk_jump_at (0: the one in
 * anes_spin_start) comes fk_jump later still, as if the thread had been off
 * its CPU that long.  Nothing here depends on the machine's time. */
static uint64_t fk_now, fk_step, fk_jump;
static long fk_reads, fk_jump_at;

static uint64_t fake_now_ns(void)
{
	if (fk_reads == fk_jump_at)
		fk_now += fk_jump;
	fk_reads++;
	uint64_t t = fk_now;
	fk_now += fk_step;
	return t;
}

static void fake_clock(uint64_t step_ns)
{
	fk_now = 5000000000u;
	fk_step = step_ns;
	fk_reads = 0;
	fk_jump_at = -1;
	fk_jump = 0;
	anes_clock_ns = fake_now_ns;
}

static void real_clock(void)
{
	anes_clock_ns = anes_clock_monotonic_ns;
}

TestSuite(spin_rules, .fini = real_clock, .timeout = 10);

/* One spin of spin_us on the fake clock that finds nothing: how many polls
 * it made after the first (anes_spin_again returned true). */
static long spin_polls(uint32_t spin_us, anes_spin_run *run)
{
	anes_spin s = { 0 };
	cr_assert_eq(anes_spin_start(&s, spin_us, run), 1);
	long polls = 0;
	while (anes_spin_again(run))
		polls++;
	return polls;
}

/* Polls 1 us apart: the spin ends at its bound, on the first poll at or
 * past it, and not on a gap. */
Test(spin_rules, ends_at_the_bound)
{
	fake_clock(1000);
	anes_spin_run run;
	cr_assert_eq(spin_polls(100, &run), 99);
	cr_assert(!run.gap);
	cr_assert_eq(run.gap_ns, 0u);
	cr_assert_eq(fk_reads, 101, "one read to start, one per poll");
	fake_clock(0);   /* time stands still: only a gap or the bound ends a spin */
	fk_jump_at = 5000;
	fk_jump = 100000;   /* then 100 us at once: a gap, the whole spin */
	cr_assert_eq(spin_polls(1000, &run), 4999);
	cr_assert(run.gap);
}

/* A thread held off its polls for 60 us, 1 ms into a 3 ms spin: the spin
 * goes on to its bound (the CPU was taken for a moment, not wanted for
 * long; a thread waking now and then beside a client used to end its spin
 * each time). */
Test(spin_rules, a_short_gap_does_not_end_the_spin)
{
	fake_clock(1000);
	fk_jump_at = 1000;
	fk_jump = 60000;
	anes_spin_run run;
	long polls = spin_polls(3000, &run);
	cr_assert(!run.gap, "a 60 us gap ended a 3 ms spin after %ld polls", polls);
	cr_assert_eq(run.gap_ns, 61000u, "the gap: 60 us held plus the poll's own 1 us");
	cr_assert_eq(polls, 3000 - 60 - 1, "the spin lasted to its bound");
}

/* Held for 8 ms, 1 ms into a 10 ms spin: the CPU was wanted more than the
 * spin had it, and the spin ends on a gap, right there, not at its bound. */
Test(spin_rules, a_long_gap_ends_the_spin)
{
	fake_clock(1000);
	fk_jump_at = 1000;
	fk_jump = 8000000;
	anes_spin_run run;
	long polls = spin_polls(10000, &run);
	cr_assert(run.gap);
	cr_assert_eq(polls, 999, "it ended on the poll after the gap");
	cr_assert_eq(run.gap_ns, 8001000u);
}

/* A gap is two polls ANES_SPIN_GAP_NS or more apart; one less is not. */
Test(spin_rules, the_gap_threshold)
{
	anes_spin_run run;
	fake_clock(ANES_SPIN_GAP_NS - 1);
	spin_polls(1000, &run);
	cr_assert(!run.gap);
	cr_assert_eq(run.gap_ns, 0u);
	fake_clock(ANES_SPIN_GAP_NS);   /* every poll a gap: the first ends it */
	cr_assert_eq(spin_polls(1000, &run), 0);
	cr_assert(run.gap);
	cr_assert_eq(run.gap_ns, ANES_SPIN_GAP_NS);
}

/* Gaps that each are small add up: 100 polls 1 us apart, then 40 us gaps
 * with 20 polls between them.  After k gaps the spin has lasted
 * 80 + 61 k us, 41 k of them in gaps (each with its poll's own 1 us); it
 * ends on the gap that makes them more than half: k = 4 (164 of 324 us). */
Test(spin_rules, gaps_add_up)
{
	fake_clock(1000);
	anes_spin s = { 0 };
	anes_spin_run run;
	cr_assert_eq(anes_spin_start(&s, 10000, &run), 1);
	int gaps = 0;
	bool more = true;
	for (long i = 1; more; i++) {
		if (i > 100 && (i - 100) % 21 == 1) {
			fk_now += 40000;
			gaps++;
		}
		more = anes_spin_again(&run);
		cr_assert(i < 1000, "the spin never ended");
	}
	cr_assert(run.gap);
	cr_assert_eq(gaps, 4);
	cr_assert_eq(run.gap_ns, 4u * 41000u);
}

/* The fake clock of another process (anes_test_clock): each read returns
 * now and adds the step. */
Test(spin_rules, test_clock_reads)
{
	anes_test_clock k;
	atomic_init(&k.now_ns, 7);
	atomic_init(&k.step_ns, 0);
	cr_assert_eq(anes_test_clock_read(&k), 7u);
	cr_assert_eq(anes_test_clock_read(&k), 7u, "step 0: time stands still");
	atomic_store(&k.step_ns, 5);
	cr_assert_eq(anes_test_clock_read(&k), 7u);
	cr_assert_eq(anes_test_clock_read(&k), 12u);
	cr_assert_eq(atomic_load(&k.now_ns), 17u);
}

/* Ends at the bound, or a hit, or a gap, by hand. */
static void spin_once(anes_spin *s, bool got, bool gap)
{
	anes_spin_run run;
	cr_assert_eq(anes_spin_start(s, 100, &run), 1);
	run.gap = gap;
	anes_spin_end(s, &run, got);
}

/* Two failures at the bound in a row start the penalty (1, then 2, 4 ...
 * skipped waits); a gap does not count; a hit halves it. */
Test(spin_rules, penalty)
{
	anes_spin s = { 0 };
	anes_spin_run run;
	spin_once(&s, false, false);   /* one miss after hits: nothing */
	cr_assert_eq(s.skip, 0);
	spin_once(&s, false, true);    /* a gap: not a miss */
	cr_assert_eq(s.skip, 0);
	spin_once(&s, false, false);   /* the second miss in a row */
	cr_assert_eq(s.skip, 1);
	cr_assert_eq(anes_spin_start(&s, 100, &run), -EAGAIN);
	spin_once(&s, false, false);
	cr_assert_eq(s.skip, 2);
	cr_assert_eq(anes_spin_start(&s, 100, &run), -EAGAIN);
	cr_assert_eq(anes_spin_start(&s, 100, &run), -EAGAIN);
	spin_once(&s, true, false);    /* a hit: the penalty halves, the misses restart */
	cr_assert_eq(s.penalty, 1);
	cr_assert_eq(s.misses, 0);
	cr_assert_eq(anes_spin_start(&s, 0, &run), 0, "spin 0: no spin");
}
