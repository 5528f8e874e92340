/* SPDX-License-Identifier: MIT */
/* The sender against a stubbed HTTP layer (this file defines http.h's
 * functions, as chrony's unit tests stub the I/O under a module) over a real
 * state database: every verdict of DESIGN.md's guarantee 5, ordering, echoes
 * after a lost answer, and the call budget. Each case has its own fixture. */
#include <errno.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stdlib.h>

#include "check.h"
#include "clock.h"
#include "config.h"
#include "http.h"
#include "queue.h"
#include "sender.h"
#include "stage.h"
#include "state_fixture.h"

/* --- the stub HTTP layer: calls are recorded; the test answers them ------------- */

#define STUB_MAX 64

struct http {
	const struct http_listener *l;
	void *arg;
	struct http_call *calls[STUB_MAX];
	int n;
};

static struct http *stub;
static int calls_started;

struct http *http_create(struct event_base *base, long max_per_host, const struct http_listener *l, void *arg)
{
	struct http *h = calloc(1, sizeof(*h));
	h->l = l;
	h->arg = arg;
	stub = h;
	return h;
}

void http_destroy(struct http *h)
{
	free(h);
	stub = NULL;
}

int http_start(struct http *h, struct http_call *c)
{
	if (h->n == STUB_MAX)
		return -ENOMEM;
	c->result = CURLE_OK;
	c->status = 0;
	c->retry_after_ms = -1;
	c->error[0] = '\0';
	buf_reset(&c->response);
	c->started_at = clock_mono_ms();
	h->calls[h->n++] = c;
	calls_started++;
	return 0;
}

void http_call_finish(struct http_call *c)
{
	buf_finish(&c->response);
}

int http_active(const struct http *h)
{
	return h->n;
}

void http_excerpt(const struct http_call *c, char *out, size_t size)
{
	snprintf(out, size, "%.*s", (int)(c->response.len < 200 ? c->response.len : 200),
		 c->response.data ? c->response.data : "");
}

/* --- the fixture ------------------------------------------------------------------- */

static struct store *st;
static struct queue *qu;
static struct stage sg;
static struct attrset in;
static struct config cfg;
static struct event_base *base;
static struct sender *snd;
static int progress_calls;

static void on_progress(void *arg)
{
	progress_calls++;
}

static const struct sender_listener listener = { .progress = on_progress };

static void setup(void)
{
	st = fixture_store();
	qu = queue_create(st);
	stage_init(&sg, st);
	attrset_init(&in);
	base = event_base_new();
	memset(&cfg, 0, sizeof(cfg));
	cfg.target.client_code = "demo";
	cfg.target.base_url = "https://demo.tt.omtrdc.net";
	cfg.target.api_version = 2;
	cfg.target.timeout_ms = 50;
	cfg.target.connect_timeout_ms = 50;
	cfg.target.poll_interval_ms = 1;
	cfg.target.poll_max_ms = 4;
	cfg.target.status_ttl_ms = 86400000;
	cfg.target.min_upload_speed = 100000;
	cfg.batch.max_rows = 500000;
	cfg.batch.max_bytes = 49000000;
	cfg.batch.linger_ms = 0;
	cfg.batch.max_wait_ms = 60000;
	cfg.batch.max_in_flight = 2;
	cfg.batch.rows = ROWS_FULL_PROFILE;
	cfg.retry.initial_ms = 1;
	cfg.retry.max_ms = 5;
	cfg.retry.give_up_after_ms = 7 * 86400000LL;
	cfg.retry.max_failures = 3;
	cfg.limits.rows_per_day = 1000000000;
	cfg.limits.calls_per_minute = 1000;
	cfg.limits.poll_calls_per_minute = 200;
	calls_started = progress_calls = 0;
	CHECK(st && qu && base);
}

static void start(void)
{
	struct sender_options opts = { 0 };
	snd = sender_create(base, st, qu, &cfg, &opts, &listener, NULL);
	CHECK(snd != NULL && stub != NULL);
}

static void teardown(void)
{
	sender_destroy(snd);
	snd = NULL;
	event_base_free(base);
	attrset_finish(&in);
	stage_finish(&sg);
	queue_destroy(qu);
	fixture_cleanup(st);
}

static void stage(const char *id, const char *const *pairs)
{
	set_of(st, &in, pairs);
	store_begin(st);
	CHECK(stage_profile(&sg, id, strlen(id), &in, "test", NULL, NULL) >= 0);
	store_commit(st);
	sender_kick(snd);
}

static int64_t q(const char *sql)
{
	return store_int(st, sql, -1, "");
}

/* Runs the loop until at least n calls are open (or 2 s pass). */
static bool wait_calls(int n)
{
	int64_t deadline = clock_mono_ms() + 2000;
	while (stub->n < n && clock_mono_ms() < deadline)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	return stub->n >= n;
}

/* Runs the loop for ms milliseconds. */
static void run_for(int64_t ms)
{
	int64_t until = clock_mono_ms() + ms;
	while (clock_mono_ms() < until)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

/* Answers open call i with res / http / body and hands it back to the sender. */
static void answer(int i, CURLcode res, long http, const char *body, int64_t retry_after_ms)
{
	struct http_call *c = stub->calls[i];
	memmove(&stub->calls[i], &stub->calls[i + 1], (size_t)(stub->n - i - 1) * sizeof(stub->calls[0]));
	stub->n--;
	c->result = res;
	c->status = http;
	c->retry_after_ms = retry_after_ms;
	buf_reset(&c->response);
	if (body) {
		buf_append(&c->response, body, strlen(body));
		if (c->on_data) /* as http.c streams an answer */
			CHECK(c->on_data(c->data_arg, body, strlen(body)) == 0);
	}
	stub->l->done(stub->arg, c);
}

static const char ACCEPTED[] = "<response><success>true</success><batchStatus>"
			       "http://mboxedge45.tt.omtrdc.net/m2/demo/v2/profile/batchStatus?batchId=demo-1&amp;m2Node=00"
			       "</batchStatus><message>Batch submitted for processing</message></response>";
static const char COMPLETE[] = "<response><batchId>demo-1</batchId><status>complete</status><batchSize>1</batchSize>"
			       "<successfulUpdates>1</successfulUpdates><failedUpdates>0</failedUpdates></response>";

static bool is_post(int i)
{
	return stub->calls[i]->body != NULL;
}

/* success=true: the batch waits for its status (polled at the URL Target
 * gave, with showDetails), its values in flight until it completes; then
 * they are the mirror. */
static void test_accepted_then_complete(void)
{
	setup();
	start();
	stage("c1", (const char *[]){ "tier=gold", NULL });
	CHECK(wait_calls(1) && is_post(0));
	CHECK_STR(stub->calls[0]->url, "https://demo.tt.omtrdc.net/m2/demo/v2/profile/batchUpdate");
	CHECK_STR(stub->calls[0]->content_type, "application/x-www-form-urlencoded");
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'posting'") == 1);
	answer(0, CURLE_OK, 200, ACCEPTED, -1);
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'submitted' AND target_batch_id = 'demo-1'") == 1);
	char v[64];
	CHECK_STR(column_value(st, "c1", "inflight", "tier", v, sizeof(v)), "gold");
	CHECK_STR(column_value(st, "c1", "accepted", "tier", v, sizeof(v)), "(none)");
	CHECK(progress_calls >= 1);
	CHECK(wait_calls(1) && !is_post(0));
	/* Target named an http:// edge host; with an https base it is polled over https. */
	CHECK_STR(stub->calls[0]->url, "https://mboxedge45.tt.omtrdc.net/m2/demo/v2/profile/batchStatus"
				       "?batchId=demo-1&m2Node=00&showDetails=true");
	answer(0, CURLE_OK, 200, COMPLETE, -1);
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'complete' AND successful = 1") == 1);
	CHECK_STR(column_value(st, "c1", "accepted", "tier", v, sizeof(v)), "gold");
	CHECK(sender_is_drained(snd, true));
	teardown();
}

/* Runs the loop, answering every call as a healthy Target would (POSTs
 * accepted, polls complete), until done() holds or 2 s pass. Returns the
 * POSTs answered. */
static int drive(bool (*done)(void))
{
	int posts = 0;
	int64_t deadline = clock_mono_ms() + 2000;
	while (!done() && clock_mono_ms() < deadline) {
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		while (stub->n > 0) {
			bool post = is_post(0);
			posts += post;
			answer(0, CURLE_OK, 200, post ? ACCEPTED : COMPLETE, -1);
		}
	}
	return posts;
}

static bool no_echoes_and_drained(void)
{
	return q("SELECT count(*) FROM echoes") == 0 && sender_is_drained(snd, true);
}

/* 500: may have been applied, so it is retried after the backoff and the
 * latest values are sent once more after target.timeout (an echo). */
static void test_500_retried_with_echo(void)
{
	setup();
	start();
	stage("c1", (const char *[]){ "tier=gold", NULL });
	CHECK(wait_calls(1));
	answer(0, CURLE_OK, 500, "oops", -1);
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'ready' AND http_status = 500 AND last_error LIKE 'HTTP 500%'") == 1);
	CHECK(q("SELECT count(*) FROM echoes") == 1);
	/* The retry, then after target.timeout the echo: a second batch. */
	CHECK(drive(no_echoes_and_drained) == 2);
	CHECK(q("SELECT count(*) FROM batches") == 2);
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'complete'") == 2);
	teardown();
}

/* 503 with Retry-After: not processed (no echo), retried no sooner than the
 * header says (clamped to retry.max). */
static void test_503_retry_after(void)
{
	setup();
	cfg.retry.max_ms = 300;
	start();
	stage("c1", (const char *[]){ "tier=gold", NULL });
	CHECK(wait_calls(1));
	int64_t at = clock_wall_ms();
	answer(0, CURLE_OK, 503, "busy", 200);
	int64_t next = q("SELECT next_attempt_at FROM batches");
	CHECK(next >= at + 200 && next <= clock_wall_ms() + 200);
	CHECK(q("SELECT count(*) FROM echoes") == 0);
	run_for(100);
	CHECK(stub->n == 0); /* still waiting */
	CHECK(wait_calls(1));
	CHECK(clock_wall_ms() >= at + 200);
	teardown();
}

/* success=false is retried retry.max_failures times, then dead-lettered with
 * Target's message. */
static void test_rejected_then_dead(void)
{
	setup();
	start();
	stage("c1", (const char *[]){ "tier=gold", "city=Delft", NULL });
	static const char no[] = "<response><success>false</success><message>Unexpected error</message></response>";
	for (int i = 0; i < 3; i++) {
		CHECK(wait_calls(1));
		answer(0, CURLE_OK, 200, no, -1);
	}
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'dead'") == 1);
	CHECK(q("SELECT count(*) FROM dead_letters WHERE reason LIKE 'Target rejected the batch 3 times%Unexpected error'") == 2);
	run_for(20);
	CHECK(stub->n == 0);
	teardown();
}

/* 401: delivery pauses; the batch stays ready (nothing dropped); a new
 * token resumes it. */
static void test_401_pauses(void)
{
	setup();
	char path[256];
	snprintf(path, sizeof(path), "%s/token", fixture_dir);
	FILE *f = fopen(path, "w");
	fputs("tok-1\n", f);
	fclose(f);
	cfg.target.token_file = path;
	cfg.retry.max_ms = 60000;
	start();
	stage("c1", (const char *[]){ "tier=gold", NULL });
	CHECK(wait_calls(1));
	CHECK_STR(stub->calls[0]->bearer, "tok-1");
	answer(0, CURLE_OK, 401, "no", -1);
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'ready' AND attempts = 0") == 1);
	run_for(20);
	CHECK(stub->n == 0);
	json_t *s = json_object();
	sender_status(snd, s);
	CHECK_STR(json_string_value(json_object_get(json_object_get(s, "delivery"), "state")), "authentication failed");
	char *text = json_dumps(s, 0);
	CHECK(text && strstr(text, "tok-1") == NULL);
	free(text);
	json_decref(s);
	f = fopen(path, "w");
	fputs("tok-2\n", f);
	fclose(f);
	CHECK(sender_reload_token(snd) == 0);
	CHECK(wait_calls(1));
	CHECK_STR(stub->calls[0]->bearer, "tok-2");
	teardown();
}

/* 413 splits the batch in two; 400 dead-letters at once. */
static void test_413_and_400(void)
{
	setup();
	start();
	for (int i = 0; i < 6; i++) {
		char id[8];
		snprintf(id, sizeof(id), "c%d", i);
		stage(id, (const char *[]){ "tier=gold", NULL });
	}
	CHECK(wait_calls(1));
	answer(0, CURLE_OK, 413, "too large", -1);
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'split'") == 1);
	CHECK(wait_calls(2));
	CHECK(stub->calls[0]->body_size > 0 && stub->calls[1]->body_size > 0);
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'posting' AND rows = 3") == 2);
	answer(0, CURLE_OK, 400, "bad", -1);
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'dead' AND last_error = 'HTTP 400'") == 1);
	CHECK(q("SELECT count(*) FROM dead_letters WHERE last_answer = 'bad'") == 3);
	teardown();
}

/* A profile is never in two batches Target has not finished: its newer value
 * waits for the earlier batch's final status, however many calls are
 * allowed (Target may process two batches in any order). */
static void test_ordering(void)
{
	setup();
	cfg.batch.max_in_flight = 4;
	start();
	stage("c1", (const char *[]){ "tier=v1", NULL });
	CHECK(wait_calls(1));
	stage("c1", (const char *[]){ "tier=v2", NULL });
	stage("c2", (const char *[]){ "tier=x", NULL });
	CHECK(wait_calls(2)); /* c2 goes; c1's new value waits */
	CHECK(q("SELECT count(*) FROM profiles WHERE id = 'c1' AND pending IS NOT NULL") == 1);
	run_for(20);
	CHECK(stub->n == 2);
	answer(0, CURLE_OK, 200, ACCEPTED, -1);
	CHECK(wait_calls(2) && !is_post(1)); /* the status poll; c1 still waits */
	run_for(20);
	CHECK(stub->n == 2);
	struct queue_counts c;
	CHECK(queue_counts(qu, false, &c) == 0 && c.pending_profiles == 1);
	answer(1, CURLE_OK, 200, COMPLETE, -1);
	CHECK(wait_calls(2) && is_post(1));
	CHECK(queue_counts(qu, false, &c) == 0 && c.pending_profiles == 0 && c.in_flight_profiles == 2);
	teardown();
}

/* A lost answer (a timeout): the batch is sent again, a newer value waits for
 * it, and once the request could no longer be applied late (target.timeout
 * after the loss), the latest value goes out once more. */
static void test_lost_answer_echo(void)
{
	setup();
	cfg.target.timeout_ms = 200;
	start();
	stage("c1", (const char *[]){ "tier=old", NULL });
	CHECK(wait_calls(1));
	int64_t lost_at = clock_wall_ms();
	answer(0, CURLE_OPERATION_TIMEDOUT, 0, NULL, -1);
	CHECK(q("SELECT count(*) FROM echoes") == 1);
	int64_t due = q("SELECT due_at FROM echoes");
	CHECK(due >= lost_at + 200);
	stage("c1", (const char *[]){ "tier=new", NULL });
	/* The resend of "old", then "new", then the echo of "new". */
	CHECK(drive(no_echoes_and_drained) == 3);
	CHECK(clock_wall_ms() >= due);
	CHECK(q("SELECT count(*) FROM batches") == 3);
	char v[64];
	CHECK_STR(column_value(st, "c1", "accepted", "tier", v, sizeof(v)), "new");
	teardown();
}

/* calls_per_minute: a third call waits when two fit in the budget (polls
 * included); a call that never reached Target does not count. */
static void test_call_budget(void)
{
	setup();
	cfg.limits.calls_per_minute = 2;
	cfg.limits.poll_calls_per_minute = 1;
	cfg.batch.max_in_flight = 4;
	start();
	stage("c1", (const char *[]){ "tier=a", NULL });
	CHECK(wait_calls(1));
	answer(0, CURLE_COULDNT_CONNECT, 0, NULL, -1); /* never reached Target */
	CHECK(wait_calls(1));
	answer(0, CURLE_OK, 200, ACCEPTED, -1); /* the 1st call that counts */
	stage("c2", (const char *[]){ "tier=b", NULL });
	CHECK(wait_calls(1)); /* the 2nd that counts: c2 */
	run_for(20);
	CHECK(stub->n == 1 && calls_started == 3); /* the poll waits */
	json_t *s = json_object();
	sender_status(snd, s);
	json_t *dl = json_object_get(s, "delivery");
	CHECK_STR(json_string_value(json_object_get(dl, "held_back_by")), "limits.calls_per_minute");
	CHECK(json_integer_value(json_object_get(dl, "calls_last_minute")) == 2);
	json_decref(s);
	teardown();
}

static void write_token(const char *value)
{
	char path[256], tmp[300];
	snprintf(path, sizeof(path), "%s/token", fixture_dir);
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	FILE *f = fopen(tmp, "w");
	fprintf(f, "%s\n", value);
	fclose(f);
	CHECK(rename(tmp, path) == 0);
	static char keep[256];
	snprintf(keep, sizeof(keep), "%s", path);
	cfg.target.token_file = keep;
}

/* Accepts the open POST and answers its polls with answer (with a
 * <profile> list, a status, ...) until a POST is open again or 2 s pass. */
static const char FAILED_C1[] = "<response><batchId>demo-1</batchId><status>complete</status><batchSize>2</batchSize>"
				"<successfulUpdates>1</successfulUpdates><failedUpdates>1</failedUpdates>"
				"<profile><id>c1</id><status>failed</status></profile></response>";

/* A row Target's status reports failed goes out again (the whole profile);
 * the mirror does not hold it meanwhile; the batch is complete with its
 * counts; a later success resets the failure count. */
static void test_failed_row_sent_again(void)
{
	setup();
	start();
	stage("c1", (const char *[]){ "tier=gold", "city=Delft", NULL });
	stage("c2", (const char *[]){ "tier=silver", NULL });
	CHECK(wait_calls(1) && is_post(0));
	answer(0, CURLE_OK, 200, ACCEPTED, -1);
	CHECK(wait_calls(1) && !is_post(0));
	answer(0, CURLE_OK, 200, FAILED_C1, -1);
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'complete' AND failed = 1 AND rows_requeued = 1") == 1);
	char v[64];
	CHECK_STR(column_value(st, "c1", "accepted", "tier", v, sizeof(v)), "(none)");
	CHECK_STR(column_value(st, "c2", "accepted", "tier", v, sizeof(v)), "silver");
	CHECK(wait_calls(1) && is_post(0)); /* c1 again */
	CHECK(q("SELECT rows FROM batches WHERE state = 'posting'") == 1);
	answer(0, CURLE_OK, 200, ACCEPTED, -1);
	CHECK(wait_calls(1));
	answer(0, CURLE_OK, 200, COMPLETE, -1);
	CHECK_STR(column_value(st, "c1", "accepted", "tier", v, sizeof(v)), "gold");
	CHECK(q("SELECT count(*) FROM row_failures") == 0);
	json_t *s = json_object();
	sender_status(snd, s);
	CHECK(json_integer_value(json_object_get(json_object_get(s, "delivery"), "rows_failed_at_target")) == 1);
	json_decref(s);
	teardown();
}

/* A batch that stays incomplete is polled after poll_interval, then twice as
 * long each time, up to poll_max. */
static void test_poll_backoff(void)
{
	setup();
	cfg.target.poll_interval_ms = 20;
	cfg.target.poll_max_ms = 80;
	start();
	stage("c1", (const char *[]){ "tier=gold", NULL });
	CHECK(wait_calls(1));
	answer(0, CURLE_OK, 200, ACCEPTED, -1);
	static const char incomplete[] = "<response><batchId>demo-1</batchId><status>incomplete</status></response>";
	int64_t expect[] = { 40, 80, 80, 80 };
	for (int i = 0; i < 4; i++) {
		CHECK(wait_calls(1));
		int64_t at = clock_wall_ms();
		answer(0, CURLE_OK, 200, incomplete, -1);
		int64_t wait = q("SELECT next_poll_at FROM batches") - at;
		if (wait < expect[i] - 5 || wait > expect[i] + 5)
			fprintf(stderr, "poll %d: next in %lld ms, want %lld\n", i, (long long)wait, (long long)expect[i]);
		CHECK(wait >= expect[i] - 5 && wait <= expect[i] + 5);
	}
	teardown();
}

/* While batches are queued for submission, polls use at most
 * limits.poll_calls_per_minute of the budget: with many batches awaiting
 * status, submissions still go out. Once nothing is queued, polls may use
 * what is left. */
static void test_polls_never_starve_submissions(void)
{
	setup();
	cfg.limits.calls_per_minute = 20;
	cfg.limits.poll_calls_per_minute = 2;
	cfg.batch.max_rows = 1;
	cfg.batch.max_in_flight = 1;
	start();
	for (int i = 0; i < 8; i++) {
		char id[8];
		snprintf(id, sizeof(id), "c%d", i);
		stage(id, (const char *[]){ "tier=gold", NULL });
	}
	/* Calls are answered in the order they started: the polls answered before
	 * the last submission started while batches were still queued. */
	int posts = 0, polls = 0, polls_while_queued = 0;
	int64_t deadline = clock_mono_ms() + 2000;
	while ((posts < 8 || polls < 8) && clock_mono_ms() < deadline) {
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		while (stub->n > 0) {
			bool post = is_post(0);
			posts += post;
			polls += !post;
			polls_while_queued += !post && posts < 8;
			static const char incomplete[] = "<response><status>incomplete</status></response>";
			answer(0, CURLE_OK, 200, post ? ACCEPTED : incomplete, -1);
		}
	}
	CHECK(posts == 8 && polls_while_queued <= 2);
	/* Then nothing is queued: polls may use the calls left, keeping one
	 * (batch.max_in_flight) free. */
	CHECK(polls >= 8 && posts + polls <= 20 - 1);
	teardown();
}

/* 503 on a poll (another tool of the account used the budget): every call
 * waits, submissions too, then goes on. */
static void test_throttled_account(void)
{
	setup();
	cfg.retry.max_ms = 1000;
	start();
	stage("c1", (const char *[]){ "tier=gold", NULL });
	CHECK(wait_calls(1));
	answer(0, CURLE_OK, 200, ACCEPTED, -1);
	CHECK(wait_calls(1) && !is_post(0));
	int64_t at = clock_wall_ms();
	answer(0, CURLE_OK, 503, "Too many requests", 150);
	stage("c2", (const char *[]){ "tier=new", NULL });
	run_for(100);
	CHECK(stub->n == 0); /* nothing, not even the submission */
	json_t *s = json_object();
	sender_status(snd, s);
	CHECK(strstr(json_string_value(json_object_get(json_object_get(s, "delivery"), "held_back_by")), "throttling") != NULL);
	json_decref(s);
	CHECK(wait_calls(1));
	CHECK(clock_wall_ms() >= at + 150);
	teardown();
}

/* A status that can no longer be had (404), or a batch older than
 * target.status_ttl: unconfirmed, and its profiles are sent again. */
static void test_status_gone_and_ttl(void)
{
	setup();
	start();
	stage("c1", (const char *[]){ "tier=gold", NULL });
	CHECK(wait_calls(1));
	answer(0, CURLE_OK, 200, ACCEPTED, -1);
	CHECK(wait_calls(1) && !is_post(0));
	answer(0, CURLE_OK, 404, "unknown batch", -1);
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'unconfirmed'") == 1);
	CHECK(wait_calls(1) && is_post(0)); /* c1 again */
	answer(0, CURLE_OK, 200, ACCEPTED, -1);
	/* Now the batch's status outlives target.status_ttl before it is polled. */
	CHECK(store_exec(st, "UPDATE batches SET answered_at = answered_at - 100000000 WHERE state = 'submitted'") == 0);
	cfg.target.status_ttl_ms = 1000;
	CHECK(wait_calls(1) && is_post(0)); /* re-sent without a poll */
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'unconfirmed'") == 2);
	teardown();
}

/* A 401 on a poll: with a new token in the file the poll is made again at
 * once, and delivery never pauses; with none, delivery pauses, and the next
 * answer that takes the token ends the pause. */
static void test_poll_401(void)
{
	setup();
	write_token("tok-1");
	start();
	stage("c1", (const char *[]){ "tier=gold", NULL });
	CHECK(wait_calls(1));
	answer(0, CURLE_OK, 200, ACCEPTED, -1);
	CHECK(wait_calls(1) && !is_post(0));
	CHECK_STR(stub->calls[0]->bearer, "tok-1");
	write_token("tok-2");
	answer(0, CURLE_OK, 401, "no", -1);
	CHECK(wait_calls(1) && !is_post(0));
	CHECK_STR(stub->calls[0]->bearer, "tok-2");
	json_t *s = json_object();
	sender_status(snd, s);
	CHECK_STR(json_string_value(json_object_get(json_object_get(s, "delivery"), "state")), "running");
	json_decref(s);
	answer(0, CURLE_OK, 401, "no", -1); /* the same token refused: a pause */
	s = json_object();
	sender_status(snd, s);
	CHECK_STR(json_string_value(json_object_get(json_object_get(s, "delivery"), "state")), "authentication failed");
	json_decref(s);
	CHECK(wait_calls(1) && !is_post(0)); /* the polls go on, as probes */
	answer(0, CURLE_OK, 200, COMPLETE, -1);
	s = json_object();
	sender_status(snd, s);
	CHECK_STR(json_string_value(json_object_get(json_object_get(s, "delivery"), "state")), "running");
	json_decref(s);
	teardown();
}

int main(void)
{
	RUN(test_accepted_then_complete);
	RUN(test_500_retried_with_echo);
	RUN(test_503_retry_after);
	RUN(test_rejected_then_dead);
	RUN(test_401_pauses);
	RUN(test_413_and_400);
	RUN(test_ordering);
	RUN(test_lost_answer_echo);
	RUN(test_call_budget);
	RUN(test_failed_row_sent_again);
	RUN(test_poll_backoff);
	RUN(test_polls_never_starve_submissions);
	RUN(test_throttled_account);
	RUN(test_status_gone_and_ttl);
	RUN(test_poll_401);
	return check_result("test_sender");
}
