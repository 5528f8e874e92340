/* SPDX-License-Identifier: MIT */
/* File ingestion over a real state database and small files, on a real event
 * loop, without the rest of the daemon: slices and checkpoints, resuming a
 * file after a stop, a busy state database (retried, never failed), rejected
 * rows and unusable files. Each case has its own fixture. */
#include <errno.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "clock.h"
#include "config.h"
#include "ingest.h"
#include "state_fixture.h"

static struct store *st;
static struct event_base *base;
static struct ingest *ig;
static struct source_config src;
static struct source_stats stats;
static int progress_calls, done_calls, last_result;
static char spool[300];

static void on_progress(void *arg)
{
	progress_calls++;
}

static const struct ingest_listener listener = { .progress = on_progress };

static void on_done(void *arg, const char *path, int result)
{
	done_calls++;
	last_result = result;
}

static void setup(void)
{
	st = fixture_store();
	base = event_base_new();
	CHECK(st && base && event_base_priority_init(base, 3) == 0); /* as the daemon's */
	snprintf(spool, sizeof(spool), "%s/spool", fixture_dir);
	CHECK(mkdir(spool, 0750) == 0);
	memset(&src, 0, sizeof(src));
	src.name = "crm";
	src.type = SOURCE_SPOOL;
	src.path = spool;
	src.id_column = "customer_id";
	src.delimiter = ',';
	src.after = AFTER_ARCHIVE;
	memset(&stats, 0, sizeof(stats));
	progress_calls = done_calls = 0;
	last_result = 1;
	ig = ingest_create(base, st, NULL, &listener, NULL);
	CHECK(ig != NULL);
}

static void teardown(void)
{
	ingest_destroy(ig);
	event_base_free(base);
	fixture_cleanup(st);
}

/* Writes spool/name with a header and rows c%05d,tier,city (n of them) plus
 * extra text at the end. */
static void write_file(const char *name, const char *header, int n, const char *extra)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/%s", spool, name);
	FILE *f = fopen(path, "w");
	fprintf(f, "%s\n", header);
	for (int i = 0; i < n; i++)
		fprintf(f, "c%05d,t%d,city %d\n", i, i % 7, i);
	fputs(extra, f);
	fclose(f);
}

static void enqueue(const char *name)
{
	char *path;
	CHECK(asprintf(&path, "%s/%s", spool, name) > 0);
	struct ingest_request req = { .path = path, .src = &src, .stats = &stats, .after = INGEST_ARCHIVE,
				      .done = on_done };
	CHECK(ingest_enqueue(ig, &req) == 0);
}

/* Runs the loop until ingestion is idle (or 10 s pass). */
static bool run_until_idle(void)
{
	int64_t deadline = clock_mono_ms() + 10000;
	while (!ingest_is_idle(ig) && clock_mono_ms() < deadline)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	return ingest_is_idle(ig);
}

static int64_t q(const char *sql)
{
	return store_int(st, sql, -1, "");
}

static bool exists(const char *rel)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/%s", spool, rel);
	return access(path, F_OK) == 0;
}

/* 12,000 rows: several slices (each its own transaction, with its
 * checkpoint), every row staged once, the file archived once durable. */
static void test_slices_and_archive(void)
{
	setup();
	write_file("a.csv", "customer_id,tier,city", 12000, "");
	enqueue("a.csv");
	CHECK(run_until_idle());
	CHECK(done_calls == 1 && last_result == 0);
	CHECK(progress_calls >= 3); /* one per slice that staged rows, and the end */
	CHECK(q("SELECT count(*) FROM profiles WHERE pending IS NOT NULL") == 12000);
	CHECK(q("SELECT rows FROM ingested_files WHERE state = 'done'") == 12000);
	CHECK(q("SELECT staged FROM ingested_files") == 12000);
	CHECK(stats.rows_read == 12000 && stats.rows_staged == 12000 && stats.files == 1);
	CHECK(!exists("a.csv") && exists("archive/a.csv"));
	teardown();
}

/* Stopped after its first slice, the file resumes at its checkpoint in a new
 * ingestion: no row is read twice or skipped. */
static void test_resume_at_checkpoint(void)
{
	setup();
	write_file("b.csv", "customer_id,tier,city", 12000, "");
	enqueue("b.csv");
	int64_t deadline = clock_mono_ms() + 10000;
	while (q("SELECT offset FROM ingested_files") <= 0 && clock_mono_ms() < deadline)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	int64_t first = q("SELECT rows FROM ingested_files");
	CHECK(first > 0 && first < 12000);
	ingest_destroy(ig); /* the daemon stops between slices */
	ig = ingest_create(base, st, NULL, &listener, NULL);
	memset(&stats, 0, sizeof(stats));
	enqueue("b.csv");
	CHECK(run_until_idle());
	CHECK(last_result == 0);
	CHECK(stats.rows_read == 12000 - first);
	CHECK(q("SELECT rows FROM ingested_files WHERE state = 'done'") == 12000);
	CHECK(q("SELECT staged FROM ingested_files") == 12000);
	CHECK(q("SELECT count(*) FROM profiles") == 12000);
	CHECK(exists("archive/b.csv"));
	teardown();
}

/* Another connection holds the state database's write lock while the file's
 * header is mapped (a new attribute name must be recorded): ingestion is held
 * back with the reason and retried, and the good file is never failed. */
static void test_busy_database_retries_file(void)
{
	setup();
	sqlite3_busy_timeout(st->db, 1);
	write_file("c.csv", "customer_id,brand_new_attr,city", 10, "");
	enqueue("c.csv");
	char path[300];
	snprintf(path, sizeof(path), "%s/state.db", fixture_dir);
	sqlite3 *other = NULL;
	CHECK(sqlite3_open(path, &other) == SQLITE_OK);
	/* Up to the moment the file is recorded, then the lock. */
	int64_t deadline = clock_mono_ms() + 5000;
	while (q("SELECT count(*) FROM ingested_files") < 1 && clock_mono_ms() < deadline)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	CHECK(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK);
	deadline = clock_mono_ms() + 5000;
	while (!ingest_held_back(ig) && clock_mono_ms() < deadline)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	const char *why = ingest_held_back(ig);
	CHECK(why && strstr(why, "cannot record attribute name") != NULL);
	CHECK(done_calls == 0 && exists("c.csv") && !exists("failed/c.csv"));
	CHECK(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL) == SQLITE_OK);
	sqlite3_close(other);
	ingest_set_paused(ig, false); /* retry now rather than in 2 s */
	CHECK(run_until_idle());
	CHECK(done_calls == 1 && last_result == 0 && ingest_held_back(ig) == NULL);
	CHECK(q("SELECT count(*) FROM profiles") == 10 && stats.files_failed == 0);
	CHECK(exists("archive/c.csv"));
	teardown();
}

/* Bad rows are skipped and reported with line and reason beside the archived
 * file; a file without its id column goes to failed/ with a note. */
static void test_rejects_and_unusable_file(void)
{
	setup();
	write_file("d.csv", "customer_id,tier,city", 3, "bad+id,x,y\nc9,only-two\n");
	enqueue("d.csv");
	CHECK(run_until_idle());
	CHECK(last_result == 0 && stats.rows_rejected == 2 && stats.rows_staged == 3);
	FILE *f = fopen(strcat(strcpy((char[400]){ 0 }, spool), "/archive/d.rejects.csv"), "r");
	CHECK(f != NULL);
	if (f) {
		char text[1024] = "";
		size_t n = fread(text, 1, sizeof(text) - 1, f);
		text[n] = '\0';
		fclose(f);
		CHECK(strstr(text, "line,reason,row\n") == text);
		CHECK(strstr(text, "5,\"id contains '+' or '/'") != NULL);
		CHECK(strstr(text, "6,\"row has 2 fields, the header has 3\"") != NULL);
	}
	write_file("e.csv", "id,tier", 2, "");
	enqueue("e.csv");
	CHECK(run_until_idle());
	CHECK(last_result == -EINVAL && stats.files_failed == 1);
	CHECK(exists("failed/e.csv") && exists("failed/e.csv.error") && !exists("e.csv"));
	CHECK(strstr(stats.last_error, "no id column") != NULL);
	teardown();
}

/* A file whose slices stage nothing (the same rows again, reordered) still
 * hands the loop back between slices: each pass of the loop reads at most
 * one slice, so the control socket and curl are served in between. */
static void test_unchanged_file_yields_between_slices(void)
{
	setup();
	write_file("f1.csv", "customer_id,tier,city", 12000, "");
	enqueue("f1.csv");
	CHECK(run_until_idle());
	char path[400];
	snprintf(path, sizeof(path), "%s/f2.csv", spool);
	FILE *f = fopen(path, "w");
	fputs("customer_id,tier,city\n", f);
	for (int i = 11999; i >= 0; i--)
		fprintf(f, "c%05d,t%d,city %d\n", i, i % 7, i);
	fclose(f);
	memset(&stats, 0, sizeof(stats));
	enqueue("f2.csv");
	int passes = 0;
	int64_t deadline = clock_mono_ms() + 10000;
	while (!ingest_is_idle(ig) && clock_mono_ms() < deadline) {
		int64_t before = stats.rows_read;
		event_base_loop(base, EVLOOP_ONCE);
		CHECK(stats.rows_read - before <= 5000); /* one slice at most */
		passes++;
	}
	CHECK(ingest_is_idle(ig) && stats.rows_read == 12000 && stats.rows_staged == 0);
	CHECK(passes >= 3);
	teardown();
}

int main(void)
{
	RUN(test_slices_and_archive);
	RUN(test_resume_at_checkpoint);
	RUN(test_busy_database_retries_file);
	RUN(test_rejects_and_unusable_file);
	RUN(test_unchanged_file_yields_between_slices);
	return check_result("test_ingest");
}
