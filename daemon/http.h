/* SPDX-License-Identifier: MIT */
/* HTTP requests through libcurl's multi interface on the daemon's libevent loop
 * (curl_multi_socket_action with libevent watching curl's sockets and timer, as
 * in libcurl's hiperfifo example), so no request ever blocks the loop. Knows
 * nothing of Target: a caller describes a request in a struct http_call, and
 * hears of its end through the listener. */
#ifndef TPSYNC_HTTP_H
#define TPSYNC_HTTP_H

#include <curl/curl.h>
#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>

#include "buf.h"

struct http;

struct http_call {
	/* Set by the caller before http_start. */
	const char *url;
	const char *bearer;        /* sent as "Authorization: Bearer ..." when not NULL */
	const char *extra_header;  /* one more header line ("X-Api-Key: ..."), or NULL */
	FILE *body;                /* POST this, from its current offset; NULL: GET */
	int64_t body_size;
	const char *content_type;  /* of the body */
	int64_t timeout_ms;        /* for the answer, once the request (and its body) is sent */
	int64_t connect_timeout_ms;
	int64_t min_upload_speed;  /* bytes/s a body must at least move at (0: no bound) */
	const char *ca_file;       /* NULL: the system's CA bundle */
	size_t max_response;       /* keep at most this much of the answer in response */
	/* Streaming: when set, every byte of the answer goes here too (response
	 * still keeps its start); a negative errno return aborts the request. */
	int (*on_data)(void *arg, const char *data, size_t len);
	void *data_arg;

	/* Filled before the listener's done is called. */
	CURLcode result;
	long status;               /* HTTP status; 0 when none was received */
	int64_t retry_after_ms;    /* from a Retry-After header; -1: none */
	struct buf response;       /* the start of the answer (see max_response) */
	char error[CURL_ERROR_SIZE];
	int64_t started_at;        /* clock_mono_ms() when started */

	/* Private to http.c. */
	struct http *h;
	int64_t sent_at;           /* clock_mono_ms() when the last body byte left (0: not yet) */
	int64_t progress_at;       /* when the body last moved */
	curl_off_t uploaded;
	char abort_reason[128];    /* why on_progress stopped it */
	CURL *easy;
	struct curl_slist *headers;
	struct http_call *next;
};

struct http_listener {
	/* The call ended (answered, failed or timed out): the http layer no
	 * longer holds it, and the caller may free it. */
	void (*done)(void *arg, struct http_call *call);
};

/* Creates the request engine on base, with at most max_per_host connections
 * to one host. Returns NULL with the reason logged. */
struct http *http_create(struct event_base *base, long max_per_host, const struct http_listener *l, void *arg);
/* Abandons the calls still running (no done callbacks) and frees the engine. */
void http_destroy(struct http *h);

/* Starts call, which the caller owns and keeps alive until done is called.
 * Returns 0, or -ENOMEM / -EIO (nothing started; the call may be reused). */
int http_start(struct http *h, struct http_call *call);
/* Frees what a call holds (its response buffer); the call may be reused. */
void http_call_finish(struct http_call *call);

/* Calls running now. */
int http_active(const struct http *h);

/* The whole request's limit for a body of body_size bytes: connecting, the
 * body at min_upload_speed, then timeout_ms for the answer (curl's own
 * CURLOPT_TIMEOUT; the answer's wait is also checked on its own). */
int64_t http_total_timeout_ms(int64_t connect_timeout_ms, int64_t body_size, int64_t min_upload_speed,
			      int64_t timeout_ms);

/* Copies up to 200 bytes of the call's response into out for messages,
 * printable ASCII only (everything else, and double quotes, as spaces). */
void http_excerpt(const struct http_call *call, char *out, size_t size);

#endif
