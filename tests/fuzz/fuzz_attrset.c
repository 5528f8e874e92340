/* SPDX-License-Identifier: MIT */
/* libFuzzer harness: attribute blobs. Any bytes either decode or are refused,
 * without reading past their end; what decodes has ascending ids and values
 * without NULs, encodes again (canonically) and decodes to the same set; and
 * format 1 blobs, as the migration reads them, never crash either. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attrset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct attrset s, t;
	struct buf b;
	attrset_init(&s);
	attrset_init(&t);
	buf_init(&b);
	if (attrset_decode(&s, data, size) == 0) {
		for (size_t i = 0; i < s.n; i++) {
			assert(i == 0 || s.kv[i - 1].id < s.kv[i].id);
			assert(!memchr(s.kv[i].val, 0, s.kv[i].len));
			assert((const uint8_t *)s.kv[i].val >= data && (const uint8_t *)s.kv[i].val + s.kv[i].len < data + size);
		}
		assert(attrset_encode(&s, &b) == 0);
		assert(b.len <= size); /* canonical: minimal varints, never longer */
		assert(attrset_decode(&t, b.data, b.len) == 0 && t.n == s.n);
		for (size_t i = 0; i < s.n; i++)
			assert(t.kv[i].id == s.kv[i].id && t.kv[i].len == s.kv[i].len &&
			       memcmp(t.kv[i].val, s.kv[i].val, s.kv[i].len) == 0);
	}
	if (attrset_decode_v1(&s, data, size) == 0) {
		buf_reset(&b);
		int r = attrset_encode(&s, &b);
		assert(r == 0 || r == -EILSEQ); /* a format 1 value may hold a NUL: refused */
		if (r == 0)
			assert(attrset_decode(&t, b.data, b.len) == 0 && t.n == s.n);
	}
	/* The input as a value run: its NULs found in one pass, as byte by byte. */
	size_t nuls = 0;
	for (size_t i = 0; i < size; i++)
		nuls += data[i] == 0;
	size_t max = nuls / 2 + size % 3; /* below, at or above the count */
	uint32_t *ends = malloc((max + 4) * sizeof(*ends));
	assert(ends);
	size_t got = attrset_value_ends(data, data + size, ends, max);
	assert(nuls > max ? got == max + 1 : got == nuls);
	for (size_t i = 0, k = 0; i < size && k < got && got <= max; i++)
		if (data[i] == 0)
			assert(ends[k++] == i);
	free(ends);
	attrset_finish(&s);
	attrset_finish(&t);
	buf_finish(&b);
	return 0;
}
