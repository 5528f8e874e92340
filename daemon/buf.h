/* SPDX-License-Identifier: MIT */
/* A growable byte buffer, reused across rows so the hot paths do not allocate. */
#ifndef TPSYNC_BUF_H
#define TPSYNC_BUF_H

#include <stddef.h>
#include <string.h>

struct buf {
	char *data;
	size_t len;
	size_t cap;
};

void buf_init(struct buf *b);
void buf_finish(struct buf *b);
/* Makes room for extra more bytes; returns 0 or -ENOMEM (the buffer is unchanged). */
int buf_reserve(struct buf *b, size_t extra);
/* Appends len bytes; returns 0 or -ENOMEM. Inline when there is room: it is
 * called for every field of every row. */
int buf_append_slow(struct buf *b, const void *data, size_t len);
static inline int buf_append(struct buf *b, const void *data, size_t len)
{
	if (len <= b->cap - b->len) {
		if (len)
			memcpy(b->data + b->len, data, len);
		b->len += len;
		return 0;
	}
	return buf_append_slow(b, data, len);
}
static inline int buf_putc(struct buf *b, char c)
{
	if (b->len < b->cap) {
		b->data[b->len++] = c;
		return 0;
	}
	return buf_append_slow(b, &c, 1);
}
/* Keeps a NUL after the data without counting it in len; returns 0 or -ENOMEM. */
int buf_terminate(struct buf *b);
static inline void buf_reset(struct buf *b) { b->len = 0; }

#endif
