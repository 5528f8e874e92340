/* SPDX-License-Identifier: MIT */
/* Logging: one event per line, "level=... msg" with key=value fields chosen by
 * the caller. Under journald (JOURNAL_STREAM matches stderr) lines carry "<N>". */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static enum log_level threshold = LOG_LVL_INFO;
static bool to_journal;

void log_set_level(enum log_level level)
{
	threshold = level;
}

int log_parse_level(const char *name, enum log_level *out)
{
	static const struct { const char *name; enum log_level level; } names[] = {
		{ "error", LOG_LVL_ERR }, { "warn", LOG_LVL_WARN },
		{ "info", LOG_LVL_INFO }, { "debug", LOG_LVL_DEBUG },
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(name, names[i].name) == 0) {
			*out = names[i].level;
			return 0;
		}
	}
	return -EINVAL;
}

void log_init(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	struct stat st;
	unsigned long dev, ino;

	if (js && sscanf(js, "%lu:%lu", &dev, &ino) == 2 && fstat(2, &st) == 0)
		to_journal = st.st_dev == dev && st.st_ino == ino;
}

static const char *level_name(enum log_level level)
{
	switch (level) {
	case LOG_LVL_ERR: return "error";
	case LOG_LVL_WARN: return "warn";
	case LOG_LVL_INFO: return "info";
	default: return "debug";
	}
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	if (level > threshold)
		return;
	char line[2048];
	int n;
	if (to_journal) {
		n = snprintf(line, sizeof(line), "<%d>level=%s ", level, level_name(level));
	} else {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s ",
			     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			     tm.tm_sec, ts.tv_nsec / 1000000, level_name(level));
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	/* One write per line so concurrent writers never interleave within a line. */
	size_t len = strlen(line);
	if (len + 1 < sizeof(line)) {
		line[len++] = '\n';
	} else {
		line[sizeof(line) - 2] = '\n';
		len = sizeof(line) - 1;
	}
	fwrite(line, 1, len, stderr);
}

void log_libevent(int severity, const char *msg)
{
	static int64_t window_start;
	static int in_window, dropped;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	if (now - window_start >= 10000) {
		if (dropped)
			log_msg(LOG_LVL_WARN, "msg=\"libevent messages suppressed\" count=%d", dropped);
		window_start = now;
		in_window = dropped = 0;
	}
	if (++in_window > 10) {
		dropped++;
		return;
	}
	/* libevent's severities: 0 debug, 1 msg, 2 warn, 3 error. */
	enum log_level level = severity >= 3 ? LOG_LVL_ERR : severity == 2 ? LOG_LVL_WARN : LOG_LVL_DEBUG;
	log_msg(level, "msg=\"libevent\" detail=\"%s\"", msg);
}
