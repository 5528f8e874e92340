/* SPDX-License-Identifier: MIT */
/* The content hash: eight bytes at a time (a multiply and a shift each), the
 * last bytes one at a time, FNV-1a style. Bytes that do not fill a word wait
 * in carry, which keeps the result independent of how the input is split. */
#include "hash.h"

#include <string.h>

#define HASH_BASIS 1469598103934665603ULL /* FNV-1a 64 offset basis */

void hasher_init(struct hasher *x)
{
	memset(x, 0, sizeof(*x));
	x->h = HASH_BASIS;
}

static uint64_t mix_word(uint64_t h, const unsigned char *p)
{
	uint64_t w;
	memcpy(&w, p, 8);
	h = (h ^ w) * 0x9E3779B97F4A7C15ULL;
	return h ^ (h >> 31);
}

void hasher_update(struct hasher *x, const void *data, size_t len)
{
	const unsigned char *p = data;
	x->bytes += len;
	if (x->n_carry) {
		size_t take = 8 - x->n_carry < len ? 8 - x->n_carry : len;
		memcpy(x->carry + x->n_carry, p, take);
		x->n_carry += take;
		p += take;
		len -= take;
		if (x->n_carry < 8)
			return;
		x->h = mix_word(x->h, x->carry);
		x->n_carry = 0;
	}
	for (; len >= 8; p += 8, len -= 8)
		x->h = mix_word(x->h, p);
	memcpy(x->carry, p, len);
	x->n_carry = len;
}

uint64_t hasher_value(const struct hasher *x)
{
	uint64_t h = x->h;
	for (size_t i = 0; i < x->n_carry; i++)
		h = (h ^ x->carry[i]) * 1099511628211ULL;
	return h;
}
