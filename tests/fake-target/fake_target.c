/* SPDX-License-Identifier: MIT */
/* A fake Adobe Target profile API for tests, as hard to please as production
 * (../shared/TARGET_API.md):
 *   - v1/v2 batchUpdate: form body "batch=" + CSV, every cell percent-decoded
 *     (a raw "%" fails the batch with success=false, a raw "&" truncates it,
 *     "+" is a space); the limits (500,000 rows, 50 MB, 64 KB per profile).
 *   - Over TLS when given a certificate (--tls-cert/--tls-key), on 127.0.0.1.
 *   - Batch status served by a second "edge" host (127.0.0.2, its own port),
 *     given in the answer with http:// as Adobe's examples do; with TLS that
 *     host speaks TLS only, so a client that polls it over plain http fails (and
 *     is recorded as a violation). v2 status URLs carry &m2Node=00.
 *   - Asynchronous processing: an accepted batch is processed after
 *     process_delay_ms, in the order accepted; only then are its rows applied and
 *     its status complete. status_polls more polls say incomplete first (legacy).
 *   - Per-row failures: a share of rows (deterministic by id and how often the
 *     id was seen) fails; v2 status lists them as <profile><id>..</id>
 *     <status>failed</status></profile>, and they are not applied.
 *   - Silent loss: a share of rows is reported fine but never applied.
 *   - v2 override: a profile holds what its last page visit (mbox call) left
 *     plus only its latest batch row since (POST /__visit stands for a page).
 *   - One rolling call budget for submissions and status polls, shared with
 *     other tools of the account (other_calls_per_minute): above it, 503.
 *   - The profile fetch API in its JSON shape (attributes with modifiedAt), 404
 *     in its shape.
 *   - A bearer token checked on every endpoint.
 * It records every request and every violation (a limit or ordering rule
 * broken, a token or body on plain http), and serves them as JSON to tests:
 *   GET  /__state     profiles (as fetch would show them), counters, violations
 *   GET  /__requests  one entry per submission (ids, status, timing, fault)
 *   GET  /__polls     when each status poll arrived
 *   POST /__fault     {"mode": M, "count": N, ...}: queue faults for submissions
 *                     or polls (see fault_names below)
 *   POST /__config    {"token", "status_polls", "calls_per_minute", "fault_rate",
 *                      "seed", "process_delay_ms", "row_failure_rate", "loss_rate",
 *                      "other_calls_per_minute", "decode", "fetch_calls_per_minute", "fetch_delay_ms",
 *                      "window_ms" (the budgets' window; tests shorten the minute)}
 *   POST /__visit     {"id": I, "attrs": {...}}: a page visit sets attributes
 *   POST /__reset     forget everything */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <getopt.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>

#define MAX_ROWS 500000
#define MAX_BYTES 50000000
#define MAX_PROFILE 65536
#define MAX_CALLS 100000

enum fault {
	F_NONE, F_500, F_502, F_503, F_504, F_408, F_429, F_401, F_403, F_413, F_400,
	F_DROP, F_DROP_AFTER_APPLY, F_SLOW, F_SUCCESS_FALSE, F_GARBAGE, F_REDIRECT,
	F_POLL_STUCK, F_POLL_INCOMPLETE, F_POLL_500, F_POLL_GARBAGE, F_POLL_GONE, F_POLL_401,
	F_FETCH_GARBAGE, F_FETCH_500, F_FETCH_401,
	F_COUNT
};

static const char *const fault_names[F_COUNT] = {
	"none", "500", "502", "503", "504", "408", "429", "401", "403", "413", "400",
	"drop", "drop_after_apply", "slow", "success_false", "garbage", "302",
	"poll_stuck", "poll_incomplete", "poll_500", "poll_garbage", "poll_gone", "poll_401",
	"fetch_garbage", "fetch_500", "fetch_401",
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
	bool is_v2;
	int polls_left;       /* legacy: polls that say incomplete before complete */
	bool is_stuck;
	bool is_processed;
	long long ready_at;   /* when processing finishes */
	json_t *rows;         /* until processed */
	int successful, not_found, failed;
	json_t *failed_ids;   /* array of ids whose rows failed */
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
	size_t batch;       /* index of the batch to queue for processing when replying */
	struct pending_reply *next;
};

static struct pending_reply *pending_replies;

static struct {
	struct event_base *base;
	struct evhttp *http, *edge;
	SSL_CTX *tls;
	const char *client;
	char *token;
	int status_polls;
	int calls_per_minute;        /* the account's budget (submissions and polls) */
	int other_calls_per_minute;  /* what other tools of the account use of it */
	int fetch_calls_per_minute;  /* the fetch API's own budget (0: none) */
	int fetch_delay_ms;          /* each fetch answered this much later */
	long long window_ms;         /* the budgets' window: a minute (tests may shorten it) */
	int process_delay_ms;
	double row_failure_rate, loss_rate;
	bool is_decode_first;        /* decode the whole body before splitting rows and cells */
	double fault_rate;
	unsigned seed;
	/* id -> {"base": {attr: [value, ms]} (absent: none), "row": "attr\0value\0...", "row_at": ms, "at": ms}:
	 * a row packed in one string, so that a first load of millions of
	 * profiles costs a few allocations each, not one per value. */
	json_t *profiles;
	json_t *requests;   /* array of request log entries */
	json_t *violations; /* array of strings */
	json_t *inflight;   /* id -> number of unanswered requests carrying it */
	json_t *seen;       /* id -> rows received for it (for deterministic failures) */
	json_t *lost;       /* [id, ...] rows reported fine but never applied */
	json_t *poll_log;   /* [ms, ...] when each status poll arrived */
	struct batch *batches;
	size_t n_batches, cap_batches;
	size_t next_to_process;     /* batches are processed in the order accepted */
	size_t *order;              /* indexes of accepted batches, in that order */
	size_t n_order, cap_order;
	struct queued_fault faults[64];
	size_t n_faults;
	long long calls[MAX_CALLS], fetch_calls[MAX_CALLS];
	size_t n_calls, n_fetch_calls;
	long long submissions, polls, fetches, rejected_rate, auth_failures, rows_received, plain_on_tls;
	long long rows_failed, rows_lost;
	double busy_seconds; /* time spent handling submissions, reported apart in benchmarks */
	bool is_quiet;       /* --no-log: keep no request log (benchmarks) */
	unsigned long long batch_seq;
	char host[128], edge_host[128];
	struct event *processor;
	/* The fake IMS (OAuth client credentials) and Admin API (profile API
	 * tokens), on when client_id is set (POST /__config {"oauth": {...}}):
	 * IMS tokens and profile tokens expire, a new profile token invalidates
	 * the old one at once, as TARGET_API.md says. */
	struct {
		char *client_id, *secret, *tenant;
		long long ims_ttl_ms, token_ttl_ms;
		char ims_token[64];
		long long ims_expires_at, token_expires_at; /* 0: no token */
		long long grants, refused, gets, posts, seq;
		long long expired_uses;                     /* calls made with a profile token past its expiry */
	} oauth;
} g;

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void iso_time(long long ms, char *out, size_t size)
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&s, &tm);
	snprintf(out, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03lldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
		 tm.tm_hour, tm.tm_min, tm.tm_sec, ms % 1000);
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

/* A stable 64-bit hash of s and n, for shares that must not change between runs. */
static uint64_t hash_of(const char *s, long long n, uint64_t salt)
{
	uint64_t h = 1469598103934665603ULL ^ salt;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	h = (h ^ (uint64_t)n) * 1099511628211ULL;
	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 32;
	return h;
}

static bool in_share(const char *id, long long n, uint64_t salt, double share)
{
	return share > 0 && (double)(hash_of(id, n, salt) % 1000000) < share * 1000000.0;
}

/* --- the call budgets ---------------------------------------------------------------- */

static size_t in_window(long long *calls, size_t *n, long long now)
{
	size_t keep = 0;
	for (size_t i = 0; i < *n; i++)
		if (now - calls[i] < g.window_ms)
			calls[keep++] = calls[i];
	*n = keep;
	return keep;
}

/* One shared budget of calls per minute for the account, as Target's limits page
 * says: the client's own calls plus what other tools use. Above it, 503; the
 * client breaks the rule only when its own calls are above the budget. */
static bool rate_exceeded(void)
{
	long long now = now_ms();
	size_t own = in_window(g.calls, &g.n_calls, now);
	if ((int)own + g.other_calls_per_minute >= g.calls_per_minute) {
		g.rejected_rate++;
		if ((int)own >= g.calls_per_minute)
			violation("call rate above %d per minute", g.calls_per_minute);
		return true;
	}
	if (g.n_calls < MAX_CALLS)
		g.calls[g.n_calls++] = now;
	return false;
}

static bool fetch_rate_exceeded(void)
{
	if (g.fetch_calls_per_minute <= 0)
		return false;
	long long now = now_ms();
	if ((int)in_window(g.fetch_calls, &g.n_fetch_calls, now) >= g.fetch_calls_per_minute) {
		violation("fetch rate above %d per minute", g.fetch_calls_per_minute);
		return true;
	}
	if (g.n_fetch_calls < MAX_CALLS)
		g.fetch_calls[g.n_fetch_calls++] = now;
	return false;
}

static bool authorized(struct evhttp_request *req)
{
	if (!g.token)
		return true;
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	bool is_expired = g.oauth.token_expires_at && now_ms() >= g.oauth.token_expires_at;
	if (h && strncmp(h, "Bearer ", 7) == 0 && strcmp(h + 7, g.token) == 0 && !is_expired)
		return true;
	if (is_expired && h && strcmp(h + 7, g.token) == 0)
		g.oauth.expired_uses++;
	g.auth_failures++;
	reply(req, 401, "text/plain", "Unauthorized");
	return false;
}

/* --- decoding ------------------------------------------------------------------------- */

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

/* Form-decodes len bytes into out (at least len + 1); returns the length, or
 * -1 on a raw '%' (Target: "Unexpected error"). */
static long form_decode(const char *s, size_t len, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '%') {
			int hi = i + 1 < len ? hexval(s[i + 1]) : -1, lo = i + 2 < len ? hexval(s[i + 2]) : -1;
			if (hi < 0 || lo < 0)
				return -1;
			out[o++] = (char)(hi << 4 | lo);
			i += 2;
		} else {
			out[o++] = s[i] == '+' ? ' ' : s[i];
		}
	}
	out[o] = '\0';
	return (long)o;
}

static char *submit_answer(bool success, const struct batch *b, const char *message)
{
	char *xml = NULL;
	if (success)
		(void)!asprintf(&xml, "<response>\n  <success>true</success>\n  <batchStatus>http://%s/m2/%s/%sprofile/batchStatus?batchId=%s%s</batchStatus>\n  <message>Batch submitted for processing</message>\n</response>\n",
			       g.edge_host, g.client, b->is_v2 ? "v2/" : "", b->id, b->is_v2 ? "&amp;m2Node=00" : "");
	else
		(void)!asprintf(&xml, "<response>\n  <success>false</success>\n  <message>%s</message>\n</response>\n", message);
	return xml;
}

/* Splits one line into cells and decodes each (the documented order: rows and
 * cells are the file's own structure, then each cell is decoded). Returns
 * NULL after setting *err on a raw '%'. */
static json_t *split_cells(const char *p, const char *line_end, bool decode, const char **err)
{
	json_t *cells = json_array();
	char *buf = malloc((size_t)(line_end - p) + 1);
	const char *c = p;
	for (;;) {
		const char *comma = memchr(c, ',', (size_t)(line_end - c));
		const char *ce = comma ? comma : line_end;
		long n;
		if (decode) {
			n = form_decode(c, (size_t)(ce - c), buf);
		} else {
			n = ce - c;
			memcpy(buf, c, (size_t)n);
			buf[n] = '\0';
		}
		if (n < 0) {
			*err = "Unexpected error";
			json_decref(cells);
			free(buf);
			return NULL;
		}
		json_array_append_new(cells, json_stringn(buf, (size_t)n));
		if (!comma)
			break;
		c = comma + 1;
	}
	free(buf);
	return cells;
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
	char *decoded = NULL;
	if (g.is_decode_first) {
		/* The other reading: the whole field decoded before rows and cells
		 * are split, so an encoded ',' or newline inside a value splits it. */
		decoded = malloc(len + 1);
		long n = form_decode(body, len, decoded);
		if (n < 0) {
			free(decoded);
			return "Unexpected error";
		}
		body = decoded;
		len = (size_t)n;
	}
	json_t *header = NULL;
	const char *p = body, *end = body + len;
	const char *err = NULL;
	while (p < end && !err) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		const char *line_end = le;
		if (line_end > p && line_end[-1] == '\r')
			line_end--;
		json_t *cells = split_cells(p, line_end, !g.is_decode_first, &err);
		p = nl ? nl + 1 : end;
		if (!cells)
			break;
		if (!header) {
			const char *key = json_string_value(json_array_get(cells, 0));
			if (!key || (strcmp(key, "thirdPartyId") != 0 && strcmp(key, "pcId") != 0))
				err = "First column must be thirdPartyId or pcId";
			*is_pcid = key && strcmp(key, "pcId") == 0;
			header = cells;
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
		size_t bytes = 0, packed_len = 0;
		for (size_t i = 1; i < json_array_size(cells); i++)
			packed_len += json_string_length(json_array_get(header, i)) + json_string_length(json_array_get(cells, i)) + 2;
		char *packed = malloc(packed_len + 1), *o = packed;
		if (!packed)
			abort();
		for (size_t i = 1; i < json_array_size(cells); i++) {
			json_t *cell = json_array_get(cells, i), *name = json_array_get(header, i);
			size_t vlen = json_string_length(cell), nlen = json_string_length(name);
			if (!vlen)
				continue; /* empty means no change */
			memcpy(o, json_string_value(name), nlen + 1);
			o += nlen + 1;
			memcpy(o, json_string_value(cell), vlen + 1);
			o += vlen + 1;
			bytes += nlen + vlen;
		}
		json_t *attrs = json_stringn_nocheck(packed, (size_t)(o - packed));
		free(packed);
		if (bytes >= MAX_PROFILE)
			violation("profile %s carries %zu bytes (limit 64 KB)", id, bytes);
		if (strchr(id, '+') || strchr(id, '/'))
			violation("thirdPartyId \"%s\" contains '+' or '/'", id);
		json_array_append_new(rows, json_pack("{s:s, s:o}", "id", id, "attrs", attrs));
		json_decref(cells);
	}
	json_decref(header);
	free(decoded);
	if (!err && json_array_size(rows) > MAX_ROWS)
		violation("batch of %zu rows (limit %d)", json_array_size(rows), MAX_ROWS);
	return err;
}

/* --- profiles ---------------------------------------------------------------------- */

/* Calls fn for each (name, value) of a packed row. */
#define ROW_FOREACH(row, name, value)                                                                     \
	for (const char *name = json_string_value(row), *row_end_ = name ? name + json_string_length(row) : NULL, \
			*value = name ? name + strlen(name) + 1 : NULL;                                            \
	     name && name < row_end_; name = value + strlen(value) + 1, value = name + strlen(name) + 1)

/* A profile's attributes as fetch shows them, each as [value, ms]: its base
 * (what the last page visit or v1 row left) overlaid by its latest v2 row
 * since. */
static json_t *visible(json_t *profile)
{
	json_t *out = json_object();
	const char *k;
	json_t *v;
	json_int_t row_at = json_integer_value(json_object_get(profile, "row_at"));
	json_object_foreach(json_object_get(profile, "base"), k, v)
		json_object_set(out, k, v);
	ROW_FOREACH(json_object_get(profile, "row"), name, value)
		json_object_set_new(out, name, json_pack("[s, I]", value, row_at));
	return out;
}

static json_t *profile_new(void)
{
	return json_pack("{s:s, s:I, s:I}", "row", "", "row_at", (json_int_t)0, "at", (json_int_t)now_ms());
}

/* Applies one packed row. v2 overrides: the row replaces the previous row
 * since the last page visit. v1 (and a page visit) merge into the base. */
static void apply_row(json_t *profile, json_t *row, bool is_v2, long long at)
{
	if (is_v2) {
		json_object_set(profile, "row", row);
		json_object_set_new(profile, "row_at", json_integer(at));
	} else {
		json_t *base = visible(profile);
		ROW_FOREACH(row, name, value)
			json_object_set_new(base, name, json_pack("[s, I]", value, (json_int_t)at));
		json_object_set_new(profile, "base", base);
		json_object_set_new(profile, "row", json_string(""));
	}
	json_object_set_new(profile, "at", json_integer(at));
}

/* Processes a batch's rows: each fails, is lost, or is applied. */
static void process(struct batch *b)
{
	size_t i;
	json_t *row;
	long long at = now_ms();
	b->successful = b->not_found = b->failed = 0;
	json_array_foreach(b->rows, i, row) {
		const char *id = json_string_value(json_object_get(row, "id"));
		json_t *attrs = json_object_get(row, "attrs");
		json_int_t seen = json_integer_value(json_object_get(g.seen, id)) + 1;
		json_object_set_new(g.seen, id, json_integer(seen));
		if (json_string_length(attrs) == 0)
			continue;
		if (in_share(id, seen, 0x51ed, g.row_failure_rate)) {
			b->failed++;
			g.rows_failed++;
			json_array_append_new(b->failed_ids, json_string(id));
			continue;
		}
		json_t *profile = json_object_get(g.profiles, id);
		if (!profile) {
			if (!b->is_v2) {
				b->not_found++;
				continue;
			}
			profile = profile_new();
			json_object_set_new(g.profiles, id, profile);
		}
		b->successful++;
		if (in_share(id, seen, 0x1055, g.loss_rate)) {
			g.rows_lost++;
			json_array_append_new(g.lost, json_string(id));
			continue;
		}
		apply_row(profile, attrs, b->is_v2, at);
	}
	json_decref(b->rows);
	b->rows = NULL;
	b->is_processed = true;
}

/* Batches finish processing in the order they were accepted. */
static void on_processor(evutil_socket_t fd, short what, void *arg)
{
	long long now = now_ms();
	while (g.next_to_process < g.n_order) {
		struct batch *b = &g.batches[g.order[g.next_to_process]];
		if (b->ready_at > now)
			break;
		process(b);
		g.next_to_process++;
	}
}

/* Queues batch index i for processing after the delay. */
static void accept_for_processing(size_t i)
{
	if (g.n_order == g.cap_order) {
		g.cap_order = g.cap_order ? g.cap_order * 2 : 64;
		g.order = realloc(g.order, g.cap_order * sizeof(*g.order));
		if (!g.order)
			abort();
	}
	g.order[g.n_order++] = i;
	g.batches[i].ready_at = now_ms() + g.process_delay_ms;
	if (g.process_delay_ms == 0)
		on_processor(-1, 0, NULL);
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

enum fault_target { FOR_SUBMIT, FOR_POLL, FOR_FETCH };

static struct queued_fault take_fault_for(enum fault_target want)
{
	struct queued_fault none = { .kind = F_NONE, .retry_after = -1 };
	for (size_t i = 0; i < g.n_faults; i++) {
		enum fault k = g.faults[i].kind;
		enum fault_target t = k >= F_FETCH_GARBAGE ? FOR_FETCH : k >= F_POLL_STUCK ? FOR_POLL : FOR_SUBMIT;
		if (t != want)
			continue;
		struct queued_fault f = g.faults[i];
		if (--g.faults[i].count <= 0) {
			memmove(&g.faults[i], &g.faults[i + 1], (g.n_faults - i - 1) * sizeof(g.faults[0]));
			g.n_faults--;
		}
		return f;
	}
	if (want == FOR_SUBMIT && g.fault_rate > 0 && (double)rand_r(&g.seed) / RAND_MAX < g.fault_rate) {
		static const enum fault mix[] = { F_500, F_502, F_503, F_504, F_429, F_DROP, F_DROP_AFTER_APPLY,
						   F_SUCCESS_FALSE, F_GARBAGE, F_SLOW };
		struct queued_fault f = { .kind = mix[rand_r(&g.seed) % (sizeof(mix) / sizeof(mix[0]))],
					  .retry_after = 1, .delay_ms = 300 };
		return f;
	}
	return none;
}

static struct queued_fault take_fault(bool is_poll)
{
	return take_fault_for(is_poll ? FOR_POLL : FOR_SUBMIT);
}

static size_t new_batch(json_t *rows, bool is_v2)
{
	if (g.n_batches == g.cap_batches) {
		g.cap_batches = g.cap_batches ? g.cap_batches * 2 : 64;
		g.batches = realloc(g.batches, g.cap_batches * sizeof(*g.batches));
		if (!g.batches)
			abort();
	}
	struct batch *b = &g.batches[g.n_batches];
	memset(b, 0, sizeof(*b));
	snprintf(b->id, sizeof(b->id), "%s-%lld-%llu", g.client, now_ms(), ++g.batch_seq);
	b->size = rows ? (int)json_array_size(rows) : 0;
	b->rows = json_incref(rows);
	b->is_v2 = is_v2;
	b->polls_left = g.status_polls;
	b->failed_ids = json_array();
	return g.n_batches++;
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
	/* Target processes the batch whether or not the client is still there. */
	accept_for_processing(pr->batch);
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
		/* The log shows each row's attributes as an object. */
		json_t *data = json_array();
		json_array_foreach(rows, i, row) {
			json_t *attrs = json_object();
			ROW_FOREACH(json_object_get(row, "attrs"), name, value)
				json_object_set_new(attrs, name, json_string(value));
			json_array_append_new(data, json_pack("{s:O, s:o}", "id", json_object_get(row, "id"), "attrs", attrs));
		}
		json_object_set(entry, "ids", ids);
		json_object_set_new(entry, "data", data);
	}
	json_array_append(g.requests, entry);

	struct queued_fault f = take_fault(false);
	json_object_set_new(entry, "fault", json_string(fault_names[f.kind]));
	char ra[16];
	snprintf(ra, sizeof(ra), "%d", f.retry_after);
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
	case F_REDIRECT:
		/* A proxy in the way: never to be followed with the token. */
		evhttp_add_header(evhttp_request_get_output_headers(req), "Location", "http://127.0.0.3:9/elsewhere");
		reply(req, 302, "text/plain", "moved");
		finish_entry(entry, 302, "fault");
		goto out;
	case F_DROP:
		finish_entry(entry, 0, "dropped before applying");
		drop_connection(req);
		goto out;
	case F_GARBAGE:
		if (!err)
			accept_for_processing(new_batch(rows, is_v2));
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
	size_t bi = new_batch(rows, is_v2);
	if (f.kind == F_SLOW) {
		struct pending_reply *pr = calloc(1, sizeof(*pr));
		pr->req = req;
		pr->conn = evhttp_request_get_connection(req);
		pr->code = 200;
		pr->body = submit_answer(true, &g.batches[bi], NULL);
		pr->entry = json_incref(entry);
		pr->ids = json_incref(ids);
		pr->batch = bi;
		pr->timer = evtimer_new(g.base, on_delayed_reply, pr);
		struct timeval tv = { f.delay_ms / 1000, (f.delay_ms % 1000) * 1000 };
		evhttp_connection_set_closecb(pr->conn, on_conn_close, pr);
		inflight_add(ids, 1);
		pr->next = pending_replies;
		pending_replies = pr;
		evtimer_add(pr->timer, &tv);
		goto out;
	}
	accept_for_processing(bi);
	if (f.kind == F_DROP_AFTER_APPLY) {
		finish_entry(entry, 0, "dropped after applying");
		drop_connection(req);
		goto out;
	}
	char *xml = submit_answer(true, &g.batches[bi], NULL);
	reply(req, 200, "application/xml", xml);
	free(xml);
	finish_entry(entry, 200, "accepted");
	json_object_set_new(entry, "batch_id", json_string(g.batches[bi].id));
out:
	json_decref(entry);
	json_decref(ids);
	json_decref(rows);
}

/* The status answer; with showDetails the counts, and (v2, complete) one
 * <profile> element per failed row, streamed into the buffer. */
static void status_answer(struct evbuffer *out, const struct batch *b, const char *status, bool details)
{
	evbuffer_add_printf(out, "<response><batchId>%s</batchId><status>%s</status><batchSize>%d</batchSize>", b->id,
			    status, b->size);
	bool complete = strcmp(status, "complete") == 0;
	if (details && complete)
		evbuffer_add_printf(out, "<consumedCount>%d</consumedCount><successfulUpdates>%d</successfulUpdates>"
				    "<profilesNotFound>%d</profilesNotFound><failedUpdates>%d</failedUpdates>",
				    b->size, b->successful, b->not_found, b->failed);
	if (complete && b->is_v2) {
		size_t i;
		json_t *id;
		json_array_foreach(b->failed_ids, i, id)
			evbuffer_add_printf(out, "<profile><id>%s</id><status>failed</status></profile>", json_string_value(id));
	}
	evbuffer_add_printf(out, "</response>");
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
	if (!g.is_quiet)
		json_array_append_new(g.poll_log, json_integer(now_ms()));
	struct batch *b = NULL;
	for (size_t i = 0; id && i < g.n_batches; i++)
		if (strcmp(g.batches[i].id, id) == 0)
			b = &g.batches[i];
	struct queued_fault f = b ? take_fault(true) : (struct queued_fault){ .kind = F_NONE };
	if (!b || f.kind == F_POLL_GONE) {
		evhttp_clear_headers(&q);
		reply(req, 404, "text/plain", "unknown batch");
		return;
	}
	if (f.kind == F_POLL_500 || f.kind == F_POLL_401) {
		evhttp_clear_headers(&q);
		reply(req, f.kind == F_POLL_500 ? 500 : 401, "text/plain", "injected fault");
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
	if (b->is_stuck) {
		status = "stuck";
	} else if (!b->is_processed) {
		status = "incomplete";
	} else if (b->polls_left > 0) {
		b->polls_left--;
		status = "incomplete";
	}
	struct evbuffer *out = evbuffer_new();
	status_answer(out, b, status, details && strcmp(details, "true") == 0);
	evhttp_clear_headers(&q);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/xml");
	evhttp_send_reply(req, 200, "OK", out);
	evbuffer_free(out);
}

/* GET /rest/v1/profiles/thirdPartyId/{id}?client=C (or /rest/v1/profiles/{pcId}). */
static void answer_fetch(struct evhttp_request *req, const char *id, bool is_pcid);

struct delayed_fetch {
	struct evhttp_request *req;
	char *id;
	bool is_pcid;
};

static void on_delayed_fetch(evutil_socket_t fd, short what, void *arg)
{
	struct delayed_fetch *df = arg;
	answer_fetch(df->req, df->id, df->is_pcid);
	free(df->id);
	free(df);
}

/* The fetch API, answering after fetch_delay_ms (a slow Target). */
static void handle_fetch(struct evhttp_request *req, const char *id, bool is_pcid)
{
	struct delayed_fetch *df = g.fetch_delay_ms > 0 ? calloc(1, sizeof(*df)) : NULL;
	if (df && (df->id = strdup(id))) {
		df->req = req;
		df->is_pcid = is_pcid;
		struct timeval tv = { g.fetch_delay_ms / 1000, (g.fetch_delay_ms % 1000) * 1000 };
		if (event_base_once(g.base, -1, EV_TIMEOUT, on_delayed_fetch, df, &tv) == 0)
			return;
		free(df->id);
	}
	free(df);
	answer_fetch(req, id, is_pcid);
}

static void answer_fetch(struct evhttp_request *req, const char *id, bool is_pcid)
{
	g.fetches++;
	struct queued_fault f = take_fault_for(FOR_FETCH);
	if (f.kind == F_FETCH_GARBAGE) {
		reply(req, 200, "application/json", "{\"profileAttributes\": [oops");
		return;
	}
	if (f.kind == F_FETCH_500 || f.kind == F_FETCH_401) {
		reply(req, f.kind == F_FETCH_500 ? 500 : 401, "text/plain", "injected fault");
		return;
	}
	char *dec = evhttp_uridecode(id, 0, NULL);
	json_t *p = dec ? json_object_get(g.profiles, dec) : NULL;
	if (!p) {
		char msg[512];
		snprintf(msg, sizeof(msg), "No profile found for client %s with %s=%s", g.client,
			 is_pcid ? "tntId" : "third party id", dec ? dec : "");
		reply_json(req, 404, json_pack("{s:i, s:s}", "status", 404, "message", msg));
		free(dec);
		return;
	}
	json_t *attrs = json_object(), *vis = visible(p);
	char at[96];
	const char *k;
	json_t *v;
	json_object_foreach(vis, k, v) {
		iso_time(json_integer_value(json_array_get(v, 1)), at, sizeof(at));
		json_object_set_new(attrs, k, json_pack("{s:O, s:s}", "value", json_array_get(v, 0), "modifiedAt", at));
	}
	json_decref(vis);
	/* Target's own attributes, which a client never sent. */
	iso_time(json_integer_value(json_object_get(p, "at")), at, sizeof(at));
	json_object_set_new(attrs, "firstSessionStart", json_pack("{s:s, s:s}", "value", at, "modifiedAt", at));
	json_object_set_new(attrs, "user.browser", json_pack("{s:s, s:s}", "value", "Mozilla", "modifiedAt", at));
	char visitor[300];
	snprintf(visitor, sizeof(visitor), "%s-%s", dec, is_pcid ? "pcId" : "mbox3rdPartyId");
	reply_json(req, 200, json_pack("{s:s, s:s, s:s, s:o}", "client", g.client, "visitorId", visitor, "modifiedAt", at,
				       "profileAttributes", attrs));
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
	if ((v = json_object_get(j, "other_calls_per_minute")))
		g.other_calls_per_minute = (int)json_integer_value(v);
	if ((v = json_object_get(j, "window_ms")))
		g.window_ms = json_integer_value(v) > 0 ? json_integer_value(v) : 60000;
	if ((v = json_object_get(j, "fetch_calls_per_minute")))
		g.fetch_calls_per_minute = (int)json_integer_value(v);
	if ((v = json_object_get(j, "fetch_delay_ms")))
		g.fetch_delay_ms = (int)json_integer_value(v);
	if ((v = json_object_get(j, "fault_rate")))
		g.fault_rate = json_number_value(v);
	if ((v = json_object_get(j, "seed")))
		g.seed = (unsigned)json_integer_value(v);
	if ((v = json_object_get(j, "process_delay_ms")))
		g.process_delay_ms = (int)json_integer_value(v);
	if ((v = json_object_get(j, "row_failure_rate")))
		g.row_failure_rate = json_number_value(v);
	if ((v = json_object_get(j, "loss_rate")))
		g.loss_rate = json_number_value(v);
	json_t *o = json_object_get(j, "oauth");
	if (json_is_object(o)) {
		free(g.oauth.client_id);
		free(g.oauth.secret);
		free(g.oauth.tenant);
		const char *id = json_string_value(json_object_get(o, "client_id"));
		const char *secret = json_string_value(json_object_get(o, "secret"));
		const char *tenant = json_string_value(json_object_get(o, "tenant"));
		g.oauth.client_id = strdup(id ? id : "");
		g.oauth.secret = strdup(secret ? secret : "");
		g.oauth.tenant = strdup(tenant ? tenant : "");
		g.oauth.ims_ttl_ms = json_integer_value(json_object_get(o, "ims_ttl_ms"));
		g.oauth.token_ttl_ms = json_integer_value(json_object_get(o, "token_ttl_ms"));
		if (g.oauth.ims_ttl_ms <= 0)
			g.oauth.ims_ttl_ms = 86400000;
		if (g.oauth.token_ttl_ms <= 0)
			g.oauth.token_ttl_ms = 86400000;
		/* Authentication is on; no profile token exists until one is made. */
		free(g.token);
		g.token = strdup("");
		g.oauth.token_expires_at = 1;
	}
	if ((v = json_object_get(j, "decode")))
		g.is_decode_first = json_is_string(v) && strcmp(json_string_value(v), "decode_first") == 0;
	json_decref(j);
	reply(req, 200, "application/json", "{\"ok\":true}");
}

/* A page visit (an mbox call) for id: attrs are set "by a page", and the
 * profile's batch row so far becomes part of its base. */
static void handle_visit(struct evhttp_request *req)
{
	json_t *j = read_json(req);
	const char *id = json_string_value(json_object_get(j, "id"));
	json_t *attrs = json_object_get(j, "attrs");
	if (!id || !json_is_object(attrs)) {
		json_decref(j);
		reply(req, 400, "text/plain", "expected {id, attrs}");
		return;
	}
	json_t *profile = json_object_get(g.profiles, id);
	if (!profile) {
		profile = profile_new();
		json_object_set_new(g.profiles, id, profile);
	}
	struct evbuffer *packed = evbuffer_new();
	const char *k;
	json_t *v;
	json_object_foreach(attrs, k, v) {
		const char *val = json_is_string(v) ? json_string_value(v) : "";
		evbuffer_add(packed, k, strlen(k) + 1);
		evbuffer_add(packed, val, strlen(val) + 1);
	}
	size_t plen = evbuffer_get_length(packed);
	json_t *row = json_stringn_nocheck((const char *)evbuffer_pullup(packed, -1), plen);
	evbuffer_free(packed);
	apply_row(profile, row, false, now_ms());
	json_decref(row);
	json_decref(j);
	reply(req, 200, "application/json", "{\"ok\":true}");
}

static void handle_state(struct evhttp_request *req)
{
	json_t *shown = json_object();
	const char *id;
	json_t *p;
	json_object_foreach(g.profiles, id, p) {
		json_t *attrs = json_object(), *vis = visible(p);
		const char *k;
		json_t *v;
		json_object_foreach(vis, k, v)
			json_object_set(attrs, k, json_array_get(v, 0));
		json_decref(vis);
		json_object_set_new(shown, id, attrs);
	}
	size_t unprocessed = g.n_order - g.next_to_process;
	reply_json(req, 200, json_pack("{s:o, s:O, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:O, s:I}", "profiles",
				       shown, "violations", g.violations, "submissions", (json_int_t)g.submissions, "polls",
				       (json_int_t)g.polls, "batches", (json_int_t)g.n_batches, "rate_rejections",
				       (json_int_t)g.rejected_rate, "auth_failures", (json_int_t)g.auth_failures,
				       "rows_failed", (json_int_t)g.rows_failed, "rows_lost", (json_int_t)g.rows_lost,
				       "unprocessed", (json_int_t)unprocessed, "fetches", (json_int_t)g.fetches, "lost",
				       g.lost, "plain_on_tls", (json_int_t)g.plain_on_tls));
}

/* GET /__oauth: what the fake IMS and Admin API did. */
static void handle_oauth_state(struct evhttp_request *req)
{
	reply_json(req, 200, json_pack("{s:I, s:I, s:I, s:I, s:I, s:s?}", "grants", (json_int_t)g.oauth.grants, "refused",
				       (json_int_t)g.oauth.refused, "gets", (json_int_t)g.oauth.gets, "posts",
				       (json_int_t)g.oauth.posts, "expired_uses", (json_int_t)g.oauth.expired_uses,
				       "token", g.token));
}

static void free_batches(void)
{
	for (size_t i = 0; i < g.n_batches; i++) {
		json_decref(g.batches[i].rows);
		json_decref(g.batches[i].failed_ids);
	}
	g.n_batches = 0;
	g.n_order = g.next_to_process = 0;
}

static void reset_state(void)
{
	json_decref(g.profiles);
	json_decref(g.requests);
	json_decref(g.violations);
	json_decref(g.inflight);
	json_decref(g.seen);
	json_decref(g.lost);
	json_decref(g.poll_log);
	g.poll_log = json_array();
	g.profiles = json_object();
	g.requests = json_array();
	g.violations = json_array();
	g.inflight = json_object();
	g.seen = json_object();
	g.lost = json_array();
	free_batches();
	g.n_faults = 0;
	g.n_calls = g.n_fetch_calls = 0;
	g.submissions = g.polls = g.fetches = g.rejected_rate = g.auth_failures = g.rows_failed = g.rows_lost = 0;
}

/* --- the fake IMS and Admin API ------------------------------------------------ */

static char *body_text(struct evhttp_request *req)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	char *body = malloc(len + 1);
	if (body) {
		evbuffer_copyout(in, body, len);
		body[len] = '\0';
	}
	return body;
}

/* POST /ims/token/v3, form grant_type=client_credentials&client_id&client_secret&scope. */
static void handle_ims(struct evhttp_request *req)
{
	char *body = body_text(req);
	struct evkeyvalq form;
	TAILQ_INIT(&form);
	if (!body || evhttp_parse_query_str(body, &form) < 0) {
		free(body);
		reply(req, 400, "application/json", "{\"error\":\"invalid_request\"}");
		return;
	}
	const char *grant = evhttp_find_header(&form, "grant_type"), *id = evhttp_find_header(&form, "client_id");
	const char *secret = evhttp_find_header(&form, "client_secret");
	if (!grant || strcmp(grant, "client_credentials") != 0) {
		reply(req, 400, "application/json", "{\"error\":\"unsupported_grant_type\"}");
	} else if (!id || !secret || strcmp(id, g.oauth.client_id) != 0 || strcmp(secret, g.oauth.secret) != 0) {
		g.oauth.refused++;
		reply(req, 401, "application/json",
		      "{\"error\":\"invalid_client\",\"error_description\":\"invalid client_id or client_secret\"}");
	} else {
		g.oauth.grants++;
		snprintf(g.oauth.ims_token, sizeof(g.oauth.ims_token), "ims-%lld-%lld", ++g.oauth.seq, now_ms());
		g.oauth.ims_expires_at = now_ms() + g.oauth.ims_ttl_ms;
		reply_json(req, 200, json_pack("{s:s, s:s, s:I}", "access_token", g.oauth.ims_token, "token_type",
					       "bearer", "expires_in", (json_int_t)(g.oauth.ims_ttl_ms / 1000)));
	}
	evhttp_clear_headers(&form);
	free(body);
}

/* GET (the current token) or POST (a new one, the old one invalid at once)
 * /{tenant}/target/authentication/token?authorizationScope=profile_api. */
static void handle_admin_token(struct evhttp_request *req, enum evhttp_cmd_type cmd)
{
	struct evkeyvalq *h = evhttp_request_get_input_headers(req);
	const char *auth = evhttp_find_header(h, "Authorization"), *key = evhttp_find_header(h, "X-Api-Key");
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	long long now = now_ms();
	if (!auth || strncmp(auth, "Bearer ", 7) != 0 || !g.oauth.ims_token[0] || strcmp(auth + 7, g.oauth.ims_token) != 0 ||
	    now >= g.oauth.ims_expires_at) {
		g.oauth.refused++;
		reply(req, 401, "application/json", "{\"error_code\":\"401013\",\"message\":\"Oauth token is not valid\"}");
		return;
	}
	if (!key || strcmp(key, g.oauth.client_id) != 0) {
		g.oauth.refused++;
		reply(req, 403, "application/json", "{\"error_code\":\"403003\",\"message\":\"Api Key is invalid\"}");
		return;
	}
	if (!query || !strstr(query, "authorizationScope=profile_api")) {
		reply(req, 400, "application/json", "{\"message\":\"authorizationScope is required\"}");
		return;
	}
	if (cmd == EVHTTP_REQ_POST) {
		g.oauth.posts++;
		char tok[64];
		snprintf(tok, sizeof(tok), "profile-%lld-%lld", ++g.oauth.seq, now);
		free(g.token);
		g.token = strdup(tok);
		g.oauth.token_expires_at = now + g.oauth.token_ttl_ms;
	} else if (cmd == EVHTTP_REQ_GET) {
		g.oauth.gets++;
		if (!g.token || !g.oauth.token_expires_at || now >= g.oauth.token_expires_at) {
			reply(req, 404, "application/json", "{\"message\":\"No token found for profile_api\"}");
			return;
		}
	} else {
		reply(req, 405, "text/plain", "GET or POST");
		return;
	}
	reply_json(req, 200, json_pack("{s:s, s:s, s:s, s:I}", "accessToken", g.token, "tokenType", "bearer", "scope",
				       "profile_api", "expiresIn", (json_int_t)((g.oauth.token_expires_at - now) / 1000)));
}

/* Returns true if path was the IMS's or the Admin API's. */
static bool handle_oauth(struct evhttp_request *req, const char *path, enum evhttp_cmd_type cmd)
{
	if (!g.oauth.client_id)
		return false;
	char admin[256];
	snprintf(admin, sizeof(admin), "/%s/target/authentication/token", g.oauth.tenant);
	if (strcmp(path, "/ims/token/v3") == 0 && cmd == EVHTTP_REQ_POST)
		handle_ims(req);
	else if (strcmp(path, admin) == 0)
		handle_admin_token(req, cmd);
	else
		return false;
	return true;
}

/* Control endpoints for tests (on the main host only). Returns true if path was one. */
static bool handle_control(struct evhttp_request *req, const char *path, enum evhttp_cmd_type cmd)
{
	if (strcmp(path, "/__state") == 0) {
		handle_state(req);
	} else if (strcmp(path, "/__count") == 0) {
		/* Cheap counters for benchmarks (no profile dump). */
		reply_json(req, 200, json_pack("{s:I, s:I, s:I, s:I, s:f, s:s}", "profiles",
					       (json_int_t)json_object_size(g.profiles), "submissions", (json_int_t)g.submissions,
					       "polls", (json_int_t)g.polls, "rows", (json_int_t)g.rows_received,
					       "busy_seconds", g.busy_seconds, "edge_host", g.edge_host));
	} else if (strcmp(path, "/__oauth") == 0) {
		handle_oauth_state(req);
	} else if (strcmp(path, "/__requests") == 0) {
		reply_json(req, 200, json_incref(g.requests));
	} else if (strcmp(path, "/__polls") == 0) {
		reply_json(req, 200, json_incref(g.poll_log));
	} else if (strcmp(path, "/__fault") == 0 && cmd == EVHTTP_REQ_POST) {
		handle_fault(req);
	} else if (strcmp(path, "/__config") == 0 && cmd == EVHTTP_REQ_POST) {
		handle_config(req);
	} else if (strcmp(path, "/__visit") == 0 && cmd == EVHTTP_REQ_POST) {
		handle_visit(req);
	} else if (strcmp(path, "/__reset") == 0 && cmd == EVHTTP_REQ_POST) {
		reset_state();
		reply(req, 200, "application/json", "{\"ok\":true}");
	} else {
		return false;
	}
	return true;
}

static void path_of(struct evhttp_request *req, char *path, size_t size)
{
	const char *uri = evhttp_request_get_uri(req);
	size_t plen = strcspn(uri, "?");
	snprintf(path, size, "%.*s", (int)(plen < size - 1 ? plen : size - 1), uri);
}

/* The main host: submissions, the fetch API, and the control endpoints. */
static void on_request(struct evhttp_request *req, void *arg)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	char path[1024], v1[256], v2[256];
	path_of(req, path, sizeof(path));
	if (handle_control(req, path, cmd) || handle_oauth(req, path, cmd))
		return;
	snprintf(v1, sizeof(v1), "/m2/%s/profile/batchUpdate", g.client);
	snprintf(v2, sizeof(v2), "/m2/%s/v2/profile/batchUpdate", g.client);
	static const char tp[] = "/rest/v1/profiles/thirdPartyId/", pc[] = "/rest/v1/profiles/";
	bool is_submit = strcmp(path, v1) == 0 || strcmp(path, v2) == 0;
	bool is_fetch = strncmp(path, pc, strlen(pc)) == 0;
	if (is_fetch) {
		bool is_tp = strncmp(path, tp, strlen(tp)) == 0;
		const char *id = path + (is_tp ? strlen(tp) : strlen(pc));
		if (!*id || strchr(id, '/'))
			{ reply(req, 404, "application/json", "{\"status\":404,\"message\":\"not found\"}"); return; }
		if (fetch_rate_exceeded())
			{ reply(req, 429, "application/json", "{\"status\":429,\"message\":\"Too many requests\"}"); return; }
		if (!authorized(req))
			return;
		handle_fetch(req, id, !is_tp);
		return;
	}
	if (!is_submit)
		{ reply(req, 404, "text/plain", "not found"); return; }
	if (rate_exceeded())
		{ reply(req, 503, "text/plain", "Too many requests"); return; }
	if (!authorized(req))
		return;
	if (cmd != EVHTTP_REQ_POST)
		{ reply(req, 405, "text/plain", "POST only"); return; }
	handle_submit(req, strcmp(path, v2) == 0);
}

/* The edge host: batch status only. */
static void on_edge_request(struct evhttp_request *req, void *arg)
{
	char path[1024], v1[256], v2[256];
	path_of(req, path, sizeof(path));
	snprintf(v1, sizeof(v1), "/m2/%s/profile/batchStatus", g.client);
	snprintf(v2, sizeof(v2), "/m2/%s/v2/profile/batchStatus", g.client);
	if (strcmp(path, v1) != 0 && strcmp(path, v2) != 0)
		{ reply(req, 404, "text/plain", "not found"); return; }
	if (rate_exceeded())
		{ reply(req, 503, "text/plain", "Too many requests"); return; }
	if (!authorized(req))
		return;
	handle_status(req);
}

/* --- TLS ---------------------------------------------------------------------------- */

/* A client that speaks plain http to a TLS port: the handshake fails with
 * SSL_R_HTTP_REQUEST, seen here before the bufferevent takes the error. */
static void on_tls_info(const SSL *ssl, int where, int ret)
{
	if ((where & SSL_CB_EXIT) && ret <= 0 && ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_HTTP_REQUEST) {
		g.plain_on_tls++;
		violation("a plain http request reached a TLS-only port");
	}
}

static struct bufferevent *make_tls_bev(struct event_base *base, void *arg)
{
	SSL *ssl = SSL_new(g.tls);
	return ssl ? bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE) : NULL;
}

static int bind_http(struct evhttp *http, const char *addr, int port, int *bound)
{
	struct evhttp_bound_socket *sock = evhttp_bind_socket_with_handle(http, addr, (ev_uint16_t)port);
	if (!sock) {
		fprintf(stderr, "fake-target: cannot bind %s:%d: %s\n", addr, port, strerror(errno));
		return -1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss, &sl);
	*bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return 0;
}

static struct evhttp *new_http(void (*cb)(struct evhttp_request *, void *))
{
	struct evhttp *http = evhttp_new(g.base);
	if (!http)
		return NULL;
	evhttp_set_max_body_size(http, 60 * 1000 * 1000);
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
	evhttp_set_gencb(http, cb, NULL);
	if (g.tls)
		evhttp_set_bevcb(http, make_tls_bev, NULL);
	return http;
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
		{ "tls-cert", required_argument, NULL, 'C' },
		{ "tls-key", required_argument, NULL, 'K' },
		{ "edge-addr", required_argument, NULL, 'E' },
		{ "edge-port", required_argument, NULL, 'e' },
		{ "process-delay-ms", required_argument, NULL, 'D' },
		{ NULL, 0, NULL, 0 },
	};
	int port = 0, edge_port = 0, opt;
	const char *port_file = NULL, *state_file = NULL, *cert = NULL, *key = NULL, *edge_addr = "127.0.0.2";
	g.client = "demo";
	g.status_polls = 1;
	g.calls_per_minute = 50;
	g.window_ms = 60000;
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
		case 'C': cert = optarg; break;
		case 'K': key = optarg; break;
		case 'E': edge_addr = optarg; break;
		case 'e': edge_port = atoi(optarg); break;
		case 'D': g.process_delay_ms = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: fake-target [--port N] [--port-file F] [--client C] [--token T] "
					"[--status-polls N] [--calls-per-minute N] [--state-file F] [--tls-cert F --tls-key F] "
					"[--edge-addr A] [--edge-port N] [--process-delay-ms N]\n");
			return 64;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	reset_state();
	if (cert || key) {
		g.tls = SSL_CTX_new(TLS_server_method());
		if (!g.tls || SSL_CTX_use_certificate_chain_file(g.tls, cert) != 1 ||
		    SSL_CTX_use_PrivateKey_file(g.tls, key, SSL_FILETYPE_PEM) != 1) {
			fprintf(stderr, "fake-target: cannot load the TLS certificate and key\n");
			ERR_print_errors_fp(stderr);
			return 1;
		}
		SSL_CTX_set_info_callback(g.tls, on_tls_info);
	}
	/* Target keeps its profiles across an outage: so does the fake, with --state-file. */
	if (state_file && access(state_file, F_OK) == 0) {
		json_t *saved = json_load_file(state_file, JSON_ALLOW_NUL, NULL);
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
			size_t bi = new_batch(NULL, json_is_true(json_object_get(b, "v2")));
			struct batch *nb = &g.batches[bi];
			nb->size = (int)json_integer_value(json_object_get(b, "size"));
			snprintf(nb->id, sizeof(nb->id), "%s", json_string_value(json_object_get(b, "id")));
			nb->polls_left = (int)json_integer_value(json_object_get(b, "polls_left"));
			nb->is_stuck = json_is_true(json_object_get(b, "stuck"));
			nb->is_processed = true;
			nb->successful = (int)json_integer_value(json_object_get(b, "successful"));
			nb->not_found = (int)json_integer_value(json_object_get(b, "not_found"));
			nb->failed = (int)json_integer_value(json_object_get(b, "failed"));
			json_decref(nb->failed_ids);
			nb->failed_ids = json_incref(json_object_get(b, "failed_ids"));
			if (!nb->failed_ids)
				nb->failed_ids = json_array();
		}
		json_decref(saved);
	}
	g.base = event_base_new();
	g.http = g.base ? new_http(on_request) : NULL;
	g.edge = g.base ? new_http(on_edge_request) : NULL;
	g.processor = g.base ? event_new(g.base, -1, EV_PERSIST, on_processor, NULL) : NULL;
	struct timeval tick = { 0, 10000 };
	if (!g.http || !g.edge || !g.processor || event_add(g.processor, &tick) < 0)
		return 1;
	if (bind_http(g.http, "127.0.0.1", port, &port) < 0 || bind_http(g.edge, edge_addr, edge_port, &edge_port) < 0)
		return 1;
	snprintf(g.host, sizeof(g.host), "127.0.0.1:%d", port);
	snprintf(g.edge_host, sizeof(g.edge_host), "%s:%d", edge_addr, edge_port);
	if (port_file) {
		char tmp[4096];
		snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
		FILE *f = fopen(tmp, "w");
		if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 || rename(tmp, port_file) < 0) {
			fprintf(stderr, "fake-target: cannot write %s\n", port_file);
			return 1;
		}
	}
	printf("fake-target listening on %s://%s, status on %s (client %s)\n", g.tls ? "https" : "http", g.host,
	       g.edge_host, g.client);
	fflush(stdout);
	struct event *term = evsignal_new(g.base, SIGTERM, on_term, NULL);
	struct event *intr = evsignal_new(g.base, SIGINT, on_term, NULL);
	event_add(term, NULL);
	event_add(intr, NULL);
	event_base_dispatch(g.base);
	event_free(term);
	event_free(intr);
	if (state_file) {
		on_processor(-1, 0, NULL);
		json_t *batches = json_array();
		for (size_t i = 0; i < g.n_batches; i++) {
			struct batch *b = &g.batches[i];
			json_array_append_new(batches, json_pack("{s:s, s:i, s:i, s:b, s:i, s:i, s:i, s:O, s:b}", "id", b->id,
								 "size", b->size, "polls_left", b->polls_left, "stuck",
								 b->is_stuck, "successful", b->successful, "not_found",
								 b->not_found, "failed", b->failed, "failed_ids", b->failed_ids,
								 "v2", b->is_v2));
		}
		json_t *saved = json_pack("{s:O, s:o}", "profiles", g.profiles, "batches", batches);
		if (json_dump_file(saved, state_file, JSON_COMPACT) < 0)
			fprintf(stderr, "fake-target: cannot write %s\n", state_file);
		json_decref(saved);
	}
	event_free(g.processor);
	evhttp_free(g.http);
	evhttp_free(g.edge);
	event_base_free(g.base);
	if (g.tls)
		SSL_CTX_free(g.tls);
	reset_state();
	json_decref(g.profiles);
	json_decref(g.requests);
	json_decref(g.violations);
	json_decref(g.inflight);
	json_decref(g.seen);
	json_decref(g.lost);
	json_decref(g.poll_log);
	free(g.batches);
	free(g.order);
	free(g.token);
	return 0;
}
