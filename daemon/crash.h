/* SPDX-License-Identifier: MIT */
/* Crash points for the reliability tests: the process kills itself with SIGKILL at
 * a named point when $TPSYNC_CRASH_POINT names it (and, with
 * $TPSYNC_CRASH_AFTER=N, on its Nth visit). Unset in production: one getenv. */
#ifndef TPSYNC_CRASH_H
#define TPSYNC_CRASH_H

/* Kills the process here if the environment asks for this point. */
void crash_point(const char *name);

#endif
