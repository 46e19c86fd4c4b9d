/* SPDX-License-Identifier: MIT */
/*
 * What stops aneshared before it serves, and how: a socket path it must not
 * use, a second daemon on the same socket, limits that do not fit together,
 * option forms, an unusable test clock, and the device worker's own command
 * line.  Each case runs the real daemon to its exit and checks the exit
 * status (78, EX_CONFIG, when a restart cannot help; 1 otherwise) and that
 * the message names what is wrong.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "anes_config.h"
#include "anes_name.h"
#include "daemon_harness.h"

TestSuite(startup, .timeout = 120);

/* A private directory (0700) for one test, removed with its files by rm_dir. */
static void make_dir(char *dir, size_t size)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, size, "%s/anes-start-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	cr_assert_not_null(mkdtemp(dir));
}

static void rm_dir(const char *dir)
{
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	cr_assert_eq(system(cmd), 0);
}

/* A file at path (created or truncated) that holds text. */
static void put_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	fputs(text, f);
	fclose(f);
}

/* aneshared args... exits with code, and its output holds says. */
static void expect_exit(const char *dir, const char *const *args, int code, const char *says)
{
	char err[8192];
	int got = h_run_aneshared(dir, args, err, sizeof err);
	cr_expect_eq(got, code, "%s %s: exit %d, wanted %d: %s", args[0], args[1] ? args[1] : "", got, code,
	             err);
	cr_expect(strstr(err, says), "%s %s: the message does not say \"%s\": %s", args[0],
	          args[1] ? args[1] : "", says, err);
}

/* The socket's directory must be a directory it can make or use. */
Test(startup, socket_directory_must_be_usable)
{
	char dir[128], path[300];
	make_dir(dir, sizeof dir);
	/* A file where the directory should be: nothing a restart mends. */
	snprintf(path, sizeof path, "%s/file", dir);
	int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	close(fd);
	char sock[320];
	snprintf(sock, sizeof sock, "%s/file/aneshare.sock", dir);
	const char *in_file[] = { "--socket", sock, NULL };
	expect_exit(dir, in_file, 78, "is not a directory");
	/* A directory others can enter: the message says how to mend it. */
	char open_dir[200];
	snprintf(open_dir, sizeof open_dir, "%s/open", dir);
	cr_assert_eq(mkdir(open_dir, 0755), 0);
	cr_assert_eq(chmod(open_dir, 0755), 0);   /* whatever the umask */
	snprintf(sock, sizeof sock, "%s/aneshare.sock", open_dir);
	const char *open_mode[] = { "--socket", sock, NULL };
	expect_exit(dir, open_mode, 78, "mode 0755): chmod 700 it if it is yours, or give --socket");
	/* A directory whose parent does not exist cannot be made. */
	snprintf(sock, sizeof sock, "%s/no/such/aneshare.sock", dir);
	const char *no_parent[] = { "--socket", sock, NULL };
	expect_exit(dir, no_parent, 1, "cannot create socket directory");
	expect_exit(dir, no_parent, 1, "(its parent must exist: give --socket a path in one that does)");
	rm_dir(dir);
}

/* A file at the socket path that is not a socket is not the daemon's to
 * delete: it refuses to start and leaves the file. */
Test(startup, a_file_at_the_socket_path_is_left_alone)
{
	char dir[128], sock[300];
	make_dir(dir, sizeof dir);
	snprintf(sock, sizeof sock, "%s/aneshare.sock", dir);
	put_file(sock, "precious\n");
	const char *args[] = { "--socket", sock, NULL };
	expect_exit(dir, args, 1, "exists and is not a socket");
	char *text = tu_read_file(sock);
	cr_assert_str_eq(text, "precious\n");
	free(text);
	rm_dir(dir);
}

/* A second daemon on a socket a running daemon holds exits 1 naming the
 * first one's pid; the first keeps serving. */
Test(startup, a_second_daemon_on_the_socket_is_refused)
{
	h_daemon d;
	h_daemon_start(&d);
	char dir[128], want[400];
	make_dir(dir, sizeof dir);
	const char *args[] = { "--socket", d.sock, NULL };
	snprintf(want, sizeof want, "another daemon is already listening on %s (pid %ld): "
	         "stop it first, or give this one another --socket PATH", d.sock, (long)d.pid);
	expect_exit(dir, args, 1, want);
	/* The first daemon still serves: its only client is this connection
	 * once it has seen the refused daemon's probe connection (and the
	 * harness's start-up one) close, which it may not have yet. */
	aneshare_conn *c = h_connect(&d, "first");
	h_wait_clients(c, 1);
	aneshare_disconnect(c);
	h_daemon_stop(&d);
	rm_dir(dir);
}

/* A daemon run as root says at start that only root's programs reach its
 * socket (a user who started it with sudo would look for it in vain); one
 * run as a user says nothing of the kind. */
Test(startup, a_daemon_run_as_root_says_who_can_reach_it)
{
	h_daemon d;
	h_daemon_start(&d);
	char *log = tu_read_file(d.log);
	cr_assert_not_null(log);
	bool said = strstr(log, "aneshared: running as root: only root's programs can reach the socket") != NULL;
	cr_expect_eq(said, geteuid() == 0, "euid %u: %s", (unsigned)geteuid(), log);
	free(log);
	h_daemon_stop(&d);
}

/* A daemon says which configuration file it read (the default one is read
 * only when it exists), and says nothing of one when it read none. */
Test(startup, the_configuration_file_read_is_named)
{
	char dir[128], conf[300];
	make_dir(dir, sizeof dir);
	snprintf(conf, sizeof conf, "%s/a.conf", dir);
	put_file(conf, "workers = 1\n");
	h_daemon d;
	h_daemon_start_args(&d, (const char *[]){ "--config", conf, NULL });
	char *log = tu_read_file(d.log), want[340];
	cr_assert_not_null(log);
	snprintf(want, sizeof want, "aneshared: settings from %s\n", conf);
	cr_expect(strstr(log, want), "no \"%s\" in: %s", want, log);
	free(log);
	h_daemon_stop(&d);
	h_daemon_start(&d);   /* XDG_CONFIG_HOME is its own empty directory */
	log = tu_read_file(d.log);
	cr_assert_not_null(log);
	cr_expect(!strstr(log, "settings from"), "%s", log);
	free(log);
	h_daemon_stop(&d);
	rm_dir(dir);
}

/* Limits that cannot hold together: exit 78 naming them. */
Test(startup, limits_that_do_not_fit_together)
{
	char dir[128], sock[300];
	make_dir(dir, sizeof dir);
	snprintf(sock, sizeof sock, "%s/aneshare.sock", dir);
	static const struct {
		const char *args[5];
		const char *says;
	} cases[] = {
		{ { "--max-frame", "4M", "--max-input-bytes", "2M" }, "max_input_bytes (2097152) must be at least max_frame + 8" },
		{ { "--max-frame", "1M", "--max-client-input-bytes", "512K" },
		  "max_client_input_bytes, max_client_unsent_bytes and max_daemon_unsent_bytes must be at least max_frame + 8 (1048584)" },
		{ { "--max-frame", "1M", "--max-uid-unsent-bytes", "512K" },
		  "max_uid_input_bytes and max_uid_unsent_bytes must be at least max_frame + 8 (1048584)" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const char *args[8] = { "--socket", sock };
		for (int k = 0; k < 4 && cases[i].args[k]; k++)
			args[2 + k] = cases[i].args[k];
		expect_exit(dir, args, 78, cases[i].says);
	}
	rm_dir(dir);
}

/* --config without a file, --config=FILE, a config "file" that cannot be
 * read, and test hooks asked for by a bad name. */
Test(startup, option_forms_and_their_errors)
{
	char dir[128], conf[300], arg[320];
	make_dir(dir, sizeof dir);
	const char *no_file[] = { "--config", NULL };
	expect_exit(dir, no_file, 78, "--config needs a FILE");
	snprintf(conf, sizeof conf, "%s/a.conf", dir);
	put_file(conf, "max_frame = 64K\nno_such_key = 1\n");
	snprintf(arg, sizeof arg, "--config=%s", conf);
	const char *eq_form[] = { arg, NULL };
	char want[340];
	snprintf(want, sizeof want, "%s:2", conf);   /* read: its second line is named */
	expect_exit(dir, eq_form, 78, want);
	/* An unknown key says what the keys are; a dashed one how to write it. */
	static const struct {
		const char *line, *says;
	} keys[] = {
		{ "max-frame = 64K\n", ":1: unknown key \"max-frame\": keys are written with '_' for '-'" },
		{ "max_fram = 64K\n", "the keys are the options of aneshared --help without \"--\"" },
		{ "no_worker = true\n", "unknown key \"no_worker\": write worker = false" },
	};
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
		put_file(conf, keys[i].line);
		expect_exit(dir, eq_form, 78, keys[i].says);
	}
	/* Options and arguments getopt refuses: named, with where to look. */
	static const struct {
		const char *arg, *says;
	} bad[] = {
		{ "--frob", "aneshared: unknown or ambiguous option '--frob'\nTry 'aneshared --help'." },
		{ "--workers", "aneshared: --workers needs a value\nTry 'aneshared --help'." },
		{ "--no-lanes=1", "aneshared: '--no-lanes=1': that option takes no value" },
		{ "-x", "aneshared: unknown option '-x'" },
		{ "serve", "aneshared: unexpected argument \"serve\" (it takes options only)\nTry" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		expect_exit(dir, (const char *[]){ bad[i].arg, NULL }, 78, bad[i].says);
	const char *a_dir[] = { "--config", dir, NULL };
	expect_exit(dir, a_dir, 78, "read error");
	const char *fault[] = { "--fault-inject", "everything", NULL };
	expect_exit(dir, fault, 78, "--fault-inject: only run_fail=FUNCTION and run_gate=/FIFO");
	const char *wfault[] = { "--worker", "--worker-fault", "everything", NULL };
	expect_exit(dir, wfault, 78, "--worker-fault: only start_fail");
	rm_dir(dir);
}

/* In builds with the test hooks, a fake clock file that cannot be used
 * stops the daemon (a test would otherwise run on the real clock). */
Test(startup, an_unusable_test_clock_is_refused)
{
#if !ANES_TEST_HOOKS
	cr_skip_test("built without -Dtest_hooks=true: no $ANESHARE_TEST_CLOCK");
#else
	char dir[128], sock[300], clk[300];
	make_dir(dir, sizeof dir);
	snprintf(sock, sizeof sock, "%s/aneshare.sock", dir);
	const char *args[] = { "--socket", sock, NULL };
	snprintf(clk, sizeof clk, "%s/no-such-clock", dir);
	cr_assert_eq(setenv("ANESHARE_TEST_CLOCK", clk, 1), 0);   /* the child inherits it */
	expect_exit(dir, args, 78, "ANESHARE_TEST_CLOCK: No such file or directory");
	snprintf(clk, sizeof clk, "%s/short-clock", dir);
	int fd = open(clk, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, "12345678", 8), 8);   /* half an anes_test_clock */
	close(fd);
	cr_assert_eq(setenv("ANESHARE_TEST_CLOCK", clk, 1), 0);
	expect_exit(dir, args, 78, "ANESHARE_TEST_CLOCK: Invalid argument");
	unsetenv("ANESHARE_TEST_CLOCK");
	rm_dir(dir);
#endif
}

/* The device worker's command line (the daemon's own, docs/worker.md): a
 * channel fd that is not open, bad MIL limits and an unknown backend each
 * end it with status 1 and a message, before it says hello. */
Test(startup, the_worker_child_refuses_a_bad_command_line)
{
	char dir[128];
	make_dir(dir, sizeof dir);
	const char *no_channel[] = { "--worker-child", "77", NULL };
	expect_exit(dir, no_channel, 1, "aneshared worker: no channel to the daemon");
	const char *limits[] = { "--worker-child", "0", "--mil-limits", "lots", NULL };
	expect_exit(dir, limits, 1, "aneshared worker: bad --mil-limits lots");
	const char *backend[] = { "--worker-child", "0", "--backend", "abacus", NULL };
	expect_exit(dir, backend, 1, "aneshared worker: cannot start the abacus backend");
	rm_dir(dir);
}

/* --help: every option's text ends with its default once, whether the help
 * text says it (a rule such as "1/4 of the machine's memory") or the daemon
 * prints the number; lines are wrapped within 100 columns; --help exits 0. */
Test(startup, help_names_each_default_once)
{
	char dir[128], out[65536];
	make_dir(dir, sizeof dir);
	const char *args[] = { "--help", NULL };
	int got = h_run_aneshared(dir, args, out, sizeof out);
	cr_assert_eq(got, 0, "--help: exit %d: %s", got, out);
	cr_assert(strstr(out, "--max-frame"), "--help lists no --max-frame: %s", out);
	/* An option's text goes on over the lines indented to its column: join
	 * them, then judge each option whole. */
	static char opt[128][2048];
	int options = 0, longest = 0;
	for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
		int len = (int)strlen(line);
		longest = len > longest ? len : longest;
		if (!strncmp(line, "  --", 4) && options < 128) {
			snprintf(opt[options++], sizeof opt[0], "%s", line);
		} else if (options && !strncmp(line, "                                 ", 33)) {
			size_t n = strlen(opt[options - 1]);
			snprintf(opt[options - 1] + n, sizeof opt[0] - n, " %s", line + 33);
		}
	}
	for (int i = 0; i < options; i++) {
		const char *first = strstr(opt[i], "(default");
		cr_expect(!first || !strstr(first + 1, "(default"), "a default said twice: %s", opt[i]);
	}
	cr_expect_gt(options, 40, "only %d options", options);
	cr_expect_leq(longest, 100, "a help line of %d columns", longest);
	rm_dir(dir);
}

/* The configuration file's values as a user may write them: booleans as
 * yes/no/1/0/true/false (each line before the bad one accepted: the bad
 * one is named), lines that are not "key = value", a key without a value, a
 * line longer than the reader's buffer, users that are neither a uid nor a
 * name and more than 1024 of them; then the test hooks' option values in
 * every malformed form. */
Test(startup, config_file_values_and_hook_forms)
{
	char dir[128], conf[300], arg[320];
	make_dir(dir, sizeof dir);
	snprintf(conf, sizeof conf, "%s/v.conf", dir);
	snprintf(arg, sizeof arg, "--config=%s", conf);
	char sock[300];   /* never the default socket, should a form be taken */
	snprintf(sock, sizeof sock, "%s/aneshare.sock", dir);
	const char *args[] = { arg, NULL };
	char *big = malloc(5000);
	memset(big, 'x', 4999);
	big[4999] = '\0';
	static const char *const many = "allow_uid = 1000\n";
	static const struct {
		const char *text;
		const char *says;
	} files[] = {
		{ "verbose = yes\nno_lanes = no\nworker = 0\nverbose = 1\nworker = false\nno_lanes = true\n"
		  "verbose = maybe\n", ":7: verbose: \"maybe\" is not true or false" },
		{ "# a comment\n\n   \nmax_frame 64K\n", ":4: expected \"key = value\"" },
		{ "verbose =   \n", ":1: verbose has no value" },
		{ "allow_uid = no-such-user-of-this-test\n", "is neither a uid nor a user name" },
		{ NULL, ":1: line too long" },
		{ "", ":1025: allow_uid: at most 1024 users" },
	};
	for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
		FILE *f = fopen(conf, "we");
		cr_assert_not_null(f);
		if (i == 4)
			fprintf(f, "max_frame = %s\n", big);
		else if (i == 5)
			for (int k = 0; k < 1025; k++)
				fputs(many, f);
		else
			fputs(files[i].text, f);
		fclose(f);
		expect_exit(dir, args, 78, files[i].says);
	}
	free(big);
	char name[12 + ANES_NAME_MAX + 2];   /* a function name longer than any */
	memset(name, 'n', sizeof name);
	memcpy(name, "compile_eio=", 12);
	name[sizeof name - 1] = '\0';
	static const char *const inject[] = { "run_fail=", "run_gate=relative/fifo", "run_frob=x" };
	for (size_t i = 0; i < sizeof inject / sizeof inject[0]; i++)
		expect_exit(dir, (const char *[]){ "--socket", sock, "--fault-inject", inject[i], NULL }, 78,
		            "--fault-inject: only run_fail=FUNCTION and run_gate=/FIFO");
	const char *const wfault[] = { "compile_eio=", name, "compile_hold=relative", "fd_room=x", "fd_room=" };
	for (size_t i = 0; i < sizeof wfault / sizeof wfault[0]; i++)
		expect_exit(dir, (const char *[]){ "--socket", sock, "--worker", "--worker-fault", wfault[i], NULL }, 78,
		            "--worker-fault: only start_fail");
	expect_exit(dir, (const char *[]){ "--socket", sock, "--help=1", NULL }, 78,
	            "'--help=1': that option takes no value");
	expect_exit(dir, (const char *[]){ "--socket", sock, "--version=yes", NULL }, 78,
	            "that option takes no value");
	rm_dir(dir);
}
