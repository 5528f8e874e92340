/* SPDX-License-Identifier: MIT */
/* Token file handling. The token lives only in this struct and in the
 * Authorization header curl sends; it is wiped when replaced. */
#include "token.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void wipe(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

bool token_secret_path(const char *configured, const char *credential, char *out, size_t size)
{
	const char *creds = getenv("CREDENTIALS_DIRECTORY");
	if (configured)
		snprintf(out, size, "%s", configured);
	else if (creds && *creds)
		snprintf(out, size, "%s/%s", creds, credential);
	else
		return false;
	return true;
}

int token_read_secret(const char *path, char **value, struct stat *sb)
{
	/* O_NONBLOCK: a FIFO put there must not stall the loop; only a regular
	 * file is read. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	char buf[8192];
	ssize_t n = -1;
	int e = 0;
	if (fstat(fd, sb) < 0)
		e = errno;
	else if (!S_ISREG(sb->st_mode))
		e = EINVAL;
	else if ((n = read(fd, buf, sizeof(buf) - 1)) < 0)
		e = errno;
	close(fd);
	if (e || n < 0)
		return e ? -e : -EIO;
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
		buf[--n] = '\0';
	char *start = buf;
	while (*start == ' ' || *start == '\t')
		start++;
	for (char *c = start; *c; c++) {
		if ((unsigned char)*c < 0x21 || (unsigned char)*c > 0x7e) {
			explicit_bzero(buf, sizeof(buf));
			return -EINVAL; /* would break a header line or a form */
		}
	}
	*value = *start ? strdup(start) : NULL;
	int r = *start && !*value ? -ENOMEM : 0;
	explicit_bzero(buf, sizeof(buf));
	return r;
}

int token_load(struct token *t, const struct config *cfg)
{
	if (cfg->target.oauth.is_set)
		return 0; /* made by target.oauth, handed in with token_set */
	char path[4096];
	struct stat sb;
	char *value = NULL;
	int r = token_secret_path(cfg->target.token_file, "target-token", path, sizeof(path)) ?
			token_read_secret(path, &value, &sb) : -ENOENT;
	if (r == -ENOENT && !cfg->target.token_file) {
		/* No credential passed: run without authentication. */
		wipe(t->value);
		t->value = NULL;
		t->path[0] = '\0';
		return 0;
	}
	if (r < 0)
		return r;
	wipe(t->value);
	t->value = value;
	snprintf(t->path, sizeof(t->path), "%s", path);
	t->mtime_ns = (long long)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec;
	t->mode = (unsigned)(sb.st_mode & 07777);
	return 0;
}

int token_set(struct token *t, const char *value)
{
	char *copy = value ? strdup(value) : NULL;
	if (value && !copy)
		return -ENOMEM;
	wipe(t->value);
	t->value = copy;
	t->path[0] = '\0';
	t->mode = 0;
	return 0;
}

bool token_is_exposed(const struct token *t)
{
	return t->value && (t->mode & 077) != 0;
}

bool token_changed(const struct token *t)
{
	struct stat sb;
	if (!t->path[0] || stat(t->path, &sb) < 0)
		return false;
	return (long long)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec != t->mtime_ns;
}

void token_finish(struct token *t)
{
	wipe(t->value);
	t->value = NULL;
}
