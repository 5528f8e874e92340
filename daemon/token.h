/* SPDX-License-Identifier: MIT */
/* The Target API token: read from target.token_file or systemd's credentials
 * directory (or made by target.oauth and handed in), kept in memory only,
 * re-read on SIGHUP and after a 401. */
#ifndef TPSYNC_TOKEN_H
#define TPSYNC_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

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

/* (Re)loads the token from its file; with target.oauth it does nothing (the
 * token comes through token_set). Returns 0 (value may be NULL when no file is configured
 * or found), or a negative errno when a configured file cannot be read; the old
 * value is kept then. Never logs the token. */
int token_load(struct token *t, const struct config *cfg);
/* Uses value (copied; NULL: none), a token made by target.oauth. Returns 0
 * or -ENOMEM (the old value stays). */
int token_set(struct token *t, const char *value);
/* Where a secret is: the configured file when there is one, else the systemd
 * credential named credential ($CREDENTIALS_DIRECTORY/credential) when systemd
 * passes credentials. Returns true with the path in out, false for neither. */
bool token_secret_path(const char *configured, const char *credential, char *out, size_t size);
/* Reads the secret in the regular file path (never a FIFO: opened without
 * blocking) into *value (malloc'd; NULL when the file is blank), trimmed of
 * surrounding white space, and its stat into sb. Returns 0, -EINVAL (not a
 * regular file, or characters that cannot go into a header), or the errno. */
int token_read_secret(const char *path, char **value, struct stat *sb);
/* True when the token file's modification time differs from the loaded one. */
bool token_changed(const struct token *t);
/* Wipes and frees the value. */
void token_finish(struct token *t);

#endif
