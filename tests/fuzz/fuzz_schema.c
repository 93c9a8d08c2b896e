/*
 * fuzz_schema: libFuzzer target for the Redis schema's parsers
 * (routing/schema.h): what tollgate-ctl checks before it writes, and what
 * the proxy reads from the events channel and from invalidation messages.
 * The first byte picks the parser; the rest is its input:
 *   0: an events-channel message (schema_event_parse), formatted back
 *   1: a backend address and a backends list (schema_addr_check,
 *      schema_backends_check)
 *   2: a tg:patterns element (schema_pattern_split), formatted back
 *   3: a tg:paths element (schema_path_split)
 *   4: the field values: lb, cap action, flag, u64, tenant id, period
 *   5: a key of ours (schema_key_split, prefix "tg:")
 * Checks, besides no crash and no hang: every pointer handed back lies in
 * the input, every error message is a NUL-terminated string within its
 * buffer, and what a parser accepted and a formatter wrote parses back to
 * the same parts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "routing/schema.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

/* p..p+len lies inside s..s+n. */
static int inside(const char *s, size_t n, const char *p, size_t len)
{
    return p >= s && p <= s + n && len <= (size_t)(s + n - p);
}

static void check_err(const char *err, size_t cap)
{
    if (memchr(err, '\0', cap) == NULL)
        __builtin_trap();
}

static void events(const char *s, size_t n)
{
    const char *name = NULL;
    size_t nl = 0;
    int ev = schema_event_parse(s, n, &name, &nl);
    if (ev < 0)
        return;
    if (ev < SCHEMA_EV_DOMAIN || ev > SCHEMA_EV_PATTERNS || !inside(s, n, name, nl))
        __builtin_trap();
    char buf[1024];
    int fl = schema_event_format(buf, sizeof(buf), (enum schema_event)ev, name, nl);
    if (fl < 0)
        return;           /* a tenant id the domain/cert forms do not take */
    const char *name2 = NULL;
    size_t nl2 = 0;
    if (schema_event_parse(buf, (size_t)fl, &name2, &nl2) != ev || nl2 != nl || memcmp(name2, name, nl) != 0)
        __builtin_trap();
}

static void addresses(const char *s, size_t n)
{
    char err[128];
    err[0] = '\0';
    if (schema_addr_check(s, n, err, sizeof(err)) < 0)
        check_err(err, sizeof(err));
    err[0] = '\0';
    int c = schema_backends_check(s, n, err, sizeof(err));
    if (c < 0)
        check_err(err, sizeof(err));
    else if (c < 1 || c > SCHEMA_BACKENDS_MAX)
        __builtin_trap();
}

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p)
        abort();
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static void patterns(const char *s, size_t n)
{
    struct schema_pattern_line pl;
    char err[128];
    err[0] = '\0';
    if (schema_pattern_split(s, n, &pl, err, sizeof(err)) < 0) {
        check_err(err, sizeof(err));
        return;
    }
    if (!inside(s, n, pl.regex, pl.regex_len) || !inside(s, n, pl.tenant, pl.tenant_len)
        || !inside(s, n, pl.tmpl, pl.tmpl_len))
        __builtin_trap();
    char *re = dup_n(pl.regex, pl.regex_len), *te = dup_n(pl.tenant, pl.tenant_len),
         *tm = dup_n(pl.tmpl, pl.tmpl_len);
    size_t cap = n + 8;
    char *buf = malloc(cap);
    if (!buf)
        abort();
    int fl = schema_pattern_format(buf, cap, re, te, tm);
    struct schema_pattern_line again;
    if (fl < 0 || schema_pattern_split(buf, (size_t)fl, &again, err, sizeof(err)) != 0
        || again.regex_len != pl.regex_len || memcmp(again.regex, re, pl.regex_len) != 0
        || again.tenant_len != pl.tenant_len || memcmp(again.tenant, te, pl.tenant_len) != 0
        || again.tmpl_len != pl.tmpl_len || memcmp(again.tmpl, tm, pl.tmpl_len) != 0)
        __builtin_trap();
    free(buf);
    free(re);
    free(te);
    free(tm);
}

static void paths(const char *s, size_t n)
{
    struct schema_path_line pl;
    char err[128];
    err[0] = '\0';
    if (schema_path_split(s, n, &pl, err, sizeof(err)) < 0) {
        check_err(err, sizeof(err));
        return;
    }
    if (!inside(s, n, pl.match, pl.match_len) || !inside(s, n, pl.backends, pl.backends_len)
        || (pl.is_regex != 0 && pl.is_regex != 1))
        __builtin_trap();
    /* The backends part was checked: the list parser agrees. */
    if (schema_backends_check(pl.backends, pl.backends_len, err, sizeof(err)) < 1)
        __builtin_trap();
}

static void values(const char *s, size_t n)
{
    int lb = schema_lb_parse(s, n);
    if (lb >= 0 && strcmp(schema_lb_name(lb), "") == 0)
        __builtin_trap();
    int ca = schema_cap_action_parse(s, n);
    if (ca >= 0 && strcmp(schema_cap_action_name(ca), "") == 0)
        __builtin_trap();
    int f = schema_flag_parse(s, n);
    if (f != -1 && f != 0 && f != 1)
        __builtin_trap();
    int64_t v = -1;
    if (schema_u64_parse(s, n, &v) == 0 && v < 0)
        __builtin_trap();
    (void)schema_tenant_valid(s, n);
    char *z = dup_n(s, n);
    (void)schema_period_valid(z);
    free(z);
}

static void keys(const char *s, size_t n)
{
    const char *rest = NULL;
    size_t rl = 0;
    const char *fam = schema_key_split("tg:", s, n, &rest, &rl);
    if (fam && !inside(s, n, rest, rl))
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (n < 1)
        return 0;
    int mode = d[0] % 6;
    /* A copy of exactly the input's size: ASan catches any read past it. */
    size_t len = n - 1;
    char *s = malloc(len ? len : 1);
    if (!s)
        return 0;
    memcpy(s, d + 1, len);
    switch (mode) {
    case 0: events(s, len); break;
    case 1: addresses(s, len); break;
    case 2: patterns(s, len); break;
    case 3: paths(s, len); break;
    case 4: values(s, len); break;
    default: keys(s, len); break;
    }
    free(s);
    return 0;
}
