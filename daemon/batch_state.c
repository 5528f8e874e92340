/* SPDX-License-Identifier: MIT */
/* Batch state names. */
#include "batch_state.h"

#include <errno.h>
#include <string.h>

static const char *const names[BATCH_STATE_COUNT] = {
	[BATCH_READY] = "ready",         [BATCH_POSTING] = "posting", [BATCH_SUBMITTED] = "submitted",
	[BATCH_COMPLETE] = "complete",   [BATCH_STUCK] = "stuck",     [BATCH_DEAD] = "dead",
	[BATCH_SPLIT] = "split",         [BATCH_UNCONFIRMED] = "unconfirmed",
};

const char *batch_state_name(enum batch_state state)
{
	return (unsigned)state < BATCH_STATE_COUNT ? names[state] : "?";
}

int batch_state_parse(const char *name, enum batch_state *out)
{
	for (int i = 0; i < BATCH_STATE_COUNT; i++) {
		if (strcmp(names[i], name) == 0) {
			*out = (enum batch_state)i;
			return 0;
		}
	}
	return -EINVAL;
}
