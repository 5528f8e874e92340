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

#include "fswatch.h"
#include "log.h"
#include "utf8.h"

#define SQLITE_SLICE_ROWS 2000
#define SQLITE_RETRY_MS 200
#define SQLITE_DEBOUNCE_MS 30

struct sqlite_source {
	sqlite3 *db;
	sqlite3_stmt *q;
	struct source_db_map map;
	size_t *offs, *lens;    /* the current row's values in `values`, per sent column */
	int *cols;
	struct event *poll, *soon;
	struct buf values;      /* formatted numbers of the current row */
	sqlite3_value *cursor;  /* where reading continues (NULL: from the start) */
	sqlite3_value *last_id;
	bool is_from_start;     /* a rescan: read everything once more */
	bool is_caught_up;      /* the last read found nothing more */
	int inotify_fd;         /* the database's directory */
	struct event *ev;
	char base[NAME_MAX + 1];
};

static void schedule(struct source *s, int64_t ms)
{
	struct sqlite_source *x = s->state;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	if (!evtimer_pending(x->soon, NULL) && evtimer_add(x->soon, &tv) < 0)
		log_err("msg=\"cannot arm timer\" source=%s", s->cfg->name);
}

/* Loads (cursor, last_id) from the state database. */
static int load_position(struct source *s)
{
	struct sqlite_source *x = s->state;
	sqlite3_stmt *q = source_db_position_load(s);
	if (!q)
		return -EIO;
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

static const char *column_name(void *q, int c)
{
	return sqlite3_column_name(q, c);
}

static int open_db(struct source *s)
{
	struct sqlite_source *x = s->state;
	char *sql = NULL;
	if (sqlite3_open_v2(s->cfg->path, &x->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		source_db_note(s, "cannot open %s: %s", s->cfg->path, x->db ? sqlite3_errmsg(x->db) : "out of memory");
		goto fail;
	}
	/* Rows after (cursor, id) in that order; NULL cursor: from the beginning. */
	if (asprintf(&sql,
		     "SELECT * FROM (%s) WHERE :tp_cursor IS NULL OR \"%s\" > :tp_cursor OR (\"%s\" = :tp_cursor AND "
		     "(:tp_id IS NULL OR \"%s\" > :tp_id)) ORDER BY \"%s\", \"%s\" LIMIT %d",
		     s->cfg->query, s->cfg->cursor_column, s->cfg->cursor_column, s->cfg->id_column,
		     s->cfg->cursor_column, s->cfg->id_column, SQLITE_SLICE_ROWS) < 0) {
		sql = NULL;
		source_db_note(s, "out of memory");
		goto fail;
	}
	if (sqlite3_prepare_v2(x->db, sql, -1, &x->q, NULL) != SQLITE_OK) {
		source_db_note(s, "query: %s", sqlite3_errmsg(x->db));
		goto fail;
	}
	free(sql);
	sql = NULL;
	int n = sqlite3_column_count(x->q);
	x->offs = calloc((size_t)n + 1, sizeof(*x->offs));
	x->lens = calloc((size_t)n + 1, sizeof(*x->lens));
	x->cols = calloc((size_t)n + 1, sizeof(*x->cols));
	if (!x->offs || !x->lens || !x->cols) {
		source_db_note(s, "out of memory");
		goto fail;
	}
	if (source_db_map_build(s, &x->map, n, column_name, x->q) < 0)
		goto fail;
	return 0;
fail:
	free(sql);
	log_err("msg=\"database source not usable\" source=%s error=\"%s\"", s->cfg->name, s->stats.last_error);
	sqlite3_finalize(x->q);
	x->q = NULL;
	sqlite3_close(x->db);
	x->db = NULL;
	source_db_map_reset(&x->map);
	free(x->offs);
	free(x->lens);
	free(x->cols);
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
	struct sqlite_source *x = s->state;
	sqlite3_stmt *u = source_db_position_stmt(s);
	if (!u)
		return -EIO;
	sqlite3_bind_value(u, 2, x->cursor);
	sqlite3_bind_value(u, 3, x->last_id);
	return source_db_position_save(s, u);
}

/* v as text for display (numbers formatted here, so v itself is not converted). */
static const char *value_text(sqlite3_value *v, char *out, size_t size)
{
	switch (sqlite3_value_type(v)) {
	case SQLITE_INTEGER:
		snprintf(out, size, "%lld", (long long)sqlite3_value_int64(v));
		return out;
	case SQLITE_FLOAT:
		snprintf(out, size, "%.17g", sqlite3_value_double(v));
		return out;
	case SQLITE_TEXT:
		return (const char *)sqlite3_value_text(v);
	default:
		return "?";
	}
}

/* Reads and stages one slice. Returns 1 when the slice was full (more may
 * follow), 0 when caught up, -EAGAIN when the source was locked, < 0 on errors. */
static int read_slice(struct source *s)
{
	struct sqlite_source *x = s->state;
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
	if ((r = source_db_slice_begin(s)) < 0)
		goto out;
	while ((rc = sqlite3_step(x->q)) == SQLITE_ROW) {
		struct source_db_map *m = &x->map;
		rows++;
		const char *id = (const char *)sqlite3_column_text(x->q, m->id_col);
		size_t id_len = (size_t)sqlite3_column_bytes(x->q, m->id_col);
		const char *why = NULL;
		buf_reset(&x->values);
		attrset_clear(&m->incoming);
		size_t *offs = x->offs, *lens = x->lens;
		int *cols = x->cols, n = 0;
		for (int c = 0; c < m->n_cols; c++) {
			if (!m->col_attr[c])
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
			if (attrset_put(&m->incoming, m->col_attr[cols[i]], x->values.data + offs[i], (uint32_t)lens[i]) < 0)
				why = "out of memory";
		/* The cursor value as text, from a copy: converting the column in
		 * place would change the value kept as the read position. */
		sqlite3_value *at = sqlite3_value_dup(sqlite3_column_value(x->q, x->map.cursor_col));
		r = source_db_stage_row(s, m, id, id_len, at ? (const char *)sqlite3_value_text(at) : NULL, why);
		sqlite3_value_free(at);
		if (r < 0)
			break;
		sqlite3_value_free(x->cursor);
		sqlite3_value_free(x->last_id);
		x->cursor = sqlite3_value_dup(sqlite3_column_value(x->q, x->map.cursor_col));
		x->last_id = sqlite3_value_dup(sqlite3_column_value(x->q, x->map.id_col));
		if (!x->cursor || !x->last_id) {
			r = -ENOMEM;
			break;
		}
	}
	if (r == 0 && rc == SQLITE_BUSY) {
		r = -EAGAIN;
	} else if (r == 0 && rc != SQLITE_DONE && rc != SQLITE_ROW) {
		source_db_note(s, "query: %s", sqlite3_errmsg(x->db));
		r = -EIO;
	}
	if (r == 0 && rows > 0)
		r = save_position(s);
	r = source_db_slice_end(s, r, rows);
	if (r < 0) {
		load_position(s); /* the slice is read again */
	} else {
		x->is_from_start = false;
		if (rows > 0) {
			char cur[64], id[64];
			source_db_note_position(s, value_text(x->cursor, cur, sizeof(cur)), value_text(x->last_id, id, sizeof(id)));
		}
	}
out:
	sqlite3_reset(x->q); /* releases the read lock on the source at once */
	return r < 0 ? r : rows == SQLITE_SLICE_ROWS;
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	struct sqlite_source *x = s->state;
	if (s->env->is_stopping)
		return;
	int r = read_slice(s);
	x->is_caught_up = r == 0;
	if (r == 0)
		source_progress(s); /* --once may be waiting for this */
	if (r == 1) {
		schedule(s, 0);
	} else if (r == -EAGAIN) {
		schedule(s, SQLITE_RETRY_MS); /* a writer holds the database: come back shortly */
	} else if (r < 0) {
		log_err("msg=\"database source read failed\" source=%s error=\"%s\"", s->cfg->name, s->stats.last_error);
		schedule(s, s->cfg->poll_ms);
	} else if (s->stats.last_error[0] && !s->stats.is_row_error) {
		s->stats.last_error[0] = '\0';
	}
}

static void on_event(void *arg, const struct inotify_event *ev)
{
	struct source *s = arg;
	struct sqlite_source *x = s->state;
	size_t bl = strlen(x->base);
	/* The database, its WAL or its journal changed: read soon (debounced). */
	if (ev->len && strncmp(ev->name, x->base, bl) == 0 &&
	    (ev->name[bl] == '\0' || strcmp(ev->name + bl, "-wal") == 0 || strcmp(ev->name + bl, "-journal") == 0))
		schedule(s, SQLITE_DEBOUNCE_MS);
}

static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	int r = fswatch_drain(fd, on_event, s);
	if (r < 0)
		log_err("msg=\"inotify read failed\" source=%s error=\"%s\"", s->cfg->name, strerror(-r));
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	schedule(s, 0);
}

static int sqlite_watch(struct source *s)
{
	struct sqlite_source *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->inotify_fd = -1;
	s->state = x;
	source_db_map_init(&x->map, s->env->st);
	buf_init(&x->values);
	char dir[PATH_MAX], name[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", s->cfg->path);
	snprintf(name, sizeof(name), "%s", s->cfg->path);
	snprintf(x->base, sizeof(x->base), "%s", basename(name));
	x->soon = evtimer_new(s->env->base, on_read, s);
	x->poll = event_new(s->env->base, -1, EV_PERSIST, on_poll, s);
	struct timeval every = { s->cfg->poll_ms / 1000, (s->cfg->poll_ms % 1000) * 1000 };
	if (!x->soon || !x->poll || event_add(x->poll, &every) < 0)
		return -ENOMEM;
	if (load_position(s) < 0) {
		source_db_note(s, "cannot read the source's position: %s", store_error(s->env->st));
		return -EIO;
	}
	/* Watching the directory sees the WAL and journal come and go. */
	x->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (x->inotify_fd < 0 ||
	    inotify_add_watch(x->inotify_fd, dirname(dir), IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) < 0) {
		log_warn("msg=\"cannot watch the database's directory; polling only\" source=%s error=\"%s\"", s->cfg->name,
			 strerror(errno));
		return 0;
	}
	x->ev = event_new(s->env->base, x->inotify_fd, EV_READ | EV_PERSIST, on_inotify, s);
	if (!x->ev || event_add(x->ev, NULL) < 0)
		return -ENOMEM;
	return 0;
}

static int sqlite_scan(struct source *s, bool from_start)
{
	struct sqlite_source *x = s->state;
	if (from_start)
		x->is_from_start = true;
	schedule(s, 0);
	return 0;
}

static bool sqlite_is_caught_up(const struct source *s)
{
	const struct sqlite_source *x = s->state;
	return x->is_caught_up && !evtimer_pending(x->soon, NULL);
}

static void sqlite_close(struct source *s)
{
	struct sqlite_source *x = s->state;
	if (!x)
		return;
	if (x->soon)
		event_free(x->soon);
	if (x->poll)
		event_free(x->poll);
	if (x->ev)
		event_free(x->ev);
	if (x->inotify_fd >= 0)
		close(x->inotify_fd);
	sqlite3_finalize(x->q);
	sqlite3_close(x->db);
	source_db_map_finish(&x->map);
	free(x->offs);
	free(x->lens);
	free(x->cols);
	sqlite3_value_free(x->cursor);
	sqlite3_value_free(x->last_id);
	buf_finish(&x->values);
	free(x);
	s->state = NULL;
}

const struct source_ops source_sqlite_ops = {
	.watch = sqlite_watch,
	.scan = sqlite_scan,
	.is_caught_up = sqlite_is_caught_up,
	.close = sqlite_close,
};
