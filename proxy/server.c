/*
 * server: process start-up, worker threads, signals, reload and drain.
 *
 * Every worker has its own event_base and its own SO_REUSEPORT listening
 * socket per address, so the kernel spreads connections over the workers
 * and a worker never touches another's state.  Sockets are bound by the main
 * thread before any worker starts, so a bad address is a start-up error.
 *
 * The main thread runs a small event loop of its own for signals.  It talks
 * to a worker only through a mutex-protected mailbox and a byte written to
 * the worker's notify pipe; the worker applies the command on its own
 * thread.  Worker bases are created without locks (EVENT_BASE_FLAG_NOLOCK):
 * nothing but the pipe ever crosses threads, so the hot path takes no lock.
 *
 * Config generations are refcounted: SIGHUP parses the files again into a
 * new generation and hands it to every worker, which drops its reference to
 * the old one; in-flight requests read timeouts from their worker's current
 * generation.  Listeners, worker threads, each worker's Redis connections
 * and route caches and the meter are made once, from the first generation;
 * a reload that changes a key they took (restart_only_changes()) is applied
 * but warns that those keys wait for a restart.  The logs follow the file:
 * each reload opens access-log and error-log at their new paths, which also
 * reopens a rotated file.
 *
 * SO_REUSEPORT would let a second tollgate (same user) bind an address this
 * one listens on and take part of its traffic.  So, before binding an
 * address the process does not already hold (at start, and for an address a
 * reload adds), it is probed with a socket that has SO_REUSEADDR but not
 * SO_REUSEPORT: that bind fails with EADDRINUSE when anyone listens there.
 * Start-up then fails; a reload keeps the running configuration.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "config/config.h"
#include "proxy/admin.h"
#include "proxy/conn.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/upstream.h"
#include "routing/meter.h"
#include "routing/route.h"

struct cfg_gen {
    struct tg_config cfg;
    struct route_addrs *addrs;  /* cfg's static backend names, resolved by the main thread */
    unsigned long id;           /* 1 for the start-up config, +1 per committed reload */
    int refs;                   /* atomic */
};

struct worker {
    int id;
    pthread_t thread;
    struct event_base *base;
    struct evconnlistener *listeners[CFG_MAX_LISTEN];   /* one per listen address */
    int n_listeners;
    struct event *accept_resume;  /* after an accept error: listeners paused until it fires */
    struct cfg_gen *gen;
    struct route_ctx *routes;
    struct meter_worker *meter;
    struct upstream_pool *pool;
    struct tg_metrics metrics;
    size_t n_conns;
    int draining;
    struct event *notify;
    int notify_fd[2];           /* pipe: main thread writes, worker reads */
    /* mailbox, written by the main thread under lock */
    pthread_mutex_t lock;
    struct cfg_gen *new_gen;
    int want_drain;
    int want_abort;
    struct server *srv;
};

struct server {
    struct event_base *base;
    struct worker *workers;
    int n_workers;
    int n_done;                 /* workers whose loop ended; atomic */
    struct event *worker_done;  /* readable when a worker has ended */
    int done_fd[2];
    struct event *drain_timer;
    int draining;
    int argc;
    char **argv;
    struct cfg_gen *gen;        /* current generation (main thread's reference) */
    const struct tg_config *bound;  /* the generation whose addresses are bound (the first) */
};

static struct cfg_gen *gen_ref(struct cfg_gen *g)
{
    __atomic_add_fetch(&g->refs, 1, __ATOMIC_RELAXED);
    return g;
}

static void gen_unref(struct cfg_gen *g)
{
    if (g && __atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        route_addrs_free(g->addrs);
        cfg_free(&g->cfg);
        free(g);
    }
}

struct event_base *worker_base(struct worker *w) { return w->base; }
const struct tg_config *worker_config(struct worker *w) { return &w->gen->cfg; }
unsigned long worker_config_id(struct worker *w) { return w->gen->id; }
struct route_ctx *worker_routes(struct worker *w) { return w->routes; }
struct meter_worker *worker_meter(struct worker *w) { return w->meter; }
struct tg_metrics *worker_metrics(struct worker *w) { return &w->metrics; }
struct upstream_pool *worker_pool(struct worker *w) { return w->pool; }
int worker_draining(const struct worker *w) { return w->draining; }

void worker_conn_add(struct worker *w)
{
    w->n_conns++;
}

void worker_conn_remove(struct worker *w)
{
    w->n_conns--;
    if (w->draining && w->n_conns == 0)
        event_base_loopexit(w->base, NULL);
}

/* ---------------------------------------------------------------------- */
/* Listening sockets                                                      */

/* a as a socket address; the length, or 0 when the host is not a numeric address. */
static socklen_t addr_sockaddr(const struct cfg_addr *a, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, a->host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)a->port);
        return sizeof(*s4);
    }
    if (inet_pton(AF_INET6, a->host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)a->port);
        return sizeof(*s6);
    }
    return 0;
}

/* "127.0.0.1:8080" or "[::1]:8080" */
static void addr_str(const struct cfg_addr *a, char *buf, size_t len)
{
    int v6 = strchr(a->host, ':') != NULL;
    snprintf(buf, len, "%s%s%s:%d", v6 ? "[" : "", a->host, v6 ? "]" : "", a->port);
}

/*
 * Fails when a socket already listens on a (see the file header): binds a
 * probe with SO_REUSEADDR (TIME_WAIT leftovers do not count) and without
 * SO_REUSEPORT, then closes it.  what names the key and where it was set,
 * for the message (cfg_addr_origin(): "FILE:LINE: listen", "--listen").
 * 0 / -1 with err "FILE:LINE: listen 127.0.0.1:8080: address already in use".
 */
static int probe_address(const char *what, const struct cfg_addr *a, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    char as[96];
    socklen_t len = addr_sockaddr(a, &ss);
    addr_str(a, as, sizeof(as));
    if (len == 0) {
        snprintf(err, errlen, "%s %s: not a numeric IPv4 or IPv6 address", what, as);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "%s %s: socket: %s", what, as, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)   /* as the listeners: [::]:P does not cover 0.0.0.0:P */
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    int rc = bind(fd, (struct sockaddr *)&ss, len);
    int e = errno;
    close(fd);
    if (rc == 0)
        return 0;
    if (e == EADDRINUSE)
        snprintf(err, errlen, "%s %s: address already in use", what, as);
    else
        snprintf(err, errlen, "%s %s: %s", what, as, strerror(e));
    return -1;
}

/* Whether a listener of this process on held covers a (same port and family; same or wildcard host). */
static int addr_covers(const struct cfg_addr *held, const struct cfg_addr *a)
{
    struct sockaddr_storage hs, as;
    if (held->port != a->port || !addr_sockaddr(held, &hs) || !addr_sockaddr(a, &as) ||
        hs.ss_family != as.ss_family)
        return 0;
    if (hs.ss_family == AF_INET) {
        in_addr_t h = ((struct sockaddr_in *)&hs)->sin_addr.s_addr, x = ((struct sockaddr_in *)&as)->sin_addr.s_addr;
        return h == x || h == htonl(INADDR_ANY) || x == htonl(INADDR_ANY);
    }
    const struct in6_addr *h6 = &((struct sockaddr_in6 *)&hs)->sin6_addr;
    const struct in6_addr *x6 = &((struct sockaddr_in6 *)&as)->sin6_addr;
    return IN6_ARE_ADDR_EQUAL(h6, x6) || IN6_IS_ADDR_UNSPECIFIED(h6) || IN6_IS_ADDR_UNSPECIFIED(x6);
}

/* Whether one of held's sockets (a listener or the admin listener) covers a. */
static int held_covers(const struct tg_config *held, const struct cfg_addr *a)
{
    for (size_t j = 0; j < held->n_listen; j++)
        if (addr_covers(&held->listen[j], a))
            return 1;
    return held->admin_listen.port != 0 && addr_covers(&held->admin_listen, a);
}

static int addr_same(const struct cfg_addr *a, const struct cfg_addr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

#define ADDRS_LISTEN 1          /* probe_addresses() *changed bits */
#define ADDRS_ADMIN  2

/*
 * Probes every address of cfg (listen and admin-listen) that held, the
 * configuration whose addresses this process has bound (NULL at start),
 * does not cover: a socket of this process is no conflict, whichever key
 * it serves.  Sets *changed to ADDRS_LISTEN and/or ADDRS_ADMIN for the
 * keys whose addresses differ from held's.  0 / -1 with err.
 */
static int probe_addresses(const struct tg_config *cfg, const struct tg_config *held, int *changed,
                           char *err, size_t errlen)
{
    int diff = 0;
    for (size_t i = 0; i < cfg->n_listen; i++) {
        /* "covered" decides the probe (a held wildcard listener covers its
         * port); "same" decides whether the listeners change at all. */
        int same = 0;
        for (size_t j = 0; held && j < held->n_listen; j++)
            same |= addr_same(&held->listen[j], &cfg->listen[i]);
        if (!same)
            diff |= ADDRS_LISTEN;
        if (!held || !held_covers(held, &cfg->listen[i])) {
            char what[CFG_ERRLEN];
            cfg_addr_origin(cfg, "listen", &cfg->listen[i], what, sizeof(what));
            if (probe_address(what, &cfg->listen[i], err, errlen) != 0)
                return -1;
        }
    }
    if (held && held->n_listen != cfg->n_listen)
        diff |= ADDRS_LISTEN;
    if (held && !addr_same(&held->admin_listen, &cfg->admin_listen))
        diff |= ADDRS_ADMIN;
    if (cfg->admin_listen.port != 0 && (!held || !held_covers(held, &cfg->admin_listen))) {
        char what[CFG_ERRLEN];
        cfg_addr_origin(cfg, "admin-listen", &cfg->admin_listen, what, sizeof(what));
        if (probe_address(what, &cfg->admin_listen, err, errlen) != 0)
            return -1;
    }
    if (changed)
        *changed = diff;
    return 0;
}

/* Opens a non-blocking SO_REUSEPORT listening socket. -1 with err on failure. */
static int listen_socket(const struct cfg_addr *a, double defer_s, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len = addr_sockaddr(a, &ss);
    if (len == 0) {
        snprintf(err, errlen, "listen %s:%d: not a numeric IPv4 or IPv6 address", a->host, a->port);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    /* Accepted sockets inherit TCP_NODELAY from the listener on Linux: no
     * setsockopt per connection. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* TCP_DEFER_ACCEPT: accept() returns a connection once its request has
     * begun to arrive (conn_accept() reads it at once) or, for a silent
     * client, after about defer_s; the connection costs the kernel a
     * request sock meanwhile and tollgate nothing. */
    if (defer_s > 0) {
        int secs = (int)defer_s;
        if (secs < defer_s)
            secs++;
        if (setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &secs, sizeof(secs)) < 0)
            log_warn("%s: TCP_DEFER_ACCEPT: %s (accepting at once)", __func__, strerror(errno));
    }
    if (ss.ss_family == AF_INET6)   /* [::]:P and 0.0.0.0:P may both be given */
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 4096) < 0) {
        snprintf(err, errlen, "listen %s%s%s:%d: %s", ss.ss_family == AF_INET6 ? "[" : "", a->host,
                 ss.ss_family == AF_INET6 ? "]" : "", a->port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    conn_accept(arg, fd, sa, (socklen_t)salen);
}

/* How long the listeners rest after an accept error (nginx: 500 ms). */
#define ACCEPT_PAUSE_MS 100

/*
 * libevent calls this for the errors it does not retry itself: EMFILE,
 * ENFILE, ENOBUFS, ENOMEM.  The pending connection stays in the backlog and
 * the listener stays readable, so an armed listener would spin on accept()
 * for as long as the descriptors stay used up.  All of the worker's
 * listeners rest for ACCEPT_PAUSE_MS instead (connections queue in the
 * backlog meanwhile), as nginx's do.
 */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct worker *w = arg;
    (void)l;
    log_err_ratelimited("accept", "%s: accept: %s (not accepting for %d ms)", __func__,
                        evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()), ACCEPT_PAUSE_MS);
    if (evtimer_pending(w->accept_resume, NULL))
        return;
    for (int i = 0; i < w->n_listeners; i++)
        evconnlistener_disable(w->listeners[i]);
    struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};
    evtimer_add(w->accept_resume, &tv);
}

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    for (int i = 0; i < w->n_listeners; i++)   /* none left once draining */
        evconnlistener_enable(w->listeners[i]);
}

/* ---------------------------------------------------------------------- */
/* Workers                                                                */

static void worker_stop_listening(struct worker *w)
{
    for (int i = 0; i < w->n_listeners; i++)
        evconnlistener_free(w->listeners[i]);
    w->n_listeners = 0;
}

/* Runs on the worker's thread when the main thread posted a command. */
static void worker_notify_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    char buf[64];
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
    pthread_mutex_lock(&w->lock);
    struct cfg_gen *g = w->new_gen;
    int drain = w->want_drain, abort_now = w->want_abort;
    w->new_gen = NULL;
    w->want_drain = w->want_abort = 0;
    pthread_mutex_unlock(&w->lock);

    if (g) {
        char err[CFG_ERRLEN];
        if (route_ctx_reload(w->routes, &g->cfg, g->addrs, err, sizeof(err)) != 0) {
            log_err("%s: worker %d: routing reload failed, keeping the old routes: %s", __func__, w->id, err);
            gen_unref(g);
        } else {
            struct cfg_gen *old = w->gen;
            w->gen = g;
            gen_unref(old);
            /* Idle backend connections start afresh, as after nginx's
             * reload: none lingers to a backend the new routes dropped.
             * Exchanges in flight finish on theirs. */
            upstream_pool_flush(w->pool);
        }
    }
    if (drain && !w->draining) {
        w->draining = 1;
        worker_stop_listening(w);
        upstream_pool_flush(w->pool);
        conn_drain_all();
        if (w->n_conns == 0)
            event_base_loopexit(w->base, NULL);
    }
    if (abort_now) {
        w->draining = 1;
        worker_stop_listening(w);
        conn_abort_all();
        event_base_loopexit(w->base, NULL);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    /* Whatever is left (drain timeout) closes now. */
    conn_abort_all();
    conn_thread_cleanup();
    worker_stop_listening(w);
    __atomic_add_fetch(&w->srv->n_done, 1, __ATOMIC_ACQ_REL);
    ssize_t n = write(w->srv->done_fd[1], "d", 1);
    (void)n;
    return NULL;
}

static void worker_post(struct worker *w, struct cfg_gen *g, int drain, int abort_now)
{
    pthread_mutex_lock(&w->lock);
    if (g) {
        if (w->new_gen)
            gen_unref(w->new_gen);
        w->new_gen = gen_ref(g);
    }
    w->want_drain |= drain;
    w->want_abort |= abort_now;
    pthread_mutex_unlock(&w->lock);
    ssize_t n = write(w->notify_fd[1], "n", 1);   /* a full pipe already wakes it */
    (void)n;
}

/* Creates worker i: base, listeners, routing, meter and pool. 0 / -1. */
static int worker_init(struct server *s, struct worker *w, int id, struct meter *m, char *err, size_t errlen)
{
    const struct tg_config *cfg = &s->gen->cfg;
    w->id = id;
    w->srv = s;
    w->gen = gen_ref(s->gen);
    pthread_mutex_init(&w->lock, NULL);
    w->notify_fd[0] = w->notify_fd[1] = -1;
    struct event_config *ec = event_config_new();
    if (ec) {
        event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
        /* Parking idle connections (conn.c) swaps events on one fd within
         * an iteration; the changelist folds those into no syscall.  We
         * never dup() client sockets, the one case it gets wrong. */
        event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        w->base = event_base_new_with_config(ec);
        event_config_free(ec);
    }
    if (!w->base) {
        snprintf(err, errlen, "event_base_new failed");
        return -1;
    }
    w->accept_resume = evtimer_new(w->base, accept_resume_cb, w);
    if (!w->accept_resume) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (cfg->n_listen > CFG_MAX_LISTEN) {   /* config refuses more: never silently drop one */
        snprintf(err, errlen, "%zu listen addresses: at most %d", cfg->n_listen, CFG_MAX_LISTEN);
        return -1;
    }
    for (size_t i = 0; i < cfg->n_listen; i++) {
        int fd = listen_socket(&cfg->listen[i], cfg->defer_accept, err, errlen);
        if (fd < 0)
            return -1;
        /* backlog 0: fd listens already (4096); -1 would make libevent call listen(fd, 128) again */
        struct evconnlistener *l = evconnlistener_new(w->base, accept_cb, w, LEV_OPT_CLOSE_ON_FREE, 0, fd);
        if (!l) {
            close(fd);
            snprintf(err, errlen, "evconnlistener_new failed");
            return -1;
        }
        evconnlistener_set_error_cb(l, accept_error_cb);
        w->listeners[w->n_listeners++] = l;
    }
    w->routes = route_ctx_new(w->base, cfg, s->gen->addrs, id, err, errlen);
    if (!w->routes)
        return -1;
    if (m && !(w->meter = meter_worker_new(m, w->base, id))) {
        snprintf(err, errlen, "meter_worker_new failed");
        return -1;
    }
    w->pool = upstream_pool_new(w->base, 30.0);
    if (pipe2(w->notify_fd, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    w->notify = event_new(w->base, w->notify_fd[0], EV_READ | EV_PERSIST, worker_notify_cb, w);
    if (!w->pool || !w->notify || event_add(w->notify, NULL) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    metrics_register_worker(&w->metrics);
    return 0;
}

static void worker_free(struct worker *w)
{
    worker_stop_listening(w);
    if (w->pool)
        upstream_pool_free(w->pool);
    if (w->routes)
        route_ctx_free(w->routes);
    if (w->meter)
        meter_worker_free(w->meter);
    if (w->notify)
        event_free(w->notify);
    if (w->accept_resume)
        event_free(w->accept_resume);
    for (int i = 0; i < 2; i++)
        if (w->notify_fd[i] >= 0)
            close(w->notify_fd[i]);
    if (w->base)
        event_base_free(w->base);
    if (w->new_gen)
        gen_unref(w->new_gen);
    if (w->gen)
        gen_unref(w->gen);
    pthread_mutex_destroy(&w->lock);
}

/* ---------------------------------------------------------------------- */
/* Signals (main thread)                                                  */

static void drain_end(struct server *s);

/*
 * SIGTERM/SIGINT: stop accepting and let in-flight exchanges finish for up
 * to drain-timeout.  A second signal during the drain ends it at once, as
 * the timeout would (Caddy's and systemd's "stop now"; Ctrl-C twice); the
 * meter's final flush still runs.
 */
static void start_drain(struct server *s)
{
    if (s->draining) {
        if (evtimer_pending(s->drain_timer, NULL)) {
            log_notice("%s: second stop signal: closing the connections still open now", __func__);
            evtimer_del(s->drain_timer);
            drain_end(s);
        }
        return;
    }
    s->draining = 1;
    log_notice("%s: stopping: finishing in-flight requests (up to %.0f s)", __func__, s->gen->cfg.drain_timeout);
    admin_set_draining(1);
    for (int i = 0; i < s->n_workers; i++)
        worker_post(&s->workers[i], NULL, 1, 0);
    struct timeval tv = {(time_t)s->gen->cfg.drain_timeout,
                         (suseconds_t)((s->gen->cfg.drain_timeout - (double)(time_t)s->gen->cfg.drain_timeout) * 1e6)};
    evtimer_add(s->drain_timer, &tv);
}

/* Ends the drain: every worker closes what is still open. */
static void drain_end(struct server *s)
{
    for (int i = 0; i < s->n_workers; i++)
        worker_post(&s->workers[i], NULL, 0, 1);
}

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    log_warn("%s: drain timeout: closing the connections still open", __func__);
    drain_end(arg);
}

/*
 * Points the error log and the access log at cfg's paths: the same path is
 * reopened (log rotation), a new one replaces the old, "off" stops the
 * access log.  log.c swaps the file under the descriptor the workers write
 * to, so no worker waits.  cfg_check_files() has just opened both; should
 * one fail now anyway, the old file stays in use and the error is logged.
 */
static void reload_logs(const struct tg_config *cfg)
{
    char where[CFG_ERRLEN];
    if (log_open(cfg->error_log, cfg->log_level) != 0) {
        int e = errno;
        log_set_level(cfg->log_level);
        cfg_key_origin(cfg, "error-log", where, sizeof(where));
        log_err("%s: %s: cannot open '%s': %s; still writing to the old error log", __func__, where,
                cfg->error_log ? cfg->error_log : "-", strerror(e));
    }
    if (log_access_open(cfg->access_log) != 0) {
        int e = errno;
        cfg_key_origin(cfg, "access-log", where, sizeof(where));
        log_err("%s: %s: cannot open '%s': %s; still writing to the old access log", __func__, where,
                cfg->access_log ? cfg->access_log : "-", strerror(e));
    }
}

static int str_differ(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

/*
 * Writes to buf ("" when none) the restart-only keys on which cfg differs
 * from held, the configuration the process started with: its listeners, its
 * worker threads, the meter and each worker's Redis connections and route
 * cache were made from held and keep its values.  addrs is probe_addresses()'s
 * *changed.  "key-prefix and redis-timeout".
 */
static void restart_only_changes(const struct tg_config *cfg, const struct tg_config *held, int addrs,
                                 char *buf, size_t len)
{
    const char *keys[16];
    size_t n = 0, used = 0;
    if (addrs & ADDRS_LISTEN)
        keys[n++] = "listen";
    if (addrs & ADDRS_ADMIN)
        keys[n++] = "admin-listen";
    if (cfg->defer_accept != held->defer_accept)
        keys[n++] = "defer-accept";
    if (cfg->workers != held->workers)
        keys[n++] = "workers";
    if (str_differ(cfg->redis_url, held->redis_url))
        keys[n++] = "redis";
    if (str_differ(cfg->key_prefix, held->key_prefix))
        keys[n++] = "key-prefix";
    if (cfg->redis_timeout != held->redis_timeout)
        keys[n++] = "redis-timeout";
    if (cfg->route_cache_size != held->route_cache_size)
        keys[n++] = "route-cache-size";
    if (cfg->meter_flush_interval != held->meter_flush_interval)
        keys[n++] = "meter-flush-interval";
    if (str_differ(cfg->instance_id, held->instance_id))
        keys[n++] = "instance-id";
    buf[0] = 0;
    for (size_t i = 0; i < n && used < len; i++) {
        snprintf(buf + used, len - used, "%s%s", i == 0 ? "" : i + 1 == n ? " and " : ", ", keys[i]);
        used += strlen(buf + used);
    }
}

static void reload(struct server *s)
{
    struct cfg_gen *g = calloc(1, sizeof(*g));
    char err[CFG_ERRLEN];
    if (!g)
        return;
    cfg_defaults(&g->cfg);
    int rc = cfg_from_args(&g->cfg, s->argc, s->argv, err, sizeof(err));
    int addrs_changed = 0;
    if (rc == 0)
        rc = cfg_validate(&g->cfg, err, sizeof(err));
    if (rc == 0)
        rc = cfg_check_files(&g->cfg, err, sizeof(err));
    if (rc == 0)
        rc = probe_addresses(&g->cfg, s->bound, &addrs_changed, err, sizeof(err));
    if (rc == 0 && !(g->addrs = route_addrs_resolve(&g->cfg, err, sizeof(err))))
        rc = -1;
    if (rc != 0) {
        /* The running configuration's logs are reopened all the same: a
         * rotation (rename, then SIGHUP) must not leave them writing to the
         * renamed files because the new file has an error. */
        log_reopen();
        log_err("%s: reload failed, keeping the running configuration: %s", __func__, err);
        cfg_free(&g->cfg);
        free(g);
        return;
    }
    g->refs = 1;
    g->id = s->gen->id + 1;
    reload_logs(&g->cfg);
    log_notice("%s: configuration reloaded", __func__);
    char keys[256];
    restart_only_changes(&g->cfg, s->bound, addrs_changed, keys, sizeof(keys));
    if (keys[0])
        log_warn("%s: %s changes take effect at the next restart", __func__, keys);
    for (int i = 0; i < s->n_workers; i++)
        worker_post(&s->workers[i], g, 0, 0);
    gen_unref(s->gen);
    s->gen = g;
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct server *s = arg;
    if (sig == SIGHUP)
        reload(s);
    else
        start_drain(s);
}

static void worker_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    char buf[64];
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
    if (__atomic_load_n(&s->n_done, __ATOMIC_ACQUIRE) == s->n_workers)
        event_base_loopexit(s->base, NULL);
}

/* ---------------------------------------------------------------------- */

int server_run(struct tg_config *cfg, struct route_addrs *resolved, int argc, char **argv)
{
    char err[CFG_ERRLEN];
    struct server s;
    memset(&s, 0, sizeof(s));
    s.argc = argc;
    s.argv = argv;
    s.gen = calloc(1, sizeof(*s.gen));
    if (!s.gen) {
        route_addrs_free(resolved);
        return 1;
    }
    s.gen->cfg = *cfg;          /* takes over the members */
    s.gen->addrs = resolved;
    s.gen->id = 1;
    memset(cfg, 0, sizeof(*cfg));
    s.gen->refs = 1;
    struct cfg_gen *first = gen_ref(s.gen);   /* the meter's, for its lifetime */
    cfg = &first->cfg;

    signal(SIGPIPE, SIG_IGN);
    /* Stop signals stay pending until the main loop can take them, so a
     * SIGTERM during start-up still drains instead of killing.  Workers
     * inherit a mask with every signal blocked. */
    sigset_t all, stops, old;
    sigfillset(&all);
    sigemptyset(&stops);
    sigaddset(&stops, SIGTERM);
    sigaddset(&stops, SIGINT);
    sigaddset(&stops, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stops, &old);

    struct meter *m = meter_new(cfg, cfg->workers, err, sizeof(err));
    if (!m) {
        log_err("tollgate: %s", err);
        gen_unref(first);
        gen_unref(s.gen);
        return 1;
    }
    /* tls-listen was refused by cfg_validate() (no TLS layer yet).  Nothing
     * is bound before every address has been probed. */
    if (probe_addresses(cfg, NULL, NULL, err, sizeof(err)) != 0) {
        log_err("tollgate: %s", err);
        meter_stop(m, 0);
        gen_unref(first);
        gen_unref(s.gen);
        return 1;
    }
    s.bound = cfg;
    s.n_workers = cfg->workers;
    s.workers = calloc((size_t)s.n_workers, sizeof(*s.workers));
    s.base = event_base_new();
    if (!s.workers || !s.base)
        return 1;
    int rc = 0;
    struct admin *adm = NULL;
    struct event *sigs[3] = {NULL, NULL, NULL};
    int started = 0;
    for (int i = 0; i < s.n_workers; i++) {
        if (worker_init(&s, &s.workers[i], i, m, err, sizeof(err)) != 0) {
            log_err("tollgate: %s", err);
            rc = 1;
            s.n_workers = i + 1;
            goto out;
        }
    }
    adm = admin_start(&cfg->admin_listen, err, sizeof(err));
    if (!adm && cfg->admin_listen.port != 0) {
        log_err("tollgate: admin listener: %s", err);
        rc = 1;
        goto out;
    }
    if (meter_start(m) != 0) {
        log_err("tollgate: cannot start the meter thread");
        rc = 1;
        goto out_admin;
    }

    if (pipe2(s.done_fd, O_NONBLOCK | O_CLOEXEC) != 0) {
        log_err("tollgate: pipe: %s", strerror(errno));
        rc = 1;
        goto out_admin;
    }
    s.worker_done = event_new(s.base, s.done_fd[0], EV_READ | EV_PERSIST, worker_done_cb, &s);
    event_add(s.worker_done, NULL);
    s.drain_timer = evtimer_new(s.base, drain_timeout_cb, &s);
    int signos[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        sigs[i] = evsignal_new(s.base, signos[i], signal_cb, &s);
        event_add(sigs[i], NULL);
    }

    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (int i = 0; i < s.n_workers; i++) {
        if (pthread_create(&s.workers[i].thread, NULL, worker_main, &s.workers[i]) != 0) {
            log_err("tollgate: cannot start worker thread %d", i);
            break;
        }
        started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started == s.n_workers) {
        /* Every address fits (CFG_MAX_LISTEN of at most 54 bytes each, in
         * a log line of 4096); "and N more" guards it should the limit grow. */
        char addrs[3584] = "";
        size_t used = 0, i;
        for (i = 0; i < cfg->n_listen; i++) {
            char as[96];
            addr_str(&cfg->listen[i], as, sizeof(as));
            if (used + strlen(as) + 32 >= sizeof(addrs))
                break;
            used += (size_t)snprintf(addrs + used, sizeof(addrs) - used, "%s%s", i ? " " : "", as);
        }
        if (i < cfg->n_listen)
            snprintf(addrs + used, sizeof(addrs) - used, " and %zu more", cfg->n_listen - i);
        log_notice("tollgate %s: %d workers, listening on %s", PACKAGE_VERSION, s.n_workers, addrs);
        event_base_dispatch(s.base);
    } else {
        rc = 1;
        for (int i = 0; i < started; i++)
            worker_post(&s.workers[i], NULL, 0, 1);
    }
    /* The loop is over: stop signals from here on (a second SIGTERM, a
     * Ctrl-C, a logrotate SIGHUP during the last meter flush) stay pending
     * and die with the process.  Freeing their events below restores their
     * default action, which would kill it mid-flush.  Every other thread
     * has them blocked since its start. */
    pthread_sigmask(SIG_BLOCK, &stops, NULL);
    for (int i = 0; i < started; i++)
        pthread_join(s.workers[i].thread, NULL);
    for (int i = 0; i < 3; i++)
        event_free(sigs[i]);
    event_free(s.worker_done);
    event_free(s.drain_timer);
    close(s.done_fd[0]);
    close(s.done_fd[1]);
out_admin:
    if (adm)
        admin_stop(adm);
out:
    /* meter_worker_free() hands each worker's last counts to the meter;
     * meter_stop() then sends them to Redis before we exit. */
    for (int i = 0; i < s.n_workers; i++)
        worker_free(&s.workers[i]);
    meter_stop(m, rc == 0 ? 5.0 : 0);
    if (rc == 0)
        log_notice("tollgate: stopped");
    conn_thread_cleanup();
    free(s.workers);
    event_base_free(s.base);
    gen_unref(first);
    gen_unref(s.gen);
    return rc;
}
