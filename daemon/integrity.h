/* SPDX-License-Identifier: MIT */
/* tpsyncctl check: SQLite's full PRAGMA integrity_check of the state database,
 * on its own read-only connection in a thread of its own (minutes for a large
 * database; the loop never waits for it). */
#ifndef TPSYNC_INTEGRITY_H
#define TPSYNC_INTEGRITY_H

#include <jansson.h>

struct integrity;

/* A checker for the database at path (copied). NULL on ENOMEM. */
struct integrity *integrity_create(const char *path);
/* Interrupts a check that is running, waits for its thread, frees x. */
void integrity_destroy(struct integrity *x);
/* Starts a check unless one is running. Returns 0, -EBUSY (one is running:
 * its status tells), or a negative errno from pthread_create. */
int integrity_start(struct integrity *x);
/* The last check: {"state": "none" | "running" | "ok" | "damaged" | "failed",
 * "started_at", "finished_at", "problems": [up to 20 of SQLite's lines]}.
 * The caller owns the object; NULL on ENOMEM. */
json_t *integrity_status(struct integrity *x);

#endif
