/* SPDX-License-Identifier: MIT */
/*
 * The proxy backend (docs/worker.md): compiles and runs are forwarded to
 * device worker processes.  Each program lives in one worker; a new
 * program goes to a worker with compile budget left, or to a new worker
 * (up to max_workers); when every worker's budget is spent, the one with
 * the fewest programs is replaced: a fresh worker compiles its programs
 * while the old one keeps running them, then takes them over.  A worker
 * that dies is restarted with its programs compiled again; one that does
 * not answer within the watchdog's deadline is killed first.
 *
 * Restores: a new worker serves as soon as it started.  Its supervisor
 * compiles again, one at a time between the replies it reads, the programs
 * it must hold (those of the worker it replaces, or of its crashed
 * predecessor), those a run waits for first; each program runs again as
 * soon as its own recompile is answered.  So runs of programs already
 * restored, and new compiles, go on meanwhile, and a job worker whose run
 * waits for its program says so (anes_pool_wait_begin): a spare thread
 * takes its place and the wait is not charged to its client as device time.
 * The recompiles belong to no request.
 *
 * Threads: compile and run_surfaces are called on the daemon's pool (and
 * lane) threads and block until the worker answers.  Each worker slot has
 * a supervisor thread that starts its worker, reads every reply (matching
 * it to its waiting call by ID), enforces the deadlines and restarts the
 * worker when its socket reaches EOF.
 * Locks: a slot's send_m (writing to its socket; held across a run's
 * SURFACE_ADDs and the RUN so that they reach the same worker in order)
 * before m (all other state, one for the proxy).  Never two send_m at
 * once.  A slot's fd is only closed with its send_m and m held.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "anes_clock.h"
#include "anes_proto.h"   /* anes_socketpair_cloexec */
#include "devworker.h"
#include "util.h"
#include "mil.h"

extern char **environ;

#define START_TIMEOUT_MS 10000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define STABLE_MS 2000     /* a worker that lived this long resets the backoff */
#define EXIT_GRACE_MS 2000 /* a worker told to stop gets this long before SIGKILL */
#define MAX_SLOTS 65       /* --max-device-workers (64) + one being started as a replacement */

typedef enum sstate {
	ST_IDLE,        /* no worker, none wanted */
	ST_STARTING,    /* starting, or restarting: calls to it wait */
	ST_UP,
	ST_DOWN,        /* the last start failed: calls fail at once */
	ST_CLOSED,
} sstate;

typedef struct wslot wslot;

typedef struct pprog {
	anes_bprogram base;
	struct pprog *prev, *next;
	anes_function_info *fns;
	anes_tensor_desc *tensors;
	char *names;            /* of fns and tensors, one buffer */
	void *req;              /* the COMPILE payload (MIL + the weights' paths and places), */
	size_t req_len;         /* kept for recompiles with ... */
	int fds[ANES_WMSG_MAX_FDS];   /* ... the weight files (owned, CLOEXEC): never their bytes */
	unsigned nfds;
	uint64_t statements, weight_bytes;   /* for the compile deadline */
	uint64_t run_bytes;     /* weights + tensors: a first run's deadline */
	wslot *slot;            /* the worker it runs in (or is compiled again in after a crash) */
	uint64_t remote;        /* program ID in worker generation gen */
	uint64_t gen;
	wslot *move;            /* being compiled in this replacement worker, or NULL */
	uint64_t move_remote;   /* its ID there once compiled (in generation move_gen) */
	uint64_t move_gen;
	uint64_t recent_us;     /* recent run time (anes_wd_recent_us) */
	bool busy;              /* a supervisor is compiling it again */
	bool freed;             /* program_free came while busy */
	bool broken;            /* its recompile failed: runs fail */
	bool first;             /* a run waits for its recompile: it goes next */
} pprog;

typedef struct pending {
	struct pending *next;
	uint64_t id;
	bool done;
	int rc;                 /* -ECONNRESET if the worker was lost */
	void *payload;
	uint32_t len;
	pthread_cond_t cond;
	uint64_t sent_ns, deadline_ns, allow_ms;
	pprog *prog;            /* a first compile (linked in at the reply), a run or a recompile */
	bool run;
	bool restore;           /* a recompile: the supervisor's own (heap), nobody waits */
} pending;

typedef struct psurf {
	struct psurf *next;
	uint64_t key;
	int fd;                 /* borrowed from the daemon's surface; -1 for IOSurface */
	uint32_t ios_id;        /* the IOSurface ID (SURFACE_ADD_ID), 0 for memfd */
	uint64_t size;
	uint64_t gen[];         /* per slot: shared with this worker generation */
} psurf;

#define SBUCKETS 256

typedef struct wproxy wproxy;

struct wslot {
	wproxy *p;
	unsigned idx;
	pthread_mutex_t send_m;
	sstate state;
	bool wanted;            /* should have a worker */
	bool retiring;          /* being replaced: takes no new programs, stops when empty */
	bool draining;          /* told to stop (EOF sent) */
	bool spent;             /* a framework compile failure: the budget counts as used up */
	bool hung;              /* the watchdog killed it */
	bool start_failed;      /* its last start failed and nothing was left to restart */
	bool replacement;       /* started to replace another worker (counted in restarts) */
	int fd;
	pid_t pid;
	uint64_t gen;
	uint64_t compiles;      /* compiles in the current process */
	uint32_t live;          /* programs with slot == this */
	pending *pend;
	uint32_t inflight;
	uint64_t queued_ms;     /* the allowances of the calls in flight */
	uint32_t backoff;
	pending *restore_pd;    /* the recompile in flight, at most one */
	bool restoring;         /* since its start, until nothing is left to compile again */
	uint64_t restore_t0, restore_rc0;   /* for the log line at its end */
	pthread_t sup;
	bool sup_started;
	char start_err[256];
	/* status "ane_copies": the count the worker's RAN replies report
	 * (the worker copies_pid's; p->copies_base holds earlier workers') */
	pid_t copies_pid;
	uint64_t copies_seen;
};

struct wproxy {
	anes_backend base;
	anes_backend_ops ops;
	char *exe, *backend, *fault;
	uint32_t budget;
	unsigned threads, max_workers, n_slots;
	uint64_t run_floor_ms, compile_floor_ms, tick_ms;

	pthread_mutex_t m;
	pthread_cond_t cond;    /* any slot's state, programs moving */
	bool closing;
	bool started_once;
	int start_rc;
	uint64_t gens, next_id;
	uint64_t restarts, recompiles, watchdog_kills;
	uint64_t n_progs;
	uint64_t start_fail_ms;  /* when a new worker last failed to start */
	char start_fail[256];
	char worker_backend[16];
	uint64_t copies_base;   /* ane_copies of workers that are gone */
	pprog *progs;
	psurf *sb[SBUCKETS];
	wslot slots[MAX_SLOTS];
};

static wproxy *P(anes_backend *b)
{
	return (wproxy *)(void *)b;
}

/* Real time, for everything else (grace periods, back-off, logs). */
static uint64_t real_ms(void)
{
	return anes_now_ns() / 1000000u;
}

/* ---- starting and stopping a worker ----------------------------------------------------- */

/* Wait for pid; after grace_ms (if not negative) kill it first. */
static void reap(pid_t pid, int grace_ms, int *ret_status)
{
	int st = 0;
	if (grace_ms >= 0) {
		uint64_t end = real_ms() + (uint64_t)grace_ms;
		for (;;) {
			pid_t r = waitpid(pid, &st, WNOHANG);
			if (r == pid)
				goto done;
			if (r < 0 && errno != EINTR)
				break;
			if (real_ms() >= end) {
				kill(pid, SIGKILL);
				break;
			}
			struct timespec ts = { 0, 5 * 1000000L };
			nanosleep(&ts, NULL);
		}
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
done:
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
	int sr = anes_socketpair_cloexec(AF_UNIX, SOCK_STREAM, sv);
	if (sr < 0) {
		snprintf(err, errlen, "socketpair: %s", strerror(-sr));
		return sr;
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
	char limits[ANES_MIL_LIMITS_STR];
	anes_mil_limits_format(anes_mil_get_limits(), limits, sizeof limits);
	char *argv[14];
	int n = 0;
	argv[n++] = (char *)"aneshared-worker";
	argv[n++] = (char *)"--worker-child";
	argv[n++] = (char *)"3";
	argv[n++] = (char *)"--backend";
	argv[n++] = p->backend;
	argv[n++] = (char *)"--threads";
	argv[n++] = threads;
	argv[n++] = (char *)"--mil-limits";   /* the daemon's, set before the proxy starts */
	argv[n++] = limits;
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
	short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
#ifdef POSIX_SPAWN_CLOEXEC_DEFAULT
	/* macOS sets CLOEXEC with fcntl after accept/socketpair, so a client fd of
	 * another thread could be open without it right now: the child gets only
	 * stdin/stdout/stderr and fd 3. */
	flags |= POSIX_SPAWN_CLOEXEC_DEFAULT;
	for (int fd = 0; fd <= 2; fd++)
		posix_spawn_file_actions_addinherit_np(&fa, fd);
#endif
	posix_spawnattr_setflags(&attr, flags);
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
		reap(pid, EXIT_GRACE_MS, &st);
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
	/* A reply cut off in the middle (a worker stopped while writing) is
	 * a broken worker: reads give up after the run floor. */
	struct timeval tv = { .tv_sec = (time_t)(p->run_floor_ms / 1000),
		              .tv_usec = (suseconds_t)(p->run_floor_ms % 1000) * 1000 };
	(void)setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
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

static void *supervisor(void *arg);

/* Ask for a worker in slot s (m held). */
static void want(wproxy *p, wslot *s)
{
	s->wanted = true;
	s->start_failed = false;
	if (s->state == ST_IDLE)
		s->state = ST_STARTING;   /* (before its supervisor runs: nobody starts another) */
	if (!s->sup_started) {
		if (pthread_create(&s->sup, NULL, supervisor, s) != 0) {
			s->wanted = false;
			s->start_failed = true;
			s->state = ST_IDLE;
			snprintf(s->start_err, sizeof s->start_err, "cannot start a supervisor thread");
			return;
		}
		s->sup_started = true;
	}
	pthread_cond_broadcast(&p->cond);
}

/* A retiring worker with no programs left and no call in flight is told
 * to stop: EOF on its socket (m held). */
static void maybe_drain(wslot *s)
{
	if (s->retiring && !s->draining && s->live == 0 && s->inflight == 0 && s->fd >= 0) {
		s->draining = true;
		shutdown(s->fd, SHUT_WR);
	}
}

/* ---- calls ---------------------------------------------------------------------------- */

static void pend_add(wslot *s, pending *pd, uint64_t allow_ms)
{
	wproxy *p = s->p;
	pd->id = ++p->next_id;
	pd->done = false;
	pd->rc = 0;
	pd->payload = NULL;
	pd->len = 0;
	pthread_cond_init(&pd->cond, NULL);
	pd->sent_ns = anes_clock_ns();
	/* Calls ahead of it in this worker may run first. */
	pd->allow_ms = allow_ms;
	pd->deadline_ns = pd->sent_ns + (allow_ms + s->queued_ms) * 1000000u;
	s->queued_ms += allow_ms;
	pd->next = s->pend;
	s->pend = pd;
	s->inflight++;
}

static void pend_remove(wslot *s, pending *pd)
{
	for (pending **pp = &s->pend; *pp; pp = &(*pp)->next) {
		if (*pp == pd) {
			*pp = pd->next;
			s->inflight--;
			s->queued_ms -= pd->allow_ms;
			if (s->inflight == 0) {
				pthread_cond_broadcast(&s->p->cond);
				maybe_drain(s);
			}
			return;
		}
	}
}

/* After the request was written (send_m released): wait for its answer.
 * pd->payload is then owned by the caller. */
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
static void write_failed(wslot *s)
{
	if (s->fd >= 0)
		shutdown(s->fd, SHUT_RDWR);
}

/* A RAN reply's trailing u64 (docs/worker.md): the count of run arguments
 * the worker's backend has copied so far (status "ane_copies"). */
static void note_copies(wproxy *p, wslot *s, const void *payload, uint32_t len)
{
	uint32_t el;
	uint64_t v;
	if (len < 8)
		return;
	memcpy(&el, (const char *)payload + 4, 4);
	if (el > len - 8 || len - 8 - el < 8)
		return;
	memcpy(&v, (const char *)payload + 8 + el, 8);
	pthread_mutex_lock(&p->m);
	if (s->copies_pid != s->pid) {   /* another worker: it counts from 0 */
		p->copies_base += s->copies_seen;
		s->copies_seen = 0;
		s->copies_pid = s->pid;
	}
	if (v > s->copies_seen)
		s->copies_seen = v;
	pthread_mutex_unlock(&p->m);
}

static uint64_t px_copies(anes_backend *b)
{
	wproxy *p = P(b);
	pthread_mutex_lock(&p->m);
	uint64_t n = p->copies_base;
	for (unsigned i = 0; i < MAX_SLOTS; i++)
		n += p->slots[i].copies_seen;
	pthread_mutex_unlock(&p->m);
	return n;
}

static int parse_rc(const void *payload, uint32_t len, char *errbuf, size_t errlen)
{
	int32_t rc;
	uint32_t el;
	if (len < 8)
		return -EIO;
	memcpy(&rc, payload, 4);
	memcpy(&el, (const char *)payload + 4, 4);
	if (el > len - 8)
		return -EIO;
	if (rc < 0 && errbuf && errlen > 0) {
		size_t n = el < errlen - 1 ? el : errlen - 1;
		memcpy(errbuf, (const char *)payload + 8, n);
		errbuf[n] = '\0';
	}
	return rc > 0 ? -EIO : rc;
}

static void lost(char *errbuf, size_t errlen, const char *what)
{
	if (errbuf && errlen > 0)
		snprintf(errbuf, errlen,
		         "the device worker was lost during the %s; it is being restarted (retry)", what);
}

/* ---- compiling ---------------------------------------------------------------------------- */

/* A length-prefixed name of a COMPILED reply at *b (left bytes): checked,
 * copied to *names (NUL-terminated) when it is not NULL. */
static int take_wname(const uint8_t **b, size_t *left, char **names, const char **ret)
{
	uint32_t nl;

	if (*left < 4)
		return -EIO;
	memcpy(&nl, *b, 4);
	if (nl > ANES_NAME_MAX || *left - 4 < nl || memchr(*b + 4, 0, nl))
		return -EIO;
	if (names) {
		memcpy(*names, *b + 4, nl);
		(*names)[nl] = '\0';
		*ret = *names;
		*names += nl + 1;
	}
	*b += 4 + nl;
	*left -= 4 + nl;
	return 0;
}

#define WDESC_BYTES (8 + 8 * ANES_MAX_RANK + 8)   /* dtype, rank, shape, bytes */

/* Build the program from a COMPILED reply (layout: devworker.c, docs/worker.md). */
static int parse_compiled(pprog *pp, const pending *pd)
{
	uint32_t nf;
	if (pd->len < 12)
		return -EIO;
	memcpy(&nf, (const uint8_t *)pd->payload + 8, 4);
	if (nf > ANES_MAX_FUNCTIONS)
		return -EIO;
	/* First pass: check every length; count tensors and name bytes. */
	size_t nt = 0, nbytes = 0;
	const uint8_t *q = (const uint8_t *)pd->payload + 12;
	size_t ql = pd->len - 12;
	for (uint32_t f = 0; f < nf; f++) {
		uint32_t ni, no, ns;
		size_t before = ql;
		if (take_wname(&q, &ql, NULL, NULL) < 0 || ql < 12)
			return -EIO;
		nbytes += before - ql - 4 + 1;
		memcpy(&ni, q, 4);
		memcpy(&no, q + 4, 4);
		memcpy(&ns, q + 8, 4);
		q += 12;
		ql -= 12;
		if (ni > ANES_MAX_IO || no > ANES_MAX_IO || ns > ANES_MAX_IO)
			return -EIO;
		for (uint32_t i = 0; i < ni + no + ns; i++) {
			uint32_t rank;
			before = ql;
			if (take_wname(&q, &ql, NULL, NULL) < 0 || ql < WDESC_BYTES)
				return -EIO;
			nbytes += before - ql - 4 + 1;
			memcpy(&rank, q + 4, 4);
			if (rank > ANES_MAX_RANK)
				return -EIO;
			q += WDESC_BYTES;
			ql -= WDESC_BYTES;
		}
		nt += ni + no + ns;
	}
	anes_function_info *fns = nf ? calloc(nf, sizeof(*fns)) : NULL;
	anes_tensor_desc *ts = nt ? calloc(nt, sizeof(*ts)) : NULL;
	char *names = malloc(nbytes ? nbytes : 1), *np = names;
	if ((nf && !fns) || (nt && !ts) || !names) {
		free(fns);
		free(ts);
		free(names);
		return -ENOMEM;
	}
	/* Second pass: the lengths were checked. */
	const uint8_t *b = (const uint8_t *)pd->payload + 12;
	size_t left = pd->len - 12;
	anes_tensor_desc *t = ts;
	for (uint32_t f = 0; f < nf; f++) {
		(void)take_wname(&b, &left, &np, &fns[f].name);
		memcpy(&fns[f].n_inputs, b, 4);
		memcpy(&fns[f].n_outputs, b + 4, 4);
		memcpy(&fns[f].n_states, b + 8, 4);
		b += 12;
		left -= 12;
		fns[f].inputs = t;
		fns[f].outputs = t + fns[f].n_inputs;
		fns[f].states = t + fns[f].n_inputs + fns[f].n_outputs;
		for (uint32_t i = 0; i < fns[f].n_inputs + fns[f].n_outputs + fns[f].n_states; i++, t++) {
			uint32_t dt;
			(void)take_wname(&b, &left, &np, &t->name);
			memcpy(&dt, b, 4);
			t->dtype = (anes_dtype)dt;
			memcpy(&t->rank, b + 4, 4);
			memcpy(t->shape, b + 8, 8 * ANES_MAX_RANK);
			memcpy(&t->bytes, b + 8 + 8 * ANES_MAX_RANK, 8);
			b += WDESC_BYTES;
			left -= WDESC_BYTES;
		}
	}
	pp->fns = fns;
	pp->tensors = ts;
	pp->names = names;
	pp->base.n_functions = nf;
	pp->base.functions = fns;
	return 0;
}

/* Whether pp must be compiled again in s (and is not being compiled now). */
static bool needs_restore(const wslot *s, const pprog *pp)
{
	return !pp->busy && ((pp->slot == s && pp->gen != s->gen) ||
	                     (pp->move == s && pp->move_gen != s->gen));
}

/* Programs s must still compile again (m held). */
static uint64_t to_restore(const wproxy *p, const wslot *s)
{
	uint64_t n = 0;
	for (const pprog *pp = p->progs; pp; pp = pp->next)
		n += needs_restore(s, pp);
	return n;
}

/* A worker up, not retiring, whose budget leaves room for one more
 * compile after the recompiles it still owes. */
static bool has_room(const wproxy *p, const wslot *s)
{
	return s->state == ST_UP && !s->retiring && !s->spent &&
	       (!p->budget || s->compiles + (s->restoring ? to_restore(p, s) : 0) < p->budget);
}

static wslot *idle_slot(wproxy *p)
{
	for (unsigned i = 0; i < p->n_slots; i++)
		if (p->slots[i].state == ST_IDLE && !p->slots[i].wanted)
			return &p->slots[i];
	return NULL;
}

/* Replace s: a fresh worker in t compiles s's programs while s keeps
 * running them, then takes them over (m held). */
static void replace(wproxy *p, wslot *s, wslot *t)
{
	s->retiring = true;
	t->replacement = true;
	for (pprog *pp = p->progs; pp; pp = pp->next) {
		if (pp->slot == s && !pp->move) {
			pp->move = t;
			pp->move_remote = 0;
			pp->move_gen = 0;
		}
	}
	anes_log("device worker pid %ld: compile budget %s (%llu compiles); a new worker takes over "
	         "its %u programs",
	         (long)s->pid, s->spent ? "spent (a compile failed in the framework)" : "used up",
	         (unsigned long long)s->compiles, s->live);
	maybe_drain(s);
	want(p, t);
}

/* Find the worker for a new program (m held).  0 with *ret set: up, with
 * room.  1: something changed or was started; wait and ask again.  -errno
 * with errbuf set. */
static int choose(wproxy *p, wslot **ret, char *errbuf, size_t errlen)
{
	wslot *best = NULL;
	unsigned active = 0, up = 0;
	bool starting = false;
	for (unsigned i = 0; i < p->n_slots; i++) {
		wslot *s = &p->slots[i];
		if (s->wanted && !s->retiring)
			active++;
		if (s->state == ST_UP)
			up++;
		if (s->state == ST_STARTING && !s->retiring)
			starting = true;
		if (has_room(p, s) && (!best || s->live < best->live))
			best = s;
	}
	if (best) {
		*ret = best;
		return 0;
	}
	if (starting)
		return 1;
	/* Starting one failed a moment ago: say so rather than try again at
	 * once (the next compile tries again). */
	if (p->start_fail_ms && real_ms() - p->start_fail_ms < 10 * BACKOFF_MIN_MS) {
		snprintf(errbuf, errlen, "a new device worker did not start (%s); retry", p->start_fail);
		return -ECONNRESET;
	}
	if (active < p->max_workers) {
		wslot *t = idle_slot(p);
		if (t)
			want(p, t);
		return 1;   /* (without an idle slot: a retiring worker still stops) */
	}
	/* Every worker's budget is spent: replace the one with the fewest
	 * programs, if the programs it holds leave room in a fresh one. */
	wslot *victim = NULL;
	for (unsigned i = 0; i < p->n_slots; i++) {
		wslot *s = &p->slots[i];
		if (s->state == ST_UP && !s->retiring && (!p->budget || s->live + 1 <= p->budget) &&
		    (!victim || s->live < victim->live))
			victim = s;
	}
	if (victim) {
		wslot *t = idle_slot(p);
		if (t)
			replace(p, victim, t);
		return 1;
	}
	for (unsigned i = 0; i < p->n_slots; i++)
		if (p->slots[i].state == ST_STARTING)
			return 1;
	if (up == 0) {
		snprintf(errbuf, errlen, "no device worker is running; one is being started (retry)");
		return -ECONNRESET;
	}
	snprintf(errbuf, errlen,
	         "%llu programs in use fill the compile budgets of all %u device workers (%u compiles each)",
	         (unsigned long long)p->n_progs, p->max_workers, p->budget);
	return -ENOSPC;
}

static void pprog_free(pprog *pp)
{
	for (unsigned i = 0; i < pp->nfds; i++)
		close(pp->fds[i]);
	free(pp->fns);
	free(pp->tensors);
	free(pp->names);
	free(pp->req);
	free(pp);
}

static void link_prog(wproxy *p, pprog *pp)
{
	pp->prev = NULL;
	pp->next = p->progs;
	if (p->progs)
		p->progs->prev = pp;
	p->progs = pp;
	p->n_progs++;
}

static void unlink_prog(wproxy *p, pprog *pp)
{
	if (pp->prev)
		pp->prev->next = pp->next;
	else
		p->progs = pp->next;
	if (pp->next)
		pp->next->prev = pp->prev;
	pp->prev = pp->next = NULL;
	p->n_progs--;
}

static void px_program_free(anes_backend *b, anes_bprogram *prog);

/* The weights of a compile as the worker gets them (docs/worker.md): every
 * weight is a place {fd index, offset, len} in a file passed with the
 * COMPILE.  A weight the daemon has as a file that cannot change
 * (anes_weight.has_fd) goes as a duplicate of that fd; the others (inline
 * weights, or past the fd slots) are copied once into one read-only file of
 * the proxy's own (anes_rofile_*), which takes the last slot.  The fds stay
 * with the program for recompiles; the bytes never cross the socket. */
typedef struct wplace {
	uint32_t fd_index;
	uint64_t off;
} wplace;

static int weight_files(pprog *pp, const anes_weight *weights, size_t n, wplace *pl, char *errbuf,
                        size_t errbuf_len)
{
	uint64_t own = 0;   /* bytes of the proxy's own file */
	bool owned = false; /* some weight goes in it (maybe only empty ones) */
	int src[ANES_WMSG_MAX_FDS];
	unsigned nsrc = 0;
	int r = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned k = 0;
		if (weights[i].kept && weights[i].has_fd && weights[i].fd >= 0) {
			while (k < nsrc && src[k] != weights[i].fd)
				k++;
			if (k == nsrc && nsrc < ANES_WMSG_MAX_FDS - 1)
				src[nsrc++] = weights[i].fd;
		}
		if (k < nsrc) {
			pl[i] = (wplace){ k, 0 };
			continue;
		}
		pl[i] = (wplace){ UINT32_MAX, own };
		own += ((uint64_t)weights[i].len + 63) & ~(uint64_t)63;
		owned = true;
	}
	for (unsigned k = 0; k < nsrc; k++) {
		pp->fds[k] = fcntl(src[k], F_DUPFD_CLOEXEC, 3);
		if (pp->fds[k] < 0) {
			r = -errno;
			snprintf(errbuf, errbuf_len, "keeping a weight file for the device worker: %s",
			         strerror(-r));
			return r == -EMFILE || r == -ENFILE ? -ENOMEM : r;
		}
		pp->nfds = k + 1;
	}
	if (!owned)
		return 0;
	/* empty weights only: a file of 64 bytes, so that they have a file to
	 * name (the worker maps every file, and an empty one cannot be mapped) */
	int fd = -1;
	r = anes_rofile_create("aneshare-weights", own ? own : 64, &fd);
	for (size_t i = 0; i < n && r == 0; i++)
		if (pl[i].fd_index == UINT32_MAX) {
			pl[i].fd_index = nsrc;
			if (weights[i].len)
				r = anes_rofile_write(fd, pl[i].off, weights[i].data, weights[i].len);
		}
	if (r == 0)
		r = anes_rofile_seal(fd);
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		snprintf(errbuf, errbuf_len, "copying the weights for the device worker: %s", strerror(-r));
		return r == -EINVAL || r == -EBADMSG ? -EIO : -ENOMEM;
	}
	pp->fds[pp->nfds++] = fd;
	return 0;
}

static int px_compile(anes_backend *b, const char *mil, size_t mil_len, const anes_weight *weights,
                      size_t n_weights, anes_bprogram **ret_prog, char *errbuf, size_t errbuf_len)
{
	wproxy *p = P(b);
	if (errbuf_len > 0)
		errbuf[0] = '\0';
	if (n_weights > ANES_WMSG_MAX_WEIGHTS)
		return -EINVAL;
	size_t len = 12 + mil_len;
	uint64_t wbytes = 0;
	for (size_t i = 0; i < n_weights; i++) {
		len += 24 + strlen(weights[i].path) + 1;
		wbytes += weights[i].len;
	}
	if (mil_len > ANES_WMSG_MAX || len > ANES_WMSG_MAX) {
		snprintf(errbuf, errbuf_len, "the MIL text is too large for the device worker (at most %u bytes)",
		         ANES_WMSG_MAX);
		return -EINVAL;
	}
	pprog *pp = calloc(1, sizeof(*pp));
	uint8_t *req = malloc(len);
	wplace *pl = n_weights ? calloc(n_weights, sizeof(*pl)) : NULL;
	if (!pp || !req || (n_weights && !pl)) {
		free(pp);
		free(req);
		free(pl);
		return -ENOMEM;
	}
	int r = weight_files(pp, weights, n_weights, pl, errbuf, errbuf_len);
	if (r < 0) {
		free(req);
		free(pl);
		pprog_free(pp);
		return r;
	}
	uint8_t *q = req;
	uint32_t ml = (uint32_t)mil_len, nw = (uint32_t)n_weights, nf = pp->nfds;
	memcpy(q, &ml, 4);
	memcpy(q + 4, &nw, 4);
	memcpy(q + 8, &nf, 4);
	q += 12;
	memcpy(q, mil, mil_len);
	q += mil_len;
	for (size_t i = 0; i < n_weights; i++) {
		uint32_t plen = (uint32_t)strlen(weights[i].path) + 1;
		uint64_t wl = weights[i].len;
		memcpy(q, &plen, 4);
		memcpy(q + 4, &pl[i].fd_index, 4);
		memcpy(q + 8, &pl[i].off, 8);
		memcpy(q + 16, &wl, 8);
		q += 24;
		memcpy(q, weights[i].path, plen);
		q += plen;
	}
	free(pl);
	for (size_t i = 0; i < mil_len; i++)
		pp->statements += mil[i] == ';';
	pp->weight_bytes = wbytes;
	pp->req = req;
	pp->req_len = len;
	pp->base.backend = b;

	/* A worker with room, its send_m and m held. */
	wslot *s;
	bool waited = false;
	for (;;) {
		pthread_mutex_lock(&p->m);
		for (;;) {
			if (p->closing) {
				r = -ECANCELED;
				break;
			}
			r = choose(p, &s, errbuf, errbuf_len);
			if (r <= 0)
				break;
			if (!waited) {
				waited = true;   /* for a worker to start: no client's doing */
				anes_pool_wait_begin();
			}
			pthread_cond_wait(&p->cond, &p->m);
		}
		pthread_mutex_unlock(&p->m);
		if (waited) {
			waited = false;
			anes_pool_wait_end();
		}
		if (r < 0) {
			pprog_free(pp);
			return r;
		}
		pthread_mutex_lock(&s->send_m);
		pthread_mutex_lock(&p->m);
		if (has_room(p, s) && !p->closing)
			break;
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&s->send_m);
	}

	pending pd = { .prog = pp };
	pend_add(s, &pd, anes_wd_compile_ms(p->compile_floor_ms, pp->statements, pp->weight_bytes));
	s->compiles++;
	uint64_t gen = s->gen;
	int fd = s->fd;
	pthread_mutex_unlock(&p->m);
	struct iovec v = { pp->req, pp->req_len };
	r = anes_wmsg_send_fds(fd, ANES_WM_COMPILE, pd.id, &v, 1, pp->fds, pp->nfds);
	if (r < 0 && anes_wmsg_unsent(r)) {
		/* Nothing went (the kernel refused the fds): this compile fails,
		 * the worker is fine. */
		pthread_mutex_lock(&p->m);
		pend_remove(s, &pd);
		if (s->gen == gen)
			s->compiles--;
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&s->send_m);
		pthread_cond_destroy(&pd.cond);
		snprintf(errbuf, errbuf_len, "the weight files could not be passed to the device worker: %s",
		         strerror(-r));
		pprog_free(pp);
		return r == -ENOMEM ? r : -EMFILE;
	}
	if (r < 0)
		write_failed(s);
	pthread_mutex_unlock(&s->send_m);
	wait_reply(p, &pd);
	if (pd.rc < 0) {
		lost(errbuf, errbuf_len, "compile");
		free(pd.payload);
		pprog_free(pp);
		return pd.rc;
	}
	r = parse_rc(pd.payload, pd.len, errbuf, errbuf_len);
	int counts = anes_compile_counts(r);
	pthread_mutex_lock(&p->m);
	if (s->gen == gen) {
		if (counts == ANES_COMPILE_NOT_COUNTED)
			s->compiles--;
		else if (counts == ANES_COMPILE_SPENT)
			s->spent = true;
	}
	pthread_mutex_unlock(&p->m);
	if (r < 0) {
		free(pd.payload);
		pprog_free(pp);
		return r;
	}
	/* The supervisor linked it in when the reply came. */
	pthread_mutex_lock(&p->m);
	bool linked = pp->slot != NULL;
	pthread_mutex_unlock(&p->m);
	if (!linked) {
		free(pd.payload);
		pprog_free(pp);
		return -EIO;
	}
	r = parse_compiled(pp, &pd);
	free(pd.payload);
	if (r < 0) {
		px_program_free(b, &pp->base);
		return r;
	}
	/* A first run's deadline goes by its size: weights and tensors. */
	uint64_t io = 0;
	for (uint32_t f = 0; f < pp->base.n_functions; f++) {
		const anes_function_info *fi = &pp->fns[f];
		for (uint32_t i = 0; i < fi->n_inputs; i++)
			io += fi->inputs[i].bytes;
		for (uint32_t i = 0; i < fi->n_outputs; i++)
			io += fi->outputs[i].bytes;
		for (uint32_t i = 0; i < fi->n_states; i++)
			io += fi->states[i].bytes;
	}
	pthread_mutex_lock(&p->m);
	pp->run_bytes = pp->weight_bytes + io;
	pthread_mutex_unlock(&p->m);
	*ret_prog = &pp->base;
	return 0;
}

/* Lock the send_m of pp's worker, then m, with pp->slot stable. */
static wslot *lock_prog_slot(wproxy *p, pprog *pp)
{
	for (;;) {
		pthread_mutex_lock(&p->m);
		wslot *s = pp->slot;
		pthread_mutex_unlock(&p->m);
		pthread_mutex_lock(&s->send_m);
		pthread_mutex_lock(&p->m);
		if (pp->slot == s)
			return s;
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&s->send_m);
	}
}

static void px_program_free(anes_backend *b, anes_bprogram *prog)
{
	wproxy *p = P(b);
	if (!prog)
		return;
	pprog *pp = (pprog *)(void *)prog;
	wslot *s = lock_prog_slot(p, pp);
	unlink_prog(p, pp);
	s->live--;
	pthread_cond_broadcast(&p->cond);
	wslot *t = pp->move;
	uint64_t t_remote = pp->move_remote, t_gen = pp->move_gen;
	pp->move = NULL;
	if (pp->busy) {
		pp->freed = true;   /* the supervisor compiling it frees it */
		maybe_drain(s);
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&s->send_m);
		return;
	}
	/* (Also during a restart: send_m keeps the fd valid.) */
	bool drop = pp->gen == s->gen && pp->remote && s->fd >= 0;
	int fd = s->fd;
	pthread_mutex_unlock(&p->m);
	if (drop && anes_wmsg_send(fd, ANES_WM_PROGRAM_FREE, pp->remote, NULL, 0, -1) < 0)
		write_failed(s);
	pthread_mutex_lock(&p->m);
	maybe_drain(s);
	pthread_mutex_unlock(&p->m);
	pthread_mutex_unlock(&s->send_m);
	if (t && t_remote) {
		/* Already compiled in its replacement, not yet taken over. */
		pthread_mutex_lock(&t->send_m);
		pthread_mutex_lock(&p->m);
		drop = t->gen == t_gen && t->fd >= 0;
		fd = t->fd;
		pthread_mutex_unlock(&p->m);
		if (drop && anes_wmsg_send(fd, ANES_WM_PROGRAM_FREE, t_remote, NULL, 0, -1) < 0)
			write_failed(t);
		pthread_mutex_unlock(&t->send_m);
	}
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
	if (n_args > 3 * ANES_MAX_IO)   /* inputs, outputs, states (backend.h) */
		return -EINVAL;

	/* Its worker up, with the program in it: send_m and m held.  A wait
	 * for a restart is no client's doing (anes_pool_wait_begin). */
	wslot *s;
	bool waited = false;
	for (;;) {
		pthread_mutex_lock(&p->m);
		int fail = 0;
		for (;;) {
			s = pp->slot;
			if (p->closing) {
				fail = -ECANCELED;
				break;
			}
			if (pp->broken) {
				snprintf(errbuf, errbuf_len,
				         "the program could not be compiled again in a new device worker");
				fail = -EIO;
				break;
			}
			if (s->state == ST_UP && pp->gen == s->gen)
				break;
			if (s->state == ST_DOWN && !pp->move) {
				snprintf(errbuf, errbuf_len,
				         "the device worker is not running; it is being restarted (retry)");
				fail = -ECONNRESET;
				break;
			}
			pp->first = true;   /* its recompile goes next */
			if (!waited) {
				waited = true;
				anes_pool_wait_begin();
			}
			pthread_cond_wait(&p->cond, &p->m);
		}
		pthread_mutex_unlock(&p->m);
		if (waited) {
			waited = false;
			anes_pool_wait_end();
		}
		if (fail)
			return fail;
		pthread_mutex_lock(&s->send_m);
		pthread_mutex_lock(&p->m);
		if (pp->slot == s && s->state == ST_UP && pp->gen == s->gen && !p->closing)
			break;
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&s->send_m);
	}

	/* Share the surfaces this worker has not seen, then the run. */
	psurf add[3 * ANES_MAX_IO];   /* copies: a surface cannot go while its run is pending */
	uint32_t n_add = 0;
	uint64_t body[2 + 6 * ANES_MAX_IO];
	for (uint32_t i = 0; i < n_args; i++) {
		psurf **slot = surf_slot(p, args[i].key);
		if (!*slot) {
			psurf *ns = calloc(1, sizeof(*ns) + p->n_slots * sizeof(uint64_t));
			if (!ns) {
				pthread_mutex_unlock(&p->m);
				pthread_mutex_unlock(&s->send_m);
				return -ENOMEM;
			}
			ns->key = args[i].key;
			ns->fd = args[i].fd;
			ns->ios_id = args[i].ios_id;
			ns->size = args[i].size;
			*slot = ns;
		}
		psurf *su = *slot;
		if (su->gen[s->idx] != s->gen) {
			su->gen[s->idx] = s->gen;
			add[n_add].key = su->key;
			add[n_add].fd = su->fd;
			add[n_add].ios_id = su->ios_id;
			add[n_add].size = su->size;
			n_add++;
		}
		body[2 + 2 * i] = args[i].key;
		body[3 + 2 * i] = args[i].offset;
	}
	pending pd = { .prog = pp, .run = true };
	pend_add(s, &pd, anes_wd_run_ms(p->run_floor_ms, pp->recent_us, pp->run_bytes));
	int fd = s->fd;
	uint64_t pid = pp->remote;
	pthread_mutex_unlock(&p->m);

	int r = 0;
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
		write_failed(s);
	pthread_mutex_unlock(&s->send_m);
	wait_reply(p, &pd);
	if (pd.rc < 0) {
		free(pd.payload);
		lost(errbuf, errbuf_len, "run");
		return pd.rc;
	}
	r = parse_rc(pd.payload, pd.len, errbuf, errbuf_len);
	note_copies(p, s, pd.payload, pd.len);
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
	pthread_mutex_lock(&p->m);
	psurf **slot = surf_slot(p, key);
	psurf *su = *slot;
	if (su)
		*slot = su->next;
	pthread_mutex_unlock(&p->m);
	if (!su)
		return;
	/* No run uses it any more: drop it from every worker that has it. */
	for (unsigned i = 0; i < p->n_slots; i++) {
		wslot *s = &p->slots[i];
		if (!su->gen[i])
			continue;
		pthread_mutex_lock(&s->send_m);
		pthread_mutex_lock(&p->m);
		bool drop = su->gen[i] == s->gen && s->fd >= 0;
		int fd = s->fd;
		pthread_mutex_unlock(&p->m);
		if (drop && anes_wmsg_send(fd, ANES_WM_SURFACE_DROP, key, NULL, 0, -1) < 0)
			write_failed(s);
		pthread_mutex_unlock(&s->send_m);
	}
	free(su);
}

static bool px_program_ready(anes_backend *b, const anes_bprogram *prog)
{
	wproxy *p = P(b);
	const pprog *pp = (const pprog *)(const void *)prog;
	pthread_mutex_lock(&p->m);
	bool ready = pp->slot && pp->slot->state == ST_UP && pp->gen == pp->slot->gen && !pp->broken;
	pthread_mutex_unlock(&p->m);
	return ready;
}

static void px_worker_info(anes_backend *b, anes_worker_info *ret)
{
	wproxy *p = P(b);
	pthread_mutex_lock(&p->m);
	anes_worker_info wi = {
		.restarts = p->restarts,
		.compile_budget = p->budget,
		.recompiles = p->recompiles,
		.backend = p->worker_backend,
		.max_workers = p->max_workers,
		.programs = p->n_progs,
		.watchdog_kills = p->watchdog_kills,
		.run_floor_ms = p->run_floor_ms,
		.compile_floor_ms = p->compile_floor_ms,
		.threads = p->threads,
	};
	for (unsigned i = 0; i < p->n_slots; i++) {
		const wslot *s = &p->slots[i];
		if (s->state != ST_UP || s->retiring)
			continue;
		if (!wi.pid)
			wi.pid = s->pid;
		wi.workers++;
		wi.compiles += s->compiles;
		if (s->restoring)
			wi.restoring += to_restore(p, s) + (s->restore_pd != NULL);
	}
	pthread_mutex_unlock(&p->m);
	*ret = wi;
}

/* ---- the supervisor ---------------------------------------------------------------------- */

static void watchdog_kill(wslot *s, const char *what, uint64_t allowed_ms)
{
	wproxy *p = s->p;
	if (s->hung || s->pid <= 0)
		return;
	s->hung = true;
	p->watchdog_kills++;
	anes_log("error: device worker pid %ld did not answer a %s within %llu ms; killing it",
	         (long)s->pid, what, (unsigned long long)allowed_ms);
	kill(s->pid, SIGKILL);
}

/* Send the next recompile s owes (its programs after a crash, and those it
 * takes over from a worker it replaces), the ones a run waits for first,
 * unless one is in flight; at the end, log the restart.  The reply comes
 * through deliver (restore_done). */
static void restore_next(wslot *s)
{
	wproxy *p = s->p;
	pthread_mutex_lock(&s->send_m);
	pthread_mutex_lock(&p->m);
	if (!s->restoring || s->restore_pd || s->state != ST_UP || p->closing) {
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&s->send_m);
		return;
	}
	pprog *pick = NULL;
	for (pprog *pp = p->progs; pp; pp = pp->next) {
		if (!needs_restore(s, pp))
			continue;
		if (!pick || (pp->first && !pick->first))
			pick = pp;
		if (pick->first)
			break;
	}
	pending *pd = pick ? calloc(1, sizeof(*pd)) : NULL;
	if (!pd) {
		if (pick) {
			/* Out of memory: try again at the next tick. */
			pthread_mutex_unlock(&p->m);
			pthread_mutex_unlock(&s->send_m);
			return;
		}
		s->restoring = false;
		if (s->replacement)
			anes_log("device worker pid %ld: %llu programs compiled again in %llu ms",
			         (long)s->pid, (unsigned long long)(p->recompiles - s->restore_rc0),
			         (unsigned long long)(real_ms() - s->restore_t0));
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&s->send_m);
		return;
	}
	pick->busy = true;
	pick->first = false;
	pd->prog = pick;
	pd->restore = true;
	pend_add(s, pd, anes_wd_compile_ms(p->compile_floor_ms, pick->statements, pick->weight_bytes));
	s->restore_pd = pd;
	s->compiles++;
	p->recompiles++;
	uint64_t id = pd->id;
	int fd = s->fd;
	pthread_mutex_unlock(&p->m);
	struct iovec v = { pick->req, pick->req_len };
	int r = anes_wmsg_send_fds(fd, ANES_WM_COMPILE, id, &v, 1, pick->fds, pick->nfds);
	if (r < 0 && anes_wmsg_unsent(r)) {
		/* Nothing went (the kernel refused the fds): tried again at the
		 * next turn of the supervisor. */
		pthread_mutex_lock(&p->m);
		pend_remove(s, pd);
		s->restore_pd = NULL;
		s->compiles--;
		p->recompiles--;
		pick->busy = false;
		pprog *gone = pick->freed ? pick : NULL;
		pthread_mutex_unlock(&p->m);
		pthread_cond_destroy(&pd->cond);
		free(pd);
		if (gone)
			pprog_free(gone);
	} else if (r < 0) {
		write_failed(s);
	}
	pthread_mutex_unlock(&s->send_m);
}

/* The programs compiled in s for the worker it replaces now run in s
 * (m held). *//* The programs compiled in s for the worker it replaces now run in s
 * (m held). */
static void take_over(wslot *s, pprog *pp)
{
	wslot *old = pp->slot;
	old->live--;
	pp->slot = s;
	s->live++;
	pp->remote = pp->move_remote;
	pp->gen = s->gen;
	pp->move = NULL;
	pp->broken = false;
	maybe_drain(old);
}

/* The reply to a recompile (m held, pd off s->pend): the program runs in s
 * from now on, or stays where it is, or is broken.  Returns a program to
 * free (it was released meanwhile), with *ret_drop set when its copy in s
 * must be freed there too. */
static pprog *restore_done(wslot *s, pending *pd, const anes_wmsg_hdr *h, const void *payload,
                           bool *ret_drop)
{
	pprog *pp = pd->prog;
	char err[256] = "";
	int rc = h->type == ANES_WM_COMPILED ? parse_rc(payload, h->len, err, sizeof err) : -EBADMSG;
	s->restore_pd = NULL;
	if (anes_compile_counts(rc) == ANES_COMPILE_SPENT)
		s->spent = true;
	pp->busy = false;
	if (rc < 0)
		anes_log("error: device worker: compiling a program again failed: %s",
		         err[0] ? err : strerror(-rc));
	*ret_drop = false;
	if (pp->freed) {
		*ret_drop = rc == 0;
		return pp;
	}
	if (pp->move == s) {
		if (rc == 0) {
			pp->move_remote = pd->id;
			pp->move_gen = s->gen;
			take_over(s, pp);
		} else {
			pp->move = NULL;   /* stays where it runs now */
		}
	} else if (pp->slot == s) {
		pp->gen = s->gen;
		pp->remote = rc == 0 ? pd->id : 0;
		pp->broken = rc < 0;
	}
	pthread_cond_broadcast(&s->p->cond);
	return NULL;
}

static void deliver(wslot *s, const anes_wmsg_hdr *h, void *payload)
{
	wproxy *p = s->p;
	pthread_mutex_lock(&p->m);
	for (pending *pd = s->pend; pd; pd = pd->next) {
		if (pd->id != h->id)
			continue;
		pend_remove(s, pd);
		if (pd->restore) {
			bool drop;
			pprog *gone = restore_done(s, pd, h, payload, &drop);
			pthread_mutex_unlock(&p->m);
			pthread_cond_destroy(&pd->cond);
			free(pd);
			free(payload);
			if (gone) {
				if (drop) {
					pthread_mutex_lock(&s->send_m);
					if (s->fd >= 0 && anes_wmsg_send(s->fd, ANES_WM_PROGRAM_FREE, h->id, NULL, 0, -1) < 0)
						write_failed(s);
					pthread_mutex_unlock(&s->send_m);
				}
				pprog_free(gone);
			}
			return;
		}
		if (pd->prog && !pd->run && h->type == ANES_WM_COMPILED &&
		    parse_rc(payload, h->len, NULL, 0) == 0) {
			/* A new program: in the list before anything else can
			 * restart this worker, so that a restart compiles it again. */
			pprog *pp = pd->prog;
			pp->slot = s;
			pp->gen = s->gen;
			pp->remote = pd->id;
			s->live++;
			link_prog(p, pp);
		} else if (pd->run && h->type == ANES_WM_RAN) {
			uint64_t us = (anes_clock_ns() - pd->sent_ns) / 1000u;
			pd->prog->recent_us = anes_wd_recent_us(pd->prog->recent_us, us);
		}
		pd->payload = payload;
		pd->len = h->len;
		pd->done = true;
		pthread_cond_signal(&pd->cond);
		pthread_mutex_unlock(&p->m);
		return;
	}
	pthread_mutex_unlock(&p->m);
	free(payload);
}

/* Kill the worker of s if a call to it is past its deadline (m held). */
static void check_deadlines(wslot *s)
{
	uint64_t now = anes_clock_ns();
	for (pending *pd = s->pend; pd; pd = pd->next) {
		if (now >= pd->deadline_ns) {
			if (pd->run && !s->hung)
				pd->prog->recent_us = anes_wd_killed_us(pd->prog->recent_us,
				                                        (now - pd->sent_ns) / 1000u);
			watchdog_kill(s, pd->run ? "run" : "compile",
			              (pd->deadline_ns - pd->sent_ns) / 1000000u);
			return;
		}
	}
}

/* The worker's socket reached EOF (or broke): fail what waits on it, close
 * it and reap the process. */
static void worker_gone(wslot *s, uint64_t lived_ms)
{
	wproxy *p = s->p;
	pthread_mutex_lock(&s->send_m);
	pthread_mutex_lock(&p->m);
	bool planned = s->draining && !s->hung;
	s->state = ST_STARTING;
	unsigned failed = 0;
	pprog *gone = NULL;
	while (s->pend) {
		pending *pd = s->pend;
		pend_remove(s, pd);
		if (pd->restore) {
			/* Compiled again by the next worker, unless released. */
			pd->prog->busy = false;
			if (pd->prog->freed)
				gone = pd->prog;
			s->restore_pd = NULL;
			pthread_cond_destroy(&pd->cond);
			free(pd);
			continue;
		}
		pd->rc = -ECONNRESET;
		pd->done = true;
		pthread_cond_signal(&pd->cond);
		failed++;
	}
	close(s->fd);
	s->fd = -1;
	pid_t pid = s->pid;
	s->pid = 0;
	bool closing = p->closing;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->m);
	pthread_mutex_unlock(&s->send_m);
	if (gone)
		pprog_free(gone);

	int st;
	reap(pid, planned || closing ? EXIT_GRACE_MS : BACKOFF_MIN_MS, &st);
	char how[96];
	describe_status(st, how, sizeof how);
	if (closing)
		;
	else if (planned && WIFEXITED(st) && WEXITSTATUS(st) == 0)
		anes_log("device worker pid %ld handed its programs over and exited", (long)pid);
	else
		anes_log("error: device worker pid %ld %s after %llu ms; %u calls in flight failed with "
		         "worker_restarted",
		         (long)pid, how, (unsigned long long)lived_ms, failed);
}

/* After its worker ended: does s need another one? (m held) */
static bool still_wanted(wproxy *p, wslot *s)
{
	for (pprog *pp = p->progs; pp; pp = pp->next)
		if (pp->slot == s && !pp->move)
			return true;
	for (unsigned i = 0; i < p->n_slots; i++)
		if (&p->slots[i] != s && p->slots[i].wanted && !p->slots[i].retiring)
			return false;
	return true;   /* the last one: keep a worker running */
}

/* A replacement that could not start: its programs stay where they run. */
static void abandon_moves(wproxy *p, wslot *t)
{
	for (pprog *pp = p->progs; pp; pp = pp->next) {
		if (pp->move != t)
			continue;
		pp->move = NULL;
		wslot *old = pp->slot;
		if (old->retiring) {
			old->retiring = false;
			if (!old->wanted)
				want(p, old);
		}
	}
}

static void backoff_wait(wproxy *p, wslot *s)
{
	/* m held.  A timed wait, cut short by closing. */
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += s->backoff / 1000;
	ts.tv_nsec += (long)(s->backoff % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	while (!p->closing) {
		if (pthread_cond_timedwait(&p->cond, &p->m, &ts) == ETIMEDOUT)
			break;
	}
}

static uint32_t next_backoff(uint32_t b)
{
	return b ? (b * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : b * 2) : BACKOFF_MIN_MS;
}

static void *supervisor(void *arg)
{
	wslot *s = arg;
	wproxy *p = s->p;

	pthread_mutex_lock(&p->m);
	for (;;) {
		while (!s->wanted && !p->closing)
			pthread_cond_wait(&p->cond, &p->m);
		if (p->closing)
			break;
		s->state = ST_STARTING;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->m);

		char err[256] = "";
		int fd = -1;
		pid_t pid = 0;
		uint64_t ts = real_ms();
		int r = spawn_worker(p, &fd, &pid, err, sizeof err);
		pthread_mutex_lock(&s->send_m);
		pthread_mutex_lock(&p->m);
		if (r == 0 && p->closing) {
			shutdown(fd, SHUT_RDWR);
			close(fd);
			pthread_mutex_unlock(&p->m);
			reap(pid, EXIT_GRACE_MS, NULL);
			pthread_mutex_lock(&p->m);
			pthread_mutex_unlock(&s->send_m);
			break;
		}
		if (r < 0) {
			pthread_mutex_unlock(&s->send_m);
			if (!p->started_once) {
				p->start_rc = r;
				snprintf(s->start_err, sizeof s->start_err, "%s", err);
				break;
			}
			snprintf(s->start_err, sizeof s->start_err, "%s", err);
			abandon_moves(p, s);
			if (!still_wanted(p, s) || s->replacement) {
				anes_log("error: %s", err);
				p->start_fail_ms = real_ms();
				snprintf(p->start_fail, sizeof p->start_fail, "%s", err);
				s->wanted = false;
				s->replacement = false;
				s->start_failed = true;
				s->state = ST_IDLE;
				pthread_cond_broadcast(&p->cond);
				continue;
			}
			s->backoff = next_backoff(s->backoff);
			anes_log("error: %s; trying again in %u ms", err, s->backoff);
			s->state = ST_DOWN;
			pthread_cond_broadcast(&p->cond);
			backoff_wait(p, s);
			continue;
		}
		if (p->started_once && s->replacement)
			p->restarts++;
		s->fd = fd;
		s->pid = pid;
		s->gen = ++p->gens;
		s->compiles = 0;
		s->spent = s->hung = s->draining = s->retiring = false;
		/* It serves at once; what it must compile again goes on between
		 * the replies (restore_next). */
		uint64_t t0 = real_ms();
		s->state = ST_UP;
		s->restore_pd = NULL;
		s->restore_t0 = t0;
		s->restore_rc0 = p->recompiles;
		uint64_t owed = to_restore(p, s);
		s->restoring = owed > 0;
		if (p->started_once && s->replacement)
			anes_log("device worker pid %ld started (%s backend, in %llu ms); %llu programs to "
			         "compile again",
			         (long)pid, p->worker_backend, (unsigned long long)(t0 - ts),
			         (unsigned long long)owed);
		else if (p->started_once)
			anes_log("device worker pid %ld started (%s backend): another one for new programs",
			         (long)pid, p->worker_backend);
		p->started_once = true;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&s->send_m);

		r = 0;
		while (r == 0) {
			restore_next(s);
			pthread_mutex_lock(&p->m);
			check_deadlines(s);
			pthread_mutex_unlock(&p->m);
			struct pollfd pf = { .fd = fd, .events = POLLIN };
			int pr = poll(&pf, 1, (int)p->tick_ms);
			if (pr < 0 && errno != EINTR)
				break;
			if (pr <= 0)
				continue;
			anes_wmsg_hdr h;
			void *payload;
			int mfd;
			r = anes_wmsg_recv(fd, &h, &payload, &mfd);
			if (r < 0)
				break;
			if (mfd >= 0)
				close(mfd);
			deliver(s, &h, payload);
		}
		shutdown(fd, SHUT_RDWR);   /* (a broken stream: make the worker exit) */
		if (r < 0 && r != -EPIPE) {
			pthread_mutex_lock(&p->m);
			if (!s->hung && !p->closing)
				kill(pid, SIGKILL);   /* a cut-off or malformed message */
			pthread_mutex_unlock(&p->m);
		}
		uint64_t lived = real_ms() - t0;
		worker_gone(s, lived);

		pthread_mutex_lock(&p->m);
		if (p->closing)
			break;
		bool planned = s->draining;
		s->draining = false;
		s->retiring = false;
		s->replacement = false;
		abandon_moves(p, s);
		if (!still_wanted(p, s)) {
			s->wanted = false;
			s->state = ST_IDLE;
			s->backoff = 0;
			pthread_cond_broadcast(&p->cond);
			continue;
		}
		s->replacement = true;   /* the next one is a restart */
		if (planned || lived >= STABLE_MS) {
			s->backoff = 0;
			continue;
		}
		s->backoff = next_backoff(s->backoff);
		anes_log("device worker: restarting in %u ms (it lived only %llu ms)", s->backoff,
		         (unsigned long long)lived);
		backoff_wait(p, s);
	}
	s->state = ST_CLOSED;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->m);
	return NULL;
}

/* ---- life cycle --------------------------------------------------------------------------- */

static void px_destroy(anes_backend *b)
{
	wproxy *p = P(b);
	if (!p)
		return;
	for (unsigned i = 0; i < p->n_slots; i++) {
		wslot *s = &p->slots[i];
		pthread_mutex_lock(&s->send_m);
		pthread_mutex_lock(&p->m);
		p->closing = true;
		if (s->fd >= 0)
			shutdown(s->fd, SHUT_RDWR);   /* EOF for the worker and the supervisor */
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->m);
		pthread_mutex_unlock(&s->send_m);
	}
	for (unsigned i = 0; i < p->n_slots; i++)
		if (p->slots[i].sup_started)
			pthread_join(p->slots[i].sup, NULL);
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
	for (unsigned i = 0; i < p->n_slots; i++)
		pthread_mutex_destroy(&p->slots[i].send_m);
	pthread_cond_destroy(&p->cond);
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
		.program_ready = px_program_ready,
		.copies = px_copies,
	};
	p->base.ops = &p->ops;
	p->budget = cfg->compile_budget;
	p->threads = cfg->threads ? cfg->threads : 2;
	p->max_workers = cfg->max_workers ? cfg->max_workers : 1;
	if (p->max_workers > MAX_SLOTS - 1)
		p->max_workers = MAX_SLOTS - 1;
	p->n_slots = p->max_workers + 1;
	p->run_floor_ms = cfg->run_floor_ms ? cfg->run_floor_ms : ANES_WD_RUN_FLOOR_MS;
	p->compile_floor_ms = cfg->compile_floor_ms ? cfg->compile_floor_ms : ANES_WD_COMPILE_FLOOR_MS;
	uint64_t fl = p->run_floor_ms < p->compile_floor_ms ? p->run_floor_ms : p->compile_floor_ms;
	p->tick_ms = fl / 4 < 10 ? 10 : fl / 4 > 1000 ? 1000 : fl / 4;
	p->exe = strdup(cfg->exe);
	p->backend = strdup(cfg->backend);
	p->fault = cfg->fault ? strdup(cfg->fault) : NULL;
	pthread_mutex_init(&p->m, NULL);
	pthread_cond_init(&p->cond, NULL);
	for (unsigned i = 0; i < p->n_slots; i++) {
		p->slots[i].p = p;
		p->slots[i].idx = i;
		p->slots[i].fd = -1;
		pthread_mutex_init(&p->slots[i].send_m, NULL);
	}
	snprintf(p->worker_backend, sizeof p->worker_backend, "%s", cfg->backend);
	if (!p->exe || !p->backend || (cfg->fault && !p->fault)) {
		px_destroy(&p->base);
		return -ENOMEM;
	}
	p->ops.name = p->backend;

	wslot *s0 = &p->slots[0];
	pthread_mutex_lock(&p->m);
	want(p, s0);
	while (s0->sup_started && s0->state != ST_UP && s0->state != ST_CLOSED)
		pthread_cond_wait(&p->cond, &p->m);
	int r = s0->state == ST_UP ? 0 : p->start_rc ? p->start_rc : -EIO;
	if (r < 0)
		snprintf(errbuf, errbuf_len, "the device worker did not start: %s", s0->start_err);
	pthread_mutex_unlock(&p->m);
	if (r < 0) {
		px_destroy(&p->base);
		return r;
	}
	*ret = &p->base;
	return 0;
}
