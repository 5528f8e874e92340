/* SPDX-License-Identifier: MIT */
/* target.oauth: the profile API token made and renewed by the daemon itself.
 * An Adobe IMS access token from the OAuth Server-to-Server client-credentials
 * grant opens the Target Admin API, whose GET gives the current profile-API
 * token and whose POST makes a new one (invalidating the old one for every
 * other user of it, so POST only when there is none or it expires within
 * target.oauth.renew_before). On the event loop, with its own HTTP engine;
 * knows nothing of batches: it hands each token to its listener. The client
 * secret and the tokens are never logged or shown. */
#ifndef TPSYNC_OAUTH_H
#define TPSYNC_OAUTH_H

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>

#include "config.h"

struct oauth_listener {
	/* A profile-API token to use from now on (the first, or a renewed one). */
	void (*token)(void *arg, const char *token);
	/* No token could be had; why says what refused it (no secrets). Tries
	 * again after a backoff. */
	void (*failed)(void *arg, const char *why);
	/* A POST is about to invalidate the token in use: hold (on) or release
	 * (off) new profile API calls, so none is refused in between. */
	void (*hold)(void *arg, bool on);
	/* Profile API calls on the wire now (a POST waits until there are none,
	 * up to target.timeout). */
	int (*calls_in_flight)(void *arg);
};

struct oauth;

/* Reads the client secret (target.oauth.client_secret_file, or the systemd
 * credential oauth-secret) and starts getting a token at once. cfg must
 * outlive it or be replaced with oauth_reconfigure. NULL with the reason
 * logged when the secret cannot be read. */
struct oauth *oauth_create(struct event_base *base, const struct config *cfg, const struct oauth_listener *l,
			   void *arg);
void oauth_destroy(struct oauth *o);
/* Uses cfg from now on and re-reads the secret (SIGHUP); a failed read keeps
 * the old one. Returns 0 or a negative errno. */
int oauth_reconfigure(struct oauth *o, const struct config *cfg);
/* Target refused token (a 401): another user of the account may have made a
 * new one, or it was revoked. Gets the current one; makes a new one only if
 * the current one is the refused one. Nothing happens while a renewal runs. */
void oauth_renew(struct oauth *o, const char *refused);
/* Adds "oauth": {state, token_expires_at, renewals, made, last_error} to obj. */
void oauth_status(struct oauth *o, json_t *obj);

#endif
