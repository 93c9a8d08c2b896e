/*
 * schema: key builders and field-value checks for the Redis layout in
 * ../shared/CONTRACT.md (see schema.h).  Everything is pure: no allocation,
 * no global state.  Values come from Redis written by other teams, so every
 * parser works on (pointer, length), checks lengths and rejects anything
 * ambiguous (signs, spaces, overflow) instead of guessing.
 */
#include "routing/schema.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "routing/host.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int schema_prefix_valid(const char *prefix)
{
    if (!prefix)
        return 0;
    size_t n = strlen(prefix);
    if (n > SCHEMA_PREFIX_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)prefix[i] < 0x21 || (unsigned char)prefix[i] > 0x7e)
            return 0;
    return 1;
}

/* Writes prefix + family + [a] + [sep + b] into buf; length or -1. */
static int build(char *buf, size_t cap, const char *prefix, const char *family, const char *a, size_t alen,
                 const char *b, size_t blen)
{
    if (!buf || !prefix || !schema_prefix_valid(prefix))
        return -1;
    size_t pl = strlen(prefix), fl = strlen(family);
    size_t total = pl + fl + alen + (b ? 1 + blen : 0);
    if (total + 1 > cap)
        return -1;
    char *o = buf;
    memcpy(o, prefix, pl);
    o += pl;
    memcpy(o, family, fl);
    o += fl;
    if (alen) {
        memcpy(o, a, alen);
        o += alen;
    }
    if (b) {
        *o++ = ':';
        memcpy(o, b, blen);
        o += blen;
    }
    *o = '\0';
    return (int)total;
}

/* A host part of a key: 1..HOST_MAX+2 bytes ("*." + zone), no spaces or controls. */
static int host_part_ok(const char *h, size_t n)
{
    if (!h || n == 0 || n > HOST_MAX + 2)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)h[i] <= 0x20 || (unsigned char)h[i] >= 0x7f)
            return 0;
    return 1;
}

int schema_key_domain(char *buf, size_t cap, const char *prefix, const char *host, size_t host_len)
{
    if (!host_part_ok(host, host_len))
        return -1;
    return build(buf, cap, prefix, SCHEMA_K_DOMAIN, host, host_len, NULL, 0);
}

int schema_key_wildcard(char *buf, size_t cap, const char *prefix, const char *zone, size_t zone_len)
{
    if (!host_part_ok(zone, zone_len) || zone_len > HOST_MAX)
        return -1;
    if (!buf || !prefix || !schema_prefix_valid(prefix))
        return -1;
    size_t pl = strlen(prefix), fl = strlen(SCHEMA_K_DOMAIN);
    size_t total = pl + fl + 2 + zone_len;
    if (total + 1 > cap)
        return -1;
    memcpy(buf, prefix, pl);
    memcpy(buf + pl, SCHEMA_K_DOMAIN, fl);
    memcpy(buf + pl + fl, "*.", 2);
    memcpy(buf + pl + fl + 2, zone, zone_len);
    buf[total] = '\0';
    return (int)total;
}

int schema_key_paths(char *buf, size_t cap, const char *prefix, const char *host, size_t host_len)
{
    if (!host_part_ok(host, host_len))
        return -1;
    return build(buf, cap, prefix, SCHEMA_K_PATHS, host, host_len, NULL, 0);
}

int schema_key_patterns(char *buf, size_t cap, const char *prefix)
{
    return build(buf, cap, prefix, SCHEMA_K_PATTERNS, NULL, 0, NULL, 0);
}

int schema_key_tenant(char *buf, size_t cap, const char *prefix, const char *tenant, size_t tenant_len)
{
    if (!schema_tenant_valid(tenant, tenant_len))
        return -1;
    return build(buf, cap, prefix, SCHEMA_K_TENANT, tenant, tenant_len, NULL, 0);
}

int schema_key_meter(char *buf, size_t cap, const char *prefix, const char *tenant, size_t tenant_len,
                     const char *period)
{
    if (!schema_tenant_valid(tenant, tenant_len) || !period || !schema_period_valid(period))
        return -1;
    return build(buf, cap, prefix, SCHEMA_K_METER, tenant, tenant_len, period, strlen(period));
}

int schema_key_meter_applied(char *buf, size_t cap, const char *prefix)
{
    return build(buf, cap, prefix, SCHEMA_K_APPLIED, NULL, 0, NULL, 0);
}

int schema_key_lease(char *buf, size_t cap, const char *prefix, const char *tenant, size_t tenant_len,
                     const char *month)
{
    if (!schema_tenant_valid(tenant, tenant_len) || !month || strlen(month) != 6 || !schema_period_valid(month))
        return -1;
    return build(buf, cap, prefix, SCHEMA_K_LEASE, tenant, tenant_len, month, 6);
}

int schema_key_meter_month(char *buf, size_t cap, const char *prefix, const char *tenant, size_t tenant_len,
                           time_t t)
{
    char p[7];
    if (schema_period_month(t, p) < 0)
        return -1;
    return schema_key_meter(buf, cap, prefix, tenant, tenant_len, p);
}

int schema_key_meter_day(char *buf, size_t cap, const char *prefix, const char *tenant, size_t tenant_len,
                         time_t t)
{
    char p[9];
    if (schema_period_day(t, p) < 0)
        return -1;
    return schema_key_meter(buf, cap, prefix, tenant, tenant_len, p);
}

int schema_key_cert(char *buf, size_t cap, const char *prefix, const char *host, size_t host_len)
{
    if (!host_part_ok(host, host_len))
        return -1;
    return build(buf, cap, prefix, SCHEMA_K_CERT, host, host_len, NULL, 0);
}

int schema_key_acme(char *buf, size_t cap, const char *prefix, const char *token, size_t token_len)
{
    /* RFC 8555 §8.3: the token is base64url without padding. */
    if (!token || token_len == 0 || token_len > 256)
        return -1;
    for (size_t i = 0; i < token_len; i++) {
        char ch = token[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
              ch == '_'))
            return -1;
    }
    return build(buf, cap, prefix, SCHEMA_K_ACME, token, token_len, NULL, 0);
}

int schema_channel_events(char *buf, size_t cap, const char *prefix)
{
    return build(buf, cap, prefix, SCHEMA_K_EVENTS, NULL, 0, NULL, 0);
}

int schema_key_family(char *buf, size_t cap, const char *prefix, const char *family, int glob)
{
    if (!buf || !prefix || !family || !schema_prefix_valid(prefix))
        return -1;
    if (!glob)
        return build(buf, cap, prefix, family, NULL, 0, NULL, 0);
    /* Redis glob: escape * ? [ ] \ so a prefix is matched literally. */
    size_t o = 0;
    const char *parts[2] = { prefix, family };
    for (int k = 0; k < 2; k++) {
        for (const char *s = parts[k]; *s; s++) {
            if (strchr("*?[]\\", *s)) {
                if (o + 1 >= cap)
                    return -1;
                buf[o++] = '\\';
            }
            if (o + 1 >= cap)
                return -1;
            buf[o++] = *s;
        }
    }
    if (o + 2 > cap)
        return -1;
    buf[o++] = '*';
    buf[o] = '\0';
    return (int)o;
}

const char *schema_key_split(const char *prefix, const char *key, size_t key_len, const char **rest,
                             size_t *rest_len)
{
    static const char *const families[] = {
        SCHEMA_K_DOMAIN, SCHEMA_K_PATHS, SCHEMA_K_PATTERNS, SCHEMA_K_TENANT,
        SCHEMA_K_METER, SCHEMA_K_CERT, SCHEMA_K_ACME, SCHEMA_K_EVENTS,
    };
    if (!prefix || !key)
        return NULL;
    size_t pl = strlen(prefix);
    if (key_len < pl || memcmp(key, prefix, pl) != 0)
        return NULL;
    const char *k = key + pl;
    size_t kl = key_len - pl;
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
        size_t fl = strlen(families[i]);
        int whole = families[i][fl - 1] != ':';     /* "patterns", "events": the whole key */
        if (kl < fl || memcmp(k, families[i], fl) != 0 || (whole && kl != fl))
            continue;
        if (rest)
            *rest = k + fl;
        if (rest_len)
            *rest_len = kl - fl;
        return families[i];
    }
    return NULL;
}

/* Writes v as exactly n decimal digits (v fits). */
static void put_digits(char *o, int v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        o[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

int schema_period_month(time_t t, char out[7])
{
    struct tm tm;
    if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 < 1000 || tm.tm_year + 1900 > 9999)
        return -1;
    put_digits(out, tm.tm_year + 1900, 4);
    put_digits(out + 4, tm.tm_mon + 1, 2);
    out[6] = '\0';
    return 0;
}

int schema_period_day(time_t t, char out[9])
{
    struct tm tm;
    if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 < 1000 || tm.tm_year + 1900 > 9999)
        return -1;
    put_digits(out, tm.tm_year + 1900, 4);
    put_digits(out + 4, tm.tm_mon + 1, 2);
    put_digits(out + 6, tm.tm_mday, 2);
    out[8] = '\0';
    return 0;
}

int schema_period_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n != 6 && n != 8)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    int year = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    int mon = (s[4] - '0') * 10 + (s[5] - '0');
    if (year < 1970 || mon < 1 || mon > 12)
        return 0;
    if (n == 8) {
        static const int mdays[12] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
        int day = (s[6] - '0') * 10 + (s[7] - '0');
        int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        int max = mdays[mon - 1] - (mon == 2 && !leap);
        if (day < 1 || day > max)
            return 0;
    }
    return 1;
}

/* ---- events ---- */

static const char *const ev_names[] = { NULL, "domain", "tenant", "cert", "patterns" };

int schema_event_format(char *buf, size_t cap, enum schema_event ev, const char *name, size_t name_len)
{
    if (!buf || ev < SCHEMA_EV_DOMAIN || ev > SCHEMA_EV_PATTERNS)
        return -1;
    const char *w = ev_names[ev];
    size_t wl = strlen(w);
    if (ev == SCHEMA_EV_PATTERNS) {
        if (wl + 1 > cap)
            return -1;
        memcpy(buf, w, wl + 1);
        return (int)wl;
    }
    if (!host_part_ok(name, name_len) && !(ev == SCHEMA_EV_TENANT && schema_tenant_valid(name, name_len)))
        return -1;
    if (wl + 1 + name_len + 1 > cap)
        return -1;
    memcpy(buf, w, wl);
    buf[wl] = ' ';
    memcpy(buf + wl + 1, name, name_len);
    buf[wl + 1 + name_len] = '\0';
    return (int)(wl + 1 + name_len);
}

int schema_event_parse(const char *msg, size_t len, const char **name, size_t *name_len)
{
    if (!msg)
        return -1;
    for (int ev = SCHEMA_EV_DOMAIN; ev <= SCHEMA_EV_PATTERNS; ev++) {
        size_t wl = strlen(ev_names[ev]);
        if (len < wl || memcmp(msg, ev_names[ev], wl) != 0)
            continue;
        if (ev == SCHEMA_EV_PATTERNS) {
            if (len != wl)
                continue;
            if (name)
                *name = msg + len;
            if (name_len)
                *name_len = 0;
            return ev;
        }
        if (len < wl + 2 || msg[wl] != ' ')
            continue;
        const char *n = msg + wl + 1;
        size_t nl = len - wl - 1;
        if (!host_part_ok(n, nl) && !schema_tenant_valid(n, nl))
            return -1;
        if (name)
            *name = n;
        if (name_len)
            *name_len = nl;
        return ev;
    }
    return -1;
}

/* ---- values ---- */

int schema_tenant_valid(const char *s, size_t len)
{
    if (!s || len == 0 || len > SCHEMA_TENANT_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

int schema_addr_check(const char *s, size_t len, char *err, size_t errlen)
{
    char name[HOST_MAX + 1];
    int port;
    if (!s || len == 0) {
        set_err(err, errlen, "empty backend address");
        return -1;
    }
    if (len > SCHEMA_ADDR_MAX) {
        set_err(err, errlen, "backend address longer than 127 bytes");
        return -1;
    }
    if (host_parse_hostport(s, len, name, sizeof(name), &port) < 0) {
        char tmp[SCHEMA_ADDR_MAX + 1];
        memcpy(tmp, s, len);
        tmp[len] = '\0';
        set_err(err, errlen, "bad backend address \"%s\" (expected host:port or [v6]:port)", tmp);
        return -1;
    }
    return 0;
}

static int is_sp(char c)
{
    return c == ' ' || c == '\t';
}

int schema_backends_check(const char *s, size_t len, char *err, size_t errlen)
{
    if (!s || len > SCHEMA_VALUE_MAX) {
        set_err(err, errlen, "backends list too long");
        return -1;
    }
    int n = 0;
    size_t i = 0;
    for (;;) {
        size_t start = i;
        while (i < len && s[i] != ',')
            i++;
        size_t a = start, b = i;
        while (a < b && is_sp(s[a]))
            a++;
        while (b > a && is_sp(s[b - 1]))
            b--;
        if (a == b) {
            set_err(err, errlen, "empty item in backends list");
            return -1;
        }
        if (++n > SCHEMA_BACKENDS_MAX) {
            set_err(err, errlen, "more than 64 backends");
            return -1;
        }
        if (schema_addr_check(s + a, b - a, err, errlen) < 0)
            return -1;
        if (i >= len)
            break;
        i++;   /* the comma */
    }
    return n;
}

static int word_eq(const char *s, size_t len, const char *w)
{
    return s && len == strlen(w) && memcmp(s, w, len) == 0;
}

int schema_lb_parse(const char *s, size_t len)
{
    if (word_eq(s, len, SCHEMA_LB_ROUND_ROBIN))
        return 0;
    if (word_eq(s, len, SCHEMA_LB_LEAST_CONN))
        return 1;
    return -1;
}

const char *schema_lb_name(int lb)
{
    return lb == 1 ? SCHEMA_LB_LEAST_CONN : SCHEMA_LB_ROUND_ROBIN;
}

int schema_cap_action_parse(const char *s, size_t len)
{
    if (word_eq(s, len, SCHEMA_CAP_BLOCK))
        return 0;
    if (word_eq(s, len, SCHEMA_CAP_THROTTLE))
        return 1;
    return -1;
}

const char *schema_cap_action_name(int action)
{
    return action == 1 ? SCHEMA_CAP_THROTTLE : SCHEMA_CAP_BLOCK;
}

int schema_flag_parse(const char *s, size_t len)
{
    if (word_eq(s, len, "0"))
        return 0;
    if (word_eq(s, len, "1"))
        return 1;
    return -1;
}

int schema_u64_parse(const char *s, size_t len, int64_t *out)
{
    if (!s || len == 0 || len > 19)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        int d = s[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (out)
        *out = v;
    return 0;
}

/* Splits off the first token of [s, s+len) (spaces/tabs), trimming both. */
static void token(const char *s, size_t len, const char **tok, size_t *tok_len, const char **rest,
                  size_t *rest_len)
{
    while (len && is_sp(*s)) {
        s++;
        len--;
    }
    while (len && is_sp(s[len - 1]))
        len--;
    size_t i = 0;
    while (i < len && !is_sp(s[i]))
        i++;
    *tok = s;
    *tok_len = i;
    s += i;
    len -= i;
    while (len && is_sp(*s)) {
        s++;
        len--;
    }
    *rest = s;
    *rest_len = len;
}

static int has_ctl(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 && s[i] != '\t')
            return 1;
    return 0;
}

int schema_pattern_split(const char *line, size_t len, struct schema_pattern_line *out, char *err,
                         size_t errlen)
{
    if (!line || len == 0 || len > SCHEMA_VALUE_MAX || has_ctl(line, len)) {
        set_err(err, errlen, "pattern line empty, too long or with control characters");
        return -1;
    }
    const char *rest, *r2;
    size_t rl, r2l;
    token(line, len, &out->regex, &out->regex_len, &rest, &rl);
    token(rest, rl, &out->tenant, &out->tenant_len, &r2, &r2l);
    out->tmpl = r2;
    out->tmpl_len = r2l;
    if (out->regex_len == 0 || out->tenant_len == 0 || out->tmpl_len == 0) {
        set_err(err, errlen, "pattern must be \"<regex> <tenant> <backend-template>\"");
        return -1;
    }
    if (out->regex_len > 4096) {
        set_err(err, errlen, "pattern regex longer than 4096 bytes");
        return -1;
    }
    if (!schema_tenant_valid(out->tenant, out->tenant_len)) {
        set_err(err, errlen, "bad tenant id in pattern");
        return -1;
    }
    for (size_t i = 0; i < out->tmpl_len; i++) {
        if (out->tmpl[i] == '$' && i + 1 < out->tmpl_len && out->tmpl[i + 1] == '{') {
            const char *close = memchr(out->tmpl + i, '}', out->tmpl_len - i);
            if (!close || close == out->tmpl + i + 2) {
                set_err(err, errlen, "unterminated or empty ${...} in template");
                return -1;
            }
        }
    }
    return 0;
}

int schema_pattern_format(char *buf, size_t cap, const char *regex, const char *tenant, const char *tmpl)
{
    if (!buf || !regex || !tenant || !tmpl)
        return -1;
    int n = snprintf(buf, cap, "%s %s %s", regex, tenant, tmpl);
    if (n < 0 || (size_t)n >= cap)
        return -1;
    struct schema_pattern_line pl;
    if (schema_pattern_split(buf, (size_t)n, &pl, NULL, 0) < 0 || pl.regex_len != strlen(regex) ||
        pl.tenant_len != strlen(tenant) || pl.tmpl_len != strlen(tmpl))
        return -1;
    return n;
}

int schema_path_split(const char *line, size_t len, struct schema_path_line *out, char *err, size_t errlen)
{
    if (!line || len == 0 || len > SCHEMA_VALUE_MAX || has_ctl(line, len)) {
        set_err(err, errlen, "path rule empty, too long or with control characters");
        return -1;
    }
    const char *m, *b;
    size_t ml, bl;
    token(line, len, &m, &ml, &b, &bl);
    if (ml == 0 || bl == 0) {
        set_err(err, errlen, "path rule must be \"<prefix> <backends>\" or \"~<regex> <backends>\"");
        return -1;
    }
    out->is_regex = m[0] == '~';
    if (out->is_regex) {
        m++;
        ml--;
        if (ml == 0 || ml > 4096) {
            set_err(err, errlen, "empty or too long path regex");
            return -1;
        }
    } else if (m[0] != '/') {
        set_err(err, errlen, "path prefix must start with '/' (or use ~regex)");
        return -1;
    }
    if (schema_backends_check(b, bl, err, errlen) < 0)
        return -1;
    out->match = m;
    out->match_len = ml;
    out->backends = b;
    out->backends_len = bl;
    return 0;
}
