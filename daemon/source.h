/* SPDX-License-Identifier: MIT */
/* Sources: the places customer data comes from. Each watches its files with
 * inotify on the event loop and hands complete files to the ingestion queue. */
#ifndef TPSYNC_SOURCE_H
#define TPSYNC_SOURCE_H

#include <errno.h>

#include "attrset.h"
#include "build_config.h"
#include "daemon.h"
#include "ingest.h"
#include "stage.h"
#include "store.h"

struct source {
	struct daemon *d;
	const struct source_config *cfg;
	struct source_stats stats;
	int inotify_fd;
	struct event *ev;
	struct sqlite_source *sqlite; /* type: sqlite */
	struct pg_source *pg;         /* type: postgres */
};

/* Creates the source for cfg and starts watching (the watch is set up before the
 * first scan so nothing that arrives in between is missed). Returns 0 and the
 * source in *out, or a negative errno with the reason logged. */
int source_create(struct daemon *d, const struct source_config *cfg, struct source **out);
void source_destroy(struct source *s);

/* Queues every complete file the source has now, or reads what changed in a
 * database (start-up). Returns 0 or a negative errno. */
int source_scan(struct source *s);
/* tpsyncctl rescan: like source_scan, but a database source re-reads its whole
 * result (diffed against the mirror, so unchanged rows send nothing). */
int source_rescan(struct source *s);

/* True when the source has nothing it knows of left to read: files are queued
 * for ingestion as soon as they are seen (always true); a database source has
 * read to the end of its result and no read is scheduled (--once waits for it). */
bool source_is_caught_up(const struct source *s);

struct inotify_event;

/* Reads every pending event on s->inotify_fd and calls handle for each (read
 * errors other than "nothing more" are logged once here), passing arg along. */
void source_read_events(struct source *s, void (*handle)(struct source *s, const struct inotify_event *ev, void *arg),
			void *arg);

/* source_spool.c / source_snapshot.c */
int spool_watch(struct source *s);
int spool_scan(struct source *s);
int snapshot_watch(struct source *s);
int snapshot_scan(struct source *s);
/* source_sqlite.c: scan reads what changed; rescan re-reads everything. */
int sqlite_source_watch(struct source *s);
int sqlite_source_scan(struct source *s, bool from_start);
bool sqlite_source_is_caught_up(const struct source *s);
void sqlite_source_close(struct source *s);

/* source_postgres.c (built with libpq): like the SQLite source, plus LISTEN. */
#if HAVE_LIBPQ
int pg_source_watch(struct source *s);
int pg_source_scan(struct source *s, bool from_start);
bool pg_source_is_caught_up(const struct source *s);
void pg_source_close(struct source *s);
#else
/* Built without libpq (-Dpostgres=disabled): the config loader refuses
 * type: postgres, so these are never reached with such a source. */
static inline int pg_source_watch(struct source *s) { return -ENOTSUP; }
static inline int pg_source_scan(struct source *s, bool from_start) { return -ENOTSUP; }
static inline bool pg_source_is_caught_up(const struct source *s) { return true; }
static inline void pg_source_close(struct source *s) { }
#endif

/* source_db.c: what the database sources share. A mapping turns one query's
 * result columns into attributes (id_column, cursor_column, exclude, columns). */
struct db_mapping {
	int n_cols;
	int id_col, cursor_col;
	uint32_t *col_attr; /* attribute id per result column; 0: not sent */
	struct stage sg;
	struct attrset incoming; /* the row being staged */
};

void db_mapping_init(struct db_mapping *m, struct store *st);
/* Maps n result columns, named by name(res, c), for s's configuration. Returns 0,
 * or a negative errno with the reason in s->stats.last_error. */
int db_mapping_build(struct source *s, struct db_mapping *m, int n, const char *(*name)(void *res, int c), void *res);
void db_mapping_reset(struct db_mapping *m);
void db_mapping_finish(struct db_mapping *m);

/* Stages the row whose values are in m->incoming under id, or rejects it (with
 * why, when the caller already knows the row is bad; the id is checked here):
 * counted, noted as the source's last error and logged. Returns 0, or a negative
 * errno when the state database failed (the slice must be rolled back). */
int db_stage_row(struct source *s, struct db_mapping *m, const char *id, size_t id_len, const char *why);

/* Sets s->stats.last_error. */
void db_note(struct source *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Shows where reading has got to (tpsyncctl sources' "last" column): called
 * after a slice commits, with the last row's cursor and id as text. */
void db_note_position(struct source *s, const char *cursor, const char *id);
/* True when the last error is about one rejected row, not the source itself. */
bool db_is_row_note(const struct source *s);

/* The read position in source_state: db_position_load returns a statement to
 * step (one row: cursor, last_id; none: from the start) and reset; db_position_stmt
 * returns the upsert with the source and time bound, for the caller to bind
 * ?2 (cursor) and ?3 (last id) and pass to db_position_save. NULL on errors. */
sqlite3_stmt *db_position_load(struct source *s);

/* One slice of rows goes into one state transaction with the position it reaches.
 * db_slice_begin opens it (0 or -EIO); db_slice_end commits when r is 0, or
 * rolls back (the caller then reloads its position and reads the slice again),
 * and returns r or the commit's error. rows > 0 marks progress. */
int db_slice_begin(struct source *s);
int db_slice_end(struct source *s, int r, int rows);
sqlite3_stmt *db_position_stmt(struct source *s);
int db_position_save(sqlite3_stmt *u);

#endif
