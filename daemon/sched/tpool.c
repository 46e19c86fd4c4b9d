/* SPDX-License-Identifier: MIT */
/*
 * The generic thread pool (tpool.h): one mutex and one condition variable
 * around the fair scheduler (jobsched.h), which orders the tasks and is
 * told the measured time of each.
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
};

static void *tpool_main(void *arg)
{
	anes_tpool *p = arg;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stop && anes_sched_empty(&p->sched))
			pthread_cond_wait(&p->cv, &p->mu);
		anes_sitem *it = anes_sched_pop(&p->sched);
		if (!it)
			break;   /* stopped, and nothing queued */
		anes_task *t = ANES_CONTAINER_OF(it, anes_task, si);
		pthread_mutex_unlock(&p->mu);
		uint64_t t0 = anes_now_ns();
		t->run(t);
		uint64_t ns = anes_now_ns() - t0;
		pthread_mutex_lock(&p->mu);
		anes_sched_done(&p->sched, it, ns);
		pthread_mutex_unlock(&p->mu);
		t->end(t, true);   /* may free t (and it) */
		pthread_mutex_lock(&p->mu);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
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
		p->joined = true;
	}
}

void anes_tpool_free(anes_tpool *p)
{
	if (!p)
		return;
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p->threads);
	free(p);
}
