/* SPDX-License-Identifier: MIT */
/* The staging diff. One point lookup per profile row: the accepted, in-flight and
 * pending sets of a profile live in one row of the profiles table. */
#include "stage.h"

#include <errno.h>
#include <string.h>

#include "clock.h"
#include "dead_letters.h"
#include "history.h"

void stage_init(struct stage *sg, struct store *st)
{
	sg->st = st;
	attrset_init(&sg->accepted);
	attrset_init(&sg->inflight);
	attrset_init(&sg->pending);
	buf_init(&sg->blob);
	buf_init(&sg->moved_blob);
	buf_init(&sg->history_blob);
	sg->moved_to = 0;
	sg->is_folded = sg->was_queued = false;
	sg->hold_base = sg->hold_next = 0;
	sg->held_rows = sg->held_bytes = 0;
	sg->new_run = 0;
}

void stage_finish(struct stage *sg)
{
	attrset_finish(&sg->accepted);
	attrset_finish(&sg->inflight);
	attrset_finish(&sg->pending);
	buf_finish(&sg->blob);
	buf_finish(&sg->moved_blob);
	buf_finish(&sg->history_blob);
}

static const char SQL_LOOKUP[] = "SELECT accepted, inflight, pending, source, pending_seq, pending_since, inflight_batch,"
				 " history, accepted_at FROM profiles WHERE id = ?";
static const char SQL_INSERT[] = "INSERT INTO profiles (id, pending, pending_seq, pending_since, source, history)"
				 " VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
/* The common case: queued changes (the row's pending set, if any, was queued
 * too and keeps its place and its age). */
static const char SQL_SET_PENDING[] =
	"UPDATE profiles SET pending = ?2, pending_seq = ?3, pending_since = coalesce(pending_since, ?4),"
	" source = coalesce(?5, source), history = ?6 WHERE id = ?1";
/* Held, or the row's pending set was not queued (see classify): the profile
 * takes a new place. */
static const char SQL_SET_PENDING_AT[] =
	"UPDATE profiles SET pending = ?2, pending_seq = ?3, pending_since = ?4, source = coalesce(?5, source),"
	" history = ?6 WHERE id = ?1";
static const char SQL_CLEAR_PENDING[] =
	"UPDATE profiles SET pending = NULL, pending_seq = NULL, pending_since = NULL, history = ?2 WHERE id = ?1";
/* The row's pending set becomes its batch's in-flight values. */
static const char SQL_MOVE_TO_INFLIGHT[] = "UPDATE profiles SET inflight = ?2, inflight_batch = ?3 WHERE id = ?1";
/* The row's pending set was accepted: it goes into accepted, with the time
 * its batch completed. */
static const char SQL_FOLD[] = "UPDATE profiles SET accepted = ?2, accepted_at = tpsync_completed_at(?3) WHERE id = ?1";

static int decode_col(sqlite3_stmt *s, int col, struct attrset *set)
{
	if (sqlite3_column_type(s, col) == SQLITE_NULL) {
		attrset_clear(set);
		return 0;
	}
	const void *blob = sqlite3_column_blob(s, col);
	return attrset_decode(set, blob, (size_t)sqlite3_column_bytes(s, col));
}

/* What the row's pending column holds, when it is not the queued changes (see
 * store.h): with no inflight_batch and a pending_seq at or below
 * batched_upto, the values of a batch in flight (they become its inflight
 * values once anything changes, and the profile takes a new place in the
 * queue) or, when no batch in flight has that pending_seq, accepted values
 * (they are folded into accepted). Returns 0 or -ENOMEM. */
static int classify(struct stage *sg, sqlite3_stmt *s)
{
	sg->moved_to = 0;
	sg->is_folded = false;
	sg->was_queued = false;
	if (sqlite3_column_type(s, 2) == SQLITE_NULL)
		return 0;
	int64_t seq = sqlite3_column_int64(s, 4);
	if (sqlite3_column_type(s, 6) != SQLITE_NULL || seq > sg->st->batched_upto) {
		sg->was_queued = true;
		return 0;
	}
	int64_t batch = seq_ranges_find(&sg->st->in_flight, seq);
	if (batch) {
		struct attrset t = sg->inflight; /* empty: no inflight_batch */
		sg->inflight = sg->pending;
		sg->pending = t;
		attrset_clear(&sg->pending);
		sg->moved_to = batch;
		return 0;
	}
	sg->is_folded = true;
	int r = attrset_overlay(&sg->accepted, &sg->pending);
	attrset_clear(&sg->pending);
	return r;
}

/* Reads the profile's three sets as they are meant (classify). Returns 1 if
 * the profile exists, 0 if not; the statement stays positioned (the sets point
 * into it) until the caller resets it. */
static int lookup(struct stage *sg, const char *profile, size_t len, sqlite3_stmt **out)
{
	sqlite3_stmt *s = store_stmt(sg->st, SQL_LOOKUP);
	if (!s)
		return -EIO;
	sqlite3_bind_text(s, 1, profile, (int)len, SQLITE_STATIC);
	*out = s;
	sg->moved_to = 0;
	sg->is_folded = false;
	sg->was_queued = false;
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
	return classify(sg, s) < 0 ? -ENOMEM : 1;
}

/* Notes that the staging under way changed attribute id (for its history
 * event). */
static void note_changed(struct stage *sg, uint32_t id)
{
	if (sg->ev.n_attrs < HISTORY_MAX_ATTRS)
		sg->ev.attrs[sg->ev.n_attrs] = id;
	sg->ev.n_attrs++;
}

/* Starts the history event of a staging from source and origin (NULL: none). */
static void begin_event(struct stage *sg, const char *source, const struct stage_origin *origin)
{
	struct history_event *ev = &sg->ev;
	ev->n_attrs = 0;
	ev->source = source ? source : "";
	ev->source_len = strlen(ev->source);
	ev->file_id = origin ? origin->file_id : 0;
	ev->line = origin ? origin->line : 0;
	ev->position = origin && origin->position ? origin->position : "";
	ev->position_len = strlen(ev->position);
}

/* Decides where the profile's pending set goes (sg->write_seq: its
 * pending_seq, 0 when it is empty) and encodes what must be written of the
 * looked-up row s (NULL: a new profile) into sg's blobs: the pending set, what
 * classify found, and the history with this staging's event; before the
 * lookup is reset (the sets point into it). Returns 0 or -ENOMEM. */
static int encode_sets(struct stage *sg, sqlite3_stmt *s)
{
	struct store *st = sg->st;
	buf_reset(&sg->blob);
	buf_reset(&sg->moved_blob);
	int r = attrset_encode(&sg->pending, &sg->blob);
	if (r == 0 && sg->moved_to)
		r = attrset_encode(&sg->inflight, &sg->moved_blob);
	else if (r == 0 && sg->is_folded)
		r = attrset_encode(&sg->accepted, &sg->moved_blob);
	if (r < 0)
		return r;
	bool keeps_place = s && sg->was_queued && !sg->hold_base;
	sg->write_seq = sg->pending.n == 0 ? 0 : keeps_place ? sqlite3_column_int64(s, 4)
				       : sg->hold_base ? sg->hold_next : st->next_seq;
	sg->ev.seq = sg->write_seq;
	sg->ev.at = clock_wall_ms();
	const void *old = s ? sqlite3_column_blob(s, 7) : NULL;
	size_t old_len = s ? (size_t)sqlite3_column_bytes(s, 7) : 0;
	return history_append(old, old_len, &sg->ev, (size_t)st->history.events, sg->ev.at - st->history.max_age_ms,
			      &sg->history_blob);
}

static int step_done(sqlite3_stmt *s)
{
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

static void bind_history(struct stage *sg, sqlite3_stmt *s, int i)
{
	if (sg->history_blob.len)
		sqlite3_bind_blob(s, i, sg->history_blob.data, (int)sg->history_blob.len, SQLITE_STATIC);
}

/* Writes the profile's sets back as encode_sets prepared them (the old
 * pending_seq of the row in old_seq, for a fold). Counts a profile newly
 * queued in st->staged (or in the hold's count). */
static int store_pending(struct stage *sg, const char *profile, size_t len, bool exists, const char *source,
			 int64_t old_seq)
{
	struct store *st = sg->st;
	sqlite3_stmt *s;
	if (sg->moved_to || sg->is_folded) {
		s = store_stmt(st, sg->moved_to ? SQL_MOVE_TO_INFLIGHT : SQL_FOLD);
		if (!s)
			return -EIO;
		sqlite3_bind_text(s, 1, profile, (int)len, SQLITE_STATIC);
		sqlite3_bind_blob(s, 2, sg->moved_blob.data ? sg->moved_blob.data : "", (int)sg->moved_blob.len,
				  SQLITE_STATIC);
		sqlite3_bind_int64(s, 3, sg->moved_to ? sg->moved_to : old_seq);
		if (step_done(s) < 0)
			return -EIO;
	}
	if (sg->pending.n == 0) {
		if (!exists || (!sg->was_queued && !sg->moved_to && !sg->is_folded))
			return 0;
		s = store_stmt(st, SQL_CLEAR_PENDING);
		if (!s)
			return -EIO;
		sqlite3_bind_text(s, 1, profile, (int)len, SQLITE_STATIC);
		bind_history(sg, s, 2);
		return step_done(s);
	}
	bool keeps_place = exists && sg->was_queued && !sg->hold_base;
	s = store_stmt(st, !exists ? SQL_INSERT : keeps_place ? SQL_SET_PENDING : SQL_SET_PENDING_AT);
	if (!s)
		return -EIO;
	sqlite3_bind_text(s, 1, profile, (int)len, SQLITE_STATIC);
	sqlite3_bind_blob(s, 2, sg->blob.data, (int)sg->blob.len, SQLITE_STATIC);
	sqlite3_bind_int64(s, 3, sg->write_seq);
	sqlite3_bind_int64(s, 4, sg->ev.at);
	if (source)
		sqlite3_bind_text(s, 5, source, -1, SQLITE_STATIC);
	bind_history(sg, s, 6);
	if (step_done(s) < 0)
		return -EIO;
	if (!keeps_place) {
		if (sg->hold_base)
			sg->hold_next++;
		else
			st->next_seq++;
	}
	int64_t rows = sg->was_queued ? 0 : 1, bytes = (int64_t)(sg->blob.len + len);
	if (sg->hold_base) {
		sg->held_rows += rows;
		sg->held_bytes += bytes;
	} else {
		st->staged.rows += rows;
		st->staged.bytes += bytes;
	}
	st->staged.newest_at = sg->ev.at;
	return 0;
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

/* Profiles in a row that were new before the next one is inserted without
 * looking it up first: a first load is one long run of them, and the lookup
 * would cost as much as the insert. */
#define NEW_RUN 8

static const char SQL_INSERT_NEW[] = "INSERT INTO profiles (id, pending, pending_seq, pending_since, source, history)"
				     " VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING";

/* Stages incoming as a new profile's pending set. Returns 1 if it was new
 * (staged), 0 if it exists after all (nothing done), or a negative errno. */
static int insert_new(struct stage *sg, const char *profile, size_t len, const struct attrset *incoming,
		      const char *source)
{
	struct store *st = sg->st;
	attrset_clear(&sg->accepted);
	attrset_clear(&sg->inflight);
	attrset_clear(&sg->pending);
	sg->moved_to = 0;
	sg->is_folded = sg->was_queued = false;
	if (attrset_overlay(&sg->pending, incoming) < 0)
		return -ENOMEM;
	if (profile_bytes(sg) >= PROFILE_MAX_BYTES)
		return 0; /* the looked-up path says why */
	sg->ev.n_attrs = 0;
	for (size_t i = 0; i < incoming->n; i++)
		note_changed(sg, incoming->kv[i].id);
	int r = encode_sets(sg, NULL);
	if (r < 0)
		return r;
	sqlite3_stmt *s = store_stmt(st, SQL_INSERT_NEW);
	if (!s)
		return -EIO;
	sqlite3_bind_text(s, 1, profile, (int)len, SQLITE_STATIC);
	sqlite3_bind_blob(s, 2, sg->blob.data, (int)sg->blob.len, SQLITE_STATIC);
	sqlite3_bind_int64(s, 3, sg->write_seq);
	sqlite3_bind_int64(s, 4, sg->ev.at);
	sqlite3_bind_text(s, 5, source, -1, SQLITE_STATIC);
	bind_history(sg, s, 6);
	if (step_done(s) < 0)
		return -EIO;
	if (sqlite3_changes(st->db) == 0)
		return 0;
	if ((r = dead_letters_supersede(st, profile, len, incoming)) < 0)
		return r;
	int64_t bytes = (int64_t)(sg->blob.len + len);
	if (sg->hold_base) {
		sg->hold_next++;
		sg->held_rows++;
		sg->held_bytes += bytes;
	} else {
		st->next_seq++;
		st->staged.rows++;
		st->staged.bytes += bytes;
	}
	st->staged.newest_at = sg->ev.at;
	return 1;
}

int stage_profile(struct stage *sg, const char *profile, size_t profile_len, const struct attrset *incoming,
		  const char *source, const struct stage_origin *origin, bool *was_known)
{
	sqlite3_stmt *s;
	int r;
	begin_event(sg, source, origin);
	if (sg->new_run >= NEW_RUN && incoming->n > 0) {
		r = insert_new(sg, profile, profile_len, incoming, source);
		if (r != 0) {
			if (r > 0 && was_known)
				*was_known = false;
			return r;
		}
		sg->new_run = 0;
	}
	int exists = lookup(sg, profile, profile_len, &s);
	sg->new_run = exists == 0 ? sg->new_run + 1 : 0;
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
			note_changed(sg, in->id);
		} else if (!attr_kv_equals(basis, in->val, in->len)) {
			if ((r = attrset_put(&sg->pending, in->id, in->val, in->len)) < 0)
				goto reset;
			changed = true;
			note_changed(sg, in->id);
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
	/* Held, and the profile had changes queued from before the hold: keep
	 * them, so that undoing the hold gives them back (the row still holds
	 * them). Values in flight or accepted are kept by the row itself. */
	if (sg->hold_base && exists == 1 && sg->was_queued && sqlite3_column_int64(s, 4) < sg->hold_base &&
	    store_run(sg->st, "INSERT OR IGNORE INTO hold_undo (profile, pending, pending_seq, pending_since)"
			      " VALUES (?, ?, ?, ?)", "sbiz", profile, (int)profile_len, sqlite3_column_blob(s, 2),
		      sqlite3_column_bytes(s, 2), sqlite3_column_int64(s, 4), sqlite3_column_int64(s, 5)) < 0) {
		r = -EIO;
		goto reset;
	}
	/* The sets point into the lookup's row: encode before resetting it. */
	r = encode_sets(sg, exists == 1 ? s : NULL);
	int64_t old_seq = exists == 1 ? sqlite3_column_int64(s, 4) : 0;
	sqlite3_reset(s);
	if (r < 0)
		return r;
	r = store_pending(sg, profile, profile_len, exists == 1, source, old_seq);
	return r < 0 ? r : 1;
reset:
	sqlite3_reset(s);
	return r;
}

/* Adds to sg->pending, for each attribute of list that is not pending, its
 * value in list, or with latest the latest value sent (in flight, else
 * accepted; attributes with neither are skipped). Returns 0 or -ENOMEM. */
static int merge_list(struct stage *sg, const struct attrset *list, bool latest, bool *changed)
{
	for (size_t i = 0; i < list->n; i++) {
		const struct attr_kv *kv = &list->kv[i];
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
		if (attrset_put(&sg->pending, kv->id, val->val, val->len) < 0)
			return -ENOMEM;
		*changed = true;
		note_changed(sg, kv->id);
	}
	return 0;
}

/* Stages attrs' attributes as merge_list does; attrs NULL (with latest):
 * every attribute the profile has. why says in the profile's history why
 * tpsyncd queued them. */
static int merge_missing(struct stage *sg, const char *profile, const struct attrset *attrs, bool latest, const char *why)
{
	sqlite3_stmt *s;
	size_t len = strlen(profile);
	struct stage_origin origin = { .position = why };
	begin_event(sg, "tpsyncd", &origin);
	int exists = lookup(sg, profile, len, &s);
	int r = 0;
	if (exists < 0)
		goto reset;
	bool changed = false;
	if (attrs)
		r = merge_list(sg, attrs, latest, &changed);
	else if ((r = merge_list(sg, &sg->inflight, true, &changed)) == 0)
		r = merge_list(sg, &sg->accepted, true, &changed);
	if (r < 0 || !changed)
		goto reset;
	r = encode_sets(sg, exists == 1 ? s : NULL);
	int64_t old_seq = exists == 1 ? sqlite3_column_int64(s, 4) : 0;
	sqlite3_reset(s);
	if (r < 0)
		return r;
	/* Re-sent values do not change which source the profile belongs to. */
	return store_pending(sg, profile, len, exists == 1, NULL, old_seq);
reset:
	sqlite3_reset(s);
	return exists < 0 ? exists : r;
}

int stage_refresh(struct stage *sg, const char *profile, const struct attrset *ids, const char *why)
{
	return merge_missing(sg, profile, ids, true, why);
}

int stage_restore(struct stage *sg, const char *profile, const struct attrset *values, const char *why)
{
	return merge_missing(sg, profile, values, false, why);
}

int stage_refresh_all(struct stage *sg, const char *profile, const char *why)
{
	return merge_missing(sg, profile, NULL, true, why);
}

int stage_in_flight(struct stage *sg, const char *profile, size_t len)
{
	sqlite3_stmt *s;
	int exists = lookup(sg, profile, len, &s);
	int r = exists < 0 ? exists : exists && (sg->moved_to || sg->inflight.n > 0);
	sqlite3_reset(s);
	return r;
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
	sg->st->staged.rows += sg->held_rows;
	sg->st->staged.bytes += sg->held_bytes;
	sg->held_rows = sg->held_bytes = 0;
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
		"UPDATE profiles SET pending = u.pending, pending_seq = ?2 + u.n, pending_since = u.pending_since"
		" FROM (SELECT profile, pending, pending_since, row_number() OVER (ORDER BY pending_seq) AS n"
		" FROM hold_undo) u WHERE u.profile = profiles.id",
		"DELETE FROM hold_undo",
	};
	int64_t n = store_int(st, "SELECT count(*) FROM hold_undo", -1, "");
	if (n < 0)
		return -EIO;
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
		if (store_run(st, steps[i], "ii", base, st->next_seq) < 0)
			return -EIO;
	st->next_seq += n + 1;
	return 0;
}

int64_t stage_source_profiles(struct store *st, const char *source)
{
	return store_int(st, "SELECT count(*) FROM profiles WHERE source = ?", -1, "t", source);
}

void stage_view_init(struct stage_view *v)
{
	attrset_init(&v->accepted);
	attrset_init(&v->inflight);
	attrset_init(&v->pending);
	for (int i = 0; i < 3; i++)
		buf_init(&v->mem[i]);
	buf_init(&v->history);
	v->batch = 0;
}

void stage_view_finish(struct stage_view *v)
{
	attrset_finish(&v->accepted);
	attrset_finish(&v->inflight);
	attrset_finish(&v->pending);
	for (int i = 0; i < 3; i++)
		buf_finish(&v->mem[i]);
	buf_finish(&v->history);
}

int stage_read(struct stage *sg, const char *profile, size_t len, struct stage_view *v)
{
	sqlite3_stmt *s;
	int exists = lookup(sg, profile, len, &s);
	const struct attrset *from[3] = { &sg->accepted, &sg->inflight, &sg->pending };
	struct attrset *to[3] = { &v->accepted, &v->inflight, &v->pending };
	int r = exists;
	v->batch = 0;
	v->accepted_at = 0;
	buf_reset(&v->history);
	if (exists == 1) {
		v->batch = sg->moved_to ? sg->moved_to : sqlite3_column_int64(s, 6);
		v->pending_seq = sqlite3_column_int64(s, 4);
		v->accepted_at = sqlite3_column_int64(s, 8);
		if (sg->is_folded)
			v->accepted_at = store_int(sg->st, "SELECT tpsync_completed_at(?)", 0, "i", v->pending_seq);
		if (buf_append(&v->history, sqlite3_column_blob(s, 7), (size_t)sqlite3_column_bytes(s, 7)) < 0)
			r = -ENOMEM;
	}
	for (int i = 0; i < 3 && r >= 0; i++) {
		buf_reset(&v->mem[i]);
		attrset_clear(to[i]);
		if (exists == 1 && attrset_encode(from[i], &v->mem[i]) < 0)
			r = -ENOMEM;
	}
	sqlite3_reset(s);
	for (int i = 0; exists == 1 && i < 3 && r >= 0; i++)
		if (attrset_decode(to[i], v->mem[i].data, v->mem[i].len) < 0)
			r = -EINVAL;
	return r;
}
