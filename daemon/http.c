/* SPDX-License-Identifier: MIT */
/* curl's multi interface on libevent. curl tells us which sockets to watch
 * (curl_socket_cb) and when to wake it (curl_timer_cb); libevent calls
 * curl_multi_socket_action for either, and finished transfers are collected
 * from curl_multi_info_read. */
#include "http.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "backoff.h"
#include "clock.h"
#include "log.h"

struct http {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	struct http_call *calls;
	int n_calls;
	const struct http_listener *l;
	void *arg;
};

struct sockinfo {
	struct event *ev;
};

static void collect(struct http *h);

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
	struct http *h = arg;
	int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
	int running;
	CURLMcode rc = curl_multi_socket_action(h->multi, fd, flags, &running);
	if (rc != CURLM_OK)
		log_err("msg=\"curl_multi_socket_action failed\" error=\"%s\"", curl_multi_strerror(rc));
	collect(h);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct http *h = arg;
	int running;
	CURLMcode rc = curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	if (rc != CURLM_OK)
		log_err("msg=\"curl_multi_socket_action failed\" error=\"%s\"", curl_multi_strerror(rc));
	collect(h);
}

static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct http *h = userp;
	struct sockinfo *si = socketp;
	if (what == CURL_POLL_REMOVE) {
		if (si) {
			event_free(si->ev);
			free(si);
			curl_multi_assign(h->multi, fd, NULL);
		}
		return 0;
	}
	short kind = EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
	if (!si) {
		si = calloc(1, sizeof(*si));
		if (!si)
			return -1;
		curl_multi_assign(h->multi, fd, si);
	} else {
		event_del(si->ev);
		event_free(si->ev);
	}
	si->ev = event_new(h->base, fd, kind, on_socket_event, h);
	if (!si->ev || event_add(si->ev, NULL) < 0) {
		log_err("msg=\"cannot watch curl socket\"");
		return -1;
	}
	return 0;
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct http *h = userp;
	if (timeout_ms < 0) {
		evtimer_del(h->timer);
		return 0;
	}
	struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	return evtimer_add(h->timer, &tv) == 0 ? 0 : -1;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct http_call *c = arg;
	size_t len = size * n;
	if (c->on_data && c->on_data(c->data_arg, data, len) < 0)
		return 0;
	size_t room = c->response.len < c->max_response ? c->max_response - c->response.len : 0;
	size_t keep = len < room ? len : room; /* keep the start; the rest is not needed here */
	return buf_append(&c->response, data, keep) == 0 ? len : 0;
}

/* How long the body may sit still while it is being sent. */
#define UPLOAD_STALL_MS 30000

/* Watches a POST's progress: while its body is sent it must move (a stall of
 * UPLOAD_STALL_MS fails it); once it is sent, Target gets timeout_ms to
 * answer, however long it validates in silence (no low-speed abort then). */
static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	struct http_call *c = arg;
	int64_t now = clock_mono_ms();
	if (!c->body)
		return 0;
	if (ulnow > c->uploaded) {
		c->uploaded = ulnow;
		c->progress_at = now;
	}
	if (!c->sent_at && ultotal > 0 && ulnow >= ultotal)
		c->sent_at = now;
	if (c->sent_at) {
		if (dlnow == 0 && now - c->sent_at > c->timeout_ms) {
			snprintf(c->abort_reason, sizeof(c->abort_reason), "no answer within %lld ms of sending the body",
				 (long long)c->timeout_ms);
			return 1;
		}
	} else if (now - c->progress_at > UPLOAD_STALL_MS) {
		snprintf(c->abort_reason, sizeof(c->abort_reason), "the body stopped moving for %d s",
			 UPLOAD_STALL_MS / 1000);
		return 1;
	}
	return 0;
}

int64_t http_total_timeout_ms(int64_t connect_timeout_ms, int64_t body_size, int64_t min_upload_speed,
			      int64_t timeout_ms)
{
	int64_t upload = min_upload_speed > 0 ? body_size * 1000 / min_upload_speed : 0;
	return connect_timeout_ms + upload + timeout_ms;
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
	struct http_call *c = arg;
	size_t len = size * n;
	if (len > 12 && strncasecmp(data, "Retry-After:", 12) == 0) {
		char value[128];
		size_t vlen = len - 12 < sizeof(value) - 1 ? len - 12 : sizeof(value) - 1;
		memcpy(value, data + 12, vlen);
		value[vlen] = '\0';
		char *end = value + strlen(value);
		while (end > value && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
			*--end = '\0';
		int64_t ms;
		if (backoff_parse_retry_after(value, time(NULL), &ms) == 0)
			c->retry_after_ms = ms;
	}
	return len;
}

/* Drops the easy handle and header list of c. */
static void release(struct http_call *c)
{
	if (c->easy) {
		if (c->h)
			curl_multi_remove_handle(c->h->multi, c->easy);
		curl_easy_cleanup(c->easy);
		c->easy = NULL;
	}
	curl_slist_free_all(c->headers);
	c->headers = NULL;
}

/* Finished transfers: their results go to the listener. */
static void collect(struct http *h)
{
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(h->multi, &left))) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		struct http_call *c = NULL;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
		c->result = msg->data.result;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &c->status);
		if (c->result == CURLE_ABORTED_BY_CALLBACK && c->abort_reason[0])
			snprintf(c->error, sizeof(c->error), "%s", c->abort_reason);
		for (struct http_call **pp = &h->calls; *pp; pp = &(*pp)->next) {
			if (*pp == c) {
				*pp = c->next;
				break;
			}
		}
		h->n_calls--;
		release(c);
		c->h = NULL;
		h->l->done(h->arg, c);
	}
}

int http_start(struct http *h, struct http_call *c)
{
	c->result = CURLE_OK;
	c->status = 0;
	c->retry_after_ms = -1;
	c->error[0] = '\0';
	buf_reset(&c->response);
	CURL *e = c->easy = curl_easy_init();
	if (!e)
		return -ENOMEM;
	CURLcode rc = CURLE_OK;
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val); } while (0)
	SET(CURLOPT_URL, c->url);
	SET(CURLOPT_PRIVATE, c);
	SET(CURLOPT_ERRORBUFFER, c->error);
	SET(CURLOPT_WRITEFUNCTION, on_body);
	SET(CURLOPT_WRITEDATA, c);
	SET(CURLOPT_HEADERFUNCTION, on_header);
	SET(CURLOPT_HEADERDATA, c);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_FOLLOWLOCATION, 0L);
	SET(CURLOPT_PROTOCOLS_STR, "http,https");
	int64_t total = http_total_timeout_ms(c->connect_timeout_ms, c->body ? c->body_size : 0, c->min_upload_speed,
					      c->timeout_ms);
	SET(CURLOPT_TIMEOUT_MS, (long)total);
	SET(CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_timeout_ms);
	if (c->body) {
		/* No low-speed abort of curl's own: Target is silent while it
		 * validates a body. on_progress decides; the speed check (which
		 * never fires by itself here) only makes curl call it every second. */
		SET(CURLOPT_NOPROGRESS, 0L);
		SET(CURLOPT_XFERINFOFUNCTION, on_progress);
		SET(CURLOPT_XFERINFODATA, c);
		SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
		SET(CURLOPT_LOW_SPEED_TIME, (long)(total / 1000 + 1));
	} else {
		/* An answer that stalls (under 1 byte/s) fails well before the timeout. */
		long stall = (long)(c->timeout_ms / 2000);
		SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
		SET(CURLOPT_LOW_SPEED_TIME, stall < 1 ? 1L : stall > 30 ? 30L : stall);
	}
	SET(CURLOPT_USERAGENT, "tpsyncd/" TPSYNC_VERSION);
	if (c->ca_file)
		SET(CURLOPT_CAINFO, c->ca_file);
	if (c->body) {
		SET(CURLOPT_POST, 1L);
		SET(CURLOPT_READDATA, c->body);
		SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_size);
	}
#undef SET
	int r = rc == CURLE_OK ? 0 : -EIO;
	if (r < 0)
		log_err("msg=\"curl setup failed\" error=\"%s\"", curl_easy_strerror(rc));
	/* No "Expect: 100-continue" round trip before a body. */
	if (r == 0 && !(c->headers = curl_slist_append(NULL, "Expect:")))
		r = -ENOMEM;
	if (r == 0 && c->content_type) {
		char line[256];
		snprintf(line, sizeof(line), "Content-Type: %s", c->content_type);
		struct curl_slist *l = curl_slist_append(c->headers, line);
		if (!l)
			r = -ENOMEM;
		else
			c->headers = l;
	}
	if (r == 0 && c->bearer) {
		char *auth;
		if (asprintf(&auth, "Authorization: Bearer %s", c->bearer) < 0) {
			r = -ENOMEM;
		} else {
			struct curl_slist *l = curl_slist_append(c->headers, auth);
			explicit_bzero(auth, strlen(auth));
			free(auth);
			if (!l)
				r = -ENOMEM;
			else
				c->headers = l;
		}
	}
	if (r == 0 && c->extra_header) {
		struct curl_slist *l = curl_slist_append(c->headers, c->extra_header);
		if (!l)
			r = -ENOMEM;
		else
			c->headers = l;
	}
	if (r == 0 && curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers) != CURLE_OK)
		r = -EIO;
	if (r == 0) {
		CURLMcode mc = curl_multi_add_handle(h->multi, e);
		if (mc != CURLM_OK) {
			log_err("msg=\"curl_multi_add_handle failed\" error=\"%s\"", curl_multi_strerror(mc));
			r = -EIO;
		}
	}
	if (r < 0) {
		release(c);
		return r;
	}
	c->h = h;
	c->started_at = c->progress_at = clock_mono_ms();
	c->sent_at = 0;
	c->uploaded = 0;
	c->abort_reason[0] = '\0';
	c->next = h->calls;
	h->calls = c;
	h->n_calls++;
	return 0;
}

void http_call_finish(struct http_call *c)
{
	release(c);
	buf_finish(&c->response);
}

int http_active(const struct http *h)
{
	return h->n_calls;
}

void http_excerpt(const struct http_call *c, char *out, size_t size)
{
	size_t n = 0;
	for (size_t i = 0; i < c->response.len && n + 1 < size && n < 200; i++) {
		unsigned char ch = (unsigned char)c->response.data[i];
		out[n++] = ch >= 0x20 && ch < 0x7f && ch != '"' ? (char)ch : ' ';
	}
	out[n] = '\0';
}

struct http *http_create(struct event_base *base, long max_per_host, const struct http_listener *l, void *arg)
{
	struct http *h = calloc(1, sizeof(*h));
	if (!h) {
		log_err("msg=\"cannot set up HTTP\" error=\"out of memory\"");
		return NULL;
	}
	h->base = base;
	h->l = l;
	h->arg = arg;
	h->multi = curl_multi_init();
	h->timer = evtimer_new(base, on_timer, h);
	if (!h->multi || !h->timer) {
		log_err("msg=\"cannot set up HTTP\" error=\"out of memory\"");
		http_destroy(h);
		return NULL;
	}
	CURLMcode mc = curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
	if (mc == CURLM_OK)
		mc = curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
	if (mc == CURLM_OK)
		mc = curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
	if (mc == CURLM_OK)
		mc = curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
	if (mc == CURLM_OK)
		mc = curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_per_host);
	if (mc != CURLM_OK) {
		log_err("msg=\"cannot set up curl\" error=\"%s\"", curl_multi_strerror(mc));
		http_destroy(h);
		return NULL;
	}
	return h;
}

void http_destroy(struct http *h)
{
	if (!h)
		return;
	while (h->calls) {
		struct http_call *c = h->calls;
		h->calls = c->next;
		release(c);
		c->h = NULL;
	}
	if (h->multi)
		curl_multi_cleanup(h->multi);
	if (h->timer)
		event_free(h->timer);
	free(h);
}
