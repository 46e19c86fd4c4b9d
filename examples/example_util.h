/* SPDX-License-Identifier: MIT */
/*
 * Small helpers the examples share.  Header-only, so that an example stays
 * one file to build, also out of tree against an installed libaneshare
 * (scripts/check-install.sh builds matmul_client.c that way): its
 * directory holds this header too.
 */
#ifndef ANES_EXAMPLE_UTIL_H
#define ANES_EXAMPLE_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>   /* clock_gettime: the including file defines _POSIX_C_SOURCE first */

/* splitmix64: the next value of the generator *state, uniform in [0, 1). */
static inline double ex_rand01(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (double)(z >> 11) / (double)(1ull << 53);
}

/* CLOCK_MONOTONIC in microseconds. */
static inline double ex_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* qsort comparator for doubles, ascending. */
static inline int ex_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* A whole file as a NUL-terminated string (at most 64 MiB), malloc'd and
 * the caller's; NULL if it cannot be read. */
static inline char *ex_read_text(const char *path)
{
	FILE *f = fopen(path, "rbe");
	if (!f)
		return NULL;
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	while (buf) {
		len += fread(buf + len, 1, cap - 1 - len, f);
		if (ferror(f) || len < cap - 1)
			break;
		char *nb = cap < (64u << 20) ? realloc(buf, cap * 2) : NULL;
		if (!nb) {
			free(buf);
			buf = NULL;
			break;
		}
		buf = nb;
		cap *= 2;
	}
	if (buf && ferror(f)) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	if (buf)
		buf[len] = '\0';
	return buf;
}

#endif
