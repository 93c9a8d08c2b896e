/*
 * route: the routing engine behind route.h.  One struct route_ctx per
 * worker: static routes from the config and, with --redis, a cache, two
 * Redis connections, an evdns resolver and a backend health table, all
 * private to the worker's event loop (no locks on the request path).
 *
 * Static routes are built at route_ctx_new()/route_ctx_reload() from the
 * addresses the main thread resolved once per configuration
 * (route_addrs_resolve: getaddrinfo never runs on a worker) and answered
 * synchronously.
 *
 * Redis lookups (schema in ../shared/CONTRACT.md):
 *   - A miss starts one "fetch" per host; concurrent lookups of the same
 *     host wait on it (coalescing).  A fetch pipelines, back to back on the
 *     main connection: HGETALL <p>domain:<host>, HGETALL <p>domain:*.<zone>,
 *     LRANGE <p>paths:<host>, LRANGE <p>paths:*.<zone> and, when the cached
 *     pattern list is not fresh, LRANGE <p>patterns, each through
 *     route_read_lua (a key over 32 MiB is refused unread).  When the replies are
 *     in, the match is decided (exact, wildcard, patterns), then backend
 *     names are resolved (the hosts file, hosts.c, then evdns; a name being
 *     asked is asked once, whatever the number of fetches needing it) and
 *     the tenant policy fetched (HGETALL
 *     <p>tenant:<t>) if not cached, in parallel.  Replies are parsed by
 *     match.c; nothing from Redis is trusted.
 *   - Results go into three bounded caches (cache.c, CLOCK eviction): routes
 *     (cfg->route_cache_size), tenant policies and unknown or bad-data hosts
 *     (a quarter of that each), so that neither tenants nor a flood of random
 *     Host headers can push hot routes out.  Records are refcounted and
 *     stamped with their fetch time, the cache generation and the
 *     invalidation counters of the keys they were built from.
 *   - A hot lookup is laid out to touch few cache lines: a record is one
 *     64-byte-aligned block holding its key, freshness stamps, the route
 *     entry the proxy holds, the backend set and the tenant name; the cache
 *     reads the key from it (no key copy); a domain record keeps a
 *     reference to its tenant's record (no second hash lookup); and a key
 *     and its path rules share one invalidation counter.
 *   - Invalidation: a second connection subscribes to __redis__:invalidate
 *     and <p>events; the main connection turns on CLIENT TRACKING with
 *     REDIRECT to it and BCAST on our key prefixes (never the meter keys).
 *     An invalidated key bumps a counter in a fixed array indexed by the
 *     key's hash (rc->depgen): a record whose stamp no longer matches is
 *     stale.  A collision only costs an extra revalidation.  Any
 *     (re)connection bumps the generation (invalidations may have been lost);
 *     while tracking is not confirmed, records count as fresh for 1 s only.
 *   - The TTL is only a safety net while invalidations flow: a record whose
 *     TTL ran out (and nothing else) is served once more while a fetch in
 *     the background replaces it, for up to its TTL (at most
 *     ROUTE_REFRESH_GRACE) past it, so that a host used at least once a TTL
 *     never waits for its periodic revalidation.  A lost invalidation may
 *     thus be served for up to two TTLs, to the requests of one round trip.
 *   - Redis down or slow (redis.c's per-command deadline): records are
 *     served stale up to cfg->route_stale_max_age; without a record the
 *     answer is ROUTE_UNAVAILABLE.
 */
#include "routing/route.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "config/config.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "routing/balance.h"
#include "routing/cache.h"
#include "routing/host.h"
#include "routing/hosts.h"
#include "routing/match.h"
#include "routing/redis.h"
#include "routing/schema.h"

#define ROUTE_DEP_SLOTS   65536          /* invalidation counters per worker (power of two) */
#define ROUTE_KEY_MAX     SCHEMA_KEY_MAX /* any Redis key we build */
#define ROUTE_PREFIX_MAX  SCHEMA_PREFIX_MAX
#define ROUTE_DNS_CACHE   4096           /* resolved backend names per worker */
#define ROUTE_NOTRACK_TTL 1.0            /* freshness while invalidations are not flowing */
#define ROUTE_REFRESH_GRACE 60.0         /* a record past its TTL served while it is refetched, at most (s) */
#define ROUTE_PENDING_BUCKETS 256
#define ROUTE_HOSTS_FILE  "/etc/hosts"
#define ROUTE_HOSTS_CHECK 1.0            /* the hosts file is stat()ed at most this often per worker (s) */
/*
 * The resolution delay (RFC 8305 §3, there 50 ms for AAAA after A): once
 * one of A and AAAA has answered with addresses, the other is waited for
 * this long at most, then cancelled and the name answered with what came
 * (the route's TTL is then the answered family's).  Both queries go to the
 * same resolver at once, so an answer that comes later than this is one
 * the resolver had to chase upstream or will never give (a server that
 * drops AAAA queries: 2 s x 2 attempts of evdns); 200 ms covers a
 * recursion to a distant authoritative server for the slower family while
 * bounding the first request's wait.  Longer than RFC 8305's 50 ms because
 * a family cut off is missing from the route for a whole TTL, not for one
 * connection.  A family that failed (no A record: an IPv6-only host) does
 * not start it: the other is waited for, as without the delay.
 */
#define ROUTE_RESOLUTION_DELAY 0.2

/*
 * Every address a backend name resolves to is a backend of its own (as
 * nginx makes each address of a name a peer): a name that resolves to an
 * IPv4 and an IPv6 address (localhost, a dual-stack host) gives two entries
 * of the set, both named "host:port", so that route_pick() moves to the
 * other address when one refuses and passive health cools the refusing one
 * down.  At most ROUTE_ADDRS_PER_NAME per name, IPv4 first, and never more
 * than BAL_MAX_BACKENDS in a set (each name keeps at least one address).
 */
#define ROUTE_ADDRS_PER_NAME 8

union route_sa {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/* The addresses of one name, port 0. */
struct route_ips {
    unsigned n;
    union route_sa a[ROUTE_ADDRS_PER_NAME];
};

/* Workers whose Redis is configured but down; route_degraded() reads it from any thread. */
static atomic_int route_degraded_workers;

/*
 * What a routed request holds (route_entry_ref).  A static route's entry is
 * allocated on its own; a Redis domain record embeds its entry (in_rec),
 * whose refs then count the holders of the whole record.  Tenant records
 * use the same header for their refcount and policy.
 */
struct route_entry {
    int refs;
    uint8_t in_rec;                /* the first member of a struct route_rec */
    uint8_t redirect_https;
    uint16_t n_paths;
    union {
        struct {
            const char *tenant;    /* NUL-terminated: inside the record, or owned (static) */
            struct route_backends *set;        /* the set when no path rule matches: owned (static), or a
                                                  shared set (route_pset) of the record */
            struct match_paths *paths;         /* owned, may be NULL (Redis path rules) */
            struct route_backends **path_sets; /* owned, one per path rule */
        };
        struct tenant_policy policy;           /* tenant records */
    };
};

/* One static route: host -> entry (the entry is shared by every lookup). */
struct route_static {
    char host[HOST_MAX + 1];
    size_t host_len;
    struct route_entry *entry;     /* one reference owned by the table */
};

enum { REC_DOMAIN = 1, REC_TENANT = 2 };
enum {
    REC_STALE = 1,                 /* a key it was built from changed (found by name on invalidation) */
    REC_UNCACHED = 2,              /* its cache let go of it (replaced or evicted) */
};

/*
 * A cached answer: a domain record (key: the host) or a tenant record (key:
 * the tenant id).  One 64-byte-aligned block: the first cache line holds
 * what a hit reads first, then the stamps, the key and, for a routed
 * domain, the tenant name (a host and tenant of 30 bytes together end in
 * the second line).  The backend set is shared with the other routes to
 * the same backends (route_pset).  Refcounted through e.refs: the cache
 * holds one reference, a fetch in flight may hold one, requests hold them
 * through route_entry_ref(), a domain record holds one on its tenant's
 * record.
 */
struct route_rec {
    struct route_entry e;          /* domain OK: the entry; tenant: the policy */
    uint32_t gen;
    uint8_t kind;
    uint8_t status;                /* domain: enum route_status OK, NOT_FOUND or BAD_DATA */
    uint8_t ndeps;
    uint8_t flags;                 /* REC_STALE, REC_UNCACHED */
    double expires;
    union {
        struct route_rec *trec;    /* domain OK: the tenant record last used (a reference), may be NULL */
        const char *detail;        /* domain not OK: static string */
    };
    /* second cache line */
    double fetched;                /* when the fetch was sent (monotonic s) */
    uint32_t dep_val[3];
    uint16_t dep_slot[3];
    uint16_t klen;
    char key[];                    /* NUL-terminated */
};

/* What a hit reads first fits the record's first cache line. */
_Static_assert(offsetof(struct route_rec, fetched) == 64, "route_rec: hot fields span one cache line");

/*
 * Backend sets of Redis routes are interned per worker: routes to the same
 * backends (same lb, names and resolved addresses) share one set, so that a
 * record stays two cache lines long, a popular set stays in the CPU caches
 * and its round-robin cursor is shared.  A set is counted by the records
 * that use it and leaves the pool with the last of them.
 */
struct route_pool;

struct route_pset {
    int refs;
    uint64_t hash;
    struct route_pool *pool;       /* NULL: not interned (yet, or the ctx is gone) */
    struct route_pset *next;       /* pool chain */
    /* the struct route_backends follows, at ROUTE_PSET_OFF */
};

#define ROUTE_PSET_OFF ((sizeof(struct route_pset) + 15) & ~(size_t)15)

struct route_pool {
    struct route_pset **b;
    size_t mask;
    size_t count;
};

/* The compiled tg:patterns list (one per worker, replaced as a whole). */
struct route_pats {
    struct match_pattern **p;
    size_t n;
    const char *broken;            /* why the key is unusable (wrong type, too large): pattern-stage hosts get BAD_DATA */
    double fetched, expires;
    uint32_t gen, dep_val;
};

/* Parsed tg:domain:<...> reply, copied out of the hiredis reply. */
struct route_draft {
    int present, bad;
    char *tenant;                  /* owned */
    char *backends;                /* owned */
    int lb, redirect_https;
    char err[160];
};

enum { CMD_EXACT, CMD_WILD, CMD_PEXACT, CMD_PWILD, CMD_PAT, CMD_TENANT, CMD_N };
enum { PH_DOMAIN, PH_RESOLVE, PH_DONE };

struct route_fetch;

struct route_cmd {
    struct route_fetch *f;
    int which;
};

/*
 * A pending backend-name resolution: one per name, shared by every fetch
 * that needs the name while it is asked.  Once the name is answered (done)
 * it leaves rc->dns_reqs for rc->dns_left, where it waits for the callbacks
 * of the queries it cancelled (evdns calls them later, with
 * DNS_ERR_CANCEL) before it is freed.
 */
struct route_dns {
    struct route_dns *next, *prev; /* rc->dns_reqs, or rc->dns_left once done */
    struct route_fetch **fs;       /* the fetches waiting for the name (none once done) */
    size_t nf, capf;
    struct route_ctx *rc;
    char name[HOST_MAX + 1];
    int done;                      /* the name is answered */
    int pending;                   /* A and AAAA callbacks to come */
    int sending;                   /* route_dns_query is sending them */
    int called[2];                 /* the A, the AAAA callback came */
    int ttl;                       /* shortest TTL of the answers so far (-1: none) */
    double asked;                  /* when the queries went out (route_now) */
    struct evdns_request *req[2];  /* the A and AAAA queries until they call back (or are cancelled) */
    struct event *delay;           /* the resolution delay, once one family answered */
    struct route_ips v4, v6;       /* the A and AAAA answers */
};

/* A resolved name (addresses with port 0), cached in rc->dns for its DNS TTL. */
struct route_dns_rec {
    int ok;
    struct route_ips ips;
    double expires;
    double stored;                 /* when (monotonic s): records older than rc->dns_flushed are expired */
};

/* One lookup waiting on a fetch (route.h's struct route_lookup). */
struct route_lookup {
    struct route_lookup *next, *prev;
    struct route_fetch *f;
    route_cb cb;
    void *arg;
    size_t path_len;
    char path[];
};

struct route_fetch {
    struct route_ctx *rc;
    struct route_fetch *hnext;     /* pending map chain */
    struct route_lookup *waiters;
    char host[HOST_MAX + 1];
    size_t hl;
    const char *zone;              /* into host, NULL when none */
    size_t zl;
    int phase;
    int outstanding;               /* Redis commands + DNS requests in flight */
    int in_advance;
    int failed;                    /* a domain-phase command failed (Redis error) */
    int tenant_failed;
    int need_domain;
    double started;
    double dns_expires;            /* earliest expiry of the DNS answers the entry uses (0: none) */
    uint32_t gen;
    uint32_t slot[CMD_N], val[CMD_N];
    struct route_cmd cmds[CMD_N];
    struct route_draft exact, wild;
    struct match_paths *paths_exact, *paths_wild;
    char paths_err_exact[160], paths_err_wild[160];
    struct route_rec *drec;        /* result (reference) */
    struct route_rec *trec;        /* fetched tenant policy (reference) */
    char tenant[MATCH_MAX_TENANT + 1];
};

/* Per-worker counters: written by the worker only, read by the admin thread. */
struct route_counters {
    uint64_t hits, misses, redis_errors, bad_data, stale_served, coalesced, invalidations, refreshes;
    uint64_t entries, evictions;
};

struct route_ctx {
    struct event_base *base;
    const struct tg_config *cfg;
    int worker_id;
    struct route_static *statics;  /* open-addressing table, n_slots slots */
    size_t n_slots;
    struct bal_health *health;
    double cooldown;
    char prefix[ROUTE_PREFIX_MAX + 1];
    size_t prefix_len;

    /* Redis part (all NULL / 0 without --redis). */
    struct redis_conn *main, *sub;
    int redis_up;                  /* main connection up (degraded accounting) */
    int degraded_counted;
    long long sub_id;
    int sub_ready;                 /* subscribed to the invalidation channel */
    int tracking;                  /* CLIENT TRACKING confirmed on the main connection */
    unsigned tracking_seq;
    struct cache *routes;          /* domain records that route (cfg->route_cache_size) */
    struct cache *tenants;         /* tenant records (a quarter of that) */
    struct cache *neg;             /* unknown and bad-data hosts (a quarter of that) */
    struct cache *dns;
    struct route_pool *pool;       /* shared backend sets */
    struct evdns_base *dnsb;
    struct route_dns *dns_reqs;
    struct route_dns *dns_left;    /* answered, waiting for cancelled queries' callbacks */
    double dns_flushed;            /* DNS records stored before this are expired (reload) */
    double hosts_next;             /* when the hosts file is stat()ed next */
    struct stat hosts_st;          /* what it was when last loaded (zeroed: missing) */
    struct hosts *hosts;           /* its table (NULL: none loaded, or it could not be read) */
    char hosts_path[256];          /* ROUTE_HOSTS_FILE, or TOLLGATE_TEST_HOSTS_FILE */
    char resolv_path[256];         /* TOLLGATE_TEST_RESOLV_CONF, or empty: the system's resolv.conf */
    struct route_pats *pats;
    struct route_fetch *pending[ROUTE_PENDING_BUCKETS];
    uint32_t gen;
    uint32_t *depgen;              /* ROUTE_DEP_SLOTS counters */
    int closing;
    struct route_counters m;
    struct route_ctx *reg_next;    /* metrics registry */
};

/* ---- time ---- */

static double route_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * The same clock at the kernel tick's resolution (a few ms, never ahead of
 * route_now()), without reading the TSC: what a cache hit checks freshness
 * against (TTLs are seconds; an answer may be used a tick past its TTL),
 * and what passive health measures cool-downs with (seconds too).
 */
static double route_now_coarse(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
        return route_now();
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- entries ---- */

static void route_rec_destroy(struct route_rec *r);

/* Frees the path rules of an entry (and their sets). */
static void route_entry_drop_paths(struct route_entry *e)
{
    for (size_t i = 0; i < e->n_paths; i++)
        bal_set_free(e->path_sets[i]);
    free(e->path_sets);
    match_paths_free(e->paths);
    e->path_sets = NULL;
    e->paths = NULL;
    e->n_paths = 0;
}

/* Frees a standalone (static route) entry. */
static void route_entry_destroy(struct route_entry *e)
{
    free((char *)e->tenant);
    bal_set_free(e->set);
    route_entry_drop_paths(e);
    free(e);
}

void route_entry_ref(struct route_entry *e)
{
    if (e)
        e->refs++;
}

void route_entry_unref(struct route_entry *e)
{
    if (e && --e->refs == 0) {
        if (e->in_rec)
            route_rec_destroy((struct route_rec *)e);
        else
            route_entry_destroy(e);
    }
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

/* Adds an IPv4 or IPv6 address (its port cleared) to ips unless full or already there.  1 when added. */
static int route_ips_add(struct route_ips *ips, const struct sockaddr *sa, socklen_t len)
{
    union route_sa a;
    memset(&a, 0, sizeof(a));
    if (sa->sa_family == AF_INET && len >= sizeof(a.in)) {
        memcpy(&a.in, sa, sizeof(a.in));
        a.in.sin_port = 0;
    } else if (sa->sa_family == AF_INET6 && len >= sizeof(a.in6)) {
        memcpy(&a.in6, sa, sizeof(a.in6));
        a.in6.sin6_port = 0;
        a.in6.sin6_flowinfo = 0;
    } else {
        return 0;
    }
    if (ips->n >= ROUTE_ADDRS_PER_NAME)
        return 0;
    for (unsigned i = 0; i < ips->n; i++)
        if (memcmp(&ips->a[i], &a, sizeof(a)) == 0)
            return 0;
    ips->a[ips->n++] = a;
    return 1;
}

/* Puts the IPv4 addresses first, keeping the order within each family. */
static void route_ips_order(struct route_ips *ips)
{
    struct route_ips o;
    o.n = 0;
    for (int pass = 0; pass < 2; pass++)
        for (unsigned i = 0; i < ips->n; i++)
            if ((ips->a[i].sa.sa_family == AF_INET) == (pass == 0))
                o.a[o.n++] = ips->a[i];
    *ips = o;
}

/* Sets b's address to a with port (host order). */
static void route_ip_to_backend(const union route_sa *a, int port, struct bal_backend *b)
{
    memset(&b->addr, 0, sizeof(b->addr));
    if (a->sa.sa_family == AF_INET) {
        memcpy(&b->addr, &a->in, sizeof(a->in));
        ((struct sockaddr_in *)&b->addr)->sin_port = htons((uint16_t)port);
        b->addrlen = sizeof(a->in);
    } else {
        memcpy(&b->addr, &a->in6, sizeof(a->in6));
        ((struct sockaddr_in6 *)&b->addr)->sin6_port = htons((uint16_t)port);
        b->addrlen = sizeof(a->in6);
    }
}

/*
 * Fills ips (port 0) when name is an IPv4 or IPv6 literal or a localhost
 * name.  1 when filled, 0 when name must be resolved.  RFC 6761 §6.3:
 * localhost names are loopback without asking the resolver (a minimal
 * system may not even have /etc/hosts): 127.0.0.1 and ::1, as curl and
 * systemd-resolved answer, so that a server listening on either loopback
 * (a Node >= 17 dev server listens on ::1 only) is reached.  One trailing
 * dot is allowed ("localhost.").
 */
static int route_addr_literal(const char *name, struct route_ips *ips)
{
    union route_sa a;
    size_t nl = strlen(name);
    if (nl > 1 && name[nl - 1] == '.')   /* "localhost." is localhost (an absolute name) */
        nl--;
    ips->n = 0;
    memset(&a, 0, sizeof(a));
    if ((nl == 9 && strncasecmp(name, "localhost", 9) == 0) ||
        (nl > 10 && strncasecmp(name + nl - 10, ".localhost", 10) == 0)) {
        a.in.sin_family = AF_INET;
        a.in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ips->a[ips->n++] = a;
        memset(&a, 0, sizeof(a));
        a.in6.sin6_family = AF_INET6;
        a.in6.sin6_addr = in6addr_loopback;
        ips->a[ips->n++] = a;
        return 1;
    }
    if (inet_pton(AF_INET, name, &a.in.sin_addr) == 1) {
        a.in.sin_family = AF_INET;
        ips->a[ips->n++] = a;
        return 1;
    }
    if (inet_pton(AF_INET6, name, &a.in6.sin6_addr) == 1) {
        a.in6.sin6_family = AF_INET6;
        ips->a[ips->n++] = a;
        return 1;
    }
    return 0;
}

/*
 * How many addresses each of n names (naddr[i] resolved, at least 1 each)
 * gets in one set of at most BAL_MAX_BACKENDS: every name one, then the
 * others in list order while room is left.  take[i] filled; returns the
 * total.
 */
static size_t route_ips_share(size_t n, const unsigned *naddr, unsigned *take)
{
    size_t room = n < BAL_MAX_BACKENDS ? BAL_MAX_BACKENDS - n : 0, total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t extra = naddr[i] > 1 ? naddr[i] - 1 : 0;
        if (extra > room)
            extra = room;
        room -= extra;
        take[i] = (unsigned)(1 + extra);
        total += take[i];
    }
    return total;
}

/*
 * A set with every address of set's names: backend i of set (its name,
 * with port ports[i]) becomes the addresses ips[i] (route_ips_share()'s
 * share of them), in order.  The new set comes from newset(total, set->lb).
 * NULL on OOM.
 */
static struct route_backends *route_set_expand(const struct route_backends *set, const struct route_ips *ips,
                                               const int *ports,
                                               struct route_backends *(*newset)(size_t, int))
{
    unsigned naddr[BAL_MAX_BACKENDS], take[BAL_MAX_BACKENDS];
    for (size_t i = 0; i < set->n; i++)
        naddr[i] = ips[i].n;
    size_t total = route_ips_share(set->n, naddr, take);
    struct route_backends *out = newset(total, set->lb);
    if (out == NULL)
        return NULL;
    out->rr = set->rr;
    size_t k = 0;
    for (size_t i = 0; i < set->n; i++)
        for (unsigned j = 0; j < take[i] && j < ips[i].n; j++, k++) {
            snprintf(out->b[k].name, sizeof(out->b[k].name), "%s", set->b[i].name);
            route_ip_to_backend(&ips[i].a[j], ports[i], &out->b[k]);
        }
    return out;
}

/* One backend name of the static routes and the addresses it resolved to. */
struct route_addr {
    char name[HOST_MAX + 1];
    int port;
    size_t route;                  /* the first route naming it (for the error message) */
    struct route_ips ips;          /* port 0 */
};

/* Sorted by (name, port), no duplicates: looked up with bsearch. */
struct route_addrs {
    size_t n, cap;
    struct route_addr *a;
};

void route_addrs_free(struct route_addrs *a)
{
    if (a == NULL)
        return;
    free(a->a);
    free(a);
}

static int route_addr_cmp(const void *x, const void *y)
{
    const struct route_addr *a = x, *b = y;
    int c = strcmp(a->name, b->name);
    if (c == 0)
        c = (a->port > b->port) - (a->port < b->port);
    if (c == 0)
        c = (a->route > b->route) - (a->route < b->route);
    return c;
}

static int route_addr_key_cmp(const void *x, const void *y)
{
    const struct route_addr *k = x, *b = y;
    int c = strcmp(k->name, b->name);
    return c ? c : (k->port > b->port) - (k->port < b->port);
}

static const struct route_addr *route_addrs_find(const struct route_addrs *t, const char *name, int port)
{
    if (t == NULL || t->n == 0)
        return NULL;
    struct route_addr key;
    snprintf(key.name, sizeof(key.name), "%s", name);
    key.port = port;
    return bsearch(&key, t->a, t->n, sizeof(*t->a), route_addr_key_cmp);
}

/*
 * Resolves name:port through getaddrinfo (blocking: main thread only) into
 * out's addresses: every IPv4 and IPv6 address (at most
 * ROUTE_ADDRS_PER_NAME), IPv4 first.  0 / -1.
 */
static int route_addr_resolve(const char *name, int port, struct route_addr *out, char *err, size_t errlen)
{
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
    out->ips.n = 0;
    for (int pass = 0; pass < 2; pass++)          /* IPv4 first, so none is crowded out by IPv6 ones */
        for (const struct addrinfo *a = res; a; a = a->ai_next)
            if ((a->ai_family == AF_INET) == (pass == 0))
                route_ips_add(&out->ips, a->ai_addr, (socklen_t)a->ai_addrlen);
    freeaddrinfo(res);
    if (out->ips.n == 0) {
        snprintf(err, errlen, "cannot resolve backend %.100s: no IPv4 or IPv6 address", name);
        return -1;
    }
    return 0;
}

/*
 * Calls fn for each "host:port" of a backends list (commas, spaces around
 * them trimmed) with the address as written and its parsed name and port.
 * Returns the number of addresses, or -1 with err (a bad address, or fn's -1).
 */
typedef int (*route_addr_fn)(void *arg, size_t i, const char *item, size_t len, const char *name, int port,
                             char *err, size_t errlen);
static int route_list_each(const char *list, route_addr_fn fn, void *arg, char *err, size_t errlen)
{
    const char *p = list;
    for (size_t i = 0;; i++) {
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
        if (len >= sizeof(((struct bal_backend *)0)->name) ||
            host_parse_hostport(p, len, name, sizeof(name), &port) < 0) {
            snprintf(err, errlen, "bad backend address '%.*s' (want host:port)", (int)(len > 200 ? 200 : len), p);
            return -1;
        }
        if (fn && fn(arg, i, p, len, name, port, err, errlen) < 0)
            return -1;
        if (c == NULL)
            return (int)i + 1;
        p = c + 1;
    }
}

/* The route whose names route_addrs_collect() is gathering. */
struct route_collect {
    struct route_addrs *t;
    size_t route;
};

/* route_list_each() step of route_addrs_resolve(): notes a name (literals need no lookup). */
static int route_addrs_collect(void *arg, size_t i, const char *item, size_t len, const char *name, int port,
                               char *err, size_t errlen)
{
    struct route_collect *col = arg;
    struct route_addrs *t = col->t;
    struct route_ips probe;
    (void)i;
    (void)item;
    (void)len;
    if (route_addr_literal(name, &probe))
        return 0;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        struct route_addr *na = realloc(t->a, cap * sizeof(*na));
        if (na == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        t->a = na;
        t->cap = cap;
    }
    struct route_addr *e = &t->a[t->n++];
    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->port = port;
    e->route = col->route;
    return 0;
}

/* "ORIGIN HOST: msg" for route r of cfg. */
static void route_origin_err(const struct tg_config *cfg, size_t r, const char *msg, char *err, size_t errlen)
{
    char where[CFG_ERRLEN];
    cfg_route_origin(cfg, r, where, sizeof(where));
    snprintf(err, errlen, "%.300s %.260s: %.256s", where, cfg->routes[r].host ? cfg->routes[r].host : "", msg);
}

/*
 * Gathers every name of the static routes, sorts them (name, port, route),
 * keeps one of each (the first route naming it) and resolves those: one
 * getaddrinfo per distinct name, however many routes name it.
 */
struct route_addrs *route_addrs_resolve(const struct tg_config *cfg, char *err, size_t errlen)
{
    struct route_addrs *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char e2[256];
    for (size_t r = 0; r < cfg->n_routes; r++) {
        struct route_collect col = { t, r };
        const char *list = cfg->routes[r].backends ? cfg->routes[r].backends : "";
        if (route_list_each(list, route_addrs_collect, &col, e2, sizeof(e2)) < 0) {
            route_origin_err(cfg, r, e2, err, errlen);
            route_addrs_free(t);
            return NULL;
        }
    }
    if (t->n > 1)
        qsort(t->a, t->n, sizeof(*t->a), route_addr_cmp);
    size_t u = 0;
    for (size_t i = 0; i < t->n; i++)
        if (u == 0 || route_addr_key_cmp(&t->a[i], &t->a[u - 1]) != 0)
            t->a[u++] = t->a[i];
    t->n = u;
    for (size_t i = 0; i < t->n; i++) {
        struct route_addr *e = &t->a[i];
        if (route_addr_resolve(e->name, e->port, e, e2, sizeof(e2)) < 0) {
            route_origin_err(cfg, e->route, e2, err, errlen);
            route_addrs_free(t);
            return NULL;
        }
    }
    return t;
}

/* The set route_static_fill() names, its backends' addresses and ports, and where it finds names. */
struct route_fill {
    struct route_backends *set;
    struct route_ips *ips;
    int *ports;
    const struct route_addrs *addrs;
};

/* route_list_each() step of route_static_backends(): names backend i and finds its addresses. */
static int route_static_fill(void *arg, size_t i, const char *item, size_t len, const char *name, int port,
                             char *err, size_t errlen)
{
    const struct route_fill *fill = arg;
    struct bal_backend *b = &fill->set->b[i];
    memcpy(b->name, item, len);
    b->name[len] = '\0';
    fill->ports[i] = port;
    if (route_addr_literal(name, &fill->ips[i]))
        return 0;
    const struct route_addr *ra = route_addrs_find(fill->addrs, name, port);
    if (ra == NULL || ra->ips.n == 0) {
        snprintf(err, errlen, "backend %.100s was not resolved", name);
        return -1;
    }
    fill->ips[i] = ra->ips;
    return 0;
}

/*
 * Builds a backend set from "host:port[,host:port...]", names taken from
 * addrs (never resolved here: this runs on workers), one backend per
 * address of each name.  NULL with err.
 */
static struct route_backends *route_static_backends(const char *list, const struct route_addrs *addrs,
                                                    char *err, size_t errlen)
{
    int count = route_list_each(list, NULL, NULL, err, errlen);
    if (count < 0)
        return NULL;
    if (count > BAL_MAX_BACKENDS) {
        snprintf(err, errlen, "too many backends (at most %d)", BAL_MAX_BACKENDS);
        return NULL;
    }
    struct route_backends *names = bal_set_new((size_t)count, BAL_ROUND_ROBIN);
    struct route_ips *ips = calloc((size_t)count, sizeof(*ips));
    int ports[BAL_MAX_BACKENDS];
    struct route_backends *set = NULL;
    if (names == NULL || ips == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    struct route_fill fill = { names, ips, ports, addrs };
    if (route_list_each(list, route_static_fill, &fill, err, errlen) < 0)
        goto out;
    set = route_set_expand(names, ips, ports, bal_set_new);
    if (set == NULL)
        snprintf(err, errlen, "out of memory");
out:
    bal_set_free(names);
    free(ips);
    return set;
}

/* ---- static routes ---- */

/* The static table's slot hash is the cache's. */
static size_t route_hash(const char *s, size_t n)
{
    return (size_t)cache_hash(s, n);
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

/* The static route of host (hash: cache_hash of it), or NULL. */
static const struct route_static *route_static_find(const struct route_ctx *rc, const char *host, size_t len,
                                                    uint64_t hash)
{
    if (rc->n_slots == 0)
        return NULL;
    size_t mask = rc->n_slots - 1;
    for (size_t i = (size_t)hash & mask;; i = (i + 1) & mask) {
        const struct route_static *s = &rc->statics[i];
        if (s->entry == NULL)
            return NULL;
        if (s->host_len == len && memcmp(s->host, host, len) == 0)
            return s;
    }
}

/* Builds the static table from cfg into *out / *out_slots.  0 / -1 with err. */
static int route_statics_build(const struct tg_config *cfg, const struct route_addrs *addrs,
                               struct route_static **out, size_t *out_slots, char *err, size_t errlen)
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
        struct route_backends *set = route_static_backends(cr->backends ? cr->backends : "", addrs, berr,
                                                           sizeof(berr));
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

/* ---- metrics ---- */

/*
 * The names this module adds to /metrics (Prometheus text format, summed
 * over every worker at each scrape by route_metrics_write):
 *
 *   tollgate_route_cache_hits_total        counter  lookups answered from the cache
 *   tollgate_route_cache_misses_total      counter  lookups that needed Redis
 *   tollgate_route_coalesced_total         counter  lookups that joined another's Redis round trip
 *   tollgate_route_stale_served_total      counter  lookups answered from a stale entry while Redis failed
 *   tollgate_route_refreshes_total         counter  entries past their TTL refetched in the background
 *   tollgate_route_redis_errors_total      counter  routing commands that failed or timed out
 *   tollgate_route_bad_data_total          counter  invalid routing data found in Redis
 *   tollgate_route_invalidations_total     counter  key invalidations received
 *   tollgate_route_cache_entries           gauge    entries in the route caches (a worker's pattern list counts 1)
 *   tollgate_route_cache_evictions_total   counter  entries evicted from the route caches (LRU)
 */

static pthread_mutex_t route_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct route_ctx *route_reg_head;
static pthread_once_t route_writer_once = PTHREAD_ONCE_INIT;

static uint64_t route_load(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* Sums every worker's counters (admin thread, at each scrape). */
static void route_metrics_write(FILE *f, void *arg)
{
    (void)arg;
    struct route_counters t;
    memset(&t, 0, sizeof(t));
    pthread_mutex_lock(&route_reg_lock);
    for (struct route_ctx *rc = route_reg_head; rc; rc = rc->reg_next) {
        t.hits += route_load(&rc->m.hits);
        t.misses += route_load(&rc->m.misses);
        t.redis_errors += route_load(&rc->m.redis_errors);
        t.bad_data += route_load(&rc->m.bad_data);
        t.stale_served += route_load(&rc->m.stale_served);
        t.coalesced += route_load(&rc->m.coalesced);
        t.invalidations += route_load(&rc->m.invalidations);
        t.refreshes += route_load(&rc->m.refreshes);
        t.entries += route_load(&rc->m.entries);
        t.evictions += route_load(&rc->m.evictions);
    }
    pthread_mutex_unlock(&route_reg_lock);
    fprintf(f,
            "# HELP tollgate_route_cache_hits_total Route lookups answered from the cache.\n"
            "# TYPE tollgate_route_cache_hits_total counter\n"
            "tollgate_route_cache_hits_total %llu\n"
            "# HELP tollgate_route_cache_misses_total Route lookups that needed Redis.\n"
            "# TYPE tollgate_route_cache_misses_total counter\n"
            "tollgate_route_cache_misses_total %llu\n"
            "# HELP tollgate_route_coalesced_total Lookups that joined another lookup's Redis round trip.\n"
            "# TYPE tollgate_route_coalesced_total counter\n"
            "tollgate_route_coalesced_total %llu\n"
            "# HELP tollgate_route_stale_served_total Lookups answered from a stale entry while Redis failed.\n"
            "# TYPE tollgate_route_stale_served_total counter\n"
            "tollgate_route_stale_served_total %llu\n"
            "# HELP tollgate_route_refreshes_total Entries past their TTL refetched in the background while served.\n"
            "# TYPE tollgate_route_refreshes_total counter\n"
            "tollgate_route_refreshes_total %llu\n"
            "# HELP tollgate_route_redis_errors_total Redis commands for routing that failed or timed out.\n"
            "# TYPE tollgate_route_redis_errors_total counter\n"
            "tollgate_route_redis_errors_total %llu\n"
            "# HELP tollgate_route_bad_data_total Invalid routing data found in Redis.\n"
            "# TYPE tollgate_route_bad_data_total counter\n"
            "tollgate_route_bad_data_total %llu\n"
            "# HELP tollgate_route_invalidations_total Key invalidations received.\n"
            "# TYPE tollgate_route_invalidations_total counter\n"
            "tollgate_route_invalidations_total %llu\n"
            "# HELP tollgate_route_cache_entries Entries in the route caches.\n"
            "# TYPE tollgate_route_cache_entries gauge\n"
            "tollgate_route_cache_entries %llu\n"
            "# HELP tollgate_route_cache_evictions_total Entries evicted from the route caches (LRU).\n"
            "# TYPE tollgate_route_cache_evictions_total counter\n"
            "tollgate_route_cache_evictions_total %llu\n",
            (unsigned long long)t.hits, (unsigned long long)t.misses, (unsigned long long)t.coalesced,
            (unsigned long long)t.stale_served, (unsigned long long)t.refreshes, (unsigned long long)t.redis_errors,
            (unsigned long long)t.bad_data, (unsigned long long)t.invalidations,
            (unsigned long long)t.entries, (unsigned long long)t.evictions);
}

static void route_writer_register(void)
{
    metrics_register_writer(route_metrics_write, NULL);
}

static void route_reg_add(struct route_ctx *rc)
{
    pthread_once(&route_writer_once, route_writer_register);
    pthread_mutex_lock(&route_reg_lock);
    rc->reg_next = route_reg_head;
    route_reg_head = rc;
    pthread_mutex_unlock(&route_reg_lock);
}

static void route_reg_del(struct route_ctx *rc)
{
    pthread_mutex_lock(&route_reg_lock);
    for (struct route_ctx **pp = &route_reg_head; *pp; pp = &(*pp)->reg_next)
        if (*pp == rc) {
            *pp = rc->reg_next;
            break;
        }
    pthread_mutex_unlock(&route_reg_lock);
}

static void route_count_cache(struct route_ctx *rc)
{
    size_t n = 0;
    uint64_t ev = 0;
    if (rc->routes) {
        n = cache_count(rc->routes) + cache_count(rc->tenants) + cache_count(rc->neg);
        ev = cache_evictions(rc->routes) + cache_evictions(rc->tenants) + cache_evictions(rc->neg);
    }
    __atomic_store_n(&rc->m.entries, (uint64_t)n + (rc->pats ? 1 : 0), __ATOMIC_RELAXED);
    __atomic_store_n(&rc->m.evictions, ev, __ATOMIC_RELAXED);
}

/*
 * Reports bad routing data once per key per minute and counts it.
 * what names the Redis key (or "key#index" for a list element).
 */
static void route_bad(struct route_ctx *rc, const char *what, const char *err)
{
    char key[200];
    snprintf(key, sizeof(key), "route-bad:%.180s", what);
    rc->m.bad_data++;
    log_err_ratelimited(key, "route: bad routing data in Redis at %.300s: %.200s", what, err);
}

/* ---- keys ---- */

/*
 * Builds the Redis key of a family (RK_DOMAIN, ...: SCHEMA_K_DOMAIN ...) and name with
 * schema.h, the project's only copy of the key layout; an empty name gives
 * the family prefix itself ("tg:domain:", "tg:patterns", "tg:events").
 * Returns the length, or 0 when the key cannot be built.
 */
enum { RK_DOMAIN, RK_PATHS, RK_TENANT, RK_PATTERNS, RK_EVENTS };

static size_t route_key(const struct route_ctx *rc, char *buf, size_t cap, int family,
                        const char *name, size_t nlen)
{
    static const char *const fam[] = {SCHEMA_K_DOMAIN, SCHEMA_K_PATHS, SCHEMA_K_TENANT, SCHEMA_K_PATTERNS,
                                       SCHEMA_K_EVENTS};
    int n;
    if (nlen == 0)
        n = schema_key_family(buf, cap, rc->prefix, fam[family], 0);
    else if (family == RK_DOMAIN)
        n = schema_key_domain(buf, cap, rc->prefix, name, nlen);
    else if (family == RK_PATHS)
        n = schema_key_paths(buf, cap, rc->prefix, name, nlen);
    else if (family == RK_TENANT)
        n = schema_key_tenant(buf, cap, rc->prefix, name, nlen);
    else
        n = -1;
    return n > 0 ? (size_t)n : 0;
}

/*
 * The invalidation counter of a Redis key.  A host's path rules
 * (<p>paths:<name>) share the counter of its domain key (<p>domain:<name>):
 * a record built from both then checks one counter, not two, on every hit;
 * a change to either revalidates it, as before.
 */
static uint32_t route_slot(const struct route_ctx *rc, const char *key, size_t len)
{
    static const char paths[] = SCHEMA_K_PATHS, domain[] = SCHEMA_K_DOMAIN;
    size_t pl = rc->prefix_len, fl = sizeof(paths) - 1, dl = sizeof(domain) - 1;
    if (len > pl + fl && len - fl + dl <= ROUTE_KEY_MAX && memcmp(key, rc->prefix, pl) == 0 &&
        memcmp(key + pl, paths, fl) == 0) {
        char k[ROUTE_KEY_MAX];
        memcpy(k, key, pl);
        memcpy(k + pl, domain, dl);
        memcpy(k + pl + dl, key + pl + fl, len - pl - fl);
        return (uint32_t)(cache_hash(k, len - fl + dl) & (ROUTE_DEP_SLOTS - 1));
    }
    return (uint32_t)(cache_hash(key, len) & (ROUTE_DEP_SLOTS - 1));
}

static void route_mark_stale(struct route_ctx *rc, const char *key, size_t len);

/*
 * One Redis key changed: bumps its invalidation counter and marks stale the
 * cached records named by it.
 */
static void route_invalidate_key(struct route_ctx *rc, const char *key, size_t len)
{
    rc->depgen[route_slot(rc, key, len)]++;
    rc->m.invalidations++;
    route_mark_stale(rc, key, len);
}

/* Every record becomes stale (revalidated on next use, still servable while Redis is down). */
static void route_flush_freshness(struct route_ctx *rc)
{
    rc->gen++;
}

/* ---- records ---- */

/* The cache key of a record (cache_new_keyed). */
static const char *route_rec_key(const void *v, size_t *klen)
{
    const struct route_rec *r = v;
    *klen = r->klen;
    return r->key;
}

static size_t route_align(size_t n, size_t a)
{
    return (n + a - 1) & ~(a - 1);
}

/*
 * Allocates a record for key (klen <= HOST_MAX or MATCH_MAX_TENANT) with
 * one reference; with tenant (tl bytes), the block also holds the tenant
 * name (a routed domain).  NULL on OOM.
 */
static struct route_rec *route_rec_alloc(int kind, const char *key, size_t klen, const char *tenant, size_t tl)
{
    size_t size = offsetof(struct route_rec, key) + klen + 1 + (tenant ? tl + 1 : 0);
    void *p;
    if (posix_memalign(&p, 64, route_align(size, 64)) != 0)
        return NULL;
    memset(p, 0, size);
    struct route_rec *r = p;
    r->e.refs = 1;
    r->e.in_rec = 1;
    r->kind = (uint8_t)kind;
    r->klen = (uint16_t)klen;
    memcpy(r->key, key, klen);
    if (kind == REC_TENANT)
        r->e.policy.cap_bytes = -1;
    if (tenant) {
        char *t = r->key + klen + 1;
        memcpy(t, tenant, tl);
        r->e.tenant = t;
    }
    return r;
}

/* ---- shared backend sets ---- */

static struct route_pset *route_pset_of(const struct route_backends *set)
{
    return (struct route_pset *)(void *)((char *)set - ROUTE_PSET_OFF);
}

/* A new, not yet interned set of nb (1..BAL_MAX_BACKENDS) zeroed backends; NULL on OOM. */
static struct route_backends *route_pset_new(size_t nb, int lb)
{
    struct route_pset *ps = calloc(1, ROUTE_PSET_OFF + sizeof(struct route_backends) +
                                          nb * sizeof(struct bal_backend));
    if (ps == NULL)
        return NULL;
    ps->refs = 1;
    struct route_backends *set = (struct route_backends *)(void *)((char *)ps + ROUTE_PSET_OFF);
    set->n = nb;
    set->lb = lb;
    return set;
}

static void route_pset_unref(struct route_backends *set)
{
    if (set == NULL)
        return;
    struct route_pset *ps = route_pset_of(set);
    if (--ps->refs > 0)
        return;
    struct route_pool *pool = ps->pool;
    if (pool) {
        for (struct route_pset **pp = &pool->b[ps->hash & pool->mask]; *pp; pp = &(*pp)->next)
            if (*pp == ps) {
                *pp = ps->next;
                pool->count--;
                break;
            }
    }
    free(ps);
}

static uint64_t route_pset_hash(const struct route_backends *set)
{
    uint64_t h = (uint64_t)set->lb * 0x9e3779b97f4a7c15ULL + set->n;
    for (size_t i = 0; i < set->n; i++) {
        const struct bal_backend *b = &set->b[i];
        h = h * 31 + cache_hash(b->name, strlen(b->name));
        h = h * 31 + cache_hash((const char *)&b->addr, b->addrlen);
    }
    return h;
}

static int route_pset_equal(const struct route_backends *a, const struct route_backends *b)
{
    if (a->lb != b->lb || a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (a->b[i].addrlen != b->b[i].addrlen || strcmp(a->b[i].name, b->b[i].name) != 0 ||
            memcmp(&a->b[i].addr, &b->b[i].addr, a->b[i].addrlen) != 0)
            return 0;
    return 1;
}

/*
 * Replaces *setp (a new set, its addresses filled) by the pool's equal set
 * when there is one, else interns it.
 */
static void route_pset_intern(struct route_pool *pool, struct route_backends **setp)
{
    struct route_pset *ps = route_pset_of(*setp);
    if (ps->pool)
        return;
    ps->hash = route_pset_hash(*setp);
    struct route_pset **head = &pool->b[ps->hash & pool->mask];
    for (struct route_pset *o = *head; o; o = o->next) {
        struct route_backends *os = (struct route_backends *)(void *)((char *)o + ROUTE_PSET_OFF);
        if (o->hash == ps->hash && route_pset_equal(os, *setp)) {
            o->refs++;
            route_pset_unref(*setp);
            *setp = os;
            return;
        }
    }
    ps->pool = pool;
    ps->next = *head;
    *head = ps;
    pool->count++;
}

/* A pool with about one chain per two routes of a cache of capacity cap; NULL on OOM. */
static struct route_pool *route_pool_new(size_t cap)
{
    struct route_pool *pool = calloc(1, sizeof(*pool));
    size_t nb = 64;
    while (nb < cap / 2)
        nb <<= 1;
    if (pool == NULL || (pool->b = calloc(nb, sizeof(*pool->b))) == NULL) {
        free(pool);
        return NULL;
    }
    pool->mask = nb - 1;
    return pool;
}

/* Frees the pool; sets still used by records (held by requests) live on, detached. */
static void route_pool_free(struct route_pool *pool)
{
    if (pool == NULL)
        return;
    for (size_t i = 0; i <= pool->mask; i++)
        for (struct route_pset *ps = pool->b[i]; ps; ps = ps->next)
            ps->pool = NULL;
    free(pool->b);
    free(pool);
}

/* Frees a record whose last reference went (route_entry_unref). */
static void route_rec_destroy(struct route_rec *r)
{
    if (r->kind == REC_DOMAIN && r->status == ROUTE_OK) {
        route_entry_drop_paths(&r->e);
        route_pset_unref(r->e.set);
        if (r->trec)
            route_entry_unref(&r->trec->e);
    }
    free(r);
}

static void route_rec_unref(struct route_rec *r)
{
    if (r)
        route_entry_unref(&r->e);
}

/* A cache lets go of a record: requests and other records may still hold it, but not use it for lookups. */
static void route_rec_free_cb(void *v)
{
    struct route_rec *r = v;
    r->flags |= REC_UNCACHED;
    route_rec_unref(r);
}

/*
 * The keys named after the record itself (<p>domain:<host> and
 * <p>paths:<host> for a domain record, <p>tenant:<id> for a tenant record)
 * mark it stale by name when they change (route_mark_stale): a hit does not
 * check their counters.  Their stamps are checked once, when the fetch
 * ends (route_rec_born), for changes made while it was in flight.
 */
static int route_dep_by_name(int which)
{
    return which == CMD_EXACT || which == CMD_PEXACT || which == CMD_TENANT;
}

/* Marks r stale if a key it is named after changed since f sent its command for it. */
static void route_rec_born(struct route_ctx *rc, struct route_rec *r, const struct route_fetch *f, int which)
{
    if (rc->depgen[f->slot[which]] != f->val[which])
        r->flags |= REC_STALE;
}

/*
 * Records the stamp of one key r was built from, checked on every hit (a
 * stamp already there is not repeated; keys r is named after are not
 * stamped: see route_dep_by_name).
 */
static void route_rec_dep(struct route_rec *r, const struct route_fetch *f, int which)
{
    if (route_dep_by_name(which))
        return;
    for (unsigned i = 0; i < r->ndeps; i++)
        if (r->dep_slot[i] == f->slot[which] && r->dep_val[i] == f->val[which])
            return;
    if (r->ndeps < 3) {
        r->dep_slot[r->ndeps] = (uint16_t)f->slot[which];
        r->dep_val[r->ndeps] = f->val[which];
        r->ndeps++;
    }
}

static double route_ttl_cap(const struct route_ctx *rc, double ttl)
{
    return (!rc->tracking && ttl > ROUTE_NOTRACK_TTL) ? ROUTE_NOTRACK_TTL : ttl;
}

enum { REC_FRESH, REC_REFRESH, REC_OLD };

/*
 * REC_FRESH: r may be used without asking Redis.  REC_REFRESH: only its TTL
 * ran out, less than ROUTE_REFRESH_GRACE (or its TTL) ago, while
 * invalidations flow: nothing it was built from is known to have changed,
 * so it may be used once more while a fetch replaces it.  REC_OLD: ask Redis.
 */
static int route_rec_state(const struct route_ctx *rc, const struct route_rec *r, double now)
{
    if (r->gen != rc->gen || (r->flags & REC_STALE))
        return REC_OLD;
    if (!rc->tracking && now - r->fetched > ROUTE_NOTRACK_TTL)
        return REC_OLD;
    for (unsigned i = 0; i < r->ndeps; i++)
        if (rc->depgen[r->dep_slot[i]] != r->dep_val[i])
            return REC_OLD;
    if (now < r->expires)
        return REC_FRESH;
    double grace = r->expires - r->fetched < ROUTE_REFRESH_GRACE ? r->expires - r->fetched : ROUTE_REFRESH_GRACE;
    return rc->tracking && now < r->expires + grace ? REC_REFRESH : REC_OLD;
}

/* 1 when r may be used without asking Redis. */
static int route_rec_fresh(const struct route_ctx *rc, const struct route_rec *r, double now)
{
    return route_rec_state(rc, r, now) == REC_FRESH;
}

/* 1 when r may be served while Redis cannot answer. */
static int route_rec_servable_stale(const struct route_ctx *rc, const struct route_rec *r, double now)
{
    return r && now - r->fetched <= rc->cfg->route_stale_max_age;
}

/* The cached record of a host (hash: cache_hash of it), routed or not; NULL when none. */
static struct route_rec *route_cached_domain(struct route_ctx *rc, const char *host, size_t hl, uint64_t hash)
{
    struct route_rec *r = cache_get_h(rc->routes, host, hl, hash);
    return r ? r : cache_get_h(rc->neg, host, hl, hash);
}

static struct route_rec *route_cached_tenant(struct route_ctx *rc, const char *tenant)
{
    size_t n = strlen(tenant);
    if (n > MATCH_MAX_TENANT)
        return NULL;
    return cache_get(rc->tenants, tenant, n);
}

/*
 * The tenant record for routed domain record d that may be used at now
 * (*state REC_FRESH or REC_REFRESH), or NULL: the one d used last while it
 * is usable and still cached (no second hash lookup on a hit; an uncached
 * one is not found by route_mark_stale), else the cached one, which d then
 * keeps.
 */
static struct route_rec *route_domain_tenant(struct route_ctx *rc, struct route_rec *d, double now, int *state)
{
    struct route_rec *t = d->trec;
    if (t && !(t->flags & REC_UNCACHED) && (*state = route_rec_state(rc, t, now)) != REC_OLD)
        return t;
    t = route_cached_tenant(rc, d->e.tenant);
    if (t == NULL || (*state = route_rec_state(rc, t, now)) == REC_OLD)
        return NULL;
    if (d->trec != t) {
        route_entry_ref(&t->e);
        route_rec_unref(d->trec);
        d->trec = t;
    }
    return t;
}

/* The tenant record to serve stale for d (the cached one, else the one d used last), or NULL. */
static struct route_rec *route_domain_tenant_any(struct route_ctx *rc, const struct route_rec *d)
{
    struct route_rec *t = route_cached_tenant(rc, d->e.tenant);
    return t ? t : d->trec;
}

/*
 * Stores a record under its key.  Routed hosts, unknown and bad-data hosts
 * and tenants have caches of their own, so that a flood of random Host
 * headers cannot evict the hot routes, nor tenants the routes.
 */
static void route_cache_store(struct route_ctx *rc, struct route_rec *r)
{
    struct cache *c;
    if (r->kind == REC_TENANT) {
        c = rc->tenants;
    } else if (r->status == ROUTE_OK) {
        c = rc->routes;
        cache_del(rc->neg, r->key, r->klen);
    } else {
        c = rc->neg;
        cache_del(rc->routes, r->key, r->klen);
    }
    r->e.refs++;
    if (cache_put(c, r->key, r->klen, r) < 0)
        r->e.refs--;
    route_count_cache(rc);
}

/*
 * Marks stale the cached records a changed key is named after: the host's
 * domain records for <p>domain:<host> and <p>paths:<host>, the tenant's
 * record for <p>tenant:<id>.  Wildcard keys and the pattern list are found
 * through their counters instead (route_rec_dep).
 */
static void route_mark_stale(struct route_ctx *rc, const char *key, size_t len)
{
    static const char dom[] = SCHEMA_K_DOMAIN, pth[] = SCHEMA_K_PATHS, ten[] = SCHEMA_K_TENANT;
    size_t pl = rc->prefix_len;
    if (rc->routes == NULL || len <= pl || memcmp(key, rc->prefix, pl) != 0)
        return;
    const char *k = key + pl;
    size_t kl = len - pl;
    struct cache *c1 = NULL, *c2 = NULL;
    size_t fl = 0;
    if (kl > sizeof(dom) - 1 && memcmp(k, dom, sizeof(dom) - 1) == 0) {
        fl = sizeof(dom) - 1;
        c1 = rc->routes;
        c2 = rc->neg;
    } else if (kl > sizeof(pth) - 1 && memcmp(k, pth, sizeof(pth) - 1) == 0) {
        fl = sizeof(pth) - 1;
        c1 = rc->routes;
        c2 = rc->neg;
    } else if (kl > sizeof(ten) - 1 && memcmp(k, ten, sizeof(ten) - 1) == 0) {
        fl = sizeof(ten) - 1;
        c1 = rc->tenants;
    } else {
        return;
    }
    struct route_rec *r;
    if ((r = cache_peek(c1, k + fl, kl - fl)) != NULL)
        r->flags |= REC_STALE;
    if (c2 && (r = cache_peek(c2, k + fl, kl - fl)) != NULL)
        r->flags |= REC_STALE;
}

/* ---- answering ---- */

static void route_answer(route_cb cb, void *arg, enum route_status st, struct route_entry *e,
                         const struct route_backends *set, const struct tenant_policy *pol, const char *detail)
{
    struct route_result res;
    memset(&res, 0, sizeof(res));
    res.status = st;
    res.policy.cap_bytes = -1;
    if (pol)
        res.policy = *pol;
    res.detail = detail;
    if (e) {
        res.entry = e;
        res.tenant = e->tenant;
        res.backends = set ? set : e->set;
        res.redirect_https = e->redirect_https;
    }
    cb(arg, &res);
}

/* Answers from a domain record (and the tenant record when OK), choosing the set by path. */
static void route_answer_recs(struct route_ctx *rc, struct route_rec *d, const struct route_rec *t,
                              const char *path, size_t plen, route_cb cb, void *arg)
{
    if (d->status != ROUTE_OK) {
        route_answer(cb, arg, d->status, NULL, NULL, NULL, d->detail);
        return;
    }
    struct route_entry *e = &d->e;
    const struct route_backends *set = e->set;
    if (e->paths) {
        int i = match_paths_find(e->paths, path, plen);
        if (i >= 0 && (size_t)i < e->n_paths) {
            set = e->path_sets[i];
        } else if (i == -2) {
            route_bad(rc, e->tenant, "path regex hit its match limit");
            route_answer(cb, arg, ROUTE_BAD_DATA, NULL, NULL, NULL, "path rule failed");
            return;
        }
    }
    route_answer(cb, arg, ROUTE_OK, e, set, t ? &t->e.policy : NULL, NULL);
}

/* Serves stale records when Redis cannot answer; else ROUTE_UNAVAILABLE. */
static void route_answer_stale(struct route_ctx *rc, const char *host, size_t hl, const char *path, size_t plen,
                               route_cb cb, void *arg, double now)
{
    struct route_rec *d = route_cached_domain(rc, host, hl, cache_hash(host, hl));
    if (route_rec_servable_stale(rc, d, now)) {
        if (d->status != ROUTE_OK) {
            rc->m.stale_served++;
            route_answer_recs(rc, d, NULL, path, plen, cb, arg);
            return;
        }
        struct route_rec *t = route_domain_tenant_any(rc, d);
        if (route_rec_servable_stale(rc, t, now)) {
            rc->m.stale_served++;
            route_answer_recs(rc, d, t, path, plen, cb, arg);
            return;
        }
    }
    route_answer(cb, arg, ROUTE_UNAVAILABLE, NULL, NULL, NULL, "routing data unavailable (Redis)");
}

/* ---- pending fetches ---- */

static size_t route_pbucket(const char *host, size_t hl)
{
    return (size_t)(cache_hash(host, hl) % ROUTE_PENDING_BUCKETS);
}

static struct route_fetch *route_pending_find(struct route_ctx *rc, const char *host, size_t hl)
{
    for (struct route_fetch *f = rc->pending[route_pbucket(host, hl)]; f; f = f->hnext)
        if (f->hl == hl && memcmp(f->host, host, hl) == 0)
            return f;
    return NULL;
}

static void route_pending_del(struct route_ctx *rc, struct route_fetch *f)
{
    for (struct route_fetch **pp = &rc->pending[route_pbucket(f->host, f->hl)]; *pp; pp = &(*pp)->hnext)
        if (*pp == f) {
            *pp = f->hnext;
            return;
        }
}

static void route_draft_fini(struct route_draft *d)
{
    free(d->tenant);
    free(d->backends);
    memset(d, 0, sizeof(*d));
}

static void route_fetch_free(struct route_fetch *f)
{
    route_pending_del(f->rc, f);
    while (f->waiters) {
        struct route_lookup *w = f->waiters;
        f->waiters = w->next;
        free(w);
    }
    route_draft_fini(&f->exact);
    route_draft_fini(&f->wild);
    match_paths_free(f->paths_exact);
    match_paths_free(f->paths_wild);
    route_rec_unref(f->drec);
    route_rec_unref(f->trec);
    free(f);
}

/* ---- building entries from Redis data ---- */

/* Builds an unresolved backend set from a list; NULL with err. */
static struct route_backends *route_set_from(const char *list, size_t len, int lb, char *err, size_t errlen)
{
    struct match_addr addrs[MATCH_MAX_BACKENDS];
    int n = match_backends_split(list, len, addrs, MATCH_MAX_BACKENDS, err, errlen);
    if (n < 0)
        return NULL;
    struct route_backends *set = bal_set_new((size_t)n, lb);
    if (set == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++)
        snprintf(set->b[i].name, sizeof(set->b[i].name), "%s", addrs[i].text);
    return set;
}

/*
 * Builds the record of a routed host (key host, hl bytes): entry, backend
 * set and tenant in one block, addresses not yet resolved.  paths (may be
 * NULL) is taken over.  NULL with err when the data is bad.
 */
static struct route_rec *route_rec_routed(const char *host, size_t hl, const char *tenant, size_t tl, int lb,
                                          int redirect, const char *backends, size_t bl,
                                          struct match_paths *paths, char *err, size_t errlen)
{
    struct match_addr addrs[MATCH_MAX_BACKENDS];
    int n = match_backends_split(backends, bl, addrs, MATCH_MAX_BACKENDS, err, errlen);
    if (n < 0) {
        match_paths_free(paths);
        return NULL;
    }
    struct route_rec *r = route_rec_alloc(REC_DOMAIN, host, hl, tenant, tl);
    struct route_backends *set = n > 0 ? route_pset_new((size_t)n, lb) : NULL;
    if (r == NULL || set == NULL) {
        match_paths_free(paths);
        free(r);
        route_pset_unref(set);
        if (err[0] == '\0')
            snprintf(err, errlen, n > 0 ? "out of memory" : "no backends");
        return NULL;
    }
    r->status = ROUTE_OK;
    struct route_entry *e = &r->e;
    e->set = set;
    for (int i = 0; i < n; i++)
        snprintf(e->set->b[i].name, sizeof(e->set->b[i].name), "%s", addrs[i].text);
    e->redirect_https = (uint8_t)(redirect != 0);
    e->paths = paths;
    size_t np = match_paths_count(paths);
    if (np > 0) {
        e->path_sets = calloc(np, sizeof(*e->path_sets));
        if (e->path_sets == NULL)
            goto fail;
        for (size_t i = 0; i < np; i++) {
            size_t len;
            const char *b = match_paths_backends(paths, i, &len);
            char perr[160];
            e->path_sets[i] = route_set_from(b, len, lb, perr, sizeof(perr));
            if (e->path_sets[i] == NULL) {
                snprintf(err, errlen, "path rule %zu: %s", i + 1, perr);
                goto fail;
            }
            e->n_paths = (uint16_t)(i + 1);
        }
    }
    return r;
fail:
    if (err[0] == '\0')
        snprintf(err, errlen, "out of memory");
    route_rec_unref(r);
    return NULL;
}

static void route_hosts_check(struct route_ctx *rc, double now);

/*
 * The addresses of backend b's "host:port" name (port set): IP literals and
 * localhost directly, names from the DNS cache.  Returns 1 when known, 0
 * when the name must be resolved first (*name set), -1 when it cannot be
 * (a cached DNS failure).  *dns_expires is lowered to the answer's expiry.
 * final: the fetch's last pass, every answer in: an answer this fetch
 * found fresh or got is used even if it expired or was flushed (a reload,
 * a hosts file change) while other names were being resolved, and the
 * route then expires at once (it is refetched by its next request).
 */
static int route_name_ips(struct route_ctx *rc, const struct bal_backend *b, double now, int final, char *name,
                          size_t namecap, int *port, struct route_ips *ips, double *dns_expires)
{
    if (host_parse_hostport(b->name, strlen(b->name), name, namecap, port) < 0)
        return -1;
    if (route_addr_literal(name, ips))
        return 1;
    if (!final)
        route_hosts_check(rc, now);
    size_t nl = strlen(name);
    const struct route_dns_rec *d = cache_get(rc->dns, name, nl);
    if (d == NULL)
        return 0;
    double expires = d->expires;
    if (now >= d->expires || d->stored < rc->dns_flushed) {
        if (!final)
            return 0;
        expires = now;
    }
    if (!d->ok || d->ips.n == 0)
        return -1;
    if (*dns_expires == 0 || expires < *dns_expires)
        *dns_expires = expires;
    *ips = d->ips;
    return 1;
}

static void route_dns_start(struct route_fetch *f, const char *name);

/*
 * Fills every backend set of the fetch's entry.  With start = 1, names
 * that need DNS get a resolution started (counted in f->outstanding) and
 * nothing is changed.  With start = 0 (every answer in), each set is
 * replaced by one with a backend per address of each name
 * (route_set_expand).  Returns 0 when all are filled or pending, -1 with
 * err when one cannot be resolved (or, with start = 0, is still
 * unresolved).
 */
static int route_entry_fill(struct route_fetch *f, struct route_entry *e, int start, char *err, size_t errlen)
{
    struct route_ctx *rc = f->rc;
    double now = route_now();
    struct route_ips ips[BAL_MAX_BACKENDS];
    int ports[BAL_MAX_BACKENDS];
    for (size_t s = 0; s <= e->n_paths; s++) {
        struct route_backends **setp = s == 0 ? &e->set : &e->path_sets[s - 1];
        struct route_backends *set = *setp;
        for (size_t i = 0; i < set->n && i < BAL_MAX_BACKENDS; i++) {
            char name[HOST_MAX + 1];
            int r = route_name_ips(rc, &set->b[i], now, !start, name, sizeof(name), &ports[i], &ips[i],
                                   &f->dns_expires);
            if (r == 1)
                continue;
            if (r == 0 && start) {
                route_dns_start(f, name);
                continue;
            }
            snprintf(err, errlen, "cannot resolve backend '%s'", set->b[i].name);
            return -1;
        }
        if (start)
            continue;
        /* The main set is a shared one (route_pset), not interned yet; path rules' sets are plain. */
        struct route_backends *x = route_set_expand(set, ips, ports, s == 0 ? route_pset_new : bal_set_new);
        if (x == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        if (s == 0)
            route_pset_unref(set);
        else
            bal_set_free(set);
        *setp = x;
    }
    return 0;
}

/* ---- DNS ---- */

/*
 * Caches name's addresses (ips NULL or empty: a failure, for
 * route-negative-ttl) for ttl seconds.  asked: when the answer was asked
 * for; one asked before a flush (reload, hosts file change) is stale at
 * once, however late it came.
 */
static void route_dns_store(struct route_ctx *rc, const char *name, const struct route_ips *ips, int ttl,
                            double asked)
{
    struct route_dns_rec *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return;
    double now = route_now();
    r->stored = asked;
    if (ips && ips->n > 0) {
        r->ok = 1;
        r->ips = *ips;
        route_ips_order(&r->ips);
        if (ttl < 1)
            ttl = 1;
        if (ttl > 86400)
            ttl = 86400;
        r->expires = now + ttl;
    } else {
        r->expires = now + rc->cfg->route_negative_ttl;
    }
    if (cache_put(rc->dns, name, strlen(name), r) < 0)
        free(r);
}

static void route_fetch_advance(struct route_fetch *f);

/* Puts d first on a list (rc->dns_reqs, rc->dns_left). */
static void route_dns_link(struct route_dns **head, struct route_dns *d)
{
    d->prev = NULL;
    d->next = *head;
    if (*head)
        (*head)->prev = d;
    *head = d;
}

static void route_dns_unlink(struct route_dns **head, struct route_dns *d)
{
    if (d->prev)
        d->prev->next = d->next;
    else
        *head = d->next;
    if (d->next)
        d->next->prev = d->prev;
    d->next = d->prev = NULL;
}

static void route_dns_free(struct route_dns *d)
{
    if (d->delay)
        event_free(d->delay);
    free(d->fs);
    free(d);
}

/*
 * The name is answered: unlink it and let its fetches go on.  It is freed
 * now, or (queries cancelled, their callbacks to come) when the last of
 * them calls back.
 */
static void route_dns_done(struct route_dns *d)
{
    struct route_ctx *rc = d->rc;
    struct route_fetch **fs = d->fs;
    size_t nf = d->nf;
    route_dns_unlink(&rc->dns_reqs, d);
    d->done = 1;
    d->fs = NULL;
    d->nf = d->capf = 0;
    if (d->delay)
        event_del(d->delay);
    if (d->pending > 0)
        route_dns_link(&rc->dns_left, d);
    else
        route_dns_free(d);
    /* Each fetch's answer is in rc->dns now; one finishing may start others (new route_dns). */
    for (size_t i = 0; i < nf; i++) {
        struct route_fetch *f = fs[i];
        f->outstanding--;
        if (!f->in_advance)
            route_fetch_advance(f);
    }
    free(fs);
}

/* The name's answer: every address of both families (what came of them), the shortest TTL. */
static void route_dns_complete(struct route_dns *d)
{
    for (int i = 0; i < 2; i++)
        if (d->req[i]) {
            struct evdns_request *q = d->req[i];
            d->req[i] = NULL;            /* its callback still comes, with DNS_ERR_CANCEL */
            evdns_cancel_request(d->rc->dnsb, q);
        }
    struct route_ips all = d->v4;
    for (unsigned i = 0; i < d->v6.n; i++)
        route_ips_add(&all, &d->v6.a[i].sa, sizeof(d->v6.a[i].in6));
    route_dns_store(d->rc, d->name, &all, d->ttl, d->asked);
    route_dns_done(d);
}

static void route_dns_delay_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct route_dns *d = arg;
    if (!d->done)
        route_dns_complete(d);
}

/*
 * Answers the name when both queries are over, or starts the resolution
 * delay when one has addresses and the other is still pending.
 */
static void route_dns_settle(struct route_dns *d)
{
    if (d->req[0] == NULL && d->req[1] == NULL) {
        route_dns_complete(d);
        return;
    }
    if (d->v4.n + d->v6.n > 0 && d->delay == NULL) {
        d->delay = evtimer_new(d->rc->base, route_dns_delay_cb, d);
        if (d->delay == NULL) {
            route_dns_complete(d);
            return;
        }
        struct timeval tv = {0, (suseconds_t)(ROUTE_RESOLUTION_DELAY * 1e6)};
        evtimer_add(d->delay, &tv);
    }
}

/* The A (fi 0) or AAAA (fi 1) query called back: its answer, a failure, or DNS_ERR_CANCEL. */
static void route_dns_answer(struct route_dns *d, int result, int ttl, int count, const void *addresses, int fi)
{
    d->req[fi] = NULL;
    d->called[fi] = 1;
    d->pending--;
    if (d->done) {                   /* a query cancelled when the name was answered */
        if (d->pending == 0) {
            route_dns_unlink(&d->rc->dns_left, d);
            route_dns_free(d);
        }
        return;
    }
    int family = fi == 0 ? AF_INET : AF_INET6;
    struct route_ips *ips = fi == 0 ? &d->v4 : &d->v6;
    if (result == DNS_ERR_NONE && count > 0 && addresses) {
        for (int i = 0; i < count; i++) {
            union route_sa a;
            memset(&a, 0, sizeof(a));
            if (family == AF_INET) {
                a.in.sin_family = AF_INET;
                memcpy(&a.in.sin_addr, (const char *)addresses + 4 * i, 4);
            } else {
                a.in6.sin6_family = AF_INET6;
                memcpy(&a.in6.sin6_addr, (const char *)addresses + 16 * i, 16);
            }
            route_ips_add(ips, &a.sa, family == AF_INET ? sizeof(a.in) : sizeof(a.in6));
        }
        if (ips->n > 0 && (d->ttl < 0 || ttl < d->ttl))
            d->ttl = ttl;           /* the route lives no longer than the shortest answer */
    }
    if (!d->sending)
        route_dns_settle(d);
}

static void route_dns_cb4(int result, char type, int count, int ttl, void *addresses, void *arg)
{
    (void)type;
    route_dns_answer(arg, result, ttl, count, addresses, 0);
}

static void route_dns_cb6(int result, char type, int count, int ttl, void *addresses, void *arg)
{
    (void)type;
    route_dns_answer(arg, result, ttl, count, addresses, 1);
}

/* Asks A and AAAA at once (each with its TTL); the answers are merged in route_dns_answer(). */
static void route_dns_query(struct route_dns *d)
{
    d->ttl = -1;
    d->asked = route_now();
    d->sending = 1;
    for (int fi = 0; fi < 2; fi++) {
        d->pending++;
        struct evdns_request *q = fi == 0 ? evdns_base_resolve_ipv4(d->rc->dnsb, d->name, 0, route_dns_cb4, d)
                                          : evdns_base_resolve_ipv6(d->rc->dnsb, d->name, 0, route_dns_cb6, d);
        if (q == NULL)
            d->pending--;
        else if (!d->called[fi])     /* not answered already (its handle is gone then) */
            d->req[fi] = q;
    }
    d->sending = 0;
    route_dns_settle(d);
}

/*
 * Reads the hosts file again when it changed (inode, size, mtime or ctime
 * differ from the last read), looking at most once per ROUTE_HOSTS_CHECK:
 * a hosts entry edited or added is seen by the next resolution, as the
 * static routes see it at a reload.  Answers taken from the old file are
 * not used again.
 */
static void route_hosts_check(struct route_ctx *rc, double now)
{
    if (now < rc->hosts_next)
        return;
    rc->hosts_next = now + ROUTE_HOSTS_CHECK;
    struct stat st;
    memset(&st, 0, sizeof(st));
    if (stat(rc->hosts_path, &st) != 0)
        memset(&st, 0, sizeof(st));
    if (st.st_dev == rc->hosts_st.st_dev && st.st_ino == rc->hosts_st.st_ino &&
        st.st_size == rc->hosts_st.st_size && st.st_mtim.tv_sec == rc->hosts_st.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == rc->hosts_st.st_mtim.tv_nsec && st.st_ctim.tv_sec == rc->hosts_st.st_ctim.tv_sec &&
        st.st_ctim.tv_nsec == rc->hosts_st.st_ctim.tv_nsec)
        return;
    rc->hosts_st = st;
    rc->dns_flushed = now;
    hosts_free(rc->hosts);
    rc->hosts = hosts_load(rc->hosts_path);    /* a missing file: an empty table */
    if (rc->hosts == NULL)
        log_warn("worker %d: cannot read %s: %s; its names are asked of DNS", rc->worker_id, rc->hosts_path,
                 strerror(errno));
}

static void route_hosts_ip(void *arg, const struct sockaddr *sa, socklen_t len)
{
    route_ips_add(arg, sa, len);
}

/* The resolver, made when the first name is asked of DNS; NULL when it cannot be. */
static struct evdns_base *route_dnsb(struct route_ctx *rc)
{
    if (rc->dnsb)
        return rc->dnsb;
    if (rc->resolv_path[0]) {
        rc->dnsb = evdns_base_new(rc->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (rc->dnsb && evdns_base_resolv_conf_parse(rc->dnsb, DNS_OPTIONS_ALL, rc->resolv_path) != 0)
            log_warn("worker %d: cannot read resolver configuration %s", rc->worker_id, rc->resolv_path);
    } else {
        rc->dnsb = evdns_base_new(rc->base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    }
    if (rc->dnsb) {
        evdns_base_set_option(rc->dnsb, "timeout:", "2");
        evdns_base_set_option(rc->dnsb, "attempts:", "2");
    }
    return rc->dnsb;
}

/*
 * The resolution of name that a fetch may join: one being asked since the
 * last flush (a reload, a hosts file change); NULL when there is none.  One
 * asked before it may bring the old answer, so it is left to the fetches
 * that already wait for it and the name is asked again.
 */
static struct route_dns *route_dns_find(struct route_ctx *rc, const char *name)
{
    for (struct route_dns *d = rc->dns_reqs; d; d = d->next)
        if (strcmp(d->name, name) == 0 && d->asked >= rc->dns_flushed)
            return d;
    return NULL;
}

/*
 * A new resolution of name, not linked and not asked yet (the caller's to
 * free with route_dns_free until it is linked); NULL out of memory or when
 * there is no resolver.
 */
static struct route_dns *route_dns_new(struct route_ctx *rc, const char *name)
{
    struct route_dns *d = calloc(1, sizeof(*d));
    if (d == NULL || route_dnsb(rc) == NULL) {
        free(d);
        return NULL;
    }
    d->rc = rc;
    snprintf(d->name, sizeof(d->name), "%s", name);
    return d;
}

/*
 * f waits for d's answer (counted in f->outstanding), once however many of
 * its backends have the name.  Returns 0, or -1 out of memory (f does not
 * wait).
 */
static int route_dns_wait(struct route_dns *d, struct route_fetch *f)
{
    for (size_t i = 0; i < d->nf; i++)
        if (d->fs[i] == f)
            return 0;
    if (d->nf == d->capf) {
        size_t ncap = d->capf ? d->capf * 2 : 2;
        struct route_fetch **nfs = realloc(d->fs, ncap * sizeof(*nfs));
        if (nfs == NULL)
            return -1;
        d->fs = nfs;
        d->capf = ncap;
    }
    d->fs[d->nf++] = f;
    f->outstanding++;
    return 0;
}

/*
 * Resolves a backend name for f: from the hosts file at once (stored as a
 * DNS answer, kept as long as a route since the file has no TTL), else by
 * asking DNS for A and AAAA (evdns_base_resolve_ipv4 and _ipv6, which give
 * the records' TTLs).  A name already being asked (for another fetch) is
 * not asked again: f waits for that answer too -- unless it was asked
 * before a flush (route_dns_find).  A name that cannot be asked is stored
 * as a failure (route-negative-ttl); f finds it on its last pass.
 */
static void route_dns_start(struct route_fetch *f, const char *name)
{
    struct route_ctx *rc = f->rc;
    double now = route_now();
    route_hosts_check(rc, now);     /* first: a changed file flushes what is being asked */
    struct route_dns *d = route_dns_find(rc, name);
    if (d) {
        /* Out of memory f does not wait: unless the answer is in by its last pass, "cannot resolve". */
        (void)route_dns_wait(d, f);
        return;
    }
    struct route_ips ips;
    ips.n = 0;
    if (hosts_find(rc->hosts, name, strlen(name), route_hosts_ip, &ips) > 0) {
        route_dns_store(rc, name, &ips, (int)rc->cfg->route_cache_ttl, now);
        return;
    }
    d = route_dns_new(rc, name);
    if (d == NULL || route_dns_wait(d, f) < 0) {
        if (d)
            route_dns_free(d);
        route_dns_store(rc, name, NULL, 0, now);
        return;
    }
    /* Linked and waited for before the queries go: they may answer at once (route_dns_done). */
    route_dns_link(&rc->dns_reqs, d);
    route_dns_query(d);
}

/* ---- Redis replies ---- */

/*
 * Every routing read runs inside Redis through this script: a key that
 * Redis holds in more than ROUTE_KEY_BYTES_MAX bytes (MEMORY USAGE, every
 * element counted) is refused with a ROUTE_TOO_BIG error instead of being
 * sent.  Values tollgate reads are limited to 64 KiB each; an oversized one
 * (Redis allows 512 MB) would cost Redis a long reply to build (0.3 s for
 * 128 MiB, with every client waiting) and us its transfer: the lookups
 * pipelined behind it would time out and the connection be redialled.
 * WRONGTYPE and other errors come back as they are (pcall).  The limit is
 * the whole key's, elements past the 1024th that LRANGE would skip
 * included (Redis tells no size of a range); it is twice what
 * tollgate-ctl can write into one key (1024 patterns of a 4 KiB regex and
 * 64 backends: about 13 MiB), and a reply that size takes Redis ~75 ms.
 */
#define ROUTE_KEY_BYTES_MAX_STR "33554432"    /* 32 MiB */
#define ROUTE_TOO_BIG "TGTOOBIG"
/*
 * Before that, the number of fields or elements (O(1) to ask): MEMORY USAGE
 * with SAMPLES 0 walks them all, and a hash of 400,000 tiny fields (23 MB,
 * under the byte limit) kept Redis busy 0.4 s per read, past redis-timeout,
 * so that one host's data failed the lookups of every other.  What
 * tollgate-ctl writes has 5 fields or 1024 elements at most.
 */
#define ROUTE_ELEMENTS_MAX_STR "4096"
#define ROUTE_TOO_MANY "TGTOOMANY"
static const char route_read_lua[] =
    "local t = redis.call('TYPE', KEYS[1])['ok']\n"
    "local n = 0\n"
    "if t == 'hash' then n = redis.call('HLEN', KEYS[1]) elseif t == 'list' then n = redis.call('LLEN', KEYS[1]) end\n"
    "if n > " ROUTE_ELEMENTS_MAX_STR " then return redis.error_reply('" ROUTE_TOO_MANY " ' .. n) end\n"
    "local m = redis.call('MEMORY', 'USAGE', KEYS[1], 'SAMPLES', '0')\n"
    "if m and m > tonumber(ARGV[1]) then return redis.error_reply('" ROUTE_TOO_BIG " ' .. m) end\n"
    "return redis.pcall(ARGV[2], KEYS[1], unpack(ARGV, 3))\n";

/*
 * Tells an error reply that is bad data from a server problem: WRONGTYPE
 * ("key is not a <type>") and route_read_lua's refusal of an oversized key
 * are bad data.  Returns the reason (static), or NULL for a server problem.
 */
static const char *route_data_error(const struct redis_reply *r, int hash)
{
    size_t n;
    const char *s = redis_reply_str(r, &n);
    if (s && n >= 9 && memcmp(s, "WRONGTYPE", 9) == 0)
        return hash ? "key is not a hash" : "key is not a list";
    if (s && n >= sizeof(ROUTE_TOO_MANY) - 1 && memcmp(s, ROUTE_TOO_MANY, sizeof(ROUTE_TOO_MANY) - 1) == 0)
        return "key holds more than " ROUTE_ELEMENTS_MAX_STR " fields or elements: not read";
    if (s && n >= sizeof(ROUTE_TOO_BIG) - 1 && memcmp(s, ROUTE_TOO_BIG, sizeof(ROUTE_TOO_BIG) - 1) == 0)
        return "key holds more than " ROUTE_KEY_BYTES_MAX_STR " bytes (Redis' MEMORY USAGE): not read";
    return NULL;
}

/* Parses an HGETALL reply of a domain key into d.  Returns 0, or -1 for a server error. */
static int route_parse_domain(const struct redis_reply *r, struct route_draft *d)
{
    int t = redis_reply_type(r);
    if (t == REDIS_T_ERROR) {
        const char *why = route_data_error(r, 1);
        if (why == NULL)
            return -1;
        d->present = d->bad = 1;
        snprintf(d->err, sizeof(d->err), "%s", why);
        return 0;
    }
    if (t != REDIS_T_ARRAY) {
        d->present = d->bad = 1;
        snprintf(d->err, sizeof(d->err), "unexpected reply type %d", t);
        return 0;
    }
    size_t n = redis_reply_len(r);
    if (n == 0)
        return 0;                        /* no such key */
    d->present = 1;
    struct match_domain md;
    match_domain_init(&md);
    for (size_t i = 0; i + 1 < n; i += 2) {
        size_t fl, vl;
        const char *fs = redis_reply_str(redis_reply_elem(r, i), &fl);
        const char *vs = redis_reply_str(redis_reply_elem(r, i + 1), &vl);
        if (fs == NULL || vs == NULL)
            continue;
        if (match_domain_field(&md, fs, fl, vs, vl, d->err, sizeof(d->err)) < 0) {
            d->bad = 1;
            return 0;
        }
    }
    if (match_domain_check(&md, d->err, sizeof(d->err)) < 0) {
        d->bad = 1;
        return 0;
    }
    d->tenant = match_memdup(md.tenant, md.tenant_len);
    d->backends = match_memdup(md.backends, md.backends_len);
    if (d->tenant == NULL || d->backends == NULL) {
        d->bad = 1;
        snprintf(d->err, sizeof(d->err), "out of memory");
        return 0;
    }
    d->lb = md.lb;
    d->redirect_https = md.redirect_https;
    if (md.bad_optional)
        snprintf(d->err, sizeof(d->err), "%s%s", (md.bad_optional & 1) ? "bad 'lb' (using round_robin) " : "",
                 (md.bad_optional & 2) ? "bad 'redirect_https' (using 0)" : "");
    return 0;
}

/*
 * Parses an LRANGE reply of a paths key.  *out gets the rules (NULL when
 * the list is empty).  Returns 0, 1 for bad data (err set), -1 for a server error.
 */
static int route_parse_paths(const struct redis_reply *r, struct match_paths **out, char *err, size_t errlen)
{
    *out = NULL;
    int t = redis_reply_type(r);
    if (t == REDIS_T_ERROR) {
        const char *why = route_data_error(r, 0);
        if (why == NULL)
            return -1;
        snprintf(err, errlen, "%s", why);
        return 1;
    }
    if (t != REDIS_T_ARRAY) {
        snprintf(err, errlen, "unexpected reply type %d", t);
        return 1;
    }
    size_t n = redis_reply_len(r);
    if (n == 0)
        return 0;
    struct match_paths *ps = match_paths_new();
    if (ps == NULL) {
        snprintf(err, errlen, "out of memory");
        return 1;
    }
    if (n > MATCH_MAX_RULES)
        log_err_ratelimited("route-paths-long", "route: a path rule list holds more than %d entries: "
                            "those past the %dth are ignored", MATCH_MAX_RULES, MATCH_MAX_RULES);
    for (size_t i = 0; i < n && i < MATCH_MAX_RULES; i++) {
        size_t len;
        const char *s = redis_reply_str(redis_reply_elem(r, i), &len);
        char e2[160];
        if (s == NULL || match_paths_add(ps, s, len, e2, sizeof(e2)) < 0) {
            snprintf(err, errlen, "rule %zu: %.120s", i + 1, s ? e2 : "not a string");
            match_paths_free(ps);
            return 1;
        }
    }
    *out = ps;
    return 0;
}

static void route_pats_free(struct route_pats *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n; i++)
        match_pattern_free(p->p[i]);
    free(p->p);
    free(p);
}

/* Installs a new pattern list from an LRANGE reply.  Returns -1 for a server error. */
static int route_parse_patterns(struct route_fetch *f, const struct redis_reply *r)
{
    struct route_ctx *rc = f->rc;
    char what[ROUTE_KEY_MAX + 16];
    size_t kl = route_key(rc, what, sizeof(what), RK_PATTERNS, "", 0);
    int t = redis_reply_type(r);
    const char *why = t == REDIS_T_ERROR ? route_data_error(r, 0) : NULL;
    if (t == REDIS_T_ERROR && why == NULL)
        return -1;
    struct route_pats *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return -1;
    p->fetched = f->started;
    p->expires = f->started + route_ttl_cap(rc, rc->cfg->route_cache_ttl);
    p->gen = f->gen;
    p->dep_val = f->val[CMD_PAT];
    if (t != REDIS_T_ARRAY) {
        p->broken = why ? why : "key is not a list";
        route_bad(rc, kl ? what : "patterns", p->broken);
    } else {
        size_t n = redis_reply_len(r);
        if (n > MATCH_MAX_RULES) {
            route_bad(rc, kl ? what : "patterns", "more than 1024 entries: those past the 1024th are ignored");
            n = MATCH_MAX_RULES;
        }
        p->p = calloc(n ? n : 1, sizeof(*p->p));
        if (p->p == NULL) {
            free(p);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            size_t len;
            const char *s = redis_reply_str(redis_reply_elem(r, i), &len);
            char err[200];
            struct match_pattern *mp = s ? match_pattern_new(s, len, err, sizeof(err)) : NULL;
            if (mp == NULL) {
                char w2[ROUTE_KEY_MAX + 32];
                snprintf(w2, sizeof(w2), "%s#%zu", kl ? what : "patterns", i + 1);
                route_bad(rc, w2, s ? err : "not a string");      /* skipped; the others still apply */
                continue;
            }
            p->p[p->n++] = mp;
        }
    }
    route_pats_free(rc->pats);
    rc->pats = p;
    route_count_cache(rc);
    return 0;
}

static int route_pats_fresh(const struct route_ctx *rc, const struct route_pats *p, double now, uint32_t val)
{
    if (p == NULL || p->gen != rc->gen || now >= p->expires || p->dep_val != val)
        return 0;
    return rc->tracking || now - p->fetched <= ROUTE_NOTRACK_TTL;
}

static void route_parse_tenant(struct route_fetch *f, const struct redis_reply *r)
{
    struct route_ctx *rc = f->rc;
    struct route_rec *t = route_rec_alloc(REC_TENANT, f->tenant, strlen(f->tenant), NULL, 0);
    if (t == NULL) {
        f->tenant_failed = 1;
        return;
    }
    t->fetched = f->started;
    t->expires = f->started + route_ttl_cap(rc, rc->cfg->route_cache_ttl);
    t->gen = f->gen;
    route_rec_dep(t, f, CMD_TENANT);
    char what[ROUTE_KEY_MAX];
    if (route_key(rc, what, sizeof(what), RK_TENANT, f->tenant, strlen(f->tenant)) == 0)
        snprintf(what, sizeof(what), "tenant");
    int ty = redis_reply_type(r);
    if (ty == REDIS_T_ARRAY) {
        size_t n = redis_reply_len(r);
        for (size_t i = 0; i + 1 < n; i += 2) {
            size_t fl, vl;
            const char *fs = redis_reply_str(redis_reply_elem(r, i), &fl);
            const char *vs = redis_reply_str(redis_reply_elem(r, i + 1), &vl);
            char err[120];
            if (fs && vs && match_tenant_field(&t->e.policy, fs, fl, vs, vl, err, sizeof(err)) < 0) {
                char w2[ROUTE_KEY_MAX + 64];
                snprintf(w2, sizeof(w2), "%s/%.*s", what, (int)(fl > 40 ? 40 : fl), fs);
                route_bad(rc, w2, err);          /* treated as absent */
            }
        }
    } else {
        const char *why = ty == REDIS_T_ERROR ? route_data_error(r, 1) : NULL;
        char e2[160];
        snprintf(e2, sizeof(e2), "%s (no policy applied)", why ? why : "key is not a hash");
        route_bad(rc, what, e2);
    }
    f->trec = t;
}

static void route_cmd_cb(void *arg, const struct redis_reply *r, const char *err)
{
    struct route_cmd *cmd = arg;
    struct route_fetch *f = cmd->f;
    struct route_ctx *rc = f->rc;
    f->outstanding--;
    if (rc->closing) {
        if (f->outstanding == 0)
            route_fetch_free(f);
        return;
    }
    if (err != NULL || r == NULL) {
        rc->m.redis_errors++;
        if (cmd->which == CMD_TENANT)
            f->tenant_failed = 1;
        else
            f->failed = 1;
    } else if (!f->failed || cmd->which == CMD_TENANT) {
        char e2[160] = "";
        int rv = 0;
        switch (cmd->which) {
        case CMD_EXACT:
            rv = route_parse_domain(r, &f->exact);
            break;
        case CMD_WILD:
            rv = route_parse_domain(r, &f->wild);
            break;
        case CMD_PEXACT:
            /* Only the rules of the key that matched are needed (replies come in order). */
            if (f->exact.present && !f->exact.bad) {
                rv = route_parse_paths(r, &f->paths_exact, e2, sizeof(e2));
                if (rv == 1)
                    snprintf(f->paths_err_exact, sizeof(f->paths_err_exact), "%s", e2);
            }
            break;
        case CMD_PWILD:
            if (!f->exact.present && f->wild.present && !f->wild.bad) {
                rv = route_parse_paths(r, &f->paths_wild, e2, sizeof(e2));
                if (rv == 1)
                    snprintf(f->paths_err_wild, sizeof(f->paths_err_wild), "%s", e2);
            }
            break;
        case CMD_PAT:
            rv = route_parse_patterns(f, r);
            break;
        case CMD_TENANT:
            if (redis_reply_type(r) == REDIS_T_ERROR && !route_data_error(r, 1))
                rv = -1;
            else
                route_parse_tenant(f, r);
            break;
        }
        if (rv < 0) {
            size_t n;
            const char *s = redis_reply_str(r, &n);
            rc->m.redis_errors++;
            log_err_ratelimited("route-redis-error", "%s: Redis error: %.*s", __func__,
                                (int)(s ? (n > 200 ? 200 : n) : 7), s ? s : "unknown");
            if (cmd->which == CMD_TENANT)
                f->tenant_failed = 1;
            else
                f->failed = 1;
        }
    }
    if (f->outstanding == 0 && !f->in_advance)
        route_fetch_advance(f);
}

/*
 * Sends one command for f, through route_read_lua; counts it outstanding.
 * 0 / -1.  EVAL, not EVALSHA: Redis keeps the compiled script by its SHA
 * either way, and a restarted Redis needs no reload (this is the miss path).
 */
static int route_send(struct route_fetch *f, int which, const char *cmd, const char *key, size_t klen, int range)
{
    struct route_ctx *rc = f->rc;
    /* MATCH_MAX_RULES elements are used; one more tells a longer list */
    const char *argv[8] = {"EVAL", route_read_lua, "1", key, ROUTE_KEY_BYTES_MAX_STR, cmd, "0", "1024"};
    size_t lens[8] = {4, sizeof(route_read_lua) - 1, 1, klen, sizeof(ROUTE_KEY_BYTES_MAX_STR) - 1, strlen(cmd), 1, 4};
    f->cmds[which].f = f;
    f->cmds[which].which = which;
    if (redis_cmd(rc->main, route_cmd_cb, &f->cmds[which], range ? 8 : 6, argv, lens) < 0)
        return -1;
    f->outstanding++;
    return 0;
}

/* Records the invalidation stamp of a key for f, and returns its key length (0 if it does not fit). */
static size_t route_stamp(struct route_fetch *f, int which, char *key, size_t cap, int family,
                          const char *name, size_t nlen)
{
    size_t kl = route_key(f->rc, key, cap, family, name, nlen);
    if (kl) {
        f->slot[which] = route_slot(f->rc, key, kl);
        f->val[which] = f->rc->depgen[f->slot[which]];
    }
    return kl;
}

static int route_send_tenant(struct route_fetch *f)
{
    char key[ROUTE_KEY_MAX];
    size_t kl = route_stamp(f, CMD_TENANT, key, sizeof(key), RK_TENANT, f->tenant, strlen(f->tenant));
    if (kl == 0 || route_send(f, CMD_TENANT, "HGETALL", key, kl, 0) < 0) {
        f->tenant_failed = 1;
        return -1;
    }
    return 0;
}

/* Sends the domain-phase commands, pipelined.  0, or -1 when Redis took none. */
static int route_send_domain(struct route_fetch *f)
{
    struct route_ctx *rc = f->rc;
    char key[ROUTE_KEY_MAX], wkey[ROUTE_KEY_MAX], wname[HOST_MAX + 3];
    size_t wnl = 0;
    if (f->zone) {
        wname[0] = '*';
        wname[1] = '.';
        memcpy(wname + 2, f->zone, f->zl);
        wnl = f->zl + 2;
    }
    int fail = 0;
    size_t kl = route_stamp(f, CMD_EXACT, key, sizeof(key), RK_DOMAIN, f->host, f->hl);
    fail |= kl == 0 || route_send(f, CMD_EXACT, "HGETALL", key, kl, 0) < 0;
    if (f->zone && !fail) {
        kl = route_stamp(f, CMD_WILD, wkey, sizeof(wkey), RK_DOMAIN, wname, wnl);
        fail |= kl == 0 || route_send(f, CMD_WILD, "HGETALL", wkey, kl, 0) < 0;
    }
    if (!fail) {
        kl = route_stamp(f, CMD_PEXACT, key, sizeof(key), RK_PATHS, f->host, f->hl);
        fail |= kl == 0 || route_send(f, CMD_PEXACT, "LRANGE", key, kl, 1) < 0;
    }
    if (f->zone && !fail) {
        kl = route_stamp(f, CMD_PWILD, key, sizeof(key), RK_PATHS, wname, wnl);
        fail |= kl == 0 || route_send(f, CMD_PWILD, "LRANGE", key, kl, 1) < 0;
    }
    if (!fail) {
        kl = route_stamp(f, CMD_PAT, key, sizeof(key), RK_PATTERNS, "", 0);
        if (!route_pats_fresh(rc, rc->pats, f->started, f->val[CMD_PAT]))
            fail |= kl == 0 || route_send(f, CMD_PAT, "LRANGE", key, kl, 1) < 0;
    }
    if (fail)
        f->failed = 1;
    return f->outstanding > 0 ? 0 : -1;
}

/* ---- deciding ---- */

/* Makes the fetch's new routed record f->drec a BAD_DATA record and reports why. */
static void route_decide_bad(struct route_fetch *f, const char *what, const char *err)
{
    struct route_rec *d = f->drec;
    route_bad(f->rc, what, err);
    if (d->status == ROUTE_OK) {
        route_entry_drop_paths(&d->e);
        route_rec_unref(d->trec);
        route_pset_unref(d->e.set);
        d->e.set = NULL;
        d->e.tenant = NULL;
    }
    d->status = ROUTE_BAD_DATA;
    d->detail = "invalid routing data";
}

/*
 * Decides the match from the domain-phase replies (exact, wildcard,
 * patterns, in that order: ../shared/CONTRACT.md) into f->drec (left NULL,
 * with f->failed, when it cannot be decided).
 */
static void route_decide(struct route_fetch *f)
{
    struct route_ctx *rc = f->rc;
    int deps[3], nd = 0;
    deps[nd++] = CMD_EXACT;
    char what[ROUTE_KEY_MAX], err[200] = "";
    char wname[HOST_MAX + 3];
    if (f->zone) {
        wname[0] = '*';
        wname[1] = '.';
        memcpy(wname + 2, f->zone, f->zl);
        wname[f->zl + 2] = '\0';
    }
    const struct route_draft *dr = NULL;
    struct match_paths **paths = NULL;
    const char *perr = NULL;
    const char *keyname = NULL;
    size_t keylen = 0;
    if (f->exact.present) {
        dr = &f->exact;
        paths = &f->paths_exact;
        perr = f->paths_err_exact;
        keyname = f->host;
        keylen = f->hl;
        deps[nd++] = CMD_PEXACT;
    } else if (f->zone) {
        deps[nd++] = CMD_WILD;
        if (f->wild.present) {
            dr = &f->wild;
            paths = &f->paths_wild;
            perr = f->paths_err_wild;
            keyname = wname;
            keylen = f->zl + 2;
            deps[nd++] = CMD_PWILD;
        }
    }
    struct route_rec *d = NULL;
    const char *bad_what = NULL, *bad_err = NULL;
    char bad_buf[ROUTE_KEY_MAX + 64];
    if (dr) {
        if (route_key(rc, what, sizeof(what), RK_DOMAIN, keyname, keylen) == 0)
            snprintf(what, sizeof(what), "domain");
        if (dr->bad) {
            bad_what = what;
            bad_err = dr->err;
        } else if (perr && perr[0]) {
            if (route_key(rc, bad_buf, sizeof(bad_buf), RK_PATHS, keyname, keylen) == 0)
                snprintf(bad_buf, sizeof(bad_buf), "paths");
            bad_what = bad_buf;
            bad_err = perr;
        } else {
            if (dr->err[0])
                route_bad(rc, what, dr->err);        /* optional field defaulted */
            d = route_rec_routed(f->host, f->hl, dr->tenant, strlen(dr->tenant), dr->lb, dr->redirect_https,
                                 dr->backends, strlen(dr->backends), *paths, err, sizeof(err));
            *paths = NULL;
            if (d == NULL) {
                bad_what = what;
                bad_err = err;
            }
        }
    } else {
        /* Host patterns: first match wins; no path rules. */
        deps[nd++] = CMD_PAT;
        struct route_pats *p = rc->pats;
        if (route_key(rc, what, sizeof(what), RK_PATTERNS, "", 0) == 0)
            snprintf(what, sizeof(what), "patterns");
        if (p == NULL) {
            f->failed = 1;                           /* no list: the command failed */
            return;
        } else if (p->broken) {
            bad_what = what;
            bad_err = p->broken;
        } else {
            for (size_t i = 0; i < p->n; i++) {
                char out[MATCH_MAX_VALUE / 4];
                int m = match_pattern_exec(p->p[i], f->host, f->hl, out, sizeof(out), err, sizeof(err));
                if (m == 0)
                    continue;
                snprintf(bad_buf, sizeof(bad_buf), "%.100s (%.100s) for %.253s", what,
                         match_pattern_regex(p->p[i]), f->host);
                if (m < 0) {
                    bad_what = bad_buf;
                    bad_err = err;
                    break;
                }
                const char *ten = match_pattern_tenant(p->p[i]);
                d = route_rec_routed(f->host, f->hl, ten, strlen(ten), BAL_ROUND_ROBIN, 0, out, strlen(out), NULL,
                                     err, sizeof(err));
                if (d == NULL) {
                    bad_what = bad_buf;
                    bad_err = err;
                }
                break;
            }
        }
    }
    if (d == NULL) {
        d = route_rec_alloc(REC_DOMAIN, f->host, f->hl, NULL, 0);
        if (d == NULL) {
            f->failed = 1;
            return;
        }
        if (bad_what) {
            route_bad(rc, bad_what, bad_err);
            d->status = ROUTE_BAD_DATA;
            d->detail = "invalid routing data";
        } else {
            d->status = ROUTE_NOT_FOUND;
            d->detail = "unknown host";
        }
    }
    f->drec = d;
    d->fetched = f->started;
    d->gen = f->gen;
    for (int i = 0; i < nd; i++)
        route_rec_dep(d, f, deps[i]);
    double ttl = d->status == ROUTE_OK ? rc->cfg->route_cache_ttl : rc->cfg->route_negative_ttl;
    d->expires = f->started + route_ttl_cap(rc, ttl);
}

/*
 * A route whose backends are DNS names lives no longer than their answers
 * (their TTLs, docs/redis-schema.md); one that failed for a name that does
 * not resolve is a negative answer: route-negative-ttl, as a DNS failure.
 */
static void route_expire_by_dns(struct route_fetch *f)
{
    struct route_ctx *rc = f->rc;
    struct route_rec *d = f->drec;
    double until = d->status == ROUTE_OK ? f->dns_expires
                                         : f->started + route_ttl_cap(rc, rc->cfg->route_negative_ttl);
    if (until > 0 && until < d->expires)
        d->expires = until;
}

/* ---- fetch life cycle ---- */

/*
 * Keeps the round-robin cursors of the entry being replaced, so that a
 * revalidation (TTL, reconnect, an unrelated invalidation) does not send the
 * next requests back to the first backend.
 */
static void route_entry_carry(const struct route_entry *old, struct route_entry *e)
{
    if (old->set != e->set && old->set->n == e->set->n)
        e->set->rr = old->set->rr;
    for (size_t i = 0; i < e->n_paths && i < old->n_paths; i++)
        if (old->path_sets[i]->n == e->path_sets[i]->n)
            e->path_sets[i]->rr = old->path_sets[i]->rr;
}

/* Delivers the fetch's outcome to every waiter, caches it and frees the fetch. */
static void route_fetch_finish(struct route_fetch *f)
{
    struct route_ctx *rc = f->rc;
    double now = route_now();
    route_pending_del(rc, f);            /* lookups from callbacks start afresh */
    if (!f->failed && f->drec) {
        if (f->need_domain) {
            route_rec_born(rc, f->drec, f, CMD_EXACT);
            if (f->exact.present)
                route_rec_born(rc, f->drec, f, CMD_PEXACT);
            if (f->drec->status == ROUTE_OK)
                route_pset_intern(rc->pool, &f->drec->e.set);
            const struct route_rec *old = cache_peek(rc->routes, f->host, f->hl);
            if (old && old->status == ROUTE_OK && f->drec->status == ROUTE_OK)
                route_entry_carry(&old->e, &f->drec->e);
            route_cache_store(rc, f->drec);
        }
        if (f->trec) {
            route_rec_born(rc, f->trec, f, CMD_TENANT);
            route_cache_store(rc, f->trec);
        }
    }
    while (f->waiters) {
        struct route_lookup *w = f->waiters;
        f->waiters = w->next;
        if (f->waiters)
            f->waiters->prev = NULL;
        w->f = NULL;
        if (f->failed || f->drec == NULL) {
            route_answer_stale(rc, f->host, f->hl, w->path, w->path_len, w->cb, w->arg, now);
        } else if (f->drec->status != ROUTE_OK) {
            route_answer_recs(rc, f->drec, NULL, w->path, w->path_len, w->cb, w->arg);
        } else {
            const struct route_rec *t = f->trec;
            if (t == NULL) {
                int ts;
                t = route_domain_tenant(rc, f->drec, now, &ts);
                if (t == NULL)
                    t = route_domain_tenant_any(rc, f->drec);
                if (t && !route_rec_fresh(rc, t, now)) {
                    if (route_rec_servable_stale(rc, t, now))
                        rc->m.stale_served++;
                    else
                        t = NULL;
                }
            }
            if (t)
                route_answer_recs(rc, f->drec, t, w->path, w->path_len, w->cb, w->arg);
            else
                route_answer(w->cb, w->arg, ROUTE_UNAVAILABLE, NULL, NULL, NULL,
                             "tenant policy unavailable (Redis)");
        }
        free(w);
    }
    route_fetch_free(f);
}

/*
 * Moves a fetch on when nothing is in flight: decide after the domain
 * replies, then resolve names and fetch the tenant, then finish.
 */
static void route_fetch_advance(struct route_fetch *f)
{
    struct route_ctx *rc = f->rc;
    f->in_advance = 1;
    while (f->outstanding == 0) {
        if (f->phase == PH_DOMAIN) {
            f->phase = PH_RESOLVE;
            if (f->need_domain && !f->failed)
                route_decide(f);
            if (f->failed || f->drec == NULL || f->drec->status != ROUTE_OK)
                continue;
            char err[200] = "";
            if (route_entry_fill(f, &f->drec->e, 1, err, sizeof(err)) < 0) {
                char what[ROUTE_KEY_MAX];
                snprintf(what, sizeof(what), "backends of %s", f->host);
                route_decide_bad(f, what, err);
                route_expire_by_dns(f);
                continue;
            }
            snprintf(f->tenant, sizeof(f->tenant), "%s", f->drec->e.tenant);
            struct route_rec *t = route_cached_tenant(rc, f->tenant);
            if (t == NULL || !route_rec_fresh(rc, t, f->started))
                route_send_tenant(f);
        } else if (f->phase == PH_RESOLVE) {
            f->phase = PH_DONE;
            if (!f->failed && f->drec && f->drec->status == ROUTE_OK && f->need_domain) {
                char err[200] = "";
                if (route_entry_fill(f, &f->drec->e, 0, err, sizeof(err)) < 0) {
                    char what[ROUTE_KEY_MAX];
                    snprintf(what, sizeof(what), "backends of %s", f->host);
                    route_decide_bad(f, what, err);
                }
                route_expire_by_dns(f);
            }
            route_fetch_finish(f);
            return;
        } else {
            break;
        }
    }
    f->in_advance = 0;
}

/*
 * Starts a fetch for host: the full domain phase, or (drec given: a fresh
 * domain record whose tenant policy is stale) the tenant only.  Returns the
 * fetch, registered as pending, or NULL when Redis took no command.
 */
static struct route_fetch *route_fetch_start(struct route_ctx *rc, const char *host, size_t hl,
                                             struct route_rec *drec, double now)
{
    struct route_fetch *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->rc = rc;
    memcpy(f->host, host, hl);
    f->host[hl] = '\0';
    f->hl = hl;
    f->zone = host_zone(f->host, hl, &f->zl);
    f->started = now;
    f->gen = rc->gen;
    if (drec) {
        f->drec = drec;
        route_entry_ref(&drec->e);
        f->phase = PH_RESOLVE;
        snprintf(f->tenant, sizeof(f->tenant), "%s", drec->e.tenant);
        route_send_tenant(f);
    } else {
        f->need_domain = 1;
        f->phase = PH_DOMAIN;
        route_send_domain(f);
    }
    if (f->outstanding == 0) {
        f->waiters = NULL;
        route_fetch_free(f);
        return NULL;
    }
    size_t b = route_pbucket(host, hl);
    f->hnext = rc->pending[b];
    rc->pending[b] = f;
    return f;
}

/* ---- Redis connections and invalidation ---- */

static void route_set_up(struct route_ctx *rc, int up)
{
    rc->redis_up = up;
    if (up && rc->degraded_counted) {
        rc->degraded_counted = 0;
        atomic_fetch_sub(&route_degraded_workers, 1);
    } else if (!up && !rc->degraded_counted) {
        rc->degraded_counted = 1;
        atomic_fetch_add(&route_degraded_workers, 1);
    }
}

static void route_tracking_cb(void *arg, const struct redis_reply *r, const char *err)
{
    struct route_ctx *rc = arg;
    if (rc->closing)
        return;
    if (err || r == NULL || redis_reply_type(r) != REDIS_T_STATUS) {
        size_t n = 0;
        const char *s = r ? redis_reply_str(r, &n) : NULL;
        log_err_ratelimited("route-tracking", "%s: CLIENT TRACKING failed: %.*s (changes apply within 1 s by polling)",
                            __func__, (int)(s ? (n > 200 ? 200 : n) : (err ? strlen(err) : 0)), s ? s : (err ? err : ""));
        return;
    }
    if (rc->sub_ready && rc->redis_up) {
        rc->tracking = 1;
        /* Changes made before tracking started were not announced. */
        route_flush_freshness(rc);
        log_debug("%s: worker %d: client-side caching on", __func__, rc->worker_id);
    }
}

static void route_ignore_cb(void *arg, const struct redis_reply *r, const char *err)
{
    (void)arg;
    (void)r;
    (void)err;
}

/*
 * Asks the main connection to send invalidations for our key families to
 * the subscriber connection (RESP2 needs REDIRECT).  Tracking is switched
 * off first: the subscriber's client id changes when it reconnects.
 */
static void route_tracking_enable(struct route_ctx *rc)
{
    rc->tracking = 0;
    if (!rc->redis_up || !rc->sub_ready || rc->sub_id <= 0)
        return;
    char id[32], pd[ROUTE_KEY_MAX], pp[ROUTE_KEY_MAX], pt[ROUTE_KEY_MAX], pa[ROUTE_KEY_MAX];
    snprintf(id, sizeof(id), "%lld", rc->sub_id);
    size_t ld = route_key(rc, pd, sizeof(pd), RK_DOMAIN, "", 0);
    size_t lp = route_key(rc, pp, sizeof(pp), RK_PATHS, "", 0);
    size_t lt = route_key(rc, pt, sizeof(pt), RK_TENANT, "", 0);
    size_t la = route_key(rc, pa, sizeof(pa), RK_PATTERNS, "", 0);
    const char *off[3] = {"CLIENT", "TRACKING", "off"};
    size_t offl[3] = {6, 8, 3};
    redis_cmd(rc->main, route_ignore_cb, rc, 3, off, offl);
    const char *argv[14] = {"CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST", "PREFIX", pd, "PREFIX", pp,
                            "PREFIX", pt, "PREFIX", pa};
    size_t lens[14] = {6, 8, 2, 8, strlen(id), 5, 6, ld, 6, lp, 6, lt, 6, la};
    redis_cmd(rc->main, route_tracking_cb, rc, 14, argv, lens);
}

static void route_main_state(void *arg, int up)
{
    struct route_ctx *rc = arg;
    if (rc->closing)
        return;
    route_set_up(rc, up);
    rc->tracking = 0;
    /* Whatever changed while we were away was not announced to us. */
    route_flush_freshness(rc);
    if (up)
        route_tracking_enable(rc);
}

/* Handles one event hint: "domain <host>", "tenant <id>", "patterns" (others ignored). */
static void route_event(struct route_ctx *rc, const char *s, size_t n)
{
    char key[ROUTE_KEY_MAX];
    size_t kl;
    const char *name;
    size_t nl;
    int ev = schema_event_parse(s, n, &name, &nl);
    if (ev == SCHEMA_EV_DOMAIN) {
        char h[HOST_MAX + 3];
        size_t hl;
        if (nl > 2 && name[0] == '*' && name[1] == '.') {
            int zl = host_normalise(name + 2, nl - 2, h + 2);
            if (zl < 0)
                return;
            h[0] = '*';
            h[1] = '.';
            hl = (size_t)zl + 2;
        } else {
            int l = host_normalise(name, nl, h);
            if (l < 0)
                return;
            hl = (size_t)l;
        }
        if ((kl = route_key(rc, key, sizeof(key), RK_DOMAIN, h, hl)))
            route_invalidate_key(rc, key, kl);
        if ((kl = route_key(rc, key, sizeof(key), RK_PATHS, h, hl)))
            route_invalidate_key(rc, key, kl);
    } else if (ev == SCHEMA_EV_TENANT) {
        if ((kl = route_key(rc, key, sizeof(key), RK_TENANT, name, nl)))
            route_invalidate_key(rc, key, kl);
    } else if (ev == SCHEMA_EV_PATTERNS) {
        if ((kl = route_key(rc, key, sizeof(key), RK_PATTERNS, "", 0)))
            route_invalidate_key(rc, key, kl);
    }
}

/* Subscriber messages: ["subscribe", ch, n] / ["message", ch, payload]. */
static void route_sub_msg(void *arg, const struct redis_reply *r, const char *err)
{
    struct route_ctx *rc = arg;
    if (rc->closing)
        return;
    if (err || r == NULL) {
        rc->sub_ready = 0;
        rc->tracking = 0;
        return;
    }
    if (redis_reply_type(r) != REDIS_T_ARRAY || redis_reply_len(r) < 3)
        return;
    size_t tl, cl;
    const char *type = redis_reply_str(redis_reply_elem(r, 0), &tl);
    const char *ch = redis_reply_str(redis_reply_elem(r, 1), &cl);
    if (type == NULL || ch == NULL)
        return;
    int inval = cl == 20 && memcmp(ch, "__redis__:invalidate", 20) == 0;
    if (tl == 9 && memcmp(type, "subscribe", 9) == 0) {
        if (inval) {
            rc->sub_ready = 1;
            route_tracking_enable(rc);
        }
        return;
    }
    if (!(tl == 7 && memcmp(type, "message", 7) == 0))
        return;
    const struct redis_reply *p = redis_reply_elem(r, 2);
    if (inval) {
        int pt = redis_reply_type(p);
        if (pt == REDIS_T_NIL) {
            route_flush_freshness(rc);           /* FLUSHALL / FLUSHDB */
            rc->m.invalidations++;
        } else if (pt == REDIS_T_ARRAY) {
            for (size_t i = 0; i < redis_reply_len(p); i++) {
                size_t kl;
                const char *k = redis_reply_str(redis_reply_elem(p, i), &kl);
                if (k)
                    route_invalidate_key(rc, k, kl);
            }
        } else {
            size_t kl;
            const char *k = redis_reply_str(p, &kl);
            if (k)
                route_invalidate_key(rc, k, kl);
        }
        return;
    }
    size_t n;
    const char *s = redis_reply_str(p, &n);
    if (s && n <= 600)
        route_event(rc, s, n);
}

static void route_sub_id(void *arg, const struct redis_reply *r, const char *err)
{
    struct route_ctx *rc = arg;
    if (rc->closing || err || r == NULL || redis_reply_type(r) != REDIS_T_INTEGER)
        return;
    rc->sub_id = redis_reply_int(r);
    route_tracking_enable(rc);
}

static void route_sub_state(void *arg, int up)
{
    struct route_ctx *rc = arg;
    if (rc->closing)
        return;
    rc->sub_ready = 0;
    rc->sub_id = 0;
    rc->tracking = 0;
    route_flush_freshness(rc);
    if (!up)
        return;
    char ev[ROUTE_KEY_MAX];
    size_t el = route_key(rc, ev, sizeof(ev), RK_EVENTS, "", 0);
    const char *idv[2] = {"CLIENT", "ID"};
    size_t idl[2] = {6, 2};
    redis_cmd(rc->sub, route_sub_id, rc, 2, idv, idl);
    const char *sv[3] = {"SUBSCRIBE", "__redis__:invalidate", ev};
    size_t sl[3] = {9, 20, el};
    redis_cmd(rc->sub, route_sub_msg, rc, el ? 3 : 2, sv, sl);
}

/* ---- context ---- */

/*
 * Frees what a context owns once its Redis links are gone and no fetch is
 * pending (the end of route_ctx_free, and route_ctx_new's failure path).
 */
static void route_ctx_release(struct route_ctx *rc)
{
    if (rc->degraded_counted)
        atomic_fetch_sub(&route_degraded_workers, 1);
    route_pats_free(rc->pats);
    cache_free(rc->routes);
    cache_free(rc->tenants);
    cache_free(rc->neg);
    cache_free(rc->dns);
    hosts_free(rc->hosts);
    route_pool_free(rc->pool);
    free(rc->depgen);
    route_statics_free(rc->statics, rc->n_slots);
    bal_health_free(rc->health);
    free(rc);
}

struct route_ctx *route_ctx_new(struct event_base *base, const struct tg_config *cfg,
                                const struct route_addrs *addrs, int worker_id, char *err, size_t errlen)
{
    const char *prefix = cfg->key_prefix ? cfg->key_prefix : "tg:";
    if (!schema_prefix_valid(prefix)) {
        snprintf(err, errlen, "bad key prefix (at most %d printable bytes, no spaces)", ROUTE_PREFIX_MAX);
        return NULL;
    }
    struct route_ctx *rc = calloc(1, sizeof(*rc));
    if (rc == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    rc->base = base;
    rc->cfg = cfg;
    rc->worker_id = worker_id;
    rc->cooldown = cfg->backend_cooldown;
    snprintf(rc->prefix, sizeof(rc->prefix), "%s", prefix);
    rc->prefix_len = strlen(rc->prefix);
    /* Tests point the resolver at a hosts file they can edit; nothing else sets it. */
    const char *hosts = getenv("TOLLGATE_TEST_HOSTS_FILE");
    snprintf(rc->hosts_path, sizeof(rc->hosts_path), "%s", hosts && hosts[0] ? hosts : ROUTE_HOSTS_FILE);
    /* And at a fake DNS server (a resolv.conf naming it); nothing else sets it either. */
    const char *resolv = getenv("TOLLGATE_TEST_RESOLV_CONF");
    snprintf(rc->resolv_path, sizeof(rc->resolv_path), "%s", resolv ? resolv : "");
    rc->health = bal_health_new();
    if (rc->health == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (route_statics_build(cfg, addrs, &rc->statics, &rc->n_slots, err, errlen) < 0)
        goto fail;
    if (cfg->redis_url) {
        if (base == NULL) {
            snprintf(err, errlen, "Redis routing needs an event base");
            goto fail;
        }
        size_t cap = cfg->route_cache_size ? cfg->route_cache_size : 100000;
        size_t quarter = cap / 4 > 64 ? cap / 4 : 64;
        rc->routes = cache_new_keyed(cap, route_rec_free_cb, route_rec_key);
        rc->tenants = cache_new_keyed(quarter, route_rec_free_cb, route_rec_key);
        rc->neg = cache_new_keyed(quarter, route_rec_free_cb, route_rec_key);
        rc->dns = cache_new(ROUTE_DNS_CACHE, free);
        rc->pool = route_pool_new(cap);
        rc->depgen = calloc(ROUTE_DEP_SLOTS, sizeof(*rc->depgen));
        if (rc->routes == NULL || rc->tenants == NULL || rc->neg == NULL || rc->dns == NULL ||
            rc->pool == NULL || rc->depgen == NULL) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        route_set_up(rc, 0);
        double to = cfg->redis_timeout > 0 ? cfg->redis_timeout : 0.2;
        rc->main = redis_conn_new(base, cfg->redis_url, to, route_main_state, rc, err, errlen);
        if (rc->main == NULL)
            goto fail;
        rc->sub = redis_conn_new(base, cfg->redis_url, to, route_sub_state, rc, err, errlen);
        if (rc->sub == NULL)
            goto fail;
        char name[64];
        snprintf(name, sizeof(name), "routing, worker %d", worker_id);
        redis_conn_set_name(rc->main, name);
        snprintf(name, sizeof(name), "invalidations, worker %d", worker_id);
        redis_conn_set_name(rc->sub, name);
    }
    route_reg_add(rc);
    return rc;
fail:
    rc->closing = 1;
    redis_conn_free(rc->main);
    redis_conn_free(rc->sub);
    route_ctx_release(rc);
    return NULL;
}

int route_ctx_reload(struct route_ctx *rc, const struct tg_config *cfg, const struct route_addrs *addrs,
                     char *err, size_t errlen)
{
    struct route_static *t;
    size_t slots;
    if (route_statics_build(cfg, addrs, &t, &slots, err, errlen) < 0)
        return -1;
    route_statics_free(rc->statics, rc->n_slots);
    rc->statics = t;
    rc->n_slots = slots;
    rc->cfg = cfg;
    rc->cooldown = cfg->backend_cooldown;
    if (rc->routes)
        route_flush_freshness(rc);       /* TTLs may have changed */
    /* A reload re-resolves names, as the static routes' are: DNS answers and the hosts file afresh. */
    rc->dns_flushed = route_now();
    rc->hosts_next = 0;
    return 0;
}

void route_ctx_free(struct route_ctx *rc)
{
    if (rc == NULL)
        return;
    route_reg_del(rc);
    rc->closing = 1;
    /* Pending lookups are cancelled without callbacks. */
    for (size_t b = 0; b < ROUTE_PENDING_BUCKETS; b++)
        for (struct route_fetch *f = rc->pending[b]; f; f = f->hnext)
            while (f->waiters) {
                struct route_lookup *w = f->waiters;
                f->waiters = w->next;
                w->f = NULL;
                free(w);
            }
    /* Failing the pending commands frees the fetches that have no DNS request left. */
    redis_conn_free(rc->main);
    redis_conn_free(rc->sub);
    if (rc->dnsb)
        evdns_base_free(rc->dnsb, 0);     /* no callbacks */
    for (struct route_dns **l = &rc->dns_reqs; l; l = l == &rc->dns_reqs ? &rc->dns_left : NULL)
        while (*l) {
            struct route_dns *d = *l;
            *l = d->next;
            route_dns_free(d);
        }
    for (size_t b = 0; b < ROUTE_PENDING_BUCKETS; b++)
        while (rc->pending[b])
            route_fetch_free(rc->pending[b]);
    route_ctx_release(rc);
}

/* ---- lookup ---- */

/*
 * Starts a background fetch for host (of its tenant only when drec, its
 * fresh record, is given) unless one is in flight or Redis is down; the
 * fetch has no waiter and stores what it gets.
 */
static void route_refresh(struct route_ctx *rc, const char *host, size_t hl, struct route_rec *drec, double now)
{
    if (route_pending_find(rc, host, hl) || !redis_conn_is_up(rc->main))
        return;
    if (route_fetch_start(rc, host, hl, drec, now))
        rc->m.refreshes++;
}

struct route_lookup *route_lookup(struct route_ctx *rc, const char *host, size_t host_len,
                                  const char *path, size_t path_len, route_cb cb, void *arg)
{
    char h[HOST_MAX + 1];
    int hl = host_normalise(host, host_len, h);
    if (hl < 0) {
        route_answer(cb, arg, ROUTE_BAD_HOST, NULL, NULL, NULL, "invalid Host");
        return NULL;
    }
    uint64_t hash = (rc->n_slots || rc->routes) ? cache_hash(h, (size_t)hl) : 0;
    const struct route_static *s = route_static_find(rc, h, (size_t)hl, hash);
    if (s) {
        route_answer(cb, arg, ROUTE_OK, s->entry, NULL, NULL, NULL);
        return NULL;
    }
    if (rc->routes == NULL) {
        route_answer(cb, arg, ROUTE_NOT_FOUND, NULL, NULL, NULL, "unknown host");
        return NULL;
    }
    if (path == NULL)
        path_len = 0;
    double now = route_now_coarse();
    struct route_rec *d = route_cached_domain(rc, h, (size_t)hl, hash);
    struct route_rec *tenant_only = NULL;
    int ds = d ? route_rec_state(rc, d, now) : REC_OLD;
    if (ds != REC_OLD) {
        if (d->status != ROUTE_OK) {
            rc->m.hits++;
            if (ds == REC_REFRESH)
                route_refresh(rc, h, (size_t)hl, NULL, now);
            route_answer_recs(rc, d, NULL, path, path_len, cb, arg);
            return NULL;
        }
        int ts;
        struct route_rec *t = route_domain_tenant(rc, d, now, &ts);
        if (t) {
            rc->m.hits++;
            if (ds == REC_REFRESH)
                route_refresh(rc, h, (size_t)hl, NULL, now);    /* renews the tenant too if due */
            else if (ts == REC_REFRESH)
                route_refresh(rc, h, (size_t)hl, d, now);
            route_answer_recs(rc, d, t, path, path_len, cb, arg);
            return NULL;
        }
        if (ds == REC_FRESH)
            tenant_only = d;
    }
    rc->m.misses++;
    struct route_fetch *f = route_pending_find(rc, h, (size_t)hl);
    if (f) {
        rc->m.coalesced++;
    } else {
        if (!redis_conn_is_up(rc->main)) {
            route_answer_stale(rc, h, (size_t)hl, path, path_len, cb, arg, now);
            return NULL;
        }
        f = route_fetch_start(rc, h, (size_t)hl, tenant_only, now);
        if (f == NULL) {
            route_answer_stale(rc, h, (size_t)hl, path, path_len, cb, arg, now);
            return NULL;
        }
    }
    struct route_lookup *w = malloc(sizeof(*w) + path_len + 1);
    if (w == NULL) {
        route_answer(cb, arg, ROUTE_UNAVAILABLE, NULL, NULL, NULL, "out of memory");
        return NULL;
    }
    w->f = f;
    w->cb = cb;
    w->arg = arg;
    w->path_len = path_len;
    if (path_len)
        memcpy(w->path, path, path_len);
    w->path[path_len] = '\0';
    w->prev = NULL;
    w->next = f->waiters;
    if (f->waiters)
        f->waiters->prev = w;
    f->waiters = w;
    return w;
}

void route_lookup_cancel(struct route_lookup *lk)
{
    if (lk == NULL)
        return;
    struct route_fetch *f = lk->f;
    if (f) {
        if (lk->prev)
            lk->prev->next = lk->next;
        else
            f->waiters = lk->next;
        if (lk->next)
            lk->next->prev = lk->prev;
    }
    free(lk);
}

/* ---- balancing ---- */

int route_pick(struct route_ctx *rc, const struct route_backends *set, uint64_t *tried,
               struct route_target *out)
{
    /* The set's round-robin cursor is the only mutable part of an entry (worker-private). */
    int i = bal_pick(rc->health, (struct route_backends *)set, tried, route_now_coarse());
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
    if (outcome == ROUTE_OUTCOME_CONNECT_FAIL || outcome == ROUTE_OUTCOME_CONNECT_TIMEOUT
        || outcome == ROUTE_OUTCOME_FAILED)
        log_debug("%s: backend %s: %s, cooling down %.1fs", __func__, t->name,
                  outcome == ROUTE_OUTCOME_CONNECT_FAIL      ? "connect failed"
                  : outcome == ROUTE_OUTCOME_CONNECT_TIMEOUT ? "connect timed out"
                                                             : "failed before answering",
                  rc->cooldown);
    bal_report(rc->health, set, t->index, outcome, route_now_coarse(), rc->cooldown);
}

void route_release(struct route_ctx *rc, const struct route_backends *set, const struct route_target *t)
{
    bal_release(rc->health, set, t->index);
}
