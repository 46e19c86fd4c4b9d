/* SPDX-License-Identifier: MIT */
/* aneshared's command line and configuration file (options.h). */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anes_config.h"
#include "anes_proto.h"
#include "devworker.h"
#include "mil.h"
#include "options.h"

typedef enum opt_type {
	T_U32,       /* plain integer */
	T_U64,
	T_BYTES,     /* uint64_t, with an optional K/M/G (binary) suffix */
	T_BYTES32,   /* uint32_t, the same */
	T_STR,       /* char *, strdup'ed */
	T_BOOL,
	T_UID,       /* appended to allow_uids (interactive_uids): a number or a user name */
	T_TRI,       /* int: -1 unset, 0, 1 (a boolean that knows it was not given) */
	T_TRI_NOT,   /* the same field, negated: --no-X */
} opt_type;

typedef struct optdef {
	const char *key;
	opt_type type;
	size_t off;                  /* into anes_options */
	uint64_t lo, hi;             /* integers: inclusive range */
	const char *arg, *help;      /* NULL help: not listed in --help */
} optdef;

#define L(field) offsetof(anes_options, cfg.limits.field)
#define O(field) offsetof(anes_options, field)
#define GiB (1ull << 30)

static const optdef defs[] = {
	{ "socket", T_STR, O(socket_path), 0, 0, "PATH",
	  "listen on PATH (default: $ANESHARE_SOCKET, else ~/Library/Application Support/aneshare/"
	  "aneshare.sock on macOS, $XDG_RUNTIME_DIR/aneshare/aneshare.sock elsewhere, "
	  "${TMPDIR:-/tmp}/aneshare-UID/aneshare.sock without XDG_RUNTIME_DIR)" },
	{ "backend", T_STR, O(backend_name), 0, 0, "NAME", "compute backend: cpu, ane or auto (default auto: ane where available)" },
	{ "workers", T_U32, O(cfg.workers), 1, 256, "N", "worker threads for compiles and runs (default 2)" },
	{ "no-lanes", T_BOOL, O(no_lanes), 0, 0, NULL,
	  "workers never read client sockets: every request goes through the event loop" },
	{ "lane-threads", T_U32, O(cfg.lane_threads), 1, 256, "N",
	  "threads that read idle client sockets and run short requests (default: as many as --workers)" },
	{ "lane-run-max-us", T_U32, O(cfg.lane_run_max_us), 0, 10000000, "MICROSECONDS",
	  "a lane thread that reads a run does it at once if the programs' recent runs took at most this "
	  "long, and the runs pipelined behind it for at most this long in all" },
	{ "lane-spin-us", T_U32, O(cfg.lane_spin_us), 0, 1000000, "MICROSECONDS",
	  "a lane thread that answered a request polls for the next one this long before it sleeps "
	  "(0: never)" },
	{ "sched-slice-us", T_U32, O(cfg.sched_slice_us), 1, 10000000, "MICROSECONDS",
	  "the scheduler's slice: a client's compile goes before other clients' runs while it has had "
	  "at most this much device time over its share, and a lane thread serves one client at most "
	  "this long while others wait (default 5000)" },
	{ "verbose", T_BOOL, O(cfg.verbose), 0, 0, NULL, "log every connect and disconnect" },
	{ "interactive-uid", T_UID, 0, 0, UINT32_MAX - 1, "UID",
	  "clients of this user may ask for the interactive scheduling class (uid or name; repeatable)" },
	{ "allow-uid", T_UID, 0, 0, UINT32_MAX - 1, "UID",
	  "also accept clients of this user (uid or name; repeatable); the socket's directory stays "
	  "0700, so only users who can pass it anyway, such as root, get to the socket" },
	{ "shutdown-timeout", T_U32, O(shutdown_timeout_s), 0, 3600, "SECONDS",
	  "on SIGTERM, time in-flight requests get to finish" },
	{ "max-frame", T_BYTES32, L(max_frame), ANES_FRAME_MAX_LOWEST, ANES_FRAME_MAX_HIGHEST, "BYTES",
	  "largest frame payload" },
	{ "max-connections", T_U32, L(max_connections), 1, 65536, "N", "clients connected at once" },
	{ "max-inflight", T_U32, L(max_inflight), 1, 65536, "N",
	  "requests per client on the workers before it is no longer read" },
	{ "max-surfaces", T_U32, L(max_surfaces), 1, 1u << 20, "N", "surfaces per client" },
	{ "max-surface-bytes", T_BYTES, L(max_surface_bytes), 1, 1ull << 40, "BYTES", "size of one surface" },
	{ "max-total-surface-bytes", T_BYTES, L(max_total_surface_bytes), 1, 1ull << 44, "BYTES",
	  "bytes of surfaces per client process (default 1/4 of the machine's memory)" },
	{ "max-daemon-surface-bytes", T_BYTES, L(max_daemon_surface_bytes), 1, 1ull << 46, "BYTES",
	  "bytes of surfaces of all clients together (default 1/4 of the machine's memory)" },
	{ "max-programs", T_U32, L(max_programs), 1, 1u << 20, "N", "program handles per connection" },
	{ "max-client-surfaces", T_U64, L(max_client_surfaces), 0, 1u << 24, "N",
	  "surfaces per client process, all its connections together (0: --max-surfaces)" },
	{ "max-daemon-surfaces", T_U64, L(max_daemon_surfaces), 1, 1u << 24, "N",
	  "surfaces of all clients together" },
	{ "max-client-fds", T_U64, L(max_client_fds), 0, 1u << 24, "N",
	  "file descriptors the daemon keeps for one client process's surfaces, one per memfd surface "
	  "(0: --max-client-surfaces)" },
	{ "max-daemon-fds", T_U64, L(max_daemon_fds), 1, 1u << 24, "N",
	  "file descriptors kept for the surfaces of all clients together" },
	{ "max-client-programs", T_U64, L(max_client_programs), 0, 1u << 24, "N",
	  "program handles per client process (0: --max-programs)" },
	{ "max-daemon-programs", T_U64, L(max_daemon_programs), 1, 1u << 24, "N",
	  "program handles of all clients together" },
	{ "max-client-program-bytes", T_BYTES, L(max_client_program_bytes), 1, 1ull << 46, "BYTES",
	  "program memory per client process (default 5/8 of the machine's memory)" },
	{ "max-daemon-program-bytes", T_BYTES, L(max_daemon_program_bytes), 1, 1ull << 46, "BYTES",
	  "program memory of all clients together (default 5/8 of the machine's memory)" },
	{ "max-client-jobs", T_U64, L(max_client_jobs), 0, 1u << 20, "N",
	  "runs and compiles queued per client process before its connections are no longer read "
	  "(0: --max-inflight)" },
	{ "max-daemon-jobs", T_U64, L(max_daemon_jobs), 1, 1u << 24, "N",
	  "runs and compiles queued for all clients together" },
	{ "max-client-input-bytes", T_BYTES, L(max_client_input_bytes), 0, 64 * GiB, "BYTES",
	  "receive memory of frames over 64 KiB per client process, all its connections together; "
	  "over it, reading them waits (0: --max-frame + 8, the least allowed)" },
	{ "max-client-unsent-bytes", T_BYTES, L(max_client_unsent_bytes), 0, 64 * GiB, "BYTES",
	  "responses not yet taken per client process; a response that would exceed it drops the "
	  "connection holding the most (0: --drop-unsent-hard-bytes)" },
	{ "max-daemon-unsent-bytes", T_BYTES, L(max_daemon_unsent_bytes), 0, 1ull << 46, "BYTES",
	  "responses not yet taken, all clients together (0: 1/16 of the machine's memory, at "
	  "least --max-client-unsent-bytes)" },
	{ "max-uid-surfaces", T_U64, L(max_uid_surfaces), 0, 1u << 24, "N",
	  "surfaces of all client processes of one uid together (0: --max-daemon-surfaces)" },
	{ "max-uid-surface-bytes", T_BYTES, L(max_uid_surface_bytes), 0, 1ull << 46, "BYTES",
	  "bytes of surfaces per uid (0: --max-daemon-surface-bytes)" },
	{ "max-uid-fds", T_U64, L(max_uid_fds), 0, 1u << 24, "N",
	  "surface file descriptors kept per uid (0: --max-daemon-fds)" },
	{ "max-uid-programs", T_U64, L(max_uid_programs), 0, 1u << 24, "N",
	  "program handles per uid (0: --max-daemon-programs)" },
	{ "max-uid-program-bytes", T_BYTES, L(max_uid_program_bytes), 0, 1ull << 46, "BYTES",
	  "program memory per uid (0: --max-daemon-program-bytes)" },
	{ "max-uid-jobs", T_U64, L(max_uid_jobs), 0, 1u << 24, "N",
	  "runs and compiles queued per uid (0: --max-daemon-jobs)" },
	{ "max-uid-input-bytes", T_BYTES, L(max_uid_input_bytes), 0, 64 * GiB, "BYTES",
	  "receive memory of frames over 64 KiB per uid (0: --max-input-bytes)" },
	{ "max-uid-unsent-bytes", T_BYTES, L(max_uid_unsent_bytes), 0, 1ull << 46, "BYTES",
	  "responses not yet taken per uid (0: --max-daemon-unsent-bytes)" },
	{ "max-mil-bytes", T_BYTES32, L(max_mil_bytes), 1, ANES_MIL_CEIL_TEXT, "BYTES",
	  "MIL text of one compile" },
	{ "max-mil-statements", T_U64, O(mil.max_stmts), 1, ANES_MIL_CEIL_STMTS, "N",
	  "statements (ops, constants, inputs, literals) of one program" },
	{ "max-mil-tensor-bytes", T_BYTES, O(mil.max_tensor_bytes), 1, ANES_MIL_CEIL_TENSOR_BYTES, "BYTES",
	  "bytes of one tensor of a program" },
	{ "max-mil-value-bytes", T_BYTES, O(mil.max_value_bytes), 1, ANES_MIL_CEIL_VALUE_BYTES, "BYTES",
	  "bytes of all the values (constants, inputs, intermediates) of one program together" },
	{ "max-mil-functions", T_U32, O(mil.max_functions), 1, ANES_MAX_FUNCTIONS, "N",
	  "functions of one program" },
	{ "max-mil-io", T_U32, O(mil.max_io), 1, ANES_MAX_IO, "N", "inputs (or outputs) of one function" },
	{ "max-weights", T_U32, L(max_weights), 0, 1024, "N", "weight blobs of one compile" },
	{ "max-weight-bytes", T_BYTES, L(max_weight_bytes), 0, 16 * GiB, "BYTES",
	  "weight bytes (all blobs) of one compile" },
	{ "max-unsent-bytes", T_BYTES, L(max_unsent_bytes), 1, 16 * GiB, "BYTES",
	  "stop reading a client with this much unread output" },
	{ "drop-unsent-bytes", T_BYTES, L(drop_unsent_bytes), 1, 16 * GiB, "BYTES",
	  "drop a client whose unread output stays above this ..." },
	{ "drop-unsent-seconds", T_U32, L(drop_unsent_seconds), 0, 86400, "SECONDS",
	  "... for this long" },
	{ "drop-unsent-hard-bytes", T_BYTES, L(drop_unsent_hard_bytes), 1, 64 * GiB, "BYTES",
	  "drop a client at once when its unread output would exceed this" },
	{ "max-hello-frame", T_BYTES32, L(max_hello_frame), 64, ANES_FRAME_MAX_HIGHEST, "BYTES",
	  "largest frame payload before hello (at most --max-frame)" },
	{ "max-input-bytes", T_BYTES, L(max_input_bytes), 1u << 20, 64 * GiB, "BYTES",
	  "bytes that frames over 64 KiB may hold in receive buffers, all clients together "
	  "(at least --max-frame); over it, reading such frames waits for room" },
	{ "hello-timeout-ms", T_U32, L(hello_timeout_ms), 0, 3600000, "MILLISECONDS",
	  "close a connection that has not said hello this long after connecting (0: never)" },
	{ "frame-timeout-ms", T_U32, L(frame_timeout_ms), 0, 3600000, "MILLISECONDS",
	  "close a connection whose frame is not complete this long after its first byte, "
	  "not counting time the daemon did not read it (0: never)" },
	{ "max-exports-per-conn", T_U32, L(max_exports_per_conn), 1, 1u << 20, "N",
	  "live surface tokens (surface.export) per connection" },
	{ "max-daemon-exports", T_U32, L(max_daemon_exports), 1, 1u << 20, "N",
	  "live surface tokens of all connections together" },
	{ "max-export-uses", T_U32, L(max_export_uses), 1, 1u << 20, "N",
	  "imports one token may allow" },
	{ "max-export-ttl-ms", T_U32, L(max_export_ttl_ms), 1, 86400000, "MILLISECONDS",
	  "longest life of a token" },
	{ "max-events-per-conn", T_U32, L(max_events_per_conn), 1, 1u << 20, "N",
	  "event handles (event.create, event.import) per connection" },
	{ "max-daemon-events", T_U32, L(max_daemon_events), 1, 1u << 24, "N",
	  "events alive, all connections together" },
	{ "max-event-waits", T_U32, L(max_event_waits), 1, 65536, "N",
	  "pending event.wait requests per connection" },
	{ "worker", T_TRI, O(worker), 0, 0, NULL,
	  "run the backend in a device worker process (default: yes for ane, no for cpu)" },
	{ "no-worker", T_TRI_NOT, O(worker), 0, 0, NULL, "run the backend inside the daemon (refused with the ane backend)" },
	{ "compile-budget", T_U32, O(compile_budget), 0, 100000000, "N",
	  "compiles per device worker before it is replaced, 0 = unlimited "
	  "(default 100 for ane, unlimited for cpu)" },
	{ "max-device-workers", T_U32, O(max_device_workers), 1, 64, "N",
	  "device worker processes at once, each with its own compile budget" },
	{ "run-deadline-floor-ms", T_U32, O(run_deadline_floor_ms), 1, 86400000, "MS",
	  "a device worker that does not answer a run within max(this, 10x the program's recent runs) "
	  "is killed and restarted" },
	{ "compile-deadline-floor-ms", T_U32, O(compile_deadline_floor_ms), 1, 86400000, "MS",
	  "... a compile within this plus 20 ms per MIL statement and 1 s per 16 MiB of weights" },
	/* Test hooks, see docs/reliability.md and docs/worker.md. */
	{ "worker-fault", T_STR, O(worker_fault), 0, 0, "start_fail", NULL },
	{ "fault-inject", T_STR, O(fault_run_fail), 0, 0, "run_fail=NAME|run_gate=/FIFO", NULL },
};
#define N_DEFS (sizeof(defs) / sizeof(defs[0]))

/* Print text from column HELP_COL on, wrapped before column HELP_WIDTH ("(default N)"
 * stays on one line; a longer word stays whole). */
#define HELP_COL 33
#define HELP_WIDTH 100
static void print_wrapped(FILE *f, const char *text)
{
	size_t col = HELP_COL;
	const char *s = text;
	for (;;) {
		while (*s == ' ')
			s++;
		size_t w = strcspn(s, " ");
		if (!w)
			break;
		if (w == strlen("(default") && !strncmp(s, "(default", w) && s[w] == ' ')
			w += 1 + strcspn(s + w + 1, " ");
		if (col > HELP_COL && col + 1 + w > HELP_WIDTH) {
			fprintf(f, "\n%*s", HELP_COL, "");
			col = HELP_COL;
		} else if (col > HELP_COL) {
			fputc(' ', f);
			col++;
		}
		fwrite(s, 1, w, f);
		col += w;
		s += w;
	}
	fputc('\n', f);
}

static void usage(FILE *f, const anes_options *dflt)
{
	fprintf(f,
	        "Usage: aneshared [OPTIONS]\n"
	        "Share compiled neural-network programs and memory surfaces between processes.\n\n"
	        "  %-*s ", HELP_COL - 3, "--config FILE");
	print_wrapped(f, "read settings from FILE (default: $XDG_CONFIG_HOME/aneshare/aneshared.conf "
	                 "or ~/.config/aneshare/aneshared.conf, if it exists); every option below is "
	                 "also a \"key = value\" line there, with '_' for '-' (max_inflight = 32); "
	                 "the command line wins");
	for (size_t i = 0; i < N_DEFS; i++) {
		const optdef *d = &defs[i];
		if (!d->help)
			continue;
		char left[64], text[1024];
		snprintf(left, sizeof left, "--%s%s%s", d->key, d->arg ? " " : "", d->arg ? d->arg : "");
		if (strlen(left) > HELP_COL - 3)   /* the text starts on the next line */
			fprintf(f, "  %s\n%*s", left, HELP_COL, "");
		else
			fprintf(f, "  %-*s ", HELP_COL - 3, left);
		const void *p = (const char *)dflt + d->off;
		/* A help text that says its default itself (a rule rather than one
		 * number, or a number the rest of the text explains) gets no second one. */
		bool says_default = strstr(d->help, "(default") != NULL;
		if (!says_default && (d->type == T_U32 || d->type == T_BYTES32))
			snprintf(text, sizeof text, "%s (default %u)", d->help, *(const uint32_t *)p);
		else if (!says_default && (d->type == T_U64 || d->type == T_BYTES))
			snprintf(text, sizeof text, "%s (default %llu)", d->help,
			         (unsigned long long)*(const uint64_t *)p);
		else
			snprintf(text, sizeof text, "%s", d->help);
		print_wrapped(f, text);
	}
	fprintf(f,
	        "  -v                             same as --verbose\n"
	        "  -h, --help                     show this help\n"
	        "  -V, --version                  show the version\n"
	        "BYTES may end in K, M or G (KiB, MiB, GiB).\n");
}

/* ---- values ------------------------------------------------------------------ */

static int parse_u64(const char *s, bool bytes, uint64_t *ret)
{
	char *end;
	if (!isdigit((unsigned char)s[0]))
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return -ERANGE;
	unsigned shift = 0;
	if (bytes && *end) {
		switch (toupper((unsigned char)*end)) {
		case 'K': shift = 10; break;
		case 'M': shift = 20; break;
		case 'G': shift = 30; break;
		default: return -EINVAL;
		}
		end++;
		if (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0)
			end += strlen(end);
	}
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*ret = (uint64_t)v << shift;
	return 0;
}

static int parse_uid(const char *s, uint32_t *ret)
{
	uint64_t v;
	if (parse_u64(s, false, &v) == 0) {
		if (v >= UINT32_MAX)   /* (uid_t)-1 is no one */
			return -ERANGE;
		*ret = (uint32_t)v;
		return 0;
	}
	struct passwd *pw = getpwnam(s);
	if (!pw)
		return -ENOENT;
	*ret = (uint32_t)pw->pw_uid;
	return 0;
}

/* Set d from text s; where names the source for messages: "--max-frame" for
 * a flag, "FILE:LINE: max_frame" for a line of the file. */
static int set_value(anes_options *o, const optdef *d, const char *s, const char *where)
{
	void *p = (char *)o + d->off;
	uint64_t v;
	int r;

	switch (d->type) {
	case T_U32:
	case T_U64:
	case T_BYTES:
	case T_BYTES32:
		r = parse_u64(s, d->type == T_BYTES || d->type == T_BYTES32, &v);
		if (r < 0 || v < d->lo || v > d->hi) {
			fprintf(stderr, "aneshared: %s: \"%s\" is not %s in %llu..%llu\n", where, s,
			        d->type == T_BYTES || d->type == T_BYTES32 ? "a byte count" : "a number",
			        (unsigned long long)d->lo, (unsigned long long)d->hi);
			return -EINVAL;
		}
		if (d->type == T_U32 || d->type == T_BYTES32)
			*(uint32_t *)p = (uint32_t)v;
		else
			*(uint64_t *)p = v;
		return 0;
	case T_STR: {
		char *dup = strdup(s);
		if (!dup) {
			fprintf(stderr, "aneshared: out of memory\n");
			return -ENOMEM;
		}
		free(*(char **)p);
		*(char **)p = dup;
		return 0;
	}
	case T_BOOL:
	case T_TRI:
	case T_TRI_NOT: {
		int bv;
		if (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "1")) {
			bv = 1;
		} else if (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "0")) {
			bv = 0;
		} else {
			fprintf(stderr, "aneshared: %s: \"%s\" is not true or false\n", where, s);
			return -EINVAL;
		}
		if (d->type == T_BOOL)
			*(bool *)p = bv;
		else
			*(int *)p = d->type == T_TRI_NOT ? !bv : bv;
		return 0;
	}
	case T_UID: {
		uint32_t uid;
		r = parse_uid(s, &uid);
		if (r < 0) {
			fprintf(stderr, "aneshared: %s: \"%s\" is neither a uid nor a user name\n", where, s);
			return -EINVAL;
		}
		bool inter = !strcmp(d->key, "interactive-uid");
		uint32_t **list = inter ? &o->interactive_uids : &o->allow_uids;
		size_t *n = inter ? &o->n_interactive_uids : &o->n_allow_uids;
		if (*n >= 1024) {
			fprintf(stderr, "aneshared: %s: at most 1024 users\n", where);
			return -EINVAL;
		}
		uint32_t *u = realloc(*list, (*n + 1) * sizeof(*u));
		if (!u) {
			fprintf(stderr, "aneshared: out of memory\n");
			return -ENOMEM;
		}
		u[(*n)++] = uid;
		*list = u;
		return 0;
	}
	}
	return -EINVAL;
}

/* ---- the file -------------------------------------------------------------------- */

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	size_t n = strlen(s);
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

static const optdef *find_key(const char *key, bool file)
{
	for (size_t i = 0; i < N_DEFS; i++) {
		const char *k = defs[i].key;
		size_t j = 0;
		/* In the file keys use '_' where options use '-'. */
		for (; k[j] && key[j]; j++)
			if (key[j] != (file && k[j] == '-' ? '_' : k[j]))
				break;
		if (!k[j] && !key[j])
			return &defs[i];
	}
	return NULL;
}

static int parse_file(anes_options *o, FILE *f, const char *name)
{
	char buf[4096];
	unsigned line = 0;

	while (fgets(buf, sizeof buf, f)) {
		char where[512];
		line++;
		snprintf(where, sizeof where, "%s:%u", name, line);
		size_t len = strlen(buf);
		if (len == sizeof buf - 1 && buf[len - 1] != '\n' && !feof(f)) {
			fprintf(stderr, "aneshared: %s: line too long\n", where);
			return -EINVAL;
		}
		char *s = trim(buf);
		if (!*s || *s == '#')
			continue;
		char *eq = strchr(s, '=');
		if (!eq) {
			fprintf(stderr, "aneshared: %s: expected \"key = value\"\n", where);
			return -EINVAL;
		}
		*eq = '\0';
		char *key = trim(s), *val = trim(eq + 1);
		const optdef *d = find_key(key, true);
		if (!d || !strcmp(key, "fault_inject") || !strcmp(key, "no_worker") ||
		    !strcmp(key, "worker_fault")) {
			const optdef *dashed = d ? NULL : find_key(key, false);
			if (!strcmp(key, "no_worker"))
				fprintf(stderr, "aneshared: %s: unknown key \"no_worker\": write worker = false\n",
				        where);
			else if (dashed && dashed->help && strchr(key, '-'))
				fprintf(stderr, "aneshared: %s: unknown key \"%s\": keys are written with '_' "
				        "for '-'\n", where, key);
			else
				fprintf(stderr, "aneshared: %s: unknown key \"%s\": the keys are the options "
				        "of aneshared --help without \"--\", with '_' for '-'\n", where, key);
			return -EINVAL;
		}
		if (!*val) {
			fprintf(stderr, "aneshared: %s: %s has no value\n", where, key);
			return -EINVAL;
		}
		char what[sizeof where + 80];
		snprintf(what, sizeof what, "%s: %.64s", where, key);
		int r = set_value(o, d, val, what);
		if (r < 0)
			return r;
	}
	if (ferror(f)) {
		fprintf(stderr, "aneshared: %s: read error\n", name);
		return -EIO;
	}
	return 0;
}

/* --config FILE from argv, else the default file if it exists.  0 with
 * *ret_path NULL if there is none. */
static int config_path(int argc, char **argv, char **ret_path, bool *ret_explicit)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--"))
			break;
		if (!strcmp(argv[i], "--config")) {
			if (i + 1 >= argc) {
				fprintf(stderr, "aneshared: --config needs a FILE\n");
				return -EINVAL;
			}
			*ret_path = strdup(argv[i + 1]);
			*ret_explicit = true;
			return *ret_path ? 0 : -ENOMEM;
		}
		if (!strncmp(argv[i], "--config=", 9)) {
			*ret_path = strdup(argv[i] + 9);
			*ret_explicit = true;
			return *ret_path ? 0 : -ENOMEM;
		}
	}
	const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
	char *p = NULL;
	int r = 0;
	if (xdg && *xdg)
		r = asprintf(&p, "%s/aneshare/aneshared.conf", xdg);
	else if (home && *home)
		r = asprintf(&p, "%s/.config/aneshare/aneshared.conf", home);
	if (r < 0)
		return -ENOMEM;
	*ret_path = p;
	*ret_explicit = false;
	return 0;
}

/* ---- all of it ------------------------------------------------------------------- */

static void finish(anes_options *o)
{
	o->cfg.socket_path = o->socket_path;
	o->backend = o->backend_name ? o->backend_name : "auto";
	o->cfg.allow_uids = o->allow_uids;
	o->cfg.n_allow_uids = o->n_allow_uids;
	o->cfg.interactive_uids = o->interactive_uids;
	o->cfg.n_interactive_uids = o->n_interactive_uids;
	o->cfg.shutdown_timeout_ms = o->shutdown_timeout_s * 1000u;
	o->cfg.fault_run_fail = NULL;
	o->cfg.fault_run_gate = NULL;
	if (o->fault_run_fail && !strncmp(o->fault_run_fail, "run_gate=", 9))
		o->cfg.fault_run_gate = o->fault_run_fail + strlen("run_gate=");
	else if (o->fault_run_fail)
		o->cfg.fault_run_fail = o->fault_run_fail + strlen("run_fail=");
}

int anes_options_parse(anes_options *o, int argc, char **argv)
{
	struct option lopts[N_DEFS + 4];
	size_t n = 0;
	int r;

	*o = (anes_options){ .shutdown_timeout_s = 10, .worker = -1, .compile_budget = UINT32_MAX,
		             .max_device_workers = ANES_DEVICE_WORKERS_DEFAULT,
		             .run_deadline_floor_ms = ANES_WD_RUN_FLOOR_MS,
		             .compile_deadline_floor_ms = ANES_WD_COMPILE_FLOOR_MS };
	anes_server_config_init(&o->cfg);
	anes_mil_limits_default(&o->mil);
	o->cfg.handle_signals = true;

	bool explicit_path = false;
	r = config_path(argc, argv, &o->config_path, &explicit_path);
	if (r < 0)
		return r == -ENOMEM ? (fprintf(stderr, "aneshared: out of memory\n"), -EINVAL) : r;
	if (o->config_path) {
		FILE *f = fopen(o->config_path, "re");
		if (f) {
			r = parse_file(o, f, o->config_path);
			fclose(f);
			if (r < 0)
				return -EINVAL;
		} else if (explicit_path || errno != ENOENT) {
			fprintf(stderr, "aneshared: cannot read %s: %s\n", o->config_path, strerror(errno));
			return -EINVAL;
		} else {
			free(o->config_path);
			o->config_path = NULL;
		}
	}

	for (size_t i = 0; i < N_DEFS; i++)
		lopts[n++] = (struct option){ defs[i].key,
		                              defs[i].type == T_BOOL || defs[i].type == T_TRI ||
		                                              defs[i].type == T_TRI_NOT
		                                      ? no_argument
		                                      : required_argument,
		                              NULL, 1000 + (int)i };
	lopts[n++] = (struct option){ "config", required_argument, NULL, 'c' };
	lopts[n++] = (struct option){ "help", no_argument, NULL, 'h' };
	lopts[n++] = (struct option){ "version", no_argument, NULL, 'V' };
	lopts[n++] = (struct option){ NULL, 0, NULL, 0 };

	optind = 1;
	int c;
	/* Our own messages, not getopt's (which name argv[0], a path). */
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":vhV", lopts, NULL)) != -1) {
		if (c >= 1000) {
			const optdef *d = &defs[c - 1000];
			char where[80];
			snprintf(where, sizeof where, "--%s", d->key);
			r = set_value(o, d, d->type == T_BOOL || d->type == T_TRI || d->type == T_TRI_NOT ? "true" : optarg,
			              where);
			if (r < 0)
				return -EINVAL;
			continue;
		}
		switch (c) {
		case 'c':
			break;   /* read above */
		case 'v':
			o->cfg.verbose = true;
			break;
		case 'h': {
			anes_options dflt = { .shutdown_timeout_s = 10,
				              .max_device_workers = ANES_DEVICE_WORKERS_DEFAULT,
				              .run_deadline_floor_ms = ANES_WD_RUN_FLOOR_MS,
				              .compile_deadline_floor_ms = ANES_WD_COMPILE_FLOOR_MS };
			anes_server_config_init(&dflt.cfg);
			anes_mil_limits_default(&dflt.mil);
			usage(stdout, &dflt);
			return 1;
		}
		case 'V':
			printf("aneshared %s (protocol %d)\n", ANES_VERSION, ANES_PROTOCOL_VERSION);
			return 1;
		case ':':
			fprintf(stderr, "aneshared: %s needs a value\nTry 'aneshared --help'.\n",
			        argv[optind - 1]);
			return -EINVAL;
		default:
			if (optopt >= 1000 || optopt == 'h' || optopt == 'V')   /* --no-lanes=1 */
				fprintf(stderr, "aneshared: '%s': that option takes no value\n",
				        argv[optind - 1]);
			else if (optopt > 0)
				fprintf(stderr, "aneshared: unknown option '-%c'\n", optopt);
			else
				fprintf(stderr, "aneshared: unknown or ambiguous option '%s'\n", argv[optind - 1]);
			fprintf(stderr, "Try 'aneshared --help'.\n");
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "aneshared: unexpected argument \"%s\" (it takes options only)\n"
		        "Try 'aneshared --help'.\n", argv[optind]);
		return -EINVAL;
	}
	if (o->fault_run_fail && (strncmp(o->fault_run_fail, "run_fail=", 9) != 0 ||
	                          !o->fault_run_fail[9]) &&
	    (strncmp(o->fault_run_fail, "run_gate=", 9) != 0 || o->fault_run_fail[9] != '/')) {
		fprintf(stderr, "aneshared: --fault-inject: only run_fail=FUNCTION and run_gate=/FIFO "
		        "are known\n");
		return -EINVAL;
	}
	if (o->worker_fault && strcmp(o->worker_fault, "start_fail") != 0 &&
	    (strncmp(o->worker_fault, "compile_eio=", 12) != 0 || !o->worker_fault[12] ||
	     strlen(o->worker_fault) > 12 + ANES_NAME_MAX) &&
	    (strncmp(o->worker_fault, "compile_hold=", 13) != 0 || o->worker_fault[13] != '/') &&
	    (strncmp(o->worker_fault, "fd_room=", 8) != 0 || o->worker_fault[8] < '0' ||
	     o->worker_fault[8] > '9')) {
		fprintf(stderr, "aneshared: --worker-fault: only start_fail, compile_eio=FUNCTION, "
		        "compile_hold=/PATH and fd_room=N are known\n");
		return -EINVAL;
	}
	o->cfg.lanes = !o->no_lanes;
	o->mil.max_text = o->cfg.limits.max_mil_bytes;
	finish(o);
	return 0;
}

void anes_options_free(anes_options *o)
{
	free(o->socket_path);
	free(o->backend_name);
	free(o->fault_run_fail);
	free(o->worker_fault);
	free(o->allow_uids);
	free(o->interactive_uids);
	free(o->config_path);
	*o = (anes_options){ 0 };
}
