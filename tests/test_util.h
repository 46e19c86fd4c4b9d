/* SPDX-License-Identifier: MIT */
/*
 * Small helpers shared by the test programs that are not criterion suites
 * as well as by the daemon harness (tests/daemon_harness.c): nothing here
 * asserts, so they also serve forked children and tests/load.
 */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "aneshare.h"

/* CLOCK_MONOTONIC in milliseconds. */
int64_t tu_now_ms(void);
/* In a forked child: be killed when the parent dies, so that a crashed test
 * leaves no daemon behind (Linux: PR_SET_PDEATHSIG).  macOS has no such call;
 * there a test that crashes may leave its children running. */
void tu_die_with_parent(void);
/* Sleep ms milliseconds (between bounded polls only, never to synchronise). */
void tu_pause_ms(int ms);

/* A whole file, NUL-terminated (malloc'd), or NULL if it cannot be opened;
 * aborts when out of memory. */
char *tu_read_file(const char *path);

/* Entries of a directory other than "." and ".." (for /proc/PID/fd), -1 if
 * it cannot be opened. */
int tu_dir_entries(const char *path);
/* Open fds of process pid (Linux: /proc/PID/fd, macOS: proc_pidinfo), -1 if
 * unknown. */
int tu_fd_count(pid_t pid);
/* A "Key:  N kB" figure of /proc/PID/status (VmRSS, VmHWM, ...), -1 if unknown. */
long tu_proc_status_kb(pid_t pid, const char *key);

/* ---- the dynamic matmul (examples/dynamic_matmul.mil) ------------------------ */

/* Input [1, IC, 1, SEQ+OC] holds the activations and the weights; output
 * [1, OC, 1, SEQ]. */
typedef struct h_mm {
	size_t ic, oc, seq;
	size_t in_bytes, out_bytes;
} h_mm;

/* Shapes from the program's info; false if it is not the expected layout. */
bool h_mm_from_program(const aneshare_program *p, h_mm *ret);
/* Fill an fp16 input ([1, IC, 1, SEQ+OC]) with values in [-1, 1] from seed. */
void h_mm_fill(const h_mm *mm, uint16_t *x, uint64_t seed);
/* Max |out - ref| / max|ref| for the output y computed from input x (fp32
 * reference from the same fp16 values), with scratch xf (IC x (SEQ+OC)
 * floats) and yf (OC x SEQ floats). */
double tu_mm_error(const h_mm *mm, const uint16_t *x, const uint16_t *y, float *xf, float *yf);

#define H_MM_TOL 1e-2

#endif
