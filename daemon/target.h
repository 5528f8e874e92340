/* SPDX-License-Identifier: MIT */
/* Adobe Target's Bulk Profile Update API: request URLs, the XML answers, what
 * each answer means for the batch (pure functions, judged case by case against
 * DESIGN.md's guarantee 5), and Target's rules for ids and attribute names. */
#ifndef TPSYNC_TARGET_H
#define TPSYNC_TARGET_H

#include <curl/curl.h>
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
	int64_t failed_listed; /* <profile> elements with status failed (v2 status) */
};

/* The batchUpdate URL for cfg (v1 or v2). Caller frees. NULL on ENOMEM. */
char *target_submit_url(const struct config *cfg);

/* The status URL to poll: Target's, with showDetails=true added, and over
 * https when the base is https (Adobe gives them as http://). Caller frees;
 * NULL on ENOMEM. */
char *target_status_url(const struct config *cfg, const char *status_url);

/* Whether the bearer token may go to url: only to the configured base URL's
 * origin or to the status host Target named (status_url, whatever its scheme),
 * and never over plain http when the base is https. */
bool target_may_send_token(const struct config *cfg, const char *url, const char *status_url);

/* Parses an XML <response> answer. Returns 0 with *out filled (free with
 * target_answer_finish()), or -EBADMSG when body is not such a document. */
int target_parse_answer(const char *body, size_t len, struct target_answer *out);
void target_answer_finish(struct target_answer *a);

/* Parses a status answer from fd (read with pread from offset 0 to its end,
 * 64 KiB at a time) like target_parse_answer, and calls on_failed(arg, id,
 * len) for every <profile> whose status is failed, as the parser meets it: a
 * list of 500,000 failed rows takes no more memory than one. on_failed may be
 * NULL (they are only counted in failed_listed); its negative return stops
 * the parse and is returned. Returns 0, -EBADMSG, -ENOMEM or a read error. */
int target_parse_status_fd(int fd, struct target_answer *out, int (*on_failed)(void *arg, const char *id, size_t len),
			   void *arg);

/* The batchId query parameter of a status URL, copied into out (at most size
 * - 1 bytes); false when there is none. */
bool target_batch_id_of(const char *status_url, char *out, size_t size);

/* What a submission's answer means for its batch. */
enum target_verdict {
	TARGET_ACCEPTED, /* success=true: its values become the mirror */
	TARGET_RETRY,    /* try again after a backoff (Retry-After honoured) */
	TARGET_REJECTED, /* success=false: try again, counted against retry.max_failures */
	TARGET_AUTH,     /* 401/403: hold delivery until the token changes */
	TARGET_SPLIT,    /* 413: too large; split the batch in two */
	TARGET_DEAD,     /* any other answer: dead-letter the batch */
};

/* Why a request is retried, for the counters in metrics. */
enum target_cause { TARGET_CAUSE_NONE, TARGET_CAUSE_NETWORK, TARGET_CAUSE_HTTP, TARGET_CAUSE_GARBAGE,
		    TARGET_CAUSE_REJECTED };

struct target_judgement {
	enum target_verdict verdict;
	enum target_cause cause;
	bool is_uncertain;    /* Target may have applied it anyway: send the latest values once more later */
	bool use_retry_after; /* a Retry-After header, if any, sets the delay */
	bool is_throttled;    /* 429/503: the whole account must slow down, not just this batch */
	char why[600];        /* for the batch's last_error and dead letters */
};

/* Judges a submission's outcome: res and error from curl (error may be empty),
 * HTTP status http (when res is CURLE_OK), the parsed XML answer a (NULL when
 * the body could not be parsed as one), and excerpt, a printable start of the
 * body for messages. Pure: no I/O, no state. */
void target_judge_submit(CURLcode res, const char *error, long http, const struct target_answer *a,
			 const char *excerpt, struct target_judgement *out);

/* False when a call with this outcome never reached Target (no connection
 * was made), so it does not use Target's call budget. */
bool target_call_reached(CURLcode res);

/* What a status poll's answer means. */
enum target_poll_verdict {
	TARGET_POLL_COMPLETE,   /* the batch is processed (counts in the answer) */
	TARGET_POLL_INCOMPLETE, /* still processing: ask again later */
	TARGET_POLL_STUCK,      /* Target cannot complete it */
	TARGET_POLL_RETRY,      /* no usable answer (network, HTTP error, garbage): ask again after a backoff */
	TARGET_POLL_AUTH,       /* 401/403 */
	TARGET_POLL_GONE,       /* 404/410: Target no longer knows the batch */
};

/* Judges a status poll's outcome like target_judge_submit; why gets a message
 * for the batch's last_error (empty for complete and incomplete). */
enum target_poll_verdict target_judge_poll(CURLcode res, const char *error, long http, const struct target_answer *a,
					   const char *excerpt, char *why, size_t size);

/* Why Target would not accept id as a profile id (empty, over 128 bytes, '+',
 * '/' or a control character), or NULL when it is fine. */
const char *target_profile_id_problem(const char *id, size_t len);
/* True when name is a plain Target parameter name (letters, digits, '_', '-',
 * '.', at most 128 bytes). */
bool target_attr_name_valid(const char *name, size_t len);

#endif
