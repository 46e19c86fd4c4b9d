/* SPDX-License-Identifier: MIT */
/*
 * Parse time and memory of the MIL front end (daemon/mil) on generated
 * programs of growing size, to show both grow linearly with the number of
 * statements (docs/mil.md, Limits).
 *
 *   bench_mil [STATEMENTS...]      default: 10000 100000 1000000
 *
 * The program is a chain of blocks written as coremlc writes them (long
 * generated names, name attributes, inline literals): per block a const,
 * an add, and a mul with an inline fp16 literal: 3 statements, which count
 * 8 against the statement limit (the limit counts every value: each name
 * attribute and inline literal too).  Each size is parsed in a child
 * process of its own, twice; the table gives the faster parse (CPU time),
 * the program's own memory (anes_mil_program_bytes) and the growth of the
 * child's peak RSS over the parse (the parser's transient arrays
 * included).  The limits are raised for the run (--max-mil-*).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mil.h"

/* CPU time of this process: the parse is single-threaded, and CPU time is
 * less disturbed than wall time on a shared machine */
static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long peak_rss_kb(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
#ifdef __APPLE__
	return ru.ru_maxrss / 1024;   /* bytes there */
#else
	return ru.ru_maxrss;
#endif
}

#define LINE_MAX_BYTES 320

static char *gen(unsigned long stmts, size_t *ret_len)
{
	unsigned long blocks = stmts / 3;
	size_t cap = 256 + (blocks + 1) * 3 * LINE_MAX_BYTES;
	char *t = malloc(cap);
	if (!t)
		return NULL;
	size_t o = (size_t)snprintf(t, cap, "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, 64]> "
	                                     "input_hidden_states_cast_fp16) {\n");
	const char *prev = "input_hidden_states_cast_fp16";
	char prevbuf[96];
	for (unsigned long i = 0; i < blocks; i++) {
		o += (size_t)snprintf(t + o, cap - o,
		                      "        tensor<int32, [1]> var_%lu_axes_0 = const()[name = string(\"var_%lu_axes_0\"), "
		                      "val = tensor<int32, [1]>([-1])];\n"
		                      "        tensor<fp16, [1, 64]> layers_%lu_attn_add_cast_fp16 = add(x = %s, y = %s)"
		                      "[name = string(\"layers_%lu_attn_add_cast_fp16\")];\n"
		                      "        tensor<fp16, [1, 64]> layers_%lu_attn_mul_cast_fp16 = mul(x = "
		                      "layers_%lu_attn_add_cast_fp16, y = fp16(0x1p-1))[name = string(\"layers_%lu_attn_mul_cast_fp16\")];\n",
		                      i, i, i, prev, prev, i, i, i, i);
		snprintf(prevbuf, sizeof prevbuf, "layers_%lu_attn_mul_cast_fp16", i);
		prev = prevbuf;
	}
	o += (size_t)snprintf(t + o, cap - o, "    } -> (%s);\n}\n", prev);
	*ret_len = o;
	return t;
}

static int one(unsigned long stmts, int fd)
{
	size_t len;
	char *t = gen(stmts, &len);
	if (!t)
		return 1;
	anes_mil_limits l;
	anes_mil_limits_default(&l);
	l.max_text = ANES_MIL_CEIL_TEXT;
	l.max_stmts = ANES_MIL_CEIL_STMTS;
	if (anes_mil_set_limits(&l) < 0)
		return 1;
	static char err[512];
	double best = 1e30;
	long rss0 = peak_rss_kb(), rss1 = 0;
	unsigned long long bytes = 0, n_stmts = 0;
	for (int rep = 0; rep < 2; rep++) {
		anes_mil_program *p = NULL;
		double t0 = now();
		int r = anes_mil_parse(t, len, NULL, 0, &p, err, sizeof err);
		double dt = now() - t0;
		if (r < 0) {
			fprintf(stderr, "bench_mil: %s\n", err);
			return 1;
		}
		if (dt < best)
			best = dt;
		bytes = anes_mil_program_bytes(p);
		n_stmts = p->functions[0].n_values;
		if (rep == 0)
			rss1 = peak_rss_kb();
		anes_mil_program_free(p);
	}
	char line[256];
	int n = snprintf(line, sizeof line, "| %lu | %llu | %.1f | %.0f | %.2f | %.1f | %.0f | %.1f | %.0f |\n", stmts,
	                 n_stmts, (double)len / 1048576.0, best * 1e3, best * 1e9 / (double)stmts,
	                 (double)bytes / 1048576.0, (double)bytes / (double)stmts, (double)(rss1 - rss0) / 1024.0,
	                 (double)(rss1 - rss0) * 1024.0 / (double)stmts);
	if (write(fd, line, (size_t)n) != n)
		return 1;
	free(t);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned long sizes[16] = {10000, 100000, 1000000};
	int n = 3;
	if (argc > 1) {
		n = 0;
		for (int i = 1; i < argc && n < 16; i++) {
			char *end;
			errno = 0;
			sizes[n++] = strtoul(argv[i], &end, 10);
			if (errno || *end || end == argv[i] || sizes[n - 1] == 0) {
				bool help = !strcmp(argv[i], "-h") || !strcmp(argv[i], "--help");
				fprintf(help ? stdout : stderr,
				        "usage: bench_mil [STATEMENTS...]   (default: 10000 100000 1000000)\n");
				return help ? 0 : 2;
			}
		}
	}
	printf("| MIL statements | counted (limit) | text MiB | parse ms (CPU) | ns/statement | program MiB | bytes/statement | "
	       "peak RSS growth MiB | RSS bytes/statement |\n|---|---|---|---|---|---|---|---|---|\n");
	fflush(stdout);
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0)
			_exit(one(sizes[i], 1));
		int st;
		if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "bench_mil: %lu statements failed\n", sizes[i]);
			return 1;
		}
	}
	return 0;
}
