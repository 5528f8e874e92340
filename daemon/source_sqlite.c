/* SPDX-License-Identifier: MIT */
/* SQLite database sources: a table or query owned by another program, mirrored
 * incrementally. The user's query (with :cursor) is wrapped so that rows come in
 * (cursor, id) order after the last (cursor, id) read, LIMIT a slice; each slice is
 * staged and the new (cursor, id) recorded in one state transaction, so a crash
 * never skips or repeats rows, and ties on the cursor value lose nothing. The
 * source database is opened read-only and only read for one slice at a time, with
 * no busy wait: a writer holding a lock makes us retry shortly, never wait.
 * Changes are noticed through inotify on the database, its WAL and its journal,
 * with a poll every `poll` as the fallback.
 *
 * Values become attribute strings one way: INTEGER as decimal, REAL as the
 * shortest decimal that reads back the same, TEXT as is (valid UTF-8 required),
 * NULL as "no value" (not sent). A BLOB rejects the row. */
#include "source.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "attrset.h"
#include "crash.h"
#include "csv.h"
#include "log.h"
#include "stage.h"

#define SQLITE_SLICE_ROWS 2000
#define SQLITE_RETRY_MS 200
#define SQLITE_DEBOUNCE_MS 30

struct sqlite_source {
	sqlite3 *db;
	sqlite3_stmt *q;
	int id_col, cursor_col, n_cols;
	uint32_t *col_attr;     /* attribute id per result column; 0: not sent */
	size_t *offs, *lens;    /* the current row's values in `values`, per sent column */
	int *cols;
	struct event *poll, *soon;
	struct stage sg;
	struct attrset incoming;
	struct buf values;      /* formatted numbers of the current row */
	sqlite3_value *cursor;  /* where reading continues (NULL: from the start) */
	sqlite3_value *last_id;
	bool is_from_start;     /* a rescan: read everything once more */
	char base[NAME_MAX + 1];
};

static void schedule(struct source *s, int64_t ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	if (!evtimer_pending(s->sqlite->soon, NULL) && evtimer_add(s->sqlite->soon, &tv) < 0)
		log_err("msg=\"cannot arm timer\" source=%s", s->cfg->name);
}

static void note(struct source *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct source *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->stats.last_error, sizeof(s->stats.last_error), fmt, ap);
	va_end(ap);
}

/* Loads (cursor, last_id) from the state database. */
static int load_position(struct source *s)
{
	struct sqlite_source *x = s->sqlite;
	sqlite3_stmt *q = store_stmt(s->d->st, "SELECT cursor, last_id FROM source_state WHERE source = ?");
	if (!q)
		return -EIO;
	sqlite3_bind_text(q, 1, s->cfg->name, -1, SQLITE_STATIC);
	sqlite3_value_free(x->cursor);
	sqlite3_value_free(x->last_id);
	x->cursor = x->last_id = NULL;
	if (sqlite3_step(q) == SQLITE_ROW) {
		x->cursor = sqlite3_value_dup(sqlite3_column_value(q, 0));
		x->last_id = sqlite3_value_dup(sqlite3_column_value(q, 1));
	}
	sqlite3_reset(q);
	return 0;
}

static int open_db(struct source *s)
{
	struct sqlite_source *x = s->sqlite;
	char *sql = NULL;
	if (sqlite3_open_v2(s->cfg->path, &x->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		note(s, "cannot open %s: %s", s->cfg->path, x->db ? sqlite3_errmsg(x->db) : "out of memory");
		goto fail;
	}
	/* Rows after (cursor, id) in that order; NULL cursor: from the beginning. */
	if (asprintf(&sql,
		     "SELECT * FROM (%s) WHERE :tp_cursor IS NULL OR \"%s\" > :tp_cursor OR (\"%s\" = :tp_cursor AND "
		     "(:tp_id IS NULL OR \"%s\" > :tp_id)) ORDER BY \"%s\", \"%s\" LIMIT %d",
		     s->cfg->query, s->cfg->cursor_column, s->cfg->cursor_column, s->cfg->id_column,
		     s->cfg->cursor_column, s->cfg->id_column, SQLITE_SLICE_ROWS) < 0) {
		sql = NULL;
		note(s, "out of memory");
		goto fail;
	}
	if (sqlite3_prepare_v2(x->db, sql, -1, &x->q, NULL) != SQLITE_OK) {
		note(s, "query: %s", sqlite3_errmsg(x->db));
		goto fail;
	}
	free(sql);
	sql = NULL;
	x->n_cols = sqlite3_column_count(x->q);
	x->col_attr = calloc((size_t)x->n_cols + 1, sizeof(*x->col_attr));
	x->offs = calloc((size_t)x->n_cols + 1, sizeof(*x->offs));
	x->lens = calloc((size_t)x->n_cols + 1, sizeof(*x->lens));
	x->cols = calloc((size_t)x->n_cols + 1, sizeof(*x->cols));
	if (!x->col_attr || !x->offs || !x->lens || !x->cols) {
		note(s, "out of memory");
		goto fail;
	}
	x->id_col = x->cursor_col = -1;
	for (int c = 0; c < x->n_cols; c++) {
		const char *col = sqlite3_column_name(x->q, c);
		if (strcmp(col, s->cfg->id_column) == 0)
			x->id_col = c;
		if (strcmp(col, s->cfg->cursor_column) == 0)
			x->cursor_col = c;
		if (c == x->id_col)
			continue;
		bool excluded = false;
		for (size_t e = 0; e < s->cfg->n_exclude; e++)
			if (strcmp(s->cfg->exclude[e], col) == 0)
				excluded = true;
		if (excluded)
			continue;
		const char *attr = col;
		for (size_t m = 0; m < s->cfg->n_columns; m++)
			if (strcmp(s->cfg->columns[m].from, col) == 0)
				attr = s->cfg->columns[m].to;
		if (!attr_name_valid(attr, strlen(attr))) {
			note(s, "column \"%.64s\" is not a valid attribute name; rename it with columns: or exclude it", attr);
			goto fail;
		}
		int64_t id = store_attr_id(s->d->st, attr, strlen(attr));
		if (id < 0) {
			note(s, "cannot record attribute name");
			goto fail;
		}
		x->col_attr[c] = (uint32_t)id;
	}
	if (x->id_col < 0 || x->cursor_col < 0) {
		note(s, "the query's result has no column \"%s\"", x->id_col < 0 ? s->cfg->id_column : s->cfg->cursor_column);
		goto fail;
	}
	return 0;
fail:
	free(sql);
	log_err("msg=\"database source not usable\" source=%s error=\"%s\"", s->cfg->name, s->stats.last_error);
	sqlite3_finalize(x->q);
	x->q = NULL;
	sqlite3_close(x->db);
	x->db = NULL;
	free(x->col_attr);
	free(x->offs);
	free(x->lens);
	free(x->cols);
	x->col_attr = NULL;
	x->offs = x->lens = NULL;
	x->cols = NULL;
	return -EINVAL;
}

/* Formats column c of the current row into x->values; returns its text and
 * length through *val / *len, NULL for "no value", or an error message. */
static const char *column_value(struct sqlite_source *x, int c, size_t *off, size_t *len)
{
	char num[64];
	int n;
	switch (sqlite3_column_type(x->q, c)) {
	case SQLITE_NULL:
		*len = 0;
		return NULL;
	case SQLITE_INTEGER:
		n = snprintf(num, sizeof(num), "%lld", (long long)sqlite3_column_int64(x->q, c));
		break;
	case SQLITE_FLOAT: {
		double v = sqlite3_column_double(x->q, c);
		if (!isfinite(v))
			return "a REAL value that is not finite";
		n = snprintf(num, sizeof(num), "%.15g", v);
		if (strtod(num, NULL) != v)
			n = snprintf(num, sizeof(num), "%.17g", v);
		break;
	}
	case SQLITE_TEXT: {
		const char *t = (const char *)sqlite3_column_text(x->q, c);
		size_t l = (size_t)sqlite3_column_bytes(x->q, c);
		if (!utf8_valid(t, l) || memchr(t, '\0', l))
			return "a TEXT value that is not valid UTF-8";
		*off = x->values.len;
		*len = l;
		return buf_append(&x->values, t, l) < 0 ? "out of memory" : "";
	}
	default:
		return "a BLOB value (not sendable)";
	}
	*off = x->values.len;
	*len = (size_t)n;
	return buf_append(&x->values, num, (size_t)n) < 0 ? "out of memory" : "";
}

static int save_position(struct source *s)
{
	sqlite3_stmt *u = store_stmt(s->d->st, "INSERT INTO source_state (source, cursor, last_id, updated_at)"
					       " VALUES (?1, ?2, ?3, ?4) ON CONFLICT (source) DO UPDATE SET"
					       " cursor = excluded.cursor, last_id = excluded.last_id, updated_at = excluded.updated_at");
	if (!u)
		return -EIO;
	sqlite3_bind_text(u, 1, s->cfg->name, -1, SQLITE_STATIC);
	sqlite3_bind_value(u, 2, s->sqlite->cursor);
	sqlite3_bind_value(u, 3, s->sqlite->last_id);
	sqlite3_bind_int64(u, 4, now_ms());
	int rc = sqlite3_step(u);
	sqlite3_reset(u);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

/* Reads and stages one slice. Returns 1 when the slice was full (more may
 * follow), 0 when caught up, -EAGAIN when the source was locked, < 0 on errors. */
static int read_slice(struct source *s)
{
	struct sqlite_source *x = s->sqlite;
	struct store *st = s->d->st;
	int rows = 0, rc, r = 0;

	if (!x->q && open_db(s) < 0)
		return -EINVAL;
	sqlite3_reset(x->q);
	sqlite3_clear_bindings(x->q);
	int pc = sqlite3_bind_parameter_index(x->q, ":cursor");
	sqlite3_value *from = x->is_from_start ? NULL : x->cursor;
	if (pc > 0) {
		/* The user's :cursor bounds the scan from below; NULL reads everything. */
		if (from)
			sqlite3_bind_value(x->q, pc, from);
		else
			sqlite3_bind_int64(x->q, pc, INT64_MIN);
	}
	if (from) {
		sqlite3_bind_value(x->q, sqlite3_bind_parameter_index(x->q, ":tp_cursor"), from);
		sqlite3_bind_value(x->q, sqlite3_bind_parameter_index(x->q, ":tp_id"), x->is_from_start ? NULL : x->last_id);
	}
	if (store_exec(st, "PRAGMA synchronous=NORMAL") < 0 || store_begin(st) < 0) {
		r = -EIO;
		goto out;
	}
	while ((rc = sqlite3_step(x->q)) == SQLITE_ROW) {
		rows++;
		s->stats.rows_read++;
		const char *id = (const char *)sqlite3_column_text(x->q, x->id_col);
		size_t id_len = (size_t)sqlite3_column_bytes(x->q, x->id_col);
		const char *why = NULL;
		buf_reset(&x->values);
		attrset_clear(&x->incoming);
		size_t *offs = x->offs, *lens = x->lens;
		int *cols = x->cols, n = 0;
		if (!id || id_len == 0)
			why = "empty id";
		else if (memchr(id, '+', id_len) || memchr(id, '/', id_len))
			why = "id contains '+' or '/', which Target does not accept";
		else if (id_len > 128)
			why = "id longer than 128 bytes";
		for (int c = 0; !why && c < x->n_cols; c++) {
			if (!x->col_attr[c])
				continue;
			size_t off = 0, len = 0;
			const char *err = column_value(x, c, &off, &len);
			if (!err)
				continue; /* NULL: no value */
			if (*err) {
				why = err;
				break;
			}
			if (len == 0)
				continue;
			offs[n] = off;
			lens[n] = len;
			cols[n++] = c;
		}
		for (int i = 0; !why && i < n; i++)
			if (attrset_put(&x->incoming, x->col_attr[cols[i]], x->values.data + offs[i], (uint32_t)lens[i]) < 0)
				why = "out of memory";
		if (!why) {
			r = stage_profile(&x->sg, id, id_len, &x->incoming, s->cfg->name, NULL);
			if (r == -E2BIG)
				why = "profile data would exceed Target's 64 KB per profile";
			else if (r < 0)
				break;
			else if (r > 0)
				s->stats.rows_staged++;
			r = 0;
		}
		if (why) {
			s->stats.rows_rejected++;
			note(s, "row with id \"%.64s\" rejected: %s", id ? id : "", why);
			log_warn("msg=\"row rejected\" source=%s id=\"%.64s\" reason=\"%s\"", s->cfg->name, id ? id : "", why);
		}
		sqlite3_value_free(x->cursor);
		sqlite3_value_free(x->last_id);
		x->cursor = sqlite3_value_dup(sqlite3_column_value(x->q, x->cursor_col));
		x->last_id = sqlite3_value_dup(sqlite3_column_value(x->q, x->id_col));
		if (!x->cursor || !x->last_id) {
			r = -ENOMEM;
			break;
		}
	}
	if (r == 0 && rc == SQLITE_BUSY) {
		r = -EAGAIN;
	} else if (r == 0 && rc != SQLITE_DONE && rc != SQLITE_ROW) {
		note(s, "query: %s", sqlite3_errmsg(x->db));
		r = -EIO;
	}
	if (r == 0 && rows > 0) {
		x->is_from_start = false;
		r = save_position(s);
	}
	if (r == 0) {
		if (store_commit(st) < 0)
			r = -EIO;
	}
	if (r < 0) {
		store_die_on_io_error(st);
		store_rollback(st);
		load_position(s); /* the slice is read again */
	}
	store_exec(st, "PRAGMA synchronous=FULL");
	if (r == 0 && rows > 0) {
		crash_point("after-db-slice");
		daemon_progress(s->d);
	}
out:
	sqlite3_reset(x->q); /* releases the read lock on the source at once */
	return r < 0 ? r : rows == SQLITE_SLICE_ROWS;
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	if (s->d->is_stopping)
		return;
	int r = read_slice(s);
	if (r == 1) {
		schedule(s, 0);
	} else if (r == -EAGAIN) {
		schedule(s, SQLITE_RETRY_MS); /* a writer holds the database: come back shortly */
	} else if (r < 0) {
		log_err("msg=\"database source read failed\" source=%s error=\"%s\"", s->cfg->name, s->stats.last_error);
		schedule(s, s->cfg->poll_ms);
	} else if (s->stats.last_error[0] && strncmp(s->stats.last_error, "row with id", 11) != 0) {
		s->stats.last_error[0] = '\0';
	}
}

static void on_event(struct source *s, const struct inotify_event *ev, void *arg)
{
	size_t bl = strlen(s->sqlite->base);
	/* The database, its WAL or its journal changed: read soon (debounced). */
	if (ev->len && strncmp(ev->name, s->sqlite->base, bl) == 0 &&
	    (ev->name[bl] == '\0' || strcmp(ev->name + bl, "-wal") == 0 || strcmp(ev->name + bl, "-journal") == 0))
		schedule(s, SQLITE_DEBOUNCE_MS);
}

static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
	source_read_events(arg, on_event, NULL);
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	schedule(s, 0);
}

int sqlite_source_watch(struct source *s)
{
	struct sqlite_source *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	s->sqlite = x;
	stage_init(&x->sg, s->d->st);
	attrset_init(&x->incoming);
	buf_init(&x->values);
	char dir[PATH_MAX], name[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", s->cfg->path);
	snprintf(name, sizeof(name), "%s", s->cfg->path);
	snprintf(x->base, sizeof(x->base), "%s", basename(name));
	x->soon = evtimer_new(s->d->base, on_read, s);
	x->poll = event_new(s->d->base, -1, EV_PERSIST, on_poll, s);
	struct timeval every = { s->cfg->poll_ms / 1000, (s->cfg->poll_ms % 1000) * 1000 };
	if (!x->soon || !x->poll || event_add(x->poll, &every) < 0)
		return -ENOMEM;
	if (load_position(s) < 0)
		return -EIO;
	/* Watching the directory sees the WAL and journal come and go. */
	s->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (s->inotify_fd < 0 ||
	    inotify_add_watch(s->inotify_fd, dirname(dir), IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) < 0) {
		log_warn("msg=\"cannot watch the database's directory; polling only\" source=%s error=\"%s\"", s->cfg->name,
			 strerror(errno));
		return 0;
	}
	s->ev = event_new(s->d->base, s->inotify_fd, EV_READ | EV_PERSIST, on_inotify, s);
	if (!s->ev || event_add(s->ev, NULL) < 0)
		return -ENOMEM;
	return 0;
}

int sqlite_source_scan(struct source *s, bool from_start)
{
	if (from_start)
		s->sqlite->is_from_start = true;
	schedule(s, 0);
	return 0;
}

void sqlite_source_close(struct source *s)
{
	struct sqlite_source *x = s->sqlite;
	if (!x)
		return;
	if (x->soon)
		event_free(x->soon);
	if (x->poll)
		event_free(x->poll);
	sqlite3_finalize(x->q);
	sqlite3_close(x->db);
	free(x->col_attr);
	free(x->offs);
	free(x->lens);
	free(x->cols);
	sqlite3_value_free(x->cursor);
	sqlite3_value_free(x->last_id);
	stage_finish(&x->sg);
	attrset_finish(&x->incoming);
	buf_finish(&x->values);
	free(x);
	s->sqlite = NULL;
}
