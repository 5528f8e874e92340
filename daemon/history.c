/* SPDX-License-Identifier: MIT */
/* The history blob: events one after another, oldest first, each
 *   varint seq, at (in seconds), file_id, line; varint length + source;
 *   varint length + position; varint n_attrs << 1 | is_bitmap, then either
 *   min(n_attrs, HISTORY_MAX_ATTRS) attribute ids, or (is_bitmap) a varint
 *   byte count and a bitmap of the ids (bit i of byte j: id 8j + i),
 *   whichever is shorter: a first load's 10 attributes take 3 bytes, not 10,
 * every varint little-endian base 128 (64 bits). A first load writes one
 * event per profile, so every byte here is a byte more per profile. */
#include "history.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

static int put(struct buf *out, uint64_t v)
{
	unsigned char b[10];
	size_t n = 0;
	do {
		b[n] = (unsigned char)(v & 0x7f);
		v >>= 7;
		if (v)
			b[n] |= 0x80;
		n++;
	} while (v);
	return buf_append(out, b, n);
}

static const unsigned char *get(const unsigned char *p, const unsigned char *end, uint64_t *v)
{
	uint64_t x = 0;
	for (int shift = 0; shift < 64 && p < end; shift += 7) {
		unsigned char c = *p++;
		x |= (uint64_t)(c & 0x7f) << shift;
		if (!(c & 0x80)) {
			*v = x;
			return p;
		}
	}
	return NULL;
}

static size_t varint_size(uint64_t v)
{
	size_t n = 1;
	while (v >>= 7)
		n++;
	return n;
}

#define MAX_BITMAP 64 /* bytes: ids below 512 */

static int put_event(struct buf *out, const struct history_event *ev)
{
	uint32_t listed = ev->n_attrs < HISTORY_MAX_ATTRS ? ev->n_attrs : HISTORY_MAX_ATTRS;
	size_t list_bytes = 0;
	uint32_t max_id = 0;
	for (uint32_t i = 0; i < listed; i++) {
		list_bytes += varint_size(ev->attrs[i]);
		if (ev->attrs[i] > max_id)
			max_id = ev->attrs[i];
	}
	size_t map_bytes = max_id / 8 + 1;
	unsigned char map[MAX_BITMAP] = { 0 };
	bool is_bitmap = listed > 0 && map_bytes <= MAX_BITMAP && map_bytes + 1 < list_bytes;
	uint32_t distinct = 0;
	for (uint32_t i = 0; is_bitmap && i < listed; i++) {
		unsigned char bit = (unsigned char)(1u << (ev->attrs[i] % 8));
		distinct += !(map[ev->attrs[i] / 8] & bit);
		map[ev->attrs[i] / 8] |= bit;
	}
	is_bitmap = is_bitmap && distinct == listed; /* a list with repeats stays a list */
	int r = put(out, (uint64_t)ev->seq);
	r = r ? r : put(out, (uint64_t)(ev->at / 1000));
	r = r ? r : put(out, (uint64_t)ev->file_id);
	r = r ? r : put(out, (uint64_t)ev->line);
	r = r ? r : put(out, ev->source_len);
	r = r ? r : buf_append(out, ev->source, ev->source_len);
	r = r ? r : put(out, ev->position_len);
	r = r ? r : buf_append(out, ev->position, ev->position_len);
	r = r ? r : put(out, (uint64_t)ev->n_attrs << 1 | is_bitmap);
	if (r == 0 && is_bitmap) {
		r = put(out, map_bytes);
		r = r ? r : buf_append(out, map, map_bytes);
	}
	for (uint32_t i = 0; r == 0 && !is_bitmap && i < listed; i++)
		r = put(out, ev->attrs[i]);
	return r;
}

int history_next(const unsigned char **p, const unsigned char *end, struct history_event *ev)
{
	const unsigned char *q = *p;
	if (q >= end)
		return 0;
	uint64_t v[9];
	for (int i = 0; i < 4; i++)
		if (!(q = get(q, end, &v[i])))
			return -EINVAL;
	ev->seq = (int64_t)v[0];
	ev->at = (int64_t)v[1] * 1000;
	ev->file_id = (int64_t)v[2];
	ev->line = (int64_t)v[3];
	if (!(q = get(q, end, &v[4])) || v[4] > (uint64_t)(end - q))
		return -EINVAL;
	ev->source = (const char *)q;
	ev->source_len = (size_t)v[4];
	q += v[4];
	if (!(q = get(q, end, &v[5])) || v[5] > (uint64_t)(end - q))
		return -EINVAL;
	ev->position = (const char *)q;
	ev->position_len = (size_t)v[5];
	q += v[5];
	if (!(q = get(q, end, &v[6])) || (v[6] >> 1) > UINT32_MAX)
		return -EINVAL;
	ev->n_attrs = (uint32_t)(v[6] >> 1);
	uint32_t listed = ev->n_attrs < HISTORY_MAX_ATTRS ? ev->n_attrs : HISTORY_MAX_ATTRS;
	if (v[6] & 1) {
		if (!(q = get(q, end, &v[7])) || v[7] > MAX_BITMAP || v[7] > (uint64_t)(end - q))
			return -EINVAL;
		uint32_t n = 0;
		for (uint32_t id = 0; id < v[7] * 8 && n < listed; id++)
			if (q[id / 8] & (1u << (id % 8)))
				ev->attrs[n++] = id;
		if (n != listed)
			return -EINVAL;
		q += v[7];
	} else {
		for (uint32_t i = 0; i < listed; i++) {
			if (!(q = get(q, end, &v[7])) || v[7] > UINT32_MAX)
				return -EINVAL;
			ev->attrs[i] = (uint32_t)v[7];
		}
	}
	*p = q;
	return 1;
}

int history_append(const void *old, size_t len, const struct history_event *ev, size_t max_events, int64_t not_before,
		   struct buf *out)
{
	buf_reset(out);
	if (max_events == 0)
		return 0;
	const unsigned char *p = old, *end = p ? p + len : NULL;
	/* Count what is kept: the newest max_events - 1 no older than not_before. */
	size_t n = 0;
	struct history_event e;
	int r;
	for (const unsigned char *q = p; (r = history_next(&q, end, &e)) > 0;)
		n += e.at >= not_before;
	if (r < 0) {
		p = end = NULL; /* corrupt: start again */
		n = 0;
	}
	size_t skip = max_events && n >= max_events ? n - max_events + 1 : 0;
	for (const unsigned char *q = p, *start = q; (r = history_next(&q, end, &e)) > 0; start = q) {
		if (e.at < not_before)
			continue;
		if (skip) {
			skip--;
			continue;
		}
		if (buf_append(out, start, (size_t)(q - start)) < 0)
			return -ENOMEM;
	}
	return put_event(out, ev) < 0 ? -ENOMEM : 0;
}
