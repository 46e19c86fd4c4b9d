/* SPDX-License-Identifier: MIT */
/*
 * The proxy backend (docs/worker.md): compiles and runs are forwarded to a
 * device worker process; if it dies or reaches its compile budget, a fresh
 * one is started, the programs still alive are compiled again and the
 * surfaces still alive are shared again.
 *
 * Threads: compile and run_surfaces are called on the daemon's pool
 * threads and block until the worker answers.  One supervisor thread per
 * proxy starts workers, reads every reply (matching it to its waiting call
 * by ID) and restarts the worker when its socket reaches EOF.
 * Locks: send_m (writing to the socket; held across a run's SURFACE_ADDs
 * and the RUN so that they reach the same worker in order) before m (all
 * other state).  The socket fd is only closed with both held.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "daemon.h"
#include "devworker.h"

extern char **environ;

#define START_TIMEOUT_MS 10000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define STABLE_MS 2000     /* a worker that lived this long resets the backoff */

typedef enum pstate {
	ST_STARTING,    /* no worker yet, or restarting: calls wait */
	ST_UP,
	ST_DOWN,        /* the last start failed: calls fail at once */
	ST_CLOSED,
} pstate;

typedef struct pprog {
	anes_bprogram base;
	struct pprog *prev, *next;
	anes_function_info *fns;
	anes_tensor_desc *tensors;
	void *req;              /* the COMPILE payload (MIL + weights), kept for recompiles */
	size_t req_len;
	uint64_t remote;        /* program ID in worker generation gen */
	uint64_t gen;           /* 0: not compiled in a live worker */
	bool busy;              /* the supervisor is recompiling it */
	bool freed;             /* program_free came while busy */
} pprog;

typedef struct pending {
	struct pending *next;
	uint64_t id;
	bool done;
	int rc;                 /* -ECONNRESET if the worker was lost */
	void *payload;
	uint32_t len;
	pthread_cond_t cond;
} pending;

typedef struct psurf {
	struct psurf *next;
	uint64_t key;
	int fd;                 /* borrowed from the daemon's surface; -1 for IOSurface */
	uint32_t ios_id;        /* the IOSurface ID (SURFACE_ADD_ID), 0 for memfd */
	uint64_t size;
	uint64_t gen;           /* shared with this worker generation */
} psurf;

#define SBUCKETS 256

typedef struct wproxy {
	anes_backend base;
	anes_backend_ops ops;
	char *exe, *backend, *fault;
	uint32_t budget;
	unsigned threads;

	pthread_mutex_t m, send_m;
	pthread_cond_t state_cond;
	pstate state;
	bool closing;
	bool planned;           /* the budget restart was asked for */
	int fd;
	pid_t pid;
	uint64_t gen;
	uint64_t next_id;
	pending *pend;
	uint32_t inflight;
	uint64_t restarts, compiles, recompiles;
	uint64_t gen_base;      /* recompiles that started the current worker */
	uint64_t live;          /* programs in progs (each one compiled in the next worker) */
	bool spent;             /* a compile failed in the framework: treat the budget as used up */
	char worker_backend[16];
	pprog *progs;
	psurf *sb[SBUCKETS];

	pthread_t sup;
	bool sup_started;
	bool started_once;
	int start_rc;
	char start_err[256];
} wproxy;

static wproxy *P(anes_backend *b)
{
	return (wproxy *)(void *)b;
}

static uint64_t now_ms(void)
{
	return anes_now_ns() / 1000000u;
}

/* ---- starting a worker ----------------------------------------------------------- */

static void reap(pid_t pid, int *ret_status)
{
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (ret_status)
		*ret_status = st;
}

static void describe_status(int st, char *buf, size_t len)
{
	if (WIFSIGNALED(st))
		snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
	else if (WIFEXITED(st))
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(st));
	else
		snprintf(buf, len, "ended (status 0x%x)", st);
}

/* Spawn EXE --worker-child 3 ... with one end of a socketpair at fd 3 and
 * wait for its HELLO. */
static int spawn_worker(wproxy *p, int *ret_fd, pid_t *ret_pid, char *err, size_t errlen)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		int r = -errno;
		snprintf(err, errlen, "socketpair: %s", strerror(-r));
		return r;
	}
	if (sv[1] == 3) {
		/* dup2(3, 3) would leave it CLOEXEC in the child. */
		int d = fcntl(sv[1], F_DUPFD_CLOEXEC, 4);
		if (d < 0) {
			int r = -errno;
			snprintf(err, errlen, "fcntl: %s", strerror(-r));
			close(sv[0]);
			close(sv[1]);
			return r;
		}
		close(sv[1]);
		sv[1] = d;
	}
	char threads[16];
	snprintf(threads, sizeof threads, "%u", p->threads);
	char *argv[12];
	int n = 0;
	argv[n++] = (char *)"aneshared-worker";
	argv[n++] = (char *)"--worker-child";
	argv[n++] = (char *)"3";
	argv[n++] = (char *)"--backend";
	argv[n++] = p->backend;
	argv[n++] = (char *)"--threads";
	argv[n++] = threads;
	if (p->fault) {
		argv[n++] = (char *)"--worker-fault";
		argv[n++] = p->fault;
	}
	argv[n] = NULL;

	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, dfl;
	sigemptyset(&none);
	sigemptyset(&dfl);
	sigaddset(&dfl, SIGCHLD);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &dfl);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	pid_t pid;
	int e = posix_spawn(&pid, p->exe, &fa, &attr, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	close(sv[1]);
	if (e != 0) {
		snprintf(err, errlen, "cannot run %s: %s", p->exe, strerror(e));
		close(sv[0]);
		return -e;
	}

	/* HELLO, bounded: a worker that hangs at startup must not hang us. */
	struct pollfd pfd = { .fd = sv[0], .events = POLLIN };
	int pr;
	do
		pr = poll(&pfd, 1, START_TIMEOUT_MS);
	while (pr < 0 && errno == EINTR);
	anes_wmsg_hdr h;
	void *payload = NULL;
	int mfd = -1;
	int r = pr > 0 ? anes_wmsg_recv(sv[0], &h, &payload, &mfd) : -ETIMEDOUT;
	if (r == 0 && (h.type != ANES_WM_HELLO || h.len < 4 || mfd >= 0))
		r = -EBADMSG;
	if (r < 0) {
		int st = 0;
		if (r == -ETIMEDOUT)
			kill(pid, SIGKILL);
		else
			shutdown(sv[0], SHUT_RDWR);
		reap(pid, &st);
		char how[96];
		describe_status(st, how, sizeof how);
		if (r == -ETIMEDOUT)
			snprintf(err, errlen, "the device worker (pid %ld) did not answer within %d ms",
			         (long)pid, START_TIMEOUT_MS);
		else
			snprintf(err, errlen, "the device worker (pid %ld) %s during startup", (long)pid, how);
		free(payload);
		if (mfd >= 0)
			close(mfd);
		close(sv[0]);
		return r == -ETIMEDOUT ? r : -ECHILD;
	}
	size_t nl = h.len - 4 < sizeof(p->worker_backend) - 1 ? h.len - 4 : sizeof(p->worker_backend) - 1;
	pthread_mutex_lock(&p->m);
	memcpy(p->worker_backend, (char *)payload + 4, nl);
	p->worker_backend[nl] = '\0';
	pthread_mutex_unlock(&p->m);
	free(payload);
	*ret_fd = sv[0];
	*ret_pid = pid;
	return 0;
}

/* ---- calls ---------------------------------------------------------------------- */

/* Wait until a worker is up; return with send_m and m held, or an error
 * with neither held. */
static int begin_send(wproxy *p)
{
	pthread_mutex_lock(&p->m);
	for (;;) {
		while (p->state == ST_STARTING && !p->closing)
			pthread_cond_wait(&p->state_cond, &p->m);
		if (p->closing || p->state == ST_CLOSED) {
			pthread_mutex_unlock(&p->m);
			return -ECANCELED;
		}
		if (p->state == ST_DOWN) {
			pthread_mutex_unlock(&p->m);
			return -ECONNRESET;
		}
		pthread_mutex_unlock(&p->m);
		pthread_mutex_lock(&p->send_m);
		pthread_mutex_lock(&p->m);
		if (p->state == ST_UP && !p->closing)
			return 0;
		pthread_mutex_unlock(&p->send_m);
	}
}

static void pend_add(wproxy *p, pending *pd)
{
	pd->id = ++p->next_id;
	pd->done = false;
	pd->rc = 0;
	pd->payload = NULL;
	pd->len = 0;
	pthread_cond_init(&pd->cond, NULL);
	pd->next = p->pend;
	p->pend = pd;
	p->inflight++;
}

static void pend_remove(wproxy *p, pending *pd)
{
	for (pending **pp = &p->pend; *pp; pp = &(*pp)->next) {
		if (*pp == pd) {
			*pp = pd->next;
			p->inflight--;
			if (p->inflight == 0)
				pthread_cond_broadcast(&p->state_cond);
			return;
		}
	}
}

/* After the request was written (send_m released): wait for its answer.
 * Returns with m released; pd->payload is owned by the caller. */
static void wait_reply(wproxy *p, pending *pd)
{
	pthread_mutex_lock(&p->m);
	while (!pd->done)
		pthread_cond_wait(&pd->cond, &p->m);
	pthread_mutex_unlock(&p->m);
	pthread_cond_destroy(&pd->cond);
}

/* A write failed: the worker is gone or going; make sure the supervisor
 * sees EOF (called with send_m held). */
static void write_failed(wproxy *p)
{
	if (p->fd >= 0)
		shutdown(p->fd, SHUT_RDWR);
}

static int parse_rc(const pending *pd, char *errbuf, size_t errlen)
{
	int32_t rc;
	uint32_t el;
	if (pd->len < 8)
		return -EIO;
	memcpy(&rc, pd->payload, 4);
	memcpy(&el, (char *)pd->payload + 4, 4);
	if (el > pd->len - 8)
		return -EIO;
	if (rc < 0 && errbuf && errlen > 0) {
		size_t n = el < errlen - 1 ? el : errlen - 1;
		memcpy(errbuf, (char *)pd->payload + 8, n);
		errbuf[n] = '\0';
	}
	return rc > 0 ? -EIO : rc;
}

static void lost(wproxy *p, char *errbuf, size_t errlen, const char *what)
{
	if (errbuf && errlen > 0)
		snprintf(errbuf, errlen,
		         "the device worker was lost during the %s; it is being restarted (retry)", what);
	(void)p;
}

/* ---- compiling --------------------------------------------------------------------- */

/* Build the program from a COMPILED reply. */
static int parse_compiled(pprog *pp, const pending *pd)
{
	const uint8_t *b = pd->payload;
	size_t left = pd->len;
	uint32_t nf;
	if (left < 12)
		return -EIO;
	memcpy(&nf, b + 8, 4);
	b += 12;
	left -= 12;
	if (nf > ANES_MAX_FUNCTIONS)
		return -EIO;
	/* First pass: count tensors, checking every length. */
	size_t nt = 0;
	const uint8_t *q = b;
	size_t ql = left;
	for (uint32_t f = 0; f < nf; f++) {
		uint32_t ni, no;
		if (ql < ANES_MAX_NAME + 8)
			return -EIO;
		memcpy(&ni, q + ANES_MAX_NAME, 4);
		memcpy(&no, q + ANES_MAX_NAME + 4, 4);
		q += ANES_MAX_NAME + 8;
		ql -= ANES_MAX_NAME + 8;
		if (ni > ANES_MAX_IO || no > ANES_MAX_IO ||
		    (size_t)(ni + no) * sizeof(anes_tensor_desc) > ql)
			return -EIO;
		q += (size_t)(ni + no) * sizeof(anes_tensor_desc);
		ql -= (size_t)(ni + no) * sizeof(anes_tensor_desc);
		nt += ni + no;
	}
	anes_function_info *fns = nf ? calloc(nf, sizeof(*fns)) : NULL;
	anes_tensor_desc *ts = nt ? calloc(nt, sizeof(*ts)) : NULL;
	if ((nf && !fns) || (nt && !ts)) {
		free(fns);
		free(ts);
		return -ENOMEM;
	}
	anes_tensor_desc *t = ts;
	for (uint32_t f = 0; f < nf; f++) {
		memcpy(fns[f].name, b, ANES_MAX_NAME);
		fns[f].name[ANES_MAX_NAME - 1] = '\0';
		memcpy(&fns[f].n_inputs, b + ANES_MAX_NAME, 4);
		memcpy(&fns[f].n_outputs, b + ANES_MAX_NAME + 4, 4);
		b += ANES_MAX_NAME + 8;
		size_t k = fns[f].n_inputs + fns[f].n_outputs;
		memcpy(t, b, k * sizeof(*t));
		for (size_t i = 0; i < k; i++)
			t[i].name[ANES_MAX_NAME - 1] = '\0';
		fns[f].inputs = t;
		fns[f].outputs = t + fns[f].n_inputs;
		t += k;
		b += k * sizeof(*t);
	}
	pp->fns = fns;
	pp->tensors = ts;
	pp->base.n_functions = nf;
	pp->base.functions = fns;
	return 0;
}

/* Compile pp->req in the current worker (on a caller's thread).  On
 * success pp->remote and pp->gen are set and, with parse, the function
 * table is read into pp.  A worker at its compile budget is restarted
 * first, once the calls in flight to it are answered. */
static int compile_in_worker(wproxy *p, pprog *pp, bool parse, char *errbuf, size_t errlen)
{
	for (;;) {
		int r = begin_send(p);
		if (r < 0) {
			if (r == -ECONNRESET)
				snprintf(errbuf, errlen,
				         "the device worker is not running; it is being restarted (retry)");
			return r;
		}
		if (!p->spent && (!p->budget || p->compiles < p->budget))
			break;
		pthread_mutex_unlock(&p->send_m);
		/* A new worker starts with the programs in use compiled again:
		 * it has room for this one only if they leave some. */
		if (p->budget && p->live + 1 > p->budget) {
			snprintf(errbuf, errlen,
			         "%llu programs in use fill the device worker's compile budget of %u",
			         (unsigned long long)p->live, p->budget);
			pthread_mutex_unlock(&p->m);
			return -ENOSPC;
		}
		if (!p->planned) {
			uint64_t g = p->gen;
			p->planned = true;
			p->state = ST_STARTING;
			while (p->inflight > 0 && p->gen == g && !p->closing)
				pthread_cond_wait(&p->state_cond, &p->m);
			/* The worker exits at EOF; the supervisor starts the next. */
			if (p->gen == g && p->fd >= 0)
				shutdown(p->fd, SHUT_WR);
		}
		pthread_mutex_unlock(&p->m);
	}

	pending pd;
	pend_add(p, &pd);
	p->compiles++;
	uint64_t gen = p->gen;
	int fd = p->fd;
	pthread_mutex_unlock(&p->m);
	struct iovec v = { pp->req, pp->req_len };
	int r = anes_wmsg_send(fd, ANES_WM_COMPILE, pd.id, &v, 1, -1);
	if (r < 0)
		write_failed(p);
	pthread_mutex_unlock(&p->send_m);
	wait_reply(p, &pd);
	if (pd.rc < 0) {
		lost(p, errbuf, errlen, "compile");
		free(pd.payload);
		return pd.rc;
	}
	r = parse_rc(&pd, errbuf, errlen);
	int counts = anes_compile_counts(r);
	if (counts != ANES_COMPILE_COUNTED) {
		pthread_mutex_lock(&p->m);
		if (p->gen == gen) {
			if (counts == ANES_COMPILE_NOT_COUNTED)
				p->compiles--;
			else
				p->spent = true;
		}
		pthread_mutex_unlock(&p->m);
	}
	if (r == 0 && parse)
		r = parse_compiled(pp, &pd);
	free(pd.payload);
	if (r < 0)
		return r;
	pthread_mutex_lock(&p->m);
	pp->remote = pd.id;
	pp->gen = gen;
	pthread_mutex_unlock(&p->m);
	return 0;
}

static void pprog_free(pprog *pp)
{
	free(pp->fns);
	free(pp->tensors);
	free(pp->req);
	free(pp);
}

static int px_compile(anes_backend *b, const char *mil, size_t mil_len, const anes_weight *weights,
                      size_t n_weights, anes_bprogram **ret_prog, char *errbuf, size_t errbuf_len)
{
	wproxy *p = P(b);
	if (errbuf_len > 0)
		errbuf[0] = '\0';
	if (mil_len > UINT32_MAX || n_weights > 4096)
		return -EINVAL;
	size_t len = 8 + mil_len;
	for (size_t i = 0; i < n_weights; i++)
		len += 12 + strlen(weights[i].path) + 1 + weights[i].len;
	if (len > ANES_WMSG_MAX)
		return -ENOMEM;
	pprog *pp = calloc(1, sizeof(*pp));
	uint8_t *req = malloc(len);
	if (!pp || !req) {
		free(pp);
		free(req);
		return -ENOMEM;
	}
	uint8_t *q = req;
	uint32_t ml = (uint32_t)mil_len, nw = (uint32_t)n_weights;
	memcpy(q, &ml, 4);
	memcpy(q + 4, &nw, 4);
	q += 8;
	memcpy(q, mil, mil_len);
	q += mil_len;
	for (size_t i = 0; i < n_weights; i++) {
		uint32_t pl = (uint32_t)strlen(weights[i].path) + 1;
		uint64_t wl = weights[i].len;
		memcpy(q, &pl, 4);
		memcpy(q + 4, &wl, 8);
		q += 12;
		memcpy(q, weights[i].path, pl);
		q += pl;
		if (wl)
			memcpy(q, weights[i].data, wl);
		q += wl;
	}
	pp->req = req;
	pp->req_len = len;
	pp->base.backend = b;

	int r = compile_in_worker(p, pp, true, errbuf, errbuf_len);
	if (r < 0) {
		pprog_free(pp);
		return r;
	}
	pthread_mutex_lock(&p->m);
	pp->next = p->progs;
	if (p->progs)
		p->progs->prev = pp;
	p->progs = pp;
	p->live++;
	pthread_mutex_unlock(&p->m);
	*ret_prog = &pp->base;
	return 0;
}

static void px_program_free(anes_backend *b, anes_bprogram *prog)
{
	wproxy *p = P(b);
	if (!prog)
		return;
	pprog *pp = (pprog *)(void *)prog;
	pthread_mutex_lock(&p->send_m);
	pthread_mutex_lock(&p->m);
	if (pp->prev)
		pp->prev->next = pp->next;
	else
		p->progs = pp->next;
	if (pp->next)
		pp->next->prev = pp->prev;
	pp->prev = pp->next = NULL;
	p->live--;
	if (pp->busy) {
		pp->freed = true;   /* the supervisor frees it */
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&p->send_m);
		return;
	}
	/* (Also during a restart: send_m keeps the fd valid.) */
	bool drop = pp->gen == p->gen && p->fd >= 0;
	int fd = p->fd;
	pthread_mutex_unlock(&p->m);
	if (drop && anes_wmsg_send(fd, ANES_WM_PROGRAM_FREE, pp->remote, NULL, 0, -1) < 0)
		write_failed(p);
	pthread_mutex_unlock(&p->send_m);
	pprog_free(pp);
}

/* ---- running ---------------------------------------------------------------------------- */

/* Share s with the worker on fd (send_m held): its memfd with SURFACE_ADD,
 * or its IOSurface ID with SURFACE_ADD_ID. */
static int send_surface(int fd, const psurf *s)
{
	if (s->ios_id) {
		uint32_t id = s->ios_id;
		struct iovec v[2] = { { (void *)&s->size, 8 }, { &id, 4 } };
		return anes_wmsg_send(fd, ANES_WM_SURFACE_ADD_ID, s->key, v, 2, -1);
	}
	struct iovec v = { (void *)&s->size, 8 };
	return anes_wmsg_send(fd, ANES_WM_SURFACE_ADD, s->key, &v, 1, s->fd);
}

static psurf **surf_slot(wproxy *p, uint64_t key)
{
	psurf **pp = &p->sb[(key * 0x9E3779B97F4A7C15ull) >> 56];
	while (*pp && (*pp)->key != key)
		pp = &(*pp)->next;
	return pp;
}

static int px_run_surfaces(anes_backend *b, anes_bprogram *prog, uint32_t fn_index,
                           const anes_surface_desc *args, uint32_t n_args, char *errbuf,
                           size_t errbuf_len)
{
	wproxy *p = P(b);
	pprog *pp = (pprog *)(void *)prog;
	if (errbuf_len > 0)
		errbuf[0] = '\0';
	if (n_args > 2 * ANES_MAX_IO)
		return -EINVAL;

	int r;
	for (;;) {
		r = begin_send(p);
		if (r < 0) {
			if (r == -ECONNRESET)
				snprintf(errbuf, errbuf_len,
				         "the device worker is not running; it is being restarted (retry)");
			return r;
		}
		if (pp->gen == p->gen)
			break;
		/* Not in this worker (it was compiled while the worker restarted). */
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&p->send_m);
		r = compile_in_worker(p, pp, false, errbuf, errbuf_len);
		if (r < 0)
			return r;
	}

	/* Share the surfaces this worker has not seen, then the run. */
	psurf add[2 * ANES_MAX_IO];   /* copies: a surface cannot go while its run is pending */
	uint32_t n_add = 0;
	uint64_t body[2 + 4 * ANES_MAX_IO];
	for (uint32_t i = 0; i < n_args; i++) {
		psurf **slot = surf_slot(p, args[i].key);
		if (!*slot) {
			psurf *s = calloc(1, sizeof(*s));
			if (!s) {
				pthread_mutex_unlock(&p->m);
				pthread_mutex_unlock(&p->send_m);
				return -ENOMEM;
			}
			*s = (psurf){ .key = args[i].key, .fd = args[i].fd, .ios_id = args[i].ios_id,
			              .size = args[i].size };
			*slot = s;
		}
		psurf *s = *slot;
		if (s->gen != p->gen) {
			s->gen = p->gen;
			add[n_add++] = *s;
		}
		body[2 + 2 * i] = args[i].key;
		body[3 + 2 * i] = args[i].offset;
	}
	pending pd;
	pend_add(p, &pd);
	int fd = p->fd;
	uint64_t pid = pp->remote;
	pthread_mutex_unlock(&p->m);

	r = 0;
	for (uint32_t i = 0; i < n_add && r == 0; i++)
		r = send_surface(fd, &add[i]);
	if (r == 0) {
		body[0] = pid;
		uint32_t fn_n[2] = { fn_index, n_args };
		memcpy(&body[1], fn_n, 8);
		struct iovec v = { body, (2 + 2 * (size_t)n_args) * 8 };
		r = anes_wmsg_send(fd, ANES_WM_RUN, pd.id, &v, 1, -1);
	}
	if (r < 0)
		write_failed(p);
	pthread_mutex_unlock(&p->send_m);
	wait_reply(p, &pd);
	if (pd.rc < 0) {
		free(pd.payload);
		lost(p, errbuf, errbuf_len, "run");
		return pd.rc;
	}
	r = parse_rc(&pd, errbuf, errbuf_len);
	free(pd.payload);
	return r;
}

static int px_run(anes_backend *b, anes_bprogram *prog, uint32_t fn_index,
                  const void *const *inputs, void *const *outputs, char *errbuf, size_t errbuf_len)
{
	(void)b;
	(void)prog;
	(void)fn_index;
	(void)inputs;
	(void)outputs;
	snprintf(errbuf, errbuf_len, "the device worker needs surfaces (run_surfaces)");
	return -ENOTSUP;
}

static void px_surface_release(anes_backend *b, uint64_t key)
{
	wproxy *p = P(b);
	pthread_mutex_lock(&p->send_m);
	pthread_mutex_lock(&p->m);
	psurf **slot = surf_slot(p, key);
	psurf *s = *slot;
	if (!s) {
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&p->send_m);
		return;
	}
	*slot = s->next;
	bool drop = s->gen == p->gen && p->fd >= 0;
	int fd = p->fd;
	pthread_mutex_unlock(&p->m);
	if (drop && anes_wmsg_send(fd, ANES_WM_SURFACE_DROP, key, NULL, 0, -1) < 0)
		write_failed(p);
	pthread_mutex_unlock(&p->send_m);
	free(s);
}

static void px_worker_info(anes_backend *b, anes_worker_info *ret)
{
	wproxy *p = P(b);
	pthread_mutex_lock(&p->m);
	*ret = (anes_worker_info){
		.pid = p->pid,
		.restarts = p->restarts,
		.compiles = p->compiles,
		.compile_budget = p->budget,
		.recompiles = p->recompiles,
		.backend = p->worker_backend,
	};
	pthread_mutex_unlock(&p->m);
}

/* ---- the supervisor --------------------------------------------------------------------- */

/* Read messages until the reply to id (supervisor only, while no caller
 * can send).  0 with the payload, or -errno when the worker is gone. */
static int sync_reply(wproxy *p, uint64_t id, void **ret_payload, uint32_t *ret_len)
{
	for (;;) {
		anes_wmsg_hdr h;
		void *payload;
		int mfd;
		int r = anes_wmsg_recv(p->fd, &h, &payload, &mfd);
		if (r < 0)
			return r;
		if (mfd >= 0)
			close(mfd);
		if (h.id == id && h.type == ANES_WM_COMPILED) {
			*ret_payload = payload;
			*ret_len = h.len;
			return 0;
		}
		free(payload);
	}
}

/* Compile every live program and share every live surface in the new
 * worker.  -EPIPE if it died meanwhile. */
static int restore(wproxy *p)
{
	for (;;) {
		pthread_mutex_lock(&p->send_m);
		pthread_mutex_lock(&p->m);
		pprog *pp = p->progs;
		while (pp && pp->gen == p->gen)
			pp = pp->next;
		if (!pp) {
			pthread_mutex_unlock(&p->m);
			pthread_mutex_unlock(&p->send_m);
			break;
		}
		pp->busy = true;
		uint64_t id = ++p->next_id;
		p->compiles++;
		p->recompiles++;
		p->gen_base++;
		pthread_mutex_unlock(&p->m);
		struct iovec v = { pp->req, pp->req_len };
		int r = anes_wmsg_send(p->fd, ANES_WM_COMPILE, id, &v, 1, -1);
		pthread_mutex_unlock(&p->send_m);
		void *payload = NULL;
		uint32_t len = 0;
		if (r == 0)
			r = sync_reply(p, id, &payload, &len);
		pending pd = { .payload = payload, .len = len };
		char err[256] = "";
		int rc = r < 0 ? r : parse_rc(&pd, err, sizeof err);
		free(payload);
		pthread_mutex_lock(&p->m);
		if (r == 0 && anes_compile_counts(rc) == ANES_COMPILE_SPENT)
			p->spent = true;
		pp->busy = false;
		bool freed = pp->freed;
		if (rc == 0) {
			pp->remote = id;
			pp->gen = p->gen;
		} else {
			pp->gen = p->gen;   /* don't try again in this worker */
			pp->remote = 0;
		}
		pthread_mutex_unlock(&p->m);
		if (rc < 0 && r == 0)
			anes_log("error: device worker: recompiling a program failed: %s",
			         err[0] ? err : strerror(-rc));
		if (freed) {
			if (rc == 0) {
				pthread_mutex_lock(&p->send_m);
				(void)anes_wmsg_send(p->fd, ANES_WM_PROGRAM_FREE, id, NULL, 0, -1);
				pthread_mutex_unlock(&p->send_m);
			}
			pprog_free(pp);
		}
		if (r < 0)
			return -EPIPE;
	}
	/* Surfaces: with both locks, so that none is released meanwhile. */
	pthread_mutex_lock(&p->send_m);
	pthread_mutex_lock(&p->m);
	int r = 0;
	for (size_t i = 0; i < SBUCKETS && r == 0; i++) {
		for (psurf *s = p->sb[i]; s && r == 0; s = s->next) {
			r = send_surface(p->fd, s);
			s->gen = p->gen;
		}
	}
	pthread_mutex_unlock(&p->m);
	pthread_mutex_unlock(&p->send_m);
	return r < 0 ? -EPIPE : 0;
}

static void deliver(wproxy *p, const anes_wmsg_hdr *h, void *payload)
{
	pthread_mutex_lock(&p->m);
	for (pending *pd = p->pend; pd; pd = pd->next) {
		if (pd->id == h->id) {
			pend_remove(p, pd);
			pd->payload = payload;
			pd->len = h->len;
			pd->done = true;
			pthread_cond_signal(&pd->cond);
			pthread_mutex_unlock(&p->m);
			return;
		}
	}
	pthread_mutex_unlock(&p->m);
	free(payload);
}

/* The worker's socket reached EOF (or broke): fail what waits on it, close
 * it and reap the process. */
static void worker_gone(wproxy *p, bool *ret_planned, uint64_t lived_ms)
{
	pthread_mutex_lock(&p->send_m);
	pthread_mutex_lock(&p->m);
	bool planned = p->planned;
	p->planned = false;
	if (p->state != ST_CLOSED)
		p->state = ST_STARTING;
	unsigned failed = 0;
	while (p->pend) {
		pending *pd = p->pend;
		pend_remove(p, pd);
		pd->rc = -ECONNRESET;
		pd->done = true;
		pthread_cond_signal(&pd->cond);
		failed++;
	}
	close(p->fd);
	p->fd = -1;
	pid_t pid = p->pid;
	p->pid = 0;
	bool closing = p->closing;
	pthread_cond_broadcast(&p->state_cond);
	pthread_mutex_unlock(&p->m);
	pthread_mutex_unlock(&p->send_m);

	int st;
	reap(pid, &st);
	char how[96];
	describe_status(st, how, sizeof how);
	if (closing)
		;
	else if (planned && WIFEXITED(st) && WEXITSTATUS(st) == 0)
		anes_log("device worker pid %ld reached its compile budget (%u); starting a new one",
		         (long)pid, p->budget);
	else
		anes_log("error: device worker pid %ld %s after %llu ms; %u calls in flight failed with "
		         "worker_restarted; starting a new one",
		         (long)pid, how, (unsigned long long)lived_ms, failed);
	*ret_planned = planned && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void *supervisor(void *arg)
{
	wproxy *p = arg;
	uint32_t backoff = 0;

	for (;;) {
		char err[256] = "";
		int fd = -1;
		pid_t pid = 0;
		int r = spawn_worker(p, &fd, &pid, err, sizeof err);
		pthread_mutex_lock(&p->send_m);
		pthread_mutex_lock(&p->m);
		if (r < 0 && !p->started_once) {
			p->start_rc = r;
			snprintf(p->start_err, sizeof p->start_err, "%s", err);
			p->state = ST_CLOSED;
			pthread_cond_broadcast(&p->state_cond);
			pthread_mutex_unlock(&p->m);
			pthread_mutex_unlock(&p->send_m);
			return NULL;
		}
		if (r < 0 || p->closing) {
			if (r == 0) {
				/* Closing meanwhile: stop the new one. */
				shutdown(fd, SHUT_RDWR);
				close(fd);
				reap(pid, NULL);
			}
			if (p->closing) {
				p->state = ST_CLOSED;
				pthread_cond_broadcast(&p->state_cond);
				pthread_mutex_unlock(&p->m);
				pthread_mutex_unlock(&p->send_m);
				return NULL;
			}
			backoff = backoff ? (backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2)
			                  : BACKOFF_MIN_MS;
			anes_log("error: %s; trying again in %u ms", err, backoff);
			p->state = ST_DOWN;
			pthread_cond_broadcast(&p->state_cond);
			pthread_mutex_unlock(&p->send_m);
			goto wait;
		}
		if (p->started_once)
			p->restarts++;
		p->fd = fd;
		p->pid = pid;
		p->gen++;
		p->compiles = 0;
		p->gen_base = 0;
		p->spent = false;
		p->state = ST_STARTING;
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&p->send_m);

		uint64_t t0 = now_ms();
		r = restore(p);
		pthread_mutex_lock(&p->m);
		if (r == 0 && !p->closing) {
			p->state = ST_UP;
			if (p->started_once)
				anes_log("device worker pid %ld started (%s backend, %llu programs recompiled)",
				         (long)pid, p->worker_backend, (unsigned long long)p->gen_base);
			p->started_once = true;
			pthread_cond_broadcast(&p->state_cond);
		}
		p->started_once = true;
		pthread_mutex_unlock(&p->m);

		while (r == 0) {
			anes_wmsg_hdr h;
			void *payload;
			int mfd;
			r = anes_wmsg_recv(fd, &h, &payload, &mfd);
			if (r < 0)
				break;
			if (mfd >= 0)
				close(mfd);
			deliver(p, &h, payload);
		}
		shutdown(fd, SHUT_RDWR);   /* (a broken stream: make the worker exit) */
		bool planned;
		uint64_t lived = now_ms() - t0;
		worker_gone(p, &planned, lived);
		pthread_mutex_lock(&p->m);
		if (p->closing) {
			p->state = ST_CLOSED;
			pthread_cond_broadcast(&p->state_cond);
			pthread_mutex_unlock(&p->m);
			return NULL;
		}
		if (planned || lived >= STABLE_MS) {
			backoff = 0;
			pthread_mutex_unlock(&p->m);
			continue;
		}
		backoff = backoff ? (backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2)
		                  : BACKOFF_MIN_MS;
		anes_log("device worker: restarting in %u ms (it lived only %llu ms)", backoff,
		         (unsigned long long)lived);
wait:;
		/* m held.  A timed wait, cut short by closing. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += backoff / 1000;
		ts.tv_nsec += (long)(backoff % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		while (!p->closing) {
			int e = pthread_cond_timedwait(&p->state_cond, &p->m, &ts);
			if (e == ETIMEDOUT)
				break;
		}
		bool closing = p->closing;
		if (closing) {
			p->state = ST_CLOSED;
			pthread_cond_broadcast(&p->state_cond);
		}
		pthread_mutex_unlock(&p->m);
		if (closing)
			return NULL;
	}
}

/* ---- life cycle --------------------------------------------------------------------------- */

static void px_destroy(anes_backend *b)
{
	wproxy *p = P(b);
	if (!p)
		return;
	if (p->sup_started) {
		pthread_mutex_lock(&p->send_m);
		pthread_mutex_lock(&p->m);
		p->closing = true;
		if (p->fd >= 0)
			shutdown(p->fd, SHUT_RDWR);   /* EOF for the worker and the supervisor */
		pthread_cond_broadcast(&p->state_cond);
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&p->send_m);
		pthread_join(p->sup, NULL);
	}
	while (p->progs) {
		pprog *pp = p->progs;
		p->progs = pp->next;
		pprog_free(pp);
	}
	for (size_t i = 0; i < SBUCKETS; i++) {
		while (p->sb[i]) {
			psurf *s = p->sb[i];
			p->sb[i] = s->next;
			free(s);
		}
	}
	pthread_cond_destroy(&p->state_cond);
	pthread_mutex_destroy(&p->send_m);
	pthread_mutex_destroy(&p->m);
	free(p->exe);
	free(p->backend);
	free(p->fault);
	free(p);
}

int anes_wproxy_new(const anes_wproxy_config *cfg, anes_backend **ret, char *errbuf,
                    size_t errbuf_len)
{
	if (errbuf_len > 0)
		errbuf[0] = '\0';
	wproxy *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->ops = (anes_backend_ops){
		.name = NULL,
		.compile = px_compile,
		.run = px_run,
		.program_free = px_program_free,
		.destroy = px_destroy,
		.run_surfaces = px_run_surfaces,
		.surface_release = px_surface_release,
		.worker_info = px_worker_info,
	};
	p->base.ops = &p->ops;
	p->fd = -1;
	p->budget = cfg->compile_budget;
	p->threads = cfg->threads ? cfg->threads : 2;
	p->exe = strdup(cfg->exe);
	p->backend = strdup(cfg->backend);
	p->fault = cfg->fault ? strdup(cfg->fault) : NULL;
	pthread_mutex_init(&p->m, NULL);
	pthread_mutex_init(&p->send_m, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_cond_init(&p->state_cond, &ca);
	pthread_condattr_destroy(&ca);
	snprintf(p->worker_backend, sizeof p->worker_backend, "%s", cfg->backend);
	if (!p->exe || !p->backend || (cfg->fault && !p->fault)) {
		px_destroy(&p->base);
		return -ENOMEM;
	}
	p->ops.name = p->backend;
	int e = pthread_create(&p->sup, NULL, supervisor, p);
	if (e != 0) {
		snprintf(errbuf, errbuf_len, "cannot start the device worker's thread: %s", strerror(e));
		px_destroy(&p->base);
		return -e;
	}
	p->sup_started = true;

	pthread_mutex_lock(&p->m);
	while (p->state == ST_STARTING)
		pthread_cond_wait(&p->state_cond, &p->m);
	int r = p->state == ST_UP ? 0 : p->start_rc ? p->start_rc : -EIO;
	if (r < 0)
		snprintf(errbuf, errbuf_len, "the device worker did not start: %s", p->start_err);
	pthread_mutex_unlock(&p->m);
	if (r < 0) {
		px_destroy(&p->base);
		return r;
	}
	*ret = &p->base;
	return 0;
}
