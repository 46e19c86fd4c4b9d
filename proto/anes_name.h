/* SPDX-License-Identifier: MIT */
/* The cap on MIL names, shared by the daemon's parser (daemon/mil), the
 * device worker's wire format (docs/worker.md) and the client library. */
#ifndef ANES_NAME_H
#define ANES_NAME_H

/* Bytes in a MIL name (a function, an input or output, any value), without
 * the terminating NUL.  Names are stored by reference at their own length
 * (in the program's arena, in one buffer of the worker proxy, in the client's
 * descriptors), so no memory grows with this cap. */
#define ANES_NAME_MAX 1024

#endif
