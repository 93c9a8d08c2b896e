/*
 * redis: the only file that includes hiredis.  It wraps Debian 12's hiredis
 * 0.14 asynchronous API on a libevent base and adds what that version lacks:
 *
 *  - a per-command deadline.  hiredis 0.14 has no timeout for asynchronous
 *    commands, so every command we send is also kept in our own FIFO list
 *    with its deadline and one timer watches the oldest.  When it is overdue
 *    every pending command fails with "timeout" and the connection is
 *    dropped and redialled: replies on a Redis connection come back in order,
 *    so once the oldest is late the rest are stuck behind it.
 *  - reconnection with backoff (100 ms doubling to 5 s) after a lost
 *    connection, a failed connect, a failed handshake or a timeout;
 *  - a handshake (AUTH, SELECT from the URL, then PING) before the
 *    connection reports up, itself under a deadline;
 *  - a subscriber mode: (P)SUBSCRIBE callbacks are called for every message;
 *  - a heartbeat.  A stopped Redis (SIGSTOP, a host frozen) keeps its TCP
 *    connections open and the kernel keeps answering keepalive probes, so an
 *    idle link would look up forever.  One timer per connection checks, when
 *    it fires, how long ago the link last read anything (a timestamp stored
 *    by our wrapper of the libevent adapter's read callback: one coarse clock
 *    read per read event, nothing per command); after 1 s of silence with no
 *    command outstanding it sends PING, and a PING unanswered within the
 *    command timeout drops the link exactly as a late command does.  On a
 *    RESP2 subscribed context PING is allowed but its reply is the pub/sub
 *    message ["pong", ""], which hiredis 0.14 delivers to no callback (a
 *    callback given with the PING would be queued on sub.invalid and never
 *    called): there the PING is written without a callback, its reply is
 *    dropped by hiredis, and the read it causes is the answer.
 *
 * Ownership of the per-command record (struct pending): once hiredis accepted
 * a command, hiredis calls our trampoline exactly once for it (with the reply,
 * or with NULL when the context is freed), and the trampoline frees the
 * record.  The user's callback is delivered at most once: the record carries
 * a `done` flag set when we fail it early (timeout, redis_conn_free), so the
 * later NULL call from hiredis only frees memory.  Subscription records are
 * called many times and are owned by the link (one hiredis context), freed
 * when hiredis cleans the context up.
 *
 * Freeing from inside a callback: user callbacks run inside a dispatch
 * section (c->depth > 0); redis_conn_free() there only marks the connection
 * and the real teardown happens when the outermost dispatch returns, the same
 * idea as Redis' freeClientAsync().  redisAsyncFree() itself defers when
 * called inside a hiredis callback.
 *
 * Also: a small blocking client for tollgate-ctl and a URL parser.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "proxy/log.h"
#include "routing/redis.h"

#define REDIS_BACKOFF_MIN_MS 100
/* At most 1 s between dials: a change made while Redis was away must reach
 * routing within about a second of its return (CONTRACT.md's 1 s), and a
 * dial a second per link costs a down Redis nothing to speak of. */
#define REDIS_BACKOFF_MAX_MS 1000
#define REDIS_HEARTBEAT_S    1.0      /* PING after this long without reading anything */
#define REDIS_HB_DEADLINE_S  1.0      /* a PING's answer may take at least this long */
#define REDIS_COARSE_SLACK   0.005    /* mono_coarse() lags by up to a kernel tick */

/* ---------------------------------------------------------------- URLs -- */

struct redis_url {
    int is_unix;
    char host[256];
    int port;
    char path[256];
    char user[128];
    char pass[256];
    int has_pass;
    int db;
};

static int url_fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "bad Redis URL: %s", msg);
    return -1;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    return -1;
}

/* Copies s[0..n) into out (size outsz) decoding %XX; 0 / -1. */
static int pct_decode(const char *s, size_t n, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            if (i + 2 >= n)
                return -1;
            int h = hexval((unsigned char)s[i + 1]), l = hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            ch = h * 16 + l;
            i += 2;
        }
        if (ch == 0 || o + 1 >= outsz)
            return -1;
        out[o++] = (char)ch;
    }
    out[o] = '\0';
    return 0;
}

/* Parses "db" digits s[0..n) into *db; 0 / -1. */
static int parse_db(const char *s, size_t n, int *db)
{
    if (n == 0 || n > 6)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *db = (int)v;
    return 0;
}

/* Parses "[user]:password@" at the start of s (up to '@' before end); advances *p. */
static int parse_userinfo(const char **p, const char *end, struct redis_url *u, char *err, size_t errlen)
{
    const char *s = *p;
    const char *at = NULL;
    for (const char *q = s; q < end; q++)
        if (*q == '@')
            at = q;     /* the last '@': passwords may contain '@' only percent-encoded, be lenient */
    if (!at)
        return 0;
    const char *colon = memchr(s, ':', (size_t)(at - s));
    if (!colon)
        return url_fail(err, errlen, "userinfo must be [user]:password@");
    if (pct_decode(s, (size_t)(colon - s), u->user, sizeof(u->user)) < 0)
        return url_fail(err, errlen, "bad user name");
    if (pct_decode(colon + 1, (size_t)(at - colon - 1), u->pass, sizeof(u->pass)) < 0)
        return url_fail(err, errlen, "bad password encoding");
    if (u->pass[0] == '\0')
        return url_fail(err, errlen, "empty password");
    u->has_pass = 1;
    *p = at + 1;
    return 0;
}

/*
 * Accepts redis://[[user]:password@]host[:port][/db] (IPv6 as [addr]) and
 * unix://[[user]:password@]/path/to.sock[?db=N].  Port defaults to 6379.
 */
static int url_parse(const char *url, struct redis_url *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof(*u));
    u->port = 6379;
    if (!url || !*url)
        return url_fail(err, errlen, "empty");
    size_t ulen = strlen(url);
    if (ulen > 1024)
        return url_fail(err, errlen, "too long");
    for (size_t i = 0; i < ulen; i++)
        if ((unsigned char)url[i] <= ' ' || url[i] == 0x7f)
            return url_fail(err, errlen, "contains spaces or control characters");
    const char *end = url + ulen;

    if (strncasecmp(url, "unix://", 7) == 0) {
        u->is_unix = 1;
        const char *p = url + 7;
        const char *q = memchr(p, '?', (size_t)(end - p));
        const char *pend = q ? q : end;
        if (*p != '/') {
            if (parse_userinfo(&p, pend, u, err, errlen) < 0)
                return -1;
        }
        if (p >= pend || *p != '/')
            return url_fail(err, errlen, "unix:// needs an absolute path (unix:///path/to.sock)");
        if ((size_t)(pend - p) >= sizeof(u->path) || (size_t)(pend - p) >= 108)
            return url_fail(err, errlen, "socket path too long");
        memcpy(u->path, p, (size_t)(pend - p));
        u->path[pend - p] = '\0';
        if (q) {
            q++;
            if (strncmp(q, "db=", 3) != 0 || parse_db(q + 3, (size_t)(end - q - 3), &u->db) < 0)
                return url_fail(err, errlen, "only ?db=N is accepted after a unix socket path");
        }
        return 0;
    }
    if (strncasecmp(url, "redis://", 8) != 0)
        return url_fail(err, errlen, "must start with redis:// or unix://");
    const char *p = url + 8;
    const char *slash = memchr(p, '/', (size_t)(end - p));
    const char *hend = slash ? slash : end;
    if (parse_userinfo(&p, hend, u, err, errlen) < 0)
        return -1;
    if (p >= hend)
        return url_fail(err, errlen, "missing host");
    const char *portp = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(hend - p));
        if (!rb || rb == p + 1)
            return url_fail(err, errlen, "bad [IPv6] host");
        if ((size_t)(rb - p - 1) >= sizeof(u->host))
            return url_fail(err, errlen, "host too long");
        memcpy(u->host, p + 1, (size_t)(rb - p - 1));
        u->host[rb - p - 1] = '\0';
        if (rb + 1 < hend) {
            if (rb[1] != ':')
                return url_fail(err, errlen, "junk after [IPv6] host");
            portp = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(hend - p));
        const char *he = colon ? colon : hend;
        if (he == p)
            return url_fail(err, errlen, "missing host");
        if ((size_t)(he - p) >= sizeof(u->host))
            return url_fail(err, errlen, "host too long");
        for (const char *q = p; q < he; q++)
            if (!isalnum((unsigned char)*q) && *q != '.' && *q != '-' && *q != '_')
                return url_fail(err, errlen, "bad character in host");
        memcpy(u->host, p, (size_t)(he - p));
        u->host[he - p] = '\0';
        if (colon)
            portp = colon + 1;
    }
    if (portp) {
        if (portp >= hend || hend - portp > 5)
            return url_fail(err, errlen, "bad port");
        long port = 0;
        for (const char *q = portp; q < hend; q++) {
            if (!isdigit((unsigned char)*q))
                return url_fail(err, errlen, "bad port");
            port = port * 10 + (*q - '0');
        }
        if (port < 1 || port > 65535)
            return url_fail(err, errlen, "port out of range");
        u->port = (int)port;
    }
    if (slash && slash + 1 < end) {
        if (parse_db(slash + 1, (size_t)(end - slash - 1), &u->db) < 0)
            return url_fail(err, errlen, "database must be a number (redis://host:port/N)");
    }
    return 0;
}

int redis_url_check(const char *url, char *err, size_t errlen)
{
    struct redis_url u;
    return url_parse(url, &u, err, errlen);
}

/* --------------------------------------------------------- replies -- */

int redis_reply_type(const struct redis_reply *r)
{
    const redisReply *x = (const redisReply *)r;
    if (!x)
        return 0;
    switch (x->type) {
    case REDIS_REPLY_STRING: return REDIS_T_STRING;
    case REDIS_REPLY_ARRAY: return REDIS_T_ARRAY;
    case REDIS_REPLY_INTEGER: return REDIS_T_INTEGER;
    case REDIS_REPLY_NIL: return REDIS_T_NIL;
    case REDIS_REPLY_STATUS: return REDIS_T_STATUS;
    case REDIS_REPLY_ERROR: return REDIS_T_ERROR;
    default: return 0;
    }
}

const char *redis_reply_str(const struct redis_reply *r, size_t *len)
{
    const redisReply *x = (const redisReply *)r;
    if (!x || (x->type != REDIS_REPLY_STRING && x->type != REDIS_REPLY_STATUS && x->type != REDIS_REPLY_ERROR)) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = x->len;
    return x->str;
}

long long redis_reply_int(const struct redis_reply *r)
{
    const redisReply *x = (const redisReply *)r;
    return (x && x->type == REDIS_REPLY_INTEGER) ? x->integer : 0;
}

size_t redis_reply_len(const struct redis_reply *r)
{
    const redisReply *x = (const redisReply *)r;
    return (x && x->type == REDIS_REPLY_ARRAY) ? x->elements : 0;
}

const struct redis_reply *redis_reply_elem(const struct redis_reply *r, size_t i)
{
    const redisReply *x = (const redisReply *)r;
    if (!x || x->type != REDIS_REPLY_ARRAY || i >= x->elements)
        return NULL;
    return (const struct redis_reply *)x->element[i];
}

/* ----------------------------------------------------- async client -- */

struct link;

/* One command sent on a link.  See the ownership note at the top. */
struct pending {
    struct pending *prev, *next;   /* in c->pend (regular) or link->subs (subscriptions) */
    struct redis_conn *conn;       /* NULL once detached (conn freed / failed early) */
    redis_cb cb;
    void *arg;
    double deadline;               /* monotonic seconds; regular commands only */
    int is_sub;
    int done;                      /* user callback already got its final call */
};

/* One hiredis context: lives from redisAsyncConnect to hiredis' cleanup hook. */
struct link {
    redisAsyncContext *ac;
    struct redis_conn *conn;       /* NULL once the conn let go of it */
    void *ev_data;                 /* the libevent adapter's data, hooks wrapped */
    void (*ev_add_read)(void *), (*ev_del_read)(void *);
    void (*ev_add_write)(void *), (*ev_del_write)(void *);
    void (*ev_cleanup)(void *);
    struct pending *subs;          /* subscription records, freed with the link */
    int dead;                      /* lost or being dropped: accept no command */
    int subscribed;                /* a (P)SUBSCRIBE was sent: only (P)(UN)SUBSCRIBE allowed */
    int unsubscribed;              /* a (P)UNSUBSCRIBE was sent: see hb_send() */
    int hs_left;                   /* handshake replies still awaited */
};

struct redis_conn {
    struct event_base *base;
    struct redis_url url;
    double cmd_timeout;
    redis_state_cb state_cb;
    void *state_arg;

    struct link *link;             /* current hiredis context, NULL between attempts */
    int up;
    int backoff_ms;
    struct pending *pend_head, *pend_tail;  /* regular commands, oldest first */

    struct event *deadline_ev;     /* watches pend_head's deadline */
    struct event *hs_ev;           /* connect + handshake deadline */
    struct event *retry_ev;        /* reconnect after backoff */
    struct event *hb_ev;           /* heartbeat: see the top of the file */
    double last_rx;                /* mono_coarse() of the link's last read event */
    double hb_sent;                /* mono_coarse() of the unanswered heartbeat PING, 0 if none */

    int depth;                     /* > 0 while user callbacks may run */
    int closing;                   /* redis_conn_free() was called */
    char last_err[128];
    char name[64];                 /* for log lines: "routing w0", "meter" */
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Same clock, read from the kernel's tick (a few ms coarse): cheap enough for every read event. */
static double mono_coarse(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct timeval tv_of(double s)
{
    struct timeval tv;
    if (s < 0)
        s = 0;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

static void conn_destroy(struct redis_conn *c);
static void conn_connect(struct redis_conn *c);
static void link_drop(struct link *l);
static void hb_arm(struct redis_conn *c, double s);

static void conn_enter(struct redis_conn *c)
{
    c->depth++;
}

/* Leaves a dispatch section; returns 1 when the conn was destroyed (do not touch it). */
static int conn_leave(struct redis_conn *c)
{
    if (--c->depth == 0 && c->closing) {
        conn_destroy(c);
        return 1;
    }
    return 0;
}

static void pend_unlink(struct redis_conn *c, struct pending *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        c->pend_head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        c->pend_tail = p->prev;
    p->prev = p->next = NULL;
}

/*
 * Fails every regular pending command with err (user callbacks run; they may
 * free the conn, which the caller's dispatch section defers).
 */
static void conn_fail_pending(struct redis_conn *c, const char *err)
{
    while (c->pend_head) {
        struct pending *p = c->pend_head;
        pend_unlink(c, p);
        p->done = 1;
        p->conn = NULL;           /* hiredis frees the record later */
        if (p->cb)
            p->cb(p->arg, NULL, err);
    }
}

static void conn_schedule_retry(struct redis_conn *c)
{
    if (c->closing)
        return;
    struct timeval tv = { c->backoff_ms / 1000, (c->backoff_ms % 1000) * 1000 };
    evtimer_add(c->retry_ev, &tv);
    c->backoff_ms *= 2;
    if (c->backoff_ms > REDIS_BACKOFF_MAX_MS)
        c->backoff_ms = REDIS_BACKOFF_MAX_MS;
}

/*
 * The link is gone (hiredis cleaned it up): report down, fail what is left,
 * schedule the next attempt.  Runs inside hiredis' cleanup hook or from our
 * own code; never touches the hiredis context.
 */
static void conn_link_lost(struct redis_conn *c)
{
    int was_up = c->up;
    c->up = 0;
    c->link = NULL;
    evtimer_del(c->hs_ev);
    evtimer_del(c->deadline_ev);
    evtimer_del(c->hb_ev);
    c->hb_sent = 0;
    conn_enter(c);
    conn_fail_pending(c, "disconnected");
    if (!c->closing) {
        conn_schedule_retry(c);
        if (was_up) {
            log_warn("%s: Redis connection (%s) lost%s%s", __func__, c->name, c->last_err[0] ? ": " : "", c->last_err);
            if (c->state_cb)
                c->state_cb(c->state_arg, 0);
        }
    }
    conn_leave(c);
}

/* hiredis event hooks, wrapped so that cleanup tells us the context is gone. */
static void hook_add_read(void *d) { struct link *l = d; l->ev_add_read(l->ev_data); }
static void hook_del_read(void *d) { struct link *l = d; l->ev_del_read(l->ev_data); }
static void hook_add_write(void *d) { struct link *l = d; l->ev_add_write(l->ev_data); }
static void hook_del_write(void *d) { struct link *l = d; l->ev_del_write(l->ev_data); }

/*
 * The adapter's read event, rerouted here (conn_connect): notes that the
 * link read something (the heartbeat's clock) and lets hiredis read.  The
 * link may be freed inside redisAsyncHandleRead: nothing touches it after.
 */
static void link_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct link *l = arg;
    (void)fd;
    (void)what;
    if (l->conn)
        l->conn->last_rx = mono_coarse();
    redisAsyncHandleRead(l->ac);
}

static void hook_cleanup(void *d)
{
    struct link *l = d;
    l->ev_cleanup(l->ev_data);
    l->ac->data = NULL;           /* onDisconnect may still run after this */
    l->ac = NULL;
    struct pending *s = l->subs;
    while (s) {
        struct pending *n = s->next;
        free(s);
        s = n;
    }
    struct redis_conn *c = l->conn;
    free(l);
    if (c && c->link == l)
        conn_link_lost(c);
}

/* Called by hiredis once per regular command and per pushed message of a subscription. */
static void cmd_trampoline(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct pending *p = privdata;
    struct link *l = ac->data;
    const struct redis_reply *r = (const struct redis_reply *)reply;

    if (!reply && l)
        l->dead = 1;              /* the context is being freed: accept no new command on it */
    if (p->is_sub) {
        struct redis_conn *c = p->conn;
        if (!c || p->done)
            return;
        if (!reply)
            p->done = 1;
        conn_enter(c);
        p->cb(p->arg, r, reply ? NULL : "disconnected");
        conn_leave(c);
        return;
    }
    struct redis_conn *c = p->conn;
    if (c && !p->done) {
        pend_unlink(c, p);
        p->done = 1;
        conn_enter(c);
        if (p->cb)
            p->cb(p->arg, reply ? r : NULL, reply ? NULL : "disconnected");
        conn_leave(c);
    }
    free(p);
}

/* Handshake replies: AUTH, SELECT, then PING; up after the PING. */
static void hs_trampoline(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct link *l = privdata;
    redisReply *x = reply;
    (void)ac;
    struct redis_conn *c = l->conn;
    if (!c || c->link != l || l->dead || !x)
        return;
    if (x->type == REDIS_REPLY_ERROR) {
        snprintf(c->last_err, sizeof(c->last_err), "handshake: %.100s", x->str);
        log_err_ratelimited("redis-handshake", "%s: Redis handshake failed: %.200s", __func__, x->str);
        l->dead = 1;
        link_drop(l);
        return;
    }
    if (--l->hs_left > 0)
        return;
    evtimer_del(c->hs_ev);
    c->up = 1;
    c->backoff_ms = REDIS_BACKOFF_MIN_MS;
    c->last_err[0] = '\0';
    log_info("%s: Redis connection (%s) up", __func__, c->name);
    c->last_rx = mono_coarse();
    c->hb_sent = 0;
    hb_arm(c, REDIS_HEARTBEAT_S);
    if (c->state_cb) {
        conn_enter(c);
        c->state_cb(c->state_arg, 1);
        conn_leave(c);
    }
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct link *l = ac->data;
    if (!l || !l->conn)
        return;
    struct redis_conn *c = l->conn;
    if (status != REDIS_OK) {
        /* hiredis frees the context right after this returns: its cleanup hook reports the loss. */
        snprintf(c->last_err, sizeof(c->last_err), "connect: %.100s", ac->c.errstr);
        log_err_ratelimited("redis-connect", "%s: cannot connect to Redis: %s", __func__, ac->c.errstr);
        l->dead = 1;
        return;
    }
    /* Never call user code or free the context here: hiredis keeps using it after we return. */
    l->hs_left = 0;
    if (c->url.has_pass) {
        if (c->url.user[0])
            redisAsyncCommand(ac, hs_trampoline, l, "AUTH %s %s", c->url.user, c->url.pass);
        else
            redisAsyncCommand(ac, hs_trampoline, l, "AUTH %s", c->url.pass);
        l->hs_left++;
    }
    if (c->url.db) {
        redisAsyncCommand(ac, hs_trampoline, l, "SELECT %d", c->url.db);
        l->hs_left++;
    }
    redisAsyncCommand(ac, hs_trampoline, l, "PING");
    l->hs_left++;
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    /* Nothing to do: hook_cleanup already ran and reported the loss. */
    (void)cac;
    (void)status;
}

/* Asks hiredis to free the context (deferred by hiredis when inside its callback). */
static void link_drop(struct link *l)
{
    l->dead = 1;
    if (l->ac && !(l->ac->c.flags & REDIS_FREEING))
        redisAsyncFree(l->ac);
}

static void conn_connect(struct redis_conn *c)
{
    if (c->closing || c->link)
        return;
    redisAsyncContext *ac = c->url.is_unix ? redisAsyncConnectUnix(c->url.path)
                                           : redisAsyncConnect(c->url.host, c->url.port);
    if (!ac) {
        snprintf(c->last_err, sizeof(c->last_err), "out of memory");
        conn_schedule_retry(c);
        return;
    }
    if (ac->err) {
        snprintf(c->last_err, sizeof(c->last_err), "connect: %.100s", ac->c.errstr);
        log_err_ratelimited("redis-connect", "%s: cannot connect to Redis: %s", __func__, ac->c.errstr);
        redisAsyncFree(ac);
        conn_schedule_retry(c);
        return;
    }
    if (!c->url.is_unix)
        redisEnableKeepAlive(&ac->c);   /* a silently dead peer is found even on an idle subscriber */
    struct link *l = calloc(1, sizeof(*l));
    if (!l || redisLibeventAttach(ac, c->base) != REDIS_OK) {
        free(l);
        redisAsyncFree(ac);
        conn_schedule_retry(c);
        return;
    }
    l->ac = ac;
    l->conn = c;
    l->ev_data = ac->ev.data;
    l->ev_add_read = ac->ev.addRead;
    l->ev_del_read = ac->ev.delRead;
    l->ev_add_write = ac->ev.addWrite;
    l->ev_del_write = ac->ev.delWrite;
    l->ev_cleanup = ac->ev.cleanup;
    ac->ev.addRead = hook_add_read;
    ac->ev.delRead = hook_del_read;
    ac->ev.addWrite = hook_add_write;
    ac->ev.delWrite = hook_del_write;
    ac->ev.cleanup = hook_cleanup;
    ac->ev.data = l;
    /*
     * The read event calls link_read_cb instead of the adapter's callback
     * (the heartbeat needs to know when the link last read).  The event was
     * just added by the attach: it is neither active nor running here.
     */
    redisLibeventEvents *lev = l->ev_data;
    event_del(lev->rev);
    event_assign(lev->rev, c->base, ac->c.fd, EV_READ, link_read_cb, l);
    event_add(lev->rev, NULL);
    ac->data = l;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->link = l;
    /* Connect + handshake deadline: a black-holed address must not hang us. */
    double hs = c->cmd_timeout * 2 > 1.0 ? c->cmd_timeout * 2 : 1.0;
    struct timeval tv = tv_of(hs);
    evtimer_add(c->hs_ev, &tv);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_connect(arg);
}

static void hs_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct redis_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->link && !c->up) {
        snprintf(c->last_err, sizeof(c->last_err), "connect/handshake timeout");
        log_err_ratelimited("redis-connect", "%s: Redis connect/handshake timed out", __func__);
        link_drop(c->link);
    }
}

static void deadline_arm(struct redis_conn *c)
{
    if (!c->pend_head || evtimer_pending(c->deadline_ev, NULL))
        return;
    struct timeval tv = tv_of(c->pend_head->deadline - mono_now() + 0.0005);
    evtimer_add(c->deadline_ev, &tv);
}

/*
 * Redis did not answer in time (what: "command" or "PING"): every pending
 * command fails with "timeout" and the link is dropped and redialled.
 */
static void conn_timed_out(struct redis_conn *c, const char *what)
{
    log_err_ratelimited("redis-timeout", "%s: Redis %s timed out after %.3f s (%s); reconnecting",
                        __func__, what, c->cmd_timeout, c->name);
    snprintf(c->last_err, sizeof(c->last_err), "%s timed out after %.3f s", what, c->cmd_timeout);
    struct link *l = c->link;
    if (l)
        l->dead = 1;              /* callbacks below see the conn down */
    conn_enter(c);
    conn_fail_pending(c, "timeout");
    if (!c->closing && l && c->link == l) {
        /*
         * Drop the link: hiredis calls our trampolines with NULL (records
         * already done: freed only), then the cleanup hook reports the loss
         * and schedules the redial after the shortest backoff.
         */
        c->backoff_ms = REDIS_BACKOFF_MIN_MS;
        link_drop(l);
    }
    conn_leave(c);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct redis_conn *c = arg;
    (void)fd;
    (void)what;
    if (!c->pend_head)
        return;
    if (c->pend_head->deadline > mono_now()) {
        deadline_arm(c);
        return;
    }
    /* The oldest is late and everything else is queued behind it. */
    conn_timed_out(c, "command");
}

/* ------------------------------------------------------ heartbeat -- */

static void hb_arm(struct redis_conn *c, double s)
{
    struct timeval tv = tv_of(s + 0.001);
    evtimer_add(c->hb_ev, &tv);
}

/* The heartbeat PING's reply (or NULL when the context goes): the read that brought it is what counts. */
static void hb_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    (void)reply;
    (void)privdata;
}

/*
 * Sends the heartbeat PING on l.  0, or -1 when nothing was sent.  Not
 * subscribed: a command like any other, its reply to hb_reply.  Subscribed
 * (RESP2): written without a callback, its ["pong", ""] reply dropped by
 * hiredis; but never after a (P)UNSUBSCRIBE: should the last subscription
 * end before the pong arrives, hiredis 0.14 would meet a reply with no
 * callback outside subscribed mode and abort.  Such a link is left to TCP
 * keepalive.
 */
static int hb_send(struct link *l)
{
    redisAsyncContext *ac = l->ac;
    if (!(ac->c.flags & REDIS_SUBSCRIBED))
        return redisAsyncCommand(ac, hb_reply, NULL, "PING") == REDIS_OK ? 0 : -1;
    if (l->unsubscribed)
        return -1;
    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
    if (redisAppendFormattedCommand(&ac->c, ping, sizeof(ping) - 1) != REDIS_OK)
        return -1;
    if (ac->ev.addWrite)
        ac->ev.addWrite(ac->ev.data);
    return 0;
}

/*
 * How long a heartbeat PING may wait for its answer: the command timeout,
 * but never under REDIS_HB_DEADLINE_S.  A hung Redis shows within seconds
 * either way, and a stall of a few hundred milliseconds (a fork for a
 * snapshot, another client's slow script) does not drop idle links and
 * flap /healthz -- commands in flight still have their own deadline.
 */
static double hb_deadline(const struct redis_conn *c)
{
    return c->cmd_timeout > REDIS_HB_DEADLINE_S ? c->cmd_timeout : REDIS_HB_DEADLINE_S;
}

/*
 * The heartbeat timer: armed when the link comes up, then re-armed here
 * only (once a second while commands flow; a reply never touches it).
 */
static void hb_cb(evutil_socket_t fd, short what, void *arg)
{
    struct redis_conn *c = arg;
    (void)fd;
    (void)what;
    if (!redis_conn_is_up(c))
        return;                   /* re-armed when the link is up again */
    double now = mono_coarse();
    if (c->hb_sent > 0) {
        if (c->last_rx >= c->hb_sent) {
            c->hb_sent = 0;       /* answered */
        } else if (now - c->hb_sent >= hb_deadline(c) - REDIS_COARSE_SLACK) {
            c->hb_sent = 0;
            conn_timed_out(c, "PING");
            return;
        } else {
            hb_arm(c, c->hb_sent + hb_deadline(c) - now);
            return;
        }
    }
    if (c->pend_head) {
        hb_arm(c, REDIS_HEARTBEAT_S);   /* busy: the commands' own deadlines watch the link */
        return;
    }
    double idle = now - c->last_rx;
    if (idle < REDIS_HEARTBEAT_S - REDIS_COARSE_SLACK) {
        hb_arm(c, REDIS_HEARTBEAT_S - idle);
        return;
    }
    if (hb_send(c->link) == 0) {
        c->hb_sent = now;
        hb_arm(c, hb_deadline(c));
    } else {
        hb_arm(c, REDIS_HEARTBEAT_S);
    }
}

void redis_conn_set_name(struct redis_conn *c, const char *name)
{
    if (c && name)
        snprintf(c->name, sizeof(c->name), "%s", name);
}

struct redis_conn *redis_conn_new(struct event_base *base, const char *url, double cmd_timeout_s,
                                  redis_state_cb state_cb, void *arg, char *err, size_t errlen)
{
    struct redis_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (url_parse(url, &c->url, err, errlen) < 0) {
        free(c);
        return NULL;
    }
    c->base = base;
    snprintf(c->name, sizeof(c->name), "redis");
    c->cmd_timeout = cmd_timeout_s > 0 ? cmd_timeout_s : 0.2;
    c->state_cb = state_cb;
    c->state_arg = arg;
    c->backoff_ms = REDIS_BACKOFF_MIN_MS;
    c->deadline_ev = evtimer_new(base, deadline_cb, c);
    c->hs_ev = evtimer_new(base, hs_timeout_cb, c);
    c->retry_ev = evtimer_new(base, retry_cb, c);
    c->hb_ev = evtimer_new(base, hb_cb, c);
    if (!c->deadline_ev || !c->hs_ev || !c->retry_ev || !c->hb_ev) {
        if (c->deadline_ev) event_free(c->deadline_ev);
        if (c->hs_ev) event_free(c->hs_ev);
        if (c->retry_ev) event_free(c->retry_ev);
        if (c->hb_ev) event_free(c->hb_ev);
        free(c);
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return NULL;
    }
    conn_connect(c);
    return c;
}

/* The real teardown; runs outside any dispatch section of c. */
static void conn_destroy(struct redis_conn *c)
{
    c->depth++;                       /* user callbacks below must not re-enter destroy */
    c->up = 0;
    conn_fail_pending(c, "disconnected");
    struct link *l = c->link;
    c->link = NULL;
    if (l) {
        l->conn = NULL;
        for (struct pending *s = l->subs; s; s = s->next) {
            if (!s->done && s->conn) {
                s->done = 1;
                s->cb(s->arg, NULL, "disconnected");
            }
            s->conn = NULL;
        }
        link_drop(l);
    }
    event_free(c->deadline_ev);
    event_free(c->hs_ev);
    event_free(c->retry_ev);
    event_free(c->hb_ev);
    free(c);
}

void redis_conn_free(struct redis_conn *c)
{
    if (!c || c->closing)
        return;
    c->closing = 1;
    if (c->depth > 0)
        return;                       /* the outermost dispatch frees it */
    conn_destroy(c);
}

int redis_conn_is_up(const struct redis_conn *c)
{
    return c && c->up && !c->closing && c->link && !c->link->dead;
}

/* First argument of a RESP-formatted command, for the subscribe checks. */
static size_t first_arg(const char *cmd, size_t len, const char **arg)
{
    const char *p = memchr(cmd, '\n', len);
    if (!p || (size_t)(p + 1 - cmd) >= len || p[1] != '$')
        return 0;
    char *e;
    long n = strtol(p + 2, &e, 10);
    if (n <= 0 || e + 2 > cmd + len || e[0] != '\r' || e[1] != '\n' || (size_t)(e + 2 - cmd) + (size_t)n > len)
        return 0;
    *arg = e + 2;
    return (size_t)n;
}

static int word_is(const char *a, size_t n, const char *w)
{
    return n == strlen(w) && strncasecmp(a, w, n) == 0;
}

/* Sends one formatted command on the current link. 0 / -1. */
static int conn_send(struct redis_conn *c, redis_cb cb, void *arg, const char *cmd, size_t len)
{
    if (!redis_conn_is_up(c))
        return -1;
    struct link *l = c->link;
    const char *a = NULL;
    size_t an = first_arg(cmd, len, &a);
    if (an == 0)
        return -1;
    int sub = word_is(a, an, "subscribe") || word_is(a, an, "psubscribe");
    int unsub = word_is(a, an, "unsubscribe") || word_is(a, an, "punsubscribe");
    if (word_is(a, an, "monitor"))
        return -1;
    if (unsub) {
        /* hiredis registers no callback for these: Redis answers on the subscription. */
        if (!l->subscribed)
            return -1;
        l->unsubscribed = 1;
        return redisAsyncFormattedCommand(l->ac, NULL, NULL, cmd, len) == REDIS_OK ? 0 : -1;
    }
    if (l->subscribed && !sub)
        return -1;                    /* RESP2 subscribed context: replies would be misrouted */
    struct pending *p = calloc(1, sizeof(*p));
    if (!p)
        return -1;
    p->conn = c;
    p->cb = cb;
    p->arg = arg;
    p->is_sub = sub;
    if (redisAsyncFormattedCommand(l->ac, cmd_trampoline, p, cmd, len) != REDIS_OK) {
        free(p);
        return -1;
    }
    if (sub) {
        l->subscribed = 1;
        p->next = l->subs;
        if (l->subs)
            l->subs->prev = p;
        l->subs = p;
        return 0;
    }
    p->deadline = mono_now() + c->cmd_timeout;
    p->prev = c->pend_tail;
    if (c->pend_tail)
        c->pend_tail->next = p;
    else
        c->pend_head = p;
    c->pend_tail = p;
    deadline_arm(c);
    return 0;
}

int redis_cmd(struct redis_conn *c, redis_cb cb, void *arg, int argc, const char **argv, const size_t *lens)
{
    if (!redis_conn_is_up(c) || argc <= 0)
        return -1;
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (len <= 0 || !cmd)
        return -1;
    int rc = conn_send(c, cb, arg, cmd, (size_t)len);
    free(cmd);
    return rc;
}

int redis_cmdf(struct redis_conn *c, redis_cb cb, void *arg, const char *fmt, ...)
{
    if (!redis_conn_is_up(c))
        return -1;
    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len <= 0 || !cmd)
        return -1;
    int rc = conn_send(c, cb, arg, cmd, (size_t)len);
    free(cmd);
    return rc;
}

/* ------------------------------------------------------ sync client -- */

struct redis_sync {
    redisContext *ctx;
    double timeout;
};

/* A clearer message than hiredis' "Resource temporarily unavailable" for a read timeout. */
static void sync_err(const struct redis_sync *s, char *err, size_t errlen)
{
    if (!err || !errlen)
        return;
    const char *e = s->ctx->errstr;
    if (s->ctx->err == REDIS_ERR_IO && (strstr(e, "temporarily unavailable") || strstr(e, "timed out")))
        snprintf(err, errlen, "Redis did not answer within %.1f s (timeout)", s->timeout);
    else if (s->ctx->err == REDIS_ERR_EOF)
        snprintf(err, errlen, "Redis closed the connection");
    else
        snprintf(err, errlen, "Redis error: %s", e[0] ? e : "no reply");
}

static struct timeval sync_tv(double s)
{
    return tv_of(s > 0 ? s : 2.0);
}

struct redis_sync *redis_sync_connect(const char *url, double timeout_s, char *err, size_t errlen)
{
    struct redis_url u;
    if (url_parse(url, &u, err, errlen) < 0)
        return NULL;
    struct timeval tv = sync_tv(timeout_s);
    redisContext *ctx = u.is_unix ? redisConnectUnixWithTimeout(u.path, tv)
                                  : redisConnectWithTimeout(u.host, u.port, tv);
    if (!ctx || ctx->err) {
        if (err && errlen)
            snprintf(err, errlen, "cannot connect to Redis at %s%s%.0d: %s", u.is_unix ? u.path : u.host,
                     u.is_unix ? "" : ":", u.is_unix ? 0 : u.port, ctx ? ctx->errstr : "out of memory");
        if (ctx)
            redisFree(ctx);
        return NULL;
    }
    redisSetTimeout(ctx, tv);
    struct redis_sync *s = calloc(1, sizeof(*s));
    if (!s) {
        redisFree(ctx);
        return NULL;
    }
    s->ctx = ctx;
    s->timeout = timeout_s > 0 ? timeout_s : 2.0;
    redisReply *r = NULL;
    if (u.has_pass) {
        r = u.user[0] ? redisCommand(ctx, "AUTH %s %s", u.user, u.pass) : redisCommand(ctx, "AUTH %s", u.pass);
        if (!r || r->type == REDIS_REPLY_ERROR)
            goto fail;
        freeReplyObject(r);
    }
    if (u.db) {
        r = redisCommand(ctx, "SELECT %d", u.db);
        if (!r || r->type == REDIS_REPLY_ERROR)
            goto fail;
        freeReplyObject(r);
    }
    return s;
fail:
    if (r && err && errlen)
        snprintf(err, errlen, "Redis handshake failed: %s", r->str);
    else
        sync_err(s, err, errlen);
    if (r)
        freeReplyObject(r);
    redis_sync_free(s);
    return NULL;
}

void redis_sync_free(struct redis_sync *s)
{
    if (!s)
        return;
    if (s->ctx)
        redisFree(s->ctx);
    free(s);
}

struct redis_reply *redis_sync_cmd(struct redis_sync *s, int argc, const char **argv, const size_t *lens,
                                   char *err, size_t errlen)
{
    if (!s || !s->ctx || argc <= 0) {
        if (err && errlen)
            snprintf(err, errlen, "not connected");
        return NULL;
    }
    if (s->ctx->err) {
        if (err && errlen)
            snprintf(err, errlen, "Redis connection broken: %s", s->ctx->errstr);
        return NULL;
    }
    redisReply *r = redisCommandArgv(s->ctx, argc, argv, lens);
    if (!r) {
        sync_err(s, err, errlen);
        return NULL;
    }
    return (struct redis_reply *)r;
}

int redis_sync_append(struct redis_sync *s, int argc, const char **argv, const size_t *lens,
                      char *err, size_t errlen)
{
    if (!s || !s->ctx || s->ctx->err || argc <= 0) {
        if (err && errlen)
            snprintf(err, errlen, "Redis connection broken: %s", s && s->ctx ? s->ctx->errstr : "not connected");
        return -1;
    }
    if (redisAppendCommandArgv(s->ctx, argc, argv, lens) != REDIS_OK) {
        if (err && errlen)
            snprintf(err, errlen, "Redis error: %s", s->ctx->errstr);
        return -1;
    }
    return 0;
}

struct redis_reply *redis_sync_read(struct redis_sync *s, char *err, size_t errlen)
{
    void *r = NULL;
    if (!s || !s->ctx) {
        if (err && errlen)
            snprintf(err, errlen, "not connected");
        return NULL;
    }
    if (s->ctx->err || redisGetReply(s->ctx, &r) != REDIS_OK || !r) {
        sync_err(s, err, errlen);
        if (r)
            freeReplyObject(r);
        return NULL;
    }
    return r;
}

void redis_sync_reply_free(struct redis_reply *r)
{
    if (r)
        freeReplyObject(r);
}
