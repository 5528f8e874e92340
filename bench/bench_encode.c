/* SPDX-License-Identifier: MIT */
/* Encoding benchmark: builds one batch from the pending profiles of a state
 * database and writes its URL-encoded body, timing both.
 *   bench_encode STATE.db OUT [max_rows]
 * Prints "build_s write_s bytes rows". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "batch.h"
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
	printf("%.6f %.6f %lld %lld\n", t1 - t0, t2 - t1, (long long)bytes,
	       (long long)store_query_int(st, "SELECT rows FROM batches ORDER BY id DESC LIMIT 1", 0));
	store_destroy(st);
	return 0;
}
