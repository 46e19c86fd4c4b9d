/* SPDX-License-Identifier: MIT */
/*
 * aneshare: command-line client of aneshared.
 *
 *   aneshare [--socket PATH] status [--json] [--wait SECONDS]
 *   aneshare [--socket PATH] top [--interval SECONDS]
 *   aneshare [--socket PATH] compile FILE.mil [--weight PATH=FILE ...] | DIR.mlmodelc
 *   aneshare [--socket PATH] run FILE.mil [--weight PATH=FILE ...] | DIR.mlmodelc [--function NAME]
 *            [--input FILE | --input-f32 FILE ...] [--output FILE ...]
 *            [--fill random|zeros] [--seed N]
 *   aneshare [--socket PATH] service install|uninstall|status [...]   (cli_service.c)
 *
 * Exit status: 0 success, 1 failure, 2 usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "anes_proto.h"
#include "aneshare.h"
#include "cli_service.h"
#include "cli_status.h"

#define EXIT_USAGE 2
#define MAX_ARGS 256                       /* --weight/--input/--output of one command */
#define MAX_FILE_BYTES ((size_t)1 << 30)   /* largest file read */

static const char *prog_name = "aneshare";

static void usage(FILE *f)
{
	char here[4096];
	if (aneshare_default_socket_path(here, sizeof here) < 0)
		snprintf(here, sizeof here, "unknown");
	fprintf(f,
	        "usage: %s [--socket PATH] COMMAND [ARGS]\n"
	        "\n"
	        "commands:\n"
	        "  status                      show what the daemon holds\n"
	        "      --wait SECONDS          wait for a daemon that is still starting\n"
	        "      --json                  print it as one JSON object, for scripts\n"
	        "  top                         show it live, per client process (q quits)\n"
	        "      --interval SECONDS      refresh this often (default 1)\n"
	        "  compile FILE.mil            compile a program and show its functions\n"
	        "      --weight PATH=FILE      a weight blob: MIL BLOBFILE path = local file\n"
	        "  compile DIR.mlmodelc        compile a Core ML model folder: its model.mil, its\n"
	        "                              @model_path/ weight files passed by descriptor\n"
	        "                              (an .mlpackage: xcrun coremlcompiler compile X.mlpackage OUT)\n"
	        "  run FILE.mil | DIR.mlmodelc compile and run a program once (a function with\n"
	        "                              states: on a fresh zero-filled state)\n"
	        "      --weight PATH=FILE      as for compile\n"
	        "      --function NAME         the function to run (default: the first, main)\n"
	        "      --input FILE            next input, raw bytes in the tensor's dtype\n"
	        "      --input-f32 FILE        next input, raw float32 (converted to fp16)\n"
	        "      --output FILE           write the next output's raw bytes to FILE\n"
	        "      --fill random|zeros     fill inputs not given as files\n"
	        "      --seed N                seed for --fill random (default 1)\n"
	        ANES_CLI_SERVICE_USAGE
	        "\n"
	        "options:\n"
	        "  --socket PATH               the daemon's socket (default: $ANESHARE_SOCKET, else\n"
	        "                              ~/Library/Application Support/aneshare/aneshare.sock\n"
	        "                              on macOS, $XDG_RUNTIME_DIR/aneshare/aneshare.sock\n"
	        "                              elsewhere, ${TMPDIR:-/tmp}/aneshare-UID/aneshare.sock\n"
	        "                              without XDG_RUNTIME_DIR; here: %s)\n"
	        "  -h, --help                  show this help\n"
	        "\n"
	        "Outputs without --output are summarised (shape, min/max/mean, first values).\n"
	        "Exit status: 0 success, 1 failure, 2 usage error.\n",
	        prog_name, here);
}

int usage_error(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "%s: ", prog_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry '%s --help'.\n", prog_name);
	return EXIT_USAGE;
}

int fail(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "%s: ", prog_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return EXIT_FAILURE;
}

/* A failed library call: the code's name and the daemon's message. */
static int fail_call(aneshare_conn *c, const char *what, int r)
{
	const char *msg = c ? aneshare_last_error(c) : "";
	if (*msg)
		return fail("%s: %s: %s", what, aneshare_strerror(r), msg);
	return fail("%s: %s", what, aneshare_strerror(r));
}

/* Read a whole file (at most MAX_FILE_BYTES); NUL-terminated for text use.
 * On success *ret is owned by the caller (free()). */
static int read_file(const char *path, char **ret, size_t *ret_len)
{
	struct stat st;
	int fd = anes_open_stat(path, O_RDONLY, &st);
	if (fd < 0)
		return fd;
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > MAX_FILE_BYTES) {
		close(fd);
		return S_ISREG(st.st_mode) ? -EFBIG : -EINVAL;
	}
	size_t size = (size_t)st.st_size;
	char *buf = malloc(size + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	size_t got = 0;
	while (got < size) {
		ssize_t n = read(fd, buf + got, size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? -errno : -EIO;
			free(buf);
			close(fd);
			return e;
		}
		got += (size_t)n;
	}
	close(fd);
	buf[size] = '\0';
	*ret = buf;
	*ret_len = size;
	return 0;
}

static int write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	const char *p = data;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
		p += n;
		len -= (size_t)n;
	}
	if (close(fd) < 0)
		return -errno;
	return 0;
}

/* ---- printing tensors ----------------------------------------------------------- */

static const char *dtype_name(aneshare_dtype dt)
{
	switch (dt) {
	case ANESHARE_FP16: return "fp16";
	case ANESHARE_FP32: return "fp32";
	case ANESHARE_INT32: return "int32";
	case ANESHARE_INT16: return "int16";
	case ANESHARE_INT8: return "int8";
	case ANESHARE_UINT8: return "uint8";
	case ANESHARE_BOOL: return "bool";
	}
	return "?";
}

static size_t dtype_size(aneshare_dtype dt)
{
	switch (dt) {
	case ANESHARE_FP16: case ANESHARE_INT16: return 2;
	case ANESHARE_FP32: case ANESHARE_INT32: return 4;
	default: return 1;
	}
}

static void print_tensor_info(const char *kind, const aneshare_tensor_info *t)
{
	printf("  %-6s %s: %s [", kind, t->name, dtype_name(t->dtype));
	for (uint32_t i = 0; i < t->rank; i++)
		printf("%s%" PRIu64, i ? ", " : "", t->shape[i]);
	printf("] (%" PRIu64 " bytes)\n", t->bytes);
}

static void print_program(const aneshare_program *p, bool cached)
{
	printf("key:    %s\n", aneshare_program_key(p));
	printf("cached: %s\n", cached ? "yes" : "no");
	for (uint32_t f = 0; f < aneshare_program_function_count(p); f++) {
		printf("function %s\n", aneshare_program_function_name(p, f));
		for (uint32_t i = 0; i < aneshare_program_input_count(p, f); i++)
			print_tensor_info("input", aneshare_program_input(p, f, i));
		for (uint32_t i = 0; i < aneshare_program_output_count(p, f); i++)
			print_tensor_info("output", aneshare_program_output(p, f, i));
		for (uint32_t i = 0; i < aneshare_program_state_count(p, f); i++)
			print_tensor_info("state", aneshare_program_state(p, f, i));
	}
}

static double element(const void *data, aneshare_dtype dt, size_t i)
{
	switch (dt) {
	case ANESHARE_FP16: {
		uint16_t h;
		float f;
		memcpy(&h, (const char *)data + 2 * i, 2);
		aneshare_f16_to_f32(&f, &h, 1);
		return f;
	}
	case ANESHARE_FP32: {
		float f;
		memcpy(&f, (const char *)data + 4 * i, 4);
		return f;
	}
	case ANESHARE_INT32: {
		int32_t v;
		memcpy(&v, (const char *)data + 4 * i, 4);
		return v;
	}
	case ANESHARE_INT16: {
		int16_t v;
		memcpy(&v, (const char *)data + 2 * i, 2);
		return v;
	}
	case ANESHARE_INT8: return ((const int8_t *)data)[i];
	case ANESHARE_UINT8: return ((const uint8_t *)data)[i];
	case ANESHARE_BOOL: return ((const uint8_t *)data)[i] != 0;
	}
	return NAN;
}

static void print_summary(const aneshare_tensor_info *t, const void *data)
{
	size_t n = (size_t)(t->bytes / dtype_size(t->dtype));
	double mn = INFINITY, mx = -INFINITY, sum = 0;
	size_t nan = 0;
	for (size_t i = 0; i < n; i++) {
		double v = element(data, t->dtype, i);
		if (isnan(v)) {
			nan++;
			continue;
		}
		mn = v < mn ? v : mn;
		mx = v > mx ? v : mx;
		sum += v;
	}
	print_tensor_info("output", t);
	if (n > nan)
		printf("         min %.6g  max %.6g  mean %.6g", mn, mx, sum / (double)(n - nan));
	if (nan)
		printf("  (%zu NaN)", nan);
	printf("\n         first:");
	for (size_t i = 0; i < n && i < 8; i++)
		printf(" %.6g", element(data, t->dtype, i));
	printf("%s\n", n > 8 ? " ..." : "");
}

/* ---- compiling ----------------------------------------------------------------------- */

typedef struct weights {
	aneshare_weight w[MAX_ARGS];
	char *buf[MAX_ARGS];
	size_t n;
} weights;

static void weights_free(weights *ws)
{
	for (size_t i = 0; i < ws->n; i++) {
		free((char *)ws->w[i].path);
		free(ws->buf[i]);
	}
	ws->n = 0;
}

/* "PATH=FILE": read FILE as the blob for PATH.  Returns 0, 1 (failure), 2 (usage). */
static int weight_add(weights *ws, const char *arg)
{
	const char *eq = strchr(arg, '=');
	if (!eq || eq == arg || !eq[1])
		return usage_error("--weight wants PATH=FILE, not '%s'", arg);
	if (ws->n == MAX_ARGS)
		return usage_error("too many --weight options");
	char *path = strndup(arg, (size_t)(eq - arg));
	if (!path)
		return fail("out of memory");
	char *data;
	size_t len;
	int r = read_file(eq + 1, &data, &len);
	if (r < 0) {
		free(path);
		return fail("%s: %s", eq + 1, strerror(-r));
	}
	ws->w[ws->n] = (aneshare_weight){ .path = path, .data = data, .len = len };
	ws->buf[ws->n] = data;
	ws->n++;
	return 0;
}

/* Say why connecting failed with r, and what to do; returns EXIT_FAILURE. */
static int connect_failed(const char *socket_path, int r)
{
	char path[4096];
	const char *env = getenv("ANESHARE_SOCKET");
	bool from_env = !socket_path && env && *env;
	if (!socket_path && aneshare_default_socket_path(path, sizeof path) >= 0)
		socket_path = path;
	if (r == -ENAMETOOLONG && socket_path)
		return fail("the socket path %s is %zu bytes, longer than the %zu a Unix socket path "
		            "can hold: pass a shorter --socket PATH (or set ANESHARE_SOCKET)",
		            socket_path, strlen(socket_path),
		            sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
	char named[4200];
	snprintf(named, sizeof named, "%s%s", socket_path ? socket_path : "the daemon",
	         from_env ? " (from ANESHARE_SOCKET)" : "");
	const char *p = named;
	/* What is wrong, then on a second line what to do about it. */
	switch (r) {
	case -ENOENT:
	case -ECONNREFUSED:
		return fail("no daemon listens on %s: %s\n"
		            "Start one with 'aneshared' (or 'aneshare service install'), or name the "
		            "socket of the one running with --socket PATH or ANESHARE_SOCKET.",
		            p, aneshare_strerror(r));
	case -EACCES:
	case -EPERM:
		return fail("cannot connect to %s: %s\n"
		            "The socket belongs to another user (its directory is private to the "
		            "daemon's user): run aneshared as yourself, or this command as its user.",
		            p, aneshare_strerror(r));
	case -ECONNRESET:
	case -EPIPE:
		return fail("the daemon on %s hung up before the handshake: %s\n"
		            "It takes only its own user's clients (and --allow-uid ones), up to "
		            "--max-connections at once: its log names the reason.",
		            p, aneshare_strerror(r));
	case -ANESHARE_EVERSION:
		return fail("the daemon on %s speaks another protocol version: this aneshare speaks %d\n"
		            "Use the aneshare of the daemon's build, or restart the daemon from "
		            "this aneshare's build.", p, ANES_PROTOCOL_VERSION);
	default:
		return fail("cannot connect to %s: %s", p, aneshare_strerror(r));
	}
}

static int connect_or_fail(const char *socket_path, aneshare_conn **ret)
{
	int r = aneshare_connect(socket_path, "aneshare-cli", ret);
	return r < 0 ? connect_failed(socket_path, r) : 0;
}

static int compile_file(aneshare_conn *c, const char *file, const weights *ws,
                        aneshare_program **ret, bool *ret_cached)
{
	struct stat st;
	if (stat(file, &st) == 0 && S_ISDIR(st.st_mode)) {
		/* a compiled Core ML model folder (.mlmodelc): its own weights */
		if (ws->n)
			return fail("%s: a model folder brings its own weights; --weight is for a .mil file", file);
		int r = aneshare_program_compile_model(c, file, ret, ret_cached);
		if (r == -ENOENT || r == -EPERM || r == -ENAMETOOLONG || r == -E2BIG || r == -EFBIG ||
		    r == -ENOTDIR || r == -ANESHARE_ECOMPILE || r == -ANESHARE_EUNSUPPORTED)
			return fail("%s", aneshare_last_error(c));
		if (r < 0)
			return fail_call(c, file, r);
		return 0;
	}
	char *mil;
	size_t len;
	int r = read_file(file, &mil, &len);
	if (r < 0)
		return fail("%s: %s", file, strerror(-r));
	if (strlen(mil) != len) {
		free(mil);
		return fail("%s: the MIL text contains a NUL byte", file);
	}
	r = aneshare_program_compile(c, mil, ws->w, ws->n, ret, ret_cached);
	free(mil);
	if (r == -ANESHARE_ECOMPILE || r == -ANESHARE_EUNSUPPORTED)
		return fail("%s: %s", file, aneshare_last_error(c));
	if (r < 0)
		return fail_call(c, file, r);
	return 0;
}

/* ---- commands --------------------------------------------------------------------------- */

/* Connect, retrying while the socket does not exist yet or refuses (a daemon
 * that is still starting) until wait_ms have passed. */
static int connect_waiting(const char *socket_path, long wait_ms, aneshare_conn **ret)
{
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		int r = aneshare_connect(socket_path, "aneshare-cli", ret);
		if (r >= 0)
			return 0;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
		if ((r != -ENOENT && r != -ECONNREFUSED) || elapsed >= wait_ms)
			return connect_failed(socket_path, r);
		nanosleep(&(struct timespec){ .tv_nsec = 20 * 1000 * 1000 }, NULL);
	}
}

static int cmd_top(const char *socket_path, int argc, char **argv)
{
	double secs = 1;
	if (argc == 2 && !strcmp(argv[0], "--interval")) {
		char *end;
		secs = strtod(argv[1], &end);
		if (*end || !(secs >= 0.05 && secs <= 3600))
			return usage_error("--interval takes a number of seconds (0.05 to 3600)");
	} else if (argc > 0) {
		return usage_error("top takes no arguments but --interval SECONDS");
	}
	if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))
		return fail("top needs a terminal (use status or status --json in scripts)");
	aneshare_conn *c;
	if (connect_waiting(socket_path, 0, &c))
		return EXIT_FAILURE;
	int r = anes_cli_top(c, aneshare_server(c)->protocol, (unsigned)(secs * 1000));
	if (r < 0) {
		r = fail_call(c, "top", r);
		aneshare_disconnect(c);
		return r;
	}
	aneshare_disconnect(c);
	return 0;
}

static int cmd_status(const char *socket_path, int argc, char **argv)
{
	long wait_ms = 0;
	bool json = false;
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = true;
		} else if (!strcmp(argv[i], "--wait") && i + 1 == argc) {
			return usage_error("--wait needs a number of seconds");
		} else if (!strcmp(argv[i], "--wait")) {
			char *end;
			double secs = strtod(argv[++i], &end);
			if (*end || !(secs >= 0 && secs <= 3600))
				return usage_error("--wait takes a number of seconds (0 to 3600)");
			wait_ms = (long)(secs * 1000);
		} else {
			return usage_error("status takes no arguments but --wait SECONDS and --json");
		}
	}
	aneshare_conn *c;
	if (connect_waiting(socket_path, wait_ms, &c))
		return EXIT_FAILURE;
	aneshare_status *st;
	int r = aneshare_get_status(c, &st);
	if (r < 0) {
		r = fail_call(c, "status", r);
		aneshare_disconnect(c);
		return r;
	}
	if (json)
		anes_cli_print_json(stdout, st, aneshare_server(c)->protocol);
	else
		anes_cli_print_status(stdout, st, aneshare_server(c)->protocol, false);
	aneshare_status_free(st);
	aneshare_disconnect(c);
	return 0;
}

static int cmd_compile(const char *socket_path, int argc, char **argv)
{
	const char *file = NULL;
	weights ws = { .n = 0 };
	int rc = 0;
	for (int i = 0; i < argc && rc == 0; i++) {
		if (!strcmp(argv[i], "--weight")) {
			if (i + 1 >= argc)
				rc = usage_error("--weight needs PATH=FILE");
			else
				rc = weight_add(&ws, argv[++i]);
		} else if (argv[i][0] == '-' && argv[i][1]) {
			rc = usage_error("compile: unknown option '%s'", argv[i]);
		} else if (file) {
			rc = usage_error("compile takes one MIL file or model folder");
		} else {
			file = argv[i];
		}
	}
	if (rc == 0 && !file)
		rc = usage_error("compile needs a MIL file or model folder");
	if (rc) {
		weights_free(&ws);
		return rc;
	}
	aneshare_conn *c;
	if (connect_or_fail(socket_path, &c)) {
		weights_free(&ws);
		return EXIT_FAILURE;
	}
	aneshare_program *p;
	bool cached;
	rc = compile_file(c, file, &ws, &p, &cached);
	if (rc == 0) {
		print_program(p, cached);
		aneshare_program_release(p);
	}
	aneshare_disconnect(c);
	weights_free(&ws);
	return rc;
}

typedef enum fill_mode { FILL_NONE, FILL_ZEROS, FILL_RANDOM } fill_mode;

typedef struct input_arg {
	const char *file;
	bool f32;
} input_arg;

static uint64_t rng_next(uint64_t *s)
{
	/* splitmix64 */
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void fill_random(void *data, const aneshare_tensor_info *t, uint64_t *seed)
{
	size_t n = (size_t)(t->bytes / dtype_size(t->dtype));
	for (size_t i = 0; i < n; i++) {
		uint64_t r = rng_next(seed);
		float f = (float)((double)(r >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
		int32_t v = (int32_t)(r % 17) - 8;
		switch (t->dtype) {
		case ANESHARE_FP16: aneshare_f32_to_f16((uint16_t *)data + i, &f, 1); break;
		case ANESHARE_FP32: memcpy((char *)data + 4 * i, &f, 4); break;
		case ANESHARE_INT32: memcpy((char *)data + 4 * i, &v, 4); break;
		case ANESHARE_INT16: { int16_t s = (int16_t)v; memcpy((char *)data + 2 * i, &s, 2); break; }
		case ANESHARE_INT8: ((int8_t *)data)[i] = (int8_t)v; break;
		case ANESHARE_UINT8: ((uint8_t *)data)[i] = (uint8_t)(r & 0xff); break;
		case ANESHARE_BOOL: ((uint8_t *)data)[i] = (uint8_t)(r & 1); break;
		}
	}
}

/* Put input i into its surface. 0 or 1 (failure, reported). */
static int load_input(const input_arg *in, const aneshare_tensor_info *t, void *dst)
{
	char *buf;
	size_t len;
	int r = read_file(in->file, &buf, &len);
	if (r < 0)
		return fail("%s: %s", in->file, strerror(-r));
	size_t count = (size_t)(t->bytes / dtype_size(t->dtype));
	if (in->f32) {
		if (t->dtype != ANESHARE_FP16 && t->dtype != ANESHARE_FP32) {
			free(buf);
			return fail("%s: --input-f32 is for fp16/fp32 inputs, '%s' is %s", in->file,
			            t->name, dtype_name(t->dtype));
		}
		if (len != count * 4) {
			free(buf);
			return fail("%s: %zu bytes, input '%s' needs %zu float32 values (%zu bytes)",
			            in->file, len, t->name, count, count * 4);
		}
		if (t->dtype == ANESHARE_FP16) {
			/* buf is malloc'ed, so aligned for float */
			aneshare_f32_to_f16(dst, (const float *)(void *)buf, count);
		} else {
			memcpy(dst, buf, len);
		}
	} else {
		if (len != t->bytes) {
			free(buf);
			return fail("%s: %zu bytes, input '%s' needs %" PRIu64 " bytes of %s", in->file,
			            len, t->name, t->bytes, dtype_name(t->dtype));
		}
		memcpy(dst, buf, len);
	}
	free(buf);
	return 0;
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

typedef struct run_opts {
	const char *file;
	const char *function;
	weights ws;
	input_arg inputs[MAX_ARGS];
	size_t n_inputs;
	const char *outputs[MAX_ARGS];
	size_t n_outputs;
	fill_mode fill;
	uint64_t seed;
} run_opts;

static int run_parse(run_opts *o, int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		bool has_val = i + 1 < argc;
		int rc;
		if (!strcmp(a, "--weight") || !strcmp(a, "--function") || !strcmp(a, "--input") ||
		    !strcmp(a, "--input-f32") || !strcmp(a, "--output") || !strcmp(a, "--fill") ||
		    !strcmp(a, "--seed")) {
			if (!has_val)
				return usage_error("%s needs a value", a);
		} else if (a[0] == '-' && a[1]) {
			return usage_error("run: unknown option '%s'", a);
		}
		if (!strcmp(a, "--weight")) {
			if ((rc = weight_add(&o->ws, argv[++i])))
				return rc;
		} else if (!strcmp(a, "--function")) {
			o->function = argv[++i];
		} else if (!strcmp(a, "--input") || !strcmp(a, "--input-f32")) {
			if (o->n_inputs == MAX_ARGS)
				return usage_error("too many inputs");
			o->inputs[o->n_inputs++] = (input_arg){ argv[i + 1], a[7] == '-' };
			i++;
		} else if (!strcmp(a, "--output")) {
			if (o->n_outputs == MAX_ARGS)
				return usage_error("too many outputs");
			o->outputs[o->n_outputs++] = argv[++i];
		} else if (!strcmp(a, "--fill")) {
			const char *m = argv[++i];
			if (!strcmp(m, "random"))
				o->fill = FILL_RANDOM;
			else if (!strcmp(m, "zeros"))
				o->fill = FILL_ZEROS;
			else
				return usage_error("--fill is random or zeros, not '%s'", m);
		} else if (!strcmp(a, "--seed")) {
			char *end;
			errno = 0;
			o->seed = strtoull(argv[++i], &end, 0);
			if (errno || *end || !*argv[i])
				return usage_error("bad --seed '%s'", argv[i]);
		} else if (o->file) {
			return usage_error("run takes one MIL file or model folder");
		} else {
			o->file = a;
		}
	}
	if (!o->file)
		return usage_error("run needs a MIL file or model folder");
	return 0;
}

static int run_program(aneshare_conn *c, run_opts *o)
{
	aneshare_program *p;
	bool cached;
	aneshare_surface *in[MAX_ARGS] = { 0 }, *out[MAX_ARGS] = { 0 };
	aneshare_state *st = NULL;
	uint32_t n_in = 0, n_out = 0, fn = 0;
	int rc = compile_file(c, o->file, &o->ws, &p, &cached);
	if (rc)
		return rc;
	if (o->function) {
		for (fn = 0; fn < aneshare_program_function_count(p); fn++)
			if (!strcmp(aneshare_program_function_name(p, fn), o->function))
				break;
		if (fn == aneshare_program_function_count(p)) {
			char names[512] = "";
			size_t len = 0;
			for (uint32_t f = 0; f < fn && len < sizeof names; f++)
				len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", f ? ", " : "",
				                        aneshare_program_function_name(p, f));
			rc = fail("%s: no function '%s' (it has: %s)", o->file, o->function, names);
			goto out;
		}
	}
	n_in = aneshare_program_input_count(p, fn);
	n_out = aneshare_program_output_count(p, fn);
	if (n_in > MAX_ARGS || n_out > MAX_ARGS) {
		rc = fail("the function has too many inputs or outputs");
		n_in = n_out = 0;
		goto out;
	}
	if (o->n_inputs > n_in) {
		rc = usage_error("%zu inputs given, function '%s' takes %u", o->n_inputs,
		                 aneshare_program_function_name(p, fn), n_in);
		goto out;
	}
	if (o->n_inputs < n_in && o->fill == FILL_NONE) {
		rc = usage_error("function '%s' takes %u inputs, %zu given: add --input or --fill",
		                 aneshare_program_function_name(p, fn), n_in, o->n_inputs);
		goto out;
	}
	if (o->n_outputs > n_out) {
		rc = usage_error("%zu output files given, function '%s' has %u outputs", o->n_outputs,
		                 aneshare_program_function_name(p, fn), n_out);
		goto out;
	}
	for (uint32_t i = 0; i < n_in + n_out; i++) {
		const aneshare_tensor_info *t = i < n_in ? aneshare_program_input(p, fn, i)
		                                         : aneshare_program_output(p, fn, i - n_in);
		aneshare_surface **s = i < n_in ? &in[i] : &out[i - n_in];
		int r = aneshare_surface_create(c, (size_t)t->bytes, s);
		if (r < 0) {
			rc = fail_call(c, "creating a surface", r);
			goto out;
		}
	}
	for (uint32_t i = 0; i < n_in; i++) {
		const aneshare_tensor_info *t = aneshare_program_input(p, fn, i);
		if (i < o->n_inputs) {
			if ((rc = load_input(&o->inputs[i], t, aneshare_surface_data(in[i]))))
				goto out;
		} else if (o->fill == FILL_RANDOM) {
			fill_random(aneshare_surface_data(in[i]), t, &o->seed);
		}   /* zeros: new surfaces are zero-filled */
	}
	/* A function with states runs once on a fresh (zero-filled) state. */
	if (aneshare_program_state_count(p, fn) > 0) {
		int r = aneshare_state_create(p, fn, &st);
		if (r < 0) {
			rc = fail_call(c, "making a state", r);
			goto out;
		}
	}
	double t0 = now_ms();
	int r = st ? aneshare_run_state(p, fn, st, in, n_in, out, n_out)
	           : aneshare_run(p, fn, in, n_in, out, n_out);
	double t1 = now_ms();
	if (r < 0) {
		rc = fail_call(c, "run", r);
		goto out;
	}
	printf("function %s: ran in %.3f ms\n", aneshare_program_function_name(p, fn), t1 - t0);
	for (uint32_t i = 0; i < n_out; i++) {
		const aneshare_tensor_info *t = aneshare_program_output(p, fn, i);
		const void *data = aneshare_surface_data(out[i]);
		if (i < o->n_outputs) {
			r = write_file(o->outputs[i], data, (size_t)t->bytes);
			if (r < 0) {
				rc = fail("%s: %s", o->outputs[i], strerror(-r));
				goto out;
			}
			printf("  output %s -> %s (%" PRIu64 " bytes)\n", t->name, o->outputs[i], t->bytes);
		} else {
			print_summary(t, data);
		}
	}
out:
	aneshare_state_release(st);
	for (uint32_t i = 0; i < n_in; i++)
		aneshare_surface_release(in[i]);
	for (uint32_t i = 0; i < n_out; i++)
		aneshare_surface_release(out[i]);
	aneshare_program_release(p);
	return rc;
}

static int cmd_run(const char *socket_path, int argc, char **argv)
{
	run_opts *o = calloc(1, sizeof *o);
	if (!o)
		return fail("out of memory");
	o->seed = 1;
	int rc = run_parse(o, argc, argv);
	if (rc == 0) {
		aneshare_conn *c;
		rc = connect_or_fail(socket_path, &c);
		if (rc == 0) {
			rc = run_program(c, o);
			aneshare_disconnect(c);
		}
	}
	weights_free(&o->ws);
	free(o);
	return rc;
}

int main(int argc, char **argv)
{
	const char *socket_path = NULL;
	int i = 1;

	for (int j = 1; j < argc; j++)
		if (!strcmp(argv[j], "-h") || !strcmp(argv[j], "--help")) {
			usage(stdout);
			return 0;
		}
	/* Global options come before the command; --socket is also accepted after it. */
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--socket") && i + 1 < argc)
			socket_path = argv[++i];
		else if (!strcmp(argv[i], "--socket"))
			return usage_error("--socket needs a path");
		else
			return usage_error("unknown option '%s'", argv[i]);
	}
	if (i >= argc)
		return usage_error("no command given");
	const char *cmd = argv[i++];

	/* Pull "--socket PATH" out of the command's arguments. */
	char **args = calloc((size_t)argc + 1, sizeof *args);
	if (!args)
		return fail("out of memory");
	int n = 0;
	for (; i < argc; i++) {
		if (!strcmp(argv[i], "--socket")) {
			if (i + 1 >= argc) {
				free(args);
				return usage_error("--socket needs a path");
			}
			socket_path = argv[++i];
		} else {
			args[n++] = argv[i];
		}
	}
	int rc;
	if (!strcmp(cmd, "status"))
		rc = cmd_status(socket_path, n, args);
	else if (!strcmp(cmd, "top"))
		rc = cmd_top(socket_path, n, args);
	else if (!strcmp(cmd, "compile"))
		rc = cmd_compile(socket_path, n, args);
	else if (!strcmp(cmd, "run"))
		rc = cmd_run(socket_path, n, args);
	else if (!strcmp(cmd, "service"))
		rc = anes_cli_service(socket_path, n, args);
	else
		rc = usage_error("unknown command '%s'", cmd);
	free(args);
	return rc;
}
