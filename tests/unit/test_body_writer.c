/* SPDX-License-Identifier: MIT */
/* The batch body encoder alone: column order, gaps, whole-row copies against
 * rows put together value by value, corrupt blobs, and random rows against a
 * cell-by-cell reference. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "attrset.h"
#include "body_writer.h"
#include "check.h"
#include "pctenc.h"

/* One row through a body writer with header ids (in the order given); the
 * blob is raw bytes. Returns body_writer_row's result; the row text in *out. */
static int writer_row(const uint32_t *ids, size_t n, const char *profile, const void *blob, size_t blob_len,
		      char *out, size_t out_size)
{
	struct body_writer w;
	CHECK(body_writer_init(&w, ids, n) == 0);
	int r = body_writer_row(&w, profile, strlen(profile), blob, blob_len);
	snprintf(out, out_size, "%.*s", (int)w.out.len, w.out.data);
	body_writer_finish(&w);
	return r;
}

/* The body writer alone: columns in ascending id order whatever the header's
 * order, attributes outside the header left out, gaps of any width, values and
 * profile ids of every length class, and corrupt blobs refused. */
static void test_body_writer(void)
{
	char row[4096];
	struct attrset set;
	struct buf blob;
	attrset_init(&set);
	buf_init(&blob);
	static const uint32_t three[] = { 9, 2, 5 };
	attrset_put(&set, 2, "two", 3);
	attrset_put(&set, 7, "not in header", 13);
	attrset_put(&set, 9, "nine, 9", 7);
	CHECK(attrset_encode(&set, &blob) == 0);
	CHECK(writer_row(three, 3, "p1", blob.data, blob.len, row, sizeof(row)) == 0);
	CHECK_STR(row, "p1,two,,nine%2C%209\n");
	struct body_writer w;
	CHECK(body_writer_init(&w, three, 3) == 0);
	CHECK(w.ids[0] == 2 && w.ids[1] == 5 && w.ids[2] == 9);
	body_writer_finish(&w);

	/* 40 columns, only the last one set: 40 commas, more than one 16-byte
	 * store of separators; a value over 127 bytes (two-byte length). */
	uint32_t forty[40];
	for (uint32_t i = 0; i < 40; i++)
		forty[i] = 100 + i;
	char big[300];
	memset(big, 'v', sizeof(big));
	big[150] = ' ';
	attrset_clear(&set);
	buf_reset(&blob);
	attrset_put(&set, 139, big, sizeof(big));
	CHECK(attrset_encode(&set, &blob) == 0);
	static const char *const profiles[] = { "p", "cust-12", "cust-1234", "cust-000000000123", "c-0123456789abcdef-x" };
	for (size_t i = 0; i < sizeof(profiles) / sizeof(profiles[0]); i++) {
		CHECK(writer_row(forty, 40, profiles[i], blob.data, blob.len, row, sizeof(row)) == 0);
		size_t pl = strlen(profiles[i]);
		CHECK(strncmp(row, profiles[i], pl) == 0);
		for (size_t c = 0; c < 40; c++)
			CHECK(row[pl + c] == ',');
		CHECK(strncmp(row + pl + 40, big, 150) == 0 && strncmp(row + pl + 190, "%20", 3) == 0 &&
		      strlen(row) == pl + 40 + 302 + 1);
	}

	/* A blob with exactly the header's ids is copied whole (the values are
	 * already joined by NULs); the same set under a wider header goes value
	 * by value. Both give the same cells. */
	attrset_clear(&set);
	buf_reset(&blob);
	attrset_put(&set, 2, "x y", 3);
	attrset_put(&set, 5, "", 0);
	attrset_put(&set, 9, "z,", 2);
	CHECK(attrset_encode(&set, &blob) == 0);
	CHECK(writer_row(three, 3, "p", blob.data, blob.len, row, sizeof(row)) == 0);
	CHECK_STR(row, "p,x%20y,,z%2C\n");
	static const uint32_t four[] = { 2, 5, 9, 11 };
	CHECK(writer_row(four, 4, "p", blob.data, blob.len, row, sizeof(row)) == 0);
	CHECK_STR(row, "p,x%20y,,z%2C,\n");

	/* Corrupt blobs (header ids 2, 5, 9: a whole-copy blob starts 3, 2, 5, 9). */
	static const struct {
		const char *why;
		unsigned char bytes[16];
		size_t len;
	} corrupt[] = {
		{ "ids out of order", { 2, 9, 2, 'a', 0, 'b', 0 }, 7 },
		{ "the header's ids, one value too many", { 3, 2, 5, 9, 'a', 0, 'b', 0, 'c', 0, 'd', 0 }, 12 },
		{ "the header's ids, one value too few", { 3, 2, 5, 9, 'a', 0, 'b', 0 }, 8 },
		{ "the header's ids, the last value cut", { 3, 2, 5, 9, 'a', 0, 'b', 0, 'c' }, 9 },
		{ "bytes after the last value", { 1, 2, 'a', 0, 'b', 0 }, 6 },
		{ "the id list past the end", { 5, 2 }, 2 },
	};
	for (size_t i = 0; i < sizeof(corrupt) / sizeof(corrupt[0]); i++) {
		int r = writer_row(three, 3, "p", corrupt[i].bytes, corrupt[i].len, row, sizeof(row));
		if (r != -EINVAL)
			fprintf(stderr, "corrupt blob accepted: %s\n", corrupt[i].why);
		CHECK(r == -EINVAL);
	}
	attrset_finish(&set);
	buf_finish(&blob);
}

/* Random rows against a reference built cell by cell: headers of 1 to 40
 * ids out of 60, sets of any of those ids (so rows are exactly their
 * header's, a part of it, or wider), values of 0 to 300 bytes from an
 * alphabet with bytes to encode. Both ways of writing a row must agree. */
static void test_body_writer_random(void)
{
	static const char alphabet[] = "abcXYZ019-._~ ,%&+=\n\"\xc3\xbc\xff";
	unsigned seed = 12345;
#define RND() (seed = seed * 1103515245u + 12345u, (seed >> 8) & 0xffffff)
	struct attrset set;
	struct buf blob, want;
	attrset_init(&set);
	buf_init(&blob);
	buf_init(&want);
	static char values[60][301];
	char *row = malloc(64 * 1024), enc[1024];
	for (int round = 0; round < 3000; round++) {
		uint32_t ids[40];
		size_t n = 1 + RND() % 40;
		for (size_t i = 0; i < n; i++) {
			uint32_t id;
			bool dup;
			do {
				id = 1 + RND() % 60;
				dup = false;
				for (size_t j = 0; j < i; j++)
					dup |= ids[j] == id;
			} while (dup);
			ids[i] = id;
		}
		attrset_clear(&set);
		int mode = (int)(RND() % 3); /* 0: the header's ids, 1: some of them, 2: any */
		for (uint32_t id = 1; id <= 60; id++) {
			bool in_header = false;
			for (size_t j = 0; j < n; j++)
				in_header |= ids[j] == id;
			if (mode == 0 ? !in_header : RND() % 2)
				continue;
			size_t len = RND() % 8 == 0 ? RND() % 301 : RND() % 20;
			for (size_t k = 0; k < len; k++)
				values[id - 1][k] = alphabet[RND() % (sizeof(alphabet) - 1)];
			attrset_put(&set, id, values[id - 1], (uint32_t)len);
		}
		buf_reset(&blob);
		CHECK(attrset_encode(&set, &blob) == 0);
		/* The reference: columns in ascending id order, each cell encoded alone. */
		uint32_t sorted[40];
		memcpy(sorted, ids, n * sizeof(ids[0]));
		for (size_t i = 1; i < n; i++)
			for (size_t j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
				uint32_t t = sorted[j];
				sorted[j] = sorted[j - 1];
				sorted[j - 1] = t;
			}
		buf_reset(&want);
		buf_append(&want, "p-1", 3);
		for (size_t i = 0; i < n; i++) {
			const struct attr_kv *kv = attrset_get(&set, sorted[i]);
			buf_putc(&want, ',');
			if (kv)
				buf_append(&want, enc, pctenc_encode(kv->val, kv->len, enc));
		}
		buf_putc(&want, '\n');
		buf_putc(&want, '\0');
		/* The blob copied to a buffer of its exact size: a read past it shows. */
		char *exact = malloc(blob.len);
		memcpy(exact, blob.data, blob.len);
		int r = writer_row(ids, n, "p-1", exact, blob.len, row, 64 * 1024);
		free(exact);
		CHECK(r == 0);
		if (r != 0 || strcmp(row, want.data) != 0) {
			fprintf(stderr, "round %d (mode %d): got  %s\n              want %s\n", round, mode, row, want.data);
			CHECK(0);
			break;
		}
	}
#undef RND
	free(row);
	attrset_finish(&set);
	buf_finish(&blob);
	buf_finish(&want);
}

int main(void)
{
	RUN(test_body_writer);
	RUN(test_body_writer_random);
	return check_result("test_body_writer");
}
