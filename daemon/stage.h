/* SPDX-License-Identifier: MIT */
/* Staging: compares incoming attribute values with what Target was last given and
 * keeps only real changes in the profile's pending set. */
#ifndef TPSYNC_STAGE_H
#define TPSYNC_STAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attrset.h"
#include "history.h"
#include "buf.h"
#include "store.h"

/* All external data of one profile must stay under this (TARGET_API.md). */
#define PROFILE_MAX_BYTES 65536

/* Where a staged change came from, for the profile's history (tpsyncctl trace). */
struct stage_origin {
	int64_t file_id;      /* ingested_files.id; 0: not from a file */
	int64_t line;         /* the file's line */
	const char *position; /* a database source's cursor value, or why tpsyncd re-sent values; NULL: none */
};

struct stage {
	struct store *st;
	/* The looked-up profile's sets as they are meant (see store.h): pending
	 * is what is queued, inflight what a batch Target has not finished
	 * carries, accepted the mirror. */
	struct attrset accepted, inflight, pending;
	int64_t moved_to;  /* the row's pending set is batch moved_to's: written as its inflight */
	bool is_folded;    /* the row's pending set was accepted: written into accepted */
	bool was_queued;   /* the row's pending set is queued changes */
	struct buf blob, moved_blob, history_blob;
	struct history_event ev; /* the staging under way, for the profile's history */
	int64_t write_seq;       /* where its pending set goes (0: nowhere, it is empty) */
	int64_t hold_base; /* 0: rows are not held (see stage_hold) */
	int64_t hold_next; /* the next held pending_seq */
	int64_t held_rows, held_bytes; /* staged under the hold: counted in st->staged at release */
	int new_run;       /* profiles in a row that did not exist */
};

void stage_init(struct stage *sg, struct store *st);
void stage_finish(struct stage *sg);

/* Stages incoming (non-empty values, ids from store_attr_id) for profile from
 * source (origin, if not NULL, says where in it; both go to the profile's
 * history, see store.history), inside the caller's transaction. An attribute is staged when its value differs from
 * what Target was last given (the in-flight value if any, else the accepted one:
 * a batch's values are in flight until Target has finished it);
 * a value that returns to that while still pending cancels the pending change.
 * *was_known (if not NULL) tells whether source staged this profile before.
 * Returns 1 when the profile's pending set changed, 0 when nothing differed,
 * -E2BIG when the profile would exceed PROFILE_MAX_BYTES (nothing staged),
 * -EILSEQ when a value holds a NUL byte (nothing staged; sources refuse them
 * before), -EINVAL for a corrupt stored blob, -EIO on a database error, -ENOMEM. */
int stage_profile(struct stage *sg, const char *profile, size_t profile_len, const struct attrset *incoming,
		  const char *source, const struct stage_origin *origin, bool *was_known);

/* The reason a row is refused when stage_profile returned r: -E2BIG and
 * -EILSEQ refuse the row alone; NULL for any other r (staged, unchanged, or an
 * error that stops the caller). */
const char *stage_refusal(int r);

/* Makes sure the latest values of the attributes in ids (their values are
 * ignored) go to Target again: each one not already pending is staged with its
 * in-flight value if any, else its accepted value. Used to repair what a
 * verification found; why goes to the profile's history. The profile's
 * source stays as it was. Returns 0 or a negative errno. */
int stage_refresh(struct stage *sg, const char *profile, const struct attrset *ids, const char *why);

/* stage_refresh for every attribute the profile has (an echo: all its latest
 * values go to Target again). Returns 0 or a negative errno. */
int stage_refresh_all(struct stage *sg, const char *profile, const char *why);

/* Whether profile's values are in a batch Target has not finished: 1 yes, 0
 * no, or a negative errno. */
int stage_in_flight(struct stage *sg, const char *profile, size_t len);

/* A profile's sets as they are meant (see struct stage), copied. */
struct stage_view {
	struct attrset accepted, inflight, pending;
	int64_t batch;       /* the batch Target has not finished that carries inflight (0: none) */
	int64_t pending_seq; /* the row's (0: none) */
	int64_t accepted_at; /* when the batch of the newest accepted values completed (0: not known) */
	struct buf history;  /* the profile's history blob (history.h) */
	struct buf mem[3];   /* what the sets point into */
};
void stage_view_init(struct stage_view *v);
void stage_view_finish(struct stage_view *v);
/* Reads profile into v. Returns 1, 0 when there is no such profile (v's sets
 * empty), or a negative errno. For tpsyncctl trace and the tests. */
int stage_read(struct stage *sg, const char *profile, size_t len, struct stage_view *v);

/* Stages values for attributes that are not already pending (a pending value is
 * newer and wins). Used to re-queue dead letters. Returns 0 or a negative errno. */
int stage_restore(struct stage *sg, const char *profile, const struct attrset *values, const char *why);

/* Holds back what sg stages from now on (a snapshot until it is known to be
 * one version): its profiles get pending_seq values from base up, which the
 * queue leaves alone while st->hold_from is at or below them; the pending set
 * a profile had before is kept in hold_undo. base must be above every
 * pending_seq given so far (st->next_seq + 2^32 leaves room for other
 * writers meanwhile). */
void stage_hold(struct stage *sg, int64_t base);
/* Ends sg's hold: the held rows become sendable (the caller clears
 * st->hold_from); their undo copies are dropped. Inside the caller's
 * transaction. Returns 0 or -EIO. */
int stage_release(struct stage *sg);
/* Undoes everything staged under the hold that starts at base (a read that
 * was torn, or a crash interrupted): each held profile gets back the changes
 * it had queued before (at the queue's end: batches may have been cut past
 * their old place meanwhile), and a profile the hold created is removed.
 * Inside the caller's transaction. Returns 0 or -EIO. */
int stage_undo_hold(struct store *st, int64_t base);

/* How many profiles source staged last (each profile belongs to the source
 * that last changed it). Returns the count, or -1 on a database error. */
int64_t stage_source_profiles(struct store *st, const char *source);

#endif
