/*
 * Unit tests for routing/redis.c against a real redis-server that each test
 * starts on a free loopback port (and a unix socket), then kills.  Covered:
 * commands and reply accessors, AUTH (requirepass), the database number, unix
 * sockets, the per-command deadline with a SIGSTOP'd server ("timeout" within
 * about twice the deadline, each callback exactly once, reconnection after
 * SIGCONT), reconnection after kill + restart, subscriptions, freeing the
 * connection inside callbacks, URL parsing and the synchronous client.
 *
 * When redis-server is not installed every test prints a clear SKIP line and
 * passes.  The servers (tests/unit/redis_fixture.c) die with the test process
 * even when an assertion fails mid-test.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "routing/redis.h"
#include "routing/schema.h"
#include "tests/unit/redis_fixture.h"
#include "tests/unit/tests.h"

/* ---- redis-server processes (tests/unit/redis_fixture.c) ---- */

#define SKIP_WITHOUT_REDIS()                                                                       \
    do {                                                                                           \
        if (!rfx_server_path()) {                                                                  \
            fprintf(stderr, "SKIP %s: redis-server not found in PATH (apt-get install redis-server)\n", \
                    __func__);                                                                     \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* Starts s (see rfx_start); the test fails when it does not come up. */
static void srv_start(struct rfx_srv *s, int with_unix)
{
    ck_assert_msg(rfx_start(s, with_unix) == 1, "redis-server did not start on port %d", s->port);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- event loop helpers ---- */

static void tick_cb(evutil_socket_t fd, short w, void *arg)
{
    (void)fd;
    (void)w;
    (void)arg;
}

/* Runs base until *flag becomes nonzero or max_s passes; returns *flag. */
static int run_until(struct event_base *base, volatile int *flag, double max_s)
{
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = { 0, 10000 };
    event_add(tick, &tv);
    double end = now_s() + max_s;
    while (!*flag && now_s() < end)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
    return *flag;
}

static void run_for(struct event_base *base, double s)
{
    int never = 0;
    run_until(base, &never, s);
}

struct st {
    int ups, downs, up;
};

static void state_cb(void *arg, int up)
{
    struct st *s = arg;
    s->up = up;
    if (up)
        s->ups++;
    else
        s->downs++;
}

/* One command's outcome. */
struct res {
    int calls;
    int done;
    int type;
    char err[64];
    char str[256];
    size_t len;
    long long integer;
    size_t elems;
    char elem1[64];
    double at;
};

static void res_cb(void *arg, const struct redis_reply *r, const char *err)
{
    struct res *x = arg;
    x->calls++;
    x->done = 1;
    x->at = now_s();
    snprintf(x->err, sizeof(x->err), "%s", err ? err : "");
    x->type = r ? redis_reply_type(r) : 0;
    size_t len = 0;
    const char *s = r ? redis_reply_str(r, &len) : NULL;
    x->len = len;
    if (s) {
        memcpy(x->str, s, len < sizeof(x->str) - 1 ? len : sizeof(x->str) - 1);
        x->str[len < sizeof(x->str) - 1 ? len : sizeof(x->str) - 1] = '\0';
    }
    x->integer = r ? redis_reply_int(r) : 0;
    x->elems = r ? redis_reply_len(r) : 0;
    if (x->elems > 1) {
        const char *e = redis_reply_str(redis_reply_elem(r, 1), NULL);
        snprintf(x->elem1, sizeof(x->elem1), "%s", e ? e : "");
    }
}

static struct redis_conn *conn_up(struct event_base *base, const char *url, double tmo, struct st *st)
{
    char err[256] = "";
    struct redis_conn *c = redis_conn_new(base, url, tmo, state_cb, st, err, sizeof(err));
    ck_assert_msg(c != NULL, "redis_conn_new(%s): %s", url, err);
    ck_assert_msg(run_until(base, &st->up, 5), "no connection to %s", url);
    ck_assert(redis_conn_is_up(c));
    return c;
}

/* Runs one command to completion. */
static void cmd_wait(struct event_base *base, struct redis_conn *c, struct res *x, int argc, const char **argv)
{
    memset(x, 0, sizeof(*x));
    ck_assert_int_eq(redis_cmd(c, res_cb, x, argc, argv, NULL), 0);
    ck_assert_msg(run_until(base, &x->done, 5), "no reply to %s", argv[0]);
    ck_assert_int_eq(x->calls, 1);
}

/* A PING on c answers PONG. */
static void expect_pong(struct event_base *base, struct redis_conn *c)
{
    struct res x;
    const char *ping[] = { "PING" };
    cmd_wait(base, c, &x, 1, ping);
    ck_assert_str_eq(x.str, "PONG");
}

/* The end of a test: frees c (when still open) and base, stops the server. */
static void test_done(struct event_base *base, struct redis_conn *c, struct rfx_srv *s)
{
    redis_conn_free(c);
    event_base_free(base);
    rfx_stop(s);
}

/* ---- tests ---- */

START_TEST(redis_url_parsing)
{
    static const char *good[] = {
        "redis://127.0.0.1:6379", "redis://localhost:1/0", "redis://:secret@127.0.0.1:6380/3",
        "redis://user:pa%40ss@10.0.0.1:6379", "redis://[::1]:6379/2", "redis://host", "redis://h:7/",
        "unix:///tmp/redis.sock", "unix:///var/run/r.sock?db=4", "unix://:pw@/tmp/r.sock", "REDIS://H:1",
    };
    static const char *bad[] = {
        "", "http://x:1", "redis://", "redis://:6379", "redis://h:0", "redis://h:65536", "redis://h:port",
        "redis://h:1/x", "redis://h:1/-1", "redis://h:1/1234567", "redis://h h:1", "redis://[::1:1",
        "unix://", "unix://relative.sock", "unix:///x?db=a", "redis://:@h:1", "redis://pw@h:1",
        "redis://h:1\n", "redis://:%zz@h:1",
    };
    char err[256];
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        ck_assert_msg(redis_url_check(good[i], err, sizeof(err)) == 0, "rejected %s: %s", good[i], err);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_msg(redis_url_check(bad[i], err, sizeof(err)) == -1, "accepted %s", bad[i]);
        ck_assert_msg(err[0] != '\0', "no message for %s", bad[i]);
    }
    ck_assert_ptr_null(redis_conn_new(NULL, "nope://", 0.2, NULL, NULL, err, sizeof(err)));
}
END_TEST

START_TEST(redis_commands_and_replies)
{
    SKIP_WITHOUT_REDIS();
    struct rfx_srv s = { 0 };
    srv_start(&s, 0);
    struct event_base *base = event_base_new();
    struct st st = { 0 };
    const char *url = s.url;
    struct redis_conn *c = conn_up(base, url, 1.0, &st);
    ck_assert_int_eq(st.ups, 1);

    struct res x;
    const char *set[] = { "SET", "k1", "v\0x" };
    size_t setl[] = { 3, 2, 3 };
    memset(&x, 0, sizeof(x));
    ck_assert_int_eq(redis_cmd(c, res_cb, &x, 3, set, setl), 0);
    ck_assert(run_until(base, &x.done, 5));
    ck_assert_str_eq(x.err, "");
    ck_assert_int_eq(x.type, REDIS_T_STATUS);
    ck_assert_str_eq(x.str, "OK");

    const char *get[] = { "GET", "k1" };
    cmd_wait(base, c, &x, 2, get);
    ck_assert_int_eq(x.type, REDIS_T_STRING);
    ck_assert_uint_eq(x.len, 3);                       /* binary safe */
    ck_assert_int_eq(memcmp(x.str, "v\0x", 3), 0);

    const char *nil[] = { "GET", "missing" };
    cmd_wait(base, c, &x, 2, nil);
    ck_assert_int_eq(x.type, REDIS_T_NIL);

    memset(&x, 0, sizeof(x));
    ck_assert_int_eq(redis_cmdf(c, res_cb, &x, "INCRBY %s %d", "ctr", 41), 0);
    ck_assert(run_until(base, &x.done, 5));
    ck_assert_int_eq(x.type, REDIS_T_INTEGER);
    ck_assert_int_eq(x.integer, 41);

    memset(&x, 0, sizeof(x));
    ck_assert_int_eq(redis_cmdf(c, res_cb, &x, "HSET %s %s %b", "h", "tenant", "acme", (size_t)4), 0);
    ck_assert(run_until(base, &x.done, 5));
    const char *hget[] = { "HMGET", "h", "nope", "tenant" };
    cmd_wait(base, c, &x, 4, hget);
    ck_assert_int_eq(x.type, REDIS_T_ARRAY);
    ck_assert_uint_eq(x.elems, 2);
    ck_assert_str_eq(x.elem1, "acme");

    /* An error reply is a reply: err NULL, type ERROR. */
    const char *wrong[] = { "LPUSH", "h", "x" };
    cmd_wait(base, c, &x, 3, wrong);
    ck_assert_str_eq(x.err, "");
    ck_assert_int_eq(x.type, REDIS_T_ERROR);
    ck_assert(strstr(x.str, "WRONGTYPE") != NULL);

    /* Pipelining: many commands in flight, replies in order, each once. */
    enum { N = 200 };
    static struct res many[N];
    memset(many, 0, sizeof(many));
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(redis_cmdf(c, res_cb, &many[i], "INCR %s", "pipe"), 0);
    ck_assert(run_until(base, &many[N - 1].done, 5));
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(many[i].calls, 1);
        ck_assert_int_eq(many[i].integer, i + 1);
    }

    /* Accessors on NULL / wrong types. */
    ck_assert_int_eq(redis_reply_type(NULL), 0);
    ck_assert_ptr_null(redis_reply_str(NULL, NULL));
    ck_assert_uint_eq(redis_reply_len(NULL), 0);
    ck_assert_ptr_null(redis_reply_elem(NULL, 0));

    redis_conn_free(c);
    ck_assert_int_eq(st.downs, 0);           /* freeing does not call the state callback */
    test_done(base, NULL, &s);
}
END_TEST

START_TEST(redis_auth_and_db)
{
    SKIP_WITHOUT_REDIS();
    struct rfx_srv s = { 0 };
    snprintf(s.pass, sizeof(s.pass), "s3cr@t");
    srv_start(&s, 0);
    struct event_base *base = event_base_new();
    char url[128], err[256];

    /* Wrong password: never reported up, retried with backoff. */
    struct st bad = { 0 };
    snprintf(url, sizeof(url), "redis://:wrong@127.0.0.1:%d", s.port);
    struct redis_conn *cb = redis_conn_new(base, url, 0.5, state_cb, &bad, err, sizeof(err));
    ck_assert_ptr_nonnull(cb);
    run_for(base, 0.5);
    ck_assert_int_eq(bad.ups, 0);
    ck_assert(!redis_conn_is_up(cb));
    ck_assert_int_eq(redis_cmdf(cb, res_cb, NULL, "PING"), -1);
    redis_conn_free(cb);

    /* No password at all: PING fails with NOAUTH, not up. */
    struct st none = { 0 };
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", s.port);
    cb = redis_conn_new(base, url, 0.5, state_cb, &none, err, sizeof(err));
    run_for(base, 0.3);
    ck_assert_int_eq(none.ups, 0);
    redis_conn_free(cb);

    /* Right password (percent-encoded '@') and database 3. */
    struct st st = { 0 };
    snprintf(url, sizeof(url), "redis://:s3cr%%40t@127.0.0.1:%d/3", s.port);
    struct redis_conn *c = conn_up(base, url, 1.0, &st);
    struct res x;
    const char *set[] = { "SET", "dbkey", "three" };
    cmd_wait(base, c, &x, 3, set);
    ck_assert_str_eq(x.str, "OK");

    /* The sync client sees it in db 3 and not in db 0. */
    struct redis_sync *sy = redis_sync_connect(url, 2, err, sizeof(err));
    ck_assert_msg(sy != NULL, "%s", err);
    const char *get[] = { "GET", "dbkey" };
    struct redis_reply *r = redis_sync_cmd(sy, 2, get, NULL, err, sizeof(err));
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(redis_reply_str(r, NULL), "three");
    redis_sync_reply_free(r);
    redis_sync_free(sy);
    snprintf(url, sizeof(url), "redis://:s3cr%%40t@127.0.0.1:%d", s.port);
    sy = redis_sync_connect(url, 2, err, sizeof(err));
    ck_assert_ptr_nonnull(sy);
    r = redis_sync_cmd(sy, 2, get, NULL, err, sizeof(err));
    ck_assert_int_eq(redis_reply_type(r), REDIS_T_NIL);
    redis_sync_reply_free(r);
    redis_sync_free(sy);

    /* Sync client with a wrong password: clear error. */
    snprintf(url, sizeof(url), "redis://:nope@127.0.0.1:%d", s.port);
    ck_assert_ptr_null(redis_sync_connect(url, 2, err, sizeof(err)));
    ck_assert_msg(strstr(err, "handshake") != NULL, "%s", err);

    test_done(base, c, &s);
}
END_TEST

START_TEST(redis_unix_socket)
{
    SKIP_WITHOUT_REDIS();
    struct rfx_srv s = { 0 };
    srv_start(&s, 1);
    struct event_base *base = event_base_new();
    char url[256];
    snprintf(url, sizeof(url), "unix://%s?db=2", s.sock);
    struct st st = { 0 };
    struct redis_conn *c = conn_up(base, url, 1.0, &st);
    struct res x;
    const char *set[] = { "SET", "u", "1" };
    cmd_wait(base, c, &x, 3, set);
    ck_assert_str_eq(x.str, "OK");
    const char *cl[] = { "CLIENT", "INFO" };
    cmd_wait(base, c, &x, 2, cl);
    ck_assert_msg(strstr(x.str, "db=2") != NULL, "%s", x.str);
    redis_conn_free(c);

    /* Sync client over the socket too. */
    char err[256];
    struct redis_sync *sy = redis_sync_connect(url, 2, err, sizeof(err));
    ck_assert_msg(sy != NULL, "%s", err);
    const char *get[] = { "GET", "u" };
    struct redis_reply *r = redis_sync_cmd(sy, 2, get, NULL, err, sizeof(err));
    ck_assert_str_eq(redis_reply_str(r, NULL), "1");
    redis_sync_reply_free(r);
    redis_sync_free(sy);

    /* A missing socket: retried, not up, no crash. */
    struct st st2 = { 0 };
    struct redis_conn *c2 = redis_conn_new(base, "unix:///nonexistent/dir/r.sock", 0.2, state_cb, &st2,
                                           err, sizeof(err));
    ck_assert_ptr_nonnull(c2);
    run_for(base, 0.4);
    ck_assert_int_eq(st2.ups, 0);
    test_done(base, c2, &s);
}
END_TEST

START_TEST(redis_timeout_when_stalled)
{
    SKIP_WITHOUT_REDIS();
    struct rfx_srv s = { 0 };
    srv_start(&s, 0);
    struct event_base *base = event_base_new();
    const char *url = s.url;
    struct st st = { 0 };
    const double tmo = 0.2;
    struct redis_conn *c = conn_up(base, url, tmo, &st);

    kill(s.pid, SIGSTOP);
    struct res a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    double t0 = now_s();
    ck_assert_int_eq(redis_cmdf(c, res_cb, &a, "GET %s", "x"), 0);
    run_for(base, 0.05);
    ck_assert_int_eq(redis_cmdf(c, res_cb, &b, "GET %s", "y"), 0);
    ck_assert(run_until(base, &b.done, 2));
    ck_assert_str_eq(a.err, "timeout");
    ck_assert_str_eq(b.err, "timeout");
    double took = a.at - t0;
    ck_assert_msg(took >= tmo * 0.9 && took <= tmo * 2, "timeout after %.3f s", took);
    ck_assert_int_eq(st.downs, 1);
    ck_assert(!redis_conn_is_up(c));

    /* Still stalled: reconnect attempts time out in their handshake, nothing delivered twice. */
    run_for(base, 1.0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(b.calls, 1);
    ck_assert_int_eq(st.ups, 1);

    kill(s.pid, SIGCONT);
    ck_assert_msg(run_until(base, &st.up, 6), "no reconnection after SIGCONT");
    ck_assert_int_eq(st.ups, 2);
    expect_pong(base, c);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(b.calls, 1);

    test_done(base, c, &s);
}
END_TEST

START_TEST(redis_reconnect_after_restart)
{
    SKIP_WITHOUT_REDIS();
    struct rfx_srv s = { 0 };
    srv_start(&s, 0);
    struct event_base *base = event_base_new();
    const char *url = s.url;
    struct st st = { 0 };
    struct redis_conn *c = conn_up(base, url, 1.0, &st);

    /* A blocking command in flight when the server dies: "disconnected", once. */
    struct res x;
    memset(&x, 0, sizeof(x));
    ck_assert_int_eq(redis_cmdf(c, res_cb, &x, "BLPOP %s %d", "nolist", 0), 0);
    run_for(base, 0.05);
    rfx_kill(&s);
    ck_assert(run_until(base, &x.done, 2));
    ck_assert_str_eq(x.err, "disconnected");
    ck_assert_int_eq(st.downs, 1);
    ck_assert(!redis_conn_is_up(c));
    ck_assert_int_eq(redis_cmdf(c, res_cb, &x, "PING"), -1);

    /* Down for a while: backoff keeps retrying quietly. */
    run_for(base, 0.8);
    ck_assert_int_eq(st.ups, 1);
    srv_start(&s, 0);                         /* same port */
    double t0 = now_s();
    ck_assert_msg(run_until(base, &st.up, 6), "no reconnection after restart");
    ck_assert_msg(now_s() - t0 < 5.5, "reconnect took %.2f s", now_s() - t0);
    expect_pong(base, c);
    ck_assert_int_eq(st.ups, 2);

    test_done(base, c, &s);
}
END_TEST

/* Frees the connection from inside the first reply's callback. */
struct freer {
    struct redis_conn *c;
    struct res r[3];
};

static void free_in_cb(void *arg, const struct redis_reply *r, const char *err)
{
    struct freer *f = arg;
    res_cb(&f->r[0], r, err);
    redis_conn_free(f->c);
    redis_conn_free(f->c);                    /* a second call is harmless */
}

static void free_in_state_cb(void *arg, int up)
{
    struct freer *f = arg;
    if (!up)
        redis_conn_free(f->c);
}

START_TEST(redis_free_inside_callbacks)
{
    SKIP_WITHOUT_REDIS();
    struct rfx_srv s = { 0 };
    srv_start(&s, 0);
    struct event_base *base = event_base_new();
    const char *url = s.url;
    struct st st = { 0 };

    static struct freer f;
    memset(&f, 0, sizeof(f));
    f.c = conn_up(base, url, 1.0, &st);
    ck_assert_int_eq(redis_cmdf(f.c, free_in_cb, &f, "PING"), 0);
    ck_assert_int_eq(redis_cmdf(f.c, res_cb, &f.r[1], "PING"), 0);
    ck_assert_int_eq(redis_cmdf(f.c, res_cb, &f.r[2], "PING"), 0);
    ck_assert(run_until(base, &f.r[2].done, 3));
    ck_assert_int_eq(f.r[0].calls, 1);
    ck_assert_str_eq(f.r[0].err, "");
    /* The others were in flight: each told once, with an error or the reply already parsed. */
    ck_assert_int_eq(f.r[1].calls, 1);
    ck_assert_int_eq(f.r[2].calls, 1);
    run_for(base, 0.2);
    ck_assert_int_eq(f.r[1].calls, 1);
    ck_assert_int_eq(f.r[2].calls, 1);

    /* Free from the state callback when the server dies. */
    memset(&f, 0, sizeof(f));
    char err[128];
    int up = 0;
    f.c = redis_conn_new(base, url, 1.0, free_in_state_cb, &f, err, sizeof(err));
    ck_assert(run_until(base, &up, 0.3) == 0);
    ck_assert(redis_conn_is_up(f.c));
    ck_assert_int_eq(redis_cmdf(f.c, res_cb, &f.r[0], "BLPOP %s %d", "nolist", 0), 0);
    run_for(base, 0.05);
    rfx_kill(&s);
    ck_assert(run_until(base, &f.r[0].done, 2));
    ck_assert_str_eq(f.r[0].err, "disconnected");
    run_for(base, 0.3);                       /* no retry timer left behind on a freed conn */

    /* Free with commands pending: each gets "disconnected" at once. */
    srv_start(&s, 0);
    memset(&st, 0, sizeof(st));
    struct redis_conn *c = conn_up(base, url, 1.0, &st);
    struct res a;
    memset(&a, 0, sizeof(a));
    ck_assert_int_eq(redis_cmdf(c, res_cb, &a, "BLPOP %s %d", "nolist", 0), 0);
    redis_conn_free(c);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_str_eq(a.err, "disconnected");
    run_for(base, 0.2);
    ck_assert_int_eq(a.calls, 1);

    test_done(base, NULL, &s);
}
END_TEST

struct subres {
    int calls;
    int messages;
    int disconnected;
    char last[64];
};

static void sub_cb(void *arg, const struct redis_reply *r, const char *err)
{
    struct subres *x = arg;
    x->calls++;
    if (err) {
        x->disconnected++;
        return;
    }
    if (redis_reply_len(r) == 3) {
        const char *kind = redis_reply_str(redis_reply_elem(r, 0), NULL);
        if (kind && strcmp(kind, "message") == 0) {
            x->messages++;
            snprintf(x->last, sizeof(x->last), "%s", redis_reply_str(redis_reply_elem(r, 2), NULL));
        }
    }
}

START_TEST(redis_subscribe)
{
    SKIP_WITHOUT_REDIS();
    struct rfx_srv s = { 0 };
    srv_start(&s, 0);
    struct event_base *base = event_base_new();
    const char *url = s.url;
    struct st st1 = { 0 }, st2 = { 0 };
    struct redis_conn *sub = conn_up(base, url, 0.1, &st1);
    struct redis_conn *pub = conn_up(base, url, 1.0, &st2);

    /* CLIENT ID before subscribing (for CLIENT TRACKING ... REDIRECT). */
    struct res x;
    const char *cid[] = { "CLIENT", "ID" };
    cmd_wait(base, sub, &x, 2, cid);
    ck_assert_int_eq(x.type, REDIS_T_INTEGER);
    ck_assert_int_gt(x.integer, 0);

    struct subres sr = { 0 };
    const char *sc[] = { "SUBSCRIBE", "tg:events" };
    ck_assert_int_eq(redis_cmd(sub, sub_cb, &sr, 2, sc, NULL), 0);
    run_for(base, 0.1);
    ck_assert_int_ge(sr.calls, 1);            /* the subscribe confirmation */
    /* Only (P)(UN)SUBSCRIBE on a subscribed connection. */
    ck_assert_int_eq(redis_cmdf(sub, res_cb, &x, "GET %s", "k"), -1);

    for (int i = 0; i < 3; i++) {
        memset(&x, 0, sizeof(x));
        ck_assert_int_eq(redis_cmdf(pub, res_cb, &x, "PUBLISH tg:events domain%d.example", i), 0);
        ck_assert(run_until(base, &x.done, 2));
        ck_assert_int_eq(x.integer, 1);
    }
    run_for(base, 0.1);
    ck_assert_int_eq(sr.messages, 3);
    ck_assert_str_eq(sr.last, "domain2.example");

    /* No deadline on subscriptions: idle for longer than cmd timeout, still up. */
    run_for(base, 0.4);
    ck_assert(redis_conn_is_up(sub));
    ck_assert_int_eq(st1.downs, 0);

    /* Server gone: the subscription hears "disconnected" once. */
    rfx_kill(&s);
    run_for(base, 0.3);
    ck_assert_int_eq(sr.disconnected, 1);
    ck_assert_int_eq(st1.downs, 1);

    redis_conn_free(sub);
    redis_conn_free(pub);
    ck_assert_int_eq(sr.disconnected, 1);
    test_done(base, NULL, &s);
}
END_TEST

START_TEST(redis_sync_client_down)
{
    char err[256] = "";
    int port = rfx_free_port();
    ck_assert_int_gt(port, 0);
    char url[128];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    ck_assert_ptr_null(redis_sync_connect(url, 1, err, sizeof(err)));
    ck_assert_msg(strstr(err, "cannot connect") != NULL, "%s", err);
    ck_assert_ptr_null(redis_sync_connect("bogus", 1, err, sizeof(err)));
    ck_assert_msg(strstr(err, "URL") != NULL, "%s", err);
}
END_TEST

/* ---- schema (key layout, value checks) ---- */

START_TEST(schema_keys)
{
    char k[SCHEMA_KEY_MAX];
    ck_assert_int_eq(schema_key_domain(k, sizeof(k), "tg:", "example.com", 11), 21);
    ck_assert_str_eq(k, "tg:domain:example.com");
    ck_assert_int_gt(schema_key_wildcard(k, sizeof(k), "tg:", "example.com", 11), 0);
    ck_assert_str_eq(k, "tg:domain:*.example.com");
    ck_assert_int_gt(schema_key_paths(k, sizeof(k), "x/", "*.example.com", 13), 0);
    ck_assert_str_eq(k, "x/paths:*.example.com");
    ck_assert_int_gt(schema_key_patterns(k, sizeof(k), "tg:"), 0);
    ck_assert_str_eq(k, "tg:patterns");
    ck_assert_int_gt(schema_key_tenant(k, sizeof(k), "tg:", "acme", 4), 0);
    ck_assert_str_eq(k, "tg:tenant:acme");
    ck_assert_int_gt(schema_key_meter(k, sizeof(k), "tg:", "acme", 4, "202402"), 0);
    ck_assert_str_eq(k, "tg:meter:acme:202402");
    /* 2024-02-29 23:59:59 UTC */
    ck_assert_int_gt(schema_key_meter_month(k, sizeof(k), "tg:", "acme", 4, (time_t)1709251199), 0);
    ck_assert_str_eq(k, "tg:meter:acme:202402");
    ck_assert_int_gt(schema_key_meter_day(k, sizeof(k), "tg:", "acme", 4, (time_t)1709251199), 0);
    ck_assert_str_eq(k, "tg:meter:acme:20240229");
    ck_assert_int_gt(schema_key_meter_day(k, sizeof(k), "tg:", "acme", 4, (time_t)1709251200), 0);
    ck_assert_str_eq(k, "tg:meter:acme:20240301");
    ck_assert_int_gt(schema_key_cert(k, sizeof(k), "tg:", "*.a.b", 5), 0);
    ck_assert_str_eq(k, "tg:cert:*.a.b");
    ck_assert_int_gt(schema_key_acme(k, sizeof(k), "tg:", "abc-_XYZ09", 10), 0);
    ck_assert_str_eq(k, "tg:acme:abc-_XYZ09");
    ck_assert_int_eq(schema_key_acme(k, sizeof(k), "tg:", "a/b", 3), -1);
    ck_assert_int_gt(schema_channel_events(k, sizeof(k), "tg:"), 0);
    ck_assert_str_eq(k, "tg:events");
    ck_assert_int_gt(schema_key_domain(k, sizeof(k), "", "h", 1), 0);
    ck_assert_str_eq(k, "domain:h");

    /* Does not fit / bad input. */
    ck_assert_int_eq(schema_key_domain(k, 10, "tg:", "example.com", 11), -1);
    ck_assert_int_eq(schema_key_domain(k, sizeof(k), "tg:", "", 0), -1);
    ck_assert_int_eq(schema_key_domain(k, sizeof(k), "tg:", "a b", 3), -1);
    ck_assert_int_eq(schema_key_domain(k, sizeof(k), "t g", "a", 1), -1);
    ck_assert_int_eq(schema_key_tenant(k, sizeof(k), "tg:", "", 0), -1);
    ck_assert_int_eq(schema_key_meter(k, sizeof(k), "tg:", "a", 1, "202413"), -1);
    ck_assert_int_eq(schema_key_meter(k, sizeof(k), "tg:", "a", 1, "20230229"), -1);
    ck_assert(schema_period_valid("20240229"));
    ck_assert(!schema_period_valid("2024022"));

    /* Families: tracking prefixes and SCAN globs (prefix glob characters escaped). */
    ck_assert_int_gt(schema_key_family(k, sizeof(k), "tg:", SCHEMA_K_DOMAIN, 0), 0);
    ck_assert_str_eq(k, "tg:domain:");
    ck_assert_int_gt(schema_key_family(k, sizeof(k), "t*g[", SCHEMA_K_DOMAIN, 1), 0);
    ck_assert_str_eq(k, "t\\*g\\[domain:*");
    const char *rest;
    size_t rl;
    ck_assert_str_eq(schema_key_split("tg:", "tg:domain:x.y", 13, &rest, &rl), SCHEMA_K_DOMAIN);
    ck_assert_uint_eq(rl, 3);
    ck_assert_int_eq(memcmp(rest, "x.y", 3), 0);
    ck_assert_str_eq(schema_key_split("tg:", "tg:patterns", 11, &rest, &rl), SCHEMA_K_PATTERNS);
    ck_assert_ptr_null(schema_key_split("tg:", "tg:patternsx", 12, &rest, &rl));
    ck_assert_ptr_null(schema_key_split("tg:", "xx:domain:a", 11, &rest, &rl));

    /* Events. */
    ck_assert_int_gt(schema_event_format(k, sizeof(k), SCHEMA_EV_DOMAIN, "a.com", 5), 0);
    ck_assert_str_eq(k, "domain a.com");
    ck_assert_int_eq(schema_event_parse(k, strlen(k), &rest, &rl), SCHEMA_EV_DOMAIN);
    ck_assert_uint_eq(rl, 5);
    ck_assert_int_gt(schema_event_format(k, sizeof(k), SCHEMA_EV_PATTERNS, NULL, 0), 0);
    ck_assert_str_eq(k, "patterns");
    ck_assert_int_eq(schema_event_parse("patterns", 8, &rest, &rl), SCHEMA_EV_PATTERNS);
    ck_assert_int_eq(schema_event_parse("tenant acme", 11, &rest, &rl), SCHEMA_EV_TENANT);
    ck_assert_int_eq(schema_event_parse("domain", 6, &rest, &rl), -1);
    ck_assert_int_eq(schema_event_parse("bogus x", 7, &rest, &rl), -1);
}
END_TEST

START_TEST(schema_values)
{
    char err[256];
    static const char *good[] = { "10.0.0.1:80", "a:1", "[::1]:8080", "app.internal:65535", "a:1, b:2",
                                  "x:1,y:2,z:3" };
    static const int goodn[] = { 1, 1, 1, 1, 2, 3 };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        ck_assert_msg(schema_backends_check(good[i], strlen(good[i]), err, sizeof(err)) == goodn[i], "%s: %s",
                      good[i], err);
    static const char *bad[] = { "", "a", "a:", ":80", "a:0", "a:65536", "a:1,", ",a:1", "a:1,,b:2", "a b:1",
                                 "[::1]", "a:1x" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_msg(schema_backends_check(bad[i], strlen(bad[i]), err, sizeof(err)) == -1, "accepted %s", bad[i]);
        ck_assert(err[0]);
    }
    char many[1024] = "";
    for (int i = 0; i < 65; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "%sh:%d", i ? "," : "", i + 1);
    ck_assert_int_eq(schema_backends_check(many, strlen(many), err, sizeof(err)), -1);

    ck_assert_int_eq(schema_lb_parse("round_robin", 11), 0);
    ck_assert_int_eq(schema_lb_parse("least_conn", 10), 1);
    ck_assert_int_eq(schema_lb_parse("random", 6), -1);
    ck_assert_str_eq(schema_lb_name(1), "least_conn");
    ck_assert_int_eq(schema_cap_action_parse("block", 5), 0);
    ck_assert_int_eq(schema_cap_action_parse("throttle", 8), 1);
    ck_assert_int_eq(schema_cap_action_parse("Block", 5), -1);
    ck_assert_int_eq(schema_flag_parse("1", 1), 1);
    ck_assert_int_eq(schema_flag_parse("0", 1), 0);
    ck_assert_int_eq(schema_flag_parse("yes", 3), -1);
    int64_t v;
    ck_assert_int_eq(schema_u64_parse("9223372036854775807", 19, &v), 0);
    ck_assert(v == INT64_MAX);
    ck_assert_int_eq(schema_u64_parse("9223372036854775808", 19, &v), -1);
    ck_assert_int_eq(schema_u64_parse("-1", 2, &v), -1);
    ck_assert_int_eq(schema_u64_parse("", 0, &v), -1);
    ck_assert_int_eq(schema_u64_parse("1 ", 2, &v), -1);
    ck_assert(schema_tenant_valid("acme-1", 6));
    ck_assert(!schema_tenant_valid("a b", 3));

    struct schema_pattern_line pl;
    const char *line = "^pr-(\\d+)\\.preview\\.example\\.com$  acme   pr-$1.internal:8080";
    ck_assert_int_eq(schema_pattern_split(line, strlen(line), &pl, err, sizeof(err)), 0);
    ck_assert_uint_eq(pl.tenant_len, 4);
    ck_assert_int_eq(memcmp(pl.tmpl, "pr-$1.internal:8080", pl.tmpl_len), 0);
    ck_assert_int_eq(schema_pattern_split("^x$ acme", 8, &pl, err, sizeof(err)), -1);
    ck_assert_int_eq(schema_pattern_split("^x$ acme ${a:1", 14, &pl, err, sizeof(err)), -1);
    char buf[256];
    ck_assert_int_gt(schema_pattern_format(buf, sizeof(buf), "^(.+)\\.x$", "t", "${1}.b:80"), 0);
    ck_assert_str_eq(buf, "^(.+)\\.x$ t ${1}.b:80");
    ck_assert_int_eq(schema_pattern_format(buf, sizeof(buf), "^a b$", "t", "b:80"), -1);

    struct schema_path_line ph;
    ck_assert_int_eq(schema_path_split("/api 10.0.0.1:80,10.0.0.2:80", 28, &ph, err, sizeof(err)), 0);
    ck_assert(!ph.is_regex);
    ck_assert_uint_eq(ph.match_len, 4);
    ck_assert_uint_eq(ph.backends_len, 23);
    ck_assert_int_eq(schema_path_split("~^/v[0-9]+/ b:1", 15, &ph, err, sizeof(err)), 0);
    ck_assert(ph.is_regex);
    ck_assert_int_eq(memcmp(ph.match, "^/v[0-9]+/", ph.match_len), 0);
    ck_assert_int_eq(schema_path_split("api b:1", 7, &ph, err, sizeof(err)), -1);
    ck_assert_int_eq(schema_path_split("/api", 4, &ph, err, sizeof(err)), -1);
    ck_assert_int_eq(schema_path_split("/api bad", 8, &ph, err, sizeof(err)), -1);
    ck_assert_int_eq(schema_path_split("~ b:1", 5, &ph, err, sizeof(err)), -1);
}
END_TEST

Suite *redis_suite(void)
{
    Suite *s = suite_create("redis");
    TCase *tc = tcase_create("redis");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, redis_url_parsing);
    tcase_add_test(tc, redis_sync_client_down);
    tcase_add_test(tc, redis_commands_and_replies);
    tcase_add_test(tc, redis_auth_and_db);
    tcase_add_test(tc, redis_unix_socket);
    tcase_add_test(tc, redis_timeout_when_stalled);
    tcase_add_test(tc, redis_reconnect_after_restart);
    tcase_add_test(tc, redis_free_inside_callbacks);
    tcase_add_test(tc, redis_subscribe);
    suite_add_tcase(s, tc);
    TCase *ts = tcase_create("schema");
    tcase_add_test(ts, schema_keys);
    tcase_add_test(ts, schema_values);
    suite_add_tcase(s, ts);
    return s;
}
