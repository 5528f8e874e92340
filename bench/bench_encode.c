/* SPDX-License-Identifier: MIT */
/* Encoding benchmark: builds one batch from the pending profiles of a state
 * database and writes its URL-encoded body, timing each part apart:
 *   build   choosing the rows (pending -> in flight, one transaction);
 *   write   batch_write_body: reading the rows from SQLite and encoding them;
 *   encode  the encoder alone over the same rows held in memory, to a file;
 *   scan    SQLite alone stepping through the same rows (the read floor).
 *   bench_encode STATE.db OUT [max_rows]
 * Prints "build_s write_s bytes rows encode_s scan_s". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "batch.h"
#include "buf.h"
#include "config.h"
#include "store.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: bench_encode STATE.db OUT [max_rows]\n");
		return 64;
	}
	char err[256];
	struct store *st = store_create(argv[1], err, sizeof(err));
	if (!st) {
		fprintf(stderr, "bench_encode: %s\n", err);
		return 1;
	}
	struct config cfg = { 0 };
	cfg.target.id_type = ID_THIRD_PARTY;
	cfg.batch.max_rows = argc > 3 ? atol(argv[3]) : TARGET_MAX_ROWS;
	cfg.batch.max_bytes = TARGET_MAX_BYTES - 1;
	cfg.batch.rows = ROWS_FULL_PROFILE;
	double t0 = now();
	int64_t id = batch_build(st, &cfg, cfg.batch.max_rows);
	double t1 = now();
	if (id <= 0) {
		fprintf(stderr, "bench_encode: no batch built (%lld): %s\n", (long long)id, sqlite3_errmsg(st->db));
		return 1;
	}
	FILE *out = fopen(argv[2], "w");
	if (!out) {
		perror(argv[2]);
		return 1;
	}
	static char buf[1 << 20];
	setvbuf(out, buf, _IOFBF, sizeof(buf));
	int64_t bytes = batch_write_body(st, &cfg, id, out);
	double t2 = now();
	if (bytes < 0 || fclose(out) != 0) {
		fprintf(stderr, "bench_encode: write failed\n");
		return 1;
	}

	/* The same rows into memory (untimed), then the read floor and the encoder. */
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(st->db, "SELECT profile, attrs FROM batch_rows WHERE batch_id = ? ORDER BY profile", -1,
			       &q, NULL) != SQLITE_OK)
		return 1;
	sqlite3_bind_int64(q, 1, id);
	struct buf mem;
	buf_init(&mem);
	size_t n_rows = 0, cap = 1024;
	size_t (*rows)[4] = malloc(cap * sizeof(*rows)); /* profile off, len, blob off, len */
	double t3 = now();
	uint64_t touched = 0; /* read the bytes, as the writer does */
	while (sqlite3_step(q) == SQLITE_ROW) {
		const unsigned char *p = sqlite3_column_text(q, 0), *b = sqlite3_column_blob(q, 1);
		touched += p[0] + (b ? b[0] : 0) + (size_t)sqlite3_column_bytes(q, 1);
	}
	double scan_s = now() - t3;
	sqlite3_reset(q);
	while (sqlite3_step(q) == SQLITE_ROW) {
		if (n_rows == cap)
			rows = realloc(rows, (cap *= 2) * sizeof(*rows));
		size_t pl = (size_t)sqlite3_column_bytes(q, 0), bl = (size_t)sqlite3_column_bytes(q, 1);
		rows[n_rows][0] = mem.len;
		rows[n_rows][1] = pl;
		buf_append(&mem, sqlite3_column_text(q, 0), pl);
		rows[n_rows][2] = mem.len;
		rows[n_rows][3] = bl;
		buf_append(&mem, sqlite3_column_blob(q, 1), bl);
		n_rows++;
	}
	sqlite3_finalize(q);
	uint32_t *ids = NULL;
	size_t n_ids = 0;
	if (batch_header_ids(st, id, &ids, &n_ids) < 0)
		return 1;
	char copy[4096];
	snprintf(copy, sizeof(copy), "%s.mem", argv[2]);
	out = fopen(copy, "w");
	if (!out)
		return 1;
	setvbuf(out, buf, _IOFBF, sizeof(buf));
	double t4 = now();
	struct body_writer w;
	int r = body_writer_init(&w, ids, n_ids);
	for (size_t i = 0; i < n_rows && r == 0; i++) {
		r = body_writer_row(&w, mem.data + rows[i][0], rows[i][1], mem.data + rows[i][2], rows[i][3]);
		if (r == 0)
			r = body_writer_flush(&w, out, BODY_WRITER_CHUNK);
	}
	if (r == 0)
		r = body_writer_flush(&w, out, 0);
	if (r < 0 || fclose(out) != 0)
		return 1;
	double encode_s = now() - t4;
	int64_t encoded = w.written;
	body_writer_finish(&w);
	unlink(copy);
	if (touched == 1)
		puts(""); /* keeps the scan from being optimised away */
	printf("%.6f %.6f %lld %lld %.6f %.6f %lld\n", t1 - t0, t2 - t1, (long long)bytes,
	       (long long)store_query_int(st, "SELECT rows FROM batches ORDER BY id DESC LIMIT 1", 0), encode_s, scan_s,
	       (long long)encoded);
	free(rows);
	free(ids);
	buf_finish(&mem);
	store_destroy(st);
	return 0;
}
