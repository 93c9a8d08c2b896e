/*
 * bev: socket bufferevents whose reads tollgate does itself.
 *
 * libevent 2.1's socket bufferevent reads at most 4 KiB per readiness event
 * (EVBUFFER_MAX_READ in buffer.c), and asks the kernel how much is waiting
 * with an ioctl(FIONREAD) before every read: on a proxy that is a system
 * call per read spent on nothing, and an epoll wake-up, an ioctl and a read
 * per 4 KiB of a large body.  bev_own_read() points a socket bufferevent's
 * read event at bev_readcb(), which reads up to the bufferevent's max single
 * read with one readv straight into reserved space of the input buffer.
 *
 * Everything else stays libevent's, because it all works on the same struct
 * event: enabling and disabling, the read timeout (EV_PERSIST restarts it
 * after each read), the read watermarks (libevent's input callback deletes
 * and re-adds the event as the input crosses the high mark), the write side
 * and freeing.  The struct is libevent's public compatibility layout
 * (<event2/bufferevent_struct.h>); only its read fields are touched here.
 *
 * Ownership: none; every function works on a bufferevent the caller owns.
 * A callback run from bev_readcb() may free the bufferevent: libevent
 * finalizes an event whose callback is running only after it returns, and
 * bev_readcb() touches nothing after calling back.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <linux/tcp.h>       /* struct tcp_info with tcpi_bytes_acked (glibc's lacks it) */
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <event2/event.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h>
#include <event2/event_struct.h>

#include "proxy/bev.h"

size_t bev_read(struct bufferevent *bev, size_t max, short *ev)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_iovec v[2];
    struct iovec iov[2];
    *ev = 0;
    /* A socket bufferevent keeps its input's end frozen except while it
     * reads itself; open it for this read, then close it again. */
    evbuffer_unfreeze(in, 0);
    int n = evbuffer_reserve_space(in, (ev_ssize_t)max, v, 2);
    if (n <= 0) {
        evbuffer_freeze(in, 0);
        return 0;
    }
    size_t cap = 0;
    for (int i = 0; i < n; i++) {
        if (v[i].iov_len > max - cap)
            v[i].iov_len = max - cap;
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len;
        cap += v[i].iov_len;
    }
    /* recv(2) when the space is one piece (nearly always): the socket call
     * skips the file layer readv(2) goes through. */
    ssize_t got = n == 1 ? recv(bufferevent_getfd(bev), iov[0].iov_base, iov[0].iov_len, 0)
                         : readv(bufferevent_getfd(bev), iov, n);
    if (got <= 0) {
        if (got == 0)
            *ev = BEV_EVENT_EOF | BEV_EVENT_READING;
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            *ev = BEV_EVENT_ERROR | BEV_EVENT_READING;
        evbuffer_commit_space(in, v, 0);   /* drop the reservation */
        evbuffer_freeze(in, 0);
        return 0;
    }
    size_t left = (size_t)got;
    int used = 0;
    for (int i = 0; i < n && left > 0; i++, used++) {
        if (v[i].iov_len > left)
            v[i].iov_len = left;
        left -= v[i].iov_len;
    }
    evbuffer_commit_space(in, v, used);
    evbuffer_freeze(in, 0);
    return (size_t)got;
}

int bev_write(struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    struct evbuffer_iovec v[BEV_WRITE_IOV];
    int n = evbuffer_peek(out, -1, NULL, v, BEV_WRITE_IOV);
    if (n <= 0)
        return 0;
    if (n > BEV_WRITE_IOV)
        n = BEV_WRITE_IOV;
    evutil_socket_t fd = bufferevent_getfd(bev);
    /* send(2) for one piece skips the file layer writev(2) goes through. */
    ssize_t put = n == 1 ? send(fd, v[0].iov_base, v[0].iov_len, MSG_NOSIGNAL)
                         : writev(fd, (const struct iovec *)(const void *)v, n);
    if (put < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
    evbuffer_unfreeze(out, 1);
    evbuffer_drain(out, (size_t)put);
    evbuffer_freeze(out, 1);
    return 0;
}

void bev_drop_output(struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    evbuffer_unfreeze(out, 1);
    evbuffer_drain(out, evbuffer_get_length(out));
    evbuffer_freeze(out, 1);
}

short bev_gather(struct bufferevent *bev, size_t limit)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t first = (size_t)bufferevent_get_max_single_read(bev);
    if (evbuffer_get_length(in) < first)
        return 0;   /* the callback's read was short: the socket is empty */
    for (int round = 0; round < BEV_GATHER_ROUNDS && evbuffer_get_length(in) < limit; round++) {
        short ev;
        size_t got = bev_read(bev, BEV_READ_CHUNK, &ev);
        if (ev || got < BEV_READ_CHUNK)
            return ev;
    }
    return 0;
}

static void bev_readcb(evutil_socket_t fd, short what, void *arg)
{
    struct bufferevent *bev = arg;
    (void)fd;
    if (what == EV_TIMEOUT) {
        /* EV_TIMEOUT|EV_READ means bytes came in time: read them. */
        bufferevent_disable(bev, EV_READ);
        if (bev->errorcb)
            bev->errorcb(bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, bev->cbarg);
        return;
    }
    size_t max = (size_t)bufferevent_get_max_single_read(bev);
    if (bev->wm_read.high) {
        size_t have = evbuffer_get_length(bev->input);
        if (have >= bev->wm_read.high)
            return;   /* a stale wake-up: libevent suspends reading at the mark */
        if (max > bev->wm_read.high - have)
            max = bev->wm_read.high - have;
    }
    short ev;
    size_t got = bev_read(bev, max, &ev);
    if (ev) {
        bufferevent_disable(bev, EV_READ);
        if (bev->errorcb)
            bev->errorcb(bev, ev, bev->cbarg);
        return;
    }
    if (got && bev->readcb && evbuffer_get_length(bev->input) >= bev->wm_read.low)
        bev->readcb(bev, bev->cbarg);
}

int bev_read_fired(const struct bufferevent *bev)
{
    /* A fired timeout also takes the event out of epoll (libevent's
     * timeout_process), so re-arming the timeout through
     * bufferevent_set_timeouts() no longer cancels it: only this tells. */
    return (bev->ev_read.ev_evcallback.evcb_flags & EVLIST_ACTIVE) != 0;
}

void bev_enable_read(struct bufferevent *bev)
{
    if (!(bufferevent_get_enabled(bev) & EV_READ))
        bufferevent_enable(bev, EV_READ);
}

void bev_own_read(struct bufferevent *bev)
{
    struct event *e = &bev->ev_read;
    evutil_socket_t fd = event_get_fd(e);
    int pending = event_pending(e, EV_READ, NULL);
    if (pending)
        event_del(e);
    event_assign(e, bev->ev_base, fd, EV_READ | EV_PERSIST | EV_FINALIZE, bev_readcb, bev);
    if (pending)
        event_add(e, evutil_timerisset(&bev->timeout_read) ? &bev->timeout_read : NULL);
}

/*
 * Diverting writes the callback of the bufferevent's struct event in place
 * (libevent reads it when the event runs): deleting, assigning and adding
 * the event again would cost two epoll_ctl calls each way.  The argument
 * stays the bufferevent: libevent passes it to bufferevent_finalize_cb_
 * when the bufferevent is freed.  Every socket bufferevent has the same
 * write callback, kept here on the first divert.
 */
static __thread event_callback_fn socket_writecb;

void bev_divert(struct bufferevent *bev, short which, event_callback_fn fn)
{
    if (which & EV_READ)
        bev->ev_read.ev_evcallback.evcb_cb_union.evcb_callback = fn;
    if (which & EV_WRITE) {
        event_callback_fn cur = event_get_callback(&bev->ev_write);
        if (cur != fn)
            socket_writecb = cur;
        bev->ev_write.ev_evcallback.evcb_cb_union.evcb_callback = fn;
    }
}

void bev_undivert(struct bufferevent *bev, short which)
{
    if (which & EV_READ)
        bev->ev_read.ev_evcallback.evcb_cb_union.evcb_callback = bev_readcb;
    if ((which & EV_WRITE) && socket_writecb)
        bev->ev_write.ev_evcallback.evcb_cb_union.evcb_callback = socket_writecb;
}

int bev_peer_acked_more(struct bufferevent *bev, uint64_t *mark)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    memset(&ti, 0, sizeof(ti));
    if (getsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_INFO, &ti, &len) != 0
        || len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(ti.tcpi_bytes_acked))
        return 0;
    uint64_t acked = ti.tcpi_bytes_acked;
    int more = acked != *mark;
    *mark = acked;
    return more;
}
