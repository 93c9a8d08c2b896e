/*
 * tests/unit/test_h1.c: unit tests for the HTTP/1.x codec (proxy/h1.c).
 *
 * One test per RFC 9112 rule the codec enforces (named after the rule), the
 * positive cases a proxy meets every day, and the incremental entry points
 * (h1_find_head_end, h1_chunked_feed) fed at every split position.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/h1.h"
#include "tests/unit/tests.h"

#define MAX_HEAD (64 * 1024)

/* Request/response structs are ~4 KiB; keep them off the test stack. */
static struct h1_request req;
static struct h1_response resp;

static int preq(const char *s)
{
    return h1_parse_request(s, strlen(s), &req);
}

static int presp(const char *s)
{
    return h1_parse_response(s, strlen(s), &resp);
}

static ssize_t head_end(const char *s)
{
    size_t scanned = 0;
    return h1_find_head_end(s, strlen(s), &scanned, MAX_HEAD);
}

static int str_is(struct h1_str s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.p, lit, s.len) == 0;
}

/* Feeds a whole chunked body in one call; returns consumed or error. */
static ssize_t chunked_all(const char *s, size_t len, int *done)
{
    struct h1_chunked c;
    h1_chunked_init(&c);
    return h1_chunked_feed(&c, s, len, done);
}

/* ---- positive cases ---- */

START_TEST(test_get_simple)
{
    const char *s = "GET /a/b?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n";
    ck_assert_int_eq(head_end(s), (ssize_t)strlen(s));
    ck_assert_int_eq(preq(s), 0);
    ck_assert(str_is(req.method, "GET"));
    ck_assert(str_is(req.target, "/a/b?x=1"));
    ck_assert(str_is(req.path, "/a/b"));
    ck_assert(str_is(req.host, "example.com"));
    ck_assert_int_eq(req.minor, 1);
    ck_assert_int_eq(req.content_length, -1);
    ck_assert_uint_eq(req.flags, 0);
    ck_assert_uint_eq(req.n_headers, 2);
    ck_assert(str_is(req.headers[1].name, "User-Agent"));
    ck_assert(str_is(req.headers[1].value, "t"));
}
END_TEST

START_TEST(test_value_ows_stripped_htab_allowed)
{
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost:h\r\nX: \t a\tb \t\r\n\r\n"), 0);
    ck_assert(str_is(req.headers[0].value, "h"));
    ck_assert(str_is(req.headers[1].value, "a\tb"));
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nX:\r\nY: \xc3\xa9\r\n\r\n"), 0);
    ck_assert_uint_eq(req.headers[1].value.len, 0);
    ck_assert(str_is(req.headers[2].value, "\xc3\xa9"));
}
END_TEST

START_TEST(test_post_content_length)
{
    const char *s = "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 42\r\n\r\nbody...";
    ssize_t n = head_end(s);
    ck_assert_int_eq(n, (ssize_t)(strstr(s, "body") - s));
    ck_assert_int_eq(h1_parse_request(s, (size_t)n, &req), 0);
    ck_assert_int_eq(req.content_length, 42);
    ck_assert(req.flags & H1_F_HAS_CL);
    ck_assert(!(req.flags & H1_F_CHUNKED));
}
END_TEST

START_TEST(test_http10)
{
    ck_assert_int_eq(preq("GET /x HTTP/1.0\r\n\r\n"), 0);
    ck_assert_int_eq(req.minor, 0);
    ck_assert_uint_eq(req.host.len, 0);
    ck_assert_int_eq(preq("GET /x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"), 0);
    ck_assert(str_is(req.host, "a"));
    ck_assert(req.flags & H1_F_CONN_KEEPALIVE);
    /* Upgrade / Expect are ignored for HTTP/1.0 (RFC 9110 §7.8, §10.1.1) */
    ck_assert_int_eq(preq("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: ws\r\n"
                          "Expect: 100-continue\r\n\r\n"), 0);
    ck_assert(!(req.flags & (H1_F_UPGRADE | H1_F_EXPECT_CONTINUE)));
}
END_TEST

START_TEST(test_absolute_form)
{
    ck_assert_int_eq(preq("GET http://Other.example:8080/p/q?z HTTP/1.1\r\nHost: ignored\r\n\r\n"), 0);
    ck_assert(str_is(req.host, "Other.example:8080"));
    ck_assert(str_is(req.path, "/p/q"));
    ck_assert(str_is(req.target, "http://Other.example:8080/p/q?z"));
    ck_assert_int_eq(preq("GET HTTPS://h.example HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    ck_assert(str_is(req.host, "h.example"));
    ck_assert(str_is(req.path, "/"));
    ck_assert_int_eq(preq("GET http://h.example?q=1 HTTP/1.0\r\n\r\n"), 0);
    ck_assert(str_is(req.host, "h.example"));
    ck_assert(str_is(req.path, "/"));
    /* empty authority, userinfo */
    ck_assert_int_eq(preq("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET http://u:p@h/x HTTP/1.1\r\nHost: h\r\n\r\n"), -400);
}
END_TEST

START_TEST(test_leading_empty_line)
{
    const char *s = "\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
    ck_assert_int_eq(head_end(s), (ssize_t)strlen(s));
    ck_assert_int_eq(preq(s), 0);
    ck_assert(str_is(req.method, "GET"));
    const char *s2 = "\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
    ck_assert_int_eq(head_end(s2), (ssize_t)strlen(s2));
    ck_assert_int_eq(preq(s2), 0);
    /* only empty lines so far: need more */
    ck_assert_int_eq(head_end("\r\n\r\n"), 0);
    /* an endless stream of empty lines is cut off */
    ck_assert_int_eq(head_end("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET"), -400);
}
END_TEST

START_TEST(test_pipelined_heads)
{
    const char *s = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                    "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
                    "GET /3 HTTP/1.1\r\nHo";
    size_t off = 0, len = strlen(s);
    const char *paths[] = { "/1", "/2" };
    for (int k = 0; k < 2; k++) {
        size_t scanned = 0;
        ssize_t n = h1_find_head_end(s + off, len - off, &scanned, MAX_HEAD);
        ck_assert_int_gt(n, 0);
        ck_assert_int_eq(h1_parse_request(s + off, (size_t)n, &req), 0);
        ck_assert(str_is(req.path, paths[k]));
        off += (size_t)n;
    }
    size_t scanned = 0;
    ck_assert_int_eq(h1_find_head_end(s + off, len - off, &scanned, MAX_HEAD), 0);
}
END_TEST

START_TEST(test_head_end_at_every_offset_of_a_16_byte_step)
{
    /* The LF search tests 16 bytes at a time: the end and a bare LF must be
     * found wherever they fall in or across a step, whole or piece by
     * piece, and a bare LF after the end is not the head's. */
    for (size_t pad = 0; pad < 40; pad++) {
        char head[128];
        int n = snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: h\r\nX: %.*s\r\n\r\n\nNEXT", (int)pad,
                         "0123456789012345678901234567890123456789");
        size_t total = (size_t)n - 5, scanned = 0;
        ck_assert_int_eq(h1_find_head_end(head, (size_t)n, &scanned, MAX_HEAD), (ssize_t)total);
        scanned = 0;
        for (size_t k = 1; k < total; k++)
            ck_assert_int_eq(h1_find_head_end(head, k, &scanned, MAX_HEAD), 0);
        ck_assert_int_eq(h1_find_head_end(head, (size_t)n, &scanned, MAX_HEAD), (ssize_t)total);
        for (size_t at = 0; at < pad; at++) {
            char bad[128];
            memcpy(bad, head, (size_t)n);
            bad[28 + at] = '\n';               /* inside X's value */
            scanned = 0;
            ck_assert_int_eq(h1_find_head_end(bad, (size_t)n, &scanned, MAX_HEAD), -400);
        }
    }
}
END_TEST

START_TEST(test_head_end_incremental_every_split)
{
    /* Byte by byte, and every two-piece split: the CRLFCRLF straddling the
     * previous stop point must still be found (resume backs up 3 bytes). */
    const char *s = "GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n\r\nNEXT";
    size_t total = strlen(s) - 4;
    size_t scanned = 0;
    ssize_t n = 0;
    size_t k;
    for (k = 1; k <= strlen(s); k++) {
        n = h1_find_head_end(s, k, &scanned, MAX_HEAD);
        if (n != 0)
            break;
        ck_assert_uint_eq(scanned, k);
    }
    ck_assert_int_eq(n, (ssize_t)total);
    ck_assert_uint_eq(k, total);
    for (size_t cut = 0; cut <= strlen(s); cut++) {
        scanned = 0;
        n = h1_find_head_end(s, cut, &scanned, MAX_HEAD);
        if (cut < total) {
            ck_assert_int_eq(n, 0);
            n = h1_find_head_end(s, strlen(s), &scanned, MAX_HEAD);
        }
        ck_assert_int_eq(n, (ssize_t)total);
    }
}
END_TEST

START_TEST(test_expect_continue)
{
    ck_assert_int_eq(preq("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n"
                          "Content-Length: 5\r\n\r\n"), 0);
    ck_assert(req.flags & H1_F_EXPECT_CONTINUE);
}
END_TEST

START_TEST(test_options_asterisk)
{
    ck_assert_int_eq(preq("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    ck_assert(str_is(req.target, "*"));
}
END_TEST

/* ---- one test per rejection rule ---- */

START_TEST(test_cl_and_te_400)
{
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n"), -400);
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                          "Content-Length: 3\r\n\r\n"), -400);
}
END_TEST

START_TEST(test_cl_differing_duplicate_400)
{
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                          "Content-Length: 4\r\n\r\n"), -400);
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 4\r\n\r\n"), -400);
}
END_TEST

START_TEST(test_cl_identical_duplicate_ok)
{
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                          "Content-Length: 5\r\n\r\n"), 0);
    ck_assert_int_eq(req.content_length, 5);
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n"), 0);
    ck_assert_int_eq(req.content_length, 5);
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,5\r\n"
                          "content-length: 005\r\n\r\n"), 0);
    ck_assert_int_eq(req.content_length, 5);
    /* A list taken as one length is marked, to be forwarded as one (RFC 9110 §8.6). */
    ck_assert(req.flags & H1_F_CL_LIST);
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 005\r\n\r\n"), 0);
    ck_assert(!(req.flags & H1_F_CL_LIST));
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n"), 0);
    ck_assert_int_eq(resp.content_length, 7);
    ck_assert(resp.flags & H1_F_CL_LIST);
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"), 0);
    ck_assert(!(resp.flags & H1_F_CL_LIST));
}
END_TEST

START_TEST(test_cl_malformed_400)
{
    const char *bad[] = { "", "-1", "+5", "5 5", "0x10", "1e3", "5,", "99999999999999999999",
                          "4611686018427387905" };
    char buf[256];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(buf, sizeof(buf), "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %s\r\n\r\n",
                 bad[i]);
        ck_assert_msg(preq(buf) == -400, "accepted CL '%s'", bad[i]);
    }
    struct h1_str v = { "4611686018427387904", 19 };   /* 2^62: the cap */
    ck_assert_int_eq(h1_parse_content_length(v), (int64_t)1 << 62);
    v.p = "0";
    v.len = 1;
    ck_assert_int_eq(h1_parse_content_length(v), 0);
}
END_TEST

START_TEST(test_chunk_size_invalid_400)
{
    int done;
    const char *bad[] = { "g\r\n", "\r\n", "-1\r\n", "0x5\r\n", " 5\r\n", "5 5\r\n",
                          "5\n", "5\rx", "8000000000000000\r\n",
                          "10000000000000000\r\n", "3\r\nabcd\r\n", "3\r\nabc\n" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(chunked_all(bad[i], strlen(bad[i]), &done) == -400,
                      "accepted chunk '%s'", bad[i]);
    /* 2^63 - 1 is the largest accepted size */
    const char *big = "7fffffffffffffff\r\nab";
    ck_assert_int_eq(chunked_all(big, strlen(big), &done), (ssize_t)strlen(big));
    ck_assert_int_eq(done, 0);
}
END_TEST

START_TEST(test_chunk_line_over_4k_400)
{
    static char buf[8192];
    int done;
    memset(buf, '0', sizeof(buf));
    ck_assert_int_eq(chunked_all(buf, sizeof(buf), &done), -400);
    /* extension making the line 4097 bytes */
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, "1;", 2);
    ck_assert_int_eq(chunked_all(buf, 4097, &done), -400);
    /* exactly 4096 bytes is fine */
    memcpy(buf + 4096, "\r\nx\r\n0\r\n\r\n", 10);
    ck_assert_int_eq(chunked_all(buf, 4106, &done), 4106);
    ck_assert_int_eq(done, 1);
}
END_TEST

START_TEST(test_value_ctl_400)
{
    static const char bad[] = { '\0', '\x01', '\x0b', '\x1f', '\x7f', '\r', '\n' };
    char buf[128];
    for (size_t i = 0; i < sizeof(bad); i++) {
        int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\nX: a_b\r\n\r\n");
        char *u = strchr(buf, '_');
        *u = bad[i];
        ck_assert_msg(h1_parse_request(buf, (size_t)n, &req) == -400, "accepted 0x%02x", bad[i]);
        memcpy(buf, "HTTP/1.1 200 OK\r\nX: a_b\r\n\r\n", 28);
        buf[21] = bad[i];
        ck_assert_msg(h1_parse_response(buf, 27, &resp) == -502, "resp accepted 0x%02x", bad[i]);
    }
}
END_TEST

START_TEST(test_whitespace_before_colon_400)
{
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost : h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nX\t: y\r\n\r\n"), -400);
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n"), -502);
}
END_TEST

START_TEST(test_header_name_not_token_400)
{
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\n: novalue\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nA(b): c\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nnocolon\r\n\r\n"), -400);
}
END_TEST

START_TEST(test_obs_fold_400)
{
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n"), -400);
    /* whitespace-led line right after the request line (§2.2) */
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\n Host: h\r\n\r\n"), -400);
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"), -502);
}
END_TEST

START_TEST(test_bare_lf_400)
{
    ck_assert_int_eq(head_end("GET / HTTP/1.1\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(head_end("GET / HTTP/1.1\r\nHost: h\n\n"), -400);
    ck_assert_int_eq(head_end("\nGET / HTTP/1.1\r\n\r\n"), -400);
    ck_assert_int_eq(head_end("\r\n\nGET / HTTP/1.1\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET / HTTP/1.1\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\n\r\n"), -400);
    /* bare CR too */
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n"), -400);
}
END_TEST

START_TEST(test_head_over_limit_431)
{
    const char *s = "GET / HTTP/1.1\r\nX: aaaaaaaaaa";
    size_t len = strlen(s), scanned = 0;
    ck_assert_int_eq(h1_find_head_end(s, len, &scanned, len), -431);
    scanned = 0;
    ck_assert_int_eq(h1_find_head_end(s, len, &scanned, len + 1), 0);
    /* the end found beyond max in a larger buffer is still too large */
    const char *t = "GET / HTTP/1.1\r\nX: aaaaaaaaaa\r\n\r\n";
    scanned = 0;
    ck_assert_int_eq(h1_find_head_end(t, strlen(t), &scanned, strlen(t) - 1), -431);
}
END_TEST

/* Builds a request head of exactly total bytes (total >= 64). */
static char *make_head(size_t total)
{
    char *b = malloc(total + 1);
    const char *pre = "GET / HTTP/1.1\r\nHost: h\r\nX: ";
    size_t pl = strlen(pre);
    memcpy(b, pre, pl);
    memset(b + pl, 'a', total - pl - 4);
    memcpy(b + total - 4, "\r\n\r\n", 5);
    return b;
}

START_TEST(test_head_limit_64k_exact)
{
    char *b = make_head(MAX_HEAD);
    size_t scanned = 0;
    ck_assert_int_eq(h1_find_head_end(b, MAX_HEAD, &scanned, MAX_HEAD), MAX_HEAD);
    ck_assert_int_eq(h1_parse_request(b, MAX_HEAD, &req), 0);
    ck_assert_uint_eq(req.headers[1].value.len, MAX_HEAD - strlen("GET / HTTP/1.1\r\nHost: h\r\nX: ") - 4);
    free(b);
}
END_TEST

START_TEST(test_head_limit_64k_plus_one_431)
{
    char *b = make_head(MAX_HEAD + 1);
    size_t scanned = 0;
    ck_assert_int_eq(h1_find_head_end(b, MAX_HEAD + 1, &scanned, MAX_HEAD), -431);
    /* arriving in pieces: 0 until the limit is reached, then 431 */
    scanned = 0;
    ck_assert_int_eq(h1_find_head_end(b, MAX_HEAD - 1, &scanned, MAX_HEAD), 0);
    ck_assert_int_eq(h1_find_head_end(b, MAX_HEAD, &scanned, MAX_HEAD), -431);
    free(b);
}
END_TEST

START_TEST(test_too_many_headers_431)
{
    static char buf[8192];
    size_t n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 1; i < H1_MAX_HEADERS; i++)
        n += (size_t)sprintf(buf + n, "X%d: v\r\n", i);
    strcpy(buf + n, "\r\n");
    ck_assert_int_eq(h1_parse_request(buf, n + 2, &req), 0);
    ck_assert_uint_eq(req.n_headers, H1_MAX_HEADERS);
    strcpy(buf + n, "Y: z\r\n\r\n");
    ck_assert_int_eq(h1_parse_request(buf, n + 8, &req), -431);
}
END_TEST

START_TEST(test_unsupported_version_505)
{
    ck_assert_int_eq(preq("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), -505);
    /* A later minor version is read as the highest one spoken (RFC 9110 §2.5). */
    ck_assert_int_eq(preq("GET / HTTP/1.2\r\nHost: h\r\n\r\n"), 0);
    ck_assert_int_eq(req.minor, 1);
    ck_assert_int_eq(preq("GET / HTTP/1.9\r\n\r\n"), -400);   /* as 1.1: Host is required */
    ck_assert_int_eq(presp("HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n"), 0);
    ck_assert_int_eq(resp.minor, 1);
    ck_assert_int_eq(preq("GET / HTTP/0.9\r\nHost: h\r\n\r\n"), -505);
    ck_assert_int_eq(preq("GET / HTTP/1.10\r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET / http/1.1\r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET /\r\n\r\n"), -400);
}
END_TEST

START_TEST(test_request_line_malformed_400)
{
    ck_assert_int_eq(preq("GET  / HTTP/1.1\r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET /  HTTP/1.1\r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("G(T / HTTP/1.1\r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET / HTTP/1.1 \r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\n"), -400);   /* no empty line */
}
END_TEST

START_TEST(test_http11_host_missing_400)
{
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nX: y\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost:\r\n\r\n"), -400);
    /* absolute-form still needs the Host field in HTTP/1.1 (§3.2) */
    ck_assert_int_eq(preq("GET http://a/ HTTP/1.1\r\n\r\n"), -400);
}
END_TEST

START_TEST(test_http11_host_twice_400)
{
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), -400);
}
END_TEST

START_TEST(test_connect_501)
{
    ck_assert_int_eq(preq("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
                     -501);
}
END_TEST

START_TEST(test_te_unknown_501)
{
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: foo, chunked\r\n\r\n"),
                     -501);
    /* A coding applied before chunked is refused too: tollgate relays
     * chunked framing only, and would hand the backend compressed bytes as
     * the content. */
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
                     -501);
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: deflate\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n"), -501);
    /* Not the chunked coding (it has no parameters), and not final: 400. */
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;x=1\r\n\r\n"),
                     -400);
}
END_TEST

START_TEST(test_te_chunked_not_final_400)
{
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"), -400);
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                          "Transfer-Encoding: gzip\r\n\r\n"), -400);
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
                     -400);
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n\r\n"), -400);
    /* HTTP/1.0 with Transfer-Encoding: faulty framing (§6.1) */
    ck_assert_int_eq(preq("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), -400);
    /* accepted forms: chunked alone, in any case, with empty elements */
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: , CHUNKED\r\n\r\n"), 0);
    ck_assert(req.flags & H1_F_CHUNKED);
    ck_assert_int_eq(req.content_length, -1);
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n"
                          "Transfer-Encoding: chunked\r\n\r\n"), 0);
    ck_assert(req.flags & H1_F_CHUNKED);
}
END_TEST

START_TEST(test_request_target_form_400)
{
    ck_assert_int_eq(preq("GET foo HTTP/1.1\r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET * HTTP/1.1\r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET http:/h HTTP/1.1\r\nHost: h\r\n\r\n"), -400);
    ck_assert_int_eq(preq("GET h:80 HTTP/1.1\r\nHost: h\r\n\r\n"), -400);
}
END_TEST

START_TEST(test_connection_tokens)
{
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive , CLOSE\r\n\r\n"), 0);
    ck_assert(req.flags & H1_F_CONN_CLOSE);
    ck_assert(req.flags & H1_F_CONN_KEEPALIVE);
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nConnection: closed, x-close\r\n\r\n"), 0);
    ck_assert(!(req.flags & (H1_F_CONN_CLOSE | H1_F_CONN_KEEPALIVE)));
    /* upgrade token alone is not enough; Upgrade header alone neither */
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n"), 0);
    ck_assert(!(req.flags & H1_F_UPGRADE));
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"), 0);
    ck_assert(!(req.flags & H1_F_UPGRADE));
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n"
                          "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"), 0);
    ck_assert(req.flags & H1_F_UPGRADE);
    ck_assert(req.flags & H1_F_CONN_KEEPALIVE);
}
END_TEST

/* ---- responses ---- */

START_TEST(test_response_ok)
{
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"), 0);
    ck_assert_int_eq(resp.status, 200);
    ck_assert(str_is(resp.reason, "OK"));
    ck_assert_int_eq(resp.content_length, 12);
    ck_assert(resp.flags & H1_F_HAS_CL);
    ck_assert_int_eq(presp("HTTP/1.0 404 Not  Found\r\n\r\n"), 0);
    ck_assert_int_eq(resp.minor, 0);
    ck_assert(str_is(resp.reason, "Not  Found"));
    ck_assert_int_eq(presp("HTTP/1.1 200 \r\n\r\n"), 0);
    ck_assert_uint_eq(resp.reason.len, 0);
    ck_assert_int_eq(presp("HTTP/1.1 200\r\n\r\n"), 0);
    ck_assert_int_eq(resp.content_length, -1);
}
END_TEST

START_TEST(test_response_status_3_digits_502)
{
    ck_assert_int_eq(presp("HTTP/1.1 20 OK\r\n\r\n"), -502);
    ck_assert_int_eq(presp("HTTP/1.1 2000 OK\r\n\r\n"), -502);
    ck_assert_int_eq(presp("HTTP/1.1 099 X\r\n\r\n"), -502);
    ck_assert_int_eq(presp("HTTP/1.1 2x0 OK\r\n\r\n"), -502);
    ck_assert_int_eq(presp("HTTP/2.0 200 OK\r\n\r\n"), -502);
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n"), -502);
    ck_assert_int_eq(presp("\r\nHTTP/1.1 200 OK\r\n\r\n"), -502);
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
                     -502);
    ck_assert_int_eq(presp("HTTP/1.1 999 Odd\r\n\r\n"), 0);
}
END_TEST

START_TEST(test_response_no_body_statuses_with_cl)
{
    const char *st[] = { "100 Continue", "204 No Content", "304 Not Modified" };
    char buf[128];
    for (int i = 0; i < 3; i++) {
        snprintf(buf, sizeof(buf), "HTTP/1.1 %s\r\nContent-Length: 1234\r\n\r\n", st[i]);
        ck_assert_int_eq(presp(buf), 0);
        ck_assert_int_eq(resp.content_length, 1234);
    }
}
END_TEST

START_TEST(test_response_te)
{
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"), 0);
    ck_assert(resp.flags & H1_F_CHUNKED);
    ck_assert_int_eq(resp.content_length, -1);
    /* Only chunked (as nginx): tollgate writes its own framing field, so any
     * other coding would reach the client unannounced. */
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), -502);
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), -502);
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nTransfer-Encoding: x-custom\r\n\r\n"), -502);
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), -502);
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                           "Content-Length: 5\r\n\r\n"), -502);
    ck_assert_int_eq(presp("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), -502);
}
END_TEST

START_TEST(test_response_upgrade_101)
{
    ck_assert_int_eq(presp("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                           "Upgrade: websocket\r\n\r\n"), 0);
    ck_assert(resp.flags & H1_F_UPGRADE);
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"), 0);
    ck_assert(!(resp.flags & H1_F_UPGRADE));
    ck_assert_int_eq(presp("HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n\r\n"), 0);
    ck_assert(!(resp.flags & H1_F_UPGRADE));
}
END_TEST

static struct h1_str hs(const char *s)
{
    struct h1_str v = { s, strlen(s) };
    return v;
}

/* RFC 9110 §7.8: a 101 switches to a protocol the client offered; names
 * compare case-insensitively, versions aside. */
START_TEST(test_upgrade_matches_what_was_offered)
{
    ck_assert_int_eq(h1_upgrade_matches(hs("websocket"), hs("websocket")), 1);
    ck_assert_int_eq(h1_upgrade_matches(hs("WebSocket"), hs("websocket")), 1);
    ck_assert_int_eq(h1_upgrade_matches(hs("foo/2, websocket"), hs("websocket/13")), 1);
    ck_assert_int_eq(h1_upgrade_matches(hs("websocket"), hs("h2c")), 0);
    ck_assert_int_eq(h1_upgrade_matches(hs("websocket"), hs("websocket, h2c")), 0);
    ck_assert_int_eq(h1_upgrade_matches(hs("websocket"), hs("")), 0);
    ck_assert_int_eq(h1_upgrade_matches(hs(""), hs("websocket")), 0);
    ck_assert_int_eq(h1_upgrade_matches(hs("websocket"), hs(" , ")), 0);
    ck_assert_int_eq(h1_upgrade_matches(hs("websockets"), hs("websocket")), 0);
}
END_TEST

/* RFC 9113 §3.1: the upgrade to cleartext HTTP/2 is deprecated; tollgate
 * does not offer it to backends (h2c smuggling): such a request is a plain
 * one, its Upgrade field hop-by-hop. */
START_TEST(test_request_h2c_upgrade_is_not_an_upgrade)
{
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                          "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"), 0);
    ck_assert(!(req.flags & H1_F_UPGRADE));
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                          "Upgrade: websocket, H2C\r\n\r\n"), 0);
    ck_assert(!(req.flags & H1_F_UPGRADE));
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                          "Upgrade: websocket\r\n\r\n"), 0);
    ck_assert(req.flags & H1_F_UPGRADE);
    ck_assert_int_eq((int)req.upgrade.len, 9);
}
END_TEST

/* ---- chunked bodies ---- */

static const char chunked_body[] =
    "5;name=value;flag\r\nhello\r\n"
    "1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    "0 ; last=\"q\"\r\n"
    "Trailer-One: x\r\nT2:\r\n"
    "\r\n";

START_TEST(test_chunked_request_every_split)
{
    const char *head = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    ck_assert_int_eq(preq(head), 0);
    ck_assert(req.flags & H1_F_CHUNKED);

    /* body followed by the next request: must stop exactly at the end */
    char buf[256];
    size_t blen = strlen(chunked_body);
    snprintf(buf, sizeof(buf), "%sGET /", chunked_body);
    size_t len = strlen(buf);
    for (size_t cut = 0; cut <= len; cut++) {
        struct h1_chunked c;
        int done = 0;
        h1_chunked_init(&c);
        ssize_t a = h1_chunked_feed(&c, buf, cut, &done);
        ck_assert_int_ge(a, 0);
        ck_assert_uint_le((size_t)a, cut);
        if (done) {
            ck_assert_uint_eq((size_t)a, blen);
            continue;
        }
        ck_assert_uint_eq((size_t)a, cut);
        ssize_t b = h1_chunked_feed(&c, buf + a, len - (size_t)a, &done);
        ck_assert_int_eq(done, 1);
        ck_assert_uint_eq((size_t)(a + b), blen);
    }
    /* byte by byte */
    struct h1_chunked c;
    int done = 0;
    size_t total = 0, i;
    h1_chunked_init(&c);
    for (i = 0; i < len && !done; i++) {
        ssize_t r = h1_chunked_feed(&c, buf + i, 1, &done);
        ck_assert_int_eq(r, 1);
        total++;
    }
    ck_assert_int_eq(done, 1);
    ck_assert_uint_eq(total, blen);
    /* after the end nothing more is consumed */
    ck_assert_int_eq(h1_chunked_feed(&c, "GET", 3, &done), 0);
    ck_assert_int_eq(done, 1);
}
END_TEST

START_TEST(test_chunked_bulk_data)
{
    /* a 1 GiB chunk fed in 64 KiB pieces: each call consumes all in O(1) */
    static char piece[65536];
    struct h1_chunked c;
    int done;
    h1_chunked_init(&c);
    ck_assert_int_eq(h1_chunked_feed(&c, "40000000\r\n", 10, &done), 10);
    for (int i = 0; i < 16384; i++)
        ck_assert_int_eq(h1_chunked_feed(&c, piece, sizeof(piece), &done), (ssize_t)sizeof(piece));
    ck_assert_int_eq(h1_chunked_feed(&c, "\r\n0\r\n\r\nX", 8, &done), 7);
    ck_assert_int_eq(done, 1);
}
END_TEST

START_TEST(test_chunked_size_digits_limited)
{
    /* 16 hex digits, leading zeros included, are the most a size may have:
     * a backend reading 64 bits of "00000000000000001" would see 0. */
    int done;
    const char *ok = "0000000000000001\r\nx\r\n0\r\n\r\n";
    ck_assert_int_eq(chunked_all(ok, strlen(ok), &done), (ssize_t)strlen(ok));
    ck_assert_int_eq(done, 1);
    const char *bad[] = { "00000000000000001\r\nx\r\n0\r\n\r\n", "00000000000000000\r\n\r\n",
                          "10000000000000000\r\n" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(chunked_all(bad[i], strlen(bad[i]), &done) == -400, "accepted '%s'", bad[i]);
}
END_TEST

START_TEST(test_chunked_trailer_bytes_counted)
{
    /* c.trailer counts what follows the last-chunk line, final CRLF
     * included, whatever the split; nothing before it. */
    const char *body = "3\r\nabc\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nA: b\r\n\r\n";
    size_t len = strlen(body), tlen = strlen("X-Forwarded-For: 6.6.6.6\r\nA: b\r\n\r\n");
    for (size_t cut = 0; cut <= len; cut++) {
        struct h1_chunked c;
        int done = 0;
        h1_chunked_init(&c);
        ssize_t a = h1_chunked_feed(&c, body, cut, &done);
        ck_assert_int_eq(a, (ssize_t)cut);
        size_t before = cut > len - tlen ? cut - (len - tlen) : 0;
        ck_assert_uint_eq(c.trailer, before);
        ssize_t b = h1_chunked_feed(&c, body + cut, len - cut, &done);
        ck_assert_int_eq(a + b, (ssize_t)len);
        ck_assert_int_eq(done, 1);
        ck_assert_uint_eq(c.trailer, tlen);
    }
    /* no trailer fields: the final CRLF alone */
    struct h1_chunked c;
    int done;
    h1_chunked_init(&c);
    ck_assert_int_eq(h1_chunked_feed(&c, "1\r\nx\r\n0\r\n\r\n", 11, &done), 11);
    ck_assert_uint_eq(c.trailer, 2);
    /* a trailer section over 64 KiB is refused */
    static char big[70000];
    h1_chunked_init(&c);
    ck_assert_int_eq(h1_chunked_feed(&c, "0\r\n", 3, &done), 3);
    int refused = 0;
    for (int i = 0; i < 40 && !refused; i++) {
        size_t n = (size_t)snprintf(big, sizeof(big), "X-%d: %04000d\r\n", i, 0);
        refused = h1_chunked_feed(&c, big, n, &done) == -400;
    }
    ck_assert(refused);
}
END_TEST

/* Feeds s to a strict (request) tracker at every split; returns the
 * verdict, asserting that it does not depend on the split. */
static ssize_t chunked_strict_all(const char *s, int *done)
{
    size_t len = strlen(s);
    ssize_t verdict = 0;
    for (size_t cut = 0; cut <= len; cut++) {
        struct h1_chunked c;
        int d = 0;
        h1_chunked_init_strict(&c);
        ssize_t a = h1_chunked_feed(&c, s, cut, &d), r = a;
        if (a >= 0 && !d) {
            ssize_t b = h1_chunked_feed(&c, s + a, len - (size_t)a, &d);
            r = b < 0 ? b : a + b;
        }
        if (cut == 0) {
            verdict = r;
            *done = d;
        }
        ck_assert_msg(r == verdict, "'%s' split at %zu: %zd, whole: %zd", s, cut, r, verdict);
    }
    return verdict;
}

START_TEST(test_chunked_request_extensions_strict)
{
    /* RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ),
     * value = token / quoted-string.  A client's framing is forwarded as
     * sent: every parser behind must read it one way. */
    const char *ok[] = { "5;a\r\nhello\r\n0\r\n\r\n", "5 ; a = b\r\nhello\r\n0\r\n\r\n",
                         "5;a=b;c;d=\"x y;\\\"z\"\r\nhello\r\n0\r\n\r\n", "5\t;\ta\r\nhello\r\n0;last=1\r\n\r\n",
                         "5;a=\"\"\r\nhello\r\n0\r\n\r\n" };
    const char *bad[] = { "5 \r\nhello\r\n0\r\n\r\n", "5;\r\nhello\r\n0\r\n\r\n",
                          "5;a \r\nhello\r\n0\r\n\r\n", "5;a=\r\nhello\r\n0\r\n\r\n",
                          "5;a=b c\r\nhello\r\n0\r\n\r\n", "5;=b\r\nhello\r\n0\r\n\r\n",
                          "5;a=\"b\r\nhello\r\n0\r\n\r\n", "5;a=\"b\"c\r\nhello\r\n0\r\n\r\n",
                          "5;a=b=c\r\nhello\r\n0\r\n\r\n", "5;a@b\r\nhello\r\n0\r\n\r\n",
                          "5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", "5;a;\r\nhello\r\n0\r\n\r\n" };
    int done;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        ck_assert_msg(chunked_strict_all(ok[i], &done) == (ssize_t)strlen(ok[i]), "refused '%s'", ok[i]);
        ck_assert_int_eq(done, 1);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(chunked_strict_all(bad[i], &done) == -400, "accepted '%s'", bad[i]);
    /* a backend's framing stays lenient, as in nginx and HAProxy */
    ck_assert_int_eq(chunked_all("5 \r\nhello\r\n0\r\n\r\n", 16, &done), 16);
    ck_assert_int_eq(chunked_all("5;\r\nhello\r\n0\r\n\r\n", 16, &done), 16);
}
END_TEST

START_TEST(test_chunked_trailer_invalid_400)
{
    int done;
    const char *bad[] = { "0\r\nX\r\n\r\n", "0\r\n X: y\r\n\r\n", "0\r\nX: a\x01\r\n\r\n",
                          "0\r\n\r\r", "0\r\nX : y\r\n\r\n", "0;a\x01\r\n\r\n" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(chunked_all(bad[i], strlen(bad[i]), &done) == -400,
                      "accepted '%s'", bad[i]);
    ck_assert_int_eq(chunked_all("000\r\n\r\n", 7, &done), 7);
    ck_assert_int_eq(done, 1);
}
END_TEST

/* ---- the scanners (16 bytes per step with SSE2, a table for the rest) ---- */

static int is_tchar(int b)
{
    return (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z')
        || (b != 0 && strchr("!#$%&'*+-.^_`|~", b) != NULL);
}

/* Parses a request whose head is pre + 40 x 'a' with byte b at pos + post. */
static int parse_with_byte(const char *pre, int b, size_t pos, const char *post)
{
    char head[256];
    size_t n = strlen(pre);
    memcpy(head, pre, n);
    memset(head + n, 'a', 40);
    head[n + pos] = (char)b;
    memcpy(head + n + 40, post, strlen(post));
    return h1_parse_request(head, n + 40 + strlen(post), &req);
}

START_TEST(test_scanners_agree_with_the_rules_at_every_offset)
{
    /* Offsets in the first vector, on its last byte, in the second, and
     * in the table-scanned tail. */
    static const size_t offs[] = { 1, 5, 15, 16, 17, 31, 32, 38 };
    for (int b = 0; b < 256; b++) {
        for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
            size_t pos = offs[i];
            /* Field value: HTAB, SP, VCHAR, obs-text (RFC 9110 §5.5). */
            int field_ok = b == '\t' || b == ' ' || (b >= 0x21 && b != 0x7f);
            ck_assert_msg(parse_with_byte("GET / HTTP/1.1\r\nHost: h\r\nX-V: ", b, pos, "\r\n\r\n")
                          == (field_ok ? 0 : -400), "value byte 0x%02x at %zu", b, pos);
            /* Field name: a token; a ':' just ends it early. */
            int name_ok = is_tchar(b) || b == ':';
            ck_assert_msg(parse_with_byte("GET / HTTP/1.1\r\nHost: h\r\nX", b, pos, ": v\r\n\r\n")
                          == (name_ok ? 0 : -400), "name byte 0x%02x at %zu", b, pos);
            /* Request target: VCHAR or obs-text, no SP or CTL (§3.2). */
            int target_ok = b >= 0x21 && b != 0x7f;
            ck_assert_msg(parse_with_byte("GET /", b, pos, " HTTP/1.1\r\nHost: h\r\n\r\n")
                          == (target_ok ? 0 : -400), "target byte 0x%02x at %zu", b, pos);
            /* Method: a token. */
            if (b != ' ') {
                int rc = parse_with_byte("", b, pos, " / HTTP/1.1\r\nHost: h\r\n\r\n");
                ck_assert_msg(is_tchar(b) ? rc == 0 : rc == -400, "method byte 0x%02x at %zu: %d", b, pos, rc);
            }
        }
    }
}
END_TEST

/* ---- hop-by-hop helper ---- */

static struct h1_str S(const char *s)
{
    struct h1_str r = { s, strlen(s) };
    return r;
}

/* The kind of the header called name in the last parsed request (or
 * response), or -1 when it is not there. */
static int kind_of(const struct h1_header *hs, size_t n, const char *name)
{
    const struct h1_header *h = h1_find_header(hs, n, name);
    return h ? (int)h->kind : -1;
}

START_TEST(test_hop_by_hop_names)
{
    const char *hop[] = { "Connection", "keep-alive", "Proxy-Connection", "TE", "Trailer",
                          "Transfer-Encoding", "UPGRADE", "Proxy-Authorization",
                          "Proxy-Authenticate" };
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++) {
        char head[256];
        /* Transfer-Encoding needs a valid coding; the others any value. */
        snprintf(head, sizeof(head), "POST / HTTP/1.1\r\nHost: h\r\n%s: %s\r\n\r\n", hop[i],
                 h1_str_ieq(S(hop[i]), "transfer-encoding") ? "chunked" : "x");
        ck_assert_int_eq(preq(head), 0);
        ck_assert_msg(kind_of(req.headers, req.n_headers, hop[i]) & H1_H_HOP, "%s", hop[i]);
    }
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nX-A: 1\r\n"
                          "Connection: close\r\n\r\n"), 0);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "content-length"), H1_H_LENGTH);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "x-a"), 0);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "host"), H1_H_HOST);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "upgrade"), -1);
}
END_TEST

START_TEST(test_forwarding_kinds)
{
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n"
                          "x-forwarded-proto: https\r\nX-FORWARDED-HOST: a\r\nForwarded: for=x\r\n"
                          "X-Forwarded-Fo: no\r\nUpgrade: websocket\r\n\r\n"), 0);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "x-forwarded-for"), H1_H_FORWARDED);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "x-forwarded-proto"), H1_H_FORWARDED);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "x-forwarded-host"), H1_H_FORWARDED);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "forwarded"), H1_H_FORWARDED);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "x-forwarded-fo"), 0);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "upgrade"), H1_H_HOP | H1_H_UPGRADE);
}
END_TEST

START_TEST(test_underscore_twins_of_controlled_fields)
{
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 1\r\nx_forwarded_HOST: 2\r\n"
                          "X-Forwarded_Proto: 3\r\nContent_Length: 4\r\nTransfer_Encoding: 5\r\n"
                          "Keep_Alive: 6\r\nX_Api_Key: 7\r\nX_Forwarded_Fo: 8\r\n\r\n"), 0);
    const char *alias[] = { "X_Forwarded_For", "x_forwarded_HOST", "X-Forwarded_Proto", "Content_Length",
                            "Transfer_Encoding", "Keep_Alive" };
    for (size_t i = 0; i < sizeof(alias) / sizeof(alias[0]); i++)
        ck_assert_msg(kind_of(req.headers, req.n_headers, alias[i]) == H1_H_ALIAS, "%s", alias[i]);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "X_Api_Key"), 0);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "X_Forwarded_Fo"), 0);
    ck_assert(!(req.flags & (H1_F_CHUNKED | H1_F_HAS_CL)));   /* no framing from a twin */
}
END_TEST

START_TEST(test_connection_listed_names_are_hop_by_hop)
{
    /* Listed before or after the field, in any case, across two Connection
     * fields; a name that only starts like a listed one is not. */
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nX-Secret: 1\r\n"
                          "Connection: close, x-secret ,foo\r\nFOO: 2\r\nX-Secre: 3\r\n"
                          "Connection: Bar\r\nbar: 4\r\n\r\n"), 0);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "x-secret"), H1_H_HOP);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "foo"), H1_H_HOP);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "bar"), H1_H_HOP);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "x-secre"), 0);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "host"), H1_H_HOST);
    ck_assert(req.flags & H1_F_CONN_CLOSE);
    /* The same in a response. */
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nX-Private: 1\r\nConnection: keep-alive, X-Private\r\n"
                           "Content-Length: 0\r\n\r\n"), 0);
    ck_assert_int_eq(kind_of(resp.headers, resp.n_headers, "x-private"), H1_H_HOP);
    ck_assert_int_eq(kind_of(resp.headers, resp.n_headers, "content-length"), H1_H_LENGTH);
}
END_TEST

START_TEST(test_connection_cannot_drop_content_length_or_host)
{
    /* A listed Content-Length would reach the backend without its framing
     * (the body read as further requests); a listed Host, a request with no
     * Host.  A field called "Close" is removed like any listed name. */
    ck_assert_int_eq(preq("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                          "Connection: Content-Length, host, close\r\nClose: yes\r\n\r\n"), 0);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "content-length"), H1_H_LENGTH);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "host"), H1_H_HOST);
    ck_assert_int_eq(kind_of(req.headers, req.n_headers, "close"), H1_H_HOP);
    ck_assert(req.flags & H1_F_CONN_CLOSE);
    ck_assert_int_eq(req.content_length, 3);
    ck_assert_int_eq(presp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: content-length\r\n\r\n"), 0);
    ck_assert_int_eq(kind_of(resp.headers, resp.n_headers, "content-length"), H1_H_LENGTH);
}
END_TEST

START_TEST(test_connection_listing_too_many_names_rejected)
{
    char head[1024], list[512] = "";
    for (int i = 0; i < H1_MAX_CONN_TOKENS; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%sx-%d", i ? ", " : "", i);
    snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade, %s, keep-alive\r\n\r\n", list);
    ck_assert_int_eq(preq(head), 0);                     /* the limit itself */
    snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: h\r\nConnection: %s, close\r\n\r\n", list);
    ck_assert_int_eq(preq(head), -400);
    snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nConnection: %s, one-more\r\nContent-Length: 0\r\n\r\n",
             list);
    ck_assert_int_eq(presp(head), -502);
}
END_TEST

START_TEST(test_find_header_ieq)
{
    ck_assert_int_eq(preq("GET / HTTP/1.1\r\nHost: h\r\nX-Foo: 1\r\nx-foo: 2\r\n\r\n"), 0);
    const struct h1_header *h = h1_find_header(req.headers, req.n_headers, "X-FOO");
    ck_assert_ptr_nonnull(h);
    ck_assert(str_is(h->value, "1"));
    ck_assert_ptr_null(h1_find_header(req.headers, req.n_headers, "X-Fo"));
    ck_assert(h1_str_ieq(S("AbC"), "aBc"));
    ck_assert(!h1_str_ieq(S("AbC"), "aBcd"));
}
END_TEST

Suite *h1_suite(void)
{
    Suite *s = suite_create("h1");
    TCase *tc = tcase_create("h1");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_get_simple);
    tcase_add_test(tc, test_value_ows_stripped_htab_allowed);
    tcase_add_test(tc, test_post_content_length);
    tcase_add_test(tc, test_http10);
    tcase_add_test(tc, test_absolute_form);
    tcase_add_test(tc, test_leading_empty_line);
    tcase_add_test(tc, test_pipelined_heads);
    tcase_add_test(tc, test_head_end_incremental_every_split);
    tcase_add_test(tc, test_head_end_at_every_offset_of_a_16_byte_step);
    tcase_add_test(tc, test_expect_continue);
    tcase_add_test(tc, test_options_asterisk);
    tcase_add_test(tc, test_cl_and_te_400);
    tcase_add_test(tc, test_cl_differing_duplicate_400);
    tcase_add_test(tc, test_cl_identical_duplicate_ok);
    tcase_add_test(tc, test_cl_malformed_400);
    tcase_add_test(tc, test_chunk_size_invalid_400);
    tcase_add_test(tc, test_chunk_line_over_4k_400);
    tcase_add_test(tc, test_value_ctl_400);
    tcase_add_test(tc, test_whitespace_before_colon_400);
    tcase_add_test(tc, test_header_name_not_token_400);
    tcase_add_test(tc, test_obs_fold_400);
    tcase_add_test(tc, test_bare_lf_400);
    tcase_add_test(tc, test_head_over_limit_431);
    tcase_add_test(tc, test_head_limit_64k_exact);
    tcase_add_test(tc, test_head_limit_64k_plus_one_431);
    tcase_add_test(tc, test_too_many_headers_431);
    tcase_add_test(tc, test_unsupported_version_505);
    tcase_add_test(tc, test_request_line_malformed_400);
    tcase_add_test(tc, test_http11_host_missing_400);
    tcase_add_test(tc, test_http11_host_twice_400);
    tcase_add_test(tc, test_connect_501);
    tcase_add_test(tc, test_te_unknown_501);
    tcase_add_test(tc, test_te_chunked_not_final_400);
    tcase_add_test(tc, test_request_target_form_400);
    tcase_add_test(tc, test_connection_tokens);
    tcase_add_test(tc, test_response_ok);
    tcase_add_test(tc, test_response_status_3_digits_502);
    tcase_add_test(tc, test_response_no_body_statuses_with_cl);
    tcase_add_test(tc, test_response_te);
    tcase_add_test(tc, test_response_upgrade_101);
    tcase_add_test(tc, test_upgrade_matches_what_was_offered);
    tcase_add_test(tc, test_request_h2c_upgrade_is_not_an_upgrade);
    tcase_add_test(tc, test_chunked_request_every_split);
    tcase_add_test(tc, test_chunked_bulk_data);
    tcase_add_test(tc, test_chunked_trailer_invalid_400);
    tcase_add_test(tc, test_chunked_request_extensions_strict);
    tcase_add_test(tc, test_chunked_size_digits_limited);
    tcase_add_test(tc, test_chunked_trailer_bytes_counted);
    tcase_add_test(tc, test_scanners_agree_with_the_rules_at_every_offset);
    tcase_add_test(tc, test_hop_by_hop_names);
    tcase_add_test(tc, test_forwarding_kinds);
    tcase_add_test(tc, test_connection_listed_names_are_hop_by_hop);
    tcase_add_test(tc, test_underscore_twins_of_controlled_fields);
    tcase_add_test(tc, test_connection_listing_too_many_names_rejected);
    tcase_add_test(tc, test_connection_cannot_drop_content_length_or_host);
    tcase_add_test(tc, test_find_header_ieq);
    suite_add_tcase(s, tc);
    return s;
}
