/* SPDX-License-Identifier: MIT */
/* Percent-encoding of batch-file cells, and the matching decoder. */
#ifndef TPSYNC_PCTENC_H
#define TPSYNC_PCTENC_H

#include <stddef.h>
#include <stdint.h>

/* Number of bytes pctenc_encode() writes for these len bytes. */
size_t pctenc_encoded_len(const char *src, size_t len);

/* The encoder stores 16 bytes at a time, up to this many past what it uses. */
#define PCTENC_SLACK 32

/* Percent-encodes len bytes of src into dst, which must hold 3 * len +
 * PCTENC_SLACK bytes (the worst case plus the slack; pctenc_encoded_len() bytes
 * are used); does not NUL-terminate. Letters, digits and "-._~" stay as they are; every
 * other byte (including "%", "&", "+", "=", ",", newlines and UTF-8 bytes) becomes
 * %XX, which is what Target's form decoding needs. Returns the bytes written. */
size_t pctenc_encode(const char *src, size_t len, char *dst);

/* A cell of a row: len bytes at ptr (len 0: empty), written after `before`
 * commas (the separators of the columns since the previous cell). */
struct pctenc_span {
	const char *ptr;
	uint32_t len;
	uint32_t before;
};
/* Writes each of n cells, its commas first, into dst, which needs room for the
 * commas + 3 * (the cells' total length) + PCTENC_SLACK. The cells lie inside
 * [lo, hi), which may be read whole: short cells are then loaded 16 bytes at a
 * time in place instead of copied. Returns the bytes written. */
size_t pctenc_encode_list(const struct pctenc_span *cells, size_t n, char *dst, const char *lo, const char *hi);

/* Decodes form-urlencoded text ("%XX" and "+" as space) of len bytes into dst (at
 * least len bytes). Returns the decoded length, or -EINVAL on a "%" not followed by
 * two hex digits. */
long pctenc_decode(const char *src, size_t len, char *dst);

#endif
