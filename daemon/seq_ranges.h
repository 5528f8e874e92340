/* SPDX-License-Identifier: MIT */
/* The pending_seq ranges of the batches Target has not finished with. A batch
 * cut from the queue is a range of pending sequence numbers, so that cutting
 * it writes no profile row; this set says which batch, if any, a profile's
 * pending changes are in flight in. Kept by the queue (queue.c), read by
 * staging (stage.c). Knows nothing of SQL. */
#ifndef TPSYNC_SEQ_RANGES_H
#define TPSYNC_SEQ_RANGES_H

#include <stddef.h>
#include <stdint.h>

struct seq_range {
	int64_t lo, hi; /* inclusive */
	int64_t batch;
};

struct seq_ranges {
	struct seq_range *r; /* sorted by lo; ranges never overlap */
	size_t n, cap;
};

void seq_ranges_init(struct seq_ranges *s);
void seq_ranges_finish(struct seq_ranges *s);
static inline void seq_ranges_clear(struct seq_ranges *s) { s->n = 0; }

/* Adds batch's range [lo, hi]. Returns 0, -ENOMEM, or -EINVAL when it
 * overlaps a range already there (nothing added). */
int seq_ranges_add(struct seq_ranges *s, int64_t batch, int64_t lo, int64_t hi);
/* Removes batch's range, if there is one. */
void seq_ranges_remove(struct seq_ranges *s, int64_t batch);
/* The batch whose range holds seq, or 0. */
int64_t seq_ranges_find(const struct seq_ranges *s, int64_t seq);

#endif
