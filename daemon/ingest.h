/* SPDX-License-Identifier: MIT */
/* File ingestion: streams a CSV file through validation and the staging diff in
 * short slices on the event loop, one transaction per slice with a checkpoint, so
 * the loop keeps answering and a crash resumes where the last slice committed. */
#ifndef TPSYNC_INGEST_H
#define TPSYNC_INGEST_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon.h"

/* Per-source counters, shown by tpsyncctl sources. */
struct source_stats {
	int64_t files;          /* files fully ingested since start */
	int64_t files_failed;
	int64_t rows_read;
	int64_t rows_staged;    /* rows that changed something */
	int64_t rows_rejected;
	int64_t last_file_at;
	int64_t profiles_missing; /* snapshots: this source's profiles absent from the last version */
	char last_file[256];
	char last_error[512];
	/* the file being ingested now, if any */
	bool is_busy;
	char current[256];
	int64_t current_rows;
	int64_t current_started_at;
	int64_t current_bytes, current_size;
};

/* What to do with a file once its rows are durable. */
enum ingest_disposition { INGEST_ARCHIVE, INGEST_DELETE, INGEST_KEEP };

struct ingest_request {
	char *path;      /* owned by the request */
	const struct source_config *src;
	struct source_stats *stats;
	enum ingest_disposition after;
	void (*done)(void *arg, const char *path, int result);
	void *done_arg;
};

/* True when name is a plain Target parameter name (letters, digits, '_', '-',
 * '.', at most 128 bytes). */
bool attr_name_valid(const char *name, size_t len);
/* The attribute a source's column becomes: renamed by columns:, NULL when
 * exclude: drops it, else the column's own name. */
const char *column_attr_name(const struct source_config *src, const char *col);
/* Why Target would not accept id as a profile id (empty, over 128 bytes, '+',
 * '/' or a control character), or NULL when it is fine. */
const char *profile_id_problem(const char *id, size_t len);

/* Creates the ingestion queue on d's loop. Returns NULL on ENOMEM. */
struct ingest *ingest_create(struct daemon *d);
/* Drops queued files (they stay in place and are found again at the next start)
 * and frees the queue; a file in progress keeps its committed checkpoint. */
void ingest_destroy(struct ingest *ig);

/* Queues a file; takes ownership of req->path. Duplicates of a queued or active
 * path are ignored. Returns 0 or -ENOMEM. */
int ingest_enqueue(struct ingest *ig, const struct ingest_request *req);
/* True when no file is queued or being ingested. */
bool ingest_is_idle(const struct ingest *ig);
/* Pauses or resumes taking new slices (e.g. while the disk is full). */
void ingest_set_paused(struct ingest *ig, bool paused);

#endif
