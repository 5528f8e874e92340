/* SPDX-License-Identifier: MIT */
/* A fake Adobe Target profile API for tests, following ../shared/TARGET_API.md:
 * v1/v2 batchUpdate (form body "batch=" + CSV, every cell percent-decoded; a raw
 * "%" fails the batch with success=false, a raw "&" truncates it, "+" is a space),
 * batchStatus (incomplete N times, then complete, with showDetails counts), the
 * profile fetch, an optional bearer token, and the limits (500,000 rows, 50 MB,
 * 64 KB per profile, calls per minute -> 503). It records every request and
 * every limit or ordering violation, and serves them as JSON to tests:
 *   GET  /__state     profiles, counters, violations
 *   GET  /__requests  one entry per submission (ids, status, timing, fault)
 *   POST /__fault     {"mode": M, "count": N, ...}: queue faults for submissions
 *                     or polls (see fault_names below)
 *   POST /__config    {"token": T, "status_polls": N, "calls_per_minute": N,
 *                      "fault_rate": P, "seed": S}
 *   POST /__reset     forget everything */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_ROWS 500000
#define MAX_BYTES 50000000
#define MAX_PROFILE 65536

enum fault {
	F_NONE, F_500, F_502, F_503, F_504, F_408, F_429, F_401, F_403, F_413, F_400,
	F_DROP, F_DROP_AFTER_APPLY, F_SLOW, F_SUCCESS_FALSE, F_GARBAGE,
	F_POLL_STUCK, F_POLL_INCOMPLETE, F_POLL_500, F_POLL_GARBAGE,
	F_COUNT
};

static const char *const fault_names[F_COUNT] = {
	"none", "500", "502", "503", "504", "408", "429", "401", "403", "413", "400",
	"drop", "drop_after_apply", "slow", "success_false", "garbage",
	"poll_stuck", "poll_incomplete", "poll_500", "poll_garbage",
};

struct queued_fault {
	enum fault kind;
	int count;
	int retry_after; /* seconds; -1: no header */
	int delay_ms;    /* for slow */
	int polls;       /* for poll_incomplete */
};

struct batch {
	char id[64];
	int size;
	int polls_left;
	bool is_stuck;
	int successful, not_found, failed;
	int poll_faults_left; /* poll_500 / poll_garbage */
	enum fault poll_fault;
};

struct pending_reply {
	struct evhttp_request *req;
	struct evhttp_connection *conn;
	struct event *timer;
	bool is_gone;
	int code;
	char *body;
	json_t *entry;      /* request log entry to finish */
	json_t *ids;        /* ids in flight for this request */
	json_t *apply_rows; /* rows to apply when replying (slow) */
	bool is_v2;
	struct pending_reply *next;
};

static struct pending_reply *pending_replies;

static struct {
	struct event_base *base;
	struct evhttp *http;
	const char *client;
	char *token;
	int status_polls;
	int calls_per_minute;
	double fault_rate;
	unsigned seed;
	json_t *profiles;   /* id -> {attr: value} */
	json_t *requests;   /* array of request log entries */
	json_t *violations; /* array of strings */
	json_t *inflight;   /* id -> number of unanswered requests carrying it */
	struct batch *batches;
	size_t n_batches, cap_batches;
	struct queued_fault faults[64];
	size_t n_faults;
	long long calls[1000];
	size_t n_calls;
	long long submissions, polls, rejected_rate, auth_failures, rows_received;
	double busy_seconds; /* time spent handling submissions, reported apart in benchmarks */
	bool is_quiet;       /* --no-log: keep no request log (benchmarks) */
	unsigned long long batch_seq;
	char host[128];
} g;

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void violation(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "fake-target: VIOLATION %s\n", msg);
	json_array_append_new(g.violations, json_string(msg));
}

static void reply(struct evhttp_request *req, int code, const char *type, const char *body)
{
	struct evbuffer *out = evbuffer_new();
	if (!out)
		return;
	evbuffer_add(out, body, strlen(body));
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
	evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", out);
	evbuffer_free(out);
}

static void reply_json(struct evhttp_request *req, int code, json_t *obj)
{
	char *text = json_dumps(obj, JSON_COMPACT);
	reply(req, code, "application/json", text ? text : "{}");
	free(text);
	json_decref(obj);
}

/* One shared budget of calls per minute, as Target's limits page says. */
static bool rate_exceeded(void)
{
	long long now = now_ms();
	size_t keep = 0;
	for (size_t i = 0; i < g.n_calls; i++)
		if (now - g.calls[i] < 60000)
			g.calls[keep++] = g.calls[i];
	g.n_calls = keep;
	if ((int)g.n_calls >= g.calls_per_minute) {
		g.rejected_rate++;
		violation("call rate above %d per minute", g.calls_per_minute);
		return true;
	}
	if (g.n_calls < sizeof(g.calls) / sizeof(g.calls[0]))
		g.calls[g.n_calls++] = now;
	return false;
}

static bool authorized(struct evhttp_request *req)
{
	if (!g.token)
		return true;
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (h && strncmp(h, "Bearer ", 7) == 0 && strcmp(h + 7, g.token) == 0)
		return true;
	g.auth_failures++;
	reply(req, 401, "text/plain", "Unauthorized");
	return false;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Form-decodes a cell; returns NULL on a raw '%' (Target: "Unexpected error"). */
static char *decode_cell(const char *s, size_t len)
{
	char *out = malloc(len + 1);
	size_t o = 0;
	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '%') {
			int hi = i + 1 < len ? hexval(s[i + 1]) : -1, lo = i + 2 < len ? hexval(s[i + 2]) : -1;
			if (hi < 0 || lo < 0) {
				free(out);
				return NULL;
			}
			out[o++] = (char)(hi << 4 | lo);
			i += 2;
		} else {
			out[o++] = s[i] == '+' ? ' ' : s[i];
		}
	}
	out[o] = '\0';
	return out;
}

static char *submit_answer(bool success, const char *batch_id, const char *message)
{
	char *xml;
	if (success)
		(void)!asprintf(&xml, "<response>\n  <success>true</success>\n  <batchStatus>http://%s/m2/%s/profile/batchStatus?batchId=%s</batchStatus>\n  <message>Batch submitted for processing</message>\n</response>\n",
			       g.host, g.client, batch_id);
	else
		(void)!asprintf(&xml, "<response>\n  <success>false</success>\n  <message>%s</message>\n</response>\n", message);
	return xml;
}

/* Parses a batch body into rows (array of {id, attrs}); returns an error message
 * for success=false, or NULL. */
static const char *parse_batch(const char *body, size_t len, json_t *rows, bool *is_pcid)
{
	if (len < 6 || strncmp(body, "batch=", 6) != 0)
		return "Missing batch parameter";
	body += 6;
	len -= 6;
	/* A raw '&' ends the form field: the rest of the batch is silently lost. */
	const char *amp = memchr(body, '&', len);
	if (amp)
		len = (size_t)(amp - body);
	json_t *header = json_array();
	const char *p = body, *end = body + len;
	const char *err = NULL;
	bool first = true;
	while (p < end && !err) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		const char *line_end = le;
		if (line_end > p && line_end[-1] == '\r')
			line_end--;
		json_t *cells = json_array();
		const char *c = p;
		for (;;) {
			const char *comma = memchr(c, ',', (size_t)(line_end - c));
			const char *ce = comma ? comma : line_end;
			char *cell = decode_cell(c, (size_t)(ce - c));
			if (!cell) {
				err = "Unexpected error";
				break;
			}
			json_array_append_new(cells, json_string(cell));
			free(cell);
			if (!comma)
				break;
			c = comma + 1;
		}
		p = nl ? nl + 1 : end;
		if (err) {
			json_decref(cells);
			break;
		}
		if (first) {
			const char *key = json_string_value(json_array_get(cells, 0));
			if (!key || (strcmp(key, "thirdPartyId") != 0 && strcmp(key, "pcId") != 0)) {
				err = "First column must be thirdPartyId or pcId";
			}
			*is_pcid = key && strcmp(key, "pcId") == 0;
			json_decref(header);
			header = cells;
			first = false;
			continue;
		}
		if (json_array_size(cells) == 1 && !json_string_length(json_array_get(cells, 0))) {
			json_decref(cells);
			continue; /* blank line */
		}
		if (json_array_size(cells) > json_array_size(header)) {
			violation("row with %zu cells under a header of %zu", json_array_size(cells), json_array_size(header));
			json_decref(cells);
			continue;
		}
		const char *id = json_string_value(json_array_get(cells, 0));
		json_t *attrs = json_object();
		size_t bytes = 0;
		for (size_t i = 1; i < json_array_size(cells); i++) {
			const char *v = json_string_value(json_array_get(cells, i));
			if (!*v)
				continue; /* empty means no change */
			const char *name = json_string_value(json_array_get(header, i));
			json_object_set_new(attrs, name, json_string(v));
			bytes += strlen(name) + strlen(v);
		}
		if (bytes >= MAX_PROFILE)
			violation("profile %s carries %zu bytes (limit 64 KB)", id, bytes);
		if (strchr(id, '+') || strchr(id, '/'))
			violation("thirdPartyId \"%s\" contains '+' or '/'", id);
		json_array_append_new(rows, json_pack("{s:s, s:o}", "id", id, "attrs", attrs));
		json_decref(cells);
	}
	json_decref(header);
	if (!err && json_array_size(rows) > MAX_ROWS)
		violation("batch of %zu rows (limit %d)", json_array_size(rows), MAX_ROWS);
	return err;
}

/* Applies rows to the profile store; returns counts through the pointers. */
static void apply_rows(json_t *rows, bool is_v2, int *ok, int *not_found)
{
	size_t i;
	json_t *row;
	*ok = *not_found = 0;
	json_array_foreach(rows, i, row) {
		const char *id = json_string_value(json_object_get(row, "id"));
		json_t *attrs = json_object_get(row, "attrs");
		if (json_object_size(attrs) == 0)
			continue;
		json_t *profile = json_object_get(g.profiles, id);
		if (!profile) {
			if (!is_v2) {
				(*not_found)++;
				continue;
			}
			profile = json_object();
			json_object_set_new(g.profiles, id, profile);
		}
		json_object_update(profile, attrs);
		(*ok)++;
	}
}

static void inflight_add(json_t *ids, int delta)
{
	size_t i;
	json_t *id;
	json_array_foreach(ids, i, id) {
		const char *k = json_string_value(id);
		json_int_t n = json_integer_value(json_object_get(g.inflight, k)) + delta;
		if (n > 0)
			json_object_set_new(g.inflight, k, json_integer(n));
		else
			json_object_del(g.inflight, k);
	}
}

static struct queued_fault take_fault(bool is_poll)
{
	struct queued_fault none = { .kind = F_NONE, .retry_after = -1 };
	for (size_t i = 0; i < g.n_faults; i++) {
		bool poll_kind = g.faults[i].kind >= F_POLL_STUCK;
		if (poll_kind != is_poll)
			continue;
		struct queued_fault f = g.faults[i];
		if (--g.faults[i].count <= 0) {
			memmove(&g.faults[i], &g.faults[i + 1], (g.n_faults - i - 1) * sizeof(g.faults[0]));
			g.n_faults--;
		}
		return f;
	}
	if (!is_poll && g.fault_rate > 0 && (double)rand_r(&g.seed) / RAND_MAX < g.fault_rate) {
		static const enum fault mix[] = { F_500, F_502, F_503, F_504, F_429, F_DROP, F_DROP_AFTER_APPLY,
						   F_SUCCESS_FALSE, F_GARBAGE, F_SLOW };
		struct queued_fault f = { .kind = mix[rand_r(&g.seed) % (sizeof(mix) / sizeof(mix[0]))],
					  .retry_after = 1, .delay_ms = 300 };
		return f;
	}
	return none;
}

static struct batch *new_batch(int size)
{
	if (g.n_batches == g.cap_batches) {
		g.cap_batches = g.cap_batches ? g.cap_batches * 2 : 64;
		g.batches = realloc(g.batches, g.cap_batches * sizeof(*g.batches));
		if (!g.batches)
			abort();
	}
	struct batch *b = &g.batches[g.n_batches++];
	memset(b, 0, sizeof(*b));
	snprintf(b->id, sizeof(b->id), "%s-%lld-%llu", g.client, now_ms(), ++g.batch_seq);
	b->size = size;
	b->polls_left = g.status_polls;
	return b;
}

static void finish_entry(json_t *entry, int code, const char *outcome)
{
	json_object_set_new(entry, "status", json_integer(code));
	json_object_set_new(entry, "outcome", json_string(outcome));
	json_object_set_new(entry, "answered_ms", json_integer(now_ms()));
}

/* The client hung up (e.g. its timeout) before the delayed answer: it is no
 * longer waiting, so its ids no longer count as unanswered. */
static void on_conn_close(struct evhttp_connection *conn, void *arg)
{
	struct pending_reply *pr = arg;
	if (!pr->is_gone)
		inflight_add(pr->ids, -1);
	pr->is_gone = true;
}

/* evhttp does not read a connection while its request is being handled, so a
 * client that hung up is noticed by peeking at the socket. */
static void reap_gone_clients(void)
{
	for (struct pending_reply *pr = pending_replies; pr; pr = pr->next) {
		if (pr->is_gone)
			continue;
		struct bufferevent *bev = evhttp_connection_get_bufferevent(pr->conn);
		char c;
		if (bev && recv(bufferevent_getfd(bev), &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0)
			on_conn_close(pr->conn, pr);
	}
}

static void free_connection(evutil_socket_t fd, short what, void *arg)
{
	evhttp_connection_free(arg);
}

/* Closes the client's connection without an answer (after the callback returns). */
static void drop_connection(struct evhttp_request *req)
{
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	event_base_once(g.base, -1, EV_TIMEOUT, free_connection, conn, NULL);
}

static void on_delayed_reply(evutil_socket_t fd, short what, void *arg)
{
	struct pending_reply *pr = arg;
	int ok, nf;
	/* Target applies the batch whether or not the client is still there. */
	if (pr->apply_rows)
		apply_rows(pr->apply_rows, pr->is_v2, &ok, &nf);
	if (!pr->is_gone) {
		inflight_add(pr->ids, -1);
		evhttp_connection_set_closecb(pr->conn, NULL, NULL);
		reply(pr->req, pr->code, "application/xml", pr->body);
		finish_entry(pr->entry, pr->code, "slow");
	} else {
		finish_entry(pr->entry, 0, "slow, client gone; applied anyway");
	}
	for (struct pending_reply **pp = &pending_replies; *pp; pp = &(*pp)->next) {
		if (*pp == pr) {
			*pp = pr->next;
			break;
		}
	}
	event_free(pr->timer);
	json_decref(pr->ids);
	json_decref(pr->apply_rows);
	json_decref(pr->entry);
	free(pr->body);
	free(pr);
}

static void handle_submit_timed(struct evhttp_request *req, bool is_v2);

static void handle_submit(struct evhttp_request *req, bool is_v2)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	handle_submit_timed(req, is_v2);
	clock_gettime(CLOCK_MONOTONIC, &b);
	g.busy_seconds += (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
}

static void handle_submit_timed(struct evhttp_request *req, bool is_v2)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	char *body = malloc(len + 1);
	if (!body) {
		reply(req, 500, "text/plain", "oom");
		return;
	}
	evbuffer_copyout(in, body, len);
	body[len] = '\0';
	g.submissions++;
	const char *ctype = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
	if (!ctype || strncmp(ctype, "application/x-www-form-urlencoded", 33) != 0)
		violation("submission with Content-Type %s", ctype ? ctype : "(none)");
	if (len >= MAX_BYTES)
		violation("batch body of %zu bytes (limit under 50 MB)", len);

	json_t *rows = json_array();
	bool is_pcid = false;
	const char *err = parse_batch(body, len, rows, &is_pcid);
	free(body);
	json_t *ids = json_array();
	size_t i;
	json_t *row;
	reap_gone_clients();
	json_array_foreach(rows, i, row) {
		const char *id = json_string_value(json_object_get(row, "id"));
		if (json_object_get(g.inflight, id))
			violation("id %s sent while an earlier request carrying it is unanswered", id);
		json_array_append_new(ids, json_string(id));
	}
	g.rows_received += (long long)json_array_size(rows);
	json_t *entry = json_pack("{s:I, s:I, s:s, s:I, s:I}", "seq", (json_int_t)g.submissions, "arrived_ms",
				  (json_int_t)now_ms(), "path", evhttp_request_get_uri(req), "bytes", (json_int_t)len,
				  "rows", (json_int_t)json_array_size(rows));
	if (!g.is_quiet) {
		json_object_set(entry, "ids", ids);
		json_object_set(entry, "data", rows);
	}
	json_array_append(g.requests, entry);

	struct queued_fault f = take_fault(false);
	json_object_set_new(entry, "fault", json_string(fault_names[f.kind]));
	char ra[16];
	snprintf(ra, sizeof(ra), "%d", f.retry_after);
	int ok = 0, nf = 0;
	switch (f.kind) {
	case F_500: case F_502: case F_503: case F_504: case F_408: case F_429: case F_401: case F_403: case F_413: case F_400: {
		static const int codes[] = { [F_500] = 500, [F_502] = 502, [F_503] = 503, [F_504] = 504, [F_408] = 408,
					     [F_429] = 429, [F_401] = 401, [F_403] = 403, [F_413] = 413, [F_400] = 400 };
		if (f.retry_after >= 0 && (f.kind == F_429 || f.kind == F_503))
			evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", ra);
		reply(req, codes[f.kind], "text/plain", "injected fault");
		finish_entry(entry, codes[f.kind], "fault");
		goto out;
	}
	case F_DROP:
		finish_entry(entry, 0, "dropped before applying");
		drop_connection(req);
		goto out;
	case F_GARBAGE:
		if (!err)
			apply_rows(rows, is_v2, &ok, &nf);
		reply(req, 200, "text/html", "<html><body>Service Temporarily Unavailable");
		finish_entry(entry, 200, err ? "garbage" : "garbage after applying");
		goto out;
	case F_SUCCESS_FALSE:
		reply(req, 200, "application/xml",
		      "<response><success>false</success><message>Injected failure</message></response>");
		finish_entry(entry, 200, "success=false (injected)");
		goto out;
	default:
		break;
	}
	if (err) {
		char *xml = submit_answer(false, NULL, err);
		reply(req, 200, "application/xml", xml);
		free(xml);
		finish_entry(entry, 200, err);
		goto out;
	}
	struct batch *b = new_batch((int)json_array_size(rows));
	if (f.kind == F_SLOW) {
		struct pending_reply *pr = calloc(1, sizeof(*pr));
		pr->req = req;
		pr->conn = evhttp_request_get_connection(req);
		pr->code = 200;
		pr->body = submit_answer(true, b->id, NULL);
		pr->entry = json_incref(entry);
		pr->ids = json_incref(ids);
		pr->apply_rows = json_incref(rows);
		pr->is_v2 = is_v2;
		pr->timer = evtimer_new(g.base, on_delayed_reply, pr);
		struct timeval tv = { f.delay_ms / 1000, (f.delay_ms % 1000) * 1000 };
		evhttp_connection_set_closecb(pr->conn, on_conn_close, pr);
		inflight_add(ids, 1);
		pr->next = pending_replies;
		pending_replies = pr;
		evtimer_add(pr->timer, &tv);
		b->successful = (int)json_array_size(rows);
		goto out;
	}
	apply_rows(rows, is_v2, &ok, &nf);
	b->successful = ok;
	b->not_found = nf;
	if (f.kind == F_DROP_AFTER_APPLY) {
		finish_entry(entry, 0, "dropped after applying");
		drop_connection(req);
		goto out;
	}
	char *xml = submit_answer(true, b->id, NULL);
	reply(req, 200, "application/xml", xml);
	free(xml);
	finish_entry(entry, 200, "accepted");
	json_object_set_new(entry, "batch_id", json_string(b->id));
out:
	json_decref(entry);
	json_decref(ids);
	json_decref(rows);
}

static void handle_status(struct evhttp_request *req)
{
	struct evkeyvalq q;
	const char *uri = evhttp_request_get_uri(req);
	const char *query = strchr(uri, '?');
	g.polls++;
	if (!query || evhttp_parse_query_str(query + 1, &q) < 0) {
		reply(req, 400, "text/plain", "missing batchId");
		return;
	}
	const char *id = evhttp_find_header(&q, "batchId");
	const char *details = evhttp_find_header(&q, "showDetails");
	struct batch *b = NULL;
	for (size_t i = 0; id && i < g.n_batches; i++)
		if (strcmp(g.batches[i].id, id) == 0)
			b = &g.batches[i];
	if (!b) {
		evhttp_clear_headers(&q);
		reply(req, 404, "text/plain", "unknown batch");
		return;
	}
	struct queued_fault f = take_fault(true);
	if (f.kind == F_POLL_500) {
		evhttp_clear_headers(&q);
		reply(req, 500, "text/plain", "injected fault");
		return;
	}
	if (f.kind == F_POLL_GARBAGE) {
		evhttp_clear_headers(&q);
		reply(req, 200, "text/html", "<<<not xml");
		return;
	}
	if (f.kind == F_POLL_STUCK)
		b->is_stuck = true;
	if (f.kind == F_POLL_INCOMPLETE)
		b->polls_left += f.polls > 0 ? f.polls : 5;
	const char *status = "complete";
	if (b->is_stuck)
		status = "stuck";
	else if (b->polls_left > 0) {
		b->polls_left--;
		status = "incomplete";
	}
	char xml[1024];
	int n = snprintf(xml, sizeof(xml), "<response><batchId>%s</batchId><status>%s</status><batchSize>%d</batchSize>", b->id,
			 status, b->size);
	if (details && strcmp(details, "true") == 0)
		n += snprintf(xml + n, sizeof(xml) - (size_t)n,
			      "<consumedCount>%d</consumedCount><successfulUpdates>%d</successfulUpdates>"
			      "<profilesNotFound>%d</profilesNotFound><failedUpdates>%d</failedUpdates>",
			      b->size, b->successful, b->not_found, b->failed);
	snprintf(xml + n, sizeof(xml) - (size_t)n, "</response>");
	evhttp_clear_headers(&q);
	reply(req, 200, "application/xml", xml);
}

static void handle_fetch(struct evhttp_request *req, const char *id)
{
	char *dec = evhttp_uridecode(id, 0, NULL);
	json_t *p = dec ? json_object_get(g.profiles, dec) : NULL;
	if (!p)
		reply(req, 404, "application/json", "{\"error\":\"profile not found\"}");
	else
		reply_json(req, 200, json_pack("{s:s, s:O}", "thirdPartyId", dec, "profile", p));
	free(dec);
}

static json_t *read_json(struct evhttp_request *req)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	char *body = malloc(len + 1);
	if (!body)
		return NULL;
	evbuffer_copyout(in, body, len);
	json_t *j = json_loadb(body, len, 0, NULL);
	free(body);
	return j;
}

static void handle_fault(struct evhttp_request *req)
{
	json_t *j = read_json(req);
	const char *mode = json_string_value(json_object_get(j, "mode"));
	enum fault kind = F_COUNT;
	for (int i = 0; mode && i < F_COUNT; i++)
		if (strcmp(mode, fault_names[i]) == 0)
			kind = (enum fault)i;
	if (kind == F_COUNT || g.n_faults == sizeof(g.faults) / sizeof(g.faults[0])) {
		json_decref(j);
		reply(req, 400, "text/plain", "unknown fault mode");
		return;
	}
	struct queued_fault f = { .kind = kind, .count = 1, .retry_after = -1, .delay_ms = 1000 };
	if (json_is_integer(json_object_get(j, "count")))
		f.count = (int)json_integer_value(json_object_get(j, "count"));
	if (json_is_integer(json_object_get(j, "retry_after")))
		f.retry_after = (int)json_integer_value(json_object_get(j, "retry_after"));
	if (json_is_integer(json_object_get(j, "delay_ms")))
		f.delay_ms = (int)json_integer_value(json_object_get(j, "delay_ms"));
	if (json_is_integer(json_object_get(j, "polls")))
		f.polls = (int)json_integer_value(json_object_get(j, "polls"));
	g.faults[g.n_faults++] = f;
	json_decref(j);
	reply(req, 200, "application/json", "{\"ok\":true}");
}

static void handle_config(struct evhttp_request *req)
{
	json_t *j = read_json(req);
	json_t *v;
	if ((v = json_object_get(j, "token"))) {
		free(g.token);
		g.token = json_is_string(v) ? strdup(json_string_value(v)) : NULL;
	}
	if ((v = json_object_get(j, "status_polls")))
		g.status_polls = (int)json_integer_value(v);
	if ((v = json_object_get(j, "calls_per_minute")))
		g.calls_per_minute = (int)json_integer_value(v);
	if ((v = json_object_get(j, "fault_rate")))
		g.fault_rate = json_number_value(v);
	if ((v = json_object_get(j, "seed")))
		g.seed = (unsigned)json_integer_value(v);
	json_decref(j);
	reply(req, 200, "application/json", "{\"ok\":true}");
}

static void handle_state(struct evhttp_request *req)
{
	reply_json(req, 200, json_pack("{s:O, s:O, s:I, s:I, s:I, s:I, s:I}", "profiles", g.profiles, "violations", g.violations,
				       "submissions", (json_int_t)g.submissions, "polls", (json_int_t)g.polls, "batches",
				       (json_int_t)g.n_batches, "rate_rejections", (json_int_t)g.rejected_rate, "auth_failures",
				       (json_int_t)g.auth_failures));
}

static void reset_state(void)
{
	json_decref(g.profiles);
	json_decref(g.requests);
	json_decref(g.violations);
	json_decref(g.inflight);
	g.profiles = json_object();
	g.requests = json_array();
	g.violations = json_array();
	g.inflight = json_object();
	g.n_batches = 0;
	g.n_faults = 0;
	g.n_calls = 0;
	g.submissions = g.polls = g.rejected_rate = g.auth_failures = 0;
}

static void on_request(struct evhttp_request *req, void *arg)
{
	const char *uri = evhttp_request_get_uri(req);
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	char path[1024];
	size_t plen = strcspn(uri, "?");
	snprintf(path, sizeof(path), "%.*s", (int)(plen < sizeof(path) - 1 ? plen : sizeof(path) - 1), uri);
	char v1[256], v2[256], st[256], fetch[256];
	snprintf(v1, sizeof(v1), "/m2/%s/profile/batchUpdate", g.client);
	snprintf(v2, sizeof(v2), "/m2/%s/v2/profile/batchUpdate", g.client);
	snprintf(st, sizeof(st), "/m2/%s/profile/batchStatus", g.client);
	snprintf(fetch, sizeof(fetch), "/rest/v1/profiles/thirdPartyId/");

	if (strcmp(path, "/__state") == 0)
		{ handle_state(req); return; }
	if (strcmp(path, "/__count") == 0) {
		/* Cheap counters for benchmarks (no profile dump). */
		reply_json(req, 200, json_pack("{s:I, s:I, s:I, s:f}", "profiles", (json_int_t)json_object_size(g.profiles),
					       "submissions", (json_int_t)g.submissions, "rows", (json_int_t)g.rows_received,
					       "busy_seconds", g.busy_seconds));
		return;
	}
	if (strcmp(path, "/__requests") == 0)
		{ reply_json(req, 200, json_incref(g.requests)); return; }
	if (strcmp(path, "/__fault") == 0 && cmd == EVHTTP_REQ_POST)
		{ handle_fault(req); return; }
	if (strcmp(path, "/__config") == 0 && cmd == EVHTTP_REQ_POST)
		{ handle_config(req); return; }
	if (strcmp(path, "/__reset") == 0 && cmd == EVHTTP_REQ_POST) {
		reset_state();
		{ reply(req, 200, "application/json", "{\"ok\":true}"); return; }
	}
	bool is_submit = strcmp(path, v1) == 0 || strcmp(path, v2) == 0;
	bool is_status = strcmp(path, st) == 0;
	bool is_fetch = strncmp(path, fetch, strlen(fetch)) == 0;
	if (!is_submit && !is_status && !is_fetch)
		{ reply(req, 404, "text/plain", "not found"); return; }
	if (rate_exceeded())
		{ reply(req, 503, "text/plain", "Too many requests"); return; }
	if (!authorized(req))
		return;
	if (is_submit) {
		if (cmd != EVHTTP_REQ_POST)
			{ reply(req, 405, "text/plain", "POST only"); return; }
		{ handle_submit(req, strcmp(path, v2) == 0); return; }
	}
	if (is_status)
		{ handle_status(req); return; }
	handle_fetch(req, path + strlen(fetch));
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
	event_base_loopexit(g.base, NULL);
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "port-file", required_argument, NULL, 'f' },
		{ "client", required_argument, NULL, 'c' },
		{ "token", required_argument, NULL, 't' },
		{ "status-polls", required_argument, NULL, 's' },
		{ "calls-per-minute", required_argument, NULL, 'r' },
		{ "state-file", required_argument, NULL, 'S' },
		{ "no-log", no_argument, NULL, 'q' },
		{ NULL, 0, NULL, 0 },
	};
	int port = 0, opt;
	const char *port_file = NULL, *state_file = NULL;
	g.client = "demo";
	g.status_polls = 1;
	g.calls_per_minute = 50;
	g.seed = 1;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (opt) {
		case 'p': port = atoi(optarg); break;
		case 'f': port_file = optarg; break;
		case 'c': g.client = optarg; break;
		case 't': g.token = strdup(optarg); break;
		case 's': g.status_polls = atoi(optarg); break;
		case 'r': g.calls_per_minute = atoi(optarg); break;
		case 'S': state_file = optarg; break;
		case 'q': g.is_quiet = true; break;
		default:
			fprintf(stderr, "usage: fake-target [--port N] [--port-file F] [--client C] [--token T] "
					"[--status-polls N] [--calls-per-minute N] [--state-file F]\n");
			return 64;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	reset_state();
	/* Target keeps its profiles across an outage: so does the fake, with --state-file. */
	if (state_file && access(state_file, F_OK) == 0) {
		json_t *saved = json_load_file(state_file, 0, NULL);
		json_t *profiles = json_object_get(saved, "profiles"), *batches = json_object_get(saved, "batches");
		if (!json_is_object(profiles) || !json_is_array(batches)) {
			fprintf(stderr, "fake-target: cannot read %s\n", state_file);
			return 1;
		}
		json_decref(g.profiles);
		g.profiles = json_incref(profiles);
		size_t i;
		json_t *b;
		json_array_foreach(batches, i, b) {
			struct batch *nb = new_batch((int)json_integer_value(json_object_get(b, "size")));
			snprintf(nb->id, sizeof(nb->id), "%s", json_string_value(json_object_get(b, "id")));
			nb->polls_left = (int)json_integer_value(json_object_get(b, "polls_left"));
			nb->is_stuck = json_is_true(json_object_get(b, "stuck"));
			nb->successful = (int)json_integer_value(json_object_get(b, "successful"));
			nb->not_found = (int)json_integer_value(json_object_get(b, "not_found"));
		}
		json_decref(saved);
	}
	g.base = event_base_new();
	g.http = g.base ? evhttp_new(g.base) : NULL;
	if (!g.http)
		return 1;
	evhttp_set_max_body_size(g.http, 60 * 1000 * 1000);
	evhttp_set_allowed_methods(g.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
	evhttp_set_gencb(g.http, on_request, NULL);
	struct evhttp_bound_socket *sock = evhttp_bind_socket_with_handle(g.http, "127.0.0.1", (ev_uint16_t)port);
	if (!sock) {
		fprintf(stderr, "fake-target: cannot bind 127.0.0.1:%d: %s\n", port, strerror(errno));
		return 1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss, &sl);
	port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	snprintf(g.host, sizeof(g.host), "127.0.0.1:%d", port);
	if (port_file) {
		char tmp[4096];
		snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
		FILE *f = fopen(tmp, "w");
		if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 || rename(tmp, port_file) < 0) {
			fprintf(stderr, "fake-target: cannot write %s\n", port_file);
			return 1;
		}
	}
	printf("fake-target listening on http://%s (client %s)\n", g.host, g.client);
	fflush(stdout);
	struct event *term = evsignal_new(g.base, SIGTERM, on_term, NULL);
	struct event *intr = evsignal_new(g.base, SIGINT, on_term, NULL);
	event_add(term, NULL);
	event_add(intr, NULL);
	event_base_dispatch(g.base);
	event_free(term);
	event_free(intr);
	if (state_file) {
		json_t *batches = json_array();
		for (size_t i = 0; i < g.n_batches; i++) {
			struct batch *b = &g.batches[i];
			json_array_append_new(batches, json_pack("{s:s, s:i, s:i, s:b, s:i, s:i}", "id", b->id, "size", b->size,
								 "polls_left", b->polls_left, "stuck", b->is_stuck,
								 "successful", b->successful, "not_found", b->not_found));
		}
		json_t *saved = json_pack("{s:O, s:o}", "profiles", g.profiles, "batches", batches);
		if (json_dump_file(saved, state_file, JSON_COMPACT) < 0)
			fprintf(stderr, "fake-target: cannot write %s\n", state_file);
		json_decref(saved);
	}
	evhttp_free(g.http);
	event_base_free(g.base);
	reset_state();
	json_decref(g.profiles);
	json_decref(g.requests);
	json_decref(g.violations);
	json_decref(g.inflight);
	free(g.batches);
	free(g.token);
	return 0;
}
