/* SPDX-License-Identifier: MIT */
/* File ingestion in slices. A file goes through: identify (size, mtime, content
 * hash) -> [strict: validate every row] -> stage slices, each one transaction that
 * also moves the file's checkpoint -> done (recorded durably) -> rejects file and
 * archive/delete. After a crash a file resumes at its last checkpoint, so every
 * row is staged exactly once; a file recorded done is only archived again. */
#include "ingest.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "attrset.h"
#include "clock.h"
#include "hash.h"
#include "crash.h"
#include "csv.h"
#include "log.h"
#include "stage.h"
#include "target.h"

#define SLICE_ROWS 5000
#define SLICE_MS 25
#define HASH_CHUNK (4 << 20)
#define MAX_FIELD (1 << 20)
#define MAX_ID_LEN 128
#define STRICT_REPORT_MAX 100

/* A file's steps. PH_HEADER maps the header row and positions the reader for
 * the step in job.after_header; it runs again when retried, so a state database
 * that was busy while attribute names were recorded costs a retry, not the file. */
enum phase { PH_OPEN, PH_HASH, PH_HEADER, PH_VALIDATE, PH_STAGE, PH_FINISH };

struct job {
	struct ingest_request req;
	struct job *next;
	enum phase phase;
	enum phase after_header; /* PH_VALIDATE or PH_STAGE */
	off_t start_offset;      /* where PH_HEADER positions the reader (0: the first row) */
	uint64_t start_line;
	int fd;
	struct stat sb;
	struct csv_reader *csv;
	int64_t file_id;
	uint64_t hash;        /* of the whole file, before it is staged */
	struct hasher hasher;
	off_t hashed;
	int64_t hold_base;    /* a held read (snapshot): its rows' pending_seq from here; 0: none */
	size_t n_cols;
	uint32_t *col_attr; /* attribute id per column; 0: not sent */
	size_t id_col;
	int64_t rows, staged, rejected;
	int64_t known;      /* rows whose profile this source staged before */
	int64_t invalid;    /* strict validation: rows found bad */
	bool is_queued_again; /* the file changed while it was being read */
	bool is_torn;         /* it changed under the reader: this read does not count */
	bool is_restart;      /* a held read lost a slice to a database error: read it again whole */
	off_t committed_offset;  /* where the last committed slice ended */
	uint64_t committed_line;
	struct buf strict_report;
};

struct ingest {
	struct event_base *base;
	struct store *st;
	const struct ingest_listener *l;
	void *arg;
	const char *rejects_dir; /* NULL: beside the file (a dry run writes them to its directory) */
	bool is_stopping;
	char held_back[512];     /* why ingestion is waiting to retry; "" when it is not */
	struct event *tick;
	struct event *retry;
	struct job *head, *tail, *active;
	bool is_paused;
	struct stage sg;
	struct attrset incoming;
	char *hash_buf;
};

static void progress(struct ingest *ig)
{
	if (ig->l && ig->l->progress)
		ig->l->progress(ig->arg);
}

/* The next slice runs from a zero-delay timer, not event_active: libevent runs
 * events activated from a callback in the same pass, without polling for
 * anything else, so a file whose slices stage nothing (an unchanged snapshot)
 * would hold the loop from its first row to its last. A timer waits for the
 * next pass, after the control socket and curl's sockets were polled. */
static void schedule(struct ingest *ig)
{
	static const struct timeval now = { 0, 0 };
	if (!ig->is_paused && (ig->active || ig->head) && evtimer_add(ig->tick, &now) < 0)
		log_err("msg=\"cannot schedule ingestion\"");
}

static void job_free(struct job *j)
{
	if (!j)
		return;
	if (j->fd >= 0)
		close(j->fd);
	csv_destroy(j->csv);
	free(j->col_attr);
	buf_finish(&j->strict_report);
	free(j->req.path);
	free(j);
}

static const char *base_name(const char *path)
{
	const char *slash = strrchr(path, '/');
	return slash ? slash + 1 : path;
}

/* Makes dir/sub (mode 0750) if missing and returns it in out. */
static int ensure_subdir(const char *file_path, const char *sub, char *out, size_t size)
{
	const char *slash = strrchr(file_path, '/');
	int n = slash ? snprintf(out, size, "%.*s/%s", (int)(slash - file_path), file_path, sub)
		      : snprintf(out, size, "%s", sub);
	if (n < 0 || (size_t)n >= size)
		return -ENAMETOOLONG;
	if (mkdir(out, 0750) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* A destination in dir for name that does not exist yet. */
static int free_name(const char *dir, const char *name, const char *suffix, char *out, size_t size)
{
	for (int i = 0; i < 1000; i++) {
		int n = i == 0 ? snprintf(out, size, "%s/%s%s", dir, name, suffix)
			       : snprintf(out, size, "%s/%s.%d%s", dir, name, i, suffix);
		if (n < 0 || (size_t)n >= size)
			return -ENAMETOOLONG;
		if (access(out, F_OK) < 0 && errno == ENOENT)
			return 0;
	}
	return -EEXIST;
}

static void csv_quote(FILE *f, const char *s, size_t len)
{
	fputc('"', f);
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '"')
			fputc('"', f);
		fputc(s[i], f);
	}
	fputc('"', f);
}

/* Writes NAME.rejects.csv into dir from the rejects table. */
static int write_rejects(struct ingest *ig, struct job *j, const char *dir)
{
	char path[4096], stem[1024];
	/* export.csv -> export.rejects.csv */
	const char *name = base_name(j->req.path);
	const char *dot = strrchr(name, '.');
	snprintf(stem, sizeof(stem), "%.*s", dot && dot != name ? (int)(dot - name) : (int)strlen(name), name);
	int r = free_name(dir, stem, ".rejects.csv", path, sizeof(path));
	if (r < 0)
		return r;
	FILE *f = fopen(path, "w");
	if (!f)
		return -errno;
	fputs("line,reason,row\n", f);
	sqlite3_stmt *s = store_stmt(ig->st,
				     "SELECT line, reason, raw FROM rejects WHERE file_id = ? ORDER BY line");
	if (!s) {
		fclose(f);
		return -EIO;
	}
	sqlite3_bind_int64(s, 1, j->file_id);
	while (sqlite3_step(s) == SQLITE_ROW) {
		fprintf(f, "%lld,", (long long)sqlite3_column_int64(s, 0));
		csv_quote(f, (const char *)sqlite3_column_text(s, 1), (size_t)sqlite3_column_bytes(s, 1));
		fputc(',', f);
		csv_quote(f, sqlite3_column_blob(s, 2), (size_t)sqlite3_column_bytes(s, 2));
		fputc('\n', f);
	}
	sqlite3_reset(s);
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		r = -errno;
		fclose(f);
		return r;
	}
	return fclose(f) == 0 ? 0 : -errno;
}

/* Moves the file to failed/ with a NAME.error note. */
static void fail_file(struct ingest *ig, struct job *j, const char *reason)
{
	char dir[4096], dest[4096], note[4200];
	const char *name = base_name(j->req.path);
	log_err("msg=\"file failed\" source=%s file=\"%s\" reason=\"%s\"", j->req.src->name, j->req.path, reason);
	snprintf(j->req.stats->last_error, sizeof(j->req.stats->last_error), "%s: %s", name, reason);
	j->req.stats->files_failed++;
	if (j->file_id > 0) {
		sqlite3_stmt *s = store_stmt(ig->st,
					     "UPDATE ingested_files SET state = 'failed', error = ?2, finished_at = ?3 WHERE id = ?1");
		if (s) {
			sqlite3_bind_int64(s, 1, j->file_id);
			sqlite3_bind_text(s, 2, reason, -1, SQLITE_STATIC);
			sqlite3_bind_int64(s, 3, clock_wall_ms());
			if (sqlite3_step(s) != SQLITE_DONE)
				log_warn("msg=\"cannot record failed file\" error=\"%s\"", sqlite3_errmsg(ig->st->db));
			sqlite3_reset(s);
		}
	}
	if (j->req.after == INGEST_KEEP)
		return; /* snapshots stay where their exporter put them */
	if (ensure_subdir(j->req.path, "failed", dir, sizeof(dir)) < 0 ||
	    free_name(dir, name, "", dest, sizeof(dest)) < 0) {
		log_err("msg=\"cannot make failed/ directory\" file=\"%s\"", j->req.path);
		return;
	}
	if (rename(j->req.path, dest) < 0) {
		log_err("msg=\"cannot move file to failed/\" file=\"%s\" error=\"%s\"", j->req.path, strerror(errno));
		return;
	}
	snprintf(note, sizeof(note), "%s.error", dest);
	FILE *f = fopen(note, "w");
	if (f) {
		fprintf(f, "%s\n", reason);
		if (j->strict_report.len)
			fwrite(j->strict_report.data, 1, j->strict_report.len, f);
		if (fclose(f) != 0)
			log_warn("msg=\"cannot write error note\" file=\"%s\"", note);
	}
}

/* Archives or deletes a file whose rows are durable, writing its rejects first. */
static void dispose_file(struct ingest *ig, struct job *j)
{
	char dir[4096], dest[4096];
	const char *name = base_name(j->req.path);
	int r = 0;
	if (j->req.after == INGEST_KEEP) {
		if (j->rejected > 0) {
			char parent[4096];
			snprintf(parent, sizeof(parent), "%s", j->req.path);
			r = write_rejects(ig, j, ig->rejects_dir ? ig->rejects_dir : dirname(parent));
		}
	} else {
		r = ensure_subdir(j->req.path, "archive", dir, sizeof(dir));
		if (r == 0 && j->rejected > 0)
			r = write_rejects(ig, j, dir);
		if (r < 0)
			log_warn("msg=\"cannot write rejects file\" file=\"%s\" error=\"%s\"", j->req.path, strerror(-r));
		if (j->req.after == INGEST_DELETE) {
			if (unlink(j->req.path) < 0)
				r = -errno;
		} else if ((r = free_name(dir, name, "", dest, sizeof(dest))) == 0 && rename(j->req.path, dest) < 0) {
			r = -errno;
		}
	}
	if (r < 0)
		log_err("msg=\"cannot archive file\" file=\"%s\" error=\"%s\"", j->req.path, strerror(-r));
}

/* Maps the header row to attribute ids. Returns 0, -EINVAL with why in reason
 * (the file cannot be used), or -EIO / -ENOMEM (retry later). */
static int map_header(struct ingest *ig, struct job *j, const struct csv_record *h, char *reason, size_t size)
{
	const struct source_config *src = j->req.src;
	if (h->error) {
		snprintf(reason, size, "header (line %llu): %s", (unsigned long long)h->line, h->error);
		return -EINVAL;
	}
	j->n_cols = h->n_fields;
	free(j->col_attr);
	j->col_attr = calloc(h->n_fields, sizeof(*j->col_attr));
	if (!j->col_attr)
		return -ENOMEM;
	bool have_id = false;
	for (size_t c = 0; c < h->n_fields; c++) {
		const char *col = h->fields[c];
		if (strcmp(col, src->id_column) == 0) {
			if (have_id) {
				snprintf(reason, size, "header: id column \"%s\" appears twice", col);
				return -EINVAL;
			}
			have_id = true;
			j->id_col = c;
			continue;
		}
		const char *attr = config_column_attr(src, col);
		if (!attr)
			continue;
		if (!target_attr_name_valid(attr, strlen(attr))) {
			snprintf(reason, size,
				 "header: column %zu \"%.64s\" is not a valid attribute name (letters, digits, "
				 "'_', '-', '.'); rename it with columns: or exclude it",
				 c + 1, attr);
			return -EINVAL;
		}
		int64_t id = store_attr_id(ig->st, attr, strlen(attr));
		if (id < 0) {
			snprintf(reason, size, "cannot record attribute name: %s", sqlite3_errmsg(ig->st->db));
			return -EIO;
		}
		for (size_t p = 0; p < c; p++) {
			if (j->col_attr[p] == (uint32_t)id) {
				snprintf(reason, size, "header: attribute \"%s\" comes from two columns", attr);
				return -EINVAL;
			}
		}
		j->col_attr[c] = (uint32_t)id;
	}
	if (!have_id) {
		snprintf(reason, size, "header: no id column \"%s\"", src->id_column);
		return -EINVAL;
	}
	return 0;
}

/* Checks one record and fills ig->incoming. Returns NULL if good, else why not. */
static const char *check_row(struct ingest *ig, struct job *j, const struct csv_record *rec)
{
	static char why[128];
	if (rec->error)
		return rec->error;
	if (rec->n_fields != j->n_cols) {
		snprintf(why, sizeof(why), "row has %zu fields, the header has %zu", rec->n_fields, j->n_cols);
		return why;
	}
	const char *bad_id = target_profile_id_problem(rec->fields[j->id_col], rec->lens[j->id_col]);
	if (bad_id)
		return bad_id;
	attrset_clear(&ig->incoming);
	for (size_t c = 0; c < rec->n_fields; c++) {
		if (!j->col_attr[c] || rec->lens[c] == 0)
			continue; /* empty means "no change" to Target */
		if (attrset_put(&ig->incoming, j->col_attr[c], rec->fields[c], (uint32_t)rec->lens[c]) < 0)
			return "out of memory";
	}
	return NULL;
}

static int record_reject(struct ingest *ig, struct job *j, const struct csv_record *rec, const char *why)
{
	j->rejected++;
	j->req.stats->rows_rejected++;
	log_debug("msg=\"row rejected\" source=%s file=\"%s\" line=%llu reason=\"%s\"", j->req.src->name,
		  base_name(j->req.path), (unsigned long long)rec->line, why);
	sqlite3_stmt *s = store_stmt(ig->st, "INSERT INTO rejects (file_id, line, reason, raw) VALUES (?, ?, ?, ?)");
	if (!s)
		return -EIO;
	sqlite3_bind_int64(s, 1, j->file_id);
	sqlite3_bind_int64(s, 2, (int64_t)rec->line);
	sqlite3_bind_text(s, 3, why, -1, SQLITE_STATIC);
	sqlite3_bind_blob(s, 4, rec->raw, (int)rec->raw_len, SQLITE_STATIC);
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

static int open_csv(struct job *j, char *reason, size_t size)
{
	csv_destroy(j->csv);
	j->csv = csv_create(j->fd, j->req.src->delimiter, MAX_FIELD);
	if (!j->csv)
		return -ENOMEM;
	int r = csv_seek(j->csv, 0, 1);
	if (r < 0)
		snprintf(reason, size, "cannot rewind: %s", strerror(-r));
	return r;
}

/* Reads the header and positions the reader at the first row (or checkpoint). */
static int start_rows(struct ingest *ig, struct job *j, off_t offset, uint64_t line, char *reason, size_t size)
{
	struct csv_record h;
	int r = open_csv(j, reason, size);
	if (r < 0)
		return r;
	r = csv_next(j->csv, &h);
	if (r < 0) {
		snprintf(reason, size, "read error: %s", strerror(-r));
		return r;
	}
	if (r == 0) {
		snprintf(reason, size, "empty file: no header row");
		return -EINVAL;
	}
	if ((r = map_header(ig, j, &h, reason, size)) < 0)
		return r;
	j->committed_offset = h.end_offset;
	j->committed_line = h.line + 1;
	if (offset > 0) {
		if ((r = csv_seek(j->csv, offset, line)) < 0)
			snprintf(reason, size, "cannot seek to checkpoint: %s", strerror(-r));
		j->committed_offset = offset;
		j->committed_line = line;
	}
	return r;
}

static int64_t mtime_ms(const struct stat *sb)
{
	return (int64_t)sb->st_mtim.tv_sec * 1000 + sb->st_mtim.tv_nsec / 1000000;
}

/* Opens the file without ever blocking the loop: O_NONBLOCK, so a FIFO renamed
 * over it (or any other special file) does not wait for a writer, then fstat
 * refuses what is not a regular file. Returns 1 to go on, 0 if the file is gone,
 * -EMFILE / -ENFILE (out of descriptors: retry later), or another negative errno. */
static int phase_open(struct ingest *ig, struct job *j, char *reason, size_t size)
{
	j->fd = open(j->req.path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (j->fd < 0) {
		int e = errno;
		if (e == ENOENT)
			return 0; /* gone before we got to it: nothing to do */
		snprintf(reason, size, "cannot open: %s", strerror(e));
		return -e;
	}
	if (fstat(j->fd, &j->sb) < 0) {
		int e = errno;
		snprintf(reason, size, "cannot stat: %s", strerror(e));
		return -e;
	}
	if (!S_ISREG(j->sb.st_mode)) {
		snprintf(reason, size, "not a regular file (%s)", S_ISFIFO(j->sb.st_mode) ? "a FIFO" : "a special file");
		return -EINVAL;
	}
	/* Regular files ignore O_NONBLOCK; clear it anyway, for clarity. */
	int fl = fcntl(j->fd, F_GETFL);
	if (fl >= 0)
		fcntl(j->fd, F_SETFL, fl & ~O_NONBLOCK);
	hasher_init(&j->hasher);
	j->hashed = 0;
	j->phase = PH_HASH;
	return 1;
}

/* Resumes or disposes of a file seen before: the same name, size, mtime and
 * content. Returns 1 when it was one, 0 when the file is new, or -EIO. */
static int seen_before(struct ingest *ig, struct job *j, const char *hex)
{
	sqlite3_stmt *s = store_prepare(ig->st, "SELECT id, state, offset, line, rows, staged, rejected, known, hold_seq"
						" FROM ingested_files WHERE source = ? AND name = ? AND size = ? AND mtime = ?"
						" AND hash = ? AND state IN ('done', 'staging') ORDER BY id DESC LIMIT 1",
					"ttiit", j->req.src->name, base_name(j->req.path), (int64_t)j->sb.st_size,
					mtime_ms(&j->sb), hex);
	if (!s)
		return -EIO;
	int rc = sqlite3_step(s);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(s);
		return rc == SQLITE_DONE ? 0 : -EIO;
	}
	bool is_done = strcmp((const char *)sqlite3_column_text(s, 1), "done") == 0;
	j->file_id = sqlite3_column_int64(s, 0);
	j->rows = sqlite3_column_int64(s, 4);
	j->staged = sqlite3_column_int64(s, 5);
	j->rejected = sqlite3_column_int64(s, 6);
	j->known = sqlite3_column_int64(s, 7);
	off_t offset = sqlite3_column_int64(s, 2);
	uint64_t line = (uint64_t)sqlite3_column_int64(s, 3);
	sqlite3_reset(s);
	if (is_done) {
		log_info("msg=\"file already ingested; disposing of it\" source=%s file=\"%s\"", j->req.src->name,
			 j->req.path);
		j->phase = PH_FINISH;
		return 1;
	}
	log_info("msg=\"resuming file\" source=%s file=\"%s\" offset=%lld line=%llu", j->req.src->name, j->req.path,
		 (long long)offset, (unsigned long long)line);
	j->phase = PH_HEADER;
	j->after_header = PH_STAGE;
	j->start_offset = offset;
	j->start_line = line;
	return 1;
}

static int phase_hash(struct ingest *ig, struct job *j, char *reason, size_t size)
{
	ssize_t n = pread(j->fd, ig->hash_buf, HASH_CHUNK, j->hashed);
	if (n < 0) {
		snprintf(reason, size, "read error: %s", strerror(errno));
		return -errno;
	}
	hasher_update(&j->hasher, ig->hash_buf, (size_t)n);
	j->hashed += n;
	if (n > 0)
		return 1;
	j->hash = hasher_value(&j->hasher);
	char hex[17];
	snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)j->hash);
	/* A file is known by its name, size and mtime and its content: an export
	 * copied over yesterday's with cp -p is a different file. */
	int r = j->req.is_held ? 0 : seen_before(ig, j, hex);
	if (r != 0) {
		if (r < 0)
			snprintf(reason, size, "state database: %s", store_error(ig->st));
		return r;
	}
	/* The same content as the source's latest state (a re-dropped export, an
	 * unchanged snapshot): nothing new in it. Only when the latest file of the
	 * source was read whole: after A, then B cut short by a stop, a second A
	 * carries changes back and is staged. (A snapshot's unfinished read is
	 * undone at start, so it never counts.) */
	sqlite3_stmt *s = store_prepare(ig->st, "SELECT name, hash, size, state FROM ingested_files WHERE source = ?"
						" AND state IN ('done', 'staging') ORDER BY id DESC LIMIT 1",
					"t", j->req.src->name);
	if (!s)
		return -EIO;
	bool same = sqlite3_step(s) == SQLITE_ROW && sqlite3_column_int64(s, 2) == (int64_t)j->sb.st_size &&
		    strcmp((const char *)sqlite3_column_text(s, 3), "done") == 0 && sqlite3_column_text(s, 1) &&
		    strcmp((const char *)sqlite3_column_text(s, 1), hex) == 0;
	if (same)
		log_info("msg=\"file has the content of one already ingested; nothing staged\" source=%s "
			 "file=\"%s\" same_as=\"%s\"", j->req.src->name, j->req.path, sqlite3_column_text(s, 0));
	sqlite3_reset(s);
	if (store_run(ig->st, "INSERT INTO ingested_files (source, name, size, mtime, hash, state, started_at)"
			      " VALUES (?, ?, ?, ?, ?, ?, ?)", "ttiitti", j->req.src->name, base_name(j->req.path),
		      (int64_t)j->sb.st_size, mtime_ms(&j->sb), hex, same ? "done" : "staging", clock_wall_ms()) < 0) {
		snprintf(reason, size, "cannot record file: %s", store_error(ig->st));
		return -EIO;
	}
	j->file_id = sqlite3_last_insert_rowid(ig->st->db);
	j->rows = j->staged = j->rejected = j->known = 0;
	if (same) {
		j->phase = PH_FINISH;
		return 1;
	}
	j->phase = PH_HEADER;
	j->after_header = j->req.src->strict ? PH_VALIDATE : PH_STAGE;
	j->start_offset = 0;
	j->start_line = 1;
	return 1;
}

/* Maps the header and positions the reader for the next step. Returns 1 to go
 * on, -EINVAL (the file cannot be used), or -EIO / -ENOMEM (retry later). */
static int phase_header(struct ingest *ig, struct job *j, char *reason, size_t size)
{
	int r = start_rows(ig, j, j->start_offset, j->start_line ? j->start_line : 1, reason, size);
	if (r < 0)
		return r == -EIO || r == -ENOMEM ? r : -EINVAL;
	j->phase = j->after_header;
	return 1;
}

/* strict: every row must be good before any is staged. */
static int phase_validate(struct ingest *ig, struct job *j, char *reason, size_t size)
{
	int64_t start = clock_mono_ms();
	for (int n = 0; n < SLICE_ROWS * 4 && clock_mono_ms() - start < SLICE_MS; n++) {
		struct csv_record rec;
		int r = csv_next(j->csv, &rec);
		if (r < 0) {
			snprintf(reason, size, "read error: %s", strerror(-r));
			return r;
		}
		if (r == 0) {
			if (j->invalid > 0) {
				snprintf(reason, size, "strict source: %lld bad row(s); the whole file is rejected",
					 (long long)j->invalid);
				return -EINVAL;
			}
			j->phase = PH_HEADER;
			j->after_header = PH_STAGE;
			j->start_offset = 0;
			j->start_line = 1;
			return 1;
		}
		const char *why = check_row(ig, j, &rec);
		if (why) {
			j->invalid++;
			if (j->invalid <= STRICT_REPORT_MAX) {
				char line[256];
				int len = snprintf(line, sizeof(line), "line %llu: %s\n", (unsigned long long)rec.line, why);
				if (buf_append(&j->strict_report, line, (size_t)len) < 0)
					return -ENOMEM;
			}
		}
	}
	return 1;
}

static int update_checkpoint(struct ingest *ig, struct job *j, off_t offset, uint64_t line, bool done)
{
	sqlite3_stmt *s = store_stmt(ig->st,
				     "UPDATE ingested_files SET offset = ?2, line = ?3, rows = ?4, staged = ?5, rejected = ?6,"
				     " state = ?7, finished_at = ?8, known = ?9, missing = ?10, hold_seq = ?11 WHERE id = ?1");
	if (!s)
		return -EIO;
	sqlite3_bind_int64(s, 1, j->file_id);
	sqlite3_bind_int64(s, 2, (int64_t)offset);
	sqlite3_bind_int64(s, 3, (int64_t)line);
	sqlite3_bind_int64(s, 4, j->rows);
	sqlite3_bind_int64(s, 5, j->staged);
	sqlite3_bind_int64(s, 6, j->rejected);
	sqlite3_bind_text(s, 7, done ? "done" : "staging", -1, SQLITE_STATIC);
	if (done)
		sqlite3_bind_int64(s, 8, clock_wall_ms());
	sqlite3_bind_int64(s, 9, j->known);
	if (j->hold_base && !done)
		sqlite3_bind_int64(s, 11, j->hold_base);
	if (done && j->req.src->type == SOURCE_SNAPSHOT) {
		/* The source's profiles that this version no longer has. Target cannot
		 * clear them, so they are only counted (tpsyncctl sources). */
		int64_t total = stage_source_profiles(ig->st, j->req.src->name);
		if (total < 0)
			return -EIO;
		j->req.stats->profiles_missing = total > j->known ? total - j->known : 0;
		sqlite3_bind_int64(s, 10, j->req.stats->profiles_missing);
	}
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

/* Commits a tiny write with synchronous=FULL: the WAL is fsynced, which makes the
 * file's "done" record and every slice before it durable before the file is
 * archived or deleted. */
static int sync_done(struct ingest *ig, struct job *j)
{
	sqlite3_stmt *s = store_stmt(ig->st, "UPDATE ingested_files SET finished_at = ?2 WHERE id = ?1");
	if (!s)
		return -EIO;
	sqlite3_bind_int64(s, 1, j->file_id);
	sqlite3_bind_int64(s, 2, clock_wall_ms());
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

/* True when the read that just ended saw one version of the file: the bytes
 * read hash as the file did before staging began, and the file is the same
 * inode with the same size and mtime. A resumed read (not from the first
 * byte) cannot be checked this way and counts as whole. */
static bool read_whole(struct job *j)
{
	uint64_t hash, bytes;
	if (!csv_content_hash(j->csv, &hash, &bytes))
		return true;
	struct stat now;
	return hash == j->hash && bytes == (uint64_t)j->sb.st_size && fstat(j->fd, &now) == 0 &&
	       now.st_ino == j->sb.st_ino && now.st_size == j->sb.st_size && mtime_ms(&now) == mtime_ms(&j->sb);
}

/* One slice: a transaction of up to SLICE_ROWS rows or SLICE_MS. Returns 1 to go
 * on, -EIO/-ENOSPC to retry the slice later, other negatives to fail the file. */
static int phase_stage(struct ingest *ig, struct job *j, char *reason, size_t size)
{
	struct store *st = ig->st;
	int64_t start = clock_mono_ms();
	int64_t rows = j->rows, staged = j->staged, rejected = j->rejected, known = j->known;
	int64_t stat_rows = j->req.stats->rows_read, stat_staged = j->req.stats->rows_staged,
		stat_rejected = j->req.stats->rows_rejected;
	off_t offset = 0;
	uint64_t line = 0;
	bool done = false;
	int r;

	/* Slices commit without waiting for fsync: a crash of the process loses
	 * nothing, and after a power loss WAL recovery keeps a prefix of the
	 * transactions, each carrying its own checkpoint, so the file resumes where
	 * the surviving data ends. The file is archived only after the FULL commit
	 * that marks it done (which makes every earlier slice durable too). */
	if (store_exec(st, "PRAGMA synchronous=NORMAL") < 0 || store_begin(st) < 0)
		goto db_error;
	if (j->is_restart) {
		/* A held read can only be checked when read from its first byte. */
		done = true;
		j->is_torn = true;
		goto torn;
	}
	if (j->req.is_held && !j->hold_base) {
		/* Above every pending_seq so far, with room for other writers. */
		j->hold_base = st->next_seq + ((int64_t)1 << 32);
		st->hold_from = j->hold_base;
		stage_hold(&ig->sg, j->hold_base);
	}
	for (int n = 0; n < SLICE_ROWS; n++) {
		struct csv_record rec;
		r = csv_next(j->csv, &rec);
		if (r < 0) {
			store_rollback(st);
			snprintf(reason, size, "read error: %s", strerror(-r));
			return r;
		}
		if (r == 0) {
			done = true;
			break;
		}
		offset = rec.end_offset;
		line = rec.line + 1;
		j->rows++;
		j->req.stats->rows_read++;
		const char *why = check_row(ig, j, &rec);
		if (!why) {
			bool was_known = false;
			struct stage_origin origin = { .file_id = j->file_id, .line = rec.line };
			r = stage_profile(&ig->sg, rec.fields[j->id_col], rec.lens[j->id_col], &ig->incoming,
					  j->req.src->name, &origin, &was_known);
			if (was_known)
				j->known++;
			why = stage_refusal(r);
			if (!why && r < 0)
				goto db_error;
			else if (r > 0) {
				j->staged++;
				j->req.stats->rows_staged++;
			}
		}
		if (why && record_reject(ig, j, &rec, why) < 0)
			goto db_error;
		if ((n & 63) == 63 && clock_mono_ms() - start >= SLICE_MS)
			break;
	}
	if (done) {
		offset = (off_t)j->sb.st_size;
		line = 0;
		j->is_torn = !read_whole(j);
	}
torn:
	if (j->is_torn) {
		/* It changed under the reader. A held read is undone (none of it
		 * left); a spool file's rows stay (they were sendable, as a delta
		 * whose writer broke the write-then-rename rule). Read it again. */
		log_warn("msg=\"file changed while it was read; reading it again\" source=%s file=\"%s\"%s",
			 j->req.src->name, j->req.path, j->hold_base ? " undone=yes" : "");
		if ((j->hold_base && stage_undo_hold(st, j->hold_base) < 0) ||
		    store_run(st, "UPDATE ingested_files SET state = 'abandoned', error = 'changed while it was read',"
				  " finished_at = ?2 WHERE id = ?1", "ii", j->file_id, clock_wall_ms()) < 0)
			goto db_error;
	} else if ((line || done) && update_checkpoint(ig, j, offset, line, done) < 0) {
		goto db_error;
	}
	if (done && j->hold_base && !j->is_torn && stage_release(&ig->sg) < 0)
		goto db_error;
	if (store_commit(st) < 0 || store_exec(st, "PRAGMA synchronous=FULL") < 0)
		goto db_error;
	if (done && j->hold_base) {
		/* Whole (and released), or undone: nothing is held any more. */
		st->hold_from = INT64_MAX;
		ig->sg.hold_base = ig->sg.hold_next = 0;
		j->hold_base = 0;
	}
	if (done && !j->is_torn && sync_done(ig, j) < 0)
		goto db_error;
	if (!done) {
		j->committed_offset = offset;
		j->committed_line = line;
	}
	crash_point("after-slice");
	j->req.stats->current_rows = j->rows;
	j->req.stats->current_bytes = offset;
	if (j->staged > staged)
		progress(ig);
	if (done)
		j->phase = PH_FINISH;
	return 1;

db_error:
	store_die_on_io_error(st);
	r = sqlite3_extended_errcode(st->db);
	snprintf(reason, size, "state database: %s", sqlite3_errmsg(st->db));
	store_rollback(st);
	store_exec(st, "PRAGMA synchronous=FULL");
	/* Nothing of the slice is kept: rewind the reader and the counters to the
	 * last committed checkpoint, so the slice is read again when retried (a
	 * held read, which must be read whole, from the start). */
	j->is_restart = j->hold_base != 0;
	j->is_torn = false;
	if (csv_seek(j->csv, j->committed_offset, j->committed_line) < 0)
		return -EIO;
	j->rows = rows;
	j->staged = staged;
	j->rejected = rejected;
	j->known = known;
	j->req.stats->rows_read = stat_rows;
	j->req.stats->rows_staged = stat_staged;
	j->req.stats->rows_rejected = stat_rejected;
	return (r & 0xff) == SQLITE_FULL ? -ENOSPC : -EIO;
}

static void finish_job(struct ingest *ig, struct job *j, int result)
{
	struct source_stats *stats = j->req.stats;
	stats->is_busy = false;
	if (result == 0 && j->is_torn) {
		stats->reads_torn++;
		j->is_queued_again = true;
	} else if (result == 0) {
		crash_point("before-archive");
		dispose_file(ig, j);
		stats->files++;
		stats->last_file_at = clock_wall_ms();
		snprintf(stats->last_file, sizeof(stats->last_file), "%s", base_name(j->req.path));
		log_info("msg=\"file ingested\" source=%s file=\"%s\" rows=%lld staged=%lld rejected=%lld",
			 j->req.src->name, j->req.path, (long long)j->rows, (long long)j->staged,
			 (long long)j->rejected);
		if (j->rejected)
			snprintf(stats->last_error, sizeof(stats->last_error),
				 "%s: %lld row(s) rejected (see its .rejects.csv)", base_name(j->req.path),
				 (long long)j->rejected);
	}
	if (j->req.done)
		j->req.done(j->req.done_arg, j->req.path, result);
	if (j->is_queued_again) {
		struct ingest_request again = j->req;
		j->req.path = NULL; /* ownership passes to the new job */
		if (ingest_enqueue(ig, &again) < 0)
			log_err("msg=\"cannot queue changed file again\"");
	}
	job_free(j);
	progress(ig);
}

/* A held read that fails half-way: what it staged is undone. */
static void abandon_hold(struct ingest *ig, struct job *j)
{
	struct store *st = ig->st;
	if (store_begin(st) < 0 || stage_undo_hold(st, j->hold_base) < 0 || store_commit(st) < 0) {
		store_abort(st);
		store_die_on_io_error(st);
		/* The hold stays: nothing of the read can leave; the undo runs at next start. */
		log_err("msg=\"cannot undo a failed snapshot read; its rows stay held\" error=\"%s\"", store_error(st));
		return;
	}
	st->hold_from = INT64_MAX;
	ig->sg.hold_base = ig->sg.hold_next = 0;
	j->hold_base = 0;
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *ig = arg;
	ig->is_paused = false;
	schedule(ig);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *ig = arg;
	char reason[512] = "";
	if (ig->is_paused || ig->is_stopping)
		return;
	if (!ig->active) {
		ig->active = ig->head;
		if (!ig->active)
			return;
		ig->head = ig->active->next;
		if (!ig->head)
			ig->tail = NULL;
		struct source_stats *stats = ig->active->req.stats;
		stats->is_busy = true;
		stats->current_rows = 0;
		stats->current_bytes = 0;
		stats->current_started_at = clock_wall_ms();
		snprintf(stats->current, sizeof(stats->current), "%s", base_name(ig->active->req.path));
	}
	struct job *j = ig->active;
	int r;
	switch (j->phase) {
	case PH_OPEN:
		r = phase_open(ig, j, reason, sizeof(reason));
		j->req.stats->current_size = j->sb.st_size;
		break;
	case PH_HASH:
		r = phase_hash(ig, j, reason, sizeof(reason));
		break;
	case PH_HEADER:
		r = phase_header(ig, j, reason, sizeof(reason));
		break;
	case PH_VALIDATE:
		r = phase_validate(ig, j, reason, sizeof(reason));
		break;
	case PH_STAGE:
		r = phase_stage(ig, j, reason, sizeof(reason));
		break;
	default:
		r = 0;
		break;
	}
	if (r == -EIO || r == -ENOSPC || r == -ENOMEM || r == -EMFILE || r == -ENFILE) {
		/* The file stays where it is; try the slice again shortly. */
		log_err("msg=\"ingestion held back\" source=%s file=\"%s\" reason=\"%s\"", j->req.src->name,
			j->req.path, reason[0] ? reason : strerror(-r));
		snprintf(j->req.stats->last_error, sizeof(j->req.stats->last_error), "%s", reason);
		snprintf(ig->held_back, sizeof(ig->held_back), "%s", reason[0] ? reason : strerror(-r));
		ig->is_paused = true;
		struct timeval tv = { 2, 0 };
		if (event_add(ig->retry, &tv) < 0)
			log_err("msg=\"cannot arm retry timer\"");
		return;
	}
	if (r < 0) {
		if (j->hold_base)
			abandon_hold(ig, j);
		fail_file(ig, j, reason[0] ? reason : strerror(-r));
		ig->active = NULL;
		finish_job(ig, j, r);
	} else if (r == 0 || j->phase == PH_FINISH) {
		ig->active = NULL;
		if (r == 0)
			job_free(j);
		else
			finish_job(ig, j, 0);
	}
	ig->held_back[0] = '\0';
	schedule(ig);
}

/* A snapshot read that a stop or a crash interrupted was held: it is undone
 * (the snapshot is read again from the start), so that nothing of a version
 * that may never be whole is sent. Returns 0 or -EIO (logged). */
static int undo_interrupted_holds(struct ingest *ig)
{
	struct store *st = ig->st;
	int64_t id, base;
	while ((id = store_int(st, "SELECT id FROM ingested_files WHERE state = 'staging' AND hold_seq IS NOT NULL"
				   " ORDER BY id LIMIT 1", 0, "")) > 0) {
		base = store_int(st, "SELECT hold_seq FROM ingested_files WHERE id = ?", 0, "i", id);
		if (store_begin(st) < 0 || stage_undo_hold(st, base) < 0 ||
		    store_run(st, "UPDATE ingested_files SET state = 'abandoned', error = 'interrupted; undone at start',"
				  " finished_at = ?2 WHERE id = ?1", "ii", id, clock_wall_ms()) < 0 ||
		    store_commit(st) < 0) {
			store_abort(st);
			log_err("msg=\"cannot undo an interrupted snapshot read\" error=\"%s\"", store_error(st));
			return -EIO;
		}
		log_warn("msg=\"an interrupted snapshot read was undone; the snapshot is read again\" file_id=%lld",
			 (long long)id);
	}
	return 0;
}

struct ingest *ingest_create(struct event_base *base, struct store *st, const char *rejects_dir,
			     const struct ingest_listener *l, void *arg)
{
	struct ingest *ig = calloc(1, sizeof(*ig));
	if (!ig)
		return NULL;
	ig->base = base;
	ig->st = st;
	ig->rejects_dir = rejects_dir;
	ig->l = l;
	ig->arg = arg;
	ig->hash_buf = malloc(HASH_CHUNK);
	ig->tick = evtimer_new(base, on_tick, ig);
	ig->retry = evtimer_new(base, on_retry, ig);
	if (!ig->hash_buf || !ig->tick || !ig->retry) {
		ingest_destroy(ig);
		return NULL;
	}
	/* Below the control socket and the sender, so they are served between slices. */
	event_priority_set(ig->tick, 2);
	stage_init(&ig->sg, st);
	attrset_init(&ig->incoming);
	if (undo_interrupted_holds(ig) < 0) {
		ingest_destroy(ig);
		return NULL;
	}
	return ig;
}

void ingest_destroy(struct ingest *ig)
{
	if (!ig)
		return;
	job_free(ig->active);
	for (struct job *j = ig->head, *next; j; j = next) {
		next = j->next;
		job_free(j);
	}
	if (ig->tick)
		event_free(ig->tick);
	if (ig->retry)
		event_free(ig->retry);
	stage_finish(&ig->sg);
	attrset_finish(&ig->incoming);
	free(ig->hash_buf);
	free(ig);
}

int ingest_enqueue(struct ingest *ig, const struct ingest_request *req)
{
	if (ig->active && strcmp(ig->active->req.path, req->path) == 0) {
		/* It changed while being read (a snapshot rewritten): read it once more. */
		ig->active->is_queued_again = ig->active->phase != PH_FINISH;
		goto duplicate;
	}
	for (struct job *j = ig->head; j; j = j->next)
		if (strcmp(j->req.path, req->path) == 0)
			goto duplicate;
	struct job *j = calloc(1, sizeof(*j));
	if (!j) {
		free(req->path);
		return -ENOMEM;
	}
	j->req = *req;
	j->fd = -1;
	buf_init(&j->strict_report);
	if (ig->tail)
		ig->tail->next = j;
	else
		ig->head = j;
	ig->tail = j;
	schedule(ig);
	return 0;
duplicate:
	free(req->path);
	return 0;
}

bool ingest_is_idle(const struct ingest *ig)
{
	return !ig->active && !ig->head;
}

void ingest_set_paused(struct ingest *ig, bool paused)
{
	ig->is_paused = paused;
	schedule(ig);
}

void ingest_stop(struct ingest *ig)
{
	ig->is_stopping = true;
}

const char *ingest_held_back(const struct ingest *ig)
{
	return ig->held_back[0] ? ig->held_back : NULL;
}

int64_t ingest_profiles_missing(struct ingest *ig, const char *source)
{
	return store_int(ig->st, "SELECT missing FROM ingested_files WHERE source = ? AND state = 'done'"
				 " AND missing IS NOT NULL ORDER BY id DESC LIMIT 1", 0, "t", source);
}

json_t *ingest_file_json(struct ingest *ig, int64_t id)
{
	sqlite3_stmt *s = store_prepare(ig->st, "SELECT source, name, size, state, started_at, finished_at FROM ingested_files"
						" WHERE id = ?", "i", id);
	json_t *o = NULL;
	if (s && sqlite3_step(s) == SQLITE_ROW)
		o = json_pack("{s:s, s:s, s:I, s:s, s:I, s:I}", "source", sqlite3_column_text(s, 0), "name",
			      sqlite3_column_text(s, 1), "size", (json_int_t)sqlite3_column_int64(s, 2), "state",
			      sqlite3_column_text(s, 3), "started_at", (json_int_t)sqlite3_column_int64(s, 4), "finished_at",
			      (json_int_t)sqlite3_column_int64(s, 5));
	if (s)
		sqlite3_reset(s);
	return o;
}
