/* SPDX-License-Identifier: MIT */
/* Parsing of human durations ("500ms", "5s", "7d") and sizes ("50MB"). */
#ifndef TPSYNC_UNITS_H
#define TPSYNC_UNITS_H

#include <stdint.h>

/* Parses a duration: a non-negative integer followed by ms, s, m, h or d (a bare
 * number means seconds). Stores milliseconds in *out. Returns 0, or -EINVAL for
 * malformed text, -ERANGE on overflow. */
int units_parse_duration(const char *text, int64_t *out);

/* Parses a size: plain bytes, or a number followed by KB or MB (decimal: 1 KB is
 * 1000 bytes, as Target's "50 MB" limit is meant). Returns 0, -EINVAL or -ERANGE. */
int units_parse_size(const char *text, int64_t *out);

/* Formats milliseconds as the shortest exact duration ("90s", "1500ms"). */
void units_format_duration(int64_t ms, char *buf, unsigned size);

#endif
