/* SPDX-License-Identifier: MIT */
/*
 * What the daemon benchmarks (bench_daemon, bench_wfd) share.
 *
 * The report each ends with:
 * figures (named measurements), checks (a value against its limit from
 * docs/performance.md), the PASS/FAIL table, and the --json file
 * (bench/results/): {"bench", "date", "machine", <the bench's own fields>,
 * "figures": [{"name", "value", "unit"}], "checks": [{"what", "value",
 * "limit", "op", "pass"}]}.
 */
#ifndef ANES_BENCH_UTIL_H
#define ANES_BENCH_UTIL_H

#include <stdbool.h>
#include <stdio.h>

/* A figure: unit is a string literal (kept, not copied). */
void bench_fig(const char *unit, double value, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* A check: passes when value <= limit (le) or value >= limit (!le). */
void bench_check(double value, double limit, bool le, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Prints one PASS/FAIL line per check on stdout; returns how many failed. */
int bench_print_checks(void);
/* The JSON report: bench_json_begin writes up to "machine" (the caller
 * then writes its own fields, each as `  "key": value,\n`), bench_json_end
 * the figures and checks and closes the object. */
void bench_json_begin(FILE *o, const char *bench);
void bench_json_end(FILE *o);

/* Waits up to 10 s for a daemon to answer on sock: 0, or -ETIMEDOUT. */
int bench_wait_daemon(const char *sock);

#endif
