/* SPDX-License-Identifier: MIT */
/*
 * Shared by the MIL fuzz targets: the fixed weight blobs and the input split.
 *
 * Input: MIL text up to the first NUL byte; the bytes after it are a third
 * weight blob, "@model_path/weights/fuzz.bin" (and, for fuzz_mil_run, the
 * data the inputs are filled with).
 *
 * Fixed blobs (the layout of Apple's weight.bin: a 64-byte file header, then
 * per tensor a 64-byte chunk header {u32 0xDEADBEEF, u32 data type (1 fp16,
 * 2 fp32, 3 uint8, 4 int8), u64 size, u64 data offset} and the data):
 *   @model_path/weights/w.bin      offset 64: fp16, 4096 halfs (e.g. [64, 64]);
 *                                  offset 8320: fp32, 16 floats (e.g. [4, 4])
 *   @model_path/weights/small.bin  offset 64: int8, 16 bytes; offset 144: uint8, 16 bytes
 */
#ifndef ANES_FUZZ_MIL_COMMON_H
#define ANES_FUZZ_MIL_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "mil.h"

static inline void fuzz_chunk(uint8_t *blob, size_t at, uint32_t dtype, uint64_t size, uint64_t off)
{
	uint32_t magic = 0xDEADBEEFu;
	for (int i = 0; i < 4; i++)
		blob[at + i] = (uint8_t)(magic >> (8 * i));
	for (int i = 0; i < 4; i++)
		blob[at + 4 + i] = (uint8_t)(dtype >> (8 * i));
	for (int i = 0; i < 8; i++) {
		blob[at + 8 + i] = (uint8_t)(size >> (8 * i));
		blob[at + 16 + i] = (uint8_t)(off >> (8 * i));
	}
}

/* weights[0..1] are the fixed blobs, weights[2] is set per input. */
static inline anes_weight *fuzz_weights(void)
{
	static anes_weight w[3];
	static uint8_t big[8448], small[224];

	if (w[0].path)
		return w;
	big[0] = 2;  /* tensors in the file */
	big[4] = 2;  /* version */
	fuzz_chunk(big, 64, 1, 8192, 128);
	for (size_t i = 0; i < 4096; i++) {
		uint16_t h = anes_f32_to_f16((float)((int)(i % 97) - 48) * 0.125f);
		memcpy(big + 128 + 2 * i, &h, 2);
	}
	fuzz_chunk(big, 8320, 2, 64, 8384);
	for (size_t i = 0; i < 16; i++) {
		float f = (float)i - 7.5f;
		memcpy(big + 8384 + 4 * i, &f, 4);
	}
	small[0] = 2;
	small[4] = 2;
	fuzz_chunk(small, 64, 4, 16, 128);
	fuzz_chunk(small, 144, 3, 16, 208);
	for (size_t i = 0; i < 16; i++) {
		small[128 + i] = (uint8_t)(i * 17);
		small[208 + i] = (uint8_t)(255 - i);
	}
	w[0] = (anes_weight){ "@model_path/weights/w.bin", big, sizeof big, false, false, -1 };
	w[1] = (anes_weight){ "@model_path/weights/small.bin", small, sizeof small, false, false, -1 };
	w[2].path = "@model_path/weights/fuzz.bin";
	return w;
}

/* One input, split: text_len bytes of MIL, then the tail (blob_len bytes),
 * each in an exact-size heap copy so that ASan sees any read past either
 * end; the tail is also w[2] (w from fuzz_weights()). */
typedef struct fuzz_input {
	char *text;
	size_t text_len;
	uint8_t *blob;
	size_t blob_len;
} fuzz_input;

static inline void fuzz_input_split(const uint8_t *data, size_t size, anes_weight *w,
                                    fuzz_input *in)
{
	const uint8_t *nul = memchr(data, 0, size);
	in->text_len = nul ? (size_t)(nul - data) : size;
	in->blob_len = nul ? size - in->text_len - 1 : 0;
	in->text = malloc(in->text_len ? in->text_len : 1);
	in->blob = malloc(in->blob_len ? in->blob_len : 1);
	if (!in->text || !in->blob)
		abort();
	if (in->text_len)
		memcpy(in->text, data, in->text_len);
	if (in->blob_len)
		memcpy(in->blob, nul + 1, in->blob_len);
	w[2].data = in->blob;
	w[2].len = in->blob_len;
}

static inline void fuzz_input_free(fuzz_input *in)
{
	free(in->text);
	free(in->blob);
}

#endif
