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

#include "clock.h"
#include "fswatch.h"
#include "log.h"

/* A spool directory may be removed and made again (a careless deploy, a
 * remounted volume): the watch is then gone. It is looked for every second,
 * then less often (up to every 30 s), and watched again when it is back. */
#define SPOOL_REGAIN_FIRST_MS 1000
#define SPOOL_REGAIN_MAX_MS 30000

struct spool {
	int inotify_fd;
	int wd;                /* the directory's watch; -1 while it is gone */
	struct event *ev;
	struct event *regain;  /* looks for a directory that went away */
	int64_t regain_ms;
	int64_t gone_since;    /* 0: watched */
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

static int add_watch(struct source *s)
{
	struct spool *x = s->state;
	x->wd = inotify_add_watch(x->inotify_fd, s->cfg->path,
				  IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR);
	if (x->wd < 0) {
		int r = -errno;
		snprintf(s->stats.last_error, sizeof(s->stats.last_error), "cannot watch %s: %s", s->cfg->path,
			 strerror(-r));
		s->stats.is_row_error = false;
		return r;
	}
	return 0;
}

/* The directory is gone (removed, or moved away: its old watch would follow it). */
static void lost(struct source *s)
{
	struct spool *x = s->state;
	if (x->gone_since)
		return;
	if (x->wd >= 0)
		inotify_rm_watch(x->inotify_fd, x->wd); /* EINVAL after IN_IGNORED: already gone */
	x->wd = -1;
	x->gone_since = clock_wall_ms();
	x->regain_ms = SPOOL_REGAIN_FIRST_MS;
	log_err("msg=\"spool directory went away; watching for it to come back\" source=%s path=\"%s\"", s->cfg->name,
		s->cfg->path);
	snprintf(s->stats.last_error, sizeof(s->stats.last_error),
		 "spool directory went away; it is watched again as soon as it is back");
	s->stats.is_row_error = false;
	struct timeval tv = { x->regain_ms / 1000, (x->regain_ms % 1000) * 1000 };
	if (evtimer_add(x->regain, &tv) < 0)
		log_err("msg=\"cannot arm timer\" source=%s", s->cfg->name);
}

/* Watches the directory again if it is back; returns true if it is. */
static bool regain(struct source *s)
{
	struct spool *x = s->state;
	struct stat sb;
	if (stat(s->cfg->path, &sb) < 0 || !S_ISDIR(sb.st_mode) || add_watch(s) < 0)
		return false;
	log_info("msg=\"spool directory is back; watching it again\" source=%s path=\"%s\" gone_for_ms=%lld",
		 s->cfg->name, s->cfg->path, (long long)(clock_wall_ms() - x->gone_since));
	x->gone_since = 0;
	s->stats.last_error[0] = '\0';
	if (spool_scan(s, false) < 0)
		log_err("msg=\"cannot scan spool directory\" source=%s error=\"%s\"", s->cfg->name, s->stats.last_error);
	return true;
}

static void on_regain(evutil_socket_t fd, short what, void *arg)
{
	struct source *s = arg;
	struct spool *x = s->state;
	if (!x->gone_since || regain(s))
		return;
	x->regain_ms = x->regain_ms * 2 < SPOOL_REGAIN_MAX_MS ? x->regain_ms * 2 : SPOOL_REGAIN_MAX_MS;
	struct timeval tv = { x->regain_ms / 1000, (x->regain_ms % 1000) * 1000 };
	if (evtimer_add(x->regain, &tv) < 0)
		log_err("msg=\"cannot arm timer\" source=%s", s->cfg->name);
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
		struct spool *x = s->state;
		if (ev->wd == x->wd)
			lost(s); /* (not the old watch's IN_IGNORED after a move) */
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

/* tpsyncctl rescan, and the first scan: a directory that is back is watched again first. */
static int spool_rescan(struct source *s, bool from_start)
{
	struct spool *x = s->state;
	if (x->gone_since && !regain(s))
		return -ENOENT;
	return x->gone_since ? 0 : spool_scan(s, from_start);
}

static int spool_watch(struct source *s)
{
	struct spool *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->inotify_fd = x->wd = -1;
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
	int r = add_watch(s);
	if (r < 0)
		return r;
	x->ev = event_new(s->env->base, x->inotify_fd, EV_READ | EV_PERSIST, on_inotify, s);
	x->regain = evtimer_new(s->env->base, on_regain, s);
	if (!x->ev || !x->regain || event_add(x->ev, NULL) < 0)
		return -ENOMEM;
	return 0;
}

static void spool_status(const struct source *s, json_t *o)
{
	const struct spool *x = s->state;
	json_object_set_new(o, "watching", json_boolean(!x->gone_since));
	if (x->gone_since)
		json_object_set_new(o, "missing_since", json_integer(x->gone_since));
}

static void spool_close(struct source *s)
{
	struct spool *x = s->state;
	if (!x)
		return;
	if (x->ev)
		event_free(x->ev);
	if (x->regain)
		event_free(x->regain);
	if (x->inotify_fd >= 0)
		close(x->inotify_fd);
	free(x);
	s->state = NULL;
}

const struct source_ops source_spool_ops = {
	.watch = spool_watch,
	.scan = spool_rescan,
	.close = spool_close,
	.status = spool_status,
};
