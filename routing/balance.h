/*
 * balance: backend sets, load balancing (round robin, least connections)
 * and passive health (a backend that refused a connection or timed out on
 * connect is skipped for a cool-down).  One struct bal_health per worker,
 * used only from that worker's thread: no locks.  Health and active counts
 * are kept per backend *address*, so they survive the replacement of a
 * route entry (a Redis update) and are shared by every set that names the
 * same backend.
 */
#ifndef TG_BALANCE_H
#define TG_BALANCE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "routing/route.h"

/* At most this many backends in a set: route_pick()'s tried-mask is 64 bits. */
#define BAL_MAX_BACKENDS 64

enum bal_lb { BAL_ROUND_ROBIN = 0, BAL_LEAST_CONN = 1 };

struct bal_backend {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char name[128];            /* "host:port" as configured */
};

/*
 * A backend set (route.h's opaque struct route_backends).  Allocated with
 * bal_set_new() and owned by the route entry that holds it; only rr changes
 * after it is built (on the owning worker's thread).
 */
struct route_backends {
    int lb;                    /* enum bal_lb */
    unsigned rr;               /* round-robin cursor */
    size_t n;
    struct bal_backend b[];
};

/* Allocates a set for n (1..BAL_MAX_BACKENDS) backends, zeroed; NULL on bad n or OOM. */
struct route_backends *bal_set_new(size_t n, int lb);
void bal_set_free(struct route_backends *s);

/* Parses "round_robin" / "least_conn" (len bytes); -1 if unknown. */
int bal_lb_parse(const char *s, size_t len);

struct bal_health;
struct bal_health *bal_health_new(void);
void bal_health_free(struct bal_health *h);

/*
 * Picks a backend index from set (see route_pick() in route.h): skips the
 * backends whose bit is set in *tried, prefers those not cooling down at
 * time now (seconds, monotonic), and falls back to the cooling one whose
 * cool-down ends first when every untried backend is cooling.  Sets the bit
 * and counts the backend active.  Returns the index, or -1 when none is left.
 */
int bal_pick(struct bal_health *h, struct route_backends *set, uint64_t *tried, double now);

/*
 * Records how backend idx of set did: CONNECT_FAIL or CONNECT_TIMEOUT cools
 * it down until now + cooldown, OK clears a cool-down, ERROR changes
 * nothing.  May be called any number of times per pick; the active count is
 * bal_release()'s.
 */
void bal_report(struct bal_health *h, const struct route_backends *set, size_t idx,
                enum route_outcome outcome, double now, double cooldown);

/* Ends the active count that one bal_pick() of backend idx started: called
 * exactly once per successful pick, when that exchange ends. */
void bal_release(struct bal_health *h, const struct route_backends *set, size_t idx);

/* Active count of an address (for tests and least_conn); 0 when unknown. */
int bal_active(struct bal_health *h, const struct sockaddr *sa, socklen_t len);
/* 1 when the address is cooling down at time now. */
int bal_cooling(struct bal_health *h, const struct sockaddr *sa, socklen_t len, double now);

#endif
