/* SPDX-License-Identifier: MIT */
/* Retry timing: exponential growth with full jitter spreads clients out after an
 * outage; Retry-After from Target overrides it (clamped by the caller). */
#include "backoff.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

int64_t backoff_ceiling(int64_t initial_ms, int64_t max_ms, unsigned attempt)
{
	int64_t c = initial_ms > 0 ? initial_ms : 1;
	for (unsigned i = 1; i < attempt && c < max_ms; i++)
		c = c > INT64_MAX / 2 ? INT64_MAX : c * 2;
	return c < max_ms ? c : max_ms;
}

int64_t backoff_delay(int64_t initial_ms, int64_t max_ms, unsigned attempt, uint64_t rnd)
{
	int64_t ceiling = backoff_ceiling(initial_ms, max_ms, attempt);
	int64_t floor = initial_ms < ceiling ? initial_ms : ceiling;
	uint64_t span = (uint64_t)(ceiling - floor) + 1;
	return floor + (int64_t)(rnd % span);
}

int backoff_parse_retry_after(const char *value, time_t now, int64_t *out)
{
	while (isspace((unsigned char)*value))
		value++;
	if (isdigit((unsigned char)*value)) {
		char *end;
		errno = 0;
		long long secs = strtoll(value, &end, 10);
		while (isspace((unsigned char)*end))
			end++;
		if (errno || *end || secs < 0 || secs > 365LL * 86400)
			return -EINVAL;
		*out = secs * 1000;
		return 0;
	}
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	const char *end = strptime(value, "%a, %d %b %Y %H:%M:%S GMT", &tm);
	if (!end)
		return -EINVAL;
	while (isspace((unsigned char)*end))
		end++;
	if (*end)
		return -EINVAL;
	time_t when = timegm(&tm);
	*out = when > now ? (int64_t)(when - now) * 1000 : 0;
	return 0;
}

uint64_t backoff_random(void)
{
	uint64_t v;
	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != sizeof(v)) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		v = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) * 6364136223846793005ULL + (uint64_t)getpid();
	}
	return v;
}
