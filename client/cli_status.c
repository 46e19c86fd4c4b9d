/* SPDX-License-Identifier: MIT */
/*
 * `aneshare status [--json]` and `aneshare top`: what the daemon holds, per
 * client process and in total against its limits, and the surfaces shared
 * between connections with their holders (docs/protocol.md, status).
 *
 * top redraws the screen every interval in the terminal's alternate screen
 * with the terminal in raw mode (no echo, no line editing, keys read one by
 * one); q, Q, Esc or Ctrl-C quit.  The terminal's settings are restored on
 * every way out: a key, SIGINT/SIGTERM/SIGHUP, the daemon going away.
 */
#include <errno.h>
#include <stdbool.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>

#include "aneshare.h"
#include "cli_status.h"

static void human_bytes(char *buf, size_t len, uint64_t b)
{
	static const char *const unit[] = { "B", "K", "M", "G", "T" };
	double v = (double)b;
	size_t u = 0;
	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%" PRIu64 "B", b);
	else
		snprintf(buf, len, "%.1f%s", v, unit[u]);
}

static bool is_bytes(const char *resource)
{
	size_t n = strlen(resource);
	return n > 6 && !strcmp(resource + n - 6, "_bytes");
}

static void fmt_value(char *buf, size_t len, const char *resource, uint64_t v)
{
	if (is_bytes(resource))
		human_bytes(buf, len, v);
	else
		snprintf(buf, len, "%" PRIu64, v);
}

/* Printable: the name comes from a client (the daemon already replaced
 * control bytes; this also keeps a column's width). */
static void clean_name(char *dst, size_t len, const char *src)
{
	size_t i = 0;
	for (; src[i] && i + 1 < len; i++)
		dst[i] = (unsigned char)src[i] < 0x20 || src[i] == 0x7f ? '?' : src[i];
	dst[i] = '\0';
}

/* Surfaces held by several connections (or with tokens out): one line
 * each, its holders as "name (pid)", read-only ones marked "ro". */
static void print_shared(FILE *f, const aneshare_status *st)
{
	if (!st->shared_total && !st->n_shared)
		return;
	fprintf(f, "\n%-10s %9s %6s  %s\n", "SHARED", "SIZE", "TOKENS", "HOLDERS");
	for (uint32_t i = 0; i < st->n_shared; i++) {
		const struct aneshare_status_shared *sh = &st->shared_list[i];
		char b1[32];
		human_bytes(b1, sizeof b1, sh->size);
		fprintf(f, "%-10" PRIu64 " %9s %6u ", sh->key, b1, sh->tokens);
		if (!sh->n_holders)
			fprintf(f, " -");
		for (uint32_t k = 0; k < sh->n_holders; k++) {
			const struct aneshare_status_holder *h = &sh->holder_list[k];
			char name[21], pid[24];
			clean_name(name, sizeof name, h->name[0] ? h->name : "(unnamed)");
			if (h->pid)
				snprintf(pid, sizeof pid, "%" PRIu64, h->pid);
			else
				snprintf(pid, sizeof pid, "?");
			fprintf(f, "%s %s (%s%s)", k ? "," : "", name, pid, h->read_only ? ", ro" : "");
		}
		if (sh->holders_total > sh->n_holders)
			fprintf(f, " and %u more", sh->holders_total - sh->n_holders);
		fputc('\n', f);
	}
	if (st->n_shared < st->shared_total)
		fprintf(f, "(%" PRIu64 " more not listed)\n", st->shared_total - st->n_shared);
}

void anes_cli_print_status(FILE *f, const aneshare_status *st, unsigned protocol, bool brief)
{
	char b1[32], b2[32], b3[32], b5[32];
	fprintf(f, "aneshared %s, backend %s, protocol %u, up %" PRIu64 ".%03" PRIu64 " s\n",
	        st->server_version, st->backend, protocol, st->uptime_ms / 1000, st->uptime_ms % 1000);
	fprintf(f, "connections %u, processes %u, runs %" PRIu64 " (on lanes %" PRIu64 ", on the thread that "
	        "raised their event %" PRIu64 "), compiles %" PRIu64 " (cache hits %" PRIu64 "), events %" PRIu64
	        "\n", st->clients, st->processes_total, st->runs, st->lane_runs, st->event_runs, st->compiles,
	        st->cache_hits, st->events);
	if (!brief)
		fprintf(f, "lane spin: %" PRIu64 " polls after an answer, %" PRIu64 " got the next request, %" PRIu64
		        " lost the CPU, %" PRIu64 " answers skipped it\n", st->lane_spins, st->lane_spin_hits,
		        st->lane_spin_gaps, st->lane_spin_skips);
	if (st->n_totals) {
		fprintf(f, "\n%-15s %12s %12s %12s %12s\n", "TOTAL", "used", "limit", "per client", "per uid");
		for (uint32_t i = 0; i < st->n_totals; i++) {
			const struct aneshare_status_total *t = &st->total_list[i];
			fmt_value(b1, sizeof b1, t->resource, t->used);
			if (t->limit)
				fmt_value(b2, sizeof b2, t->resource, t->limit);
			else
				snprintf(b2, sizeof b2, "-");
			if (t->client_limit)
				fmt_value(b3, sizeof b3, t->resource, t->client_limit);
			else
				snprintf(b3, sizeof b3, "-");
			if (t->uid_limit)
				fmt_value(b5, sizeof b5, t->resource, t->uid_limit);
			else
				snprintf(b5, sizeof b5, "-");
			fprintf(f, "%-15s %12s %12s %12s %12s\n", t->resource, b1, b2, b3, b5);
		}
	} else {
		human_bytes(b1, sizeof b1, st->surface_bytes);
		fprintf(f, "surfaces %u (%s)\n", st->surfaces, b1);
	}
	if (st->processes_total || st->n_processes) {
		fprintf(f, "\n%-20s %8s %5s %5s %6s %9s %5s %9s %4s %5s %8s %8s %10s %6s %4s %6s\n", "CLIENT",
		        "PID", "UID", "CONNS", "SURF", "SURF_B", "PROGS", "PROG_B", "FDS", "JOBS", "INPUT", "UNSENT",
		        "RUNS", "QUEUED", "DEV%", "EVENTS");
		for (uint32_t i = 0; i < st->n_processes; i++) {
			const struct aneshare_status_process *p = &st->process_list[i];
			char name[21], b4[32];
			clean_name(name, sizeof name, p->name[0] ? p->name : "(unnamed)");
			human_bytes(b1, sizeof b1, p->surface_bytes);
			human_bytes(b2, sizeof b2, p->program_bytes);
			human_bytes(b3, sizeof b3, p->unsent_bytes);
			human_bytes(b5, sizeof b5, p->input_bytes);
			if (p->pid)
				snprintf(b4, sizeof b4, "%" PRIu64, p->pid);
			else
				snprintf(b4, sizeof b4, "?");
			fprintf(f, "%-20s %8s %5u %5u %6" PRIu64 " %9s %5" PRIu64 " %9s %4" PRIu64 " %5" PRIu64
			        " %8s %8s %10" PRIu64 " %6" PRIu64 " %4" PRIu64 " %6" PRIu64 "\n",
			        name, b4, p->uid, p->connections, p->surfaces, b1, p->programs, b2, p->fds,
			        p->jobs, b5, b3, p->runs, p->queued, p->device_share, p->events);
		}
		if (st->n_processes < st->processes_total)
			fprintf(f, "(%u more not listed)\n", st->processes_total - st->n_processes);
	}
	print_shared(f, st);
	if (!brief) {
		fprintf(f, "\nprograms: %u\n", st->programs);
		for (uint32_t i = 0; i < st->programs; i++)
			fprintf(f, "  %s  refs %u\n", st->program_list[i].key, st->program_list[i].refs);
	}
}

/* ---- JSON ------------------------------------------------------------------------ */

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20 || *p >= 0x7f)
			fprintf(f, "\\u%04x", *p);   /* bytes, not code points: stays valid JSON */
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

static void json_u64(FILE *f, const char *key, uint64_t v, bool comma)
{
	fprintf(f, "\"%s\": %" PRIu64 "%s", key, v, comma ? ", " : "");
}

void anes_cli_print_json(FILE *f, const aneshare_status *st, unsigned protocol)
{
	fprintf(f, "{\"server\": \"aneshared\", \"version\": ");
	json_str(f, st->server_version);
	fprintf(f, ", \"backend\": ");
	json_str(f, st->backend);
	fprintf(f, ", ");
	json_u64(f, "protocol", protocol, true);
	json_u64(f, "uptime_ms", st->uptime_ms, true);
	json_u64(f, "clients", st->clients, true);
	json_u64(f, "processes_total", st->processes_total, true);
	json_u64(f, "surfaces", st->surfaces, true);
	json_u64(f, "surface_bytes", st->surface_bytes, true);
	json_u64(f, "runs", st->runs, true);
	json_u64(f, "lane_runs", st->lane_runs, true);
	json_u64(f, "compiles", st->compiles, true);
	json_u64(f, "cache_hits", st->cache_hits, true);
	json_u64(f, "events", st->events, true);
	json_u64(f, "event_runs", st->event_runs, true);
	fprintf(f, "\n \"totals\": [");
	for (uint32_t i = 0; i < st->n_totals; i++) {
		const struct aneshare_status_total *t = &st->total_list[i];
		fprintf(f, "%s\n  {\"resource\": ", i ? "," : "");
		json_str(f, t->resource);
		fprintf(f, ", ");
		json_u64(f, "used", t->used, true);
		json_u64(f, "limit", t->limit, true);
		json_u64(f, "client_limit", t->client_limit, true);
		json_u64(f, "uid_limit", t->uid_limit, false);
		fprintf(f, "}");
	}
	fprintf(f, "],\n \"processes\": [");
	for (uint32_t i = 0; i < st->n_processes; i++) {
		const struct aneshare_status_process *p = &st->process_list[i];
		fprintf(f, "%s\n  {\"name\": ", i ? "," : "");
		json_str(f, p->name);
		fprintf(f, ", ");
		json_u64(f, "pid", p->pid, true);
		json_u64(f, "uid", p->uid, true);
		json_u64(f, "connections", p->connections, true);
		json_u64(f, "surfaces", p->surfaces, true);
		json_u64(f, "surface_bytes", p->surface_bytes, true);
		json_u64(f, "fds", p->fds, true);
		json_u64(f, "programs", p->programs, true);
		json_u64(f, "program_bytes", p->program_bytes, true);
		json_u64(f, "jobs", p->jobs, true);
		json_u64(f, "unsent_bytes", p->unsent_bytes, true);
		json_u64(f, "input_bytes", p->input_bytes, true);
		json_u64(f, "runs", p->runs, true);
		json_u64(f, "queued", p->queued, true);
		json_u64(f, "device_us", p->device_us, true);
		json_u64(f, "device_share", p->device_share, true);
		json_u64(f, "events", p->events, true);
		fprintf(f, "\"priority\": ");
		json_str(f, p->priority ? p->priority : "");
		fprintf(f, "}");
	}
	fprintf(f, "],\n ");
	json_u64(f, "shared_total", st->shared_total, false);
	fprintf(f, ", \"shared\": [");
	for (uint32_t i = 0; i < st->n_shared; i++) {
		const struct aneshare_status_shared *sh = &st->shared_list[i];
		fprintf(f, "%s\n  {", i ? "," : "");
		json_u64(f, "key", sh->key, true);
		json_u64(f, "size", sh->size, true);
		json_u64(f, "tokens", sh->tokens, true);
		json_u64(f, "holders_total", sh->holders_total, true);
		fprintf(f, "\"holders\": [");
		for (uint32_t k = 0; k < sh->n_holders; k++) {
			const struct aneshare_status_holder *h = &sh->holder_list[k];
			fprintf(f, "%s{\"name\": ", k ? ", " : "");
			json_str(f, h->name);
			fprintf(f, ", ");
			json_u64(f, "pid", h->pid, true);
			fprintf(f, "\"read_only\": %s}", h->read_only ? "true" : "false");
		}
		fprintf(f, "]}");
	}
	fprintf(f, "],\n \"programs\": [");
	for (uint32_t i = 0; i < st->programs; i++) {
		fprintf(f, "%s\n  {\"key\": ", i ? "," : "");
		json_str(f, st->program_list[i].key);
		fprintf(f, ", ");
		json_u64(f, "refs", st->program_list[i].refs, false);
		fprintf(f, "}");
	}
	fprintf(f, "]}\n");
}

/* ---- top ---------------------------------------------------------------------------- */

static struct termios saved_tio;
static volatile sig_atomic_t tio_saved, quit_signal;

static void restore_terminal(void)
{
	if (tio_saved) {
		/* leave the alternate screen, show the cursor */
		static const char leave[] = "\033[?1049l\033[?25h";
		(void)!write(STDOUT_FILENO, leave, sizeof leave - 1);
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
		tio_saved = 0;
	}
}

static void on_quit_signal(int sig)
{
	quit_signal = sig;
}

static int raw_terminal(void)
{
	if (tcgetattr(STDIN_FILENO, &saved_tio) < 0)
		return -errno;
	struct termios raw = saved_tio;
	raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO | ISIG | IEXTEN);
	raw.c_iflag &= ~(tcflag_t)(IXON | ICRNL);
	raw.c_cc[VMIN] = 0;
	raw.c_cc[VTIME] = 0;
	if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) < 0)
		return -errno;
	tio_saved = 1;
	atexit(restore_terminal);
	static const char enter[] = "\033[?1049h\033[?25l";
	(void)!write(STDOUT_FILENO, enter, sizeof enter - 1);
	return 0;
}

/* Wait up to ms for a key; true if one says quit. */
static bool wait_key(int ms)
{
	struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
	int r = poll(&p, 1, ms);
	if (r <= 0)
		return false;
	char buf[64];
	ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
	if (n == 0)
		return true;   /* the terminal went away */
	for (ssize_t i = 0; i < n; i++)
		if (buf[i] == 'q' || buf[i] == 'Q' || buf[i] == 3 /* Ctrl-C */ || buf[i] == 27 /* Esc */)
			return true;
	return false;
}

int anes_cli_top(aneshare_conn *c, unsigned protocol, unsigned interval_ms)
{
	if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))
		return -ENOTTY;
	struct sigaction sa = { .sa_handler = on_quit_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	int r = raw_terminal();
	if (r < 0)
		return r;
	char *buf = NULL;
	size_t len = 0;
	int rc = 0;
	while (!quit_signal) {
		aneshare_status *st;
		r = aneshare_get_status(c, &st);
		if (r < 0) {
			rc = r;
			break;
		}
		/* Build the screen in memory and write it at once: no flicker. */
		FILE *m = open_memstream(&buf, &len);
		if (!m) {
			aneshare_status_free(st);
			rc = -ENOMEM;
			break;
		}
		fprintf(m, "\033[H\033[2J");
		anes_cli_print_status(m, st, protocol, true);
		fprintf(m, "\npress q to quit\n");
		fclose(m);
		aneshare_status_free(st);
		/* Output processing (\n -> \r\n) stays on in raw mode. */
		for (size_t off = 0; off < len;) {
			ssize_t w = write(STDOUT_FILENO, buf + off, len - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				break;
			off += (size_t)w;
		}
		free(buf);
		buf = NULL;
		if (wait_key((int)interval_ms))
			break;
	}
	restore_terminal();
	return rc;
}
