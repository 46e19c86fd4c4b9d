/* SPDX-License-Identifier: MIT */
/*
 * The ANE backend: runs MIL programs on Apple's Neural Engine through the
 * private AppleNeuralEngine.framework, reached only through an
 * anes_ane_bridge (ane_bridge.h).  docs/ane.md describes the call sequence,
 * its public sources, and the constraints enforced here.
 */
#ifndef ANES_ANE_BACKEND_H
#define ANES_ANE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ane_bridge.h"
#include "backend.h"
#include "mil.h"

/* The QoS every public call site passes to compile/load/evaluate/unload. */
#define ANES_ANE_QOS 21u
/* Smallest IOSurface allocation handed to the ANE (surfaces are padded up to
 * it; public projects report rejections (status 0x1d) below ~48 KiB). */
#define ANES_ANE_MIN_SURFACE_BYTES 49152u
/* The pause before the one retry of a failed loadWithQoS: (maderix/ANE
 * bridge/ane_bridge.m retries after usleep(100000)). */
#define ANES_ANE_LOAD_RETRY_MS 100u
/* A row (S elements) of [1, C, 1, S] I/O must be a multiple of this many
 * bytes: conservative, because the public record disagrees on whether the
 * ANE pads rows (docs/ane.md, "What is refused"). */
#define ANES_ANE_ROW_ALIGN 64u

/* Create an ANE backend on top of bridge (borrowed: it must outlive the
 * backend).  Fails with -ENODEV and "no ANE on this machine (...)" in errbuf
 * when the framework classes are missing or the device reports no ANE;
 * -ENOMEM when out of memory.  On success *ret is owned by the caller
 * (ret->ops->destroy). */
int anes_ane_backend_new(const anes_ane_bridge *bridge, anes_backend **ret, char *errbuf,
                         size_t errbuf_len);

/* Where the backend reports what is worth knowing but not an error (a program
 * using ops that public code has not run on the ANE): fn gets one line, no
 * newline.  The default (fn NULL) writes "aneshared: ane: LINE" to stderr.
 * Set it before the first compile; ctx is borrowed. */
typedef void (*anes_ane_log_fn)(void *ctx, const char *line);
void anes_ane_backend_set_log(anes_backend *b, anes_ane_log_fn fn, void *ctx);

/* Check a parsed program (and the weights given with it) against what this
 * backend refuses before it calls the framework: more than one function;
 * inputs or outputs that are not fp16 or fp32 of shape [1, C, 1, S] with
 * S * element size a multiple of ANES_ANE_ROW_ALIGN; weight paths other than
 * "@model_path/weights/NAME" with NAME a plain file name, or given twice.
 * Ops are not checked here (see anes_ane_unverified).  Returns 0, or
 * -ENOTSUP / -EINVAL with a one-line "line N: ..." message in errbuf. */
int anes_ane_check_program(const anes_mil_program *prog, const anes_weight *weights,
                           size_t n_weights, char *errbuf, size_t errbuf_len);

/* true if public code has run op on the ANE through the in-memory path
 * (docs/ane.md, "Which ops"). */
bool anes_ane_op_verified(const char *op);

/* Describe in one line (written to buf, NUL-terminated, "..." when cut) what
 * prog uses that public code has not shown to work on the ANE: ops off the
 * verified list (each name once, with its lines), concat without an explicit
 * interleave = false, values computed in an integer or bool dtype.  Returns
 * how many items it found; 0 leaves buf "". */
size_t anes_ane_unverified(const anes_mil_program *prog, char *buf, size_t len);

/* Rewrite MIL text for the ANE (ane_lower.c): every gelu whose x is a named
 * value becomes verified ops only,
 *   y = x * sigmoid(x * (1.5957691 + 0.0713548 x^2))
 * (the tanh form: 0.5 (1 + tanh(z)) = sigmoid(2 z)), or x * sigmoid(1.702 x)
 * for mode SIGMOID_APPROXIMATION.  prog must be text parsed.  Each gelu
 * statement is replaced on its own line, so the other statements keep their
 * line numbers.  Returns 0 with *ret_text NULL when there is nothing to
 * rewrite; 1 with *ret_text (malloc'd, NUL-terminated, owned by the caller)
 * and *ret_len; -ENOMEM. */
int anes_ane_lower(const anes_mil_program *prog, const char *text, size_t len, char **ret_text,
                   size_t *ret_len);

/* Everything done to a program before the framework sees it. */
typedef struct anes_ane_prepared {
	anes_mil_program *prog;   /* parsed from text; owned by the caller */
	const char *text;         /* what the framework gets: the caller's text or lowered */
	size_t len;
	char *lowered;            /* owned by the caller (free()); NULL when text is the caller's */
	char note[512];           /* anes_ane_unverified's line, "" when there is none */
} anes_ane_prepared;

/* Parse mil, check it (anes_ane_check_program), lower it (anes_ane_lower; the
 * lowered text is parsed and checked again), and describe what is left
 * unverified.  On success *ret is filled; on failure nothing is left to free
 * and errbuf says why (-EINVAL, -ENOTSUP, -ENOMEM). */
int anes_ane_prepare(const char *mil, size_t mil_len, const anes_weight *weights, size_t n_weights,
                     anes_ane_prepared *ret, char *errbuf, size_t errbuf_len);

#endif
