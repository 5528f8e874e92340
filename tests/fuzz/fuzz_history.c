/* SPDX-License-Identifier: MIT */
/* libFuzzer harness: the staging history blob as read back from the state
 * database. Any bytes are read event by event without reading past their
 * end, or refused; appending an event to them always gives a blob that reads
 * back whole, ending with that event. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "history.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const unsigned char *p = data, *end = data + size;
	struct history_event e;
	int r;
	while ((r = history_next(&p, end, &e)) > 0) {
		assert(p <= end);
		assert(e.source_len == 0 || ((const uint8_t *)e.source >= data && (const uint8_t *)e.source + e.source_len <= end));
		assert(e.position_len == 0 ||
		       ((const uint8_t *)e.position >= data && (const uint8_t *)e.position + e.position_len <= end));
	}
	struct history_event ev = { .seq = 7, .at = 1796000000000, .file_id = 3, .line = 42, .source = "crm",
				    .source_len = 3, .position = "", .n_attrs = 3, .attrs = { 1, 2, 5 } };
	struct buf b;
	buf_init(&b);
	assert(history_append(data, size, &ev, 5, 0, &b) == 0);
	p = (const unsigned char *)b.data;
	end = p + b.len;
	size_t n = 0;
	struct history_event last = { 0 };
	while ((r = history_next(&p, end, &e)) > 0) {
		last = e;
		n++;
	}
	assert(r == 0 && n >= 1 && n <= 5);
	assert(last.seq == 7 && last.line == 42 && last.n_attrs == 3 && last.attrs[2] == 5);
	buf_finish(&b);
	return 0;
}
