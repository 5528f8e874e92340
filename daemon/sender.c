/* SPDX-License-Identifier: MIT */
/* Delivery policy. Every step of a batch is committed (queue.c) before the next
 * one starts:
 *   ready --(commit "posting")--> POST --> submitted (values become the mirror)
 *   --> GET status ... --> complete | stuck (re-queued once) | dead.
 * A batch left "posting" had a request whose answer never came: it is sent again,
 * and since Target may still apply the lost request late, the latest values of
 * its profiles are sent once more after target.timeout (an echo). Each answer
 * is judged by target.c; this file only acts on the verdict. */
#include "sender.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "callrate.h"
#include "clock.h"
#include "crash.h"
#include "http.h"
#include "log.h"
#include "target.h"
#include "token.h"

#define MAX_POLLS_IN_FLIGHT 4
#define MAX_RESPONSE (1 << 20)
#define MAX_EXCERPT 4096
#define LATENCY_BUCKETS 12
#define DAY_MS (86400LL * 1000)
/* Target counts calls in a minute by their arrival; a call is recorded here
 * when it starts, and connecting or a TLS handshake can delay its arrival, so
 * the window kept is a second longer than Target's. */
#define CALL_WINDOW_MS 61000
/* Folding complete batches into the mirror's accepted column, in the
 * background while idle: profiles per slice (about 30 ms at 1M), and the
 * pause between slices. */
#define FOLD_ROWS 10000
#define FOLD_PAUSE_MS 5

enum transfer_kind { XFER_SUBMIT, XFER_POLL };

struct transfer {
	struct http_call call;
	struct sender *s;
	enum transfer_kind kind;
	int64_t batch_id;
	char *url;
	FILE *body;    /* a submission's body */
	FILE *answer;  /* a poll's answer, streamed to a file: it can list 500,000 failed rows */
	struct transfer *next;
};

struct sender {
	struct event_base *base;
	struct store *st;
	struct queue *q;
	const struct config *cfg;
	struct sender_options opts;
	const struct sender_listener *l;
	void *arg;
	struct http *http;
	struct event *wake;
	struct event *fold;         /* the next slice of queue_fold */
	struct transfer *transfers;
	int n_submits, n_polls;
	struct callrate calls;      /* every call to the bulk API: limits.calls_per_minute */
	struct callrate poll_calls; /* the part polls may use: limits.poll_calls_per_minute */
	struct token token;
	bool is_paused;
	bool is_auth_failed;
	bool is_renew_asked;        /* target.oauth: a 401 asked for a new token; cleared by a success */
	bool is_token_held;         /* target.oauth: the token is being replaced; start no call */
	char token_problem[300];    /* target.oauth: why there is no token */
	bool is_flush;
	bool is_stopping;
	int64_t auth_probe_at;
	int64_t throttled_until;    /* Target answered 429/503: the whole account waits */
	unsigned throttle_level;    /* consecutive throttled answers, for the backoff */
	char blocked[400];
	int64_t blocked_until;
	char *submit_url;
	uint64_t dry_run_seq;
	/* counters for status and metrics */
	int64_t rows_sent, batches_accepted, batches_complete, last_success_at;
	int64_t retries_network, retries_http, retries_rejected, retries_garbage, auth_failures, splits;
	int64_t polls_done, throttled, rows_failed, rows_requeued, rows_failed_dead, batches_unconfirmed;
	char last_error[512];
	int64_t latency_counts[LATENCY_BUCKETS + 1];
	double latency_sum;
	int64_t latency_n;
};

static const double latency_bounds[LATENCY_BUCKETS] = { 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300 };

void sender_kick(struct sender *s)
{
	if (s && !s->is_stopping)
		event_active(s->wake, 0, 0);
}

static void note_error(struct sender *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_error(struct sender *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->last_error, sizeof(s->last_error), fmt, ap);
	va_end(ap);
}

/* A state database failure while doing what: logged once, shown in status.
 * An I/O error ends the process (store_die_on_io_error). */
static void db_failed(struct sender *s, const char *what)
{
	store_die_on_io_error(s->st);
	log_err("msg=\"state database error\" during=\"%s\" error=\"%s\"", what, store_error(s->st));
	note_error(s, "state database error during %s: %s", what, store_error(s->st));
}

/* Complete batches may be folded into the mirror: soon, in slices. */
static void fold_soon(struct sender *s)
{
	struct timeval tv = { 0, FOLD_PAUSE_MS * 1000 };
	if (!s->is_stopping && !evtimer_pending(s->fold, NULL) && evtimer_add(s->fold, &tv) < 0)
		log_err("msg=\"cannot arm fold timer\"");
}

static bool is_reading(struct sender *s);

/* A slice of folding, when nothing else is going on (it is housekeeping:
 * the mirror reads the same before and after). */
static void on_fold(evutil_socket_t fd, short what, void *arg)
{
	struct sender *s = arg;
	int64_t unused;
	if (s->n_submits > 0 || is_reading(s) || queue_next_ready(s->q, clock_wall_ms(), &unused) > 0) {
		struct timeval tv = { 1, 0 };
		if (evtimer_add(s->fold, &tv) < 0)
			log_err("msg=\"cannot arm fold timer\"");
		return;
	}
	bool is_more = false;
	if (queue_fold(s->q, FOLD_ROWS, &is_more) < 0)
		db_failed(s, "folding complete batches");
	else if (is_more)
		fold_soon(s);
}

static void report_dead(struct sender *s, int64_t id, const char *reason)
{
	log_err("msg=\"batch dead-lettered\" batch=%lld reason=\"%s\"", (long long)id, reason);
	note_error(s, "batch %lld dead-lettered: %s", (long long)id, reason);
}

static void kill_batch(struct sender *s, int64_t id, const char *reason, const char *answer, int64_t echo_due)
{
	if (queue_kill(s->q, id, reason, answer, echo_due) < 0)
		db_failed(s, "dead-letter");
	else
		report_dead(s, id, reason);
}

static void mark_auth_failed(struct sender *s, long http)
{
	if (!s->is_auth_failed)
		log_err("msg=\"authentication failed; delivery paused until the token changes\" http=%ld", http);
	s->is_auth_failed = true;
	s->auth_failures++;
	s->auth_probe_at = clock_wall_ms() + s->cfg->retry.max_ms;
	note_error(s, "authentication failed (HTTP %ld); waiting for a new token", http);
	if (s->cfg->target.oauth.is_set) {
		/* Renew once before pausing: another user of the account may
		 * have made a new token. */
		if (!s->is_renew_asked && s->l->auth_refused) {
			s->is_renew_asked = true;
			s->l->auth_refused(s->arg, s->token.value);
		}
		return;
	}
	int r = token_load(&s->token, s->cfg);
	if (r < 0)
		log_err("msg=\"cannot read token\" path=\"%s\" error=\"%s\"", s->token.path, strerror(-r));
}

/* Target answered with the token accepted: an authentication pause is over. */
static void auth_ok(struct sender *s)
{
	s->is_renew_asked = false;
	if (!s->is_auth_failed)
		return;
	s->is_auth_failed = false;
	s->blocked[0] = '\0'; /* the pump says again what holds work back */
	log_info("msg=\"Target accepts the token again; resuming delivery\"");
}

/* Target throttles the account (429/503, and other tools share the budget):
 * every call waits, submissions and polls alike, for Retry-After or a
 * growing backoff. */
static void throttle(struct sender *s, int64_t retry_after_ms)
{
	const struct config *cfg = s->cfg;
	s->throttle_level++;
	s->throttled++;
	int64_t delay = retry_after_ms >= 0 ? retry_after_ms
					    : backoff_delay(cfg->retry.initial_ms, cfg->retry.max_ms, s->throttle_level,
							    backoff_random());
	if (delay > cfg->retry.max_ms)
		delay = cfg->retry.max_ms;
	int64_t until = clock_wall_ms() + delay;
	if (until > s->throttled_until)
		s->throttled_until = until;
	log_warn("msg=\"Target is throttling the account; all calls wait\" delay_ms=%lld", (long long)delay);
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

/* --- answers ---------------------------------------------------------------------- */

/* After a failed attempt: batch id goes back to ready after a backoff, or is
 * dead-lettered when it has no tries or time left. */
static void retry_batch(struct sender *s, int64_t id, long http, const struct target_judgement *j,
			int64_t retry_after_ms)
{
	const struct config *cfg = s->cfg;
	int64_t now = clock_wall_ms();
	struct queue_batch b = { .created_at = now };
	if (queue_get(s->q, id, &b) < 0)
		{ db_failed(s, "retry"); return; }
	/* The answer may still be applied: the latest values follow after the timeout. */
	int64_t echo_due = j->is_uncertain ? now + cfg->target.timeout_ms : 0;
	bool counts_failure = j->verdict == TARGET_REJECTED;
	int64_t failures = b.failures + (counts_failure ? 1 : 0);
	/* Out of tries (success=false too often) or out of time: a dead letter. */
	char reason[800] = "";
	if (counts_failure && failures >= cfg->retry.max_failures)
		snprintf(reason, sizeof(reason), "Target rejected the batch %lld times: %s", (long long)failures, j->why);
	else if (now - b.created_at > cfg->retry.give_up_after_ms)
		snprintf(reason, sizeof(reason), "not delivered within retry.give_up_after; last error: %s", j->why);
	if (reason[0]) {
		kill_batch(s, id, reason, j->why, echo_due);
		return;
	}
	int64_t delay = backoff_delay(cfg->retry.initial_ms, cfg->retry.max_ms, (unsigned)(b.attempts > 0 ? b.attempts : 1),
				      backoff_random());
	if (j->use_retry_after && retry_after_ms >= 0)
		delay = retry_after_ms < cfg->retry.max_ms ? retry_after_ms : cfg->retry.max_ms;
	if (queue_retry(s->q, id, now + delay, http, j->why, failures, echo_due) < 0)
		{ db_failed(s, "retry"); return; }
	log_warn("msg=\"batch will be retried\" batch=%lld attempt=%lld delay_ms=%lld reason=\"%s\"", (long long)id,
		 (long long)b.attempts, (long long)delay, j->why);
	note_error(s, "batch %lld: %s", (long long)id, j->why);
}

/* Target accepted batch id (a dry run passes a NULL status URL). */
static void accept_batch(struct sender *s, int64_t id, const char *status_url)
{
	char bid[256] = "";
	if (status_url && !target_batch_id_of(status_url, bid, sizeof(bid)))
		bid[0] = '\0';
	int64_t now = clock_wall_ms();
	if (queue_accept(s->q, id, status_url, bid[0] ? bid : NULL, now + s->cfg->target.poll_interval_ms) < 0)
		{ db_failed(s, "accept"); return; }
	struct queue_batch b = { 0 };
	if (queue_get(s->q, id, &b) < 0)
		b.rows = 0;
	s->rows_sent += b.rows;
	s->batches_accepted++;
	if (!status_url)
		fold_soon(s);
	s->last_success_at = now;
	log_info("msg=\"batch accepted\" batch=%lld rows=%lld target_batch=%s", (long long)id, (long long)b.rows,
		 bid[0] ? bid : "-");
}

static void submit_done(struct sender *s, struct transfer *t)
{
	struct http_call *c = &t->call;
	int64_t id = t->batch_id;
	/* Target has answered; nothing of it is committed yet. */
	crash_point("after-answer");
	char body[256];
	http_excerpt(c, body, sizeof(body));
	struct target_answer a;
	bool parsed = c->result == CURLE_OK && c->status == 200 &&
		      target_parse_answer(c->response.data ? c->response.data : "", c->response.len, &a) == 0;
	struct target_judgement j;
	target_judge_submit(c->result, c->error, c->status, parsed ? &a : NULL, body, &j);
	if (j.is_throttled)
		throttle(s, c->retry_after_ms);
	else if (c->result == CURLE_OK)
		s->throttle_level = 0;
	if (c->result == CURLE_OK && j.verdict != TARGET_AUTH)
		auth_ok(s);
	switch (j.verdict) {
	case TARGET_ACCEPTED:
		accept_batch(s, id, a.batch_status);
		break;
	case TARGET_RETRY:
	case TARGET_REJECTED:
		if (j.cause == TARGET_CAUSE_NETWORK)
			s->retries_network++;
		else if (j.cause == TARGET_CAUSE_GARBAGE)
			s->retries_garbage++;
		else if (j.cause == TARGET_CAUSE_REJECTED)
			s->retries_rejected++;
		else
			s->retries_http++;
		retry_batch(s, id, c->result == CURLE_OK ? c->status : 0, &j, c->retry_after_ms);
		break;
	case TARGET_AUTH:
		if (queue_auth_failed(s->q, id) < 0)
			db_failed(s, "auth");
		mark_auth_failed(s, c->status);
		break;
	case TARGET_SPLIT: {
		int r = queue_split(s->q, id);
		if (r == -E2BIG) {
			kill_batch(s, id, "Target answered 413 (too large) for a single profile", body, 0);
		} else if (r < 0) {
			db_failed(s, "split");
		} else {
			s->splits++;
			log_warn("msg=\"Target answered 413; batch split in two\" batch=%lld", (long long)id);
		}
		break;
	}
	case TARGET_DEAD:
		kill_batch(s, id, j.why, body, 0);
		break;
	}
	if (parsed)
		target_answer_finish(&a);
}

static void poll_again(struct sender *s, int64_t id, int64_t delay, const char *why)
{
	if (queue_poll_again(s->q, id, clock_wall_ms() + delay, why) < 0)
		db_failed(s, "poll");
}

/* Batch id's status cannot be had any more: its profiles are sent again
 * rather than assumed delivered. */
static void unconfirm(struct sender *s, int64_t id, const char *why)
{
	int64_t n = 0;
	if (queue_unconfirm(s->q, id, why, &n) < 0) {
		db_failed(s, "unconfirming a batch");
		return;
	}
	s->batches_unconfirmed++;
	log_warn("msg=\"no final status from Target; the batch's profiles are sent again\" batch=%lld profiles=%lld "
		 "reason=\"%s\"", (long long)id, (long long)n, why);
	note_error(s, "batch %lld unconfirmed: %s", (long long)id, why);
}

/* The wait before the next poll of a batch that is still processing: the
 * first after target.poll_interval, then twice as long each time, up to
 * target.poll_max. */
static int64_t incomplete_delay(const struct config *cfg, int64_t polls)
{
	int64_t d = cfg->target.poll_interval_ms;
	for (int64_t i = 0; i < polls && d < cfg->target.poll_max_ms; i++)
		d *= 2;
	return d < cfg->target.poll_max_ms ? d : cfg->target.poll_max_ms;
}

/* Feeds queue_complete the failed rows, read again from the saved answer. */
static int feed_failed(void *arg, int (*sink)(void *sink_arg, const char *profile, size_t len), void *sink_arg)
{
	struct transfer *t = arg;
	struct target_answer again;
	int r = target_parse_status_fd(fileno(t->answer), &again, sink, sink_arg);
	if (r == 0)
		target_answer_finish(&again);
	return r;
}

static void complete(struct sender *s, struct transfer *t, const struct target_answer *a)
{
	int64_t id = t->batch_id;
	struct queue_counts_at_target counts = { a->consumed, a->successful, a->not_found, a->failed };
	struct queue_row_results res;
	int r = queue_complete(s->q, id, &counts, s->cfg->retry.max_failures, a->failed_listed ? feed_failed : NULL, t,
			       &res);
	if (r < 0) {
		if (r == -EIO)
			db_failed(s, "complete");
		else
			log_err("msg=\"cannot complete batch\" batch=%lld error=\"%s\"", (long long)id, strerror(-r));
		return;
	}
	s->batches_complete++;
	fold_soon(s);
	s->rows_failed += a->failed_listed;
	s->rows_requeued += res.requeued;
	s->rows_failed_dead += res.dead;
	log_info("msg=\"batch complete\" batch=%lld successful=%lld not_found=%lld failed=%lld", (long long)id,
		 (long long)a->successful, (long long)a->not_found, (long long)a->failed);
	if (a->failed_listed)
		log_warn("msg=\"Target reports rows failed; their profiles are sent again\" batch=%lld failed=%lld "
			 "requeued=%lld dead_lettered=%lld unknown=%lld", (long long)id, (long long)a->failed_listed,
			 (long long)res.requeued, (long long)res.dead, (long long)res.unknown);
	if (a->not_found > 0)
		log_warn("msg=\"Target did not find some profiles (v1 updates existing profiles only)\" batch=%lld "
			 "profiles_not_found=%lld", (long long)id, (long long)a->not_found);
}

static void poll_done(struct sender *s, struct transfer *t)
{
	const struct config *cfg = s->cfg;
	struct http_call *c = &t->call;
	int64_t id = t->batch_id;
	struct queue_batch b = { 0 };
	if (queue_get(s->q, id, &b) < 0)
		b.polls = 0;
	int64_t backoff = backoff_delay(cfg->retry.initial_ms, cfg->retry.max_ms, (unsigned)b.polls + 1, backoff_random());
	char body[256], why[CURL_ERROR_SIZE + 300];
	http_excerpt(c, body, sizeof(body));
	struct target_answer a;
	bool parsed = c->result == CURLE_OK && c->status == 200 && t->answer &&
		      target_parse_status_fd(fileno(t->answer), &a, NULL, NULL) == 0;
	enum target_poll_verdict v = target_judge_poll(c->result, c->error, c->status, parsed ? &a : NULL, body, why,
						       sizeof(why));
	if (c->result == CURLE_OK && (c->status == 429 || c->status == 503))
		throttle(s, c->retry_after_ms);
	else if (parsed)
		s->throttle_level = 0;
	if (v != TARGET_POLL_AUTH && c->result == CURLE_OK && c->status == 200)
		auth_ok(s);
	switch (v) {
	case TARGET_POLL_AUTH:
		/* A new token may be there already; if not, delivery pauses and
		 * the polls go on as probes. */
		if (token_changed(&s->token) && token_load(&s->token, cfg) == 0) {
			log_info("msg=\"token file changed; polling again with the new token\"");
			poll_again(s, id, 0, why);
		} else {
			mark_auth_failed(s, c->status);
			poll_again(s, id, cfg->target.poll_interval_ms, why);
		}
		break;
	case TARGET_POLL_RETRY: {
		int64_t delay = c->result == CURLE_OK && c->retry_after_ms >= 0 ? c->retry_after_ms : backoff;
		poll_again(s, id, delay < cfg->retry.max_ms ? delay : cfg->retry.max_ms, why);
		break;
	}
	case TARGET_POLL_GONE:
		unconfirm(s, id, why);
		break;
	case TARGET_POLL_COMPLETE:
		s->polls_done++;
		complete(s, t, &a);
		break;
	case TARGET_POLL_STUCK:
		s->polls_done++;
		if (queue_requeue_stuck(s->q, id) < 0) {
			db_failed(s, "stuck");
			break;
		}
		log_warn("msg=\"Target reports the batch stuck; its values are queued again\" batch=%lld", (long long)id);
		note_error(s, "batch %lld stuck at Target", (long long)id);
		break;
	case TARGET_POLL_INCOMPLETE:
		s->polls_done++;
		poll_again(s, id, incomplete_delay(cfg, b.polls + 1), "");
		break;
	}
	if (parsed)
		target_answer_finish(&a);
}

static void transfer_free(struct transfer *t)
{
	if (!t)
		return;
	http_call_finish(&t->call);
	if (t->body)
		fclose(t->body);
	if (t->answer)
		fclose(t->answer);
	free(t->url);
	free(t);
}

/* The http layer is done with a call. */
static void on_http_done(void *arg, struct http_call *call)
{
	struct sender *s = arg;
	struct transfer *t = (struct transfer *)call;
	for (struct transfer **pp = &s->transfers; *pp; pp = &(*pp)->next) {
		if (*pp == t) {
			*pp = t->next;
			break;
		}
	}
	observe_latency(s, clock_mono_ms() - call->started_at);
	if (!target_call_reached(call->result))
		callrate_unrecord(&s->calls);
	if (t->kind == XFER_SUBMIT) {
		s->n_submits--;
		submit_done(s, t);
	} else {
		s->n_polls--;
		if (fflush(t->answer) != 0 && call->result == CURLE_OK) {
			call->result = CURLE_WRITE_ERROR;
			snprintf(call->error, sizeof(call->error), "cannot keep the answer: %s", strerror(errno));
		}
		poll_done(s, t);
	}
	transfer_free(t);
	sender_kick(s);
	if (s->l && s->l->progress)
		s->l->progress(s->arg);
}

static const struct http_listener http_listener = { .done = on_http_done };

/* --- starting requests ------------------------------------------------------------ */

static struct transfer *transfer_new(struct sender *s, enum transfer_kind kind, int64_t id, const char *url)
{
	struct transfer *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->s = s;
	t->kind = kind;
	t->batch_id = id;
	buf_init(&t->call.response);
	t->url = strdup(url);
	if (!t->url) {
		free(t);
		return NULL;
	}
	const struct config *cfg = s->cfg;
	t->call.url = t->url;
	t->call.timeout_ms = cfg->target.timeout_ms;
	t->call.connect_timeout_ms = cfg->target.connect_timeout_ms;
	t->call.min_upload_speed = cfg->target.min_upload_speed;
	t->call.ca_file = cfg->target.ca_file;
	t->call.max_response = kind == XFER_POLL ? MAX_EXCERPT : MAX_RESPONSE;
	return t;
}

/* Starts t: the call is recorded against the budget. Returns 0 or a negative errno. */
static int transfer_start(struct sender *s, struct transfer *t)
{
	int r = http_start(s->http, &t->call);
	if (r < 0)
		return r;
	callrate_record(&s->calls, clock_wall_ms());
	if (t->kind == XFER_POLL)
		callrate_record(&s->poll_calls, clock_wall_ms());
	t->next = s->transfers;
	s->transfers = t;
	if (t->kind == XFER_SUBMIT)
		s->n_submits++;
	else
		s->n_polls++;
	return 0;
}

/* A batch's body as the sender has it: written while the batch was cut, or
 * not yet (queue_write_body). */
struct body {
	FILE *f;      /* NULL: none yet */
	int64_t size; /* > 0: f holds the whole body */
	char path[4096]; /* a dry run's file */
};

/* Where the next body goes: a temporary file, or a dry run's batch file. */
static int body_open(struct sender *s, struct body *b)
{
	b->size = 0;
	b->path[0] = '\0';
	if (!s->opts.dry_run_dir) {
		b->f = tmpfile();
		return b->f ? 0 : -errno;
	}
	snprintf(b->path, sizeof(b->path), "%s/batch-%06llu.csv", s->opts.dry_run_dir,
		 (unsigned long long)s->dry_run_seq + 1);
	int fd = open(b->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || !(b->f = fdopen(fd, "w+"))) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		log_err("msg=\"cannot write dry-run batch\" path=\"%s\" error=\"%s\"", b->path, strerror(e));
		return -e;
	}
	return 0;
}

/* Makes sure b holds batch id's whole body, from its start. Returns 0 or a
 * negative errno (logged for a dry run). */
static int body_fill(struct sender *s, int64_t id, struct body *b)
{
	if (!b->f) {
		int r = body_open(s, b);
		if (r < 0)
			return r;
	}
	if (b->size == 0) {
		if (ftruncate(fileno(b->f), 0) != 0 || lseek(fileno(b->f), 0, SEEK_SET) != 0)
			return -errno;
		b->size = queue_write_body(s->q, s->cfg, id, fileno(b->f));
	}
	if (b->size >= 0 && fseeko(b->f, 0, SEEK_SET) != 0)
		b->size = -errno;
	if (b->size < 0 && b->path[0])
		log_err("msg=\"cannot write dry-run batch\" path=\"%s\" error=\"%s\"", b->path,
			strerror((int)-b->size));
	return b->size < 0 ? (int)b->size : 0;
}

static int write_dry_run(struct sender *s, int64_t id, struct body *b)
{
	int r = body_fill(s, id, b);
	if (b->f && fclose(b->f) != 0 && r == 0)
		r = -errno;
	b->f = NULL;
	if (r < 0)
		return r;
	s->dry_run_seq++;
	/* Marked delivered in the (scratch) state so the next batch can follow. */
	accept_batch(s, id, NULL);
	log_info("msg=\"dry run: batch written instead of sent\" batch=%lld path=\"%s\" bytes=%lld", (long long)id,
		 b->path, (long long)b->size);
	return 0;
}

/* Posts batch id with its body b (which passes to the request). */
static int start_submit(struct sender *s, int64_t id, struct body *b)
{
	if (s->opts.dry_run_dir)
		return write_dry_run(s, id, b);
	struct transfer *t = transfer_new(s, XFER_SUBMIT, id, s->submit_url);
	if (!t)
		return -ENOMEM;
	int r = body_fill(s, id, b);
	t->body = b->f;
	b->f = NULL;
	if (r < 0)
		goto fail;
	int64_t size = b->size;
	t->call.body = t->body;
	t->call.body_size = size;
	t->call.content_type = "application/x-www-form-urlencoded";
	if (s->token.value && target_may_send_token(s->cfg, t->url, NULL))
		t->call.bearer = s->token.value;
	/* Durable before the request leaves: if we die now, the batch is "posting". */
	if (queue_mark_posting(s->q, id, clock_wall_ms(), size) < 0) {
		r = -EIO;
		goto fail;
	}
	if ((r = transfer_start(s, t)) < 0) {
		if (queue_mark_ready(s->q, id) < 0)
			db_failed(s, "starting a request");
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

/* A poll's answer goes to a file as it arrives. */
static int save_answer(void *arg, const char *data, size_t len)
{
	struct transfer *t = arg;
	return fwrite(data, 1, len, t->answer) == len ? 0 : -EIO;
}

static int start_poll(struct sender *s, int64_t id, const char *status_url)
{
	char *url = target_status_url(s->cfg, status_url);
	struct transfer *t = url ? transfer_new(s, XFER_POLL, id, url) : NULL;
	free(url);
	if (!t)
		return -ENOMEM;
	t->answer = tmpfile();
	if (!t->answer) {
		int r = -errno;
		transfer_free(t);
		return r;
	}
	t->call.on_data = save_answer;
	t->call.data_arg = t;
	if (s->token.value && target_may_send_token(s->cfg, t->url, status_url))
		t->call.bearer = s->token.value;
	int r = transfer_start(s, t);
	if (r < 0)
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

/* Due echoes: their profiles' latest values are staged again. Returns when the
 * next one is due (0: none). */
static int64_t run_echoes(struct sender *s, int64_t now)
{
	int n = 0;
	int64_t next = 0;
	if (queue_run_echoes(s->q, now, &n, &next) < 0) {
		db_failed(s, "echo");
		return now + 1000;
	}
	if (n)
		log_info("msg=\"resending latest values after unanswered requests\" profiles=%d", n);
	return next;
}

/* Whether a source is in the middle of a file or a database read: a batch
 * that is not full then waits (up to batch.max_wait) for the rest. */
static bool is_reading(struct sender *s)
{
	return s->l && s->l->is_reading && s->l->is_reading(s->arg);
}

/* Picks the next batch to submit: a ready one that is due, or a new one cut
 * from queued changes (see batch_rule). Returns its id (with its body in b
 * when it was written on the way), 0 for none (with *wake moved to when there
 * may be one), or -EIO. */
static int64_t next_batch(struct sender *s, int64_t now, int64_t *wake, struct body *b)
{
	const struct config *cfg = s->cfg;
	const struct store *st = s->st;
	int64_t next_at = 0;
	int64_t id = queue_next_ready(s->q, now, &next_at);
	if (id)
		return id;
	take_earlier(wake, next_at);
	/* The batch-cutting rule: at once when it is full; else once no change
	 * has come for batch.linger and no source is mid-read (at once in --once
	 * mode), or when the oldest change has waited batch.max_wait. */
	int64_t since = queue_oldest_unbatched(s->q);
	if (!since)
		return 0;
	bool reading = is_reading(s);
	int64_t quiet_at = st->staged.newest_at + cfg->batch.linger_ms, bound_at = since + cfg->batch.max_wait_ms;
	bool is_due = s->is_flush || now >= bound_at || (!reading && (s->opts.is_once || now >= quiet_at));
	bool may_be_full = st->staged.rows >= cfg->batch.max_rows || st->staged.bytes >= cfg->batch.max_bytes;
	take_earlier(wake, bound_at);
	if (!s->opts.is_once)
		take_earlier(wake, reading ? now + cfg->batch.linger_ms : quiet_at);
	if (!is_due && !may_be_full)
		return 0;
	int64_t budget = cfg->batch.max_rows;
	if (cfg->limits.rows_per_day > 0) {
		int64_t sent_today = 0, oldest = now;
		if (queue_rows_sent(s->q, now - DAY_MS, &sent_today, &oldest) < 0) {
			db_failed(s, "counting rows sent");
			return -EIO;
		}
		budget = cfg->limits.rows_per_day - sent_today;
		if (budget <= 0) {
			set_blocked(s, "limits.rows_per_day", oldest + DAY_MS);
			take_earlier(wake, oldest + DAY_MS);
			return 0;
		}
	}
	int r = body_open(s, b);
	if (r < 0) {
		log_err("msg=\"cannot open a batch body file\" error=\"%s\"", strerror(-r));
		return -EIO;
	}
	struct queue_build_opts o = { .max_rows = budget, .only_if_full = !is_due, .body_fd = fileno(b->f) };
	struct queue_cut cut;
	int64_t started = clock_mono_ms();
	r = queue_build(s->q, cfg, &o, &cut);
	if (r < 0) {
		if (r == -EIO)
			db_failed(s, "building a batch");
		else
			log_err("msg=\"cannot build a batch\" error=\"%s\"", strerror(-r));
		return -EIO;
	}
	if (cut.id == 0) {
		if (is_due)
			s->is_flush = false;
		log_debug("msg=\"no batch cut\" rows=%lld bytes=%lld ms=%lld", (long long)cut.rows, (long long)cut.bytes,
			  (long long)(clock_mono_ms() - started));
		return 0;
	}
	b->size = cut.has_body ? cut.bytes : 0;
	log_debug("msg=\"batch cut\" batch=%lld rows=%lld bytes=%lld full=%s body=%s ms=%lld", (long long)cut.id,
		  (long long)cut.rows, (long long)cut.bytes, cut.is_full ? "yes" : "no", cut.has_body ? "written" : "later",
		  (long long)(clock_mono_ms() - started));
	return cut.id;
}

struct poll_round {
	struct sender *s;
	int64_t now;
	int64_t *wake;
	bool is_submission_waiting; /* a submission waits for the call budget */
};

/* Whether a poll may take a call now: within limits.poll_calls_per_minute
 * always; beyond it only while nothing is queued for submission, and leaving
 * batch.max_in_flight calls free for what comes next (a batch's profiles
 * cannot go again until its status is known, so a call nothing else needs is
 * better spent on a poll). */
static bool poll_may_call(struct sender *s, const struct poll_round *p, int64_t *free_at)
{
	if (!callrate_may_call(&s->calls, p->now, free_at))
		return false;
	if (callrate_may_call(&s->poll_calls, p->now, free_at))
		return true;
	size_t spare_upto = (size_t)(s->cfg->limits.calls_per_minute - s->cfg->batch.max_in_flight);
	return !p->is_submission_waiting && s->cfg->limits.calls_per_minute > s->cfg->batch.max_in_flight &&
	       callrate_used(&s->calls, p->now) < spare_upto;
}

/* For each batch whose status poll is due: start it, within the budget
 * (poll_may_call); a batch past target.status_ttl is unconfirmed. */
static bool poll_one(void *arg, int64_t id, const char *status_url, int64_t answered_at)
{
	struct poll_round *p = arg;
	struct sender *s = p->s;
	int64_t free_at = 0;
	if (is_polling(s, id))
		return true;
	if (answered_at && p->now - answered_at > s->cfg->target.status_ttl_ms) {
		unconfirm(s, id, "no final status within target.status_ttl");
		sender_kick(s); /* its profiles are pending again */
		return true;
	}
	if (s->n_polls >= MAX_POLLS_IN_FLIGHT)
		return false;
	if (!poll_may_call(s, p, &free_at)) {
		if (!s->blocked[0])
			set_blocked(s, "limits.calls_per_minute", free_at);
		take_earlier(p->wake, free_at);
		return false;
	}
	if (start_poll(s, id, status_url) < 0) {
		take_earlier(p->wake, p->now + 1000);
		return false;
	}
	return true;
}

static void pump(struct sender *s)
{
	const struct config *cfg = s->cfg;
	int64_t now = clock_wall_ms(), wake = 0, free_at = 0;

	if (s->is_stopping)
		return;
	s->blocked[0] = '\0';
	s->blocked_until = 0;
	take_earlier(&wake, run_echoes(s, now));
	int64_t expired = queue_expired_ready(s->q, now - cfg->retry.give_up_after_ms);
	if (expired)
		kill_batch(s, expired, "not delivered within retry.give_up_after", "", 0);

	bool may_submit = !s->is_paused;
	int max_submits = (int)cfg->batch.max_in_flight;
	if (s->is_paused)
		set_blocked(s, "paused (tpsyncctl pause)", 0);
	bool is_throttled = now < s->throttled_until;
	if (is_throttled) {
		may_submit = false;
		set_blocked(s, "Target throttling (HTTP 429/503)", s->throttled_until);
		take_earlier(&wake, s->throttled_until);
	}
	/* target.oauth has not handed in a token yet: nothing can be sent. */
	bool is_tokenless = cfg->target.oauth.is_set && (!s->token.value || s->is_token_held);
	if (is_tokenless && s->is_token_held) {
		may_submit = false;
		set_blocked(s, "renewing the profile API token (target.oauth)", 0);
	} else if (is_tokenless) {
		may_submit = false;
		set_blocked(s, s->token_problem[0] ? s->token_problem : "waiting for a profile API token (target.oauth)",
			    0);
	} else if (s->is_auth_failed) {
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
		if (!callrate_may_call(&s->calls, now, &free_at)) {
			set_blocked(s, "limits.calls_per_minute", free_at);
			take_earlier(&wake, free_at);
			break;
		}
		struct body b = { 0 };
		int64_t id = next_batch(s, now, &wake, &b);
		if (id < 0)
			take_earlier(&wake, now + 1000);
		int r = id > 0 ? start_submit(s, id, &b) : 0;
		if (b.f) {
			fclose(b.f);
			if (b.path[0])
				unlink(b.path);
		}
		if (id <= 0)
			break;
		if (r < 0) {
			log_err("msg=\"cannot start request\" batch=%lld error=\"%s\"", (long long)id, strerror(-r));
			take_earlier(&wake, now + 1000);
			break;
		}
	}

	/* Status polls share the call budget but never hold submissions back. */
	/* Work queued for submission keeps polls to their share of the calls. */
	int64_t unused;
	bool is_submission_waiting = queue_next_ready(s->q, now, &unused) > 0 || queue_oldest_unbatched(s->q) > 0;
	struct poll_round round = { .s = s, .now = now, .wake = &wake, .is_submission_waiting = is_submission_waiting };
	int64_t next_poll = 0;
	if (!is_throttled && !is_tokenless && queue_due_polls(s->q, now, poll_one, &round, &next_poll) < 0)
		db_failed(s, "polling");
	take_earlier(&wake, next_poll);
	if (wake) {
		int64_t delay = wake - clock_wall_ms();
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

/* A token file others may read: said once per load, as ssh does for keys. */
static void warn_exposed(struct sender *s)
{
	if (token_is_exposed(&s->token))
		log_warn("msg=\"the token file may be read by its group or others; chmod 600 it\" path=\"%s\" mode=%04o",
			 s->token.path, s->token.mode);
}

struct sender *sender_create(struct event_base *base, struct store *st, struct queue *q, const struct config *cfg,
			     const struct sender_options *opts, const struct sender_listener *l, void *arg)
{
	struct sender *s = calloc(1, sizeof(*s));
	if (!s) {
		log_err("msg=\"cannot set up the sender\" error=\"out of memory\"");
		return NULL;
	}
	s->base = base;
	s->st = st;
	s->q = q;
	s->cfg = cfg;
	s->opts = *opts;
	s->l = l;
	s->arg = arg;
	s->wake = evtimer_new(base, on_wake, s);
	s->fold = evtimer_new(base, on_fold, s);
	s->submit_url = target_submit_url(cfg);
	if (callrate_init(&s->calls, (size_t)cfg->limits.calls_per_minute, CALL_WINDOW_MS) < 0 ||
	    callrate_init(&s->poll_calls, (size_t)cfg->limits.poll_calls_per_minute, CALL_WINDOW_MS) < 0 || !s->wake ||
	    !s->fold ||
	    !s->submit_url) {
		log_err("msg=\"cannot set up the sender\" error=\"out of memory\"");
		goto fail;
	}
	s->http = http_create(base, (long)cfg->batch.max_in_flight + MAX_POLLS_IN_FLIGHT, &http_listener, s);
	if (!s->http)
		goto fail;
	int r = token_load(&s->token, cfg);
	if (r < 0) {
		log_err("msg=\"cannot read token file\" path=\"%s\" error=\"%s\"", cfg->target.token_file, strerror(-r));
		goto fail;
	}
	warn_exposed(s);
	int64_t n = 0;
	if (queue_recover(q, cfg->target.timeout_ms, &n) < 0) {
		log_err("msg=\"cannot recover unanswered requests\" error=\"%s\"", store_error(st));
		goto fail;
	}
	if (n)
		log_warn("msg=\"requests whose answer never came will be sent again\" batches=%lld", (long long)n);
	sender_kick(s);
	fold_soon(s); /* what an earlier run left */
	return s;
fail:
	sender_destroy(s);
	return NULL;
}

void sender_destroy(struct sender *s)
{
	if (!s)
		return;
	http_destroy(s->http);
	while (s->transfers) {
		struct transfer *t = s->transfers;
		s->transfers = t->next;
		transfer_free(t);
	}
	if (s->wake)
		event_free(s->wake);
	if (s->fold)
		event_free(s->fold);
	token_finish(&s->token);
	callrate_finish(&s->calls);
	callrate_finish(&s->poll_calls);
	free(s->submit_url);
	free(s);
}

void sender_stop(struct sender *s)
{
	s->is_stopping = true;
	evtimer_del(s->wake);
	evtimer_del(s->fold);
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

void sender_set_token(struct sender *s, const char *token)
{
	if (token_set(&s->token, token) < 0) {
		log_err("msg=\"cannot keep the new token\" error=\"out of memory\"");
		return;
	}
	s->token_problem[0] = '\0';
	if (s->is_auth_failed) {
		s->is_auth_failed = false;
		log_info("msg=\"new profile API token from target.oauth; resuming delivery\"");
	}
	sender_kick(s);
}

void sender_hold_token(struct sender *s, bool on)
{
	s->is_token_held = on;
	if (!on)
		sender_kick(s);
}

int sender_calls_in_flight(const struct sender *s)
{
	return http_active(s->http);
}

void sender_token_problem(struct sender *s, const char *why)
{
	snprintf(s->token_problem, sizeof(s->token_problem), "no profile API token: %s", why);
	note_error(s, "%s", s->token_problem);
	sender_kick(s);
}

int sender_reload_token(struct sender *s)
{
	int r = token_load(&s->token, s->cfg);
	if (r < 0) {
		log_err("msg=\"cannot read token file\" error=\"%s\"", strerror(-r));
		return r;
	}
	warn_exposed(s);
	if (s->is_auth_failed) {
		s->is_auth_failed = false;
		log_info("msg=\"token reloaded; resuming delivery\"");
	}
	sender_kick(s);
	return 0;
}

int sender_reconfigure(struct sender *s, const struct config *cfg)
{
	char *url = target_submit_url(cfg);
	if (!url || callrate_resize(&s->calls, (size_t)cfg->limits.calls_per_minute) < 0 ||
	    callrate_resize(&s->poll_calls, (size_t)cfg->limits.poll_calls_per_minute) < 0) {
		free(url);
		return -ENOMEM;
	}
	free(s->submit_url);
	s->submit_url = url;
	s->cfg = cfg;
	sender_kick(s);
	return 0;
}

int sender_active(const struct sender *s)
{
	return s->n_submits + s->n_polls;
}

bool sender_is_drained(struct sender *s, bool include_status)
{
	struct queue_counts c;
	if (s->n_submits)
		return false;
	if (queue_counts(s->q, false, &c) < 0)
		return false;
	if (c.pending_profiles > 0 || c.batches[BATCH_READY] > 0 || c.batches[BATCH_POSTING] > 0 || c.echoes > 0)
		return false;
	return !include_status || c.batches[BATCH_SUBMITTED] == 0;
}

static const char *state_word(const struct sender *s)
{
	return s->is_paused ? "paused" : s->is_auth_failed ? "authentication failed" : s->blocked[0] ? "held back" : "running";
}

void sender_status(struct sender *s, json_t *obj)
{
	struct queue_counts c;
	if (queue_counts(s->q, false, &c) < 0)
		db_failed(s, "status");
	int64_t now = clock_wall_ms();
	json_t *q = json_object();
	json_object_set_new(q, "pending_profiles", json_integer(c.pending_profiles));
	json_object_set_new(q, "in_flight_profiles", json_integer(c.in_flight_profiles));
	json_object_set_new(q, "batches_ready", json_integer(c.batches[BATCH_READY]));
	json_object_set_new(q, "batches_in_flight", json_integer(s->n_submits));
	json_object_set_new(q, "batches_awaiting_status", json_integer(c.batches[BATCH_SUBMITTED]));
	json_object_set_new(q, "dead_letters", json_integer(c.dead_letters));
	json_object_set_new(q, "oldest_pending_at", json_integer(c.oldest_pending_at));
	json_object_set_new(obj, "queue", q);

	json_t *dl = json_object();
	json_object_set_new(dl, "state", json_string(state_word(s)));
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
	json_object_set_new(dl, "calls_last_minute", json_integer((json_int_t)callrate_used(&s->calls, now)));
	json_object_set_new(dl, "polls_last_minute", json_integer((json_int_t)callrate_used(&s->poll_calls, now)));
	json_object_set_new(dl, "rows_failed_at_target", json_integer(s->rows_failed));
	json_object_set_new(dl, "rows_requeued_after_failure", json_integer(s->rows_requeued));
	json_object_set_new(dl, "batches_unconfirmed", json_integer(s->batches_unconfirmed));
	json_object_set_new(dl, "rows_sent_last_24h", json_integer(queue_rows_last_day(s->q, now)));
	json_object_set_new(dl, "token", json_string(s->token.value ? "loaded" : "none"));
	json_object_set_new(obj, "delivery", dl);
}

const char *sender_status_line(struct sender *s)
{
	static char line[512];
	struct queue_counts c;
	if (queue_counts(s->q, false, &c) < 0)
		memset(&c, 0, sizeof(c));
	char ago[32] = "never";
	if (s->last_success_at)
		snprintf(ago, sizeof(ago), "%llds ago", (long long)(clock_wall_ms() - s->last_success_at) / 1000);
	snprintf(line, sizeof(line), "%s; %lld profiles pending, %lld batches awaiting status; last success %s",
		 s->blocked[0] && !s->is_paused && !s->is_auth_failed ? s->blocked : state_word(s),
		 (long long)c.pending_profiles, (long long)c.batches[BATCH_SUBMITTED], ago);
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
	fprintf(out, "tpsync_retries_total{cause=\"throttled\"} %lld\n", (long long)s->throttled);
	fprintf(out, "# HELP tpsync_rows_failed_total Rows Target's batch status reported failed, by what became of them.\n"
		     "# TYPE tpsync_rows_failed_total counter\n");
	fprintf(out, "tpsync_rows_failed_total{outcome=\"requeued\"} %lld\n", (long long)s->rows_requeued);
	fprintf(out, "tpsync_rows_failed_total{outcome=\"dead\"} %lld\n", (long long)s->rows_failed_dead);
	fprintf(out, "# HELP tpsync_batches_unconfirmed_total Batches whose final status could not be had (their "
		     "profiles were sent again).\n# TYPE tpsync_batches_unconfirmed_total counter\n");
	fprintf(out, "tpsync_batches_unconfirmed_total %lld\n", (long long)s->batches_unconfirmed);
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
	/* One of them is 1: what tpsyncctl status says on its delivery line. */
	static const char *const states[] = { "running", "paused", "auth_failed", "held_back" };
	int now = s->is_paused ? 1 : s->is_auth_failed ? 2 : s->blocked[0] ? 3 : 0;
	fprintf(out, "# HELP tpsync_delivery_state Whether delivery is running, paused (tpsyncctl pause), stopped by "
		     "a refused token, or held back by a limit or Target's throttling.\n# TYPE tpsync_delivery_state gauge\n");
	for (int i = 0; i < 4; i++)
		fprintf(out, "tpsync_delivery_state{state=\"%s\"} %d\n", states[i], i == now);
}
