/* SPDX-License-Identifier: MIT */
/* libFuzzer harness: the fetch API's JSON answer, and its times. Any bytes
 * either parse into a profile whose every attribute has a name and a value
 * (and is found again by name), or are refused; nothing crashes or leaks. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "target_fetch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct target_fetch_profile p;
	if (target_fetch_parse((const char *)data, size, &p) == 0) {
		for (size_t i = 0; i < p.n; i++) {
			assert(p.attrs[i].name && p.attrs[i].value);
			assert(target_fetch_get(&p, p.attrs[i].name) != NULL);
		}
		target_fetch_profile_finish(&p);
	}
	char iso[64];
	size_t n = size < sizeof(iso) - 1 ? size : sizeof(iso) - 1;
	memcpy(iso, data, n);
	iso[n] = '\0';
	int64_t ms;
	(void)target_fetch_parse_time(iso, &ms);
	return 0;
}
