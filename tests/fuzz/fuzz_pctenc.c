/* SPDX-License-Identifier: MIT */
/* libFuzzer harness: percent-encoding round trip, that an encoded cell never
 * contains a byte Target reads as structure, and that the joined (row) form
 * is the cells' encodings with a "," for each NUL. */
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

	/* The input as a row, its NULs the separators, readable PCTENC_SLACK bytes on. */
	char *row = malloc(size + PCTENC_SLACK), *joined = malloc(3 * size + PCTENC_SLACK);
	char *want = malloc(3 * size + PCTENC_SLACK);
	if (!row || !joined || !want)
		abort();
	memcpy(row, data, size);
	memset(row + size, 0, PCTENC_SLACK);
	size_t seps = 0, nuls = 0, w = 0;
	for (size_t start = 0, i = 0; i <= size; i++) {
		if (i == size || data[i] == 0) {
			w += pctenc_encode((const char *)data + start, i - start, want + w);
			if (i < size) {
				want[w++] = ',';
				nuls++;
			}
			start = i + 1;
		}
	}
	assert(pctenc_encode_joined(row, size, joined, &seps) == w && memcmp(joined, want, w) == 0 && seps == nuls);
	free(row);
	free(joined);
	free(want);
	free(enc);
	free(dec);
	return 0;
}
