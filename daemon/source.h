/* SPDX-License-Identifier: MIT */
/* Sources: the places customer data comes from. Each watches its files with
 * inotify on the event loop and hands complete files to the ingestion queue. */
#ifndef TPSYNC_SOURCE_H
#define TPSYNC_SOURCE_H

#include "daemon.h"
#include "ingest.h"

struct source {
	struct daemon *d;
	const struct source_config *cfg;
	struct source_stats stats;
	int inotify_fd;
	struct event *ev;
	struct sqlite_source *sqlite; /* type: sqlite */
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
void sqlite_source_close(struct source *s);

#endif
