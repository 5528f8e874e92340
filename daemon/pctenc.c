/* SPDX-License-Identifier: MIT */
/* Percent-encoding as Target's bulk API needs it: every cell is encoded so that the
 * batch's own commas and newlines are the only structure Target sees. */
#include "pctenc.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

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

size_t pctenc_encode(const char *src, size_t len, char *dst)
{
	if (!table_ready)
		build_table();
	char *out = dst;
	for (size_t i = 0; i < len; i++) {
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
