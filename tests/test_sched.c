/* SPDX-License-Identifier: MIT */
/*
 * The fair scheduler of device work as a unit (daemon/sched/jobsched.h): its
 * ordering rules, with the device times injected (no clock, no threads).
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "jobsched.h"

#define MS 1000000ull

static anes_sched S;

static void setup(void)
{
	anes_sched_init(&S, 5 * MS);
}

TestSuite(sched, .init = setup);

typedef struct item {
	anes_sitem si;
	int client, seq;
} item;

static item *mk(item *it, anes_sflow *f, int client, int seq, uint64_t cost, bool compile)
{
	memset(it, 0, sizeof *it);
	it->si = (anes_sitem){ .flow = f, .cost_ns = cost, .compile = compile };
	it->client = client;
	it->seq = seq;
	anes_sched_push(&S, &it->si);
	return it;
}

static item *pop(void)
{
	return (item *)(void *)anes_sched_pop(&S);   /* si is item's first member */
}

/* Pop one and finish it after ns of device time (one worker). */
static item *serve(uint64_t ns)
{
	item *it = pop();
	cr_assert_not_null(it);
	anes_sched_done(&S, &it->si, ns);
	return it;
}

Test(sched, one_flow_is_fifo)
{
	anes_sflow a;
	anes_sflow_init(&a);
	item v[5];
	for (int i = 0; i < 5; i++)
		mk(&v[i], &a, 0, i, MS, false);
	cr_assert_eq(atomic_load(&a.queued), 5);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(serve(MS)->seq, i);
	cr_assert_null(pop());
	cr_assert(anes_sched_empty(&S));
	cr_assert_eq(atomic_load(&a.queued), 0);
	cr_assert_eq(atomic_load(&a.device_ns), 5 * MS);
}

/* A client with a backlog of 64 runs; another's run arrives: it is next. */
Test(sched, a_newcomer_goes_before_a_backlog)
{
	anes_sflow a, b;
	anes_sflow_init(&a);
	anes_sflow_init(&b);
	item va[64], vb[2];
	for (int i = 0; i < 64; i++)
		mk(&va[i], &a, 0, i, 0, false);   /* cost unknown at first */
	for (int i = 0; i < 10; i++)
		cr_assert_eq(serve(1500000)->client, 0);
	mk(&vb[0], &b, 1, 0, 1500000, false);
	item *it = serve(1500000);
	cr_assert_eq(it->client, 1, "the newcomer waited behind the backlog");
	/* Then the two alternate while both have work. */
	mk(&vb[1], &b, 1, 1, 1500000, false);
	int seen_a = 0;
	while ((it = pop()) && it->client == 0) {
		anes_sched_done(&S, &it->si, 1500000);
		seen_a++;
	}
	cr_assert_not_null(it);
	cr_assert_leq(seen_a, 1, "b waited for %d of a's runs", seen_a);
}

/* Share is device time, not request count: a's runs take 1 ms, b's 3 ms. */
Test(sched, the_share_is_device_time)
{
	anes_sflow a, b;
	anes_sflow_init(&a);
	anes_sflow_init(&b);
	static item va[400], vb[400];
	int na = 0, nb = 0;
	for (int i = 0; i < 400; i++) {
		mk(&va[i], &a, 0, i, 1 * MS, false);
		mk(&vb[i], &b, 1, i, 3 * MS, false);
	}
	for (int k = 0; k < 300; k++) {
		item *it = pop();
		anes_sched_done(&S, &it->si, it->client == 0 ? 1 * MS : 3 * MS);
		it->client == 0 ? na++ : nb++;
	}
	uint64_t da = atomic_load(&a.device_ns), db = atomic_load(&b.device_ns);
	cr_assert_eq(da, (uint64_t)na * MS);
	cr_assert_eq(db, (uint64_t)nb * 3 * MS);
	uint64_t diff = da > db ? da - db : db - da;
	cr_assert_leq(diff, 3 * MS, "device time %llu vs %llu ms", (unsigned long long)(da / MS),
	              (unsigned long long)(db / MS));
	cr_assert_gt(na, 2 * nb, "a ran %d times, b %d", na, nb);
}

/* The estimate is charged when a job starts (two workers: two start before
 * either ends), the measured time when it ends. */
Test(sched, the_estimate_then_the_measured_time)
{
	anes_sflow a, b;
	anes_sflow_init(&a);
	anes_sflow_init(&b);
	item va[4], vb[4];
	for (int i = 0; i < 4; i++) {
		mk(&va[i], &a, 0, i, 10 * MS, false);
		mk(&vb[i], &b, 1, i, 1 * MS, false);
	}
	item *x = pop(), *y = pop();
	cr_assert_neq(x->client, y->client, "both workers took one client's jobs");
	/* a's estimate was 10 ms but it took 1: corrected at the end, so the
	 * two stay even. */
	anes_sched_done(&S, &(x->client == 0 ? x : y)->si, 1 * MS);
	anes_sched_done(&S, &(x->client == 0 ? y : x)->si, 1 * MS);
	x = pop();
	y = pop();
	cr_assert_neq(x->client, y->client);
}

/* A compile of a client that has had no more than its share goes before
 * another client's backlog of runs, and before its own runs. */
Test(sched, a_compile_goes_first)
{
	anes_sflow a, b;
	anes_sflow_init(&a);
	anes_sflow_init(&b);
	item va[64], vb[3];
	for (int i = 0; i < 64; i++)
		mk(&va[i], &a, 0, i, 2 * MS, false);
	for (int i = 0; i < 5; i++)
		serve(2 * MS);
	mk(&vb[0], &b, 1, 0, 2 * MS, false);
	mk(&vb[1], &b, 1, 1, 2 * MS, false);
	mk(&vb[2], &b, 1, 2, 0, true);
	item *it = serve(1 * MS);
	cr_assert(it->client == 1 && it->si.compile, "the compile did not go first");
	it = serve(2 * MS);
	cr_assert_eq(it->client, 1);
	cr_assert_eq(it->seq, 0);
}

/* A client that compiles all the time pays for it in device time: its
 * compiles lose their priority once it is a slice ahead, and the other
 * client's runs get their share. */
Test(sched, compiles_are_charged)
{
	anes_sflow a, b;
	anes_sflow_init(&a);
	anes_sflow_init(&b);
	static item va[200], vb[200];
	for (int i = 0; i < 200; i++) {
		mk(&va[i], &a, 0, i, 0, true);       /* compiles of 10 ms */
		mk(&vb[i], &b, 1, i, 1 * MS, false); /* runs of 1 ms */
	}
	for (int k = 0; k < 200; k++) {
		item *it = pop();
		anes_sched_done(&S, &it->si, it->client == 0 ? 10 * MS : 1 * MS);
	}
	uint64_t da = atomic_load(&a.device_ns), db = atomic_load(&b.device_ns);
	uint64_t diff = da > db ? da - db : db - da;
	cr_assert_leq(diff, 10 * MS + S.slice_ns, "compiles %llu ms, runs %llu ms",
	              (unsigned long long)(da / MS), (unsigned long long)(db / MS));
}

/* An idle client banks no credit: after a long pause it is even with a
 * busy one, not owed the time it did not use. */
Test(sched, idle_time_is_not_banked)
{
	anes_sflow a, b;
	anes_sflow_init(&a);
	anes_sflow_init(&b);
	static item va[300], vb[100];
	for (int i = 0; i < 300; i++)
		mk(&va[i], &a, 0, i, MS, false);
	for (int k = 0; k < 100; k++)
		serve(MS);
	for (int i = 0; i < 100; i++)
		mk(&vb[i], &b, 1, i, MS, false);
	int nb = 0;
	for (int k = 0; k < 100; k++)
		nb += serve(MS)->client == 1;
	cr_assert(nb >= 49 && nb <= 51, "b ran %d of 100", nb);
}

/* Weights: background gets half of default's device time, interactive
 * twice. */
Test(sched, classes_weigh_the_share)
{
	anes_sflow a, b;
	anes_sflow_init(&a);
	anes_sflow_init(&b);
	b.sclass = ANES_SCLASS_BACKGROUND;
	static item va[400], vb[400];
	for (int i = 0; i < 400; i++) {
		mk(&va[i], &a, 0, i, MS, false);
		mk(&vb[i], &b, 1, i, MS, false);
	}
	int na = 0;
	for (int k = 0; k < 300; k++)
		na += serve(MS)->client == 0;
	cr_assert(na >= 199 && na <= 201, "default ran %d of 300 next to background", na);
	cr_assert_eq(anes_sclass_parse("background", 10), ANES_SCLASS_BACKGROUND);
	cr_assert_eq(anes_sclass_parse("interactive", 11), ANES_SCLASS_INTERACTIVE);
	cr_assert_eq(anes_sclass_parse("default", 7), ANES_SCLASS_DEFAULT);
	cr_assert_eq(anes_sclass_parse("defaul", 6), -1);
	cr_assert_gt(anes_sclass_weight(ANES_SCLASS_INTERACTIVE), anes_sclass_weight(ANES_SCLASS_DEFAULT));
}

/* Items without a flow share the scheduler's own; drain takes everything. */
Test(sched, drain_takes_everything)
{
	anes_sflow a;
	anes_sflow_init(&a);
	item v[6];
	for (int i = 0; i < 6; i++)
		mk(&v[i], i % 2 ? &a : NULL, i % 2, i, MS, i == 4);
	item *first = serve(MS);
	cr_assert(first->si.compile, "a compile is first");
	int n = 0;
	bool seen[6] = { false };
	for (anes_sitem *it = anes_sched_drain(&S); it; it = it->next) {
		seen[((item *)(void *)it)->seq] = true;
		n++;
	}
	cr_assert_eq(n, 5);
	for (int i = 0; i < 6; i++)
		cr_assert(seen[i] || i == first->seq);
	cr_assert(anes_sched_empty(&S));
	cr_assert_null(pop());
	cr_assert_eq(atomic_load(&a.queued), 0);
}
