/* SPDX-License-Identifier: MIT */
/* SQLite state database. WAL with synchronous=FULL makes every commit durable
 * before the caller acts on it (archiving a file, sending a request), which is what
 * the at-least-once guarantee rests on. */
#include "store.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "attrset.h"
#include "clock.h"
#include "log.h"

extern const char *const schema_migrations[];
extern const size_t schema_migration_count;

void store_note_error(struct store *st)
{
	st->err_code = sqlite3_extended_errcode(st->db);
	snprintf(st->err_msg, sizeof(st->err_msg), "%s", sqlite3_errmsg(st->db));
}

const char *store_error(const struct store *st)
{
	return st->err_msg[0] ? st->err_msg : "unknown error";
}

int store_exec(struct store *st, const char *sql)
{
	char *msg = NULL;
	if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		store_note_error(st);
		sqlite3_free(msg);
		return -EIO;
	}
	return 0;
}

int store_begin(struct store *st)
{
	return store_exec(st, "BEGIN IMMEDIATE");
}

int store_commit(struct store *st)
{
	if (store_exec(st, "COMMIT") == 0) {
		/* A failure noted before is over. */
		st->err_code = 0;
		st->err_msg[0] = '\0';
		return 0;
	}
	if (!sqlite3_get_autocommit(st->db))
		store_rollback(st);
	return -EIO;
}

void store_rollback(struct store *st)
{
	if (!sqlite3_get_autocommit(st->db))
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
}

void store_abort(struct store *st)
{
	store_note_error(st);
	store_rollback(st);
}

sqlite3_stmt *store_stmt(struct store *st, const char *sql)
{
	for (unsigned i = 0; i < st->n_stmts; i++) {
		if (st->stmts[i].sql == sql) {
			sqlite3_stmt *s = st->stmts[i].stmt;
			sqlite3_reset(s);
			sqlite3_clear_bindings(s);
			return s;
		}
	}
	sqlite3_stmt *s;
	if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, NULL) != SQLITE_OK)
		return NULL;
	if (st->n_stmts == STORE_MAX_STMTS)
		return s; /* cannot happen with the fixed set of call sites; leaks one statement */
	st->stmts[st->n_stmts].sql = sql;
	st->stmts[st->n_stmts].stmt = s;
	st->n_stmts++;
	return s;
}

void store_die_on_io_error(struct store *st)
{
	int code = sqlite3_extended_errcode(st->db);
	const char *msg = sqlite3_errmsg(st->db);
	if ((code & 0xff) != SQLITE_IOERR) {
		code = st->err_code;
		msg = st->err_msg;
	}
	if ((code & 0xff) == SQLITE_CORRUPT || (code & 0xff) == SQLITE_NOTADB) {
		log_err("msg=\"state database damaged; exiting (the start-up check tells how to recover)\" error=\"%s\" "
			"code=%d", msg, code);
		_exit(74); /* EX_IOERR */
	}
	if ((code & 0xff) != SQLITE_IOERR || code == SQLITE_IOERR_NOMEM)
		return;
	log_err("msg=\"state database I/O error; exiting so nothing builds on lost writes\" error=\"%s\" code=%d",
		msg, code);
	_exit(74); /* EX_IOERR */
}

/* Binds the values named by types (see store.h) from ap to s. */
static void bind_values(sqlite3_stmt *s, const char *types, va_list ap)
{
	int i = 1;
	for (const char *t = types; *t; t++, i++) {
		switch (*t) {
		case 'i':
			sqlite3_bind_int64(s, i, va_arg(ap, int64_t));
			break;
		case 'z': {
			int64_t v = va_arg(ap, int64_t);
			if (v)
				sqlite3_bind_int64(s, i, v);
			break;
		}
		case 't': {
			const char *v = va_arg(ap, const char *);
			if (v)
				sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
			break;
		}
		case 's': {
			const char *v = va_arg(ap, const char *);
			int len = va_arg(ap, int);
			if (v)
				sqlite3_bind_text(s, i, v, len, SQLITE_STATIC);
			break;
		}
		case 'b': {
			const void *v = va_arg(ap, const void *);
			int len = va_arg(ap, int);
			sqlite3_bind_blob(s, i, v ? v : "", len, SQLITE_STATIC);
			break;
		}
		default: /* 'n': left NULL */
			break;
		}
	}
}

sqlite3_stmt *store_prepare(struct store *st, const char *sql, const char *types, ...)
{
	sqlite3_stmt *s = store_stmt(st, sql);
	if (!s) {
		store_note_error(st);
		return NULL;
	}
	va_list ap;
	va_start(ap, types);
	bind_values(s, types, ap);
	va_end(ap);
	return s;
}

int store_run(struct store *st, const char *sql, const char *types, ...)
{
	sqlite3_stmt *s = store_stmt(st, sql);
	if (!s) {
		store_note_error(st);
		return -EIO;
	}
	va_list ap;
	va_start(ap, types);
	bind_values(s, types, ap);
	va_end(ap);
	int rc = sqlite3_step(s);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		store_note_error(st);
	sqlite3_reset(s);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -EIO;
}

int64_t store_int(struct store *st, const char *sql, int64_t fallback, const char *types, ...)
{
	sqlite3_stmt *s = store_stmt(st, sql);
	if (!s) {
		store_note_error(st);
		return fallback;
	}
	va_list ap;
	va_start(ap, types);
	bind_values(s, types, ap);
	va_end(ap);
	int64_t v = fallback;
	int rc = sqlite3_step(s);
	if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
		v = sqlite3_column_int64(s, 0);
	else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		store_note_error(st);
	sqlite3_reset(s);
	return v;
}

static int remember_attr(struct store *st, int64_t id, const char *name, size_t len)
{
	if (id <= 0 || id > UINT32_MAX - 1)
		return -EINVAL;
	if ((uint32_t)id >= st->cap_attr_names) {
		uint32_t cap = st->cap_attr_names ? st->cap_attr_names : 64;
		while (cap <= (uint32_t)id)
			cap *= 2;
		char **names = realloc(st->attr_names, cap * sizeof(*names));
		if (!names)
			return -ENOMEM;
		memset(names + st->cap_attr_names, 0, (cap - st->cap_attr_names) * sizeof(*names));
		st->attr_names = names;
		st->cap_attr_names = cap;
	}
	char *copy = strndup(name, len);
	if (!copy)
		return -ENOMEM;
	free(st->attr_names[id]);
	st->attr_names[id] = copy;
	if ((uint32_t)id >= st->n_attr_names)
		st->n_attr_names = (uint32_t)id + 1;
	return 0;
}

int64_t store_attr_id(struct store *st, const char *name, size_t len)
{
	for (uint32_t i = 1; i < st->n_attr_names; i++) {
		const char *n = st->attr_names[i];
		if (n && strlen(n) == len && memcmp(n, name, len) == 0)
			return i;
	}
	sqlite3_stmt *s = store_stmt(st, "INSERT INTO attr_names(name) VALUES (?)");
	if (!s)
		return -EIO;
	sqlite3_bind_text(s, 1, name, (int)len, SQLITE_TRANSIENT);
	if (sqlite3_step(s) != SQLITE_DONE) {
		sqlite3_reset(s);
		return -EIO;
	}
	sqlite3_reset(s);
	int64_t id = sqlite3_last_insert_rowid(st->db);
	int r = remember_attr(st, id, name, len);
	return r < 0 ? r : id;
}

const char *store_attr_name(const struct store *st, uint32_t id)
{
	return id < st->n_attr_names ? st->attr_names[id] : NULL;
}

/* SQL function tpsync_attrs_v2(blob) for migration 3: an attribute blob in
 * format 1 rewritten in format 2 (attrset.h); NULL stays NULL. A blob that
 * does not decode fails the statement, and so the migration, which rolls
 * back: the database stays as it was rather than lose values. */
static void attrs_v2(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	if (sqlite3_value_type(argv[0]) == SQLITE_NULL) {
		sqlite3_result_null(ctx);
		return;
	}
	const void *blob = sqlite3_value_blob(argv[0]);
	size_t len = (size_t)sqlite3_value_bytes(argv[0]);
	struct attrset set;
	struct buf out;
	attrset_init(&set);
	buf_init(&out);
	int r = attrset_decode_v1(&set, blob, len);
	if (r == 0)
		r = attrset_encode(&set, &out);
	if (r == -ENOMEM)
		sqlite3_result_error_nomem(ctx);
	else if (r < 0)
		sqlite3_result_error(ctx, "tpsync_attrs_v2: a corrupt attribute blob", -1);
	else
		sqlite3_result_blob(ctx, out.len ? out.data : "", (int)out.len, SQLITE_TRANSIENT);
	attrset_finish(&set);
	buf_finish(&out);
}

/* Decodes argument i (NULL: the empty set) into set. Returns 0 or -EINVAL. */
static int arg_set(sqlite3_value **argv, int i, struct attrset *set)
{
	if (sqlite3_value_type(argv[i]) == SQLITE_NULL) {
		attrset_clear(set);
		return 0;
	}
	return attrset_decode(set, sqlite3_value_blob(argv[i]), (size_t)sqlite3_value_bytes(argv[i]));
}

/* SQL functions over attribute blobs (format 2), which fail their statement
 * (and so roll its transaction back) on a blob that does not decode:
 *   tpsync_attrs_overlay(base, top): base with top's values over it;
 *   tpsync_attrs_merge_latest(pending, inflight, accepted): pending plus,
 *     for every attribute it lacks, the latest value sent (in flight, else
 *     accepted): what sends a profile's latest values again.
 * A NULL blob is the empty set; an empty result is NULL. */
static void attrs_combine(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	struct attrset sets[3], out;
	struct buf blob;
	int r = 0;
	for (int i = 0; i < 3; i++)
		attrset_init(&sets[i]);
	attrset_init(&out);
	buf_init(&blob);
	for (int i = 0; i < argc && r == 0; i++)
		r = arg_set(argv, i, &sets[i]);
	if (r == 0 && argc == 2) {
		r = attrset_overlay(&out, &sets[0]);
		if (r == 0)
			r = attrset_overlay(&out, &sets[1]);
	} else if (r == 0) {
		/* Oldest first, so that the newer layers win. */
		for (int i = 2; i >= 0 && r == 0; i--)
			r = attrset_overlay(&out, &sets[i]);
	}
	if (r == 0)
		r = attrset_encode(&out, &blob);
	if (r == -ENOMEM)
		sqlite3_result_error_nomem(ctx);
	else if (r < 0)
		sqlite3_result_error(ctx, "tpsync_attrs: a corrupt attribute blob", -1);
	else if (out.n == 0)
		sqlite3_result_null(ctx);
	else
		sqlite3_result_blob(ctx, blob.data, (int)blob.len, SQLITE_TRANSIENT);
	for (int i = 0; i < 3; i++)
		attrset_finish(&sets[i]);
	attrset_finish(&out);
	buf_finish(&blob);
}

/* SQL function tpsync_completed_at(pending_seq): when the complete batch
 * whose range holds pending_seq completed (NULL: none). Staging and the
 * queue use it to stamp folded values with their acceptance. */
static void completed_at(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	struct store *st = sqlite3_user_data(ctx);
	int64_t seq = sqlite3_value_int64(argv[0]);
	int64_t at = store_int(st, "SELECT completed_at FROM batches WHERE seq_hi >= ?1 AND seq_lo <= ?1"
				   " AND state = 'complete' ORDER BY seq_hi LIMIT 1", 0, "i", seq);
	if (at)
		sqlite3_result_int64(ctx, at);
	else
		sqlite3_result_null(ctx);
}

static struct {
	store_migration_hook *hook;
	void *arg;
	int64_t every_ms;
	int64_t last_ms; /* when the hook was last called */
	int from, to;
} migration;

void store_on_migration(store_migration_hook *hook, void *arg, int64_t every_ms)
{
	migration.hook = hook;
	migration.arg = arg;
	migration.every_ms = every_ms;
}

/* SQLite's progress handler while migrating: calls the hook when it is due.
 * Returns 0 (go on). */
static int migration_progress(void *unused)
{
	int64_t now = clock_mono_ms();
	if (now - migration.last_ms >= migration.every_ms) {
		migration.last_ms = now;
		migration.hook(migration.arg, migration.from, migration.to);
	}
	return 0;
}

static int check_progress(void *unused)
{
	int64_t now = clock_mono_ms();
	if (now - migration.last_ms >= migration.every_ms) {
		migration.last_ms = now;
		migration.hook(migration.arg, -1, -1);
	}
	return 0;
}

static int migrate(struct store *st, char *err, size_t err_size)
{
	int64_t version = store_int(st, "PRAGMA user_version", 0, "");
	if (version > (int64_t)schema_migration_count) {
		snprintf(err, err_size, "database schema version %lld is newer than this tpsyncd (%zu)",
			 (long long)version, schema_migration_count);
		return -EPROTO;
	}
	/* An existing database (a new one is created in no time). */
	bool upgrade = version > 0 && version < (int64_t)schema_migration_count;
	if (upgrade)
		log_info("msg=\"migrating the state database\" from=%lld to=%zu", (long long)version,
			 schema_migration_count);
	if (upgrade && migration.hook) {
		migration.from = (int)version;
		migration.to = (int)schema_migration_count;
		migration.last_ms = clock_mono_ms();
		migration.hook(migration.arg, migration.from, migration.to);
		/* Every 10,000 virtual machine steps: a few times a millisecond. */
		sqlite3_progress_handler(st->db, 10000, migration_progress, NULL);
	}
	int r = 0;
	for (size_t v = (size_t)version; v < schema_migration_count && r == 0; v++) {
		char pragma[64];
		snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %zu", v + 1);
		if (store_begin(st) < 0 || store_exec(st, schema_migrations[v]) < 0 ||
		    store_exec(st, pragma) < 0 || store_commit(st) < 0) {
			snprintf(err, err_size, "migration %zu failed: %s", v + 1, sqlite3_errmsg(st->db));
			store_rollback(st);
			r = -EIO;
		} else {
			log_info("msg=\"schema migrated\" version=%zu", v + 1);
		}
	}
	sqlite3_progress_handler(st->db, 0, NULL, NULL);
	return r;
}

static int load_attr_names(struct store *st)
{
	sqlite3_stmt *s = store_stmt(st, "SELECT id, name FROM attr_names");
	if (!s)
		return -EIO;
	int rc;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		int r = remember_attr(st, sqlite3_column_int64(s, 0), (const char *)sqlite3_column_text(s, 1),
				      (size_t)sqlite3_column_bytes(s, 1));
		if (r < 0) {
			sqlite3_reset(s);
			return r;
		}
	}
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

/* How to recover, for the messages that refuse a database. */
#define STORE_RECOVERY "restore a backup (tpsyncctl backup makes one), or start anew with tpsyncd --fresh-state " \
		       "(the database is moved aside; sources are read again and everything is sent once more)"

/* The sentinel beside a database: written when it is created, it shows later
 * that a database existed here. */
static void sentinel_path(const char *path, char *out, size_t size)
{
	snprintf(out, size, "%s.created", path);
}

static int write_sentinel(const char *path)
{
	char s[4200];
	sentinel_path(path, s, sizeof(s));
	FILE *f = fopen(s, "we");
	if (!f)
		return -errno;
	fprintf(f, "created %lld\n", (long long)(clock_wall_ms() / 1000));
	return fclose(f) == 0 ? 0 : -errno;
}

/* SQLite's progress handler during the start-up check (minutes for a large
 * database): the migration hook tells the supervisor start-up goes on. */
static int check_progress(void *unused);

/* PRAGMA quick_check: every page and index is readable and consistent (not
 * the full cross-check of integrity_check). Returns 0 or -EUCLEAN with the
 * first problem in err. */
static int quick_check(struct store *st, const char *path, char *err, size_t err_size)
{
	sqlite3_stmt *s = NULL;
	int r = 0;
	if (sqlite3_prepare_v2(st->db, "PRAGMA quick_check", -1, &s, NULL) != SQLITE_OK) {
		snprintf(err, err_size, "state database %s cannot be checked (%s): %s", path, sqlite3_errmsg(st->db),
			 STORE_RECOVERY);
		return -EUCLEAN;
	}
	int rc = sqlite3_step(s);
	const char *first = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(s, 0) : sqlite3_errmsg(st->db);
	if (rc != SQLITE_ROW || !first || strcmp(first, "ok") != 0) {
		/* SQLite's report spans lines: one line of it, shortened. */
		char detail[160];
		size_t n = 0;
		for (const char *p = first ? first : "?"; *p && n + 1 < sizeof(detail); p++)
			if (*p != '*' || n) /* "*** in database main ***" leads it */
				detail[n++] = *p == '\n' ? ' ' : *p;
		detail[n] = '\0';
		snprintf(err, err_size, "state database %s is damaged; %s (quick_check: %s)", path, STORE_RECOVERY, detail);
		r = -EUCLEAN;
	}
	sqlite3_finalize(s);
	return r;
}

struct store *store_create(const char *path, unsigned flags, char *err, size_t err_size)
{
	struct store *st = calloc(1, sizeof(*st));
	if (!st) {
		snprintf(err, err_size, "out of memory");
		return NULL;
	}
	char sentinel[4200];
	sentinel_path(path, sentinel, sizeof(sentinel));
	struct stat sb;
	bool existed = stat(path, &sb) == 0 && sb.st_size > 0;
	st->is_new = !existed;
	st->is_replaced = !existed && access(sentinel, F_OK) == 0;
	if (sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			    NULL) != SQLITE_OK) {
		snprintf(err, err_size, "cannot open %s: %s", path,
			 st->db ? sqlite3_errmsg(st->db) : "out of memory");
		goto fail;
	}
	sqlite3_extended_result_codes(st->db, 1);
	/* A database SQLite opened read-only (its file mode, an immutable
	 * attribute, a read-only mount) would fail every write later. */
	if (sqlite3_db_readonly(st->db, "main") == 1) {
		snprintf(err, err_size, "state database %s is read-only (file permissions, an immutable attribute or a "
					"read-only mount); tpsyncd writes it", path);
		goto fail;
	}
	if (existed && (flags & STORE_CHECK)) {
		if (migration.hook) {
			migration.last_ms = clock_mono_ms();
			sqlite3_progress_handler(st->db, 100000, check_progress, NULL);
		}
		int r = quick_check(st, path, err, err_size);
		sqlite3_progress_handler(st->db, 0, NULL, NULL);
		if (r < 0)
			goto fail;
	}
	/* A bounded cache keeps memory flat however large the mirror grows; 8 KiB
	 * pages made first ingests 10% faster than 4 KiB (bench/bench.py). */
	static const char *const pragmas =
		"PRAGMA page_size=8192;"
		"PRAGMA journal_mode=WAL;"
		"PRAGMA synchronous=FULL;"
		"PRAGMA foreign_keys=ON;"
		"PRAGMA cache_size=-16384;"
		"PRAGMA temp_store=MEMORY;"
		"PRAGMA busy_timeout=5000;";
	if (store_exec(st, pragmas) < 0) {
		snprintf(err, err_size, "cannot set up %s: %s", path, sqlite3_errmsg(st->db));
		goto fail;
	}
	char *mode = NULL;
	sqlite3_stmt *s = store_stmt(st, "PRAGMA journal_mode");
	if (s && sqlite3_step(s) == SQLITE_ROW)
		mode = strdup((const char *)sqlite3_column_text(s, 0));
	if (s)
		sqlite3_reset(s);
	if (!mode || strcmp(mode, "wal") != 0) {
		snprintf(err, err_size, "%s: WAL mode is not available (journal_mode=%s)", path,
			 mode ? mode : "?");
		free(mode);
		goto fail;
	}
	free(mode);
	if (sqlite3_create_function_v2(st->db, "tpsync_attrs_v2", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
				       attrs_v2, NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_create_function_v2(st->db, "tpsync_attrs_overlay", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
				       attrs_combine, NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_create_function_v2(st->db, "tpsync_attrs_merge_latest", 3, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
				       NULL, attrs_combine, NULL, NULL, NULL) != SQLITE_OK) {
		snprintf(err, err_size, "cannot set up %s: %s", path, sqlite3_errmsg(st->db));
		goto fail;
	}
	if (migrate(st, err, err_size) < 0)
		goto fail;
	if (sqlite3_create_function_v2(st->db, "tpsync_completed_at", 1, SQLITE_UTF8, st, completed_at, NULL, NULL,
				       NULL) != SQLITE_OK) {
		snprintf(err, err_size, "cannot set up %s: %s", path, sqlite3_errmsg(st->db));
		goto fail;
	}
	st->history.events = 20;
	st->history.max_age_ms = 30LL * 86400 * 1000;
	if (load_attr_names(st) < 0) {
		snprintf(err, err_size, "cannot read attribute names: %s", sqlite3_errmsg(st->db));
		goto fail;
	}
	/* Above every pending_seq a batch was ever cut at, too: a new change must
	 * never look like one in flight (see struct store). */
	st->next_seq = store_int(st, "SELECT max(coalesce((SELECT max(pending_seq) FROM profiles), 0),"
				     " coalesce((SELECT max(seq_hi) FROM batches), 0))", 0, "") + 1;
	st->hold_from = INT64_MAX;
	st->has_dead_letters = -1; /* not known yet: see dead_letters.c */
	/* A first write proves the database writable (and makes the WAL) now,
	 * rather than at the first file. */
	if (store_exec(st, "BEGIN IMMEDIATE; COMMIT") < 0) {
		snprintf(err, err_size, "state database %s cannot be written: %s", path, store_error(st));
		goto fail;
	}
	/* Its WAL is never needed again: closing skips copying it back. */
	if ((flags & STORE_SCRATCH) && sqlite3_db_config(st->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL) != SQLITE_OK)
		log_warn("msg=\"cannot skip the scratch database's checkpoint\" error=\"%s\"", sqlite3_errmsg(st->db));
	if (st->is_new && !(flags & STORE_SCRATCH) && write_sentinel(path) < 0)
		log_warn("msg=\"cannot write the state database's sentinel\" path=\"%s\" error=\"%s\"", sentinel,
			 strerror(errno));
	return st;
fail:
	store_destroy(st);
	return NULL;
}

void store_destroy(struct store *st)
{
	if (!st)
		return;
	for (unsigned i = 0; i < st->n_stmts; i++)
		sqlite3_finalize(st->stmts[i].stmt);
	for (uint32_t i = 0; i < st->n_attr_names; i++)
		free(st->attr_names[i]);
	free(st->attr_names);
	seq_ranges_finish(&st->in_flight);
	if (st->db)
		sqlite3_close(st->db);
	free(st);
}

int store_move_aside(const char *path, char *moved, size_t size)
{
	char stamp[32], from[4200], to[4300];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	snprintf(moved, size, "%s.aside-%s", path, stamp);
	if (rename(path, moved) < 0 && errno != ENOENT)
		return -errno;
	static const char *const extra[] = { "-wal", "-shm" };
	for (size_t i = 0; i < 2; i++) {
		snprintf(from, sizeof(from), "%s%s", path, extra[i]);
		snprintf(to, sizeof(to), "%s%s", moved, extra[i]);
		if (rename(from, to) < 0 && errno != ENOENT)
			return -errno;
	}
	char sentinel[4200];
	sentinel_path(path, sentinel, sizeof(sentinel));
	if (unlink(sentinel) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}
