/* SPDX-License-Identifier: MIT */
/* libFuzzer harness: control protocol request lines. */
#include <jansson.h>
#include <stdint.h>

#include "control.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_error_t e;
	json_t *req = json_loadb((const char *)data, size, 0, &e);
	const char *cmd;
	json_t *args;
	char err[128];
	control_check_request(req, &cmd, &args, err, sizeof(err));
	json_decref(req);
	return 0;
}
