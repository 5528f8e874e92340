/* SPDX-License-Identifier: MIT */
/* libFuzzer harness: the config loader on arbitrary YAML (alias bombs, deep
 * nesting, wrong types). It must accept or reject, never crash or leak. */
#include <stdint.h>
#include <stdio.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config *cfg = NULL;
	FILE *err = fopen("/dev/null", "w");
	if (config_load_buffer("fuzz.yaml", (const char *)data, size, &cfg, err) == 0)
		config_destroy(cfg);
	if (err)
		fclose(err);
	return 0;
}
