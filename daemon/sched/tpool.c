/* SPDX-License-Identifier: MIT */
/*
 * The generic thread pool (tpool.h): one mutex and one condition variable
 * around the fair scheduler (jobsched.h), which orders the tasks and is
 * told the measured time of each.
 *
 * A thread whose task waits for something no flow caused (a device worker
 * compiling its programs again after a restart) says so with
 * anes_pool_wait_begin/end (util.h): meanwhile a spare thread takes tasks in
 * its place, so that such waits never shrink the pool the other flows' tasks
 * run on, and the time waited is not counted as the task's device time.
 *
 * The device time charged is the input of a scheduling rule, so it is read
 * on the daemon's clock (anes_clock_ns, anes_clock.h), which a test can
 * replace to make the charges exact.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "tpool.h"
#include "util.h"

struct anes_tpool {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	anes_sched sched;   /* under mu */
	bool stop;          /* under mu */
	bool joined;
	unsigned n_threads;
	pthread_t *threads;
	unsigned waiting;      /* under mu: threads between anes_pool_wait_begin and _end */
	unsigned spares;       /* under mu: spare threads alive (detached) */
	pthread_cond_t spares_cv;   /* the last spare is gone */
};

/* Spare threads at most, beyond n_threads. */
#define SPARES_MAX 64

/* The pool this thread works for, and its task's time not to be charged. */
static _Thread_local struct {
	anes_tpool *pool;
	uint64_t since, uncharged;
} self;

/* Run t (mu not held) and charge its time, less its waits, to its flow. */
static void run_task(anes_tpool *p, anes_task *t)
{
	anes_sitem *it = &t->si;
	self.uncharged = 0;
	uint64_t t0 = anes_clock_ns();
	t->run(t);
	uint64_t ns = anes_clock_ns() - t0;
	ns -= self.uncharged < ns ? self.uncharged : ns;
	pthread_mutex_lock(&p->mu);
	anes_sched_done(&p->sched, it, ns);
	pthread_mutex_unlock(&p->mu);
	t->end(t, true);   /* may free t (and it) */
}

static void *tpool_main(void *arg)
{
	anes_tpool *p = arg;

	self.pool = p;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stop && anes_sched_empty(&p->sched))
			pthread_cond_wait(&p->cv, &p->mu);
		anes_sitem *it = anes_sched_pop(&p->sched);
		if (!it)
			break;   /* stopped, and nothing queued */
		pthread_mutex_unlock(&p->mu);
		run_task(p, ANES_CONTAINER_OF(it, anes_task, si));
		pthread_mutex_lock(&p->mu);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* A spare: takes tasks while more threads wait than spares run, then goes. */
static void *spare_main(void *arg)
{
	anes_tpool *p = arg;

	self.pool = p;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		if (p->spares > p->waiting)
			break;   /* a waiter is back: one spare too many */
		if (anes_sched_empty(&p->sched)) {
			if (p->stop)
				break;
			pthread_cond_wait(&p->cv, &p->mu);
			continue;
		}
		anes_sitem *it = anes_sched_pop(&p->sched);
		pthread_mutex_unlock(&p->mu);
		run_task(p, ANES_CONTAINER_OF(it, anes_task, si));
		pthread_mutex_lock(&p->mu);
	}
	/* A wake-up it took for a task goes to another thread. */
	if (!anes_sched_empty(&p->sched))
		pthread_cond_signal(&p->cv);
	if (--p->spares == 0)
		pthread_cond_broadcast(&p->spares_cv);
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

void anes_pool_wait_begin(void)
{
	anes_tpool *p = self.pool;
	if (!p)
		return;
	self.since = anes_clock_ns();
	pthread_mutex_lock(&p->mu);
	p->waiting++;
	/* Keep n_threads threads taking tasks. */
	if (p->spares < p->waiting && p->spares < SPARES_MAX && !p->stop) {
		pthread_t th;
		pthread_attr_t a;
		pthread_attr_init(&a);
		pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&th, &a, spare_main, p) == 0)
			p->spares++;
		pthread_attr_destroy(&a);
	}
	pthread_mutex_unlock(&p->mu);
}

void anes_pool_wait_end(void)
{
	anes_tpool *p = self.pool;
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->waiting--;
	if (p->spares > p->waiting)
		pthread_cond_broadcast(&p->cv);   /* a spare too many: let it go */
	pthread_mutex_unlock(&p->mu);
	self.uncharged += anes_clock_ns() - self.since;
}

int anes_tpool_new(unsigned n_threads, uint64_t slice_ns, anes_tpool **ret)
{
	if (n_threads == 0)
		return -EINVAL;
	anes_tpool *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->threads = calloc(n_threads, sizeof(*p->threads));
	if (!p->threads) {
		free(p);
		return -ENOMEM;
	}
	anes_sched_init(&p->sched, slice_ns);
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	pthread_cond_init(&p->spares_cv, NULL);
	for (unsigned i = 0; i < n_threads; i++) {
		int r = pthread_create(&p->threads[i], NULL, tpool_main, p);
		if (r != 0) {
			anes_tpool_stop(p);
			anes_tpool_free(p);
			return -r;
		}
		p->n_threads++;
	}
	*ret = p;
	return 0;
}

void anes_tpool_submit(anes_tpool *p, anes_task *t)
{
	pthread_mutex_lock(&p->mu);
	if (p->stop) {
		pthread_mutex_unlock(&p->mu);
		t->end(t, false);
		return;
	}
	anes_sched_push(&p->sched, &t->si);
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

void anes_tpool_set_class(anes_tpool *p, anes_sflow *f, anes_sclass sc)
{
	pthread_mutex_lock(&p->mu);
	f->sclass = sc;
	pthread_mutex_unlock(&p->mu);
}

void anes_tpool_stop(anes_tpool *p)
{
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	anes_sitem *queued = anes_sched_drain(&p->sched);
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	/* Queued tasks never start. */
	while (queued) {
		anes_task *t = ANES_CONTAINER_OF(queued, anes_task, si);
		queued = queued->next;
		t->end(t, false);
	}
	if (!p->joined) {
		for (unsigned i = 0; i < p->n_threads; i++)
			pthread_join(p->threads[i], NULL);
		pthread_mutex_lock(&p->mu);
		while (p->spares > 0)
			pthread_cond_wait(&p->spares_cv, &p->mu);
		pthread_mutex_unlock(&p->mu);
		p->joined = true;
	}
}

void anes_tpool_free(anes_tpool *p)
{
	if (!p)
		return;
	pthread_cond_destroy(&p->cv);
	pthread_cond_destroy(&p->spares_cv);
	pthread_mutex_destroy(&p->mu);
	free(p->threads);
	free(p);
}
