/* SPDX-License-Identifier: MIT */
/* The sender: the delivery policy. It decides when the queue's next batch is
 * cut and sent, paces calls within Target's budget, acts on the verdict of
 * every answer (target.c judges it), and polls each batch's status. It holds
 * no SQL (queue.c) and no curl plumbing (http.c). */
#ifndef TPSYNC_SENDER_H
#define TPSYNC_SENDER_H

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "config.h"
#include "queue.h"
#include "store.h"

struct sender;

struct sender_options {
	const char *dry_run_dir; /* --dry-run: write each body to DIR instead of sending it */
	bool is_once;            /* --once: cut batches without waiting for batch.linger (still for a full one mid-read) */
};

struct sender_listener {
	/* A batch moved on (answered, complete, dead): --once may be done. */
	void (*progress)(void *arg);
	/* Whether a source is in the middle of a file or a database read (may be
	 * NULL: never); a batch that is not full waits for the rest. */
	bool (*is_reading)(void *arg);
	/* target.oauth: Target refused token (a 401); a new one is wanted
	 * (sender_set_token). May be NULL. */
	void (*auth_refused)(void *arg, const char *token);
};

/* Creates the sender on base over queue q (st is q's store, for its error
 * messages), recovers batches whose answer never came (they are sent again,
 * and their profiles' latest values once more after target.timeout), and
 * loads the token. cfg must outlive the sender or be replaced with
 * sender_reconfigure. Returns NULL with the reason logged. */
struct sender *sender_create(struct event_base *base, struct store *st, struct queue *q, const struct config *cfg,
			     const struct sender_options *opts, const struct sender_listener *l, void *arg);
/* Abandons requests still running (their batches are recovered at next start). */
void sender_destroy(struct sender *s);

/* Something changed (rows staged, dead letters queued): look for work soon. */
void sender_kick(struct sender *s);
/* Shutting down: start nothing new; requests on the wire may still finish. */
void sender_stop(struct sender *s);
/* tpsyncctl pause/resume: hold or release new submissions. */
void sender_set_paused(struct sender *s, bool paused);
/* tpsyncctl flush: send what is pending now, without waiting for batch.linger. */
void sender_flush(struct sender *s);
/* Re-reads the token (SIGHUP); clears an authentication pause. Returns 0 or a
 * negative errno (the old token stays; the error is logged). */
int sender_reload_token(struct sender *s);
/* target.oauth: token (copied) from now on; clears an authentication pause. */
void sender_set_token(struct sender *s, const char *token);
/* target.oauth: while on, start no call (the token is being replaced). */
void sender_hold_token(struct sender *s, bool on);
/* Requests to Target on the wire now. */
int sender_calls_in_flight(const struct sender *s);
/* target.oauth: no token could be had (why: what refused it); shown as what
 * holds delivery back until a token comes. */
void sender_token_problem(struct sender *s, const char *why);
/* Uses cfg from now on (endpoint, call rate). Returns 0 or -ENOMEM (the old
 * settings stay). */
int sender_reconfigure(struct sender *s, const struct config *cfg);
/* Requests on the wire. */
int sender_active(const struct sender *s);
/* True when nothing is pending, ready, posting or (if include_status) waiting
 * for its final status. */
bool sender_is_drained(struct sender *s, bool include_status);
/* Adds the "queue" and "delivery" parts of tpsyncctl status to obj. */
void sender_status(struct sender *s, json_t *obj);
/* A one-line summary for systemd's STATUS= (static buffer). */
const char *sender_status_line(struct sender *s);
/* Prometheus metrics lines for delivery. */
void sender_metrics(struct sender *s, FILE *out);

#endif
