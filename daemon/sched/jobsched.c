/* SPDX-License-Identifier: MIT */
/* The fair scheduler of device work: see jobsched.h. */
#include <stddef.h>
#include <string.h>

#include "jobsched.h"

static const struct {
	const char *name;
	unsigned weight;
} sclasses[ANES_SCLASS_N] = {
	[ANES_SCLASS_BACKGROUND] = { "background", 1 },
	[ANES_SCLASS_DEFAULT] = { "default", 2 },
	[ANES_SCLASS_INTERACTIVE] = { "interactive", 4 },
};

unsigned anes_sclass_weight(anes_sclass c)
{
	return c < ANES_SCLASS_N ? sclasses[c].weight : 1;
}

const char *anes_sclass_name(anes_sclass c)
{
	return c < ANES_SCLASS_N ? sclasses[c].name : "?";
}

int anes_sclass_parse(const char *name, uint32_t len)
{
	for (int i = 0; i < ANES_SCLASS_N; i++)
		if (strlen(sclasses[i].name) == len && memcmp(sclasses[i].name, name, len) == 0)
			return i;
	return -1;
}

void anes_sflow_init(anes_sflow *f)
{
	memset(f, 0, sizeof *f);
	f->sclass = ANES_SCLASS_DEFAULT;
	f->runs_tail = &f->runs;
	f->comps_tail = &f->comps;
}

void anes_sched_init(anes_sched *s, uint64_t slice_ns)
{
	memset(s, 0, sizeof *s);
	anes_sflow_init(&s->own);
	s->slice_ns = slice_ns;
}

/* Device time in the flow's virtual units: the largest weight's is 1:1. */
static uint64_t scaled(const anes_sflow *f, uint64_t ns)
{
	unsigned w = anes_sclass_weight(f->sclass);
	unsigned wmax = anes_sclass_weight(ANES_SCLASS_INTERACTIVE);
	if (ns > UINT64_MAX / wmax)
		return UINT64_MAX / 2;
	return ns * wmax / w;
}

static void unlink_flow(anes_sched *s, anes_sflow *f)
{
	if (f->prev)
		f->prev->next = f->next;
	else
		s->head = f->next;
	if (f->next)
		f->next->prev = f->prev;
	else
		s->tail = f->prev;
	f->prev = f->next = NULL;
}

static void append_flow(anes_sched *s, anes_sflow *f)
{
	f->next = NULL;
	f->prev = s->tail;
	if (s->tail)
		s->tail->next = f;
	else
		s->head = f;
	s->tail = f;
}

void anes_sched_push(anes_sched *s, anes_sitem *it)
{
	anes_sflow *f = it->flow ? it->flow : &s->own;
	it->next = NULL;
	if (it->compile) {
		*f->comps_tail = it;
		f->comps_tail = &it->next;
	} else {
		*f->runs_tail = it;
		f->runs_tail = &it->next;
	}
	atomic_fetch_add_explicit(&f->queued, 1, memory_order_relaxed);
	s->queued++;
	if (!f->active) {
		f->active = true;
		append_flow(s, f);
	}
}

static uint64_t tag_of(const anes_sched *s, const anes_sflow *f)
{
	return f->finish > s->vtime ? f->finish : s->vtime;
}

anes_sitem *anes_sched_pop(anes_sched *s)
{
	anes_sflow *best = NULL;
	uint64_t best_tag = 0, min_tag = UINT64_MAX;
	bool best_prio = false;
	/* Scan in list order with strict comparisons: among equal tags the
	 * flow served longest ago (nearest the head) wins. */
	for (anes_sflow *f = s->head; f; f = f->next) {
		uint64_t t = tag_of(s, f);
		bool prio = f->comps && t - s->vtime <= s->slice_ns;
		if (t < min_tag)
			min_tag = t;
		if (!best || (prio && !best_prio) || (prio == best_prio && t < best_tag)) {
			best = f;
			best_tag = t;
			best_prio = prio;
		}
	}
	if (!best)
		return NULL;
	anes_sitem *it;
	if (best->comps) {
		it = best->comps;
		best->comps = it->next;
		if (!best->comps)
			best->comps_tail = &best->comps;
	} else {
		it = best->runs;
		best->runs = it->next;
		if (!best->runs)
			best->runs_tail = &best->runs;
	}
	it->next = NULL;
	atomic_fetch_sub_explicit(&best->queued, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&best->running, 1, memory_order_relaxed);
	s->queued--;
	/* V is the smallest tag of the flows that had work, not the one that
	 * went (a compile's priority may take a flow out of tag order): the
	 * others keep their place. */
	s->vtime = min_tag;
	it->charged = scaled(best, it->cost_ns);
	best->finish = best_tag + it->charged;
	unlink_flow(s, best);
	if (best->comps || best->runs)
		append_flow(s, best);   /* to the back of the ties */
	else
		best->active = false;
	return it;
}

void anes_sched_done(anes_sched *s, anes_sitem *it, uint64_t ns)
{
	anes_sflow *f = it->flow ? it->flow : &s->own;
	uint64_t actual = scaled(f, ns);
	if (actual >= it->charged)
		f->finish += actual - it->charged;
	else
		f->finish -= it->charged - actual < f->finish ? it->charged - actual : f->finish;
	it->charged = actual;
	atomic_fetch_sub_explicit(&f->running, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&f->device_ns, ns, memory_order_relaxed);
}

anes_sitem *anes_sched_drain(anes_sched *s)
{
	anes_sitem *list = NULL;
	while (s->head) {
		anes_sflow *f = s->head;
		anes_sitem *q[2] = { f->comps, f->runs };
		for (int i = 0; i < 2; i++) {
			while (q[i]) {
				anes_sitem *it = q[i];
				q[i] = it->next;
				it->next = list;
				list = it;
				atomic_fetch_sub_explicit(&f->queued, 1, memory_order_relaxed);
			}
		}
		f->comps = f->runs = NULL;
		f->comps_tail = &f->comps;
		f->runs_tail = &f->runs;
		f->active = false;
		unlink_flow(s, f);
	}
	s->queued = 0;
	return list;
}
