/* SPDX-License-Identifier: MIT */
/* UTF-8 validation, on the hot path of every CSV field and database value. */
#include "utf8.h"

#include <stdint.h>
#include <string.h>

bool utf8_valid_from(const unsigned char *s, const unsigned char *end)
{
	while (s < end) {
		/* ASCII runs, eight bytes at a time. */
		while (end - s >= 8) {
			uint64_t w;
			memcpy(&w, s, 8);
			if (w & 0x8080808080808080ULL)
				break;
			s += 8;
		}
		if (s == end)
			break;
		unsigned char c = *s;
		if (c < 0x80) {
			s++;
			continue;
		}
		size_t need;
		uint32_t cp;
		if (c >= 0xC2 && c <= 0xDF) {
			need = 1;
			cp = c & 0x1F;
		} else if (c >= 0xE0 && c <= 0xEF) {
			need = 2;
			cp = c & 0x0F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			need = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if ((size_t)(end - s) <= need)
			return false;
		for (size_t i = 1; i <= need; i++) {
			if ((s[i] & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (s[i] & 0x3F);
		}
		if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
		    (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		s += need + 1;
	}
	return true;
}
