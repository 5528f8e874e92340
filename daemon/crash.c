/* SPDX-License-Identifier: MIT */
/* Test-only crash points (see crash.h). */
#include "crash.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

void crash_point(const char *name)
{
	static const char *want;
	static long after = -1;
	static long visits;
	if (after < 0) {
		want = getenv("TPSYNC_CRASH_POINT");
		const char *n = getenv("TPSYNC_CRASH_AFTER");
		after = n ? atol(n) : 1;
	}
	if (!want || strcmp(want, name) != 0)
		return;
	if (++visits < after)
		return;
	log_err("msg=\"crash point reached; killing myself\" point=%s", name);
	kill(getpid(), SIGKILL);
	pause();
}
