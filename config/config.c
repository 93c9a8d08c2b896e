/*
 * config: the command line and the config file become one struct tg_config.
 *
 * Every key is described once, in the table `keys[]` below: its name (the
 * long flag without dashes and the config-file key), its type, where it lives
 * in struct tg_config, its range, and the text --help prints.  The file
 * parser, the command-line parser and --help all walk that table, so a key
 * cannot exist in one place and be missing from another.
 *
 * Order of sources: defaults (cfg_defaults) < config file (-c) < command
 * line.  Scalar keys: the last value wins.  Repeatable keys (listen,
 * tls-listen, route): the first occurrence in a source replaces the list the
 * previous source left (so a file's `listen` replaces the default, and a
 * `--listen` on the command line replaces the file's), later occurrences in
 * the same source append.
 *
 * File syntax: one `key value` per line; the value runs to the end of the
 * line; `#` at the start of a line, or preceded by a space or tab, starts a
 * comment; blank lines and CR before LF are ignored.
 *
 * Errors are "FILE:LINE: key: message" for the file and "--key: message" for
 * the command line.  The parsers also record where each key was last set
 * (origin_line[]), so that cfg_validate() and cfg_check_files(), which run
 * after parsing, can still name the line or the flag.  On error the struct may hold part of the new values; the
 * caller still owns it and must cfg_free() it.
 *
 * Thread-safety: cfg_from_args uses getopt_long, whose state is global; call
 * it from one thread at a time (start-up and SIGHUP reload both run on the
 * main thread).  It resets getopt (optind = 0) on every call and parses a copy
 * of argv, so it can be called again on a fresh struct.
 */
#include "config/config.h"
#include "proxy/log.h"
#include "routing/schema.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.1.0"
#endif

#define CFG_MAX_ROUTES 100000
#define CFG_MAX_BACKENDS 64        /* route_pick keeps a 64-bit tried-mask */
#define CFG_MAX_FILE (16u << 20)   /* a config file larger than this is a mistake */
#define CFG_MAX_SECONDS 31536000.0 /* one year */

enum key_type {
    K_CONFIG, K_CHECK, K_HELP, K_VERSION,    /* command line only */
    K_LISTEN, K_ADMIN, K_ROUTE,
    K_REDIS, K_PREFIX, K_LOGFILE, K_PATH, K_IDENT,
    K_INT, K_COUNT, K_SIZE, K_SECONDS, K_LOGLEVEL,   /* K_COUNT: a whole number into a size_t */
};

#define F_POSITIVE 1u   /* numeric value must be > min (not >= min) */

struct key_def {
    const char *name;
    enum key_type type;
    size_t off;          /* member of struct tg_config; for lists the array pointer */
    size_t off_n;        /* for lists: the count member */
    double min, max;     /* numeric keys */
    unsigned flags;
    const char *metavar; /* NULL = takes no value */
    const char *defval;  /* as --help shows it */
    const char *help;
};

#define OFF(m) offsetof(struct tg_config, m)

static const struct key_def keys[] = {
    { "config", K_CONFIG, OFF(config_path), 0, 0, 0, 0, "FILE", "none",
      "config file of `key value` lines (command line only)" },
    { "listen", K_LISTEN, OFF(listen), OFF(n_listen), 0, 0, 0, "ADDR:PORT|off", "0.0.0.0:8080",
      "plain HTTP listener, repeatable; [::1]:8080 for IPv6; off = none" },
    { "tls-listen", K_LISTEN, OFF(tls_listen), OFF(n_tls_listen), 0, 0, 0, "ADDR:PORT|off", "none",
      "TLS listener (HTTP/1.1 and h2 by ALPN), repeatable" },
    { "admin-listen", K_ADMIN, OFF(admin_listen), 0, 0, 0, 0, "ADDR:PORT|off", "127.0.0.1:9180",
      "admin listener for /metrics and /healthz; off disables it" },
    { "redis", K_REDIS, OFF(redis_url), 0, 0, 0, 0, "URL|off", "none",
      "redis://[:password@]host:port[/db] or unix:///path; none = static routes only" },
    { "key-prefix", K_PREFIX, OFF(key_prefix), 0, 0, 0, 0, "P", "tg:",
      "prefix of every Redis key and of the events channel" },
    { "route", K_ROUTE, OFF(routes), OFF(n_routes), 0, 0, 0, "HOST=B[,B...]", "none",
      "static route to backends host:port (tenant default), repeatable" },
    { "workers", K_INT, OFF(workers), 0, 1, 1024, 0, "N", NULL,
      "event-loop threads" },
    { "access-log", K_LOGFILE, OFF(access_log), 0, 0, 0, 0, "FILE|-|off", "off",
      "access log file; - = stderr" },
    { "error-log", K_LOGFILE, OFF(error_log), 0, 0, 0, 0, "FILE|-", "-",
      "error log file; - = stderr" },
    { "log-level", K_LOGLEVEL, OFF(log_level), 0, 0, 0, 0, "LEVEL", "info",
      "err, warn, notice, info or debug" },
    { "client-header-timeout", K_SECONDS, OFF(client_header_timeout), 0, 0, 3600, F_POSITIVE,
      "S", "10", "seconds a client has to send a whole request head" },
    { "defer-accept", K_SECONDS, OFF(defer_accept), 0, 0, 60, 0,
      "S", "1", "the kernel holds a new connection until its first bytes or this long; 0 = off" },
    { "client-body-timeout", K_SECONDS, OFF(client_body_timeout), 0, 0, 86400, F_POSITIVE,
      "S", "60", "client silent mid-body while the proxy waits for it" },
    { "keepalive-timeout", K_SECONDS, OFF(keepalive_timeout), 0, 0, 86400, F_POSITIVE,
      "S", "75", "idle time between requests on a client connection" },
    { "upstream-connect-timeout", K_SECONDS, OFF(upstream_connect_timeout), 0, 0, 3600, F_POSITIVE,
      "S", "5", "connect to a backend" },
    { "upstream-read-timeout", K_SECONDS, OFF(upstream_read_timeout), 0, 0, 86400, F_POSITIVE,
      "S", "300", "backend silent while a response is awaited or streaming" },
    { "drain-timeout", K_SECONDS, OFF(drain_timeout), 0, 0, 86400, 0,
      "S", "30", "graceful stop: how long in-flight requests may finish" },
    { "max-header-size", K_SIZE, OFF(max_header_size), 0, 1024, 1048576, 0,
      "BYTES", "65536", "largest request head (431 above); k/m suffixes allowed" },
    { "buffer-size", K_SIZE, OFF(buffer_size), 0, 4096, 67108864, 0,
      "BYTES", "262144", "per-direction buffer high watermark; k/m suffixes allowed" },
    { "splice-min-body", K_SIZE, OFF(splice_min_body), 0, 0, 1073741824, 0,
      "BYTES", "16384", "response bodies longer than this move in the kernel (splice); 0 = never" },
    { "route-cache-size", K_COUNT, OFF(route_cache_size), 0, 1, 100000000, 0,
      "N", "150000", "routes cached per worker" },
    { "route-cache-ttl", K_SECONDS, OFF(route_cache_ttl), 0, 0, CFG_MAX_SECONDS, F_POSITIVE,
      "S", "60", "a cached route is re-read from Redis after this long" },
    { "route-negative-ttl", K_SECONDS, OFF(route_negative_ttl), 0, 0, 86400, 0,
      "S", "5", "an unknown host is remembered for this long" },
    { "route-stale-max-age", K_SECONDS, OFF(route_stale_max_age), 0, 0, CFG_MAX_SECONDS, 0,
      "S", "3600", "while Redis is unreachable, a cached route is served until this long after it was read" },
    { "redis-timeout", K_SECONDS, OFF(redis_timeout), 0, 0, 60, F_POSITIVE,
      "S", "0.2", "time allowed for one Redis command" },
    { "backend-cooldown", K_SECONDS, OFF(backend_cooldown), 0, 0, 3600, 0,
      "S", "10", "a backend that failed before answering is skipped this long" },
    { "meter-flush-interval", K_SECONDS, OFF(meter_flush_interval), 0, 0, 3600, F_POSITIVE,
      "S", "1", "how often byte counters are flushed to Redis" },
    { "cap-status", K_INT, OFF(cap_status), 0, 400, 599, 0,
      "CODE", "509", "status answered to a tenant over its cap" },
    { "cap-page", K_PATH, OFF(cap_page), 0, 0, 0, 0,
      "FILE", "built-in", "HTML page sent with the cap status" },
    { "instance-id", K_IDENT, OFF(instance_id), 0, 0, 0, 0,
      "ID", "hostname:pid", "name of this proxy instance in Redis and logs" },
    { "check-config", K_CHECK, OFF(check_only), 0, 0, 0, 0, NULL, NULL,
      "validate the configuration and exit 0/1 (command line only)" },
    { "version", K_VERSION, 0, 0, 0, 0, 0, NULL, NULL, "print the version and exit" },
    { "help", K_HELP, 0, 0, 0, 0, 0, NULL, NULL, "print this help and exit" },
};

#define N_KEYS (sizeof(keys) / sizeof(keys[0]))
_Static_assert(N_KEYS <= CFG_MAX_KEYS && N_KEYS <= 64,
               "origin_line[] and the per-source bitmask need a slot per key");
#define OPT_BASE 1000   /* getopt_long val of keys[i] is OPT_BASE + i */

/* ---- small helpers ---- */

static void *member(struct tg_config *cfg, size_t off)
{
    return (char *)cfg + off;
}

/*
 * Writes "'s'" to buf with control bytes, backslashes and bytes >= 0x80
 * escaped as \xNN (so that an invisible byte, such as a UTF-8 byte order
 * mark, shows in a message) and values longer than 80 bytes cut.
 */
static void quote(char *buf, size_t size, const char *s)
{
    size_t o = 0, i;
    if (size < 8) {
        if (size)
            buf[0] = '\0';
        return;
    }
    buf[o++] = '\'';
    for (i = 0; s[i] && o + 6 < size; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= 80) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (c < 0x20 || c >= 0x7f || c == '\\')
            o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    buf[o++] = '\'';
    buf[o] = '\0';
}

static int fail(char *msg, size_t msglen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *msg, size_t msglen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
    return -1;
}

static int all_digits(const char *s, size_t n)
{
    size_t i;
    if (n == 0)
        return 0;
    for (i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* Port "1".."65535", digits only; -1 if invalid. */
static int parse_port(const char *s, size_t n)
{
    long v = 0;
    size_t i;
    if (!all_digits(s, n) || n > 5)
        return -1;
    for (i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v >= 1 && v <= 65535 ? (int)v : -1;
}

/* A DNS name or IPv4 literal: labels of [A-Za-z0-9_-] separated by dots. */
static int valid_hostname(const char *s, size_t n)
{
    size_t i, label = 0;
    if (n == 0 || n > 253)
        return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
        if (++label > 63)
            return 0;
    }
    return label > 0;
}

static int valid_ipv6(const char *s, size_t n)
{
    char tmp[64];
    struct in6_addr a;
    if (n == 0 || n >= sizeof(tmp))
        return 0;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    return inet_pton(AF_INET6, tmp, &a) == 1;
}

/*
 * Checks one backend "host:port" or "[v6]:port" (s[0..n)); hosts may be
 * names, resolved later by the routing code.  0 / -1 with msg.
 */
static int check_backend(const char *s, size_t n, char *msg, size_t msglen)
{
    char q[128], tmp[300];
    const char *colon;
    size_t hn;

    snprintf(tmp, sizeof(tmp), "%.*s", (int)(n > 256 ? 256 : n), s);
    quote(q, sizeof(q), tmp);
    if (n == 0)
        return fail(msg, msglen, "empty backend in list");
    if (s[0] == '[') {
        const char *rb = memchr(s, ']', n);
        if (!rb || rb + 1 >= s + n || rb[1] != ':' || !valid_ipv6(s + 1, (size_t)(rb - s - 1)))
            return fail(msg, msglen, "backend %s: expected [IPv6]:PORT", q);
        colon = rb + 1;
    } else {
        colon = NULL;
        for (size_t i = n; i > 0; i--)
            if (s[i - 1] == ':') {
                colon = s + i - 1;
                break;
            }
        if (!colon)
            return fail(msg, msglen, "backend %s: missing :PORT", q);
        hn = (size_t)(colon - s);
        if (memchr(s, ':', hn))
            return fail(msg, msglen, "backend %s: write IPv6 addresses as [ADDR]:PORT", q);
        if (!valid_hostname(s, hn))
            return fail(msg, msglen, "backend %s: invalid host", q);
    }
    if (parse_port(colon + 1, (size_t)(s + n - colon - 1)) < 0)
        return fail(msg, msglen, "backend %s: port must be 1..65535", q);
    return 0;
}

/* Checks a comma-separated backend list. 0 / -1 with msg. */
static int check_backends(const char *s, char *msg, size_t msglen)
{
    size_t count = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (check_backend(p, n, msg, msglen) < 0)
            return -1;
        if (++count > CFG_MAX_BACKENDS)
            return fail(msg, msglen, "more than %d backends", CFG_MAX_BACKENDS);
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

/*
 * Normalises a route host in place (lowercase, one trailing dot removed) and
 * checks it: a DNS name, an IPv4 address or a bracketed IPv6 literal, the
 * forms routing/host.c produces from a Host header.
 */
static int normalise_route_host(char *h, char *msg, size_t msglen)
{
    char q[128];
    size_t n = strlen(h), i;
    quote(q, sizeof(q), h);
    for (i = 0; i < n; i++)
        if (h[i] >= 'A' && h[i] <= 'Z')
            h[i] = (char)(h[i] - 'A' + 'a');
    if (n > 1 && h[n - 1] == '.' && h[n - 2] != '.')
        h[--n] = '\0';
    if (n == 0)
        return fail(msg, msglen, "route needs HOST=BACKEND[,BACKEND...]");
    if (h[0] == '[') {
        if (h[n - 1] != ']' || !valid_ipv6(h + 1, n - 2))
            return fail(msg, msglen, "route host %s: invalid IPv6 literal", q);
        return 0;
    }
    if (memchr(h, ':', n))
        return fail(msg, msglen, "route host %s: must not contain a port", q);
    if (h[0] == '*')
        return fail(msg, msglen, "route host %s: static routes match exact hosts only "
                    "(wildcards live in Redis: tg:domain:*.zone)", q);
    if (!valid_hostname(h, n))
        return fail(msg, msglen, "route host %s: invalid host name", q);
    return 0;
}

/*
 * Redis URLs.  routing/redis.c (url_parse) is the parser that connects;
 * this one only checks, for -t, start-up and reload, and must refuse at
 * least everything url_parse refuses, with a clearer message, so that a URL
 * -t calls ok never fails at start with "bad Redis URL".  It is stricter on
 * purpose in places (the port is required, user names are refused, hosts
 * must be well-formed names or IPv6 literals).  The unit test
 * cfg_redis_urls_agree_with_the_client runs one table of URLs through both.
 */
#define CFG_REDIS_URL_MAX 1024   /* url_parse: "too long" */
#define CFG_REDIS_PASS_MAX 255   /* url_parse decodes the password into 256 bytes with its NUL */
#define CFG_REDIS_DB_MAX_DIGITS 6

static int hex_digit(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/*
 * Checks the password s[0..n) of the Redis URL quoted as q, as url_parse
 * decodes it: not empty, no raw '/' (RFC 3986 §3.2.1: userinfo has none;
 * url_parse ends the authority at the first '/'), every '%' followed by two
 * hex digits (§2.1), no %00 (the password travels as a C string), at most
 * CFG_REDIS_PASS_MAX bytes once decoded.  0 / -1 with msg.
 */
static int check_redis_password(const char *q, const char *s, size_t n, char *msg, size_t msglen)
{
    size_t i, decoded = 0;
    if (n == 0)
        return fail(msg, msglen, "%s: empty password", q);
    for (i = 0; i < n; i++, decoded++) {
        if (s[i] == '/')
            return fail(msg, msglen, "%s: write '/' in a password as %%2F", q);
        if (s[i] != '%')
            continue;
        if (i + 2 >= n || !hex_digit(s[i + 1]) || !hex_digit(s[i + 2]))
            return fail(msg, msglen, "%s: in a password '%%' starts an escape of two hex digits "
                        "(%%25 for '%%', %%40 for '@')", q);
        if (s[i + 1] == '0' && s[i + 2] == '0')
            return fail(msg, msglen, "%s: the password must not contain %%00 (a NUL byte)", q);
        i += 2;
    }
    if (decoded > CFG_REDIS_PASS_MAX)
        return fail(msg, msglen, "%s: password longer than %d bytes", q, CFG_REDIS_PASS_MAX);
    return 0;
}

/* The database number s[0..n): 1 to CFG_REDIS_DB_MAX_DIGITS digits. */
static int valid_redis_db(const char *s, size_t n)
{
    return all_digits(s, n) && n <= CFG_REDIS_DB_MAX_DIGITS;
}

/* The last c in s[0..n), or NULL. */
static const char *last_char(const char *s, size_t n, char c)
{
    while (n > 0)
        if (s[--n] == c)
            return s + n;
    return NULL;
}

/*
 * Checks a Redis URL: redis://[:password@]host:port[/db] or
 * unix://[:password@]/path[?db=N] (CONTRACT.md), schemes in any case as
 * url_parse takes them.  0 / -1 with msg "'URL': reason".
 */
int cfg_check_redis_url(const char *u, char *msg, size_t msglen)
{
    char q[128];
    const char *p, *at, *hp, *hend, *end, *slash, *colon;
    size_t ulen = strlen(u);
    quote(q, sizeof(q), u);

    if (ulen > CFG_REDIS_URL_MAX)
        return fail(msg, msglen, "%s: longer than %d bytes", q, CFG_REDIS_URL_MAX);
    for (p = u; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return fail(msg, msglen, "%s: spaces and control characters are not allowed", q);
    end = u + ulen;
    if (strncasecmp(u, "unix://", 7) == 0) {
        /* The password ends at the last '@' before the query, as url_parse reads it. */
        const char *path = u + 7, *qm = strchr(path, '?');
        const char *pend = qm ? qm : end;
        if (*path != '/') {
            at = last_char(path, (size_t)(pend - path), '@');
            if (!at)
                return fail(msg, msglen, "%s: expected unix://[:password@]/absolute/path[?db=N]", q);
            if (path[0] != ':')
                return fail(msg, msglen, "%s: user names are not supported, write unix://:password@/path", q);
            if (memchr(path, '/', (size_t)(at - path)))
                return fail(msg, msglen, "%s: the password runs to the last '@' before the socket path: "
                            "write '/' in a password as %%2F, and use a socket path without '@'", q);
            if (check_redis_password(q, path + 1, (size_t)(at - path - 1), msg, msglen) < 0)
                return -1;
            path = at + 1;
        }
        if (pend - path < 2 || *path != '/')
            return fail(msg, msglen, "%s: expected unix://[:password@]/absolute/path[?db=N]", q);
        if (pend - path >= 108)  /* sizeof(sun_path) */
            return fail(msg, msglen, "%s: socket path too long", q);
        if (qm && (strncmp(qm + 1, "db=", 3) != 0 || !valid_redis_db(qm + 4, strlen(qm + 4))))
            return fail(msg, msglen, "%s: only ?db=N (N a number of up to %d digits) may follow the socket path",
                        q, CFG_REDIS_DB_MAX_DIGITS);
        return 0;
    }
    if (strncasecmp(u, "redis://", 8) != 0)
        return fail(msg, msglen, "%s: expected redis://[:password@]host:port[/db] or unix:///path", q);
    hp = u + 8;
    /* The authority ends at the first '/' (RFC 3986 §3.2); the password at
     * the last '@' before it. */
    slash = memchr(hp, '/', (size_t)(end - hp));
    hend = slash ? slash : end;
    at = last_char(hp, (size_t)(hend - hp), '@');
    if (slash && memchr(slash, '@', (size_t)(end - slash)))   /* no '@' can follow a database number */
        return fail(msg, msglen, "%s: write '/' in a password as %%2F", q);
    if (at) {
        if (hp[0] != ':')
            return fail(msg, msglen, "%s: user names are not supported, write redis://:password@host:port", q);
        if (check_redis_password(q, hp + 1, (size_t)(at - hp - 1), msg, msglen) < 0)
            return -1;
        hp = at + 1;
    }
    if (hp == hend)
        return fail(msg, msglen, "%s: missing host", q);
    if (hp[0] == '[') {
        const char *rb = memchr(hp, ']', (size_t)(hend - hp));
        if (!rb || !valid_ipv6(hp + 1, (size_t)(rb - hp - 1)))
            return fail(msg, msglen, "%s: invalid IPv6 host", q);
        colon = rb + 1;
        if (colon >= hend || *colon != ':')
            return fail(msg, msglen, "%s: missing :port", q);
    } else {
        colon = memchr(hp, ':', (size_t)(hend - hp));
        if (!colon)
            return fail(msg, msglen, "%s: missing :port", q);
        if (!valid_hostname(hp, (size_t)(colon - hp)))
            return fail(msg, msglen, "%s: invalid host", q);
    }
    if (parse_port(colon + 1, (size_t)(hend - colon - 1)) < 0)
        return fail(msg, msglen, "%s: port must be 1..65535", q);
    /* "/" alone selects the default database, as url_parse reads it. */
    if (slash && slash + 1 < end && !valid_redis_db(slash + 1, (size_t)(end - slash - 1)))
        return fail(msg, msglen, "%s: database must be a number of up to %d digits", q, CFG_REDIS_DB_MAX_DIGITS);
    return 0;
}

/* ---- numbers ---- */

static int parse_int_value(const struct key_def *k, const char *v, long *out,
                           char *msg, size_t msglen)
{
    char q[128];
    size_t n = strlen(v);
    quote(q, sizeof(q), v);
    if (!all_digits(v, n))
        return fail(msg, msglen, "expected a whole number, got %s", q);
    *out = n > 12 ? LONG_MAX : strtol(v, NULL, 10);   /* more digits than any range allows */
    if (*out < (long)k->min || *out > (long)k->max)
        return fail(msg, msglen, "%s out of range %.0f..%.0f", q, k->min, k->max);
    return 0;
}

static int parse_size_value(const struct key_def *k, const char *v, size_t *out,
                            char *msg, size_t msglen)
{
    char q[128];
    size_t n = strlen(v), digits = n;
    unsigned long long mult = 1, x;
    quote(q, sizeof(q), v);
    if (n > 0) {
        switch (v[n - 1]) {
        case 'k': case 'K': mult = 1024; digits--; break;
        case 'm': case 'M': mult = 1024 * 1024; digits--; break;
        default: break;
        }
    }
    if (!all_digits(v, digits))
        return fail(msg, msglen, "expected a number of bytes (k/m suffix allowed), got %s", q);
    /* 10^12 * 2^20 < 2^64; more digits than that exceed every range */
    x = digits > 12 ? ULLONG_MAX : strtoull(v, NULL, 10) * mult;
    if ((double)x < k->min || (double)x > k->max)
        return fail(msg, msglen, "%s out of range %.0f..%.0f", q, k->min, k->max);
    *out = (size_t)x;
    return 0;
}

/* Seconds: "1", "0.25", "1.5s", "200ms"; no signs, exponents, inf or nan. */
static int parse_seconds_value(const struct key_def *k, const char *v, double *out,
                               char *msg, size_t msglen)
{
    char q[128];
    size_t n = strlen(v), i, digits = 0, dots = 0;
    double x, scale = 1.0;
    quote(q, sizeof(q), v);
    if (n >= 2 && strcmp(v + n - 2, "ms") == 0) {
        n -= 2;
        scale = 0.001;
    } else if (n >= 1 && v[n - 1] == 's') {
        n -= 1;
    }
    for (i = 0; i < n; i++) {
        if (v[i] == '.')
            dots++;
        else if (v[i] >= '0' && v[i] <= '9')
            digits++;
        else
            break;
    }
    if (i != n || digits == 0 || dots > 1)
        return fail(msg, msglen, "expected seconds (e.g. 10, 0.5, 200ms), got %s", q);
    x = strtod(v, NULL) * scale;   /* any number of digits: a huge one is inf, out of range */
    /* %.15g: the limits print as written (31536000, not 3.1536e+07) */
    if (x < k->min || x > k->max || ((k->flags & F_POSITIVE) && x <= k->min))
        return fail(msg, msglen, "%s out of range: must be %s %.15g and <= %.15g seconds", q,
                    (k->flags & F_POSITIVE) ? ">" : ">=", k->min, k->max);
    /* Timers have millisecond resolution (as nginx's): a shorter one would
     * round to a zero timeval, which libevent takes for "no timeout". */
    if (x > 0 && x < 0.001)
        return fail(msg, msglen, "%s is less than 1 ms, the smallest time tollgate keeps", q);
    *out = x;
    return 0;
}

/* ---- public address parser ---- */

int cfg_parse_addr(const char *s, struct cfg_addr *out)
{
    size_t n, hn;
    const char *host, *colon;
    int port;
    struct in_addr a4;

    if (!s || !out)
        return -1;
    n = strlen(s);
    if (n == 0)
        return -1;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return -1;
        host = s + 1;
        hn = (size_t)(rb - host);
        if (!valid_ipv6(host, hn))
            return -1;
        colon = rb + 1;
    } else {
        colon = strchr(s, ':');
        if (!colon || strchr(colon + 1, ':'))
            return -1;   /* no port, or an IPv6 address without brackets */
        host = s;
        hn = (size_t)(colon - s);
        if (hn == 0 || hn >= sizeof(out->host))
            return -1;
        char tmp[sizeof(out->host)];
        memcpy(tmp, host, hn);
        tmp[hn] = '\0';
        if (inet_pton(AF_INET, tmp, &a4) != 1)
            return -1;
    }
    port = parse_port(colon + 1, strlen(colon + 1));
    if (port < 0 || hn >= sizeof(out->host))
        return -1;
    memcpy(out->host, host, hn);
    out->host[hn] = '\0';
    out->port = port;
    out->line = 0;
    return 0;
}

/* ---- setting one key ---- */

static int set_string(char **slot, const char *v, char *msg, size_t msglen)
{
    char *d = strdup(v);
    if (!d)
        return fail(msg, msglen, "out of memory");
    free(*slot);
    *slot = d;
    return 0;
}

static int printable_token(const char *v)
{
    for (; *v; v++)
        if ((unsigned char)*v <= 0x20 || *v == 0x7f)
            return 0;
    return 1;
}

static int no_controls(const char *v)
{
    for (; *v; v++)
        if ((unsigned char)*v < 0x20 || *v == 0x7f)
            return 0;
    return 1;
}

/* ---- listener addresses, compared as numbers ---- */

/* An address's family (AF_INET, AF_INET6; 0 if not numeric) and bytes. */
struct net_addr {
    int family;
    unsigned char b[16];
};

static struct net_addr net_addr_of(const struct cfg_addr *a)
{
    struct net_addr n;
    memset(&n, 0, sizeof(n));
    if (inet_pton(AF_INET, a->host, n.b) == 1)
        n.family = AF_INET;
    else if (inet_pton(AF_INET6, a->host, n.b) == 1)
        n.family = AF_INET6;
    return n;
}

static int net_addr_len(const struct net_addr *n)
{
    return n->family == AF_INET ? 4 : 16;
}

/* 0.0.0.0 or [::] */
static int net_addr_wildcard(const struct net_addr *n)
{
    static const unsigned char zero[16];
    return n->family != 0 && memcmp(n->b, zero, (size_t)net_addr_len(n)) == 0;
}

#define ADDR_SAME 2
#define ADDR_COVERED 1

/*
 * Whether two listener addresses would clash: ADDR_SAME for one address
 * ([::1] and [0::1] are one), ADDR_COVERED when one is the wildcard of the
 * other's family on the same port (0.0.0.0:P takes every IPv4 address on
 * P), 0 otherwise.  Families never overlap: proxy/server.c sets
 * IPV6_V6ONLY on IPv6 sockets, so [::]:P leaves 0.0.0.0:P free.
 */
static int addr_overlap(const struct cfg_addr *a, const struct cfg_addr *b)
{
    struct net_addr x = net_addr_of(a), y = net_addr_of(b);
    if (a->port != b->port || x.family == 0 || x.family != y.family)
        return 0;
    if (memcmp(x.b, y.b, (size_t)net_addr_len(&x)) == 0)
        return ADDR_SAME;
    return net_addr_wildcard(&x) || net_addr_wildcard(&y) ? ADDR_COVERED : 0;
}

/* "127.0.0.1:80" or "[::1]:80" */
static void addr_text(const struct cfg_addr *a, char *buf, size_t len)
{
    int v6 = strchr(a->host, ':') != NULL;
    snprintf(buf, len, "%s%s%s:%d", v6 ? "[" : "", a->host, v6 ? "]" : "", a->port);
}

/*
 * Refuses what start-up could not bind: an IPv4-mapped IPv6 address
 * ([::ffff:127.0.0.1]), which an IPV6_V6ONLY socket cannot take (EINVAL).
 * 0 / -1 with msg.
 */
static int check_bindable(const struct cfg_addr *a, const char *q, char *msg, size_t msglen)
{
    struct net_addr n = net_addr_of(a);
    if (n.family == AF_INET6 && IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)n.b)) {
        char v4[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, n.b + 12, v4, sizeof(v4));
        return fail(msg, msglen, "%s: IPv6 listeners are IPv6-only, so an IPv4-mapped address "
                    "cannot be bound: write %s:%d", q, v4, a->port);
    }
    return 0;
}

static int add_listen(struct tg_config *cfg, const struct key_def *k, const char *v, int replace,
                      char *msg, size_t msglen)
{
    struct cfg_addr **arr = member(cfg, k->off), a, *na;
    size_t *cnt = member(cfg, k->off_n), i;
    char q[128], other[96];

    quote(q, sizeof(q), v);
    if (strcmp(v, "off") == 0) {   /* empties the list, e.g. TLS-only: listen off */
        *cnt = 0;
        return 0;
    }
    if (cfg_parse_addr(v, &a) < 0)
        return fail(msg, msglen, "bad address %s: expected IPv4:PORT, [IPv6]:PORT or off, port 1..65535", q);
    if (check_bindable(&a, q, msg, msglen) < 0)
        return -1;
    if (replace)
        *cnt = 0;
    for (i = 0; i < *cnt; i++) {
        int ov = addr_overlap(&(*arr)[i], &a);
        addr_text(&(*arr)[i], other, sizeof(other));
        if (ov == ADDR_SAME && strcmp((*arr)[i].host, a.host) == 0)
            return fail(msg, msglen, "%s given twice", q);
        if (ov == ADDR_SAME)
            return fail(msg, msglen, "%s given twice (as %s)", q, other);
        if (ov == ADDR_COVERED)
            return fail(msg, msglen, "%s overlaps %s (a wildcard address takes every address of its "
                        "family on its port)", q, other);
    }
    if (*cnt >= CFG_MAX_LISTEN)
        return fail(msg, msglen, "too many addresses (max %d)", CFG_MAX_LISTEN);
    na = realloc(*arr, (*cnt + 1) * sizeof(*na));
    if (!na)
        return fail(msg, msglen, "out of memory");
    na[*cnt] = a;
    *arr = na;
    (*cnt)++;
    return 0;
}

static void free_routes(struct tg_config *cfg)
{
    size_t i;
    for (i = 0; i < cfg->n_routes; i++) {
        free(cfg->routes[i].host);
        free(cfg->routes[i].backends);
    }
    free(cfg->routes);
    cfg->routes = NULL;
    cfg->n_routes = 0;
}

static int add_route(struct tg_config *cfg, const char *v, int replace, char *msg, size_t msglen)
{
    const char *eq = strchr(v, '=');
    struct cfg_route *nr;
    char *host, *backends;
    size_t i;

    if (!eq || eq == v || eq[1] == '\0')
        return fail(msg, msglen, "expected HOST=BACKEND[,BACKEND...]");
    host = strndup(v, (size_t)(eq - v));
    if (!host)
        return fail(msg, msglen, "out of memory");
    if (normalise_route_host(host, msg, msglen) < 0 || check_backends(eq + 1, msg, msglen) < 0) {
        free(host);
        return -1;
    }
    if (replace)
        free_routes(cfg);
    for (i = 0; i < cfg->n_routes; i++) {
        if (strcmp(cfg->routes[i].host, host) == 0) {
            char q[128];
            quote(q, sizeof(q), host);
            free(host);
            return fail(msg, msglen, "duplicate route for %s", q);
        }
    }
    if (cfg->n_routes >= CFG_MAX_ROUTES) {
        free(host);
        return fail(msg, msglen, "too many static routes (max %d)", CFG_MAX_ROUTES);
    }
    backends = strdup(eq + 1);
    nr = backends ? realloc(cfg->routes, (cfg->n_routes + 1) * sizeof(*nr)) : NULL;
    if (!nr) {
        free(host);
        free(backends);
        return fail(msg, msglen, "out of memory");
    }
    cfg->routes = nr;
    nr[cfg->n_routes].host = host;
    nr[cfg->n_routes].backends = backends;
    nr[cfg->n_routes].line = 0;
    cfg->n_routes++;
    return 0;
}

/*
 * Applies value v of key k to cfg.  *replaced is the per-source bitmask of
 * repeatable keys already seen in this source.  0 / -1 with msg (without the
 * key name or location; the caller adds them).
 */
static int apply_key(struct tg_config *cfg, size_t ki, const char *v, uint64_t *replaced,
                     char *msg, size_t msglen)
{
    const struct key_def *k = &keys[ki];
    char q[128];
    int replace = !(*replaced & (1ull << ki));
    int rc;

    quote(q, sizeof(q), v);
    if (k->metavar && v[0] == '\0')
        return fail(msg, msglen, "missing value");
    switch (k->type) {
    case K_CONFIG:
        return set_string(member(cfg, k->off), v, msg, msglen);
    case K_CHECK:
        cfg->check_only = 1;
        return 0;
    case K_HELP:
    case K_VERSION:
        return 0;
    case K_LISTEN:
        rc = add_listen(cfg, k, v, replace, msg, msglen);
        if (rc == 0)
            *replaced |= 1ull << ki;
        return rc;
    case K_ROUTE:
        rc = add_route(cfg, v, replace, msg, msglen);
        if (rc == 0)
            *replaced |= 1ull << ki;
        return rc;
    case K_ADMIN: {
        struct cfg_addr a;
        if (strcmp(v, "off") == 0) {
            memset(&cfg->admin_listen, 0, sizeof(cfg->admin_listen));
            return 0;
        }
        if (cfg_parse_addr(v, &a) < 0)
            return fail(msg, msglen,
                        "bad address %s: expected IPv4:PORT, [IPv6]:PORT or off, port 1..65535", q);
        if (check_bindable(&a, q, msg, msglen) < 0)
            return -1;
        cfg->admin_listen = a;
        return 0;
    }
    case K_REDIS:
        if (strcmp(v, "off") == 0) {
            free(cfg->redis_url);
            cfg->redis_url = NULL;
            return 0;
        }
        if (cfg_check_redis_url(v, msg, msglen) < 0)
            return -1;
        return set_string(&cfg->redis_url, v, msg, msglen);
    case K_PREFIX:
        /* The check tollgate-ctl and the key builders make, and not empty. */
        if (!*v || !schema_prefix_valid(v))
            return fail(msg, msglen, "%s: 1 to %d printable ASCII characters without spaces", q, SCHEMA_PREFIX_MAX);
        return set_string(&cfg->key_prefix, v, msg, msglen);
    case K_IDENT:
        if (!printable_token(v) || strlen(v) > 128)
            return fail(msg, msglen, "%s: up to 128 characters without spaces", q);
        return set_string(member(cfg, k->off), v, msg, msglen);
    case K_LOGFILE:
        if (!no_controls(v))
            return fail(msg, msglen, "%s: control characters in a path", q);
        if (strcmp(v, "off") == 0 && k->off == OFF(access_log)) {
            free(cfg->access_log);
            cfg->access_log = NULL;
            return 0;
        }
        /* Errors always go somewhere: "off" would be a file named off. */
        if (strcmp(v, "off") == 0)
            return fail(msg, msglen, "off is not a destination: give - (stderr) or a FILE, /dev/null to discard");
        return set_string(member(cfg, k->off), v, msg, msglen);
    case K_PATH:
        if (!no_controls(v))
            return fail(msg, msglen, "%s: control characters in a path", q);
        return set_string(member(cfg, k->off), v, msg, msglen);
    case K_INT: {
        long x = 0;
        if (parse_int_value(k, v, &x, msg, msglen) < 0)
            return -1;
        *(int *)member(cfg, k->off) = (int)x;
        return 0;
    }
    case K_COUNT: {
        long x = 0;
        if (parse_int_value(k, v, &x, msg, msglen) < 0)
            return -1;
        *(size_t *)member(cfg, k->off) = (size_t)x;
        return 0;
    }
    case K_SIZE:
        return parse_size_value(k, v, member(cfg, k->off), msg, msglen);
    case K_SECONDS:
        return parse_seconds_value(k, v, member(cfg, k->off), msg, msglen);
    case K_LOGLEVEL: {
        int lv = log_level_parse(v);
        if (lv < 0)
            return fail(msg, msglen, "%s: expected err, warn, notice, info or debug", q);
        cfg->log_level = lv;
        return 0;
    }
    }
    return fail(msg, msglen, "internal error: unhandled key type");
}

/*
 * Records that keys[ki] was just set at line (a file line or
 * CFG_ORIGIN_CLI), and so was the entry it added: the last route or listener
 * address, the admin address.
 */
static void set_origin(struct tg_config *cfg, size_t ki, unsigned line)
{
    const struct key_def *k = &keys[ki];
    cfg->origin_line[ki] = line;
    if (k->type == K_ROUTE && cfg->n_routes > 0) {
        cfg->routes[cfg->n_routes - 1].line = line;
    } else if (k->type == K_LISTEN) {
        struct cfg_addr *arr = *(struct cfg_addr **)member(cfg, k->off);
        size_t n = *(size_t *)member(cfg, k->off_n);
        if (n > 0)   /* 0 after "off" */
            arr[n - 1].line = line;
    } else if (k->type == K_ADMIN && cfg->admin_listen.port != 0) {
        cfg->admin_listen.line = line;
    }
}

static int file_only_forbidden(const struct key_def *k)
{
    return k->type == K_CONFIG || k->type == K_CHECK || k->type == K_HELP || k->type == K_VERSION;
}

/* ---- public API ---- */

static int default_workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > 1024 ? 1024 : (int)n;
}

void cfg_defaults(struct tg_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen = calloc(1, sizeof(*cfg->listen));
    if (!cfg->listen)
        abort();   /* start-up only: nothing sensible to do without 64 bytes */
    strcpy(cfg->listen[0].host, "0.0.0.0");
    cfg->listen[0].port = 8080;
    cfg->n_listen = 1;
    strcpy(cfg->admin_listen.host, "127.0.0.1");
    cfg->admin_listen.port = 9180;
    cfg->key_prefix = strdup("tg:");
    if (!cfg->key_prefix)
        abort();
    cfg->workers = default_workers();
    cfg->log_level = LOG_INFO;
    /* Numeric defaults are the ones --help shows: parsed from the key table. */
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const struct key_def *k = &keys[i];
        uint64_t replaced = 0;
        char msg[256];
        if ((k->type == K_INT || k->type == K_COUNT || k->type == K_SIZE || k->type == K_SECONDS) && k->defval &&
            apply_key(cfg, i, k->defval, &replaced, msg, sizeof(msg)) < 0)
            abort();   /* a default outside its own key's range: a bug in the table */
    }
}

void cfg_free(struct tg_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->config_path);
    free(cfg->listen);
    free(cfg->tls_listen);
    free(cfg->redis_url);
    free(cfg->key_prefix);
    free_routes(cfg);
    free(cfg->access_log);
    free(cfg->error_log);
    free(cfg->cap_page);
    free(cfg->instance_id);
    free(cfg->origin_file);
    memset(cfg, 0, sizeof(*cfg));
}

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

int cfg_parse_text(struct tg_config *cfg, const char *name, const char *text, size_t len,
                   char *err, size_t errlen)
{
    char *buf, *line, *next, msg[CFG_ERRLEN];
    unsigned lineno = 0;
    uint64_t replaced = 0;
    int rc = 0;

    if (!name)
        name = "config";
    buf = malloc(len + 1);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory", name);
        return -1;
    }
    memcpy(buf, text, len);
    buf[len] = '\0';

    for (line = buf; line && line < buf + len; line = next) {
        char *end = memchr(line, '\n', (size_t)(buf + len - line));
        char *key, *val, *p;
        size_t klen, ki;

        lineno++;
        if (end) {
            *end = '\0';
            next = end + 1;
        } else {
            end = buf + len;
            next = NULL;
        }
        if (memchr(line, '\0', (size_t)(end - line))) {
            snprintf(err, errlen, "%s:%u: NUL byte in line", name, lineno);
            rc = -1;
            break;
        }
        if (end > line && end[-1] == '\r')
            *--end = '\0';
        while (is_space(*line))
            line++;
        if (*line == '\0' || *line == '#')
            continue;
        key = line;
        for (p = line; *p && !is_space(*p); p++)
            ;
        klen = (size_t)(p - key);
        while (is_space(*p))
            *p++ = '\0';
        val = p;
        /* A comment starts at '#' preceded by a space or tab. */
        for (; *p; p++)
            if (*p == '#' && (p == val || is_space(p[-1]))) {
                *p = '\0';
                break;
            }
        for (p = val + strlen(val); p > val && is_space(p[-1]); p--)
            p[-1] = '\0';
        key[klen] = '\0';

        for (ki = 0; ki < N_KEYS; ki++)
            if (strcmp(keys[ki].name, key) == 0)
                break;
        if (ki == N_KEYS || file_only_forbidden(&keys[ki])) {
            char q[128];
            quote(q, sizeof(q), key);
            if (ki == N_KEYS)
                snprintf(err, errlen, "%s:%u: unknown key %s%s", name, lineno, q,
                         lineno == 1 && key == buf && strncmp(key, "\xef\xbb\xbf", 3) == 0
                             ? " (the file starts with a UTF-8 byte order mark: save it without one)" : "");
            else
                snprintf(err, errlen, "%s:%u: %s: only valid on the command line", name, lineno, key);
            rc = -1;
            break;
        }
        if (apply_key(cfg, ki, val, &replaced, msg, sizeof(msg)) < 0) {
            snprintf(err, errlen, "%s:%u: %s: %s", name, lineno, keys[ki].name, msg);
            rc = -1;
            break;
        }
        if (!cfg->origin_file || strcmp(cfg->origin_file, name) != 0) {
            char *n = strdup(name);
            if (!n) {
                snprintf(err, errlen, "%s: out of memory", name);
                rc = -1;
                break;
            }
            free(cfg->origin_file);
            cfg->origin_file = n;
        }
        set_origin(cfg, ki, lineno);
    }
    free(buf);
    return rc;
}

/* Reads path whole into a malloc'd buffer. 0 / -1 with err. */
static int read_file(const char *path, char **out, size_t *outlen, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    struct stat st;

    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: is a directory", path);
        fclose(f);
        return -1;
    }
    for (;;) {
        size_t n;
        if (len == cap) {
            char *nb;
            if (cap >= CFG_MAX_FILE) {
                if (fgetc(f) == EOF && !ferror(f))
                    break;          /* exactly the limit */
                snprintf(err, errlen, "%s: larger than %u bytes", path, CFG_MAX_FILE);
                goto fail;
            }
            cap = cap ? cap * 2 : 8192;
            nb = realloc(buf, cap);
            if (!nb) {
                snprintf(err, errlen, "%s: out of memory", path);
                goto fail;
            }
            buf = nb;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                snprintf(err, errlen, "%s: read error: %s", path, strerror(errno));
                goto fail;
            }
            break;
        }
    }
    fclose(f);
    *out = buf;
    *outlen = len;
    return 0;
fail:
    fclose(f);
    free(buf);
    return -1;
}

static void print_usage(FILE *f, const char *prog)
{
    size_t i;
    fprintf(f, "Usage: %s [options]\n"
               "tollgate %s: an edge router for custom domains.\n"
               "Every long option is also a config-file key: `listen 127.0.0.1:8080`.\n\n",
            prog, PACKAGE_VERSION);
    for (i = 0; i < N_KEYS; i++) {
        const struct key_def *k = &keys[i];
        char left[64], def[64];
        const char *shortopt = k->type == K_CONFIG ? "-c, " : k->type == K_CHECK ? "-t, " : "    ";
        snprintf(left, sizeof(left), "%s--%s%s%s", shortopt, k->name, k->metavar ? " " : "",
                 k->metavar ? k->metavar : "");
        if (k->type == K_INT && k->off == OFF(workers))
            snprintf(def, sizeof(def), "number of cores (%d)", default_workers());
        else
            snprintf(def, sizeof(def), "%s", k->defval ? k->defval : "");
        fprintf(f, "  %-40s %s", left, k->help);
        if (def[0])
            fprintf(f, " [default: %s]", def);
        fputc('\n', f);
    }
}

int cfg_from_args(struct tg_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    struct option opts[N_KEYS + 1];
    struct { size_t ki; const char *val; } *pairs = NULL;
    char **av = NULL, msg[CFG_ERRLEN];
    size_t npairs = 0, i;
    uint64_t replaced = 0;
    int rc = -1, c;
    const char *prog = argc > 0 && argv[0] ? argv[0] : "tollgate";

    if (err && errlen)
        err[0] = '\0';
    for (i = 0; i < N_KEYS; i++) {
        opts[i].name = keys[i].name;
        opts[i].has_arg = keys[i].metavar ? required_argument : no_argument;
        opts[i].flag = NULL;
        opts[i].val = OPT_BASE + (int)i;
    }
    memset(&opts[N_KEYS], 0, sizeof(opts[N_KEYS]));

    /* getopt_long permutes its argv: work on a copy so the caller's stays intact. */
    av = calloc((size_t)(argc > 0 ? argc : 0) + 1, sizeof(*av));
    pairs = calloc((size_t)(argc > 0 ? argc : 0) + 1, sizeof(*pairs));
    if (!av || !pairs) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (c = 0; c < argc; c++)
        av[c] = argv[c];

    optind = 0;   /* glibc: full re-initialisation, so reload can parse again */
    opterr = 0;
    while ((c = getopt_long(argc, av, ":c:t", opts, NULL)) != -1) {
        size_t ki;
        if (c == 'c' || c == 't') {
            for (ki = 0; ki < N_KEYS; ki++)
                if (keys[ki].type == (c == 'c' ? K_CONFIG : K_CHECK))
                    break;
        } else if (c == ':') {
            if (optopt >= OPT_BASE && optopt < OPT_BASE + (int)N_KEYS)
                snprintf(err, errlen, "--%s: missing value", keys[optopt - OPT_BASE].name);
            else
                snprintf(err, errlen, "-%c: missing value", optopt);
            goto out;
        } else if (c == '?') {
            char q[128];
            if (optopt >= OPT_BASE && optopt < OPT_BASE + (int)N_KEYS) {
                snprintf(err, errlen, "--%s: takes no value", keys[optopt - OPT_BASE].name);
            } else if (optopt > 0 && optopt < 256) {
                snprintf(err, errlen, "unknown option -%c (see --help)", optopt);
            } else {
                quote(q, sizeof(q), optind > 0 && optind <= argc && av[optind - 1] ? av[optind - 1] : "?");
                snprintf(err, errlen, "unknown or ambiguous option %s (see --help)", q);
            }
            goto out;
        } else if (c >= OPT_BASE && c < OPT_BASE + (int)N_KEYS) {
            ki = (size_t)(c - OPT_BASE);
        } else {
            snprintf(err, errlen, "internal error: getopt returned %d", c);
            goto out;
        }
        if (keys[ki].type == K_HELP) {
            print_usage(stdout, prog);
            rc = 1;
            goto out;
        }
        if (keys[ki].type == K_VERSION) {
            printf("tollgate %s\n", PACKAGE_VERSION);
            rc = 1;
            goto out;
        }
        pairs[npairs].ki = ki;
        pairs[npairs].val = optarg ? optarg : "";
        npairs++;
    }
    if (optind < argc) {
        char q[128];
        quote(q, sizeof(q), av[optind]);
        snprintf(err, errlen, "unexpected argument %s (see --help)", q);
        goto out;
    }

    /* -c and -t first: the file is read before the other flags are applied. */
    for (i = 0; i < npairs; i++) {
        const struct key_def *k = &keys[pairs[i].ki];
        if ((k->type == K_CONFIG || k->type == K_CHECK) &&
            apply_key(cfg, pairs[i].ki, pairs[i].val, &replaced, msg, sizeof(msg)) < 0) {
            snprintf(err, errlen, "--%s: %s", k->name, msg);
            goto out;
        }
    }
    if (cfg->config_path) {
        char *text;
        size_t len;
        if (read_file(cfg->config_path, &text, &len, err, errlen) < 0)
            goto out;
        int prc = cfg_parse_text(cfg, cfg->config_path, text, len, err, errlen);
        free(text);
        if (prc < 0)
            goto out;
    }
    for (i = 0; i < npairs; i++) {
        const struct key_def *k = &keys[pairs[i].ki];
        if (k->type == K_CONFIG || k->type == K_CHECK)
            continue;
        if (apply_key(cfg, pairs[i].ki, pairs[i].val, &replaced, msg, sizeof(msg)) < 0) {
            snprintf(err, errlen, "--%s: %s", k->name, msg);
            goto out;
        }
        set_origin(cfg, pairs[i].ki, CFG_ORIGIN_CLI);
    }
    rc = cfg_validate(cfg, err, errlen);
out:
    free(av);
    free(pairs);
    return rc;
}

/* ---- where a key was set ---- */

static size_t key_index(const char *name)
{
    size_t ki;
    for (ki = 0; name && ki < N_KEYS; ki++)
        if (strcmp(keys[ki].name, name) == 0)
            break;
    return ki;
}

/*
 * Writes where keys[ki] was last set: "FILE:LINE" (plus ": key" when
 * with_key), "--key", or the key name (with_key) / "" for a default.
 * Returns 1 (file), 2 (command line) or 0 (default).
 */
static int origin_of(const struct tg_config *cfg, size_t ki, int with_key, char *buf, size_t len)
{
    unsigned line = cfg->origin_line[ki];
    if (line == CFG_ORIGIN_CLI) {
        snprintf(buf, len, "--%s", keys[ki].name);
        return 2;
    }
    if (line > 0 && cfg->origin_file) {
        snprintf(buf, len, "%s:%u%s%s", cfg->origin_file, line, with_key ? ": " : "",
                 with_key ? keys[ki].name : "");
        return 1;
    }
    snprintf(buf, len, "%s", with_key ? keys[ki].name : "");
    return 0;
}

int cfg_key_origin(const struct tg_config *cfg, const char *key, char *buf, size_t len)
{
    size_t ki = key_index(key);
    if (ki == N_KEYS) {
        snprintf(buf, len, "%s", key ? key : "");
        return 0;
    }
    return origin_of(cfg, ki, 1, buf, len);
}

/* origin_of() for an entry of a repeatable key set at line. */
static int line_origin(const struct tg_config *cfg, unsigned line, const char *key, char *buf, size_t len)
{
    if (line == CFG_ORIGIN_CLI) {
        snprintf(buf, len, "--%s", key);
        return 2;
    }
    if (line > 0 && cfg->origin_file) {
        snprintf(buf, len, "%s:%u: %s", cfg->origin_file, line, key);
        return 1;
    }
    snprintf(buf, len, "%s", key);
    return 0;
}

int cfg_route_origin(const struct tg_config *cfg, size_t i, char *buf, size_t len)
{
    return line_origin(cfg, i < cfg->n_routes ? cfg->routes[i].line : 0, "route", buf, len);
}

int cfg_addr_origin(const struct tg_config *cfg, const char *key, const struct cfg_addr *a, char *buf, size_t len)
{
    return line_origin(cfg, a->line, key, buf, len);
}

/* Of two keys, the one set last: a flag after any file line, a later line after an earlier one. */
static size_t later_key(const struct tg_config *cfg, const char *a, const char *b)
{
    size_t ka = key_index(a), kb = key_index(b);
    return cfg->origin_line[kb] > cfg->origin_line[ka] ? kb : ka;
}

/*
 * err = "ORIGIN: message", ORIGIN as origin_of() writes it: with the key's
 * name (with_key), or "FILE:LINE", "--key" or nothing for a message that
 * names its keys itself.  Returns -1.
 */
static int fail_at(const struct tg_config *cfg, size_t ki, int with_key, char *err, size_t errlen,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int fail_at(const struct tg_config *cfg, size_t ki, int with_key, char *err, size_t errlen,
                   const char *fmt, ...)
{
    char where[CFG_ERRLEN / 2], msg[CFG_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    origin_of(cfg, ki, with_key, where, sizeof(where));
    snprintf(err, errlen, "%s%s%s", where, where[0] ? ": " : "", msg);
    return -1;
}

/*
 * Refuses two addresses of different keys (ka's a, kb's b) that clash
 * (addr_overlap), naming the one set later ("FILE:LINE: ", "--key: ", or
 * nothing when both are defaults).  0, or -1 with err "ORIGIN: ka A
 * overlaps kb B" (or the older wording when both are written alike).
 */
static int check_overlap(const struct tg_config *cfg, const char *ka, const struct cfg_addr *a,
                         const char *kb, const struct cfg_addr *b, char *err, size_t errlen)
{
    char at[CFG_ERRLEN / 2], as[96], bs[96];
    int ov = addr_overlap(a, b);
    /* the later of the two; a tie (both flags) names ka, the message's subject */
    const char *later_key_name = b->line > a->line ? kb : ka;
    unsigned line = b->line > a->line ? b->line : a->line;

    if (!ov)
        return 0;
    if (line == CFG_ORIGIN_CLI)
        snprintf(at, sizeof(at), "--%s: ", later_key_name);
    else if (line > 0 && cfg->origin_file)
        snprintf(at, sizeof(at), "%s:%u: ", cfg->origin_file, line);
    else
        at[0] = '\0';
    addr_text(a, as, sizeof(as));
    addr_text(b, bs, sizeof(bs));
    if (ov == ADDR_SAME && strcmp(a->host, b->host) == 0) {
        if (strcmp(ka, "admin-listen") == 0)
            snprintf(err, errlen, "%sadmin-listen %s is also a proxy listener", at, as);
        else
            snprintf(err, errlen, "%s%s is both a %s and a %s address", at, as, ka, kb);
    } else {
        snprintf(err, errlen, "%s%s %s overlaps %s %s", at, ka, as, kb, bs);
    }
    return -1;
}

int cfg_validate(const struct tg_config *cfg, char *err, size_t errlen)
{
    char msg[CFG_ERRLEN];
    size_t i, j;

    /* listen's default is one address: an empty list is a `listen off`. */
    if (cfg->n_listen == 0 && cfg->n_tls_listen == 0)
        return fail_at(cfg, key_index("listen"), 0, err, errlen,
                       "listen off leaves no listener: give at least one listen or tls-listen address");
    /* Within one list add_listen() refused clashes, line by line. */
    for (i = 0; i < cfg->n_listen; i++)
        for (j = 0; j < cfg->n_tls_listen; j++)
            if (check_overlap(cfg, "listen", &cfg->listen[i], "tls-listen", &cfg->tls_listen[j], err, errlen) < 0)
                return -1;
    if (cfg->admin_listen.port != 0) {
        for (i = 0; i < cfg->n_listen; i++)
            if (check_overlap(cfg, "admin-listen", &cfg->admin_listen, "listen", &cfg->listen[i], err, errlen) < 0)
                return -1;
        for (i = 0; i < cfg->n_tls_listen; i++)
            if (check_overlap(cfg, "admin-listen", &cfg->admin_listen, "tls-listen", &cfg->tls_listen[i],
                              err, errlen) < 0)
                return -1;
    }
    /* tls-listen is in the contract and parsed, but the TLS layer (tls/,
     * its own issue) is not built yet: refuse it here, where -t, start-up
     * and reload all look, rather than silently not listen. */
    if (cfg->n_tls_listen > 0)
        return fail_at(cfg, key_index("tls-listen"), 1, err, errlen,
                       "TLS termination is not available in this version");
    if (cfg->workers < 1 || cfg->workers > 1024) {
        snprintf(err, errlen, "workers: %d out of range 1..1024", cfg->workers);
        return -1;
    }
    if (cfg->cap_status < 400 || cfg->cap_status > 599) {
        snprintf(err, errlen, "cap-status: %d out of range 400..599", cfg->cap_status);
        return -1;
    }
    if (!cfg->key_prefix) {
        snprintf(err, errlen, "key-prefix: missing");
        return -1;
    }
    if (cfg->redis_url && cfg_check_redis_url(cfg->redis_url, msg, sizeof(msg)) < 0)
        return fail_at(cfg, key_index("redis"), 1, err, errlen, "%s", msg);
    for (i = 0; i < cfg->n_routes; i++) {
        const struct cfg_route *r = &cfg->routes[i];
        if (!r->host || !r->backends || check_backends(r->backends, msg, sizeof(msg)) < 0) {
            snprintf(err, errlen, "route %s: %s", r->host ? r->host : "?",
                     r->backends ? msg : "no backends");
            return -1;
        }
        for (j = 0; j < i; j++)
            if (strcmp(cfg->routes[j].host, r->host) == 0) {
                snprintf(err, errlen, "duplicate route for %s", r->host);
                return -1;
            }
    }
    if (cfg->client_header_timeout <= 0 || cfg->keepalive_timeout <= 0 ||
        cfg->upstream_connect_timeout <= 0 || cfg->upstream_read_timeout <= 0 ||
        cfg->client_body_timeout <= 0 || cfg->redis_timeout <= 0 ||
        cfg->meter_flush_interval <= 0 || cfg->route_cache_ttl <= 0 || cfg->drain_timeout < 0 ||
        cfg->route_negative_ttl < 0 || cfg->route_stale_max_age < 0 || cfg->backend_cooldown < 0) {
        snprintf(err, errlen, "a timeout is out of range");
        return -1;
    }
    if (cfg->max_header_size < 1024 || cfg->buffer_size < 4096 || cfg->route_cache_size < 1) {
        snprintf(err, errlen, "a size is out of range");
        return -1;
    }
    if (cfg->max_header_size > cfg->buffer_size)
        return fail_at(cfg, later_key(cfg, "max-header-size", "buffer-size"), 0, err, errlen,
                       "max-header-size (%zu) must not exceed buffer-size (%zu)",
                       cfg->max_header_size, cfg->buffer_size);
    return 0;
}

/* ---- files the configuration names ---- */

/* Opens path as the log module will (append, create 0644, no truncation). 0 / -1 with errno. */
static int check_log_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

/* Opens path for reading and reads a byte (a directory fails here). 0 / -1 with errno. */
static int check_readable(const char *path)
{
    char c;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, &c, 1);
    int e = errno;
    close(fd);
    errno = e;
    return n < 0 ? -1 : 0;
}

int cfg_check_files(const struct tg_config *cfg, char *err, size_t errlen)
{
    char q[128];
    /* access-log: NULL is off, "-" stderr.  error-log: NULL and "-" are
     * stderr; any other value, "off" included, is a path log_open() opens. */
    if (cfg->access_log && strcmp(cfg->access_log, "-") != 0 && check_log_file(cfg->access_log) < 0) {
        int e = errno;
        quote(q, sizeof(q), cfg->access_log);
        return fail_at(cfg, key_index("access-log"), 1, err, errlen, "cannot open %s: %s", q, strerror(e));
    }
    if (cfg->error_log && strcmp(cfg->error_log, "-") != 0 && check_log_file(cfg->error_log) < 0) {
        int e = errno;
        quote(q, sizeof(q), cfg->error_log);
        return fail_at(cfg, key_index("error-log"), 1, err, errlen, "cannot open %s: %s", q, strerror(e));
    }
    if (cfg->cap_page && check_readable(cfg->cap_page) < 0) {
        int e = errno;
        quote(q, sizeof(q), cfg->cap_page);
        return fail_at(cfg, key_index("cap-page"), 1, err, errlen, "cannot read %s: %s", q, strerror(e));
    }
    return 0;
}
