/* SPDX-License-Identifier: MIT */
/*
 * ID tables (idtable.c): a connection's surfaces and programs by wire ID.
 * Loop thread only.
 */
#ifndef ANES_IDTABLE_H
#define ANES_IDTABLE_H

#include <stdint.h>

/* ID -> pointer.  IDs are handed out in increasing order and never reused,
 * so appending keeps the array sorted and lookup is a binary search; the
 * tables are small (bounded by max_surfaces / max_programs). */
typedef struct anes_idslot {
	uint32_t id;
	void *ptr;
} anes_idslot;

typedef struct anes_idtable {
	anes_idslot *v;
	uint32_t n;
	uint32_t cap;
	uint32_t next_id;   /* 0 once IDs are exhausted */
} anes_idtable;

void anes_idt_init(anes_idtable *t);
void anes_idt_cleanup(anes_idtable *t);
/* Make room so that the next n inserts cannot fail for lack of memory. */
int anes_idt_reserve(anes_idtable *t, uint32_t n);
/* The ID the next insert will use; -ENOSPC if IDs are exhausted. */
int anes_idt_peek(const anes_idtable *t, uint32_t *ret_id);
/* -ENOSPC (IDs exhausted) or -ENOMEM. */
int anes_idt_insert(anes_idtable *t, void *ptr, uint32_t *ret_id);
void *anes_idt_find(const anes_idtable *t, uint32_t id);
void *anes_idt_remove(anes_idtable *t, uint32_t id);

#endif
