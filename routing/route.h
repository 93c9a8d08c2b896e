/*
 * route: the only routing API the proxy engine sees.  Turns (host, path) into
 * a tenant, a tenant policy and a backend set, and picks a backend from the
 * set (load balancing, passive health).  One struct route_ctx per worker
 * thread, used only from that worker's event loop: its cache, its Redis
 * connections and its backend-health table are private to the worker, so the
 * hot path takes no lock.
 *
 * Sources: static routes from the config (tenant "default") and, when
 * --redis is set, the Redis schema in ../shared/CONTRACT.md.
 *
 * Return convention: 0 / -1 for actions, NULL for "no handle".
 */
#ifndef TG_ROUTE_H
#define TG_ROUTE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;
struct tg_config;

struct route_ctx;       /* per worker; opaque */
struct route_entry;     /* refcounted (per worker, not thread-safe), immutable */
struct route_backends;  /* a backend set inside an entry; lives as long as the entry */
struct route_lookup;    /* a pending lookup */

enum route_status {
    ROUTE_OK = 0,
    ROUTE_BAD_HOST,      /* Host invalid: 400 */
    ROUTE_NOT_FOUND,     /* unknown host: 404 */
    ROUTE_UNAVAILABLE,   /* not cached and Redis unreachable or too slow: 503 + Retry-After */
    ROUTE_BAD_DATA,      /* routing data for this host is invalid: 502 */
};

enum tenant_cap_action { CAP_BLOCK = 0, CAP_THROTTLE = 1 };

/* A tenant's policy, from tg:tenant:<tenant>; copied by value. */
struct tenant_policy {
    int64_t cap_bytes;          /* -1 = no cap */
    int cap_action;             /* enum tenant_cap_action */
    int64_t throttle_bps;       /* bytes per second; 0 = not set */
    int suspended;              /* 0 / 1 */
};

struct route_result {
    enum route_status status;
    struct route_entry *entry;            /* borrowed: valid during the callback; route_entry_ref() to keep */
    const char *tenant;                   /* valid as long as entry */
    const struct route_backends *backends;/* chosen by path rules; valid as long as entry */
    struct tenant_policy policy;
    int redirect_https;
    const char *detail;                   /* short reason for error pages/logs, may be NULL */
};

/* Called exactly once per lookup unless cancelled, on the worker's loop. */
typedef void (*route_cb)(void *arg, const struct route_result *res);

/*
 * The addresses of the static routes' backends named by DNS names, resolved
 * once per configuration by the main thread (getaddrinfo blocks: never on a
 * worker's loop), so that every worker serves the same addresses and a name
 * that does not resolve fails `tollgate -t`, start-up and a reload alike,
 * before anything is committed.  Immutable once built; shared read-only.
 */
struct route_addrs;
/* Resolves every name in cfg's static routes.  NULL with err ("ORIGIN: route HOST: cannot resolve ..."). */
struct route_addrs *route_addrs_resolve(const struct tg_config *cfg, char *err, size_t errlen);
void route_addrs_free(struct route_addrs *a);

/*
 * Creates a worker's routing context on base.  Connects to Redis
 * asynchronously when cfg->redis_url is set (failure to connect is not an
 * error: lookups answer ROUTE_UNAVAILABLE until it connects).  cfg and addrs
 * (route_addrs_resolve() of cfg) must outlive the ctx or be replaced with
 * route_ctx_reload().  Returns NULL with err filled on a config error.
 */
struct route_ctx *route_ctx_new(struct event_base *base, const struct tg_config *cfg,
                                const struct route_addrs *addrs, int worker_id, char *err, size_t errlen);
/* Applies a new config (static routes, timeouts) on the worker's thread; never resolves a name. 0 / -1. */
int route_ctx_reload(struct route_ctx *rc, const struct tg_config *cfg, const struct route_addrs *addrs,
                     char *err, size_t errlen);
/* Frees the ctx; pending lookups are cancelled without callbacks; entries still referenced stay valid. */
void route_ctx_free(struct route_ctx *rc);

/*
 * Looks up host (raw Host header value: normalised here) and path.
 * When the answer is known at once (cache hit, static route, bad host), cb is
 * called before this returns and the return value is NULL.  Otherwise it
 * returns a handle and cb is called later; concurrent lookups of the same
 * uncached host share one Redis round trip.
 */
struct route_lookup *route_lookup(struct route_ctx *rc, const char *host, size_t host_len,
                                  const char *path, size_t path_len, route_cb cb, void *arg);
/* Cancels a pending lookup: cb will not be called. */
void route_lookup_cancel(struct route_lookup *lk);

void route_entry_ref(struct route_entry *e);
void route_entry_unref(struct route_entry *e);

/* A concrete backend to connect to. */
struct route_target {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    unsigned index;          /* position in the set; used for the tried-mask */
    char name[128];          /* "host:port" as configured, for logs and pool keys */
};

/*
 * Picks a backend from set, skipping those whose bit is set in *tried and
 * those in passive-health cool-down (unless all are cooling down, in which
 * case a cooling one may be tried).  Sets the chosen bit in *tried and
 * counts it active for least_conn.  Returns 0, or -1 when no backend is left
 * (the caller answers 502).
 */
int route_pick(struct route_ctx *rc, const struct route_backends *set, uint64_t *tried,
               struct route_target *out);

enum route_outcome {
    ROUTE_OUTCOME_OK = 0,          /* got a response */
    ROUTE_OUTCOME_CONNECT_FAIL,    /* refused / unreachable: cool down */
    ROUTE_OUTCOME_CONNECT_TIMEOUT, /* cool down */
    ROUTE_OUTCOME_FAILED,          /* reset, timeout or a broken answer before a response head: cool down */
    ROUTE_OUTCOME_ERROR,           /* reset or timeout once the response has begun: no cool-down */
};
/* Reports how a picked backend did (passive health: cool-down or not); any
 * number of times per pick. */
void route_report(struct route_ctx *rc, const struct route_backends *set,
                  const struct route_target *t, enum route_outcome outcome);

/* Ends the least_conn active count of one successful route_pick(): exactly
 * once per pick, when the exchange with that backend ends (its connection
 * pooled or closed, or the connect failed). */
void route_release(struct route_ctx *rc, const struct route_backends *set, const struct route_target *t);

/* Number of backends in a set. */
size_t route_backends_count(const struct route_backends *set);

/* Process-wide health for /healthz: 0 ok, 1 degraded (Redis configured but unreachable). Thread-safe. */
int route_degraded(void);

#endif
