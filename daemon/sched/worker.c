/* SPDX-License-Identifier: MIT */
/*
 * The worker pool: compiles and runs never execute on the loop thread.
 *
 * Jobs go in through the fair scheduler (jobsched.h: a queue per client, device
 * time shared), under one mutex; finished jobs come back through
 * a done-list and one uv_async_t.  uv_async_send coalesces wakeups, so the
 * callback drains the whole list rather than counting signals.
 *
 * Lane threads are separate: they wait in one poll set (epoll, or kqueue
 * on macOS and the BSDs) holding the lanes, client sockets armed one-shot,
 * which the thread that sees one readable reads itself (conn.c).  A
 * request that arrives on a lane wakes one thread and nothing else, which
 * is the whole point (docs/design.md, "Lanes").  They never take jobs,
 * so a backlog of long compiles or runs cannot hold a lane up; and what
 * they run is short by construction.  A wake-up fd in the set stops them.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#if defined(__linux__)
#include <sys/epoll.h>
#include <sys/eventfd.h>
#define ANES_POLL_EPOLL 1
#elif defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__)
#include <sys/event.h>
#define ANES_POLL_KQUEUE 1
#endif

#include "daemon.h"
#include "tpool.h"

struct anes_pool {
	anes_tpool *tp;               /* the job workers (tpool.h) */
	uint64_t slice_ns;            /* the scheduler's slice: continuations' bound */
	anes_pool_hooks hooks;
	pthread_mutex_t mu;           /* done */
	anes_job *done, **done_tail;  /* finished, not yet delivered */
	atomic_bool lanes_stop;
	int pollfd;                   /* the lanes' poll set, -1 without lanes */
	int wakefd;                   /* epoll: an eventfd in the set; kqueue: unused */
	unsigned n_lane_threads;
	pthread_t *threads;           /* the lane threads */
	uv_async_t async;
};

/* ---- the poll set ----------------------------------------------------------- */

static int poll_init(anes_pool *p)
{
	p->pollfd = p->wakefd = -1;
#if defined(ANES_POLL_EPOLL)
	p->pollfd = epoll_create1(EPOLL_CLOEXEC);
	if (p->pollfd < 0)
		return -errno;
	p->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (p->wakefd < 0)
		return -errno;
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	if (epoll_ctl(p->pollfd, EPOLL_CTL_ADD, p->wakefd, &ev) < 0)
		return -errno;
	return 0;
#elif defined(ANES_POLL_KQUEUE)
	p->pollfd = kqueue();
	if (p->pollfd < 0)
		return -errno;
	if (fcntl(p->pollfd, F_SETFD, FD_CLOEXEC) < 0)
		return -errno;
	struct kevent kev;
	EV_SET(&kev, 0, EVFILT_USER, EV_ADD | EV_CLEAR, 0, 0, NULL);
	if (kevent(p->pollfd, &kev, 1, NULL, 0, NULL) < 0)
		return -errno;
	return 0;
#else
	return -ENOTSUP;
#endif
}

static void poll_cleanup(anes_pool *p)
{
	if (p->wakefd >= 0)
		close(p->wakefd);
	if (p->pollfd >= 0)
		close(p->pollfd);
	p->pollfd = p->wakefd = -1;
}

/* Make one waiting worker (at least) return from poll_wait. */
static void poll_wake(anes_pool *p)
{
#if defined(ANES_POLL_EPOLL)
	uint64_t one = 1;
	ssize_t n;
	do
		n = write(p->wakefd, &one, sizeof one);
	while (n < 0 && errno == EINTR);
	/* EAGAIN: the counter is at its maximum, which wakes as well. */
#elif defined(ANES_POLL_KQUEUE)
	struct kevent kev;
	EV_SET(&kev, 0, EVFILT_USER, 0, NOTE_TRIGGER, 0, NULL);
	(void)kevent(p->pollfd, &kev, 1, NULL, 0, NULL);
#else
	(void)p;
#endif
}

/* Wait for a wake-up (returns 0) or a readable lane (1, *ret set). */
static int poll_wait(anes_pool *p, anes_lane **ret)
{
#if defined(ANES_POLL_EPOLL)
	struct epoll_event ev;
	int n = epoll_wait(p->pollfd, &ev, 1, -1);
	if (n <= 0 || !ev.data.ptr)
		return 0;
	*ret = ev.data.ptr;
	return 1;
#elif defined(ANES_POLL_KQUEUE)
	struct kevent kev;
	int n = kevent(p->pollfd, NULL, 0, &kev, 1, NULL);
	if (n <= 0 || kev.filter != EVFILT_READ)
		return 0;
	*ret = kev.udata;
	return 1;
#else
	(void)p;
	(void)ret;
	return 0;
#endif
}

int anes_pool_lane_arm(anes_pool *p, anes_lane *l)
{
	if (p->n_lane_threads == 0 || p->pollfd < 0)
		return -ENOTSUP;
#if defined(ANES_POLL_EPOLL)
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, .data.ptr = l };
	if (epoll_ctl(p->pollfd, l->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, l->fd, &ev) < 0)
		return -errno;
	l->registered = true;
	return 0;
#elif defined(ANES_POLL_KQUEUE)
	struct kevent kev;
	EV_SET(&kev, l->fd, EVFILT_READ, EV_ADD | EV_ENABLE | EV_DISPATCH, 0, 0, l);
	if (kevent(p->pollfd, &kev, 1, NULL, 0, NULL) < 0)
		return -errno;
	l->registered = true;
	return 0;
#else
	(void)l;
	return -ENOTSUP;
#endif
}

void anes_pool_lane_remove(anes_pool *p, anes_lane *l)
{
	if (!l->registered)
		return;
	l->registered = false;
	if (!p || p->pollfd < 0)
		return;   /* the pool is gone, and its set with it */
#if defined(ANES_POLL_EPOLL)
	(void)epoll_ctl(p->pollfd, EPOLL_CTL_DEL, l->fd, NULL);
#elif defined(ANES_POLL_KQUEUE)
	struct kevent kev;
	EV_SET(&kev, l->fd, EVFILT_READ, EV_DELETE, 0, 0, NULL);
	(void)kevent(p->pollfd, &kev, 1, NULL, 0, NULL);
#endif
}

/* ---- workers ----------------------------------------------------------------- */

static void push_done(anes_pool *p, anes_job *j)
{
	j->next = NULL;
	*p->done_tail = j;
	p->done_tail = &j->next;
}

/* Jobs made ready on this thread (anes_pool_ready), when it is a job or
 * lane thread (collecting); anes_pool_run_ready takes them. */
static _Thread_local bool tl_collect;
static _Thread_local anes_job *tl_ready, **tl_ready_tail;

static void job_run(anes_task *t)
{
	anes_job *j = ANES_CONTAINER_OF(t, anes_job, task);
	tl_collect = true;
	j->work(j);
}

/* j onto the done list (the caller wakes the loop); held (the lock j's
 * reply returned, or NULL) is released before p->mu: once the loop can take
 * j off the list, it may free what held lives in. */
static void hand_back(anes_pool *p, anes_job *j, pthread_mutex_t *held)
{
	pthread_mutex_lock(&p->mu);
	push_done(p, j);
	if (held)
		pthread_mutex_unlock(held);
	pthread_mutex_unlock(&p->mu);
}

/* A cancelled job is marked by being on the done list with work == NULL. */
static void job_end(anes_task *t, bool ran)
{
	anes_job *j = ANES_CONTAINER_OF(t, anes_job, task);
	anes_pool *p = j->pool;
	pthread_mutex_t *held = NULL;
	if (!ran)
		j->work = NULL;
	else if (j->reply)
		held = j->reply(j);

	hand_back(p, j, held);
	uv_async_send(&p->async);
	/* Runs its signals made ready: after its reply went. */
	if (tl_ready)
		anes_pool_run_ready(p);
}

void anes_pool_ready(anes_pool *p, anes_job *j)
{
	if (!tl_collect) {
		anes_pool_submit(p, j);
		return;
	}
	j->pool = p;
	j->next = NULL;
	if (!tl_ready)
		tl_ready_tail = &tl_ready;
	*tl_ready_tail = j;
	tl_ready_tail = &j->next;
}

/* A collected job run here: as a pool thread runs one (job_run, job_end). */
static void run_here(anes_pool *p, anes_job *j)
{
	j->task.run = job_run;
	j->task.end = job_end;
	j->work(j);
	hand_back(p, j, j->reply ? j->reply(j) : NULL);
}

void anes_pool_run_ready(anes_pool *p)
{
	uint64_t start = 0;
	bool ran = false;
	while (tl_ready) {
		anes_job *j = tl_ready;
		tl_ready = j->next;
		j->next = NULL;
		uint64_t now = anes_now_ns();
		if (!start)
			start = now;
		/* What it makes ready in turn joins the list. */
		if (j->can_inline && now - start < p->slice_ns && j->can_inline(j)) {
			run_here(p, j);
			ran = true;
		} else {
			anes_pool_submit(p, j);
		}
	}
	if (ran)
		uv_async_send(&p->async);
}

static void *lane_main(void *arg)
{
	anes_pool *p = arg;
	anes_wctx ctx = { 0 };
	tl_collect = true;
	bool zone_ok = msgpack_zone_init(&ctx.zone, 4096);
	anes_frame_init(&ctx.reply);

	while (!atomic_load(&p->lanes_stop)) {
		anes_lane *l = NULL;
		if (poll_wait(p, &l) == 0)
			continue;   /* the stop wake-up (level-triggered: all see it) */
		if (zone_ok)
			msgpack_zone_clear(&ctx.zone);
		l->ready(l, zone_ok ? &ctx : NULL);
		if (tl_ready)   /* what its signals made ready and it did not run yet */
			anes_pool_run_ready(p);
	}
	poll_wake(p);   /* kqueue's wake-up reaches one thread: pass it on */
	if (zone_ok)
		msgpack_zone_destroy(&ctx.zone);
	anes_frame_release(&ctx.reply);
	free(ctx.buf);
	free(ctx.wire);
	free(ctx.rest_spare);
	free(ctx.out);
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

	/* The replies of one batch leave together (the server: one sendmsg
	 * per connection). */
	if (p->hooks.batch_begin)
		p->hooks.batch_begin(p->hooks.ud);
	while (list) {
		anes_job *j = list;
		list = j->next;
		bool cancelled = j->work == NULL;
		j->done(j, cancelled);
	}
	if (p->hooks.batch_end)
		p->hooks.batch_end(p->hooks.ud);
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
	anes_tpool_free(p->tp);
	pthread_mutex_destroy(&p->mu);
	free(p->threads);
	free(p);
}

int anes_pool_new(uv_loop_t *loop, unsigned n_threads, unsigned n_lane_threads,
                  uint64_t slice_ns, const anes_pool_hooks *hooks, anes_pool **ret)
{
	if (n_threads == 0)
		return -EINVAL;
	anes_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->threads = n_lane_threads ? calloc(n_lane_threads, sizeof(*p->threads)) : NULL;
	if (n_lane_threads && !p->threads) {
		free(p);
		return -ENOMEM;
	}
	if (hooks)
		p->hooks = *hooks;
	p->done_tail = &p->done;
	p->slice_ns = slice_ns;
	p->pollfd = p->wakefd = -1;
	atomic_init(&p->lanes_stop, false);
	if (n_lane_threads > 0) {
		int r = poll_init(p);
		if (r < 0) {
			poll_cleanup(p);
			free(p->threads);
			free(p);
			return r;
		}
	}
	pthread_mutex_init(&p->mu, NULL);
	int r = uv_async_init(loop, &p->async, on_async);
	if (r < 0) {
		pthread_mutex_destroy(&p->mu);
		poll_cleanup(p);
		free(p->threads);
		free(p);
		return r == UV_ENOMEM ? -ENOMEM : -EIO;
	}
	p->async.data = p;

	r = anes_tpool_new(n_threads, slice_ns, &p->tp);
	if (r < 0) {
		anes_pool_shutdown(p);
		return r;
	}
	for (unsigned i = 0; i < n_lane_threads; i++) {
		r = pthread_create(&p->threads[i], NULL, lane_main, p);
		if (r != 0) {
			/* Leaves a working but smaller pool shut down cleanly. */
			anes_pool_shutdown(p);
			return -r;
		}
		p->n_lane_threads++;
	}
	*ret = p;
	return 0;
}

void anes_pool_submit(anes_pool *p, anes_job *j)
{
	j->pool = p;
	j->task.run = job_run;
	j->task.end = job_end;
	anes_tpool_submit(p->tp, &j->task);
}

void anes_pool_set_class(anes_pool *p, anes_sflow *f, anes_sclass sc)
{
	anes_tpool_set_class(p->tp, f, sc);
}

void anes_pool_complete(anes_pool *p, anes_job *j)
{
	pthread_mutex_lock(&p->mu);
	push_done(p, j);
	pthread_mutex_unlock(&p->mu);
	uv_async_send(&p->async);
}

void anes_pool_shutdown(anes_pool *p)
{
	if (!p)
		return;
	/* Queued jobs never start: they go to the done list as cancelled. */
	if (p->tp)
		anes_tpool_stop(p->tp);
	if (p->n_lane_threads > 0) {
		atomic_store(&p->lanes_stop, true);
		poll_wake(p);   /* never read: wakes every lane thread */
	}
	for (unsigned i = 0; i < p->n_lane_threads; i++)
		pthread_join(p->threads[i], NULL);
	p->n_lane_threads = 0;
	poll_cleanup(p);

	/* Every done() may free refs that close connections or cache entries;
	 * deliver them now so nothing refers to the pool afterwards.  A done()
	 * may submit a job that waited for it (a state's next run, state.h):
	 * the stopped pool ends it at once, and it is delivered in turn. */
	for (;;) {
		pthread_mutex_lock(&p->mu);
		bool more = p->done != NULL;
		pthread_mutex_unlock(&p->mu);
		if (!more)
			break;
		deliver(p);
	}
	uv_close((uv_handle_t *)&p->async, on_closed);
}
