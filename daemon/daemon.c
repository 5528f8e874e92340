/* SPDX-License-Identifier: MIT */
/* tpsyncd's start-up and its glue: modules are created in dependency order
 * (state database, queue, ingestion, sender, sources, control socket), each
 * with what it needs and a listener for what it reports back; their reports
 * meet here, where --once, the pending configuration and systemd are served.
 * The control commands that span modules are defined here too. */
#include "daemon.h"

#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "build_config.h"
#include "backup.h"
#include "clock.h"
#include "control.h"
#include "dead_letters.h"
#include "ingest.h"
#include "integrity.h"
#include "history.h"
#include "stage.h"
#include "verify.h"
#include "log.h"
#include "metrics_http.h"
#include "oauth.h"
#include "queue.h"
#include "sender.h"
#include "source.h"
#include "store.h"

#if HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#define SHUTDOWN_GRACE_MS 10000

struct daemon {
	struct config *cfg;
	struct config *next_cfg; /* a reloaded config waiting for ingestion to be between files */
	struct daemon_options opts;
	struct store *st;
	struct event_base *base;
	struct queue *queue;
	struct ingest *ingest;
	struct sender *sender;
	struct control *control;
	struct metrics_http *metrics; /* metrics.listen; NULL: none */
	struct integrity *integrity;
	struct backup *backup;
	struct verify *verify;
	struct oauth *oauth;          /* target.oauth; NULL: the token comes from a file */
	struct source_env env;
	struct source **sources; /* one per cfg->sources entry */
	size_t n_sources;
	int64_t started_at;
	int64_t once_deadline;
	int64_t dead_at_start;  /* dead letters when --once started */
	bool is_stopping;
	int exit_code;
	char last_error[1024];  /* shown in status; e.g. a failed reload */
	struct event *apply_event, *once_timer, *stop_timer, *stop_deadline, *status_timer, *watchdog;
};

static void notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void notify(const char *fmt, ...)
{
#if HAVE_LIBSYSTEMD
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	sd_notify(0, msg);
#else
	(void)fmt;
#endif
}

/* A schema migration at start-up (minutes for a large mirror): systemd's
 * start timeout is pushed 30 s on, every 5 s while it runs. */
static void on_migration(void *arg, int from, int to)
{
	if (from < 0)
		notify("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=checking the state database");
	else
		notify("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=migrating the state database from schema %d to %d", from, to);
}

/* --- sources ---------------------------------------------------------------------- */

static int start_sources(struct daemon *d)
{
	d->sources = calloc(d->cfg->n_sources ? d->cfg->n_sources : 1, sizeof(*d->sources));
	if (!d->sources)
		return -ENOMEM;
	for (size_t i = 0; i < d->cfg->n_sources; i++) {
		char err[600];
		int r = source_create(&d->env, &d->cfg->sources[i], &d->sources[d->n_sources], err, sizeof(err));
		if (r < 0) {
			log_err("msg=\"source not started\" source=%s error=\"%s\"", d->cfg->sources[i].name, err);
			return r;
		}
		d->n_sources++;
	}
	for (size_t i = 0; i < d->n_sources; i++)
		if (source_scan(d->sources[i], false) < 0)
			log_err("msg=\"cannot scan source\" source=%s error=\"%s\"", d->sources[i]->cfg->name,
				d->sources[i]->stats.last_error);
	return 0;
}

static void stop_sources(struct daemon *d)
{
	for (size_t i = 0; i < d->n_sources; i++)
		source_destroy(d->sources[i]);
	free(d->sources);
	d->sources = NULL;
	d->n_sources = 0;
}

/* --- reload ---------------------------------------------------------------------- */

static int start_metrics(struct daemon *d);

static bool same_string(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

/* Swaps in d->next_cfg: new sources first (the old ones stay if that fails),
 * then the sender and the control socket's policy. */
static int apply_config(struct daemon *d)
{
	struct config *old = d->cfg;
	struct source **old_sources = d->sources;
	size_t old_n = d->n_sources;
	d->cfg = d->next_cfg;
	d->next_cfg = NULL;
	d->sources = NULL;
	d->n_sources = 0;
	int r = start_sources(d);
	if (r < 0 || sender_reconfigure(d->sender, d->cfg) < 0 || verify_reconfigure(d->verify, d->cfg) < 0 ||
	    (d->oauth && d->cfg->target.oauth.is_set && oauth_reconfigure(d->oauth, d->cfg) < 0)) {
		stop_sources(d);
		config_destroy(d->cfg);
		d->cfg = old;
		d->sources = old_sources;
		d->n_sources = old_n;
		snprintf(d->last_error, sizeof(d->last_error), "reload failed: a source could not be started (see log)");
		return r < 0 ? r : -ENOMEM;
	}
	/* Counters carry over for sources that kept their name. */
	for (size_t i = 0; i < d->n_sources; i++)
		for (size_t j = 0; j < old_n; j++)
			if (strcmp(d->sources[i]->cfg->name, old_sources[j]->cfg->name) == 0) {
				d->sources[i]->stats = old_sources[j]->stats;
				d->sources[i]->stats.is_busy = false;
			}
	for (size_t j = 0; j < old_n; j++)
		source_destroy(old_sources[j]);
	free(old_sources);
	if (d->control)
		control_set_policy(d->control, d->cfg->control.mutating);
	if (!same_string(old->metrics.listen, d->cfg->metrics.listen) && !d->opts.dry_run_dir)
		start_metrics(d);
	d->st->history.events = d->cfg->trace.events;
	d->st->history.max_age_ms = d->cfg->trace.max_age_ms;
	config_destroy(old);
	d->last_error[0] = '\0';
	log_info("msg=\"configuration reloaded\" sources=%zu", d->n_sources);
	return 0;
}

/* Re-reads the config file and the token (SIGHUP, tpsyncctl reload). On a bad
 * config the old one stays, the error goes to d->last_error and -EINVAL is
 * returned. Settings that need a restart (state.database, control.socket) are
 * reported and kept. Sources are swapped only between files. */
static int reload(struct daemon *d)
{
	char *errtext = NULL;
	size_t errlen = 0;
	FILE *err = open_memstream(&errtext, &errlen);
	struct config *cfg = NULL;
	int r = config_load(d->cfg->path, &cfg, err);
	if (err)
		fclose(err);
	if (r < 0) {
		/* One line per error into the log; the first into status. */
		for (char *line = errtext ? strtok(errtext, "\n") : NULL; line; line = strtok(NULL, "\n"))
			log_err("msg=\"reload rejected; keeping the running configuration\" error=\"%s\"", line);
		snprintf(d->last_error, sizeof(d->last_error), "reload rejected: %s", errtext ? errtext : "see log");
		free(errtext);
		return -EINVAL;
	}
	free(errtext);
	if (cfg->target.oauth.is_set != d->cfg->target.oauth.is_set) {
		log_err("msg=\"reload rejected: switching between target.oauth and a token file needs a restart\"");
		snprintf(d->last_error, sizeof(d->last_error),
			 "reload rejected: switching between target.oauth and a token file needs a restart");
		config_destroy(cfg);
		return -EINVAL;
	}
	/* These are bound at start-up; changing them needs a restart. */
	if (strcmp(cfg->state.database, d->cfg->state.database) != 0 || strcmp(cfg->control.socket, d->cfg->control.socket) != 0) {
		log_warn("msg=\"state.database and control.socket changes take effect at restart\"");
		free(cfg->state.database);
		free(cfg->control.socket);
		cfg->state.database = strdup(d->cfg->state.database);
		cfg->control.socket = strdup(d->cfg->control.socket);
		if (!cfg->state.database || !cfg->control.socket) {
			config_destroy(cfg);
			return -ENOMEM;
		}
	}
	config_destroy(d->next_cfg);
	d->next_cfg = cfg;
	if (verify_reload_token(d->verify) < 0)
		snprintf(d->last_error, sizeof(d->last_error), "cannot read the token file; keeping the old token");
	if (sender_reload_token(d->sender) < 0)
		snprintf(d->last_error, sizeof(d->last_error), "cannot read the token file; keeping the old token");
	if (ingest_is_idle(d->ingest))
		return apply_config(d);
	log_info("msg=\"configuration will be applied when the current file is done\"");
	return 0;
}

/* Applies a pending config from its own event at the loop's top, never from
 * inside a module's report: a database source reports mid-read, and applying
 * frees the source. */
static void on_apply(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	if (d->next_cfg && ingest_is_idle(d->ingest) && !d->is_stopping)
		apply_config(d);
}

/* --- what the modules report -------------------------------------------------------- */

static void moved_on(struct daemon *d)
{
	if (d->next_cfg)
		event_active(d->apply_event, 0, 0);
	if (d->once_timer)
		event_active(d->once_timer, 0, 0);
}

/* Rows were staged or a file is done: the sender may have work. */
static void on_rows_staged(void *arg)
{
	struct daemon *d = arg;
	sender_kick(d->sender);
	moved_on(d);
}

/* A batch moved on (the sender has already looked for more work itself). */
static void on_batch_moved(void *arg)
{
	moved_on(arg);
}

static const struct ingest_listener ingest_listener = { .progress = on_rows_staged };
static const struct source_listener source_listener = { .progress = on_rows_staged };
/* A file or a database read is under way: the sender waits for full batches. */
static bool is_reading(void *arg)
{
	struct daemon *d = arg;
	if (!ingest_is_idle(d->ingest))
		return true;
	for (size_t i = 0; i < d->n_sources; i++)
		if (!source_is_caught_up(d->sources[i]))
			return true;
	return false;
}

/* Target refused the token (bulk or fetch API): target.oauth renews it. */
static void on_auth_refused(void *arg, const char *token)
{
	struct daemon *d = arg;
	if (d->oauth)
		oauth_renew(d->oauth, token);
}

static const struct sender_listener sender_listener = { .progress = on_batch_moved, .is_reading = is_reading,
							 .auth_refused = on_auth_refused };

/* A verification queued values again (the canary wants them sent at once). */
static void on_verify_queued(void *arg, bool with_flush)
{
	struct daemon *d = arg;
	if (with_flush)
		sender_flush(d->sender);
	else
		sender_kick(d->sender);
}

static const struct verify_listener verify_listener = { .queued = on_verify_queued, .auth_refused = on_auth_refused };

/* target.oauth made or read a token: both callers of the profile API use it. */
static void on_oauth_token(void *arg, const char *token)
{
	struct daemon *d = arg;
	sender_set_token(d->sender, token);
	if (d->verify)
		verify_set_token(d->verify, token);
}

static void on_oauth_failed(void *arg, const char *why)
{
	struct daemon *d = arg;
	sender_token_problem(d->sender, why);
}

static void on_oauth_hold(void *arg, bool on)
{
	struct daemon *d = arg;
	sender_hold_token(d->sender, on);
	if (d->verify)
		verify_hold_token(d->verify, on);
}

static int oauth_calls_in_flight(void *arg)
{
	struct daemon *d = arg;
	return sender_calls_in_flight(d->sender) + (d->verify ? verify_calls_in_flight(d->verify) : 0);
}

static const struct oauth_listener oauth_listener = { .token = on_oauth_token, .failed = on_oauth_failed,
						       .hold = on_oauth_hold, .calls_in_flight = oauth_calls_in_flight };

/* systemd's STATUS= line, refreshed by a timer (counting the queue is not free,
 * so it is never done per slice), and only when systemd listens. */
static void on_status_timer(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	notify("STATUS=%s", sender_status_line(d->sender));
}

/* --- --once ---------------------------------------------------------------------- */

static void print_summary(struct daemon *d, bool timed_out)
{
	struct queue_counts c;
	if (queue_counts(d->queue, true, &c) < 0)
		log_err("msg=\"cannot count the queue\" error=\"%s\"", store_error(d->st));
	printf("tpsyncd --once summary\n");
	for (size_t i = 0; i < d->n_sources; i++) {
		struct source_stats *s = &d->sources[i]->stats;
		printf("  source %-12s files=%lld failed=%lld rows=%lld staged=%lld rejected=%lld\n",
		       d->sources[i]->cfg->name, (long long)s->files, (long long)s->files_failed, (long long)s->rows_read,
		       (long long)s->rows_staged, (long long)s->rows_rejected);
	}
	printf("  batches complete=%lld awaiting_status=%lld dead=%lld\n", (long long)c.batches[BATCH_COMPLETE],
	       (long long)c.batches[BATCH_SUBMITTED], (long long)c.batches[BATCH_DEAD]);
	printf("  dead letters=%lld (new in this run: %lld)\n", (long long)c.dead_letters,
	       (long long)(c.dead_letters - d->dead_at_start));
	if (timed_out)
		printf("  --wait elapsed before every batch reached its final status\n");
	fflush(stdout);
}

static void on_once_check(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	if (d->is_stopping)
		return;
	bool timed_out = clock_wall_ms() >= d->once_deadline;
	bool delivered = ingest_is_idle(d->ingest) && sender_is_drained(d->sender, false);
	for (size_t i = 0; i < d->n_sources; i++)
		delivered = delivered && source_is_caught_up(d->sources[i]);
	bool complete = delivered && sender_is_drained(d->sender, true);
	if (!complete && !timed_out)
		return;
	bool failed = dead_letters_count(d->st) > d->dead_at_start;
	for (size_t i = 0; i < d->n_sources; i++)
		if (d->sources[i]->stats.files_failed)
			failed = true;
	print_summary(d, !complete);
	d->exit_code = failed ? 1 : !complete ? 2 : 0;
	d->is_stopping = true;
	event_base_loopexit(d->base, NULL);
}

/* --- signals and the watchdog -------------------------------------------------------- */

static void on_stop_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	if (what & EV_TIMEOUT)
		log_warn("msg=\"requests still running at shutdown; they will be recovered at next start\" count=%d",
			 sender_active(d->sender));
	event_base_loopexit(d->base, NULL);
}

static void on_drain_check(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	if (sender_active(d->sender) == 0)
		event_base_loopexit(d->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	if (sig == SIGHUP) {
		log_info("msg=\"SIGHUP: reloading configuration and token\"");
		reload(d);
		return;
	}
	if (d->is_stopping) {
		event_base_loopexit(d->base, NULL);
		return;
	}
	log_info("msg=\"stopping\" signal=%d in_flight=%d", (int)sig, sender_active(d->sender));
	notify("STOPPING=1");
	d->is_stopping = true;
	d->env.is_stopping = true;
	ingest_stop(d->ingest);
	sender_stop(d->sender);
	/* In-flight requests get a bounded time to be answered; whatever is still
	 * running then is recovered (re-sent) at the next start. */
	struct timeval poll = { 0, 100000 };
	d->stop_timer = event_new(d->base, -1, EV_PERSIST, on_drain_check, d);
	d->stop_deadline = evtimer_new(d->base, on_stop_deadline, d);
	int64_t grace = d->cfg->target.timeout_ms < SHUTDOWN_GRACE_MS ? d->cfg->target.timeout_ms : SHUTDOWN_GRACE_MS;
	struct timeval tv = { grace / 1000, (grace % 1000) * 1000 };
	if (!d->stop_timer || !d->stop_deadline || event_add(d->stop_timer, &poll) < 0 ||
	    event_add(d->stop_deadline, &tv) < 0)
		event_base_loopexit(d->base, NULL);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	notify("WATCHDOG=1");
}

/* --- control commands ------------------------------------------------------------------ */

static int64_t limit_arg(json_t *args, int64_t def)
{
	json_t *l = json_object_get(args, "limit");
	if (json_is_integer(l) && json_integer_value(l) > 0 && json_integer_value(l) <= 100000)
		return json_integer_value(l);
	return def;
}

static json_t *sources_json(struct daemon *d)
{
	json_t *arr = json_array();
	for (size_t i = 0; arr && i < d->n_sources; i++)
		json_array_append_new(arr, source_status_json(d->sources[i]));
	return arr;
}

static json_t *cmd_status(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	json_t *r = json_object();
	if (!r)
		return NULL;
	json_object_set_new(r, "version", json_string(TPSYNC_VERSION));
	json_object_set_new(r, "pid", json_integer(getpid()));
	json_object_set_new(r, "uptime_seconds", json_integer((clock_wall_ms() - d->started_at) / 1000));
	json_object_set_new(r, "client_code", json_string(d->cfg->target.client_code));
	json_object_set_new(r, "config", json_string(d->cfg->path));
	const char *held = ingest_held_back(d->ingest);
	char line[1200];
	if (d->last_error[0])
		snprintf(line, sizeof(line), "%s", d->last_error);
	else if (held)
		snprintf(line, sizeof(line), "ingestion held back: %s", held);
	json_object_set_new(r, "last_error", d->last_error[0] || held ? json_string(line) : json_null());
	sender_status(d->sender, r);
	if (d->verify)
		verify_status(d->verify, r);
	if (d->oauth)
		oauth_status(d->oauth, r);
	json_object_set_new(r, "sources", sources_json(d));
	json_object_set_new(r, "ingesting", json_boolean(!ingest_is_idle(d->ingest)));
	return r;
}

static json_t *cmd_sources(void *arg, json_t *args, char *err, size_t size)
{
	return json_pack("{s:o}", "sources", sources_json(arg));
}

static json_t *cmd_batches(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	enum batch_state state;
	const char *name = json_string_value(json_object_get(args, "state"));
	if (name && batch_state_parse(name, &state) < 0) {
		snprintf(err, size, "no batch state \"%s\"", name);
		return NULL;
	}
	json_t *arr = queue_batches_json(d->queue, limit_arg(args, 20), name ? &state : NULL);
	if (!arr) {
		snprintf(err, size, "state database error: %s", store_error(d->st));
		return NULL;
	}
	return json_pack("{s:o}", "batches", arr);
}

static json_t *cmd_dead(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	json_t *arr = dead_letters_list(d->st, limit_arg(args, 50));
	if (!arr) {
		snprintf(err, size, "state database error: %s", store_error(d->st));
		return NULL;
	}
	return json_pack("{s:o, s:I}", "dead_letters", arr, "total", (json_int_t)dead_letters_count(d->st));
}

static json_t *cmd_retry_dead(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	json_t *ids = json_object_get(args, "ids");
	bool all = json_is_true(json_object_get(args, "all")) || !ids;
	if (ids && !json_is_array(ids)) {
		snprintf(err, size, "ids must be an array of dead letter ids");
		return NULL;
	}
	size_t n = all ? 0 : json_array_size(ids);
	int64_t *wanted = n ? calloc(n, sizeof(*wanted)) : NULL;
	if (n && !wanted)
		return NULL;
	for (size_t i = 0; i < n; i++)
		wanted[i] = json_is_integer(json_array_get(ids, i)) ? json_integer_value(json_array_get(ids, i)) : 0;
	int64_t count = 0;
	static const int64_t none[1] = { 0 };
	int r = queue_retry_dead(d->queue, all ? NULL : n ? wanted : none, n, &count);
	free(wanted);
	if (r < 0) {
		snprintf(err, size, "cannot re-queue dead letters: %s", store_error(d->st));
		return NULL;
	}
	log_info("msg=\"dead letters re-queued\" count=%lld", (long long)count);
	sender_kick(d->sender);
	return json_pack("{s:I}", "requeued", (json_int_t)count);
}

static json_t *cmd_pause(void *arg, json_t *args, char *err, size_t size)
{
	sender_set_paused(((struct daemon *)arg)->sender, true);
	return json_object();
}

static json_t *cmd_resume(void *arg, json_t *args, char *err, size_t size)
{
	sender_set_paused(((struct daemon *)arg)->sender, false);
	return json_object();
}

static json_t *cmd_flush(void *arg, json_t *args, char *err, size_t size)
{
	sender_flush(((struct daemon *)arg)->sender);
	return json_object();
}

static json_t *cmd_rescan(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	const char *name = json_string_value(json_object_get(args, "source"));
	int n = 0;
	for (size_t i = 0; i < d->n_sources; i++) {
		struct source *s = d->sources[i];
		if (name && strcmp(name, s->cfg->name) != 0)
			continue;
		if (source_scan(s, true) < 0) {
			snprintf(err, size, "cannot scan source %s: %s", s->cfg->name, s->stats.last_error);
			return NULL;
		}
		n++;
	}
	if (name && n == 0) {
		snprintf(err, size, "no source named \"%s\"", name);
		return NULL;
	}
	return json_pack("{s:i}", "sources_scanned", n);
}

static json_t *cmd_reload(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	if (reload(d) == 0)
		return json_object();
	snprintf(err, size, "reload failed: %s", d->last_error);
	return NULL;
}

/* The Prometheus exposition of the whole daemon. Returns 0 or -EIO. */
static int write_metrics(struct daemon *d, FILE *f)
{
	struct queue_counts c;
	int r = queue_counts(d->queue, true, &c);
	fprintf(f, "# HELP tpsync_build_info The running tpsyncd's version (always 1).\n"
		   "# TYPE tpsync_build_info gauge\ntpsync_build_info{version=\"%s\",client=\"%s\"} 1\n",
		TPSYNC_VERSION, d->cfg->target.client_code);
	fprintf(f, "# HELP tpsync_start_time_seconds When the daemon started, in seconds since the epoch.\n"
		   "# TYPE tpsync_start_time_seconds gauge\ntpsync_start_time_seconds %.3f\n",
		(double)d->started_at / 1000.0);
	fprintf(f, "# HELP tpsync_queue_pending_profiles Profiles with staged changes not yet sent.\n"
		   "# TYPE tpsync_queue_pending_profiles gauge\n");
	fprintf(f, "tpsync_queue_pending_profiles %lld\n", (long long)c.pending_profiles);
	fprintf(f, "# HELP tpsync_oldest_pending_age_seconds Age of the oldest unsent change.\n"
		   "# TYPE tpsync_oldest_pending_age_seconds gauge\n");
	fprintf(f, "tpsync_oldest_pending_age_seconds %.3f\n",
		c.oldest_pending_at ? (double)(clock_wall_ms() - c.oldest_pending_at) / 1000.0 : 0.0);
	fprintf(f, "# HELP tpsync_batches Batches by state.\n# TYPE tpsync_batches gauge\n");
	for (int i = 0; i < BATCH_STATE_COUNT; i++)
		fprintf(f, "tpsync_batches{state=\"%s\"} %lld\n", batch_state_name((enum batch_state)i),
			(long long)c.batches[i]);
	fprintf(f, "# HELP tpsync_dead_letters Values that could not be delivered.\n# TYPE tpsync_dead_letters gauge\n");
	fprintf(f, "tpsync_dead_letters %lld\n", (long long)c.dead_letters);
	fprintf(f, "# HELP tpsync_rows_total Rows read from sources, by outcome.\n# TYPE tpsync_rows_total counter\n");
	for (size_t i = 0; i < d->n_sources; i++)
		source_metrics(d->sources[i], f);
	sender_metrics(d->sender, f);
	if (d->verify)
		verify_metrics(d->verify, f);
	return r;
}

static int write_metrics_for_http(void *arg, FILE *out)
{
	return write_metrics(arg, out);
}

/* (Re)binds the Prometheus endpoint to cfg->metrics.listen, or closes it. A
 * new address that cannot be bound is logged and leaves no endpoint: the
 * daemon's work goes on without it. Returns 0 or -EADDRNOTAVAIL. */
static int start_metrics(struct daemon *d)
{
	metrics_http_free(d->metrics);
	d->metrics = NULL;
	if (!d->cfg->metrics.listen)
		return 0;
	d->metrics = metrics_http_create(d->base, d->cfg->metrics.listen, write_metrics_for_http, d);
	if (!d->metrics) {
		snprintf(d->last_error, sizeof(d->last_error), "cannot serve metrics on %s (see log)",
			 d->cfg->metrics.listen);
		return -EADDRNOTAVAIL;
	}
	return 0;
}

static json_t *cmd_metrics(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return NULL;
	int r = write_metrics(d, f);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	if (r < 0) {
		snprintf(err, size, "state database error: %s", store_error(d->st));
		free(text);
		return NULL;
	}
	json_t *result = json_pack("{s:s}", "text", text);
	free(text);
	return result;
}

/* tpsyncctl check: starts a full integrity check (unless one runs) and says
 * how the last one stands; tpsyncctl asks again until it is done. */
static json_t *cmd_check(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	if (json_is_true(json_object_get(args, "start"))) {
		int r = integrity_start(d->integrity);
		if (r < 0 && r != -EBUSY) {
			snprintf(err, size, "cannot start the check: %s", strerror(-r));
			return NULL;
		}
	}
	return integrity_status(d->integrity);
}

/* tpsyncctl backup: starts a copy to args.path (with args.start) and says how
 * the last one stands; tpsyncctl asks again until it is done. */
static json_t *cmd_backup(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	const char *path = json_string_value(json_object_get(args, "path"));
	if (path && backup_start(d->backup, path, err, size) < 0)
		return NULL;
	return backup_status(d->backup);
}

/* tpsyncctl verify (and canary): starts a run; tpsyncctl follows it with
 * verify-status. */
static json_t *cmd_verify(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	if (!d->verify) {
		snprintf(err, size, "verification is not available in this mode");
		return NULL;
	}
	json_t *ids = json_object_get(args, "ids");
	struct verify_request req = { .is_repair = !json_is_true(json_object_get(args, "no_repair")) };
	const char **list = NULL;
	if (json_is_true(json_object_get(args, "canary"))) {
		req.kind = VERIFY_CANARY;
	} else if (json_is_true(json_object_get(args, "all"))) {
		req.kind = VERIFY_ALL;
	} else if (json_is_integer(json_object_get(args, "sample"))) {
		req.kind = VERIFY_SAMPLE;
		req.n = (size_t)json_integer_value(json_object_get(args, "sample"));
	} else if (json_is_array(ids)) {
		req.kind = VERIFY_IDS;
		req.n = json_array_size(ids);
		list = calloc(req.n + 1, sizeof(*list));
		if (!list)
			return NULL;
		for (size_t i = 0; i < req.n; i++) {
			list[i] = json_string_value(json_array_get(ids, i));
			if (!list[i] || !*list[i]) {
				snprintf(err, size, "ids must be profile ids (strings)");
				free(list);
				return NULL;
			}
		}
		req.ids = list;
	} else {
		snprintf(err, size, "say what to verify: ids, sample, all or canary");
		return NULL;
	}
	err[0] = '\0';
	int64_t id = verify_start(d->verify, &req, err, size);
	free(list);
	if (id < 0) {
		if (!err[0])
			snprintf(err, size, "cannot start: %s", strerror((int)-id));
		return NULL;
	}
	return json_pack("{s:I}", "run", (json_int_t)id);
}

static json_t *cmd_verify_status(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	json_t *o = d->verify ? verify_run_json(d->verify, json_integer_value(json_object_get(args, "run"))) : NULL;
	if (!o)
		snprintf(err, size, "no such verification run");
	return o;
}

static json_t *cmd_verify_stop(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	int64_t id = json_integer_value(json_object_get(args, "run"));
	if (!d->verify || verify_stop(d->verify, id) < 0) {
		snprintf(err, size, "no verification run under way%s", id ? " with that id" : "");
		return NULL;
	}
	return json_object();
}

/* A set as {attribute: value}. */
static json_t *set_json(struct store *st, const struct attrset *set)
{
	json_t *o = json_object();
	for (size_t i = 0; o && i < set->n; i++)
		json_object_set_new(o, store_attr_name(st, set->kv[i].id),
				    json_stringn(set->kv[i].val, set->kv[i].len));
	return o;
}

/* One staging event of a profile's history, with the file it came from and
 * the batch that carried it. */
static json_t *event_json(struct daemon *d, const char *profile, const struct history_event *ev)
{
	json_t *attrs = json_array();
	uint32_t listed = ev->n_attrs < HISTORY_MAX_ATTRS ? ev->n_attrs : HISTORY_MAX_ATTRS;
	for (uint32_t i = 0; i < listed; i++) {
		const char *name = store_attr_name(d->st, ev->attrs[i]);
		json_array_append_new(attrs, json_string(name ? name : "?"));
	}
	json_t *o = json_pack("{s:I, s:s%, s:o}", "at", (json_int_t)ev->at, "source", ev->source, ev->source_len,
			      "attrs", attrs);
	if (!o)
		return NULL;
	if (ev->file_id) {
		json_t *file = ingest_file_json(d->ingest, ev->file_id);
		if (file)
			json_object_set_new(o, "file", file);
		json_object_set_new(o, "line", json_integer(ev->line));
	}
	if (ev->position_len)
		json_object_set_new(o, "position", json_stringn(ev->position, ev->position_len));
	int64_t batch = ev->seq ? queue_batch_of_seq(d->queue, ev->seq) : 0;
	json_t *b = batch ? queue_batch_json(d->queue, batch) : NULL;
	if (b) {
		const char *result = queue_row_result(d->queue, profile, batch);
		json_object_set_new(b, "row", json_string(result ? result : "not reported failed"));
		json_object_set_new(o, "batch", b);
	}
	return o;
}

/* tpsyncctl trace ID: everything known about one profile. */
static json_t *cmd_trace(void *arg, json_t *args, char *err, size_t size)
{
	struct daemon *d = arg;
	const char *id = json_string_value(json_object_get(args, "id"));
	if (!id || !*id) {
		snprintf(err, size, "give a profile id");
		return NULL;
	}
	struct stage sg;
	struct stage_view v;
	stage_init(&sg, d->st);
	stage_view_init(&v);
	int found = stage_read(&sg, id, strlen(id), &v);
	json_t *dead = dead_letters_of(d->st, id, 100);
	json_t *r = NULL;
	if (found < 0) {
		snprintf(err, size, "state database error: %s", store_error(d->st));
	} else if (found == 0 && json_array_size(dead) == 0) {
		snprintf(err, size, "unknown profile \"%s\": never staged", id);
	} else {
		r = json_pack("{s:s, s:o, s:o, s:o, s:I, s:O}", "id", id, "accepted", set_json(d->st, &v.accepted),
			      "in_flight", set_json(d->st, &v.inflight), "pending", set_json(d->st, &v.pending),
			      "accepted_at", (json_int_t)v.accepted_at, "dead_letters", dead ? dead : json_array());
		if (r && v.batch) {
			json_t *b = queue_batch_json(d->queue, v.batch);
			if (b)
				json_object_set_new(r, "in_flight_batch", b);
		}
		json_t *events = json_array();
		struct history_event ev;
		const unsigned char *p = (const unsigned char *)v.history.data, *end = p ? p + v.history.len : NULL;
		while (history_next(&p, end, &ev) > 0) {
			json_t *e = event_json(d, id, &ev);
			if (e)
				json_array_append_new(events, e);
		}
		if (r)
			json_object_set_new(r, "history", events);
		else
			json_decref(events);
		json_t *last = d->verify ? verify_last_json(d->verify, id) : NULL;
		if (r)
			json_object_set_new(r, "last_verification", last ? last : json_null());
	}
	json_decref(dead);
	stage_view_finish(&v);
	stage_finish(&sg);
	return r;
}

static const struct control_command commands[] = {
	{ "status", false, cmd_status },
	{ "sources", false, cmd_sources },
	{ "batches", false, cmd_batches },
	{ "dead", false, cmd_dead },
	{ "metrics", false, cmd_metrics },
	{ "retry-dead", true, cmd_retry_dead },
	{ "pause", true, cmd_pause },
	{ "resume", true, cmd_resume },
	{ "flush", true, cmd_flush },
	{ "rescan", true, cmd_rescan },
	{ "reload", true, cmd_reload },
	{ "check", true, cmd_check },
	{ "backup", true, cmd_backup },
	{ "verify", true, cmd_verify },
	{ "verify-status", false, cmd_verify_status },
	{ "verify-stop", true, cmd_verify_stop },
	{ "trace", false, cmd_trace },
	{ NULL, false, NULL },
};

/* --- dry run -------------------------------------------------------------------------- */

/* Copies the state database to a scratch file in dir, so a dry run sees the real
 * mirror but changes nothing. Returns 0 and the scratch path, or a negative errno. */
static int make_scratch_db(const char *real, const char *dir, char *out, size_t size)
{
	if (mkdir(dir, 0750) < 0 && errno != EEXIST)
		return -errno;
	snprintf(out, size, "%s/.tpsyncd-dry-run-%d.db", dir, (int)getpid());
	unlink(out);
	if (access(real, F_OK) < 0)
		return 0;
	sqlite3 *src = NULL, *dst = NULL;
	int r = -EIO;
	if (sqlite3_open_v2(real, &src, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_open(out, &dst) == SQLITE_OK) {
		sqlite3_backup *b = sqlite3_backup_init(dst, "main", src, "main");
		if (b && sqlite3_backup_step(b, -1) == SQLITE_DONE)
			r = 0;
		if (b)
			sqlite3_backup_finish(b);
	}
	if (r < 0)
		log_err("msg=\"cannot copy state database for the dry run\" error=\"%s\"",
			dst ? sqlite3_errmsg(dst) : src ? sqlite3_errmsg(src) : "out of memory");
	sqlite3_close(src);
	sqlite3_close(dst);
	return r;
}

static void remove_scratch(const char *path)
{
	char extra[4200];
	unlink(path);
	snprintf(extra, sizeof(extra), "%s-wal", path);
	unlink(extra);
	snprintf(extra, sizeof(extra), "%s-shm", path);
	unlink(extra);
}

/* --- running ------------------------------------------------------------------------ */

/* Creates the loop's timers: watchdog, STATUS=, the --once check. Returns 0
 * or -ENOMEM for one the daemon cannot do without. */
static int start_timers(struct daemon *d)
{
	if (getenv("NOTIFY_SOCKET")) {
		d->status_timer = event_new(d->base, -1, EV_PERSIST, on_status_timer, d);
		struct timeval tv = { 5, 0 };
		if (!d->status_timer || event_add(d->status_timer, &tv) < 0)
			log_warn("msg=\"cannot start status timer\"");
	}
#if HAVE_LIBSYSTEMD
	uint64_t wd_usec = 0;
	if (sd_watchdog_enabled(0, &wd_usec) > 0) {
		d->watchdog = event_new(d->base, -1, EV_PERSIST, on_watchdog, d);
		struct timeval tv = { (time_t)(wd_usec / 2000000), (suseconds_t)(wd_usec / 2 % 1000000) };
		if (!d->watchdog || event_add(d->watchdog, &tv) < 0)
			log_warn("msg=\"cannot start watchdog timer\"");
	}
#endif
	if (d->opts.is_once) {
		d->once_timer = event_new(d->base, -1, EV_PERSIST, on_once_check, d);
		struct timeval tv = { 0, 200000 };
		if (!d->once_timer || event_add(d->once_timer, &tv) < 0)
			return -ENOMEM;
	}
	return 0;
}

static void free_event(struct event **ev)
{
	if (*ev)
		event_free(*ev);
	*ev = NULL;
}

int daemon_run(struct config *cfg, const struct daemon_options *opts)
{
	struct daemon d = { .cfg = cfg, .opts = *opts };
	struct event *signals[3] = { NULL };
	static const int sigs[3] = { SIGTERM, SIGINT, SIGHUP };
	int exit_code = 1;
	char err[1024], scratch[4096] = "";

	signal(SIGPIPE, SIG_IGN);
	event_set_log_callback(log_libevent);
	CURLcode cc = curl_global_init(CURL_GLOBAL_DEFAULT);
	if (cc != CURLE_OK) {
		log_err("msg=\"curl_global_init failed\" error=\"%s\"", curl_easy_strerror(cc));
		config_destroy(cfg);
		return 1;
	}
	const char *db_path = cfg->state.database;
	if (opts->dry_run_dir) {
		if (make_scratch_db(cfg->state.database, opts->dry_run_dir, scratch, sizeof(scratch)) < 0)
			goto free_config;
		db_path = scratch;
	}
	store_on_migration(on_migration, NULL, 5000);
	if (opts->is_fresh_state && !opts->dry_run_dir) {
		char moved[4400];
		int r = store_move_aside(db_path, moved, sizeof(moved));
		if (r < 0) {
			log_err("msg=\"cannot move the state database aside\" path=\"%s\" error=\"%s\"", db_path, strerror(-r));
			goto free_config;
		}
		log_warn("msg=\"--fresh-state: the state database was moved aside; starting anew\" moved_to=\"%s\"", moved);
	}
	d.st = store_create(db_path, (cfg->state.quick_check ? STORE_CHECK : 0) | (opts->dry_run_dir ? STORE_SCRATCH : 0),
			    err, sizeof(err));
	if (!d.st) {
		log_err("msg=\"cannot open state database\" error=\"%s\"", err);
		fprintf(stderr, "tpsyncd: %s\n", err);
		goto free_config;
	}
	if (d.st->is_replaced && !opts->is_fresh_state) {
		/* Its sentinel says a database was here: it was deleted, and with it
		 * every staged change and the mirror of what Target holds. */
		log_err("msg=\"a new, empty state database was created where one existed before; every staged change it "
			"held is lost, and everything is sent again as sources are read\" path=\"%s\"", db_path);
		snprintf(d.last_error, sizeof(d.last_error), "the state database %.512s was missing and has been created anew: "
			 "staged changes it held are lost (restore a backup if you have one)", db_path);
	}
	d.base = event_base_new();
	if (!d.base || event_base_priority_init(d.base, 3) < 0) {
		log_err("msg=\"cannot create event loop\"");
		goto free_modules;
	}
	d.started_at = clock_wall_ms();
	d.once_deadline = d.started_at + opts->wait_ms;
	d.dead_at_start = dead_letters_count(d.st);
	d.apply_event = event_new(d.base, -1, 0, on_apply, &d);
	d.integrity = integrity_create(db_path);
	d.backup = backup_create(d.base, d.st->db);
	d.queue = queue_create(d.st);
	d.ingest = ingest_create(d.base, d.st, opts->dry_run_dir, &ingest_listener, &d);
	if (!d.apply_event || !d.integrity || !d.backup || !d.queue || !d.ingest) {
		log_err("msg=\"cannot start\" error=\"out of memory\"");
		goto free_modules;
	}
	struct sender_options so = { .dry_run_dir = opts->dry_run_dir, .is_once = opts->is_once };
	d.sender = sender_create(d.base, d.st, d.queue, d.cfg, &so, &sender_listener, &d);
	if (!d.sender)
		goto free_modules;
	d.st->history.events = d.cfg->trace.events;
	d.st->history.max_age_ms = d.cfg->trace.max_age_ms;
	if (!opts->dry_run_dir) {
		d.verify = verify_create(d.base, d.st, d.cfg, &verify_listener, &d);
		if (!d.verify)
			goto free_modules;
		if (d.cfg->target.oauth.is_set && !(d.oauth = oauth_create(d.base, d.cfg, &oauth_listener, &d)))
			goto free_modules;
	}
	d.env = (struct source_env){ .base = d.base, .st = d.st, .ingest = d.ingest,
				     .is_dry_run = opts->dry_run_dir != NULL, .listener = &source_listener, .arg = &d };
	if (start_sources(&d) < 0)
		goto free_modules;
	if (!opts->is_once || !opts->dry_run_dir) {
		d.control = control_create(d.base, d.cfg->control.socket, d.cfg->control.group, d.cfg->control.mutating,
					   commands, &d);
		if (!d.control && !opts->is_once)
			goto free_modules;
		/* Asked for and not to be had: a start-up failure, like the socket. */
		if (!opts->is_once && start_metrics(&d) < 0)
			goto free_modules;
	}
	for (int i = 0; i < 3; i++) {
		signals[i] = evsignal_new(d.base, sigs[i], on_signal, &d);
		if (!signals[i] || event_add(signals[i], NULL) < 0) {
			log_err("msg=\"cannot install signal handler\"");
			goto free_modules;
		}
		event_priority_set(signals[i], 0);
	}
	if (start_timers(&d) < 0)
		goto free_modules;
	notify("READY=1\nSTATUS=running");
	log_info("msg=\"tpsyncd started\" version=%s sources=%zu database=\"%s\" socket=\"%s\"%s", TPSYNC_VERSION,
		 d.n_sources, d.cfg->state.database, d.cfg->control.socket, opts->dry_run_dir ? " dry_run=yes" : "");
	if (event_base_dispatch(d.base) < 0)
		log_err("msg=\"event loop failed\"");
	exit_code = opts->is_once ? d.exit_code : 0;
	log_info("msg=\"tpsyncd stopped\"");
free_modules:
	for (int i = 0; i < 3; i++)
		free_event(&signals[i]);
	free_event(&d.watchdog);
	free_event(&d.status_timer);
	free_event(&d.once_timer);
	free_event(&d.stop_timer);
	free_event(&d.stop_deadline);
	free_event(&d.apply_event);
	control_destroy(d.control);
	metrics_http_free(d.metrics);
	backup_destroy(d.backup);
	integrity_destroy(d.integrity);
	oauth_destroy(d.oauth);
	verify_destroy(d.verify);
	stop_sources(&d);
	sender_destroy(d.sender);
	ingest_destroy(d.ingest);
	queue_destroy(d.queue);
	config_destroy(d.next_cfg);
	if (d.base)
		event_base_free(d.base);
	store_destroy(d.st);
	if (scratch[0])
		remove_scratch(scratch);
free_config:
	config_destroy(d.cfg);
	curl_global_cleanup();
	return exit_code;
}
