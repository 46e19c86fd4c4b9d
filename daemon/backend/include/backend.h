/* SPDX-License-Identifier: MIT */
/*
 * The backend interface of aneshared.
 *
 * A backend compiles MIL text (plus named weight blobs) into a program and runs
 * that program's functions on caller-provided memory.  The daemon owns
 * scheduling, surfaces, caching and the wire; a backend only computes.
 *
 * Error convention (the whole code base): functions return 0 (or a count) on
 * success and a negative errno-style code on failure; out-parameters (ret_*)
 * are written only on success.
 *
 *   -EINVAL   the program is invalid (parse, type or shape error)
 *   -ENOTSUP  the program is valid MIL but uses something this backend
 *             cannot run (unknown op, unsupported dtype or argument)
 *   -ENOMEM   out of memory
 *   -EIO      the device failed (ANE backend)
 *   -ECONNRESET  the call was not done because the device worker was lost
 *             (proxy backend, docs/worker.md); it may be made again
 */
#ifndef ANES_BACKEND_H
#define ANES_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "anes_name.h"

#define ANES_MAX_RANK 8          /* highest tensor rank a program may declare */
#define ANES_MAX_IO 64           /* most inputs (or outputs) of one function */
#define ANES_MAX_FUNCTIONS 256   /* most functions in one program (the parser's default limit is 64) */

/* Element types.  The numeric values are part of the wire protocol only through
 * their names (anes_dtype_name), never as numbers. */
typedef enum anes_dtype {
	ANES_DT_FP16 = 1,
	ANES_DT_FP32,
	ANES_DT_INT32,
	ANES_DT_INT16,
	ANES_DT_INT8,
	ANES_DT_UINT8,
	ANES_DT_BOOL,
} anes_dtype;

/* "fp16", "fp32", "int32", "int16", "int8", "uint8", "bool"; NULL if unknown. */
const char *anes_dtype_name(anes_dtype dt);
/* Size in bytes of one element (bool is stored as one byte); 0 if unknown. */
size_t anes_dtype_size(anes_dtype dt);

/* One input or output of a function.  Tensors are dense, row-major (last
 * dimension fastest), no padding: bytes == product(shape) * dtype size. */
typedef struct anes_tensor_desc {
	const char *name;   /* NUL-terminated, at most ANES_NAME_MAX bytes before
	                     * the NUL (anes_proto.h); owned by the program */
	anes_dtype dtype;
	uint32_t rank;
	uint64_t shape[ANES_MAX_RANK];
	uint64_t bytes;
} anes_tensor_desc;

typedef struct anes_function_info {
	const char *name;                 /* owned by the program, as tensor names */
	uint32_t n_inputs;
	uint32_t n_outputs;
	const anes_tensor_desc *inputs;   /* owned by the program, n_inputs entries */
	const anes_tensor_desc *outputs;  /* owned by the program, n_outputs entries */
	/* The function's states (MIL state<tensor<...>> inputs): memory the
	 * caller keeps between runs, read and written in place by run_states
	 * (or run_surfaces).  A function with states cannot be run by run. */
	uint32_t n_states;
	const anes_tensor_desc *states;   /* owned by the program, n_states entries */
} anes_function_info;

/* A named weight blob, referenced from MIL as
 * BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64(64)).
 * Borrowed: the backend copies what it needs during compile -- unless kept
 * is set: then data stays valid and unchanged until the program is freed,
 * and the backend may use it in place (a weight file the daemon mapped or
 * copied for the program, docs/protocol.md "Weights by file descriptor"). */
typedef struct anes_weight {
	const char *path;   /* NUL-terminated, e.g. "@model_path/weights/w.bin" */
	const void *data;
	size_t len;
	bool kept;
	/* With kept: fd is a file holding exactly data (len bytes from offset
	 * 0) that cannot change any more (a sealed memfd, or a read-only copy
	 * only the daemon holds); borrowed, valid during the compile call (a
	 * backend that needs it longer duplicates it).  A backend in another
	 * process (the device worker) passes it and maps it there instead of
	 * copying the bytes.  Only when has_fd is set (a zeroed anes_weight has
	 * no fd). */
	bool has_fd;
	int fd;
} anes_weight;

typedef struct anes_backend anes_backend;
typedef struct anes_bprogram anes_bprogram;

/* One run argument described by the shared memory it lives in, for backends
 * that run in another process (run_surfaces below).  key names the surface
 * for the daemon's lifetime (never reused); fd is its memfd (borrowed, valid
 * until surface_release(key)), or -1 for a surface named by IOSurface ID,
 * which ios_id then names (0 for memfd); ptr == the daemon's mapping +
 * offset. */
typedef struct anes_surface_desc {
	void *ptr;
	int fd;
	uint32_t ios_id;
	void *ios;          /* the IOSurfaceRef of an IOSurface surface in this
	                     * process (borrowed, valid for the call), else NULL:
	                     * a backend may hand it to its device as it is */
	uint64_t key;
	uint64_t offset;
	uint64_t size;      /* of the whole surface */
} anes_surface_desc;

/* What status reports about a device worker (worker_info below). */
typedef struct anes_worker_info {
	int64_t pid;                /* of the current worker; 0 while none runs */
	uint64_t restarts;          /* workers started after the first */
	uint64_t compiles;          /* compiles made by the workers serving now */
	uint64_t compile_budget;    /* 0 = unlimited */
	uint64_t recompiles;        /* programs recompiled after restarts, in total */
	const char *backend;        /* the backend inside the worker ("cpu", "ane") */
	uint32_t workers;           /* worker processes serving now */
	uint32_t max_workers;
	uint64_t programs;          /* programs held in the workers */
	uint64_t watchdog_kills;    /* workers killed for not answering in time */
	uint64_t run_floor_ms;      /* the watchdog's deadline floors */
	uint64_t compile_floor_ms;
	uint64_t restoring;         /* programs waiting to be compiled again in a new worker */
	uint32_t threads;           /* runs one worker process executes at once (its threads) */
} anes_worker_info;

/* Every backend program starts with this header, so the daemon can read the
 * interface of a program without knowing the backend. */
struct anes_bprogram {
	anes_backend *backend;
	uint32_t n_functions;
	const anes_function_info *functions;  /* owned by the program */
};

typedef struct anes_backend_ops {
	const char *name;  /* "cpu", "ane" */

	/* Compile MIL text (mil_len bytes, need not be NUL-terminated).  On failure
	 * a one-line human message naming the line and the problem is written to
	 * errbuf (always NUL-terminated when errbuf_len > 0).
	 * May be called from any thread, concurrently.
	 * On success *ret_prog is owned by the caller: free with program_free. */
	int (*compile)(anes_backend *b, const char *mil, size_t mil_len,
	               const anes_weight *weights, size_t n_weights,
	               anes_bprogram **ret_prog, char *errbuf, size_t errbuf_len);

	/* Run function fn_index of prog.  inputs[i] points to functions[fn].inputs[i].bytes
	 * bytes, outputs[i] to functions[fn].outputs[i].bytes bytes (both borrowed).
	 * The memory is shared with untrusted clients and may change during the run:
	 * a backend never derives an address from its contents without checking it.
	 * Thread-safe: several runs of the same program may be in flight at once. */
	int (*run)(anes_backend *b, anes_bprogram *prog, uint32_t fn_index,
	           const void *const *inputs, void *const *outputs,
	           char *errbuf, size_t errbuf_len);

	/* Free a program.  Accepts NULL.  No run of it may be in flight. */
	void (*program_free)(anes_backend *b, anes_bprogram *prog);

	/* Free the backend.  Accepts NULL.  All its programs must be freed first. */
	void (*destroy)(anes_backend *b);

	/* ---- optional ---- */

	/* The state interface (docs/protocol.md, "States"): the daemon keeps a
	 * state's memory (one block per state object, each tensor 64-byte
	 * aligned) and passes it to every run of the function it was made for.
	 *
	 * run, for functions with states (functions[fn].n_states > 0): states[i]
	 * points to functions[fn].states[i].bytes bytes (aligned to the element
	 * size) that the caller keeps between runs; read_state reads it,
	 * write_state and coreml_update_state overwrite it, in program order.
	 * Runs of one state never overlap (the daemon orders them); the
	 * contents after a failed run are unknown (the daemon marks the state
	 * lost).  NULL where the backend runs no states in process: the ANE
	 * backend (refused: -ENOTSUP), and the worker proxy, which takes them in
	 * run_surfaces.  A backend with neither answers -ENOTSUP. */
	int (*run_states)(anes_backend *b, anes_bprogram *prog, uint32_t fn_index,
	                  const void *const *inputs, void *const *outputs, void *const *states,
	                  char *errbuf, size_t errbuf_len);

	/* ---- optional (NULL in in-process backends) ---- */

	/* run, with each argument described by its surface (inputs, outputs,
	 * then the function's states: n_inputs + n_outputs + n_states entries,
	 * a state's tensors in one surface at their offsets).  When present the daemon keeps
	 * every memfd surface's fd (CLOEXEC) while the surface lives (an
	 * IOSurface is passed by ios_id instead), calls this
	 * instead of run, and calls surface_release once the surface is gone.
	 * Same rules as run. */
	int (*run_surfaces)(anes_backend *b, anes_bprogram *prog, uint32_t fn_index,
	                    const anes_surface_desc *args, uint32_t n_args,
	                    char *errbuf, size_t errbuf_len);

	/* The surface key is gone: no run uses it, its fd is about to close
	 * (or its IOSurface to be released).
	 * Called on the daemon's loop thread; must not block for long. */
	void (*surface_release)(anes_backend *b, uint64_t key);

	/* Fill *ret (strings owned by the backend).  Any thread. */
	void (*worker_info)(anes_backend *b, anes_worker_info *ret);

	/* Optional: false while a run of prog would wait for something else
	 * first (its device worker compiling it again after a restart); a lane
	 * thread then leaves the run to the job workers.  Any thread. */
	bool (*program_ready)(anes_backend *b, const anes_bprogram *prog);

	/* Run arguments the backend has copied between the caller's memory and
	 * memory of its own so far (status "ane_copies"): the ANE backend copies
	 * an argument whose surface does not fit the device (docs/ane.md).  Any
	 * thread. */
	uint64_t (*copies)(anes_backend *b);
} anes_backend_ops;

struct anes_backend {
	const anes_backend_ops *ops;
};

/* The CPU reference backend (daemon/cpu).  n_threads 0 = one per core.
 * On success *ret is owned by the caller (ret->ops->destroy). */
int anes_cpu_backend_new(unsigned n_threads, anes_backend **ret);

#endif
