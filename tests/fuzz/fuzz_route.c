/*
 * fuzz_route: libFuzzer target for the routing data parsers of
 * routing/match.h, which read whatever other teams write into Redis.
 * The first byte picks the parser; the rest is split at the first newline
 * into a rule and a subject:
 *   0: tg:patterns element + host   (compile, match, template substitution)
 *   1: tg:paths element + path      (prefix / regex rule, lookup)
 *   2: backends list
 *   3: domain / tenant hash field "name=value"
 * Checks: no crash, no hang (PCRE2 limits), substituted output NUL-terminated
 * within its buffer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "routing/match.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (n < 1)
        return 0;
    int mode = d[0] % 4;
    const char *s = (const char *)d + 1;
    n--;
    const char *nl = memchr(s, '\n', n);
    size_t rl = nl ? (size_t)(nl - s) : n;
    const char *subj = nl ? nl + 1 : "";
    size_t sl = nl ? n - rl - 1 : 0;
    char err[256];

    if (mode == 0) {
        struct match_pattern *p = match_pattern_new(s, rl, err, sizeof(err));
        if (p == NULL)
            return 0;
        char out[512];
        int m = match_pattern_exec(p, subj, sl, out, sizeof(out), err, sizeof(err));
        if (m == 1) {
            if (memchr(out, '\0', sizeof(out)) == NULL)
                abort();
            struct match_addr a[MATCH_MAX_BACKENDS];
            (void)match_backends_split(out, strlen(out), a, MATCH_MAX_BACKENDS, err, sizeof(err));
        }
        /* Small output buffers must fail cleanly. */
        char tiny[4];
        (void)match_pattern_exec(p, subj, sl, tiny, sizeof(tiny), err, sizeof(err));
        match_pattern_free(p);
    } else if (mode == 1) {
        struct match_paths *ps = match_paths_new();
        if (ps == NULL)
            return 0;
        int i = match_paths_add(ps, s, rl, err, sizeof(err));
        /* A second rule from the subject's first line, then look up the rest. */
        const char *nl2 = memchr(subj, '\n', sl);
        if (nl2) {
            (void)match_paths_add(ps, subj, (size_t)(nl2 - subj), err, sizeof(err));
            sl -= (size_t)(nl2 - subj) + 1;
            subj = nl2 + 1;
        }
        int f = match_paths_find(ps, subj, sl);
        if (f >= (int)match_paths_count(ps) || (i < 0 && match_paths_count(ps) == 0 && f >= 0))
            abort();
        if (f >= 0) {
            size_t bl;
            if (match_paths_backends(ps, (size_t)f, &bl) == NULL || bl == 0)
                abort();
        }
        match_paths_free(ps);
    } else if (mode == 2) {
        struct match_addr a[MATCH_MAX_BACKENDS];
        int c = match_backends_split(s, n, a, MATCH_MAX_BACKENDS, err, sizeof(err));
        if (c > MATCH_MAX_BACKENDS)
            abort();
        for (int i = 0; i < c; i++)
            if (a[i].port < 1 || a[i].port > 65535 || a[i].name[0] == '\0')
                abort();
    } else {
        const char *eq = memchr(s, '=', n);
        if (eq == NULL)
            return 0;
        size_t fl = (size_t)(eq - s);
        struct match_domain md;
        match_domain_init(&md);
        (void)match_domain_field(&md, s, fl, eq + 1, n - fl - 1, err, sizeof(err));
        (void)match_domain_check(&md, err, sizeof(err));
        struct tenant_policy p = {-1, CAP_BLOCK, 0, 0};
        (void)match_tenant_field(&p, s, fl, eq + 1, n - fl - 1, err, sizeof(err));
        if (p.cap_bytes < -1 || p.throttle_bps < 0 || (p.suspended != 0 && p.suspended != 1))
            abort();
    }
    return 0;
}
