/*
 * Unit tests for routing/: the Host normaliser, static routes through
 * route.h, backend picking and passive health, and (match.h, cache.h) the
 * pure parts of the Redis routing: matching order, wildcard one-label rule,
 * pattern substitution, path rules, LRU eviction, bad data.
 */
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "routing/balance.h"
#include "routing/cache.h"
#include "routing/host.h"
#include "routing/hosts.h"
#include "routing/match.h"
#include "routing/redis.h"
#include "routing/route.h"
#include "tests/unit/redis_fixture.h"
#include "tests/unit/tests.h"

/* ---- host normalisation ---- */

static int norm(const char *in, char *out)
{
    return host_normalise(in, strlen(in), out);
}

START_TEST(host_accepts_and_normalises)
{
    static const struct { const char *in, *out; } ok[] = {
        {"example.com", "example.com"},
        {"EXAMPLE.Com", "example.com"},
        {"example.com.", "example.com"},
        {"example.com:8080", "example.com"},
        {"Example.COM.:443", "example.com"},
        {"example.com:", "example.com"},
        {"  a.b  ", "a.b"},
        {"localhost", "localhost"},
        {"127.0.0.1:80", "127.0.0.1"},
        {"[::1]", "[::1]"},
        {"[::1]:8080", "[::1]"},
        {"[2001:DB8::1]:1", "[2001:db8::1]"},
        /* one spelling per address (RFC 5952), as browsers send it */
        {"[2001:DB8:0:0::1]", "[2001:db8::1]"},
        {"[2001:0db8:0000:0000:0000:0000:0000:0001]:443", "[2001:db8::1]"},
        {"[0:0:0:0:0:0:0:1]", "[::1]"},
        {"[::FFFF:127.0.0.1]", "[::ffff:127.0.0.1]"},
        {"my_host-1.example", "my_host-1.example"},
        {"x", "x"},
    };
    char out[HOST_MAX + 1];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int n = norm(ok[i].in, out);
        ck_assert_msg(n >= 0, "rejected %s", ok[i].in);
        ck_assert_str_eq(out, ok[i].out);
        ck_assert_int_eq(n, (int)strlen(ok[i].out));
    }
}
END_TEST

START_TEST(host_rejects_invalid)
{
    static const char *bad[] = {
        "", " ", ".", "..", ".example.com", "a..b", "example.com..", "exa mple.com", "example.com:abc",
        "example.com:123456", "example.com:65536", "example.com:80:80", "[::1", "[::1]x", "[::1]:x",
        "[zz::1]", "[]", "[::1%25eth0]", "a/b", "a@b", "*.example.com", "ex\"ample", "é.com",
        "user:pass@host",
    };
    char out[HOST_MAX + 1];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(norm(bad[i], out) < 0, "accepted '%s'", bad[i]);
    /* A NUL byte inside the value is not a terminator. */
    ck_assert_int_lt(host_normalise("a\0b", 3, out), 0);
}
END_TEST

START_TEST(host_length_limits)
{
    char in[600], out[HOST_MAX + 1];
    memset(in, 'a', 63);
    in[63] = '\0';
    ck_assert_int_eq(norm(in, out), 63);
    memset(in, 'a', 64);
    in[64] = '\0';
    ck_assert_int_lt(norm(in, out), 0);       /* label of 64 bytes */
    /* 253 bytes in labels of 50: accepted; 254 rejected. */
    size_t n = 0;
    while (n < 253) {
        size_t take = 253 - n < 50 ? 253 - n : 50;
        memset(in + n, 'b', take);
        n += take;
        if (n < 253)
            in[n++] = '.';
    }
    in[n] = '\0';
    ck_assert_int_eq(norm(in, out), 253);
    in[n] = '.';                                /* trailing dot does not count */
    in[n + 1] = '\0';
    ck_assert_int_eq(norm(in, out), 253);
    in[n] = 'c';
    ck_assert_int_lt(norm(in, out), 0);
}
END_TEST

START_TEST(host_zone_one_label)
{
    size_t zl = 0;
    const char *z = host_zone("a.b.example.com", 15, &zl);
    ck_assert_ptr_nonnull(z);
    ck_assert_int_eq((int)zl, 13);
    ck_assert(memcmp(z, "b.example.com", zl) == 0);
    z = host_zone("example.com", 11, &zl);
    ck_assert_ptr_nonnull(z);
    ck_assert(memcmp(z, "com", zl) == 0 && zl == 3);
    ck_assert_ptr_null(host_zone("localhost", 9, &zl));
    ck_assert_ptr_null(host_zone("10.0.0.1", 8, &zl));
    ck_assert_ptr_null(host_zone("[::1]", 5, &zl));
}
END_TEST

/* Collects hosts_find()'s addresses as text ("1.2.3.4 ::1 "). */
static void hx_collect(void *arg, const struct sockaddr *sa, socklen_t len)
{
    char *out = arg, buf[INET6_ADDRSTRLEN];
    const void *a = sa->sa_family == AF_INET ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
                                             : (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    ck_assert(len == (sa->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)));
    ck_assert_ptr_nonnull(inet_ntop(sa->sa_family, a, buf, sizeof(buf)));
    strcat(out, buf);
    strcat(out, " ");
}

static const char *hx_find(const struct hosts *h, const char *name)
{
    static char out[512];
    out[0] = '\0';
    size_t n = hosts_find(h, name, strlen(name), hx_collect, out);
    size_t spaces = 0;
    for (const char *p = out; *p; p++)
        spaces += *p == ' ';
    ck_assert_uint_eq(n, spaces);
    return out;
}

/*
 * The hosts file as glibc reads it: an address then names (canonical name
 * and aliases), blanks (tabs, CR of a CRLF file) between, '#' comments, bad
 * or scoped addresses skipped; names match whatever their case and one
 * trailing dot (either side); a name on several lines has every address,
 * in file order.
 */
START_TEST(hosts_file_rules)
{
    static const char text[] =
        "# comment line\n"
        "127.0.0.1\tlocalhost\n"
        "10.0.0.1 db.internal DB2   # a comment after names\n"
        "\n"
        "   \t  \n"
        "fd00::5 db.internal\r\n"
        "10.0.0.9#db.internal\n"              /* the names are in the comment */
        "300.1.1.1 bad.internal\n"           /* not an address */
        "fe80::1%eth0 scoped.internal\n"     /* scoped: skipped */
        "db.internal 10.0.0.3\n"             /* name first: the address does not parse */
        "10.0.0.2 Db.Internal. abs.internal.\n"
        "10.0.0.1 db.internal\n"             /* a repeat is reported again */
        "10.0.0.7";                          /* no newline, no name */
    struct hosts *h = hosts_parse(text, sizeof(text) - 1);
    ck_assert_ptr_nonnull(h);
    ck_assert_str_eq(hx_find(h, "db.internal"), "10.0.0.1 fd00::5 10.0.0.2 10.0.0.1 ");
    ck_assert_str_eq(hx_find(h, "DB.INTERNAL."), "10.0.0.1 fd00::5 10.0.0.2 10.0.0.1 ");
    ck_assert_str_eq(hx_find(h, "db2"), "10.0.0.1 ");
    ck_assert_str_eq(hx_find(h, "abs.internal"), "10.0.0.2 ");
    ck_assert_str_eq(hx_find(h, "abs.internal."), "10.0.0.2 ");
    ck_assert_str_eq(hx_find(h, "localhost"), "127.0.0.1 ");
    ck_assert_str_eq(hx_find(h, "db"), "");
    ck_assert_str_eq(hx_find(h, "db.internal.."), "");
    ck_assert_str_eq(hx_find(h, "bad.internal"), "");
    ck_assert_str_eq(hx_find(h, "scoped.internal"), "");
    ck_assert_str_eq(hx_find(h, "10.0.0.3"), "");
    ck_assert_str_eq(hx_find(h, "a comment"), "");
    ck_assert_str_eq(hx_find(h, "comment"), "");
    ck_assert_str_eq(hx_find(h, ""), "");
    ck_assert_str_eq(hx_find(h, "."), "");
    ck_assert_uint_eq(hosts_count(h), 7);
    hosts_free(h);
    ck_assert_str_eq(hx_find(NULL, "db.internal"), "");
}
END_TEST

/* hosts_load(): a missing file or a directory is an empty table; a file is read whole. */
START_TEST(hosts_file_load)
{
    char dir[] = "/tmp/tg-hostsf-XXXXXX", path[300];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/missing", dir);
    struct hosts *h = hosts_load(path);
    ck_assert_ptr_nonnull(h);
    ck_assert_uint_eq(hosts_count(h), 0);
    hosts_free(h);
    h = hosts_load(dir);
    ck_assert_ptr_nonnull(h);
    ck_assert_uint_eq(hosts_count(h), 0);
    hosts_free(h);
    /* 20,000 names: the table finds each of them (a sorted table, not the first few). */
    snprintf(path, sizeof(path), "%s/hosts", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 20000; i++)
        fprintf(f, "10.%d.%d.%d n%d.internal\n", i >> 16, (i >> 8) & 255, i & 255, 19999 - i);
    fclose(f);
    h = hosts_load(path);
    ck_assert_ptr_nonnull(h);
    ck_assert_uint_eq(hosts_count(h), 20000);
    ck_assert_str_eq(hx_find(h, "n19999.internal"), "10.0.0.0 ");
    ck_assert_str_eq(hx_find(h, "n0.internal"), "10.0.78.31 ");
    ck_assert_str_eq(hx_find(h, "n12345.internal"), "10.0.29.230 ");
    ck_assert_str_eq(hx_find(h, "n20000.internal"), "");
    hosts_free(h);
    unlink(path);
    rmdir(dir);
}
END_TEST

START_TEST(host_parse_backend_addresses)
{
    char name[HOST_MAX + 1];
    int port = 0;
    ck_assert_int_eq(host_parse_hostport("127.0.0.1:8080", 14, name, sizeof(name), &port), 0);
    ck_assert_str_eq(name, "127.0.0.1");
    ck_assert_int_eq(port, 8080);
    ck_assert_int_eq(host_parse_hostport("[::1]:81", 8, name, sizeof(name), &port), 0);
    ck_assert_str_eq(name, "::1");
    ck_assert_int_eq(port, 81);
    ck_assert_int_eq(host_parse_hostport("App.Internal:9000", 17, name, sizeof(name), &port), 0);
    ck_assert_str_eq(name, "app.internal");
    static const char *bad[] = {"127.0.0.1", "127.0.0.1:", ":80", "h:0", "h:65536", "h:8o", "h:80 ",
                                "[::1]", "[::1]80", "a b:80", "h:123456"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(host_parse_hostport(bad[i], strlen(bad[i]), name, sizeof(name), &port) < 0,
                      "accepted %s", bad[i]);
    ck_assert_int_lt(host_parse_hostport("abcdef:80", 9, name, 4, &port), 0);   /* name too long */
}
END_TEST

/* ---- static routes through route.h ---- */

struct got {
    int calls;
    struct route_result res;
    char tenant[64];
};

static void got_cb(void *arg, const struct route_result *res)
{
    struct got *g = arg;
    g->calls++;
    g->res = *res;
    g->tenant[0] = '\0';
    if (res->tenant)
        snprintf(g->tenant, sizeof(g->tenant), "%s", res->tenant);
}

static void static_cfg(struct tg_config *cfg, struct cfg_route *routes, size_t n)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->routes = routes;
    cfg->n_routes = n;
    cfg->route_cache_size = 1000;
    cfg->route_cache_ttl = 60;
    cfg->route_negative_ttl = 5;
    cfg->route_stale_max_age = 3600;
    cfg->redis_timeout = 0.2;
    cfg->backend_cooldown = 10;
}

static struct route_ctx *static_ctx(struct tg_config *cfg)
{
    static struct cfg_route routes[] = {
        {(char *)"app.example.com", (char *)"127.0.0.1:9001,127.0.0.1:9002, 127.0.0.1:9003", 0},
        {(char *)"v6.example.com", (char *)"[::1]:9004", 0},
        {(char *)"named.example.com", (char *)"localhost:9005", 0},
    };
    static_cfg(cfg, routes, 3);
    char err[256] = "";
    struct route_ctx *rc = route_ctx_new(NULL, cfg, NULL, 0, err, sizeof(err));
    ck_assert_msg(rc != NULL, "route_ctx_new: %s", err);
    return rc;
}

START_TEST(static_lookup_sync)
{
    struct tg_config cfg;
    struct route_ctx *rc = static_ctx(&cfg);
    struct got g = {0};
    ck_assert_ptr_null(route_lookup(rc, "APP.example.com.:8080", 21, "/", 1, got_cb, &g));
    ck_assert_int_eq(g.calls, 1);
    ck_assert_int_eq(g.res.status, ROUTE_OK);
    ck_assert_str_eq(g.tenant, "default");
    ck_assert_int_eq((int)g.res.policy.cap_bytes, -1);
    ck_assert_int_eq(g.res.policy.suspended, 0);
    ck_assert_int_eq((int)route_backends_count(g.res.backends), 3);

    memset(&g, 0, sizeof(g));
    ck_assert_ptr_null(route_lookup(rc, "other.example.com", 17, "/", 1, got_cb, &g));
    ck_assert_int_eq(g.calls, 1);
    ck_assert_int_eq(g.res.status, ROUTE_NOT_FOUND);

    memset(&g, 0, sizeof(g));
    ck_assert_ptr_null(route_lookup(rc, "bad host", 8, "/", 1, got_cb, &g));
    ck_assert_int_eq(g.calls, 1);
    ck_assert_int_eq(g.res.status, ROUTE_BAD_HOST);

    memset(&g, 0, sizeof(g));
    route_lookup(rc, "named.example.com", 17, "/", 1, got_cb, &g);
    ck_assert_int_eq(g.res.status, ROUTE_OK);
    struct route_target t;
    uint64_t tried = 0;
    ck_assert_int_eq(route_pick(rc, g.res.backends, &tried, &t), 0);
    ck_assert_str_eq(t.name, "localhost:9005");
    ck_assert_int_eq(t.addr.ss_family, AF_INET);
    ck_assert_int_eq(ntohs(((struct sockaddr_in *)&t.addr)->sin_port), 9005);
    route_report(rc, g.res.backends, &t, ROUTE_OUTCOME_OK);
    route_release(rc, g.res.backends, &t);

    ck_assert_int_eq(route_degraded(), 0);
    route_ctx_free(rc);
}
END_TEST

/*
 * A name with an IPv4 and an IPv6 address is two backends of the set (as
 * nginx makes each address a peer): localhost is 127.0.0.1 then ::1, both
 * named "localhost:P"; when the IPv4 one refuses, the same request moves to
 * the IPv6 one, and the refusing address cools down and is skipped.
 */
START_TEST(static_name_every_address)
{
    struct tg_config cfg;
    struct route_ctx *rc = static_ctx(&cfg);
    struct got g = {0};
    route_lookup(rc, "named.example.com", 17, "/", 1, got_cb, &g);
    ck_assert_int_eq(g.res.status, ROUTE_OK);
    const struct route_backends *set = g.res.backends;
    ck_assert_int_eq((int)route_backends_count(set), 2);
    uint64_t tried = 0;
    struct route_target t;
    ck_assert_int_eq(route_pick(rc, set, &tried, &t), 0);
    ck_assert_int_eq(t.addr.ss_family, AF_INET);
    route_report(rc, set, &t, ROUTE_OUTCOME_CONNECT_FAIL);
    route_release(rc, set, &t);
    ck_assert_int_eq(route_pick(rc, set, &tried, &t), 0);
    ck_assert_str_eq(t.name, "localhost:9005");
    ck_assert_int_eq(t.addr.ss_family, AF_INET6);
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&t.addr;
    ck_assert(IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr));
    ck_assert_int_eq(ntohs(in6->sin6_port), 9005);
    ck_assert_uint_eq(tried, 3);
    route_report(rc, set, &t, ROUTE_OUTCOME_OK);
    route_release(rc, set, &t);
    ck_assert_int_eq(route_pick(rc, set, &tried, &t), -1);
    /* The next requests skip the cooling IPv4 address. */
    for (int i = 0; i < 4; i++) {
        tried = 0;
        ck_assert_int_eq(route_pick(rc, set, &tried, &t), 0);
        ck_assert_int_eq(t.addr.ss_family, AF_INET6);
        route_release(rc, set, &t);
    }
    route_ctx_free(rc);
}
END_TEST

/*
 * A set never grows past 64 backends (the tried-mask's bits): every name
 * keeps one address, the names listed first get their others while room is
 * left, and one request can still walk all 64.
 */
START_TEST(static_name_addresses_capped)
{
    static char list[64 * 20];
    static struct cfg_route routes[2];
    size_t off = 0;
    for (int i = 1; i <= 40; i++)
        off += (size_t)snprintf(list + off, sizeof(list) - off, "%slocalhost:%d", i > 1 ? "," : "", 1000 + i);
    routes[0] = (struct cfg_route){(char *)"cap.example.com", list, 0};
    struct tg_config cfg;
    static_cfg(&cfg, routes, 1);
    char err[256] = "";
    struct route_ctx *rc = route_ctx_new(NULL, &cfg, NULL, 0, err, sizeof(err));
    ck_assert_msg(rc != NULL, "%s", err);
    struct got g = {0};
    route_lookup(rc, "cap.example.com", 15, "/", 1, got_cb, &g);
    ck_assert_int_eq(g.res.status, ROUTE_OK);
    ck_assert_int_eq((int)route_backends_count(g.res.backends), 64);
    uint64_t tried = 0;
    struct route_target t;
    int v6 = 0, ports[41] = {0};
    for (int i = 0; i < 64; i++) {
        ck_assert_int_eq(route_pick(rc, g.res.backends, &tried, &t), 0);
        v6 += t.addr.ss_family == AF_INET6;
        int port = ntohs(((struct sockaddr_in *)&t.addr)->sin_port);
        ck_assert(port > 1000 && port <= 1040);
        ports[port - 1000]++;
        route_release(rc, g.res.backends, &t);
    }
    ck_assert_int_eq(route_pick(rc, g.res.backends, &tried, &t), -1);
    ck_assert_uint_eq(tried, ~0ULL);
    ck_assert_int_eq(v6, 24);
    for (int i = 1; i <= 40; i++)
        ck_assert_int_eq(ports[i], i <= 24 ? 2 : 1);
    route_ctx_free(rc);
}
END_TEST

START_TEST(static_entry_outlives_ctx)
{
    struct tg_config cfg;
    struct route_ctx *rc = static_ctx(&cfg);
    struct got g = {0};
    route_lookup(rc, "v6.example.com", 14, "/", 1, got_cb, &g);
    ck_assert_int_eq(g.res.status, ROUTE_OK);
    route_entry_ref(g.res.entry);
    route_ctx_free(rc);
    /* Still valid after the ctx is gone (ASan checks this). */
    ck_assert_int_eq((int)route_backends_count(g.res.backends), 1);
    ck_assert_str_eq(g.res.tenant, "default");
    route_entry_unref(g.res.entry);
}
END_TEST

START_TEST(static_bad_config)
{
    static struct cfg_route bad1[] = {{(char *)"a.example", (char *)"127.0.0.1", 0}};
    static struct cfg_route bad2[] = {{(char *)"a b", (char *)"127.0.0.1:80", 0}};
    static struct cfg_route bad3[] = {{(char *)"a.example", (char *)"127.0.0.1:80,,127.0.0.1:81", 0}};
    struct cfg_route *all[] = {bad1, bad2, bad3};
    for (size_t i = 0; i < 3; i++) {
        struct tg_config cfg;
        static_cfg(&cfg, all[i], 1);
        char err[256] = "";
        struct route_ctx *rc = route_ctx_new(NULL, &cfg, NULL, 0, err, sizeof(err));
        ck_assert_ptr_null(rc);
        ck_assert(err[0] != '\0');
    }
}
END_TEST

START_TEST(pick_round_robin_and_tried_mask)
{
    struct tg_config cfg;
    struct route_ctx *rc = static_ctx(&cfg);
    struct got g = {0};
    route_lookup(rc, "app.example.com", 15, "/", 1, got_cb, &g);
    const struct route_backends *set = g.res.backends;
    int seen[3] = {0};
    for (int i = 0; i < 6; i++) {
        uint64_t tried = 0;
        struct route_target t;
        ck_assert_int_eq(route_pick(rc, set, &tried, &t), 0);
        ck_assert_uint_eq(tried, 1ULL << t.index);
        seen[t.index]++;
        route_report(rc, set, &t, ROUTE_OUTCOME_OK);
        route_release(rc, set, &t);
    }
    ck_assert_int_eq(seen[0], 2);
    ck_assert_int_eq(seen[1], 2);
    ck_assert_int_eq(seen[2], 2);

    /* One request walks the set once, then gets -1. */
    uint64_t tried = 0;
    struct route_target t;
    unsigned mask = 0;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(route_pick(rc, set, &tried, &t), 0);
        ck_assert((mask & (1u << t.index)) == 0);
        mask |= 1u << t.index;
        route_report(rc, set, &t, ROUTE_OUTCOME_ERROR);
    }
    ck_assert_int_eq(route_pick(rc, set, &tried, &t), -1);
    route_ctx_free(rc);
}
END_TEST

START_TEST(pick_passive_health_cooldown)
{
    struct tg_config cfg;
    struct route_ctx *rc = static_ctx(&cfg);
    struct got g = {0};
    route_lookup(rc, "app.example.com", 15, "/", 1, got_cb, &g);
    const struct route_backends *set = g.res.backends;
    uint64_t tried = 0;
    struct route_target t;
    ck_assert_int_eq(route_pick(rc, set, &tried, &t), 0);
    unsigned dead = t.index;
    route_report(rc, set, &t, ROUTE_OUTCOME_CONNECT_FAIL);
    /* The cooling backend is skipped by the next 20 requests. */
    for (int i = 0; i < 20; i++) {
        tried = 0;
        ck_assert_int_eq(route_pick(rc, set, &tried, &t), 0);
        ck_assert_uint_ne(t.index, dead);
        route_report(rc, set, &t, ROUTE_OUTCOME_OK);
    }
    /* All cooling: one is still tried rather than failing at once. */
    for (int i = 0; i < 3; i++) {
        tried = 0;
        ck_assert_int_eq(route_pick(rc, set, &tried, &t), 0);
        route_report(rc, set, &t, ROUTE_OUTCOME_CONNECT_TIMEOUT);
    }
    tried = 0;
    ck_assert_int_eq(route_pick(rc, set, &tried, &t), 0);
    route_report(rc, set, &t, ROUTE_OUTCOME_OK);
    route_ctx_free(rc);
}
END_TEST

static void set_addr(struct bal_backend *b, int port)
{
    struct sockaddr_in *in = (struct sockaddr_in *)&b->addr;
    memset(b, 0, sizeof(*b));
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    in->sin_addr.s_addr = htonl(0x7f000001);
    b->addrlen = sizeof(*in);
    snprintf(b->name, sizeof(b->name), "127.0.0.1:%d", port);
}

/* A backend that failed before answering (reset, read timeout, a broken
 * head) cools down like one that refused; one that broke off an answer it
 * had begun does not. */
START_TEST(pick_failure_before_answer_cools_mid_answer_does_not)
{
    struct route_backends *s = bal_set_new(3, BAL_ROUND_ROBIN);
    ck_assert_ptr_nonnull(s);
    for (int i = 0; i < 3; i++)
        set_addr(&s->b[i], 9001 + i);
    struct bal_health *h = bal_health_new();
    ck_assert_ptr_nonnull(h);
    uint64_t tried = 0;
    int x = bal_pick(h, s, &tried, 1.0);
    bal_report(h, s, (size_t)x, ROUTE_OUTCOME_ERROR, 1.0, 10);
    bal_release(h, s, (size_t)x);
    ck_assert(!bal_cooling(h, (struct sockaddr *)&s->b[x].addr, s->b[x].addrlen, 2.0));
    bal_report(h, s, (size_t)x, ROUTE_OUTCOME_FAILED, 1.0, 10);
    ck_assert(bal_cooling(h, (struct sockaddr *)&s->b[x].addr, s->b[x].addrlen, 2.0));
    ck_assert(!bal_cooling(h, (struct sockaddr *)&s->b[x].addr, s->b[x].addrlen, 11.5));
    for (int i = 0; i < 6; i++) {
        tried = 0;
        int y = bal_pick(h, s, &tried, 2.0);
        ck_assert_int_ne(y, x);
        bal_release(h, s, (size_t)y);
    }
    bal_health_free(h);
    bal_set_free(s);
}
END_TEST

START_TEST(least_conn_prefers_idle)
{
    struct bal_health *h = bal_health_new();
    struct route_backends *s = bal_set_new(3, BAL_LEAST_CONN);
    for (int i = 0; i < 3; i++)
        set_addr(&s->b[i], 7000 + i);
    uint64_t tried = 0;
    int a = bal_pick(h, s, &tried, 1.0);   /* busy: a */
    tried = 0;
    int b = bal_pick(h, s, &tried, 1.0);   /* busy: a, b */
    ck_assert_int_ne(a, b);
    tried = 0;
    int c = bal_pick(h, s, &tried, 1.0);
    ck_assert_int_ne(c, a);
    ck_assert_int_ne(c, b);
    /* A report (a response head came) does not end the exchange: b is still
     * busy until its release, however many reports came before. */
    bal_report(h, s, (size_t)b, ROUTE_OUTCOME_OK, 1.0, 10);
    bal_report(h, s, (size_t)b, ROUTE_OUTCOME_ERROR, 1.0, 10);
    ck_assert_int_eq(bal_active(h, (struct sockaddr *)&s->b[b].addr, s->b[b].addrlen), 1);
    bal_release(h, s, (size_t)b);
    /* b is the only idle one now, whatever the cursor says. */
    for (int i = 0; i < 3; i++) {
        tried = 0;
        int x = bal_pick(h, s, &tried, 1.0);
        ck_assert_int_eq(x, b);
        bal_report(h, s, (size_t)x, ROUTE_OUTCOME_OK, 1.0, 10);
        bal_release(h, s, (size_t)x);
    }
    ck_assert_int_eq(bal_active(h, (struct sockaddr *)&s->b[a].addr, s->b[a].addrlen), 1);
    ck_assert_int_eq(bal_active(h, (struct sockaddr *)&s->b[b].addr, s->b[b].addrlen), 0);
    /* A release never takes the count below zero. */
    bal_release(h, s, (size_t)b);
    ck_assert_int_eq(bal_active(h, (struct sockaddr *)&s->b[b].addr, s->b[b].addrlen), 0);
    /* Cool-down ends after its time. */
    bal_report(h, s, (size_t)a, ROUTE_OUTCOME_CONNECT_FAIL, 1.0, 10);
    ck_assert(bal_cooling(h, (struct sockaddr *)&s->b[a].addr, s->b[a].addrlen, 5.0));
    ck_assert(!bal_cooling(h, (struct sockaddr *)&s->b[a].addr, s->b[a].addrlen, 11.5));
    ck_assert_int_eq(bal_lb_parse("least_conn", 10), BAL_LEAST_CONN);
    ck_assert_int_eq(bal_lb_parse("round_robin", 11), BAL_ROUND_ROBIN);
    ck_assert_int_eq(bal_lb_parse("random", 6), -1);
    ck_assert_ptr_null(bal_set_new(0, 0));
    ck_assert_ptr_null(bal_set_new(BAL_MAX_BACKENDS + 1, 0));
    bal_set_free(s);
    bal_health_free(h);
}
END_TEST


/* ---- match.h: backend lists ---- */

START_TEST(backends_split_lists)
{
    struct match_addr a[MATCH_MAX_BACKENDS];
    char err[160];
    const char *l = "127.0.0.1:80, app.internal:8080 ,[::1]:81";
    ck_assert_int_eq(match_backends_split(l, strlen(l), a, MATCH_MAX_BACKENDS, err, sizeof(err)), 3);
    ck_assert_str_eq(a[0].text, "127.0.0.1:80");
    ck_assert_str_eq(a[1].name, "app.internal");
    ck_assert_int_eq(a[1].port, 8080);
    ck_assert_str_eq(a[2].name, "::1");
    static const char *bad[] = {"", ",", "127.0.0.1:80,", ",127.0.0.1:80", "127.0.0.1", "h:99999", "a b:80",
                                "127.0.0.1:80,,127.0.0.1:81"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(match_backends_split(bad[i], strlen(bad[i]), a, MATCH_MAX_BACKENDS, err, sizeof(err)) < 0,
                      "accepted '%s'", bad[i]);
    /* 65 backends: more than a tried-mask holds. */
    char big[65 * 20] = "";
    for (int i = 0; i < 65; i++)
        snprintf(big + strlen(big), sizeof(big) - strlen(big), "%s127.0.0.1:%d", i ? "," : "", 1000 + i);
    ck_assert_int_lt(match_backends_split(big, strlen(big), a, MATCH_MAX_BACKENDS, err, sizeof(err)), 0);
}
END_TEST

/* ---- match.h: host patterns ---- */

static struct match_pattern *pat(const char *line)
{
    char err[200] = "";
    struct match_pattern *p = match_pattern_new(line, strlen(line), err, sizeof(err));
    ck_assert_msg(p != NULL, "pattern '%s': %s", line, err);
    return p;
}

static int run(struct match_pattern *p, const char *host, char *out, size_t cap)
{
    char err[200];
    return match_pattern_exec(p, host, strlen(host), out, cap, err, sizeof(err));
}

START_TEST(pattern_substitution)
{
    char out[256];
    struct match_pattern *p = pat("pr-(\\d+)\\.preview\\.example\\.com  t-preview   pr-$1.svc:8080");
    ck_assert_str_eq(match_pattern_tenant(p), "t-preview");
    ck_assert_int_eq(run(p, "pr-42.preview.example.com", out, sizeof(out)), 1);
    ck_assert_str_eq(out, "pr-42.svc:8080");
    /* Anchored at both ends: no match inside a longer host. */
    ck_assert_int_eq(run(p, "xpr-42.preview.example.com", out, sizeof(out)), 0);
    ck_assert_int_eq(run(p, "pr-42.preview.example.com.evil.net", out, sizeof(out)), 0);
    ck_assert_int_eq(run(p, "pr-x.preview.example.com", out, sizeof(out)), 0);
    match_pattern_free(p);

    p = pat("(?<app>[a-z]+)-(?<env>dev|prod)\\.apps\\.test shared ${app}.${env}.internal:80,${2}-b.internal:81");
    ck_assert_int_eq(run(p, "shop-prod.apps.test", out, sizeof(out)), 1);
    ck_assert_str_eq(out, "shop.prod.internal:80,prod-b.internal:81");
    match_pattern_free(p);

    /* $$ is a dollar; an optional group that did not take part is empty; $0 the whole host. */
    p = pat("(a)?(b)\\.t t x$$-$1$2-$0:1");
    ck_assert_int_eq(run(p, "b.t", out, sizeof(out)), 1);
    ck_assert_str_eq(out, "x$-b-b.t:1");
    /* Output too small: an error, never an overflow. */
    ck_assert_int_eq(run(p, "ab.t", out, 5), -1);
    match_pattern_free(p);
}
END_TEST

START_TEST(pattern_bad_data)
{
    char err[200], out[256];
    /* Does not compile, or not three fields: rejected. */
    static const char *bad[] = {"(unclosed t b:1", "only-regex", "re tenant", "", "   ", "x t\x01 b:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(match_pattern_new(bad[i], strlen(bad[i]), err, sizeof(err)) == NULL, "accepted '%s'", bad[i]);
    /* Template naming a missing capture: the pattern loads, a matching host fails, others do not match. */
    static const char *tmpl[] = {"(a)\\.t t b$2:1", "(a)\\.t t ${nope}:1", "(a)\\.t t b${1:1", "(a)\\.t t b$x:1",
                                 "(a)\\.t t ${}:1"};
    for (size_t i = 0; i < sizeof(tmpl) / sizeof(tmpl[0]); i++) {
        struct match_pattern *p = pat(tmpl[i]);
        ck_assert_msg(run(p, "a.t", out, sizeof(out)) == -1, "template of '%s' accepted", tmpl[i]);
        ck_assert_int_eq(run(p, "b.t", out, sizeof(out)), 0);
        match_pattern_free(p);
    }
    /* Catastrophic backtracking hits the match limit instead of hanging. */
    struct match_pattern *p = pat("(a|aa)+c t x:1");
    char host[64];
    memset(host, 'a', 40);
    strcpy(host + 40, "cx");
    ck_assert_int_eq(run(p, host, out, sizeof(out)), -1);
    match_pattern_free(p);
    /* A regex longer than the limit is refused. */
    char *huge = malloc(MATCH_MAX_REGEX + 32);
    memset(huge, 'a', MATCH_MAX_REGEX + 1);
    strcpy(huge + MATCH_MAX_REGEX + 1, " t x:1");
    ck_assert_ptr_null(match_pattern_new(huge, strlen(huge), err, sizeof(err)));
    free(huge);
}
END_TEST

/* ---- match.h: path rules ---- */

START_TEST(path_rules_first_match)
{
    char err[160];
    struct match_paths *ps = match_paths_new();
    static const char *rules[] = {"/api/v2 127.0.0.1:2", "/api 127.0.0.1:1", "~^/img/.*\\.(png|jpg)$ 127.0.0.1:3",
                                  "~^/(?i)DOCS 127.0.0.1:4, 127.0.0.1:5"};
    for (size_t i = 0; i < 4; i++)
        ck_assert_int_eq(match_paths_add(ps, rules[i], strlen(rules[i]), err, sizeof(err)), (int)i);
    ck_assert_int_eq((int)match_paths_count(ps), 4);
    struct { const char *path; int want; } cases[] = {
        {"/api/v2/x", 0}, {"/api/v1", 1}, {"/api", 1}, {"/apix", 1}, {"/img/a.png", 2}, {"/img/a.png?x=1", 2},
        {"/img/a.gif", -1}, {"/docs/x", 3}, {"/", -1}, {"", -1}, {"/ap?i", -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ck_assert_msg(match_paths_find(ps, cases[i].path, strlen(cases[i].path)) == cases[i].want,
                      "path %s", cases[i].path);
    size_t bl;
    const char *b = match_paths_backends(ps, 3, &bl);
    ck_assert(bl == strlen("127.0.0.1:4, 127.0.0.1:5") && memcmp(b, "127.0.0.1:4, 127.0.0.1:5", bl) == 0);
    static const char *bad[] = {"api 127.0.0.1:1", "/api", "~(x 127.0.0.1:1", "~ 127.0.0.1:1", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(match_paths_add(ps, bad[i], strlen(bad[i]), err, sizeof(err)) < 0, "accepted '%s'", bad[i]);
    ck_assert_int_eq((int)match_paths_count(ps), 4);
    match_paths_free(ps);

    /* A backtracking path regex reports -2 (the host answers bad data), not a hang. */
    ps = match_paths_new();
    const char *evil = "~^(a|aa)+$ 127.0.0.1:1";
    ck_assert_int_eq(match_paths_add(ps, evil, strlen(evil), err, sizeof(err)), 0);
    char path[200];
    memset(path, 'a', 150);
    path[150] = 'b';
    path[151] = '\0';
    ck_assert_int_eq(match_paths_find(ps, path, strlen(path)), -2);
    match_paths_free(ps);
}
END_TEST

/* Path rules see the path normalised (as nginx matches locations), so a
 * spelling the backend reads as /api/ cannot step around a rule for /api/:
 * escapes of unreserved characters decoded, dot segments resolved, "//"
 * merged; reserved escapes (%2F) stay.  (They were compared as sent.) */
START_TEST(path_rules_match_the_normalised_path)
{
    char err[160];
    struct match_paths *ps = match_paths_new();
    static const char *rules[] = {"/api/ 127.0.0.1:1", "~^/admin$ 127.0.0.1:2", "/a/b 127.0.0.1:3"};
    for (size_t i = 0; i < 3; i++)
        ck_assert_int_eq(match_paths_add(ps, rules[i], strlen(rules[i]), err, sizeof(err)), (int)i);
    struct { const char *path; int want; } cases[] = {
        {"/api/x", 0}, {"//api/x", 0}, {"/api//x", 0}, {"/%61pi/x", 0}, {"/%41pi/x", -1}, {"/x/../api/", 0},
        {"/x/%2e%2E/api/y", 0}, {"/./api/", 0}, {"/api/.", 0}, {"/api/x/..", 0}, {"/api", -1}, {"/apix/", -1},
        {"/api%2Fx", -1}, {"/../api/", 0}, {"/..", -1}, {"/admin", 1}, {"/x/../admin", 1}, {"//admin", 1},
        {"/admin/", -1}, {"/a/c/../b", 2}, {"/a/b/c/../..", -1}, {"*", -1}, {"/%zz/api/", -1}, {"/%", -1},
        {"/api/%", 0}, {"/api/x?y=/../", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ck_assert_msg(match_paths_find(ps, cases[i].path, strlen(cases[i].path)) == cases[i].want,
                      "path %s: rule %d", cases[i].path, match_paths_find(ps, cases[i].path, strlen(cases[i].path)));
    /* A path longer than the stack buffer is normalised too. */
    size_t big = 5000;
    char *p = malloc(big + 16);
    memset(p, '/', big);
    memcpy(p + big, "api/zz", 7);
    ck_assert_int_eq(match_paths_find(ps, p, strlen(p)), 0);
    free(p);
    match_paths_free(ps);
}
END_TEST

/* ---- match.h: hash fields ---- */

START_TEST(domain_fields)
{
    char err[160];
    struct match_domain d;
    match_domain_init(&d);
    ck_assert_int_eq(match_domain_check(&d, err, sizeof(err)), -1);          /* no tenant */
    match_domain_field(&d, "tenant", 6, "acme", 4, err, sizeof(err));
    ck_assert_int_eq(match_domain_check(&d, err, sizeof(err)), -1);          /* no backends */
    match_domain_field(&d, "backends", 8, "127.0.0.1:1", 11, err, sizeof(err));
    match_domain_field(&d, "lb", 2, "least_conn", 10, err, sizeof(err));
    match_domain_field(&d, "redirect_https", 14, "1", 1, err, sizeof(err));
    match_domain_field(&d, "other", 5, "x", 1, err, sizeof(err));
    ck_assert_int_eq(match_domain_check(&d, err, sizeof(err)), 0);
    ck_assert_int_eq(d.lb, BAL_LEAST_CONN);
    ck_assert_int_eq(d.redirect_https, 1);
    ck_assert_int_eq((int)d.bad_optional, 0);
    match_domain_field(&d, "lb", 2, "random", 6, err, sizeof(err));
    match_domain_field(&d, "redirect_https", 14, "yes", 3, err, sizeof(err));
    ck_assert_int_eq((int)d.bad_optional, 3);
    ck_assert_int_eq(d.lb, BAL_LEAST_CONN);                                   /* bad value ignored */
    /* A 1 MB value is refused; so is a tenant with a space. */
    size_t big = 1 << 20;
    char *v = malloc(big);
    memset(v, 'a', big);
    ck_assert_int_eq(match_domain_field(&d, "backends", 8, v, big, err, sizeof(err)), -1);
    free(v);
    match_domain_field(&d, "tenant", 6, "a b", 3, err, sizeof(err));
    ck_assert_int_eq(match_domain_check(&d, err, sizeof(err)), -1);
}
END_TEST

START_TEST(tenant_fields)
{
    char err[160];
    struct tenant_policy p = {-1, CAP_BLOCK, 0, 0};
    ck_assert_int_eq(match_tenant_field(&p, "cap_bytes", 9, "1000", 4, err, sizeof(err)), 0);
    ck_assert_int_eq(match_tenant_field(&p, "cap_action", 10, "throttle", 8, err, sizeof(err)), 0);
    ck_assert_int_eq(match_tenant_field(&p, "throttle_bps", 12, "512", 3, err, sizeof(err)), 0);
    ck_assert_int_eq(match_tenant_field(&p, "suspended", 9, "1", 1, err, sizeof(err)), 0);
    ck_assert_int_eq(match_tenant_field(&p, "note", 4, "whatever", 8, err, sizeof(err)), 0);
    ck_assert(p.cap_bytes == 1000 && p.cap_action == CAP_THROTTLE && p.throttle_bps == 512 && p.suspended == 1);
    /* Malformed: refused and left as it was. */
    ck_assert_int_eq(match_tenant_field(&p, "cap_bytes", 9, "-5", 2, err, sizeof(err)), -1);
    ck_assert_int_eq(match_tenant_field(&p, "cap_bytes", 9, "99999999999999999999", 20, err, sizeof(err)), -1);
    ck_assert_int_eq(match_tenant_field(&p, "cap_action", 10, "drop", 4, err, sizeof(err)), -1);
    ck_assert_int_eq(match_tenant_field(&p, "suspended", 9, "true", 4, err, sizeof(err)), -1);
    ck_assert(p.cap_bytes == 1000 && p.cap_action == CAP_THROTTLE && p.suspended == 1);
}
END_TEST

/* ---- cache.h ---- */

static int freed;
static void count_free(void *v)
{
    freed++;
    free(v);
}

static void put(struct cache *c, const char *k, int v)
{
    int *p = malloc(sizeof(int));
    *p = v;
    ck_assert_int_eq(cache_put(c, k, strlen(k), p), 0);
}

static int get(struct cache *c, const char *k)
{
    int *p = cache_get(c, k, strlen(k));
    return p ? *p : -1;
}

/*
 * CLOCK: items take clock positions in insertion order; the hand clears the
 * "used" bits it passes and evicts the first item whose bit is clear, and
 * the new item takes its position, just behind the hand.
 */
START_TEST(clock_second_chance)
{
    freed = 0;
    struct cache *c = cache_new(100, count_free);
    char k[32];
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        put(c, k, i);
    }
    ck_assert_int_eq((int)cache_count(c), 100);
    put(c, "new0", 1000);                    /* nothing used yet: the oldest goes */
    ck_assert_ptr_null(cache_peek(c, "k0", 2));
    ck_assert_int_eq((int)cache_evictions(c), 1);
    ck_assert_int_eq(freed, 1);
    ck_assert_int_eq((int)cache_count(c), 100);
    /* Use half of the survivors, peek the rest (a peek is not a use). */
    int used[100] = {0}, n_unused = 0;
    for (int i = 0, half = 0; i < 100; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        if (cache_peek(c, k, strlen(k)) == NULL)
            continue;
        if (half++ % 2 == 0) {
            ck_assert_int_eq(get(c, k), i);
            used[i] = 1;
        } else {
            n_unused++;
        }
    }
    ck_assert_int_eq(n_unused, 49);
    for (int i = 0; i < n_unused; i++) {
        snprintf(k, sizeof(k), "new%d", i + 1);
        put(c, k, 1001 + i);
    }
    /* Exactly the unused ones went; the used ones and every new one stayed. */
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        ck_assert_msg((get(c, k) == i) == (used[i] == 1), "k%d", i);
    }
    for (int i = 0; i <= n_unused; i++) {
        snprintf(k, sizeof(k), "new%d", i);
        ck_assert_int_eq(get(c, k), 1000 + i);
    }
    ck_assert_int_eq((int)cache_count(c), 100);
    ck_assert_int_eq((int)cache_evictions(c), 50);
    ck_assert_int_eq(freed, 50);
    cache_free(c);
    ck_assert_int_eq(freed, 150);
}
END_TEST

START_TEST(cache_replace_del_keys)
{
    freed = 0;
    struct cache *c = cache_new(3, count_free);
    put(c, "a", 1);
    put(c, "b", 2);
    /* Replacing frees the old value and does not grow the cache. */
    put(c, "a", 10);
    ck_assert_int_eq(freed, 1);
    ck_assert_int_eq(get(c, "a"), 10);
    ck_assert_int_eq((int)cache_count(c), 2);
    ck_assert_int_eq(cache_del(c, "b", 1), 1);
    ck_assert_int_eq(cache_del(c, "b", 1), 0);
    ck_assert_int_eq(freed, 2);
    ck_assert_int_eq((int)cache_count(c), 1);
    ck_assert_int_eq(get(c, "b"), -1);
    /* Keys are bytes: an embedded NUL and a prefix are different keys; long keys are fine. */
    put(c, "x", 7);
    int *p = malloc(sizeof(int));
    *p = 8;
    ck_assert_int_eq(cache_put(c, "x\0y", 3, p), 0);
    ck_assert_int_eq(get(c, "x"), 7);
    ck_assert_int_eq(*(int *)cache_get(c, "x\0y", 3), 8);
    ck_assert_int_eq((int)cache_count(c), 3);
    char longk[300];
    memset(longk, 'l', sizeof(longk) - 1);
    longk[sizeof(longk) - 1] = '\0';
    put(c, longk, 9);                        /* full: evicts one */
    ck_assert_int_eq(get(c, longk), 9);
    ck_assert_ptr_eq(cache_get_h(c, longk, strlen(longk), cache_hash(longk, strlen(longk))),
                     cache_peek(c, longk, strlen(longk)));
    ck_assert_int_eq((int)cache_count(c), 3);
    ck_assert_int_eq((int)cache_evictions(c), 1);
    ck_assert_int_eq(freed, 3);
    ck_assert_int_eq((int)cache_capacity(c), 3);
    ck_assert_uint_gt(cache_footprint(c), 0);
    cache_free(c);
    ck_assert_int_eq(freed, 6);
}
END_TEST

START_TEST(lru_many)
{
    freed = 0;
    struct cache *c = cache_new(1000, count_free);
    char k[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(k, sizeof(k), "host-%d.example", i);
        put(c, k, i);
        if (i % 2 == 0) {                   /* keep host-0 hot */
            ck_assert_int_eq(get(c, "host-0.example"), 0);
        }
    }
    ck_assert_int_eq((int)cache_count(c), 1000);
    ck_assert_int_eq(get(c, "host-0.example"), 0);
    ck_assert_int_eq(get(c, "host-4999.example"), 4999);
    ck_assert_int_eq(get(c, "host-4001.example"), 4001);
    ck_assert_int_eq(get(c, "host-4000.example"), -1);     /* FIFO among the unused */
    int present = 0;
    for (int i = 0; i < 5000; i++) {
        snprintf(k, sizeof(k), "host-%d.example", i);
        present += get(c, k) == i;
    }
    ck_assert_int_eq(present, 1000);
    ck_assert_int_eq(freed, 4000);
    ck_assert_int_eq((int)cache_evictions(c), 4000);
    cache_free(c);
}
END_TEST

/*
 * Random puts, gets and deletes against a model that learns evictions from
 * the free function: every key must be found with its last value exactly
 * when the model says it is there (checks probing and backward-shift
 * deletion across wrap-around and long runs).
 */
enum { MODEL_KEYS = 3000 };
static int model_val[MODEL_KEYS];          /* -1: absent */

static void model_free(void *v)
{
    int *p = v;
    int key = *p / 100000;
    if (model_val[key] == *p)
        model_val[key] = -1;
    freed++;
    free(p);
}

START_TEST(cache_model)
{
    freed = 0;
    for (int i = 0; i < MODEL_KEYS; i++)
        model_val[i] = -1;
    struct cache *c = cache_new(700, model_free);
    uint32_t x = 12345;
    char k[32];
    for (int op = 0; op < 200000; op++) {
        x = x * 1103515245u + 12345u;
        int key = (int)((x >> 8) % MODEL_KEYS);
        int what = (int)((x >> 24) % 4);
        snprintf(k, sizeof(k), "m%d", key);
        if (what <= 1) {
            int *p = malloc(sizeof(int));
            *p = key * 100000 + op % 100000;
            ck_assert_int_eq(cache_put(c, k, strlen(k), p), 0);
            model_val[key] = *p;
        } else if (what == 2) {
            int *p = cache_get(c, k, strlen(k));
            ck_assert_int_eq(p ? *p : -1, model_val[key]);
        } else {
            int had = model_val[key] != -1;
            ck_assert_int_eq(cache_del(c, k, strlen(k)), had);
        }
        if (op % 20000 == 0 || op == 199999) {
            size_t n = 0;
            for (int i = 0; i < MODEL_KEYS; i++) {
                snprintf(k, sizeof(k), "m%d", i);
                int *p = cache_peek(c, k, strlen(k));
                ck_assert_int_eq(p ? *p : -1, model_val[i]);
                n += model_val[i] != -1;
            }
            ck_assert_uint_eq(cache_count(c), n);
            ck_assert_uint_le(n, 700);
        }
    }
    cache_free(c);
}
END_TEST

/* A keyed cache reads keys from its values. */
struct kval {
    size_t klen;
    char key[16];
};

static const char *kval_key(const void *v, size_t *klen)
{
    const struct kval *kv = v;
    *klen = kv->klen;
    return kv->key;
}

START_TEST(cache_keyed)
{
    freed = 0;
    struct cache *c = cache_new_keyed(2, count_free, kval_key);
    struct kval *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b)), *a2 = calloc(1, sizeof(*a2));
    struct kval *d = calloc(1, sizeof(*d));
    a->klen = a2->klen = 3;
    memcpy(a->key, "a.t", 3);
    memcpy(a2->key, "a.t", 3);
    b->klen = 3;
    memcpy(b->key, "b.t", 3);
    d->klen = 3;
    memcpy(d->key, "d.t", 3);
    ck_assert_int_eq(cache_put(c, "a.t", 3, a), 0);
    ck_assert_int_eq(cache_put(c, "b.t", 3, b), 0);
    ck_assert_ptr_eq(cache_get(c, "a.t", 3), a);
    ck_assert_ptr_eq(cache_get(c, "b.t", 3), b);
    ck_assert_ptr_null(cache_get(c, "a.tt", 4));
    ck_assert_int_eq(cache_put(c, "a.t", 3, a2), 0);       /* replaces (and frees) a */
    ck_assert_int_eq(freed, 1);
    ck_assert_ptr_eq(cache_get(c, "a.t", 3), a2);
    ck_assert_int_eq(cache_put(c, "d.t", 3, d), 0);        /* full: evicts one */
    ck_assert_int_eq(freed, 2);
    ck_assert_ptr_eq(cache_get(c, "d.t", 3), d);
    ck_assert_int_eq(cache_put(c, "x", 1, NULL), -1);      /* a keyed cache holds no NULL */
    ck_assert_int_eq((int)cache_count(c), 2);
    cache_free(c);
    ck_assert_int_eq(freed, 4);
}
END_TEST

/* The keyed hash: same bytes, same hash; any byte or the length changes it. */
START_TEST(cache_hash_bytes)
{
    char a[40], b[40];
    for (size_t n = 0; n <= sizeof(a); n++) {
        memset(a, 'q', sizeof(a));
        memcpy(b, a, sizeof(b));
        ck_assert(cache_hash(a, n) == cache_hash(b, n));
        if (n > 0) {
            b[n - 1] = 'r';
            ck_assert(cache_hash(a, n) != cache_hash(b, n));
            ck_assert(cache_hash(a, n) != cache_hash(a, n - 1));
        }
    }
}
END_TEST

/* ---- route.h against a real redis-server: coalescing, cancel, cache hit, teardown ---- */

static void rt_redis_cmd(int port, int argc, const char **argv)
{
    char url[64], err[256];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    struct redis_sync *s = redis_sync_connect(url, 2.0, err, sizeof(err));
    ck_assert_msg(s != NULL, "%s", err);
    size_t lens[8];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    struct redis_reply *r = redis_sync_cmd(s, argc, argv, lens, err, sizeof(err));
    ck_assert_msg(r != NULL, "%s", err);
    redis_sync_reply_free(r);
    redis_sync_free(s);
}

static void rt_run(struct event_base *base, double secs, const int *until)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        if (until && *until)
            return;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 > secs)
            return;
        usleep(1000);
    }
}

/* Starts a redis-server for a test: 1, or 0 when none is installed (the test is skipped). */
static int rt_start(struct rfx_srv *srv, const char *test)
{
    int started = rfx_start(srv, 0);
    if (started == 0) {
        fprintf(stderr, "SKIP %s: redis-server not installed\n", test);
        return 0;
    }
    ck_assert_msg(started == 1, "redis-server did not start");
    return 1;
}

/*
 * A Redis-routing ctx on base for the server on port (prefix "tg:"; a route
 * cache of cache_size, or the test default when 0).  cfg and url (urlcap
 * bytes) must outlive it.
 */
static struct route_ctx *rt_ctx(struct tg_config *cfg, char *url, size_t urlcap, int port, size_t cache_size,
                                struct event_base *base)
{
    char err[256] = "";
    snprintf(url, urlcap, "redis://127.0.0.1:%d", port);
    static_cfg(cfg, NULL, 0);
    cfg->redis_url = url;
    cfg->key_prefix = (char *)"tg:";
    if (cache_size)
        cfg->route_cache_size = cache_size;
    struct route_ctx *rc = route_ctx_new(base, cfg, NULL, 0, err, sizeof(err));
    ck_assert_msg(rc != NULL, "%s", err);
    return rc;
}

START_TEST(redis_lookup_coalesce_cancel_teardown)
{
    struct rfx_srv srv = {0};
    if (!rt_start(&srv, __func__))
        return;
    int port = srv.port;
    const char *set[] = {"HSET", "tg:domain:a.test", "tenant", "t1", "backends", "127.0.0.1:9,localhost:10"};
    rt_redis_cmd(port, 6, set);
    const char *ten[] = {"HSET", "tg:tenant:t1", "cap_bytes", "5000", "suspended", "0"};
    rt_redis_cmd(port, 6, ten);

    char url[64];
    struct tg_config cfg;
    struct event_base *base = event_base_new();
    struct route_ctx *rc = rt_ctx(&cfg, url, sizeof(url), port, 0, base);
    ck_assert_int_eq(route_degraded(), 1);       /* not connected yet */
    rt_run(base, 0.5, NULL);
    ck_assert_int_eq(route_degraded(), 0);

    /* Two lookups of an uncached host share one fetch; the cancelled one is never called. */
    struct got g1 = {0}, g2 = {0};
    struct route_lookup *l1 = route_lookup(rc, "a.test", 6, "/", 1, got_cb, &g1);
    struct route_lookup *l2 = route_lookup(rc, "A.TEST:80", 9, "/", 1, got_cb, &g2);
    ck_assert_ptr_nonnull(l1);
    ck_assert_ptr_nonnull(l2);
    route_lookup_cancel(l1);
    rt_run(base, 2.0, &g2.calls);
    ck_assert_int_eq(g1.calls, 0);
    ck_assert_int_eq(g2.calls, 1);
    ck_assert_int_eq(g2.res.status, ROUTE_OK);
    ck_assert_str_eq(g2.tenant, "t1");
    ck_assert_int_eq((int)g2.res.policy.cap_bytes, 5000);
    ck_assert_int_eq((int)route_backends_count(g2.res.backends), 3);   /* localhost: 127.0.0.1 and ::1 */

    /* Now cached: answered before route_lookup returns. */
    struct got g3 = {0};
    ck_assert_ptr_null(route_lookup(rc, "a.test", 6, "/", 1, got_cb, &g3));
    ck_assert_int_eq(g3.calls, 1);
    ck_assert_int_eq(g3.res.status, ROUTE_OK);
    struct route_target t;
    uint64_t tried = 0;
    ck_assert_int_eq(route_pick(rc, g3.res.backends, &tried, &t), 0);
    ck_assert_int_eq(route_pick(rc, g3.res.backends, &tried, &t), 0);
    ck_assert_str_eq(t.name, "localhost:10");    /* resolved without DNS */
    ck_assert_int_eq(ntohs(((struct sockaddr_in *)&t.addr)->sin_port), 10);
    ck_assert_int_eq(route_pick(rc, g3.res.backends, &tried, &t), 0);
    ck_assert_str_eq(t.name, "localhost:10");    /* and its IPv6 loopback */
    ck_assert_int_eq(t.addr.ss_family, AF_INET6);
    ck_assert_int_eq(ntohs(((struct sockaddr_in6 *)&t.addr)->sin6_port), 10);
    route_entry_ref(g3.res.entry);

    /* Unknown host: NOT_FOUND after a round trip. */
    struct got g4 = {0};
    ck_assert_ptr_nonnull(route_lookup(rc, "zz.test", 7, "/", 1, got_cb, &g4));
    rt_run(base, 2.0, &g4.calls);
    ck_assert_int_eq(g4.res.status, ROUTE_NOT_FOUND);

    /* Matching order: exact, then wildcard (one label only), then patterns. */
    const char *w1[] = {"HSET", "tg:domain:*.w.test", "tenant", "wild", "backends", "127.0.0.1:11"};
    rt_redis_cmd(port, 6, w1);
    const char *w2[] = {"HSET", "tg:domain:e.w.test", "tenant", "exact", "backends", "127.0.0.1:12"};
    rt_redis_cmd(port, 6, w2);
    const char *w3[] = {"RPUSH", "tg:patterns", "(\\w+)\\.b\\.w\\.test pat 127.0.0.1:1$1", "e\\.w\\.test no 127.0.0.1:1"};
    rt_redis_cmd(port, 4, w3);
    static const struct { const char *host; int status; const char *tenant; } order[] = {
        {"x.w.test", ROUTE_OK, "wild"}, {"e.w.test", ROUTE_OK, "exact"}, {"3.b.w.test", ROUTE_OK, "pat"},
        {"a.c.w.test", ROUTE_NOT_FOUND, ""}, {"w.test", ROUTE_NOT_FOUND, ""},
    };
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        struct got g = {0};
        if (route_lookup(rc, order[i].host, strlen(order[i].host), "/", 1, got_cb, &g))
            rt_run(base, 2.0, &g.calls);
        ck_assert_msg(g.calls == 1 && (int)g.res.status == order[i].status && strcmp(g.tenant, order[i].tenant) == 0,
                      "%s: status %d tenant %s", order[i].host, g.res.status, g.tenant);
    }

    /* Freeing the ctx with a lookup pending: no callback, nothing leaked (ASan). */
    struct got g5 = {0};
    ck_assert_ptr_nonnull(route_lookup(rc, "pending.test", 12, "/", 1, got_cb, &g5));
    route_ctx_free(rc);
    rt_run(base, 0.1, NULL);
    ck_assert_int_eq(g5.calls, 0);
    ck_assert_int_eq(route_degraded(), 0);
    /* A referenced entry outlives the ctx. */
    ck_assert_int_eq((int)route_backends_count(g3.res.backends), 3);
    route_entry_unref(g3.res.entry);
    event_base_free(base);
    rfx_stop(&srv);
}
END_TEST

/*
 * Routes, tenants and unknown hosts have caches of their own: a route cache
 * of N holds N routed hosts whatever their tenants, and random unknown hosts
 * do not push routes out.  A hit reuses the tenant record the domain record
 * used last, and a change to the tenant's policy still reaches it.
 */
START_TEST(redis_caches_routes_tenants_apart)
{
    struct rfx_srv srv = {0};
    if (!rt_start(&srv, __func__))
        return;
    int port = srv.port;
    char host[32], tenant[32];
    for (int i = 0; i < 4; i++) {
        snprintf(host, sizeof(host), "tg:domain:h%d.test", i);
        snprintf(tenant, sizeof(tenant), "t%d", i);
        const char *set[] = {"HSET", host, "tenant", tenant, "backends", "127.0.0.1:9"};
        rt_redis_cmd(port, 6, set);
    }
    const char *ten[] = {"HSET", "tg:tenant:t0", "cap_bytes", "5000"};
    rt_redis_cmd(port, 4, ten);

    char url[64];
    struct tg_config cfg;
    struct event_base *base = event_base_new();
    struct route_ctx *rc = rt_ctx(&cfg, url, sizeof(url), port, 4, base);
    rt_run(base, 0.5, NULL);

    /* Four routed hosts of four tenants, then 100 unknown hosts: the four stay cached. */
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 4; i++) {
            struct got g = {0};
            snprintf(host, sizeof(host), "h%d.test", i);
            struct route_lookup *lk = route_lookup(rc, host, strlen(host), "/", 1, got_cb, &g);
            ck_assert_msg((lk == NULL) == (round == 1), "%s: round %d: %s", host, round,
                          lk ? "not cached" : "cached");
            if (lk)
                rt_run(base, 2.0, &g.calls);
            snprintf(tenant, sizeof(tenant), "t%d", i);
            ck_assert_int_eq(g.res.status, ROUTE_OK);
            ck_assert_str_eq(g.tenant, tenant);
            ck_assert_int_eq((int)g.res.policy.cap_bytes, i == 0 ? 5000 : -1);
        }
        for (int i = 0; round == 0 && i < 100; i++) {
            struct got g = {0};
            snprintf(host, sizeof(host), "nx%d.test", i);
            if (route_lookup(rc, host, strlen(host), "/", 1, got_cb, &g))
                rt_run(base, 2.0, &g.calls);
            ck_assert_int_eq(g.res.status, ROUTE_NOT_FOUND);
        }
    }

    /* A policy change is seen by the next request (invalidation), though the domain record is unchanged. */
    const char *ten2[] = {"HSET", "tg:tenant:t0", "cap_bytes", "7000"};
    rt_redis_cmd(port, 4, ten2);
    int64_t cap = 0;
    for (int tries = 0; tries < 40 && cap != 7000; tries++) {
        rt_run(base, 0.05, NULL);
        struct got g = {0};
        if (route_lookup(rc, "h0.test", 7, "/", 1, got_cb, &g))
            rt_run(base, 2.0, &g.calls);
        ck_assert_int_eq(g.res.status, ROUTE_OK);
        cap = g.res.policy.cap_bytes;
    }
    ck_assert_int_eq((int)cap, 7000);
    /* And the record that has it is used from then on without Redis. */
    struct got g = {0};
    ck_assert_ptr_null(route_lookup(rc, "h0.test", 7, "/", 1, got_cb, &g));
    ck_assert_int_eq((int)g.res.policy.cap_bytes, 7000);

    /*
     * Changes reach records by name (the host's own keys) and by counter (a
     * wildcard the host matched): both within a second.
     */
    const char *w1[] = {"HSET", "tg:domain:*.w.test", "tenant", "t1", "backends", "127.0.0.1:11"};
    rt_redis_cmd(port, 6, w1);
    static const struct { const char *key, *backend, *host; } change[] = {
        {"tg:domain:*.w.test", "127.0.0.1:12", "x.w.test"},
        {"tg:domain:h1.test", "127.0.0.1:13", "h1.test"},
    };
    for (size_t c = 0; c < 2; c++) {
        for (int step = 0; step < 2; step++) {
            if (step == 1) {
                const char *set[] = {"HSET", change[c].key, "backends", change[c].backend};
                rt_redis_cmd(port, 4, set);
            }
            struct route_target t = {0};
            for (int tries = 0; tries < 40; tries++) {
                rt_run(base, step ? 0.025 : 0.0, NULL);
                struct got gw = {0};
                if (route_lookup(rc, change[c].host, strlen(change[c].host), "/", 1, got_cb, &gw))
                    rt_run(base, 2.0, &gw.calls);
                ck_assert_int_eq(gw.res.status, ROUTE_OK);
                uint64_t tried = 0;
                ck_assert_int_eq(route_pick(rc, gw.res.backends, &tried, &t), 0);
                if (step == 0 || strcmp(t.name, change[c].backend) == 0)
                    break;
            }
            if (step == 1)
                ck_assert_msg(strcmp(t.name, change[c].backend) == 0, "%s still routes to %s", change[c].host,
                              t.name);
        }
    }

    route_ctx_free(rc);
    event_base_free(base);
    rfx_stop(&srv);
}
END_TEST

/*
 * While invalidations flow, the TTL is a safety net: a record past it is
 * served at once while a background fetch renews it (for up to its TTL
 * more); after that, the lookup waits for Redis again.
 */
START_TEST(redis_ttl_renewed_in_background)
{
    struct rfx_srv srv = {0};
    if (!rt_start(&srv, __func__))
        return;
    int port = srv.port;
    const char *set[] = {"HSET", "tg:domain:r.test", "tenant", "t1", "backends", "127.0.0.1:9"};
    rt_redis_cmd(port, 6, set);
    char url[64];
    struct tg_config cfg;
    struct event_base *base = event_base_new();
    struct route_ctx *rc = rt_ctx(&cfg, url, sizeof(url), port, 0, base);
    cfg.route_cache_ttl = 1;
    struct got g = {0};
    for (int tries = 0; tries < 40; tries++) {   /* until CLIENT TRACKING is on: records live a full TTL */
        rt_run(base, 0.05, NULL);
        memset(&g, 0, sizeof(g));
        if (route_lookup(rc, "r.test", 6, "/", 1, got_cb, &g))
            rt_run(base, 2.0, &g.calls);
        rt_run(base, 1.1, NULL);
        memset(&g, 0, sizeof(g));
        if (route_lookup(rc, "r.test", 6, "/", 1, got_cb, &g) == NULL)
            break;
        rt_run(base, 2.0, &g.calls);
    }
    /*
     * Past its TTL: answered at once (above) and renewed behind the scenes:
     * 1.4 s later the old record would be past its grace, the new one is not.
     */
    ck_assert_int_eq(g.calls, 1);
    ck_assert_int_eq(g.res.status, ROUTE_OK);
    rt_run(base, 1.4, NULL);
    memset(&g, 0, sizeof(g));
    ck_assert_ptr_null(route_lookup(rc, "r.test", 6, "/", 1, got_cb, &g));
    ck_assert_int_eq(g.res.status, ROUTE_OK);
    /* Long past it (TTL + grace) with no lookup in between: the lookup waits for Redis. */
    rt_run(base, 2.3, NULL);
    memset(&g, 0, sizeof(g));
    ck_assert_ptr_nonnull(route_lookup(rc, "r.test", 6, "/", 1, got_cb, &g));
    rt_run(base, 2.0, &g.calls);
    ck_assert_int_eq(g.res.status, ROUTE_OK);
    route_ctx_free(rc);
    event_base_free(base);
    rfx_stop(&srv);
}
END_TEST

/* Writes text to path (replacing it: a new inode, as editors and `sed -i` do). */
static void rt_write_file(const char *path, const char *text)
{
    char tmp[300];
    snprintf(tmp, sizeof(tmp), "%s.new", path);
    FILE *fp = fopen(tmp, "w");
    ck_assert_ptr_nonnull(fp);
    fputs(text, fp);
    ck_assert_int_eq(fclose(fp), 0);
    ck_assert_int_eq(rename(tmp, path), 0);
}

/* Looks host up (waiting for Redis when needed) into *g; its status. */
static int rt_lookup(struct route_ctx *rc, struct event_base *base, const char *host, struct got *g)
{
    memset(g, 0, sizeof(*g));
    if (route_lookup(rc, host, strlen(host), "/", 1, got_cb, g))
        rt_run(base, 3.0, &g->calls);
    ck_assert_int_eq(g->calls, 1);
    return g->res.status;
}

/* 1 when the set of g is exactly one backend at IPv4 address want. */
static int rt_only(struct route_ctx *rc, const struct got *g, const char *want)
{
    if (g->res.status != ROUTE_OK || route_backends_count(g->res.backends) != 1)
        return 0;
    uint64_t tried = 0;
    struct route_target t;
    if (route_pick(rc, g->res.backends, &tried, &t) != 0)
        return 0;
    route_release(rc, g->res.backends, &t);
    char buf[64] = "";
    inet_ntop(AF_INET, &((struct sockaddr_in *)&t.addr)->sin_addr, buf, sizeof(buf));
    return t.addr.ss_family == AF_INET && strcmp(buf, want) == 0;
}

/*
 * A Redis route's backend name with several addresses in the hosts file is
 * one backend per address (IPv4 first, all named "host:port"); an edited
 * hosts file is read again: after the route's TTL, and at once after a
 * reload (SIGHUP).  The hosts file is TOLLGATE_TEST_HOSTS_FILE's.
 */
START_TEST(redis_name_every_address_hosts_reread)
{
    struct rfx_srv srv = {0};
    if (!rt_start(&srv, __func__))
        return;
    int port = srv.port;
    char dir[] = "/tmp/tg-hosts-XXXXXX", hosts[300];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(hosts, sizeof(hosts), "%s/hosts", dir);
    rt_write_file(hosts, "# test\n10.1.0.1 dual.test\nfd00::5 dual.test\n10.1.0.2 dual.test other.test\n");
    setenv("TOLLGATE_TEST_HOSTS_FILE", hosts, 1);
    const char *set[] = {"HSET", "tg:domain:h.test", "tenant", "t1", "backends", "dual.test:8080"};
    rt_redis_cmd(port, 6, set);
    char url[64];
    struct tg_config cfg;
    struct event_base *base = event_base_new();
    struct route_ctx *rc = rt_ctx(&cfg, url, sizeof(url), port, 0, base);
    unsetenv("TOLLGATE_TEST_HOSTS_FILE");
    cfg.route_cache_ttl = 1;
    rt_run(base, 0.3, NULL);

    struct got g;
    ck_assert_int_eq(rt_lookup(rc, base, "h.test", &g), ROUTE_OK);
    ck_assert_int_eq((int)route_backends_count(g.res.backends), 3);
    static const char *want[] = {"10.1.0.1", "10.1.0.2", "fd00::5"};
    uint64_t tried = 0;
    for (int i = 0; i < 3; i++) {
        struct route_target t;
        ck_assert_int_eq(route_pick(rc, g.res.backends, &tried, &t), 0);
        ck_assert_str_eq(t.name, "dual.test:8080");
        char buf[64] = "";
        if (t.addr.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&t.addr)->sin_addr, buf, sizeof(buf));
        else
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&t.addr)->sin6_addr, buf, sizeof(buf));
        ck_assert_str_eq(buf, want[i]);
        ck_assert_int_eq(ntohs(((struct sockaddr_in *)&t.addr)->sin_port), 8080);
        route_release(rc, g.res.backends, &t);
    }

    /* Edited: seen once the route's TTL (1 s) ran out. */
    rt_write_file(hosts, "10.1.0.9 dual.test\n");
    int seen = 0;
    for (int i = 0; i < 60 && !seen; i++) {
        rt_run(base, 0.1, NULL);
        rt_lookup(rc, base, "h.test", &g);
        seen = rt_only(rc, &g, "10.1.0.9");
    }
    ck_assert_msg(seen, "the edited hosts file was not read again");

    /* With a long TTL, a reload (SIGHUP) re-reads it at once. */
    cfg.route_cache_ttl = 3600;
    char err[256] = "";
    ck_assert_int_eq(route_ctx_reload(rc, &cfg, NULL, err, sizeof(err)), 0);
    rt_lookup(rc, base, "h.test", &g);
    rt_run(base, 0.3, NULL);
    rt_lookup(rc, base, "h.test", &g);
    ck_assert(rt_only(rc, &g, "10.1.0.9"));
    rt_write_file(hosts, "10.1.0.7 dual.test\n");
    ck_assert_int_eq(route_ctx_reload(rc, &cfg, NULL, err, sizeof(err)), 0);
    seen = 0;
    for (int i = 0; i < 10 && !seen; i++) {
        rt_lookup(rc, base, "h.test", &g);
        seen = rt_only(rc, &g, "10.1.0.7");
        rt_run(base, 0.1, NULL);
    }
    ck_assert_msg(seen, "a reload did not read the hosts file again");

    route_ctx_free(rc);
    event_base_free(base);
    unlink(hosts);
    rmdir(dir);
    rfx_stop(&srv);
}
END_TEST

Suite *routing_suite(void)
{
    Suite *s = suite_create("routing");
    TCase *tc = tcase_create("host");
    tcase_add_test(tc, host_accepts_and_normalises);
    tcase_add_test(tc, host_rejects_invalid);
    tcase_add_test(tc, host_length_limits);
    tcase_add_test(tc, host_zone_one_label);
    tcase_add_test(tc, host_parse_backend_addresses);
    tcase_add_test(tc, hosts_file_rules);
    tcase_add_test(tc, hosts_file_load);
    suite_add_tcase(s, tc);

    tc = tcase_create("static");
    tcase_add_test(tc, static_lookup_sync);
    tcase_add_test(tc, static_entry_outlives_ctx);
    tcase_add_test(tc, static_name_every_address);
    tcase_add_test(tc, static_name_addresses_capped);
    tcase_add_test(tc, static_bad_config);
    tcase_add_test(tc, pick_round_robin_and_tried_mask);
    tcase_add_test(tc, pick_passive_health_cooldown);
    tcase_add_test(tc, pick_failure_before_answer_cools_mid_answer_does_not);
    tcase_add_test(tc, least_conn_prefers_idle);
    suite_add_tcase(s, tc);

    tc = tcase_create("match");
    tcase_add_test(tc, backends_split_lists);
    tcase_add_test(tc, pattern_substitution);
    tcase_add_test(tc, pattern_bad_data);
    tcase_add_test(tc, path_rules_first_match);
    tcase_add_test(tc, path_rules_match_the_normalised_path);
    tcase_add_test(tc, domain_fields);
    tcase_add_test(tc, tenant_fields);
    suite_add_tcase(s, tc);

    tc = tcase_create("cache");
    tcase_add_test(tc, clock_second_chance);
    tcase_add_test(tc, cache_replace_del_keys);
    tcase_add_test(tc, lru_many);
    tcase_add_test(tc, cache_model);
    tcase_add_test(tc, cache_keyed);
    tcase_add_test(tc, cache_hash_bytes);
    suite_add_tcase(s, tc);

    tc = tcase_create("redis");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, redis_lookup_coalesce_cancel_teardown);
    tcase_add_test(tc, redis_caches_routes_tenants_apart);
    tcase_add_test(tc, redis_ttl_renewed_in_background);
    tcase_add_test(tc, redis_name_every_address_hosts_reread);
    suite_add_tcase(s, tc);
    return s;
}
