/* SPDX-License-Identifier: MIT */
/* Framing, validation, decoding and packing of aneshare messages. */
#include "anes_proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *const wire_error_names[ANES_WERR_MAX + 1] = {
#define ANES_X_(c, N, s) [c] = s,
	ANES_WIRE_ERRORS(ANES_X_)
#undef ANES_X_
};

const char *anes_wire_error_name(int code)
{
	if (code <= 0 || code > ANES_WERR_MAX)
		return NULL;
	return wire_error_names[code];
}

int anes_wire_error_from_name(const char *name, size_t len)
{
	for (int c = 1; c <= ANES_WERR_MAX; c++) {
		const char *n = wire_error_names[c];
		if (n && strlen(n) == len && memcmp(n, name, len) == 0)
			return c;
	}
	return 0;
}

/* ---- framing ---------------------------------------------------------- */

void anes_frame_header_write(uint8_t hdr[ANES_FRAME_HEADER_SIZE], uint32_t len, unsigned nfds)
{
	hdr[0] = (uint8_t)(len >> 24);
	hdr[1] = (uint8_t)(len >> 16);
	hdr[2] = (uint8_t)(len >> 8);
	hdr[3] = (uint8_t)len;
	hdr[4] = (uint8_t)nfds;
	hdr[5] = hdr[6] = hdr[7] = 0;
}

int anes_frame_header_parse(const uint8_t hdr[ANES_FRAME_HEADER_SIZE], uint32_t max_frame,
                            uint32_t *ret_len, unsigned *ret_nfds)
{
	uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];

	if (hdr[5] || hdr[6] || hdr[7] || hdr[4] > ANES_MAX_FDS_PER_FRAME)
		return -EPROTO;
	if (len > max_frame)
		return -EMSGSIZE;
	*ret_len = len;
	*ret_nfds = hdr[4];
	return 0;
}

/* ---- validation ------------------------------------------------------------ */

static uint64_t be_read(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

/*
 * One pass over the bytes, without allocating: each container's declared
 * element count goes on a small stack and every length is checked against
 * what remains.  Each element takes at least one byte, so a count larger than
 * the remaining bytes is rejected at once.
 */
int anes_mp_check(const void *buf, size_t len)
{
	const uint8_t *p = buf;
	size_t pos = 0;
	uint64_t pending[ANES_MP_MAX_DEPTH + 1];  /* objects still to read per level */
	unsigned depth = 0;
	uint64_t objects = 0;

	pending[0] = 1;
	while (pending[depth] > 0 || depth > 0) {
		if (pending[depth] == 0) {
			depth--;
			continue;
		}
		pending[depth]--;
		if (++objects > ANES_MP_MAX_OBJECTS || pos >= len)
			return -EBADMSG;

		uint8_t b = p[pos++];
		uint64_t skip = 0;      /* payload bytes that follow the tag */
		uint64_t children = 0;  /* for containers */
		unsigned lenbytes = 0;  /* size of an explicit length field */
		bool container = false, is_map = false;

		if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
			/* fixint, nil, bool */
		} else if (b >= 0x80 && b <= 0x8f) {
			container = is_map = true;
			children = b & 0x0f;
		} else if (b >= 0x90 && b <= 0x9f) {
			container = true;
			children = b & 0x0f;
		} else if (b >= 0xa0 && b <= 0xbf) {
			skip = b & 0x1f;
		} else {
			switch (b) {
			case 0xc4: case 0xd9: lenbytes = 1; break;   /* bin8, str8 */
			case 0xc5: case 0xda: lenbytes = 2; break;   /* bin16, str16 */
			case 0xc6: case 0xdb: lenbytes = 4; break;   /* bin32, str32 */
			case 0xca: skip = 4; break;                  /* float32 */
			case 0xcb: skip = 8; break;                  /* float64 */
			case 0xcc: case 0xd0: skip = 1; break;
			case 0xcd: case 0xd1: skip = 2; break;
			case 0xce: case 0xd2: skip = 4; break;
			case 0xcf: case 0xd3: skip = 8; break;
			case 0xdc: container = true; lenbytes = 2; break;
			case 0xdd: container = true; lenbytes = 4; break;
			case 0xde: container = is_map = true; lenbytes = 2; break;
			case 0xdf: container = is_map = true; lenbytes = 4; break;
			default:
				return -EBADMSG;  /* 0xc1 and every ext type */
			}
			if (lenbytes) {
				if (len - pos < lenbytes)
					return -EBADMSG;
				uint64_t n = be_read(p + pos, lenbytes);
				pos += lenbytes;
				if (container)
					children = n;
				else
					skip = n;
			}
		}

		if (container) {
			/* every container counts, also an empty one */
			if (depth + 1 > ANES_MP_MAX_DEPTH)
				return -EBADMSG;
			if (is_map) {
				if (children > ANES_MP_MAX_MAP)
					return -EBADMSG;
				children *= 2;
			}
			if (children > len - pos)
				return -EBADMSG;
			if (children > 0)
				pending[++depth] = children;
		} else {
			if (skip > len - pos)
				return -EBADMSG;
			pos += (size_t)skip;
		}
	}
	return pos == len ? 0 : -EBADMSG;
}

/* Order map keys for the uniqueness check: by type, then by value.  Scalar
 * keys compare by value (integers whatever their encoding, str/bin by bytes,
 * floats by bit pattern); array and map keys are never equal to another key. */
static _Thread_local uint64_t key_compares;

uint64_t anes_msg_key_compares(void)
{
	return key_compares;
}

static int key_cmp(const void *pa, const void *pb)
{
	const msgpack_object *a = *(const msgpack_object *const *)pa;
	const msgpack_object *b = *(const msgpack_object *const *)pb;

	key_compares++;

	if (a->type != b->type)
		return a->type < b->type ? -1 : 1;
	switch (a->type) {
	case MSGPACK_OBJECT_NIL:
		return 0;
	case MSGPACK_OBJECT_BOOLEAN:
		return (int)a->via.boolean - (int)b->via.boolean;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		return a->via.u64 < b->via.u64 ? -1 : a->via.u64 > b->via.u64;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		return a->via.i64 < b->via.i64 ? -1 : a->via.i64 > b->via.i64;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		return memcmp(&a->via.f64, &b->via.f64, sizeof a->via.f64);
	case MSGPACK_OBJECT_STR:
	case MSGPACK_OBJECT_BIN: {
		/* str and bin share a layout */
		uint32_t na = a->via.str.size, nb = b->via.str.size;
		if (na != nb)
			return na < nb ? -1 : 1;
		return na ? memcmp(a->via.str.ptr, b->via.str.ptr, na) : 0;
	}
	default:
		return a < b ? -1 : a > b;
	}
}

/* Compare two keys for equality only. */
static bool key_eq(const msgpack_object *a, const msgpack_object *b)
{
	return key_cmp(&a, &b) == 0;
}

/* The keys of one map must be unique.  A request's maps have a few keys,
 * compared pairwise; bigger maps are sorted, which keeps the check
 * O(n log n) comparisons: pairwise, 1,024 long keys that differ only at
 * the end would cost seconds per frame. */
#define MAP_PAIRWISE_MAX 8

static int map_keys_unique(const msgpack_object *map)
{
	const msgpack_object_kv *kv = map->via.map.ptr;
	uint32_t n = map->via.map.size;
	int r = 0;

	if (n <= MAP_PAIRWISE_MAX) {
		for (uint32_t i = 1; i < n; i++)
			for (uint32_t j = 0; j < i; j++)
				if (key_eq(&kv[i].key, &kv[j].key))
					return -EBADMSG;
		return 0;
	}
	const msgpack_object **keys = malloc(n * sizeof *keys);
	if (!keys)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++)
		keys[i] = &kv[i].key;
	qsort(keys, n, sizeof *keys, key_cmp);
	for (uint32_t i = 1; i < n; i++) {
		if (key_cmp(&keys[i - 1], &keys[i]) == 0) {
			r = -EBADMSG;
			break;
		}
	}
	free(keys);
	return r;
}

/* Applied recursively; bounded by the limits anes_mp_check enforced.
 * Returns 0, -EBADMSG or -ENOMEM. */
static int check_unique_keys(const msgpack_object *o, unsigned depth)
{
	int r;

	if (depth > ANES_MP_MAX_DEPTH)
		return -EBADMSG;
	if (o->type == MSGPACK_OBJECT_ARRAY) {
		for (uint32_t i = 0; i < o->via.array.size; i++)
			if ((r = check_unique_keys(&o->via.array.ptr[i], depth + 1)) < 0)
				return r;
	} else if (o->type == MSGPACK_OBJECT_MAP) {
		if ((r = map_keys_unique(o)) < 0)
			return r;
		for (uint32_t i = 0; i < o->via.map.size; i++) {
			if ((r = check_unique_keys(&o->via.map.ptr[i].key, depth + 1)) < 0 ||
			    (r = check_unique_keys(&o->via.map.ptr[i].val, depth + 1)) < 0)
				return r;
		}
	}
	return 0;
}

static bool get_uint(const msgpack_object *o, uint64_t max, uint64_t *ret)
{
	if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > max)
		return false;
	*ret = o->via.u64;
	return true;
}

int anes_msg_decode(const void *buf, size_t len, msgpack_zone *zone, anes_msg *ret)
{
	msgpack_object root;
	size_t off = 0;
	uint64_t type, msgid = 0;
	anes_msg m = {0};

	if (anes_mp_check(buf, len) < 0)
		return -EBADMSG;
	switch (msgpack_unpack(buf, len, &off, zone, &root)) {
	case MSGPACK_UNPACK_SUCCESS:
		break;
	case MSGPACK_UNPACK_NOMEM_ERROR:
		return -ENOMEM;
	default:
		return -EBADMSG;
	}
	if (off != len)
		return -EBADMSG;
	int r = check_unique_keys(&root, 0);
	if (r < 0)
		return r;
	if (root.type != MSGPACK_OBJECT_ARRAY || root.via.array.size < 3)
		return -EBADMSG;

	const msgpack_object *a = root.via.array.ptr;
	uint32_t n = root.via.array.size;
	if (!get_uint(&a[0], ANES_MSG_NOTIFY, &type))
		return -EBADMSG;
	m.type = (anes_msg_type)type;

	const msgpack_object *method;
	switch (m.type) {
	case ANES_MSG_REQUEST:
		if (n != 4 || !get_uint(&a[1], UINT32_MAX, &msgid))
			return -EBADMSG;
		method = &a[2];
		m.params = &a[3];
		break;
	case ANES_MSG_NOTIFY:
		if (n != 3)
			return -EBADMSG;
		method = &a[1];
		m.params = &a[2];
		break;
	case ANES_MSG_RESPONSE:
		if (n != 4 || !get_uint(&a[1], UINT32_MAX, &msgid))
			return -EBADMSG;
		m.msgid = (uint32_t)msgid;
		if (a[2].type == MSGPACK_OBJECT_NIL) {
			if (a[3].type != MSGPACK_OBJECT_MAP)
				return -EBADMSG;
			m.result = &a[3];
		} else {
			if (a[2].type != MSGPACK_OBJECT_MAP || a[3].type != MSGPACK_OBJECT_NIL)
				return -EBADMSG;
			m.error = &a[2];
		}
		*ret = m;
		return 0;
	default:
		return -EBADMSG;
	}

	/* "" is a method name like any other: a request for it is well formed
	 * and gets unknown_method. */
	if (method->type != MSGPACK_OBJECT_STR || method->via.str.size > ANES_METHOD_MAX || m.params->type != MSGPACK_OBJECT_MAP)
		return -EBADMSG;
	m.msgid = (uint32_t)msgid;
	m.method = method->via.str.ptr;
	m.method_len = method->via.str.size;
	*ret = m;
	return 0;
}

bool anes_msg_method_is(const anes_msg *m, const char *name)
{
	size_t n = strlen(name);
	return m->method && m->method_len == n && memcmp(m->method, name, n) == 0;
}

int anes_msg_error(const anes_msg *m, int *ret_code, const char **ret_message, uint32_t *ret_len)
{
	uint64_t code;
	const char *msg;
	uint32_t msg_len;

	if (!m->error || anes_mp_u64(m->error, "code", INT32_MAX, &code) < 0 ||
	    anes_mp_str(m->error, "message", UINT32_MAX, &msg, &msg_len) < 0)
		return -EBADMSG;
	*ret_code = (int)code;
	*ret_message = msg;
	*ret_len = msg_len;
	return 0;
}

/* ---- field access ------------------------------------------------------- */

bool anes_mp_str_eq(const msgpack_object *o, const char *s)
{
	size_t n = strlen(s);
	/* msgpack-c leaves ptr NULL for an empty str: memcmp needs n > 0 */
	return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
	       (n == 0 || memcmp(o->via.str.ptr, s, n) == 0);
}

const msgpack_object *anes_mp_get(const msgpack_object *map, const char *key)
{
	if (!map || map->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < map->via.map.size; i++)
		if (anes_mp_str_eq(&map->via.map.ptr[i].key, key))
			return &map->via.map.ptr[i].val;
	return NULL;
}

int anes_mp_u64(const msgpack_object *map, const char *key, uint64_t max, uint64_t *ret)
{
	const msgpack_object *o = anes_mp_get(map, key);
	uint64_t v;

	if (!o)
		return -ENOENT;
	if (!get_uint(o, max, &v))
		return -EINVAL;
	*ret = v;
	return 0;
}

int anes_mp_u32(const msgpack_object *map, const char *key, uint32_t *ret)
{
	uint64_t v;
	int r = anes_mp_u64(map, key, UINT32_MAX, &v);

	if (r < 0)
		return r;
	*ret = (uint32_t)v;
	return 0;
}

int anes_mp_i64(const msgpack_object *map, const char *key, int64_t *ret)
{
	const msgpack_object *o = anes_mp_get(map, key);

	if (!o)
		return -ENOENT;
	if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		*ret = o->via.i64;
		return 0;
	}
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
		*ret = (int64_t)o->via.u64;
		return 0;
	}
	return -EINVAL;
}

int anes_mp_bool(const msgpack_object *map, const char *key, bool *ret)
{
	const msgpack_object *o = anes_mp_get(map, key);

	if (!o)
		return -ENOENT;
	if (o->type != MSGPACK_OBJECT_BOOLEAN)
		return -EINVAL;
	*ret = o->via.boolean;
	return 0;
}

int anes_mp_str(const msgpack_object *map, const char *key, uint32_t max_len,
                const char **ret, uint32_t *ret_len)
{
	const msgpack_object *o = anes_mp_get(map, key);

	if (!o)
		return -ENOENT;
	if (o->type != MSGPACK_OBJECT_STR || o->via.str.size > max_len)
		return -EINVAL;
	*ret = o->via.str.ptr;
	*ret_len = o->via.str.size;
	return 0;
}

int anes_mp_bin(const msgpack_object *map, const char *key, uint32_t max_len,
                const void **ret, uint32_t *ret_len)
{
	const msgpack_object *o = anes_mp_get(map, key);

	if (!o)
		return -ENOENT;
	if (o->type != MSGPACK_OBJECT_BIN || o->via.bin.size > max_len)
		return -EINVAL;
	*ret = o->via.bin.ptr;
	*ret_len = o->via.bin.size;
	return 0;
}

int anes_mp_array(const msgpack_object *map, const char *key, uint32_t max_n,
                  const msgpack_object **ret_items, uint32_t *ret_n)
{
	const msgpack_object *o = anes_mp_get(map, key);

	if (!o)
		return -ENOENT;
	if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > max_n)
		return -EINVAL;
	*ret_items = o->via.array.ptr;
	*ret_n = o->via.array.size;
	return 0;
}

int anes_mp_map(const msgpack_object *map, const char *key, uint32_t max_n,
                const msgpack_object **ret)
{
	const msgpack_object *o = anes_mp_get(map, key);

	if (!o)
		return -ENOENT;
	if (o->type != MSGPACK_OBJECT_MAP || o->via.map.size > max_n)
		return -EINVAL;
	*ret = o;
	return 0;
}

int anes_mp_item_u32(const msgpack_object *item, uint32_t *ret)
{
	uint64_t v;

	if (!get_uint(item, UINT32_MAX, &v))
		return -EINVAL;
	*ret = (uint32_t)v;
	return 0;
}

/* ---- building frames ---------------------------------------------------- */

static int frame_write(void *data, const char *buf, size_t len)
{
	anes_frame *f = data;

	if (f->oom)
		return -1;
	if (len == 0)
		return 0;  /* an empty str/bin body: buf may be NULL, which memcpy does not allow */
	if (len > f->cap - f->len) {
		size_t cap = f->cap ? f->cap : 256;
		while (cap - f->len < len) {
			if (cap > SIZE_MAX / 2) {
				f->oom = true;
				return -1;
			}
			cap *= 2;
		}
		char *d = realloc(f->data, cap);
		if (!d) {
			f->oom = true;
			return -1;
		}
		f->data = d;
		f->cap = cap;
	}
	memcpy(f->data + f->len, buf, len);
	f->len += len;
	return 0;
}

void anes_frame_init(anes_frame *f)
{
	static const char zero[ANES_FRAME_HEADER_SIZE];

	*f = (anes_frame){0};
	msgpack_packer_init(&f->pk, f, frame_write);
	frame_write(f, zero, sizeof zero);
}

void anes_frame_init_buf(anes_frame *f, void *buf, size_t cap)
{
	static const char zero[ANES_FRAME_HEADER_SIZE];

	*f = (anes_frame){ .data = buf, .cap = buf ? cap : 0 };
	msgpack_packer_init(&f->pk, f, frame_write);
	frame_write(f, zero, sizeof zero);
}

void anes_frame_release(anes_frame *f)
{
	free(f->data);
	f->data = NULL;
	f->len = f->cap = 0;
}

void anes_frame_reset(anes_frame *f)
{
	if (f->oom || !f->data || f->cap < ANES_FRAME_HEADER_SIZE) {
		anes_frame_release(f);
		anes_frame_init(f);
		return;
	}
	memset(f->data, 0, ANES_FRAME_HEADER_SIZE);
	f->len = ANES_FRAME_HEADER_SIZE;
}

int anes_frame_seal(anes_frame *f, unsigned nfds, uint32_t max_frame)
{
	if (f->oom || f->len < ANES_FRAME_HEADER_SIZE)
		return -ENOMEM;
	if (f->len - ANES_FRAME_HEADER_SIZE > max_frame)
		return -EMSGSIZE;
	if (nfds > ANES_MAX_FDS_PER_FRAME)
		return -EINVAL;
	anes_frame_header_write((uint8_t *)f->data, (uint32_t)(f->len - ANES_FRAME_HEADER_SIZE), nfds);
	return 0;
}

int anes_frame_finish(anes_frame *f, unsigned nfds, uint32_t max_frame,
                      void **ret_data, size_t *ret_len)
{
	int r = anes_frame_seal(f, nfds, max_frame);
	if (r < 0)
		return r;
	*ret_data = f->data;
	*ret_len = f->len;
	f->data = NULL;
	f->len = f->cap = 0;
	return 0;
}

void anes_pack_strn(msgpack_packer *pk, const char *s, size_t n)
{
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

void anes_pack_str(msgpack_packer *pk, const char *s)
{
	anes_pack_strn(pk, s, strlen(s));
}

void anes_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t v)
{
	anes_pack_str(pk, key);
	msgpack_pack_uint64(pk, v);
}

/* The length of the well-formed UTF-8 sequence at p (n > 0 bytes left), 0 if
 * there is none: no overlong forms, surrogates or code points past U+10FFFF
 * (RFC 3629, table 3-7 of the Unicode standard). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
	unsigned char c = p[0], lo = 0x80, hi = 0xbf;
	size_t len;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		lo = c == 0xe0 ? 0xa0 : 0x80;
		hi = c == 0xed ? 0x9f : 0xbf;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		lo = c == 0xf0 ? 0x90 : 0x80;
		hi = c == 0xf4 ? 0x8f : 0xbf;
	} else {
		return 0;
	}
	if (n < len || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return len;
}

void anes_pack_text(msgpack_packer *pk, const char *s)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s), *run = p;

	msgpack_pack_str(pk, (size_t)(end - p));
	while (p < end) {
		size_t k = utf8_seq(p, (size_t)(end - p));
		if (k) {
			p += k;
			continue;
		}
		if (p > run)
			msgpack_pack_str_body(pk, run, (size_t)(p - run));
		msgpack_pack_str_body(pk, "?", 1);
		run = ++p;
	}
	if (p > run)
		msgpack_pack_str_body(pk, run, (size_t)(p - run));
}

void anes_pack_request(msgpack_packer *pk, uint32_t msgid, const char *method, uint32_t n_params)
{
	msgpack_pack_array(pk, 4);
	msgpack_pack_uint8(pk, ANES_MSG_REQUEST);
	msgpack_pack_uint32(pk, msgid);
	anes_pack_str(pk, method);
	msgpack_pack_map(pk, n_params);
}

void anes_pack_result(msgpack_packer *pk, uint32_t msgid, uint32_t n_result)
{
	msgpack_pack_array(pk, 4);
	msgpack_pack_uint8(pk, ANES_MSG_RESPONSE);
	msgpack_pack_uint32(pk, msgid);
	msgpack_pack_nil(pk);
	msgpack_pack_map(pk, n_result);
}

static void pack_error_map(msgpack_packer *pk, int code, const char *message)
{
	const char *name = anes_wire_error_name(code);

	msgpack_pack_map(pk, 3);
	anes_pack_str(pk, "code");
	msgpack_pack_uint32(pk, (uint32_t)code);
	anes_pack_str(pk, "name");
	anes_pack_str(pk, name ? name : "internal");
	anes_pack_str(pk, "message");
	anes_pack_text(pk, message ? message : "");
}

void anes_pack_error(msgpack_packer *pk, uint32_t msgid, int code, const char *message)
{
	msgpack_pack_array(pk, 4);
	msgpack_pack_uint8(pk, ANES_MSG_RESPONSE);
	msgpack_pack_uint32(pk, msgid);
	pack_error_map(pk, code, message);
	msgpack_pack_nil(pk);
}

void anes_pack_notify(msgpack_packer *pk, const char *method, uint32_t n_params)
{
	msgpack_pack_array(pk, 3);
	msgpack_pack_uint8(pk, ANES_MSG_NOTIFY);
	anes_pack_str(pk, method);
	msgpack_pack_map(pk, n_params);
}

/* ---- a run request, read in one pass ------------------------------------ */

/* The reader: a cursor, the objects read so far (anes_mp_check's count),
 * and whether anything was skipped unread that anes_msg_decode must check
 * for repeated keys. */
typedef struct rd {
	const uint8_t *p, *end;
	uint64_t objects;
	bool odd;
} rd;

enum { MPK_OTHER, MPK_UINT, MPK_NINT, MPK_STR, MPK_ARRAY, MPK_MAP };

typedef struct mp_item {
	int kind;
	uint64_t u;        /* MPK_UINT: the value; MPK_ARRAY/MPK_MAP: the element count */
	const char *s;     /* MPK_STR: the bytes (in the buffer) */
	uint32_t len;
} mp_item;

/* One object's tag and, for a scalar, its body, at nesting level `level`
 * (the root is 0), by anes_mp_check's rules: false where it would reject
 * the payload.  A container's elements are the caller's to read. */
static bool rd_item(rd *r, unsigned level, mp_item *it)
{
	if (r->p >= r->end || ++r->objects > ANES_MP_MAX_OBJECTS)
		return false;
	uint8_t b = *r->p++;
	size_t left = (size_t)(r->end - r->p);
	uint64_t n = 0;
	unsigned lb = 0;

	it->kind = MPK_OTHER;
	if (b <= 0x7f) {
		it->kind = MPK_UINT;
		it->u = b;
		return true;
	}
	if (b >= 0xe0)
		return (it->kind = MPK_NINT), true;
	if (b <= 0x8f) {
		it->kind = MPK_MAP;
		n = b & 0x0f;
	} else if (b <= 0x9f) {
		it->kind = MPK_ARRAY;
		n = b & 0x0f;
	} else if (b <= 0xbf) {
		it->kind = MPK_STR;
		n = b & 0x1f;
	} else {
		switch (b) {
		case 0xc0: case 0xc2: case 0xc3:
			return true;   /* nil, bool */
		case 0xca: n = 4; break;   /* float32 */
		case 0xcb: n = 8; break;   /* float64 */
		case 0xcc: case 0xcd: case 0xce: case 0xcf:
		case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
			unsigned nb = 1u << (b & 3);
			if (left < nb)
				return false;
			uint64_t v = be_read(r->p, nb);
			r->p += nb;
			/* msgpack-c: a signed encoding of a value >= 0 is a positive integer */
			bool neg = b >= 0xd0 && (v >> (nb * 8 - 1)) & 1;
			it->kind = neg ? MPK_NINT : MPK_UINT;
			it->u = v;
			return true;
		}
		case 0xc4: lb = 1; break;   /* bin */
		case 0xc5: lb = 2; break;
		case 0xc6: lb = 4; break;
		case 0xd9: lb = 1; it->kind = MPK_STR; break;
		case 0xda: lb = 2; it->kind = MPK_STR; break;
		case 0xdb: lb = 4; it->kind = MPK_STR; break;
		case 0xdc: lb = 2; it->kind = MPK_ARRAY; break;
		case 0xdd: lb = 4; it->kind = MPK_ARRAY; break;
		case 0xde: lb = 2; it->kind = MPK_MAP; break;
		case 0xdf: lb = 4; it->kind = MPK_MAP; break;
		default:
			return false;   /* 0xc1 and every ext type */
		}
		if (lb) {
			if (left < lb)
				return false;
			n = be_read(r->p, lb);
			r->p += lb;
			left -= lb;
		}
	}
	if (it->kind == MPK_ARRAY || it->kind == MPK_MAP) {
		/* every container counts, also an empty one */
		if (level + 1 > ANES_MP_MAX_DEPTH)
			return false;
		if (it->kind == MPK_MAP && n > ANES_MP_MAX_MAP)
			return false;
		if ((it->kind == MPK_MAP ? n * 2 : n) > left)
			return false;
		it->u = n;
		return true;
	}
	if (n > left)
		return false;
	if (it->kind == MPK_STR) {
		it->s = (const char *)r->p;
		it->len = (uint32_t)n;
	}
	r->p += n;
	return true;
}

/* Skip the elements of a container just read (it) at `level`, checking
 * them as rd_item does.  A map anywhere in them makes the request odd. */
static bool rd_skip(rd *r, unsigned level, const mp_item *it)
{
	uint64_t pending[ANES_MP_MAX_DEPTH + 2];
	unsigned d = 0;

	if (it->kind != MPK_ARRAY && it->kind != MPK_MAP)
		return true;
	if (it->kind == MPK_MAP)
		r->odd = true;
	pending[0] = it->kind == MPK_MAP ? it->u * 2 : it->u;
	for (;;) {
		while (d > 0 && pending[d] == 0)
			d--;
		if (pending[d] == 0)
			return true;
		pending[d]--;
		mp_item c;
		if (!rd_item(r, level + 1 + d, &c))
			return false;
		if (c.kind == MPK_MAP)
			r->odd = true;
		if ((c.kind == MPK_ARRAY || c.kind == MPK_MAP) && c.u > 0)
			pending[++d] = c.kind == MPK_MAP ? c.u * 2 : c.u;
	}
}

/* One object at level, skipped. */
static bool rd_skip_one(rd *r, unsigned level)
{
	mp_item it;
	return rd_item(r, level, &it) && rd_skip(r, level, &it);
}

static bool str_is(const char *s, uint32_t len, const char *lit)
{
	return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

enum { K_PROGRAM = 1, K_FUNCTION = 2, K_INPUTS = 4, K_OUTPUTS = 8, K_STEPS = 16, K_STATE = 32,
       K_WAIT = 64, K_SIGNAL = 128 };

/* The step key a str names (0: none). */
static unsigned step_key(const mp_item *k)
{
	if (k->kind != MPK_STR)
		return 0;
	return str_is(k->s, k->len, "program")  ? K_PROGRAM
	       : str_is(k->s, k->len, "function") ? K_FUNCTION
	       : str_is(k->s, k->len, "inputs")   ? K_INPUTS
	       : str_is(k->s, k->len, "outputs")  ? K_OUTPUTS
	       : str_is(k->s, k->len, "steps")    ? K_STEPS
	       : str_is(k->s, k->len, "state")    ? K_STATE
	       : str_is(k->s, k->len, "wait")     ? K_WAIT
	       : str_is(k->s, k->len, "signal")   ? K_SIGNAL
	                                          : 0;
}

/* A step's keys as they are read, judged when its map is done. */
typedef struct step_acc {
	unsigned seen;
	bool program_bad, function_bad, state_bad;
	bool events;               /* a chain's step has "wait" or "signal" */
	bool ids_bad[2];           /* inputs, outputs: not an array */
	uint32_t bad_item[2];      /* the first item that is not a u32, or UINT32_MAX */
} step_acc;

/* "inputs" (io 0) or "outputs" (io 1), its value at level. */
static bool rd_ids(rd *r, unsigned level, anes_run_wire *w, anes_run_wire_step *st, step_acc *a,
                   int io)
{
	mp_item it;
	if (!rd_item(r, level, &it))
		return false;
	if (it.kind != MPK_ARRAY) {
		a->ids_bad[io] = true;
		return rd_skip(r, level, &it);
	}
	uint32_t at = w->n_ids;
	for (uint64_t i = 0; i < it.u; i++) {
		mp_item id;
		if (!rd_item(r, level + 1, &id))
			return false;
		if (id.kind != MPK_UINT || id.u > UINT32_MAX) {
			if (a->bad_item[io] == UINT32_MAX)
				a->bad_item[io] = (uint32_t)i;
			if (!rd_skip(r, level + 1, &id))
				return false;
		} else if (i < ANES_RUN_WIRE_MAX_IO) {
			w->ids[w->n_ids++] = (uint32_t)id.u;
		}
	}
	/* it.u is bounded by the bytes left, and those by a frame's size */
	if (io == 0) {
		st->n_in = (uint32_t)it.u;
		st->in = at;
	} else {
		st->n_out = (uint32_t)it.u;
		st->out = at;
	}
	return true;
}

/* The value of step key `key` at level. */
static bool rd_step_value(rd *r, unsigned level, unsigned key, anes_run_wire *w,
                          anes_run_wire_step *st, step_acc *a)
{
	mp_item it;
	switch (key) {
	case K_PROGRAM:
		if (!rd_item(r, level, &it))
			return false;
		if (it.kind == MPK_UINT && it.u <= UINT32_MAX)
			st->program = (uint32_t)it.u;
		else
			a->program_bad = true;
		return rd_skip(r, level, &it);
	case K_FUNCTION:
		if (!rd_item(r, level, &it))
			return false;
		if (it.kind == MPK_STR) {
			st->function = it.s;
			st->function_len = it.len;
		} else {
			a->function_bad = true;
		}
		return rd_skip(r, level, &it);
	case K_STATE:
		if (!rd_item(r, level, &it))
			return false;
		if (it.kind == MPK_UINT && it.u <= UINT32_MAX) {
			st->has_state = true;
			st->state = (uint32_t)it.u;
		} else {
			a->state_bad = true;
		}
		return rd_skip(r, level, &it);
	case K_INPUTS:
		return rd_ids(r, level, w, st, a, 0);
	default:
		return rd_ids(r, level, w, st, a, 1);
	}
}

/* The first thing wrong with a step, in the daemon's order. */
static uint8_t step_bad(const step_acc *a, anes_run_wire_step *st)
{
	if (!(a->seen & K_PROGRAM))
		return ANES_RUN_PROGRAM_MISSING;
	if (a->program_bad)
		return ANES_RUN_PROGRAM_TYPE;
	if (a->function_bad)
		return ANES_RUN_FUNCTION_TYPE;
	for (int io = 0; io < 2; io++) {
		if (!(a->seen & (io ? K_OUTPUTS : K_INPUTS)))
			return io ? ANES_RUN_OUTPUTS_MISSING : ANES_RUN_INPUTS_MISSING;
		if (a->ids_bad[io])
			return io ? ANES_RUN_OUTPUTS_TYPE : ANES_RUN_INPUTS_TYPE;
		if (a->bad_item[io] != UINT32_MAX) {
			st->bad_item = a->bad_item[io];
			return io ? ANES_RUN_OUTPUTS_ITEM : ANES_RUN_INPUTS_ITEM;
		}
	}
	if (a->state_bad)
		return ANES_RUN_STATE_TYPE;
	if (a->events)
		return ANES_RUN_STEP_EVENTS;
	return ANES_RUN_OK;
}

static void step_start(anes_run_wire_step *st, step_acc *a)
{
	*st = (anes_run_wire_step){ 0 };
	*a = (step_acc){ .bad_item = { UINT32_MAX, UINT32_MAX } };
}

static void ev_bad(anes_run_wire *w, uint8_t code, bool sig, uint32_t item)
{
	if (w->ev_bad)
		return;
	w->ev_bad = code;
	w->ev_bad_signal = sig;
	w->ev_bad_item = item;
}

/* The params' "wait" (sig false) or "signal", its value at level 2: an
 * array of maps {event, value}.  A key twice in an entry is malformed, as
 * in anes_msg_decode; other keys are skipped (and checked by it). */
static bool rd_events(rd *r, anes_run_wire *w, bool sig)
{
	mp_item it;
	if (!rd_item(r, 2, &it))
		return false;
	if (it.kind != MPK_ARRAY || it.u > ANES_RUN_MAX_EVENTS) {
		ev_bad(w, ANES_RUN_EV_TYPE, sig, 0);
		return rd_skip(r, 2, &it);
	}
	uint8_t *n = sig ? &w->n_signal : &w->n_wait;
	anes_run_wire_ev *v = sig ? w->signal : w->wait;
	for (uint32_t i = 0; i < it.u; i++) {
		mp_item e;
		if (!rd_item(r, 3, &e))
			return false;
		if (e.kind != MPK_MAP) {
			ev_bad(w, ANES_RUN_EV_ENTRY, sig, i);
			if (!rd_skip(r, 3, &e))
				return false;
			continue;
		}
		bool has_ev = false, has_val = false, ok = true;
		uint64_t ev = 0, val = 0;
		for (uint64_t k = 0; k < e.u; k++) {
			mp_item key, x;
			if (!rd_item(r, 4, &key))
				return false;
			bool is_ev = key.kind == MPK_STR && str_is(key.s, key.len, "event");
			bool is_val = key.kind == MPK_STR && str_is(key.s, key.len, "value");
			if (!is_ev && !is_val) {
				r->odd = true;
				if (!rd_skip(r, 4, &key) || !rd_skip_one(r, 4))
					return false;
				continue;
			}
			if ((is_ev && has_ev) || (is_val && has_val))
				return false;   /* the same key twice */
			if (!rd_item(r, 4, &x))
				return false;
			if (x.kind != MPK_UINT || (is_ev && x.u > UINT32_MAX))
				ok = false;
			else if (is_ev)
				ev = x.u;
			else
				val = x.u;
			has_ev = has_ev || is_ev;
			has_val = has_val || is_val;
			if (!rd_skip(r, 4, &x))
				return false;
		}
		if (!ok || !has_ev || !has_val) {
			ev_bad(w, ANES_RUN_EV_ENTRY, sig, i);
			continue;
		}
		bool dup = false;
		for (uint8_t k = 0; k < *n && !dup; k++)
			dup = v[k].event == (uint32_t)ev;
		if (dup) {
			ev_bad(w, ANES_RUN_EV_DUP, sig, i);
			continue;
		}
		v[*n] = (anes_run_wire_ev){ .event = (uint32_t)ev, .value = val };
		(*n)++;
	}
	return true;
}

/* A key of a map at level whose step keys go to st: false for a malformed
 * payload.  *ret_key: the step key read (0: another, skipped). */
static bool rd_step_entry(rd *r, unsigned level, anes_run_wire *w, anes_run_wire_step *st,
                          step_acc *a, unsigned *ret_key)
{
	mp_item k;
	if (!rd_item(r, level, &k))
		return false;
	unsigned key = step_key(&k);
	*ret_key = key;
	if (key != 0 && (a->seen & key))
		return false;   /* the same key twice: anes_msg_decode rejects it */
	if (key == 0 || key == K_STEPS) {
		if (key == 0) {
			/* another key: ignored, but it may repeat another one */
			r->odd = true;
			if (!rd_skip(r, level, &k))
				return false;
		}
		a->seen |= key;
		return key == K_STEPS || rd_skip_one(r, level);
	}
	a->seen |= key;
	if (key == K_WAIT || key == K_SIGNAL) {
		if (level == 2)
			return rd_events(r, w, key == K_SIGNAL);
		a->events = true;   /* in a chain's step: refused */
		return rd_skip_one(r, level);
	}
	return rd_step_value(r, level, key, w, st, a);
}

/* The params' "steps", its value at level 2. */
static bool rd_steps(rd *r, anes_run_wire *w, bool *ret_array_ok, uint32_t *ret_n,
                     uint32_t *ret_not_map)
{
	mp_item it;
	if (!rd_item(r, 2, &it))
		return false;
	*ret_array_ok = it.kind == MPK_ARRAY && it.u <= ANES_MAX_STEPS;
	if (!*ret_array_ok)
		return rd_skip(r, 2, &it);
	*ret_n = (uint32_t)it.u;
	*ret_not_map = UINT32_MAX;
	for (uint32_t i = 0; i < it.u; i++) {
		mp_item sm;
		if (!rd_item(r, 3, &sm))
			return false;
		anes_run_wire_step *st = &w->steps[i];
		step_acc a;
		step_start(st, &a);
		if (sm.kind != MPK_MAP) {
			if (*ret_not_map == UINT32_MAX)
				*ret_not_map = i;
			if (!rd_skip(r, 3, &sm))
				return false;
			continue;
		}
		for (uint64_t k = 0; k < sm.u; k++) {
			unsigned key;
			if (!rd_step_entry(r, 4, w, st, &a, &key))
				return false;
			if (key == K_STEPS && !rd_skip_one(r, 4))
				return false;
		}
		st->bad = step_bad(&a, st);
	}
	return true;
}

int anes_run_wire_parse(const void *buf, size_t len, anes_run_wire *w, msgpack_zone *zone)
{
	rd r = { .p = buf, .end = (const uint8_t *)buf + len };
	mp_item it;

	/* The envelope: anything but [0, msgid, "run", ...] is the decoder's. */
	if (!rd_item(&r, 0, &it) || it.kind != MPK_ARRAY || it.u != 4 ||
	    !rd_item(&r, 1, &it) || it.kind != MPK_UINT || it.u != ANES_MSG_REQUEST ||
	    !rd_item(&r, 1, &it) || it.kind != MPK_UINT || it.u > UINT32_MAX)
		return 0;
	uint32_t msgid = (uint32_t)it.u;
	if (!rd_item(&r, 1, &it) || it.kind != MPK_STR || !str_is(it.s, it.len, "run"))
		return 0;

	if (!rd_item(&r, 1, &it) || it.kind != MPK_MAP)
		return -EBADMSG;
	w->msgid = msgid;
	w->n_ids = 0;
	w->bad = ANES_RUN_OK;
	w->bad_step = 0;
	w->n_wait = w->n_signal = 0;
	w->ev_bad = ANES_RUN_EV_OK;
	w->ev_bad_signal = false;
	w->ev_bad_item = 0;
	anes_run_wire_step single;
	step_acc a;
	step_start(&single, &a);
	bool steps_ok = false;
	uint32_t n_steps = 0, not_map = UINT32_MAX;
	for (uint64_t i = 0; i < it.u; i++) {
		unsigned key;
		if (!rd_step_entry(&r, 2, w, &single, &a, &key))
			return -EBADMSG;
		if (key == K_STEPS && !rd_steps(&r, w, &steps_ok, &n_steps, &not_map))
			return -EBADMSG;
	}
	if (r.p != r.end)
		return -EBADMSG;

	if (a.seen & K_STEPS) {
		w->chain = true;
		w->n_steps = steps_ok ? n_steps : 0;
		if (!steps_ok) {
			w->bad = ANES_RUN_STEPS_TYPE;
		} else if (n_steps == 0) {
			w->bad = ANES_RUN_STEPS_EMPTY;
		} else if (a.seen & K_PROGRAM) {
			w->bad = ANES_RUN_STEPS_AND_PROGRAM;
		} else if (not_map != UINT32_MAX) {
			w->bad = ANES_RUN_STEP_NOT_MAP;
			w->bad_step = not_map;
		}
	} else {
		single.bad = step_bad(&a, &single);
		w->chain = false;
		w->n_steps = 1;
		w->steps[0] = single;
	}
	if (r.odd) {
		/* Content the reader skipped: the decoder checks its keys. */
		anes_msg m;
		int rc = anes_msg_decode(buf, len, zone, &m);
		msgpack_zone_clear(zone);
		if (rc < 0)
			return rc == -ENOMEM ? -ENOMEM : -EBADMSG;
	}
	return 1;
}
