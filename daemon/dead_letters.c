/* SPDX-License-Identifier: MIT */
/* The dead_letters table. */
#include "dead_letters.h"

#include <errno.h>
#include <string.h>

#include "clock.h"

/* Whether there are dead letters at all: staging asks for every changed
 * profile, and a table that is nearly always empty should cost nothing. */
static bool any(struct store *st)
{
	if (st->has_dead_letters < 0)
		st->has_dead_letters = store_int(st, "SELECT count(*) FROM dead_letters", 0, "") > 0;
	return st->has_dead_letters > 0;
}

int dead_letters_add(struct store *st, const struct dead_letter *dl)
{
	st->has_dead_letters = 1;
	return store_run(st, "INSERT INTO dead_letters (profile, attr, value, batch_id, reason, attempts, last_answer,"
			     " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", "stsztiti",
			 dl->profile, (int)dl->profile_len, dl->attr, dl->value, (int)dl->value_len, dl->batch_id,
			 dl->reason, dl->attempts, dl->last_answer, clock_wall_ms());
}

int dead_letters_supersede(struct store *st, const char *profile, size_t len, const struct attrset *incoming)
{
	if (!any(st))
		return 0;
	for (size_t i = 0; i < incoming->n; i++)
		if (store_run(st, "DELETE FROM dead_letters WHERE profile = ? AND attr = ?", "st", profile, (int)len,
			      store_attr_name(st, incoming->kv[i].id)) < 0)
			return -EIO;
	return 0;
}

int64_t dead_letters_count(struct store *st)
{
	return store_int(st, "SELECT count(*) FROM dead_letters", 0, "");
}

static json_t *column_json(sqlite3_stmt *s, int i)
{
	switch (sqlite3_column_type(s, i)) {
	case SQLITE_INTEGER:
		return json_integer(sqlite3_column_int64(s, i));
	case SQLITE_NULL:
		return json_null();
	default:
		return json_stringn((const char *)sqlite3_column_text(s, i), (size_t)sqlite3_column_bytes(s, i));
	}
}

json_t *dead_letters_list(struct store *st, int64_t limit)
{
	return dead_letters_of(st, NULL, limit);
}

json_t *dead_letters_of(struct store *st, const char *profile, int64_t limit)
{
	sqlite3_stmt *s = store_prepare(st, "SELECT id, profile, attr, value, batch_id, reason, attempts, last_answer,"
					    " created_at FROM dead_letters WHERE ?2 IS NULL OR profile = ?2"
					    " ORDER BY id DESC LIMIT ?1", "it", limit, profile);
	json_t *arr = s ? json_array() : NULL;
	int rc = SQLITE_DONE;
	while (arr && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		json_t *o = json_object();
		for (int i = 0; o && i < sqlite3_column_count(s); i++)
			json_object_set_new(o, sqlite3_column_name(s, i), column_json(s, i));
		if (!o || json_array_append_new(arr, o) < 0)
			rc = SQLITE_NOMEM;
	}
	if (s && rc != SQLITE_DONE) {
		store_note_error(st);
		json_decref(arr);
		arr = NULL;
	}
	if (s)
		sqlite3_reset(s);
	return arr;
}

static bool wanted(const int64_t *ids, size_t n, int64_t id)
{
	if (!ids)
		return true;
	for (size_t i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

int dead_letters_take(struct store *st, const int64_t *ids, size_t n,
		      int (*each)(void *arg, const char *profile, const char *attr, const char *value, size_t len),
		      void *arg, int64_t *taken)
{
	*taken = 0;
	sqlite3_stmt *q = store_prepare(st, "SELECT id, profile, attr, value FROM dead_letters ORDER BY id", "");
	if (!q)
		return -EIO;
	int r = 0, rc;
	while (r == 0 && (rc = sqlite3_step(q)) == SQLITE_ROW) {
		int64_t id = sqlite3_column_int64(q, 0);
		if (!wanted(ids, n, id))
			continue;
		r = each(arg, (const char *)sqlite3_column_text(q, 1), (const char *)sqlite3_column_text(q, 2),
			 (const char *)sqlite3_column_text(q, 3), (size_t)sqlite3_column_bytes(q, 3));
		if (r == 0)
			r = store_run(st, "DELETE FROM dead_letters WHERE id = ?", "i", id);
		if (r == 0)
			(*taken)++;
	}
	if (r == 0 && rc != SQLITE_DONE) {
		store_note_error(st);
		r = -EIO;
	}
	sqlite3_reset(q);
	st->has_dead_letters = -1;
	return r;
}
