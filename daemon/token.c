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

int token_load(struct token *t, const struct config *cfg)
{
	char path[4096] = "";
	const char *creds = getenv("CREDENTIALS_DIRECTORY");
	if (cfg->target.token_file)
		snprintf(path, sizeof(path), "%s", cfg->target.token_file);
	else if (creds)
		snprintf(path, sizeof(path), "%s/target-token", creds);
	if (!path[0]) {
		wipe(t->value);
		t->value = NULL;
		t->path[0] = '\0';
		return 0;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int r = -errno;
		if (r == -ENOENT && !cfg->target.token_file) {
			/* No credential passed: run without authentication. */
			wipe(t->value);
			t->value = NULL;
			t->path[0] = '\0';
			return 0;
		}
		return r;
	}
	struct stat sb;
	char buf[8192];
	ssize_t n = -1;
	if (fstat(fd, &sb) == 0)
		n = read(fd, buf, sizeof(buf) - 1);
	int e = errno;
	close(fd);
	if (n < 0)
		return -e;
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
		buf[--n] = '\0';
	char *start = buf;
	while (*start == ' ' || *start == '\t')
		start++;
	for (char *c = start; *c; c++) {
		if ((unsigned char)*c < 0x21 || (unsigned char)*c > 0x7e) {
			explicit_bzero(buf, sizeof(buf));
			return -EINVAL; /* would break the header line */
		}
	}
	char *value = *start ? strdup(start) : NULL;
	explicit_bzero(buf, sizeof(buf));
	if (*start && !value)
		return -ENOMEM;
	wipe(t->value);
	t->value = value;
	snprintf(t->path, sizeof(t->path), "%s", path);
	t->mtime_ns = (long long)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec;
	t->mode = (unsigned)(sb.st_mode & 07777);
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
