/* SPDX-License-Identifier: MIT */
/* The staging diff (DESIGN.md guarantee 2): only real changes are staged, newer
 * values replace older unsent ones, and a value that changes back while another is
 * in flight is sent again. */
#include <errno.h>

#include "check.h"
#include "stage.h"
#include "state_fixture.h"

static struct store *st;
static struct stage sg;
static struct attrset in;
static char v[256];
static bool last_known;

static int stage(const char *id, const char *const *pairs)
{
	set_of(st, &in, pairs);
	store_begin(st);
	bool known = false;
	int r = stage_profile(&sg, id, strlen(id), &in, "test", NULL, &known);
	last_known = known;
	store_commit(st);
	return r;
}

/* 1 when profile id has a row in profiles, 0 when not. */
static int profile_rows(const char *id)
{
	char sql[128];
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM profiles WHERE id = '%s'", id);
	return (int)store_int(st, sql, -1, "");
}

static const char *pending(const char *id, const char *name)
{
	return column_value(st, id, "pending", name, v, sizeof(v));
}

static void exec(const char *sql)
{
	CHECK(store_exec(st, sql) == 0);
}

int main(void)
{
	st = fixture_store();
	if (!st)
		return 1;
	stage_init(&sg, st);
	attrset_init(&in);

	/* New profile: everything is a change. */
	CHECK(stage("p1", (const char *[]){ "tier=gold", "city=Utrecht", NULL }) == 1);
	CHECK_STR(pending("p1", "tier"), "gold");
	CHECK_STR(pending("p1", "city"), "Utrecht");
	CHECK(!last_known);
	/* The same again: nothing. The profile is now known as this source's. */
	CHECK(stage("p1", (const char *[]){ "tier=gold", "city=Utrecht", NULL }) == 0);
	CHECK(last_known);
	/* Newer value replaces the unsent one. */
	CHECK(stage("p1", (const char *[]){ "tier=silver", NULL }) == 1);
	CHECK_STR(pending("p1", "tier"), "silver");
	CHECK_STR(pending("p1", "city"), "Utrecht");

	/* Pretend Target accepted tier=gold, city=Utrecht for p2. */
	set_of(st, &in, (const char *[]){ "tier=gold", "city=Utrecht", NULL });
	struct buf blob;
	buf_init(&blob);
	attrset_encode(&in, &blob);
	sqlite3_stmt *s;
	sqlite3_prepare_v2(st->db, "INSERT INTO profiles (id, accepted) VALUES ('p2', ?)", -1, &s, NULL);
	sqlite3_bind_blob(s, 1, blob.data, (int)blob.len, SQLITE_STATIC);
	CHECK(sqlite3_step(s) == SQLITE_DONE);
	sqlite3_finalize(s);
	/* Unchanged against the mirror: nothing staged. */
	CHECK(stage("p2", (const char *[]){ "tier=gold", "city=Utrecht", NULL }) == 0);
	CHECK_STR(pending("p2", "tier"), "(none)");
	/* One attribute changed: only it is pending. */
	CHECK(stage("p2", (const char *[]){ "tier=platinum", "city=Utrecht", NULL }) == 1);
	CHECK_STR(pending("p2", "tier"), "platinum");
	CHECK_STR(pending("p2", "city"), "");
	/* Changing back before it was sent cancels the pending change. */
	CHECK(stage("p2", (const char *[]){ "tier=gold", NULL }) == 1);
	CHECK_STR(pending("p2", "tier"), "(none)");

	/* A, then B in flight, then A again: A must be sent again. */
	set_of(st, &in, (const char *[]){ "tier=bronze", NULL });
	buf_reset(&blob);
	attrset_encode(&in, &blob);
	sqlite3_prepare_v2(st->db, "UPDATE profiles SET inflight = ?, inflight_batch = 7 WHERE id = 'p2'", -1, &s, NULL);
	sqlite3_bind_blob(s, 1, blob.data, (int)blob.len, SQLITE_STATIC);
	CHECK(sqlite3_step(s) == SQLITE_DONE);
	sqlite3_finalize(s);
	CHECK(stage("p2", (const char *[]){ "tier=gold", NULL }) == 1);
	CHECK_STR(pending("p2", "tier"), "gold");
	/* ... and equal to what is in flight: nothing to send. */
	CHECK(stage("p2", (const char *[]){ "tier=bronze", NULL }) == 1); /* cancels the pending gold */
	CHECK_STR(pending("p2", "tier"), "(none)");
	CHECK(stage("p2", (const char *[]){ "tier=bronze", NULL }) == 0);

	/* stage_refresh re-stages the latest values (in flight, else accepted). */
	set_of(st, &in, (const char *[]){ "tier=", "city=", NULL });
	store_begin(st);
	CHECK(stage_refresh(&sg, "p2", &in, "test") == 0);
	store_commit(st);
	CHECK_STR(pending("p2", "tier"), "bronze");
	CHECK_STR(pending("p2", "city"), "Utrecht");
	/* stage_restore never overwrites a newer pending value. */
	set_of(st, &in, (const char *[]){ "tier=old", "zip=1234", NULL });
	store_begin(st);
	CHECK(stage_restore(&sg, "p2", &in, "test") == 0);
	store_commit(st);
	CHECK_STR(pending("p2", "tier"), "bronze");
	CHECK_STR(pending("p2", "zip"), "1234");

	/* 64 KB per profile. */
	static char big[70000];
	memset(big, 'x', sizeof(big) - 1);
	char pair[70010];
	snprintf(pair, sizeof(pair), "bio=%s", big);
	CHECK(stage("p3", (const char *[]){ pair, NULL }) == -E2BIG);
	CHECK_STR(pending("p3", "bio"), "(none)");
	big[30000] = '\0';
	snprintf(pair, sizeof(pair), "bio=%s", big);
	CHECK(stage("p3", (const char *[]){ pair, NULL }) == 1);
	/* Two attributes of 30 KB each still fit; a third pushes it over. */
	char pair2[70010], pair3[70010];
	snprintf(pair2, sizeof(pair2), "bio2=%s", big);
	CHECK(stage("p3", (const char *[]){ pair2, NULL }) == 1);
	snprintf(pair3, sizeof(pair3), "bio3=%s", big);
	CHECK(stage("p3", (const char *[]){ pair3, NULL }) == -E2BIG);
	CHECK_STR(pending("p3", "bio3"), "");

	/* A NUL byte in a value would break the blob's NUL-joined values (every
	 * source refuses them first): refused, nothing staged. */
	attrset_clear(&in);
	attrset_put(&in, attr(st, "note"), "a\0b", 3);
	store_begin(st);
	CHECK(stage_profile(&sg, "p4", 2, &in, "test", NULL, NULL) == -EILSEQ);
	store_commit(st);
	CHECK(profile_rows("p4") == 0);
	/* Refusals reject the row alone, with a reason; other results have none. */
	CHECK_STR(stage_refusal(-EILSEQ), "NUL byte in a value");
	CHECK_STR(stage_refusal(-E2BIG), "profile data would exceed Target's 64 KB per profile");
	CHECK(!stage_refusal(1) && !stage_refusal(0) && !stage_refusal(-EIO) && !stage_refusal(-EINVAL));

	exec("SELECT 1");
	buf_finish(&blob);
	attrset_finish(&in);
	stage_finish(&sg);
	fixture_cleanup(st);
	return check_result("test_stage");
}
