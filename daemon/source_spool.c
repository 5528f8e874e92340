/* SPDX-License-Identifier: MIT */
/* Spool directories: every new complete file is one delta. A file counts as
 * complete when its writer closes it (IN_CLOSE_WRITE) or renames it into the
 * directory (IN_MOVED_TO); dotfiles, *.part and *.tmp are still being written. */
#include "source.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcmp(s + n - m, suffix) == 0;
}

static bool is_candidate(const char *name)
{
	return name[0] != '.' && !ends_with(name, ".part") && !ends_with(name, ".tmp") &&
	       !ends_with(name, ".rejects.csv") && !ends_with(name, ".error");
}

static int queue_file(struct source *s, const char *name)
{
	char *path;
	if (asprintf(&path, "%s/%s", s->cfg->path, name) < 0)
		return -ENOMEM;
	struct stat sb;
	if (stat(path, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		free(path);
		return 0;
	}
	struct ingest_request req = {
		.path = path,
		.src = s->cfg,
		.stats = &s->stats,
		.after = s->d->dry_run_dir ? INGEST_KEEP : s->cfg->after == AFTER_DELETE ? INGEST_DELETE : INGEST_ARCHIVE,
	};
	return ingest_enqueue(s->d->ingest, &req);
}

static int compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int spool_scan(struct source *s)
{
	DIR *dir = opendir(s->cfg->path);
	if (!dir) {
		int r = -errno;
		log_err("msg=\"cannot read spool directory\" source=%s path=\"%s\" error=\"%s\"", s->cfg->name,
			s->cfg->path, strerror(-r));
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "cannot read %s: %s", s->cfg->path,
			 strerror(-r));
		return r;
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	int r = 0;
	struct dirent *de;
	while ((de = readdir(dir))) {
		if (!is_candidate(de->d_name))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			char **bigger = realloc(names, cap * sizeof(*names));
			if (!bigger) {
				r = -ENOMEM;
				break;
			}
			names = bigger;
		}
		if (!(names[n] = strdup(de->d_name))) {
			r = -ENOMEM;
			break;
		}
		n++;
	}
	closedir(dir);
	/* Exports are usually named by time: oldest first keeps deltas in order. */
	if (n > 1)
		qsort(names, n, sizeof(*names), compare_names);
	for (size_t i = 0; i < n; i++) {
		if (r == 0)
			r = queue_file(s, names[i]);
		free(names[i]);
	}
	free(names);
	return r;
}

static void on_event(struct source *s, const struct inotify_event *ev, void *arg)
{
	if (ev->mask & IN_Q_OVERFLOW) {
		log_warn("msg=\"inotify queue overflowed; rescanning\" source=%s", s->cfg->name);
		spool_scan(s);
	} else if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
		log_err("msg=\"spool directory went away\" source=%s path=\"%s\"", s->cfg->name, s->cfg->path);
		snprintf(s->stats.last_error, sizeof(s->stats.last_error),
			 "spool directory went away; rescan or reload after recreating it");
	} else if (ev->len && is_candidate(ev->name) && !(ev->mask & IN_ISDIR) && queue_file(s, ev->name) < 0) {
		log_err("msg=\"cannot queue file\" source=%s file=\"%s\"", s->cfg->name, ev->name);
	}
}

static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
	source_read_events(arg, on_event, NULL);
}

int spool_watch(struct source *s)
{
	struct stat sb;
	if (stat(s->cfg->path, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
		log_err("msg=\"spool path is not a directory\" source=%s path=\"%s\"", s->cfg->name, s->cfg->path);
		return -ENOTDIR;
	}
	s->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (s->inotify_fd < 0)
		return -errno;
	if (inotify_add_watch(s->inotify_fd, s->cfg->path,
			      IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR) < 0) {
		int r = -errno;
		log_err("msg=\"cannot watch spool directory\" source=%s path=\"%s\" error=\"%s\"", s->cfg->name,
			s->cfg->path, strerror(-r));
		return r;
	}
	s->ev = event_new(s->d->base, s->inotify_fd, EV_READ | EV_PERSIST, on_inotify, s);
	if (!s->ev || event_add(s->ev, NULL) < 0)
		return -ENOMEM;
	return 0;
}
