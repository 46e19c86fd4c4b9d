/* SPDX-License-Identifier: MIT */
/* `aneshare status` and `aneshare top` (cli_status.c). */
#ifndef ANES_CLI_STATUS_H
#define ANES_CLI_STATUS_H

#include <stdbool.h>
#include <stdio.h>

#include "aneshare.h"

/* The status as text: the daemon, its totals against their limits, one line
 * per client process, one per shared surface with its holders; brief leaves
 * out the lane figures and the programs. */
void anes_cli_print_status(FILE *f, const aneshare_status *st, unsigned protocol, bool brief);
/* The same as one JSON object (docs/protocol.md names the fields). */
void anes_cli_print_json(FILE *f, const aneshare_status *st, unsigned protocol);
/* Redraw the status every interval_ms until q, Esc, Ctrl-C or a signal,
 * with the terminal in raw mode (restored on return and at exit).
 * 0, -ENOTTY when stdin or stdout is not a terminal, or a library error. */
int anes_cli_top(aneshare_conn *c, unsigned protocol, unsigned interval_ms);

#endif
