/* SPDX-License-Identifier: MIT */
/* The control protocol's request checks, apart from the server so they can be
 * unit-tested and fuzzed alone. */
#include <errno.h>
#include <stdio.h>

#include "control.h"

int control_check_request(json_t *req, const char **cmd, json_t **args, char *err, size_t size)
{
	if (!json_is_object(req)) {
		snprintf(err, size, "malformed request: not a JSON object");
		return -EINVAL;
	}
	json_t *v = json_object_get(req, "v");
	if (v && (!json_is_integer(v) || json_integer_value(v) != CONTROL_PROTOCOL_VERSION)) {
		snprintf(err, size, "unsupported protocol version (this daemon speaks %d)", CONTROL_PROTOCOL_VERSION);
		return -EINVAL;
	}
	*cmd = json_string_value(json_object_get(req, "cmd"));
	*args = json_object_get(req, "args");
	if (!*cmd) {
		snprintf(err, size, "request has no \"cmd\"");
		return -EINVAL;
	}
	if (*args && !json_is_object(*args)) {
		snprintf(err, size, "\"args\" must be an object");
		return -EINVAL;
	}
	return 0;
}

