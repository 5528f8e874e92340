/* SPDX-License-Identifier: MIT */
/* Adobe Target's profile fetch API (TARGET_API.md, "Fetch"): the URL of one
 * profile, its JSON answer, and what an answer means (a pure function, like
 * target.c's verdicts for the bulk API). */
#ifndef TPSYNC_TARGET_FETCH_H
#define TPSYNC_TARGET_FETCH_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* One attribute as Target holds it. */
struct target_fetch_attr {
	char *name;
	char *value;
	int64_t modified_at; /* ms since the epoch; 0: not given */
};

/* A fetched profile. */
struct target_fetch_profile {
	struct target_fetch_attr *attrs;
	size_t n;
	int64_t modified_at; /* the profile's; 0: not given */
};

/* GET {base}/rest/v1/profiles/thirdPartyId/{id}?client={client}, or
 * /rest/v1/profiles/{id}?client= for id_type pcId; the id percent-encoded as
 * a path segment. Caller frees; NULL on ENOMEM. */
char *target_fetch_url(const struct config *cfg, const char *profile, size_t len);

/* Parses a 200 answer: {"profileAttributes": {name: {"value": V,
 * "modifiedAt": ISO-8601}, ...}, "modifiedAt": ...}. A value that is a
 * number or a boolean is kept as its JSON text. Returns 0 with *out filled
 * (free with target_fetch_profile_finish), or -EBADMSG when body is not such
 * a document (-ENOMEM). */
int target_fetch_parse(const char *body, size_t len, struct target_fetch_profile *out);
void target_fetch_profile_finish(struct target_fetch_profile *p);
/* The attribute called name, or NULL. */
const struct target_fetch_attr *target_fetch_get(const struct target_fetch_profile *p, const char *name);

/* "2017-08-09T18:18:04.659-04:00" (or Z, or no fraction) as ms since the
 * epoch. Returns 0, or -EINVAL. */
int target_fetch_parse_time(const char *iso, int64_t *ms);

/* What a fetch's outcome means. */
enum target_fetch_verdict {
	TARGET_FETCH_FOUND,   /* 200 with a profile (parsed is true) */
	TARGET_FETCH_MISSING, /* 404: Target has no such profile */
	TARGET_FETCH_AUTH,    /* 401/403 */
	TARGET_FETCH_RETRY,   /* network, 408, 429, 5xx: ask again after a backoff */
	TARGET_FETCH_BAD,     /* any other answer, or a 200 that is not the documented JSON */
};

/* Judges a fetch: res and error from curl, HTTP status http (res CURLE_OK),
 * whether the body parsed (target_fetch_parse), and a printable excerpt of
 * it; why gets a message for anything but FOUND and MISSING. Pure. */
enum target_fetch_verdict target_fetch_judge(CURLcode res, const char *error, long http, bool parsed,
					     const char *excerpt, char *why, size_t size);

#endif
