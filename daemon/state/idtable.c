/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "idtable.h"

void anes_idt_init(anes_idtable *t)
{
	*t = (anes_idtable){ .next_id = 1 };
}

void anes_idt_cleanup(anes_idtable *t)
{
	free(t->v);
	anes_idt_init(t);
}

int anes_idt_reserve(anes_idtable *t, uint32_t n)
{
	if (n <= t->cap - t->n)
		return 0;
	uint64_t want = (uint64_t)t->n + n;
	uint64_t cap = t->cap ? t->cap : 8;
	while (cap < want)
		cap *= 2;
	if (cap > UINT32_MAX)
		return -ENOMEM;
	anes_idslot *v = realloc(t->v, cap * sizeof(*v));
	if (!v)
		return -ENOMEM;
	t->v = v;
	t->cap = (uint32_t)cap;
	return 0;
}

int anes_idt_peek(const anes_idtable *t, uint32_t *ret_id)
{
	if (t->next_id == 0)
		return -ENOSPC;
	*ret_id = t->next_id;
	return 0;
}

int anes_idt_insert(anes_idtable *t, void *ptr, uint32_t *ret_id)
{
	if (t->next_id == 0)
		return -ENOSPC;
	int r = anes_idt_reserve(t, 1);
	if (r < 0)
		return r;
	uint32_t id = t->next_id;
	t->next_id = id == UINT32_MAX ? 0 : id + 1;
	t->v[t->n++] = (anes_idslot){ .id = id, .ptr = ptr };
	if (ret_id)
		*ret_id = id;
	return 0;
}

static long find_index(const anes_idtable *t, uint32_t id)
{
	uint32_t lo = 0, hi = t->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (t->v[mid].id == id)
			return mid;
		if (t->v[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

void *anes_idt_find(const anes_idtable *t, uint32_t id)
{
	long i = find_index(t, id);
	return i < 0 ? NULL : t->v[i].ptr;
}

void *anes_idt_remove(anes_idtable *t, uint32_t id)
{
	long i = find_index(t, id);
	if (i < 0)
		return NULL;
	void *ptr = t->v[i].ptr;
	memmove(&t->v[i], &t->v[i + 1], (t->n - (uint32_t)i - 1) * sizeof(t->v[0]));
	t->n--;
	return ptr;
}
