/*
 * balance: backend picking and passive health.  The health table is a small
 * chained hash keyed by the backend's socket address; entries are created on
 * first pick and swept only when the table grows past a bound, so a steady
 * state of requests allocates nothing.
 */
#include "routing/balance.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#define BAL_BUCKETS 1024
#define BAL_SWEEP_AT 4096   /* entries; above this, idle healthy entries are dropped */

struct bal_node {
    struct bal_node *next;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int active;
    double cool_until;
};

struct bal_health {
    struct bal_node *buckets[BAL_BUCKETS];
    size_t count;
};

struct route_backends *bal_set_new(size_t n, int lb)
{
    if (n == 0 || n > BAL_MAX_BACKENDS)
        return NULL;
    struct route_backends *s = calloc(1, sizeof(*s) + n * sizeof(s->b[0]));
    if (s == NULL)
        return NULL;
    s->n = n;
    s->lb = lb;
    return s;
}

void bal_set_free(struct route_backends *s)
{
    free(s);
}

int bal_lb_parse(const char *s, size_t len)
{
    if (len == 11 && memcmp(s, "round_robin", 11) == 0)
        return BAL_ROUND_ROBIN;
    if (len == 10 && memcmp(s, "least_conn", 10) == 0)
        return BAL_LEAST_CONN;
    return -1;
}

struct bal_health *bal_health_new(void)
{
    return calloc(1, sizeof(struct bal_health));
}

void bal_health_free(struct bal_health *h)
{
    if (h == NULL)
        return;
    for (size_t i = 0; i < BAL_BUCKETS; i++) {
        struct bal_node *n = h->buckets[i];
        while (n) {
            struct bal_node *next = n->next;
            free(n);
            n = next;
        }
    }
    free(h);
}

/* Hashes only the meaningful bytes of the address (family, port, address). */
static size_t bal_hash(const struct sockaddr *sa)
{
    uint64_t x = 1469598103934665603ULL;
    const unsigned char *p;
    size_t n;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        x ^= in->sin_port;
        p = (const unsigned char *)&in->sin_addr;
        n = sizeof(in->sin_addr);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        x ^= in6->sin6_port;
        p = (const unsigned char *)&in6->sin6_addr;
        n = sizeof(in6->sin6_addr);
    } else {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        x ^= p[i];
        x *= 1099511628211ULL;
    }
    return (size_t)(x % BAL_BUCKETS);
}

static int bal_same(const struct sockaddr *a, const struct sockaddr_storage *b)
{
    if (a->sa_family != b->ss_family)
        return 0;
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->sa_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return 0;
}

static struct bal_node *bal_find(struct bal_health *h, const struct sockaddr *sa)
{
    for (struct bal_node *n = h->buckets[bal_hash(sa)]; n; n = n->next)
        if (bal_same(sa, &n->addr))
            return n;
    return NULL;
}

/* Drops idle, healthy entries; called when the table grew past BAL_SWEEP_AT. */
static void bal_sweep(struct bal_health *h, double now)
{
    for (size_t i = 0; i < BAL_BUCKETS; i++) {
        struct bal_node **pp = &h->buckets[i];
        while (*pp) {
            struct bal_node *n = *pp;
            if (n->active <= 0 && n->cool_until <= now) {
                *pp = n->next;
                free(n);
                h->count--;
            } else {
                pp = &n->next;
            }
        }
    }
}

static struct bal_node *bal_get(struct bal_health *h, const struct sockaddr *sa, socklen_t len, double now)
{
    struct bal_node *n = bal_find(h, sa);
    if (n)
        return n;
    if (h->count >= BAL_SWEEP_AT)
        bal_sweep(h, now);
    n = calloc(1, sizeof(*n));
    if (n == NULL)
        return NULL;
    if (len > sizeof(n->addr))
        len = sizeof(n->addr);
    memcpy(&n->addr, sa, len);
    n->addrlen = len;
    size_t b = bal_hash(sa);
    n->next = h->buckets[b];
    h->buckets[b] = n;
    h->count++;
    return n;
}

int bal_pick(struct bal_health *h, struct route_backends *set, uint64_t *tried, double now)
{
    if (set == NULL || set->n == 0 || tried == NULL)
        return -1;
    size_t n = set->n;
    size_t start = set->rr % n;
    int best = -1, best_cool = -1;
    int best_active = 0;
    double best_until = 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % n;
        if (*tried & (1ULL << i))
            continue;
        const struct sockaddr *sa = (const struct sockaddr *)&set->b[i].addr;
        struct bal_node *node = h ? bal_find(h, sa) : NULL;
        if (node && node->cool_until > now) {
            if (best_cool < 0 || node->cool_until < best_until) {
                best_cool = (int)i;
                best_until = node->cool_until;
            }
            continue;
        }
        int active = node ? node->active : 0;
        if (best < 0 || (set->lb == BAL_LEAST_CONN && active < best_active)) {
            best = (int)i;
            best_active = active;
            if (set->lb != BAL_LEAST_CONN)
                break;           /* round robin: the first eligible after the cursor */
        }
    }
    if (best < 0)
        best = best_cool;
    if (best < 0)
        return -1;
    set->rr = (unsigned)best + 1;
    *tried |= 1ULL << best;
    if (h) {
        struct bal_node *node = bal_get(h, (const struct sockaddr *)&set->b[best].addr,
                                        set->b[best].addrlen, now);
        if (node)
            node->active++;
    }
    return best;
}

void bal_report(struct bal_health *h, const struct route_backends *set, size_t idx,
                enum route_outcome outcome, double now, double cooldown)
{
    if (h == NULL || set == NULL || idx >= set->n)
        return;
    struct bal_node *node = bal_find(h, (const struct sockaddr *)&set->b[idx].addr);
    if (node == NULL)
        return;
    /* As nginx's max_fails=1: any failure before an answer took the
     * backend out (a hung process that accepts connections would otherwise
     * hold every other request until its read timeout).  One that breaks
     * off an answer it began is still answering. */
    if (outcome == ROUTE_OUTCOME_CONNECT_FAIL || outcome == ROUTE_OUTCOME_CONNECT_TIMEOUT
        || outcome == ROUTE_OUTCOME_FAILED)
        node->cool_until = now + cooldown;
    else if (outcome == ROUTE_OUTCOME_OK)
        node->cool_until = 0;
}

void bal_release(struct bal_health *h, const struct route_backends *set, size_t idx)
{
    if (h == NULL || set == NULL || idx >= set->n)
        return;
    struct bal_node *node = bal_find(h, (const struct sockaddr *)&set->b[idx].addr);
    if (node != NULL && node->active > 0)
        node->active--;
}

int bal_active(struct bal_health *h, const struct sockaddr *sa, socklen_t len)
{
    (void)len;
    struct bal_node *n = h ? bal_find(h, sa) : NULL;
    return n ? n->active : 0;
}

int bal_cooling(struct bal_health *h, const struct sockaddr *sa, socklen_t len, double now)
{
    (void)len;
    struct bal_node *n = h ? bal_find(h, sa) : NULL;
    return n ? n->cool_until > now : 0;
}
