/* SPDX-License-Identifier: MIT */
/* tpsyncctl: asks a running tpsyncd over its control socket and prints the answer
 * as a table for people, or as the raw JSON object with --json. Exit codes: 0 ok,
 * 1 the daemon refused the command, 2 the daemon cannot be reached, 64 bad usage. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "batch_state.h"
#include "control_proto.h"

#define DEFAULT_SOCKET "/run/tpsyncd/control.sock"
#define EXIT_REFUSED 1
#define EXIT_UNREACHABLE 2
#define EXIT_USAGE 64

static const struct command {
	const char *name;
	const char *args;
	const char *help;
	const char *details;
} commands[] = {
	{ "status", "", "what the daemon is doing: queue, delivery, sources",
	  "Shows the queue (profiles pending, batches ready, in flight, awaiting Target's\n"
	  "status), the delivery state (running, paused, authentication failed, or held\n"
	  "back by a limit, with which limit and until when), the last success and error,\n"
	  "dead letters, and per-source counters." },
	{ "sources", "", "per-source counters, rejects and ingestion progress",
	  "Per source: files ingested and failed, rows read, staged and rejected, the last\n"
	  "file and problem; for a file being read, rows, bytes and rows/s; for snapshots,\n"
	  "the profiles missing from the last version (Target keeps their values)." },
	{ "batches", "[--limit N] [--state S]", "recent batches and their state at Target",
	  "The newest N batches (default 20), or the newest in state S (ready, posting,\n"
	  "submitted, complete, stuck, dead, split, unconfirmed): state, rows, bytes,\n"
	  "attempts, when sent, Target's status and counts (successful, profilesNotFound,\n"
	  "failed) or last error." },
	{ "dead", "[--limit N]", "dead letters: values that could not be delivered",
	  "The newest N dead letters (default 50) with profile, attribute, value, reason,\n"
	  "attempts and Target's last answer, and the total." },
	{ "retry-dead", "[--all | ID...]", "queue dead letters again",
	  "Stages the dead letters (all, or the given ids) again; a value staged since is\n"
	  "newer and wins. Needs root or the daemon's user." },
	{ "pause", "", "hold new submissions (status polls go on)", "Needs root or the daemon's user." },
	{ "resume", "", "release a pause", "Needs root or the daemon's user." },
	{ "flush", "", "send what is pending now, without waiting for batch.linger",
	  "Needs root or the daemon's user." },
	{ "rescan", "[SOURCE]", "look for new files in every (or one) source", "Needs root or the daemon's user." },
	{ "reload", "", "re-read the configuration and the token (like SIGHUP)",
	  "Exits 1 with the configuration's errors if it is invalid (the running one\n"
	  "stays). Needs root or the daemon's user." },
	{ "check", "", "a full integrity check of the state database",
	  "Runs SQLite's PRAGMA integrity_check on the state database while the daemon\n"
	  "goes on (its own connection, in a thread; minutes for a large one), waits for\n"
	  "it and prints ok or the problems found. Exit 0 ok, 1 damaged. tpsyncd runs the\n"
	  "quicker quick_check at every start. Needs root or the daemon's user." },
	{ "backup", "FILE", "a consistent copy of the state database, while it runs",
	  "Copies the state database to FILE (which must not exist) with SQLite's online\n"
	  "backup API, in steps between the daemon's other work, and waits for it: FILE\n"
	  "is written as FILE.tmp (mode 0600, by the daemon's user, so its directory\n"
	  "must be writable by it), synced, and renamed when complete. To restore: stop\n"
	  "tpsyncd, copy FILE to state.database (removing its -wal and -shm files),\n"
	  "start it. Exit 0 written, 1 failed. Needs root or the daemon's user." },
	{ "verify", "ID... | --sample N | --all [--background] | --stop [--no-repair]",
	  "compare what Target holds with the mirror, and repair",
	  "Fetches the profiles from Target's profile fetch API (within\n"
	  "verify.calls_per_minute), compares every attribute tpsyncd sent with the value\n"
	  "Target last accepted, prints matched / differs (attribute, ours, Target's) /\n"
	  "missing / changed in Target, and queues the latest values of what differs\n"
	  "again (--no-repair only reports). A value Target changed after our acceptance\n"
	  "(a page visit) is repaired only with verify.repair: always. Profiles with newer\n"
	  "values pending or in flight, or accepted less than verify.min_age ago, are\n"
	  "skipped. --all walks every profile, printing progress (--background returns at\n"
	  "once; progress shows in status); --stop ends it. Exit 0 all matched, 1 some\n"
	  "differed, 2 Target unreachable. Needs root or the daemon's user." },
	{ "canary", "", "check that Target stores every special character as sent",
	  "Sends verify.canary_id-CLASS profiles, one per character class the batch\n"
	  "format treats specially (%, &, +, =, comma, newline, tab, quotes, non-ASCII,\n"
	  "leading and trailing spaces), waits until the fetch API shows them (at most\n"
	  "verify.canary_timeout) and says, class by class, whether Target stored exactly\n"
	  "what was sent, and what to do if not. Run it first against a new Target\n"
	  "account. Exit 0 all stored, 1 some broken, 2 unreachable." },
	{ "trace", "ID", "everything known about one profile",
	  "Each attribute's accepted, in-flight and pending value; the profile's last\n"
	  "changes (trace.events, within trace.max_age), each with its source, file and\n"
	  "line or database position, when it was staged, and the batch that carried it\n"
	  "(our id and Target's batchId, when sent, Target's answer, its status, that\n"
	  "row's result); dead letters; the last verification. Exit 1 for an unknown id." },
	{ "metrics", "", "Prometheus text exposition",
	  "Queue depth, oldest pending age, batches by state, rows by source and outcome,\n"
	  "retries by cause, request latency histogram, dead letters, last success time.\n"
	  "For node_exporter's textfile collector: tpsyncctl metrics > FILE.prom.tmp && mv ..." },
	{ NULL, NULL, NULL, NULL },
};

static void usage(FILE *out)
{
	fprintf(out, "Usage: tpsyncctl [-s SOCKET] COMMAND [ARGS] [--json]\n"
		     "       tpsyncctl help COMMAND\n\nCommands:\n");
	for (const struct command *c = commands; c->name; c++) {
		if (strlen(c->args) > 16)
			fprintf(out, "  %-10s %s\n  %-10s %-16s %s\n", c->name, c->args, "", "", c->help);
		else
			fprintf(out, "  %-10s %-16s %s\n", c->name, c->args, c->help);
	}
	fprintf(out, "\nOptions:\n  -s, --socket PATH  control socket (default %s)\n"
		     "  --json             print the daemon's JSON answer\n  -h, --help         this help\n"
		     "\nExit status: 0 ok, 1 refused by the daemon, 2 daemon unreachable.\n",
		DEFAULT_SOCKET);
}

/* Sends one request line and reads one answer line. Returns the parsed answer or
 * NULL with a message printed. */
static json_t *call(const char *path, json_t *req)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "tpsyncctl: socket path too long: %s\n", path);
		return NULL;
	}
	strcpy(sun.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		fprintf(stderr, "tpsyncctl: cannot reach tpsyncd at %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	char *text = json_dumps(req, JSON_COMPACT);
	size_t len = text ? strlen(text) : 0;
	bool ok = text && write(fd, text, len) == (ssize_t)len && write(fd, "\n", 1) == 1;
	free(text);
	if (!ok) {
		fprintf(stderr, "tpsyncctl: cannot send to %s: %s\n", path, strerror(errno));
		close(fd);
		return NULL;
	}
	char *answer = NULL;
	size_t alen = 0, cap = 0;
	for (;;) {
		if (alen + 4096 > cap) {
			cap = cap ? cap * 2 : 8192;
			char *bigger = realloc(answer, cap);
			if (!bigger) {
				free(answer);
				close(fd);
				return NULL;
			}
			answer = bigger;
		}
		ssize_t n = read(fd, answer + alen, cap - alen - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		alen += (size_t)n;
		if (memchr(answer + alen - n, '\n', (size_t)n))
			break;
	}
	close(fd);
	json_error_t err;
	json_t *reply = answer ? json_loadb(answer, alen, 0, &err) : NULL;
	free(answer);
	if (!reply)
		fprintf(stderr, "tpsyncctl: no valid answer from %s\n", path);
	return reply;
}

static void fmt_ago(json_t *ms, char *out, size_t size)
{
	if (!json_is_integer(ms) || json_integer_value(ms) == 0) {
		snprintf(out, size, "never");
		return;
	}
	long long secs = (long long)time(NULL) - json_integer_value(ms) / 1000;
	if (secs < 0)
		snprintf(out, size, "in %llds", -secs);
	else if (secs < 60)
		snprintf(out, size, "%llds ago", secs);
	else if (secs < 3600)
		snprintf(out, size, "%lldm ago", secs / 60);
	else if (secs < 86400)
		snprintf(out, size, "%lldh ago", secs / 3600);
	else
		snprintf(out, size, "%lldd ago", secs / 86400);
}

/* A time in ms since the epoch as UTC, "2026-12-01 23:40:05Z" ("-": none). */
static void fmt_time(json_t *ms, char *out, size_t size)
{
	if (!json_is_integer(ms) || json_integer_value(ms) == 0) {
		snprintf(out, size, "-");
		return;
	}
	time_t t = (time_t)(json_integer_value(ms) / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, size, "%Y-%m-%d %H:%M:%SZ", &tm);
}

static void fmt_count(double v, char *out, size_t size)
{
	if (v >= 1e6)
		snprintf(out, size, "%.1fM", v / 1e6);
	else if (v >= 1e3)
		snprintf(out, size, "%.1fk", v / 1e3);
	else
		snprintf(out, size, "%.0f", v);
}

static const char *str(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "-";
}

static long long num(json_t *o, const char *key)
{
	return (long long)json_integer_value(json_object_get(o, key));
}

static void print_sources(json_t *sources)
{
	size_t i;
	json_t *s;
	printf("%-12s %-9s %6s %6s %10s %10s %9s  %s\n", "SOURCE", "TYPE", "FILES", "FAILED", "ROWS", "STAGED", "REJECTED",
	       "LAST FILE OR DATABASE POSITION");
	json_array_foreach(sources, i, s) {
		char ago[32], rows[16], staged[16];
		fmt_ago(json_object_get(s, "last_file_at"), ago, sizeof(ago));
		fmt_count((double)num(s, "rows_read"), rows, sizeof(rows));
		fmt_count((double)num(s, "rows_staged"), staged, sizeof(staged));
		printf("%-12s %-9s %6lld %6lld %10s %10s %9lld  %s (%s)\n", str(s, "name"), str(s, "type"), num(s, "files"),
		       num(s, "files_failed"), rows, staged, num(s, "rows_rejected"), str(s, "last_file"), ago);
		json_t *ing = json_object_get(s, "ingesting");
		if (ing) {
			char rate[16];
			fmt_count(json_real_value(json_object_get(ing, "rows_per_second")), rate, sizeof(rate));
			printf("%-12s ingesting %s: %lld rows, %lld of %lld bytes, %s rows/s\n", "", str(ing, "file"),
			       num(ing, "rows"), num(ing, "bytes"), num(ing, "size"), rate);
		}
		if (json_is_string(json_object_get(s, "last_error")))
			printf("%-12s last problem: %s\n", "", str(s, "last_error"));
		if (json_object_get(s, "profiles_missing") && num(s, "profiles_missing") > 0)
			printf("%-12s profiles missing from the last snapshot: %lld (not cleared in Target)\n", "",
			       num(s, "profiles_missing"));
	}
}

static void print_status(json_t *r)
{
	json_t *q = json_object_get(r, "queue"), *dl = json_object_get(r, "delivery");
	char ago[32], oldest[32];
	fmt_ago(json_object_get(dl, "last_success_at"), ago, sizeof(ago));
	fmt_ago(json_object_get(q, "oldest_pending_at"), oldest, sizeof(oldest));
	long long up = num(r, "uptime_seconds");
	printf("tpsyncd %s (pid %lld), client %s, up %lldh%02lldm%02llds\n", str(r, "version"), num(r, "pid"),
	       str(r, "client_code"), up / 3600, up / 60 % 60, up % 60);
	printf("delivery:  %s", str(dl, "state"));
	if (json_is_string(json_object_get(dl, "held_back_by"))) {
		char until[32];
		fmt_ago(json_object_get(dl, "held_back_until"), until, sizeof(until));
		printf(" by %s (until %s)", str(dl, "held_back_by"), until);
	}
	printf("; last success %s\n", ago);
	if (!num(q, "pending_profiles"))
		snprintf(oldest, sizeof(oldest), "-");
	printf("queue:     %lld profiles pending (oldest %s), %lld in batches Target has not finished;"
	       " %lld batches ready, %lld in flight, %lld awaiting status\n",
	       num(q, "pending_profiles"), oldest, num(q, "in_flight_profiles"), num(q, "batches_ready"),
	       num(q, "batches_in_flight"), num(q, "batches_awaiting_status"));
	printf("sent:      %lld rows in %lld batches accepted (%lld complete); %lld rows in the last 24h\n",
	       num(dl, "rows_sent"), num(dl, "batches_accepted"), num(dl, "batches_complete"), num(dl, "rows_sent_last_24h"));
	printf("dead:      %lld dead letters%s\n", num(q, "dead_letters"),
	       num(q, "dead_letters") ? " (tpsyncctl dead; tpsyncctl retry-dead)" : "");
	if (json_is_string(json_object_get(dl, "last_error")))
		printf("last error: %s\n", str(dl, "last_error"));
	if (json_is_string(json_object_get(r, "last_error")))
		printf("daemon:    %s\n", str(r, "last_error"));
	printf("\n");
	print_sources(json_object_get(r, "sources"));
}

static void print_batches(json_t *arr)
{
	size_t i;
	json_t *b;
	printf("%6s %-9s %8s %10s %4s %-10s %-9s %s\n", "ID", "STATE", "ROWS", "BYTES", "TRY", "SENT", "TARGET", "DETAIL");
	json_array_foreach(arr, i, b) {
		char ago[32];
		fmt_ago(json_object_get(b, "sent_at"), ago, sizeof(ago));
		char detail[256] = "";
		if (json_is_integer(json_object_get(b, "successful")))
			snprintf(detail, sizeof(detail), "ok=%lld not_found=%lld failed=%lld", num(b, "successful"),
				 num(b, "not_found"), num(b, "failed"));
		else if (json_is_string(json_object_get(b, "last_error")))
			snprintf(detail, sizeof(detail), "%s", str(b, "last_error"));
		printf("%6lld %-9s %8lld %10lld %4lld %-10s %-9s %s\n", num(b, "id"), str(b, "state"), num(b, "rows"),
		       num(b, "bytes"), num(b, "attempts"), ago, str(b, "target_status"), detail);
	}
}

static void print_dead(json_t *r)
{
	size_t i;
	json_t *d;
	printf("%lld dead letters\n", num(r, "total"));
	printf("%6s %-20s %-16s %-20s %s\n", "ID", "PROFILE", "ATTRIBUTE", "VALUE", "REASON");
	json_array_foreach(json_object_get(r, "dead_letters"), i, d)
		printf("%6lld %-20.20s %-16.16s %-20.20s %s\n", num(d, "id"), str(d, "profile"), str(d, "attr"),
		       str(d, "value"), str(d, "reason"));
}

static json_t *ask(const char *path, const char *cmd, json_t *args)
{
	json_t *req = json_pack("{s:i, s:s, s:o}", "v", CONTROL_PROTOCOL_VERSION, "cmd", cmd, "args", args);
	json_t *reply = req ? call(path, req) : NULL;
	json_decref(req);
	return reply;
}

static void print_json(json_t *r)
{
	char *text = json_dumps(r, JSON_INDENT(2) | JSON_SORT_KEYS);
	if (text)
		puts(text);
	free(text);
}

static void print_verify(json_t *r)
{
	size_t i;
	json_t *x;
	json_array_foreach(json_object_get(r, "results"), i, x) {
		json_t *detail = json_object_get(x, "detail");
		if (json_object_get(x, "class")) { /* the canary */
			bool ok = json_is_true(json_object_get(x, "ok"));
			printf("%-10s %s\n", str(x, "class"), ok ? "stored as sent" : "BROKEN");
			if (!ok) {
				printf("           sent   \"%s\"\n           stored %s%s%s\n", str(x, "sent"),
				       json_object_get(x, "stored") ? "\"" : "", json_object_get(x, "stored") ? str(x, "stored") : "(nothing)",
				       json_object_get(x, "stored") ? "\"" : "");
				printf("           %s\n", str(x, "advice"));
			}
			continue;
		}
		printf("%-24s %s%s\n", str(x, "profile"), str(x, "result"),
		       json_is_true(json_object_get(detail, "repaired")) ? " (queued again)" : "");
		if (json_object_get(detail, "why"))
			printf("    %s\n", str(detail, "why"));
		size_t j;
		json_t *d;
		json_array_foreach(json_object_get(detail, "differs"), j, d)
			printf("    %-20s ours \"%s\", Target's %s%s%s%s\n", str(d, "attr"), str(d, "ours"),
			       json_object_get(d, "target") ? "\"" : "", json_object_get(d, "target") ? str(d, "target") : "(none)",
			       json_object_get(d, "target") ? "\"" : "",
			       json_is_true(json_object_get(d, "changed_in_target")) ? " (changed in Target since)" : "");
	}
	printf("checked %lld: matched %lld, differed %lld, missing %lld, changed in Target %lld; repaired %lld,"
	       " skipped %lld, errors %lld\n", num(r, "checked"), num(r, "matched"), num(r, "differed"), num(r, "missing"),
	       num(r, "changed_in_target"), num(r, "repaired"), num(r, "skipped"), num(r, "errors"));
	if (json_object_get(r, "last_error"))
		printf("last error: %s\n", str(r, "last_error"));
}

/* tpsyncctl verify / canary: starts a run and follows it until it ends. */
static int run_verify(const char *path, json_t *args, bool is_background, bool as_json)
{
	json_t *reply = ask(path, "verify", args);
	if (!reply)
		return EXIT_UNREACHABLE;
	if (!json_is_true(json_object_get(reply, "ok"))) {
		fprintf(stderr, "tpsyncctl: verify: %s\n", str(reply, "error"));
		json_decref(reply);
		return EXIT_REFUSED;
	}
	json_int_t run = json_integer_value(json_object_get(json_object_get(reply, "result"), "run"));
	json_decref(reply);
	if (is_background) {
		printf("verification run %lld started; tpsyncctl status shows its progress\n", (long long)run);
		return 0;
	}
	long long last_checked = -1;
	for (;;) {
		reply = ask(path, "verify-status", json_pack("{s:I}", "run", run));
		if (!reply)
			return EXIT_UNREACHABLE;
		json_t *r = json_object_get(reply, "result");
		if (!json_is_true(json_object_get(reply, "ok"))) {
			fprintf(stderr, "tpsyncctl: verify: %s\n", str(reply, "error"));
			json_decref(reply);
			return EXIT_REFUSED;
		}
		if (strcmp(str(r, "state"), "running") != 0) {
			if (as_json)
				print_json(r);
			else
				print_verify(r);
			bool broken = num(r, "differed") + num(r, "missing") + num(r, "changed_in_target") > 0;
			bool unreachable = num(r, "checked") == 0 && (num(r, "errors") > 0 || strcmp(str(r, "state"), "failed") == 0);
			json_decref(reply);
			return unreachable ? EXIT_UNREACHABLE : broken ? EXIT_REFUSED : 0;
		}
		if (!as_json && strcmp(str(r, "kind"), "all") == 0 && num(r, "checked") != last_checked) {
			last_checked = num(r, "checked");
			printf("checked %lld (matched %lld, differed %lld, missing %lld), skipped %lld%s%s\n", last_checked,
			       num(r, "matched"), num(r, "differed"), num(r, "missing"), num(r, "skipped"),
			       json_object_get(r, "cursor") ? ", at " : "", json_object_get(r, "cursor") ? str(r, "cursor") : "");
			fflush(stdout);
		}
		json_decref(reply);
		sleep(1);
	}
}

/* tpsyncctl backup FILE: FILE made absolute here (the daemon has its own
 * working directory), then followed until the copy is done. */
static int run_backup(const char *path, const char *file, bool as_json)
{
	char abs[PATH_MAX];
	if (file[0] == '/') {
		snprintf(abs, sizeof(abs), "%s", file);
	} else {
		char cwd[PATH_MAX];
		if (!getcwd(cwd, sizeof(cwd)) || snprintf(abs, sizeof(abs), "%s/%s", cwd, file) >= (int)sizeof(abs)) {
			fprintf(stderr, "tpsyncctl: backup: cannot make %s an absolute path\n", file);
			return EXIT_USAGE;
		}
	}
	json_t *reply = ask(path, "backup", json_pack("{s:s}", "path", abs));
	for (;;) {
		if (!reply)
			return EXIT_UNREACHABLE;
		json_t *r = json_object_get(reply, "result");
		if (!json_is_true(json_object_get(reply, "ok"))) {
			fprintf(stderr, "tpsyncctl: backup: %s\n", str(reply, "error"));
			json_decref(reply);
			return EXIT_REFUSED;
		}
		if (strcmp(str(r, "state"), "running") != 0) {
			bool ok = strcmp(str(r, "state"), "done") == 0;
			if (as_json)
				print_json(r);
			else if (ok)
				printf("backup written: %s (%.1f MB in %.1f s)\n", str(r, "path"), (double)num(r, "bytes") / 1e6,
				       (double)(num(r, "finished_at") - num(r, "started_at")) / 1000.0);
			else
				fprintf(stderr, "tpsyncctl: backup failed: %s\n", str(r, "error"));
			json_decref(reply);
			return ok ? 0 : EXIT_REFUSED;
		}
		json_decref(reply);
		usleep(200 * 1000);
		reply = ask(path, "backup", json_object());
	}
}

static void print_set(const char *label, json_t *set)
{
	const char *k;
	json_t *v;
	json_object_foreach(set, k, v)
		printf("  %-10s %-24s \"%s\"\n", label, k, json_string_value(v));
}

static void print_trace(json_t *r)
{
	printf("profile %s\n", str(r, "id"));
	char at[32];
	fmt_time(json_object_get(r, "accepted_at"), at, sizeof(at));
	printf("values (accepted %s):\n", num(r, "accepted_at") ? at : "time not known");
	print_set("accepted", json_object_get(r, "accepted"));
	print_set("in flight", json_object_get(r, "in_flight"));
	print_set("pending", json_object_get(r, "pending"));
	json_t *b = json_object_get(r, "in_flight_batch");
	if (b)
		printf("  in flight in batch %lld (%s)\n", num(b, "id"), str(b, "state"));
	printf("history (newest last):\n");
	size_t i;
	json_t *e;
	json_array_foreach(json_object_get(r, "history"), i, e) {
		fmt_time(json_object_get(e, "at"), at, sizeof(at));
		json_t *f = json_object_get(e, "file");
		printf("  %s  %s", at, str(e, "source"));
		if (f)
			printf(" %s line %lld", str(f, "name"), num(e, "line"));
		if (json_object_get(e, "position"))
			printf(" %s", str(e, "position"));
		printf(":");
		size_t j;
		json_t *a;
		json_array_foreach(json_object_get(e, "attrs"), j, a)
			printf(" %s", json_string_value(a));
		printf("\n");
		b = json_object_get(e, "batch");
		if (b) {
			char sent[32];
			fmt_time(json_object_get(b, "sent_at"), sent, sizeof(sent));
			printf("      batch %lld (Target's %s), sent %s, %s%s%s; row: %s\n", num(b, "id"),
			       json_is_string(json_object_get(b, "target_batch_id")) ? str(b, "target_batch_id") : "-", sent,
			       str(b, "state"), json_is_string(json_object_get(b, "last_error")) ? ": " : "",
			       json_is_string(json_object_get(b, "last_error")) ? str(b, "last_error") : "", str(b, "row"));
		} else {
			printf("      not in a batch yet\n");
		}
	}
	json_t *dead = json_object_get(r, "dead_letters");
	printf("dead letters: %zu\n", json_array_size(dead));
	json_array_foreach(dead, i, e)
		printf("  %s = \"%s\": %s\n", str(e, "attr"), str(e, "value"), str(e, "reason"));
	json_t *lv = json_object_get(r, "last_verification");
	if (json_is_object(lv)) {
		fmt_time(json_object_get(lv, "at"), at, sizeof(at));
		printf("last verification: %s, %s (run %lld)\n", at, str(lv, "result"), num(lv, "run"));
	} else {
		printf("last verification: none\n");
	}
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "limit", required_argument, NULL, 'l' },
		{ "all", no_argument, NULL, 'a' },
		{ "state", required_argument, NULL, 'S' },
		{ "sample", required_argument, NULL, 'n' },
		{ "no-repair", no_argument, NULL, 'r' },
		{ "background", no_argument, NULL, 'b' },
		{ "stop", no_argument, NULL, 'x' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = getenv("TPSYNC_SOCKET") ? getenv("TPSYNC_SOCKET") : DEFAULT_SOCKET;
	bool as_json = false, all = false, no_repair = false, background = false, stop = false;
	long limit = 0, sample = 0;
	const char *state = NULL;
	int opt;
	while ((opt = getopt_long(argc, argv, "s:h", options, NULL)) != -1) {
		switch (opt) {
		case 's':
			path = optarg;
			break;
		case 'j':
			as_json = true;
			break;
		case 'l': {
			char *end;
			limit = strtol(optarg, &end, 10);
			if (*end || limit <= 0) {
				fprintf(stderr, "tpsyncctl: --limit takes a positive number\n");
				return EXIT_USAGE;
			}
			break;
		}
		case 'a':
			all = true;
			break;
		case 'n': {
			char *end;
			sample = strtol(optarg, &end, 10);
			if (*end || sample <= 0) {
				fprintf(stderr, "tpsyncctl: --sample takes a positive number\n");
				return EXIT_USAGE;
			}
			break;
		}
		case 'r':
			no_repair = true;
			break;
		case 'b':
			background = true;
			break;
		case 'x':
			stop = true;
			break;
		case 'S': {
			enum batch_state s;
			if (batch_state_parse(optarg, &s) < 0) {
				fprintf(stderr, "tpsyncctl: --state: \"%s\" is not one of", optarg);
				for (int i = 0; i < BATCH_STATE_COUNT; i++)
					fprintf(stderr, " %s", batch_state_name((enum batch_state)i));
				fputc('\n', stderr);
				return EXIT_USAGE;
			}
			state = optarg;
			break;
		}
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	const char *cmd = argv[optind++];
	if (strcmp(cmd, "help") == 0) {
		if (optind >= argc) {
			usage(stdout);
			return 0;
		}
		for (const struct command *h = commands; h->name; h++) {
			if (strcmp(h->name, argv[optind]) == 0) {
				printf("Usage: tpsyncctl [-s SOCKET] %s %s [--json]\n%s.\n\n%s\n", h->name, h->args, h->help,
				       h->details);
				return 0;
			}
		}
		fprintf(stderr, "tpsyncctl: no command \"%s\"\n", argv[optind]);
		return EXIT_USAGE;
	}
	const struct command *c = commands;
	while (c->name && strcmp(c->name, cmd) != 0)
		c++;
	if (!c->name) {
		fprintf(stderr, "tpsyncctl: unknown command \"%s\"\n", cmd);
		usage(stderr);
		return EXIT_USAGE;
	}
	json_t *args = json_object();
	if (strcmp(cmd, "verify") == 0 || strcmp(cmd, "canary") == 0) {
		if (stop) {
			json_decref(args);
			json_t *reply = ask(path, "verify-stop", json_pack("{s:i}", "run", 0));
			if (!reply)
				return EXIT_UNREACHABLE;
			int code = json_is_true(json_object_get(reply, "ok")) ? 0 : EXIT_REFUSED;
			if (code)
				fprintf(stderr, "tpsyncctl: verify --stop: %s\n", str(reply, "error"));
			else
				printf("stopped\n");
			json_decref(reply);
			return code;
		}
		if (strcmp(cmd, "canary") == 0) {
			json_object_set_new(args, "canary", json_true());
		} else if (all) {
			json_object_set_new(args, "all", json_true());
		} else if (sample) {
			json_object_set_new(args, "sample", json_integer(sample));
		} else {
			json_t *ids = json_array();
			for (; optind < argc; optind++)
				json_array_append_new(ids, json_string(argv[optind]));
			if (json_array_size(ids) == 0) {
				fprintf(stderr, "tpsyncctl: verify needs profile ids, --sample N or --all\n");
				json_decref(ids);
				json_decref(args);
				return EXIT_USAGE;
			}
			json_object_set_new(args, "ids", ids);
		}
		if (optind < argc) {
			fprintf(stderr, "tpsyncctl: unexpected argument \"%s\"\n", argv[optind]);
			json_decref(args);
			return EXIT_USAGE;
		}
		if (no_repair)
			json_object_set_new(args, "no_repair", json_true());
		return run_verify(path, args, background, as_json);
	}
	if (strcmp(cmd, "backup") == 0) {
		if (optind + 1 != argc) {
			fprintf(stderr, "tpsyncctl: backup needs one file name\n");
			json_decref(args);
			return EXIT_USAGE;
		}
		json_decref(args);
		return run_backup(path, argv[optind], as_json);
	}
	if (strcmp(cmd, "trace") == 0) {
		if (optind + 1 != argc) {
			fprintf(stderr, "tpsyncctl: trace needs one profile id\n");
			json_decref(args);
			return EXIT_USAGE;
		}
		json_object_set_new(args, "id", json_string(argv[optind++]));
		json_t *reply = ask(path, "trace", args);
		if (!reply)
			return EXIT_UNREACHABLE;
		int code = 0;
		if (!json_is_true(json_object_get(reply, "ok"))) {
			fprintf(stderr, "tpsyncctl: trace: %s\n", str(reply, "error"));
			code = EXIT_REFUSED;
		} else if (as_json) {
			print_json(json_object_get(reply, "result"));
		} else {
			print_trace(json_object_get(reply, "result"));
		}
		json_decref(reply);
		return code;
	}
	if (limit)
		json_object_set_new(args, "limit", json_integer(limit));
	if (state)
		json_object_set_new(args, "state", json_string(state));
	if (strcmp(cmd, "rescan") == 0 && optind < argc)
		json_object_set_new(args, "source", json_string(argv[optind++]));
	if (strcmp(cmd, "retry-dead") == 0) {
		if (optind < argc) {
			json_t *ids = json_array();
			for (; optind < argc; optind++) {
				char *end;
				long long id = strtoll(argv[optind], &end, 10);
				if (*end || id <= 0) {
					fprintf(stderr, "tpsyncctl: retry-dead: \"%s\" is not a dead letter id\n", argv[optind]);
					json_decref(ids);
					json_decref(args);
					return EXIT_USAGE;
				}
				json_array_append_new(ids, json_integer(id));
			}
			json_object_set_new(args, "ids", ids);
		} else if (!all) {
			fprintf(stderr, "tpsyncctl: retry-dead needs --all or dead letter ids\n");
			json_decref(args);
			return EXIT_USAGE;
		}
		if (all)
			json_object_set_new(args, "all", json_true());
	}
	if (optind < argc) {
		fprintf(stderr, "tpsyncctl: unexpected argument \"%s\"\n", argv[optind]);
		json_decref(args);
		return EXIT_USAGE;
	}
	if (strcmp(cmd, "check") == 0)
		json_object_set_new(args, "start", json_true());
	json_t *req = json_pack("{s:i, s:s, s:o}", "v", CONTROL_PROTOCOL_VERSION, "cmd", cmd, "args", args);
	json_t *reply = call(path, req);
	json_decref(req);
	/* check: ask again every second until the daemon's check is done. */
	while (reply && strcmp(cmd, "check") == 0 && json_is_true(json_object_get(reply, "ok")) &&
	       strcmp(str(json_object_get(reply, "result"), "state"), "running") == 0) {
		json_decref(reply);
		sleep(1);
		json_t *again = json_pack("{s:i, s:s, s:{}}", "v", CONTROL_PROTOCOL_VERSION, "cmd", cmd, "args");
		reply = call(path, again);
		json_decref(again);
	}
	if (!reply)
		return EXIT_UNREACHABLE;
	int code = 0;
	if (!json_is_true(json_object_get(reply, "ok"))) {
		fprintf(stderr, "tpsyncctl: %s: %s\n", cmd, str(reply, "error"));
		code = EXIT_REFUSED;
	} else {
		json_t *r = json_object_get(reply, "result");
		if (as_json && strcmp(cmd, "check") == 0) {
			char *text = json_dumps(r, JSON_INDENT(2) | JSON_SORT_KEYS);
			if (text)
				puts(text);
			free(text);
			code = strcmp(str(r, "state"), "ok") == 0 ? 0 : EXIT_REFUSED;
		} else if (as_json) {
			char *text = json_dumps(r, JSON_INDENT(2) | JSON_SORT_KEYS);
			if (text)
				puts(text);
			free(text);
		} else if (strcmp(cmd, "status") == 0) {
			print_status(r);
		} else if (strcmp(cmd, "sources") == 0) {
			print_sources(json_object_get(r, "sources"));
		} else if (strcmp(cmd, "batches") == 0) {
			print_batches(json_object_get(r, "batches"));
		} else if (strcmp(cmd, "dead") == 0) {
			print_dead(r);
		} else if (strcmp(cmd, "metrics") == 0) {
			fputs(str(r, "text"), stdout);
		} else if (strcmp(cmd, "check") == 0) {
			const char *result = str(r, "state");
			printf("state database: %s\n", result);
			size_t i;
			json_t *p;
			json_array_foreach(json_object_get(r, "problems"), i, p)
				printf("  %s\n", json_string_value(p));
			code = strcmp(result, "ok") == 0 ? 0 : EXIT_REFUSED;
		} else if (strcmp(cmd, "retry-dead") == 0) {
			printf("%lld dead letters queued again\n", num(r, "requeued"));
		} else {
			printf("ok\n");
		}
	}
	json_decref(reply);
	return code;
}
