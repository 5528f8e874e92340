/* SPDX-License-Identifier: MIT */
/* One-line, key=value logging to stderr, with journald priority prefixes when
 * stderr is the journal. */
#ifndef TPSYNC_LOG_H
#define TPSYNC_LOG_H

enum log_level { LOG_LVL_ERR = 3, LOG_LVL_WARN = 4, LOG_LVL_INFO = 6, LOG_LVL_DEBUG = 7 };

/* Sets the threshold; messages above it are dropped. */
void log_set_level(enum log_level level);
/* Parses "error", "warn", "info" or "debug"; returns 0 or -EINVAL. */
int log_parse_level(const char *name, enum log_level *out);
/* Detects JOURNAL_STREAM and switches to "<N>" prefixes if stderr is the journal. */
void log_init(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* For event_set_log_callback: libevent's own messages, at most 10 in any 10 s
 * (a burst of one warning per failed accept once wrote 760 MB in 10 s). */
void log_libevent(int severity, const char *msg);

#define log_err(...) log_msg(LOG_LVL_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)

#endif
