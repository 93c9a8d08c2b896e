/*
 * log: the error log (levels, one line per event, thread-safe by a single
 * write(2) per line) and the access log (one line per request).
 * Lines carry the function name: log_info("%s: conn %llu: ...", __func__, id).
 */
#ifndef TG_LOG_H
#define TG_LOG_H

#include <stddef.h>
#include <syslog.h>   /* LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG */

/*
 * Opens the error log ("-" or NULL = stderr) at the given level. 0 / -1 with
 * errno.  May be called again, from one thread at a time, while other threads
 * log: the same path reopens it (log rotation), another path switches to it.
 * On failure the old file (and level) stay in use.
 */
int log_open(const char *path, int level);
/*
 * Opens the access log (NULL = off, "-" = stderr). 0 / -1 with errno.  May be
 * called again like log_open() (NULL then turns it off); on failure the old
 * file stays in use.
 */
int log_access_open(const char *path);
/* Reopens both files at their current paths (after logrotate). */
void log_reopen(void);
void log_set_level(int level);
int log_level_enabled(int level);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_err(...)     log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)    log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...)  log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)    log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)   do { if (log_level_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

/*
 * Rate-limited error: logs at most once per `key` per 60 s (key is any stable
 * string, e.g. "bad-domain:example.com"); returns 1 when it was logged.
 */
int log_err_ratelimited(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* 1 when an access log is open. */
int log_access_enabled(void);
/* Writes one preformatted access-log line (no trailing newline needed). */
void log_access_line(const char *line, size_t len);

/* Parses "err", "warn", "notice", "info", "debug" to a level; -1 if unknown. */
int log_level_parse(const char *s);

#endif
