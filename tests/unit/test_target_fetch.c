/* SPDX-License-Identifier: MIT */
/* The fetch API: its URL, its JSON answer and times, and every verdict. */
#include <errno.h>
#include <stdlib.h>

#include "check.h"
#include "config.h"
#include "target_fetch.h"

static void test_url(void)
{
	struct config cfg = { 0 };
	cfg.target.base_url = "https://demo.tt.omtrdc.net";
	cfg.target.client_code = "demo";
	cfg.target.id_type = ID_THIRD_PARTY;
	char *u = target_fetch_url(&cfg, "a b/c?d", 7);
	CHECK_STR(u, "https://demo.tt.omtrdc.net/rest/v1/profiles/thirdPartyId/a%20b%2Fc%3Fd?client=demo");
	free(u);
	cfg.target.id_type = ID_PC;
	u = target_fetch_url(&cfg, "1234.2_0", 8);
	CHECK_STR(u, "https://demo.tt.omtrdc.net/rest/v1/profiles/1234.2_0?client=demo");
	free(u);
}

static void test_times(void)
{
	int64_t ms = 0;
	CHECK(target_fetch_parse_time("1970-01-01T00:00:01Z", &ms) == 0 && ms == 1000);
	CHECK(target_fetch_parse_time("2017-08-09T18:18:04.659-04:00", &ms) == 0 && ms == 1502317084659LL);
	CHECK(target_fetch_parse_time("2017-08-09T22:18:04.659Z", &ms) == 0 && ms == 1502317084659LL);
	CHECK(target_fetch_parse_time("2017-08-10T00:18:04.6+0200", &ms) == 0 && ms == 1502317084600LL);
	CHECK(target_fetch_parse_time("2017-08-09T22:18:04", &ms) == -EINVAL); /* no zone: not ours to guess */
	CHECK(target_fetch_parse_time("2017-13-09T22:18:04Z", &ms) == -EINVAL);
	CHECK(target_fetch_parse_time("yesterday", &ms) == -EINVAL);
	CHECK(target_fetch_parse_time("2017-08-09T22:18:04.Z", &ms) == -EINVAL);
}

static void test_parse(void)
{
	static const char ok[] = "{\"client\": \"demo\", \"visitorId\": \"a1-mbox3rdPartyId\","
				 " \"modifiedAt\": \"2017-08-18T17:53:39.003-04:00\", \"profileAttributes\": {"
				 "\"tier\": {\"value\": \"gold\", \"modifiedAt\": \"2017-08-09T18:18:04.659-04:00\"},"
				 "\"points\": {\"value\": 12, \"modifiedAt\": \"bad\"},"
				 "\"user.browser\": {\"value\": \"Mozilla\"}}}";
	struct target_fetch_profile p;
	CHECK(target_fetch_parse(ok, sizeof(ok) - 1, &p) == 0 && p.n == 3);
	const struct target_fetch_attr *a = target_fetch_get(&p, "tier");
	CHECK(a && strcmp(a->value, "gold") == 0 && a->modified_at == 1502317084659LL);
	a = target_fetch_get(&p, "points");
	CHECK(a && strcmp(a->value, "12") == 0 && a->modified_at == 0);
	CHECK(target_fetch_get(&p, "city") == NULL && p.modified_at > 0);
	target_fetch_profile_finish(&p);
	static const char *const bad[] = {
		"", "[]", "{\"profileAttributes\": []}", "{\"profileAttributes\": {\"a\": {\"value\": {}}}}",
		"{\"profileAttributes\": {\"a\": \"no object\"}}", "{\"profileAttributes\": {\"a\": {}}}", "{oops",
		"{\"profileAttributes\": {\"a\": {\"value\": 1}, \"a\": {\"value\": 2}}}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(target_fetch_parse(bad[i], strlen(bad[i]), &p) == -EBADMSG);
		CHECK(p.n == 0 && p.attrs == NULL);
	}
}

static void test_judge(void)
{
	char why[512];
	static const struct {
		CURLcode res;
		long http;
		bool parsed;
		enum target_fetch_verdict want;
		const char *why;
	} cases[] = {
		{ CURLE_OK, 200, true, TARGET_FETCH_FOUND, "" },
		{ CURLE_OK, 200, false, TARGET_FETCH_BAD, "not the documented JSON" },
		{ CURLE_OK, 404, false, TARGET_FETCH_MISSING, "" },
		{ CURLE_OK, 401, false, TARGET_FETCH_AUTH, "authentication" },
		{ CURLE_OK, 403, false, TARGET_FETCH_AUTH, "authentication" },
		{ CURLE_OK, 429, false, TARGET_FETCH_RETRY, "HTTP 429" },
		{ CURLE_OK, 408, false, TARGET_FETCH_RETRY, "HTTP 408" },
		{ CURLE_OK, 503, false, TARGET_FETCH_RETRY, "HTTP 503" },
		{ CURLE_OK, 400, false, TARGET_FETCH_BAD, "HTTP 400" },
		{ CURLE_OK, 302, false, TARGET_FETCH_BAD, "HTTP 302" },
		{ CURLE_COULDNT_CONNECT, 0, false, TARGET_FETCH_RETRY, "fetch:" },
		{ CURLE_OPERATION_TIMEDOUT, 0, false, TARGET_FETCH_RETRY, "fetch:" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum target_fetch_verdict v = target_fetch_judge(cases[i].res, "", cases[i].http, cases[i].parsed, "<html>",
								 why, sizeof(why));
		if (v != cases[i].want || !strstr(why, cases[i].why))
			fprintf(stderr, "case %zu: verdict %d, why \"%s\"\n", i, v, why);
		CHECK(v == cases[i].want && strstr(why, cases[i].why));
	}
}

int main(void)
{
	RUN(test_url);
	RUN(test_times);
	RUN(test_parse);
	RUN(test_judge);
	return check_result("test_target_fetch");
}
