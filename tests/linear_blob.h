/* SPDX-License-Identifier: MIT */
/*
 * The program y [1, OUT] = linear(x [1, IN], W [OUT, IN]) with W in a weight
 * blob at "@model_path/weights/weight.bin", for the tests of weights by file,
 * fd and inline bytes: tests/test_wfiles.c, tests/test_inline_weights.c and
 * tests/test_worker_wire.c.  Header-only: those link different libraries
 * (test_worker_wire.c has no libaneshare and no daemon harness).
 */
#ifndef ANES_TEST_LINEAR_BLOB_H
#define ANES_TEST_LINEAR_BLOB_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"

#define LB_WPATH "@model_path/weights/weight.bin"

/* The program's MIL text for the given shape, into t (1 KiB is enough). */
static inline const char *lb_mil(char *t, size_t size, int in, int out)
{
	snprintf(t, size,
	         "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, %d]> x) {\n"
	         "        tensor<fp16, [%d, %d]> W = const()[name = string(\"W\"), val = tensor<fp16, [%d, %d]>("
	         "BLOBFILE(path = string(\"" LB_WPATH "\"), offset = uint64(64)))];\n"
	         "        tensor<fp16, [1, %d]> y = linear(x = x, weight = W)[name = string(\"y\")];\n"
	         "    } -> (y);\n}\n",
	         in, out, in, out, in, out);
	return t;
}

/* The usual weights: W[o][i] = ((o * 7 + i * 3) % 13 - 6) / 8 + seed. */
static inline float lb_wval(int o, int i, float seed)
{
	return (float)((o * 7 + i * 3) % 13 - 6) / 8.0f + seed;
}

/* The blob (header, one record at 64, fp16 data at 128) of W[o][i] =
 * w(o, i, seed), calloc'd (the caller frees it), or NULL when out of memory. */
static inline uint8_t *lb_blob(int out, int in, float (*w)(int o, int i, float seed), float seed,
                               size_t *ret_len)
{
	size_t len = 128 + (size_t)out * (size_t)in * 2;
	uint8_t *b = calloc(1, len);
	if (!b)
		return NULL;
	b[0] = 1;
	b[4] = 2;
	uint32_t magic = 0xDEADBEEFu, dt = 1;
	uint64_t size = (uint64_t)out * (uint64_t)in * 2, off = 128;
	memcpy(b + 64, &magic, 4);
	memcpy(b + 68, &dt, 4);
	memcpy(b + 72, &size, 8);
	memcpy(b + 80, &off, 8);
	for (int o = 0; o < out; o++)
		for (int i = 0; i < in; i++) {
			uint16_t h = anes_f32_to_f16_soft(w(o, i, seed));
			memcpy(b + 128 + 2 * ((size_t)o * (size_t)in + (size_t)i), &h, 2);
		}
	*ret_len = len;
	return b;
}

#endif
