/* SPDX-License-Identifier: MIT */
/*
 * What the aneshare CLI says when it cannot get to a daemon, as a user meets
 * it: no daemon on the path, a socket file a stopped daemon left, a daemon
 * that hangs up before the handshake (over its connection limit; a user it
 * does not accept is closed the same way), a daemon of another protocol
 * version (a fake on a thread of the test), and a missing option value.
 * Each case runs the real CLI to its exit and checks the exit status and
 * that its two lines say what is wrong and what to do.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "anes_proto.h"
#include "daemon_harness.h"

TestSuite(cli_errors, .timeout = 120);

/* A directory and socket path for a test without a daemon (h_run_tool needs
 * only dir and sock); removed with rm_dir. */
static void no_daemon(h_daemon *d)
{
	const char *tmp = getenv("TMPDIR");
	*d = (h_daemon){ .pid = 0 };
	snprintf(d->dir, sizeof d->dir, "%s/anes-cli-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	cr_assert_not_null(mkdtemp(d->dir));
	snprintf(d->sock, sizeof d->sock, "%s/aneshare.sock", d->dir);
}

static void rm_dir(const char *dir)
{
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	cr_assert_eq(system(cmd), 0);
}

/* aneshare --socket d->sock args... exits with code, and its output holds
 * each of the NULL-terminated says. */
static void expect_cli(const h_daemon *d, const char *const *args, int code, const char *const *says)
{
	char out[8192];
	int got = h_run_tool(d, "ANESHARE_CLI", out, sizeof out, args);
	cr_expect_eq(got, code, "aneshare %s: exit %d, wanted %d: %s", args[0], got, code, out);
	for (; *says; says++)
		cr_expect(strstr(out, *says), "aneshare %s: the message does not say \"%s\": %s", args[0],
		          *says, out);
}

/* Nothing at the path, then a socket file nothing listens on: both are "no
 * daemon", with how to start one; status --wait says the same when its time
 * is up. */
Test(cli_errors, no_daemon_says_how_to_start_one)
{
	h_daemon d;
	no_daemon(&d);
	char want[300];
	snprintf(want, sizeof want, "no daemon listens on %s: No such file or directory", d.sock);
	const char *const says[] = { want, "Start one with 'aneshared'", "--socket PATH", NULL };
	expect_cli(&d, (const char *[]){ "status", NULL }, 1, says);
	expect_cli(&d, (const char *[]){ "compile", "x.mil", NULL }, 1, says);

	/* The socket file a daemon killed with SIGKILL leaves behind. */
	close(h_fake_listen(d.sock));
	snprintf(want, sizeof want, "no daemon listens on %s: Connection refused", d.sock);
	expect_cli(&d, (const char *[]){ "status", "--wait", "0.1", NULL }, 1, says);
	rm_dir(d.dir);
}

/* A path that came from ANESHARE_SOCKET is said to: the user did not type it. */
Test(cli_errors, a_socket_from_the_environment_is_named_so)
{
	h_daemon d;
	no_daemon(&d);
	char out[4096], want[300];
	cr_assert_eq(setenv("ANESHARE_SOCKET", d.sock, 1), 0);   /* the CLI inherits it */
	/* h_run_tool gives --socket: run the CLI by hand, without it. */
	const char *exe = getenv("ANESHARE_CLI");
	cr_assert_not_null(exe);
	char cmd[600];
	snprintf(cmd, sizeof cmd, "'%s' status > '%s/out' 2>&1", exe, d.dir);
	int st = system(cmd);
	unsetenv("ANESHARE_SOCKET");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status 0x%x", st);
	snprintf(cmd, sizeof cmd, "%s/out", d.dir);
	char *text = tu_read_file(cmd);
	cr_assert_not_null(text);
	snprintf(out, sizeof out, "%s", text);
	free(text);
	snprintf(want, sizeof want, "no daemon listens on %s (from ANESHARE_SOCKET): No such file", d.sock);
	cr_expect(strstr(out, want), "%s", out);
	rm_dir(d.dir);
}

/* A daemon at its --max-connections closes a new connection at once: the
 * CLI says the daemon hung up and where to look. */
Test(cli_errors, a_daemon_that_hangs_up_is_named)
{
	h_daemon d;
	h_daemon_start_args(&d, (const char *[]){ "--max-connections", "2", NULL });
	aneshare_conn *a = h_connect(&d, "first");
	h_wait_clients(a, 1);   /* the harness's probe has gone */
	aneshare_conn *b = h_connect(&d, "second");
	char want[300];
	snprintf(want, sizeof want, "the daemon on %s hung up before the handshake", d.sock);
	const char *const says[] = { want, "--max-connections", "its log", NULL };
	expect_cli(&d, (const char *[]){ "status", NULL }, 1, says);
	aneshare_disconnect(b);
	aneshare_disconnect(a);
	h_daemon_stop(&d);
}

/* A fake daemon that answers hello with the version error, as a daemon of
 * another protocol version does. */
typedef struct fake {
	int listen_fd;
	int failures;
} fake;

static void *fake_other_version(void *arg)
{
	fake *fk = arg;
	h_rconn rc;
	if (!h_fake_accept(fk->listen_fd, &rc)) {
		fk->failures++;
		return NULL;
	}
	uint32_t msgid = 0, id;
	char method[16];
	if (!h_fake_next(&rc, 10000, &msgid, method, sizeof method, &id) || strcmp(method, "hello"))
		fk->failures++;
	anes_frame f;
	anes_frame_init(&f);
	char msg[96];
	snprintf(msg, sizeof msg, "protocol version %d is not supported (this daemon speaks %d)",
	         ANES_PROTOCOL_VERSION, ANES_PROTOCOL_VERSION + 1);
	anes_pack_error(&f.pk, msgid, ANES_WERR_VERSION, msg);
	h_fake_send(&rc.io, &f, NULL, 0);
	h_rconn_close(&rc);
	return NULL;
}

Test(cli_errors, a_daemon_of_another_protocol_version)
{
	h_daemon d;
	no_daemon(&d);
	fake fk = { .listen_fd = h_fake_listen(d.sock) };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, fake_other_version, &fk), 0);
	char want[300], version[80];
	snprintf(want, sizeof want, "the daemon on %s speaks another protocol version", d.sock);
	snprintf(version, sizeof version, "this aneshare speaks %d", ANES_PROTOCOL_VERSION);
	const char *const says[] = { want, version, "restart the daemon", NULL };
	expect_cli(&d, (const char *[]){ "status", NULL }, 1, says);
	pthread_join(th, NULL);
	cr_assert_eq(fk.failures, 0, "the fake saw no hello");
	close(fk.listen_fd);
	rm_dir(d.dir);
}

/* An option without its value is a usage error that names the option. */
Test(cli_errors, a_missing_value_is_named)
{
	h_daemon d;
	no_daemon(&d);
	expect_cli(&d, (const char *[]){ "--socket", NULL }, 2,
	           (const char *const[]){ "--socket needs a path", "Try 'aneshare --help'", NULL });
	expect_cli(&d, (const char *[]){ "status", "--wait", NULL }, 2,
	           (const char *const[]){ "--wait needs a number of seconds", NULL });
	rm_dir(d.dir);
}

/* --help names the socket it would use without --socket, worked out here. */
Test(cli_errors, help_names_the_default_socket)
{
	h_daemon d;
	no_daemon(&d);
	char path[4096], want[4200];
	cr_assert_gt(aneshare_default_socket_path(path, sizeof path), 0);
	snprintf(want, sizeof want, "here: %s)", path);
	expect_cli(&d, (const char *[]){ "--help", NULL }, 0,
	           (const char *const[]){ want, "${TMPDIR:-/tmp}/aneshare-UID/aneshare.sock", NULL });
	rm_dir(d.dir);
}

/* The example client: --help is an answer (exit 0), and no daemon is named. */
Test(cli_errors, the_example_client_explains_itself)
{
	h_daemon d;
	no_daemon(&d);
	char out[4096];
	int got = h_run_tool(&d, "MATMUL_CLIENT", out, sizeof out, (const char *[]){ "--help", NULL });
	cr_expect_eq(got, 0, "matmul_client --help: exit %d: %s", got, out);
	cr_expect(strstr(out, "usage: matmul_client [--socket PATH]"), "%s", out);
	got = h_run_tool(&d, "MATMUL_CLIENT", out, sizeof out, (const char *[]){ NULL });
	cr_expect_eq(got, 1, "%s", out);
	char want[300];
	snprintf(want, sizeof want, "cannot connect to %s: No such file or directory (is aneshared running there?)",
	         d.sock);
	cr_expect(strstr(out, want), "%s", out);
	rm_dir(d.dir);
}

/* run --function with a name the program does not have lists the ones it has. */
Test(cli_errors, an_unknown_function_lists_the_functions)
{
	h_daemon d;
	h_daemon_start(&d);
	char mil[512], want[700];
	snprintf(mil, sizeof mil, "%s/examples/dynamic_matmul.mil", ANES_SOURCE_DIR);
	snprintf(want, sizeof want, "%s: no function 'nope' (it has: main)", mil);
	expect_cli(&d, (const char *[]){ "run", mil, "--fill", "zeros", "--function", "nope", NULL }, 1,
	           (const char *const[]){ want, NULL });
	h_daemon_stop(&d);
}
