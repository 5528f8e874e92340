/* SPDX-License-Identifier: MIT */
/* tpsyncctl backup FILE: a consistent copy of the state database while the
 * daemon runs, with SQLite's online backup API in steps on the loop (the
 * daemon's own writes between steps go into the copy too: same connection). */
#ifndef TPSYNC_BACKUP_H
#define TPSYNC_BACKUP_H

#include <event2/event.h>
#include <jansson.h>
#include <sqlite3.h>

struct backup;

/* A backer-up of db (the daemon's connection) on base. NULL on ENOMEM. */
struct backup *backup_create(struct event_base *base, sqlite3 *db);
/* Abandons a copy under way (its partial file is removed) and frees b. */
void backup_destroy(struct backup *b);

/* Starts copying into path, which must be absolute and not exist yet; the copy
 * is written to path.tmp (a new regular file, mode 0600, never a FIFO or a
 * link followed), synced, and renamed to path when complete. Returns 0,
 * -EBUSY (a copy is under way), -EINVAL (a relative path), -EEXIST, or the
 * errno of creating the file, with the reason in err. */
int backup_start(struct backup *b, const char *path, char *err, size_t size);

/* The last copy: {"state": "none" | "running" | "done" | "failed", "path",
 * "pages_done", "pages_total", "bytes", "started_at", "finished_at", "error"}.
 * The caller owns the object; NULL on ENOMEM. */
json_t *backup_status(struct backup *b);

#endif
