/* SPDX-License-Identifier: MIT */
/* The encoder of batch bodies: "batch=", the header row, then one row per
 * profile from its attribute blob, every name and value percent-encoded. It
 * knows the blob format (attrset.h) and the percent-encoder, and nothing of
 * batches or Target's answers. */
#ifndef TPSYNC_BODY_WRITER_H
#define TPSYNC_BODY_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "store.h"

/* Values first to last of a row's blob, in consecutive columns from col on
 * (the body writer copies each such run whole). */
struct body_run {
	uint32_t first, last, col;
};

/* The encoder behind queue_write_body, for rows from anywhere: the columns
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

/* Appends the header row: "batch=", id_header ("thirdPartyId" or "pcId") and
 * the attribute names of w->ids (from st), percent-encoded, comma-separated.
 * Returns 0, -ENOMEM, or -EINVAL for an id with no name. */
int body_writer_header(struct body_writer *w, const char *id_header, const struct store *st);

#endif
