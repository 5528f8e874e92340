/* SPDX-License-Identifier: MIT */
/* A rolling call budget: at most N calls in any window (Target's "50 calls a
 * minute"), kept as a ring of the last N call times. Knows nothing of HTTP. */
#ifndef TPSYNC_CALLRATE_H
#define TPSYNC_CALLRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct callrate {
	int64_t *at;       /* the last cap call times, oldest at head */
	size_t cap, head, n;
	int64_t window_ms;
};

/* Sets up a budget of per_window calls per window_ms. Returns 0 or -ENOMEM. */
int callrate_init(struct callrate *r, size_t per_window, int64_t window_ms);
void callrate_finish(struct callrate *r);
/* Changes the budget (a reload), keeping the most recent calls so that the
 * window is not reset. Returns 0 or -ENOMEM (the old budget stays). */
int callrate_resize(struct callrate *r, size_t per_window);

/* True if a call at now fits; otherwise *free_at says when the next one does. */
bool callrate_may_call(const struct callrate *r, int64_t now, int64_t *free_at);
/* Records a call made at now. */
void callrate_record(struct callrate *r, int64_t now);
/* Forgets the newest call (one that never reached the server). */
void callrate_unrecord(struct callrate *r);
/* Calls made within the window that ends at now. */
size_t callrate_used(const struct callrate *r, int64_t now);

#endif
