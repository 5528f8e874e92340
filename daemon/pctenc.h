/* SPDX-License-Identifier: MIT */
/* Percent-encoding of batch-file cells, and the matching decoder. */
#ifndef TPSYNC_PCTENC_H
#define TPSYNC_PCTENC_H

#include <stddef.h>

/* Number of bytes pctenc_encode() writes for these len bytes. */
size_t pctenc_encoded_len(const char *src, size_t len);

/* The encoder loads and stores 16 bytes at a time: it writes up to this many
 * bytes past what it uses, and the joined form reads this far past its input. */
#define PCTENC_SLACK 32

/* Percent-encodes len bytes of src into dst, which must hold 3 * len +
 * PCTENC_SLACK bytes (the worst case plus the slack; pctenc_encoded_len() bytes
 * are used); does not NUL-terminate. Letters, digits and "-._~" stay as they are; every
 * other byte (including "%", "&", "+", "=", ",", newlines and UTF-8 bytes) becomes
 * %XX, which is what Target's form decoding needs. Returns the bytes written. */
size_t pctenc_encode(const char *src, size_t len, char *dst);

/* Percent-encodes a row held as its cells joined by NUL bytes: each NUL becomes
 * the "," between two cells (and is counted in *separators), every other byte
 * is encoded as pctenc_encode() does. src must be readable for PCTENC_SLACK
 * bytes past len (it is loaded 16 bytes at a time); dst needs 3 * len +
 * PCTENC_SLACK bytes. Returns the bytes written. Cell values never hold a NUL
 * (every source refuses them), so *separators tells a caller that a corrupt
 * value turned into an extra column. */
size_t pctenc_encode_joined(const char *src, size_t len, char *dst, size_t *separators);

/* The encoder in use: "sse4.1" or "scalar" (TPSYNC_PCTENC=scalar forces it). */
const char *pctenc_impl(void);

/* Decodes form-urlencoded text ("%XX" and "+" as space) of len bytes into dst (at
 * least len bytes). Returns the decoded length, or -EINVAL on a "%" not followed by
 * two hex digits. */
long pctenc_decode(const char *src, size_t len, char *dst);

#endif
