/* SPDX-License-Identifier: MIT */
/* The delivery queue: the body format, full_profile vs changed_only rows, the
 * row and byte limits, acceptance into the mirror, dead letters, 413 splits,
 * stuck re-queues, and the steps a sender takes (posting, retries, polls,
 * echoes, recovery). Each case has a fresh state database. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "body_writer.h"
#include "check.h"
#include "config.h"
#include "queue.h"
#include "stage.h"
#include "state_fixture.h"

static struct store *st;
static struct queue *qu;
static struct stage sg;
static struct attrset in;
static struct config cfg;
static char v[256];

static void setup(void)
{
	st = fixture_store();
	qu = st ? queue_create(st) : NULL;
	CHECK(qu != NULL);
	stage_init(&sg, st);
	attrset_init(&in);
	memset(&cfg, 0, sizeof(cfg));
	cfg.target.id_type = ID_THIRD_PARTY;
	cfg.batch.max_rows = 500000;
	cfg.batch.max_bytes = 49000000;
	cfg.batch.rows = ROWS_FULL_PROFILE;
}

static void teardown(void)
{
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
}

static int64_t q(const char *sql)
{
	return store_int(st, sql, -1, "");
}

/* The body of batch id as a string (caller frees), written to a file as the
 * sender writes it. */
static char *body(int64_t id)
{
	FILE *f = tmpfile();
	CHECK(f != NULL);
	int64_t n = queue_write_body(qu, &cfg, id, fileno(f));
	CHECK(n >= 0);
	char *text = calloc(1, n > 0 ? (size_t)n + 1 : 1);
	rewind(f);
	CHECK(text && fread(text, 1, (size_t)n, f) == (size_t)n && fgetc(f) == EOF);
	fclose(f);
	return text;
}

/* Cuts the next batch with at most max_rows rows (no body on the way). */
static int64_t build(int64_t max_rows)
{
	struct queue_build_opts o = { .max_rows = max_rows, .body_fd = -1 };
	struct queue_cut cut;
	CHECK(queue_build(qu, &cfg, &o, &cut) == 0);
	return cut.id;
}

/* The same, with the body written while cutting: returned in *text (caller
 * frees; NULL when it was not written on the way). */
static int64_t build_with_body(int64_t max_rows, char **text)
{
	FILE *f = tmpfile();
	CHECK(f != NULL);
	struct queue_build_opts o = { .max_rows = max_rows, .body_fd = fileno(f) };
	struct queue_cut cut;
	CHECK(queue_build(qu, &cfg, &o, &cut) == 0);
	*text = NULL;
	if (cut.has_body) {
		*text = calloc(1, (size_t)cut.bytes + 1);
		rewind(f);
		CHECK(*text && fread(*text, 1, (size_t)cut.bytes, f) == (size_t)cut.bytes && fgetc(f) == EOF);
	}
	fclose(f);
	return cut.id;
}

static void accept(int64_t id)
{
	CHECK(queue_accept(qu, id, NULL, NULL, 0) == 0);
}

/* Accepted with a status URL: its rows stay until its final status. */
static void accept_awaiting_status(int64_t id)
{
	CHECK(queue_accept(qu, id, "http://edge/m2/demo/profile/batchStatus?batchId=b", "b", 0) == 0);
}

/* Three profiles, one with every character that needs encoding: the exact
 * body, its exact size, and values in flight until accepted. */
static void test_body_and_acceptance(void)
{
	setup();
	stage("cust-1", (const char *[]){ "loyaltyTier=gold", "city=Amsterdam", NULL });
	stage("cust-2", (const char *[]){ "city=Utrecht", NULL });
	stage("cust-3", (const char *[]){ "loyaltyTier=50% off & more", "city=a+b=c, \"q\"\nx", NULL });
	char *early = NULL;
	int64_t b1 = build_with_body(1000, &early);
	CHECK(b1 > 0);
	char *text = body(b1);
	const char *want = "batch=thirdPartyId,loyaltyTier,city\n"
			   "cust-1,gold,Amsterdam\n"
			   "cust-2,,Utrecht\n"
			   "cust-3,50%25%20off%20%26%20more,a%2Bb%3Dc%2C%20%22q%22%0Ax\n";
	CHECK_STR(text, want);
	/* Written while cutting (the later rows have a subset of the first one's
	 * attributes), and the same as written again from the database. */
	CHECK(early != NULL);
	CHECK_STR(early ? early : "", want);
	free(early);
	free(text);
	/* The size computed while building is the exact encoded size. */
	CHECK(q("SELECT bytes FROM batches WHERE id = 1") == (int64_t)strlen(want));
	/* In flight: not pending any more, and not picked up by the next batch. */
	struct queue_counts c;
	CHECK(queue_counts(qu, false, &c) == 0 && c.pending_profiles == 0 && c.in_flight_profiles == 3);
	CHECK_STR(column_value(st, "cust-2", "inflight", "city", v, sizeof(v)), "Utrecht");
	CHECK_STR(column_value(st, "cust-2", "pending", "city", v, sizeof(v)), "(none)");
	/* A change while in flight waits for the batch (parked), then follows it. */
	stage("cust-1", (const char *[]){ "loyaltyTier=silver", NULL });
	CHECK(queue_counts(qu, false, &c) == 0 && c.pending_profiles == 1);
	CHECK_STR(column_value(st, "cust-1", "inflight", "loyaltyTier", v, sizeof(v)), "gold");
	CHECK_STR(column_value(st, "cust-1", "pending", "loyaltyTier", v, sizeof(v)), "silver");
	CHECK(build(1000) == 0);
	/* The batch in flight still carries the values it had (its moved row last). */
	text = body(b1);
	CHECK_STR(text, "batch=thirdPartyId,loyaltyTier,city\n"
			"cust-2,,Utrecht\n"
			"cust-3,50%25%20off%20%26%20more,a%2Bb%3Dc%2C%20%22q%22%0Ax\n"
			"cust-1,gold,Amsterdam\n");
	CHECK(strlen(text) == strlen(want));
	free(text);
	accept(b1);
	CHECK_STR(column_value(st, "cust-1", "accepted", "city", v, sizeof(v)), "Amsterdam");
	CHECK_STR(column_value(st, "cust-1", "accepted", "loyaltyTier", v, sizeof(v)), "gold");
	CHECK_STR(column_value(st, "cust-1", "inflight", "city", v, sizeof(v)), "(none)");
	CHECK_STR(column_value(st, "cust-2", "accepted", "city", v, sizeof(v)), "Utrecht");

	/* full_profile: the changed profile's row carries all its attributes. */
	int64_t b2 = build(1000);
	CHECK(b2 > b1);
	text = body(b2);
	CHECK_STR(text, "batch=thirdPartyId,loyaltyTier,city\ncust-1,silver,Amsterdam\n");
	free(text);
	accept(b2);

	/* changed_only: just the changed cells. pcId header. */
	cfg.batch.rows = ROWS_CHANGED_ONLY;
	cfg.target.id_type = ID_PC;
	stage("cust-1", (const char *[]){ "city=Rotterdam", "loyaltyTier=silver", NULL });
	int64_t b3 = build(1000);
	text = body(b3);
	CHECK_STR(text, "batch=pcId,city\ncust-1,Rotterdam\n");
	free(text);
	accept(b3);
	teardown();
}

/* Rows for the limit cases: n profiles with one attribute, named prefix%02d. */
static void stage_many(const char *fmt, int n)
{
	char id[32];
	for (int i = 0; i < n; i++) {
		snprintf(id, sizeof(id), fmt, i);
		stage(id, (const char *[]){ "a=1", NULL });
	}
}

/* The row limit (and a caller's smaller budget), and the byte limit: the
 * encoded body never exceeds max_bytes, and is as full as it can be. */
static void test_limits(void)
{
	setup();
	stage_many("r%02d", 25);
	cfg.batch.max_rows = 10;
	int64_t b4 = build(1000);
	CHECK(q("SELECT rows FROM batches ORDER BY id DESC LIMIT 1") == 10);
	int64_t b5 = build(3);
	CHECK(b5 > b4 && q("SELECT rows FROM batches ORDER BY id DESC LIMIT 1") == 3);
	cfg.batch.max_rows = 500000;
	build(1000); /* the other 12 */

	stage_many("s%03d", 100);
	cfg.batch.max_bytes = 300;
	int64_t b6 = build(1000);
	char *text = body(b6);
	CHECK(strlen(text) <= 300 && strlen(text) + 7 > 300);
	CHECK(q("SELECT bytes FROM batches ORDER BY id DESC LIMIT 1") == (int64_t)strlen(text));
	free(text);
	char sql[128];
	snprintf(sql, sizeof(sql), "SELECT rows FROM batches WHERE id = %lld", (long long)b6);
	CHECK(q(sql) > 30);
	teardown();
}

/* 413: split in two halves; a single row cannot be split. Dead letters keep
 * profile, attribute, value and reason; profiles are released. */
static void test_split_and_kill(void)
{
	setup();
	stage_many("r%02d", 25);
	cfg.batch.max_rows = 10;
	int64_t b1 = build(1000);
	int64_t b2 = build(3);
	CHECK(b1 == 1 && b2 == 2);
	CHECK(queue_split(qu, b1) == 0);
	CHECK(q("SELECT state FROM batches WHERE id = 1") == 0); /* text 'split' reads as 0 */
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'ready' AND rows = 5") == 2);
	/* The halves hold the ten rows between them, each once. */
	char *h1 = body(3), *h2 = body(4);
	CHECK_STR(h1, "batch=thirdPartyId,a\nr00,1\nr01,1\nr02,1\nr03,1\nr04,1\n");
	CHECK_STR(h2, "batch=thirdPartyId,a\nr05,1\nr06,1\nr07,1\nr08,1\nr09,1\n");
	free(h1);
	free(h2);
	CHECK(queue_split(qu, b2 + 100) == -ENOENT);
	/* A half splits again, down to batches of one row, which cannot split. */
	CHECK(queue_split(qu, 3) == 0 && queue_split(qu, 5) == 0);
	CHECK(q("SELECT rows FROM batches WHERE id = 7") == 1 && queue_split(qu, 7) == -E2BIG);

	CHECK(queue_kill(qu, b2, "HTTP 400", "bad request", 0) == 0);
	CHECK(q("SELECT count(*) FROM dead_letters WHERE reason = 'HTTP 400' AND attr = 'a' AND value = '1'") == 3);
	CHECK(q("SELECT count(*) FROM profiles WHERE id BETWEEN 'r10' AND 'r12' AND pending IS NOT NULL") == 0);
	CHECK(q("SELECT state FROM batches WHERE id = 2") == 0 &&
	      q("SELECT count(*) FROM batches WHERE id = 2 AND state = 'dead'") == 1);
	teardown();
}

/* A batch with both kinds of members (range rows, and rows of profiles that
 * changed again while it was in flight) splits, is killed, and is re-queued
 * as stuck with every row once and the newer values kept. */
static void test_moved_members(void)
{
	setup();
	stage_many("m%02d", 6);
	int64_t b = build(1000);
	/* m00 and m01 change while in flight: their sent values move to inflight. */
	stage("m00", (const char *[]){ "a=2", NULL });
	stage("m01", (const char *[]){ "a=3", NULL });
	CHECK(q("SELECT count(*) FROM profiles WHERE inflight_batch = 1") == 2);
	char *text = body(b);
	CHECK_STR(text, "batch=thirdPartyId,a\nm02,1\nm03,1\nm04,1\nm05,1\nm00,1\nm01,1\n");
	free(text);
	CHECK(queue_split(qu, b) == 0);
	char *h1 = body(2), *h2 = body(3);
	CHECK_STR(h1, "batch=thirdPartyId,a\nm02,1\nm03,1\nm00,1\nm01,1\n");
	CHECK_STR(h2, "batch=thirdPartyId,a\nm04,1\nm05,1\n");
	free(h1);
	free(h2);
	/* Stuck: m00 and m01 have newer values queued, which go instead. */
	accept_awaiting_status(2);
	CHECK(queue_requeue_stuck(qu, 2) == 0);
	int64_t again = q("SELECT id FROM batches WHERE requeue_of = 2");
	text = body(again);
	CHECK_STR(text, "batch=thirdPartyId,a\nm02,1\nm03,1\n");
	free(text);
	CHECK_STR(column_value(st, "m00", "pending", "a", v, sizeof(v)), "2");
	int64_t next = build(1000);
	CHECK(next > again);
	text = body(next);
	CHECK_STR(text, "batch=thirdPartyId,a\nm00,2\nm01,3\n");
	free(text);
	/* Killed: every row a dead letter once, no profile left in flight. */
	CHECK(queue_kill(qu, 3, "HTTP 400", "", 0) == 0 && queue_kill(qu, again, "HTTP 400", "", 0) == 0);
	CHECK(q("SELECT count(*) FROM dead_letters") == 4);
	struct queue_counts c;
	CHECK(queue_counts(qu, false, &c) == 0 && c.in_flight_profiles == 2 && c.pending_profiles == 0);
	teardown();
}

/* Stuck: re-queued once (as a linked batch), dead-lettered the second time. */
static void test_stuck(void)
{
	setup();
	stage_many("s%03d", 40);
	int64_t b = build(1000);
	int64_t rows = q("SELECT rows FROM batches WHERE id = 1");
	CHECK(b == 1 && rows == 40);
	accept_awaiting_status(b);
	CHECK(queue_requeue_stuck(qu, b) == 0);
	int64_t again = q("SELECT id FROM batches WHERE requeue_of = 1");
	CHECK(again > b);
	CHECK(q("SELECT rows FROM batches WHERE requeue_of = 1") == rows);
	accept_awaiting_status(again);
	CHECK(queue_requeue_stuck(qu, again) == 0);
	CHECK(q("SELECT count(*) FROM dead_letters WHERE reason LIKE '%stuck again%'") == rows);
	teardown();
}

/* The stored header is in ascending id order (the body's column order),
 * whatever order the rows first used the attributes in; a header cut inside a
 * varint is refused, and so is writing its body. */
static void test_header_order(void)
{
	setup();
	stage("hdr-0", (const char *[]){ "city=x", "loyaltyTier=y", NULL });
	stage("hdr-1", (const char *[]){ "zz_new_attr=1", NULL });
	stage("hdr-2", (const char *[]){ "city=Utrecht", "loyaltyTier=gold", NULL });
	int64_t hb = build(1000);
	CHECK(hb > 0);
	uint32_t *hids = NULL;
	size_t hn = 0;
	CHECK(queue_header_ids(qu, hb, &hids, &hn) == 0 && hn >= 3);
	for (size_t i = 1; i < hn; i++)
		CHECK(hids[i - 1] < hids[i]);
	free(hids);
	char sql[128];
	snprintf(sql, sizeof(sql), "UPDATE batches SET header = x'0180' WHERE id = %lld", (long long)hb);
	CHECK(store_exec(st, sql) == 0);
	CHECK(queue_header_ids(qu, hb, &hids, &hn) == -EINVAL && hids == NULL);
	int sink = open("/dev/null", O_WRONLY);
	CHECK(sink >= 0 && queue_write_body(qu, &cfg, hb, sink) == -EINVAL);
	close(sink);
	teardown();
}

/* A body of several writer chunks: every row arrives once, in order. Then
 * the write errors a sender can meet: a full disk and a bad descriptor. */
static void test_large_body(void)
{
	setup();
	char id[32], val[128];
	enum { N = 20000 }; /* 2.4 MB: two chunks and a rest */
	store_begin(st);
	for (int i = 0; i < N; i++) {
		snprintf(id, sizeof(id), "big%05d", i);
		snprintf(val, sizeof(val), "bulk=v%05d %0100d", i, i);
		set_of(st, &in, (const char *[]){ val, NULL });
		CHECK(stage_profile(&sg, id, strlen(id), &in, "test", NULL, NULL) >= 0);
	}
	store_commit(st);
	int64_t b = build(N);
	CHECK(b > 0 && q("SELECT rows FROM batches ORDER BY id DESC LIMIT 1") == N);
	struct buf want;
	buf_init(&want);
	CHECK(buf_append(&want, "batch=thirdPartyId,bulk\n", 24) == 0);
	for (int i = 0; i < N; i++) {
		char line[200];
		int n = snprintf(line, sizeof(line), "big%05d,v%05d%%20%0100d\n", i, i, i);
		CHECK(buf_append(&want, line, (size_t)n) == 0);
	}
	CHECK(want.len > 2 * BODY_WRITER_CHUNK);
	CHECK(q("SELECT bytes FROM batches ORDER BY id DESC LIMIT 1") == (int64_t)want.len);
	char *text = body(b);
	CHECK(text && strlen(text) == want.len && memcmp(text, want.data, want.len) == 0);
	free(text);
	/* The space reserved for the body never makes the file longer, even when
	 * the stored size is more than the body. */
	char sql[128];
	snprintf(sql, sizeof(sql), "UPDATE batches SET bytes = bytes + 1000000 WHERE id = %lld", (long long)b);
	CHECK(store_exec(st, sql) == 0);
	text = body(b);
	CHECK(text && strlen(text) == want.len && memcmp(text, want.data, want.len) == 0);
	free(text);

	int full = open("/dev/full", O_WRONLY);
	CHECK(full >= 0 && queue_write_body(qu, &cfg, b, full) == -ENOSPC);
	close(full);
	int closed = open("/dev/null", O_WRONLY);
	close(closed);
	CHECK(queue_write_body(qu, &cfg, b, closed) == -EBADF);
	buf_finish(&want);
	accept(b);
	teardown();
}

/* The steps of one batch as the sender takes them: posting is recorded and
 * counted against the daily budget, a retry with an echo, the poll schedule,
 * completion, and a crash while posting recovered as ready with echoes. */
static bool collect_poll(void *arg, int64_t id, const char *url, int64_t answered_at)
{
	int64_t *got = arg;
	*got = id;
	return true;
}

static void test_sender_steps(void)
{
	setup();
	stage("p1", (const char *[]){ "a=1", NULL });
	stage("p2", (const char *[]){ "a=2", NULL });
	int64_t b = build(1000);
	int64_t next = -1;
	CHECK(queue_next_ready(qu, 1000, &next) == b);
	CHECK(queue_mark_posting(qu, b, 5000, 42) == 0);
	int64_t rows = 0, oldest = 0;
	CHECK(queue_rows_sent(qu, 0, &rows, &oldest) == 0 && rows == 2 && oldest == 5000);
	struct queue_batch info;
	CHECK(queue_get(qu, b, &info) == 0 && info.state == BATCH_POSTING && info.attempts == 1 && info.rows == 2);
	/* A lost answer: ready again at 9000, latest values echoed at 8000. */
	CHECK(queue_retry(qu, b, 9000, 502, "HTTP 502", 0, 8000) == 0);
	CHECK(queue_next_ready(qu, 8999, &next) == 0 && next == 9000);
	CHECK(q("SELECT count(*) FROM echoes WHERE due_at = 8000") == 2);
	/* Echoes wait while their profiles are in flight. */
	int n = -1;
	int64_t echo_next = 0;
	CHECK(queue_run_echoes(qu, 8500, &n, &echo_next) == 0 && n == 0);
	/* A crash while posting: recovered as ready; echoes due a timeout after sending. */
	CHECK(queue_mark_posting(qu, b, 10000, 42) == 0);
	int64_t recovered = 0;
	CHECK(queue_recover(qu, 700, &recovered) == 0 && recovered == 1);
	CHECK(queue_get(qu, b, &info) == 0 && info.state == BATCH_READY);
	CHECK(q("SELECT count(*) FROM echoes WHERE due_at = 10700") == 2);
	CHECK(queue_mark_posting(qu, b, 11000, 42) == 0);
	CHECK(queue_accept(qu, b, "http://edge/m2/demo/profile/batchStatus?batchId=x-1", "x-1", 12000) == 0);
	CHECK(queue_get(qu, b, &info) == 0 && info.state == BATCH_SUBMITTED);
	int64_t polled = 0, poll_next = 0;
	CHECK(queue_due_polls(qu, 11999, collect_poll, &polled, &poll_next) == 0 && polled == 0 && poll_next == 12000);
	CHECK(queue_due_polls(qu, 12000, collect_poll, &polled, &poll_next) == 0 && polled == b);
	CHECK(queue_poll_again(qu, b, 13000, "") == 0);
	struct queue_counts_at_target counts = { 2, 2, 0, 0 };
	struct queue_row_results res;
	CHECK(queue_complete(qu, b, &counts, 3, NULL, NULL, &res) == 0 && res.requeued == 0);
	CHECK(queue_get(qu, b, &info) == 0 && info.state == BATCH_COMPLETE && info.polls == 2);
	/* Now the echoes run: both profiles' latest values are pending again. */
	CHECK(queue_run_echoes(qu, 20000, &n, &echo_next) == 0 && n == 2 && echo_next == 0);
	CHECK(q("SELECT count(*) FROM profiles WHERE pending IS NOT NULL") == 2);
	struct queue_counts c;
	CHECK(queue_counts(qu, true, &c) == 0 && c.pending_profiles == 2 && c.batches[BATCH_COMPLETE] == 1 &&
	      c.echoes == 0);
	teardown();
}

/* Feeds the ids of a NULL-terminated list as failed rows. */
static int feed_list(void *arg, int (*sink)(void *sink_arg, const char *profile, size_t len), void *sink_arg)
{
	for (const char *const *id = arg; *id; id++) {
		int r = sink(sink_arg, *id, strlen(*id));
		if (r < 0)
			return r;
	}
	return 0;
}

/* Rows Target reported failed: their values leave the mirror and their
 * profiles' latest values are queued again; the third failure in a row
 * dead-letters them; a row that went through resets the count; ids the batch
 * did not carry are counted as unknown. */
static void test_failed_rows(void)
{
	setup();
	stage("p1", (const char *[]){ "a=1", "b=x", NULL });
	stage("p2", (const char *[]){ "a=2", NULL });
	struct queue_counts_at_target counts = { 2, 1, 0, 1 };
	struct queue_row_results res;
	static const char *const p1_and_ghost[] = { "p1", "ghost", NULL }, *const p1[] = { "p1", NULL };
	for (int round = 1; round <= 3; round++) {
		int64_t b = build(1000);
		CHECK(b > 0);
		accept_awaiting_status(b);
		/* Accepted for processing is not in the mirror yet. */
		CHECK_STR(column_value(st, "p1", "inflight", "a", v, sizeof(v)), "1");
		CHECK_STR(column_value(st, "p1", "accepted", "a", v, sizeof(v)), "(none)");
		CHECK(queue_complete(qu, b, &counts, 3, feed_list, (void *)(round == 1 ? p1_and_ghost : p1), &res) == 0);
		/* The mirror never claims Target has p1's values. */
		CHECK_STR(column_value(st, "p1", "accepted", "a", v, sizeof(v)), "(none)");
		if (round < 3) {
			CHECK(res.requeued == 1 && res.dead == 0 && res.unknown == (round == 1));
			CHECK_STR(column_value(st, "p1", "pending", "a", v, sizeof(v)), "1");
			CHECK_STR(column_value(st, "p1", "pending", "b", v, sizeof(v)), "x");
			CHECK(q("SELECT failures FROM row_failures WHERE profile = 'p1'") == round);
		} else {
			CHECK(res.requeued == 0 && res.dead == 1);
			CHECK(q("SELECT count(*) FROM dead_letters WHERE profile = 'p1' AND reason LIKE '%failed 3 times%'") >= 1);
			CHECK(q("SELECT count(*) FROM row_failures") == 0);
			CHECK(q("SELECT count(*) FROM profiles WHERE id = 'p1' AND pending IS NOT NULL") == 0);
		}
	}
	CHECK_STR(column_value(st, "p2", "accepted", "a", v, sizeof(v)), "2");
	CHECK(q("SELECT rows_requeued FROM batches WHERE id = 1") == 1 && q("SELECT rows_dead FROM batches WHERE id = 3") == 1);
	/* A failure, then a row that goes through: the count starts again. */
	stage("p3", (const char *[]){ "a=3", NULL });
	int64_t b = build(1000);
	accept_awaiting_status(b);
	static const char *const p3[] = { "p3", NULL };
	CHECK(queue_complete(qu, b, &counts, 3, feed_list, (void *)p3, &res) == 0 && res.requeued == 1);
	b = build(1000);
	accept_awaiting_status(b);
	CHECK(queue_complete(qu, b, &counts, 3, NULL, NULL, &res) == 0);
	CHECK(q("SELECT count(*) FROM row_failures") == 0);
	CHECK_STR(column_value(st, "p3", "accepted", "a", v, sizeof(v)), "3");
	teardown();
}

/* A batch whose status cannot be had: its profiles' latest values are
 * queued again, not assumed delivered. */
static void test_unconfirm(void)
{
	setup();
	stage("p1", (const char *[]){ "a=1", NULL });
	int64_t b = build(1000);
	accept_awaiting_status(b);
	int64_t n = 0;
	CHECK(queue_unconfirm(qu, b, "status gone", &n) == 0 && n == 1);
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'unconfirmed' AND last_error = 'status gone'") == 1);
	CHECK_STR(column_value(st, "p1", "pending", "a", v, sizeof(v)), "1");
	teardown();
}

/* Retrying dead letters stages them again; a value staged since wins. */
static void test_retry_dead(void)
{
	setup();
	stage("p1", (const char *[]){ "a=1", "b=2", NULL });
	int64_t b = build(1000);
	CHECK(queue_kill(qu, b, "HTTP 400", "", 0) == 0);
	CHECK(q("SELECT count(*) FROM dead_letters") == 2);
	stage("p1", (const char *[]){ "a=9", NULL }); /* supersedes the dead letter for a */
	CHECK(q("SELECT count(*) FROM dead_letters") == 1);
	int64_t n = 0;
	CHECK(queue_retry_dead(qu, NULL, 0, &n) == 0 && n == 1);
	CHECK_STR(column_value(st, "p1", "pending", "a", v, sizeof(v)), "9");
	CHECK_STR(column_value(st, "p1", "pending", "b", v, sizeof(v)), "2");
	CHECK(q("SELECT count(*) FROM dead_letters") == 0);
	teardown();
}

/* sql_fmt with id in it, run once (not through the store's statement
 * cache, which knows statements by their text's address). */
static int64_t raw(const char *sql_fmt, const char *id)
{
	char sql[256];
	snprintf(sql, sizeof(sql), sql_fmt, id);
	sqlite3_stmt *s;
	int64_t n = -1;
	if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK)
		return -1;
	if (sqlite3_step(s) == SQLITE_ROW)
		n = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	return n;
}

/* A complete batch's values are the mirror at once, though they stay in the
 * pending column until folded; folding (in id order) changes nothing the
 * mirror says, and leaves values in flight alone. */
static void test_complete_and_fold(void)
{
	setup();
	stage("f1", (const char *[]){ "a=1", NULL });
	stage("f2", (const char *[]){ "a=2", NULL });
	int64_t b = build(1000);
	accept(b);
	CHECK(raw("SELECT count(*) FROM profiles WHERE id = '%s' AND pending IS NOT NULL AND accepted IS NULL", "f1") == 1);
	CHECK_STR(column_value(st, "f1", "accepted", "a", v, sizeof(v)), "1");
	CHECK_STR(column_value(st, "f1", "pending", "a", v, sizeof(v)), "(none)");
	struct queue_counts c;
	CHECK(queue_counts(qu, false, &c) == 0 && c.pending_profiles == 0 && c.in_flight_profiles == 0);
	/* The same values again: nothing to send. */
	set_of(st, &in, (const char *[]){ "a=1", NULL });
	store_begin(st);
	CHECK(stage_profile(&sg, "f1", 2, &in, "test", NULL, NULL) == 0);
	store_commit(st);
	CHECK(build(1000) == 0);
	/* f3 goes in flight; then everything is folded but f3. */
	stage("f3", (const char *[]){ "a=3", NULL });
	int64_t b2 = build(1000);
	CHECK(b2 > b);
	bool is_more = true;
	for (int i = 0; is_more && i < 10; i++)
		CHECK(queue_fold(qu, 1, &is_more) == 0);
	CHECK(!is_more);
	CHECK(raw("SELECT count(*) FROM profiles WHERE id = '%s' AND pending IS NULL AND accepted IS NOT NULL", "f1") == 1);
	CHECK(raw("SELECT count(*) FROM profiles WHERE id = '%s' AND pending IS NULL AND accepted IS NOT NULL", "f2") == 1);
	CHECK(raw("SELECT count(*) FROM profiles WHERE id = '%s' AND pending IS NOT NULL", "f3") == 1);
	CHECK_STR(column_value(st, "f2", "accepted", "a", v, sizeof(v)), "2");
	CHECK_STR(column_value(st, "f3", "inflight", "a", v, sizeof(v)), "3");
	CHECK(q("SELECT folded FROM batches WHERE id = 1") == 1);
	/* f3's batch completes: folded in the next pass. */
	accept(b2);
	is_more = true;
	for (int i = 0; is_more && i < 10; i++)
		CHECK(queue_fold(qu, 2, &is_more) == 0);
	CHECK(raw("SELECT count(*) FROM profiles WHERE id = '%s' AND pending IS NULL AND accepted IS NOT NULL", "f3") == 1);
	teardown();
}

/* Only full batches while reading (only_if_full): the exact count of what
 * could go is reported instead, and a full batch is cut. */
static void test_only_if_full(void)
{
	setup();
	stage_many("o%02d", 5);
	cfg.batch.max_rows = 10;
	struct queue_build_opts o = { .max_rows = 1000, .only_if_full = true, .body_fd = -1 };
	struct queue_cut cut;
	CHECK(queue_build(qu, &cfg, &o, &cut) == 0 && cut.id == 0 && cut.rows == 5 && !cut.is_full);
	CHECK(cut.bytes == (int64_t)strlen("batch=thirdPartyId,a\n") + 5 * 6);
	CHECK(st->staged.rows == 5);
	stage_many("p%02d", 7);
	CHECK(queue_build(qu, &cfg, &o, &cut) == 0 && cut.id > 0 && cut.rows == 10 && cut.is_full);
	CHECK(queue_build(qu, &cfg, &o, &cut) == 0 && cut.id == 0 && cut.rows == 2);
	teardown();
}

/* A held read undone after a batch was cut past the place its profiles had:
 * their earlier changes come back queued, not taken for sent. */
static void test_hold_undone_after_a_cut(void)
{
	setup();
	stage("h1", (const char *[]){ "a=old", NULL }); /* queued, seq 1 */
	int64_t base = st->next_seq + ((int64_t)1 << 32);
	st->hold_from = base;
	stage_hold(&sg, base);
	stage("h1", (const char *[]){ "a=held", NULL });
	stage_hold(&sg, 0); /* the read goes on elsewhere; this one is cut short */
	stage("h2", (const char *[]){ "a=2", NULL }); /* not held */
	int64_t b = build(1000);
	char *text = body(b);
	CHECK_STR(text, "batch=thirdPartyId,a\nh2,2\n");
	free(text);
	store_begin(st);
	CHECK(stage_undo_hold(st, base) == 0);
	store_commit(st);
	st->hold_from = INT64_MAX;
	CHECK_STR(column_value(st, "h1", "pending", "a", v, sizeof(v)), "old");
	int64_t b2 = build(1000);
	CHECK(b2 > b);
	text = body(b2);
	CHECK_STR(text, "batch=thirdPartyId,a\nh1,old\n");
	free(text);
	teardown();
}

int main(void)
{
	RUN(test_body_and_acceptance);
	RUN(test_limits);
	RUN(test_split_and_kill);
	RUN(test_moved_members);
	RUN(test_stuck);
	RUN(test_header_order);
	RUN(test_large_body);
	RUN(test_sender_steps);
	RUN(test_retry_dead);
	RUN(test_failed_rows);
	RUN(test_unconfirm);
	RUN(test_complete_and_fold);
	RUN(test_only_if_full);
	RUN(test_hold_undone_after_a_cut);
	return check_result("test_queue");
}
