/* SPDX-License-Identifier: MIT */
/*
 * libaneshare: programs (compile, info, release) and runs.
 *
 * A program keeps a copy of its MIL text and what it needs to send its
 * weights again, so that after a daemon restart it can be compiled again
 * (same bytes, so the same key): duplicates of the caller's weight fds, or,
 * for inline weights on Linux, the sealed memfds the library put them in
 * (the daemon maps those in place: one copy of the weights in the system);
 * a malloc'd copy only where memfds cannot be used (macOS, too many blobs).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "internal.h"

static void program_link(aneshare_conn *c, aneshare_program *p)
{
	ANESC_LIST_LINK(c, programs, p);
}

static void tensors_free(aneshare_tensor_info *t, uint32_t n)
{
	if (!t)
		return;
	for (uint32_t i = 0; i < n; i++)
		free((char *)t[i].name);
	free(t);
}

static void functions_free(anesc_function *fns, uint32_t n)
{
	if (!fns)
		return;
	for (uint32_t i = 0; i < n; i++) {
		free(fns[i].name);
		tensors_free(fns[i].inputs, fns[i].n_inputs);
		tensors_free(fns[i].outputs, fns[i].n_outputs);
		tensors_free(fns[i].states, fns[i].n_states);
	}
	free(fns);
}

/* Free a program that is not (or no longer) in its connection's list. */
static void program_free(aneshare_program *p)
{
	functions_free(p->functions, p->n_functions);
	if (p->weights)
		for (size_t i = 0; i < p->n_weights; i++) {
			free(p->weights[i].path);
			free(p->weights[i].data);
		}
	free(p->weights);
	for (size_t i = 0; i < p->n_files; i++) {
		free(p->file_paths[i]);
		if (p->file_fds[i] >= 0)
			close(p->file_fds[i]);
	}
	free(p->file_paths);
	free(p->file_fds);
	free(p->mil);
	free(p);
}

void anesc_program_free_local(aneshare_program *p)
{
	aneshare_conn *c = p->conn;
	for (aneshare_state *st = c->states; st; st = st->next)
		if (st->program == p)
			st->program = NULL;   /* the daemon's state stays usable; it is not made again */
	ANESC_LIST_UNLINK(programs, p);
	program_free(p);
}

/* ---- compile ---------------------------------------------------------------- */

typedef struct compile_result {
	uint32_t id;
	bool cached;
	char key[65];
} compile_result;

static bool is_key(const char *s, uint32_t len)
{
	if (len != 64)
		return false;
	for (uint32_t i = 0; i < len; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

static int compile_cb(aneshare_conn *c, const msgpack_object *res, int *fds, unsigned nfds,
                      void *ud)
{
	compile_result *cr = ud;
	uint32_t id;
	const char *key;
	uint32_t key_len;
	bool cached = false;
	if (anes_mp_u32(res, "id", &id) < 0 || id == 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed compile result from the daemon");
	cr->id = id;   /* known from here on, so the caller can release it */
	if (anes_mp_str(res, "key", 64, &key, &key_len) < 0 || !is_key(key, key_len) ||
	    anes_mp_bool(res, "cached", &cached) == -EINVAL)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed compile result from the daemon");
	memcpy(cr->key, key, 64);
	cr->key[64] = '\0';
	cr->cached = cached;
	return 0;
}

static int dtype_parse(const char *s, uint32_t len, aneshare_dtype *ret_dt, uint64_t *ret_size)
{
	static const struct { const char *name; aneshare_dtype dt; uint64_t size; } t[] = {
		{ "fp16", ANESHARE_FP16, 2 },  { "fp32", ANESHARE_FP32, 4 },
		{ "int32", ANESHARE_INT32, 4 }, { "int16", ANESHARE_INT16, 2 },
		{ "int8", ANESHARE_INT8, 1 },  { "uint8", ANESHARE_UINT8, 1 },
		{ "bool", ANESHARE_BOOL, 1 },
	};
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		if (strlen(t[i].name) == len && memcmp(t[i].name, s, len) == 0) {
			*ret_dt = t[i].dt;
			*ret_size = t[i].size;
			return 0;
		}
	return -EINVAL;
}

static int parse_tensor(const msgpack_object *o, aneshare_tensor_info *t)
{
	if (o->type != MSGPACK_OBJECT_MAP)
		return -EINVAL;
	const char *dts;
	uint32_t dts_len;
	aneshare_dtype dt;
	uint64_t esize, bytes;
	const msgpack_object *dims;
	uint32_t rank;
	if (anes_mp_str(o, "dtype", 16, &dts, &dts_len) < 0 ||
	    dtype_parse(dts, dts_len, &dt, &esize) < 0 ||
	    anes_mp_array(o, "shape", ANESHARE_MAX_RANK, &dims, &rank) < 0 ||
	    anes_mp_u64(o, "bytes", UINT64_MAX, &bytes) < 0)
		return -EINVAL;
	uint64_t prod = esize;
	for (uint32_t i = 0; i < rank; i++) {
		if (dims[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			return -EINVAL;
		uint64_t d = dims[i].via.u64;
		if (d == 0 || prod > UINT64_MAX / d)
			return -EINVAL;
		prod *= d;
		t->shape[i] = d;
	}
	if (prod != bytes)
		return -EINVAL;
	int r = anesc_dup_str(o, "name", ANESC_MAX_NAME, (char **)&t->name);
	if (r < 0)
		return r;
	t->dtype = dt;
	t->rank = rank;
	t->bytes = bytes;
	return 0;
}

static int parse_tensors(const msgpack_object *fn, const char *key, aneshare_tensor_info **ret,
                         uint32_t *ret_n)
{
	const msgpack_object *items;
	uint32_t n;
	int r = anes_mp_array(fn, key, ANESC_MAX_IO, &items, &n);
	if (r < 0)
		return r;
	aneshare_tensor_info *t = calloc(n ? n : 1, sizeof *t);
	if (!t)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		r = parse_tensor(&items[i], &t[i]);
		if (r < 0) {
			tensors_free(t, n);
			return r;
		}
	}
	*ret = t;
	*ret_n = n;
	return 0;
}

typedef struct info_result {
	uint32_t n;
	anesc_function *fns;
} info_result;

static int info_cb(aneshare_conn *c, const msgpack_object *res, int *fds, unsigned nfds,
                   void *ud)
{
	info_result *ir = ud;
	const msgpack_object *items;
	uint32_t n;
	int r = anes_mp_array(res, "functions", ANESC_MAX_FUNCTIONS, &items, &n);
	if (r < 0 || n == 0)
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed program info from the daemon");
	anesc_function *fns = calloc(n, sizeof *fns);
	if (!fns)
		return anesc_fail(c, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < n && r >= 0; i++) {
		if (items[i].type != MSGPACK_OBJECT_MAP) {
			r = -EINVAL;
			break;
		}
		r = anesc_dup_str(&items[i], "name", ANESC_MAX_NAME, &fns[i].name);
		if (r == 0)
			r = parse_tensors(&items[i], "inputs", &fns[i].inputs, &fns[i].n_inputs);
		if (r == 0)
			r = parse_tensors(&items[i], "outputs", &fns[i].outputs, &fns[i].n_outputs);
		if (r == 0 && anes_mp_get(&items[i], "states"))   /* none from an older daemon */
			r = parse_tensors(&items[i], "states", &fns[i].states, &fns[i].n_states);
	}
	if (r < 0) {
		functions_free(fns, n);
		if (r == -ENOMEM)
			return anesc_fail(c, r, "out of memory");
		return anesc_fail(c, -ANESHARE_EPROTOCOL, "malformed program info from the daemon");
	}
	ir->n = n;
	ir->fns = fns;
	return 0;
}

static int pack_compile(aneshare_conn *c, msgpack_packer *pk, void *ud)
{
	(void)c;
	const aneshare_program *p = ud;
	anes_pack_str(pk, "mil");
	anes_pack_str(pk, p->mil);
	if (p->n_weights) {
		anes_pack_str(pk, "weights");
		msgpack_pack_map(pk, p->n_weights);
		for (size_t i = 0; i < p->n_weights; i++) {
			anes_pack_str(pk, p->weights[i].path);
			msgpack_pack_bin(pk, p->weights[i].len);
			msgpack_pack_bin_body(pk, p->weights[i].data, p->weights[i].len);
		}
	}
	if (p->n_files) {
		/* the i-th path names the i-th fd sent with the request */
		anes_pack_str(pk, "weight_fds");
		msgpack_pack_array(pk, p->n_files);
		for (size_t i = 0; i < p->n_files; i++)
			anes_pack_str(pk, p->file_paths[i]);
	}
	return 0;
}

static int compile_req(aneshare_conn *c, aneshare_program *p, compile_result *cr, unsigned flags)
{
	return anesc_request(c, &(anesc_req){ .method = "program.compile",
	                                      .n_params = 1 + (p->n_weights > 0) + (p->n_files > 0),
	                                      .pack = pack_compile, .pack_ud = p, .fd = -1,
	                                      .fds = p->file_fds, .nfds = (unsigned)p->n_files,
	                                      .fn = compile_cb, .fn_ud = cr, .flags = flags });
}

/* A program object holding copies of the MIL text and weights (with
 * empty_only, of the empty weights only), not linked. */
static aneshare_program *program_new(const char *mil, const aneshare_weight *weights,
                                     size_t n_weights, bool empty_only)
{
	aneshare_program *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->mil = strdup(mil);
	p->weights = calloc(n_weights ? n_weights : 1, sizeof *p->weights);
	if (!p->mil || !p->weights) {
		program_free(p);
		return NULL;
	}
	for (size_t i = 0; i < n_weights; i++) {
		if (empty_only && weights[i].len)
			continue;
		anesc_blob *b = &p->weights[p->n_weights++];   /* zeroed entries are freed fine */
		b->path = strdup(weights[i].path);
		b->len = weights[i].len;
		b->data = b->len ? malloc(b->len) : NULL;
		if (!b->path || (b->len && !b->data)) {
			program_free(p);
			return NULL;
		}
		if (b->len)
			memcpy(b->data, weights[i].data, b->len);
	}
	return p;
}

/* The program with its non-empty inline weights in sealed memfds, sent as
 * weight_fds (the empty ones stay inline): the bytes are not copied into
 * the library's memory nor sent on the socket, and the daemon maps the
 * memfds in place.  0 with *ret NULL where that cannot be done, for the
 * caller to keep a copy and send the bytes inline instead: no non-empty
 * weight, more of them than the daemon takes fds in a frame, or no sealed
 * memfds (macOS: -ENOTSUP; a kernel without memfd_create: -ENOSYS).  Else
 * 0 with *ret, or -errno with the message set (every memfd closed). */
static int program_new_sealed(aneshare_conn *c, const char *mil, const aneshare_weight *weights,
                              size_t n_weights, aneshare_program **ret)
{
	*ret = NULL;
	size_t nf = 0;
	for (size_t i = 0; i < n_weights; i++)
		nf += weights[i].len != 0;
	if (nf == 0 || nf > c->max_fds_per_frame)
		return 0;
	aneshare_program *p = program_new(mil, weights, n_weights, true);
	if (!p)
		return anesc_fail(c, -ENOMEM, "out of memory");
	p->file_paths = calloc(nf, sizeof *p->file_paths);
	p->file_fds = malloc(nf * sizeof *p->file_fds);
	if (!p->file_paths || !p->file_fds) {
		program_free(p);
		return anesc_fail(c, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n_weights; i++) {
		if (!weights[i].len)
			continue;
		size_t k = p->n_files++;   /* program_free closes the fds made so far */
		p->file_fds[k] = -1;
		p->file_paths[k] = strdup(weights[i].path);
		if (!p->file_paths[k]) {
			program_free(p);
			return anesc_fail(c, -ENOMEM, "out of memory");
		}
		int r = aneshare_weight_memfd("aneshare-inline-weight", weights[i].data, weights[i].len,
		                              &p->file_fds[k]);
		if (r == -ENOSYS || r == -ENOTSUP) {
			program_free(p);
			return 0;
		}
		if (r < 0) {
			program_free(p);
			return anesc_fail(c, r, "putting weight %zu in a sealed memfd: %s", i, strerror(-r));
		}
	}
	*ret = p;
	return 0;
}

static int compile_program(aneshare_conn *c, aneshare_program *p, aneshare_program **ret, bool *ret_cached);

ANESHARE_API int aneshare_program_compile(aneshare_conn *c, const char *mil,
                                          const aneshare_weight *weights, size_t n_weights,
                                          aneshare_program **ret, bool *ret_cached)
{
	if (!c || !ret)
		return -EINVAL;
	if (!mil)
		return anesc_fail(c, -EINVAL, "no MIL text");
	if (n_weights > UINT32_MAX || (n_weights && !weights))
		return anesc_fail(c, -EINVAL, "bad weights");
	for (size_t i = 0; i < n_weights; i++)
		if (!weights[i].path || (weights[i].len && !weights[i].data) ||
		    weights[i].len > UINT32_MAX)
			return anesc_fail(c, -EINVAL, "bad weight %zu", i);

	aneshare_program *p;
	int r = program_new_sealed(c, mil, weights, n_weights, &p);
	if (r < 0)
		return r;
	if (!p)
		p = program_new(mil, weights, n_weights, false);
	if (!p)
		return anesc_fail(c, -ENOMEM, "out of memory");
	return compile_program(c, p, ret, ret_cached);
}

/* Compile p (taken in every case), link it and return it. */
static int compile_program(aneshare_conn *c, aneshare_program *p, aneshare_program **ret, bool *ret_cached)
{
	compile_result cr;
	info_result ir;
	int r;
	for (bool again = true;; again = false) {
		cr = (compile_result){ 0 };
		ir = (info_result){ 0 };
		r = compile_req(c, p, &cr, ANESC_IDEMPOTENT);
		if (r < 0)
			break;
		/* The handle is only valid on this connection: if it breaks now,
		 * start over with the compile (once more). */
		r = anesc_request(c, &(anesc_req){ .method = "program.info", .n_params = 1,
		                                   .pack = anesc_pack_id, .pack_ud = &cr.id, .fd = -1,
		                                   .fn = info_cb, .fn_ud = &ir,
		                                   .flags = ANESC_NO_RECONNECT });
		if (!(r == -ANESHARE_EDISCONNECTED && again))
			break;
	}
	if (r < 0) {
		anesc_release_quiet(c, "program.release", cr.id);
		program_free(p);
		return r;
	}
	p->id = cr.id;
	memcpy(p->key, cr.key, sizeof p->key);
	p->n_functions = ir.n;
	p->functions = ir.fns;
	program_link(c, p);
	*ret = p;
	if (ret_cached)
		*ret_cached = cr.cached;
	return 0;
}

ANESHARE_API int aneshare_program_compile_fds(aneshare_conn *c, const char *mil,
                                              const aneshare_weight_fd *files, size_t n_files,
                                              aneshare_program **ret, bool *ret_cached)
{
	if (!c || !ret)
		return -EINVAL;
	if (!mil)
		return anesc_fail(c, -EINVAL, "no MIL text");
	if (n_files > ANES_MAX_FDS_PER_FRAME || (n_files && !files))
		return anesc_fail(c, -EINVAL, "at most %d weight files", ANES_MAX_FDS_PER_FRAME);
	for (size_t i = 0; i < n_files; i++)
		if (!files[i].path || !files[i].path[0] || files[i].fd < 0)
			return anesc_fail(c, -EINVAL, "bad weight file %zu", i);
	aneshare_program *p = program_new(mil, NULL, 0, false);
	if (!p)
		return anesc_fail(c, -ENOMEM, "out of memory");
	p->file_paths = calloc(n_files ? n_files : 1, sizeof *p->file_paths);
	p->file_fds = malloc((n_files ? n_files : 1) * sizeof *p->file_fds);
	if (!p->file_paths || !p->file_fds) {
		program_free(p);
		return anesc_fail(c, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n_files; i++) {
		/* kept for compiling again after a reconnect */
		p->file_paths[i] = strdup(files[i].path);
		p->file_fds[i] = fcntl(files[i].fd, F_DUPFD_CLOEXEC, 3);
		p->n_files = i + 1;
		if (!p->file_paths[i] || p->file_fds[i] < 0) {
			int r = p->file_fds[i] < 0 ? -errno : -ENOMEM;
			program_free(p);
			return anesc_fail(c, r, "keeping weight file %zu: %s", i, strerror(-r));
		}
	}
	return compile_program(c, p, ret, ret_cached);
}

ANESHARE_API int aneshare_weight_memfd(const char *name, const void *data, size_t len, int *ret_fd)
{
	if (!ret_fd || (len && !data))
		return -EINVAL;
#if defined(__linux__) && defined(MFD_ALLOW_SEALING) && defined(F_ADD_SEALS)
	int fd = memfd_create(name ? name : "aneshare-weights", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	const uint8_t *b = data;
	size_t done = 0;
	int r = 0;
	while (done < len) {
		ssize_t n = write(fd, b + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n < 0 ? -errno : -EIO;
			break;
		}
		done += (size_t)n;
	}
	if (r == 0 && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
		r = -errno;
	if (r < 0) {
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
#else
	(void)name;
	return -ENOTSUP;
#endif
}

int anesc_program_restore(aneshare_conn *c, aneshare_program *p)
{
	compile_result cr = { 0 };
	int r = compile_req(c, p, &cr, ANESC_NO_RECONNECT);
	if (c->dead || c->broken)
		return r < 0 ? r : anesc_broken_rc(c);
	if (r == 0 && strcmp(cr.key, p->key) != 0)
		r = anesc_fail(c, -ANESHARE_EPROTOCOL, "the program compiled again has another key");
	if (r < 0) {   /* refused (a lower limit, another backend...): this program is lost */
		anesc_release_quiet(c, "program.release", cr.id);
		p->lost = r;
		p->id = 0;
		return 0;
	}
	p->id = cr.id;
	return 0;
}

ANESHARE_API int aneshare_program_release(aneshare_program *p)
{
	if (!p)
		return 0;
	aneshare_conn *c = p->conn;
	uint32_t id = p->id;
	bool lost = p->lost != 0;
	anesc_program_free_local(p);
	if (lost)
		return 0;   /* the daemon has no such program */
	return anesc_release(c, "program.release", id);
}

ANESHARE_API const char *aneshare_program_key(const aneshare_program *p)
{
	return p ? p->key : "";
}

ANESHARE_API uint32_t aneshare_program_function_count(const aneshare_program *p)
{
	return p ? p->n_functions : 0;
}

ANESHARE_API const char *aneshare_program_function_name(const aneshare_program *p, uint32_t fn)
{
	return p && fn < p->n_functions ? p->functions[fn].name : NULL;
}

ANESHARE_API uint32_t aneshare_program_input_count(const aneshare_program *p, uint32_t fn)
{
	return p && fn < p->n_functions ? p->functions[fn].n_inputs : 0;
}

ANESHARE_API uint32_t aneshare_program_output_count(const aneshare_program *p, uint32_t fn)
{
	return p && fn < p->n_functions ? p->functions[fn].n_outputs : 0;
}

ANESHARE_API const aneshare_tensor_info *aneshare_program_input(const aneshare_program *p,
                                                                uint32_t fn, uint32_t i)
{
	if (!p || fn >= p->n_functions || i >= p->functions[fn].n_inputs)
		return NULL;
	return &p->functions[fn].inputs[i];
}

ANESHARE_API const aneshare_tensor_info *aneshare_program_output(const aneshare_program *p,
                                                                 uint32_t fn, uint32_t i)
{
	if (!p || fn >= p->n_functions || i >= p->functions[fn].n_outputs)
		return NULL;
	return &p->functions[fn].outputs[i];
}
