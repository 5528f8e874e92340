/* SPDX-License-Identifier: MIT */
/* A sorted array: there are as many ranges as batches in flight or awaiting
 * their status, a handful to a few hundred. */
#include "seq_ranges.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void seq_ranges_init(struct seq_ranges *s)
{
	memset(s, 0, sizeof(*s));
}

void seq_ranges_finish(struct seq_ranges *s)
{
	free(s->r);
	memset(s, 0, sizeof(*s));
}

/* The index of the first range whose hi is at or above seq (n: none). */
static size_t first_reaching(const struct seq_ranges *s, int64_t seq)
{
	size_t lo = 0, hi = s->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->r[mid].hi < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int seq_ranges_add(struct seq_ranges *s, int64_t batch, int64_t lo, int64_t hi)
{
	if (lo > hi)
		return -EINVAL;
	size_t at = first_reaching(s, lo);
	if (at < s->n && s->r[at].lo <= hi)
		return -EINVAL;
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		struct seq_range *r = realloc(s->r, cap * sizeof(*r));
		if (!r)
			return -ENOMEM;
		s->r = r;
		s->cap = cap;
	}
	memmove(s->r + at + 1, s->r + at, (s->n - at) * sizeof(*s->r));
	s->r[at] = (struct seq_range){ .lo = lo, .hi = hi, .batch = batch };
	s->n++;
	return 0;
}

void seq_ranges_remove(struct seq_ranges *s, int64_t batch)
{
	for (size_t i = 0; i < s->n; i++) {
		if (s->r[i].batch == batch) {
			memmove(s->r + i, s->r + i + 1, (s->n - i - 1) * sizeof(*s->r));
			s->n--;
			return;
		}
	}
}

int64_t seq_ranges_find(const struct seq_ranges *s, int64_t seq)
{
	size_t at = first_reaching(s, seq);
	return at < s->n && s->r[at].lo <= seq ? s->r[at].batch : 0;
}
