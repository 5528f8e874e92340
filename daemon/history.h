/* SPDX-License-Identifier: MIT */
/* A profile's staging history (tpsyncctl trace): its last few changes, each
 * with where it came from and the queue position (pending_seq) it took, so
 * that the batch that carried it can be found. Kept as one compact blob in
 * the profile's row, written in the same statement as its pending values, so
 * that it costs a first load almost nothing. Knows nothing of SQL. */
#ifndef TPSYNC_HISTORY_H
#define TPSYNC_HISTORY_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define HISTORY_MAX_ATTRS 64 /* attributes listed per event; more are counted only */

struct history_event {
	int64_t seq;       /* the pending_seq it took (0: none, e.g. nothing was queued) */
	int64_t at;        /* ms since the epoch (kept to the second) */
	int64_t file_id;   /* ingested_files.id; 0: not from a file */
	int64_t line;      /* the file's line */
	const char *source; /* the source's name (tpsyncd's own re-sends: "tpsyncd") */
	size_t source_len;
	const char *position; /* a database source's cursor value, or why tpsyncd re-sent it */
	size_t position_len;
	uint32_t n_attrs;   /* the attributes it changed */
	uint32_t attrs[HISTORY_MAX_ATTRS]; /* their ids (the first HISTORY_MAX_ATTRS; read back: ascending
					    * when they were kept as a bitmap) */
};

/* Appends ev to the history old (len bytes; NULL or empty: none) into out
 * (reset first), dropping the oldest events beyond max_events and those
 * older than not_before (max_events 0: out stays empty). A corrupt old blob
 * is dropped: the history is a help, not a record. Returns 0 or -ENOMEM. */
int history_append(const void *old, size_t len, const struct history_event *ev, size_t max_events, int64_t not_before,
		   struct buf *out);

/* Reads the event at *p (before end) into ev (its strings point into the
 * blob) and moves *p past it. Returns 1, 0 at the end, or -EINVAL. */
int history_next(const unsigned char **p, const unsigned char *end, struct history_event *ev);

#endif
