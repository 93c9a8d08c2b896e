/*
 * conn: one client connection and its HTTP/1.1 state machine.
 *
 *   CS_HEAD ──head──▶ CS_ROUTE ──route──▶ CS_CONNECT ──connected──▶ CS_PROXY
 *      ▲                 │ (error page)        │ (next backend / 502/504)   │
 *      │                 ▼                     ▼                            │ 101
 *      └──keep-alive── CS_LOCAL ◀──────────────┘                    CS_TUNNEL
 *                        │ close
 *                        ▼
 *                    CS_CLOSING ──output flushed──▶ conn_end() ──▶ conn_close()
 *                                                       │ client bytes unread
 *                                                       ▼
 *                                   CS_LINGER ──client EOF, quiet 5 s or 30 s──▶ conn_close()
 *
 * Bytes live in the bufferevents' evbuffers and are moved between them with
 * evbuffer_remove_buffer(), never copied into our own buffers.  The request
 * head stays in the client's input buffer until it has been written to a
 * backend, so that a failed connect can be retried on another backend and a
 * route answer that arrives later can re-read it; nothing of the request is
 * kept in the connection struct itself.  Per-request state (struct req) is
 * taken from a per-worker free list and exists only while a request is in
 * flight, so an idle keep-alive connection costs its bufferevent and this
 * small struct.
 *
 * Backpressure: a destination output buffer above the high watermark stops
 * reading on the source; the destination's write callback (at half the
 * watermark) resumes it.  At most about buffer_size bytes are held per
 * connection whatever the speed of either peer.
 *
 * Metering: bytes_in are counted as the request's bytes are consumed from the
 * client input (head when it is sent on, body as it is moved); bytes_out are
 * counted by a callback on the client output buffer as the kernel accepts
 * them, so bytes that never left (client gone) are never billed.  The next
 * pipelined request is only started once the previous response has been
 * written out, which keeps that attribution exact.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>

#include "config/config.h"
#include "proxy/bev.h"
#include "proxy/conn.h"
#include "proxy/h1.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/splice.h"
#include "proxy/upstream.h"
#include "routing/host.h"
#include "routing/meter.h"
#include "routing/route.h"

enum conn_state {
    CS_HEAD = 0,   /* waiting for a request head */
    CS_ROUTE,      /* route lookup pending */
    CS_CONNECT,    /* connecting to a backend */
    CS_PROXY,      /* relaying request and response */
    CS_TUNNEL,     /* upgraded: bytes both ways */
    CS_LOCAL,      /* a local response is being written; then next request */
    CS_CLOSING,    /* flushing the last bytes, then close */
    CS_LINGER,     /* response out: half-closed, dropping what the client still sends */
};

static const char *conn_state_name(enum conn_state s)
{
    static const char *const names[] = {"head", "route", "connect", "proxy", "tunnel", "local", "closing", "linger"};
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

/* Response body framing. */
enum body_mode {
    BODY_NONE = 0,
    BODY_LENGTH,
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_DECHUNK,   /* chunked from the backend, close-delimited to an HTTP/1.0 client */
    BODY_RECHUNK,   /* close-delimited from the backend, chunked to an HTTP/1.1 client */
};

/* struct req flags */
enum {
    RF_HEAD_SENT     = 1 << 0,  /* request head written to the backend */
    RF_REQ_DONE      = 1 << 1,  /* request body fully moved */
    RF_RESP_HEAD     = 1 << 2,  /* final response head sent to the client */
    RF_RESP_DONE     = 1 << 3,  /* response body fully queued */
    RF_RESP_BYTE     = 1 << 4,  /* any byte received from the backend */
    RF_METHOD_HEAD   = 1 << 5,
    RF_IDEMPOTENT    = 1 << 6,
    RF_UPGRADE       = 1 << 7,  /* client asked for an upgrade */
    RF_HTTP10        = 1 << 8,  /* client spoke HTTP/1.0 */
    RF_UP_REUSED     = 1 << 9,  /* upstream connection came from the pool */
    RF_UP_KEEPALIVE  = 1 << 10, /* backend allows reuse after this response */
    RF_THROTTLED     = 1 << 11, /* waiting on the throttle timer */
    RF_CUT           = 1 << 12, /* cut at the tenant's cap */
    RF_HAS_BODY      = 1 << 13, /* request has a body */
    RF_HEAD_CONSUMED = 1 << 14, /* head drained from the client input and counted */
    RF_UP_EOF        = 1 << 15, /* backend closed; its buffered bytes are still being relayed */
    RF_SPLICE        = 1 << 16, /* the body moves by splice (pipe held, events diverted) */
    RF_NO_SPLICE     = 1 << 17, /* splicing failed for this response: copy the rest */
    RF_ADMITTED      = 1 << 18, /* the meter admitted it (counted as a request): its bytes are billed */
    RF_AWAIT_100     = 1 << 19, /* Expect: 100-continue, no body byte yet: the backend owes an answer */
    RF_PICKED        = 1 << 20, /* r->target counts as active for least_conn (pick_end() ends it) */
    RF_THR_DOWN_1ST  = 1 << 21, /* the throttle timer's next turn serves backend -> client first */
    RF_UP_WDEAD      = 1 << 22, /* writing to the backend failed: no more body goes to it (up_write_failed) */
};

/* struct conn flags */
enum {
    CF_CLOSE_AFTER   = 1 << 0,  /* close once the current response is out */
    CF_DRAINING      = 1 << 1,
    CF_CLIENT_PAUSED = 1 << 2,  /* client reading stopped for backpressure */
    CF_UP_PAUSED     = 1 << 3,  /* upstream reading stopped for backpressure */
    CF_V6            = 1 << 4,
    CF_CLIENT_EOF    = 1 << 5,  /* tunnel: client closed its sending side */
    CF_PLAIN         = 1 << 6,  /* the client is a plain TCP socket: bytes may be spliced to it */
    CF_UNREAD        = 1 << 7,  /* closing with a request body not read: linger (conn_end) */
    CF_UP_FIN        = 1 << 8,  /* tunnel: backend closed its sending side */
};

struct req {
    struct req *next_free;
    struct route_entry *entry;
    const struct route_backends *backends;
    struct meter_tenant *mt;
    struct bufferevent *up;
    struct event *timer;            /* throttle pacing; created on first use */
    struct route_target target;
    unsigned long target_cfg;       /* worker_config_id() when target was picked */
    uint64_t up_acked;              /* backend's bytes acked at the last write timeout */
    uint64_t tried;
    size_t head_len;                /* request head bytes at the front of the client input */
    int64_t req_left;               /* Content-Length bytes left */
    int64_t resp_left;
    struct h1_chunked req_chunk;
    struct h1_chunked resp_chunk;
    size_t resp_scanned;
    struct splice_pipe pipe;        /* RF_SPLICE: the body's way through the kernel */
    size_t pipe_ok;                 /* bytes in the pipe the tenant's allowance let pass */
    unsigned flags;
    unsigned char req_mode;         /* enum body_mode */
    unsigned char resp_mode;
    unsigned char attempts;
    unsigned char stale_retries;    /* dead pooled connections passed over (not counted as attempts) */
    unsigned char redirect_https;
    unsigned char interims;         /* 1xx heads read for this request (MAX_INTERIM) */
    unsigned char credit;           /* BODY_RECHUNK: allowance granted, too little for a chunk yet */
    unsigned short admit_waits;
    int status;
    uint64_t bytes_in, bytes_out;
    struct timeval start;
    struct timeval up_start;        /* access log: the last backend attempt began */
    struct timeval up_head;         /* access log: its response head came (unset: none) */
    char method[16];
    char upgrade[64];               /* the Upgrade the client offered (RF_UPGRADE), cut at 63 bytes */
    char host[HOST_MAX + 8];        /* the Host value as sent (":port" included) */
    char path[192];                 /* the target as sent, cut for the access log */
    char tenant[129];               /* up to 128 bytes (docs/redis-schema.md) */
};

struct conn {
    struct bufferevent *bev;
    struct worker *w;
    struct req *req;
    struct route_lookup *lookup;
    struct conn *prev, *next;         /* worker's list, for draining */
    uint64_t id;
    size_t scanned;                   /* h1_find_head_end() resume point */
    struct timeval head_start;        /* first byte of the current head */
    struct timeval last_activity;     /* tunnel idleness; start of keep-alive idleness in CS_HEAD */
    uint64_t acked;                   /* client's bytes acked at the last write timeout (bev_peer_acked_more) */
    struct event *park_ev;            /* set while parked (bev == NULL) */
    int fd;                           /* the client socket; the conn closes it */
    float rto, wto;                   /* the bufferevent's timeouts (s, 0 = none): set_client_timeouts() */
    unsigned flags;
    unsigned char state;
    unsigned char wstalls;            /* write timeouts in a row with nothing acked (WRITE_STALLS) */
    union {
        struct in_addr v4;
        struct in6_addr v6;
    } peer;
};

/* An idle keep-alive connection parks (drops its bufferevent) after this. */
#define PARK_GRACE 0.05

/*
 * A client with response bytes pending is cut at its WRITE_STALLS-th write
 * timeout in a row with nothing acknowledged: 3 to 4 periods of silence
 * (180-240 s by default).  A client that reads slowly but steadily can leave
 * its receive window closed for two minutes: Linux probes a closed window
 * at intervals that back off to 120 s (TCP_RTO_MAX), and sends nothing, so
 * nothing is acknowledged, until a probe finds it open.
 */
#define WRITE_STALLS 3

static __thread struct req *req_free_list;
static __thread uint64_t conn_next_id;
static __thread struct conn *conn_list;   /* this worker's connections */

/*
 * The request head conn_process() parsed last on this thread, and whose it
 * is.  When send_request() follows in the same call chain (a cached route
 * and a pooled backend connection, the common case) it uses this parse
 * instead of parsing the head again; otherwise it parses again.
 */
static __thread struct h1_request parsed_rq;
static __thread const struct req *parsed_req;
static __thread const unsigned char *parsed_at;

static void conn_close(struct conn *c);
static void conn_park(struct conn *c, double left_s);
static void conn_process(struct conn *c);
static void client_read_cb(struct bufferevent *bev, void *arg);
static void client_write_cb(struct bufferevent *bev, void *arg);
static void client_event_cb(struct bufferevent *bev, short what, void *arg);
static void up_read_cb(struct bufferevent *bev, void *arg);
static void up_write_cb(struct bufferevent *bev, void *arg);
static void up_event_cb(struct bufferevent *bev, short what, void *arg);
static void start_upstream(struct conn *c);
static int tunnel_half_close(struct conn *c);
static void finish_request(struct conn *c);
static void splice_end(struct conn *c);
static void conn_end(struct conn *c);
static void conn_cut(struct conn *c);
static void conn_release_req(struct conn *c);

static void set_state(struct conn *c, enum conn_state s)
{
    if (log_level_enabled(LOG_DEBUG))
        log_debug("%s: conn %llu: %s -> %s", __func__, (unsigned long long)c->id,
                  conn_state_name((enum conn_state)c->state), conn_state_name(s));
    c->state = (unsigned char)s;
}

static const struct tg_config *cfg_of(struct conn *c)
{
    return worker_config(c->w);
}

static struct timeval tv_of(double s)
{
    struct timeval tv;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

/* tv_of()'s inverse: a timeval as seconds. */
static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static size_t hwm_of(struct conn *c)
{
    /* Half of the per-connection budget for each direction. */
    size_t b = cfg_of(c)->buffer_size / 2;
    return b < 16384 ? 16384 : b;
}

static void copy_str(char *dst, size_t cap, const char *s, size_t len)
{
    if (len >= cap)
        len = cap - 1;
    if (len)                     /* s may be NULL when len is 0 (no Host) */
        memcpy(dst, s, len);
    dst[len] = '\0';
}

/*
 * Writes what bev's output holds now, straight to the socket.  A socket
 * bufferevent would otherwise arm EV_WRITE for every write and drop it
 * after (two epoll_ctl calls and a loop iteration per response); in the
 * common case the socket takes everything at once.  Only what the kernel
 * refuses is left to the bufferevent (EV_WRITE enabled), whose write
 * callback then runs as the buffer drains; the write callbacks switch
 * EV_WRITE off again once it is empty.  Returns 1 when the output is empty.
 */
static int flush_now(struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    if (evbuffer_get_length(out) == 0)
        return 1;
    if (bufferevent_get_enabled(bev) & EV_WRITE)
        return 0;                /* the bufferevent is already on it */
    bev_write(bev);
    if (evbuffer_get_length(out) == 0)
        return 1;
    /* EAGAIN, a partial write or an error: the bufferevent takes over and
     * reports an error through the event callback. */
    bufferevent_enable(bev, EV_WRITE);
    return 0;
}

/*
 * Bytes queued in bev's output, after trying to write them out when they
 * reach the watermark: a relay fills up to hwm, writes, and goes on filling
 * what the kernel took.
 */
static size_t out_room(struct bufferevent *bev, size_t hwm)
{
    size_t have = evbuffer_get_length(bufferevent_get_output(bev));
    if (have >= hwm) {
        flush_now(bev);
        have = evbuffer_get_length(bufferevent_get_output(bev));
    }
    return have;
}

/* ---------------------------------------------------------------------- */
/* Requests                                                               */

static struct req *req_new(void)
{
    struct req *r = req_free_list;
    if (r) {
        req_free_list = r->next_free;
        struct event *timer = r->timer;
        memset(r, 0, sizeof(*r));
        r->timer = timer;
    } else {
        r = calloc(1, sizeof(*r));
    }
    return r;
}

/* Releases everything a request holds (not its upstream connection). */
static void req_free(struct req *r)
{
    if (parsed_req == r)
        parsed_req = NULL;
    if (r->mt)
        meter_tenant_put(r->mt);
    if (r->entry)
        route_entry_unref(r->entry);
    if (r->timer)
        event_del(r->timer);
    r->mt = NULL;
    r->entry = NULL;
    r->next_free = req_free_list;
    req_free_list = r;
}

/* ---------------------------------------------------------------------- */
/* Access log and counters                                                */

/* The client's address as text (cap >= INET6_ADDRSTRLEN).  IPv4 by hand:
 * glibc's inet_ntop formats it with sprintf, once per proxied request. */
static void peer_str(const struct conn *c, char *buf, size_t cap)
{
    if (!(c->flags & CF_V6)) {
        const unsigned char *b = (const unsigned char *)&c->peer.v4;
        char *p = buf;
        for (int i = 0; i < 4; i++) {
            unsigned v = b[i];
            if (v >= 100)
                *p++ = (char)('0' + v / 100);
            if (v >= 10)
                *p++ = (char)('0' + v / 10 % 10);
            *p++ = (char)('0' + v % 10);
            *p++ = i < 3 ? '.' : '\0';
        }
        return;
    }
    if (!inet_ntop(AF_INET6, &c->peer, buf, (socklen_t)cap))
        copy_str(buf, cap, "-", 1);
}

/* Copies s into out (outlen >= 4 * strlen(s) + 1 never cuts) with '"', '\\'
 * and bytes outside 0x20..0x7e written as \xHH. */
static void log_escape(const char *s, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *s && o + 5 <= outlen; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
}

static void log_request(struct conn *c, struct req *r)
{
    struct tg_metrics *m = worker_metrics(c->w);
    if (r->status >= 100 && r->status < 600)
        m->responses_by_class[r->status / 100]++;
    if (!log_access_enabled())
        return;
    /* Precise clock for the duration (the event loop's cached time comes
     * from a coarse clock: 4 ms steps on most kernels). */
    struct timeval now, d, u;
    evutil_gettimeofday(&now, NULL);
    evutil_timersub(&now, &r->start, &d);
    char up[24] = "-";
    if (evutil_timerisset(&r->up_head)) {
        evutil_timersub(&r->up_head, &r->up_start, &u);
        snprintf(up, sizeof(up), "%.3f", tv_s(u));
    }
    char ip[INET6_ADDRSTRLEN], ts[32], host[HOST_MAX + 1], path[4 * sizeof(r->path)], line[2048];
    struct tm tm;
    time_t t = now.tv_sec;
    gmtime_r(&t, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    peer_str(c, ip, sizeof(ip));
    /* The host as routed (lower case, no port), so that one site's lines
     * carry one name; the target with '"', '\\' and bytes outside printable
     * ASCII as \xHH, as nginx writes them, so that the quoted field stays
     * one field. */
    if (!r->host[0] || host_normalise(r->host, strlen(r->host), host) < 0)
        snprintf(host, sizeof(host), "-");
    log_escape(r->path[0] ? r->path : "-", path, sizeof(path));
    int n = snprintf(line, sizeof(line), "%s %s %s \"%s %s\" %d %llu %llu %s %.3f %s %s%s\n", ts, ip,
                     host, r->method[0] ? r->method : "-", path,
                     r->status, (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out,
                     r->target.name[0] ? r->target.name : "-", tv_s(d),
                     r->tenant[0] ? r->tenant : "-", up, (r->flags & RF_CUT) ? " cut" : "");
    if (n > 0)
        log_access_line(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void count_in(struct conn *c, size_t n)
{
    struct req *r = c->req;
    worker_metrics(c->w)->bytes_in += n;
    if (r) {
        r->bytes_in += n;
        if (r->mt)
            meter_count_in(r->mt, n);
    }
}

/* n bytes went to the client: the kernel took them. */
static void count_out(struct conn *c, size_t n)
{
    struct req *r = c->req;
    worker_metrics(c->w)->bytes_out += n;
    if (r) {
        r->bytes_out += n;
        if (r->mt)
            meter_count_out(r->mt, n);
    }
}

/* Client output callback: bytes leave the buffer when the kernel takes them. */
static void client_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    if (info->n_deleted > 0)
        count_out(arg, info->n_deleted);
}

/*
 * Drains the request head from the client input and counts it, once.  A
 * bodiless request keeps its head in the buffer until the backend answers,
 * so that it can be sent again if a pooled connection turns out closed.
 */
static void consume_head(struct conn *c)
{
    struct req *r = c->req;
    if (!r || !r->head_len || (r->flags & RF_HEAD_CONSUMED))
        return;
    r->flags |= RF_HEAD_CONSUMED;
    evbuffer_drain(bufferevent_get_input(c->bev), r->head_len);
    count_in(c, r->head_len);
}

/* ---------------------------------------------------------------------- */
/* Local responses                                                        */

/* Reason phrases of RFC 9110 §15 (and 429/431/451 of RFC 6585/7725, nginx's 509):
 * --cap-status may be any of 400..599. */
static const char *reason_of(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 301: return "Moved Permanently";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    case 509: return "Bandwidth Limit Exceeded";
    case 511: return "Network Authentication Required";
    default: return status < 500 ? "Client Error" : "Server Error";
    }
}

/*
 * Writes a small HTML error page.  close_after: close the connection once it
 * is written.  extra: extra header lines (each ending in CRLF) or NULL.
 * The request (if any) stays attached so that its bytes_out are counted.
 */
static void respond_body(struct conn *c, int status, const char *body, size_t blen, const char *extra,
                         int close_after);

/* The current time as an IMF-fixdate (RFC 9110 §5.6.7), made once a second per thread. */
static const char *http_date(void)
{
    static __thread time_t made = -1;
    static __thread char buf[40];
    time_t now = time(NULL);
    if (now != made) {
        static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
        static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        struct tm tm;
        gmtime_r(&now, &tm);
        snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
                 tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
        made = now;
    }
    return buf;
}

static void respond_local(struct conn *c, int status, const char *detail, const char *extra, int close_after)
{
    char body[512];
    const char *reason = reason_of(status);
    int blen = snprintf(body, sizeof(body),
                        "<!DOCTYPE html>\n<html><head><title>%d %s</title></head>\n"
                        "<body><h1>%d %s</h1>\n<p>%s</p>\n<hr><p>tollgate</p></body></html>\n",
                        status, reason, status, reason, detail ? detail : reason);
    if (blen < 0 || (size_t)blen >= sizeof(body))
        blen = (int)strlen(body);
    respond_body(c, status, body, (size_t)blen, extra, close_after);
}

/* Like respond_local() with a body of the caller's (an HTML page). */
static void respond_body(struct conn *c, int status, const char *body, size_t blen, const char *extra,
                         int close_after)
{
    struct req *r = c->req;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    const char *reason = reason_of(status);
    if (status == 400 || status == 408 || status == 431 || status == 505 || status == 501
        || worker_draining(c->w) || (c->flags & CF_CLOSE_AFTER))
        close_after = 1;
    /* A request body we did not read would be taken for the next request. */
    if (r && (r->flags & RF_HAS_BODY) && !(r->flags & RF_REQ_DONE)) {
        close_after = 1;
        c->flags |= CF_UNREAD;
    }
    if (close_after)
        c->flags |= CF_CLOSE_AFTER;
    int http10 = r && (r->flags & RF_HTTP10);
    evbuffer_add_printf(out,
                        "HTTP/1.%d %d %s\r\nDate: %s\r\nContent-Type: text/html; charset=utf-8\r\n"
                        "Content-Length: %zu\r\nCache-Control: no-store\r\n%s%s\r\n",
                        http10 ? 0 : 1, status, reason, http_date(), blen, extra ? extra : "",
                        close_after ? "Connection: close\r\n" : (http10 ? "Connection: keep-alive\r\n" : ""));
    if (!(r && (r->flags & RF_METHOD_HEAD)))
        evbuffer_add(out, body, blen);
    if (r) {
        r->status = status;
        r->flags |= RF_RESP_HEAD | RF_RESP_DONE;
        consume_head(c);
        if (!(r->flags & RF_HAS_BODY))
            r->flags |= RF_REQ_DONE;
    }
    set_state(c, close_after ? CS_CLOSING : CS_LOCAL);
    if (close_after)
        bufferevent_disable(c->bev, EV_READ);
    bufferevent_enable(c->bev, EV_WRITE);
}

/* A parse error before any request state exists: answer and close.  rq:
 * what h1_parse_request() made of the head, or NULL when it never ran; the
 * access log then shows the method and target when the request line
 * parsed (as nginx logs its request line), "- -" otherwise. */
static void reject(struct conn *c, int status, const struct h1_request *rq, size_t head_len)
{
    worker_metrics(c->w)->bad_requests++;
    if (!c->req) {
        c->req = req_new();
        if (!c->req) {
            conn_close(c);
            return;
        }
        /* The duration runs from the head's first byte, as for any
         * request (a slow head rejected with 408 shows how long it took). */
        if (evutil_timerisset(&c->head_start))
            c->req->start = c->head_start;
        else
            evutil_gettimeofday(&c->req->start, NULL);
        evutil_timerclear(&c->head_start);
        /* What was read of the rejected head is the request's bytes in:
         * the head when its end was found (not the body or the pipelined
         * requests read with it: they are never read as such), else all
         * that came of it. */
        size_t have = evbuffer_get_length(bufferevent_get_input(c->bev));
        c->req->head_len = head_len && head_len < have ? head_len : have;
        if (rq && rq->method.p && rq->target.p) {
            copy_str(c->req->method, sizeof(c->req->method), rq->method.p, rq->method.len);
            copy_str(c->req->path, sizeof(c->req->path), rq->target.p, rq->target.len);
        }
    }
    c->flags |= CF_UNREAD;   /* the rest of it may still be coming */
    respond_local(c, status, NULL, NULL, 1);
}

/* ---------------------------------------------------------------------- */
/* Timeouts                                                               */

/* Sets the client bufferevent's timeouts (0 = none), unless they are set
 * already: each change re-adds its events to the timer heap. */
static void set_client_timeouts(struct conn *c, double read_s, double write_s)
{
    float r = read_s > 0 ? (float)read_s : 0, w = write_s > 0 ? (float)write_s : 0;
    if (r == c->rto && w == c->wto)
        return;
    c->rto = r;
    c->wto = w;
    struct timeval rt = tv_of(read_s), wt = tv_of(write_s);
    bufferevent_set_timeouts(c->bev, r > 0 ? &rt : NULL, w > 0 ? &wt : NULL);
}

/* ---------------------------------------------------------------------- */
/* Request head                                                           */

static int method_is(const struct h1_request *rq, const char *m)
{
    size_t n = strlen(m);
    return rq->method.len == n && memcmp(rq->method.p, m, n) == 0;
}

/* The current head, parsed (it is kept in the client input until sent).
 * NULL when it cannot be read or parsed again. */
static const struct h1_request *reparse_head(struct conn *c)
{
    struct req *r = c->req;
    unsigned char *p = evbuffer_pullup(bufferevent_get_input(c->bev), (ev_ssize_t)r->head_len);
    if (!p)
        return NULL;
    if (parsed_req == r && parsed_at == p)
        return &parsed_rq;
    parsed_req = NULL;
    if (h1_parse_request((const char *)p, r->head_len, &parsed_rq) != 0)
        return NULL;
    parsed_req = r;
    parsed_at = p;
    return &parsed_rq;
}

static void route_done(void *arg, const struct route_result *res);
static void admit(struct conn *c);

/*
 * 308 to the same URL over https: the Host without its port (the https URL
 * has the default one) and the whole path and query as sent (of an
 * absolute-form target, the part after the authority).
 */
static void redirect_https(struct conn *c)
{
    const struct h1_request *rq = reparse_head(c);
    if (!rq) {
        respond_local(c, 400, NULL, NULL, 1);
        return;
    }
    size_t hl = rq->host.len;
    for (size_t i = hl; i > 0; i--) {
        if (rq->host.p[i - 1] == ']')
            break;
        if (rq->host.p[i - 1] == ':') {
            hl = i - 1;
            break;
        }
    }
    /* The path and query as sent.  An absolute-form target without a path
     * ("http://h" or "http://h?q") has a path that is not in the target
     * (the parser's "/"): then "/" and the query, if any. */
    const char *tend = rq->target.p + rq->target.len, *pq;
    const char *slash = "";
    if (rq->path.len && rq->path.p >= rq->target.p && rq->path.p < tend) {
        pq = rq->path.p;
    } else {
        slash = "/";
        pq = memchr(rq->target.p, '?', rq->target.len);
        if (!pq)
            pq = tend;
    }
    size_t pql = (size_t)(tend - pq);
    size_t cap = hl + pql + 32;
    char *loc = malloc(cap);
    if (!loc) {
        conn_close(c);
        return;
    }
    snprintf(loc, cap, "Location: https://%.*s%s%.*s\r\n", (int)hl, rq->host.p, slash, (int)pql, pq);
    respond_local(c, 308, "This site is served over HTTPS.", loc, 0);
    free(loc);
}

/*
 * Looks for a complete request head in the client input and starts the
 * request.  Called on every read in CS_HEAD and after a request finishes
 * (pipelined requests wait in the input buffer).
 */
static void conn_process(struct conn *c)
{
    const struct tg_config *cfg = cfg_of(c);
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t avail = evbuffer_get_length(in);

    if (c->state != CS_HEAD || c->req)
        return;
    if (avail == 0) {
        if ((c->flags & CF_DRAINING) || worker_draining(c->w)) {
            conn_close(c);
            return;
        }
        c->scanned = 0;
        /* Idle: park after a short grace (a busy keep-alive client is back
         * within it, and pays nothing); see conn_park(). */
        event_base_gettimeofday_cached(worker_base(c->w), &c->last_activity);
        set_client_timeouts(c, cfg->keepalive_timeout < PARK_GRACE ? cfg->keepalive_timeout : PARK_GRACE, 0);
        return;
    }
    /* The precise clock: head_start is where the access log's duration
     * starts. */
    struct timeval now;
    evutil_gettimeofday(&now, NULL);
    if (c->scanned == 0 && !evutil_timerisset(&c->head_start))
        c->head_start = now;

    size_t look = avail < cfg->max_header_size + 4 ? avail : cfg->max_header_size + 4;
    unsigned char *buf = evbuffer_pullup(in, (ev_ssize_t)look);
    if (!buf) {
        conn_close(c);
        return;
    }
    ssize_t hl = h1_find_head_end((const char *)buf, look, &c->scanned, cfg->max_header_size);
    if (hl == 0) {
        /* Partial head: the whole head must arrive within client_header_timeout
         * of its first byte, however slowly it trickles (slowloris). */
        struct timeval d;
        evutil_timersub(&now, &c->head_start, &d);
        double left = cfg->client_header_timeout - tv_s(d);
        if (left <= 0) {
            reject(c, 408, NULL, 0);
            return;
        }
        set_client_timeouts(c, left, 0);
        return;
    }
    if (hl < 0) {
        reject(c, (int)-hl, NULL, 0);
        return;
    }
    struct h1_request *rq = &parsed_rq;
    parsed_req = NULL;
    int rc = h1_parse_request((const char *)buf, (size_t)hl, rq);
    if (rc < 0) {
        reject(c, -rc, rq, (size_t)hl);
        return;
    }
    struct req *r = req_new();
    if (!r) {
        conn_close(c);
        return;
    }
    c->req = r;
    c->wstalls = 0;
    parsed_req = r;
    parsed_at = buf;
    worker_metrics(c->w)->requests_total++;
    r->start = c->head_start;
    evutil_timerclear(&c->head_start);
    c->scanned = 0;
    r->head_len = (size_t)hl;
    copy_str(r->method, sizeof(r->method), rq->method.p, rq->method.len);
    copy_str(r->host, sizeof(r->host), rq->host.p, rq->host.len);
    copy_str(r->path, sizeof(r->path), rq->target.p, rq->target.len);
    if (rq->minor == 0)
        r->flags |= RF_HTTP10;
    if (method_is(rq, "HEAD"))
        r->flags |= RF_METHOD_HEAD;
    if (method_is(rq, "GET") || method_is(rq, "HEAD") || method_is(rq, "OPTIONS")
        || method_is(rq, "PUT") || method_is(rq, "DELETE") || method_is(rq, "TRACE"))
        r->flags |= RF_IDEMPOTENT;
    if (rq->flags & H1_F_UPGRADE) {
        r->flags |= RF_UPGRADE;
        copy_str(r->upgrade, sizeof(r->upgrade), rq->upgrade.p, rq->upgrade.len);
    }
    if (rq->flags & H1_F_CHUNKED) {
        r->req_mode = BODY_CHUNKED;
        h1_chunked_init_strict(&r->req_chunk);
        r->flags |= RF_HAS_BODY;
    } else if ((rq->flags & H1_F_HAS_CL) && rq->content_length > 0) {
        r->req_mode = BODY_LENGTH;
        r->req_left = rq->content_length;
        r->flags |= RF_HAS_BODY;
    }
    /* RFC 9110 §10.1.1: such a client may wait for 100 before its body. */
    if ((rq->flags & H1_F_EXPECT_CONTINUE) && (r->flags & RF_HAS_BODY) && rq->minor >= 1)
        r->flags |= RF_AWAIT_100;
    /* RFC 9112 §9.3: HTTP/1.0 persists only with keep-alive; 1.1 unless close. */
    if ((rq->flags & H1_F_CONN_CLOSE) || (rq->minor == 0 && !(rq->flags & H1_F_CONN_KEEPALIVE)))
        c->flags |= CF_CLOSE_AFTER;

    /* The client may pause here while we route: no read timeout.  (The write
     * timeout is the one the response will need; it runs only while writes
     * wait, so setting it now saves re-arming the timers a second time.) */
    set_client_timeouts(c, 0, cfg->client_body_timeout);
    set_state(c, CS_ROUTE);
    struct route_lookup *lk = route_lookup(worker_routes(c->w), rq->host.p, rq->host.len, rq->path.p,
                                           rq->path.len, route_done, c);
    /* When the answer was synchronous, route_done ran and c may be gone. */
    if (lk)
        c->lookup = lk;
}

/* ---------------------------------------------------------------------- */
/* Routing answer                                                         */

static void route_done(void *arg, const struct route_result *res)
{
    struct conn *c = arg;
    struct req *r = c->req;
    c->lookup = NULL;

    switch (res->status) {
    case ROUTE_OK:
        break;
    case ROUTE_BAD_HOST:
        worker_metrics(c->w)->bad_requests++;
        respond_local(c, 400, r->host[0] ? "The Host header is not a valid host name."
                                         : "The request has no Host header: tollgate routes by host name.",
                      NULL, 1);
        return;
    case ROUTE_NOT_FOUND:
        respond_local(c, 404, "No site is configured for this host name.", NULL, 0);
        return;
    case ROUTE_UNAVAILABLE:
        respond_local(c, 503, "The routing table is unreachable; try again shortly.", "Retry-After: 1\r\n", 0);
        return;
    case ROUTE_BAD_DATA:
    default:
        respond_local(c, 502, res->detail ? res->detail : "The routing data for this host is invalid.", NULL, 0);
        return;
    }

    r->entry = res->entry;
    route_entry_ref(r->entry);
    r->backends = res->backends;
    if (res->tenant)
        copy_str(r->tenant, sizeof(r->tenant), res->tenant, strlen(res->tenant));
    r->redirect_https = (unsigned char)(res->redirect_https != 0);
    struct meter_worker *mw = worker_meter(c->w);
    if (mw && res->tenant)
        r->mt = meter_tenant_get(mw, res->tenant, &res->policy);
    admit(c);
}

/*
 * The over-cap answer: cfg->cap_status with the page from cfg->cap_page or a
 * built-in one.  The page is read once per worker and configuration
 * (worker_config_id(): every committed reload is a new one), so a page
 * edited in place is read again after the next reload, as the README
 * promises, and in between a compare is all it costs.
 */
static __thread char *cap_page_body;
static __thread size_t cap_page_len;
static __thread unsigned long cap_page_cfg;   /* the configuration cap_page_body was read for (0: none) */

static void respond_cap(struct conn *c)
{
    const struct tg_config *cfg = cfg_of(c);
    unsigned long id = worker_config_id(c->w);
    if (cfg->cap_page && cap_page_cfg != id) {
        free(cap_page_body);
        cap_page_body = NULL;
        cap_page_len = 0;
        cap_page_cfg = id;
        FILE *f = fopen(cfg->cap_page, "rb");
        if (f) {
            char *buf = malloc(65536);
            size_t n = buf ? fread(buf, 1, 65536, f) : 0;
            fclose(f);
            cap_page_body = buf;
            cap_page_len = n;
        } else {
            log_err_ratelimited("cap-page", "%s: cannot read cap-page %s; using the built-in page", __func__,
                                cfg->cap_page);
        }
    }
    if (cfg->cap_page && cap_page_body) {
        respond_body(c, cfg->cap_status, cap_page_body, cap_page_len, NULL, 0);
        return;
    }
    respond_local(c, cfg->cap_status, "This site has used its bandwidth allowance for the month.", NULL, 0);
}

static void admit_wait_cb(evutil_socket_t fd, short what, void *arg)
{
    admit(arg);
}

/*
 * Admission by the tenant's state.  The first request of a capped tenant
 * this instance has never seen waits (1 ms steps, one Redis round trip at
 * most) until the meter knows whether the cap is already reached, so that
 * it gets a clean 509 rather than a response cut before its first byte.
 */
static void admit(struct conn *c)
{
    struct req *r = c->req;
    if (r->mt && !meter_state_known(r->mt) && r->admit_waits < 500) {
        if (!r->timer)
            r->timer = event_new(worker_base(c->w), -1, 0, admit_wait_cb, c);
        if (r->timer) {
            struct timeval tv = {0, 1000};
            event_del(r->timer);
            evtimer_assign(r->timer, worker_base(c->w), admit_wait_cb, c);
            evtimer_add(r->timer, &tv);
            r->admit_waits++;
            return;
        }
    }
    if (r->mt) {
        {
            enum meter_verdict v = meter_admit(r->mt);
            if (v != METER_ALLOW) {
                /* Refused requests are not billed to the tenant. */
                meter_tenant_put(r->mt);
                r->mt = NULL;
                if (v == METER_SUSPENDED)
                    respond_local(c, 503, "This site is suspended.", NULL, 0);
                else
                    respond_cap(c);
                return;
            }
            meter_count_request(r->mt);
            r->flags |= RF_ADMITTED;
        }
    }
    if (r->redirect_https) {
        redirect_https(c);
        return;
    }
    start_upstream(c);
}

/* ---------------------------------------------------------------------- */
/* Upstream connection                                                    */

/* The exchange with r->target is over (its connection pooled or closed, or
 * never made): ends the active count route_pick() started, once. */
static void pick_end(struct conn *c, struct req *r)
{
    if (r->flags & RF_PICKED) {
        r->flags &= ~RF_PICKED;
        route_release(worker_routes(c->w), r->backends, &r->target);
    }
}

static void up_detach(struct conn *c, int reusable)
{
    struct req *r = c->req;
    if (!r)
        return;
    pick_end(c, r);
    if (!r->up)
        return;
    splice_end(c);
    struct bufferevent *up = r->up;
    r->up = NULL;
    c->flags &= ~(CF_UP_PAUSED | CF_CLIENT_PAUSED);
    if (reusable && !worker_draining(c->w)) {
        upstream_pool_put(worker_pool(c->w), &r->target, up);
        return;
    }
    bufferevent_free(up);
}

static void up_setup(struct conn *c, struct bufferevent *up)
{
    struct req *r = c->req;
    r->up = up;
    bufferevent_disable(up, EV_WRITE);   /* writes go through flush_now() */
    bufferevent_setcb(up, up_read_cb, up_write_cb, up_event_cb, c);
    bufferevent_setwatermark(up, EV_WRITE, hwm_of(c) / 2, 0);
    bufferevent_set_max_single_write(up, 262144);   /* default 16 KiB per event */
    /* The response head's read: short when the body may be spliced, so
     * that a long body stays in the socket for splice(2). */
    bufferevent_set_max_single_read(up, cfg_of(c)->splice_min_body && (c->flags & CF_PLAIN)
                                            ? BEV_READ_HEAD : BEV_READ_CHUNK);
}

static void send_request(struct conn *c);
static int relay_request_body(struct conn *c);

/*
 * " (ADDR:PORT)" -- the address a backend named by DNS resolved to, for a log
 * line that names the backend -- or "" when its name is that address.
 */
static const char *target_addr(const struct route_target *t, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN];
    unsigned port;
    if (t->addr.ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&t->addr;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        port = ntohs(s4->sin_port);
        snprintf(buf, cap, " (%s:%u)", ip, port);
    } else if (t->addr.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&t->addr;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        port = ntohs(s6->sin6_port);
        snprintf(buf, cap, " ([%s]:%u)", ip, port);
    } else {
        buf[0] = '\0';
    }
    size_t n = strlen(buf);    /* " (" ADDR ")" */
    if (n > 3 && strlen(t->name) == n - 3 && memcmp(buf + 2, t->name, n - 3) == 0)
        buf[0] = '\0';          /* a literal address: the name says it */
    return buf;
}

/* Picks a backend and connects to it (or takes a pooled connection). */
static void start_upstream(struct conn *c)
{
    struct req *r = c->req;
    const struct tg_config *cfg = cfg_of(c);
    for (;;) {
        pick_end(c, r);
        /* Every backend of the route may be tried once (as nginx's
         * proxy_next_upstream_tries 0): route_pick() fails when none is left. */
        if (route_pick(worker_routes(c->w), r->backends, &r->tried, &r->target) != 0) {
            respond_local(c, 502, "No backend of this site is reachable.", NULL, 0);
            return;
        }
        r->flags |= RF_PICKED;
        r->target_cfg = worker_config_id(c->w);
        r->attempts++;
        if (log_access_enabled()) {
            evutil_gettimeofday(&r->up_start, NULL);
            evutil_timerclear(&r->up_head);
        }
        struct bufferevent *up = upstream_pool_get(worker_pool(c->w), &r->target);
        if (up) {
            worker_metrics(c->w)->upstream_reused++;
            r->flags |= RF_UP_REUSED;
            up_setup(c, up);
            set_state(c, CS_PROXY);
            send_request(c);
            return;
        }
        r->flags &= ~RF_UP_REUSED;
        up = upstream_connect(worker_base(c->w), &r->target);
        if (!up && (errno == EMFILE || errno == ENFILE)) {
            /* Out of descriptors here: no failure of the backend's.  Idle
             * pooled connections give theirs back and the connect is tried
             * once more; else 503, and the backend is not cooled down. */
            log_warn("%s: conn %llu: out of file descriptors connecting to %s; closing idle backend connections",
                     __func__, (unsigned long long)c->id, r->target.name);
            upstream_pool_flush(worker_pool(c->w));
            up = upstream_connect(worker_base(c->w), &r->target);
            if (!up && (errno == EMFILE || errno == ENFILE)) {
                respond_local(c, 503, "The proxy has too many connections open; try again shortly.",
                              "Retry-After: 1\r\n", 0);
                return;
            }
        }
        if (!up) {
            char a[INET6_ADDRSTRLEN + 16];
            log_info("%s: conn %llu: connect to %s%s failed: %s", __func__, (unsigned long long)c->id,
                     r->target.name, target_addr(&r->target, a, sizeof(a)), strerror(errno));
            worker_metrics(c->w)->upstream_connect_errors++;
            route_report(worker_routes(c->w), r->backends, &r->target, ROUTE_OUTCOME_CONNECT_FAIL);
            continue;
        }
        up_setup(c, up);
        struct timeval ct = tv_of(cfg->upstream_connect_timeout);
        bufferevent_set_timeouts(up, NULL, &ct);
        bufferevent_enable(up, EV_READ | EV_WRITE);
        set_state(c, CS_CONNECT);
        return;
    }
}

/*
 * A head written straight into space reserved at the end of an output buffer
 * (one reservation and one commit, so the buffer's callbacks run once per
 * head instead of once per piece).  The caller reserves an upper bound of
 * what it writes; a write past it is refused and head_end() reports it.
 */
struct head_out {
    struct evbuffer *buf;
    struct evbuffer_iovec v;
    char *p, *end;
    int overflow;
};

static int head_begin(struct head_out *h, struct evbuffer *buf, size_t cap)
{
    h->buf = buf;
    h->overflow = 0;
    if (evbuffer_reserve_space(buf, (ev_ssize_t)cap, &h->v, 1) != 1 || h->v.iov_len < cap)
        return -1;
    h->p = h->v.iov_base;
    h->end = h->p + h->v.iov_len;
    return 0;
}

static void head_put(struct head_out *h, const void *s, size_t n)
{
    if (n > (size_t)(h->end - h->p)) {
        h->overflow = 1;
        return;
    }
    memcpy(h->p, s, n);
    h->p += n;
}

#define HEAD_LIT(h, lit) head_put((h), (lit), sizeof(lit) - 1)

static void head_str(struct head_out *h, struct h1_str s)
{
    head_put(h, s.p, s.len);
}

/*
 * A Content-Length the message gave as a list of equal values ("5, 5") or in
 * repeated fields (H1_F_CL_LIST), written once: a recipient that takes such
 * a list as one length must forward it as one (RFC 9110 §8.6) -- a strict
 * next hop rejects the list.  Never longer than what it replaces.
 */
static void head_content_length(struct head_out *h, int64_t n, int *done)
{
    char num[24];
    if (*done)
        return;
    *done = 1;
    int k = snprintf(num, sizeof(num), "%lld", (long long)n);
    HEAD_LIT(h, "Content-Length: ");
    head_put(h, num, (size_t)k);
    HEAD_LIT(h, "\r\n");
}

/* Commits what was written; -1 (nothing committed) after an overflow. */
static int head_end(struct head_out *h)
{
    h->v.iov_len = h->overflow ? 0 : (size_t)(h->p - (char *)h->v.iov_base);
    evbuffer_commit_space(h->buf, &h->v, h->overflow ? 0 : 1);
    return h->overflow ? -1 : 0;
}

/* While a request body flows the client must keep sending and the backend
 * keep taking it (writes time out); the backend's read timeout waits for
 * the body's end (RF_REQ_DONE).  Ends an Expect: 100-continue wait. */
static void upload_timeouts(struct conn *c)
{
    struct req *r = c->req;
    const struct tg_config *cfg = cfg_of(c);
    struct timeval ut = tv_of(cfg->upstream_read_timeout);
    r->flags &= ~RF_AWAIT_100;
    bufferevent_set_timeouts(r->up, NULL, &ut);
    set_client_timeouts(c, cfg->client_body_timeout, cfg->client_body_timeout);
}

/*
 * Writes the request head to the backend and consumes it from the client
 * input.  Hop-by-hop fields go (RFC 9110 §7.6.1), X-Forwarded-* and
 * Forwarded (RFC 7239) are set from what this hop saw, Host is kept.
 */
static void send_request(struct conn *c)
{
    struct req *r = c->req;
    const struct h1_request *rq = reparse_head(c);
    if (!rq) {
        up_detach(c, 0);
        respond_local(c, 400, NULL, NULL, 1);
        return;
    }
    char ip[INET6_ADDRSTRLEN];
    peer_str(c, ip, sizeof(ip));
    size_t iplen = strlen(ip);

    /* What is added to the client's head: Host (absolute form), framing and
     * Connection lines, X-Forwarded-* and Forwarded. */
    struct head_out h;
    if (head_begin(&h, bufferevent_get_output(r->up), r->head_len + 3 * rq->host.len + 2 * iplen + 256) != 0) {
        up_detach(c, 0);
        respond_local(c, 500, NULL, NULL, 1);
        return;
    }
    /* RFC 9112 §3.2.2: an absolute-form target replaces Host; the backend
     * gets the origin form. */
    int absolute = rq->target.len > 0 && rq->target.p[0] != '/' && rq->target.p[0] != '*';
    head_str(&h, rq->method);
    HEAD_LIT(&h, " ");
    if (!absolute) {
        head_str(&h, rq->target);
    } else if (rq->path.p >= rq->target.p && rq->path.p < rq->target.p + rq->target.len) {
        head_put(&h, rq->path.p, (size_t)(rq->target.p + rq->target.len - rq->path.p));
    } else {
        const char *q = memchr(rq->target.p, '?', rq->target.len);
        HEAD_LIT(&h, "/");
        if (q)
            head_put(&h, q, (size_t)(rq->target.p + rq->target.len - q));
    }
    /* HTTP/1.0 clients get an HTTP/1.0 exchange, so the backend never answers
     * with chunked framing that they could not read. */
    if (r->flags & RF_HTTP10)
        HEAD_LIT(&h, " HTTP/1.0\r\n");
    else
        HEAD_LIT(&h, " HTTP/1.1\r\n");
    if (absolute) {
        HEAD_LIT(&h, "Host: ");
        head_str(&h, rq->host);
        HEAD_LIT(&h, "\r\n");
    }
    int cl_done = 0;
    for (size_t i = 0; i < rq->n_headers; i++) {
        const struct h1_header *hd = &rq->headers[i];
        if (absolute && (hd->kind & H1_H_HOST))
            continue;
        if ((hd->kind & H1_H_LENGTH) && (rq->flags & H1_F_CL_LIST)) {
            head_content_length(&h, rq->content_length, &cl_done);
            continue;
        }
        /* Hop-by-hop fields stop here, and the proxy sets the forwarding
         * ones itself (their underscore twins stop too); Upgrade crosses
         * when the client asked for one (WebSocket). */
        if ((hd->kind & (H1_H_HOP | H1_H_FORWARDED | H1_H_ALIAS))
            && !((r->flags & RF_UPGRADE) && (hd->kind & H1_H_UPGRADE)))
            continue;
        head_str(&h, hd->name);
        HEAD_LIT(&h, ": ");
        head_str(&h, hd->value);
        HEAD_LIT(&h, "\r\n");
    }
    if (r->req_mode == BODY_CHUNKED)
        HEAD_LIT(&h, "Transfer-Encoding: chunked\r\n");
    if (r->flags & RF_UPGRADE)
        HEAD_LIT(&h, "Connection: upgrade\r\n");
    else if (r->flags & RF_HTTP10)
        HEAD_LIT(&h, "Connection: close\r\n");
    int v6 = (c->flags & CF_V6) != 0;
    HEAD_LIT(&h, "X-Forwarded-For: ");
    head_put(&h, ip, iplen);
    HEAD_LIT(&h, "\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ");
    head_str(&h, rq->host);
    HEAD_LIT(&h, "\r\nForwarded: for=");
    if (v6)
        HEAD_LIT(&h, "\"[");
    head_put(&h, ip, iplen);
    if (v6)
        HEAD_LIT(&h, "]\"");
    HEAD_LIT(&h, ";host=\"");
    head_str(&h, rq->host);
    HEAD_LIT(&h, "\";proto=http\r\n\r\n");
    if (head_end(&h) != 0) {
        up_detach(c, 0);
        respond_local(c, 500, NULL, NULL, 1);
        return;
    }

    r->flags |= RF_HEAD_SENT;
    if (r->flags & RF_HAS_BODY)
        consume_head(c);
    else
        r->flags |= RF_REQ_DONE;
    set_state(c, CS_PROXY);

    /* While the request body flows the client must keep sending. */
    const struct tg_config *cfg = cfg_of(c);
    struct timeval ut = tv_of(cfg->upstream_read_timeout);
    if (r->flags & (RF_REQ_DONE | RF_AWAIT_100)) {
        /* The backend owes an answer (to an Expect: 100-continue, its 100
         * or a final one): its read timeout runs, the client's does not.
         * (Body bytes of a client that did not wait switch to the upload
         * timeouts in relay_request_body().) */
        bufferevent_set_timeouts(r->up, &ut, &ut);
        set_client_timeouts(c, 0, cfg->client_body_timeout);
    } else {
        upload_timeouts(c);
    }
    bev_enable_read(r->up);
    bev_enable_read(c->bev);
    if (r->flags & RF_HAS_BODY)
        relay_request_body(c);    /* flushes */
    else
        flush_now(r->up);
}

/* ---------------------------------------------------------------------- */
/* Relaying                                                               */
/*
 * Return convention of the relay functions: 0 = carry on, -1 = the request
 * finished or the connection was closed: the caller must not touch c again.
 */

static void throttle_cb(evutil_socket_t fd, short what, void *arg);

/*
 * Asks the meter how much of want may pass now.  Returns the allowance; on 0
 * the transfer is cut (RF_CUT, block) or paused with the throttle timer armed
 * (RF_THROTTLED).
 */
static size_t allowance(struct conn *c, size_t want)
{
    struct req *r = c->req;
    if (!r->mt || want == 0)
        return want;
    unsigned retry_ms = 0;
    size_t ok = meter_allow(r->mt, want, &retry_ms);
    if (ok == 0 && retry_ms > 0) {
        if (!r->timer)
            r->timer = event_new(worker_base(c->w), -1, 0, throttle_cb, c);
        if (r->timer) {
            struct timeval tv = {retry_ms / 1000, (suseconds_t)(retry_ms % 1000) * 1000};
            event_del(r->timer);
            evtimer_assign(r->timer, worker_base(c->w), throttle_cb, c);
            evtimer_add(r->timer, &tv);
            r->flags |= RF_THROTTLED;
        }
    } else if (ok == 0) {
        r->flags |= RF_CUT;
    }
    return ok;
}

/*
 * Counts how many bytes at the front of buf belong to a chunked body, up to
 * limit; *done when the body ends within them.  -1 on invalid framing.
 */
static ssize_t chunked_span(struct evbuffer *buf, struct h1_chunked *ck, size_t limit, int *done)
{
    struct evbuffer_iovec v[16];
    int n = evbuffer_peek(buf, (ev_ssize_t)limit, NULL, v, 16);
    size_t total = 0;
    *done = 0;
    if (n > 16)
        n = 16;
    for (int i = 0; i < n && total < limit; i++) {
        size_t seg = v[i].iov_len;
        if (seg > limit - total)
            seg = limit - total;
        ssize_t k = h1_chunked_feed(ck, v[i].iov_base, seg, done);
        if (k < 0)
            return -1;
        total += (size_t)k;
        if (*done || (size_t)k < seg)
            break;
    }
    return (ssize_t)total;
}

/*
 * How many bytes at the front of in may move now: limited by room, by the
 * message framing and by the tenant's allowance.  Returns the count (0 =
 * nothing now), -1 on invalid chunked framing, -2 when the tenant is cut.
 * *done when the message ends with them.
 */
static ssize_t plan_move(struct conn *c, struct evbuffer *in, size_t room, int mode, int64_t left,
                         struct h1_chunked *ck, int *done)
{
    size_t n = evbuffer_get_length(in);
    *done = 0;
    /* room (> 0: callers stop at a full output) is a soft limit: taking all
     * that the framing allows moves whole chains, where a count ending
     * inside a chain makes evbuffer_remove_buffer() copy that part.  The
     * output may pass the watermark by what one bev_gather() read, then the
     * source pauses. */
    (void)room;
    if (mode == BODY_LENGTH && (int64_t)n > left)
        n = (size_t)left;
    struct h1_chunked save;
    if (mode == BODY_CHUNKED) {
        save = *ck;
        ssize_t k = chunked_span(in, ck, n, done);
        if (k < 0)
            return -1;
        n = (size_t)k;
    }
    size_t ok = allowance(c, n);
    if (ok < n) {
        if (ok == 0 && (c->req->flags & RF_CUT))
            return -2;
        if (mode == BODY_CHUNKED) {
            /* Re-scan only what may pass so the tracker stays exact. */
            *ck = save;
            chunked_span(in, ck, ok, done);
        } else {
            *done = 0;
        }
        n = ok;
    }
    if (mode == BODY_LENGTH)
        *done = (int64_t)n == left;
    return (ssize_t)n;
}

/* Moves request body bytes client -> backend. */
static int relay_request_body(struct conn *c)
{
    struct req *r = c->req;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if ((r->flags & RF_AWAIT_100) && evbuffer_get_length(in) > 0)
        upload_timeouts(c);             /* the body has begun */
    struct evbuffer *out = bufferevent_get_output(r->up);
    size_t hwm = hwm_of(c);

    if (r->flags & RF_UP_WDEAD) {
        /* The backend takes no more: the rest of the body stays unread (the
         * connection closes after the response, lingering: finish_request). */
        bufferevent_disable(c->bev, EV_READ);
        c->flags |= CF_CLIENT_PAUSED;
        return 0;
    }
    while (!(r->flags & (RF_REQ_DONE | RF_THROTTLED)) && evbuffer_get_length(in) > 0) {
        size_t have = out_room(r->up, hwm);
        if (have >= hwm)
            break;
        int done;
        uint64_t trailer = r->req_chunk.trailer;
        ssize_t n = plan_move(c, in, hwm - have, r->req_mode, r->req_left, &r->req_chunk, &done);
        if (n == -2) {
            conn_cut(c);
            return -1;
        }
        if (n == -1) {
            worker_metrics(c->w)->bad_requests++;
            up_detach(c, 0);
            if (r->flags & RF_RESP_HEAD) {
                conn_close(c);
                return -1;
            }
            r->flags |= RF_REQ_DONE;   /* nothing more will be read */
            respond_local(c, 400, "Invalid chunked request body.", NULL, 1);
            return -1;
        }
        if (n == 0)
            break;
        /* The trailer section of a chunked request is read, counted and
         * dropped, as nginx does (RFC 9110 §6.5.1 lets a proxy discard
         * trailer fields): a field there (X-Forwarded-For, Host) would
         * otherwise reach a backend that merges trailers into the header
         * section, past the rewriting of the head.  The tracker counts the
         * section's bytes, which come last; the final CRLF is put back. */
        size_t drop = r->req_mode == BODY_CHUNKED ? (size_t)(r->req_chunk.trailer - trailer) : 0;
        if ((size_t)n > drop)
            evbuffer_remove_buffer(in, out, (size_t)n - drop);
        if (drop)
            evbuffer_drain(in, drop);
        if (done && r->req_mode == BODY_CHUNKED)
            evbuffer_add(out, "\r\n", 2);
        count_in(c, (size_t)n);
        if (r->req_mode == BODY_LENGTH)
            r->req_left -= n;
        if (done) {
            /* Now the backend owes an answer: its read timeout starts. */
            r->flags |= RF_REQ_DONE;
            const struct tg_config *cfg = cfg_of(c);
            struct timeval t = tv_of(cfg->upstream_read_timeout);
            bufferevent_set_timeouts(r->up, &t, &t);
            set_client_timeouts(c, 0, cfg->client_body_timeout);
        }
    }
    flush_now(r->up);
    /* Paused on a full output, EV_WRITE is armed and the write callback
     * resumes us; throttled, the timer does. */
    if (!(r->flags & RF_REQ_DONE) && (evbuffer_get_length(out) >= hwm || (r->flags & RF_THROTTLED))) {
        bufferevent_disable(c->bev, EV_READ);
        c->flags |= CF_CLIENT_PAUSED;
    }
    return 0;
}

/* Tunnel: moves whatever src has to dst, within the watermark and allowance. */
static int relay_tunnel(struct conn *c, struct bufferevent *src, struct bufferevent *dst, int from_client)
{
    struct evbuffer *in = bufferevent_get_input(src);
    struct evbuffer *out = bufferevent_get_output(dst);
    size_t hwm = hwm_of(c);
    while (evbuffer_get_length(in) > 0 && !(c->req->flags & RF_THROTTLED)) {
        size_t have = out_room(dst, hwm);
        if (have >= hwm)
            break;
        int done;
        ssize_t n = plan_move(c, in, hwm - have, BODY_CLOSE, 0, NULL, &done);
        if (n < 0) {
            conn_cut(c);     /* -2: the only failure of a close-delimited move */
            return -1;
        }
        if (n == 0)
            break;
        evbuffer_remove_buffer(in, out, (size_t)n);
        if (from_client)
            count_in(c, (size_t)n);
        event_base_gettimeofday_cached(worker_base(c->w), &c->last_activity);
    }
    flush_now(dst);
    if (evbuffer_get_length(out) >= hwm || (c->req->flags & RF_THROTTLED)) {
        bufferevent_disable(src, EV_READ);
        c->flags |= from_client ? CF_CLIENT_PAUSED : CF_UP_PAUSED;
    }
    return 0;
}

/*
 * Tunnel half-close, either way: once one side has closed its sending side
 * and all it sent has reached the other, pass the FIN on (shutdown SHUT_WR)
 * and keep relaying the other way until that side closes too; then the
 * tunnel ends.  Returns -1 when it ended (c is gone), else 0.
 */
static int tunnel_half_close(struct conn *c)
{
    struct req *r = c->req;
    if (!r || !r->up)
        return 0;
    int client_done = (c->flags & CF_CLIENT_EOF) && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0
                      && evbuffer_get_length(bufferevent_get_output(r->up)) == 0;
    int up_done = (c->flags & CF_UP_FIN) && evbuffer_get_length(bufferevent_get_input(r->up)) == 0
                  && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0;
    if (client_done && up_done) {
        /* Both ways closed and delivered: nothing is left unread. */
        up_detach(c, 0);
        set_state(c, CS_CLOSING);
        conn_end(c);
        return -1;
    }
    if (client_done)
        shutdown(bufferevent_getfd(r->up), SHUT_WR);
    if (up_done)
        shutdown(bufferevent_getfd(c->bev), SHUT_WR);
    return 0;
}

/* "HTTP/1.x NNN reason" CRLF: the client's version, the backend's status. */
static void head_status_line(struct head_out *h, const struct h1_response *rs, int http10)
{
    char line[16] = "HTTP/1.1 000 ";
    if (http10)
        line[7] = '0';
    line[9] = (char)('0' + rs->status / 100 % 10);
    line[10] = (char)('0' + rs->status / 10 % 10);
    line[11] = (char)('0' + rs->status % 10);
    head_put(h, line, 13);
    head_str(h, rs->reason);
    HEAD_LIT(h, "\r\n");
}

/* Writes an interim (1xx) response head for the client: its fields but the
 * hop-by-hop ones (RFC 9110 §7.6.1, §15.2) and Content-Length, which a 1xx
 * must not carry (§8.6): a client that honoured it would take the next
 * head's first bytes for a body (nginx 1.22 does).  0, or -1 (out of memory). */
static int send_interim_head(struct conn *c, const struct h1_response *rs)
{
    size_t cap = 32 + rs->reason.len;
    for (size_t i = 0; i < rs->n_headers; i++)
        cap += rs->headers[i].name.len + rs->headers[i].value.len + 4;
    struct head_out h;
    if (head_begin(&h, bufferevent_get_output(c->bev), cap) != 0)
        return -1;
    head_status_line(&h, rs, 0);
    for (size_t i = 0; i < rs->n_headers; i++) {
        const struct h1_header *hd = &rs->headers[i];
        if (hd->kind & (H1_H_HOP | H1_H_LENGTH))
            continue;
        head_str(&h, hd->name);
        HEAD_LIT(&h, ": ");
        head_str(&h, hd->value);
        HEAD_LIT(&h, "\r\n");
    }
    HEAD_LIT(&h, "\r\n");
    return head_end(&h);
}

/* Builds the client's response head from the backend's.  0, or -1 when it
 * could not be written (out of memory). */
static int send_response_head(struct conn *c, const struct h1_response *rs)
{
    struct req *r = c->req;
    int upgrade = rs->status == 101;

    size_t cap = 192 + rs->reason.len;
    for (size_t i = 0; i < rs->n_headers; i++)
        cap += rs->headers[i].name.len + rs->headers[i].value.len + 4;
    struct head_out h;
    if (head_begin(&h, bufferevent_get_output(c->bev), cap) != 0)
        return -1;
    head_status_line(&h, rs, (r->flags & RF_HTTP10) != 0);
    /* RFC 9110 §6.6.1: a response forwarded without a Date gets one, the
     * time it was received (nginx always sends its own). */
    if (!(rs->flags & H1_F_HAS_DATE) && !upgrade) {
        const char *date = http_date();
        HEAD_LIT(&h, "Date: ");
        head_put(&h, date, strlen(date));
        HEAD_LIT(&h, "\r\n");
    }
    int cl_done = 0;
    for (size_t i = 0; i < rs->n_headers; i++) {
        const struct h1_header *hd = &rs->headers[i];
        if ((hd->kind & H1_H_HOP) && !(upgrade && (hd->kind & H1_H_UPGRADE)))
            continue;
        /* A 204 or 101 has no content: a sender MUST NOT send
         * Content-Length with it (RFC 9110 §8.6); nginx drops it too.  (A
         * 304's may stay: it tells the selected representation's length.) */
        if ((hd->kind & H1_H_LENGTH) && (rs->status == 204 || upgrade))
            continue;
        if ((hd->kind & H1_H_LENGTH) && (rs->flags & H1_F_CL_LIST)) {
            head_content_length(&h, rs->content_length, &cl_done);
            continue;
        }
        head_str(&h, hd->name);
        HEAD_LIT(&h, ": ");
        head_str(&h, hd->value);
        HEAD_LIT(&h, "\r\n");
    }
    if (upgrade) {
        HEAD_LIT(&h, "Connection: upgrade\r\n");
    } else {
        if (r->resp_mode == BODY_CHUNKED || r->resp_mode == BODY_RECHUNK)
            HEAD_LIT(&h, "Transfer-Encoding: chunked\r\n");
        if (r->resp_mode == BODY_CLOSE || r->resp_mode == BODY_DECHUNK || worker_draining(c->w))
            c->flags |= CF_CLOSE_AFTER;
        /* An answer that comes before the request body has all arrived: the
         * connection ends after it (what is left of the body, if it is still
         * unread then, goes to a lingering close), and saying so lets the
         * client stop sending a body nobody waits for (RFC 9112 §9.6; §9.3
         * asks a client to watch for such an answer). */
        if ((r->flags & RF_HAS_BODY) && !(r->flags & RF_REQ_DONE))
            c->flags |= CF_CLOSE_AFTER;
        if (c->flags & CF_CLOSE_AFTER)
            HEAD_LIT(&h, "Connection: close\r\n");
        else if (r->flags & RF_HTTP10)
            HEAD_LIT(&h, "Connection: keep-alive\r\n");
    }
    HEAD_LIT(&h, "\r\n");
    return head_end(&h);
}

/*
 * Interim responses one request may have.  RFC 9110 §15.2 sets no limit, but
 * a real one sends a 100 Continue and a 103 or two; a backend that streams
 * them without end is broken (502), and would otherwise hold the exchange
 * open past every timeout, as each head restarts the read timeout.
 */
#define MAX_INTERIM 32

/*
 * Reads response heads from the backend: forwards 1xx interim responses,
 * then the final head.  Returns 1 when the final head was handled, 0 when
 * more bytes are needed (or the client must first take the interim heads
 * queued for it: backend reads pause, client_write_cb() resumes them), -1
 * when c was closed or answered.
 */
static int read_response_head(struct conn *c)
{
    struct req *r = c->req;
    struct evbuffer *in = bufferevent_get_input(r->up);
    const struct tg_config *cfg = cfg_of(c);
    for (;;) {
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            return 0;
        if (r->interims && out_room(c->bev, hwm_of(c)) >= hwm_of(c)) {
            /* A client that does not read its interim heads holds no more
             * than the watermark: the backend waits, as for a body. */
            bufferevent_disable(r->up, EV_READ);
            c->flags |= CF_UP_PAUSED;
            return 0;
        }
        size_t look = avail < cfg->max_header_size + 4 ? avail : cfg->max_header_size + 4;
        unsigned char *buf = evbuffer_pullup(in, (ev_ssize_t)look);
        ssize_t hl = h1_find_head_end((const char *)buf, look, &r->resp_scanned, cfg->max_header_size);
        if (hl == 0)
            return 0;
        struct h1_response rs;
        if (hl < 0 || h1_parse_response((const char *)buf, (size_t)hl, &rs) != 0) {
            log_warn("%s: conn %llu: invalid response head from %s", __func__, (unsigned long long)c->id,
                     r->target.name);
            route_report(worker_routes(c->w), r->backends, &r->target, ROUTE_OUTCOME_FAILED);
            up_detach(c, 0);
            respond_local(c, 502, "The backend sent an invalid response.", NULL, 1);
            return -1;
        }
        r->resp_scanned = 0;
        if (rs.status >= 100 && rs.status < 200 && rs.status != 101) {
            /* Interim response (100 Continue, 103 Early Hints): pass it on to
             * HTTP/1.1 clients (RFC 9110 §15.2), drop it for HTTP/1.0 ones. */
            if (++r->interims > MAX_INTERIM) {
                log_warn("%s: conn %llu: %s sent more than %d interim responses", __func__,
                         (unsigned long long)c->id, r->target.name, MAX_INTERIM);
                route_report(worker_routes(c->w), r->backends, &r->target, ROUTE_OUTCOME_FAILED);
                up_detach(c, 0);
                respond_local(c, 502, "The backend sent too many interim responses.", NULL, 1);
                return -1;
            }
            if (!(r->flags & RF_HTTP10) && send_interim_head(c, &rs) != 0) {
                conn_close(c);
                return -1;
            }
            evbuffer_drain(in, (size_t)hl);
            flush_now(c->bev);
            if (rs.status == 100 && (r->flags & RF_AWAIT_100) && !(r->flags & RF_REQ_DONE))
                upload_timeouts(c);     /* now the client owes its body */
            continue;
        }
        r->status = rs.status;
        if (evutil_timerisset(&r->up_start))
            evutil_gettimeofday(&r->up_head, NULL);
        if (rs.status == 101) {
            /* Only a switch the client asked for, and one that says what it
             * switches to (RFC 9110 §7.8: Connection: upgrade and Upgrade):
             * a bare 101 -- a backend path that reflects a status code --
             * must not make the client's connection a pipe past routing. */
            if (!(r->flags & RF_UPGRADE) || !(rs.flags & H1_F_UPGRADE)) {
                up_detach(c, 0);
                respond_local(c, 502, "The backend switched protocols without being asked.", NULL, 1);
                return -1;
            }
            /* ... and only to a protocol the client offered (RFC 9110
             * §7.8), as Go's ReverseProxy checks: a client that asked for
             * a WebSocket is not handed some other protocol's pipe. */
            struct h1_str asked = { r->upgrade, strlen(r->upgrade) };
            if (!h1_upgrade_matches(asked, rs.upgrade)) {
                up_detach(c, 0);
                respond_local(c, 502, "The backend switched to a protocol the client did not ask for.", NULL, 1);
                return -1;
            }
            if (send_response_head(c, &rs) != 0) {
                conn_close(c);
                return -1;
            }
            evbuffer_drain(in, (size_t)hl);
            flush_now(c->bev);
            r->flags |= RF_RESP_HEAD | RF_REQ_DONE;
            worker_metrics(c->w)->websocket_upgrades++;
            set_state(c, CS_TUNNEL);
            struct timeval it = tv_of(cfg->upstream_read_timeout);
            bufferevent_set_timeouts(r->up, &it, &it);
            set_client_timeouts(c, cfg->upstream_read_timeout, cfg->upstream_read_timeout);
            event_base_gettimeofday_cached(worker_base(c->w), &c->last_activity);
            bufferevent_enable(c->bev, EV_READ);
            route_report(worker_routes(c->w), r->backends, &r->target, ROUTE_OUTCOME_OK);
            return 1;
        }
        /* RFC 9112 §6.3: the response body length. */
        if ((r->flags & RF_METHOD_HEAD) || rs.status == 204 || rs.status == 304) {
            r->resp_mode = BODY_NONE;
        } else if (rs.flags & H1_F_CHUNKED) {
            /* RFC 9112 §7: an HTTP/1.0 recipient cannot read chunked. */
            r->resp_mode = (r->flags & RF_HTTP10) ? BODY_DECHUNK : BODY_CHUNKED;
            h1_chunked_init(&r->resp_chunk);
        } else if (rs.flags & H1_F_HAS_CL) {
            r->resp_mode = rs.content_length > 0 ? BODY_LENGTH : BODY_NONE;
            r->resp_left = rs.content_length;
        } else {
            /* Close-delimited (an HTTP/1.0 backend, or one that closes to
             * end a stream): an HTTP/1.1 client gets it chunked, as from
             * nginx, so that its connection lives on and a body the
             * backend breaks off (reset, timeout) shows as cut -- the
             * last chunk never comes -- rather than as complete. */
            r->resp_mode = (r->flags & RF_HTTP10) ? BODY_CLOSE : BODY_RECHUNK;
            r->credit = 0;
        }
        if (!(rs.flags & H1_F_CONN_CLOSE) && (rs.minor == 1 || (rs.flags & H1_F_CONN_KEEPALIVE))
            && !(r->flags & RF_HTTP10) && r->resp_mode != BODY_CLOSE && r->resp_mode != BODY_RECHUNK)
            r->flags |= RF_UP_KEEPALIVE;
        if (send_response_head(c, &rs) != 0) {
            conn_close(c);
            return -1;
        }
        evbuffer_drain(in, (size_t)hl);
        r->flags |= RF_RESP_HEAD;
        if (r->resp_mode == BODY_NONE)
            r->flags |= RF_RESP_DONE;
        route_report(worker_routes(c->w), r->backends, &r->target, ROUTE_OUTCOME_OK);
        return 1;
    }
}

/*
 * BODY_DECHUNK: how many bytes at the front of in to handle next and whether
 * they are data (*is_data) or framing (consumed here, one byte at a time;
 * framing is a few bytes per chunk).  -1 on invalid framing.
 */
static ssize_t dechunk_step(struct req *r, struct evbuffer *in, size_t room, int *is_data, int *done)
{
    size_t left = h1_chunked_data_left(&r->resp_chunk);
    *done = 0;
    if (left > 0) {
        size_t n = evbuffer_get_length(in);
        if (n > left)
            n = left;
        if (n > room)
            n = room;
        *is_data = 1;
        return (ssize_t)n;
    }
    *is_data = 0;
    char ch;
    if (evbuffer_copyout(in, &ch, 1) != 1)
        return 0;
    if (h1_chunked_feed(&r->resp_chunk, &ch, 1, done) != 1)
        return -1;
    evbuffer_drain(in, 1);
    return 1;
}

/* ---------------------------------------------------------------------- */
/* Splicing                                                               */
/*
 * The rest of a long Content-Length response body moves backend -> pipe ->
 * client inside the kernel (proxy/splice.c), never copied through the
 * process.  The backend's read event and the client's write event are
 * diverted to the pump (bev_divert), keeping their timeouts: the upstream
 * read timeout and the client write timeout work as on the copying path.
 * Everything else is as on that path: bytes are counted as the client's
 * socket takes them, the tenant's allowance is asked before they go, and
 * at most the pipe's size (the direction's buffer budget) is held.
 */

/* Pump rounds per event (each: empty the pipe to the client, refill it from
 * the backend), so that one busy connection cannot starve the others: with
 * 8 rounds of a 128 KiB pipe a wake-up could move a whole 1 MiB response
 * while other clients waited, and p99 over 8 concurrent 1 MiB downloads was
 * 1.0-1.2x nginx's; with 2 it is 0.74-0.78x (bench/http1-vs-nginx.sh, same
 * CPU per request).  1 round measured no better than 2. */
#define SPLICE_ROUNDS 2

static void splice_event_cb(evutil_socket_t fd, short what, void *arg);

/*
 * May the rest of this response move by splice?  A plain client socket and
 * a Content-Length body with at least splice-min-body bytes still to come
 * from the backend's socket.
 */
static int splice_wanted(struct conn *c)
{
    struct req *r = c->req;
    size_t min = cfg_of(c)->splice_min_body;
    if (min == 0 || !(c->flags & CF_PLAIN) || r->resp_mode != BODY_LENGTH
        || (r->flags & (RF_RESP_DONE | RF_UP_EOF | RF_SPLICE | RF_NO_SPLICE | RF_THROTTLED | RF_CUT)))
        return 0;
    size_t buffered = evbuffer_get_length(bufferevent_get_input(r->up));
    return r->resp_left - (int64_t)buffered >= (int64_t)min;
}

/* Takes a pipe and diverts the events; 0, or -1: stay on the copying path. */
static int splice_begin(struct conn *c)
{
    struct req *r = c->req;
    /* A pipe holds what the direction's buffer would (splice.c caps it). */
    if (splice_pipe_get(&r->pipe, hwm_of(c)) != 0) {
        log_debug("%s: conn %llu: no pipe (%s), copying", __func__, (unsigned long long)c->id, strerror(errno));
        r->flags |= RF_NO_SPLICE;
        return -1;
    }
    r->flags |= RF_SPLICE;
    r->pipe_ok = 0;
    bev_divert(r->up, EV_READ, splice_event_cb);
    bev_divert(c->bev, EV_WRITE, splice_event_cb);
    return 0;
}

/* Gives the events back and the pipe (closed if bytes are left in it). */
static void splice_end(struct conn *c)
{
    struct req *r = c->req;
    if (!r || !(r->flags & RF_SPLICE))
        return;
    r->flags &= ~RF_SPLICE;
    splice_pipe_put(&r->pipe);
    if (r->up)
        bev_undivert(r->up, EV_READ);
    if (c->bev) {
        if (bufferevent_get_enabled(c->bev) & EV_WRITE)
            bufferevent_disable(c->bev, EV_WRITE);
        bev_undivert(c->bev, EV_WRITE);
    }
}

/*
 * Moves body bytes backend -> pipe -> client as far as both sockets and
 * the allowance let them, then arms what it waits for: the backend's read
 * event while the client keeps up, the client's write event while allowed
 * bytes wait in the pipe, or the throttle timer.  A full pipe and an empty
 * backend socket both make splice_fill() say EAGAIN; the backend is read
 * only while the client is not blocked, when the pipe has just been
 * emptied, so EAGAIN then means an empty socket — or an urgent (TCP OOB)
 * mark, where splice(2) stops for good (EAGAIN, or 0 when a FIN follows)
 * while epoll keeps saying readable.  After a read wake-up that spliced
 * nothing (readable), and on 0, the mark is checked (splice_stalled); at
 * the mark the pipe is emptied and the rest of the body is copied (readv
 * steps over the mark).
 */
static int splice_pump(struct conn *c, int readable)
{
    struct req *r = c->req;
    struct splice_pipe *p = &r->pipe;
    int up_fd = bufferevent_getfd(r->up);
    int blocked = 0;
    for (int round = 0; round < SPLICE_ROUNDS; round++) {
        int moved = 0;
        if (r->pipe_ok > 0) {
            ssize_t n = splice_drain(p, c->fd, r->pipe_ok);
            if (n > 0) {
                r->pipe_ok -= (size_t)n;
                count_out(c, (size_t)n);
                worker_metrics(c->w)->bytes_spliced += (size_t)n;
                moved = 1;
            } else if (errno == EAGAIN || errno == EINTR) {
                blocked = 1;
            } else {
                log_info("%s: conn %llu: client write failed: %s", __func__, (unsigned long long)c->id,
                         strerror(errno));
                conn_close(c);
                return -1;
            }
        }
        if (r->resp_left > 0 && !blocked && !(r->flags & (RF_THROTTLED | RF_UP_EOF | RF_NO_SPLICE | RF_CUT))) {
            ssize_t n = splice_fill(p, up_fd, (size_t)r->resp_left);
            int err = errno;
            if (n > 0) {
                r->resp_left -= n;
                moved = 1;
            } else if ((n == 0 || (err == EAGAIN && readable)) && splice_stalled(up_fd)) {
                log_info("%s: conn %llu: splice stopped at urgent data from %s, copying the rest", __func__,
                         (unsigned long long)c->id, r->target.name);
                r->flags |= RF_NO_SPLICE;
                moved = 1;
            } else if (n == 0 || (err != EAGAIN && err != EINTR)) {
                /* The body is cut short; what the backend did send is
                 * still delivered, then the client's connection closes. */
                if (n < 0)   /* counted as a reset when the pipe is out (below) */
                    route_report(worker_routes(c->w), r->backends, &r->target, ROUTE_OUTCOME_ERROR);
                r->flags |= RF_UP_EOF;
                r->flags &= ~RF_UP_KEEPALIVE;
                moved = 1;
            }
            readable = 0;   /* only the first fill after the wake-up tells */
        }
        if ((r->flags & RF_NO_SPLICE) && p->len == 0) {
            /* Back to copying: the backend's reads are bev.c's again. */
            splice_end(c);
            bufferevent_set_max_single_read(r->up, BEV_READ_CHUNK);
            c->flags &= ~CF_UP_PAUSED;
            bev_enable_read(r->up);
            return 0;
        }
        if (p->len > r->pipe_ok && !(r->flags & (RF_THROTTLED | RF_CUT))) {
            size_t ok = allowance(c, p->len - r->pipe_ok);
            r->pipe_ok += ok;
        }
        if ((r->flags & RF_CUT) && r->pipe_ok == 0) {
            /* Cut at the cap once the granted bytes have left the pipe (a
             * blocked client still gets them, as on the copying path). */
            conn_cut(c);
            return -1;
        }
        if (r->resp_left == 0 && p->len == 0) {
            splice_end(c);
            r->flags |= RF_RESP_DONE;
            finish_request(c);
            return -1;
        }
        if ((r->flags & RF_UP_EOF) && p->len == 0) {
            log_info("%s: conn %llu: backend %s closed mid-response", __func__, (unsigned long long)c->id,
                     r->target.name);
            worker_metrics(c->w)->upstream_resets++;
            conn_cut(c);
            return -1;
        }
        if (!moved)
            break;
    }
    if (r->resp_left > 0 && !blocked && !(r->flags & (RF_THROTTLED | RF_UP_EOF | RF_NO_SPLICE | RF_CUT))) {
        c->flags &= ~CF_UP_PAUSED;
        bev_enable_read(r->up);
    } else if (!(c->flags & CF_UP_PAUSED)) {
        bufferevent_disable(r->up, EV_READ);
        c->flags |= CF_UP_PAUSED;
    }
    int writing = (bufferevent_get_enabled(c->bev) & EV_WRITE) != 0;
    if (r->pipe_ok > 0 && !writing)
        bufferevent_enable(c->bev, EV_WRITE);
    else if (r->pipe_ok == 0 && writing)
        bufferevent_disable(c->bev, EV_WRITE);
    return 0;
}

/* The conn of a bufferevent whose event was diverted (its callbacks' argument). */
static struct conn *conn_of(struct bufferevent *bev)
{
    void *arg = NULL;
    bufferevent_getcb(bev, NULL, NULL, NULL, &arg);
    return arg;
}

/* The backend's read event and the client's write event while splicing. */
static void splice_event_cb(evutil_socket_t fd, short what, void *arg)
{
    struct bufferevent *bev = arg;
    struct conn *c = conn_of(bev);
    (void)fd;
    if (what != EV_TIMEOUT) {
        splice_pump(c, bev != c->bev);
    } else if (bev == c->bev) {
        bufferevent_disable(bev, EV_WRITE);
        client_event_cb(bev, BEV_EVENT_WRITING | BEV_EVENT_TIMEOUT, c);
    } else {
        bufferevent_disable(bev, EV_READ);
        up_event_cb(bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, c);
    }
}

/* Hex digits of n: at least one. */
static unsigned hex_digits(size_t n)
{
    unsigned k = 1;
    while (n >>= 4)
        k++;
    return k;
}

/* A chunk's framing when its size is written in w hex digits: "<size>\r\n" and "\r\n". */
#define CHUNK_FRAMING(w) ((size_t)(w) + 4)

/*
 * BODY_RECHUNK: moves what in holds, up to room bytes (and the framing, a
 * few bytes over it), to out as one chunk.  Its framing is billed with it (CONTRACT "Metered
 * bytes"), so it is asked of the allowance too, and a partial grant becomes
 * a chunk that uses it exactly: its size is written in as many digits as
 * the grant's (leading zeros are a valid chunk-size, RFC 9112 §7.1), and a
 * grant too small for any chunk (under 6 bytes) waits in r->credit for the
 * next (at the cap, it goes unused: the cut comes up to 5 bytes short of the
 * budget, docs/metering.md).  Returns the data bytes moved, 0 when none can move now (throttled:
 * the timer resumes), -2 at the cap, -1 out of memory.
 */
static ssize_t rechunk_move(struct conn *c, struct evbuffer *in, struct evbuffer *out, size_t room)
{
    struct req *r = c->req;
    size_t len = evbuffer_get_length(in);
    if (len > room)
        len = room;
    size_t want = len + CHUNK_FRAMING(hex_digits(len));
    size_t have = r->credit, ok;
    do
        have += ok = allowance(c, want - have);
    while (ok > 0 && have < CHUNK_FRAMING(1) + 1);
    if (have < CHUNK_FRAMING(1) + 1) {
        r->credit = (unsigned char)have;
        return (r->flags & RF_CUT) ? -2 : 0;
    }
    r->credit = 0;
    unsigned w = hex_digits(have == want ? len : have);
    size_t n = have - CHUNK_FRAMING(w);
    char size[CHUNK_FRAMING(16)];
    for (unsigned i = 0; i < w; i++)
        size[i] = "0123456789abcdef"[(n >> (4 * (w - 1 - i))) & 15];
    size[w] = '\r';
    size[w + 1] = '\n';
    if (evbuffer_add(out, size, w + 2) != 0 || evbuffer_remove_buffer(in, out, n) != (int)n
        || evbuffer_add(out, "\r\n", 2) != 0)
        return -1;
    return (ssize_t)n;
}

/* Moves response body bytes backend -> client. */
static int relay_response_body(struct conn *c)
{
    struct req *r = c->req;
    if (r->flags & RF_SPLICE)
        return splice_pump(c, 0);
    struct evbuffer *in = bufferevent_get_input(r->up);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t hwm = hwm_of(c);

    while (!(r->flags & (RF_RESP_DONE | RF_THROTTLED)) && evbuffer_get_length(in) > 0) {
        size_t have = out_room(c->bev, hwm);
        if (have >= hwm)
            break;
        int done;
        ssize_t n;
        if (r->resp_mode == BODY_DECHUNK) {
            int is_data;
            n = dechunk_step(r, in, hwm - have, &is_data, &done);
            if (n > 0 && !is_data) {
                if (done)
                    r->flags |= RF_RESP_DONE;
                continue;
            }
            if (n > 0) {
                size_t ok = allowance(c, (size_t)n);
                if (ok == 0 && (r->flags & RF_CUT))
                    n = -2;
                else if (ok == 0)
                    break;
                else {
                    int d2;
                    n = (ssize_t)ok;
                    struct evbuffer_iovec v[16];
                    int k = evbuffer_peek(in, n, NULL, v, 16);
                    size_t fed = 0;
                    for (int i = 0; i < k && i < 16 && fed < (size_t)n; i++) {
                        size_t seg = v[i].iov_len < (size_t)n - fed ? v[i].iov_len : (size_t)n - fed;
                        h1_chunked_feed(&r->resp_chunk, v[i].iov_base, seg, &d2);
                        fed += seg;
                    }
                    evbuffer_remove_buffer(in, out, (size_t)n);
                    continue;
                }
            }
        } else if (r->resp_mode == BODY_RECHUNK) {
            n = rechunk_move(c, in, out, hwm - have);
            if (n > 0)
                continue;
        } else {
            n = plan_move(c, in, hwm - have, r->resp_mode, r->resp_left, &r->resp_chunk, &done);
        }
        if (n == -2) {
            conn_cut(c);
            return -1;
        }
        if (n < 0) {
            if (r->resp_mode == BODY_RECHUNK)
                log_warn("%s: conn %llu: out of memory", __func__, (unsigned long long)c->id);
            else
                log_warn("%s: conn %llu: invalid chunked body from %s", __func__, (unsigned long long)c->id,
                         r->target.name);
            conn_close(c);
            return -1;
        }
        if (n == 0)
            break;
        evbuffer_remove_buffer(in, out, (size_t)n);
        if (r->resp_mode == BODY_LENGTH)
            r->resp_left -= n;
        if (done)
            r->flags |= RF_RESP_DONE;
    }
    flush_now(c->bev);
    /* Bytes go out in order: the copying path hands over to splicing when
     * both buffers are empty. */
    if (evbuffer_get_length(in) == 0 && evbuffer_get_length(out) == 0 && splice_wanted(c) && splice_begin(c) == 0)
        return splice_pump(c, 0);
    if ((r->flags & RF_UP_EOF) && !(r->flags & RF_RESP_DONE) && evbuffer_get_length(in) == 0) {
        /* Everything the backend sent has been relayed. */
        if (r->resp_mode == BODY_DECHUNK) {
            /* The HTTP/1.0 client reads to the close, so it cannot tell this
             * body was cut (RFC 9112 §8).  A reset would tell it, but would
             * also throw away what its kernel holds unread -- bytes already
             * billed -- so it gets every byte and the usual close, as from
             * nginx; the log says what happened. */
            log_info("%s: conn %llu: backend %s cut a chunked body short (HTTP/1.0 client: closing)", __func__,
                     (unsigned long long)c->id, r->target.name);
            worker_metrics(c->w)->upstream_resets++;
        } else if (r->resp_mode == BODY_RECHUNK) {
            /* The close ends the body: the last chunk says so.  Its 5 bytes
             * are billed as a head's are, past the allowance (r->credit, if
             * any, covers some: it is reserved already). */
            if (evbuffer_add(out, "0\r\n\r\n", 5) != 0) {
                conn_close(c);
                return -1;
            }
            flush_now(c->bev);
        } else if (r->resp_mode != BODY_CLOSE) {
            log_info("%s: conn %llu: backend %s closed mid-response", __func__, (unsigned long long)c->id,
                     r->target.name);
            worker_metrics(c->w)->upstream_resets++;
            conn_cut(c);
            return -1;
        }
        r->flags |= RF_RESP_DONE;
    }
    /* A full client buffer (EV_WRITE armed: the write callback resumes us)
     * or a throttled tenant (the timer does): stop reading the backend so
     * that nothing piles up in our input buffer either.  After the backend's
     * EOF too, while bytes it sent wait: CF_UP_PAUSED is what has the write
     * callback resume the relay. */
    if (!(r->flags & RF_RESP_DONE) && (!(r->flags & RF_UP_EOF) || evbuffer_get_length(in) > 0)
        && (evbuffer_get_length(out) >= hwm || (r->flags & RF_THROTTLED))) {
        bufferevent_disable(r->up, EV_READ);
        c->flags |= CF_UP_PAUSED;
    }
    if ((r->flags & RF_RESP_DONE) && evbuffer_get_length(in) > 0) {
        /* Bytes past the end of the response (RFC 9112 §6.3 framed it):
         * they answer nothing, and only mean that this connection cannot
         * be reused.  It is dropped at once, so that a backend that goes on
         * sending leaves nothing to pile up while the client still reads
         * the response (the backend read stays on after the response to
         * notice a close or such bytes; this bounds them to one read). */
        log_info("%s: conn %llu: backend %s sent bytes after the response; not reusing the connection",
                 __func__, (unsigned long long)c->id, r->target.name);
        up_detach(c, 0);
    }
    if ((r->flags & RF_RESP_DONE) && evbuffer_get_length(out) == 0) {
        finish_request(c);
        return -1;
    }
    return 0;
}

static void throttle_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct req *r = c->req;
    if (!r)
        return;
    r->flags &= ~RF_THROTTLED;
    /* The two directions take turns at going first: the first may take
     * every token, and a duplex stream (a WebSocket, an upload beside its
     * download) must not see one way starved (it got 1-4% of the rate). */
    int down_first = (r->flags & RF_THR_DOWN_1ST) != 0;
    r->flags ^= RF_THR_DOWN_1ST;
    if (c->state == CS_TUNNEL) {
        c->flags &= ~(CF_CLIENT_PAUSED | CF_UP_PAUSED);
        if (down_first ? relay_tunnel(c, r->up, c->bev, 0) < 0 || relay_tunnel(c, c->bev, r->up, 1) < 0
                       : relay_tunnel(c, c->bev, r->up, 1) < 0 || relay_tunnel(c, r->up, c->bev, 0) < 0)
            return;
        if (!(c->flags & (CF_CLIENT_PAUSED | CF_CLIENT_EOF)))
            bufferevent_enable(c->bev, EV_READ);
        if (!(c->flags & (CF_UP_PAUSED | CF_UP_FIN)))
            bufferevent_enable(r->up, EV_READ);
        tunnel_half_close(c);
        return;
    }
    for (int turn = 0; turn < 2; turn++) {
        if ((turn == 0) != down_first && r->up && !(r->flags & RF_REQ_DONE) && (r->flags & RF_HEAD_SENT)) {
            c->flags &= ~CF_CLIENT_PAUSED;
            if (relay_request_body(c) < 0)
                return;
            if (!(c->flags & CF_CLIENT_PAUSED))
                bufferevent_enable(c->bev, EV_READ);
        }
        if ((turn == 0) == down_first && r->up && (r->flags & RF_RESP_HEAD)) {
            c->flags &= ~CF_UP_PAUSED;
            if (relay_response_body(c) < 0)
                return;
            if (!(c->flags & CF_UP_PAUSED) && !(r->flags & RF_UP_EOF) && r->up)
                bufferevent_enable(r->up, EV_READ);
        }
    }
}

/*
 * The response is fully written: release the backend connection, log, and
 * go back to reading the next request (or close).  c may be gone after.
 */
static void finish_request(struct conn *c)
{
    struct req *r = c->req;
    if (!r)
        return;
    /* A connection picked under an older configuration is not pooled: a
     * reload empties the pool (server.c), and the new routes may have
     * dropped its backend. */
    int reusable = (r->flags & RF_UP_KEEPALIVE) && (r->flags & RF_REQ_DONE) && (r->flags & RF_RESP_DONE)
                   && r->up && evbuffer_get_length(bufferevent_get_input(r->up)) == 0
                   && r->target_cfg == worker_config_id(c->w);
    up_detach(c, reusable);
    consume_head(c);
    if (!(r->flags & RF_REQ_DONE))
        c->flags |= CF_CLOSE_AFTER | CF_UNREAD;
    log_request(c, r);
    c->req = NULL;
    req_free(r);
    if ((c->flags & CF_CLOSE_AFTER) || worker_draining(c->w)) {
        conn_end(c);
        return;
    }
    set_state(c, CS_HEAD);
    c->flags &= ~(CF_CLIENT_PAUSED | CF_UP_PAUSED);
    bev_enable_read(c->bev);
    conn_process(c);
}

/* ---------------------------------------------------------------------- */
/* Callbacks                                                              */

/* A read in bev_gather() met EOF or an error: report it like the bufferevent would. */
static void gathered_event(struct conn *c, struct bufferevent *bev, short ev, int client_side)
{
    bufferevent_disable(bev, EV_READ);
    if (client_side)
        client_event_cb(bev, ev, c);
    else
        up_event_cb(bev, ev, c);
}

static void client_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct req *r = c->req;
    switch ((enum conn_state)c->state) {
    case CS_HEAD:
        conn_process(c);
        return;
    case CS_PROXY:
        if (r && r->up && (r->flags & RF_HEAD_SENT) && !(r->flags & RF_REQ_DONE)) {
            short ev = (r->flags & RF_THROTTLED) || (c->flags & CF_CLIENT_PAUSED) ? 0 : bev_gather(bev, hwm_of(c));
            if (relay_request_body(c) < 0)
                return;
            if (ev)
                gathered_event(c, bev, ev, 1);
            return;
        }
        break;
    case CS_TUNNEL: {
        short ev = (r->flags & RF_THROTTLED) || (c->flags & (CF_CLIENT_PAUSED | CF_CLIENT_EOF))
                       ? 0 : bev_gather(bev, hwm_of(c));
        if (relay_tunnel(c, c->bev, r->up, 1) < 0)
            return;
        if (ev)
            gathered_event(c, bev, ev, 1);
        return;
    }
    default:
        break;
    }
    /* Pipelined bytes wait in the buffer until the current request is done
     * (finish_request() reads again): up to a head and one read more. */
    if (evbuffer_get_length(bufferevent_get_input(bev)) >= cfg_of(c)->max_header_size + BEV_READ_HEAD)
        bufferevent_disable(bev, EV_READ);
}

static void client_write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct req *r = c->req;
    size_t left = evbuffer_get_length(bufferevent_get_output(bev));
    if (left == 0)
        bufferevent_disable(bev, EV_WRITE);   /* back to direct writes (flush_now) */
    switch ((enum conn_state)c->state) {
    case CS_CLOSING:
        if (left == 0)
            conn_end(c);
        return;
    case CS_LOCAL:
        if (left == 0)
            finish_request(c);
        return;
    case CS_TUNNEL:
        if (c->flags & CF_UP_PAUSED) {
            c->flags &= ~CF_UP_PAUSED;
            if (relay_tunnel(c, r->up, c->bev, 0) < 0)
                return;
            if (!(c->flags & (CF_UP_PAUSED | CF_UP_FIN)))
                bufferevent_enable(r->up, EV_READ);
        }
        if (c->flags & CF_UP_FIN)
            tunnel_half_close(c);   /* the FIN follows the last byte */
        return;
    case CS_PROXY:
        if (r && (c->flags & CF_UP_PAUSED) && r->up && !(r->flags & RF_RESP_HEAD)) {
            /* Interim heads went out (read_response_head() paused): read on. */
            c->flags &= ~CF_UP_PAUSED;
            bufferevent_enable(r->up, EV_READ);
            up_read_cb(r->up, c);   /* c may be gone after */
            return;
        }
        if (r && (c->flags & CF_UP_PAUSED) && r->up) {
            c->flags &= ~CF_UP_PAUSED;
            if (relay_response_body(c) < 0)
                return;
            if (!(c->flags & CF_UP_PAUSED) && !(r->flags & RF_UP_EOF) && r->up)
                bufferevent_enable(r->up, EV_READ);
            return;
        }
        if (r && (r->flags & RF_RESP_DONE) && left == 0)
            finish_request(c);
        return;
    default:
        return;
    }
}

/*
 * A tunnel side timed out.  The tunnel is idle only if neither side moved a
 * byte within the timeout (a WebSocket may talk one way for hours): when the
 * other side did, re-arm this one and return 1.
 */
static int tunnel_rearm(struct conn *c, struct bufferevent *bev, short what)
{
    struct timeval now, d;
    event_base_gettimeofday_cached(worker_base(c->w), &now);
    /* Bytes waiting for a peer that takes them, however slowly, are bytes
     * moving (see bev_peer_acked_more()). */
    struct bufferevent *up = c->req->up;
    int moving = 0;
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
        moving |= bev_peer_acked_more(c->bev, &c->acked);
    if (up && evbuffer_get_length(bufferevent_get_output(up)) > 0)
        moving |= bev_peer_acked_more(up, &c->req->up_acked);
    if (moving)
        c->last_activity = now;
    evutil_timersub(&now, &c->last_activity, &d);
    double left = cfg_of(c)->upstream_read_timeout - tv_s(d);
    if (left <= 0.001)
        return 0;
    /* Due one timeout after the last byte either way, not one after now. */
    if (bev == c->bev) {
        set_client_timeouts(c, left, left);
    } else {
        struct timeval t = tv_of(left);
        bufferevent_set_timeouts(bev, &t, &t);
    }
    bufferevent_enable(bev, (what & BEV_EVENT_READING) ? EV_READ : EV_WRITE);
    return 1;
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    if (what & BEV_EVENT_TIMEOUT) {
        /* A client that reads, however slowly, is not a client that
         * stopped reading: wait one more timeout (WRITE_STALLS). */
        if ((what & BEV_EVENT_WRITING) && c->state != CS_TUNNEL && c->req
            && (evbuffer_get_length(bufferevent_get_output(bev)) > 0 || (c->req->flags & RF_SPLICE))) {
            if (bev_peer_acked_more(bev, &c->acked))
                c->wstalls = 0;
            else
                c->wstalls++;
            if (c->wstalls < WRITE_STALLS) {
                bufferevent_enable(bev, EV_WRITE);
                return;
            }
        }
        if (c->state == CS_HEAD && evbuffer_get_length(bufferevent_get_input(bev)) > 0 && !c->req) {
            reject(c, 408, NULL, 0);     /* slow head */
            return;
        }
        if (c->state == CS_HEAD && !c->req && (what & BEV_EVENT_READING) && evutil_timerisset(&c->last_activity)
            && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
            /* Idle keep-alive connection past the grace: park it until the
             * keep-alive timeout, or close it when that is over. */
            struct timeval now, d;
            event_base_gettimeofday_cached(worker_base(c->w), &now);
            evutil_timersub(&now, &c->last_activity, &d);
            double left = cfg_of(c)->keepalive_timeout - tv_s(d);
            if (left > 0.001) {
                conn_park(c, left);
                return;
            }
        }
        if (c->state == CS_TUNNEL && c->req && tunnel_rearm(c, bev, what))
            return;
        if (c->state == CS_PROXY && c->req && !(c->req->flags & RF_REQ_DONE) && (what & BEV_EVENT_READING)
            && !(c->req->flags & RF_RESP_HEAD)) {
            up_detach(c, 0);
            c->req->flags |= RF_REQ_DONE;
            respond_local(c, 408, "The request body did not arrive in time.", NULL, 1);
            return;
        }
        conn_close(c);
        return;
    }
    if (c->state == CS_TUNNEL && (what & BEV_EVENT_EOF) && c->req && c->req->up) {
        /* Half-close: deliver what the client sent, then pass the FIN on. */
        c->flags |= CF_CLIENT_EOF;
        bufferevent_disable(bev, EV_READ);
        if (relay_tunnel(c, c->bev, c->req->up, 1) < 0)
            return;
        tunnel_half_close(c);
        return;
    }
    /* EOF or error from the client: nobody is left to answer. */
    conn_close(c);
}

static void up_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct req *r = c->req;
    if (!r || r->up != bev)
        return;
    if (!(r->flags & RF_RESP_BYTE)) {
        r->flags |= RF_RESP_BYTE;
        consume_head(c);
    }
    if (c->state == CS_TUNNEL) {
        short ev = (r->flags & RF_THROTTLED) || (c->flags & CF_UP_PAUSED) ? 0 : bev_gather(bev, hwm_of(c));
        if (relay_tunnel(c, bev, c->bev, 0) < 0)
            return;
        if (ev)
            gathered_event(c, bev, ev, 0);
        return;
    }
    size_t head_read = 0;   /* what the read that brought the head brought */
    if (!(r->flags & RF_RESP_HEAD)) {
        head_read = evbuffer_get_length(bufferevent_get_input(bev));
        int rc = read_response_head(c);
        if (rc <= 0)
            return;
        if (c->state == CS_TUNNEL) {
            /* Bytes already queued on either side belong to the tunnel. */
            if (relay_tunnel(c, c->bev, r->up, 1) < 0)
                return;
            relay_tunnel(c, bev, c->bev, 0);
            return;
        }
    }
    /* The head was read with a short read (up_setup): when the body is to
     * be spliced, what came with it is relayed and the rest stays in the
     * socket; otherwise reads go on at full size, starting now when that
     * short read came back full. */
    int splice = (r->flags & RF_SPLICE) || splice_wanted(c);
    int gather = !splice && !(r->flags & (RF_THROTTLED | RF_RESP_DONE | RF_UP_EOF)) && !(c->flags & CF_UP_PAUSED);
    short ev = 0;
    if (!splice && bufferevent_get_max_single_read(bev) != (ev_ssize_t)BEV_READ_CHUNK) {
        bufferevent_set_max_single_read(bev, BEV_READ_CHUNK);
        /* (a short read: the socket is empty, nothing to gather) */
        if (gather)
            gather = head_read >= BEV_READ_HEAD && bev_read(bev, BEV_READ_CHUNK, &ev) == BEV_READ_CHUNK;
    }
    if (gather && !ev)
        ev = bev_gather(bev, hwm_of(c));
    if (relay_response_body(c) < 0)
        return;
    /* (bytes after the response may have dropped bev: its EOF no longer matters) */
    if (ev && c->req && c->req->up == bev)
        gathered_event(c, bev, ev, 0);
}

static void up_write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct req *r = c->req;
    if (!r || r->up != bev)
        return;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_disable(bev, EV_WRITE);   /* back to direct writes (flush_now) */
    if (!(c->flags & CF_CLIENT_PAUSED)) {
        if (c->state == CS_TUNNEL)
            tunnel_half_close(c);
        return;
    }
    c->flags &= ~CF_CLIENT_PAUSED;
    if (c->state == CS_TUNNEL) {
        if (relay_tunnel(c, c->bev, bev, 1) < 0 || tunnel_half_close(c) < 0)
            return;
    } else if (relay_request_body(c) < 0) {
        return;
    }
    if (!(c->flags & (CF_CLIENT_PAUSED | CF_CLIENT_EOF)))
        bufferevent_enable(c->bev, EV_READ);
}

/*
 * Writing the request (body) to the backend failed -- typically it answered
 * early (413, 401) and closed without reading the body, so its kernel reset
 * the connection.  Its answer may still wait in the socket, unread: a write
 * callback can run before the read callback of the same wake-up.  Reads what
 * is there, stops sending the body, and lets the response go on as if the
 * backend had only stopped reading.  Returns 1 when the exchange goes on
 * (c may be gone), 0 when nothing of a response came: the caller reports
 * the error (502, or a retry).
 */
static int up_write_failed(struct conn *c, struct bufferevent *bev)
{
    struct req *r = c->req;
    if (r->flags & (RF_RESP_DONE | RF_SPLICE | RF_UP_EOF))
        return 0;
    struct evbuffer *in = bufferevent_get_input(bev);
    short ev = 0;
    size_t before = evbuffer_get_length(in), hwm = hwm_of(c);
    while (!ev && evbuffer_get_length(in) < hwm && bev_read(bev, hwm - evbuffer_get_length(in), &ev) > 0)
        ;
    if (!(r->flags & RF_RESP_BYTE) && evbuffer_get_length(in) == 0)
        return 0;
    if (ev && evbuffer_get_length(in) == before)
        return 0;               /* nothing new, and the read side failed too */
    log_info("%s: conn %llu: backend %s stopped reading the request; relaying its answer", __func__,
             (unsigned long long)c->id, r->target.name);
    r->flags |= RF_UP_WDEAD;
    r->flags &= ~RF_UP_KEEPALIVE;
    bev_drop_output(bev);
    bufferevent_disable(bev, EV_WRITE);
    bufferevent_disable(c->bev, EV_READ);
    c->flags |= CF_CLIENT_PAUSED;
    if (evbuffer_get_length(in) > before)
        up_read_cb(bev, c);
    return 1;
}

/* May a failed exchange be tried again on another connection? */
static int can_retry(const struct req *r)
{
    if (r->flags & RF_RESP_BYTE)
        return 0;
    if (!(r->flags & RF_HEAD_SENT))
        return 1;                          /* nothing was sent */
    /* Sent, nothing back: only an idempotent request without a body. */
    return (r->flags & RF_IDEMPOTENT) && !(r->flags & RF_HAS_BODY);
}

static void up_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    struct req *r = c->req;
    if (!r || r->up != bev)
        return;
    struct tg_metrics *m = worker_metrics(c->w);

    if (what & BEV_EVENT_CONNECTED) {
        bufferevent_disable(bev, EV_WRITE);   /* writes go through flush_now(); TCP_NODELAY set at connect */
        send_request(c);
        return;
    }
    if (c->state == CS_CONNECT) {
        int timeout = (what & BEV_EVENT_TIMEOUT) != 0;
        if (timeout)
            m->upstream_timeouts++;
        else
            m->upstream_connect_errors++;
        char a[INET6_ADDRSTRLEN + 16];
        log_info("%s: conn %llu: connect to %s%s failed: %s", __func__, (unsigned long long)c->id, r->target.name,
                 target_addr(&r->target, a, sizeof(a)),
                 timeout ? "timeout" : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        route_report(worker_routes(c->w), r->backends, &r->target,
                     timeout ? ROUTE_OUTCOME_CONNECT_TIMEOUT : ROUTE_OUTCOME_CONNECT_FAIL);
        up_detach(c, 0);
        if (timeout && r->attempts >= route_backends_count(r->backends)) {
            respond_local(c, 504, "The backend did not accept the connection in time.", NULL, 0);
            return;
        }
        start_upstream(c);
        return;
    }
    /* A backend that takes an upload, however slowly, is not stuck. */
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_WRITING) && c->state == CS_PROXY
        && evbuffer_get_length(bufferevent_get_output(bev)) > 0 && bev_peer_acked_more(bev, &r->up_acked)) {
        bufferevent_enable(bev, EV_WRITE);
        return;
    }
    if (c->state == CS_TUNNEL) {
        if ((what & BEV_EVENT_TIMEOUT) && tunnel_rearm(c, bev, what))
            return;
        if (what & BEV_EVENT_EOF) {
            /* Half-close: deliver what the backend sent, pass the FIN on,
             * and keep carrying the client's bytes until it closes too (a
             * backend that closed for good resets them: the error below).
             * When the client had closed first, the tunnel ends once the
             * last byte is out (tunnel_half_close). */
            c->flags |= CF_UP_FIN;
            bufferevent_disable(bev, EV_READ);
            if (relay_tunnel(c, bev, c->bev, 0) < 0)
                return;
            tunnel_half_close(c);
            return;
        }
        /* The backend reset the tunnel (or timed out): flush what it sent,
         * then end.  The client may still be talking: a lingering close
         * (conn_end), as a plain one would make Linux reset the connection
         * and throw away what it still held for the client, counted but
         * undelivered. */
        if (relay_tunnel(c, bev, c->bev, 0) < 0)
            return;
        up_detach(c, 0);
        if (!(c->flags & CF_CLIENT_EOF))
            c->flags |= CF_UNREAD;
        set_state(c, CS_CLOSING);
        bufferevent_disable(c->bev, EV_READ);
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            conn_end(c);
        return;
    }

    if ((what & BEV_EVENT_WRITING) && (what & BEV_EVENT_ERROR) && c->state == CS_PROXY && up_write_failed(c, bev))
        return;
    if (r->flags & RF_RESP_DONE) {
        /* The backend closed after a complete response: nothing is lost,
         * the connection just cannot go back to the pool. */
        up_detach(c, 0);
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            finish_request(c);
        return;
    }
    if ((what & BEV_EVENT_EOF) && (r->flags & RF_RESP_HEAD)) {
        /* EOF delimits a close-delimited body (RFC 9112 §6.3 rule 8); for
         * other framings it is fatal only once the bytes the backend did
         * send (perhaps held back by backpressure or a throttle) are out.
         * relay_response_body() decides when the input is empty. */
        r->flags |= RF_UP_EOF;
        r->flags &= ~RF_UP_KEEPALIVE;
        relay_response_body(c);
        return;
    }
    /* A pooled connection found closed is retried, and is no failure of the
     * backend's: neither counted nor reported. */
    int stale = !(r->flags & RF_RESP_HEAD) && !(what & BEV_EVENT_TIMEOUT) && (r->flags & RF_UP_REUSED)
                && can_retry(r);
    if (!stale) {
        if (what & BEV_EVENT_TIMEOUT)
            m->upstream_timeouts++;
        else
            m->upstream_resets++;
        route_report(worker_routes(c->w), r->backends, &r->target,
                     (r->flags & RF_RESP_HEAD) ? ROUTE_OUTCOME_ERROR : ROUTE_OUTCOME_FAILED);
    }
    if (!(r->flags & RF_RESP_HEAD)) {
        if (stale) {
            /* A pooled connection the backend had closed: try a fresh one. */
            log_debug("%s: conn %llu: pooled connection to %s closed, retrying", __func__,
                      (unsigned long long)c->id, r->target.name);
            up_detach(c, 0);
            r->tried &= ~(1ull << (r->target.index & 63));
            r->flags &= ~RF_HEAD_SENT;
            /* Not a try of the backend (nginx does not count one either):
             * after a reboot every pooled connection to it may be dead,
             * each found so only by writing to it -- up to as many as a
             * backend's pool holds; past that (a backend that drops every
             * reused connection while others refill the pool) they count. */
            if (r->stale_retries < UPSTREAM_POOL_MAX_IDLE) {
                r->stale_retries++;
                r->attempts--;
            }
            start_upstream(c);
            return;
        }
        /* As nginx's "upstream timed out" / "upstream prematurely closed". */
        log_warn("%s: conn %llu: backend %s %s before the response head", __func__, (unsigned long long)c->id,
                 r->target.name, (what & BEV_EVENT_TIMEOUT) ? "timed out" : "closed the connection");
        up_detach(c, 0);
        if (what & BEV_EVENT_TIMEOUT)
            respond_local(c, 504, "The backend did not answer in time.", NULL, 0);
        else
            respond_local(c, 502, "The backend closed the connection without answering.", NULL, 0);
        return;
    }
    /* Mid-response failure: the client cannot be told any other way than
     * by the close -- after what it was sent already has reached it. */
    log_info("%s: conn %llu: backend %s %s mid-response", __func__, (unsigned long long)c->id, r->target.name,
             (what & BEV_EVENT_TIMEOUT) ? "timed out" : "failed");
    conn_cut(c);
}

/* ---------------------------------------------------------------------- */
/* Life cycle                                                             */

/* Gives the connection a bufferevent on its socket (at accept, and when a
 * parked connection becomes readable), reading with the head timeout.  0 / -1. */
static int client_bev_open(struct conn *c)
{
    c->bev = bufferevent_socket_new(worker_base(c->w), c->fd, 0);
    if (!c->bev)
        return -1;
    c->rto = c->wto = 0;
    bev_own_read(c->bev);
    bufferevent_set_max_single_read(c->bev, BEV_READ_HEAD);
    bufferevent_setcb(c->bev, client_read_cb, client_write_cb, client_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, hwm_of(c) / 2, 0);
    bufferevent_set_max_single_write(c->bev, 262144);
    evbuffer_add_cb(bufferevent_get_output(c->bev), client_out_cb, c);
    bufferevent_disable(c->bev, EV_WRITE);   /* writes go through flush_now() */
    /* The head timeout before reading is enabled: one event_add, not two. */
    set_client_timeouts(c, worker_config(c->w)->client_header_timeout, 0);
    bufferevent_enable(c->bev, EV_READ);
    return 0;
}

/* Reads the socket now rather than wait an iteration for the new
 * bufferevent's own read event: the client has spoken (a parked connection
 * woke up, or the listener defers accept until the request's first bytes). */
static void client_read_now(struct conn *c)
{
    short ev;
    size_t got = bev_read(c->bev, BEV_READ_HEAD, &ev);
    if (ev) {
        bufferevent_disable(c->bev, EV_READ);
        client_event_cb(c->bev, ev, c);
        return;
    }
    if (got)
        client_read_cb(c->bev, c);
}

static void park_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    event_free(c->park_ev);
    c->park_ev = NULL;
    if ((what & EV_TIMEOUT) || client_bev_open(c) != 0) {
        conn_close(c);
        return;
    }
    evutil_timerclear(&c->head_start);
    evutil_timerclear(&c->last_activity);
    client_read_now(c);
}

/*
 * A keep-alive connection idle for PARK_GRACE gives its bufferevent back and
 * waits on a bare event until the client speaks or the keep-alive timeout
 * ends: about 450 bytes per idle connection instead of 1.3 KiB.  The worker
 * bases use epoll's changelist, so freeing the bufferevent's read event and
 * adding the park event on the same fd in one loop iteration cost no
 * epoll_ctl call (and likewise when the connection wakes up).
 */
static void conn_park(struct conn *c, double left_s)
{
    struct timeval tv = tv_of(left_s);
    c->park_ev = event_new(worker_base(c->w), c->fd, EV_READ, park_cb, c);
    if (!c->park_ev) {
        conn_close(c);
        return;
    }
    evbuffer_remove_cb(bufferevent_get_output(c->bev), client_out_cb, c);
    bufferevent_free(c->bev);
    c->bev = NULL;
    event_add(c->park_ev, &tv);
}

void conn_accept(struct worker *w, int fd, const struct sockaddr *sa, socklen_t salen)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        evutil_closesocket(fd);
        return;
    }
    c->w = w;
    c->id = ++conn_next_id;
    if (sa->sa_family == AF_INET6) {
        c->flags |= CF_V6;
        c->peer.v6 = ((const struct sockaddr_in6 *)sa)->sin6_addr;
    } else {
        c->peer.v4 = ((const struct sockaddr_in *)sa)->sin_addr;
    }
    c->fd = fd;   /* TCP_NODELAY comes from the listener (server.c) */
    c->flags |= CF_PLAIN;
    if (client_bev_open(c) != 0) {
        evutil_closesocket(fd);
        free(c);
        return;
    }
    struct tg_metrics *m = worker_metrics(w);
    m->connections_accepted++;
    m->connections_active++;
    worker_conn_add(w);
    c->next = conn_list;
    if (conn_list)
        conn_list->prev = c;
    conn_list = c;
    if (log_level_enabled(LOG_DEBUG))
        log_debug("%s: conn %llu: accepted (salen %u)", __func__, (unsigned long long)c->id, (unsigned)salen);
    /* A deferring listener hands over connections with bytes to read. */
    if (worker_config(w)->defer_accept > 0)
        client_read_now(c);
}

/* ---------------------------------------------------------------------- */
/* Ending a connection after its last response                            */

/* A lingering close waits this long for quiet, and this long in all
 * (nginx's lingering_timeout and lingering_time). */
#define LINGER_QUIET 5.0
#define LINGER_MAX 30

static double since_s(const struct timeval *t0)
{
    struct timeval now, d;
    evutil_gettimeofday(&now, NULL);
    evutil_timersub(&now, t0, &d);
    return tv_s(d);
}

static void linger_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    if (since_s(&c->head_start) >= LINGER_MAX)
        conn_close(c);
}

static void linger_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    conn_close(arg);   /* EOF, quiet for LINGER_QUIET, an error */
}

/*
 * Ends the connection once its last response is in the kernel's hands (the
 * output buffer empty).  What the kernel still holds for the client was
 * counted as sent when it took it; closing while client bytes wait unread
 * makes Linux answer with a reset that throws those away, undelivered but
 * billed.  So when the client may still be sending (CF_UNREAD: a request
 * body not read; or bytes already buffered), the connection half-closes and
 * reads and drops what comes until the client closes, is quiet for
 * LINGER_QUIET or LINGER_MAX has passed: nginx's lingering close.
 */
static void conn_end(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (!(c->flags & CF_UNREAD) && evbuffer_get_length(in) == 0) {
        conn_close(c);
        return;
    }
    /* Nothing of the request may run on while the connection lingers. */
    conn_release_req(c);
    set_state(c, CS_LINGER);
    evutil_gettimeofday(&c->head_start, NULL);   /* the wait's start */
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_setcb(c->bev, linger_read_cb, NULL, linger_event_cb, c);
    shutdown(c->fd, SHUT_WR);
    set_client_timeouts(c, LINGER_QUIET, 0);
    bev_enable_read(c->bev);
}

/*
 * Ends a connection whose response cannot be completed: the meter cut it
 * (the tenant's cap or a suspension), or the backend failed mid-response
 * (the close is how the client learns the body is short).  The backend goes
 * at once, with whatever tollgate still held of it.  What the client's
 * output buffer holds was granted by the meter
 * (or is a head, sent whatever happens): it still goes, and is counted as
 * the kernel takes it, so that a download stops at its budget, not up to a
 * buffer short of it (the next request then found budget left and got 200,
 * not 509).  Then a lingering close, as conn_end(): closing with client bytes
 * unread would make Linux reset the connection and throw away what the
 * kernel already took, and counted.
 */
static void conn_cut(struct conn *c)
{
    struct req *r = c->req;
    if (!(c->flags & CF_CLIENT_EOF))
        c->flags |= CF_UNREAD;
    if (r) {
        if (r->timer)
            event_del(r->timer);
        r->flags &= ~RF_THROTTLED;
        up_detach(c, 0);
    }
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
        set_state(c, CS_CLOSING);   /* client_write_cb() ends it once flushed */
        c->flags |= CF_CLOSE_AFTER;
        bufferevent_disable(c->bev, EV_READ);
        bufferevent_enable(c->bev, EV_WRITE);
        return;
    }
    conn_end(c);
}

/* Ends the connection's request, if any: its backend connection, route
 * lookup and timers go, and it is logged (499 when nothing was answered). */
static void conn_release_req(struct conn *c)
{
    if (c->lookup) {
        route_lookup_cancel(c->lookup);
        c->lookup = NULL;
    }
    struct req *r = c->req;
    if (!r)
        return;
    splice_end(c);
    pick_end(c, r);
    if (r->up) {
        bufferevent_free(r->up);
        r->up = NULL;
    }
    if (r->status == 0)
        r->status = 499;   /* client closed before an answer (nginx's convention) */
    if (r->mt && !(r->flags & RF_ADMITTED)) {
        /* Gone while admission waited for the meter: not a request the
         * meter admitted, so none of its bytes is billed. */
        meter_tenant_put(r->mt);
        r->mt = NULL;
    }
    consume_head(c);
    /* Count what the kernel already took before the buffer goes away. */
    log_request(c, r);
    c->req = NULL;
    req_free(r);
}

/* The one teardown path: frees everything the connection owns. */
static void conn_close(struct conn *c)
{
    conn_release_req(c);
    if (c->bev) {
        evbuffer_remove_cb(bufferevent_get_output(c->bev), client_out_cb, c);
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (c->park_ev) {
        event_free(c->park_ev);
        c->park_ev = NULL;
    }
    evutil_closesocket(c->fd);
    struct tg_metrics *m = worker_metrics(c->w);
    m->connections_active--;
    if (c->prev)
        c->prev->next = c->next;
    else
        conn_list = c->next;
    if (c->next)
        c->next->prev = c->prev;
    struct worker *w = c->w;
    free(c);
    worker_conn_remove(w);
}

/* Does the kernel hold bytes from the client that the loop has not read? */
static int client_bytes_waiting(int fd)
{
    char b;
    return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

/*
 * Idle keep-alive connections close at once; the others finish their
 * exchange and close after it (CF_CLOSE_AFTER: `Connection: close`).  An
 * idle connection whose next request already sits in the kernel (sent
 * before the client could know of the stop) is not idle: closing it would
 * drop that request unanswered, so it is read and answered like the rest —
 * a parked one is woken as if its read event had fired.
 */
void conn_drain_all(void)
{
    struct conn *c = conn_list, *next;
    for (; c; c = next) {
        next = c->next;
        c->flags |= CF_DRAINING | CF_CLOSE_AFTER;
        if (c->bev && (c->state != CS_HEAD || c->req || evbuffer_get_length(bufferevent_get_input(c->bev)) > 0))
            continue;
        if (c->state == CS_HEAD && (c->bev || c->park_ev) && client_bytes_waiting(c->fd)) {
            if (c->park_ev)
                event_active(c->park_ev, EV_READ, 0);
            continue;
        }
        conn_close(c);
    }
}

void conn_abort_all(void)
{
    while (conn_list) {
        struct conn *c = conn_list;
        /* Closed by tollgate, not by the client: 444 in the access log
         * (nginx's code for a connection closed without an answer) rather
         * than the 499 of a client that left. */
        if (c->req && c->req->status == 0)
            c->req->status = 444;
        conn_close(c);
    }
}

void conn_thread_cleanup(void)
{
    splice_thread_cleanup();
    free(cap_page_body);
    cap_page_body = NULL;
    cap_page_cfg = 0;
    while (req_free_list) {
        struct req *r = req_free_list;
        req_free_list = r->next_free;
        if (r->timer)
            event_free(r->timer);
        free(r);
    }
}
