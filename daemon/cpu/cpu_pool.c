/* SPDX-License-Identifier: MIT */
/*
 * A small fork-join pool for the CPU kernels.  One job at a time: a run that
 * finds the pool busy (another run is using it) does its work serially
 * instead of waiting, so concurrent runs never block on each other here and
 * the machine is not oversubscribed.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "cpu_internal.h"

struct cpu_pool {
	pthread_mutex_t mu;
	pthread_cond_t cv_work, cv_done;
	pthread_t *th;
	unsigned n_th;              /* worker threads (callers add one) */
	bool stop, busy, open;
	uint64_t gen;
	unsigned working;
	/* the job */
	cpu_task_fn fn;
	void *ctx;
	uint64_t n, grain;
	atomic_uint_fast64_t next;
};

static void work(cpu_pool *p)
{
	for (;;) {
		uint64_t b = atomic_fetch_add(&p->next, p->grain);
		if (b >= p->n)
			return;
		uint64_t e = p->n - b < p->grain ? p->n : b + p->grain;
		p->fn(p->ctx, b, e);
	}
}

static void *worker(void *arg)
{
	cpu_pool *p = arg;
	uint64_t seen = 0;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stop && (!p->open || seen == p->gen))
			pthread_cond_wait(&p->cv_work, &p->mu);
		if (p->stop)
			break;
		seen = p->gen;
		p->working++;
		pthread_mutex_unlock(&p->mu);
		work(p);
		pthread_mutex_lock(&p->mu);
		if (--p->working == 0)
			pthread_cond_signal(&p->cv_done);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

cpu_pool *cpu_pool_new(unsigned n_threads)
{
	cpu_pool *p;

	if (n_threads <= 1)
		return NULL;
	p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->th = calloc(n_threads - 1, sizeof *p->th);
	if (!p->th || pthread_mutex_init(&p->mu, NULL)) {
		free(p->th);
		free(p);
		return NULL;
	}
	pthread_cond_init(&p->cv_work, NULL);
	pthread_cond_init(&p->cv_done, NULL);
	atomic_init(&p->next, 0);
	for (unsigned i = 0; i < n_threads - 1; i++) {
		if (pthread_create(&p->th[i], NULL, worker, p))
			break;
		p->n_th++;
	}
	if (p->n_th == 0) {
		cpu_pool_free(p);
		return NULL;
	}
	return p;
}

void cpu_pool_free(cpu_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv_work);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->n_th; i++)
		pthread_join(p->th[i], NULL);
	pthread_cond_destroy(&p->cv_work);
	pthread_cond_destroy(&p->cv_done);
	pthread_mutex_destroy(&p->mu);
	free(p->th);
	free(p);
}

void cpu_parallel(cpu_pool *p, uint64_t n, uint64_t grain, cpu_task_fn fn, void *ctx)
{
	if (grain == 0)
		grain = 1;
	if (!p || n <= grain) {
		if (n)
			fn(ctx, 0, n);
		return;
	}
	pthread_mutex_lock(&p->mu);
	if (p->busy) {
		pthread_mutex_unlock(&p->mu);
		fn(ctx, 0, n);
		return;
	}
	/* pieces: at least grain, about 4 per thread for balance */
	uint64_t per = n / ((uint64_t)(p->n_th + 1) * 4);
	p->busy = true;
	p->fn = fn;
	p->ctx = ctx;
	p->n = n;
	p->grain = per > grain ? per : grain;
	atomic_store(&p->next, 0);
	p->open = true;
	p->gen++;
	pthread_cond_broadcast(&p->cv_work);
	pthread_mutex_unlock(&p->mu);
	work(p);
	pthread_mutex_lock(&p->mu);
	p->open = false;
	while (p->working > 0)
		pthread_cond_wait(&p->cv_done, &p->mu);
	p->busy = false;
	pthread_mutex_unlock(&p->mu);
}
