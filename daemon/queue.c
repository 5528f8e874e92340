/* SPDX-License-Identifier: MIT */
/* The delivery queue's SQL. A batch's members are the profiles of its range
 * (pending_seq between seq_lo and seq_hi, no inflight_batch), whose pending
 * values it carries, and the profiles whose inflight_batch it is, whose
 * inflight values it carries (they changed again while it was in flight, or
 * the batch is not a range: split halves, re-queues). Its header is the union
 * of the attributes its rows carry; a profile without one of them has an
 * empty cell, which Target reads as "no change". Sizes are computed exactly as
 * they will be encoded, so a batch never crosses max_bytes. Batch states are
 * bound by name from batch_state.c, never written as literals. */
#include "queue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "attrset.h"
#include "body_writer.h"
#include "clock.h"
#include "dead_letters.h"
#include "pctenc.h"
#include "stage.h"

#define DAY_MS (86400LL * 1000)
#define ECHOES_PER_ROUND 10000

struct queue {
	struct store *st;
	struct stage sg; /* re-stages latest values (echoes, dead letters) */
	/* Due echoes are all of profiles in flight: nothing to do until a batch
	 * finishes or an echo is added. */
	bool is_echo_blocked;
	/* The fold pass under way (see queue_fold): the last complete batch it
	 * ends (0: none under way), and the profile id it has reached. */
	int64_t fold_pass_upto;
	struct buf fold_cursor;
};

#define S(state) batch_state_name(state)

/* A batch's members in SQL, with ?1 the batch, ?2 and ?3 its range (an empty
 * range, 1 to 0, for a batch that has none). */
#define RANGE_ROWS "pending IS NOT NULL AND pending_seq BETWEEN ?2 AND ?3 AND inflight_batch IS NULL"
#define MOVED_ROWS "inflight_batch = ?1"

struct members {
	int64_t id, lo, hi; /* lo > hi: no range */
	bool is_full_rows;  /* rows: full_profile when it was cut */
};

/* Reads batch id's range. Returns 0, -ENOENT, or -EIO. */
static int get_members(struct store *st, int64_t id, struct members *m)
{
	sqlite3_stmt *s = store_prepare(st, "SELECT coalesce(seq_lo, 1), coalesce(seq_hi, 0), full_rows FROM batches"
					    " WHERE id = ?", "i", id);
	if (!s)
		return -EIO;
	int rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*m = (struct members){ .id = id, .lo = sqlite3_column_int64(s, 0), .hi = sqlite3_column_int64(s, 1),
				       .is_full_rows = sqlite3_column_int64(s, 2) != 0 };
	} else if (rc != SQLITE_DONE) {
		store_note_error(st);
	}
	sqlite3_reset(s);
	return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : -EIO;
}

/* Runs sql (using ?1 to ?3 as above, and ?4, ?5 when given) for batch m. */
static int run_members(struct store *st, const char *sql, const struct members *m, int64_t p4, int64_t p5)
{
	return store_run(st, sql, "iiiii", m->id, m->lo, m->hi, p4, p5);
}

static int64_t count_members(struct store *st, const struct members *m, bool moved)
{
	return store_int(st, moved ? "SELECT count(*) FROM profiles WHERE " MOVED_ROWS
				   : "SELECT count(*) FROM profiles WHERE " RANGE_ROWS, -1, "iii", m->id, m->lo, m->hi);
}

/* Reloads which batches are in flight (store.h) from the batches table: after
 * every transaction, committed or not, so that the set always says what the
 * database says. Returns 0 or a negative errno. */
static int load_in_flight(struct queue *q)
{
	struct store *st = q->st;
	st->batched_upto = store_int(st, "SELECT max(seq_hi) FROM batches", 0, "");
	seq_ranges_clear(&st->in_flight);
	sqlite3_stmt *s = store_prepare(st, "SELECT id, seq_lo, seq_hi FROM batches WHERE state IN (?, ?, ?)"
					    " AND seq_lo IS NOT NULL AND seq_lo <= seq_hi", "ttt",
					S(BATCH_READY), S(BATCH_POSTING), S(BATCH_SUBMITTED));
	if (!s)
		return -EIO;
	int rc, r = 0;
	while (r == 0 && (rc = sqlite3_step(s)) == SQLITE_ROW)
		r = seq_ranges_add(&st->in_flight, sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1),
				   sqlite3_column_int64(s, 2));
	if (r == 0 && rc != SQLITE_DONE) {
		store_note_error(st);
		r = -EIO;
	}
	sqlite3_reset(s);
	if (st->next_seq <= st->batched_upto)
		st->next_seq = st->batched_upto + 1;
	return r;
}

/* SQL function tpsync_in_flight(pending_seq): 1 when a batch Target has not
 * finished holds it (struct store). */
static void sql_in_flight(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	const struct store *st = sqlite3_user_data(ctx);
	sqlite3_result_int(ctx, seq_ranges_find(&st->in_flight, sqlite3_value_int64(argv[0])) != 0);
}

struct queue *queue_create(struct store *st)
{
	struct queue *q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	q->st = st;
	stage_init(&q->sg, st);
	buf_init(&q->fold_cursor);
	if (sqlite3_create_function_v2(st->db, "tpsync_in_flight", 1, SQLITE_UTF8, st, sql_in_flight, NULL, NULL,
				       NULL) != SQLITE_OK || load_in_flight(q) < 0) {
		queue_destroy(q);
		return NULL;
	}
	/* Not known: let the first look count. */
	st->staged.rows = INT64_MAX / 4;
	st->staged.bytes = INT64_MAX / 4;
	return q;
}

void queue_destroy(struct queue *q)
{
	if (!q)
		return;
	stage_finish(&q->sg);
	buf_finish(&q->fold_cursor);
	free(q);
}

/* Ends a queue operation: commits when r is 0, else rolls back with the error
 * noted; either way the batches in flight are read again. Returns r, or -EIO
 * when the commit fails. */
static int finish(struct queue *q, int r)
{
	if (r < 0)
		store_abort(q->st);
	else if (store_commit(q->st) < 0)
		r = -EIO;
	int l = load_in_flight(q);
	return r < 0 ? r : l;
}

/* A batch finished: echoes waiting for its profiles may go. */
static void finished(struct queue *q)
{
	q->is_echo_blocked = false;
}

static int set_state(struct store *st, int64_t id, enum batch_state state)
{
	return store_run(st, "UPDATE batches SET state = ?2 WHERE id = ?1", "it", id, S(state));
}

/* New pending_seq values, in order, for n profiles: the queue's end. Returns
 * the first; they are base + 1 to base + n as SQL's row_number() gives them. */
static int64_t take_seqs(struct store *st, int64_t n)
{
	int64_t base = st->next_seq;
	st->next_seq += n + 1;
	st->staged.rows += n;
	return base;
}

/* Batch m's range members go back to the queue's end, their values queued
 * again. */
static int requeue_range(struct store *st, const struct members *m)
{
	int64_t n = count_members(st, m, false);
	if (n <= 0)
		return (int)n;
	return run_members(st, "UPDATE profiles SET pending_seq = ?4 + u.n FROM (SELECT id, row_number()"
			       " OVER (ORDER BY pending_seq) AS n FROM profiles WHERE " RANGE_ROWS ") u"
			       " WHERE u.id = profiles.id", m, take_seqs(st, n), 0);
}

/* Batch m's moved members leave it. With is_accepted their inflight values
 * become the mirror; without, they are queued again under any newer pending
 * ones. Either way a profile with pending values takes the queue's end. */
static int release_moved(struct store *st, const struct members *m, bool is_accepted)
{
	int64_t n = count_members(st, m, true);
	if (n <= 0)
		return (int)n;
	static const char accept_sql[] =
		"UPDATE profiles SET accepted = tpsync_attrs_overlay(accepted, inflight), accepted_at = ?5, inflight = NULL,"
		" inflight_batch = NULL, pending_seq = CASE WHEN pending IS NULL THEN NULL ELSE ?4 + u.n END"
		" FROM (SELECT id, row_number() OVER (ORDER BY pending_seq, id) AS n FROM profiles WHERE " MOVED_ROWS ") u"
		" WHERE u.id = profiles.id";
	static const char requeue_sql[] =
		"UPDATE profiles SET pending = tpsync_attrs_overlay(inflight, pending), inflight = NULL,"
		" inflight_batch = NULL, pending_seq = ?4 + u.n, pending_since = coalesce(pending_since, ?5)"
		" FROM (SELECT id, row_number() OVER (ORDER BY pending_seq, id) AS n FROM profiles WHERE " MOVED_ROWS ") u"
		" WHERE u.id = profiles.id";
	return run_members(st, is_accepted ? accept_sql : requeue_sql, m, take_seqs(st, n), clock_wall_ms());
}

/* Profiles that were in batch id's unanswered request get their latest values
 * sent once more at due (the earliest due wins when several are pending). */
static int add_echoes(struct queue *q, int64_t id, int64_t due)
{
	struct members m;
	int r = get_members(q->st, id, &m);
	if (r == 0)
		r = run_members(q->st, "INSERT INTO echoes (profile, due_at) SELECT id, ?4 FROM profiles WHERE " RANGE_ROWS
				       " UNION ALL SELECT id, ?4 FROM profiles WHERE " MOVED_ROWS
				       " ON CONFLICT (profile) DO UPDATE SET due_at = max(due_at, excluded.due_at)",
				&m, due, 0);
	q->is_echo_blocked = false;
	return r;
}

/* --- recovery and scheduling -------------------------------------------------- */

int queue_recover(struct queue *q, int64_t echo_delay_ms, int64_t *n)
{
	struct store *st = q->st;
	*n = store_int(st, "SELECT count(*) FROM batches WHERE state = ?", 0, "t", S(BATCH_POSTING));
	if (*n == 0)
		return 0;
	if (store_begin(st) < 0)
		return -EIO;
	int r = 0;
	for (;;) {
		/* One at a time: each becomes ready as its echoes are added. */
		sqlite3_stmt *s = store_prepare(st, "SELECT id, sent_at FROM batches WHERE state = ? LIMIT 1", "t",
						S(BATCH_POSTING));
		if (!s) {
			r = -EIO;
			break;
		}
		int rc = sqlite3_step(s);
		int64_t id = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
		int64_t sent_at = rc == SQLITE_ROW ? sqlite3_column_int64(s, 1) : 0;
		if (rc != SQLITE_ROW && rc != SQLITE_DONE)
			store_note_error(st);
		sqlite3_reset(s);
		if (rc != SQLITE_ROW) {
			r = rc == SQLITE_DONE ? 0 : -EIO;
			break;
		}
		r = add_echoes(q, id, sent_at + echo_delay_ms);
		if (r == 0)
			r = store_run(st, "UPDATE batches SET state = ?2, next_attempt_at = 0,"
					  " last_error = 'answer never received (daemon stopped while sending)' WHERE id = ?1",
				      "it", id, S(BATCH_READY));
		if (r < 0)
			break;
	}
	return finish(q, r);
}

int64_t queue_next_ready(struct queue *q, int64_t now, int64_t *next_at)
{
	*next_at = 0;
	int64_t id = store_int(q->st, "SELECT id FROM batches WHERE state = ? AND next_attempt_at <= ? ORDER BY id LIMIT 1",
			       0, "ti", S(BATCH_READY), now);
	if (!id)
		*next_at = store_int(q->st, "SELECT min(next_attempt_at) FROM batches WHERE state = ?", 0, "t",
				     S(BATCH_READY));
	return id;
}

int64_t queue_expired_ready(struct queue *q, int64_t created_before)
{
	return store_int(q->st, "SELECT id FROM batches WHERE state = ? AND created_at < ? LIMIT 1", 0, "ti",
			 S(BATCH_READY), created_before);
}

int64_t queue_oldest_unbatched(struct queue *q)
{
	return store_int(q->st, "SELECT pending_since FROM profiles WHERE pending IS NOT NULL AND pending_seq > ?1"
				" AND pending_seq < ?2 AND inflight_batch IS NULL ORDER BY pending_seq LIMIT 1", 0, "ii",
			 q->st->batched_upto, q->st->hold_from);
}

int queue_rows_sent(struct queue *q, int64_t since, int64_t *rows, int64_t *oldest)
{
	*rows = 0;
	*oldest = clock_wall_ms();
	sqlite3_stmt *s = store_prepare(q->st, "SELECT coalesce(sum(rows), 0), min(at) FROM sends WHERE at > ?", "i", since);
	if (!s)
		return -EIO;
	int rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*rows = sqlite3_column_int64(s, 0);
		if (sqlite3_column_type(s, 1) != SQLITE_NULL)
			*oldest = sqlite3_column_int64(s, 1);
	} else {
		store_note_error(q->st);
	}
	sqlite3_reset(s);
	return rc == SQLITE_ROW ? 0 : -EIO;
}

int64_t queue_rows_last_day(struct queue *q, int64_t now)
{
	return store_int(q->st, "SELECT coalesce(sum(rows), 0) FROM sends WHERE at > ?", 0, "i", now - DAY_MS);
}

/* --- building ------------------------------------------------------------------ */

static const char *id_header(const struct config *cfg)
{
	return cfg->target.id_type == ID_PC ? "pcId" : "thirdPartyId";
}

/* Header columns so far: attribute ids in order of first use. */
struct header {
	uint32_t *ids;
	size_t n, cap;
	unsigned char *seen; /* by id */
	size_t seen_cap;
	int64_t encoded; /* bytes of the encoded names plus their commas */
};

/* Ascending attribute ids: the order of a body's columns. */
static int cmp_id(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static int header_add(struct header *h, const struct store *st, uint32_t id)
{
	if (id >= h->seen_cap) {
		size_t cap = h->seen_cap ? h->seen_cap : 64;
		while (cap <= id)
			cap *= 2;
		unsigned char *seen = realloc(h->seen, cap);
		if (!seen)
			return -ENOMEM;
		memset(seen + h->seen_cap, 0, cap - h->seen_cap);
		h->seen = seen;
		h->seen_cap = cap;
	}
	if (h->seen[id])
		return 0;
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 16;
		uint32_t *ids = realloc(h->ids, cap * sizeof(*ids));
		if (!ids)
			return -ENOMEM;
		h->ids = ids;
		h->cap = cap;
	}
	const char *name = store_attr_name(st, id);
	h->encoded += 1 + (int64_t)pctenc_encoded_len(name, strlen(name));
	h->ids[h->n++] = id;
	h->seen[id] = 1;
	return 0;
}

/* Forgets the columns added after the first n. */
static void header_truncate(struct header *h, size_t n, int64_t encoded)
{
	for (size_t i = n; i < h->n; i++)
		h->seen[h->ids[i]] = 0;
	h->n = n;
	h->encoded = encoded;
}

static void header_finish(struct header *h)
{
	free(h->ids);
	free(h->seen);
}

static int64_t body_size(const struct config *cfg, const struct header *h, int64_t rows, int64_t content)
{
	/* "batch=" + header line + each row: content, one comma per attribute, '\n'. */
	return 6 + (int64_t)strlen(id_header(cfg)) + h->encoded + 1 + content + rows * ((int64_t)h->n + 1);
}

/* One row as a batch carries it: a profile's blob (its pending or inflight
 * values, over its accepted ones for a full_profile row). */
struct row {
	struct attrset accepted, changed, merged;
	struct buf merged_blob;
	const void *blob; /* the row's blob: a column's bytes, or merged_blob */
	size_t len;
};

static void row_init(struct row *r)
{
	attrset_init(&r->accepted);
	attrset_init(&r->changed);
	attrset_init(&r->merged);
	buf_init(&r->merged_blob);
}

static void row_finish(struct row *r)
{
	attrset_finish(&r->accepted);
	attrset_finish(&r->changed);
	attrset_finish(&r->merged);
	buf_finish(&r->merged_blob);
}

/* Puts the row together from statement s's columns: col_accepted (ignored
 * unless is_full) and col_changed. The row's blob stays valid until s moves.
 * Returns 0, -EINVAL for a corrupt blob, or -ENOMEM. */
static int row_load(struct row *r, sqlite3_stmt *s, int col_accepted, int col_changed, bool is_full)
{
	r->blob = sqlite3_column_blob(s, col_changed);
	r->len = (size_t)sqlite3_column_bytes(s, col_changed);
	if (!is_full || sqlite3_column_type(s, col_accepted) == SQLITE_NULL)
		return 0; /* the common case: the values as stored */
	if (attrset_decode(&r->accepted, sqlite3_column_blob(s, col_accepted),
			   (size_t)sqlite3_column_bytes(s, col_accepted)) < 0 ||
	    attrset_decode(&r->changed, r->blob, r->len) < 0)
		return -EINVAL;
	attrset_clear(&r->merged);
	buf_reset(&r->merged_blob);
	if (attrset_overlay(&r->merged, &r->accepted) < 0 || attrset_overlay(&r->merged, &r->changed) < 0 ||
	    attrset_encode(&r->merged, &r->merged_blob) < 0)
		return -ENOMEM;
	r->blob = r->merged_blob.data ? r->merged_blob.data : "";
	r->len = r->merged_blob.len;
	return 0;
}

/* Adds the row's attributes to h and returns the encoded bytes of its
 * content (the profile id and the values, without separators), or -EINVAL
 * for a corrupt blob, -ENOMEM. */
static int64_t row_measure(const struct row *r, struct header *h, const struct store *st, const char *profile,
			   size_t plen)
{
	struct attrset_iter it;
	if (attrset_iter_init(&it, r->blob, r->len) < 0)
		return -EINVAL;
	int64_t k = 0;
	for (const unsigned char *p = it.id; p < it.ids_end; k++) {
		uint32_t id;
		if (!(p = attrset_get_varint(p, it.ids_end, &id)))
			return -EINVAL;
		if (header_add(h, st, id) < 0)
			return -ENOMEM;
	}
	/* The values are one run, each ended by a NUL, which the encoder would
	 * write as %00: three bytes for each that are not in the row. */
	size_t run = (size_t)(it.end - it.val);
	return (int64_t)pctenc_encoded_len(profile, plen) + (int64_t)pctenc_encoded_len((const char *)it.val, run) - 3 * k;
}

/* A profile whose row alone is larger than a batch may be: its changed values
 * become dead letters and its pending set is dropped. */
static int dead_letter_profile(struct store *st, const char *profile, const void *blob, size_t len, const char *reason)
{
	struct attrset changed;
	attrset_init(&changed);
	int r = attrset_decode(&changed, blob, len);
	for (size_t i = 0; r == 0 && i < changed.n; i++) {
		struct dead_letter dl = {
			.profile = profile, .profile_len = strlen(profile),
			.attr = store_attr_name(st, changed.kv[i].id),
			.value = changed.kv[i].val, .value_len = changed.kv[i].len, .reason = reason,
		};
		r = dead_letters_add(st, &dl);
	}
	attrset_finish(&changed);
	if (r == 0)
		r = store_run(st, "UPDATE profiles SET pending = NULL, pending_seq = NULL, pending_since = NULL WHERE id = ?",
			      "t", profile);
	return r;
}

/* The body written while choosing: under the first row's attributes as its
 * header, given up (is_on false) as soon as a row brings one more. */
struct early_body {
	struct body_writer w;
	bool is_open, is_on;
	size_t n_cols;
};

static int early_row(struct early_body *b, const struct config *cfg, const struct store *st, int fd,
		     const struct header *h, const char *profile, size_t plen, const struct row *row)
{
	if (!b->is_on)
		return 0;
	if (!b->is_open) {
		uint32_t *ids = malloc((h->n ? h->n : 1) * sizeof(*ids));
		if (!ids)
			return -ENOMEM;
		memcpy(ids, h->ids, h->n * sizeof(*ids));
		int r = body_writer_init(&b->w, ids, h->n);
		free(ids);
		b->is_open = true;
		b->n_cols = h->n;
		if (r == 0)
			r = body_writer_header(&b->w, id_header(cfg), st);
		if (r == 0)
			r = body_writer_open(&b->w, fd, 0);
		if (r < 0)
			return r;
	}
	if (h->n != b->n_cols) {
		b->is_on = false; /* written again from the database (queue_write_body) */
		return 0;
	}
	int r = body_writer_row(&b->w, profile, plen, row->blob, row->len);
	return r < 0 ? r : body_writer_flush(&b->w, BODY_WRITER_CHUNK);
}

/* Queued profiles, oldest change first, below the hold. */
static const char SQL_QUEUED[] = "SELECT id, accepted, pending, inflight_batch, pending_seq FROM profiles"
				 " WHERE pending IS NOT NULL AND pending_seq > ?1 AND pending_seq < ?2"
				 " ORDER BY pending_seq";

int queue_build(struct queue *q, const struct config *cfg, const struct queue_build_opts *o, struct queue_cut *cut)
{
	struct store *st = q->st;
	struct header h = { 0 };
	struct row row;
	struct early_body early = { .is_on = o->body_fd >= 0 };
	int64_t rows = 0, content = 0, dead = 0, lo = st->batched_upto + 1, hi = 0;
	int64_t max_rows = o->max_rows < cfg->batch.max_rows ? o->max_rows : cfg->batch.max_rows;
	bool is_full_rows = cfg->batch.rows == ROWS_FULL_PROFILE;
	int r = 0, rc;

	memset(cut, 0, sizeof(*cut));
	row_init(&row);
	if (store_begin(st) < 0) {
		r = -EIO;
		goto out;
	}
	sqlite3_stmt *sel = store_prepare(st, SQL_QUEUED, "ii", st->batched_upto, st->hold_from);
	if (!sel)
		goto db_error;
	while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
		if (rows == max_rows) {
			cut->is_full = true;
			break;
		}
		if (sqlite3_column_type(sel, 3) != SQLITE_NULL)
			continue; /* parked behind a batch Target has not finished */
		const char *profile = (const char *)sqlite3_column_text(sel, 0);
		size_t plen = (size_t)sqlite3_column_bytes(sel, 0);
		if ((r = row_load(&row, sel, 1, 2, is_full_rows)) < 0)
			goto rollback;
		size_t trial_n = h.n;
		int64_t trial_encoded = h.encoded;
		int64_t c = row_measure(&row, &h, st, profile, plen);
		if (c < 0) {
			r = (int)c;
			goto rollback;
		}
		if (body_size(cfg, &h, rows + 1, content + c) > cfg->batch.max_bytes) {
			header_truncate(&h, trial_n, trial_encoded);
			if (rows > 0) {
				cut->is_full = true;
				break;
			}
			char *copy = strdup(profile);
			struct buf pending;
			buf_init(&pending);
			if (!copy || buf_append(&pending, sqlite3_column_blob(sel, 2), (size_t)sqlite3_column_bytes(sel, 2)) < 0) {
				free(copy);
				buf_finish(&pending);
				r = -ENOMEM;
				goto rollback;
			}
			sqlite3_reset(sel);
			r = dead_letter_profile(st, copy, pending.data, pending.len,
						"profile row alone exceeds batch.max_bytes");
			dead++;
			free(copy);
			buf_finish(&pending);
			if (r < 0)
				goto rollback;
			if (!(sel = store_prepare(st, SQL_QUEUED, "ii", st->batched_upto, st->hold_from)))
				goto db_error;
			continue;
		}
		if ((r = early_row(&early, cfg, st, o->body_fd, &h, profile, plen, &row)) < 0)
			goto rollback;
		hi = sqlite3_column_int64(sel, 4);
		rows++;
		content += c;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		sqlite3_reset(sel);
		goto db_error;
	}
	sqlite3_reset(sel);
	cut->is_full = cut->is_full || rows == max_rows;
	cut->rows = rows;
	cut->bytes = rows ? body_size(cfg, &h, rows, content) : 0;
	if (rows == 0 || (o->only_if_full && !cut->is_full)) {
		/* Nothing to cut; profiles dead-lettered on the way stay so. */
		if (!dead)
			store_rollback(st);
		else if (store_commit(st) < 0) {
			r = -EIO;
			goto out;
		}
		/* Now known exactly: what could go at once. */
		st->staged.rows = cut->rows;
		st->staged.bytes = cut->bytes;
		goto out;
	}
	/* The header: its attribute ids as varints, ascending, which is the order
	 * of the body's columns. */
	qsort(h.ids, h.n, sizeof(*h.ids), cmp_id);
	struct buf blob;
	buf_init(&blob);
	for (size_t i = 0; i < h.n && r == 0; i++)
		r = attrset_put_varint(&blob, h.ids[i]);
	if (r == 0 && store_run(st, "INSERT INTO batches (state, created_at, rows, bytes, header, seq_lo, seq_hi, full_rows,"
				    " folded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)", "tiiibiii", S(BATCH_READY),
				clock_wall_ms(), rows, cut->bytes, blob.data ? blob.data : "", (int)blob.len, lo, hi,
				(int64_t)is_full_rows) < 0)
		r = -EIO;
	buf_finish(&blob);
	if (r < 0)
		goto rollback;
	cut->id = sqlite3_last_insert_rowid(st->db);
	if (early.is_on && early.is_open && (r = body_writer_flush(&early.w, 0)) < 0)
		goto rollback;
	cut->has_body = early.is_on && early.is_open && early.w.written == cut->bytes;
	if ((r = finish(q, 0)) < 0) {
		cut->id = 0;
		cut->has_body = false;
		goto out;
	}
	/* What is left is known only roughly: what was staged, less this batch. */
	st->staged.rows = cut->is_full && st->staged.rows > rows ? st->staged.rows - rows : 0;
	st->staged.bytes = cut->is_full && st->staged.bytes > cut->bytes ? st->staged.bytes - cut->bytes : 0;
	goto out;

db_error:
	r = -EIO;
rollback:
	store_abort(st);
	memset(cut, 0, sizeof(*cut));
out:
	if (early.is_open)
		body_writer_finish(&early.w);
	row_finish(&row);
	header_finish(&h);
	return r;
}

/* --- bodies ---------------------------------------------------------------------- */

int queue_header_ids(struct queue *q, int64_t id, uint32_t **ids, size_t *n)
{
	*ids = NULL;
	*n = 0;
	sqlite3_stmt *s = store_prepare(q->st, "SELECT header FROM batches WHERE id = ?", "i", id);
	if (!s)
		return -EIO;
	if (sqlite3_step(s) != SQLITE_ROW) {
		sqlite3_reset(s);
		return -ENOENT;
	}
	const unsigned char *p = sqlite3_column_blob(s, 0);
	size_t len = (size_t)sqlite3_column_bytes(s, 0);
	*ids = malloc((len ? len : 1) * sizeof(**ids));
	if (!*ids) {
		sqlite3_reset(s);
		return -ENOMEM;
	}
	for (const unsigned char *end = p + len; p < end;) {
		p = attrset_get_varint(p, end, &(*ids)[*n]);
		if (!p) {
			sqlite3_reset(s);
			free(*ids);
			*ids = NULL;
			*n = 0;
			return -EINVAL;
		}
		(*n)++;
	}
	sqlite3_reset(s);
	return 0;
}

/* Calls each(arg, s) for every row of batch m, range members (in
 * pending_seq order) then moved ones, with s's columns: the profile id, its
 * accepted values, and the values the batch carries for it. Stops at the
 * first negative return, which it returns; -EIO on a database error. */
static int each_member(struct store *st, const struct members *m, int (*each)(void *arg, sqlite3_stmt *s), void *arg)
{
	static const char *const sql[2] = {
		"SELECT id, accepted, pending FROM profiles WHERE " RANGE_ROWS " ORDER BY pending_seq",
		"SELECT id, accepted, inflight FROM profiles WHERE " MOVED_ROWS,
	};
	int r = 0;
	for (int part = 0; part < 2 && r == 0; part++) {
		sqlite3_stmt *s = store_prepare(st, sql[part], "iii", m->id, m->lo, m->hi);
		if (!s)
			return -EIO;
		int rc;
		while (r == 0 && (rc = sqlite3_step(s)) == SQLITE_ROW)
			r = each(arg, s);
		if (r == 0 && rc != SQLITE_DONE) {
			store_note_error(st);
			r = -EIO;
		}
		sqlite3_reset(s);
	}
	return r;
}

struct row_writer {
	struct body_writer *w;
	struct row row;
	bool is_full_rows;
};

static int write_row(void *arg, sqlite3_stmt *s)
{
	struct row_writer *rw = arg;
	int r = row_load(&rw->row, s, 1, 2, rw->is_full_rows);
	if (r == 0)
		r = body_writer_row(rw->w, (const char *)sqlite3_column_text(s, 0), (size_t)sqlite3_column_bytes(s, 0),
				    rw->row.blob, rw->row.len);
	return r < 0 ? r : body_writer_flush(rw->w, BODY_WRITER_CHUNK);
}

/* Writes the rows of batch m to w. */
static int write_rows(struct store *st, const struct members *m, struct body_writer *w)
{
	struct row_writer rw = { .w = w, .is_full_rows = m->is_full_rows };
	row_init(&rw.row);
	int r = each_member(st, m, write_row, &rw);
	row_finish(&rw.row);
	return r;
}

int64_t queue_write_body(struct queue *q, const struct config *cfg, int64_t id, int fd)
{
	struct store *st = q->st;
	uint32_t *ids = NULL;
	size_t n = 0;
	struct members m;
	struct body_writer w;
	int r = get_members(st, id, &m);
	if (r == 0)
		r = queue_header_ids(q, id, &ids, &n);
	if (r < 0)
		return r;
	r = body_writer_init(&w, ids, n);
	free(ids);
	if (r == 0)
		r = body_writer_header(&w, id_header(cfg), st);
	if (r == 0) {
		/* bytes: the exact size since queue_build, 0 when not known (split halves). */
		int64_t expect = store_int(st, "SELECT bytes FROM batches WHERE id = ?", 0, "i", id);
		r = body_writer_open(&w, fd, expect);
	}
	if (r == 0)
		r = write_rows(st, &m, &w);
	if (r == 0)
		r = body_writer_flush(&w, 0);
	int64_t total = w.written;
	body_writer_finish(&w);
	return r < 0 ? r : total;
}

/* --- sending and answers --------------------------------------------------------- */

int queue_mark_posting(struct queue *q, int64_t id, int64_t now, int64_t bytes)
{
	struct store *st = q->st;
	if (store_begin(st) < 0)
		return -EIO;
	int r = store_run(st, "UPDATE batches SET state = ?4, attempts = attempts + 1, sent_at = ?2,"
			      " first_sent_at = coalesce(first_sent_at, ?2), bytes = ?3 WHERE id = ?1",
			  "iiit", id, now, bytes, S(BATCH_POSTING));
	if (r == 0)
		r = store_run(st, "INSERT INTO sends (at, rows) SELECT ?2, rows FROM batches WHERE id = ?1", "ii", id, now);
	/* The rows-per-day budget looks back one day; older sends are of no use. */
	if (r == 0)
		r = store_run(st, "DELETE FROM sends WHERE at < ?", "i", now - 2 * DAY_MS);
	return finish(q, r);
}

int queue_mark_ready(struct queue *q, int64_t id)
{
	return set_state(q->st, id, BATCH_READY);
}

int queue_get(struct queue *q, int64_t id, struct queue_batch *b)
{
	sqlite3_stmt *s = store_prepare(q->st, "SELECT state, created_at, coalesce(answered_at, 0), attempts, failures,"
					       " rows, polls FROM batches WHERE id = ?", "i", id);
	if (!s)
		return -EIO;
	int rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		if (batch_state_parse((const char *)sqlite3_column_text(s, 0), &b->state) < 0)
			b->state = BATCH_READY;
		b->created_at = sqlite3_column_int64(s, 1);
		b->answered_at = sqlite3_column_int64(s, 2);
		b->attempts = sqlite3_column_int64(s, 3);
		b->failures = sqlite3_column_int64(s, 4);
		b->rows = sqlite3_column_int64(s, 5);
		b->polls = sqlite3_column_int64(s, 6);
	} else if (rc != SQLITE_DONE) {
		store_note_error(q->st);
	}
	sqlite3_reset(s);
	return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : -EIO;
}

/* Batch id is complete (inside the caller's transaction): its moved members'
 * values become the mirror now; its range members' are the mirror from now
 * on (see struct store) and are folded into accepted later. */
static int complete_members(struct queue *q, int64_t id)
{
	struct members m;
	int r = get_members(q->st, id, &m);
	if (r == 0)
		r = release_moved(q->st, &m, true);
	if (r == 0)
		r = store_run(q->st, "UPDATE batches SET folded = (seq_lo IS NULL OR seq_lo > seq_hi) WHERE id = ?", "i", id);
	finished(q);
	return r;
}

int queue_accept(struct queue *q, int64_t id, const char *status_url, const char *target_batch_id,
		 int64_t next_poll_at)
{
	struct store *st = q->st;
	int64_t now = clock_wall_ms();
	if (store_begin(st) < 0)
		return -EIO;
	/* Without a status URL there is nothing to poll: the submission is all we get. */
	int r = status_url ? 0 : complete_members(q, id);
	if (r == 0)
		r = store_run(st, "UPDATE batches SET state = ?2, answered_at = ?3, http_status = 200, status_url = ?4,"
				  " target_batch_id = ?5, next_poll_at = ?6, last_error = NULL, completed_at = ?7"
				  " WHERE id = ?1", "itittiz", id,
			      S(status_url ? BATCH_SUBMITTED : BATCH_COMPLETE), now, status_url, target_batch_id,
			      next_poll_at, status_url ? (int64_t)0 : now);
	return finish(q, r);
}

int queue_retry(struct queue *q, int64_t id, int64_t next_at, long http, const char *why, int64_t failures,
		int64_t echo_due)
{
	struct store *st = q->st;
	if (store_begin(st) < 0)
		return -EIO;
	int r = echo_due > 0 ? add_echoes(q, id, echo_due) : 0;
	if (r == 0)
		r = store_run(st, "UPDATE batches SET state = ?6, next_attempt_at = ?2, http_status = ?3, last_error = ?4,"
				  " failures = ?5 WHERE id = ?1", "iiztit", id, next_at, (int64_t)http, why, failures,
			      S(BATCH_READY));
	return finish(q, r);
}

int queue_auth_failed(struct queue *q, int64_t id)
{
	return store_run(q->st, "UPDATE batches SET state = ?2, attempts = max(attempts - 1, 0),"
				" last_error = 'authentication failed' WHERE id = ?1", "it", id, S(BATCH_READY));
}

struct member_letters {
	struct store *st;
	const struct members *m;
	const char *reason, *answer;
	int64_t attempts;
	struct attrset values;
};

static int dead_letter_row(void *arg, sqlite3_stmt *s)
{
	struct member_letters *ml = arg;
	if (attrset_decode(&ml->values, sqlite3_column_blob(s, 2), (size_t)sqlite3_column_bytes(s, 2)) < 0)
		return -EINVAL;
	int r = 0;
	for (size_t i = 0; i < ml->values.n && r == 0; i++) {
		struct dead_letter dl = {
			.profile = (const char *)sqlite3_column_text(s, 0), .profile_len = (size_t)sqlite3_column_bytes(s, 0),
			.attr = store_attr_name(ml->st, ml->values.kv[i].id),
			.value = ml->values.kv[i].val, .value_len = ml->values.kv[i].len,
			.batch_id = ml->m->id, .reason = ml->reason, .attempts = ml->attempts, .last_answer = ml->answer,
		};
		r = dead_letters_add(ml->st, &dl);
	}
	return r;
}

/* Each value batch m carries becomes a dead letter with reason and answer. */
static int dead_letter_members(struct store *st, const struct members *m, const char *reason, const char *answer)
{
	struct member_letters ml = { .st = st, .m = m, .reason = reason, .answer = answer,
				     .attempts = store_int(st, "SELECT attempts FROM batches WHERE id = ?", 0, "i", m->id) };
	attrset_init(&ml.values);
	int r = each_member(st, m, dead_letter_row, &ml);
	attrset_finish(&ml.values);
	return r;
}

/* Dead-letters batch id inside the caller's transaction: its values become
 * dead letters, and its profiles leave it (newer pending values of moved
 * members take the queue's end). */
static int kill_batch(struct queue *q, int64_t id, const char *reason, const char *answer)
{
	struct store *st = q->st;
	struct members m;
	int r = get_members(st, id, &m);
	if (r == 0)
		r = dead_letter_members(st, &m, reason, answer);
	if (r == 0)
		r = run_members(st, "UPDATE profiles SET pending = NULL, pending_seq = NULL, pending_since = NULL"
				    " WHERE " RANGE_ROWS, &m, 0, 0);
	if (r == 0) {
		int64_t n = count_members(st, &m, true);
		r = n < 0 ? (int)n
			  : run_members(st, "UPDATE profiles SET inflight = NULL, inflight_batch = NULL,"
					    " pending_seq = CASE WHEN pending IS NULL THEN NULL ELSE ?4 + u.n END"
					    " FROM (SELECT id, row_number() OVER (ORDER BY pending_seq, id) AS n"
					    " FROM profiles WHERE " MOVED_ROWS ") u WHERE u.id = profiles.id",
					&m, take_seqs(st, n), 0);
	}
	if (r == 0)
		r = store_run(st, "UPDATE batches SET state = ?2, last_error = ?3, folded = 1 WHERE id = ?1", "itt", id,
			      S(BATCH_DEAD), reason);
	finished(q);
	return r;
}

int queue_kill(struct queue *q, int64_t id, const char *reason, const char *answer, int64_t echo_due)
{
	if (store_begin(q->st) < 0)
		return -EIO;
	int r = echo_due > 0 ? add_echoes(q, id, echo_due) : 0;
	if (r == 0)
		r = kill_batch(q, id, reason, answer);
	return finish(q, r);
}

/* Creates a ready batch that inherits header, rows mode and created_at from
 * batch from, over the range lo..hi (lo > hi: none), linked to requeue_of (0:
 * none). Returns its id or -EIO. */
static int64_t new_batch_like(struct store *st, int64_t from, int64_t requeue_of, int64_t lo, int64_t hi)
{
	/* Sequence numbers start at 1: 0 binds as NULL. */
	if (store_run(st, "INSERT INTO batches (state, created_at, header, requeue_of, full_rows, seq_lo, seq_hi, folded)"
			  " SELECT ?3, created_at, header, ?2, full_rows, ?4, ?5, 1 FROM batches WHERE id = ?1", "iztzz",
		      from, requeue_of, S(BATCH_READY), lo > hi ? (int64_t)0 : lo, lo > hi ? (int64_t)0 : hi) < 0)
		return -EIO;
	return sqlite3_last_insert_rowid(st->db);
}

static int count_rows(struct store *st, int64_t id)
{
	struct members m;
	int r = get_members(st, id, &m);
	int64_t n = r < 0 ? r : count_members(st, &m, false);
	int64_t k = n < 0 ? n : count_members(st, &m, true);
	if (n < 0 || k < 0)
		return -EIO;
	return store_run(st, "UPDATE batches SET rows = ?2, bytes = 0 WHERE id = ?1", "ii", id, n + k);
}

int queue_split(struct queue *q, int64_t id)
{
	struct store *st = q->st;
	struct members m;
	if (store_begin(st) < 0)
		return -EIO;
	int r = get_members(st, id, &m);
	int64_t in_range = r < 0 ? -1 : count_members(st, &m, false), moved = r < 0 ? -1 : count_members(st, &m, true);
	if (in_range < 0 || moved < 0)
		return finish(q, r < 0 ? r : -EIO);
	if (in_range + moved < 2) {
		store_rollback(st);
		return -E2BIG;
	}
	int64_t first, second;
	if (in_range >= 2) {
		/* The range in two at its middle row; moved members go with the first. */
		int64_t mid = store_int(st, "SELECT pending_seq FROM profiles WHERE " RANGE_ROWS
					    " ORDER BY pending_seq LIMIT 1 OFFSET ?4", -1, "iiii", m.id, m.lo, m.hi,
					in_range / 2);
		first = mid < 0 ? -EIO : new_batch_like(st, id, 0, m.lo, mid - 1);
		second = first < 0 ? first : new_batch_like(st, id, 0, mid, m.hi);
		if (second < 0)
			return finish(q, -EIO);
		r = store_run(st, "UPDATE profiles SET inflight_batch = ?2 WHERE inflight_batch = ?1", "ii", id, first);
	} else {
		/* The range (one row at most) and half the moved ones, then the rest. */
		first = new_batch_like(st, id, 0, m.lo, m.hi);
		second = first < 0 ? first : new_batch_like(st, id, 0, 1, 0);
		if (second < 0)
			return finish(q, -EIO);
		r = store_run(st, "UPDATE profiles SET inflight_batch = ?2 WHERE id IN (SELECT id FROM profiles"
				  " WHERE inflight_batch = ?1 ORDER BY id LIMIT ?3)", "iii", id, first,
			      (in_range + moved) / 2 - in_range);
		if (r == 0)
			r = store_run(st, "UPDATE profiles SET inflight_batch = ?2 WHERE inflight_batch = ?1", "ii", id,
				      second);
	}
	/* The halves own the rows now: the whole is no longer in flight. */
	if (r == 0)
		r = store_run(st, "UPDATE batches SET state = ?2, folded = 1 WHERE id = ?1", "it", id, S(BATCH_SPLIT));
	if (r == 0)
		r = count_rows(st, first);
	if (r == 0)
		r = count_rows(st, second);
	return finish(q, r);
}

/* --- status ------------------------------------------------------------------------ */

int queue_due_polls(struct queue *q, int64_t now, bool (*each)(void *arg, int64_t id, const char *status_url, int64_t answered_at),
		    void *arg, int64_t *next_at)
{
	*next_at = 0;
	sqlite3_stmt *s = store_prepare(q->st, "SELECT id, status_url, next_poll_at, answered_at FROM batches WHERE state = ?"
					       " ORDER BY next_poll_at LIMIT 64", "t", S(BATCH_SUBMITTED));
	if (!s)
		return -EIO;
	int rc;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		int64_t at = sqlite3_column_int64(s, 2);
		if (at > now) {
			*next_at = at;
			break;
		}
		if (!each(arg, sqlite3_column_int64(s, 0), (const char *)sqlite3_column_text(s, 1), sqlite3_column_int64(s, 3)))
			break;
	}
	int r = rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -EIO;
	if (r < 0)
		store_note_error(q->st);
	sqlite3_reset(s);
	return r;
}

/* What completing a batch with failed rows needs while its transaction is open. */
struct completion {
	struct queue *q;
	struct members m;
	int64_t max_failures;
	struct queue_row_results *res;
	struct attrset values;
	struct buf blob;
};

/* Target reported profile's row of the batch failed: its values never become
 * the mirror. They are queued again at the queue's end or, after
 * max_failures failures in a row, become dead letters naming Target's
 * verdict. */
static int row_failed(void *arg, const char *profile, size_t len)
{
	struct completion *c = arg;
	struct store *st = c->q->st;
	/* Listed twice: the first time decided. */
	if (store_run(st, "INSERT OR IGNORE INTO temp.completion_seen (profile) VALUES (?)", "s", profile, (int)len) < 0)
		return -EIO;
	if (sqlite3_changes(st->db) == 0)
		return 0;
	sqlite3_stmt *s = store_prepare(st, "SELECT pending, pending_seq, inflight_batch, inflight FROM profiles"
					    " WHERE id = ?", "s", profile, (int)len);
	if (!s)
		return -EIO;
	int rc = sqlite3_step(s);
	bool is_moved = false, is_member = false;
	buf_reset(&c->blob);
	if (rc == SQLITE_ROW) {
		int64_t seq = sqlite3_column_int64(s, 1);
		is_moved = sqlite3_column_int64(s, 2) == c->m.id;
		is_member = is_moved || (sqlite3_column_type(s, 2) == SQLITE_NULL && sqlite3_column_type(s, 0) != SQLITE_NULL &&
					 seq >= c->m.lo && seq <= c->m.hi);
		int col = is_moved ? 3 : 0;
		if (is_member && buf_append(&c->blob, sqlite3_column_blob(s, col), (size_t)sqlite3_column_bytes(s, col)) < 0)
			rc = SQLITE_NOMEM;
	} else if (rc != SQLITE_DONE) {
		store_note_error(st);
	}
	sqlite3_reset(s);
	if (rc == SQLITE_NOMEM)
		return -ENOMEM;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return -EIO;
	if (!is_member) {
		c->res->unknown++;
		return 0;
	}
	if (attrset_decode(&c->values, c->blob.data, c->blob.len) < 0)
		return -EINVAL;
	int64_t failures = store_int(st, "SELECT failures FROM row_failures WHERE profile = ?", 0, "s", profile, (int)len) + 1;
	char *id = strndup(profile, len);
	if (!id)
		return -ENOMEM;
	int64_t now = clock_wall_ms();
	/* For tpsyncctl trace: this batch's row for the profile failed. */
	int r = store_run(st, "INSERT OR IGNORE INTO row_results (profile, batch_id, result, at) VALUES (?, ?, 'failed', ?)",
			  "sii", profile, (int)len, c->m.id, now);
	if (r == 0 && failures >= c->max_failures) {
		char reason[256];
		snprintf(reason, sizeof(reason), "Target reported this profile's row failed %lld times in a row (batch %lld)",
			 (long long)failures, (long long)c->m.id);
		for (size_t i = 0; r == 0 && i < c->values.n; i++) {
			struct dead_letter dl = {
				.profile = id, .profile_len = len, .attr = store_attr_name(st, c->values.kv[i].id),
				.value = c->values.kv[i].val, .value_len = c->values.kv[i].len,
				.batch_id = c->m.id, .reason = reason, .attempts = failures,
				.last_answer = "<status>failed</status>",
			};
			r = dead_letters_add(st, &dl);
		}
		if (r == 0)
			r = store_run(st, "DELETE FROM row_failures WHERE profile = ?", "s", profile, (int)len);
		if (r == 0 && is_moved)
			r = store_run(st, "UPDATE profiles SET inflight = NULL, inflight_batch = NULL,"
					  " pending_seq = CASE WHEN pending IS NULL THEN NULL ELSE ?2 END WHERE id = ?1",
				      "si", profile, (int)len, take_seqs(st, 1));
		else if (r == 0)
			r = store_run(st, "UPDATE profiles SET pending = NULL, pending_seq = NULL, pending_since = NULL"
					  " WHERE id = ?", "s", profile, (int)len);
		c->res->dead++;
	} else if (r == 0) {
		if (is_moved)
			r = store_run(st, "UPDATE profiles SET pending = tpsync_attrs_overlay(inflight, pending), inflight = NULL,"
					  " inflight_batch = NULL, pending_seq = ?2, pending_since = coalesce(pending_since, ?3)"
					  " WHERE id = ?1", "sii", profile, (int)len, take_seqs(st, 1), now);
		else
			r = store_run(st, "UPDATE profiles SET pending_seq = ?2 WHERE id = ?1", "si", profile, (int)len,
				      take_seqs(st, 1));
		if (r == 0)
			r = store_run(st, "INSERT INTO row_failures (profile, failures, batch_id, at) VALUES (?1, ?2, ?3, ?4)"
					  " ON CONFLICT (profile) DO UPDATE SET failures = excluded.failures,"
					  " batch_id = excluded.batch_id, at = excluded.at",
				      "siii", profile, (int)len, failures, c->m.id, now);
		c->res->requeued++;
	}
	free(id);
	return r;
}

int queue_complete(struct queue *q, int64_t id, const struct queue_counts_at_target *counts, int64_t max_failures,
		   queue_feed_fn *feed, void *arg, struct queue_row_results *res)
{
	struct store *st = q->st;
	memset(res, 0, sizeof(*res));
	if (store_begin(st) < 0)
		return -EIO;
	struct completion c = { .q = q, .max_failures = max_failures, .res = res };
	attrset_init(&c.values);
	buf_init(&c.blob);
	int r = get_members(st, id, &c.m);
	if (r == 0 && feed) {
		r = store_run(st, "CREATE TEMP TABLE IF NOT EXISTS completion_seen (profile TEXT PRIMARY KEY) WITHOUT ROWID", "");
		if (r == 0)
			r = store_run(st, "DELETE FROM temp.completion_seen", "");
		if (r == 0)
			r = feed(arg, row_failed, &c);
	}
	/* A profile whose row went through ends its run of failures. */
	if (r == 0)
		r = run_members(st, "DELETE FROM row_failures WHERE profile IN (SELECT f.profile FROM row_failures f"
				    " JOIN profiles p ON p.id = f.profile WHERE p.inflight_batch = ?1 OR (p.pending IS NOT NULL"
				    " AND p.pending_seq BETWEEN ?2 AND ?3 AND p.inflight_batch IS NULL))", &c.m, 0, 0);
	if (r == 0)
		r = complete_members(q, id);
	if (r == 0 && res->requeued + res->dead > 0)
		r = store_run(st, "DELETE FROM row_results WHERE at < ?", "i", clock_wall_ms() - st->history.max_age_ms);
	sqlite3_stmt *u = r == 0 ? store_prepare(st, "UPDATE batches SET state = ?7, target_status = 'complete',"
						     " completed_at = ?2, consumed = ?3, successful = ?4, not_found = ?5,"
						     " failed = ?6, polls = polls + 1, last_error = NULL, rows_requeued = ?8,"
						     " rows_dead = ?9 WHERE id = ?1", "ii", id, clock_wall_ms()) : NULL;
	if (r == 0 && !u)
		r = -EIO;
	if (u) {
		int64_t values[4] = { counts->consumed, counts->successful, counts->not_found, counts->failed };
		for (int i = 0; i < 4; i++)
			if (values[i] >= 0)
				sqlite3_bind_int64(u, 3 + i, values[i]);
		sqlite3_bind_text(u, 7, S(BATCH_COMPLETE), -1, SQLITE_STATIC);
		sqlite3_bind_int64(u, 8, res->requeued);
		sqlite3_bind_int64(u, 9, res->dead);
		if (sqlite3_step(u) != SQLITE_DONE) {
			store_note_error(st);
			r = -EIO;
		}
		sqlite3_reset(u);
	}
	attrset_finish(&c.values);
	buf_finish(&c.blob);
	return finish(q, r);
}

int queue_poll_again(struct queue *q, int64_t id, int64_t next_at, const char *why)
{
	return store_run(q->st, "UPDATE batches SET polls = polls + 1, next_poll_at = ?2, last_error = ?3 WHERE id = ?1",
			 "iit", id, next_at, why);
}

int queue_unconfirm(struct queue *q, int64_t id, const char *why, int64_t *profiles)
{
	struct store *st = q->st;
	struct members m;
	*profiles = 0;
	if (store_begin(st) < 0)
		return -EIO;
	int r = get_members(st, id, &m);
	int64_t n = r < 0 ? -1 : count_members(st, &m, false), k = r < 0 ? -1 : count_members(st, &m, true);
	if (n < 0 || k < 0)
		return finish(q, r < 0 ? r : -EIO);
	*profiles = n + k;
	r = requeue_range(st, &m);
	if (r == 0)
		r = release_moved(st, &m, false);
	if (r == 0)
		r = store_run(st, "UPDATE batches SET state = ?2, last_error = ?3, folded = 1 WHERE id = ?1", "itt", id,
			      S(BATCH_UNCONFIRMED), why);
	finished(q);
	return finish(q, r);
}

int queue_requeue_stuck(struct queue *q, int64_t id)
{
	struct store *st = q->st;
	if (store_begin(st) < 0)
		return -EIO;
	int64_t requeue_of = store_int(st, "SELECT requeue_of FROM batches WHERE id = ?", 0, "i", id);
	if (requeue_of) {
		int r = kill_batch(q, id, "Target reported the batch stuck again after a re-queue", "stuck");
		if (r == 0)
			r = store_run(st, "UPDATE batches SET target_status = 'stuck' WHERE id = ?", "i", id);
		return finish(q, r);
	}
	/* Its rows are sent again as a re-queue batch (linked by requeue_of, so a
	 * second "stuck" is final), all as moved members of it. A profile that
	 * has newer values queued leaves it instead: its values are queued under
	 * the newer ones, which repeats them too. */
	struct members m;
	int r = get_members(st, id, &m);
	int64_t again = r < 0 ? r : new_batch_like(st, id, id, 1, 0);
	if (again < 0)
		return finish(q, (int)again);
	int64_t n = count_members(st, &m, true);
	int64_t parked = store_int(st, "SELECT count(*) FROM profiles WHERE inflight_batch = ? AND pending IS NOT NULL", -1,
				   "i", id);
	if (n < 0 || parked < 0)
		return finish(q, -EIO);
	if (parked > 0)
		r = run_members(st, "UPDATE profiles SET pending = tpsync_attrs_overlay(inflight, pending), inflight = NULL,"
				    " inflight_batch = NULL, pending_seq = ?4 + u.n FROM (SELECT id, row_number()"
				    " OVER (ORDER BY pending_seq) AS n FROM profiles WHERE " MOVED_ROWS " AND pending IS NOT NULL) u"
				    " WHERE u.id = profiles.id", &m, take_seqs(st, parked), 0);
	if (r == 0)
		r = store_run(st, "UPDATE profiles SET inflight_batch = ?2 WHERE inflight_batch = ?1", "ii", id, again);
	if (r == 0)
		r = run_members(st, "UPDATE profiles SET inflight = pending, inflight_batch = ?4, pending = NULL,"
				    " pending_seq = NULL, pending_since = NULL WHERE " RANGE_ROWS, &m, again, 0);
	if (r == 0)
		r = count_rows(st, again);
	if (r == 0)
		r = store_run(st, "DELETE FROM batches WHERE id = ? AND rows = 0", "i", again);
	if (r == 0)
		r = store_run(st, "UPDATE batches SET state = ?2, target_status = 'stuck', folded = 1 WHERE id = ?1", "it",
			      id, S(BATCH_STUCK));
	finished(q);
	return finish(q, r);
}

/* --- echoes ------------------------------------------------------------------------ */

int queue_run_echoes(struct queue *q, int64_t now, int *n, int64_t *next_at)
{
	struct store *st = q->st;
	*n = 0;
	int64_t first = store_int(st, "SELECT min(due_at) FROM echoes", 0, "");
	*next_at = first;
	if (first == 0 || first > now)
		return 0;
	if (q->is_echo_blocked) {
		/* Waiting for batches to finish (the sender is woken then). */
		*next_at = store_int(st, "SELECT min(due_at) FROM echoes WHERE due_at > ?", 0, "i", now);
		return 0;
	}
	if (store_begin(st) < 0)
		return -EIO;
	sqlite3_stmt *sel = store_prepare(st, "SELECT profile FROM echoes WHERE due_at <= ?1 ORDER BY due_at", "i", now);
	if (!sel)
		return finish(q, -EIO);
	int r = 0, rc;
	int64_t waiting = 0;
	bool is_more = false;
	while (r == 0 && (rc = sqlite3_step(sel)) == SQLITE_ROW) {
		if (*n == ECHOES_PER_ROUND) {
			is_more = true;
			break;
		}
		const char *profile = (const char *)sqlite3_column_text(sel, 0);
		size_t len = (size_t)sqlite3_column_bytes(sel, 0);
		/* In a batch Target has not finished: its answer comes first. */
		r = stage_in_flight(&q->sg, profile, len);
		if (r > 0) {
			waiting++;
			r = 0;
			continue;
		}
		if (r == 0)
			r = stage_refresh_all(&q->sg, profile, "echo: a request whose answer never came");
		if (r == 0)
			r = store_run(st, "DELETE FROM echoes WHERE profile = ?", "s", profile, (int)len);
		(*n)++;
	}
	if (r == 0 && !is_more && rc != SQLITE_DONE) {
		store_note_error(st);
		r = -EIO;
	}
	sqlite3_reset(sel);
	if ((r = finish(q, r)) < 0)
		return r;
	if (is_more) {
		*next_at = now + 1;
	} else {
		q->is_echo_blocked = waiting > 0;
		*next_at = store_int(st, "SELECT min(due_at) FROM echoes WHERE due_at > ?", 0, "i", now);
	}
	return 0;
}

/* --- dead letters -------------------------------------------------------------------- */

static int restore_one(void *arg, const char *profile, const char *attr, const char *value, size_t len)
{
	struct queue *q = arg;
	int64_t aid = store_attr_id(q->st, attr, strlen(attr));
	if (aid < 0)
		return (int)aid;
	struct attrset one;
	attrset_init(&one);
	int r = attrset_put(&one, (uint32_t)aid, value, (uint32_t)len);
	if (r == 0)
		r = stage_restore(&q->sg, profile, &one, "retry-dead");
	attrset_finish(&one);
	return r;
}

int queue_retry_dead(struct queue *q, const int64_t *ids, size_t n, int64_t *count)
{
	if (store_begin(q->st) < 0)
		return -EIO;
	return finish(q, dead_letters_take(q->st, ids, n, restore_one, q, count));
}

/* --- folding ----------------------------------------------------------------------- */

/* Folds in passes over the profiles table in id order (its pages one after
 * the other; the pending index's order is random in the table). A pass
 * folds every complete change it meets, and ends the batches that were
 * complete when it began. */
int queue_fold(struct queue *q, int64_t max_rows, bool *is_more)
{
	struct store *st = q->st;
	*is_more = false;
	if (!q->fold_pass_upto) {
		q->fold_pass_upto = store_int(st, "SELECT max(id) FROM batches WHERE folded = 0 AND state = ?", 0, "t",
					      S(BATCH_COMPLETE));
		q->fold_cursor.len = 0;
		if (!q->fold_pass_upto)
			return 0;
	}
	if (store_begin(st) < 0)
		return -EIO;
	struct buf upto;
	buf_init(&upto);
	sqlite3_stmt *s = store_prepare(st, "SELECT id FROM profiles WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?", "si",
					q->fold_cursor.data ? q->fold_cursor.data : "", (int)q->fold_cursor.len, max_rows - 1);
	int r = s ? 0 : -EIO, rc = s ? sqlite3_step(s) : SQLITE_ERROR;
	if (rc == SQLITE_ROW && buf_append(&upto, sqlite3_column_text(s, 0), (size_t)sqlite3_column_bytes(s, 0)) < 0)
		r = -ENOMEM;
	else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		r = -EIO;
	if (s)
		sqlite3_reset(s);
	bool is_last = r == 0 && rc == SQLITE_DONE;
	if (r == 0)
		r = store_run(st, "UPDATE profiles SET accepted = tpsync_attrs_overlay(accepted, pending),"
				  " accepted_at = tpsync_completed_at(pending_seq), pending = NULL,"
				  " pending_seq = NULL, pending_since = NULL WHERE id > ?1 AND (?2 IS NULL OR id <= ?2)"
				  " AND pending IS NOT NULL AND inflight_batch IS NULL AND pending_seq <= ?3"
				  " AND tpsync_in_flight(pending_seq) = 0", "ssi",
			      q->fold_cursor.data ? q->fold_cursor.data : "", (int)q->fold_cursor.len,
			      is_last ? NULL : upto.data, (int)upto.len, st->batched_upto);
	if (r == 0 && is_last)
		r = store_run(st, "UPDATE batches SET folded = 1 WHERE folded = 0 AND state = ?1 AND id <= ?2", "ti",
			      S(BATCH_COMPLETE), q->fold_pass_upto);
	r = finish(q, r);
	if (r == 0 && !is_last) {
		buf_reset(&q->fold_cursor);
		r = buf_append(&q->fold_cursor, upto.data, upto.len);
	}
	buf_finish(&upto);
	if (r < 0)
		return r;
	if (is_last)
		q->fold_pass_upto = 0;
	*is_more = !is_last || store_int(st, "SELECT count(*) FROM batches WHERE folded = 0 AND state = ?", 0, "t",
					 S(BATCH_COMPLETE)) > 0;
	return 0;
}

/* --- reporting ------------------------------------------------------------------------ */

int queue_counts(struct queue *q, bool with_all_states, struct queue_counts *c)
{
	struct store *st = q->st;
	memset(c, 0, sizeof(*c));
	int64_t queued = store_int(st, "SELECT count(*) FROM profiles WHERE pending IS NOT NULL AND pending_seq > ?", -1,
				   "i", st->batched_upto);
	/* By profiles_inflight: the pending index holds every change not yet folded. */
	int64_t parked = store_int(st, "SELECT count(*) FROM profiles INDEXED BY profiles_inflight"
				       " WHERE inflight_batch IS NOT NULL AND pending IS NOT NULL AND pending_seq <= ?", -1, "i",
				   st->batched_upto);
	c->pending_profiles = queued < 0 || parked < 0 ? -1 : queued + parked;
	c->oldest_pending_at = store_int(st, "SELECT pending_since FROM profiles WHERE pending IS NOT NULL AND pending_seq > ?"
					     " ORDER BY pending_seq LIMIT 1", 0, "i", st->batched_upto);
	/* A parked change (waiting for its profile's unfinished batch) is unsent too. */
	int64_t oldest_parked = parked > 0 ? store_int(st, "SELECT coalesce(min(pending_since), 0) FROM profiles"
							   " INDEXED BY profiles_inflight WHERE inflight_batch IS NOT NULL"
							   " AND pending IS NOT NULL AND pending_seq <= ?", 0, "i",
						       st->batched_upto) : 0;
	if (oldest_parked > 0 && (c->oldest_pending_at <= 0 || oldest_parked < c->oldest_pending_at))
		c->oldest_pending_at = oldest_parked;
	c->in_flight_profiles = store_int(st, "SELECT coalesce(sum(rows), 0) FROM batches WHERE state IN (?, ?, ?)", -1,
					  "ttt", S(BATCH_READY), S(BATCH_POSTING), S(BATCH_SUBMITTED));
	for (int i = 0; i < BATCH_STATE_COUNT; i++) {
		bool is_cheap = i == BATCH_READY || i == BATCH_POSTING || i == BATCH_SUBMITTED;
		if (is_cheap || with_all_states)
			c->batches[i] = store_int(st, "SELECT count(*) FROM batches WHERE state = ?", -1, "t",
						  S((enum batch_state)i));
	}
	c->echoes = store_int(st, "SELECT count(*) FROM echoes", -1, "");
	c->dead_letters = store_int(st, "SELECT count(*) FROM dead_letters", -1, "");
	bool failed = c->pending_profiles < 0 || c->in_flight_profiles < 0 || c->echoes < 0 || c->dead_letters < 0;
	for (int i = 0; i < BATCH_STATE_COUNT; i++)
		failed = failed || c->batches[i] < 0;
	return failed ? -EIO : 0;
}

static json_t *queue_batches_json_where(struct queue *q, int64_t limit, const enum batch_state *state, int64_t id);

int64_t queue_batch_of_seq(struct queue *q, int64_t seq)
{
	return store_int(q->st, "SELECT id FROM batches WHERE seq_hi >= ?1 AND seq_lo <= ?1 ORDER BY seq_hi - seq_lo, id"
				" LIMIT 1", 0, "i", seq);
}

const char *queue_row_result(struct queue *q, const char *profile, int64_t id)
{
	return store_int(q->st, "SELECT count(*) FROM row_results WHERE profile = ? AND batch_id = ?", 0, "ti", profile,
			 id) > 0 ? "failed" : NULL;
}

json_t *queue_batch_json(struct queue *q, int64_t id)
{
	json_t *arr = queue_batches_json_where(q, 1, NULL, id);
	json_t *o = json_incref(json_array_get(arr, 0));
	json_decref(arr);
	return o;
}

json_t *queue_batches_json(struct queue *q, int64_t limit, const enum batch_state *state)
{
	return queue_batches_json_where(q, limit, state, 0);
}

static json_t *queue_batches_json_where(struct queue *q, int64_t limit, const enum batch_state *state, int64_t id)
{
	sqlite3_stmt *s = store_prepare(q->st, "SELECT id, state, rows, bytes, attempts, created_at, sent_at, answered_at,"
					       " completed_at, target_batch_id, target_status, successful, not_found, failed,"
					       " http_status, last_error FROM batches WHERE (?2 IS NULL OR state = ?2)"
					       " AND (?3 = 0 OR id = ?3) ORDER BY id DESC LIMIT ?1", "iti", limit,
					state ? S(*state) : NULL, id);
	json_t *arr = s ? json_array() : NULL;
	int rc = SQLITE_DONE;
	while (arr && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		json_t *o = json_object();
		for (int i = 0; o && i < sqlite3_column_count(s); i++) {
			json_t *v;
			switch (sqlite3_column_type(s, i)) {
			case SQLITE_INTEGER:
				v = json_integer(sqlite3_column_int64(s, i));
				break;
			case SQLITE_NULL:
				v = json_null();
				break;
			default:
				v = json_stringn((const char *)sqlite3_column_text(s, i), (size_t)sqlite3_column_bytes(s, i));
				break;
			}
			json_object_set_new(o, sqlite3_column_name(s, i), v);
		}
		if (!o || json_array_append_new(arr, o) < 0)
			rc = SQLITE_NOMEM;
	}
	if (s && rc != SQLITE_DONE) {
		store_note_error(q->st);
		json_decref(arr);
		arr = NULL;
	}
	if (s)
		sqlite3_reset(s);
	return arr;
}
