/* SPDX-License-Identifier: MIT */
/* Attribute sets and their blob form. */
#include <errno.h>

#include "attrset.h"
#include "check.h"

int main(void)
{
	struct attrset s, t;
	struct buf b;
	attrset_init(&s);
	attrset_init(&t);
	buf_init(&b);
	CHECK(attrset_put(&s, 300, "x", 1) == 0);
	CHECK(attrset_put(&s, 2, "two", 3) == 0);
	CHECK(attrset_put(&s, 70000, "", 0) == 0);
	CHECK(attrset_put(&s, 2, "TWO", 3) == 0);
	CHECK(s.n == 3 && s.kv[0].id == 2 && s.kv[1].id == 300 && s.kv[2].id == 70000);
	CHECK(attr_kv_equals(attrset_get(&s, 2), "TWO", 3));
	CHECK(!attrset_get(&s, 3));
	CHECK(attrset_encode(&s, &b) == 0);
	CHECK(attrset_decode(&t, b.data, b.len) == 0);
	CHECK(t.n == 3 && attr_kv_equals(attrset_get(&t, 300), "x", 1) && attrset_get(&t, 70000)->len == 0);
	attrset_del(&t, 300);
	CHECK(t.n == 2 && !attrset_get(&t, 300));
	CHECK(attrset_overlay(&t, &s) == 0 && t.n == 3);
	/* Corrupt blobs are refused, never read past their end. */
	CHECK(attrset_decode(&t, b.data, b.len - 1) == -EINVAL);
	CHECK(attrset_decode(&t, "\x80\x80\x80\x80\x80\x80", 6) == -EINVAL);
	CHECK(attrset_decode(&t, "\x05\x01x\x02\x01y", 6) == -EINVAL); /* ids out of order */
	attrset_finish(&s);
	attrset_finish(&t);
	buf_finish(&b);
	return check_result("test_attrset");
}
