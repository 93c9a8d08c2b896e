/*
 * match: the pure parsers and matchers behind Redis routing, kept apart from
 * the I/O so that unit tests and fuzz targets drive them directly.
 *
 *   - backend lists "host:port[,host:port...]"             match_backends_split()
 *   - host patterns from tg:patterns:
 *       "<pcre2-regex> <tenant> <backend-template>"        match_pattern_*()
 *   - path rules from tg:paths:<host>:
 *       "<prefix> <backends>" or "~<pcre2-regex> <backends>" match_paths_*()
 *   - the domain hash fields (tg:domain:<host>)            match_domain_*()
 *   - the tenant policy hash (tg:tenant:<tenant>)          match_tenant_field()
 *
 * Every input is data from Redis written by other teams: lengths are checked
 * everywhere, regexes are compiled once (with JIT when available) and run
 * with PCRE2 match, depth and heap limits so that a pathological pattern
 * fails a match instead of stalling a worker.  Objects here are used by one
 * thread at a time (a compiled pattern owns its match data).
 */
#ifndef TG_MATCH_H
#define TG_MATCH_H

#include <stddef.h>
#include <stdint.h>

#include "routing/host.h"
#include "routing/route.h"

/* Limits on data read from Redis; larger values are bad data. */
#define MATCH_MAX_VALUE     65536   /* any single field or list element */
#define MATCH_MAX_REGEX     4096    /* a pattern's or path rule's regex */
#define MATCH_MAX_RULES     1024    /* elements read from tg:patterns / tg:paths:<host> */
#define MATCH_MAX_TENANT    128     /* tenant id */
#define MATCH_MAX_BACKENDS  64      /* backends in one list (= BAL_MAX_BACKENDS) */
#define MATCH_MATCH_LIMIT   100000  /* pcre2_set_match_limit */
#define MATCH_DEPTH_LIMIT   1000    /* pcre2_set_depth_limit */
#define MATCH_HEAP_LIMIT_KB 1024    /* pcre2_set_heap_limit */

/* One backend address as written: name is lowercase without brackets. */
struct match_addr {
    char name[HOST_MAX + 1];
    int port;
    char text[128];            /* "host:port" as written, for logs and pool keys */
};

/*
 * Splits a backend list (len bytes) into out[0..max).  Spaces around items
 * are ignored; empty items, bad addresses, more than max items and items
 * longer than 127 bytes are errors.  Returns the count (>= 1) or -1 with err.
 */
int match_backends_split(const char *s, size_t len, struct match_addr *out, size_t max,
                         char *err, size_t errlen);

/* 1 when s (len bytes) is an acceptable tenant id: 1..128 bytes of 0x21..0x7e. */
int match_tenant_valid(const char *s, size_t len);

/*
 * A new NUL-terminated copy of the n bytes at s (embedded NULs are copied
 * too, so a separately kept length stays valid).  The caller frees it;
 * NULL when out of memory.
 */
char *match_memdup(const char *s, size_t n);

/* ---- host patterns ---- */

struct match_pattern;

/*
 * Compiles one tg:patterns element.  The regex must match the whole host
 * (it is anchored at both ends); the template may use $1..$99, ${1}, ${name}
 * and $$ for a literal dollar.  A regex that does not compile gives NULL with
 * err.  A template naming a capture the regex does not have still gives a
 * pattern, flagged bad: match_pattern_exec() then fails on the hosts it
 * matches (those hosts get ROUTE_BAD_DATA; the others are unaffected).
 * Owned by the caller: match_pattern_free().
 */
struct match_pattern *match_pattern_new(const char *line, size_t len, char *err, size_t errlen);
void match_pattern_free(struct match_pattern *p);
/* The pattern's tenant (NUL-terminated) and regex source, for logs. */
const char *match_pattern_tenant(const struct match_pattern *p);
const char *match_pattern_regex(const struct match_pattern *p);

/*
 * Matches host (normalised) against p.  On a match, writes the substituted
 * backend list to out (outcap bytes, NUL-terminated) and returns 1; returns 0
 * on no match; -1 with err on a bad template, a capture that would overflow
 * out, or a PCRE2 error (match or depth limit hit).
 */
int match_pattern_exec(struct match_pattern *p, const char *host, size_t len, char *out, size_t outcap,
                       char *err, size_t errlen);

/* ---- path rules ---- */

struct match_paths;

struct match_paths *match_paths_new(void);
void match_paths_free(struct match_paths *ps);
/*
 * Appends one tg:paths:<host> element: "<prefix> <backends>" (the prefix
 * starts with '/') or "~<regex> <backends>" (PCRE2, unanchored, matched
 * against the path without its query).  Returns the rule's index or -1 with
 * err (bad prefix, regex that does not compile, missing backends).
 */
int match_paths_add(struct match_paths *ps, const char *line, size_t len, char *err, size_t errlen);
size_t match_paths_count(const struct match_paths *ps);
/* The backend list text of rule i (not NUL-terminated), with its length. */
const char *match_paths_backends(const struct match_paths *ps, size_t i, size_t *len);
/*
 * First rule matching path (len bytes; the query after '?' is ignored),
 * normalised as nginx matches locations: %XX of unreserved characters
 * decoded, "." and ".." segments resolved, "//" merged (RFC 3986 §6.2.2).
 * Returns its index, -1 when none matches, -2 when a regex failed (limits).
 */
int match_paths_find(struct match_paths *ps, const char *path, size_t len);

/* ---- hash fields ---- */

/* Fields of a tg:domain:<host> hash, pointing into the reply (not NUL-terminated). */
struct match_domain {
    const char *tenant;   size_t tenant_len;
    const char *backends; size_t backends_len;
    int lb;               /* enum bal_lb */
    int redirect_https;
    unsigned bad_optional;/* bit 0: bad lb, bit 1: bad redirect_https (logged, defaulted) */
};

/* Resets d to "no field seen". */
void match_domain_init(struct match_domain *d);
/* Takes one field/value pair of the hash.  Returns 0, or -1 with err when a value is too large. */
int match_domain_field(struct match_domain *d, const char *f, size_t fl, const char *v, size_t vl,
                       char *err, size_t errlen);
/* Checks required fields after the last pair: 0, or -1 with err (missing or invalid tenant/backends). */
int match_domain_check(const struct match_domain *d, char *err, size_t errlen);

/*
 * Takes one field/value pair of a tg:tenant:<tenant> hash into p (which
 * starts as { -1, CAP_BLOCK, 0, 0 }).  Unknown fields are ignored.  Returns 0,
 * or -1 with err when the value is malformed (the field is then left absent).
 */
int match_tenant_field(struct tenant_policy *p, const char *f, size_t fl, const char *v, size_t vl,
                       char *err, size_t errlen);

#endif
