/* SPDX-License-Identifier: MIT */
/* UTF-8 validation: Target takes every name and value as UTF-8. */
#ifndef TPSYNC_UTF8_H
#define TPSYNC_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* True if the len bytes are well-formed UTF-8 (no overlongs, no surrogates,
 * nothing above U+10FFFF). ASCII runs are checked eight bytes at a time. */
bool utf8_valid(const char *s, size_t len);

#endif
