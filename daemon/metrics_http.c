/* SPDX-License-Identifier: MIT */
/* The Prometheus endpoint on libevent's evhttp. The listening socket is ours,
 * handed to evhttp, so that running out of descriptors pauses accepting for a
 * second instead of spinning (evhttp sets no error callback of its own).
 * evhttp 2.1 cannot count its connections (a filter bufferevent, whose free
 * callback would, cannot be given a socket in 2.1), so none is capped: each
 * is bounded in time instead (IDLE_SECONDS for a request to arrive and its
 * answer to be read) and in memory (MAX_UNREAD). */
#include "metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "clock.h"
#include "listen_addr.h"
#include "log.h"

#define IDLE_SECONDS 10
#define CACHE_MS 500 /* scrapes this close together share one rendering */
#define MAX_UNREAD (16 * 1024)

struct metrics_http {
	struct event_base *base;
	struct evhttp *http;
	struct evconnlistener *listener; /* owned by http */
	struct event *resume;
	metrics_write_fn write;
	void *arg;
	bool is_resting;  /* accept failed (out of descriptors): not accepting for a second */
	bool is_closing;
	char *cached;
	size_t cached_len;
	int64_t cached_at;
	struct metrics_http *next;
};

/* The listener's error callback gets evhttp's argument (the evhttp), not
 * ours; the live endpoints (one, in practice) are found through this list. */
static struct metrics_http *endpoints;

static void update_accepting(struct metrics_http *m)
{
	if (m->is_closing)
		return;
	bool want = !m->is_resting;
	int r = want ? evconnlistener_enable(m->listener) : evconnlistener_disable(m->listener);
	if (r < 0)
		log_err("msg=\"cannot %s metrics connections\"", want ? "accept" : "stop accepting");
}

/* evhttp's new connection: the socket's bufferevent, which stops reading
 * once MAX_UNREAD bytes of requests wait in it (a client that pipelines
 * requests without reading the answers would otherwise grow us without
 * bound: evhttp reads all it is sent). */
static struct bufferevent *make_bev(struct event_base *base, void *arg)
{
	struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (bev)
		bufferevent_setwatermark(bev, EV_READ, 0, MAX_UNREAD);
	return bev;
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
	struct metrics_http *m = arg;
	m->is_resting = false;
	update_accepting(m);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
	struct metrics_http *m = endpoints;
	while (m && m->listener != l)
		m = m->next;
	if (!m)
		return;
	int e = EVUTIL_SOCKET_ERROR();
	log_warn("msg=\"cannot accept a metrics connection; pausing for 1 s\" error=\"%s\"", strerror(e));
	m->is_resting = true;
	update_accepting(m);
	struct timeval second = { 1, 0 };
	if (evtimer_add(m->resume, &second) < 0)
		log_err("msg=\"cannot arm metrics timer\"");
}

/* The exposition text, rendered at most once per CACHE_MS. Returns false when
 * it cannot be had at all. */
static bool render(struct metrics_http *m)
{
	int64_t now = clock_mono_ms();
	if (m->cached && now - m->cached_at < CACHE_MS)
		return true;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return false;
	int r = m->write(m->arg, f);
	if (fclose(f) != 0) {
		free(text);
		return false;
	}
	if (r < 0)
		log_warn("msg=\"some metrics could not be read\" error=\"%s\"", strerror(-r));
	free(m->cached);
	m->cached = text;
	m->cached_len = len;
	m->cached_at = now;
	return true;
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct metrics_http *m = arg;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	if (!path || strcmp(path, "/metrics") != 0) {
		evhttp_send_error(req, HTTP_NOTFOUND, "only /metrics is served here");
		return;
	}
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		if (evhttp_add_header(out, "Allow", "GET, HEAD") < 0)
			log_warn("msg=\"cannot answer a metrics request\"");
		evhttp_send_error(req, 405, "Method Not Allowed");
		return;
	}
	if (!render(m)) {
		evhttp_send_error(req, HTTP_INTERNAL, "metrics unavailable");
		return;
	}
	struct evbuffer *body = evbuffer_new();
	if (!body || evhttp_add_header(out, "Content-Type", "text/plain; version=0.0.4; charset=utf-8") < 0 ||
	    evhttp_add_header(out, "Cache-Control", "no-store") < 0 || evbuffer_add(body, m->cached, m->cached_len) < 0) {
		if (body)
			evbuffer_free(body);
		evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
		return;
	}
	evhttp_send_reply(req, HTTP_OK, "OK", body);
	evbuffer_free(body);
}

struct metrics_http *metrics_http_create(struct event_base *base, const char *listen, metrics_write_fn write,
					 void *arg)
{
	char host[64];
	int port;
	if (listen_addr_parse(listen, host, sizeof(host), &port) < 0) {
		log_err("msg=\"metrics.listen must be ADDR:PORT\" listen=\"%s\"", listen);
		return NULL;
	}
	struct sockaddr_storage ss = { 0 };
	socklen_t sl;
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	if (host[0] == '\0' || inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		if (host[0] == '\0')
			s4->sin_addr.s_addr = htonl(INADDR_ANY);
		sl = sizeof(*s4);
	} else {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
			return NULL; /* checked by the parser */
		sl = sizeof(*s6);
	}
	struct metrics_http *m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->base = base;
	m->write = write;
	m->arg = arg;
	m->http = evhttp_new(base);
	m->resume = evtimer_new(base, on_resume, m);
	if (!m->http || !m->resume) {
		log_err("msg=\"cannot set up the metrics endpoint\" error=\"out of memory\"");
		goto fail;
	}
	m->listener = evconnlistener_new_bind(base, NULL, NULL,
					      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE, 128,
					      (struct sockaddr *)&ss, (int)sl);
	if (!m->listener) {
		log_err("msg=\"cannot listen for metrics\" listen=\"%s\" error=\"%s\"", listen, strerror(errno));
		goto fail;
	}
	if (!evhttp_bind_listener(m->http, m->listener)) {
		evconnlistener_free(m->listener);
		m->listener = NULL;
		log_err("msg=\"cannot set up the metrics endpoint\" error=\"out of memory\"");
		goto fail;
	}
	evconnlistener_set_error_cb(m->listener, on_accept_error);
	evhttp_set_timeout(m->http, IDLE_SECONDS);
	evhttp_set_max_headers_size(m->http, 8192);
	evhttp_set_max_body_size(m->http, 4096);
	evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
						     EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
	evhttp_set_bevcb(m->http, make_bev, m);
	evhttp_set_gencb(m->http, on_request, m);
	m->next = endpoints;
	endpoints = m;
	log_info("msg=\"serving metrics\" listen=\"%s\"", listen);
	return m;
fail:
	if (m->http)
		evhttp_free(m->http);
	if (m->resume)
		event_free(m->resume);
	free(m);
	return NULL;
}

void metrics_http_free(struct metrics_http *m)
{
	if (!m)
		return;
	for (struct metrics_http **pp = &endpoints; *pp; pp = &(*pp)->next) {
		if (*pp == m) {
			*pp = m->next;
			break;
		}
	}
	m->is_closing = true;
	evhttp_free(m->http); /* closes the connections and the listener */
	event_free(m->resume);
	free(m->cached);
	free(m);
}
