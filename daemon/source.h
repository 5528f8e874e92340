/* SPDX-License-Identifier: MIT */
/* Sources: the places customer data comes from. Each kind is a driver (struct
 * source_ops) in the table in source.c, as chrony's refclock drivers are; a
 * source is created with what it needs from above (struct source_env) and
 * reports progress through its listener. Spool and snapshot sources hand
 * complete files to the ingestion queue; database sources stage rows
 * themselves (source_db.c), a slice at a time. */
#ifndef TPSYNC_SOURCE_H
#define TPSYNC_SOURCE_H

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>

#include "attrset.h"
#include "config.h"
#include "ingest.h"
#include "source_stats.h"
#include "stage.h"
#include "store.h"

struct source_listener {
	/* Rows were staged, or a database source caught up: the sender may have
	 * work, and --once may be done. */
	void (*progress)(void *arg);
};

/* What every source gets from the daemon: shared by all of them, owned by the
 * caller, which keeps it alive while any source exists. */
struct source_env {
	struct event_base *base;
	struct store *st;
	struct ingest *ingest;
	bool is_dry_run;   /* leave files where they are */
	bool is_stopping;  /* set at shutdown: database sources read no new slice */
	const struct source_listener *listener;
	void *arg;
};

struct source;

/* A kind of source. watch starts it (creating s->state) or returns a
 * negative errno with the detail in s->stats.last_error; close frees what
 * watch made, even after a failed watch. */
struct source_ops {
	int (*watch)(struct source *s);
	/* Queues every complete file, or reads what changed in a database; with
	 * from_start (tpsyncctl rescan) a database source re-reads its whole
	 * result. Returns 0 or a negative errno (detail in s->stats.last_error). */
	int (*scan)(struct source *s, bool from_start);
	/* True when there is nothing known left to read (--once waits for it);
	 * NULL: always (files are queued for ingestion as soon as they are seen). */
	bool (*is_caught_up)(const struct source *s);
	void (*close)(struct source *s);
	/* Adds the kind's own fields to its tpsyncctl sources entry; may be NULL. */
	void (*status)(const struct source *s, json_t *obj);
};

struct source {
	const struct source_ops *ops;
	struct source_env *env;
	const struct source_config *cfg;
	struct source_stats stats;
	void *state; /* the driver's own */
};

/* Creates the source for cfg and starts watching (the watch is set up before
 * the first scan so nothing that arrives in between is missed). Returns 0 and
 * the source in *out, or a negative errno with the reason in err. */
int source_create(struct source_env *env, const struct source_config *cfg, struct source **out, char *err,
		  size_t err_size);
void source_destroy(struct source *s);

/* See struct source_ops. */
int source_scan(struct source *s, bool from_start);
bool source_is_caught_up(const struct source *s);

/* Reports rows staged (or caught up) to the source's listener. */
void source_progress(struct source *s);

/* The source's entry in tpsyncctl status and sources. NULL on ENOMEM. */
json_t *source_status_json(const struct source *s);
/* Prometheus lines for the source (rows by outcome). */
void source_metrics(const struct source *s, FILE *out);

/* The drivers (source_spool.c, source_snapshot.c, source_sqlite.c, and
 * source_postgres.c when built with libpq). */
extern const struct source_ops source_spool_ops;
extern const struct source_ops source_snapshot_ops;
extern const struct source_ops source_sqlite_ops;
extern const struct source_ops source_pg_ops;

/* source_db.c: what the database sources share. A mapping turns one query's
 * result columns into attributes (id_column, cursor_column, exclude, columns). */
struct source_db_map {
	int n_cols;
	int id_col, cursor_col;
	uint32_t *col_attr; /* attribute id per result column; 0: not sent */
	struct stage sg;
	struct attrset incoming; /* the row being staged */
};

void source_db_map_init(struct source_db_map *m, struct store *st);
/* Maps n result columns, named by name(res, c), for s's configuration. Returns 0,
 * or a negative errno with the reason in s->stats.last_error. */
int source_db_map_build(struct source *s, struct source_db_map *m, int n, const char *(*name)(void *res, int c),
			void *res);
void source_db_map_reset(struct source_db_map *m);
void source_db_map_finish(struct source_db_map *m);

/* Stages the row whose values are in m->incoming under id, read at position
 * (its cursor value as text, for the profile's history; may be NULL), or
 * rejects it (with why, when the caller already knows the row is bad; the id
 * is checked here): counted, noted as the source's last error and logged.
 * Returns 0, or a negative errno when the state database failed (the slice
 * must be rolled back). */
int source_db_stage_row(struct source *s, struct source_db_map *m, const char *id, size_t id_len, const char *position,
			const char *why);

/* Sets s->stats.last_error (about the source itself, not one row). */
void source_db_note(struct source *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Shows where reading has got to (tpsyncctl sources' "last" column): called
 * after a slice commits, with the last row's cursor and id as text. */
void source_db_note_position(struct source *s, const char *cursor, const char *id);

/* The read position in source_state: source_db_position_load returns a
 * statement to step (one row: cursor, last_id; none: from the start) and reset;
 * source_db_position_stmt returns the upsert with the source and time bound, for
 * the caller to bind ?2 (cursor) and ?3 (last id) and pass to
 * source_db_position_save. NULL on errors. */
sqlite3_stmt *source_db_position_load(struct source *s);
sqlite3_stmt *source_db_position_stmt(struct source *s);
int source_db_position_save(struct source *s, sqlite3_stmt *u);

/* One slice of rows goes into one state transaction with the position it reaches.
 * source_db_slice_begin opens it (0 or -EIO); source_db_slice_end commits when r
 * is 0, or rolls back (the caller then reloads its position and reads the slice
 * again), and returns r or the commit's error. rows > 0 marks progress. */
int source_db_slice_begin(struct source *s);
int source_db_slice_end(struct source *s, int r, int rows);

#endif
