/* SPDX-License-Identifier: MIT */
/*
 * The libFuzzer entry point shared by the fuzz targets in this folder.  Each
 * fuzz_NAME.c defines it; built with -fsanitize=fuzzer it is driven by
 * libFuzzer, built with replay.c it replays the committed inputs in
 * tests/fuzz/NAME/ (a normal test, in every build).
 *
 * A target calls abort() when an invariant it checks fails, so both drivers
 * report that input as a crash.
 */
#ifndef ANES_FUZZ_H
#define ANES_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Abort (a crash to both drivers) with the failed condition named. */
#define CHECK(cond)                                                                   \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                      \
		}                                                                     \
	} while (0)

#endif
