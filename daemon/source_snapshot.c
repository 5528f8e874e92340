/* SPDX-License-Identifier: MIT */
/* Snapshot files: one file holding the full state, rewritten in place or replaced
 * by rename. The parent directory is watched, so the file may be deleted and
 * recreated; each new version is diffed against what Target was given, which
 * makes an unchanged snapshot cost one lookup per row and send nothing. */
#include "source.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

static const char *file_name(const struct source *s)
{
	const char *slash = strrchr(s->cfg->path, '/');
	return slash ? slash + 1 : s->cfg->path;
}

int snapshot_scan(struct source *s)
{
	struct stat sb;
	if (stat(s->cfg->path, &sb) < 0) {
		if (errno == ENOENT)
			return 0; /* not exported yet */
		int r = -errno;
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "cannot stat %s: %s", s->cfg->path,
			 strerror(-r));
		return r;
	}
	char *path = strdup(s->cfg->path);
	if (!path)
		return -ENOMEM;
	struct ingest_request req = {
		.path = path, .src = s->cfg, .stats = &s->stats, .after = INGEST_KEEP,
	};
	return ingest_enqueue(s->d->ingest, &req);
}

static void on_event(struct source *s, const struct inotify_event *ev, void *arg)
{
	if ((ev->mask & IN_Q_OVERFLOW) || (ev->len && strcmp(ev->name, file_name(s)) == 0))
		*(bool *)arg = true;
}

static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	bool is_changed = false;
	source_read_events(s, on_event, &is_changed);
	if (is_changed && snapshot_scan(s) < 0)
		log_err("msg=\"cannot queue snapshot\" source=%s", s->cfg->name);
}

int snapshot_watch(struct source *s)
{
	/* The count of missing profiles survives restarts. */
	sqlite3_stmt *q = store_stmt(s->d->st, "SELECT missing FROM ingested_files WHERE source = ? AND state = 'done'"
					       " AND missing IS NOT NULL ORDER BY id DESC LIMIT 1");
	if (q) {
		sqlite3_bind_text(q, 1, s->cfg->name, -1, SQLITE_STATIC);
		if (sqlite3_step(q) == SQLITE_ROW)
			s->stats.profiles_missing = sqlite3_column_int64(q, 0);
		sqlite3_reset(q);
	}
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", s->cfg->path);
	char *parent = dirname(dir);
	s->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (s->inotify_fd < 0)
		return -errno;
	if (inotify_add_watch(s->inotify_fd, parent, IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR) < 0) {
		int r = -errno;
		log_err("msg=\"cannot watch snapshot directory\" source=%s path=\"%s\" error=\"%s\"", s->cfg->name,
			parent, strerror(-r));
		return r;
	}
	s->ev = event_new(s->d->base, s->inotify_fd, EV_READ | EV_PERSIST, on_inotify, s);
	if (!s->ev || event_add(s->ev, NULL) < 0)
		return -ENOMEM;
	return 0;
}
