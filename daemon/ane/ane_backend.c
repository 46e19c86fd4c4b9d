/* SPDX-License-Identifier: MIT */
/*
 * The ANE backend (docs/ane.md).
 *
 * compile:  parse + check the MIL (daemon/mil, ane_check.c), rewrite gelu
 *           (ane_lower.c) and log what public code has not verified, then
 *             NSData(MIL), NSDictionary(weights)
 *             +[_ANEInMemoryModelDescriptor modelWithMILText:weights:optionsPlist:]
 *             +[_ANEInMemoryModel inMemoryModelWithDescriptor:]
 *             -hexStringIdentifier; write model.mil and weights/NAME into
 *                NSTemporaryDirectory()/HEX/
 *             -compileWithQoS:options:error:, -loadWithQoS:options:error:
 *             one IOSurface per input and output, each wrapped by
 *                +[_ANEIOSurfaceObject objectWithIOSurface:]
 *             +[_ANERequest requestWithInputs:inputIndices:outputs:outputIndices:
 *                weightsBuffer:perfStats:procedureIndex:]
 * run:      copy inputs into the input surfaces, -evaluateWithQoS:options:request:error:,
 *           copy outputs out of the output surfaces (one run at a time per program)
 * free:     -unloadWithQoS:error:, release everything, remove the temp directory
 *           when no other program of this backend uses it
 *
 * The backend interface passes plain memory, so the program owns its
 * surfaces and runs copy in and out; handing the daemon's own surfaces to the
 * ANE (zero copy) is a later step (issue 5, point 2).
 *
 * Every call sequence runs inside an autorelease pool; objects kept in the
 * program are retained, and every failure path releases exactly what it took
 * (tests/test_ane.c checks this against a fake runtime that counts objects).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "ane_backend.h"

typedef struct ane_classes {
	anes_id desc, model, request, surface_obj;       /* AppleNeuralEngine */
	anes_id data, string, number, dict, array;       /* Foundation */
	anes_id device_info;                             /* optional */
} ane_classes;

typedef struct ane_sels {
	anes_sel retain, release, utf8, description, responds, has_ane;
	anes_sel dictionary, set_object, data_with_bytes, string_with_utf8, number_with_ull,
	         array_with_objects;
	anes_sel model_with_mil, in_memory_model, hex_id, compile, load, evaluate, unload,
	         object_with_surface, request_with;
} ane_sels;

/* A model's temp directory, TMP/HEX.  Identical programs get the same
 * hexStringIdentifier and so the same directory: it is shared (within this
 * backend by reference count, across processes and backends by marker
 * files, see "temp directories" below) and removed when its last user goes. */
typedef struct ane_dir {
	struct ane_dir *next;
	unsigned refs;
	size_t tlen;                 /* path[0..tlen) is TMP */
	char path[];                 /* TMP/HEX */
} ane_dir;

typedef struct ane_backend {
	anes_backend base;
	const anes_ane_bridge *br;
	ane_classes cls;
	ane_sels sel;
	pthread_mutex_t dirs_lock;
	ane_dir *dirs;
	anes_ane_log_fn log;         /* NULL: stderr */
	void *log_ctx;
	unsigned serial;             /* this backend's number in the process (marker names) */
	atomic_uint_least64_t copies;   /* run arguments copied through own surfaces */
} ane_backend;

typedef struct ane_io {
	uint32_t arg;                /* index into the function's inputs (or outputs) */
	uint64_t bytes;              /* tensor bytes copied per run */
	anes_iosurface surface;      /* +1: the program's own surface, for copies */
	anes_id obj;                 /* retained _ANEIOSurfaceObject of surface */
} ane_io;

typedef struct ane_program {
	anes_bprogram base;          /* first: the daemon sees this */
	anes_mil_program *mil;       /* owns base.functions */
	anes_id model;               /* retained _ANEInMemoryModel, loaded */
	anes_id request;             /* retained _ANERequest */
	anes_id options;             /* retained empty NSDictionary for evaluate */
	anes_id in_idx, out_idx;     /* retained NSArrays @0..@n-1 */
	anes_id proc;                /* retained NSNumber @0 (procedureIndex) */
	ane_dir *dir;
	uint32_t n_in, n_out;
	ane_io *in, *out;            /* in request order (by name, see order_io) */
	size_t in_alloc, out_alloc;  /* IOSurfaceGetAllocSize of the own surfaces of each side */
	pthread_mutex_t run_lock;    /* one run at a time: the own surfaces are shared */
} ane_program;

static const anes_backend_ops ane_ops;
static atomic_uint backend_serial;

static void set_err(char *errbuf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *errbuf, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!errbuf || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(errbuf, len, fmt, ap);
	va_end(ap);
}

/* ---- small Objective-C helpers (all through the bridge) ---- */

static void obj_release(ane_backend *b, anes_id o)
{
	if (o)
		b->br->send_void(o, b->sel.release);   /* - (void)release */
}

static anes_id obj_retain(ane_backend *b, anes_id o)
{
	return b->br->send(o, b->sel.retain);      /* - (id)retain */
}

static anes_id new_dict(ane_backend *b)
{
	return b->br->send(b->cls.dict, b->sel.dictionary);   /* + (id)dictionary, autoreleased */
}

static anes_id new_string(ane_backend *b, const char *s)
{
	return b->br->send_ptr(b->cls.string, b->sel.string_with_utf8, s);
}

static anes_id new_number(ane_backend *b, unsigned long long v)
{
	return b->br->send_ullong(b->cls.number, b->sel.number_with_ull, v);
}

/* dict[key] = value; false (nothing set) if key or value is nil */
static bool dict_set(ane_backend *b, anes_id dict, const char *key, anes_id value)
{
	anes_id k = key ? new_string(b, key) : NULL;
	if (!k || !value)
		return false;
	b->br->send_void_id_id(dict, b->sel.set_object, value, k);   /* -setObject:forKey: */
	return true;
}

/* Copy the text of an NSError into errbuf, behind "ANE WHAT failed: ".  Its
 * -description, which holds the domain, the code and the userInfo
 * ("Error Domain=D Code=N \"...\" UserInfo={...}"): localizedDescription
 * alone loses the code, and is a generic sentence when the framework set no
 * NSLocalizedDescription.  Must run before the pool that holds err is popped. */
static void set_nserror(ane_backend *b, const char *what, anes_id err, char *errbuf, size_t len)
{
	const char *text = NULL;

	if (err) {
		anes_id desc = b->br->send(err, b->sel.description);
		if (desc)
			text = b->br->send_cstr(desc, b->sel.utf8);
	}
	set_err(errbuf, len, "ANE %s failed: %s", what, text ? text : "(no error description)");
}

/* ---- temp directories ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP)
		return rmdir(path) < 0 ? -1 : 0;
	return unlink(path) < 0 ? -1 : 0;
}

static void remove_tree(const char *path)
{
	/* FTW_PHYS: never follow a symlink out of the directory. */
	(void)nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	const char *p = data;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			close(fd);
			return -e;
		}
		p += n;
		len -= (size_t)n;
	}
	if (close(fd) < 0)
		return -errno;
	return 0;
}

static int make_dir(const char *path)
{
	struct stat st;

	if (mkdir(path, 0755) == 0)
		return 0;
	if (errno != EEXIST)
		return -errno;
	/* left over (another process, a crash): reuse it only if it is a real directory */
	if (lstat(path, &st) < 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/* The identifier becomes a path component: accept [0-9A-Za-z_-] only. */
static bool safe_component(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++) {
		char c = s[n];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      c == '_' || c == '-'))
			return false;
	}
	return n > 0 && n <= 200;
}

/* Which model directories are in use, across processes: TMP/HEX is in use
 * while a marker file TMP/.aneshare.PID.SERIAL.HEX exists whose PID is
 * alive (SERIAL tells the backends of one process apart).  Markers and
 * directories are created and removed under flock() of TMP/.aneshare.lock.
 * A worker that crashed leaves its markers and directories behind; the next
 * backend to start removes them (sweep_leftovers).  Directories without a
 * marker are not ours (other programs of the user use the same
 * NSTemporaryDirectory()) and are never touched. */
#define MARK_PREFIX ".aneshare."
#define LOCK_NAME ".aneshare.lock"

static int tmp_lock(const char *tmp, size_t tlen)
{
	char path[3100];
	if (tlen + sizeof LOCK_NAME + 1 > sizeof path)
		return -ENAMETOOLONG;
	snprintf(path, sizeof path, "%.*s/" LOCK_NAME, (int)tlen, tmp);
	int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			int e = errno;
			close(fd);
			return -e;
		}
	}
	return fd;
}

static void tmp_unlock(int fd)
{
	if (fd >= 0)
		close(fd);   /* drops the flock */
}

static bool pid_alive(long pid)
{
	if (pid <= 0 || (long)(pid_t)pid != pid)
		return false;
	return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

/* Parse ".aneshare.PID.SERIAL.HEX"; false if name is not a marker. */
static bool parse_marker(const char *name, long *pid, const char **hex)
{
	if (strncmp(name, MARK_PREFIX, strlen(MARK_PREFIX)) != 0)
		return false;
	const char *p = name + strlen(MARK_PREFIX);
	char *end;
	errno = 0;
	long v = strtol(p, &end, 10);
	if (errno || end == p || *end != '.')
		return false;
	p = end + 1;
	(void)strtoul(p, &end, 10);
	if (end == p || *end != '.' || end[1] == '\0')
		return false;
	*pid = v;
	*hex = end + 1;
	return true;
}

static void marker_path(char *buf, size_t len, const char *tmp, size_t tlen, unsigned serial,
                        const char *hex)
{
	snprintf(buf, len, "%.*s/" MARK_PREFIX "%ld.%u.%s", (int)tlen, tmp, (long)getpid(), serial, hex);
}

/* Whether a live process (this one included) marks TMP/HEX as in use. */
static bool dir_in_use(const char *tmp, size_t tlen, const char *hex)
{
	char path[3100];
	snprintf(path, sizeof path, "%.*s", (int)tlen, tmp);
	DIR *d = opendir(path);
	struct dirent *e;
	bool used = false;
	while (d && !used && (e = readdir(d))) {
		long pid;
		const char *h;
		if (parse_marker(e->d_name, &pid, &h) && strcmp(h, hex) == 0 && pid_alive(pid))
			used = true;
	}
	if (d)
		closedir(d);
	return used;
}

/* Remove the markers of dead processes in TMP and the directories that no
 * live process marks any more.  Best effort: called when a backend starts. */
static void sweep_dir(const char *tmp)
{
	size_t tlen = strlen(tmp);
	while (tlen > 1 && tmp[tlen - 1] == '/')
		tlen--;
	if (tmp[0] != '/' || tlen > 3000)
		return;
	int lk = tmp_lock(tmp, tlen);
	if (lk < 0)
		return;
	char dpath[3100], path[3400];
	snprintf(dpath, sizeof dpath, "%.*s", (int)tlen, tmp);
	DIR *d = opendir(dpath);
	struct dirent *e;
	char **gone = NULL;
	size_t n_gone = 0, cap = 0;
	while (d && (e = readdir(d))) {
		long pid;
		const char *hex;
		if (!parse_marker(e->d_name, &pid, &hex) || pid_alive(pid) || strlen(hex) > 200)
			continue;
		snprintf(path, sizeof path, "%s/%s", dpath, e->d_name);
		if (unlink(path) < 0)
			continue;
		if (n_gone == cap) {
			size_t nc = cap ? 2 * cap : 8;
			char **ng = realloc(gone, nc * sizeof *ng);
			if (!ng)
				break;
			gone = ng;
			cap = nc;
		}
		if (!(gone[n_gone] = strdup(hex)))
			break;
		n_gone++;
	}
	if (d)
		closedir(d);
	for (size_t i = 0; i < n_gone; i++) {
		if (!dir_in_use(tmp, tlen, gone[i])) {
			snprintf(path, sizeof path, "%s/%s", dpath, gone[i]);
			remove_tree(path);
		}
		free(gone[i]);
	}
	free(gone);
	tmp_unlock(lk);
}

/* mkdir -p of the directories in rel (a '/'-separated relative path whose
 * last component is a file), below base. */
static int make_parents(const char *base, const char *rel, char *buf, size_t len)
{
	for (const char *p = strchr(rel, '/'); p; p = strchr(p + 1, '/')) {
		snprintf(buf, len, "%s/%.*s", base, (int)(p - rel), rel);
		int rc = make_dir(buf);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Take a reference to TMP/HEX.  The first user in this backend marks it;
 * unless a live process already marks it (then the files are there and
 * complete: they are written under the lock), it writes model.mil and
 * weights/NAME into a fresh directory. */
static int dir_acquire(ane_backend *b, const char *tmp, const char *hex, const char *mil,
                       size_t mil_len, const anes_weight *weights, size_t n_weights,
                       ane_dir **ret, char *errbuf, size_t errbuf_len)
{
	size_t tlen = strlen(tmp);
	while (tlen > 1 && tmp[tlen - 1] == '/')
		tlen--;
	size_t plen = tlen + 1 + strlen(hex);
	ane_dir *d;
	int rc = 0;

	if (tlen == 0 || plen > 3000) {
		set_err(errbuf, errbuf_len, "ANE temp directory \"%.200s\" is unusable", tmp);
		return -EIO;
	}
	pthread_mutex_lock(&b->dirs_lock);
	for (d = b->dirs; d; d = d->next) {
		if (strlen(d->path) == plen && strncmp(d->path, tmp, tlen) == 0 &&
		    strcmp(d->path + tlen + 1, hex) == 0) {
			d->refs++;
			pthread_mutex_unlock(&b->dirs_lock);
			*ret = d;
			return 0;
		}
	}
	d = malloc(sizeof *d + plen + 1);
	char *file = malloc(plen + 512);
	if (!d || !file) {
		pthread_mutex_unlock(&b->dirs_lock);
		free(d);
		free(file);
		set_err(errbuf, errbuf_len, "out of memory");
		return -ENOMEM;
	}
	snprintf(d->path, plen + 1, "%.*s/%s", (int)tlen, tmp, hex);
	d->refs = 1;
	d->tlen = tlen;

	const char *step = LOCK_NAME;
	bool marked = false;
	int lk = tmp_lock(tmp, tlen);
	rc = lk < 0 ? lk : 0;
	bool shared = rc == 0 && dir_in_use(tmp, tlen, hex);
	if (rc == 0) {
		marker_path(file, plen + 512, tmp, tlen, b->serial, hex);
		step = "its marker";
		int fd = open(file, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
		rc = fd < 0 ? -errno : close(fd) < 0 ? -errno : 0;
		marked = rc == 0;
	}
	if (rc == 0 && !shared) {
		remove_tree(d->path);   /* left by a process that died */
		step = d->path;
		rc = make_dir(d->path);
		if (rc == 0) {
			snprintf(file, plen + 512, "%s/weights", d->path);
			step = "weights";
			rc = make_dir(file);
		}
		if (rc == 0) {
			snprintf(file, plen + 512, "%s/model.mil", d->path);
			step = "model.mil";
			rc = write_file(file, mil, mil_len);
		}
		for (size_t i = 0; rc == 0 && i < n_weights; i++) {
			/* ane_check.c made sure the path is "@model_path/weights/NAME", NAME
			 * plain components separated by '/' */
			const char *rel = weights[i].path + strlen("@model_path/");
			step = rel;
			rc = make_parents(d->path, rel, file, plen + 512);
			if (rc == 0) {
				snprintf(file, plen + 512, "%s/%s", d->path, rel);
				rc = write_file(file, weights[i].data, weights[i].len);
			}
		}
	}
	if (rc < 0) {
		set_err(errbuf, errbuf_len, "cannot write the ANE model files into %s (%s): %s", d->path,
		        step, strerror(-rc));
		if (marked) {
			marker_path(file, plen + 512, tmp, tlen, b->serial, hex);
			unlink(file);
		}
		if (lk >= 0 && !dir_in_use(tmp, tlen, hex))
			remove_tree(d->path);
		tmp_unlock(lk);
		pthread_mutex_unlock(&b->dirs_lock);
		free(d);
		free(file);
		return -EIO;
	}
	tmp_unlock(lk);
	d->next = b->dirs;
	b->dirs = d;
	pthread_mutex_unlock(&b->dirs_lock);
	free(file);
	*ret = d;
	return 0;
}

/* Drop this backend's mark on d and remove the directory unless a live
 * process still marks it.  Called with dirs_lock held. */
static void dir_unmark(ane_backend *b, ane_dir *d)
{
	const char *hex = d->path + d->tlen + 1;
	char mark[3400];
	int lk = tmp_lock(d->path, d->tlen);
	marker_path(mark, sizeof mark, d->path, d->tlen, b->serial, hex);
	unlink(mark);
	if (!dir_in_use(d->path, d->tlen, hex))
		remove_tree(d->path);
	tmp_unlock(lk);
}

static void dir_release(ane_backend *b, ane_dir *d)
{
	if (!d)
		return;
	pthread_mutex_lock(&b->dirs_lock);
	if (--d->refs > 0) {
		pthread_mutex_unlock(&b->dirs_lock);
		return;
	}
	for (ane_dir **pp = &b->dirs; *pp; pp = &(*pp)->next) {
		if (*pp == d) {
			*pp = d->next;
			break;
		}
	}
	dir_unmark(b, d);
	pthread_mutex_unlock(&b->dirs_lock);
	free(d);
}

/* ---- surfaces and the request ---- */

/* Request order: inputs (and outputs) sorted by name.  The public record
 * (Orion, arXiv 2603.06728; libane) reports that the ANE binds multi-input
 * surfaces to the program's inputs in alphabetical order of their names. */
static void order_io(const anes_tensor_desc *descs, uint32_t n, ane_io *io)
{
	for (uint32_t i = 0; i < n; i++) {
		uint32_t j = i;
		while (j > 0 && strcmp(descs[io[j - 1].arg].name, descs[i].name) > 0) {
			io[j] = io[j - 1];
			j--;
		}
		io[j].arg = i;
		io[j].bytes = descs[i].bytes;
		io[j].surface = NULL;
		io[j].obj = NULL;
	}
}

/* One surface size for all inputs (and one for all outputs): the public
 * record reports 0x1d rejections for mixed sizes and for small surfaces. */
static uint64_t surface_bytes(const ane_io *io, uint32_t n)
{
	uint64_t m = ANES_ANE_MIN_SURFACE_BYTES;
	for (uint32_t i = 0; i < n; i++)
		if (io[i].bytes > m)
			m = io[i].bytes;
	return (m + ANES_ANE_ROW_ALIGN - 1) / ANES_ANE_ROW_ALIGN * ANES_ANE_ROW_ALIGN;
}

/* Create the surfaces of io[] (width bytes each) and wrap them: io[i].obj
 * gets a retained _ANEIOSurfaceObject, idx[i] an autoreleased NSNumber i. */
static int make_surfaces(ane_backend *b, ane_io *io, uint32_t n, uint64_t width, anes_id *objs,
                         anes_id *idx, char *errbuf, size_t len)
{
	const anes_ane_bridge *br = b->br;
	/* the flat layout the public projects use (width = bytes, height 1, 1 byte
	 * per element), with bytes per row and alloc size aligned as
	 * IOSurfaceRef.h asks of values a caller computes */
	size_t bpr = br->surface_align(br->key_bytes_per_row, (size_t)width);
	size_t alloc = br->surface_align(br->key_alloc_size, bpr);
	if (bpr < width || alloc < bpr) {
		set_err(errbuf, len, "IOSurfaceAlignProperty gave %zu bytes per row, alloc size %zu for %llu bytes",
		        bpr, alloc, (unsigned long long)width);
		return -EIO;
	}

	for (uint32_t i = 0; i < n; i++) {
		anes_id props = new_dict(b);
		anes_id nwidth = new_number(b, width), nbpr = new_number(b, bpr), nalloc = new_number(b, alloc);
		anes_id one = new_number(b, 1), zero = new_number(b, 0);
		if (!props || !nwidth || !nbpr || !nalloc || !one || !zero) {
			set_err(errbuf, len, "out of memory");
			return -ENOMEM;
		}
		br->send_void_id_id(props, b->sel.set_object, nwidth, br->key_width);
		br->send_void_id_id(props, b->sel.set_object, one, br->key_height);
		br->send_void_id_id(props, b->sel.set_object, one, br->key_bytes_per_element);
		br->send_void_id_id(props, b->sel.set_object, nbpr, br->key_bytes_per_row);
		br->send_void_id_id(props, b->sel.set_object, nalloc, br->key_alloc_size);
		br->send_void_id_id(props, b->sel.set_object, zero, br->key_pixel_format);
		io[i].surface = br->surface_create(props);
		if (!io[i].surface) {
			set_err(errbuf, len, "IOSurfaceCreate (%zu bytes) failed", alloc);
			return -ENOMEM;
		}
		if (br->surface_alloc_size(io[i].surface) < io[i].bytes) {
			set_err(errbuf, len, "IOSurfaceCreate returned %zu bytes, %llu needed",
			        br->surface_alloc_size(io[i].surface), (unsigned long long)io[i].bytes);
			return -EIO;
		}
		/* + (id)objectWithIOSurface:(IOSurfaceRef) */
		objs[i] = br->send_ptr(b->cls.surface_obj, b->sel.object_with_surface, io[i].surface);
		if (!objs[i]) {
			set_err(errbuf, len, "ANE _ANEIOSurfaceObject objectWithIOSurface: returned nil");
			return -EIO;
		}
		io[i].obj = obj_retain(b, objs[i]);
		idx[i] = new_number(b, i);
		if (!idx[i]) {
			set_err(errbuf, len, "out of memory");
			return -ENOMEM;
		}
	}
	return 0;
}

static anes_id new_array(ane_backend *b, const anes_id *objs, uint32_t n)
{
	/* + (id)arrayWithObjects:(const id *)objects count:(NSUInteger)n */
	return b->br->send_ptr_ulong(b->cls.array, b->sel.array_with_objects, objs, n);
}

/* ---- compile ---- */

static void program_release(ane_backend *b, ane_program *p, bool loaded)
{
	const anes_ane_bridge *br = b->br;

	if (p->model || p->request || p->options || p->in_idx || p->out_idx || p->proc ||
	    (p->in && p->n_in && p->in[0].obj) || (p->out && p->n_out && p->out[0].obj)) {
		void *pool = br->pool_push();
		if (loaded) {
			anes_id err = NULL;
			/* - (BOOL)unloadWithQoS:(unsigned)qos error:(NSError **)e; a failure
			 * leaves nothing to do: the model is released either way */
			(void)br->send_bool_u32_err(p->model, b->sel.unload, ANES_ANE_QOS, &err);
		}
		obj_release(b, p->request);
		obj_release(b, p->options);
		obj_release(b, p->in_idx);
		obj_release(b, p->out_idx);
		obj_release(b, p->proc);
		for (uint32_t i = 0; p->in && i < p->n_in; i++)
			obj_release(b, p->in[i].obj);
		for (uint32_t i = 0; p->out && i < p->n_out; i++)
			obj_release(b, p->out[i].obj);
		obj_release(b, p->model);
		br->pool_pop(pool);
	}
	for (uint32_t i = 0; p->in && i < p->n_in; i++)
		if (p->in[i].surface)
			br->cf_release(p->in[i].surface);
	for (uint32_t i = 0; p->out && i < p->n_out; i++)
		if (p->out[i].surface)
			br->cf_release(p->out[i].surface);
	dir_release(b, p->dir);
	anes_mil_program_free(p->mil);
	free(p->in);
	free(p->out);
	pthread_mutex_destroy(&p->run_lock);
	free(p);
}

/* The framework part of compile, inside one autorelease pool.  On failure
 * the caller releases what is recorded in p (model, dir, surfaces). */
static int compile_objc(ane_backend *b, ane_program *p, const char *mil, size_t mil_len,
                        const anes_weight *weights, size_t n_weights, bool *loaded,
                        char *errbuf, size_t len)
{
	const anes_ane_bridge *br = b->br;
	anes_id err;

	/* MIL text as NSData (never NSString: public projects report a crash) */
	anes_id mil_data = br->send_ptr_ulong(b->cls.data, b->sel.data_with_bytes, mil, mil_len);
	/* {"@model_path/weights/NAME": {"offset": 0, "data": NSData}}, empty when none */
	anes_id wdict = new_dict(b);
	if (!mil_data || !wdict)
		goto oom;
	for (size_t i = 0; i < n_weights; i++) {
		anes_id entry = new_dict(b);
		anes_id blob = br->send_ptr_ulong(b->cls.data, b->sel.data_with_bytes, weights[i].data,
		                                  weights[i].len);
		if (!entry || !blob || !dict_set(b, entry, "offset", new_number(b, 0)) ||
		    !dict_set(b, entry, "data", blob) || !dict_set(b, wdict, weights[i].path, entry))
			goto oom;
	}

	anes_id desc = br->send_id3(b->cls.desc, b->sel.model_with_mil, mil_data, wdict, NULL);
	if (!desc) {
		set_err(errbuf, len, "ANE _ANEInMemoryModelDescriptor modelWithMILText:weights:optionsPlist: "
		        "returned nil");
		return -EIO;
	}
	anes_id model = br->send_id(b->cls.model, b->sel.in_memory_model, desc);
	if (!model) {
		set_err(errbuf, len, "ANE _ANEInMemoryModel inMemoryModelWithDescriptor: returned nil");
		return -EIO;
	}
	p->model = obj_retain(b, model);

	/* the framework compiles from NSTemporaryDirectory()/<hexStringIdentifier>/ */
	anes_id hex = br->send(model, b->sel.hex_id);
	const char *hex_c = hex ? br->send_cstr(hex, b->sel.utf8) : NULL;
	if (!hex_c || !safe_component(hex_c)) {
		set_err(errbuf, len, "ANE hexStringIdentifier returned %s%.64s%s", hex_c ? "\"" : "",
		        hex_c ? hex_c : "nil", hex_c ? "\", not a plain file name" : "");
		return -EIO;
	}
	anes_id tmp = br->temporary_directory();
	const char *tmp_c = tmp ? br->send_cstr(tmp, b->sel.utf8) : NULL;
	if (!tmp_c || tmp_c[0] != '/') {
		set_err(errbuf, len, "NSTemporaryDirectory() returned no absolute path");
		return -EIO;
	}
	int rc = dir_acquire(b, tmp_c, hex_c, mil, mil_len, weights, n_weights, &p->dir, errbuf, len);
	if (rc < 0)
		return rc;

	anes_id options = new_dict(b);   /* @{} (public call sites never pass nil) */
	if (!options)
		goto oom;
	err = NULL;
	if (!br->send_bool_u32_id_err(model, b->sel.compile, ANES_ANE_QOS, options, &err)) {
		set_nserror(b, "compile", err, errbuf, len);
		return -EIO;
	}
	err = NULL;
	bool ok = br->send_bool_u32_id_err(model, b->sel.load, ANES_ANE_QOS, options, &err);
	if (!ok) {
		/* Once more after a pause, as maderix/ANE's bridge does: a load can
		 * fail while the device still reclaims the slot of an unloaded model. */
		br->sleep_ms(ANES_ANE_LOAD_RETRY_MS);
		err = NULL;
		ok = br->send_bool_u32_id_err(model, b->sel.load, ANES_ANE_QOS, options, &err);
	}
	if (!ok) {
		set_nserror(b, "load", err, errbuf, len);
		return -EIO;
	}
	*loaded = true;

	/* surfaces and the request, built once per program */
	uint32_t n = p->n_in > p->n_out ? p->n_in : p->n_out;
	anes_id *objs = calloc(4 * (size_t)(n ? n : 1), sizeof *objs);
	if (!objs)
		goto oom;
	anes_id *in_objs = objs, *in_idx = objs + n, *out_objs = objs + 2 * n, *out_idx = objs + 3 * n;
	rc = make_surfaces(b, p->in, p->n_in, surface_bytes(p->in, p->n_in), in_objs, in_idx, errbuf, len);
	if (rc == 0)
		rc = make_surfaces(b, p->out, p->n_out, surface_bytes(p->out, p->n_out), out_objs, out_idx,
		                   errbuf, len);
	if (rc < 0) {
		free(objs);
		return rc;
	}
	anes_id a_in = new_array(b, in_objs, p->n_in), a_in_idx = new_array(b, in_idx, p->n_in);
	anes_id a_out = new_array(b, out_objs, p->n_out), a_out_idx = new_array(b, out_idx, p->n_out);
	anes_id proc = new_number(b, 0);
	free(objs);
	if (!a_in || !a_in_idx || !a_out || !a_out_idx || !proc)
		goto oom;
	/* weightsBuffer and perfStats nil, procedureIndex @0 (one function) */
	anes_id req = br->send_id7(b->cls.request, b->sel.request_with, a_in, a_in_idx, a_out, a_out_idx,
	                           NULL, NULL, proc);
	if (!req) {
		set_err(errbuf, len, "ANE _ANERequest requestWithInputs:inputIndices:outputs:outputIndices:"
		        "weightsBuffer:perfStats:procedureIndex: returned nil");
		return -EIO;
	}
	p->request = obj_retain(b, req);
	p->options = obj_retain(b, options);
	p->in_idx = obj_retain(b, a_in_idx);
	p->out_idx = obj_retain(b, a_out_idx);
	p->proc = obj_retain(b, proc);
	p->in_alloc = p->n_in ? br->surface_alloc_size(p->in[0].surface) : 0;
	p->out_alloc = p->n_out ? br->surface_alloc_size(p->out[0].surface) : 0;
	return 0;

oom:
	set_err(errbuf, len, "out of memory");
	return -ENOMEM;
}

static int ane_compile(anes_backend *base, const char *mil, size_t mil_len, const anes_weight *weights,
                       size_t n_weights, anes_bprogram **ret_prog, char *errbuf, size_t errbuf_len)
{
	ane_backend *b = (ane_backend *)base;
	anes_mil_program *mp = NULL;
	ane_program *p;
	bool loaded = false;
	int rc;

	if (errbuf && errbuf_len)
		errbuf[0] = '\0';
	anes_ane_prepared pr;
	rc = anes_ane_prepare(mil, mil_len, weights, n_weights, &pr, errbuf, errbuf_len);
	if (rc < 0)
		return rc;
	mp = pr.prog;
	if (pr.note[0]) {
		if (b->log)
			b->log(b->log_ctx, pr.note);
		else
			fprintf(stderr, "aneshared: ane: %s\n", pr.note);
	}

	const anes_function_info *fi = &mp->info[0];
	p = calloc(1, sizeof *p);
	if (p) {
		p->mil = mp;
		p->n_in = fi->n_inputs;
		p->n_out = fi->n_outputs;
		p->in = calloc(p->n_in ? p->n_in : 1, sizeof *p->in);
		p->out = calloc(p->n_out ? p->n_out : 1, sizeof *p->out);
	}
	if (!p || !p->in || !p->out || pthread_mutex_init(&p->run_lock, NULL) != 0) {
		if (p) {
			free(p->in);
			free(p->out);
			free(p);
		}
		anes_mil_program_free(mp);
		free(pr.lowered);
		set_err(errbuf, errbuf_len, "out of memory");
		return -ENOMEM;
	}
	order_io(fi->inputs, p->n_in, p->in);
	order_io(fi->outputs, p->n_out, p->out);

	void *pool = b->br->pool_push();
	rc = compile_objc(b, p, pr.text, pr.len, weights, n_weights, &loaded, errbuf, errbuf_len);
	b->br->pool_pop(pool);
	free(pr.lowered);
	if (rc < 0) {
		program_release(b, p, loaded);
		return rc;
	}
	p->base.backend = base;
	p->base.n_functions = mp->n_functions;
	p->base.functions = mp->info;
	*ret_prog = &p->base;
	return 0;
}

/* ---- run ---- */

static int copy_in(ane_backend *b, const ane_io *io, const void *src, char *errbuf, size_t len)
{
	const anes_ane_bridge *br = b->br;
	int kr = br->surface_lock(io->surface, 0, NULL);
	if (kr != 0) {
		set_err(errbuf, len, "IOSurfaceLock failed (kern_return_t 0x%x)", (unsigned)kr);
		return -EIO;
	}
	memcpy(br->surface_base(io->surface), src, io->bytes);
	br->surface_unlock(io->surface, 0, NULL);
	return 0;
}

static int copy_out(ane_backend *b, const ane_io *io, void *dst, char *errbuf, size_t len)
{
	const anes_ane_bridge *br = b->br;
	int kr = br->surface_lock(io->surface, ANES_IOSURFACE_LOCK_READ_ONLY, NULL);
	if (kr != 0) {
		set_err(errbuf, len, "IOSurfaceLock failed (kern_return_t 0x%x)", (unsigned)kr);
		return -EIO;
	}
	memcpy(dst, br->surface_base(io->surface), io->bytes);
	br->surface_unlock(io->surface, ANES_IOSURFACE_LOCK_READ_ONLY, NULL);
	return 0;
}

static int ane_run(anes_backend *base, anes_bprogram *prog, uint32_t fn_index, const void *const *inputs,
                   void *const *outputs, char *errbuf, size_t errbuf_len)
{
	ane_backend *b = (ane_backend *)base;
	ane_program *p = (ane_program *)prog;
	int rc = 0;

	if (fn_index >= p->base.n_functions) {
		set_err(errbuf, errbuf_len, "no function %u", fn_index);
		return -EINVAL;
	}
	pthread_mutex_lock(&p->run_lock);
	for (uint32_t i = 0; rc == 0 && i < p->n_in; i++)
		rc = copy_in(b, &p->in[i], inputs[p->in[i].arg], errbuf, errbuf_len);
	if (rc == 0) {
		void *pool = b->br->pool_push();
		anes_id err = NULL;
		if (!b->br->send_bool_u32_id_id_err(p->model, b->sel.evaluate, ANES_ANE_QOS, p->options,
		                                    p->request, &err)) {
			set_nserror(b, "evaluate", err, errbuf, errbuf_len);
			rc = -EIO;
		}
		b->br->pool_pop(pool);
	}
	for (uint32_t i = 0; rc == 0 && i < p->n_out; i++)
		rc = copy_out(b, &p->out[i], outputs[p->out[i].arg], errbuf, errbuf_len);
	pthread_mutex_unlock(&p->run_lock);
	atomic_fetch_add(&b->copies, (uint64_t)p->n_in + p->n_out);
	return rc;
}

/* ---- run on the caller's IOSurfaces (zero copy) ---- */

/* The surface an argument names, for the alias check: its IOSurfaceID, or
 * the IOSurfaceRef when the ID is not known. */
static uintptr_t surface_ident(const anes_surface_desc *a)
{
	return a->ios_id ? (uintptr_t)a->ios_id : (uintptr_t)a->ios;
}

/* Which arguments of one side (the inputs, or the outputs) go to the device
 * as they are: direct[k] for the k-th surface in request order.  An
 * argument fits when it is an IOSurface, the tensor starts at its first
 * byte, and its alloc size is at least ANES_ANE_MIN_SURFACE_BYTES and the
 * tensor's bytes; an output also must not share its IOSurface with another
 * argument (the device would read what it writes).  All surfaces of a side
 * have one alloc size (the public record reports 0x1d for mixed sizes,
 * docs/ane.md): either every argument fits with the same size, or those
 * whose size is the program's own surfaces' size go as they are and the
 * rest are copied through the program's own surfaces. */
static void plan_side(ane_backend *b, const ane_io *io, uint32_t n, const anes_surface_desc *side,
                      const anes_surface_desc *all, uint32_t n_all, bool outputs, size_t own_alloc,
                      bool *direct)
{
	size_t alloc[ANES_MAX_IO];
	bool fit[ANES_MAX_IO], uniform = n > 0;

	for (uint32_t k = 0; k < n; k++) {
		const anes_surface_desc *a = &side[io[k].arg];
		alloc[k] = a->ios ? b->br->surface_alloc_size((anes_iosurface)a->ios) : 0;
		fit[k] = a->ios && a->offset == 0 && alloc[k] >= ANES_ANE_MIN_SURFACE_BYTES &&
		         alloc[k] >= io[k].bytes;
		for (uint32_t j = 0; fit[k] && outputs && j < n_all; j++)
			if (&all[j] != a && surface_ident(&all[j]) == surface_ident(a))
				fit[k] = false;
		if (!fit[k] || alloc[k] != alloc[0])
			uniform = false;
	}
	for (uint32_t k = 0; k < n; k++)
		direct[k] = fit[k] && (uniform || alloc[k] == own_alloc);
}

/* The request of one run: the caller's surfaces where direct, the
 * program's own elsewhere (autoreleased, in the caller's pool). */
static anes_id run_request(ane_backend *b, ane_program *p, const anes_surface_desc *args,
                           const bool *din, const bool *dout, char *errbuf, size_t len)
{
	const anes_ane_bridge *br = b->br;
	anes_id in[ANES_MAX_IO], out[ANES_MAX_IO];

	for (uint32_t k = 0; k < p->n_in + p->n_out; k++) {
		bool input = k < p->n_in;
		uint32_t i = input ? k : k - p->n_in;
		const ane_io *io = input ? &p->in[i] : &p->out[i];
		bool direct = input ? din[i] : dout[i];
		anes_id o = io->obj;
		if (direct) {
			const anes_surface_desc *a = &args[input ? io->arg : p->n_in + io->arg];
			/* + (id)objectWithIOSurface:(IOSurfaceRef): the caller's own surface */
			o = br->send_ptr(b->cls.surface_obj, b->sel.object_with_surface, a->ios);
			if (!o) {
				set_err(errbuf, len, "ANE _ANEIOSurfaceObject objectWithIOSurface: returned nil");
				return NULL;
			}
		}
		(input ? in : out)[i] = o;
	}
	anes_id a_in = new_array(b, in, p->n_in), a_out = new_array(b, out, p->n_out);
	if (!a_in || !a_out) {
		set_err(errbuf, len, "out of memory");
		return NULL;
	}
	anes_id req = br->send_id7(b->cls.request, b->sel.request_with, a_in, p->in_idx, a_out, p->out_idx,
	                           NULL, NULL, p->proc);
	if (!req)
		set_err(errbuf, len, "ANE _ANERequest requestWithInputs:inputIndices:outputs:outputIndices:"
		        "weightsBuffer:perfStats:procedureIndex: returned nil");
	return req;
}

/* run, given the caller's surfaces (backend.h): an argument that fits the
 * device's layout (plan_side) is handed to it as it is; the others are
 * copied through the program's own surfaces, and counted (copies). */
static int ane_run_surfaces(anes_backend *base, anes_bprogram *prog, uint32_t fn_index,
                            const anes_surface_desc *args, uint32_t n_args, char *errbuf,
                            size_t errbuf_len)
{
	ane_backend *b = (ane_backend *)base;
	ane_program *p = (ane_program *)prog;
	bool din[ANES_MAX_IO], dout[ANES_MAX_IO];
	uint64_t copies = 0;
	int rc = 0;

	if (fn_index >= p->base.n_functions) {
		set_err(errbuf, errbuf_len, "no function %u", fn_index);
		return -EINVAL;
	}
	if (p->base.functions[fn_index].n_states > 0) {
		/* How the framework takes a function's states (Core ML's MLState
		 * buffers) is not in the public record this backend follows
		 * (docs/ane.md): refused rather than guessed. */
		set_err(errbuf, errbuf_len,
		        "the ANE backend does not run functions with states (read_state, "
		        "coreml_update_state): passing states to the framework is not implemented "
		        "(unverified); use the cpu backend");
		return -ENOTSUP;
	}
	if (n_args != p->n_in + p->n_out) {
		set_err(errbuf, errbuf_len, "%u arguments for %u inputs and %u outputs", n_args, p->n_in,
		        p->n_out);
		return -EINVAL;
	}
	for (uint32_t k = 0; k < n_args; k++) {
		const anes_surface_desc *a = &args[k];
		uint64_t bytes = k < p->n_in ? p->base.functions[0].inputs[k].bytes
		                             : p->base.functions[0].outputs[k - p->n_in].bytes;
		if (!a->ptr || a->offset > a->size || bytes > a->size - a->offset) {
			set_err(errbuf, errbuf_len, "argument %u does not hold its %llu bytes", k,
			        (unsigned long long)bytes);
			return -EINVAL;
		}
	}
	plan_side(b, p->in, p->n_in, args, args, n_args, false, p->in_alloc, din);
	plan_side(b, p->out, p->n_out, args + p->n_in, args, n_args, true, p->out_alloc, dout);
	bool any = false;
	for (uint32_t k = 0; k < p->n_in; k++)
		any |= din[k];
	for (uint32_t k = 0; k < p->n_out; k++)
		any |= dout[k];

	pthread_mutex_lock(&p->run_lock);
	for (uint32_t k = 0; rc == 0 && k < p->n_in; k++) {
		if (din[k])
			continue;
		rc = copy_in(b, &p->in[k], args[p->in[k].arg].ptr, errbuf, errbuf_len);
		copies++;
	}
	if (rc == 0) {
		void *pool = b->br->pool_push();
		anes_id req = any ? run_request(b, p, args, din, dout, errbuf, errbuf_len) : p->request;
		anes_id err = NULL;
		if (!req)
			rc = -EIO;
		else if (!b->br->send_bool_u32_id_id_err(p->model, b->sel.evaluate, ANES_ANE_QOS, p->options,
		                                         req, &err)) {
			set_nserror(b, "evaluate", err, errbuf, errbuf_len);
			rc = -EIO;
		}
		b->br->pool_pop(pool);
	}
	for (uint32_t k = 0; rc == 0 && k < p->n_out; k++) {
		if (dout[k])
			continue;
		rc = copy_out(b, &p->out[k], args[p->n_in + p->out[k].arg].ptr, errbuf, errbuf_len);
		copies++;
	}
	pthread_mutex_unlock(&p->run_lock);
	atomic_fetch_add(&b->copies, copies);
	return rc;
}

static uint64_t ane_copies(anes_backend *base)
{
	return atomic_load(&((ane_backend *)base)->copies);
}

static void ane_program_free(anes_backend *base, anes_bprogram *prog)
{
	if (!prog)
		return;
	program_release((ane_backend *)base, (ane_program *)prog, true);
}

static void ane_destroy(anes_backend *base)
{
	ane_backend *b = (ane_backend *)base;

	if (!b)
		return;
	/* all programs are freed first, so no directory is left */
	while (b->dirs) {
		ane_dir *d = b->dirs;
		b->dirs = d->next;
		dir_unmark(b, d);
		free(d);
	}
	pthread_mutex_destroy(&b->dirs_lock);
	free(b);
}

static const anes_backend_ops ane_ops = {
	.name = "ane",
	.compile = ane_compile,
	.run = ane_run,
	.program_free = ane_program_free,
	.destroy = ane_destroy,
	.run_surfaces = ane_run_surfaces,
	.copies = ane_copies,
};

/* ---- creation ---- */

void anes_ane_backend_set_log(anes_backend *base, anes_ane_log_fn fn, void *ctx)
{
	ane_backend *b = (ane_backend *)base;

	b->log = fn;
	b->log_ctx = ctx;
}

int anes_ane_backend_new(const anes_ane_bridge *br, anes_backend **ret, char *errbuf, size_t errbuf_len)
{
	static const struct {
		const char *name;
		size_t off;
	} classes[] = {
		{ "_ANEInMemoryModelDescriptor", offsetof(ane_classes, desc) },
		{ "_ANEInMemoryModel", offsetof(ane_classes, model) },
		{ "_ANERequest", offsetof(ane_classes, request) },
		{ "_ANEIOSurfaceObject", offsetof(ane_classes, surface_obj) },
		{ "NSData", offsetof(ane_classes, data) },
		{ "NSString", offsetof(ane_classes, string) },
		{ "NSNumber", offsetof(ane_classes, number) },
		{ "NSMutableDictionary", offsetof(ane_classes, dict) },
		{ "NSArray", offsetof(ane_classes, array) },
	};
	static const struct {
		const char *name;
		size_t off;
	} sels[] = {
		{ "retain", offsetof(ane_sels, retain) },
		{ "release", offsetof(ane_sels, release) },
		{ "UTF8String", offsetof(ane_sels, utf8) },
		{ "description", offsetof(ane_sels, description) },
		{ "respondsToSelector:", offsetof(ane_sels, responds) },
		{ "hasANE", offsetof(ane_sels, has_ane) },
		{ "dictionary", offsetof(ane_sels, dictionary) },
		{ "setObject:forKey:", offsetof(ane_sels, set_object) },
		{ "dataWithBytes:length:", offsetof(ane_sels, data_with_bytes) },
		{ "stringWithUTF8String:", offsetof(ane_sels, string_with_utf8) },
		{ "numberWithUnsignedLongLong:", offsetof(ane_sels, number_with_ull) },
		{ "arrayWithObjects:count:", offsetof(ane_sels, array_with_objects) },
		{ "modelWithMILText:weights:optionsPlist:", offsetof(ane_sels, model_with_mil) },
		{ "inMemoryModelWithDescriptor:", offsetof(ane_sels, in_memory_model) },
		{ "hexStringIdentifier", offsetof(ane_sels, hex_id) },
		{ "compileWithQoS:options:error:", offsetof(ane_sels, compile) },
		{ "loadWithQoS:options:error:", offsetof(ane_sels, load) },
		{ "evaluateWithQoS:options:request:error:", offsetof(ane_sels, evaluate) },
		{ "unloadWithQoS:error:", offsetof(ane_sels, unload) },
		{ "objectWithIOSurface:", offsetof(ane_sels, object_with_surface) },
		{ "requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:",
		  offsetof(ane_sels, request_with) },
	};
	ane_backend *b;

	if (errbuf && errbuf_len)
		errbuf[0] = '\0';
	b = calloc(1, sizeof *b);
	if (!b || pthread_mutex_init(&b->dirs_lock, NULL) != 0) {
		free(b);
		set_err(errbuf, errbuf_len, "out of memory");
		return -ENOMEM;
	}
	b->base.ops = &ane_ops;
	b->br = br;
	for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++) {
		anes_id c = br->get_class(classes[i].name);
		if (!c) {
			set_err(errbuf, errbuf_len,
			        "no ANE on this machine (Objective-C class %s not found: a macOS without "
			        "the in-memory model API?)",
			        classes[i].name);
			ane_destroy(&b->base);
			return -ENODEV;
		}
		memcpy((char *)&b->cls + classes[i].off, &c, sizeof c);
	}
	for (size_t i = 0; i < sizeof sels / sizeof sels[0]; i++) {
		anes_sel s = br->sel_register(sels[i].name);
		memcpy((char *)&b->sel + sels[i].off, &s, sizeof s);
	}

	b->serial = atomic_fetch_add(&backend_serial, 1);
	/* A worker that crashed left its model directories behind. */
	void *sweep_pool = br->pool_push();
	anes_id tmp = br->temporary_directory();
	const char *tmp_c = tmp ? br->send_cstr(tmp, b->sel.utf8) : NULL;
	if (tmp_c)
		sweep_dir(tmp_c);
	br->pool_pop(sweep_pool);

	/* +[_ANEDeviceInfo hasANE], when the class answers it: the framework is
	 * present on Macs without a Neural Engine too */
	b->cls.device_info = br->get_class("_ANEDeviceInfo");
	if (b->cls.device_info) {
		void *pool = br->pool_push();
		bool none = br->send_bool_sel(b->cls.device_info, b->sel.responds, b->sel.has_ane) &&
		            !br->send_bool(b->cls.device_info, b->sel.has_ane);
		br->pool_pop(pool);
		if (none) {
			set_err(errbuf, errbuf_len, "no ANE on this machine (_ANEDeviceInfo hasANE returned NO)");
			ane_destroy(&b->base);
			return -ENODEV;
		}
	}
	*ret = &b->base;
	return 0;
}
