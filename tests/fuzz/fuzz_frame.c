/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: one frame as it arrives from an untrusted client, through
 * everything the daemon (and the client library) does with it before any
 * state is touched:
 *
 *   - anes_frame_header_parse on the first 8 bytes (and its round trip with
 *     anes_frame_header_write);
 *   - anes_mp_check / anes_msg_decode on the rest, the payload.  If the
 *     validator accepts a payload, msgpack-c must unpack all of it (the
 *     validator is what bounds msgpack-c's allocation, so it must never be
 *     laxer than the unpacker), and a rejected payload must not decode;
 *   - the typed accessors on every map of the message, with the keys the
 *     daemon and the client read and with each key the map holds, checking
 *     the accessors agree with the object's type;
 *   - a decoded request or notification packed again with the anes_pack_*
 *     helpers must decode to the same envelope;
 *   - anes_run_wire_parse (the daemon's one decoder of runs) takes a
 *     payload exactly when anes_msg_decode accepts it as a run request,
 *     and reads what its accessors read, errors included
 *     (tests/run_wire_check.h).
 *
 * Input: header (8 bytes) + payload; the payload is decoded whatever the
 * header says, so the fuzzer need not get the length right.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../run_wire_check.h"
#include "anes_proto.h"
#include "fuzz.h"

/* Keys the daemon (daemon/server/methods.c) and the client library (client/)
 * read, with the accessor each uses. */
static const char *const u64_keys[] = {
	"protocol", "size", "code", "uptime_ms", "clients", "surfaces", "surface_bytes", "runs",
	"compiles", "cache_hits", "bytes", "elapsed_us", "max_frame", "max_fds_per_frame",
	"max_surfaces", "max_surface_bytes", "max_total_surface_bytes", "max_programs",
	"max_inflight", "max_mil_bytes", "max_weights", "lane_runs", "lane_spins", "lane_spin_hits", "lane_spin_gaps",
	"lane_spin_skips", "uses", "ttl_ms", "expires_ms", "iosurface_id", "shared_total", "tokens",
	"holders_total",
};
static const char *const u32_keys[] = { "id", "program", "refs" };
static const char *const str_keys[] = {
	"client", "mil", "function", "message", "name", "server", "version", "backend", "key", "dtype",
	"token",
};
static const char *const array_keys[] = { "inputs", "outputs", "programs", "functions", "shape",
	                                         "shared", "holders" };
static const char *const map_keys[] = { "weights", "limits" };
static const char *const bool_keys[] = { "cached", "deferred", "read_only" };

#define N(a) (sizeof(a) / sizeof((a)[0]))

static volatile uint64_t sink;

/* Every accessor on one key; their answers must agree with what anes_mp_get
 * finds there. */
static void access_key(const msgpack_object *map, const char *key)
{
	const msgpack_object *o = anes_mp_get(map, key);
	uint64_t u64;
	uint32_t u32, n;
	int64_t i64;
	bool b;
	const char *s;
	const void *bin;
	const msgpack_object *items, *sub;
	int r;

	r = anes_mp_u64(map, key, UINT64_MAX, &u64);
	CHECK(o ? (r == 0) == (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) : r == -ENOENT);
	if (r == 0)
		CHECK(u64 == o->via.u64);
	r = anes_mp_u64(map, key, 1000, &u64);
	if (r == 0)
		CHECK(u64 <= 1000);
	r = anes_mp_u32(map, key, &u32);
	CHECK(o ? (r == 0) == (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= UINT32_MAX)
	        : r == -ENOENT);
	r = anes_mp_i64(map, key, &i64);
	if (r == 0)
		sink += (uint64_t)i64;
	r = anes_mp_bool(map, key, &b);
	CHECK(o ? (r == 0) == (o->type == MSGPACK_OBJECT_BOOLEAN) : r == -ENOENT);
	r = anes_mp_str(map, key, UINT32_MAX, &s, &n);
	CHECK(o ? (r == 0) == (o->type == MSGPACK_OBJECT_STR) : r == -ENOENT);
	if (r == 0) {
		CHECK(n == 0 || s != NULL);
		for (uint32_t i = 0; i < n; i++)  /* the bytes must be readable */
			sink += (uint8_t)s[i];
		sink += (uint64_t)anes_wire_error_from_name(s, n);
	}
	r = anes_mp_str(map, key, 64, &s, &n);
	if (r == 0)
		CHECK(n <= 64);
	r = anes_mp_bin(map, key, UINT32_MAX, &bin, &n);
	CHECK(o ? (r == 0) == (o->type == MSGPACK_OBJECT_BIN) : r == -ENOENT);
	if (r == 0 && n > 0)
		sink += ((const uint8_t *)bin)[n - 1];
	r = anes_mp_array(map, key, 8, &items, &n);
	if (r == 0) {
		CHECK(n <= 8);
		for (uint32_t i = 0; i < n; i++)
			if (anes_mp_item_u32(&items[i], &u32) == 0)
				sink += u32;
	}
	r = anes_mp_map(map, key, 4, &sub);
	if (r == 0)
		CHECK(sub->type == MSGPACK_OBJECT_MAP && sub->via.map.size <= 4);
}

/* What daemon/server/methods.c does with program.compile's "weights". */
static void access_weights(const msgpack_object *params)
{
	const msgpack_object *wmap;

	if (anes_mp_map(params, "weights", 256, &wmap) < 0)
		return;
	for (uint32_t i = 0; i < wmap->via.map.size; i++) {
		const msgpack_object_kv *kv = &wmap->via.map.ptr[i];
		if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size == 0 ||
		    kv->key.via.str.size > 256 || memchr(kv->key.via.str.ptr, '\0', kv->key.via.str.size))
			return;
		if (kv->val.type != MSGPACK_OBJECT_BIN)
			return;
		if (kv->val.via.bin.size)
			sink += (uint8_t)kv->val.via.bin.ptr[kv->val.via.bin.size - 1];
	}
}

static void access_map(const msgpack_object *map)
{
	for (size_t i = 0; i < N(u64_keys); i++)
		access_key(map, u64_keys[i]);
	for (size_t i = 0; i < N(u32_keys); i++)
		access_key(map, u32_keys[i]);
	for (size_t i = 0; i < N(str_keys); i++)
		access_key(map, str_keys[i]);
	for (size_t i = 0; i < N(array_keys); i++)
		access_key(map, array_keys[i]);
	for (size_t i = 0; i < N(map_keys); i++)
		access_key(map, map_keys[i]);
	for (size_t i = 0; i < N(bool_keys); i++)
		access_key(map, bool_keys[i]);
	access_weights(map);

	/* each string key the map holds (the first 64) */
	uint32_t n = map->via.map.size < 64 ? map->via.map.size : 64;
	for (uint32_t i = 0; i < n; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key;
		char key[ANES_METHOD_MAX + 1];
		if (k->type != MSGPACK_OBJECT_STR || k->via.str.size > ANES_METHOD_MAX ||
		    (k->via.str.size && memchr(k->via.str.ptr, '\0', k->via.str.size)))
			continue;
		if (k->via.str.size)
			memcpy(key, k->via.str.ptr, k->via.str.size);
		key[k->via.str.size] = 0;
		/* keys are unique, so the lookup finds this very entry */
		CHECK(anes_mp_get(map, key) == &map->via.map.ptr[i].val);
		CHECK(anes_mp_str_eq(k, key));
		access_key(map, key);
	}
}

/* Every map in the message, at any depth. */
static void walk(const msgpack_object *o, unsigned depth)
{
	CHECK(depth <= ANES_MP_MAX_DEPTH);
	if (o->type == MSGPACK_OBJECT_MAP) {
		CHECK(o->via.map.size <= ANES_MP_MAX_MAP);
		access_map(o);
		for (uint32_t i = 0; i < o->via.map.size; i++) {
			walk(&o->via.map.ptr[i].key, depth + 1);
			walk(&o->via.map.ptr[i].val, depth + 1);
		}
	} else if (o->type == MSGPACK_OBJECT_ARRAY) {
		for (uint32_t i = 0; i < o->via.array.size; i++)
			walk(&o->via.array.ptr[i], depth + 1);
	}
}

/* Pack m again with the library's packers; it must decode to the same thing. */
static void repack(const anes_msg *m)
{
	anes_frame f;
	void *data;
	size_t len;
	uint32_t plen;
	unsigned nfds;

	anes_frame_init(&f);
	switch (m->type) {
	case ANES_MSG_REQUEST:
		msgpack_pack_array(&f.pk, 4);
		msgpack_pack_uint8(&f.pk, ANES_MSG_REQUEST);
		msgpack_pack_uint32(&f.pk, m->msgid);
		anes_pack_strn(&f.pk, m->method, m->method_len);
		msgpack_pack_object(&f.pk, *m->params);
		break;
	case ANES_MSG_NOTIFY:
		msgpack_pack_array(&f.pk, 3);
		msgpack_pack_uint8(&f.pk, ANES_MSG_NOTIFY);
		anes_pack_strn(&f.pk, m->method, m->method_len);
		msgpack_pack_object(&f.pk, *m->params);
		break;
	case ANES_MSG_RESPONSE:
		if (m->error) {
			int code;
			const char *msg;
			uint32_t msg_len;
			if (anes_msg_error(m, &code, &msg, &msg_len) < 0) {
				anes_frame_release(&f);
				return;
			}
			char text[128];
			snprintf(text, sizeof text, "%.*s", (int)(msg_len < 100 ? msg_len : 100), msg);
			anes_pack_error(&f.pk, m->msgid, code, text);
		} else {
			anes_pack_result(&f.pk, m->msgid, m->result->via.map.size);
			for (uint32_t i = 0; i < m->result->via.map.size; i++) {
				msgpack_pack_object(&f.pk, m->result->via.map.ptr[i].key);
				msgpack_pack_object(&f.pk, m->result->via.map.ptr[i].val);
			}
		}
		break;
	}
	CHECK(anes_frame_finish(&f, 0, UINT32_MAX, &data, &len) == 0);
	anes_frame_release(&f);  /* empty after finish: a no-op */
	CHECK(anes_frame_header_parse(data, UINT32_MAX, &plen, &nfds) == 0);
	CHECK(plen == len - ANES_FRAME_HEADER_SIZE && nfds == 0);

	msgpack_zone zone;
	anes_msg m2;
	CHECK(msgpack_zone_init(&zone, 4096));
	int r = anes_msg_decode((const uint8_t *)data + ANES_FRAME_HEADER_SIZE, plen, &zone, &m2);
	if (r == -ENOMEM) {
		msgpack_zone_destroy(&zone);
		free(data);
		return;
	}
	CHECK(r == 0);
	CHECK(m2.type == m->type && m2.msgid == m->msgid);
	if (m->type != ANES_MSG_RESPONSE) {
		/* an empty str leaves ptr NULL (msgpack-c), which memcmp may not take */
		CHECK(m2.method_len == m->method_len &&
		      (m->method_len == 0 || memcmp(m2.method, m->method, m->method_len) == 0));
		CHECK(m2.params->via.map.size == m->params->via.map.size);
	} else {
		CHECK((m2.error != NULL) == (m->error != NULL));
		if (m->result)
			CHECK(m2.result->via.map.size == m->result->via.map.size);
	}
	msgpack_zone_destroy(&zone);
	free(data);
}

static const char *const methods[] = {
	"hello", "surface.create", "surface.import", "surface.release", "surface.export", "program.compile",
	"program.info", "program.release", "run", "status", "error",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < ANES_FRAME_HEADER_SIZE)
		return 0;

	/* header */
	uint32_t len;
	unsigned nfds;
	int r = anes_frame_header_parse(data, ANES_FRAME_MAX_LOWEST, &len, &nfds);
	CHECK(r == 0 || r == -EPROTO || r == -EMSGSIZE);
	if (r == 0) {
		uint8_t hdr[ANES_FRAME_HEADER_SIZE];
		CHECK(len <= ANES_FRAME_MAX_LOWEST && nfds <= ANES_MAX_FDS_PER_FRAME);
		anes_frame_header_write(hdr, len, nfds);
		CHECK(memcmp(hdr, data, sizeof hdr) == 0);
	}

	/* payload: copied, so that ASan sees reads past its end */
	size_t plen = size - ANES_FRAME_HEADER_SIZE;
	uint8_t *payload = malloc(plen ? plen : 1);
	CHECK(payload);
	memcpy(payload, data + ANES_FRAME_HEADER_SIZE, plen);

	msgpack_zone zone;
	CHECK(msgpack_zone_init(&zone, 4096));

	/* the validator must never accept what msgpack-c cannot unpack whole */
	int checked = anes_mp_check(payload, plen);
	CHECK(checked == 0 || checked == -EBADMSG);
	if (checked == 0) {
		msgpack_object root;
		size_t off = 0;
		msgpack_unpack_return ur = msgpack_unpack((const char *)payload, plen, &off, &zone, &root);
		CHECK(ur == MSGPACK_UNPACK_SUCCESS || ur == MSGPACK_UNPACK_NOMEM_ERROR);
		if (ur == MSGPACK_UNPACK_SUCCESS)
			CHECK(off == plen);
		msgpack_zone_clear(&zone);
	}

	/* the run decoder (anes_run_wire_parse) never reads a request other
	 * than the general decoder does */
	const char *why = NULL;
	int wr = run_wire_agrees(payload, plen, &why);
	if (wr < 0)
		fprintf(stderr, "run_wire: %s\n", why);
	CHECK(wr >= 0);

	anes_msg m;
	r = anes_msg_decode(payload, plen, &zone, &m);
	CHECK(r == 0 || r == -EBADMSG || r == -ENOMEM);
	if (checked < 0)
		CHECK(r < 0);
	if (r == 0) {
		CHECK(m.type == ANES_MSG_REQUEST || m.type == ANES_MSG_RESPONSE || m.type == ANES_MSG_NOTIFY);
		if (m.type == ANES_MSG_RESPONSE) {
			CHECK((m.error == NULL) != (m.result == NULL));
			CHECK(m.method == NULL && m.params == NULL);
			int code;
			const char *msg;
			uint32_t msg_len;
			if (anes_msg_error(&m, &code, &msg, &msg_len) == 0) {
				CHECK(m.error != NULL && code >= 0);
				sink += (uintptr_t)anes_wire_error_name(code);
			}
			walk(m.error ? m.error : m.result, 1);
		} else {
			CHECK(m.method_len <= ANES_METHOD_MAX);   /* "" is well formed: unknown_method */
			CHECK(m.params && m.params->type == MSGPACK_OBJECT_MAP);
			unsigned matches = 0;
			for (size_t i = 0; i < N(methods); i++)
				matches += anes_msg_method_is(&m, methods[i]);
			CHECK(matches <= 1);
			if (m.type == ANES_MSG_NOTIFY && anes_msg_method_is(&m, "error")) {
				int code;
				const char *msg;
				uint32_t msg_len;
				(void)anes_msg_error(&(anes_msg){ .error = m.params }, &code, &msg, &msg_len);
			}
			walk(m.params, 1);
		}
		repack(&m);
	}
	msgpack_zone_destroy(&zone);
	free(payload);
	return 0;
}
