/* SPDX-License-Identifier: MIT */
/* Reading inotify events from a non-blocking inotify descriptor. Knows nothing
 * about sources: each watcher hands in what to do with one event. */
#ifndef TPSYNC_FSWATCH_H
#define TPSYNC_FSWATCH_H

struct inotify_event;

/* Reads every event queued on the non-blocking inotify descriptor fd and calls
 * handle(arg, ev) for each, in order. Returns 0 once nothing more is queued,
 * or a negative errno from read(2) (nothing is logged: the caller decides). */
int fswatch_drain(int fd, void (*handle)(void *arg, const struct inotify_event *ev), void *arg);

#endif
