/* SPDX-License-Identifier: MIT */
/* Verification: what Target actually holds, read back through the profile
 * fetch API (target_fetch.h) on the event loop within verify.calls_per_minute,
 * compared with the mirror, and repaired through the normal queue; and the
 * canary, which sends one value per character class the batch format treats
 * specially and reads each back. Owns the verify_runs and verifications
 * tables. Runs survive a restart: an --all run resumes where it stood, and
 * nothing is counted as checked that was not. */
#ifndef TPSYNC_VERIFY_H
#define TPSYNC_VERIFY_H

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "store.h"

struct verify;

struct verify_listener {
	/* Values were queued again (a repair, the canary): the sender may have
	 * work. with_flush: send at once, without waiting for batch.linger. */
	void (*queued)(void *arg, bool with_flush);
	/* target.oauth: the fetch API refused token (a 401); a new one is
	 * wanted (verify_set_token). May be NULL. */
	void (*auth_refused)(void *arg, const char *token);
};

/* Creates the verifier on base over st, resuming a run left unfinished (an
 * --all run continues from where it stood; others are marked stopped).
 * cfg must outlive it or be replaced with verify_reconfigure. Returns NULL
 * with the reason logged. */
struct verify *verify_create(struct event_base *base, struct store *st, const struct config *cfg,
			     const struct verify_listener *l, void *arg);
/* Abandons fetches on the wire (their runs go on at the next start). */
void verify_destroy(struct verify *v);
/* Uses cfg from now on. Returns 0 or -ENOMEM (the old settings stay). */
int verify_reconfigure(struct verify *v, const struct config *cfg);
/* target.oauth: while on, start no fetch (the token is being replaced). */
void verify_hold_token(struct verify *v, bool on);
/* Fetches on the wire now. */
int verify_calls_in_flight(const struct verify *v);
/* target.oauth: token (copied) from now on; fetches waiting on a 401 go on. */
void verify_set_token(struct verify *v, const char *token);
/* Re-reads the token (SIGHUP). Returns 0 or a negative errno (logged). */
int verify_reload_token(struct verify *v);

enum verify_kind { VERIFY_IDS, VERIFY_SAMPLE, VERIFY_ALL, VERIFY_CANARY, VERIFY_STEADY };

/* What to check: the profiles ids (n of them), a sample of n, every
 * profile, or the canary. is_repair false only reports. */
struct verify_request {
	enum verify_kind kind;
	const char *const *ids;
	size_t n;
	bool is_repair;
};

/* Starts a run. Returns its id, or -EINVAL (bad request, err says why),
 * -EBUSY (an --all run or the canary is already running: only one of each),
 * -EIO or -ENOMEM. */
int64_t verify_start(struct verify *v, const struct verify_request *req, char *err, size_t size);
/* Stops run id (0: the --all run). Returns 0 or -ENOENT. */
int verify_stop(struct verify *v, int64_t id);

/* Run id as JSON: {id, kind, state, counts..., results: [...] for ids,
 * sample and canary runs}; NULL if there is none (or on ENOMEM). The caller
 * owns it. */
json_t *verify_run_json(struct verify *v, int64_t id);
/* The last verification of profile as JSON, or NULL when there is none. */
json_t *verify_last_json(struct verify *v, const char *profile);
/* Adds "verify" (the runs under way, the last --all run) to obj. */
void verify_status(struct verify *v, json_t *obj);
/* Prometheus metrics lines (tpsync_verify_*). */
void verify_metrics(struct verify *v, FILE *out);

#endif
