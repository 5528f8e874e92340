/* SPDX-License-Identifier: MIT */
/* Batches: the body format, full_profile vs changed_only rows, the row and byte
 * limits, acceptance into the mirror, dead letters, 413 splits and stuck re-queues. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "batch.h"
#include "check.h"
#include "config.h"
#include "stage.h"
#include "state_fixture.h"

static struct store *st;
static struct stage sg;
static struct attrset in;
static struct config cfg;
static char v[256];

static void stage(const char *id, const char *const *pairs)
{
	set_of(st, &in, pairs);
	store_begin(st);
	CHECK(stage_profile(&sg, id, strlen(id), &in, "test", NULL) >= 0);
	store_commit(st);
}

/* The body of batch id as a string (caller frees), written to a file as the
 * sender writes it. */
static char *body(int64_t id)
{
	FILE *f = tmpfile();
	CHECK(f != NULL);
	int64_t n = batch_write_body(st, &cfg, id, fileno(f));
	CHECK(n >= 0);
	char *text = calloc(1, n > 0 ? (size_t)n + 1 : 1);
	rewind(f);
	CHECK(text && fread(text, 1, (size_t)n, f) == (size_t)n && fgetc(f) == EOF);
	fclose(f);
	return text;
}

/* One row through a body writer with header ids (in the order given); the
 * blob is raw bytes. Returns body_writer_row's result; the row text in *out. */
static int writer_row(const uint32_t *ids, size_t n, const char *profile, const void *blob, size_t blob_len,
		      char *out, size_t out_size)
{
	struct body_writer w;
	CHECK(body_writer_init(&w, ids, n) == 0);
	int r = body_writer_row(&w, profile, strlen(profile), blob, blob_len);
	snprintf(out, out_size, "%.*s", (int)w.out.len, w.out.data);
	body_writer_finish(&w);
	return r;
}

/* The body writer alone: columns in ascending id order whatever the header's
 * order, attributes outside the header left out, gaps of any width, values and
 * profile ids of every length class, and corrupt blobs refused. */
static void test_body_writer(void)
{
	char row[4096];
	struct attrset set;
	struct buf blob;
	attrset_init(&set);
	buf_init(&blob);
	static const uint32_t three[] = { 9, 2, 5 };
	attrset_put(&set, 2, "two", 3);
	attrset_put(&set, 7, "not in header", 13);
	attrset_put(&set, 9, "nine, 9", 7);
	CHECK(attrset_encode(&set, &blob) == 0);
	CHECK(writer_row(three, 3, "p1", blob.data, blob.len, row, sizeof(row)) == 0);
	CHECK_STR(row, "p1,two,,nine%2C%209\n");
	struct body_writer w;
	CHECK(body_writer_init(&w, three, 3) == 0);
	CHECK(w.ids[0] == 2 && w.ids[1] == 5 && w.ids[2] == 9);
	body_writer_finish(&w);

	/* 40 columns, only the last one set: 40 commas, more than one 16-byte
	 * store of separators; a value over 127 bytes (two-byte length). */
	uint32_t forty[40];
	for (uint32_t i = 0; i < 40; i++)
		forty[i] = 100 + i;
	char big[300];
	memset(big, 'v', sizeof(big));
	big[150] = ' ';
	attrset_clear(&set);
	buf_reset(&blob);
	attrset_put(&set, 139, big, sizeof(big));
	CHECK(attrset_encode(&set, &blob) == 0);
	static const char *const profiles[] = { "p", "cust-12", "cust-1234", "cust-000000000123", "c-0123456789abcdef-x" };
	for (size_t i = 0; i < sizeof(profiles) / sizeof(profiles[0]); i++) {
		CHECK(writer_row(forty, 40, profiles[i], blob.data, blob.len, row, sizeof(row)) == 0);
		size_t pl = strlen(profiles[i]);
		CHECK(strncmp(row, profiles[i], pl) == 0);
		for (size_t c = 0; c < 40; c++)
			CHECK(row[pl + c] == ',');
		CHECK(strncmp(row + pl + 40, big, 150) == 0 && strncmp(row + pl + 190, "%20", 3) == 0 &&
		      strlen(row) == pl + 40 + 302 + 1);
	}

	/* Corrupt blobs: ids out of order, a NUL inside a value, a length past the end. */
	static const unsigned char descending[] = { 9, 1, 'a', 2, 1, 'b' };
	CHECK(writer_row(three, 3, "p", descending, sizeof(descending), row, sizeof(row)) == -EINVAL);
	static const unsigned char nul[] = { 2, 3, 'a', 0, 'b' };
	CHECK(writer_row(three, 3, "p", nul, sizeof(nul), row, sizeof(row)) == -EINVAL);
	static const unsigned char truncated[] = { 2, 9, 'a' };
	CHECK(writer_row(three, 3, "p", truncated, sizeof(truncated), row, sizeof(row)) == -EINVAL);
	attrset_finish(&set);
	buf_finish(&blob);
}

static int64_t q(const char *sql)
{
	return store_query_int(st, sql, -1);
}

static void accept(int64_t id)
{
	store_begin(st);
	CHECK(batch_accept(st, id) == 0);
	store_commit(st);
}

/* A body of several writer chunks, each handed to the file writer's thread
 * while the next is encoded: every row arrives once, in order. Then the
 * write errors a sender can meet: a full disk and a bad descriptor. */
static void test_large_body(void)
{
	char id[32], val[128];
	enum { N = 20000 }; /* 2.4 MB: two chunks and a rest */
	store_begin(st);
	for (int i = 0; i < N; i++) {
		snprintf(id, sizeof(id), "big%05d", i);
		snprintf(val, sizeof(val), "bulk=v%05d %0100d", i, i);
		set_of(st, &in, (const char *[]){ val, NULL });
		CHECK(stage_profile(&sg, id, strlen(id), &in, "test", NULL) >= 0);
	}
	store_commit(st);
	int64_t b = batch_build(st, &cfg, N);
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
	char *text = body(b);
	CHECK(text && strlen(text) == want.len && memcmp(text, want.data, want.len) == 0);
	free(text);

	int full = open("/dev/full", O_WRONLY);
	CHECK(full >= 0 && batch_write_body(st, &cfg, b, full) == -ENOSPC);
	close(full);
	int closed = open("/dev/null", O_WRONLY);
	close(closed);
	CHECK(batch_write_body(st, &cfg, b, closed) == -EBADF);
	buf_finish(&want);
	accept(b);
}

int main(void)
{
	st = fixture_store();
	if (!st)
		return 1;
	stage_init(&sg, st);
	attrset_init(&in);
	cfg.target.id_type = ID_THIRD_PARTY;
	cfg.batch.max_rows = 500000;
	cfg.batch.max_bytes = 49000000;
	cfg.batch.rows = ROWS_FULL_PROFILE;

	stage("cust-1", (const char *[]){ "loyaltyTier=gold", "city=Amsterdam", NULL });
	stage("cust-2", (const char *[]){ "city=Utrecht", NULL });
	stage("cust-3", (const char *[]){ "loyaltyTier=50% off & more", "city=a+b=c, \"q\"\nx", NULL });
	int64_t b1 = batch_build(st, &cfg, 1000);
	CHECK(b1 > 0);
	char *text = body(b1);
	const char *want = "batch=thirdPartyId,loyaltyTier,city\n"
			   "cust-1,gold,Amsterdam\n"
			   "cust-2,,Utrecht\n"
			   "cust-3,50%25%20off%20%26%20more,a%2Bb%3Dc%2C%20%22q%22%0Ax\n";
	CHECK_STR(text, want);
	free(text);
	/* The size computed while building is the exact encoded size. */
	CHECK(q("SELECT bytes FROM batches WHERE id = 1") == (int64_t)strlen(want));
	/* In flight: not pending any more, and not picked up by the next batch. */
	CHECK(q("SELECT count(*) FROM profiles WHERE pending IS NOT NULL") == 0);
	stage("cust-1", (const char *[]){ "loyaltyTier=silver", NULL });
	CHECK(batch_build(st, &cfg, 1000) == 0);
	accept(b1);
	CHECK_STR(column_value(st, "cust-1", "accepted", "city", v, sizeof(v)), "Amsterdam");
	CHECK_STR(column_value(st, "cust-1", "inflight", "city", v, sizeof(v)), "(none)");

	/* full_profile: the changed profile's row carries all its attributes. */
	int64_t b2 = batch_build(st, &cfg, 1000);
	CHECK(b2 > b1);
	text = body(b2);
	CHECK_STR(text, "batch=thirdPartyId,loyaltyTier,city\ncust-1,silver,Amsterdam\n");
	free(text);
	accept(b2);

	/* changed_only: just the changed cells. pcId header. */
	cfg.batch.rows = ROWS_CHANGED_ONLY;
	cfg.target.id_type = ID_PC;
	stage("cust-1", (const char *[]){ "city=Rotterdam", "loyaltyTier=silver", NULL });
	int64_t b3 = batch_build(st, &cfg, 1000);
	text = body(b3);
	CHECK_STR(text, "batch=pcId,city\ncust-1,Rotterdam\n");
	free(text);
	accept(b3);
	cfg.target.id_type = ID_THIRD_PARTY;
	cfg.batch.rows = ROWS_FULL_PROFILE;

	/* Row limit (and a caller's smaller budget). */
	char id[32];
	for (int i = 0; i < 25; i++) {
		snprintf(id, sizeof(id), "r%02d", i);
		stage(id, (const char *[]){ "a=1", NULL });
	}
	cfg.batch.max_rows = 10;
	int64_t b4 = batch_build(st, &cfg, 1000);
	CHECK(q("SELECT rows FROM batches ORDER BY id DESC LIMIT 1") == 10);
	int64_t b5 = batch_build(st, &cfg, 3);
	CHECK(b5 > b4 && q("SELECT rows FROM batches ORDER BY id DESC LIMIT 1") == 3);
	cfg.batch.max_rows = 500000;

	/* Byte limit: the encoded body never exceeds max_bytes, and is as full as it can be. */
	for (int i = 0; i < 100; i++) {
		snprintf(id, sizeof(id), "s%03d", i);
		stage(id, (const char *[]){ "a=1", NULL });
	}
	cfg.batch.max_bytes = 300;
	int64_t b6 = batch_build(st, &cfg, 1000);
	text = body(b6);
	CHECK(strlen(text) <= 300 && strlen(text) + 7 > 300);
	CHECK(q("SELECT bytes FROM batches ORDER BY id DESC LIMIT 1") == (int64_t)strlen(text));
	free(text);
	int64_t b6_rows = q("SELECT rows FROM batches WHERE id = 6");
	CHECK(b6_rows > 30);
	cfg.batch.max_bytes = 49000000;

	/* 413: split in two halves; a single row cannot be split. */
	store_begin(st);
	CHECK(batch_split(st, b4) == 0);
	store_commit(st);
	CHECK(q("SELECT state FROM batches WHERE id = 4") == 0); /* text 'split' reads as 0 */
	CHECK(q("SELECT count(*) FROM batches WHERE state = 'ready' AND rows = 5") == 2);
	CHECK(q("SELECT count(*) FROM profiles WHERE inflight_batch = 4") == 0);
	CHECK(q("SELECT count(DISTINCT inflight_batch) FROM profiles WHERE id BETWEEN 'r00' AND 'r09'") == 2);
	store_begin(st);
	CHECK(batch_split(st, b5 + 100) == -E2BIG);
	store_rollback(st);

	/* Dead letters keep profile, attribute, value and reason; profiles are released. */
	store_begin(st);
	CHECK(batch_kill(st, b5, "HTTP 400", "bad request") == 0);
	store_commit(st);
	CHECK(q("SELECT count(*) FROM dead_letters WHERE reason = 'HTTP 400' AND attr = 'a' AND value = '1'") == 3);
	CHECK(q("SELECT count(*) FROM profiles WHERE inflight_batch = 5") == 0);
	CHECK(q("SELECT count(*) FROM batch_rows WHERE batch_id = 5") == 0);

	/* Stuck: re-queued once (as a linked batch), dead-lettered the second time. */
	accept(b6);
	store_begin(st);
	CHECK(batch_requeue_stuck(st, &sg, b6) == 0);
	store_commit(st);
	int64_t again = q("SELECT id FROM batches WHERE requeue_of = 6");
	CHECK(again > b6);
	CHECK(q("SELECT rows FROM batches WHERE requeue_of = 6") == b6_rows);
	accept(again);
	store_begin(st);
	CHECK(batch_requeue_stuck(st, &sg, again) == 0);
	store_commit(st);
	CHECK(q("SELECT count(*) FROM dead_letters WHERE reason LIKE '%stuck again%'") == b6_rows);

	/* The stored header is in ascending id order (the body's column order),
	 * whatever order the rows first used the attributes in. */
	stage("hdr-1", (const char *[]){ "zz_new_attr=1", NULL });
	stage("hdr-2", (const char *[]){ "city=Utrecht", "loyaltyTier=gold", NULL });
	int64_t hb = batch_build(st, &cfg, 1000);
	CHECK(hb > 0);
	uint32_t *hids = NULL;
	size_t hn = 0;
	CHECK(batch_header_ids(st, hb, &hids, &hn) == 0 && hn >= 3);
	for (size_t i = 1; i < hn; i++)
		CHECK(hids[i - 1] < hids[i]);
	free(hids);
	/* A header cut inside a varint is refused, and so is writing its body. */
	char sql[128];
	snprintf(sql, sizeof(sql), "UPDATE batches SET header = x'0180' WHERE id = %lld", (long long)hb);
	CHECK(store_exec(st, sql) == 0);
	CHECK(batch_header_ids(st, hb, &hids, &hn) == -EINVAL && hids == NULL);
	int sink = open("/dev/null", O_WRONLY);
	CHECK(sink >= 0 && batch_write_body(st, &cfg, hb, sink) == -EINVAL);
	close(sink);

	test_large_body();
	test_body_writer();

	attrset_finish(&in);
	stage_finish(&sg);
	fixture_cleanup(st);
	return check_result("test_batch");
}
