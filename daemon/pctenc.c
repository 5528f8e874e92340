/* SPDX-License-Identifier: MIT */
/* Percent-encoding as Target's bulk API needs it: every cell is encoded so that the
 * batch's own commas and newlines are the only structure Target sees. */
#include "pctenc.h"

#include <errno.h>
#include <stdbool.h>

static bool is_plain(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~';
}

size_t pctenc_encoded_len(const char *src, size_t len)
{
	size_t n = len;
	for (size_t i = 0; i < len; i++)
		if (!is_plain((unsigned char)src[i]))
			n += 2;
	return n;
}

size_t pctenc_encode(const char *src, size_t len, char *dst)
{
	static const char hex[] = "0123456789ABCDEF";
	char *out = dst;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)src[i];
		if (is_plain(c)) {
			*out++ = (char)c;
		} else {
			*out++ = '%';
			*out++ = hex[c >> 4];
			*out++ = hex[c & 15];
		}
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
