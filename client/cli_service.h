/* SPDX-License-Identifier: MIT */
/* `aneshare service install|uninstall|status` (cli_service.c). */
#ifndef ANES_CLI_SERVICE_H
#define ANES_CLI_SERVICE_H

/* The usage lines of the service commands, for the CLI's help. */
#define ANES_CLI_SERVICE_USAGE                                                                   \
	"  service install             install the service for this user: systemd user units\n"    \
	"                              (Linux) or a launchd agent (macOS), socket-activated\n"     \
	"      --daemon PATH           the aneshared to run (default: next to this program,\n"     \
	"                              else its build tree's daemon/aneshared, else the\n"         \
	"                              install prefix's)\n"                                        \
	"      --dry-run               show what would be written and run, change nothing\n"       \
	"      --root DIR              use DIR as the home directory; start nothing (tests)\n"     \
	"      --systemd|--launchd     the kind of files (default: this system's)\n"              \
	"  service uninstall           stop the service and remove its files (same options)\n"    \
	"  service status              what is installed, and whether the daemon answers\n"

/* argv: the arguments after "service" (argv[0] is the subcommand); socket_path
 * is the global --socket (NULL if not given).  Returns the exit status:
 * 0 success, 1 failure, 2 usage error. */
int anes_cli_service(const char *socket_path, int argc, char **argv);

/* The CLI's messages, shared by cli.c (which defines them) and
 * cli_service.c: "aneshare: MESSAGE" on stderr.  fail returns the exit
 * status 1; usage_error adds a pointer to --help and returns 2. */
int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
