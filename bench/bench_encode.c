/* SPDX-License-Identifier: MIT */
/* Encoding benchmark: cuts one batch from the pending profiles of a state
 * database and writes its URL-encoded body, timing each part apart:
 *   build   cutting the batch with its body written on the way (what the
 *           sender does before a batch's first POST), once;
 *   write   queue_write_body to a file: reading the rows from SQLite and
 *           encoding them (what the sender does before a retry);
 *   encode  the encoder alone, to a file, over the same rows held in memory;
 *   scan    SQLite alone stepping through the same rows (the read floor);
 *   short   the encoder again, under a header with one attribute more than
 *           any row has: every row one column short (a profile with an
 *           empty cell), which takes the cell-by-cell path.
 * All but build are the best of three runs.
 *   bench_encode [--again] [--fold] STATE.db OUT [max_rows]
 * With --again, the last batch built is timed again instead of a new one
 * (build_s is then 0), so that the caller can alternate these runs with its
 * reference (cat) and both meet the same state of a shared machine.
 * With --fold, the batch is then completed and its rows folded into the
 * mirror (fold_s; the daemon does that in the background, in slices).
 * Prints "build_s write_s bytes rows encode_s scan_s encoded_bytes short_s
 * short_bytes body_on_the_way fold_s". */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "body_writer.h"
#include "buf.h"
#include "config.h"
#include "queue.h"
#include "store.h"

#define RUNS 3

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A new file, as the sender's tmpfile() is. */
static int open_out(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) {
		perror(path);
		exit(1);
	}
	return fd;
}

/* The batch's rows, copied into one buffer: (profile, blob) offsets and lengths. */
struct rows {
	struct buf mem;
	size_t (*at)[4];
	size_t n;
};

/* The batch's rows as queue_write_body reads them (the bench's profiles have
 * no accepted values: a row is its pending blob). */
static double scan_and_load(struct store *st, int64_t id, struct rows *rows)
{
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(st->db, "SELECT p.id, p.pending FROM profiles p, batches b WHERE b.id = ?"
				       " AND p.pending IS NOT NULL AND p.pending_seq BETWEEN b.seq_lo AND b.seq_hi"
				       " AND p.inflight_batch IS NULL ORDER BY p.pending_seq", -1, &q, NULL) != SQLITE_OK)
		exit(1);
	sqlite3_bind_int64(q, 1, id);
	double best = 1e9;
	for (int run = 0; run < RUNS; run++) {
		double t = now();
		volatile unsigned touched = 0; /* the bytes are read, as the writer reads them */
		while (sqlite3_step(q) == SQLITE_ROW) {
			const unsigned char *p = sqlite3_column_text(q, 0), *b = sqlite3_column_blob(q, 1);
			touched += p[0] + (b ? b[sqlite3_column_bytes(q, 1) - 1] : 0);
		}
		sqlite3_reset(q);
		double dt = now() - t;
		best = dt < best ? dt : best;
	}
	size_t cap = 1024;
	buf_init(&rows->mem);
	rows->at = malloc(cap * sizeof(*rows->at));
	rows->n = 0;
	while (sqlite3_step(q) == SQLITE_ROW) {
		if (rows->n == cap && !(rows->at = realloc(rows->at, (cap *= 2) * sizeof(*rows->at))))
			exit(1);
		size_t pl = (size_t)sqlite3_column_bytes(q, 0), bl = (size_t)sqlite3_column_bytes(q, 1);
		size_t *r = rows->at[rows->n++];
		r[0] = rows->mem.len;
		r[1] = pl;
		buf_append(&rows->mem, sqlite3_column_text(q, 0), pl);
		r[2] = rows->mem.len;
		r[3] = bl;
		buf_append(&rows->mem, sqlite3_column_blob(q, 1), bl);
	}
	sqlite3_finalize(q);
	return best;
}

/* The encoder alone over rows held in memory, to a new file at path with
 * header ids, as queue_write_body would write them (size: the space to
 * reserve). Returns the best time of RUNS, or -1 on a failure; the bytes
 * written go to *encoded. */
static double encode_rows(const struct rows *rows, const uint32_t *ids, size_t n_ids, int64_t size, const char *path,
			  int64_t *encoded)
{
	double best = 1e9;
	for (int run = 0; run < RUNS; run++) {
		int out = open_out(path);
		struct body_writer w;
		double t = now();
		int r = body_writer_init(&w, ids, n_ids);
		if (r == 0)
			r = body_writer_open(&w, out, size);
		for (size_t i = 0; i < rows->n && r == 0; i++) {
			const size_t *at = rows->at[i];
			r = body_writer_row(&w, rows->mem.data + at[0], at[1], rows->mem.data + at[2], at[3]);
			if (r == 0)
				r = body_writer_flush(&w, BODY_WRITER_CHUNK);
		}
		if (r == 0)
			r = body_writer_flush(&w, 0);
		if (close(out) != 0 && r == 0)
			r = -EIO;
		double dt = now() - t;
		best = dt < best ? dt : best;
		*encoded = w.written;
		body_writer_finish(&w);
		if (r < 0) {
			fprintf(stderr, "bench_encode: encoding failed: %s\n", strerror(-r));
			return -1;
		}
	}
	return best;
}

int main(int argc, char **argv)
{
	bool again = false, fold = false;
	while (argc > 1 && (strcmp(argv[1], "--again") == 0 || strcmp(argv[1], "--fold") == 0)) {
		again = again || strcmp(argv[1], "--again") == 0;
		fold = fold || strcmp(argv[1], "--fold") == 0;
		argc--;
		argv++;
	}
	if (argc < 3) {
		fprintf(stderr, "usage: bench_encode [--again] [--fold] STATE.db OUT [max_rows]\n");
		return 64;
	}
	char err[256];
	struct store *st = store_create(argv[1], 0, err, sizeof(err));
	if (!st) {
		fprintf(stderr, "bench_encode: %s\n", err);
		return 1;
	}
	struct queue *q = queue_create(st);
	if (!q)
		return 1;
	struct config cfg = { 0 };
	cfg.target.id_type = ID_THIRD_PARTY;
	cfg.batch.max_rows = argc > 3 ? atol(argv[3]) : TARGET_MAX_ROWS;
	cfg.batch.max_bytes = TARGET_MAX_BYTES - 1;
	cfg.batch.rows = ROWS_FULL_PROFILE;
	double t0 = now(), build_s = 0;
	int64_t id;
	bool has_body = false;
	if (again) {
		id = store_int(st, "SELECT max(id) FROM batches", 0, "");
	} else {
		int out = open_out(argv[2]);
		struct queue_build_opts o = { .max_rows = cfg.batch.max_rows, .body_fd = out };
		struct queue_cut cut;
		int r = queue_build(q, &cfg, &o, &cut);
		if (close(out) != 0 || r < 0) {
			fprintf(stderr, "bench_encode: cutting failed: %s\n", strerror(r < 0 ? -r : errno));
			return 1;
		}
		build_s = now() - t0;
		id = cut.id;
		has_body = cut.has_body;
	}
	if (id <= 0) {
		fprintf(stderr, "bench_encode: no batch built (%lld): %s\n", (long long)id, sqlite3_errmsg(st->db));
		return 1;
	}

	double write_s = 1e9;
	int64_t bytes = 0;
	for (int run = 0; run < RUNS; run++) {
		int out = open_out(argv[2]);
		double t = now();
		bytes = queue_write_body(q, &cfg, id, out);
		if (bytes < 0 || close(out) != 0) {
			fprintf(stderr, "bench_encode: write failed\n");
			return 1;
		}
		double dt = now() - t;
		write_s = dt < write_s ? dt : write_s;
	}

	struct rows rows;
	double scan_s = scan_and_load(st, id, &rows);
	uint32_t *ids = NULL;
	size_t n_ids = 0;
	if (queue_header_ids(q, id, &ids, &n_ids) < 0)
		return 1;
	char copy[4096];
	snprintf(copy, sizeof(copy), "%s.mem", argv[2]);
	int64_t encoded = 0, short_bytes = 0;
	double encode_s = encode_rows(&rows, ids, n_ids, bytes, copy, &encoded);
	/* The same rows under a header with one attribute more, which none has:
	 * every row is one column short, as a profile with an empty cell is. */
	uint32_t *wider = realloc(ids, (n_ids + 1) * sizeof(*ids));
	if (!wider)
		return 1;
	ids = wider;
	uint32_t max = 0;
	for (size_t i = 0; i < n_ids; i++)
		max = ids[i] > max ? ids[i] : max;
	ids[n_ids] = max + 1;
	double short_s = encode_rows(&rows, ids, n_ids + 1, bytes, copy, &short_bytes);
	unlink(copy);
	if (encode_s < 0 || short_s < 0)
		return 1;
	/* Completing the batch costs nothing per row; folding its rows into the
	 * mirror runs later in slices: their total here. */
	double fold_s = 0;
	if (fold) {
		if (queue_accept(q, id, NULL, NULL, 0) < 0)
			return 1;
		double t = now();
		bool is_more = true;
		while (is_more)
			if (queue_fold(q, 10000, &is_more) < 0)
				return 1;
		fold_s = now() - t;
	}
	printf("%.6f %.6f %lld %lld %.6f %.6f %lld %.6f %lld %d %.6f\n", build_s, write_s, (long long)bytes,
	       (long long)store_int(st, "SELECT rows FROM batches ORDER BY id DESC LIMIT 1", 0, ""), encode_s, scan_s,
	       (long long)encoded, short_s, (long long)short_bytes, has_body ? 1 : 0, fold_s);
	free(rows.at);
	free(ids);
	buf_finish(&rows.mem);
	queue_destroy(q);
	store_destroy(st);
	return 0;
}
