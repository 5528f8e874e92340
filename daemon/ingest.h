/* SPDX-License-Identifier: MIT */
/* File ingestion: streams a CSV file through validation and the staging diff in
 * short slices on the event loop, one transaction per slice with a checkpoint, so
 * the loop keeps answering and a crash resumes where the last slice committed. */
#ifndef TPSYNC_INGEST_H
#define TPSYNC_INGEST_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "config.h"
#include "source_stats.h"
#include "store.h"

/* What to do with a file once its rows are durable. */
enum ingest_disposition { INGEST_ARCHIVE, INGEST_DELETE, INGEST_KEEP };

struct ingest_request {
	char *path;      /* owned by the request */
	const struct source_config *src;
	struct source_stats *stats;
	enum ingest_disposition after;
	bool is_held;    /* a snapshot: nothing it stages leaves before the file is known whole */
	void (*done)(void *arg, const char *path, int result);
	void *done_arg;
};

struct ingest_listener {
	/* Rows were staged, or a file is done: the sender may have work, and
	 * --once may be done. */
	void (*progress)(void *arg);
};

/* Creates the ingestion queue on base over the state database st. A dry run
 * passes rejects_dir, where NAME.rejects.csv files go instead of beside the
 * file (NULL otherwise). Returns NULL on ENOMEM. */
struct ingest *ingest_create(struct event_base *base, struct store *st, const char *rejects_dir,
			     const struct ingest_listener *l, void *arg);
/* Drops queued files (they stay in place and are found again at the next start)
 * and frees the queue; a file in progress keeps its committed checkpoint. */
void ingest_destroy(struct ingest *ig);

/* Queues a file; takes ownership of req->path. Duplicates of a queued or active
 * path are ignored. Returns 0 or -ENOMEM. */
int ingest_enqueue(struct ingest *ig, const struct ingest_request *req);
/* True when no file is queued or being ingested. */
bool ingest_is_idle(const struct ingest *ig);
/* Pauses or resumes taking new slices. */
void ingest_set_paused(struct ingest *ig, bool paused);
/* Shutting down: no slice is started any more (the current file keeps its
 * committed checkpoint). */
void ingest_stop(struct ingest *ig);
/* Why ingestion is waiting to retry (a full disk, a busy state database), or
 * NULL when it is not. */
const char *ingest_held_back(const struct ingest *ig);
/* The count of source's profiles missing from its last complete snapshot (0
 * when none is known), which survives restarts. */
int64_t ingest_profiles_missing(struct ingest *ig, const char *source);

/* For tpsyncctl trace: the file ingested_files knows as id ({source, name,
 * size, state, started_at, finished_at}), or NULL. The caller owns it. */
json_t *ingest_file_json(struct ingest *ig, int64_t id);

#endif
