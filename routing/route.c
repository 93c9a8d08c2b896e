/*
 * route: the routing engine behind route.h.  One struct route_ctx per
 * worker: static routes from the config, and (Redis part) a cache, the
 * Redis connections and a health table, all private to the worker's loop.
 *
 * Static routes are resolved once at route_ctx_new()/route_ctx_reload()
 * (getaddrinfo is allowed at start-up only) and answered synchronously.
 */
#include "routing/route.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "proxy/log.h"
#include "routing/balance.h"
#include "routing/host.h"

/* Workers whose Redis is configured but down; route_degraded() reads it from any thread. */
static atomic_int route_degraded_workers;

struct route_entry {
    int refs;
    char *tenant;                  /* owned */
    int redirect_https;
    struct route_backends *set;    /* owned; the set when no path rule matches */
};

/* One static route: host -> entry (the entry is shared by every lookup). */
struct route_static {
    char host[HOST_MAX + 1];
    size_t host_len;
    struct route_entry *entry;     /* one reference owned by the table */
};

struct route_ctx {
    struct event_base *base;
    const struct tg_config *cfg;
    int worker_id;
    struct route_static *statics;  /* open-addressing table, n_slots slots */
    size_t n_slots;
    struct bal_health *health;
    double cooldown;
};

/* ---- time ---- */

static double route_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- entries ---- */

static void route_entry_destroy(struct route_entry *e)
{
    free(e->tenant);
    bal_set_free(e->set);
    free(e);
}

void route_entry_ref(struct route_entry *e)
{
    if (e)
        e->refs++;
}

void route_entry_unref(struct route_entry *e)
{
    if (e && --e->refs == 0)
        route_entry_destroy(e);
}

size_t route_backends_count(const struct route_backends *set)
{
    return set ? set->n : 0;
}

int route_degraded(void)
{
    return atomic_load_explicit(&route_degraded_workers, memory_order_relaxed) > 0;
}

/* ---- backends ---- */

/*
 * Fills b from "name" and port: an IP literal directly, else through
 * getaddrinfo (start-up only), preferring an IPv4 address.  0 / -1.
 */
static int route_resolve_static(const char *name, int port, struct bal_backend *b, char *err, size_t errlen)
{
    struct sockaddr_in *in = (struct sockaddr_in *)&b->addr;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&b->addr;
    memset(&b->addr, 0, sizeof(b->addr));
    if (inet_pton(AF_INET, name, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        b->addrlen = sizeof(*in);
        return 0;
    }
    if (inet_pton(AF_INET6, name, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        b->addrlen = sizeof(*in6);
        return 0;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char pbuf[8];
    snprintf(pbuf, sizeof(pbuf), "%d", port);
    int rc = getaddrinfo(name, pbuf, &hints, &res);
    if (rc != 0 || res == NULL) {
        snprintf(err, errlen, "cannot resolve backend %.100s: %s", name, gai_strerror(rc));
        return -1;
    }
    const struct addrinfo *pick = res;
    for (const struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    if (pick->ai_addrlen > sizeof(b->addr)) {
        freeaddrinfo(res);
        snprintf(err, errlen, "cannot resolve backend %.100s: address too long", name);
        return -1;
    }
    memcpy(&b->addr, pick->ai_addr, pick->ai_addrlen);
    b->addrlen = (socklen_t)pick->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/*
 * Builds a backend set from "host:port[,host:port...]" resolving names
 * synchronously (static routes only).  NULL with err on a bad list.
 */
static struct route_backends *route_static_backends(const char *list, char *err, size_t errlen)
{
    size_t count = 0;
    const char *p = list;
    for (;;) {
        count++;
        const char *c = strchr(p, ',');
        if (c == NULL)
            break;
        p = c + 1;
    }
    if (count > BAL_MAX_BACKENDS) {
        snprintf(err, errlen, "too many backends (at most %d)", BAL_MAX_BACKENDS);
        return NULL;
    }
    struct route_backends *set = bal_set_new(count, BAL_ROUND_ROBIN);
    if (set == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p = list;
    for (size_t i = 0; i < count; i++) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        while (len > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        char name[HOST_MAX + 1];
        int port;
        if (len >= sizeof(set->b[i].name) ||
            host_parse_hostport(p, len, name, sizeof(name), &port) < 0) {
            snprintf(err, errlen, "bad backend address '%.*s' (want host:port)", (int)(len > 200 ? 200 : len), p);
            bal_set_free(set);
            return NULL;
        }
        memcpy(set->b[i].name, p, len);
        set->b[i].name[len] = '\0';
        if (route_resolve_static(name, port, &set->b[i], err, errlen) < 0) {
            bal_set_free(set);
            return NULL;
        }
        p = c ? c + 1 : p + len;
    }
    return set;
}

/* ---- static routes ---- */

static size_t route_hash(const char *s, size_t n)
{
    uint64_t x = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        x ^= (unsigned char)s[i];
        x *= 1099511628211ULL;
    }
    return (size_t)x;
}

static void route_statics_free(struct route_static *t, size_t n_slots)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < n_slots; i++)
        if (t[i].entry)
            route_entry_unref(t[i].entry);
    free(t);
}

static const struct route_static *route_static_find(const struct route_ctx *rc, const char *host, size_t len)
{
    if (rc->n_slots == 0)
        return NULL;
    size_t mask = rc->n_slots - 1;
    for (size_t i = route_hash(host, len) & mask;; i = (i + 1) & mask) {
        const struct route_static *s = &rc->statics[i];
        if (s->entry == NULL)
            return NULL;
        if (s->host_len == len && memcmp(s->host, host, len) == 0)
            return s;
    }
}

/* Builds the static table from cfg into *out / *out_slots.  0 / -1 with err. */
static int route_statics_build(const struct tg_config *cfg, struct route_static **out, size_t *out_slots,
                               char *err, size_t errlen)
{
    *out = NULL;
    *out_slots = 0;
    if (cfg->n_routes == 0)
        return 0;
    size_t slots = 8;
    while (slots < cfg->n_routes * 2)
        slots *= 2;
    struct route_static *t = calloc(slots, sizeof(*t));
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t mask = slots - 1;
    for (size_t r = 0; r < cfg->n_routes; r++) {
        const struct cfg_route *cr = &cfg->routes[r];
        char host[HOST_MAX + 1];
        int hl = cr->host ? host_normalise(cr->host, strlen(cr->host), host) : -1;
        if (hl < 0) {
            snprintf(err, errlen, "route %zu: invalid host '%s'", r + 1, cr->host ? cr->host : "");
            route_statics_free(t, slots);
            return -1;
        }
        char berr[256];
        struct route_backends *set = route_static_backends(cr->backends ? cr->backends : "", berr, sizeof(berr));
        if (set == NULL) {
            snprintf(err, errlen, "route %.100s: %.200s", host, berr);
            route_statics_free(t, slots);
            return -1;
        }
        struct route_entry *e = calloc(1, sizeof(*e));
        char *tenant = strdup("default");
        if (e == NULL || tenant == NULL) {
            free(e);
            free(tenant);
            bal_set_free(set);
            route_statics_free(t, slots);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        e->refs = 1;
        e->tenant = tenant;
        e->set = set;
        size_t i = route_hash(host, (size_t)hl) & mask;
        while (t[i].entry && !(t[i].host_len == (size_t)hl && memcmp(t[i].host, host, (size_t)hl) == 0))
            i = (i + 1) & mask;
        if (t[i].entry)                       /* a later --route for the same host wins */
            route_entry_unref(t[i].entry);
        memcpy(t[i].host, host, (size_t)hl + 1);
        t[i].host_len = (size_t)hl;
        t[i].entry = e;
    }
    *out = t;
    *out_slots = slots;
    return 0;
}

/* ---- context ---- */

struct route_ctx *route_ctx_new(struct event_base *base, const struct tg_config *cfg,
                                int worker_id, char *err, size_t errlen)
{
    struct route_ctx *rc = calloc(1, sizeof(*rc));
    if (rc == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    rc->base = base;
    rc->cfg = cfg;
    rc->worker_id = worker_id;
    rc->cooldown = cfg->backend_cooldown;
    rc->health = bal_health_new();
    if (rc->health == NULL) {
        snprintf(err, errlen, "out of memory");
        free(rc);
        return NULL;
    }
    if (route_statics_build(cfg, &rc->statics, &rc->n_slots, err, errlen) < 0) {
        bal_health_free(rc->health);
        free(rc);
        return NULL;
    }
    return rc;
}

int route_ctx_reload(struct route_ctx *rc, const struct tg_config *cfg, char *err, size_t errlen)
{
    struct route_static *t;
    size_t slots;
    if (route_statics_build(cfg, &t, &slots, err, errlen) < 0)
        return -1;
    route_statics_free(rc->statics, rc->n_slots);
    rc->statics = t;
    rc->n_slots = slots;
    rc->cfg = cfg;
    rc->cooldown = cfg->backend_cooldown;
    return 0;
}

void route_ctx_free(struct route_ctx *rc)
{
    if (rc == NULL)
        return;
    route_statics_free(rc->statics, rc->n_slots);
    bal_health_free(rc->health);
    free(rc);
}

/* ---- lookup ---- */

static void route_answer(route_cb cb, void *arg, enum route_status st, struct route_entry *e,
                         const struct route_backends *set, const char *detail)
{
    struct route_result res;
    memset(&res, 0, sizeof(res));
    res.status = st;
    res.policy.cap_bytes = -1;
    res.detail = detail;
    if (e) {
        res.entry = e;
        res.tenant = e->tenant;
        res.backends = set ? set : e->set;
        res.redirect_https = e->redirect_https;
    }
    cb(arg, &res);
}

struct route_lookup *route_lookup(struct route_ctx *rc, const char *host, size_t host_len,
                                  const char *path, size_t path_len, route_cb cb, void *arg)
{
    (void)path;
    (void)path_len;
    char h[HOST_MAX + 1];
    int hl = host_normalise(host, host_len, h);
    if (hl < 0) {
        route_answer(cb, arg, ROUTE_BAD_HOST, NULL, NULL, "invalid Host");
        return NULL;
    }
    const struct route_static *s = route_static_find(rc, h, (size_t)hl);
    if (s) {
        route_answer(cb, arg, ROUTE_OK, s->entry, NULL, NULL);
        return NULL;
    }
    route_answer(cb, arg, ROUTE_NOT_FOUND, NULL, NULL, "unknown host");
    return NULL;
}

void route_lookup_cancel(struct route_lookup *lk)
{
    (void)lk;
}

/* ---- balancing ---- */

int route_pick(struct route_ctx *rc, const struct route_backends *set, uint64_t *tried,
               struct route_target *out)
{
    /* The set's round-robin cursor is the only mutable part of an entry (worker-private). */
    int i = bal_pick(rc->health, (struct route_backends *)set, tried, route_now());
    if (i < 0)
        return -1;
    const struct bal_backend *b = &set->b[i];
    memcpy(&out->addr, &b->addr, sizeof(out->addr));
    out->addrlen = b->addrlen;
    out->index = (unsigned)i;
    memcpy(out->name, b->name, sizeof(out->name));
    return 0;
}

void route_report(struct route_ctx *rc, const struct route_backends *set,
                  const struct route_target *t, enum route_outcome outcome)
{
    if (outcome == ROUTE_OUTCOME_CONNECT_FAIL || outcome == ROUTE_OUTCOME_CONNECT_TIMEOUT)
        log_debug("%s: backend %s: connect %s, cooling down %.1fs", __func__, t->name,
                  outcome == ROUTE_OUTCOME_CONNECT_FAIL ? "failed" : "timed out", rc->cooldown);
    bal_report(rc->health, set, t->index, outcome, route_now(), rc->cooldown);
}
