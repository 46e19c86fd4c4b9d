/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: compile MIL with the CPU backend and run every function of
 * the program on data from the input (see fuzz_mil_common.h for the input
 * layout: the bytes after the first NUL are both a weight blob and the
 * input data, repeated as needed; with no such bytes a fixed pattern that
 * includes NaNs and infinities is used).
 *
 * Programs whose values add up to more than 4 MiB are only compiled, not
 * run, to keep each input fast.  Input and output buffers are allocated at
 * exactly the size the function info gives, so ASan catches any access past
 * them.  Each function runs twice (the second run reuses the first run's
 * working memory) and must produce the same bytes both times.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "fuzz_mil_common.h"

#define RUN_MAX_BYTES ((uint64_t)4 << 20)

static void fill(uint8_t *dst, size_t n, const uint8_t *src, size_t src_len, size_t *cursor)
{
	for (size_t i = 0; i < n; i++) {
		if (src_len) {
			dst[i] = src[*cursor % src_len];
		} else {
			/* fp16 0x7c00 inf, 0x7e00 NaN, 0xfc00 -inf among small values */
			static const uint8_t pat[] = { 0x00, 0x3c, 0x00, 0xc0, 0x00, 0x7c, 0x00, 0x7e,
			                               0x66, 0x2e, 0x00, 0xfc, 0x01, 0x00, 0xff, 0x7b };
			dst[i] = pat[*cursor % sizeof pat];
		}
		(*cursor)++;
	}
}

static void run_function(anes_backend *be, anes_bprogram *prog, uint32_t fi, const uint8_t *src,
                         size_t src_len)
{
	const anes_function_info *info = &prog->functions[fi];
	void *in[ANES_MAX_IO], *out[ANES_MAX_IO], *out2[ANES_MAX_IO];
	char errbuf[256];
	size_t cursor = 0;

	CHECK(info->n_inputs <= ANES_MAX_IO && info->n_outputs <= ANES_MAX_IO);
	for (uint32_t i = 0; i < info->n_inputs; i++) {
		size_t n = (size_t)info->inputs[i].bytes;
		in[i] = malloc(n ? n : 1);
		CHECK(in[i]);
		fill(in[i], n, src, src_len, &cursor);
	}
	for (uint32_t i = 0; i < info->n_outputs; i++) {
		size_t n = (size_t)info->outputs[i].bytes;
		out[i] = malloc(n ? n : 1);
		out2[i] = malloc(n ? n : 1);
		CHECK(out[i] && out2[i]);
		memset(out[i], 0xa5, n);
		memset(out2[i], 0x5a, n);
	}
	/* states (run_states): the same initial contents for both runs, which
	 * must then leave the same states */
	void *st[ANES_MAX_IO], *st0[ANES_MAX_IO], *st2[ANES_MAX_IO];
	CHECK(info->n_states <= ANES_MAX_IO);
	for (uint32_t i = 0; i < info->n_states; i++) {
		size_t n = (size_t)info->states[i].bytes;
		st[i] = aligned_alloc(64, (n + 127) & ~(size_t)63);
		st0[i] = malloc(n ? n : 1);
		st2[i] = aligned_alloc(64, (n + 127) & ~(size_t)63);
		CHECK(st[i] && st0[i] && st2[i]);
		fill(st0[i], n, src, src_len, &cursor);
		memcpy(st[i], st0[i], n);
		memcpy(st2[i], st0[i], n);
	}
	int rc = be->ops->run(be, prog, fi, (const void *const *)in, out, errbuf, sizeof errbuf);
	CHECK(rc <= 0);
	CHECK(!info->n_states || rc == -ENOTSUP);
	if (info->n_states) {
		rc = be->ops->run_states(be, prog, fi, (const void *const *)in, out, st, errbuf, sizeof errbuf);
		CHECK(rc <= 0);
	}
	int rc2 = info->n_states
	                  ? be->ops->run_states(be, prog, fi, (const void *const *)in, out2, st2, errbuf, sizeof errbuf)
	                  : be->ops->run(be, prog, fi, (const void *const *)in, out2, errbuf, sizeof errbuf);
	CHECK(rc2 == rc);
	if (rc == 0) {
		for (uint32_t i = 0; i < info->n_outputs; i++)
			CHECK(memcmp(out[i], out2[i], (size_t)info->outputs[i].bytes) == 0);
		for (uint32_t i = 0; i < info->n_states; i++)
			CHECK(memcmp(st[i], st2[i], (size_t)info->states[i].bytes) == 0);
	}
	for (uint32_t i = 0; i < info->n_states; i++) {
		free(st[i]);
		free(st0[i]);
		free(st2[i]);
	}
	for (uint32_t i = 0; i < info->n_inputs; i++)
		free(in[i]);
	for (uint32_t i = 0; i < info->n_outputs; i++) {
		free(out[i]);
		free(out2[i]);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static anes_backend *be;
	anes_weight *w = fuzz_weights();
	char errbuf[256];

	if (!be)
		CHECK(anes_cpu_backend_new(1, &be) == 0);
	fuzz_input in;
	fuzz_input_split(data, size, w, &in);

	/* the size of all values decides whether to run it */
	anes_mil_program *mp = NULL;
	bool run = false;
	if (anes_mil_parse(in.text, in.text_len, w, 3, &mp, errbuf, sizeof errbuf) == 0) {
		run = mp->total_bytes <= RUN_MAX_BYTES;
		anes_mil_program_free(mp);
	}

	anes_bprogram *prog = NULL;
	int rc = be->ops->compile(be, in.text, in.text_len, w, 3, &prog, errbuf, sizeof errbuf);
	if (rc == 0) {
		CHECK(prog && prog->n_functions >= 1 && prog->backend == be);
		if (run)
			for (uint32_t fi = 0; fi < prog->n_functions; fi++)
				run_function(be, prog, fi, in.blob, in.blob_len);
		be->ops->program_free(be, prog);
	} else {
		CHECK(rc == -EINVAL || rc == -ENOTSUP || rc == -ENOMEM);
		CHECK(memchr(errbuf, 0, sizeof errbuf));
	}
	fuzz_input_free(&in);
	return 0;
}
