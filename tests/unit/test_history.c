/* SPDX-License-Identifier: MIT */
/* A profile's staging history: events kept in order, the oldest dropped
 * beyond the count and the age, a corrupt blob dropped, nothing kept with a
 * count of 0. */
#include <errno.h>

#include "check.h"
#include "history.h"

static struct history_event ev(int64_t seq, int64_t at, const char *source)
{
	struct history_event e = { .seq = seq, .at = at, .file_id = seq * 10, .line = seq + 1, .source = source,
				   .source_len = strlen(source), .position = "", .position_len = 0, .n_attrs = 2,
				   .attrs = { 3, 300 } };
	return e;
}

static size_t count(const struct buf *b, int64_t *first_seq)
{
	const unsigned char *p = (const unsigned char *)b->data, *end = p ? p + b->len : NULL;
	struct history_event e;
	size_t n = 0;
	while (history_next(&p, end, &e) > 0) {
		if (n++ == 0 && first_seq)
			*first_seq = e.seq;
	}
	return n;
}

static void test_append_and_bounds(void)
{
	struct buf a, b;
	buf_init(&a);
	buf_init(&b);
	for (int64_t i = 1; i <= 5; i++) {
		struct history_event e = ev(i, 1000 * i, i % 2 ? "crm" : "loyalty");
		CHECK(history_append(a.data, a.len, &e, 3, 0, &b) == 0);
		buf_reset(&a);
		buf_append(&a, b.data, b.len);
	}
	int64_t first = 0;
	CHECK(count(&a, &first) == 3 && first == 3);
	/* Read back whole. */
	const unsigned char *p = (const unsigned char *)a.data, *end = p + a.len;
	struct history_event e;
	CHECK(history_next(&p, end, &e) == 1 && e.seq == 3 && e.at == 3000 && e.file_id == 30 && e.line == 4);
	CHECK(e.source_len == 3 && memcmp(e.source, "crm", 3) == 0 && e.n_attrs == 2 && e.attrs[1] == 300);
	/* The age bound: events before 4500 go. */
	struct history_event late = ev(9, 9000, "crm");
	CHECK(history_append(a.data, a.len, &late, 20, 4500, &b) == 0);
	CHECK(count(&b, &first) == 2 && first == 5);
	/* More attributes than are listed: counted all the same. */
	struct history_event wide = ev(10, 10000, "x");
	wide.n_attrs = HISTORY_MAX_ATTRS + 5;
	CHECK(history_append(NULL, 0, &wide, 20, 0, &b) == 0);
	p = (const unsigned char *)b.data;
	end = p + b.len;
	CHECK(history_next(&p, end, &e) == 1 && e.n_attrs == HISTORY_MAX_ATTRS + 5 && p == end);
	/* No history kept at all. */
	CHECK(history_append(a.data, a.len, &late, 0, 0, &b) == 0 && b.len == 0);
	buf_finish(&a);
	buf_finish(&b);
}

/* A first load's dense attribute ids are kept as a bitmap, sparse ones as a
 * list; both read back whole. */
static void test_attribute_bitmap(void)
{
	struct buf b;
	buf_init(&b);
	struct history_event dense = ev(1, 1796000000123, "crm");
	dense.n_attrs = 10;
	for (uint32_t i = 0; i < 10; i++)
		dense.attrs[i] = 10 - i; /* any order in; ascending out */
	CHECK(history_append(NULL, 0, &dense, 20, 0, &b) == 0);
	size_t dense_len = b.len;
	const unsigned char *p = (const unsigned char *)b.data, *end = p + b.len;
	struct history_event e;
	CHECK(history_next(&p, end, &e) == 1 && e.n_attrs == 10 && p == end);
	for (uint32_t i = 0; i < 10; i++)
		CHECK(e.attrs[i] == i + 1);
	CHECK(e.at == 1796000000000); /* to the second */
	dense.attrs[9] = 300; /* sparse: listed */
	CHECK(history_append(NULL, 0, &dense, 20, 0, &b) == 0);
	p = (const unsigned char *)b.data;
	end = p + b.len;
	CHECK(history_next(&p, end, &e) == 1 && e.n_attrs == 10 && e.attrs[9] == 300 && e.attrs[0] == 10);
	/* seq, at, file, line, source, position, count: 16 bytes; 3 for the ids. */
	CHECK(dense_len <= 20);
	/* A bitmap that holds fewer ids than its count says is corrupt. */
	static const unsigned char bad[] = { 1, 1, 0, 0, 0, 0, (5 << 1) | 1, 1, 0x03 };
	p = bad;
	CHECK(history_next(&p, bad + sizeof(bad), &e) == -EINVAL);
	buf_finish(&b);
}

static void test_corrupt(void)
{
	struct buf b;
	buf_init(&b);
	static const unsigned char junk[] = { 0x01, 0x02, 0x03, 0x04, 0x7f, 'a' };
	struct history_event e = ev(1, 1, "crm");
	CHECK(history_append(junk, sizeof(junk), &e, 20, 0, &b) == 0);
	CHECK(count(&b, NULL) == 1);
	const unsigned char *p = junk, *end = junk + sizeof(junk);
	struct history_event out;
	CHECK(history_next(&p, end, &out) == -EINVAL);
	buf_finish(&b);
}

int main(void)
{
	RUN(test_append_and_bounds);
	RUN(test_attribute_bitmap);
	RUN(test_corrupt);
	return check_result("test_history");
}
