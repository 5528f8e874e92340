/* SPDX-License-Identifier: MIT */
/* A profile's attributes as a sorted set of (attribute id, value), and its compact
 * blob form in the state database (format 2, schema version 3 on):
 *   varint k, the byte length of the id list;
 *   the id list: the ids as varints, ascending;
 *   the values in the same order, each followed by a NUL byte.
 * An empty set is an empty blob. No value holds a NUL (every source refuses
 * them), so the values are one NUL-joined run: a batch row whose attributes
 * are its header's is the profile id, a NUL and that run, encoded in one pass
 * (batch.c). Format 1 (varint id, varint length, bytes, repeated) is read only
 * to migrate older state databases. */
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
 * outlive the set's use. Returns 0, -EINVAL for a corrupt blob (ids out of
 * order included), or -ENOMEM. */
int attrset_decode(struct attrset *s, const void *blob, size_t len);
/* The same for a format 1 blob (the schema migration to version 3). */
int attrset_decode_v1(struct attrset *s, const void *blob, size_t len);
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

/* A blob's two parts: its id list and its values (see attrset_iter_init). */
struct attrset_iter {
	const unsigned char *id;      /* next id varint */
	const unsigned char *ids_end; /* end of the id list, start of the values */
	const unsigned char *val;     /* next value */
	const unsigned char *end;
};

/* Splits the blob into its id list and its values (both empty for the
 * empty blob). Returns 0, or -EINVAL when the id list runs past the end. */
static inline int attrset_iter_init(struct attrset_iter *it, const void *blob, size_t len)
{
	if (len == 0) { /* the empty set (blob may be NULL) */
		it->id = it->ids_end = it->val = it->end = NULL;
		return 0;
	}
	const unsigned char *p = blob, *end = p + len;
	uint32_t k;
	if (!(p = attrset_get_varint(p, end, &k)) || k > (size_t)(end - p))
		return -EINVAL;
	it->id = p;
	it->ids_end = p + k;
	it->val = p + k;
	it->end = end;
	return 0;
}

/* The offsets from vals of the NUL bytes that end the values of a value run
 * [vals, end), into ends, at most max of them; ends must have room for max + 4
 * (scratch past the last). Returns how many the run holds, or max + 1 when
 * more. One pass, 16 bytes at a time with SSE2: unlike stepping from value to
 * value, no value's end waits on the one before. */
size_t attrset_value_ends(const unsigned char *vals, const unsigned char *end, uint32_t *ends, size_t max);

/* Appends the blob form to out. Returns 0, -EILSEQ when a value holds a NUL
 * (out is then unchanged), or -ENOMEM. */
int attrset_encode(const struct attrset *s, struct buf *out);
/* The blob form of a set of ids alone, without their values: what every blob
 * with exactly these ids (ascending, unique) starts with. Returns 0 or -ENOMEM. */
int attrset_encode_ids(const uint32_t *ids, size_t n, struct buf *out);

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
