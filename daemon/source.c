/* SPDX-License-Identifier: MIT */
/* The source drivers' table and what every source shares: creation, scanning,
 * and how a source shows itself in tpsyncctl and metrics. This file calls the
 * drivers only through their struct source_ops. */
#include "source.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build_config.h"
#include "clock.h"

static const struct source_ops *const drivers[] = {
	[SOURCE_SPOOL] = &source_spool_ops,
	[SOURCE_SNAPSHOT] = &source_snapshot_ops,
	[SOURCE_SQLITE] = &source_sqlite_ops,
#if HAVE_LIBPQ
	[SOURCE_POSTGRES] = &source_pg_ops,
#endif
};

int source_create(struct source_env *env, const struct source_config *cfg, struct source **out, char *err,
		  size_t err_size)
{
	const struct source_ops *ops = (size_t)cfg->type < sizeof(drivers) / sizeof(drivers[0]) ? drivers[cfg->type] : NULL;
	if (!ops) {
		/* The config loader refuses such a source; this is a second line. */
		snprintf(err, err_size, "type %s is not built into this tpsyncd", config_source_type_name(cfg->type));
		return -ENOTSUP;
	}
	struct source *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, err_size, "out of memory");
		return -ENOMEM;
	}
	s->ops = ops;
	s->env = env;
	s->cfg = cfg;
	int r = ops->watch(s);
	if (r < 0) {
		snprintf(err, err_size, "%s", s->stats.last_error[0] ? s->stats.last_error : strerror(-r));
		source_destroy(s);
		return r;
	}
	*out = s;
	return 0;
}

void source_destroy(struct source *s)
{
	if (!s)
		return;
	s->ops->close(s);
	free(s);
}

int source_scan(struct source *s, bool from_start)
{
	return s->ops->scan(s, from_start);
}

bool source_is_caught_up(const struct source *s)
{
	return !s->ops->is_caught_up || s->ops->is_caught_up(s);
}

void source_progress(struct source *s)
{
	if (s->env->listener && s->env->listener->progress)
		s->env->listener->progress(s->env->arg);
}

json_t *source_status_json(const struct source *s)
{
	const struct source_stats *st = &s->stats;
	json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "name", s->cfg->name, "type",
			      config_source_type_name(s->cfg->type), "path", s->cfg->path ? s->cfg->path : s->cfg->dsn, "files",
			      (json_int_t)st->files, "files_failed", (json_int_t)st->files_failed, "rows_read",
			      (json_int_t)st->rows_read, "rows_staged", (json_int_t)st->rows_staged, "rows_rejected",
			      (json_int_t)st->rows_rejected, "last_file_at", (json_int_t)st->last_file_at);
	if (!o)
		return NULL;
	json_object_set_new(o, "last_file", st->last_file[0] ? json_string(st->last_file) : json_null());
	json_object_set_new(o, "last_error", st->last_error[0] ? json_string(st->last_error) : json_null());
	json_object_set_new(o, "reads_torn", json_integer(st->reads_torn));
	if (st->is_busy) {
		int64_t elapsed = clock_wall_ms() - st->current_started_at;
		json_object_set_new(o, "ingesting", json_pack("{s:s, s:I, s:I, s:I, s:f}", "file", st->current, "rows",
							      (json_int_t)st->current_rows, "bytes", (json_int_t)st->current_bytes,
							      "size", (json_int_t)st->current_size, "rows_per_second",
							      elapsed > 0 ? (double)st->current_rows * 1000.0 / (double)elapsed : 0.0));
	}
	if (s->ops->status)
		s->ops->status(s, o);
	return o;
}

void source_metrics(const struct source *s, FILE *out)
{
	const struct source_stats *ss = &s->stats;
	const char *n = s->cfg->name;
	fprintf(out, "tpsync_rows_total{source=\"%s\",outcome=\"read\"} %lld\n", n, (long long)ss->rows_read);
	fprintf(out, "tpsync_rows_total{source=\"%s\",outcome=\"staged\"} %lld\n", n, (long long)ss->rows_staged);
	fprintf(out, "tpsync_rows_total{source=\"%s\",outcome=\"rejected\"} %lld\n", n, (long long)ss->rows_rejected);
}
