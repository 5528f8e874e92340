/* SPDX-License-Identifier: MIT */
/* Delivery. Every step of a batch is committed before the next one starts:
 *   ready --(commit "posting")--> POST --> submitted (values become the mirror)
 *   --> GET status ... --> complete | stuck (re-queued once) | dead.
 * A batch left "posting" had a request whose answer never came: it is sent again,
 * and since Target may still apply the lost request late, the latest values of
 * its profiles are sent once more after target.timeout (the echoes table).
 * curl's sockets and timers run on the daemon's libevent base (as in libcurl's
 * hiperfifo example), so nothing here blocks the loop. */
#include "sender.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "batch.h"
#include "crash.h"
#include "log.h"
#include "stage.h"
#include "target.h"
#include "token.h"

#define MAX_POLLS_IN_FLIGHT 4
#define MAX_RESPONSE (1 << 20)
#define LATENCY_BUCKETS 12

enum transfer_kind { XFER_SUBMIT, XFER_POLL };

struct transfer {
	struct sender *s;
	enum transfer_kind kind;
	int64_t batch_id;
	CURL *easy;
	FILE *body;
	struct buf response;
	struct curl_slist *headers;
	char errbuf[CURL_ERROR_SIZE];
	int64_t retry_after_ms; /* -1: none */
	int64_t started_at;
	char *url;
	struct transfer *next;
};

struct sockinfo {
	struct event *ev;
};

struct sender {
	struct daemon *d;
	CURLM *multi;
	struct event *curl_timer;
	struct event *wake;
	struct transfer *transfers;
	int n_submits, n_polls;
	int64_t *calls; /* ring of call start times, for calls_per_minute */
	size_t calls_cap, calls_head, calls_n;
	struct token token;
	bool is_paused;
	bool is_auth_failed;
	bool is_flush;
	int64_t auth_probe_at;
	char blocked[256];
	int64_t blocked_until;
	struct stage sg;
	char *submit_url;
	uint64_t dry_run_seq;
	/* counters for status and metrics */
	int64_t rows_sent, batches_accepted, batches_complete, last_success_at, last_answer_at;
	int64_t retries_network, retries_http, retries_rejected, retries_garbage, auth_failures, splits;
	int64_t polls_done;
	char last_error[512];
	int64_t latency_counts[LATENCY_BUCKETS + 1];
	double latency_sum;
	int64_t latency_n;
};

static const double latency_bounds[LATENCY_BUCKETS] = { 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300 };

static void pump(struct sender *s);

void sender_kick(struct sender *s)
{
	if (s && !s->d->is_stopping)
		event_active(s->wake, 0, 0);
}

/* --- call rate ---------------------------------------------------------------- */

/* True if another call fits in the last minute; else *free_at says when. */
static bool rate_ok(struct sender *s, int64_t now, int64_t *free_at)
{
	if (s->calls_n < s->calls_cap)
		return true;
	int64_t oldest = s->calls[s->calls_head];
	if (now - oldest >= 60000)
		return true;
	*free_at = oldest + 60000;
	return false;
}

/* A call that never reached Target (no connection) does not use its budget. */
static void unrecord_call(struct sender *s)
{
	if (s->calls_n > 0)
		s->calls_n--;
}

static void record_call(struct sender *s, int64_t now)
{
	if (s->calls_n < s->calls_cap) {
		s->calls[(s->calls_head + s->calls_n) % s->calls_cap] = now;
		s->calls_n++;
	} else {
		s->calls[s->calls_head] = now;
		s->calls_head = (s->calls_head + 1) % s->calls_cap;
	}
}

/* --- curl on libevent --------------------------------------------------------- */

static void check_multi_info(struct sender *s);

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
	struct sender *s = arg;
	int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
	int running;
	CURLMcode rc = curl_multi_socket_action(s->multi, fd, flags, &running);
	if (rc != CURLM_OK)
		log_err("msg=\"curl_multi_socket_action failed\" error=\"%s\"", curl_multi_strerror(rc));
	check_multi_info(s);
}

static void on_curl_timer(evutil_socket_t fd, short what, void *arg)
{
	struct sender *s = arg;
	int running;
	CURLMcode rc = curl_multi_socket_action(s->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	if (rc != CURLM_OK)
		log_err("msg=\"curl_multi_socket_action failed\" error=\"%s\"", curl_multi_strerror(rc));
	check_multi_info(s);
}

static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct sender *s = userp;
	struct sockinfo *si = socketp;
	if (what == CURL_POLL_REMOVE) {
		if (si) {
			event_free(si->ev);
			free(si);
			curl_multi_assign(s->multi, fd, NULL);
		}
		return 0;
	}
	short kind = EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
	if (!si) {
		si = calloc(1, sizeof(*si));
		if (!si)
			return -1;
		curl_multi_assign(s->multi, fd, si);
	} else {
		event_del(si->ev);
		event_free(si->ev);
	}
	si->ev = event_new(s->d->base, fd, kind, on_socket_event, s);
	if (!si->ev || event_add(si->ev, NULL) < 0) {
		log_err("msg=\"cannot watch curl socket\"");
		return -1;
	}
	return 0;
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct sender *s = userp;
	if (timeout_ms < 0) {
		evtimer_del(s->curl_timer);
		return 0;
	}
	struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	return evtimer_add(s->curl_timer, &tv) == 0 ? 0 : -1;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct transfer *t = arg;
	size_t len = size * n;
	if (t->response.len + len > MAX_RESPONSE)
		return len; /* keep the start; the rest is not needed */
	return buf_append(&t->response, data, len) == 0 ? len : 0;
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
	struct transfer *t = arg;
	size_t len = size * n;
	if (len > 12 && strncasecmp(data, "Retry-After:", 12) == 0) {
		char value[128];
		size_t vlen = len - 12 < sizeof(value) - 1 ? len - 12 : sizeof(value) - 1;
		memcpy(value, data + 12, vlen);
		value[vlen] = '\0';
		char *end = value + strlen(value);
		while (end > value && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
			*--end = '\0';
		int64_t ms;
		if (backoff_parse_retry_after(value, time(NULL), &ms) == 0)
			t->retry_after_ms = ms;
	}
	return len;
}

static void transfer_free(struct transfer *t)
{
	if (!t)
		return;
	if (t->easy) {
		curl_multi_remove_handle(t->s->multi, t->easy);
		curl_easy_cleanup(t->easy);
	}
	if (t->body)
		fclose(t->body);
	curl_slist_free_all(t->headers);
	buf_finish(&t->response);
	free(t->url);
	free(t);
}

/* Sets up an easy handle with the common options. Returns 0 or -EIO. */
static int transfer_setup(struct sender *s, struct transfer *t, const char *status_url)
{
	const struct config *cfg = s->d->cfg;
	CURL *e = t->easy = curl_easy_init();
	if (!e)
		return -ENOMEM;
	CURLcode rc = CURLE_OK;
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val); } while (0)
	SET(CURLOPT_URL, t->url);
	SET(CURLOPT_PRIVATE, t);
	SET(CURLOPT_ERRORBUFFER, t->errbuf);
	SET(CURLOPT_WRITEFUNCTION, on_body);
	SET(CURLOPT_WRITEDATA, t);
	SET(CURLOPT_HEADERFUNCTION, on_header);
	SET(CURLOPT_HEADERDATA, t);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_FOLLOWLOCATION, 0L);
	SET(CURLOPT_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_TIMEOUT_MS, (long)cfg->target.timeout_ms);
	SET(CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->target.connect_timeout_ms);
	/* A stalled transfer (under 1 byte/s) fails well before the total timeout. */
	long stall = (long)(cfg->target.timeout_ms / 2000);
	SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
	SET(CURLOPT_LOW_SPEED_TIME, stall < 1 ? 1L : stall > 30 ? 30L : stall);
	SET(CURLOPT_USERAGENT, "tpsyncd/" TPSYNC_VERSION);
	if (cfg->target.ca_file)
		SET(CURLOPT_CAINFO, cfg->target.ca_file);
#undef SET
	if (rc != CURLE_OK) {
		log_err("msg=\"curl setup failed\" error=\"%s\"", curl_easy_strerror(rc));
		return -EIO;
	}
	t->headers = curl_slist_append(NULL, "Expect:");
	if (!t->headers)
		return -ENOMEM;
	if (s->token.value && target_may_send_token(cfg, t->url, status_url)) {
		char *auth;
		if (asprintf(&auth, "Authorization: Bearer %s", s->token.value) < 0)
			return -ENOMEM;
		struct curl_slist *h = curl_slist_append(t->headers, auth);
		explicit_bzero(auth, strlen(auth));
		free(auth);
		if (!h)
			return -ENOMEM;
		t->headers = h;
	}
	return 0;
}

static int transfer_start(struct sender *s, struct transfer *t)
{
	if (curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers) != CURLE_OK)
		return -EIO;
	CURLMcode mc = curl_multi_add_handle(s->multi, t->easy);
	if (mc != CURLM_OK) {
		log_err("msg=\"curl_multi_add_handle failed\" error=\"%s\"", curl_multi_strerror(mc));
		return -EIO;
	}
	t->started_at = now_ms();
	record_call(s, t->started_at);
	t->next = s->transfers;
	s->transfers = t;
	if (t->kind == XFER_SUBMIT)
		s->n_submits++;
	else
		s->n_polls++;
	return 0;
}

/* --- state transitions ---------------------------------------------------------- */

static int exec_batch(struct sender *s, const char *sql, int64_t id)
{
	sqlite3_stmt *st = store_stmt(s->d->st, sql);
	if (!st)
		return -EIO;
	sqlite3_bind_int64(st, 1, id);
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

static void note_error(struct sender *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_error(struct sender *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->last_error, sizeof(s->last_error), fmt, ap);
	va_end(ap);
}

static void db_failed(struct sender *s, const char *what)
{
	store_die_on_io_error(s->d->st);
	log_err("msg=\"state database error\" during=\"%s\" error=\"%s\"", what, sqlite3_errmsg(s->d->st->db));
	note_error(s, "state database error during %s: %s", what, sqlite3_errmsg(s->d->st->db));
	store_rollback(s->d->st);
}

/* Records that the answer to batch id's request never came: Target may still
 * apply it, so its profiles' latest values go out again once target.timeout has
 * passed. Counted from now (when the loss is seen), not from sending: a request
 * the client gave up on at its timeout may still be applied just after. */
static int add_echoes(struct sender *s, int64_t id)
{
	sqlite3_stmt *st = store_stmt(s->d->st,
				      "INSERT INTO echoes (profile, due_at) SELECT profile, ?2 FROM batch_rows"
				      " WHERE batch_id = ?1"
				      " ON CONFLICT (profile) DO UPDATE SET due_at = max(due_at, excluded.due_at)");
	if (!st)
		return -EIO;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int64(st, 2, now_ms() + s->d->cfg->target.timeout_ms);
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

/* Logs and shows in status that batch id became dead letters. */
static void report_dead(struct sender *s, int64_t id, const char *reason)
{
	log_err("msg=\"batch dead-lettered\" batch=%lld reason=\"%s\"", (long long)id, reason);
	note_error(s, "batch %lld dead-lettered: %s", (long long)id, reason);
}

/* Puts batch id back to "ready" after a failed attempt, or dead-letters it when
 * it has no tries or time left. */
static void retry_batch(struct sender *s, int64_t id, long http, const char *why, int64_t retry_after_ms,
			bool is_uncertain, bool counts_failure)
{
	const struct config *cfg = s->d->cfg;
	struct store *st = s->d->st;
	int64_t now = now_ms();
	int64_t attempts = 0, created = now;
	sqlite3_stmt *q = store_stmt(st, "SELECT attempts, created_at, failures FROM batches WHERE id = ?");
	if (!q)
		{ db_failed(s, "retry"); return; }
	sqlite3_bind_int64(q, 1, id);
	int64_t failures = 0;
	if (sqlite3_step(q) == SQLITE_ROW) {
		attempts = sqlite3_column_int64(q, 0);
		created = sqlite3_column_int64(q, 1);
		failures = sqlite3_column_int64(q, 2);
	}
	sqlite3_reset(q);
	/* Out of tries (success=false too often) or out of time: a dead letter. */
	char reason[600] = "";
	if (counts_failure)
		failures++;
	if (counts_failure && failures >= cfg->retry.max_failures)
		snprintf(reason, sizeof(reason), "Target rejected the batch %lld times: %s", (long long)failures, why);
	else if (now - created > cfg->retry.give_up_after_ms)
		snprintf(reason, sizeof(reason), "not delivered within retry.give_up_after; last error: %s", why);
	if (store_begin(st) < 0)
		{ db_failed(s, "retry"); return; }
	if (is_uncertain && add_echoes(s, id) < 0)
		{ db_failed(s, "retry"); return; }
	if (reason[0]) {
		if (batch_kill(st, id, reason, why) < 0 || store_commit(st) < 0)
			{ db_failed(s, "dead-letter"); return; }
		report_dead(s, id, reason);
		return;
	}
	int64_t delay = backoff_delay(cfg->retry.initial_ms, cfg->retry.max_ms, (unsigned)(attempts > 0 ? attempts : 1),
				      backoff_random());
	if (retry_after_ms >= 0)
		delay = retry_after_ms < cfg->retry.max_ms ? retry_after_ms : cfg->retry.max_ms;
	sqlite3_stmt *u = store_stmt(st, "UPDATE batches SET state = 'ready', next_attempt_at = ?2, http_status = ?3,"
					 " last_error = ?4, failures = ?5 WHERE id = ?1");
	if (!u)
		{ db_failed(s, "retry"); return; }
	sqlite3_bind_int64(u, 1, id);
	sqlite3_bind_int64(u, 2, now + delay);
	if (http)
		sqlite3_bind_int64(u, 3, http);
	sqlite3_bind_text(u, 4, why, -1, SQLITE_STATIC);
	sqlite3_bind_int64(u, 5, failures);
	int rc = sqlite3_step(u);
	sqlite3_reset(u);
	if (rc != SQLITE_DONE || store_commit(st) < 0)
		{ db_failed(s, "retry"); return; }
	log_warn("msg=\"batch will be retried\" batch=%lld attempt=%lld delay_ms=%lld reason=\"%s\"", (long long)id,
		 (long long)attempts, (long long)delay, why);
	note_error(s, "batch %lld: %s", (long long)id, why);
}

static void mark_auth_failed(struct sender *s, long http)
{
	int64_t now = now_ms();
	if (!s->is_auth_failed)
		log_err("msg=\"authentication failed; delivery paused until the token changes\" http=%ld", http);
	s->is_auth_failed = true;
	s->auth_failures++;
	s->auth_probe_at = now + s->d->cfg->retry.max_ms;
	note_error(s, "authentication failed (HTTP %ld); waiting for a new token", http);
	int r = token_load(&s->token, s->d->cfg);
	if (r < 0)
		log_err("msg=\"cannot read token\" path=\"%s\" error=\"%s\"", s->token.path, strerror(-r));
}

/* Copies up to 200 bytes of a response for error messages, printable only. */
static void excerpt(const struct buf *b, char *out, size_t size)
{
	size_t n = 0;
	for (size_t i = 0; i < b->len && n + 1 < size && n < 200; i++) {
		unsigned char c = (unsigned char)b->data[i];
		out[n++] = c >= 0x20 && c < 0x7f && c != '"' ? (char)c : ' ';
	}
	out[n] = '\0';
}

static void kill_batch(struct sender *s, int64_t id, const char *reason, const char *answer)
{
	struct store *st = s->d->st;
	if (store_begin(st) < 0 || batch_kill(st, id, reason, answer) < 0 || store_commit(st) < 0)
		{ db_failed(s, "dead-letter"); return; }
	report_dead(s, id, reason);
}

static void accept_batch(struct sender *s, int64_t id, const struct target_answer *a)
{
	struct store *st = s->d->st;
	int64_t now = now_ms();
	const char *bid = NULL;
	if (a->batch_status) {
		bid = strstr(a->batch_status, "batchId=");
		if (bid)
			bid += 8;
	}
	if (store_begin(st) < 0 || batch_accept(st, id) < 0)
		{ db_failed(s, "accept"); return; }
	sqlite3_stmt *u = store_stmt(st, "UPDATE batches SET state = ?2, answered_at = ?3, http_status = 200,"
					 " status_url = ?4, target_batch_id = ?5, next_poll_at = ?6, last_error = NULL,"
					 " completed_at = ?7 WHERE id = ?1");
	if (!u)
		{ db_failed(s, "accept"); return; }
	sqlite3_bind_int64(u, 1, id);
	/* Without a status URL there is nothing to poll: the submission is all we get. */
	sqlite3_bind_text(u, 2, a->batch_status ? "submitted" : "complete", -1, SQLITE_STATIC);
	sqlite3_bind_int64(u, 3, now);
	if (a->batch_status)
		sqlite3_bind_text(u, 4, a->batch_status, -1, SQLITE_STATIC);
	if (bid)
		sqlite3_bind_text(u, 5, bid, (int)strcspn(bid, "&"), SQLITE_STATIC);
	sqlite3_bind_int64(u, 6, now + s->d->cfg->target.poll_interval_ms);
	if (!a->batch_status)
		sqlite3_bind_int64(u, 7, now);
	int rc = sqlite3_step(u);
	sqlite3_reset(u);
	if (rc != SQLITE_DONE)
		{ db_failed(s, "accept"); return; }
	if (!a->batch_status && exec_batch(s, "DELETE FROM batch_rows WHERE batch_id = ?", id) < 0)
		{ db_failed(s, "accept"); return; }
	if (store_commit(st) < 0)
		{ db_failed(s, "accept"); return; }
	int64_t rows = 0;
	sqlite3_stmt *q = store_stmt(st, "SELECT rows FROM batches WHERE id = ?");
	if (q) {
		sqlite3_bind_int64(q, 1, id);
		if (sqlite3_step(q) == SQLITE_ROW)
			rows = sqlite3_column_int64(q, 0);
		sqlite3_reset(q);
	}
	s->rows_sent += rows;
	s->batches_accepted++;
	s->last_success_at = now;
	log_info("msg=\"batch accepted\" batch=%lld rows=%lld target_batch=%.*s", (long long)id, (long long)rows,
		 bid ? (int)strcspn(bid, "&") : 1, bid ? bid : "-");
}

static void observe_latency(struct sender *s, int64_t ms)
{
	double secs = (double)ms / 1000.0;
	int i = 0;
	while (i < LATENCY_BUCKETS && secs > latency_bounds[i])
		i++;
	s->latency_counts[i]++;
	s->latency_sum += secs;
	s->latency_n++;
}

static void submit_done(struct sender *s, struct transfer *t, CURLcode res, long http)
{
	int64_t id = t->batch_id;
	/* Target has answered; nothing of it is committed yet. */
	crash_point("after-answer");
	char body[256];
	excerpt(&t->response, body, sizeof(body));
	if (res != CURLE_OK) {
		/* Only a connection that was never made proves Target did not get it. */
		bool is_uncertain = res != CURLE_COULDNT_CONNECT && res != CURLE_COULDNT_RESOLVE_HOST &&
				    res != CURLE_COULDNT_RESOLVE_PROXY;
		char why[CURL_ERROR_SIZE + 64];
		snprintf(why, sizeof(why), "network: %s", t->errbuf[0] ? t->errbuf : curl_easy_strerror(res));
		s->retries_network++;
		retry_batch(s, id, 0, why, -1, is_uncertain, false);
		return;
	}
	char why[512];
	switch (http) {
	case 200: {
		struct target_answer a;
		if (target_parse_answer(t->response.data ? t->response.data : "", t->response.len, &a) < 0 ||
		    !a.has_success) {
			snprintf(why, sizeof(why), "unreadable answer (HTTP 200): %s", body);
			s->retries_garbage++;
			retry_batch(s, id, http, why, -1, true, false);
			return;
		}
		if (a.is_success) {
			accept_batch(s, id, &a);
		} else {
			snprintf(why, sizeof(why), "Target answered success=false: %s", a.message ? a.message : "(no message)");
			s->retries_rejected++;
			retry_batch(s, id, http, why, -1, false, true);
		}
		target_answer_finish(&a);
		return;
	}
	case 401:
	case 403:
		if (exec_batch(s, "UPDATE batches SET state = 'ready', attempts = max(attempts - 1, 0),"
				  " last_error = 'authentication failed' WHERE id = ?", id) < 0)
			db_failed(s, "auth");
		mark_auth_failed(s, http);
		return;
	case 413: {
		struct store *st = s->d->st;
		if (store_begin(st) < 0)
			{ db_failed(s, "split"); return; }
		int r = batch_split(st, id);
		if (r == -E2BIG) {
			store_rollback(st);
			{ kill_batch(s, id, "Target answered 413 (too large) for a single profile", body); return; }
		}
		if (r < 0 || store_commit(st) < 0)
			{ db_failed(s, "split"); return; }
		s->splits++;
		log_warn("msg=\"Target answered 413; batch split in two\" batch=%lld", (long long)id);
		return;
	}
	case 408:
	case 429:
	case 500:
	case 502:
	case 503:
	case 504:
		snprintf(why, sizeof(why), "HTTP %ld: %s", http, body);
		s->retries_http++;
		/* 408/429/503 say the request was not processed; a 5xx might have been. */
		retry_batch(s, id, http, why, t->retry_after_ms, http == 500 || http == 502 || http == 504, false);
		return;
	default:
		snprintf(why, sizeof(why), "HTTP %ld", http);
		kill_batch(s, id, why, body);
		return;
	}
}

static void poll_again(struct sender *s, int64_t id, int64_t delay, const char *why)
{
	/* Target accepted the batch but will not say how it ended: after
	 * retry.give_up_after of trying, stop asking (its values stay accepted). */
	sqlite3_stmt *q = store_stmt(s->d->st, "UPDATE batches SET state = 'unconfirmed', last_error = ?3"
					       " WHERE id = ?1 AND answered_at < ?2");
	if (!q)
		{ db_failed(s, "poll"); return; }
	sqlite3_bind_int64(q, 1, id);
	sqlite3_bind_int64(q, 2, now_ms() - s->d->cfg->retry.give_up_after_ms);
	sqlite3_bind_text(q, 3, why && *why ? why : "no final status within retry.give_up_after", -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	sqlite3_reset(q);
	if (rc != SQLITE_DONE)
		{ db_failed(s, "poll"); return; }
	if (sqlite3_changes(s->d->st->db) > 0) {
		log_warn("msg=\"no final status from Target; batch left unconfirmed\" batch=%lld", (long long)id);
		if (exec_batch(s, "DELETE FROM batch_rows WHERE batch_id = ?", id) < 0)
			db_failed(s, "poll");
		return;
	}
	sqlite3_stmt *u = store_stmt(s->d->st, "UPDATE batches SET polls = polls + 1, next_poll_at = ?2,"
					       " last_error = ?3 WHERE id = ?1");
	if (!u)
		{ db_failed(s, "poll"); return; }
	sqlite3_bind_int64(u, 1, id);
	sqlite3_bind_int64(u, 2, now_ms() + delay);
	sqlite3_bind_text(u, 3, why, -1, SQLITE_STATIC);
	if (sqlite3_step(u) != SQLITE_DONE)
		db_failed(s, "poll");
	sqlite3_reset(u);
}

static void poll_done(struct sender *s, struct transfer *t, CURLcode res, long http)
{
	const struct config *cfg = s->d->cfg;
	struct store *st = s->d->st;
	int64_t id = t->batch_id;
	int64_t polls = 0;
	sqlite3_stmt *q = store_stmt(st, "SELECT polls FROM batches WHERE id = ?");
	if (q) {
		sqlite3_bind_int64(q, 1, id);
		if (sqlite3_step(q) == SQLITE_ROW)
			polls = sqlite3_column_int64(q, 0);
		sqlite3_reset(q);
	}
	int64_t backoff = backoff_delay(cfg->retry.initial_ms, cfg->retry.max_ms, (unsigned)polls + 1, backoff_random());
	char why[CURL_ERROR_SIZE + 300];
	if (res != CURLE_OK) {
		snprintf(why, sizeof(why), "status poll: %s", t->errbuf[0] ? t->errbuf : curl_easy_strerror(res));
		{ poll_again(s, id, backoff, why); return; }
	}
	if (http == 401 || http == 403) {
		mark_auth_failed(s, http);
		{ poll_again(s, id, cfg->target.poll_interval_ms, "status poll: authentication failed"); return; }
	}
	char body[256];
	excerpt(&t->response, body, sizeof(body));
	struct target_answer a;
	if (http != 200 || target_parse_answer(t->response.data ? t->response.data : "", t->response.len, &a) < 0) {
		snprintf(why, sizeof(why), "status poll: HTTP %ld: %s", http, body);
		int64_t delay = t->retry_after_ms >= 0 ? t->retry_after_ms : backoff;
		{ poll_again(s, id, delay < cfg->retry.max_ms ? delay : cfg->retry.max_ms, why); return; }
	}
	s->polls_done++;
	const char *status = a.status ? a.status : "";
	if (strcmp(status, "complete") == 0) {
		sqlite3_stmt *u = store_stmt(st, "UPDATE batches SET state = 'complete', target_status = 'complete',"
						 " completed_at = ?2, consumed = ?3, successful = ?4, not_found = ?5, failed = ?6,"
						 " polls = polls + 1, last_error = NULL WHERE id = ?1");
		if (!u || store_begin(st) < 0) {
			target_answer_finish(&a);
			{ db_failed(s, "complete"); return; }
		}
		sqlite3_bind_int64(u, 1, id);
		sqlite3_bind_int64(u, 2, now_ms());
		int64_t counts[4] = { a.consumed, a.successful, a.not_found, a.failed };
		for (int i = 0; i < 4; i++)
			if (counts[i] >= 0)
				sqlite3_bind_int64(u, 3 + i, counts[i]);
		int rc = sqlite3_step(u);
		sqlite3_reset(u);
		if (rc != SQLITE_DONE || exec_batch(s, "DELETE FROM batch_rows WHERE batch_id = ?", id) < 0 ||
		    store_commit(st) < 0) {
			target_answer_finish(&a);
			{ db_failed(s, "complete"); return; }
		}
		s->batches_complete++;
		log_info("msg=\"batch complete\" batch=%lld successful=%lld not_found=%lld failed=%lld", (long long)id,
			 (long long)a.successful, (long long)a.not_found, (long long)a.failed);
		if (a.not_found > 0)
			log_warn("msg=\"Target did not find some profiles (v1 updates existing profiles only)\" batch=%lld "
				 "profiles_not_found=%lld", (long long)id, (long long)a.not_found);
	} else if (strcmp(status, "stuck") == 0) {
		if (store_begin(st) < 0 || batch_requeue_stuck(st, &s->sg, id) < 0 ||
		    exec_batch(s, "UPDATE batches SET target_status = 'stuck' WHERE id = ?", id) < 0 ||
		    store_commit(st) < 0) {
			target_answer_finish(&a);
			{ db_failed(s, "stuck"); return; }
		}
		log_warn("msg=\"Target reports the batch stuck; its values are queued again\" batch=%lld", (long long)id);
		note_error(s, "batch %lld stuck at Target", (long long)id);
	} else {
		poll_again(s, id, cfg->target.poll_interval_ms, "");
	}
	target_answer_finish(&a);
}

static void check_multi_info(struct sender *s)
{
	CURLMsg *msg;
	int left;
	bool any = false;
	while ((msg = curl_multi_info_read(s->multi, &left))) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		struct transfer *t = NULL;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
		CURLcode res = msg->data.result;
		long http = 0;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &http);
		for (struct transfer **pp = &s->transfers; *pp; pp = &(*pp)->next) {
			if (*pp == t) {
				*pp = t->next;
				break;
			}
		}
		s->last_answer_at = now_ms();
		observe_latency(s, s->last_answer_at - t->started_at);
		if (res == CURLE_COULDNT_CONNECT || res == CURLE_COULDNT_RESOLVE_HOST)
			unrecord_call(s);
		if (t->kind == XFER_SUBMIT) {
			s->n_submits--;
			submit_done(s, t, res, http);
		} else {
			s->n_polls--;
			poll_done(s, t, res, http);
		}
		transfer_free(t);
		any = true;
	}
	if (any) {
		sender_kick(s);
		daemon_progress(s->d);
	}
}

/* --- starting requests ------------------------------------------------------------ */

static int write_dry_run(struct sender *s, int64_t id)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/batch-%06llu.csv", s->d->dry_run_dir, (unsigned long long)++s->dry_run_seq);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		int e = errno;
		log_err("msg=\"cannot write dry-run batch\" path=\"%s\" error=\"%s\"", path, strerror(e));
		return -e;
	}
	int64_t n = batch_write_body(s->d->st, s->d->cfg, id, fd);
	if (close(fd) != 0 && n >= 0)
		n = -errno;
	if (n < 0) {
		log_err("msg=\"cannot write dry-run batch\" path=\"%s\" error=\"%s\"", path, strerror((int)-n));
		return (int)n;
	}
	/* Mark it delivered in the (scratch) state so the next batch can follow. */
	struct target_answer a = { 0 };
	accept_batch(s, id, &a);
	log_info("msg=\"dry run: batch written instead of sent\" batch=%lld path=\"%s\" bytes=%lld", (long long)id,
		 path, (long long)n);
	return 0;
}

static int start_submit(struct sender *s, int64_t id)
{
	struct store *st = s->d->st;
	int64_t now = now_ms();
	if (s->d->dry_run_dir)
		return write_dry_run(s, id);
	struct transfer *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->s = s;
	t->kind = XFER_SUBMIT;
	t->batch_id = id;
	t->retry_after_ms = -1;
	buf_init(&t->response);
	t->url = strdup(s->submit_url);
	t->body = tmpfile();
	int r = -ENOMEM;
	if (!t->url || !t->body)
		goto fail;
	int64_t size = batch_write_body(st, s->d->cfg, id, fileno(t->body));
	if (size < 0) {
		r = (int)size;
		goto fail;
	}
	rewind(t->body);
	if ((r = transfer_setup(s, t, NULL)) < 0)
		goto fail;
	CURLcode rc = curl_easy_setopt(t->easy, CURLOPT_POST, 1L);
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(t->easy, CURLOPT_READDATA, t->body);
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)size);
	struct curl_slist *h = curl_slist_append(t->headers, "Content-Type: application/x-www-form-urlencoded");
	if (rc != CURLE_OK || !h) {
		r = -EIO;
		goto fail;
	}
	t->headers = h;
	/* Durable before the request leaves: if we die now, the batch is "posting". */
	sqlite3_stmt *u = store_stmt(st, "UPDATE batches SET state = 'posting', attempts = attempts + 1, sent_at = ?2,"
					 " first_sent_at = coalesce(first_sent_at, ?2), bytes = ?3 WHERE id = ?1");
	sqlite3_stmt *ins = store_stmt(st, "INSERT INTO sends (at, rows) SELECT ?2, rows FROM batches WHERE id = ?1");
	if (!u || !ins || store_begin(st) < 0) {
		r = -EIO;
		goto fail;
	}
	sqlite3_bind_int64(u, 1, id);
	sqlite3_bind_int64(u, 2, now);
	sqlite3_bind_int64(u, 3, size);
	sqlite3_bind_int64(ins, 1, id);
	sqlite3_bind_int64(ins, 2, now);
	int c1 = sqlite3_step(u), c2 = sqlite3_step(ins);
	sqlite3_reset(u);
	sqlite3_reset(ins);
	if (c1 != SQLITE_DONE || c2 != SQLITE_DONE || store_commit(st) < 0) {
		store_rollback(st);
		r = -EIO;
		goto fail;
	}
	if ((r = transfer_start(s, t)) < 0) {
		exec_batch(s, "UPDATE batches SET state = 'ready' WHERE id = ?", id);
		goto fail;
	}
	log_debug("msg=\"batch posted\" batch=%lld bytes=%lld", (long long)id, (long long)size);
	crash_point("after-post");
	return 0;
fail:
	transfer_free(t);
	return r;
}

static bool is_polling(struct sender *s, int64_t id)
{
	for (struct transfer *t = s->transfers; t; t = t->next)
		if (t->kind == XFER_POLL && t->batch_id == id)
			return true;
	return false;
}

static int start_poll(struct sender *s, int64_t id, const char *status_url)
{
	struct transfer *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->s = s;
	t->kind = XFER_POLL;
	t->batch_id = id;
	t->retry_after_ms = -1;
	buf_init(&t->response);
	t->url = target_status_url(status_url);
	int r = -ENOMEM;
	if (t->url && (r = transfer_setup(s, t, status_url)) == 0 && (r = transfer_start(s, t)) == 0)
		return 0;
	transfer_free(t);
	return r;
}

/* --- scheduling ------------------------------------------------------------------ */

static void set_blocked(struct sender *s, const char *why, int64_t until)
{
	snprintf(s->blocked, sizeof(s->blocked), "%s", why);
	s->blocked_until = until;
}

static void take_earlier(int64_t *wake, int64_t t)
{
	if (t > 0 && (*wake == 0 || t < *wake))
		*wake = t;
}

/* Due echoes whose profiles are in no request: stage their latest values again. */
static int64_t run_echoes(struct sender *s, int64_t now)
{
	struct store *st = s->d->st;
	int64_t next = store_query_int(st, "SELECT min(due_at) FROM echoes", 0);
	if (next == 0 || next > now)
		return next;
	sqlite3_stmt *q = store_stmt(st, "SELECT e.profile, p.accepted FROM echoes e JOIN profiles p ON p.id = e.profile"
					 " WHERE e.due_at <= ?1 AND p.inflight_batch IS NULL LIMIT 10000");
	sqlite3_stmt *del = store_stmt(st, "DELETE FROM echoes WHERE profile = ?");
	if (!q || !del || store_begin(st) < 0) {
		db_failed(s, "echo");
		return now + 1000;
	}
	struct attrset ids;
	attrset_init(&ids);
	sqlite3_bind_int64(q, 1, now);
	int n = 0, r = 0;
	while (r == 0 && sqlite3_step(q) == SQLITE_ROW) {
		const char *profile = (const char *)sqlite3_column_text(q, 0);
		attrset_clear(&ids);
		if (sqlite3_column_type(q, 1) != SQLITE_NULL &&
		    attrset_decode(&ids, sqlite3_column_blob(q, 1), (size_t)sqlite3_column_bytes(q, 1)) < 0)
			attrset_clear(&ids);
		r = stage_refresh(&s->sg, profile, &ids);
		sqlite3_reset(del);
		sqlite3_bind_text(del, 1, profile, -1, SQLITE_STATIC);
		if (r == 0 && sqlite3_step(del) != SQLITE_DONE)
			r = -EIO;
		n++;
	}
	sqlite3_reset(q);
	sqlite3_reset(del);
	attrset_finish(&ids);
	if (r < 0 || store_commit(st) < 0) {
		db_failed(s, "echo");
		return now + 1000;
	}
	if (n)
		log_info("msg=\"resending latest values after unanswered requests\" profiles=%d", n);
	/* Echoes of profiles still in flight wait for that request's answer (its
	 * completion kicks the sender); others due now were beyond this round's limit
	 * and are taken at once. */
	next = store_query_int(st, "SELECT min(e.due_at) FROM echoes e JOIN profiles p ON p.id = e.profile"
				   " WHERE p.inflight_batch IS NULL", 0);
	return next ? (next > now ? next : now + 1) : 0;
}

/* Dead-letters ready batches older than retry.give_up_after. */
static void give_up_old(struct sender *s, int64_t now)
{
	sqlite3_stmt *q = store_stmt(s->d->st, "SELECT id FROM batches WHERE state = 'ready' AND created_at < ? LIMIT 1");
	if (!q)
		return;
	sqlite3_bind_int64(q, 1, now - s->d->cfg->retry.give_up_after_ms);
	int64_t id = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
	sqlite3_reset(q);
	if (id)
		kill_batch(s, id, "not delivered within retry.give_up_after", "");
}

static void pump(struct sender *s)
{
	const struct config *cfg = s->d->cfg;
	struct store *st = s->d->st;
	int64_t now = now_ms(), wake = 0, free_at = 0;

	if (s->d->is_stopping)
		return;
	s->blocked[0] = '\0';
	s->blocked_until = 0;
	take_earlier(&wake, run_echoes(s, now));
	give_up_old(s, now);

	bool may_submit = !s->is_paused;
	int max_submits = (int)cfg->batch.max_in_flight;
	if (s->is_paused)
		set_blocked(s, "paused (tpsyncctl pause)", 0);
	if (s->is_auth_failed) {
		if (token_changed(&s->token) && token_load(&s->token, cfg) == 0) {
			log_info("msg=\"token file changed; resuming delivery\"");
			s->is_auth_failed = false;
		} else if (now >= s->auth_probe_at) {
			max_submits = 1; /* one probe; its answer decides */
			s->auth_probe_at = now + cfg->retry.max_ms;
		} else {
			may_submit = false;
			set_blocked(s, "authentication failed; waiting for a new token (SIGHUP or token file change)",
				    s->auth_probe_at);
			take_earlier(&wake, s->auth_probe_at);
		}
	}
	while (may_submit && s->n_submits < max_submits) {
		if (!rate_ok(s, now, &free_at)) {
			set_blocked(s, "limits.calls_per_minute", free_at);
			take_earlier(&wake, free_at);
			break;
		}
		sqlite3_stmt *q = store_stmt(st, "SELECT id FROM batches WHERE state = 'ready' AND next_attempt_at <= ?"
						 " ORDER BY id LIMIT 1");
		if (!q)
			break;
		sqlite3_bind_int64(q, 1, now);
		int64_t id = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
		sqlite3_reset(q);
		if (!id) {
			take_earlier(&wake, store_query_int(st, "SELECT min(next_attempt_at) FROM batches WHERE state = 'ready'", 0));
			int64_t since = 0;
			q = store_stmt(st, "SELECT pending_since FROM profiles WHERE pending IS NOT NULL AND inflight_batch IS NULL"
					   " ORDER BY pending_seq LIMIT 1");
			if (!q)
				break;
			if (sqlite3_step(q) == SQLITE_ROW)
				since = sqlite3_column_int64(q, 0);
			sqlite3_reset(q);
			if (!since)
				break;
			if (!s->is_flush && now < since + cfg->batch.linger_ms && !s->d->is_once) {
				take_earlier(&wake, since + cfg->batch.linger_ms);
				break;
			}
			int64_t sent_today = 0;
			sqlite3_stmt *u = store_stmt(st, "SELECT coalesce(sum(rows), 0), min(at) FROM sends WHERE at > ?");
			int64_t oldest = now;
			if (u) {
				sqlite3_bind_int64(u, 1, now - 86400000);
				if (sqlite3_step(u) == SQLITE_ROW) {
					sent_today = sqlite3_column_int64(u, 0);
					oldest = sqlite3_column_type(u, 1) == SQLITE_NULL ? now : sqlite3_column_int64(u, 1);
				}
				sqlite3_reset(u);
			}
			int64_t budget = cfg->limits.rows_per_day - sent_today;
			if (budget <= 0) {
				set_blocked(s, "limits.rows_per_day", oldest + 86400000);
				take_earlier(&wake, oldest + 86400000);
				break;
			}
			id = batch_build(st, cfg, budget);
			if (id < 0) {
				db_failed(s, "building a batch");
				take_earlier(&wake, now + 1000);
				break;
			}
			if (id == 0) {
				s->is_flush = false;
				break;
			}
			log_debug("msg=\"batch built\" batch=%lld", (long long)id);
		}
		int r = start_submit(s, id);
		if (r < 0) {
			log_err("msg=\"cannot start request\" batch=%lld error=\"%s\"", (long long)id, strerror(-r));
			take_earlier(&wake, now + 1000);
			break;
		}
		if (s->d->dry_run_dir)
			continue;
	}

	/* Status polls share the call budget but never hold submissions back. */
	sqlite3_stmt *q = store_stmt(st, "SELECT id, status_url, next_poll_at FROM batches WHERE state = 'submitted'"
					 " ORDER BY next_poll_at LIMIT 64");
	if (q) {
		while (sqlite3_step(q) == SQLITE_ROW && s->n_polls < MAX_POLLS_IN_FLIGHT) {
			int64_t id = sqlite3_column_int64(q, 0), at = sqlite3_column_int64(q, 2);
			if (is_polling(s, id))
				continue;
			if (at > now) {
				take_earlier(&wake, at);
				break;
			}
			if (!rate_ok(s, now, &free_at)) {
				if (!s->blocked[0])
					set_blocked(s, "limits.calls_per_minute", free_at);
				take_earlier(&wake, free_at);
				break;
			}
			if (start_poll(s, id, (const char *)sqlite3_column_text(q, 1)) < 0) {
				take_earlier(&wake, now + 1000);
				break;
			}
		}
		sqlite3_reset(q);
	}
	if (wake) {
		int64_t delay = wake - now_ms();
		if (delay < 0)
			delay = 0;
		struct timeval tv = { delay / 1000, (delay % 1000) * 1000 };
		if (evtimer_add(s->wake, &tv) < 0)
			log_err("msg=\"cannot arm sender timer\"");
	}
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
	pump(arg);
}

/* --- lifecycle and status ------------------------------------------------------------ */

static int recover(struct sender *s)
{
	struct store *st = s->d->st;
	int64_t n = store_query_int(st, "SELECT count(*) FROM batches WHERE state = 'posting'", 0);
	if (n == 0)
		return 0;
	if (store_begin(st) < 0)
		return -EIO;
	static const char *const steps[] = {
		"INSERT INTO echoes (profile, due_at) SELECT b.profile, c.sent_at + ?1 FROM batch_rows b"
		" JOIN batches c ON c.id = b.batch_id WHERE c.state = 'posting'"
		" ON CONFLICT (profile) DO UPDATE SET due_at = max(due_at, excluded.due_at)",
		"UPDATE batches SET state = 'ready', next_attempt_at = 0,"
		" last_error = 'answer never received (daemon stopped while sending)' WHERE state = 'posting'",
	};
	for (size_t i = 0; i < 2; i++) {
		sqlite3_stmt *q = store_stmt(st, steps[i]);
		if (!q)
			goto fail;
		if (i == 0)
			sqlite3_bind_int64(q, 1, s->d->cfg->target.timeout_ms);
		int rc = sqlite3_step(q);
		sqlite3_reset(q);
		if (rc != SQLITE_DONE)
			goto fail;
	}
	if (store_commit(st) < 0)
		return -EIO;
	log_warn("msg=\"requests whose answer never came will be sent again\" batches=%lld", (long long)n);
	return 0;
fail:
	store_rollback(st);
	return -EIO;
}

struct sender *sender_create(struct daemon *d)
{
	struct sender *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->d = d;
	stage_init(&s->sg, d->st);
	s->calls_cap = (size_t)d->cfg->limits.calls_per_minute;
	s->calls = calloc(s->calls_cap, sizeof(*s->calls));
	s->multi = curl_multi_init();
	s->curl_timer = evtimer_new(d->base, on_curl_timer, s);
	s->wake = evtimer_new(d->base, on_wake, s);
	s->submit_url = target_submit_url(d->cfg);
	if (!s->calls || !s->multi || !s->curl_timer || !s->wake || !s->submit_url) {
		log_err("msg=\"cannot set up the sender\" error=\"out of memory\"");
		goto fail;
	}
	CURLMcode mc = curl_multi_setopt(s->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
	if (mc == CURLM_OK)
		mc = curl_multi_setopt(s->multi, CURLMOPT_SOCKETDATA, s);
	if (mc == CURLM_OK)
		mc = curl_multi_setopt(s->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
	if (mc == CURLM_OK)
		mc = curl_multi_setopt(s->multi, CURLMOPT_TIMERDATA, s);
	if (mc == CURLM_OK)
		mc = curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)d->cfg->batch.max_in_flight + MAX_POLLS_IN_FLIGHT);
	if (mc != CURLM_OK) {
		log_err("msg=\"cannot set up curl\" error=\"%s\"", curl_multi_strerror(mc));
		goto fail;
	}
	int r = token_load(&s->token, d->cfg);
	if (r < 0) {
		log_err("msg=\"cannot read token file\" path=\"%s\" error=\"%s\"", d->cfg->target.token_file, strerror(-r));
		goto fail;
	}
	if (recover(s) < 0) {
		log_err("msg=\"cannot recover unanswered requests\" error=\"%s\"", sqlite3_errmsg(d->st->db));
		goto fail;
	}
	sender_kick(s);
	return s;
fail:
	sender_destroy(s);
	return NULL;
}

void sender_destroy(struct sender *s)
{
	if (!s)
		return;
	while (s->transfers) {
		struct transfer *t = s->transfers;
		s->transfers = t->next;
		transfer_free(t);
	}
	if (s->multi)
		curl_multi_cleanup(s->multi);
	if (s->curl_timer)
		event_free(s->curl_timer);
	if (s->wake)
		event_free(s->wake);
	token_finish(&s->token);
	stage_finish(&s->sg);
	free(s->calls);
	free(s->submit_url);
	free(s);
}

void sender_set_paused(struct sender *s, bool paused)
{
	s->is_paused = paused;
	log_info("msg=\"delivery %s\"", paused ? "paused" : "resumed");
	sender_kick(s);
}

void sender_flush(struct sender *s)
{
	s->is_flush = true;
	sender_kick(s);
}

int sender_reload_token(struct sender *s)
{
	int r = token_load(&s->token, s->d->cfg);
	if (r < 0) {
		log_err("msg=\"cannot read token file\" error=\"%s\"", strerror(-r));
		return r;
	}
	if (s->is_auth_failed) {
		s->is_auth_failed = false;
		log_info("msg=\"token reloaded; resuming delivery\"");
	}
	sender_kick(s);
	return 0;
}

int sender_reconfigure(struct sender *s)
{
	char *url = target_submit_url(s->d->cfg);
	size_t cap = (size_t)s->d->cfg->limits.calls_per_minute;
	int64_t *calls = calloc(cap, sizeof(*calls));
	if (!url || !calls) {
		free(url);
		free(calls);
		return -ENOMEM;
	}
	/* Keep the most recent calls so a reload cannot reset the rate window. */
	size_t keep = s->calls_n < cap ? s->calls_n : cap;
	for (size_t i = 0; i < keep; i++)
		calls[i] = s->calls[(s->calls_head + s->calls_n - keep + i) % s->calls_cap];
	free(s->calls);
	s->calls = calls;
	s->calls_cap = cap;
	s->calls_head = 0;
	s->calls_n = keep;
	free(s->submit_url);
	s->submit_url = url;
	sender_kick(s);
	return 0;
}

int sender_active(const struct sender *s)
{
	return s->n_submits + s->n_polls;
}

bool sender_is_drained(struct sender *s, bool include_status)
{
	struct store *st = s->d->st;
	if (s->n_submits)
		return false;
	if (store_query_int(st, "SELECT count(*) FROM profiles WHERE pending IS NOT NULL", 0) > 0)
		return false;
	if (store_query_int(st, "SELECT count(*) FROM batches WHERE state IN ('ready', 'posting')", 0) > 0)
		return false;
	if (store_query_int(st, "SELECT count(*) FROM echoes", 0) > 0)
		return false;
	if (include_status && store_query_int(st, "SELECT count(*) FROM batches WHERE state = 'submitted'", 0) > 0)
		return false;
	return true;
}

void sender_status(struct sender *s, json_t *obj)
{
	struct store *st = s->d->st;
	json_t *q = json_object();
	json_object_set_new(q, "pending_profiles",
			    json_integer(store_query_int(st, "SELECT count(*) FROM profiles WHERE pending IS NOT NULL", 0)));
	json_object_set_new(q, "batches_ready",
			    json_integer(store_query_int(st, "SELECT count(*) FROM batches WHERE state = 'ready'", 0)));
	json_object_set_new(q, "batches_in_flight", json_integer(s->n_submits));
	json_object_set_new(q, "batches_awaiting_status",
			    json_integer(store_query_int(st, "SELECT count(*) FROM batches WHERE state = 'submitted'", 0)));
	json_object_set_new(q, "dead_letters", json_integer(store_query_int(st, "SELECT count(*) FROM dead_letters", 0)));
	json_object_set_new(q, "oldest_pending_at", json_integer(store_query_int(st,
		"SELECT min(pending_since) FROM profiles WHERE pending IS NOT NULL", 0)));
	json_object_set_new(obj, "queue", q);

	json_t *dl = json_object();
	const char *state = s->is_paused ? "paused" : s->is_auth_failed ? "authentication failed" : s->blocked[0] ? "held back" : "running";
	json_object_set_new(dl, "state", json_string(state));
	if (s->blocked[0]) {
		json_object_set_new(dl, "held_back_by", json_string(s->blocked));
		if (s->blocked_until)
			json_object_set_new(dl, "held_back_until", json_integer(s->blocked_until));
	}
	json_object_set_new(dl, "rows_sent", json_integer(s->rows_sent));
	json_object_set_new(dl, "batches_accepted", json_integer(s->batches_accepted));
	json_object_set_new(dl, "batches_complete", json_integer(s->batches_complete));
	json_object_set_new(dl, "last_success_at", s->last_success_at ? json_integer(s->last_success_at) : json_null());
	json_object_set_new(dl, "last_error", s->last_error[0] ? json_string(s->last_error) : json_null());
	json_object_set_new(dl, "calls_last_minute", json_integer((json_int_t)s->calls_n));
	json_object_set_new(dl, "rows_sent_last_24h", json_integer(store_query_int(st,
		"SELECT coalesce(sum(rows), 0) FROM sends WHERE at > strftime('%s', 'now') * 1000 - 86400000", 0)));
	json_object_set_new(dl, "token", json_string(s->token.value ? "loaded" : "none"));
	json_object_set_new(obj, "delivery", dl);
}

const char *sender_status_line(struct sender *s)
{
	static char line[512];
	struct store *st = s->d->st;
	char ago[32] = "never";
	if (s->last_success_at)
		snprintf(ago, sizeof(ago), "%llds ago", (long long)(now_ms() - s->last_success_at) / 1000);
	snprintf(line, sizeof(line), "%s; %lld profiles pending, %lld batches awaiting status; last success %s",
		 s->is_paused ? "paused" : s->is_auth_failed ? "authentication failed" : s->blocked[0] ? s->blocked : "running",
		 (long long)store_query_int(st, "SELECT count(*) FROM profiles WHERE pending IS NOT NULL", 0),
		 (long long)store_query_int(st, "SELECT count(*) FROM batches WHERE state = 'submitted'", 0), ago);
	return line;
}

void sender_metrics(struct sender *s, FILE *out)
{
	fprintf(out, "# HELP tpsync_rows_sent_total Profile rows Target accepted.\n# TYPE tpsync_rows_sent_total counter\n");
	fprintf(out, "tpsync_rows_sent_total %lld\n", (long long)s->rows_sent);
	fprintf(out, "# HELP tpsync_retries_total Failed requests that will be retried, by cause.\n# TYPE tpsync_retries_total counter\n");
	fprintf(out, "tpsync_retries_total{cause=\"network\"} %lld\n", (long long)s->retries_network);
	fprintf(out, "tpsync_retries_total{cause=\"http\"} %lld\n", (long long)s->retries_http);
	fprintf(out, "tpsync_retries_total{cause=\"rejected\"} %lld\n", (long long)s->retries_rejected);
	fprintf(out, "tpsync_retries_total{cause=\"garbage\"} %lld\n", (long long)s->retries_garbage);
	fprintf(out, "tpsync_retries_total{cause=\"auth\"} %lld\n", (long long)s->auth_failures);
	fprintf(out, "# HELP tpsync_batch_splits_total Batches split after HTTP 413.\n# TYPE tpsync_batch_splits_total counter\n");
	fprintf(out, "tpsync_batch_splits_total %lld\n", (long long)s->splits);
	fprintf(out, "# HELP tpsync_request_duration_seconds Target request latency.\n# TYPE tpsync_request_duration_seconds histogram\n");
	int64_t cum = 0;
	for (int i = 0; i < LATENCY_BUCKETS; i++) {
		cum += s->latency_counts[i];
		fprintf(out, "tpsync_request_duration_seconds_bucket{le=\"%g\"} %lld\n", latency_bounds[i], (long long)cum);
	}
	cum += s->latency_counts[LATENCY_BUCKETS];
	fprintf(out, "tpsync_request_duration_seconds_bucket{le=\"+Inf\"} %lld\n", (long long)cum);
	fprintf(out, "tpsync_request_duration_seconds_sum %g\n", s->latency_sum);
	fprintf(out, "tpsync_request_duration_seconds_count %lld\n", (long long)s->latency_n);
	fprintf(out, "# HELP tpsync_last_success_timestamp_seconds When Target last accepted a batch.\n# TYPE tpsync_last_success_timestamp_seconds gauge\n");
	fprintf(out, "tpsync_last_success_timestamp_seconds %lld\n", (long long)(s->last_success_at / 1000));
}
