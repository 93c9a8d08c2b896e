/*
 * tests/fuzz/fuzz_h1.c: libFuzzer target for the HTTP/1.x codec.
 *
 * The first two input bytes choose a split position; the rest is the
 * message.  Checked invariants (abort() on violation):
 *  - h1_find_head_end: result <= len and <= max, ends in CRLF CRLF, and is
 *    the same whether the bytes arrive at once, in two pieces or one by one;
 *  - h1_parse_request/h1_parse_response: on success every view points inside
 *    the head, counts and flags are consistent;
 *  - h1_chunked_feed: consumed <= len, and feeding in two pieces (each in its
 *    own exact-size allocation, so ASan sees any over-read) gives the same
 *    outcome as feeding everything at once; for the lenient (backend) and
 *    the strict (client) tracker alike.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/h1.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

#define FUZZ_MAX_HEAD 4096

static struct h1_request req;
static struct h1_response resp;

static void check(int ok)
{
    if (!ok)
        abort();
}

static void check_view(struct h1_str s, const char *buf, size_t len)
{
    if (s.len == 0)
        return;
    check(s.p >= buf && s.len <= len && s.p + s.len <= buf + len);
}

static void check_headers(const struct h1_header *hs, size_t n, const char *buf, size_t len)
{
    check(n <= H1_MAX_HEADERS);
    for (size_t i = 0; i < n; i++) {
        check(hs[i].name.len > 0);
        check_view(hs[i].name, buf, len);
        check_view(hs[i].value, buf, len);
    }
}

static void fuzz_parsers(const char *buf, size_t len)
{
    int rc = h1_parse_request(buf, len, &req);
    check(rc == 0 || rc == -400 || rc == -431 || rc == -501 || rc == -505);
    if (rc == 0) {
        check(req.method.len > 0 && req.target.len > 0);
        check_view(req.method, buf, len);
        check_view(req.target, buf, len);
        check_view(req.host, buf, len);
        /* "http://h" has no path in the target: the codec returns "/" */
        if (!(req.path.len == 1 && req.path.p[0] == '/'))
            check_view(req.path, buf, len);
        check(req.minor == 0 || req.minor == 1);
        check(req.minor == 0 || req.host.len > 0);
        check(!((req.flags & H1_F_CHUNKED) && (req.flags & H1_F_HAS_CL)));
        check((req.flags & H1_F_HAS_CL) ? req.content_length >= 0 : req.content_length == -1);
        check_headers(req.headers, req.n_headers, buf, len);
    }
    rc = h1_parse_response(buf, len, &resp);
    check(rc == 0 || rc == -502);
    if (rc == 0) {
        check(resp.status >= 100 && resp.status <= 999);
        check_view(resp.reason, buf, len);
        check(!((resp.flags & H1_F_CHUNKED) && (resp.flags & H1_F_HAS_CL)));
        check((resp.flags & H1_F_HAS_CL) ? resp.content_length >= 0 : resp.content_length == -1);
        check_headers(resp.headers, resp.n_headers, buf, len);
    }
}

static void fuzz_head_end(const char *buf, size_t len, size_t cut)
{
    size_t scanned = 0;
    ssize_t full = h1_find_head_end(buf, len, &scanned, FUZZ_MAX_HEAD);
    check(full == 0 || full == -400 || full == -431 || full > 0);
    if (full > 0) {
        check((size_t)full <= len && full <= FUZZ_MAX_HEAD && full >= 4);
        check(memcmp(buf + full - 4, "\r\n\r\n", 4) == 0);
        fuzz_parsers(buf, (size_t)full);
    }

    /* two pieces */
    scanned = 0;
    ssize_t r = h1_find_head_end(buf, cut, &scanned, FUZZ_MAX_HEAD);
    if (r == 0) {
        check(scanned <= cut);
        r = h1_find_head_end(buf, len, &scanned, FUZZ_MAX_HEAD);
    }
    check(r == full);

    /* byte by byte (bounded to keep the fuzzer fast) */
    if (len <= 1024) {
        scanned = 0;
        r = 0;
        for (size_t k = 0; k <= len && r == 0; k++)
            r = h1_find_head_end(buf, k, &scanned, FUZZ_MAX_HEAD);
        check(r == full);
    }
}

static void chunked_init(struct h1_chunked *c, int strict)
{
    if (strict)
        h1_chunked_init_strict(c);
    else
        h1_chunked_init(c);
}

static void fuzz_chunked(const char *buf, size_t len, size_t cut, int strict)
{
    struct h1_chunked c;
    int done1 = 0, done2 = 0;
    chunked_init(&c, strict);
    ssize_t whole = h1_chunked_feed(&c, buf, len, &done1);
    check(whole == -400 || (whole >= 0 && (size_t)whole <= len));
    check(whole < 0 || done1 || (size_t)whole == len);

    /* the same bytes in two separately allocated pieces */
    char *a = malloc(cut ? cut : 1), *b = malloc(len - cut ? len - cut : 1);
    check(a && b);
    memcpy(a, buf, cut);
    memcpy(b, buf + cut, len - cut);
    chunked_init(&c, strict);
    ssize_t r1 = h1_chunked_feed(&c, a, cut, &done2), total;
    check(r1 == -400 || (r1 >= 0 && (size_t)r1 <= cut));
    if (r1 < 0) {
        total = -400;
    } else if (done2) {
        total = r1;
    } else {
        check((size_t)r1 == cut);
        ssize_t r2 = h1_chunked_feed(&c, b, len - cut, &done2);
        check(r2 == -400 || (r2 >= 0 && (size_t)r2 <= len - cut));
        total = r2 < 0 ? r2 : r1 + r2;
    }
    check(total == whole);
    check(whole < 0 || done1 == done2);
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (n < 2)
        return 0;
    size_t len = n - 2;
    /* exact-size copy: any read past len is caught by ASan */
    char *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, d + 2, len);
    size_t cut = ((size_t)d[0] | (size_t)d[1] << 8) % (len + 1);

    fuzz_head_end(buf, len, cut);
    fuzz_parsers(buf, len);
    fuzz_chunked(buf, len, cut, 0);
    fuzz_chunked(buf, len, cut, 1);
    free(buf);
    return 0;
}
