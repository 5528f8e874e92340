/* SPDX-License-Identifier: MIT */
/* PostgreSQL database sources: the SQLite source's model (the user's query with
 * :cursor, wrapped to return rows in (cursor, id) order after the last pair read,
 * a slice at a time, each slice staged with its position in one state
 * transaction) over libpq, without ever blocking the event loop: connecting,
 * sending and reading results all run from the connection's socket on the loop.
 *
 * The connection lives through these steps:
 *
 *   DOWN -> CONNECTING -> SETUP (session settings, LISTEN) -> PREPARE (twice)
 *        -> DESCRIBE -> IDLE <-> READING
 *
 * and any failure (the server gone, a query error, the connect deadline) goes
 * back to DOWN and reconnects after an exponential backoff with jitter (1 s up
 * to 1 min), so a dead server costs one attempt a minute, never a busy loop.
 * After every (re)connection the source reads what changed, which also covers
 * notifications sent while it was away.
 *
 * Values become attribute strings in one documented way (the server's text
 * output in a fixed session: UTF8, DateStyle ISO, TimeZone UTC):
 *   NULL                  no value (not sent)
 *   boolean               "true" / "false"
 *   smallint/integer/bigint, numeric   decimal text; NaN or infinite numerics reject the row
 *   real/double precision the shortest text that reads back the same; NaN/inf reject the row
 *   timestamptz           ISO 8601 in UTC: 2026-11-29T01:10:08.5Z
 *   timestamp             2026-11-29T01:10:08.5 (no zone); date: 2026-11-29; infinite ones reject the row
 *   bytea                 rejects the row (not sendable)
 *   anything else         the server's text output (text, varchar, uuid, json, ...)
 */
#include "source.h"

#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backoff.h"
#include "buf.h"
#include "log.h"
#include "token.h"
#include "utf8.h"

#define PG_SLICE_ROWS 2000
#define PG_CONNECT_TIMEOUT_MS 15000
#define PG_BACKOFF_INITIAL_MS 1000
#define PG_BACKOFF_MAX_MS 60000
#define PG_NOTIFY_DEBOUNCE_MS 10
#define PG_FIRST "tpsync_first"  /* the first rows: $1 is the cursor type's minimum */
#define PG_AFTER "tpsync_after"  /* rows after ($1, $2) */

/* Type OIDs from PostgreSQL's catalog (pg_type.dat); stable across versions. */
enum {
	OID_BOOL = 16, OID_BYTEA = 17, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23, OID_TEXT = 25,
	OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_BPCHAR = 1042, OID_VARCHAR = 1043, OID_DATE = 1082,
	OID_TIMESTAMP = 1114, OID_TIMESTAMPTZ = 1184, OID_NUMERIC = 1700,
};

/* One value of the current row: text in the result (or a constant), or at off
 * in pg_source.converted (ptr NULL), which may move until the row is complete. */
struct pg_value {
	const char *ptr;
	size_t off, len;
};

enum pg_step { PG_DOWN, PG_CONNECTING, PG_SETUP, PG_PREPARE_FIRST, PG_PREPARE_AFTER, PG_DESCRIBE, PG_IDLE, PG_READING };

struct pg_source {
	PGconn *conn;
	enum pg_step step;
	bool is_cmd_open;       /* a command was sent and its results are not all in */
	bool want_read;         /* read again once the current step is done */
	bool is_from_start;     /* a rescan: read everything once more */
	bool is_caught_up;      /* the last slice was the end of the result */
	unsigned failures;      /* consecutive failures, for the backoff */
	struct event *io;       /* the connection's socket */
	struct event *soon;     /* the next slice (or reconnection) */
	struct event *poll;     /* every `poll` */
	struct event *deadline; /* connecting took too long */
	struct source_db_map map;
	Oid *types;             /* the slice result's column types */
	const char *cursor_min; /* $1 when reading from the start */
	char *cursor, *last_id; /* where reading continues (NULL: from the start) */
	int slice_rows;         /* rows the last slice returned */
	struct pg_value *vals;  /* the current row's values, per column */
	struct buf converted;   /* the current row's values that needed converting */
};

static void on_io(evutil_socket_t fd, short what, void *arg);

/* libpq's messages end in newlines and may span lines; the log wants one line,
 * with runs of whitespace as one space and double quotes as single ones. */
static const char *one_line(const char *msg, char *out, size_t size)
{
	size_t n = 0;
	for (const char *p = msg ? msg : ""; *p && n + 1 < size; p++) {
		bool is_space = *p == '\n' || *p == '\r' || *p == '\t' || *p == ' ';
		if (is_space && (n == 0 || out[n - 1] == ' '))
			continue;
		out[n++] = is_space ? ' ' : *p == '"' ? '\'' : *p;
	}
	while (n > 0 && out[n - 1] == ' ')
		n--;
	out[n] = '\0';
	return out;
}

static void schedule(struct source *s, int64_t ms)
{
	struct pg_source *x = s->state;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	if (!evtimer_pending(x->soon, NULL) && evtimer_add(x->soon, &tv) < 0)
		log_err("msg=\"cannot arm timer\" source=%s", s->cfg->name);
}

/* Waits for the socket to become readable (and writable while output is queued). */
static int arm(struct source *s, short what)
{
	struct pg_source *x = s->state;
	if (x->io) {
		event_free(x->io);
		x->io = NULL;
	}
	int fd = PQsocket(x->conn);
	if (fd < 0)
		return -EBADF;
	x->io = event_new(s->env->base, fd, what, on_io, s);
	if (!x->io || event_add(x->io, NULL) < 0) {
		log_err("msg=\"cannot watch the database connection\" source=%s", s->cfg->name);
		return -ENOMEM;
	}
	return 0;
}

/* Drops the connection and tries again after the backoff. why is logged and
 * shown as the source's last error. */
static void fail(struct source *s, const char *why)
{
	struct pg_source *x = s->state;
	char line[512];
	one_line(why, line, sizeof(line));
	source_db_note(s, "%s", line);
	x->failures++;
	int64_t delay = backoff_delay(PG_BACKOFF_INITIAL_MS, PG_BACKOFF_MAX_MS, x->failures, backoff_random());
	log_warn("msg=\"database source unavailable; retrying\" source=%s error=\"%s\" attempt=%u retry_in_ms=%lld",
		 s->cfg->name, line, x->failures, (long long)delay);
	if (x->io) {
		event_free(x->io);
		x->io = NULL;
	}
	evtimer_del(x->deadline);
	evtimer_del(x->soon);
	PQfinish(x->conn);
	x->conn = NULL;
	x->step = PG_DOWN;
	x->is_cmd_open = false;
	x->want_read = false;
	schedule(s, delay);
}

/* Sends what libpq has queued and waits for the answer. */
static void sent(struct source *s, enum pg_step step)
{
	struct pg_source *x = s->state;
	x->step = step;
	x->is_cmd_open = true;
	int r = PQflush(x->conn);
	if (r < 0 || arm(s, EV_READ | (r == 1 ? EV_WRITE : 0)) < 0)
		fail(s, PQerrorMessage(x->conn));
}

/* --- the password ----------------------------------------------------------------- */

/* Reads the password file (password_file, else $CREDENTIALS_DIRECTORY/NAME-password
 * if it exists) into out. Returns 1 with a password, 0 when there is none to
 * give (libpq then uses ~/.pgpass or PGPASSFILE), or -errno. */
static int read_password(struct source *s, char *out, size_t size)
{
	char path[4096], credential[256];
	bool must_exist = s->cfg->password_file != NULL;
	snprintf(credential, sizeof(credential), "%s-password", s->cfg->name);
	if (!token_secret_path(s->cfg->password_file, credential, path, sizeof(path)))
		return 0;
	FILE *f = fopen(path, "re");
	if (!f) {
		int e = errno;
		if (!must_exist && e == ENOENT)
			return 0;
		source_db_note(s, "cannot read password file %s: %s", path, strerror(e));
		return -e;
	}
	struct stat sb;
	if (fstat(fileno(f), &sb) == 0 && (sb.st_mode & 077))
		log_warn("msg=\"the password file may be read by its group or others; chmod 600 it\" source=%s path=\"%s\" "
			 "mode=%04o", s->cfg->name, path, (unsigned)(sb.st_mode & 07777));
	size_t n = fread(out, 1, size - 1, f);
	bool is_error = ferror(f) != 0;
	fclose(f);
	if (is_error) {
		source_db_note(s, "cannot read password file %s", path);
		return -EIO;
	}
	out[n] = '\0';
	while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r'))
		out[--n] = '\0';
	return 1;
}

/* --- connecting ----------------------------------------------------------------- */

/* Server notices (warnings from the query, say) go to the log, not stderr. */
static void on_notice(void *arg, const char *message)
{
	struct source *s = arg;
	char line[512];
	log_info("msg=\"database notice\" source=%s notice=\"%s\"", s->cfg->name, one_line(message, line, sizeof(line)));
}

static void start_connect(struct source *s)
{
	struct pg_source *x = s->state;
	char password[1024];
	int have = read_password(s, password, sizeof(password));
	if (have < 0) {
		fail(s, s->stats.last_error);
		return;
	}
	/* Our defaults come first so the dsn can override them; the password last. */
	const char *keys[] = { "application_name", "keepalives", "keepalives_idle", "keepalives_interval",
			       "keepalives_count", "dbname", have ? "password" : NULL, NULL };
	const char *values[] = { "tpsyncd", "1", "30", "10", "3", s->cfg->dsn, have ? password : NULL, NULL };
	x->conn = PQconnectStartParams(keys, values, 1);
	explicit_bzero(password, sizeof(password));
	if (!x->conn) {
		fail(s, "out of memory");
		return;
	}
	if (PQstatus(x->conn) == CONNECTION_BAD) {
		fail(s, PQerrorMessage(x->conn));
		return;
	}
	PQsetNoticeProcessor(x->conn, on_notice, s);
	x->step = PG_CONNECTING;
	struct timeval tv = { PG_CONNECT_TIMEOUT_MS / 1000, 0 };
	if (evtimer_add(x->deadline, &tv) < 0 || arm(s, EV_WRITE) < 0)
		fail(s, "cannot watch the connection");
}

static char *quote_ident(struct pg_source *x, const char *name)
{
	return PQescapeIdentifier(x->conn, name, strlen(name));
}

/* Sets up the session so values come out in one fixed form, and LISTENs. */
static void send_setup(struct source *s)
{
	struct pg_source *x = s->state;
	char *listen = NULL;
	if (s->cfg->listen && !(listen = quote_ident(x, s->cfg->listen))) {
		fail(s, PQerrorMessage(x->conn));
		return;
	}
	char *sql = NULL;
	int r = asprintf(&sql, "SET client_encoding TO 'UTF8'; SET DateStyle TO ISO, YMD; SET TimeZone TO 'UTC';"
			       " SET extra_float_digits TO 1; SET IntervalStyle TO iso_8601;%s%s%s"
			       " SET default_transaction_read_only TO on",
			 listen ? " LISTEN " : "", listen ? listen : "", listen ? ";" : "");
	PQfreemem(listen);
	if (r < 0) {
		fail(s, "out of memory");
		return;
	}
	r = PQsendQuery(x->conn, sql);
	free(sql);
	if (!r) {
		fail(s, PQerrorMessage(x->conn));
		return;
	}
	sent(s, PG_SETUP);
}

/* The user's query with each :cursor (outside quotes) turned into $1. */
static char *rewrite_cursor(const char *query)
{
	struct buf b;
	buf_init(&b);
	bool in_quote = false;
	for (const char *p = query; *p; p++) {
		if (*p == '\'')
			in_quote = !in_quote;
		if (!in_quote && strncmp(p, ":cursor", 7) == 0 && (p == query || p[-1] != ':') &&
		    !(p[7] == '_' || (p[7] >= 'a' && p[7] <= 'z') || (p[7] >= 'A' && p[7] <= 'Z') ||
		      (p[7] >= '0' && p[7] <= '9'))) {
			if (buf_append(&b, "$1", 2) < 0)
				goto oom;
			p += 6;
			continue;
		}
		if (buf_append(&b, p, 1) < 0)
			goto oom;
	}
	if (buf_append(&b, "", 1) < 0)
		goto oom;
	return b.data;
oom:
	buf_finish(&b);
	return NULL;
}

/* Prepares a slice query: the first rows in (cursor, id) order, or (after) the
 * rows after ($1, $2). Two statements rather than one with an OR, so the
 * planner can walk an index on (cursor, id) either way. */
static void send_prepare(struct source *s, bool after)
{
	struct pg_source *x = s->state;
	char *user = rewrite_cursor(s->cfg->query);
	char *cur = quote_ident(x, s->cfg->cursor_column), *id = quote_ident(x, s->cfg->id_column);
	char *sql = NULL;
	if (!user || !cur || !id ||
	    asprintf(&sql, "SELECT * FROM (%s) AS tpsync_rows%s%s%s%s%s ORDER BY %s, %s LIMIT %d", user,
		     after ? " WHERE (" : "", after ? cur : "", after ? ", " : "", after ? id : "",
		     after ? ") > ($1, $2)" : "", cur, id, PG_SLICE_ROWS) < 0)
		sql = NULL;
	free(user);
	PQfreemem(cur);
	PQfreemem(id);
	if (!sql) {
		fail(s, "out of memory");
		return;
	}
	int r = PQsendPrepare(x->conn, after ? PG_AFTER : PG_FIRST, sql, 0, NULL);
	free(sql);
	if (!r) {
		fail(s, PQerrorMessage(x->conn));
		return;
	}
	sent(s, after ? PG_PREPARE_AFTER : PG_PREPARE_FIRST);
}

static void send_describe(struct source *s)
{
	struct pg_source *x = s->state;
	if (!PQsendDescribePrepared(x->conn, PG_AFTER)) {
		fail(s, PQerrorMessage(x->conn));
		return;
	}
	sent(s, PG_DESCRIBE);
}

/* The smallest value of the cursor's type: $1 when reading from the start. */
static const char *cursor_minimum(Oid type)
{
	switch (type) {
	case OID_INT2:
		return "-32768";
	case OID_INT4:
		return "-2147483648";
	case OID_INT8:
		return "-9223372036854775808";
	case OID_NUMERIC:
	case OID_FLOAT4:
	case OID_FLOAT8:
		return "-Infinity";
	case OID_DATE:
	case OID_TIMESTAMP:
	case OID_TIMESTAMPTZ:
		return "-infinity";
	case OID_TEXT:
	case OID_VARCHAR:
	case OID_BPCHAR:
		return "";
	default:
		return NULL;
	}
}

static const char *field_name(void *res, int c)
{
	return PQfname(res, c);
}

/* Learns the slice result's columns and the cursor's type. Returns 0 or -EINVAL
 * with the reason noted. */
static int describe(struct source *s, PGresult *res)
{
	struct pg_source *x = s->state;
	int n = PQnfields(res);
	if (PQnparams(res) < 1 || !(x->cursor_min = cursor_minimum(PQparamtype(res, 0)))) {
		source_db_note(s, "the :cursor parameter has type oid %u; use an integer, numeric, real, timestamp, date or "
			   "text cursor_column", PQnparams(res) < 1 ? 0 : PQparamtype(res, 0));
		return -EINVAL;
	}
	int r = source_db_map_build(s, &x->map, n, field_name, res);
	if (r < 0)
		return r;
	free(x->types);
	free(x->vals);
	x->types = calloc((size_t)n + 1, sizeof(*x->types));
	x->vals = calloc((size_t)n + 1, sizeof(*x->vals));
	if (!x->types || !x->vals) {
		source_db_note(s, "out of memory");
		return -ENOMEM;
	}
	for (int c = 0; c < n; c++)
		x->types[c] = PQftype(res, c);
	return 0;
}

/* --- reading ---------------------------------------------------------------------- */

/* Where reading continues: (cursor, id) as text, or NULLs for the start. */
static int set_position(struct pg_source *x, const char *cursor, const char *id)
{
	free(x->cursor);
	free(x->last_id);
	x->cursor = cursor ? strdup(cursor) : NULL;
	x->last_id = cursor ? strdup(id ? id : "") : NULL;
	return cursor && (!x->cursor || !x->last_id) ? -ENOMEM : 0;
}

static int load_position(struct source *s)
{
	sqlite3_stmt *q = source_db_position_load(s);
	if (!q)
		return -EIO;
	int r = 0;
	if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_type(q, 0) != SQLITE_NULL)
		r = set_position(s->state, (const char *)sqlite3_column_text(q, 0), (const char *)sqlite3_column_text(q, 1));
	else
		r = set_position(s->state, NULL, NULL);
	sqlite3_reset(q);
	return r;
}

static void send_slice(struct source *s)
{
	struct pg_source *x = s->state;
	bool from_start = x->is_from_start || !x->cursor;
	const char *params[2] = { from_start ? x->cursor_min : x->cursor, x->last_id };
	x->want_read = false;
	x->is_caught_up = false;
	if (!PQsendQueryPrepared(x->conn, from_start ? PG_FIRST : PG_AFTER, from_start ? 1 : 2, params, NULL, NULL, 0)) {
		fail(s, PQerrorMessage(x->conn));
		return;
	}
	sent(s, PG_READING);
}

/* Turns field (row, c) into its attribute string in *out. Returns NULL for no
 * value, "" for a value, or why the row is bad. */
static const char *convert(struct pg_source *x, PGresult *res, int row, int c, struct pg_value *out)
{
	if (PQgetisnull(res, row, c))
		return NULL;
	const char *v = PQgetvalue(res, row, c);
	size_t len = (size_t)PQgetlength(res, row, c);
	*out = (struct pg_value){ .ptr = v, .len = len };
	switch (x->types[c]) {
	case OID_BOOL:
		out->ptr = v[0] == 't' ? "true" : "false";
		out->len = strlen(out->ptr);
		return "";
	case OID_NUMERIC:
	case OID_FLOAT4:
	case OID_FLOAT8:
		return strcmp(v, "NaN") == 0 || strstr(v, "Infinity") ? "a number that is not finite" : "";
	case OID_BYTEA:
		return "a bytea value (not sendable)";
	case OID_DATE:
	case OID_TIMESTAMP:
	case OID_TIMESTAMPTZ: {
		if (len < 10 || v[0] < '0' || v[0] > '9' || strstr(v, " BC"))
			return "a date or timestamp that is infinite or before year 1";
		if (x->types[c] == OID_DATE || len < 11 || v[10] != ' ')
			return ""; /* a date, or a year past 9999: as printed */
		/* "2026-11-29 01:10:08.5+00" -> "2026-11-29T01:10:08.5Z" */
		bool is_utc = x->types[c] == OID_TIMESTAMPTZ && strcmp(v + len - 3, "+00") == 0;
		out->ptr = NULL;
		out->off = x->converted.len;
		out->len = is_utc ? len - 2 : len;
		if (buf_append(&x->converted, v, 10) < 0 || buf_append(&x->converted, "T", 1) < 0 ||
		    buf_append(&x->converted, v + 11, is_utc ? len - 14 : len - 11) < 0 ||
		    (is_utc && buf_append(&x->converted, "Z", 1) < 0))
			return "out of memory";
		return "";
	}
	default:
		return utf8_valid(v, len) ? "" : "a text value that is not valid UTF-8";
	}
}

/* Stages one slice's rows and its new position in one state transaction. */
static int stage_slice(struct source *s, PGresult *res)
{
	struct pg_source *x = s->state;
	struct source_db_map *m = &x->map;
	int rows = PQntuples(res), r;
	if (rows == 0) {
		x->is_from_start = false;
		x->slice_rows = 0;
		return 0;
	}
	if (PQnfields(res) != m->n_cols) {
		source_db_note(s, "the query's columns changed while running");
		return -EINVAL;
	}
	if ((r = source_db_slice_begin(s)) < 0)
		return r;
	for (int row = 0; row < rows && r == 0; row++) {
		const char *why = NULL;
		buf_reset(&x->converted);
		attrset_clear(&m->incoming);
		for (int c = 0; c < m->n_cols && !why; c++) {
			x->vals[c].len = 0;
			if (m->col_attr[c] && (why = convert(x, res, row, c, &x->vals[c])) && !*why)
				why = NULL;
		}
		for (int c = 0; c < m->n_cols && !why; c++) {
			struct pg_value *v = &x->vals[c];
			if (m->col_attr[c] && v->len > 0 &&
			    attrset_put(&m->incoming, m->col_attr[c], v->ptr ? v->ptr : x->converted.data + v->off,
					(uint32_t)v->len) < 0)
				why = "out of memory";
		}
		const char *id = PQgetisnull(res, row, m->id_col) ? NULL : PQgetvalue(res, row, m->id_col);
		const char *position = PQgetisnull(res, row, m->cursor_col) ? NULL : PQgetvalue(res, row, m->cursor_col);
		r = source_db_stage_row(s, m, id, id ? (size_t)PQgetlength(res, row, m->id_col) : 0, position, why);
	}
	/* The position reached: the last row's (cursor, id), committed with the rows. */
	const char *cur = PQgetvalue(res, rows - 1, m->cursor_col), *id = PQgetvalue(res, rows - 1, m->id_col);
	if (r == 0 && PQgetisnull(res, rows - 1, m->cursor_col)) {
		source_db_note(s, "cursor_column \"%s\" is NULL in a row; it must always have a value", s->cfg->cursor_column);
		r = -EINVAL;
	}
	if (r == 0) {
		sqlite3_stmt *u = source_db_position_stmt(s);
		if (!u) {
			r = -EIO;
		} else {
			sqlite3_bind_text(u, 2, cur, -1, SQLITE_STATIC);
			sqlite3_bind_text(u, 3, id, -1, SQLITE_STATIC);
			r = source_db_position_save(s, u);
		}
	}
	r = source_db_slice_end(s, r, rows);
	if (r < 0) {
		load_position(s); /* the slice is read again */
		return r;
	}
	x->is_from_start = false;
	x->slice_rows = rows;
	if ((r = set_position(x, cur, id)) == 0)
		source_db_note_position(s, cur, id);
	return r;
}

/* A read was asked for (a notification, the poll, a rescan, a full slice). */
static void want_read(struct source *s)
{
	struct pg_source *x = s->state;
	if (x->step == PG_IDLE && !s->env->is_stopping)
		send_slice(s);
	else
		x->want_read = true;
}

/* --- results ------------------------------------------------------------------ */

/* One result of the open command. Returns 0, or -1 after fail(). */
static int on_result(struct source *s, PGresult *res)
{
	struct pg_source *x = s->state;
	ExecStatusType st = PQresultStatus(res);
	bool is_ok = st == PGRES_COMMAND_OK || (x->step == PG_READING && st == PGRES_TUPLES_OK);
	if (!is_ok) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s%s", x->step == PG_PREPARE_FIRST || x->step == PG_PREPARE_AFTER ? "query: " : "",
			 PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res) : PQresStatus(st));
		fail(s, msg);
		return -1;
	}
	if (x->step == PG_DESCRIBE && describe(s, res) < 0) {
		fail(s, s->stats.last_error);
		return -1;
	}
	if (x->step == PG_READING && stage_slice(s, res) < 0) {
		fail(s, s->stats.last_error[0] ? s->stats.last_error : "cannot stage the rows");
		return -1;
	}
	return 0;
}

/* The open command finished: on to the next step. */
static void on_done(struct source *s)
{
	struct pg_source *x = s->state;
	x->is_cmd_open = false;
	switch (x->step) {
	case PG_SETUP:
		send_prepare(s, false);
		return;
	case PG_PREPARE_FIRST:
		send_prepare(s, true);
		return;
	case PG_PREPARE_AFTER:
		send_describe(s);
		return;
	case PG_DESCRIBE:
		x->step = PG_IDLE;
		x->failures = 0;
		if (s->stats.last_error[0] && !s->stats.is_row_error)
			s->stats.last_error[0] = '\0';
		log_info("msg=\"database source connected\" source=%s listen=%s", s->cfg->name,
			 s->cfg->listen ? s->cfg->listen : "-");
		want_read(s); /* catch up on whatever changed while away */
		break;
	case PG_READING:
		x->step = PG_IDLE;
		if (x->slice_rows == PG_SLICE_ROWS || x->want_read) {
			schedule(s, 0); /* more may follow; let the loop breathe between slices */
		} else {
			x->is_caught_up = true;
			source_progress(s); /* --once may be waiting for this */
		}
		break;
	default:
		break;
	}
	if (x->step == PG_IDLE && arm(s, EV_READ) < 0)
		fail(s, "cannot watch the connection");
}

static void on_connecting(struct source *s)
{
	struct pg_source *x = s->state;
	switch (PQconnectPoll(x->conn)) {
	case PGRES_POLLING_READING:
		if (arm(s, EV_READ) < 0)
			fail(s, "cannot watch the connection");
		return;
	case PGRES_POLLING_WRITING:
		if (arm(s, EV_WRITE) < 0)
			fail(s, "cannot watch the connection");
		return;
	case PGRES_POLLING_OK:
		evtimer_del(x->deadline);
		if (PQsetnonblocking(x->conn, 1) < 0) {
			fail(s, PQerrorMessage(x->conn));
			return;
		}
		send_setup(s);
		return;
	default:
		fail(s, PQerrorMessage(x->conn));
		return;
	}
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	struct pg_source *x = s->state;
	if (x->step == PG_CONNECTING) {
		on_connecting(s);
		return;
	}
	bool is_writing = false;
	if (what & EV_WRITE) {
		int r = PQflush(x->conn);
		if (r < 0) {
			fail(s, PQerrorMessage(x->conn));
			return;
		}
		is_writing = r == 1;
	}
	if ((what & EV_READ) && !PQconsumeInput(x->conn)) {
		fail(s, PQerrorMessage(x->conn));
		return;
	}
	bool was_notified = false;
	PGnotify *n;
	while ((n = PQnotifies(x->conn))) {
		was_notified = true;
		PQfreemem(n);
	}
	if (was_notified)
		schedule(s, PG_NOTIFY_DEBOUNCE_MS);
	while (x->is_cmd_open && !is_writing && !PQisBusy(x->conn)) {
		PGresult *res = PQgetResult(x->conn);
		if (!res) {
			on_done(s);
			return;
		}
		int r = on_result(s, res);
		PQclear(res);
		if (r < 0)
			return;
	}
	if (PQstatus(x->conn) == CONNECTION_BAD) {
		fail(s, PQerrorMessage(x->conn));
		return;
	}
	if (arm(s, EV_READ | (is_writing ? EV_WRITE : 0)) < 0)
		fail(s, "cannot watch the connection");
}

/* --- timers ---------------------------------------------------------------------- */

static void on_soon(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	struct pg_source *x = s->state;
	if (s->env->is_stopping)
		return;
	if (x->step == PG_DOWN)
		start_connect(s);
	else
		want_read(s);
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	struct pg_source *x = s->state;
	if (x->step != PG_DOWN)
		want_read(s);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	struct pg_source *x = s->state;
	if (x->step == PG_CONNECTING)
		fail(s, "connecting timed out");
}

/* --- lifecycle ------------------------------------------------------------------- */

static int pg_watch(struct source *s)
{
	struct pg_source *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	s->state = x;
	source_db_map_init(&x->map, s->env->st);
	buf_init(&x->converted);
	x->soon = evtimer_new(s->env->base, on_soon, s);
	x->deadline = evtimer_new(s->env->base, on_deadline, s);
	x->poll = event_new(s->env->base, -1, EV_PERSIST, on_poll, s);
	struct timeval every = { s->cfg->poll_ms / 1000, (s->cfg->poll_ms % 1000) * 1000 };
	if (!x->soon || !x->deadline || !x->poll || event_add(x->poll, &every) < 0)
		return -ENOMEM;
	if (load_position(s) < 0) {
		source_db_note(s, "cannot read the source's position: %s", store_error(s->env->st));
		return -EIO;
	}
	schedule(s, 0); /* connect from the loop */
	return 0;
}

static int pg_scan(struct source *s, bool from_start)
{
	struct pg_source *x = s->state;
	if (from_start)
		x->is_from_start = true;
	if (x->step != PG_DOWN)
		want_read(s);
	return 0;
}

static bool pg_is_caught_up(const struct source *s)
{
	const struct pg_source *x = s->state;
	return x->step == PG_IDLE && x->is_caught_up && !evtimer_pending(x->soon, NULL);
}

static void pg_close(struct source *s)
{
	struct pg_source *x = s->state;
	if (!x)
		return;
	if (x->io)
		event_free(x->io);
	if (x->soon)
		event_free(x->soon);
	if (x->deadline)
		event_free(x->deadline);
	if (x->poll)
		event_free(x->poll);
	PQfinish(x->conn);
	source_db_map_finish(&x->map);
	buf_finish(&x->converted);
	free(x->types);
	free(x->vals);
	free(x->cursor);
	free(x->last_id);
	free(x);
	s->state = NULL;
}

const struct source_ops source_pg_ops = {
	.watch = pg_watch,
	.scan = pg_scan,
	.is_caught_up = pg_is_caught_up,
	.close = pg_close,
};
