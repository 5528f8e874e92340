/* SPDX-License-Identifier: MIT */
/* Dead letters: values that could not be delivered, one row per (profile,
 * attribute), readable as text, kept until `tpsyncctl retry-dead` queues them
 * again or a newer value for the same attribute supersedes them. This module
 * owns the dead_letters table. */
#ifndef TPSYNC_DEAD_LETTERS_H
#define TPSYNC_DEAD_LETTERS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "attrset.h"
#include "store.h"

struct dead_letter {
	const char *profile;
	size_t profile_len;
	const char *attr;
	const char *value;
	size_t value_len;
	int64_t batch_id;        /* 0: none (refused before it was batched) */
	const char *reason;
	int64_t attempts;
	const char *last_answer; /* Target's answer, or NULL */
};

/* Records dl, inside the caller's transaction. Returns 0 or -EIO. */
int dead_letters_add(struct store *st, const struct dead_letter *dl);

/* A new value for each attribute of incoming arrived for profile: its dead
 * letters are superseded (re-queueing them later must never send the older
 * value). Inside the caller's transaction; costs nothing while there are no
 * dead letters. Returns 0 or -EIO. */
int dead_letters_supersede(struct store *st, const char *profile, size_t len, const struct attrset *incoming);

/* How many dead letters there are (0 on a database error). */
int64_t dead_letters_count(struct store *st);

/* The newest limit dead letters as a JSON array of objects (id, profile, attr,
 * value, batch_id, reason, attempts, last_answer, created_at); NULL on a
 * database error or ENOMEM. The caller owns the array. */
json_t *dead_letters_list(struct store *st, int64_t limit);
/* The same for one profile (NULL: all). */
json_t *dead_letters_of(struct store *st, const char *profile, int64_t limit);

/* Takes dead letters out, oldest first: those whose ids are in ids (n of
 * them), or all of them when ids is NULL. each(arg, profile, attr, value, len)
 * is called for every one before it is deleted; a negative return stops and
 * is returned. Inside the caller's transaction. *taken counts them. Returns 0,
 * -EIO, or each's error. */
int dead_letters_take(struct store *st, const int64_t *ids, size_t n,
		      int (*each)(void *arg, const char *profile, const char *attr, const char *value, size_t len),
		      void *arg, int64_t *taken);

#endif
