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

	/* A blob with exactly the header's ids is copied whole (the values are
	 * already joined by NULs); the same set under a wider header goes value
	 * by value. Both give the same cells. */
	attrset_clear(&set);
	buf_reset(&blob);
	attrset_put(&set, 2, "x y", 3);
	attrset_put(&set, 5, "", 0);
	attrset_put(&set, 9, "z,", 2);
	CHECK(attrset_encode(&set, &blob) == 0);
	CHECK(writer_row(three, 3, "p", blob.data, blob.len, row, sizeof(row)) == 0);
	CHECK_STR(row, "p,x%20y,,z%2C\n");
	static const uint32_t four[] = { 2, 5, 9, 11 };
	CHECK(writer_row(four, 4, "p", blob.data, blob.len, row, sizeof(row)) == 0);
	CHECK_STR(row, "p,x%20y,,z%2C,\n");

	/* Corrupt blobs (header ids 2, 5, 9: a whole-copy blob starts 3, 2, 5, 9). */
	static const struct {
		const char *why;
		unsigned char bytes[16];
		size_t len;
	} corrupt[] = {
		{ "ids out of order", { 2, 9, 2, 'a', 0, 'b', 0 }, 7 },
		{ "the header's ids, one value too many", { 3, 2, 5, 9, 'a', 0, 'b', 0, 'c', 0, 'd', 0 }, 12 },
		{ "the header's ids, one value too few", { 3, 2, 5, 9, 'a', 0, 'b', 0 }, 8 },
		{ "the header's ids, the last value cut", { 3, 2, 5, 9, 'a', 0, 'b', 0, 'c' }, 9 },
		{ "bytes after the last value", { 1, 2, 'a', 0, 'b', 0 }, 6 },
		{ "the id list past the end", { 5, 2 }, 2 },
	};
	for (size_t i = 0; i < sizeof(corrupt) / sizeof(corrupt[0]); i++) {
		int r = writer_row(three, 3, "p", corrupt[i].bytes, corrupt[i].len, row, sizeof(row));
		if (r != -EINVAL)
			fprintf(stderr, "corrupt blob accepted: %s\n", corrupt[i].why);
		CHECK(r == -EINVAL);
	}
	attrset_finish(&set);
	buf_finish(&blob);
}

/* Random rows against a reference built cell by cell: headers of 1 to 40
 * ids out of 60, sets of any of those ids (so rows are exactly their
 * header's, a part of it, or wider), values of 0 to 300 bytes from an
 * alphabet with bytes to encode. Both ways of writing a row must agree. */
static void test_body_writer_random(void)
{
	static const char alphabet[] = "abcXYZ019-._~ ,%&+=\n\"\xc3\xbc\xff";
	unsigned seed = 12345;
#define RND() (seed = seed * 1103515245u + 12345u, (seed >> 8) & 0xffffff)
	struct attrset set;
	struct buf blob, want;
	attrset_init(&set);
	buf_init(&blob);
	buf_init(&want);
	static char values[60][301];
	char *row = malloc(64 * 1024), enc[1024];
	for (int round = 0; round < 3000; round++) {
		uint32_t ids[40];
		size_t n = 1 + RND() % 40;
		for (size_t i = 0; i < n; i++) {
			uint32_t id;
			bool dup;
			do {
				id = 1 + RND() % 60;
				dup = false;
				for (size_t j = 0; j < i; j++)
					dup |= ids[j] == id;
			} while (dup);
			ids[i] = id;
		}
		attrset_clear(&set);
		int mode = (int)(RND() % 3); /* 0: the header's ids, 1: some of them, 2: any */
		for (uint32_t id = 1; id <= 60; id++) {
			bool in_header = false;
			for (size_t j = 0; j < n; j++)
				in_header |= ids[j] == id;
			if (mode == 0 ? !in_header : RND() % 2)
				continue;
			size_t len = RND() % 8 == 0 ? RND() % 301 : RND() % 20;
			for (size_t k = 0; k < len; k++)
				values[id - 1][k] = alphabet[RND() % (sizeof(alphabet) - 1)];
			attrset_put(&set, id, values[id - 1], (uint32_t)len);
		}
		buf_reset(&blob);
		CHECK(attrset_encode(&set, &blob) == 0);
		/* The reference: columns in ascending id order, each cell encoded alone. */
		uint32_t sorted[40];
		memcpy(sorted, ids, n * sizeof(ids[0]));
		for (size_t i = 1; i < n; i++)
			for (size_t j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
				uint32_t t = sorted[j];
				sorted[j] = sorted[j - 1];
				sorted[j - 1] = t;
			}
		buf_reset(&want);
		buf_append(&want, "p-1", 3);
		for (size_t i = 0; i < n; i++) {
			const struct attr_kv *kv = attrset_get(&set, sorted[i]);
			buf_putc(&want, ',');
			if (kv)
				buf_append(&want, enc, pctenc_encode(kv->val, kv->len, enc));
		}
		buf_putc(&want, '\n');
		buf_putc(&want, '\0');
		/* The blob copied to a buffer of its exact size: a read past it shows. */
		char *exact = malloc(blob.len);
		memcpy(exact, blob.data, blob.len);
		int r = writer_row(ids, n, "p-1", exact, blob.len, row, 64 * 1024);
		free(exact);
		CHECK(r == 0);
		if (r != 0 || strcmp(row, want.data) != 0) {
			fprintf(stderr, "round %d (mode %d): got  %s\n              want %s\n", round, mode, row, want.data);
			CHECK(0);
			break;
		}
	}
#undef RND
	free(row);
	attrset_finish(&set);
	buf_finish(&blob);
	buf_finish(&want);
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
	test_body_writer_random();

	attrset_finish(&in);
	stage_finish(&sg);
	fixture_cleanup(st);
	return check_result("test_batch");
}
