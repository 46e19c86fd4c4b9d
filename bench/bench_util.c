/* SPDX-License-Identifier: MIT */
/* What the daemon benchmarks share (bench_util.h). */
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "aneshare.h"
#include "bench_util.h"

typedef struct check {
	char what[96];
	double value, limit;
	bool le;   /* pass when value <= limit (else >=) */
} check;

typedef struct figure {
	char name[96];
	const char *unit;
	double value;
} figure;

static check g_checks[64];
static int g_nchecks;
static figure g_figs[128];
static int g_nfigs;

void bench_fig(const char *unit, double value, const char *fmt, ...)
{
	if (g_nfigs == (int)(sizeof g_figs / sizeof g_figs[0]))
		return;
	figure *f = &g_figs[g_nfigs++];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(f->name, sizeof f->name, fmt, ap);
	va_end(ap);
	f->unit = unit;
	f->value = value;
}

void bench_check(double value, double limit, bool le, const char *fmt, ...)
{
	if (g_nchecks == (int)(sizeof g_checks / sizeof g_checks[0])) {
		fprintf(stderr, "bench: more than %d checks\n", g_nchecks);
		return;
	}
	check *k = &g_checks[g_nchecks++];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(k->what, sizeof k->what, fmt, ap);
	va_end(ap);
	k->value = value;
	k->limit = limit;
	k->le = le;
}

static bool passed(const check *k)
{
	return k->le ? k->value <= k->limit : k->value >= k->limit;
}

int bench_print_checks(void)
{
	int failed = 0;
	for (int i = 0; i < g_nchecks; i++) {
		const check *k = &g_checks[i];
		failed += !passed(k);
		printf("%s  %-52s %8.2f %s %g\n", passed(k) ? "PASS" : "FAIL", k->what, k->value,
		       k->le ? "<=" : ">=", k->limit);
	}
	return failed;
}

/* A JSON string of s (names here are plain ASCII). */
static void json_str(FILE *o, const char *s)
{
	fputc('"', o);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', o);
		if ((unsigned char)*s >= 0x20)
			fputc(*s, o);
	}
	fputc('"', o);
}

void bench_json_begin(FILE *o, const char *bench)
{
	char date[32] = "";
	time_t now = time(NULL);
	struct tm tm;
	if (gmtime_r(&now, &tm))
		strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
	struct utsname u;
	if (uname(&u) < 0)
		memset(&u, 0, sizeof u);
	fprintf(o, "{\n  \"bench\": ");
	json_str(o, bench);
	fprintf(o, ",\n  \"date\": \"%s\",\n", date);
	fprintf(o, "  \"machine\": {\"cpus\": %ld, \"system\": ", sysconf(_SC_NPROCESSORS_ONLN));
	json_str(o, u.sysname);
	fprintf(o, ", \"release\": ");
	json_str(o, u.release);
	fprintf(o, ", \"arch\": ");
	json_str(o, u.machine);
	fprintf(o, "},\n");
}

void bench_json_end(FILE *o)
{
	fprintf(o, "  \"figures\": [\n");
	for (int i = 0; i < g_nfigs; i++) {
		fprintf(o, "    {\"name\": ");
		json_str(o, g_figs[i].name);
		fprintf(o, ", \"value\": %.6g, \"unit\": ", g_figs[i].value);
		json_str(o, g_figs[i].unit);
		fprintf(o, "}%s\n", i + 1 < g_nfigs ? "," : "");
	}
	fprintf(o, "  ],\n  \"checks\": [\n");
	for (int i = 0; i < g_nchecks; i++) {
		const check *k = &g_checks[i];
		fprintf(o, "    {\"what\": ");
		json_str(o, k->what);
		fprintf(o, ", \"value\": %.6g, \"limit\": %g, \"op\": \"%s\", \"pass\": %s}%s\n", k->value,
		        k->limit, k->le ? "<=" : ">=", passed(k) ? "true" : "false",
		        i + 1 < g_nchecks ? "," : "");
	}
	fprintf(o, "  ]\n}\n");
}

int bench_wait_daemon(const char *sock)
{
	for (int i = 0; i < 1000; i++) {
		aneshare_conn *c;
		if (aneshare_connect(sock, "bench-probe", &c) == 0) {
			aneshare_disconnect(c);
			return 0;
		}
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return -ETIMEDOUT;
}
