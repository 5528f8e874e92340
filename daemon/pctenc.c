/* SPDX-License-Identifier: MIT */
/* Percent-encoding as Target's bulk API needs it: every cell is encoded so that the
 * batch's own commas and newlines are the only structure Target sees. */
#include "pctenc.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static bool is_plain(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~';
}

/* Each byte's encoding as (length, up to three characters), built once. */
static struct {
	unsigned char len;
	char text[3];
} table[256];
static bool table_ready;

static void build_table(void)
{
	static const char hex[] = "0123456789ABCDEF";
	for (int c = 0; c < 256; c++) {
		if (is_plain((unsigned char)c)) {
			table[c].len = 1;
			table[c].text[0] = (char)c;
		} else {
			table[c].len = 3;
			table[c].text[0] = '%';
			table[c].text[1] = hex[c >> 4];
			table[c].text[2] = hex[c & 15];
		}
	}
	table_ready = true;
}

size_t pctenc_encoded_len(const char *src, size_t len)
{
	if (!table_ready)
		build_table();
	size_t n = 0;
	for (size_t i = 0; i < len; i++)
		n += table[(unsigned char)src[i]].len;
	return n;
}

#if defined(__SSE2__)
/* Bit i set when byte i (of 16) needs no encoding: a letter, digit, - . _ ~. */
static inline unsigned plain_mask16(__m128i c)
{
	/* OR 0x20 folds A-Z onto a-z and maps nothing else into it. */
	__m128i t = _mm_sub_epi8(_mm_or_si128(c, _mm_set1_epi8(0x20)), _mm_set1_epi8('a'));
	__m128i letter = _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(25)), t);
	__m128i d = _mm_sub_epi8(c, _mm_set1_epi8('0'));
	__m128i digit = _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d);
	__m128i sym = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(c, _mm_set1_epi8('-')), _mm_cmpeq_epi8(c, _mm_set1_epi8('.'))),
				   _mm_or_si128(_mm_cmpeq_epi8(c, _mm_set1_epi8('_')), _mm_cmpeq_epi8(c, _mm_set1_epi8('~'))));
	return (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(letter, digit), sym));
}
#endif

size_t pctenc_encode(const char *src, size_t len, char *dst)
{
	if (!table_ready)
		build_table();
	char *out = dst;
	size_t i = 0;
#if defined(__SSE2__)
	/* 16 bytes at a time: store them as they are, keep the plain prefix, and
	 * encode the first byte that is not plain. The stores stay inside dst's
	 * worst case (3 * len) because 16 or more input bytes remain. */
	while (len - i >= 16) {
		__m128i c = _mm_loadu_si128((const __m128i *)(const void *)(src + i));
		unsigned plain = plain_mask16(c);
		_mm_storeu_si128((__m128i *)(void *)out, c);
		if (plain == 0xFFFF) {
			out += 16;
			i += 16;
			continue;
		}
		unsigned k = (unsigned)__builtin_ctz(~plain);
		out += k;
		i += k;
		unsigned char b = (unsigned char)src[i++];
		memcpy(out, table[b].text, 3);
		out += table[b].len;
	}
#endif
	for (; i < len; i++) {
		unsigned char c = (unsigned char)src[i];
		/* Copy three bytes always (dst has room for the worst case). */
		memcpy(out, table[c].text, 3);
		out += table[c].len;
	}
	return (size_t)(out - dst);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

long pctenc_decode(const char *src, size_t len, char *dst)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		if (src[i] == '%') {
			int hi = i + 1 < len ? hexval(src[i + 1]) : -1;
			int lo = i + 2 < len ? hexval(src[i + 2]) : -1;
			if (hi < 0 || lo < 0)
				return -EINVAL;
			dst[o++] = (char)(hi << 4 | lo);
			i += 2;
		} else if (src[i] == '+') {
			dst[o++] = ' ';
		} else {
			dst[o++] = src[i];
		}
	}
	return (long)o;
}
