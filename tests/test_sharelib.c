/* SPDX-License-Identifier: MIT */
/*
 * Sharing surfaces by token through libaneshare (aneshare_surface_export,
 * aneshare_surface_import_token; the daemon's side is tests/test_share.c):
 * a model computed through an imported surface, read-only imports mapped
 * PROT_READ and refused as run outputs, tokens checked before they are
 * sent, the daemon's no_such_surface as the library's code, status and the
 * CLI listing the holders, what a reconnect does to imports, and the
 * three-process example against its one-process reference.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "anes_clock.h"
#include "anes_proto.h"
#include "aneshare.h"
#include "daemon_harness.h"

static h_daemon D;

static void setup(void)
{
	h_daemon_start(&D);
}

static void teardown(void)
{
	h_daemon_kill(&D);
}

TestSuite(sharelib, .init = setup, .fini = teardown, .timeout = 120);

static aneshare_token export_ok(aneshare_conn *c, aneshare_surface *s, bool read_only, uint32_t uses)
{
	aneshare_token t;
	memset(&t, 'x', sizeof t);
	uint64_t expires = 0;
	aneshare_export_opts o = { .read_only = read_only, .uses = uses };
	int r = aneshare_surface_export(s, &o, &t, &expires);
	cr_assert_eq(r, 0, "export: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_eq(aneshare_token_check(t.text), 0, "a token of 64 lowercase hex digits: %.70s", t.text);
	cr_assert_gt(expires, 0);
	return t;
}

static aneshare_surface *import_ok(aneshare_conn *c, const aneshare_token *t)
{
	aneshare_surface *s = NULL;
	int r = aneshare_surface_import_token(c, t->text, &s);
	cr_assert_eq(r, 0, "import: %s: %s", aneshare_strerror(r), aneshare_last_error(c));
	cr_assert_not_null(s);
	return s;
}

/* An import that must fail with code want, leaving *ret alone. */
static void import_fails(aneshare_conn *c, const char *token, int want)
{
	aneshare_surface *s = (aneshare_surface *)(uintptr_t)0x5a5a;
	int r = aneshare_surface_import_token(c, token, &s);
	cr_assert_eq(r, want, "import of %.70s: %d %s (%s), want %s", token ? token : "(null)", r,
	             aneshare_strerror(r), aneshare_last_error(c), aneshare_strerror(want));
	cr_assert_eq((uintptr_t)s, 0x5a5a, "the out-parameter is written only on success");
	cr_assert_str_not_empty(aneshare_last_error(c));
}

/* ---- the round trip ---------------------------------------------------------------- */

Test(sharelib, a_model_computes_through_imported_surfaces)
{
	aneshare_conn *p = h_connect(&D, "exporter"), *q = h_connect(&D, "importer");
	h_mm mm;
	aneshare_program *pp = h_compile_mm(p, &mm, NULL), *pq = h_compile_mm(q, &mm, NULL);
	aneshare_surface *in = h_surface(p, mm.in_bytes);
	h_mm_fill(&mm, aneshare_surface_data(in), 1);

	/* the input, exported once (the default: one use) */
	aneshare_token t = export_ok(p, in, false, 0);
	aneshare_surface *qin = import_ok(q, &t);
	cr_assert_geq(aneshare_surface_size(qin), mm.in_bytes);
	cr_assert_not(aneshare_surface_read_only(qin));
	cr_assert_neq(aneshare_surface_id(qin), 0);
	cr_assert_eq(memcmp(aneshare_surface_data(qin), aneshare_surface_data(in), mm.in_bytes), 0,
	             "the importer sees what the exporter wrote");
	cr_assert_neq(aneshare_surface_data(qin), aneshare_surface_data(in), "two mappings");
	((uint8_t *)aneshare_surface_data(in))[3] ^= 0x40;
	cr_assert_eq(((uint8_t *)aneshare_surface_data(qin))[3], ((uint8_t *)aneshare_surface_data(in))[3],
	             "one memory: a write is seen through the other mapping");
	((uint8_t *)aneshare_surface_data(in))[3] ^= 0x40;
	import_fails(q, t.text, -ANESHARE_ENO_SUCH_SURFACE);   /* used up */

	/* the importer runs on it: a real result */
	aneshare_surface *qout = h_surface(q, mm.out_bytes);
	h_mm_run_check(pq, &mm, qin, qout);

	/* the other way: the importer's output, imported by the exporter and
	 * written by the exporter's run (a read-write import is an output) */
	aneshare_token t2 = export_ok(q, qout, false, 2);
	aneshare_surface *pout = import_ok(p, &t2);
	aneshare_surface *pout2 = import_ok(p, &t2);   /* two uses */
	import_fails(p, t2.text, -ANESHARE_ENO_SUCH_SURFACE);
	cr_assert_eq(aneshare_surface_release(pout2), 0);
	h_mm_fill(&mm, aneshare_surface_data(in), 2);
	memset(aneshare_surface_data(qout), 0xff, mm.out_bytes);
	cr_assert_eq(aneshare_run(pp, 0, &in, 1, &pout, 1), 0, "%s", aneshare_last_error(p));
	double e = h_mm_error(&mm, aneshare_surface_data(in), aneshare_surface_data(qout));
	cr_assert_leq(e, H_MM_TOL, "the importer's own surface holds the exporter's result: %g", e);

	/* the exporter lets go: the importer's handle stays valid */
	cr_assert_eq(aneshare_surface_release(in), 0);
	h_mm_fill_run_check(pq, &mm, qin, qout, 3);
	aneshare_disconnect(p);
	h_mm_fill_run_check(pq, &mm, qin, qout, 4);
	aneshare_disconnect(q);
}

/* ---- read-only ------------------------------------------------------------------------ */

#ifdef __linux__
/* The permissions of this process's mapping at addr, from /proc/self/maps. */
static void map_perms(const void *addr, char perms[5])
{
	FILE *f = fopen("/proc/self/maps", "re");
	cr_assert_not_null(f);
	char line[512];
	strcpy(perms, "none");
	while (fgets(line, sizeof line, f)) {
		uintptr_t lo, hi;
		char p[5];
		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %4s", &lo, &hi, p) == 3 &&
		    (uintptr_t)addr >= lo && (uintptr_t)addr < hi) {
			memcpy(perms, p, 5);
			break;
		}
	}
	fclose(f);
}
#endif

Test(sharelib, a_read_only_import_is_mapped_read_only_and_no_run_output)
{
	aneshare_conn *p = h_connect(&D, "exporter"), *q = h_connect(&D, "reader");
	h_mm mm;
	aneshare_program *pq = h_compile_mm(q, &mm, NULL);
	aneshare_surface *in = h_surface(p, mm.in_bytes), *pout = h_surface(p, mm.out_bytes);
	h_mm_fill(&mm, aneshare_surface_data(in), 5);
	memset(aneshare_surface_data(pout), 0x3c, mm.out_bytes);

	aneshare_token t = export_ok(p, in, true, 0);
	aneshare_surface *ro = import_ok(q, &t);
	cr_assert(aneshare_surface_read_only(ro));
	cr_assert_not(aneshare_surface_read_only(in), "the exporter's own handle stays writable");
	cr_assert_not(aneshare_surface_read_only(NULL));
#ifdef __linux__
	char perms[5];
	map_perms(aneshare_surface_data(ro), perms);
	cr_assert_str_eq(perms, "r--s", "a read-only import is mapped shared, PROT_READ: %s", perms);
	map_perms(aneshare_surface_data(in), perms);
	cr_assert_str_eq(perms, "rw-s", "%s", perms);
#endif

	/* a write through the mapping is a SIGSEGV, not a change */
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct sigaction sa = { .sa_handler = SIG_DFL };   /* not the sanitizer's report */
		sigaction(SIGSEGV, &sa, NULL);
		sigaction(SIGBUS, &sa, NULL);
		((volatile uint8_t *)aneshare_surface_data(ro))[0] = 1;
		_exit(0);
	}
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV, "the write must fault (status %#x)", st);

	/* an input: computes */
	aneshare_surface *qout = h_surface(q, mm.out_bytes);
	h_mm_run_check(pq, &mm, ro, qout);

	/* an output: refused with invalid_params, in every form of run, and
	 * the memory is unchanged */
	uint8_t *before = malloc(mm.in_bytes);
	memcpy(before, aneshare_surface_data(ro), mm.in_bytes);
	aneshare_surface *bigger = h_surface(q, mm.in_bytes);   /* an input that fits */
	memcpy(aneshare_surface_data(bigger), before, mm.in_bytes);
	int r = aneshare_run(pq, 0, &bigger, 1, &ro, 1);
	cr_assert_eq(r, -ANESHARE_EINVALID_PARAMS, "%s", aneshare_strerror(r));
	cr_assert(strstr(aneshare_last_error(q), "read-only"), "%s", aneshare_last_error(q));
	uint32_t ticket = 0;
	r = aneshare_run_submit(pq, 0, &bigger, 1, &ro, 1, &ticket);
	cr_assert_eq(r, -ANESHARE_EINVALID_PARAMS, "%s", aneshare_strerror(r));
	aneshare_step steps[2] = { { pq, 0, &bigger, 1, &qout, 1 }, { pq, 0, &bigger, 1, &ro, 1 } };
	r = aneshare_run_chain(q, steps, 2);
	cr_assert_eq(r, -ANESHARE_EINVALID_PARAMS, "%s", aneshare_strerror(r));
	cr_assert(strstr(aneshare_last_error(q), "step 1"), "%s", aneshare_last_error(q));
	cr_assert_eq(memcmp(aneshare_surface_data(ro), before, mm.in_bytes), 0);
	cr_assert_eq(memcmp(aneshare_surface_data(in), before, mm.in_bytes), 0);

	/* a re-export of a read-only handle is read-only whatever it asks */
	aneshare_conn *r3 = h_connect(&D, "third");
	aneshare_token t3 = export_ok(q, ro, false, 0);
	aneshare_surface *ro3 = import_ok(r3, &t3);
	cr_assert(aneshare_surface_read_only(ro3));

	/* the exporter's read-write handle is still an output */
	aneshare_token t4 = export_ok(p, pout, false, 0);
	aneshare_surface *rw = import_ok(q, &t4);
	cr_assert_not(aneshare_surface_read_only(rw));
	cr_assert_eq(aneshare_run(pq, 0, &ro, 1, &rw, 1), 0, "%s", aneshare_last_error(q));
	double e = h_mm_error(&mm, aneshare_surface_data(in), aneshare_surface_data(pout));
	cr_assert_leq(e, H_MM_TOL, "%g", e);
	free(before);
	aneshare_disconnect(r3);
	aneshare_disconnect(q);
	aneshare_disconnect(p);
}

/* ---- tokens are checked before they are sent ----------------------------------------------- */

/* A fake daemon on a thread: hello, one surface.create (a real memfd),
 * then the export and import requests of the test, answered as scripted;
 * it notes the imports it is sent.  The library must not trust its
 * answers either. */
typedef struct fake {
	int listen_fd;
	int failures;         /* requests the script did not expect */
	int imports;          /* surface.import requests seen */
	uint32_t msgid;       /* the last one's */
	char token[80];       /* and its token */
	bool eof;             /* the client hung up after the script */
} fake;

static void note_import(const anes_msg *m, void *ud)
{
	fake *fk = ud;
	const char *tok;
	uint32_t len;
	if (m->type != ANES_MSG_REQUEST || !anes_msg_method_is(m, "surface.import") ||
	    anes_mp_str(m->params, "token", 79, &tok, &len) < 0) {
		fk->failures++;
		return;
	}
	fk->imports++;
	fk->msgid = m->msgid;
	memcpy(fk->token, tok, len);
	fk->token[len] = '\0';
}

static void *fake_main(void *arg)
{
	fake *fk = arg;
	h_rconn rc;
	if (!h_fake_greet(fk->listen_fd, &rc, &fk->failures))
		return NULL;
	uint32_t msgid, id;
	char method[64];
	anes_frame f;

	/* surface.create: a 4 KiB memfd, ID 7 */
	if (!h_fake_next(&rc, 10000, &msgid, method, sizeof method, &id) || strcmp(method, "surface.create"))
		fk->failures++;
	int fd = -1;
	if (anes_memfd_create("fake", 4096, &fd) < 0)
		fk->failures++;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, msgid, 2);
	anes_pack_str(&f.pk, "id");
	msgpack_pack_uint32(&f.pk, 7);
	anes_pack_str(&f.pk, "size");
	msgpack_pack_uint32(&f.pk, 4096);
	h_fake_send(&rc.io, &f, &fd, 1);   /* takes fd */

	/* surface.export of ID 7: answered with a token that is not lowercase hex */
	if (!h_fake_next(&rc, 10000, &msgid, method, sizeof method, &id) ||
	    strcmp(method, "surface.export") || id != 7)
		fk->failures++;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, msgid, 2);
	anes_pack_str(&f.pk, "token");
	anes_pack_str(&f.pk, "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef");
	anes_pack_str(&f.pk, "expires_ms");
	msgpack_pack_uint32(&f.pk, 30000);
	h_fake_send(&rc.io, &f, NULL, 0);

	/* the first well-formed import: no_such_surface */
	if (h_rconn_next(&rc, 10000, note_import, fk) != 1)
		fk->failures++;
	anes_frame_init(&f);
	anes_pack_error(&f.pk, fk->msgid, ANESHARE_ENO_SUCH_SURFACE - ANESHARE_EBASE, "no such token");
	h_fake_send(&rc.io, &f, NULL, 0);

	/* the second: a surface without its fd; the library must release it */
	if (h_rconn_next(&rc, 10000, note_import, fk) != 1)
		fk->failures++;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, fk->msgid, 3);
	anes_pack_str(&f.pk, "id");
	msgpack_pack_uint32(&f.pk, 9);
	anes_pack_str(&f.pk, "size");
	msgpack_pack_uint32(&f.pk, 4096);
	anes_pack_str(&f.pk, "read_only");
	msgpack_pack_true(&f.pk);
	h_fake_send(&rc.io, &f, NULL, 0);
	if (!h_fake_next(&rc, 10000, &msgid, method, sizeof method, &id) ||
	    strcmp(method, "surface.release") || id != 9)
		fk->failures++;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, msgid, 0);
	h_fake_send(&rc.io, &f, NULL, 0);

	/* nothing else comes: the next thing is the client hanging up */
	const uint8_t *payload;
	uint32_t len;
	fk->eof = h_rconn_frame(&rc, 10000, &payload, &len, NULL) == 0;
	h_rconn_close(&rc);
	return NULL;
}

Test(sharelib, tokens_are_checked_before_they_are_sent)
{
	static const char good[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
	static const char good2[] = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
	cr_assert_eq(aneshare_token_check(good), 0);
	cr_assert_eq(aneshare_token_check(good2), 0);
	const char *bad[] = {
		NULL, "", "0011", good + 1,                                             /* short */
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff0",  /* 65 */
		"00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff",   /* upper case */
		"00112233445566778899aabbccddeefg00112233445566778899aabbccddeeff",   /* g */
		"00112233445566778899aabbccddeeff 0112233445566778899aabbccddeeff",   /* space */
		"0x112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
	};
	size_t nbad = sizeof bad / sizeof bad[0];
	for (size_t i = 0; i < nbad; i++)
		cr_assert_eq(aneshare_token_check(bad[i]), -EINVAL, "bad[%zu]", i);
	char nul[66];
	memcpy(nul, good, 65);
	nul[20] = '\0';   /* a NUL inside */
	cr_assert_eq(aneshare_token_check(nul), -EINVAL);

#ifndef __linux__
	cr_skip_test("the fake daemon hands out a memfd (Linux)");
#endif
	char path[256];
	snprintf(path, sizeof path, "%s/fake.sock", D.dir);
	fake fk = { .listen_fd = h_fake_listen(path) };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, fake_main, &fk), 0);
	int fds_before = h_count_fds();
	aneshare_conn *c = NULL;
	cr_assert_eq(aneshare_connect(path, "checker", &c), 0);
	aneshare_surface *s = NULL;
	cr_assert_eq(aneshare_surface_create(c, 4096, &s), 0, "%s", aneshare_last_error(c));

	aneshare_token t;
	memset(&t, 0, sizeof t);
	int r = aneshare_surface_export(s, NULL, &t, NULL);
	cr_assert_eq(r, -ANESHARE_EPROTOCOL, "a token in upper case: %s", aneshare_strerror(r));
	cr_assert_eq(t.text[0], '\0', "the out-parameter is written only on success");
	cr_assert_eq(aneshare_surface_export(s, NULL, NULL, NULL), -EINVAL);
	cr_assert_eq(aneshare_surface_export(NULL, NULL, &t, NULL), -EINVAL);
	cr_assert_eq(aneshare_surface_import_token(NULL, good, &s), -EINVAL);
	cr_assert_eq(aneshare_surface_import_token(c, good, NULL), -EINVAL);

	for (size_t i = 0; i < nbad; i++)
		import_fails(c, bad[i], -EINVAL);
	import_fails(c, nul, -EINVAL);
	cr_assert(strstr(aneshare_last_error(c), "hex"), "%s", aneshare_last_error(c));

	import_fails(c, good, -ANESHARE_ENO_SUCH_SURFACE);
	cr_assert_str_eq(aneshare_last_error(c), "no such token");
	import_fails(c, good2, -ANESHARE_EPROTOCOL);   /* no fd with it */

	aneshare_disconnect(c);
	pthread_join(th, NULL);
	cr_assert_eq(fk.failures, 0, "the fake daemon saw requests it did not expect");
	cr_assert_eq(fk.imports, 2, "only the two well-formed tokens were sent");
	cr_assert_str_eq(fk.token, good2);
	cr_assert(fk.eof, "nothing but the script was sent");
	cr_assert_eq(h_count_fds(), fds_before, "fds leaked");
	close(fk.listen_fd);
	unlink(path);
}

/* ---- the daemon's no_such_surface ---------------------------------------------------------- */

Test(sharelib, dead_tokens_are_no_such_surface)
{
	aneshare_conn *p = h_connect(&D, "exporter");
	aneshare_surface *a = h_surface(p, 4096), *b = h_surface(p, 4096);

	/* a well-formed token the daemon never made */
	aneshare_conn *q = h_connect(&D, "guesser");
	import_fails(q, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	             -ANESHARE_ENO_SUCH_SURFACE);
	cr_assert_str_eq(aneshare_strerror(-ANESHARE_ENO_SUCH_SURFACE), "no_such_surface");
	cr_assert_not(aneshare_error_is_retryable(-ANESHARE_ENO_SUCH_SURFACE));
	aneshare_disconnect(q);

	/* a token of a surface the exporter released */
	aneshare_token t = export_ok(p, a, false, 3);
	cr_assert_eq(aneshare_surface_release(a), 0);
	q = h_connect(&D, "late");
	import_fails(q, t.text, -ANESHARE_ENO_SUCH_SURFACE);
	aneshare_disconnect(q);

	/* a token whose exporter disconnected; the surface it still names
	 * through another import stays usable */
	aneshare_token t2 = export_ok(p, b, false, 2);
	q = h_connect(&D, "holder");
	aneshare_surface *qb = import_ok(q, &t2);
	memset(aneshare_surface_data(qb), 0x11, 4096);
	aneshare_disconnect(p);
	h_wait_clients(q, 1);   /* the daemon has seen the exporter go */
	aneshare_conn *r = h_connect(&D, "after");
	import_fails(r, t2.text, -ANESHARE_ENO_SUCH_SURFACE);
	aneshare_disconnect(r);
	aneshare_token t3 = export_ok(q, qb, false, 0);   /* the holder exports it again */
	r = h_connect(&D, "again");
	aneshare_surface *rb = import_ok(r, &t3);
	cr_assert_eq(((uint8_t *)aneshare_surface_data(rb))[4095], 0x11);
	aneshare_disconnect(r);
	aneshare_disconnect(q);
}

Test(sharelib, an_expired_token_is_no_such_surface)
{
	h_daemon_kill(&D);
	anes_test_clock *k = h_fake_clock();   /* time stands still until moved */
	h_daemon_start(&D);
	aneshare_conn *p = h_connect(&D, "exporter"), *q = h_connect(&D, "importer");
	aneshare_surface *s = h_surface(p, 4096);
	aneshare_token t1, t2;
	aneshare_export_opts o = { .uses = 2, .ttl_ms = 1000 };
	uint64_t expires = 0;
	cr_assert_eq(aneshare_surface_export(s, &o, &t1, &expires), 0, "%s", aneshare_last_error(p));
	cr_assert_eq(expires, 1000, "the lifetime granted");
	cr_assert_eq(aneshare_surface_export(s, &o, &t2, NULL), 0, "%s", aneshare_last_error(p));
	cr_assert_str_neq(t1.text, t2.text);
	aneshare_surface *a = import_ok(q, &t1);   /* in time */
	atomic_fetch_add(&k->now_ns, 999000000ull);
	aneshare_surface *b = import_ok(q, &t2);   /* 999 ms: still in time */
	atomic_fetch_add(&k->now_ns, 2000000ull);
	import_fails(q, t1.text, -ANESHARE_ENO_SUCH_SURFACE);   /* 1001 ms: a use left, but expired */
	cr_assert_eq(aneshare_surface_release(a), 0);
	cr_assert_eq(aneshare_surface_release(b), 0);
	aneshare_disconnect(q);
	aneshare_disconnect(p);
}

/* ---- status and the CLI ------------------------------------------------------------------------ */

Test(sharelib, status_and_the_cli_show_shared_surfaces_and_holders)
{
	aneshare_conn *p = h_connect(&D, "cam-producer"), *q = h_connect(&D, "model-a");
	aneshare_surface *s = h_surface(p, 3 * 4096);
	aneshare_token t = export_ok(p, s, true, 2);
	aneshare_surface *qs = import_ok(q, &t);
	(void)qs;
	aneshare_status *st = h_status(q);
	cr_assert_eq(st->n_shared, 1);
	cr_assert_eq(st->shared_total, 1);
	const struct aneshare_status_shared *sh = &st->shared_list[0];
	cr_assert_eq(sh->size, 3 * 4096);
	cr_assert_eq(sh->tokens, 1, "one use left");
	cr_assert_eq(sh->n_holders, 2);
	cr_assert_eq(sh->holders_total, 2);
	bool saw_p = false, saw_q = false;
	for (uint32_t i = 0; i < sh->n_holders; i++) {
		const struct aneshare_status_holder *h = &sh->holder_list[i];
		cr_assert_eq(h->pid, (uint64_t)getpid());
		if (!strcmp(h->name, "cam-producer")) {
			saw_p = true;
			cr_assert_not(h->read_only);
		} else if (!strcmp(h->name, "model-a")) {
			saw_q = true;
			cr_assert(h->read_only);
		}
	}
	cr_assert(saw_p && saw_q);
	aneshare_status_free(st);

	char out[16384], want[128];
	int r = h_run_tool(&D, "ANESHARE_CLI", out, sizeof out, (const char *[]){ "status", NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert(strstr(out, "SHARED"), "%s", out);
	snprintf(want, sizeof want, "cam-producer (%d), model-a (%d, ro)", (int)getpid(), (int)getpid());
	char want2[128];
	snprintf(want2, sizeof want2, "model-a (%d, ro), cam-producer (%d)", (int)getpid(), (int)getpid());
	cr_assert(strstr(out, want) || strstr(out, want2), "%s", out);
	cr_assert(strstr(out, "12.0K"), "%s", out);
	r = h_run_tool(&D, "ANESHARE_CLI", out, sizeof out, (const char *[]){ "status", "--json", NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert(strstr(out, "\"shared_total\": 1"), "%s", out);
	cr_assert(strstr(out, "\"size\": 12288, \"tokens\": 1, \"holders_total\": 2"), "%s", out);
	cr_assert(strstr(out, "{\"name\": \"model-a\", \"pid\": "), "%s", out);
	cr_assert(strstr(out, "\"read_only\": true}"), "%s", out);

	/* once one holder is left and no token, it is not shared any more */
	aneshare_disconnect(q);
	aneshare_surface *qq;
	q = h_connect(&D, "model-b");
	cr_assert_eq(aneshare_surface_import_token(q, t.text, &qq), 0, "%s", aneshare_last_error(q));
	cr_assert_eq(aneshare_surface_release(qq), 0);
	aneshare_disconnect(q);
	for (int i = 0; i < 1000; i++) {   /* the daemon handles the hang-up on its own time */
		st = h_status(p);
		uint32_t n = st->n_shared;
		aneshare_status_free(st);
		if (n == 0)
			break;
		usleep(10000);
	}
	st = h_status(p);
	cr_assert_eq(st->n_shared, 0);
	cr_assert_eq(st->shared_total, 0);
	aneshare_status_free(st);
	r = h_run_tool(&D, "ANESHARE_CLI", out, sizeof out, (const char *[]){ "status", NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert_null(strstr(out, "SHARED"), "%s", out);
	aneshare_disconnect(p);
}

/* ---- reconnecting ------------------------------------------------------------------------------------ */

Test(sharelib, a_reconnect_imports_the_memory_again_or_loses_a_read_only_import)
{
	aneshare_conn *p = h_connect(&D, "exporter"), *q = h_connect(&D, "importer");
	h_mm mm;
	aneshare_program *pq = h_compile_mm(q, &mm, NULL);
	aneshare_surface *in = h_surface(p, mm.in_bytes), *in2 = h_surface(p, mm.in_bytes);
	h_mm_fill(&mm, aneshare_surface_data(in), 11);
	h_mm_fill(&mm, aneshare_surface_data(in2), 12);
	aneshare_token t = export_ok(p, in, false, 0), t2 = export_ok(p, in2, true, 0);
	aneshare_surface *rw = import_ok(q, &t), *ro = import_ok(q, &t2);
	aneshare_surface *out = h_surface(q, mm.out_bytes);
	uint32_t id_rw = aneshare_surface_id(rw);

	h_daemon_crash(&D);
	h_daemon_restart(&D, true);
	aneshare_status *st = h_status(q);   /* reconnects, restoring everything */
	cr_assert_eq(aneshare_reconnect_count(q), 1);
	cr_assert_eq(st->n_shared, 0, "tokens died with the daemon; nothing is shared until exported again");
	aneshare_status_free(st);

	/* the read-write import: this connection's own surface now, the same memory */
	cr_assert_neq(aneshare_surface_id(rw), 0);
	(void)id_rw;
	cr_assert_not(aneshare_surface_read_only(rw));
	h_mm_run_check(pq, &mm, rw, out);
	/* the read-only one: still mapped and read-only here, but the new
	 * daemon takes no read-only fd, so it is lost */
	cr_assert_eq(aneshare_surface_id(ro), 0);
	cr_assert(aneshare_surface_read_only(ro));
	cr_assert_eq(memcmp(aneshare_surface_data(ro), aneshare_surface_data(in2), mm.in_bytes), 0);
	int r = aneshare_run(pq, 0, &ro, 1, &out, 1);
	cr_assert_eq(r, -ANESHARE_ENO_SUCH_SURFACE, "%s", aneshare_strerror(r));
	aneshare_token tt;
	r = aneshare_surface_export(ro, NULL, &tt, NULL);
	cr_assert_eq(r, -ANESHARE_ENO_SUCH_SURFACE, "%s", aneshare_strerror(r));
	cr_assert_eq(aneshare_surface_release(ro), 0);

	/* the old tokens are gone; the exporter exports again */
	import_fails(q, t.text, -ANESHARE_ENO_SUCH_SURFACE);
	aneshare_token t3 = export_ok(p, in2, true, 0);   /* p reconnects first */
	ro = import_ok(q, &t3);
	h_mm_run_check(pq, &mm, ro, out);
	aneshare_disconnect(q);
	aneshare_disconnect(p);
}

/* ---- the example ------------------------------------------------------------------------------------ */

Test(sharelib, the_three_process_pipeline_matches_one_process)
{
	char out[8192];
	int r = h_run_tool(&D, "PIPELINE", out, sizeof out,
	                   (const char *[]){ "--sync", "socket", "--frames", "40", "--depth", "2", NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert(strstr(out, "40 frames, producer -> model A -> model B, 2 in flight, ordered by socket "
	                      "messages; 0 of them off"), "%s", out);
	cr_assert(strstr(out, "shared surfaces: 4,"), "%s", out);
	r = h_run_tool(&D, "PIPELINE", out, sizeof out,
	               (const char *[]){ "--sync", "socket", "--frames", "12", "--depth", "1", "--spin-us", "200",
	                                 "--interval-us", "100", NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert(strstr(out, "12 frames, producer -> model A -> model B, 1 in flight, ordered by socket "
	                      "messages; 0 of them off"), "%s", out);
	/* the bench's mode, briefly */
	r = h_run_tool(&D, "PIPELINE", out, sizeof out,
	               (const char *[]){ "--sync", "socket", "--bench", "2", "--batch", "5", NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert(strstr(out, "bench: interval_us=0 pipeline_p50_us=") && strstr(out, " bad=0 sync=socket\n"),
	          "%s", out);
}

/* --sync event (the default): runs submitted ahead wait for and signal
 * events; no byte between the processes per frame. */
Test(sharelib, the_pipeline_ordered_by_events_matches_one_process)
{
	char out[8192];
	for (int depth = 1; depth <= 4; depth++) {
		char d[8], want[128];
		snprintf(d, sizeof d, "%d", depth);
		int r = h_run_tool(&D, "PIPELINE", out, sizeof out,
		                   (const char *[]){ "--frames", "40", "--depth", d, NULL });
		cr_assert_eq(r, 0, "%s", out);
		snprintf(want, sizeof want, "40 frames, producer -> model A -> model B, %d in flight, ordered by "
		         "events; 0 of them off", depth);
		cr_assert(strstr(out, want), "%s", out);
		snprintf(want, sizeof want, "shared surfaces: %d,", 2 * depth);
		cr_assert(strstr(out, want), "%s", out);
		cr_assert(strstr(out, "bytes sent between the three processes: 0.0 per frame"), "%s", out);
	}
	int r = h_run_tool(&D, "PIPELINE", out, sizeof out,
	                   (const char *[]){ "--sync", "event", "--bench", "2", "--batch", "5", "--interval-us",
	                                     "100", NULL });
	cr_assert_eq(r, 0, "%s", out);
	cr_assert(strstr(out, "bench: interval_us=100 pipeline_p50_us=") && strstr(out, " bad=0 sync=event\n"),
	          "%s", out);
	cr_assert(strstr(out, "the producer's event.signal round trip"), "%s", out);
	/* every event closed at the end: none left in the daemon */
	aneshare_conn *c = h_connect(&D, "after");
	h_wait_clients(c, 1);   /* the pipeline's connections are closed */
	aneshare_status *st = h_status(c);
	cr_assert_eq(st->events, 0, "%llu events left", (unsigned long long)st->events);
	aneshare_status_free(st);
	aneshare_disconnect(c);
}
