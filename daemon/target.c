/* SPDX-License-Identifier: MIT */
/* Target's endpoints and XML answers (parsed with expat; never with string
 * matching, since messages can contain anything). */
#include "target.h"

#include <errno.h>
#include <expat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "buf.h"

#define TARGET_MAX_ID_LEN 128
#define TARGET_MAX_NAME_LEN 128

char *target_submit_url(const struct config *cfg)
{
	char *url;
	if (asprintf(&url, "%s/m2/%s/%sprofile/batchUpdate", cfg->target.base_url, cfg->target.client_code,
		     cfg->target.api_version == 2 ? "v2/" : "") < 0)
		return NULL;
	return url;
}

char *target_status_url(const struct config *cfg, const char *status_url)
{
	/* Adobe gives status URLs as http://; with an https base they are polled
	 * over https (the edge hosts serve both), never over plain http. */
	bool upgrade = strncmp(cfg->target.base_url, "https://", 8) == 0 && strncasecmp(status_url, "http://", 7) == 0;
	char *url;
	if (asprintf(&url, "%s%s%sshowDetails=true", upgrade ? "https://" : "", upgrade ? status_url + 7 : status_url,
		     strchr(status_url, '?') ? "&" : "?") < 0)
		return NULL;
	return url;
}

/* Copies scheme and host[:port] of url into out. */
static bool url_origin(const char *url, char *out, size_t size)
{
	const char *p = strstr(url, "://");
	if (!p)
		return false;
	p += 3;
	size_t n = strcspn(p, "/?#");
	const char *at = memchr(p, '@', n);
	if (at)
		return false; /* no credentials in URLs */
	size_t len = (size_t)(p - url) + n;
	if (len >= size)
		return false;
	memcpy(out, url, len);
	out[len] = '\0';
	for (char *c = out; *c; c++)
		if (*c >= 'A' && *c <= 'Z')
			*c = (char)(*c - 'A' + 'a');
	return true;
}

/* The host[:port] part of url, lower-cased, into out. */
static bool url_authority(const char *url, char *out, size_t size)
{
	char origin[512];
	if (!url_origin(url, origin, sizeof(origin)))
		return false;
	snprintf(out, size, "%s", strstr(origin, "://") + 3);
	return true;
}

bool target_may_send_token(const struct config *cfg, const char *url, const char *status_url)
{
	char want[512], have[512];
	if (!url_origin(url, have, sizeof(have)))
		return false;
	if (url_origin(cfg->target.base_url, want, sizeof(want)) && strcmp(want, have) == 0)
		return true;
	/* A status host Target named (its authority: the scheme may have been
	 * upgraded), but never over plain http when the base is https. */
	char a[512], b[512];
	if (!status_url || !url_authority(status_url, a, sizeof(a)) || !url_authority(url, b, sizeof(b)) ||
	    strcmp(a, b) != 0)
		return false;
	return strncmp(cfg->target.base_url, "https://", 8) != 0 || strncmp(have, "https://", 8) == 0;
}

/* The answer parser: expat events into a struct target_answer. Top-level
 * elements of <response> are fields; a status answer's <profile> elements
 * (v2: the rows that failed) go to on_failed one by one, so a list of any
 * length is parsed in bounded memory. */
struct parse {
	struct target_answer *a;
	int depth;
	bool is_response;
	bool in_profile;
	struct buf text;
	char *profile_id, *profile_status;
	int (*on_failed)(void *arg, const char *id, size_t len);
	void *arg;
	int error;
};

static void XMLCALL on_start(void *data, const XML_Char *name, const XML_Char **attrs)
{
	struct parse *p = data;
	if (p->depth == 0)
		p->is_response = strcmp(name, "response") == 0;
	if (p->depth == 1 && p->is_response && strcmp(name, "profile") == 0) {
		p->in_profile = true;
		free(p->profile_id);
		free(p->profile_status);
		p->profile_id = p->profile_status = NULL;
	}
	p->depth++;
	buf_reset(&p->text);
}

static void XMLCALL on_text(void *data, const XML_Char *s, int len)
{
	struct parse *p = data;
	if (p->text.len < 65536 && buf_append(&p->text, s, (size_t)len) < 0)
		p->error = -ENOMEM;
}

static int64_t to_int(const char *s)
{
	char *end;
	long long v = strtoll(s, &end, 10);
	return end == s ? -1 : v;
}

/* The element's text without surrounding white space (in p->text). */
static char *trimmed(struct parse *p)
{
	if (buf_terminate(&p->text) < 0) {
		p->error = -ENOMEM;
		return NULL;
	}
	char *t = p->text.data;
	while (*t == ' ' || *t == '\n' || *t == '\r' || *t == '\t')
		t++;
	size_t n = strlen(t);
	while (n && (t[n - 1] == ' ' || t[n - 1] == '\n' || t[n - 1] == '\r' || t[n - 1] == '\t'))
		t[--n] = '\0';
	return t;
}

static void keep(struct parse *p, char **field, const char *t)
{
	free(*field);
	*field = strdup(t);
	if (!*field)
		p->error = -ENOMEM;
}

/* The end of a <profile>: a failed row goes to on_failed. */
static void end_profile(struct parse *p)
{
	p->in_profile = false;
	if (!p->profile_id || !p->profile_status || strcmp(p->profile_status, "failed") != 0)
		return;
	p->a->failed_listed++;
	if (p->on_failed && p->error == 0) {
		int r = p->on_failed(p->arg, p->profile_id, strlen(p->profile_id));
		if (r < 0)
			p->error = r;
	}
}

static void XMLCALL on_end(void *data, const XML_Char *name)
{
	struct parse *p = data;
	p->depth--;
	if (!p->is_response)
		return;
	if (p->depth == 2 && p->in_profile) {
		const char *t = trimmed(p);
		if (t && strcmp(name, "id") == 0)
			keep(p, &p->profile_id, t);
		else if (t && strcmp(name, "status") == 0)
			keep(p, &p->profile_status, t);
		buf_reset(&p->text);
		return;
	}
	if (p->depth != 1)
		return;
	if (p->in_profile && strcmp(name, "profile") == 0) {
		end_profile(p);
		return;
	}
	char *t = trimmed(p);
	if (!t)
		return;
	struct target_answer *a = p->a;
	char **field = NULL;
	if (strcmp(name, "success") == 0) {
		a->has_success = true;
		a->is_success = strcmp(t, "true") == 0;
	} else if (strcmp(name, "batchStatus") == 0) {
		field = &a->batch_status;
	} else if (strcmp(name, "message") == 0) {
		field = &a->message;
	} else if (strcmp(name, "batchId") == 0) {
		field = &a->batch_id;
	} else if (strcmp(name, "status") == 0) {
		field = &a->status;
	} else if (strcmp(name, "batchSize") == 0) {
		a->batch_size = to_int(t);
	} else if (strcmp(name, "consumedCount") == 0) {
		a->consumed = to_int(t);
	} else if (strcmp(name, "successfulUpdates") == 0) {
		a->successful = to_int(t);
	} else if (strcmp(name, "profilesNotFound") == 0) {
		a->not_found = to_int(t);
	} else if (strcmp(name, "failedUpdates") == 0) {
		a->failed = to_int(t);
	}
	if (field)
		keep(p, field, t);
	buf_reset(&p->text);
}

static void parse_init(struct parse *p, struct target_answer *out, XML_Parser xp)
{
	memset(out, 0, sizeof(*out));
	out->batch_size = out->consumed = out->successful = out->not_found = out->failed = -1;
	memset(p, 0, sizeof(*p));
	p->a = out;
	buf_init(&p->text);
	XML_SetUserData(xp, p);
	XML_SetElementHandler(xp, on_start, on_end);
	XML_SetCharacterDataHandler(xp, on_text);
}

/* Ends a parse: 0, the callback's or memory error, or -EBADMSG. */
static int parse_finish(struct parse *p, bool ok)
{
	buf_finish(&p->text);
	free(p->profile_id);
	free(p->profile_status);
	int r = p->error < 0 ? p->error : !ok || !p->is_response ? -EBADMSG : 0;
	if (r < 0)
		target_answer_finish(p->a);
	return r;
}

int target_parse_answer(const char *body, size_t len, struct target_answer *out)
{
	XML_Parser xp = XML_ParserCreate("UTF-8");
	if (!xp)
		return -ENOMEM;
	struct parse p;
	parse_init(&p, out, xp);
	bool ok = XML_Parse(xp, body, (int)len, 1) == XML_STATUS_OK;
	XML_ParserFree(xp);
	return parse_finish(&p, ok);
}

int target_parse_status_fd(int fd, struct target_answer *out, int (*on_failed)(void *arg, const char *id, size_t len),
			   void *arg)
{
	XML_Parser xp = XML_ParserCreate("UTF-8");
	if (!xp)
		return -ENOMEM;
	struct parse p;
	parse_init(&p, out, xp);
	p.on_failed = on_failed;
	p.arg = arg;
	bool ok = true;
	char chunk[65536];
	for (off_t at = 0; ok && p.error == 0;) {
		ssize_t n = pread(fd, chunk, sizeof(chunk), at);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			p.error = -errno;
			break;
		}
		ok = XML_Parse(xp, chunk, (int)n, n == 0) == XML_STATUS_OK;
		if (n == 0)
			break;
		at += n;
	}
	XML_ParserFree(xp);
	return parse_finish(&p, ok);
}

void target_answer_finish(struct target_answer *a)
{
	free(a->batch_status);
	free(a->message);
	free(a->batch_id);
	free(a->status);
	a->batch_status = a->message = a->batch_id = a->status = NULL;
}

bool target_batch_id_of(const char *status_url, char *out, size_t size)
{
	const char *q = strchr(status_url, '?');
	for (const char *p = q; p && *p; p = strchr(p + 1, '&')) {
		if (strncmp(p + 1, "batchId=", 8) == 0) {
			const char *v = p + 9;
			size_t n = strcspn(v, "&#");
			if (n == 0 || n >= size)
				return false;
			memcpy(out, v, n);
			out[n] = '\0';
			return true;
		}
	}
	return false;
}

/* A connection that was never made proves the request did not reach Target. */
static bool never_sent(CURLcode res)
{
	return res == CURLE_COULDNT_CONNECT || res == CURLE_COULDNT_RESOLVE_HOST || res == CURLE_COULDNT_RESOLVE_PROXY;
}

bool target_call_reached(CURLcode res)
{
	return res != CURLE_COULDNT_CONNECT && res != CURLE_COULDNT_RESOLVE_HOST;
}

void target_judge_submit(CURLcode res, const char *error, long http, const struct target_answer *a,
			 const char *excerpt, struct target_judgement *out)
{
	memset(out, 0, sizeof(*out));
	if (res != CURLE_OK) {
		out->verdict = TARGET_RETRY;
		out->cause = TARGET_CAUSE_NETWORK;
		out->is_uncertain = !never_sent(res);
		snprintf(out->why, sizeof(out->why), "network: %s", error && *error ? error : curl_easy_strerror(res));
		return;
	}
	switch (http) {
	case 200:
		if (!a || !a->has_success) {
			out->verdict = TARGET_RETRY;
			out->cause = TARGET_CAUSE_GARBAGE;
			out->is_uncertain = true;
			snprintf(out->why, sizeof(out->why), "unreadable answer (HTTP 200): %s", excerpt);
		} else if (a->is_success) {
			out->verdict = TARGET_ACCEPTED;
		} else {
			out->verdict = TARGET_REJECTED;
			out->cause = TARGET_CAUSE_REJECTED;
			snprintf(out->why, sizeof(out->why), "Target answered success=false: %s",
				 a->message ? a->message : "(no message)");
		}
		return;
	case 401:
	case 403:
		out->verdict = TARGET_AUTH;
		snprintf(out->why, sizeof(out->why), "authentication failed (HTTP %ld)", http);
		return;
	case 413:
		out->verdict = TARGET_SPLIT;
		snprintf(out->why, sizeof(out->why), "HTTP 413: %s", excerpt);
		return;
	case 301:
	case 302:
	case 303:
	case 307:
	case 308:
		/* A proxy in the way: retried a bounded number of times, never
		 * followed (the token would go with it). */
		out->verdict = TARGET_REJECTED;
		out->cause = TARGET_CAUSE_HTTP;
		snprintf(out->why, sizeof(out->why), "HTTP %ld (a redirect; not followed): %s", http, excerpt);
		return;
	case 408:
	case 429:
	case 500:
	case 502:
	case 503:
	case 504:
		out->verdict = TARGET_RETRY;
		out->cause = TARGET_CAUSE_HTTP;
		out->use_retry_after = true;
		out->is_throttled = http == 429 || http == 503;
		/* 408/429/503 say the request was not processed; a 5xx might have been. */
		out->is_uncertain = http == 500 || http == 502 || http == 504;
		snprintf(out->why, sizeof(out->why), "HTTP %ld: %s", http, excerpt);
		return;
	default:
		out->verdict = TARGET_DEAD;
		snprintf(out->why, sizeof(out->why), "HTTP %ld", http);
		return;
	}
}

enum target_poll_verdict target_judge_poll(CURLcode res, const char *error, long http, const struct target_answer *a,
					   const char *excerpt, char *why, size_t size)
{
	why[0] = '\0';
	if (res != CURLE_OK) {
		snprintf(why, size, "status poll: %s", error && *error ? error : curl_easy_strerror(res));
		return TARGET_POLL_RETRY;
	}
	if (http == 401 || http == 403) {
		snprintf(why, size, "status poll: authentication failed (HTTP %ld)", http);
		return TARGET_POLL_AUTH;
	}
	if (http == 404 || http == 410) {
		snprintf(why, size, "status poll: HTTP %ld: Target no longer knows the batch", http);
		return TARGET_POLL_GONE;
	}
	if (http != 200 || !a) {
		snprintf(why, size, "status poll: HTTP %ld: %s", http, excerpt);
		return TARGET_POLL_RETRY;
	}
	const char *status = a->status ? a->status : "";
	if (strcmp(status, "complete") == 0)
		return TARGET_POLL_COMPLETE;
	if (strcmp(status, "stuck") == 0)
		return TARGET_POLL_STUCK;
	return TARGET_POLL_INCOMPLETE;
}

const char *target_profile_id_problem(const char *id, size_t len)
{
	if (!id || len == 0)
		return "empty id";
	if (len > TARGET_MAX_ID_LEN)
		return "id longer than 128 bytes";
	for (size_t i = 0; i < len; i++) {
		if (id[i] == '+' || id[i] == '/')
			return "id contains '+' or '/', which Target does not accept";
		if ((unsigned char)id[i] < 0x20 || id[i] == 0x7f)
			return "id contains a control character";
	}
	return NULL;
}

bool target_attr_name_valid(const char *s, size_t len)
{
	if (len == 0 || len > TARGET_MAX_NAME_LEN)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
		      c == '-' || c == '.'))
			return false;
	}
	return true;
}
