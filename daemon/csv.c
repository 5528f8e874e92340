/* SPDX-License-Identifier: MIT */
/* Streaming CSV reader (RFC 4180 plus the variations real CRM exports have). It
 * reads the file in 64 KiB blocks and keeps one record in memory at a time. */
#include "csv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "hash.h"
#include "utf8.h"

#define CSV_BLOCK 65536
#define CSV_RAW_MAX 65536

enum csv_state { FIELD_START, UNQUOTED, QUOTED, QUOTE_IN_QUOTED };

struct csv_reader {
	int fd;
	char delim;
	size_t max_field;
	char block[CSV_BLOCK];
	size_t block_len;
	size_t block_pos;
	off_t block_offset; /* file offset of block[0] */
	bool eof;
	bool is_hashed;     /* read from offset 0 on: hash covers every byte read */
	struct hasher hash;
	uint64_t line;
	struct buf data;    /* field bytes, each field NUL-terminated */
	struct buf raw;
	size_t *starts;     /* field start offsets in data */
	size_t *lens;
	char **fields;
	size_t cap_fields;
};

struct csv_reader *csv_create(int fd, char delim, size_t max_field)
{
	struct csv_reader *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->fd = fd;
	r->delim = delim;
	r->max_field = max_field;
	r->line = 1;
	r->is_hashed = true;
	hasher_init(&r->hash);
	buf_init(&r->data);
	buf_init(&r->raw);
	return r;
}

void csv_destroy(struct csv_reader *r)
{
	if (!r)
		return;
	buf_finish(&r->data);
	buf_finish(&r->raw);
	free(r->starts);
	free(r->lens);
	free(r->fields);
	free(r);
}

int csv_seek(struct csv_reader *r, off_t offset, uint64_t line)
{
	if (lseek(r->fd, offset, SEEK_SET) < 0)
		return -errno;
	r->block_len = r->block_pos = 0;
	r->block_offset = offset;
	r->eof = false;
	r->line = line;
	r->is_hashed = offset == 0;
	hasher_init(&r->hash);
	return 0;
}

bool csv_content_hash(const struct csv_reader *r, uint64_t *hash, uint64_t *bytes)
{
	if (!r->is_hashed)
		return false;
	*hash = hasher_value(&r->hash);
	*bytes = r->hash.bytes;
	return true;
}

/* Returns the next byte, -1 at EOF, or < -1 (a negative errno - 1) on error. */
static int next_byte(struct csv_reader *r)
{
	/* A loop: the block read may be all BOM, leaving nothing to return yet. */
	while (r->block_pos == r->block_len) {
		if (r->eof)
			return -1;
		r->block_offset += (off_t)r->block_len;
		ssize_t n;
		do {
			n = read(r->fd, r->block, sizeof(r->block));
		} while (n < 0 && errno == EINTR);
		if (n < 0)
			return -errno - 1;
		r->block_len = (size_t)n;
		r->block_pos = 0;
		hasher_update(&r->hash, r->block, (size_t)n);
		if (n == 0) {
			r->eof = true;
			return -1;
		}
		/* Skip a UTF-8 byte order mark at the very start of the file. */
		if (r->block_offset == 0 && n >= 3 && memcmp(r->block, "\xEF\xBB\xBF", 3) == 0)
			r->block_pos = 3;
	}
	return (unsigned char)r->block[r->block_pos++];
}

static off_t position(const struct csv_reader *r)
{
	return r->block_offset + (off_t)r->block_pos;
}

static int start_field(struct csv_reader *r, size_t *n)
{
	if (*n == r->cap_fields) {
		size_t cap = r->cap_fields ? r->cap_fields * 2 : 32;
		size_t *starts = realloc(r->starts, cap * sizeof(*starts));
		if (!starts)
			return -ENOMEM;
		r->starts = starts;
		size_t *lens = realloc(r->lens, cap * sizeof(*lens));
		if (!lens)
			return -ENOMEM;
		r->lens = lens;
		char **fields = realloc(r->fields, cap * sizeof(*fields));
		if (!fields)
			return -ENOMEM;
		r->fields = fields;
		r->cap_fields = cap;
	}
	r->starts[*n] = r->data.len;
	r->lens[*n] = 0;
	(*n)++;
	return 0;
}

int csv_next(struct csv_reader *r, struct csv_record *rec)
{
	enum csv_state st;
	size_t n;
	int c;
	bool any_byte, quoted_any;

again:
	st = FIELD_START;
	n = 0;
	any_byte = false;
	quoted_any = false;
	buf_reset(&r->data);
	buf_reset(&r->raw);
	memset(rec, 0, sizeof(*rec));
	rec->line = r->line;
	rec->offset = position(r);
	/* The BOM skip happens inside next_byte(); a record at offset 0 starts after it. */
	if (start_field(r, &n) < 0)
		return -ENOMEM;

	for (;;) {
		c = next_byte(r);
		if (c < -1)
			return c + 1;
		if (c == -1) {
			if (!any_byte)
				return 0;
			if (st == QUOTED && !rec->error)
				rec->error = "unterminated quoted field";
			break;
		}
		if (!any_byte && rec->offset == 0)
			rec->offset = position(r) - 1;
		any_byte = true;
		if (c == '\n')
			r->line++;
		if (r->raw.len < CSV_RAW_MAX) {
			if (buf_putc(&r->raw, (char)c) < 0)
				return -ENOMEM;
		} else {
			rec->raw_truncated = true;
		}
		if (c == '\0' && !rec->error)
			rec->error = "NUL byte in record";

		bool end_field = false, end_record = false, keep = false;
		switch (st) {
		case FIELD_START:
			if (c == '"') {
				st = QUOTED;
				quoted_any = true;
			} else if (c == r->delim) {
				end_field = true;
			} else if (c == '\n') {
				end_record = true;
			} else if (c == '\r') {
				/* Kept only if not followed by '\n'; see UNQUOTED. */
				st = UNQUOTED;
				keep = true;
			} else {
				st = UNQUOTED;
				keep = true;
			}
			break;
		case UNQUOTED:
			if (c == r->delim) {
				end_field = true;
			} else if (c == '\n') {
				end_record = true;
			} else {
				if (c == '"' && !rec->error)
					rec->error = "quote inside an unquoted field";
				keep = true;
			}
			break;
		case QUOTED:
			if (c == '"')
				st = QUOTE_IN_QUOTED;
			else
				keep = true;
			break;
		case QUOTE_IN_QUOTED:
			if (c == '"') {
				st = QUOTED;
				keep = true;
			} else if (c == r->delim) {
				end_field = true;
			} else if (c == '\n') {
				end_record = true;
			} else if (c == '\r') {
				/* CRLF after a closing quote: the '\n' ends the record. */
			} else {
				if (!rec->error)
					rec->error = "unexpected character after a closing quote";
				st = UNQUOTED;
				keep = true;
			}
			break;
		}
		if (keep) {
			/* Take this byte and the run of ordinary bytes after it in the
			 * block in one go: most of a CSV file is such runs. */
			const char *run = r->block + r->block_pos - 1, *end = r->block + r->block_len, *q = run + 1;
			if (st == UNQUOTED)
				while (q < end && *q != r->delim && *q != '\n' && *q != '"' && *q != '\0')
					q++;
			else
				while (q < end && *q != '"' && *q != '\n' && *q != '\0')
					q++;
			size_t len = (size_t)(q - run);
			r->block_pos += len - 1;
			size_t room = r->lens[n - 1] < r->max_field ? r->max_field - r->lens[n - 1] : 0;
			if (len > room && !rec->error)
				rec->error = "field longer than the allowed maximum";
			size_t take = len < room ? len : room;
			if (take && buf_append(&r->data, run, take) < 0)
				return -ENOMEM;
			r->lens[n - 1] += take;
			if (len > 1) {
				size_t raw_room = r->raw.len < CSV_RAW_MAX ? CSV_RAW_MAX - r->raw.len : 0;
				size_t raw_take = len - 1 < raw_room ? len - 1 : raw_room;
				if (raw_take < len - 1)
					rec->raw_truncated = true;
				if (raw_take && buf_append(&r->raw, run + 1, raw_take) < 0)
					return -ENOMEM;
			}
		}
		if (end_field || end_record) {
			if (buf_putc(&r->data, '\0') < 0)
				return -ENOMEM;
			if (end_field) {
				st = FIELD_START;
				if (start_field(r, &n) < 0)
					return -ENOMEM;
			}
		}
		if (end_record)
			break;
	}
	if (c == -1 && buf_putc(&r->data, '\0') < 0)
		return -ENOMEM;
	/* A trailing '\r' of an unquoted last field belongs to a CRLF line end. */
	size_t last = n - 1;
	if (r->lens[last] > 0 && r->data.data[r->starts[last] + r->lens[last] - 1] == '\r' &&
	    st == UNQUOTED) {
		r->lens[last]--;
		r->data.data[r->starts[last] + r->lens[last]] = '\0';
	}
	/* Strip the line end from the raw copy. */
	while (r->raw.len && (r->raw.data[r->raw.len - 1] == '\n' || r->raw.data[r->raw.len - 1] == '\r'))
		r->raw.len--;
	if (n == 1 && r->lens[0] == 0 && !quoted_any && !rec->error)
		goto again; /* blank line */

	for (size_t i = 0; i < n; i++) {
		r->fields[i] = r->data.data + r->starts[i];
		if (!rec->error && !utf8_valid(r->fields[i], r->lens[i]))
			rec->error = "invalid UTF-8";
	}
	rec->n_fields = n;
	rec->fields = r->fields;
	rec->lens = r->lens;
	rec->raw = r->raw.data ? r->raw.data : "";
	rec->raw_len = r->raw.len;
	rec->end_offset = position(r);
	return 1;
}
