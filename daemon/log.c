/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>

#include "util.h"

void anes_log(const char *fmt, ...)
{
	/* One fprintf per line so lines of concurrent writers do not interleave. */
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "aneshared: %s\n", line);
}
