/* SPDX-License-Identifier: MIT */
/* A growable byte buffer, reused across rows so the hot paths do not allocate. */
#ifndef TPSYNC_BUF_H
#define TPSYNC_BUF_H

#include <stddef.h>

struct buf {
	char *data;
	size_t len;
	size_t cap;
};

void buf_init(struct buf *b);
void buf_finish(struct buf *b);
/* Makes room for extra more bytes; returns 0 or -ENOMEM (the buffer is unchanged). */
int buf_reserve(struct buf *b, size_t extra);
/* Appends len bytes; returns 0 or -ENOMEM. */
int buf_append(struct buf *b, const void *data, size_t len);
int buf_putc(struct buf *b, char c);
/* Keeps a NUL after the data without counting it in len; returns 0 or -ENOMEM. */
int buf_terminate(struct buf *b);
static inline void buf_reset(struct buf *b) { b->len = 0; }

#endif
