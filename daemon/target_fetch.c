/* SPDX-License-Identifier: MIT */
/* The fetch API's URL, answer and verdicts. */
#include "target_fetch.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pctenc.h"

char *target_fetch_url(const struct config *cfg, const char *profile, size_t len)
{
	char *id = malloc(3 * len + PCTENC_SLACK + 1);
	if (!id)
		return NULL;
	id[pctenc_encode(profile, len, id)] = '\0';
	char *url;
	int n = asprintf(&url, "%s/rest/v1/profiles/%s%s?client=%s", cfg->target.base_url,
			 cfg->target.id_type == ID_PC ? "" : "thirdPartyId/", id, cfg->target.client_code);
	free(id);
	return n < 0 ? NULL : url;
}

static int digits(const char **p, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++, (*p)++) {
		if (**p < '0' || **p > '9')
			return -EINVAL;
		v = v * 10 + (**p - '0');
	}
	*out = v;
	return 0;
}

int target_fetch_parse_time(const char *iso, int64_t *ms)
{
	const char *p = iso;
	struct tm tm = { 0 };
	int y, mo, d, h, mi, s, frac = 0, frac_digits = 0;
	if (digits(&p, 4, &y) < 0 || *p++ != '-' || digits(&p, 2, &mo) < 0 || *p++ != '-' || digits(&p, 2, &d) < 0 ||
	    (*p != 'T' && *p != ' ') || !*p++ || digits(&p, 2, &h) < 0 || *p++ != ':' || digits(&p, 2, &mi) < 0 ||
	    *p++ != ':' || digits(&p, 2, &s) < 0)
		return -EINVAL;
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++, frac_digits++)
			if (frac_digits < 3)
				frac = frac * 10 + (*p - '0');
		if (!frac_digits)
			return -EINVAL;
		for (int i = frac_digits; i < 3; i++)
			frac *= 10;
	}
	int offset_min = 0;
	if (*p == 'Z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
		if (digits(&p, 2, &oh) < 0)
			return -EINVAL;
		if (*p == ':')
			p++;
		if (*p && digits(&p, 2, &om) < 0)
			return -EINVAL;
		offset_min = sign * (oh * 60 + om);
	} else {
		return -EINVAL;
	}
	if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60)
		return -EINVAL;
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = s;
	time_t t = timegm(&tm);
	*ms = ((int64_t)t - (int64_t)offset_min * 60) * 1000 + frac;
	return 0;
}

void target_fetch_profile_finish(struct target_fetch_profile *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->attrs[i].name);
		free(p->attrs[i].value);
	}
	free(p->attrs);
	p->attrs = NULL;
	p->n = 0;
}

int target_fetch_parse(const char *body, size_t len, struct target_fetch_profile *out)
{
	memset(out, 0, sizeof(*out));
	json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
	json_t *attrs = json_object_get(j, "profileAttributes");
	if (!json_is_object(j) || !json_is_object(attrs)) {
		json_decref(j);
		return -EBADMSG;
	}
	const char *at = json_string_value(json_object_get(j, "modifiedAt"));
	if (at && target_fetch_parse_time(at, &out->modified_at) < 0)
		out->modified_at = 0;
	out->attrs = calloc(json_object_size(attrs) + 1, sizeof(*out->attrs));
	int r = out->attrs ? 0 : -ENOMEM;
	const char *name;
	json_t *a;
	json_object_foreach(attrs, name, a) {
		if (r < 0)
			break;
		json_t *v = json_object_get(a, "value");
		if (!json_is_object(a) || !v || json_is_object(v) || json_is_array(v)) {
			r = -EBADMSG;
			break;
		}
		struct target_fetch_attr *t = &out->attrs[out->n];
		t->name = strdup(name);
		t->value = json_is_string(v) ? strndup(json_string_value(v), json_string_length(v))
					    : json_dumps(v, JSON_ENCODE_ANY);
		const char *m = json_string_value(json_object_get(a, "modifiedAt"));
		if (m && target_fetch_parse_time(m, &t->modified_at) < 0)
			t->modified_at = 0;
		out->n++;
		if (!t->name || !t->value)
			r = -ENOMEM;
	}
	json_decref(j);
	if (r < 0)
		target_fetch_profile_finish(out);
	return r;
}

const struct target_fetch_attr *target_fetch_get(const struct target_fetch_profile *p, const char *name)
{
	for (size_t i = 0; i < p->n; i++)
		if (strcmp(p->attrs[i].name, name) == 0)
			return &p->attrs[i];
	return NULL;
}

enum target_fetch_verdict target_fetch_judge(CURLcode res, const char *error, long http, bool parsed,
					     const char *excerpt, char *why, size_t size)
{
	why[0] = '\0';
	if (res != CURLE_OK) {
		snprintf(why, size, "fetch: %s", error && *error ? error : curl_easy_strerror(res));
		return TARGET_FETCH_RETRY;
	}
	if (http == 200 && parsed)
		return TARGET_FETCH_FOUND;
	if (http == 404)
		return TARGET_FETCH_MISSING;
	if (http == 401 || http == 403) {
		snprintf(why, size, "fetch: HTTP %ld: authentication failed", http);
		return TARGET_FETCH_AUTH;
	}
	if (http == 408 || http == 429 || (http >= 500 && http <= 599)) {
		snprintf(why, size, "fetch: HTTP %ld", http);
		return TARGET_FETCH_RETRY;
	}
	if (http == 200)
		snprintf(why, size, "fetch: not the documented JSON: %s", excerpt);
	else
		snprintf(why, size, "fetch: HTTP %ld: %s", http, excerpt);
	return TARGET_FETCH_BAD;
}
