/* SPDX-License-Identifier: MIT */
/* Adobe Target's Bulk Profile Update API: request URLs and the XML answers. */
#ifndef TPSYNC_TARGET_H
#define TPSYNC_TARGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

struct target_answer {
	bool has_success;
	bool is_success;
	char *batch_status; /* submission: the status URL */
	char *message;
	char *batch_id;
	char *status;       /* status poll: complete | incomplete | stuck */
	int64_t batch_size, consumed, successful, not_found, failed; /* -1: absent */
};

/* The batchUpdate URL for cfg (v1 or v2). Caller frees. NULL on ENOMEM. */
char *target_submit_url(const struct config *cfg);

/* The status URL to poll, with showDetails=true added. Caller frees. */
char *target_status_url(const char *status_url);

/* Whether the bearer token may go to url: only to the configured base URL's host
 * or to the status host Target named, and never from https down to http. */
bool target_may_send_token(const struct config *cfg, const char *url, const char *status_url);

/* Parses an XML <response> answer. Returns 0 with *out filled (free with
 * target_answer_finish()), or -EBADMSG when body is not such a document. */
int target_parse_answer(const char *body, size_t len, struct target_answer *out);
void target_answer_finish(struct target_answer *a);

#endif
