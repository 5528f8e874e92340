/* SPDX-License-Identifier: MIT */
/* The CSV reader on the shapes real exports have, and on broken ones. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "csv.h"
#include "utf8.h"

/* A reader over text held in a temporary file. */
static struct csv_reader *reader(const char *text, size_t len, char delim, size_t max_field, int *fd)
{
	FILE *f = tmpfile();
	fwrite(text, 1, len, f);
	fflush(f);
	*fd = dup(fileno(f));
	fclose(f);
	lseek(*fd, 0, SEEK_SET);
	return csv_create(*fd, delim, max_field);
}

#define READER(text, delim) reader(text, sizeof(text) - 1, delim, 1 << 20, &fd)

static void basics(void)
{
	int fd;
	struct csv_record rec;
	struct csv_reader *r = READER("\xEF\xBB\xBFid,name,note\r\n"
				      "1,\"Smith, J\",\"said \"\"hi\"\"\"\r\n"
				      "2,plain,\"two\nlines\"\n"
				      "\n"
				      "3,,last", ',');
	CHECK(csv_next(r, &rec) == 1);
	CHECK(rec.n_fields == 3 && !rec.error);
	CHECK_STR(rec.fields[0], "id"); /* BOM stripped */
	CHECK_STR(rec.fields[2], "note"); /* CR stripped */
	CHECK(rec.line == 1);
	CHECK(csv_next(r, &rec) == 1);
	CHECK_STR(rec.fields[1], "Smith, J");
	CHECK_STR(rec.fields[2], "said \"hi\"");
	CHECK(rec.line == 2);
	CHECK(csv_next(r, &rec) == 1);
	CHECK_STR(rec.fields[2], "two\nlines");
	CHECK(rec.line == 3);
	off_t resume = rec.end_offset;
	CHECK(csv_next(r, &rec) == 1); /* blank line skipped */
	CHECK(rec.line == 6);
	CHECK(rec.n_fields == 3 && rec.lens[1] == 0);
	CHECK_STR(rec.fields[2], "last");
	CHECK(csv_next(r, &rec) == 0);
	/* Resuming at a reported boundary gives the same records again. */
	CHECK(csv_seek(r, resume, 5) == 0);
	CHECK(csv_next(r, &rec) == 1 && rec.line == 6);
	CHECK_STR(rec.fields[0], "3");
	csv_destroy(r);
	close(fd);
}

static void delimiters(void)
{
	int fd;
	struct csv_record rec;
	struct csv_reader *r = READER("a;b;c\n1;\"x;y\";3\n", ';');
	CHECK(csv_next(r, &rec) == 1 && rec.n_fields == 3);
	CHECK(csv_next(r, &rec) == 1 && rec.n_fields == 3);
	CHECK_STR(rec.fields[1], "x;y");
	csv_destroy(r);
	close(fd);
	r = READER("a\tb\n1\t2,3\n", '\t');
	CHECK(csv_next(r, &rec) == 1 && rec.n_fields == 2);
	CHECK(csv_next(r, &rec) == 1);
	CHECK_STR(rec.fields[1], "2,3");
	csv_destroy(r);
	close(fd);
}

static void errors(void)
{
	int fd;
	struct csv_record rec;
	/* Bad records are reported with their line, and the next ones still read. */
	static const char text[] = "id,v\n"
				   "1,bad\xC3\x28utf8\n"
				   "2,ok\n"
				   "3,a\"b\n"
				   "4,\"x\"y\n"
				   "5,nul\0here\n"
				   "6,\xC0\xAF\n"
				   "7,\"never closed\n"
				   "8,eaten\n";
	struct csv_reader *r = reader(text, sizeof(text) - 1, ',', 1 << 20, &fd);
	CHECK(csv_next(r, &rec) == 1 && !rec.error);
	CHECK(csv_next(r, &rec) == 1 && rec.error && rec.line == 2);
	CHECK_STR(rec.error, "invalid UTF-8");
	CHECK(csv_next(r, &rec) == 1 && !rec.error && rec.line == 3);
	CHECK(csv_next(r, &rec) == 1 && rec.error && rec.line == 4);
	CHECK_STR(rec.error, "quote inside an unquoted field");
	CHECK(csv_next(r, &rec) == 1 && rec.error && rec.line == 5);
	CHECK(csv_next(r, &rec) == 1 && rec.error && rec.line == 6);
	CHECK_STR(rec.error, "NUL byte in record");
	CHECK(csv_next(r, &rec) == 1 && rec.error && rec.line == 7); /* overlong encoding */
	CHECK(csv_next(r, &rec) == 1 && rec.error && rec.line == 8);
	CHECK_STR(rec.error, "unterminated quoted field");
	CHECK(csv_next(r, &rec) == 0);
	csv_destroy(r);
	close(fd);

	/* Field size bound. */
	r = reader("id,v\n1,0123456789abcdef\n2,ok\n", 30, ',', 8, &fd);
	CHECK(csv_next(r, &rec) == 1 && !rec.error);
	CHECK(csv_next(r, &rec) == 1 && rec.error);
	CHECK_STR(rec.error, "field longer than the allowed maximum");
	CHECK(csv_next(r, &rec) == 1 && !rec.error);
	CHECK_STR(rec.fields[1], "ok");
	csv_destroy(r);
	close(fd);
}

static void big(void)
{
	/* Records crossing the 64 KiB block boundary many times. */
	FILE *f = tmpfile();
	fputs("id,v\n", f);
	for (int i = 0; i < 20000; i++)
		fprintf(f, "%d,\"value %d, with \"\"quotes\"\"\nand a newline\"\n", i, i);
	fflush(f);
	int fd = dup(fileno(f));
	fclose(f);
	lseek(fd, 0, SEEK_SET);
	struct csv_reader *r = csv_create(fd, ',', 1 << 20);
	struct csv_record rec;
	CHECK(csv_next(r, &rec) == 1);
	int n = 0, bad = 0;
	while (csv_next(r, &rec) == 1) {
		char want[64];
		snprintf(want, sizeof(want), "value %d, with \"quotes\"\nand a newline", n);
		if (rec.error || strcmp(rec.fields[1], want) != 0 || rec.line != (uint64_t)(2 + 2 * n))
			bad++;
		n++;
	}
	CHECK(n == 20000);
	CHECK(bad == 0);
	csv_destroy(r);
	close(fd);
}

/* Found by fuzz_csv: a file holding nothing but a BOM. */
static void only_bom(void)
{
	int fd;
	struct csv_record rec;
	struct csv_reader *r = reader("\xEF\xBB\xBF", 3, ',', 64, &fd);
	CHECK(csv_next(r, &rec) == 0);
	csv_destroy(r);
	close(fd);
	r = reader("\xEF\xBB\xBF\n\nid\n", 8, ',', 64, &fd);
	CHECK(csv_next(r, &rec) == 1 && rec.n_fields == 1 && rec.line == 3);
	CHECK_STR(rec.fields[0], "id");
	csv_destroy(r);
	close(fd);
}

static void utf8(void)
{
	CHECK(utf8_valid("plain", 5));
	CHECK(utf8_valid("Z\xC3\xBCrich \xE2\x82\xAC \xF0\x9F\x98\x80", 16));
	CHECK(!utf8_valid("\xED\xA0\x80", 3)); /* surrogate */
	CHECK(!utf8_valid("\xE0\x80\xAF", 3)); /* overlong */
	CHECK(!utf8_valid("\xF4\x90\x80\x80", 4)); /* above U+10FFFF */
	CHECK(!utf8_valid("\xC3", 1)); /* truncated */
}

int main(void)
{
	basics();
	delimiters();
	errors();
	big();
	only_bom();
	utf8();
	return check_result("test_csv");
}
