/* SPDX-License-Identifier: MIT */
/* The rolling call budget. With a full ring, the oldest call decides: the next
 * call fits once it is a window old. */
#include "callrate.h"

#include <errno.h>
#include <stdlib.h>

int callrate_init(struct callrate *r, size_t per_window, int64_t window_ms)
{
	r->at = calloc(per_window ? per_window : 1, sizeof(*r->at));
	r->cap = per_window ? per_window : 1;
	r->head = r->n = 0;
	r->window_ms = window_ms;
	return r->at ? 0 : -ENOMEM;
}

void callrate_finish(struct callrate *r)
{
	free(r->at);
	r->at = NULL;
	r->cap = r->n = r->head = 0;
}

int callrate_resize(struct callrate *r, size_t per_window)
{
	size_t cap = per_window ? per_window : 1;
	int64_t *at = calloc(cap, sizeof(*at));
	if (!at)
		return -ENOMEM;
	size_t keep = r->n < cap ? r->n : cap;
	for (size_t i = 0; i < keep; i++)
		at[i] = r->at[(r->head + r->n - keep + i) % r->cap];
	free(r->at);
	r->at = at;
	r->cap = cap;
	r->head = 0;
	r->n = keep;
	return 0;
}

bool callrate_may_call(const struct callrate *r, int64_t now, int64_t *free_at)
{
	if (r->n < r->cap)
		return true;
	int64_t oldest = r->at[r->head];
	if (now - oldest >= r->window_ms)
		return true;
	*free_at = oldest + r->window_ms;
	return false;
}

void callrate_record(struct callrate *r, int64_t now)
{
	if (r->n < r->cap) {
		r->at[(r->head + r->n) % r->cap] = now;
		r->n++;
	} else {
		r->at[r->head] = now;
		r->head = (r->head + 1) % r->cap;
	}
}

void callrate_unrecord(struct callrate *r)
{
	if (r->n > 0)
		r->n--;
}

size_t callrate_used(const struct callrate *r, int64_t now)
{
	size_t used = 0;
	for (size_t i = 0; i < r->n; i++)
		if (now - r->at[(r->head + i) % r->cap] < r->window_ms)
			used++;
	return used;
}
