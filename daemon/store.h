/* SPDX-License-Identifier: MIT */
/* The state database: opening with the durability pragmas, schema migrations,
 * transactions, attribute-name interning, and small statement helpers. */
#ifndef TPSYNC_STORE_H
#define TPSYNC_STORE_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_MAX_STMTS 96

struct store {
	sqlite3 *db;
	struct {
		const char *sql;
		sqlite3_stmt *stmt;
	} stmts[STORE_MAX_STMTS];
	unsigned n_stmts;
	char **attr_names; /* by id; attr_names[0] unused */
	uint32_t n_attr_names;
	uint32_t cap_attr_names;
	int64_t next_seq;  /* for profiles.pending_seq */
	bool has_dead_letters; /* staging then checks for dead letters a new value supersedes */
};

/* Opens (creating if needed) the database at path in WAL mode with
 * synchronous=FULL and applies missing migrations. Returns a store the caller
 * frees with store_destroy(), or NULL with the reason in err. */
struct store *store_create(const char *path, char *err, size_t err_size);
void store_destroy(struct store *st);

/* Migrating a large state database takes minutes (about 3.5 s per million
 * profiles for version 3). hook(arg, from, to) is called when store_create
 * starts migrating an existing database from schema version from to version
 * to, then about every every_ms while it runs, so that the caller can tell its
 * supervisor that start-up is still making progress. NULL: no calls. */
typedef void store_migration_hook(void *arg, int from, int to);
void store_on_migration(store_migration_hook *hook, void *arg, int64_t every_ms);

/* Transactions. begin uses BEGIN IMMEDIATE. Return 0 or -EIO (the SQLite error is
 * in sqlite3_errmsg(st->db)); on a failed commit the transaction is rolled back. */
int store_begin(struct store *st);
int store_commit(struct store *st);
void store_rollback(struct store *st);

/* Prepares sql once (cached by the string's address, so pass literals) and returns
 * it reset with bindings cleared, ready to bind; NULL on error (see
 * sqlite3_errmsg). The store owns the statement. */
sqlite3_stmt *store_stmt(struct store *st, const char *sql);

/* Executes sql (no results). Returns 0 or -EIO. */
int store_exec(struct store *st, const char *sql);

/* The id of attribute name (interning it if new; needs an open transaction or
 * autocommit). Returns a positive id, or a negative errno. */
int64_t store_attr_id(struct store *st, const char *name, size_t len);
/* The name of attribute id, or NULL if unknown. */
const char *store_attr_name(const struct store *st, uint32_t id);

/* Ends the process if the last error on st was an I/O error other than a full
 * disk (a failed fsync above all): carrying on could build on writes that never
 * reached the disk. systemd restarts the daemon, which recovers from the WAL. */
void store_die_on_io_error(struct store *st);

/* Runs a query that yields one integer; returns it, or fallback when no row. */
int64_t store_query_int(struct store *st, const char *sql, int64_t fallback);

/* Wall-clock time in milliseconds since the epoch. */
int64_t now_ms(void);
/* Monotonic time in milliseconds (for durations). */
int64_t mono_ms(void);

#endif
