/* SPDX-License-Identifier: MIT */
/* A streaming RFC 4180 CSV reader: quoted fields, doubled quotes, embedded
 * delimiters and newlines, CRLF or LF, a leading UTF-8 BOM, bounded field size.
 * A malformed record is returned with an error and the reader carries on at the
 * next record, so one bad row never hides the rows after it. */
#ifndef TPSYNC_CSV_H
#define TPSYNC_CSV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct csv_reader;

struct csv_record {
	size_t n_fields;
	char **fields;     /* NUL-terminated; valid until the next csv_next() */
	size_t *lens;
	uint64_t line;     /* physical line the record starts on, 1-based */
	off_t offset;      /* byte offset of its first byte */
	off_t end_offset;  /* byte offset just after it (where the next record starts) */
	const char *raw;   /* the record as it stood in the file, without its line end */
	size_t raw_len;    /* (capped; raw_truncated says so) */
	bool raw_truncated;
	const char *error; /* NULL, or why this record is malformed (static text) */
};

/* Creates a reader over fd (not owned, not closed) for records separated by
 * delim, with fields of at most max_field bytes. Returns NULL on ENOMEM. */
struct csv_reader *csv_create(int fd, char delim, size_t max_field);
void csv_destroy(struct csv_reader *r);

/* Continues reading at offset, which must be a record boundary reported earlier as
 * end_offset, counting lines from line. Returns 0 or a negative errno from lseek. */
int csv_seek(struct csv_reader *r, off_t offset, uint64_t line);

/* The content hash (hash.h) of every byte read since the reader was created
 * or sought to offset 0, and how many; false when it was sought elsewhere.
 * Compared with a hash taken before reading, it tells a file that changed
 * while it was read. */
bool csv_content_hash(const struct csv_reader *r, uint64_t *hash, uint64_t *bytes);

/* Reads the next record into *rec. Returns 1 for a record (check rec->error), 0 at
 * the end of the input, or a negative errno on a read error. Blank lines are
 * skipped. */
int csv_next(struct csv_reader *r, struct csv_record *rec);

#endif
