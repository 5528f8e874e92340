/* SPDX-License-Identifier: MIT */
/* The batch body encoder. A row whose blob holds exactly the header's
 * attributes is its profile id, a NUL and the blob's values, encoded in one
 * pass; other rows are put together from runs of values in consecutive
 * columns. Output is written in chunks of BODY_WRITER_CHUNK. */
#include "body_writer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attrset.h"
#include "pctenc.h"

/* Ascending attribute ids: the order of a body's columns. */
static int cmp_id(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* Appends the encoding of len bytes to line. */
static int put_encoded(struct buf *line, const char *s, size_t len)
{
	if (buf_reserve(line, len * 3 + PCTENC_SLACK) < 0)
		return -ENOMEM;
	line->len += pctenc_encode(s, len, line->data + line->len);
	return 0;
}

int body_writer_init(struct body_writer *w, const uint32_t *ids, size_t n)
{
	memset(w, 0, sizeof(*w));
	w->fd = -1;
	buf_init(&w->out);
	uint32_t max = 0;
	for (size_t i = 0; i < n; i++)
		max = ids[i] > max ? ids[i] : max;
	w->n_cols = n;
	w->n_ids = max + 1;
	w->ids = malloc((n ? n : 1) * sizeof(*w->ids));
	w->col_of = calloc(w->n_ids, sizeof(*w->col_of));
	buf_init(&w->row);
	buf_init(&w->prefix);
	if (!w->ids || !w->col_of)
		return -ENOMEM;
	memcpy(w->ids, ids, n * sizeof(*ids));
	qsort(w->ids, n, sizeof(*w->ids), cmp_id);
	for (size_t i = 0; i < n; i++)
		w->col_of[w->ids[i]] = (uint32_t)i + 1;
	return attrset_encode_ids(w->ids, n, &w->prefix);
}

/* Writes k NUL separators at o (16-byte stores: o needs 15 bytes of slack). */
static inline char *put_separators(char *o, uint32_t k)
{
	static const char zeros[16];
	for (;;) {
		memcpy(o, zeros, 16);
		if (k <= 16)
			return o + k;
		o += 16;
		k -= 16;
	}
}

/* Copies len bytes from src, which is readable only up to src + len, with
 * fixed-size moves (dst has 16 bytes of slack); a call to memcpy with a
 * variable length costs more than the short copy itself. */
static inline void copy_exact(char *dst, const char *src, size_t len)
{
	if (len >= 16) {
		for (size_t i = 0; i + 16 < len; i += 16)
			memcpy(dst + i, src + i, 16);
		memcpy(dst + len - 16, src + len - 16, 16);
	} else if (len >= 8) {
		memcpy(dst, src, 8);
		memcpy(dst + len - 8, src + len - 8, 8);
	} else {
		memcpy(dst, src, len);
	}
}

/* Makes room for n runs in w->runs and n + 4 value ends in w->ends (see
 * attrset_value_ends). Returns 0 or -ENOMEM. */
static int scratch_reserve(struct body_writer *w, size_t n)
{
	n += 4;
	if (n <= w->scratch_cap)
		return 0;
	size_t cap = w->scratch_cap ? w->scratch_cap : 64;
	while (cap < n)
		cap *= 2;
	struct body_run *runs = realloc(w->runs, cap * sizeof(*runs));
	if (!runs)
		return -ENOMEM;
	w->runs = runs;
	uint32_t *ends = realloc(w->ends, cap * sizeof(*ends));
	if (!ends)
		return -ENOMEM;
	w->ends = ends;
	w->scratch_cap = cap;
	return 0;
}

/* Writes the cells of a blob that does not hold exactly the header's
 * attributes at *o and moves *o past them. Its values are still joined by
 * NULs, so each run of values in consecutive columns (a profile without one
 * attribute has two) is copied whole, after as many separators as columns it
 * moves on; values outside the header are left out. The values' ends come
 * from one pass over the run (attrset_value_ends). Returns 0, -EINVAL for a
 * corrupt blob, or -ENOMEM. */
static int put_cells(struct body_writer *w, char **o, const void *blob, size_t blob_len)
{
	struct attrset_iter it;
	if (attrset_iter_init(&it, blob, blob_len) < 0)
		return -EINVAL;
	if (scratch_reserve(w, (size_t)(it.ids_end - it.id)) < 0) /* an id is a byte at least */
		return -ENOMEM;
	/* In locals: the stores through out could alias *w, so the compiler
	 * would reload these for every value. */
	const uint32_t *col_of = w->col_of, n_ids = w->n_ids;
	struct body_run *runs = w->runs;
	uint32_t *ends = w->ends;
	size_t n = 0, n_runs = 0;
	uint32_t col = 0; /* the last value's column */
	for (const unsigned char *p = it.id; p < it.ids_end; n++) {
		uint32_t id;
		if (!(p = attrset_get_varint(p, it.ids_end, &id)))
			return -EINVAL;
		uint32_t c = id < n_ids ? col_of[id] : 0;
		if (!c)
			continue;
		if (c <= col)
			return -EINVAL;
		if (n_runs == 0 || c != col + 1 || runs[n_runs - 1].last + 1 != n)
			runs[n_runs++] = (struct body_run){ .first = (uint32_t)n, .col = c };
		runs[n_runs - 1].last = (uint32_t)n;
		col = c;
	}
	size_t values = it.val < it.end ? attrset_value_ends(it.val, it.end, ends, n) : 0;
	if (values != n || (n > 0 && ends[n - 1] + 1 != (size_t)(it.end - it.val)) || (n == 0 && it.val != it.end))
		return -EINVAL; /* values missing, cut, or after the last one */
	char *out = *o;
	col = 0; /* columns written so far */
	for (size_t r = 0; r < n_runs; r++) {
		const struct body_run *run = &runs[r];
		uint32_t start = run->first ? ends[run->first - 1] + 1 : 0, len = ends[run->last] - start;
		out = put_separators(out, run->col - col);
		copy_exact(out, (const char *)it.val + start, len);
		out += len;
		col = run->col + (run->last - run->first);
	}
	if (col < w->n_cols)
		out = put_separators(out, (uint32_t)w->n_cols - col);
	*o = out;
	return 0;
}

int body_writer_row(struct body_writer *w, const char *profile, size_t profile_len, const void *blob, size_t blob_len)
{
	/* The row's cells, joined by NULs (none is in a value), then encoded in
	 * one pass: 16-byte copies and separator stores may run past the row
	 * into the slack, which the next cell overwrites. */
	if (buf_reserve(&w->row, profile_len + blob_len + w->n_cols + 2 * PCTENC_SLACK) < 0)
		return -ENOMEM;
	char *o = w->row.data;
	copy_exact(o, profile, profile_len);
	o += profile_len;
	const unsigned char *b = blob;
	size_t k = w->prefix.len;
	if (blob_len > k && b[blob_len - 1] == '\0' && memcmp(b, w->prefix.data, k) == 0) {
		/* The header's attributes, no more, no fewer (full_profile rows
		 * when every profile has the same attributes, as in most exports):
		 * the blob's values are the row's cells, already joined by NULs.
		 * The last NUL ends the row instead. */
		*o++ = '\0';
		copy_exact(o, (const char *)b + k, blob_len - k - 1);
		o += blob_len - k - 1;
	} else {
		int r = put_cells(w, &o, blob, blob_len);
		if (r < 0)
			return r;
	}
	size_t len = (size_t)(o - w->row.data), seps;
	if (buf_reserve(&w->out, 3 * len + 1 + PCTENC_SLACK) < 0)
		return -ENOMEM;
	char *e = w->out.data + w->out.len;
	e += pctenc_encode_joined(w->row.data, len, e, &seps);
	if (seps != w->n_cols)
		return -EINVAL; /* a NUL inside a value, or a value missing: the blob is corrupt */
	*e++ = '\n';
	w->out.len = (size_t)(e - w->out.data);
	return 0;
}

int body_writer_open(struct body_writer *w, int fd, int64_t size)
{
	w->fd = fd;
	if (size <= 0)
		return 0;
	off_t at = lseek(fd, 0, SEEK_CUR);
	if (at < 0)
		return errno == ESPIPE ? 0 : -errno; /* a pipe: nothing to reserve */
	if (fallocate(fd, FALLOC_FL_KEEP_SIZE, at, (off_t)size) == 0)
		return 0;
	/* File systems without fallocate are written to as they are. */
	return errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL || errno == ENODEV ? 0 : -errno;
}

int body_writer_flush(struct body_writer *w, size_t at_least)
{
	if (w->out.len < at_least || w->out.len == 0)
		return 0;
	const char *p = w->out.data;
	size_t left = w->out.len;
	while (left > 0) {
		ssize_t n = write(w->fd, p, left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		left -= (size_t)n;
	}
	w->written += (int64_t)w->out.len;
	buf_reset(&w->out);
	return 0;
}

void body_writer_finish(struct body_writer *w)
{
	free(w->ids);
	free(w->col_of);
	free(w->runs);
	free(w->ends);
	buf_finish(&w->prefix);
	buf_finish(&w->row);
	buf_finish(&w->out);
}

int body_writer_header(struct body_writer *w, const char *id_header, const struct store *st)
{
	int r = buf_append(&w->out, "batch=", 6);
	if (r == 0)
		r = buf_append(&w->out, id_header, strlen(id_header));
	for (size_t i = 0; i < w->n_cols && r == 0; i++) {
		const char *name = store_attr_name(st, w->ids[i]);
		if (!name)
			return -EINVAL;
		r = buf_putc(&w->out, ',');
		if (r == 0)
			r = put_encoded(&w->out, name, strlen(name));
	}
	if (r == 0)
		r = buf_putc(&w->out, '\n');
	return r;
}
