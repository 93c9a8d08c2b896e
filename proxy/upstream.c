/*
 * upstream: dialling backends and the per-worker idle-connection pool.
 *
 * The pool is a small open hash of backend addresses, each with a LIFO list
 * of idle connections (the most recently used one is the most likely to be
 * still open on the backend's side).  An idle connection keeps EV_READ
 * enabled: any byte or EOF from the backend means it is no longer clean, and
 * it is closed at once, so a half-read connection is never handed out.
 *
 * Idle connections also sit on one list per pool in the order they came
 * back, and one timer, armed for the oldest, closes those idle longer than
 * the pool's idle time.  A put or a get touches no timer (a bufferevent
 * timeout per put would cost a timer-heap insertion per request); the
 * connection keeps the timeouts its last request set, so one may also go
 * earlier, at the upstream read timeout, when that is shorter.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <event2/event.h>
#include <event2/bufferevent.h>
#include <event2/buffer.h>
#include <event2/util.h>

#include "proxy/upstream.h"
#include "proxy/bev.h"
#include "proxy/log.h"
#include "routing/route.h"

#define POOL_MAX_IDLE_PER_KEY UPSTREAM_POOL_MAX_IDLE
#define POOL_MAX_KEYS 1024
#define POOL_MAX_PROBE 32      /* bounded lookups: a full table means "not pooled" */

struct idle_conn {
    struct bufferevent *bev;
    struct upstream_key *key;
    struct idle_conn *next, *prev;    /* the key's list, newest first */
    struct idle_conn *newer, *older;  /* the pool's list, oldest first */
    struct upstream_pool *pool;
    struct timeval since;             /* back in the pool at (mono_now) */
};

struct upstream_key {
    struct sockaddr_storage addr;
    socklen_t addrlen;           /* 0: slot empty or deleted */
    unsigned char deleted;       /* tombstone: lookups probe past it */
    struct idle_conn *head;   /* most recently returned first */
    unsigned n_idle;
};

struct upstream_pool {
    struct event_base *base;
    struct timeval idle_tv;
    struct idle_conn *spare;     /* unused entries (linked by next): no malloc per put */
    struct idle_conn *oldest, *newest;
    struct event *expiry;        /* armed for the oldest entry while any is idle */
    struct upstream_key keys[POOL_MAX_KEYS]; /* open addressing by address hash */
    unsigned n_keys;
};

/* The address's bytes hashed 8 at a time (a multiply and a shift each). */
static uint32_t addr_hash(const struct sockaddr_storage *a, socklen_t len)
{
    const unsigned char *p = (const unsigned char *)a;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)len;
    socklen_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    for (; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    h ^= h >> 29;
    return (uint32_t)h;
}

/*
 * Finds (create = 1: or creates) the key for t within POOL_MAX_PROBE slots;
 * NULL when absent (or no slot is free nearby).  A key whose last idle
 * connection goes becomes a tombstone, so the table never fills up with
 * addresses of backends that are gone.
 */
static struct upstream_key *key_find(struct upstream_pool *p, const struct route_target *t, int create)
{
    uint32_t h = addr_hash(&t->addr, t->addrlen) % POOL_MAX_KEYS;
    struct upstream_key *free_slot = NULL;
    for (unsigned i = 0; i < POOL_MAX_PROBE; i++) {
        struct upstream_key *k = &p->keys[(h + i) % POOL_MAX_KEYS];
        if (k->addrlen == 0) {
            if (!free_slot)
                free_slot = k;
            if (!k->deleted)
                break;          /* never used: the key is not further on */
            continue;
        }
        if (k->addrlen == t->addrlen && memcmp(&k->addr, &t->addr, t->addrlen) == 0)
            return k;
    }
    if (!create || !free_slot)
        return NULL;
    memcpy(&free_slot->addr, &t->addr, t->addrlen);
    free_slot->addrlen = t->addrlen;
    free_slot->deleted = 0;
    p->n_keys++;
    return free_slot;
}

static void expiry_cb(evutil_socket_t fd, short what, void *arg);

/* Idle times are read from the monotonic clock (a coarse read, as the event
 * loop's own): a step of the wall clock neither keeps nor drops connections. */
static void mono_now(struct timeval *tv)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = (suseconds_t)(ts.tv_nsec / 1000);
}

struct upstream_pool *upstream_pool_new(struct event_base *base, double idle_s)
{
    struct upstream_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->base = base;
    p->idle_tv.tv_sec = (time_t)idle_s;
    p->idle_tv.tv_usec = (suseconds_t)((idle_s - (double)(time_t)idle_s) * 1e6);
    p->expiry = evtimer_new(base, expiry_cb, p);
    if (!p->expiry) {
        free(p);
        return NULL;
    }
    return p;
}

/* Arms the timer for when the oldest idle connection has been idle long enough. */
static void expiry_arm(struct upstream_pool *p)
{
    struct timeval now, due, wait = { 0, 0 };
    mono_now(&now);
    evutil_timeradd(&p->oldest->since, &p->idle_tv, &due);
    if (evutil_timercmp(&due, &now, >))
        evutil_timersub(&due, &now, &wait);
    evtimer_add(p->expiry, &wait);
}

static void idle_unlink(struct idle_conn *ic)
{
    struct upstream_pool *p = ic->pool;
    if (ic->older)
        ic->older->newer = ic->newer;
    else
        p->oldest = ic->newer;
    if (ic->newer)
        ic->newer->older = ic->older;
    else
        p->newest = ic->older;
    struct upstream_key *k = ic->key;
    if (ic->prev)
        ic->prev->next = ic->next;
    else
        k->head = ic->next;
    if (ic->next)
        ic->next->prev = ic->prev;
    if (--k->n_idle == 0) {
        k->addrlen = 0;
        k->deleted = 1;
        ic->pool->n_keys--;
    }
}

/* Keeps an unlinked entry for the next put (at most as many as were ever idle at once). */
static void idle_recycle(struct idle_conn *ic)
{
    struct upstream_pool *p = ic->pool;
    ic->next = p->spare;
    p->spare = ic;
}

static void idle_close(struct idle_conn *ic)
{
    idle_unlink(ic);
    bufferevent_free(ic->bev);
    idle_recycle(ic);
}

/* Bytes, EOF, an error or the idle timeout on an idle connection: drop it. */
static void idle_read_cb(struct bufferevent *bev, void *arg)
{
    idle_close(arg);
}

static void idle_event_cb(struct bufferevent *bev, short what, void *arg)
{
    idle_close(arg);
}

/* Closes the connections idle for the pool's idle time, oldest first. */
static void expiry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_pool *p = arg;
    struct timeval now, due;
    mono_now(&now);
    while (p->oldest) {
        evutil_timeradd(&p->oldest->since, &p->idle_tv, &due);
        if (evutil_timercmp(&due, &now, >))
            break;
        idle_close(p->oldest);
    }
    if (p->oldest)
        expiry_arm(p);
}

void upstream_pool_flush(struct upstream_pool *p)
{
    for (unsigned i = 0; i < POOL_MAX_KEYS; i++) {
        while (p->keys[i].head) {
            /* The socket closes now, not when libevent finalizes the
             * bufferevent later in this loop iteration: a flush for want
             * of descriptors (conn.c start_upstream) needs them at once. */
            struct bufferevent *bev = p->keys[i].head->bev;
            evutil_socket_t fd = bufferevent_getfd(bev);
            bufferevent_setfd(bev, -1);
            if (fd >= 0)
                evutil_closesocket(fd);
            idle_close(p->keys[i].head);
        }
    }
    evtimer_del(p->expiry);
}

void upstream_pool_free(struct upstream_pool *p)
{
    if (!p)
        return;
    upstream_pool_flush(p);
    event_free(p->expiry);
    while (p->spare) {
        struct idle_conn *ic = p->spare;
        p->spare = ic->next;
        free(ic);
    }
    free(p);
}

/*
 * 1 when nothing waits on an idle connection's socket.  A byte there (the
 * rest of a response longer than its framing said, a body sent after a HEAD
 * or 204 answer) or an EOF that the idle read event has not seen yet --
 * they may have come since the last read, or in this very loop iteration --
 * makes it unfit to carry another exchange: those bytes would be read as
 * the next request's response (RFC 9112 §6.3).
 */
static int idle_clean(struct bufferevent *bev)
{
    char b;
    ssize_t n = recv(bufferevent_getfd(bev), &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

struct bufferevent *upstream_pool_get(struct upstream_pool *p, const struct route_target *t)
{
    struct upstream_key *k = key_find(p, t, 0);
    /* A closed last entry empties k->head (and may retire the key). */
    while (k && k->head) {
        struct idle_conn *ic = k->head;
        struct bufferevent *bev = ic->bev;
        if (bev_read_fired(bev) || !idle_clean(bev)) {
            log_debug("%s: closing an idle connection with bytes, EOF or its timeout waiting", __func__);
            idle_close(ic);
            continue;
        }
        idle_unlink(ic);
        idle_recycle(ic);
        bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
        return bev;
    }
    return NULL;
}

void upstream_pool_put(struct upstream_pool *p, const struct route_target *t, struct bufferevent *bev)
{
    struct idle_conn *ic = NULL;
    struct upstream_key *k = NULL;
    if (evbuffer_get_length(bufferevent_get_input(bev)) != 0
        || evbuffer_get_length(bufferevent_get_output(bev)) != 0) {
        bufferevent_free(bev);
        return;
    }
    if ((ic = p->spare) != NULL)
        p->spare = ic->next;
    else
        ic = malloc(sizeof(*ic));
    if (!ic || !(k = key_find(p, t, 1)) || k->n_idle >= POOL_MAX_IDLE_PER_KEY) {
        if (ic) {
            ic->pool = p;
            idle_recycle(ic);
        }
        bufferevent_free(bev);
        return;
    }
    ic->bev = bev;
    ic->key = k;
    ic->pool = p;   /* set before any unlink can run */
    ic->prev = NULL;
    ic->next = k->head;
    if (k->head)
        k->head->prev = ic;
    k->head = ic;
    k->n_idle++;
    mono_now(&ic->since);
    ic->newer = NULL;
    ic->older = p->newest;
    if (p->newest)
        p->newest->newer = ic;
    else
        p->oldest = ic;
    p->newest = ic;
    if (!evtimer_pending(p->expiry, NULL))
        expiry_arm(p);
    /* (No read watermark is ever set on a backend connection: clearing one
     * would cost an event_add through libevent's unsuspend.) */
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    bufferevent_setcb(bev, idle_read_cb, NULL, idle_event_cb, ic);
    bev_enable_read(bev);
}

struct bufferevent *upstream_connect(struct event_base *base, const struct route_target *t)
{
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!bev)
        return NULL;
    if (bufferevent_socket_connect(bev, (const struct sockaddr *)&t->addr, (int)t->addrlen) < 0) {
        /* An immediate failure (EADDRNOTAVAIL, ENETUNREACH): NULL, with
         * errno still saying why (the free may change it). */
        int err = errno;
        bufferevent_free(bev);
        errno = err;
        return NULL;
    }
    bev_own_read(bev);   /* after connect: it set the fd, and libevent's read callback with it */
    bufferevent_set_max_single_read(bev, BEV_READ_CHUNK);
    evutil_socket_t fd = bufferevent_getfd(bev);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return bev;
}
