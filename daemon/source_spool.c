/* SPDX-License-Identifier: MIT */
/* Spool directories: every new complete file is one delta. A file counts as
 * complete when its writer closes it (IN_CLOSE_WRITE) or renames it into the
 * directory (IN_MOVED_TO); dotfiles, *.part and *.tmp are still being written. */
#include "source.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fswatch.h"
#include "log.h"

struct spool {
	int inotify_fd;
	struct event *ev;
};

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
		.after = s->env->is_dry_run ? INGEST_KEEP : s->cfg->after == AFTER_DELETE ? INGEST_DELETE : INGEST_ARCHIVE,
	};
	return ingest_enqueue(s->env->ingest, &req);
}

static int compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int spool_scan(struct source *s, bool from_start)
{
	DIR *dir = opendir(s->cfg->path);
	if (!dir) {
		int r = -errno;
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "cannot read %s: %s", s->cfg->path,
			 strerror(-r));
		s->stats.is_row_error = false;
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

static void on_event(void *arg, const struct inotify_event *ev)
{
	struct source *s = arg;
	if (ev->mask & IN_Q_OVERFLOW) {
		log_warn("msg=\"inotify queue overflowed; rescanning\" source=%s", s->cfg->name);
		if (spool_scan(s, false) < 0)
			log_err("msg=\"cannot rescan spool directory\" source=%s error=\"%s\"", s->cfg->name,
				s->stats.last_error);
	} else if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
		log_err("msg=\"spool directory went away\" source=%s path=\"%s\"", s->cfg->name, s->cfg->path);
		snprintf(s->stats.last_error, sizeof(s->stats.last_error),
			 "spool directory went away; rescan or reload after recreating it");
		s->stats.is_row_error = false;
	} else if (ev->len && is_candidate(ev->name) && !(ev->mask & IN_ISDIR) && queue_file(s, ev->name) < 0) {
		log_err("msg=\"cannot queue file\" source=%s file=\"%s\"", s->cfg->name, ev->name);
	}
}

static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	int r = fswatch_drain(fd, on_event, s);
	if (r < 0)
		log_err("msg=\"inotify read failed\" source=%s error=\"%s\"", s->cfg->name, strerror(-r));
}

static int spool_watch(struct source *s)
{
	struct spool *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->inotify_fd = -1;
	s->state = x;
	struct stat sb;
	if (stat(s->cfg->path, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "spool path %s is not a directory", s->cfg->path);
		return -ENOTDIR;
	}
	x->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (x->inotify_fd < 0) {
		int r = -errno;
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "inotify: %s", strerror(-r));
		return r;
	}
	if (inotify_add_watch(x->inotify_fd, s->cfg->path,
			      IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR) < 0) {
		int r = -errno;
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "cannot watch %s: %s", s->cfg->path,
			 strerror(-r));
		return r;
	}
	x->ev = event_new(s->env->base, x->inotify_fd, EV_READ | EV_PERSIST, on_inotify, s);
	if (!x->ev || event_add(x->ev, NULL) < 0)
		return -ENOMEM;
	return 0;
}

static void spool_close(struct source *s)
{
	struct spool *x = s->state;
	if (!x)
		return;
	if (x->ev)
		event_free(x->ev);
	if (x->inotify_fd >= 0)
		close(x->inotify_fd);
	free(x);
	s->state = NULL;
}

const struct source_ops source_spool_ops = {
	.watch = spool_watch,
	.scan = spool_scan,
	.close = spool_close,
};
