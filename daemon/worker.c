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

struct anes_pool {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	anes_job *head, **tail;       /* queued */
	anes_job *done, **done_tail;  /* finished, not yet delivered */
	bool stop;
	unsigned n_threads;
	pthread_t *threads;
	uv_async_t async;
};

/* A cancelled job is marked by being on the done list with work == NULL. */
static void *worker_main(void *arg)
{
	anes_pool *p = arg;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stop && !p->head)
			pthread_cond_wait(&p->cv, &p->mu);
		if (!p->head)
			break;
		anes_job *j = p->head;
		p->head = j->next;
		if (!p->head)
			p->tail = &p->head;
		pthread_mutex_unlock(&p->mu);

		j->work(j);
		pthread_mutex_t *held = j->reply ? j->reply(j) : NULL;

		pthread_mutex_lock(&p->mu);
		j->next = NULL;
		*p->done_tail = j;
		p->done_tail = &j->next;
		/* Before p->mu: once the loop can take j off the list, it may
		 * free what held lives in. */
		if (held)
			pthread_mutex_unlock(held);
		pthread_mutex_unlock(&p->mu);
		uv_async_send(&p->async);
		pthread_mutex_lock(&p->mu);
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
	if (!list)
		return;

	/* The replies of one batch leave together, one sendmsg per connection. */
	anes_server *srv = ANES_CONTAINER_OF(p->async.loop, anes_server, loop);
	anes_conn_batch_begin(srv);
	while (list) {
		anes_job *j = list;
		list = j->next;
		bool cancelled = j->work == NULL;
		j->done(j, cancelled);
	}
	anes_conn_batch_end(srv);
}

void anes_pool_collect(anes_pool *p)
{
	deliver(p);
}

static void on_async(uv_async_t *h)
{
	deliver(h->data);
}

static void on_closed(uv_handle_t *h)
{
	anes_pool *p = h->data;
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p->threads);
	free(p);
}

/* loop: an anes_server's (deliver batches the replies through it). */
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
	pthread_mutex_lock(&p->mu);
	if (p->stop) {
		j->work = NULL;
		*p->done_tail = j;
		p->done_tail = &j->next;
		uv_async_send(&p->async);
	} else {
		*p->tail = j;
		p->tail = &j->next;
		pthread_cond_signal(&p->cv);
	}
	pthread_mutex_unlock(&p->mu);
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
		p->head = j->next;
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
	uv_close((uv_handle_t *)&p->async, on_closed);
}
