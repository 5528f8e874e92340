/* SPDX-License-Identifier: MIT */
/* Schema migrations. 3: a version 2 state database, its attribute blobs in
 * format 1, opens with every blob in format 2 and every value kept; a blob
 * that does not decode stops the migration and leaves the database as it
 * was. 5: batches in flight keep their rows and bodies, batches awaiting
 * their status are not assumed delivered. The caller's hook hears when a
 * migration starts and while it runs. */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "attrset.h"
#include "check.h"
#include "config.h"
#include "queue.h"
#include "store.h"

extern const char *const schema_migrations[];
extern const size_t schema_migration_count;

static char dir[] = "/tmp/tpsync-migrate-XXXXXX";

/* A version 2 database at path holding the given SQL's rows. */
static void make_v2(const char *path, const char *rows)
{
	sqlite3 *db;
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_exec(db, schema_migrations[0], NULL, NULL, NULL) == SQLITE_OK);
	CHECK(sqlite3_exec(db, schema_migrations[1], NULL, NULL, NULL) == SQLITE_OK);
	CHECK(sqlite3_exec(db, "PRAGMA user_version = 2", NULL, NULL, NULL) == SQLITE_OK);
	CHECK(sqlite3_exec(db, rows, NULL, NULL, NULL) == SQLITE_OK);
	CHECK(sqlite3_close(db) == SQLITE_OK);
}

/* Column col of the first row of sql, decoded into set (format 2). Returns
 * attrset_decode's result, or -ENOENT for no row, 1 for NULL. */
static int blob_of(struct store *st, const char *sql, struct attrset *set, struct buf *copy)
{
	sqlite3_stmt *s;
	int r = -ENOENT;
	CHECK(sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) == SQLITE_OK);
	if (sqlite3_step(s) == SQLITE_ROW) {
		buf_reset(copy);
		if (sqlite3_column_type(s, 0) == SQLITE_NULL) {
			r = 1;
		} else {
			buf_append(copy, sqlite3_column_blob(s, 0), (size_t)sqlite3_column_bytes(s, 0));
			r = attrset_decode(set, copy->data, copy->len);
		}
	}
	sqlite3_finalize(s);
	return r;
}

static void test_converted(void)
{
	char path[128], err[256];
	snprintf(path, sizeof(path), "%s/ok.db", dir);
	/* Format 1: varint id, varint length, bytes. 0xac 0x02 is id 300. */
	make_v2(path, "INSERT INTO attr_names (id, name) VALUES (1, 'tier'), (2, 'city'), (300, 'note');"
		      "INSERT INTO profiles (id, accepted, pending, pending_seq) VALUES"
		      " ('p1', x'0104676f6c640207557472656368747400', x'00000206c3bc72696368', 1),"
		      " ('p4', NULL, NULL, NULL),"
		      " ('p2', x'', NULL, NULL),"
		      " ('p3', x'ac02096c6f6e67206e6f7465', NULL, NULL);"
		      "INSERT INTO batches (id, state, created_at) VALUES (1, 'ready', 0);"
		      "UPDATE profiles SET inflight = x'0104676f6c640206c3bc72696368', inflight_batch = 1 WHERE id = 'p4';"
		      "INSERT INTO batch_rows (batch_id, profile, attrs, changed) VALUES"
		      " (1, 'p4', x'0104676f6c640206c3bc72696368', x'0206c3bc72696368');");
	struct store *st = store_create(path, 0, err, sizeof(err));
	CHECK(st != NULL);
	if (!st) {
		fprintf(stderr, "store_create: %s\n", err);
		return;
	}
	CHECK(store_int(st, "PRAGMA user_version", 0, "") == (int64_t)schema_migration_count);
	struct attrset set;
	struct buf copy;
	attrset_init(&set);
	buf_init(&copy);
	CHECK(blob_of(st, "SELECT accepted FROM profiles WHERE id = 'p1'", &set, &copy) == 0 && set.n == 3);
	CHECK(attr_kv_equals(attrset_get(&set, 1), "gold", 4) && attr_kv_equals(attrset_get(&set, 2), "Utrecht", 7));
	CHECK(attrset_get(&set, 116) && attrset_get(&set, 116)->len == 0); /* id 't' = 116: "" */
	CHECK(blob_of(st, "SELECT pending FROM profiles WHERE id = 'p1'", &set, &copy) == 0 && set.n == 2);
	CHECK(attr_kv_equals(attrset_get(&set, 2), "\xc3\xbcrich", 6) && attr_kv_equals(attrset_get(&set, 0), "", 0));
	CHECK(blob_of(st, "SELECT inflight FROM profiles WHERE id = 'p1'", &set, &copy) == 1);
	CHECK(blob_of(st, "SELECT accepted FROM profiles WHERE id = 'p2'", &set, &copy) == 0 && set.n == 0);
	CHECK(store_int(st, "SELECT length(accepted) FROM profiles WHERE id = 'p2'", -1, "") == 0);
	CHECK(blob_of(st, "SELECT accepted FROM profiles WHERE id = 'p3'", &set, &copy) == 0 && set.n == 1);
	CHECK(attr_kv_equals(attrset_get(&set, 300), "long note", 9));
	/* The batch in flight carries p4's changed value (schema 5: inflight holds
	 * just that). */
	CHECK(blob_of(st, "SELECT inflight FROM profiles WHERE id = 'p4'", &set, &copy) == 0 && set.n == 1);
	CHECK(attr_kv_equals(attrset_get(&set, 2), "\xc3\xbcrich", 6));
	CHECK(store_int(st, "SELECT rows FROM batches WHERE id = 1", 0, "") == 1);
	attrset_finish(&set);
	buf_finish(&copy);
	store_destroy(st);
	/* Opening again migrates nothing more. */
	st = store_create(path, 0, err, sizeof(err));
	CHECK(st && store_int(st, "PRAGMA user_version", 0, "") == (int64_t)schema_migration_count);
	store_destroy(st);
}

static void test_corrupt(void)
{
	char path[128], err[256] = "";
	snprintf(path, sizeof(path), "%s/corrupt.db", dir);
	/* p2's length byte (9) runs past its end. */
	make_v2(path, "INSERT INTO profiles (id, accepted) VALUES ('p1', x'0104676f6c64'), ('p2', x'0109616263');");
	CHECK(store_create(path, 0, err, sizeof(err)) == NULL);
	CHECK(strstr(err, "migration 3 failed") && strstr(err, "corrupt attribute blob"));
	sqlite3 *db;
	sqlite3_stmt *s;
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_prepare_v2(db, "SELECT (SELECT user_version FROM pragma_user_version),"
				     " hex(accepted) FROM profiles WHERE id = 'p1'", -1, &s, NULL) == SQLITE_OK);
	CHECK(sqlite3_step(s) == SQLITE_ROW);
	CHECK(sqlite3_column_int(s, 0) == 2);
	CHECK_STR((const char *)sqlite3_column_text(s, 1), "0104676F6C64"); /* rolled back: still format 1 */
	sqlite3_finalize(s);
	sqlite3_close(db);
}

/* Migration 3's blob conversion, on a database with no blobs yet. */
static void identity(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	(void)argc;
	sqlite3_result_value(ctx, argv[0]);
}

/* A version 4 database at path holding the given SQL's rows. */
static void make_v4(const char *path, const char *rows)
{
	sqlite3 *db;
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_create_function(db, "tpsync_attrs_v2", 1, SQLITE_UTF8, NULL, identity, NULL, NULL) == SQLITE_OK);
	for (int v = 0; v < 4; v++)
		CHECK(sqlite3_exec(db, schema_migrations[v], NULL, NULL, NULL) == SQLITE_OK);
	CHECK(sqlite3_exec(db, "PRAGMA user_version = 4", NULL, NULL, NULL) == SQLITE_OK);
	CHECK(sqlite3_exec(db, rows, NULL, NULL, NULL) == SQLITE_OK);
	CHECK(sqlite3_close(db) == SQLITE_OK);
}

/* Migration 5: a ready batch (pb in flight with a newer value waiting) keeps
 * its row and body; a batch Target accepted but had not finished (pa, whose
 * value the old scheme put in accepted at once) is unconfirmed, and pa's
 * latest values are queued again behind everything else. */
static void test_v5(void)
{
	char path[128], err[256];
	snprintf(path, sizeof(path), "%s/v4.db", dir);
	/* Format 2 blobs: {tier: gold}, {tier: silver}, {tier: silver, city: Delft},
	 * {city: Delft}, {tier: bronze}. */
	make_v4(path, "INSERT INTO attr_names (id, name) VALUES (1, 'tier'), (2, 'city');"
		      "INSERT INTO profiles (id, accepted, inflight, inflight_batch, pending, pending_seq) VALUES"
		      " ('pa', x'0101676f6c6400', NULL, NULL, NULL, NULL),"
		      " ('pb', x'010173696c76657200', x'02010273696c7665720044656c667400', 1, x'010162726f6e7a6500', 5);"
		      "INSERT INTO batches (id, state, created_at, rows, header) VALUES (1, 'ready', 0, 1, x'0102'),"
		      " (2, 'submitted', 0, 1, x'01'), (3, 'complete', 0, 7, x'01');"
		      "INSERT INTO batch_rows (batch_id, profile, attrs, changed) VALUES"
		      " (1, 'pb', x'02010273696c7665720044656c667400', x'010244656c667400'),"
		      " (2, 'pa', x'0101676f6c6400', x'0101676f6c6400');");
	struct store *st = store_create(path, 0, err, sizeof(err));
	CHECK(st != NULL);
	if (!st) {
		fprintf(stderr, "store_create: %s\n", err);
		return;
	}
	CHECK(store_int(st, "SELECT count(*) FROM sqlite_master WHERE name = 'batch_rows'", -1, "") == 0);
	CHECK(store_int(st, "SELECT count(*) FROM batches WHERE id = 2 AND state = 'unconfirmed'", 0, "") == 1);
	CHECK(store_int(st, "SELECT pending_seq FROM profiles WHERE id = 'pa'", 0, "") == 6);
	CHECK(st->next_seq == 7);
	struct queue *q = queue_create(st);
	struct config cfg = { 0 };
	cfg.target.id_type = ID_THIRD_PARTY;
	cfg.batch.max_rows = 1000;
	cfg.batch.max_bytes = 1000000;
	cfg.batch.rows = ROWS_FULL_PROFILE;
	FILE *f = tmpfile();
	char text[256] = "";
	CHECK(q && f && queue_write_body(q, &cfg, 1, fileno(f)) > 0);
	rewind(f);
	CHECK(fread(text, 1, sizeof(text) - 1, f) > 0);
	CHECK_STR(text, "batch=thirdPartyId,tier,city\npb,silver,Delft\n");
	fclose(f);
	/* pb's newer value waits for batch 1; pa's latest value goes next. */
	struct queue_build_opts o = { .max_rows = 1000, .body_fd = -1 };
	struct queue_cut cut;
	CHECK(queue_build(q, &cfg, &o, &cut) == 0 && cut.id == 4 && cut.rows == 1);
	f = tmpfile();
	memset(text, 0, sizeof(text));
	CHECK(f && queue_write_body(q, &cfg, 4, fileno(f)) > 0);
	rewind(f);
	CHECK(fread(text, 1, sizeof(text) - 1, f) > 0);
	CHECK_STR(text, "batch=thirdPartyId,tier\npa,gold\n");
	fclose(f);
	queue_destroy(q);
	store_destroy(st);
}

static int hook_calls, hook_from, hook_to;

static void count_calls(void *arg, int from, int to)
{
	(void)arg;
	if (hook_calls++ == 0) {
		hook_from = from;
		hook_to = to;
	}
}

/* The caller hears when a migration starts, and then while it runs. */
static void test_hook(void)
{
	char path[128], err[256];
	snprintf(path, sizeof(path), "%s/hook.db", dir);
	make_v2(path, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)"
		      " INSERT INTO profiles (id, accepted) SELECT 'p' || i, x'0104676f6c64' FROM n;");
	store_on_migration(count_calls, NULL, 0);
	struct store *st = store_create(path, 0, err, sizeof(err));
	CHECK(st != NULL);
	CHECK(hook_calls >= 2 && hook_from == 2 && hook_to == (int)schema_migration_count);
	CHECK(st && store_int(st, "SELECT count(*) FROM profiles WHERE accepted = x'0101676f6c6400'", 0, "") == 5000);
	store_destroy(st);
	/* Nothing to migrate: no call. */
	hook_calls = 0;
	st = store_create(path, 0, err, sizeof(err));
	CHECK(st && hook_calls == 0);
	store_destroy(st);
	store_on_migration(NULL, NULL, 0);
}

int main(void)
{
	if (!mkdtemp(dir))
		return 1;
	test_converted();
	test_corrupt();
	test_hook();
	test_v5();
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	return check_result("test_migrate");
}
