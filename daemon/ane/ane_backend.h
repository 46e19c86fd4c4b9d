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
/* Row stride alignment of the ANE's [1, C, 1, S] fp16 I/O layout. */
#define ANES_ANE_ROW_ALIGN 64u

/* Create an ANE backend on top of bridge (borrowed: it must outlive the
 * backend).  Fails with -ENODEV and "no ANE on this machine (...)" in errbuf
 * when the framework classes are missing or the device reports no ANE;
 * -ENOMEM when out of memory.  On success *ret is owned by the caller
 * (ret->ops->destroy). */
int anes_ane_backend_new(const anes_ane_bridge *bridge, anes_backend **ret, char *errbuf,
                         size_t errbuf_len);

/* Check a parsed program (and the weights given with it) against the ANE
 * constraints this backend enforces before it calls the framework: one
 * function; fp16 inputs and outputs of shape [1, C, 1, S] with S * 2 a
 * multiple of ANES_ANE_ROW_ALIGN; only ops on the accepted list; computed
 * values fp16 or fp32; weight paths "@model_path/weights/NAME" with NAME a
 * plain file name, each given once.  Returns 0, or -ENOTSUP / -EINVAL with a
 * one-line "line N: ..." message in errbuf. */
int anes_ane_check_program(const anes_mil_program *prog, const anes_weight *weights,
                           size_t n_weights, char *errbuf, size_t errbuf_len);

/* true if the ANE backend accepts op name (the accepted-op list). */
bool anes_ane_op_accepted(const char *op);

#endif
