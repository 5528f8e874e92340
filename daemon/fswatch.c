/* SPDX-License-Identifier: MIT */
/* inotify event reading. */
#include "fswatch.h"

#include <errno.h>
#include <limits.h>
#include <sys/inotify.h>
#include <unistd.h>

int fswatch_drain(int fd, void (*handle)(void *arg, const struct inotify_event *ev), void *arg)
{
	char events[16 * (sizeof(struct inotify_event) + NAME_MAX + 1)]
		__attribute__((aligned(__alignof__(struct inotify_event))));
	for (;;) {
		ssize_t n = read(fd, events, sizeof(events));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN ? 0 : -errno;
		if (n == 0)
			return 0;
		for (char *p = events; p < events + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			p += sizeof(*ev) + ev->len;
			handle(arg, ev);
		}
	}
}
