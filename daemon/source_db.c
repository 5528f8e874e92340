/* SPDX-License-Identifier: MIT */
/* What the database sources (SQLite and PostgreSQL) share: mapping a result's
 * columns to attributes, staging one row with the same checks and rejections,
 * and the read position kept in source_state. */
#include "source.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "crash.h"
#include "log.h"
#include "target.h"

void source_db_note(struct source *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->stats.last_error, sizeof(s->stats.last_error), fmt, ap);
	va_end(ap);
	s->stats.is_row_error = false;
}

void source_db_map_init(struct source_db_map *m, struct store *st)
{
	memset(m, 0, sizeof(*m));
	m->id_col = m->cursor_col = -1;
	stage_init(&m->sg, st);
	attrset_init(&m->incoming);
}

void source_db_map_reset(struct source_db_map *m)
{
	free(m->col_attr);
	m->col_attr = NULL;
	m->n_cols = 0;
	m->id_col = m->cursor_col = -1;
}

void source_db_map_finish(struct source_db_map *m)
{
	source_db_map_reset(m);
	stage_finish(&m->sg);
	attrset_finish(&m->incoming);
}

int source_db_map_build(struct source *s, struct source_db_map *m, int n, const char *(*name)(void *res, int c),
			void *res)
{
	const struct source_config *cfg = s->cfg;
	source_db_map_reset(m);
	m->col_attr = calloc((size_t)n + 1, sizeof(*m->col_attr));
	if (!m->col_attr) {
		source_db_note(s, "out of memory");
		return -ENOMEM;
	}
	m->n_cols = n;
	for (int c = 0; c < n; c++) {
		const char *col = name(res, c);
		if (strcmp(col, cfg->id_column) == 0)
			m->id_col = c;
		if (strcmp(col, cfg->cursor_column) == 0)
			m->cursor_col = c;
		if (c == m->id_col)
			continue;
		const char *attr = config_column_attr(cfg, col);
		if (!attr)
			continue;
		if (!target_attr_name_valid(attr, strlen(attr))) {
			source_db_note(s, "column \"%.64s\" is not a valid attribute name; rename it with columns: or exclude it",
				attr);
			return -EINVAL;
		}
		int64_t id = store_attr_id(s->env->st, attr, strlen(attr));
		if (id < 0) {
			source_db_note(s, "cannot record attribute name");
			return -EIO;
		}
		m->col_attr[c] = (uint32_t)id;
	}
	if (m->id_col < 0 || m->cursor_col < 0) {
		source_db_note(s, "the query's result has no column \"%s\"", m->id_col < 0 ? cfg->id_column : cfg->cursor_column);
		return -EINVAL;
	}
	return 0;
}

int source_db_stage_row(struct source *s, struct source_db_map *m, const char *id, size_t id_len, const char *position,
			const char *why)
{
	s->stats.rows_read++;
	if (!why)
		why = target_profile_id_problem(id, id_len);
	if (!why) {
		struct stage_origin origin = { .position = position };
		int r = stage_profile(&m->sg, id, id_len, &m->incoming, s->cfg->name, &origin, NULL);
		why = stage_refusal(r);
		if (!why && r < 0)
			return r;
		else if (r > 0)
			s->stats.rows_staged++;
	}
	if (why) {
		s->stats.rows_rejected++;
		source_db_note(s, "row with id \"%.64s\" rejected: %s", id ? id : "", why);
		s->stats.is_row_error = true;
		log_warn("msg=\"row rejected\" source=%s id=\"%.64s\" reason=\"%s\"", s->cfg->name, id ? id : "", why);
	}
	return 0;
}

sqlite3_stmt *source_db_position_load(struct source *s)
{
	sqlite3_stmt *q = store_stmt(s->env->st, "SELECT cursor, last_id FROM source_state WHERE source = ?");
	if (!q)
		return NULL;
	sqlite3_bind_text(q, 1, s->cfg->name, -1, SQLITE_STATIC);
	return q;
}

sqlite3_stmt *source_db_position_stmt(struct source *s)
{
	sqlite3_stmt *u = store_stmt(s->env->st, "INSERT INTO source_state (source, cursor, last_id, updated_at)"
					       " VALUES (?1, ?2, ?3, ?4) ON CONFLICT (source) DO UPDATE SET"
					       " cursor = excluded.cursor, last_id = excluded.last_id, updated_at = excluded.updated_at");
	if (!u)
		return NULL;
	sqlite3_bind_text(u, 1, s->cfg->name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(u, 4, clock_wall_ms());
	return u;
}

int source_db_position_save(struct source *s, sqlite3_stmt *u)
{
	int rc = sqlite3_step(u);
	if (rc != SQLITE_DONE)
		store_note_error(s->env->st);
	sqlite3_reset(u);
	sqlite3_clear_bindings(u);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

void source_db_note_position(struct source *s, const char *cursor, const char *id)
{
	snprintf(s->stats.last_file, sizeof(s->stats.last_file), "%s=%.96s %s=%.64s", s->cfg->cursor_column, cursor,
		 s->cfg->id_column, id);
	s->stats.last_file_at = clock_wall_ms();
}

int source_db_slice_begin(struct source *s)
{
	struct store *st = s->env->st;
	/* A slice is re-read from the source if it is lost, so it needs no fsync of
	 * its own; the position commits with its rows either way. */
	if (store_exec(st, "PRAGMA synchronous=NORMAL") < 0 || store_begin(st) < 0) {
		store_die_on_io_error(st);
		store_exec(st, "PRAGMA synchronous=FULL");
		return -EIO;
	}
	return 0;
}

int source_db_slice_end(struct source *s, int r, int rows)
{
	struct store *st = s->env->st;
	if (r == 0 && rows > 0)
		crash_point("before-db-commit"); /* rows staged, position not yet committed */
	if (r == 0 && store_commit(st) < 0)
		r = -EIO;
	if (r < 0) {
		store_die_on_io_error(st);
		store_rollback(st);
	}
	store_exec(st, "PRAGMA synchronous=FULL");
	if (r == 0 && rows > 0) {
		crash_point("after-db-slice");
		source_progress(s);
	}
	return r;
}
