/* SPDX-License-Identifier: MIT */
/* UTF-8 validation: Target takes every name and value as UTF-8. */
#ifndef TPSYNC_UTF8_H
#define TPSYNC_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The check from the first non-ASCII byte on (utf8.c). */
bool utf8_valid_from(const unsigned char *s, const unsigned char *end);

/* True if the len bytes are well-formed UTF-8 (no overlongs, no surrogates,
 * nothing above U+10FFFF). Inline, since every CSV field and database value
 * is checked: an ASCII value (most of them) is checked eight bytes at a time
 * without a call. */
static inline bool utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str, *end = s + len;
	while (end - s >= 8) {
		uint64_t w;
		memcpy(&w, s, 8);
		if (w & 0x8080808080808080ULL)
			return utf8_valid_from(s, end);
		s += 8;
	}
	for (; s < end; s++)
		if (*s >= 0x80)
			return utf8_valid_from(s, end);
	return true;
}

#endif
