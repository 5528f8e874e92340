/* SPDX-License-Identifier: MIT */
/* Batches: choosing pending profiles for one Bulk Profile Update request within
 * Target's limits, writing its URL-encoded CSV body, and moving its values when
 * Target answers. */
#ifndef TPSYNC_BATCH_H
#define TPSYNC_BATCH_H

#include <stdint.h>

#include "config.h"
#include "pctenc.h"
#include "stage.h"
#include "store.h"

/* Builds the next batch (state "ready") from pending profiles that are in no
 * unanswered request, oldest first, with at most max_rows rows and an encoded body
 * of at most cfg->batch.max_bytes; the profiles' values move from pending to
 * in-flight in the same transaction. A profile whose row alone is too large is
 * dead-lettered. Returns the batch id, 0 when nothing is pending, or a negative
 * errno (-EIO: see sqlite3_errmsg). */
int64_t batch_build(struct store *st, const struct config *cfg, int64_t max_rows);

/* Writes the request body of batch id to fd at its offset: "batch=", the header
 * row, one row per profile, every name and value percent-encoded. Returns the
 * number of bytes written, or a negative errno (-ENOSPC, -EIO: a write failed;
 * -EINVAL: a corrupt header or row). */
int64_t batch_write_body(struct store *st, const struct config *cfg, int64_t id, int fd);

/* The header's attribute ids of batch id, as stored (ascending since the body's
 * columns are in that order; older batches: in order of first use), into a malloc'd
 * *ids (the caller frees it). Returns 0, -ENOENT, -EIO, -ENOMEM, or -EINVAL for a
 * corrupt header. */
int batch_header_ids(struct store *st, int64_t id, uint32_t **ids, size_t *n);

/* Values first to last of a row's blob, in consecutive columns from col on
 * (the body writer copies each such run whole). */
struct body_run {
	uint32_t first, last, col;
};

/* The encoder behind batch_write_body, for rows from anywhere: the columns
 * are the header's attribute ids in ascending order (w->ids; whatever order
 * they are given in), so that a row is written in one pass over its blob,
 * whose ids ascend too; a blob with exactly the header's ids is copied whole
 * (see attrset.h). Rows appended with body_writer_row go to w->out. After
 * body_writer_open, body_writer_flush writes w->out to the file once it holds
 * at_least bytes; body_writer_flush(w, 0) writes the rest. */
#define BODY_WRITER_CHUNK (1u << 20)
struct body_writer {
	uint32_t *ids;        /* the header's attribute ids, ascending */
	uint32_t *col_of;     /* 1-based column of each attribute id; 0: not in the header */
	struct buf prefix;    /* how a blob with exactly the header's ids begins */
	struct body_run *runs; /* scratch for a row that is not its header's */
	uint32_t *ends;       /* and where each of its values ends */
	size_t scratch_cap;   /* entries in each */
	uint32_t n_ids;
	size_t n_cols;
	struct buf row;       /* the current row's cells joined by NULs */
	struct buf out;
	int fd;               /* set by body_writer_open */
	int64_t written;      /* bytes written so far */
};

/* Returns 0 or -ENOMEM (w must still be finished). */
int body_writer_init(struct body_writer *w, const uint32_t *ids, size_t n);
/* Appends profile's row from its attribute blob (values of attributes not in
 * the header are left out). Returns 0, -EINVAL for a corrupt blob (a length
 * past its end, ids out of order, or a NUL in a value or the profile id, which
 * no source lets in), or -ENOMEM. */
int body_writer_row(struct body_writer *w, const char *profile, size_t profile_len, const void *blob, size_t blob_len);
/* Sends what follows to fd, at its offset. With size > 0 (the body's size,
 * when known) that much disk space is reserved first, which makes the writes
 * faster and finds a full disk before any encoding. Returns 0, or -ENOSPC
 * (or another errno) when the space cannot be reserved. */
int body_writer_open(struct body_writer *w, int fd, int64_t size);
/* Writes w->out to the file if it holds at least at_least bytes (0: whatever
 * it holds). Returns 0 or the write's error (-ENOSPC, -EIO, ...). */
int body_writer_flush(struct body_writer *w, size_t at_least);
void body_writer_finish(struct body_writer *w);

/* Target accepted batch id: its values become the mirror (accepted) and leave
 * in-flight. Runs inside the caller's transaction. Returns 0 or a negative errno. */
int batch_accept(struct store *st, int64_t id);

/* Moves every changed value of batch id to dead_letters with reason and
 * last_answer, releases its profiles, and marks the batch dead. Inside the
 * caller's transaction. Returns 0 or a negative errno. */
int batch_kill(struct store *st, int64_t id, const char *reason, const char *last_answer);

/* Splits batch id (Target said 413) into two ready batches of half the rows each
 * and marks it "split". A one-row batch cannot be split: returns -E2BIG. Inside
 * the caller's transaction. Returns 0 or a negative errno. */
int batch_split(struct store *st, int64_t id);

/* Target reported batch id stuck: the latest values of its changed attributes
 * are staged again (once); a batch that was itself a re-queue is dead-lettered.
 * Inside the caller's transaction. Returns 0 or a negative errno. */
int batch_requeue_stuck(struct store *st, struct stage *sg, int64_t id);

#endif
