/* SPDX-License-Identifier: MIT */
/* The delivery queue's SQL. A batch's header is the union of the attributes
 * its rows carry; a profile without one of them has an empty cell, which Target
 * reads as "no change". Sizes are computed exactly as they will be encoded, so
 * a batch never crosses max_bytes. Batch states are bound by name from
 * batch_state.c, never written as literals. */
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
	struct stage sg; /* re-stages latest values (echoes, stuck batches, dead letters) */
};

#define S(state) batch_state_name(state)

struct queue *queue_create(struct store *st)
{
	struct queue *q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	q->st = st;
	stage_init(&q->sg, st);
	return q;
}

void queue_destroy(struct queue *q)
{
	if (!q)
		return;
	stage_finish(&q->sg);
	free(q);
}

/* Ends a queue operation: commits when r is 0, else rolls back with the error
 * noted. Returns r, or -EIO when the commit fails. */
static int finish(struct queue *q, int r)
{
	if (r < 0) {
		store_abort(q->st);
		return r;
	}
	return store_commit(q->st);
}

static int set_state(struct store *st, int64_t id, enum batch_state state)
{
	return store_run(st, "UPDATE batches SET state = ?2 WHERE id = ?1", "it", id, S(state));
}

static int delete_rows(struct store *st, int64_t id)
{
	return store_run(st, "DELETE FROM batch_rows WHERE batch_id = ?", "i", id);
}

static int release_profiles(struct store *st, int64_t id)
{
	return store_run(st, "UPDATE profiles SET inflight = NULL, inflight_batch = NULL WHERE inflight_batch = ?", "i",
			 id);
}

/* Profiles that were in batch id's unanswered request get their latest values
 * sent once more at due (the earliest due wins when several are pending). */
static int add_echoes(struct store *st, int64_t id, int64_t due)
{
	return store_run(st, "INSERT INTO echoes (profile, due_at) SELECT profile, ?2 FROM batch_rows WHERE batch_id = ?1"
			     " ON CONFLICT (profile) DO UPDATE SET due_at = max(due_at, excluded.due_at)",
			 "ii", id, due);
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
	int r = store_run(st, "INSERT INTO echoes (profile, due_at) SELECT b.profile, c.sent_at + ?1 FROM batch_rows b"
			      " JOIN batches c ON c.id = b.batch_id WHERE c.state = ?2"
			      " ON CONFLICT (profile) DO UPDATE SET due_at = max(due_at, excluded.due_at)",
			  "it", echo_delay_ms, S(BATCH_POSTING));
	if (r == 0)
		r = store_run(st, "UPDATE batches SET state = ?1, next_attempt_at = 0,"
				  " last_error = 'answer never received (daemon stopped while sending)' WHERE state = ?2",
			      "tt", S(BATCH_READY), S(BATCH_POSTING));
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
	return store_int(q->st, "SELECT pending_since FROM profiles WHERE pending IS NOT NULL AND inflight_batch IS NULL"
				" AND pending_seq < ? ORDER BY pending_seq LIMIT 1", 0, "i", q->st->hold_from);
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

static void header_finish(struct header *h)
{
	free(h->ids);
	free(h->seen);
}

/* Encoded bytes of a row's content (id and values, without separators). */
static int64_t row_content(const char *profile, size_t len, const struct attrset *row)
{
	int64_t n = (int64_t)pctenc_encoded_len(profile, len);
	for (size_t i = 0; i < row->n; i++)
		n += (int64_t)pctenc_encoded_len(row->kv[i].val, row->kv[i].len);
	return n;
}

static int64_t body_size(const struct config *cfg, const struct header *h, int64_t rows, int64_t content)
{
	/* "batch=" + header line + each row: content, one comma per attribute, '\n'. */
	return 6 + (int64_t)strlen(id_header(cfg)) + h->encoded + 1 + content + rows * ((int64_t)h->n + 1);
}

/* A profile whose row alone is larger than a batch may be: its changed values
 * become dead letters and its pending set is dropped. */
static int dead_letter_profile(struct store *st, const char *profile, const struct attrset *changed,
			       const char *reason)
{
	for (size_t i = 0; i < changed->n; i++) {
		struct dead_letter dl = {
			.profile = profile, .profile_len = strlen(profile),
			.attr = store_attr_name(st, changed->kv[i].id),
			.value = changed->kv[i].val, .value_len = changed->kv[i].len, .reason = reason,
		};
		if (dead_letters_add(st, &dl) < 0)
			return -EIO;
	}
	return store_run(st, "UPDATE profiles SET pending = NULL, pending_seq = NULL, pending_since = NULL WHERE id = ?",
			 "t", profile);
}

/* Pending profiles in no request, oldest change first, up to the hold (a
 * snapshot being read is not sent until it is known to be whole). */
static const char SQL_PENDING[] = "SELECT id, accepted, pending FROM profiles"
				  " WHERE pending IS NOT NULL AND inflight_batch IS NULL AND pending_seq < ?1"
				  " ORDER BY pending_seq";

int64_t queue_build(struct queue *q, const struct config *cfg, int64_t max_rows)
{
	struct store *st = q->st;
	struct attrset accepted, pending, row;
	struct header h = { 0 };
	struct buf attrs_blob, changed_blob;
	int64_t id = 0, rows = 0, content = 0;
	int r = 0;

	attrset_init(&accepted);
	attrset_init(&pending);
	attrset_init(&row);
	buf_init(&attrs_blob);
	buf_init(&changed_blob);
	if (max_rows > cfg->batch.max_rows)
		max_rows = cfg->batch.max_rows;
	if (store_begin(st) < 0) {
		r = -EIO;
		goto out;
	}
	if (store_run(st, "INSERT INTO batches (state, created_at) VALUES (?, ?)", "ti", S(BATCH_READY),
		      clock_wall_ms()) < 0)
		goto db_error;
	id = sqlite3_last_insert_rowid(st->db);

	sqlite3_stmt *sel = store_prepare(st, SQL_PENDING, "i", st->hold_from);
	if (!sel)
		goto db_error;
	int rc;
	while (rows < max_rows && (rc = sqlite3_step(sel)) == SQLITE_ROW) {
		const char *profile = (const char *)sqlite3_column_text(sel, 0);
		size_t plen = (size_t)sqlite3_column_bytes(sel, 0);
		attrset_clear(&accepted);
		if (sqlite3_column_type(sel, 1) != SQLITE_NULL &&
		    attrset_decode(&accepted, sqlite3_column_blob(sel, 1), (size_t)sqlite3_column_bytes(sel, 1)) < 0)
			goto corrupt;
		if (attrset_decode(&pending, sqlite3_column_blob(sel, 2), (size_t)sqlite3_column_bytes(sel, 2)) < 0)
			goto corrupt;
		attrset_clear(&row);
		if (cfg->batch.rows == ROWS_FULL_PROFILE && attrset_overlay(&row, &accepted) < 0)
			goto nomem;
		if (attrset_overlay(&row, &pending) < 0)
			goto nomem;
		int64_t trial_encoded = h.encoded;
		size_t trial_n = h.n;
		for (size_t i = 0; i < row.n; i++)
			if (header_add(&h, st, row.kv[i].id) < 0)
				goto nomem;
		int64_t c = row_content(profile, plen, &row);
		if (body_size(cfg, &h, rows + 1, content + c) > cfg->batch.max_bytes) {
			/* Undo this row's header columns; it waits for the next batch. */
			for (size_t i = trial_n; i < h.n; i++)
				h.seen[h.ids[i]] = 0;
			h.n = trial_n;
			h.encoded = trial_encoded;
			if (rows == 0) {
				char *copy = strdup(profile);
				if (!copy)
					goto nomem;
				sqlite3_reset(sel);
				r = dead_letter_profile(st, copy, &pending, "profile row alone exceeds batch.max_bytes");
				free(copy);
				if (r < 0)
					goto db_error;
				if (!(sel = store_prepare(st, SQL_PENDING, "i", st->hold_from)))
					goto db_error;
				continue;
			}
			break;
		}
		buf_reset(&attrs_blob);
		buf_reset(&changed_blob);
		if (attrset_encode(&row, &attrs_blob) < 0 || attrset_encode(&pending, &changed_blob) < 0)
			goto nomem;
		if (store_run(st, "INSERT INTO batch_rows (batch_id, profile, attrs, changed) VALUES (?, ?, ?, ?)", "isbb",
			      id, profile, (int)plen, attrs_blob.data, (int)attrs_blob.len, changed_blob.data,
			      (int)changed_blob.len) < 0)
			goto db_error;
		rows++;
		content += c;
	}
	sqlite3_reset(sel);
	if (rows == 0) {
		store_rollback(st);
		id = 0;
		goto out;
	}
	if (store_run(st, "UPDATE profiles SET inflight = (SELECT attrs FROM batch_rows b WHERE b.batch_id = ?1"
			  " AND b.profile = profiles.id), inflight_batch = ?1, pending = NULL, pending_seq = NULL,"
			  " pending_since = NULL WHERE id IN (SELECT profile FROM batch_rows WHERE batch_id = ?1)",
		      "i", id) < 0)
		goto db_error;
	/* The header: its attribute ids as varints, ascending, which is the order of
	 * the body's columns (body_writer_init sorts again, for batches stored
	 * before the order was fixed). */
	qsort(h.ids, h.n, sizeof(*h.ids), cmp_id);
	buf_reset(&attrs_blob);
	for (size_t i = 0; i < h.n; i++)
		if (attrset_put_varint(&attrs_blob, h.ids[i]) < 0)
			goto nomem;
	if (store_run(st, "UPDATE batches SET rows = ?2, bytes = ?3, header = ?4 WHERE id = ?1", "iiib", id, rows,
		      body_size(cfg, &h, rows, content), attrs_blob.data, (int)attrs_blob.len) < 0)
		goto db_error;
	if (store_commit(st) < 0)
		r = -EIO;
	goto out;

corrupt:
	r = -EINVAL;
	goto rollback;
nomem:
	r = -ENOMEM;
	goto rollback;
db_error:
	r = -EIO;
rollback:
	store_abort(st);
out:
	attrset_finish(&accepted);
	attrset_finish(&pending);
	attrset_finish(&row);
	buf_finish(&attrs_blob);
	buf_finish(&changed_blob);
	header_finish(&h);
	return r < 0 ? r : id;
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

int64_t queue_write_body(struct queue *q, const struct config *cfg, int64_t id, int fd)
{
	struct store *st = q->st;
	uint32_t *ids = NULL;
	size_t n = 0;
	struct body_writer w;
	int r = queue_header_ids(q, id, &ids, &n);
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
	sqlite3_stmt *s = r == 0 ? store_prepare(st, "SELECT profile, attrs FROM batch_rows WHERE batch_id = ?"
						     " ORDER BY profile", "i", id) : NULL;
	if (r == 0 && !s)
		r = -EIO;
	if (r == 0) {
		int rc;
		while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
			r = body_writer_row(&w, (const char *)sqlite3_column_text(s, 0), (size_t)sqlite3_column_bytes(s, 0),
					    sqlite3_column_blob(s, 1), (size_t)sqlite3_column_bytes(s, 1));
			if (r == 0)
				r = body_writer_flush(&w, BODY_WRITER_CHUNK);
			if (r < 0)
				break;
		}
		if (r == 0 && rc != SQLITE_DONE) {
			store_note_error(st);
			r = -EIO;
		}
		sqlite3_reset(s);
		if (r == 0)
			r = body_writer_flush(&w, 0);
	}
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

/* The values batch id carried become the mirror and leave in-flight. */
static int accept_values(struct store *st, int64_t id)
{
	struct attrset accepted, sent;
	struct buf blob;
	int r = 0, rc;
	sqlite3_stmt *rows = store_prepare(st, "SELECT b.profile, b.attrs, p.accepted FROM batch_rows b"
					       " JOIN profiles p ON p.id = b.profile WHERE b.batch_id = ?", "i", id);
	if (!rows)
		return -EIO;
	attrset_init(&accepted);
	attrset_init(&sent);
	buf_init(&blob);
	while ((rc = sqlite3_step(rows)) == SQLITE_ROW) {
		attrset_clear(&accepted);
		if (sqlite3_column_type(rows, 2) != SQLITE_NULL &&
		    attrset_decode(&accepted, sqlite3_column_blob(rows, 2), (size_t)sqlite3_column_bytes(rows, 2)) < 0) {
			r = -EINVAL;
			break;
		}
		if (attrset_decode(&sent, sqlite3_column_blob(rows, 1), (size_t)sqlite3_column_bytes(rows, 1)) < 0) {
			r = -EINVAL;
			break;
		}
		buf_reset(&blob);
		if (attrset_overlay(&accepted, &sent) < 0 || attrset_encode(&accepted, &blob) < 0) {
			r = -ENOMEM;
			break;
		}
		r = store_run(st, "UPDATE profiles SET accepted = ?2,"
				  " inflight = CASE WHEN inflight_batch = ?3 THEN NULL ELSE inflight END,"
				  " inflight_batch = CASE WHEN inflight_batch = ?3 THEN NULL ELSE inflight_batch END"
				  " WHERE id = ?1", "tbi", (const char *)sqlite3_column_text(rows, 0), blob.data,
			      (int)blob.len, id);
		if (r < 0)
			break;
	}
	if (r == 0 && rc != SQLITE_DONE) {
		store_note_error(st);
		r = -EIO;
	}
	sqlite3_reset(rows);
	attrset_finish(&accepted);
	attrset_finish(&sent);
	buf_finish(&blob);
	return r;
}

int queue_accept(struct queue *q, int64_t id, const char *status_url, const char *target_batch_id,
		 int64_t next_poll_at)
{
	struct store *st = q->st;
	int64_t now = clock_wall_ms();
	if (store_begin(st) < 0)
		return -EIO;
	int r = accept_values(st, id);
	/* Without a status URL there is nothing to poll: the submission is all we get. */
	if (r == 0)
		r = store_run(st, "UPDATE batches SET state = ?2, answered_at = ?3, http_status = 200, status_url = ?4,"
				  " target_batch_id = ?5, next_poll_at = ?6, last_error = NULL, completed_at = ?7"
				  " WHERE id = ?1", "itittiz", id,
			      S(status_url ? BATCH_SUBMITTED : BATCH_COMPLETE), now, status_url, target_batch_id,
			      next_poll_at, status_url ? (int64_t)0 : now);
	if (r == 0 && !status_url)
		r = delete_rows(st, id);
	return finish(q, r);
}

int queue_retry(struct queue *q, int64_t id, int64_t next_at, long http, const char *why, int64_t failures,
		int64_t echo_due)
{
	struct store *st = q->st;
	if (store_begin(st) < 0)
		return -EIO;
	int r = echo_due > 0 ? add_echoes(st, id, echo_due) : 0;
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

/* Dead-letters batch id inside the caller's transaction. */
static int kill_batch(struct store *st, int64_t id, const char *reason, const char *answer)
{
	int64_t attempts = store_int(st, "SELECT attempts FROM batches WHERE id = ?", 0, "i", id);
	sqlite3_stmt *rows = store_prepare(st, "SELECT profile, changed FROM batch_rows WHERE batch_id = ?", "i", id);
	if (!rows)
		return -EIO;
	struct attrset changed;
	int r = 0, rc;
	attrset_init(&changed);
	while (r == 0 && (rc = sqlite3_step(rows)) == SQLITE_ROW) {
		if (attrset_decode(&changed, sqlite3_column_blob(rows, 1), (size_t)sqlite3_column_bytes(rows, 1)) < 0) {
			r = -EINVAL;
			break;
		}
		for (size_t i = 0; i < changed.n && r == 0; i++) {
			struct dead_letter dl = {
				.profile = (const char *)sqlite3_column_text(rows, 0),
				.profile_len = (size_t)sqlite3_column_bytes(rows, 0),
				.attr = store_attr_name(st, changed.kv[i].id),
				.value = changed.kv[i].val, .value_len = changed.kv[i].len,
				.batch_id = id, .reason = reason, .attempts = attempts, .last_answer = answer,
			};
			r = dead_letters_add(st, &dl);
		}
	}
	if (r == 0 && rc != SQLITE_DONE) {
		store_note_error(st);
		r = -EIO;
	}
	sqlite3_reset(rows);
	attrset_finish(&changed);
	if (r == 0)
		r = release_profiles(st, id);
	if (r == 0)
		r = delete_rows(st, id);
	if (r == 0)
		r = store_run(st, "UPDATE batches SET state = ?2, last_error = ?3 WHERE id = ?1", "itt", id, S(BATCH_DEAD),
			      reason);
	return r;
}

int queue_kill(struct queue *q, int64_t id, const char *reason, const char *answer, int64_t echo_due)
{
	if (store_begin(q->st) < 0)
		return -EIO;
	int r = echo_due > 0 ? add_echoes(q->st, id, echo_due) : 0;
	if (r == 0)
		r = kill_batch(q->st, id, reason, answer);
	return finish(q, r);
}

/* Creates a ready batch that inherits header and created_at from batch from,
 * linked to requeue_of (0: none). Returns its id or -EIO. */
static int64_t new_batch_like(struct store *st, int64_t from, int64_t requeue_of)
{
	if (store_run(st, "INSERT INTO batches (state, created_at, header, requeue_of)"
			  " SELECT ?3, created_at, header, ?2 FROM batches WHERE id = ?1", "izt", from, requeue_of,
		      S(BATCH_READY)) < 0)
		return -EIO;
	return sqlite3_last_insert_rowid(st->db);
}

int queue_split(struct queue *q, int64_t id)
{
	struct store *st = q->st;
	if (store_begin(st) < 0)
		return -EIO;
	int64_t rows = store_int(st, "SELECT count(*) FROM batch_rows WHERE batch_id = ?", 0, "i", id);
	if (rows < 2) {
		store_rollback(st);
		return -E2BIG;
	}
	/* First half (by profile order) to the first new batch, the rest to the second. */
	static const char *const moves[2] = {
		"UPDATE batch_rows SET batch_id = ?2 WHERE batch_id = ?1 AND profile IN"
		" (SELECT profile FROM batch_rows WHERE batch_id = ?1 ORDER BY profile LIMIT ?3)",
		"UPDATE batch_rows SET batch_id = ?2 WHERE batch_id = ?1",
	};
	int r = 0;
	for (int h = 0; h < 2 && r == 0; h++) {
		int64_t half = new_batch_like(st, id, 0);
		if (half < 0)
			r = (int)half;
		if (r == 0)
			r = store_run(st, moves[h], h == 0 ? "iii" : "ii", id, half, rows / 2);
		if (r == 0)
			r = store_run(st, "UPDATE profiles SET inflight_batch = ?2 WHERE inflight_batch = ?1 AND id IN"
					  " (SELECT profile FROM batch_rows WHERE batch_id = ?2)", "ii", id, half);
		if (r == 0)
			r = store_run(st, "UPDATE batches SET rows = (SELECT count(*) FROM batch_rows WHERE batch_id = ?1),"
					  " bytes = 0 WHERE id = ?1", "i", half);
	}
	if (r == 0)
		r = set_state(st, id, BATCH_SPLIT);
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
	int64_t batch_id;
	int64_t max_failures;
	struct queue_row_results *res;
	struct buf attrs, changed, accepted_blob;
	struct attrset row, accepted, changed_set;
};

/* Removes from profile's accepted values (the mirror) those equal to what the
 * failed row carried: Target did not take them, so the mirror must not claim
 * it did (a later change back to such a value is then sent again). */
static int forget_failed_values(struct completion *c, const char *profile, size_t len)
{
	struct store *st = c->q->st;
	sqlite3_stmt *s = store_prepare(st, "SELECT accepted FROM profiles WHERE id = ?", "s", profile, (int)len);
	if (!s)
		return -EIO;
	int rc = sqlite3_step(s);
	buf_reset(&c->accepted_blob);
	if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL &&
	    buf_append(&c->accepted_blob, sqlite3_column_blob(s, 0), (size_t)sqlite3_column_bytes(s, 0)) < 0)
		rc = SQLITE_NOMEM;
	sqlite3_reset(s);
	if (rc != SQLITE_ROW)
		return rc == SQLITE_DONE ? 0 : rc == SQLITE_NOMEM ? -ENOMEM : -EIO;
	if (attrset_decode(&c->accepted, c->accepted_blob.data, c->accepted_blob.len) < 0)
		return -EINVAL;
	bool changed = false;
	for (size_t i = 0; i < c->row.n; i++) {
		const struct attr_kv *kv = &c->row.kv[i];
		if (attr_kv_equals(attrset_get(&c->accepted, kv->id), kv->val, kv->len)) {
			attrset_del(&c->accepted, kv->id);
			changed = true;
		}
	}
	if (!changed)
		return 0;
	struct buf blob;
	buf_init(&blob);
	int r = attrset_encode(&c->accepted, &blob);
	if (r == 0)
		r = store_run(st, "UPDATE profiles SET accepted = ?2 WHERE id = ?1", "sb", profile, (int)len, blob.data,
			      (int)blob.len);
	buf_finish(&blob);
	return r;
}

/* Target reported profile's row of the batch failed: its latest values go
 * back to the queue, or, after max_failures failures in a row, its changed
 * values become dead letters naming Target's verdict. */
static int row_failed(void *arg, const char *profile, size_t len)
{
	struct completion *c = arg;
	struct store *st = c->q->st;
	sqlite3_stmt *s = store_prepare(st, "SELECT attrs, changed, failed FROM batch_rows WHERE batch_id = ? AND profile = ?",
					"is", c->batch_id, profile, (int)len);
	if (!s)
		return -EIO;
	int rc = sqlite3_step(s);
	bool already = rc == SQLITE_ROW && sqlite3_column_int64(s, 2) != 0;
	buf_reset(&c->attrs);
	buf_reset(&c->changed);
	if (rc == SQLITE_ROW && !already &&
	    (buf_append(&c->attrs, sqlite3_column_blob(s, 0), (size_t)sqlite3_column_bytes(s, 0)) < 0 ||
	     buf_append(&c->changed, sqlite3_column_blob(s, 1), (size_t)sqlite3_column_bytes(s, 1)) < 0))
		rc = SQLITE_NOMEM;
	sqlite3_reset(s);
	if (rc == SQLITE_DONE || already) {
		c->res->unknown += rc == SQLITE_DONE;
		return 0; /* not in this batch, or listed twice */
	}
	if (rc != SQLITE_ROW)
		return rc == SQLITE_NOMEM ? -ENOMEM : -EIO;
	if (attrset_decode(&c->row, c->attrs.data, c->attrs.len) < 0 ||
	    attrset_decode(&c->changed_set, c->changed.data, c->changed.len) < 0)
		return -EINVAL;
	int r = store_run(st, "UPDATE batch_rows SET failed = 1 WHERE batch_id = ? AND profile = ?", "is", c->batch_id,
			  profile, (int)len);
	int64_t failures = store_int(st, "SELECT failures FROM row_failures WHERE profile = ?", 0, "s", profile, (int)len) + 1;
	char *id = strndup(profile, len);
	if (!id)
		return -ENOMEM;
	if (r == 0 && failures >= c->max_failures) {
		char reason[256];
		snprintf(reason, sizeof(reason), "Target reported this profile's row failed %lld times in a row (batch %lld)",
			 (long long)failures, (long long)c->batch_id);
		for (size_t i = 0; r == 0 && i < c->changed_set.n; i++) {
			struct dead_letter dl = {
				.profile = id, .profile_len = len, .attr = store_attr_name(st, c->changed_set.kv[i].id),
				.value = c->changed_set.kv[i].val, .value_len = c->changed_set.kv[i].len,
				.batch_id = c->batch_id, .reason = reason, .attempts = failures,
				.last_answer = "<status>failed</status>",
			};
			r = dead_letters_add(st, &dl);
		}
		if (r == 0)
			r = store_run(st, "DELETE FROM row_failures WHERE profile = ?", "s", profile, (int)len);
		c->res->dead++;
	} else if (r == 0) {
		/* Before the mirror forgets them: the latest values may be these. */
		r = stage_refresh(&c->q->sg, id, &c->row);
		if (r == 0)
			r = store_run(st, "INSERT INTO row_failures (profile, failures, batch_id, at) VALUES (?1, ?2, ?3, ?4)"
					  " ON CONFLICT (profile) DO UPDATE SET failures = excluded.failures,"
					  " batch_id = excluded.batch_id, at = excluded.at",
				      "siii", profile, (int)len, failures, c->batch_id, clock_wall_ms());
		c->res->requeued++;
	}
	if (r == 0)
		r = forget_failed_values(c, profile, len);
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
	struct completion c = { .q = q, .batch_id = id, .max_failures = max_failures, .res = res };
	buf_init(&c.attrs);
	buf_init(&c.changed);
	buf_init(&c.accepted_blob);
	attrset_init(&c.row);
	attrset_init(&c.accepted);
	attrset_init(&c.changed_set);
	int r = feed ? feed(arg, row_failed, &c) : 0;
	/* A profile whose row went through ends its run of failures. */
	if (r == 0 && store_int(st, "SELECT count(*) FROM row_failures", 0, "") > 0)
		r = store_run(st, "DELETE FROM row_failures WHERE profile IN"
				  " (SELECT profile FROM batch_rows WHERE batch_id = ? AND failed = 0)", "i", id);
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
	if (r == 0)
		r = delete_rows(st, id);
	buf_finish(&c.attrs);
	buf_finish(&c.changed);
	buf_finish(&c.accepted_blob);
	attrset_finish(&c.row);
	attrset_finish(&c.accepted);
	attrset_finish(&c.changed_set);
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
	*profiles = 0;
	if (store_begin(st) < 0)
		return -EIO;
	sqlite3_stmt *rows = store_prepare(st, "SELECT profile, attrs FROM batch_rows WHERE batch_id = ?", "i", id);
	int r = rows ? 0 : -EIO;
	if (rows) {
		struct attrset ids;
		attrset_init(&ids);
		int rc = SQLITE_DONE;
		while (r == 0 && (rc = sqlite3_step(rows)) == SQLITE_ROW) {
			if (attrset_decode(&ids, sqlite3_column_blob(rows, 1), (size_t)sqlite3_column_bytes(rows, 1)) < 0)
				r = -EINVAL;
			else
				r = stage_refresh(&q->sg, (const char *)sqlite3_column_text(rows, 0), &ids);
			(*profiles)++;
		}
		if (r == 0 && rc != SQLITE_DONE) {
			store_note_error(st);
			r = -EIO;
		}
		sqlite3_reset(rows);
		attrset_finish(&ids);
	}
	if (r == 0)
		r = delete_rows(st, id);
	if (r == 0)
		r = store_run(st, "UPDATE batches SET state = ?2, last_error = ?3 WHERE id = ?1", "itt", id,
			      S(BATCH_UNCONFIRMED), why);
	return finish(q, r);
}

int queue_requeue_stuck(struct queue *q, int64_t id)
{
	struct store *st = q->st;
	if (store_begin(st) < 0)
		return -EIO;
	int64_t requeue_of = store_int(st, "SELECT requeue_of FROM batches WHERE id = ?", 0, "i", id);
	if (requeue_of) {
		int r = kill_batch(st, id, "Target reported the batch stuck again after a re-queue", "stuck");
		if (r == 0)
			r = store_run(st, "UPDATE batches SET target_status = 'stuck' WHERE id = ?", "i", id);
		return finish(q, r);
	}
	/* Profiles in no newer request are sent again as a re-queue batch (linked by
	 * requeue_of, so a second "stuck" is final). The others already have newer
	 * work queued: their latest values are staged so they are repeated too. */
	int64_t again = new_batch_like(st, id, id);
	int r = again < 0 ? (int)again : 0;
	static const char *const steps[] = {
		"INSERT INTO batch_rows (batch_id, profile, attrs, changed) SELECT ?2, b.profile, b.attrs, b.changed"
		" FROM batch_rows b JOIN profiles p ON p.id = b.profile"
		" WHERE b.batch_id = ?1 AND p.inflight_batch IS NULL AND p.pending IS NULL",
		"UPDATE profiles SET inflight = (SELECT attrs FROM batch_rows b WHERE b.batch_id = ?2"
		" AND b.profile = profiles.id), inflight_batch = ?2"
		" WHERE id IN (SELECT profile FROM batch_rows WHERE batch_id = ?2)",
		"UPDATE batches SET rows = (SELECT count(*) FROM batch_rows WHERE batch_id = ?2) WHERE id = ?2",
		"DELETE FROM batches WHERE id = ?2 AND rows = 0",
	};
	for (size_t i = 0; r == 0 && i < sizeof(steps) / sizeof(steps[0]); i++)
		r = store_run(st, steps[i], "ii", id, again);
	sqlite3_stmt *rows = r == 0 ? store_prepare(st, "SELECT b.profile, b.changed FROM batch_rows b JOIN profiles p"
							 " ON p.id = b.profile WHERE b.batch_id = ?1 AND p.inflight_batch IS NOT ?2",
						     "ii", id, again) : NULL;
	if (r == 0 && !rows)
		r = -EIO;
	if (rows) {
		struct attrset changed;
		attrset_init(&changed);
		int rc = SQLITE_DONE;
		while (r == 0 && (rc = sqlite3_step(rows)) == SQLITE_ROW) {
			if (attrset_decode(&changed, sqlite3_column_blob(rows, 1), (size_t)sqlite3_column_bytes(rows, 1)) < 0)
				r = -EINVAL;
			else
				r = stage_refresh(&q->sg, (const char *)sqlite3_column_text(rows, 0), &changed);
		}
		if (r == 0 && rc != SQLITE_DONE) {
			store_note_error(st);
			r = -EIO;
		}
		sqlite3_reset(rows);
		attrset_finish(&changed);
	}
	if (r == 0)
		r = delete_rows(st, id);
	if (r == 0)
		r = store_run(st, "UPDATE batches SET state = ?2, target_status = 'stuck' WHERE id = ?1", "it", id,
			      S(BATCH_STUCK));
	return finish(q, r);
}

/* --- echoes ------------------------------------------------------------------------ */

int queue_run_echoes(struct queue *q, int64_t now, int *n, int64_t *next_at)
{
	struct store *st = q->st;
	*n = 0;
	*next_at = store_int(st, "SELECT min(due_at) FROM echoes", 0, "");
	if (*next_at == 0 || *next_at > now)
		return 0;
	if (store_begin(st) < 0)
		return -EIO;
	sqlite3_stmt *sel = store_prepare(st, "SELECT e.profile, p.accepted FROM echoes e JOIN profiles p ON p.id = e.profile"
					      " WHERE e.due_at <= ?1 AND p.inflight_batch IS NULL LIMIT ?2",
					  "ii", now, (int64_t)ECHOES_PER_ROUND);
	if (!sel)
		return finish(q, -EIO);
	struct attrset ids;
	attrset_init(&ids);
	int r = 0, rc;
	while (r == 0 && (rc = sqlite3_step(sel)) == SQLITE_ROW) {
		const char *profile = (const char *)sqlite3_column_text(sel, 0);
		attrset_clear(&ids);
		if (sqlite3_column_type(sel, 1) != SQLITE_NULL &&
		    attrset_decode(&ids, sqlite3_column_blob(sel, 1), (size_t)sqlite3_column_bytes(sel, 1)) < 0)
			attrset_clear(&ids);
		r = stage_refresh(&q->sg, profile, &ids);
		if (r == 0)
			r = store_run(st, "DELETE FROM echoes WHERE profile = ?", "t", profile);
		(*n)++;
	}
	if (r == 0 && rc != SQLITE_DONE) {
		store_note_error(st);
		r = -EIO;
	}
	sqlite3_reset(sel);
	attrset_finish(&ids);
	if ((r = finish(q, r)) < 0)
		return r;
	/* Echoes of profiles still in flight wait for that request's answer (which
	 * wakes the sender); others due now were beyond this round's limit and are
	 * taken at once. */
	int64_t next = store_int(st, "SELECT min(e.due_at) FROM echoes e JOIN profiles p ON p.id = e.profile"
				     " WHERE p.inflight_batch IS NULL", 0, "");
	*next_at = next ? (next > now ? next : now + 1) : 0;
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
		r = stage_restore(&q->sg, profile, &one);
	attrset_finish(&one);
	return r;
}

int queue_retry_dead(struct queue *q, const int64_t *ids, size_t n, int64_t *count)
{
	if (store_begin(q->st) < 0)
		return -EIO;
	return finish(q, dead_letters_take(q->st, ids, n, restore_one, q, count));
}

/* --- reporting ------------------------------------------------------------------------ */

int queue_counts(struct queue *q, bool with_all_states, struct queue_counts *c)
{
	struct store *st = q->st;
	memset(c, 0, sizeof(*c));
	c->pending_profiles = store_int(st, "SELECT count(*) FROM profiles WHERE pending IS NOT NULL", -1, "");
	c->oldest_pending_at = store_int(st, "SELECT min(pending_since) FROM profiles WHERE pending IS NOT NULL", 0, "");
	for (int i = 0; i < BATCH_STATE_COUNT; i++) {
		bool is_cheap = i == BATCH_READY || i == BATCH_POSTING || i == BATCH_SUBMITTED;
		if (is_cheap || with_all_states)
			c->batches[i] = store_int(st, "SELECT count(*) FROM batches WHERE state = ?", -1, "t",
						  S((enum batch_state)i));
	}
	c->echoes = store_int(st, "SELECT count(*) FROM echoes", -1, "");
	c->dead_letters = store_int(st, "SELECT count(*) FROM dead_letters", -1, "");
	bool failed = c->pending_profiles < 0 || c->echoes < 0 || c->dead_letters < 0;
	for (int i = 0; i < BATCH_STATE_COUNT; i++)
		failed = failed || c->batches[i] < 0;
	return failed ? -EIO : 0;
}

json_t *queue_batches_json(struct queue *q, int64_t limit, const enum batch_state *state)
{
	sqlite3_stmt *s = store_prepare(q->st, "SELECT id, state, rows, bytes, attempts, created_at, sent_at, answered_at,"
					       " completed_at, target_batch_id, target_status, successful, not_found, failed,"
					       " http_status, last_error FROM batches WHERE ?2 IS NULL OR state = ?2"
					       " ORDER BY id DESC LIMIT ?1", "it", limit, state ? S(*state) : NULL);
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
