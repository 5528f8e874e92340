/* SPDX-License-Identifier: MIT */
/* Attribute sets: the unit the staging diff, batches and the mirror work on. A
 * profile row's values are stored together so that diffing a CSV row costs one
 * point lookup, and attribute names are interned ids so 50M profiles do not repeat
 * them. */
#include "attrset.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

void attrset_init(struct attrset *s)
{
	s->kv = NULL;
	s->n = 0;
	s->cap = 0;
}

void attrset_finish(struct attrset *s)
{
	free(s->kv);
	attrset_init(s);
}

static int reserve(struct attrset *s, size_t need)
{
	if (need <= s->cap)
		return 0;
	size_t cap = s->cap ? s->cap * 2 : 16;
	while (cap < need)
		cap *= 2;
	struct attr_kv *kv = realloc(s->kv, cap * sizeof(*kv));
	if (!kv)
		return -ENOMEM;
	s->kv = kv;
	s->cap = cap;
	return 0;
}

int attrset_put_varint(struct buf *out, uint32_t v)
{
	unsigned char tmp[5];
	size_t n = 0;
	do {
		tmp[n] = v & 0x7f;
		v >>= 7;
		if (v)
			tmp[n] |= 0x80;
		n++;
	} while (v);
	return buf_append(out, tmp, n);
}

/* The next entry of it goes to *kv (its value points into the blob). Returns
 * 1, 0 after the last one, or -EINVAL for a corrupt blob (an id or value cut
 * off, or bytes left after the last value). Ids are not checked for order. */
static int iter_next(struct attrset_iter *it, struct attr_kv *kv)
{
	const unsigned char *p = it->id;
	if (p == it->ids_end)
		return it->val == it->end ? 0 : -EINVAL;
	if (!(it->id = attrset_get_varint(p, it->ids_end, &kv->id)))
		return -EINVAL;
	const unsigned char *nul = memchr(it->val, 0, (size_t)(it->end - it->val));
	if (!nul)
		return -EINVAL;
	kv->val = (const char *)it->val;
	kv->len = (uint32_t)(nul - it->val);
	it->val = nul + 1;
	return 1;
}

int attrset_decode(struct attrset *s, const void *blob, size_t len)
{
	struct attrset_iter it;
	struct attr_kv kv;
	int r = attrset_iter_init(&it, blob, len);
	s->n = 0;
	while (r == 0 && (r = iter_next(&it, &kv)) > 0) {
		if (s->n && s->kv[s->n - 1].id >= kv.id)
			return -EINVAL;
		if (s->n == s->cap && reserve(s, s->n + 1) < 0)
			return -ENOMEM;
		s->kv[s->n++] = kv;
		r = 0;
	}
	return r;
}

int attrset_decode_v1(struct attrset *s, const void *blob, size_t len)
{
	const unsigned char *p = blob, *end = p ? p + len : p;
	s->n = 0;
	while (p < end) {
		struct attr_kv kv;
		uint32_t vlen;
		if (!(p = attrset_get_varint(p, end, &kv.id)) || !(p = attrset_get_varint(p, end, &vlen)) ||
		    vlen > (size_t)(end - p))
			return -EINVAL;
		if (s->n && s->kv[s->n - 1].id >= kv.id)
			return -EINVAL;
		if (reserve(s, s->n + 1) < 0)
			return -ENOMEM;
		kv.len = vlen;
		kv.val = (const char *)p;
		s->kv[s->n++] = kv;
		p += vlen;
	}
	return 0;
}

#if defined(__SSE2__)
/* Appends the offsets base + (each set bit of nul, lowest first) to ends at
 * *n. Branch-free for up to 4 bits (ends has room for 4 past max): most 16
 * bytes of text end at most 4 values, and a branch on how many would be
 * mispredicted about once a block. */
static inline void put_bits(uint32_t *ends, size_t *n, unsigned nul, unsigned count, uint32_t base)
{
	uint32_t *e = ends + *n;
	*n += count;
	for (int k = 0; k < 4; k++) {
		e[k] = base + (uint32_t)__builtin_ctz(nul | 0x10000u);
		nul &= nul - 1;
	}
	for (e += 4; nul; nul &= nul - 1)
		*e++ = base + (uint32_t)__builtin_ctz(nul);
}

/* The NUL bytes among the 16 at p: a bit each, and how many. */
static inline unsigned nul_bits(const unsigned char *p, unsigned *count)
{
	__m128i zero = _mm_setzero_si128();
	__m128i is_nul = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)p), zero);
	/* Each NUL byte is 0xff: subtracted from 0 it is 1, and psadbw sums each half. */
	__m128i sums = _mm_sad_epu8(_mm_sub_epi8(zero, is_nul), zero);
	*count = (unsigned)(_mm_cvtsi128_si32(sums) + _mm_cvtsi128_si32(_mm_srli_si128(sums, 8)));
	return (unsigned)_mm_movemask_epi8(is_nul);
}
#endif

size_t attrset_value_ends(const unsigned char *vals, const unsigned char *end, uint32_t *ends, size_t max)
{
	size_t n = 0, len = (size_t)(end - vals), i = 0;
#if defined(__SSE2__)
	if (len >= 16) {
		unsigned count, nul;
		for (; len - i >= 16; i += 16) {
			nul = nul_bits(vals + i, &count);
			if (n + count > max)
				return max + 1;
			put_bits(ends, &n, nul, count, (uint32_t)i);
		}
		if (i < len) { /* the last 16 bytes, less those already seen */
			nul = nul_bits(end - 16, &count) >> (16 - (len - i));
			count = (unsigned)__builtin_popcount(nul);
			if (n + count > max)
				return max + 1;
			put_bits(ends, &n, nul, count, (uint32_t)i);
		}
		return n;
	}
#endif
	for (; i < len; i++) {
		if (vals[i])
			continue;
		if (n == max)
			return max + 1;
		ends[n++] = (uint32_t)i;
	}
	return n;
}

static size_t varint_size(uint32_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

int attrset_encode_ids(const uint32_t *ids, size_t n, struct buf *out)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		k += varint_size(ids[i]);
	if (attrset_put_varint(out, (uint32_t)k) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (attrset_put_varint(out, ids[i]) < 0)
			return -ENOMEM;
	return 0;
}

int attrset_encode(const struct attrset *s, struct buf *out)
{
	if (s->n == 0)
		return 0;
	size_t k = 0, values = 0;
	for (size_t i = 0; i < s->n; i++) {
		if (s->kv[i].len && memchr(s->kv[i].val, 0, s->kv[i].len))
			return -EILSEQ;
		k += varint_size(s->kv[i].id);
		values += s->kv[i].len + 1;
	}
	if (buf_reserve(out, 5 + k + values) < 0)
		return -ENOMEM;
	/* Room is reserved: the appends below cannot fail. */
	(void)attrset_put_varint(out, (uint32_t)k);
	for (size_t i = 0; i < s->n; i++)
		(void)attrset_put_varint(out, s->kv[i].id);
	for (size_t i = 0; i < s->n; i++) {
		(void)buf_append(out, s->kv[i].val, s->kv[i].len);
		(void)buf_putc(out, '\0');
	}
	return 0;
}

/* Index of the first entry with id >= the given one. */
static size_t lower_bound(const struct attrset *s, uint32_t id)
{
	size_t lo = 0, hi = s->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->kv[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int attrset_put(struct attrset *s, uint32_t id, const char *val, uint32_t len)
{
	/* Rows usually arrive in id order: append without searching. */
	if (s->n == 0 || s->kv[s->n - 1].id < id) {
		if (s->n == s->cap && reserve(s, s->n + 1) < 0)
			return -ENOMEM;
		s->kv[s->n++] = (struct attr_kv){ .id = id, .len = len, .val = val };
		return 0;
	}
	size_t i = lower_bound(s, id);
	if (i < s->n && s->kv[i].id == id) {
		s->kv[i].val = val;
		s->kv[i].len = len;
		return 0;
	}
	if (reserve(s, s->n + 1) < 0)
		return -ENOMEM;
	memmove(&s->kv[i + 1], &s->kv[i], (s->n - i) * sizeof(s->kv[0]));
	s->kv[i] = (struct attr_kv){ .id = id, .len = len, .val = val };
	s->n++;
	return 0;
}

void attrset_del(struct attrset *s, uint32_t id)
{
	size_t i = lower_bound(s, id);
	if (i < s->n && s->kv[i].id == id) {
		memmove(&s->kv[i], &s->kv[i + 1], (s->n - i - 1) * sizeof(s->kv[0]));
		s->n--;
	}
}

const struct attr_kv *attrset_get(const struct attrset *s, uint32_t id)
{
	size_t i = lower_bound(s, id);
	return i < s->n && s->kv[i].id == id ? &s->kv[i] : NULL;
}

int attrset_overlay(struct attrset *dst, const struct attrset *src)
{
	for (size_t i = 0; i < src->n; i++)
		if (attrset_put(dst, src->kv[i].id, src->kv[i].val, src->kv[i].len) < 0)
			return -ENOMEM;
	return 0;
}
