/* SPDX-License-Identifier: MIT */
/* Durations, sizes, backoff arithmetic and Retry-After parsing. */
#include <errno.h>
#include <stdint.h>

#include "backoff.h"
#include "check.h"
#include "units.h"

static void durations(void)
{
	int64_t v;
	CHECK(units_parse_duration("500ms", &v) == 0 && v == 500);
	CHECK(units_parse_duration("5s", &v) == 0 && v == 5000);
	CHECK(units_parse_duration("10m", &v) == 0 && v == 600000);
	CHECK(units_parse_duration("2h", &v) == 0 && v == 7200000);
	CHECK(units_parse_duration("7d", &v) == 0 && v == 7LL * 86400000);
	CHECK(units_parse_duration("30", &v) == 0 && v == 30000);
	CHECK(units_parse_duration("", &v) == -EINVAL);
	CHECK(units_parse_duration("5 s", &v) == -EINVAL);
	CHECK(units_parse_duration("-5s", &v) == -EINVAL);
	CHECK(units_parse_duration("5x", &v) == -EINVAL);
	CHECK(units_parse_duration("1.5s", &v) == -EINVAL);
	CHECK(units_parse_duration("99999999999999999999d", &v) == -ERANGE);
	CHECK(units_parse_duration("999999999999999d", &v) == -ERANGE);
	char buf[32];
	units_format_duration(7LL * 86400000, buf, sizeof(buf));
	CHECK_STR(buf, "7d");
	units_format_duration(1500, buf, sizeof(buf));
	CHECK_STR(buf, "1500ms");
	units_format_duration(90000, buf, sizeof(buf));
	CHECK_STR(buf, "90s");
}

static void sizes(void)
{
	int64_t v;
	CHECK(units_parse_size("50MB", &v) == 0 && v == 50000000);
	CHECK(units_parse_size("64KB", &v) == 0 && v == 64000);
	CHECK(units_parse_size("1234", &v) == 0 && v == 1234);
	CHECK(units_parse_size("12GB", &v) == -EINVAL);
	CHECK(units_parse_size("MB", &v) == -EINVAL);
}

static void backoff(void)
{
	CHECK(backoff_ceiling(1000, 600000, 1) == 1000);
	CHECK(backoff_ceiling(1000, 600000, 2) == 2000);
	CHECK(backoff_ceiling(1000, 600000, 4) == 8000);
	CHECK(backoff_ceiling(1000, 600000, 30) == 600000);
	CHECK(backoff_ceiling(1000, 600000, 1000) == 600000);
	/* Full jitter: every draw lies in [initial, ceiling], and draws spread out. */
	int64_t lo = INT64_MAX, hi = 0;
	for (uint64_t r = 0; r < 10000; r++) {
		int64_t d = backoff_delay(1000, 600000, 5, r * 2654435761u);
		CHECK(d >= 1000 && d <= 16000);
		if (d < lo)
			lo = d;
		if (d > hi)
			hi = d;
	}
	CHECK(lo < 3000 && hi > 14000);
	CHECK(backoff_delay(1000, 500, 3, 12345) == 500); /* max below initial wins */

	int64_t ms;
	CHECK(backoff_parse_retry_after("120", 0, &ms) == 0 && ms == 120000);
	CHECK(backoff_parse_retry_after(" 3 ", 0, &ms) == 0 && ms == 3000);
	/* 2015-10-21T07:28:00Z = 1445412480 */
	CHECK(backoff_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470, &ms) == 0 && ms == 10000);
	CHECK(backoff_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490, &ms) == 0 && ms == 0);
	CHECK(backoff_parse_retry_after("soon", 0, &ms) == -EINVAL);
	CHECK(backoff_parse_retry_after("-1", 0, &ms) == -EINVAL);
}

int main(void)
{
	durations();
	sizes();
	backoff();
	return check_result("test_units");
}
