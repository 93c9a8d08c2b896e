/*
 * match: parsing and matching of the routing data read from Redis (see
 * match.h).  PCRE2 is used with the 8-bit library, compiled once per rule
 * with JIT when the platform has it, and every match runs under a match
 * context carrying match, depth and heap limits: a regex written to
 * backtrack forever fails with PCRE2_ERROR_MATCHLIMIT instead.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "routing/match.h"

#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routing/balance.h"

/* ---- small helpers ---- */

static int match_space(char c)
{
    return c == ' ' || c == '\t';
}

/* Trims spaces/tabs on both sides of [*s, *s + *len). */
static void match_trim(const char **s, size_t *len)
{
    while (*len > 0 && match_space(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && match_space((*s)[*len - 1]))
        (*len)--;
}

/* Splits off the first whitespace-delimited token; *rest gets the trimmed remainder. */
static void match_token(const char *s, size_t len, const char **tok, size_t *tok_len,
                        const char **rest, size_t *rest_len)
{
    match_trim(&s, &len);
    size_t i = 0;
    while (i < len && !match_space(s[i]))
        i++;
    *tok = s;
    *tok_len = i;
    *rest = s + i;
    *rest_len = len - i;
    match_trim(rest, rest_len);
}

static void match_pcre_err(int code, char *err, size_t errlen, const char *what)
{
    PCRE2_UCHAR msg[160];
    if (pcre2_get_error_message(code, msg, sizeof(msg)) < 0)
        snprintf((char *)msg, sizeof(msg), "pcre2 error %d", code);
    snprintf(err, errlen, "%s: %s", what, (const char *)msg);
}

/* A compiled regex with its own limits and match data. */
struct match_re {
    pcre2_code *code;
    pcre2_match_context *mctx;
    pcre2_match_data *md;
};

static void match_re_fini(struct match_re *re)
{
    pcre2_match_data_free(re->md);
    pcre2_match_context_free(re->mctx);
    pcre2_code_free(re->code);
    memset(re, 0, sizeof(*re));
}

static int match_re_init(struct match_re *re, const char *src, size_t len, uint32_t opts,
                         char *err, size_t errlen)
{
    memset(re, 0, sizeof(*re));
    if (len == 0) {
        snprintf(err, errlen, "empty regex");
        return -1;
    }
    if (len > MATCH_MAX_REGEX) {
        snprintf(err, errlen, "regex longer than %d bytes", MATCH_MAX_REGEX);
        return -1;
    }
    int ec;
    PCRE2_SIZE eo;
    /* No \C (it can split code units) and no pattern-set limits overriding ours. */
    re->code = pcre2_compile((PCRE2_SPTR)src, len, opts | PCRE2_NEVER_BACKSLASH_C, &ec, &eo, NULL);
    if (re->code == NULL) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        snprintf(err, errlen, "regex does not compile at offset %zu: %s", (size_t)eo, (const char *)msg);
        return -1;
    }
    (void)pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);   /* falls back to the interpreter */
    re->mctx = pcre2_match_context_create(NULL);
    re->md = pcre2_match_data_create_from_pattern(re->code, NULL);
    if (re->mctx == NULL || re->md == NULL) {
        match_re_fini(re);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pcre2_set_match_limit(re->mctx, MATCH_MATCH_LIMIT);
    pcre2_set_depth_limit(re->mctx, MATCH_DEPTH_LIMIT);
    pcre2_set_heap_limit(re->mctx, MATCH_HEAP_LIMIT_KB);
    return 0;
}

/* 1 match, 0 no match, -1 error (limits) with err. */
static int match_re_exec(struct match_re *re, const char *s, size_t len, char *err, size_t errlen)
{
    int rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, 0, 0, re->md, re->mctx);
    if (rc >= 0)
        return 1;
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    match_pcre_err(rc, err, errlen, "regex match failed");
    return -1;
}

/* ---- backend lists ---- */

int match_backends_split(const char *s, size_t len, struct match_addr *out, size_t max,
                         char *err, size_t errlen)
{
    if (s == NULL || len == 0) {
        snprintf(err, errlen, "empty backend list");
        return -1;
    }
    if (len > MATCH_MAX_VALUE) {
        snprintf(err, errlen, "backend list longer than %d bytes", MATCH_MAX_VALUE);
        return -1;
    }
    size_t n = 0;
    size_t pos = 0;
    for (;;) {
        const char *item = s + pos;
        const char *comma = memchr(item, ',', len - pos);
        size_t ilen = comma ? (size_t)(comma - item) : len - pos;
        match_trim(&item, &ilen);
        if (n >= max) {
            snprintf(err, errlen, "more than %zu backends", max);
            return -1;
        }
        if (ilen == 0 || ilen >= sizeof(out[n].text) ||
            host_parse_hostport(item, ilen, out[n].name, sizeof(out[n].name), &out[n].port) < 0) {
            snprintf(err, errlen, "bad backend address '%.*s' (want host:port)", (int)(ilen > 80 ? 80 : ilen),
                     item);
            return -1;
        }
        memcpy(out[n].text, item, ilen);
        out[n].text[ilen] = '\0';
        n++;
        if (comma == NULL)
            break;
        pos = (size_t)(comma - s) + 1;
    }
    return (int)n;
}

int match_tenant_valid(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > MATCH_MAX_TENANT)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

/* ---- host patterns ---- */

/* A template piece: literal text, or capture group number. */
struct match_piece {
    int group;                 /* -1 = literal */
    size_t off, len;           /* literal: into tmpl */
};

struct match_pattern {
    struct match_re re;
    char *regex;               /* NUL-terminated copies, owned */
    char *tenant;
    char *tmpl;
    struct match_piece *pieces;
    size_t n_pieces;
    char bad[160];             /* non-empty: the template is bad (reason) */
};

void match_pattern_free(struct match_pattern *p)
{
    if (p == NULL)
        return;
    match_re_fini(&p->re);
    free(p->regex);
    free(p->tenant);
    free(p->tmpl);
    free(p->pieces);
    free(p);
}

const char *match_pattern_tenant(const struct match_pattern *p)
{
    return p->tenant;
}

const char *match_pattern_regex(const struct match_pattern *p)
{
    return p->regex;
}

/* A byte-exact copy: see match.h. */
char *match_memdup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/*
 * Parses p->tmpl into pieces, checking every reference against the regex.
 * Sets p->bad on a reference to a missing capture or a stray '$'.
 * Returns -1 only on OOM.
 */
static int match_template_parse(struct match_pattern *p)
{
    const char *t = p->tmpl;
    size_t n = strlen(t);
    uint32_t ncap = 0;
    pcre2_pattern_info(p->re.code, PCRE2_INFO_CAPTURECOUNT, &ncap);
    /* At most one piece per byte. */
    p->pieces = calloc(n + 1, sizeof(*p->pieces));
    if (p->pieces == NULL)
        return -1;
    size_t lit = 0, i = 0;
    while (i < n) {
        if (t[i] != '$') {
            i++;
            continue;
        }
        if (i > lit)
            p->pieces[p->n_pieces++] = (struct match_piece){-1, lit, i - lit};
        int group = -1;
        size_t j = i + 1;
        if (j < n && t[j] == '$') {
            p->pieces[p->n_pieces++] = (struct match_piece){-1, j, 1};
            i = j + 1;
            lit = i;
            continue;
        }
        if (j < n && t[j] >= '0' && t[j] <= '9') {
            group = 0;
            while (j < n && t[j] >= '0' && t[j] <= '9' && group < 1000)
                group = group * 10 + (t[j++] - '0');
        } else if (j < n && t[j] == '{') {
            const char *close = memchr(t + j + 1, '}', n - j - 1);
            if (close == NULL) {
                snprintf(p->bad, sizeof(p->bad), "unterminated ${ in template");
                return 0;
            }
            size_t nl = (size_t)(close - (t + j + 1));
            const char *name = t + j + 1;
            if (nl == 0) {
                snprintf(p->bad, sizeof(p->bad), "empty ${} in template");
                return 0;
            }
            if (name[0] >= '0' && name[0] <= '9') {
                group = 0;
                for (size_t k = 0; k < nl; k++) {
                    if (name[k] < '0' || name[k] > '9' || group >= 1000) {
                        group = 100000;
                        break;
                    }
                    group = group * 10 + (name[k] - '0');
                }
            } else {
                char nbuf[64];
                if (nl >= sizeof(nbuf)) {
                    snprintf(p->bad, sizeof(p->bad), "capture name too long in template");
                    return 0;
                }
                memcpy(nbuf, name, nl);
                nbuf[nl] = '\0';
                int g = pcre2_substring_number_from_name(p->re.code, (PCRE2_SPTR)nbuf);
                if (g < 0) {
                    snprintf(p->bad, sizeof(p->bad), "template names capture '%s' that the regex lacks", nbuf);
                    return 0;
                }
                group = g;
            }
            j = (size_t)(close - t) + 1;
        } else {
            snprintf(p->bad, sizeof(p->bad), "stray '$' in template (use $$ for a dollar)");
            return 0;
        }
        if (group < 0 || (uint32_t)group > ncap) {
            snprintf(p->bad, sizeof(p->bad), "template uses capture %d but the regex has %u", group, ncap);
            return 0;
        }
        p->pieces[p->n_pieces++] = (struct match_piece){group, 0, 0};
        i = j;
        lit = i;
    }
    if (n > lit)
        p->pieces[p->n_pieces++] = (struct match_piece){-1, lit, n - lit};
    return 0;
}

struct match_pattern *match_pattern_new(const char *line, size_t len, char *err, size_t errlen)
{
    if (line == NULL || len > MATCH_MAX_VALUE) {
        snprintf(err, errlen, "pattern longer than %d bytes", MATCH_MAX_VALUE);
        return NULL;
    }
    const char *rx, *ten, *tm, *rest;
    size_t rxl, tenl, tml, restl;
    match_token(line, len, &rx, &rxl, &rest, &restl);
    match_token(rest, restl, &ten, &tenl, &tm, &tml);
    if (rxl == 0 || tenl == 0 || tml == 0) {
        snprintf(err, errlen, "pattern wants '<regex> <tenant> <backend-template>'");
        return NULL;
    }
    if (!match_tenant_valid(ten, tenl)) {
        snprintf(err, errlen, "pattern has an invalid tenant id");
        return NULL;
    }
    struct match_pattern *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* The regex names the whole host: anchored at both ends; hosts are lowercase. */
    if (match_re_init(&p->re, rx, rxl, PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_CASELESS, err, errlen) < 0) {
        free(p);
        return NULL;
    }
    p->regex = match_memdup(rx, rxl);
    p->tenant = match_memdup(ten, tenl);
    p->tmpl = match_memdup(tm, tml);
    if (p->regex == NULL || p->tenant == NULL || p->tmpl == NULL || match_template_parse(p) < 0) {
        match_pattern_free(p);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    return p;
}

int match_pattern_exec(struct match_pattern *p, const char *host, size_t len, char *out, size_t outcap,
                       char *err, size_t errlen)
{
    int m = match_re_exec(&p->re, host, len, err, errlen);
    if (m <= 0)
        return m;
    if (p->bad[0]) {
        snprintf(err, errlen, "%s", p->bad);
        return -1;
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(p->re.md);
    uint32_t npairs = pcre2_get_ovector_count(p->re.md);
    size_t o = 0;
    for (size_t i = 0; i < p->n_pieces; i++) {
        const struct match_piece *pc = &p->pieces[i];
        const char *src;
        size_t sl;
        if (pc->group < 0) {
            src = p->tmpl + pc->off;
            sl = pc->len;
        } else if ((uint32_t)pc->group < npairs && ov[2 * pc->group] != PCRE2_UNSET &&
                   ov[2 * pc->group + 1] >= ov[2 * pc->group]) {
            src = host + ov[2 * pc->group];
            sl = ov[2 * pc->group + 1] - ov[2 * pc->group];
        } else {
            src = "";                      /* a group that did not take part: empty */
            sl = 0;
        }
        if (sl >= outcap - o) {
            snprintf(err, errlen, "substituted template too long");
            return -1;
        }
        memcpy(out + o, src, sl);
        o += sl;
    }
    out[o] = '\0';
    return 1;
}

/* ---- path rules ---- */

struct match_path_rule {
    int is_regex;
    char *prefix;              /* owned (prefix rules) */
    size_t prefix_len;
    struct match_re re;        /* regex rules */
    char *backends;            /* owned */
    size_t backends_len;
};

struct match_paths {
    struct match_path_rule *rules;
    size_t n, cap;
};

struct match_paths *match_paths_new(void)
{
    return calloc(1, sizeof(struct match_paths));
}

void match_paths_free(struct match_paths *ps)
{
    if (ps == NULL)
        return;
    for (size_t i = 0; i < ps->n; i++) {
        free(ps->rules[i].prefix);
        free(ps->rules[i].backends);
        if (ps->rules[i].is_regex)
            match_re_fini(&ps->rules[i].re);
    }
    free(ps->rules);
    free(ps);
}

int match_paths_add(struct match_paths *ps, const char *line, size_t len, char *err, size_t errlen)
{
    if (line == NULL || len > MATCH_MAX_VALUE) {
        snprintf(err, errlen, "path rule longer than %d bytes", MATCH_MAX_VALUE);
        return -1;
    }
    if (ps->n >= MATCH_MAX_RULES) {
        snprintf(err, errlen, "more than %d path rules", MATCH_MAX_RULES);
        return -1;
    }
    const char *key, *be;
    size_t kl, bl;
    match_token(line, len, &key, &kl, &be, &bl);
    if (kl == 0 || bl == 0) {
        snprintf(err, errlen, "path rule wants '<prefix> <backends>' or '~<regex> <backends>'");
        return -1;
    }
    if (ps->n == ps->cap) {
        size_t nc = ps->cap ? ps->cap * 2 : 4;
        struct match_path_rule *nr = realloc(ps->rules, nc * sizeof(*nr));
        if (nr == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        ps->rules = nr;
        ps->cap = nc;
    }
    struct match_path_rule *r = &ps->rules[ps->n];
    memset(r, 0, sizeof(*r));
    if (key[0] == '~') {
        r->is_regex = 1;
        if (match_re_init(&r->re, key + 1, kl - 1, 0, err, errlen) < 0)
            return -1;
    } else {
        if (key[0] != '/') {
            snprintf(err, errlen, "path prefix must start with '/'");
            return -1;
        }
        r->prefix = match_memdup(key, kl);
        r->prefix_len = kl;
        if (r->prefix == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    r->backends = match_memdup(be, bl);
    r->backends_len = bl;
    if (r->backends == NULL) {
        free(r->prefix);
        if (r->is_regex)
            match_re_fini(&r->re);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return (int)ps->n++;
}

size_t match_paths_count(const struct match_paths *ps)
{
    return ps ? ps->n : 0;
}

const char *match_paths_backends(const struct match_paths *ps, size_t i, size_t *len)
{
    if (ps == NULL || i >= ps->n)
        return NULL;
    *len = ps->rules[i].backends_len;
    return ps->rules[i].backends;
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~" */
static int unreserved(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.'
           || c == '_' || c == '~';
}

/*
 * The path as path rules see it (RFC 3986 §6.2.2, as nginx normalises a
 * URI before matching its locations): percent-encoded unreserved
 * characters decoded ("%61" is "a", "%2E" is "."), dot segments removed
 * (§5.2.4: "/x/../api" is "/api") and runs of "/" merged (nginx's
 * merge_slashes), so that a rule for /api/ is not stepped around by a
 * spelling the backend reads as /api/.  Reserved escapes ("%2F") stay as
 * written: what they mean is the backend's business.  A path not starting
 * with "/" ("*") is only decoded.  Writes at most len bytes to out (the
 * result is never longer); returns its length.
 */
static size_t path_normalise(const char *in, size_t len, char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '%' && i + 2 < len && hex_val(in[i + 1]) >= 0 && hex_val(in[i + 2]) >= 0) {
            int c = hex_val(in[i + 1]) * 16 + hex_val(in[i + 2]);
            if (unreserved(c)) {
                out[n++] = (char)c;
                i += 2;
                continue;
            }
        }
        out[n++] = in[i];
    }
    if (n == 0 || out[0] != '/')
        return n;
    /* In place, segment by segment: the output (out[0..o)) never passes
     * the segment being read (out[i + 1..j)). */
    size_t o = 0, i = 0;
    while (i < n) {
        size_t j = i + 1;
        while (j < n && out[j] != '/')
            j++;
        size_t sl = j - i - 1;
        const char *seg = out + i + 1;
        if (sl == 0 || (sl == 1 && seg[0] == '.')) {
            if (j == n)
                out[o++] = '/';          /* ".../" and ".../.": a directory */
        } else if (sl == 2 && seg[0] == '.' && seg[1] == '.') {
            while (o > 0 && out[o - 1] != '/')
                o--;                     /* drop the last segment ... */
            if (o > 0)
                o--;                     /* ... and its "/" */
            if (j == n)
                out[o++] = '/';
        } else {
            out[o++] = '/';
            memmove(out + o, seg, sl);
            o += sl;
        }
        i = j;
    }
    return o;
}

int match_paths_find(struct match_paths *ps, const char *path, size_t len)
{
    if (ps == NULL)
        return -1;
    const char *q = path ? memchr(path, '?', len) : NULL;
    if (q)
        len = (size_t)(q - path);
    if (path == NULL)
        path = "";
    /* NORM_PAD zeroed bytes follow the path: PCRE2's JIT reads a little
     * past the subject's end (harmless, but memcheck would flag a stack
     * buffer's uninitialised tail). */
    enum { NORM_PAD = 32 };
    char stack[2048 + NORM_PAD], *norm = len <= sizeof(stack) - NORM_PAD ? stack : malloc(len + NORM_PAD);
    if (norm) {
        len = path_normalise(path, len, norm);
        memset(norm + len, 0, NORM_PAD);
        path = norm;
    }   /* out of memory for a very long path: matched as written */
    int found = -1;
    for (size_t i = 0; i < ps->n && found == -1; i++) {
        struct match_path_rule *r = &ps->rules[i];
        if (!r->is_regex) {
            if (len >= r->prefix_len && memcmp(path, r->prefix, r->prefix_len) == 0)
                found = (int)i;
            continue;
        }
        char err[8];
        int m = match_re_exec(&r->re, path, len, err, sizeof(err));
        if (m > 0)
            found = (int)i;
        else if (m < 0)
            found = -2;
    }
    if (norm && norm != stack)
        free(norm);
    return found;
}

/* ---- hash fields ---- */

static int match_field_is(const char *f, size_t fl, const char *name)
{
    size_t n = strlen(name);
    return fl == n && memcmp(f, name, n) == 0;
}

void match_domain_init(struct match_domain *d)
{
    memset(d, 0, sizeof(*d));
    d->lb = BAL_ROUND_ROBIN;
}

int match_domain_field(struct match_domain *d, const char *f, size_t fl, const char *v, size_t vl,
                       char *err, size_t errlen)
{
    if (vl > MATCH_MAX_VALUE) {
        snprintf(err, errlen, "field '%.*s' is %zu bytes (limit %d)", (int)(fl > 40 ? 40 : fl), f, vl,
                 MATCH_MAX_VALUE);
        return -1;
    }
    if (match_field_is(f, fl, "tenant")) {
        d->tenant = v;
        d->tenant_len = vl;
    } else if (match_field_is(f, fl, "backends")) {
        d->backends = v;
        d->backends_len = vl;
    } else if (match_field_is(f, fl, "lb")) {
        int lb = bal_lb_parse(v, vl);
        if (lb < 0)
            d->bad_optional |= 1;
        else
            d->lb = lb;
    } else if (match_field_is(f, fl, "redirect_https")) {
        if (vl == 1 && (v[0] == '0' || v[0] == '1'))
            d->redirect_https = v[0] == '1';
        else
            d->bad_optional |= 2;
    }
    return 0;
}

int match_domain_check(const struct match_domain *d, char *err, size_t errlen)
{
    if (d->tenant == NULL) {
        snprintf(err, errlen, "missing field 'tenant'");
        return -1;
    }
    if (!match_tenant_valid(d->tenant, d->tenant_len)) {
        snprintf(err, errlen, "invalid tenant id");
        return -1;
    }
    if (d->backends == NULL || d->backends_len == 0) {
        snprintf(err, errlen, "missing field 'backends'");
        return -1;
    }
    return 0;
}

/* Parses a non-negative decimal int64 (1..18 digits, so no overflow). 0 / -1. */
static int match_u63(const char *v, size_t vl, int64_t *out)
{
    if (vl == 0 || vl > 18)
        return -1;
    int64_t x = 0;
    for (size_t i = 0; i < vl; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return 0;
}

int match_tenant_field(struct tenant_policy *p, const char *f, size_t fl, const char *v, size_t vl,
                       char *err, size_t errlen)
{
    int64_t x;
    if (match_field_is(f, fl, "cap_bytes")) {
        if (match_u63(v, vl, &x) < 0)
            goto bad;
        p->cap_bytes = x;
    } else if (match_field_is(f, fl, "cap_action")) {
        if (vl == 5 && memcmp(v, "block", 5) == 0)
            p->cap_action = CAP_BLOCK;
        else if (vl == 8 && memcmp(v, "throttle", 8) == 0)
            p->cap_action = CAP_THROTTLE;
        else
            goto bad;
    } else if (match_field_is(f, fl, "throttle_bps")) {
        if (match_u63(v, vl, &x) < 0)
            goto bad;
        p->throttle_bps = x;
    } else if (match_field_is(f, fl, "suspended")) {
        if (vl == 1 && (v[0] == '0' || v[0] == '1'))
            p->suspended = v[0] == '1';
        else
            goto bad;
    }
    return 0;
bad:
    snprintf(err, errlen, "bad value for '%.*s'", (int)(fl > 40 ? 40 : fl), f);
    return -1;
}
