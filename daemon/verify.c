/* SPDX-License-Identifier: MIT */
/* Verification runs. Each run has a queue of profiles to check; a walk (--all,
 * the steady sample) fills it a slice at a time, and only walks on once the
 * slice is checked, so the cursor it keeps is always a point up to which
 * every profile was checked. A check reads the profile as staging means it
 * (stage_read), skips what is pending, in flight or too recent, fetches it,
 * compares every attribute tpsyncd sent with what Target shows, and queues
 * the latest values of what differs again (stage_refresh), as
 * verify.repair allows. */
#include "verify.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "callrate.h"
#include "clock.h"
#include "http.h"
#include "log.h"
#include "stage.h"
#include "target.h"
#include "target_fetch.h"
#include "token.h"

#define MAX_FETCHES 4
#define WALK_ROWS 200          /* profiles an --all walk takes at a time */
#define SAMPLE_WALK_ROWS 20000 /* profiles a sample's walk reads per pass of the loop */
#define MAX_ATTEMPTS 5         /* fetches of one profile that found no answer */
#define RESULTS_KEPT 1000      /* per-profile results a run keeps for tpsyncctl */
#define MAX_ANSWER (1 << 20)
#define CANARY_ATTR "tpsyncCanary"

enum count { C_CHECKED, C_MATCHED, C_DIFFERED, C_MISSING, C_CHANGED, C_REPAIRED, C_SKIPPED, C_ERRORS, C_COUNT };
static const char *const count_names[C_COUNT] = { "checked", "matched", "differed", "missing", "changed_in_target",
						  "repaired", "skipped", "errors" };
static const char *const kind_names[] = { "ids", "sample", "all", "canary", "steady" };

enum run_state { RUN_RUNNING, RUN_DONE, RUN_STOPPED, RUN_FAILED };
static const char *const state_names[] = { "running", "done", "stopped", "failed" };

/* The canary's character classes: each goes in a profile of its own, so a
 * value that breaks its row breaks only that one. */
static const struct canary_class {
	const char *name, *chars, *if_broken;
} canary_classes[] = {
	{ "percent", "100% %41 %zz", "Target decodes a cell twice: a '%' followed by two hex digits changes" },
	{ "ampersand", "a&b", "an '&' ends Target's form field: the rest of the batch is lost" },
	{ "plus", "a+b", "a '+' arrives as a space" },
	{ "equals", "a=b", "an '=' changes how Target reads the form field" },
	{ "comma", "a,b", "Target decodes the whole field before splitting cells: a ',' in a value splits the row "
			  "(keep commas out of values, or ask Adobe support)" },
	{ "newline", "a\nb", "Target decodes the whole field before splitting rows: a newline in a value splits the row "
			     "(keep newlines out of values, or ask Adobe support)" },
	{ "tab", "a\tb", "a tab does not arrive as sent" },
	{ "quote", "a\"b'c", "quotes do not arrive as sent" },
	{ "non_ascii", "Z\xc3\xbcrich \xe2\x82\xac", "UTF-8 does not arrive as sent (a charset is assumed somewhere)" },
	{ "spaces", " padded ", "leading or trailing spaces are trimmed" },
};
#define N_CLASSES (sizeof(canary_classes) / sizeof(canary_classes[0]))

struct item {
	char *profile;
	size_t klass;      /* the canary's class */
	int attempts;
	int looks_after_others; /* the canary: fetches since every other class arrived */
	int64_t not_before;
	struct item *next;
};

struct run {
	struct verify *v;
	int64_t id;
	enum verify_kind kind;
	enum run_state state;
	bool is_repair;
	int64_t started_at;
	struct item *head, *tail;
	int in_flight;
	bool is_walk_done;   /* all, sample: nothing more to queue */
	char *cursor;        /* all, steady: every profile up to it was checked */
	char *walk_last;     /* all, steady: the last profile of the slice being checked */
	bool is_resumed;     /* all: the first slice after a restart skips what this run checked */
	char **reservoir;    /* sample */
	size_t want, n_res;
	int64_t seen;
	int64_t counts[C_COUNT];
	json_t *results;
	char last_error[640];
	char nonce[17];                 /* canary */
	int64_t deadline, next_poll_at; /* canary */
	bool is_class_done[N_CLASSES];
	struct run *next;
};

struct fetch {
	struct http_call call;
	struct run *run;
	struct item *item;
	char *url;
	struct fetch *next;
};

struct verify {
	struct event_base *base;
	struct store *st;
	const struct config *cfg;
	const struct verify_listener *l;
	void *arg;
	struct http *http;
	struct callrate calls;
	struct token token;
	struct event *wake;
	struct stage sg;
	struct run *runs;
	struct fetch *fetches; /* on the wire */
	int n_fetches;
	bool is_auth_failed;
	bool is_token_held; /* target.oauth: the token is being replaced; start no fetch */
	int64_t steady_next_at;
	int64_t totals[C_COUNT];
	int64_t runs_done;
};

static void kick(struct verify *v)
{
	event_active(v->wake, 0, 0);
}

static void item_free(struct item *it)
{
	if (it) {
		free(it->profile);
		free(it);
	}
}

static int push(struct run *run, const char *profile, size_t len, size_t klass)
{
	struct item *it = calloc(1, sizeof(*it));
	if (!it || !(it->profile = strndup(profile, len))) {
		free(it);
		return -ENOMEM;
	}
	it->klass = klass;
	if (run->tail)
		run->tail->next = it;
	else
		run->head = it;
	run->tail = it;
	return 0;
}

static void run_free(struct run *run)
{
	while (run->head) {
		struct item *it = run->head;
		run->head = it->next;
		item_free(it);
	}
	for (size_t i = 0; i < run->n_res; i++)
		free(run->reservoir[i]);
	free(run->reservoir);
	free(run->cursor);
	free(run->walk_last);
	json_decref(run->results);
	free(run);
}

/* --- persistence -------------------------------------------------------------------- */

/* Writes run's state and counts (and cursor) to verify_runs. */
static void save_run(struct run *run)
{
	struct store *st = run->v->st;
	sqlite3_stmt *s = store_prepare(st, "UPDATE verify_runs SET state = ?2, finished_at = ?3, cursor = ?4,"
					    " checked = ?5, matched = ?6, differed = ?7, missing = ?8, changed_in_target = ?9,"
					    " repaired = ?10, skipped = ?11, errors = ?12, last_error = ?13 WHERE id = ?1",
					"itzt", run->id, state_names[run->state],
					run->state == RUN_RUNNING ? (int64_t)0 : clock_wall_ms(), run->cursor);
	if (!s) {
		log_err("msg=\"cannot record a verification\" error=\"%s\"", store_error(st));
		return;
	}
	for (int i = 0; i < C_COUNT; i++)
		sqlite3_bind_int64(s, 5 + i, run->counts[i]);
	if (run->last_error[0])
		sqlite3_bind_text(s, 13, run->last_error, -1, SQLITE_STATIC);
	if (sqlite3_step(s) != SQLITE_DONE) {
		store_note_error(st);
		log_err("msg=\"cannot record a verification\" error=\"%s\"", store_error(st));
	}
	sqlite3_reset(s);
}

static struct run *run_new(struct verify *v, enum verify_kind kind, bool is_repair)
{
	struct run *run = calloc(1, sizeof(*run));
	if (!run || !(run->results = json_array())) {
		free(run);
		return NULL;
	}
	run->v = v;
	run->kind = kind;
	run->is_repair = is_repair;
	run->started_at = clock_wall_ms();
	return run;
}

static void finish_run(struct run *run, enum run_state state)
{
	struct verify *v = run->v;
	run->state = state;
	save_run(run);
	v->runs_done++;
	log_info("msg=\"verification ended\" run=%lld kind=%s state=%s checked=%lld matched=%lld differed=%lld "
		 "missing=%lld changed_in_target=%lld repaired=%lld skipped=%lld errors=%lld",
		 (long long)run->id, kind_names[run->kind], state_names[state], (long long)run->counts[C_CHECKED],
		 (long long)run->counts[C_MATCHED], (long long)run->counts[C_DIFFERED], (long long)run->counts[C_MISSING],
		 (long long)run->counts[C_CHANGED], (long long)run->counts[C_REPAIRED], (long long)run->counts[C_SKIPPED],
		 (long long)run->counts[C_ERRORS]);
	/* Only an --all or steady run's counts stay for status; the others
	 * stay readable from the table until the next start. */
}

/* Records profile's result in run: counts, the profile's last verification,
 * and the results a caller can read back. detail may be NULL; it is taken. */
static void record(struct run *run, const char *profile, const char *result, enum count c, json_t *detail)
{
	struct verify *v = run->v;
	run->counts[c]++;
	v->totals[c]++;
	if (c != C_SKIPPED && c != C_ERRORS) {
		run->counts[C_CHECKED]++;
		v->totals[C_CHECKED]++;
	}
	char *text = detail ? json_dumps(detail, JSON_COMPACT) : NULL;
	/* The result and the run's counts in one transaction: a run resumed
	 * after a crash skips exactly what it counted. */
	bool is_own = store_begin(v->st) == 0;
	if (store_run(v->st, "INSERT INTO verifications (profile, run_id, at, result, detail) VALUES (?, ?, ?, ?, ?)"
			     " ON CONFLICT (profile) DO UPDATE SET run_id = excluded.run_id, at = excluded.at,"
			     " result = excluded.result, detail = excluded.detail",
		      "tiitt", profile, run->id, clock_wall_ms(), result, text) < 0)
		log_err("msg=\"cannot record a verification\" error=\"%s\"", store_error(v->st));
	free(text);
	if (run->kind != VERIFY_ALL && run->kind != VERIFY_STEADY && json_array_size(run->results) < RESULTS_KEPT) {
		json_t *o = json_pack("{s:s, s:s}", "profile", profile, "result", result);
		if (o && detail)
			json_object_set(o, "detail", detail);
		json_array_append_new(run->results, o);
	}
	json_decref(detail);
	save_run(run);
	if (is_own && store_commit(v->st) < 0) {
		store_abort(v->st);
		log_err("msg=\"cannot record a verification\" error=\"%s\"", store_error(v->st));
	}
}

/* --- one profile --------------------------------------------------------------------- */

/* Why profile cannot be judged now (NULL: it can); view filled. */
static const char *why_skip(struct verify *v, const struct stage_view *view, int found)
{
	if (found <= 0)
		return found < 0 ? "state database error" : "not in the mirror";
	if (view->pending.n || view->inflight.n)
		return "newer values pending or in flight";
	if (!view->accepted.n)
		return "nothing accepted yet";
	if (view->accepted_at && clock_wall_ms() - view->accepted_at < v->cfg->verify.min_age_ms)
		return "accepted less than verify.min_age ago";
	return NULL;
}

/* Queues the latest values of the attributes in ids again. Returns 0 or a
 * negative errno (logged). */
static int repair(struct verify *v, const char *profile, const struct attrset *ids)
{
	struct store *st = v->st;
	int r = store_begin(st) < 0 ? -EIO : stage_refresh(&v->sg, profile, ids, "verify: Target differed");
	if (r == 0 && store_commit(st) < 0)
		r = -EIO;
	if (r < 0) {
		store_abort(st);
		store_die_on_io_error(st);
		log_err("msg=\"cannot queue a repair\" profile=\"%s\" error=\"%s\"", profile, store_error(st));
		return r;
	}
	if (v->l && v->l->queued)
		v->l->queued(v->arg, false);
	return 0;
}

/* Compares what Target holds of profile (t: NULL when it has no such
 * profile) with the mirror, records the result and repairs. */
static void judge(struct run *run, const char *profile, const struct target_fetch_profile *t)
{
	struct verify *v = run->v;
	struct stage_view view;
	stage_view_init(&view);
	int found = stage_read(&v->sg, profile, strlen(profile), &view);
	const char *skip = why_skip(v, &view, found);
	if (skip) {
		record(run, profile, "skipped", C_SKIPPED, json_pack("{s:s}", "why", skip));
		stage_view_finish(&view);
		return;
	}
	struct attrset fix;
	attrset_init(&fix);
	json_t *diffs = json_array();
	bool is_changed_in_target = false;
	for (size_t i = 0; i < view.accepted.n; i++) {
		const struct attr_kv *kv = &view.accepted.kv[i];
		const char *name = store_attr_name(v->st, kv->id);
		const struct target_fetch_attr *a = t ? target_fetch_get(t, name) : NULL;
		if (a && strlen(a->value) == kv->len && memcmp(a->value, kv->val, kv->len) == 0)
			continue;
		/* Set in Target after our values were accepted: a page changed it. */
		bool is_newer = a && a->modified_at && view.accepted_at && a->modified_at > view.accepted_at;
		is_changed_in_target = is_changed_in_target || is_newer;
		json_t *d = json_pack("{s:s, s:s%, s:b}", "attr", name, "ours", kv->val, (size_t)kv->len,
				      "changed_in_target", is_newer);
		if (d && a)
			json_object_set_new(d, "target", json_string(a->value));
		json_array_append_new(diffs, d);
		enum repair_policy p = v->cfg->verify.repair;
		if (run->is_repair && (p == REPAIR_ALWAYS || (p == REPAIR_MISSING_OR_OLDER && !is_newer)))
			attrset_put(&fix, kv->id, kv->val, kv->len);
	}
	enum count c = !t ? C_MISSING : json_array_size(diffs) == 0 ? C_MATCHED
					: is_changed_in_target && fix.n == 0 ? C_CHANGED : C_DIFFERED;
	static const char *const names[C_COUNT] = { [C_MATCHED] = "matched", [C_DIFFERED] = "differed",
						    [C_MISSING] = "missing", [C_CHANGED] = "changed_in_target" };
	json_t *detail = json_pack("{s:o}", "differs", diffs);
	if (!t && v->cfg->target.api_version == 1)
		json_object_set_new(detail, "note", json_string("API v1 updates existing profiles only; v2 creates them"));
	bool repaired = fix.n > 0 && repair(v, profile, &fix) == 0;
	if (repaired) {
		json_object_set_new(detail, "repaired", json_true());
		run->counts[C_REPAIRED]++;
		v->totals[C_REPAIRED]++;
	}
	record(run, profile, names[c], c, detail);
	attrset_finish(&fix);
	stage_view_finish(&view);
}

/* The canary's class profile: did Target store exactly what was sent? */
static void judge_canary(struct run *run, struct item *it, const struct target_fetch_profile *t)
{
	const struct canary_class *k = &canary_classes[it->klass];
	char sent[128];
	snprintf(sent, sizeof(sent), "%s %s", run->nonce, k->chars);
	const struct target_fetch_attr *a = t ? target_fetch_get(t, CANARY_ATTR) : NULL;
	bool is_ours = a && strncmp(a->value, run->nonce, strlen(run->nonce)) == 0;
	/* Every other class has arrived: three looks more, and its row is taken
	 * for lost rather than late. */
	bool others_done = true;
	for (size_t i = 0; i < N_CLASSES; i++)
		others_done = others_done && (i == it->klass || run->is_class_done[i]);
	bool is_lost = !is_ours && others_done && ++it->looks_after_others >= 3;
	if (!is_ours && !is_lost && clock_wall_ms() < run->deadline)
		return; /* not there yet (or an earlier run's): asked again */
	run->is_class_done[it->klass] = true;
	bool ok = a && strcmp(a->value, sent) == 0;
	json_t *o = json_pack("{s:s, s:s, s:s, s:b}", "profile", it->profile, "class", k->name, "sent", sent, "ok", ok);
	if (a)
		json_object_set_new(o, "stored", json_string(a->value));
	if (!ok)
		json_object_set_new(o, "advice", json_string(is_ours ? k->if_broken
								: "never seen at Target, though the other classes arrived: "
								  "its row did not survive. If it is the comma or the newline: "
								  "Target decodes the whole field before splitting rows and "
								  "cells; keep these characters out of values"));
	json_array_append_new(run->results, o);
	run->counts[ok ? C_MATCHED : C_DIFFERED]++;
	run->counts[C_CHECKED]++;
	save_run(run);
}

/* --- fetching ------------------------------------------------------------------------- */

static void on_fetched(void *arg, struct http_call *call);
static const struct http_listener http_listener = { .done = on_fetched };

static int start_fetch(struct verify *v, struct run *run, struct item *it)
{
	const struct config *cfg = v->cfg;
	struct fetch *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->url = target_fetch_url(cfg, it->profile, strlen(it->profile));
	if (!f->url) {
		free(f);
		return -ENOMEM;
	}
	f->run = run;
	f->item = it;
	f->call.url = f->url;
	f->call.timeout_ms = cfg->target.timeout_ms;
	f->call.connect_timeout_ms = cfg->target.connect_timeout_ms;
	f->call.ca_file = cfg->target.ca_file;
	f->call.max_response = MAX_ANSWER;
	if (v->token.value && target_may_send_token(cfg, f->url, NULL))
		f->call.bearer = v->token.value;
	int r = http_start(v->http, &f->call);
	if (r < 0) {
		free(f->url);
		free(f);
		return r;
	}
	callrate_record(&v->calls, clock_wall_ms());
	f->next = v->fetches;
	v->fetches = f;
	v->n_fetches++;
	run->in_flight++;
	return 0;
}

static void fetch_free(struct fetch *f)
{
	http_call_finish(&f->call);
	free(f->url);
	free(f);
}

/* Puts it back at the end of run's queue, to be fetched again after delay. */
static void again(struct run *run, struct item *it, int64_t delay)
{
	it->not_before = clock_wall_ms() + delay;
	it->next = NULL;
	if (run->tail)
		run->tail->next = it;
	else
		run->head = it;
	run->tail = it;
}

static void on_fetched(void *arg, struct http_call *call)
{
	struct verify *v = arg;
	struct fetch *f = (struct fetch *)call;
	struct run *run = f->run;
	struct item *it = f->item;
	for (struct fetch **pp = &v->fetches; *pp; pp = &(*pp)->next) {
		if (*pp == f) {
			*pp = f->next;
			break;
		}
	}
	v->n_fetches--;
	run->in_flight--;
	if (!target_call_reached(call->result))
		callrate_unrecord(&v->calls);
	char excerpt[256], why[CURL_ERROR_SIZE + 300];
	http_excerpt(call, excerpt, sizeof(excerpt));
	struct target_fetch_profile t;
	bool parsed = call->result == CURLE_OK && call->status == 200 &&
		      target_fetch_parse(call->response.data ? call->response.data : "", call->response.len, &t) == 0;
	enum target_fetch_verdict verdict = target_fetch_judge(call->result, call->error, call->status, parsed, excerpt,
							       why, sizeof(why));
	bool is_done = true;
	if (run->state != RUN_RUNNING) {
		/* stopped meanwhile: nothing more is recorded */
	} else if (verdict == TARGET_FETCH_FOUND || verdict == TARGET_FETCH_MISSING) {
		v->is_auth_failed = false;
		if (run->kind == VERIFY_CANARY) {
			judge_canary(run, it, parsed ? &t : NULL);
			is_done = run->is_class_done[it->klass];
			if (!is_done) {
				again(run, it, 0);
				it->not_before = run->next_poll_at;
			}
		} else {
			judge(run, it->profile, verdict == TARGET_FETCH_FOUND ? &t : NULL);
		}
	} else if (verdict == TARGET_FETCH_AUTH) {
		if (!v->is_auth_failed)
			log_err("msg=\"the fetch API refused the token; verification waits for a new one\" http=%ld",
				call->status);
		bool was_failed = v->is_auth_failed;
		v->is_auth_failed = true;
		snprintf(run->last_error, sizeof(run->last_error), "%s", why);
		if (v->cfg->target.oauth.is_set) {
			if (!was_failed && v->l && v->l->auth_refused)
				v->l->auth_refused(v->arg, v->token.value);
		} else if (token_changed(&v->token)) {
			token_load(&v->token, v->cfg);
		}
		is_done = false;
		again(run, it, v->cfg->retry.max_ms);
	} else if (verdict == TARGET_FETCH_RETRY && ++it->attempts < MAX_ATTEMPTS) {
		is_done = false;
		again(run, it, call->retry_after_ms >= 0 ? call->retry_after_ms : v->cfg->retry.initial_ms << it->attempts);
	} else {
		snprintf(run->last_error, sizeof(run->last_error), "%s", why);
		log_warn("msg=\"profile not verified\" profile=\"%s\" error=\"%s\"", it->profile, why);
		if (run->kind == VERIFY_CANARY) {
			is_done = false;
			again(run, it, v->cfg->target.poll_interval_ms);
		} else {
			record(run, it->profile, "error", C_ERRORS, json_pack("{s:s}", "why", why));
		}
	}
	if (parsed)
		target_fetch_profile_finish(&t);
	if (is_done)
		item_free(it);
	fetch_free(f);
	kick(v);
}

/* --- walking ----------------------------------------------------------------------------- */

/* Queues the next slice of an --all or steady walk, once the last one is
 * checked. Returns 0 or -EIO. */
static int walk(struct run *run, size_t rows)
{
	struct verify *v = run->v;
	if (run->head || run->in_flight || run->is_walk_done)
		return 0;
	if (run->walk_last) {
		free(run->cursor);
		run->cursor = run->walk_last; /* the slice is checked */
		run->walk_last = NULL;
		save_run(run);
	}
	sqlite3_stmt *s = store_prepare(v->st, "SELECT id FROM profiles WHERE id > ? ORDER BY id LIMIT ?", "ti",
					run->cursor ? run->cursor : "", (int64_t)rows);
	if (!s)
		return -EIO;
	int rc;
	size_t n = 0;
	char *last = NULL;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(s, 0);
		n++;
		free(last);
		last = strdup(id);
		if (!last || push(run, id, (size_t)sqlite3_column_bytes(s, 0), 0) < 0) {
			sqlite3_reset(s);
			free(last);
			return -ENOMEM;
		}
	}
	if (rc != SQLITE_DONE)
		store_note_error(v->st);
	sqlite3_reset(s);
	if (rc != SQLITE_DONE) {
		free(last);
		return -EIO;
	}
	run->walk_last = last;
	/* After a restart the slice may hold what this run checked already. */
	if (run->is_resumed) {
		run->is_resumed = false;
		for (struct item **pp = &run->head; *pp;) {
			struct item *it = *pp;
			if (store_int(v->st, "SELECT count(*) FROM verifications WHERE profile = ? AND run_id = ?", 0, "ti",
				      it->profile, run->id) > 0) {
				*pp = it->next;
				item_free(it);
			} else {
				pp = &it->next;
			}
		}
		run->tail = NULL;
		for (struct item *it = run->head; it; it = it->next)
			run->tail = it;
	}
	if (n < rows) {
		if (run->kind == VERIFY_STEADY) {
			free(run->cursor);
			run->cursor = NULL; /* round again from the start */
			free(run->walk_last);
			run->walk_last = NULL;
		} else {
			run->is_walk_done = true;
		}
	}
	return 0;
}

/* One pass of a sample's walk: reservoir sampling over every profile.
 * Returns 0 or -EIO / -ENOMEM. */
static int sample_step(struct run *run)
{
	struct verify *v = run->v;
	if (run->is_walk_done)
		return 0;
	sqlite3_stmt *s = store_prepare(v->st, "SELECT id FROM profiles WHERE id > ? ORDER BY id LIMIT ?", "ti",
					run->cursor ? run->cursor : "", (int64_t)SAMPLE_WALK_ROWS);
	if (!s)
		return -EIO;
	int rc, r = 0;
	size_t n = 0;
	while (r == 0 && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(s, 0);
		n++;
		run->seen++;
		size_t slot = run->n_res < run->want ? run->n_res++ : (size_t)(random() % run->seen);
		if (slot < run->want) {
			free(run->reservoir[slot]);
			if (!(run->reservoir[slot] = strdup(id)))
				r = -ENOMEM;
		}
		if (n == SAMPLE_WALK_ROWS) {
			free(run->cursor);
			if (!(run->cursor = strdup(id)))
				r = -ENOMEM;
		}
	}
	if (r == 0 && rc != SQLITE_ROW && rc != SQLITE_DONE) {
		store_note_error(v->st);
		r = -EIO;
	}
	sqlite3_reset(s);
	if (r == 0 && n < SAMPLE_WALK_ROWS) {
		run->is_walk_done = true;
		for (size_t i = 0; i < run->n_res && r == 0; i++)
			r = push(run, run->reservoir[i], strlen(run->reservoir[i]), 0);
	}
	return r;
}

/* --- the loop ------------------------------------------------------------------------------ */

static void take_earlier(int64_t *wake, int64_t t)
{
	if (t > 0 && (*wake == 0 || t < *wake))
		*wake = t;
}

/* The next item of run that may be fetched now (unlinked), or NULL with *at
 * moved to when one may. */
static struct item *next_item(struct run *run, int64_t now, int64_t *at)
{
	for (struct item **pp = &run->head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
		struct item *it = *pp;
		if (it->not_before > now) {
			take_earlier(at, it->not_before);
			continue;
		}
		*pp = it->next;
		if (run->tail == it)
			run->tail = prev;
		it->next = NULL;
		return it;
	}
	return NULL;
}

/* Judges without a fetch what cannot be judged now (it is recorded as
 * skipped). Returns true when it was. */
static bool skipped_at_once(struct run *run, const struct item *it)
{
	struct verify *v = run->v;
	struct stage_view view;
	stage_view_init(&view);
	int found = stage_read(&v->sg, it->profile, strlen(it->profile), &view);
	const char *why = why_skip(v, &view, found);
	/* The --all walk counts only profiles with values accepted. */
	bool quiet = why && (run->kind == VERIFY_ALL || run->kind == VERIFY_STEADY) && found == 1 &&
		     !view.accepted.n && !view.inflight.n;
	stage_view_finish(&view);
	if (!why)
		return false;
	if (!quiet)
		record(run, it->profile, "skipped", C_SKIPPED, json_pack("{s:s}", "why", why));
	return true;
}

static struct run *find_newest_all(struct verify *v)
{
	struct run *newest = NULL;
	for (struct run *run = v->runs; run; run = run->next)
		if (run->kind == VERIFY_ALL && (!newest || run->id > newest->id))
			newest = run;
	return newest;
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
	struct verify *v = arg;
	int64_t now = clock_wall_ms(), wake = 0, free_at = 0;
	bool is_more_now = false;
	for (struct run **pp = &v->runs; *pp;) {
		struct run *run = *pp;
		int r = 0;
		if (run->state == RUN_RUNNING) {
			if (run->kind == VERIFY_ALL)
				r = walk(run, WALK_ROWS);
			else if (run->kind == VERIFY_STEADY && !run->head && !run->in_flight && now >= v->steady_next_at) {
				r = walk(run, 1);
				v->steady_next_at = now + 3600000 / (v->cfg->verify.sample_per_hour ? v->cfg->verify.sample_per_hour : 1);
			} else if (run->kind == VERIFY_SAMPLE && !run->is_walk_done) {
				r = sample_step(run);
				is_more_now = is_more_now || !run->is_walk_done;
			}
			if (run->kind == VERIFY_STEADY)
				take_earlier(&wake, v->steady_next_at);
			if (r < 0) {
				snprintf(run->last_error, sizeof(run->last_error), "%s",
					 r == -EIO ? store_error(v->st) : strerror(-r));
				log_err("msg=\"verification failed\" run=%lld error=\"%s\"", (long long)run->id, run->last_error);
				finish_run(run, RUN_FAILED);
			}
		}
		if (run->state == RUN_RUNNING && !run->head && !run->in_flight &&
		    (run->kind == VERIFY_IDS || run->kind == VERIFY_CANARY || run->is_walk_done)) {
			if (run->kind == VERIFY_ALL && run->walk_last) {
				free(run->cursor);
				run->cursor = run->walk_last;
				run->walk_last = NULL;
			}
			finish_run(run, RUN_DONE);
		}
		/* Finished runs stay readable for an hour (from the table after
		 * that); the last --all run stays for status. */
		bool is_last_all = run->kind == VERIFY_ALL && run == find_newest_all(v);
		if (run->state != RUN_RUNNING && !run->in_flight && !is_last_all &&
		    clock_wall_ms() - run->started_at > (run->kind == VERIFY_ALL ? 0 : 3600000)) {
			*pp = run->next;
			run_free(run);
			continue;
		}
		pp = &run->next;
	}
	/* Fetches, the foreground runs first. */
	for (int pass = 0; pass < 2; pass++) {
		for (struct run *run = v->runs; run; run = run->next) {
			bool is_background = run->kind == VERIFY_ALL || run->kind == VERIFY_STEADY;
			if (run->state != RUN_RUNNING || is_background != (pass == 1))
				continue;
			bool is_tokenless = v->cfg->target.oauth.is_set && (!v->token.value || v->is_token_held);
			while (!is_tokenless && v->n_fetches < MAX_FETCHES) {
				if (!callrate_may_call(&v->calls, now, &free_at)) {
					take_earlier(&wake, free_at);
					break;
				}
				struct item *it = next_item(run, now, &wake);
				if (!it)
					break;
				if (run->kind != VERIFY_CANARY && skipped_at_once(run, it)) {
					item_free(it);
					is_more_now = true;
					continue;
				}
				if (run->kind == VERIFY_CANARY)
					run->next_poll_at = now + v->cfg->target.poll_interval_ms;
				if (start_fetch(v, run, it) < 0) {
					again(run, it, 1000);
					take_earlier(&wake, now + 1000);
					break;
				}
			}
		}
	}
	if (is_more_now) {
		kick(v);
		return;
	}
	if (wake) {
		int64_t delay = wake > now ? wake - now : 0;
		struct timeval tv = { delay / 1000, (delay % 1000) * 1000 };
		if (evtimer_add(v->wake, &tv) < 0)
			log_err("msg=\"cannot arm the verification timer\"");
	}
}

/* --- runs -------------------------------------------------------------------------------------- */

static struct run *find_run(struct verify *v, int64_t id)
{
	for (struct run *run = v->runs; run; run = run->next)
		if (run->id == id || (id == 0 && run->kind == VERIFY_ALL && run->state == RUN_RUNNING))
			return run;
	return NULL;
}

/* Inserts run's row. Returns 0 or -EIO. */
static int insert_run(struct run *run, const char *ids)
{
	struct store *st = run->v->st;
	if (store_run(st, "INSERT INTO verify_runs (kind, state, is_repair, started_at, ids, wanted) VALUES (?, ?, ?, ?, ?, ?)",
		      "ttiiti", kind_names[run->kind], state_names[RUN_RUNNING], (int64_t)run->is_repair, run->started_at,
		      ids, (int64_t)run->want) < 0)
		return -EIO;
	run->id = sqlite3_last_insert_rowid(st->db);
	return 0;
}

/* The canary: its profiles staged with this run's values and sent at once. */
static int start_canary(struct verify *v, struct run *run, char *err, size_t size)
{
	const struct config *cfg = v->cfg;
	unsigned char rnd[8];
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		for (size_t i = 0; i < sizeof(rnd); i++)
			rnd[i] = (unsigned char)random();
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(run->nonce + 2 * i, 3, "%02x", rnd[i]);
	int64_t attr = store_attr_id(v->st, CANARY_ATTR, strlen(CANARY_ATTR));
	if (attr < 0)
		return -EIO;
	struct attrset one;
	attrset_init(&one);
	int r = store_begin(v->st) < 0 ? -EIO : 0;
	char id[256], value[128];
	struct stage_origin origin = { .position = "canary" };
	for (size_t k = 0; r == 0 && k < N_CLASSES; k++) {
		snprintf(id, sizeof(id), "%s-%s", cfg->verify.canary_id, canary_classes[k].name);
		snprintf(value, sizeof(value), "%s %s", run->nonce, canary_classes[k].chars);
		attrset_clear(&one);
		r = attrset_put(&one, (uint32_t)attr, value, (uint32_t)strlen(value));
		if (r == 0) {
			int s = stage_profile(&v->sg, id, strlen(id), &one, "tpsyncd", &origin, NULL);
			r = s < 0 ? s : 0;
		}
		if (r == 0)
			r = push(run, id, strlen(id), k);
	}
	attrset_finish(&one);
	if (r == 0 && store_commit(v->st) < 0)
		r = -EIO;
	if (r < 0) {
		store_abort(v->st);
		snprintf(err, size, "cannot stage the canary: %s", r == -EIO ? store_error(v->st) : strerror(-r));
		return r;
	}
	run->deadline = clock_wall_ms() + cfg->verify.canary_timeout_ms;
	/* The first look after a poll interval: the batch needs that at least. */
	for (struct item *it = run->head; it; it = it->next)
		it->not_before = clock_wall_ms() + cfg->target.poll_interval_ms;
	if (v->l && v->l->queued)
		v->l->queued(v->arg, true);
	return 0;
}

int64_t verify_start(struct verify *v, const struct verify_request *req, char *err, size_t size)
{
	if ((req->kind == VERIFY_ALL || req->kind == VERIFY_CANARY)) {
		for (struct run *run = v->runs; run; run = run->next)
			if (run->kind == req->kind && run->state == RUN_RUNNING) {
				snprintf(err, size, "a %s run is under way (run %lld)", kind_names[req->kind], (long long)run->id);
				return -EBUSY;
			}
	}
	if (req->kind == VERIFY_IDS && req->n == 0) {
		snprintf(err, size, "no profile ids given");
		return -EINVAL;
	}
	if (req->kind == VERIFY_SAMPLE && (req->n == 0 || req->n > 100000)) {
		snprintf(err, size, "a sample is 1 to 100,000 profiles");
		return -EINVAL;
	}
	struct run *run = run_new(v, req->kind, req->is_repair && v->cfg->verify.repair != REPAIR_NEVER);
	if (!run)
		return -ENOMEM;
	int r = 0;
	json_t *ids = NULL;
	if (req->kind == VERIFY_IDS) {
		ids = json_array();
		for (size_t i = 0; r == 0 && i < req->n; i++) {
			r = push(run, req->ids[i], strlen(req->ids[i]), 0);
			json_array_append_new(ids, json_string(req->ids[i]));
		}
		run->want = req->n;
	} else if (req->kind == VERIFY_SAMPLE) {
		run->want = req->n;
		run->reservoir = calloc(req->n, sizeof(*run->reservoir));
		r = run->reservoir ? 0 : -ENOMEM;
	} else if (req->kind == VERIFY_CANARY) {
		run->want = N_CLASSES;
	}
	char *ids_text = ids ? json_dumps(ids, JSON_COMPACT) : NULL;
	json_decref(ids);
	if (r == 0)
		r = insert_run(run, ids_text);
	free(ids_text);
	if (r == 0 && req->kind == VERIFY_CANARY) {
		r = start_canary(v, run, err, size);
		if (r == 0)
			store_run(v->st, "UPDATE verify_runs SET ids = ? WHERE id = ?", "ti", run->nonce, run->id);
	}
	if (r < 0) {
		if (!err[0])
			snprintf(err, size, "%s", r == -EIO ? store_error(v->st) : strerror(-r));
		if (run->id)
			finish_run(run, RUN_FAILED);
		run_free(run);
		return r;
	}
	run->next = v->runs;
	v->runs = run;
	log_info("msg=\"verification started\" run=%lld kind=%s repair=%s", (long long)run->id, kind_names[run->kind],
		 run->is_repair ? "yes" : "no");
	kick(v);
	return run->id;
}

int verify_stop(struct verify *v, int64_t id)
{
	struct run *run = find_run(v, id);
	if (!run || run->state != RUN_RUNNING)
		return -ENOENT;
	while (run->head) {
		struct item *it = run->head;
		run->head = it->next;
		item_free(it);
	}
	run->tail = NULL;
	finish_run(run, RUN_STOPPED);
	return 0;
}

static json_t *run_json(const struct run *run)
{
	json_t *o = json_pack("{s:I, s:s, s:s, s:b, s:I, s:I}", "id", (json_int_t)run->id, "kind", kind_names[run->kind],
			      "state", state_names[run->state], "repair", run->is_repair, "started_at",
			      (json_int_t)run->started_at, "wanted", (json_int_t)run->want);
	if (!o)
		return NULL;
	for (int i = 0; i < C_COUNT; i++)
		json_object_set_new(o, count_names[i], json_integer(run->counts[i]));
	if (run->cursor)
		json_object_set_new(o, "cursor", json_string(run->cursor));
	if (run->last_error[0])
		json_object_set_new(o, "last_error", json_string(run->last_error));
	if (run->kind != VERIFY_ALL && run->kind != VERIFY_STEADY)
		json_object_set(o, "results", run->results);
	return o;
}

json_t *verify_run_json(struct verify *v, int64_t id)
{
	struct run *run = find_run(v, id);
	if (run)
		return run_json(run);
	/* An older run: its counts from the table. */
	sqlite3_stmt *s = store_prepare(v->st, "SELECT kind, state, started_at, checked, matched, differed, missing,"
					       " changed_in_target, repaired, skipped, errors, last_error, cursor"
					       " FROM verify_runs WHERE id = ?", "i", id);
	json_t *o = NULL;
	if (s && sqlite3_step(s) == SQLITE_ROW) {
		o = json_pack("{s:I, s:s, s:s, s:I}", "id", (json_int_t)id, "kind", sqlite3_column_text(s, 0), "state",
			      sqlite3_column_text(s, 1), "started_at", (json_int_t)sqlite3_column_int64(s, 2));
		for (int i = 0; o && i < C_COUNT; i++)
			json_object_set_new(o, count_names[i], json_integer(sqlite3_column_int64(s, 3 + i)));
		if (o && sqlite3_column_type(s, 11) == SQLITE_TEXT)
			json_object_set_new(o, "last_error", json_string((const char *)sqlite3_column_text(s, 11)));
	}
	if (s)
		sqlite3_reset(s);
	return o;
}

json_t *verify_last_json(struct verify *v, const char *profile)
{
	sqlite3_stmt *s = store_prepare(v->st, "SELECT run_id, at, result, detail FROM verifications WHERE profile = ?", "t",
					profile);
	json_t *o = NULL;
	if (s && sqlite3_step(s) == SQLITE_ROW) {
		o = json_pack("{s:I, s:I, s:s}", "run", (json_int_t)sqlite3_column_int64(s, 0), "at",
			      (json_int_t)sqlite3_column_int64(s, 1), "result", sqlite3_column_text(s, 2));
		json_t *detail = sqlite3_column_type(s, 3) == SQLITE_TEXT
					 ? json_loads((const char *)sqlite3_column_text(s, 3), 0, NULL) : NULL;
		if (o && detail)
			json_object_set_new(o, "detail", detail);
		else
			json_decref(detail);
	}
	if (s)
		sqlite3_reset(s);
	return o;
}

void verify_status(struct verify *v, json_t *obj)
{
	json_t *runs = json_array();
	for (struct run *run = v->runs; run; run = run->next) {
		if (run->state != RUN_RUNNING && run->kind != VERIFY_ALL)
			continue;
		json_t *o = run_json(run);
		if (o) {
			json_object_del(o, "results");
			json_array_append_new(runs, o);
		}
	}
	json_t *o = json_pack("{s:o, s:b, s:I}", "runs", runs, "auth_failed", v->is_auth_failed, "calls_per_minute",
			      (json_int_t)v->cfg->verify.calls_per_minute);
	if (o)
		json_object_set_new(obj, "verify", o);
}

void verify_metrics(struct verify *v, FILE *out)
{
	fprintf(out, "# HELP tpsync_verify_profiles_total Profiles verified through the fetch API, by result.\n"
		     "# TYPE tpsync_verify_profiles_total counter\n");
	for (int i = 1; i < C_COUNT; i++)
		fprintf(out, "tpsync_verify_profiles_total{result=\"%s\"} %lld\n", count_names[i], (long long)v->totals[i]);
	fprintf(out, "# HELP tpsync_verify_runs_total Verification runs ended.\n# TYPE tpsync_verify_runs_total counter\n");
	fprintf(out, "tpsync_verify_runs_total %lld\n", (long long)v->runs_done);
}

/* --- lifecycle ------------------------------------------------------------------------------------ */

/* Runs a restart interrupted: an --all run goes on from its cursor (the
 * profiles of its slice that it checked already are skipped); others stop. */
static int resume_runs(struct verify *v)
{
	sqlite3_stmt *s = store_prepare(v->st, "SELECT id, kind, is_repair, started_at, cursor, checked, matched, differed,"
					       " missing, changed_in_target, repaired, skipped, errors FROM verify_runs"
					       " WHERE state = ?", "t", state_names[RUN_RUNNING]);
	if (!s)
		return -EIO;
	int rc, r = 0;
	while (r == 0 && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *kind = (const char *)sqlite3_column_text(s, 1);
		bool is_all = strcmp(kind, kind_names[VERIFY_ALL]) == 0;
		struct run *run = run_new(v, is_all ? VERIFY_ALL : VERIFY_IDS, sqlite3_column_int64(s, 2) != 0);
		if (!run) {
			r = -ENOMEM;
			break;
		}
		run->id = sqlite3_column_int64(s, 0);
		run->started_at = sqlite3_column_int64(s, 3);
		if (sqlite3_column_type(s, 4) == SQLITE_TEXT)
			run->cursor = strdup((const char *)sqlite3_column_text(s, 4));
		for (int i = 0; i < C_COUNT; i++)
			run->counts[i] = sqlite3_column_int64(s, 5 + i);
		run->is_resumed = true;
		if (!is_all) {
			snprintf(run->last_error, sizeof(run->last_error), "the daemon stopped during the run");
			run->state = RUN_STOPPED;
		}
		run->next = v->runs;
		v->runs = run;
	}
	if (r == 0 && rc != SQLITE_DONE) {
		store_note_error(v->st);
		r = -EIO;
	}
	sqlite3_reset(s);
	for (struct run *run = v->runs; r == 0 && run; run = run->next) {
		if (run->state == RUN_STOPPED) {
			save_run(run);
		} else {
			log_info("msg=\"verification resumed\" run=%lld from=\"%s\"", (long long)run->id,
				 run->cursor ? run->cursor : "");
		}
	}
	return r;
}

/* The steady sample (verify.sample_per_hour): a run that walks the whole
 * mirror, a profile at a time, round and round. */
static int start_steady(struct verify *v)
{
	if (v->cfg->verify.sample_per_hour <= 0)
		return 0;
	for (struct run *run = v->runs; run; run = run->next)
		if (run->kind == VERIFY_STEADY)
			return 0;
	struct run *run = run_new(v, VERIFY_STEADY, v->cfg->verify.repair != REPAIR_NEVER);
	if (!run)
		return -ENOMEM;
	if (insert_run(run, NULL) < 0) {
		run_free(run);
		return -EIO;
	}
	run->next = v->runs;
	v->runs = run;
	return 0;
}

struct verify *verify_create(struct event_base *base, struct store *st, const struct config *cfg,
			     const struct verify_listener *l, void *arg)
{
	struct verify *v = calloc(1, sizeof(*v));
	if (!v) {
		log_err("msg=\"cannot set up verification\" error=\"out of memory\"");
		return NULL;
	}
	v->base = base;
	v->st = st;
	v->cfg = cfg;
	v->l = l;
	v->arg = arg;
	stage_init(&v->sg, st);
	v->wake = evtimer_new(base, on_wake, v);
	if (!v->wake || callrate_init(&v->calls, (size_t)cfg->verify.calls_per_minute, 60000) < 0) {
		log_err("msg=\"cannot set up verification\" error=\"out of memory\"");
		goto fail;
	}
	v->http = http_create(base, MAX_FETCHES, &http_listener, v);
	if (!v->http)
		goto fail;
	int r = token_load(&v->token, cfg);
	if (r < 0) {
		log_err("msg=\"cannot read token file\" path=\"%s\" error=\"%s\"", cfg->target.token_file, strerror(-r));
		goto fail;
	}
	if (resume_runs(v) < 0 || start_steady(v) < 0) {
		log_err("msg=\"cannot resume verification\" error=\"%s\"", store_error(st));
		goto fail;
	}
	v->steady_next_at = clock_wall_ms();
	srandom((unsigned)clock_wall_ms());
	kick(v);
	return v;
fail:
	verify_destroy(v);
	return NULL;
}

void verify_destroy(struct verify *v)
{
	if (!v)
		return;
	http_destroy(v->http); /* fetches still running are abandoned: runs go on next time */
	while (v->fetches) {
		struct fetch *f = v->fetches;
		v->fetches = f->next;
		item_free(f->item);
		fetch_free(f);
	}
	while (v->runs) {
		struct run *run = v->runs;
		v->runs = run->next;
		run_free(run);
	}
	if (v->wake)
		event_free(v->wake);
	callrate_finish(&v->calls);
	token_finish(&v->token);
	stage_finish(&v->sg);
	free(v);
}

int verify_reconfigure(struct verify *v, const struct config *cfg)
{
	if (callrate_resize(&v->calls, (size_t)cfg->verify.calls_per_minute) < 0)
		return -ENOMEM;
	v->cfg = cfg;
	if (start_steady(v) < 0)
		return -ENOMEM;
	kick(v);
	return 0;
}

void verify_hold_token(struct verify *v, bool on)
{
	v->is_token_held = on;
	if (!on)
		kick(v);
}

int verify_calls_in_flight(const struct verify *v)
{
	return (int)v->n_fetches;
}

void verify_set_token(struct verify *v, const char *token)
{
	if (token_set(&v->token, token) < 0) {
		log_err("msg=\"cannot keep the new token\" error=\"out of memory\"");
		return;
	}
	v->is_auth_failed = false;
	kick(v);
}

int verify_reload_token(struct verify *v)
{
	int r = token_load(&v->token, v->cfg);
	if (r < 0) {
		log_err("msg=\"cannot read token file\" path=\"%s\" error=\"%s\"", v->cfg->target.token_file, strerror(-r));
		return r;
	}
	v->is_auth_failed = false;
	kick(v);
	return 0;
}
