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
	anes_pack_str(pk, message ? message : "");
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

/* ---- the usual run request, read in one pass ---------------------------- */

/* At most 6 + ANES_MAX_STEPS x 9 + ANES_RUN_WIRE_MAX_IDS objects, four
 * levels deep, maps of at most 4 keys: within every limit anes_mp_check
 * enforces, so what anes_run_wire_parse accepts passes it. */
_Static_assert(6 + ANES_MAX_STEPS * 9 + ANES_RUN_WIRE_MAX_IDS <= ANES_MP_MAX_OBJECTS,
               "a run read in one pass stays within the object limit");

typedef struct rd {
	const uint8_t *p, *end;
} rd;

static size_t rd_left(const rd *r)
{
	return (size_t)(r->end - r->p);
}

/* A non-negative integer in 1, 2, 3 or 5 bytes. */
static bool rd_u32(rd *r, uint32_t *ret)
{
	if (rd_left(r) < 1)
		return false;
	uint8_t b = r->p[0];
	unsigned n;
	if (b <= 0x7f) {
		r->p++;
		*ret = b;
		return true;
	}
	switch (b) {
	case 0xcc: n = 1; break;
	case 0xcd: n = 2; break;
	case 0xce: n = 4; break;
	default: return false;
	}
	if (rd_left(r) < 1 + (size_t)n)
		return false;
	*ret = (uint32_t)be_read(r->p + 1, n);
	r->p += 1 + n;
	return true;
}

/* fixstr, str8 or str16. */
static bool rd_str(rd *r, const char **ret, uint32_t *ret_len)
{
	if (rd_left(r) < 1)
		return false;
	uint8_t b = r->p[0];
	unsigned hdr;
	uint32_t n;
	if (b >= 0xa0 && b <= 0xbf) {
		hdr = 1;
		n = b & 0x1f;
	} else if (b == 0xd9 || b == 0xda) {
		hdr = b == 0xd9 ? 2 : 3;
		if (rd_left(r) < hdr)
			return false;
		n = (uint32_t)be_read(r->p + 1, hdr - 1);
	} else {
		return false;
	}
	if (rd_left(r) - hdr < n)
		return false;
	*ret = (const char *)r->p + hdr;
	*ret_len = n;
	r->p += hdr + n;
	return true;
}

/* fixarray or array16. */
static bool rd_array(rd *r, uint32_t *ret_n)
{
	if (rd_left(r) < 1)
		return false;
	uint8_t b = r->p[0];
	if (b >= 0x90 && b <= 0x9f) {
		r->p++;
		*ret_n = b & 0x0f;
		return true;
	}
	if (b != 0xdc || rd_left(r) < 3)
		return false;
	*ret_n = (uint32_t)be_read(r->p + 1, 2);
	r->p += 3;
	return true;
}

static bool rd_fixmap(rd *r, uint32_t *ret_n)
{
	if (rd_left(r) < 1 || r->p[0] < 0x80 || r->p[0] > 0x8f)
		return false;
	*ret_n = r->p[0] & 0x0f;
	r->p++;
	return true;
}

static bool str_is(const char *s, uint32_t len, const char *lit)
{
	return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

/* An array of surface IDs, appended to w->ids; *ret_at is where it starts. */
static bool rd_ids(rd *r, anes_run_wire *w, uint32_t *ret_n, uint32_t *ret_at)
{
	uint32_t n;
	if (!rd_array(r, &n) || n > ANES_RUN_WIRE_MAX_IO || n > ANES_RUN_WIRE_MAX_IDS - w->n_ids)
		return false;
	uint32_t at = w->n_ids;
	for (uint32_t i = 0; i < n; i++)
		if (!rd_u32(r, &w->ids[at + i]))
			return false;
	w->n_ids += n;
	*ret_n = n;
	*ret_at = at;
	return true;
}

enum { K_PROGRAM = 1, K_FUNCTION = 2, K_INPUTS = 4, K_OUTPUTS = 8 };

static bool rd_step(rd *r, anes_run_wire *w, anes_run_wire_step *st)
{
	uint32_t n;
	unsigned seen = 0;
	if (!rd_fixmap(r, &n) || n < 3 || n > 4)
		return false;
	st->function = NULL;
	st->function_len = 0;
	for (uint32_t i = 0; i < n; i++) {
		const char *k;
		uint32_t klen;
		unsigned key;
		bool ok;
		if (!rd_str(r, &k, &klen))
			return false;
		if (str_is(k, klen, "program"))
			key = K_PROGRAM;
		else if (str_is(k, klen, "function"))
			key = K_FUNCTION;
		else if (str_is(k, klen, "inputs"))
			key = K_INPUTS;
		else if (str_is(k, klen, "outputs"))
			key = K_OUTPUTS;
		else
			return false;
		if (seen & key)
			return false;   /* the same key twice: anes_msg_decode rejects it */
		seen |= key;
		switch (key) {
		case K_PROGRAM: ok = rd_u32(r, &st->program); break;
		case K_FUNCTION:
			ok = rd_str(r, &st->function, &st->function_len);
			if (st->function_len == 0)
				st->function = NULL;   /* as msgpack-c decodes "" */
			break;
		case K_INPUTS: ok = rd_ids(r, w, &st->n_in, &st->in); break;
		default: ok = rd_ids(r, w, &st->n_out, &st->out); break;
		}
		if (!ok)
			return false;
	}
	return (seen & (K_PROGRAM | K_INPUTS | K_OUTPUTS)) == (K_PROGRAM | K_INPUTS | K_OUTPUTS);
}

int anes_run_wire_parse(const void *buf, size_t len, anes_run_wire *w)
{
	rd r = { buf, (const uint8_t *)buf + len };
	uint32_t n, type, msgid, method_len;
	const char *method;

	if (!rd_array(&r, &n) || n != 4 || !rd_u32(&r, &type) || type != ANES_MSG_REQUEST ||
	    !rd_u32(&r, &msgid) || !rd_str(&r, &method, &method_len) ||
	    !str_is(method, method_len, "run"))
		return 0;
	w->msgid = msgid;
	w->n_ids = 0;
	rd params = r;
	const char *k;
	uint32_t klen;
	if (rd_fixmap(&params, &n) && n == 1 && rd_str(&params, &k, &klen) &&
	    str_is(k, klen, "steps")) {
		if (!rd_array(&params, &n) || n == 0 || n > ANES_MAX_STEPS)
			return 0;
		for (uint32_t i = 0; i < n; i++)
			if (!rd_step(&params, w, &w->steps[i]))
				return 0;
		w->chain = true;
		w->n_steps = n;
		r = params;
	} else {
		if (!rd_step(&r, w, &w->steps[0]))
			return 0;
		w->chain = false;
		w->n_steps = 1;
	}
	return r.p == r.end ? 1 : 0;
}
