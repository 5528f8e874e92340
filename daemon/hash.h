/* SPDX-License-Identifier: MIT */
/* A fast 64-bit content hash, fed in pieces of any size: the same bytes give
 * the same hash however they were split (so a file hashed in 4 MiB reads and
 * again in 64 KiB blocks compares equal). Not cryptographic: it tells a file's
 * versions apart, together with its size. */
#ifndef TPSYNC_HASH_H
#define TPSYNC_HASH_H

#include <stddef.h>
#include <stdint.h>

struct hasher {
	uint64_t h;
	unsigned char carry[8]; /* bytes not yet part of an 8-byte word */
	size_t n_carry;
	uint64_t bytes;
};

void hasher_init(struct hasher *x);
void hasher_update(struct hasher *x, const void *p, size_t len);
/* The hash of everything fed so far (x may be fed more afterwards). */
uint64_t hasher_value(const struct hasher *x);

#endif
