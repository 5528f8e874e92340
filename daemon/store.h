/* SPDX-License-Identifier: MIT */
/* The state database: opening with the durability pragmas, schema migrations,
 * transactions, attribute-name interning, and small statement helpers. */
#ifndef TPSYNC_STORE_H
#define TPSYNC_STORE_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "seq_ranges.h"

#define STORE_MAX_STMTS 96

struct store {
	sqlite3 *db;
	int err_code;      /* the last failure's extended result code (store_note_error) */
	char err_msg[256]; /* and its message, read before any rollback could clear it */
	struct {
		const char *sql;
		sqlite3_stmt *stmt;
	} stmts[STORE_MAX_STMTS];
	unsigned n_stmts;
	char **attr_names; /* by id; attr_names[0] unused */
	uint32_t n_attr_names;
	uint32_t cap_attr_names;
	int64_t next_seq;  /* for profiles.pending_seq */
	int64_t hold_from; /* pending rows with pending_seq >= this are held back (INT64_MAX: none) */
	/* Kept by the queue (queue.c), read by staging: batches are ranges of
	 * pending_seq. A profile whose pending changes have a pending_seq at or
	 * below batched_upto (and no inflight_batch) is in flight in the batch
	 * whose range in in_flight holds it, or, when none does, its batch is
	 * complete and those changes are accepted (the mirror). */
	int64_t batched_upto;
	struct seq_ranges in_flight;
	/* What was staged since the queue last cut a batch: an estimate from
	 * above (stage.c adds, queue.c sets it right when it looks), for the
	 * sender to know when a full batch is waiting without counting. */
	struct {
		int64_t rows, bytes; /* changed profiles; their attribute blobs' bytes */
		int64_t newest_at;   /* clock_wall_ms() of the latest staged change (0: none since start) */
	} staged;
	/* How much of each profile's staging history (history.h) staging keeps:
	 * trace.events and trace.max_age (the caller sets them from the
	 * configuration; 20 and 30 days until then). */
	struct {
		int64_t events, max_age_ms;
	} history;
	int has_dead_letters; /* -1: not known yet; kept by dead_letters.c */
	bool is_new;          /* created by store_create */
	bool is_replaced;     /* ... where its sentinel shows an earlier one existed */
};

/* store_create's flags. */
#define STORE_CHECK 1u   /* PRAGMA quick_check an existing database first (seconds per GB) */
#define STORE_SCRATCH 2u /* a copy to be deleted after use (a dry run): no sentinel, no checkpoint at close */

/* Opens (creating if needed) the database at path in WAL mode with
 * synchronous=FULL and applies missing migrations. Refuses a database that is
 * read-only, cannot be written, or (with STORE_CHECK) fails quick_check, with
 * a message that says how to recover. A new database gets a sentinel beside it
 * (PATH.created); st->is_replaced says a new one was made where the sentinel
 * shows an earlier one existed (it was deleted: everything it held is gone).
 * Returns a store the caller frees with store_destroy(), or NULL with the
 * reason in err. */
struct store *store_create(const char *path, unsigned flags, char *err, size_t err_size);
/* Moves the database at path (and its -wal and -shm) aside to
 * PATH.aside-TIMESTAMP, named in moved, and drops its sentinel, so that
 * store_create makes a new one (tpsyncd --fresh-state). Returns 0 or a
 * negative errno. */
int store_move_aside(const char *path, char *moved, size_t size);
void store_destroy(struct store *st);

/* Migrating a large state database takes minutes (about 3.5 s per million
 * profiles for version 3). hook(arg, from, to) is called when store_create
 * starts migrating an existing database from schema version from to version
 * to, then about every every_ms while it runs, so that the caller can tell its
 * supervisor that start-up is still making progress; and every every_ms of
 * the start-up check, with from and to -1. NULL: no calls. */
typedef void store_migration_hook(void *arg, int from, int to);
void store_on_migration(store_migration_hook *hook, void *arg, int64_t every_ms);

/* Transactions. begin uses BEGIN IMMEDIATE. Return 0 or -EIO (the error is
 * noted, see store_error); on a failed commit the transaction is rolled back. */
int store_begin(struct store *st);
int store_commit(struct store *st);
/* Rolls back the open transaction, if any (nothing to report). */
void store_rollback(struct store *st);
/* A statement failed: notes its error (store_error) and rolls back. */
void store_abort(struct store *st);
/* Notes the connection's last error as the failure to report (called when a
 * step fails; the helpers below do it themselves). */
void store_note_error(struct store *st);
/* The last noted failure, for the one log line the caller writes. */
const char *store_error(const struct store *st);

/* Prepares sql once (cached by the string's address, so pass literals) and returns
 * it reset with bindings cleared, ready to bind; NULL on error (see
 * sqlite3_errmsg). The store owns the statement. */
sqlite3_stmt *store_stmt(struct store *st, const char *sql);

/* Executes sql (no results, no parameters). Returns 0 or -EIO. */
int store_exec(struct store *st, const char *sql);

/* The bind/step/reset idiom. types names one parameter each, in order:
 *   'i' int64_t;  'z' int64_t, NULL when 0;  't' const char *, NULL binds NULL;
 *   's' const char *, int length;  'b' const void *, int length (a blob);
 *   'n' NULL (takes no argument).
 * Values are bound without copying: they must stay valid while the statement
 * runs (until it is reset, for store_prepare).
 * store_prepare returns the cached statement with the values bound, ready to
 * step (the store owns it), or NULL with the error noted. */
sqlite3_stmt *store_prepare(struct store *st, const char *sql, const char *types, ...);
/* Runs a statement that returns no rows: 0, or -EIO with the error noted. */
int store_run(struct store *st, const char *sql, const char *types, ...);
/* Runs a query that yields one integer; returns it, or fallback when it yields
 * no row or NULL (or fails: the error is noted). */
int64_t store_int(struct store *st, const char *sql, int64_t fallback, const char *types, ...);

/* The id of attribute name (interning it if new; needs an open transaction or
 * autocommit). Returns a positive id, or a negative errno. */
int64_t store_attr_id(struct store *st, const char *name, size_t len);
/* The name of attribute id, or NULL if unknown. */
const char *store_attr_name(const struct store *st, uint32_t id);

/* Ends the process if the last error on st was an I/O error other than a full
 * disk (a failed fsync above all): carrying on could build on writes that never
 * reached the disk. systemd restarts the daemon, which recovers from the WAL. */
void store_die_on_io_error(struct store *st);

#endif
