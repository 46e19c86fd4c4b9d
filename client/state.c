/* SPDX-License-Identifier: MIT */
/* States of a program's function (aneshare.h, "states"; docs/protocol.md,
 * "States"). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void state_link(aneshare_conn *c, aneshare_state *st)
{
	ANESC_LIST_LINK(c, states, st);
}

void anesc_state_free_local(aneshare_state *st)
{
	ANESC_LIST_UNLINK(states, st);
	free(st);
}

ANESHARE_API uint32_t aneshare_program_state_count(const aneshare_program *p, uint32_t fn)
{
	return p && fn < p->n_functions ? p->functions[fn].n_states : 0;
}

ANESHARE_API const aneshare_tensor_info *aneshare_program_state(const aneshare_program *p,
                                                                uint32_t fn, uint32_t i)
{
	if (!p || fn >= p->n_functions || i >= p->functions[fn].n_states)
		return NULL;
	return &p->functions[fn].states[i];
}

/* ---- state.create ------------------------------------------------------------ */

typedef struct create_result {
	uint32_t id;
	uint64_t size;
} create_result;

static int create_cb(aneshare_conn *c, const msgpack_object *res, int *fds, unsigned nfds,
                     void *ud)
{
	(void)fds;
	(void)nfds;
	create_result *cr = ud;
	if (anes_mp_u32(res, "id", &cr->id) < 0 || cr->id == 0 ||
	    anes_mp_u64(res, "size", UINT64_MAX, &cr->size) < 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed state.create reply from the daemon");
	return 0;
}

static int pack_create(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	const aneshare_state *st = ud;
	const aneshare_program *p = st->program;
	if (!p)
		return anesc_fail(c, -ANESHARE_ENO_SUCH_PROGRAM, "the state's program was released");
	return anesc_pack_program_fn(c, pk, p, st->fn);
}

static int create_req(aneshare_conn *c, aneshare_state *st, create_result *cr, unsigned flags)
{
	return anesc_request(c, &(anesc_req){ .method = "state.create", .n_params = 2,
	                                      .pack = pack_create, .pack_ud = st, .fd = -1,
	                                      .fn = create_cb, .fn_ud = cr, .flags = flags });
}

ANESHARE_API int aneshare_state_create(aneshare_program *p, uint32_t fn, aneshare_state **ret)
{
	if (!p || !ret)
		return -EINVAL;
	aneshare_conn *c = p->conn;
	if (fn >= p->n_functions)
		return anesc_fail(c, -EINVAL, "the program has no function %u", fn);
	aneshare_state *st = calloc(1, sizeof *st);
	if (!st)
		return anesc_fail(c, -ENOMEM, "out of memory");
	st->program = p;
	st->fn = fn;
	create_result cr = { 0 };
	int r = create_req(c, st, &cr, ANESC_IDEMPOTENT);
	if (r < 0) {
		free(st);
		anesc_release_quiet(c, "state.release", cr.id);   /* a malformed reply's */
		return r;
	}
	st->id = cr.id;
	st->size = cr.size;
	state_link(c, st);
	*ret = st;
	return 0;
}

int anesc_state_restore(aneshare_conn *c, aneshare_state *st)
{
	create_result cr = { 0 };
	int r = create_req(c, st, &cr, ANESC_NO_RECONNECT);
	if (c->dead || c->broken)
		return r < 0 ? r : anesc_broken_rc(c);
	if (r < 0) {   /* refused, or its program is gone: this state is lost */
		anesc_release_quiet(c, "state.release", cr.id);   /* the daemon's, if it made one */
		st->lost = r;
		st->id = 0;
		return 0;
	}
	st->id = cr.id;
	st->size = cr.size;
	st->stale = true;
	return 0;
}

/* ---- state.reset, state.release ------------------------------------------------- */

static int pack_state_id(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	const aneshare_state *st = ud;
	if (st->lost)
		return anesc_fail(c, -ANESHARE_ENO_SUCH_STATE,
		                  "the state could not be made again after the daemon restarted: %s",
		                  aneshare_strerror(st->lost));
	anes_pack_str(pk, "id");
	msgpack_pack_uint32(pk, st->id);
	return 0;
}

ANESHARE_API int aneshare_state_reset(aneshare_state *st)
{
	if (!st)
		return -EINVAL;
	/* Zeroing twice does no harm: sent again after a reconnect (to the
	 * state made again there, which it then unmarks). */
	int r = anesc_request(st->conn, &(anesc_req){ .method = "state.reset", .n_params = 1,
	                                              .pack = pack_state_id, .pack_ud = st, .fd = -1,
	                                              .flags = ANESC_IDEMPOTENT });
	if (r == 0)
		st->stale = false;
	return r;
}

ANESHARE_API int aneshare_state_release(aneshare_state *st)
{
	if (!st)
		return 0;
	aneshare_conn *c = st->conn;
	uint32_t id = st->id;
	bool lost = st->lost != 0;
	anesc_state_free_local(st);
	if (lost)
		return 0;   /* the daemon has no such state */
	return anesc_release(c, "state.release", id);
}

ANESHARE_API uint64_t aneshare_state_size(const aneshare_state *st)
{
	return st ? st->size : 0;
}

int anesc_state_check(aneshare_conn *c, const char *pre, const aneshare_state *st)
{
	if (st->conn != c)
		return anesc_fail(c, -EINVAL, "%sthe state belongs to another connection", pre);
	if (st->lost)
		return anesc_fail(c, -ANESHARE_ENO_SUCH_STATE,
		                  "%sthe state could not be made again after the daemon restarted: %s",
		                  pre, aneshare_strerror(st->lost));
	if (st->stale)
		return anesc_fail(c, -ANESHARE_ESTATE_LOST,
		                  "%sthe daemon restarted and the state's contents were lost with it: "
		                  "aneshare_state_reset it", pre);
	return 0;
}
