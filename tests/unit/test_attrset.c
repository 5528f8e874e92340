/* SPDX-License-Identifier: MIT */
/* Attribute sets and their blob form: the exact bytes of format 2, corrupt
 * blobs refused without reading past their end, and format 1 for migrations. */
#include <errno.h>
#include <stdlib.h>

#include "attrset.h"
#include "check.h"

/* Decodes len bytes copied into a buffer of exactly that size, so that a read
 * past the end shows under ASan and valgrind. The copy is freed: only the
 * result and the count may be looked at. */
static int decode_exact(struct attrset *t, const void *bytes, size_t len)
{
	void *copy = malloc(len ? len : 1);
	memcpy(copy, bytes, len);
	int r = attrset_decode(t, copy, len);
	free(copy);
	return r;
}

static void test_format(void)
{
	struct attrset s, t;
	struct buf b;
	attrset_init(&s);
	attrset_init(&t);
	buf_init(&b);
	/* Ids 1, 2, 300 (a two-byte varint): k = 4, then the values "", "ab", "x". */
	CHECK(attrset_put(&s, 300, "x", 1) == 0);
	CHECK(attrset_put(&s, 2, "ab", 2) == 0);
	CHECK(attrset_put(&s, 1, "", 0) == 0);
	CHECK(attrset_encode(&s, &b) == 0);
	static const unsigned char want[] = { 4, 1, 2, 0xac, 0x02, 0, 'a', 'b', 0, 'x', 0 };
	CHECK(b.len == sizeof(want) && memcmp(b.data, want, sizeof(want)) == 0);
	/* A blob with exactly these ids starts with the ids' own encoding. */
	struct buf ids;
	buf_init(&ids);
	static const uint32_t three[] = { 1, 2, 300 };
	CHECK(attrset_encode_ids(three, 3, &ids) == 0);
	CHECK(ids.len == 5 && memcmp(ids.data, want, 5) == 0);
	buf_finish(&ids);

	/* The empty set is the empty blob; a zero-length id list reads as empty too. */
	attrset_clear(&s);
	buf_reset(&b);
	CHECK(attrset_encode(&s, &b) == 0 && b.len == 0);
	CHECK(attrset_decode(&t, NULL, 0) == 0 && t.n == 0);
	CHECK(decode_exact(&t, "\0", 1) == 0 && t.n == 0);

	/* A NUL inside a value would shift every value after it: refused, and
	 * nothing is appended. */
	CHECK(attrset_put(&s, 7, "a\0b", 3) == 0);
	CHECK(attrset_encode(&s, &b) == -EILSEQ && b.len == 0);

	/* Corrupt blobs. */
	CHECK(decode_exact(&t, want, sizeof(want) - 1) == -EINVAL);            /* last value cut */
	CHECK(decode_exact(&t, "\x04\x01\x02", 3) == -EINVAL);                  /* id list past the end */
	CHECK(decode_exact(&t, "\x02\x01\x82\0", 4) == -EINVAL);                /* id cut inside its varint */
	CHECK(decode_exact(&t, "\x01\x01" "a", 3) == -EINVAL);                  /* value without its NUL */
	CHECK(decode_exact(&t, "\x01\x01" "a\0b", 5) == -EINVAL);               /* bytes after the last value */
	CHECK(decode_exact(&t, "\x02\x01\x02" "a\0", 5) == -EINVAL);            /* fewer values than ids */
	CHECK(decode_exact(&t, "\x02\x02\x01" "a\0b\0", 7) == -EINVAL);         /* ids out of order */
	CHECK(decode_exact(&t, "\x02\x02\x02" "a\0b\0", 7) == -EINVAL);         /* an id twice */
	CHECK(decode_exact(&t, "\x80\x80\x80\x80\x80\x80", 6) == -EINVAL);      /* k is no varint */
	attrset_finish(&s);
	attrset_finish(&t);
	buf_finish(&b);
}

/* Format 1, what schema versions 1 and 2 stored: varint id, varint length, bytes. */
static void test_format1(void)
{
	struct attrset t;
	attrset_init(&t);
	static const unsigned char v1[] = { 2, 2, 'a', 'b', 0xac, 0x02, 1, 'x', 0xd0, 0x86, 0x03, 0 };
	CHECK(attrset_decode_v1(&t, v1, sizeof(v1)) == 0 && t.n == 3);
	CHECK(attr_kv_equals(attrset_get(&t, 2), "ab", 2) && attr_kv_equals(attrset_get(&t, 300), "x", 1));
	CHECK(attrset_get(&t, 50000) && attrset_get(&t, 50000)->len == 0);
	CHECK(attrset_decode_v1(&t, NULL, 0) == 0 && t.n == 0);
	CHECK(attrset_decode_v1(&t, v1, sizeof(v1) - 1) == -EINVAL);
	CHECK(attrset_decode_v1(&t, "\x05\x01x\x02\x01y", 6) == -EINVAL); /* ids out of order */
	attrset_finish(&t);
}

/* attrset_value_ends against a byte-by-byte count: runs of 0 to 70 bytes
 * (under, at and over 16, with a tail) holding NULs anywhere, up to 20 in a
 * block, and the limit: max + 1 once there are more than max. ends is
 * allocated at exactly max + 4, so a write past it shows. */
static void test_value_ends(void)
{
	unsigned seed = 7;
	for (int round = 0; round < 5000; round++) {
		seed = seed * 1103515245u + 12345u;
		size_t len = (seed >> 8) % 71, density = 1 + (seed >> 20) % 8;
		unsigned char *run = malloc(len ? len : 1);
		size_t want[80], n = 0;
		for (size_t i = 0; i < len; i++) {
			seed = seed * 1103515245u + 12345u;
			run[i] = (seed >> 8) % density == 0 ? 0 : (unsigned char)('a' + (seed >> 12) % 26);
			if (!run[i])
				want[n++] = i;
		}
		size_t max = round % 3 == 0 && n > 0 ? n - 1 : n + (size_t)(round % 5);
		uint32_t *ends = malloc((max + 4) * sizeof(*ends));
		size_t got = attrset_value_ends(run, run + len, ends, max);
		if (n > max) {
			CHECK(got == max + 1);
		} else {
			CHECK(got == n);
			for (size_t i = 0; i < n && i < got; i++)
				CHECK(ends[i] == want[i]);
		}
		free(ends);
		free(run);
	}
}

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
	/* Every shorter prefix of a good blob is refused. */
	for (size_t len = 1; len < b.len; len++)
		CHECK(decode_exact(&t, b.data, len) == -EINVAL);
	attrset_finish(&s);
	attrset_finish(&t);
	buf_finish(&b);
	test_format();
	test_format1();
	test_value_ends();
	return check_result("test_attrset");
}
