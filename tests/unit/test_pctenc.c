/* SPDX-License-Identifier: MIT */
/* Percent-encoding: the pitfalls TARGET_API.md lists, and a round trip over every
 * byte value. */
#include <stdlib.h>

#include "check.h"
#include "pctenc.h"

static char *enc(const char *s)
{
	size_t n = pctenc_encoded_len(s, strlen(s));
	char *out = malloc(3 * strlen(s) + 1);
	CHECK(pctenc_encode(s, strlen(s), out) == n);
	out[n] = '\0';
	return out;
}

int main(void)
{
	char *e;
	e = enc("50% off & more");
	CHECK_STR(e, "50%25%20off%20%26%20more");
	free(e);
	e = enc("a+b=c");
	CHECK_STR(e, "a%2Bb%3Dc");
	free(e);
	e = enc("comma,inside\nnew");
	CHECK_STR(e, "comma%2Cinside%0Anew");
	free(e);
	e = enc("cust-1001_A.b~");
	CHECK_STR(e, "cust-1001_A.b~");
	free(e);
	e = enc("Zürich");
	CHECK_STR(e, "Z%C3%BCrich");
	free(e);

	/* Nothing Target treats as structure survives encoding. */
	char all[256];
	for (int i = 0; i < 256; i++)
		all[i] = (char)i;
	size_t n = pctenc_encoded_len(all, sizeof(all));
	char *out = malloc(3 * sizeof(all));
	pctenc_encode(all, sizeof(all), out);
	for (size_t i = 0; i < n; i++)
		CHECK(out[i] != ',' && out[i] != '\n' && out[i] != '&' && out[i] != '+' && out[i] != '=');
	char *back = malloc(n);
	long m = pctenc_decode(out, n, back);
	CHECK(m == 256 && memcmp(back, all, 256) == 0);
	free(out);
	free(back);

	char d[16];
	CHECK(pctenc_decode("a+b", 3, d) == 3 && memcmp(d, "a b", 3) == 0);
	CHECK(pctenc_decode("50%", 3, d) < 0);
	CHECK(pctenc_decode("%4", 2, d) < 0);
	CHECK(pctenc_decode("%zz", 3, d) < 0);
	return check_result("test_pctenc");
}
