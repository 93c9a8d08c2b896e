/*
 * tests/unit/test_upstream.c: unit tests for the idle-connection pool of
 * proxy/upstream.c.
 *
 * Each pooled "backend connection" is a socket bufferevent on one end of a
 * socketpair; the test holds the other end, so it sees the pool close a
 * connection as EOF.  A private event_base runs the pool's expiry timer.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "proxy/upstream.h"
#include "routing/route.h"
#include "tests/unit/tests.h"

#define MAX_CONNS 80

struct prig {
    struct event_base *base;
    struct upstream_pool *pool;
    struct bufferevent *bev[MAX_CONNS];
    int peer[MAX_CONNS];
    int n;
};

static void prig_open(struct prig *g, double idle_s)
{
    memset(g, 0, sizeof(*g));
    g->base = event_base_new();
    ck_assert_ptr_nonnull(g->base);
    g->pool = upstream_pool_new(g->base, idle_s);
    ck_assert_ptr_nonnull(g->pool);
}

/* A new connected pair; returns its index. */
static int prig_conn(struct prig *g)
{
    int sv[2];
    ck_assert_int_lt(g->n, MAX_CONNS);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ck_assert_int_eq(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
    ck_assert_int_eq(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
    g->bev[g->n] = bufferevent_socket_new(g->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    ck_assert_ptr_nonnull(g->bev[g->n]);
    g->peer[g->n] = sv[1];
    return g->n++;
}

/* Runs the loop for about s seconds. */
static void prig_run(struct prig *g, double s)
{
    struct timeval tv = { (time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6) };
    event_base_loopexit(g->base, &tv);
    event_base_dispatch(g->base);
}

/* 1 when the pool closed connection i (its peer reads EOF).  A freed
 * bufferevent closes its socket from the loop: the loop runs once first. */
static int prig_closed(struct prig *g, int i)
{
    event_base_loop(g->base, EVLOOP_NONBLOCK);
    char ch;
    ssize_t n = read(g->peer[i], &ch, 1);
    return n == 0 || (n < 0 && errno != EAGAIN);
}

static void prig_close(struct prig *g, struct bufferevent **taken, int n_taken)
{
    for (int i = 0; i < n_taken; i++)
        bufferevent_free(taken[i]);
    upstream_pool_free(g->pool);
    for (int i = 0; i < g->n; i++)
        close(g->peer[i]);
    event_base_free(g->base);
}

static struct route_target target(const char *ip, int port)
{
    struct route_target t;
    memset(&t, 0, sizeof(t));
    struct sockaddr_in *sin = (struct sockaddr_in *)&t.addr;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((unsigned short)port);
    inet_pton(AF_INET, ip, &sin->sin_addr);
    t.addrlen = sizeof(*sin);
    return t;
}

START_TEST(a_connection_put_back_is_handed_out_again_to_its_backend_only)
{
    struct prig g;
    prig_open(&g, 30);
    struct route_target a = target("10.0.0.1", 80), b = target("10.0.0.1", 81);
    int i = prig_conn(&g);
    upstream_pool_put(g.pool, &a, g.bev[i]);
    ck_assert_ptr_null(upstream_pool_get(g.pool, &b));
    struct bufferevent *got = upstream_pool_get(g.pool, &a);
    ck_assert_ptr_eq(got, g.bev[i]);
    ck_assert_ptr_null(upstream_pool_get(g.pool, &a));
    ck_assert(!prig_closed(&g, i));
    prig_close(&g, &got, 1);
}
END_TEST

START_TEST(the_newest_idle_connection_is_handed_out_first)
{
    struct prig g;
    prig_open(&g, 30);
    struct route_target a = target("10.0.0.2", 8080);
    int i = prig_conn(&g), j = prig_conn(&g);
    upstream_pool_put(g.pool, &a, g.bev[i]);
    upstream_pool_put(g.pool, &a, g.bev[j]);
    struct bufferevent *got[2];
    got[0] = upstream_pool_get(g.pool, &a);
    got[1] = upstream_pool_get(g.pool, &a);
    ck_assert_ptr_eq(got[0], g.bev[j]);
    ck_assert_ptr_eq(got[1], g.bev[i]);
    prig_close(&g, got, 2);
}
END_TEST

START_TEST(idle_connections_close_after_the_idle_time_oldest_first)
{
    struct prig g;
    prig_open(&g, 0.3);
    struct route_target a = target("10.0.0.3", 80), b = target("10.0.0.4", 80);
    int old_a = prig_conn(&g), old_b = prig_conn(&g), young = prig_conn(&g);
    upstream_pool_put(g.pool, &a, g.bev[old_a]);
    upstream_pool_put(g.pool, &b, g.bev[old_b]);
    prig_run(&g, 0.2);
    upstream_pool_put(g.pool, &a, g.bev[young]);
    prig_run(&g, 0.2);              /* old ones idle 0.4 s, the young one 0.2 s */
    ck_assert(prig_closed(&g, old_a));
    ck_assert(prig_closed(&g, old_b));
    ck_assert(!prig_closed(&g, young));
    ck_assert_ptr_null(upstream_pool_get(g.pool, &b));
    struct bufferevent *got = upstream_pool_get(g.pool, &a);
    ck_assert_ptr_eq(got, g.bev[young]);
    ck_assert_ptr_null(upstream_pool_get(g.pool, &a));
    prig_close(&g, &got, 1);
}
END_TEST

START_TEST(a_connection_taken_and_put_back_starts_its_idle_time_again)
{
    struct prig g;
    prig_open(&g, 0.3);
    struct route_target a = target("10.0.0.5", 80);
    int i = prig_conn(&g);
    upstream_pool_put(g.pool, &a, g.bev[i]);
    prig_run(&g, 0.2);
    struct bufferevent *got = upstream_pool_get(g.pool, &a);
    ck_assert_ptr_eq(got, g.bev[i]);
    upstream_pool_put(g.pool, &a, got);
    prig_run(&g, 0.2);              /* 0.4 s since the first put, 0.2 s since the second */
    ck_assert(!prig_closed(&g, i));
    got = upstream_pool_get(g.pool, &a);
    ck_assert_ptr_eq(got, g.bev[i]);
    upstream_pool_put(g.pool, &a, got);
    prig_run(&g, 0.45);
    ck_assert(prig_closed(&g, i));
    ck_assert_ptr_null(upstream_pool_get(g.pool, &a));
    prig_close(&g, NULL, 0);
}
END_TEST

START_TEST(bytes_from_an_idle_backend_close_its_connection)
{
    struct prig g;
    prig_open(&g, 30);
    struct route_target a = target("10.0.0.6", 80);
    int i = prig_conn(&g);
    upstream_pool_put(g.pool, &a, g.bev[i]);
    ck_assert_int_eq(write(g.peer[i], "x", 1), 1);
    prig_run(&g, 0.1);
    ck_assert(prig_closed(&g, i));
    ck_assert_ptr_null(upstream_pool_get(g.pool, &a));
    prig_close(&g, NULL, 0);
}
END_TEST

START_TEST(bytes_or_eof_waiting_keep_an_idle_connection_from_being_handed_out)
{
    /* Before the loop has run: the idle read event has not seen them. */
    struct prig g;
    prig_open(&g, 30);
    struct route_target a = target("10.0.0.10", 80);
    int clean = prig_conn(&g), extra = prig_conn(&g), eof = prig_conn(&g);
    upstream_pool_put(g.pool, &a, g.bev[clean]);
    upstream_pool_put(g.pool, &a, g.bev[extra]);
    upstream_pool_put(g.pool, &a, g.bev[eof]);
    ck_assert_int_eq(write(g.peer[extra], "HTTP/1.1 200 OK\r\n", 17), 17);
    ck_assert_int_eq(shutdown(g.peer[eof], SHUT_WR), 0);
    struct bufferevent *got = upstream_pool_get(g.pool, &a);
    ck_assert_ptr_eq(got, g.bev[clean]);   /* the two newer ones were skipped */
    ck_assert(prig_closed(&g, extra));
    ck_assert(prig_closed(&g, eof));
    ck_assert_ptr_null(upstream_pool_get(g.pool, &a));
    prig_close(&g, &got, 1);
}
END_TEST

START_TEST(at_most_64_idle_connections_per_backend)
{
    struct prig g;
    prig_open(&g, 30);
    struct route_target a = target("10.0.0.7", 80);
    for (int k = 0; k < 65; k++)
        upstream_pool_put(g.pool, &a, g.bev[prig_conn(&g)]);
    ck_assert(prig_closed(&g, 64));   /* the 65th was closed, not pooled */
    struct bufferevent *got[64];
    for (int k = 0; k < 64; k++) {
        got[k] = upstream_pool_get(g.pool, &a);
        ck_assert_ptr_eq(got[k], g.bev[63 - k]);
        ck_assert(!prig_closed(&g, 63 - k));
    }
    ck_assert_ptr_null(upstream_pool_get(g.pool, &a));
    prig_close(&g, got, 64);
}
END_TEST

START_TEST(flushing_closes_every_idle_connection_and_stops_the_timer)
{
    struct prig g;
    prig_open(&g, 30);
    struct route_target a = target("10.0.0.8", 80), b = target("10.0.0.9", 80);
    int i = prig_conn(&g), j = prig_conn(&g);
    upstream_pool_put(g.pool, &a, g.bev[i]);
    upstream_pool_put(g.pool, &b, g.bev[j]);
    upstream_pool_flush(g.pool);
    /* Nothing is left pending: the loop returns at once (after closing the
     * sockets) instead of in 30 s. */
    time_t t0 = time(NULL);
    ck_assert_int_eq(event_base_dispatch(g.base), 1);
    ck_assert_int_le(time(NULL) - t0, 1);
    ck_assert(prig_closed(&g, i));
    ck_assert(prig_closed(&g, j));
    prig_close(&g, NULL, 0);
}
END_TEST

Suite *upstream_suite(void)
{
    Suite *s = suite_create("upstream");
    TCase *tc = tcase_create("pool");
    tcase_add_test(tc, a_connection_put_back_is_handed_out_again_to_its_backend_only);
    tcase_add_test(tc, the_newest_idle_connection_is_handed_out_first);
    tcase_add_test(tc, idle_connections_close_after_the_idle_time_oldest_first);
    tcase_add_test(tc, a_connection_taken_and_put_back_starts_its_idle_time_again);
    tcase_add_test(tc, bytes_from_an_idle_backend_close_its_connection);
    tcase_add_test(tc, bytes_or_eof_waiting_keep_an_idle_connection_from_being_handed_out);
    tcase_add_test(tc, at_most_64_idle_connections_per_backend);
    tcase_add_test(tc, flushing_closes_every_idle_connection_and_stops_the_timer);
    suite_add_tcase(s, tc);
    return s;
}
