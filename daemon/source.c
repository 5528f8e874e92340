/* SPDX-License-Identifier: MIT */
/* Source lifecycle: creating, scanning and closing each kind of source. */
#include "source.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "log.h"

int source_create(struct daemon *d, const struct source_config *cfg, struct source **out)
{
	struct source *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->d = d;
	s->cfg = cfg;
	s->inotify_fd = -1;
	int r;
	switch (cfg->type) {
	case SOURCE_SPOOL:
		r = spool_watch(s);
		break;
	case SOURCE_SNAPSHOT:
		r = snapshot_watch(s);
		break;
	case SOURCE_SQLITE:
		r = sqlite_source_watch(s);
		break;
	default:
		r = pg_source_watch(s);
		break;
	}
	if (r < 0) {
		source_destroy(s);
		return r;
	}
	*out = s;
	return 0;
}

void source_destroy(struct source *s)
{
	if (!s)
		return;
	sqlite_source_close(s);
	pg_source_close(s);
	if (s->ev)
		event_free(s->ev);
	if (s->inotify_fd >= 0)
		close(s->inotify_fd);
	free(s);
}

int source_scan(struct source *s)
{
	switch (s->cfg->type) {
	case SOURCE_SPOOL:
		return spool_scan(s);
	case SOURCE_SNAPSHOT:
		return snapshot_scan(s);
	case SOURCE_SQLITE:
		return sqlite_source_scan(s, false);
	default:
		return pg_source_scan(s, false);
	}
}

int source_rescan(struct source *s)
{
	switch (s->cfg->type) {
	case SOURCE_SQLITE:
		return sqlite_source_scan(s, true);
	case SOURCE_POSTGRES:
		return pg_source_scan(s, true);
	default:
		return source_scan(s);
	}
}

bool source_is_caught_up(const struct source *s)
{
	switch (s->cfg->type) {
	case SOURCE_SQLITE:
		return sqlite_source_is_caught_up(s);
	case SOURCE_POSTGRES:
		return pg_source_is_caught_up(s);
	default:
		return true;
	}
}

void source_read_events(struct source *s, void (*handle)(struct source *s, const struct inotify_event *ev, void *arg),
			void *arg)
{
	char events[16 * (sizeof(struct inotify_event) + NAME_MAX + 1)]
		__attribute__((aligned(__alignof__(struct inotify_event))));
	for (;;) {
		ssize_t n = read(s->inotify_fd, events, sizeof(events));
		if (n <= 0) {
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				log_err("msg=\"inotify read failed\" source=%s error=\"%s\"", s->cfg->name, strerror(errno));
			return;
		}
		for (char *p = events; p < events + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			p += sizeof(*ev) + ev->len;
			handle(s, ev, arg);
		}
	}
}
