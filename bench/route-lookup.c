/*
 * bench/route-lookup.c — the CPU of a hot route lookup, in process.
 *
 * Built by bench/routing.sh against a build tree's libtg.a (not part of the
 * project's build).  Against a Redis loaded by bench/redis-load-domains.py,
 * it creates one worker's routing context with the default settings (plus
 * --cache N), looks up the hot set h0..h<HOT-1>.<zone> once to fill the
 * cache, then times route_lookup() with a callback that does what the
 * proxy does with an answer (holds the entry, copies the tenant name, picks
 * a backend and reports on it, releases the entry):
 *
 *   static       h0 through a context with one static route (no Redis)
 *   redis-1      h0 through Redis routing, over and over
 *   redis-seq    the hot set in order (what bench/routing.sh's wrk rotation does)
 *   static-rand  h0 through the static route, reading the names at random
 *   redis-rand   the hot set in a random order (no help from the hardware prefetcher)
 *
 * Every mode reads a host name of the set from the same array (in order, or
 * at random for the two -rand modes; static and redis-1 then look up h0), so
 * that redis-seq - static and redis-rand - static-rand are the lookup's own
 * cost.  The event loop runs every 256 lookups, as a worker's would.  Rounds
 * are interleaved; the output is one line per mode with the median ns per
 * lookup, then
 *   LOOKUP static=... redis1=... seq=... static_rand=... rand=... (medians)
 *
 * Usage: route-lookup --port P [--hot 100000] [--zone bench.test]
 *            [--iters 2000000] [--rounds 5] [--cache N]
 */
#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "routing/route.h"

static long answered, routed;
static struct route_ctx *cur;

/* What proxy/conn.c does with a routed answer, minus the I/O. */
static void got(void *arg, const struct route_result *res)
{
    char *tenant = arg;
    answered++;
    if (res->status != ROUTE_OK)
        return;
    routed++;
    struct route_entry *e = res->entry;
    route_entry_ref(e);
    size_t tl = strlen(res->tenant);
    memcpy(tenant, res->tenant, tl < 127 ? tl : 127);
    struct route_target t;
    uint64_t tried = 0;
    if (route_pick(cur, res->backends, &tried, &t) == 0)
        route_report(cur, res->backends, &t, ROUTE_OUTCOME_OK);
    route_entry_unref(e);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int port = 0, rounds = 5;
    long hot = 100000, iters = 2000000;
    size_t cache = 0;
    const char *zone = "bench.test";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--hot") == 0)
            hot = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--zone") == 0)
            zone = argv[i + 1];
        else if (strcmp(argv[i], "--iters") == 0)
            iters = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--cache") == 0)
            cache = (size_t)atol(argv[i + 1]);
    }
    if (port <= 0 || hot < 1 || iters < 1 || rounds < 1 || rounds > 100) {
        fprintf(stderr, "usage: route-lookup --port P [--hot N] [--zone Z] [--iters N] [--rounds N] [--cache N]\n");
        return 2;
    }
    char url[64], err[256], h0[300];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    snprintf(h0, sizeof(h0), "h0.%s", zone);

    struct tg_config rcfg, scfg;
    cfg_defaults(&rcfg);
    rcfg.redis_url = url;
    if (cache)
        rcfg.route_cache_size = cache;
    cfg_defaults(&scfg);
    struct cfg_route sr = {h0, (char *)"127.0.0.1:9", 0};
    scfg.routes = &sr;
    scfg.n_routes = 1;
    struct event_base *base = event_base_new();
    struct route_ctx *rrc = base ? route_ctx_new(base, &rcfg, NULL, 0, err, sizeof(err)) : NULL;
    struct route_ctx *src = rrc ? route_ctx_new(NULL, &scfg, NULL, 1, err, sizeof(err)) : NULL;
    if (src == NULL) {
        fprintf(stderr, "route-lookup: %s\n", base ? err : "no event base");
        return 1;
    }
    double t0 = now_s();
    while (route_degraded() && now_s() - t0 < 10)
        event_base_loop(base, EVLOOP_ONCE);
    for (int i = 0; i < 50; i++)             /* let CLIENT TRACKING be confirmed */
        event_base_loop(base, EVLOOP_NONBLOCK);

    /* The hot set's names, and a random order over them. */
    size_t stride = strlen(zone) + 16;
    char *names = malloc((size_t)hot * stride);
    size_t *lens = malloc((size_t)hot * sizeof(*lens));
    long *order = malloc((size_t)iters * sizeof(*order));
    if (names == NULL || lens == NULL || order == NULL)
        return 1;
    for (long i = 0; i < hot; i++)
        lens[i] = (size_t)snprintf(names + (size_t)i * stride, stride, "h%ld.%s", i, zone);
    uint64_t x = 88172645463325252ULL;
    for (long k = 0; k < iters; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order[k] = (long)(x % (uint64_t)hot);
    }

    /*
     * Fill: every hot host once, at most 500 in flight; twice, because the
     * records fetched before CLIENT TRACKING was confirmed are refetched.
     */
    char tenant[128];
    cur = rrc;
    for (int pass = 0; pass < 2; pass++) {
        long sent = 0;
        answered = routed = 0;
        t0 = now_s();
        while (answered < hot && now_s() - t0 < 120) {
            while (sent < hot && sent - answered < 500) {
                route_lookup(rrc, names + (size_t)sent * stride, lens[sent], "/small.txt", 10, got, tenant);
                sent++;
            }
            if (answered < hot)
                event_base_loop(base, EVLOOP_ONCE);
        }
        if (routed < hot) {
            fprintf(stderr, "route-lookup: only %ld of %ld hot hosts routed\n", routed, hot);
            return 1;
        }
    }

    enum { M_STATIC, M_ONE, M_SEQ, M_SRAND, M_RAND, M_N };
    static const char *const mname[M_N] = {"static", "redis-1", "redis-seq", "static-rand", "redis-rand"};
    double *ns = calloc((size_t)rounds * M_N, sizeof(*ns));
    if (ns == NULL)
        return 1;
    char buf[300];
    for (int r = 0; r < rounds; r++) {
        for (int mi = 0; mi < M_N; mi++) {
            int m = (r % 2) ? M_N - 1 - mi : mi;
            struct route_ctx *rc = m == M_STATIC || m == M_SRAND ? src : rrc;
            cur = rc;
            long before_answered = 0;
            double a = now_s();
            for (long k = 0; k < iters; k++) {
                long i = m == M_RAND || m == M_SRAND ? order[k] : k % hot;
                const char *name = names + (size_t)i * stride;
                size_t len = lens[i];
                memcpy(buf, name, len);          /* every mode reads a name of the set */
                if (m == M_STATIC || m == M_ONE || m == M_SRAND) {
                    name = h0;
                    len = strlen(h0);
                } else {
                    name = buf;
                }
                if (route_lookup(rc, name, len, "/small.txt", 10, got, tenant) != NULL)
                    before_answered++;           /* not cached: a miss (reported below) */
                if ((k & 255) == 0)
                    event_base_loop(base, EVLOOP_NONBLOCK);
            }
            double dt = now_s() - a;
            ns[r * M_N + m] = dt / (double)iters * 1e9;
            if (before_answered)
                fprintf(stderr, "route-lookup: %s round %d: %ld of %ld lookups missed the cache\n", mname[m],
                        r + 1, before_answered, iters);
            for (int i = 0; i < 20; i++)
                event_base_loop(base, EVLOOP_NONBLOCK);
        }
    }
    double med[M_N];
    for (int m = 0; m < M_N; m++) {
        double v[100];
        for (int r = 0; r < rounds; r++)
            v[r] = ns[r * M_N + m];
        qsort(v, (size_t)rounds, sizeof(v[0]), cmp_double);
        med[m] = rounds % 2 ? v[rounds / 2] : (v[rounds / 2 - 1] + v[rounds / 2]) / 2;
        printf("%-11s %7.1f ns/lookup (median of %d rounds of %ld)\n", mname[m], med[m], rounds, iters);
    }
    printf("LOOKUP static=%.1f redis1=%.1f seq=%.1f static_rand=%.1f rand=%.1f\n", med[M_STATIC], med[M_ONE],
           med[M_SEQ], med[M_SRAND], med[M_RAND]);
    route_ctx_free(rrc);
    route_ctx_free(src);
    event_base_free(base);
    free(ns);
    free(order);
    free(lens);
    free(names);
    return 0;
}
