/* SPDX-License-Identifier: MIT */
/* The Prometheus endpoint (metrics.listen): GET /metrics in the text
 * exposition format, from libevent's HTTP server on the daemon's loop. It
 * knows no metric itself: its creator hands in the function that writes them. */
#ifndef TPSYNC_METRICS_HTTP_H
#define TPSYNC_METRICS_HTTP_H

#include <event2/event.h>
#include <stdio.h>

/* Writes the exposition text to out; returns 0, or a negative errno when some
 * figures could not be had (what was written is still served). */
typedef int (*metrics_write_fn)(void *arg, FILE *out);

struct metrics_http;

/* Serves GET (and HEAD) /metrics on listen (ADDR:PORT, see listen_addr.h); every other path is 404, every
 * other method 405. A connection idle for 10 s is closed, and scrapes within
 * half a second of each other share one rendering. Returns
 * NULL (logged) when the address cannot be bound. */
struct metrics_http *metrics_http_create(struct event_base *base, const char *listen, metrics_write_fn write,
					 void *arg);
void metrics_http_free(struct metrics_http *m);

#endif
