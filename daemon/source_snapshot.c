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

#include "fswatch.h"
#include "log.h"

struct snapshot {
	int inotify_fd;
	struct event *ev;
	bool is_changed; /* set while reading events */
};

static const char *file_name(const struct source *s)
{
	const char *slash = strrchr(s->cfg->path, '/');
	return slash ? slash + 1 : s->cfg->path;
}

static int snapshot_scan(struct source *s, bool from_start)
{
	struct stat sb;
	if (stat(s->cfg->path, &sb) < 0) {
		if (errno == ENOENT)
			return 0; /* not exported yet */
		int r = -errno;
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "cannot stat %s: %s", s->cfg->path,
			 strerror(-r));
		s->stats.is_row_error = false;
		return r;
	}
	char *path = strdup(s->cfg->path);
	if (!path)
		return -ENOMEM;
	struct ingest_request req = {
		.path = path, .src = s->cfg, .stats = &s->stats, .after = INGEST_KEEP, .is_held = true,
	};
	return ingest_enqueue(s->env->ingest, &req);
}

static void on_event(void *arg, const struct inotify_event *ev)
{
	struct source *s = arg;
	struct snapshot *x = s->state;
	if ((ev->mask & IN_Q_OVERFLOW) || (ev->len && strcmp(ev->name, file_name(s)) == 0))
		x->is_changed = true;
}

static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	struct snapshot *x = s->state;
	x->is_changed = false;
	int r = fswatch_drain(fd, on_event, s);
	if (r < 0)
		log_err("msg=\"inotify read failed\" source=%s error=\"%s\"", s->cfg->name, strerror(-r));
	if (x->is_changed && snapshot_scan(s, false) < 0)
		log_err("msg=\"cannot queue snapshot\" source=%s error=\"%s\"", s->cfg->name, s->stats.last_error);
}

static int snapshot_watch(struct source *s)
{
	struct snapshot *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->inotify_fd = -1;
	s->state = x;
	/* The count of missing profiles survives restarts. */
	s->stats.profiles_missing = ingest_profiles_missing(s->env->ingest, s->cfg->name);
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", s->cfg->path);
	char *parent = dirname(dir);
	x->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (x->inotify_fd < 0) {
		int r = -errno;
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "inotify: %s", strerror(-r));
		return r;
	}
	if (inotify_add_watch(x->inotify_fd, parent, IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR) < 0) {
		int r = -errno;
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "cannot watch snapshot directory %s: %s",
			 parent, strerror(-r));
		return r;
	}
	x->ev = event_new(s->env->base, x->inotify_fd, EV_READ | EV_PERSIST, on_inotify, s);
	if (!x->ev || event_add(x->ev, NULL) < 0)
		return -ENOMEM;
	return 0;
}

static void snapshot_close(struct source *s)
{
	struct snapshot *x = s->state;
	if (!x)
		return;
	if (x->ev)
		event_free(x->ev);
	if (x->inotify_fd >= 0)
		close(x->inotify_fd);
	free(x);
	s->state = NULL;
}

static void snapshot_status(const struct source *s, json_t *o)
{
	json_object_set_new(o, "profiles_missing", json_integer(s->stats.profiles_missing));
}

const struct source_ops source_snapshot_ops = {
	.watch = snapshot_watch,
	.scan = snapshot_scan,
	.close = snapshot_close,
	.status = snapshot_status,
};
