/* SPDX-License-Identifier: MIT */
/* Exponential backoff with full jitter, and Retry-After parsing. */
#ifndef TPSYNC_BACKOFF_H
#define TPSYNC_BACKOFF_H

#include <stdint.h>
#include <time.h>

/* The ceiling for attempt n (1-based): min(max_ms, initial_ms * 2^(n-1)). */
int64_t backoff_ceiling(int64_t initial_ms, int64_t max_ms, unsigned attempt);

/* A delay drawn uniformly from [initial_ms, ceiling] ("full jitter" that never
 * retries sooner than retry.initial). rnd is a uniform 64-bit random number. */
int64_t backoff_delay(int64_t initial_ms, int64_t max_ms, unsigned attempt, uint64_t rnd);

/* A random 64-bit number for the jitter (getrandom, or the clock if that fails). */
uint64_t backoff_random(void);

/* Parses a Retry-After header value: delta-seconds or an HTTP date (IMF-fixdate),
 * relative to now. Stores milliseconds (>= 0) in *out. Returns 0 or -EINVAL. */
int backoff_parse_retry_after(const char *value, time_t now, int64_t *out);

#endif
