/* SPDX-License-Identifier: MIT */
/* libFuzzer harness: the CSV reader on arbitrary bytes. Every record must come
 * back with consistent fields, and the reader must reach the end. */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "csv.h"
#include "utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[] = "/tmp/tpsync-fuzz-csv-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0)
		return 0;
	unlink(path);
	if (write(fd, data, size) != (ssize_t)size || lseek(fd, 0, SEEK_SET) < 0) {
		close(fd);
		return 0;
	}
	char delim = size && data[0] % 4 == 1 ? ';' : ',';
	struct csv_reader *r = csv_create(fd, delim, 64);
	struct csv_record rec;
	int n = 0;
	off_t last = 0;
	while (r && csv_next(r, &rec) == 1) {
		assert(rec.end_offset > rec.offset || rec.error);
		assert(rec.end_offset >= last);
		last = rec.end_offset;
		for (size_t i = 0; i < rec.n_fields; i++) {
			assert(rec.lens[i] <= 64);
			assert(strlen(rec.fields[i]) <= rec.lens[i]);
			if (!rec.error)
				assert(utf8_valid(rec.fields[i], rec.lens[i]));
		}
		assert(++n <= (int)size + 1);
	}
	csv_destroy(r);
	close(fd);
	return 0;
}
