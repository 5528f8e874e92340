/* SPDX-License-Identifier: MIT */
/* Batch files. The header is the union of the attributes the rows carry; a
 * profile without one of them has an empty cell, which Target reads as "no
 * change". Sizes are computed exactly as they will be encoded, so a batch never
 * crosses max_bytes. */
#include "batch.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attrset.h"
#include "pctenc.h"

static const char *id_header(const struct config *cfg)
{
	return cfg->target.id_type == ID_PC ? "pcId" : "thirdPartyId";
}

/* Header columns so far: attribute ids in order of first use. */
struct header {
	uint32_t *ids;
	size_t n, cap;
	unsigned char *seen; /* by id */
	size_t seen_cap;
	int64_t encoded; /* bytes of the encoded names plus their commas */
};

/* Ascending attribute ids: the order of a body's columns. */
static int cmp_id(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static int header_add(struct header *h, const struct store *st, uint32_t id)
{
	if (id >= h->seen_cap) {
		size_t cap = h->seen_cap ? h->seen_cap : 64;
		while (cap <= id)
			cap *= 2;
		unsigned char *seen = realloc(h->seen, cap);
		if (!seen)
			return -ENOMEM;
		memset(seen + h->seen_cap, 0, cap - h->seen_cap);
		h->seen = seen;
		h->seen_cap = cap;
	}
	if (h->seen[id])
		return 0;
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 16;
		uint32_t *ids = realloc(h->ids, cap * sizeof(*ids));
		if (!ids)
			return -ENOMEM;
		h->ids = ids;
		h->cap = cap;
	}
	const char *name = store_attr_name(st, id);
	h->encoded += 1 + (int64_t)pctenc_encoded_len(name, strlen(name));
	h->ids[h->n++] = id;
	h->seen[id] = 1;
	return 0;
}

static void header_finish(struct header *h)
{
	free(h->ids);
	free(h->seen);
}

/* Encoded bytes of a row's content (id and values, without separators). */
static int64_t row_content(const char *profile, size_t len, const struct attrset *row)
{
	int64_t n = (int64_t)pctenc_encoded_len(profile, len);
	for (size_t i = 0; i < row->n; i++)
		n += (int64_t)pctenc_encoded_len(row->kv[i].val, row->kv[i].len);
	return n;
}

static int64_t body_size(const struct config *cfg, const struct header *h, int64_t rows, int64_t content)
{
	/* "batch=" + header line + each row: content, one comma per attribute, '\n'. */
	return 6 + (int64_t)strlen(id_header(cfg)) + h->encoded + 1 + content + rows * ((int64_t)h->n + 1);
}

static int dead_letter_profile(struct store *st, const char *profile, const struct attrset *changed,
			       const char *reason)
{
	sqlite3_stmt *s;
	st->has_dead_letters = true;
	for (size_t i = 0; i < changed->n; i++) {
		s = store_stmt(st, "INSERT INTO dead_letters (profile, attr, value, reason, created_at)"
				   " VALUES (?, ?, ?, ?, ?)");
		if (!s)
			return -EIO;
		sqlite3_bind_text(s, 1, profile, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, store_attr_name(st, changed->kv[i].id), -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, changed->kv[i].val, (int)changed->kv[i].len, SQLITE_STATIC);
		sqlite3_bind_text(s, 4, reason, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 5, now_ms());
		int rc = sqlite3_step(s);
		sqlite3_reset(s);
		if (rc != SQLITE_DONE)
			return -EIO;
	}
	s = store_stmt(st, "UPDATE profiles SET pending = NULL, pending_seq = NULL, pending_since = NULL WHERE id = ?");
	if (!s)
		return -EIO;
	sqlite3_bind_text(s, 1, profile, -1, SQLITE_STATIC);
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

int64_t batch_build(struct store *st, const struct config *cfg, int64_t max_rows)
{
	struct attrset accepted, pending, row;
	struct header h = { 0 };
	struct buf attrs_blob, changed_blob;
	int64_t id = 0, rows = 0, content = 0;
	int r = 0;

	attrset_init(&accepted);
	attrset_init(&pending);
	attrset_init(&row);
	buf_init(&attrs_blob);
	buf_init(&changed_blob);
	if (max_rows > cfg->batch.max_rows)
		max_rows = cfg->batch.max_rows;
	if (store_begin(st) < 0) {
		r = -EIO;
		goto out;
	}
	sqlite3_stmt *s = store_stmt(st, "INSERT INTO batches (state, created_at) VALUES ('ready', ?)");
	if (!s)
		goto db_error;
	sqlite3_bind_int64(s, 1, now_ms());
	if (sqlite3_step(s) != SQLITE_DONE)
		goto db_error;
	sqlite3_reset(s);
	id = sqlite3_last_insert_rowid(st->db);

	sqlite3_stmt *sel = store_stmt(st, "SELECT id, accepted, pending FROM profiles"
					   " WHERE pending IS NOT NULL AND inflight_batch IS NULL ORDER BY pending_seq");
	if (!sel)
		goto db_error;
	int rc;
	while (rows < max_rows && (rc = sqlite3_step(sel)) == SQLITE_ROW) {
		const char *profile = (const char *)sqlite3_column_text(sel, 0);
		size_t plen = (size_t)sqlite3_column_bytes(sel, 0);
		attrset_clear(&accepted);
		if (sqlite3_column_type(sel, 1) != SQLITE_NULL &&
		    attrset_decode(&accepted, sqlite3_column_blob(sel, 1), (size_t)sqlite3_column_bytes(sel, 1)) < 0)
			goto corrupt;
		if (attrset_decode(&pending, sqlite3_column_blob(sel, 2), (size_t)sqlite3_column_bytes(sel, 2)) < 0)
			goto corrupt;
		attrset_clear(&row);
		if (cfg->batch.rows == ROWS_FULL_PROFILE && attrset_overlay(&row, &accepted) < 0)
			goto nomem;
		if (attrset_overlay(&row, &pending) < 0)
			goto nomem;
		int64_t trial_encoded = h.encoded;
		size_t trial_n = h.n;
		for (size_t i = 0; i < row.n; i++)
			if (header_add(&h, st, row.kv[i].id) < 0)
				goto nomem;
		int64_t c = row_content(profile, plen, &row);
		if (body_size(cfg, &h, rows + 1, content + c) > cfg->batch.max_bytes) {
			/* Undo this row's header columns; it waits for the next batch. */
			for (size_t i = trial_n; i < h.n; i++)
				h.seen[h.ids[i]] = 0;
			h.n = trial_n;
			h.encoded = trial_encoded;
			if (rows == 0) {
				char *copy = strdup(profile);
				if (!copy)
					goto nomem;
				sqlite3_reset(sel);
				r = dead_letter_profile(st, copy, &pending,
							"profile row alone exceeds batch.max_bytes");
				free(copy);
				if (r < 0)
					goto db_error;
				sel = store_stmt(st, "SELECT id, accepted, pending FROM profiles"
						     " WHERE pending IS NOT NULL AND inflight_batch IS NULL ORDER BY pending_seq");
				if (!sel)
					goto db_error;
				continue;
			}
			break;
		}
		buf_reset(&attrs_blob);
		buf_reset(&changed_blob);
		if (attrset_encode(&row, &attrs_blob) < 0 || attrset_encode(&pending, &changed_blob) < 0)
			goto nomem;
		s = store_stmt(st, "INSERT INTO batch_rows (batch_id, profile, attrs, changed) VALUES (?, ?, ?, ?)");
		if (!s)
			goto db_error;
		sqlite3_bind_int64(s, 1, id);
		sqlite3_bind_text(s, 2, profile, (int)plen, SQLITE_STATIC);
		sqlite3_bind_blob(s, 3, attrs_blob.data, (int)attrs_blob.len, SQLITE_STATIC);
		sqlite3_bind_blob(s, 4, changed_blob.data, (int)changed_blob.len, SQLITE_STATIC);
		if (sqlite3_step(s) != SQLITE_DONE)
			goto db_error;
		sqlite3_reset(s);
		rows++;
		content += c;
	}
	sqlite3_reset(sel);
	if (rows == 0) {
		store_rollback(st);
		id = 0;
		goto out;
	}
	s = store_stmt(st, "UPDATE profiles SET inflight = (SELECT attrs FROM batch_rows b WHERE b.batch_id = ?1"
			   " AND b.profile = profiles.id), inflight_batch = ?1, pending = NULL, pending_seq = NULL,"
			   " pending_since = NULL WHERE id IN (SELECT profile FROM batch_rows WHERE batch_id = ?1)");
	if (!s)
		goto db_error;
	sqlite3_bind_int64(s, 1, id);
	if (sqlite3_step(s) != SQLITE_DONE)
		goto db_error;
	sqlite3_reset(s);
	/* The header: its attribute ids as varints, ascending, which is the order of
	 * the body's columns (body_writer_init sorts again, for batches stored
	 * before the order was fixed). */
	qsort(h.ids, h.n, sizeof(*h.ids), cmp_id);
	buf_reset(&attrs_blob);
	for (size_t i = 0; i < h.n; i++)
		if (attrset_put_varint(&attrs_blob, h.ids[i]) < 0)
			goto nomem;
	s = store_stmt(st, "UPDATE batches SET rows = ?2, bytes = ?3, header = ?4 WHERE id = ?1");
	if (!s)
		goto db_error;
	sqlite3_bind_int64(s, 1, id);
	sqlite3_bind_int64(s, 2, rows);
	sqlite3_bind_int64(s, 3, body_size(cfg, &h, rows, content));
	sqlite3_bind_blob(s, 4, attrs_blob.data, (int)attrs_blob.len, SQLITE_STATIC);
	if (sqlite3_step(s) != SQLITE_DONE)
		goto db_error;
	sqlite3_reset(s);
	if (store_commit(st) < 0) {
		r = -EIO;
		goto out;
	}
	goto out;

corrupt:
	r = -EINVAL;
	goto rollback;
nomem:
	r = -ENOMEM;
	goto rollback;
db_error:
	r = -EIO;
rollback:
	store_rollback(st);
out:
	attrset_finish(&accepted);
	attrset_finish(&pending);
	attrset_finish(&row);
	buf_finish(&attrs_blob);
	buf_finish(&changed_blob);
	header_finish(&h);
	return r < 0 ? r : id;
}

int batch_header_ids(struct store *st, int64_t id, uint32_t **ids, size_t *n)
{
	sqlite3_stmt *s = store_stmt(st, "SELECT header FROM batches WHERE id = ?");
	if (!s)
		return -EIO;
	sqlite3_bind_int64(s, 1, id);
	if (sqlite3_step(s) != SQLITE_ROW) {
		sqlite3_reset(s);
		return -ENOENT;
	}
	const unsigned char *p = sqlite3_column_blob(s, 0);
	size_t len = (size_t)sqlite3_column_bytes(s, 0);
	*ids = malloc((len ? len : 1) * sizeof(**ids));
	*n = 0;
	if (!*ids) {
		sqlite3_reset(s);
		return -ENOMEM;
	}
	for (const unsigned char *end = p + len; p < end;) {
		p = attrset_get_varint(p, end, &(*ids)[*n]);
		if (!p) {
			sqlite3_reset(s);
			free(*ids);
			*ids = NULL;
			return -EINVAL;
		}
		(*n)++;
	}
	sqlite3_reset(s);
	return 0;
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

int64_t batch_write_body(struct store *st, const struct config *cfg, int64_t id, int fd)
{
	uint32_t *ids = NULL;
	size_t n = 0;
	struct body_writer w;
	int r = batch_header_ids(st, id, &ids, &n);
	if (r < 0)
		return r;
	r = body_writer_init(&w, ids, n);
	free(ids);
	if (r == 0)
		r = buf_append(&w.out, "batch=", 6);
	if (r == 0)
		r = buf_append(&w.out, id_header(cfg), strlen(id_header(cfg)));
	for (size_t i = 0; i < n && r == 0; i++) {
		const char *name = store_attr_name(st, w.ids[i]);
		r = buf_putc(&w.out, ',');
		if (r == 0)
			r = put_encoded(&w.out, name, strlen(name));
	}
	if (r == 0)
		r = buf_putc(&w.out, '\n');
	sqlite3_stmt *size = store_stmt(st, "SELECT bytes FROM batches WHERE id = ?");
	sqlite3_stmt *s = store_stmt(st, "SELECT profile, attrs FROM batch_rows WHERE batch_id = ? ORDER BY profile");
	if (r == 0 && (!size || !s))
		r = -EIO;
	if (r == 0) {
		/* bytes: the exact size since batch_build, 0 when not known (split halves). */
		sqlite3_bind_int64(size, 1, id);
		int64_t expect = sqlite3_step(size) == SQLITE_ROW ? sqlite3_column_int64(size, 0) : 0;
		sqlite3_reset(size);
		r = body_writer_open(&w, fd, expect);
	}
	if (r == 0) {
		sqlite3_bind_int64(s, 1, id);
		int rc;
		while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
			r = body_writer_row(&w, (const char *)sqlite3_column_text(s, 0),
					    (size_t)sqlite3_column_bytes(s, 0), sqlite3_column_blob(s, 1),
					    (size_t)sqlite3_column_bytes(s, 1));
			if (r == 0)
				r = body_writer_flush(&w, BODY_WRITER_CHUNK);
			if (r < 0)
				break;
		}
		if (r == 0 && rc != SQLITE_DONE)
			r = -EIO;
		sqlite3_reset(s);
		if (r == 0)
			r = body_writer_flush(&w, 0);
	}
	int64_t total = w.written;
	body_writer_finish(&w);
	return r < 0 ? r : total;
}

int batch_accept(struct store *st, int64_t id)
{
	struct attrset accepted, sent;
	struct buf blob;
	int r = 0;
	attrset_init(&accepted);
	attrset_init(&sent);
	buf_init(&blob);
	sqlite3_stmt *rows = store_stmt(st, "SELECT b.profile, b.attrs, p.accepted FROM batch_rows b"
					    " JOIN profiles p ON p.id = b.profile WHERE b.batch_id = ?");
	if (!rows)
		return -EIO;
	sqlite3_bind_int64(rows, 1, id);
	while (sqlite3_step(rows) == SQLITE_ROW) {
		attrset_clear(&accepted);
		if (sqlite3_column_type(rows, 2) != SQLITE_NULL &&
		    attrset_decode(&accepted, sqlite3_column_blob(rows, 2), (size_t)sqlite3_column_bytes(rows, 2)) < 0) {
			r = -EINVAL;
			break;
		}
		if (attrset_decode(&sent, sqlite3_column_blob(rows, 1), (size_t)sqlite3_column_bytes(rows, 1)) < 0) {
			r = -EINVAL;
			break;
		}
		buf_reset(&blob);
		if (attrset_overlay(&accepted, &sent) < 0 || attrset_encode(&accepted, &blob) < 0) {
			r = -ENOMEM;
			break;
		}
		sqlite3_stmt *u = store_stmt(st, "UPDATE profiles SET accepted = ?2,"
						 " inflight = CASE WHEN inflight_batch = ?3 THEN NULL ELSE inflight END,"
						 " inflight_batch = CASE WHEN inflight_batch = ?3 THEN NULL ELSE inflight_batch END"
						 " WHERE id = ?1");
		if (!u) {
			r = -EIO;
			break;
		}
		sqlite3_bind_text(u, 1, (const char *)sqlite3_column_text(rows, 0), -1, SQLITE_STATIC);
		sqlite3_bind_blob(u, 2, blob.data, (int)blob.len, SQLITE_STATIC);
		sqlite3_bind_int64(u, 3, id);
		int rc = sqlite3_step(u);
		sqlite3_reset(u);
		if (rc != SQLITE_DONE) {
			r = -EIO;
			break;
		}
	}
	sqlite3_reset(rows);
	attrset_finish(&accepted);
	attrset_finish(&sent);
	buf_finish(&blob);
	return r;
}

static int release_profiles(struct store *st, int64_t id)
{
	sqlite3_stmt *s = store_stmt(st, "UPDATE profiles SET inflight = NULL, inflight_batch = NULL WHERE inflight_batch = ?");
	if (!s)
		return -EIO;
	sqlite3_bind_int64(s, 1, id);
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

static int set_state(struct store *st, int64_t id, const char *state)
{
	sqlite3_stmt *s = store_stmt(st, "UPDATE batches SET state = ?2 WHERE id = ?1");
	if (!s)
		return -EIO;
	sqlite3_bind_int64(s, 1, id);
	sqlite3_bind_text(s, 2, state, -1, SQLITE_STATIC);
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

static int delete_rows(struct store *st, int64_t id)
{
	sqlite3_stmt *s = store_stmt(st, "DELETE FROM batch_rows WHERE batch_id = ?");
	if (!s)
		return -EIO;
	sqlite3_bind_int64(s, 1, id);
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

int batch_kill(struct store *st, int64_t id, const char *reason, const char *last_answer)
{
	sqlite3_stmt *s = store_stmt(st, "INSERT INTO dead_letters (profile, attr, value, batch_id, reason, attempts,"
					 " last_answer, created_at) SELECT ?, ?, ?, id, ?, attempts, ?, ? FROM batches WHERE id = ?");
	sqlite3_stmt *rows = store_stmt(st, "SELECT profile, changed FROM batch_rows WHERE batch_id = ?");
	struct attrset changed;
	int r = 0;
	if (!s || !rows)
		return -EIO;
	st->has_dead_letters = true;
	attrset_init(&changed);
	sqlite3_bind_int64(rows, 1, id);
	while (r == 0 && sqlite3_step(rows) == SQLITE_ROW) {
		if (attrset_decode(&changed, sqlite3_column_blob(rows, 1), (size_t)sqlite3_column_bytes(rows, 1)) < 0) {
			r = -EINVAL;
			break;
		}
		for (size_t i = 0; i < changed.n && r == 0; i++) {
			sqlite3_reset(s);
			sqlite3_bind_text(s, 1, (const char *)sqlite3_column_text(rows, 0), -1, SQLITE_STATIC);
			sqlite3_bind_text(s, 2, store_attr_name(st, changed.kv[i].id), -1, SQLITE_STATIC);
			sqlite3_bind_text(s, 3, changed.kv[i].val, (int)changed.kv[i].len, SQLITE_STATIC);
			sqlite3_bind_text(s, 4, reason, -1, SQLITE_STATIC);
			sqlite3_bind_text(s, 5, last_answer, -1, SQLITE_STATIC);
			sqlite3_bind_int64(s, 6, now_ms());
			sqlite3_bind_int64(s, 7, id);
			if (sqlite3_step(s) != SQLITE_DONE)
				r = -EIO;
		}
	}
	sqlite3_reset(s);
	sqlite3_reset(rows);
	attrset_finish(&changed);
	if (r == 0)
		r = release_profiles(st, id);
	if (r == 0)
		r = delete_rows(st, id);
	if (r == 0)
		r = set_state(st, id, "dead");
	if (r == 0) {
		s = store_stmt(st, "UPDATE batches SET last_error = ?2 WHERE id = ?1");
		if (!s)
			return -EIO;
		sqlite3_bind_int64(s, 1, id);
		sqlite3_bind_text(s, 2, reason, -1, SQLITE_STATIC);
		r = sqlite3_step(s) == SQLITE_DONE ? 0 : -EIO;
		sqlite3_reset(s);
	}
	return r;
}

/* Creates a ready batch that inherits header and requeue_of from batch from. */
static int64_t new_batch_like(struct store *st, int64_t from, int64_t requeue_of)
{
	sqlite3_stmt *s = store_stmt(st, "INSERT INTO batches (state, created_at, header, requeue_of)"
					 " SELECT 'ready', created_at, header, ?2 FROM batches WHERE id = ?1");
	if (!s)
		return -EIO;
	sqlite3_bind_int64(s, 1, from);
	if (requeue_of)
		sqlite3_bind_int64(s, 2, requeue_of);
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? sqlite3_last_insert_rowid(st->db) : -EIO;
}

int batch_split(struct store *st, int64_t id)
{
	int64_t rows = 0;
	sqlite3_stmt *s = store_stmt(st, "SELECT count(*) FROM batch_rows WHERE batch_id = ?");
	if (!s)
		return -EIO;
	sqlite3_bind_int64(s, 1, id);
	if (sqlite3_step(s) == SQLITE_ROW)
		rows = sqlite3_column_int64(s, 0);
	sqlite3_reset(s);
	if (rows < 2)
		return -E2BIG;
	int64_t halves[2];
	for (int h = 0; h < 2; h++) {
		halves[h] = new_batch_like(st, id, 0);
		if (halves[h] < 0)
			return (int)halves[h];
	}
	/* First half (by profile order) to halves[0], the rest to halves[1]. */
	static const char *const moves[2] = {
		"UPDATE batch_rows SET batch_id = ?2 WHERE batch_id = ?1 AND profile IN"
		" (SELECT profile FROM batch_rows WHERE batch_id = ?1 ORDER BY profile LIMIT ?3)",
		"UPDATE batch_rows SET batch_id = ?2 WHERE batch_id = ?1",
	};
	for (int h = 0; h < 2; h++) {
		s = store_stmt(st, moves[h]);
		if (!s)
			return -EIO;
		sqlite3_bind_int64(s, 1, id);
		sqlite3_bind_int64(s, 2, halves[h]);
		if (h == 0)
			sqlite3_bind_int64(s, 3, rows / 2);
		int rc = sqlite3_step(s);
		sqlite3_reset(s);
		if (rc != SQLITE_DONE)
			return -EIO;
		s = store_stmt(st, "UPDATE profiles SET inflight_batch = ?2 WHERE inflight_batch = ?1 AND id IN"
				   " (SELECT profile FROM batch_rows WHERE batch_id = ?2)");
		if (!s)
			return -EIO;
		sqlite3_bind_int64(s, 1, id);
		sqlite3_bind_int64(s, 2, halves[h]);
		rc = sqlite3_step(s);
		sqlite3_reset(s);
		if (rc != SQLITE_DONE)
			return -EIO;
		s = store_stmt(st, "UPDATE batches SET rows = (SELECT count(*) FROM batch_rows WHERE batch_id = ?1),"
				   " bytes = 0 WHERE id = ?1");
		if (!s)
			return -EIO;
		sqlite3_bind_int64(s, 1, halves[h]);
		rc = sqlite3_step(s);
		sqlite3_reset(s);
		if (rc != SQLITE_DONE)
			return -EIO;
	}
	return set_state(st, id, "split");
}

int batch_requeue_stuck(struct store *st, struct stage *sg, int64_t id)
{
	int64_t requeue_of = 0;
	sqlite3_stmt *s = store_stmt(st, "SELECT requeue_of FROM batches WHERE id = ?");
	if (!s)
		return -EIO;
	sqlite3_bind_int64(s, 1, id);
	if (sqlite3_step(s) == SQLITE_ROW)
		requeue_of = sqlite3_column_int64(s, 0);
	sqlite3_reset(s);
	if (requeue_of)
		return batch_kill(st, id, "Target reported the batch stuck again after a re-queue", "stuck");

	/* Profiles in no newer request are sent again as a re-queue batch (linked by
	 * requeue_of, so a second "stuck" is final). The others already have newer
	 * work queued: their latest values are staged so they are repeated too. */
	int64_t again = new_batch_like(st, id, id);
	if (again < 0)
		return (int)again;
	static const char *const steps[] = {
		"INSERT INTO batch_rows (batch_id, profile, attrs, changed) SELECT ?2, b.profile, b.attrs, b.changed"
		" FROM batch_rows b JOIN profiles p ON p.id = b.profile"
		" WHERE b.batch_id = ?1 AND p.inflight_batch IS NULL AND p.pending IS NULL",
		"UPDATE profiles SET inflight = (SELECT attrs FROM batch_rows b WHERE b.batch_id = ?2"
		" AND b.profile = profiles.id), inflight_batch = ?2"
		" WHERE id IN (SELECT profile FROM batch_rows WHERE batch_id = ?2)",
		"UPDATE batches SET rows = (SELECT count(*) FROM batch_rows WHERE batch_id = ?2) WHERE id = ?2",
		"DELETE FROM batches WHERE id = ?2 AND rows = 0",
	};
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		s = store_stmt(st, steps[i]);
		if (!s)
			return -EIO;
		sqlite3_bind_int64(s, 1, id);
		sqlite3_bind_int64(s, 2, again);
		int rc = sqlite3_step(s);
		sqlite3_reset(s);
		if (rc != SQLITE_DONE)
			return -EIO;
	}
	struct attrset changed;
	attrset_init(&changed);
	int r = 0;
	sqlite3_stmt *rows = store_stmt(st, "SELECT b.profile, b.changed FROM batch_rows b JOIN profiles p"
					    " ON p.id = b.profile WHERE b.batch_id = ?1 AND p.inflight_batch IS NOT ?2");
	if (!rows) {
		attrset_finish(&changed);
		return -EIO;
	}
	sqlite3_bind_int64(rows, 1, id);
	sqlite3_bind_int64(rows, 2, again);
	while (r == 0 && sqlite3_step(rows) == SQLITE_ROW) {
		if (attrset_decode(&changed, sqlite3_column_blob(rows, 1), (size_t)sqlite3_column_bytes(rows, 1)) < 0)
			r = -EINVAL;
		else
			r = stage_refresh(sg, (const char *)sqlite3_column_text(rows, 0), &changed);
	}
	sqlite3_reset(rows);
	attrset_finish(&changed);
	if (r == 0)
		r = delete_rows(st, id);
	if (r == 0)
		r = set_state(st, id, "stuck");
	return r;
}
