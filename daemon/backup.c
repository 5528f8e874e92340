/* SPDX-License-Identifier: MIT */
/* The online copy, STEP_PAGES pages per turn of the loop. The copy is made
 * through the daemon's own connection, so whatever the daemon commits
 * between two steps is written into the copy as well, and what is finally
 * renamed into place is one consistent state of the database. */
#include "backup.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

#define STEP_PAGES 256     /* 2 MiB of 8 KiB pages: a few ms per turn */
#define BUSY_RETRY_MS 100

enum backup_state { B_NONE, B_RUNNING, B_DONE, B_FAILED };
static const char *const state_names[] = { "none", "running", "done", "failed" };

struct backup {
	struct event_base *base;
	sqlite3 *src;
	struct event *step;
	enum backup_state state;
	sqlite3 *dst;
	sqlite3_backup *bk;
	char path[PATH_MAX];
	char tmp[PATH_MAX];
	int pages_done, pages_total;
	int64_t bytes, started_at, finished_at;
	char error[512];
};

static void on_step(evutil_socket_t fd, short what, void *arg);

struct backup *backup_create(struct event_base *base, sqlite3 *db)
{
	struct backup *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->base = base;
	b->src = db;
	b->step = evtimer_new(base, on_step, b);
	if (!b->step) {
		free(b);
		return NULL;
	}
	return b;
}

/* Closes the copy's connection and removes its partial file. */
static void abandon(struct backup *b)
{
	if (b->bk)
		sqlite3_backup_finish(b->bk);
	b->bk = NULL;
	if (b->dst)
		sqlite3_close(b->dst);
	b->dst = NULL;
	if (b->tmp[0] && unlink(b->tmp) < 0 && errno != ENOENT)
		log_warn("msg=\"cannot remove a partial backup\" path=\"%s\" error=\"%s\"", b->tmp, strerror(errno));
	b->tmp[0] = '\0';
}

static void fail(struct backup *b, const char *fmt, const char *detail)
{
	snprintf(b->error, sizeof(b->error), fmt, detail);
	log_err("msg=\"backup failed\" path=\"%s\" error=\"%s\"", b->path, b->error);
	abandon(b);
	b->state = B_FAILED;
	b->finished_at = clock_wall_ms();
}

/* Makes the complete copy durable under its final name. Returns 0 or a
 * negative errno (the reason in b->error). */
static int seal(struct backup *b)
{
	int fd = open(b->tmp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat sb;
	if (fd < 0 || fstat(fd, &sb) < 0 || fsync(fd) < 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return -e;
	}
	close(fd);
	b->bytes = sb.st_size;
	if (rename(b->tmp, b->path) < 0)
		return -errno;
	b->tmp[0] = '\0';
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", b->path);
	char *slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0) {
		int e = errno;
		if (dfd >= 0)
			close(dfd);
		return -e;
	}
	close(dfd);
	return 0;
}

static void on_step(evutil_socket_t fd, short what, void *arg)
{
	struct backup *b = arg;
	int rc = sqlite3_backup_step(b->bk, STEP_PAGES);
	b->pages_total = sqlite3_backup_pagecount(b->bk);
	b->pages_done = b->pages_total - sqlite3_backup_remaining(b->bk);
	struct timeval next = { 0, 0 };
	if (rc == SQLITE_OK || rc == SQLITE_BUSY || rc == SQLITE_LOCKED) {
		if (rc != SQLITE_OK)
			next.tv_usec = BUSY_RETRY_MS * 1000;
		if (evtimer_add(b->step, &next) < 0)
			fail(b, "cannot arm the backup timer%s", "");
		return;
	}
	if (rc != SQLITE_DONE) {
		fail(b, "%s", sqlite3_errstr(rc));
		return;
	}
	rc = sqlite3_backup_finish(b->bk);
	b->bk = NULL;
	if (rc != SQLITE_OK) {
		fail(b, "%s", sqlite3_errmsg(b->dst));
		return;
	}
	rc = sqlite3_close(b->dst);
	b->dst = NULL;
	if (rc != SQLITE_OK) {
		fail(b, "closing the copy: %s", sqlite3_errstr(rc));
		return;
	}
	int r = seal(b);
	if (r < 0) {
		fail(b, "making the copy durable: %s", strerror(-r));
		return;
	}
	b->state = B_DONE;
	b->finished_at = clock_wall_ms();
	log_info("msg=\"backup written\" path=\"%s\" bytes=%lld pages=%d ms=%lld", b->path, (long long)b->bytes,
		 b->pages_total, (long long)(b->finished_at - b->started_at));
}

int backup_start(struct backup *b, const char *path, char *err, size_t size)
{
	if (b->state == B_RUNNING) {
		snprintf(err, size, "a backup to %s is under way", b->path);
		return -EBUSY;
	}
	if (path[0] != '/' || strlen(path) + 5 > sizeof(b->path)) {
		snprintf(err, size, "the backup path must be absolute");
		return -EINVAL;
	}
	struct stat sb;
	if (lstat(path, &sb) == 0) {
		snprintf(err, size, "%s exists; a backup never overwrites a file", path);
		return -EEXIST;
	}
	snprintf(b->path, sizeof(b->path), "%s", path);
	snprintf(b->tmp, sizeof(b->tmp), "%s.tmp", path);
	/* A new regular file of ours: never a FIFO, a device or a link's target. */
	int fd = open(b->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;
		snprintf(err, size, "cannot create %s: %s", b->tmp, strerror(e));
		b->tmp[0] = '\0';
		return -e;
	}
	close(fd);
	b->state = B_RUNNING;
	b->error[0] = '\0';
	b->pages_done = b->pages_total = 0;
	b->bytes = 0;
	b->started_at = clock_wall_ms();
	b->finished_at = 0;
	int rc = sqlite3_open_v2(b->tmp, &b->dst, SQLITE_OPEN_READWRITE, NULL);
	/* The copy is durable only once complete: one fsync in seal(), not one
	 * (and a journal) per step on the loop. A crash leaves only FILE.tmp. */
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(b->dst, "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF", NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		b->bk = sqlite3_backup_init(b->dst, "main", b->src, "main");
	if (!b->bk) {
		snprintf(err, size, "cannot start the backup: %s", b->dst ? sqlite3_errmsg(b->dst) : sqlite3_errstr(rc));
		fail(b, "%s", err);
		return -EIO;
	}
	struct timeval now = { 0, 0 };
	if (evtimer_add(b->step, &now) < 0) {
		snprintf(err, size, "cannot arm the backup timer");
		fail(b, "%s", err);
		return -EIO;
	}
	log_info("msg=\"backup started\" path=\"%s\"", b->path);
	return 0;
}

json_t *backup_status(struct backup *b)
{
	json_t *o = json_pack("{s:s, s:i, s:i, s:I, s:I, s:I}", "state", state_names[b->state], "pages_done",
			      b->pages_done, "pages_total", b->pages_total, "bytes", (json_int_t)b->bytes, "started_at",
			      (json_int_t)b->started_at, "finished_at", (json_int_t)b->finished_at);
	if (o && b->state != B_NONE)
		json_object_set_new(o, "path", json_string(b->path));
	if (o && b->error[0])
		json_object_set_new(o, "error", json_string(b->error));
	return o;
}

void backup_destroy(struct backup *b)
{
	if (!b)
		return;
	if (b->state == B_RUNNING)
		log_warn("msg=\"backup abandoned: the daemon is stopping\" path=\"%s\"", b->path);
	abandon(b);
	event_free(b->step);
	free(b);
}
