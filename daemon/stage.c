/* SPDX-License-Identifier: MIT */
/* The staging diff. One point lookup per profile row: the accepted, in-flight and
 * pending sets of a profile live in one row of the profiles table. */
#include "stage.h"

#include <errno.h>
#include <string.h>

#include "clock.h"
#include "dead_letters.h"

void stage_init(struct stage *sg, struct store *st)
{
	sg->st = st;
	attrset_init(&sg->accepted);
	attrset_init(&sg->inflight);
	attrset_init(&sg->pending);
	buf_init(&sg->blob);
}

void stage_finish(struct stage *sg)
{
	attrset_finish(&sg->accepted);
	attrset_finish(&sg->inflight);
	attrset_finish(&sg->pending);
	buf_finish(&sg->blob);
}

static const char SQL_LOOKUP[] =
	"SELECT accepted, inflight, pending, source, pending_seq, pending_since FROM profiles WHERE id = ?";
static const char SQL_INSERT[] =
	"INSERT INTO profiles (id, pending, pending_seq, pending_since, source) VALUES (?1, ?2, ?3, ?4, ?5)";
static const char SQL_SET_PENDING[] =
	"UPDATE profiles SET pending = ?2, pending_seq = coalesce(pending_seq, ?3),"
	" pending_since = coalesce(pending_since, ?4), source = coalesce(?5, source) WHERE id = ?1";
/* Held: the profile moves to the held range, whatever its place before. */
static const char SQL_SET_PENDING_HELD[] =
	"UPDATE profiles SET pending = ?2, pending_seq = ?3,"
	" pending_since = coalesce(pending_since, ?4), source = coalesce(?5, source) WHERE id = ?1";
static const char SQL_CLEAR_PENDING[] =
	"UPDATE profiles SET pending = NULL, pending_seq = NULL, pending_since = NULL WHERE id = ?1";

static int decode_col(sqlite3_stmt *s, int col, struct attrset *set)
{
	if (sqlite3_column_type(s, col) == SQLITE_NULL) {
		attrset_clear(set);
		return 0;
	}
	const void *blob = sqlite3_column_blob(s, col);
	return attrset_decode(set, blob, (size_t)sqlite3_column_bytes(s, col));
}

/* Reads the profile's three sets. Returns 1 if the profile exists, 0 if not; the
 * statement stays positioned (the sets point into it) until done_lookup(). */
static int lookup(struct stage *sg, const char *profile, size_t len, sqlite3_stmt **out)
{
	sqlite3_stmt *s = store_stmt(sg->st, SQL_LOOKUP);
	if (!s)
		return -EIO;
	sqlite3_bind_text(s, 1, profile, (int)len, SQLITE_STATIC);
	*out = s;
	int rc = sqlite3_step(s);
	if (rc == SQLITE_DONE) {
		attrset_clear(&sg->accepted);
		attrset_clear(&sg->inflight);
		attrset_clear(&sg->pending);
		return 0;
	}
	if (rc != SQLITE_ROW)
		return -EIO;
	if (decode_col(s, 0, &sg->accepted) < 0 || decode_col(s, 1, &sg->inflight) < 0 ||
	    decode_col(s, 2, &sg->pending) < 0)
		return -EINVAL;
	return 1;
}

/* Writes the profile's pending set (from sg->pending) back. */
static int store_pending(struct stage *sg, const char *profile, size_t len, bool exists, const char *source)
{
	sqlite3_stmt *s;
	if (sg->pending.n == 0) {
		if (!exists)
			return 0;
		s = store_stmt(sg->st, SQL_CLEAR_PENDING);
		if (!s)
			return -EIO;
		sqlite3_bind_text(s, 1, profile, (int)len, SQLITE_STATIC);
	} else {
		s = store_stmt(sg->st, !exists ? SQL_INSERT : sg->hold_base ? SQL_SET_PENDING_HELD : SQL_SET_PENDING);
		if (!s)
			return -EIO;
		sqlite3_bind_text(s, 1, profile, (int)len, SQLITE_STATIC);
		sqlite3_bind_blob(s, 2, sg->blob.data, (int)sg->blob.len, SQLITE_STATIC);
		sqlite3_bind_int64(s, 3, sg->hold_base ? sg->hold_next++ : sg->st->next_seq++);
		sqlite3_bind_int64(s, 4, clock_wall_ms());
		if (source)
			sqlite3_bind_text(s, 5, source, -1, SQLITE_STATIC);
	}
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

/* Size of the profile as Target would hold it: accepted, overlaid by in-flight,
 * overlaid by pending. */
static size_t profile_bytes(struct stage *sg)
{
	size_t total = 0;
	const struct attrset *layers[3] = { &sg->pending, &sg->inflight, &sg->accepted };
	for (int l = 0; l < 3; l++) {
		for (size_t i = 0; i < layers[l]->n; i++) {
			const struct attr_kv *kv = &layers[l]->kv[i];
			bool shadowed = false;
			for (int u = 0; u < l; u++)
				if (attrset_get(layers[u], kv->id))
					shadowed = true;
			if (shadowed)
				continue;
			const char *name = store_attr_name(sg->st, kv->id);
			total += kv->len + (name ? strlen(name) : 0);
		}
	}
	return total;
}

const char *stage_refusal(int r)
{
	if (r == -E2BIG)
		return "profile data would exceed Target's 64 KB per profile";
	if (r == -EILSEQ)
		return "NUL byte in a value";
	return NULL;
}

int stage_profile(struct stage *sg, const char *profile, size_t profile_len,
		  const struct attrset *incoming, const char *source, bool *was_known)
{
	sqlite3_stmt *s;
	int exists = lookup(sg, profile, profile_len, &s);
	int r;
	if (exists < 0) {
		sqlite3_reset(s);
		return exists;
	}
	if (was_known)
		*was_known = exists == 1 && sqlite3_column_type(s, 3) == SQLITE_TEXT &&
			     strcmp((const char *)sqlite3_column_text(s, 3), source) == 0;
	bool changed = false;
	for (size_t i = 0; i < incoming->n; i++) {
		const struct attr_kv *in = &incoming->kv[i];
		const struct attr_kv *basis = attrset_get(&sg->inflight, in->id);
		if (!basis)
			basis = attrset_get(&sg->accepted, in->id);
		const struct attr_kv *pend = attrset_get(&sg->pending, in->id);
		if (pend) {
			if (attr_kv_equals(pend, in->val, in->len))
				continue;
			if (attr_kv_equals(basis, in->val, in->len))
				attrset_del(&sg->pending, in->id);
			else if ((r = attrset_put(&sg->pending, in->id, in->val, in->len)) < 0)
				goto reset;
			changed = true;
		} else if (!attr_kv_equals(basis, in->val, in->len)) {
			if ((r = attrset_put(&sg->pending, in->id, in->val, in->len)) < 0)
				goto reset;
			changed = true;
		}
	}
	/* Even a value equal to what Target has is newer than a dead letter's. */
	if ((r = dead_letters_supersede(sg->st, profile, profile_len, incoming)) < 0)
		goto reset;
	if (!changed) {
		sqlite3_reset(s);
		return 0;
	}
	if (profile_bytes(sg) >= PROFILE_MAX_BYTES) {
		r = -E2BIG;
		goto reset;
	}
	/* Held, and the profile had a pending set from before the hold: keep it,
	 * so that undoing the hold gives it back (the row still holds it). */
	if (sg->hold_base && exists == 1 && sqlite3_column_type(s, 2) != SQLITE_NULL &&
	    sqlite3_column_int64(s, 4) < sg->hold_base &&
	    store_run(sg->st, "INSERT OR IGNORE INTO hold_undo (profile, pending, pending_seq, pending_since)"
			      " VALUES (?, ?, ?, ?)", "sbiz", profile, (int)profile_len, sqlite3_column_blob(s, 2),
		      sqlite3_column_bytes(s, 2), sqlite3_column_int64(s, 4), sqlite3_column_int64(s, 5)) < 0) {
		r = -EIO;
		goto reset;
	}
	buf_reset(&sg->blob);
	r = attrset_encode(&sg->pending, &sg->blob);
	/* The sets point into the lookup's row: encode before resetting it. */
	sqlite3_reset(s);
	if (r < 0)
		return r;
	r = store_pending(sg, profile, profile_len, exists == 1, source);
	return r < 0 ? r : 1;
reset:
	sqlite3_reset(s);
	return r;
}

static int merge_missing(struct stage *sg, const char *profile, const struct attrset *attrs, bool latest)
{
	sqlite3_stmt *s;
	size_t len = strlen(profile);
	int exists = lookup(sg, profile, len, &s);
	int r = 0;
	if (exists < 0)
		goto reset;
	bool changed = false;
	for (size_t i = 0; i < attrs->n; i++) {
		const struct attr_kv *kv = &attrs->kv[i];
		if (attrset_get(&sg->pending, kv->id))
			continue;
		const struct attr_kv *val = kv;
		if (latest) {
			val = attrset_get(&sg->inflight, kv->id);
			if (!val)
				val = attrset_get(&sg->accepted, kv->id);
			if (!val)
				continue;
		}
		if ((r = attrset_put(&sg->pending, kv->id, val->val, val->len)) < 0)
			goto reset;
		changed = true;
	}
	if (!changed)
		goto reset;
	buf_reset(&sg->blob);
	r = attrset_encode(&sg->pending, &sg->blob);
	sqlite3_reset(s);
	if (r < 0)
		return r;
	/* Re-sent values do not change which source the profile belongs to. */
	return store_pending(sg, profile, len, exists == 1, NULL);
reset:
	sqlite3_reset(s);
	return exists < 0 ? exists : r;
}

int stage_refresh(struct stage *sg, const char *profile, const struct attrset *ids)
{
	return merge_missing(sg, profile, ids, true);
}

int stage_restore(struct stage *sg, const char *profile, const struct attrset *values)
{
	return merge_missing(sg, profile, values, false);
}

void stage_hold(struct stage *sg, int64_t base)
{
	sg->hold_base = sg->hold_next = base;
}

int stage_release(struct stage *sg)
{
	if (sg->hold_next > sg->st->next_seq)
		sg->st->next_seq = sg->hold_next; /* later changes come after the released ones */
	sg->hold_base = sg->hold_next = 0;
	return store_run(sg->st, "DELETE FROM hold_undo", "");
}

int stage_undo_hold(struct store *st, int64_t base)
{
	static const char *const steps[] = {
		/* Profiles the hold created have nothing else: they go. */
		"DELETE FROM profiles WHERE pending IS NOT NULL AND pending_seq >= ?1 AND accepted IS NULL"
		" AND inflight IS NULL AND id NOT IN (SELECT profile FROM hold_undo)",
		"UPDATE profiles SET pending = NULL, pending_seq = NULL, pending_since = NULL"
		" WHERE pending IS NOT NULL AND pending_seq >= ?1",
		"UPDATE profiles SET pending = u.pending, pending_seq = u.pending_seq, pending_since = u.pending_since"
		" FROM hold_undo u WHERE u.profile = profiles.id",
		"DELETE FROM hold_undo",
	};
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
		if (store_run(st, steps[i], "i", base) < 0)
			return -EIO;
	return 0;
}

int64_t stage_source_profiles(struct store *st, const char *source)
{
	return store_int(st, "SELECT count(*) FROM profiles WHERE source = ?", -1, "t", source);
}
