/* SPDX-License-Identifier: MIT */
/* Percent-encoding of batch-file cells, and the matching decoder. */
#ifndef TPSYNC_PCTENC_H
#define TPSYNC_PCTENC_H

#include <stddef.h>

/* Number of bytes pctenc_encode() writes for these len bytes. */
size_t pctenc_encoded_len(const char *src, size_t len);

/* Percent-encodes len bytes of src into dst, which must hold 3 * len bytes (the
 * worst case; pctenc_encoded_len() bytes are used); does not NUL-terminate. Letters, digits and "-._~" stay as they are; every
 * other byte (including "%", "&", "+", "=", ",", newlines and UTF-8 bytes) becomes
 * %XX, which is what Target's form decoding needs. Returns the bytes written. */
size_t pctenc_encode(const char *src, size_t len, char *dst);

/* Decodes form-urlencoded text ("%XX" and "+" as space) of len bytes into dst (at
 * least len bytes). Returns the decoded length, or -EINVAL on a "%" not followed by
 * two hex digits. */
long pctenc_decode(const char *src, size_t len, char *dst);

#endif
