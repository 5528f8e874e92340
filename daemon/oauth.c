/* SPDX-License-Identifier: MIT */
/* One renewal at a time, as a chain of calls: the IMS grant (only when the
 * IMS token is missing or near its end), the Admin API's GET, and its POST
 * only when GET has no usable token. Then a timer for the next check, ahead
 * of the token's expiry by target.oauth.renew_before (or by half its life,
 * when tokens live shorter than that, so that renewing never turns into a
 * POST at every check). */
#include "oauth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "clock.h"
#include "http.h"
#include "log.h"
#include "pctenc.h"
#include "token.h"

#define MAX_ANSWER (64 * 1024)
#define IMS_MARGIN_MS 60000 /* an IMS token this close to its end is replaced first */

enum step { STEP_IDLE, STEP_IMS, STEP_GET, STEP_POST };
static const char *const step_names[] = { "idle", "ims", "get", "post" };

struct oauth {
	const struct config *cfg;
	const struct oauth_listener *l;
	void *arg;
	struct http *http;
	struct event *timer;
	char *secret;
	char *ims_token;
	int64_t ims_expires_at, ims_life_ms; /* wall ms */
	char *token;
	int64_t token_expires_at, token_life_ms;
	char *refused;       /* the token Target refused, while renewing because of it */
	enum step step;
	struct http_call call;
	FILE *body;
	char *body_text, *url, *api_key;
	unsigned failures;
	bool is_ims_retried; /* the Admin API refused the IMS token once this round */
	bool is_holding;     /* profile API calls held for a POST */
	int64_t drain_until; /* a POST waits for calls on the wire until then */
	struct event *drain;
	int64_t renewals, made, next_at;
	char last_error[300];
};

static void wipe(char **s)
{
	if (*s) {
		explicit_bzero(*s, strlen(*s));
		free(*s);
		*s = NULL;
	}
}

static int read_secret(const struct config *cfg, char **out)
{
	char path[4096];
	if (!token_secret_path(cfg->target.oauth.client_secret_file, "oauth-secret", path, sizeof(path))) {
		log_err("msg=\"no OAuth client secret: set target.oauth.client_secret_file or pass the systemd "
			"credential oauth-secret\"");
		return -ENOENT;
	}
	struct stat sb;
	char *value = NULL;
	int r = token_read_secret(path, &value, &sb);
	if (r == 0 && !value)
		r = -ENODATA;
	if (r < 0) {
		log_err("msg=\"cannot read the OAuth client secret\" path=\"%s\" error=\"%s\"", path,
			r == -ENODATA ? "the file is empty" : strerror(-r));
		return r;
	}
	if (sb.st_mode & 077)
		log_warn("msg=\"the OAuth client secret may be read by its group or others; chmod 600 it\" path=\"%s\"",
			 path);
	wipe(out);
	*out = value;
	return 0;
}

static void arm(struct oauth *o, int64_t delay_ms)
{
	if (delay_ms < 0)
		delay_ms = 0;
	o->next_at = clock_wall_ms() + delay_ms;
	struct timeval tv = { (time_t)(delay_ms / 1000), (suseconds_t)(delay_ms % 1000) * 1000 };
	if (evtimer_add(o->timer, &tv) < 0)
		log_err("msg=\"cannot arm the OAuth timer\"");
}

static void end_call(struct oauth *o)
{
	http_call_finish(&o->call);
	memset(&o->call, 0, sizeof(o->call));
	if (o->body)
		fclose(o->body);
	o->body = NULL;
	wipe(&o->body_text);
	free(o->url);
	o->url = NULL;
}

/* How long before its expiry a token is replaced: renew_before, or half a
 * token's life when tokens live shorter (a POST at every check otherwise). */
static int64_t renew_margin(const struct oauth *o)
{
	int64_t margin = o->cfg->target.oauth.renew_before_ms;
	return o->token_life_ms && o->token_life_ms / 2 < margin ? o->token_life_ms / 2 : margin;
}

static void release(struct oauth *o)
{
	if (o->is_holding) {
		o->is_holding = false;
		o->l->hold(o->arg, false);
	}
}

/* This round failed: tell the listener, try again after a backoff. */
static void fail(struct oauth *o, const char *why)
{
	snprintf(o->last_error, sizeof(o->last_error), "%s", why);
	o->step = STEP_IDLE;
	o->failures++;
	release(o);
	wipe(&o->refused);
	int64_t delay = backoff_delay(o->cfg->retry.initial_ms, o->cfg->retry.max_ms, o->failures, backoff_random());
	log_err("msg=\"cannot get a profile API token\" error=\"%s\" retry_ms=%lld", why, (long long)delay);
	o->l->failed(o->arg, why);
	arm(o, delay);
}

static void start(struct oauth *o, enum step step);

/* A POST invalidates the token in use at once: new calls are held and the
 * POST waits for those on the wire (up to target.timeout) to be answered. */
static void post_when_drained(struct oauth *o)
{
	if (!o->is_holding) {
		o->is_holding = true;
		o->l->hold(o->arg, true);
		o->drain_until = clock_wall_ms() + o->cfg->target.timeout_ms;
	}
	if (o->l->calls_in_flight(o->arg) > 0 && clock_wall_ms() < o->drain_until) {
		o->step = STEP_POST; /* waiting: nothing else starts meanwhile */
		struct timeval tv = { 0, 50 * 1000 };
		if (evtimer_add(o->drain, &tv) == 0)
			return;
	}
	start(o, STEP_POST);
}

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
	post_when_drained(arg);
}

/* A usable token: hand it on (if new) and check again ahead of its expiry. */
static void use(struct oauth *o, const char *token, int64_t expires_in_ms, bool is_made)
{
	int64_t now = clock_wall_ms();
	bool is_new = !o->token || strcmp(o->token, token) != 0;
	if (is_new) {
		wipe(&o->token);
		o->token = strdup(token);
		if (!o->token) {
			fail(o, "out of memory");
			return;
		}
		o->renewals++;
	}
	if (is_made)
		o->token_life_ms = expires_in_ms;
	o->token_expires_at = now + expires_in_ms;
	o->step = STEP_IDLE;
	o->failures = 0;
	o->last_error[0] = '\0';
	wipe(&o->refused);
	int64_t margin = renew_margin(o);
	int64_t delay = expires_in_ms - margin;
	if (delay < 1000)
		delay = 1000;
	log_info("msg=\"profile API token %s\" expires_in_s=%lld next_check_s=%lld", is_made ? "made" : is_new ? "read" : "still valid",
		 (long long)(expires_in_ms / 1000), (long long)(delay / 1000));
	if (is_new)
		o->l->token(o->arg, o->token);
	release(o);
	arm(o, delay);
}

static const char *json_str(json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

static void describe(const struct http_call *c, const char *who, char *out, size_t size)
{
	char excerpt[256];
	http_excerpt(c, excerpt, sizeof(excerpt));
	if (c->result != CURLE_OK)
		snprintf(out, size, "%s unreachable: %s", who, c->error[0] ? c->error : curl_easy_strerror(c->result));
	else
		snprintf(out, size, "%s answered HTTP %ld: %s", who, c->status, excerpt);
}

static void ims_done(struct oauth *o, const struct http_call *c, json_t *j)
{
	const char *tok = json_str(j, "access_token");
	json_t *exp = json_object_get(j, "expires_in");
	char why[512];
	if (c->result == CURLE_OK && c->status == 200 && tok && *tok && json_is_integer(exp)) {
		wipe(&o->ims_token);
		o->ims_token = strdup(tok);
		o->ims_life_ms = json_integer_value(exp) * 1000;
		o->ims_expires_at = clock_wall_ms() + o->ims_life_ms;
		if (!o->ims_token) {
			fail(o, "out of memory");
			return;
		}
		start(o, STEP_GET);
	} else if (c->result == CURLE_OK && (c->status == 400 || c->status == 401 || c->status == 403)) {
		const char *err = json_str(j, "error");
		snprintf(why, sizeof(why), "Adobe IMS refused the client credentials (HTTP %ld%s%s); check "
					   "target.oauth.client_id and the client secret", c->status, err ? ": " : "",
			 err ? err : "");
		fail(o, why);
	} else {
		describe(c, "Adobe IMS", why, sizeof(why));
		fail(o, why);
	}
}

static void admin_done(struct oauth *o, const struct http_call *c, json_t *j)
{
	bool is_post = o->step == STEP_POST;
	const char *tok = json_str(j, "accessToken");
	json_t *exp = json_object_get(j, "expiresIn");
	char why[512];
	if (c->result == CURLE_OK && c->status == 200 && tok && *tok && json_is_integer(exp)) {
		int64_t expires_in = json_integer_value(exp) * 1000;
		int64_t margin = renew_margin(o);
		if (!is_post && ((o->refused && strcmp(tok, o->refused) == 0) || expires_in <= margin)) {
			post_when_drained(o); /* refused by Target, or about to expire */
			return;
		}
		if (is_post) {
			o->made++;
			log_warn("msg=\"made a new profile API token through the Admin API: the previous one no longer "
				 "works for anyone who uses it\" tenant=\"%s\"", o->cfg->target.oauth.tenant);
		}
		use(o, tok, expires_in, is_post);
	} else if (c->result == CURLE_OK && c->status == 404 && !is_post) {
		post_when_drained(o); /* none yet */
	} else if (c->result == CURLE_OK && c->status == 401 && !o->is_ims_retried) {
		/* The IMS token was revoked or expired early: one new grant. */
		o->is_ims_retried = true;
		wipe(&o->ims_token);
		start(o, STEP_IMS);
	} else if (c->result == CURLE_OK && (c->status == 401 || c->status == 403)) {
		snprintf(why, sizeof(why), "the Target Admin API refused the IMS token or client id (HTTP %ld); the "
					   "credential needs the Target API in the Adobe Developer Console", c->status);
		fail(o, why);
	} else {
		describe(c, is_post ? "the Target Admin API (POST token)" : "the Target Admin API (GET token)", why,
			 sizeof(why));
		fail(o, why);
	}
}

static void on_done(void *arg, struct http_call *call)
{
	struct oauth *o = arg;
	json_t *j = NULL;
	if (call->result == CURLE_OK && call->response.len)
		j = json_loadb(call->response.data, call->response.len, 0, NULL);
	enum step step = o->step;
	/* The handlers may start the next call in o->call: this one is kept
	 * apart (the http layer no longer holds it) and freed after. */
	struct http_call finished = o->call;
	memset(&o->call, 0, sizeof(o->call));
	end_call(o);
	if (step == STEP_IMS)
		ims_done(o, &finished, j);
	else
		admin_done(o, &finished, j);
	http_call_finish(&finished);
	json_decref(j);
}

static const struct http_listener http_listener = { .done = on_done };

static void start(struct oauth *o, enum step step)
{
	const struct config *cfg = o->cfg;
	o->step = step;
	struct http_call *c = &o->call;
	memset(c, 0, sizeof(*c));
	c->timeout_ms = cfg->target.timeout_ms;
	c->connect_timeout_ms = cfg->target.connect_timeout_ms;
	c->ca_file = cfg->target.ca_file;
	c->max_response = MAX_ANSWER;
	if (step == STEP_IMS) {
		const char *id = cfg->target.oauth.client_id, *scope = cfg->target.oauth.scope;
		size_t cap = 96 + pctenc_encoded_len(id, strlen(id)) + pctenc_encoded_len(o->secret, strlen(o->secret)) +
			     pctenc_encoded_len(scope, strlen(scope));
		o->body_text = malloc(cap);
		if (o->body_text) {
			char *p = o->body_text;
			p += sprintf(p, "grant_type=client_credentials&client_id=");
			p += pctenc_encode(id, strlen(id), p);
			p += sprintf(p, "&client_secret=");
			p += pctenc_encode(o->secret, strlen(o->secret), p);
			p += sprintf(p, "&scope=");
			p += pctenc_encode(scope, strlen(scope), p);
			*p = '\0';
		}
		o->url = strdup(cfg->target.oauth.ims_url);
		c->content_type = "application/x-www-form-urlencoded";
	} else {
		if (asprintf(&o->url, "%s/%s/target/authentication/token?authorizationScope=profile_api",
			     cfg->target.oauth.admin_url, cfg->target.oauth.tenant) < 0)
			o->url = NULL;
		c->bearer = o->ims_token;
		c->extra_header = o->api_key;
		if (step == STEP_POST)
			o->body_text = strdup("");
	}
	if (!o->url || ((step == STEP_IMS || step == STEP_POST) && !o->body_text)) {
		end_call(o);
		fail(o, "out of memory");
		return;
	}
	if (o->body_text) {
		size_t len = strlen(o->body_text);
		/* fmemopen cannot open an empty buffer for reading: an empty body is an empty file. */
		o->body = len ? fmemopen(o->body_text, len, "r") : tmpfile();
		if (!o->body) {
			end_call(o);
			fail(o, "cannot set up a request body");
			return;
		}
		c->body = o->body;
		c->body_size = (int64_t)len;
	}
	c->url = o->url;
	int r = http_start(o->http, c);
	if (r < 0) {
		end_call(o);
		fail(o, "cannot start a request");
	}
}

/* The timer: the next check (or a retry after a failure). */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct oauth *o = arg;
	if (o->step != STEP_IDLE)
		return;
	o->is_ims_retried = false;
	int64_t margin = o->ims_life_ms && o->ims_life_ms / 2 < IMS_MARGIN_MS ? o->ims_life_ms / 2 : IMS_MARGIN_MS;
	start(o, !o->ims_token || clock_wall_ms() >= o->ims_expires_at - margin ? STEP_IMS : STEP_GET);
}

struct oauth *oauth_create(struct event_base *base, const struct config *cfg, const struct oauth_listener *l,
			   void *arg)
{
	struct oauth *o = calloc(1, sizeof(*o));
	if (!o) {
		log_err("msg=\"cannot set up target.oauth\" error=\"out of memory\"");
		return NULL;
	}
	o->cfg = cfg;
	o->l = l;
	o->arg = arg;
	if (read_secret(cfg, &o->secret) < 0)
		goto fail;
	o->timer = evtimer_new(base, on_timer, o);
	o->drain = evtimer_new(base, on_drain, o);
	if (!o->timer || !o->drain || asprintf(&o->api_key, "X-Api-Key: %s", cfg->target.oauth.client_id) < 0) {
		o->api_key = NULL;
		log_err("msg=\"cannot set up target.oauth\" error=\"out of memory\"");
		goto fail;
	}
	o->http = http_create(base, 2, &http_listener, o);
	if (!o->http)
		goto fail;
	arm(o, 0);
	return o;
fail:
	oauth_destroy(o);
	return NULL;
}

void oauth_destroy(struct oauth *o)
{
	if (!o)
		return;
	if (o->http)
		http_destroy(o->http);
	end_call(o);
	if (o->timer)
		event_free(o->timer);
	if (o->drain)
		event_free(o->drain);
	wipe(&o->secret);
	wipe(&o->ims_token);
	wipe(&o->token);
	wipe(&o->refused);
	free(o->api_key);
	free(o);
}

int oauth_reconfigure(struct oauth *o, const struct config *cfg)
{
	char *api_key;
	if (asprintf(&api_key, "X-Api-Key: %s", cfg->target.oauth.client_id) < 0)
		return -ENOMEM;
	char *secret = NULL;
	int r = read_secret(cfg, &secret);
	if (r < 0) {
		free(api_key);
		return r;
	}
	bool is_new_client = strcmp(api_key, o->api_key) != 0 || strcmp(secret, o->secret) != 0;
	/* A call on the wire keeps pointing at the old header until it ends. */
	if (o->step == STEP_IDLE) {
		free(o->api_key);
		o->api_key = api_key;
	} else {
		free(api_key);
	}
	wipe(&o->secret);
	o->secret = secret;
	o->cfg = cfg;
	if (is_new_client) {
		wipe(&o->ims_token);
		if (o->step == STEP_IDLE) {
			evtimer_del(o->timer);
			arm(o, 0);
		}
	}
	return 0;
}

void oauth_renew(struct oauth *o, const char *refused)
{
	if (o->step != STEP_IDLE)
		return;
	wipe(&o->refused);
	if (refused)
		o->refused = strdup(refused);
	log_info("msg=\"Target refused the profile API token; renewing it\"");
	evtimer_del(o->timer);
	arm(o, 0);
}

void oauth_status(struct oauth *o, json_t *obj)
{
	json_t *s = json_pack("{s:s, s:b, s:I, s:I, s:I, s:I}", "step", step_names[o->step], "has_token", o->token != NULL,
			      "token_expires_at", (json_int_t)o->token_expires_at, "next_check_at", (json_int_t)o->next_at,
			      "tokens_received", (json_int_t)o->renewals, "tokens_made", (json_int_t)o->made);
	if (s && o->last_error[0])
		json_object_set_new(s, "last_error", json_string(o->last_error));
	if (s)
		json_object_set_new(obj, "oauth", s);
}
