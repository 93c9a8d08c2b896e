/*
 * schema: the one place that knows the Redis key layout of
 * ../shared/CONTRACT.md (documented for other teams in docs/redis-schema.md).
 * The proxy (route, meter) and tollgate-ctl build every key and channel name
 * here and check every field value with the helpers here, so that no second
 * copy of a key name exists anywhere.
 *
 * Keys ("tg:" is the default prefix, --key-prefix):
 *   <p>domain:<host>           HASH  tenant, backends, lb, redirect_https
 *   <p>domain:*.<zone>         HASH  wildcard (one extra label)
 *   <p>paths:<host>            LIST  "<prefix> <backends>" | "~<regex> <backends>"
 *   <p>patterns                LIST  "<regex> <tenant> <backend-template>"
 *   <p>tenant:<tenant>         HASH  cap_bytes, cap_action, throttle_bps, suspended
 *   <p>meter:<tenant>:<YYYYMM> HASH  bytes_in, bytes_out, requests (UTC month)
 *   <p>meter:<tenant>:<YYYYMMDD>     same, UTC day
 *   <p>cert:<host>             HASH  cert, key
 *   <p>acme:<token>            STRING
 *   channel <p>events          "domain <host>", "tenant <id>", "cert <host>", "patterns"
 *
 * Conventions: key builders write a NUL-terminated key into a caller buffer
 * and return its length, or -1 when it does not fit (or an argument is
 * invalid); they never allocate.  Parsers take (pointer, length) values as
 * they come from Redis (not NUL-terminated) and return the parsed value or
 * -1; validators return 0 / -1 with a message in err.  All functions are pure
 * and thread-safe.
 */
#ifndef TG_SCHEMA_H
#define TG_SCHEMA_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define SCHEMA_PREFIX_DEFAULT "tg:"
#define SCHEMA_PREFIX_MAX     64       /* longest --key-prefix */
/* A buffer of this size holds any key built from a valid prefix and a host, tenant or token. */
#define SCHEMA_KEY_MAX        512

/* ---- hash field names ---- */
#define SCHEMA_F_TENANT         "tenant"
#define SCHEMA_F_BACKENDS       "backends"
#define SCHEMA_F_LB             "lb"
#define SCHEMA_F_REDIRECT_HTTPS "redirect_https"
#define SCHEMA_F_CAP_BYTES      "cap_bytes"
#define SCHEMA_F_CAP_ACTION     "cap_action"
#define SCHEMA_F_THROTTLE_BPS   "throttle_bps"
#define SCHEMA_F_SUSPENDED      "suspended"
#define SCHEMA_F_BYTES_IN       "bytes_in"
#define SCHEMA_F_BYTES_OUT      "bytes_out"
#define SCHEMA_F_REQUESTS       "requests"
#define SCHEMA_F_CERT           "cert"
#define SCHEMA_F_KEY            "key"

/* ---- field values ---- */
#define SCHEMA_LB_ROUND_ROBIN   "round_robin"
#define SCHEMA_LB_LEAST_CONN    "least_conn"
#define SCHEMA_CAP_BLOCK        "block"
#define SCHEMA_CAP_THROTTLE     "throttle"

/* ---- key families (the part after the prefix) ---- */
#define SCHEMA_K_DOMAIN   "domain:"
#define SCHEMA_K_PATHS    "paths:"
#define SCHEMA_K_PATTERNS "patterns"
#define SCHEMA_K_TENANT   "tenant:"
#define SCHEMA_K_METER    "meter:"
#define SCHEMA_K_CERT     "cert:"
#define SCHEMA_K_ACME     "acme:"
#define SCHEMA_K_EVENTS   "events"
#define SCHEMA_K_APPLIED  "meter:applied"  /* HASH run id -> last applied flush seq (meter) */
#define SCHEMA_K_LEASE    "lease:"         /* HASH run id -> "<held bytes>:<expiry ms>" (meter) */

/* Limits on values (larger is bad data). */
#define SCHEMA_TENANT_MAX   128        /* tenant id bytes */
#define SCHEMA_BACKENDS_MAX 64         /* addresses in one backends list */
#define SCHEMA_ADDR_MAX     127        /* bytes of one "host:port" */
#define SCHEMA_VALUE_MAX    65536      /* any field or list element */

/* 1 when prefix is usable: 0..SCHEMA_PREFIX_MAX bytes of 0x21..0x7e. */
int schema_prefix_valid(const char *prefix);

/* ---- keys ---- */

/* <p>domain:<host>; host is normalised (routing/host.h), or "*.<zone>" for a wildcard key. */
int schema_key_domain(char *buf, size_t cap, const char *prefix, const char *host, size_t host_len);
/* <p>domain:*.<zone> for the zone of a host (routing/host.h host_zone()). */
int schema_key_wildcard(char *buf, size_t cap, const char *prefix, const char *zone, size_t zone_len);
/* <p>paths:<host>; host is the domain key that matched: the exact host or "*.<zone>". */
int schema_key_paths(char *buf, size_t cap, const char *prefix, const char *host, size_t host_len);
/* <p>patterns */
int schema_key_patterns(char *buf, size_t cap, const char *prefix);
/* <p>tenant:<tenant> */
int schema_key_tenant(char *buf, size_t cap, const char *prefix, const char *tenant, size_t tenant_len);
/* <p>meter:<tenant>:<period>; period is YYYYMM or YYYYMMDD (checked with schema_period_valid). */
int schema_key_meter(char *buf, size_t cap, const char *prefix, const char *tenant, size_t tenant_len,
                     const char *period);
/* <p>meter:applied: the meter's idempotence record (docs/metering.md). */
int schema_key_meter_applied(char *buf, size_t cap, const char *prefix);
/* <p>lease:<tenant>:<YYYYMM>: budget slices held by each instance (docs/metering.md). */
int schema_key_lease(char *buf, size_t cap, const char *prefix, const char *tenant, size_t tenant_len,
                     const char *month);
/* <p>meter:<tenant>:<YYYYMM> / <YYYYMMDD> of the UTC month / day containing t. */
int schema_key_meter_month(char *buf, size_t cap, const char *prefix, const char *tenant, size_t tenant_len,
                           time_t t);
int schema_key_meter_day(char *buf, size_t cap, const char *prefix, const char *tenant, size_t tenant_len,
                         time_t t);
/* <p>cert:<host> (host may be "*.<zone>") */
int schema_key_cert(char *buf, size_t cap, const char *prefix, const char *host, size_t host_len);
/* <p>acme:<token>; token is base64url (RFC 8555 §8.3), 1..256 bytes. */
int schema_key_acme(char *buf, size_t cap, const char *prefix, const char *token, size_t token_len);
/* The events channel: <p>events */
int schema_channel_events(char *buf, size_t cap, const char *prefix);

/*
 * A key family prefix, e.g. family SCHEMA_K_DOMAIN -> "tg:domain:", for
 * CLIENT TRACKING BCAST PREFIX.  With glob = 1 the prefix is escaped for a
 * SCAN MATCH / PSUBSCRIBE pattern and "*" is appended ("tg:domain:*").
 */
int schema_key_family(char *buf, size_t cap, const char *prefix, const char *family, int glob);

/*
 * Recognises a key built from prefix: returns the family (one of the
 * SCHEMA_K_* strings: compare with strcmp) and sets *rest / *rest_len to the part
 * after it ("example.com" for "tg:domain:example.com"); NULL when the key is
 * not one of ours.  Used for invalidation messages.
 */
const char *schema_key_split(const char *prefix, const char *key, size_t key_len, const char **rest,
                             size_t *rest_len);

/* UTC periods of t: out gets "YYYYMM" (7 bytes) / "YYYYMMDD" (9 bytes). 0 / -1. */
int schema_period_month(time_t t, char out[7]);
int schema_period_day(time_t t, char out[9]);
/* 1 when s is YYYYMM or YYYYMMDD with a real month (and day). */
int schema_period_valid(const char *s);

/* ---- events channel messages ---- */

enum schema_event { SCHEMA_EV_DOMAIN = 1, SCHEMA_EV_TENANT, SCHEMA_EV_CERT, SCHEMA_EV_PATTERNS };

/* Formats a hint: "domain <host>", "tenant <id>", "cert <host>", "patterns" (name ignored). */
int schema_event_format(char *buf, size_t cap, enum schema_event ev, const char *name, size_t name_len);
/* Parses a hint; *name points into msg (length *name_len, 0 for patterns). Returns the event or -1. */
int schema_event_parse(const char *msg, size_t len, const char **name, size_t *name_len);

/* ---- field values ---- */

/* 1 when s is a valid tenant id: 1..SCHEMA_TENANT_MAX bytes of 0x21..0x7e. */
int schema_tenant_valid(const char *s, size_t len);

/* Checks one backend address "host:port" / "[v6]:port". 0 / -1 with err. */
int schema_addr_check(const char *s, size_t len, char *err, size_t errlen);
/*
 * Checks a backends list "host:port[,host:port...]" (spaces around items
 * allowed): returns the number of addresses (1..SCHEMA_BACKENDS_MAX) or -1 with err.
 */
int schema_backends_check(const char *s, size_t len, char *err, size_t errlen);

/* "round_robin" -> 0, "least_conn" -> 1 (= enum bal_lb), else -1. */
int schema_lb_parse(const char *s, size_t len);
const char *schema_lb_name(int lb);
/* "block" -> 0, "throttle" -> 1 (= enum tenant_cap_action), else -1. */
int schema_cap_action_parse(const char *s, size_t len);
const char *schema_cap_action_name(int action);
/* "0" -> 0, "1" -> 1 (suspended, redirect_https), else -1. */
int schema_flag_parse(const char *s, size_t len);
/* A non-negative decimal integer (cap_bytes, throttle_bps, meter counters) into *out. 0 / -1. */
int schema_u64_parse(const char *s, size_t len, int64_t *out);

/*
 * A tg:patterns element "<regex> <tenant> <backend-template>", split on
 * spaces/tabs (the regex has no whitespace: write \s or \x20).  Checks the
 * syntax only (the tenant, a non-empty template, balanced ${...}); compiling
 * the regex is routing/match.h's job.  Pointers go into line.  0 / -1 with err.
 */
struct schema_pattern_line {
    const char *regex;    size_t regex_len;
    const char *tenant;   size_t tenant_len;
    const char *tmpl;     size_t tmpl_len;
};
int schema_pattern_split(const char *line, size_t len, struct schema_pattern_line *out,
                         char *err, size_t errlen);
/* Builds a pattern line into buf. Returns its length or -1 (does not fit / bad parts). */
int schema_pattern_format(char *buf, size_t cap, const char *regex, const char *tenant, const char *tmpl);

/*
 * A tg:paths:<host> element "<prefix> <backends>" (prefix starts with '/')
 * or "~<regex> <backends>".  Checks the prefix and the backends list (not
 * the regex).  Pointers go into line; *is_regex = 1 for "~" rules (match
 * excludes the "~").  0 / -1 with err.
 */
struct schema_path_line {
    int is_regex;
    const char *match;    size_t match_len;
    const char *backends; size_t backends_len;
};
int schema_path_split(const char *line, size_t len, struct schema_path_line *out, char *err, size_t errlen);

#endif
