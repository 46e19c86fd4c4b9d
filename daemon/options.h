/* SPDX-License-Identifier: MIT */
/*
 * aneshared's settings: command-line options and the configuration file.
 *
 * Every setting has a key, used as "key = value" in the file and as
 * --key-with-dashes on the command line; the command line wins over the file,
 * the file over the defaults of anes_server_config_init.  The file is
 * --config FILE, else $XDG_CONFIG_HOME/aneshare/aneshared.conf (or
 * ~/.config/aneshare/aneshared.conf) when that exists.  Lines are
 * "key = value", blank, or comments starting with '#'.  An unknown key or a
 * bad value is an error that names the file and line.
 */
#ifndef ANES_OPTIONS_H
#define ANES_OPTIONS_H

#include <stdint.h>

#include "mil.h"
#include "server.h"

typedef struct anes_options {
	/* Ready for anes_server_new; its pointers point into this struct. */
	anes_server_config cfg;
	/* --backend NAME ("auto" unless given); main.c decides what it means. */
	const char *backend;

	/* Storage behind the pointers above (owned). */
	char *socket_path;
	char *backend_name;
	char *fault_run_fail;
	uint32_t *allow_uids;
	size_t n_allow_uids;
	uint32_t *interactive_uids;
	size_t n_interactive_uids;
	char *config_path;          /* the file that was read, or NULL */
	uint32_t shutdown_timeout_s;

	/* The device worker (docs/worker.md): -1 = the backend's default (yes
	 * for ane, no for cpu), 0 = --no-worker, 1 = --worker. */
	int worker;
	/* --compile-budget: UINT32_MAX = the backend's default (100 for ane,
	 * unlimited for cpu); 0 = unlimited. */
	uint32_t compile_budget;
	uint32_t max_device_workers;        /* --max-device-workers */
	uint32_t run_deadline_floor_ms;     /* the watchdog's floors (docs/worker.md) */
	uint32_t compile_deadline_floor_ms;
	char *worker_fault;         /* hidden test hook, passed to the worker */
	bool no_lanes;              /* --no-lanes: cfg.lanes = false */
	/* The parser's structural limits (--max-mil-*; max_text is
	 * cfg.limits.max_mil_bytes): main.c sets them for the process, and the
	 * device workers get them on their command line. */
	anes_mil_limits mil;
} anes_options;

/* Fill o from argv and the configuration file.  Returns 0 when the daemon
 * should run, 1 when it should exit 0 (--help, --version: printed to stdout),
 * or -EINVAL after printing a one-line reason to stderr (exit 78, EX_CONFIG).  o must be
 * freed with anes_options_free in every case. */
int anes_options_parse(anes_options *o, int argc, char **argv);
void anes_options_free(anes_options *o);

#endif
