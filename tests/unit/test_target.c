/* SPDX-License-Identifier: MIT */
/* Target's URLs, XML answers and where the token may go. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "target.h"

/* Every outcome of a submission against DESIGN.md's guarantee 5, one row each:
 * network errors, 408, 429 and 5xx are retried (Retry-After honoured for HTTP
 * answers; an answer that may have been applied is marked uncertain, so the
 * latest values follow once more); 401/403 pause; 413 splits; success=false is
 * a counted rejection; other answers dead-letter; success=true is accepted. */
static void test_judge_submit(void)
{
	static const char ok_xml[] = "<response><success>true</success><batchStatus>http://e/s?batchId=b</batchStatus>"
				     "</response>";
	static const char no_xml[] = "<response><success>false</success><message>Unexpected error</message></response>";
	static const char odd_xml[] = "<response><message>no success element</message></response>";
	static const struct {
		const char *what;
		CURLcode res;
		long http;
		const char *xml; /* NULL: the body did not parse */
		enum target_verdict verdict;
		enum target_cause cause;
		bool is_uncertain, use_retry_after;
		const char *why; /* a part of the message */
	} cases[] = {
		{ "accepted", CURLE_OK, 200, ok_xml, TARGET_ACCEPTED, TARGET_CAUSE_NONE, false, false, "" },
		{ "success=false", CURLE_OK, 200, no_xml, TARGET_REJECTED, TARGET_CAUSE_REJECTED, false, false,
		  "success=false: Unexpected error" },
		{ "200 without success", CURLE_OK, 200, odd_xml, TARGET_RETRY, TARGET_CAUSE_GARBAGE, true, false, "unreadable" },
		{ "200 garbage", CURLE_OK, 200, NULL, TARGET_RETRY, TARGET_CAUSE_GARBAGE, true, false, "unreadable" },
		{ "408", CURLE_OK, 408, NULL, TARGET_RETRY, TARGET_CAUSE_HTTP, false, true, "HTTP 408" },
		{ "429", CURLE_OK, 429, NULL, TARGET_RETRY, TARGET_CAUSE_HTTP, false, true, "HTTP 429" },
		{ "503", CURLE_OK, 503, NULL, TARGET_RETRY, TARGET_CAUSE_HTTP, false, true, "HTTP 503" },
		{ "500", CURLE_OK, 500, NULL, TARGET_RETRY, TARGET_CAUSE_HTTP, true, true, "HTTP 500" },
		{ "502", CURLE_OK, 502, NULL, TARGET_RETRY, TARGET_CAUSE_HTTP, true, true, "HTTP 502" },
		{ "504", CURLE_OK, 504, NULL, TARGET_RETRY, TARGET_CAUSE_HTTP, true, true, "HTTP 504" },
		{ "401", CURLE_OK, 401, NULL, TARGET_AUTH, TARGET_CAUSE_NONE, false, false, "401" },
		{ "403", CURLE_OK, 403, NULL, TARGET_AUTH, TARGET_CAUSE_NONE, false, false, "403" },
		{ "413", CURLE_OK, 413, NULL, TARGET_SPLIT, TARGET_CAUSE_NONE, false, false, "413" },
		{ "400", CURLE_OK, 400, NULL, TARGET_DEAD, TARGET_CAUSE_NONE, false, false, "HTTP 400" },
		{ "404", CURLE_OK, 404, NULL, TARGET_DEAD, TARGET_CAUSE_NONE, false, false, "HTTP 404" },
		{ "302 (a proxy)", CURLE_OK, 302, NULL, TARGET_REJECTED, TARGET_CAUSE_HTTP, false, false, "not followed" },
		{ "refused", CURLE_COULDNT_CONNECT, 0, NULL, TARGET_RETRY, TARGET_CAUSE_NETWORK, false, false, "network" },
		{ "no such host", CURLE_COULDNT_RESOLVE_HOST, 0, NULL, TARGET_RETRY, TARGET_CAUSE_NETWORK, false, false,
		  "network" },
		{ "timeout", CURLE_OPERATION_TIMEDOUT, 0, NULL, TARGET_RETRY, TARGET_CAUSE_NETWORK, true, false, "network" },
		{ "dropped", CURLE_GOT_NOTHING, 0, NULL, TARGET_RETRY, TARGET_CAUSE_NETWORK, true, false, "network" },
		{ "reset", CURLE_RECV_ERROR, 0, NULL, TARGET_RETRY, TARGET_CAUSE_NETWORK, true, false, "network" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct target_answer a;
		bool parsed = cases[i].xml && target_parse_answer(cases[i].xml, strlen(cases[i].xml), &a) == 0;
		struct target_judgement j;
		target_judge_submit(cases[i].res, "", cases[i].http, parsed ? &a : NULL, "body", &j);
		bool good = j.verdict == cases[i].verdict && j.cause == cases[i].cause &&
			    j.is_uncertain == cases[i].is_uncertain && j.use_retry_after == cases[i].use_retry_after &&
			    strstr(j.why, cases[i].why) != NULL;
		if (!good)
			fprintf(stderr, "judge_submit: %s: verdict %d cause %d uncertain %d retry_after %d why \"%s\"\n",
				cases[i].what, j.verdict, j.cause, j.is_uncertain, j.use_retry_after, j.why);
		CHECK(good);
		if (parsed)
			target_answer_finish(&a);
	}
	/* Only a connection never made is known not to have reached Target (and
	 * does not use the call budget). */
	CHECK(!target_call_reached(CURLE_COULDNT_CONNECT) && !target_call_reached(CURLE_COULDNT_RESOLVE_HOST));
	CHECK(target_call_reached(CURLE_OK) && target_call_reached(CURLE_OPERATION_TIMEDOUT));
}

/* Every outcome of a status poll. */
static void test_judge_poll(void)
{
	static const struct {
		const char *what;
		CURLcode res;
		long http;
		const char *xml;
		enum target_poll_verdict verdict;
	} cases[] = {
		{ "complete", CURLE_OK, 200, "<response><batchId>b</batchId><status>complete</status></response>",
		  TARGET_POLL_COMPLETE },
		{ "incomplete", CURLE_OK, 200, "<response><status>incomplete</status></response>", TARGET_POLL_INCOMPLETE },
		{ "stuck", CURLE_OK, 200, "<response><status>stuck</status></response>", TARGET_POLL_STUCK },
		{ "no status", CURLE_OK, 200, "<response></response>", TARGET_POLL_INCOMPLETE },
		{ "garbage", CURLE_OK, 200, NULL, TARGET_POLL_RETRY },
		{ "500", CURLE_OK, 500, NULL, TARGET_POLL_RETRY },
		{ "401", CURLE_OK, 401, NULL, TARGET_POLL_AUTH },
		{ "403", CURLE_OK, 403, NULL, TARGET_POLL_AUTH },
		{ "timeout", CURLE_OPERATION_TIMEDOUT, 0, NULL, TARGET_POLL_RETRY },
		{ "404", CURLE_OK, 404, NULL, TARGET_POLL_GONE },
		{ "410", CURLE_OK, 410, NULL, TARGET_POLL_GONE },
		{ "503", CURLE_OK, 503, NULL, TARGET_POLL_RETRY },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct target_answer a;
		bool parsed = cases[i].xml && target_parse_answer(cases[i].xml, strlen(cases[i].xml), &a) == 0;
		char why[256];
		enum target_poll_verdict v = target_judge_poll(cases[i].res, "", cases[i].http, parsed ? &a : NULL, "body",
							       why, sizeof(why));
		if (v != cases[i].verdict)
			fprintf(stderr, "judge_poll: %s: got %d\n", cases[i].what, v);
		CHECK(v == cases[i].verdict);
		CHECK((v == TARGET_POLL_RETRY || v == TARGET_POLL_AUTH || v == TARGET_POLL_GONE) == (why[0] != '\0'));
		if (parsed)
			target_answer_finish(&a);
	}
}

/* 429 and 503 slow the whole account down; nothing else does. */
static void test_throttling(void)
{
	struct target_judgement j;
	target_judge_submit(CURLE_OK, "", 503, NULL, "", &j);
	CHECK(j.is_throttled);
	target_judge_submit(CURLE_OK, "", 429, NULL, "", &j);
	CHECK(j.is_throttled);
	target_judge_submit(CURLE_OK, "", 500, NULL, "", &j);
	CHECK(!j.is_throttled);
}

static int count_failed(void *arg, const char *id, size_t len)
{
	int64_t *n = arg;
	char want[32];
	snprintf(want, sizeof(want), "p%07lld", (long long)*n);
	if (len != strlen(want) || memcmp(id, want, len) != 0)
		return -EINVAL;
	(*n)++;
	return 0;
}

static long rss_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, "VmRSS:", 6) == 0)
			kb = atol(line + 6);
	if (f)
		fclose(f);
	return kb;
}

/* A v2 status answer listing 500,000 failed rows (about 30 MB), parsed as a
 * stream from a file: every id reaches the callback in order, the counts and
 * the status come through, and memory does not grow with the list. Rows
 * whose status is not "failed" are not reported. */
static void test_status_stream(void)
{
	FILE *f = tmpfile();
	CHECK(f != NULL);
	fputs("<response><batchId>demo-1</batchId><status>complete</status><batchSize>500001</batchSize>"
	      "<consumedCount>500001</consumedCount><successfulUpdates>1</successfulUpdates>"
	      "<profilesNotFound>0</profilesNotFound><failedUpdates>500000</failedUpdates>\n", f);
	enum { N = 500000 };
	for (int i = 0; i < N; i++)
		fprintf(f, "<profile><id>p%07d</id><status>failed</status></profile>\n", i);
	fputs("<profile><id>ok-1</id><status>success</status></profile></response>\n", f);
	fflush(f);
	long before = rss_kb();
	struct target_answer a;
	int64_t n = 0;
	CHECK(target_parse_status_fd(fileno(f), &a, count_failed, &n) == 0);
	long after = rss_kb();
	CHECK(n == N && a.failed_listed == N);
	CHECK_STR(a.status, "complete");
	CHECK(a.failed == N && a.successful == 1 && a.batch_size == N + 1);
#ifndef __SANITIZE_ADDRESS__
	/* kB: bounded, whatever the list's length. ASan's quarantine keeps freed
	 * memory out of reuse, and valgrind's own allocator (it preloads itself)
	 * counts in the process's RSS, so the figure means nothing there. */
	const char *preload = getenv("LD_PRELOAD");
	if (!preload || !strstr(preload, "vgpreload"))
		CHECK(after - before < 2048);
#else
	(void)before;
	(void)after;
#endif
	target_answer_finish(&a);
	/* Without a callback the rows are only counted; a callback's error stops the parse. */
	CHECK(target_parse_status_fd(fileno(f), &a, NULL, NULL) == 0 && a.failed_listed == N);
	target_answer_finish(&a);
	n = 7;
	CHECK(target_parse_status_fd(fileno(f), &a, count_failed, &n) == -EINVAL);
	/* A cut answer is not a status. */
	CHECK(ftruncate(fileno(f), 5000) == 0);
	CHECK(target_parse_status_fd(fileno(f), &a, NULL, NULL) == -EBADMSG);
	fclose(f);
}

/* Target's rules for ids and names, and the batch id of a status URL. */
static void test_rules(void)
{
	CHECK(target_profile_id_problem("cust-1", 6) == NULL);
	CHECK(target_profile_id_problem("", 0) != NULL);
	CHECK(target_profile_id_problem("a+b", 3) != NULL && target_profile_id_problem("a/b", 3) != NULL);
	CHECK(target_profile_id_problem("a\tb", 3) != NULL);
	char long_id[130];
	memset(long_id, 'x', sizeof(long_id));
	CHECK(target_profile_id_problem(long_id, 128) == NULL && target_profile_id_problem(long_id, 129) != NULL);
	CHECK(target_attr_name_valid("loyalty.tier_2-x", 16) && !target_attr_name_valid("a b", 3));
	CHECK(!target_attr_name_valid("", 0) && !target_attr_name_valid("x=y", 3));
	char bid[64];
	CHECK(target_batch_id_of("http://e/m2/demo/v2/profile/batchStatus?batchId=demo-1&m2Node=00", bid, sizeof(bid)));
	CHECK_STR(bid, "demo-1");
	CHECK(target_batch_id_of("http://e/s?m2Node=00&batchId=z", bid, sizeof(bid)));
	CHECK_STR(bid, "z");
	CHECK(!target_batch_id_of("http://e/s?xbatchId=z", bid, sizeof(bid)));
	CHECK(!target_batch_id_of("http://e/s", bid, sizeof(bid)));
}

static void test_urls_and_answers(void)
{
	struct config cfg = { 0 };
	cfg.target.base_url = "https://demo.tt.omtrdc.net";
	cfg.target.client_code = "demo";
	cfg.target.api_version = 2;
	char *u = target_submit_url(&cfg);
	CHECK_STR(u, "https://demo.tt.omtrdc.net/m2/demo/v2/profile/batchUpdate");
	free(u);
	cfg.target.api_version = 1;
	u = target_submit_url(&cfg);
	CHECK_STR(u, "https://demo.tt.omtrdc.net/m2/demo/profile/batchUpdate");
	free(u);
	struct config plain = cfg;
	plain.target.base_url = "http://127.0.0.1:9";
	u = target_status_url(&plain, "http://mboxedge45.tt.omtrdc.net/m2/demo/profile/batchStatus?batchId=demo-1");
	CHECK_STR(u, "http://mboxedge45.tt.omtrdc.net/m2/demo/profile/batchStatus?batchId=demo-1&showDetails=true");
	free(u);
	/* Adobe gives status URLs as http://; with an https base they are polled over https. */
	u = target_status_url(&cfg, "http://mboxedge19.tt.omtrdc.net/m2/demo/v2/profile/batchStatus?batchId=d-1&m2Node=00");
	CHECK_STR(u, "https://mboxedge19.tt.omtrdc.net/m2/demo/v2/profile/batchStatus?batchId=d-1&m2Node=00&showDetails=true");
	/* The token goes to the upgraded URL (the host Target named), never to its http form. */
	CHECK(target_may_send_token(&cfg, u, "http://mboxedge19.tt.omtrdc.net/m2/demo/v2/profile/batchStatus?batchId=d-1"));
	CHECK(!target_may_send_token(&cfg, "http://mboxedge19.tt.omtrdc.net/m2/demo/v2/profile/batchStatus?batchId=d-1",
				     "http://mboxedge19.tt.omtrdc.net/m2/demo/v2/profile/batchStatus?batchId=d-1"));
	CHECK(!target_may_send_token(&cfg, "https://mboxedge20.tt.omtrdc.net/x", "http://mboxedge19.tt.omtrdc.net/x"));
	free(u);

	const char *status = "https://mboxedge45.tt.omtrdc.net/m2/demo/profile/batchStatus?batchId=x";
	CHECK(target_may_send_token(&cfg, "https://demo.tt.omtrdc.net/m2/demo/v2/profile/batchUpdate", NULL));
	CHECK(target_may_send_token(&cfg, status, status));
	CHECK(!target_may_send_token(&cfg, "https://evil.example/m2/demo", NULL));
	CHECK(!target_may_send_token(&cfg, "https://evil.example/x", status));
	CHECK(!target_may_send_token(&cfg, "http://mboxedge45.tt.omtrdc.net/x", "http://mboxedge45.tt.omtrdc.net/x"));
	CHECK(!target_may_send_token(&cfg, "https://user@demo.tt.omtrdc.net/x", NULL));

	struct target_answer a;
	const char *ok = "<response>\n  <success>true</success>\n  <batchStatus>http://mboxedge45.tt.omtrdc.net/m2/demo/profile/"
			 "batchStatus?batchId=demo-1701473848678-13029383</batchStatus>\n  <message>Batch submitted for "
			 "processing</message>\n</response>";
	CHECK(target_parse_answer(ok, strlen(ok), &a) == 0);
	CHECK(a.has_success && a.is_success);
	CHECK_STR(a.batch_status, "http://mboxedge45.tt.omtrdc.net/m2/demo/profile/batchStatus?batchId=demo-1701473848678-13029383");
	CHECK_STR(a.message, "Batch submitted for processing");
	target_answer_finish(&a);

	const char *bad = "<response><success>false</success><message>Unexpected error &amp; more</message></response>";
	CHECK(target_parse_answer(bad, strlen(bad), &a) == 0);
	CHECK(a.has_success && !a.is_success && !a.batch_status);
	CHECK_STR(a.message, "Unexpected error & more");
	target_answer_finish(&a);

	const char *st = "<response><batchId>demo-1</batchId><status>complete</status><batchSize>3</batchSize>"
			 "<consumedCount>3</consumedCount><successfulUpdates>2</successfulUpdates>"
			 "<profilesNotFound>1</profilesNotFound><failedUpdates>0</failedUpdates></response>";
	CHECK(target_parse_answer(st, strlen(st), &a) == 0);
	CHECK_STR(a.status, "complete");
	CHECK(a.batch_size == 3 && a.consumed == 3 && a.successful == 2 && a.not_found == 1 && a.failed == 0);
	target_answer_finish(&a);

	const char *garbage[] = { "<html><body>Service Temporarily Unavailable", "", "not xml at all",
				  "<other><success>true</success></other>", "<response><success>true</response>" };
	for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++)
		CHECK(target_parse_answer(garbage[i], strlen(garbage[i]), &a) == -EBADMSG);
}

int main(void)
{
	RUN(test_urls_and_answers);
	RUN(test_judge_submit);
	RUN(test_judge_poll);
	RUN(test_rules);
	RUN(test_throttling);
	RUN(test_status_stream);
	return check_result("test_target");
}
