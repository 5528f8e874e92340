/* SPDX-License-Identifier: MIT */
/* Percent-encoding: the pitfalls TARGET_API.md lists, and a round trip over every
 * byte value. */
#include <stdlib.h>

#include "check.h"
#include "pctenc.h"

static char *enc(const char *s)
{
	size_t n = pctenc_encoded_len(s, strlen(s));
	char *out = malloc(3 * strlen(s) + PCTENC_SLACK + 1);
	CHECK(pctenc_encode(s, strlen(s), out) == n);
	out[n] = '\0';
	return out;
}

int main(void)
{
	static const char *const cases[][2] = {
		{ "50% off & more", "50%25%20off%20%26%20more" },
		{ "a+b=c", "a%2Bb%3Dc" },
		{ "comma,inside\nnew", "comma%2Cinside%0Anew" },
		{ "cust-1001_A.b~", "cust-1001_A.b~" },
		{ "Zürich", "Z%C3%BCrich" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *e = enc(cases[i][0]);
		CHECK_STR(e, cases[i][1]);
		free(e);
	}

	/* Nothing Target treats as structure survives encoding. */
	char all[256];
	for (int i = 0; i < 256; i++)
		all[i] = (char)i;
	size_t n = pctenc_encoded_len(all, sizeof(all));
	char *out = malloc(3 * sizeof(all) + PCTENC_SLACK);
	pctenc_encode(all, sizeof(all), out);
	for (size_t i = 0; i < n; i++)
		CHECK(out[i] != ',' && out[i] != '\n' && out[i] != '&' && out[i] != '+' && out[i] != '=');
	char *back = malloc(n);
	long m = pctenc_decode(out, n, back);
	CHECK(m == 256 && memcmp(back, all, 256) == 0);
	free(out);
	free(back);

	/* The 16-byte fast path agrees with a byte-at-a-time reference on every
	 * length and mix (plain runs, specials, UTF-8, high bytes at any offset),
	 * and never writes past the 3 * len worst case plus PCTENC_SLACK. */
	srand(7);
	static const char hex[] = "0123456789ABCDEF";
	for (int round = 0; round < 20000; round++) {
		size_t len = (size_t)(rand() % 70);
		char src[70], want[210], got[210 + PCTENC_SLACK + 16];
		int special_rate = 1 + rand() % 12;
		for (size_t i = 0; i < len; i++)
			src[i] = rand() % special_rate == 0 ? (char)(rand() % 256) : "abcXYZ019-._~"[rand() % 13];
		size_t w = 0;
		for (size_t i = 0; i < len; i++) {
			unsigned char c = (unsigned char)src[i];
			if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
			    c == '.' || c == '_' || c == '~') {
				want[w++] = (char)c;
			} else {
				want[w++] = '%';
				want[w++] = hex[c >> 4];
				want[w++] = hex[c & 15];
			}
		}
		memset(got, '#', sizeof(got));
		size_t g = pctenc_encode(src, len, got);
		CHECK(g == w && memcmp(got, want, w) == 0 && pctenc_encoded_len(src, len) == w);
		for (size_t i = 3 * len + PCTENC_SLACK; i < sizeof(got); i++)
			CHECK(got[i] == '#');
		/* Inside a larger readable buffer, at any offset (in-place loads), as
		 * the cells of a row: the cell after one comma, an empty one after
		 * two, and the cell again after 1 to 40 (more than one 16-byte store). */
		char around[100];
		size_t at = (size_t)rand() % (sizeof(around) - len + 1);
		for (size_t i = 0; i < sizeof(around); i++)
			around[i] = (char)rand();
		memcpy(around + at, src, len);
		uint32_t gap = 1 + (uint32_t)(rand() % 40);
		struct pctenc_span cells[3] = { { around + at, (uint32_t)len, 1 }, { around, 0, 2 },
						{ around + at, (uint32_t)len, gap } };
		char row[43 + 2 * 210 + PCTENC_SLACK + 16];
		memset(row, '#', sizeof(row));
		size_t row_len = 3 + gap + 2 * w;
		g = pctenc_encode_list(cells, 3, row, around, around + sizeof(around));
		CHECK(g == row_len && row[0] == ',' && memcmp(row + 1, want, w) == 0);
		for (size_t i = 0; i < 2 + gap; i++)
			CHECK(row[1 + w + i] == ',');
		CHECK(memcmp(row + 3 + gap + w, want, w) == 0);
		for (size_t i = 3 + gap + 6 * len + PCTENC_SLACK; i < sizeof(row); i++)
			CHECK(row[i] == '#');
	}

	char d[16];
	CHECK(pctenc_decode("a+b", 3, d) == 3 && memcmp(d, "a b", 3) == 0);
	CHECK(pctenc_decode("50%", 3, d) < 0);
	CHECK(pctenc_decode("%4", 2, d) < 0);
	CHECK(pctenc_decode("%zz", 3, d) < 0);
	return check_result("test_pctenc");
}
