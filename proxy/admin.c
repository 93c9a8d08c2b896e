/*
 * admin: /healthz and /metrics over evhttp on a dedicated thread.
 *
 * The admin thread owns its event_base and evhttp; no other thread touches
 * them.  admin_stop() wakes the loop through a socketpair (so libevent's
 * cross-thread locking, evthread_use_pthreads(), is not needed here), joins
 * the thread, then frees everything on the caller's thread.
 *
 * The listening socket is created here rather than by evhttp_bind_socket()
 * so that a bind error can be reported with its errno.
 */
#include "proxy/admin.h"
#include "config/config.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "routing/route.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define ADMIN_TIMEOUT_S 10         /* a scraper that stalls is dropped */
#define ADMIN_MAX_HEADERS 8192

struct admin {
    int enabled;
    struct event_base *base;
    struct evhttp *http;
    struct event *wake_ev;
    int wake[2];                   /* [0] read by the admin loop, [1] written by admin_stop */
    pthread_t thread;
};

static int draining;

void admin_set_draining(int on)
{
    __atomic_store_n(&draining, on ? 1 : 0, __ATOMIC_RELAXED);
}

static void reply_text(struct evhttp_request *req, int code, const char *reason,
                       const char *ctype, const char *body, size_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    struct evbuffer *b = evbuffer_new();
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
        /* evhttp 2.1 would send a HEAD reply's body: send the length only (RFC 9110 §9.3.2). */
        char cl[24];
        snprintf(cl, sizeof(cl), "%zu", len);
        evhttp_add_header(h, "Content-Length", cl);
        len = 0;
    }
    if (b && len)
        evbuffer_add(b, body, len);
    evhttp_send_reply(req, code, reason, b);
    if (b)
        evbuffer_free(b);
}

#define TEXT_PLAIN "text/plain; charset=utf-8"

static void serve_healthz(struct evhttp_request *req)
{
    if (__atomic_load_n(&draining, __ATOMIC_RELAXED))
        reply_text(req, 503, "Service Unavailable", TEXT_PLAIN, "draining\n", 9);
    else if (route_degraded() == 1)
        reply_text(req, 200, "OK", TEXT_PLAIN, "degraded: redis unreachable\n", 28);
    else
        reply_text(req, 200, "OK", TEXT_PLAIN, "ok\n", 3);
}

static void serve_metrics(struct evhttp_request *req)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        reply_text(req, 500, "Internal Server Error", TEXT_PLAIN, "out of memory\n", 14);
        return;
    }
    metrics_write(f);
    if (fclose(f) != 0 || !text) {
        free(text);
        reply_text(req, 500, "Internal Server Error", TEXT_PLAIN, "out of memory\n", 14);
        return;
    }
    reply_text(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

static void admin_request(struct evhttp_request *req, void *arg)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    int known;

    if (!path)
        path = "";
    known = strcmp(path, "/healthz") == 0 || strcmp(path, "/metrics") == 0;
    if (!known) {
        reply_text(req, 404, "Not Found", TEXT_PLAIN, "not found\n", 10);
        return;
    }
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        reply_text(req, 405, "Method Not Allowed", TEXT_PLAIN, "method not allowed\n", 19);
        return;
    }
    if (path[1] == 'h')
        serve_healthz(req);
    else
        serve_metrics(req);
}

static void admin_wake(evutil_socket_t fd, short what, void *arg)
{
    struct admin *a = arg;
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
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 64) < 0) {
        snprintf(err, errlen, "admin-listen %s%s%s:%d: %s", res->ai_family == AF_INET6 ? "[" : "",
                 addr->host, res->ai_family == AF_INET6 ? "]" : "", addr->port, strerror(errno));
        close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}

static void admin_free(struct admin *a)
{
    if (a->wake_ev)
        event_free(a->wake_ev);
    if (a->http)
        evhttp_free(a->http);   /* closes the listening socket */
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
    a->http = a->base ? evhttp_new(a->base) : NULL;
    a->wake_ev = a->base ? event_new(a->base, a->wake[0], EV_READ, admin_wake, a) : NULL;
    if (!a->http || !a->wake_ev || event_add(a->wake_ev, NULL) < 0) {
        snprintf(err, errlen, "admin: cannot create the event loop");
        goto fail;
    }
    evhttp_set_timeout(a->http, ADMIN_TIMEOUT_S);
    evhttp_set_max_headers_size(a->http, ADMIN_MAX_HEADERS);
    evhttp_set_max_body_size(a->http, 0);
    evhttp_set_gencb(a->http, admin_request, a);

    fd = admin_listen_socket(addr, err, errlen);
    if (fd < 0)
        goto fail;
    if (!evhttp_accept_socket_with_handle(a->http, fd)) {
        snprintf(err, errlen, "admin: cannot accept on %s:%d", addr->host, addr->port);
        close(fd);
        goto fail;
    }

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
