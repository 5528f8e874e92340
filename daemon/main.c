/* SPDX-License-Identifier: MIT */
/* tpsyncd: argument parsing, start-up in dependency order (config, state, sender,
 * sources, control socket), signals, sd_notify, --once and --dry-run. */
#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "build_config.h"
#include "config.h"
#include "daemon.h"
#include "control.h"
#include "ingest.h"
#include "log.h"
#include "sender.h"
#include "source.h"
#include "store.h"
#include "units.h"

#if HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#define SHUTDOWN_GRACE_MS 10000

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
	notify("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=migrating the state database from schema %d to %d", from, to);
}

static void usage(FILE *out)
{
	fputs("Usage: tpsyncd -c FILE [options]\n"
	      "Keeps Adobe Target visitor profiles in sync with CRM exports and databases.\n\n"
	      "  -c, --config FILE     configuration file (YAML)\n"
	      "      --check-config    validate the configuration and exit (0 valid, 1 invalid)\n"
	      "      --once            scan sources, deliver everything, wait for final status, exit\n"
	      "      --wait DURATION   with --once: how long to wait for final status (default 10m)\n"
	      "      --dry-run DIR     with --once: write the batch files that would be sent into DIR;\n"
	      "                        the state database and source files are left untouched\n"
	      "      --log-level LVL   error, warn, info (default) or debug\n"
	      "  -V, --version         print the version\n"
	      "  -h, --help            this help\n",
	      out);
}

/* --- sources ---------------------------------------------------------------------- */

static int start_sources(struct daemon *d)
{
	d->sources = calloc(d->cfg->n_sources ? d->cfg->n_sources : 1, sizeof(*d->sources));
	if (!d->sources)
		return -ENOMEM;
	for (size_t i = 0; i < d->cfg->n_sources; i++) {
		int r = source_create(d, &d->cfg->sources[i], &d->sources[d->n_sources]);
		if (r < 0) {
			log_err("msg=\"source not started\" source=%s error=\"%s\"", d->cfg->sources[i].name, strerror(-r));
			return r;
		}
		d->n_sources++;
	}
	for (size_t i = 0; i < d->n_sources; i++)
		source_scan(d->sources[i]);
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

static struct config *next_cfg;

static int apply_config(struct daemon *d)
{
	struct config *old = d->cfg;
	struct source **old_sources = d->sources;
	size_t old_n = d->n_sources;
	d->cfg = next_cfg;
	next_cfg = NULL;
	d->sources = NULL;
	d->n_sources = 0;
	int r = start_sources(d);
	if (r < 0) {
		stop_sources(d);
		config_destroy(d->cfg);
		d->cfg = old;
		d->sources = old_sources;
		d->n_sources = old_n;
		snprintf(d->last_error, sizeof(d->last_error), "reload failed: a source could not be started (see log)");
		return r;
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
	sender_reconfigure(d->sender);
	config_destroy(old);
	d->last_error[0] = '\0';
	log_info("msg=\"configuration reloaded\" sources=%zu", d->n_sources);
	return 0;
}

int daemon_reload(struct daemon *d)
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
	config_destroy(next_cfg);
	next_cfg = cfg;
	if (sender_reload_token(d->sender) < 0)
		snprintf(d->last_error, sizeof(d->last_error), "cannot read the token file; keeping the old token");
	/* Sources are swapped only between files, so no file is cut in half. */
	if (ingest_is_idle(d->ingest))
		return apply_config(d);
	log_info("msg=\"configuration will be applied when the current file is done\"");
	return 0;
}

/* --- progress, --once ------------------------------------------------------------ */

static struct event *once_timer;
static int64_t once_dead_at_start;
static struct event *apply_event; /* applies a pending config from the loop's top */

static void on_apply(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	if (next_cfg && ingest_is_idle(d->ingest) && !d->is_stopping)
		apply_config(d);
}

void daemon_progress(struct daemon *d)
{
	/* Deferred: the caller may be a source that applying would free under it. */
	if (next_cfg && apply_event)
		event_active(apply_event, 0, 0);
	sender_kick(d->sender);
	if (d->is_once && once_timer)
		event_active(once_timer, 0, 0);
}

/* systemd's STATUS= line, refreshed by a timer (counting the queue is not free,
 * so it is never done per slice), and only when systemd listens. */
static void on_status_timer(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	const char *s = sender_status_line(d->sender);
	notify("STATUS=%s", s);
}

static void print_summary(struct daemon *d, bool timed_out)
{
	struct store *st = d->st;
	printf("tpsyncd --once summary\n");
	for (size_t i = 0; i < d->n_sources; i++) {
		struct source_stats *s = &d->sources[i]->stats;
		printf("  source %-12s files=%lld failed=%lld rows=%lld staged=%lld rejected=%lld\n",
		       d->sources[i]->cfg->name, (long long)s->files, (long long)s->files_failed, (long long)s->rows_read,
		       (long long)s->rows_staged, (long long)s->rows_rejected);
	}
	printf("  batches complete=%lld awaiting_status=%lld dead=%lld\n",
	       (long long)store_query_int(st, "SELECT count(*) FROM batches WHERE state = 'complete'", 0),
	       (long long)store_query_int(st, "SELECT count(*) FROM batches WHERE state = 'submitted'", 0),
	       (long long)store_query_int(st, "SELECT count(*) FROM batches WHERE state = 'dead'", 0));
	printf("  dead letters=%lld (new in this run: %lld)\n",
	       (long long)store_query_int(st, "SELECT count(*) FROM dead_letters", 0),
	       (long long)(store_query_int(st, "SELECT count(*) FROM dead_letters", 0) - once_dead_at_start));
	if (timed_out)
		printf("  --wait elapsed before every batch reached its final status\n");
	fflush(stdout);
}

static void on_once_check(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	if (d->is_stopping)
		return;
	bool timed_out = now_ms() >= d->once_deadline;
	bool delivered = ingest_is_idle(d->ingest) && sender_is_drained(d->sender, false);
	for (size_t i = 0; i < d->n_sources; i++)
		delivered = delivered && source_is_caught_up(d->sources[i]);
	bool complete = delivered && sender_is_drained(d->sender, true);
	if (!complete && !timed_out)
		return;
	bool failed = store_query_int(d->st, "SELECT count(*) FROM dead_letters", 0) > once_dead_at_start;
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

static struct event *stop_timer, *stop_deadline;

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
		daemon_reload(d);
		return;
	}
	if (d->is_stopping) {
		event_base_loopexit(d->base, NULL);
		return;
	}
	log_info("msg=\"stopping\" signal=%d in_flight=%d", (int)sig, sender_active(d->sender));
	notify("STOPPING=1");
	d->is_stopping = true;
	ingest_set_paused(d->ingest, true);
	/* In-flight requests get a bounded time to be answered; whatever is still
	 * running then is recovered (re-sent) at the next start. */
	struct timeval poll = { 0, 100000 };
	stop_timer = event_new(d->base, -1, EV_PERSIST, on_drain_check, d);
	stop_deadline = evtimer_new(d->base, on_stop_deadline, d);
	int64_t grace = d->cfg->target.timeout_ms < SHUTDOWN_GRACE_MS ? d->cfg->target.timeout_ms : SHUTDOWN_GRACE_MS;
	struct timeval tv = { grace / 1000, (grace % 1000) * 1000 };
	if (!stop_timer || !stop_deadline || event_add(stop_timer, &poll) < 0 || event_add(stop_deadline, &tv) < 0)
		event_base_loopexit(d->base, NULL);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	notify("WATCHDOG=1");
}

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

/* --- main ----------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	enum { OPT_CHECK = 256, OPT_ONCE, OPT_WAIT, OPT_DRY_RUN, OPT_LOG_LEVEL };
	static const struct option options[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, OPT_CHECK },
		{ "once", no_argument, NULL, OPT_ONCE },
		{ "wait", required_argument, NULL, OPT_WAIT },
		{ "dry-run", required_argument, NULL, OPT_DRY_RUN },
		{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config_path = NULL;
	bool check_only = false;
	int64_t wait_ms = 600000;
	struct daemon d = { .exit_code = 0 };
	int opt;

	log_init();
	while ((opt = getopt_long(argc, argv, "c:Vh", options, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config_path = optarg;
			break;
		case OPT_CHECK:
			check_only = true;
			break;
		case OPT_ONCE:
			d.is_once = true;
			break;
		case OPT_WAIT:
			if (units_parse_duration(optarg, &wait_ms) < 0) {
				fprintf(stderr, "tpsyncd: --wait: expected a duration like 30s or 10m, got \"%s\"\n", optarg);
				return 64;
			}
			break;
		case OPT_DRY_RUN:
			d.dry_run_dir = optarg;
			break;
		case OPT_LOG_LEVEL: {
			enum log_level level;
			if (log_parse_level(optarg, &level) < 0) {
				fprintf(stderr, "tpsyncd: --log-level: expected error, warn, info or debug\n");
				return 64;
			}
			log_set_level(level);
			break;
		}
		case 'V':
			printf("tpsyncd %s\n", TPSYNC_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 64;
		}
	}
	if (!config_path || optind != argc) {
		usage(stderr);
		return 64;
	}
	if (d.dry_run_dir && !d.is_once) {
		fprintf(stderr, "tpsyncd: --dry-run goes with --once\n");
		return 64;
	}
	if (config_load(config_path, &d.cfg, stderr) < 0)
		return 1;
	if (check_only) {
		printf("%s: configuration is valid (%zu source%s)\n", config_path, d.cfg->n_sources,
		       d.cfg->n_sources == 1 ? "" : "s");
		config_destroy(d.cfg);
		return 0;
	}

	signal(SIGPIPE, SIG_IGN);
	CURLcode cc = curl_global_init(CURL_GLOBAL_DEFAULT);
	if (cc != CURLE_OK) {
		fprintf(stderr, "tpsyncd: curl_global_init: %s\n", curl_easy_strerror(cc));
		return 1;
	}
	int exit_code = 1;
	char err[512], scratch[4096] = "";
	const char *db_path = d.cfg->state.database;
	if (d.dry_run_dir) {
		if (make_scratch_db(d.cfg->state.database, d.dry_run_dir, scratch, sizeof(scratch)) < 0)
			goto free_config;
		db_path = scratch;
	}
	store_on_migration(on_migration, NULL, 5000);
	d.st = store_create(db_path, err, sizeof(err));
	if (!d.st) {
		log_err("msg=\"cannot open state database\" error=\"%s\"", err);
		goto free_config;
	}
	d.base = event_base_new();
	if (!d.base || event_base_priority_init(d.base, 3) < 0) {
		log_err("msg=\"cannot create event loop\"");
		goto close_store;
	}
	d.started_at = now_ms();
	d.once_deadline = d.started_at + wait_ms;
	once_dead_at_start = store_query_int(d.st, "SELECT count(*) FROM dead_letters", 0);
	d.ingest = ingest_create(&d);
	d.sender = d.ingest ? sender_create(&d) : NULL;
	if (!d.sender)
		goto free_modules;
	if (start_sources(&d) < 0)
		goto free_modules;
	apply_event = event_new(d.base, -1, 0, on_apply, &d);
	if (!apply_event)
		goto free_modules;
	if (!d.is_once || d.dry_run_dir == NULL) {
		d.control = control_create(&d, d.cfg->control.socket);
		if (!d.control && !d.is_once)
			goto free_modules;
	}
	struct event *signals[4];
	int sigs[4] = { SIGTERM, SIGINT, SIGHUP, 0 };
	for (int i = 0; sigs[i]; i++) {
		signals[i] = evsignal_new(d.base, sigs[i], on_signal, &d);
		if (!signals[i] || event_add(signals[i], NULL) < 0) {
			log_err("msg=\"cannot install signal handler\"");
			goto free_modules;
		}
		event_priority_set(signals[i], 0);
	}
	struct event *watchdog = NULL, *status_timer = NULL;
	if (getenv("NOTIFY_SOCKET")) {
		status_timer = event_new(d.base, -1, EV_PERSIST, on_status_timer, &d);
		struct timeval tv = { 5, 0 };
		if (!status_timer || event_add(status_timer, &tv) < 0)
			log_warn("msg=\"cannot start status timer\"");
	}
#if HAVE_LIBSYSTEMD
	uint64_t wd_usec = 0;
	if (sd_watchdog_enabled(0, &wd_usec) > 0) {
		watchdog = event_new(d.base, -1, EV_PERSIST, on_watchdog, &d);
		struct timeval tv = { (time_t)(wd_usec / 2000000), (suseconds_t)(wd_usec / 2 % 1000000) };
		if (!watchdog || event_add(watchdog, &tv) < 0)
			log_warn("msg=\"cannot start watchdog timer\"");
	}
#endif
	if (d.is_once) {
		once_timer = event_new(d.base, -1, EV_PERSIST, on_once_check, &d);
		struct timeval tv = { 0, 200000 };
		if (!once_timer || event_add(once_timer, &tv) < 0)
			goto free_modules;
	}
	notify("READY=1\nSTATUS=running");
	log_info("msg=\"tpsyncd started\" version=%s sources=%zu database=\"%s\" socket=\"%s\"%s", TPSYNC_VERSION,
		 d.n_sources, d.cfg->state.database, d.cfg->control.socket, d.dry_run_dir ? " dry_run=yes" : "");
	if (event_base_dispatch(d.base) < 0)
		log_err("msg=\"event loop failed\"");
	exit_code = d.is_once ? d.exit_code : 0;
	log_info("msg=\"tpsyncd stopped\"");
	for (int i = 0; sigs[i]; i++)
		event_free(signals[i]);
	if (watchdog)
		event_free(watchdog);
	if (status_timer)
		event_free(status_timer);
free_modules:
	if (apply_event)
		event_free(apply_event);
	apply_event = NULL;
	if (once_timer)
		event_free(once_timer);
	once_timer = NULL;
	if (stop_timer)
		event_free(stop_timer);
	if (stop_deadline)
		event_free(stop_deadline);
	control_destroy(d.control);
	stop_sources(&d);
	sender_destroy(d.sender);
	ingest_destroy(d.ingest);
	config_destroy(next_cfg);
	if (d.base)
		event_base_free(d.base);
close_store:
	store_destroy(d.st);
	if (scratch[0])
		remove_scratch(scratch);
free_config:
	config_destroy(d.cfg);
	curl_global_cleanup();
	return exit_code;
}
