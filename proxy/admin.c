/*
 * admin: /healthz and /metrics, served on a dedicated thread by a small
 * HTTP/1 server of its own (an evconnlistener and one bufferevent per
 * connection on the thread's event_base; heads parsed by proxy/h1.c).
 *
 * The admin thread owns its event_base, listener and connections; no other
 * thread touches them.  admin_stop() wakes the loop through a socketpair (so
 * libevent's cross-thread locking, evthread_use_pthreads(), is not needed
 * here), joins the thread, then frees everything on the caller's thread.
 *
 * Everything a client can make this thread hold is bounded, because the
 * admin port shares the process's descriptors with the proxy listeners:
 *   - at most ADMIN_MAX_CONNS connections at once; at the limit the listener
 *     stops accepting (new connections wait in the kernel's backlog) until
 *     one closes, as HAProxy's maxconn does;
 *   - an accept error (EMFILE, ENFILE, ENOBUFS, ENOMEM: the ones libevent
 *     does not retry itself) pauses the listener for ADMIN_ACCEPT_PAUSE_MS,
 *     as nginx does, instead of spinning on accept(); it is logged at most
 *     once a minute (log_err_ratelimited);
 *   - one deadline per connection, restarted only when a response is
 *     queued: the next request head must have arrived whole, and the
 *     previous response must have been read, within ADMIN_TIMEOUT_S of the
 *     connection's accept or of the previous response, however slowly the
 *     bytes trickle (slowloris); an idle keep-alive connection is closed
 *     then, a partial head gets 408;
 *   - input is read up to ADMIN_MAX_HEAD (a longer head gets 431), and no
 *     further request is parsed while ADMIN_OUT_HIGH bytes of responses wait
 *     to be read;
 *   - /metrics bodies (megabytes with many tenants) queued and not yet sent
 *     count against ADMIN_METRICS_BUDGET, across connections: a /metrics
 *     request over it waits until bodies drain (metrics_resume_cb), or gets
 *     503 when its deadline comes first -- so clients that ask and never
 *     read hold about the budget plus one body, not one body each;
 *   - a request body is never read: the request is answered by method and
 *     path alone, with Connection: close, and what follows is discarded.
 *
 * Keep-alive (RFC 9112 §9.3) and pipelining are supported; responses go out
 * in request order.  A connection that is to close is closed gracefully:
 * the response is flushed, the write side shut down, and input discarded
 * for up to ADMIN_LINGER_MS (a close() with unread input would reset the
 * connection and could destroy the response before the client reads it).
 *
 * The listening socket is created here rather than by libevent so that a
 * bind error can be reported with its errno.
 */
#include "proxy/admin.h"
#include "config/config.h"
#include "proxy/h1.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "routing/route.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define ADMIN_TIMEOUT_S 10          /* head deadline / idle keep-alive / response read */
#define ADMIN_MAX_HEAD 8192         /* longest request head; beyond: 431 */
#define ADMIN_MAX_CONNS 64          /* concurrent admin connections */
#define ADMIN_ACCEPT_PAUSE_MS 200   /* listener rest after an accept error */
#define ADMIN_LINGER_MS 2000        /* input discarded after a closing response */
#define ADMIN_OUT_HIGH 65536        /* unread response bytes that stop parsing */
#define ADMIN_BACKLOG 64
#define ADMIN_METRICS_BUDGET (4u << 20)   /* unsent /metrics bytes before the next one waits */

/* What a connection is doing. */
enum admin_conn_state {
    AC_HEAD,     /* reading and answering request heads */
    AC_FLUSH,    /* last response queued: flushing it, input discarded */
    AC_LINGER,   /* write side shut down: input discarded until EOF */
};

struct admin_conn {
    struct admin *a;
    struct bufferevent *bev;        /* owns the socket */
    struct event *deadline;         /* see the file comment */
    enum admin_conn_state state;
    int peer_eof;                   /* the client shut its write side */
    int budget_wait;                /* a /metrics request waits for ADMIN_METRICS_BUDGET */
    size_t scanned;                 /* h1_find_head_end() resume point */
    struct admin_conn *prev, *next; /* a->conns */
};

struct admin {
    int enabled;
    struct event_base *base;
    struct evconnlistener *listener;
    struct event *resume_ev;        /* ends an accept-error pause */
    struct event *wake_ev;
    int wake[2];                    /* [0] read by the admin loop, [1] written by admin_stop */
    int accepting;                  /* listener enabled */
    int accept_paused;              /* resume_ev pending */
    int n_conns;
    struct admin_conn *conns;       /* every open connection, freed by admin_free() */
    size_t metrics_queued;          /* /metrics body bytes queued and not yet sent */
    struct event *metrics_resume_ev; /* wakes budget_wait connections */
    pthread_t thread;
};

static int draining;

void admin_set_draining(int on)
{
    __atomic_store_n(&draining, on ? 1 : 0, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------------- */
/* Listener                                                               */

/* Enables the listener exactly when it is not paused after an accept error
 * and a connection may be added. */
static void admin_listener_update(struct admin *a)
{
    int want = !a->accept_paused && a->n_conns < ADMIN_MAX_CONNS;
    if (want == a->accepting)
        return;
    if (want)
        evconnlistener_enable(a->listener);
    else
        evconnlistener_disable(a->listener);
    a->accepting = want;
}

/* ---------------------------------------------------------------------- */
/* Connections                                                            */

/* The one teardown path: closes the socket and frees c.  Callers return
 * at once afterwards (bufferevent_free() is safe inside its callbacks). */
static void conn_free(struct admin_conn *c)
{
    struct admin *a = c->a;
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->n_conns--;
    if (c->deadline)
        event_free(c->deadline);
    if (c->bev)
        bufferevent_free(c->bev);
    free(c);
    if (a->listener)
        admin_listener_update(a);
}

static void conn_arm(struct admin_conn *c, long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->deadline, &tv);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default:  return "Internal Server Error";
    }
}

#define TEXT_PLAIN "text/plain; charset=utf-8"
#define PROM_TEXT "text/plain; version=0.0.4; charset=utf-8"

/* Queues one response.  conn: 0 keep-alive (HTTP/1.1 default), 1 close,
 * 2 keep-alive said explicitly (an HTTP/1.0 client asked for it, RFC 9112
 * §9.3).  A HEAD response carries the length the body would have, not the
 * body (RFC 9110 §9.3.2).  body is copied, or taken over when own is set
 * (freed here in every case).  Returns 0, or -1 when out of memory. */
/* A /metrics body was sent (or its connection freed): its bytes leave the
 * budget, and connections waiting on it are woken (from the loop, not
 * from inside this evbuffer's drain). */
static void free_ref(const void *data, size_t len, void *arg)
{
    struct admin *a = arg;
    free((void *)data);
    int was_over = a->metrics_queued >= ADMIN_METRICS_BUDGET;
    a->metrics_queued -= len;
    if (was_over && a->metrics_queued < ADMIN_METRICS_BUDGET && a->metrics_resume_ev)
        event_active(a->metrics_resume_ev, EV_TIMEOUT, 0);
}

static int conn_respond(struct admin_conn *c, int status, const char *ctype, const char *extra,
                        const char *body, size_t len, int own, int head_only, int conn)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    char date[64];
    struct tm tm;
    time_t now = time(NULL);
    int rc;

    if (!gmtime_r(&now, &tm) || !strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm))
        date[0] = 0;
    rc = evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\n"
                             "Content-Length: %zu\r\nCache-Control: no-store\r\n%s%s\r\n",
                             status, reason_phrase(status), date, ctype, len, extra ? extra : "",
                             conn == 1 ? "Connection: close\r\n" : conn == 2 ? "Connection: keep-alive\r\n" : "");
    if (rc < 0) {
        if (own)
            free((void *)body);
        return -1;
    }
    if (head_only || len == 0) {
        if (own)
            free((void *)body);
        return 0;
    }
    if (own) {
        /* /metrics can be large: hand the buffer over rather than copy it. */
        if (evbuffer_add_reference(out, body, len, free_ref, c->a) < 0) {
            free((void *)body);
            return -1;
        }
        c->a->metrics_queued += len;
        return 0;
    }
    return evbuffer_add(out, body, len);
}

/* Moves c to AC_FLUSH: nothing more is parsed, input is discarded. */
static void conn_closing(struct admin_conn *c)
{
    c->state = AC_FLUSH;
    evbuffer_drain(bufferevent_get_input(c->bev), evbuffer_get_length(bufferevent_get_input(c->bev)));
    bufferevent_enable(c->bev, EV_READ);
}

/* Answers a head that cannot be served (status 400, 408, 431, 501, 505)
 * and closes.  Returns -1 when c was freed. */
static int conn_reject(struct admin_conn *c, int status)
{
    static const char *const bodies[] = {"bad request\n", "request timeout\n",
                                         "request header fields too large\n", "not implemented\n",
                                         "http version not supported\n", "error\n"};
    const char *b = bodies[status == 400 ? 0 : status == 408 ? 1 : status == 431 ? 2
                           : status == 501 ? 3 : status == 505 ? 4 : 5];
    log_debug("%s: admin: %d", __func__, status);
    if (conn_respond(c, status, TEXT_PLAIN, NULL, b, strlen(b), 0, 0, 1) < 0) {
        conn_free(c);
        return -1;
    }
    conn_closing(c);
    conn_arm(c, ADMIN_TIMEOUT_S * 1000L);
    return 0;
}

/* /metrics text in a malloc'd buffer (*len bytes), or NULL. */
static char *metrics_text(size_t *len)
{
    char *text = NULL;
    FILE *f = open_memstream(&text, len);
    if (!f)
        return NULL;
    metrics_write(f);
    if (fclose(f) != 0 || !text) {
        free(text);
        return NULL;
    }
    return text;
}

/* Serves one parsed request.  Returns 0, or -1 when out of memory. */
static int conn_serve(struct admin_conn *c, const struct h1_request *rq, int conn)
{
    int healthz = rq->path.len == 8 && memcmp(rq->path.p, "/healthz", 8) == 0;
    int metrics = rq->path.len == 8 && memcmp(rq->path.p, "/metrics", 8) == 0;
    /* Methods are case-sensitive (RFC 9110 §9.1). */
    int head = rq->method.len == 4 && memcmp(rq->method.p, "HEAD", 4) == 0;
    int get = rq->method.len == 3 && memcmp(rq->method.p, "GET", 3) == 0;

    if (!healthz && !metrics)
        return conn_respond(c, 404, TEXT_PLAIN, NULL, "not found\n", 10, 0, head, conn);
    if (!get && !head)   /* RFC 9110 §15.5.6: a 405 lists the allowed methods */
        return conn_respond(c, 405, TEXT_PLAIN, "Allow: GET, HEAD\r\n", "method not allowed\n", 19, 0, 0,
                            conn);
    if (healthz) {
        if (__atomic_load_n(&draining, __ATOMIC_RELAXED))
            return conn_respond(c, 503, TEXT_PLAIN, NULL, "draining\n", 9, 0, head, conn);
        if (route_degraded() == 1)
            return conn_respond(c, 200, TEXT_PLAIN, NULL, "degraded: redis unreachable\n", 28, 0, head, conn);
        return conn_respond(c, 200, TEXT_PLAIN, NULL, "ok\n", 3, 0, head, conn);
    }
    size_t len = 0;
    char *text = metrics_text(&len);
    if (!text)
        return conn_respond(c, 500, TEXT_PLAIN, NULL, "out of memory\n", 14, 0, head, conn);
    return conn_respond(c, 200, PROM_TEXT, NULL, text, len, 1, head, conn);
}

/*
 * Answers every complete request head in c's input, in order, until the
 * input holds no complete head, too many response bytes wait to be read, or
 * c starts closing.  Returns -1 when c was freed.
 */
static int conn_process(struct admin_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer *out = bufferevent_get_output(c->bev);

    if (c->state != AC_HEAD) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return 0;
    }
    while (c->state == AC_HEAD) {
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            return 0;
        if (evbuffer_get_length(out) >= ADMIN_OUT_HIGH) {
            bufferevent_disable(c->bev, EV_READ);   /* conn_write_cb resumes */
            return 0;
        }
        size_t look = avail < ADMIN_MAX_HEAD + 4 ? avail : ADMIN_MAX_HEAD + 4;
        const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)look);
        if (!buf) {
            conn_free(c);
            return -1;
        }
        ssize_t hl = h1_find_head_end(buf, look, &c->scanned, ADMIN_MAX_HEAD);
        if (hl == 0)
            return 0;   /* the deadline bounds the wait for the rest */
        if (hl < 0)
            return conn_reject(c, (int)-hl);

        struct h1_request rq;
        int rc = h1_parse_request(buf, (size_t)hl, &rq);
        if (rc < 0)
            return conn_reject(c, -rc);
        if (c->a->metrics_queued >= ADMIN_METRICS_BUDGET && rq.method.len == 3 && memcmp(rq.method.p, "GET", 3) == 0
            && rq.path.len == 8 && memcmp(rq.path.p, "/metrics", 8) == 0) {
            /* Over the budget: wait, head unparsed, until bodies drain --
             * this connection's own (conn_write_cb) or others' (metrics_resume_cb). */
            bufferevent_disable(c->bev, EV_READ);
            c->budget_wait = evbuffer_get_length(out) == 0;
            c->scanned = 0;
            return 0;
        }
        /* A body is never read: the answer does not depend on it, and a
         * connection whose next message starts after an unread body must
         * close (RFC 9112 §9.6). */
        int body = (rq.flags & H1_F_CHUNKED) || ((rq.flags & H1_F_HAS_CL) && rq.content_length > 0);
        /* RFC 9112 §9.3: HTTP/1.0 persists only with keep-alive; 1.1 unless close. */
        int conn = 0;
        if (body || (rq.flags & H1_F_CONN_CLOSE) || (rq.minor == 0 && !(rq.flags & H1_F_CONN_KEEPALIVE)))
            conn = 1;
        else if (rq.minor == 0)
            conn = 2;
        if (conn_serve(c, &rq, conn) < 0) {
            conn_free(c);
            return -1;
        }
        evbuffer_drain(in, (size_t)hl);
        c->scanned = 0;
        if (conn == 1)
            conn_closing(c);
        conn_arm(c, ADMIN_TIMEOUT_S * 1000L);
    }
    return 0;
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_process(arg);
}

/* The output was read by the client (the low watermark is 0). */
static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    struct admin_conn *c = arg;
    switch (c->state) {
    case AC_HEAD:
        /* Parsing may have stopped on ADMIN_OUT_HIGH: pipelined heads wait. */
        if (!c->peer_eof) {
            bufferevent_enable(bev, EV_READ);
            conn_process(c);
        }
        return;
    case AC_FLUSH:
        if (c->peer_eof) {
            conn_free(c);
            return;
        }
        /* Half-close, then discard input until the client closes too. */
        shutdown(bufferevent_getfd(bev), SHUT_WR);
        c->state = AC_LINGER;
        conn_arm(c, ADMIN_LINGER_MS);
        return;
    case AC_LINGER:
        return;
    }
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct admin_conn *c = arg;
    if ((what & BEV_EVENT_EOF) && (what & BEV_EVENT_READING) && c->state != AC_LINGER
        && evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
        /* The client is done sending but has a response to read. */
        c->peer_eof = 1;
        if (c->state == AC_HEAD)
            c->state = AC_FLUSH;
        return;
    }
    conn_free(c);
}

static void conn_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct admin_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->budget_wait) {
        /* Other clients' /metrics bodies stayed unread all along. */
        c->budget_wait = 0;
        if (conn_respond(c, 503, TEXT_PLAIN, "Retry-After: 1\r\n", "busy: /metrics responses unread\n", 32, 0, 0,
                         1) < 0) {
            conn_free(c);
            return;
        }
        conn_closing(c);
        conn_arm(c, ADMIN_TIMEOUT_S * 1000L);
        return;
    }
    if (c->state == AC_HEAD && !c->peer_eof && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0
        && evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) {
        conn_reject(c, 408);   /* a head still partial: say why, then close */
        return;
    }
    conn_free(c);   /* idle, or a response left unread */
}

/* The /metrics budget has room again: the waiting connections try anew,
 * oldest first (a->conns is newest first), until one fills it again. */
static void metrics_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct admin *a = arg;
    (void)fd;
    (void)what;
    struct admin_conn *c = a->conns;
    while (c && c->next)
        c = c->next;
    for (struct admin_conn *prev; c; c = prev) {
        prev = c->prev;
        if (!c->budget_wait)
            continue;
        if (a->metrics_queued >= ADMIN_METRICS_BUDGET)
            return;
        c->budget_wait = 0;
        bufferevent_enable(c->bev, EV_READ);
        conn_process(c);
    }
}

/* ---------------------------------------------------------------------- */
/* Accepting                                                              */

static void admin_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                            void *arg)
{
    struct admin *a = arg;
    struct admin_conn *c;
    int one = 1;
    (void)l;
    (void)sa;
    (void)salen;

    if (a->n_conns >= ADMIN_MAX_CONNS) {
        /* Only when a libevent keeps accepting after the listener was
         * disabled in this callback: the cap holds regardless. */
        close(fd);
        return;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return;
    }
    c->a = a;
    c->bev = bufferevent_socket_new(a->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->deadline = c->bev ? evtimer_new(a->base, conn_deadline_cb, c) : NULL;
    if (!c->deadline) {
        if (c->bev)
            bufferevent_free(c->bev);
        else
            close(fd);
        free(c);
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->next = a->conns;
    if (a->conns)
        a->conns->prev = c;
    a->conns = c;
    a->n_conns++;
    if (a->n_conns >= ADMIN_MAX_CONNS) {
        log_err_ratelimited("admin-conns", "%s: admin: %d connections open (the limit): not accepting until one "
                            "closes", __func__, a->n_conns);
        admin_listener_update(a);
    }
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    /* Input is read up to the longest head (plus its CRLF CRLF): a longer
     * one is answered 431 before more is read. */
    bufferevent_setwatermark(c->bev, EV_READ, 0, ADMIN_MAX_HEAD + 4);
    bufferevent_enable(c->bev, EV_READ);
    conn_arm(c, ADMIN_TIMEOUT_S * 1000L);
}

/*
 * libevent calls this for the accept errors it does not retry itself:
 * EMFILE, ENFILE, ENOBUFS, ENOMEM.  The pending connection stays in the
 * backlog and the listener stays readable, so an armed listener would spin
 * on accept() (and log) for as long as descriptors stay used up.
 */
static void admin_accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct admin *a = arg;
    struct timeval tv = {0, ADMIN_ACCEPT_PAUSE_MS * 1000};
    (void)l;
    log_err_ratelimited("admin-accept", "%s: admin: accept: %s (not accepting for %d ms)", __func__,
                        evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()), ADMIN_ACCEPT_PAUSE_MS);
    a->accept_paused = 1;
    admin_listener_update(a);
    evtimer_add(a->resume_ev, &tv);
}

static void admin_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct admin *a = arg;
    (void)fd;
    (void)what;
    a->accept_paused = 0;
    admin_listener_update(a);
}

static void admin_wake(evutil_socket_t fd, short what, void *arg)
{
    struct admin *a = arg;
    (void)fd;
    (void)what;
    event_base_loopbreak(a->base);
}

static void *admin_thread(void *arg)
{
    struct admin *a = arg;
    event_base_dispatch(a->base);
    return NULL;
}

/* Creates a listening socket on addr; -1 with err filled. */
static int admin_listen_socket(const struct cfg_addr *addr, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    char port[8];
    int fd, one = 1, gai;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    snprintf(port, sizeof(port), "%d", addr->port);
    gai = getaddrinfo(addr->host, port, &hints, &res);
    if (gai != 0 || !res) {
        snprintf(err, errlen, "admin-listen %s:%d: %s", addr->host, addr->port, gai_strerror(gai));
        if (res)
            freeaddrinfo(res);
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "admin-listen: socket: %s", strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (res->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, ADMIN_BACKLOG) < 0) {
        snprintf(err, errlen, "admin-listen %s%s%s:%d: %s", res->ai_family == AF_INET6 ? "[" : "",
                 addr->host, res->ai_family == AF_INET6 ? "]" : "", addr->port, strerror(errno));
        close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}

/* Frees a and everything it holds; the thread is not running. */
static void admin_free(struct admin *a)
{
    struct evconnlistener *l = a->listener;
    a->listener = NULL;   /* conn_free() must not re-enable it */
    while (a->conns)
        conn_free(a->conns);
    if (a->metrics_resume_ev) {   /* after the connections: their bodies' free_ref may activate it */
        event_free(a->metrics_resume_ev);
        a->metrics_resume_ev = NULL;   /* a body freed later (a deferred bufferevent finalizer) sees none */
    }
    if (l)
        evconnlistener_free(l);   /* closes the listening socket */
    if (a->resume_ev)
        event_free(a->resume_ev);
    if (a->wake_ev)
        event_free(a->wake_ev);
    if (a->base)
        event_base_free(a->base);
    if (a->wake[0] >= 0)
        close(a->wake[0]);
    if (a->wake[1] >= 0)
        close(a->wake[1]);
    free(a);
}

struct admin *admin_start(const struct cfg_addr *addr, char *err, size_t errlen)
{
    struct admin *a = calloc(1, sizeof(*a));
    sigset_t all, old;
    int fd, rc;

    if (!a) {
        snprintf(err, errlen, "admin: out of memory");
        return NULL;
    }
    a->wake[0] = a->wake[1] = -1;
    if (!addr || addr->port == 0)
        return a;   /* disabled: a handle that serves nothing */

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, a->wake) < 0) {
        snprintf(err, errlen, "admin: socketpair: %s", strerror(errno));
        goto fail;
    }
    a->base = event_base_new();
    a->wake_ev = a->base ? event_new(a->base, a->wake[0], EV_READ, admin_wake, a) : NULL;
    a->resume_ev = a->base ? evtimer_new(a->base, admin_resume_cb, a) : NULL;
    a->metrics_resume_ev = a->base ? evtimer_new(a->base, metrics_resume_cb, a) : NULL;
    if (!a->wake_ev || !a->resume_ev || !a->metrics_resume_ev || event_add(a->wake_ev, NULL) < 0) {
        snprintf(err, errlen, "admin: cannot create the event loop");
        goto fail;
    }

    fd = admin_listen_socket(addr, err, errlen);
    if (fd < 0)
        goto fail;
    /* backlog 0: the socket already listens. */
    a->listener = evconnlistener_new(a->base, admin_accept_cb, a, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                                     0, fd);
    if (!a->listener) {
        snprintf(err, errlen, "admin: cannot accept on %s:%d", addr->host, addr->port);
        close(fd);
        goto fail;
    }
    evconnlistener_set_error_cb(a->listener, admin_accept_error_cb);
    a->accepting = 1;

    /* The thread inherits this mask: signals are handled by the main thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&a->thread, NULL, admin_thread, a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "admin: cannot start thread: %s", strerror(rc));
        goto fail;
    }
    a->enabled = 1;
    log_info("%s: admin listening on %s%s%s:%d", __func__, strchr(addr->host, ':') ? "[" : "",
             addr->host, strchr(addr->host, ':') ? "]" : "", addr->port);
    return a;
fail:
    admin_free(a);
    return NULL;
}

void admin_stop(struct admin *a)
{
    if (!a)
        return;
    if (a->enabled) {
        ssize_t n;
        do {
            n = write(a->wake[1], "x", 1);
        } while (n < 0 && errno == EINTR);
        pthread_join(a->thread, NULL);
    }
    admin_free(a);
}
