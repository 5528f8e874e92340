/* SPDX-License-Identifier: MIT */
/* Percent-encoding as Target's bulk API needs it: every cell is encoded so that the
 * batch's own commas and newlines are the only structure Target sees. */
#include "pctenc.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <stdlib.h>
#if defined(__x86_64__) || defined(__i386__)
#include <tmmintrin.h>
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
/* SSSE3, 16 bytes at a time without branching on the data: each byte becomes
 * a 4-byte group "c??" (plain) or "%HL" (not plain), and one pshufb per group
 * of four input bytes keeps 1 or 3 bytes of each, picked by a 16-entry table
 * indexed by which of the four need encoding. Every store is 16 bytes, so
 * dst needs PCTENC_SLACK bytes past the worst case. */
static unsigned char compact[16][16]; /* pshufb pattern per 4-bit "needs encoding" mask */
static unsigned char compact_len[16];   /* 4 + 2 per byte that needs encoding */
static unsigned char shift_down[17][16]; /* pshufb pattern moving bytes k..15 to 0.. */

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
	for (unsigned k = 0; k <= 16; k++)
		for (unsigned j = 0; j < 16; j++)
			shift_down[k][j] = (unsigned char)(k + j < 16 ? k + j : 0x80);
}

/* Encodes the first r (1 to 16) bytes of c; the rest are ignored. The same
 * instructions run whatever the bytes are (no branch to mispredict when cells
 * with and without special bytes alternate): bytes past r count as plain, so
 * their one-byte outputs come last in each group and are cut off at the end;
 * a group wholly past r is stored past the end, inside the slack (at most
 * 12 + 16 bytes from the block's start), where the next store overwrites it. */
__attribute__((target("ssse3"))) static inline char *encode_block(__m128i c, unsigned r, char *out)
{
	/* Plain: letters (OR 0x20 folds A-Z onto a-z and nothing else), digits, - . _ ~ */
	__m128i t = _mm_sub_epi8(_mm_or_si128(c, _mm_set1_epi8(0x20)), _mm_set1_epi8('a'));
	__m128i plain = _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(25)), t);
	__m128i d = _mm_sub_epi8(c, _mm_set1_epi8('0'));
	plain = _mm_or_si128(plain, _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d));
	plain = _mm_or_si128(plain, _mm_or_si128(_mm_cmpeq_epi8(c, _mm_set1_epi8('-')), _mm_cmpeq_epi8(c, _mm_set1_epi8('.'))));
	plain = _mm_or_si128(plain, _mm_or_si128(_mm_cmpeq_epi8(c, _mm_set1_epi8('_')), _mm_cmpeq_epi8(c, _mm_set1_epi8('~'))));
	unsigned special = ~(unsigned)_mm_movemask_epi8(plain) & ((1u << r) - 1);
	const __m128i hex = _mm_setr_epi8('0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'A', 'B', 'C', 'D', 'E', 'F');
	__m128i nib = _mm_set1_epi8(0x0f);
	__m128i hi = _mm_shuffle_epi8(hex, _mm_and_si128(_mm_srli_epi16(c, 4), nib));
	__m128i lo = _mm_shuffle_epi8(hex, _mm_and_si128(c, nib));
	__m128i first = _mm_or_si128(_mm_and_si128(plain, c), _mm_andnot_si128(plain, _mm_set1_epi8('%')));
	__m128i a = _mm_unpacklo_epi8(first, hi), b = _mm_unpacklo_epi8(lo, lo);
	__m128i g0 = _mm_unpacklo_epi16(a, b), g1 = _mm_unpackhi_epi16(a, b);
	a = _mm_unpackhi_epi8(first, hi);
	b = _mm_unpackhi_epi8(lo, lo);
	__m128i g2 = _mm_unpacklo_epi16(a, b), g3 = _mm_unpackhi_epi16(a, b);
	unsigned m0 = special & 15, m1 = (special >> 4) & 15, m2 = (special >> 8) & 15, m3 = special >> 12;
	char *o = out;
	_mm_storeu_si128((__m128i *)(void *)o, _mm_shuffle_epi8(g0, _mm_loadu_si128((const __m128i *)(const void *)compact[m0])));
	o += compact_len[m0];
	_mm_storeu_si128((__m128i *)(void *)o, _mm_shuffle_epi8(g1, _mm_loadu_si128((const __m128i *)(const void *)compact[m1])));
	o += compact_len[m1];
	_mm_storeu_si128((__m128i *)(void *)o, _mm_shuffle_epi8(g2, _mm_loadu_si128((const __m128i *)(const void *)compact[m2])));
	o += compact_len[m2];
	_mm_storeu_si128((__m128i *)(void *)o, _mm_shuffle_epi8(g3, _mm_loadu_si128((const __m128i *)(const void *)compact[m3])));
	o += compact_len[m3];
	return o - (16 - r);
}

/* The last r (1 to 16) bytes at src: loaded in place when 16 readable bytes
 * start there or end at src + r (then moved down), else through a copy. */
__attribute__((target("ssse3"))) static inline __m128i load_tail(const char *src, unsigned r, const char *lo,
								  const char *hi)
{
	if (hi - src >= 16)
		return _mm_loadu_si128((const __m128i *)(const void *)src);
	if (src + r - lo >= 16) {
		__m128i c = _mm_loadu_si128((const __m128i *)(const void *)(src + r - 16));
		return _mm_shuffle_epi8(c, _mm_loadu_si128((const __m128i *)(const void *)shift_down[16 - r]));
	}
	char tail[16] = { 0 };
	memcpy(tail, src, r);
	return _mm_loadu_si128((const __m128i *)(const void *)tail);
}

/* Encodes one cell at out; returns the new end. */
__attribute__((target("ssse3"))) static inline char *encode_cell_ssse3(const char *src, size_t len, char *out,
								       const char *lo, const char *hi)
{
	if (len == 0)
		return out;
	size_t i = 0;
	for (; len - i > 16; i += 16)
		out = encode_block(_mm_loadu_si128((const __m128i *)(const void *)(src + i)), 16, out);
	return encode_block(load_tail(src + i, (unsigned)(len - i), lo, hi), (unsigned)(len - i), out);
}

__attribute__((target("ssse3"))) static size_t encode_ssse3(const char *src, size_t len, char *dst)
{
	return (size_t)(encode_cell_ssse3(src, len, dst, src, src + len) - dst);
}

/* One loop over a row's cells, so the constants stay in registers and
 * neighbouring cells' blocks overlap in the pipeline. */
__attribute__((target("ssse3"))) static size_t encode_list_ssse3(const struct pctenc_span *cells, size_t n, char *dst,
								 const char *lo, const char *hi)
{
	const __m128i commas = _mm_set1_epi8(',');
	char *out = dst;
	for (size_t c = 0; c < n; c++) {
		for (uint32_t k = cells[c].before;; k -= 16) {
			_mm_storeu_si128((__m128i *)(void *)out, commas);
			if (k <= 16) {
				out += k;
				break;
			}
			out += 16;
		}
		out = encode_cell_ssse3(cells[c].ptr, cells[c].len, out, lo, hi);
	}
	return (size_t)(out - dst);
}
#endif

static bool use_ssse3;

static void setup(void)
{
	build_table();
#if defined(__x86_64__) || defined(__i386__)
	build_compact();
	const char *force = getenv("TPSYNC_PCTENC"); /* "scalar": for the tests */
	use_ssse3 = __builtin_cpu_supports("ssse3") && !(force && strcmp(force, "scalar") == 0);
#endif
	ready = true;
}

size_t pctenc_encode_list(const struct pctenc_span *cells, size_t n, char *dst, const char *lo, const char *hi)
{
	ensure_setup();
#if defined(__x86_64__) || defined(__i386__)
	if (use_ssse3)
		return encode_list_ssse3(cells, n, dst, lo, hi);
#endif
	char *out = dst;
	for (size_t c = 0; c < n; c++) {
		memset(out, ',', cells[c].before);
		out += cells[c].before;
		out += encode_scalar(cells[c].ptr, cells[c].len, out);
	}
	return (size_t)(out - dst);
}

size_t pctenc_encode(const char *src, size_t len, char *dst)
{
	ensure_setup();
#if defined(__x86_64__) || defined(__i386__)
	if (use_ssse3)
		return encode_ssse3(src, len, dst);
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
