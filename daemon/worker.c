/* SPDX-License-Identifier: MIT */
/*
 * The worker pool: compiles and runs never execute on the loop thread.
 * Jobs go in through a mutex-protected FIFO; finished jobs come back through
 * a done-list and one uv_async_t.  uv_async_send coalesces wakeups, so the
 * callback drains the whole list rather than counting signals.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "daemon.h"

/*
 * Latency: a run's round trip would otherwise pay two thread wake-ups on
 * top of the socket's (loop -> worker through the condition variable,
 * worker -> loop through the async handle), each about as dear as the
 * socket round trip itself.  So both sides poll for a short while instead
 * of sleeping at once: a worker that finished a job spins for the next one
 * (one worker at a time), and the loop, while jobs it submitted are in
 * flight, polls its fds without blocking (an idle handle).  Both give up
 * after SPIN_NS, so an idle daemon sleeps.
 */
#define SPIN_NS 50000u
#ifndef ANES_WORKER_SPIN
#define ANES_WORKER_SPIN 0
#endif

struct anes_pool {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	anes_job *head, **tail;       /* queued */
	anes_job *done, **done_tail;  /* finished, not yet delivered */
	bool stop;
	unsigned n_threads;
	pthread_t *threads;
	uv_async_t async;
	unsigned spinners;            /* workers spinning for a job (under mu) */
	/* loop thread only */
	uv_idle_t poll_idle;          /* keeps the loop polling while jobs are in flight */
	unsigned inflight;            /* submitted, not yet delivered */
	uint64_t poll_until;          /* uv_hrtime() */
	unsigned open_handles;        /* freed when both handles closed */
};

static inline anes_job *head_load(anes_pool *p)
{
	return __atomic_load_n(&p->head, __ATOMIC_ACQUIRE);
}

/* Under mu.  Atomic because spinning workers read head without it. */
static inline void head_store(anes_job **slot, anes_job *j)
{
	__atomic_store_n(slot, j, __ATOMIC_RELEASE);
}

static void spin_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Called with mu held and no job queued: poll head for up to SPIN_NS
 * without the lock, unless another worker already does. */
static void spin_for_job(anes_pool *p)
{
	if (p->spinners > 0 || p->stop)
		return;
	p->spinners++;
	pthread_mutex_unlock(&p->mu);
	uint64_t end = uv_hrtime() + SPIN_NS;
	for (unsigned i = 0; !head_load(p); i++) {
		spin_pause();
		if ((i & 63) == 63 && uv_hrtime() > end)
			break;
	}
	pthread_mutex_lock(&p->mu);
	p->spinners--;
}

/* A cancelled job is marked by being on the done list with work == NULL. */
static void *worker_main(void *arg)
{
	anes_pool *p = arg;

	bool may_spin = false;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		if (ANES_WORKER_SPIN && may_spin && !p->head)
			spin_for_job(p);
		may_spin = false;
		while (!p->stop && !p->head)
			pthread_cond_wait(&p->cv, &p->mu);
		if (!p->head)
			break;
		anes_job *j = p->head;
		head_store(&p->head, j->next);
		if (!p->head)
			p->tail = &p->head;
		pthread_mutex_unlock(&p->mu);

		j->work(j);

		pthread_mutex_lock(&p->mu);
		j->next = NULL;
		*p->done_tail = j;
		p->done_tail = &j->next;
		uv_async_send(&p->async);
		may_spin = true;
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static void deliver(anes_pool *p)
{
	pthread_mutex_lock(&p->mu);
	anes_job *list = p->done;
	p->done = NULL;
	p->done_tail = &p->done;
	pthread_mutex_unlock(&p->mu);

	while (list) {
		anes_job *j = list;
		list = j->next;
		bool cancelled = j->work == NULL;
		p->inflight--;
		j->done(j, cancelled);
	}
}

static void on_async(uv_async_t *h)
{
	deliver(h->data);
}

static void on_poll_idle(uv_idle_t *h)
{
	anes_pool *p = h->data;
	if (p->inflight == 0 || uv_hrtime() > p->poll_until)
		uv_idle_stop(h);
}

static void on_closed(uv_handle_t *h)
{
	anes_pool *p = h->data;
	if (--p->open_handles > 0)
		return;
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p->threads);
	free(p);
}

int anes_pool_new(uv_loop_t *loop, unsigned n_threads, anes_pool **ret)
{
	if (n_threads == 0)
		return -EINVAL;
	anes_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->threads = calloc(n_threads, sizeof(*p->threads));
	if (!p->threads) {
		free(p);
		return -ENOMEM;
	}
	p->tail = &p->head;
	p->done_tail = &p->done;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	int r = uv_async_init(loop, &p->async, on_async);
	if (r < 0) {
		pthread_cond_destroy(&p->cv);
		pthread_mutex_destroy(&p->mu);
		free(p->threads);
		free(p);
		return r == UV_ENOMEM ? -ENOMEM : -EIO;
	}
	p->async.data = p;
	uv_idle_init(loop, &p->poll_idle);   /* cannot fail */
	p->poll_idle.data = p;
	p->open_handles = 2;

	for (unsigned i = 0; i < n_threads; i++) {
		r = pthread_create(&p->threads[i], NULL, worker_main, p);
		if (r != 0) {
			/* Leaves a working but smaller pool shut down cleanly. */
			p->n_threads = i;
			anes_pool_shutdown(p);
			return -r;
		}
		p->n_threads = i + 1;
	}
	*ret = p;
	return 0;
}

void anes_pool_submit(anes_pool *p, anes_job *j)
{
	j->next = NULL;
	p->inflight++;
	pthread_mutex_lock(&p->mu);
	if (p->stop) {
		j->work = NULL;
		*p->done_tail = j;
		p->done_tail = &j->next;
		uv_async_send(&p->async);
	} else {
		head_store(p->tail, j);
		p->tail = &j->next;
		pthread_cond_signal(&p->cv);   /* no system call unless a worker waits */
	}
	pthread_mutex_unlock(&p->mu);
	if (!p->stop) {
		p->poll_until = uv_hrtime() + SPIN_NS;
		uv_idle_start(&p->poll_idle, on_poll_idle);
	}
}

void anes_pool_shutdown(anes_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	/* Queued jobs never start: move them to the done list as cancelled. */
	while (p->head) {
		anes_job *j = p->head;
		head_store(&p->head, j->next);
		j->work = NULL;
		j->next = NULL;
		*p->done_tail = j;
		p->done_tail = &j->next;
	}
	p->tail = &p->head;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);

	for (unsigned i = 0; i < p->n_threads; i++)
		pthread_join(p->threads[i], NULL);
	p->n_threads = 0;

	/* Every done() may free refs that close connections or cache entries;
	 * deliver them now so nothing refers to the pool afterwards. */
	deliver(p);
	uv_close((uv_handle_t *)&p->poll_idle, on_closed);
	uv_close((uv_handle_t *)&p->async, on_closed);
}
