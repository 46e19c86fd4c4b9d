/* SPDX-License-Identifier: MIT */
/* Helpers shared by the libanes_proto suites (test_wire, test_msgpack,
 * test_io, test_shm): hand-made payloads, the validator on exact-size
 * copies, msgpack buffers, fd counts.  They report failures with criterion
 * assertions. */
#ifndef PROTO_UTIL_H
#define PROTO_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "anes_proto.h"

/* What an out-parameter holds before a call that must leave it alone on
 * failure. */
#define SENT64 0x5a5a5a5a5a5a5a5aull
#define SENT32 0x5a5a5a5au

/* A growable byte buffer for hand-made payloads. */
typedef struct bytes {
	uint8_t *p;
	size_t n, cap;
} bytes;

void b_put(bytes *b, const void *d, size_t n);
void b_u8(bytes *b, uint8_t v);
/* v big-endian in n bytes. */
void b_be(bytes *b, uint64_t v, unsigned n);
/* Hex pairs, spaces ignored. */
void b_hex(bytes *b, const char *s);
void b_free(bytes *b);

/* Run the validator on an exact-size heap copy, so ASan sees any overread. */
int check_exact(const uint8_t *p, size_t n);
int check_hex(const char *hex);

/* msgpack into a growable buffer, for envelopes anes_pack_* cannot make. */
typedef struct mp {
	msgpack_sbuffer sb;
	msgpack_packer pk;
} mp;

void mp_init(mp *m);
void mp_free(mp *m);

/* The fds open in this process (macOS: /dev/fd lists them all). */
int count_fds(void);
bool fd_is_open(int fd);
/* Shared memory of size bytes to pass as an fd: a memfd on Linux, an
 * unlinked temporary file elsewhere. */
int shared_fd(size_t size);

#endif
