/* SPDX-License-Identifier: MIT */
/*
 * Surfaces shared between connections by capability token
 * (docs/protocol.md, "Sharing surfaces"; docs/security.md, "Tokens").
 *
 * surface.export makes a token for a handle the connection holds: 256 bits
 * from the OS's CSPRNG, valid for `uses` imports until `ttl_ms` has passed
 * (the daemon's clock, anes_clock_ns) and while the exporting handle is in
 * its connection's table.  surface.import {token} gives the importing
 * connection a handle of its own to the same memory (surface.c).  Tokens are
 * bounded per connection and daemon-wide, compared in constant time, and a
 * connection that fails token imports is slowed down, then closed.
 *
 * Read-only tokens: the importer's handle can never be a run output
 * (run.c), and on Linux its fd is a separate O_RDONLY open of the memfd
 * (through /proc/self/fd) whose inode was made mode 0444 at the first
 * read-only export, so that neither mmap(PROT_WRITE) on it nor a reopen of
 * it for writing works without CAP_DAC_OVERRIDE.  The descriptions opened
 * O_RDWR before (the creator's, the daemon's, a device worker's) keep
 * working.
 *
 * Loop thread only.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#if defined(__linux__)
#include <sys/random.h>
#endif

#include "anes_clock.h"
#include "anes_shm.h"
#include "daemon.h"
#include "event.h"

/* Failed token imports (unknown, used up, expired or revoked tokens): the
 * first SHARE_FREE_FAILS cost nothing; each further one stops the daemon
 * reading the connection for SHARE_PENALTY_NS, doubled each time; the
 * SHARE_MAX_FAILS-th closes it with `limit`.  A connection without a
 * failure for SHARE_FORGET_NS starts counting again. */
#define SHARE_FREE_FAILS 4u
#define SHARE_MAX_FAILS 12u
#define SHARE_PENALTY_NS (100ull * 1000000u)
#define SHARE_FORGET_NS (60ull * 1000000000u)
#define SHARE_TICK_MS 10u

#define TTL_DEFAULT_MS 30000u

/* Tokens are typed: one kind never imports as the other (an unknown token). */
enum { TOK_SURFACE = 1, TOK_EVENT = 2 };

typedef struct anes_share_tok anes_share_tok;
struct anes_share_tok {
	anes_share_tok *prev, *next;     /* srv->shares.toks */
	anes_share_tok *hprev, *hnext;   /* the exporting handle's list (*head) */
	uint8_t tok[ANES_TOKEN_BYTES];
	uint8_t kind;
	/* The exporting handle (borrowed: revoked before it goes): from for a
	 * surface token, efrom for an event token. */
	anes_surface *from;
	anes_evhandle *efrom;
	anes_conn *owner;     /* the exporting handle's connection */
	anes_share_tok **head;   /* &from->tokens or &efrom->tokens */
	bool read_only;
	uint32_t uses;        /* imports left, >= 1 */
	uint64_t expires_ns;  /* anes_clock_ns */
};

/* ---- randomness ------------------------------------------------------------- */

#if !(defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__))
static int urandom_bytes(uint8_t *p, size_t n)
{
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? -errno : -EIO;
			close(fd);
			return e;
		}
		got += (size_t)r;
	}
	close(fd);
	return 0;
}
#endif

int anes_random_bytes(void *buf, size_t n)
{
#if defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__)
	arc4random_buf(buf, n);   /* the kernel's CSPRNG; cannot fail */
	return 0;
#else
	uint8_t *p = buf;
#if defined(__linux__)
	size_t got = 0;
	while (got < n) {
		ssize_t r = getrandom(p + got, n - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == ENOSYS)
			break;   /* a kernel before 3.17: /dev/urandom below */
		if (r < 0)
			return -errno;
		got += (size_t)r;
	}
	if (got == n)
		return 0;
#endif
	return urandom_bytes(p, n);
#endif
}

/* ---- tokens ------------------------------------------------------------------ */

static void tok_free(anes_server *srv, anes_share_tok *t)
{
	anes_shares *sh = &srv->shares;
	if (t->prev)
		t->prev->next = t->next;
	else
		sh->toks = t->next;
	if (t->next)
		t->next->prev = t->prev;
	if (t->hprev)
		t->hprev->hnext = t->hnext;
	else
		*t->head = t->hnext;
	if (t->hnext)
		t->hnext->hprev = t->hprev;
	sh->n_toks--;
	t->owner->share_tokens--;
	if (t->from)
		t->from->mem->tokens--;
	volatile uint8_t *v = t->tok;
	for (size_t i = 0; i < sizeof(t->tok); i++)
		v[i] = 0;
	free(t);
}

static void purge_expired(anes_server *srv, uint64_t now)
{
	for (anes_share_tok *t = srv->shares.toks, *next; t; t = next) {
		next = t->next;
		if (now >= t->expires_ns)
			tok_free(srv, t);
	}
}

void anes_share_revoke(anes_surface *s)
{
	anes_server *srv = s->owner->srv;
	while (s->tokens)
		tok_free(srv, s->tokens);
}

void anes_share_revoke_event(anes_evhandle *h)
{
	anes_server *srv = h->conn->srv;
	while (h->tokens)
		tok_free(srv, h->tokens);
}

/* The live token of kind equal to tok, compared in constant time (every
 * byte of every token, and its kind), or NULL. */
static anes_share_tok *tok_find(anes_server *srv, const uint8_t tok[ANES_TOKEN_BYTES], uint8_t kind)
{
	anes_share_tok *hit = NULL;
	for (anes_share_tok *t = srv->shares.toks; t; t = t->next) {
		unsigned d = (unsigned)(t->kind ^ kind);
		for (size_t i = 0; i < ANES_TOKEN_BYTES; i++)
			d |= (unsigned)(t->tok[i] ^ tok[i]);
		hit = d == 0 ? t : hit;
	}
	return hit;
}

static const char hexdig[] = "0123456789abcdef";

static int hex_val(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

/* ---- helpers ------------------------------------------------------------------ */

static void pack_bool(msgpack_packer *pk, bool v)
{
	if (v)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
}

/* An optional unsigned param: absent or nil -> def; else 1..max. */
static int opt_uint(const msgpack_object *params, const char *key, uint64_t max, uint64_t def,
                    uint64_t *ret)
{
	const msgpack_object *o = anes_mp_get(params, key);
	if (!o || o->type == MSGPACK_OBJECT_NIL) {
		*ret = def;
		return 0;
	}
	uint64_t v;
	int r = anes_mp_u64(params, key, max, &v);
	if (r < 0 || v == 0)
		return -EINVAL;
	*ret = v;
	return 0;
}

static void reply_bad(anes_conn *c, const anes_msg *m, const char *key, int r, const char *range)
{
	if (r == -ENOENT)
		anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS, "missing \"%s\"", key);
	else
		anes_conn_reply_error(c, m->msgid, ANES_WERR_INVALID_PARAMS,
		                      "\"%s\" has the wrong type or is out of range%s", key, range);
}

/* ---- penalties ------------------------------------------------------------------ */

static void on_penalty_timer(uv_timer_t *h)
{
	anes_server *srv = h->data;
	uint64_t now = anes_clock_ns();
	for (anes_conn *c = srv->conns; c; c = c->next) {
		if (!c->share_paused || c->failed || now < c->share_until_ns)
			continue;
		c->share_paused = false;
		srv->shares.n_paused--;
		anes_conn_kick(c);   /* its buffered requests, then reading again */
	}
	if (srv->shares.n_paused == 0)
		uv_timer_stop(h);
}

void anes_shares_init(anes_server *srv)
{
	uv_timer_init(&srv->loop, &srv->shares.timer);
	srv->shares.timer.data = srv;
	uv_unref((uv_handle_t *)&srv->shares.timer);   /* never keeps the loop alive by itself */
	srv->shares.timer_init = true;
}

void anes_shares_close(anes_server *srv)
{
	if (srv->shares.timer_init)
		uv_close((uv_handle_t *)&srv->shares.timer, NULL);
	srv->shares.timer_init = false;
}

void anes_share_conn_gone(anes_conn *c)
{
	if (c->share_paused) {
		c->share_paused = false;
		c->srv->shares.n_paused--;
	}
}

/* A token import failed: answer code (no_such_surface, no_such_event),
 * count it (one count for both kinds), and slow the connection down or
 * close it. */
static void import_failed(anes_conn *c, uint32_t msgid, int code, const char *why)
{
	anes_server *srv = c->srv;
	uint64_t now = anes_clock_ns();
	if (c->share_fails && now - c->share_last_fail_ns >= SHARE_FORGET_NS)
		c->share_fails = 0;
	c->share_fails++;
	c->share_last_fail_ns = now;
	anes_conn_reply_error(c, msgid, code, "%s", why);
	if (c->share_fails >= SHARE_MAX_FAILS) {
		char msg[128];
		snprintf(msg, sizeof(msg), "%u failed token imports", c->share_fails);
		anes_conn_close_with_error(c, ANES_WERR_LIMIT, msg);
		return;
	}
	if (c->share_fails <= SHARE_FREE_FAILS)
		return;
	c->share_until_ns = now + (SHARE_PENALTY_NS << (c->share_fails - SHARE_FREE_FAILS - 1));
	if (!c->share_paused) {
		c->share_paused = true;
		srv->shares.n_paused++;
	}
	if (srv->shares.timer_init && !uv_is_active((uv_handle_t *)&srv->shares.timer))
		uv_timer_start(&srv->shares.timer, on_penalty_timer, SHARE_TICK_MS, SHARE_TICK_MS);
}

/* ---- surface.export ------------------------------------------------------------- */

/* The memfd's inode mode to 0444, once: a reopen for writing then needs
 * CAP_DAC_OVERRIDE (or the owner's fchmod back).  0, or fchmod's -errno (EPERM: another user's memfd,
 * imported by fd). */
static int make_ro_mode(anes_smem *mem)
{
	if (mem->ro_mode || mem->fd < 0)
		return 0;
	if (fchmod(mem->fd, S_IRUSR | S_IRGRP | S_IROTH) < 0)
		return -errno;
	mem->ro_mode = true;
	return 0;
}

/* uses and ttl_ms of an export: false when answered with the error. */
static bool export_params(anes_conn *c, const anes_msg *m, uint64_t *ret_uses, uint64_t *ret_ttl)
{
	const anes_limits *lim = &c->srv->lim;
	char range[64];
	if (opt_uint(m->params, "uses", lim->max_export_uses, 1, ret_uses) < 0) {
		snprintf(range, sizeof(range), " (1..%u)", lim->max_export_uses);
		reply_bad(c, m, "uses", -EINVAL, range);
		return false;
	}
	uint64_t def_ttl = TTL_DEFAULT_MS < lim->max_export_ttl_ms ? TTL_DEFAULT_MS : lim->max_export_ttl_ms;
	if (opt_uint(m->params, "ttl_ms", lim->max_export_ttl_ms, def_ttl, ret_ttl) < 0) {
		snprintf(range, sizeof(range), " (1..%u)", lim->max_export_ttl_ms);
		reply_bad(c, m, "ttl_ms", -EINVAL, range);
		return false;
	}
	return true;
}

/* The live-token limits (expired tokens purged first): false when
 * answered with the error. */
static bool export_room(anes_conn *c, uint32_t msgid)
{
	anes_server *srv = c->srv;
	const anes_limits *lim = &srv->lim;
	purge_expired(srv, anes_clock_ns());
	if (c->share_tokens >= lim->max_exports_per_conn) {
		anes_conn_reply_error(c, msgid, ANES_WERR_LIMIT,
		                      "too many live tokens on this connection (max_exports_per_conn %u)",
		                      lim->max_exports_per_conn);
		return false;
	}
	if (srv->shares.n_toks >= lim->max_daemon_exports) {
		anes_conn_reply_error(c, msgid, ANES_WERR_LIMIT,
		                      "too many live tokens in the daemon (max_daemon_exports %u)",
		                      lim->max_daemon_exports);
		return false;
	}
	return true;
}

/* Make a token of kind for the handle whose token list is *head, answer
 * {token, expires_ms}, and link it; NULL when answered with an error. */
static anes_share_tok *tok_make(anes_conn *c, uint32_t msgid, uint8_t kind, anes_share_tok **head,
                                uint64_t uses, uint64_t ttl_ms)
{
	anes_server *srv = c->srv;
	anes_share_tok *t = calloc(1, sizeof(*t));
	if (!t) {
		anes_conn_reply_error(c, msgid, ANES_WERR_NO_MEMORY, "out of memory");
		return NULL;
	}
	int r = anes_random_bytes(t->tok, sizeof(t->tok));
	if (r < 0) {
		free(t);
		anes_conn_reply_error(c, msgid, ANES_WERR_INTERNAL, "no random bytes from the OS: %s",
		                      strerror(-r));
		return NULL;
	}
	char hex[2 * ANES_TOKEN_BYTES];
	for (size_t i = 0; i < ANES_TOKEN_BYTES; i++) {
		hex[2 * i] = hexdig[t->tok[i] >> 4];
		hex[2 * i + 1] = hexdig[t->tok[i] & 15];
	}
	anes_frame f;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, msgid, 2);
	anes_pack_str(&f.pk, "token");
	anes_pack_strn(&f.pk, hex, sizeof(hex));
	anes_pack_kv_u64(&f.pk, "expires_ms", ttl_ms);
	memset(hex, 0, sizeof(hex));

	t->kind = kind;
	t->owner = c;
	t->head = head;
	t->uses = (uint32_t)uses;
	t->expires_ns = anes_clock_ns() + ttl_ms * 1000000u;
	anes_shares *sh = &srv->shares;
	t->next = sh->toks;
	if (sh->toks)
		sh->toks->prev = t;
	sh->toks = t;
	t->hnext = *head;
	if (*head)
		(*head)->hprev = t;
	*head = t;
	sh->n_toks++;
	c->share_tokens++;
	anes_conn_send(c, &f, msgid, NULL, 0);
	return t;
}

void anes_share_export(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	anes_server *srv = c->srv;
	uint32_t id;
	bool ro = false;
	uint64_t uses, ttl_ms;

	(void)fds;
	(void)nfds;   /* the dispatcher refuses fds */
	int r = anes_mp_u32(m->params, "id", &id);
	if (r < 0) {
		reply_bad(c, m, "id", r, "");
		return;
	}
	const msgpack_object *o = anes_mp_get(m->params, "read_only");
	if (o && o->type != MSGPACK_OBJECT_NIL && anes_mp_bool(m->params, "read_only", &ro) < 0) {
		reply_bad(c, m, "read_only", -EINVAL, "");
		return;
	}
	if (!export_params(c, m, &uses, &ttl_ms))
		return;
	anes_surface *s = anes_idt_find(&c->surfaces, id);
	if (!s) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_SUCH_SURFACE, "no surface %u", id);
		return;
	}
	ro = ro || s->read_only;   /* a read-only handle exports read-only */
	if (!export_room(c, m->msgid))
		return;
	if (ro && (r = make_ro_mode(s->mem)) < 0) {
		anes_conn_reply_error(c, m->msgid, r == -EPERM ? ANES_WERR_INVALID_PARAMS : ANES_WERR_INTERNAL,
		                      "the memfd cannot be made read-only (%s)%s", strerror(-r),
		                      r == -EPERM ? ": it belongs to another user" : "");
		return;
	}
	anes_share_tok *t = tok_make(c, m->msgid, TOK_SURFACE, &s->tokens, uses, ttl_ms);
	if (!t)
		return;
	t->from = s;
	t->read_only = ro;
	anes_smem *mem = s->mem;
	mem->tokens++;
	if (!mem->exported) {
		anes_shares *sh = &srv->shares;
		mem->exported = true;
		mem->xnext = sh->exported;
		if (sh->exported)
			sh->exported->xprev = mem;
		sh->exported = mem;
	}
}

/* ---- event.export, event.import ----------------------------------------------------- */

void anes_share_event_export(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	uint32_t id;
	uint64_t uses, ttl_ms;

	(void)fds;
	(void)nfds;
	int r = anes_mp_u32(m->params, "id", &id);
	if (r < 0) {
		reply_bad(c, m, "id", r, "");
		return;
	}
	if (!export_params(c, m, &uses, &ttl_ms))
		return;
	anes_evhandle *h = anes_idt_find(&c->event_ids, id);
	if (!h) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_NO_SUCH_EVENT, "no event %u", id);
		return;
	}
	if (!export_room(c, m->msgid))
		return;
	anes_share_tok *t = tok_make(c, m->msgid, TOK_EVENT, &h->tokens, uses, ttl_ms);
	if (t)
		t->efrom = h;
}

/* The token param as bytes: false when answered with invalid_params. */
static bool parse_token(anes_conn *c, const anes_msg *m, uint8_t tok[ANES_TOKEN_BYTES])
{
	const char *str;
	uint32_t len;
	int r = anes_mp_str(m->params, "token", 2 * ANES_TOKEN_BYTES, &str, &len);
	if (r < 0 || len != 2 * ANES_TOKEN_BYTES) {
		reply_bad(c, m, "token", r == -ENOENT ? -ENOENT : -EINVAL, " (64 lowercase hex digits)");
		return false;
	}
	for (uint32_t i = 0; i < ANES_TOKEN_BYTES; i++) {
		int hi = hex_val(str[2 * i]), lo = hex_val(str[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			reply_bad(c, m, "token", -EINVAL, " (64 lowercase hex digits)");
			return false;
		}
		tok[i] = (uint8_t)(hi << 4 | lo);
	}
	return true;
}

void anes_share_event_import(anes_conn *c, const anes_msg *m, int *fds, unsigned nfds)
{
	anes_server *srv = c->srv;
	uint8_t tok[ANES_TOKEN_BYTES];

	(void)fds;
	(void)nfds;
	if (!parse_token(c, m, tok))
		return;
	purge_expired(srv, anes_clock_ns());
	anes_share_tok *t = tok_find(srv, tok, TOK_EVENT);
	memset(tok, 0, sizeof(tok));
	if (!t) {
		import_failed(c, m->msgid, ANES_WERR_NO_SUCH_EVENT,
		              "no such token (unknown, used up, expired, or its exporter released the "
		              "event)");
		return;
	}
	anes_event *ev = t->efrom->ev;
	anes_evhandle *h = anes_event_handle_add(c, m->msgid, ev, false);
	if (!h)
		return;   /* refused: the token stays */
	if (--t->uses == 0)
		tok_free(srv, t);
	anes_frame f;
	anes_frame_init(&f);
	anes_pack_result(&f.pk, m->msgid, 2);
	anes_pack_kv_u64(&f.pk, "id", h->id);
	anes_pack_kv_u64(&f.pk, "value", anes_event_value(ev));
	anes_conn_send(c, &f, m->msgid, NULL, 0);
}

/* ---- surface.import {token} -------------------------------------------------------- */

/* A separate O_RDONLY open file description of the memfd fd. */
static int reopen_ro(int fd, int *ret)
{
#if defined(__linux__)
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int r = open(path, O_RDONLY | O_CLOEXEC);
	if (r < 0)
		return -errno;
	*ret = r;
	return 0;
#else
	(void)fd;
	(void)ret;
	return -ENOTSUP;   /* memfds (and /proc) are Linux's */
#endif
}

void anes_share_import(anes_conn *c, const anes_msg *m, unsigned nfds)
{
	anes_server *srv = c->srv;
	const char *str;
	uint32_t len;
	uint8_t tok[ANES_TOKEN_BYTES];

	int r = anes_mp_str(m->params, "token", 2 * ANES_TOKEN_BYTES, &str, &len);
	if (r < 0 || len != 2 * ANES_TOKEN_BYTES) {
		reply_bad(c, m, "token", -EINVAL, " (64 lowercase hex digits)");
		return;
	}
	for (uint32_t i = 0; i < ANES_TOKEN_BYTES; i++) {
		int hi = hex_val(str[2 * i]), lo = hex_val(str[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			reply_bad(c, m, "token", -EINVAL, " (64 lowercase hex digits)");
			return;
		}
		tok[i] = (uint8_t)(hi << 4 | lo);
	}
	if (nfds != 0) {
		anes_conn_reply_error(c, m->msgid, ANES_WERR_BAD_FD,
		                      "surface.import by token takes no fd");
		return;
	}
	purge_expired(srv, anes_clock_ns());
	anes_share_tok *t = tok_find(srv, tok, TOK_SURFACE);
	if (!t) {
		import_failed(c, m->msgid, ANES_WERR_NO_SUCH_SURFACE,
		              "no such token (unknown, used up, expired, or its exporter released the "
		              "surface)");
		return;
	}
	anes_smem *mem = t->from->mem;
	bool ro = t->read_only, keep_fd = mem->fd >= 0;
	if (!anes_surface_limits_ok(c, m->msgid, mem->size, keep_fd, false))
		return;   /* the token stays */
	int fd = -1;
	if (keep_fd) {
		if (ro) {
			r = reopen_ro(mem->fd, &fd);
		} else {
			fd = fcntl(mem->fd, F_DUPFD_CLOEXEC, 3);
			r = fd < 0 ? -errno : 0;
		}
	}
	anes_surface *s = NULL;
	if (r == 0)
		r = anes_surface_new_handle(c, mem, ro, &s);
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		anes_surface_uncharge(c, mem->size, keep_fd, false);
		if (r == -EMFILE || r == -ENFILE)
			anes_conn_reply_error(c, m->msgid, ANES_WERR_LIMIT,
			                      "the daemon is out of file descriptors (%s)", strerror(-r));
		else
			anes_conn_reply_error(c, m->msgid, r == -ENOMEM ? ANES_WERR_NO_MEMORY : ANES_WERR_INTERNAL,
			                      "importing the surface: %s", strerror(-r));
		return;
	}
	if (--t->uses == 0)
		tok_free(srv, t);
	anes_surface_reply(c, m->msgid, s, fd, true);
}

/* ---- status ------------------------------------------------------------------------ */

static bool listed(const anes_smem *mem)
{
	return mem->refs >= 2 || mem->tokens > 0;
}

/* Bytes an entry and a holder take at most (a holder's name is at most
 * ANES_CLIENT_NAME_MAX). */
#define ENTRY_BYTES 96u
#define HOLDER_BYTES (48u + ANES_CLIENT_NAME_MAX)

void anes_share_pack_status(msgpack_packer *pk, anes_server *srv, size_t budget)
{
	purge_expired(srv, anes_clock_ns());
	uint32_t total = 0, n = 0;
	size_t left = budget;
	for (const anes_smem *mem = srv->shares.exported; mem; mem = mem->xnext) {
		if (!listed(mem))
			continue;
		total++;
		if (left >= ENTRY_BYTES && n == total - 1) {
			left -= ENTRY_BYTES;
			n++;
			size_t h = left / HOLDER_BYTES < mem->refs ? left / HOLDER_BYTES : mem->refs;
			left -= h * HOLDER_BYTES;
		}
	}
	left = budget;
	anes_pack_str(pk, "shared");
	msgpack_pack_array(pk, n);
	uint32_t i = 0;
	for (const anes_smem *mem = srv->shares.exported; mem && i < n; mem = mem->xnext) {
		if (!listed(mem))
			continue;
		i++;
		left -= ENTRY_BYTES;
		uint32_t h = left / HOLDER_BYTES < mem->refs ? (uint32_t)(left / HOLDER_BYTES) : mem->refs;
		left -= (size_t)h * HOLDER_BYTES;
		msgpack_pack_map(pk, 5);
		anes_pack_kv_u64(pk, "key", mem->key);
		anes_pack_kv_u64(pk, "size", mem->size);
		anes_pack_kv_u64(pk, "tokens", mem->tokens);
		anes_pack_kv_u64(pk, "holders_total", mem->refs);
		anes_pack_str(pk, "holders");
		msgpack_pack_array(pk, h);
		uint32_t k = 0;
		for (const anes_surface *s = mem->handles; s && k < h; s = s->mnext, k++) {
			msgpack_pack_map(pk, 3);
			anes_pack_kv_u64(pk, "pid", s->tenant->pid > 0 ? (uint64_t)s->tenant->pid : 0);
			anes_pack_str(pk, "name");
			anes_pack_strn(pk, s->owner->name, strnlen(s->owner->name, sizeof(s->owner->name)));
			anes_pack_str(pk, "read_only");
			pack_bool(pk, s->read_only);
		}
	}
	anes_pack_kv_u64(pk, "shared_total", total);
}
