/* SPDX-License-Identifier: MIT */
/* Percent-encoding as Target's bulk API needs it: every cell is encoded so that the
 * batch's own commas and newlines are the only structure Target sees. */
#include "pctenc.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <stdlib.h>
#if defined(__x86_64__) || defined(__i386__)
#include <smmintrin.h>
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
}

static void setup(void);
static bool ready;

/* Builds the tables and picks the encoder, once, before any function uses them. */
static inline void ensure_setup(void)
{
	if (!ready)
		setup();
}

size_t pctenc_encoded_len(const char *src, size_t len)
{
	ensure_setup();
	size_t n = 0;
	for (size_t i = 0; i < len; i++)
		n += table[(unsigned char)src[i]].len;
	return n;
}

static size_t encode_scalar(const char *src, size_t len, char *dst)
{
	char *out = dst;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)src[i];
		/* Copy three bytes always (dst has room for the worst case). */
		memcpy(out, table[c].text, 3);
		out += table[c].len;
	}
	return (size_t)(out - dst);
}

#if defined(__x86_64__) || defined(__i386__)
/* SSE4.1 (SSSE3's pshufb, and pblendvb to choose between two bytes), 16
 * bytes at a time. Each byte has a first output byte (itself, or "%") and two
 * hex digits; which bytes need encoding is a 16-bit mask. Each 8-byte half
 * with at most 4 such bytes (text nearly always) is written with one 16-byte
 * store: two pshufb pick its output from the (first, high digit) pairs and
 * from the low digits, by 256-entry patterns indexed by the half's mask. A
 * denser block is written as four 4-byte groups "c??" or "%HL", one pshufb
 * each keeping 1 or 3 bytes of each byte, by a 16-entry table. Every store is
 * 16 bytes, so dst needs PCTENC_SLACK bytes past the worst case. */
static unsigned char compact[16][16]; /* pshufb pattern per 4-bit "needs encoding" mask */
static unsigned char compact_len[16];   /* 4 + 2 per byte that needs encoding */
/* For 8 bytes with at most 4 to encode (mask m): pshufb patterns picking the
 * output from the (first, high hex digit) pairs and from the low hex digits,
 * and the output length, 8 + 2 per byte encoded. */
static unsigned char pick_pair[256][16], pick_low[256][16], pick_len[256];
/* Byte c is plain when plain_by_low[c & 15] & plain_by_high[c >> 4] != 0: one
 * bit per high nibble that has plain bytes, set in the rows of their low nibbles. */
static unsigned char plain_by_low[16], plain_by_high[16];

static void build_compact(void)
{
	for (unsigned m = 0; m < 16; m++) {
		unsigned n = 0;
		for (unsigned j = 0; j < 4; j++) {
			compact[m][n++] = (unsigned char)(4 * j);
			if (m & (1u << j)) {
				compact[m][n++] = (unsigned char)(4 * j + 1);
				compact[m][n++] = (unsigned char)(4 * j + 2);
			}
		}
		compact_len[m] = (unsigned char)n;
		while (n < 16)
			compact[m][n++] = 0x80;
	}
	for (unsigned m = 0; m < 256; m++) {
		unsigned n = 0;
		if (__builtin_popcount(m) > 4)
			continue; /* never used: the output would not fit */
		for (unsigned j = 0; j < 8; j++) {
			pick_pair[m][n] = (unsigned char)(2 * j);
			pick_low[m][n++] = 0x80;
			if (m & (1u << j)) {
				pick_pair[m][n] = (unsigned char)(2 * j + 1);
				pick_low[m][n++] = 0x80;
				pick_pair[m][n] = 0x80;
				pick_low[m][n++] = (unsigned char)j;
			}
		}
		pick_len[m] = (unsigned char)n;
		for (; n < 16; n++)
			pick_pair[m][n] = pick_low[m][n] = 0x80;
	}
	/* High nibbles 2-7 hold every plain byte: one bit each. */
	for (unsigned h = 2; h < 8; h++) {
		plain_by_high[h] = (unsigned char)(1u << (h - 2));
		for (unsigned l = 0; l < 16; l++)
			if (is_plain((unsigned char)(h << 4 | l)))
				plain_by_low[l] |= plain_by_high[h];
	}
}

/* Stores the output of 8 bytes, m of which need encoding (at most 4), from
 * their (first, high digit) pairs and low digits (in lo's first 8 bytes) at o;
 * returns the end. */
__attribute__((target("sse4.1"), always_inline)) static inline char *put_half(char *o, __m128i pairs, __m128i lo,
									    unsigned m)
{
	__m128i from_pairs = _mm_shuffle_epi8(pairs, _mm_loadu_si128((const __m128i *)(const void *)pick_pair[m]));
	__m128i from_lo = _mm_shuffle_epi8(lo, _mm_loadu_si128((const __m128i *)(const void *)pick_low[m]));
	_mm_storeu_si128((__m128i *)(void *)o, _mm_or_si128(from_pairs, from_lo));
	return o + pick_len[m];
}

/* Stores the 1 or 3 bytes kept of each of group g's four bytes (m: which
 * need encoding) at o; returns the end. */
__attribute__((target("sse4.1"), always_inline)) static inline char *put_group(char *o, __m128i g, unsigned m)
{
	__m128i kept = _mm_shuffle_epi8(g, _mm_loadu_si128((const __m128i *)(const void *)compact[m]));
	_mm_storeu_si128((__m128i *)(void *)o, kept);
	return o + compact_len[m];
}

/* Encodes the first r (1 to 16) bytes of c; the rest are ignored. With joined,
 * a NUL byte is a separator: it becomes "," and is counted in *seps. Whether
 * a block has bytes to encode is not a branch (about a third of real cells do,
 * in no pattern): bytes past r count as plain, so their one-byte outputs come
 * last in each half or group and are cut off at the end, and a half or group
 * wholly past r is stored past the end, inside the slack (at most 27 bytes
 * past the end of the output), where the next store overwrites it. */
__attribute__((target("sse4.1,popcnt"), always_inline)) static inline char *encode_block(__m128i c, unsigned r,
											 char *out, bool joined,
											 unsigned *seps)
{
	__m128i nib = _mm_set1_epi8(0x0f);
	__m128i low = _mm_and_si128(c, nib), high = _mm_and_si128(_mm_srli_epi16(c, 4), nib);
	const __m128i plain_lo = _mm_loadu_si128((const __m128i *)(const void *)plain_by_low);
	const __m128i plain_hi = _mm_loadu_si128((const __m128i *)(const void *)plain_by_high);
	__m128i classes = _mm_and_si128(_mm_shuffle_epi8(plain_lo, low), _mm_shuffle_epi8(plain_hi, high));
	__m128i special_v = _mm_cmpeq_epi8(classes, _mm_setzero_si128());
	unsigned keep = (1u << r) - 1;
	if (joined) {
		__m128i sep = _mm_cmpeq_epi8(c, _mm_setzero_si128());
		special_v = _mm_andnot_si128(sep, special_v);
		c = _mm_blendv_epi8(c, _mm_set1_epi8(','), sep);
		*seps += (unsigned)__builtin_popcount((unsigned)_mm_movemask_epi8(sep) & keep);
	}
	unsigned special = (unsigned)_mm_movemask_epi8(special_v) & keep;
	const __m128i hex = _mm_setr_epi8('0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'A', 'B', 'C', 'D', 'E', 'F');
	__m128i hi = _mm_shuffle_epi8(hex, high);
	__m128i lo = _mm_shuffle_epi8(hex, low);
	__m128i first = _mm_blendv_epi8(c, _mm_set1_epi8('%'), special_v);
	__m128i pairs0 = _mm_unpacklo_epi8(first, hi), pairs1 = _mm_unpackhi_epi8(first, hi);
	unsigned h0 = special & 0xff, h1 = special >> 8;
	char *o = out;
	if (__builtin_popcount(h0) <= 4 && __builtin_popcount(h1) <= 4) {
		/* Each half's output fits 16 bytes: one store per 8 bytes. */
		o = put_half(o, pairs0, lo, h0);
		o = put_half(o, pairs1, _mm_srli_si128(lo, 8), h1);
		return o - (16 - r);
	}
	__m128i b = _mm_unpacklo_epi8(lo, lo);
	__m128i g0 = _mm_unpacklo_epi16(pairs0, b), g1 = _mm_unpackhi_epi16(pairs0, b);
	b = _mm_unpackhi_epi8(lo, lo);
	__m128i g2 = _mm_unpacklo_epi16(pairs1, b), g3 = _mm_unpackhi_epi16(pairs1, b);
	o = put_group(o, g0, special & 15);
	o = put_group(o, g1, (special >> 4) & 15);
	o = put_group(o, g2, (special >> 8) & 15);
	o = put_group(o, g3, special >> 12);
	return o - (16 - r);
}

/* One cell of len bytes, readable only up to its end: the last partial block
 * goes through a copy. (Header names; rows use the joined form.) */
__attribute__((target("sse4.1,popcnt"))) static size_t encode_simd(const char *src, size_t len, char *dst)
{
	char *out = dst;
	size_t i = 0;
	for (; len - i >= 16; i += 16)
		out = encode_block(_mm_loadu_si128((const __m128i *)(const void *)(src + i)), 16, out, false, NULL);
	if (i < len) {
		char tail[16] = { 0 };
		memcpy(tail, src + i, len - i);
		out = encode_block(_mm_loadu_si128((const __m128i *)(const void *)tail), (unsigned)(len - i), out, false,
				   NULL);
	}
	return (size_t)(out - dst);
}

/* A whole row, readable 16 bytes past its end, in one loop. */
__attribute__((target("sse4.1,popcnt"))) static size_t encode_joined_simd(const char *src, size_t len, char *dst,
									   size_t *separators)
{
	char *out = dst;
	unsigned seps = 0;
	for (size_t i = 0; i < len; i += 16) {
		unsigned r = len - i < 16 ? (unsigned)(len - i) : 16;
		out = encode_block(_mm_loadu_si128((const __m128i *)(const void *)(src + i)), r, out, true, &seps);
	}
	*separators = seps;
	return (size_t)(out - dst);
}
#endif

static bool use_simd;

static void setup(void)
{
	build_table();
#if defined(__x86_64__) || defined(__i386__)
	build_compact();
	const char *force = getenv("TPSYNC_PCTENC"); /* "scalar": for the tests */
	use_simd = __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("popcnt") &&
		    !(force && strcmp(force, "scalar") == 0);
#endif
	ready = true;
}

size_t pctenc_encode_joined(const char *src, size_t len, char *dst, size_t *separators)
{
	ensure_setup();
#if defined(__x86_64__) || defined(__i386__)
	if (use_simd)
		return encode_joined_simd(src, len, dst, separators);
#endif
	char *out = dst;
	size_t seps = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)src[i];
		if (c == 0) {
			*out++ = ',';
			seps++;
		} else {
			memcpy(out, table[c].text, 3);
			out += table[c].len;
		}
	}
	*separators = seps;
	return (size_t)(out - dst);
}

const char *pctenc_impl(void)
{
	ensure_setup();
	return use_simd ? "sse4.1" : "scalar";
}

size_t pctenc_encode(const char *src, size_t len, char *dst)
{
	ensure_setup();
#if defined(__x86_64__) || defined(__i386__)
	if (use_simd)
		return encode_simd(src, len, dst);
#endif
	return encode_scalar(src, len, dst);
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
