/* SPDX-License-Identifier: MIT */
/* The sender drains the queue into Bulk Profile Update requests through libcurl's
 * multi interface on the daemon's libevent loop, then polls each batch's status. */
#ifndef TPSYNC_SENDER_H
#define TPSYNC_SENDER_H

#include <jansson.h>
#include <stdbool.h>

#include "daemon.h"

/* Creates the sender, recovers batches whose answer never came (they are sent
 * again, and their profiles' latest values once more after target.timeout), and
 * loads the token. Returns NULL with the reason logged. */
struct sender *sender_create(struct daemon *d);
/* Abandons requests still running (their batches are recovered at next start). */
void sender_destroy(struct sender *s);

/* Something changed (rows staged, config reloaded): look for work soon. */
void sender_kick(struct sender *s);
/* tpsyncctl pause/resume: hold or release new submissions. */
void sender_set_paused(struct sender *s, bool paused);
/* tpsyncctl flush: send what is pending now, without waiting for batch.linger. */
void sender_flush(struct sender *s);
/* Re-reads the token (SIGHUP); clears an authentication pause if it changed.
 * Returns 0 or a negative errno (the old token stays). */
int sender_reload_token(struct sender *s);
/* Applies a reloaded d->cfg (endpoint, call rate). Returns 0 or -ENOMEM. */
int sender_reconfigure(struct sender *s);
/* Requests on the wire. */
int sender_active(const struct sender *s);
/* True when nothing is pending, ready, posting or (if include_status) waiting
 * for its final status. */
bool sender_is_drained(struct sender *s, bool include_status);
/* Adds the sender's part of "tpsyncctl status" to obj. */
void sender_status(struct sender *s, json_t *obj);
/* A one-line summary for systemd's STATUS= (static buffer). */
const char *sender_status_line(struct sender *s);
/* Prometheus metrics lines for the sender. */
void sender_metrics(struct sender *s, FILE *out);

#endif
