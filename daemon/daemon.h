/* SPDX-License-Identifier: MIT */
/* The daemon's shared context: configuration, state database, event loop and the
 * modules hanging off it. One process, one thread, one libevent base. */
#ifndef TPSYNC_DAEMON_H
#define TPSYNC_DAEMON_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "store.h"

struct sender;
struct control;
struct ingest;
struct source;

struct daemon {
	struct config *cfg;
	struct store *st;
	struct event_base *base;
	struct sender *sender;
	struct control *control;
	struct ingest *ingest;
	struct source **sources; /* one per cfg->sources entry */
	size_t n_sources;
	int64_t started_at;
	bool is_once;          /* --once: exit when everything is delivered */
	int64_t once_deadline; /* --once --wait: give up waiting for final status then */
	const char *dry_run_dir; /* --dry-run DIR: write batch files instead of sending */
	bool is_stopping;
	int exit_code;
	char last_error[1024]; /* shown in status; e.g. a failed reload */
};

/* Re-reads the config file and the token (SIGHUP, tpsyncctl reload). On a bad
 * config the old one stays, the error goes to d->last_error and -EINVAL is
 * returned. Settings that need a restart (state.database, control.socket) are
 * reported and kept. */
int daemon_reload(struct daemon *d);

/* Called by modules when something changed that may let --once finish or the
 * sender move on (a file finished, a batch completed). */
void daemon_progress(struct daemon *d);

#endif
