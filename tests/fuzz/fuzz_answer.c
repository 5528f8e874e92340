/* SPDX-License-Identifier: MIT */
/* libFuzzer harness: Target's XML answers. */
#include <stdint.h>

#include "target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct target_answer a;
	if (target_parse_answer((const char *)data, size, &a) == 0)
		target_answer_finish(&a);
	return 0;
}
