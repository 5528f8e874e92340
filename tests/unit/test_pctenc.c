/* SPDX-License-Identifier: MIT */
/* Percent-encoding: the pitfalls TARGET_API.md lists, and a round trip over every
 * byte value. */
#include <stdbool.h>
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
	/* Whichever function runs first, the fast encoder is chosen where the CPU
	 * has it (measuring a length first once left the byte-at-a-time one on). */
	CHECK(pctenc_encoded_len("a b", 3) == 5);
	const char *force = getenv("TPSYNC_PCTENC");
#if defined(__x86_64__) || defined(__i386__)
	bool fast = __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("popcnt");
#else
	bool fast = false;
#endif
	CHECK_STR(pctenc_impl(), fast && !(force && strcmp(force, "scalar") == 0) ? "sse4.1" : "scalar");

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
		/* As a row: the cell (its NULs made 0x01), an empty cell and the cell
		 * again, joined by NULs, with the 16 readable bytes after it. */
		char joined[2 * 70 + 2 + PCTENC_SLACK], row[3 * sizeof(joined) + PCTENC_SLACK];
		size_t jn = 0, wj = 0, seps = 9;
		for (int copy = 0; copy < 2; copy++) {
			for (size_t i = 0; i < len; i++)
				joined[jn++] = src[i] ? src[i] : 1;
			if (copy == 0) {
				joined[jn++] = '\0';
				joined[jn++] = '\0';
			}
		}
		memset(joined + jn, 'x', sizeof(joined) - jn);
		/* Expected: want twice, with "%00" (only a NUL encodes to it) as "%01". */
		char want_row[2 * 210 + 2];
		for (int copy = 0; copy < 2; copy++) {
			memcpy(want_row + wj, want, w);
			for (size_t i = wj; i + 2 < wj + w; i++)
				if (memcmp(want_row + i, "%00", 3) == 0)
					want_row[i + 2] = '1';
			wj += w;
			if (copy == 0) {
				want_row[wj++] = ',';
				want_row[wj++] = ',';
			}
		}
		g = pctenc_encode_joined(joined, jn, row, &seps);
		CHECK(g == wj && memcmp(row, want_row, wj) == 0 && seps == 2);
	}

	/* A NUL inside a value shows as one separator too many. */
	char bad[5 + PCTENC_SLACK] = "a\0b\0c", bad_out[3 * sizeof(bad) + PCTENC_SLACK];
	size_t bad_seps = 0;
	CHECK(pctenc_encode_joined(bad, 5, bad_out, &bad_seps) == 5 && memcmp(bad_out, "a,b,c", 5) == 0 &&
	      bad_seps == 2);

	char d[16];
	CHECK(pctenc_decode("a+b", 3, d) == 3 && memcmp(d, "a b", 3) == 0);
	CHECK(pctenc_decode("50%", 3, d) < 0);
	CHECK(pctenc_decode("%4", 2, d) < 0);
	CHECK(pctenc_decode("%zz", 3, d) < 0);
	return check_result("test_pctenc");
}
