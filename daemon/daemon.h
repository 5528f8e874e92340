/* SPDX-License-Identifier: MIT */
/* The daemon as a whole: start-up in dependency order, the event loop, signals,
 * reload, --once and --dry-run, and the control commands that span modules.
 * daemon.c is the one file that knows every module; nothing calls up into it. */
#ifndef TPSYNC_DAEMON_H
#define TPSYNC_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

struct daemon_options {
	bool is_once;            /* --once: exit when everything is delivered */
	int64_t wait_ms;         /* --once --wait: give up waiting for final status then */
	const char *dry_run_dir; /* --dry-run DIR: write batch files instead of sending */
	bool is_fresh_state;     /* --fresh-state: move the state database aside and start anew */
};

/* Runs the daemon with cfg (ownership passes) until it is told to stop, or,
 * with --once, until everything is delivered. Returns the process exit code:
 * 0, or 1 when start-up failed (logged); with --once 1 when something was
 * dead-lettered or a file failed, 2 when --wait ran out first. */
int daemon_run(struct config *cfg, const struct daemon_options *opts);

#endif
