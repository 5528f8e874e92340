/* SPDX-License-Identifier: MIT */
/* A profile's attributes as a sorted set of (attribute id, value), and its compact
 * blob form in the state database: repeated varint id, varint length, bytes. */
#ifndef TPSYNC_ATTRSET_H
#define TPSYNC_ATTRSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <string.h>

#include "buf.h"

struct attr_kv {
	uint32_t id;
	uint32_t len;
	const char *val; /* not owned: points into a blob or a CSV row */
};

struct attrset {
	struct attr_kv *kv; /* sorted by id, ids unique */
	size_t n;
	size_t cap;
};

void attrset_init(struct attrset *s);
void attrset_finish(struct attrset *s);
static inline void attrset_clear(struct attrset *s) { s->n = 0; }

/* Replaces the set's contents with the blob's; values point into blob, which must
 * outlive the set's use. Returns 0, -EINVAL for a corrupt blob, or -ENOMEM. */
int attrset_decode(struct attrset *s, const void *blob, size_t len);
/* Reads the varint at p (before end) into *out. Returns the byte after it, or
 * NULL when it runs past end or over 5 bytes. */
static inline const unsigned char *attrset_get_varint(const unsigned char *p, const unsigned char *end, uint32_t *out)
{
	uint32_t v = 0;
	for (int shift = 0; shift < 35 && p < end; shift += 7) {
		unsigned char c = *p++;
		v |= (uint32_t)(c & 0x7f) << shift;
		if (!(c & 0x80)) {
			*out = v;
			return p;
		}
	}
	return NULL;
}

/* Appends v as a varint. Returns 0 or -ENOMEM. */
int attrset_put_varint(struct buf *out, uint32_t v);

/* Steps through a blob without decoding it into a set: the entry at *pos goes to
 * *kv (its value points into the blob) and *pos moves past it. Returns 1, 0 at
 * the end, or -EINVAL for a corrupt entry. Inline: the batch encoder calls it
 * for every value of every row. */
static inline int attrset_blob_next(const unsigned char **pos, const unsigned char *end, struct attr_kv *kv)
{
	const unsigned char *p = *pos;
	if (p >= end)
		return 0;
	uint32_t id, vlen;
	if (end - p >= 2 && !((p[0] | p[1]) & 0x80)) { /* the usual: id < 128, value < 128 bytes */
		id = p[0];
		vlen = p[1];
		p += 2;
	} else {
		p = attrset_get_varint(p, end, &id);
		if (!p)
			return -EINVAL;
		p = attrset_get_varint(p, end, &vlen);
		if (!p)
			return -EINVAL;
	}
	if (vlen > (size_t)(end - p))
		return -EINVAL;
	kv->id = id;
	kv->len = vlen;
	kv->val = (const char *)p;
	*pos = p + vlen;
	return 1;
}
/* Appends the blob form to out. Returns 0 or -ENOMEM. */
int attrset_encode(const struct attrset *s, struct buf *out);

/* Inserts or replaces id's value (a view, not copied). Returns 0 or -ENOMEM. */
int attrset_put(struct attrset *s, uint32_t id, const char *val, uint32_t len);
/* Removes id if present. */
void attrset_del(struct attrset *s, uint32_t id);
/* The entry for id, or NULL. */
const struct attr_kv *attrset_get(const struct attrset *s, uint32_t id);
/* Overlays every entry of src on dst. Returns 0 or -ENOMEM. */
int attrset_overlay(struct attrset *dst, const struct attrset *src);
/* True when kv holds exactly val. */
static inline bool attr_kv_equals(const struct attr_kv *kv, const char *val, uint32_t len)
{
	return kv && kv->len == len && (len == 0 || memcmp(kv->val, val, len) == 0);
}

#endif
