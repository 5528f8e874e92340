/* SPDX-License-Identifier: MIT */
/* The Target API token: read from target.token_file or systemd's credentials
 * directory, kept in memory only, re-read on SIGHUP and after a 401. */
#ifndef TPSYNC_TOKEN_H
#define TPSYNC_TOKEN_H

#include <stdbool.h>

#include "config.h"

struct token {
	char *value;     /* NULL: send no Authorization header */
	char path[4096]; /* where it came from; "" if nowhere */
	long long mtime_ns;
	unsigned mode;   /* the file's permission bits, when loaded from one */
};

/* True when the loaded token's file may be read by its group or others (ssh
 * refuses such key files; tpsyncd warns). */
bool token_is_exposed(const struct token *t);

/* (Re)loads the token. Returns 0 (value may be NULL when no file is configured
 * or found), or a negative errno when a configured file cannot be read; the old
 * value is kept then. Never logs the token. */
int token_load(struct token *t, const struct config *cfg);
/* True when the token file's modification time differs from the loaded one. */
bool token_changed(const struct token *t);
/* Wipes and frees the value. */
void token_finish(struct token *t);

#endif
