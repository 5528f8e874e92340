/* SPDX-License-Identifier: MIT */
/* libFuzzer harness: percent-encoding round trip, and that an encoded cell never
 * contains a byte Target reads as structure. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pctenc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t n = pctenc_encoded_len((const char *)data, size);
	char *enc = malloc(3 * size + PCTENC_SLACK), *dec = malloc(3 * size + 1);
	if (!enc || !dec)
		abort();
	assert(pctenc_encode((const char *)data, size, enc) == n);
	for (size_t i = 0; i < n; i++)
		assert(enc[i] != ',' && enc[i] != '\n' && enc[i] != '&' && enc[i] != '+' && enc[i] != '=' && enc[i] != '\r');
	long m = pctenc_decode(enc, n, dec);
	assert(m == (long)size && memcmp(dec, data, size) == 0);
	/* Decoding arbitrary input either fails or stays within bounds. */
	pctenc_decode((const char *)data, size, dec);
	free(enc);
	free(dec);
	return 0;
}
