/* SPDX-License-Identifier: MIT */
/*
 * Kernels of the ops added for the iOS 15-18 opsets that are not elementwise
 * (cpu_elem.c has those): reductions, sorting, normalizations, data
 * movement, pooling, resizing and conv_transpose.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "cpu_internal.h"

/* ---- table ---- */

static const cpu_opimpl impls[] = {
	{NULL, NULL, NULL},
};

const cpu_opimpl *cpu_ext_find(const char *name)
{
	for (size_t i = 0; i < sizeof impls / sizeof impls[0]; i++)
		if (impls[i].name && strcmp(impls[i].name, name) == 0)
			return &impls[i];
	return cpu_elem_find(name);
}
