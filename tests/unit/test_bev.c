/*
 * tests/unit/test_bev.c: unit tests for proxy/bev.c, the read side of socket
 * bufferevents that tollgate does itself.
 *
 * Each test drives a real bufferevent on one end of a socketpair with a
 * private event_base and checks what libevent's own read callback would
 * have done — the read callback, EOF, errors, timeouts, enable/disable —
 * and what bev.c does differently: reads as large as the bufferevent's max
 * single read (libevent: 4 KiB), capped by the read high watermark.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "proxy/bev.h"
#include "tests/unit/tests.h"

struct rig {
    struct event_base *base;
    struct bufferevent *bev;
    int peer;                 /* the other end of the socketpair */
    int reads;                /* read callbacks run */
    size_t first_len;         /* input length at the first read callback */
    short events;             /* the event callback's what */
    int event_calls;
    int free_in_cb;           /* the read callback frees the bufferevent */
};

static void rig_read_cb(struct bufferevent *bev, void *arg)
{
    struct rig *g = arg;
    if (g->reads++ == 0)
        g->first_len = evbuffer_get_length(bufferevent_get_input(bev));
    if (g->free_in_cb) {
        bufferevent_free(bev);
        g->bev = NULL;
    }
}

static void rig_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct rig *g = arg;
    (void)bev;
    g->events = what;
    g->event_calls++;
}

static void rig_open(struct rig *g)
{
    memset(g, 0, sizeof(*g));
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    int sz = 1 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    g->peer = sv[1];
    g->base = event_base_new();
    ck_assert_ptr_nonnull(g->base);
    g->bev = bufferevent_socket_new(g->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    ck_assert_ptr_nonnull(g->bev);
    bev_own_read(g->bev);
    bufferevent_setcb(g->bev, rig_read_cb, NULL, rig_event_cb, g);
    bufferevent_enable(g->bev, EV_READ);
}

static void rig_close(struct rig *g)
{
    if (g->bev)
        bufferevent_free(g->bev);
    if (g->peer >= 0)
        close(g->peer);
    event_base_free(g->base);
}

static void send_bytes(int fd, size_t n)
{
    char buf[8192];
    memset(buf, 'x', sizeof(buf));
    while (n > 0) {
        size_t k = n < sizeof(buf) ? n : sizeof(buf);
        ssize_t w = write(fd, buf, k);
        ck_assert_int_gt(w, 0);
        n -= (size_t)w;
    }
}

START_TEST(one_read_takes_up_to_the_max_single_read)
{
    struct rig g;
    rig_open(&g);
    bufferevent_set_max_single_read(g.bev, BEV_READ_CHUNK);
    send_bytes(g.peer, 200000);
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_int_eq(g.reads, 1);
    /* libevent's own callback reads 4096 here */
    ck_assert_uint_eq(g.first_len, BEV_READ_CHUNK);
    rig_close(&g);
}
END_TEST

START_TEST(read_capped_by_the_high_watermark)
{
    struct rig g;
    rig_open(&g);
    bufferevent_set_max_single_read(g.bev, BEV_READ_CHUNK);
    bufferevent_setwatermark(g.bev, EV_READ, 0, 1000);
    send_bytes(g.peer, 5000);
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_uint_eq(g.first_len, 1000);
    /* at the mark, reading stops until the input drains below it */
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_uint_eq(evbuffer_get_length(bufferevent_get_input(g.bev)), 1000);
    evbuffer_drain(bufferevent_get_input(g.bev), 1000);
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_uint_eq(evbuffer_get_length(bufferevent_get_input(g.bev)), 1000);
    rig_close(&g);
}
END_TEST

START_TEST(gather_reads_on_after_a_full_read_and_stops_at_a_short_one)
{
    struct rig g;
    rig_open(&g);
    bufferevent_set_max_single_read(g.bev, BEV_READ_CHUNK);
    send_bytes(g.peer, 3 * BEV_READ_CHUNK + 100);
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_uint_eq(g.first_len, BEV_READ_CHUNK);
    ck_assert_int_eq(bev_gather(g.bev, 1 << 20), 0);
    ck_assert_uint_eq(evbuffer_get_length(bufferevent_get_input(g.bev)), 3 * BEV_READ_CHUNK + 100);
    /* the limit bounds what one gather buffers */
    send_bytes(g.peer, 3 * BEV_READ_CHUNK);
    ck_assert_int_eq(bev_gather(g.bev, 4 * BEV_READ_CHUNK), 0);
    ck_assert_uint_eq(evbuffer_get_length(bufferevent_get_input(g.bev)), 4 * BEV_READ_CHUNK + 100);
    rig_close(&g);
}
END_TEST

START_TEST(gather_reads_nothing_after_a_short_read)
{
    struct rig g;
    rig_open(&g);
    bufferevent_set_max_single_read(g.bev, BEV_READ_CHUNK);
    send_bytes(g.peer, 100);
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_uint_eq(g.first_len, 100);
    send_bytes(g.peer, 100);   /* arrived after the read: left for the next event */
    ck_assert_int_eq(bev_gather(g.bev, 1 << 20), 0);
    ck_assert_uint_eq(evbuffer_get_length(bufferevent_get_input(g.bev)), 100);
    rig_close(&g);
}
END_TEST

START_TEST(eof_reported_once_with_reading_disabled)
{
    struct rig g;
    rig_open(&g);
    send_bytes(g.peer, 10);
    close(g.peer);
    g.peer = -1;
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_int_eq(g.reads, 1);
    ck_assert_int_eq(g.event_calls, 1);
    ck_assert_int_eq(g.events, BEV_EVENT_EOF | BEV_EVENT_READING);
    ck_assert_int_eq(bufferevent_get_enabled(g.bev) & EV_READ, 0);
    ck_assert_uint_eq(evbuffer_get_length(bufferevent_get_input(g.bev)), 10);
    rig_close(&g);
}
END_TEST

START_TEST(read_timeout_reported_with_reading_disabled)
{
    struct rig g;
    rig_open(&g);
    struct timeval tv = { 0, 20000 };
    bufferevent_set_timeouts(g.bev, &tv, NULL);
    event_base_dispatch(g.base);   /* returns once no event is left */
    ck_assert_int_eq(g.event_calls, 1);
    ck_assert_int_eq(g.events, BEV_EVENT_TIMEOUT | BEV_EVENT_READING);
    ck_assert_int_eq(bufferevent_get_enabled(g.bev) & EV_READ, 0);
    rig_close(&g);
}
END_TEST

START_TEST(own_read_kept_when_taken_over_while_enabled_with_a_timeout)
{
    /* bev_own_read() on a bufferevent already reading keeps it reading, timeout included */
    struct rig g;
    rig_open(&g);
    struct timeval tv = { 0, 20000 };
    bufferevent_set_timeouts(g.bev, &tv, NULL);
    bev_own_read(g.bev);
    send_bytes(g.peer, 10);
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_int_eq(g.reads, 1);
    event_base_dispatch(g.base);
    ck_assert_int_eq(g.events, BEV_EVENT_TIMEOUT | BEV_EVENT_READING);
    rig_close(&g);
}
END_TEST

START_TEST(disabled_bufferevent_is_not_read)
{
    struct rig g;
    rig_open(&g);
    bufferevent_disable(g.bev, EV_READ);
    send_bytes(g.peer, 10);
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_int_eq(g.reads, 0);
    bufferevent_enable(g.bev, EV_READ);
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_int_eq(g.reads, 1);
    rig_close(&g);
}
END_TEST

START_TEST(read_callback_may_free_the_bufferevent)
{
    struct rig g;
    rig_open(&g);
    g.free_in_cb = 1;
    send_bytes(g.peer, 10);
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_int_eq(g.reads, 1);
    ck_assert_ptr_null(g.bev);
    event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);   /* runs the finalizers */
    rig_close(&g);
}
END_TEST

START_TEST(bev_read_reports_eagain_as_nothing)
{
    struct rig g;
    rig_open(&g);
    short ev = 1;
    ck_assert_uint_eq(bev_read(g.bev, 4096, &ev), 0);
    ck_assert_int_eq(ev, 0);
    rig_close(&g);
}
END_TEST

/* A diverted event's own callback: counts runs and keeps the last what. */
static struct {
    int calls;
    short what;
    struct bufferevent *arg;   /* what the callback was given */
    short disable;             /* the callback disables this after running (a one-shot) */
} d;

static void divert_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    d.calls++;
    d.what = what;
    d.arg = arg;
    if (d.disable)
        bufferevent_disable(arg, d.disable);
}

START_TEST(diverted_read_runs_the_callback_and_leaves_the_bytes_in_the_socket)
{
    struct rig g;
    rig_open(&g);
    memset(&d, 0, sizeof(d));
    d.disable = EV_READ;
    bev_divert(g.bev, EV_READ, divert_cb);
    send_bytes(g.peer, 1000);
    event_base_loop(g.base, EVLOOP_ONCE);
    ck_assert_int_eq(d.calls, 1);
    ck_assert_int_eq(d.what, EV_READ);
    ck_assert_ptr_eq(d.arg, g.bev);
    ck_assert_int_eq(g.reads, 0);
    ck_assert_uint_eq(evbuffer_get_length(bufferevent_get_input(g.bev)), 0);
    /* given back: the bufferevent reads the bytes as before */
    bev_undivert(g.bev, EV_READ);
    bufferevent_enable(g.bev, EV_READ);
    event_base_loop(g.base, EVLOOP_ONCE);
    ck_assert_int_eq(d.calls, 1);
    ck_assert_int_eq(g.reads, 1);
    ck_assert_uint_eq(evbuffer_get_length(bufferevent_get_input(g.bev)), 1000);
    rig_close(&g);
}
END_TEST

START_TEST(diverted_read_keeps_the_read_timeout)
{
    struct rig g;
    rig_open(&g);
    memset(&d, 0, sizeof(d));
    d.disable = EV_READ;
    struct timeval tv = { 0, 20000 };
    bufferevent_set_timeouts(g.bev, &tv, NULL);
    bev_divert(g.bev, EV_READ, divert_cb);
    event_base_dispatch(g.base);
    ck_assert_int_eq(d.calls, 1);
    ck_assert_int_eq(d.what, EV_TIMEOUT);
    ck_assert_int_eq(g.event_calls, 0);
    /* freed while diverted: libevent's finalizer still gets the bufferevent */
    rig_close(&g);
}
END_TEST

START_TEST(diverted_write_runs_when_enabled_and_undiverted_write_sends_the_output)
{
    struct rig g;
    rig_open(&g);
    memset(&d, 0, sizeof(d));
    d.disable = EV_WRITE;
    bufferevent_disable(g.bev, EV_READ);
    bev_divert(g.bev, EV_WRITE, divert_cb);
    bufferevent_enable(g.bev, EV_WRITE);
    event_base_loop(g.base, EVLOOP_ONCE);
    ck_assert_int_eq(d.calls, 1);
    ck_assert_int_eq(d.what, EV_WRITE);
    /* a second divert of the same bufferevent must not lose libevent's callback */
    bev_divert(g.bev, EV_WRITE, divert_cb);
    bev_undivert(g.bev, EV_WRITE);
    bufferevent_enable(g.bev, EV_WRITE);
    bufferevent_write(g.bev, "hello", 5);
    event_base_loop(g.base, EVLOOP_ONCE);
    ck_assert_int_eq(d.calls, 1);
    char buf[8];
    ck_assert_int_eq(read(g.peer, buf, sizeof(buf)), 5);
    ck_assert_int_eq(memcmp(buf, "hello", 5), 0);
    rig_close(&g);
}
END_TEST

/* A socket bufferevent's output is frozen at its start: evbuffer_drain()
 * alone leaves it as it was; bev_drop_output() empties it, and a later
 * write sends only what was added after. */
START_TEST(drop_output_empties_a_socket_bufferevents_output)
{
    struct rig g;
    rig_open(&g);
    struct evbuffer *out = bufferevent_get_output(g.bev);
    evbuffer_add(out, "stale", 5);
    ck_assert_int_eq(evbuffer_drain(out, 5), -1);   /* what libevent does: the start is frozen */
    ck_assert_uint_eq(evbuffer_get_length(out), 5);
    bev_drop_output(g.bev);
    ck_assert_uint_eq(evbuffer_get_length(out), 0);
    evbuffer_add(out, "fresh", 5);
    ck_assert_int_eq(bev_write(g.bev), 0);
    char buf[16];
    ck_assert_int_eq(read(g.peer, buf, sizeof(buf)), 5);
    ck_assert_int_eq(memcmp(buf, "fresh", 5), 0);
    rig_close(&g);
}
END_TEST

Suite *bev_suite(void)
{
    Suite *s = suite_create("bev");
    TCase *tc = tcase_create("read side");
    tcase_add_test(tc, one_read_takes_up_to_the_max_single_read);
    tcase_add_test(tc, read_capped_by_the_high_watermark);
    tcase_add_test(tc, gather_reads_on_after_a_full_read_and_stops_at_a_short_one);
    tcase_add_test(tc, gather_reads_nothing_after_a_short_read);
    tcase_add_test(tc, eof_reported_once_with_reading_disabled);
    tcase_add_test(tc, read_timeout_reported_with_reading_disabled);
    tcase_add_test(tc, own_read_kept_when_taken_over_while_enabled_with_a_timeout);
    tcase_add_test(tc, disabled_bufferevent_is_not_read);
    tcase_add_test(tc, read_callback_may_free_the_bufferevent);
    tcase_add_test(tc, bev_read_reports_eagain_as_nothing);
    tcase_add_test(tc, diverted_read_runs_the_callback_and_leaves_the_bytes_in_the_socket);
    tcase_add_test(tc, diverted_read_keeps_the_read_timeout);
    tcase_add_test(tc, diverted_write_runs_when_enabled_and_undiverted_write_sends_the_output);
    tcase_add_test(tc, drop_output_empties_a_socket_bufferevents_output);
    suite_add_tcase(s, tc);
    return s;
}
