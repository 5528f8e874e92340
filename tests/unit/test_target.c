/* SPDX-License-Identifier: MIT */
/* Target's URLs, XML answers and where the token may go. */
#include <errno.h>
#include <stdlib.h>

#include "check.h"
#include "config.h"
#include "target.h"

int main(void)
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
	u = target_status_url("http://mboxedge45.tt.omtrdc.net/m2/demo/profile/batchStatus?batchId=demo-1");
	CHECK_STR(u, "http://mboxedge45.tt.omtrdc.net/m2/demo/profile/batchStatus?batchId=demo-1&showDetails=true");
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
	return check_result("test_target");
}
